//! Tokens: where a connection's JWT comes from, what it must prove, and who it names.
//! Pure (no I/O): the router calls [`transport::extract`] then [`verify::Verifier::verify`].

pub mod admin_token;
pub mod claims;
pub mod directory;
pub mod oauth;
pub mod secret;
pub mod token_cache;
pub mod transport;
pub mod verify;

/// The `aud` every token must carry, and the scope it must grant.
pub const AUDIENCE: &str = "WireSocket.API";
pub const SCOPE: &str = "WireSocket.API";

/// The development tenant's key pair, used only when no tenant is configured. It is public
/// (it is in this repository): never run a production server without a configuration.
pub const DEV_PRIVATE_KEY_PEM: &str = include_str!("dev_tenant_key.pem");
pub const DEV_PUBLIC_KEY_PEM: &str = include_str!("dev_tenant_key.pub.pem");
