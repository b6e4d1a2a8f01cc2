//! Several nodes, in one process, over one embedded registry: pinning, 4009 redirects,
//! discovery, pins released after the grace period, stale-node takeover and global limits.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use wiresocket::config::Config;
use wiresocket::registry::embedded::EmbeddedRegistry;
use wiresocket::registry::{NodeInfo, Registry};

const STALE_MS: u64 = 2_000;

fn node(id: &str, region: &str, registry: &Arc<EmbeddedRegistry>) -> wiresocket::server::Node {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n[documents]\ngrace_period_ms = 300\n[node]\nid = \"{id}\"\nregion = \"{region}\"\nheartbeat_interval_ms = 200\nheartbeat_stale_ms = {STALE_MS}\n[rate_limits]\nhandshakes_per_minute = 100000\n"
    );
    let config = Config::from_toml(&toml, "test").unwrap();
    wiresocket::server::start(config, registry.clone() as Arc<dyn Registry>).unwrap()
}

fn get(addr: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        editor_token()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test, several phases: every node's shards lock memory for io_uring, and the process
/// limit allows only a few executors.
#[test]
fn nodes_share_documents_through_the_registry() {
    let registry = Arc::new(EmbeddedRegistry::new(STALE_MS));
    let a = node("a", "eu-central-1", &registry);
    let b = node("b", "us-east-1", &registry);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());

    // Discovery before: nobody has the document; each node offers itself.
    let d = get(&b_addr, "/discovery?documentName=plan");
    assert_eq!(d["isNew"], true);
    assert_eq!(d["region"], "us-east-1");
    assert_eq!(d["url"], format!("ws://{b_addr}/plan"));

    // The first connection pins the document to its node.
    let mut home = YClient::connect(&a_addr, "plan", 1);
    home.insert(0, "pinned at a");
    let mut elsewhere = connect(&b_addr, "/plan");
    assert_eq!(
        expect_close(&mut elsewhere),
        (4009, format!("REDIRECT:ws://{a_addr}/plan"))
    );
    let d = get(&b_addr, "/discovery?documentName=plan");
    assert_eq!(
        (d["isNew"].as_bool(), d["region"].as_str()),
        (Some(false), Some("eu-central-1"))
    );
    assert_eq!(d["url"], format!("ws://{a_addr}/plan"));
    assert_eq!(
        get(&a_addr, "/discovery")
            .get("error")
            .and_then(|e| e.as_str()),
        Some("invalid_request")
    );

    // Following the redirect reaches the same document.
    let mut follower = YClient::connect(&a_addr, "plan", 2);
    assert!(follower.pump_until(Duration::from_secs(5), |c| c.text() == "pinned at a"));

    // The pin ends with the grace period; the next first connection pins it elsewhere.
    drop(home);
    drop(follower);
    wait("the pin to be released", || {
        get(&b_addr, "/discovery?documentName=plan")["isNew"] == true
    });
    let _moved = YClient::connect(&b_addr, "plan", 3);
    wait("the pin to move to b", || {
        get(&a_addr, "/discovery?documentName=plan")["region"] == "us-east-1"
    });
    let mut now_elsewhere = connect(&a_addr, "/plan");
    assert_eq!(
        expect_close(&mut now_elsewhere),
        (4009, format!("REDIRECT:ws://{b_addr}/plan"))
    );

    // A node that stopped heartbeating without cleaning up: its pin is taken over and its
    // counts released.
    let ghost = NodeInfo {
        id: "ghost".into(),
        region: "ap-south-1".into(),
        url: "ws://ghost.invalid".into(),
    };
    let long_ago = wiresocket::log::unix_ms() - 10 * STALE_MS;
    let key = "dev::dev::haunted";
    futures_lite::future::block_on(registry.claim(key, "dev::dev", &ghost, None, long_ago))
        .unwrap();
    futures_lite::future::block_on(registry.acquire_connection("dev::dev", &ghost, None, long_ago))
        .unwrap()
        .unwrap();
    let mut taken = connect(&a_addr, "/haunted");
    assert!(
        matches!(taken.read().unwrap(), tungstenite::Message::Binary(_)),
        "took the stale pin over"
    );
    let usage = get(&a_addr, "/usage");
    assert_eq!(
        usage["usage"]["connections"]["current"], 2,
        "the ghost's connection no longer counts: {usage}"
    );

    // Limits are global: a connection on each node counts against one maxConnections.
    let limited = dev_token(serde_json::json!({"limits": {"maxConnections": 3}}));
    let mut third = connect_raw(&b_addr, &format!("/other?token={limited}"));
    assert!(matches!(
        third.read().unwrap(),
        tungstenite::Message::Binary(_)
    ));
    let mut fourth = connect_raw(&a_addr, &format!("/other2?token={limited}"));
    assert_eq!(
        expect_close(&mut fourth),
        (4004, "Connection limit exceeded: 3".into())
    );

    // A revocation written to the shared registry (as node a's admin listener writes it)
    // reaches node b within one heartbeat (200 ms): its session of the app is closed, and
    // a new one refused.
    third
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let revoked = wiresocket::registry::Revocation::App("dev::dev".into());
    let started = std::time::Instant::now();
    futures_lite::future::block_on(registry.revoke(&revoked)).unwrap();
    assert_eq!(
        expect_close(&mut third),
        (4003, "Forbidden: app revoked".into())
    );
    assert!(
        started.elapsed() < Duration::from_millis(200 + 2 * 50 + 300),
        "seen after {:?}",
        started.elapsed()
    );
    let mut refused = connect(&b_addr, "/after-revocation");
    assert_eq!(
        expect_close(&mut refused),
        (4003, "Forbidden: app revoked".into())
    );
}

