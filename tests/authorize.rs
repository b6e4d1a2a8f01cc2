//! The authorization callback (PRODUCT.md 9.4) against a real receiver on loopback
//! (`tests/py/webhook_receiver.py authorize`, which checks every call's signature with its own
//! code), in both framings: allow, deny with a reason, a viewer downgrade, no answer in time,
//! a 5xx or a malformed answer (1013, never a yes), one call per user and document.

mod common;

use common::hocuspocus::HClient;
use common::receiver::{Receiver, RECEIVER, SECRET};
use common::{connect_raw, expect_close, read_timed_out, Server, YClient};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A receiver answering as `answers` says (by the token's `sub`, `"*"` for others); the
/// answers can be changed while it runs.
struct Callback {
    receiver: Receiver,
    answers: common::TempDir,
}

impl Callback {
    fn start(answers: Value) -> Callback {
        let dir = common::TempDir::new("authorize");
        let callback = |path: &std::path::Path| {
            Receiver::start_with(&[RECEIVER, "authorize", SECRET, path.to_str().unwrap()])
        };
        let file = dir.path().join("answers.json");
        std::fs::write(&file, answers.to_string()).unwrap();
        Callback {
            receiver: callback(&file),
            answers: dir,
        }
    }

    fn answer(&self, answers: Value) {
        let file = self.answers.path().join("answers.json");
        std::fs::write(&file, answers.to_string()).unwrap();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/authorize", self.receiver.port)
    }

    /// The calls seen so far, each checked: signed as the receiver verifies, the documented
    /// body.
    fn calls(&self) -> Vec<Value> {
        let mut calls = Vec::new();
        while let Ok(call) = self.receiver.lines.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(call["verdict"], "ok", "{call}");
            assert_eq!(call["path"], "/authorize");
            let body = &call["body"];
            assert_eq!(body["type"], "connection.authorize");
            assert_eq!(body["tenantId"], "acme");
            assert_eq!(body["appId"], "web");
            assert_eq!(body["data"]["claims"]["sub"], body["data"]["sub"]);
            assert_eq!(body["data"]["claims"]["appId"], "web");
            calls.push(body.clone());
        }
        calls
    }
}

fn config(callback: &Callback, extra_app: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[rate_limits]
handshakes_per_minute = 1000000
{tenant}
[[apps]]
id = "web"
tenant = "acme"
webhook_secret = "{SECRET}"
webhook_allow_private = true
authorize_url = "{url}"
authorize_timeout_ms = 400
{extra_app}
"#,
        tenant = common::acme_eddsa_tenant(),
        url = callback.url(),
    )
}

/// Tokens of the app `web` for users by `sub`.
struct Tokens(wiresocket::auth::directory::Directory);

impl Tokens {
    fn of(config: &str) -> Tokens {
        Tokens(common::directory(config))
    }

    fn mint(&self, sub: &str, extra: Value) -> String {
        self.0.mint("web", sub, 600, extra).unwrap()
    }

    fn editor(&self, sub: &str) -> String {
        self.mint(sub, Value::Null)
    }
}

fn open(server: &Server, document: &str, token: &str) -> common::Ws {
    connect_raw(&server.addr, &format!("/{document}?token={token}"))
}

