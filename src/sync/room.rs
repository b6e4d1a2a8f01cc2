//! `Room`: one live document — its Yjs state, its awareness and its subscribers — and the
//! y-websocket protocol between them. Runtime-free: subscribers are outboxes.
//!
//! An update is relayed before it is integrated. Once its checks pass (bounded walk, decode,
//! the document's size bound) its frame goes to every other subscriber at the end of the
//! read, and the update joins `pending`; [`Room::integrate`] applies pending updates in
//! batches later (the server runs it on a lower-priority task). So integrating, whose cost
//! grows with how far behind the writers' views are, never holds up relaying, which keeps
//! those views current. What is pending is bounded ([`Room::lagging`]): past the bound the
//! server stops reading the room's writers until integration catches up. A step 1 (what a
//! joiner sends) first integrates whatever is pending, so its answer misses nothing.

use super::awareness::AwarenessStates;
use super::hocuspocus;
use super::protocol::{self, Message, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};
use super::update_check::UpdateLimits;
use crate::outbox::{binary_frame, frame_payload, shared_frame, Frame, Outbox};
use crate::refusal::Refusal;
use crate::ws::frame::Opcode;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

/// Updates of one read relayed together; past it they are relayed at once (each subscriber
/// then gets them in one send).
pub const STAGED_UPDATES_MAX: usize = 64;

/// A document near its size bound is measured again (its whole state encoded) only after
/// this share of the bound (1/16) has arrived since it was last measured: so the cost of
/// measuring is spread over at least that many bytes of updates, however close to the
/// bound a document sits.
const REMEASURE_DIVISOR: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct RoomConfig {
    pub update_limits: UpdateLimits,
    /// Awareness entries (live and removed) one room keeps.
    pub awareness_clients_max: usize,
    /// Awareness client ids one connection may introduce (a browser tab uses one).
    pub awareness_clients_per_connection_max: usize,
    /// Bytes of JSON in one awareness state.
    pub awareness_state_bytes_max: usize,
    /// The document's size as a Yjs update: an update that would take it past this is
    /// refused (1009) and not applied.
    pub document_bytes_max: usize,
    /// Updates relayed and not yet integrated, past which the room is [`Room::lagging`].
    pub pending_updates_max: usize,
    /// Their bytes, likewise.
    pub pending_bytes_max: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            update_limits: UpdateLimits::default(),
            awareness_clients_max: 4096,
            awareness_clients_per_connection_max: 8,
            awareness_state_bytes_max: 64 << 10,
            document_bytes_max: 64 << 20,
            pending_updates_max: 1024,
            pending_bytes_max: 1 << 20,
        }
    }
}

/// A subscriber's place in the room, returned by [`Room::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

/// How a subscriber's connection frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing<'a> {
    /// One document per connection; messages as they are.
    YWebsocket,
    /// `@hocuspocus/provider`: every message behind `varString(address)`; its updates are
    /// acknowledged (sync status) once integrated, and its awareness is echoed to it (the
    /// provider's only sign of life from a quiet document).
    Hocuspocus { address: &'a str },
}

/// What a room sends the Hocuspocus subscribers that name it by one address, encoded once
/// for all of them: usually one address per room (the document's name); a v4 provider with
/// `sessionAwareness` names it `name\0session`, an address of its own.
#[derive(Debug)]
struct HocuspocusFrames {
    prefix: Rc<[u8]>,
    applied: Frame,
    refused: Frame,
    /// Subscribers joined with this address; the entry goes with the last.
    subscribers: usize,
}

#[derive(Debug)]
struct Subscriber {
    outbox: Rc<Outbox>,
    /// Its connection speaks the Hocuspocus framing: the index of its address in the room's
    /// `hocuspocus` frames.
    hocuspocus: Option<usize>,
    /// Awareness client ids this connection introduced; removed when it leaves.
    awareness_ids: Vec<u64>,
    /// Which join of the room this is: a pending update's sender is told of its refusal
    /// only if its slot still holds the same subscriber.
    joined: u64,
    /// What admitted it, as the server numbers credentials (the room only keeps it, for
    /// [`Room::close_subscribers`]: an operator may revoke the key a token was signed with).
    credential: u32,
}

/// What handling one message did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames queued on (or sent to) other subscribers.
    pub deliveries: usize,
    /// Pending updates integrated to answer the message (a step 1).
    pub integrated: usize,
}

/// What one [`Room::integrate`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Integrated {
    pub applied: usize,
    /// Updates yrs refused (their senders were closed with 1007).
    pub refused: usize,
    /// Updates still pending: integrate again.
    pub more: bool,
}

/// A document made from an application's state (the load hook), to become a room
/// ([`Room::seeded`]). Made off the shard (on a call thread): checking and applying a whole
/// document can take long.
pub struct Seed {
    doc: yrs::Doc,
    bytes: usize,
}

impl Seed {
    /// Checks `state` like a client's update and applies it to a new document. Its structs
    /// are bounded by its size rather than by `update_structs_max`: a whole document may
    /// hold more than one message may (and each struct takes at least a byte).
    pub fn prepare(state: &[u8], config: &RoomConfig) -> Result<Seed, Refusal> {
        if state.len() > config.document_bytes_max {
            return Err(Refusal::DocumentTooLarge);
        }
        let limits = UpdateLimits {
            structs_max: config.update_limits.structs_max.max(state.len()),
            ..config.update_limits
        };
        super::update_check::check_update_v1(state, &limits)
            .map_err(|e| Refusal::Protocol(protocol::ProtocolError::Update(e)))?;
        let update = yrs::Update::decode_v1(state).map_err(|_| Refusal::Integrate)?;
        let doc = yrs::Doc::new();
        doc.transact_mut()
            .apply_update(update)
            .map_err(|_| Refusal::Integrate)?;
        Ok(Seed {
            doc,
            bytes: state.len(),
        })
    }
}

/// One subscriber's updates of the current read, relayed at its end.
struct Relay {
    from: Slot,
    frames: Vec<Frame>,
}

/// An update relayed but not yet integrated: its relayed frame (shared with the outboxes,
/// so it costs no copy) and where the update's bytes start in it. Kept as bytes, decoded
/// again when integrated: a decoded update takes several times its bytes, and a shard that
/// is behind holds many of them.
struct PendingUpdate {
    frame: Frame,
    update_at: usize,
    from: Slot,
    joined: u64,
}

pub struct Room {
    doc: yrs::Doc,
    /// This read's updates, relayed by [`Room::flush`] (which comes before another
    /// subscriber's message, a join or a leave).
    relay: Option<Relay>,
    /// Updates relayed and not yet integrated, oldest first.
    pending: VecDeque<PendingUpdate>,
    pending_bytes: usize,
    /// The server has been asked to integrate this room (see [`Room::request_integration`]).
    integration_requested: bool,
    /// Readers waiting for the room to stop lagging.
    caught_up_waiters: Vec<Waker>,
    /// The document's size as an update, estimated: the last measurement plus the bytes of
    /// every update applied since. Usually more than the real size, as Yjs merges; deletions
    /// that split many items can make it less, until the next measurement. (Memory itself is
    /// bounded by the node's budget, past which no changes are taken.)
    document_bytes: usize,
    /// Update bytes applied since the document was last measured.
    unmeasured_bytes: usize,
    /// Sync step 2 with the whole integrated document, for clients that have nothing yet:
    /// encoded once per change and shared, not once per request.
    full_state: Option<Frame>,
    awareness: AwarenessStates,
    /// Every live awareness state in one message, likewise encoded once per change.
    awareness_all: Option<Frame>,
    /// A slab: leaving frees a slot, joining reuses one.
    subscribers: Vec<Option<Subscriber>>,
    free_slots: Vec<usize>,
    len: usize,
    /// Per address Hocuspocus subscribers name the room by (a slab: an address no
    /// subscriber uses any more frees its place).
    hocuspocus: Vec<Option<HocuspocusFrames>>,
    joins: u64,
    /// Updates taken (staged to be relayed and integrated) since the room was made: how
    /// `document.changed` webhooks see that something changed.
    changes: u64,
    awareness_changes: u64,
    config: RoomConfig,
}

