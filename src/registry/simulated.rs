//! An in-memory [`Store`] for the registry's tests, with FoundationDB's transaction
//! semantics — reads at the version the transaction began at, its own writes seen, a commit
//! refused when a key it read (not as a snapshot) was written since — and the faults a real
//! cluster has, injected deterministically from a seed: reads that fail retryably (FoundationDB's
//! `transaction_too_old` and the like: the body runs again), spurious conflicts (the body runs
//! again), commits whose result is unknown (they may or may not have landed; the body runs
//! again), and timeouts (the caller is told the store is unavailable, whether or not the
//! commit landed). Several registries over clones of one store are several nodes.

use super::kv::{KvError, Pairs, Store, Transaction};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Faults per 1,000 commits of a transaction that wrote something (timeouts: per 1,000 of
/// any transaction; failed reads: per 1,000 reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub read_retry: u32,
    pub conflict: u32,
    pub unknown_result: u32,
    pub timeout: u32,
}

/// What was injected, for a test to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub read_retries: u64,
    pub conflicts: u64,
    /// Commits whose result was unknown, and of those how many had landed.
    pub unknown_results: u64,
    pub unknown_landed: u64,
    pub timeouts: u64,
    pub timeouts_landed: u64,
    /// Conflicts the store found itself (two transactions really overlapping).
    pub real_conflicts: u64,
}

/// How often a body runs before the caller is told the store is unavailable.
const ATTEMPTS_MAX: usize = 100;

#[derive(Clone)]
pub struct SimStore {
    inner: Arc<Mutex<Inner>>,
    faults: Faults,
}

/// Part of the key space a transaction read or a commit wrote.
#[derive(Debug, Clone)]
enum Span {
    Key(Vec<u8>),
    /// `[begin, end)`.
    Range(Vec<u8>, Vec<u8>),
}

impl Span {
    fn overlaps(&self, other: &Span) -> bool {
        match (self, other) {
            (Span::Key(a), Span::Key(b)) => a == b,
            (Span::Key(k), Span::Range(b, e)) | (Span::Range(b, e), Span::Key(k)) => {
                b <= k && k < e
            }
            (Span::Range(b1, e1), Span::Range(b2, e2)) => b1 < e2 && b2 < e1,
        }
    }
}

#[derive(Debug, Clone)]
enum Write {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Add(Vec<u8>, i64),
}

impl Write {
    fn span(&self) -> Span {
        match self {
            Write::Set(k, _) | Write::Clear(k) | Write::Add(k, _) => Span::Key(k.clone()),
            Write::ClearRange(b, e) => Span::Range(b.clone(), e.clone()),
        }
    }

    /// `value` of `key` after this write.
    fn apply(&self, key: &[u8], value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match self {
            Write::Set(k, v) if k == key => Some(v.clone()),
            Write::Clear(k) if k == key => None,
            Write::ClearRange(b, e) if b.as_slice() <= key && key < e.as_slice() => None,
            Write::Add(k, delta) if k == key => {
                let mut le = [0u8; 8];
                if let Some(v) = &value {
                    let n = v.len().min(8);
                    le[..n].copy_from_slice(&v[..n]);
                }
                Some(
                    i64::from_le_bytes(le)
                        .wrapping_add(*delta)
                        .to_le_bytes()
                        .to_vec(),
                )
            }
            _ => value,
        }
    }
}

/// A key's values by version, oldest first (`None`: cleared).
type Versions = Vec<(u64, Option<Vec<u8>>)>;

struct Inner {
    data: BTreeMap<Vec<u8>, Versions>,
    version: u64,
    /// What each commit wrote, by version, oldest first.
    commits: Vec<(u64, Vec<Span>)>,
    rng: u64,
    injected: Injected,
}

impl Inner {
    fn value_at(&self, key: &[u8], version: u64) -> Option<Vec<u8>> {
        let versions = self.data.get(key)?;
        let at = versions.iter().rev().find(|(v, _)| *v <= version)?;
        at.1.clone()
    }

    /// One in `per_mille` of 1,000 (xorshift64*: the same seed, the same faults).
    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
        (draw % 1_000) < u64::from(per_mille)
    }

    fn apply(&mut self, writes: &[Write]) {
        self.version += 1;
        let version = self.version;
        for write in writes {
            let keys: Vec<Vec<u8>> = match write {
                Write::ClearRange(b, e) => self
                    .data
                    .range(b.clone()..e.clone())
                    .map(|(k, _)| k.clone())
                    .collect(),
                Write::Set(k, _) | Write::Clear(k) | Write::Add(k, _) => vec![k.clone()],
            };
            for key in keys {
                let old = self.value_at(&key, version);
                let new = write.apply(&key, old);
                self.data.entry(key).or_default().push((version, new));
            }
        }
        let spans = writes.iter().map(Write::span).collect();
        self.commits.push((version, spans));
    }
}

