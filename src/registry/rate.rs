//! Sliding-minute counters: sixty one-second buckets of atomics, shared by every shard.

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
}

impl Default for MinuteWindow {
    fn default() -> Self {
        MinuteWindow {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl MinuteWindow {
    /// Counts one event at `now_s` unless the last minute already holds `limit`; returns
    /// whether it was counted.
    pub fn try_count(&self, now_s: u64, limit: u64) -> bool {
        if self.total(now_s) >= limit {
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

    /// Events in the 60 seconds ending at `now_s`.
    pub fn total(&self, now_s: u64) -> u64 {
        (0..BUCKETS)
            .filter(|&i| now_s.saturating_sub(self.seconds[i].load(Relaxed)) < BUCKETS as u64)
            .map(|i| self.counts[i].load(Relaxed))
            .sum()
    }
}

/// One window per app, created on first use: what a registry hands out from `ops_window`.
#[derive(Debug, Default)]
pub struct AppWindows {
    windows: RwLock<HashMap<String, Arc<MinuteWindow>>>,
}

impl AppWindows {
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
