//! The embedded registry: one process, every shard (and, in tests, several nodes) sharing
//! one instance behind a mutex. Admissions and pins take the lock; counting updates does not
//! (the sliding-minute windows are atomics).

use super::rate::{AppWindows, MinuteWindow};
use super::{Answer, AppKey, Claim, Exceeded, NodeInfo, Registry, Revocation, Usage};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    connections: u64,
    documents: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Node id → (its info, last heartbeat).
    nodes: HashMap<String, (NodeInfo, u64)>,
    /// Document → the id of the node it is pinned to.
    pins: HashMap<String, String>,
    /// (app, node id) → counts: per node, so a dead node's counts can be dropped.
    counts: HashMap<(String, String), Counts>,
    revoked: BTreeSet<Revocation>,
    client_secrets: BTreeMap<String, String>,
}

impl State {
    /// Marks `node` alive (a node that acts is alive) and forgets nodes whose heartbeat is
    /// older than `stale_after_ms`, with their pins and counts.
    fn refresh(&mut self, node: Option<&NodeInfo>, now_ms: u64, stale_after_ms: u64) {
        if let Some(node) = node {
            self.nodes
                .entry(node.id.clone())
                .and_modify(|(info, seen)| {
                    *info = node.clone();
                    *seen = (*seen).max(now_ms);
                })
                .or_insert_with(|| (node.clone(), now_ms));
        }
        let stale: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, (_, seen))| now_ms.saturating_sub(*seen) > stale_after_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.nodes.remove(&id);
            self.pins.retain(|_, holder| *holder != id);
            self.counts.retain(|(_, node), _| *node != id);
        }
    }

    fn totals(&self, app: &str) -> Counts {
        self.counts
            .iter()
            .filter(|((a, _), _)| a == app)
            .fold(Counts::default(), |acc, (_, c)| Counts {
                connections: acc.connections + c.connections,
                documents: acc.documents + c.documents,
            })
    }

    fn counts_mut(&mut self, app: &str, node: &str) -> &mut Counts {
        self.counts
            .entry((app.to_owned(), node.to_owned()))
            .or_default()
    }
}

#[derive(Debug)]
pub struct EmbeddedRegistry {
    state: Mutex<State>,
    stale_after_ms: u64,
    ops: AppWindows,
}

impl EmbeddedRegistry {
    /// `stale_after_ms`: a node silent this long loses its pins and counts.
    pub fn new(stale_after_ms: u64) -> Self {
        EmbeddedRegistry {
            state: Mutex::new(State::default()),
            stale_after_ms,
            ops: AppWindows::default(),
        }
    }

    fn with<T>(&self, node: Option<&NodeInfo>, now_ms: u64, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().expect("registry lock");
        state.refresh(node, now_ms, self.stale_after_ms);
        f(&mut state)
    }
}

fn ready<'a, T: 'a>(value: T) -> Answer<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Registry for EmbeddedRegistry {
    fn heartbeat<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(String, Usage)],
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.with(Some(node), now_ms, |state| {
            state.counts.retain(|(_, holder), _| *holder != node.id);
            for (app, usage) in held {
                *state.counts_mut(app, &node.id) = Counts {
                    connections: usage.connections,
                    documents: usage.documents,
                };
            }
        });
        ready(())
    }

    fn claim<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        documents_max: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Claim> {
        ready(self.with(Some(node), now_ms, |state| {
            if let Some(holder) = state.pins.get(document) {
                if *holder == node.id {
                    return Claim::AlreadyHere;
                }
                return Claim::Elsewhere(state.nodes[holder].0.clone());
            }
            let active = state.totals(app).documents;
            if let Some(limit) = documents_max {
                if active >= limit {
                    return Claim::DocumentLimit(Exceeded { limit, active });
                }
            }
            state.pins.insert(document.to_owned(), node.id.clone());
            state.counts_mut(app, &node.id).documents += 1;
            Claim::Pinned
        }))
    }

    fn release<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.with(Some(node), now_ms, |state| {
            // Only the holder releases: after a takeover the pin is someone else's.
            if state.pins.get(document) == Some(&node.id) {
                state.pins.remove(document);
                let counts = state.counts_mut(app, &node.id);
                counts.documents = counts.documents.saturating_sub(1);
            }
        });
        ready(())
    }

    fn lookup<'a>(&'a self, document: &'a str, now_ms: u64) -> Answer<'a, Option<NodeInfo>> {
        ready(self.with(None, now_ms, |state| {
            state
                .pins
                .get(document)
                .map(|holder| state.nodes[holder].0.clone())
        }))
    }

    fn acquire_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        limit: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Result<(), Exceeded>> {
        ready(self.with(Some(node), now_ms, |state| {
            let active = state.totals(app).connections;
            if let Some(limit) = limit {
                if active >= limit {
                    return Err(Exceeded { limit, active });
                }
            }
            state.counts_mut(app, &node.id).connections += 1;
            Ok(())
        }))
    }

    fn release_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.with(Some(node), now_ms, |state| {
            let counts = state.counts_mut(app, &node.id);
            counts.connections = counts.connections.saturating_sub(1);
        });
        ready(())
    }

    fn usage<'a>(&'a self, app: &'a AppKey, now_ms: u64) -> Answer<'a, Usage> {
        ready(self.with(None, now_ms, |state| {
            let t = state.totals(app);
            Usage {
                connections: t.connections,
                documents: t.documents,
            }
        }))
    }

    fn revoke<'a>(&'a self, what: &'a Revocation) -> Answer<'a, ()> {
        let mut state = self.state.lock().expect("registry lock");
        state.revoked.insert(what.clone());
        ready(())
    }

    fn restore<'a>(&'a self, what: &'a Revocation) -> Answer<'a, bool> {
        let mut state = self.state.lock().expect("registry lock");
        ready(state.revoked.remove(what))
    }

    fn revocations(&self) -> Answer<'_, Vec<Revocation>> {
        let state = self.state.lock().expect("registry lock");
        ready(state.revoked.iter().cloned().collect())
    }

    fn set_client_secret<'a>(&'a self, app: &'a AppKey, hash: &'a str) -> Answer<'a, ()> {
        let mut state = self.state.lock().expect("registry lock");
        state.client_secrets.insert(app.to_owned(), hash.to_owned());
        ready(())
    }

    fn client_secrets(&self) -> Answer<'_, Vec<(String, String)>> {
        let state = self.state.lock().expect("registry lock");
        ready(
            state
                .client_secrets
                .iter()
                .map(|(a, h)| (a.clone(), h.clone()))
                .collect(),
        )
    }

    fn ops_window(&self, app: &AppKey) -> Arc<MinuteWindow> {
        self.ops.get(app)
    }

    /// Every node of the process counts in the same windows.
    fn sync_ops<'a>(&'a self, _: &'a NodeInfo, _: u64) -> Answer<'a, ()> {
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        super::super::conformance::run_all(|stale_after_ms| {
            Arc::new(EmbeddedRegistry::new(stale_after_ms))
        });
    }
}
