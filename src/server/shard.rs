//! One shard: its listener, the documents it owns, its connections' liveness, and the
//! mesh it receives handed-off connections on.

use super::link::Mesh;
use super::shared::Shared;
use super::socket::SharedStream;
use super::stats::{self, ShardStats};
use crate::auth::verify::Identity;
use crate::config::Config;
use crate::outbox::{shared_frame, Frame, Outbox};
use crate::refusal::Refusal;
use crate::registry::{Claim, Exceeded, NodeInfo, Unavailable};
use crate::sync::room::{Room, RoomConfig};
use crate::sync::update_check::UpdateLimits;
use crate::ws::frame::Opcode;
use crate::ws::message::MessageLimits;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A connection moving to its document's owner shard: the socket, the bytes already read and
/// the identity its token was verified to.
pub struct Handoff {
    pub fd: OwnedFd,
    pub head: Vec<u8>,
    pub identity: Identity,
}

pub struct Setup {
    pub addr: SocketAddr,
    /// The node's first listening socket, already bound to `addr`: one shard takes it, the
    /// others bind beside it. Holding it from the start leaves no moment in which the
    /// resolved port is free for another process to take.
    pub first_listener: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
    pub shared: Arc<Shared>,
    pub shards: usize,
    pub stats: Arc<[ShardStats]>,
    pub mesh: MeshBuilder<Mesh, Full>,
    pub ready: mpsc::Sender<Result<(), String>>,
}

/// Why a document cannot be opened here.
#[derive(Debug, Clone)]
pub enum RoomRefusal {
    /// It lives on another node (4009).
    Elsewhere(NodeInfo),
    /// The app's `maxDocuments` (4005).
    DocumentLimit(Exceeded),
    /// The registry did not answer (1013).
    Unavailable(String),
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
    rooms: &'a RefCell<HashMap<String, RoomState>>,
    key: &'a str,
    pending: Rc<Pending>,
}

impl<'a> PinInFlight<'a> {
    fn start(rooms: &'a RefCell<HashMap<String, RoomState>>, key: &'a str) -> Self {
        let pending = Rc::new(Pending::default());
        rooms
            .borrow_mut()
            .insert(key.to_owned(), RoomState::Pending(pending.clone()));
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

struct RoomEntry {
    room: Rc<RefCell<Room>>,
    /// `{tenant}::{app}`: whose document count this room holds.
    app: String,
    /// Bumped whenever the room empties; a grace timer only frees the room it was set for.
    emptied: u64,
}

/// A moment, to the millisecond, in 4 bytes (an `Instant` takes 16, and every connection
/// holds five): the process's monotonic milliseconds, wrapping every 49 days, which is far
/// longer than any interval measured with them (timeouts of seconds to minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(std::num::NonZeroU32);

impl Stamp {
    pub fn now() -> Stamp {
        // The lowest bit set, so never zero (`Option<Stamp>` is 4 bytes too); still
        // non-decreasing.
        let ms = crate::log::monotonic_ms() as u32 | 1;
        Stamp(std::num::NonZeroU32::new(ms).expect("the lowest bit is set"))
    }

    /// Time from `earlier` to this moment.
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_millis(u64::from(self.0.get().wrapping_sub(earlier.0.get())))
    }
}

/// What the keepalive sweep needs to know of a connection.
pub struct Liveness {
    pub outbox: Rc<Outbox>,
    /// The socket, to shut down when a closing peer does not take its close frame in time.
    pub fd: RawFd,
    /// When the sweep first saw the outbox closed.
    pub closing_since: Cell<Option<Stamp>>,
    pub last_rx: Cell<Stamp>,
    pub last_ping: Cell<Stamp>,
    /// Since when a frame or fragmented message has been incomplete without progress
    /// (`None`: nothing incomplete); see `session`.
    pub incomplete_since: Cell<Option<Stamp>>,
    /// How far the client had taken what was sent to it when the sweep last saw that move
    /// (or the outbox empty), and when: a client that stops reading a frame larger than the
    /// outbound budget (whole documents are) is not caught by the budget, and would pin it.
    pub written_mark: Cell<(Taken, Stamp)>,
    /// Of the bytes the connection has taken, those already in `bytes_out_total`: the sweep
    /// adds the rest (the outbox counts every byte written, by its writer or write-through).
    pub bytes_reported: Cell<u64>,
}

impl Liveness {
    fn report_bytes_out(&self, stats: &ShardStats) {
        let written = self.outbox.written_bytes();
        stats::add(&stats.bytes_out_total, written - self.bytes_reported.get());
        self.bytes_reported.set(written);
    }
}

/// How much a client has taken: bytes the writer has handed to the socket, and bytes the
/// socket still holds unsent. Either moving is progress (the writer wakes only once a
/// third of the send buffer has drained, so a slow but steady reader may move only the
/// second for a while).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    written_bytes: u64,
    unsent_bytes: i32,
}

