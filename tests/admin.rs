//! The admin listener (PRODUCT.md 13) against the real binary: its token, the listings,
//! revoking and restoring apps and tenants with their live sessions closed, closing one
//! document, metrics moved there.

mod common;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CLIENT_SECRET: &str = "web-client-secret";
const ADMIN_TOKEN: &str = "4f1c0e7b2a9d8c6e5f3a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e";

struct Admin {
    server: common::Server,
    admin: String,
    directory: wiresocket::auth::directory::Directory,
    _token_file: common::TempDir,
}

/// Tenants `acme` (apps `web`, `docs`) and `beta` (app `other`), and an admin listener.
fn start(extra: &str) -> Admin {
    let tenants = format!(
        "{}{}",
        common::acme_eddsa_tenant(),
        common::eddsa_tenant("beta")
    );
    start_with(&tenants, extra)
}

/// [`start`] with the tenants (`acme` and `beta`) configured by `tenants`.
fn start_with(tenants: &str, extra: &str) -> Admin {
    let dir = common::TempDir::new("admin");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    // Port 0: a port chosen here and bound by the server later could be taken in between by
    // another test (seen in CI); the server says which it got.
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{token}"
{extra}
{tenants}
[[apps]]
id = "web"
tenant = "acme"
client_id = "web-client"
client_secret_hash = "{hash}"
[[apps]]
id = "docs"
tenant = "acme"
[[apps]]
id = "other"
tenant = "beta"
"#,
        token = token_file.display(),
        hash = wiresocket::auth::secret::hash_secret(CLIENT_SECRET, 1_000),
    );
    let directory = common::directory(&toml);
    let server = common::Server::start(&toml);
    let admin = server
        .admin_addr
        .clone()
        .expect("the first line names the admin listener");
    Admin {
        server,
        admin,
        directory,
        _token_file: dir,
    }
}

impl Admin {
    /// `(status, JSON body)` of one admin request, with `auth` as its Authorization header.
    fn call_with(&self, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.admin).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        // A connection the listener dropped (past its workers and queue) reads as status 0.
        let _ = write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = common::status(&response);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let (status, body) = self.call_with(method, path, Some(&format!("Bearer {ADMIN_TOKEN}")));
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, json)
    }

    fn connect(&self, app: &str, document: &str) -> common::Ws {
        let token = self.directory.mint(app, "u", 600, Value::Null).unwrap();
        common::connect_raw(&self.server.addr, &format!("/{document}?token={token}"))
    }
}

/// The close a client gets within `within`.
fn closed_within(ws: &mut common::Ws, within: Duration) -> (u16, String) {
    ws.get_ref().set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let close = common::expect_close(ws);
    assert!(started.elapsed() <= within, "took {:?}", started.elapsed());
    close
}

/// Whether a client still gets what another client of its document sends.
fn still_synced(reader: common::Ws, writer: common::Ws, text: &str) -> bool {
    let mut writer = common::YClient::from_ws(writer, 7);
    writer.insert(0, text);
    let mut reader = common::YClient::from_ws(reader, 8);
    reader.pump_until(Duration::from_secs(5), |c| c.text().contains(text))
}

#[test]
fn every_request_needs_the_admin_token() {
    let a = start("");
    let (status, body) = a.call_with("GET", "/admin/apps", None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = a.call_with("GET", "/admin/apps", Some("Bearer not-the-token"));
    assert_eq!(status, 403);
    let (status, apps) = a.call("GET", "/admin/apps");
    assert_eq!(status, 200, "{apps}");
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["docs", "other", "web"]);
    assert_eq!(a.call("GET", "/admin/nothing").0, 404);
    assert_eq!(a.call("POST", "/admin/apps/nope/revoke").0, 404);
}

