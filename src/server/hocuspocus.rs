//! A socket in the Hocuspocus framing (`@hocuspocus/provider`, Tiptap): many documents on one
//! connection, each authenticated by its own token in an auth message. Until a document's
//! token is checked its messages wait in a bounded queue; a refused document is told so
//! (`PermissionDenied`, the reason led by the close code a y-websocket client would get) and
//! the socket stays open for the others. The wire facts are in `shared/spec/HOCUSPOCUS.md`;
//! the bytes are `sync::hocuspocus`'s, the rooms `sync::room`'s.

use super::admission::{decide, Admission};
use super::authorization::authorize;
use super::handler::Handler;
use super::handlers::{count_wait, new_message_rate};
use super::link::RemoteDocument;
use super::membership::{ConnectionCount, ConnectionGauge, Membership, RoomClaim};
use super::mesh::{DocumentEvents, LinkId};
use super::shard::{spawn_detached, Shard};
use super::side_messages::{self, Outgoing};
use super::stats;
use crate::auth;
use crate::auth::claims::User;
use crate::auth::verify::Identity;
use crate::auth::verify::Refusal as TokenRefusal;
use crate::config::HocuspocusConfig;
use crate::outbox::{binary_frame, Outbox};
use crate::refusal::Refusal;
use crate::sync::hocuspocus::{self, DocumentMessage, Incoming};
use crate::sync::message_rate::{MessageRate, HEAVY_MESSAGE_WEIGHT};
use crate::sync::protocol;
use crate::sync::room::Framing;
use crate::ws::frame::Opcode;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Addresses of one document one socket may have open or waiting (v4 `sessionAwareness`
/// gives each provider its own): each is a subscriber of the room, so without a bound one
/// socket could take every `maxUsersPerDoc` place.
const SESSIONS_PER_DOCUMENT_MAX: usize = 4;

/// Token checks one socket may have running at once (each is a signature check, registry
/// calls and a room claim).
const CHECKS_IN_FLIGHT_MAX: usize = 8;

/// Why the provider detached a document, told back to it with the close message.
const PROVIDER_CLOSED: &str = "provider_initiated";

/// The session's side of a Hocuspocus socket. The state is shared with the tasks that admit
/// its documents (token checks and registry calls are asynchronous; a session's handler is
/// not), and borrowed only between awaits.
pub struct HocuspocusHandler {
    socket: Rc<RefCell<Socket>>,
}

struct Socket {
    /// Itself, for the tasks it starts.
    me: Weak<RefCell<Socket>>,
    shard: Rc<Shard>,
    outbox: Rc<Outbox>,
    /// The upgrade's `Origin`, checked against each document's token.
    origin: Option<Vec<u8>>,
    /// By address; at most `hocuspocus.documents_max` (open, waiting and refused alike).
    documents: Documents,
    /// Messages (and their bytes) queued for documents whose token is not checked yet.
    queued_messages: usize,
    queued_bytes: usize,
    /// One connection count per app, shared by the app's open documents on this socket
    /// (and given back with the last of them).
    counts: Vec<(String, Weak<ConnectionCount>)>,
    rate: MessageRate,
    /// Tells a document's admissions apart: one that finishes after its document was closed
    /// (or refused and tried again) finds another attempt and gives back what it took.
    attempts: u64,
    /// Token checks (admissions and refreshes) running, abandoned ones included until they
    /// end: at most [`CHECKS_IN_FLIGHT_MAX`]; further tokens wait in their document.
    checks_in_flight: usize,
    /// Since when no document is open (none yet, or the last one closed).
    unauthenticated_since: Option<Instant>,
    /// The socket's one timer while something is due, and when it fires: the auth deadline
    /// while no document is open, else the next token expiry not yet asked about (an idle
    /// task per socket is not free, so there is none while nothing is due).
    watch: Option<(glommio::task::JoinHandle<()>, Instant)>,
    /// The document whose message is being handled (for `on_panic`).
    /// Empty when none (an address never is): kept, not freed, so that marking it costs
    /// no allocation per message.
    handling: String,
    /// Not read since one of its rooms fell behind (counted once per wait).
    waiting: bool,
    /// `None` once the session has ended.
    gauge: Option<ConnectionGauge>,
}

enum Document {
    /// Its messages wait for its token.
    Waiting {
        queue: Vec<Box<[u8]>>,
        /// Its token is being checked (by the admission `attempt`).
        admitting: Option<u64>,
        /// Its token, waiting for a check to end (see `Socket::checks_in_flight`).
        token: Option<Box<str>>,
    },
    Open(Open),
    /// Refused: its messages are dropped until it sends a token again.
    Refused,
}

/// A socket's documents by address: a few (at most `hocuspocus.documents_max`), so a vector
/// searched in order, which for the usual one or two costs less memory than a map.
#[derive(Default)]
struct Documents(Vec<(Box<str>, Document)>);

impl Documents {
    fn get(&self, address: &str) -> Option<&Document> {
        self.0.iter().find(|(a, _)| &**a == address).map(|(_, d)| d)
    }

    fn get_mut(&mut self, address: &str) -> Option<&mut Document> {
        self.0
            .iter_mut()
            .find(|(a, _)| &**a == address)
            .map(|(_, d)| d)
    }

    /// Sets the document at `address`; returns what was there.
    fn insert(&mut self, address: Box<str>, document: Document) -> Option<Document> {
        match self.get_mut(&address) {
            Some(there) => Some(std::mem::replace(there, document)),
            None => {
                self.0.push((address, document));
                None
            }
        }
    }

    fn remove(&mut self, address: &str) -> Option<Document> {
        let at = self.0.iter().position(|(a, _)| &**a == address)?;
        Some(self.0.swap_remove(at).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn values(&self) -> impl Iterator<Item = &Document> {
        self.0.iter().map(|(_, d)| d)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Document> {
        self.0.iter_mut().map(|(_, d)| d)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Document)> {
        self.0.iter_mut().map(|(a, d)| (&**a, d))
    }
}

impl Document {
    fn waiting() -> Document {
        Document::Waiting {
            queue: Vec::new(),
            admitting: None,
            token: None,
        }
    }
}

struct Open {
    /// Leaves the room before the count below may go.
    place: Place,
    _count: Rc<ConnectionCount>,
    /// `{tenant}::{app}::{document}`: a refreshed token must name the same.
    key: String,
    /// A refreshed token is being checked.
    refreshing: bool,
    /// Its token's `exp`; when it passes, the provider is asked for a new token (`02 00`),
    /// once per token.
    expires_at_s: u64,
    refresh_asked: bool,
    /// The admission that opened it: a refresh applies only to the same opening.
    attempt: u64,
    /// Who its token names (design comments carry it).
    user: Arc<User>,
}

/// Where an open document's room is.
enum Place {
    /// On this shard.
    Local(Membership),
    /// On its owner shard, reached over a link.
    Remote(RemoteDocument),
}

impl Place {
    fn on_message(&mut self, payload: &[u8], rate: &mut MessageRate) -> Result<(), Refusal> {
        match self {
            Place::Local(membership) => membership.on_message(payload, rate),
            // Limited where the document is (its owner keeps the link's rate).
            Place::Remote(remote) => {
                remote.on_message(payload);
                Ok(())
            }
        }
    }

    fn side_message(&mut self, out: &Outgoing<'_>) {
        match self {
            Place::Local(membership) => membership.side_message(&out.payload, out.echo),
            Place::Remote(remote) => remote.side_message(&out.payload, out.echo),
        }
    }

    fn can_write(&self) -> bool {
        match self {
            Place::Local(membership) => membership.can_write(),
            Place::Remote(remote) => remote.can_write(),
        }
    }

    fn set_grant(&mut self, can_write: bool, signing_key: Option<Arc<str>>) {
        match self {
            Place::Local(membership) => membership.set_grant(can_write, signing_key.as_ref()),
            Place::Remote(remote) => remote.set_grant(can_write, signing_key),
        }
    }
}

impl HocuspocusHandler {
    pub fn new(shard: &Rc<Shard>, outbox: Rc<Outbox>, origin: Option<Vec<u8>>) -> Self {
        let socket = Socket {
            me: Weak::new(),
            shard: shard.clone(),
            outbox,
            origin,
            documents: Documents::default(),
            queued_messages: 0,
            queued_bytes: 0,
            counts: Vec::new(),
            rate: new_message_rate(shard),
            attempts: 0,
            checks_in_flight: 0,
            unauthenticated_since: Some(Instant::now()),
            watch: None,
            handling: String::new(),
            waiting: false,
            gauge: Some(ConnectionGauge::new(shard)),
        };
        let socket = Rc::new_cyclic(|me| {
            RefCell::new(Socket {
                me: me.clone(),
                ..socket
            })
        });
        socket.borrow_mut().schedule();
        HocuspocusHandler { socket }
    }
}

impl Handler for HocuspocusHandler {
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refusal> {
        if opcode != Opcode::Binary {
            return Err(Refusal::NotBinary);
        }
        let incoming = hocuspocus::decode(payload).map_err(Refusal::Hocuspocus)?;
        let mut socket = self.socket.borrow_mut();
        let Incoming::Document { address, message } = incoming else {
            // A v4 pong: its arrival is the sign of life (and costs a token, as any message).
            return socket.charge(1);
        };
        socket.handling.push_str(address);
        let handled = socket.on_document(&self.socket, address, message, payload);
        socket.handling.clear();
        handled
    }

    fn on_batch_end(&mut self) -> Result<(), Refusal> {
        for document in self.socket.borrow_mut().documents.values_mut() {
            if let Document::Open(Open {
                place: Place::Local(membership),
                ..
            }) = document
            {
                membership.flush();
            }
        }
        Ok(())
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut socket = self.socket.borrow_mut();
        let mut ready = Poll::Ready(());
        for document in socket.documents.values_mut() {
            let Document::Open(open) = document else {
                continue;
            };
            match &mut open.place {
                Place::Local(membership) => {
                    // Every lagging room is polled, so each wakes the session when it
                    // catches up.
                    let caught_up = membership.poll_caught_up(cx);
                    if caught_up.is_pending() {
                        ready = Poll::Pending;
                    }
                }
                // Its messages wait in its owner's bounded queue, and its room may be behind.
                Place::Remote(remote) => {
                    if remote.poll_reading(cx).is_pending() {
                        ready = Poll::Pending;
                    }
                }
            }
        }
        let Socket { shard, waiting, .. } = &mut *socket;
        count_wait(shard, waiting, ready)
    }

    fn on_panic(&mut self) {
        // `try_`: the panic may have unwound out of a borrow of the socket.
        let Ok(mut socket) = self.socket.try_borrow_mut() else {
            return;
        };
        let handling = std::mem::take(&mut socket.handling);
        for (address, document) in socket.documents.iter_mut() {
            if let Document::Open(Open {
                place: Place::Local(membership),
                ..
            }) = document
            {
                // Unknown (a flush at the end of a read): every open document may be
                // half-changed.
                if handling.is_empty() || handling == address {
                    membership.reset();
                }
            }
        }
    }

    fn on_end(&mut self) {
        if let Ok(mut socket) = self.socket.try_borrow_mut() {
            socket.end();
        }
    }
}

/// A handler dropped without its end (a panic between the upgrade and the session) still
/// leaves its rooms and gives back its counts.
impl Drop for HocuspocusHandler {
    fn drop(&mut self) {
        self.on_end();
    }
}

impl Socket {
    fn bounds(&self) -> &HocuspocusConfig {
        &self.shard.config().hocuspocus
    }

    fn ended(&self) -> bool {
        self.gauge.is_none()
    }

    fn end(&mut self) {
        // Memberships leave their rooms before the counts they share are given back.
        self.documents.clear();
        self.counts.clear();
        self.gauge = None;
        self.stop_watching();
    }

    fn on_document(
        &mut self,
        this: &Rc<RefCell<Socket>>,
        address: &str,
        message: DocumentMessage<'_>,
        payload: &[u8],
    ) -> Result<(), Refusal> {
        // A local document's sync and awareness are weighed by their document (see
        // `Membership::on_message`); everything else here.
        let local_sync = matches!(
            (self.documents.get(address), message),
            (
                Some(Document::Open(Open {
                    place: Place::Local(_),
                    ..
                })),
                DocumentMessage::YMessage(_)
            )
        );
        if !local_sync {
            self.charge(message_weight(&message))?;
        }
        if let Some(Document::Open(_)) = self.documents.get(address) {
            return self.on_open(this, address, message);
        }
        let token = match message {
            DocumentMessage::Token {
                token,
                provider_version,
            } => {
                // Only a v4 provider knows the in-band ping; older ones fail on it.
                if provider_version.is_some_and(|v| major_version(v) >= 4) {
                    self.outbox.set_in_band_keepalive();
                }
                Some(token)
            }
            _ => None,
        };
        if token.is_some() && self.sessions_of(address) >= SESSIONS_PER_DOCUMENT_MAX {
            let documents_max = self.bounds().documents_max;
            if self.documents.get(address).is_none() && self.documents.len() >= documents_max {
                return Err(Refusal::HocuspocusDocuments(documents_max));
            }
            self.refuse(
                address,
                &Refusal::SessionsPerDocument(SESSIONS_PER_DOCUMENT_MAX),
            );
            return Ok(());
        }
        match self.documents.get_mut(address) {
            None => {
                if matches!(message, DocumentMessage::Close) {
                    return Ok(());
                }
                let documents_max = self.bounds().documents_max;
                if self.documents.len() >= documents_max {
                    return Err(Refusal::HocuspocusDocuments(documents_max));
                }
                self.documents.insert(address.into(), Document::waiting());
            }
            Some(Document::Refused) => match message {
                DocumentMessage::Token { .. } => {
                    self.documents.insert(address.into(), Document::waiting());
                }
                DocumentMessage::Close => {
                    self.documents.remove(address);
                    return Ok(());
                }
                // A refused provider goes on sending until it is attached again.
                _ => return Ok(()),
            },
            Some(_) => {}
        }
        let Some(Document::Waiting {
            queue,
            admitting,
            token: waiting_token,
        }) = self.documents.get_mut(address)
        else {
            unreachable!("made waiting above, and not open")
        };
        match (message, token) {
            (DocumentMessage::Close, _) => {
                self.forget_waiting(address);
            }
            (_, Some(token)) => {
                // A second token while the first is checked is not a new attempt.
                if admitting.is_none() {
                    *waiting_token = Some(token.into());
                    self.start_checks();
                }
            }
            (_, None) => {
                let bounds = &self.shard.config().hocuspocus;
                let (messages_max, bytes_max) =
                    (bounds.pending_messages_max, bounds.pending_bytes_max);
                if self.queued_messages + 1 > messages_max
                    || self.queued_bytes + payload.len() > bytes_max
                {
                    return Err(Refusal::HocuspocusQueue {
                        messages_max,
                        bytes_max,
                    });
                }
                self.queued_messages += 1;
                self.queued_bytes += payload.len();
                queue.push(payload.into());
            }
        }
        Ok(())
    }

    /// A message for an open document.
    fn on_open(
        &mut self,
        this: &Rc<RefCell<Socket>>,
        address: &str,
        message: DocumentMessage<'_>,
    ) -> Result<(), Refusal> {
        let Some(Document::Open(open)) = self.documents.get_mut(address) else {
            unreachable!("called for open documents")
        };
        let handled = match message {
            DocumentMessage::YMessage(m) => open.place.on_message(m, &mut self.rate),
            DocumentMessage::Token { token, .. } => {
                // One refresh at a time, within the socket's checks; a token past that is
                // dropped (the document stays open with the role it has).
                if !open.refreshing && self.checks_in_flight < CHECKS_IN_FLIGHT_MAX {
                    open.refreshing = true;
                    self.checks_in_flight += 1;
                    spawn_refresh(this, &self.shard, address, token, open.attempt);
                }
                Ok(())
            }
            DocumentMessage::Stateless(payload) => {
                let can_write = open.place.can_write();
                let (user, rate) = (&open.user, &mut self.rate);
                // A viewer's goes nowhere: outside sync the framing has no refusal to send
                // (a PermissionDenied would end the provider's authentication).
                side_messages::read(&self.shard, &open.key, user, can_write, payload, rate).map(
                    |out| {
                        if let Some(out) = out {
                            open.place.side_message(&out);
                        }
                    },
                )
            }
            DocumentMessage::Close => {
                self.close_open(address);
                let prefix = hocuspocus::address_prefix(address);
                self.outbox.push(&binary_frame(&hocuspocus::encode_close(
                    &prefix,
                    PROVIDER_CLOSED,
                )));
                return Ok(());
            }
        };
        match handled {
            Ok(()) => Ok(()),
            // The socket's own budgets: the whole connection is refused.
            Err(refusal @ (Refusal::MessageRate(_) | Refusal::OutOfMemory)) => Err(refusal),
            // Anything about this document closes only it.
            Err(refusal) => {
                self.close_document(address, &refusal);
                Ok(())
            }
        }
    }

    /// Closes an open document for `refusal`: it is told why (`07 "{code} {reason}"`) and
    /// leaves its room; the socket stays open.
    fn close_document(&mut self, address: &str, refusal: &Refusal) {
        let (code, reason) = refusal.close();
        let stats = self.shard.my_stats();
        stats::add(&stats.messages_refused_total, 1);
        stats.count_rejection(code);
        let prefix = hocuspocus::address_prefix(address);
        let close = hocuspocus::encode_close(&prefix, &format!("{code} {reason}"));
        self.close_open(address);
        self.outbox.push(&binary_frame(&close));
    }

    /// Leaves an open document's room and gives back its share of the app's count.
    fn close_open(&mut self, address: &str) {
        self.documents.remove(address);
        if !self.any_open() {
            self.unauthenticated_since.get_or_insert_with(Instant::now);
        }
        self.schedule();
    }

    /// For a session address (`name\0session`), the socket's other addresses of the same
    /// document that are open or waiting for their token; 0 for a plain address.
    fn sessions_of(&self, address: &str) -> usize {
        if !address.contains('\0') {
            return 0;
        }
        let name = document_name(address);
        self.documents
            .0
            .iter()
            .filter(|(other, d)| {
                &**other != address
                    && document_name(other) == name
                    && !matches!(d, Document::Refused)
            })
            .count()
    }

    fn any_open(&self) -> bool {
        self.documents
            .values()
            .any(|d| matches!(d, Document::Open(_)))
    }

    /// Takes `weight` from the socket's message rate (1008 past it).
    fn charge(&mut self, weight: u32) -> Result<(), Refusal> {
        if self.rate.admit(weight, crate::log::monotonic_ms()) {
            return Ok(());
        }
        let per_second = self.shard.config().websocket.messages_per_second;
        Err(Refusal::MessageRate(per_second))
    }

    /// Starts the checks of waiting tokens, as far as the socket's checks in flight allow.
    fn start_checks(&mut self) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        for (address, document) in self.documents.iter_mut() {
            if self.checks_in_flight >= CHECKS_IN_FLIGHT_MAX {
                return;
            }
            if let Document::Waiting {
                admitting: admitting @ None,
                token: token @ Some(_),
                ..
            } = document
            {
                let token = token.take().expect("matched Some");
                self.attempts += 1;
                self.checks_in_flight += 1;
                *admitting = Some(self.attempts);
                spawn_admission(&this, &self.shard, address, &token, self.attempts);
            }
        }
    }

    /// A check ended (however: its task gives its place back last).
    fn check_ended(&mut self) {
        self.checks_in_flight -= 1;
        if !self.ended() {
            self.start_checks();
        }
    }

    /// When the socket's timer must next fire: while no document is open, at the auth
    /// deadline (a socket with no token is otherwise held open for free); else at the
    /// earliest token expiry not yet asked about; `None` when nothing is due.
    fn next_due(&self) -> Option<Instant> {
        if let Some(since) = self.unauthenticated_since {
            return Some(since + Duration::from_millis(self.bounds().auth_timeout_ms));
        }
        let now_s = crate::log::unix_ms() / 1000;
        let earliest_s = self
            .documents
            .values()
            .filter_map(|d| match d {
                Document::Open(open) if !open.refresh_asked => Some(open.expires_at_s),
                _ => None,
            })
            .min()?;
        Some(Instant::now() + Duration::from_secs(earliest_s.saturating_sub(now_s)))
    }

    /// Sets the socket's one timer for [`Socket::next_due`] (none when nothing is due; an
    /// earlier one stays, and sets the next when it fires).
    fn schedule(&mut self) {
        let due = if self.ended() { None } else { self.next_due() };
        match (due, &self.watch) {
            (Some(at), Some((_, set))) if *set <= at => return,
            (None, None) => return,
            _ => {}
        }
        self.stop_watching();
        let Some(at) = due else {
            return;
        };
        let socket = self.me.clone();
        let stats_of = self.shard.clone();
        let fire = async move {
            glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
            if let Some(socket) = socket.upgrade() {
                let mut s = socket.borrow_mut();
                s.watch = None;
                s.on_due();
            }
        };
        let task = glommio::spawn_local_into(
            async move {
                super::contain::future(stats_of.my_stats(), "hocuspocus_timer", fire).await;
            },
            self.shard.admission_queue,
        )
        .expect("the admission task queue lives as long as the shard");
        self.watch = Some((task.detach(), at));
    }

    /// The timer fired: a socket with no document open past its deadline is closed; each
    /// open document whose token expired is asked for a new one (`02 00`: a v3 or v4
    /// provider answers with its token, which is checked as a refresh; a v2 one ignores it).
    fn on_due(&mut self) {
        if self.ended() {
            return;
        }
        if let Some(since) = self.unauthenticated_since {
            let timeout = Duration::from_millis(self.bounds().auth_timeout_ms);
            if since.elapsed() >= timeout {
                let refusal = Refusal::AuthTimeout(timeout.as_millis() as u64);
                let (code, reason) = refusal.close();
                self.outbox.close(code, &reason);
                return;
            }
        }
        let now_s = crate::log::unix_ms() / 1000;
        let mut asks = Vec::new();
        for (address, document) in self.documents.iter_mut() {
            if let Document::Open(open) = document {
                if !open.refresh_asked && open.expires_at_s <= now_s {
                    open.refresh_asked = true;
                    let prefix = hocuspocus::address_prefix(address);
                    asks.push(binary_frame(&hocuspocus::encode_token_request(&prefix)));
                }
            }
        }
        if !asks.is_empty() {
            self.outbox.push_all(&asks);
        }
        self.schedule();
    }

    /// Cancels the socket's timer.
    fn stop_watching(&mut self) {
        if let Some((watch, _)) = self.watch.take() {
            watch.cancel();
        }
    }

    /// Forgets a waiting document and what it queued.
    fn forget_waiting(&mut self, address: &str) {
        if let Some(Document::Waiting { queue, .. }) = self.documents.remove(address) {
            self.unqueue(&queue);
        }
    }

    fn unqueue(&mut self, queue: &[Box<[u8]>]) {
        self.queued_messages -= queue.len();
        self.queued_bytes -= queue.iter().map(|m| m.len()).sum::<usize>();
    }

    /// The admission `attempt` of the document at `address` is still wanted.
    fn still_admitting(&self, address: &str, attempt: u64) -> bool {
        !self.ended()
            && matches!(self.documents.get(address),
                Some(Document::Waiting { admitting: Some(a), .. }) if *a == attempt)
    }

    /// The admission `attempt` of the document at `address` ended: it opens (its queued
    /// messages replayed into the room, contained like a session's), or is refused, or, when
    /// a queued message refused the whole socket, the socket closes.
    fn admitted(
        &mut self,
        this: &Rc<RefCell<Socket>>,
        address: &str,
        attempt: u64,
        admitted: Result<Admitted, Refusal>,
    ) {
        let stats = self.shard.clone();
        let opened = match admitted {
            Ok(admitted) => super::contain::call(stats.my_stats(), "hocuspocus_open", || {
                self.open(this, address, admitted, attempt)
            })
            .unwrap_or_else(|| {
                self.reset_document(address);
                Err(Refusal::Panicked)
            }),
            Err(refusal) => Err(refusal),
        };
        match opened {
            Ok(()) => {}
            Err(refusal)
                if matches!(self.documents.get(address), Some(Document::Waiting { .. })) =>
            {
                self.refuse(address, &refusal);
            }
            Err(refusal) => {
                let (code, reason) = refusal.close();
                self.outbox.close(code, &reason);
            }
        }
    }

    /// A refresh of the document opened by `attempt` was checked: its role applies (and its
    /// `exp` is watched), or the document is closed (and refused) for the reason, unless the
    /// reason is only that the token expired: a session outlives its token (PRODUCT.md 3),
    /// so a provider with a fixed token keeps its documents. A refresh of an earlier
    /// opening of the same address changes nothing.
    fn refreshed(&mut self, address: &str, attempt: u64, checked: Checked) {
        let Some(Document::Open(open)) = self.documents.get_mut(address) else {
            return;
        };
        if open.attempt != attempt {
            return;
        }
        open.refreshing = false;
        let refusal = match checked {
            Ok(refreshed) if refreshed.key == open.key => {
                let expires_at_s = refreshed.expires_at_s;
                let can_write = if refreshed.authorized {
                    refreshed.can_write
                } else {
                    refreshed.can_write && open.place.can_write()
                };
                open.place.set_grant(can_write, refreshed.signing_key);
                // Asked again only about a later `exp` (a token still within the leeway
                // would otherwise be asked for at once, again and again).
                if expires_at_s > open.expires_at_s {
                    open.expires_at_s = expires_at_s;
                    open.refresh_asked = false;
                    self.schedule();
                }
                return;
            }
            // Not the token's fault: the server was busy or failed checking it. The session
            // goes on with the role it has (it would outlive the token anyway).
            Err(
                Refusal::Token(TokenRefusal::Invalid("expired"))
                | Refusal::VerifierBusy
                | Refusal::AdmissionPanicked,
            ) => return,
            // Another tenant's or app's token cannot take over this document.
            Ok(_) => Refusal::DocNotGranted,
            Err(refusal) => refusal,
        };
        self.close_open(address);
        self.refuse(address, &refusal);
    }

    /// After a panic while the document was handled: its room may be half-changed, so it
    /// starts over (which closes its subscribers, this socket too, with 1011).
    fn reset_document(&mut self, address: &str) {
        if let Some(Document::Open(Open {
            place: Place::Local(membership),
            ..
        })) = self.documents.get_mut(address)
        {
            membership.reset();
        }
    }

    /// The document is refused: it is told why (the reason led by the close code), its
    /// queue is dropped, and its later messages are too until it sends a token again.
    fn refuse(&mut self, address: &str, refusal: &Refusal) {
        let (code, reason) = refusal.close();
        self.shard.my_stats().count_rejection(code);
        crate::log::info("document_refused", &[("code", &code), ("reason", &reason)]);
        if let Some(Document::Waiting { queue, .. }) =
            self.documents.insert(address.into(), Document::Refused)
        {
            self.unqueue(&queue);
        }
        let prefix = hocuspocus::address_prefix(address);
        let denied = hocuspocus::encode_permission_denied(&prefix, &format!("{code} {reason}"));
        self.outbox.push(&binary_frame(&denied));
    }

    /// The document is admitted: it is told so, joins its room, and what it queued is
    /// handled as if it came now.
    fn open(
        &mut self,
        this: &Rc<RefCell<Socket>>,
        address: &str,
        (joining, count, key, expires_at_s, user): Admitted,
        attempt: u64,
    ) -> Result<(), Refusal> {
        let place = match joining {
            Joining::Local(claim) => {
                Place::Local(claim.join(self.outbox.clone(), Framing::Hocuspocus { address })?)
            }
            // Its owner sent Authenticated and the room's first frames.
            Joining::Remote(remote) => Place::Remote(remote),
        };
        let Some(Document::Waiting { queue, .. }) = self.documents.insert(
            address.into(),
            Document::Open(Open {
                place,
                _count: count,
                key,
                refreshing: false,
                expires_at_s,
                refresh_asked: false,
                attempt,
                user,
            }),
        ) else {
            unreachable!("admitted while waiting")
        };
        self.unqueue(&queue);
        self.unauthenticated_since = None;
        self.schedule();
        for payload in queue.iter() {
            let Ok(Incoming::Document { message, .. }) = hocuspocus::decode(payload) else {
                unreachable!("queued messages were decoded")
            };
            self.handling.push_str(address);
            let handled = self.on_open(this, address, message);
            self.handling.clear();
            handled?;
            if !matches!(self.documents.get(address), Some(Document::Open(_))) {
                break;
            }
        }
        // As at the end of a read: what the queue staged is relayed now.
        if let Some(Document::Open(Open {
            place: Place::Local(membership),
            ..
        })) = self.documents.get_mut(address)
        {
            membership.flush();
        }
        Ok(())
    }
}

impl DocumentEvents for Socket {
    fn document_closed(&mut self, address: &str, link: LinkId, refusal: &Refusal) {
        // Only if it is still the same link (not closed and opened again meanwhile).
        if let Some(Document::Open(Open {
            place: Place::Remote(remote),
            ..
        })) = self.documents.get(address)
        {
            if remote.id() == link {
                self.close_document(address, refusal);
            }
        }
    }
}

/// Runs a token check for the document at `address` on the shard's admission queue (a
/// signature, registry calls), its panics contained; `then` gets the socket and the outcome,
/// and the check's place goes back last.
fn spawn_check<T: 'static>(
    this: &Rc<RefCell<Socket>>,
    shard: &Rc<Shard>,
    what: &'static str,
    check: impl std::future::Future<Output = Result<T, Refusal>> + 'static,
    then: impl FnOnce(&mut Socket, &Rc<RefCell<Socket>>, Result<T, Refusal>) + 'static,
) {
    let (socket, stats_of) = (this.clone(), shard.clone());
    let task = async move {
        let checked = super::contain::future(stats_of.my_stats(), what, check)
            .await
            .unwrap_or(Err(Refusal::AdmissionPanicked));
        let mut s = socket.borrow_mut();
        then(&mut s, &socket, checked);
        s.check_ended();
    };
    spawn_detached(shard.admission_queue, task);
}

/// Checks a document's token and opens it.
fn spawn_admission(
    this: &Rc<RefCell<Socket>>,
    shard: &Rc<Shard>,
    address: &str,
    token: &str,
    attempt: u64,
) {
    let (socket, owned, token) = (this.clone(), address.to_owned(), token.to_owned());
    let check = async move { admit(&socket, &owned, token).await };
    let address = address.to_owned();
    spawn_check(
        this,
        shard,
        "hocuspocus_admission",
        check,
        move |s, socket, admitted| {
            // Otherwise closed, or the socket ended, meanwhile: what was taken is given back as
            // it drops.
            if s.still_admitting(&address, attempt) {
                s.admitted(socket, &address, attempt, admitted);
            }
        },
    );
}

/// What admitting a document took: its room (on this shard not joined yet), its share of the
/// app's connection count, its key and its token's `exp`.
type Admitted = (Joining, Rc<ConnectionCount>, String, u64, Arc<User>);

enum Joining {
    Local(RoomClaim),
    /// Joined on the owner shard.
    Remote(RemoteDocument),
}

/// Verifies the token for the document at `address` exactly as an upgrade's, then takes the
/// app's connection count (once per socket) and opens the room.
async fn admit(
    socket: &Rc<RefCell<Socket>>,
    address: &str,
    token: String,
) -> Result<Admitted, Refusal> {
    let shard = socket.borrow().shard.clone();
    let (identity, admission, owner) = decided(&shard, socket, address, token).await?;
    let admission = authorize(&shard, &identity, document_name(address), admission).await?;
    let expires_at_s = identity.expires_at_s;
    let count = app_count(socket, &shard, &admission.app, &admission.limits).await?;
    let (key, user) = (admission.key.clone(), admission.user.clone());
    let joining = if owner == shard.id {
        Joining::Local(RoomClaim::open(&shard, admission).await?)
    } else {
        let outbox = socket.borrow().outbox.clone();
        let events: Rc<RefCell<dyn DocumentEvents>> = socket.clone();
        let events = Rc::downgrade(&events);
        Joining::Remote(
            RemoteDocument::join(&shard, owner, address, admission, outbox, events).await?,
        )
    };
    Ok((joining, count, key, expires_at_s, user))
}

/// The socket's share of `app`'s connection count: the one its open documents hold, or a
/// new one (4004 past `maxConnections`).
async fn app_count(
    socket: &Rc<RefCell<Socket>>,
    shard: &Rc<Shard>,
    app: &str,
    limits: &auth::claims::Limits,
) -> Result<Rc<ConnectionCount>, Refusal> {
    let held = |s: &Socket| {
        let (_, count) = s.counts.iter().find(|(a, _)| a == app)?;
        count.upgrade()
    };
    if let Some(count) = held(&socket.borrow()) {
        return Ok(count);
    }
    let count = ConnectionCount::acquire(shard, app, limits).await?;
    let mut s = socket.borrow_mut();
    // Another document of the app may have taken one meanwhile: this one then goes back.
    if let Some(held) = held(&s) {
        return Ok(held);
    }
    let count = Rc::new(count);
    // Bounded by the socket's documents: apps whose documents all closed are forgotten.
    s.counts.retain(|(_, c)| c.strong_count() > 0);
    s.counts.push((app.to_owned(), Rc::downgrade(&count)));
    Ok(count)
}

/// A token checked as an upgrade's is (its signature and claims), then decided on for the
/// document at `address` from the socket's `Origin` (see `admission::decide`), before the
/// app's authorization callback.
async fn decided(
    shard: &Rc<Shard>,
    socket: &Rc<RefCell<Socket>>,
    address: &str,
    token: String,
) -> Result<(Identity, Admission, usize), Refusal> {
    if token.is_empty() {
        return Err(Refusal::MissingToken);
    }
    let identity = match shard.verify_token(token).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(refusal)) => return Err(Refusal::Token(refusal)),
        Err(super::offload::Busy) => return Err(Refusal::VerifierBusy),
    };
    let name = document_name(address);
    let s = socket.borrow();
    let (admission, owner) = decide(&identity, name, name, s.origin.as_deref(), shard.shards)?;
    Ok((identity, admission, owner))
}

