//! What shards send each other over the glommio channel mesh (handed-off connections, and
//! the links of Hocuspocus sockets' documents, see `link`), and a shard's side of it: one
//! bounded queue per peer, in order, and the ends of its sockets' links. Everything between
//! two shards goes through that one queue, so a link's join, messages and leave arrive as
//! they were sent, and its answers likewise.

use super::admission::{Admission, Handed};
use crate::outbox::{Frame, Outbox};
use crate::refusal::Refusal;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// A connection moving to its document's owner shard: the socket, and what the shard that
/// accepted it decided (its token verified, its document checked, the upgrade's answer).
pub struct Handoff {
    pub fd: OwnedFd,
    pub handed: Handed,
}

/// What shards send each other.
pub enum Mesh {
    /// A connection moving to its document's owner shard (boxed: it is the largest).
    Handoff(Box<Handoff>),
    Link(Link),
}

/// One document of one socket: the socket's shard and a number it gave the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    pub socket_shard: usize,
    pub n: u64,
}

pub enum Link {
    // Socket shard to owner.
    /// Join the document's room (the token was checked on the socket's shard).
    Join {
        id: LinkId,
        address: String,
        admission: Admission,
    },
    /// A sync or awareness message (y-websocket bytes).
    Message {
        id: LinkId,
        payload: Box<[u8]>,
    },
    /// A side message, checked on the socket's shard (see `side_messages`).
    SideMessage {
        id: LinkId,
        payload: String,
        echo: bool,
    },
    /// A refreshed token's role and signing key apply from now on.
    SetGrant {
        id: LinkId,
        can_write: bool,
        signing_key: Option<std::sync::Arc<str>>,
    },
    Leave {
        id: LinkId,
    },
    // Owner to socket shard.
    /// The join's outcome.
    Joined {
        id: LinkId,
        refused: Option<Refusal>,
    },
    Frames {
        id: LinkId,
        frames: Vec<Frame>,
    },
    /// The document refused one of the link's messages: it is closed (the socket stays).
    DocumentClosed {
        id: LinkId,
        refusal: Refusal,
    },
    /// The room closed the subscriber (slow, reset, an update yrs refused) or the socket's
    /// own budget was passed: the socket closes, as a local subscriber's would.
    SocketClosed {
        id: LinkId,
        code: u16,
        reason: String,
    },
    /// The link's room is behind: stop reading the socket (`false`), or read it again.
    Reading {
        id: LinkId,
        reading: bool,
    },
}

impl Link {
    pub fn id(&self) -> LinkId {
        match self {
            Link::Join { id, .. }
            | Link::Message { id, .. }
            | Link::SideMessage { id, .. }
            | Link::SetGrant { id, .. }
            | Link::Leave { id }
            | Link::Joined { id, .. }
            | Link::Frames { id, .. }
            | Link::DocumentClosed { id, .. }
            | Link::SocketClosed { id, .. }
            | Link::Reading { id, .. } => *id,
        }
    }

    /// The bytes it carries (what the peer queues bound besides the message count).
    fn bytes(&self) -> usize {
        match self {
            Link::Message { payload, .. } => payload.len(),
            Link::SideMessage { payload, .. } => payload.len(),
            Link::Frames { frames, .. } => frames.iter().map(|f| f.len()).sum(),
            _ => 0,
        }
    }
}

/// Messages waiting for one peer shard, at most (a message may carry many frames).
pub const PEER_QUEUE_MAX: usize = 4096;
/// Their bytes, at most (past either, what sends to the peer waits; one read or one
/// forwarding may pass it once).
pub const PEER_QUEUE_BYTES_MAX: usize = 32 << 20;

/// What a socket hears of its links' documents besides their frames.
pub trait DocumentEvents {
    /// The document at `address` was closed by its owner for `refusal`.
    fn document_closed(&mut self, address: &str, link: LinkId, refusal: &Refusal);
}

/// A shard's side of the mesh: the ends of its sockets' links and the queues to its peers.
/// (The stand-ins of other shards' sockets in its rooms are `link::Members`.)
#[derive(Default)]
pub struct Links {
    next: Cell<u64>,
    ends: RefCell<HashMap<u64, End>>,
    /// Per peer shard: what waits to be sent, and who waits for room in it.
    queues: RefCell<Vec<PeerQueue>>,
}

#[derive(Default)]
struct PeerQueue {
    messages: VecDeque<Link>,
    bytes: usize,
    /// The task that sends to this peer.
    sender: Option<Waker>,
    /// Sockets and stand-ins waiting for room.
    waiting: Vec<Waker>,
}