#[test]
fn revoking_an_app_closes_its_sessions_within_a_second_and_others_never_notice() {
    let a = start("");
    let mut web = a.connect("web", "plan");
    let docs_a = a.connect("docs", "notes");
    let docs_b = a.connect("docs", "notes");
    // The app's connection counts are listed.
    let (_, apps) = a.call("GET", "/admin/apps");
    let web_row = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web_row["connections"], 1, "{apps}");
    let (status, answer) = a.call("POST", "/admin/apps/web/revoke");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"], "app:acme::web");
    assert_eq!(answer["sessions_closed"], 1);
    let (code, reason) = closed_within(&mut web, Duration::from_secs(1));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: app revoked"));
    // A new connection of the app is refused; the other app goes on.
    let (code, reason) = common::expect_close(&mut a.connect("web", "plan"));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: app revoked"));
    assert!(still_synced(docs_a, docs_b, "after the revocation"));
    let (_, listed) = a.call("GET", "/admin/revocations");
    assert_eq!(listed["revocations"], serde_json::json!(["app:acme::web"]));
    // Its client gets no tokens.
    let form =
        format!("grant_type=client_credentials&client_id=web-client&client_secret={CLIENT_SECRET}");
    let token_request = |server: &common::Server| {
        server.http(&format!(
            "POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ))
    };
    let refused = token_request(&a.server);
    assert_eq!(common::status(&refused), 401, "{refused}");
    assert!(refused.contains("app revoked"), "{refused}");
    // A Hocuspocus provider opening a document of the app is refused for that document
    // (PermissionDenied, the reason led by the close code); its socket stays open.
    let mut hocuspocus = common::connect_raw(&a.server.addr, "/");
    let token = a.directory.mint("web", "u", 600, Value::Null).unwrap();
    hocuspocus.send(hocuspocus_auth("plan", &token)).unwrap();
    let var_string = |out: &mut Vec<u8>, s: &[u8]| {
        common::var(out, s.len() as u64);
        out.extend_from_slice(s);
    };
    let mut denied = Vec::new();
    var_string(&mut denied, b"plan");
    denied.extend_from_slice(&[2, 1]);
    var_string(&mut denied, b"4003 Forbidden: app revoked");
    match hocuspocus.read().unwrap() {
        tungstenite::Message::Binary(b) => assert_eq!(b.to_vec(), denied),
        other => panic!("{other:?}"),
    }
    // A reload of the configuration file does not lift it (it lives in the registry).
    assert!(a.server.reload().contains("event=reloaded"));
    let (code, _) = common::expect_close(&mut a.connect("web", "plan"));
    assert_eq!(code, 4003, "still revoked after a reload");
    // Restored: connections of the app are let in again.
    let (status, answer) = a.call("POST", "/admin/apps/web/restore");
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, Value::Bool(true))
    );
    let issued = token_request(&a.server);
    assert_eq!(common::status(&issued), 200, "{issued}");
    let back = a.connect("web", "plan");
    let mut c = common::YClient::from_ws(back, 3);
    c.insert(0, "back");
    assert!(c.pump_until(Duration::from_secs(5), |c| c.text() == "back"));
    let log = a.server.log();
    assert!(
        log.contains("event=admin_revocation action=revoked what=app:acme::web sessions_closed=1"),
        "{log}"
    );
}

#[test]
fn revoking_a_tenant_closes_all_its_apps_but_not_another_tenants() {
    let a = start("");
    let mut web = a.connect("web", "d1");
    let mut docs = a.connect("docs", "d2");
    let other = a.connect("other", "d3");
    let other_b = a.connect("other", "d3");
    let (status, answer) = a.call("POST", "/admin/tenants/acme/revoke");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sessions_closed"], 2);
    for ws in [&mut web, &mut docs] {
        let (code, reason) = closed_within(ws, Duration::from_secs(1));
        assert_eq!((code, reason.as_str()), (4003, "Forbidden: tenant revoked"));
    }
    assert!(still_synced(other, other_b, "beta goes on"));
    assert_eq!(a.call("POST", "/admin/tenants/acme/restore").0, 200);
    assert_eq!(a.call("POST", "/admin/tenants/nope/revoke").0, 404);
}

