//! Webhooks (PRODUCT.md 9.1): what an application is told about its documents, signed the
//! Standard Webhooks way, sent only where the address rules allow.
//!
//! Pure layers: [`event`] (the events and their JSON bodies), [`signature`] (the headers a
//! receiver checks), [`target`] (the URL and the address rules). [`delivery`] sends them
//! from threads of its own, never from a data-plane executor. [`Webhooks`] is what the
//! server holds: every app's receiver, read from the configuration at start.

pub mod delivery;
pub mod event;
pub mod signature;
pub mod target;

use crate::config::{AppConfig, Config};
use delivery::{AppStats, Deliveries, Receipt, Sink};
use event::{Event, EventKind, Subject};
use signature::WebhookSecret;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// The node's webhooks: a receiver for every app that configured one, and their delivery.
pub struct Webhooks {
    deliveries: Deliveries,
    /// By `{tenant}::{app}`.
    sinks: HashMap<String, Arc<Sink>>,
}

impl Webhooks {
    /// Reads every app's webhook settings, resolving each receiver's host and checking its
    /// addresses (`own`: this node's listeners): `None` when no app has a webhook. An error
    /// names the field.
    pub fn from_config(config: &Config, own: &[SocketAddr]) -> Result<Option<Webhooks>, String> {
        let mut sinks = HashMap::new();
        for app in &config.apps {
            if let Some(sink) = sink(app, own, config.webhooks.timeout_ms)
                .map_err(|why| format!("apps.{}.{why}", app.id))?
            {
                sinks.insert(sink.app.clone(), Arc::new(sink));
            }
        }
        if sinks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Webhooks {
            deliveries: Deliveries::start(config.webhooks),
            sinks,
        }))
    }

    /// Queues `kind` about `document` of `app` (`{tenant}::{app}`) if the app wants it;
    /// what became of it is on the receipt.
    pub fn push(
        &self,
        app: &str,
        document: &str,
        kind: EventKind,
        data: serde_json::Value,
    ) -> Option<Receipt> {
        let sink = self.sinks.get(app).filter(|s| s.wants(kind))?;
        let event = Event::new(
            kind,
            Subject::of(app, document),
            data,
            crate::log::unix_ms(),
        );
        self.deliveries.push(sink, document, event).ok()
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
        let sink = self
            .sinks
            .get(app)
            .filter(|s| s.wants(EventKind::DocumentChanged))?;
        let event = Event::changed(Subject::of(app, document), change, crate::log::unix_ms());
        self.deliveries.push(sink, document, event).ok()
    }

    pub fn stats(&self) -> Vec<(String, AppStats)> {
        self.deliveries.stats()
    }
}

/// One app's receiver, if it has one.
fn sink(app: &AppConfig, own: &[SocketAddr], timeout_ms: u64) -> Result<Option<Sink>, String> {
    let Some(url) = &app.webhook_url else {
        if app.webhook_secret.is_some() || app.webhook_secret_file.is_some() {
            return Err("webhook_secret: set without webhook_url".into());
        }
        return Ok(None);
    };
    let target = target::Target::parse(url).map_err(|why| format!("webhook_url: {why}"))?;
    // What the HTTP client will parse must parse now, not fail every attempt for a day.
    url.parse::<ureq::http::Uri>()
        .map_err(|e| format!("webhook_url: {e}"))?;
    let secret_text = match (&app.webhook_secret, &app.webhook_secret_file) {
        (Some(text), None) => text.0.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("webhook_secret_file: cannot read {path}: {e}"))?,
        _ => {
            return Err(
                "webhook_secret: set exactly one of webhook_secret and webhook_secret_file".into(),
            )
        }
    };
    let secret =
        WebhookSecret::parse(&secret_text).map_err(|why| format!("webhook_secret: {why}"))?;
    let events = match &app.webhook_events {
        None => EventKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                EventKind::parse(n).ok_or_else(|| format!("webhook_events: unknown event {n:?}"))
            })
            .collect::<Result<_, _>>()?,
    };
    let addrs = resolve(&target.host, target.port)
        .map_err(|e| format!("webhook_url: cannot resolve {}: {e}", target.host))?;
    if addrs.is_empty() {
        return Err(format!("webhook_url: {} has no address", target.host));
    }
    for addr in addrs {
        target::check(target.https, addr, app.webhook_allow_private, own)
            .map_err(|why| format!("webhook_url: {why}"))?;
    }
    Ok(Some(Sink::new(
        format!("{}::{}", app.tenant, app.id),
        url.clone(),
        secret,
        events,
        app.webhook_allow_private,
        own.to_vec(),
        timeout_ms,
    )))
}

/// How long start-up waits for a receiver's host to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `host:port`'s addresses, or why not within [`RESOLVE_TIMEOUT`] (the system resolver has
/// no deadline of its own: a lookup that hangs is left to its thread).
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("wiresocket-resolve".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.collect::<Vec<_>>());
            let _ = tx.send(found);
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(found) => found.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())),
    }
}
