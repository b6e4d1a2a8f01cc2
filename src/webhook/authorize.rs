//! The authorization callback (PRODUCT.md 9.4): after a token verifies, the application is
//! asked whether its user may open the document, and with which role. The call is signed
//! like a webhook and made on a call thread (`call`), never on a data-plane executor.
//!
//! Fails closed: only a `200` whose body says `{"allow": true}` lets a connection in; no
//! answer in time, a connection error or a `5xx` is [`Failure::Unavailable`] (the client is
//! told to try again later), anything else [`Failure::Malformed`] (the same for the client,
//! an error in the log naming the app). An answer's role can only lower the token's.
//!
//! [`Decisions`] keeps answers per (app, user, document) for the app's `authorize_cache_s`,
//! bounded, and makes one call for every connection that asks the same question while it is
//! open (a reconnect storm of one user costs one call).

use super::endpoint::{Answer, Endpoint};
use super::event::Event;
use super::signature::WebhookSecret;
use crate::auth::claims::Role;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The most of an answer's body that is read: a decision is a few bytes.
pub const ANSWER_BYTES_MAX: u64 = 16 << 10;
/// The most of an application's `reason` a close carries (a close reason has 123 bytes,
/// `Forbidden: ` takes 11).
pub const REASON_BYTES_MAX: usize = 100;
/// The reason told when the application gives none.
const NO_REASON: &str = "not authorized by the application";

/// One app's authorization callback.
#[derive(Debug)]
pub struct Authorizer {
    pub endpoint: Endpoint,
    pub secret: WebhookSecret,
    /// How long an admission waits for the answer (`authorize_timeout_ms`).
    pub timeout: Duration,
    /// How long an answer is kept (`authorize_cache_s`; 0: not kept).
    pub cache_ttl: Duration,
}

/// What the application is asked about one connection.
pub struct Question<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub document: &'a str,
    pub sub: Option<&'a str>,
    pub role: Role,
    pub claims: &'a serde_json::Value,
}

impl Question<'_> {
    /// The signed body: `{"type":"connection.authorize","tenantId","appId","document",
    /// "data":{"sub","role","claims"}}`.
    pub fn body(&self) -> Vec<u8> {
        let role = match self.role {
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        };
        let body = serde_json::json!({
            "type": "connection.authorize",
            "tenantId": self.tenant,
            "appId": self.app,
            "document": self.document,
            "data": { "sub": self.sub, "role": role, "claims": self.claims },
        });
        serde_json::to_vec(&body).expect("JSON values serialize")
    }

    /// The cache's key: the same user with the same token role asking for the same
    /// document of the same app (the role is part of it: an answer to a viewer's token never
    /// decides an editor's). Hashed, so a key costs 32 bytes whatever the names hold; `None`
    /// for a token without `sub` (its users cannot be told apart, so nothing is kept).
    fn key(&self) -> Option<[u8; 32]> {
        let sub = self.sub?;
        let mut hash = Sha256::new();
        for part in [self.tenant, self.app, sub, self.document] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.update([self.role as u8]);
        Some(hash.finalize().into())
    }
}

/// The application's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `viewer`: read-only, whatever the token says.
    Allow { viewer: bool },
    /// Refused, with the application's reason (cleaned, at most [`REASON_BYTES_MAX`]).
    Deny { reason: String },
}

/// No decision: the connection is refused with "try again later".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time, a connection error, a 5xx, or no call thread free.
    Unavailable(String),
    /// An answer that is not a decision (the app's fault: logged as an error).
    Malformed(String),
}

impl Authorizer {
    /// Asks (blocking: on a call thread) with what is left until `deadline`.
    pub fn ask(&self, body: &[u8], deadline: Instant) -> Result<Decision, Failure> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Failure::Unavailable("no call thread was free within authorize_timeout_ms".into())
            })?;
        let answer = self
            .endpoint
            .post(
                &self.secret,
                &Event::new_id(),
                body,
                ANSWER_BYTES_MAX,
                Some(left),
            )
            .map_err(Failure::Unavailable)?;
        decision(&answer)
    }
}