/// Handles messages until the server tells this y-websocket client it is read-only.
fn expect_read_only(client: &mut YClient) {
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "not told read-only");
        match client.ws.read() {
            Ok(Message::Binary(b)) if b[0] == 2 => {
                assert_eq!(b.to_vec(), [&[2u8, 0, 9][..], b"read-only"].concat());
                return;
            }
            Ok(Message::Binary(b)) => client.handle(&b),
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

#[test]
fn the_app_allows_denies_and_downgrades_each_user_in_both_framings() {
    let callback = Callback::start(json!({
        "alice": {"body": {"allow": true, "role": "editor"}},
        "bob": {"body": {"allow": false, "reason": "not on this project"}},
        "carol": {"body": {"allow": true, "role": "viewer"}},
        "dave": {"body": {"allow": true, "role": "editor"}},
        "*": {"body": {"allow": false}},
    }));
    let toml = config(&callback, "");
    let tokens = Tokens::of(&toml);
    let server = Server::start(&toml);
    // y-websocket: Alice edits.
    let mut alice = YClient::from_ws(open(&server, "plan", &tokens.editor("alice")), 1);
    alice.insert(0, "by alice");
    // Bob is refused with the app's reason; an unknown user with the default one.
    let (code, reason) = expect_close(&mut open(&server, "plan", &tokens.editor("bob")));
    assert_eq!(
        (code, reason.as_str()),
        (4003, "Forbidden: not on this project")
    );
    let (code, reason) = expect_close(&mut open(&server, "plan", &tokens.editor("eve")));
    assert_eq!(
        (code, reason.as_str()),
        (4003, "Forbidden: not authorized by the application")
    );
    // Carol's editor token is made read-only: she receives, her update is refused.
    let mut carol = YClient::from_ws(open(&server, "plan", &tokens.editor("carol")), 3);
    assert!(carol.pump_until(WAIT, |c| c.text() == "by alice"));
    carol.insert(0, "by carol ");
    expect_read_only(&mut carol);
    // Dave's viewer token stays a viewer, whatever the app says (it can only lower a role).
    let viewer = tokens.mint("dave", json!({"role": "viewer"}));
    let mut dave = YClient::from_ws(open(&server, "plan", &viewer), 4);
    dave.insert(0, "by dave ");
    expect_read_only(&mut dave);
    alice.insert(0, "+");
    // (Dave's own refused edit stays in his copy only.)
    assert!(dave.pump_until(WAIT, |c| c.text().replace("by dave ", "") == "+by alice"));
    assert_eq!(alice.text(), "+by alice", "no refused edit reached Alice");

    // The Hocuspocus framing: the same decisions per document, the socket staying open.
    let mut h = HClient::connect(&server.addr, "/");
    h.attach("notes", &tokens.editor("bob"), 11);
    h.attach("plan", &tokens.editor("carol"), 12);
    h.attach("other", &tokens.editor("alice"), 13);
    assert!(h.pump_until(WAIT, |c| c.doc("notes").denied.is_some()
        && c.doc("plan").synced
        && c.doc("other").synced));
    assert_eq!(
        h.doc("notes").denied.as_deref(),
        Some("4003 Forbidden: not on this project")
    );
    assert_eq!(h.doc("plan").scope.as_deref(), Some("readonly"));
    assert_eq!(h.doc("other").scope.as_deref(), Some("read-write"));
    assert_eq!(h.text("plan"), "+by alice");
    h.insert("plan", 0, "no");
    h.insert("other", 0, "yes");
    assert!(h.pump_until(WAIT, |c| c.doc("plan").refused == 1
        && c.doc("other").applied >= 1));

    // Every call was signed and carried the documented body, once per user and document.
    let calls = callback.calls();
    let asked: Vec<(String, String, String)> = calls
        .iter()
        .map(|b| {
            let text = |v: &Value| v.as_str().unwrap().to_owned();
            (
                text(&b["data"]["sub"]),
                text(&b["document"]),
                text(&b["data"]["role"]),
            )
        })
        .collect();
    let expected = [
        ("alice", "plan", "editor"),
        ("bob", "plan", "editor"),
        ("eve", "plan", "editor"),
        ("carol", "plan", "editor"),
        ("dave", "plan", "viewer"),
        ("bob", "notes", "editor"),
        ("alice", "other", "editor"),
    ];
    for (sub, document, role) in expected {
        let n = asked
            .iter()
            .filter(|a| (a.0.as_str(), a.1.as_str(), a.2.as_str()) == (sub, document, role))
            .count();
        assert_eq!(n, 1, "{sub} {document} {role}: {asked:?}");
    }
    // Carol's Hocuspocus document used the answer kept from her y-websocket connection.
    assert_eq!(asked.len(), expected.len(), "{asked:?}");
    let (denied, _) = server.metric("authorize_denied_total");
    assert_eq!(denied, 3, "bob twice and eve");
}

#[test]
fn no_answer_in_time_a_5xx_or_a_malformed_answer_is_1013_never_a_yes() {
    let callback = Callback::start(json!({"*": {"delay_ms": 3000, "body": {"allow": true}}}));
    let toml = config(&callback, "authorize_cache_s = 0");
    let tokens = Tokens::of(&toml);
    let server = Server::start(&toml);
    let token = tokens.editor("alice");
    let try_again = |ws: &mut common::Ws| {
        let started = Instant::now();
        let (code, reason) = expect_close(ws);
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("try again later"), "{reason}");
        started.elapsed()
    };
    // No answer within authorize_timeout_ms (400).
    let waited = try_again(&mut open(&server, "plan", &token));
    assert!(waited < Duration::from_millis(2_500), "{waited:?}");
    // (Another user: a question asked while the same one is out waits for that call.)
    let bobs = tokens.editor("bob");
    let mut h = HClient::connect(&server.addr, "/");
    h.attach("plan", &bobs, 1);
    assert!(h.pump_until(WAIT, |c| c.doc("plan").denied.is_some()));
    let denied = h.doc("plan").denied.clone().unwrap();
    assert!(denied.starts_with("1013 "), "{denied}");
    // A 5xx, and answers that are not decisions.
    for answer in [
        json!({"status": 503, "body": {"allow": true}}),
        json!({"status": 200, "body": {"allow": "yes"}}),
        json!({"status": 200, "body": {"allow": true, "role": "owner"}}),
        json!({"status": 302, "body": {"allow": true}}),
    ] {
        callback.answer(json!({ "*": answer }));
        try_again(&mut open(&server, "plan", &token));
    }
    server.wait_for("the malformed answers logged", WAIT, |s| {
        s.log()
            .matches("level=error event=authorize_malformed app=acme::web")
            .count()
            == 3
    });
    // The socket stayed open: the document opens once the app answers.
    callback.answer(json!({"*": {"body": {"allow": true}}}));
    h.attach("plan", &bobs, 1);
    assert!(h.pump_until(WAIT, |c| c.doc("plan").synced));
    // Two timeouts (each counted when its call ends, a moment after its client was told),
    // a 503, three malformed.
    server.wait_for("6 errors counted", WAIT, |s| {
        s.metric("authorize_errors_total").0 == 6
    });
}

