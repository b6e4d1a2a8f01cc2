//! Message assembly (RFC 6455 section 5.4): fragments in, whole messages out, with limits on
//! message size and fragment count, and UTF-8 checked as text arrives.

use super::frame::{FrameHeader, Opcode};
use super::utf8::Utf8Validator;

/// Limits on what one message may grow to.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    pub message_bytes_max: usize,
    pub fragments_max: usize,
}

/// What one complete frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message: `Text` (valid UTF-8) or `Binary`.
    Message {
        opcode: Opcode,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A close frame's raw payload (see [`close::parse_close_payload`]).
    Close(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// A continuation with nothing to continue, or a new message inside a fragmented one.
    UnexpectedFragment,
    TooLarge,
    TooManyFragments,
    InvalidUtf8,
}

impl MessageError {
    pub fn reason(self) -> &'static str {
        match self {
            MessageError::UnexpectedFragment => "unexpected continuation frame",
            MessageError::TooLarge => "message too large",
            MessageError::TooManyFragments => "too many fragments",
            MessageError::InvalidUtf8 => "text is not valid UTF-8",
        }
    }
}

/// Reassembles fragmented messages. Unfragmented messages pass through without a copy.
#[derive(Debug)]
pub struct Assembler {
    limits: MessageLimits,
    /// The opcode of the fragmented message in progress, if any.
    partial: Option<Opcode>,
    buf: Vec<u8>,
    fragments: usize,
    utf8: Utf8Validator,
    /// `buf` holds a message already handed out; clear it before the next fragment.
    delivered: bool,
}

/// Assembly buffers larger than this are released after their message instead of kept for
/// the next one, so that one large message does not pin memory for the connection's life.
const RETAINED_BYTES_MAX: usize = 64 << 10;