impl SimStore {
    /// An empty store injecting `faults`, drawn from `seed`.
    pub fn new(seed: u64, faults: Faults) -> SimStore {
        SimStore {
            inner: Arc::new(Mutex::new(Inner {
                data: BTreeMap::new(),
                version: 0,
                commits: Vec::new(),
                rng: seed.max(1),
                injected: Injected::default(),
            })),
            faults,
        }
    }

    pub fn injected(&self) -> Injected {
        lock(&self.inner).injected
    }

    /// Commits `trx`: `Ok(true)` landed, `Ok(false)` conflicted (run again), `Err` the
    /// caller is told; an unknown result is `Ok(false)` whether or not it landed.
    fn commit(&self, trx: &SimTransaction) -> Result<bool, KvError> {
        let mut inner = lock(&self.inner);
        let writes = trx.writes.borrow();
        let faults = self.faults;
        if writes.is_empty() {
            if inner.chance(faults.timeout) {
                inner.injected.timeouts += 1;
                return Err(KvError::Unavailable("injected timeout".into()));
            }
            return Ok(true);
        }
        let reads = trx.reads.borrow();
        let conflicted = inner
            .commits
            .iter()
            .filter(|(v, _)| *v > trx.read_version)
            .any(|(_, spans)| spans.iter().any(|w| reads.iter().any(|r| r.overlaps(w))));
        if conflicted {
            inner.injected.real_conflicts += 1;
            return Ok(false);
        }
        if inner.chance(faults.conflict) {
            inner.injected.conflicts += 1;
            return Ok(false);
        }
        if inner.chance(faults.unknown_result) {
            inner.injected.unknown_results += 1;
            if inner.chance(500) {
                inner.injected.unknown_landed += 1;
                inner.apply(&writes);
            }
            return Ok(false);
        }
        if inner.chance(faults.timeout) {
            inner.injected.timeouts += 1;
            if inner.chance(500) {
                inner.injected.timeouts_landed += 1;
                inner.apply(&writes);
            }
            return Err(KvError::Unavailable("injected timeout".into()));
        }
        inner.apply(&writes);
        Ok(true)
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct SimTransaction {
    inner: Arc<Mutex<Inner>>,
    read_retry: u32,
    read_version: u64,
    reads: RefCell<Vec<Span>>,
    writes: RefCell<Vec<Write>>,
}

impl SimTransaction {
    /// Records a read (failing it retryably as often as the faults say).
    fn read(&self, inner: &mut Inner, span: Span, snapshot: bool) -> Result<(), KvError> {
        if inner.chance(self.read_retry) {
            inner.injected.read_retries += 1;
            // FoundationDB's transaction_too_old.
            return Err(KvError::Retry(1007));
        }
        if !snapshot {
            self.reads.borrow_mut().push(span);
        }
        Ok(())
    }

    /// `key`'s value at the read version with this transaction's writes applied.
    fn value(&self, inner: &Inner, key: &[u8]) -> Option<Vec<u8>> {
        let base = inner.value_at(key, self.read_version);
        self.writes
            .borrow()
            .iter()
            .fold(base, |value, write| write.apply(key, value))
    }
}

impl Transaction for SimTransaction {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, KvError> {
        let mut inner = lock(&self.inner);
        self.read(&mut inner, Span::Key(key.to_vec()), snapshot)?;
        Ok(self.value(&inner, key))
    }

    async fn get_range(&self, begin: &[u8], end: &[u8], snapshot: bool) -> Result<Pairs, KvError> {
        let mut inner = lock(&self.inner);
        self.read(
            &mut inner,
            Span::Range(begin.to_vec(), end.to_vec()),
            snapshot,
        )?;
        let mut keys: Vec<Vec<u8>> = inner
            .data
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for write in self.writes.borrow().iter() {
            if let Write::Set(k, _) | Write::Add(k, _) = write {
                if begin <= k.as_slice() && k.as_slice() < end {
                    keys.push(k.clone());
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys
            .into_iter()
            .filter_map(|k| self.value(&inner, &k).map(|v| (k, v)))
            .collect())
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        let write = Write::Set(key.to_vec(), value.to_vec());
        self.writes.borrow_mut().push(write);
    }

    fn clear(&self, key: &[u8]) {
        self.writes.borrow_mut().push(Write::Clear(key.to_vec()));
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let write = Write::ClearRange(begin.to_vec(), end.to_vec());
        self.writes.borrow_mut().push(write);
    }

    fn add(&self, key: &[u8], delta: i64) {
        self.writes
            .borrow_mut()
            .push(Write::Add(key.to_vec(), delta));
    }
}

impl Store for SimStore {
    type Transaction = SimTransaction;

    async fn run<T>(
        &self,
        body: impl AsyncFn(&SimTransaction) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        for _ in 0..ATTEMPTS_MAX {
            let trx = SimTransaction {
                inner: self.inner.clone(),
                read_retry: self.faults.read_retry,
                read_version: lock(&self.inner).version,
                reads: RefCell::new(Vec::new()),
                writes: RefCell::new(Vec::new()),
            };
            let value = match body(&trx).await {
                Err(KvError::Retry(_)) => continue,
                other => other?,
            };
            if self.commit(&trx)? {
                return Ok(value);
            }
        }
        Err(KvError::Unavailable(format!(
            "no commit in {ATTEMPTS_MAX} attempts"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::conformance::block_on;

    fn counter(store: &SimStore, key: &[u8]) -> i64 {
        let value = block_on(store.run(async |trx| trx.get(key, true).await)).unwrap();
        value.map_or(0, |v| i64::from_le_bytes(v.try_into().unwrap()))
    }

    #[test]
    fn a_transaction_reads_at_its_version_and_sees_its_own_writes() {
        let store = SimStore::new(1, Faults::default());
        block_on(store.run(async |trx| {
            trx.set(b"a", b"1");
            trx.add(b"n", 2);
            assert_eq!(trx.get(b"a", false).await?, Some(b"1".to_vec()));
            let range = trx.get_range(b"a", b"z", false).await?;
            assert_eq!(range.len(), 2, "its own writes are in its ranges");
            Ok(())
        }))
        .unwrap();
        assert_eq!(counter(&store, b"n"), 2);
        block_on(store.run(async |trx| {
            trx.clear_range(b"a", b"m");
            assert_eq!(trx.get(b"a", false).await?, None);
            assert_eq!(trx.get_range(b"a", b"z", false).await?.len(), 1);
            Ok(())
        }))
        .unwrap();
        assert_eq!(counter(&store, b"n"), 2, "outside the cleared range");
    }

    #[test]
    fn a_commit_conflicts_with_one_that_wrote_what_it_read() {
        let store = SimStore::new(1, Faults::default());
        let runs = std::cell::Cell::new(0);
        // The first run reads `k`, then another commit writes it: the first run's commit is
        // refused and the body runs again.
        block_on(store.run(async |trx| {
            runs.set(runs.get() + 1);
            let seen = trx.get(b"k", false).await?;
            if runs.get() == 1 {
                block_on(store.run(async |other| {
                    other.set(b"k", b"theirs");
                    Ok(())
                }))?;
            }
            trx.set(b"k2", &seen.unwrap_or_default());
            Ok(())
        }))
        .unwrap();
        assert_eq!(runs.get(), 2);
        assert_eq!(store.injected().real_conflicts, 1);
        // A snapshot read does not conflict; nor does an add.
        block_on(store.run(async |trx| {
            let _ = trx.get(b"k", true).await?;
            trx.add(b"k3", 1);
            block_on(store.run(async |other| {
                other.set(b"k", b"again");
                other.add(b"k3", 1);
                Ok(())
            }))?;
            Ok(())
        }))
        .unwrap();
        assert_eq!(store.injected().real_conflicts, 1);
        assert_eq!(counter(&store, b"k3"), 2);
    }

    #[test]
    fn injected_faults_are_the_same_for_the_same_seed() {
        let faults = Faults {
            read_retry: 100,
            conflict: 100,
            unknown_result: 100,
            timeout: 100,
        };
        let run = |seed| {
            let store = SimStore::new(seed, faults);
            for _ in 0..200 {
                let _ = block_on(store.run(async |trx| {
                    trx.get(b"m", false).await?;
                    trx.add(b"n", 1);
                    Ok(())
                }));
            }
            (store.injected(), counter(&store, b"n"))
        };
        assert_eq!(run(7), run(7));
        let (injected, _) = run(7);
        assert!(injected.conflicts > 0 && injected.unknown_results > 0 && injected.timeouts > 0);
        assert!(injected.read_retries > 0);
        assert!(injected.unknown_landed > 0 && injected.timeouts_landed > 0);
    }
}
