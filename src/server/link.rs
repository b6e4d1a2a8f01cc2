//! Documents of a Hocuspocus socket that live on another shard. A socket stays on the shard
//! that accepted it, and its documents hash to any shard; each document on another shard is
//! a link: its messages travel to the owner over the shard mesh, where a stand-in subscriber
//! joins the room, and the frames the room sends that subscriber (shared `Arc`s, no copy)
//! travel back and are pushed on the socket's outbox.
//!
//! What travels and the per-peer queues are `mesh`'s. The queues are bounded: past
//! `mesh::PEER_QUEUE_MAX` sockets are not read and stand-ins are not drained (their outboxes
//! then cut off a subscriber that stays behind, as for any slow client).

use super::admission::Admission;
use super::handlers::new_message_rate;
use super::membership::{Membership, RoomClaim};
use super::mesh::{DocumentEvents, Link, LinkId, Mesh};
use super::shard::{spawn_detached, Shard};
use super::stats;
use crate::outbox::Outbox;
use crate::refusal::Refusal;
use crate::sync::message_rate::MessageRate;
use crate::sync::room::Framing;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

/// The owner's side: the stand-in subscriber.
struct Member {
    /// `None` while the join is in flight.
    membership: Option<Membership>,
    /// What the room sends the stand-in; its forwarder waits on it.
    outbox: Option<Rc<Outbox>>,
    rate: MessageRate,
    /// Messages that came while the room was behind (the socket's shard had sent them before
    /// it heard so), in order; handled as the room catches up.
    backlog: VecDeque<Box<[u8]>>,
    backlog_bytes: usize,
    /// The link ended: its frames are no longer forwarded.
    left: bool,
}

/// A stand-in's backlog, at most: what a socket's shard may send between the owner telling
/// it to stop reading and hearing so. Past it the socket is closed (1013).
const BACKLOG_BYTES_MAX: usize = 8 << 20;

/// The stand-ins of other shards' sockets in this shard's rooms.
#[derive(Default)]
pub struct Members(RefCell<HashMap<LinkId, Rc<RefCell<Member>>>>);

