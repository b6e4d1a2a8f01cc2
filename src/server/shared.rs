//! Node-wide state every shard shares: the control plane (configuration, tenants and keys,
//! the registry, refresh tokens, per-IP budgets). The data plane stays in each shard.

use crate::auth::directory::Directory;
use crate::auth::oauth::RefreshStore;
use crate::config::Config;
use crate::http::ip_rate::IpRateLimiter;
use crate::registry::{NodeInfo, Registry};
use std::sync::Arc;

pub struct Shared {
    pub config: Config,
    /// This node, as pins and redirects name it.
    pub node: NodeInfo,
    pub directory: Directory,
    pub registry: Arc<dyn Registry>,
    pub refresh_tokens: RefreshStore,
    pub handshakes_per_ip: IpRateLimiter,
    pub usage_per_ip: IpRateLimiter,
    pub token_requests_per_ip: IpRateLimiter,
}

impl Shared {
    pub fn new(
        config: Config,
        node: NodeInfo,
        directory: Directory,
        registry: Arc<dyn Registry>,
    ) -> Self {
        let limits = &config.rate_limits;
        Shared {
            handshakes_per_ip: IpRateLimiter::new(limits.handshakes_per_minute),
            usage_per_ip: IpRateLimiter::new(limits.usage_per_minute),
            token_requests_per_ip: IpRateLimiter::new(limits.token_requests_per_minute),
            refresh_tokens: RefreshStore::default(),
            config,
            node,
            directory,
            registry,
        }
    }
}
