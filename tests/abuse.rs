//! What one client can make the node hold or do, at each bound, against the real binary:
//! frames buffered as their bytes arrive, stalled messages, the node's bound on incomplete
//! messages, the message rate, document and awareness sizes, and limits that must hold
//! however a message is encoded.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A binary frame header announcing `len` payload bytes, masked with zeros (a valid mask
/// that leaves the payload as it is).
fn frame_header(len: u64, fin: bool) -> Vec<u8> {
    let mut h = vec![if fin { 0x82 } else { 0x02 }, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

fn send_raw(ws: &mut Ws, bytes: &[u8]) {
    ws.get_mut().write_all(bytes).unwrap();
}

/// Keeps a document busy from two clients and says how long the last of `rounds` edits
/// took to arrive, at most.
fn live_edit_latency(server: &Server, doc: &str, rounds: u32) -> Duration {
    let mut writer = YClient::connect(&server.addr, doc, 7);
    let mut reader = YClient::connect(&server.addr, doc, 8);
    let mut worst = Duration::ZERO;
    for i in 0..rounds {
        let started = Instant::now();
        writer.insert(i, "x");
        let want = (i + 1) as usize;
        assert!(reader.pump_until(WAIT, |c| c.text().len() == want));
        worst = worst.max(started.elapsed());
    }
    worst
}

#[test]
fn a_header_announcing_16_mib_costs_one_read_buffer_and_a_stalled_frame_is_closed() {
    let server = Server::start(
        "[websocket]\nmessage_timeout_ms = 1500\nping_interval_ms = 20000\nidle_timeout_ms = 60000\n",
    );
    let quiet = live_edit_latency(&server, "live-quiet", 20);
    let before = server.rss_kib();
    const ATTACKERS: usize = 40;
    let mut attackers: Vec<Ws> = (0..ATTACKERS)
        .map(|i| {
            let mut ws = connect(&server.addr, &format!("/attack-{i}"));
            let mut header = frame_header(16 << 20, true);
            header.push(0);
            send_raw(&mut ws, &header);
            ws
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = server.rss_kib();
    let busy = live_edit_latency(&server, "live-busy", 20);
    // 40 connections each announcing 16 MiB pinned 640 MiB before frames were buffered as
    // they arrive; now each holds about one 64 KiB read buffer.
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
    assert!(
        busy < quiet + Duration::from_millis(500),
        "edits on another document took {busy:?} during the attack, {quiet:?} before"
    );
    let started = Instant::now();
    for ws in &mut attackers {
        let (code, reason) = expect_close(ws);
        assert_eq!(code, 1008, "{reason}");
        assert!(reason.contains("message timeout"), "{reason}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let (timeouts, _) = server.metric("message_timeouts_total");
    assert_eq!(timeouts, ATTACKERS as u64);
}

#[test]
fn trickling_a_byte_at_a_time_is_not_progress_but_a_slow_large_message_is() {
    let server = Server::start(
        "[websocket]\nmessage_timeout_ms = 600\nping_interval_ms = 20000\nidle_timeout_ms = 60000\n",
    );
    // A frame that grows by one byte every 100 ms never makes progress.
    let mut trickler = connect(&server.addr, "/trickle");
    send_raw(&mut trickler, &frame_header(1 << 10, true));
    let started = Instant::now();
    trickler
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the trickler was never closed"
        );
        let _ = trickler.get_mut().write_all(&[0]);
        match trickler.read() {
            Ok(Message::Close(Some(frame))) => break u16::from(frame.code),
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
    // A 1 MiB update sent in 64 KiB pieces every 150 ms takes 2.4 s, four times the
    // timeout, and arrives: every piece is progress.
    let mut sender = YClient::connect(&server.addr, "slow-upload", 1);
    let mut receiver = YClient::connect(&server.addr, "slow-upload", 2);
    let update = sender.insert_offline(0, &"y".repeat(1 << 20));
    let message = sync_message(2, &update);
    send_raw(&mut sender.ws, &frame_header(message.len() as u64, true));
    for piece in message.chunks(64 << 10) {
        send_raw(&mut sender.ws, piece);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(receiver.pump_until(WAIT, |c| c.text().len() == 1 << 20));
}

#[test]
fn the_node_bounds_bytes_held_in_incomplete_messages() {
    // 1 MiB over the node: connections each holding 300 KiB of a 2 MiB frame.
    let server = Server::start("[websocket]\nincomplete_bytes_max = 1048576\n");
    let mut holders: Vec<Ws> = Vec::new();
    let refused = loop {
        assert!(holders.len() < 8, "never refused");
        let mut ws = connect(&server.addr, &format!("/holder-{}", holders.len()));
        send_raw(&mut ws, &frame_header(2 << 20, true));
        send_raw(&mut ws, &vec![0u8; 300 << 10]);
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        match ws.read() {
            // Sync step 1, the first thing an admitted client gets.
            Ok(Message::Binary(_)) => {}
            other => panic!("{other:?}"),
        }
        match ws.read() {
            Ok(Message::Close(Some(frame))) => break (u16::from(frame.code), frame.reason),
            Ok(other) => panic!("{other:?}"),
            Err(_) => holders.push(ws),
        }
    };
    assert_eq!(refused.0, 1013, "{}", refused.1);
    assert!(refused.1.contains("try again later"), "{}", refused.1);
    assert!(
        (1..=3).contains(&holders.len()),
        "{} held before",
        holders.len()
    );
    let (closes, _) = server.metric("incomplete_bytes_closes_total");
    assert_eq!(closes, 1);
    // The connections that got in first are still open, and once they go, room is back.
    for ws in &mut holders {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match ws.read() {
            Err(e) if read_timed_out(&e) => {}
            other => panic!("still open, nothing sent, but got {other:?}"),
        }
    }
    drop(holders);
    std::thread::sleep(Duration::from_millis(200));
    let mut sender = YClient::connect(&server.addr, "after", 1);
    let mut receiver = YClient::connect(&server.addr, "after", 2);
    sender.insert(0, &"z".repeat(300 << 10));
    assert!(receiver.pump_until(WAIT, |c| c.text().len() == 300 << 10));
}

#[test]
fn the_message_rate_closes_a_flood_and_heavy_messages_count_more() {
    let server = Server::start("[websocket]\nmessages_per_second = 500\nmessages_burst = 2000\n");
    let mut writer = YClient::connect(&server.addr, "rated", 1);
    writer.insert(0, &"w".repeat(1 << 10));
    // 200 step 1s weigh 3,200 tokens: past the burst of 2,000 however fast they are read.
    let mut flood = connect(&server.addr, "/rated");
    for _ in 0..200 {
        flood
            .write(Message::Binary(sync_message(0, &[0]).into()))
            .unwrap();
    }
    flood.flush().unwrap();
    let (code, reason) = expect_close(&mut flood);
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("message rate"), "{reason}");
    // 100 step 1s (1,600 tokens) are within the burst.
    let mut polite = connect(&server.addr, "/rated");
    for _ in 0..100 {
        polite
            .write(Message::Binary(sync_message(0, &[0]).into()))
            .unwrap();
    }
    polite.flush().unwrap();
    let mut answers = 0;
    polite
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while answers < 100 {
        match polite.read().unwrap() {
            Message::Binary(b) if b[..2] == [0, 1] => answers += 1,
            Message::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // The document's writer never noticed.
    writer.insert(0, "!");
    let mut check = YClient::connect(&server.addr, "rated", 3);
    assert!(check.pump_until(WAIT, |c| c.text().starts_with('!')));
}

#[test]
fn documents_and_awareness_states_are_bounded_and_refusals_change_nothing() {
    let server = Server::start(
        "[documents]\ndocument_bytes_max = 65536\nawareness_state_bytes_max = 1024\n",
    );
    let mut a = YClient::connect(&server.addr, "sized", 1);
    a.insert(0, &"a".repeat(40 << 10));
    let mut b = YClient::connect(&server.addr, "sized", 2);
    assert!(b.pump_until(WAIT, |c| c.text().len() == 40 << 10));
    a.insert(0, &"b".repeat(40 << 10));
    let (code, reason) = expect_close(&mut a.ws);
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("document too large"), "{reason}");
    let mut joiner = YClient::connect(&server.addr, "sized", 3);
    assert!(joiner.pump_until(WAIT, |c| c.text() == "a".repeat(40 << 10)));

    let awareness = |state: &str| {
        let mut update = Vec::new();
        var(&mut update, 1);
        var(&mut update, 77);
        var(&mut update, 1);
        var(&mut update, state.len() as u64);
        update.extend_from_slice(state.as_bytes());
        let mut m = vec![1];
        var(&mut m, update.len() as u64);
        m.extend_from_slice(&update);
        m
    };
    let big = format!("{{\"name\":\"{}\"}}", "n".repeat(1100));
    b.send(awareness(&big));
    let (code, reason) = expect_close(&mut b.ws);
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("awareness state too large"), "{reason}");
}

#[test]
fn an_overlong_message_type_is_refused_and_a_step2_reaches_peers_as_an_update() {
    let server = Server::start("");
    let mut a = YClient::connect(&server.addr, "encoded", 1);
    let mut b = YClient::connect(&server.addr, "encoded", 2);
    let update = a.insert_offline(0, "edit");
    // Type 0 written as two bytes: decoders elsewhere read it as a sync message.
    let mut overlong = vec![0x80, 0x00];
    overlong.extend_from_slice(&sync_message(2, &update)[1..]);
    let mut sneaky = connect(&server.addr, "/encoded");
    sneaky.send(Message::Binary(overlong.into())).unwrap();
    let (code, reason) = expect_close(&mut sneaky);
    assert_eq!(code, 1007, "{reason}");
    // A step 2 from `a` reaches `b` as a plain update message.
    a.send(sync_message(1, &update));
    b.ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let relayed = loop {
        match b.ws.read().unwrap() {
            Message::Binary(m) if m[..2] == [0, 2] => break m,
            // The server's step 1 and its answer to b's own.
            Message::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(relayed.to_vec(), sync_message(2, &update));
}

#[test]
fn memory_freed_after_a_spike_stops_counting_against_the_budget() {
    // High-water mark at 40 % of 96 MiB, 38 MiB; the idle node uses about 16.
    let server = Server::start(
        "[node]\nmemory_budget_bytes = 100663296\nhigh_water_percent = 40\n[documents]\ngrace_period_ms = 100\n",
    );
    let health = |server: &Server| server.get("/health");
    assert!(health(&server).contains("healthy"), "{}", health(&server));
    // 40 documents, 200 updates of about 4 KB each: many heap allocations of middling
    // size, which the allocator keeps when they are freed.
    let mut clients: Vec<YClient> = (0..40)
        .map(|i| YClient::connect(&server.addr, &format!("big-{i}"), i + 1))
        .collect();
    for round in 0..200 {
        for c in clients.iter_mut() {
            c.insert(0, &"q".repeat(4000 + (round % 7) * 100));
        }
    }
    server.wait_for("overloaded", WAIT, |s| {
        let h = health(s);
        status(&h) == 503 && h.contains("overloaded")
    });
    let during = server.rss_kib();
    drop(clients);
    // The documents go after their grace period; the memory they held must stop counting.
    server.wait_for("healthy again", WAIT, |s| health(s).contains("healthy"));
    let after = server.rss_kib();
    assert!(
        after < during && after < 38 * 1024,
        "RSS {during} KiB during the spike, {after} KiB after"
    );
}

#[test]
fn a_client_that_stops_reading_a_whole_document_is_cut_off() {
    // The step 2 for a joiner is one 12 MiB frame: larger than the outbound budget, which
    // a frame being written is exempt from, so only its not moving tells.
    let server = Server::start(
        "[websocket]\nmessage_timeout_ms = 600\nclose_timeout_ms = 500\nping_interval_ms = 20000\nidle_timeout_ms = 60000\n",
    );
    let mut writer = YClient::connect(&server.addr, "big", 1);
    writer.insert(0, &"b".repeat(12 << 20));
    let mut check = YClient::connect(&server.addr, "big", 2);
    assert!(check.pump_until(WAIT, |c| c.text().len() == 12 << 20));
    let mut stalled = connect(&server.addr, "/big");
    stalled
        .send(Message::Binary(sync_message(0, &[0]).into()))
        .unwrap();
    server.wait_for("the stalled reader to be cut off", WAIT, |s| {
        s.metric("slow_consumer_closes_total").0 >= 1
    });
    // Its socket is then shut down: reading what was sent ends, well before the idle timeout.
    let started = Instant::now();
    let socket = stalled.get_mut();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(socket, &mut sink) {
            Ok(0) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server stopped sending but never shut the socket down")
            }
            Err(_) => break, // reset: shut down with bytes unread
            Ok(_) => assert!(started.elapsed() < WAIT, "never shut down"),
        }
    }
    // The document and its other readers go on.
    writer.insert(0, "!");
    assert!(check.pump_until(WAIT, |c| c.text().starts_with('!')));
}
