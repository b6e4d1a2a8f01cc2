//! One shard: its listener, the documents it owns, its connections' liveness, and the
//! mesh it receives handed-off connections on.

use super::admission::Handed;
use super::mesh::{Handoff, Mesh};
use super::rooms::{OpenRoom, RoomRefusal, Rooms};
use super::shared::Shared;
use super::socket::SharedStream;
use super::stats::{self, ShardStats};
use crate::auth::verify::Identity;
use crate::config::Config;
use crate::outbox::{shared_frame, Frame, Outbox};
use crate::refusal::Refusal;
use crate::sync::room::RoomConfig;
use crate::sync::update_check::UpdateLimits;
use crate::ws::frame::Opcode;
use crate::ws::message::MessageLimits;
use glommio::channels::channel_mesh::Senders;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

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
    /// A session's liveness from now: just heard from, just pinged.
    pub fn new(outbox: Rc<Outbox>, fd: RawFd) -> Liveness {
        let now = Stamp::now();
        Liveness {
            outbox,
            fd,
            closing_since: Cell::new(None),
            last_rx: Cell::new(now),
            last_ping: Cell::new(now),
            incomplete_since: Cell::new(None),
            written_mark: Cell::new((Taken::default(), now)),
            bytes_reported: Cell::new(0),
        }
    }

    pub(super) fn report_bytes_out(&self, stats: &ShardStats) {
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
    pub(super) fn of(live: &Liveness) -> Taken {
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
    pub(super) rooms: Rc<Rooms>,
    pub(super) conns: RefCell<HashMap<u64, Rc<Liveness>>>,
    next_conn_id: Cell<u64>,
    /// Connection-count releases still talking to the registry.
    pub releases_in_flight: Cell<usize>,
    pub scratch: RefCell<Box<[u8]>>,
    mesh: Senders<Mesh>,
    pub(super) ping: Frame,
    /// The Hocuspocus v4 ping (`09`), for providers that cannot see `ping`.
    pub(super) in_band_ping: Frame,
    /// A Hocuspocus socket's documents on other shards, and other shards' sockets' here.
    pub links: super::mesh::Links,
    /// Token signatures and secret hashes, off this executor.
    pub offload: super::offload::Offload,
    /// Rooms with relayed updates still to integrate (a lower-priority task applies them).
    pub integrator: super::integrate::Integrator,
    /// Where connections are accepted and admitted (request heads, tokens, registry calls,
    /// joins): a task queue with a quarter of the sessions' shares.
    pub admission_queue: glommio::TaskQueueHandle,
    /// Where sessions and the mesh's relays run (see `tasks::serving_queue`).
    pub session_queue: glommio::TaskQueueHandle,
    /// Tokens this shard verified, until they expire: a reconnect storm is not a storm of
    /// signature checks. (A reload or a revocation, when they exist, must empty it.)
    token_cache: RefCell<crate::auth::token_cache::TokenCache>,
    /// See [`Shard::app_key`].
    app_keys: RefCell<std::collections::HashSet<Rc<str>>>,
    /// See [`Shard::credential`].
    credentials: RefCell<HashMap<std::sync::Arc<str>, u32>>,
}

/// Verified tokens a shard remembers: about 2 MiB of identities at most.
const TOKEN_CACHE_ENTRIES_MAX: usize = 4096;

impl Shard {
    /// A shard with nothing open yet, `id` of `shards`, sending to the others through `mesh`.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        shards: usize,
        stats: Arc<[ShardStats]>,
        mesh: Senders<Mesh>,
        admission_queue: glommio::TaskQueueHandle,
        session_queue: glommio::TaskQueueHandle,
    ) -> Shard {
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
        let rooms = Rc::new(Rooms::new(room_config, shared.clone(), stats.clone(), id));
        Shard {
            rooms,
            id,
            shared,
            shards,
            message_limits,
            stats,
            conns: RefCell::new(HashMap::new()),
            next_conn_id: Cell::new(0),
            releases_in_flight: Cell::new(0),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            mesh,
            links: super::mesh::Links::default(),
            ping: shared_frame(Opcode::Ping, &[]),
            in_band_ping: crate::outbox::binary_frame(&crate::sync::hocuspocus::PING),
            offload: super::offload::Offload::default(),
            integrator: super::integrate::Integrator::default(),
            admission_queue,
            session_queue,
            app_keys: RefCell::new(std::collections::HashSet::new()),
            credentials: RefCell::new(HashMap::new()),
            token_cache: RefCell::new(crate::auth::token_cache::TokenCache::new(
                TOKEN_CACHE_ENTRIES_MAX,
            )),
        }
    }

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
        let cached = self.token_cache.borrow_mut().get(&token, now_s);
        if let Some(identity) = cached {
            stats::add(&self.my_stats().token_cache_hits_total, 1);
            return Ok(self.not_revoked(identity));
        }
        let (shared, job_token) = (self.shared.clone(), token.clone());
        let verified = self
            .offload
            .run(super::offload::Work::Signature, move || {
                shared.directory().verifier.verify(&job_token)
            })
            .await?;
        if let Ok(identity) = &verified {
            self.token_cache
                .borrow_mut()
                .insert(&token, identity.clone(), now_s);
        }
        Ok(verified.and_then(|identity| self.not_revoked(identity)))
    }

    /// The shard's one copy of an app key (`{tenant}::{app}`), for connections to hold.
    /// Bounded by the apps ever admitted here (configured apps only).
    pub fn app_key(&self, app: &str) -> Rc<str> {
        let mut keys = self.app_keys.borrow_mut();
        if let Some(key) = keys.get(app) {
            return key.clone();
        }
        let key: Rc<str> = Rc::from(app);
        keys.insert(key.clone());
        key
    }

    /// The number a room keeps for a subscriber admitted with a token signed by
    /// `signing_key` (`{tenant}::{kid}`), 0 for a key without `kid`. Bounded by the keys
    /// ever configured (a verified token names a configured key).
    pub fn credential(&self, signing_key: Option<&std::sync::Arc<str>>) -> u32 {
        let Some(key) = signing_key else {
            return 0;
        };
        let mut credentials = self.credentials.borrow_mut();
        if let Some(&credential) = credentials.get(key) {
            return credential;
        }
        let credential = u32::try_from(credentials.len() + 1).expect("keys are configured");
        credentials.insert(key.clone(), credential);
        credential
    }

    /// Closes the sessions admitted with a token signed by a key now revoked (4003); how
    /// many.
    pub fn close_revoked_keys(&self) -> usize {
        let revoked: Vec<u32> = {
            let credentials = self.credentials.borrow();
            let keys = self.shared.revoked.keys();
            keys.iter()
                .filter_map(|key| credentials.get(key.as_str()).copied())
                .collect()
        };
        if revoked.is_empty() {
            return 0;
        }
        let refusal = Refusal::Token(crate::auth::verify::Refusal::Forbidden("key revoked"));
        self.rooms
            .close_credentials(|credential| revoked.contains(&credential), &refusal)
    }

    /// Forgets every verified token (a reload changed tenants, keys or apps).
    pub fn forget_tokens(&self) {
        self.token_cache.borrow_mut().clear();
    }

    /// A verified identity, unless an operator revoked its tenant, app or key (4003).
    fn not_revoked(&self, identity: Identity) -> Result<Identity, crate::auth::verify::Refusal> {
        let revoked = &self.shared.revoked;
        let signing_key = identity.signing_key.as_deref();
        match revoked.refusal_of(&identity.tenant_id, &identity.app.id, signing_key) {
            Some(why) => Err(crate::auth::verify::Refusal::Forbidden(why)),
            None => Ok(identity),
        }
    }

    /// See `Rooms::open`.
    pub async fn open_room(
        &self,
        key: &str,
        app: &str,
        documents_max: Option<u64>,
    ) -> Result<OpenRoom, RoomRefusal> {
        self.rooms.open(key, app, documents_max).await
    }

    /// See `Rooms::left`.
    pub fn room_left(&self, key: &str) {
        self.rooms.left(key)
    }

    pub fn my_stats(&self) -> &ShardStats {
        &self.stats[self.id]
    }

    /// Sends a connection to the shard that owns its document: a duplicate of its socket
    /// travels; ours is closed when the admission's stream drops.
    pub async fn hand_off(&self, owner: usize, stream: &SharedStream, handed: Handed) {
        use std::os::fd::{AsRawFd, BorrowedFd};
        let raw = stream.borrow().as_raw_fd();
        // SAFETY: `raw` is the stream's open socket, which outlives this borrow.
        let Ok(fd) = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned() else {
            return;
        };
        // A closed mesh means the process is stopping; the connection is dropped with it.
        let handoff = Box::new(Handoff { fd, handed });
        let _ = self.mesh_send(owner, Mesh::Handoff(handoff)).await;
    }

    /// Sends to another shard over the mesh (waiting while its channel is full); an error
    /// when the mesh is closed (the process is stopping).
    pub async fn mesh_send(&self, peer: usize, message: Mesh) -> Result<(), ()> {
        self.mesh.send_to(peer, message).await.map_err(|_| ())
    }

    /// Registers a session's socket with the keepalive sweep and the descriptor count, until
    /// the returned value is dropped (however the session ends).
    pub fn register(&self, outbox: Rc<Outbox>, fd: RawFd) -> Registration<'_> {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        let live = Rc::new(Liveness::new(outbox, fd));
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

/// Runs `task` to its end on one of the shard's task queues (they live as long as it does).
pub fn spawn_detached(queue: glommio::TaskQueueHandle, task: impl Future<Output = ()> + 'static) {
    glommio::spawn_local_into(task, queue)
        .expect("a shard's task queues live as long as the shard")
        .detach();
}
