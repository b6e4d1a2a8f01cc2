//! What a session does with data messages: sync a document, or echo (conformance runs).

use super::admission::Admission;
use super::handler::Handler;
use super::membership::{ConnectionCount, ConnectionGauge, Membership, RoomClaim};
use super::shard::Shard;
use super::side_messages;
use super::stats;
use crate::auth::claims::User;
use crate::outbox::{shared_frame, Outbox};
use crate::refusal::Refusal;
use crate::sync::message_rate::MessageRate;
use crate::sync::room::Framing;
use crate::ws::frame::Opcode;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

/// A y-websocket connection: one document, named by its URL.
pub struct DocumentHandler {
    shard: Rc<Shard>,
    /// Dropped (the room left) before the count is given back.
    membership: Membership,
    /// Given back at the end (not when the session's close wait is over).
    held: Option<(ConnectionCount, ConnectionGauge)>,
    rate: MessageRate,
    /// Not read since its room fell behind (counted once per wait, not per poll).
    waiting: bool,
    /// Who the token names (design comments carry it).
    user: Arc<User>,
}

impl DocumentHandler {
    /// Admits the connection against its app's limits (4004, 4005, 4008), opens the room
    /// (4009 when the document lives on another node, 1013 when the registry does not
    /// answer) and joins it. A refusal (or a panic) leaves no count behind.
    pub async fn join(
        shard: Rc<Shard>,
        admission: Admission,
        outbox: Rc<Outbox>,
    ) -> Result<Self, Refusal> {
        let count = ConnectionCount::acquire(&shard, &admission.app, &admission.limits).await?;
        let user = admission.user.clone();
        let claim = RoomClaim::open(&shard, admission).await?;
        let membership = claim.join(outbox, Framing::YWebsocket)?;
        Ok(DocumentHandler {
            rate: new_message_rate(&shard),
            waiting: false,
            user,
            held: Some((count, ConnectionGauge::new(&shard))),
            membership,
            shard,
        })
    }
}

/// Counts a connection's wait for a room that is behind once per wait: the session polls
/// again whenever its task wakes (its outbox too). Returns `ready`.
pub fn count_wait(shard: &Shard, waiting: &mut bool, ready: Poll<()>) -> Poll<()> {
    if ready.is_pending() && !std::mem::replace(waiting, true) {
        stats::add(&shard.my_stats().integration_waits_total, 1);
    }
    if ready.is_ready() {
        *waiting = false;
    }
    ready
}

/// A connection's message rate, full.
pub fn new_message_rate(shard: &Shard) -> MessageRate {
    let ws = &shard.config().websocket;
    MessageRate::new(
        ws.messages_per_second,
        ws.messages_burst,
        crate::log::monotonic_ms(),
    )
}

impl Handler for DocumentHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refusal> {
        if opcode == Opcode::Binary {
            return self.membership.on_message(payload, &mut self.rate);
        }
        // A text frame is a side message (its UTF-8 checked by the message layer).
        let text = std::str::from_utf8(payload)
            .map_err(|_| Refusal::Message(crate::ws::message::MessageError::InvalidUtf8))?;
        let m = &mut self.membership;
        let side = side_messages::read(
            &self.shard,
            m.key(),
            &self.user,
            m.can_write(),
            text,
            &mut self.rate,
        )?;
        match side {
            Some(out) => m.side_message(&out.payload, out.echo),
            None => m.refuse_read_only(),
        }
        Ok(())
    }

    fn on_batch_end(&mut self) -> Result<(), Refusal> {
        self.membership.flush();
        Ok(())
    }

    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let ready = self.membership.poll_caught_up(cx);
        count_wait(&self.shard, &mut self.waiting, ready)
    }

    fn on_panic(&mut self) {
        self.membership.reset();
    }

    fn on_end(&mut self) {
        self.membership.leave();
        self.held = None;
    }
}

/// Sends every message back as it came.
pub struct EchoHandler {
    pub outbox: Rc<Outbox>,
}

impl Handler for EchoHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refusal> {
        self.outbox.push(&shared_frame(opcode, &[payload]));
        Ok(())
    }

    fn on_end(&mut self) {}
}
