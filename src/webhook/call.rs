//! Calls whose answer a connection waits for (the load hook, the authorization callback):
//! made on threads of their own, never on a data-plane executor, which awaits the answer as a
//! future (the thread wakes the waiting task across threads).
//!
//! Bounded: at most `calls_queued_max` calls wait or run, one app has at most
//! `app_calls_queued_max` of them and `app_calls_max` running, so an app whose receiver hangs
//! holds that many threads for the call's timeout and that many places, never all of them.
//! A call still waiting at its deadline is dropped unmade (its waiter has stopped waiting).
//! Past a bound a call is refused at once (the waiting client is told to try again later).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Bounds of the call threads (the `[webhooks]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsConfig {
    pub threads: usize,
    pub queued_max: usize,
    pub app_queued_max: usize,
    pub app_running_max: usize,
}

/// The call was not made: too many wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsBusy;

type Job = Box<dyn FnOnce() + Send>;

struct Waiting {
    app: Arc<str>,
    /// Past it the call is not made.
    deadline: Instant,
    job: Job,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    /// Calls per app, waiting and running (few apps call at once: short lists).
    running: Vec<(Arc<str>, usize)>,
    queued: Vec<(Arc<str>, usize)>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    config: CallsConfig,
}

pub struct Calls {
    shared: Arc<Shared>,
}

impl Calls {
    pub fn start(config: CallsConfig) -> Calls {
        assert!(config.threads >= 1 && config.queued_max >= 1 && config.app_running_max >= 1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            config,
        });
        for i in 0..config.threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("wiresocket-call-{i}"))
                .spawn(move || work(&shared))
                .expect("a call thread starts");
        }
        Calls { shared }
    }

    /// Runs `call` for `app` on a call thread unless `deadline` passes first; its result is
    /// the future's (`None` if it was not made). Refused at once when `queued_max` calls, or
    /// `app_queued_max` of the app's, wait or run.
    pub fn run<R: Send + 'static>(
        &self,
        app: &Arc<str>,
        deadline: Instant,
        call: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Pending<R>, CallsBusy> {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
        }));
        let mut answerer = Answerer(Some(slot.clone()));
        let job: Job = Box::new(move || {
            // A panicking call answers nothing (`None`, as the answerer's drop says).
            if let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
                answerer.answer(Some(value));
            }
        });
        let config = &self.shared.config;
        let mut state = lock(&self.shared.state);
        let running: usize = state.running.iter().map(|(_, n)| n).sum();
        if state.queue.len() + running >= config.queued_max
            || count(&state.queued, app) >= config.app_queued_max
        {
            return Err(CallsBusy);
        }
        add(&mut state.queued, app, 1);
        state.queue.push_back(Waiting {
            app: app.clone(),
            deadline,
            job,
        });
        drop(state);
        self.shared.wake.notify_one();
        Ok(Pending { slot })
    }
}

impl Drop for Calls {
    /// Stops the threads after their calls in flight (not waited for: this may run on any
    /// thread); calls still waiting are dropped, and their waiters see no answer.
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.stopping = true;
        state.queue.clear();
        state.queued.clear();
        drop(state);
        self.shared.wake.notify_all();
    }
}

struct Slot<R> {
    /// `Some(None)`: no answer (see [`Answerer`]).
    value: Option<Option<R>>,
    waker: Option<Waker>,
}

/// The call's side of a [`Pending`]: answers once, with `None` if it is dropped unanswered
/// (the call panicked, or was dropped unrun when the calls stopped), so no waiter waits for
/// ever.
struct Answerer<R>(Option<Arc<Mutex<Slot<R>>>>);