/// Starts a shard's links: one task per peer shard that sends its queue over the mesh.
pub fn start(shard: &Rc<Shard>) {
    shard.links.start(shard.shards);
    for peer in (0..shard.shards).filter(|&p| p != shard.id) {
        let (shard, queue) = (shard.clone(), shard.session_queue);
        let send = async move {
            loop {
                let next = std::future::poll_fn(|cx| shard.links.poll_next(peer, cx)).await;
                // A closed mesh means the process is stopping.
                if shard.mesh_send(peer, Mesh::Link(next)).await.is_err() {
                    return;
                }
            }
        };
        // On the sessions' queue: relaying is live work (see `tasks::serving_queue`).
        spawn_detached(queue, send);
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
        let (id, answer) = links.open_end(shard.id, address, outbox, events);
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

    /// Ready when the socket may be read for this document: its owner's queue has room and
    /// its room is not behind.
    pub fn poll_reading(&self, cx: &mut Context<'_>) -> Poll<()> {
        let links = &self.shard.links;
        if links.poll_room(self.owner, cx).is_pending() {
            return Poll::Pending;
        }
        links.poll_reading(self.id, cx)
    }

    pub fn on_message(&mut self, payload: &[u8]) {
        let link = Link::Message {
            id: self.id,
            payload: payload.into(),
        };
        self.shard.links.send(self.owner, link);
    }

    pub fn can_write(&self) -> bool {
        self.can_write
    }

    /// Sends a checked side message to the document's connections (see `side_messages`).
    pub fn side_message(&mut self, payload: &str, echo: bool) {
        let link = Link::SideMessage {
            id: self.id,
            payload: payload.to_owned(),
            echo,
        };
        self.shard.links.send(self.owner, link);
    }

    /// See `Membership::set_grant`.
    pub fn set_grant(&mut self, can_write: bool, signing_key: Option<std::sync::Arc<str>>) {
        self.can_write = can_write;
        let link = Link::SetGrant {
            id: self.id,
            can_write,
            signing_key,
        };
        self.shard.links.send(self.owner, link);
    }
}

impl Drop for RemoteDocument {
    fn drop(&mut self) {
        self.shard.links.close_end(self.id);
        self.shard
            .links
            .send(self.owner, Link::Leave { id: self.id });
    }
}

/// Handles what a peer shard sent: as the owner of documents, or as a socket's shard. Runs
/// on the peer's receiving task and never waits, so one peer's messages are handled in
/// order and one document that is behind holds up no other (its link's messages wait in
/// its stand-in's backlog, and its socket is asked not to be read meanwhile).
pub fn receive(shard: &Rc<Shard>, members: &Rc<Members>, link: Link) {
    let id = link.id();
    let member = members.0.borrow().get(&id).cloned();
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
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                left: false,
            }));
            members.0.borrow_mut().insert(id, member.clone());
            // Registry calls: on the admission queue, not holding up this peer's messages.
            let queue = shard.admission_queue;
            let (shard, members) = (shard.clone(), members.clone());
            let join = async move {
                let join = join_member(&shard, &members, id, address, admission, &member);
                if super::contain::future(shard.my_stats(), "link_join", join)
                    .await
                    .is_none()
                {
                    end_member(&members, id);
                    let refused = Some(Refusal::AdmissionPanicked);
                    shard
                        .links
                        .send(id.socket_shard, Link::Joined { id, refused });
                }
            };
            spawn_detached(queue, join);
        }
        Link::Message { payload, .. } => {
            if let Some(member) = member {
                on_link_message(shard, members, id, &member, payload);
            }
        }
        Link::SideMessage { payload, echo, .. } => {
            if let Some(m) = member {
                super::contain::call(shard.my_stats(), "link_side_message", || {
                    if let Some(membership) = m.borrow_mut().membership.as_mut() {
                        membership.side_message(&payload, echo);
                    }
                });
            }
        }
        Link::SetGrant {
            can_write,
            signing_key,
            ..
        } => {
            if let Some(m) = member {
                if let Some(membership) = m.borrow_mut().membership.as_mut() {
                    membership.set_grant(can_write, signing_key.as_ref());
                }
            }
        }
        Link::Leave { .. } => end_member(members, id),
        Link::Joined { refused, .. } => shard.links.joined(id, refused),
        Link::Frames { frames, .. } => {
            if let Some(outbox) = shard.links.socket_outbox(id) {
                outbox.push_all(&frames);
            }
        }
        Link::DocumentClosed { refusal, .. } => {
            if let Some((address, events)) = shard.links.end_events(id) {
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
        Link::Reading { reading, .. } => shard.links.set_reading(id, reading),
    }
}

/// A link's sync or awareness message: handled now, or, while its room is behind (or
/// earlier ones wait), kept in order in the stand-in's backlog, with the socket asked not to
/// be read until the backlog is handled.
fn on_link_message(
    shard: &Rc<Shard>,
    members: &Rc<Members>,
    id: LinkId,
    member: &Rc<RefCell<Member>>,
    payload: Box<[u8]>,
) {
    let mut m = member.borrow_mut();
    let behind = !m.backlog.is_empty() || m.membership.as_ref().is_some_and(Membership::lagging);
    if !behind {
        drop(m);
        on_member_message(shard, members, id, member, &payload);
        return;
    }
    if m.backlog_bytes + payload.len() > BACKLOG_BYTES_MAX {
        drop(m);
        let (code, reason) = Refusal::LinkBacklog.close();
        let reason = reason.into_owned();
        end_member(members, id);
        shard
            .links
            .send(id.socket_shard, Link::SocketClosed { id, code, reason });
        return;
    }
    let first = m.backlog.is_empty();
    m.backlog_bytes += payload.len();
    m.backlog.push_back(payload);
    drop(m);
    if first {
        stats::add(&shard.my_stats().link_pauses_total, 1);
        let reading = false;
        shard
            .links
            .send(id.socket_shard, Link::Reading { id, reading });
        let (shard, members, member) = (shard.clone(), members.clone(), member.clone());
        glommio::spawn_local(async move {
            let drain = drain_backlog(&shard, &members, id, &member);
            super::contain::future(shard.my_stats(), "link_backlog", drain).await;
        })
        .detach();
    }
}

