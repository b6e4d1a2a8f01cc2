//! FoundationDB as the registry's store: the adapter from [`Store`] to the `foundationdb`
//! crate (the registry's logic, key layout and transactions are `cluster`'s). The network
//! thread starts once per process; the futures are driven by the calling shard.

use super::cluster::ClusterRegistry;
use super::kv::{KvError, Pairs, Store, Transaction};
use super::Unavailable;
use foundationdb::options::MutationType;
use foundationdb::{Database, FdbBindingError, FdbError, RangeOption, RetryableTransaction};
use std::sync::Once;

pub struct FdbStore {
    db: Database,
}

static NETWORK: Once = Once::new();

/// The registry on the cluster `cluster_file` names (or the default cluster file).
pub fn connect(
    cluster_file: Option<&str>,
    prefix: &str,
    stale_after_ms: u64,
) -> Result<ClusterRegistry<FdbStore>, Unavailable> {
    NETWORK.call_once(|| {
        // SAFETY: booted once per process, and the network runs until the process ends.
        std::mem::forget(unsafe { foundationdb::boot() });
    });
    let db = Database::new(cluster_file).map_err(|e| Unavailable(format!("FoundationDB: {e}")))?;
    Ok(ClusterRegistry::new(
        FdbStore { db },
        prefix,
        stale_after_ms,
    ))
}

/// A transaction of the `foundationdb` crate.
pub struct FdbTransaction(RetryableTransaction);

/// A body's error carried through `Database::run`: a failed read as FoundationDB's own error
/// (its retry loop decides whether to run the body again), any other as a custom error (not
/// retried).
fn to_binding(e: KvError) -> FdbBindingError {
    match e {
        KvError::Retry(code) => FdbBindingError::from(FdbError::from_code(code)),
        other => FdbBindingError::new_custom_error(Box::new(CarriedError(other))),
    }
}

/// A read's error, kept as FoundationDB's code so that `Database::run` can retry it.
fn read_error(e: FdbError) -> KvError {
    KvError::Retry(e.code())
}

#[derive(Debug)]
struct CarriedError(KvError);

impl std::fmt::Display for CarriedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for CarriedError {}

fn from_binding(e: FdbBindingError) -> KvError {
    match e {
        FdbBindingError::CustomError(boxed) => match boxed.downcast::<CarriedError>() {
            Ok(carried) => carried.0,
            Err(other) => KvError::Unavailable(format!("FoundationDB: {other}")),
        },
        other => KvError::Unavailable(format!("FoundationDB: {other}")),
    }
}

impl Transaction for FdbTransaction {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.0.get(key, snapshot).await.map_err(read_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_range(&self, begin: &[u8], end: &[u8], snapshot: bool) -> Result<Pairs, KvError> {
        let mut out = Vec::new();
        let mut range = Some(RangeOption::from((begin.to_vec(), end.to_vec())));
        let mut iteration = 1;
        // Every batch: a long range must not be cut short.
        while let Some(opt) = range {
            let kvs = self.0.get_range(&opt, iteration, snapshot).await;
            let kvs = kvs.map_err(read_error)?;
            out.extend(
                kvs.iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            range = if kvs.more() {
                opt.next_range(&kvs)
            } else {
                None
            };
            iteration += 1;
        }
        Ok(out)
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.0.set(key, value);
    }

    fn clear(&self, key: &[u8]) {
        self.0.clear(key);
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.0.clear_range(begin, end);
    }

    fn add(&self, key: &[u8], delta: i64) {
        self.0
            .atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
    }
}

impl Store for FdbStore {
    type Transaction = FdbTransaction;

    async fn run<T>(
        &self,
        body: impl AsyncFn(&FdbTransaction) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let body = &body;
        self.db
            .run(|trx, _| async move {
                let trx = FdbTransaction(trx);
                body(&trx).await.map_err(to_binding)
            })
            .await
            .map_err(from_binding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs the conformance suite against the cluster `FDB_CLUSTER_FILE` names; says loudly
    /// when there is none (these machines have no FoundationDB).
    #[test]
    fn passes_the_conformance_suite_against_a_real_cluster() {
        let Ok(cluster) = std::env::var("FDB_CLUSTER_FILE") else {
            eprintln!("NOT RUN: FoundationDB conformance suite (set FDB_CLUSTER_FILE to a reachable cluster)");
            return;
        };
        let run = std::sync::atomic::AtomicU64::new(0);
        super::super::conformance::run_all(|stale_after_ms| {
            let prefix = format!(
                "test-{}-{}",
                std::process::id(),
                run.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            Arc::new(connect(Some(&cluster), &prefix, stale_after_ms).expect("cluster reachable"))
        });
    }
}
