//! One simulated client (y-websocket, or a Hocuspocus provider with one document on its
//! socket): its own Yjs document, the updates it sent (with send
//! times), and every update it received. By default received updates are kept as bytes and
//! applied only after the run, so the generator spends its CPU on the sockets while
//! measuring; with `apply_live` each is applied as it arrives, as an editor does, so that an
//! edit's position (`Insert::Start`, `Insert::Random`) is relative to everything received.

use std::cell::{Cell, RefCell};
use std::time::Instant;
use wiresocket::sync::hocuspocus;
use wiresocket::sync::lib0::{self, Reader};
use wiresocket::sync::protocol::{encode_sync, MESSAGE_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, ArrayRef, Doc, ReadTxn, StateVector, Transact, Update};

/// The shared type every peer edits: one array, one item per update, so an update's clock
/// is its sequence number.
const ARRAY: &str = "load";

/// Where a peer's edit goes in the shared array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    End,
    Start,
    /// Anywhere from the start to the end, drawn from a per-peer seed (runs repeat).
    Random,
}

impl Insert {
    pub fn parse(name: &str) -> Result<Insert, String> {
        match name {
            "end" => Ok(Insert::End),
            "start" => Ok(Insert::Start),
            "random" => Ok(Insert::Random),
            _ => Err(format!("--insert: {name:?} is not end, start or random")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Insert::End => "end",
            Insert::Start => "start",
            Insert::Random => "random",
        }
    }
}

/// How a peer edits and what it does with what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Editing {
    pub insert: Insert,
    /// Apply every received update to the peer's document as it arrives.
    pub apply_live: bool,
}

impl Default for Editing {
    fn default() -> Editing {
        Editing {
            insert: Insert::End,
            apply_live: false,
        }
    }
}

/// How clients frame their messages (`--framing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    YWebsocket,
    /// `@hocuspocus/provider`'s: each client a socket on `/` with its one document.
    Hocuspocus,
}