impl Room {
    pub fn new(config: RoomConfig) -> Self {
        Room {
            doc: yrs::Doc::new(),
            relay: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            integration_requested: false,
            caught_up_waiters: Vec::new(),
            document_bytes: 0,
            unmeasured_bytes: 0,
            full_state: None,
            awareness: new_awareness(&config),
            awareness_all: None,
            subscribers: Vec::new(),
            free_slots: Vec::new(),
            len: 0,
            hocuspocus: Vec::new(),
            joins: 0,
            changes: 0,
            awareness_changes: 0,
            config,
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.len
    }

    /// Bytes of document that answering `message` would encode: none for a step 1 whose
    /// answer is the cached whole state, else the document's size (see `message_rate`).
    pub fn encode_bytes(&self, message: &Message<'_>) -> usize {
        match message {
            Message::SyncStep1(sv) if sv.is_empty() && self.full_state.is_some() => 0,
            Message::SyncStep1(_) => self.document_bytes,
            _ => 0,
        }
    }

    /// The integrated document (without what is pending).
    pub fn doc(&self) -> &yrs::Doc {
        &self.doc
    }

    /// Adds a subscriber and queues what a new client gets first: the server's state vector
    /// (sync step 1) and the current awareness states.
    pub fn join(&mut self, outbox: Rc<Outbox>) -> Slot {
        self.join_framed(outbox, Framing::YWebsocket, 0)
    }

    /// [`Room::join`] for a connection with the given framing, admitted with `credential`.
    pub fn join_framed(
        &mut self,
        outbox: Rc<Outbox>,
        framing: Framing<'_>,
        credential: u32,
    ) -> Slot {
        assert!(
            self.relay.is_none(),
            "a read is relayed before anyone joins"
        );
        let hocuspocus = match framing {
            Framing::YWebsocket => None,
            Framing::Hocuspocus { address } => Some(self.address_joined(address)),
        };
        let sv = self.doc.transact().state_vector().encode_v1();
        let step1 = sync_frame(SYNC_STEP1, &sv);
        let awareness = self.awareness_all();
        for frame in std::iter::once(step1).chain(awareness) {
            outbox.push(&self.framed(hocuspocus, frame));
        }
        self.joins += 1;
        let subscriber = Subscriber {
            outbox,
            hocuspocus,
            awareness_ids: Vec::new(),
            joined: self.joins,
            credential,
        };
        self.len += 1;
        match self.free_slots.pop() {
            Some(i) => {
                debug_assert!(self.subscribers[i].is_none());
                self.subscribers[i] = Some(subscriber);
                Slot(i)
            }
            None => {
                self.subscribers.push(Some(subscriber));
                Slot(self.subscribers.len() - 1)
            }
        }
    }

    /// Removes a subscriber; the awareness states it introduced are removed and that removal
    /// is broadcast to the others. Its pending updates stay pending (they were relayed).
    pub fn leave(&mut self, slot: Slot) {
        assert!(
            self.relay.is_none(),
            "a read is relayed before anyone leaves"
        );
        let subscriber = self.subscribers[slot.0].take().expect("a slot leaves once");
        self.free_slots.push(slot.0);
        self.len -= 1;
        if let Some(address) = subscriber.hocuspocus {
            self.address_left(address);
        }
        let removed = self.awareness.remove(&subscriber.awareness_ids);
        if !removed.is_empty() {
            self.awareness_changed();
            let entries = removed
                .iter()
                .map(|&(client_id, clock)| protocol::AwarenessEntry {
                    client_id,
                    clock,
                    state: "null",
                });
            let frame = binary_frame(&protocol::encode_awareness(
                entries.collect::<Vec<_>>().into_iter(),
            ));
            self.broadcast(None, std::slice::from_ref(&frame), false);
        }
        if self.len == 0 {
            self.subscribers.clear();
            self.free_slots.clear();
        }
    }

    /// Starts the document over, empty, and closes every subscriber with 1011 so that each
    /// reconnects and syncs its copy into the new one. For after a panic inside this room's
    /// code (yrs included): the document may then be inconsistent, and serving it to joiners
    /// would spread that; the clients hold the whole document, so they lose nothing.
    pub fn reset(&mut self) {
        self.doc = yrs::Doc::new();
        self.relay = None;
        self.pending.clear();
        self.pending_bytes = 0;
        self.integration_requested = false;
        self.document_bytes = 0;
        self.unmeasured_bytes = 0;
        self.full_state = None;
        self.awareness = new_awareness(&self.config);
        self.awareness_changed();
        let (code, reason) = Refusal::DocumentReset.close();
        for subscriber in self.subscribers.iter_mut().flatten() {
            subscriber.awareness_ids.clear();
            subscriber.outbox.close(code, &reason);
        }
        self.wake_caught_up();
    }

    /// `slot`'s subscriber was admitted again (a refreshed token) with `credential`.
    pub fn set_credential(&mut self, slot: Slot, credential: u32) {
        if let Some(subscriber) = self.subscribers.get_mut(slot.0).and_then(Option::as_mut) {
            subscriber.credential = credential;
        }
    }

    /// Closes the connection of every subscriber whose credential `which` names with `code`
    /// and `reason` (an operator closed the document, or revoked its app or a key); how many
    /// were not closing already.
    pub fn close_subscribers(&self, code: u16, reason: &str, which: impl Fn(u32) -> bool) -> usize {
        let mut closed = 0;
        let chosen = self.subscribers.iter().flatten();
        for subscriber in chosen.filter(|s| which(s.credential)) {
            if subscriber.outbox.closed().is_none() {
                subscriber.outbox.close(code, reason);
                closed += 1;
            }
        }
        closed
    }

    /// Handles one binary message from the subscriber in `from` at once: relayed, and
    /// integrated, before it returns (for tests and benchmarks; the server integrates later).
    pub fn receive(
        &mut self,
        from: Slot,
        payload: &[u8],
        can_write: bool,
    ) -> Result<Outcome, Refusal> {
        let staged = self.stage(from, payload, can_write)?;
        let flushed = self.flush();
        let integrated = self.integrate_all().applied;
        Ok(Outcome {
            deliveries: staged.deliveries + flushed.deliveries,
            integrated: staged.integrated + integrated,
        })
    }

    /// Decodes one client message with this room's limits (nothing is changed).
    pub fn decode<'p>(&self, payload: &'p [u8]) -> Result<Message<'p>, Refusal> {
        protocol::decode(payload, &self.config.update_limits).map_err(Refusal::Protocol)
    }

    /// Decodes and stages one binary message (see [`Room::stage_message`]).
    pub fn stage(
        &mut self,
        from: Slot,
        payload: &[u8],
        can_write: bool,
    ) -> Result<Outcome, Refusal> {
        let message = self.decode(payload)?;
        self.stage_message(from, message, can_write)
    }

    /// Handles one decoded message from the subscriber in `from`; an update is checked and
    /// decoded now, relayed by the next [`Room::flush`] (which must come before another
    /// subscriber's message, a join or a leave) and integrated by a later
    /// [`Room::integrate`]. Any other message flushes first, so everything leaves in the
    /// order it came.
    /// `can_write` is false for read-only (viewer) connections: their updates are answered
    /// with an auth message (permission denied, `read-only`) and neither applied nor relayed.
    pub fn stage_message(
        &mut self,
        from: Slot,
        message: Message<'_>,
        can_write: bool,
    ) -> Result<Outcome, Refusal> {
        // A relay holds one subscriber's updates: another's (one socket may be several
        // subscribers, a Hocuspocus socket naming the room by several addresses) go after
        // it, so everything leaves in the order it came.
        let flushed = match message {
            Message::Update { .. } if self.relay.as_ref().is_none_or(|r| r.from == from) => {
                Outcome::default()
            }
            _ => self.flush(),
        };
        let handled = match message {
            Message::SyncStep1(sv) => {
                // Bounded by `pending_*_max` (and work integration would do anyway).
                let integrated = self.integrate_all().applied;
                let answer = if sv.is_empty() {
                    self.full_state()
                } else {
                    let diff = self
                        .doc
                        .transact()
                        .encode_state_as_update_v1(&sv.to_state_vector());
                    sync_frame(SYNC_STEP2, &diff)
                };
                self.send(from, answer);
                Outcome {
                    deliveries: 0,
                    integrated,
                }
            }
            Message::Update { update, stats, .. } => {
                if stats.is_empty() {
                    // Nothing to integrate: applied as it stands.
                    self.acknowledge(from, true);
                    return Ok(Outcome::default());
                }
                if !can_write {
                    if self.sender(from).hocuspocus.is_some() {
                        self.acknowledge(from, false);
                    } else {
                        self.refuse_read_only(from);
                    }
                    return Ok(Outcome::default());
                }
                let measured = self.make_room_for(update.len())?;
                // Nothing yrs cannot decode is relayed.
                yrs::Update::decode_v1(update).map_err(|_| Refusal::Integrate)?;
                // Relayed as an update message encoded here from the checked bytes (a step 2
                // and an update relay alike): every other client reads what the server takes.
                let (head, head_len) = protocol::sync_head(SYNC_UPDATE, update.len());
                let frame = binary_parts(&[&head[..head_len], update]);
                let joined = self.sender(from).joined;
                self.pending.push_back(PendingUpdate {
                    update_at: frame.len() - update.len(),
                    frame: frame.clone(),
                    from,
                    joined,
                });
                self.pending_bytes += update.len();
                self.changes += 1;
                let relay = self.relay.get_or_insert_with(|| Relay {
                    from,
                    frames: Vec::new(),
                });
                relay.frames.push(frame);
                let flushed = if relay.frames.len() >= STAGED_UPDATES_MAX {
                    self.flush()
                } else {
                    Outcome::default()
                };
                Outcome {
                    deliveries: measured.deliveries + flushed.deliveries,
                    integrated: measured.integrated,
                }
            }
            Message::Awareness(entries) => {
                let owned_max = self.config.awareness_clients_per_connection_max;
                let subscriber = self.subscribers[from.0]
                    .as_mut()
                    .expect("sender is subscribed");
                let applied =
                    self.awareness
                        .apply(&entries, &mut subscriber.awareness_ids, owned_max);
                // A refused update may have applied its first entries.
                self.awareness_changed();
                if applied.map_err(Refusal::Awareness)? {
                    let (head, head_len) = protocol::awareness_head(entries.bytes.len());
                    let frame = binary_parts(&[&head[..head_len], entries.bytes]);
                    self.broadcast(Some(from), std::slice::from_ref(&frame), true)
                } else {
                    Outcome::default()
                }
            }
            Message::QueryAwareness => {
                if let Some(frame) = self.awareness_all() {
                    self.send(from, frame);
                }
                Outcome::default()
            }
        };
        Ok(Outcome {
            deliveries: flushed.deliveries + handled.deliveries,
            integrated: handled.integrated,
        })
    }

    /// Relays the read's updates to every other subscriber, in the order they came, all of
    /// them in one push per subscriber.
    pub fn flush(&mut self) -> Outcome {
        // Taken, not kept: an idle room holds no relay capacity.
        let Some(Relay { from, frames }) = self.relay.take() else {
            return Outcome::default();
        };
        let relayed = self.broadcast(Some(from), &frames, false);
        Outcome {
            deliveries: relayed.deliveries * frames.len(),
            integrated: 0,
        }
    }

    /// True once when updates wait to be integrated and no integration was asked for since
    /// the last one finished: the caller then schedules [`Room::integrate`].
    pub fn request_integration(&mut self) -> bool {
        let request = !self.pending.is_empty() && !self.integration_requested;
        self.integration_requested |= request;
        request
    }

    /// Integrates pending updates in one transaction (a yrs transaction costs more than a
    /// small update in it): up to `updates_max`, and none begun after `until` (one update
    /// that conflicts with many concurrent ones can take milliseconds). An update yrs
    /// refuses was relayed already: its sender, if still here, is closed (1007); the rest go
    /// on being integrated, as every other client integrates them.
    pub fn integrate(&mut self, updates_max: usize, until: Option<Instant>) -> Integrated {
        let mut done = Integrated::default();
        let mut refused_senders = Vec::new();
        // Hocuspocus senders get one acknowledgement per update once it is integrated.
        let mut applied_senders = Vec::new();
        let mut applied_bytes = 0;
        {
            let mut txn = self.doc.transact_mut();
            while done.applied + done.refused < updates_max
                && until.is_none_or(|t| done.applied + done.refused == 0 || Instant::now() < t)
            {
                let Some(pending) = self.pending.pop_front() else {
                    break;
                };
                let update = &pending.frame[pending.update_at..];
                self.pending_bytes -= update.len();
                applied_bytes += update.len();
                // Decoded once already, before it was relayed.
                let applied = yrs::Update::decode_v1(update)
                    .map_err(|_| ())
                    .and_then(|update| txn.apply_update(update).map_err(|_| ()));
                match applied {
                    Ok(()) => {
                        done.applied += 1;
                        if !self.hocuspocus.is_empty() {
                            applied_senders.push((pending.from, pending.joined));
                        }
                    }
                    Err(()) => {
                        done.refused += 1;
                        refused_senders.push((pending.from, pending.joined));
                    }
                }
            }
        }
        if applied_bytes > 0 {
            self.full_state = None;
            // All the bytes, even of refused updates: the estimate errs high.
            self.document_bytes += applied_bytes;
            self.unmeasured_bytes += applied_bytes;
        }
        for (slot, joined) in refused_senders {
            if let Some(s) = self.still_joined(slot, joined) {
                let (code, reason) = Refusal::Integrate.close();
                s.outbox.close(code, &reason);
            }
        }
        for (slot, joined) in applied_senders {
            if self.still_joined(slot, joined).is_some() {
                self.acknowledge(slot, true);
            }
        }
        done.more = !self.pending.is_empty();
        self.integration_requested = done.more;
        if !self.lagging() {
            self.wake_caught_up();
        }
        done
    }

    /// Integrates everything pending.
    pub fn integrate_all(&mut self) -> Integrated {
        let mut all = Integrated::default();
        loop {
            let done = self.integrate(usize::MAX, None);
            all.applied += done.applied;
            all.refused += done.refused;
            if !done.more {
                return all;
            }
        }
    }

    /// Updates relayed and not yet integrated.
    pub fn pending_updates(&self) -> usize {
        self.pending.len()
    }

    /// Integration is behind by its bound (updates or bytes): the room's writers should not
    /// be read until it catches up.
    pub fn lagging(&self) -> bool {
        self.pending.len() >= self.config.pending_updates_max
            || self.pending_bytes >= self.config.pending_bytes_max
    }

    /// Ready once the room is not [`Room::lagging`].
    pub fn poll_caught_up(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.lagging() {
            return Poll::Ready(());
        }
        // Bounded by the room's subscribers: each session waits on one poll at a time.
        if !self
            .caught_up_waiters
            .iter()
            .any(|w| w.will_wake(cx.waker()))
        {
            self.caught_up_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn wake_caught_up(&mut self) {
        for waker in self.caught_up_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Checks that an update of `update_bytes` keeps the document within its bound, measuring
    /// it when the estimate says no and enough has arrived since the last measurement (which
    /// relays the read and integrates everything pending first).
    fn make_room_for(&mut self, update_bytes: usize) -> Result<Outcome, Refusal> {
        let max = self.config.document_bytes_max;
        if self.document_bytes + self.pending_bytes + update_bytes <= max {
            return Ok(Outcome::default());
        }
        if self.unmeasured_bytes + self.pending_bytes < max / REMEASURE_DIVISOR {
            return Err(Refusal::DocumentTooLarge);
        }
        let flushed = self.flush();
        let integrated = self.integrate_all().applied;
        self.full_state();
        if self.document_bytes + update_bytes > max {
            return Err(Refusal::DocumentTooLarge);
        }
        Ok(Outcome {
            integrated,
            ..flushed
        })
    }

    /// A new room holding the application's state (the load hook), before anyone joins.
    pub fn seeded(config: RoomConfig, seed: Seed) -> Self {
        Room {
            doc: seed.doc,
            document_bytes: seed.bytes,
            ..Room::new(config)
        }
    }

    /// The whole document as one Yjs v1 update, what is pending integrated first: what an
    /// application keeps of a session (`session.ended`).
    pub fn final_state(&mut self) -> Vec<u8> {
        self.changes_since(&yrs::StateVector::default()).0
    }

    /// Updates taken since the room was made (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Awareness changes since the room was made: how `presence.changed` webhooks see that
    /// presence may have changed.
    pub fn awareness_changes(&self) -> u64 {
        self.awareness_changes
    }

    /// Who is present: the `user` object of every live awareness state that has one (in
    /// client id order), and how many live states there are (`presence.changed`'s data).
    pub fn presence(&self) -> (Vec<serde_json::Value>, usize) {
        let mut live: Vec<_> = self.awareness.live().collect();
        live.sort_by_key(|entry| entry.client_id);
        let users = live
            .iter()
            .filter_map(|entry| {
                let state: serde_json::Value = serde_json::from_str(entry.state).ok()?;
                state.get("user").filter(|u| !u.is_null()).cloned()
            })
            .collect();
        (users, live.len())
    }

    /// Every live awareness state in one message must be encoded again, and presence may
    /// have changed.
    fn awareness_changed(&mut self) {
        self.awareness_all = None;
        self.awareness_changes += 1;
    }

    /// What changed since the document was at `before` (what is pending integrated first),
    /// as a Yjs v1 update, and the state vector it is at now.
    pub fn changes_since(&mut self, before: &yrs::StateVector) -> (Vec<u8>, yrs::StateVector) {
        use yrs::ReadTxn;
        self.integrate_all();
        let txn = self.doc.transact();
        (txn.encode_state_as_update_v1(before), txn.state_vector())
    }

    /// Sync step 2 with the whole integrated document, encoded once per change; encoding it
    /// measures the document.
    fn full_state(&mut self) -> Frame {
        if let Some(frame) = &self.full_state {
            return frame.clone();
        }
        let update = self
            .doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        self.document_bytes = update.len();
        self.unmeasured_bytes = 0;
        let frame = sync_frame(SYNC_STEP2, &update);
        self.full_state = Some(frame.clone());
        frame
    }

    /// Every live awareness state in one message (none when there are none), encoded once
    /// per change.
    fn awareness_all(&mut self) -> Option<Frame> {
        if self.awareness_all.is_none() && self.awareness.live_count() > 0 {
            self.awareness_all = Some(binary_frame(&protocol::encode_awareness(
                self.awareness.live(),
            )));
        }
        self.awareness_all.clone()
    }

    /// Pushes `frames` on every subscriber but `except` (or, with `echo_hocuspocus`, but a
    /// y-websocket `except`); counts the subscribers that took them. The Hocuspocus
    /// framing's copies are encoded once per address, for all its subscribers.
    fn broadcast(&self, except: Option<Slot>, frames: &[Frame], echo_hocuspocus: bool) -> Outcome {
        let mut deliveries = 0;
        let mut addressed: Vec<Option<Vec<Frame>>> = Vec::new();
        for (i, s) in self.subscribers.iter().enumerate() {
            let Some(s) = s else { continue };
            let sender = Some(Slot(i)) == except;
            let took = match s.hocuspocus {
                None if sender => continue,
                None => s.outbox.push_all(frames),
                Some(_) if sender && !echo_hocuspocus => continue,
                Some(address) => {
                    if addressed.len() <= address {
                        addressed.resize(address + 1, None);
                    }
                    let copies = addressed[address].get_or_insert_with(|| {
                        frames
                            .iter()
                            .map(|f| self.to_hocuspocus(address, f))
                            .collect()
                    });
                    s.outbox.push_all(copies)
                }
            };
            deliveries += took as usize;
        }
        Outcome {
            deliveries,
            integrated: 0,
        }
    }

    /// Sends a side message (JSON text, PRODUCT.md 9.3) to the document's other
    /// connections, and to `from` too when `echo`: a text frame in the y-websocket framing,
    /// a Stateless message (encoded once per address) in the Hocuspocus one.
    pub fn side_message(&mut self, from: Slot, payload: &str, echo: bool) -> Outcome {
        let flushed = self.flush();
        let mut deliveries = flushed.deliveries;
        let mut text: Option<Frame> = None;
        let mut addressed: Vec<Option<Frame>> = Vec::new();
        for (i, s) in self.subscribers.iter().enumerate() {
            let Some(s) = s else { continue };
            if Slot(i) == from && !echo {
                continue;
            }
            let frame = match s.hocuspocus {
                None => {
                    text.get_or_insert_with(|| shared_frame(Opcode::Text, &[payload.as_bytes()]))
                }
                Some(address) => {
                    if addressed.len() <= address {
                        addressed.resize(address + 1, None);
                    }
                    addressed[address].get_or_insert_with(|| {
                        let prefix = &self.address(address).prefix;
                        binary_frame(&hocuspocus::encode_stateless(prefix, payload))
                    })
                }
            };
            deliveries += s.outbox.push(frame) as usize;
        }
        Outcome {
            deliveries,
            ..flushed
        }
    }

    /// Tells a y-websocket subscriber that what it sent was refused because it is a viewer
    /// (auth message, permission denied, `read-only`). The Hocuspocus framing has no such
    /// answer outside sync (a PermissionDenied would end the provider's authentication).
    pub fn refuse_read_only(&mut self, from: Slot) {
        if self.sender(from).hocuspocus.is_none() {
            let denied = binary_frame(&protocol::encode_permission_denied("read-only"));
            self.sender(from).outbox.push(&denied);
        }
    }

    /// The place of a Hocuspocus subscriber's address, made on its first subscriber.
    fn address_joined(&mut self, address: &str) -> usize {
        let prefix = hocuspocus::address_prefix(address);
        let found = self
            .hocuspocus
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| *a.prefix == *prefix));
        let at = match found {
            Some(at) => at,
            None => {
                let frames = HocuspocusFrames {
                    applied: binary_frame(&hocuspocus::encode_sync_status(&prefix, true)),
                    refused: binary_frame(&hocuspocus::encode_sync_status(&prefix, false)),
                    prefix: prefix.into(),
                    subscribers: 0,
                };
                match self.hocuspocus.iter().position(Option::is_none) {
                    Some(free) => {
                        self.hocuspocus[free] = Some(frames);
                        free
                    }
                    None => {
                        self.hocuspocus.push(Some(frames));
                        self.hocuspocus.len() - 1
                    }
                }
            }
        };
        self.hocuspocus[at]
            .as_mut()
            .expect("found or made")
            .subscribers += 1;
        at
    }

    fn address_left(&mut self, at: usize) {
        let frames = self.hocuspocus[at]
            .as_mut()
            .expect("a subscriber's address");
        frames.subscribers -= 1;
        if frames.subscribers == 0 {
            self.hocuspocus[at] = None;
            while self.hocuspocus.last().is_some_and(Option::is_none) {
                self.hocuspocus.pop();
            }
        }
    }

    fn address(&self, at: usize) -> &HocuspocusFrames {
        self.hocuspocus[at]
            .as_ref()
            .expect("a subscriber's address")
    }

    /// `frame` as a subscriber of the given framing receives it.
    fn framed(&self, hocuspocus: Option<usize>, frame: Frame) -> Frame {
        match hocuspocus {
            Some(address) => self.to_hocuspocus(address, &frame),
            None => frame,
        }
    }

    /// The Hocuspocus copy of a y-websocket frame: the same message behind the address.
    fn to_hocuspocus(&self, address: usize, frame: &Frame) -> Frame {
        binary_parts(&[&self.address(address).prefix, frame_payload(frame)])
    }

    /// Sends `frame` to one subscriber, in its framing.
    fn send(&self, slot: Slot, frame: Frame) {
        let s = self.sender(slot);
        s.outbox.push(&self.framed(s.hocuspocus, frame));
    }

    /// Tells a Hocuspocus subscriber that one update of its was applied or refused (a
    /// y-websocket one is told nothing of an applied update).
    fn acknowledge(&self, slot: Slot, applied: bool) {
        let s = self.sender(slot);
        if let Some(address) = s.hocuspocus {
            let frames = self.address(address);
            s.outbox.push(if applied {
                &frames.applied
            } else {
                &frames.refused
            });
        }
    }

    /// The subscriber in `slot`, if it is still the one that joined as `joined`.
    fn still_joined(&self, slot: Slot, joined: u64) -> Option<&Subscriber> {
        self.subscribers
            .get(slot.0)?
            .as_ref()
            .filter(|s| s.joined == joined)
    }

    fn sender(&self, slot: Slot) -> &Subscriber {
        self.subscribers[slot.0]
            .as_ref()
            .expect("sender is subscribed")
    }
}

