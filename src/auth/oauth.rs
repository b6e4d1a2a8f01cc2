//! `POST /connect/token`: OAuth 2 client credentials and rotating refresh tokens.

use super::directory::{random_id, Directory};
use super::secret::verify_secret;
use super::verify::App;
use crate::http::response::json_string;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

pub const ACCESS_TTL_S: u64 = 900;
pub const REFRESH_TTL_S: u64 = 7 * 24 * 3600;

/// Refresh tokens outstanding at most; past it, expired ones are dropped, then issuing fails.
pub const REFRESH_TOKENS_MAX: usize = 100_000;

struct RefreshRecord {
    app_id: String,
    client_id: String,
    expires_at_s: u64,
    /// The app's secret hash when the token was issued: a rotated secret ends its tokens.
    secret_hash: String,
}

/// Outstanding refresh tokens, by the SHA-256 of the token (the token itself is not kept).
#[derive(Default)]
pub struct RefreshStore {
    tokens: Mutex<HashMap<[u8; 32], RefreshRecord>>,
}

/// An HTTP answer: status and JSON body.
pub type Answer = (u16, String);

fn error(status: u16, code: &str, description: &str) -> Answer {
    (
        status,
        format!(
            "{{\"error\":{},\"error_description\":{}}}",
            json_string(code),
            json_string(description)
        ),
    )
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Handles one form-encoded token request.
pub fn token_endpoint(
    directory: &Directory,
    store: &RefreshStore,
    form: &str,
    now_s: u64,
) -> Answer {
    let fields = parse_form(form);
    let field = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    match field("grant_type") {
        None => error(400, "invalid_request", "grant_type is required"),
        Some("client_credentials") => {
            let (Some(client_id), Some(secret)) = (field("client_id"), field("client_secret"))
            else {
                return error(
                    400,
                    "invalid_request",
                    "client_id and client_secret are required",
                );
            };
            let scope = field("scope").unwrap_or(super::SCOPE);
            if !scope.split_ascii_whitespace().any(|s| s == super::SCOPE) {
                return error(400, "invalid_scope", "scope must include WireSocket.API");
            }
            let app = match find_client(directory, client_id) {
                Some(app)
                    if app
                        .client_secret_hash
                        .as_deref()
                        .is_some_and(|h| verify_secret(secret, h)) =>
                {
                    app
                }
                _ => return error(401, "invalid_client", "unknown client or wrong secret"),
            };
            let offline = scope
                .split_ascii_whitespace()
                .any(|s| s == "offline_access");
            issue(directory, store, app, client_id, offline, now_s)
        }
        Some("refresh_token") => {
            let (Some(refresh), Some(client_id)) = (field("refresh_token"), field("client_id"))
            else {
                return error(
                    400,
                    "invalid_request",
                    "refresh_token and client_id are required",
                );
            };
            // Single use: taken out whatever happens next.
            let record = store
                .tokens
                .lock()
                .expect("refresh store")
                .remove(&digest(refresh));
            let Some(record) =
                record.filter(|r| r.client_id == client_id && r.expires_at_s > now_s)
            else {
                return error(
                    401,
                    "invalid_grant",
                    "refresh token unknown, used, expired or not this client's",
                );
            };
            let app = match directory.apps.get(&record.app_id) {
                Some(app)
                    if app.client_secret_hash.as_deref() == Some(record.secret_hash.as_str()) =>
                {
                    app
                }
                _ => {
                    return error(
                        401,
                        "invalid_grant",
                        "the client's secret changed: authenticate again",
                    )
                }
            };
            issue(directory, store, app, client_id, true, now_s)
        }
        Some(_) => error(
            400,
            "unsupported_grant_type",
            "use client_credentials or refresh_token",
        ),
    }
}

fn find_client<'d>(directory: &'d Directory, client_id: &str) -> Option<&'d App> {
    directory
        .apps
        .values()
        .find(|a| a.enabled && a.client_id.as_deref() == Some(client_id))
}

fn issue(
    directory: &Directory,
    store: &RefreshStore,
    app: &App,
    client_id: &str,
    offline: bool,
    now_s: u64,
) -> Answer {
    let access = match directory.mint(&app.id, client_id, ACCESS_TTL_S, serde_json::Value::Null) {
        Ok(token) => token,
        Err(e) => return error(500, "server_error", &e),
    };
    let mut body = format!(
        "{{\"access_token\":{},\"token_type\":\"Bearer\",\"expires_in\":{ACCESS_TTL_S}",
        json_string(&access)
    );
    if offline {
        let refresh = format!("{}{}", random_id(), random_id());
        let mut tokens = store.tokens.lock().expect("refresh store");
        if tokens.len() >= REFRESH_TOKENS_MAX {
            tokens.retain(|_, r| r.expires_at_s > now_s);
        }
        if tokens.len() >= REFRESH_TOKENS_MAX {
            return error(
                503,
                "temporarily_unavailable",
                "too many outstanding refresh tokens",
            );
        }
        tokens.insert(
            digest(&refresh),
            RefreshRecord {
                app_id: app.id.clone(),
                client_id: client_id.to_owned(),
                expires_at_s: now_s + REFRESH_TTL_S,
                secret_hash: app.client_secret_hash.clone().unwrap_or_default(),
            },
        );
        body.push_str(&format!(",\"refresh_token\":{}", json_string(&refresh)));
    }
    body.push('}');
    (200, body)
}

