//! The front door of every connection: read one request head (bounded in bytes and time),
//! answer plain HTTP here, and start or hand off WebSocket sessions.

use super::admission::{decide, Admission, Handed};
use super::api;
use super::authorization::authorize;
use super::handler::Handler;
use super::handlers::{DocumentHandler, EchoHandler};
use super::hocuspocus::HocuspocusHandler;
use super::respond::{linger, refuse_http, refuse_upgrade, within};
use super::shard::{spawn_detached, Shard};
use super::socket::{self, SharedStream};
use super::stats;
use crate::auth;
use crate::http::request::{parse_request, percent_decode, HttpError, Request};
use crate::outbox::Outbox;
use crate::refusal::Refusal;
use crate::sync::document;
use crate::ws::handshake::{self, check_upgrade};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Serves one accepted connection, on the shard's admission task queue: reads and answers
/// its request, and if it was admitted to a session, starts the session as a task of its own
/// on the sessions' queue and ends. A connection to a document owned by another shard is
/// handed there with the decision made here (see [`serve_handed`]).
///
/// So a storm of handshakes takes the admission queue's share of the core, not the live
/// sessions'; and admission's several KiB of transient state (the request head, the token,
/// registry calls) are gone with this task, so an idle connection's task holds only its
/// session.
///
/// A panic anywhere in admission (token verification, routing, registry calls) ends only
/// this connection: it is answered 500 and closed. `peer` is the client's address (a TLS
/// connection's plaintext comes through a socket pair, which has none).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: IpAddr) {
    let stream: SharedStream = Rc::new(RefCell::new(stream));
    // Made in the call: bound to a local first, the admission was held twice in this
    // function's state (measured: 10,976 against 5,584 bytes, rustc 1.95).
    let admitted = super::contain::future(
        shard.my_stats(),
        "admission",
        admit(shard.clone(), stream.clone(), peer),
    )
    .await;
    start_session(shard, stream, admitted).await;
}

/// Serves a connection another shard accepted and decided on (token verified, document
/// checked, the upgrade's answer computed): this shard, the document's owner, only joins it
/// to its room (the limits that count there) and writes the 101. So nothing of the request
/// is read or checked twice.
pub async fn serve_handed(shard: Rc<Shard>, stream: TcpStream, handed: Handed) {
    let stream: SharedStream = Rc::new(RefCell::new(stream));
    // Made in the call, as `serve`'s.
    let admitted = super::contain::future(
        shard.my_stats(),
        "admission",
        join_handed(&shard, &stream, handed),
    )
    .await;
    start_session(shard, stream, admitted).await;
}

/// `serve_handed`'s admission: joins the document and writes the 101.
async fn join_handed(shard: &Rc<Shard>, stream: &SharedStream, handed: Handed) -> Option<Admitted> {
    let _counted = InAdmission::new(shard.my_stats());
    // The one check that can have changed since the decision.
    if shard.shared.draining() {
        refuse_http(shard, stream, &Refusal::Draining).await;
        return None;
    }
    let Handed {
        accept,
        protocol,
        leftover,
        admission,
    } = handed;
    let session = join_document(shard, accept, protocol, leftover, Instant::now(), admission).await;
    upgrade(shard, stream, session).await
}

