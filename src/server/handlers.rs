//! What a session does with data messages: sync a document, or echo (conformance runs).

use super::session::{Handler, Refused};
use super::shard::Shard;
use super::stats;
use crate::outbox::{shared_frame, Outbox};
use crate::sync::room::{Room, Slot};
use crate::ws::close;
use crate::ws::frame::Opcode;
use std::cell::RefCell;
use std::rc::Rc;

/// A connection subscribed to one document's room.
pub struct DocumentHandler {
    pub shard: Rc<Shard>,
    pub key: String,
    pub room: Rc<RefCell<Room>>,
    pub slot: Slot,
    /// False for `viewer` tokens: updates are refused with an auth message.
    pub can_write: bool,
}

impl DocumentHandler {
    pub fn join(shard: Rc<Shard>, key: String, outbox: Rc<Outbox>, can_write: bool) -> Self {
        let room = shard.open_room(&key);
        let slot = room.borrow_mut().join(outbox);
        stats::add(&shard.my_stats().connections, 1);
        DocumentHandler {
            shard,
            key,
            room,
            slot,
            can_write,
        }
    }
}

impl Handler for DocumentHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refused> {
        if opcode != Opcode::Binary {
            return Err((
                close::UNSUPPORTED_DATA,
                "document connections take binary y-websocket messages",
            ));
        }
        let outcome = self
            .room
            .borrow_mut()
            .receive(self.slot, payload, self.can_write)
            .map_err(|r| (r.close_code(), r.reason()))?;
        stats::add(
            &self.shard.my_stats().deliveries_total,
            outcome.deliveries as u64,
        );
        Ok(())
    }

    fn on_end(&mut self) {
        self.room.borrow_mut().leave(self.slot);
        stats::sub(&self.shard.my_stats().connections, 1);
        self.shard.room_left(&self.key);
    }
}

/// Sends every message back as it came.
pub struct EchoHandler {
    pub outbox: Rc<Outbox>,
}

impl Handler for EchoHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refused> {
        self.outbox.push(&shared_frame(opcode, &[payload]));
        Ok(())
    }

    fn on_end(&mut self) {}
}
