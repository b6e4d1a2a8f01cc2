//! Hocuspocus-framed client messages: the framing decoder, then (for sync and awareness)
//! the y-websocket decoder and a room, as the server runs them. Each input is one read's
//! messages, each prefixed with a one-byte length class.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::rc::Rc;
use wiresocket::outbox::Outbox;
use wiresocket::sync::hocuspocus::{self, DocumentMessage, Incoming};
use wiresocket::sync::room::{Room, RoomConfig};

fuzz_target!(|data: &[u8]| {
    let mut room = Room::new(RoomConfig::default());
    let sender = room.join(Rc::new(Outbox::new(1 << 20)));
    room.join(Rc::new(Outbox::new(1 << 20)));
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize * 8).min(tail.len());
        let message = &tail[..len];
        rest = &tail[len..];
        let Ok(incoming) = hocuspocus::decode(message) else {
            break;
        };
        match incoming {
            Incoming::Pong => {}
            Incoming::Document { address, message } => {
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
                        assert!(provider_version
                            .is_none_or(|v| v.len() <= hocuspocus::VERSION_BYTES_MAX));
                    }
                    DocumentMessage::Stateless(_) | DocumentMessage::Close => {}
                }
            }
        }
    }
    room.flush();
    room.integrate_all();
});
