//! The `Registry`: what several shards (and, with the regions issue, several nodes) share —
//! live connection and document counts per app, and the apps' update rates. Admission
//! decisions (4004, 4005, 4006) are made against it; `embedded` is the single-node backend.

pub mod embedded;
pub mod rate;

use std::sync::Arc;

/// An app, as counters know it: `{tenant}::{app}`.
pub type AppKey = str;

/// A refused admission: the limit, and how many were active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: u64,
    pub active: u64,
}

/// The app's current counts, for `/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub connections: u64,
    pub documents: u64,
}

pub trait Registry: Send + Sync {
    /// Counts one more live connection of `app`, unless that would pass `limit`.
    fn acquire_connection(&self, app: &AppKey, limit: Option<u64>) -> Result<(), Exceeded>;
    fn release_connection(&self, app: &AppKey);
    /// Counts one more live document (session) of `app`, unless that would pass `limit`.
    fn acquire_document(&self, app: &AppKey, limit: Option<u64>) -> Result<(), Exceeded>;
    fn release_document(&self, app: &AppKey);
    fn usage(&self, app: &AppKey) -> Usage;
    /// The app's sliding-minute update counter; shards keep the `Arc` so that counting an
    /// update is a few atomic operations, not a registry call.
    fn ops_window(&self, app: &AppKey) -> Arc<rate::MinuteWindow>;
}
