//! WebSocket frame parsing, unmasking and message assembly, as the session runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket::ws::frame::parse_header;
use wiresocket::ws::mask::unmask;
use wiresocket::ws::message::{Assembler, MessageLimits};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    let mut assembler = Assembler::new(MessageLimits {
        message_bytes_max: 1 << 16,
        fragments_max: 64,
    });
    let mut at = 0;
    while let Ok(Some(header)) = parse_header(&bytes[at..], 1 << 16) {
        if header.frame_len() > bytes.len() - at {
            break;
        }
        let payload = &mut bytes[at + header.header_len..at + header.frame_len()];
        unmask(payload, header.mask, 0);
        if assembler.push(&header, payload).is_err() {
            break;
        }
        at += header.frame_len();
    }
});
