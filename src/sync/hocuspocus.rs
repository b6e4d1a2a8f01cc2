//! The Hocuspocus framing (`@hocuspocus/provider` 2.x–4.x): every message is
//! `varString(address) · varUint(type) · body`, where the address is a document name, so one
//! socket carries many documents. Types 0 (sync), 1 (awareness) and 3 (query awareness) are
//! y-websocket messages after the address, decoded by `sync::protocol`; the others are
//! decoded here. Pure: bytes in, bytes out. The wire facts are in
//! `shared/spec/HOCUSPOCUS.md`.

use super::lib0::{self, DecodeError, Reader};

pub const TYPE_SYNC: u32 = 0;
pub const TYPE_AWARENESS: u32 = 1;
pub const TYPE_AUTH: u32 = 2;
pub const TYPE_QUERY_AWARENESS: u32 = 3;
/// Server to server only (Hocuspocus's Redis extension).
pub const TYPE_SYNC_REPLY: u32 = 4;
pub const TYPE_STATELESS: u32 = 5;
/// Server-internal since Hocuspocus 4.1.1: refused from a client.
pub const TYPE_BROADCAST_STATELESS: u32 = 6;
pub const TYPE_CLOSE: u32 = 7;
pub const TYPE_SYNC_STATUS: u32 = 8;

/// Auth sub-types, Hocuspocus's numbering (not y-protocols', where 0 is permission denied).
pub const AUTH_TOKEN: u32 = 0;
pub const AUTH_PERMISSION_DENIED: u32 = 1;
pub const AUTH_AUTHENTICATED: u32 = 2;

/// The v4 keepalive the server may send (a single byte, no address): only to providers that
/// announced version 4, older ones fail on it.
pub const PING: [u8; 1] = [9];
/// The v4 provider's answer to [`PING`].
pub const PONG: [u8; 1] = [10];

/// An address longer than this is refused before anything else is read: a document name is
/// at most 255 bytes, and a v4 session key (`name\0sessionId`) adds a short id.
pub const ADDRESS_BYTES_MAX: usize = 512;
/// A token in an auth message, at most (a JWT with many claims stays far below).
pub const TOKEN_BYTES_MAX: usize = 16 << 10;
/// The provider version string a v4 provider sends with its token.
pub const VERSION_BYTES_MAX: usize = 64;

/// One client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// The v4 answer to a ping: keepalive only.
    Pong,
    /// A message for the document at `address`.
    Document {
        address: &'a str,
        message: DocumentMessage<'a>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentMessage<'a> {
    /// Sync, awareness or query awareness: the rest of the payload from the type on is a
    /// y-websocket message (`sync::protocol::decode` checks it).
    YMessage(&'a [u8]),
    /// The document's token, and the provider's version from v4 on.
    Token {
        token: &'a str,
        provider_version: Option<&'a str>,
    },
    /// A side message for the document's other connections (apps put JSON here).
    Stateless(&'a str),
    /// The provider detaches from the document.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HocuspocusError {
    Decode(DecodeError),
    /// The address is empty or longer than [`ADDRESS_BYTES_MAX`].
    Address,
    /// A type (or auth sub-type) no client may send: one only a server sends, or unknown.
    NotFromClient(u32),
    /// A token or version longer than its bound.
    TooLong,
}

impl From<DecodeError> for HocuspocusError {
    fn from(e: DecodeError) -> Self {
        HocuspocusError::Decode(e)
    }
}

impl HocuspocusError {
    pub fn reason(&self) -> &'static str {
        match self {
            HocuspocusError::Decode(_) => "malformed Hocuspocus message",
            HocuspocusError::Address => "malformed Hocuspocus message: bad document address",
            HocuspocusError::NotFromClient(TYPE_BROADCAST_STATELESS) => {
                "broadcast-stateless messages are not accepted from clients"
            }
            HocuspocusError::NotFromClient(_) => {
                "Hocuspocus message type not accepted from clients"
            }
            HocuspocusError::TooLong => "Hocuspocus auth message too long",
        }
    }
}

/// Decodes one client message (the payload of one binary WebSocket message). Types are
/// minimally encoded, as in `sync::protocol`. Sync and awareness bodies are not checked
/// here: the returned [`DocumentMessage::YMessage`] goes to `sync::protocol::decode`.
pub fn decode(payload: &[u8]) -> Result<Incoming<'_>, HocuspocusError> {
    if payload == PONG {
        return Ok(Incoming::Pong);
    }
    let mut r = Reader::new(payload);
    let address_len = r.var_u64()?;
    if address_len == 0 || address_len > ADDRESS_BYTES_MAX as u64 {
        return Err(HocuspocusError::Address);
    }
    let address = std::str::from_utf8(r.bytes(address_len as usize)?)
        .map_err(|_| HocuspocusError::Decode(DecodeError::InvalidText))?;
    let type_at = payload.len() - r.remaining();
    let message = match r.minimal_var_u32()? {
        TYPE_SYNC | TYPE_AWARENESS | TYPE_QUERY_AWARENESS => {
            return Ok(Incoming::Document {
                address,
                message: DocumentMessage::YMessage(&payload[type_at..]),
            });
        }
        TYPE_AUTH => match r.minimal_var_u32()? {
            AUTH_TOKEN => {
                let token = bounded_str(&mut r, TOKEN_BYTES_MAX)?;
                let provider_version = match r.remaining() {
                    0 => None,
                    _ => Some(bounded_str(&mut r, VERSION_BYTES_MAX)?),
                };
                DocumentMessage::Token {
                    token,
                    provider_version,
                }
            }
            _ => return Err(HocuspocusError::NotFromClient(TYPE_AUTH)),
        },
        TYPE_STATELESS => DocumentMessage::Stateless(r.var_str()?),
        TYPE_CLOSE => DocumentMessage::Close,
        other => return Err(HocuspocusError::NotFromClient(other)),
    };
    r.finish()?;
    Ok(Incoming::Document { address, message })
}

fn bounded_str<'a>(r: &mut Reader<'a>, max: usize) -> Result<&'a str, HocuspocusError> {
    let s = r.var_str()?;
    if s.len() > max {
        return Err(HocuspocusError::TooLong);
    }
    Ok(s)
}

