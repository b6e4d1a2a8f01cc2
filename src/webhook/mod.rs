//! Webhooks (PRODUCT.md 9.1): what an application is told about its documents, signed the
//! Standard Webhooks way, sent only where the address rules allow.
//!
//! Pure layers: [`event`] (the events and their JSON bodies), [`signature`] (the headers a
//! receiver checks), [`target`] (the URL and the address rules). [`delivery`] sends them
//! from threads of its own, never from a data-plane executor. [`Webhooks`] is what the
//! server holds: every app's receiver, read from the configuration at start and again on a
//! reload. [`load`] is the load hook, whose answer a starting session waits for, and
//! [`authorize`] the authorization callback, whose answer an admission waits for; both are
//! called from [`call`]'s threads through the same [`endpoint`] rules.

pub mod authorize;
pub mod call;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod load;
pub mod signature;
pub mod target;

use crate::config::{AppConfig, Config};
use authorize::{Authorizer, Decision, Decisions, Lookup, Question};
use call::{Calls, CallsConfig};
use delivery::{AppStats, Deliveries, DeliveryConfig, Receipt, Sink};
use endpoint::Endpoint;
use event::{Event, EventKind, Subject};
use load::{Loaded, Loader};
use signature::WebhookSecret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The node's calls to applications: every app's webhook receiver, load hook and
/// authorization callback, and the threads that call them (started with the first call: a node whose apps have none has
/// none).
pub struct Webhooks {
    config: DeliveryConfig,
    /// This node's listeners, which no receiver may be.
    own: Vec<SocketAddr>,
    receivers: RwLock<Arc<Receivers>>,
    deliveries: OnceLock<Deliveries>,
    calls: OnceLock<Calls>,
    /// The authorization callbacks' answers, kept.
    decisions: Arc<Decisions>,
}

/// Every app's receivers, by `{tenant}::{app}`, as one configuration gave them.
pub struct Receivers {
    sinks: HashMap<String, Arc<Sink>>,
    loaders: HashMap<String, (Arc<str>, Arc<Loader>)>,
    authorizers: HashMap<String, (Arc<str>, Arc<Authorizer>)>,
    /// Each app's settings as read (see [`settings`]): a reload keeps the receivers of an
    /// app whose settings are the same, without resolving their hosts again.
    settings: HashMap<String, String>,
}

/// An admission's authorization (PRODUCT.md 9.4).
pub enum Authorization {
    /// Answered already: kept.
    Known(Decision),
    /// Asked: its answer, and how long to wait for it.
    Wait {
        answer: authorize::Waiting,
        timeout: Duration,
    },
}

/// A load hook's call, made: its answer (`None`: start empty; else the state, prepared) and
/// how long to wait for it.
pub struct LoadCall<T> {
    pub answer: call::Pending<Result<Option<T>, String>>,
    pub timeout: Duration,
}

impl Webhooks {
    /// Reads every app's webhook and load hook settings, resolving each receiver's host and
    /// checking its addresses (`own`: this node's listeners). An error names the field.
    pub fn from_config(config: &Config, own: &[SocketAddr]) -> Result<Webhooks, String> {
        let receivers = read(&config.apps, own, &config.webhooks, None)?;
        Ok(Webhooks {
            config: config.webhooks,
            own: own.to_vec(),
            receivers: RwLock::new(Arc::new(receivers)),
            deliveries: OnceLock::new(),
            calls: OnceLock::new(),
            decisions: Arc::new(Decisions::new(config.webhooks.authorize_cache_entries_max)),
        })
    }

    /// Reads `apps`' receivers again (a reload), checked as at start, except that an app
    /// whose settings did not change keeps its receivers (a host that does not resolve for a
    /// moment must not refuse a reload that changes something else); the `[webhooks]`
    /// section stays as the node started.
    pub fn read_apps(&self, apps: &[AppConfig]) -> Result<Receivers, String> {
        let running = self.receivers().clone();
        read(apps, &self.own, &self.config, Some(running.as_ref()))
    }

