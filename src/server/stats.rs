//! Per-shard counters: written only by their own shard (relaxed atomics, no contention), read
//! by whichever shard renders `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! shard_stats {
    ($( $(#[$doc:meta])* $kind:ident $name:ident : $help:literal ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            /// Refusals by close code or HTTP status, indexed like [`REJECTION_CODES`].
            pub rejections: Rejections,
            /// Handshakes completed (101 written) and the microseconds they took in all,
            /// from the whole request head to the 101.
            pub handshakes_total: AtomicU64,
            pub handshake_us_total: AtomicU64,
        }

        impl ShardStats {
            /// Prometheus text exposition of every shard's counters.
            pub fn render(shards: &[ShardStats]) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP wiresocket_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE wiresocket_{} {}", stringify!($name), stringify!($kind));
                    for (i, s) in shards.iter().enumerate() {
                        let _ = writeln!(out, "wiresocket_{}{{shard=\"{i}\"}} {}", stringify!($name), s.$name.load(Relaxed));
                    }
                )*
                render_rejections(&mut out, shards);
                render_handshakes(&mut out, shards);
                out
            }
        }
    };
}

shard_stats! {
    gauge connections: "Open WebSocket connections on documents owned by the shard",
    gauge documents: "Documents in memory on the shard (grace period included)",
    gauge sessions: "WebSocket sessions whose socket is open on the shard (documents, echo, and those closing)",
    gauge admissions: "Sockets in admission on the shard: accepted or handed over, not yet a session or closed",
    counter connections_accepted_total: "TCP connections accepted by the shard",
    counter handoffs_total: "Connections handed to this shard by the shard that accepted them",
    counter messages_in_total: "WebSocket messages received",
    counter bytes_in_total: "Bytes received on WebSocket connections",
    counter bytes_out_total: "Bytes written to WebSocket connections (added by the keepalive sweep, and when a connection ends)",
    counter deliveries_total: "Frames queued to subscribers by broadcasts",
    counter updates_integrated_total: "Updates integrated into their document (after their relay)",
    counter updates_refused_late_total: "Updates relayed that yrs then refused to integrate (their senders were closed with 1007)",
    counter integration_waits_total: "Times a writer was not read because its document's integration was behind",
    counter link_pauses_total: "Times a linked socket (a Hocuspocus document owned by another shard) was asked not to be read while its document's integration was behind",
    counter messages_refused_total: "Client messages refused (the connection was closed)",
    counter slow_consumer_closes_total: "Connections closed because their outbound buffer filled",
    counter idle_closes_total: "Connections closed for silence past the idle timeout",
    counter message_timeouts_total: "Connections closed because a frame or message stopped arriving",
    counter incomplete_bytes_closes_total: "Connections closed because the node held too many bytes of incomplete messages",
    counter panics_total: "Panics caught in one connection's work (admission, messages, its end, the keepalive sweep); each ended only that connection",
    counter http_requests_total: "Plain HTTP requests answered",
    counter token_cache_hits_total: "Tokens admitted from the shard's cache of verified tokens, without a signature check",
    counter tls_handshakes_total: "TLS handshakes completed",
    counter tls_handshakes_failed_total: "TLS handshakes that failed or did not finish within http.request_timeout_ms (the connection was dropped)",
}

/// Close codes and HTTP statuses counted in `wiresocket_rejections_total`: every code a
/// refusal can carry.
use crate::refusal::CODES as REJECTION_CODES;

/// One counter per code in [`REJECTION_CODES`] (more than `Default` covers for arrays).
#[derive(Debug)]
pub struct Rejections([AtomicU64; REJECTION_CODES.len()]);