/// `varString(address)`: what every message to a document starts with. Encoded once per
/// document and put before a y-websocket message, so a room's Hocuspocus frame is the
/// y-websocket one with this in front.
pub fn address_prefix(address: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(lib0::var_u64_len(address.len() as u64) + address.len());
    lib0::write_var_bytes(&mut out, address.as_bytes());
    out
}

/// `address · 02 · 02 · "read-write" | "readonly"`.
pub fn encode_authenticated(prefix: &[u8], can_write: bool) -> Vec<u8> {
    let scope = if can_write { "read-write" } else { "readonly" };
    with_string(prefix, &[TYPE_AUTH as u8, AUTH_AUTHENTICATED as u8], scope)
}

/// `address · 02 · 00`: the server asks for the document's token again (v3 and v4
/// providers answer with an auth message; v2 ones ignore it).
pub fn encode_token_request(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(&[TYPE_AUTH as u8, AUTH_TOKEN as u8]);
    out
}

/// `address · 02 · 01 · reason`: the document is refused; the socket stays open.
pub fn encode_permission_denied(prefix: &[u8], reason: &str) -> Vec<u8> {
    with_string(
        prefix,
        &[TYPE_AUTH as u8, AUTH_PERMISSION_DENIED as u8],
        reason,
    )
}

/// `address · 08 · 01` (applied) or `· 00` (refused).
pub fn encode_sync_status(prefix: &[u8], applied: bool) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(&[TYPE_SYNC_STATUS as u8, applied as u8]);
    out
}

/// `address · 07 · reason`: the server closes this document; the socket stays open.
pub fn encode_close(prefix: &[u8], reason: &str) -> Vec<u8> {
    with_string(prefix, &[TYPE_CLOSE as u8], reason)
}

/// `address · 05 · payload`.
pub fn encode_stateless(prefix: &[u8], payload: &str) -> Vec<u8> {
    with_string(prefix, &[TYPE_STATELESS as u8], payload)
}

fn with_string(prefix: &[u8], head: &[u8], s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + head.len() + 5 + s.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(head);
    lib0::write_var_bytes(&mut out, s.as_bytes());
    out
}