    /// Puts `receivers` in force: new events and load calls use them at once, and the events
    /// already waiting for an app that still has a receiver go to its new one (an app whose
    /// receiver was removed still gets what was waiting for it: nothing is dropped). Every
    /// kept authorization answer is forgotten (the reload may change who may do what).
    pub fn replace(&self, receivers: Receivers) {
        // Under the lock a push holds while it queues (receivers, then the queues: one
        // order), so no event is queued for a receiver already replaced.
        let mut current = self.receivers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(deliveries) = self.deliveries.get() {
            deliveries.replace_sinks(&receivers.sinks);
        }
        *current = Arc::new(receivers);
        // Under the write lock, which every lookup holds the read side of: no answer of the
        // old settings is kept after this.
        self.decisions.clear();
    }

    fn receivers(&self) -> std::sync::RwLockReadGuard<'_, Arc<Receivers>> {
        self.receivers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn deliveries(&self) -> &Deliveries {
        self.deliveries
            .get_or_init(|| Deliveries::start(self.config))
    }

    fn calls(&self) -> &Calls {
        let w = &self.config;
        self.calls.get_or_init(|| {
            Calls::start(CallsConfig {
                threads: w.call_threads,
                queued_max: w.calls_queued_max,
                app_queued_max: w.app_calls_queued_max,
                app_running_max: w.app_calls_max,
            })
        })
    }

    /// Whether any app has a webhook receiver (the shards then look for debounced events).
    pub fn any_sink(&self) -> bool {
        !self.receivers().sinks.is_empty()
    }

    /// The `session.started` event of `document` of `app` (`{tenant}::{app}`), if the app
    /// has a load hook (it is sent to it) or a receiver: then queued as a webhook once the
    /// session has started.
    pub fn session_started(&self, app: &str, document: &str) -> Option<Event> {
        let receivers = self.receivers();
        if !receivers.loaders.contains_key(app) && !receivers.sinks.contains_key(app) {
            return None;
        }
        let subject = Subject::of(app, document);
        let data = serde_json::json!({});
        Some(Event::new(
            EventKind::SessionStarted,
            subject,
            data,
            crate::log::unix_ms(),
        ))
    }

    /// Calls `app`'s load hook with `started` on a call thread (`None`: the app has none).
    /// The state is read up to `state_bytes_max` and given to `prepare` on the same thread
    /// (checking and decoding a large state is work a shard should not do); the answer
    /// comes within the call's timeout (the waiter holds it to that too), or is an error.
    pub fn load<T: Send + 'static>(
        &self,
        app: &str,
        started: &Event,
        state_bytes_max: u64,
        prepare: impl FnOnce(Vec<u8>) -> Result<T, String> + Send + 'static,
    ) -> Option<LoadCall<T>> {
        let (app_key, loader) = self.receivers().loaders.get(app).cloned()?;
        let timeout = loader.timeout;
        let deadline = Instant::now() + timeout;
        let started = started.clone();
        let call = move || match loader.fetch(&started, state_bytes_max, deadline)? {
            Loaded::Empty => Ok(None),
            Loaded::State(state) => prepare(state).map(Some),
        };
        let answer = self.calls().run(&app_key, deadline, call);
        let answer = answer.unwrap_or_else(|call::CallsBusy| {
            call::Pending::answered(Err("too many load hook calls wait already".into()))
        });
        Some(LoadCall { answer, timeout })
    }

    /// Asks `app`'s authorization callback `question`, on a call thread, unless its answer
    /// is kept (made under the revocation `generation`) or being asked already (`None`: the
    /// app has none).
    pub fn authorize(
        &self,
        app: &str,
        question: &Question<'_>,
        generation: u64,
    ) -> Option<Authorization> {
        let receivers = self.receivers();
        let (app_key, authorizer) = receivers.authorizers.get(app).cloned()?;
        let timeout = authorizer.timeout;
        let looked_up = self.decisions.lookup(
            &app_key,
            question,
            generation,
            (timeout, authorizer.cache_ttl),
        );
        drop(receivers);
        let asked = match looked_up {
            Lookup::Known(decision) => return Some(Authorization::Known(decision)),
            Lookup::Wait(answer) => return Some(Authorization::Wait { answer, timeout }),
            Lookup::Ask(asked) => asked,
        };
        let answer = asked.waiting();
        let body = question.body();
        let deadline = Instant::now() + timeout;
        let app = app_key.clone();
        let call = move || {
            let started = Instant::now();
            let outcome = authorizer.ask(&body, deadline);
            match &outcome {
                Err(authorize::Failure::Unavailable(why)) => crate::log::warn(
                    "authorize_unavailable",
                    &[
                        ("app", &app),
                        ("url", &authorizer.endpoint.url),
                        ("why", why),
                    ],
                ),
                Err(authorize::Failure::Malformed(why)) => crate::log::event(
                    "error",
                    "authorize_malformed",
                    &[
                        ("app", &app),
                        ("url", &authorizer.endpoint.url),
                        ("why", why),
                    ],
                ),
                Ok(_) => {}
            }
            asked.answer(outcome, started.elapsed());
        };
        // Refused, the call is dropped unmade, which tells its waiters (see `Asked`).
        let _unawaited = self.calls().run(&app_key, deadline, call);
        Some(Authorization::Wait { answer, timeout })
    }

    /// The authorization callbacks' counts per app.
    pub fn authorize_stats(&self) -> Vec<(String, authorize::AuthorizeStats)> {
        self.decisions.stats()
    }

    /// Queues `event` about `document` of `app` if the app wants it; what became of it is on
    /// the receipt.
    pub fn push_event(&self, app: &str, document: &str, event: Event) -> Option<Receipt> {
        let receivers = self.receivers();
        let sink = receivers.sinks.get(app).filter(|s| s.wants(event.kind))?;
        self.deliveries().push(sink, document, event).ok()
    }

    /// Queues `kind` with `data` about `document` of `app` (see [`Webhooks::push_event`]).
    pub fn push(
        &self,
        app: &str,
        document: &str,
        kind: EventKind,
        data: serde_json::Value,
    ) -> Option<Receipt> {
        if !self.wants(app, kind) {
            return None;
        }
        let event = Event::new(
            kind,
            Subject::of(app, document),
            data,
            crate::log::unix_ms(),
        );
        self.push_event(app, document, event)
    }

    /// Whether `app` wants `kind` (so its data need not be made otherwise).
    pub fn wants(&self, app: &str, kind: EventKind) -> bool {
        self.receivers()
            .sinks
            .get(app)
            .is_some_and(|s| s.wants(kind))
    }

    /// Queues `document.changed` with `change` (see [`event::Event::changed`]).
    pub fn push_changed(
        &self,
        app: &str,
        document: &str,
        change: event::Change,
    ) -> Option<Receipt> {
        if !self.wants(app, EventKind::DocumentChanged) {
            return None;
        }
        let event = Event::changed(Subject::of(app, document), change, crate::log::unix_ms());
        self.push_event(app, document, event)
    }

    pub fn stats(&self) -> Vec<(String, AppStats)> {
        self.deliveries
            .get()
            .map_or_else(Vec::new, Deliveries::stats)
    }
}

