//! The Hocuspocus framing against the real binary, with the client in `common::hocuspocus`
//! (written from the wire facts). The real `@hocuspocus/provider` packages are driven from
//! `tests/js`.

mod common;

use common::hocuspocus::*;
use common::{dev_token, editor_token, var, Server, YClient};
use std::time::{Duration, Instant};
use tungstenite::Message;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

const WAIT: Duration = Duration::from_secs(10);

fn one_shard() -> Server {
    Server::start_with("", &["--shards", "1"])
}

#[test]
fn two_documents_on_one_socket_sync_and_every_change_is_acknowledged() {
    let server = one_shard();
    let token = editor_token();
    let mut a = HClient::connect(&server.addr, "/");
    let mut b = HClient::connect(&server.addr, "/");
    for (c, id) in [(&mut a, 1), (&mut b, 2)] {
        c.attach("d1", token, id);
        c.attach("d2", token, id + 10);
    }
    for c in [&mut a, &mut b] {
        assert!(c.pump_until(WAIT, |c| ["d1", "d2"].iter().all(|d| {
            let s = c.doc(d);
            // The client's step 2 (answering the server's step 1) is acknowledged too.
            s.synced && s.applied >= 1
        })));
        assert_eq!(c.doc("d1").scope.as_deref(), Some("read-write"));
    }
    for i in 0..50 {
        a.insert("d1", 0, "a");
        b.insert("d2", 0, "b");
        if i % 10 == 0 {
            a.insert("d2", 0, "x");
        }
    }
    let done = |c: &HClient| c.text("d1").len() == 50 && c.text("d2").len() == 55;
    assert!(
        a.pump_until(WAIT, done),
        "a: {} / {}",
        a.text("d1"),
        a.text("d2")
    );
    assert!(
        b.pump_until(WAIT, done),
        "b: {} / {}",
        b.text("d1"),
        b.text("d2")
    );
    assert_eq!(a.text("d2"), b.text("d2"));
    // Every update acknowledged once integrated: 50 on d1 and 5 on d2, plus each step 2.
    assert!(a.pump_until(WAIT, |c| c.doc("d1").applied == 51
        && c.doc("d2").applied == 6));
    assert!(b.pump_until(WAIT, |c| c.doc("d2").applied == 51));
    assert_eq!(a.doc("d1").refused + b.doc("d2").refused, 0);
}

#[test]
fn a_y_websocket_client_and_a_hocuspocus_client_share_one_room() {
    let server = one_shard();
    let mut h = HClient::connect(&server.addr, "/");
    h.attach("shared", editor_token(), 5);
    assert!(h.pump_until(WAIT, |c| c.doc("shared").synced));
    let mut y = YClient::connect(&server.addr, "shared", 6);
    h.insert("shared", 0, "from hocuspocus ");
    y.insert(0, "from y-websocket ");
    let both = |t: &str| t.contains("from hocuspocus") && t.contains("from y-websocket");
    assert!(y.pump_until(WAIT, |y| both(&y.text())), "{}", y.text());
    assert!(h.pump_until(WAIT, |h| both(&h.text("shared"))));
    assert_eq!(y.text(), h.text("shared"));
}

#[test]
fn a_refused_document_leaves_the_socket_and_its_other_documents_open() {
    let server = one_shard();
    let limited = dev_token(serde_json::json!({ "docs": ["mine-*"] }));
    let mut c = HClient::connect(&server.addr, "/");
    c.attach("mine-1", &limited, 1);
    c.attach("theirs", &limited, 2);
    c.attach("bad-token", "not.a.jwt", 3);
    assert!(c.pump_until(WAIT, |c| c.doc("mine-1").synced
        && c.doc("theirs").denied.is_some()
        && c.doc("bad-token").denied.is_some()));
    let denied = c.doc("theirs").denied.clone().unwrap();
    assert!(denied.starts_with("4003 "), "{denied}");
    let invalid = c.doc("bad-token").denied.clone().unwrap();
    assert!(invalid.starts_with("4002 Invalid token"), "{invalid}");
    assert!(c.doc("theirs").scope.is_none() && !c.doc("theirs").synced);
    // Its later messages are dropped; the granted document goes on syncing.
    c.insert("theirs", 0, "dropped");
    c.insert("mine-1", 0, "kept");
    assert!(c.pump_until(WAIT, |c| c.doc("mine-1").applied >= 2));
    let mut other = HClient::connect(&server.addr, "/");
    other.attach("mine-1", &limited, 9);
    assert!(other.pump_until(WAIT, |c| c.text("mine-1") == "kept"));
    // A token granting it later opens it on the same socket.
    c.attach("theirs", editor_token(), 2);
    assert!(c.pump_until(WAIT, |c| c.doc("theirs").synced));
}