/// Pending once without waking itself: the task runs on when something else wakes it.
async fn next_wake() {
    let mut first = true;
    std::future::poll_fn(|_| {
        if std::mem::take(&mut first) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

/// How long a session runs on the admission queue at least, before it moves to the
/// sessions' queue at its next wake (see `start_session`): long enough for a client's first
/// exchange on a busy shard.
const JOINING_PHASE: Duration = Duration::from_millis(100);

/// Runs the first moments of an admitted connection's session (its 101 written), then moves
/// it to a task of its own on the sessions' queue; or answers an admission's panic.
async fn start_session(shard: Rc<Shard>, stream: SharedStream, admitted: Option<Option<Admitted>>) {
    match admitted {
        Some(Some(Admitted {
            outbox,
            leftover,
            handler,
        })) => {
            let queue = shard.admission_queue;
            let stream = Rc::try_unwrap(stream)
                .expect("admission, which shared the stream, is over before its session starts");
            // Boxed, and made before any task's future so that only the box is inside it: a
            // task made around the arguments would keep them beside the box.
            let mut run = Box::pin(super::session::run(
                shard.clone(),
                stream,
                outbox,
                leftover,
                handler,
            ));
            // Its first exchange (the initial sync) is joining work like its handshake: it
            // runs on the admission queue, so a storm of joins takes that queue's share and
            // the live documents keep theirs; then the same future moves to a task on the
            // sessions' queue. Each phase is a small task of its own: the admission's (its
            // request and token, several KiB) ends here. Counts and places are given back by
            // values dropped as a panic unwinds. The session stays in its box throughout,
            // passed by pointer, so no task holds it inline.
            let joining = async move {
                let stats = shard.my_stats();
                let phase = futures_lite::future::or(
                    async {
                        (&mut run).await;
                        false
                    },
                    async {
                        glommio::timer::sleep(JOINING_PHASE).await;
                        true
                    },
                );
                if super::contain::future(stats, "session", phase).await != Some(true) {
                    return;
                }
                // Not at once: a storm's sessions would all move `JOINING_PHASE` after they
                // came, thousands of tasks in one run of the sessions' queue (75 ms were
                // seen). `run`'s last poll left its wakers with this task, so it moves when
                // the session next has something to do. An idle one stays here, in this
                // larger task (about 80 bytes more per idle connection, BENCHMARKS.md).
                next_wake().await;
                let session_queue = shard.session_queue;
                let live = async move {
                    super::contain::future(shard.my_stats(), "session", run).await;
                };
                spawn_detached(session_queue, live);
            };
            spawn_detached(queue, joining);
        }
        Some(None) => {}
        // The 101 is admission's last step, so the panic came before it. If an answer was
        // already sent, its socket's write side is shut down and this write just fails.
        None => refuse_http(&shard, &stream, &Refusal::AdmissionPanicked).await,
    }
}

/// Reads and answers the request; returns the session to run, if one was admitted here
/// (its 101 written).
async fn admit(shard: Rc<Shard>, stream: SharedStream, peer: IpAddr) -> Option<Admitted> {
    let _counted = InAdmission::new(shard.my_stats());
    // One deadline for the whole exchange, from the accept (no later than the first byte):
    // a client cannot stretch it by sending its head and body just in time each.
    let deadline = Instant::now() + Duration::from_millis(shard.config().http.request_timeout_ms);
    if shard.out_of_sockets() {
        refuse_http(&shard, &stream, &Refusal::OutOfSockets).await;
        return None;
    }
    let limit = shard.config().http.head_bytes_max;
    let head = match within(deadline, read_head(&shard, &stream, limit)).await {
        None => {
            refuse_http(&shard, &stream, &Refusal::RequestTimeout).await;
            return None;
        }
        Some(Err(HeadError::Io)) => return None,
        Some(Err(HeadError::Http(e))) => {
            refuse_http(&shard, &stream, &Refusal::Http(e)).await;
            return None;
        }
        Some(Ok(head)) => head,
    };
    let req = parse_request(&head, limit)
        .ok()
        .flatten()
        .expect("read_head returned a whole head");
    let leftover = head[req.head_len..].to_vec();
    let upgrading = handshake::is_upgrade(&req);
    let started = Instant::now();
    let routed = {
        // Pinned here, so that waiting with a deadline or without holds it once.
        let exchange = std::pin::pin!(route(
            &shard, &stream, &req, peer, leftover, started, deadline
        ));
        if upgrading {
            // An upgrade's admission takes registry counts it must give back, so it is never
            // cut short; its steps are bounded (the registry by `registry_timeout_ms`).
            exchange.await
        } else {
            // A plain exchange holds nothing to give back and can end anywhere: its body must
            // be in by the deadline (408), and its answer then has one linger to leave.
            let backstop = deadline + linger(&shard);
            within(backstop, exchange).await.unwrap_or(Routed::Done)
        }
    };
    match routed {
        Routed::Done => None,
        Routed::Session(session) => {
            drop(req);
            drop(head);
            upgrade(&shard, &stream, session).await
        }
        Routed::HandOff(owner, handed) => {
            drop(req);
            drop(head);
            shard.hand_off(owner, &stream, *handed).await;
            None
        }
    }
}

/// Where a request ends up.
enum Routed {
    /// Answered (or refused) here.
    Done,
    /// Admitted: the session to run.
    Session(Session),
    /// The document lives on another shard: hand the connection over, decided.
    HandOff(usize, Box<Handed>),
}

/// Counts its socket in the shard's `admissions` for as long as it lives: it is dropped on
/// every way out of an admission.
pub(super) struct InAdmission<'s>(&'s stats::ShardStats);

impl<'s> InAdmission<'s> {
    pub(super) fn new(stats: &'s stats::ShardStats) -> Self {
        stats::add(&stats.admissions, 1);
        InAdmission(stats)
    }
}

impl Drop for InAdmission<'_> {
    fn drop(&mut self) {
        stats::sub(&self.0.admissions, 1);
    }
}

enum HeadError {
    Io,
    Http(HttpError),
}

/// Reads until a whole request head is in, through the shard's scratch buffer: the head
/// kept is only as large as what arrived (a few hundred bytes), where a buffer of
/// `head_bytes_max` held by each admission in flight left that much of the heap in holes
/// after a storm (free chunks of 184 bytes per connection at 19,000, 111 since:
/// BENCHMARKS.md).
async fn read_head(
    shard: &Shard,
    stream: &SharedStream,
    limit: usize,
) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::new();
    loop {
        match parse_request(&buf, limit) {
            Ok(Some(_)) => return Ok(buf),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Http(e)),
        }
        // Up to the limit (a head that reaches it was refused above): what follows the head
        // is the client's first frames.
        let room = limit - buf.len();
        let n = socket::read_with(stream, &shard.scratch, room)
            .await
            .map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        // Taken before anything else can run on this shard and use the scratch buffer.
        buf.extend_from_slice(&shard.scratch.borrow()[..n]);
    }
}

