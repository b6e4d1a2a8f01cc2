//! Frame headers (RFC 6455 section 5.2): parsing what clients send, encoding what we send.

/// Frame opcodes this server understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    pub payload_len: u64,
    /// Bytes of header before the payload (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header plus payload; fits in usize because the payload was checked against a usize limit.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len as usize
    }
}

/// Why a client frame is refused. Every variant fails the connection (`refusal` says with
/// which code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// Opcodes 3-7 and 11-15.
    ReservedOpcode,
    /// Clients must mask every frame (section 5.1).
    Unmasked,
    /// Control frames carry at most 125 bytes and are never fragmented (section 5.5).
    BadControlFrame,
    /// The 64-bit length form with its most significant bit set.
    LengthOverflow,
    /// Larger than the configured frame maximum.
    TooLarge,
}

impl FrameError {
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::ReservedOpcode => "reserved opcode",
            FrameError::Unmasked => "client frames must be masked",
            FrameError::BadControlFrame => "control frame fragmented or over 125 bytes",
            FrameError::LengthOverflow => "invalid payload length",
            FrameError::TooLarge => "frame too large",
        }
    }
}

/// Parses one client frame header from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. The payload length is checked against
/// `frame_bytes_max` here, before anything is reserved for it.
pub fn parse_header(buf: &[u8], frame_bytes_max: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode)?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short_len = b1 & 0x7F;
    if opcode.is_control() && (!fin || short_len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    let (payload_len, len_bytes) = match short_len {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    if payload_len > frame_bytes_max as u64 {
        return Err(FrameError::TooLarge);
    }
    let mask_at = 2 + len_bytes;
    if buf.len() < mask_at + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[mask_at..mask_at + 4]);
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len: mask_at + 4,
    }))
}

/// The longest header a server frame has (no mask).
pub const SERVER_HEADER_MAX: usize = 10;

/// Writes the header of an unmasked, unfragmented server frame into `out`; returns its length.
pub fn encode_header(
    out: &mut [u8; SERVER_HEADER_MAX],
    opcode: Opcode,
    payload_len: usize,
) -> usize {
    out[0] = 0x80 | opcode.bits();
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Appends a whole server frame (header and payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    let mut header = [0u8; SERVER_HEADER_MAX];
    let n = encode_header(&mut header, opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 << 20;

    fn client_frame(b0: u8, payload_len: usize) -> Vec<u8> {
        let mut out = vec![b0];
        if payload_len < 126 {
            out.push(0x80 | payload_len as u8);
        } else if payload_len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    #[test]
    fn parses_all_three_length_forms() {
        for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let bytes = client_frame(0x82, len);
            let h = parse_header(&bytes, MAX).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len, header_len);
            assert_eq!(h.opcode, Opcode::Binary);
            assert!(h.fin);
            assert_eq!(h.mask, [1, 2, 3, 4]);
        }
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        for len in [5, 300, 70000] {
            let bytes = client_frame(0x81, len);
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_header(&bytes[..cut], MAX),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        assert_eq!(
            parse_header(&[0xC2, 0x80], MAX),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80], MAX),
            Err(FrameError::ReservedOpcode)
        );
        assert_eq!(
            parse_header(&[0x8B, 0x80], MAX),
            Err(FrameError::ReservedOpcode)
        );
        assert_eq!(parse_header(&[0x82, 0x00], MAX), Err(FrameError::Unmasked));
        assert_eq!(
            parse_header(&[0x09, 0x80], MAX),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE], MAX),
            Err(FrameError::BadControlFrame)
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_header(&huge, MAX), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn length_limit_is_checked_from_the_header_alone() {
        // Ten bytes announcing 16 GiB: refused before any mask byte or payload arrives.
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&(16u64 << 30).to_be_bytes());
        assert_eq!(parse_header(&bytes, MAX), Err(FrameError::TooLarge));
    }

    #[test]
    fn encoded_headers_round_trip_through_the_client_parser() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            let mut header = [0u8; SERVER_HEADER_MAX];
            let n = encode_header(&mut header, Opcode::Binary, len);
            // Re-parse as if masked: set the mask bit and append a zero mask.
            let mut as_client = header[..n].to_vec();
            as_client[1] |= 0x80;
            as_client.extend_from_slice(&[0, 0, 0, 0]);
            let h = parse_header(&as_client, usize::MAX).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len, n + 4);
        }
    }
}
