//! The data plane end to end: real server process, independent WebSocket + Yjs clients.

mod common;

use common::*;
use std::time::Duration;
use tungstenite::Message;

const FAST: &str = "[documents]\ngrace_period_ms = 1000\n";
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn two_clients_sync_text() {
    let server = Server::start("");
    let mut a = YClient::connect(&server.addr, "doc-a", 1);
    let mut b = YClient::connect(&server.addr, "doc-a", 2);
    a.insert(0, "hello");
    assert!(
        b.pump_until(WAIT, |c| c.text() == "hello"),
        "b got {:?}",
        b.text()
    );
    b.insert(5, " world");
    assert!(
        a.pump_until(WAIT, |c| c.text() == "hello world"),
        "a got {:?}",
        a.text()
    );
}

#[test]
fn concurrent_editors_converge() {
    let server = Server::start("");
    let addr = server.addr.clone();
    let editors = 6;
    let edits = 40;
    let handles: Vec<_> = (0..editors)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = YClient::connect(&addr, "shared", 100 + i);
                for n in 0..edits {
                    c.insert(0, &format!("<{i}:{n}>"));
                    c.pump_until(Duration::from_millis(1), |_| false);
                }
                c
            })
        })
        .collect();
    let mut clients: Vec<YClient> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let expected_len: usize = (0..editors)
        .map(|i| {
            (0..edits)
                .map(|n| format!("<{i}:{n}>").len())
                .sum::<usize>()
        })
        .sum();
    for c in clients.iter_mut() {
        assert!(
            c.pump_until(WAIT, |c| c.text().len() == expected_len),
            "got {} bytes",
            c.text().len()
        );
    }
    let first = clients[0].text();
    assert!(
        clients.iter().all(|c| c.text() == first),
        "clients diverged"
    );
    // A newcomer gets the same state from the server alone.
    let mut late = YClient::connect(&server.addr, "shared", 999);
    assert!(late.pump_until(WAIT, |c| c.text() == first));
}

#[test]
fn reconnecting_within_the_grace_period_resumes_and_after_it_the_state_is_freed() {
    let server = Server::start(FAST);
    {
        let mut a = YClient::connect(&server.addr, "graceful", 1);
        a.insert(0, "kept");
        // Make sure the server applied it before leaving.
        let mut b = YClient::connect(&server.addr, "graceful", 2);
        assert!(b.pump_until(WAIT, |c| c.text() == "kept"));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut c = YClient::connect(&server.addr, "graceful", 3);
    assert!(
        c.pump_until(WAIT, |c| c.text() == "kept"),
        "state lost within grace"
    );
    drop(c);
    server.wait_for("documents freed after grace", WAIT, |s| {
        s.metric("documents").0 == 0
    });
    let mut d = YClient::connect(&server.addr, "graceful", 4);
    assert!(!d.pump_until(Duration::from_millis(300), |c| !c.text().is_empty()));
    assert_eq!(server.metric("documents").0, 1);
}

#[test]
fn connections_of_a_document_meet_on_one_shard_and_documents_spread() {
    let server = Server::start("");
    let clients: Vec<YClient> = (0..8)
        .map(|i| YClient::connect(&server.addr, "one-doc", i))
        .collect();
    server.wait_for("8 connections", WAIT, |s| s.metric("connections").0 == 8);
    let (_, per_shard) = server.metric("connections");
    assert!(
        per_shard.contains(&8),
        "one shard holds all of them: {per_shard:?}"
    );
    drop(clients);
    let many: Vec<YClient> = (0..24)
        .map(|i| YClient::connect(&server.addr, &format!("spread-{i}"), i))
        .collect();
    server.wait_for("24 documents", WAIT, |s| s.metric("documents").0 >= 24);
    let (_, docs) = server.metric("documents");
    assert!(
        docs.iter().all(|&d| d >= 4),
        "documents spread over shards: {docs:?}"
    );
    // With two shards about half of the connections were accepted by the wrong shard.
    assert!(server.metric("handoffs_total").0 > 0);
    drop(many);
}

#[test]
fn simultaneous_first_clients_share_one_room() {
    let server = Server::start("");
    let addr = server.addr.clone();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = YClient::connect(&addr, "racy", 50 + i);
                c.insert(0, "x");
                c
            })
        })
        .collect();
    let mut clients: Vec<YClient> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for c in clients.iter_mut() {
        assert!(c.pump_until(WAIT, |c| c.text().len() == 10));
    }
    assert_eq!(server.metric("documents").0, 1);
}

