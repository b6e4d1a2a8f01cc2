//! Configuration: defaults, then a TOML file, then `WIRESOCKET_*` environment variables, then
//! command-line flags. Every limit has a unit in its name.

use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `ADDR:PORT` to listen on; port 0 picks a free port (printed at start).
    pub listen: String,
    /// Executor threads, one per core; 0 means one per available core.
    pub shards: usize,
    /// When set, a plain WebSocket echo route at this path (for conformance runs).
    pub echo_path: Option<String>,
    /// The Hocuspocus framing (`@hocuspocus/provider`, Tiptap), spoken on `/` and `path`.
    pub hocuspocus: HocuspocusConfig,
    pub http: HttpConfig,
    /// `wss://` and HTTPS on the listener itself (off when unset).
    pub tls: Option<TlsConfig>,
    pub websocket: WebSocketConfig,
    pub documents: DocumentConfig,
    pub auth: AuthConfig,
    pub node: NodeConfig,
    pub registry: RegistryConfig,
    pub rate_limits: RateLimitConfig,
    /// Proxies whose `X-Forwarded-For` names the client (for per-IP limits): addresses or
    /// networks (`10.0.0.0/8`, `fd00::/8`).
    pub trusted_proxies: Vec<crate::http::ip_rate::Cidr>,
    /// Tenants and their keys. With no tenants and no apps, a development tenant and app
    /// (`dev`/`dev`, a key pair published in this repository) are used, but only without a
    /// config file on a loopback address, or with `allow_development_tenant`.
    pub tenants: Vec<TenantConfig>,
    pub apps: Vec<AppConfig>,
    /// Webhook delivery: bounds, retries and how long an unacknowledged document is kept.
    pub webhooks: crate::webhook::delivery::DeliveryConfig,
    /// The admin listener (PRODUCT.md 13), off when unset: keep it on loopback or a private
    /// network. Requests need the bearer token from `admin_token_file` or
    /// `WIRESOCKET_ADMIN_TOKEN`; the node refuses to start with this and no token.
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<String>,
    /// `/metrics` on the admin listener only (404 on the public one).
    pub metrics_on_admin: bool,
    /// Run the development tenant even from a config file or on a non-loopback address:
    /// anyone can sign its tokens, so this is for development only.
    pub allow_development_tenant: bool,
    /// The file this configuration was read from (none: defaults and flags only).
    #[serde(skip)]
    pub config_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
    /// Tokens valid longer than this (`exp - iat`, or `exp - now` without `iat`) are refused
    /// (4002): a leaked token must not work for long.
    pub token_lifetime_max_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            leeway_s: 30,
            token_lifetime_max_s: 86_400,
        }
    }
}

/// This node as the others see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique among the nodes sharing a registry.
    pub id: String,
    /// `{region-name}-{cluster-id}`, e.g. `eu-central-1`.
    pub region: String,
    /// The public WebSocket base URL clients are redirected to (4009), e.g.
    /// `wss://eu1.example.com`; empty: `ws://` + the listen address.
    pub public_url: String,
    pub heartbeat_interval_ms: u64,
    /// A node silent this long loses its pins and counts to the others.
    pub heartbeat_stale_ms: u64,
    /// A registry call not answered within this fails: new upgrades get 1013.
    pub registry_timeout_ms: u64,
    /// Connections this node is sized for; with `memory_budget_bytes`, what the high-water
    /// mark is taken of.
    pub connections_capacity: u64,
    /// Resident memory this node may use; 0: 70 % of the machine's memory (or of the
    /// cgroup's limit, when lower).
    pub memory_budget_bytes: u64,
    /// Past this share of capacity or memory the node reports `overloaded` and refuses new
    /// upgrades with 503 (live sessions are never dropped for load).
    pub high_water_percent: u64,
    /// On SIGTERM: how long sessions may end on their own before they are closed with 1012.
    pub drain_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "node-1".into(),
            region: "local-1".into(),
            public_url: String::new(),
            heartbeat_interval_ms: 5_000,
            heartbeat_stale_ms: 30_000,
            registry_timeout_ms: 2_000,
            connections_capacity: 100_000,
            memory_budget_bytes: 0,
            high_water_percent: 80,
            drain_timeout_ms: 30_000,
        }
    }
}

