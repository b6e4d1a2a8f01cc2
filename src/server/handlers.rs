//! What a session does with data messages: sync a document, or echo (conformance runs).

use super::session::Handler;
use super::shard::{RoomRefusal, Shard};
use super::stats;
use crate::auth::claims::Limits;
use crate::outbox::{shared_frame, Outbox};
use crate::refusal::Refusal;
use crate::registry::rate::MinuteWindow;
use crate::registry::NodeInfo;
use crate::sync::message_rate::{self, MessageRate};
use crate::sync::room::{Room, Slot};
use crate::ws::close;
use crate::ws::frame::Opcode;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// A connection subscribed to one document's room.
pub struct DocumentHandler {
    shard: Rc<Shard>,
    key: String,
    /// The app's connection count this connection holds; `None` once it has left.
    count: Option<ConnectionCount>,
    room: Rc<RefCell<Room>>,
    slot: Slot,
    /// False for `viewer` tokens: updates are refused with an auth message.
    can_write: bool,
    ops_per_minute: Option<u64>,
    ops: Arc<MinuteWindow>,
    rate: MessageRate,
    /// Not read since its room fell behind (counted once per wait, not per poll).
    waiting: bool,
}

/// One of an app's connections, counted in the registry: given back when dropped, so that no
/// way out of an admission or a session (a refusal, the end, a panic that drops it) leaves
/// the count behind.
struct ConnectionCount {
    shard: Rc<Shard>,
    /// `{tenant}::{app}`.
    app: String,
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        release_connection(&self.shard, &self.app);
    }
}

/// What a connection to a document is allowed, from its verified token.
pub struct Admission {
    pub key: String,
    /// The document name as it appeared in the request path (for redirects).
    pub document: String,
    pub app: String,
    pub limits: Limits,
    pub can_write: bool,
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
        let Admission {
            key,
            document,
            app,
            limits,
            can_write,
        } = admission;
        let registry = &shard.shared.registry;
        let node = &shard.shared.node;
        match registry
            .acquire_connection(&app, node, limits.max_connections, crate::log::unix_ms())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Refusal::ConnectionLimit(e.limit)),
            Err(_) => return Err(Refusal::RegistryUnavailable),
        }
        let count = ConnectionCount {
            shard: shard.clone(),
            app,
        };
        let room = match shard
            .open_room(&key, &count.app, limits.max_documents)
            .await
        {
            Ok(room) => room,
            Err(refusal) => {
                return Err(match refusal {
                    RoomRefusal::DocumentLimit(e) => Refusal::DocumentLimit {
                        limit: e.limit,
                        active: e.active,
                    },
                    RoomRefusal::Elsewhere(home) => {
                        Refusal::Redirect(redirect_reason(&home, &document))
                    }
                    RoomRefusal::Unavailable(why) => {
                        crate::log::warn("registry_unavailable", &[("error", &why)]);
                        Refusal::RegistryUnavailable
                    }
                });
            }
        };
        if let Some(max) = limits.max_users_per_doc {
            if room.borrow().subscriber_count() as u64 >= max {
                // A room created just now is still empty: it goes after its grace period.
                shard.room_left(&key);
                return Err(Refusal::UsersPerDocument(max));
            }
        }
        let slot = room.borrow_mut().join(outbox);
        stats::add(&shard.my_stats().connections, 1);
        let ops = registry.ops_window(&count.app);
        let ws = &shard.config().websocket;
        let rate = MessageRate::new(
            ws.messages_per_second,
            ws.messages_burst,
            crate::log::monotonic_ms(),
        );
        Ok(DocumentHandler {
            rate,
            waiting: false,
            shard,
            key,
            count: Some(count),
            room,
            slot,
            can_write,
            ops_per_minute: limits.ops_per_minute,
            ops,
        })
    }
}

/// Releases a connection count without holding up the caller (the registry may be remote).
fn release_connection(shard: &Rc<Shard>, app: &str) {
    let (shard, app) = (shard.clone(), app.to_owned());
    // A drain waits for these before the shard stops.
    shard
        .releases_in_flight
        .set(shard.releases_in_flight.get() + 1);
    glommio::spawn_local(async move {
        let release = async {
            if shard
                .shared
                .registry
                .release_connection(&app, &shard.shared.node, crate::log::unix_ms())
                .await
                .is_err()
            {
                // The registry drops this node's counts when its heartbeat goes stale.
                crate::log::warn("connection_release_failed", &[("app", &app)]);
            }
        };
        super::contain::future(shard.my_stats(), "connection_release", release).await;
        shard
            .releases_in_flight
            .set(shard.releases_in_flight.get() - 1);
    })
    .detach();
}