impl Taken {
    fn of(live: &Liveness) -> Taken {
        let mut unsent_bytes: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int for an open socket the session owns; on error
        // the value stays 0.
        unsafe { libc::ioctl(live.fd, libc::TIOCOUTQ, &mut unsent_bytes) };
        Taken {
            written_bytes: live.outbox.written_bytes(),
            unsent_bytes,
        }
    }
}

/// Read buffer shared by every connection of the shard: a connection only keeps bytes of its
/// own when a frame is cut across reads.
pub const SCRATCH_BYTES: usize = 64 << 10;

pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub shards: usize,
    pub stats: Arc<[ShardStats]>,
    pub message_limits: MessageLimits,
    room_config: RoomConfig,
    rooms: RefCell<HashMap<String, RoomState>>,
    conns: RefCell<HashMap<u64, Rc<Liveness>>>,
    next_conn_id: Cell<u64>,
    /// Connection-count releases still talking to the registry.
    pub releases_in_flight: Cell<usize>,
    pub scratch: RefCell<Box<[u8]>>,
    mesh: Senders<Mesh>,
    ping: Frame,
    /// The Hocuspocus v4 ping (`09`), for providers that cannot see `ping`.
    in_band_ping: Frame,
    /// A Hocuspocus socket's documents on other shards, and other shards' sockets' here.
    pub links: super::link::Links,
    /// Token signatures and secret hashes, off this executor.
    pub offload: super::offload::Offload,
    /// Rooms with relayed updates still to integrate (a lower-priority task applies them).
    pub integrator: super::integrate::Integrator,
    /// Where connections are accepted and admitted (request heads, tokens, registry calls,
    /// joins): a task queue with a quarter of the sessions' shares.
    pub admission_queue: glommio::TaskQueueHandle,
    /// Where sessions run: the executor's default queue.
    pub session_queue: glommio::TaskQueueHandle,
    /// Tokens this shard verified, until they expire: a reconnect storm is not a storm of
    /// signature checks. (A reload or a revocation, when they exist, must empty it.)
    token_cache: RefCell<crate::auth::token_cache::TokenCache>,
}

/// Verified tokens a shard remembers: about 2 MiB of identities at most.
const TOKEN_CACHE_ENTRIES_MAX: usize = 4096;

