//! Webhooks (PRODUCT.md 9.1): what an application is told about its documents, signed the
//! Standard Webhooks way, sent only where the address rules allow.
//!
//! Pure layers: [`event`] (the events and their JSON bodies), [`signature`] (the headers a
//! receiver checks), [`target`] (the URL and the address rules). [`delivery`] sends them
//! from threads of its own, never from a data-plane executor. [`Webhooks`] is what the
//! server holds: every app's receiver, read from the configuration at start. [`load`]
//! is the load hook, whose answer a starting session waits for, called from [`call`]'s
//! threads through the same [`endpoint`] rules.

pub mod call;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod load;
pub mod signature;
pub mod target;

use crate::config::{AppConfig, Config};
use call::{Calls, CallsConfig};
use delivery::{AppStats, Deliveries, Receipt, Sink};
use endpoint::Endpoint;
use event::{Event, EventKind, Subject};
use load::{Loaded, Loader};
use signature::WebhookSecret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node's calls to applications: every app's webhook receiver and load hook, read from
/// the configuration at start, and the threads that call them.
pub struct Webhooks {
    deliveries: Deliveries,
    sinks: Sinks,
    loaders: Loaders,
    calls: Calls,
}

/// A load hook's call, made: its answer (`None`: start empty; else the state, prepared) and
/// how long to wait for it.
pub struct LoadCall<T> {
    pub answer: call::Pending<Result<Option<T>, String>>,
    pub timeout: Duration,
}

impl Webhooks {
    /// Reads every app's webhook and load hook settings, resolving each receiver's host and
    /// checking its addresses (`own`: this node's listeners): `None` when no app has either.
    /// An error names the field.
    pub fn from_config(config: &Config, own: &[SocketAddr]) -> Result<Option<Webhooks>, String> {
        let (sinks, loaders) = read(config, own)?;
        if sinks.is_empty() && loaders.is_empty() {
            return Ok(None);
        }
        let w = &config.webhooks;
        Ok(Some(Webhooks {
            deliveries: Deliveries::start(config.webhooks),
            sinks,
            loaders,
            calls: Calls::start(CallsConfig {
                threads: w.call_threads,
                queued_max: w.calls_queued_max,
                app_queued_max: w.app_calls_queued_max,
                app_running_max: w.app_calls_max,
            }),
        }))
    }

    /// The `session.started` event of `document` of `app` (`{tenant}::{app}`): sent to the
    /// load hook, then queued as a webhook once the session has started.
    pub fn session_started(&self, app: &str, document: &str) -> Event {
        let subject = Subject::of(app, document);
        let data = serde_json::json!({});
        Event::new(
            EventKind::SessionStarted,
            subject,
            data,
            crate::log::unix_ms(),
        )
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
        let (app_key, loader) = self.loaders.get(app)?;
        let timeout = loader.timeout;
        let deadline = Instant::now() + timeout;
        let (loader, started) = (loader.clone(), started.clone());
        let call = move || match loader.fetch(&started, state_bytes_max, deadline)? {
            Loaded::Empty => Ok(None),
            Loaded::State(state) => prepare(state).map(Some),
        };
        let answer = self.calls.run(app_key, deadline, call);
        let answer = answer.unwrap_or_else(|call::CallsBusy| {
            call::Pending::answered(Err("too many load hook calls wait already".into()))
        });
        Some(LoadCall { answer, timeout })
    }

    /// Queues `event` about `document` of `app` if the app wants it; what became of it is on
    /// the receipt.
    pub fn push_event(&self, app: &str, document: &str, event: Event) -> Option<Receipt> {
        let sink = self.sinks.get(app).filter(|s| s.wants(event.kind))?;
        self.deliveries.push(sink, document, event).ok()
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
        self.sinks.get(app).is_some_and(|s| s.wants(kind))
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
        self.deliveries.stats()
    }
}

/// Checks every app's webhook and load hook settings as a start would (secret files, DNS,
/// addresses), without starting anything.
pub fn check(config: &Config, own: &[SocketAddr]) -> Result<(), String> {
    read(config, own).map(|_| ())
}

type Sinks = HashMap<String, Arc<Sink>>;
type Loaders = HashMap<String, (Arc<str>, Arc<Loader>)>;

/// Every app's receivers, by `{tenant}::{app}`.
fn read(config: &Config, own: &[SocketAddr]) -> Result<(Sinks, Loaders), String> {
    let mut sinks = HashMap::new();
    let mut loaders = HashMap::new();
    for app in &config.apps {
        let key = format!("{}::{}", app.tenant, app.id);
        let hooks = hooks(app, own, config.webhooks.timeout_ms)
            .map_err(|why| format!("apps.{}.{why}", app.id))?;
        if let Some(sink) = hooks.sink {
            sinks.insert(key.clone(), Arc::new(sink));
        }
        if let Some(loader) = hooks.loader {
            loaders.insert(key.clone(), (Arc::from(key), Arc::new(loader)));
        }
    }
    Ok((sinks, loaders))
}

/// One app's receivers, each if it has one.
struct Hooks {
    sink: Option<Sink>,
    loader: Option<Loader>,
}

fn hooks(app: &AppConfig, own: &[SocketAddr], timeout_ms: u64) -> Result<Hooks, String> {
    let configured = app.webhook_url.is_some() || app.load_url.is_some();
    if !configured {
        if app.webhook_secret.is_some() || app.webhook_secret_file.is_some() {
            return Err("webhook_secret: set without webhook_url or load_url".into());
        }
        return Ok(Hooks {
            sink: None,
            loader: None,
        });
    }
    let secret_text = match (&app.webhook_secret, &app.webhook_secret_file) {
        (Some(text), None) => text.0.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("webhook_secret_file: cannot read {path}: {e}"))?,
        _ => {
            return Err(
                "webhook_secret: set exactly one of webhook_secret and webhook_secret_file (it signs the webhooks and the load hook's calls)".into(),
            )
        }
    };
    let secret =
        WebhookSecret::parse(&secret_text).map_err(|why| format!("webhook_secret: {why}"))?;
    let endpoint = |field: &str, url: &String, timeout_ms: u64| {
        Endpoint::check_at_start(url, app.webhook_allow_private, own)
            .map_err(|why| format!("{field}: {why}"))?;
        Ok::<_, String>(Endpoint::new(
            url.clone(),
            app.webhook_allow_private,
            own.to_vec(),
            timeout_ms,
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
                endpoint: endpoint("webhook_url", url, timeout_ms)?,
                secret: secret.clone(),
                events,
            })
        }
    };
    let loader = match &app.load_url {
        None => None,
        Some(url) => Some(Loader {
            endpoint: endpoint("load_url", url, app.load_timeout_ms)?,
            secret,
            timeout: Duration::from_millis(app.load_timeout_ms),
        }),
    };
    Ok(Hooks { sink, loader })
}
