//! What this node holds, per app: its live connection counts and pinned documents, counted
//! where they are taken and given back (`ConnectionCount`, `Rooms`). The heartbeat writes
//! them to the registry whole (PRODUCT.md 6, issue 15): the registry's +1/−1 in between can
//! be lost (a release that timed out) or doubled (a retried commit whose first attempt
//! landed), and the next heartbeat puts the truth back.

use crate::registry::Usage;
use std::collections::HashMap;
use std::sync::Mutex;

/// One tally per shard (each locks only its own; the heartbeat reads them all).
pub struct Held {
    shards: Box<[Mutex<HashMap<String, Usage>>]>,
}

impl Held {
    pub fn new(shards: usize) -> Self {
        Held {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Adds `connections` and `documents` (±1) to `app`'s tally on `shard`. An app whose
    /// counts reach zero is forgotten, so the map holds only apps with something live.
    pub fn add(&self, shard: usize, app: &str, connections: i64, documents: i64) {
        let mut tally = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let usage = match tally.get_mut(app) {
            Some(usage) => usage,
            None => tally.entry(app.to_owned()).or_default(),
        };
        usage.connections = apply(usage.connections, connections);
        usage.documents = apply(usage.documents, documents);
        if usage.connections == 0 && usage.documents == 0 {
            tally.remove(app);
        }
    }

    /// [`Held::add`] until the result is dropped, unless it is kept: a count taken before a
    /// registry call, given back if the call fails or is abandoned.
    pub fn hold<'a>(
        &'a self,
        shard: usize,
        app: &'a str,
        connections: i64,
        documents: i64,
    ) -> Holding<'a> {
        self.add(shard, app, connections, documents);
        Holding {
            held: self,
            shard,
            app,
            connections,
            documents,
        }
    }

    /// Every app's counts over every shard, in app order.
    pub fn all(&self) -> Vec<(String, Usage)> {
        let mut total: HashMap<String, Usage> = HashMap::new();
        for shard in self.shards.iter() {
            let tally = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (app, usage) in tally.iter() {
                let sum = total.entry(app.clone()).or_default();
                sum.connections += usage.connections;
                sum.documents += usage.documents;
            }
        }
        let mut all: Vec<(String, Usage)> = total.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// A count added to a tally, given back when dropped (see [`Held::hold`]).
pub struct Holding<'a> {
    held: &'a Held,
    shard: usize,
    app: &'a str,
    connections: i64,
    documents: i64,
}

impl Holding<'_> {
    /// The count stays (its giving back is someone else's).
    pub fn keep(mut self) {
        self.connections = 0;
        self.documents = 0;
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        if (self.connections, self.documents) != (0, 0) {
            let (c, d) = (-self.connections, -self.documents);
            self.held.add(self.shard, self.app, c, d);
        }
    }
}

fn apply(count: u64, delta: i64) -> u64 {
    let next = count.checked_add_signed(delta);
    debug_assert!(next.is_some(), "a count given back that was never taken");
    next.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_sum_over_shards_and_forget_apps_with_nothing_live() {
        let held = Held::new(2);
        held.add(0, "t::a", 1, 0);
        held.add(1, "t::a", 2, 1);
        held.add(1, "t::b", 0, 1);
        let usage = |c, d| Usage {
            connections: c,
            documents: d,
        };
        assert_eq!(
            held.all(),
            [("t::a".into(), usage(3, 1)), ("t::b".into(), usage(0, 1))]
        );
        held.add(1, "t::b", 0, -1);
        held.add(0, "t::a", -1, 0);
        assert_eq!(held.all(), [("t::a".into(), usage(2, 1))]);
        assert_eq!(held.shards[1].lock().unwrap().len(), 1, "t::b forgotten");
        // A holding given back when dropped, not when kept.
        drop(held.hold(0, "t::c", 1, 0));
        held.hold(0, "t::d", 0, 1).keep();
        assert_eq!(
            held.all(),
            [("t::a".into(), usage(2, 1)), ("t::d".into(), usage(0, 1))]
        );
    }
}
