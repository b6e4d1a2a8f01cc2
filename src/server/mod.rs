//! The runtime: one glommio executor per core ("shard"), each accepting on the shared port
//! (SO_REUSEPORT), answering plain HTTP itself and handing each document's connections to the
//! document's owner shard, where its `Room` lives.

mod admin;
mod admission;
mod api;
mod authorization;
mod certificate;
mod contain;
mod deadline;
mod demo;
mod descriptors;
mod handler;
mod handlers;
mod held;
mod hocuspocus;
mod integrate;
mod link;
mod membership;
mod memory;
mod mesh;
mod offload;
mod operator;
mod reload;
mod respond;
mod revoked;
mod rooms;
mod router;
mod session;
mod shard;
mod shared;
mod side_messages;
mod socket;
pub mod stats;
mod tasks;
mod tls;

use crate::auth::directory::Directory;
use crate::config::Config;
use crate::registry::embedded::EmbeddedRegistry;
use crate::registry::{NodeInfo, Registry};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub use tasks::sessions_queue;

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// io_uring memory per shard. The registered-buffer pool is for file I/O, which this server
/// does not do; keeping it small lets several shards start under an 8 MiB memlock limit.
/// (Public, as `RING_DEPTH` and `sessions_queue`, for the load generator's relay floor,
/// which measures the runtime as a shard runs it.)
pub const IO_MEMORY_BYTES: usize = 256 << 10;
/// io_uring submission entries per ring. Linux sizes a ring's cancellation hash table from
/// its completion queue (2 x this), to at most 256 buckets at 4,096 and above. Every armed
/// socket poll sits in that table, and glommio cancels a poll on each park/wake cycle: with
/// glommio's default of 128 (8 buckets), 8,000 idle sockets made each cancel walk about a
/// thousand entries, 18 % of a shard's CPU under light load (BENCHMARKS.md).
pub const RING_DEPTH: usize = 4096;

/// The shards' executors: one thread each, spread over the CPUs.
pub(super) fn shard_executors(shards: usize) -> LocalExecutorPoolBuilder {
    LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .io_memory(IO_MEMORY_BYTES)
        .ring_depth(RING_DEPTH)
        .name("wiresocket-shard")
}

/// A started node: its shards are listening.
pub struct Node {
    pub addr: SocketAddr,
    /// The admin listener's address, if `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub shards: usize,
    pub info: NodeInfo,
    shared: Arc<shared::Shared>,
    handles: PoolThreadHandles<()>,
}

/// Makes every node of this process read its configuration file again (the SIGHUP handler
/// calls it; async-signal-safe: one atomic add). See `reload`.
pub fn request_reload() {
    reload::request();
}

/// Makes every node of this process drain (the SIGTERM handler calls it; async-signal-safe:
/// it only stores to an atomic).
pub fn request_drain() {
    shared::DRAIN_REQUESTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Node {
    /// Starts draining this node (see `request_drain` for the whole process).
    pub fn drain(&self) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections the open-file limit leaves room for: past them upgrades get 503.
    pub fn connections_fd_max(&self) -> u64 {
        self.shared.connections_fd_max
    }

    /// The resident memory past whose high-water mark upgrades get 503.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.shared.memory.budget_bytes()
    }

    /// Blocks until the shards stop.
    pub fn join(self) -> Result<(), StartError> {
        for result in self.handles.join_all() {
            result.map_err(|e| StartError(explain_start_error(&e.to_string())))?;
        }
        Ok(())
    }
}

/// Starts the shards and blocks until they stop, on the embedded registry. `on_listening` is
/// called once every shard listens.
pub fn run(config: Config, on_listening: impl FnOnce(&Node)) -> Result<(), StartError> {
    let registry = open_registry(&config)?;
    let node = start(config, registry)?;
    on_listening(&node);
    node.join()
}

/// The admin listener, bound, and its token, if `admin_listen` is set: refused without a
/// token (fail closed) or when the address cannot be bound.
fn admin_listener(
    config: &Config,
) -> Result<Option<(std::net::TcpListener, crate::auth::admin_token::AdminToken)>, StartError> {
    let token = admin_token(config)?;
    let (Some(addr), Some(token)) = (&config.admin_listen, token) else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr.as_str())
        .map_err(|e| StartError(format!("admin_listen: cannot listen on {addr}: {e}")))?;
    Ok(Some((listener, token)))
}