#[test]
fn a_viewer_is_told_readonly_receives_and_its_updates_are_refused() {
    let server = one_shard();
    let viewer = dev_token(serde_json::json!({ "role": "viewer" }));
    let mut v = HClient::connect(&server.addr, "/");
    v.attach("doc", &viewer, 1);
    let mut e = HClient::connect(&server.addr, "/");
    e.attach("doc", editor_token(), 2);
    assert!(v.pump_until(WAIT, |c| c.doc("doc").synced));
    assert_eq!(v.doc("doc").scope.as_deref(), Some("readonly"));
    assert!(e.pump_until(WAIT, |c| c.doc("doc").synced));
    v.insert("doc", 0, "no");
    assert!(v.pump_until(WAIT, |c| c.doc("doc").refused == 1));
    e.insert("doc", 0, "yes");
    assert!(v.pump_until(WAIT, |c| c.text("doc").contains("yes")));
    assert!(e.pump_until(WAIT, |c| c.doc("doc").applied >= 2));
    assert_eq!(
        e.text("doc"),
        "yes",
        "the viewer's edit never reached the editor"
    );
}

#[test]
fn stateless_messages_reach_the_others_and_close_detaches_one_document() {
    let server = one_shard();
    let mut a = HClient::connect(&server.addr, "/");
    let mut b = HClient::connect(&server.addr, "/");
    a.attach("room", editor_token(), 1);
    b.attach("room", editor_token(), 2);
    b.attach("other", editor_token(), 3);
    assert!(a.pump_until(WAIT, |c| c.doc("room").synced));
    assert!(b.pump_until(WAIT, |c| c.doc("room").synced && c.doc("other").synced));
    let mut body = Vec::new();
    var_string(&mut body, br#"{"type":"ping"}"#);
    a.send(message("room", 5, &body));
    assert!(b.pump_until(WAIT, |c| c.doc("room").stateless == [r#"{"type":"ping"}"#]));
    // b detaches "room": told so, and a's edits no longer reach it; "other" stays.
    b.send(message("room", 7, &[]));
    assert!(b.pump_until(WAIT, |c| c.doc("room").closed.is_some()));
    assert_eq!(b.doc("room").closed.as_deref(), Some("provider_initiated"));
    a.insert("room", 0, "after");
    b.insert("other", 0, "still here");
    assert!(b.pump_until(WAIT, |c| c.doc("other").applied >= 2));
    assert_eq!(b.text("room"), "");
}

fn stateless(address: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    var_string(&mut body, text.as_bytes());
    message(address, 5, &body)
}

#[test]
fn side_messages_cross_framings_and_design_comments_come_back_completed() {
    // Two shards: whichever accepts the Hocuspocus socket, the document may live on the
    // other (side messages then go over the link).
    let server = Server::start_with("", &["--shards", "2"]);
    for document in ["room-1", "room-2"] {
        let mut h = HClient::connect(&server.addr, "/");
        h.attach(document, editor_token(), 1);
        assert!(h.pump_until(WAIT, |c| c.doc(document).synced));
        let mut y = common::connect(&server.addr, &format!("/{document}"));
        // y-websocket text → Hocuspocus Stateless, exactly as sent.
        let cursor = r#"{"type":"cursor", "x": 1}"#;
        y.send(Message::Text(cursor.into())).unwrap();
        assert!(h.pump_until(WAIT, |c| c.doc(document).stateless == [cursor]));
        // A design comment from the Hocuspocus side comes back to it and to y completed.
        h.send(stateless(
            document,
            r#"{"type":"design-comment:add","content":"why?","xPercent":50,"yPercent":10}"#,
        ));
        let added = common::next_text(&mut y, WAIT).expect("y got the comment");
        let added: serde_json::Value = serde_json::from_str(&added).unwrap();
        assert_eq!(added["type"], "design-comment:added");
        assert_eq!(added["content"], "why?");
        assert_eq!(added["user"], serde_json::json!({"sub": "test"}));
        assert!(added["id"].as_str().unwrap().starts_with("cmt_"), "{added}");
        assert!(
            added["createdAt"].as_str().unwrap().ends_with('Z'),
            "{added}"
        );
        assert!(h.pump_until(WAIT, |c| c.doc(document).stateless.len() == 2));
        let echoed: serde_json::Value =
            serde_json::from_str(&h.doc(document).stateless[1]).unwrap();
        assert_eq!(
            echoed, added,
            "the sender gets the same comment, with its id"
        );
        // Not JSON: this document is closed (1007), the socket stays.
        h.send(stateless(document, "not json"));
        assert!(h.pump_until(WAIT, |c| c.doc(document).closed.is_some()));
        let closed = h.doc(document).closed.clone().unwrap();
        assert!(closed.starts_with("1007 "), "{closed}");
        h.attach("still-open", editor_token(), 2);
        assert!(h.pump_until(WAIT, |c| c.doc("still-open").synced));
    }
}

#[test]
fn messages_before_a_token_are_queued_then_applied_and_the_queue_is_bounded() {
    let server = Server::start_with(
        "[hocuspocus]\npending_messages_max = 20\n",
        &["--shards", "1"],
    );
    // Sent before its token: applied once the token arrives.
    let mut c = HClient::connect(&server.addr, "/");
    c.docs.insert(
        "early".into(),
        DocState {
            doc: yrs::Doc::with_client_id(1),
            ..Default::default()
        },
    );
    c.insert("early", 0, "queued");
    c.send(auth_token("early", editor_token(), None));
    assert!(c.pump_until(WAIT, |c| c.doc("early").applied == 1));
    let mut reader = HClient::connect(&server.addr, "/");
    reader.attach("early", editor_token(), 2);
    assert!(reader.pump_until(WAIT, |c| c.text("early") == "queued"));
    // Past the bound the socket is closed, and says why.
    let mut flood = HClient::connect(&server.addr, "/");
    for _ in 0..21 {
        flood.send(message("never-authenticated", 3, &[]));
    }
    let (code, reason) = flood.expect_socket_close();
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("before a document's token"), "{reason}");
}

#[test]
fn broadcast_stateless_and_undecodable_messages_close_the_socket() {
    let server = one_shard();
    let mut c = HClient::connect(&server.addr, "/");
    let mut body = Vec::new();
    var_string(&mut body, b"{}");
    c.send(message("d", 6, &body));
    let (code, reason) = c.expect_socket_close();
    assert_eq!(
        (code, reason.as_str()),
        (
            1008,
            "broadcast-stateless messages are not accepted from clients"
        )
    );
    let mut c = HClient::connect(&server.addr, "/");
    c.send(vec![0x05, b'a']);
    assert_eq!(c.expect_socket_close().0, 1007);
    let mut c = HClient::connect(&server.addr, "/");
    c.ws.send(Message::Text("hello".into())).unwrap();
    assert_eq!(c.expect_socket_close().0, 1003);
}

#[test]
fn the_documents_of_one_socket_are_bounded() {
    let server = Server::start_with("[hocuspocus]\ndocuments_max = 3\n", &["--shards", "1"]);
    let mut c = HClient::connect(&server.addr, "/");
    for (i, d) in ["a", "b", "c"].iter().enumerate() {
        c.attach(d, editor_token(), i as u64 + 1);
    }
    assert!(c.pump_until(WAIT, |c| ["a", "b", "c"].iter().all(|d| c.doc(d).synced)));
    c.attach("d", editor_token(), 4);
    let (code, reason) = c.expect_socket_close();
    assert_eq!(code, 1008);
    assert_eq!(reason, "too many documents on one socket: at most 3");
}

#[test]
fn a_configured_path_speaks_the_framing_and_a_document_path_stays_y_websocket() {
    let server = Server::start_with("[hocuspocus]\npath = \"/collab\"\n", &["--shards", "1"]);
    let mut c = HClient::connect(&server.addr, "/collab");
    c.attach("doc", editor_token(), 1);
    assert!(c.pump_until(WAIT, |c| c.doc("doc").synced));
    // A path naming a document is a y-websocket connection.
    let mut y = YClient::connect(&server.addr, "doc2", 2);
    y.insert(0, "y");
    assert!(y.pump_until(WAIT, |y| y.text() == "y"));
}

fn owner(name: &str, shards: usize) -> usize {
    let key = wiresocket::sync::document::isolation_key("dev", "dev", name);
    wiresocket::sync::document::owner_shard(&key, shards)
}

#[test]
fn the_documents_of_one_socket_live_on_every_shard_and_stay_one_room_each() {
    let server = Server::start("");
    let names: Vec<String> = (0..8).map(|i| format!("doc-{i}")).collect();
    assert!(
        (0..2).all(|s| names.iter().any(|n| owner(n, 2) == s)),
        "the names spread over both shards"
    );
    // Each socket stays on the shard that accepted it; half its documents are elsewhere.
    let mut a = HClient::connect(&server.addr, "/");
    let mut b = HClient::connect(&server.addr, "/");
    for (i, name) in names.iter().enumerate() {
        a.attach(name, editor_token(), 100 + i as u64);
        b.attach(name, editor_token(), 200 + i as u64);
    }
    for c in [&mut a, &mut b] {
        assert!(c.pump_until(WAIT, |c| names.iter().all(|n| {
            let d = c.doc(n);
            d.synced && d.applied >= 1 && d.scope.as_deref() == Some("read-write")
        })));
    }
    for (i, name) in names.iter().enumerate() {
        for k in 0..10 {
            a.insert(name, 0, &format!("a{i}{k} "));
            b.insert(name, 0, &format!("b{i}{k} "));
        }
    }
    let converged = |c: &HClient| {
        names
            .iter()
            .all(|n| c.text(n).matches('a').count() == 10 && c.text(n).matches('b').count() == 10)
    };
    assert!(a.pump_until(WAIT, converged));
    assert!(b.pump_until(WAIT, converged));
    for name in &names {
        assert_eq!(a.text(name), b.text(name));
    }
    // Every update acknowledged, wherever its document lives.
    let acked = |c: &HClient| names.iter().all(|n| c.doc(n).applied == 11);
    assert!(a.pump_until(WAIT, acked));
    assert!(b.pump_until(WAIT, acked));
    // A y-websocket client of each document (handed to its owner) is in the same room.
    for name in &names {
        let mut y = YClient::connect(&server.addr, name, 7);
        assert!(y.pump_until(WAIT, |y| y.text() == a.text(name)));
        y.insert(0, "y ");
        assert!(a.pump_until(WAIT, |c| c.text(name).starts_with("y ")));
    }
}

#[test]
fn a_document_refused_or_closed_on_its_owner_shard_leaves_the_others_open() {
    let server = Server::start("");
    let names: Vec<String> = (0..8).map(|i| format!("full-{i}")).collect();
    let one_user = dev_token(serde_json::json!({ "limits": { "maxUsersPerDoc": 1 } }));
    let mut first = HClient::connect(&server.addr, "/");
    let mut second = HClient::connect(&server.addr, "/");
    for (i, name) in names.iter().enumerate() {
        first.attach(name, &one_user, 1 + i as u64);
    }
    assert!(first.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).synced)));
    for (i, name) in names.iter().enumerate() {
        second.attach(name, &one_user, 50 + i as u64);
    }
    assert!(second.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).denied.is_some())));
    for name in &names {
        let denied = second.doc(name).denied.clone().unwrap();
        assert_eq!(denied, "4008 Document user limit exceeded: 1", "{name}");
    }
    // A document closed by a refused message (a malformed update), wherever it lives: the
    // others on the socket go on.
    for name in &names {
        first.send(sync(name, 2, &[0xff, 0xff]));
    }
    assert!(first.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).closed.is_some())));
    let reason = first.doc(&names[0]).closed.clone().unwrap();
    assert!(reason.starts_with("1007 "), "{reason}");
    first.attach("after", editor_token(), 99);
    assert!(first.pump_until(WAIT, |c| c.doc("after").synced));
}

