//! SIGHUP (PRODUCT.md 13): the configuration file is read again and what can change in
//! place is put in force: tenants, keys and apps (enabled, plans, client secrets, origins,
//! webhook receivers and load hooks), the per-IP rate limits, and the TLS certificate. No session is dropped, except those of an app that is gone or
//! disabled, closed with 4003. A file that does not validate is refused, the error naming
//! the field, and the configuration in force stays. Other settings need a restart (the log
//! names those that changed).
//!
//! The signal handler only counts requests; a thread of its own (the control plane) reads
//! and checks the file, so that key files and the rest never touch a data-plane executor.

use super::shared::Shared;
use crate::auth::directory::Directory;
use crate::config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reloads asked for (SIGHUP) since the process started: each node reloads once per new one.
static RELOADS_REQUESTED: AtomicU64 = AtomicU64::new(0);

/// How often the reload thread looks for a request.
const POLL: Duration = Duration::from_millis(100);

/// Asks every node of the process to reload (async-signal-safe: one atomic add).
pub fn request() {
    RELOADS_REQUESTED.fetch_add(1, Ordering::Relaxed);
}

/// Starts the node's reload thread.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let mut seen = RELOADS_REQUESTED.load(Ordering::Relaxed);
    std::thread::Builder::new()
        .name("wiresocket-reload".into())
        .spawn(move || loop {
            std::thread::sleep(POLL);
            let now = RELOADS_REQUESTED.load(Ordering::Relaxed);
            if now == seen {
                continue;
            }
            seen = now;
            match reload(&shared) {
                Ok(restart) => crate::log::info(
                    "reloaded",
                    &[
                        ("tenants", &shared.directory().verifier.tenant_count()),
                        ("apps", &shared.directory().apps.len()),
                        ("restart_to_apply", &restart.join(",")),
                    ],
                ),
                Err(why) => crate::log::event(
                    "error",
                    "reload_refused",
                    &[
                        ("error", &why),
                        ("note", &"the configuration in force stays"),
                    ],
                ),
            }
        })
        .map(|_| ())
}

/// Reads the file again and puts in force what can change in place; the settings that
/// changed but need a restart.
fn reload(shared: &Shared) -> Result<Vec<&'static str>, String> {
    let running = &shared.config;
    let Some(path) = &running.config_file else {
        return Err("the node was started without --config: there is no file to read".into());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {path}: {e}"))?;
    let mut new = Config::from_toml(&text, path).map_err(|e| e.0)?;
    new.apply_env(std::env::vars()).map_err(|e| e.0)?;
    // What flags may have set stays as the node started.
    new.listen.clone_from(&running.listen);
    new.shards = running.shards;
    new.echo_path.clone_from(&running.echo_path);
    new.documents.grace_period_ms = running.documents.grace_period_ms;
    new.validate().map_err(|e| e.0)?;
    let directory = Directory::from_config(&new).map_err(|e| e.0)?;
    // Rotated secrets live in the registry, not the file.
    directory.set_rotated_secrets(shared.directory().rotated_secrets());
    // Secret files, DNS and the address rules, as at start (on this thread, off the shards).
    let receivers = shared.webhooks.read_apps(&new.apps)?;
    // The certificate and key files are read again (a renewed certificate); turning TLS on
    // or off needs a restart (`needs_restart`).
    let certificate = match (&shared.tls, &new.tls) {
        (Some(_), Some(tls)) => Some(super::certificate::server_config(tls)?),
        _ => None,
    };
    let restart = needs_restart(running, &new);
    let limits = &new.rate_limits;
    shared
        .handshakes_per_ip
        .set_per_window(limits.handshakes_per_minute);
    shared.usage_per_ip.set_per_window(limits.usage_per_minute);
    shared
        .token_requests_per_ip
        .set_per_window(limits.token_requests_per_minute);
    shared
        .admin_per_ip
        .set_per_window(limits.admin_requests_per_minute);
    // Receivers first: a session the new directory admits finds its app's load hook.
    shared.webhooks.replace(receivers);
    if let (Some(tls), Some(certificate)) = (&shared.tls, certificate) {
        tls.replace(certificate);
    }
    shared.replace_directory(directory);
    Ok(restart)
}

/// The settings that differ between `old` and `new` and are read only at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    [
        ("http", differs(&old.http, &new.http)),
        ("websocket", differs(&old.websocket, &new.websocket)),
        ("documents", differs(&old.documents, &new.documents)),
        ("hocuspocus", differs(&old.hocuspocus, &new.hocuspocus)),
        ("node", differs(&old.node, &new.node)),
        ("registry", differs(&old.registry, &new.registry)),
        ("auth", differs(&old.auth, &new.auth)),
        (
            "trusted_proxies",
            differs(&old.trusted_proxies, &new.trusted_proxies),
        ),
        ("webhooks", differs(&old.webhooks, &new.webhooks)),
        ("tls", old.tls.is_some() != new.tls.is_some()),
        (
            "admin_*",
            differs(
                &(
                    &old.admin_listen,
                    &old.admin_token_file,
                    old.metrics_on_admin,
                ),
                &(
                    &new.admin_listen,
                    &new.admin_token_file,
                    new.metrics_on_admin,
                ),
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