/// `kid`, `alg` and the key pair `tests/keys/{file}_*.pem` as an `acme` key (`private`: with
/// its private key, which the first such key of a tenant signs with).
fn acme_key(kid: &str, alg: &str, file: &str, private: bool) -> String {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let private = if private {
        format!("private_key_file = \"{keys}/{file}_private.pem\"\n")
    } else {
        String::new()
    };
    format!("[[tenants.keys]]\nkid = \"{kid}\"\nalg = \"{alg}\"\npublic_key_file = \"{keys}/{file}_public.pem\"\n{private}")
}

/// A node whose tenant `acme` verifies with `ed` (which `Admin::directory` signs with) and
/// `es`, and a directory that signs with `es`.
fn start_with_two_keys() -> (Admin, wiresocket::auth::directory::Directory) {
    let tenants = format!(
        "[[tenants]]\nid = \"acme\"\n{}{}{}",
        acme_key("ed", "EdDSA", "ed25519", true),
        acme_key("es", "ES256", "es256", false),
        common::eddsa_tenant("beta")
    );
    let es_signer = common::directory(&format!(
        "[[tenants]]\nid = \"acme\"\n{}[[apps]]\nid = \"web\"\ntenant = \"acme\"\n",
        acme_key("es", "ES256", "es256", true)
    ));
    (start_with(&tenants, ""), es_signer)
}

/// A Hocuspocus auth message for `address` with `token`.
fn hocuspocus_auth(address: &str, token: &str) -> tungstenite::Message {
    let mut auth = Vec::new();
    for (i, part) in [address, token].into_iter().enumerate() {
        if i == 1 {
            auth.extend_from_slice(&[2, 0]);
        }
        common::var(&mut auth, part.len() as u64);
        auth.extend_from_slice(part.as_bytes());
    }
    tungstenite::Message::Binary(auth.into())
}

