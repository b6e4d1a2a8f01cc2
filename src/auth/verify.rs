//! Token verification: signature with the tenant's own keys, the standard claims, scope,
//! tenant and app, and the identity a connection then carries.

use super::claims::{Limits, RawClaims, Role};
use super::{AUDIENCE, SCOPE};
use crate::config::AuthConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;

/// A verification key of a tenant.
pub struct TenantKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

pub struct Tenant {
    pub id: String,
    pub keys: Vec<TenantKey>,
}

/// What the server knows of an app.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub tenant: String,
    pub enabled: bool,
    pub plan: Limits,
    /// Refuse connections without an `Origin` header (browser-only apps).
    pub require_origin: bool,
    /// Document names may also use `/` and `.`.
    pub allow_path_names: bool,
    /// OAuth 2 client credentials for the token endpoint; the secret only as a slow hash.
    pub client_id: Option<String>,
    pub client_secret_hash: Option<String>,
    /// `aws-{region}`: carried in issued tokens as `dbCode` and `licenseRegionCode`.
    pub license_region: String,
    /// Carried in issued tokens as `allowed_domain_1..3`.
    pub allowed_domains: Vec<String>,
    /// The app has an authorization callback (PRODUCT.md 9.4): its tokens' claims are kept
    /// for it.
    pub authorizes: bool,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tenant_id: String,
    pub app: App,
    /// The token's limits, completed from the app's plan.
    pub limits: Limits,
    pub role: Role,
    pub docs: Option<Vec<String>>,
    pub allowed_domains: Vec<String>,
    /// The token's `exp`.
    pub expires_at_s: u64,
    /// `{tenant}::{kid}` of the key that verified the token, if it has a `kid`: an operator
    /// can revoke it (PRODUCT.md 13), closing the sessions it opened.
    pub signing_key: Option<std::sync::Arc<str>>,
    /// Shared by every connection admitted with the token (the verified-token cache holds
    /// one), so it costs a connection a pointer.
    pub user: std::sync::Arc<super::claims::User>,
    /// The token's claims as sent, kept only for an app with an authorization callback
    /// (which is sent them).
    pub claims: Option<std::sync::Arc<serde_json::Value>>,
}

/// Why a token is refused (4002 or 4003: see `refusal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 4002: the token is not valid.
    Invalid(&'static str),
    /// 4003: valid, but its tenant or app may not connect.
    Forbidden(&'static str),
}

impl Refusal {
    /// The close reason. Never contains the token.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Invalid(why) => format!("Invalid token: {why}"),
            Refusal::Forbidden(why) => format!("Forbidden: {why}"),
        }
    }
}

pub struct Verifier {
    tenants: HashMap<String, Tenant>,
    apps: HashMap<String, App>,
    leeway_s: u64,
    token_lifetime_max_s: u64,
}

impl Verifier {
    pub fn new(tenants: Vec<Tenant>, apps: Vec<App>, auth: &AuthConfig) -> Self {
        Verifier {
            tenants: tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
            apps: apps.into_iter().map(|a| (a.id.clone(), a)).collect(),
            leeway_s: auth.leeway_s,
            token_lifetime_max_s: auth.token_lifetime_max_s,
        }
    }

    /// The tenant's public keys as a JWK set (HMAC secrets are never published).
    pub fn jwks(&self, tenant_id: &str) -> Option<String> {
        let tenant = self.tenants.get(tenant_id)?;
        let keys: Vec<jsonwebtoken::jwk::Jwk> = tenant
            .keys
            .iter()
            .filter(|k| k.alg != Algorithm::HS256)
            .filter_map(|k| {
                let mut jwk =
                    jsonwebtoken::jwk::Jwk::from_decoding_key(&k.key, Some(k.alg)).ok()?;
                jwk.common.key_id = k.kid.clone();
                jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
                Some(jwk)
            })
            .collect();
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).ok()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn has_tenant(&self, id: &str) -> bool {
        self.tenants.contains_key(id)
    }

