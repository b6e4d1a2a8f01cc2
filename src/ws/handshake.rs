//! The opening handshake (RFC 6455 section 4.2): checking an upgrade request and writing the
//! 101 answer.

use crate::http::request::Request;
use base64::Engine;
use sha1::{Digest, Sha1};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused, each answered with an HTTP status before any frame
/// (`refusal` says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not GET.
    Method,
    /// No `Upgrade: websocket` / `Connection: Upgrade`: a plain HTTP request to a WebSocket
    /// route (426).
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` other than 13 (426 with the version we speak).
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes in base64.
    Key,
}

impl HandshakeError {
    pub fn message(self) -> &'static str {
        match self {
            HandshakeError::Method => "WebSocket upgrades use GET",
            HandshakeError::NotAnUpgrade => {
                "this path is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)"
            }
            HandshakeError::Version => "only WebSocket version 13 is supported",
            HandshakeError::Key => "Sec-WebSocket-Key must be 16 bytes in base64",
        }
    }
}

/// Whether the request asks for a WebSocket at all (as opposed to a plain GET).
pub fn is_upgrade(req: &Request<'_>) -> bool {
    req.header_has_token("upgrade", "websocket")
}

/// Checks the upgrade request; on success returns the `Sec-WebSocket-Accept` value.
pub fn check_upgrade(req: &Request<'_>) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if !is_upgrade(req) || !req.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::NotAnUpgrade);
    }
    if req.header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::Version);
    }
    let key = req
        .header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(HandshakeError::Key),
    }
}

/// `base64(sha1(key ++ GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The 101 response. `protocol` is the subprotocol selected from the client's offer.
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_request;

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn check(raw: &str) -> Result<String, HandshakeError> {
        let req = parse_request(raw.as_bytes(), 8192).unwrap().unwrap();
        check_upgrade(&req)
    }

    #[test]
    fn accepts_a_valid_upgrade() {
        let ok = check("GET /d HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        assert_eq!(ok.unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_bad_upgrades_with_the_reason() {
        let cases = [
            ("POST /d HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", HandshakeError::Method),
            ("GET /d HTTP/1.1\r\nHost: a\r\n\r\n", HandshakeError::NotAnUpgrade),
            ("GET /d HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", HandshakeError::Version),
            ("GET /d HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::Key),
            ("GET /d HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n", HandshakeError::Key),
        ];
        for (raw, why) in cases {
            assert_eq!(check(raw).unwrap_err(), why, "{raw}");
        }
    }

    #[test]
    fn the_101_names_the_selected_protocol_only() {
        let r = String::from_utf8(switching_protocols("abc", Some("access_token"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(r.contains("Sec-WebSocket-Accept: abc\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: access_token\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