/// What an answer means.
pub fn decision(answer: &Answer) -> Result<Decision, Failure> {
    match answer.status {
        200 => {}
        status @ 500..=599 => {
            return Err(Failure::Unavailable(format!("answered HTTP {status}")));
        }
        status => {
            return Err(Failure::Malformed(format!(
                "answered HTTP {status}; an authorization callback answers 200 with {{\"allow\": true|false}}"
            )));
        }
    }
    let malformed = |why: &str| {
        Failure::Malformed(format!(
            "{why}; expected {{\"allow\": true|false, \"role\"?: \"editor\"|\"viewer\", \"reason\"?: \"...\"}}"
        ))
    };
    let value: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|_| malformed("the answer is not JSON"))?;
    let allow = value
        .get("allow")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| malformed("no boolean \"allow\""))?;
    let viewer = match value.get("role") {
        None | Some(serde_json::Value::Null) => false,
        Some(role) => match role.as_str() {
            Some("editor") => false,
            Some("viewer") => true,
            _ => return Err(malformed("\"role\" is neither \"editor\" nor \"viewer\"")),
        },
    };
    if allow {
        return Ok(Decision::Allow { viewer });
    }
    let reason = match value.get("reason") {
        None | Some(serde_json::Value::Null) => NO_REASON.to_owned(),
        Some(serde_json::Value::String(text)) => clean_reason(text),
        Some(_) => return Err(malformed("\"reason\" is not a string")),
    };
    Ok(Decision::Deny { reason })
}

/// The application's reason as a close frame may carry it: no control characters, at most
/// [`REASON_BYTES_MAX`] bytes (cut at a character), never empty.
fn clean_reason(text: &str) -> String {
    let mut clean = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if clean.len() + c.len_utf8() > REASON_BYTES_MAX {
            break;
        }
        clean.push(c);
    }
    let clean = clean.trim().to_owned();
    if clean.is_empty() {
        NO_REASON.to_owned()
    } else {
        clean
    }
}

/// Answers kept, and the questions being asked, for every app of the node.
pub struct Decisions {
    state: Mutex<Cache>,
    entries_max: usize,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], Entry>,
    /// Keys of kept answers, oldest first, which go first when the cache is full (a key
    /// answered again is here twice, one that left is passed over; at most twice
    /// `entries_max` long).
    order: VecDeque<[u8; 32]>,
    /// Bumped by [`Decisions::clear`]: an answer to a question asked before is not kept.
    epoch: u64,
    stats: HashMap<Arc<str>, AuthorizeStats>,
}

enum Entry {
    Decided {
        decision: Decision,
        expires: Instant,
        /// The revocation generation it was decided under: a revocation forgets it.
        generation: u64,
    },
    Asking {
        flight: Arc<Flight>,
        /// The revocation generation it was asked under: a later admission asks again.
        generation: u64,
        /// The call's deadline: a question still being asked after it (a call thread that
        /// hangs) is asked again.
        until: Instant,
    },
}

/// Counts per app, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AuthorizeStats {
    /// Calls made to the application.
    pub calls: u64,
    /// Admissions answered from the cache (or by a call another admission made).
    pub cached: u64,
    pub denied: u64,
    /// Calls without a decision: no answer in time, a 5xx, a malformed answer, no thread.
    pub errors: u64,
    /// The calls' time, summed.
    pub seconds_total: f64,
}

/// What an admission does next.
pub enum Lookup {
    /// Known: no call.
    Known(Decision),
    /// Being asked (by this admission's call or another's): wait for it.
    Wait(Waiting),
    /// Nobody asks yet: make the call, and end it with [`Asked::answer`].
    Ask(Asked),
}

impl Decisions {
    pub fn new(entries_max: usize) -> Self {
        assert!(entries_max >= 1);
        Decisions {
            state: Mutex::new(Cache::default()),
            entries_max,
        }
    }

    /// The decision for `question` of `app` (`{tenant}::{app}`) if it is kept and was made
    /// under the revocation `generation`, or the call to wait for, or the right to make it
    /// (a call of at most `timeout`, whose answer is then kept for `ttl`).
    pub fn lookup(
        self: &Arc<Self>,
        app: &Arc<str>,
        question: &Question<'_>,
        generation: u64,
        (timeout, ttl): (Duration, Duration),
    ) -> Lookup {
        let now = Instant::now();
        let mut cache = lock(&self.state);
        let key = question.key();
        match key.and_then(|key| cache.entries.get(&key)) {
            Some(Entry::Decided {
                decision,
                expires,
                generation: made_under,
            }) if *expires > now && *made_under == generation => {
                let decision = decision.clone();
                cache.stats_of(app).cached += 1;
                return Lookup::Known(decision);
            }
            Some(Entry::Asking {
                flight,
                generation: asked_under,
                until,
            }) if *asked_under == generation && *until > now => {
                let waiting = Waiting(flight.clone());
                cache.stats_of(app).cached += 1;
                return Lookup::Wait(waiting);
            }
            _ => {}
        }
        let asked = Asked {
            decisions: self.clone(),
            app: app.clone(),
            key,
            epoch: cache.epoch,
            generation,
            ttl,
            flight: Arc::new(Flight::default()),
            done: false,
        };
        if let Some(key) = key {
            let entry = Entry::Asking {
                flight: asked.flight.clone(),
                generation,
                until: now + timeout,
            };
            cache.insert(key, entry, self.entries_max);
        }
        Lookup::Ask(asked)
    }

