//! The machine's stops: a thread that sleeps 1 ms at a time on the server's core and notes
//! each time it woke more than `STOP_MIN` late. Whatever took the core then (the hypervisor,
//! another process, the kernel) stopped the server too, whichever server it is; a run's
//! latency tail can then be read against what the machine itself did. Deliveries are also
//! grouped by when they were sent, in `SLOT`s, so a run can report the latency of the spans
//! no stop touched beside the one of them all.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The probe's sleep.
const TICK: Duration = Duration::from_millis(1);
/// A wake-up later than this is a stop (the probe's own wake-up costs tens of microseconds).
pub const STOP_MIN: Duration = Duration::from_millis(2);
/// Stops kept; a machine stopping more often than this in one run is reported by the count.
const STOPS_MAX: usize = 100_000;
/// Deliveries are grouped by their send time in spans this long.
pub const SLOT: Duration = Duration::from_millis(100);
/// Spans kept (an hour of sending); updates sent later are left out of the grouping only.
pub const SLOTS_MAX: usize = 36_000;
/// A stop is taken to delay what was sent this long before it (still in flight at its
/// start) and after it (queued behind what it held back).
const MARGIN: Duration = Duration::from_millis(10);

/// A span in which the probe did not run.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub start: Instant,
    pub end: Instant,
}

pub struct Probe {
    cpu: usize,
    done: Arc<AtomicBool>,
    handle: JoinHandle<Result<Stops, String>>,
}

/// What the probe saw.
pub struct Stops {
    pub cpu: usize,
    /// The first `STOPS_MAX` stops, in order.
    pub stops: Vec<Stop>,
    /// Every stop, kept or not.
    pub count: u64,
    pub total: Duration,
    pub worst: Duration,
}

impl Probe {
    /// Starts the probe on `cpu` (its thread pinned there).
    pub fn start(cpu: usize) -> Probe {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let handle = std::thread::spawn(move || watch(cpu, &flag));
        Probe { cpu, done, handle }
    }

    pub fn finish(self) -> Result<Stops, String> {
        self.done.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| format!("the stop probe on CPU {} panicked", self.cpu))?
    }
}

fn watch(cpu: usize, done: &AtomicBool) -> Result<Stops, String> {
    if !crate::floor::pin(cpu) {
        return Err(format!(
            "--probe-cpu {cpu}: cannot run a thread there ({})",
            std::io::Error::last_os_error()
        ));
    }
    let mut seen = Stops {
        cpu,
        stops: Vec::new(),
        count: 0,
        total: Duration::ZERO,
        worst: Duration::ZERO,
    };
    while !done.load(Ordering::Relaxed) {
        let asleep = Instant::now();
        std::thread::sleep(TICK);
        let woke = Instant::now();
        let late = woke.duration_since(asleep).saturating_sub(TICK);
        if late > STOP_MIN {
            seen.count += 1;
            seen.total += late;
            seen.worst = seen.worst.max(late);
            if seen.stops.len() < STOPS_MAX {
                seen.stops.push(Stop {
                    start: woke - late,
                    end: woke,
                });
            }
        }
    }
    Ok(seen)
}

/// Which of `slots` spans of `SLOT` from `epoch` a stop touched: those holding any moment
/// from `MARGIN` before a stop to `MARGIN` after it.
pub fn touched(stops: &[Stop], epoch: Instant, slots: usize) -> Vec<bool> {
    let mut touched = vec![false; slots];
    let slot_of =
        |at: Instant| (at.saturating_duration_since(epoch).as_nanos() / SLOT.as_nanos()) as usize;
    for stop in stops {
        let first = slot_of(stop.start.checked_sub(MARGIN).unwrap_or(stop.start));
        let last = slot_of(stop.end + MARGIN);
        for t in touched.iter_mut().take(last.saturating_add(1)).skip(first) {
            *t = true;
        }
    }
    touched
}

/// Latencies of updates by the `SLOT` they were sent in, made as they are first needed.
pub struct BySlot {
    epoch: Instant,
    slots: Vec<Option<Histogram<u64>>>,
    latency_us_max: u64,
}

impl BySlot {
    pub fn new(epoch: Instant, latency_us_max: u64) -> BySlot {
        BySlot {
            epoch,
            slots: Vec::new(),
            latency_us_max,
        }
    }

    pub fn record(&mut self, sent: Instant, us: u64) {
        let slot =
            (sent.saturating_duration_since(self.epoch).as_nanos() / SLOT.as_nanos()) as usize;
        if slot >= SLOTS_MAX {
            return;
        }
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        let max = self.latency_us_max;
        self.slots[slot]
            .get_or_insert_with(|| {
                // Two significant figures: one histogram per 100 ms of sending.
                Histogram::new_with_bounds(1, max, 2).expect("valid bounds")
            })
            .saturating_record(us.max(1));
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds the spans `keep` says to `into`.
    pub fn add_to(&self, into: &mut Histogram<u64>, keep: &[bool]) {
        for (slot, h) in self.slots.iter().enumerate() {
            if let Some(h) = h
                .as_ref()
                .filter(|_| keep.get(slot).copied().unwrap_or(true))
            {
                into.add(h).expect("same bounds");
            }
        }
    }

    pub fn empty_like(&self) -> Histogram<u64> {
        Histogram::new_with_bounds(1, self.latency_us_max, 2).expect("valid bounds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_touches_the_spans_it_and_its_margins_cover() {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let stops = [
            // Inside span 2, its margins too.
            Stop {
                start: at(230),
                end: at(250),
            },
            // Ends 5 ms before span 6: the margin after it reaches into span 6.
            Stop {
                start: at(585),
                end: at(595),
            },
            // Past the spans there are.
            Stop {
                start: at(5_000),
                end: at(5_020),
            },
        ];
        let t = touched(&stops, epoch, 8);
        assert_eq!(
            t,
            [false, false, true, false, false, true, true, false],
            "spans 2, 5 and 6"
        );
    }

    #[test]
    fn latencies_are_kept_by_the_span_they_were_sent_in() {
        let epoch = Instant::now();
        let mut by_slot = BySlot::new(epoch, 60_000_000);
        by_slot.record(epoch + Duration::from_millis(10), 100);
        by_slot.record(epoch + Duration::from_millis(150), 9_000);
        by_slot.record(epoch + Duration::from_millis(250), 200);
        // Beyond the spans kept: left out.
        by_slot.record(epoch + SLOT * SLOTS_MAX as u32, 300);
        assert_eq!(by_slot.len(), 3);
        let mut kept = by_slot.empty_like();
        by_slot.add_to(&mut kept, &[true, false, true]);
        assert_eq!(kept.len(), 2);
        assert!(kept.max() < 1_000, "span 1's 9 ms left out");
        let mut all = by_slot.empty_like();
        by_slot.add_to(&mut all, &[]);
        assert_eq!(all.len(), 3, "spans past the mask are kept");
    }
}
