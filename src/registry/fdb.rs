//! The FoundationDB backend: several nodes and regions share one cluster.
//!
//! Key layout, every key under `ws\0{prefix}\0` (the prefix is the license region, the
//! app's `dbCode`); components are joined with `\0`, which no name or id may contain:
//!
//! | key | value |
//! |---|---|
//! | `node\0{node id}` | `NodeRecord` (rkyv): region, URL, last heartbeat |
//! | `pin\0{tenant::app::document}` | `PinRecord` (rkyv): the node it is pinned to |
//! | `conn\0{tenant::app}\0{node id}` | live connections of the app on that node, i64 LE, atomic add |
//! | `docs\0{tenant::app}\0{node id}` | live documents of the app on that node, i64 LE, atomic add |
//! | `bynode\0{node id}\0{tenant::app}` | empty: which counter shards a node has, for takeover |
//! | `revoked\0tenant:{id}`, `revoked\0app:{tenant::app}` | empty: an operator's revocation (PRODUCT.md 13); read by every node each heartbeat |
//! | `secret\0{tenant::app}` | a rotated client secret's hash (PRODUCT.md 13); read by every node each heartbeat |
//!
//! A claim is one transaction: read the pin, the holder's node record and the app's document
//! shards; take a stale holder's pin over, clearing its counter shards; write the pin. Sums
//! for admissions are serializable reads (exact limits); `/usage` reads are snapshot reads.
//! The network thread starts once per process; the futures are driven by the calling shard.

use super::rate::{AppWindows, MinuteWindow};
use super::record::{decode_node, decode_pin, encode_node, encode_pin, NodeRecord, PinRecord};
use super::{Answer, AppKey, Claim, Exceeded, NodeInfo, Registry, Revocation, Unavailable, Usage};
use foundationdb::options::MutationType;
use foundationdb::{Database, FdbBindingError, RangeOption, RetryableTransaction};
use std::sync::{Arc, Once};

pub struct FdbRegistry {
    db: Arc<Database>,
    prefix: Vec<u8>,
    stale_after_ms: u64,
    ops: AppWindows,
}

static NETWORK: Once = Once::new();

impl FdbRegistry {
    /// Connects through `cluster_file` (or the default cluster file).
    pub fn connect(
        cluster_file: Option<&str>,
        prefix: &str,
        stale_after_ms: u64,
    ) -> Result<Self, Unavailable> {
        NETWORK.call_once(|| {
            // SAFETY: booted once per process, and the network runs until the process ends.
            std::mem::forget(unsafe { foundationdb::boot() });
        });
        let db =
            Database::new(cluster_file).map_err(|e| Unavailable(format!("FoundationDB: {e}")))?;
        let mut key = b"ws\0".to_vec();
        key.extend_from_slice(prefix.as_bytes());
        key.push(0);
        Ok(FdbRegistry {
            db: Arc::new(db),
            prefix: key,
            stale_after_ms,
            ops: AppWindows::default(),
        })
    }

