//! One connection's place in one document, whatever its framing: the app's connection count
//! it holds, the room it claimed, and the limits checked on every message it sends
//! (`opsPerMinute`, the message rate, the memory budget). A y-websocket connection holds one
//! of each; a Hocuspocus socket one count per app and one membership per document.

use super::admission::Admission;
use super::rooms::{OpenRoom, RoomRefusal};
use super::shard::Shard;
use super::stats;
use crate::auth::claims::Limits;
use crate::outbox::{binary_frame, Outbox};
use crate::refusal::Refusal;
use crate::registry::rate::MinuteWindow;
use crate::registry::NodeInfo;
use crate::sync::hocuspocus;
use crate::sync::message_rate::{self, MessageRate};
use crate::sync::room::{Framing, Room, Slot};
use crate::ws::close;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One of an app's connections, counted in the registry: given back when dropped, so that no
/// way out of an admission or a session (a refusal, the end, a panic that drops it) leaves
/// the count behind.
pub struct ConnectionCount {
    shard: Rc<Shard>,
    /// `{tenant}::{app}`, the shard's one copy (see `Shard::app_key`): a connection holds a
    /// pointer, not a string of its own.
    app: Rc<str>,
}

impl ConnectionCount {
    /// Counts a connection of `app` against `maxConnections` over every live node (4004),
    /// 1013 when the registry does not answer.
    pub async fn acquire(shard: &Rc<Shard>, app: &str, limits: &Limits) -> Result<Self, Refusal> {
        let app = shard.app_key(app);
        let registry = &shard.shared.registry;
        // Held from before the call until after its release: a heartbeat meanwhile may
        // overstate this node's count (refusing early), never understate it.
        let holding = shard.shared.held.hold(shard.id, &app, 1, 0);
        let acquired = registry
            .acquire_connection(
                &app,
                &shard.shared.node,
                limits.max_connections,
                crate::log::unix_ms(),
            )
            .await;
        match acquired {
            Ok(Ok(())) => {
                holding.keep();
                Ok(ConnectionCount {
                    shard: shard.clone(),
                    app,
                })
            }
            Ok(Err(e)) => Err(Refusal::ConnectionLimit(e.limit)),
            Err(_) => Err(Refusal::RegistryUnavailable),
        }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        release_connection(&self.shard, &self.app);
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
                // The next heartbeat writes this node's true counts.
                crate::log::warn("connection_release_failed", &[("app", &app)]);
            }
            shard.shared.held.add(shard.id, &app, -1, 0);
        };
        super::contain::future(shard.my_stats(), "connection_release", release).await;
        shard
            .releases_in_flight
            .set(shard.releases_in_flight.get() - 1);
    })
    .detach();
}

/// An open connection on its shard's `connections` gauge until dropped.
pub struct ConnectionGauge(Rc<Shard>);

impl ConnectionGauge {
    pub fn new(shard: &Rc<Shard>) -> Self {
        stats::add(&shard.my_stats().connections, 1);
        ConnectionGauge(shard.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        stats::sub(&self.0.my_stats().connections, 1);
    }
}

/// A room opened for a connection that has not joined it yet. Dropped without joining, it
/// lets the room expire after its grace period as if its last client had left.
pub struct RoomClaim {
    shard: Rc<Shard>,
    admission: Admission,
    room: Option<OpenRoom>,
}

impl RoomClaim {
    /// Opens the document's room (4009 when the document lives on another node, 4005 past
    /// `maxDocuments`, 1013 when the registry does not answer).
    pub async fn open(shard: &Rc<Shard>, admission: Admission) -> Result<Self, Refusal> {
        let room = shard
            .open_room(
                &admission.key,
                &admission.app,
                admission.limits.max_documents,
            )
            .await
            .map_err(|refusal| match refusal {
                RoomRefusal::DocumentLimit(e) => Refusal::DocumentLimit {
                    limit: e.limit,
                    active: e.active,
                },
                RoomRefusal::Elsewhere(home) => {
                    Refusal::Redirect(redirect_reason(&home, &admission.document))
                }
                RoomRefusal::Unavailable(why) => {
                    crate::log::warn("registry_unavailable", &[("error", &why)]);
                    Refusal::RegistryUnavailable
                }
                // Logged with why where the load failed.
                RoomRefusal::NotLoaded => Refusal::DocumentNotLoaded,
            })?;
        Ok(RoomClaim {
            shard: shard.clone(),
            admission,
            room: Some(room),
        })
    }