/// Where nodes share pins and counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `embedded` (one node) or `foundationdb` (needs a build with `--features fdb`).
    pub backend: String,
    /// FoundationDB cluster file; empty: the client's default.
    pub cluster_file: String,
    /// Key prefix: the license region (`dbCode`) this registry holds.
    pub prefix: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            backend: "embedded".into(),
            cluster_file: String::new(),
            prefix: "aws-eu-west-1".into(),
        }
    }
}

/// Per-client-IP budgets per minute; past them, HTTP 429 with `Retry-After: 60`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// WebSocket handshakes to documents (and discovery).
    pub handshakes_per_minute: u32,
    pub usage_per_minute: u32,
    pub token_requests_per_minute: u32,
    /// Requests to the admin listener, per client address.
    pub admin_requests_per_minute: u32,
    /// IPv6 clients are keyed by this prefix: one host usually holds a whole /64.
    pub ipv6_prefix_bits: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            handshakes_per_minute: 60,
            usage_per_minute: 12,
            token_requests_per_minute: 60,
            admin_requests_per_minute: 600,
            ipv6_prefix_bits: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// One tenant key: a public key (PEM inline or in a file) that verifies tokens, optionally
/// with its private key, which signs the tokens this server issues. HS256 takes a `secret`
/// instead and is for development only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: Option<String>,
    /// `RS256`, `ES256`, `EdDSA` or `HS256`.
    pub alg: String,
    pub public_key_pem: Option<String>,
    pub public_key_file: Option<String>,
    pub private_key_pem: Option<String>,
    pub private_key_file: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub tenant: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `aws-{provider-region}`, the app's metadata home.
    #[serde(default)]
    pub license_region: String,
    /// At most 3.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Refuse connections that carry no `Origin` (browser-only apps).
    #[serde(default)]
    pub require_origin: bool,
    /// Document names may also contain `/` and `.` (for `project/{id}` names).
    #[serde(default)]
    pub allow_path_names: bool,
    #[serde(default)]
    pub plan: crate::auth::claims::Limits,
    /// OAuth 2 client credentials for `POST /connect/token`.
    pub client_id: Option<String>,
    /// `wiresocket hash-secret` makes this from the secret; the secret itself is never stored.
    pub client_secret_hash: Option<String>,
    /// Where this app's webhooks go (PRODUCT.md 9.1): `https://` to a public address, or,
    /// with `webhook_allow_private`, also `http://` and loopback or private hosts.
    pub webhook_url: Option<String>,
    /// `whsec_` and the base64 key that signs them (or `webhook_secret_file` holding it).
    pub webhook_secret: Option<Redacted>,
    pub webhook_secret_file: Option<String>,
    /// The events the app wants (`session.started`, `session.ended`, ...); unset: all.
    pub webhook_events: Option<Vec<String>>,
    /// Webhooks may go to loopback and private addresses, and over plain `http://` there
    /// (internal receivers, tests). Link-local and metadata addresses never.
    #[serde(default)]
    pub webhook_allow_private: bool,
    /// The load hook (PRODUCT.md 9.2): asked for a document's state when its session starts,
    /// signed with `webhook_secret`, under the same address rules as `webhook_url`.
    pub load_url: Option<String>,
    /// How long a starting session waits for the load hook; then its clients get 1013.
    #[serde(default = "load_timeout_ms")]
    pub load_timeout_ms: u64,
    /// The authorization callback (PRODUCT.md 9.4): asked, after a token verifies, whether
    /// its user may open the document and with which role; signed with `webhook_secret`,
    /// under the same address rules as `webhook_url`.
    pub authorize_url: Option<String>,
    /// No answer within it (or a 5xx): the connection is closed with 1013, never allowed.
    #[serde(default = "authorize_timeout_ms")]
    pub authorize_timeout_ms: u64,
    /// How long an answer holds for the same user (`sub`) and document.
    #[serde(default = "authorize_cache_s")]
    pub authorize_cache_s: u64,
}