    /// Whether the tenant `id` has a verification key `kid`.
    pub fn has_key(&self, id: &str, kid: &str) -> bool {
        self.tenants
            .get(id)
            .is_some_and(|t| t.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        // The header names the algorithm and key; `alg: none` and unknown algorithms fail here.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid("malformed"))?;
        // The tenant is inside the (not yet verified) claims; it only chooses the keys.
        let unverified: RawClaims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Refusal::Invalid("malformed"))?;
        let tenant_id = unverified
            .tenantid
            .ok_or(Refusal::Invalid("no tenant claim"))?;
        let tenant = self
            .tenants
            .get(&tenant_id)
            .ok_or(Refusal::Forbidden("unknown tenant"))?;
        let candidates: Vec<&TenantKey> = match &header.kid {
            Some(kid) => tenant
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => tenant.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(Refusal::Invalid("unknown key"));
        }
        // Each key verifies only its own algorithm: an HS256 token "signed" with an RSA
        // public key never meets an HMAC check.
        let mut result = Err(Refusal::Invalid("algorithm not accepted for this tenant"));
        let mut signer = None;
        for key in candidates.into_iter().filter(|k| k.alg == header.alg) {
            result = self.decode(token, key);
            if result.is_ok() {
                signer = Some(key);
                break;
            }
        }
        let claims = result?;
        // Named by the key that verified, not the header: a token without `kid` is still
        // refused once the key that signed it is revoked.
        let signing_key = signer
            .and_then(|k| k.kid.as_deref())
            .map(|kid| std::sync::Arc::from(format!("{}::{kid}", tenant.id)));
        if lifetime_s(&claims, jsonwebtoken::get_current_timestamp()) > self.token_lifetime_max_s {
            return Err(Refusal::Invalid("lifetime over auth.token_lifetime_max_s"));
        }
        let scoped = [&claims.scope, &claims.scp]
            .into_iter()
            .flatten()
            .any(|s| s.contains(SCOPE));
        if !scoped {
            return Err(Refusal::Invalid("missing scope WireSocket.API"));
        }
        let app_id = claims
            .app_id
            .as_deref()
            .ok_or(Refusal::Invalid("no appId claim"))?;
        let app = self
            .apps
            .get(app_id)
            .ok_or(Refusal::Forbidden("unknown app"))?;
        if app.tenant != tenant.id {
            return Err(Refusal::Forbidden("app belongs to another tenant"));
        }
        if !app.enabled {
            return Err(Refusal::Forbidden("app disabled"));
        }
        let limits = match &claims.limits {
            Some(l) => l.parse().map_err(Refusal::Invalid)?,
            None => Limits::default(),
        };
        let role = match claims.role.as_deref() {
            None | Some("editor") => Role::Editor,
            Some("viewer") => Role::Viewer,
            Some(_) => return Err(Refusal::Invalid("unknown role")),
        };
        let allowed_domains = [
            claims.allowed_domain_1,
            claims.allowed_domain_2,
            claims.allowed_domain_3,
        ]
        .into_iter()
        .flatten()
        .filter(|d| !d.is_empty())
        .collect();
        // Verified above: decoding the payload again only reads it whole.
        let all_claims = if app.authorizes {
            let all = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
                .map_err(|_| Refusal::Invalid("malformed"))?;
            Some(std::sync::Arc::new(all))
        } else {
            None
        };
        Ok(Identity {
            tenant_id: tenant.id.clone(),
            app: app.clone(),
            limits: limits.or(app.plan),
            role,
            docs: claims.docs,
            allowed_domains,
            expires_at_s: claims.exp.unwrap_or(0),
            signing_key,
            user: std::sync::Arc::new(super::claims::User::from_claims(
                claims.sub.as_ref(),
                claims.name.as_ref(),
            )),
            claims: all_claims,
        })
    }

    fn decode(&self, token: &str, key: &TenantKey) -> Result<RawClaims, Refusal> {
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_s;
        jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                Refusal::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm mismatch",
                    ErrorKind::MissingRequiredClaim(_) => "missing exp or aud",
                    _ => "malformed",
                })
            })
    }
}

