//! The authorization callback at admission (PRODUCT.md 9.4), the same for both framings:
//! after a token verifies and the document is decided on, an app with `authorize_url` is
//! asked (or its kept answer used) before the connection joins. The call runs on a call
//! thread; the admission task waits for it on the admission queue, never blocking the shard.

use super::admission::Admission;
use super::shard::Shard;
use crate::auth::verify::Identity;
use crate::refusal::Refusal;
use crate::webhook::authorize::{Decision, Question};
use crate::webhook::Authorization;

/// `admission` of `identity` to the document `name` as the app decides: unchanged, made
/// read-only (`role: "viewer"`), or refused (4003 with the app's reason; 1013 when it gave no
/// decision: never taken for a yes).
pub async fn authorize(
    shard: &Shard,
    identity: &Identity,
    name: &str,
    mut admission: Admission,
) -> Result<Admission, Refusal> {
    let null = serde_json::Value::Null;
    let question = Question {
        tenant: &identity.tenant_id,
        app: &identity.app.id,
        document: name,
        sub: identity.user.sub.as_deref(),
        role: identity.role,
        // Absent only for a token verified before a reload gave its app a callback.
        claims: identity.claims.as_deref().unwrap_or(&null),
    };
    let generation = shard.shared.revoked.generation();
    let decision = match shard
        .shared
        .webhooks
        .authorize(&admission.app, &question, generation)
    {
        // An app the token's directory said has a callback, which a reload removed a
        // moment ago: refused (its client comes back), never let in unasked.
        None if identity.app.authorizes => return Err(Refusal::AuthorizationUnavailable),
        None => return Ok(admission),
        Some(Authorization::Known(decision)) => decision,
        // No answer in time, or none at all: failures are logged once, where the call was
        // made (`webhook::Webhooks::authorize`).
        Some(Authorization::Wait { answer, timeout }) => {
            match glommio::timer::timeout(timeout, async { Ok(answer.await) }).await {
                Ok(Ok(decision)) => decision,
                Ok(Err(_)) | Err(_) => return Err(Refusal::AuthorizationUnavailable),
            }
        }
    };
    match decision {
        Decision::Allow { viewer } => {
            admission.can_write &= !viewer;
            Ok(admission)
        }
        Decision::Deny { reason } => Err(Refusal::NotAuthorized(reason)),
    }
}
