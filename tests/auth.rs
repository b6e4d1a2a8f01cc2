//! Tokens, tenants and apps on the data plane: every refusal with its exact code and reason,
//! and isolation between apps.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;

fn config_toml() -> String {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    format!(
        r#"
[[tenants]]
id = "acme"
[[tenants.keys]]
kid = "k1"
alg = "ES256"
public_key_file = "{keys}/es256_public.pem"
private_key_file = "{keys}/es256_private.pem"

[[apps]]
id = "web"
tenant = "acme"

[[apps]]
id = "mobile"
tenant = "acme"

[[apps]]
id = "closed"
tenant = "acme"
enabled = false

[[apps]]
id = "strict"
tenant = "acme"
require_origin = true
"#
    )
}

fn directory() -> &'static Directory {
    static DIRECTORY: std::sync::OnceLock<Directory> = std::sync::OnceLock::new();
    DIRECTORY.get_or_init(|| {
        Directory::from_config(&Config::from_toml(&config_toml(), "test").unwrap()).unwrap()
    })
}

fn token(app: &str, extra: serde_json::Value) -> String {
    directory().mint(app, "test", 600, extra).unwrap()
}

fn closed_with(server: &Server, path_and_query: &str) -> (u16, String) {
    let mut ws = connect_raw(&server.addr, path_and_query);
    expect_close(&mut ws)
}

#[test]
fn every_token_refusal_has_its_code_and_reason() {
    let server = Server::start(&config_toml());
    assert_eq!(
        closed_with(&server, "/doc"),
        (4001, "Authentication required: pass a token as ?token=, the access_token subprotocol or Authorization: Bearer".into())
    );
    let expired = token("web", json!({"exp": 1_000_000_000}));
    assert_eq!(
        closed_with(&server, &format!("/doc?token={expired}")),
        (4002, "Invalid token: expired".into())
    );
    let wrong_aud = token("web", json!({"aud": "Other"}));
    assert_eq!(
        closed_with(&server, &format!("/doc?token={wrong_aud}")),
        (4002, "Invalid token: wrong audience".into())
    );
    // Longer than auth.token_lifetime_max_s (default one day).
    let long = directory().mint("web", "test", 86_401, json!({})).unwrap();
    assert_eq!(
        closed_with(&server, &format!("/doc?token={long}")),
        (
            4002,
            "Invalid token: lifetime over auth.token_lifetime_max_s".into()
        )
    );
    let dev = dev_token(serde_json::Value::Null);
    assert_eq!(
        closed_with(&server, &format!("/doc?token={dev}")),
        (4003, "Forbidden: unknown tenant".into())
    );
    let closed = token("closed", serde_json::Value::Null);
    assert_eq!(
        closed_with(&server, &format!("/doc?token={closed}")),
        (4003, "Forbidden: app disabled".into())
    );
    let narrow = token("web", json!({"docs": ["team-*"]}));
    assert_eq!(
        closed_with(&server, &format!("/other?token={narrow}")),
        (
            4003,
            "Forbidden: the token does not grant this document".into()
        )
    );
    let mut ok = connect_raw(&server.addr, &format!("/team-1?token={narrow}"));
    assert!(ok.read().is_ok(), "a granted document opens");
    let web = token("web", serde_json::Value::Null);
    assert_eq!(
        closed_with(&server, &format!("/a::b?token={web}")),
        (4003, "Forbidden: document name contains '::'".into())
    );
    assert_eq!(
        closed_with(&server, &format!("/bad.name?token={web}")),
        (
            4007,
            "Invalid document name: document name may only use A-Z a-z 0-9 _ -".into()
        )
    );
}