impl Framing {
    pub fn parse(name: &str) -> Result<Framing, String> {
        match name {
            "y-websocket" => Ok(Framing::YWebsocket),
            "hocuspocus" => Ok(Framing::Hocuspocus),
            _ => Err(format!(
                "--framing: {name:?} is not y-websocket or hocuspocus"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Framing::YWebsocket => "y-websocket",
            Framing::Hocuspocus => "hocuspocus",
        }
    }
}

/// How a peer frames its messages.
enum Wire {
    YWebsocket,
    /// Every message behind `varString(document)`; the token goes in an auth message.
    Hocuspocus {
        prefix: Vec<u8>,
        token: String,
    },
}

pub struct Peer {
    pub client_id: u64,
    editing: Editing,
    wire: Wire,
    doc: Doc,
    array: ArrayRef,
    /// Send instant of each update, indexed by its clock.
    sent_at: RefCell<Vec<Instant>>,
    /// Received updates, each prefixed with its lib0 length (unless applied live).
    received: RefCell<Vec<u8>>,
    /// Updates received from other peers.
    deliveries: Cell<u64>,
    /// xorshift64 state for `Insert::Random`, seeded from the client id.
    random: Cell<u64>,
    pub synced: Cell<bool>,
}

/// What a server message meant to this peer.
pub enum Incoming {
    /// An update another peer made: its author and clock (of its first struct).
    Delivery { author: u64, clock: u64 },
    /// Our own update echoed back (the Node reference server does this).
    Echo,
    /// The server's sync step 1: send this reply.
    Reply(Vec<u8>),
    /// Sync step 2, awareness and anything else that is not a delivery.
    Other,
}

impl Peer {
    pub fn new(client_id: u64, editing: Editing) -> Peer {
        let doc = Doc::with_client_id(client_id);
        let array = doc.get_or_insert_array(ARRAY);
        Peer {
            client_id,
            editing,
            wire: Wire::YWebsocket,
            doc,
            array,
            sent_at: RefCell::new(Vec::new()),
            received: RefCell::new(Vec::new()),
            deliveries: Cell::new(0),
            // Never 0 (xorshift's fixed point); distinct per client.
            random: Cell::new(client_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            synced: Cell::new(false),
        }
    }

    /// Speaks the Hocuspocus framing for `document`, authenticated with `token`.
    pub fn with_hocuspocus(mut self, document: &str, token: &str) -> Peer {
        self.wire = Wire::Hocuspocus {
            prefix: hocuspocus::address_prefix(document),
            token: token.to_owned(),
        };
        self
    }

    /// What the peer sends once its socket is open: sync step 1 with its state vector (a
    /// Hocuspocus provider sends its token first, without waiting for an answer).
    pub fn hello(&self) -> Vec<Vec<u8>> {
        let sv = self.doc.transact().state_vector().encode_v1();
        let step1 = self.framed(encode_sync(SYNC_STEP1, &sv));
        match &self.wire {
            Wire::YWebsocket => vec![step1],
            Wire::Hocuspocus { prefix, token } => {
                let mut auth = prefix.clone();
                auth.extend_from_slice(&[hocuspocus::TYPE_AUTH as u8, 0]);
                lib0::write_var_bytes(&mut auth, token.as_bytes());
                vec![auth, step1]
            }
        }
    }

    /// A y-websocket message as this peer sends it.
    fn framed(&self, message: Vec<u8>) -> Vec<u8> {
        match &self.wire {
            Wire::YWebsocket => message,
            Wire::Hocuspocus { prefix, .. } => [&prefix[..], &message].concat(),
        }
    }

    /// A new edit of `payload_bytes` characters, as an update message; its send time is
    /// recorded now.
    pub fn next_update(&self, payload_bytes: usize) -> Vec<u8> {
        let mut sent_at = self.sent_at.borrow_mut();
        let seq = sent_at.len();
        let mut item = format!("{}:{}:", self.client_id, seq);
        item.extend(std::iter::repeat_n(
            'x',
            payload_bytes.saturating_sub(item.len()),
        ));
        let mut txn = self.doc.transact_mut();
        let len = self.array.len(&txn);
        let index = match self.editing.insert {
            Insert::End => len,
            Insert::Start => 0,
            Insert::Random => (self.next_random() % (u64::from(len) + 1)) as u32,
        };
        self.array.insert(&mut txn, index, item);
        let update = txn.encode_update_v1();
        drop(txn);
        sent_at.push(Instant::now());
        self.framed(encode_sync(SYNC_UPDATE, &update))
    }

    fn next_random(&self) -> u64 {
        let mut x = self.random.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.set(x);
        x
    }

    pub fn updates_sent(&self) -> u64 {
        self.sent_at.borrow().len() as u64
    }

    pub fn sent_at(&self, clock: u64) -> Option<Instant> {
        self.sent_at.borrow().get(clock as usize).copied()
    }

    pub fn on_message(&self, payload: &[u8]) -> Result<Incoming, String> {
        let payload = match &self.wire {
            Wire::YWebsocket => payload,
            Wire::Hocuspocus { prefix, .. } => {
                if payload == hocuspocus::PING {
                    return Ok(Incoming::Reply(hocuspocus::PONG.to_vec()));
                }
                let message = payload
                    .strip_prefix(&prefix[..])
                    .ok_or("a Hocuspocus message for another document")?;
                match message {
                    // Refused: the run cannot measure this client.
                    [2, 1, ..] => return Err("the server refused the document".into()),
                    [8, 0] => return Err("the server refused an update (sync status 0)".into()),
                    // Sync and awareness are y-websocket messages; the rest (authenticated,
                    // sync status 1) says nothing about deliveries.
                    [0 | 1, ..] => message,
                    _ => return Ok(Incoming::Other),
                }
            }
        };
        let mut r = Reader::new(payload);
        let bad = |e| format!("undecodable server message: {e:?}");
        if r.u8().map_err(bad)? != MESSAGE_SYNC {
            return Ok(Incoming::Other);
        }
        let step = r.u8().map_err(bad)?;
        let body = r.var_bytes().map_err(bad)?;
        match step {
            SYNC_STEP1 => {
                let sv = StateVector::decode_v1(body).map_err(|e| format!("state vector: {e}"))?;
                let diff = self.doc.transact().encode_diff_v1(&sv);
                Ok(Incoming::Reply(self.framed(encode_sync(SYNC_STEP2, &diff))))
            }
            SYNC_STEP2 => {
                self.keep(body)?;
                self.synced.set(true);
                Ok(Incoming::Other)
            }
            SYNC_UPDATE => {
                let (author, clock) = first_struct(body).map_err(bad)?;
                if author == self.client_id {
                    return Ok(Incoming::Echo);
                }
                self.keep(body)?;
                self.deliveries.set(self.deliveries.get() + 1);
                Ok(Incoming::Delivery { author, clock })
            }
            _ => Ok(Incoming::Other),
        }
    }

    /// Updates received from other peers so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.get()
    }

    fn keep(&self, update: &[u8]) -> Result<(), String> {
        if self.editing.apply_live {
            return apply(&mut self.doc.transact_mut(), update);
        }
        lib0::write_var_bytes(&mut self.received.borrow_mut(), update);
        Ok(())
    }

    /// After the run: this peer's view of the document (its own edits plus everything it
    /// received), as the array's items. An update that could not be integrated (one it
    /// depends on never came) is not among them.
    pub fn converged_items(&self) -> Result<Vec<String>, String> {
        if self.editing.apply_live {
            let txn = self.doc.transact();
            return Ok(self
                .array
                .iter(&txn)
                .map(|item| item.to_string(&txn))
                .collect());
        }
        let view = Doc::with_client_id(u64::MAX >> 12);
        let array = view.get_or_insert_array(ARRAY);
        let mut txn = view.transact_mut();
        let own = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        apply(&mut txn, &own)?;
        let received = std::mem::take(&mut *self.received.borrow_mut());
        let mut r = Reader::new(&received);
        while r.remaining() > 0 {
            apply(&mut txn, r.var_bytes().map_err(|e| format!("{e:?}"))?)?;
        }
        Ok(array.iter(&txn).map(|item| item.to_string(&txn)).collect())
    }
}

fn apply(txn: &mut yrs::TransactionMut, update: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(update).map_err(|e| format!("received update: {e}"))?;
    txn.apply_update(update)
        .map_err(|e| format!("received update: {e}"))
}

/// The author and clock of an update's first struct (v1: client count, then per client the
/// struct count, client id and first clock).
fn first_struct(update: &[u8]) -> Result<(u64, u64), lib0::DecodeError> {
    let mut r = Reader::new(update);
    let _clients = r.var_u64()?;
    let _structs = r.var_u64()?;
    Ok((r.var_u64()?, r.var_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_name_their_author_and_clock_and_views_converge() {
        let (a, b) = (
            Peer::new(1, Editing::default()),
            Peer::new(2, Editing::default()),
        );
        for _ in 0..3 {
            let msg = a.next_update(16);
            match b.on_message(&msg).unwrap() {
                Incoming::Delivery { author, clock } => {
                    assert_eq!(author, 1);
                    assert!(a.sent_at(clock).is_some());
                }
                _ => panic!("an update from another peer is a delivery"),
            }
            assert!(matches!(a.on_message(&msg).unwrap(), Incoming::Echo));
        }
        let msg = b.next_update(16);
        assert!(matches!(
            a.on_message(&msg).unwrap(),
            Incoming::Delivery {
                author: 2,
                clock: 0
            }
        ));
        let (va, vb) = (a.converged_items().unwrap(), b.converged_items().unwrap());
        assert_eq!(va.len(), 4);
        assert_eq!(va, vb);
        assert!(va[0].starts_with("1:0:") && va[0].len() == 16);
    }

    #[test]
    fn a_missing_update_shows_in_the_view() {
        for apply_live in [false, true] {
            let editing = Editing {
                apply_live,
                ..Editing::default()
            };
            let (a, b) = (Peer::new(1, editing), Peer::new(2, editing));
            let _lost = a.next_update(8);
            let kept = a.next_update(8);
            b.on_message(&kept).unwrap();
            // The second update depends on the first: b cannot integrate it.
            assert_eq!(b.converged_items().unwrap().len(), 0, "live {apply_live}");
            assert_eq!(a.converged_items().unwrap().len(), 2);
            assert_eq!(b.deliveries(), 1);
        }
    }

    #[test]
    fn live_peers_insert_at_the_start_of_what_they_received() {
        let editing = Editing {
            insert: Insert::Start,
            apply_live: true,
        };
        let (a, b) = (Peer::new(1, editing), Peer::new(2, editing));
        for _ in 0..2 {
            b.on_message(&a.next_update(8)).unwrap();
        }
        // b's edit goes before a's two, which b has applied.
        a.on_message(&b.next_update(8)).unwrap();
        let (va, vb) = (a.converged_items().unwrap(), b.converged_items().unwrap());
        let authors: Vec<&str> = va.iter().map(|item| &item[..4]).collect();
        assert_eq!(authors, ["2:0:", "1:1:", "1:0:"]);
        assert_eq!(va, vb);
        assert_eq!((a.deliveries(), b.deliveries()), (1, 2));
    }

    #[test]
    fn random_inserts_repeat_for_a_client_and_land_inside_the_array() {
        let editing = Editing {
            insert: Insert::Random,
            apply_live: false,
        };
        let view = |client_id| {
            let peer = Peer::new(client_id, editing);
            for _ in 0..20 {
                peer.next_update(8);
            }
            peer.converged_items().unwrap()
        };
        let items = view(7);
        assert_eq!(items, view(7));
        assert_eq!(items.len(), 20);
        let seqs: Vec<usize> = items
            .iter()
            .map(|item| item.split(':').nth(1).unwrap().parse().unwrap())
            .collect();
        // Neither appended (0, 1, 2, ...) nor prepended (19, 18, ...).
        assert!(seqs.windows(2).any(|w| w[0] < w[1]), "{seqs:?}");
        assert!(seqs.windows(2).any(|w| w[0] > w[1]), "{seqs:?}");
    }

    #[test]
    fn step1_is_answered_with_what_the_server_lacks() {
        let a = Peer::new(1, Editing::default());
        a.next_update(8);
        let server_step1 = encode_sync(SYNC_STEP1, &StateVector::default().encode_v1());
        let Incoming::Reply(reply) = a.on_message(&server_step1).unwrap() else {
            panic!("step 1 needs a reply");
        };
        let other = Peer::new(2, Editing::default());
        other.on_message(&reply).unwrap();
        assert!(other.synced.get());
        assert_eq!(other.converged_items().unwrap().len(), 1);
    }
}
