//! Node-wide state every shard shares: the control plane (configuration, tenants and keys,
//! the registry, refresh tokens, per-IP budgets). The data plane stays in each shard.

use crate::auth::directory::Directory;
use crate::auth::oauth::RefreshStore;
use crate::config::Config;
use crate::http::ip_rate::IpRateLimiter;
use crate::registry::{NodeInfo, Registry};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

pub struct Shared {
    pub config: Config,
    /// This node, as pins and redirects name it.
    pub node: NodeInfo,
    /// Tenants, keys and apps: replaced whole by a reload (see [`Shared::directory`]).
    directory: RwLock<Arc<Directory>>,
    /// Bumped by every reload: shards then forget the tokens they verified and close the
    /// sessions of apps that are gone or disabled.
    pub directory_generation: AtomicU64,
    pub registry: Arc<dyn Registry>,
    pub refresh_tokens: RefreshStore,
    pub handshakes_per_ip: IpRateLimiter,
    pub usage_per_ip: IpRateLimiter,
    pub token_requests_per_ip: IpRateLimiter,
    /// Set when the node drains (SIGTERM, or `Node::drain`): no new upgrades.
    pub draining: AtomicBool,
    /// Connections the open-file limit leaves room for (see [`connections_fd_max`]).
    pub connections_fd_max: u64,
    pub memory: super::memory::MemoryWatch,
    /// Bytes held in incomplete frames and messages over every connection of the node,
    /// bounded by `websocket.incomplete_bytes_max`.
    pub incomplete_bytes: AtomicUsize,
    /// The apps' webhooks and load hooks.
    pub webhooks: crate::webhook::Webhooks,
    /// Tenants and apps an operator revoked (PRODUCT.md 13), as last read from the registry.
    pub revoked: super::revoked::Revoked,
    pub admin_per_ip: IpRateLimiter,
    /// This node's live connections and pinned documents per app, which the heartbeat
    /// writes to the registry whole.
    pub held: super::held::Held,
    /// With `[tls]`: the listener's certificate (every connection is TLS).
    pub tls: Option<super::certificate::Tls>,
}

impl Shared {
    pub fn new(
        config: Config,
        node: NodeInfo,
        directory: Directory,
        registry: Arc<dyn Registry>,
        webhooks: crate::webhook::Webhooks,
        shards: usize,
        tls: Option<super::certificate::Tls>,
    ) -> Self {
        let limits = &config.rate_limits;
        // A TLS connection holds three descriptors: its socket and a socket pair.
        let fds_per_connection = if tls.is_some() { 3 } else { 1 };
        Shared {
            handshakes_per_ip: IpRateLimiter::new(
                limits.handshakes_per_minute,
                limits.ipv6_prefix_bits,
            ),
            usage_per_ip: IpRateLimiter::new(limits.usage_per_minute, limits.ipv6_prefix_bits),
            token_requests_per_ip: IpRateLimiter::new(
                limits.token_requests_per_minute,
                limits.ipv6_prefix_bits,
            ),
            admin_per_ip: IpRateLimiter::new(
                limits.admin_requests_per_minute,
                limits.ipv6_prefix_bits,
            ),
            revoked: super::revoked::Revoked::default(),
            held: super::held::Held::new(shards),
            tls,
            refresh_tokens: RefreshStore::default(),
            draining: AtomicBool::new(false),
            connections_fd_max: super::descriptors::connections_max() / fds_per_connection,
            incomplete_bytes: AtomicUsize::new(0),
            webhooks,
            memory: super::memory::MemoryWatch::new(
                config.node.memory_budget_bytes,
                config.node.high_water_percent,
            ),
            config,
            node,
            directory: RwLock::new(Arc::new(directory)),
            directory_generation: AtomicU64::new(0),
            registry,
        }
    }
}

/// Set by the SIGTERM/SIGINT handler (`main`); every node of the process drains.
pub static DRAIN_REQUESTED: AtomicBool = AtomicBool::new(false);

impl Shared {
    /// The tenants, keys and apps in force.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a reloaded directory in force (see `server::reload`).
    pub fn replace_directory(&self, directory: Directory) {
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(directory);
        self.directory_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || DRAIN_REQUESTED.load(Ordering::Relaxed)
    }

    /// Whether open connections (`connections`, over all shards) or resident memory are past
    /// the high-water mark, or client sockets (`sockets`: sessions and sockets in admission)
    /// have taken every file descriptor the open-file limit leaves them.
    pub fn overloaded(&self, connections: u64, sockets: u64) -> bool {
        let node = &self.config.node;
        let over = |used: u64, budget: u64| {
            budget > 0 && used.saturating_mul(100) >= budget.saturating_mul(node.high_water_percent)
        };
        sockets >= self.connections_fd_max
            || over(connections, node.connections_capacity)
            || self.memory.over_high_water(crate::log::monotonic_ms())
    }

    /// Whether client sockets (`sockets`) have eaten half of the descriptors kept back
    /// (`descriptors::RESERVED`) as well. The overload guard refuses upgrades once their head
    /// is read, so sockets that send no head, or plain requests with a slow body, pass it (a
    /// flood of half-open requests). Past this a new socket is answered 503 at once, without
    /// waiting for its request, so that descriptors do not run out.
    pub fn out_of_sockets(&self, sockets: u64) -> bool {
        sockets
            >= self
                .connections_fd_max
                .saturating_add(super::descriptors::RESERVED / 2)
    }
}