#[test]
fn a_v4_provider_gets_in_band_pings_and_an_older_one_none() {
    let server = Server::start_with(
        "[websocket]\nping_interval_ms = 200\nidle_timeout_ms = 10000\n",
        &["--shards", "1"],
    );
    let mut v4 = HClient::connect(&server.addr, "/");
    v4.attach("d", editor_token(), 1);
    let mut v3 = HClient::connect(&server.addr, "/");
    v3.docs.insert(
        "d".into(),
        DocState {
            doc: yrs::Doc::with_client_id(2),
            ..Default::default()
        },
    );
    v3.send(auth_token("d", editor_token(), None));
    // Every half interval (100 ms), answered with pongs, and the socket stays usable.
    assert!(v4.pump_until(WAIT, |c| c.pings >= 3));
    v4.insert("d", 0, "after pings");
    assert!(v4.pump_until(WAIT, |c| c.doc("d").applied >= 2));
    // A provider that announced no version (v3 and older) would fail on `09`.
    assert!(!v3.pump_until(Duration::from_millis(600), |c| c.pings > 0));
    assert!(v3.doc("d").scope.is_some());
}

#[test]
fn a_socket_that_opens_no_document_is_closed_after_the_auth_timeout() {
    let server = Server::start_with("[hocuspocus]\nauth_timeout_ms = 300\n", &["--shards", "1"]);
    // Nothing but pongs: closed.
    let mut silent = HClient::connect(&server.addr, "/");
    silent.send(vec![10]);
    let started = Instant::now();
    let (code, reason) = silent.expect_socket_close();
    assert_eq!(code, 1008);
    assert!(
        reason.starts_with("no document authenticated within 300 ms"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Only refused documents: closed too.
    let mut refused = HClient::connect(&server.addr, "/");
    refused.attach("d", "not.a.jwt", 1);
    assert_eq!(refused.expect_socket_close().0, 1008);
    assert!(refused.doc("d").denied.is_some());
    // An open document keeps the socket; closing it starts the clock again.
    let mut open = HClient::connect(&server.addr, "/");
    open.attach("d", editor_token(), 2);
    assert!(open.pump_until(WAIT, |c| c.doc("d").synced));
    assert!(!open.pump_until(Duration::from_millis(800), |c| c.doc("d").closed.is_some()));
    open.send(message("d", 7, &[]));
    let (code, _) = open.expect_socket_close();
    assert_eq!(code, 1008);
    assert_eq!(open.doc("d").closed.as_deref(), Some("provider_initiated"));
}

#[test]
fn many_documents_authenticating_at_once_all_open() {
    let server = Server::start("");
    let mut c = HClient::connect(&server.addr, "/");
    // More than the socket's checks in flight: the rest wait for a place, none is dropped.
    let names: Vec<String> = (0..30).map(|i| format!("many-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        c.attach(name, editor_token(), 1 + i as u64);
    }
    assert!(c.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).synced)));
    assert!(names.iter().all(|n| c.doc(n).denied.is_none()));
}