/// Handles a stand-in's backlog as its room catches up; then lets its socket be read again.
async fn drain_backlog(
    shard: &Rc<Shard>,
    members: &Rc<Members>,
    id: LinkId,
    member: &Rc<RefCell<Member>>,
) {
    loop {
        std::future::poll_fn(|cx| match member.borrow_mut().membership.as_mut() {
            Some(membership) => membership.poll_caught_up(cx),
            None => Poll::Ready(()),
        })
        .await;
        let next = {
            let mut m = member.borrow_mut();
            if m.left {
                return;
            }
            let next = m.backlog.pop_front();
            if let Some(payload) = &next {
                m.backlog_bytes -= payload.len();
            }
            next
        };
        match next {
            Some(payload) => on_member_message(shard, members, id, member, &payload),
            None => {
                let reading = true;
                shard
                    .links
                    .send(id.socket_shard, Link::Reading { id, reading });
                return;
            }
        }
    }
}

/// Opens the room for a socket on another shard and joins its stand-in.
async fn join_member(
    shard: &Rc<Shard>,
    members: &Rc<Members>,
    id: LinkId,
    address: String,
    admission: Admission,
    member: &Rc<RefCell<Member>>,
) {
    let claim = RoomClaim::open(shard, admission).await;
    if member.borrow().left {
        // Left meanwhile: the claim lets the room expire.
        return;
    }
    let outbox = Rc::new(Outbox::new(shard.config().websocket.outbound_bytes_max));
    let framing = Framing::Hocuspocus { address: &address };
    let joined = claim.and_then(|claim| claim.join(outbox.clone(), framing));
    match joined {
        Ok(membership) => {
            let mut m = member.borrow_mut();
            m.membership = Some(membership);
            m.outbox = Some(outbox.clone());
            drop(m);
            shard
                .links
                .send(id.socket_shard, Link::Joined { id, refused: None });
            let (shard, members, member) = (shard.clone(), members.clone(), member.clone());
            let queue = shard.session_queue;
            // Joined on the admission queue; forwarding is live work, on the sessions'.
            let forwarding = async move {
                let forwarding = forward(&shard, &members, id, outbox, &member);
                if super::contain::future(shard.my_stats(), "link_forward", forwarding)
                    .await
                    .is_none()
                {
                    // Its frames can no longer be trusted to reach the socket: it closes.
                    end_member(&members, id);
                    let (code, reason) = Refusal::Panicked.close();
                    let reason = reason.into_owned();
                    shard
                        .links
                        .send(id.socket_shard, Link::SocketClosed { id, code, reason });
                }
            };
            spawn_detached(queue, forwarding);
        }
        Err(refusal) => {
            members.0.borrow_mut().remove(&id);
            let refused = Some(refusal);
            shard
                .links
                .send(id.socket_shard, Link::Joined { id, refused });
        }
    }
}

/// Sends what the room queued for a stand-in to its socket's shard, until the link ends.
async fn forward(
    shard: &Shard,
    members: &Members,
    id: LinkId,
    outbox: Rc<Outbox>,
    member: &RefCell<Member>,
) {
    loop {
        let more = std::future::poll_fn(|cx| outbox.poll_pending(cx)).await;
        // Not past the peer's bound: meanwhile the outbox fills, and cuts off a stand-in
        // that stays behind as it would a slow client.
        std::future::poll_fn(|cx| shard.links.poll_room(id.socket_shard, cx)).await;
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
            end_member(members, id);
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
fn on_member_message(
    shard: &Shard,
    members: &Members,
    id: LinkId,
    member: &Rc<RefCell<Member>>,
    payload: &[u8],
) {
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
    end_member(members, id);
    shard.links.send(id.socket_shard, link);
}

/// The stand-in leaves its room; its forwarder stops.
fn end_member(members: &Members, id: LinkId) {
    let Some(member) = members.0.borrow_mut().remove(&id) else {
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