#[test]
fn awareness_is_relayed_and_removed_when_its_connection_closes() {
    let server = Server::start("");
    let mut a = YClient::connect(&server.addr, "aw", 1);
    let mut b = YClient::connect(&server.addr, "aw", 2);
    let mut update = Vec::new();
    var(&mut update, 1);
    var(&mut update, 77);
    var(&mut update, 1);
    let state = br#"{"user":{"name":"a"}}"#;
    var(&mut update, state.len() as u64);
    update.extend_from_slice(state);
    let mut msg = vec![1];
    var(&mut msg, update.len() as u64);
    msg.extend_from_slice(&update);
    a.send(msg.clone());
    b.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let got = loop {
        match b.ws.read().unwrap() {
            Message::Binary(m) if m[0] == 1 => break m,
            _ => {}
        }
    };
    assert_eq!(&got[..], &msg[..]);
    drop(a);
    let removal = loop {
        match b.ws.read().unwrap() {
            Message::Binary(m) if m[0] == 1 => break m,
            _ => {}
        }
    };
    // One entry: client 77, clock 2, state "null".
    assert_eq!(&removal[..], &[1, 8, 1, 77, 2, 4, b'n', b'u', b'l', b'l']);
}

#[test]
fn allocation_bombs_close_only_their_connection_and_memory_stays_flat() {
    let server = Server::start("");
    let mut good = YClient::connect(&server.addr, "target", 1);
    good.insert(0, "safe");
    let mut watcher = YClient::connect(&server.addr, "target", 2);
    assert!(watcher.pump_until(WAIT, |c| c.text() == "safe"));
    let before = server.rss_kib();
    let bombs: [&[u8]; 2] = [
        &[0x01, 0x04, 0xaf, 0xf6, 0xaf, 0x6c, 0x11],
        &[
            0x00, 0x00, 0x0a, 0xa4, 0xa4, 0xa4, 0xa4, 0x00, 0x00, 0x02, 0x1f, 0x05, 0x5c, 0x0a,
        ],
    ];
    for _ in 0..20 {
        for bomb in bombs {
            let mut bad = connect(&server.addr, "/target");
            bad.send(Message::Binary(bomb.to_vec().into())).unwrap();
            let (code, reason) = expect_close(&mut bad);
            assert_eq!(code, 1007, "{reason}");
        }
    }
    let after = server.rss_kib();
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The document and its other clients did not notice.
    good.insert(4, "!");
    assert!(watcher.pump_until(WAIT, |c| c.text() == "safe!"));
}

#[test]
fn malformed_messages_get_fitting_close_codes() {
    let server = Server::start("");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (vec![9], 1003),                           // unknown message type
        (vec![0, 2, 5, 1, 2], 1007),               // update shorter than its length
        (sync_message(2, &[1, 1, 1, 0, 4]), 1007), // truncated update body
        (vec![0, 0, 1, 0, 0xFF], 1007),            // trailing bytes
    ];
    for (msg, code) in cases {
        let mut ws = connect(&server.addr, "/malformed");
        ws.send(Message::Binary(msg.clone().into())).unwrap();
        assert_eq!(expect_close(&mut ws).0, code, "message {msg:?}");
    }
    // A text frame is a side message: one JSON object with a string type.
    let mut ws = connect(&server.addr, "/malformed");
    ws.send(Message::Text("hello".into())).unwrap();
    assert_eq!(expect_close(&mut ws).0, 1007);
}

