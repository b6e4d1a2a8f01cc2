//! `POST /connect/token`: OAuth 2 client credentials and rotating refresh tokens (RFC 9700
//! 4.14): a refresh needs the client's secret, each refresh token works once, and presenting
//! one that was already rotated revokes every token descending from the same first issue
//! (its family), since one of the two holders is not the client.

use super::directory::Directory;
use super::secret::{verify_nothing, verify_secret};
use super::verify::App;
use crate::http::response::json_string;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub const ACCESS_TTL_S: u64 = 900;
/// A family's life from its first issue; rotating does not extend it.
pub const REFRESH_TTL_S: u64 = 7 * 24 * 3600;

/// Outstanding refresh tokens (one per family) of one app at most. At the bound the app's
/// expired families are dropped, then its oldest family is evicted: an app that logs in
/// with `offline_access` on every call pushes out its own oldest sessions instead of being
/// locked out of issuing for a week, and cannot touch other apps' tokens.
pub const REFRESH_TOKENS_PER_APP_MAX: usize = 10_000;
/// Outstanding refresh tokens on the node at most; past it, expired ones are dropped, then
/// issuing fails with 503 (evicting another app's tokens would let one app end another's).
pub const REFRESH_TOKENS_MAX: usize = 100_000;

/// A refresh token is `hex(family id) hex(secret)`, 16 random bytes each. The family id
/// finds the family even for a token that was rotated away, so a reuse is recognised without
/// keeping every used token; only a holder of one of the family's tokens knows the id.
type FamilyId = [u8; 16];
const TOKEN_HEX_LEN: usize = 64;

struct Family {
    app_id: String,
    client_id: String,
    expires_at_s: u64,
    /// The app's secret hash at the first issue: a rotated secret ends the family.
    secret_hash: String,
    /// SHA-256 of the family's one outstanding token (the token itself is not kept).
    current: [u8; 32],
    /// Issue order, for eviction.
    seq: u64,
}

#[derive(Default)]
struct Families {
    by_id: HashMap<FamilyId, Family>,
    /// Every family by issue order, and each app's.
    order: BTreeMap<u64, FamilyId>,
    per_app: HashMap<String, BTreeMap<u64, FamilyId>>,
    next_seq: u64,
}

impl Families {
    fn remove(&mut self, id: &FamilyId) -> Option<Family> {
        let family = self.by_id.remove(id)?;
        self.order.remove(&family.seq);
        if let Some(app) = self.per_app.get_mut(&family.app_id) {
            app.remove(&family.seq);
            if app.is_empty() {
                self.per_app.remove(&family.app_id);
            }
        }
        Some(family)
    }

    /// Drops the oldest families of `order` while they are expired (issue order is expiry
    /// order, since every family lives `REFRESH_TTL_S`).
    fn drop_expired(&mut self, app: Option<&str>, now_s: u64) {
        loop {
            let oldest = match app {
                Some(app) => self.per_app.get(app).and_then(|o| o.values().next()),
                None => self.order.values().next(),
            };
            match oldest.copied() {
                Some(id) if self.by_id[&id].expires_at_s <= now_s => {
                    self.remove(&id);
                }
                _ => return,
            }
        }
    }

    fn app_len(&self, app: &str) -> usize {
        self.per_app.get(app).map_or(0, BTreeMap::len)
    }
}

/// Outstanding refresh token families, bounded per app and per node.
pub struct RefreshStore {
    families: Mutex<Families>,
    per_app_max: usize,
    total_max: usize,
}

impl Default for RefreshStore {
    fn default() -> Self {
        Self::with_bounds(REFRESH_TOKENS_PER_APP_MAX, REFRESH_TOKENS_MAX)
    }
}

impl RefreshStore {
    fn with_bounds(per_app_max: usize, total_max: usize) -> Self {
        RefreshStore {
            families: Mutex::default(),
            per_app_max,
            total_max,
        }
    }