    /// Forgets every answer (a reload; questions being asked are answered but not kept).
    pub fn clear(&self) {
        let mut cache = lock(&self.state);
        let entries = std::mem::take(&mut cache.entries);
        cache.order = VecDeque::new();
        cache.epoch += 1;
        drop(cache);
        // Freed without the lock the shards' admissions take.
        drop(entries);
    }

    pub fn stats(&self) -> Vec<(String, AuthorizeStats)> {
        let cache = lock(&self.state);
        let mut all: Vec<_> = cache
            .stats
            .iter()
            .map(|(app, s)| (app.to_string(), *s))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }
}

impl Cache {
    /// `app`'s counts (a new entry only for an app's first admission: no clone of its name
    /// on every one).
    fn stats_of(&mut self, app: &Arc<str>) -> &mut AuthorizeStats {
        if !self.stats.contains_key(app) {
            self.stats.insert(app.clone(), AuthorizeStats::default());
        }
        self.stats.get_mut(app).expect("inserted above")
    }

    /// Inserts within `entries_max`: when full, the oldest kept answers go first (a question
    /// being asked stays: its call ends it; a cache full of them keeps nothing more). O(1)
    /// amortized: every key is pushed on `order` once per insertion and popped at most once.
    fn insert(&mut self, key: [u8; 32], entry: Entry, entries_max: usize) {
        let kept = matches!(entry, Entry::Decided { .. });
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= entries_max {
                let Some(oldest) = self.order.pop_front() else {
                    return;
                };
                if matches!(self.entries.get(&oldest), Some(Entry::Decided { .. })) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, entry);
        if kept {
            self.order.push_back(key);
            if self.order.len() > 2 * entries_max {
                // Keys that left, and repeats, dropped: at most `entries_max` stay.
                let (entries, mut seen) = (&self.entries, HashSet::new());
                self.order.retain(|k| {
                    matches!(entries.get(k), Some(Entry::Decided { .. })) && seen.insert(*k)
                });
            }
        }
        assert!(self.entries.len() <= entries_max);
        assert!(self.order.len() <= 2 * entries_max);
    }
}

/// The right to make a call, and the promise to end it: dropped without an answer (its
/// call thread panicked, or the call was dropped unmade), its waiters are told it is
/// unavailable, and the question can be asked again.
pub struct Asked {
    decisions: Arc<Decisions>,
    app: Arc<str>,
    key: Option<[u8; 32]>,
    /// The cache's epoch and the revocation generation when it was asked.
    epoch: u64,
    generation: u64,
    ttl: Duration,
    flight: Arc<Flight>,
    done: bool,
}

impl Asked {
    /// The answer this call will give, to wait for.
    pub fn waiting(&self) -> Waiting {
        Waiting(self.flight.clone())
    }

    /// Ends the call, made in `took`: its waiters are woken with `outcome`, which is kept
    /// for the app's time if it is a decision and nothing was cleared meanwhile.
    pub fn answer(mut self, outcome: Result<Decision, Failure>, took: Duration) {
        self.finish(outcome, Some(took));
    }

    /// `took`: `None` if no call was made.
    fn finish(&mut self, outcome: Result<Decision, Failure>, took: Option<Duration>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let now = Instant::now();
        {
            let mut cache = lock(&self.decisions.state);
            let stats = cache.stats_of(&self.app);
            if let Some(took) = took {
                stats.calls += 1;
                stats.seconds_total += took.as_secs_f64();
            }
            match &outcome {
                Ok(Decision::Deny { .. }) => stats.denied += 1,
                Ok(Decision::Allow { .. }) => {}
                Err(_) => stats.errors += 1,
            }
            if let Some(key) = self.key {
                let ours = matches!(
                    cache.entries.get(&key),
                    Some(Entry::Asking { flight, .. }) if Arc::ptr_eq(flight, &self.flight)
                );
                if ours {
                    cache.entries.remove(&key);
                }
                let kept = outcome.is_ok() && self.epoch == cache.epoch && !self.ttl.is_zero();
                if let (true, Ok(decision)) = (kept, &outcome) {
                    let entry = Entry::Decided {
                        decision: decision.clone(),
                        expires: now + self.ttl,
                        generation: self.generation,
                    };
                    cache.insert(key, entry, self.decisions.entries_max);
                }
            }
        }
        self.flight.resolve(outcome);
    }
}

