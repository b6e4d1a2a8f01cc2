//! The plain HTTP endpoints: health, metrics, usage, the OAuth 2 token endpoint, the
//! tenants' JWK sets and the demo page (`server::demo`). Each answer is one response on a
//! closing connection.

use super::shard::Shard;
use super::socket::{self, SharedStream};
use crate::auth;
use crate::http::request::Request;
use crate::http::response::{iso8601_utc, json_string, response};
use crate::refusal::Refusal;
use std::net::IpAddr;
use std::rc::Rc;

/// Largest request body read (the token endpoint's form).
pub const BODY_BYTES_MAX: usize = 8 << 10;

/// Answers `req` if it is one of the plain endpoints; false if it is not.
pub async fn answer(
    shard: &Rc<Shard>,
    stream: &SharedStream,
    req: &Request<'_>,
    leftover: &[u8],
    ip: IpAddr,
    deadline: std::time::Instant,
) -> bool {
    let bytes = match (req.method, req.path) {
        ("GET" | "HEAD", "/health" | "/") => health(shard),
        // With `metrics_on_admin` they are on the admin listener only.
        ("GET" | "HEAD", "/metrics") if !shard.shared.config.metrics_on_admin => {
            let text = super::stats::render_all(&shard.stats, &shard.shared.webhooks);
            response(200, "text/plain; version=0.0.4", &[], &text)
        }
        ("GET" | "HEAD", "/metrics") => Refusal::NotFound.http_response(),
        ("GET", "/usage") => usage(shard, req, ip).await,
        ("GET", "/discovery") => discovery(shard, req, ip).await,
        ("POST", "/connect/token") => token(shard, stream, req, leftover, ip, deadline).await,
        (_, "/health" | "/metrics" | "/usage" | "/connect/token") => {
            Refusal::MethodNotAllowed.http_response()
        }
        ("GET", path @ ("/demo" | "/demo/" | "/demo/demo.js")) => {
            let development = shard.shared.directory().is_development;
            super::demo::answer(path, development)
        }
        ("GET", path) => match path
            .strip_suffix("/.well-known/jwks")
            .map(|t| t.trim_start_matches('/'))
        {
            Some(tenant) if !tenant.is_empty() && !tenant.contains('/') => jwks(shard, tenant),
            _ => return false,
        },
        _ => return false,
    };
    super::respond::reply(shard, stream, bytes).await;
    true
}

/// `healthy` (200); `degraded` while draining, `overloaded` past the high-water mark (503).
fn health(shard: &Shard) -> Vec<u8> {
    let (status, state) = if shard.shared.draining() {
        (503, "degraded")
    } else if shard.overloaded() {
        (503, "overloaded")
    } else {
        (200, "healthy")
    };
    let body = format!(
        "{{\"status\":\"{state}\",\"timestamp\":\"{}\"}}",
        iso8601_utc(crate::log::unix_ms())
    );
    response(status, "application/json", &[], &body)
}

fn now_s() -> u64 {
    crate::log::unix_ms() / 1000
}

/// A per-IP budget is spent: a security event, logged with the address.
fn rate_limited(ip: IpAddr, budget: &str) -> Vec<u8> {
    crate::log::warn("rate_limited", &[("ip", &ip), ("budget", &budget)]);
    Refusal::RateLimited.http_response()
}

/// The token of an API request (`Authorization: Bearer` or `?token=`), verified; or the
/// 401 (or 503) to answer.
async fn authenticate(shard: &Shard, req: &Request<'_>) -> Result<auth::verify::Identity, Vec<u8>> {
    let Some(found) = auth::transport::extract(req) else {
        return Err(Refusal::ApiMissingToken.http_response());
    };
    match shard.verify_token(found.token).await {
        Ok(verified) => {
            verified.map_err(|refusal| Refusal::ApiInvalidToken(refusal).http_response())
        }
        Err(super::offload::Busy) => Err(Refusal::VerifierBusy.http_response()),
    }
}

fn registry_unavailable() -> Vec<u8> {
    Refusal::ApiRegistryUnavailable.http_response()
}