impl Default for Rejections {
    fn default() -> Self {
        Rejections(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl ShardStats {
    /// Counts a refusal (a close code other than 1000, or an HTTP status of 400 or more).
    pub fn count_rejection(&self, code: u16) {
        if let Some(i) = REJECTION_CODES.iter().position(|&c| c == code) {
            self.rejections.0[i].fetch_add(1, Relaxed);
        }
    }

    pub fn observe_handshake(&self, elapsed: std::time::Duration) {
        self.handshakes_total.fetch_add(1, Relaxed);
        self.handshake_us_total
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

fn render_rejections(out: &mut String, shards: &[ShardStats]) {
    let _ = writeln!(
        out,
        "# HELP wiresocket_rejections_total Refusals by WebSocket close code or HTTP status"
    );
    let _ = writeln!(out, "# TYPE wiresocket_rejections_total counter");
    for (i, code) in REJECTION_CODES.iter().enumerate() {
        let total: u64 = shards.iter().map(|s| s.rejections.0[i].load(Relaxed)).sum();
        let _ = writeln!(
            out,
            "wiresocket_rejections_total{{code=\"{code}\"}} {total}"
        );
    }
}

fn render_handshakes(out: &mut String, shards: &[ShardStats]) {
    let count: u64 = shards
        .iter()
        .map(|s| s.handshakes_total.load(Relaxed))
        .sum();
    let us: u64 = shards
        .iter()
        .map(|s| s.handshake_us_total.load(Relaxed))
        .sum();
    let _ = writeln!(
        out,
        "# HELP wiresocket_handshake_seconds Time from a whole request head to the 101"
    );
    let _ = writeln!(out, "# TYPE wiresocket_handshake_seconds summary");
    let _ = writeln!(out, "wiresocket_handshake_seconds_sum {}", us as f64 / 1e6);
    let _ = writeln!(out, "wiresocket_handshake_seconds_count {count}");
}

/// Every metric: the shards', the webhooks' and the authorization callbacks'.
pub fn render_all(shards: &[ShardStats], webhooks: &crate::webhook::Webhooks) -> String {
    let mut text = ShardStats::render(shards);
    render_webhooks(&mut text, &webhooks.stats());
    render_authorize(&mut text, &webhooks.authorize_stats());
    text
}

/// One metric per app: its name (after `wiresocket_`), type, help and value.
type PerApp<'a, S> = (&'a str, &'a str, &'a str, fn(&S) -> f64);

/// The webhook counts of every app with a webhook (PRODUCT.md 9.1).
pub fn render_webhooks(out: &mut String, apps: &[(String, crate::webhook::delivery::AppStats)]) {
    let metrics: [PerApp<crate::webhook::delivery::AppStats>; 7] = [
        (
            "webhook_delivered_total",
            "counter",
            "Events an app's receiver accepted (2xx)",
            |s| s.delivered as f64,
        ),
        (
            "webhook_failed_attempts_total",
            "counter",
            "Attempts that got no 2xx (each is retried)",
            |s| s.failed_attempts as f64,
        ),
        (
            "webhook_dropped_total",
            "counter",
            "Events refused because the app's queue was full",
            |s| s.dropped as f64,
        ),
        (
            "webhook_given_up_total",
            "counter",
            "Events retried for webhooks.retry_for_s without a 2xx",
            |s| s.given_up as f64,
        ),
        (
            "webhook_queued",
            "gauge",
            "Events waiting to be delivered",
            |s| s.queued as f64,
        ),
        (
            "webhook_queued_bytes",
            "gauge",
            "Bytes of event bodies waiting to be delivered",
            |s| s.queued_bytes as f64,
        ),
        (
            "webhook_oldest_seconds",
            "gauge",
            "Age of the oldest event waiting to be delivered",
            |s| s.oldest_ms as f64 / 1e3,
        ),
    ];
    render_per_app(out, &metrics, apps);
}

/// The authorization callbacks' counts of every app that has one (PRODUCT.md 9.4).
pub fn render_authorize(
    out: &mut String,
    apps: &[(String, crate::webhook::authorize::AuthorizeStats)],
) {
    let metrics: [PerApp<crate::webhook::authorize::AuthorizeStats>; 5] = [
        (
            "authorize_calls_total",
            "counter",
            "Calls made to an app's authorization callback",
            |s| s.calls as f64,
        ),
        (
            "authorize_cached_total",
            "counter",
            "Admissions decided by a kept answer or another admission's call",
            |s| s.cached as f64,
        ),
        (
            "authorize_denied_total",
            "counter",
            "Calls the app answered with allow: false",
            |s| s.denied as f64,
        ),
        (
            "authorize_errors_total",
            "counter",
            "Calls without a decision (no answer in time, 5xx, malformed, not made): their connections got 1013",
            |s| s.errors as f64,
        ),
        (
            "authorize_seconds_total",
            "counter",
            "Time the calls took (divided by authorize_calls_total: the mean latency)",
            |s| s.seconds_total,
        ),
    ];
    render_per_app(out, &metrics, apps);
}

fn render_per_app<S>(out: &mut String, metrics: &[PerApp<'_, S>], apps: &[(String, S)]) {
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP wiresocket_{name} {help}");
        let _ = writeln!(out, "# TYPE wiresocket_{name} {kind}");
        for (app, stats) in apps {
            let app = app
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(out, "wiresocket_{name}{{app=\"{app}\"}} {}", value(stats));
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

pub fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}

/// Resident memory of a process (`"self"` or a pid), from `/proc/{process}/statm`; `None`
/// if there is no such process. The overload check reads its own; the load generator and
/// the tests read a server's.
pub fn resident_bytes(process: &str) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{process}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_of_this_process_and_of_no_process() {
        let own = super::resident_bytes("self").unwrap();
        assert!(own > 1 << 20, "{own} bytes");
        assert_eq!(super::resident_bytes(&u32::MAX.to_string()), None);
    }

    use super::*;

    #[test]
    fn renders_every_shard() {
        let shards = [ShardStats::default(), ShardStats::default()];
        add(&shards[1].connections, 3);
        let text = ShardStats::render(&shards);
        assert!(text.contains("# TYPE wiresocket_connections gauge\n"));
        assert!(text.contains("wiresocket_connections{shard=\"0\"} 0\n"));
        assert!(text.contains("wiresocket_connections{shard=\"1\"} 3\n"));
        assert!(text.contains("# TYPE wiresocket_deliveries_total counter\n"));
        shards[0].count_rejection(4004);
        shards[1].count_rejection(4004);
        shards[1].count_rejection(429);
        shards[1].count_rejection(1000);
        shards[0].observe_handshake(std::time::Duration::from_millis(2));
        let text = ShardStats::render(&shards);
        assert!(text.contains("wiresocket_rejections_total{code=\"4004\"} 2\n"));
        assert!(text.contains("wiresocket_rejections_total{code=\"429\"} 1\n"));
        assert!(text.contains("wiresocket_handshake_seconds_sum 0.002\n"));
        assert!(text.contains("wiresocket_handshake_seconds_count 1\n"));
    }
}