/// A refreshed token, checked.
struct Refreshed {
    /// The document it names (`{tenant}::{app}::{document}`).
    key: String,
    can_write: bool,
    /// The app's authorization callback decided `can_write` (false: it gave no answer, and
    /// the token's role can only lower the document's).
    authorized: bool,
    expires_at_s: u64,
    signing_key: Option<Arc<str>>,
}

/// A refreshed token, or why it is refused.
type Checked = Result<Refreshed, Refusal>;

/// Checks a refreshed token for the document opened by `attempt`: valid for the same
/// document, its role applies from now on; refused, the document is closed with the reason.
fn spawn_refresh(
    this: &Rc<RefCell<Socket>>,
    shard: &Rc<Shard>,
    address: &str,
    token: &str,
    attempt: u64,
) {
    let (socket, owned, token) = (this.clone(), address.to_owned(), token.to_owned());
    let shard_of = shard.clone();
    let check = async move {
        let (identity, admission, _) = decided(&shard_of, &socket, &owned, token).await?;
        let key = admission.key.clone();
        let signing_key = admission.signing_key.clone();
        let token_can_write = admission.can_write;
        let (can_write, authorized) =
            match authorize(&shard_of, &identity, document_name(&owned), admission).await {
                Ok(admission) => (admission.can_write, true),
                // The app said nothing: the token's role may still lower the document's.
                Err(Refusal::AuthorizationUnavailable) => (token_can_write, false),
                Err(refusal) => return Err(refusal),
            };
        Ok(Refreshed {
            key,
            can_write,
            authorized,
            expires_at_s: identity.expires_at_s,
            signing_key,
        })
    };
    let address = address.to_owned();
    spawn_check(
        this,
        shard,
        "hocuspocus_refresh",
        check,
        move |s, _, checked: Checked| s.refreshed(&address, attempt, checked),
    );
}