/// A registry whose answers a test controls: pass through, fail, or never answer.
struct Faulty {
    inner: EmbeddedRegistry,
    mode: std::sync::atomic::AtomicU8,
}

const PASS: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

impl Faulty {
    fn answer<'a, T: 'a>(
        &'a self,
        call: wiresocket::registry::Answer<'a, T>,
    ) -> wiresocket::registry::Answer<'a, T> {
        match self.mode.load(std::sync::atomic::Ordering::SeqCst) {
            PASS => call,
            FAIL => Box::pin(std::future::ready(Err(wiresocket::registry::Unavailable(
                "injected failure".into(),
            )))),
            _ => Box::pin(std::future::pending()),
        }
    }
}

impl Registry for Faulty {
    fn heartbeat<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(String, wiresocket::registry::Usage)],
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.heartbeat(node, held, now_ms))
    }
    fn claim<'a>(
        &'a self,
        d: &'a str,
        app: &'a str,
        node: &'a NodeInfo,
        max: Option<u64>,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, wiresocket::registry::Claim> {
        self.answer(self.inner.claim(d, app, node, max, now_ms))
    }
    fn release<'a>(
        &'a self,
        d: &'a str,
        app: &'a str,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.release(d, app, node, now_ms))
    }
    fn lookup<'a>(
        &'a self,
        d: &'a str,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, Option<NodeInfo>> {
        self.answer(self.inner.lookup(d, now_ms))
    }
    fn acquire_connection<'a>(
        &'a self,
        app: &'a str,
        node: &'a NodeInfo,
        limit: Option<u64>,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, Result<(), wiresocket::registry::Exceeded>> {
        self.answer(self.inner.acquire_connection(app, node, limit, now_ms))
    }
    fn release_connection<'a>(
        &'a self,
        app: &'a str,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.release_connection(app, node, now_ms))
    }
    fn usage<'a>(
        &'a self,
        app: &'a str,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, wiresocket::registry::Usage> {
        self.answer(self.inner.usage(app, now_ms))
    }
    fn revoke<'a>(
        &'a self,
        what: &'a wiresocket::registry::Revocation,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.revoke(what))
    }
    fn restore<'a>(
        &'a self,
        what: &'a wiresocket::registry::Revocation,
    ) -> wiresocket::registry::Answer<'a, bool> {
        self.answer(self.inner.restore(what))
    }
    fn revocations(
        &self,
    ) -> wiresocket::registry::Answer<'_, Vec<wiresocket::registry::Revocation>> {
        self.answer(self.inner.revocations())
    }
    fn set_client_secret<'a>(
        &'a self,
        app: &'a str,
        hash: &'a str,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.set_client_secret(app, hash))
    }
    fn client_secrets(&self) -> wiresocket::registry::Answer<'_, Vec<(String, String)>> {
        self.answer(self.inner.client_secrets())
    }
    fn ops_window(&self, app: &str) -> Arc<wiresocket::registry::rate::MinuteWindow> {
        self.inner.ops_window(app)
    }
    fn sync_ops<'a>(
        &'a self,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> wiresocket::registry::Answer<'a, ()> {
        self.answer(self.inner.sync_ops(node, now_ms))
    }
}

