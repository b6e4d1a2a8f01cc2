//! The load generator against a real wiresocket node (in this process): a small fan-out run
//! converges and reports every delivery; a refused connection makes the run fail.

use std::process::Command;
use std::sync::Arc;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;
use wiresocket::registry::{embedded::EmbeddedRegistry, Registry};

fn node() -> wiresocket::server::Node {
    let toml =
        "listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n[rate_limits]\nhandshakes_per_minute = 100000\n";
    let config = Config::from_toml(toml, "test").unwrap();
    let registry = Arc::new(EmbeddedRegistry::new(10_000)) as Arc<dyn Registry>;
    wiresocket::server::start(config, registry).unwrap()
}

/// How a run reaches the node: a development token, or none (to be refused).
enum Auth {
    Token,
    None,
}

/// Runs `wiresocket-load MODE` against `node` (this process is the server) with `args`;
/// returns whether it succeeded and its JSON report.
fn load(
    node: &wiresocket::server::Node,
    auth: Auth,
    mode: &str,
    args: &[&str],
) -> (bool, serde_json::Value) {
    let url = match auth {
        Auth::Token => {
            let directory = Directory::from_config(&Config::default()).unwrap();
            let token = directory
                .mint("dev", "load-test", 600, serde_json::Value::Null)
                .unwrap();
            format!("ws://{}/{{doc}}?token={token}", node.addr)
        }
        Auth::None => format!("ws://{}/{{doc}}", node.addr),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_wiresocket-load"))
        .args([mode, "--url", &url, "--server-pid"])
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

#[test]
fn a_fanout_run_delivers_every_update_and_converges() {
    let (ok, report) = load(
        &node(),
        Auth::Token,
        "fanout",
        &[
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
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(report["connected"], 24);
    let sent = report["updates_sent"].as_u64().unwrap();
    // 24 clients x 20/s x 1 s, give or take the edges of the second.
    assert!((400..=500).contains(&sent), "{report}");
    // Each update reaches the 3 other clients of its document.
    assert_eq!(report["deliveries"].as_u64().unwrap(), sent * 3, "{report}");
    assert_eq!(report["expected_deliveries"], report["deliveries"]);
    assert!(report["p99_us"].as_u64().unwrap() > 0);
    assert!(report["server_cpu_s"].as_f64().is_some());
    // The floor was measured, and the server's cost set beside it.
    assert!(
        report["floor_send_us"].as_f64().is_some_and(|us| us > 0.0),
        "{report}"
    );
    assert!(
        report["of_floor"].as_f64().is_some_and(|f| f > 0.0),
        "{report}"
    );
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
