//! What a verified token allows a connection to a document, decided without I/O: whether
//! it may open the document it names, and what it is admitted with. The same for both
//! framings (a y-websocket upgrade, a Hocuspocus auth message).

use crate::auth;
use crate::auth::claims::Limits;
use crate::auth::verify::Identity;
use crate::refusal::Refusal;
use crate::sync::document;

/// What a connection to one document is allowed, from its verified token.
pub struct Admission {
    pub key: String,
    /// The document name as the client named it (for redirects).
    pub document: String,
    /// `{tenant}::{app}`.
    pub app: String,
    pub limits: Limits,
    pub can_write: bool,
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

/// A y-websocket connection decided on by the shard that accepted it (token verified,
/// document checked, the upgrade's answer computed), for its document's owner shard.
pub struct Handed {
    pub accept: String,
    pub protocol: Option<&'static str>,
    /// What the client sent after its request head.
    pub leftover: Vec<u8>,
    pub admission: Admission,
}