/// What a message costs against the socket's rate, when its document does not weigh it: a
/// token (a signature check, registry calls) or a sync step 1 or awareness query (the owner
/// encodes a whole document or every presence) as much as `message_rate` weighs heavy
/// messages, anything else one.
fn message_weight(message: &DocumentMessage<'_>) -> u32 {
    let heavy = match message {
        DocumentMessage::Token { .. } => true,
        DocumentMessage::YMessage(m) => {
            m.starts_with(&[protocol::MESSAGE_SYNC, protocol::SYNC_STEP1])
                || m.first() == Some(&protocol::MESSAGE_QUERY_AWARENESS)
        }
        DocumentMessage::Stateless(_) | DocumentMessage::Close => false,
    };
    if heavy {
        HEAVY_MESSAGE_WEIGHT
    } else {
        1
    }
}

/// The document an address names: itself, or for a v4 provider with `sessionAwareness`
/// (`name\0session`) the part before the NUL; the room then answers on the whole address.
fn document_name(address: &str) -> &str {
    address.split('\0').next().unwrap_or(address)
}

/// The major version of a provider version string (`"4.8.0"` is 4); 0 if it has none.
fn major_version(version: &str) -> u32 {
    let major = version.split('.').next().unwrap_or("");
    major.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{document_name, major_version};

    #[test]
    fn a_session_address_names_its_document() {
        assert_eq!(document_name("doc"), "doc");
        assert_eq!(document_name("doc\0session-1"), "doc");
        assert_eq!(document_name("\0x"), "");
    }

    #[test]
    fn provider_versions_are_read_by_their_major_number() {
        assert_eq!(major_version("4.8.0"), 4);
        assert_eq!(major_version("10.0.0-beta.1"), 10);
        assert_eq!(major_version("3"), 3);
        for not_a_version in ["", "v4.8.0", "probe", "4x.1", "99999999999999999999"] {
            assert_eq!(major_version(not_a_version), 0, "{not_a_version:?}");
        }
    }
}
