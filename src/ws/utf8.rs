//! Incremental UTF-8 validation for text messages that arrive in fragments: a message must be
//! refused (1007) as soon as its bytes cannot be the start of valid UTF-8, not only at the end.

/// Validation state carried between the fragments of one text message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The bytes of a code point cut by a fragment boundary (at most 3).
    pending: [u8; 4],
    pending_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Feeds the next piece. `last` is true for the final piece of the message, where an
    /// incomplete code point is an error too.
    pub fn feed(&mut self, mut bytes: &[u8], last: bool) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Complete the cut code point first, one byte at a time (at most 3 more).
            while self.pending_len < 4 && !bytes.is_empty() {
                self.pending[self.pending_len] = bytes[0];
                self.pending_len += 1;
                bytes = &bytes[1..];
                match std::str::from_utf8(&self.pending[..self.pending_len]) {
                    Ok(_) => {
                        self.pending_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            if self.pending_len > 0 {
                // Still incomplete: only fine if more bytes may follow.
                return if last { Err(InvalidUtf8) } else { Ok(()) };
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None if last => Err(InvalidUtf8),
                None => {
                    let tail = &bytes[e.valid_up_to()..];
                    debug_assert!(tail.len() < 4);
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.pending_len = tail.len();
                    Ok(())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: usize) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        v.feed(&bytes[..at], false)?;
        v.feed(&bytes[at..], true)
    }

    #[test]
    fn every_split_of_valid_text_is_accepted() {
        let text = "κόσμε a€𝄞z".as_bytes();
        for at in 0..=text.len() {
            assert_eq!(feed_split(text, at), Ok(()), "split at {at}");
        }
    }

    #[test]
    fn byte_by_byte_valid_text_is_accepted() {
        let text = "€𝄞κ".as_bytes();
        let mut v = Utf8Validator::default();
        for (i, b) in text.iter().enumerate() {
            v.feed(std::slice::from_ref(b), i + 1 == text.len())
                .unwrap();
        }
    }

    #[test]
    fn invalid_bytes_fail_fast_before_the_end() {
        let mut v = Utf8Validator::default();
        // 0xed 0xa0 0x80 encodes a UTF-16 surrogate: invalid in UTF-8.
        assert_eq!(v.feed(&[b'a', 0xed, 0xa0, 0x80], false), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        v.feed(&[0xed], false).unwrap();
        assert_eq!(v.feed(&[0xa0], false), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_code_point_at_the_end_is_invalid() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xe2, 0x82], true), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        v.feed(&[0xe2], false).unwrap();
        assert_eq!(v.feed(&[0x82], true), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        v.feed(&[0xe2], false).unwrap();
        assert_eq!(v.feed(&[], true), Err(InvalidUtf8));
    }
}
