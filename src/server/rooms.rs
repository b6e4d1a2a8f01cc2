//! A shard's live documents: each document's `Room` by its isolation key. A room is made by
//! pinning its document to this node in the registry, one claim at a time per key (clients
//! arriving meanwhile wait for it), and freed a grace period after its last client left,
//! when its pin is released. Its app is told (webhooks): `session.started` when it is made,
//! `session.ended` with its final state when it is freed; a room whose `session.ended` the
//! app has not yet taken stays, pinned, until it has (or `webhooks.retention_s`).

use super::shared::Shared;
use super::stats::{self, ShardStats};
use crate::refusal::Refusal;
use crate::registry::{Claim, Exceeded, NodeInfo, Unavailable};
use crate::sync::room::{Room, RoomConfig, Seed};
use crate::webhook::delivery::{Fate, Receipt};
use crate::webhook::event::EventKind;
use base64::Engine;
use glommio::timer::sleep;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a document cannot be opened here.
#[derive(Debug, Clone)]
pub enum RoomRefusal {
    /// It lives on another node (4009).
    Elsewhere(NodeInfo),
    /// The app's `maxDocuments` (4005).
    DocumentLimit(Exceeded),
    /// The registry did not answer (1013).
    Unavailable(String),
    /// The app's load hook gave no state (1013); the document was not opened.
    NotLoaded,
}

enum RoomState {
    /// A claim or release is in flight.
    Pending(Rc<Pending>),
    Live(RoomEntry),
}

/// A one-shot signal for clients waiting on a pending room.
#[derive(Default)]
struct Pending {
    done: Cell<bool>,
    waiters: RefCell<Vec<std::task::Waker>>,
    /// Set when the claim failed in a way its waiters share (the load hook): they are
    /// refused with it rather than each calling the application again.
    refused: RefCell<Option<RoomRefusal>>,
}

impl Pending {
    fn finish(&self) {
        self.done.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.done.get() {
                std::task::Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// A pin claim's or release's pending entry in `rooms`, for as long as it is in flight.
/// However it ends (a room, a refusal, a release, or a panic or drop of the task), the entry
/// goes unless a room replaced it, and the waiters wake to look again: none waits forever.
struct PinInFlight<'a> {
    rooms: &'a RefCell<HashMap<Rc<str>, RoomState>>,
    key: &'a str,
    pending: Rc<Pending>,
}

impl<'a> PinInFlight<'a> {
    fn start(rooms: &'a RefCell<HashMap<Rc<str>, RoomState>>, key: &'a str) -> Self {
        let pending = Rc::new(Pending::default());
        rooms
            .borrow_mut()
            .insert(Rc::from(key), RoomState::Pending(pending.clone()));
        PinInFlight {
            rooms,
            key,
            pending,
        }
    }
}

impl Drop for PinInFlight<'_> {
    fn drop(&mut self) {
        // `try_`: a panic may have left `rooms` borrowed by a frame that is still unwinding.
        if let Ok(mut rooms) = self.rooms.try_borrow_mut() {
            if matches!(rooms.get(self.key), Some(RoomState::Pending(p)) if Rc::ptr_eq(p, &self.pending))
            {
                rooms.remove(self.key);
            }
        }
        self.pending.finish();
    }
}

/// A live room and its key, shared with the map (a connection keeps it to leave the room
/// by, without a copy of its own).
pub struct OpenRoom {
    pub key: Rc<str>,
    pub room: Rc<RefCell<Room>>,
}

struct RoomEntry {
    room: Rc<RefCell<Room>>,
    /// `{tenant}::{app}`: whose document count this room holds.
    app: String,
    /// Bumped whenever the room empties; a grace timer only frees the room it was set for.
    emptied: u64,
    /// `document.changed`: the room's updates, and the document's state at the last event.
    changed: Debounce,
    sent_state: yrs::StateVector,
    /// `presence.changed`: its awareness changes, and who was present at the last event.
    presence: Debounce,
    sent_presence: Option<serde_json::Value>,
}

impl RoomEntry {
    fn new(room: Rc<RefCell<Room>>, app: &str) -> Self {
        RoomEntry {
            room,
            app: app.to_owned(),
            emptied: 0,
            changed: Debounce::default(),
            sent_state: yrs::StateVector::default(),
            presence: Debounce::default(),
            sent_presence: None,
        }
    }
}

/// A debounced webhook of a room: a count of what it follows (updates, awareness changes)
/// when last looked at, and since when changes wait to be sent (the first and the latest).
#[derive(Default)]
struct Debounce {
    seen: u64,
    waiting: Option<(Instant, Instant)>,
}

impl Debounce {
    /// Looks at the count now: whether the wait is over (`quiet` since the latest change,
    /// or `wait_max` since the first unsent one); if so, the wait starts over.
    fn due(&mut self, count: u64, now: Instant, quiet: Duration, wait_max: Duration) -> bool {
        if count != self.seen {
            self.seen = count;
            let first = self.waiting.map_or(now, |(first, _)| first);
            self.waiting = Some((first, now));
        }
        match self.waiting {
            Some((first, last)) if now - last >= quiet || now - first >= wait_max => {
                self.waiting = None;
                true
            }
            _ => false,
        }
    }
}

pub struct Rooms {
    map: RefCell<HashMap<Rc<str>, RoomState>>,
    config: RoomConfig,
    shared: Arc<Shared>,
    stats: Arc<[ShardStats]>,
    shard_id: usize,
}

impl Rooms {
    pub fn new(
        config: RoomConfig,
        shared: Arc<Shared>,
        stats: Arc<[ShardStats]>,
        shard_id: usize,
    ) -> Self {
        Rooms {
            map: RefCell::new(HashMap::new()),
            config,
            shared,
            stats,
            shard_id,
        }
    }