fn authorize_timeout_ms() -> u64 {
    2_000
}

fn authorize_cache_s() -> u64 {
    30
}

fn load_timeout_ms() -> u64 {
    3_000
}

fn yes() -> bool {
    true
}

/// A secret read from the configuration: its `Debug` does not show it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"(redacted)\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Request line plus headers; larger requests get 431.
    pub head_bytes_max: usize,
    /// Time a client has, from its connection, to send its whole request (head and body);
    /// slower ones are answered 408 and dropped.
    pub request_timeout_ms: u64,
}

/// The listener's certificate: with it every connection is TLS (1.2 or 1.3, ALPN
/// `http/1.1`), HTTPS and `wss://` alike. Both files are read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the certificate, then its chain.
    pub cert_file: String,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    /// Frames one message may span. Autobahn case 9.3.1 sends 65,537 (a 4 MiB message in
    /// 64-byte fragments plus a final empty one), so the default leaves room above 65,536.
    pub fragments_max: usize,
    /// Bytes queued for one connection before it is closed as too slow (1008).
    pub outbound_bytes_max: usize,
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) this long is closed (1001).
    pub idle_timeout_ms: u64,
    /// After the close frame is queued, how long the peer gets to take it before the socket
    /// is dropped.
    pub close_timeout_ms: u64,
    /// A frame or fragmented message must make progress (another 64 KiB of it, or its end)
    /// within this, or the connection is closed (1008).
    pub message_timeout_ms: u64,
    /// Bytes the node holds in incomplete frames and messages, over every connection; a
    /// connection whose partial message would take the node past it is closed (1013).
    pub incomplete_bytes_max: usize,
    /// Messages a connection may send per second once its burst is used up; past it, 1008.
    /// A step 1 or an awareness query counts 16 (each makes the server encode a whole
    /// document or every presence state).
    pub messages_per_second: u32,
    pub messages_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentConfig {
    /// How long a document stays in memory after its last client leaves.
    pub grace_period_ms: u64,
    /// Structs and delete ranges one update may carry (yrs keeps each struct in memory, and
    /// a delete range may split one).
    pub update_structs_max: usize,
    pub awareness_clients_max: usize,
    pub awareness_clients_per_connection_max: usize,
    /// Bytes of JSON in one awareness state; a larger one: 1009.
    pub awareness_state_bytes_max: usize,
    /// A document's size as a Yjs update; an update that would take it past this: 1009, not
    /// applied.
    pub document_bytes_max: usize,
    /// Updates relayed but not yet integrated into a document (integration runs after the
    /// relay, on a lower-priority task): at this many, the document's writers are not read
    /// until it catches up.
    pub pending_updates_max: usize,
    /// Their bytes, likewise.
    pub pending_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            shards: 0,
            echo_path: None,
            hocuspocus: HocuspocusConfig::default(),
            http: HttpConfig::default(),
            tls: None,
            websocket: WebSocketConfig::default(),
            documents: DocumentConfig::default(),
            auth: AuthConfig::default(),
            node: NodeConfig::default(),
            registry: RegistryConfig::default(),
            rate_limits: RateLimitConfig::default(),
            trusted_proxies: Vec::new(),
            tenants: Vec::new(),
            apps: Vec::new(),
            webhooks: crate::webhook::delivery::DeliveryConfig::default(),
            admin_listen: None,
            admin_token_file: None,
            metrics_on_admin: false,
            allow_development_tenant: false,
            config_file: None,
        }
    }
}