#[test]
fn awareness_is_relayed_echoed_to_its_sender_and_answered_to_a_query() {
    let server = one_shard();
    let mut a = HClient::connect(&server.addr, "/");
    let mut b = HClient::connect(&server.addr, "/");
    a.attach("room", editor_token(), 1);
    b.attach("room", editor_token(), 2);
    assert!(a.pump_until(WAIT, |c| c.doc("room").synced));
    assert!(b.pump_until(WAIT, |c| c.doc("room").synced));
    let mut update = Vec::new();
    var(&mut update, 1); // one entry: client 1, clock 1, its state
    var(&mut update, 1);
    var(&mut update, 1);
    var_string(&mut update, br#"{"user":"a"}"#);
    let mut body = Vec::new();
    var_string(&mut body, &update);
    a.send(message("room", 1, &body));
    // Echoed to its sender (the provider's sign of life) and relayed to the others.
    assert!(a.pump_until(WAIT, |c| c.doc("room").awareness >= 1));
    assert!(b.pump_until(WAIT, |c| c.doc("room").awareness >= 1));
    let before = b.doc("room").awareness;
    b.send(message("room", 3, &[]));
    assert!(b.pump_until(WAIT, |c| c.doc("room").awareness > before));
}

#[test]
fn session_addresses_share_their_documents_room_each_answered_on_its_own_address() {
    // A v4 provider with `sessionAwareness` names a document `name\0session`.
    let server = Server::start("");
    let addresses = ["doc\0s1", "doc\0s2", "doc"];
    let mut clients: Vec<HClient> = addresses
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let mut c = HClient::connect(&server.addr, "/");
            c.attach(address, editor_token(), 1 + i as u64);
            c
        })
        .collect();
    for (c, address) in clients.iter_mut().zip(addresses) {
        // Every answer comes on the client's own address (`handle` fails on any other).
        assert!(c.pump_until(WAIT, |c| c.doc(address).synced
            && c.doc(address).applied >= 1));
    }
    for (i, (c, address)) in clients.iter_mut().zip(addresses).enumerate() {
        c.insert(address, 0, &format!("[{i}]"));
    }
    let mut y = YClient::connect(&server.addr, "doc", 9);
    assert!(y.pump_until(WAIT, |y| y.text().len() == 9), "{}", y.text());
    for (c, address) in clients.iter_mut().zip(addresses) {
        assert!(c.pump_until(WAIT, |c| c.text(address) == y.text()));
        assert!(c.pump_until(WAIT, |c| c.doc(address).applied == 2));
    }
}