    fn my_stats(&self) -> &ShardStats {
        &self.stats[self.shard_id]
    }

    /// The room for `key`, created if it is not in memory: the document is then pinned to
    /// this node in the registry, which counts it as one of `app`'s live documents (refused
    /// past `documents_max`) or names the node it lives on.
    ///
    /// Creation is atomic per shard: while a claim (or a release) is in flight the key holds
    /// a pending entry, and other clients of the document wait for it, then look again.
    pub async fn open(
        &self,
        key: &str,
        app: &str,
        documents_max: Option<u64>,
    ) -> Result<OpenRoom, RoomRefusal> {
        loop {
            let pending = match self.map.borrow().get_key_value(key) {
                Some((key, RoomState::Live(entry))) => {
                    return Ok(OpenRoom {
                        key: key.clone(),
                        room: entry.room.clone(),
                    })
                }
                Some((_, RoomState::Pending(p))) => Some(p.clone()),
                None => None,
            };
            match pending {
                Some(p) => {
                    p.wait().await;
                    if let Some(refusal) = p.refused.borrow().clone() {
                        return Err(refusal);
                    }
                }
                None => return self.claim(key, app, documents_max).await,
            }
        }
    }

    async fn claim(
        &self,
        key: &str,
        app: &str,
        documents_max: Option<u64>,
    ) -> Result<OpenRoom, RoomRefusal> {
        let claim = PinInFlight::start(&self.map, key);
        let now_ms = crate::log::unix_ms();
        // Held from before the claim until after its release (see `ConnectionCount`).
        let holding = self.shared.held.hold(self.shard_id, app, 0, 1);
        let pinned = self
            .shared
            .registry
            .claim(key, app, &self.shared.node, documents_max, now_ms)
            .await;
        match pinned {
            Ok(Claim::Pinned | Claim::AlreadyHere) => holding.keep(),
            Ok(Claim::Elsewhere(node)) => return Err(RoomRefusal::Elsewhere(node)),
            Ok(Claim::DocumentLimit(e)) => return Err(RoomRefusal::DocumentLimit(e)),
            Err(Unavailable(why)) => return Err(RoomRefusal::Unavailable(why)),
        }
        let started = self.shared.webhooks.session_started(app, document_of(key));
        let room = match self.load(app, started.as_ref()).await {
            Ok(room) => room,
            Err(why) => {
                crate::log::event(
                    "error",
                    "document_not_loaded",
                    &[
                        ("app", &app),
                        ("document", &document_of(key)),
                        ("error", &why),
                        (
                            "note",
                            &"the session did not start; its clients were told to try again (1013)",
                        ),
                    ],
                );
                *claim.pending.refused.borrow_mut() = Some(RoomRefusal::NotLoaded);
                self.release_pin(key, app).await;
                return Err(RoomRefusal::NotLoaded);
            }
        };
        // What the app gave is not a change to tell it of.
        let loaded = yrs::ReadTxn::state_vector(&yrs::Transact::transact(room.doc()));
        let room = Rc::new(RefCell::new(room));
        let mut entry = RoomEntry::new(room.clone(), app);
        entry.sent_state = loaded;
        let key: Rc<str> = Rc::from(key);
        self.map
            .borrow_mut()
            .insert(key.clone(), RoomState::Live(entry));
        stats::add(&self.my_stats().documents, 1);
        if let Some(started) = started {
            self.shared
                .webhooks
                .push_event(app, document_of(&key), started);
        }
        Ok(OpenRoom { key, room })
    }