/// Sockets in the Hocuspocus framing: many documents each, every one with its own token.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HocuspocusConfig {
    /// A path besides `/` where upgrades speak the Hocuspocus framing (the provider's `url`
    /// then ends with it); a path naming a document is a y-websocket connection.
    pub path: Option<String>,
    /// Documents one socket may name (open, waiting for their token, or refused); past it
    /// the socket is closed (1008).
    pub documents_max: usize,
    /// Messages a socket may send for documents whose token is not checked yet, queued until
    /// it is (Hocuspocus 4.3's limits); past it the socket is closed (1008).
    pub pending_messages_max: usize,
    /// Their bytes, likewise.
    pub pending_bytes_max: usize,
    /// A socket with no document open for this long is closed (1008): every document needs
    /// a token, and a socket that sends none would otherwise be held open for free.
    pub auth_timeout_ms: u64,
}

impl Default for HocuspocusConfig {
    fn default() -> Self {
        HocuspocusConfig {
            path: None,
            auth_timeout_ms: 10_000,
            documents_max: 100,
            pending_messages_max: 1_000,
            pending_bytes_max: 5 << 20,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            head_bytes_max: 8 << 10,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            frame_bytes_max: 16 << 20,
            message_bytes_max: 16 << 20,
            fragments_max: 131_072,
            outbound_bytes_max: 8 << 20,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 60_000,
            close_timeout_ms: 5_000,
            message_timeout_ms: 30_000,
            incomplete_bytes_max: 256 << 20,
            messages_per_second: 500,
            messages_burst: 2_000,
        }
    }
}

impl Default for DocumentConfig {
    fn default() -> Self {
        DocumentConfig {
            grace_period_ms: 10_000,
            update_structs_max: 1 << 20,
            awareness_clients_max: 4096,
            awareness_clients_per_connection_max: 8,
            awareness_state_bytes_max: 64 << 10,
            document_bytes_max: 64 << 20,
            pending_updates_max: 1024,
            pending_bytes_max: 1 << 20,
        }
    }
}