/// `application/x-www-form-urlencoded` into a map (`+` is a space). Repeated keys: the first.
pub fn parse_form(form: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in form.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| crate::http::request::percent_decode(&s.replace('+', " "));
        if let (Some(k), Some(v)) = (decode(k), decode(v)) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::{DEV, DEV_CLIENT_SECRET};
    use crate::config::Config;

    fn setup() -> (Directory, RefreshStore) {
        (
            Directory::from_config(&Config::default()).unwrap(),
            RefreshStore::default(),
        )
    }

    fn json(answer: &Answer) -> serde_json::Value {
        serde_json::from_str(&answer.1).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn client_credentials_then_refresh_rotation() {
        let (d, store) = setup();
        let form = format!("grant_type=client_credentials&client_id={DEV}&client_secret={DEV_CLIENT_SECRET}&scope=WireSocket.API+offline_access");
        let first = token_endpoint(&d, &store, &form, NOW);
        assert_eq!(first.0, 200, "{}", first.1);
        let body = json(&first);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        let identity = d
            .verifier
            .verify(body["access_token"].as_str().unwrap())
            .unwrap();
        assert_eq!(identity.app.id, DEV);
        let refresh = body["refresh_token"].as_str().unwrap().to_owned();

        let form = format!("grant_type=refresh_token&refresh_token={refresh}&client_id={DEV}");
        let second = token_endpoint(&d, &store, &form, NOW + 60);
        assert_eq!(second.0, 200, "{}", second.1);
        let rotated = json(&second)["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rotated, refresh);
        // The used one is refused, the new one works once.
        let reuse = token_endpoint(&d, &store, &form, NOW + 61);
        assert_eq!(
            (reuse.0, json(&reuse)["error"].as_str()),
            (401, Some("invalid_grant"))
        );
        let form = format!("grant_type=refresh_token&refresh_token={rotated}&client_id={DEV}");
        assert_eq!(token_endpoint(&d, &store, &form, NOW + 62).0, 200);
    }

    #[test]
    fn refresh_tokens_expire_after_seven_days_and_need_offline_access() {
        let (d, store) = setup();
        let form = format!(
            "grant_type=client_credentials&client_id={DEV}&client_secret={DEV_CLIENT_SECRET}"
        );
        assert!(json(&token_endpoint(&d, &store, &form, NOW))
            .get("refresh_token")
            .is_none());
        let form = format!("{form}&scope=WireSocket.API%20offline_access");
        let refresh = json(&token_endpoint(&d, &store, &form, NOW))["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let form = format!("grant_type=refresh_token&refresh_token={refresh}&client_id={DEV}");
        assert_eq!(
            token_endpoint(&d, &store, &form, NOW + REFRESH_TTL_S).0,
            401
        );
    }

    #[test]
    fn oauth_errors() {
        let (d, store) = setup();
        let cases = [
            ("", 400, "invalid_request"),
            ("grant_type=password", 400, "unsupported_grant_type"),
            (
                "grant_type=client_credentials&client_id=dev",
                400,
                "invalid_request",
            ),
            (
                "grant_type=client_credentials&client_id=dev&client_secret=wrong",
                401,
                "invalid_client",
            ),
            (
                "grant_type=client_credentials&client_id=ghost&client_secret=x",
                401,
                "invalid_client",
            ),
            (
                "grant_type=client_credentials&client_id=dev&client_secret=dev-secret&scope=openid",
                400,
                "invalid_scope",
            ),
            (
                "grant_type=refresh_token&refresh_token=nope&client_id=dev",
                401,
                "invalid_grant",
            ),
            (
                "grant_type=refresh_token&client_id=dev",
                400,
                "invalid_request",
            ),
        ];
        for (form, status, code) in cases {
            let answer = token_endpoint(&d, &store, form, NOW);
            assert_eq!(
                (answer.0, json(&answer)["error"].as_str().unwrap()),
                (status, code),
                "{form}"
            );
        }
    }

    #[test]
    fn forms_decode() {
        let f = parse_form("a=1&b=x+y%21&a=2&c");
        assert_eq!(f["a"], "1");
        assert_eq!(f["b"], "x y!");
        assert_eq!(f["c"], "");
    }
}
