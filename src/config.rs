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
    pub http: HttpConfig,
    pub websocket: WebSocketConfig,
    pub documents: DocumentConfig,
    pub auth: AuthConfig,
    pub node: NodeConfig,
    pub registry: RegistryConfig,
    pub rate_limits: RateLimitConfig,
    /// Proxies whose `X-Forwarded-For` names the client (for per-IP limits).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Tenants and their keys. With no tenants and no apps, a development tenant and app
    /// (`dev`/`dev`, a key pair published in this repository) are used.
    pub tenants: Vec<TenantConfig>,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { leeway_s: 30 }
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
    /// Resident memory this node may use; 0: not watched.
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
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            handshakes_per_minute: 60,
            usage_per_minute: 12,
            token_requests_per_minute: 60,
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
}

fn yes() -> bool {
    true
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentConfig {
    /// How long a document stays in memory after its last client leaves.
    pub grace_period_ms: u64,
    /// Structs one update may carry (yrs keeps each in memory).
    pub update_structs_max: usize,
    pub awareness_clients_max: usize,
    pub awareness_clients_per_connection_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            shards: 0,
            echo_path: None,
            http: HttpConfig::default(),
            websocket: WebSocketConfig::default(),
            documents: DocumentConfig::default(),
            auth: AuthConfig::default(),
            node: NodeConfig::default(),
            registry: RegistryConfig::default(),
            rate_limits: RateLimitConfig::default(),
            trusted_proxies: Vec::new(),
            tenants: Vec::new(),
            apps: Vec::new(),
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
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))
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
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ConfigError((*msg).to_owned()));
        }
        for app in &self.apps {
            if app.allowed_domains.len() > 3 {
                return Err(ConfigError(format!(
                    "apps.{}.allowed_domains: at most 3 domains",
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
        if let Some(p) = &self.echo_path {
            if !p.starts_with('/') || p.len() < 2 {
                return Err(ConfigError(format!(
                    "echo_path must start with / and name a path, got {p:?}"
                )));
            }
        }
        Ok(addr)
    }
}

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
}