    /// Starts a family for `app`; `None` when the node is at its bound.
    fn start_family(&self, app: &App, client_id: &str, now_s: u64) -> Option<String> {
        let mut f = self.families.lock().expect("refresh store");
        if f.app_len(&app.id) >= self.per_app_max {
            f.drop_expired(Some(&app.id), now_s);
            if f.app_len(&app.id) >= self.per_app_max {
                let oldest = f.per_app[&app.id].values().next().copied();
                if let Some(oldest) = oldest {
                    f.remove(&oldest);
                }
            }
        }
        if f.by_id.len() >= self.total_max {
            f.drop_expired(None, now_s);
            if f.by_id.len() >= self.total_max {
                return None;
            }
        }
        let id: FamilyId = rand::random();
        let (token, current) = new_token(&id);
        let seq = f.next_seq;
        f.next_seq += 1;
        f.by_id.insert(
            id,
            Family {
                app_id: app.id.clone(),
                client_id: client_id.to_owned(),
                expires_at_s: now_s + REFRESH_TTL_S,
                secret_hash: app.client_secret_hash.clone().unwrap_or_default(),
                current,
                seq,
            },
        );
        f.order.insert(seq, id);
        f.per_app.entry(app.id.clone()).or_default().insert(seq, id);
        Some(token)
    }

    /// Takes `token` for `client`, an enabled app whose secret was just checked: the
    /// family's next token, or why not.
    fn rotate(
        &self,
        client: &App,
        client_id: &str,
        token: &str,
        now_s: u64,
    ) -> Result<String, Refused> {
        let id = family_id(token).ok_or(Refused::Unknown)?;
        let mut f = self.families.lock().expect("refresh store");
        let family = f.by_id.get_mut(&id).ok_or(Refused::Unknown)?;
        if family.expires_at_s <= now_s {
            f.remove(&id);
            return Err(Refused::Expired);
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let revoke = if !same_digest(&presented, &family.current) {
            Some("a refresh token was used again after it had been rotated")
        } else if family.client_id != client_id || family.app_id != client.id {
            Some("a refresh token was presented by another client")
        } else {
            None
        };
        if let Some(reason) = revoke {
            let family = f.remove(&id).expect("present");
            return Err(Refused::Revoked(Box::new(SecurityEvent {
                name: "refresh_token_family_revoked",
                reason,
                app_id: family.app_id,
                client_id: family.client_id,
                presented_by: client_id.to_owned(),
                family: family_label(&id),
            })));
        }
        if client.client_secret_hash.as_deref() != Some(family.secret_hash.as_str()) {
            f.remove(&id);
            return Err(Refused::SecretChanged);
        }
        let (next, digest) = new_token(&id);
        family.current = digest;
        Ok(next)
    }
}

/// Why a refresh token was refused (all `invalid_grant`).
enum Refused {
    Unknown,
    Expired,
    SecretChanged,
    Revoked(Box<SecurityEvent>),
}

/// Something to log as a security event. Never holds a token: the family is named by a
/// hash of its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    pub name: &'static str,
    pub reason: &'static str,
    pub app_id: String,
    pub client_id: String,
    /// The client that presented the token.
    pub presented_by: String,
    pub family: String,
}

/// A new token of family `id`, and its digest.
fn new_token(id: &FamilyId) -> (String, [u8; 32]) {
    let secret: [u8; 16] = rand::random();
    let token: String = id
        .iter()
        .chain(&secret)
        .map(|b| format!("{b:02x}"))
        .collect();
    let digest = Sha256::digest(token.as_bytes()).into();
    (token, digest)
}