/// A development token living `ttl_s` seconds, with extra claims.
fn token_for(ttl_s: u64, claims: serde_json::Value) -> String {
    let directory =
        wiresocket::auth::directory::Directory::from_config(&wiresocket::config::Config::default())
            .unwrap();
    directory.mint("dev", "test", ttl_s, claims).unwrap()
}

#[test]
fn the_server_asks_for_a_new_token_when_one_expires_and_applies_its_role() {
    // No leeway: a token is expired the second its `exp` passes.
    let server = Server::start_with("[auth]\nleeway_s = 0\n", &["--shards", "1"]);
    let short = token_for(2, serde_json::Value::Null);
    let mut c = HClient::connect(&server.addr, "/");
    c.attach("d", &short, 1);
    assert!(c.pump_until(WAIT, |c| c.doc("d").synced));
    assert_eq!(c.doc("d").token_requests, 0);
    // At its expiry the provider is asked for its token, once.
    assert!(c.pump_until(Duration::from_secs(8), |c| c.doc("d").token_requests == 1));
    // A provider with a fixed token answers with the expired one: the session outlives it.
    c.send(auth_token("d", &short, Some("4.8.0")));
    assert!(!c.pump_until(Duration::from_millis(500), |c| c.doc("d").denied.is_some()));
    c.insert("d", 0, "still");
    assert!(c.pump_until(WAIT, |c| c.doc("d").applied == 2));
    assert_eq!(c.doc("d").token_requests, 1, "asked once per token");
    // A refreshed token's role applies: a viewer's update is refused from then on. The
    // refresh is checked as a task of its own, so until it is done an update still goes in
    // with the editor's role: insert until one is refused, not after a guessed pause.
    let viewer = token_for(600, serde_json::json!({ "role": "viewer" }));
    c.send(auth_token("d", &viewer, Some("4.8.0")));
    let sent = Instant::now();
    loop {
        let answered = c.doc("d").applied + c.doc("d").refused;
        c.insert("d", 0, "no");
        assert!(c.pump_until(WAIT, |c| c.doc("d").applied + c.doc("d").refused > answered));
        if c.doc("d").refused == 1 {
            break;
        }
        assert!(sent.elapsed() < WAIT, "the viewer's role never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One that does not grant the document closes it.
    let other = token_for(600, serde_json::json!({ "docs": ["elsewhere"] }));
    c.send(auth_token("d", &other, Some("4.8.0")));
    assert!(c.pump_until(WAIT, |c| c.doc("d").denied.is_some()));
    let denied = c.doc("d").denied.clone().unwrap();
    assert!(denied.starts_with("4003 "), "{denied}");
}

#[test]
fn a_linked_document_behind_its_integration_pauses_its_socket_and_loses_nothing() {
    // One pending update makes a room lag: every burst of a writer on another shard finds
    // its document behind, so its messages wait in the owner's backlog while its socket is
    // not read.
    let server = Server::start("[documents]\npending_updates_max = 1\n");
    let names: Vec<String> = (0..6).map(|i| format!("lag-{i}")).collect();
    let mut writer = HClient::connect(&server.addr, "/");
    let mut reader = HClient::connect(&server.addr, "/");
    for (i, name) in names.iter().enumerate() {
        writer.attach(name, editor_token(), 1 + i as u64);
        reader.attach(name, editor_token(), 50 + i as u64);
    }
    assert!(writer.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).synced)));
    assert!(reader.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).synced)));
    for k in 0..100 {
        for name in &names {
            writer.insert(name, 0, &format!("{k} "));
        }
    }
    let whole = |c: &HClient| names.iter().all(|n| c.text(n).matches(' ').count() == 100);
    assert!(reader.pump_until(Duration::from_secs(30), whole));
    assert!(writer.pump_until(WAIT, |c| names.iter().all(|n| c.doc(n).applied == 101)));
    for name in &names {
        assert_eq!(writer.text(name), reader.text(name));
    }
    let (pauses, _) = server.metric("link_pauses_total");
    assert!(pauses > 0, "the backlog was never used");
}