/// The admin token, if one is set; refused when `admin_listen` is set without one (fail
/// closed).
fn admin_token(
    config: &Config,
) -> Result<Option<crate::auth::admin_token::AdminToken>, StartError> {
    let from_env = std::env::var("WIRESOCKET_ADMIN_TOKEN").ok();
    let token =
        crate::auth::admin_token::AdminToken::load(config.admin_token_file.as_deref(), from_env)
            .map_err(StartError)?;
    if config.admin_listen.is_some() && token.is_none() {
        return Err(StartError(
            "admin_listen is set but there is no admin token: set admin_token_file or WIRESOCKET_ADMIN_TOKEN".into(),
        ));
    }
    Ok(token)
}

/// Everything a start checks before it binds, without starting (`wiresocket check-config`):
/// the fields, the tenants' keys, the TLS certificate and key, the registry backend, the
/// webhook settings (secret files, DNS, addresses: the listen address stands for this node's
/// own).
pub fn check(config: &Config) -> Result<(), StartError> {
    let listen = config.validate().map_err(|e| StartError(e.0))?;
    Directory::from_config(config).map_err(|e| StartError(e.0))?;
    admin_token(config)?;
    if let Some(certificate) = &config.tls {
        certificate::server_config(certificate).map_err(StartError)?;
    }
    if config.registry.backend == "foundationdb" && !cfg!(feature = "fdb") {
        open_foundationdb(config)?;
    }
    crate::webhook::check(config, &[listen]).map_err(StartError)
}

/// The registry the configuration names.
fn open_registry(config: &Config) -> Result<Arc<dyn Registry>, StartError> {
    let stale_ms = config.node.heartbeat_stale_ms;
    match config.registry.backend.as_str() {
        "foundationdb" => open_foundationdb(config),
        _ => Ok(Arc::new(EmbeddedRegistry::new(stale_ms))),
    }
}

#[cfg(feature = "fdb")]
fn open_foundationdb(config: &Config) -> Result<Arc<dyn Registry>, StartError> {
    let r = &config.registry;
    let cluster = (!r.cluster_file.is_empty()).then_some(r.cluster_file.as_str());
    crate::registry::fdb::connect(cluster, &r.prefix, config.node.heartbeat_stale_ms)
        .map(|registry| Arc::new(registry) as Arc<dyn Registry>)
        .map_err(|e| StartError(format!("registry.backend = \"foundationdb\": {}", e.0)))
}

#[cfg(not(feature = "fdb"))]
fn open_foundationdb(_: &Config) -> Result<Arc<dyn Registry>, StartError> {
    Err(StartError(
        "registry.backend = \"foundationdb\" needs a build with `cargo build --release --features fdb`".into(),
    ))
}