pub async fn run(setup: Setup) {
    let Setup {
        addr,
        first_listener,
        shared,
        shards,
        stats,
        mesh,
        ready,
    } = setup;
    let taken = first_listener.lock().expect("listener lock").take();
    let bound = match taken {
        // SAFETY: a listening socket the node created and handed to this shard alone.
        Some(socket) => Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) }),
        None => {
            listen(addr).map(|socket| unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
        }
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
            return;
        }
    };
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot join the shard mesh: {e}")));
            return;
        }
    };
    let id = senders.peer_id();
    let config = &shared.config;
    let documents = &config.documents;
    let message_limits = MessageLimits {
        message_bytes_max: config.websocket.message_bytes_max,
        fragments_max: config.websocket.fragments_max,
    };
    let room_config = RoomConfig {
        update_limits: UpdateLimits {
            structs_max: documents.update_structs_max,
            ..UpdateLimits::default()
        },
        awareness_clients_max: documents.awareness_clients_max,
        awareness_clients_per_connection_max: documents.awareness_clients_per_connection_max,
        awareness_state_bytes_max: documents.awareness_state_bytes_max,
        document_bytes_max: documents.document_bytes_max,
        pending_updates_max: documents.pending_updates_max,
        pending_bytes_max: documents.pending_bytes_max,
    };
    let shard = Rc::new(Shard {
        id,
        shared,
        shards,
        message_limits,
        room_config,
        stats,
        rooms: RefCell::new(HashMap::new()),
        conns: RefCell::new(HashMap::new()),
        next_conn_id: Cell::new(0),
        releases_in_flight: Cell::new(0),
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
        mesh: senders,
        links: super::link::Links::default(),
        ping: shared_frame(Opcode::Ping, &[]),
        in_band_ping: shared_frame(Opcode::Binary, &[&crate::sync::hocuspocus::PING]),
        offload: super::offload::Offload::default(),
        integrator: super::integrate::Integrator::default(),
        admission_queue: background_queue("admission"),
        session_queue: glommio::executor().current_task_queue(),
        token_cache: RefCell::new(crate::auth::token_cache::TokenCache::new(
            TOKEN_CACHE_ENTRIES_MAX,
        )),
    });
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                let handoff = match message {
                    Mesh::Handoff(handoff) => handoff,
                    Mesh::Link(link) => {
                        super::link::receive(&shard, link).await;
                        continue;
                    }
                };
                // SAFETY: the fd was dup'ed for us by the sending shard and is owned here.
                let stream = unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) };
                stats::add(&shard.my_stats().handoffs_total, 1);
                admit_later(
                    &shard,
                    super::router::serve(
                        shard.clone(),
                        stream,
                        handoff.head,
                        Some(handoff.identity),
                    ),
                );
            }
        })
        .detach();
    }
    glommio::spawn_local(keepalive(shard.clone())).detach();
    super::link::start(&shard);
    spawn_integration(&shard);
    if shard.id == 0 {
        glommio::spawn_local(heartbeat(shard.clone())).detach();
    }
    let _ = ready.send(Ok(()));
    // While draining the listener stays open, so that health checks see 503 and new
    // upgrades are refused with 503, until the drain is done.
    let drained = async {
        while !shard.shared.draining() {
            sleep(Duration::from_millis(50)).await;
        }
        drain(&shard).await;
    };
    futures_lite::future::or(accept_loop(&shard, &listener), drained).await;
}

/// Runs a connection's admission as a task on the admission queue (see `router::serve`).
fn admit_later(shard: &Shard, serve: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local_into(serve, shard.admission_queue)
        .expect("the admission task queue lives as long as the shard")
        .detach();
}

/// A task queue for work that must not hold up live sessions (admissions, integration): a
/// quarter of the sessions' shares, so when both have work, sessions (reads, relays, sends)
/// get four fifths of the core; with the executor's short preemption period they wait at
/// most about that long for it.
fn background_queue(name: &str) -> glommio::TaskQueueHandle {
    glommio::executor().create_task_queue(
        glommio::Shares::Static(BACKGROUND_SHARES),
        glommio::Latency::NotImportant,
        name,
    )
}

/// The default task queue's shares are 1,000.
const BACKGROUND_SHARES: usize = 250;

/// Integration on its own background queue (see `server::integrate`).
fn spawn_integration(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local_into(
        async move { shard.integrator.run(shard.my_stats()).await },
        background_queue("integrate"),
    )
    .expect("the integration task queue was just created")
    .detach();
}