#[test]
fn invalid_document_names_close_with_4007() {
    let server = Server::start("");
    for path in [
        "/a%20b",
        "/a%2Fb",
        "/bad.name",
        &format!("/{}", "x".repeat(256)),
    ] {
        let mut ws = connect(&server.addr, path);
        assert_eq!(expect_close(&mut ws).0, 4007, "{path}");
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_memory_stays_flat() {
    let server = Server::start("[websocket]\noutbound_bytes_max = 262144\nping_interval_ms = 200\nidle_timeout_ms = 60000\nclose_timeout_ms = 300\n");
    // The slow client completes the handshake, then never reads again.
    let mut slow = connect(&server.addr, "/firehose");
    slow.send(Message::Binary(sync_message(0, &[0]).into()))
        .unwrap();
    let mut writer = YClient::connect(&server.addr, "firehose", 1);
    let before = server.rss_kib();
    let chunk = "y".repeat(16 * 1024);
    for i in 0..2000 {
        writer.insert(0, &chunk);
        if i % 50 == 0 {
            writer.pump_until(Duration::from_millis(1), |_| false);
        }
        if server.metric("slow_consumer_closes_total").0 > 0 {
            break;
        }
    }
    server.wait_for("the slow consumer to be closed", WAIT, |s| {
        s.metric("slow_consumer_closes_total").0 == 1
    });
    let after = server.rss_kib();
    // 32 MB went to the document; the slow client's queue was bounded at 256 KiB.
    assert!(
        after < before + 96 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The writer is still connected and served.
    let mut reader = YClient::connect(&server.addr, "firehose", 2);
    assert!(reader.pump_until(WAIT, |c| !c.text().is_empty()));
}

/// Issue 10 point 3: once cut off, a slow client that reads again gets its 1008 at once,
/// even while its shard is busy. Two writers insert at the start of one document without
/// applying each other's updates (as offline editors do), so every insertion conflicts with
/// all the other's and integrating costs more and more. The close timeout is long, so the
/// close must come from the writer task, not from the sweep shutting the socket.
#[test]
fn a_cut_off_client_that_reads_again_gets_its_close_at_once_while_the_shard_is_busy() {
    let server = Server::start("shards = 1\n[websocket]\noutbound_bytes_max = 262144\nidle_timeout_ms = 60000\nclose_timeout_ms = 30000\nmessages_per_second = 100000\nmessages_burst = 100000\n");
    let mut slow = connect(&server.addr, "/busy");
    slow.send(Message::Binary(sync_message(0, &[0]).into()))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=2)
        .map(|id| {
            let (addr, stop) = (server.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut writer = YClient::connect(&addr, "busy", id);
                // Non-blocking: a writer sends as fast as it can and reads what came.
                writer.ws.get_mut().set_nonblocking(true).unwrap();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let update = writer.insert_offline(0, &"w".repeat(16 << 10));
                    match writer
                        .ws
                        .send(Message::Binary(sync_message(2, &update).into()))
                    {
                        Ok(()) => {}
                        // Queued in the client; flushed by later calls.
                        Err(e) if read_timed_out(&e) => {}
                        Err(_) => break,
                    }
                    sent += 1;
                    // Read (so as not to be a slow consumer) but do not apply.
                    while writer.ws.read().is_ok() {}
                }
                sent
            })
        })
        .collect();
    // The slow client's socket buffers and 256 KiB queue fill within a fraction of this;
    // its cut-off is counted only when its session ends, after it has read the close.
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let (code, reason) = expect_close(&mut slow);
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(code, 1008, "{reason}");
    assert!(
        waited < Duration::from_secs(2),
        "the close took {waited:?} to arrive once the client read again ({sent} updates sent)"
    );
}

#[test]
fn idle_connections_are_pinged_then_closed() {
    let server = Server::start("[websocket]\nping_interval_ms = 200\nidle_timeout_ms = 600\n");
    // A raw client: handshake by hand, then never answer pings.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET /quiet?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", dev_token(serde_json::Value::Null));
    s.write_all(request.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = started.elapsed();
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frames = &received[head_end..];
    assert!(
        frames.windows(2).any(|w| w == [0x89, 0x00]),
        "no ping in {frames:?}"
    );
    let close_at = frames
        .windows(4)
        .position(|w| w == [0x88, w[1], 0x03, 0xE9])
        .expect("close 1001");
    assert!(close_at > 0);
    assert!(
        elapsed >= Duration::from_millis(550),
        "closed too early: {elapsed:?}"
    );
    assert_eq!(server.metric("idle_closes_total").0, 1);
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let server = Server::start("[websocket]\nping_interval_ms = 100\nidle_timeout_ms = 300\n");
    let mut a = YClient::connect(&server.addr, "alive", 1);
    // tungstenite answers pings while reading.
    a.pump_until(Duration::from_millis(1000), |_| false);
    let mut b = YClient::connect(&server.addr, "alive", 2);
    b.insert(0, "still here");
    assert!(a.pump_until(WAIT, |c| c.text() == "still here"));
    assert_eq!(server.metric("idle_closes_total").0, 0);
}
