//! The node's memory budget: resident memory, read at most every [`READ_EVERY_MS`] (an
//! upgrade or a health check asks; reading `/proc` costs microseconds), with freed heap handed
//! back to the system when a reading is past the high-water mark. The allocator keeps what a
//! spike freed; without the hand-back a node that was briefly full would stay "overloaded"
//! with no connections at all.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How stale a reading may be.
const READ_EVERY_MS: u64 = 250;
/// `read_at_ms` before the first reading.
const NEVER: u64 = u64::MAX;
/// How often, at most, freed heap is handed back (it walks every arena).
const TRIM_EVERY_MS: u64 = 1_000;
/// The share of the machine's (or the cgroup's) memory a node takes when no budget is set.
pub const DEFAULT_BUDGET_PERCENT: u64 = 70;

pub struct MemoryWatch {
    budget_bytes: u64,
    high_water_bytes: u64,
    resident_bytes: AtomicU64,
    read_at_ms: AtomicU64,
    trimmed_at_ms: AtomicU64,
}

impl MemoryWatch {
    /// `budget_bytes` 0 takes [`DEFAULT_BUDGET_PERCENT`] of the memory this process may use.
    pub fn new(budget_bytes: u64, high_water_percent: u64) -> Self {
        let budget_bytes = match budget_bytes {
            0 => usable_memory_bytes() / 100 * DEFAULT_BUDGET_PERCENT,
            set => set,
        };
        assert!(budget_bytes > 0);
        MemoryWatch {
            budget_bytes,
            high_water_bytes: budget_bytes / 100 * high_water_percent,
            resident_bytes: AtomicU64::new(0),
            read_at_ms: AtomicU64::new(NEVER),
            trimmed_at_ms: AtomicU64::new(0),
        }
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Whether resident memory is past the high-water mark, as of at most
    /// [`READ_EVERY_MS`] before `now_ms` (`log::monotonic_ms`).
    pub fn over_high_water(&self, now_ms: u64) -> bool {
        self.resident_bytes(now_ms) >= self.high_water_bytes
    }

    /// Whether resident memory is past the budget itself: the node then takes no more
    /// document changes (see `handlers`).
    pub fn over_budget(&self, now_ms: u64) -> bool {
        self.resident_bytes(now_ms) >= self.budget_bytes
    }

    fn resident_bytes(&self, now_ms: u64) -> u64 {
        let read_at = self.read_at_ms.load(Relaxed);
        // One caller refreshes; the others use the reading it replaces.
        if (read_at != NEVER && now_ms.saturating_sub(read_at) < READ_EVERY_MS)
            || self
                .read_at_ms
                .compare_exchange(read_at, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return self.resident_bytes.load(Relaxed);
        }
        let resident = read_resident_bytes();
        if resident >= self.high_water_bytes
            && now_ms.saturating_sub(self.trimmed_at_ms.load(Relaxed)) >= TRIM_EVERY_MS
        {
            self.trimmed_at_ms.store(now_ms, Relaxed);
            // On a thread of its own: it walks every arena (milliseconds on a large heap),
            // which the executor that asked should not wait for. The next reading sees it.
            // Near a thread limit it may not start; the next trim is a second away.
            let _ = std::thread::Builder::new()
                .name("wiresocket-trim".into())
                .spawn(|| {
                    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages.
                    unsafe { libc::malloc_trim(0) };
                });
        }
        self.resident_bytes.store(resident, Relaxed);
        resident
    }
}

fn read_resident_bytes() -> u64 {
    super::stats::resident_bytes("self").unwrap_or(0)
}

/// The machine's memory, or the cgroup's limit when that is lower.
fn usable_memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let machine = (pages.max(1) as u64).saturating_mul(page.max(4096) as u64);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(machine, |limit| limit.min(machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_a_share_of_this_machine() {
        let watch = MemoryWatch::new(0, 80);
        // The machine's memory as the kernel reports it, read apart from sysconf.
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let seventy_percent = total_kib * 1024 * 7 / 10;
        let budget = watch.budget_bytes();
        assert!(
            budget <= seventy_percent + 4096,
            "{budget} of {total_kib} KiB"
        );
        if std::fs::metadata("/sys/fs/cgroup/memory.max").is_err() {
            assert!(
                budget + 4096 >= seventy_percent,
                "{budget} of {total_kib} KiB"
            );
        }
        assert!(
            !watch.over_high_water(1_000_000),
            "this test process is small"
        );
    }

    #[test]
    fn readings_are_reused_for_a_while() {
        let watch = MemoryWatch::new(1 << 20, 80);
        // A 1 MiB budget: this process is past it.
        assert!(watch.over_high_water(1_000_000));
        watch.resident_bytes.store(0, Relaxed);
        assert!(!watch.over_high_water(1_000_100), "the reading is fresh");
        assert!(watch.over_high_water(1_000_300), "read again");
    }
}