/// A listening socket shared by every shard through SO_REUSEPORT. SO_REUSEADDR as well, so
/// that a restarted server can bind while old connections sit in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket)
}

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stats::add(&shard.my_stats().connections_accepted_total, 1);
                admit_later(
                    shard,
                    super::router::serve(shard.clone(), stream, Vec::new(), None),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, back off, keep serving.
                crate::log::warn("accept_failed", &[("shard", &shard.id), ("error", &e)]);
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The shard's part of a drain: new upgrades are refused (see the router), sessions get
/// `drain_timeout_ms` to end on their own, the rest are closed with 1012 (service restart)
/// so clients reconnect elsewhere, and the pins of this shard's documents are released at
/// once (no grace period) so another node can take them.
async fn drain(shard: &Rc<Shard>) {
    let deadline = Instant::now() + Duration::from_millis(shard.config().node.drain_timeout_ms);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(50)).await;
    }
    let (code, reason) = Refusal::Restart.close();
    for live in shard.conns.borrow().values() {
        live.outbox.close(code, &reason);
    }
    let close_deadline =
        Instant::now() + Duration::from_millis(shard.config().websocket.close_timeout_ms * 2);
    while !shard.conns.borrow().is_empty() && Instant::now() < close_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    // Each release is bounded by the registry deadline.
    while shard.releases_in_flight.get() > 0 {
        sleep(Duration::from_millis(10)).await;
    }
    let rooms: Vec<(String, String)> = shard
        .rooms
        .borrow_mut()
        .drain()
        .filter_map(|(key, state)| match state {
            RoomState::Live(entry) => Some((key, entry.app)),
            RoomState::Pending(_) => None,
        })
        .collect();
    for (key, app) in rooms {
        let _ = shard
            .shared
            .registry
            .release(&key, &app, &shard.shared.node, crate::log::unix_ms())
            .await;
        stats::sub(&shard.my_stats().documents, 1);
    }
    crate::log::info("shard_drained", &[("shard", &shard.id)]);
}

impl Shard {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Past the node's high-water mark (open connections over every shard, or memory), or
    /// out of file descriptors for clients. Asked from within an admission.
    pub fn overloaded(&self) -> bool {
        let connections = self.stats.iter().map(|s| stats::get(&s.connections)).sum();
        self.shared.overloaded(connections, self.other_sockets())
    }

    /// Too many client sockets to even read a new one's request (see
    /// `Shared::out_of_sockets`). Asked from within an admission.
    pub fn out_of_sockets(&self) -> bool {
        self.shared.out_of_sockets(self.other_sockets())
    }

    /// Client sockets over every shard, sessions (until their socket is closed, the end of a
    /// close included) and admissions, less the caller's own (every caller is an admission,
    /// counted from its start).
    fn other_sockets(&self) -> u64 {
        let sockets: u64 = self
            .stats
            .iter()
            .map(|s| stats::get(&s.sessions) + stats::get(&s.admissions))
            .sum();
        sockets.saturating_sub(1)
    }

    /// Verifies a token: from the cache if this shard verified it before (and it has not
    /// expired), else off this executor (see `offload`); `Err(Busy)` when too many wait.
    pub async fn verify_token(
        &self,
        token: String,
    ) -> Result<Result<Identity, crate::auth::verify::Refusal>, super::offload::Busy> {
        let now_s = crate::log::unix_ms() / 1000;
        if let Some(identity) = self.token_cache.borrow_mut().get(&token, now_s) {
            stats::add(&self.my_stats().token_cache_hits_total, 1);
            return Ok(Ok(identity));
        }
        let (shared, job_token) = (self.shared.clone(), token.clone());
        let verified = self
            .offload
            .run(super::offload::Work::Signature, move || {
                shared.directory.verifier.verify(&job_token)
            })
            .await?;
        if let Ok(identity) = &verified {
            self.token_cache
                .borrow_mut()
                .insert(&token, identity.clone(), now_s);
        }
        Ok(verified)
    }

    pub fn my_stats(&self) -> &ShardStats {
        &self.stats[self.id]
    }

    /// Sends a connection to the shard that owns its document: a duplicate of its socket
    /// travels; ours is closed when the admission's stream drops.
    pub async fn hand_off(
        &self,
        owner: usize,
        stream: &SharedStream,
        head: Vec<u8>,
        identity: Identity,
    ) {
        use std::os::fd::{AsRawFd, BorrowedFd};
        let raw = stream.borrow().as_raw_fd();
        // SAFETY: `raw` is the stream's open socket, which outlives this borrow.
        let Ok(fd) = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned() else {
            return;
        };
        // A closed mesh means the process is stopping; the connection is dropped with it.
        let _ = self
            .mesh_send(
                owner,
                Mesh::Handoff(Box::new(Handoff { fd, head, identity })),
            )
            .await;
    }

