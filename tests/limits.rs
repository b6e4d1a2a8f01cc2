//! Plan and token limits at their enforcement points, with the exact close reasons, and
//! counts that never leak.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;

fn config_toml(plan: &str, grace_ms: u64) -> String {
    format!(
        r#"
[documents]
grace_period_ms = {grace_ms}
{tenant}
[[apps]]
id = "web"
tenant = "acme"
plan = {{ {plan} }}
"#,
        tenant = acme_eddsa_tenant()
    )
}

struct Limited {
    server: Server,
    directory: Directory,
}

impl Limited {
    fn start(plan: &str, grace_ms: u64) -> Limited {
        let toml = config_toml(plan, grace_ms);
        let directory = Directory::from_config(&Config::from_toml(&toml, "test").unwrap()).unwrap();
        Limited {
            server: Server::start(&toml),
            directory,
        }
    }

    fn token(&self, extra: serde_json::Value) -> String {
        self.directory.mint("web", "test", 600, extra).unwrap()
    }

    fn open(&self, doc: &str) -> Ws {
        let mut ws = connect_raw(
            &self.server.addr,
            &format!("/{doc}?token={}", self.token(serde_json::Value::Null)),
        );
        // Admitted connections get sync step 1 first; refused ones a close frame.
        match ws.read().unwrap() {
            tungstenite::Message::Binary(_) => ws,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn refused(&self, doc: &str, extra: serde_json::Value) -> (u16, String) {
        let mut ws = connect_raw(
            &self.server.addr,
            &format!("/{doc}?token={}", self.token(extra)),
        );
        expect_close(&mut ws)
    }
}

#[test]
fn max_connections_refuses_only_the_new_connection_and_is_released_on_close() {
    let l = Limited::start("max_connections = 2", 10_000);
    let a = l.open("d1");
    let _b = l.open("d2");
    assert_eq!(
        l.refused("d3", serde_json::Value::Null),
        (4004, "Connection limit exceeded: 2".into())
    );
    drop(a);
    l.server.wait_for(
        "the closed connection to be released",
        Duration::from_secs(10),
        |s| s.metric("connections").0 == 1,
    );
    let _c = l.open("d1");
    // A token's own limit is stricter than the plan.
    assert_eq!(
        l.refused("d4", json!({"limits": {"maxConnections": 1}})),
        (4004, "Connection limit exceeded: 1".into())
    );
    let metrics = l.server.get("/metrics");
    assert!(
        metrics.contains("wiresocket_rejections_total{code=\"4004\"} 2\n"),
        "{metrics}"
    );
}

#[test]
fn max_documents_counts_sessions_through_their_grace_period() {
    // A grace period long enough that a loaded machine's handshake still falls inside it.
    let l = Limited::start("max_documents = 1", 3_000);
    let a = l.open("first");
    let _a2 = l.open("first");
    assert_eq!(
        l.refused("second", serde_json::Value::Null),
        (4005, "Document limit exceeded: 1 (active: 1)".into())
    );
    drop(a);
    drop(_a2);
    // Still in its grace period: still counted.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(l.refused("second", serde_json::Value::Null).0, 4005);
    l.server
        .wait_for("the grace period to end", Duration::from_secs(10), |s| {
            s.metric("documents").0 == 0
        });
    let _b = l.open("second");
}

#[test]
fn max_users_per_doc_is_per_document() {
    let l = Limited::start("max_users_per_doc = 2", 10_000);
    let _a = l.open("room");
    let _b = l.open("room");
    assert_eq!(
        l.refused("room", serde_json::Value::Null),
        (4008, "Document user limit exceeded: 2".into())
    );
    let _other = l.open("other-room");
}

#[test]
fn ops_per_minute_closes_the_session_that_exceeds_it() {
    let l = Limited::start("ops_per_minute = 5", 10_000);
    let ws = connect_raw(
        &l.server.addr,
        &format!("/busy?token={}", l.token(serde_json::Value::Null)),
    );
    let mut writer = YClient::from_ws(ws, 1);
    let mut watcher = YClient::from_ws(l.open("busy"), 2);
    for i in 0..5 {
        writer.insert(0, &i.to_string());
    }
    assert!(watcher.pump_until(Duration::from_secs(10), |c| c.text().len() == 5));
    writer.insert(0, "x");
    assert_eq!(
        expect_close(&mut writer.ws),
        (4006, "Rate limit exceeded: 5 ops/min".into())
    );
    // The update over the limit was not applied; the watcher stays connected.
    assert!(!watcher.pump_until(Duration::from_millis(300), |c| c.text().len() > 5));
}

#[test]
fn counts_return_to_zero_after_churn() {
    let l = Limited::start("max_connections = 3, max_users_per_doc = 2", 200);
    for round in 0..10 {
        let doc = format!("churn-{}", round % 2);
        let a = l.open(&doc);
        let b = l.open(&doc);
        assert_eq!(l.refused(&doc, serde_json::Value::Null).0, 4008);
        let c = l.open("churn-x");
        assert_eq!(l.refused("churn-y", serde_json::Value::Null).0, 4004);
        drop((a, b, c));
    }
    l.server.wait_for(
        "all connections and documents released",
        Duration::from_secs(10),
        |s| s.metric("connections").0 == 0 && s.metric("documents").0 == 0,
    );
    // Exactly the limit is available again.
    let held: Vec<Ws> = (0..3).map(|i| l.open(&format!("after-{i}"))).collect();
    assert_eq!(l.refused("after-9", serde_json::Value::Null).0, 4004);
    drop(held);
}

/// Idle connections are what a sync server holds most of: each costs at most 4 KiB of
/// server memory, documents included (8 clients per document, as in the load generator's
/// capacity runs; BENCHMARKS.md has the 19,904-connection measurement).
#[test]
fn idle_document_connections_cost_at_most_4_kib_each() {
    const CONNECTIONS: usize = 3000;
    let server = Server::start_with("", &["--shards", "1"]);
    // Warm up the allocator and the shard's maps before the baseline.
    let warm: Vec<Ws> = (0..64)
        .map(|i| connect(&server.addr, &format!("/warm-{}", i / 8)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_kib();
    let idle: Vec<Ws> = (0..CONNECTIONS)
        .map(|i| connect(&server.addr, &format!("/idle-{}", i / 8)))
        .collect();
    server.wait_for("every connection is open", Duration::from_secs(10), |s| {
        s.metric("connections").0 as usize == CONNECTIONS + warm.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let per_connection = (server.rss_kib() - before) * 1024 / CONNECTIONS as u64;
    assert!(
        per_connection <= 4096,
        "{per_connection} bytes of server memory per idle connection"
    );
    drop(idle);
}

/// At the open-file limit a node refuses upgrades with 503 and says it is overloaded, while
/// it still has descriptors to answer with, instead of leaving clients in the backlog.
#[test]
fn the_open_file_limit_refuses_upgrades_with_503() {
    // 64 descriptors are kept back from connections: 136 connections fit in 200.
    const OPEN_FILES: u64 = 200;
    const CONNECTIONS: usize = 136;
    let server = Server::start_with_open_files("", OPEN_FILES);
    let open: Vec<Ws> = (0..CONNECTIONS)
        .map(|i| connect(&server.addr, &format!("/fd-{}", i / 8)))
        .collect();
    server.wait_for("every connection is open", Duration::from_secs(10), |s| {
        s.metric("connections").0 as usize == CONNECTIONS
    });
    let refused = server.http_head(&format!(
        "GET /one-more?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        editor_token()
    ));
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(refused.contains("Retry-After:"), "{refused}");
    let health = server.get("/health");
    assert_eq!(status(&health), 503, "{health}");
    assert!(health.contains("overloaded"), "{health}");
    // When they leave, clients get in again.
    drop(open);
    server.wait_for("the connections closed", Duration::from_secs(10), |s| {
        s.metric("connections").0 == 0
    });
    let mut again = connect(&server.addr, "/one-more");
    again.close(None).unwrap();
}

/// Sockets still in admission count against the open-file guard: a flood of requests that
/// never send their body makes the node answer 503, first to upgrades (after their head),
/// then, with half the reserve gone too, to every new socket at once, instead of running out
/// of descriptors; at the deadline the flood gets 408 and the node recovers.
#[test]
fn half_open_requests_count_against_the_open_file_guard() {
    use std::io::{Read, Write};
    // 200 files less 64 kept back: 136 client sockets pass the guard; past 136 + 32 each new
    // socket is answered at once.
    const OPEN_FILES: u64 = 200;
    const GUARD: usize = 136;
    const RESERVE_HALF: usize = 32;
    let server = Server::start_with_open_files("[http]\nrequest_timeout_ms = 6000\n", OPEN_FILES);
    let half_open = || {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
            .unwrap();
        s
    };
    let mut flood: Vec<_> = (0..GUARD).map(|_| half_open()).collect();
    // The /metrics request is an admission too.
    server.wait_for(
        "the flood to be in admission",
        Duration::from_secs(3),
        |s| s.metric("admissions").0 as usize == GUARD + 1,
    );
    let refused = server.http_head(&format!(
        "GET /flooded?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        editor_token()
    ));
    assert_eq!(status(&refused), 503, "{refused}");
    let health = server.get("/health");
    assert!(
        status(&health) == 503 && health.contains("\"overloaded\""),
        "{health}"
    );
    flood.extend((0..RESERVE_HALF).map(|_| half_open()));
    server.wait_for(
        "new sockets to be refused at once",
        Duration::from_secs(3),
        |s| {
            let r = s.get("/metrics");
            status(&r) == 503 && r.contains("out of connections")
        },
    );
    // A socket that sends nothing is answered without waiting for its request.
    let mut silent = std::net::TcpStream::connect(&server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = String::new();
    silent.read_to_string(&mut answer).unwrap();
    assert_eq!(status(&answer), 503, "{answer}");
    // At the deadline the half-open requests are answered 408 and closed.
    let mut timed_out = String::new();
    flood[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    flood[0].read_to_string(&mut timed_out).unwrap();
    assert_eq!(status(&timed_out), 408, "{timed_out}");
    server.wait_for("the node to recover", Duration::from_secs(10), |s| {
        status(&s.get("/health")) == 200 && s.metric("admissions").0 == 1
    });
    drop(flood);
}