#[test]
fn origins_are_checked_before_the_upgrade() {
    let server = Server::start(&config_toml());
    let upgrade = |token: &str, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        server.http_head(&format!(
            "GET /doc?token={token} HTTP/1.1\r\nHost: t\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ))
    };
    let domains = token(
        "web",
        json!({"allowed_domain_1": "app.example.com", "allowed_domain_2": "localhost:3000"}),
    );
    assert!(upgrade(&domains, Some("https://evil.example.com")).starts_with("HTTP/1.1 403 "));
    assert!(upgrade(&domains, Some("https://APP.example.com")).starts_with("HTTP/1.1 101 "));
    assert!(upgrade(&domains, Some("http://localhost:3000")).starts_with("HTTP/1.1 101 "));
    assert!(
        upgrade(&domains, None).starts_with("HTTP/1.1 101 "),
        "server-side clients pass"
    );
    let strict = token("strict", serde_json::Value::Null);
    assert!(upgrade(&strict, None).starts_with("HTTP/1.1 403 "));
    assert!(upgrade(&strict, Some("https://any.example")).starts_with("HTTP/1.1 101 "));
}

#[test]
fn two_apps_with_the_same_document_name_share_nothing() {
    let server = Server::start(&config_toml());
    let connect_as = |app: &str, id: u64| {
        let ws = connect_raw(
            &server.addr,
            &format!("/shared-name?token={}", token(app, serde_json::Value::Null)),
        );
        YClient::from_ws(ws, id)
    };
    let mut web = connect_as("web", 1);
    let mut web_reader = connect_as("web", 2);
    let mut mobile = connect_as("mobile", 3);
    web.insert(0, "web only");
    assert!(web_reader.pump_until(Duration::from_secs(10), |c| c.text() == "web only"));
    assert!(
        !mobile.pump_until(Duration::from_millis(300), |c| !c.text().is_empty()),
        "mobile saw web's edit"
    );
    assert_eq!(server.metric("documents").0, 2);
}

#[test]
fn the_token_may_come_in_a_header_or_as_a_subprotocol() {
    let server = Server::start(&config_toml());
    let web = token("web", serde_json::Value::Null);
    let upgrade = |extra: &str| {
        server.http_head(&format!(
            "GET /doc HTTP/1.1\r\nHost: t\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ))
    };
    let r = upgrade(&format!("Authorization: Bearer {web}\r\n"));
    assert!(
        r.starts_with("HTTP/1.1 101 ") && !r.contains("Sec-WebSocket-Protocol"),
        "{r}"
    );
    let r = upgrade(&format!("Sec-WebSocket-Protocol: Bearer, {web}\r\n"));
    assert!(r.contains("Sec-WebSocket-Protocol: Bearer\r\n"), "{r}");
    assert!(!r.contains(&web), "the token is never echoed");
    // The documented quirk: ws://host?token=JWT/doc.
    let mut ws = connect_raw(&server.addr, &format!("/?token={web}/quirky"));
    assert!(ws.read().is_ok());
    // The two upgrades above ended when their sockets closed, which the server sees a
    // moment later: then only this one is open.
    server.wait_for("one connection", std::time::Duration::from_secs(5), |s| {
        s.metric("connections").0 == 1
    });
}

#[test]
fn the_development_tenant_does_not_run_where_anyone_could_reach_it() {
    let no_tenants = refused_start("listen = \"127.0.0.1:0\"\n", &[]);
    assert!(
        no_tenants.contains("configures no [[tenants]] and [[apps]]")
            && no_tenants.contains("allow_development_tenant = true"),
        "{no_tenants}"
    );
    let public = refused_start("", &["--listen", "0.0.0.0:0"]);
    assert!(
        public.contains("not a loopback address") && public.contains("[[tenants]]"),
        "{public}"
    );
    let duplicate = refused_start(
        &format!(
            "{}\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\n",
            config_toml()
        ),
        &[],
    );
    assert!(duplicate.contains("apps.web.id"), "{duplicate}");
}

#[test]
fn a_reconnect_with_the_same_token_skips_the_signature_check() {
    let server = Server::start_with("", &["--shards", "1"]);
    let token = dev_token(serde_json::json!({ "sub": "cache" }));
    let hits = |s: &Server| s.metric("token_cache_hits_total").0;
    let mut first = YClient::from_ws(connect_raw(&server.addr, &format!("/c?token={token}")), 1);
    first.insert(0, "a");
    assert_eq!(hits(&server), 0, "verified the first time");
    let mut again = YClient::from_ws(connect_raw(&server.addr, &format!("/c?token={token}")), 2);
    assert!(again.pump_until(Duration::from_secs(5), |c| c.text() == "a"));
    assert_eq!(hits(&server), 1, "the same token again: from the cache");
    // Another token (another signature) is verified on its own.
    let other = dev_token(serde_json::json!({ "sub": "cache-2" }));
    let _third = connect_raw(&server.addr, &format!("/c?token={other}"));
    assert_eq!(hits(&server), 1);
}