/// Checks every app's webhook and load hook settings as a start would (secret files, DNS,
/// addresses), without starting anything.
pub fn check(config: &Config, own: &[SocketAddr]) -> Result<(), String> {
    read(&config.apps, own, &config.webhooks, None).map(|_| ())
}

/// Every app's receivers, by `{tenant}::{app}` (`webhooks`: the node's bounds of the calls),
/// those of apps whose settings are as in `running` taken from there.
fn read(
    apps: &[AppConfig],
    own: &[SocketAddr],
    webhooks: &DeliveryConfig,
    running: Option<&Receivers>,
) -> Result<Receivers, String> {
    let (mut sinks, mut loaders, mut authorizers, mut all_settings) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
    );
    for app in apps {
        let key = format!("{}::{}", app.tenant, app.id);
        let named = |why: String| format!("apps.{}.{why}", app.id);
        let secret_text = secret_text(app).map_err(named)?;
        let settings = settings(app, secret_text.as_deref(), webhooks);
        if let Some(running) = running.filter(|r| r.settings.get(&key) == Some(&settings)) {
            if let Some(sink) = running.sinks.get(&key) {
                sinks.insert(key.clone(), sink.clone());
            }
            if let Some(loader) = running.loaders.get(&key) {
                loaders.insert(key.clone(), loader.clone());
            }
            if let Some(authorizer) = running.authorizers.get(&key) {
                authorizers.insert(key.clone(), authorizer.clone());
            }
            all_settings.insert(key, settings);
            continue;
        }
        all_settings.insert(key.clone(), settings);
        let Some(secret_text) = secret_text else {
            continue;
        };
        let hooks = hooks(app, &secret_text, own, webhooks).map_err(named)?;
        if let Some(sink) = hooks.sink {
            sinks.insert(key.clone(), Arc::new(sink));
        }
        let app_key: Arc<str> = Arc::from(key.as_str());
        if let Some(loader) = hooks.loader {
            loaders.insert(key.clone(), (app_key.clone(), Arc::new(loader)));
        }
        if let Some(authorizer) = hooks.authorizer {
            authorizers.insert(key, (app_key, Arc::new(authorizer)));
        }
    }
    Ok(Receivers {
        sinks,
        loaders,
        authorizers,
        settings: all_settings,
    })
}