#[test]
fn a_reconnect_storm_of_one_user_makes_one_call_until_a_reload() {
    let callback = Callback::start(json!({"*": {"delay_ms": 200, "body": {"allow": true}}}));
    let toml = config(&callback, "");
    let tokens = Tokens::of(&toml);
    let server = Server::start(&toml);
    let token = tokens.editor("alice");
    // 16 connections of one user to one document at once, while the first call is out.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (addr, token) = (server.addr.clone(), token.clone());
            std::thread::spawn(move || {
                let ws = connect_raw(&addr, &format!("/plan?token={token}"));
                let mut client = YClient::from_ws(ws, 100 + i);
                client.insert(0, "x");
                assert!(client.pump_until(WAIT, |c| c.text().len() == 16));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let calls = callback.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // Reconnecting, in the other framing too: no call.
    let mut h = HClient::connect(&server.addr, "/");
    h.attach("plan", &token, 1);
    assert!(h.pump_until(WAIT, |c| c.doc("plan").synced));
    YClient::from_ws(open(&server, "plan", &token), 2);
    assert!(callback.calls().is_empty());
    let (cached, _) = server.metric("authorize_cached_total");
    assert_eq!(cached, 17, "15 waited for the first call, 2 reconnected");
    let (made, _) = server.metric("authorize_calls_total");
    assert_eq!(made, 1);
    // A reload forgets the answers: the app is asked again.
    server.reload();
    let mut again = YClient::from_ws(open(&server, "plan", &token), 3);
    assert!(again.pump_until(WAIT, |c| c.text().len() == 16));
    assert_eq!(callback.calls().len(), 1);
}

/// Sends an edit of `address` and waits for its acknowledgement: whether it was applied.
fn edit_applied(c: &mut HClient, address: &str) -> bool {
    let (applied, refused) = (c.doc(address).applied, c.doc(address).refused);
    c.insert(address, 0, "x");
    assert!(c.pump_until(WAIT, |c| c.doc(address).applied > applied
        || c.doc(address).refused > refused));
    c.doc(address).applied > applied
}

#[test]
fn a_hocuspocus_refresh_is_asked_too_and_without_an_answer_only_the_token_lowers_a_role() {
    let callback = Callback::start(json!({"*": {"body": {"allow": true}}}));
    let toml = config(&callback, "authorize_cache_s = 0");
    let tokens = Tokens::of(&toml);
    let server = Server::start(&toml);
    let (editor, viewer) = (
        tokens.editor("alice"),
        tokens.mint("alice", json!({"role": "viewer"})),
    );
    let mut c = HClient::connect(&server.addr, "/");
    c.attach("d", &editor, 1);
    // Synced, and its answer to the server's step 1 acknowledged: one acknowledgement per
    // edit from here.
    assert!(c.pump_until(WAIT, |c| c.doc("d").synced && c.doc("d").applied == 1));
    assert!(edit_applied(&mut c, "d"));
    assert_eq!(callback.calls().len(), 1, "the attach was asked");
    // Sends a refreshed token, waits for the app to be asked, then for the answer (or the
    // 400 ms timeout) to be dealt with.
    let refresh = |c: &mut HClient, token: &str, settle_ms: u64| {
        c.send(common::hocuspocus::auth_token("d", token, Some("4.8.0")));
        let call = callback.receiver.lines.recv_timeout(WAIT).expect("asked");
        assert_eq!(call["verdict"], "ok");
        std::thread::sleep(Duration::from_millis(settle_ms));
    };
    // The app makes the open document read-only, then gives it back.
    callback.answer(json!({"*": {"body": {"allow": true, "role": "viewer"}}}));
    refresh(&mut c, &editor, 300);
    assert!(
        !edit_applied(&mut c, "d"),
        "read-only after the app said viewer"
    );
    callback.answer(json!({"*": {"body": {"allow": true}}}));
    refresh(&mut c, &editor, 300);
    assert!(edit_applied(&mut c, "d"), "an editor again");
    // No answer in time (400 ms): the document stays as it was...
    callback.answer(json!({"*": {"delay_ms": 3000, "body": {"allow": true}}}));
    refresh(&mut c, &editor, 800);
    assert!(edit_applied(&mut c, "d"), "still an editor");
    // ...but a refreshed viewer token still makes it read-only.
    refresh(&mut c, &viewer, 800);
    assert!(!edit_applied(&mut c, "d"), "the viewer token applies");
    // And an editor token without an answer does not raise it back.
    refresh(&mut c, &editor, 800);
    assert!(!edit_applied(&mut c, "d"), "not raised without the app");
    // A refusal closes the document, the socket staying open.
    callback.answer(json!({"*": {"body": {"allow": false, "reason": "removed"}}}));
    refresh(&mut c, &editor, 0);
    assert!(c.pump_until(WAIT, |c| c.doc("d").denied.is_some()));
    assert_eq!(
        c.doc("d").denied.as_deref(),
        Some("4003 Forbidden: removed")
    );
    c.attach("e", &editor, 2);
    assert!(c.pump_until(WAIT, |c| c.doc("e").denied.is_some()));
    callback.calls();
}
