//! `Room`: one live document — its Yjs state, its awareness and its subscribers — and the
//! y-websocket protocol between them. Runtime-free: subscribers are outboxes.

use super::awareness::AwarenessStates;
use super::protocol::{self, Message, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};
use super::update_check::UpdateLimits;
use crate::outbox::{shared_frame, Frame, Outbox};
use crate::refusal::Refusal;
use crate::ws::frame::Opcode;
use std::rc::Rc;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

/// Updates staged before a flush is forced (see [`Room::stage`]).
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
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            update_limits: UpdateLimits::default(),
            awareness_clients_max: 4096,
            awareness_clients_per_connection_max: 8,
            awareness_state_bytes_max: 64 << 10,
            document_bytes_max: 64 << 20,
        }
    }
}

/// A subscriber's place in the room, returned by [`Room::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

#[derive(Debug)]
struct Subscriber {
    outbox: Rc<Outbox>,
    /// Awareness client ids this connection introduced; removed when it leaves.
    awareness_ids: Vec<u64>,
}

/// What handling one message did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames queued on other subscribers.
    pub deliveries: usize,
}

/// One subscriber's updates, decoded, with the frames that relay them (`frames[i]` relays
/// `updates[i]`).
struct Batch {
    from: Slot,
    updates: Vec<yrs::Update>,
    frames: Vec<Frame>,
    /// The updates' encoded bytes, for the document's size bound.
    update_bytes: usize,
}

pub struct Room {
    doc: yrs::Doc,
    /// Updates received but not yet applied: [`Room::flush`] applies them in one
    /// transaction. A yrs transaction costs more than the update in it (commit, cleanup), so
    /// a client that is behind — whose one read holds many updates — is caught up in one
    /// transaction instead of many.
    staged: Option<Batch>,
    /// The document's size as an update, estimated: the last measurement plus the bytes of
    /// every update applied since. Usually more than the real size, as Yjs merges; deletions
    /// that split many items can make it less, until the next measurement. (Memory itself is
    /// bounded by the node's budget, past which no changes are taken.)
    document_bytes: usize,
    /// Update bytes applied since the document was last measured.
    unmeasured_bytes: usize,
    /// Sync step 2 with the whole document, for clients that have nothing yet: encoded once
    /// per change and shared, not once per request.
    full_state: Option<Frame>,
    awareness: AwarenessStates,
    /// Every live awareness state in one message, likewise encoded once per change.
    awareness_all: Option<Frame>,
    /// A slab: leaving frees a slot, joining reuses one.
    subscribers: Vec<Option<Subscriber>>,
    free_slots: Vec<usize>,
    len: usize,
    config: RoomConfig,
}

