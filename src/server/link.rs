//! Documents of a Hocuspocus socket that live on another shard. A socket stays on the shard
//! that accepted it, and its documents hash to any shard; each document on another shard is
//! a link: its messages travel to the owner over the shard mesh, where a stand-in subscriber
//! joins the room, and the frames the room sends that subscriber (shared `Arc`s, no copy)
//! travel back and are pushed on the socket's outbox.
//!
//! Everything between two shards goes through one queue per peer, in order, so a link's
//! join, messages and leave arrive as they were sent, and its answers likewise. The queue is
//! bounded: past [`PEER_QUEUE_MAX`] sockets are not read and stand-ins are not drained (their
//! outboxes then cut off a subscriber that stays behind, as for any slow client).

use super::handlers::new_message_rate;
use super::membership::{Admission, Membership, RoomClaim};
use super::shard::{Handoff, Shard};
use super::stats;
use crate::outbox::{Frame, Outbox};
use crate::refusal::Refusal;
use crate::sync::hocuspocus;
use crate::sync::message_rate::MessageRate;
use crate::sync::room::Framing;
use glommio::channels::local_channel::{self, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

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
    Stateless {
        id: LinkId,
        payload: String,
    },
    /// A refreshed token changed the role.
    SetWrite {
        id: LinkId,
        can_write: bool,
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
}

impl Link {
    fn id(&self) -> LinkId {
        match self {
            Link::Join { id, .. }
            | Link::Message { id, .. }
            | Link::Stateless { id, .. }
            | Link::SetWrite { id, .. }
            | Link::Leave { id }
            | Link::Joined { id, .. }
            | Link::Frames { id, .. }
            | Link::DocumentClosed { id, .. }
            | Link::SocketClosed { id, .. } => *id,
        }
    }
}

/// Messages waiting for one peer shard, at most (a message may carry many frames).
pub const PEER_QUEUE_MAX: usize = 4096;

/// What a socket hears of its links' documents besides their frames.
pub trait DocumentEvents {
    /// The document at `address` was closed by its owner for `refusal`.
    fn document_closed(&mut self, address: &str, link: LinkId, refusal: &Refusal);
}

/// A shard's links: the ends of its sockets' links, the stand-ins of other shards' sockets in
/// its rooms, and the queues to its peers.
#[derive(Default)]
pub struct Links {
    next: Cell<u64>,
    ends: RefCell<HashMap<u64, End>>,
    members: RefCell<HashMap<LinkId, Rc<RefCell<Member>>>>,
    /// Per peer shard: what waits to be sent, and who waits for room in it.
    queues: RefCell<Vec<PeerQueue>>,
}

#[derive(Default)]
struct PeerQueue {
    messages: VecDeque<Link>,
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
}

/// The owner's side: the stand-in subscriber.
struct Member {
    /// `None` while the join is in flight.
    membership: Option<Membership>,
    /// What the room sends the stand-in; its forwarder waits on it.
    outbox: Option<Rc<Outbox>>,
    rate: MessageRate,
    /// The link ended: its frames are no longer forwarded.
    left: bool,
}

impl Links {
    /// Sends one message to `peer` (queued in order behind the others).
    fn send(&self, peer: usize, link: Link) {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[peer];
        queue.messages.push_back(link);
        if let Some(waker) = queue.sender.take() {
            waker.wake();
        }
    }

    /// The outbox of the socket at this end of a link, while the link lasts.
    fn socket_outbox(&self, id: LinkId) -> Option<Rc<Outbox>> {
        self.ends.borrow().get(&id.n).map(|e| e.outbox.clone())
    }

    /// Ready while every peer queue has room (a socket with links reads only then).
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut queues = self.queues.borrow_mut();
        for queue in queues.iter_mut() {
            if queue.messages.len() >= PEER_QUEUE_MAX {
                queue.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }
}

/// Starts a shard's links: one task per peer shard that sends its queue over the mesh.
pub fn start(shard: &Rc<Shard>) {
    *shard.links.queues.borrow_mut() = (0..shard.shards).map(|_| PeerQueue::default()).collect();
    for peer in (0..shard.shards).filter(|&p| p != shard.id) {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                let next = std::future::poll_fn(|cx| {
                    let mut queues = shard.links.queues.borrow_mut();
                    let queue = &mut queues[peer];
                    match queue.messages.pop_front() {
                        Some(link) => {
                            if queue.messages.len() < PEER_QUEUE_MAX / 2 {
                                queue.waiting.drain(..).for_each(Waker::wake);
                            }
                            Poll::Ready(link)
                        }
                        None => {
                            queue.sender = Some(cx.waker().clone());
                            Poll::Pending
                        }
                    }
                })
                .await;
                // A closed mesh means the process is stopping.
                if shard.mesh_send(peer, Mesh::Link(next)).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    }
}

/// A document of a socket on this shard whose room is on `owner`. Leaves when dropped.
pub struct RemoteDocument {
    shard: Rc<Shard>,
    owner: usize,
    id: LinkId,
    can_write: bool,
}

impl RemoteDocument {
    /// Joins the document's room on its owner shard: the owner answers (Authenticated, the
    /// room's first frames) on `outbox`, and tells `events` if it closes the document.
    pub async fn join(
        shard: &Rc<Shard>,
        owner: usize,
        address: &str,
        admission: Admission,
        outbox: Rc<Outbox>,
        events: Weak<RefCell<dyn DocumentEvents>>,
    ) -> Result<RemoteDocument, Refusal> {
        assert_ne!(owner, shard.id, "a remote document lives on another shard");
        let links = &shard.links;
        let n = links.next.get();
        links.next.set(n + 1);
        let id = LinkId {
            socket_shard: shard.id,
            n,
        };
        let (joined, answer) = local_channel::new_bounded(1);
        links.ends.borrow_mut().insert(
            n,
            End {
                address: address.to_owned(),
                outbox,
                events,
                joined: Some(joined),
            },
        );
        let can_write = admission.can_write;
        // From here, however this ends (a refusal, the socket gone), the owner hears of it.
        let document = RemoteDocument {
            shard: shard.clone(),
            owner,
            id,
            can_write,
        };
        links.send(
            owner,
            Link::Join {
                id,
                address: address.to_owned(),
                admission,
            },
        );
        match answer.recv().await {
            Some(None) => Ok(document),
            Some(Some(refusal)) => Err(refusal),
            // The mesh closed: the process is stopping.
            None => Err(Refusal::Restart),
        }
    }

    pub fn id(&self) -> LinkId {
        self.id
    }

    pub fn on_message(&mut self, payload: &[u8]) {
        let link = Link::Message {
            id: self.id,
            payload: payload.into(),
        };
        self.shard.links.send(self.owner, link);
    }

    pub fn stateless(&mut self, payload: &str) {
        // Viewers' side messages are not relayed (PRODUCT.md 9.3).
        if self.can_write {
            let link = Link::Stateless {
                id: self.id,
                payload: payload.to_owned(),
            };
            self.shard.links.send(self.owner, link);
        }
    }

    pub fn set_can_write(&mut self, can_write: bool) {
        self.can_write = can_write;
        let link = Link::SetWrite {
            id: self.id,
            can_write,
        };
        self.shard.links.send(self.owner, link);
    }
}

impl Drop for RemoteDocument {
    fn drop(&mut self) {
        self.shard.links.ends.borrow_mut().remove(&self.id.n);
        self.shard
            .links
            .send(self.owner, Link::Leave { id: self.id });
    }
}

/// Handles what a peer shard sent: as the owner of documents, or as a socket's shard. Runs
/// on the peer's receiving task, so one peer's messages are handled in order; it waits only
/// for a lagging room (backpressure on that peer, as a local writer is not read).
pub async fn receive(shard: &Rc<Shard>, link: Link) {
    let id = link.id();
    let member = shard.links.members.borrow().get(&id).cloned();
    match link {
        Link::Join {
            id,
            address,
            admission,
        } => {
            let member = Rc::new(RefCell::new(Member {
                membership: None,
                outbox: None,
                rate: new_message_rate(shard),
                left: false,
            }));
            shard.links.members.borrow_mut().insert(id, member.clone());
            // Registry calls: on the admission queue, not holding up this peer's messages.
            let join = join_member(shard.clone(), id, address, admission, member);
            glommio::spawn_local_into(join, shard.admission_queue)
                .expect("the admission task queue lives as long as the shard")
                .detach();
        }
        Link::Message { payload, .. } => {
            let Some(member) = member else { return };
            // Not while the room is behind: this peer's messages wait (backpressure).
            std::future::poll_fn(|cx| {
                let mut m = member.borrow_mut();
                match m.membership.as_mut() {
                    Some(membership) => membership.poll_caught_up(cx),
                    None => Poll::Ready(()),
                }
            })
            .await;
            on_member_message(shard, id, &member, &payload);
        }
        Link::Stateless { payload, .. } => {
            if let Some(m) = member {
                if let Some(membership) = m.borrow_mut().membership.as_mut() {
                    membership.stateless(&payload);
                }
            }
        }
        Link::SetWrite { can_write, .. } => {
            if let Some(m) = member {
                if let Some(membership) = m.borrow_mut().membership.as_mut() {
                    membership.set_can_write(can_write);
                }
            }
        }
        Link::Leave { .. } => end_member(shard, id),
        Link::Joined { refused, .. } => {
            if let Some(end) = shard.links.ends.borrow_mut().get_mut(&id.n) {
                if let Some(joined) = end.joined.take() {
                    let _ = joined.try_send(refused);
                }
            }
        }
        Link::Frames { frames, .. } => {
            if let Some(outbox) = shard.links.socket_outbox(id) {
                outbox.push_all(&frames);
            }
        }
        Link::DocumentClosed { refusal, .. } => {
            let end = shard
                .links
                .ends
                .borrow()
                .get(&id.n)
                .map(|e| (e.address.clone(), e.events.clone()));
            if let Some((address, events)) = end {
                if let Some(events) = events.upgrade() {
                    events.borrow_mut().document_closed(&address, id, &refusal);
                }
            }
        }
        Link::SocketClosed { code, reason, .. } => {
            if let Some(outbox) = shard.links.socket_outbox(id) {
                outbox.close(code, &reason);
            }
        }
    }
}

/// Opens the room for a socket on another shard and joins its stand-in.
async fn join_member(
    shard: Rc<Shard>,
    id: LinkId,
    address: String,
    admission: Admission,
    member: Rc<RefCell<Member>>,
) {
    let can_write = admission.can_write;
    let claim = RoomClaim::open(&shard, admission).await;
    if member.borrow().left {
        // Left meanwhile: the claim lets the room expire.
        return;
    }
    let outbox = Rc::new(Outbox::new(shard.config().websocket.outbound_bytes_max));
    let prefix = hocuspocus::address_prefix(&address);
    let authenticated = crate::outbox::shared_frame(
        crate::ws::frame::Opcode::Binary,
        &[&hocuspocus::encode_authenticated(&prefix, can_write)],
    );
    let joined = claim.and_then(|claim| {
        claim.join(
            outbox.clone(),
            Framing::Hocuspocus { address: &address },
            Some(&authenticated),
        )
    });
    match joined {
        Ok(membership) => {
            let mut m = member.borrow_mut();
            m.membership = Some(membership);
            m.outbox = Some(outbox.clone());
            drop(m);
            shard
                .links
                .send(id.socket_shard, Link::Joined { id, refused: None });
            let forward = forward(shard.clone(), id, outbox, member);
            glommio::spawn_local(forward).detach();
        }
        Err(refusal) => {
            shard.links.members.borrow_mut().remove(&id);
            let refused = Some(refusal);
            shard
                .links
                .send(id.socket_shard, Link::Joined { id, refused });
        }
    }
}

/// Sends what the room queued for a stand-in to its socket's shard, until the link ends.
async fn forward(shard: Rc<Shard>, id: LinkId, outbox: Rc<Outbox>, member: Rc<RefCell<Member>>) {
    loop {
        let more = std::future::poll_fn(|cx| outbox.poll_pending(cx)).await;
        // Not past the peer's bound: meanwhile the outbox fills, and cuts off a stand-in
        // that stays behind as it would a slow client.
        std::future::poll_fn(|cx| shard.links.poll_room(cx)).await;
        if member.borrow().left {
            return;
        }
        let (frames, closed) = outbox.take_frames();
        if !frames.is_empty() {
            shard
                .links
                .send(id.socket_shard, Link::Frames { id, frames });
        }
        if let Some((code, reason)) = closed {
            shard
                .links
                .send(id.socket_shard, Link::SocketClosed { id, code, reason });
            end_member(&shard, id);
            return;
        }
        if !more {
            return;
        }
    }
}

/// Handles a socket's message for its stand-in, as a local session would: a document's
/// refusal closes the document, the socket's budgets close the socket, a panic resets the
/// document (which closes every subscriber, the stand-in's socket too).
fn on_member_message(shard: &Rc<Shard>, id: LinkId, member: &Rc<RefCell<Member>>, payload: &[u8]) {
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut m = member.borrow_mut();
        let Member {
            membership, rate, ..
        } = &mut *m;
        let Some(membership) = membership.as_mut() else {
            return Ok(());
        };
        let handled = membership.on_message(payload, rate);
        membership.flush();
        handled
    }));
    let refusal = match handled {
        Ok(Ok(())) => return,
        Ok(Err(refusal)) => refusal,
        Err(_) => {
            stats::add(&shard.my_stats().panics_total, 1);
            crate::log::warn("panic", &[("in", &"link_message")]);
            if let Ok(mut m) = member.try_borrow_mut() {
                if let Some(membership) = m.membership.as_mut() {
                    membership.reset();
                }
            }
            return;
        }
    };
    stats::add(&shard.my_stats().messages_refused_total, 1);
    let link = match refusal {
        Refusal::MessageRate(_) | Refusal::OutOfMemory => {
            let (code, reason) = refusal.close();
            Link::SocketClosed {
                id,
                code,
                reason: reason.into_owned(),
            }
        }
        refusal => Link::DocumentClosed { id, refusal },
    };
    end_member(shard, id);
    shard.links.send(id.socket_shard, link);
}

/// The stand-in leaves its room; its forwarder stops.
fn end_member(shard: &Rc<Shard>, id: LinkId) {
    let Some(member) = shard.links.members.borrow_mut().remove(&id) else {
        return;
    };
    let mut m = member.borrow_mut();
    m.left = true;
    // Dropping the membership leaves the room.
    m.membership = None;
    // Wakes the forwarder, which sees the link has ended.
    if let Some(outbox) = m.outbox.take() {
        outbox.close(crate::ws::close::NORMAL, "");
    }
}
