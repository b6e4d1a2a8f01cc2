//! Tenants, apps and keys, loaded from the configuration: what verifies tokens and what
//! signs the ones this server issues.

use super::claims::Limits;
use super::verify::{App, Tenant, TenantKey, Verifier};
use super::{AUDIENCE, DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM, SCOPE};
use crate::config::{AuthConfig, Config, ConfigError, KeyConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use std::collections::HashMap;

/// The name of the development tenant and app used when none is configured; also the
/// development app's `client_id`.
pub const DEV: &str = "dev";
/// The development app's client secret, and its stored hash.
pub const DEV_CLIENT_SECRET: &str = "dev-secret";
const DEV_CLIENT_SECRET_HASH: &str =
    "pbkdf2-sha256$100000$d2lyZXP2NrZXQtZGV2ISEg$9Y3/AscdY5pjb3TmGSMSLShG3DIgdhO1Ve/Xm8qslIM";

/// A tenant's signing key (the first key with a private half).
pub struct Signer {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: EncodingKey,
}

pub struct Directory {
    pub verifier: Verifier,
    pub signers: HashMap<String, Signer>,
    pub apps: HashMap<String, App>,
    /// True when the published development key pair is in use.
    pub is_development: bool,
    /// Tenants with an HS256 key (warned about at start: HS256 is for development).
    pub hs256_tenants: Vec<String>,
    /// Client secret hashes an operator rotated (`{tenant}::{app}` → hash), from the
    /// registry: they replace the file's `client_secret_hash`.
    rotated_secrets: std::sync::RwLock<HashMap<String, String>>,
}

/// The shortest HS256 secret accepted: RFC 7518 3.2 asks for a key as long as the hash
/// output (256 bits), since a short secret can be brute-forced from one token.
pub const HS256_SECRET_BYTES_MIN: usize = 32;

impl Directory {
    /// The client secret hash in force for `app`: a rotated one, else the configured one.
    pub fn client_secret_hash(&self, app: &App) -> Option<String> {
        let rotated = self
            .rotated_secrets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        rotated
            .get(&format!("{}::{}", app.tenant, app.id))
            .cloned()
            .or_else(|| app.client_secret_hash.clone())
    }

    /// Puts the registry's rotated secrets in force (each heartbeat, a rotation, a reload).
    pub fn set_rotated_secrets(&self, rotated: HashMap<String, String>) {
        *self
            .rotated_secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = rotated;
    }

    pub fn rotated_secrets(&self) -> HashMap<String, String> {
        self.rotated_secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn from_config(config: &Config) -> Result<Directory, ConfigError> {
        if config.tenants.is_empty() && config.apps.is_empty() {
            return Ok(Self::development(&config.auth));
        }
        let mut tenants = Vec::new();
        let mut signers = HashMap::new();
        let mut hs256_tenants = Vec::new();
        for t in &config.tenants {
            let mut keys = Vec::new();
            for (i, k) in t.keys.iter().enumerate() {
                let field = format!("tenants.{}.keys[{i}]", t.id);
                let (verify, sign) = load_key(k, &field)?;
                if verify.alg == Algorithm::HS256 && !hs256_tenants.contains(&t.id) {
                    hs256_tenants.push(t.id.clone());
                }
                if let Some(sign) = sign {
                    signers.entry(t.id.clone()).or_insert(sign);
                }
                keys.push(verify);
            }
            if keys.is_empty() {
                return Err(ConfigError(format!(
                    "tenants.{}.keys: a tenant needs at least one key",
                    t.id
                )));
            }
            tenants.push(Tenant {
                id: t.id.clone(),
                keys,
            });
        }
        let apps: Vec<App> = config
            .apps
            .iter()
            .map(|a| App {
                id: a.id.clone(),
                tenant: a.tenant.clone(),
                enabled: a.enabled,
                plan: a.plan,
                require_origin: a.require_origin,
                allow_path_names: a.allow_path_names,
                client_id: a.client_id.clone(),
                client_secret_hash: a.client_secret_hash.clone(),
                license_region: a.license_region.clone(),
                allowed_domains: a.allowed_domains.clone(),
                authorizes: a.authorize_url.is_some(),
            })
            .collect();
        for a in &apps {
            if let Some(hash) = &a.client_secret_hash {
                if !super::secret::is_valid_hash(hash) {
                    return Err(ConfigError(format!(
                        "apps.{}.client_secret_hash: not a pbkdf2-sha256 hash (make one with `wiresocket hash-secret`)",
                        a.id
                    )));
                }
            }
        }
        Ok(Directory {
            verifier: Verifier::new(tenants, apps.clone(), &config.auth),
            signers,
            apps: apps.into_iter().map(|a| (a.id.clone(), a)).collect(),
            is_development: false,
            hs256_tenants,
            rotated_secrets: Default::default(),
        })
    }

    fn development(auth: &AuthConfig) -> Directory {
        let public = DecodingKey::from_rsa_pem(DEV_PUBLIC_KEY_PEM.as_bytes())
            .expect("the dev public key parses");
        let private = EncodingKey::from_rsa_pem(DEV_PRIVATE_KEY_PEM.as_bytes())
            .expect("the dev private key parses");
        let app = App {
            id: DEV.into(),
            tenant: DEV.into(),
            enabled: true,
            plan: Limits::default(),
            require_origin: false,
            allow_path_names: false,
            client_id: Some(DEV.into()),
            client_secret_hash: Some(DEV_CLIENT_SECRET_HASH.into()),
            license_region: "aws-eu-west-1".into(),
            allowed_domains: Vec::new(),
            authorizes: false,
        };
        let tenant = Tenant {
            id: DEV.into(),
            keys: vec![TenantKey {
                kid: Some(DEV.into()),
                alg: Algorithm::RS256,
                key: public,
            }],
        };
        Directory {
            verifier: Verifier::new(vec![tenant], vec![app.clone()], auth),
            signers: HashMap::from([(
                DEV.to_owned(),
                Signer {
                    kid: Some(DEV.into()),
                    alg: Algorithm::RS256,
                    key: private,
                },
            )]),
            apps: HashMap::from([(DEV.to_owned(), app)]),
            is_development: true,
            hs256_tenants: Vec::new(),
            rotated_secrets: Default::default(),
        }
    }

    /// Signs an access token for `app_id` (claims per PRODUCT.md 4), valid `ttl_s` seconds.
    /// `extra` adds or overrides claims (`role`, `docs`, `limits`, ...).
    pub fn mint(
        &self,
        app_id: &str,
        subject: &str,
        ttl_s: u64,
        extra: serde_json::Value,
    ) -> Result<String, String> {
        let app = self
            .apps
            .get(app_id)
            .ok_or_else(|| format!("no app {app_id:?} is configured"))?;
        let signer = self
            .signers
            .get(&app.tenant)
            .ok_or_else(|| format!("tenant {:?} has no private key to sign with", app.tenant))?;
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = serde_json::json!({
            "iss": "wiresocket",
            "sub": subject,
            "aud": AUDIENCE,
            "scope": SCOPE,
            "tenantid": app.tenant,
            "appId": app.id,
            "limits": app.plan,
            "iat": now,
            "exp": now + ttl_s,
            "jti": random_id(),
        });
        if let Some(map) = claims.as_object_mut() {
            if !app.license_region.is_empty() {
                map.insert("dbCode".into(), app.license_region.clone().into());
                map.insert(
                    "licenseRegionCode".into(),
                    app.license_region.clone().into(),
                );
            }
            for (i, domain) in app.allowed_domains.iter().enumerate() {
                map.insert(format!("allowed_domain_{}", i + 1), domain.clone().into());
            }
            if let serde_json::Value::Object(extra) = extra {
                map.extend(extra);
            }
        }
        let mut header = Header::new(signer.alg);
        header.kid = signer.kid.clone();
        jsonwebtoken::encode(&header, &claims, &signer.key).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_key(k: &KeyConfig, field: &str) -> Result<(TenantKey, Option<Signer>), ConfigError> {
    let bad = |what: String| ConfigError(format!("{field}: {what}"));
    let alg = match k.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        other => {
            return Err(bad(format!(
                "alg must be RS256, ES256, EdDSA or HS256, got {other:?}"
            )))
        }
    };
    let read = |inline: &Option<String>,
                file: &Option<String>,
                name: &str|
     -> Result<Option<String>, ConfigError> {
        match (inline, file) {
            (Some(pem), _) => Ok(Some(pem.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|e| bad(format!("{name}_file {path}: {e}"))),
            (None, None) => Ok(None),
        }
    };
    if alg == Algorithm::HS256 {
        let secret = k
            .secret
            .as_ref()
            .ok_or_else(|| bad("HS256 needs a secret".into()))?;
        if secret.len() < HS256_SECRET_BYTES_MIN {
            return Err(bad(format!(
                "secret: HS256 needs at least {HS256_SECRET_BYTES_MIN} bytes of secret, got {}",
                secret.len()
            )));
        }
        let verify = TenantKey {
            kid: k.kid.clone(),
            alg,
            key: DecodingKey::from_secret(secret.as_bytes()),
        };
        let sign = Signer {
            kid: k.kid.clone(),
            alg,
            key: EncodingKey::from_secret(secret.as_bytes()),
        };
        return Ok((verify, Some(sign)));
    }
    let public = read(&k.public_key_pem, &k.public_key_file, "public_key")?
        .ok_or_else(|| bad("public_key_pem or public_key_file is required".into()))?;
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(public.as_bytes()),
        Algorithm::ES256 => DecodingKey::from_ec_pem(public.as_bytes()),
        _ => DecodingKey::from_ed_pem(public.as_bytes()),
    }
    .map_err(|e| bad(format!("public key: {e}")))?;
    let sign = match read(&k.private_key_pem, &k.private_key_file, "private_key")? {
        None => None,
        Some(private) => Some(Signer {
            kid: k.kid.clone(),
            alg,
            key: match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()),
                Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()),
                _ => EncodingKey::from_ed_pem(private.as_bytes()),
            }
            .map_err(|e| bad(format!("private key: {e}")))?,
        }),
    };
    Ok((
        TenantKey {
            kid: k.kid.clone(),
            alg,
            key,
        },
        sign,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_secret_matches_its_hash() {
        assert!(super::super::secret::verify_secret(
            DEV_CLIENT_SECRET,
            DEV_CLIENT_SECRET_HASH
        ));
    }

    #[test]
    fn development_tokens_verify() {
        let d = Directory::from_config(&Config::default()).unwrap();
        assert!(d.is_development);
        let token = d
            .mint(DEV, "cli", 60, serde_json::json!({"role": "viewer"}))
            .unwrap();
        let id = d.verifier.verify(&token).unwrap();
        assert_eq!((id.tenant_id.as_str(), id.app.id.as_str()), (DEV, DEV));
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims["licenseRegionCode"], "aws-eu-west-1");
        assert_eq!(claims["dbCode"], "aws-eu-west-1");
        assert_eq!(id.role, super::super::claims::Role::Viewer);
    }

    #[test]
    fn configured_tenants_and_errors_name_the_field() {
        let toml = format!(
            "[[tenants]]\nid = \"acme\"\n[[tenants.keys]]\nkid = \"k1\"\nalg = \"ES256\"\npublic_key_file = \"{}/tests/keys/es256_public.pem\"\nprivate_key_file = \"{}/tests/keys/es256_private.pem\"\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\nallowed_domains = [\"app.acme.example\"]\nplan = {{ max_connections = 10 }}\n",
            env!("CARGO_MANIFEST_DIR"),
            env!("CARGO_MANIFEST_DIR")
        );
        let config = Config::from_toml(&toml, "t.toml").unwrap();
        config.validate().unwrap();
        let d = Directory::from_config(&config).unwrap();
        let id = d
            .verifier
            .verify(&d.mint("web", "s", 60, serde_json::Value::Null).unwrap())
            .unwrap();
        assert_eq!(id.limits.max_connections, Some(10));

        let bad = Config::from_toml(
            "[[tenants]]\nid = \"x\"\n[[tenants.keys]]\nalg = \"RS512\"\n",
            "t.toml",
        )
        .unwrap();
        let err = Directory::from_config(&bad).err().unwrap();
        assert!(
            err.0.contains("tenants.x.keys[0]") && err.0.contains("alg"),
            "{err}"
        );
        let orphan =
            Config::from_toml("[[apps]]\nid = \"a\"\ntenant = \"nobody\"\n", "t.toml").unwrap();
        assert!(orphan.validate().unwrap_err().0.contains("apps.a.tenant"));
    }

    fn hs256(secret: &str) -> Result<Directory, ConfigError> {
        let toml = format!("[[tenants]]\nid = \"h\"\n[[tenants.keys]]\nalg = \"HS256\"\nsecret = \"{secret}\"\n[[apps]]\nid = \"a\"\ntenant = \"h\"\n");
        Directory::from_config(&Config::from_toml(&toml, "t.toml").unwrap())
    }

    #[test]
    fn hs256_needs_32_bytes_of_secret_and_is_named_for_the_warning() {
        let err = hs256(&"s".repeat(HS256_SECRET_BYTES_MIN - 1))
            .err()
            .unwrap();
        assert!(
            err.0.contains("tenants.h.keys[0]") && err.0.contains("at least 32 bytes"),
            "{err}"
        );
        let d = hs256(&"s".repeat(HS256_SECRET_BYTES_MIN)).unwrap();
        assert_eq!(d.hs256_tenants, ["h"]);
        d.verifier
            .verify(&d.mint("a", "s", 60, serde_json::Value::Null).unwrap())
            .unwrap();
        assert!(Directory::from_config(&Config::default())
            .unwrap()
            .hs256_tenants
            .is_empty());
    }
}