/// How long a verified token is valid: `exp - iat`, or `exp - now` without `iat`. An `iat`
/// in the future counts from now, so it cannot make a long-lived token look short.
fn lifetime_s(claims: &RawClaims, now_s: u64) -> u64 {
    let from = claims.iat.map_or(now_s, |iat| iat.min(now_s));
    claims.exp.unwrap_or(0).saturating_sub(from)
}

/// Whether the request's `Origin` may use this token: with `allowed_domain_*` claims the
/// origin's `host[:port]` must match one exactly (case-insensitive); without, any origin. A
/// request without `Origin` (a server-side client) passes unless the app requires one.
pub fn origin_allowed(identity: &Identity, origin: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return !identity.app.require_origin;
    };
    if identity.allowed_domains.is_empty() {
        return true;
    }
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let host = origin
        .trim()
        .split_once("://")
        .map_or(origin.trim(), |(_, rest)| rest);
    let host = host.trim_end_matches('/');
    identity
        .allowed_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ES_PRIV: &str = include_str!("../../tests/keys/es256_private.pem");
    const ES_PUB: &str = include_str!("../../tests/keys/es256_public.pem");
    const ED_PRIV: &str = include_str!("../../tests/keys/ed25519_private.pem");
    const ED_PUB: &str = include_str!("../../tests/keys/ed25519_public.pem");
    const OTHER_RSA_PRIV: &str = include_str!("../../tests/keys/rs256_other_private.pem");
    const OTHER_RSA_PUB: &str = include_str!("../../tests/keys/rs256_other_public.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn app(id: &str, tenant: &str) -> App {
        App {
            id: id.into(),
            tenant: tenant.into(),
            enabled: true,
            plan: Limits {
                max_connections: Some(100),
                ..Limits::default()
            },
            require_origin: false,
            allow_path_names: false,
            client_id: None,
            client_secret_hash: None,
            license_region: String::new(),
            allowed_domains: Vec::new(),
            authorizes: false,
        }
    }

    const LIFETIME_MAX_S: u64 = 3_600;

    fn verifier() -> Verifier {
        let rsa = |pem: &str, kid: &str| TenantKey {
            kid: Some(kid.into()),
            alg: Algorithm::RS256,
            key: DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let acme = Tenant {
            id: "acme".into(),
            keys: vec![
                rsa(DEV_PUBLIC_KEY_PEM, "rsa"),
                TenantKey {
                    kid: Some("ec".into()),
                    alg: Algorithm::ES256,
                    key: DecodingKey::from_ec_pem(ES_PUB.as_bytes()).unwrap(),
                },
                TenantKey {
                    kid: Some("ed".into()),
                    alg: Algorithm::EdDSA,
                    key: DecodingKey::from_ed_pem(ED_PUB.as_bytes()).unwrap(),
                },
            ],
        };
        let other = Tenant {
            id: "other".into(),
            keys: vec![rsa(OTHER_RSA_PUB, "rsa")],
        };
        let mut disabled = app("off", "acme");
        disabled.enabled = false;
        Verifier::new(
            vec![acme, other],
            vec![app("app1", "acme"), app("app2", "other"), disabled],
            &AuthConfig {
                leeway_s: 30,
                token_lifetime_max_s: LIFETIME_MAX_S,
            },
        )
    }

    fn claims() -> serde_json::Value {
        json!({"tenantid": "acme", "appId": "app1", "aud": "WireSocket.API", "scope": "WireSocket.API", "exp": now() + 600})
    }

    fn sign(alg: Algorithm, kid: &str, pem: &str, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_secret(pem.as_bytes()),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs(claims: &serde_json::Value) -> String {
        sign(Algorithm::RS256, "rsa", DEV_PRIVATE_KEY_PEM, claims)
    }

    fn with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
        let mut c = claims();
        f(c.as_object_mut().unwrap());
        c
    }

    #[test]
    fn accepts_rs256_es256_and_eddsa() {
        let v = verifier();
        for token in [
            rs(&claims()),
            sign(Algorithm::ES256, "ec", ES_PRIV, &claims()),
            sign(Algorithm::EdDSA, "ed", ED_PRIV, &claims()),
        ] {
            let id = v.verify(&token).unwrap();
            assert_eq!(
                (id.tenant_id.as_str(), id.app.id.as_str()),
                ("acme", "app1")
            );
            assert_eq!(id.limits.max_connections, Some(100), "from the plan");
            assert_eq!(id.role, Role::Editor);
        }
    }

    #[test]
    fn the_identity_names_the_key_that_verified_even_without_a_kid_header() {
        let v = verifier();
        let id = v
            .verify(&sign(Algorithm::ES256, "ec", ES_PRIV, &claims()))
            .unwrap();
        assert_eq!(id.signing_key.as_deref(), Some("acme::ec"));
        let key = EncodingKey::from_ed_pem(ED_PRIV.as_bytes()).unwrap();
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims(), &key).unwrap();
        let id = v.verify(&no_kid).unwrap();
        assert_eq!(id.signing_key.as_deref(), Some("acme::ed"));
    }

    #[test]
    fn the_bad_token_table() {
        let v = verifier();
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let good = rs(&claims());
        let mut tampered_parts: Vec<String> = good.split('.').map(String::from).collect();
        tampered_parts[1] = b64(&with(|c| {
            c.insert("appId".into(), json!("app2"));
        })
        .to_string());
        let alg_none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims().to_string())
        );
        // HS256 "signed" with the tenant's RSA public key as the HMAC secret.
        let confused = sign(Algorithm::HS256, "rsa", DEV_PUBLIC_KEY_PEM, &claims());
        let cases: Vec<(&str, String, Refusal)> = vec![
            (
                "expired",
                rs(&with(|c| {
                    c.insert("exp".into(), json!(now() - 120));
                })),
                Refusal::Invalid("expired"),
            ),
            (
                "not yet valid",
                rs(&with(|c| {
                    c.insert("nbf".into(), json!(now() + 600));
                })),
                Refusal::Invalid("not yet valid"),
            ),
            (
                "wrong audience",
                rs(&with(|c| {
                    c.insert("aud".into(), json!("Other.API"));
                })),
                Refusal::Invalid("wrong audience"),
            ),
            (
                "missing audience",
                rs(&with(|c| {
                    c.remove("aud");
                })),
                Refusal::Invalid("missing exp or aud"),
            ),
            (
                "missing scope",
                rs(&with(|c| {
                    c.insert("scope".into(), json!("openid"));
                })),
                Refusal::Invalid("missing scope WireSocket.API"),
            ),
            (
                "tampered payload",
                tampered_parts.join("."),
                Refusal::Invalid("bad signature"),
            ),
            (
                "wrong key",
                sign(Algorithm::RS256, "rsa", OTHER_RSA_PRIV, &claims()),
                Refusal::Invalid("bad signature"),
            ),
            (
                "other tenant's key",
                sign(
                    Algorithm::RS256,
                    "rsa",
                    OTHER_RSA_PRIV,
                    &with(|c| {
                        c.insert("appId".into(), json!("app1"));
                    }),
                ),
                Refusal::Invalid("bad signature"),
            ),
            ("alg none", alg_none, Refusal::Invalid("malformed")),
            (
                "HS256 with the RSA public key",
                confused,
                Refusal::Invalid("algorithm not accepted for this tenant"),
            ),
            (
                "unknown kid",
                sign(Algorithm::RS256, "nope", DEV_PRIVATE_KEY_PEM, &claims()),
                Refusal::Invalid("unknown key"),
            ),
            ("garbage", "not-a-jwt".into(), Refusal::Invalid("malformed")),
            (
                "unknown tenant",
                rs(&with(|c| {
                    c.insert("tenantid".into(), json!("ghost"));
                })),
                Refusal::Forbidden("unknown tenant"),
            ),
            (
                "unknown app",
                rs(&with(|c| {
                    c.insert("appId".into(), json!("ghost"));
                })),
                Refusal::Forbidden("unknown app"),
            ),
            (
                "app of another tenant",
                rs(&with(|c| {
                    c.insert("appId".into(), json!("app2"));
                })),
                Refusal::Forbidden("app belongs to another tenant"),
            ),
            (
                "disabled app",
                rs(&with(|c| {
                    c.insert("appId".into(), json!("off"));
                })),
                Refusal::Forbidden("app disabled"),
            ),
            (
                "lifetime over the bound",
                rs(&with(|c| {
                    c.insert("iat".into(), json!(now()));
                    c.insert("exp".into(), json!(now() + LIFETIME_MAX_S + 1));
                })),
                Refusal::Invalid("lifetime over auth.token_lifetime_max_s"),
            ),
            (
                "lifetime over the bound, no iat",
                rs(&with(|c| {
                    c.insert("exp".into(), json!(now() + LIFETIME_MAX_S + 60));
                })),
                Refusal::Invalid("lifetime over auth.token_lifetime_max_s"),
            ),
            (
                "an iat in the future does not shorten the lifetime",
                rs(&with(|c| {
                    c.insert("iat".into(), json!(now() + 10 * LIFETIME_MAX_S));
                    c.insert("exp".into(), json!(now() + 10 * LIFETIME_MAX_S + 60));
                })),
                Refusal::Invalid("lifetime over auth.token_lifetime_max_s"),
            ),
            (
                "unknown role",
                rs(&with(|c| {
                    c.insert("role".into(), json!("admin"));
                })),
                Refusal::Invalid("unknown role"),
            ),
        ];
        for (name, token, expected) in cases {
            let got = v.verify(&token).err();
            assert_eq!(got.as_ref(), Some(&expected), "{name}");
            let reason = got.unwrap().reason();
            assert!(
                !reason.contains(&token[..token.len().min(20)]) || token.len() < 20,
                "{name}: reason leaks the token"
            );
        }
    }

    #[test]
    fn a_lifetime_at_the_bound_is_accepted() {
        let v = verifier();
        let old = now() - 600;
        // Issued 10 minutes ago, valid for exactly the bound: accepted though exp - now is less.
        let token = rs(&with(|c| {
            c.insert("iat".into(), json!(old));
            c.insert("exp".into(), json!(old + LIFETIME_MAX_S));
        }));
        v.verify(&token).unwrap();
        let token = rs(&with(|c| {
            c.insert("iat".into(), json!(old));
            c.insert("exp".into(), json!(old + LIFETIME_MAX_S + 1));
        }));
        assert!(v
            .verify(&token)
            .unwrap_err()
            .reason()
            .contains("token_lifetime_max_s"));
    }

    #[test]
    fn jwks_publishes_public_keys_that_verify() {
        let v = verifier();
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&v.jwks("acme").unwrap()).unwrap();
        assert_eq!(set.keys.len(), 3);
        let rsa = set.find("rsa").unwrap();
        let key = DecodingKey::from_jwk(rsa).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode::<serde_json::Value>(rs(&claims()), &key, &validation).unwrap();
        assert!(v.jwks("ghost").is_none());
    }

    #[test]
    fn limits_role_docs_and_domains() {
        let v = verifier();
        let token = rs(&with(|c| {
            c.insert("limits".into(), json!("{\"maxConnections\":3}"));
            c.insert("role".into(), json!("viewer"));
            c.insert("docs".into(), json!(["a", "b-*"]));
            c.insert("allowed_domain_1".into(), json!("App.Example.com"));
            c.insert("allowed_domain_2".into(), json!("localhost:3000"));
        }));
        let id = v.verify(&token).unwrap();
        assert_eq!(id.limits.max_connections, Some(3));
        assert_eq!(id.role, Role::Viewer);
        assert_eq!(id.docs.as_deref().unwrap().len(), 2);
        assert!(origin_allowed(&id, Some(b"https://app.example.com")));
        assert!(origin_allowed(&id, Some(b"http://localhost:3000")));
        assert!(!origin_allowed(&id, Some(b"http://localhost:3001")));
        assert!(!origin_allowed(&id, Some(b"https://evil.example.com")));
        assert!(origin_allowed(&id, None), "server-side clients pass");
        let mut strict = id.clone();
        strict.app.require_origin = true;
        assert!(!origin_allowed(&strict, None));
        let open = v.verify(&rs(&claims())).unwrap();
        assert!(origin_allowed(&open, Some(b"https://anything.example")));
    }
}