impl Drop for Asked {
    fn drop(&mut self) {
        // After `answer` this does nothing.
        self.finish(
            Err(Failure::Unavailable("the call was not made".into())),
            None,
        );
    }
}

/// One call's answer, for every admission waiting for it.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    outcome: Option<Result<Decision, Failure>>,
    /// One per waiting admission (bounded by the admissions a shard runs at once).
    wakers: Vec<Waker>,
}

impl Flight {
    /// The first outcome is the answer; later ones change nothing.
    fn resolve(&self, outcome: Result<Decision, Failure>) {
        let wakers = {
            let mut state = lock(&self.state);
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A call's answer, to be awaited (from any thread).
pub struct Waiting(Arc<Flight>);

impl Future for Waiting {
    type Output = Result<Decision, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.0.state);
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The state, even after a panic elsewhere poisoned its lock (every change is one step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Decision, Failure> {
        decision(&Answer {
            status,
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn only_a_200_that_says_allow_lets_a_connection_in() {
        assert_eq!(
            answer(200, r#"{"allow":true}"#),
            Ok(Decision::Allow { viewer: false })
        );
        assert_eq!(
            answer(200, r#"{"allow":true,"role":"viewer"}"#),
            Ok(Decision::Allow { viewer: true })
        );
        assert_eq!(
            answer(200, r#"{"allow":true,"role":"editor","extra":1}"#),
            Ok(Decision::Allow { viewer: false })
        );
        assert_eq!(
            answer(200, r#"{"allow":false,"reason":"not a member"}"#),
            Ok(Decision::Deny {
                reason: "not a member".into()
            })
        );
        assert_eq!(
            answer(200, r#"{"allow":false}"#),
            Ok(Decision::Deny {
                reason: NO_REASON.into()
            })
        );
        for status in [500, 502, 503, 599] {
            assert!(matches!(
                answer(status, r#"{"allow":true}"#),
                Err(Failure::Unavailable(_))
            ));
        }
        for (status, body) in [
            (204, ""),
            (201, r#"{"allow":true}"#),
            (302, ""),
            (401, r#"{"allow":true}"#),
            (404, ""),
            (200, ""),
            (200, "allow"),
            (200, "[true]"),
            (200, r#"{"allow":"true"}"#),
            (200, r#"{"allow":1}"#),
            (200, r#"{"role":"editor"}"#),
            (200, r#"{"allow":true,"role":"owner"}"#),
            (200, r#"{"allow":true,"role":1}"#),
            (200, r#"{"allow":false,"reason":7}"#),
        ] {
            assert!(
                matches!(answer(status, body), Err(Failure::Malformed(_))),
                "{status} {body}"
            );
        }
    }

    #[test]
    fn a_reason_fits_a_close_frame_and_shows_no_control_characters() {
        let long = "é".repeat(200);
        let Ok(Decision::Deny { reason }) =
            answer(200, &format!(r#"{{"allow":false,"reason":"{long}"}}"#))
        else {
            panic!("a denial");
        };
        assert!(reason.len() <= REASON_BYTES_MAX && reason.len() >= REASON_BYTES_MAX - 1);
        assert!(reason.chars().all(|c| c == 'é'));
        assert_eq!(clean_reason("a\r\nb\u{0}c\u{7f}"), "abc");
        assert_eq!(clean_reason(" \n "), NO_REASON);
        let close = format!("Forbidden: {}", clean_reason(&"x".repeat(500)));
        assert!(close.len() <= 123, "{}", close.len());
    }

    fn question_as<'a>(
        role: Role,
        sub: Option<&'a str>,
        document: &'a str,
        claims: &'a serde_json::Value,
    ) -> Question<'a> {
        Question {
            tenant: "t",
            app: "a",
            document,
            sub,
            role,
            claims,
        }
    }

    fn question<'a>(
        sub: Option<&'a str>,
        document: &'a str,
        claims: &'a serde_json::Value,
    ) -> Question<'a> {
        question_as(Role::Editor, sub, document, claims)
    }

    #[test]
    fn the_body_is_the_documented_one() {
        let claims = serde_json::json!({"sub": "u1", "team": "x"});
        let body = question(Some("u1"), "doc", &claims).body();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "connection.authorize", "tenantId": "t", "appId": "a", "document": "doc",
                "data": {"sub": "u1", "role": "editor", "claims": {"sub": "u1", "team": "x"}},
            })
        );
    }

    const TTL: Duration = Duration::from_secs(30);
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn wait(waiting: Waiting) -> Result<Decision, Failure> {
        glommio::LocalExecutor::default().run(waiting)
    }

    #[test]
    fn one_call_per_question_its_answer_kept_until_a_revocation_or_a_clear() {
        let decisions = Arc::new(Decisions::new(8));
        let app: Arc<str> = "t::a".into();
        let claims = serde_json::Value::Null;
        let q = question(Some("u1"), "doc", &claims);
        let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
            panic!("the first asks");
        };
        // Others asking meanwhile wait for the same call.
        let Lookup::Wait(second) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
            panic!("the second waits");
        };
        let allow = Decision::Allow { viewer: true };
        asked.answer(Ok(allow.clone()), Duration::from_millis(2));
        assert_eq!(wait(second), Ok(allow.clone()));
        assert!(
            matches!(decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)), Lookup::Known(d) if d == allow)
        );
        // Another user, another document: asked again.
        let other = question(Some("u2"), "doc", &claims);
        assert!(matches!(
            decisions.lookup(&app, &other, 0, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
        // A revocation (the generation moved) forgets it.
        let Lookup::Ask(again) = decisions.lookup(&app, &q, 1, (TIMEOUT, TTL)) else {
            panic!("asked again after a revocation");
        };
        again.answer(Ok(allow.clone()), Duration::ZERO);
        assert!(matches!(
            decisions.lookup(&app, &q, 1, (TIMEOUT, TTL)),
            Lookup::Known(_)
        ));
        decisions.clear();
        let Lookup::Ask(cleared) = decisions.lookup(&app, &q, 1, (TIMEOUT, TTL)) else {
            panic!("asked again after a clear");
        };
        // A call asked before a clear answers its waiters but is not kept.
        decisions.clear();
        cleared.answer(Ok(allow), Duration::ZERO);
        assert!(matches!(
            decisions.lookup(&app, &q, 1, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
        let stats = decisions.stats();
        assert_eq!(stats.len(), 1);
        // Three calls made; a waiter and two kept answers; two questions dropped unasked.
        assert_eq!(
            (stats[0].1.calls, stats[0].1.cached, stats[0].1.errors),
            (3, 3, 2)
        );
    }

    #[test]
    fn failures_are_never_kept_and_a_dropped_call_tells_its_waiters() {
        let decisions = Arc::new(Decisions::new(8));
        let app: Arc<str> = "t::a".into();
        let claims = serde_json::Value::Null;
        let q = question(Some("u1"), "doc", &claims);
        let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
            panic!()
        };
        let failed = Err(Failure::Unavailable("timeout".into()));
        asked.answer(failed.clone(), Duration::ZERO);
        let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
            panic!("a failure is not kept")
        };
        let waiting = asked.waiting();
        drop(asked);
        assert!(matches!(wait(waiting), Err(Failure::Unavailable(_))));
        assert!(matches!(
            decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
        // Without a `sub`, users cannot be told apart: every connection asks.
        let anonymous = question(None, "doc", &claims);
        let Lookup::Ask(asked) = decisions.lookup(&app, &anonymous, 0, (TIMEOUT, TTL)) else {
            panic!()
        };
        asked.answer(Ok(Decision::Allow { viewer: false }), Duration::ZERO);
        assert!(matches!(
            decisions.lookup(&app, &anonymous, 0, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
        // The failed call, and three questions dropped unasked.
        assert_eq!(decisions.stats()[0].1.errors, 4);
    }

    #[test]
    fn the_cache_holds_at_most_its_bound() {
        let decisions = Arc::new(Decisions::new(4));
        let app: Arc<str> = "t::a".into();
        let claims = serde_json::Value::Null;
        for i in 0..100 {
            let sub = format!("u{i}");
            let q = question(Some(&sub), "doc", &claims);
            let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
                panic!()
            };
            asked.answer(Ok(Decision::Allow { viewer: false }), Duration::ZERO);
            assert!(decisions.len() <= 4);
        }
        // The latest is kept.
        let q = question(Some("u99"), "doc", &claims);
        assert!(matches!(
            decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)),
            Lookup::Known(_)
        ));
        // Full of questions being asked: a fifth is asked, not kept.
        let asking: Vec<_> = (0..4)
            .map(|i| {
                let sub = format!("w{i}");
                let q = question(Some(&sub), "doc", &claims);
                decisions.lookup(&app, &q, 0, (TIMEOUT, TTL))
            })
            .collect();
        assert_eq!(decisions.len(), 4);
        let q = question(Some("w9"), "doc", &claims);
        assert!(matches!(
            decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
        assert_eq!(decisions.len(), 4);
        drop(asking);
    }

    #[test]
    fn an_answer_decides_only_the_same_role_and_a_question_asked_too_long_or_before_a_revocation_is_asked_again(
    ) {
        let decisions = Arc::new(Decisions::new(8));
        let app: Arc<str> = "t::a".into();
        let claims = serde_json::Value::Null;
        let viewer = question_as(Role::Viewer, Some("u1"), "doc", &claims);
        let Lookup::Ask(asked) = decisions.lookup(&app, &viewer, 0, (TIMEOUT, TTL)) else {
            panic!()
        };
        asked.answer(Ok(Decision::Allow { viewer: false }), Duration::ZERO);
        assert!(matches!(
            decisions.lookup(&app, &viewer, 0, (TIMEOUT, TTL)),
            Lookup::Known(_)
        ));
        // The same user's editor token is asked about itself.
        let editor = question_as(Role::Editor, Some("u1"), "doc", &claims);
        let Lookup::Ask(_editor_asked) = decisions.lookup(&app, &editor, 0, (TIMEOUT, TTL)) else {
            panic!("an editor's token asked again")
        };
        // A call out since before a revocation is not joined: asked again.
        let Lookup::Ask(_after) = decisions.lookup(&app, &editor, 1, (TIMEOUT, TTL)) else {
            panic!("asked again after the revocation")
        };
        // A call past its deadline (its thread hung) is not joined either.
        let other = question(Some("u2"), "doc", &claims);
        let Lookup::Ask(_hung) = decisions.lookup(&app, &other, 1, (Duration::ZERO, TTL)) else {
            panic!()
        };
        assert!(matches!(
            decisions.lookup(&app, &other, 1, (TIMEOUT, TTL)),
            Lookup::Ask(_)
        ));
    }

    /// What the README and ARCHITECTURE.md say a kept answer costs: a slot of the map and
    /// one of `order`, plus a refusal's reason (at most [`REASON_BYTES_MAX`]) on the heap.
    #[test]
    fn a_kept_answer_costs_at_most_136_bytes() {
        let slot = std::mem::size_of::<([u8; 32], Entry)>() + 1; // and hashbrown's control byte
        let order = std::mem::size_of::<[u8; 32]>();
        assert!(slot + order <= 136, "{slot} + {order}");
    }

    #[test]
    fn a_full_cache_lets_its_oldest_answers_go_first() {
        let decisions = Arc::new(Decisions::new(3));
        let app: Arc<str> = "t::a".into();
        let claims = serde_json::Value::Null;
        let subs = ["a", "b", "c", "d"];
        for sub in subs {
            let q = question(Some(sub), "doc", &claims);
            let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
                panic!()
            };
            asked.answer(Ok(Decision::Allow { viewer: false }), Duration::ZERO);
        }
        // Newest first: asking about a forgotten one would let the next oldest go.
        let mut kept: Vec<bool> = subs
            .iter()
            .rev()
            .map(|sub| {
                let q = question(Some(sub), "doc", &claims);
                matches!(
                    decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)),
                    Lookup::Known(_)
                )
            })
            .collect();
        kept.reverse();
        assert_eq!(kept, [false, true, true, true]);
        // Answering one key again and again keeps `order` bounded.
        for _ in 0..100 {
            let q = question(Some("b"), "doc", &claims);
            decisions.clear();
            let Lookup::Ask(asked) = decisions.lookup(&app, &q, 0, (TIMEOUT, TTL)) else {
                panic!()
            };
            asked.answer(Ok(Decision::Allow { viewer: false }), Duration::ZERO);
        }
        assert!(lock(&decisions.state).order.len() <= 6);
    }
}
