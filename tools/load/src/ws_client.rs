//! The client side of RFC 6455, as much as a load generator needs: the upgrade request,
//! masked frames out, unmasked server frames in. The library holds only the server side.

use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use wiresocket::ws::frame::Opcode;

/// Response heads longer than this are refused (a server answering garbage).
const RESPONSE_HEAD_BYTES_MAX: usize = 8 << 10;

/// Where a document connection goes: `ws://host:port/path?query` (or `wss://`), with `{doc}`
/// in the path replaced by the document name (and `{token}`, if there, by a connection's
/// token).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path_template: String,
    /// For `wss://`: the client's TLS settings and the name the certificate must carry.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    /// `ca`: a PEM file of the certificates a `wss://` server's must chain to (a test CA).
    pub fn parse(url: &str, ca: Option<&str>) -> Result<Target, String> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if !path.contains("{doc}") {
            return Err(format!(
                "{url}: the URL needs a {{doc}} placeholder for the document name"
            ));
        }
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let tls = if tls {
            let ca = ca.ok_or("a wss:// URL needs --ca FILE: the CA its certificate chains to")?;
            let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
            let name = rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| format!("{name}: {e}"))?;
            Some((client_config(ca)?, name))
        } else {
            None
        };
        Ok(Target {
            addr,
            host: host.to_owned(),
            path_template: path.to_owned(),
            tls,
        })
    }

    pub fn has_token_placeholder(&self) -> bool {
        self.path_template.contains("{token}")
    }

    pub fn path(&self, doc: &str, token: Option<&str>) -> String {
        let path = self.path_template.replace("{doc}", doc);
        match token {
            Some(token) => path.replace("{token}", token),
            None => path,
        }
    }
}

/// TLS 1.2 and 1.3 trusting only the certificates in `ca`, ALPN `http/1.1`.
fn client_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        let cert = cert.map_err(|e| format!("{ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{ca}: {e}"))?;
    }
    #[allow(deprecated)] // ring, as the server (no post-quantum key exchange)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The upgrade request for `path` (from [`Target::path`]).
pub fn upgrade_request(target: &Target, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host
    )
    .into_bytes()
}

/// The length of a whole `101` response head at the start of `buf`; `Ok(None)` means more
/// bytes are needed.
pub fn upgrade_response(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err("the upgrade response head is too long".into());
        }
        return Ok(None);
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buf[..end]);
        return Err(format!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(Some(end + 4))
}

/// Starts a non-blocking connect from `source` (a 127.0.0.x address spreads source ports
/// over several addresses); the socket becomes writable when it is done.
pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(source) = source {
        // Pick the source port at connect time, per destination: without this each bind
        // takes a port for good and 20,000 sockets run out of them.
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SocketAddr::from((source, 0)).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// Appends a masked client frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    encode_masked(out, opcode, payload, rand_mask());
}

fn rand_mask() -> [u8; 4] {
    // The mask only has to be unpredictable to a proxy; the load generator is not one.
    thread_local!(static STATE: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9E37_79B9) });
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x.to_be_bytes()
    })
}

/// Appends a masked, unfragmented client frame.
pub fn encode_masked(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode.bits());
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A server frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: Opcode,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses the header of an unmasked server frame; `Ok(None)` means more bytes are needed.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<ServerFrame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let (payload_len, header_len) = match buf[1] & 0x7F {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be) as usize, 10)
        }
        n => (n as usize, 2),
    };
    Ok(Some(ServerFrame {
        fin: buf[0] & 0x80 != 0,
        opcode: Opcode::from_bits(buf[0] & 0x0F)
            .ok_or_else(|| format!("the server sent reserved opcode {}", buf[0] & 0x0F))?,
        header_len,
        payload_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_parse_back_through_the_server_parser() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frame = Vec::new();
            encode_masked(&mut frame, Opcode::Binary, &payload, [1, 2, 3, 4]);
            let header = wiresocket::ws::frame::parse_header(&frame, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(header.payload_len as usize, len);
            let mut body = frame[header.header_len..].to_vec();
            wiresocket::ws::mask::unmask(&mut body, header.mask, 0);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn server_frames_parse_with_every_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut frame = Vec::new();
            wiresocket::ws::frame::encode_frame(&mut frame, Opcode::Binary, &vec![7; len]);
            let parsed = parse_server_frame(&frame).unwrap().unwrap();
            assert_eq!(parsed.payload_len, len);
            assert_eq!(parsed.header_len + len, frame.len());
            assert!(parsed.fin);
            assert_eq!(parsed.opcode, Opcode::Binary);
            assert_eq!(
                parse_server_frame(&frame[..parsed.header_len - 1]).unwrap(),
                None
            );
        }
        assert!(parse_server_frame(&[0x82, 0x81]).is_err());
    }

    #[test]
    fn upgrade_responses_need_101_and_a_whole_head() {
        assert_eq!(upgrade_response(b"HTTP/1.1 101 Switching").unwrap(), None);
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x82\x00";
        assert_eq!(upgrade_response(ok).unwrap(), Some(ok.len() - 2));
        let refused = upgrade_response(b"HTTP/1.1 429 Too Many Requests\r\n\r\n").unwrap_err();
        assert!(refused.contains("429"), "{refused}");
        assert!(upgrade_response(&vec![b'x'; RESPONSE_HEAD_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn urls_need_a_document_placeholder() {
        let t = Target::parse("ws://127.0.0.1:8080/{doc}?token=x", None).unwrap();
        assert_eq!(t.path("a", Some("ignored")), "/a?token=x");
        assert!(!t.has_token_placeholder());
        let t = Target::parse("ws://127.0.0.1:8080/{doc}?token={token}", None).unwrap();
        assert_eq!(t.path("a", Some("jwt")), "/a?token=jwt");
        assert!(t.has_token_placeholder());
        assert!(Target::parse("ws://127.0.0.1:8080/fixed", None).is_err());
        let no_ca = Target::parse("wss://localhost:8080/{doc}", None).unwrap_err();
        assert!(no_ca.contains("--ca"), "{no_ca}");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/tls/ca.pem");
        let t = Target::parse("wss://localhost:8080/{doc}", Some(ca)).unwrap();
        assert!(t.tls.is_some());
        assert!(Target::parse("http://127.0.0.1:8080/{doc}", None).is_err());
    }
}