/// Starts a node on `registry` and returns once every shard listens. Several nodes may share
/// one registry in one process (the multi-node tests do).
pub fn start(config: Config, registry: Arc<dyn Registry>) -> Result<Node, StartError> {
    let requested = config.validate().map_err(|e| StartError(e.0))?;
    // Before any shard runs: see `descriptors` for the stalls a growing table makes.
    if let Err(e) = descriptors::reserve_table() {
        crate::log::warn("descriptor_table_not_reserved", &[("error", &e)]);
    }
    let directory = Directory::from_config(&config).map_err(|e| StartError(e.0))?;
    if directory.is_development {
        crate::log::warn(
            "development_tenant",
            &[("note", &"no tenants configured: accepting tokens signed with the published development key (wiresocket token, or client_id dev / client_secret dev-secret); configure [[tenants]] and [[apps]] for production")],
        );
    }
    if !directory.hs256_tenants.is_empty() {
        crate::log::warn(
            "hs256_keys",
            &[
                ("tenants", &directory.hs256_tenants.join(",")),
                ("note", &"HS256 is for development: anyone holding the shared secret can sign tokens; use RS256, ES256 or EdDSA keys in production"),
            ],
        );
    }
    let first_listener = listen_first(requested)?;
    let addr = first_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| StartError("cannot read the bound address".into()))?;
    let admin = admin_listener(&config)?;
    let admin_addr = admin.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let own: Vec<SocketAddr> = std::iter::once(addr).chain(admin_addr).collect();
    let webhooks = crate::webhook::Webhooks::from_config(&config, &own).map_err(StartError)?;
    let tls = config.tls.as_ref().map(certificate::Tls::load).transpose();
    let tls = tls.map_err(StartError)?;
    let first_listener = Arc::new(std::sync::Mutex::new(Some(first_listener)));
    let shards = if config.shards == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        config.shards
    };
    let info = NodeInfo {
        id: config.node.id.clone(),
        region: config.node.region.clone(),
        url: if config.node.public_url.is_empty() {
            let scheme = if config.tls.is_some() { "wss" } else { "ws" };
            format!("{scheme}://{addr}")
        } else {
            config.node.public_url.trim_end_matches('/').to_owned()
        },
    };
    let stats: Arc<[stats::ShardStats]> =
        (0..shards).map(|_| stats::ShardStats::default()).collect();
    let mesh = MeshBuilder::full(shards, 1024);
    let registry = Arc::new(deadline::WithDeadline::new(
        registry,
        Duration::from_millis(config.node.registry_timeout_ms),
    ));
    let shared = Arc::new(shared::Shared::new(
        config,
        info.clone(),
        directory,
        registry,
        webhooks,
        shards,
        tls,
    ));
    let jobs = Arc::new(operator::ShardJobs::new(shards));
    let admin_jobs = jobs.clone();
    let node_shared = shared.clone();
    let stats_for_admin = stats.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let handles = shard_executors(shards)
        .on_all_shards(move || {
            let (shared, stats, mesh, ready, first_listener, jobs) = (
                shared.clone(),
                stats.clone(),
                mesh.clone(),
                ready_tx.clone(),
                first_listener.clone(),
                jobs.clone(),
            );
            async move {
                tasks::run(tasks::Setup {
                    addr,
                    first_listener,
                    shared,
                    shards,
                    stats,
                    mesh,
                    ready,
                    jobs,
                })
                .await
            }
        })
        .map_err(|e| StartError(explain_start_error(&e.to_string())))?;
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError(e)),
            Err(_) => {
                // A shard thread died before binding: its error is in the join result.
                let mut errors: Vec<String> = handles
                    .join_all()
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| explain_start_error(&e.to_string())))
                    .collect();
                errors.dedup();
                return Err(StartError(if errors.is_empty() {
                    "a shard failed to start".into()
                } else {
                    errors.join("; ")
                }));
            }
        }
    }
    reload::start(node_shared.clone())
        .map_err(|e| StartError(format!("cannot start the reload thread: {e}")))?;
    if let Some((listener, token)) = admin {
        admin::start(
            listener,
            node_shared.clone(),
            stats_for_admin,
            admin_jobs,
            token,
        )
        .map_err(|e| StartError(format!("cannot start the admin listener: {e}")))?;
    }
    Ok(Node {
        addr,
        admin_addr,
        shards,
        info,
        shared: node_shared,
        handles,
    })
}

/// The node's first listening socket. A fixed port is first checked with a plain bind
/// (SO_REUSEPORT would otherwise let us silently share a port with another server); port 0
/// is resolved by the kernel, which never hands out a port another socket holds.
fn listen_first(addr: SocketAddr) -> Result<socket2::Socket, StartError> {
    let in_use = || {
        StartError(format!(
            "cannot listen on {addr}: the address is in use (stop the other server or pass --listen ADDR:PORT)"
        ))
    };
    if addr.port() != 0 {
        match std::net::TcpListener::bind(addr) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(in_use()),
            Err(e) => return Err(StartError(format!("cannot listen on {addr}: {e}"))),
        }
    }
    tasks::listen(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => in_use(),
        _ => StartError(format!("cannot listen on {addr}: {e}")),
    })
}

fn explain_start_error(e: &str) -> String {
    if e.to_ascii_lowercase().contains("memlock") {
        format!("too little locked memory for io_uring ({e}): raise the locked-memory limit (ulimit -l, or LimitMEMLOCK= in systemd) to at least 512 KiB, or run fewer shards with --shards N")
    } else {
        e.to_owned()
    }
}