    /// Sends to another shard over the mesh (waiting while its channel is full); an error
    /// when the mesh is closed (the process is stopping).
    pub async fn mesh_send(&self, peer: usize, message: Mesh) -> Result<(), ()> {
        self.mesh.send_to(peer, message).await.map_err(|_| ())
    }

    /// The room for `key`, created if it is not in memory: the document is then pinned to
    /// this node in the registry, which counts it as one of `app`'s live documents (refused
    /// past `documents_max`) or names the node it lives on.
    ///
    /// Creation is atomic per shard: while a claim (or a release) is in flight the key holds
    /// a pending entry, and other clients of the document wait for it, then look again.
    pub async fn open_room(
        &self,
        key: &str,
        app: &str,
        documents_max: Option<u64>,
    ) -> Result<Rc<RefCell<Room>>, RoomRefusal> {
        loop {
            let pending = match self.rooms.borrow().get(key) {
                Some(RoomState::Live(entry)) => return Ok(entry.room.clone()),
                Some(RoomState::Pending(p)) => Some(p.clone()),
                None => None,
            };
            match pending {
                Some(p) => p.wait().await,
                None => return self.claim_room(key, app, documents_max).await,
            }
        }
    }

    async fn claim_room(
        &self,
        key: &str,
        app: &str,
        documents_max: Option<u64>,
    ) -> Result<Rc<RefCell<Room>>, RoomRefusal> {
        let _claim = PinInFlight::start(&self.rooms, key);
        let now_ms = crate::log::unix_ms();
        let claim = self
            .shared
            .registry
            .claim(key, app, &self.shared.node, documents_max, now_ms)
            .await;
        match claim {
            Ok(Claim::Pinned | Claim::AlreadyHere) => {
                let room = Rc::new(RefCell::new(Room::new(self.room_config)));
                let entry = RoomEntry {
                    room: room.clone(),
                    app: app.to_owned(),
                    emptied: 0,
                };
                self.rooms
                    .borrow_mut()
                    .insert(key.to_owned(), RoomState::Live(entry));
                stats::add(&self.my_stats().documents, 1);
                Ok(room)
            }
            Ok(Claim::Elsewhere(node)) => Err(RoomRefusal::Elsewhere(node)),
            Ok(Claim::DocumentLimit(e)) => Err(RoomRefusal::DocumentLimit(e)),
            Err(Unavailable(why)) => Err(RoomRefusal::Unavailable(why)),
        }
    }

    /// Called after a subscriber left `key`: an empty room is freed after the grace period
    /// unless someone joins (and stays) in the meantime; then its pin is released.
    pub fn room_left(self: &Rc<Self>, key: &str) {
        let generation = {
            let mut rooms = self.rooms.borrow_mut();
            let Some(RoomState::Live(entry)) = rooms.get_mut(key) else {
                return;
            };
            if entry.room.borrow().subscriber_count() > 0 {
                return;
            }
            entry.emptied += 1;
            entry.emptied
        };
        let shard = self.clone();
        let key = key.to_owned();
        let grace = Duration::from_millis(self.config().documents.grace_period_ms);
        let expire = async move {
            sleep(grace).await;
            let app = {
                let mut rooms = shard.rooms.borrow_mut();
                let expired = matches!(rooms.get(&key), Some(RoomState::Live(e))
                    if e.emptied == generation && e.room.borrow().subscriber_count() == 0);
                if !expired {
                    return;
                }
                let Some(RoomState::Live(entry)) = rooms.remove(&key) else {
                    unreachable!("checked above")
                };
                stats::sub(&shard.my_stats().documents, 1);
                entry.app
            };
            // Clients arriving meanwhile wait, then claim the document afresh.
            let _release = PinInFlight::start(&shard.rooms, &key);
            let released = shard
                .shared
                .registry
                .release(&key, &app, &shard.shared.node, crate::log::unix_ms())
                .await;
            if let Err(Unavailable(why)) = released {
                // The registry drops the pin when this node's heartbeat goes stale.
                crate::log::warn("pin_release_failed", &[("error", &why)]);
            }
        };
        let stats_of = self.clone();
        glommio::spawn_local(async move {
            super::contain::future(stats_of.my_stats(), "grace_release", expire).await;
        })
        .detach();
    }