/// Whether `ws` is still open after `wait` (frames read meanwhile are dropped).
fn open_after(ws: &mut common::Ws, wait: Duration) -> bool {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + wait;
    while Instant::now() < until {
        match ws.read() {
            Ok(tungstenite::Message::Close(_)) => return false,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

#[test]
fn a_hocuspocus_document_refreshed_with_another_key_outlives_the_old_keys_revocation() {
    let (a, es_signer) = start_with_two_keys();
    let ed_token = a.directory.mint("web", "u", 600, Value::Null).unwrap();
    let es_token = es_signer.mint("web", "u", 600, Value::Null).unwrap();
    // Documents on both shards of a socket, opened with `ed`, then refreshed with `es`; and
    // a socket whose document stays on `ed`.
    let mut refreshed = common::connect_raw(&a.server.addr, "/");
    let names = ["r0", "r1", "r2", "r3"];
    for name in names {
        refreshed.send(hocuspocus_auth(name, &ed_token)).unwrap();
    }
    let mut stays = common::connect_raw(&a.server.addr, "/");
    stays.send(hocuspocus_auth("s", &ed_token)).unwrap();
    assert!(open_after(&mut refreshed, Duration::from_millis(300)));
    for name in names {
        refreshed.send(hocuspocus_auth(name, &es_token)).unwrap();
    }
    assert!(open_after(&mut refreshed, Duration::from_millis(300)));
    let (status, answer) = a.call("POST", "/admin/keys/acme/ed/revoke");
    assert_eq!(
        (status, &answer["sessions_closed"]),
        (200, &Value::from(1)),
        "{answer}"
    );
    let (code, reason) = closed_within(&mut stays, Duration::from_secs(1));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: key revoked"));
    // Past a sweep (1 s): the refreshed socket is still open.
    assert!(open_after(&mut refreshed, Duration::from_millis(1_500)));
}

#[test]
fn revoking_a_key_closes_the_sessions_it_opened_and_refuses_its_tokens() {
    let (a, es_signer) = start_with_two_keys();
    let connect_es = |document: &str| {
        let token = es_signer.mint("web", "u", 600, Value::Null).unwrap();
        common::connect_raw(&a.server.addr, &format!("/{document}?token={token}"))
    };
    // One document, sessions opened with either key.
    let mut by_ed = a.connect("web", "shared");
    let (es_a, es_b) = (connect_es("shared"), connect_es("shared"));
    std::thread::sleep(Duration::from_millis(200));
    let (status, answer) = a.call("POST", "/admin/keys/acme/ed/revoke");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"], "key:acme::ed");
    assert_eq!(answer["sessions_closed"], 1, "{answer}");
    let (code, reason) = closed_within(&mut by_ed, Duration::from_secs(1));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: key revoked"));
    assert!(still_synced(es_a, es_b, "the other key goes on"));
    // Its tokens are refused, even one the server verified before (its cache).
    let (code, reason) = common::expect_close(&mut a.connect("web", "shared"));
    assert_eq!((code, reason.as_str()), (4003, "Forbidden: key revoked"));
    let (_, listed) = a.call("GET", "/admin/revocations");
    assert_eq!(listed["revocations"], serde_json::json!(["key:acme::ed"]));
    // The token endpoint signs with `ed`: it issues nothing while the key is revoked.
    let form =
        format!("grant_type=client_credentials&client_id=web-client&client_secret={CLIENT_SECRET}");
    let token_request = || {
        a.server.http(&format!(
            "POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ))
    };
    let refused = token_request();
    assert!(refused.contains("key revoked"), "{refused}");
    // Unknown keys and tenants are not found; restored, the key admits again.
    assert_eq!(a.call("POST", "/admin/keys/acme/nope/revoke").0, 404);
    assert_eq!(a.call("POST", "/admin/keys/nope/ed/revoke").0, 404);
    let (status, answer) = a.call("POST", "/admin/keys/acme/ed/restore");
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, Value::Bool(true))
    );
    assert_eq!(common::status(&token_request()), 200);
    let mut c = common::YClient::from_ws(a.connect("web", "shared"), 3);
    assert!(c.pump_until(Duration::from_secs(5), |c| c
        .text()
        .contains("the other key goes on")));
}

#[test]
fn closing_one_document_closes_only_its_sessions() {
    let a = start("");
    let mut x1 = a.connect("web", "x");
    let mut x2 = a.connect("web", "x");
    let _y = a.connect("web", "y");
    std::thread::sleep(Duration::from_millis(200));
    let (_, listed) = a.call("GET", "/admin/documents?app=web");
    let mut names: Vec<(String, u64)> = listed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [("x".to_owned(), 2), ("y".to_owned(), 1)],
        "{listed}"
    );
    let (status, answer) = a.call("POST", "/admin/documents/web/x/close");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sessions_closed"], 2);
    for ws in [&mut x1, &mut x2] {
        let (code, reason) = closed_within(ws, Duration::from_secs(1));
        assert_eq!(
            (code, reason.as_str()),
            (4003, "Forbidden: document closed by the operator")
        );
    }
    let (_, listed) = a.call("GET", "/admin/documents?app=web");
    let names: Vec<&str> = listed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["connections"].as_u64() > Some(0))
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["y"]);
    assert_eq!(
        a.call("POST", "/admin/documents/web/nothing-open/close").0,
        404
    );
}

#[test]
fn metrics_can_move_to_the_admin_listener() {
    let a = start("metrics_on_admin = true");
    assert_eq!(common::status(&a.server.get("/metrics")), 404);
    let (status, body) = a.call_with("GET", "/metrics", Some(&format!("Bearer {ADMIN_TOKEN}")));
    assert_eq!(status, 200);
    assert!(body.contains("wiresocket_connections"), "{body}");
    assert_eq!(a.call_with("GET", "/metrics", None).0, 401);
}

#[test]
fn an_admin_listener_without_a_token_does_not_start() {
    let stderr = common::refused_start(
        "allow_development_tenant = true\nadmin_listen = \"127.0.0.1:0\"\n",
        &[],
    );
    assert!(
        stderr.contains("admin_listen is set but there is no admin token"),
        "{stderr}"
    );
}