/// A configuration problem, naming the field or flag at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Parses a config file's text; `origin` names the file (for errors, and it counts as
    /// a config file for the development tenant's rule).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        config.config_file = Some(origin.to_owned());
        Ok(config)
    }

    /// Applies one setting by its flag name (`listen`, `shards`, `echo-path`,
    /// `grace-period-ms`); `origin` names where it came from, for the error.
    pub fn set(&mut self, name: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let bad = |what: &str| ConfigError(format!("{origin}: {what}, got {value:?}"));
        match name {
            "listen" => self.listen = value.to_owned(),
            "shards" => {
                self.shards = value
                    .parse()
                    .map_err(|_| bad("expected a number of shards"))?
            }
            "echo-path" => self.echo_path = Some(value.to_owned()),
            "grace-period-ms" => {
                self.documents.grace_period_ms =
                    value.parse().map_err(|_| bad("expected milliseconds"))?
            }
            _ => return Err(ConfigError(format!("{origin}: unknown setting"))),
        }
        Ok(())
    }

    /// Applies the `WIRESOCKET_*` variables found in `vars`.
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("WIRESOCKET_") else {
                continue;
            };
            let flag = name.to_ascii_lowercase().replace('_', "-");
            if ENV_SETTINGS.contains(&flag.as_str()) {
                self.set(&flag, &value, &key)?;
            }
        }
        Ok(())
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError(format!(
                "listen: expected ADDR:PORT such as 127.0.0.1:8080, got {:?}",
                self.listen
            ))
        })?;
        let ws = &self.websocket;
        let checks = [
            (
                self.http.head_bytes_max >= 256,
                "http.head_bytes_max must be at least 256",
            ),
            (
                self.http.request_timeout_ms > 0,
                "http.request_timeout_ms must be positive",
            ),
            (
                (1..=128).contains(&self.rate_limits.ipv6_prefix_bits),
                "rate_limits.ipv6_prefix_bits must be 1 to 128",
            ),
            (
                ws.frame_bytes_max >= 125,
                "websocket.frame_bytes_max must be at least 125",
            ),
            (
                ws.message_bytes_max >= ws.frame_bytes_max.min(1 << 16),
                "websocket.message_bytes_max is too small",
            ),
            (
                ws.fragments_max >= 1,
                "websocket.fragments_max must be at least 1",
            ),
            (
                ws.outbound_bytes_max >= 1 << 10,
                "websocket.outbound_bytes_max must be at least 1024",
            ),
            (
                ws.ping_interval_ms > 0,
                "websocket.ping_interval_ms must be positive",
            ),
            (
                ws.idle_timeout_ms > ws.ping_interval_ms,
                "websocket.idle_timeout_ms must exceed websocket.ping_interval_ms",
            ),
            (
                ws.message_timeout_ms > 0,
                "websocket.message_timeout_ms must be positive",
            ),
            (
                ws.incomplete_bytes_max >= 1 << 20,
                "websocket.incomplete_bytes_max must be at least 1 MiB",
            ),
            (
                ws.messages_per_second >= 1,
                "websocket.messages_per_second must be at least 1",
            ),
            (
                ws.messages_burst >= 16,
                "websocket.messages_burst must be at least 16 (one step 1)",
            ),
            (
                self.documents.awareness_state_bytes_max >= 64,
                "documents.awareness_state_bytes_max must be at least 64",
            ),
            (
                self.documents.document_bytes_max >= 1 << 10,
                "documents.document_bytes_max must be at least 1024",
            ),
            (
                self.documents.pending_updates_max >= 1 && self.documents.pending_bytes_max >= 1,
                "documents.pending_updates_max and pending_bytes_max must be at least 1",
            ),
            (
                self.documents.update_structs_max >= 1,
                "documents.update_structs_max must be at least 1",
            ),
            (
                self.documents.awareness_clients_max >= 1,
                "documents.awareness_clients_max must be at least 1",
            ),
            (
                self.documents.awareness_clients_per_connection_max >= 1,
                "documents.awareness_clients_per_connection_max must be at least 1",
            ),
            (
                (1..=64).contains(&self.webhooks.workers) && self.webhooks.app_workers_max >= 1,
                "webhooks.workers must be 1 to 64, and app_workers_max at least 1",
            ),
            (
                self.webhooks.timeout_ms > 0
                    && self.webhooks.retry_initial_ms > 0
                    && self.webhooks.retry_max_ms >= self.webhooks.retry_initial_ms,
                "webhooks.timeout_ms and retry_initial_ms must be positive, retry_max_ms at least retry_initial_ms",
            ),
            (
                self.webhooks.queue_events_max >= 1 && self.webhooks.queue_bytes_max >= 1 << 20,
                "webhooks.queue_events_max must be at least 1 and queue_bytes_max at least 1 MiB",
            ),
            (
                (1..=256).contains(&self.webhooks.call_threads)
                    && self.webhooks.calls_queued_max >= 1
                    && self.webhooks.app_calls_max >= 1
                    && self.webhooks.app_calls_queued_max >= 1,
                "webhooks.call_threads must be 1 to 256, calls_queued_max, app_calls_max and app_calls_queued_max at least 1",
            ),
            (
                self.webhooks.authorize_cache_entries_max >= 1,
                "webhooks.authorize_cache_entries_max must be at least 1",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ConfigError((*msg).to_owned()));
        }
        if let Some(admin) = &self.admin_listen {
            admin.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "admin_listen: expected ADDR:PORT such as 127.0.0.1:9091, got {admin:?}"
                ))
            })?;
        } else if self.metrics_on_admin {
            return Err(ConfigError(
                "metrics_on_admin needs admin_listen: without it /metrics would be served nowhere"
                    .into(),
            ));
        }
        self.check_development_tenant(&addr)?;
        self.check_ids()?;
        for app in &self.apps {
            if app.allowed_domains.len() > 3 {
                return Err(ConfigError(format!(
                    "apps.{}.allowed_domains: at most 3 domains",
                    app.id
                )));
            }
            if app.load_timeout_ms == 0 || app.load_timeout_ms > 60_000 {
                return Err(ConfigError(format!(
                    "apps.{}.load_timeout_ms must be 1 to 60000",
                    app.id
                )));
            }
            if app.authorize_timeout_ms == 0 || app.authorize_timeout_ms > 60_000 {
                return Err(ConfigError(format!(
                    "apps.{}.authorize_timeout_ms must be 1 to 60000",
                    app.id
                )));
            }
            if app.authorize_cache_s > 3_600 {
                return Err(ConfigError(format!(
                    "apps.{}.authorize_cache_s must be 0 (no cache) to 3600",
                    app.id
                )));
            }
            if !self.tenants.iter().any(|t| t.id == app.tenant) {
                return Err(ConfigError(format!(
                    "apps.{}.tenant: no tenant {:?} is configured",
                    app.id, app.tenant
                )));
            }
        }
        for (name, path) in [
            ("echo_path", &self.echo_path),
            ("hocuspocus.path", &self.hocuspocus.path),
        ] {
            if let Some(p) = path {
                if !p.starts_with('/') || p.len() < 2 {
                    return Err(ConfigError(format!(
                        "{name} must start with / and name a path, got {p:?}"
                    )));
                }
            }
        }
        let h = &self.hocuspocus;
        if h.documents_max == 0
            || h.pending_messages_max == 0
            || h.pending_bytes_max == 0
            || h.auth_timeout_ms == 0
        {
            return Err(ConfigError(
                "hocuspocus.documents_max, pending_messages_max, pending_bytes_max and auth_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(addr)
    }
}

/// Ids become parts of `{tenant}::{app}::{document}` keys and registry keys (NUL-separated):
/// either separator inside an id would let one app's keys collide with another's.
fn check_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(ConfigError(format!("{field}: must not be empty")));
    }
    // An id ending or starting with `:` would meet the separator: tenant `a:` with app `b`
    // and tenant `a` with app `:b` would both be `a:::b`.
    if id.contains("::") || id.contains('\0') || id.starts_with(':') || id.ends_with(':') {
        return Err(ConfigError(format!(
            "{field}: {id:?} must not contain \"::\" or NUL, nor start or end with \":\""
        )));
    }
    Ok(())
}

