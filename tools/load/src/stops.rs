//! The cores' stops: a thread that sleeps 1 ms at a time on the server's core (and one on
//! the generator's) notes each time it woke more than `STOP_MIN` late for a reason other
//! than the process that core is given to. It runs at normal priority, as the servers
//! compared do (nice 0 under compare.sh), so whatever holds it off (the hypervisor, the
//! kernel, another process: on this project's VM its own agent at nice -10) holds that
//! process off too; the process's own CPU time in each gap, read from its CPU clock, is
//! taken out of the lateness, so a busy server does not count as a stop of itself. (A
//! real-time probe was tried: it preempts those other processes and saw none of what held
//! the server.) Deliveries are also grouped by when they were sent, in
//! `SLOT`s, so a run can report the latency of the spans no stop touched beside that of
//! them all.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The probe's sleep.
const TICK: Duration = Duration::from_millis(1);
/// A wake-up later than this is a stop (the probe's own wake-up costs tens of microseconds).
pub const STOP_MIN: Duration = Duration::from_millis(2);
/// Stops kept; past this the spans cannot be told apart and the run says so.
const STOPS_MAX: usize = 100_000;
/// Deliveries are grouped by their send time in spans this long.
pub const SLOT: Duration = Duration::from_millis(100);
/// Spans kept: 5 minutes of sending. A span's histogram (two significant figures up to
/// the generator's latency bound) is about 20 KiB, so at most about 60 MiB per generator
/// thread; updates sent later are left out of the grouping only.
const SLOTS_MAX: usize = 3_000;
/// A stop is taken to delay what was sent this long before it (still in flight at its
/// start) and after it (queued behind what it held back): latencies above it mean the
/// server is behind, and then no span is untouched in any useful sense.
const MARGIN: Duration = Duration::from_millis(10);

/// A span in which the probe did not run.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub start: Instant,
    pub end: Instant,
}

pub struct Probe {
    cpu: usize,
    owner: Owner,
    done: Arc<AtomicBool>,
    /// Taken by `finish`; a probe dropped without it (a later probe failed to start) stops.
    handle: Option<JoinHandle<Stops>>,
}

/// Whose core a probe watches: that process's own CPU time is not a stop.
#[derive(Clone, Copy)]
pub enum Owner {
    /// The server, by pid; `None`: not known, so its use of the core counts as stops.
    Server(Option<u32>),
    /// This process (the generator's threads; the probes' own time is a few microseconds).
    Generator,
}

impl Owner {
    pub fn name(self) -> &'static str {
        match self {
            Owner::Server(_) => "server",
            Owner::Generator => "generator",
        }
    }

    /// The CPU clock to take out of each gap, if there is one.
    fn clock(self) -> Result<Option<libc::clockid_t>, String> {
        match self {
            Owner::Server(None) => Ok(None),
            Owner::Server(Some(pid)) => cpu_clock(pid).map(Some),
            Owner::Generator => Ok(Some(libc::CLOCK_PROCESS_CPUTIME_ID)),
        }
    }
}