fn new_awareness(config: &RoomConfig) -> AwarenessStates {
    AwarenessStates::new(
        config.awareness_clients_max,
        config.awareness_state_bytes_max,
    )
}

fn binary_parts(parts: &[&[u8]]) -> Frame {
    shared_frame(Opcode::Binary, parts)
}

fn sync_frame(step: u8, body: &[u8]) -> Frame {
    binary_frame(&protocol::encode_sync(step, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::protocol::{encode_awareness, AwarenessEntry};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use yrs::{Array, GetString, Map, Text};

    #[test]
    fn closing_by_credential_closes_only_those_subscribers() {
        let mut room = Room::new(RoomConfig::default());
        let outboxes: Vec<Rc<Outbox>> = (0..3).map(|_| Rc::new(Outbox::new(1 << 20))).collect();
        let slots: Vec<Slot> = outboxes
            .iter()
            .zip([1, 2, 1])
            .map(|(outbox, credential)| {
                room.join_framed(outbox.clone(), Framing::YWebsocket, credential)
            })
            .collect();
        // The second was admitted again (a refreshed token) with another key.
        room.set_credential(slots[1], 3);
        assert_eq!(room.close_subscribers(4003, "revoked", |c| c == 2), 0);
        assert_eq!(
            room.close_subscribers(4003, "Forbidden: key revoked", |c| c == 1),
            2
        );
        let codes: Vec<Option<u16>> = outboxes.iter().map(|o| o.close_code()).collect();
        assert_eq!(codes, [Some(4003), None, Some(4003)]);
        assert_eq!(
            room.close_subscribers(4003, "again", |c| c == 1),
            0,
            "closing already"
        );
        assert_eq!(room.close_subscribers(4003, "all", |_| true), 1);
    }

    /// Takes every frame queued on `o` and returns their payloads (all are short binary frames
    /// or 16-bit-length ones in these tests).
    fn drain(o: &Outbox) -> Vec<Vec<u8>> {
        let frames: Vec<Vec<u8>> = o.with_unwritten(|it| it.map(<[u8]>::to_vec).collect());
        o.consume(frames.iter().map(Vec::len).sum());
        let mut cx = Context::from_waker(Waker::noop());
        let _ = o.poll_pending(&mut cx);
        frames
            .iter()
            .map(|f| {
                let skip = if f[1] == 126 { 4 } else { 2 };
                f[skip..].to_vec()
            })
            .collect()
    }

    fn client_update(text: &str) -> Vec<u8> {
        client_update_by(42, text)
    }

    fn client_update_by(client_id: u64, text: &str) -> Vec<u8> {
        let doc = yrs::Doc::with_client_id(client_id);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, text);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        protocol::encode_sync(SYNC_UPDATE, &update)
    }

    #[test]
    fn a_seed_is_checked_like_an_update_but_may_hold_more_structs_than_one_message() {
        // One struct per client: ten of them, where one message may hold four.
        let doc = yrs::Doc::new();
        for client in 1..=10 {
            let by = yrs::Doc::with_client_id(client);
            by.get_or_insert_text("t")
                .insert(&mut by.transact_mut(), 0, "x");
            let update = by
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            doc.transact_mut()
                .apply_update(yrs::Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        let state = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let mut config = RoomConfig::default();
        config.update_limits.structs_max = 4;
        let seed = Seed::prepare(&state, &config).expect("a whole document");
        let room = Room::seeded(config, seed);
        let text = room.doc().get_or_insert_text("t");
        assert_eq!(text.get_string(&room.doc().transact()).len(), 10);
        // Past the document's size bound, or not an update: refused.
        config.document_bytes_max = state.len() - 1;
        assert!(matches!(
            Seed::prepare(&state, &config),
            Err(Refusal::DocumentTooLarge)
        ));
        assert!(Seed::prepare(&[0xff; 8], &RoomConfig::default()).is_err());
    }

    #[test]
    fn joining_sends_step1_and_updates_are_applied_and_relayed_to_others() {
        let mut room = Room::new(RoomConfig::default());
        let (a, b) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let sa = room.join(a.clone());
        let _sb = room.join(b.clone());
        let first = drain(&a);
        assert_eq!(first.len(), 1);
        assert_eq!(&first[0][..2], &[protocol::MESSAGE_SYNC, SYNC_STEP1]);
        drain(&b);

        let msg = client_update("hello");
        let outcome = room.receive(sa, &msg, true).unwrap();
        assert_eq!(outcome.deliveries, 1);
        assert_eq!(drain(&b), vec![msg.clone()], "relayed byte for byte");
        assert!(drain(&a).is_empty(), "not echoed to the sender");
        let t = room.doc().get_or_insert_text("t");
        assert_eq!(t.get_string(&room.doc().transact()), "hello");
    }

    /// `message` as a Hocuspocus client or subscriber sees it for document `d`.
    fn hp(message: &[u8]) -> Vec<u8> {
        [&hocuspocus::address_prefix("d")[..], message].concat()
    }

    #[test]
    fn updates_of_two_subscribers_in_one_read_leave_in_the_order_they_came() {
        // One socket may be two subscribers (a Hocuspocus socket naming the room by two
        // addresses): their messages of one read are staged without a flush between them.
        let mut room = Room::new(RoomConfig::default());
        let outboxes: Vec<Rc<Outbox>> = (0..3).map(|_| Rc::new(Outbox::new(1 << 20))).collect();
        let slots: Vec<Slot> = outboxes.iter().map(|o| room.join(o.clone())).collect();
        for o in &outboxes {
            drain(o);
        }
        let (first, second) = (client_update("one"), client_update_by(2, "two"));
        room.stage(slots[0], &first, true).unwrap();
        room.stage(slots[1], &second, true).unwrap();
        room.flush();
        assert_eq!(drain(&outboxes[2]), vec![first.clone(), second.clone()]);
        assert_eq!(drain(&outboxes[1]), vec![first]);
        assert_eq!(drain(&outboxes[0]), vec![second]);
        room.integrate_all();
        let t = room.doc().get_or_insert_text("t");
        assert_eq!(t.get_string(&room.doc().transact()).len(), 6);
    }

    #[test]
    fn subscribers_naming_the_room_by_different_addresses_each_get_their_own() {
        let mut room = Room::new(RoomConfig::default());
        let outboxes: Vec<Rc<Outbox>> = (0..3).map(|_| Rc::new(Outbox::new(1 << 20))).collect();
        let addresses = ["d\0s1", "d\0s2", "d\0s1"];
        let slots: Vec<Slot> = outboxes
            .iter()
            .zip(addresses)
            .map(|(o, address)| room.join_framed(o.clone(), Framing::Hocuspocus { address }, 0))
            .collect();
        assert_eq!(
            room.hocuspocus.iter().flatten().count(),
            2,
            "one entry per address"
        );
        let behind = |address: &str, message: &[u8]| {
            [&hocuspocus::address_prefix(address)[..], message].concat()
        };
        for o in &outboxes {
            drain(o);
        }
        let update = client_update("hi");
        room.receive(slots[0], &update, true).unwrap();
        assert_eq!(drain(&outboxes[1]), vec![behind("d\0s2", &update)]);
        assert_eq!(drain(&outboxes[2]), vec![behind("d\0s1", &update)]);
        assert_eq!(drain(&outboxes[0]), vec![behind("d\0s1", &[8, 1])]);
        room.side_message(slots[1], "{}", false);
        assert_eq!(
            drain(&outboxes[0]),
            vec![hocuspocus::encode_stateless(
                &hocuspocus::address_prefix("d\0s1"),
                "{}"
            )]
        );
        // An address goes with its last subscriber; a later one takes its place.
        room.leave(slots[0]);
        assert_eq!(room.hocuspocus.iter().flatten().count(), 2);
        room.leave(slots[2]);
        assert_eq!(room.hocuspocus.iter().flatten().count(), 1);
        let later = Rc::new(Outbox::new(1 << 20));
        room.join_framed(later.clone(), Framing::Hocuspocus { address: "d\0s3" }, 0);
        assert_eq!(room.hocuspocus.len(), 2, "the freed place is reused");
        room.receive(slots[1], &client_update("x"), true).unwrap();
        let got = drain(&later);
        assert_eq!(got.last().unwrap(), &behind("d\0s3", &client_update("x")));
    }

    #[test]
    fn hocuspocus_and_y_websocket_subscribers_share_a_room_each_in_its_framing() {
        let mut room = Room::new(RoomConfig::default());
        let (y, h, h2) = (
            Rc::new(Outbox::new(1 << 20)),
            Rc::new(Outbox::new(1 << 20)),
            Rc::new(Outbox::new(1 << 20)),
        );
        let sy = room.join(y.clone());
        let hocuspocus = Framing::Hocuspocus { address: "d" };
        let sh = room.join_framed(h.clone(), hocuspocus, 0);
        let sh2 = room.join_framed(h2.clone(), hocuspocus, 0);
        let step1 = protocol::encode_sync(SYNC_STEP1, &[0]);
        assert_eq!(drain(&y), vec![step1.clone()]);
        assert_eq!(
            drain(&h),
            vec![hp(&step1)],
            "the server's step 1, addressed"
        );
        drain(&h2);

        // A Hocuspocus update: relayed in each framing, not echoed, acknowledged once
        // integrated (not before).
        let update = client_update("hi");
        room.stage(sh, &update, true).unwrap();
        room.flush();
        assert_eq!(drain(&y), vec![update.clone()]);
        assert_eq!(drain(&h2), vec![hp(&update)]);
        assert!(drain(&h).is_empty(), "no echo, and no acknowledgement yet");
        room.integrate_all();
        assert_eq!(drain(&h), vec![hp(&[8, 1])]);
        assert!(drain(&h2).is_empty() && drain(&y).is_empty());

        // A y-websocket update reaches both Hocuspocus subscribers, addressed; the
        // y-websocket sender is acknowledged nothing.
        let update = client_update("yo");
        room.receive(sy, &update, true).unwrap();
        assert_eq!(drain(&h), vec![hp(&update)]);
        assert_eq!(drain(&h2), vec![hp(&update)]);
        assert!(drain(&y).is_empty());

        // An empty step 2 (what a fresh provider answers the server's step 1 with) is
        // acknowledged at once: the provider's first unsynced change is its step 2.
        room.receive(sh, &protocol::encode_sync(SYNC_STEP2, &[0, 0]), true)
            .unwrap();
        assert_eq!(drain(&h), vec![hp(&[8, 1])]);

        // Awareness is echoed to a Hocuspocus sender (its keepalive), not to a y-websocket one.
        let awareness = encode_awareness(
            [AwarenessEntry {
                client_id: 7,
                clock: 1,
                state: "{}",
            }]
            .into_iter(),
        );
        room.receive(sh, &awareness, true).unwrap();
        assert_eq!(drain(&h), vec![hp(&awareness)]);
        assert_eq!(drain(&h2), vec![hp(&awareness)]);
        assert_eq!(drain(&y), vec![awareness.clone()]);

        // A viewer's update is refused with sync status 0, and goes nowhere.
        room.receive(sh2, &client_update("no"), false).unwrap();
        assert_eq!(drain(&h2), vec![hp(&[8, 0])]);
        assert!(drain(&h).is_empty() && drain(&y).is_empty());

        // A side message goes to the other subscribers, each in its framing (a text frame
        // for y-websocket); echoed, to the sender too.
        let ping = "{\"type\":\"ping\"}";
        let stateless = hocuspocus::encode_stateless(&hocuspocus::address_prefix("d"), ping);
        let outcome = room.side_message(sh, ping, false);
        assert_eq!(outcome.deliveries, 2);
        assert_eq!(drain(&h2), vec![stateless.clone()]);
        let text = y.with_unwritten(|it| it.map(<[u8]>::to_vec).collect::<Vec<_>>());
        assert_eq!(text.len(), 1);
        assert_eq!(text[0][0], 0x81, "one final text frame");
        assert_eq!(drain(&y), vec![ping.as_bytes().to_vec()]);
        assert!(drain(&h).is_empty());
        let outcome = room.side_message(sh, ping, true);
        assert_eq!(outcome.deliveries, 3);
        assert_eq!(drain(&h), vec![stateless.clone()]);
        assert_eq!(drain(&h2), vec![stateless]);
        assert_eq!(drain(&y), vec![ping.as_bytes().to_vec()]);

        // A step 1 is answered in the asker's framing.
        room.receive(sh2, &protocol::encode_sync(SYNC_STEP1, &[0]), true)
            .unwrap();
        let answer = drain(&h2);
        assert_eq!(answer.len(), 1);
        assert_eq!(&answer[0][..4], &hp(&[0, SYNC_STEP2])[..]);
    }

    #[test]
    fn an_acknowledgement_is_not_sent_to_a_later_subscriber_in_the_same_slot() {
        let mut room = Room::new(RoomConfig::default());
        let h = Rc::new(Outbox::new(1 << 20));
        let hocuspocus = Framing::Hocuspocus { address: "d" };
        let slot = room.join_framed(h.clone(), hocuspocus, 0);
        room.stage(slot, &client_update("x"), true).unwrap();
        room.flush();
        room.leave(slot);
        let later = Rc::new(Outbox::new(1 << 20));
        assert_eq!(room.join_framed(later.clone(), hocuspocus, 0), slot);
        drain(&later);
        room.integrate_all();
        assert!(drain(&later).is_empty());
    }

    /// A room with subscribers `a` (whose slot is returned) and `b`, their joins drained.
    fn two_subscribers() -> (Room, Rc<Outbox>, Rc<Outbox>, Slot) {
        let mut room = Room::new(RoomConfig::default());
        let (a, b) = (Rc::new(Outbox::new(1 << 30)), Rc::new(Outbox::new(1 << 30)));
        let sa = room.join(a.clone());
        room.join(b.clone());
        drain(&a);
        drain(&b);
        (room, a, b, sa)
    }

    /// `n` consecutive insertions by one client, each its own update message.
    fn consecutive_updates(n: usize) -> Vec<Vec<u8>> {
        let doc = yrs::Doc::with_client_id(42);
        let t = doc.get_or_insert_text("t");
        (0..n)
            .map(|i| {
                let mut txn = doc.transact_mut();
                t.insert(&mut txn, i as u32, "x");
                protocol::encode_sync(SYNC_UPDATE, &txn.encode_update_v1())
            })
            .collect()
    }

    fn text(room: &Room) -> String {
        let t = room.doc().get_or_insert_text("t");
        t.get_string(&room.doc().transact())
    }

    #[test]
    fn updates_are_relayed_at_the_flush_and_integrated_after() {
        let (mut room, a, b, sa) = two_subscribers();
        let messages = consecutive_updates(5);
        for m in &messages {
            assert_eq!(room.stage(sa, m, true).unwrap().deliveries, 0);
        }
        assert!(drain(&b).is_empty(), "nothing relayed before the flush");
        assert_eq!(room.flush().deliveries, 5);
        assert_eq!(drain(&b), messages, "relayed byte for byte, in order");
        assert!(drain(&a).is_empty());
        assert_eq!(text(&room), "", "relayed before it is integrated");
        assert_eq!(room.pending_updates(), 5);
        assert!(room.request_integration());
        assert!(
            !room.request_integration(),
            "asked for once until it is done"
        );
        let done = room.integrate(3, None);
        assert_eq!((done.applied, done.more), (3, true));
        assert_eq!(text(&room), "xxx");
        let done = room.integrate(3, None);
        assert_eq!((done.applied, done.more), (2, false));
        assert_eq!(text(&room), "xxxxx");
        assert!(!room.request_integration(), "nothing pending");
        assert_eq!(room.flush().deliveries, 0, "a flush empties the relay");
    }

    #[test]
    fn any_other_message_flushes_the_relay_first_and_step1_integrates_what_is_pending() {
        let (mut room, a, b, sa) = two_subscribers();
        let messages = consecutive_updates(2);
        room.stage(sa, &messages[0], true).unwrap();
        // A state request right after an update must see it.
        let step1 = protocol::encode_sync(SYNC_STEP1, &[0]);
        let outcome = room.stage(sa, &step1, true).unwrap();
        assert_eq!((outcome.deliveries, outcome.integrated), (1, 1));
        assert_eq!(drain(&b), vec![messages[0].clone()]);
        let reply = drain(&a);
        assert_eq!(reply.len(), 1);
        assert_eq!(&reply[0][..2], &[protocol::MESSAGE_SYNC, SYNC_STEP2]);
        assert_eq!(text(&room), "x");
        assert_eq!(room.pending_updates(), 0);
    }

    #[test]
    fn a_full_relay_flushes_itself() {
        let (mut room, _a, b, sa) = two_subscribers();
        let messages = consecutive_updates(STAGED_UPDATES_MAX + 1);
        let staged: usize = messages
            .iter()
            .map(|m| room.stage(sa, m, true).unwrap().deliveries)
            .sum();
        assert_eq!(staged, STAGED_UPDATES_MAX, "the bound forced one flush");
        assert_eq!(drain(&b).len(), STAGED_UPDATES_MAX);
        assert_eq!(room.flush().deliveries, 1);
        assert_eq!(drain(&b).len(), 1);
        assert_eq!(room.pending_updates(), STAGED_UPDATES_MAX + 1);
        room.integrate_all();
        assert_eq!(text(&room).len(), STAGED_UPDATES_MAX + 1);
    }

    fn room_with(config: RoomConfig) -> (Room, Rc<Outbox>, Slot) {
        let mut room = Room::new(config);
        let b = Rc::new(Outbox::new(1 << 30));
        let sa = room.join(Rc::new(Outbox::new(1 << 30)));
        room.join(b.clone());
        drain(&b);
        (room, b, sa)
    }

    #[test]
    fn the_room_lags_at_its_pending_bounds_and_wakes_readers_when_it_catches_up() {
        let (mut room, _b, sa) = room_with(RoomConfig {
            pending_updates_max: 4,
            ..RoomConfig::default()
        });
        let woken = Arc::new(AtomicUsize::new(0));
        let waker = counting_waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let messages = consecutive_updates(4);
        for m in &messages[..3] {
            room.stage(sa, m, true).unwrap();
        }
        assert!(!room.lagging());
        assert_eq!(room.poll_caught_up(&mut cx), Poll::Ready(()));
        room.stage(sa, &messages[3], true).unwrap();
        room.flush();
        assert!(room.lagging(), "4 pending: at the bound");
        assert_eq!(room.poll_caught_up(&mut cx), Poll::Pending);
        assert_eq!(room.poll_caught_up(&mut cx), Poll::Pending);
        room.integrate(1, None);
        assert_eq!(
            woken.load(Ordering::Relaxed),
            1,
            "woken once, the waker kept once"
        );
        assert_eq!(room.poll_caught_up(&mut cx), Poll::Ready(()));

        // The byte bound likewise: one 2 KiB update against a 1 KiB bound.
        let (mut room, _b, sa) = room_with(RoomConfig {
            pending_bytes_max: 1 << 10,
            ..RoomConfig::default()
        });
        room.stage(sa, &client_update(&"z".repeat(2 << 10)), true)
            .unwrap();
        room.flush();
        assert!(room.lagging());
        room.integrate_all();
        assert!(!room.lagging());
    }

    fn counting_waker(count: Arc<AtomicUsize>) -> Waker {
        struct Count(Arc<AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        Waker::from(Arc::new(Count(count)))
    }

    #[test]
    fn step1_is_answered_with_the_missing_state() {
        let mut room = Room::new(RoomConfig::default());
        let a = Rc::new(Outbox::new(1 << 20));
        let sa = room.join(a.clone());
        room.receive(sa, &client_update("abc"), true).unwrap();
        drain(&a);
        let empty_sv = protocol::encode_sync(SYNC_STEP1, &[0]);
        room.receive(sa, &empty_sv, true).unwrap();
        let reply = drain(&a);
        assert_eq!(&reply[0][..2], &[protocol::MESSAGE_SYNC, SYNC_STEP2]);
        let Message::Update { update, .. } =
            protocol::decode(&reply[0], &UpdateLimits::default()).unwrap()
        else {
            panic!()
        };
        let doc = yrs::Doc::new();
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).unwrap())
            .unwrap();
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            "abc"
        );
    }

    #[test]
    fn awareness_is_relayed_replayed_to_joiners_and_removed_on_leave() {
        let (mut room, _a, b, sa) = two_subscribers();
        let msg = encode_awareness(
            [AwarenessEntry {
                client_id: 9,
                clock: 1,
                state: "{\"u\":1}",
            }]
            .into_iter(),
        );
        room.receive(sa, &msg, true).unwrap();
        assert_eq!(drain(&b), vec![msg.clone()]);

        let c = Rc::new(Outbox::new(1 << 20));
        room.join(c.clone());
        let joined = drain(&c);
        assert_eq!(joined.len(), 2, "step 1 and the awareness states");
        assert_eq!(joined[1], msg);

        room.leave(sa);
        let removal = encode_awareness(
            [AwarenessEntry {
                client_id: 9,
                clock: 2,
                state: "null",
            }]
            .into_iter(),
        );
        assert_eq!(drain(&b), vec![removal.clone()]);
        assert_eq!(drain(&c), vec![removal]);
    }

    #[test]
    fn bad_messages_are_refused_without_touching_the_document() {
        let mut room = Room::new(RoomConfig::default());
        let (a, b) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let sa = room.join(a.clone());
        room.join(b.clone());
        drain(&b);
        let mut truncated = client_update("hello");
        truncated.truncate(truncated.len() - 3);
        let refusal = room.receive(sa, &truncated, true).unwrap_err();
        assert_eq!(refusal.code(), 1007);
        assert_eq!(room.receive(sa, &[7], true).unwrap_err().code(), 1003);
        assert!(drain(&b).is_empty());
        assert_eq!(
            room.doc().transact().state_vector(),
            yrs::StateVector::default()
        );
    }

    #[test]
    fn the_fuzz_crashes_are_refused_unrelayed_and_the_room_goes_on() {
        // Updates on which yrs panics, each refused before yrs sees it and before any relay:
        // fuzz/artifacts crash-cd98b553, client 0 named twice (yrs panicked committing), and
        // fuzz/corpus/hocuspocus_message/clock-past-i32, a GC range at clock 2^31 + 2^28
        // (yrs indexed out of bounds integrating the next item).
        let crashes: [(&[u8], &str); 2] = [
            (
                &[
                    0, 2, 18, 4, 0, 48, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 46, 7, 0,
                ],
                "malformed update: a client appears twice",
            ),
            (
                &[
                    0, 1, 22, 2, 1, 0, 0xff, 0xff, 0xff, 0xff, 8, 0, 28, 2, 103, 3, 10, 2, 1, 0, 0,
                    28, 0xff, 0, 0,
                ],
                "update's clocks run past 2^31, which this server cannot apply",
            ),
        ];
        for (crash, reason) in crashes {
            let (mut room, _a, b, sa) = two_subscribers();
            let refusal = room.stage(sa, crash, true).unwrap_err();
            assert_eq!(refusal.close(), (1007, reason.into()));
            assert_eq!(room.flush().deliveries, 0);
            assert!(drain(&b).is_empty());
            let good = client_update("still fine");
            assert_eq!(room.receive(sa, &good, true).unwrap().deliveries, 1);
            assert_eq!(text(&room), "still fine");
        }
    }

    #[test]
    fn a_reset_empties_the_document_and_closes_every_subscriber() {
        let (mut room, a, b, sa) = two_subscribers();
        room.receive(sa, &client_update("before"), true).unwrap();
        room.stage(sa, &consecutive_updates(1)[0], true).unwrap();
        room.reset();
        assert_eq!(text(&room), "");
        assert_eq!(room.flush().deliveries, 0, "the batch went with it");
        for outbox in [&a, &b] {
            assert_eq!(outbox.close_code(), Some(Refusal::DocumentReset.code()));
        }
        // Subscribers leave as their sessions end; a reconnecting client starts afresh.
        room.leave(sa);
        let c = Rc::new(Outbox::new(1 << 20));
        let sc = room.join(c.clone());
        room.receive(sc, &client_update("after"), true).unwrap();
        assert_eq!(text(&room), "after");
    }

    #[test]
    fn viewers_get_permission_denied_and_their_updates_go_nowhere() {
        let mut room = Room::new(RoomConfig::default());
        let (viewer, other) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let sv = room.join(viewer.clone());
        room.join(other.clone());
        drain(&viewer);
        drain(&other);
        assert_eq!(
            room.receive(sv, &client_update("sneaky"), false)
                .unwrap()
                .deliveries,
            0
        );
        assert_eq!(
            drain(&viewer),
            vec![protocol::encode_permission_denied("read-only")]
        );
        assert!(drain(&other).is_empty());
        assert_eq!(
            room.doc().transact().state_vector(),
            yrs::StateVector::default()
        );
        // Awareness from a viewer is relayed.
        let aw = encode_awareness(
            [AwarenessEntry {
                client_id: 5,
                clock: 1,
                state: "{}",
            }]
            .into_iter(),
        );
        assert_eq!(room.receive(sv, &aw, false).unwrap().deliveries, 1);
    }

    #[test]
    fn a_step2_is_relayed_as_an_update_encoded_from_what_was_decoded() {
        let (mut room, _a, b, sa) = two_subscribers();
        let update = client_update("hi");
        let Message::Update { update: body, .. } = room.decode(&update).unwrap() else {
            panic!()
        };
        let step2 = protocol::encode_sync(SYNC_STEP2, body);
        room.receive(sa, &step2, true).unwrap();
        assert_eq!(drain(&b), vec![protocol::encode_sync(SYNC_UPDATE, body)]);
        // Written with a two-byte length, the same update is relayed minimally encoded.
        let mut long_length = vec![0, SYNC_UPDATE, 0x80 | body.len() as u8, 0x00];
        long_length.extend_from_slice(body);
        let (mut room, _a, b, sa) = two_subscribers();
        room.receive(sa, &long_length, true).unwrap();
        assert_eq!(drain(&b), vec![protocol::encode_sync(SYNC_UPDATE, body)]);
    }

    fn room_of_max_bytes(document_bytes_max: usize) -> (Room, Rc<Outbox>, Slot) {
        room_with(RoomConfig {
            document_bytes_max,
            ..RoomConfig::default()
        })
    }

    #[test]
    fn an_update_past_the_document_bound_is_refused_and_the_document_is_unharmed() {
        let (mut room, _b, sa) = room_of_max_bytes(4 << 10);
        room.receive(sa, &client_update(&"a".repeat(3 << 10)), true)
            .unwrap();
        let refusal = room
            .receive(sa, &client_update(&"b".repeat(2 << 10)), true)
            .unwrap_err();
        assert_eq!(refusal, Refusal::DocumentTooLarge);
        assert_eq!(refusal.code(), 1009);
        assert_eq!(text(&room), "a".repeat(3 << 10));
        // A refused update is not staged: what comes next still fits or is refused alone.
        assert_eq!(room.flush().deliveries, 0);
    }

    #[test]
    fn many_small_updates_are_measured_not_summed_when_they_near_the_bound() {
        // 8,000 one-character insertions by one client: over 12 bytes each as updates
        // (over 96 KB), about 8 KB once yrs has merged them. The bound is 16 KiB.
        let (mut room, b, sa) = room_of_max_bytes(16 << 10);
        let updates = consecutive_updates(8_000);
        assert!(updates.iter().map(Vec::len).sum::<usize>() > 3 * (16 << 10));
        for (i, u) in updates.iter().enumerate() {
            room.stage(sa, u, true)
                .unwrap_or_else(|r| panic!("update {i}: {r:?}"));
        }
        room.flush();
        room.integrate_all();
        assert_eq!(text(&room).len(), 8_000);
        assert_eq!(drain(&b).len(), 8_000);
        assert!(room.document_bytes <= 16 << 10, "{}", room.document_bytes);
    }

    /// The addresses of the frames queued on `o`, to tell a shared frame from a copy.
    fn queued_frames(o: &Outbox) -> Vec<*const u8> {
        let frames = o.with_unwritten(|it| it.map(<[u8]>::as_ptr).collect());
        drain(o);
        frames
    }

    #[test]
    fn the_whole_state_and_all_awareness_are_encoded_once_per_change() {
        let (mut room, a, _b, sa) = two_subscribers();
        room.receive(sa, &client_update("abc"), true).unwrap();
        let awareness = encode_awareness(
            [AwarenessEntry {
                client_id: 9,
                clock: 1,
                state: "{}",
            }]
            .into_iter(),
        );
        room.receive(sa, &awareness, true).unwrap();
        let step1 = protocol::encode_sync(SYNC_STEP1, &[0]);
        for message in [&step1[..], &[protocol::MESSAGE_QUERY_AWARENESS]] {
            room.receive(sa, message, true).unwrap();
            let first = queued_frames(&a);
            room.receive(sa, message, true).unwrap();
            assert_eq!(queued_frames(&a), first, "the same frame, shared");
        }
        room.receive(sa, &client_update("d"), true).unwrap();
        let before = queued_frames(&a);
        room.receive(sa, &step1, true).unwrap();
        assert_ne!(queued_frames(&a), before);
    }

    #[test]
    fn slots_are_reused() {
        let mut room = Room::new(RoomConfig::default());
        let a = room.join(Rc::new(Outbox::new(1 << 20)));
        let b = room.join(Rc::new(Outbox::new(1 << 20)));
        room.leave(a);
        let c = room.join(Rc::new(Outbox::new(1 << 20)));
        assert_eq!(c, a);
        assert_eq!(room.subscriber_count(), 2);
        room.leave(b);
        room.leave(c);
        assert_eq!(room.subscriber_count(), 0);
    }

    /// Two updates that each decode and pass every check, but whose second names an item of
    /// the first as its parent when that item is no type: yrs refuses it only while
    /// integrating (after it was relayed). Both come from client 7 (a client reusing an id).
    fn invalid_parent_updates() -> (Vec<u8>, Vec<u8>) {
        let values = yrs::Doc::with_client_id(7);
        let array = values.get_or_insert_array("a");
        array.push_back(&mut values.transact_mut(), "not a type");
        let first = values
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let nested = yrs::Doc::with_client_id(7);
        let map = nested.get_or_insert_map("m");
        let inner = map.insert(&mut nested.transact_mut(), "k", yrs::MapPrelim::default());
        let before = nested.transact().state_vector();
        inner.insert(&mut nested.transact_mut(), "x", 1);
        let second = nested.transact().encode_state_as_update_v1(&before);
        (
            protocol::encode_sync(SYNC_UPDATE, &first),
            protocol::encode_sync(SYNC_UPDATE, &second),
        )
    }

    #[test]
    fn an_update_refused_at_integration_closes_its_sender_and_the_rest_integrate() {
        let (mut room, a, b, sa) = two_subscribers();
        let (first, second) = invalid_parent_updates();
        room.stage(sa, &first, true).unwrap();
        room.stage(sa, &second, true).unwrap();
        let after = client_update("after");
        room.stage(sa, &after, true).unwrap();
        assert_eq!(room.flush().deliveries, 3);
        assert_eq!(drain(&b), vec![first, second, after], "relayed first");
        let done = room.integrate_all();
        assert_eq!((done.applied, done.refused), (2, 1));
        assert_eq!(a.close_code(), Some(Refusal::Integrate.code()));
        assert_eq!(b.close_code(), None, "the others go on");
        assert_eq!(text(&room), "after");
    }
}