    /// Joins the room unless it holds `maxUsersPerDoc` subscribers already (4008). A
    /// Hocuspocus subscriber is told `Authenticated` with its scope first (what the room
    /// sends a joiner comes after it). Nothing awaits between the caller's last look at the
    /// connection and the join.
    pub fn join(mut self, outbox: Rc<Outbox>, framing: Framing<'_>) -> Result<Membership, Refusal> {
        let OpenRoom { key, room } = self.room.take().expect("a claim joins once");
        if let Some(max) = self.admission.limits.max_users_per_doc {
            if room.borrow().subscriber_count() as u64 >= max {
                // A room created just now is still empty: it goes after its grace period.
                self.shard.room_left(&self.admission.key);
                return Err(Refusal::UsersPerDocument(max));
            }
        }
        if let Framing::Hocuspocus { address } = framing {
            let prefix = hocuspocus::address_prefix(address);
            let scope = hocuspocus::encode_authenticated(&prefix, self.admission.can_write);
            outbox.push(&binary_frame(&scope));
        }
        let credential = self.shard.credential(self.admission.signing_key.as_ref());
        let slot = room.borrow_mut().join_framed(outbox, framing, credential);
        let shard = self.shard.clone();
        let ops = shard.shared.registry.ops_window(&self.admission.app);
        Ok(Membership {
            key,
            can_write: self.admission.can_write,
            ops_per_minute: self.admission.limits.ops_per_minute,
            shard,
            room,
            slot,
            ops,
            left: false,
        })
    }
}

impl Drop for RoomClaim {
    fn drop(&mut self) {
        if self.room.take().is_some() {
            self.shard.room_left(&self.admission.key);
        }
    }
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

/// A connection subscribed to one document's room. Leaves it when dropped.
pub struct Membership {
    shard: Rc<Shard>,
    key: Rc<str>,
    room: Rc<RefCell<Room>>,
    slot: Slot,
    /// False for `viewer` tokens: updates are refused.
    can_write: bool,
    ops_per_minute: Option<u64>,
    ops: Arc<MinuteWindow>,
    left: bool,
}

impl Membership {
    /// Handles one y-websocket message from this connection (its limits, then the room).
    pub fn on_message(&mut self, payload: &[u8], rate: &mut MessageRate) -> Result<(), Refusal> {
        let mut room = self.room.borrow_mut();
        // Every limit below is keyed on the decoded message, never on its first bytes.
        let message = room.decode(payload)?;
        let weight = message_rate::weight(&message, room.encode_bytes(&message));
        if !rate.admit(weight, crate::log::monotonic_ms()) {
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

    /// Relays what this connection's read staged and asks for its integration.
    pub fn flush(&mut self) {
        let outcome = self.room.borrow_mut().flush();
        stats::add(
            &self.shard.my_stats().deliveries_total,
            outcome.deliveries as u64,
        );
        self.shard.integrator.request(&self.room);
    }

    /// Its room is behind (see `Room::lagging`) and this connection may add to it.
    pub fn lagging(&self) -> bool {
        self.can_write && self.room.borrow().lagging()
    }

    /// Ready when the connection may send this document more (see `Room::poll_caught_up`);
    /// viewers add nothing to integrate.
    pub fn poll_caught_up(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.can_write {
            return Poll::Ready(());
        }
        self.room.borrow_mut().poll_caught_up(cx)
    }

    /// Sends a checked side message to the document's other connections (and this one
    /// with `echo`).
    pub fn side_message(&mut self, payload: &str, echo: bool) {
        let outcome = self
            .room
            .borrow_mut()
            .side_message(self.slot, payload, echo);
        stats::add(
            &self.shard.my_stats().deliveries_total,
            outcome.deliveries as u64,
        );
    }

    /// Tells this connection its side message was refused (`read-only`), where its framing
    /// can (see `Room::refuse_read_only`).
    pub fn refuse_read_only(&mut self) {
        self.room.borrow_mut().refuse_read_only(self.slot);
    }

    /// `{tenant}::{app}::{document}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn can_write(&self) -> bool {
        self.can_write
    }

    /// After a refreshed token: its role applies from now on.
    /// A refreshed token's role and the key that signed it apply from now on (a revocation
    /// of the key it was opened with no longer closes it).
    pub fn set_grant(&mut self, can_write: bool, signing_key: Option<&Arc<str>>) {
        self.can_write = can_write;
        let credential = self.shard.credential(signing_key);
        self.room.borrow_mut().set_credential(self.slot, credential);
    }

    /// A call into this document's handling panicked: it may have been inside the
    /// document's transaction, so the document starts over (`Room::reset`).
    pub fn reset(&mut self) {
        self.room.borrow_mut().reset();
        crate::log::warn("document_reset", &[("key", &self.key)]);
    }

    /// Leaves the room, once. Done even if the room's own code panics (that panic then goes
    /// on, unless the thread is already unwinding: a second panic would end the shard).
    pub fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
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
        self.shard.room_left(&self.key);
        if let (Err(panic), false) = (left, std::thread::panicking()) {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A membership dropped without its end (a panic between the join and the session) still
/// leaves its room.
impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
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