/// `GET /discovery?documentName=NAME`: where to connect for a document.
async fn discovery(shard: &Shard, req: &Request<'_>, ip: IpAddr) -> Vec<u8> {
    if !shard.shared.handshakes_per_ip.allow(ip, now_s()) {
        return rate_limited(ip, "handshakes");
    }
    let identity = match authenticate(shard, req).await {
        Ok(identity) => identity,
        Err(answer) => return answer,
    };
    let encoded = req.query_param("documentName").unwrap_or_default();
    let Some(name) = crate::http::request::percent_decode(encoded).filter(|n| !n.is_empty()) else {
        return Refusal::InvalidRequest("documentName is required".into()).http_response();
    };
    // The rules an upgrade to the document would meet, so that discovery reveals nothing
    // (not even where a document lives) that connecting would not.
    let refusal = if name.contains("::") {
        Some(Refusal::ApiForbidden("document name contains '::'"))
    } else if let Err(why) =
        crate::sync::document::validate_name(&name, identity.app.allow_path_names)
    {
        Some(Refusal::InvalidRequest(
            format!("invalid document name: {why}").into(),
        ))
    } else if identity
        .docs
        .as_ref()
        .is_some_and(|docs| !auth::claims::docs_allow(docs, &name))
    {
        Some(Refusal::ApiForbidden(
            "the token does not grant this document",
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return refusal.http_response();
    }
    let key = crate::sync::document::isolation_key(&identity.tenant_id, &identity.app.id, &name);
    let home = match shard
        .shared
        .registry
        .lookup(&key, crate::log::unix_ms())
        .await
    {
        Ok(home) => home,
        Err(_) => return registry_unavailable(),
    };
    let is_new = home.is_none();
    let node = home.unwrap_or_else(|| shard.shared.node.clone());
    let body = format!(
        "{{\"region\":{},\"url\":{},\"isNew\":{is_new}}}",
        json_string(&node.region),
        json_string(&format!("{}/{encoded}", node.url))
    );
    response(200, "application/json", &[], &body)
}

/// `GET /usage`: the app's global counts against its limits.
async fn usage(shard: &Shard, req: &Request<'_>, ip: IpAddr) -> Vec<u8> {
    if !shard.shared.usage_per_ip.allow(ip, now_s()) {
        return rate_limited(ip, "usage");
    }
    let identity = match authenticate(shard, req).await {
        Ok(identity) => identity,
        Err(answer) => return answer,
    };
    let app = format!("{}::{}", identity.tenant_id, identity.app.id);
    let Ok(counts) = shard
        .shared
        .registry
        .usage(&app, crate::log::unix_ms())
        .await
    else {
        return registry_unavailable();
    };
    let body = format!(
        "{{\"tenantId\":{},\"appId\":{},\"usage\":{{\"connections\":{},\"documents\":{}}},\"timestamp\":\"{}\"}}",
        json_string(&identity.tenant_id),
        json_string(&identity.app.id),
        usage_entry(counts.connections, identity.limits.max_connections),
        usage_entry(counts.documents, identity.limits.max_documents),
        iso8601_utc(crate::log::unix_ms())
    );
    response(200, "application/json", &[], &body)
}

/// `{"current","limit","percent","status"}`: healthy under 75 %, warning under 90 %, then
/// critical. No limit: `null`, 0 %, healthy.
pub fn usage_entry(current: u64, limit: Option<u64>) -> String {
    let percent = match limit {
        Some(0) => 100.0,
        Some(l) => (current as f64 * 100.0 / l as f64 * 10.0).round() / 10.0,
        None => 0.0,
    };
    let status = if percent >= 90.0 {
        "critical"
    } else if percent >= 75.0 {
        "warning"
    } else {
        "healthy"
    };
    let limit = limit.map_or("null".to_owned(), |l| l.to_string());
    format!(
        "{{\"current\":{current},\"limit\":{limit},\"percent\":{percent},\"status\":\"{status}\"}}"
    )
}

/// `POST /connect/token`.
async fn token(
    shard: &Shard,
    stream: &SharedStream,
    req: &Request<'_>,
    leftover: &[u8],
    ip: IpAddr,
    deadline: std::time::Instant,
) -> Vec<u8> {
    if !shard.shared.token_requests_per_ip.allow(ip, now_s()) {
        return rate_limited(ip, "token_requests");
    }
    let Some(length) = req.content_length else {
        return Refusal::LengthRequired.http_response();
    };
    if length > BODY_BYTES_MAX as u64 {
        return Refusal::BodyTooLarge.http_response();
    }
    let body = match super::respond::within(deadline, read_body(stream, leftover, length as usize))
        .await
    {
        Some(Ok(body)) => body,
        Some(Err(())) => {
            return Refusal::InvalidRequest("the form ended early".into()).http_response()
        }
        None => return Refusal::RequestTimeout.http_response(),
    };
    let Ok(form) = std::str::from_utf8(&body) else {
        return Refusal::InvalidRequest("the form is not UTF-8".into()).http_response();
    };
    // A revoked tenant's or app's client gets no tokens, nor one signed with a revoked key
    // (PRODUCT.md 13).
    let fields = auth::oauth::parse_form(form);
    let directory = shard.shared.directory();
    let revoked = fields
        .get("client_id")
        .and_then(|id| {
            directory
                .apps
                .values()
                .find(|a| a.client_id.as_deref() == Some(id.as_str()))
        })
        .and_then(|app| {
            let signer = directory.signers.get(&app.tenant);
            let kid = signer.and_then(|s| s.kid.as_deref());
            let signing_key = kid.map(|kid| format!("{}::{kid}", app.tenant));
            let revoked = &shard.shared.revoked;
            revoked.refusal_of(&app.tenant, &app.id, signing_key.as_deref())
        });
    if let Some(why) = revoked {
        let answer = auth::oauth::error(auth::oauth::OAuthError::InvalidClient, why);
        return response(401, "application/json", &[], &answer.body);
    }
    // PBKDF2 takes 18 ms: off the executor, like token signatures.
    let (shared, form, now_s) = (shard.shared.clone(), form.to_owned(), now_s());
    let answer = match shard
        .offload
        .run(super::offload::Work::SecretHash, move || {
            auth::oauth::token_endpoint(&shared.directory(), &shared.refresh_tokens, &form, now_s)
        })
        .await
    {
        Ok(answer) => answer,
        Err(super::offload::Busy) => return Refusal::VerifierBusy.http_response(),
    };
    if let Some(e) = &answer.event {
        crate::log::warn(
            e.name,
            &[
                ("security", &true),
                ("reason", &e.reason),
                ("app", &e.app_id),
                ("client_id", &e.client_id),
                ("presented_by", &e.presented_by),
                ("family", &e.family),
                ("ip", &ip),
            ],
        );
    }
    let status = answer.error.map_or(200, |e| Refusal::OAuth(e).code());
    response(status, "application/json", &[], &answer.body)
}

/// The `length` bytes of a body: those read with the head, then the rest from the socket.
/// `Err` if the client closes first.
async fn read_body(stream: &SharedStream, leftover: &[u8], length: usize) -> Result<Vec<u8>, ()> {
    let mut body = leftover[..leftover.len().min(length)].to_vec();
    while body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        match socket::read(stream, &mut body[start..]).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(n) => body.truncate(start + n),
        }
    }
    Ok(body)
}

/// `GET /{tenantId}/.well-known/jwks`: the tenant's public verification keys.
fn jwks(shard: &Shard, tenant: &str) -> Vec<u8> {
    match shard.shared.directory().verifier.jwks(tenant) {
        Some(body) => response(
            200,
            "application/json",
            &["Cache-Control: max-age=300"],
            &body,
        ),
        None => Refusal::UnknownTenant.http_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::usage_entry;

    #[test]
    fn usage_thresholds() {
        assert_eq!(
            usage_entry(74, Some(100)),
            "{\"current\":74,\"limit\":100,\"percent\":74,\"status\":\"healthy\"}"
        );
        assert!(usage_entry(75, Some(100)).contains("\"warning\""));
        assert!(usage_entry(89, Some(100)).contains("\"warning\""));
        assert!(usage_entry(90, Some(100)).contains("\"critical\""));
        assert!(usage_entry(1, Some(3)).contains("\"percent\":33.3"));
        assert_eq!(
            usage_entry(5, None),
            "{\"current\":5,\"limit\":null,\"percent\":0,\"status\":\"healthy\"}"
        );
    }
}