fn family_id(token: &str) -> Option<FamilyId> {
    let hex = token.as_bytes();
    if hex.len() != TOKEN_HEX_LEN || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// What logs call a family: 8 bytes of SHA-256 of its id, which does not help forge a token.
fn family_label(id: &FamilyId) -> String {
    Sha256::digest(id)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The OAuth 2 errors (RFC 6749 5.2, and 503's `temporarily_unavailable`); `refusal` says
/// which HTTP status each is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    UnsupportedGrantType,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    ServerError,
    TemporarilyUnavailable,
}

impl OAuthError {
    pub fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::ServerError => "server_error",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An answer: the error (none: 200), the JSON body, and a security event to log, if any.
#[derive(Debug)]
pub struct Answer {
    pub error: Option<OAuthError>,
    pub body: String,
    pub event: Option<SecurityEvent>,
}

pub fn error(error: OAuthError, description: &str) -> Answer {
    Answer {
        error: Some(error),
        body: format!(
            "{{\"error\":{},\"error_description\":{}}}",
            json_string(error.code()),
            json_string(description)
        ),
        event: None,
    }
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
    let grant = field("grant_type");
    let required = match grant {
        None => return error(OAuthError::InvalidRequest, "grant_type is required"),
        Some("client_credentials") => "client_id and client_secret are required",
        Some("refresh_token") => "refresh_token, client_id and client_secret are required",
        Some(_) => {
            return error(
                OAuthError::UnsupportedGrantType,
                "use client_credentials or refresh_token",
            )
        }
    };
    let (Some(client_id), Some(secret)) = (field("client_id"), field("client_secret")) else {
        return error(OAuthError::InvalidRequest, required);
    };
    if grant == Some("refresh_token") {
        let Some(refresh) = field("refresh_token") else {
            return error(OAuthError::InvalidRequest, required);
        };
        let Some(app) = authenticate(directory, client_id, secret) else {
            return error(OAuthError::InvalidClient, "unknown client or wrong secret");
        };
        return match store.rotate(&app, client_id, refresh, now_s) {
            Ok(next) => issue(directory, &app, client_id, Some(next)),
            Err(refused) => {
                let (description, event) = match refused {
                    Refused::Unknown => ("refresh token unknown, revoked or malformed", None),
                    Refused::Expired => ("refresh token expired: authenticate again", None),
                    Refused::SecretChanged => {
                        ("the client's secret changed: authenticate again", None)
                    }
                    Refused::Revoked(event) => (
                        "refresh token already used: every token of its family is revoked",
                        Some(*event),
                    ),
                };
                Answer {
                    event,
                    ..error(OAuthError::InvalidGrant, description)
                }
            }
        };
    }
    let scope = field("scope").unwrap_or(super::SCOPE);
    if !scope.split_ascii_whitespace().any(|s| s == super::SCOPE) {
        return error(
            OAuthError::InvalidScope,
            "scope must include WireSocket.API",
        );
    }
    let Some(app) = authenticate(directory, client_id, secret) else {
        return error(OAuthError::InvalidClient, "unknown client or wrong secret");
    };
    let refresh = if scope
        .split_ascii_whitespace()
        .any(|s| s == "offline_access")
    {
        match store.start_family(&app, client_id, now_s) {
            Some(token) => Some(token),
            None => {
                return error(
                    OAuthError::TemporarilyUnavailable,
                    "too many outstanding refresh tokens",
                )
            }
        }
    } else {
        None
    };
    issue(directory, &app, client_id, refresh)
}

/// The enabled app whose client this is, if `secret` is its secret. A disabled app's client
/// fails authentication (`invalid_client`, RFC 6749 5.2).
/// An unknown client costs a check too (`verify_nothing`).
/// The app comes with the secret hash in force (a rotated one, see
/// `Directory::client_secret_hash`), which refresh token families are bound to.
fn authenticate(directory: &Directory, client_id: &str, secret: &str) -> Option<App> {
    let found = directory
        .apps
        .values()
        .find(|a| a.enabled && a.client_id.as_deref() == Some(client_id))
        .and_then(|a| Some((a, directory.client_secret_hash(a)?)));
    match found {
        Some((app, hash)) => verify_secret(secret, &hash).then(|| App {
            client_secret_hash: Some(hash),
            ..app.clone()
        }),
        None => {
            verify_nothing(secret);
            None
        }
    }
}

fn issue(directory: &Directory, app: &App, client_id: &str, refresh: Option<String>) -> Answer {
    let access = match directory.mint(&app.id, client_id, ACCESS_TTL_S, serde_json::Value::Null) {
        Ok(token) => token,
        Err(e) => return error(OAuthError::ServerError, &e),
    };
    let mut body = format!(
        "{{\"access_token\":{},\"token_type\":\"Bearer\",\"expires_in\":{ACCESS_TTL_S}",
        json_string(&access)
    );
    if let Some(refresh) = refresh {
        body.push_str(&format!(",\"refresh_token\":{}", json_string(&refresh)));
    }
    body.push('}');
    Answer {
        error: None,
        body,
        event: None,
    }
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
    use crate::auth::secret::hash_secret;
    use crate::config::Config;

    fn setup() -> (Directory, RefreshStore) {
        (
            Directory::from_config(&Config::default()).unwrap(),
            RefreshStore::default(),
        )
    }

    fn json(answer: &Answer) -> serde_json::Value {
        serde_json::from_str(&answer.body).unwrap()
    }

    fn error_of(answer: &Answer) -> (Option<OAuthError>, String) {
        (
            answer.error,
            json(answer)["error"].as_str().unwrap().to_owned(),
        )
    }

    const NOW: u64 = 1_800_000_000;
    const DAY_S: u64 = 24 * 3600;
    const LOGIN: &str = "grant_type=client_credentials&scope=WireSocket.API+offline_access";

    /// A login of `client` with `secret` (and offline_access): the refresh token.
    fn login(
        d: &Directory,
        store: &RefreshStore,
        client: &str,
        secret: &str,
        now_s: u64,
    ) -> String {
        let answer = token_endpoint(
            d,
            store,
            &format!("{LOGIN}&client_id={client}&client_secret={secret}"),
            now_s,
        );
        assert_eq!(answer.error, None, "{}", answer.body);
        json(&answer)["refresh_token"].as_str().unwrap().to_owned()
    }

    fn refresh(
        d: &Directory,
        store: &RefreshStore,
        token: &str,
        client: &str,
        secret: &str,
        now_s: u64,
    ) -> Answer {
        token_endpoint(
            d,
            store,
            &format!("grant_type=refresh_token&refresh_token={token}&client_id={client}&client_secret={secret}"),
            now_s,
        )
    }

    fn dev_refresh(d: &Directory, store: &RefreshStore, token: &str, now_s: u64) -> Answer {
        refresh(d, store, token, DEV, DEV_CLIENT_SECRET, now_s)
    }

    /// The cheap-hash `web` app of [`apps`].
    fn web_refresh(d: &Directory, store: &RefreshStore, token: &str, now_s: u64) -> Answer {
        refresh(d, store, token, "web-c", "web-secret", now_s)
    }

    fn rotated(answer: &Answer) -> String {
        assert_eq!(answer.error, None, "{}", answer.body);
        json(answer)["refresh_token"].as_str().unwrap().to_owned()
    }

    #[test]
    fn client_credentials_then_refresh_rotation() {
        let (d, store) = setup();
        let form = format!("grant_type=client_credentials&client_id={DEV}&client_secret={DEV_CLIENT_SECRET}&scope=WireSocket.API+offline_access");
        let first = token_endpoint(&d, &store, &form, NOW);
        assert_eq!(first.error, None, "{}", first.body);
        let body = json(&first);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        let identity = d
            .verifier
            .verify(body["access_token"].as_str().unwrap())
            .unwrap();
        assert_eq!(identity.app.id, DEV);
        let refresh = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(refresh.len(), TOKEN_HEX_LEN);

        let second = rotated(&dev_refresh(&d, &store, &refresh, NOW + 60));
        assert_ne!(second, refresh);
        let third = rotated(&dev_refresh(&d, &store, &second, NOW + 61));
        assert_eq!(
            rotated(&dev_refresh(&d, &store, &third, NOW + 62)).len(),
            TOKEN_HEX_LEN
        );
    }

    #[test]
    fn reuse_revokes_the_whole_family_and_is_a_security_event() {
        let (d, store) = (apps(true, "web-secret"), RefreshStore::default());
        let first = login(&d, &store, "web-c", "web-secret", NOW);
        let other_family = login(&d, &store, "web-c", "web-secret", NOW);
        let second = rotated(&web_refresh(&d, &store, &first, NOW + 1));
        let third = rotated(&web_refresh(&d, &store, &second, NOW + 2));
        // The first token again: an attacker or the client replays it.
        let reuse = web_refresh(&d, &store, &first, NOW + 3);
        assert_eq!(
            error_of(&reuse),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        let event = reuse.event.expect("a security event");
        assert_eq!(
            (event.name, event.app_id.as_str(), event.client_id.as_str()),
            ("refresh_token_family_revoked", "web", "web-c")
        );
        let logged = format!("{event:?}");
        for token in [&first, &second, &third] {
            assert!(
                !logged.contains(&token[..]) && !logged.contains(&token[32..]),
                "{logged}"
            );
        }
        // Every descendant is revoked, the newest included; other families are not.
        let newest = web_refresh(&d, &store, &third, NOW + 4);
        assert_eq!(
            error_of(&newest),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        assert!(newest.event.is_none(), "the family is gone: logged once");
        rotated(&web_refresh(&d, &store, &other_family, NOW + 5));
    }

    #[test]
    fn refreshing_needs_the_client_secret() {
        let (d, store) = (apps(true, "web-secret"), RefreshStore::default());
        let token = login(&d, &store, "web-c", "web-secret", NOW);
        let no_secret = token_endpoint(
            &d,
            &store,
            &format!("grant_type=refresh_token&refresh_token={token}&client_id=web-c"),
            NOW,
        );
        assert_eq!(
            error_of(&no_secret),
            (Some(OAuthError::InvalidRequest), "invalid_request".into())
        );
        let wrong = refresh(&d, &store, &token, "web-c", "guess", NOW);
        assert_eq!(
            error_of(&wrong),
            (Some(OAuthError::InvalidClient), "invalid_client".into())
        );
        // Neither spent the token.
        rotated(&web_refresh(&d, &store, &token, NOW));
    }

    #[test]
    fn a_family_lives_seven_days_from_its_first_issue() {
        let (d, store) = (apps(true, "web-secret"), RefreshStore::default());
        let form = "grant_type=client_credentials&client_id=web-c&client_secret=web-secret";
        assert!(
            json(&token_endpoint(&d, &store, form, NOW))
                .get("refresh_token")
                .is_none(),
            "no offline_access, no refresh token"
        );
        let mut token = login(&d, &store, "web-c", "web-secret", NOW);
        for day in 1..7 {
            token = rotated(&web_refresh(&d, &store, &token, NOW + day * DAY_S));
        }
        let late = web_refresh(&d, &store, &token, NOW + REFRESH_TTL_S);
        assert_eq!(
            error_of(&late),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        assert!(json(&late)["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"));
    }

    /// Two tenants' worth of apps with client credentials (cheap hashes); `web` may be
    /// disabled and its secret chosen.
    fn apps(web_enabled: bool, web_secret: &str) -> Directory {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        let toml = format!(
            "[[tenants]]\nid = \"acme\"\n[[tenants.keys]]\nalg = \"ES256\"\npublic_key_file = \"{keys}/es256_public.pem\"\nprivate_key_file = \"{keys}/es256_private.pem\"\n\
             [[apps]]\nid = \"web\"\ntenant = \"acme\"\nenabled = {web_enabled}\nclient_id = \"web-c\"\nclient_secret_hash = \"{}\"\n\
             [[apps]]\nid = \"api\"\ntenant = \"acme\"\nclient_id = \"api-c\"\nclient_secret_hash = \"{}\"\n",
            hash_secret(web_secret, 1),
            hash_secret("api-secret", 1),
        );
        Directory::from_config(&Config::from_toml(&toml, "t.toml").unwrap()).unwrap()
    }

    #[test]
    fn a_disabled_app_or_a_changed_secret_ends_its_tokens() {
        let store = RefreshStore::default();
        let token = login(
            &apps(true, "web-secret"),
            &store,
            "web-c",
            "web-secret",
            NOW,
        );
        let disabled = refresh(
            &apps(false, "web-secret"),
            &store,
            &token,
            "web-c",
            "web-secret",
            NOW,
        );
        assert_eq!(
            error_of(&disabled),
            (Some(OAuthError::InvalidClient), "invalid_client".into())
        );
        let changed = refresh(
            &apps(true, "new-secret"),
            &store,
            &token,
            "web-c",
            "new-secret",
            NOW,
        );
        assert_eq!(
            error_of(&changed),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        let again = refresh(
            &apps(true, "web-secret"),
            &store,
            &token,
            "web-c",
            "web-secret",
            NOW,
        );
        assert_eq!(
            error_of(&again),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into()),
            "the family ended"
        );
    }

    #[test]
    fn another_clients_token_is_refused_and_its_family_revoked() {
        let d = apps(true, "web-secret");
        let store = RefreshStore::default();
        let token = login(&d, &store, "web-c", "web-secret", NOW);
        let stolen = refresh(&d, &store, &token, "api-c", "api-secret", NOW);
        assert_eq!(
            error_of(&stolen),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        let event = stolen.event.unwrap();
        assert_eq!(
            (event.client_id.as_str(), event.presented_by.as_str()),
            ("web-c", "api-c")
        );
        let owner = refresh(&d, &store, &token, "web-c", "web-secret", NOW);
        assert_eq!(
            error_of(&owner),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
    }

    #[test]
    fn an_apps_quota_evicts_its_oldest_family() {
        let d = apps(true, "web-secret");
        let store = RefreshStore::with_bounds(2, 100);
        let web = |now_s| login(&d, &store, "web-c", "web-secret", now_s);
        let api = login(&d, &store, "api-c", "api-secret", NOW);
        let (w1, w2) = (web(NOW), web(NOW + 1));
        let w3 = web(NOW + 2);
        let evicted = refresh(&d, &store, &w1, "web-c", "web-secret", NOW + 3);
        assert_eq!(
            error_of(&evicted),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
        assert!(evicted.event.is_none(), "an eviction is not a reuse");
        rotated(&refresh(&d, &store, &w2, "web-c", "web-secret", NOW + 3));
        rotated(&refresh(&d, &store, &w3, "web-c", "web-secret", NOW + 3));
        assert_eq!(store.families.lock().unwrap().app_len("web"), 2);
        // Another app's quota is its own.
        rotated(&refresh(&d, &store, &api, "api-c", "api-secret", NOW + 4));
    }

    #[test]
    fn an_apps_quota_drops_its_expired_families_first() {
        let d = apps(true, "web-secret");
        let store = RefreshStore::with_bounds(3, 100);
        let web = |now_s| login(&d, &store, "web-c", "web-secret", now_s);
        let _expire = (web(NOW), web(NOW));
        let live = web(NOW + 10);
        web(NOW + REFRESH_TTL_S);
        // Both expired went (evicting only the oldest would leave three).
        assert_eq!(store.families.lock().unwrap().app_len("web"), 2);
        rotated(&refresh(
            &d,
            &store,
            &live,
            "web-c",
            "web-secret",
            NOW + REFRESH_TTL_S,
        ));
    }

    #[test]
    fn the_node_bound_drops_expired_families_then_answers_503() {
        let (d, store) = (apps(true, "web-secret"), RefreshStore::with_bounds(10, 2));
        login(&d, &store, "web-c", "web-secret", NOW);
        login(&d, &store, "web-c", "web-secret", NOW + 1);
        let full = token_endpoint(
            &d,
            &store,
            &format!("{LOGIN}&client_id=web-c&client_secret=web-secret"),
            NOW + 2,
        );
        assert_eq!(
            error_of(&full),
            (
                Some(OAuthError::TemporarilyUnavailable),
                "temporarily_unavailable".into()
            )
        );
        login(&d, &store, "web-c", "web-secret", NOW + 1 + REFRESH_TTL_S);
        assert_eq!(
            store.families.lock().unwrap().by_id.len(),
            1,
            "both expired were dropped"
        );
    }

    #[test]
    fn an_unknown_or_disabled_client_costs_what_a_known_one_does() {
        use crate::auth::secret::ITERATIONS_RUN;
        let (d, store) = setup();
        let cost = |form: &str| {
            let before = ITERATIONS_RUN.with(|n| n.get());
            let answer = token_endpoint(&d, &store, form, NOW);
            assert_eq!(answer.error, Some(OAuthError::InvalidClient), "{form}");
            ITERATIONS_RUN.with(|n| n.get()) - before
        };
        let known = cost("grant_type=client_credentials&client_id=dev&client_secret=wrong");
        let unknown = cost("grant_type=client_credentials&client_id=ghost&client_secret=wrong");
        assert!(known > 0);
        assert_eq!(unknown, known);
    }

    #[test]
    fn oauth_errors() {
        let (d, store) = setup();
        let cases = [
            ("", "invalid_request"),
            ("grant_type=password", "unsupported_grant_type"),
            (
                "grant_type=client_credentials&client_id=dev",
                "invalid_request",
            ),
            (
                "grant_type=client_credentials&client_id=dev&client_secret=wrong",
                "invalid_client",
            ),
            (
                "grant_type=client_credentials&client_id=ghost&client_secret=x",
                "invalid_client",
            ),
            (
                "grant_type=client_credentials&client_id=dev&client_secret=dev-secret&scope=openid",
                "invalid_scope",
            ),
            (
                "grant_type=refresh_token&refresh_token=nope&client_id=dev",
                "invalid_request",
            ),
            (
                "grant_type=refresh_token&refresh_token=nope&client_id=dev&client_secret=dev-secret",
                "invalid_grant",
            ),
            (
                "grant_type=refresh_token&client_id=dev&client_secret=dev-secret",
                "invalid_request",
            ),
        ];
        for (form, code) in cases {
            let answer = token_endpoint(&d, &store, form, NOW);
            let (error, body) = error_of(&answer);
            assert_eq!(
                (error.map(OAuthError::code), body.as_str()),
                (Some(code), code),
                "{form}"
            );
        }
        // A well-formed token of no family.
        let forged = "ab".repeat(TOKEN_HEX_LEN / 2);
        assert_eq!(
            error_of(&dev_refresh(&d, &store, &forged, NOW)),
            (Some(OAuthError::InvalidGrant), "invalid_grant".into())
        );
    }

    #[test]
    fn forms_decode() {
        let f = parse_form("a=1&b=x+y%21&a=2&c");
        assert_eq!(f["a"], "1");
        assert_eq!(f["b"], "x y!");
        assert_eq!(f["c"], "");
    }
}