/// The socket's side of a link.
struct End {
    address: String,
    outbox: Rc<Outbox>,
    events: Weak<RefCell<dyn DocumentEvents>>,
    /// Until the owner answers the join.
    joined: Option<LocalSender<Option<Refusal>>>,
    /// The owner asked to stop reading the socket (its room is behind).
    paused: bool,
    /// The socket's session, waiting for `paused` to clear.
    resume: Option<Waker>,
}

impl Links {
    /// Sends one message to `peer` (queued in order behind the others).
    pub fn send(&self, peer: usize, link: Link) {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[peer];
        queue.bytes += link.bytes();
        queue.messages.push_back(link);
        if let Some(waker) = queue.sender.take() {
            waker.wake();
        }
    }

    /// The outbox of the socket at this end of a link, while the link lasts.
    pub fn socket_outbox(&self, id: LinkId) -> Option<Rc<Outbox>> {
        self.ends.borrow().get(&id.n).map(|e| e.outbox.clone())
    }

    /// Ready while the queue to `peer` has room (a socket with a document there reads only
    /// then; a stand-in forwards only then).
    pub fn poll_room(&self, peer: usize, cx: &mut Context<'_>) -> Poll<()> {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[peer];
        if queue.messages.len() < PEER_QUEUE_MAX && queue.bytes < PEER_QUEUE_BYTES_MAX {
            return Poll::Ready(());
        }
        // Bounded by the tasks that send to this peer: each waits on one poll at a time.
        if !queue.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            queue.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Makes the queues, one per shard of the node.
    pub fn start(&self, shards: usize) {
        *self.queues.borrow_mut() = (0..shards).map(|_| PeerQueue::default()).collect();
    }

    /// The next message for `peer`, once there is one (for the task that sends to it).
    pub fn poll_next(&self, peer: usize, cx: &mut Context<'_>) -> Poll<Link> {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[peer];
        match queue.messages.pop_front() {
            Some(link) => {
                queue.bytes -= link.bytes();
                if queue.messages.len() < PEER_QUEUE_MAX / 2
                    && queue.bytes < PEER_QUEUE_BYTES_MAX / 2
                {
                    queue.waiting.drain(..).for_each(Waker::wake);
                }
                Poll::Ready(link)
            }
            None => {
                queue.sender = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Opens this shard's end of a new link for the socket whose outbox and events are
    /// given; the owner's answer to its join comes through the returned receiver.
    pub fn open_end(
        &self,
        shard_id: usize,
        address: &str,
        outbox: Rc<Outbox>,
        events: Weak<RefCell<dyn DocumentEvents>>,
    ) -> (LinkId, LocalReceiver<Option<Refusal>>) {
        let n = self.next.get();
        self.next.set(n + 1);
        let (joined, answer) = local_channel::new_bounded(1);
        let end = End {
            address: address.to_owned(),
            outbox,
            events,
            joined: Some(joined),
            paused: false,
            resume: None,
        };
        self.ends.borrow_mut().insert(n, end);
        let id = LinkId {
            socket_shard: shard_id,
            n,
        };
        (id, answer)
    }

    pub fn close_end(&self, id: LinkId) {
        self.ends.borrow_mut().remove(&id.n);
    }

    /// Hands the owner's answer to the join waiting at this end.
    pub fn joined(&self, id: LinkId, refused: Option<Refusal>) {
        if let Some(end) = self.ends.borrow_mut().get_mut(&id.n) {
            if let Some(joined) = end.joined.take() {
                let _ = joined.try_send(refused);
            }
        }
    }

    /// The owner's word on reading the socket (see `Link::Reading`).
    pub fn set_reading(&self, id: LinkId, reading: bool) {
        if let Some(end) = self.ends.borrow_mut().get_mut(&id.n) {
            end.paused = !reading;
            if reading {
                if let Some(waker) = end.resume.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Ready unless the owner asked this end's socket not to be read.
    pub fn poll_reading(&self, id: LinkId, cx: &mut Context<'_>) -> Poll<()> {
        match self.ends.borrow_mut().get_mut(&id.n) {
            Some(end) if end.paused => {
                end.resume = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// The document at this end and whom to tell of its close.
    pub fn end_events(&self, id: LinkId) -> Option<(String, Weak<RefCell<dyn DocumentEvents>>)> {
        let ends = self.ends.borrow();
        ends.get(&id.n)
            .map(|e| (e.address.clone(), e.events.clone()))
    }
}
