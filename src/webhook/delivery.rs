//! Delivery (PRODUCT.md 9.1): at least once, in order per document, from worker threads of
//! their own (never a data-plane executor), with jittered exponential backoff for as long as
//! `retry_for_s`.
//!
//! The data plane only pushes: one lock, one queue push, no I/O. Each document's events wait
//! in their own queue; a worker takes a document whose first event is due, sends it, and
//! only then may the document's next event go, so a receiver sees each document's events in
//! order even while it fails. An app's queues are bounded (events and bytes); at the bound
//! new events are refused and counted, except `session.ended`, which holds a document's
//! final state and is never refused (there is at most one per document in memory).

use super::endpoint::Endpoint;
use super::event::{Change, Event, EventKind, Subject};
use super::signature::WebhookSecret;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bounds and timings of delivery (the `[webhooks]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// One attempt: connecting, sending and reading the status.
    pub timeout_ms: u64,
    /// The first retry's delay; each later one doubles, up to `retry_max_ms`, each drawn
    /// between half and all of that.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How long an event is retried before it is given up (logged as an error).
    pub retry_for_s: u64,
    /// Events and body bytes one app may have waiting.
    pub queue_events_max: usize,
    pub queue_bytes_max: usize,
    /// Worker threads (calls in flight at once, over all apps).
    pub workers: usize,
    /// Calls in flight at once for one app, so that one app's hanging receiver cannot hold
    /// every worker.
    pub app_workers_max: usize,
    /// How long a document whose `session.ended` is not yet delivered stays in memory (its
    /// pin kept) after its grace period; then it is logged as an error and dropped.
    pub retention_s: u64,
    /// Threads for calls a session waits for (the load hook), apart from the workers.
    pub call_threads: usize,
    /// Such calls waiting or running at once; past it a starting session is refused (1013).
    pub calls_queued_max: usize,
    /// Such calls running at once for one app.
    pub app_calls_max: usize,
    /// Such calls waiting or running for one app.
    pub app_calls_queued_max: usize,
    /// Authorization callback answers kept (by app, user and document) on this node.
    pub authorize_cache_entries_max: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout_ms: 10_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 600_000,
            retry_for_s: 86_400,
            queue_events_max: 10_000,
            queue_bytes_max: 64 << 20,
            workers: 4,
            app_workers_max: 2,
            retention_s: 86_400,
            call_threads: 8,
            calls_queued_max: 1_024,
            app_calls_max: 4,
            app_calls_queued_max: 64,
            authorize_cache_entries_max: 100_000,
        }
    }
}

/// One app's receiver: where its events go and how they are signed.
#[derive(Debug)]
pub struct Sink {
    /// `{tenant}::{app}`, for logs and metrics.
    pub app: String,
    pub endpoint: Endpoint,
    pub secret: WebhookSecret,
    /// The events the app asked for.
    pub events: Vec<EventKind>,
}

impl Sink {
    /// A receiver at `url` (see [`Endpoint::new`]).
    pub fn new(
        app: String,
        url: String,
        secret: WebhookSecret,
        events: Vec<EventKind>,
        allow_private: bool,
        own: Vec<SocketAddr>,
        timeout_ms: u64,
    ) -> Sink {
        Sink {
            app,
            endpoint: Endpoint::new(
                url,
                allow_private,
                own,
                timeout_ms,
                DeliveryConfig::default().app_workers_max,
            ),
            secret,
            events,
        }
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    /// One attempt: 2xx is delivered; anything else says why not.
    fn send(&self, event: &Event) -> Result<(), String> {
        let answer = self
            .endpoint
            .post(&self.secret, &event.id, &event.body, 0, None)?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(format!("HTTP {}", answer.status))
        }
    }
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Waiting,
    Delivered,
    /// Retried for `retry_for_s` without a 2xx (or dropped by a stop): logged as an error.
    GivenUp,
    /// A newer `session.ended` of the same document took its place before it was sent.
    Replaced,
}

/// A pushed event's fate, readable from any thread.
#[derive(Debug, Clone)]
pub struct Receipt(Arc<AtomicU8>);

impl Receipt {
    fn new() -> Self {
        Receipt(Arc::new(AtomicU8::new(0)))
    }

    pub fn fate(&self) -> Fate {
        match self.0.load(Ordering::Acquire) {
            0 => Fate::Waiting,
            1 => Fate::Delivered,
            2 => Fate::GivenUp,
            _ => Fate::Replaced,
        }
    }

    fn set(&self, fate: Fate) {
        self.0.store(
            match fate {
                Fate::Waiting => 0,
                Fate::Delivered => 1,
                Fate::GivenUp => 2,
                Fate::Replaced => 3,
            },
            Ordering::Release,
        );
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The app did not ask for this event.
    NotWanted,
    /// The app's queue is at its bound (counted in `dropped`).
    QueueFull,
}

/// One app's counts, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppStats {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub given_up: u64,
    pub queued: usize,
    pub queued_bytes: usize,
    /// Age of the oldest event still waiting, in milliseconds (0: none).
    pub oldest_ms: u64,
}

struct Queued {
    event: Arc<Event>,
    receipt: Receipt,
    queued_at: Instant,
}

struct DocQueue {
    sink: Arc<Sink>,
    events: VecDeque<Queued>,
    /// A worker is sending its first event.
    busy: bool,
    /// When its first event may be tried (again).
    due: Instant,
    /// Failed attempts of its first event, and when the first of them began: it is retried
    /// for `retry_for_s` from then (not from when it was queued, so events that waited
    /// behind a failing one get their own time).
    attempts: u32,
    first_attempt: Option<Instant>,
}

/// `({tenant}::{app}, document)`.
type DocKey = (String, String);

#[derive(Default)]
struct State {
    docs: HashMap<DocKey, DocQueue>,
    apps: HashMap<String, AppStats>,
    /// Calls in flight per app, at most `app_workers_max`: a receiver that hangs holds
    /// that many workers, never all of them.
    sending: HashMap<String, usize>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    config: DeliveryConfig,
}

/// The node's webhook delivery: the queues and the workers that empty them.
pub struct Deliveries {
    shared: Arc<Shared>,
}

impl Deliveries {
    pub fn start(config: DeliveryConfig) -> Deliveries {
        assert!(config.workers >= 1 && config.app_workers_max >= 1 && config.queue_events_max >= 1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            config,
        });
        for i in 0..config.workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("wiresocket-webhook-{i}"))
                .spawn(move || work(&shared))
                .expect("a webhook worker thread starts");
        }
        Deliveries { shared }
    }

    /// Queues `event` about `document` for `sink`'s app. Never blocks on the network.
    pub fn push(&self, sink: &Arc<Sink>, document: &str, event: Event) -> Result<Receipt, Refused> {
        if !sink.wants(event.kind) {
            return Err(Refused::NotWanted);
        }
        let config = &self.shared.config;
        let mut state = lock(&self.shared);
        let stats = state.apps.entry(sink.app.clone()).or_default();
        let full = stats.queued >= config.queue_events_max
            || stats.queued_bytes + event.body.len() > config.queue_bytes_max;
        let key = (sink.app.clone(), document.to_owned());
        let mut event = event;
        let target = state.docs.get(&key).and_then(|queue| {
            let i = replaced_by(queue, &event, full)?;
            if event.change.is_some() {
                // Merged where the older change waits (Yjs updates commute: the app's copy
                // ends up the same).
                event = merged(&queue.events[i].event, &event, sink, document)?;
            }
            Some(i)
        });
        // Refused only if nothing is lost by it: a session.ended holds the final state, and
        // a document's first waiting document.changed the chain of updates (later ones merge
        // into it); at most one of each waits per document, so they are bounded by the
        // documents.
        if full
            && target.is_none()
            && !matches!(
                event.kind,
                EventKind::SessionEnded | EventKind::DocumentChanged
            )
        {
            state.apps.get_mut(&sink.app).expect("made above").dropped += 1;
            drop(state);
            crate::log::warn(
                "webhook_dropped",
                &[
                    ("app", &sink.app),
                    ("document", &document),
                    ("event", &event.kind.name()),
                    ("why", &"the app's webhook queue is full"),
                ],
            );
            return Err(Refused::QueueFull);
        }
        let receipt = Receipt::new();
        let now = Instant::now();
        let queue = state.docs.entry(key).or_insert_with(|| DocQueue {
            sink: sink.clone(),
            events: VecDeque::new(),
            busy: false,
            due: now,
            attempts: 0,
            first_attempt: None,
        });
        let mut replaced_bytes = 0;
        let mut at = queue.events.len();
        let mut queued_at = now;
        if let Some(i) = target {
            let old = queue.events.remove(i).expect("found in the queue");
            old.receipt.set(Fate::Replaced);
            replaced_bytes = old.event.body.len();
            // A change takes its older one's place, and keeps its age (what the oldest
            // undelivered event's metric shows); a snapshot goes last.
            if event.change.is_some() {
                at = i;
                queued_at = old.queued_at;
            } else {
                at = queue.events.len();
            }
        }
        let bytes = event.body.len();
        queue.events.insert(
            at,
            Queued {
                event: Arc::new(event),
                receipt: receipt.clone(),
                queued_at,
            },
        );
        let stats = state.apps.get_mut(&sink.app).expect("made above");
        stats.queued = stats.queued + 1 - usize::from(target.is_some());
        stats.queued_bytes = stats.queued_bytes + bytes - replaced_bytes;
        drop(state);
        self.shared.wake.notify_one();
        Ok(receipt)
    }

    /// Sends what waits for each app in `sinks` (by `{tenant}::{app}`) to its sink there from
    /// now on (a reload changed its URL, secret or events); other apps' events keep theirs.
    pub fn replace_sinks(&self, sinks: &HashMap<String, Arc<Sink>>) {
        let mut state = lock(&self.shared);
        for ((app, _), queue) in state.docs.iter_mut() {
            if let Some(sink) = sinks.get(app) {
                queue.sink = sink.clone();
            }
        }
    }

    /// Every app's counts.
    pub fn stats(&self) -> Vec<(String, AppStats)> {
        let state = lock(&self.shared);
        let now = Instant::now();
        let mut out: Vec<(String, AppStats)> = state
            .apps
            .iter()
            .map(|(app, stats)| {
                let oldest = state
                    .docs
                    .iter()
                    .filter(|((a, _), _)| a == app)
                    .filter_map(|(_, q)| q.events.front())
                    .map(|q| now.duration_since(q.queued_at).as_millis() as u64)
                    .max()
                    .unwrap_or(0);
                (
                    app.clone(),
                    AppStats {
                        oldest_ms: oldest,
                        ..stats.clone()
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The waiting event of `queue` (not the one being sent) that `event` takes the place of,
/// if any: a `document.changed` merges into the document's last event if that is a change,
/// or, at the bound (`full`), into its newest waiting change after its last waiting
/// `session.ended` (so no change moves before a final state, nor the state vectors
/// backwards); a newer `session.ended` replaces a waiting one, and at the bound a newer
/// `presence.changed` (a snapshot of who is there) a waiting one.
fn replaced_by(queue: &DocQueue, event: &Event, full: bool) -> Option<usize> {
    let waiting = usize::from(queue.busy)..queue.events.len();
    let kind = event.kind;
    let same_kind = |i: &usize| queue.events[*i].event.kind == kind;
    let change = |i: &usize| event.change.is_some() && queue.events[*i].event.change.is_some();
    match kind {
        EventKind::DocumentChanged => {
            let after_ended = waiting
                .clone()
                .rev()
                .find(|&i| queue.events[i].event.kind == EventKind::SessionEnded)
                .map_or(waiting.start, |i| i + 1);
            let newest = (after_ended..waiting.end).rev().find(change);
            newest.filter(|&i| full || i + 1 == waiting.end)
        }
        EventKind::SessionEnded => waiting.clone().find(same_kind),
        EventKind::PresenceChanged if full => waiting.clone().find(same_kind),
        _ => None,
    }
}

/// Two `document.changed` events of one document as one: the newer's state vector, both
/// updates merged.
fn merged(old: &Event, new: &Event, sink: &Sink, document: &str) -> Option<Event> {
    let (old, new_change) = (old.change.as_ref()?, new.change.as_ref()?);
    let update = yrs::merge_updates_v1([&old.update, &new_change.update]).ok()?;
    let change = Change {
        update,
        state_vector: new_change.state_vector.clone(),
    };
    let subject = Subject::of(&sink.app, document);
    Some(Event::changed(subject, change, new.at_ms))
}

impl Drop for Deliveries {
    /// Stops the workers (each after its call in flight, without waiting for them: this may
    /// run on any thread) and gives up what still waits, logging each with its document. A
    /// drain delivers `session.ended` events before this (see `server::tasks`).
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.stopping = true;
        let left: Vec<(DocKey, EventKind)> = state
            .docs
            .iter()
            .flat_map(|(key, q)| q.events.iter().map(move |e| (key.clone(), e.event.kind)))
            .collect();
        for q in state.docs.values().flat_map(|d| d.events.iter()) {
            q.receipt.set(Fate::GivenUp);
        }
        drop(state);
        self.shared.wake.notify_all();
        for ((app, document), kind) in left {
            crate::log::event(
                "error",
                "webhook_not_delivered",
                &[
                    ("app", &app),
                    ("document", &document),
                    ("event", &kind.name()),
                    ("why", &"the node stopped"),
                ],
            );
        }
    }
}

/// The state, even after a panic elsewhere poisoned its lock: every change to it is made
/// under the lock in one step, and the data plane must not panic for a worker's fault.
fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A worker: takes a document whose first event is due, sends it, records what happened.
fn work(shared: &Shared) {
    loop {
        let Some((key, sink, event)) = next_due(shared) else {
            return;
        };
        // A panic in the client must not leave the document marked busy for ever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.send(&event)))
            .unwrap_or_else(|_| Err("the HTTP client panicked".into()));
        let outcome = finish(&mut lock(shared), &shared.config, &key, &event, result);
        // Its next event may be due now.
        shared.wake.notify_one();
        outcome.log(&key, &event);
    }
}

/// Waits for a document whose first event is due and no worker is sending; marks it busy.
fn next_due(shared: &Shared) -> Option<(DocKey, Arc<Sink>, Arc<Event>)> {
    let mut state = lock(shared);
    loop {
        if state.stopping {
            return None;
        }
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut found = None;
        let app_max = shared.config.app_workers_max;
        for (key, q) in &state.docs {
            if q.busy || q.events.is_empty() {
                continue;
            }
            if state.sending.get(&key.0).is_some_and(|&n| n >= app_max) {
                continue;
            }
            if q.due <= now {
                found = Some(key.clone());
                break;
            }
            earliest = Some(earliest.map_or(q.due, |e| e.min(q.due)));
        }
        if let Some(key) = found {
            *state.sending.entry(key.0.clone()).or_default() += 1;
            let q = state.docs.get_mut(&key).expect("found just now");
            q.busy = true;
            q.first_attempt.get_or_insert(now);
            let first = q.events.front().expect("not empty").event.clone();
            return Some((key, q.sink.clone(), first));
        }
        let wait = earliest.map_or(Duration::from_secs(1), |e| e.duration_since(now));
        state = shared
            .wake
            .wait_timeout(state, wait)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

/// What became of one attempt, logged once the lock is released.
enum Attempt {
    Delivered,
    Failed { attempt: u32, error: String },
    GivenUp { attempts: u32, error: String },
}

impl Attempt {
    fn log(&self, (app, document): &DocKey, event: &Event) {
        match self {
            Attempt::Delivered => {}
            Attempt::Failed { attempt, error } => crate::log::warn(
                "webhook_failed",
                &[
                    ("app", app),
                    ("document", document),
                    ("event", &event.kind.name()),
                    ("attempt", attempt),
                    ("error", error),
                ],
            ),
            Attempt::GivenUp { attempts, error } => crate::log::event(
                "error",
                "webhook_given_up",
                &[
                    ("app", app),
                    ("document", document),
                    ("event", &event.kind.name()),
                    ("id", &event.id),
                    ("attempts", attempts),
                    ("error", error),
                ],
            ),
        }
    }
}

fn finish(
    state: &mut State,
    config: &DeliveryConfig,
    key: &DocKey,
    sent: &Arc<Event>,
    result: Result<(), String>,
) -> Attempt {
    if let Some(n) = state.sending.get_mut(&key.0) {
        *n -= 1;
        if *n == 0 {
            state.sending.remove(&key.0);
        }
    }
    let q = state.docs.get_mut(key).expect("a busy queue stays");
    q.busy = false;
    let first = q.events.front().expect("a busy queue has its event");
    debug_assert!(Arc::ptr_eq(&first.event, sent));
    let stats = state.apps.get_mut(&key.0).expect("pushed through its app");
    let outcome = match result {
        Ok(()) => {
            stats.delivered += 1;
            first.receipt.set(Fate::Delivered);
            Attempt::Delivered
        }
        Err(error) => {
            stats.failed_attempts += 1;
            q.attempts += 1;
            let trying_for = q.first_attempt.map_or(Duration::ZERO, |t| t.elapsed());
            if trying_for >= Duration::from_secs(config.retry_for_s) {
                stats.given_up += 1;
                first.receipt.set(Fate::GivenUp);
                Attempt::GivenUp {
                    attempts: q.attempts,
                    error,
                }
            } else {
                q.due = Instant::now() + backoff(config, q.attempts);
                return Attempt::Failed {
                    attempt: q.attempts,
                    error,
                };
            }
        }
    };
    let first = q.events.pop_front().expect("checked above");
    stats.queued -= 1;
    stats.queued_bytes -= first.event.body.len();
    q.attempts = 0;
    q.first_attempt = None;
    q.due = Instant::now();
    if q.events.is_empty() {
        state.docs.remove(key);
    }
    outcome
}

/// The delay before retry `attempt` (1 for the first retry): doubling from
/// `retry_initial_ms` up to `retry_max_ms`, drawn between half and all of it so that
/// receivers recovering from an outage are not hit by every sender at once.
fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let doubled = config
        .retry_initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
    let ceiling = doubled.min(config.retry_max_ms).max(1);
    Duration::from_millis(rand::Rng::gen_range(
        &mut rand::thread_rng(),
        ceiling / 2..=ceiling,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter() {
        let config = DeliveryConfig {
            retry_initial_ms: 100,
            retry_max_ms: 1_000,
            ..DeliveryConfig::default()
        };
        for _ in 0..100 {
            let first = backoff(&config, 1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(&config, 3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let late = backoff(&config, 40).as_millis();
            assert!((500..=1_000).contains(&late), "{late}");
        }
    }
}