    /// Registers a session's socket with the keepalive sweep and the descriptor count, until
    /// the returned value is dropped (however the session ends).
    pub fn register(&self, outbox: Rc<Outbox>, fd: RawFd) -> Registration<'_> {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        let now = Stamp::now();
        let live = Rc::new(Liveness {
            outbox,
            fd,
            closing_since: Cell::new(None),
            last_rx: Cell::new(now),
            last_ping: Cell::new(now),
            incomplete_since: Cell::new(None),
            written_mark: Cell::new((Taken::default(), now)),
            bytes_reported: Cell::new(0),
        });
        self.conns.borrow_mut().insert(id, live.clone());
        stats::add(&self.my_stats().sessions, 1);
        Registration {
            shard: self,
            id,
            live,
        }
    }
}

/// A session's place in its shard's `conns` (see [`Shard::register`]).
pub struct Registration<'s> {
    shard: &'s Shard,
    id: u64,
    pub live: Rc<Liveness>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // `try_`: a panic may have unwound out of a sweep that had `conns` borrowed.
        if let Ok(mut conns) = self.shard.conns.try_borrow_mut() {
            conns.remove(&self.id);
        }
        self.live.report_bytes_out(self.shard.my_stats());
        stats::sub(&self.shard.my_stats().sessions, 1);
    }
}

/// Tells the registry this node is alive, every `node.heartbeat_interval_ms`.
async fn heartbeat(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.config().node.heartbeat_interval_ms);
    loop {
        if let Err(Unavailable(why)) = shard
            .shared
            .registry
            .heartbeat(&shard.shared.node, crate::log::unix_ms())
            .await
        {
            crate::log::warn("heartbeat_failed", &[("error", &why)]);
        }
        sleep(every).await;
    }
}