    /// The new room, seeded from its app's load hook if the app has one (PRODUCT.md 9.2);
    /// an error says why the session must not start.
    async fn load(
        &self,
        app: &str,
        started: Option<&crate::webhook::event::Event>,
    ) -> Result<Room, String> {
        let config = self.config;
        let Some(started) = started else {
            return Ok(Room::new(config));
        };
        let webhooks = &self.shared.webhooks;
        let state_bytes_max = config.document_bytes_max as u64;
        let prepare = move |state: Vec<u8>| {
            Seed::prepare(&state, &config)
                .map_err(|refusal| format!("its state was refused: {}", refusal.close().1))
        };
        let Some(call) = webhooks.load(app, started, state_bytes_max, prepare) else {
            return Ok(Room::new(config));
        };
        let answer = glommio::timer::timeout(call.timeout, async { Ok(call.answer.await) })
            .await
            .map_err(|_| format!("no answer within {} ms", call.timeout.as_millis()))?;
        Ok(
            match answer.unwrap_or_else(|| Err("no answer within load_timeout_ms".into()))? {
                None => Room::new(config),
                Some(seed) => Room::seeded(config, seed),
            },
        )
    }

    /// Gives `key`'s pin back to the registry (the registry drops it anyway when this
    /// node's heartbeat goes stale; the next heartbeat writes this node's document count).
    pub async fn release_pin(&self, key: &str, app: &str) {
        let released = self
            .shared
            .registry
            .release(key, app, &self.shared.node, crate::log::unix_ms())
            .await;
        self.shared.held.add(self.shard_id, app, 0, -1);
        if let Err(Unavailable(why)) = released {
            crate::log::warn("pin_release_failed", &[("error", &why)]);
        }
    }

    /// Called after a subscriber left `key`: an empty room is freed after the grace period
    /// unless someone joins (and stays) in the meantime; then its pin is released.
    pub fn left(self: &Rc<Self>, key: &str) {
        let generation = {
            let mut rooms = self.map.borrow_mut();
            let Some(RoomState::Live(entry)) = rooms.get_mut(key) else {
                return;
            };
            if entry.room.borrow().subscriber_count() > 0 {
                return;
            }
            entry.emptied += 1;
            entry.emptied
        };
        let this = self.clone();
        let key = key.to_owned();
        let grace = Duration::from_millis(self.shared.config.documents.grace_period_ms);
        let expire = async move {
            sleep(grace).await;
            if let Some(receipt) = this.end_session(&key, generation) {
                this.await_delivery(&key, receipt).await;
            }
            let app = {
                let mut rooms = this.map.borrow_mut();
                let expired = matches!(rooms.get(&*key), Some(RoomState::Live(e))
                    if e.emptied == generation && e.room.borrow().subscriber_count() == 0);
                if !expired {
                    return;
                }
                let Some(RoomState::Live(entry)) = rooms.remove(&*key) else {
                    unreachable!("checked above")
                };
                stats::sub(&this.my_stats().documents, 1);
                entry.app
            };
            // Clients arriving meanwhile wait, then claim the document afresh.
            let _release = PinInFlight::start(&this.map, &key);
            this.release_pin(&key, &app).await;
        };
        let stats_of = self.clone();
        glommio::spawn_local(async move {
            super::contain::future(stats_of.my_stats(), "grace_release", expire).await;
        })
        .detach();
    }

