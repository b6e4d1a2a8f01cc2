//! Per-shard counters: written only by their own shard (relaxed atomics, no contention), read
//! by whichever shard renders `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! shard_stats {
    ($( $(#[$doc:meta])* $kind:ident $name:ident : $help:literal ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
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
                out
            }
        }
    };
}

shard_stats! {
    gauge connections: "Open WebSocket connections on documents owned by the shard",
    gauge documents: "Documents in memory on the shard (grace period included)",
    counter connections_accepted_total: "TCP connections accepted by the shard",
    counter handoffs_total: "Connections handed to this shard by the shard that accepted them",
    counter messages_in_total: "WebSocket messages received",
    counter bytes_in_total: "Bytes received on WebSocket connections",
    counter bytes_out_total: "Bytes written to WebSocket connections",
    counter deliveries_total: "Frames queued to subscribers by broadcasts",
    counter messages_refused_total: "Client messages refused (the connection was closed)",
    counter slow_consumer_closes_total: "Connections closed because their outbound buffer filled",
    counter idle_closes_total: "Connections closed for silence past the idle timeout",
    counter panics_total: "Panics caught while handling one connection's message",
    counter http_requests_total: "Plain HTTP requests answered",
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

#[cfg(test)]
mod tests {
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
    }
}
