//! The load generator against a real wiresocket node (in this process): a small fan-out run
//! converges and reports every delivery, in each mode (fanout, prepend, storm); a refused
//! connection makes the run fail.

use std::process::Command;
use std::sync::Arc;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;
use wiresocket::registry::{embedded::EmbeddedRegistry, Registry};

fn node() -> wiresocket::server::Node {
    node_with("")
}

/// A node with `extra` configuration (a `[tls]` section) too.
fn node_with(extra: &str) -> wiresocket::server::Node {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n{extra}\n[rate_limits]\nhandshakes_per_minute = 100000\n"
    );
    let config = Config::from_toml(&toml, "test").unwrap();
    let registry = Arc::new(EmbeddedRegistry::new(10_000)) as Arc<dyn Registry>;
    wiresocket::server::start(config, registry).unwrap()
}

/// How a run reaches the node: a development token, or none (to be refused); over TLS with
/// the test CA.
enum Auth {
    Token,
    None,
    TlsToken,
}

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/tls");

fn dev_token() -> String {
    let directory = Directory::from_config(&Config::default()).unwrap();
    directory
        .mint("dev", "load-test", 600, serde_json::Value::Null)
        .unwrap()
}

/// Runs `wiresocket-load MODE` against `node` (this process is the server) with `args`;
/// returns whether it succeeded and its JSON report.
fn load(
    node: &wiresocket::server::Node,
    auth: Auth,
    mode: &str,
    args: &[&str],
) -> (bool, serde_json::Value) {
    let (url, ca) = match auth {
        Auth::Token => (
            format!("ws://{}/{{doc}}?token={}", node.addr, dev_token()),
            None,
        ),
        Auth::None => (format!("ws://{}/{{doc}}", node.addr), None),
        Auth::TlsToken => (
            format!("wss://{}/{{doc}}?token={}", node.addr, dev_token()),
            Some(format!("{TLS_DIR}/ca.pem")),
        ),
    };
    let ca_args = ca.map(|ca| vec!["--ca".to_owned(), ca]).unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_wiresocket-load"))
        .args([mode, "--url", &url])
        .args(&ca_args)
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .args(args)
        .arg("--json")
        .output()
        .expect("run wiresocket-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no report; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), serde_json::from_str(line).unwrap())
}

/// 6 documents of 4 clients, each sending 20 updates a second for a second.
const SMALL_FANOUT: [&str; 12] = [
    "--docs",
    "6",
    "--clients",
    "4",
    "--rate",
    "20",
    "--duration-s",
    "1",
    "--threads",
    "2",
    "--floor-sends",
    "2000",
];

/// The updates a [`SMALL_FANOUT`] run sent, after checking that all 24 clients connected,
/// that about as many as planned were sent, and that each reached the 3 other clients of
/// its document.
fn every_update_delivered(ok: bool, report: &serde_json::Value) -> u64 {
    assert!(ok, "{report}");
    assert_eq!(report["connected"], 24);
    let sent = report["updates_sent"].as_u64().unwrap();
    // 24 clients x 20/s x 1 s, give or take the edges of the second.
    assert!((400..=500).contains(&sent), "{report}");
    assert_eq!(report["deliveries"].as_u64().unwrap(), sent * 3, "{report}");
    assert_eq!(report["expected_deliveries"], report["deliveries"]);
    assert_eq!(report["failures"], serde_json::json!([]));
    sent
}

#[test]
fn a_fanout_run_delivers_every_update_and_converges() {
    let (ok, report) = load(&node(), Auth::Token, "fanout", &SMALL_FANOUT);
    every_update_delivered(ok, &report);
    assert!(report["p99_us"].as_u64().unwrap() > 0);
    assert!(report["server_cpu_s"].as_f64().is_some());
    // The floors were measured, and the server's cost set beside each.
    for (floor, of) in [
        ("floor_send_us", "of_floor"),
        ("epoll_relay_floor_us", "of_epoll_relay_floor"),
        ("glommio_relay_floor_us", "of_glommio_relay_floor"),
    ] {
        assert!(
            report[floor].as_f64().is_some_and(|us| us > 0.0),
            "{floor}: {report}"
        );
        assert!(
            report[of].as_f64().is_some_and(|f| f > 0.0),
            "{of}: {report}"
        );
    }
}

#[test]
fn a_fanout_run_over_wss_delivers_every_update_and_converges() {
    let tls = format!(
        "[tls]\ncert_file = \"{TLS_DIR}/server.pem\"\nkey_file = \"{TLS_DIR}/server.key\"\n"
    );
    let (ok, report) = load(&node_with(&tls), Auth::TlsToken, "fanout", &SMALL_FANOUT);
    every_update_delivered(ok, &report);
}

#[test]
fn hocuspocus_clients_deliver_every_update_and_converge() {
    let (ok, report) = load(
        &node(),
        Auth::Token,
        "fanout",
        &[
            "--framing",
            "hocuspocus",
            "--docs",
            "4",
            "--clients",
            "3",
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--apply-live",
            "--floor-sends",
            "0",
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(report["framing"], "hocuspocus");
    assert_eq!(report["connected"], 12);
    let sent = report["updates_sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["deliveries"].as_u64().unwrap(), sent * 2, "{report}");
    assert_eq!(report["failures"], serde_json::json!([]));
}

#[test]
fn capacity_counts_idle_connections_and_their_memory() {
    let (ok, report) = load(
        &node(),
        Auth::Token,
        "capacity",
        &["--connections", "200", "--sources", "3"],
    );
    assert!(ok, "{report}");
    assert_eq!(report["connected"], 200);
    assert!(
        report["rss_per_connection_bytes"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn refused_connections_fail_the_run() {
    // No token: the server completes the upgrade and closes with 4001.
    let (ok, report) = load(
        &node(),
        Auth::None,
        "fanout",
        &[
            "--docs",
            "2",
            "--clients",
            "2",
            "--duration-s",
            "0.2",
            "--floor-sends",
            "0",
        ],
    );
    assert!(!ok, "{report}");
    assert_eq!(report["connected"], 0);
    let failures = report["failures"].to_string();
    assert!(failures.contains("4 connections failed"), "{failures}");
    assert!(failures.contains("4001"), "{failures}");
}

#[test]
fn burst_phases_with_random_live_inserts_converge() {
    let (ok, report) = load(
        &node(),
        Auth::Token,
        "fanout",
        &[
            "--docs",
            "3",
            "--clients",
            "3",
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--phases",
            "burst",
            "--insert",
            "random",
            "--apply-live",
            "--floor-sends",
            "0",
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(
        (&report["phases"], &report["insert"], &report["apply_live"]),
        (
            &serde_json::json!("burst"),
            &serde_json::json!("random"),
            &serde_json::json!(true)
        )
    );
    let sent = report["updates_sent"].as_u64().unwrap();
    assert_eq!(report["deliveries"].as_u64().unwrap(), sent * 2, "{report}");
}

#[test]
fn a_prepend_run_converges_and_reports_what_each_writer_had() {
    let (ok, report) = load(
        &node(),
        Auth::Token,
        "prepend",
        &[
            "--clients",
            "2",
            "--rate",
            "50",
            "--duration-s",
            "1",
            "--floor-sends",
            "0",
        ],
    );
    assert!(ok, "{report}");
    // prepend's own defaults, where not overridden.
    assert_eq!(report["mode"], "prepend");
    assert_eq!(report["docs"], 1);
    assert_eq!(report["update_bytes"], 1024);
    assert_eq!(report["insert"], "start");
    assert_eq!(report["apply_live"], true);
    let sent = report["updates_sent"].as_u64().unwrap();
    assert!((90..=110).contains(&sent), "{report}");
    assert_eq!(report["deliveries"].as_u64().unwrap(), sent, "{report}");
    let share = |when: &str, of: &str| report[when][of].as_f64().unwrap();
    // Everything arrived by the end of the drain; at most that much when sending ended.
    assert_eq!(share("received_share_after_drain", "min"), 1.0, "{report}");
    assert_eq!(share("received_share_after_drain", "mean"), 1.0, "{report}");
    let (end_min, end_mean) = (
        share("received_share_at_send_end", "min"),
        share("received_share_at_send_end", "mean"),
    );
    assert!(
        0.0 < end_min && end_min <= end_mean && end_mean <= 1.0,
        "{report}"
    );
    // RSS was sampled while sending: its maximum is at least what it was at either end.
    let kib = |key: &str| report[key].as_u64().unwrap();
    assert!(kib("rss_max_kib") >= kib("rss_connected_kib").max(kib("rss_end_kib")));
}

#[test]
fn a_storm_run_reports_latency_around_the_storm_and_its_connections() {
    let node = node();
    let tokens = std::env::temp_dir().join(format!("storm-tokens-{}", std::process::id()));
    std::fs::write(&tokens, format!("{}\n{}\n", dev_token(), dev_token())).unwrap();
    let storm_url = format!("ws://{}/{{doc}}?token={{token}}", node.addr);
    let (ok, report) = load(
        &node,
        Auth::Token,
        "storm",
        &[
            "--docs",
            "4",
            "--clients",
            "2",
            "--rate",
            "20",
            // A debug-build node next to the other tests' runs connects slowly: 30
            // connections take about a second, well within the 2.5 s after the warm-up.
            "--duration-s",
            "3",
            "--warmup-s",
            "0.5",
            "--storm",
            "30",
            "--storm-url",
            &storm_url,
            "--storm-tokens",
            tokens.to_str().unwrap(),
            "--floor-sends",
            "0",
            "--arrival-stamps",
        ],
    );
    std::fs::remove_file(&tokens).unwrap();
    assert!(ok, "{report}");
    let storm = &report["storm"];
    assert_eq!(storm["connections"], 30, "{report}");
    assert_eq!(storm["connected"], 30, "{report}");
    assert_eq!(storm["failed"], 0, "{report}");
    assert!(storm["connect_per_s"].as_f64().unwrap() > 0.0, "{report}");
    // Every delivery falls in exactly one group; traffic ran on both sides of the storm.
    let group = |key: &str| report[key]["deliveries"].as_u64().unwrap();
    let (before, during, after) = (
        group("latency_before_storm_us"),
        group("latency_during_storm_us"),
        group("latency_after_storm_us"),
    );
    assert_eq!(
        before + during + after,
        report["deliveries"].as_u64().unwrap()
    );
    assert!(before > 0 && after > 0, "{report}");
    for key in ["latency_before_storm_us", "latency_after_storm_us"] {
        let g = &report[key];
        assert!(
            g["p50"].as_u64().unwrap() <= g["p99"].as_u64().unwrap(),
            "{report}"
        );
        assert!(
            g["p99"].as_u64().unwrap() <= g["max"].as_u64().unwrap(),
            "{report}"
        );
    }
    // Timed to the kernel's stamp too: a delivery arrives before it is read, so no group's
    // worst is later at arrival than at the read. (The kernel starts stamping a moment
    // after it is asked to, so the first deliveries may go unstamped.)
    let mut stamped = 0;
    for when in ["before", "during", "after"] {
        let (read, arrival) = (
            &report[format!("latency_{when}_storm_us")],
            &report[format!("latency_{when}_storm_at_arrival_us")],
        );
        let count = arrival["deliveries"].as_u64().unwrap();
        assert!(count <= read["deliveries"].as_u64().unwrap(), "{report}");
        if count > 0 {
            assert!(
                arrival["max"].as_u64().unwrap() <= read["max"].as_u64().unwrap(),
                "{report}"
            );
        }
        stamped += count;
    }
    assert!(stamped > 0, "no delivery was stamped: {report}");
    assert_eq!(report["failures"], serde_json::json!([]));
}