#[test]
fn the_command_line_calls_each_endpoint() {
    let a = start("");
    let mut web = a.connect("web", "plan");
    let run = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
            .arg("admin")
            .args(["--url", &format!("http://{}", a.admin)])
            .args(args)
            .env("WIRESOCKET_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(ADMIN_TOKEN, &["apps"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"id\": \"web\""), "{out}");
    let (ok, out, err) = run(ADMIN_TOKEN, &["documents", "--app", "web"]);
    assert!(ok && out.contains("\"name\": \"plan\""), "{out}{err}");
    let (ok, out, err) = run(ADMIN_TOKEN, &["revoke-app", "web"]);
    assert!(ok && out.contains("\"sessions_closed\": 1"), "{out}{err}");
    assert_eq!(closed_within(&mut web, Duration::from_secs(1)).0, 4003);
    let (ok, out, _) = run(ADMIN_TOKEN, &["revocations"]);
    assert!(ok && out.contains("app:acme::web"), "{out}");
    for args in [
        &["restore-app", "web"][..],
        &["revoke-tenant", "beta"],
        &["restore-tenant", "beta"],
    ] {
        let (ok, out, err) = run(ADMIN_TOKEN, args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let _x = a.connect("web", "x");
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out, err) = run(ADMIN_TOKEN, &["close-document", "web", "x"]);
    assert!(ok && out.contains("\"sessions_closed\": 1"), "{out}{err}");
    let (ok, out, err) = run(ADMIN_TOKEN, &["rotate-secret", "web"]);
    assert!(ok && out.contains("\"client_secret\""), "{out}{err}");
    // acme's key has no kid here (the key test revokes one that has).
    for action in ["revoke-key", "restore-key"] {
        let (ok, out, err) = run(ADMIN_TOKEN, &[action, "acme", "k1"]);
        assert!(!ok && err.contains("HTTP 404"), "{out}{err}");
        assert!(err.contains("has no key with kid"), "{out}{err}");
    }
    let (ok, _, err) = run("the-wrong-token-the-wrong-token-!", &["apps"]);
    assert!(!ok && err.contains("HTTP 403"), "{err}");
}

#[test]
fn silent_connections_cannot_lock_the_operator_out() {
    let a = start("");
    // More idle connections than the listener's workers and queue hold.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&a.admin).unwrap())
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        // A dropped connection reads as an empty answer: try again.
        let (status, _) = a.call_with(
            "GET",
            "/admin/revocations",
            Some(&format!("Bearer {ADMIN_TOKEN}")),
        );
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "locked out");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn rotating_a_secret_answers_it_once_and_ends_the_old_secret_and_refresh_tokens() {
    let a = start("");
    let token_request = |form: &str| {
        let answer = a.server.http(&format!(
            "POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (
            common::status(&answer),
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let with_secret = |secret: &str| {
        format!("grant_type=client_credentials&scope=WireSocket.API%20offline_access&client_id=web-client&client_secret={secret}")
    };
    let (status, issued) = token_request(&with_secret(CLIENT_SECRET));
    assert_eq!(status, 200, "{issued}");
    let refresh = issued["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let (status, rotated) = a.call("POST", "/admin/apps/web/rotate-secret");
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert!(new_secret.len() >= 40, "{new_secret}");
    assert_eq!(rotated["client_id"], "web-client");
    // The old secret no longer authenticates; the new one does; the old refresh token is
    // refused even with the new secret.
    assert_eq!(token_request(&with_secret(CLIENT_SECRET)).0, 401);
    let (status, answer) = token_request(&with_secret(&new_secret));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = token_request(&format!(
        "grant_type=refresh_token&refresh_token={refresh}&client_id=web-client&client_secret={new_secret}"
    ));
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_grant")),
        "{answer}"
    );
    assert!(answer["error_description"]
        .as_str()
        .unwrap()
        .contains("secret changed"));
    // Only its hash is kept: the log does not hold it.
    assert!(!a.server.log().contains(&new_secret));
    // An app without a client id has no secret to rotate; an unknown one is not found.
    assert_eq!(a.call("POST", "/admin/apps/docs/rotate-secret").0, 409);
    assert_eq!(a.call("POST", "/admin/apps/nope/rotate-secret").0, 404);
}