#[test]
fn a_registry_that_fails_or_hangs_never_stalls_live_sessions() {
    let faulty = Arc::new(Faulty {
        inner: EmbeddedRegistry::new(STALE_MS),
        mode: std::sync::atomic::AtomicU8::new(PASS),
    });
    let toml = "listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n[node]\nregistry_timeout_ms = 300\n[rate_limits]\nhandshakes_per_minute = 100000\nusage_per_minute = 100000\n";
    let node = wiresocket::server::start(
        Config::from_toml(toml, "test").unwrap(),
        faulty.clone() as Arc<dyn Registry>,
    )
    .unwrap();
    let addr = node.addr.to_string();
    let mut a = YClient::connect(&addr, "steady", 1);
    let mut b = YClient::connect(&addr, "steady", 2);
    a.insert(0, "before;");
    assert!(b.pump_until(Duration::from_secs(5), |c| c.text() == "before;"));
    let usage_status = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /usage HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            editor_token()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        status(&out)
    };
    for mode in [HANG, FAIL] {
        faulty.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
        // Live sessions go on.
        a.insert(0, "x");
        let expected = b.text().len() + 1;
        assert!(
            b.pump_until(Duration::from_secs(5), |c| c.text().len() == expected),
            "mode {mode}"
        );
        // New upgrades fail fast with 1013; the API answers 503.
        let started = std::time::Instant::now();
        let mut refused = connect(&addr, "/newcomer");
        let (code, reason) = expect_close(&mut refused);
        assert_eq!(code, 1013, "mode {mode}: {reason}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(usage_status(), 503, "mode {mode}");
    }
    faulty.mode.store(PASS, std::sync::atomic::Ordering::SeqCst);
    let mut back = connect(&addr, "/newcomer");
    assert!(matches!(
        back.read().unwrap(),
        tungstenite::Message::Binary(_)
    ));
    assert!(
        a.pump_until(Duration::from_secs(5), |c| c.text() == b.text()),
        "nothing synced was lost"
    );
}

#[test]
fn a_draining_node_hands_its_clients_to_another_node_without_loss() {
    let registry = Arc::new(EmbeddedRegistry::new(STALE_MS));
    let toml = |id: &str| {
        format!("listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n[node]\nid = \"{id}\"\ndrain_timeout_ms = 200\n[rate_limits]\nhandshakes_per_minute = 100000\n")
    };
    let start = |id: &str| {
        wiresocket::server::start(
            Config::from_toml(&toml(id), "test").unwrap(),
            registry.clone() as Arc<dyn Registry>,
        )
        .unwrap()
    };
    let (a, b) = (start("leaving"), start("staying"));
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut writer = YClient::connect(&a_addr, "moving", 1);
    let mut reader = YClient::connect(&a_addr, "moving", 2);
    writer.insert(0, "written on a;");
    assert!(reader.pump_until(Duration::from_secs(5), |c| c.text() == "written on a;"));
    a.drain();
    assert_eq!(expect_close(&mut writer.ws).0, 1012);
    assert_eq!(expect_close(&mut reader.ws).0, 1012);
    // Edits made while moving are kept by the client and delivered after it reconnects.
    writer.insert_offline(0, "offline;");
    a.join().expect("the drained node stops cleanly");
    let usage =
        futures_lite::future::block_on(registry.usage("dev::dev", wiresocket::log::unix_ms()))
            .unwrap();
    assert_eq!(
        usage,
        wiresocket::registry::Usage {
            connections: 0,
            documents: 0
        },
        "the drained node released its counts and pins"
    );
    // a released its pin: the document can start on b.
    writer.resume(connect(&b_addr, "/moving"));
    reader.resume(connect(&b_addr, "/moving"));
    let expected = "offline;written on a;";
    // Both sides answer the new server's sync step 1; pump them in turn until they agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.text() != expected || writer.text() != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "reader {:?}, writer {:?}",
            reader.text(),
            writer.text()
        );
        writer.pump_until(Duration::from_millis(20), |_| false);
        reader.pump_until(Duration::from_millis(20), |_| false);
    }
}
