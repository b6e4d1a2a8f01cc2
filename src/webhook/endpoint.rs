//! An application's receiver the server calls (webhooks, the load hook): its URL, checked
//! at start, and an HTTP(S) client (ureq with rustls, blocking: only ever used from threads
//! of its own) whose every connection goes only to addresses the rules of [`target`] allow.
//! No redirects, no proxy.

use super::signature::WebhookSecret;
use super::target;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub struct Endpoint {
    pub url: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

/// What a call got back: the status and, for a 2xx, the body (at most the call's bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Endpoint {
    /// A receiver at `url` (already checked by [`Endpoint::check_at_start`]), reached only
    /// at addresses `target::check` allows (`own`: this node's listeners). One call takes
    /// at most `timeout_ms` unless the call says otherwise. Up to `connections_max`
    /// connections are kept open between calls (as many as may run at once: a call does not
    /// pay for a new connection, and the receiver is not left with a socket per call).
    pub fn new(
        url: String,
        allow_private: bool,
        own: Vec<SocketAddr>,
        timeout_ms: u64,
        connections_max: usize,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(timeout_ms)))
            .max_idle_connections(connections_max)
            .max_idle_connections_per_host(connections_max)
            .max_redirects(0)
            .proxy(None)
            .http_status_as_error(false)
            .user_agent("wiresocket-webhooks")
            .build();
        let resolver = CheckedResolver { allow_private, own };
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            resolver,
        );
        Endpoint { url, agent }
    }

    /// Checks a configured URL at start: it parses (for us and for the HTTP client), its
    /// host resolves within [`RESOLVE_TIMEOUT`], and every address is allowed. The error
    /// says why, for the operator.
    pub fn check_at_start(
        url: &str,
        allow_private: bool,
        own: &[SocketAddr],
    ) -> Result<(), String> {
        let target = target::Target::parse(url)?;
        // What the HTTP client will parse must parse now, not fail every call for a day.
        url.parse::<ureq::http::Uri>().map_err(|e| e.to_string())?;
        let addrs = resolve(&target.host, target.port)
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
        if addrs.is_empty() {
            return Err(format!("{} has no address", target.host));
        }
        for addr in addrs {
            target::check(target.https, addr, allow_private, own)?;
        }
        Ok(())
    }

    /// POSTs `body` as JSON, signed now with `secret` under `id` (a receiver refuses stale
    /// timestamps, so a retry is signed again). A 2xx answer's body is read up to
    /// `body_bytes_max` (past it the call fails); any status is an answer, only a failure
    /// to get one is an error. `timeout` replaces the endpoint's own.
    pub fn post(
        &self,
        secret: &WebhookSecret,
        id: &str,
        body: &[u8],
        body_bytes_max: u64,
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        let timestamp_s = crate::log::unix_ms() / 1000;
        let signature = secret.sign(id, timestamp_s, body);
        let mut request = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", &timestamp_s.to_string())
            .header("webhook-signature", &signature);
        if let Some(timeout) = timeout {
            request = request.config().timeout_global(Some(timeout)).build();
        }
        let mut response = request.send(body).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = if (200..300).contains(&status) && body_bytes_max > 0 {
            response
                .body_mut()
                .with_config()
                .limit(body_bytes_max)
                .read_to_vec()
                .map_err(|e| format!("reading the answer: {e}"))?
        } else {
            Vec::new()
        };
        Ok(Answer { status, body })
    }
}

/// Resolves a receiver's host and refuses the call if any of its addresses breaks the
/// rules: the connection then goes only to addresses checked here, so a name re-pointed
/// after start (DNS rebinding) cannot reach what the rules forbid.
#[derive(Debug)]
struct CheckedResolver {
    allow_private: bool,
    own: Vec<SocketAddr>,
}

impl ureq::unversioned::resolver::Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        let https = uri.scheme_str() == Some("https");
        for addr in addrs.iter() {
            target::check(https, *addr, self.allow_private, &self.own)
                .map_err(|why| ureq::Error::BadUri(format!("refused address: {why}")))?;
        }
        Ok(addrs)
    }
}

/// How long start-up waits for a receiver's host to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `host:port`'s addresses, or why not within [`RESOLVE_TIMEOUT`] (the system resolver has
/// no deadline of its own: a lookup that hangs is left to its thread).
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("wiresocket-resolve".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.collect::<Vec<_>>());
            let _ = tx.send(found);
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(found) => found.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())),
    }
}