/// An app's hook settings as one string (its secret's text included: a secret file changed
/// in place changes them).
fn settings(app: &AppConfig, secret_text: Option<&str>, webhooks: &DeliveryConfig) -> String {
    format!(
        "{:?}",
        (
            &app.webhook_url,
            &app.webhook_events,
            &app.load_url,
            app.webhook_allow_private,
            app.load_timeout_ms,
            &app.authorize_url,
            app.authorize_timeout_ms,
            app.authorize_cache_s,
            webhooks.timeout_ms,
            secret_text,
        )
    )
}

/// The app's webhook secret as written (`None`: the app has no webhook and no load hook).
fn secret_text(app: &AppConfig) -> Result<Option<String>, String> {
    let configured =
        app.webhook_url.is_some() || app.load_url.is_some() || app.authorize_url.is_some();
    if !configured {
        if app.webhook_secret.is_some() || app.webhook_secret_file.is_some() {
            return Err(
                "webhook_secret: set without webhook_url, load_url or authorize_url".into(),
            );
        }
        return Ok(None);
    }
    match (&app.webhook_secret, &app.webhook_secret_file) {
        (Some(text), None) => Ok(Some(text.0.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("webhook_secret_file: cannot read {path}: {e}")),
        _ => Err(
            "webhook_secret: set exactly one of webhook_secret and webhook_secret_file (it signs the webhooks, the load hook's and the authorization callback's calls)".into(),
        ),
    }
}

/// One app's receivers, each if it has one.
struct Hooks {
    sink: Option<Sink>,
    loader: Option<Loader>,
    authorizer: Option<Authorizer>,
}

/// The receivers of an app that has a webhook or a load hook, signed with `secret_text`.
fn hooks(
    app: &AppConfig,
    secret_text: &str,
    own: &[SocketAddr],
    webhooks: &DeliveryConfig,
) -> Result<Hooks, String> {
    let secret =
        WebhookSecret::parse(secret_text).map_err(|why| format!("webhook_secret: {why}"))?;
    // Each endpoint keeps as many connections as may call it at once.
    let endpoint = |field: &str, url: &String, timeout_ms: u64, connections_max: usize| {
        Endpoint::check_at_start(url, app.webhook_allow_private, own)
            .map_err(|why| format!("{field}: {why}"))?;
        Ok::<_, String>(Endpoint::new(
            url.clone(),
            app.webhook_allow_private,
            own.to_vec(),
            timeout_ms,
            connections_max,
        ))
    };
    let sink = match &app.webhook_url {
        None => None,
        Some(url) => {
            let events = match &app.webhook_events {
                None => EventKind::ALL.to_vec(),
                Some(names) => names
                    .iter()
                    .map(|n| {
                        EventKind::parse(n)
                            .ok_or_else(|| format!("webhook_events: unknown event {n:?}"))
                    })
                    .collect::<Result<_, _>>()?,
            };
            Some(Sink {
                app: format!("{}::{}", app.tenant, app.id),
                endpoint: endpoint(
                    "webhook_url",
                    url,
                    webhooks.timeout_ms,
                    webhooks.app_workers_max,
                )?,
                secret: secret.clone(),
                events,
            })
        }
    };
    let loader = match &app.load_url {
        None => None,
        Some(url) => Some(Loader {
            endpoint: endpoint("load_url", url, app.load_timeout_ms, webhooks.app_calls_max)?,
            secret: secret.clone(),
            timeout: Duration::from_millis(app.load_timeout_ms),
        }),
    };
    let authorizer = match &app.authorize_url {
        None => None,
        Some(url) => Some(Authorizer {
            endpoint: endpoint(
                "authorize_url",
                url,
                app.authorize_timeout_ms,
                webhooks.app_calls_max,
            )?,
            secret,
            timeout: Duration::from_millis(app.authorize_timeout_ms),
            cache_ttl: Duration::from_secs(app.authorize_cache_s),
        }),
    };
    Ok(Hooks {
        sink,
        loader,
        authorizer,
    })
}