/// Pings connections that have been quiet for a ping interval, closes those quiet past the
/// idle timeout, and shuts down sockets whose peer has not taken its close frame within the
/// close timeout (a peer that stopped reading): one sweep over the shard's connections
/// instead of timers per connection.
async fn keepalive(shard: Rc<Shard>) {
    let ws = &shard.config().websocket;
    let ping_every = Duration::from_millis(ws.ping_interval_ms);
    let idle_after = Duration::from_millis(ws.idle_timeout_ms);
    let close_within = Duration::from_millis(ws.close_timeout_ms);
    let message_within = Duration::from_millis(ws.message_timeout_ms);
    let tick = (ping_every.min(message_within) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    loop {
        sleep(tick).await;
        let now = Stamp::now();
        let conns = shard.conns.borrow();
        sweep_each(shard.my_stats(), conns.values(), |live| {
            live.report_bytes_out(shard.my_stats());
            if live.outbox.closed().is_some() {
                match live.closing_since.get() {
                    None => live.closing_since.set(Some(now)),
                    Some(since) if now.since(since) >= close_within => {
                        // SAFETY: the session owns this open socket until it unregisters,
                        // which removes it from `conns`; shutdown does not close the fd.
                        unsafe { libc::shutdown(live.fd, libc::SHUT_RDWR) };
                    }
                    Some(_) => {}
                }
                return;
            }
            let quiet = now.since(live.last_rx.get());
            let stalled = live
                .incomplete_since
                .get()
                .is_some_and(|since| now.since(since) >= message_within);
            let waiting = live.outbox.queued_bytes() > 0;
            let (marked, marked_at) = live.written_mark.get();
            // The socket is asked only while something waits to be written.
            let taken = if waiting { Taken::of(live) } else { marked };
            if taken != marked || !waiting {
                live.written_mark.set((taken, now));
            }
            let not_reading = waiting && taken == marked && now.since(marked_at) >= message_within;
            let refusal = if stalled {
                stats::add(&shard.my_stats().message_timeouts_total, 1);
                Refusal::MessageTimeout
            } else if not_reading {
                stats::add(&shard.my_stats().slow_consumer_closes_total, 1);
                Refusal::NotReading
            } else if quiet >= idle_after {
                stats::add(&shard.my_stats().idle_closes_total, 1);
                Refusal::Idle
            } else {
                let since_ping = now.since(live.last_ping.get());
                // A Hocuspocus provider reconnects after 30 s without a message and cannot
                // see WebSocket pings: it gets its own every half interval, quiet or not.
                if live.outbox.in_band_keepalive() && since_ping >= ping_every / 2 {
                    live.outbox
                        .push_all(&[shard.ping.clone(), shard.in_band_ping.clone()]);
                    live.last_ping.set(now);
                } else if quiet >= ping_every && since_ping >= ping_every {
                    live.outbox.push(&shard.ping);
                    live.last_ping.set(now);
                }
                return;
            };
            let (code, reason) = refusal.close();
            live.outbox.close(code, &reason);
        });
    }
}

/// Runs the sweep's `check` on each connection. A panic in one is contained to it: counted
/// and logged, its socket shut down so that its session ends (a connection the sweep cannot
/// look after must not stay open), and the sweep goes on with the others, this tick and the
/// next.
fn sweep_each<'a>(
    stats: &ShardStats,
    conns: impl IntoIterator<Item = &'a Rc<Liveness>>,
    mut check: impl FnMut(&Liveness),
) {
    for live in conns {
        if super::contain::call(stats, "keepalive", || check(live)).is_none() {
            // SAFETY: as in the sweep: the session owns this open socket until it leaves
            // `conns`; shutdown does not close the fd.
            unsafe { libc::shutdown(live.fd, libc::SHUT_RDWR) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
        let entry = RoomEntry {
            room: Rc::new(RefCell::new(Room::new(RoomConfig::default()))),
            app: "t::a".into(),
            emptied: 0,
        };
        rooms
            .borrow_mut()
            .insert("t::a::d".into(), RoomState::Live(entry));
        drop(made);
        assert!(matches!(
            rooms.borrow().get("t::a::d"),
            Some(RoomState::Live(_))
        ));
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// The sweep's guard against the real sweep code's failure mode: a panic on one
    /// connection. (No input reaches a panic in the sweep, so the check here panics itself.)
    #[test]
    fn a_panic_on_one_connection_does_not_stop_the_sweep() {
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let now = Stamp::now();
        let conns: Vec<Rc<Liveness>> = pairs
            .iter()
            .map(|(ours, _)| {
                Rc::new(Liveness {
                    outbox: Rc::new(Outbox::new(1 << 10)),
                    fd: ours.as_raw_fd(),
                    closing_since: Cell::new(None),
                    last_rx: Cell::new(now),
                    last_ping: Cell::new(now),
                    incomplete_since: Cell::new(None),
                    written_mark: Cell::new((Taken::default(), now)),
                    bytes_reported: Cell::new(0),
                })
            })
            .collect();
        let stats = ShardStats::default();
        let panicking = conns[1].fd;
        let mut checked = Vec::new();
        for _tick in 0..2 {
            sweep_each(&stats, &conns, |live| {
                if live.fd == panicking {
                    panic!("in the sweep");
                }
                checked.push(live.fd);
            });
        }
        let (first, last) = (conns[0].fd, conns[2].fd);
        assert_eq!(checked, [first, last, first, last]);
        assert_eq!(stats::get(&stats.panics_total), 2);
        // The panicking connection's socket is shut down (its peer reads the end); the
        // others are untouched.
        let mut byte = [0u8; 1];
        assert_eq!((&pairs[1].1).read(&mut byte).unwrap(), 0);
        pairs[0].1.set_nonblocking(true).unwrap();
        let err = (&pairs[0].1).read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