impl Assembler {
    pub fn new(limits: MessageLimits) -> Self {
        Assembler {
            limits,
            partial: None,
            buf: Vec::new(),
            fragments: 0,
            utf8: Utf8Validator::default(),
            delivered: false,
        }
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes of the fragmented message in progress, if any.
    pub fn buffered_bytes(&self) -> usize {
        if self.partial.is_some() {
            self.buf.len()
        } else {
            0
        }
    }

    /// Bytes of buffer held (a fragmented message in progress, or capacity kept for the
    /// next one).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes one complete, already unmasked frame.
    pub fn push<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Option<Event<'a>>, MessageError> {
        debug_assert_eq!(payload.len() as u64, header.payload_len);
        if self.delivered {
            self.delivered = false;
            self.buf.clear();
            if self.buf.capacity() > RETAINED_BYTES_MAX {
                self.buf = Vec::new();
            }
        }
        match header.opcode {
            Opcode::Ping => Ok(Some(Event::Ping(payload))),
            Opcode::Pong => Ok(Some(Event::Pong(payload))),
            Opcode::Close => Ok(Some(Event::Close(payload))),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(MessageError::UnexpectedFragment);
                }
                if payload.len() > self.limits.message_bytes_max {
                    return Err(MessageError::TooLarge);
                }
                if header.fin {
                    if header.opcode == Opcode::Text && std::str::from_utf8(payload).is_err() {
                        return Err(MessageError::InvalidUtf8);
                    }
                    return Ok(Some(Event::Message {
                        opcode: header.opcode,
                        payload,
                    }));
                }
                self.partial = Some(header.opcode);
                self.fragments = 1;
                self.utf8 = Utf8Validator::default();
                self.append(payload, false)?;
                Ok(None)
            }
            Opcode::Continuation => {
                let Some(opcode) = self.partial else {
                    return Err(MessageError::UnexpectedFragment);
                };
                self.fragments += 1;
                if self.fragments > self.limits.fragments_max {
                    return Err(MessageError::TooManyFragments);
                }
                if self.buf.len() + payload.len() > self.limits.message_bytes_max {
                    return Err(MessageError::TooLarge);
                }
                self.append(payload, header.fin)?;
                if !header.fin {
                    return Ok(None);
                }
                self.partial = None;
                self.delivered = true;
                Ok(Some(Event::Message {
                    opcode,
                    payload: &self.buf,
                }))
            }
        }
    }

    fn append(&mut self, payload: &[u8], last: bool) -> Result<(), MessageError> {
        if self.partial == Some(Opcode::Text) {
            self.utf8
                .feed(payload, last)
                .map_err(|_| MessageError::InvalidUtf8)?;
        }
        self.buf.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fin: bool, opcode: Opcode, len: usize) -> FrameHeader {
        FrameHeader {
            fin,
            opcode,
            mask: [0; 4],
            payload_len: len as u64,
            header_len: 6,
        }
    }

    fn assembler() -> Assembler {
        Assembler::new(MessageLimits {
            message_bytes_max: 10,
            fragments_max: 3,
        })
    }

    fn push(
        a: &mut Assembler,
        fin: bool,
        op: Opcode,
        p: &[u8],
    ) -> Result<Option<Vec<u8>>, MessageError> {
        Ok(a.push(&header(fin, op, p.len()), p)?.map(|e| match e {
            Event::Message { payload, .. } => payload.to_vec(),
            other => panic!("unexpected {other:?}"),
        }))
    }

    #[test]
    fn unfragmented_messages_pass_through() {
        let mut a = assembler();
        assert_eq!(
            push(&mut a, true, Opcode::Binary, b"abc"),
            Ok(Some(b"abc".to_vec()))
        );
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_interleave() {
        let mut a = assembler();
        assert_eq!(push(&mut a, false, Opcode::Text, b"he"), Ok(None));
        let ping = a.push(&header(true, Opcode::Ping, 1), b"p").unwrap();
        assert_eq!(ping, Some(Event::Ping(b"p")));
        assert_eq!(push(&mut a, false, Opcode::Continuation, b"ll"), Ok(None));
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, b"o"),
            Ok(Some(b"hello".to_vec()))
        );
        // The buffer is reused cleanly for the next message.
        assert_eq!(push(&mut a, false, Opcode::Binary, b"x"), Ok(None));
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, b"y"),
            Ok(Some(b"xy".to_vec()))
        );
    }

    #[test]
    fn limits_and_sequencing_errors() {
        let mut a = assembler();
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, b"x"),
            Err(MessageError::UnexpectedFragment)
        );
        let mut a = assembler();
        push(&mut a, false, Opcode::Binary, b"x").unwrap();
        assert_eq!(
            push(&mut a, true, Opcode::Binary, b"x"),
            Err(MessageError::UnexpectedFragment)
        );
        let mut a = assembler();
        assert_eq!(
            push(&mut a, true, Opcode::Binary, &[0; 11]),
            Err(MessageError::TooLarge)
        );
        let mut a = assembler();
        push(&mut a, false, Opcode::Binary, &[0; 6]).unwrap();
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, &[0; 5]),
            Err(MessageError::TooLarge)
        );
        let mut a = assembler();
        push(&mut a, false, Opcode::Binary, b"1").unwrap();
        push(&mut a, false, Opcode::Continuation, b"2").unwrap();
        push(&mut a, false, Opcode::Continuation, b"3").unwrap();
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, b"4"),
            Err(MessageError::TooManyFragments)
        );
    }

    #[test]
    fn utf8_fails_fast_inside_fragmented_text() {
        let mut a = assembler();
        push(&mut a, false, Opcode::Text, b"ok").unwrap();
        assert_eq!(
            push(&mut a, false, Opcode::Continuation, &[0xff]),
            Err(MessageError::InvalidUtf8)
        );
        let mut a = assembler();
        assert_eq!(
            push(&mut a, true, Opcode::Text, &[0xc3]),
            Err(MessageError::InvalidUtf8)
        );
        // A code point split across fragments is fine.
        let mut a = assembler();
        push(&mut a, false, Opcode::Text, &[0xc3]).unwrap();
        assert_eq!(
            push(&mut a, true, Opcode::Continuation, &[0xa9]),
            Ok(Some("é".as_bytes().to_vec()))
        );
    }
}
