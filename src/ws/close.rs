//! Close codes (RFC 6455 section 7.4) and close frame payloads.

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;
pub const SERVICE_RESTART: u16 = 1012;
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The longest reason that fits a control frame: 125 bytes less the 2-byte code.
pub const REASON_BYTES_MAX: usize = 123;

/// Whether a peer may send `code` in a close frame. 1004-1006 and 1015 are reserved for
/// local use and never go on the wire; 1016-2999 are unassigned; 3000-4999 belong to
/// libraries and applications.
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What a client's close frame payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayload<'a> {
    /// An empty close frame: no code given.
    Empty,
    Code {
        code: u16,
        reason: &'a str,
    },
}

/// Why a client's close frame payload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseError {
    /// One byte: a code is two.
    Truncated,
    InvalidCode(u16),
    ReasonNotUtf8,
}

pub fn parse_close_payload(payload: &[u8]) -> Result<ClosePayload<'_>, CloseError> {
    match payload.len() {
        0 => Ok(ClosePayload::Empty),
        1 => Err(CloseError::Truncated),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_on_wire(code) {
                return Err(CloseError::InvalidCode(code));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| CloseError::ReasonNotUtf8)?;
            Ok(ClosePayload::Code { code, reason })
        }
    }
}

/// Builds a close frame payload. A reason longer than [`REASON_BYTES_MAX`] is cut at a
/// character boundary, because a control frame larger than 125 bytes is a protocol error.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_follows_the_registry() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_on_wire(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_on_wire(code), "{code}");
        }
    }

    #[test]
    fn parses_and_refuses_close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(ClosePayload::Empty));
        assert_eq!(parse_close_payload(&[3]), Err(CloseError::Truncated));
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, b'o', b'k']),
            Ok(ClosePayload::Code {
                code: 1000,
                reason: "ok"
            })
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xED]),
            Err(CloseError::InvalidCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(CloseError::ReasonNotUtf8)
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let payload = close_payload(4009, &reason);
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4009);
    }
}
