//! The claims a WireSocket token carries, with the spellings seen in the wild.

use serde::Deserialize;

/// Per-app limits; a missing one falls back to the app's plan.
/// In configuration files the same fields are spelled `max_connections` etc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(alias = "max_connections")]
    pub max_connections: Option<u64>,
    #[serde(alias = "max_documents")]
    pub max_documents: Option<u64>,
    #[serde(alias = "max_users_per_doc")]
    pub max_users_per_doc: Option<u64>,
    #[serde(alias = "ops_per_minute")]
    pub ops_per_minute: Option<u64>,
}

impl Limits {
    /// `self`, with every missing limit taken from `plan`.
    pub fn or(self, plan: Limits) -> Limits {
        Limits {
            max_connections: self.max_connections.or(plan.max_connections),
            max_documents: self.max_documents.or(plan.max_documents),
            max_users_per_doc: self.max_users_per_doc.or(plan.max_users_per_doc),
            ops_per_minute: self.ops_per_minute.or(plan.ops_per_minute),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Editor,
    /// Receives everything; its updates are refused (auth message, reason `read-only`).
    Viewer,
}

/// Claims as they arrive. Unknown claims are ignored.
#[derive(Debug, Deserialize)]
pub struct RawClaims {
    #[serde(alias = "tenantId", alias = "tenant_id")]
    pub tenantid: Option<String>,
    #[serde(rename = "appId")]
    pub app_id: Option<String>,
    pub scope: Option<StringOrList>,
    pub scp: Option<StringOrList>,
    pub limits: Option<LimitsClaim>,
    #[serde(rename = "dbCode")]
    pub db_code: Option<String>,
    #[serde(rename = "licenseRegionCode")]
    pub license_region_code: Option<String>,
    #[serde(rename = "regionCode")]
    pub region_code: Option<String>,
    pub allowed_domain_1: Option<String>,
    pub allowed_domain_2: Option<String>,
    pub allowed_domain_3: Option<String>,
    pub jti: Option<String>,
    /// Who the token speaks for, as side messages show it (see [`User`]): any JSON here, so
    /// that an unusual shape drops the claim, not the token.
    pub sub: Option<serde_json::Value>,
    pub name: Option<serde_json::Value>,
    pub role: Option<String>,
    pub docs: Option<Vec<String>>,
    /// Checked by jsonwebtoken; read again for the lifetime bound.
    pub exp: Option<u64>,
    pub iat: Option<u64>,
}

/// The user a token names (`sub`, and `name` if it has one), as design comments carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub sub: Option<String>,
    pub name: Option<String>,
}

impl User {
    /// From the claims: a string, or a number written as one; anything else is left out.
    pub fn from_claims(sub: Option<&serde_json::Value>, name: Option<&serde_json::Value>) -> User {
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        User {
            sub: text(sub),
            name: text(name),
        }
    }

    /// `{"sub": ..., "name": ...}`, `name` only if the token has one (`sub` null without).
    pub fn json(&self) -> serde_json::Value {
        let mut user = serde_json::json!({ "sub": self.sub });
        if let Some(name) = &self.name {
            user["name"] = name.clone().into();
        }
        user
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    /// Whether `item` is one of the space-separated (or listed) values.
    pub fn contains(&self, item: &str) -> bool {
        match self {
            StringOrList::One(s) => s.split_ascii_whitespace().any(|v| v == item),
            StringOrList::Many(v) => v
                .iter()
                .any(|v| v.split_ascii_whitespace().any(|v| v == item)),
        }
    }
}

/// `limits` comes as an object or as a JSON string holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum LimitsClaim {
    Object(Limits),
    Text(String),
}

impl LimitsClaim {
    pub fn parse(&self) -> Result<Limits, &'static str> {
        match self {
            LimitsClaim::Object(l) => Ok(*l),
            LimitsClaim::Text(s) => {
                serde_json::from_str(s).map_err(|_| "limits claim is not a JSON object")
            }
        }
    }
}

/// Whether `name` is allowed by a `docs` claim: exact names, or `prefix*` patterns.
pub fn docs_allow(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_spellings_and_limits_forms() {
        for tenant_key in ["tenantid", "tenantId", "tenant_id"] {
            let json = format!(r#"{{"{tenant_key}":"t1","appId":"a1","scp":["WireSocket.API"]}}"#);
            let c: RawClaims = serde_json::from_str(&json).unwrap();
            assert_eq!(c.tenantid.as_deref(), Some("t1"), "{tenant_key}");
            assert!(c.scp.unwrap().contains("WireSocket.API"));
        }
        let c: RawClaims =
            serde_json::from_str(r#"{"limits":{"maxConnections":5,"opsPerMinute":60}}"#).unwrap();
        let l = c.limits.unwrap().parse().unwrap();
        assert_eq!(
            (l.max_connections, l.ops_per_minute, l.max_documents),
            (Some(5), Some(60), None)
        );
        let c: RawClaims = serde_json::from_str(r#"{"limits":"{\"maxDocuments\":7}"}"#).unwrap();
        assert_eq!(c.limits.unwrap().parse().unwrap().max_documents, Some(7));
        let c: RawClaims = serde_json::from_str(r#"{"limits":"nope"}"#).unwrap();
        assert!(c.limits.unwrap().parse().is_err());
        let c: RawClaims =
            serde_json::from_str(r#"{"scope":"openid WireSocket.API offline_access"}"#).unwrap();
        assert!(c.scope.unwrap().contains("WireSocket.API"));
    }

    #[test]
    fn plan_fills_missing_limits() {
        let token = Limits {
            max_connections: Some(5),
            ..Limits::default()
        };
        let plan = Limits {
            max_connections: Some(100),
            max_documents: Some(10),
            ..Limits::default()
        };
        let l = token.or(plan);
        assert_eq!(
            (l.max_connections, l.max_documents, l.ops_per_minute),
            (Some(5), Some(10), None)
        );
    }

    #[test]
    fn docs_patterns() {
        let p = vec!["exact".to_owned(), "project-*".to_owned()];
        assert!(docs_allow(&p, "exact"));
        assert!(docs_allow(&p, "project-42"));
        assert!(!docs_allow(&p, "exactly"));
        assert!(!docs_allow(&p, "other"));
    }
}
