//! Hocuspocus-framed client messages: the framing decoder, then (for sync and awareness)
//! the y-websocket decoder and a room, as the server runs them. Fails if one input makes
//! the process hold more than 64 MiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket::sync::hocuspocus::{self, DocumentMessage, Incoming};
use wiresocket_fuzz::{messages, room_of_two, Budget};

#[global_allocator]
static ALLOCATOR: Budget = Budget;

fuzz_target!(|data: &[u8]| {
    let (mut room, sender) = room_of_two();
    for message in messages(data) {
        let Ok(incoming) = hocuspocus::decode(message) else {
            break;
        };
        let Incoming::Document { address, message } = incoming else {
            continue;
        };
        assert!(!address.is_empty() && address.len() <= hocuspocus::ADDRESS_BYTES_MAX);
        match message {
            DocumentMessage::YMessage(m) => {
                if room.stage(sender, m, true).is_err() {
                    break;
                }
            }
            DocumentMessage::Token {
                token,
                provider_version,
            } => {
                assert!(token.len() <= hocuspocus::TOKEN_BYTES_MAX);
                assert!(provider_version.is_none_or(|v| v.len() <= hocuspocus::VERSION_BYTES_MAX));
            }
            DocumentMessage::Stateless(_) | DocumentMessage::Close => {}
        }
    }
    room.flush();
    room.integrate_all();
});