impl<R> Answerer<R> {
    fn answer(&mut self, value: Option<R>) {
        let Some(slot) = self.0.take() else {
            return;
        };
        let waker = {
            let mut slot = lock(&slot);
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R> Drop for Answerer<R> {
    fn drop(&mut self) {
        self.answer(None);
    }
}

/// A call's answer, to be awaited: `None` if the call panicked or was dropped unrun.
pub struct Pending<R> {
    slot: Arc<Mutex<Slot<R>>>,
}

impl<R> Pending<R> {
    /// A pending call that already has its answer (a call refused before it was made).
    pub fn answered(value: R) -> Self {
        Pending {
            slot: Arc::new(Mutex::new(Slot {
                value: Some(Some(value)),
                waker: None,
            })),
        }
    }
}

impl<R> Future for Pending<R> {
    type Output = Option<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R>> {
        let mut slot = lock(&self.slot);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(value);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The state, even after a panic elsewhere poisoned its lock (every change is one step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An app's count in a short list.
fn count(list: &[(Arc<str>, usize)], app: &Arc<str>) -> usize {
    list.iter().find(|(a, _)| a == app).map_or(0, |(_, n)| *n)
}

/// Adds `delta` (±1) to an app's count; a count that reaches 0 leaves the list.
fn add(list: &mut Vec<(Arc<str>, usize)>, app: &Arc<str>, delta: isize) {
    match list.iter().position(|(a, _)| a == app) {
        Some(at) => {
            list[at].1 = list[at]
                .1
                .checked_add_signed(delta)
                .expect("counts pair up");
            if list[at].1 == 0 {
                list.swap_remove(at);
            }
        }
        None => {
            assert_eq!(delta, 1, "a count starts at 1");
            list.push((app.clone(), 1));
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let Some((app, job)) = next(shared) else {
            return;
        };
        job();
        let mut state = lock(&shared.state);
        add(&mut state.running, &app, -1);
        add(&mut state.queued, &app, -1);
        drop(state);
        // A call of the app that was at its bound may run now.
        shared.wake.notify_one();
    }
}

/// Waits for the first waiting call whose app is below its running bound; calls whose
/// deadline passed meanwhile are dropped unmade (their waiters get `None`).
fn next(shared: &Shared) -> Option<(Arc<str>, Job)> {
    let mut state = lock(&shared.state);
    loop {
        if state.stopping {
            return None;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(at) = state.queue.iter().position(|w| w.deadline <= now) {
            let gone = state.queue.remove(at).expect("found just now");
            add(&mut state.queued, &gone.app, -1);
            expired.push(gone.job);
        }
        if !expired.is_empty() {
            // Dropped without the lock: each answers its waiter (see `Answerer`).
            drop(state);
            drop(expired);
            state = lock(&shared.state);
            continue;
        }
        let max = shared.config.app_running_max;
        let runnable = state
            .queue
            .iter()
            .position(|w| count(&state.running, &w.app) < max);
        if let Some(at) = runnable {
            let Waiting { app, job, .. } = state.queue.remove(at).expect("found just now");
            add(&mut state.running, &app, 1);
            return Some((app, job));
        }
        // Woken by a new call or a finished one, or at the earliest deadline.
        let wait = state
            .queue
            .iter()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(60));
        state = shared
            .wake
            .wait_timeout(state, wait)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threads: usize, queued_max: usize, app_queued_max: usize) -> CallsConfig {
        CallsConfig {
            threads,
            queued_max,
            app_queued_max,
            app_running_max: 1,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// `n` calls of `app` that each run until the gate's sender sends or drops.
    fn held(
        calls: &Calls,
        app: &Arc<str>,
        n: usize,
    ) -> (std::sync::mpsc::Sender<()>, Vec<Pending<bool>>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let pending = (0..n)
            .map(|_| {
                let gate = gate.clone();
                calls
                    .run(app, later(), move || lock(&gate).recv().is_ok())
                    .unwrap()
            })
            .collect();
        (release, pending)
    }

    #[test]
    fn an_answer_wakes_its_waiter_on_another_thread() {
        let calls = Calls::start(config(3, 4, 4));
        let app: Arc<str> = "t::a".into();
        glommio::LocalExecutor::default().run(async {
            let caller = std::thread::current().id();
            let pending = calls.run(&app, later(), || std::thread::current().id());
            let thread = pending.unwrap().await.expect("answered");
            assert_ne!(thread, caller);
            let panicked = calls.run(&app, later(), || -> u8 { panic!("in the call") });
            assert_eq!(panicked.unwrap().await, None);
            assert_eq!(calls.run(&app, later(), || 7).unwrap().await, Some(7));
        });
    }

    #[test]
    fn a_hung_app_holds_its_share_of_threads_and_places_and_late_calls_are_not_made() {
        let calls = Calls::start(config(3, 16, 3));
        let (hung, other): (Arc<str>, Arc<str>) = ("t::hung".into(), "t::other".into());
        let (release, held) = held(&calls, &hung, 2);
        glommio::LocalExecutor::default().run(async {
            // The hung app runs one call (its second waits); another app's runs at once.
            let answered = glommio::timer::timeout(Duration::from_secs(5), async {
                Ok(calls.run(&other, later(), || 1).unwrap().await)
            })
            .await;
            assert_eq!(answered.unwrap(), Some(1));
            // Its third place is the last it gets; another app still has room.
            let soon = Instant::now() + Duration::from_millis(50);
            let late = calls.run(&hung, soon, || true).unwrap();
            assert!(
                calls.run(&hung, later(), || true).is_err(),
                "app_queued_max"
            );
            // Its deadline passes while it waits: dropped unmade, its place given back.
            assert_eq!(late.await, None);
            assert!(calls.run(&hung, later(), || false).is_ok());
            assert_eq!(calls.run(&other, later(), || 2).unwrap().await, Some(2));
            drop(release);
            for h in held {
                assert_eq!(h.await, Some(false), "the gate closed");
            }
        });
    }

    #[test]
    fn every_call_counts_against_the_node_bound() {
        let calls = Calls::start(config(1, 2, 8));
        let (a, b): (Arc<str>, Arc<str>) = ("t::a".into(), "t::b".into());
        let (release, held) = held(&calls, &a, 1);
        let waiting = calls.run(&b, later(), || 5).unwrap();
        assert!(calls.run(&b, later(), || 6).is_err(), "queued_max");
        release.send(()).unwrap();
        glommio::LocalExecutor::default().run(async {
            for h in held {
                assert_eq!(h.await, Some(true));
            }
            assert_eq!(waiting.await, Some(5));
            assert_eq!(calls.run(&b, later(), || 7).unwrap().await, Some(7));
        });
    }
}
