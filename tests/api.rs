//! The HTTP API end to end: the token endpoint (with refresh rotation), JWKS, usage, and
//! per-IP budgets.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn post_form(server: &Server, form: &str) -> (u16, Value) {
    let r = server.http(&format!(
        "POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    ));
    (status(&r), body_json(&r))
}

fn body_json(response: &str) -> Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[test]
fn client_credentials_refresh_rotation_and_refused_reuse() {
    let server = Server::start("");
    let (code, body) = post_form(
        &server,
        "grant_type=client_credentials&client_id=dev&client_secret=dev-secret&scope=WireSocket.API%20offline_access",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64()),
        (Some("Bearer"), Some(900))
    );
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    // The issued token opens a document.
    let mut ws = connect_raw(&server.addr, &format!("/issued?token={access}"));
    assert!(matches!(
        ws.read().unwrap(),
        tungstenite::Message::Binary(_)
    ));

    let rotate = |token: &str| {
        post_form(
            &server,
            &format!("grant_type=refresh_token&refresh_token={token}&client_id=dev&client_secret=dev-secret"),
        )
    };
    // Refreshing authenticates the client.
    let (code, bad) = post_form(
        &server,
        &format!("grant_type=refresh_token&refresh_token={refresh}&client_id=dev"),
    );
    assert_eq!(
        (code, bad["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (code, rotated) = rotate(&refresh);
    assert_eq!(code, 200, "{rotated}");
    let rotated = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    // Reuse of the rotated-away token revokes the family: the newest token fails too.
    let (code, reused) = rotate(&refresh);
    assert_eq!(
        (code, reused["error"].as_str()),
        (401, Some("invalid_grant"))
    );
    let (code, newest) = rotate(&rotated);
    assert_eq!(
        (code, newest["error"].as_str()),
        (401, Some("invalid_grant"))
    );
    let log = server.log();
    assert!(
        log.contains("event=refresh_token_family_revoked") && log.contains("security=true"),
        "{log}"
    );
    assert!(
        !log.contains(&refresh[32..]) && !log.contains(&rotated[32..]),
        "{log}"
    );

    let (code, bad) = post_form(
        &server,
        "grant_type=client_credentials&client_id=dev&client_secret=nope",
    );
    assert_eq!((code, bad["error"].as_str()), (401, Some("invalid_client")));
    let (code, bad) = post_form(&server, "grant_type=implicit");
    assert_eq!(
        (code, bad["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (code, bad) = post_form(&server, "client_id=dev");
    assert_eq!(
        (code, bad["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let r = server.http("POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n");
    assert_eq!(status(&r), 413);
    let r = server.http("POST /connect/token HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status(&r), 411);
}

#[test]
fn jwks_verifies_issued_tokens() {
    let server = Server::start("");
    let r = server.get("/dev/.well-known/jwks");
    assert_eq!(status(&r), 200, "{r}");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(body_json(&r)).unwrap();
    let jwk = set.find("dev").expect("the dev key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let (_, body) = post_form(
        &server,
        "grant_type=client_credentials&client_id=dev&client_secret=dev-secret",
    );
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["WireSocket.API"]);
    let claims =
        jsonwebtoken::decode::<Value>(body["access_token"].as_str().unwrap(), &key, &validation)
            .unwrap()
            .claims;
    assert_eq!(
        (claims["sub"].as_str(), claims["appId"].as_str()),
        (Some("dev"), Some("dev"))
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    assert!(claims["jti"].is_string());
    assert_eq!(status(&server.get("/ghost/.well-known/jwks")), 404);
}

#[test]
fn a_tenant_named_like_the_demo_has_its_jwks_served() {
    let server = Server::start(&format!(
        "{}[[apps]]\nid = \"web\"\ntenant = \"democorp\"\n",
        common::eddsa_tenant("democorp")
    ));
    let r = server.get("/democorp/.well-known/jwks");
    assert_eq!(status(&r), 200, "{r}");
    // No demo without the development tenant.
    assert_eq!(status(&server.get("/demo")), 404);
}

#[test]
fn usage_reports_counts_against_limits() {
    let server = Server::start("");
    let token = dev_token(serde_json::json!({"limits": {"maxConnections": 4, "maxDocuments": 10}}));
    let held: Vec<Ws> = (0..3)
        .map(|i| connect_raw(&server.addr, &format!("/u-{i}?token={token}")))
        .collect();
    server.wait_for("3 connections", Duration::from_secs(10), |s| {
        s.metric("connections").0 == 3
    });
    let r = server.http(&format!(
        "GET /usage HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    ));
    assert_eq!(status(&r), 200, "{r}");
    let usage = body_json(&r);
    assert_eq!(
        (usage["tenantId"].as_str(), usage["appId"].as_str()),
        (Some("dev"), Some("dev"))
    );
    let c = &usage["usage"]["connections"];
    assert_eq!(
        (
            c["current"].as_u64(),
            c["limit"].as_u64(),
            c["status"].as_str()
        ),
        (Some(3), Some(4), Some("warning"))
    );
    assert_eq!(c["percent"].as_f64(), Some(75.0));
    let d = &usage["usage"]["documents"];
    assert_eq!(
        (d["current"].as_u64(), d["status"].as_str()),
        (Some(3), Some("healthy"))
    );
    assert!(usage["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status(&server.get("/usage")), 401);
    assert_eq!(status(&server.get("/usage?token=garbage")), 401);
    drop(held);
}

#[test]
fn per_ip_budgets_answer_429_with_retry_after() {
    let server = Server::start("trusted_proxies = [\"127.0.0.0/8\"]\n[rate_limits]\nhandshakes_per_minute = 3\nusage_per_minute = 2\n");
    let upgrade = |xff: &str| {
        server.http_head(&format!(
            "GET /doc?token={} HTTP/1.1\r\nHost: t\r\n{xff}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            editor_token()
        ))
    };
    for _ in 0..3 {
        assert!(upgrade("").starts_with("HTTP/1.1 101 "));
    }
    let refused = upgrade("");
    assert!(
        refused.starts_with("HTTP/1.1 429 ") && refused.contains("Retry-After: 60"),
        "{refused}"
    );
    // Behind a trusted proxy, the forwarded address has its own budget.
    assert!(upgrade("X-Forwarded-For: 203.0.113.9\r\n").starts_with("HTTP/1.1 101 "));
    // The client is the first untrusted address from the right over every line: a spoofed
    // leftmost entry, new each time, does not buy a new budget.
    for i in 0..3 {
        let answer = upgrade(&format!(
            "X-Forwarded-For: 6.6.6.{i}\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.2\r\n"
        ));
        let expected = if i < 2 {
            "HTTP/1.1 101 "
        } else {
            "HTTP/1.1 429 "
        };
        assert!(answer.starts_with(expected), "{i}: {answer}");
    }
    let usage = |_: u32| {
        status(&server.http(&format!(
            "GET /usage HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            editor_token()
        )))
    };
    assert_eq!((usage(1), usage(2), usage(3)), (200, 200, 429));
}

#[test]
fn discovery_applies_the_docs_claim_and_the_name_rules() {
    let server = Server::start("");
    let ask = |token: &str, name: &str| {
        let r = server.http(&format!(
            "GET /discovery?documentName={name} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
        ));
        (status(&r), body_json(&r))
    };
    let scoped = dev_token(serde_json::json!({ "docs": ["team-*"] }));
    let (code, body) = ask(&scoped, "team-plan");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["isNew"], true);
    let (code, body) = ask(&scoped, "payroll");
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (code, body) = ask(editor_token(), "a%3A%3Ab");
    assert_eq!(code, 403, "{body}");
    let (code, body) = ask(editor_token(), "bad.name");
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|d| d.contains("invalid document name")),
        "{body}"
    );
}