/// The client's address for per-IP limits (see `http::ip_rate::client_ip`).
fn client_ip(shard: &Shard, peer: IpAddr, req: &Request<'_>) -> IpAddr {
    crate::http::ip_rate::client_ip(
        peer,
        req.headers_named("x-forwarded-for"),
        &shard.config().trusted_proxies,
    )
}

/// Answers the request, or returns the session to start or the shard to hand it to.
async fn route(
    shard: &Rc<Shard>,
    stream: &SharedStream,
    req: &Request<'_>,
    peer: IpAddr,
    leftover: Vec<u8>,
    started: Instant,
    deadline: Instant,
) -> Routed {
    let upgrade = handshake::is_upgrade(req);
    let ip = client_ip(shard, peer, req);
    if !upgrade && api::answer(shard, stream, req, &leftover, ip, deadline).await {
        return Routed::Done;
    }
    if shard.config().echo_path.as_deref() == Some(req.path) {
        let Some(accept) = accept_or_refuse(shard, stream, req).await else {
            return Routed::Done;
        };
        let outbox = new_outbox(shard);
        let echo = EchoHandler {
            outbox: outbox.clone(),
        };
        return token_free_session(accept, leftover, started, outbox, Box::new(echo));
    }
    let found = auth::transport::extract(req);
    // The `?token=JWT/doc` quirk names the document after the token.
    let raw_name = match found.as_ref().and_then(|f| f.document.as_deref()) {
        Some(doc) if req.path == "/" => doc.to_owned(),
        _ => percent_decode(&req.path[1..]).unwrap_or_default(),
    };
    let door = if !upgrade && document::validate_name(&raw_name, true).is_err() {
        Some(Refusal::NotFound)
    } else if shard.shared.draining() {
        Some(Refusal::Draining)
    } else if shard.overloaded() {
        Some(Refusal::Overloaded)
    } else if !shard
        .shared
        .handshakes_per_ip
        .allow(ip, crate::log::unix_ms() / 1000)
    {
        crate::log::warn("rate_limited", &[("ip", &ip), ("budget", &"handshakes")]);
        Some(Refusal::RateLimited)
    } else {
        None
    };
    if let Some(refusal) = door {
        refuse_http(shard, stream, &refusal).await;
        return Routed::Done;
    }
    let Some(accept) = accept_or_refuse(shard, stream, req).await else {
        return Routed::Done;
    };
    if is_hocuspocus(shard, req, found.as_ref()) {
        // Each document brings its own token in the framing; the socket stays on this shard.
        let outbox = new_outbox(shard);
        let origin = req.header("origin").map(<[u8]>::to_vec);
        let handler = HocuspocusHandler::new(shard, outbox.clone(), origin);
        return token_free_session(accept, leftover, started, outbox, Box::new(handler));
    }
    let marker = found.as_ref().and_then(|f| f.marker);
    // Told as the refusal says: an HTTP status before any frame, or a close after the 101.
    let refuse = |refusal: Refusal| refuse_upgrade(shard, stream, &accept, marker, refusal);
    let Some(found) = found else {
        refuse(Refusal::MissingToken).await;
        return Routed::Done;
    };
    let identity = match shard.verify_token(found.token.clone()).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(refusal)) => {
            // A security event: never the token itself.
            crate::log::warn(
                "token_refused",
                &[("ip", &ip), ("reason", &refusal.reason())],
            );
            refuse(Refusal::Token(refusal)).await;
            return Routed::Done;
        }
        Err(super::offload::Busy) => {
            refuse(Refusal::VerifierBusy).await;
            return Routed::Done;
        }
    };
    let origin = req.header("origin");
    let named_as = &req.path[1..];
    let decided = match decide(&identity, &raw_name, named_as, origin, shard.shards) {
        Ok((admission, owner)) => authorize(shard, &identity, &raw_name, admission)
            .await
            .map(|admission| (admission, owner)),
        Err(refusal) => Err(refusal),
    };
    let (admission, owner) = match decided {
        Ok(decided) => decided,
        Err(refusal) => {
            refuse(refusal).await;
            return Routed::Done;
        }
    };
    if owner != shard.id {
        let handed = Handed {
            accept,
            protocol: marker,
            leftover,
            admission,
        };
        return Routed::HandOff(owner, Box::new(handed));
    }
    let session = join_document(shard, accept, marker, leftover, started, admission).await;
    Routed::Session(session)
}