#[test]
fn one_socket_naming_a_document_by_two_addresses_in_one_read_keeps_it_whole() {
    // Two session addresses of one document on one socket are two subscribers of its room;
    // their messages of one read must not upset the room (they once reset it).
    let server = one_shard();
    let mut c = HClient::connect(&server.addr, "/");
    c.attach("doc\0a", editor_token(), 1);
    c.attach("doc\0b", editor_token(), 2);
    assert!(c.pump_until(WAIT, |c| c.doc("doc\0a").synced && c.doc("doc\0b").synced));
    let mut y = YClient::connect(&server.addr, "doc", 9);
    for k in 0..20 {
        let first = c.edit("doc\0a", 0, &format!("a{k} "));
        let second = c.edit("doc\0b", 0, &format!("b{k} "));
        let sv = c.docs["doc\0b"].doc.transact().state_vector().encode_v1();
        c.send_together(vec![first, second, sync("doc\0b", 0, &sv)]);
    }
    assert!(
        y.pump_until(WAIT, |y| y.text().matches(' ').count() == 40),
        "{}",
        y.text()
    );
    assert!(c.pump_until(WAIT, |c| c.text("doc\0a") == y.text()
        && c.text("doc\0b") == y.text()));
    assert!(c.pump_until(WAIT, |c| c.doc("doc\0a").applied == 21
        && c.doc("doc\0b").applied == 21));
    assert!(c.doc("doc\0a").closed.is_none());
}

#[test]
fn one_socket_names_one_document_by_a_bounded_number_of_sessions() {
    let server = one_shard();
    let mut c = HClient::connect(&server.addr, "/");
    let addresses: Vec<String> = (0..5).map(|i| format!("doc\0s{i}")).collect();
    for (i, address) in addresses.iter().enumerate() {
        c.attach(address, editor_token(), 1 + i as u64);
    }
    assert!(c.pump_until(WAIT, |c| addresses[..4].iter().all(|a| c.doc(a).synced)));
    assert!(c.pump_until(WAIT, |c| c.doc(&addresses[4]).denied.is_some()));
    let denied = c.doc(&addresses[4]).denied.clone().unwrap();
    assert_eq!(
        denied,
        "1008 too many sessions of one document on one socket: at most 4"
    );
    // Another document, and the same one on another socket, are not affected.
    c.attach("other\0s0", editor_token(), 10);
    assert!(c.pump_until(WAIT, |c| c.doc("other\0s0").synced));
    let mut d = HClient::connect(&server.addr, "/");
    d.attach("doc\0s9", editor_token(), 11);
    assert!(d.pump_until(WAIT, |c| c.doc("doc\0s9").synced));
}
