//! SIGHUP (PRODUCT.md 13): the configuration file read again while sessions run. What
//! changes in place does, sessions of other apps never notice (no update lost), a removed
//! app's sessions close with 4003, and a file that does not validate changes nothing.

mod common;

use serde_json::Value;
use std::time::{Duration, Instant};

/// Apps `web` (with a plan) and `docs` of tenant `acme`, budgets lifted for the test.
fn config(web_plan: &str, with_docs: bool) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n{}\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\n{web_plan}\n{}\
         [rate_limits]\nhandshakes_per_minute = 1000000\nusage_per_minute = 1000000\n",
        common::acme_eddsa_tenant(),
        if with_docs {
            "[[apps]]\nid = \"docs\"\ntenant = \"acme\"\n"
        } else {
            ""
        },
    )
}

/// SIGHUP without waiting for its outcome (see `Server::reload`).
fn sighup(server: &common::Server) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
}

#[test]
fn a_reload_changes_plans_and_apps_in_place_and_a_bad_file_changes_nothing() {
    let toml = config("", true);
    let directory = common::directory(&toml);
    let token = |app: &str| directory.mint(app, "u", 600, Value::Null).unwrap();
    let server = common::Server::start_with(&toml, &["--shards", "1"]);
    let open = |app: &str, doc: &str| {
        common::connect_raw(&server.addr, &format!("/{doc}?token={}", token(app)))
    };
    let mut writer = common::YClient::from_ws(open("web", "live"), 1);
    let mut reader = common::YClient::from_ws(open("web", "live"), 2);
    let mut docs = open("docs", "other");
    // A file that does not validate: refused, naming the field; nothing changes.
    std::fs::write(
        server.config_path(),
        format!("{toml}\n[websocket]\nping_every = 1\n"),
    )
    .unwrap();
    let line = server.reload();
    assert!(
        line.contains("reload_refused") && line.contains("ping_every"),
        "{line}"
    );
    let mut also = open("docs", "other");
    assert!(also.read().is_ok(), "docs still admitted");
    // The web plan gets maxConnections 2 (both sessions stay), docs is removed; the web
    // sessions go on editing throughout, and nothing they send is lost.
    let plan = "[apps.plan]\nmax_connections = 2\n";
    std::fs::write(server.config_path(), config(plan, false)).unwrap();
    // Each piece is seen by the reader before the next is sent: the slowest one measures
    // what the reload cost a live session (a debug build; usually about a millisecond).
    let mut sent = String::new();
    let mut slowest = Duration::ZERO;
    let reloaded = |s: &common::Server| s.log().contains("event=reloaded");
    let mut i = 0;
    while i < 40 || !reloaded(&server) {
        assert!(i < 2_000, "no reload in {}", server.log());
        if i == 20 {
            sighup(&server);
        }
        let piece = format!("{i},");
        writer.insert(sent.len() as u32, &piece);
        sent.push_str(&piece);
        let started = Instant::now();
        assert!(
            reader.pump_until(Duration::from_secs(5), |c| c.text() == sent),
            "the reader has {:?}",
            reader.text()
        );
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(5));
        i += 1;
    }
    eprintln!("slowest piece while the reload ran: {slowest:?} ({i} pieces)");
    assert!(
        slowest < Duration::from_millis(250),
        "a piece took {slowest:?} to arrive"
    );
    // The removed app's sessions are closed; its new ones refused.
    for ws in [&mut docs, &mut also] {
        let (code, reason) = common::expect_close(ws);
        assert_eq!((code, reason.as_str()), (4003, "Forbidden: unknown app"));
    }
    let (code, reason) = common::expect_close(&mut open("docs", "other"));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: unknown app"));
    // The new plan applies to new connections: a third web connection passes the limit.
    let (code, reason) = common::expect_close(&mut open("web", "third"));
    assert_eq!(
        (code, reason.as_str()),
        (4004, "Connection limit exceeded: 2")
    );
}

#[test]
fn a_node_started_without_a_config_file_refuses_a_reload_and_serves_on() {
    let log_path =
        std::env::temp_dir().join(format!("wiresocket-noconfig-{}.log", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening"), "{line}");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("reload_refused") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log_path);
    assert!(log.contains("started without --config"), "{log}");
    assert!(alive, "the node goes on");
}

#[test]
fn a_reload_whose_file_is_gone_is_refused_and_the_node_serves_on() {
    let server = common::Server::start_with("", &["--shards", "1"]);
    // The file the harness started it with, removed.
    std::fs::remove_file(server.config_path()).unwrap();
    let line = server.reload();
    assert!(line.contains("reload_refused"), "{line}");
    assert!(line.contains("cannot read config file"), "{line}");
    let mut c = common::YClient::connect(&server.addr, "still-here", 1);
    c.insert(0, "ok");
    assert!(c.pump_until(Duration::from_secs(5), |c| c.text() == "ok"));
}
