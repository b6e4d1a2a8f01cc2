//! `wss://` and HTTPS on the listener itself (PRODUCT.md 14), against the real binary with a
//! certificate made for the tests (`tests/tls`): y-websocket clients converge over TLS and
//! HTTPS answers, a handshake that stops halfway is dropped at the request deadline, a bad
//! certificate or key file stops the start naming the field, and SIGHUP serves a renewed
//! certificate while the sessions already open go on.

mod common;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");

fn tls_section(cert: &str, key: &str) -> String {
    format!("[tls]\ncert_file = \"{TLS_DIR}/{cert}\"\nkey_file = \"{TLS_DIR}/{key}\"\n")
}

/// One HTTP/1.1 request over TLS; the whole answer.
fn https(addr: &str, request: &str) -> String {
    let mut tls = common::tls_connect(addr, common::tls_client_config());
    tls.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    // The server ends with a close_notify (or just closes): either ends the read.
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn y_websocket_clients_converge_over_wss_and_https_answers() {
    let server = common::Server::start(&tls_section("server.pem", "server.key"));
    let token = common::editor_token();
    // Eight clients of one document (both shards accept them: some are handed over).
    let mut clients: Vec<common::YClient<common::TlsStream>> = (0..8)
        .map(|i| {
            let ws = common::connect_tls(&server.addr, &format!("/shared?token={token}"));
            common::YClient::from_ws(ws, 100 + i)
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.insert(0, &format!("<{i}>"));
    }
    for client in &mut clients {
        let all = |c: &common::YClient<common::TlsStream>| {
            (0..8).all(|i| c.text().contains(&format!("<{i}>")))
        };
        assert!(
            client.pump_until(Duration::from_secs(10), all),
            "{}",
            client.text()
        );
    }
    let text = clients[0].text();
    assert!(clients.iter().all(|c| c.text() == text));
    // Plain HTTP over the same listener's TLS.
    let answer = https(
        &server.addr,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(common::status(&answer), 200, "{answer}");
    // Plaintext to a TLS listener gets no answer.
    let mut plain = TcpStream::connect(&server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[test]
fn a_handshake_that_stops_halfway_is_dropped_at_the_request_deadline() {
    let server = common::Server::start(&format!(
        "{}[http]\nrequest_timeout_ms = 500\n",
        tls_section("server.pem", "server.key")
    ));
    // A TLS record header announcing a ClientHello that never comes.
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    let waited = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    let metrics = https(
        &server.addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let failed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wiresocket_tls_handshakes_failed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed >= 1.0, "{metrics}");
}

/// Starts the binary with `toml`; its exit status and stderr (it must not start).
fn refused_start(toml: &str) -> String {
    let dir = common::TempDir::new("tls-refused");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, format!("allow_development_tenant = true\n{toml}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_certificate_or_key_file_stops_the_start_naming_the_field() {
    let no_pem = refused_start(&tls_section("README.md", "server.key"));
    assert!(no_pem.contains("tls.cert_file"), "{no_pem}");
    let missing = refused_start(&tls_section("nope.pem", "server.key"));
    assert!(
        missing.contains("tls.cert_file") && missing.contains("nope.pem"),
        "{missing}"
    );
    let no_key = refused_start(&tls_section("server.pem", "ca.pem"));
    assert!(no_key.contains("tls.key_file"), "{no_key}");
    let other_key = refused_start(&tls_section("server.pem", "server2.key"));
    assert!(
        other_key.contains("tls.key_file") && other_key.contains("does not go with"),
        "{other_key}"
    );
}

/// The end-entity certificate a new TLS connection is shown.
fn served_certificate(addr: &str) -> Vec<u8> {
    let tls = common::tls_connect(addr, common::tls_client_config());
    let chain = tls.conn.peer_certificates().expect("a certificate");
    chain[0].as_ref().to_vec()
}

fn certificate(file: &str) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(format!("{TLS_DIR}/{file}")).unwrap();
    der.as_ref().to_vec()
}

#[test]
fn sighup_serves_a_renewed_certificate_and_open_sessions_go_on() {
    let server = common::Server::start(&tls_section("server.pem", "server.key"));
    assert_eq!(served_certificate(&server.addr), certificate("server.pem"));
    let token = common::editor_token();
    let open = |id| {
        let ws = common::connect_tls(&server.addr, &format!("/renewed?token={token}"));
        common::YClient::from_ws(ws, id)
    };
    let mut before = open(1);
    std::fs::write(
        server.config_path(),
        format!(
            "allow_development_tenant = true\n{}",
            tls_section("server2.pem", "server2.key")
        ),
    )
    .unwrap();
    let line = server.reload();
    assert!(line.contains("event=reloaded"), "{line}");
    assert_eq!(served_certificate(&server.addr), certificate("server2.pem"));
    // The session opened before the reload goes on, with one opened after.
    let mut after = open(2);
    before.insert(0, "still here");
    assert!(after.pump_until(Duration::from_secs(10), |c| c.text() == "still here"));
    // A key that does not go with the certificate: refused, naming the field; the renewed
    // certificate stays.
    std::fs::write(
        server.config_path(),
        format!(
            "allow_development_tenant = true\n{}",
            tls_section("server.pem", "server2.key")
        ),
    )
    .unwrap();
    let line = server.reload();
    assert!(
        line.contains("reload_refused") && line.contains("tls.key_file"),
        "{line}"
    );
    assert_eq!(served_certificate(&server.addr), certificate("server2.pem"));
}

#[test]
fn at_the_open_file_limit_a_tls_upgrade_is_refused_with_503() {
    // 200 files less 64 kept back, three to a TLS connection (its socket and a socket
    // pair): 45 connections fit.
    const OPEN_FILES: u64 = 200;
    const CONNECTIONS: usize = 45;
    let server =
        common::Server::start_with_open_files(&tls_section("server.pem", "server.key"), OPEN_FILES);
    let token = common::editor_token();
    let open: Vec<_> = (0..CONNECTIONS)
        .map(|i| common::connect_tls(&server.addr, &format!("/fd-{}?token={token}", i / 8)))
        .collect();
    let upgrade = format!(
        "GET /one-more?token={token} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let answer = https(&server.addr, &upgrade);
        if common::status(&answer) == 503 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(common::status(&refused), 503, "{refused}");
    assert!(refused.contains("Retry-After:"), "{refused}");
    drop(open);
}

/// The descriptors the server process holds.
fn open_fds(server: &common::Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A client that stops reading is cut off like a plain one, and the TLS bridge behind its
/// session ends with it: the descriptors go back. (The bound on a send to a client whose
/// window stays shut, `idle_timeout_ms`, is not reached here: the session ends first.)
#[test]
fn a_tls_client_that_stops_reading_does_not_keep_its_descriptors() {
    let server = common::Server::start(&format!(
        "{}[websocket]\noutbound_bytes_max = 65536\nping_interval_ms = 500\nidle_timeout_ms = 3000\n",
        tls_section("server.pem", "server.key")
    ));
    let token = common::editor_token();
    let baseline = open_fds(&server);
    // A reader that never reads, and a writer that sends it megabytes.
    let stalled = common::connect_tls(&server.addr, &format!("/stalled?token={token}"));
    let mut writer = common::YClient::from_ws(
        common::connect_tls(&server.addr, &format!("/stalled?token={token}")),
        2,
    );
    let chunk = "x".repeat(10 << 10);
    // 15 MiB, more than the loopback's socket buffers hold, in fewer messages than the
    // writer's message-rate burst.
    for i in 0..1_500 {
        writer.insert(0, &chunk);
        if i % 100 == 0 {
            // The writer keeps reading its own socket, so only the stalled one fills.
            writer.pump_until(Duration::from_millis(1), |_| false);
        }
    }
    // The stalled client's session is cut off, and its bridge ends with it: the server is
    // back to its descriptors and the writer's three.
    server.wait_for(
        "the stalled connection's descriptors",
        Duration::from_secs(15),
        |s| open_fds(s) <= baseline + 3,
    );
    drop(stalled);
}
