//! Calls whose answer a connection waits for (the load hook): made on threads of their own,
//! never on a data-plane executor, which awaits the answer as a future (the thread wakes the
//! waiting task across threads).
//!
//! Bounded: at most `calls_queued_max` calls wait or run, and one app has at most
//! `app_calls_max` of them running, so an app whose receiver hangs holds that many threads
//! for the call's timeout, never all of them. Past a bound a call is refused at once (the
//! waiting client is told to try again later).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Bounds of the call threads (the `[webhooks]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsConfig {
    pub threads: usize,
    pub queued_max: usize,
    pub app_running_max: usize,
}

/// The call was not made: too many wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsBusy;

type Job = Box<dyn FnOnce() + Send>;

struct Waiting {
    app: Arc<str>,
    job: Job,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    /// Running calls per app (few apps call at once: a short list).
    running: Vec<(Arc<str>, usize)>,
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

    /// Runs `call` for `app` on a call thread; its result is the future's. Refused at once
    /// when `queued_max` calls wait or run.
    pub fn run<R: Send + 'static>(
        &self,
        app: &Arc<str>,
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
        let mut state = lock(&self.shared.state);
        let running: usize = state.running.iter().map(|(_, n)| n).sum();
        if state.queue.len() + running >= self.shared.config.queued_max {
            return Err(CallsBusy);
        }
        state.queue.push_back(Waiting {
            app: app.clone(),
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

fn work(shared: &Shared) {
    loop {
        let Some((app, job)) = next(shared) else {
            return;
        };
        job();
        let mut state = lock(&shared.state);
        if let Some(at) = state.running.iter().position(|(a, _)| *a == app) {
            state.running[at].1 -= 1;
            if state.running[at].1 == 0 {
                state.running.swap_remove(at);
            }
        }
        drop(state);
        // A call of the app that was at its bound may run now.
        shared.wake.notify_one();
    }
}

/// Waits for the first waiting call whose app is below its running bound.
fn next(shared: &Shared) -> Option<(Arc<str>, Job)> {
    let mut state = lock(&shared.state);
    loop {
        if state.stopping {
            return None;
        }
        let max = shared.config.app_running_max;
        let runnable = state.queue.iter().position(|w| {
            state
                .running
                .iter()
                .find(|(a, _)| *a == w.app)
                .is_none_or(|(_, n)| *n < max)
        });
        if let Some(at) = runnable {
            let Waiting { app, job } = state.queue.remove(at).expect("found just now");
            match state.running.iter_mut().find(|(a, _)| *a == app) {
                Some((_, n)) => *n += 1,
                None => state.running.push((app.clone(), 1)),
            }
            return Some((app, job));
        }
        state = shared
            .wake
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> CallsConfig {
        CallsConfig {
            threads: 3,
            queued_max: 4,
            app_running_max: 1,
        }
    }

    #[test]
    fn an_answer_wakes_its_waiter_on_another_thread() {
        let calls = Calls::start(config());
        let app: Arc<str> = "t::a".into();
        glommio::LocalExecutor::default().run(async {
            let caller = std::thread::current().id();
            let pending = calls.run(&app, || std::thread::current().id()).unwrap();
            let thread = pending.await.expect("answered");
            assert_ne!(thread, caller);
            let panicked = calls.run(&app, || -> u8 { panic!("in the call") }).unwrap();
            assert_eq!(panicked.await, None);
            assert_eq!(calls.run(&app, || 7).unwrap().await, Some(7));
        });
    }

    #[test]
    fn one_app_runs_one_call_at_a_time_and_the_queue_is_bounded() {
        let calls = Calls::start(config());
        let (hung, other): (Arc<str>, Arc<str>) = ("t::hung".into(), "t::other".into());
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let held: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                calls
                    .run(&hung, move || lock(&gate).recv().is_ok())
                    .unwrap()
            })
            .collect();
        glommio::LocalExecutor::default().run(async {
            // The hung app holds one thread (its second call waits); another app's call
            // runs on a free one.
            let answered = glommio::timer::timeout(Duration::from_secs(5), async {
                Ok(calls.run(&other, || 1).unwrap().await)
            })
            .await;
            assert_eq!(answered.unwrap(), Some(1));
            // The hung app's two calls and two more fill the four places.
            let more: Vec<_> = (0..2)
                .map(|_| calls.run(&hung, || false).unwrap())
                .collect();
            assert!(calls.run(&other, || 3).is_err(), "past queued_max");
            for _ in 0..2 {
                release.send(()).unwrap();
            }
            for h in held {
                assert_eq!(h.await, Some(true));
            }
            for m in more {
                assert_eq!(m.await, Some(false));
            }
            assert_eq!(calls.run(&other, || 4).unwrap().await, Some(4));
        });
    }
}