impl Room {
    pub fn new(config: RoomConfig) -> Self {
        Room {
            doc: yrs::Doc::new(),
            staged: None,
            document_bytes: 0,
            unmeasured_bytes: 0,
            full_state: None,
            awareness: new_awareness(&config),
            awareness_all: None,
            subscribers: Vec::new(),
            free_slots: Vec::new(),
            len: 0,
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

    pub fn doc(&self) -> &yrs::Doc {
        &self.doc
    }

    /// Adds a subscriber and queues what a new client gets first: the server's state vector
    /// (sync step 1) and the current awareness states.
    pub fn join(&mut self, outbox: Rc<Outbox>) -> Slot {
        assert!(
            self.staged.is_none(),
            "a batch is flushed before anyone joins"
        );
        let sv = self.doc.transact().state_vector().encode_v1();
        outbox.push(&sync_frame(SYNC_STEP1, &sv));
        if let Some(frame) = self.awareness_all() {
            outbox.push(&frame);
        }
        let subscriber = Subscriber {
            outbox,
            awareness_ids: Vec::new(),
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
    /// is broadcast to the others.
    pub fn leave(&mut self, slot: Slot) {
        assert!(
            self.staged.is_none(),
            "a batch is flushed before anyone leaves"
        );
        let subscriber = self.subscribers[slot.0].take().expect("a slot leaves once");
        self.free_slots.push(slot.0);
        self.len -= 1;
        let removed = self.awareness.remove(&subscriber.awareness_ids);
        if !removed.is_empty() {
            self.awareness_all = None;
            let entries = removed
                .iter()
                .map(|&(client_id, clock)| protocol::AwarenessEntry {
                    client_id,
                    clock,
                    state: "null",
                });
            let frame = binary(&protocol::encode_awareness(
                entries.collect::<Vec<_>>().into_iter(),
            ));
            self.broadcast(None, &frame);
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
        self.staged = None;
        self.document_bytes = 0;
        self.unmeasured_bytes = 0;
        self.full_state = None;
        self.awareness = new_awareness(&self.config);
        self.awareness_all = None;
        let (code, reason) = Refusal::DocumentReset.close();
        for subscriber in self.subscribers.iter_mut().flatten() {
            subscriber.awareness_ids.clear();
            subscriber.outbox.close(code, &reason);
        }
    }

    /// Handles one binary message from the subscriber in `from` at once (updates are
    /// applied and relayed before it returns).
    pub fn receive(
        &mut self,
        from: Slot,
        payload: &[u8],
        can_write: bool,
    ) -> Result<Outcome, Refusal> {
        let staged = self.stage(from, payload, can_write)?;
        let flushed = self.flush()?;
        Ok(Outcome {
            deliveries: staged.deliveries + flushed.deliveries,
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
    /// decoded now but applied and relayed by the next [`Room::flush`], which must come
    /// before another subscriber's message, a join or a leave. Any other message flushes
    /// first, so everything leaves in the order it came.
    /// `can_write` is false for read-only (viewer) connections: their updates are answered
    /// with an auth message (permission denied, `read-only`) and neither applied nor relayed.
    pub fn stage_message(
        &mut self,
        from: Slot,
        message: Message<'_>,
        can_write: bool,
    ) -> Result<Outcome, Refusal> {
        assert!(
            self.staged.as_ref().is_none_or(|batch| batch.from == from),
            "a batch holds one subscriber's updates"
        );
        let flushed = match message {
            Message::Update { .. } => Outcome::default(),
            _ => self.flush()?,
        };
        let handled = match message {
            Message::SyncStep1(sv) => {
                let answer = if sv.is_empty() {
                    self.full_state()
                } else {
                    let diff = self
                        .doc
                        .transact()
                        .encode_state_as_update_v1(&sv.to_state_vector());
                    sync_frame(SYNC_STEP2, &diff)
                };
                self.sender(from).outbox.push(&answer);
                Outcome::default()
            }
            Message::Update { update, stats, .. } => {
                if stats.is_empty() {
                    return Ok(Outcome::default());
                }
                if !can_write {
                    let denied = binary(&protocol::encode_permission_denied("read-only"));
                    self.sender(from).outbox.push(&denied);
                    return Ok(Outcome::default());
                }
                let measured = self.make_room_for(update.len())?;
                let decoded = yrs::Update::decode_v1(update).map_err(|_| Refusal::Integrate)?;
                // Relayed as an update message encoded here from the decoded update (a step 2
                // and an update relay alike): every other client reads what the server applied.
                let (head, head_len) = protocol::sync_head(SYNC_UPDATE, update.len());
                let frame = binary_parts(&[&head[..head_len], update]);
                let batch = self.staged.get_or_insert_with(|| Batch {
                    from,
                    updates: Vec::new(),
                    frames: Vec::new(),
                    update_bytes: 0,
                });
                batch.updates.push(decoded);
                batch.frames.push(frame);
                batch.update_bytes += update.len();
                // A decoded update takes more memory than its bytes: a batch is bounded.
                let flushed = if batch.updates.len() >= STAGED_UPDATES_MAX {
                    self.flush()?
                } else {
                    Outcome::default()
                };
                Outcome {
                    deliveries: measured.deliveries + flushed.deliveries,
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
                self.awareness_all = None;
                if applied.map_err(Refusal::Awareness)? {
                    let (head, head_len) = protocol::awareness_head(entries.bytes.len());
                    self.broadcast(
                        Some(from),
                        &binary_parts(&[&head[..head_len], entries.bytes]),
                    )
                } else {
                    Outcome::default()
                }
            }
            Message::QueryAwareness => {
                if let Some(frame) = self.awareness_all() {
                    self.sender(from).outbox.push(&frame);
                }
                Outcome::default()
            }
        };
        Ok(Outcome {
            deliveries: flushed.deliveries + handled.deliveries,
        })
    }

    /// Applies the staged updates in one transaction, then relays each to every other
    /// subscriber in the order they came. An update yrs refuses ends the batch: those before
    /// it are applied and relayed, it and the rest are dropped, and its sender is refused.
    pub fn flush(&mut self) -> Result<Outcome, Refusal> {
        // Taken, not kept: an idle room holds no batch capacity.
        let Some(Batch {
            from,
            updates,
            frames,
            update_bytes,
        }) = self.staged.take()
        else {
            return Ok(Outcome::default());
        };
        let mut applied = 0;
        {
            let mut txn = self.doc.transact_mut();
            for update in updates {
                if txn.apply_update(update).is_err() {
                    break;
                }
                applied += 1;
            }
        }
        if applied > 0 {
            self.full_state = None;
            // All the batch's bytes, even if yrs refused some: the estimate errs high.
            self.document_bytes += update_bytes;
            self.unmeasured_bytes += update_bytes;
        }
        let deliveries = frames[..applied]
            .iter()
            .map(|frame| self.broadcast(Some(from), frame).deliveries)
            .sum();
        if applied < frames.len() {
            // (The deliveries of the updates before it are queued but not counted.)
            return Err(Refusal::Integrate);
        }
        Ok(Outcome { deliveries })
    }

    /// Checks that an update of `update_bytes` keeps the document within its bound, measuring
    /// it when the estimate says no and enough has arrived since the last measurement (which
    /// flushes the batch first).
    fn make_room_for(&mut self, update_bytes: usize) -> Result<Outcome, Refusal> {
        let max = self.config.document_bytes_max;
        let staged = self.staged.as_ref().map_or(0, |b| b.update_bytes);
        if self.document_bytes + staged + update_bytes <= max {
            return Ok(Outcome::default());
        }
        if self.unmeasured_bytes + staged < max / REMEASURE_DIVISOR {
            return Err(Refusal::DocumentTooLarge);
        }
        let flushed = self.flush()?;
        self.full_state();
        if self.document_bytes + update_bytes > max {
            return Err(Refusal::DocumentTooLarge);
        }
        Ok(flushed)
    }

    /// Sync step 2 with the whole document, encoded once per change; encoding it measures
    /// the document.
    fn full_state(&mut self) -> Frame {
        assert!(self.staged.is_none(), "measured after the batch is applied");
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
            self.awareness_all = Some(binary(&protocol::encode_awareness(self.awareness.live())));
        }
        self.awareness_all.clone()
    }

    /// Queues `frame` on every subscriber but `except`.
    fn broadcast(&self, except: Option<Slot>, frame: &Frame) -> Outcome {
        let mut deliveries = 0;
        for (i, s) in self.subscribers.iter().enumerate() {
            if let Some(s) = s {
                if Some(Slot(i)) != except && s.outbox.push(frame) {
                    deliveries += 1;
                }
            }
        }
        Outcome { deliveries }
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

fn binary(payload: &[u8]) -> Frame {
    shared_frame(Opcode::Binary, &[payload])
}

fn binary_parts(parts: &[&[u8]]) -> Frame {
    shared_frame(Opcode::Binary, parts)
}

fn sync_frame(step: u8, body: &[u8]) -> Frame {
    binary(&protocol::encode_sync(step, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::protocol::{encode_awareness, AwarenessEntry};
    use std::task::{Context, Waker};
    use yrs::{GetString, Text};

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
        let doc = yrs::Doc::with_client_id(42);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, text);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        protocol::encode_sync(SYNC_UPDATE, &update)
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
    fn staged_updates_are_applied_and_relayed_in_order_at_the_flush() {
        let (mut room, a, b, sa) = two_subscribers();
        let messages = consecutive_updates(5);
        for m in &messages {
            assert_eq!(room.stage(sa, m, true).unwrap().deliveries, 0);
        }
        assert!(drain(&b).is_empty(), "nothing relayed before the flush");
        assert_eq!(text(&room), "");
        assert_eq!(room.flush().unwrap().deliveries, 5);
        assert_eq!(drain(&b), messages, "relayed byte for byte, in order");
        assert!(drain(&a).is_empty());
        assert_eq!(text(&room), "xxxxx");
        assert_eq!(
            room.flush().unwrap().deliveries,
            0,
            "a flush empties the batch"
        );
    }

    #[test]
    fn any_other_message_flushes_the_batch_first() {
        let (mut room, a, b, sa) = two_subscribers();
        let messages = consecutive_updates(2);
        room.stage(sa, &messages[0], true).unwrap();
        // A state request right after an update must see it.
        let step1 = protocol::encode_sync(SYNC_STEP1, &[0]);
        assert_eq!(room.stage(sa, &step1, true).unwrap().deliveries, 1);
        assert_eq!(drain(&b), vec![messages[0].clone()]);
        let reply = drain(&a);
        assert_eq!(&reply[0][..2], &[protocol::MESSAGE_SYNC, SYNC_STEP2]);
        assert_eq!(text(&room), "x");
    }

    #[test]
    fn a_full_batch_flushes_itself() {
        let (mut room, _a, b, sa) = two_subscribers();
        let messages = consecutive_updates(STAGED_UPDATES_MAX + 1);
        let staged: usize = messages
            .iter()
            .map(|m| room.stage(sa, m, true).unwrap().deliveries)
            .sum();
        assert_eq!(staged, STAGED_UPDATES_MAX, "the bound forced one flush");
        assert_eq!(text(&room).len(), STAGED_UPDATES_MAX);
        assert_eq!(room.flush().unwrap().deliveries, 1);
        assert_eq!(drain(&b).len(), STAGED_UPDATES_MAX + 1);
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
    fn the_fuzz_crash_is_refused_and_the_room_goes_on() {
        // fuzz/artifacts crash-cd98b553: one update naming client 0 twice, which made yrs
        // panic while committing; it is refused before yrs sees it.
        let (mut room, _a, b, sa) = two_subscribers();
        let crash = [
            0, 2, 18, 4, 0, 48, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 46, 7, 0,
        ];
        let refusal = room.stage(sa, &crash, true).unwrap_err();
        assert_eq!(refusal.code(), 1007);
        assert_eq!(room.flush().unwrap().deliveries, 0);
        assert!(drain(&b).is_empty());
        let good = client_update("still fine");
        assert_eq!(room.receive(sa, &good, true).unwrap().deliveries, 1);
        assert_eq!(text(&room), "still fine");
    }

    #[test]
    fn a_reset_empties_the_document_and_closes_every_subscriber() {
        let (mut room, a, b, sa) = two_subscribers();
        room.receive(sa, &client_update("before"), true).unwrap();
        room.stage(sa, &consecutive_updates(1)[0], true).unwrap();
        room.reset();
        assert_eq!(text(&room), "");
        assert_eq!(
            room.flush().unwrap().deliveries,
            0,
            "the batch went with it"
        );
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
        let mut room = Room::new(RoomConfig {
            document_bytes_max,
            ..RoomConfig::default()
        });
        let b = Rc::new(Outbox::new(1 << 30));
        let sa = room.join(Rc::new(Outbox::new(1 << 30)));
        room.join(b.clone());
        drain(&b);
        (room, b, sa)
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
        assert_eq!(room.flush().unwrap().deliveries, 0);
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
        room.flush().unwrap();
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
}