/// The major version a provider announced with its token (v4 on), if it is a number.
pub fn major_version(provider_version: &str) -> Option<u32> {
    provider_version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(payload: &[u8]) -> (&str, DocumentMessage<'_>) {
        match decode(payload).unwrap() {
            Incoming::Document { address, message } => (address, message),
            Incoming::Pong => panic!("not a document message"),
        }
    }

    /// The bytes of HOCUSPOCUS.md's worked example (provider 4.7.0's probe, doc `c1`).
    #[test]
    fn the_worked_example_decodes_and_encodes_byte_for_byte() {
        let token = [
            0x02, 0x63, 0x31, 0x02, 0x00, 0x00, 0x05, 0x70, 0x72, 0x6f, 0x62, 0x65,
        ];
        assert_eq!(
            doc(&token),
            (
                "c1",
                DocumentMessage::Token {
                    token: "",
                    provider_version: Some("probe"),
                }
            )
        );
        let step1 = [0x02, 0x63, 0x31, 0x00, 0x00, 0x01, 0x00];
        assert_eq!(doc(&step1), ("c1", DocumentMessage::YMessage(&step1[3..])));
        let prefix = address_prefix("c1");
        let mut authenticated = vec![0x02, 0x63, 0x31, 0x02, 0x02, 0x0a];
        authenticated.extend_from_slice(b"read-write");
        assert_eq!(encode_authenticated(&prefix, true), authenticated);
        assert_eq!(
            encode_sync_status(&prefix, true),
            [0x02, 0x63, 0x31, 0x08, 0x01]
        );
        assert_eq!(
            encode_sync_status(&prefix, false),
            [0x02, 0x63, 0x31, 0x08, 0x00]
        );
    }

    #[test]
    fn v2_and_v3_tokens_come_without_a_version() {
        let mut m = address_prefix("doc");
        m.extend_from_slice(&[2, 0]);
        lib0::write_var_bytes(&mut m, b"eyJ.a.b");
        assert_eq!(
            doc(&m).1,
            DocumentMessage::Token {
                token: "eyJ.a.b",
                provider_version: None
            }
        );
    }

    #[test]
    fn stateless_close_and_pong_decode() {
        let prefix = address_prefix("d");
        assert_eq!(
            doc(&encode_stateless(&prefix, "{\"type\":\"x\"}")).1,
            DocumentMessage::Stateless("{\"type\":\"x\"}")
        );
        let mut close = prefix.clone();
        close.push(7);
        assert_eq!(doc(&close).1, DocumentMessage::Close);
        assert_eq!(decode(&PONG).unwrap(), Incoming::Pong);
        // The server's close carries a reason; a client's is empty.
        assert!(decode(&encode_close(&prefix, "bye")).is_err());
    }

    #[test]
    fn the_token_request_is_an_auth_message_without_a_token() {
        // HOCUSPOCUS.md: server token-refresh request `addr · 02 · 00` (no body).
        assert_eq!(
            encode_token_request(&address_prefix("c1")),
            [0x02, 0x63, 0x31, 0x02, 0x00]
        );
        // A client cannot send it: a token message needs its token.
        assert!(decode(&encode_token_request(&address_prefix("c1"))).is_err());
    }

    #[test]
    fn what_only_a_server_sends_is_refused() {
        let prefix = address_prefix("d");
        for server_only in [
            encode_authenticated(&prefix, true),
            encode_permission_denied(&prefix, "no"),
            encode_sync_status(&prefix, true),
            [prefix.as_slice(), &[6], &[1, b'x']].concat(),
            [prefix.as_slice(), &[4], &[0, 1, 0]].concat(),
            [prefix.as_slice(), &[11]].concat(),
            PING.to_vec(),
        ] {
            assert!(
                matches!(
                    decode(&server_only),
                    Err(HocuspocusError::NotFromClient(_) | HocuspocusError::Decode(_))
                ),
                "{server_only:?}"
            );
        }
        assert_eq!(
            decode(&[prefix.as_slice(), &[6], &[1, b'x']].concat()),
            Err(HocuspocusError::NotFromClient(TYPE_BROADCAST_STATELESS))
        );
    }

    #[test]
    fn addresses_and_auth_strings_are_bounded_before_use() {
        assert_eq!(decode(&[0, 0, 0, 1, 0]), Err(HocuspocusError::Address));
        let long = "d".repeat(ADDRESS_BYTES_MAX + 1);
        let mut m = address_prefix(&long);
        m.push(3);
        assert_eq!(decode(&m), Err(HocuspocusError::Address));
        // A length that claims more than the bytes there.
        assert!(decode(&[0xff, 0x03, b'a']).is_err());
        let mut m = address_prefix("d");
        m.extend_from_slice(&[2, 0]);
        lib0::write_var_bytes(&mut m, "t".repeat(TOKEN_BYTES_MAX + 1).as_bytes());
        assert_eq!(decode(&m), Err(HocuspocusError::TooLong));
        // Not UTF-8.
        assert!(decode(&[1, 0xff, 3]).is_err());
        // An overlong type would read as a valid one elsewhere.
        assert!(decode(&[1, b'd', 0x80, 0x00]).is_err());
        // Trailing bytes after a close or a token.
        assert!(decode(&[1, b'd', 7, 0]).is_err());
    }

    #[test]
    fn provider_versions_parse_to_their_major() {
        assert_eq!(major_version("4.8.0"), Some(4));
        assert_eq!(major_version("probe"), None);
        assert_eq!(major_version("10"), Some(10));
    }
}
