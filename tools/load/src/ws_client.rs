//! The client side of RFC 6455, as much as a load generator needs: the upgrade request,
//! masked frames out, unmasked server frames in. The library holds only the server side.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use wiresocket::ws::frame::Opcode;

/// Response heads longer than this are refused (a server answering garbage).
const RESPONSE_HEAD_BYTES_MAX: usize = 8 << 10;

/// Where a document connection goes: `ws://host:port/path?query`, with `{doc}` in the path
/// replaced by the document name.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path_template: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
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
        Ok(Target {
            addr,
            host: host.to_owned(),
            path_template: path.to_owned(),
        })
    }

    pub fn path(&self, doc: &str) -> String {
        self.path_template.replace("{doc}", doc)
    }
}

/// One open WebSocket. Reads and writes are separate tasks: the stream is borrowed only
/// inside one `poll`, and `write_lock` keeps two writers' frames from interleaving.
pub struct Connection {
    stream: RefCell<TcpStream>,
    write_lock: Semaphore,
}

impl Connection {
    /// Connects from `source` (a 127.0.0.x address spreads ports over several sources),
    /// upgrades, and returns the connection with any bytes read past the response head.
    pub async fn open(
        target: &Target,
        doc: &str,
        source: Option<Ipv4Addr>,
    ) -> Result<(Rc<Connection>, Vec<u8>), String> {
        let stream = connect(target.addr, source).await?;
        let conn = Rc::new(Connection {
            stream: RefCell::new(stream),
            write_lock: Semaphore::new(1),
        });
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path(doc),
            target.host
        );
        conn.write_raw(request.as_bytes())
            .await
            .map_err(|e| format!("send upgrade: {e}"))?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 2048];
        let end = loop {
            let n = conn
                .read(&mut buf)
                .await
                .map_err(|e| format!("read upgrade: {e}"))?;
            if n == 0 {
                return Err("the server closed during the upgrade".into());
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > RESPONSE_HEAD_BYTES_MAX {
                return Err("the upgrade response head is too long".into());
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head[..end]);
            let line = line.lines().next().unwrap_or("");
            return Err(format!("upgrade refused: {line}"));
        }
        Ok((conn, head[end..].to_vec()))
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)).await
    }

    /// Reads into a buffer shared by the thread's connections: it is borrowed only while
    /// the read is polled.
    pub async fn read_with(&self, buf: &RefCell<Vec<u8>>) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut buf = buf.borrow_mut();
            Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, &mut buf[..])
        })
        .await
    }

    async fn write_raw(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n =
                poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Sends one masked frame.
    pub async fn send(&self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        encode_masked(&mut frame, opcode, payload, rand_mask());
        let _permit = self.write_lock.acquire_permit(1).await;
        self.write_raw(&frame).await
    }
}

async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream, String> {
    let Some(source) = source else {
        return TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"));
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    // Pick the source port at connect time, per destination: without this, each bind takes
    // a port for good and 20,000 sockets run out of them.
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value of the right size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    // A loopback connect completes at once unless the listen backlog is full.
    socket
        .connect(&addr.into())
        .map_err(|e| format!("connect {addr} from {source}: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    // SAFETY: the fd is a connected TCP socket we own and hand over.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
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
    fn urls_need_a_document_placeholder() {
        let t = Target::parse("ws://127.0.0.1:8080/{doc}?token=x").unwrap();
        assert_eq!(t.path("a"), "/a?token=x");
        assert!(Target::parse("ws://127.0.0.1:8080/fixed").is_err());
        assert!(Target::parse("wss://127.0.0.1:8080/{doc}").is_err());
    }
}
