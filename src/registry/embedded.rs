//! The embedded registry: one node, every shard sharing one instance. Counts live in a map
//! of atomics; the map lock is taken when an app is first seen, not per event.

use super::rate::MinuteWindow;
use super::{AppKey, Exceeded, Registry, Usage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
struct AppCounters {
    connections: AtomicU64,
    documents: AtomicU64,
    ops: Arc<MinuteWindow>,
}

#[derive(Debug, Default)]
pub struct EmbeddedRegistry {
    apps: RwLock<HashMap<String, Arc<AppCounters>>>,
}

impl EmbeddedRegistry {
    fn app(&self, app: &AppKey) -> Arc<AppCounters> {
        if let Some(c) = self.apps.read().expect("registry lock").get(app) {
            return c.clone();
        }
        self.apps
            .write()
            .expect("registry lock")
            .entry(app.to_owned())
            .or_default()
            .clone()
    }
}

/// Increments `counter` unless it is at `limit`, atomically.
fn acquire(counter: &AtomicU64, limit: Option<u64>) -> Result<(), Exceeded> {
    let Some(limit) = limit else {
        counter.fetch_add(1, SeqCst);
        return Ok(());
    };
    counter
        .fetch_update(SeqCst, SeqCst, |n| (n < limit).then_some(n + 1))
        .map(|_| ())
        .map_err(|active| Exceeded { limit, active })
}

fn release(counter: &AtomicU64) {
    let before = counter.fetch_sub(1, SeqCst);
    assert!(before > 0, "released more than acquired");
}

impl Registry for EmbeddedRegistry {
    fn acquire_connection(&self, app: &AppKey, limit: Option<u64>) -> Result<(), Exceeded> {
        acquire(&self.app(app).connections, limit)
    }

    fn release_connection(&self, app: &AppKey) {
        release(&self.app(app).connections)
    }

    fn acquire_document(&self, app: &AppKey, limit: Option<u64>) -> Result<(), Exceeded> {
        acquire(&self.app(app).documents, limit)
    }

    fn release_document(&self, app: &AppKey) {
        release(&self.app(app).documents)
    }

    fn usage(&self, app: &AppKey) -> Usage {
        let c = self.app(app);
        Usage {
            connections: c.connections.load(SeqCst),
            documents: c.documents.load(SeqCst),
        }
    }

    fn ops_window(&self, app: &AppKey) -> Arc<MinuteWindow> {
        self.app(app).ops.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_exact_under_contention() {
        let r = Arc::new(EmbeddedRegistry::default());
        let admitted: u64 = (0..8)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| r.acquire_connection("t::a", Some(500)).is_ok())
                        .count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 500);
        assert_eq!(r.usage("t::a").connections, 500);
        assert_eq!(
            r.acquire_connection("t::a", Some(500)),
            Err(Exceeded {
                limit: 500,
                active: 500
            })
        );
        for _ in 0..500 {
            r.release_connection("t::a");
        }
        assert_eq!(r.usage("t::a"), Usage::default());
    }

    #[test]
    fn apps_are_counted_apart() {
        let r = EmbeddedRegistry::default();
        r.acquire_document("t::a", Some(1)).unwrap();
        assert!(r.acquire_document("t::a", Some(1)).is_err());
        r.acquire_document("t::b", Some(1)).unwrap();
        r.release_document("t::a");
        assert_eq!(r.usage("t::a").documents, 0);
        assert_eq!(r.usage("t::b").documents, 1);
    }
}
