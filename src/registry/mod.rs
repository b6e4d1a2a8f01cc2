//! The `Registry`: what the shards of a node, and the nodes of every region, share — where
//! each live document is pinned, node heartbeats, live connection and document counts per
//! app, and the apps' update rates. Admission decisions (4004, 4005, 4009) are made against
//! it. Calls are asynchronous because a distributed backend answers over the network;
//! `embedded` (one process) answers at once; `cluster` is the registry several nodes share,
//! written over the small transactional interface of `kv`, which FoundationDB (`fdb`, behind
//! the feature) and, in tests, the fault-injecting `simulated` store implement.
//! `conformance` is the suite every backend passes.

pub mod cluster;
pub mod conformance;
pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod kv;
pub mod rate;
pub mod record;
#[cfg(test)]
mod simulated;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An app, as counters know it: `{tenant}::{app}`.
pub type AppKey = str;

/// A node as others see it: where to redirect a document's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// `{region-name}-{cluster-id}`, e.g. `eu-central-1`.
    pub region: String,
    /// The node's public WebSocket base URL, e.g. `wss://eu1.example.com`.
    pub url: String,
}

/// A refused admission: the limit, and how many were active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: u64,
    pub active: u64,
}

/// The app's current counts over every live node, for `/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub connections: u64,
    pub documents: u64,
}

/// What claiming a document's pin found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The document is now pinned here (and counted as one of the app's documents).
    Pinned,
    /// It was already pinned here.
    AlreadyHere,
    /// It lives on another live node.
    Elsewhere(NodeInfo),
    /// Pinning it would pass the app's `maxDocuments`.
    DocumentLimit(Exceeded),
}

/// What an operator cut off (PRODUCT.md 13), kept in the registry so every node sees it and
/// a reload of the configuration file does not undo it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Revocation {
    Tenant(String),
    /// `{tenant}::{app}`.
    App(String),
    /// `{tenant}::{kid}`: tokens signed with the tenant's key `kid` (tenant ids never hold
    /// `::`, so the first one ends the tenant).
    Key(String),
}

impl Revocation {
    /// `tenant:{id}`, `app:{tenant}::{app}` or `key:{tenant}::{kid}`: how it is listed and
    /// stored.
    pub fn name(&self) -> String {
        match self {
            Revocation::Tenant(id) => format!("tenant:{id}"),
            Revocation::App(key) => format!("app:{key}"),
            Revocation::Key(key) => format!("key:{key}"),
        }
    }

    /// Whether `name` is of a kind this version knows (`tenant:`, `app:`, `key:`).
    pub fn known_kind(name: &str) -> bool {
        ["tenant:", "app:", "key:"]
            .iter()
            .any(|k| name.starts_with(k))
    }

    pub fn parse(name: &str) -> Option<Revocation> {
        match name.split_once(':')? {
            ("tenant", id) if !id.is_empty() => Some(Revocation::Tenant(id.to_owned())),
            ("app", key) if key.split("::").count() == 2 => Some(Revocation::App(key.to_owned())),
            ("key", key) => match key.split_once("::") {
                Some((tenant, kid)) if !tenant.is_empty() && !kid.is_empty() => {
                    Some(Revocation::Key(key.to_owned()))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// The registry could not answer: live sessions go on, new admissions are refused (1013).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, Unavailable>> + 'a>>;

pub trait Registry: Send + Sync {
    /// Records that `node` is alive at `now_ms` and holds `held`: each app's live
    /// connections and pinned documents on it (an app not listed: none). These replace the
    /// counts its calls' +1/−1 left there, which a lost or doubled mutation can have made
    /// wrong.
    fn heartbeat<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(String, Usage)],
        now_ms: u64,
    ) -> Answer<'a, ()>;
    /// Pins `document` (an isolation key) to `node` in one step, or names its live home. A
    /// pin held by a node whose heartbeat is stale is taken over, and that node's counts are
    /// released.
    fn claim<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        documents_max: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Claim>;
    /// Ends `node`'s pin of `document` (its grace period ended) and its document count.
    fn release<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()>;
    /// The live node a document is pinned to, if any.
    fn lookup<'a>(&'a self, document: &'a str, now_ms: u64) -> Answer<'a, Option<NodeInfo>>;
    /// Counts one more live connection of `app` on `node`, unless the app's total over
    /// every live node would pass `limit`.
    fn acquire_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        limit: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Result<(), Exceeded>>;
    fn release_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()>;
    fn usage<'a>(&'a self, app: &'a AppKey, now_ms: u64) -> Answer<'a, Usage>;
    /// Records a revocation (idempotent).
    fn revoke<'a>(&'a self, what: &'a Revocation) -> Answer<'a, ()>;
    /// Lifts a revocation; whether there was one.
    fn restore<'a>(&'a self, what: &'a Revocation) -> Answer<'a, bool>;
    /// Every revocation in force, in order.
    fn revocations(&self) -> Answer<'_, Vec<Revocation>>;
    /// Records `app`'s rotated client secret hash (replacing the configured one everywhere).
    fn set_client_secret<'a>(&'a self, app: &'a AppKey, hash: &'a str) -> Answer<'a, ()>;
    /// Every rotated client secret hash, by app.
    fn client_secrets(&self) -> Answer<'_, Vec<(String, String)>>;
    /// The app's sliding-minute update counter for this region; shards keep the `Arc` so that
    /// counting an update is a few atomic operations, not a registry call.
    fn ops_window(&self, app: &AppKey) -> Arc<rate::MinuteWindow>;
    /// Publishes `node`'s update counts of the last minute and reads the other nodes' into
    /// each app's window (called every second: between two calls the other nodes' updates
    /// are not seen, which bounds how far a region can pass `opsPerMinute`). A registry that
    /// one process holds alone has nothing to do.
    fn sync_ops<'a>(&'a self, node: &'a NodeInfo, now_ms: u64) -> Answer<'a, ()>;
}
