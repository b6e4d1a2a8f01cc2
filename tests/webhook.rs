//! Webhook signatures and delivery against a real HTTP receiver on loopback, which checks
//! signatures with its own implementation (`tests/py/webhook_receiver.py`, Python's hmac).

mod common;

use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiresocket::webhook::delivery::{Deliveries, DeliveryConfig, Fate, Receipt, Refused, Sink};
use wiresocket::webhook::event::{Event, EventKind, Subject};
use wiresocket::webhook::signature::WebhookSecret;

use common::receiver::{requests_until, Receiver, RECEIVER, SECRET};

fn verdict(id: &str, timestamp_s: u64, signature: &str, body: &[u8]) -> String {
    let mut child = Command::new("python3")
        .args([
            RECEIVER,
            "verify",
            SECRET,
            id,
            &timestamp_s.to_string(),
            signature,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn signatures_verify_independently_and_replayed_or_altered_ones_fail() {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let now_s = wiresocket::log::unix_ms() / 1000;
    let body = br#"{"type":"session.ended","data":{"state":"AQ=="}}"#;
    let signature = secret.sign("msg_1", now_s, body);
    assert_eq!(verdict("msg_1", now_s, &signature, body), "ok");
    // The same body and signature replayed ten minutes later: stale.
    let old_s = now_s - 600;
    let old_signature = secret.sign("msg_1", old_s, body);
    assert_eq!(verdict("msg_1", old_s, &old_signature, body), "stale");
    // A fresh timestamp on the old signature, an altered body, another id: refused.
    assert_eq!(
        verdict("msg_1", now_s, &old_signature, body),
        "bad signature"
    );
    let altered = br#"{"type":"session.ended","data":{"state":"AA=="}}"#;
    assert_eq!(
        verdict("msg_1", now_s, &signature, altered),
        "bad signature"
    );
    assert_eq!(verdict("msg_2", now_s, &signature, body), "bad signature");
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        Self::start_with(&[RECEIVER, "serve", SECRET, &fail_first.to_string()])
    }

    /// A receiver whose `/load` answers as the files in `load_dir` say (see the script).
    fn with_load_hook(load_dir: &std::path::Path) -> Receiver {
        Self::start_with(&[RECEIVER, "serve", SECRET, "0", load_dir.to_str().unwrap()])
    }
}

fn sink(url: String, allow_private: bool, events: Vec<EventKind>) -> Arc<Sink> {
    Arc::new(Sink::new(
        "acme::docs".into(),
        url,
        WebhookSecret::parse(SECRET).unwrap(),
        events,
        allow_private,
        Vec::new(),
        2_000,
    ))
}

fn event(kind: EventKind, document: &str, n: u64) -> Event {
    let subject = Subject {
        tenant_id: "acme",
        app_id: "docs",
        document,
    };
    Event::new(kind, subject, json!({ "n": n }), wiresocket::log::unix_ms())
}

fn fast() -> DeliveryConfig {
    DeliveryConfig {
        retry_initial_ms: 20,
        retry_max_ms: 100,
        ..DeliveryConfig::default()
    }
}

fn wait_for(receipts: &[Receipt], fate: Fate) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while receipts.iter().any(|r| r.fate() != fate) {
        assert!(Instant::now() < deadline, "events not {fate:?} in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_receiver_that_fails_for_a_while_gets_every_event_once_in_order_with_stable_ids() {
    let receiver = Receiver::start(5);
    let deliveries = Deliveries::start(fast());
    let sink = sink(receiver.url(), true, EventKind::ALL.to_vec());
    let mut pushed: Vec<(String, String)> = Vec::new();
    let mut receipts = Vec::new();
    for n in 0..6 {
        for document in ["plan", "notes"] {
            let e = event(EventKind::DocumentChanged, document, n);
            pushed.push((document.to_owned(), e.id.clone()));
            receipts.push(deliveries.push(&sink, document, e).unwrap());
        }
    }
    wait_for(&receipts, Fate::Delivered);
    let requests: Vec<Value> = receiver.lines.try_iter().collect();
    assert!(
        requests.iter().all(|r| r["verdict"] == "ok"),
        "{requests:?}"
    );
    let failed: Vec<&Value> = requests.iter().filter(|r| r["status"] == 500).collect();
    assert_eq!(failed.len(), 5);
    for document in ["plan", "notes"] {
        let sent: Vec<&str> = pushed
            .iter()
            .filter(|(d, _)| d == document)
            .map(|(_, id)| id.as_str())
            .collect();
        let accepted: Vec<&str> = requests
            .iter()
            .filter(|r| r["status"] == 204 && r["body"]["document"] == document)
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        // Each event accepted once, in the order it was pushed.
        assert_eq!(accepted, sent, "{document}");
        // Every failed attempt was an event that later went through, under the same id,
        // before anything after it of its document.
        let all_ids: Vec<&str> = requests
            .iter()
            .filter(|r| r["body"]["document"] == document)
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        let mut deduplicated = all_ids.clone();
        deduplicated.dedup();
        assert_eq!(deduplicated, sent, "{document}: retries out of order");
    }
    let stats = deliveries.stats();
    assert_eq!(stats.len(), 1);
    let (app, s) = &stats[0];
    assert_eq!(app, "acme::docs");
    assert_eq!((s.delivered, s.failed_attempts, s.queued), (12, 5, 0));
}

#[test]
fn only_the_events_an_app_asked_for_are_queued() {
    let deliveries = Deliveries::start(fast());
    let sink = sink(
        "http://127.0.0.1:9/".into(),
        true,
        vec![EventKind::SessionEnded],
    );
    let refused = deliveries.push(&sink, "d", event(EventKind::SessionStarted, "d", 0));
    assert_eq!(refused.unwrap_err(), Refused::NotWanted);
    assert!(deliveries.stats().is_empty());
}

#[test]
fn a_private_receiver_is_not_called_unless_the_app_allows_it() {
    let receiver = Receiver::start(0);
    let deliveries = Deliveries::start(fast());
    let refused = sink(receiver.url(), false, EventKind::ALL.to_vec());
    let r = deliveries
        .push(&refused, "d", event(EventKind::SessionEnded, "d", 0))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.stats()[0].1.failed_attempts < 3 {
        assert!(Instant::now() < deadline, "no attempt failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.fate(), Fate::Waiting);
    // Nothing reached the receiver; the same receiver, allowed, gets the next one.
    let allowed = sink(receiver.url(), true, EventKind::ALL.to_vec());
    let ok = deliveries
        .push(&allowed, "e", event(EventKind::SessionEnded, "e", 1))
        .unwrap();
    wait_for(&[ok], Fate::Delivered);
    let requests: Vec<Value> = receiver.lines.try_iter().collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["body"]["document"], "e");
}

/// `document.changed` events of one document, each with what changed since the last.
struct Changes {
    doc: yrs::Doc,
    before: yrs::StateVector,
}

impl Changes {
    fn new() -> Self {
        Changes {
            doc: yrs::Doc::with_client_id(1),
            before: yrs::StateVector::default(),
        }
    }

    fn next(&mut self, document: &str, s: &str) -> Event {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Text, Transact};
        self.doc
            .get_or_insert_text("t")
            .push(&mut self.doc.transact_mut(), s);
        let txn = self.doc.transact();
        let update = txn.encode_state_as_update_v1(&self.before);
        self.before = txn.state_vector();
        let change = wiresocket::webhook::event::Change {
            update,
            state_vector: self.before.encode_v1(),
        };
        let subject = Subject {
            tenant_id: "acme",
            app_id: "docs",
            document,
        };
        Event::changed(subject, change, wiresocket::log::unix_ms())
    }
}

#[test]
fn a_full_queue_coalesces_or_refuses_but_never_loses_a_change_or_a_session_end() {
    // Nothing listens on port 9 of loopback: every attempt fails and the queue fills.
    let deliveries = Deliveries::start(DeliveryConfig {
        queue_events_max: 3,
        retry_initial_ms: 60_000,
        ..DeliveryConfig::default()
    });
    let sink = sink("http://127.0.0.1:9/".into(), true, EventKind::ALL.to_vec());
    let push = |document: &str, e: Event| deliveries.push(&sink, document, e);
    let stats = || deliveries.stats()[0].1.clone();
    push("d", event(EventKind::SessionStarted, "d", 0)).unwrap();
    let first_presence = push("d", event(EventKind::PresenceChanged, "d", 1)).unwrap();
    push("e", event(EventKind::SessionStarted, "e", 2)).unwrap();
    // Both documents' first events were tried once and now wait a minute for their retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats().failed_attempts < 2 {
        assert!(Instant::now() < deadline, "no attempts");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Full: a new kind of event is refused...
    let refused = push("f", event(EventKind::SessionStarted, "f", 3));
    assert_eq!(refused.unwrap_err(), Refused::QueueFull);
    // ...a newer presence takes the waiting one's place...
    push("d", event(EventKind::PresenceChanged, "d", 4)).unwrap();
    assert_eq!(first_presence.fate(), Fate::Replaced);
    let refused = push("e", event(EventKind::PresenceChanged, "e", 5));
    assert_eq!(refused.unwrap_err(), Refused::QueueFull, "none waits for e");
    // ...a document's first change is taken past the bound, and later ones merge into it,
    // also when other events came after it; a session end is never refused.
    let mut changes = Changes::new();
    let first_change = push("d", changes.next("d", "a")).unwrap();
    assert_eq!(stats().queued, 4);
    push("d", changes.next("d", "b")).unwrap();
    assert_eq!(first_change.fate(), Fate::Replaced);
    let ended = push("d", event(EventKind::SessionEnded, "d", 6)).unwrap();
    assert_eq!(stats().queued, 5);
    // A change after a waiting session end never moves before it: it waits after it (the
    // first past the bound) and the next merges into it.
    let after_end = push("d", changes.next("d", "c")).unwrap();
    assert_eq!(stats().queued, 6);
    push("d", changes.next("d", "d")).unwrap();
    assert_eq!(after_end.fate(), Fate::Replaced);
    let s = stats();
    assert_eq!((s.queued, s.dropped), (6, 2), "{s:?}");
    assert_eq!(ended.fate(), Fate::Waiting);
    assert!(s.oldest_ms < 60_000);
    // Stopping gives up what still waits.
    drop(deliveries);
    assert_eq!(ended.fate(), Fate::GivenUp);
}

#[test]
fn a_forbidden_address_is_refused_whatever_the_app_allows() {
    let deliveries = Deliveries::start(fast());
    let own: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let sink = Arc::new(Sink::new(
        "acme::docs".into(),
        "http://127.0.0.1:8080/".into(),
        WebhookSecret::parse(SECRET).unwrap(),
        EventKind::ALL.to_vec(),
        true,
        vec![own],
        2_000,
    ));
    let r = deliveries
        .push(&sink, "d", event(EventKind::SessionEnded, "d", 0))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.stats()[0].1.failed_attempts < 2 {
        assert!(Instant::now() < deadline, "no attempt failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.fate(), Fate::Waiting);
}

#[test]
fn a_newer_session_end_replaces_one_not_yet_sent() {
    let deliveries = Deliveries::start(DeliveryConfig {
        retry_initial_ms: 60_000,
        ..DeliveryConfig::default()
    });
    let sink = sink("http://127.0.0.1:9/".into(), true, EventKind::ALL.to_vec());
    let first = deliveries
        .push(&sink, "d", event(EventKind::SessionEnded, "d", 0))
        .unwrap();
    // Its first attempt fails at once (nothing listens); then it waits a minute.
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.stats()[0].1.failed_attempts < 1 {
        assert!(Instant::now() < deadline, "no attempt failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = deliveries
        .push(&sink, "d", event(EventKind::SessionEnded, "d", 1))
        .unwrap();
    assert_eq!(first.fate(), Fate::Replaced);
    assert_eq!(second.fate(), Fate::Waiting);
    assert_eq!(deliveries.stats()[0].1.queued, 1);
    // Another document's is its own.
    deliveries
        .push(&sink, "e", event(EventKind::SessionEnded, "e", 2))
        .unwrap();
    assert_eq!(second.fate(), Fate::Waiting);
    assert_eq!(deliveries.stats()[0].1.queued, 2);
}

fn app_with(webhook: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
{tenant}
[[apps]]
id = "web"
tenant = "acme"
{webhook}
"#,
        tenant = common::acme_eddsa_tenant()
    )
}

#[test]
fn a_webhook_the_rules_refuse_stops_the_start_with_the_field_named() {
    let cases = [
        (
            format!("webhook_url = \"http://169.254.169.254/latest\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true"),
            "apps.web.webhook_url: 169.254.169.254 is never allowed",
        ),
        (
            format!("webhook_url = \"https://127.0.0.1:9443/\"\nwebhook_secret = \"{SECRET}\""),
            "apps.web.webhook_url: 127.0.0.1 is a loopback or private address",
        ),
        (
            format!("webhook_url = \"https://[::ffff:169.254.169.254]/\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true"),
            "apps.web.webhook_url: ::ffff:169.254.169.254 is never allowed",
        ),
        (
            "webhook_url = \"https://127.0.0.1/\"\nwebhook_secret = \"secret\"\nwebhook_allow_private = true".to_owned(),
            "apps.web.webhook_secret: must start with \"whsec_\"",
        ),
        (
            format!("webhook_url = \"https://127.0.0.1/\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true\nwebhook_events = [\"session.paused\"]"),
            "apps.web.webhook_events: unknown event \"session.paused\"",
        ),
        (
            format!("webhook_url = \"ftp://127.0.0.1/\"\nwebhook_secret = \"{SECRET}\""),
            "apps.web.webhook_url: must start with https://",
        ),
        (
            "webhook_url = \"https://127.0.0.1/\"\nwebhook_allow_private = true".to_owned(),
            "apps.web.webhook_secret: set exactly one",
        ),
        (
            format!("load_url = \"http://169.254.169.254/load\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true"),
            "apps.web.load_url: 169.254.169.254 is never allowed",
        ),
        (
            "load_url = \"http://127.0.0.1/load\"\nwebhook_allow_private = true".to_owned(),
            "apps.web.webhook_secret: set exactly one",
        ),
        (
            format!("authorize_url = \"http://[fd00:ec2::254]/authorize\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true"),
            "apps.web.authorize_url: fd00:ec2::254 is never allowed",
        ),
        (
            format!("authorize_url = \"https://127.0.0.1/authorize\"\nwebhook_secret = \"{SECRET}\""),
            "apps.web.authorize_url: 127.0.0.1 is a loopback or private address",
        ),
        (
            "authorize_url = \"http://127.0.0.1/authorize\"\nwebhook_allow_private = true".to_owned(),
            "apps.web.webhook_secret: set exactly one",
        ),
        (
            format!("authorize_url = \"https://127.0.0.1/\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true\nauthorize_timeout_ms = 0"),
            "apps.web.authorize_timeout_ms must be 1 to 60000",
        ),
        (
            // `.invalid` never resolves (RFC 6761); without DNS the lookup times out (5 s).
            format!("webhook_url = \"https://no-such-host.invalid/\"\nwebhook_secret = \"{SECRET}\""),
            "apps.web.webhook_url: cannot resolve no-such-host.invalid",
        ),
    ];
    for (webhook, expected) in cases {
        let stderr = common::refused_start(&app_with(&webhook), &[]);
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert!(
            !stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "the secret was printed"
        );
    }
}

#[test]
fn a_session_on_the_server_reaches_the_receiver_and_metrics_count_it() {
    let receiver = Receiver::start(1);
    let toml = app_with(&format!(
        "webhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true\n[documents]\ngrace_period_ms = 200\n[webhooks]\nretry_initial_ms = 20",
        receiver.url()
    ));
    let directory = common::directory(&toml);
    let token = directory.mint("web", "test", 600, Value::Null).unwrap();
    let server = common::Server::start(&toml);
    let mut client = common::YClient::from_ws(
        common::connect_raw(&server.addr, &format!("/notes?token={token}")),
        1,
    );
    client.insert(0, "hello");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut requests = Vec::new();
    while !requests
        .iter()
        .any(|r: &Value| r["status"] == 204 && r["body"]["type"] == "session.ended")
    {
        assert!(Instant::now() < deadline, "no session.ended: {requests:?}");
        requests.extend(receiver.lines.recv_timeout(Duration::from_secs(1)).ok());
    }
    assert!(requests.iter().all(|r| r["verdict"] == "ok"));
    // The receiver refused the first request (session.started), which was sent again first.
    let kinds: Vec<(&str, u64)> = requests
        .iter()
        .map(|r| {
            (
                r["body"]["type"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("session.started", 500),
            ("session.started", 204),
            ("session.ended", 204)
        ]
    );
    // The receiver prints before it answers: the server counts once it has the answer.
    let delivered = "wiresocket_webhook_delivered_total{app=\"acme::web\"} 2";
    server.wait_for("the delivery counted", Duration::from_secs(10), |s| {
        s.get("/metrics").contains(delivered)
    });
    let metrics = server.get("/metrics");
    for line in [
        "wiresocket_webhook_delivered_total{app=\"acme::web\"} 2",
        "wiresocket_webhook_failed_attempts_total{app=\"acme::web\"} 1",
        "wiresocket_webhook_queued{app=\"acme::web\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

#[test]
fn changes_waiting_for_a_failing_receiver_are_merged_in_order() {
    use base64::Engine;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, ReadTxn, Transact};
    let receiver = Receiver::start(1);
    let deliveries = Deliveries::start(DeliveryConfig {
        retry_initial_ms: 400,
        retry_max_ms: 400,
        ..DeliveryConfig::default()
    });
    let sink = sink(receiver.url(), true, EventKind::ALL.to_vec());
    let mut changes = Changes::new();
    let first = deliveries
        .push(&sink, "d", changes.next("d", "one "))
        .unwrap();
    // Its first attempt is refused (500); it then waits 200-400 ms, and two more changes
    // are merged into it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.stats()[0].1.failed_attempts < 1 {
        assert!(Instant::now() < deadline, "no attempt failed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = deliveries
        .push(&sink, "d", changes.next("d", "two "))
        .unwrap();
    let third = deliveries
        .push(&sink, "d", changes.next("d", "three"))
        .unwrap();
    assert_eq!(
        (first.fate(), second.fate()),
        (Fate::Replaced, Fate::Replaced)
    );
    assert_eq!(deliveries.stats()[0].1.queued, 1);
    wait_for(&[third], Fate::Delivered);
    let requests: Vec<Value> = receiver.lines.try_iter().collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let body = &requests[1]["body"];
    assert_eq!(body["type"], "document.changed");
    let b64 = base64::engine::general_purpose::STANDARD;
    let update = b64
        .decode(body["data"]["update"].as_str().unwrap())
        .unwrap();
    let fresh = yrs::Doc::new();
    let t = fresh.get_or_insert_text("t");
    fresh
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&update).unwrap())
        .unwrap();
    assert_eq!(t.get_string(&fresh.transact()), "one two three");
    let sv = b64
        .decode(body["data"]["stateVector"].as_str().unwrap())
        .unwrap();
    assert_eq!(sv, changes.doc.transact().state_vector().encode_v1());
}

#[test]
fn a_hanging_receiver_holds_at_most_its_share_of_the_workers() {
    // A receiver that takes connections and never answers: each call waits its 2 s timeout.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}/", hanging.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let kept: Vec<_> = hanging.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(kept);
    });
    let receiver = Receiver::start(0);
    let deliveries = Deliveries::start(fast());
    let slow = Arc::new(Sink::new(
        "acme::slow".into(),
        hanging_url,
        WebhookSecret::parse(SECRET).unwrap(),
        EventKind::ALL.to_vec(),
        true,
        Vec::new(),
        2_000,
    ));
    for n in 0..6 {
        let document = format!("d{n}");
        deliveries
            .push(
                &slow,
                &document,
                event(EventKind::SessionEnded, &document, n),
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // Four workers, at most two on the slow app: another app's event goes at once.
    let other = sink(receiver.url(), true, EventKind::ALL.to_vec());
    let started = Instant::now();
    let r = deliveries
        .push(&other, "e", event(EventKind::SessionEnded, "e", 9))
        .unwrap();
    wait_for(&[r], Fate::Delivered);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "waited {:?} behind a hanging receiver",
        started.elapsed()
    );
    held.join().unwrap();
}

/// What the receiver's load hook answers next.
struct LoadAnswer<'a> {
    status: u16,
    state: Option<&'a [u8]>,
    delay_ms: u64,
}

impl<'a> LoadAnswer<'a> {
    /// 200 with `state`, at once.
    fn state(state: &'a [u8]) -> Self {
        LoadAnswer {
            status: 200,
            state: Some(state),
            delay_ms: 0,
        }
    }
}

fn set_load_answer(dir: &std::path::Path, answer: LoadAnswer<'_>) {
    std::fs::write(dir.join("status"), answer.status.to_string()).unwrap();
    std::fs::write(dir.join("delay_ms"), answer.delay_ms.to_string()).unwrap();
    match answer.state {
        Some(state) => std::fs::write(dir.join("state"), state).unwrap(),
        None => {
            let _ = std::fs::remove_file(dir.join("state"));
        }
    }
}

/// A document whose text `t` (the test clients' type) holds `text`, as a Yjs v1 update.
fn stored_state(text: &str) -> Vec<u8> {
    use yrs::{ReadTxn, Text, Transact};
    let doc = yrs::Doc::with_client_id(77);
    doc.get_or_insert_text("t")
        .push(&mut doc.transact_mut(), text);
    let state = doc
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    state
}

fn load_hook_server(receiver: &Receiver, load_timeout_ms: u64) -> (common::Server, String) {
    let toml = app_with(&format!(
        "webhook_url = \"{hooks}\"\nload_url = \"http://127.0.0.1:{port}/load\"\n\
         load_timeout_ms = {load_timeout_ms}\nwebhook_secret = \"{SECRET}\"\n\
         webhook_allow_private = true\n\
         webhook_events = [\"session.started\", \"document.changed\"]\n\
         [documents]\ngrace_period_ms = 200",
        hooks = receiver.url(),
        port = receiver.port,
    ));
    let directory = common::directory(&toml);
    let token = directory.mint("web", "test", 600, Value::Null).unwrap();
    (common::Server::start(&toml), token)
}

#[test]
fn the_load_hook_seeds_a_document_that_two_clients_then_see() {
    let dir = common::TempDir::new("load-hook");
    let receiver = Receiver::with_load_hook(dir.path());
    let state = stored_state("kept by the application");
    set_load_answer(dir.path(), LoadAnswer::state(&state));
    let (server, token) = load_hook_server(&receiver, 3_000);
    let path = format!("/plan?token={token}");
    let mut a = common::YClient::from_ws(common::connect_raw(&server.addr, &path), 1);
    let mut b = common::YClient::from_ws(common::connect_raw(&server.addr, &path), 2);
    for c in [&mut a, &mut b] {
        assert!(
            c.pump_until(Duration::from_secs(10), |c| c.text()
                == "kept by the application"),
            "the client has {:?}",
            c.text()
        );
    }
    // The load hook got the signed session.started body, once; the same event then went to
    // the webhook receiver, under an id of its own (receivers drop repeated ids).
    let requests = requests_until(&receiver, |r| r["path"] == "/hooks");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (load, hook) = (&requests[0], &requests[1]);
    assert_eq!(load["path"], "/load");
    assert_eq!(load["verdict"], "ok");
    assert_eq!(load["body"]["type"], "session.started");
    assert_eq!(load["body"]["document"], "plan");
    assert_ne!(hook["id"], load["id"]);
    assert_eq!(hook["body"], load["body"]);
    // Edits go on from the loaded state, and the first document.changed holds only them,
    // not the state the app gave.
    a.insert(0, "+");
    assert!(b.pump_until(Duration::from_secs(10), |c| c.text()
        == "+kept by the application"));
    let changed = requests_until(&receiver, |r| r["body"]["type"] == "document.changed");
    let data = &changed.last().unwrap()["body"]["data"];
    use base64::Engine;
    let update = base64::engine::general_purpose::STANDARD
        .decode(data["update"].as_str().unwrap())
        .unwrap();
    let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(&update).unwrap();
    let clients: Vec<yrs::block::ClientID> =
        update.state_vector().iter().map(|(c, _)| *c).collect();
    assert_eq!(
        clients,
        [yrs::block::ClientID::new(1)],
        "only the client's edit"
    );
    // 404 starts a document empty, and it is editable.
    set_load_answer(
        dir.path(),
        LoadAnswer {
            status: 404,
            state: None,
            delay_ms: 0,
        },
    );
    let fresh_path = format!("/fresh?token={token}");
    let mut c = common::YClient::from_ws(common::connect_raw(&server.addr, &fresh_path), 3);
    let mut d = common::YClient::from_ws(common::connect_raw(&server.addr, &fresh_path), 4);
    c.insert(0, "new");
    assert!(d.pump_until(Duration::from_secs(10), |d| d.text() == "new"));
}

#[test]
fn a_load_hook_that_fails_hangs_or_answers_garbage_starts_no_session() {
    let dir = common::TempDir::new("load-hook-fails");
    let receiver = Receiver::with_load_hook(dir.path());
    let (server, token) = load_hook_server(&receiver, 500);
    let path = format!("/plan?token={token}");
    let refused = |why: &str| {
        let mut ws = common::connect_raw(&server.addr, &path);
        let (code, reason) = common::expect_close(&mut ws);
        assert_eq!(code, 1013, "{why}: {reason}");
        assert!(
            reason.contains("did not load the document"),
            "{why}: {reason}"
        );
    };
    let cases: [(&str, LoadAnswer<'_>); 3] = [
        (
            "500",
            LoadAnswer {
                status: 500,
                state: None,
                delay_ms: 0,
            },
        ),
        (
            "not a Yjs update",
            LoadAnswer {
                status: 200,
                state: Some(b"\xff\xff\xff\xff"),
                delay_ms: 0,
            },
        ),
        (
            "no answer in time",
            LoadAnswer {
                status: 200,
                state: None,
                delay_ms: 1_500,
            },
        ),
    ];
    for (why, answer) in cases {
        set_load_answer(dir.path(), answer);
        refused(why);
        let load = requests_until(&receiver, |r| r["path"] == "/load");
        assert_eq!(load.len(), 1, "{why}: nothing else was sent: {load:?}");
    }
    // Two clients arriving while the hook hangs wait for the one call, and share its end.
    set_load_answer(
        dir.path(),
        LoadAnswer {
            status: 200,
            state: None,
            delay_ms: 1_500,
        },
    );
    std::thread::sleep(Duration::from_millis(1_200)); // the previous call's answer goes
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (addr, path) = (server.addr.clone(), path.clone());
            std::thread::spawn(move || {
                common::expect_close(&mut common::connect_raw(&addr, &path)).0
            })
        })
        .collect();
    for t in both {
        assert_eq!(t.join().unwrap(), 1013);
    }
    // Once the application answers, a retrying client gets its state: never an empty start
    // in between, and session.started is sent only for the session that started.
    let state = stored_state("the real text");
    set_load_answer(dir.path(), LoadAnswer::state(&state));
    std::thread::sleep(Duration::from_millis(1_200));
    let mut c = common::YClient::from_ws(common::connect_raw(&server.addr, &path), 5);
    assert!(c.pump_until(Duration::from_secs(10), |c| c.text() == "the real text"));
    let requests = requests_until(&receiver, |r| r["path"] == "/hooks");
    let loads = requests.iter().filter(|r| r["path"] == "/load").count();
    assert_eq!(
        loads, 2,
        "one call for the two waiting clients, one for the retry: {requests:?}"
    );
    let log = server.log();
    assert!(
        log.contains("document_not_loaded") && log.contains("answered HTTP 500"),
        "{log}"
    );
}

#[test]
fn design_comments_reach_every_client_and_the_receiver_and_viewers_are_refused() {
    let receiver = Receiver::start(0);
    let toml = app_with(&format!(
        "webhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\nwebhook_allow_private = true\n\
         webhook_events = [\"comment.added\", \"comment.resolved\", \"comment.unresolved\", \"comment.deleted\"]",
        receiver.url()
    ));
    let directory = common::directory(&toml);
    let server = common::Server::start(&toml);
    let token = |sub: &str, claims: Value| directory.mint("web", sub, 600, claims).unwrap();
    let open = |token: String| common::connect_raw(&server.addr, &format!("/board?token={token}"));
    let mut ada = open(token("u-ada", json!({"name": "Ada"})));
    let mut bob = open(token("u-bob", Value::Null));
    let mut viewer = open(token("u-vic", json!({"role": "viewer"})));
    let wait = Duration::from_secs(10);
    let text = |ws: &mut common::Ws| -> Value {
        serde_json::from_str(&common::next_text(ws, wait).expect("a side message")).unwrap()
    };
    // Ada adds a comment: everyone, Ada too, gets it completed; the app gets comment.added.
    let add = r#"{"type":"design-comment:add","content":"bigger logo","xPercent":12.5,"yPercent":40,"pagePath":"/home"}"#;
    ada.send(tungstenite::Message::Text(add.into())).unwrap();
    let added = text(&mut ada);
    assert_eq!(added["type"], "design-comment:added");
    assert_eq!(added["user"], json!({"sub": "u-ada", "name": "Ada"}));
    assert_eq!(added["pagePath"], "/home");
    assert_eq!(text(&mut bob), added);
    assert_eq!(text(&mut viewer), added);
    let id = added["id"].as_str().unwrap().to_owned();
    // Bob resolves it.
    let resolve = format!(r#"{{"type":"design-comment:resolve","commentId":"{id}"}}"#);
    bob.send(tungstenite::Message::Text(resolve.into()))
        .unwrap();
    let resolved = text(&mut ada);
    assert_eq!(resolved["type"], "design-comment:resolved");
    assert_eq!(resolved["commentId"], id.as_str());
    assert_eq!(resolved["resolvedBy"], json!({"sub": "u-bob"}));
    assert_eq!(text(&mut bob), resolved);
    assert_eq!(text(&mut viewer), resolved);
    // The viewer's side messages go nowhere; it is told read-only.
    viewer
        .send(tungstenite::Message::Text(r#"{"type":"cursor"}"#.into()))
        .unwrap();
    let deadline = Instant::now() + wait;
    let denied = loop {
        assert!(Instant::now() < deadline, "the viewer was not told");
        match viewer.read() {
            Ok(tungstenite::Message::Binary(b)) if b[0] == 2 => break b.to_vec(),
            Ok(tungstenite::Message::Text(t)) => panic!("the viewer got {t}"),
            _ => {}
        }
    };
    assert_eq!(denied, [&[2u8, 0, 9][..], b"read-only"].concat());
    // Other types are relayed as they came, to the others only.
    let cursor = r#"{"type":"cursor","x":0.5}"#;
    ada.send(tungstenite::Message::Text(cursor.into())).unwrap();
    assert_eq!(common::next_text(&mut bob, wait).as_deref(), Some(cursor));
    assert_eq!(
        common::next_text(&mut viewer, wait).as_deref(),
        Some(cursor),
        "viewers receive"
    );
    assert_eq!(
        common::next_text(&mut ada, Duration::from_millis(300)),
        None
    );
    // The app got both, signed, in order, with the same ids the clients saw.
    let requests = requests_until(&receiver, |r| r["body"]["type"] == "comment.resolved");
    let bodies: Vec<&Value> = requests.iter().map(|r| &r["body"]).collect();
    assert!(requests.iter().all(|r| r["verdict"] == "ok"));
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0]["type"], "comment.added");
    assert_eq!(bodies[0]["document"], "board");
    let mut expected = added.clone();
    expected.as_object_mut().unwrap().remove("type");
    assert_eq!(bodies[0]["data"], expected);
    assert_eq!(bodies[1]["data"]["commentId"], id.as_str());
    assert_eq!(bodies[1]["data"]["resolvedBy"], json!({"sub": "u-bob"}));
    // A malformed design comment, then one too long, close their senders.
    bob.send(tungstenite::Message::Text(
        r#"{"type":"design-comment:add","content":"x"}"#.into(),
    ))
    .unwrap();
    let (code, reason) = common::expect_close(&mut bob);
    assert_eq!(
        (code, reason.as_str()),
        (
            1007,
            "design-comment field xPercent: a number from 0 to 100 is required"
        )
    );
    let long = format!(r#"{{"type":"note","text":"{}"}}"#, "a".repeat(64 << 10));
    ada.send(tungstenite::Message::Text(long.into())).unwrap();
    assert_eq!(common::expect_close(&mut ada).0, 1009);
}

#[test]
fn a_drain_with_the_receiver_down_names_every_document_it_could_not_hand_over() {
    // Nothing listens on port 9 of loopback: every attempt fails.
    let toml = app_with(&format!(
        "webhook_url = \"http://127.0.0.1:9/hooks\"\nwebhook_secret = \"{SECRET}\"\n\
         webhook_allow_private = true\n[node]\ndrain_timeout_ms = 300\n[webhooks]\nretry_initial_ms = 20"
    ));
    let directory = common::directory(&toml);
    let token = directory.mint("web", "test", 600, Value::Null).unwrap();
    let mut server = common::Server::start(&toml);
    let _clients: Vec<_> = ["left-open", "also-open"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let ws = common::connect_raw(&server.addr, &format!("/{name}?token={token}"));
            let mut c = common::YClient::from_ws(ws, i as u64 + 1);
            c.insert(0, "unsaved");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log = server.log();
    for document in ["acme::web::left-open", "acme::web::also-open"] {
        let line = log
            .lines()
            .find(|l| l.contains("session_end_not_delivered") && l.contains(document))
            .unwrap_or_else(|| panic!("{document} not named: {log}"));
        assert!(line.contains("level=error"), "{line}");
    }
}

#[test]
fn a_redirect_is_never_followed() {
    // Where the redirects point: counts every connection made to it.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let location = format!("http://{}/elsewhere", target.local_addr().unwrap());
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reached.clone();
    std::thread::spawn(move || {
        for stream in target.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    // Answers every request with a redirect there, of each kind in turn.
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirect_url = format!("http://{}/hooks", redirector.local_addr().unwrap());
    std::thread::spawn(move || {
        let kinds = [
            "303 See Other",
            "307 Temporary Redirect",
            "301 Moved Permanently",
        ];
        for (n, stream) in redirector.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let answer = format!(
                "HTTP/1.1 {}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                kinds[n % kinds.len()]
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let deliveries = Deliveries::start(fast());
    let sink = sink(redirect_url, true, EventKind::ALL.to_vec());
    deliveries
        .push(&sink, "d", event(EventKind::SessionStarted, "d", 1))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.stats()[0].1.failed_attempts < 3 {
        assert!(Instant::now() < deadline, "no failed attempts");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(deliveries.stats()[0].1.delivered, 0);
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

#[test]
fn a_comment_the_apps_full_queue_cannot_take_is_shown_to_nobody_and_its_sender_told() {
    // Nothing listens on port 9: the one place in the queue stays taken.
    let toml = app_with(&format!(
        "webhook_url = \"http://127.0.0.1:9/hooks\"\nwebhook_secret = \"{SECRET}\"\n\
         webhook_allow_private = true\nwebhook_events = [\"comment.added\"]\n\
         [webhooks]\nqueue_events_max = 1\nretry_initial_ms = 60000"
    ));
    let directory = common::directory(&toml);
    let token = directory.mint("web", "u", 600, Value::Null).unwrap();
    let server = common::Server::start(&toml);
    let path = format!("/wall?token={token}");
    let mut writer = common::connect_raw(&server.addr, &path);
    let mut reader = common::connect_raw(&server.addr, &path);
    let wait = Duration::from_secs(10);
    let add = |n: u8| {
        tungstenite::Message::Text(
            format!(
                r#"{{"type":"design-comment:add","content":"n{n}","xPercent":1,"yPercent":1}}"#
            )
            .into(),
        )
    };
    writer.send(add(1)).unwrap();
    let first = common::next_text(&mut reader, wait).expect("the first is taken");
    assert!(first.contains("\"n1\""), "{first}");
    writer.send(add(2)).unwrap();
    let (code, reason) = common::expect_close(&mut writer);
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("the comment was not taken"), "{reason}");
    assert_eq!(
        common::next_text(&mut reader, Duration::from_millis(500)),
        None,
        "a comment the app does not have is shown to nobody"
    );
    server.wait_for("the refusal counted", wait, |s| {
        s.get("/metrics")
            .contains("wiresocket_webhook_dropped_total{app=\"acme::web\"} 1")
    });
}

#[test]
fn a_reload_adds_an_apps_webhook_in_place_and_a_bad_secret_changes_nothing() {
    let receiver = Receiver::start(0);
    let plain = app_with("[documents]\ngrace_period_ms = 200");
    let hooked = |secret: &str| {
        app_with(&format!(
            "webhook_url = \"{}\"\nwebhook_secret = \"{secret}\"\nwebhook_allow_private = true\n[documents]\ngrace_period_ms = 200",
            receiver.url()
        ))
    };
    let directory = common::directory(&plain);
    let token = directory.mint("web", "test", 600, Value::Null).unwrap();
    let server = common::Server::start(&plain);
    let open = |document: &str, client: u64| {
        let ws = common::connect_raw(&server.addr, &format!("/{document}?token={token}"));
        common::YClient::from_ws(ws, client)
    };
    // A session started before the app had a webhook.
    let mut before = open("before", 1);
    before.insert(0, "old");
    std::fs::write(server.config_path(), hooked(SECRET)).unwrap();
    let line = server.reload();
    assert!(line.contains("event=reloaded"), "{line}");
    assert!(
        line.contains("restart_to_apply=\"\""),
        "nothing waits for a restart: {line}"
    );
    // A new session is told of; so is a change to the one that was live already.
    let after = open("after", 2);
    before.insert(0, "new ");
    let mut seen = Vec::new();
    let requests = requests_until(&receiver, |r| {
        seen.push((r["body"]["type"].clone(), r["body"]["document"].clone()));
        seen.contains(&(json!("session.started"), json!("after")))
            && seen.contains(&(json!("document.changed"), json!("before")))
    });
    assert!(
        requests.iter().all(|r| r["verdict"] == "ok"),
        "{requests:?}"
    );
    // A secret that does not parse: refused, naming the field; the receiver in force stays.
    std::fs::write(server.config_path(), hooked("whsec_short")).unwrap();
    let line = server.reload();
    assert!(line.contains("reload_refused"), "{line}");
    assert!(line.contains("apps.web.webhook_secret"), "{line}");
    drop(after);
    requests_until(&receiver, |r| {
        r["body"]["type"] == "session.ended" && r["body"]["document"] == "after"
    });
}