    /// Sends the debounced webhooks (PRODUCT.md 9.1) of rooms whose wait is over:
    /// `document.changed` 2 s after the last update or 10 s after the first unsent one, with
    /// what changed since the previous one; `presence.changed` 1 s after the last awareness
    /// change (10 s at most), when who is present differs from what was last sent. Called
    /// every `CHANGE_TICK` by the shard.
    pub fn send_debounced(&self) {
        let webhooks = &self.shared.webhooks;
        if !webhooks.any_sink() {
            return;
        }
        let now = Instant::now();
        for (key, state) in self.map.borrow_mut().iter_mut() {
            let RoomState::Live(entry) = state else {
                continue;
            };
            let document = document_of(key);
            let changes = entry.room.borrow().changes();
            if webhooks.wants(&entry.app, EventKind::DocumentChanged)
                && entry
                    .changed
                    .due(changes, now, CHANGE_QUIET, DEBOUNCE_WAIT_MAX)
            {
                let (update, state_vector) =
                    entry.room.borrow_mut().changes_since(&entry.sent_state);
                let change = crate::webhook::event::Change {
                    update,
                    state_vector: yrs::updates::encoder::Encode::encode_v1(&state_vector),
                };
                entry.sent_state = state_vector;
                webhooks.push_changed(&entry.app, document, change);
            }
            let awareness = entry.room.borrow().awareness_changes();
            if webhooks.wants(&entry.app, EventKind::PresenceChanged)
                && entry
                    .presence
                    .due(awareness, now, PRESENCE_QUIET, DEBOUNCE_WAIT_MAX)
            {
                let (users, count) = entry.room.borrow().presence();
                let data = serde_json::json!({ "users": users, "count": count });
                if entry.sent_presence.as_ref() != Some(&data) {
                    entry.sent_presence = Some(data.clone());
                    webhooks.push(&entry.app, document, EventKind::PresenceChanged, data);
                }
            }
        }
    }

    /// Sends `session.ended` with the room's final state, if the room at `key` is still the
    /// one that emptied at `generation` (nobody joined since) and its app wants the event.
    fn end_session(&self, key: &str, generation: u64) -> Option<Receipt> {
        let webhooks = &self.shared.webhooks;
        let rooms = self.map.borrow();
        let Some(RoomState::Live(entry)) = rooms.get(key) else {
            return None;
        };
        if entry.emptied != generation || entry.room.borrow().subscriber_count() > 0 {
            return None;
        }
        push_session_ended(webhooks, key, &entry.app, &entry.room)
    }

    /// Waits until `receipt`'s event is delivered or given up, at most
    /// `webhooks.retention_s`; past that the document is logged as an error and dropped.
    async fn await_delivery(&self, key: &str, receipt: Receipt) {
        let retention = Duration::from_secs(self.shared.config.webhooks.retention_s);
        let until = Instant::now() + retention;
        // Looked at often at first (a receiver usually answers at once), then less: during a
        // receiver's outage every kept room waits here.
        let mut poll = DELIVERY_POLL_MIN;
        while receipt.fate() == Fate::Waiting {
            if Instant::now() >= until {
                crate::log::event(
                    "error",
                    "session_end_not_delivered",
                    &[
                        ("document", &key),
                        ("note", &"webhooks.retention_s passed before the app took session.ended: its final state is dropped"),
                    ],
                );
                return;
            }
            sleep(poll).await;
            poll = (poll * 2).min(DELIVERY_POLL_MAX);
        }
    }

    /// Every live room's document name and connection count, of `app` (`{tenant}::{app}`)
    /// or of every app, at most `max` of them.
    pub fn list(&self, app: Option<&str>, max: usize) -> Vec<(String, String, usize)> {
        self.map
            .borrow()
            .iter()
            .filter_map(|(key, state)| match state {
                RoomState::Live(entry) if app.is_none_or(|a| a == entry.app) => Some((
                    entry.app.clone(),
                    document_of(key).to_owned(),
                    entry.room.borrow().subscriber_count(),
                )),
                _ => None,
            })
            .take(max)
            .collect()
    }

    /// Closes the connections of every live room for which `refusal` (given its key and
    /// app) names one, with that refusal's close; how many.
    pub fn close_where(&self, refusal: impl Fn(&str, &str) -> Option<Refusal>) -> usize {
        let rooms: Vec<(Rc<RefCell<Room>>, Refusal)> = self
            .map
            .borrow()
            .iter()
            .filter_map(|(key, state)| match state {
                RoomState::Live(entry) => Some((entry.room.clone(), refusal(key, &entry.app)?)),
                RoomState::Pending(_) => None,
            })
            .collect();
        rooms
            .iter()
            .map(|(room, refusal)| {
                let (code, reason) = refusal.close();
                room.borrow().close_subscribers(code, &reason, |_| true)
            })
            .sum()
    }

