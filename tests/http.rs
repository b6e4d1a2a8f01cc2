//! The plain HTTP surface and the WebSocket layer's edges, against the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;
use tungstenite::Message;

#[test]
fn health_is_json_with_a_timestamp() {
    let server = Server::start("");
    for path in ["/health", "/"] {
        let r = server.get(path);
        assert_eq!(status(&r), 200, "{r}");
        assert!(r.contains("Content-Type: application/json"));
        assert!(
            r.contains("{\"status\":\"healthy\",\"timestamp\":\"20"),
            "{r}"
        );
    }
}

#[test]
fn statuses_for_requests_that_are_not_upgrades() {
    let server = Server::start("");
    assert_eq!(status(&server.get("/some-doc")), 426);
    assert_eq!(
        status(&server.http("POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")),
        405
    );
    assert_eq!(
        status(&server.http(
            "POST /doc HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )),
        405
    );
    assert_eq!(status(&server.get("/no%20such%20thing")), 404);
    assert_eq!(status(&server.http("BLAH\r\n\r\n")), 400);
    assert_eq!(status(&server.http("GET / HTTP/1.0\r\n\r\n")), 505);
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(status(&server.http(&huge)), 431);
    let version = "GET /d HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = server.http(version);
    assert_eq!(status(&r), 426);
    assert!(r.contains("Sec-WebSocket-Version: 13"));
}

#[test]
fn slow_request_heads_are_dropped() {
    let server = Server::start("[http]\nrequest_timeout_ms = 300\n");
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(status(&out), 408, "{out}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// One deadline covers the head and the body, from the connection's start: each part sent
/// within the timeout is not enough when together they take longer.
#[test]
fn slow_request_bodies_get_408_within_one_deadline() {
    let server = Server::start("[http]\nrequest_timeout_ms = 600\n");
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"POST /connect/token HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"Content-Length: 40\r\n\r\ngrant_type=")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"client_").unwrap();
    let mut out = String::new();
    // The server closes: the read ends rather than timing out.
    s.read_to_string(&mut out).unwrap();
    let elapsed = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(
        out.ends_with(
            "{\"error\":\"request_timeout\",\"message\":\"send the whole request sooner\"}"
        ),
        "{out}"
    );
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
    // A declared body that never comes holds the socket no longer than the deadline.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(status(&out), 408, "{out}");
}

/// Framings two parties could read differently are refused before any body is read (RFC
/// 9112 section 6.3), with their statuses' phrases.
#[test]
fn ambiguous_request_framing_is_refused() {
    let server = Server::start("");
    let post = |headers: &str| {
        server.http(&format!(
            "POST /connect/token HTTP/1.1\r\nHost: t\r\n{headers}\r\ngrant_type=client_credentials"
        ))
    };
    for headers in [
        "Content-Length: 29\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 29\r\nContent-Length: 29\r\n",
        "Content-Length: +29\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 2 9\r\n",
    ] {
        let r = post(headers);
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{headers}: {r}"
        );
        assert!(r.contains("RFC 9112 section 6.3"), "{headers}: {r}");
    }
    let r = post("Transfer-Encoding: chunked\r\n");
    assert!(r.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{r}");
    assert!(r.contains("send the body with a Content-Length"), "{r}");
    // An upgrade with an ambiguous framing is refused too: its body would be read as frames.
    let r = server.http(&format!(
        "GET /doc?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nTransfer-Encoding: chunked\r\n\r\n",
        editor_token()
    ));
    assert_eq!(status(&r), 501, "{r}");
    let r = post("");
    assert!(r.starts_with("HTTP/1.1 411 Length Required\r\n"), "{r}");
    let r = post("Content-Length: 99999\r\n");
    assert!(r.starts_with("HTTP/1.1 413 Content Too Large\r\n"), "{r}");
}

#[test]
fn metrics_are_prometheus_text() {
    let server = Server::start("");
    let r = server.get("/metrics");
    assert_eq!(status(&r), 200);
    assert!(r.contains("# TYPE wiresocket_connections gauge"));
    assert!(r.contains("wiresocket_connections{shard=\"1\"} 0"));
    let _ws = connect(&server.addr, "/counted");
    server.get("/nope%20nope");
    // The handshake is counted once the 101 is written, which the client may see first.
    server.wait_for(
        "the handshake counted",
        std::time::Duration::from_secs(5),
        |s| {
            s.get("/metrics")
                .contains("wiresocket_handshake_seconds_count 1\n")
        },
    );
    let r = server.get("/metrics");
    assert!(
        r.contains("wiresocket_rejections_total{code=\"404\"} 1\n"),
        "{r}"
    );
}

#[test]
fn the_echo_route_is_off_by_default_and_echoes_when_enabled() {
    let server = Server::start("");
    // Without --echo-path, /echo is just a document.
    let mut ws = connect(&server.addr, "/echo");
    let first = ws.read().unwrap();
    assert!(
        matches!(first, Message::Binary(ref b) if b[0] == 0),
        "sync step 1 expected"
    );

    let server = Server::start_with("", &["--echo-path", "/echo"]);
    let mut ws = connect(&server.addr, "/echo");
    ws.send(Message::Text("héllo".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("héllo".into()));
    let big = vec![7u8; 1 << 20];
    ws.send(Message::Binary(big.clone().into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(big.into()));
}

/// The head is read through the shard's scratch buffer a piece at a time: one cut anywhere
/// (even inside the blank line that ends it) is joined up, and a frame sent in the same
/// write as the head's end is the session's first.
#[test]
fn a_head_in_pieces_and_a_frame_right_behind_it() {
    let server = Server::start_with("", &["--echo-path", "/echo"]);
    let head = b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // A masked text frame "hi" (mask 1 2 3 4).
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    for cut in [5, 40, head.len() - 3, head.len() - 1] {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&head[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut rest = head[cut..].to_vec();
        rest.extend_from_slice(&frame);
        s.write_all(&rest).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        // The 101 and the echoed frame ("hi", unmasked from the server).
        while !got.ends_with(&[0x81, 2, b'h', b'i']) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(status(&String::from_utf8_lossy(&got)), 101, "cut at {cut}");
    }
}

#[test]
fn protocol_errors_close_with_rfc_codes() {
    let server = Server::start_with(
        "[websocket]\nmessage_bytes_max = 65536\nframe_bytes_max = 65536\n",
        &["--echo-path", "/echo"],
    );
    let raw = |bytes: &[u8]| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        out[head_end..].to_vec()
    };
    let close_code = |frames: &[u8]| {
        assert_eq!(frames[0], 0x88, "close frame expected: {frames:?}");
        u16::from_be_bytes([frames[2], frames[3]])
    };
    // Unmasked frame.
    assert_eq!(close_code(&raw(&[0x82, 0x01, 0x00])), 1002);
    // Reserved opcode.
    assert_eq!(close_code(&raw(&[0x83, 0x80, 0, 0, 0, 0])), 1002);
    // A frame announcing more than the limit: refused from its header alone.
    let mut big = vec![0x82, 0xFF];
    big.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(close_code(&raw(&big)), 1009);
    // Invalid UTF-8 in a text frame (mask 0 keeps the bytes as they are).
    assert_eq!(
        close_code(&raw(&[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28])),
        1007
    );
    // A close frame with a reserved code.
    assert_eq!(
        close_code(&raw(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED])),
        1002
    );
    // A clean close is echoed.
    assert_eq!(
        close_code(&raw(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])),
        1000
    );
}

#[test]
fn startup_errors_are_clear_and_exit_non_zero() {
    let server = Server::start("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--listen", &server.addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("address is in use"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--shards", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
    // Too little locked memory for io_uring (lowering the limit needs no privilege).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 256 && exec {} serve --listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_wiresocket")
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked memory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The FoundationDB backend in a build without it: a clear refusal.
    let fdb = std::env::temp_dir().join(format!("ws-fdb-{}.toml", std::process::id()));
    std::fs::write(&fdb, "[registry]\nbackend = \"foundationdb\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&fdb)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&fdb);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features fdb"));
    let dir = std::env::temp_dir().join(format!("ws-bad-{}.toml", std::process::id()));
    std::fs::write(&dir, "[documents]\ngrace = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(["serve", "--config"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("grace"),
        "names the field"
    );
}

#[test]
fn sigterm_drains_sessions_with_1012_and_exits_zero() {
    let mut server = Server::start("[node]\ndrain_timeout_ms = 300\n");
    let mut client = YClient::connect(&server.addr, "draining", 1);
    client.insert(0, "kept by the client");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    server.wait_for("/health to report the drain", Duration::from_secs(5), |s| {
        let r = s.get("/health");
        status(&r) == 503 && r.contains("\"degraded\"")
    });
    let upgrade = server.http_head(&format!(
        "GET /late?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        editor_token()
    ));
    assert!(
        upgrade.starts_with("HTTP/1.1 503 ") && upgrade.contains("Retry-After: "),
        "{upgrade}"
    );
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(expect_close(&mut client.ws).0, 1012);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn past_the_high_water_mark_new_upgrades_get_503_and_live_sessions_go_on() {
    let server = Server::start("[node]\nconnections_capacity = 5\nhigh_water_percent = 80\n");
    let mut clients: Vec<YClient> = (0..4)
        .map(|i| YClient::connect(&server.addr, "busy", i))
        .collect();
    server.wait_for("4 connections", Duration::from_secs(5), |s| {
        s.metric("connections").0 == 4
    });
    let health = server.get("/health");
    assert!(
        status(&health) == 503 && health.contains("\"overloaded\""),
        "{health}"
    );
    let upgrade = server.http_head(&format!(
        "GET /more?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        editor_token()
    ));
    assert!(upgrade.starts_with("HTTP/1.1 503 "), "{upgrade}");
    let retry: u64 = upgrade
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!((30..=40).contains(&retry), "jittered Retry-After {retry}");
    clients[0].insert(0, "still served");
    assert!(clients[3].pump_until(Duration::from_secs(5), |c| c.text() == "still served"));
    clients.truncate(2);
    server.wait_for("health to recover", Duration::from_secs(5), |s| {
        status(&s.get("/health")) == 200
    });
}
