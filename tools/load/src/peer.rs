//! One simulated y-websocket client: its own Yjs document, the updates it sent (with send
//! times), and every update it received, kept as bytes and applied only after the run so
//! the generator spends its CPU on the sockets while measuring.

use std::cell::{Cell, RefCell};
use std::time::Instant;
use wiresocket::sync::lib0::{self, Reader};
use wiresocket::sync::protocol::{encode_sync, MESSAGE_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, ArrayRef, Doc, ReadTxn, StateVector, Transact, Update};

/// The shared type every peer edits: one array, one item per update, so an update's clock
/// is its sequence number.
const ARRAY: &str = "load";

pub struct Peer {
    pub client_id: u64,
    doc: Doc,
    array: ArrayRef,
    /// Send instant of each update, indexed by its clock.
    sent_at: RefCell<Vec<Instant>>,
    /// Received updates, each prefixed with its lib0 length.
    received: RefCell<Vec<u8>>,
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
    pub fn new(client_id: u64) -> Peer {
        let doc = Doc::with_client_id(client_id);
        let array = doc.get_or_insert_array(ARRAY);
        Peer {
            client_id,
            doc,
            array,
            sent_at: RefCell::new(Vec::new()),
            received: RefCell::new(Vec::new()),
            synced: Cell::new(false),
        }
    }

    /// Sync step 1 with this peer's state vector: what a y-websocket provider sends first.
    pub fn sync_step1(&self) -> Vec<u8> {
        let sv = self.doc.transact().state_vector().encode_v1();
        encode_sync(SYNC_STEP1, &sv)
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
        self.array.push_back(&mut txn, item);
        let update = txn.encode_update_v1();
        drop(txn);
        sent_at.push(Instant::now());
        encode_sync(SYNC_UPDATE, &update)
    }

    pub fn updates_sent(&self) -> u64 {
        self.sent_at.borrow().len() as u64
    }

    pub fn sent_at(&self, clock: u64) -> Option<Instant> {
        self.sent_at.borrow().get(clock as usize).copied()
    }

    pub fn on_message(&self, payload: &[u8]) -> Result<Incoming, String> {
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
                Ok(Incoming::Reply(encode_sync(SYNC_STEP2, &diff)))
            }
            SYNC_STEP2 => {
                self.keep(body);
                self.synced.set(true);
                Ok(Incoming::Other)
            }
            SYNC_UPDATE => {
                let (author, clock) = first_struct(body).map_err(bad)?;
                if author == self.client_id {
                    return Ok(Incoming::Echo);
                }
                self.keep(body);
                Ok(Incoming::Delivery { author, clock })
            }
            _ => Ok(Incoming::Other),
        }
    }

    fn keep(&self, update: &[u8]) {
        lib0::write_var_bytes(&mut self.received.borrow_mut(), update);
    }

    /// After the run: this peer's view of the document (its own edits plus everything it
    /// received), as the array's items.
    pub fn converged_items(&self) -> Result<Vec<String>, String> {
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
        let (a, b) = (Peer::new(1), Peer::new(2));
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
        let (a, b) = (Peer::new(1), Peer::new(2));
        let _lost = a.next_update(8);
        let kept = a.next_update(8);
        b.on_message(&kept).unwrap();
        // The second update depends on the first: b cannot integrate it.
        assert_eq!(b.converged_items().unwrap().len(), 0);
        assert_eq!(a.converged_items().unwrap().len(), 2);
    }

    #[test]
    fn step1_is_answered_with_what_the_server_lacks() {
        let a = Peer::new(1);
        a.next_update(8);
        let server_step1 = encode_sync(SYNC_STEP1, &StateVector::default().encode_v1());
        let Incoming::Reply(reply) = a.on_message(&server_step1).unwrap() else {
            panic!("step 1 needs a reply");
        };
        let other = Peer::new(2);
        other.on_message(&reply).unwrap();
        assert!(other.synced.get());
        assert_eq!(other.converged_items().unwrap().len(), 1);
    }
}
