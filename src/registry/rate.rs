//! Sliding-minute counters: sixty one-second buckets of atomics, shared by every shard, plus
//! the other nodes' count of the region as last read from the registry (`opsPerMinute` is
//! per app per region, PRODUCT.md 6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

const BUCKETS: usize = 60;

/// Events in the last 60 seconds, counted in one-second buckets. Lock-free: any shard may
/// count. A bucket is reset by the first event of a new second that lands on it.
#[derive(Debug)]
pub struct MinuteWindow {
    counts: [AtomicU64; BUCKETS],
    /// The second each bucket currently counts.
    seconds: [AtomicU64; BUCKETS],
    /// The other nodes' events in their last minute, as last read (0 on a single node).
    others: AtomicU64,
}

impl Default for MinuteWindow {
    fn default() -> Self {
        MinuteWindow {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: std::array::from_fn(|_| AtomicU64::new(0)),
            others: AtomicU64::new(0),
        }
    }
}

impl MinuteWindow {
    /// Counts one event at `now_s` unless the last minute already holds `limit` here and on
    /// the other nodes; returns whether it was counted.
    pub fn try_count(&self, now_s: u64, limit: u64) -> bool {
        if self.total(now_s) + self.others.load(Relaxed) >= limit {
            return false;
        }
        let i = (now_s % BUCKETS as u64) as usize;
        let second = self.seconds[i].load(Relaxed);
        if second != now_s
            && self.seconds[i]
                .compare_exchange(second, now_s, Relaxed, Relaxed)
                .is_ok()
        {
            self.counts[i].store(0, Relaxed);
        }
        self.counts[i].fetch_add(1, Relaxed);
        true
    }

    /// Events here in the 60 seconds ending at `now_s`.
    pub fn total(&self, now_s: u64) -> u64 {
        self.seconds(now_s).map(|(_, count)| count).sum()
    }

    /// `(second, events)` of each second here in the 60 ending at `now_s` that has any.
    pub fn seconds(&self, now_s: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..BUCKETS).filter_map(move |i| {
            let second = self.seconds[i].load(Relaxed);
            let count = self.counts[i].load(Relaxed);
            (now_s.saturating_sub(second) < BUCKETS as u64 && count > 0).then_some((second, count))
        })
    }

    /// Sets the other nodes' events in their last minute.
    pub fn set_others(&self, events: u64) {
        self.others.store(events, Relaxed);
    }
}

/// A node's seconds (from [`MinuteWindow::seconds`]) as stored in the registry: pairs of
/// little-endian `u64`.
pub fn encode_seconds(seconds: impl Iterator<Item = (u64, u64)>) -> Vec<u8> {
    seconds
        .flat_map(|(second, count)| second.to_le_bytes().into_iter().chain(count.to_le_bytes()))
        .collect()
}

/// The events of stored seconds in the 60 ending at `now_s` (bytes that are not whole pairs
/// are ignored: a record is never trusted to be well formed).
pub fn events_in_minute(bytes: &[u8], now_s: u64) -> u64 {
    bytes
        .chunks_exact(16)
        .map(|pair| {
            let second = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
            let count = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
            (second, count)
        })
        .filter(|&(second, _)| second <= now_s && now_s - second < BUCKETS as u64)
        .fold(0u64, |sum, (_, count)| sum.saturating_add(count))
}

/// One window per app, created on first use: what a registry hands out from `ops_window`.
#[derive(Debug, Default)]
pub struct AppWindows {
    windows: RwLock<HashMap<String, Arc<MinuteWindow>>>,
}

impl AppWindows {
    /// Every app's window (for publishing and reading the region's counts).
    pub fn all(&self) -> Vec<(String, Arc<MinuteWindow>)> {
        let windows = self.windows.read().expect("windows lock");
        windows
            .iter()
            .map(|(a, w)| (a.clone(), w.clone()))
            .collect()
    }

    pub fn get(&self, app: &str) -> Arc<MinuteWindow> {
        if let Some(w) = self.windows.read().expect("windows lock").get(app) {
            return w.clone();
        }
        self.windows
            .write()
            .expect("windows lock")
            .entry(app.to_owned())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_limit_within_a_minute() {
        let w = MinuteWindow::default();
        let t = 1_000_000;
        for i in 0..10 {
            assert!(w.try_count(t + i, 10), "event {i}");
        }
        assert!(!w.try_count(t + 30, 10));
        assert_eq!(w.total(t + 30), 10);
    }

    #[test]
    fn the_other_nodes_count_toward_the_limit_and_seconds_round_trip() {
        let w = MinuteWindow::default();
        let t = 3_000_000;
        w.set_others(8);
        assert!(w.try_count(t, 10) && w.try_count(t + 1, 10));
        assert!(!w.try_count(t + 2, 10), "8 elsewhere and 2 here");
        let stored = encode_seconds(w.seconds(t + 2));
        assert_eq!(events_in_minute(&stored, t + 2), 2);
        assert_eq!(
            events_in_minute(&stored, t + 60),
            1,
            "the first second slid out"
        );
        assert_eq!(
            events_in_minute(&stored[..20], t + 2),
            1,
            "a torn pair is ignored"
        );
        w.set_others(0);
        assert!(w.try_count(t + 2, 10));
    }

    #[test]
    fn old_seconds_slide_out() {
        let w = MinuteWindow::default();
        let t = 2_000_000;
        for _ in 0..5 {
            assert!(w.try_count(t, 5));
        }
        assert!(!w.try_count(t + 59, 5));
        // Sixty seconds later the first bucket no longer counts.
        assert!(w.try_count(t + 60, 5));
        assert_eq!(w.total(t + 60), 1);
        assert_eq!(w.total(t + 200), 0);
    }
}
