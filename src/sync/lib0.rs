//! lib0's binary encoding (the one Yjs uses): variable-length integers and length-prefixed
//! byte strings. The reader never trusts a length: it checks it against the bytes left.

/// Why bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Ran out of bytes.
    Truncated,
    /// A varint longer than its type, or a declared count or length larger than the bytes
    /// that could hold it.
    Overflow,
    /// Bytes that must be UTF-8 (or JSON) are not.
    InvalidText,
    /// A tag or type byte this protocol does not define.
    UnknownTag,
    /// Nesting deeper than the limit.
    TooDeep,
    /// Bytes left over after the message.
    TrailingBytes,
    /// A varint written with more bytes than its value needs, where the protocol decides
    /// on the value (a message type): a limit keyed on the bytes would miss it.
    NonMinimal,
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// An unsigned varint of at most 64 bits.
    pub fn var_u64(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = (b & 0x7F) as u64;
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Overflow);
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Overflow)
    }

    /// An unsigned varint that must fit 32 bits (clocks, lengths).
    pub fn var_u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.var_u64()?).map_err(|_| DecodeError::Overflow)
    }

    /// An unsigned 32-bit varint written in as few bytes as its value takes.
    pub fn minimal_var_u32(&mut self) -> Result<u32, DecodeError> {
        let start = self.pos;
        let value = self.var_u32()?;
        if self.pos - start != var_u64_len(value as u64) {
            return Err(DecodeError::NonMinimal);
        }
        Ok(value)
    }

    /// A signed varint (lib0 `writeVarInt`): sign in bit 6 of the first byte.
    pub fn var_i64(&mut self) -> Result<i64, DecodeError> {
        let first = self.u8()?;
        let negative = first & 0x40 != 0;
        let mut value = (first & 0x3F) as u64;
        let mut more = first & 0x80 != 0;
        let mut shift = 6;
        while more {
            if shift > 62 {
                return Err(DecodeError::Overflow);
            }
            let b = self.u8()?;
            value |= ((b & 0x7F) as u64) << shift;
            more = b & 0x80 != 0;
            shift += 7;
        }
        let value = value as i64;
        Ok(if negative { -value } else { value })
    }

    /// A count of items that each take at least `item_bytes_min` bytes: refused at once if the
    /// remaining bytes could not hold that many, so no caller reserves for a lie.
    pub fn count(&mut self, item_bytes_min: usize) -> Result<usize, DecodeError> {
        let n = self.var_u32()? as usize;
        if n.saturating_mul(item_bytes_min.max(1)) > self.remaining() {
            return Err(DecodeError::Overflow);
        }
        Ok(n)
    }

    /// A length-prefixed byte string.
    pub fn var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.var_u64()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Overflow);
        }
        self.bytes(n as usize)
    }

    /// A length-prefixed UTF-8 string.
    pub fn var_str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| DecodeError::InvalidText)
    }
}

pub fn write_var_u64(out: &mut Vec<u8>, value: u64) {
    let mut bytes = [0u8; 10];
    let n = put_var_u64(&mut bytes, value);
    out.extend_from_slice(&bytes[..n]);
}

/// Writes `value` as a varint at the start of `out` (at least 10 bytes) and returns the
/// bytes written.
pub fn put_var_u64(out: &mut [u8], mut value: u64) -> usize {
    let mut n = 0;
    while value >= 0x80 {
        out[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    out[n] = value as u8;
    n + 1
}

pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes `write_var_u64(value)` takes.
pub fn var_u64_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            (1 << 53) - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_var_u64(&mut out, v);
            assert_eq!(out.len(), var_u64_len(v), "{v}");
            let mut r = Reader::new(&out);
            assert_eq!(r.var_u64(), Ok(v));
            r.finish().unwrap();
        }
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut r = Reader::new(&[0xFF; 11]);
        assert_eq!(r.var_u64(), Err(DecodeError::Overflow));
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert_eq!(r.var_u32(), Err(DecodeError::Overflow));
        let mut r = Reader::new(&[0x80]);
        assert_eq!(r.var_u64(), Err(DecodeError::Truncated));
    }

    #[test]
    fn non_minimal_varints_are_told_apart() {
        // 0 and 2 written in two bytes: other decoders read them as 0 and 2.
        assert_eq!(Reader::new(&[0x80, 0x00]).var_u32(), Ok(0));
        assert_eq!(
            Reader::new(&[0x80, 0x00]).minimal_var_u32(),
            Err(DecodeError::NonMinimal)
        );
        assert_eq!(
            Reader::new(&[0x82, 0x80, 0x00]).minimal_var_u32(),
            Err(DecodeError::NonMinimal)
        );
        assert_eq!(Reader::new(&[0x02]).minimal_var_u32(), Ok(2));
        assert_eq!(Reader::new(&[0x80, 0x01]).minimal_var_u32(), Ok(128));
    }

    #[test]
    fn signed_varints_match_lib0() {
        // lib0: writeVarInt(-1) = [0x41], writeVarInt(64) = [0x80, 0x01], writeVarInt(-65) = [0xC1, 0x01]
        assert_eq!(Reader::new(&[0x41]).var_i64(), Ok(-1));
        assert_eq!(Reader::new(&[0x80, 0x01]).var_i64(), Ok(64));
        assert_eq!(Reader::new(&[0xC1, 0x01]).var_i64(), Ok(-65));
    }

    #[test]
    fn lying_counts_and_lengths_are_refused_before_use() {
        // 2^32-1 items claimed in three bytes.
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0]);
        assert_eq!(r.count(1), Err(DecodeError::Overflow));
        let mut r = Reader::new(&[0x05, b'a', b'b']);
        assert_eq!(r.var_bytes(), Err(DecodeError::Overflow));
        let mut r = Reader::new(&[0x02, 0xC3, 0x28]);
        assert_eq!(r.var_str(), Err(DecodeError::InvalidText));
    }
}