    /// Closes, in every live room, the subscribers admitted with a credential `refused`
    /// names, with `refusal`; how many.
    pub fn close_credentials(&self, refused: impl Fn(u32) -> bool, refusal: &Refusal) -> usize {
        let (code, reason) = refusal.close();
        let rooms: Vec<Rc<RefCell<Room>>> = self
            .map
            .borrow()
            .values()
            .filter_map(|state| match state {
                RoomState::Live(entry) => Some(entry.room.clone()),
                RoomState::Pending(_) => None,
            })
            .collect();
        rooms
            .iter()
            .map(|room| room.borrow().close_subscribers(code, &reason, &refused))
            .sum()
    }

    /// A pin claim or release is in flight (a room may appear when it ends).
    pub fn claims_in_flight(&self) -> bool {
        self.map
            .borrow()
            .values()
            .any(|state| matches!(state, RoomState::Pending(_)))
    }

    /// For a drain: takes every live room out, as `(key, app)`, for their pins to be
    /// released at once, after sending each one's `session.ended`; their receipts are
    /// returned with them.
    pub fn take_live(&self) -> Vec<(Rc<str>, String, Option<Receipt>)> {
        let webhooks = &self.shared.webhooks;
        self.map
            .borrow_mut()
            .drain()
            .filter_map(|(key, state)| match state {
                RoomState::Live(entry) => {
                    let receipt = push_session_ended(webhooks, &key, &entry.app, &entry.room);
                    Some((key, entry.app, receipt))
                }
                RoomState::Pending(_) => None,
            })
            .collect()
    }
}

/// The debounced webhooks' timings (see `Rooms::send_debounced`).
pub const CHANGE_TICK: Duration = Duration::from_millis(250);
const CHANGE_QUIET: Duration = Duration::from_secs(2);
const PRESENCE_QUIET: Duration = Duration::from_secs(1);
const DEBOUNCE_WAIT_MAX: Duration = Duration::from_secs(10);

/// How often a room kept for its `session.ended` looks whether the app has it: first after
/// the minimum, doubling up to the maximum.
const DELIVERY_POLL_MIN: Duration = Duration::from_millis(50);
const DELIVERY_POLL_MAX: Duration = Duration::from_secs(5);

/// The document name in an isolation key.
fn document_of(key: &str) -> &str {
    crate::sync::document::key_parts(key).1
}

fn push_session_ended(
    webhooks: &crate::webhook::Webhooks,
    key: &str,
    app: &str,
    room: &RefCell<Room>,
) -> Option<Receipt> {
    // The whole state is encoded only for an app that takes it.
    if !webhooks.wants(app, EventKind::SessionEnded) {
        return None;
    }
    let state = room.borrow_mut().final_state();
    let data = serde_json::json!({
        "state": base64::engine::general_purpose::STANDARD.encode(state),
    });
    webhooks.push(app, document_of(key), EventKind::SessionEnded, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debounce_waits_for_quiet_or_its_longest_wait() {
        let (quiet, most) = (Duration::from_secs(2), Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut d = Debounce::default();
        assert!(!d.due(0, at(0), quiet, most), "nothing changed");
        assert!(!d.due(1, at(0), quiet, most));
        assert!(!d.due(1, at(1_999), quiet, most));
        assert!(d.due(1, at(2_000), quiet, most), "quiet for 2 s");
        assert!(!d.due(1, at(9_000), quiet, most), "sent: nothing waits");
        // Changes every second never leave 2 s of quiet: sent 10 s after the first.
        for s in 10..20 {
            assert!(!d.due(s, at(s * 1_000), quiet, most), "{s}");
        }
        assert!(d.due(20, at(20_000), quiet, most));
    }

    #[test]
    fn a_claim_that_never_completes_leaves_no_pending_entry() {
        let rooms = RefCell::new(HashMap::new());
        let abandoned = PinInFlight::start(&rooms, "t::a::d");
        let pending = abandoned.pending.clone();
        assert!(matches!(
            rooms.borrow().get("t::a::d"),
            Some(RoomState::Pending(_))
        ));
        // As when the admission holding the claim panics and is dropped.
        drop(abandoned);
        assert!(rooms.borrow().is_empty());
        assert!(pending.done.get(), "waiters are woken to look again");
        // A claim that made its room leaves the room.
        let made = PinInFlight::start(&rooms, "t::a::d");
        let room = Rc::new(RefCell::new(Room::new(RoomConfig::default())));
        let entry = RoomEntry::new(room, "t::a");
        rooms
            .borrow_mut()
            .insert("t::a::d".into(), RoomState::Live(entry));
        drop(made);
        assert!(matches!(
            rooms.borrow().get("t::a::d"),
            Some(RoomState::Live(_))
        ));
    }
}
