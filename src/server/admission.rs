//! What a verified token allows a connection to a document, decided without I/O: whether
//! it may open the document it names from the page it is on, what it is admitted with and
//! which shard owns the document. The same for both framings (a y-websocket upgrade, a
//! Hocuspocus auth message); every refusal is a `Refusal`, whose `wire` says how it is told.

use crate::auth;
use crate::auth::claims::Limits;
use crate::auth::verify::Identity;
use crate::refusal::Refusal;
use crate::sync::document::{self, isolation_key, owner_shard};

/// What a connection to one document is allowed, from its verified token.
pub struct Admission {
    pub key: String,
    /// The document name as the client named it (for redirects).
    pub document: String,
    /// `{tenant}::{app}`.
    pub app: String,
    pub limits: Limits,
    pub can_write: bool,
    /// Who the token names (design comments carry it).
    pub user: std::sync::Arc<crate::auth::claims::User>,
    /// The key that signed the token (`Identity::signing_key`).
    pub signing_key: Option<std::sync::Arc<str>>,
}

/// Whether `identity` may open the document named `name` (its name valid for the app, and
/// granted by the token's `docs`), in either framing.
pub fn check_document(identity: &Identity, name: &str) -> Result<(), Refusal> {
    if name.contains("::") {
        Err(Refusal::NameHasSeparator)
    } else if let Err(why) = document::validate_name(name, identity.app.allow_path_names) {
        Err(Refusal::InvalidName(why))
    } else if identity
        .docs
        .as_ref()
        .is_some_and(|docs| !auth::claims::docs_allow(docs, name))
    {
        Err(Refusal::DocNotGranted)
    } else {
        Ok(())
    }
}

/// Decides a verified token's connection to the document `name` (`named_as` is how the
/// client wrote it, for redirects), from a page at `origin`, on a node of `shards` shards:
/// what it is admitted with and the shard that owns the document, or why not (`Origin`
/// not allowed: HTTP 403 before any frame; a name the app does not allow, or the `docs`
/// claim does not grant: a close after the 101).
pub fn decide(
    identity: &Identity,
    name: &str,
    named_as: &str,
    origin: Option<&[u8]>,
    shards: usize,
) -> Result<(Admission, usize), Refusal> {
    if !auth::verify::origin_allowed(identity, origin) {
        return Err(Refusal::OriginForbidden);
    }
    check_document(identity, name)?;
    let key = isolation_key(&identity.tenant_id, &identity.app.id, name);
    let owner = owner_shard(&key, shards);
    let admission = Admission {
        key,
        document: named_as.to_owned(),
        app: format!("{}::{}", identity.tenant_id, identity.app.id),
        limits: identity.limits,
        can_write: identity.role == auth::claims::Role::Editor,
        user: identity.user.clone(),
        signing_key: identity.signing_key.clone(),
    };
    Ok((admission, owner))
}

/// A y-websocket connection decided on by the shard that accepted it (token verified,
/// document checked, the upgrade's answer computed), for its document's owner shard.
pub struct Handed {
    pub accept: String,
    pub protocol: Option<&'static str>,
    /// What the client sent after its request head.
    pub leftover: Vec<u8>,
    pub admission: Admission,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::Directory;
    use crate::config::Config;
    use crate::refusal::Wire;

    fn identity(claims: serde_json::Value) -> Identity {
        let directory = Directory::from_config(&Config::default()).unwrap();
        let token = directory.mint("dev", "u", 600, claims).unwrap();
        directory.verifier.verify(&token).unwrap()
    }

    #[test]
    fn the_decision_table() {
        let editor = identity(serde_json::Value::Null);
        let (admission, owner) = decide(&editor, "a", "a", None, 4).unwrap();
        assert_eq!(admission.key, "dev::dev::a");
        assert_eq!(owner, owner_shard("dev::dev::a", 4));
        assert!(admission.can_write);
        assert_eq!(admission.app, "dev::dev");
        let viewer = identity(serde_json::json!({ "role": "viewer" }));
        assert!(!decide(&viewer, "a", "a", None, 1).unwrap().0.can_write);
        let limited = identity(serde_json::json!({ "docs": ["team-*"] }));
        assert!(decide(&limited, "team-1", "team-1", None, 1).is_ok());
        let pinned = identity(serde_json::json!({ "allowed_domain_1": "app.example.com" }));
        let page = Some(&b"https://app.example.com"[..]);
        assert!(decide(&pinned, "a", "a", page, 1).is_ok());
        // (identity, name, origin) -> the refusal, and whether it is told over HTTP.
        type Row<'a> = (&'a Identity, &'a str, Option<&'a [u8]>, Refusal, bool);
        let table: [Row; 5] = [
            (&limited, "other", None, Refusal::DocNotGranted, false),
            (&editor, "a::b", None, Refusal::NameHasSeparator, false),
            (&editor, "a b", None, Refusal::InvalidName("x"), false),
            (
                &pinned,
                "a",
                Some(b"https://evil.example"),
                Refusal::OriginForbidden,
                true,
            ),
            (
                &limited,
                "other",
                Some(b"https://any"),
                Refusal::DocNotGranted,
                false,
            ),
        ];
        for (who, name, origin, expected, http) in table {
            let refused = decide(who, name, name, origin, 1).err().unwrap();
            assert_eq!(
                std::mem::discriminant(&refused),
                std::mem::discriminant(&expected),
                "{name}"
            );
            assert_eq!(matches!(refused.wire(), Wire::Http { .. }), http, "{name}");
        }
    }
}