impl Config {
    /// Whether the development tenant would run (no tenants, no apps) where it may not.
    fn check_development_tenant(&self, addr: &SocketAddr) -> Result<(), ConfigError> {
        if !self.tenants.is_empty() || !self.apps.is_empty() || self.allow_development_tenant {
            return Ok(());
        }
        let why = match &self.config_file {
            Some(file) => format!("the config file {file} configures no [[tenants]] and [[apps]]"),
            None if !addr.ip().is_loopback() => {
                format!("no config file is given and listen = {addr} is not a loopback address")
            }
            None => return Ok(()),
        };
        Err(ConfigError(format!(
            "{why}, so the development tenant would run, and anyone can sign its tokens (its key pair is published). \
             Configure [[tenants]] and [[apps]] (see the README), or set allow_development_tenant = true in the config file for development only"
        )))
    }

    /// Unique, well-formed tenant ids, app ids and client ids. App ids are unique across
    /// tenants too: apps are looked up by id alone (tokens, `wiresocket token --app`).
    fn check_ids(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            check_id(&format!("tenants[{i}].id"), &t.id)?;
            if !seen.insert(t.id.as_str()) {
                return Err(ConfigError(format!(
                    "tenants.{}.id: tenant id {:?} is configured twice",
                    t.id, t.id
                )));
            }
            // A kid names a key in tokens, admin calls and registry keys (revocations).
            let mut kids = std::collections::HashSet::new();
            for kid in t.keys.iter().filter_map(|k| k.kid.as_deref()) {
                if kid.is_empty() || kid.len() > KID_BYTES_MAX || kid.chars().any(char::is_control)
                {
                    return Err(ConfigError(format!(
                        "tenants.{}.keys.kid: {kid:?} must be 1 to {KID_BYTES_MAX} bytes without control characters",
                        t.id
                    )));
                }
                if !kids.insert(kid) {
                    return Err(ConfigError(format!(
                        "tenants.{}.keys.kid: {kid:?} names two keys",
                        t.id
                    )));
                }
            }
        }
        let (mut apps, mut clients) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for (i, a) in self.apps.iter().enumerate() {
            check_id(&format!("apps[{i}].id"), &a.id)?;
            if !apps.insert(a.id.as_str()) {
                return Err(ConfigError(format!(
                    "apps.{}.id: app id {:?} is configured twice",
                    a.id, a.id
                )));
            }
            if let Some(client_id) = &a.client_id {
                check_id(&format!("apps[{i}].client_id"), client_id)?;
                if !clients.insert(client_id.as_str()) {
                    return Err(ConfigError(format!(
                        "apps.{}.client_id: client_id {client_id:?} belongs to another app too",
                        a.id
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Longest `kid` of a tenant's key.
const KID_BYTES_MAX: usize = 256;

/// Settings that environment variables may carry, as flag names.
const ENV_SETTINGS: [&str; 4] = ["listen", "shards", "echo-path", "grace-period-ms"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.validate().unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.documents.grace_period_ms, 10_000);
        assert_eq!(c.websocket.message_bytes_max, 16 << 20);
        assert_eq!(c.websocket.fragments_max, 131_072);
        assert_eq!(c.websocket.ping_interval_ms, 30_000);
        assert_eq!(c.websocket.idle_timeout_ms, 60_000);
    }

    #[test]
    fn toml_overrides_and_unknown_fields_are_named() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:9000\"\n[documents]\ngrace_period_ms = 5\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.documents.grace_period_ms, 5);
        let err = Config::from_toml("[documents]\ngrace_period = 5\n", "f.toml").unwrap_err();
        assert!(err.0.contains("grace_period"), "{err}");
        let err = Config::from_toml("shards = \"two\"", "f.toml").unwrap_err();
        assert!(err.0.contains("shards"), "{err}");
    }

    #[test]
    fn env_and_validation() {
        let mut c = Config::default();
        c.apply_env(
            [
                ("WIRESOCKET_SHARDS".to_owned(), "3".to_owned()),
                ("OTHER".to_owned(), "x".to_owned()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c.shards, 3);
        let err = c
            .apply_env([("WIRESOCKET_SHARDS".to_owned(), "many".to_owned())].into_iter())
            .unwrap_err();
        assert!(err.0.contains("WIRESOCKET_SHARDS"));
        c.listen = "nowhere".into();
        assert!(c.validate().unwrap_err().0.contains("listen"));
        let mut c = Config::default();
        c.websocket.idle_timeout_ms = 1;
        assert!(c.validate().unwrap_err().0.contains("idle_timeout_ms"));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let c = Config::from_toml(
            "allow_development_tenant = true\ntrusted_proxies = [\"10.0.0.5\", \"10.0.0.0/8\", \"fd00::/8\"]\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        let err = Config::from_toml("trusted_proxies = [\"10.0.0.0/40\"]\n", "p.toml").unwrap_err();
        assert!(
            err.0.contains("trusted_proxies") && err.0.contains("10.0.0.0/40"),
            "{err}"
        );
        let mut c = Config::default();
        assert_eq!(c.rate_limits.ipv6_prefix_bits, 64);
        c.rate_limits.ipv6_prefix_bits = 129;
        assert!(c.validate().unwrap_err().0.contains("ipv6_prefix_bits"));
    }

    #[test]
    fn the_development_tenant_runs_only_without_a_file_on_loopback_or_when_allowed() {
        let mut c = Config::default();
        c.validate().unwrap();
        c.listen = "[::1]:0".into();
        c.validate().unwrap();
        c.listen = "0.0.0.0:8080".into();
        let err = c.validate().unwrap_err().0;
        assert!(
            err.contains("not a loopback address") && err.contains("allow_development_tenant"),
            "{err}"
        );
        c.allow_development_tenant = true;
        c.validate().unwrap();

        let from_file = Config::from_toml("listen = \"127.0.0.1:0\"\n", "w.toml").unwrap();
        let err = from_file.validate().unwrap_err().0;
        assert!(
            err.contains("w.toml")
                && err.contains("[[tenants]]")
                && err.contains("allow_development_tenant = true"),
            "{err}"
        );
        Config::from_toml("allow_development_tenant = true\n", "w.toml")
            .unwrap()
            .validate()
            .unwrap();
    }

    fn two_tenants_and(apps: &str) -> Result<SocketAddr, ConfigError> {
        let toml = format!("[[tenants]]\nid = \"t\"\n[[tenants]]\nid = \"u\"\n{apps}");
        Config::from_toml(&toml, "c.toml").unwrap().validate()
    }

    #[test]
    fn ids_are_unique_and_free_of_separators() {
        two_tenants_and("[[apps]]\nid = \"a\"\ntenant = \"t\"\nclient_id = \"ca\"\n[[apps]]\nid = \"b\"\ntenant = \"u\"\nclient_id = \"cb\"\n").unwrap();
        let cases = [
            ("[[tenants]]\nid = \"t\"\n", "tenants.t.id"),
            ("[[tenants]]\nid = \"x::y\"\n", "tenants[2].id"),
            ("[[tenants]]\nid = \"x\\u0000\"\n", "tenants[2].id"),
            ("[[tenants]]\nid = \"\"\n", "tenants[2].id"),
            (
                "[[apps]]\nid = \"a\"\ntenant = \"t\"\n[[apps]]\nid = \"a\"\ntenant = \"t\"\n",
                "apps.a.id",
            ),
            (
                "[[apps]]\nid = \"a\"\ntenant = \"t\"\n[[apps]]\nid = \"a\"\ntenant = \"u\"\n",
                "apps.a.id",
            ),
            ("[[apps]]\nid = \"a::b\"\ntenant = \"t\"\n", "apps[0].id"),
            (
                "[[apps]]\nid = \"a\"\ntenant = \"t\"\nclient_id = \"c\"\n[[apps]]\nid = \"b\"\ntenant = \"t\"\nclient_id = \"c\"\n",
                "apps.b.client_id",
            ),
            (
                "[[apps]]\nid = \"a\"\ntenant = \"t\"\nclient_id = \"c\\u0000\"\n",
                "apps[0].client_id",
            ),
            (
                "[[tenants]]\nid = \"k\"\n[[tenants.keys]]\nkid = \"\"\nalg = \"EdDSA\"\n",
                "tenants.k.keys.kid",
            ),
            (
                "[[tenants]]\nid = \"k\"\n[[tenants.keys]]\nkid = \"a\\u0000\"\nalg = \"EdDSA\"\n",
                "tenants.k.keys.kid",
            ),
            (
                "[[tenants]]\nid = \"k\"\n[[tenants.keys]]\nkid = \"a\"\nalg = \"EdDSA\"\n[[tenants.keys]]\nkid = \"a\"\nalg = \"ES256\"\n",
                "tenants.k.keys.kid",
            ),
        ];
        for (extra, field) in cases {
            let err = two_tenants_and(extra).unwrap_err();
            assert!(err.0.starts_with(field), "{extra}: {err}");
        }
    }
}