/// `REDIRECT:{node-url}/{documentName}`, or, when that would not fit a close frame,
/// `Document active in region: {region}`.
pub fn redirect_reason(home: &NodeInfo, document: &str) -> String {
    let redirect = format!("REDIRECT:{}/{}", home.url, document);
    if redirect.len() <= close::REASON_BYTES_MAX {
        redirect
    } else {
        format!("Document active in region: {}", home.region)
    }
}

impl Handler for DocumentHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refusal> {
        if opcode != Opcode::Binary {
            return Err(Refusal::NotBinary);
        }
        let mut room = self.room.borrow_mut();
        // Every limit below is keyed on the decoded message, never on its first bytes.
        let message = room.decode(payload)?;
        let weight = message_rate::weight(&message, room.encode_bytes(&message));
        if !self.rate.admit(weight, crate::log::monotonic_ms()) {
            let per_second = self.shard.config().websocket.messages_per_second;
            return Err(Refusal::MessageRate(per_second));
        }
        // Past the memory budget a node sheds new work (section 8) and takes no changes that
        // could grow a document: the client keeps its edit and sends it again on reconnect.
        if self.can_write
            && message.changes_document()
            && self
                .shard
                .shared
                .memory
                .over_budget(crate::log::monotonic_ms())
        {
            return Err(Refusal::OutOfMemory);
        }
        if let Some(limit) = self.ops_per_minute {
            if self.can_write
                && message.changes_document()
                && !self.ops.try_count(crate::log::unix_ms() / 1000, limit)
            {
                return Err(Refusal::OpsLimit(limit));
            }
        }
        let outcome = room.stage_message(self.slot, message, self.can_write)?;
        let stats = self.shard.my_stats();
        stats::add(&stats.deliveries_total, outcome.deliveries as u64);
        stats::add(&stats.updates_integrated_total, outcome.integrated as u64);
        Ok(())
    }

    fn on_batch_end(&mut self) -> Result<(), Refusal> {
        let outcome = self.room.borrow_mut().flush();
        stats::add(
            &self.shard.my_stats().deliveries_total,
            outcome.deliveries as u64,
        );
        self.shard.integrator.request(&self.room);
        Ok(())
    }

    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Viewers add nothing to integrate.
        if !self.can_write {
            return std::task::Poll::Ready(());
        }
        let ready = self.room.borrow_mut().poll_caught_up(cx);
        // The session polls again whenever its task wakes (its outbox too): one wait, once.
        if ready.is_pending() && !std::mem::replace(&mut self.waiting, true) {
            stats::add(&self.shard.my_stats().integration_waits_total, 1);
        }
        if ready.is_ready() {
            self.waiting = false;
        }
        ready
    }

    fn on_panic(&mut self) {
        // The panic may have been inside the document's transaction.
        self.room.borrow_mut().reset();
        crate::log::warn("document_reset", &[("key", &self.key)]);
    }

    fn on_end(&mut self) {
        self.leave();
    }
}

impl DocumentHandler {
    /// Leaves the room and gives the connection count back, once.
    /// The counts are given back even if the room's own code panics (that panic then goes
    /// on, unless the thread is already unwinding: a second panic would end the shard).
    fn leave(&mut self) {
        let Some(count) = self.count.take() else {
            return;
        };
        let left = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Borrowed only if a panic unwound out of the room's own code; the room is then
            // reset by the session.
            if let Ok(mut room) = self.room.try_borrow_mut() {
                // Updates staged before the end were valid: relayed, then integrated later.
                room.flush();
                room.leave(self.slot);
                drop(room);
                self.shard.integrator.request(&self.room);
            }
        }));
        stats::sub(&self.shard.my_stats().connections, 1);
        drop(count);
        self.shard.room_left(&self.key);
        if let (Err(panic), false) = (left, std::thread::panicking()) {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A handler dropped without its end (a panic between the join and the session) still
/// leaves its room and gives back its count.
impl Drop for DocumentHandler {
    fn drop(&mut self) {
        self.leave();
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

#[cfg(test)]
mod tests {
    use super::redirect_reason;
    use crate::registry::NodeInfo;

    #[test]
    fn redirects_fall_back_to_the_region_when_too_long() {
        let home = NodeInfo {
            id: "n2".into(),
            region: "eu-central-1".into(),
            url: "wss://eu1.example.com".into(),
        };
        assert_eq!(
            redirect_reason(&home, "my-doc"),
            "REDIRECT:wss://eu1.example.com/my-doc"
        );
        let long = "d".repeat(120);
        assert_eq!(
            redirect_reason(&home, &long),
            "Document active in region: eu-central-1"
        );
    }
}