/// The one CPU this process is allowed on, if it is pinned to one (`taskset -c 1`).
pub fn own_cpu() -> Option<usize> {
    // SAFETY: reads this process's affinity into a zeroed set that outlives the call.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set for a CPU number below its size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    match cpus[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// What a probe saw.
pub struct Stops {
    pub cpu: usize,
    pub owner: Owner,
    /// Whether the owner's CPU time was taken out (without the server's pid it is not).
    pub owner_subtracted: bool,
    /// Readings of the owner's CPU clock that failed (the server gone): those gaps were
    /// taken whole.
    pub clock_failures: u64,
    /// The first `STOPS_MAX` stops, in order.
    pub stops: Vec<Stop>,
    /// Every stop, kept or not.
    pub count: u64,
    pub total: Duration,
    pub worst: Duration,
}

impl Stops {
    fn new(cpu: usize, owner: Owner, owner_subtracted: bool) -> Stops {
        Stops {
            cpu,
            owner,
            owner_subtracted,
            clock_failures: 0,
            stops: Vec::new(),
            count: 0,
            total: Duration::ZERO,
            worst: Duration::ZERO,
        }
    }

    /// Whether every stop is in `stops` (so the spans they touched are known).
    pub fn complete(&self) -> bool {
        self.count == self.stops.len() as u64
    }
}

impl Probe {
    /// Starts a probe on `cpu` (its thread pinned there), taking `owner`'s CPU time out of
    /// each gap.
    pub fn start(cpu: usize, owner: Owner) -> Result<Probe, String> {
        let clock = owner.clock()?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let pinned = crate::floor::pin(cpu);
            let watching = pinned.is_ok();
            let _ = ready_tx.send(pinned);
            let mut seen = Stops::new(cpu, owner, clock.is_some());
            if watching {
                watch(&mut seen, clock, &flag);
            }
            seen
        });
        let what = format!("the probe of the {} CPU ({cpu})", owner.name());
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Probe {
                cpu,
                owner,
                done,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(format!("--probe-cpu: {what} cannot run there ({e})")),
            Err(_) => Err(format!("--probe-cpu: {what} ended at its start")),
        }
    }

    pub fn finish(mut self) -> Result<Stops, String> {
        self.done.store(true, Ordering::SeqCst);
        let (cpu, owner) = (self.cpu, self.owner.name());
        self.handle
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| format!("the probe of the {owner} CPU ({cpu}) panicked"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The CPU clock of process `pid` (all its threads' CPU time, to the nanosecond).
fn cpu_clock(pid: u32) -> Result<libc::clockid_t, String> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes the clock id into `clock`, which outlives the call.
    match unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } {
        0 => Ok(clock),
        e => Err(format!(
            "--probe-cpu: no CPU clock for the server (pid {pid}): {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

/// A CPU clock's reading; `None` if it failed (the server gone).
fn cpu_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into `ts`, which outlives the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

fn watch(seen: &mut Stops, owner: Option<libc::clockid_t>, done: &AtomicBool) {
    // Without a clock nothing is taken out.
    let owner_time = || owner.map_or(Some(Duration::ZERO), cpu_time);
    while !done.load(Ordering::Relaxed) {
        let (asleep, owner_before) = (Instant::now(), owner_time());
        std::thread::sleep(TICK);
        let (woke, owner_after) = (Instant::now(), owner_time());
        let owner_ran = match (owner_before, owner_after) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => {
                seen.clock_failures += 1;
                Duration::ZERO
            }
        };
        if let Some((late, stop)) = judge(asleep, woke, owner_ran) {
            seen.count += 1;
            seen.total += late;
            seen.worst = seen.worst.max(late);
            if seen.stops.len() < STOPS_MAX {
                seen.stops.push(stop);
            }
        }
    }
}

/// Whether a sleep of `TICK` from `asleep` to `woke`, while the owner ran `owner_ran`, was a
/// stop: time past the tick that the owner did not spend either (someone else had the
/// core; a lower bound, as what the owner ran during the tick itself is taken out too), and
/// the span it covers: the whole gap, since where in it the core was taken is not known.
fn judge(asleep: Instant, woke: Instant, owner_ran: Duration) -> Option<(Duration, Stop)> {
    let late = woke
        .duration_since(asleep)
        .saturating_sub(TICK)
        .saturating_sub(owner_ran);
    (late > STOP_MIN).then_some((
        late,
        Stop {
            start: asleep,
            end: woke,
        },
    ))
}

/// The span of `SLOT` from `epoch` that `at` falls in (0 for a moment before `epoch`).
fn slot_of(epoch: Instant, at: Instant) -> usize {
    (at.saturating_duration_since(epoch).as_nanos() / SLOT.as_nanos()) as usize
}

/// Which of `slots` spans of `SLOT` from `epoch` a stop touched: those holding any moment
/// from `MARGIN` before a stop to `MARGIN` after it.
pub fn touched(stops: &[Stop], epoch: Instant, slots: usize) -> Vec<bool> {
    let mut touched = vec![false; slots];
    for stop in stops {
        let first = slot_of(epoch, stop.start.checked_sub(MARGIN).unwrap_or(stop.start));
        let last = slot_of(epoch, stop.end + MARGIN);
        for t in touched.iter_mut().take(last.saturating_add(1)).skip(first) {
            *t = true;
        }
    }
    touched
}

/// Latencies of updates by the `SLOT` they were sent in, made as they are first needed.
/// Two significant figures (the run's overall histogram has three), to keep each small.
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
        let slot = slot_of(self.epoch, sent);
        if slot >= SLOTS_MAX {
            return;
        }
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        let max = self.latency_us_max;
        self.slots[slot]
            .get_or_insert_with(|| slot_histogram(max))
            .saturating_record(us.max(1));
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds the spans `keep` says to `into` (spans past its end are kept).
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
        slot_histogram(self.latency_us_max)
    }
}

fn slot_histogram(latency_us_max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, latency_us_max, 2).expect("valid bounds")
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
    fn lateness_the_owner_explains_is_no_stop_and_a_stop_covers_its_whole_gap() {
        let asleep = Instant::now();
        let after = |ms: u64| asleep + Duration::from_millis(ms);
        // 2 ms late, not over the bound.
        assert!(judge(asleep, after(3), Duration::ZERO).is_none());
        // 9 ms late with the owner (the server) busy 8 of them: its own doing.
        assert!(judge(asleep, after(10), Duration::from_millis(8)).is_none());
        // 29 ms late, the owner 25 ms of it: 4 ms someone else's, somewhere in the gap.
        let (late, stop) = judge(asleep, after(30), Duration::from_millis(25)).unwrap();
        assert_eq!(late, Duration::from_millis(4));
        assert_eq!((stop.start, stop.end), (asleep, after(30)));
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