/// Joins a y-websocket connection to its document on this, its owner, shard: the session
/// to run, or the close its admission was refused with.
async fn join_document(
    shard: &Rc<Shard>,
    accept: String,
    protocol: Option<&'static str>,
    leftover: Vec<u8>,
    started: Instant,
    admission: Admission,
) -> Session {
    let outbox = new_outbox(shard);
    let handler = DocumentHandler::join(shard.clone(), admission, outbox.clone())
        .await
        .map(|h| Box::new(h) as Box<dyn Handler>);
    Session {
        accept,
        protocol,
        leftover,
        started,
        outbox,
        handler,
    }
}

/// A session admitted without a token at the upgrade (no subprotocol to answer).
fn token_free_session(
    accept: String,
    leftover: Vec<u8>,
    started: Instant,
    outbox: Rc<Outbox>,
    handler: Box<dyn Handler>,
) -> Routed {
    Routed::Session(Session {
        accept,
        protocol: None,
        leftover,
        started,
        outbox,
        handler: Ok(handler),
    })
}

/// An upgrade whose path names no document (`/`, or `hocuspocus.path`) speaks the
/// Hocuspocus framing (PRODUCT.md 11); one naming a document (also `/?token=JWT/doc`) is
/// y-websocket.
fn is_hocuspocus(shard: &Shard, req: &Request<'_>, found: Option<&auth::transport::Found>) -> bool {
    let names_document = found.is_some_and(|f| f.document.is_some());
    !names_document
        && (req.path == "/" || shard.config().hocuspocus.path.as_deref() == Some(req.path))
}

fn new_outbox(shard: &Shard) -> Rc<Outbox> {
    Rc::new(Outbox::new(shard.config().websocket.outbound_bytes_max))
}

/// The `Sec-WebSocket-Accept` value, or `None` after answering a bad upgrade with its status.
async fn accept_or_refuse(
    shard: &Rc<Shard>,
    stream: &SharedStream,
    req: &Request<'_>,
) -> Option<String> {
    match check_upgrade(req) {
        Ok(accept) => Some(accept),
        Err(e) => {
            refuse_http(shard, stream, &Refusal::Handshake(e)).await;
            None
        }
    }
}

/// An admitted upgrade: what the 101 needs, what came with the request, and the handler
/// (or the close code its admission was refused with).
struct Session {
    accept: String,
    protocol: Option<&'static str>,
    leftover: Vec<u8>,
    started: Instant,
    outbox: Rc<Outbox>,
    handler: Result<Box<dyn Handler>, Refusal>,
}

/// A session whose 101 is written: what it runs with.
struct Admitted {
    outbox: Rc<Outbox>,
    leftover: Vec<u8>,
    handler: Box<dyn Handler>,
}

/// Writes the 101, or, for a refused admission, closes with its code.
async fn upgrade(shard: &Rc<Shard>, stream: &SharedStream, session: Session) -> Option<Admitted> {
    let Session {
        accept,
        protocol,
        leftover,
        started,
        outbox,
        handler,
    } = session;
    match handler {
        Ok(mut handler) => {
            let switching = handshake::switching_protocols(&accept, protocol);
            if socket::write_all(stream, &switching).await.is_err() {
                super::contain::end(shard.my_stats(), handler.as_mut());
                return None;
            }
            shard.my_stats().observe_handshake(started.elapsed());
            Some(Admitted {
                outbox,
                leftover,
                handler,
            })
        }
        Err(refusal) => {
            refuse_upgrade(shard, stream, &accept, protocol, refusal).await;
            None
        }
    }
}
