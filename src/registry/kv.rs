//! The small transactional key-value interface the shared registry (`cluster`) is written
//! over: FoundationDB's transactions implement it (`fdb`, behind the feature), and so does
//! the simulated store of the test suite (`simulated`), which injects the faults a real
//! cluster has. The registry's logic is therefore compiled and tested everywhere; only the
//! adapter needs libfdb_c.
//!
//! The contract is FoundationDB's: a transaction reads at one version and sees its own
//! writes; its commit fails with a conflict (and the body runs again) if a key it read
//! without `snapshot` was written by a commit after its read version; `add` writes without
//! reading, so it never conflicts. A body may run several times, and after a commit whose
//! result was unknown it may run again although its writes landed: bodies must be
//! idempotent, or their effect repaired later (see `cluster`).

use std::future::Future;

/// Why a transaction did not commit, as its caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// A read failed in a way that running the body again may cure (FoundationDB's error
    /// code: its retry loop decides); never seen by a caller of [`Store::run`] unless the
    /// retries ran out, as [`KvError::Unavailable`].
    Retry(i32),
    /// The store did not answer in time, or the retries ran out: whether the writes landed
    /// is not known.
    Unavailable(String),
    /// A stored record could not be read (never retried: it would fail again).
    Corrupt(String),
}

/// Keys and values of a range read, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One transaction's reads and writes.
pub trait Transaction {
    /// The value at `key`. A `snapshot` read adds nothing to the conflict set.
    fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>>;
    /// Every key and value in `[begin, end)`, in key order (all of them: the adapter reads
    /// every batch).
    fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Pairs, KvError>>;
    fn set(&self, key: &[u8], value: &[u8]);
    fn clear(&self, key: &[u8]);
    fn clear_range(&self, begin: &[u8], end: &[u8]);
    /// Adds `delta` to the little-endian `i64` at `key` (absent: 0), without reading it.
    fn add(&self, key: &[u8], delta: i64);
}

/// A store that runs transactions.
pub trait Store: Send + Sync + 'static {
    type Transaction: Transaction;
    /// Runs `body` in a new transaction and commits what it wrote, running it again on a
    /// conflict or a retryable failure, a [`KvError::Retry`] from the body included (see the
    /// module's contract); a [`KvError::Corrupt`] from the body ends it at once.
    fn run<T>(
        &self,
        body: impl AsyncFn(&Self::Transaction) -> Result<T, KvError>,
    ) -> impl Future<Output = Result<T, KvError>>;
}

/// The little-endian `i64` counter `add` keeps, as a count (a negative one, which only a
/// lost increment could make, reads as 0).
pub fn decode_count(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    let n = bytes.len().min(8);
    le[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(le).max(0) as u64
}