    fn key(&self, parts: &[&str]) -> Vec<u8> {
        let mut key = self.prefix.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(0);
            }
            key.extend_from_slice(part.as_bytes());
        }
        key
    }

    /// All keys starting with `parts` and a separator.
    fn range(&self, parts: &[&str]) -> RangeOption<'static> {
        let mut begin = self.key(parts);
        begin.push(0);
        let mut end = begin.clone();
        *end.last_mut().expect("non-empty") = 1;
        RangeOption::from((begin, end))
    }

    /// The pin of `document`, if any (serializable read: claims and releases conflict).
    async fn pin(
        &self,
        trx: &RetryableTransaction,
        document: &str,
    ) -> Result<Option<PinRecord>, FdbBindingError> {
        match trx.get(&self.key(&["pin", document]), false).await? {
            Some(bytes) => Ok(Some(decode_pin(&bytes).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    async fn live_node(
        &self,
        trx: &RetryableTransaction,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<NodeRecord>, FdbBindingError> {
        let Some(bytes) = trx.get(&self.key(&["node", id]), false).await? else {
            return Ok(None);
        };
        let record = decode_node(&bytes).map_err(corrupt)?;
        Ok((now_ms.saturating_sub(record.heartbeat_ms) <= self.stale_after_ms).then_some(record))
    }

    /// The app's count of `kind` (`conn` or `docs`) over every live node.
    async fn total(
        &self,
        trx: &RetryableTransaction,
        kind: &str,
        app: &str,
        now_ms: u64,
        snapshot: bool,
    ) -> Result<u64, FdbBindingError> {
        let shards = trx
            .get_range(&self.range(&[kind, app]), 1, snapshot)
            .await?;
        let mut total = 0u64;
        for kv in shards.iter() {
            let node = kv.key().rsplit(|&b| b == 0).next().unwrap_or_default();
            let node = String::from_utf8_lossy(node);
            if self.live_node(trx, &node, now_ms).await?.is_some() {
                total += decode_count(kv.value());
            }
        }
        Ok(total)
    }

    /// Marks `node` alive and records which of its counter shards exist.
    fn touch(&self, trx: &RetryableTransaction, node: &NodeInfo, app: Option<&str>, now_ms: u64) {
        let record = NodeRecord {
            id: node.id.clone(),
            region: node.region.clone(),
            url: node.url.clone(),
            heartbeat_ms: now_ms,
        };
        trx.set(&self.key(&["node", &node.id]), &encode_node(&record));
        if let Some(app) = app {
            trx.set(&self.key(&["bynode", &node.id, app]), b"");
        }
    }

    /// Sets one key, in a transaction of its own.
    fn set(&self, key: Vec<u8>, value: Vec<u8>) -> Answer<'_, ()> {
        Box::pin(async move {
            self.db
                .run(|trx, _| {
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        trx.set(&key, &value);
                        Ok(())
                    }
                })
                .await
                .map_err(unavailable)
        })
    }

    /// Every key under `kind` (its last component) and value, in every batch (snapshot read:
    /// a long list must not be cut short).
    async fn read_all(
        &self,
        trx: &RetryableTransaction,
        kind: &str,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, FdbBindingError> {
        let mut out = Vec::new();
        let mut range = Some(self.range(&[kind]));
        let mut iteration = 1;
        while let Some(opt) = range {
            let kvs = trx.get_range(&opt, iteration, true).await?;
            for kv in kvs.iter() {
                let name = kv.key().rsplit(|&b| b == 0).next().unwrap_or_default();
                out.push((name.to_vec(), kv.value().to_vec()));
            }
            range = if kvs.more() {
                opt.next_range(&kvs)
            } else {
                None
            };
            iteration += 1;
        }
        Ok(out)
    }

    /// Removes a stale node: its record and its counter shards.
    async fn bury(&self, trx: &RetryableTransaction, node_id: &str) -> Result<(), FdbBindingError> {
        let apps = trx
            .get_range(&self.range(&["bynode", node_id]), 1, false)
            .await?;
        for kv in apps.iter() {
            let app =
                String::from_utf8_lossy(kv.key().rsplit(|&b| b == 0).next().unwrap_or_default())
                    .into_owned();
            trx.clear(&self.key(&["conn", &app, node_id]));
            trx.clear(&self.key(&["docs", &app, node_id]));
        }
        let range = self.range(&["bynode", node_id]);
        trx.clear_range(range.begin.key(), range.end.key());
        trx.clear(&self.key(&["node", node_id]));
        Ok(())
    }
}

fn decode_count(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    let n = bytes.len().min(8);
    le[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(le).max(0) as u64
}

fn add(trx: &RetryableTransaction, key: &[u8], delta: i64) {
    trx.atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
}

fn unavailable(e: FdbBindingError) -> Unavailable {
    Unavailable(format!("FoundationDB: {e}"))
}

fn corrupt(e: super::record::CorruptRecord) -> FdbBindingError {
    FdbBindingError::new_custom_error(e.0.into())
}

impl Registry for FdbRegistry {
    fn heartbeat<'a>(&'a self, node: &'a NodeInfo, now_ms: u64) -> Answer<'a, ()> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    self.touch(&trx, node, None, now_ms);
                    Ok(())
                })
                .await
                .map_err(unavailable)
        })
    }

    fn claim<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        documents_max: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Claim> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    let pin_key = self.key(&["pin", document]);
                    if let Some(pin) = self.pin(&trx, document).await? {
                        if pin.node_id == node.id {
                            self.touch(&trx, node, Some(app), now_ms);
                            return Ok(Claim::AlreadyHere);
                        }
                        match self.live_node(&trx, &pin.node_id, now_ms).await? {
                            Some(home) => {
                                return Ok(Claim::Elsewhere(NodeInfo {
                                    id: home.id,
                                    region: home.region,
                                    url: home.url,
                                }));
                            }
                            None => self.bury(&trx, &pin.node_id).await?,
                        }
                    }
                    let active = self.total(&trx, "docs", app, now_ms, false).await?;
                    if let Some(limit) = documents_max {
                        if active >= limit {
                            return Ok(Claim::DocumentLimit(Exceeded { limit, active }));
                        }
                    }
                    trx.set(
                        &pin_key,
                        &encode_pin(&PinRecord {
                            node_id: node.id.clone(),
                            claimed_ms: now_ms,
                        }),
                    );
                    add(&trx, &self.key(&["docs", app, &node.id]), 1);
                    self.touch(&trx, node, Some(app), now_ms);
                    Ok(Claim::Pinned)
                })
                .await
                .map_err(unavailable)
        })
    }

    fn release<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    if let Some(pin) = self.pin(&trx, document).await? {
                        if pin.node_id == node.id {
                            trx.clear(&self.key(&["pin", document]));
                            add(&trx, &self.key(&["docs", app, &node.id]), -1);
                        }
                    }
                    self.touch(&trx, node, None, now_ms);
                    Ok(())
                })
                .await
                .map_err(unavailable)
        })
    }

    fn lookup<'a>(&'a self, document: &'a str, now_ms: u64) -> Answer<'a, Option<NodeInfo>> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    let Some(bytes) = trx.get(&self.key(&["pin", document]), true).await? else {
                        return Ok(None);
                    };
                    let pin = decode_pin(&bytes).map_err(corrupt)?;
                    Ok(self
                        .live_node(&trx, &pin.node_id, now_ms)
                        .await?
                        .map(|n| NodeInfo {
                            id: n.id,
                            region: n.region,
                            url: n.url,
                        }))
                })
                .await
                .map_err(unavailable)
        })
    }

    fn acquire_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        limit: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Result<(), Exceeded>> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    if let Some(limit) = limit {
                        let active = self.total(&trx, "conn", app, now_ms, false).await?;
                        if active >= limit {
                            return Ok(Err(Exceeded { limit, active }));
                        }
                    }
                    add(&trx, &self.key(&["conn", app, &node.id]), 1);
                    self.touch(&trx, node, Some(app), now_ms);
                    Ok(Ok(()))
                })
                .await
                .map_err(unavailable)
        })
    }

    fn release_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    add(&trx, &self.key(&["conn", app, &node.id]), -1);
                    self.touch(&trx, node, None, now_ms);
                    Ok(())
                })
                .await
                .map_err(unavailable)
        })
    }

    fn usage<'a>(&'a self, app: &'a AppKey, now_ms: u64) -> Answer<'a, Usage> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    Ok(Usage {
                        connections: self.total(&trx, "conn", app, now_ms, true).await?,
                        documents: self.total(&trx, "docs", app, now_ms, true).await?,
                    })
                })
                .await
                .map_err(unavailable)
        })
    }

    fn revoke<'a>(&'a self, what: &'a Revocation) -> Answer<'a, ()> {
        self.set(self.key(&["revoked", &what.name()]), Vec::new())
    }

    fn restore<'a>(&'a self, what: &'a Revocation) -> Answer<'a, bool> {
        Box::pin(async move {
            let key = self.key(&["revoked", &what.name()]);
            self.db
                .run(|trx, _| {
                    let key = key.clone();
                    async move {
                        let was = trx.get(&key, false).await?.is_some();
                        trx.clear(&key);
                        Ok(was)
                    }
                })
                .await
                .map_err(unavailable)
        })
    }

    fn revocations(&self) -> Answer<'_, Vec<Revocation>> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    let mut out = Vec::new();
                    for (name, _) in self.read_all(&trx, "revoked").await? {
                        // A revocation that cannot be read is an error, never a gap.
                        let parsed = std::str::from_utf8(&name).ok().and_then(Revocation::parse);
                        out.push(parsed.ok_or_else(|| unreadable("revocation"))?);
                    }
                    out.sort();
                    Ok(out)
                })
                .await
                .map_err(unavailable)
        })
    }

    fn set_client_secret<'a>(&'a self, app: &'a AppKey, hash: &'a str) -> Answer<'a, ()> {
        self.set(self.key(&["secret", app]), hash.as_bytes().to_vec())
    }

    fn client_secrets(&self) -> Answer<'_, Vec<(String, String)>> {
        Box::pin(async move {
            self.db
                .run(|trx, _| async move {
                    let mut out = Vec::new();
                    for (app, hash) in self.read_all(&trx, "secret").await? {
                        let app = String::from_utf8(app).map_err(|_| unreadable("secret"))?;
                        let hash = String::from_utf8(hash).map_err(|_| unreadable("secret"))?;
                        out.push((app, hash));
                    }
                    out.sort();
                    Ok(out)
                })
                .await
                .map_err(unavailable)
        })
    }

    fn ops_window(&self, app: &AppKey) -> Arc<MinuteWindow> {
        self.ops.get(app)
    }
}

fn unreadable(what: &str) -> FdbBindingError {
    corrupt(super::record::CorruptRecord(format!(
        "an unreadable {what}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Arc::new(
                FdbRegistry::connect(Some(&cluster), &prefix, stale_after_ms)
                    .expect("cluster reachable"),
            )
        });
    }
}
