//! The admin listener's bearer token (PRODUCT.md 13): from `admin_token_file` or
//! `WIRESOCKET_ADMIN_TOKEN`, at least [`ADMIN_TOKEN_BYTES_MIN`] bytes, compared in constant
//! time (as SHA-256 digests, so neither its length nor its bytes leak through timing).

use sha2::{Digest, Sha256};

/// The shortest admin token accepted: it guards every tenant's sessions.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 32;

pub struct AdminToken {
    digest: [u8; 32],
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer ...` (401).
    Missing,
    /// A token that is not the admin token (403).
    Wrong,
}

impl AdminToken {
    /// The token from the environment's `WIRESOCKET_ADMIN_TOKEN` (`from_env`) or else the
    /// file; `None` when neither is set. Surrounding whitespace is not part of it.
    pub fn load(
        file: Option<&str>,
        from_env: Option<String>,
    ) -> Result<Option<AdminToken>, String> {
        let (text, origin) = match (from_env, file) {
            (Some(text), _) => (text, "WIRESOCKET_ADMIN_TOKEN".to_owned()),
            (None, Some(path)) => (
                std::fs::read_to_string(path)
                    .map_err(|e| format!("admin_token_file: cannot read {path}: {e}"))?,
                format!("admin_token_file {path}"),
            ),
            (None, None) => return Ok(None),
        };
        let token = text.trim();
        if token.len() < ADMIN_TOKEN_BYTES_MIN {
            return Err(format!(
                "{origin}: the admin token must be at least {ADMIN_TOKEN_BYTES_MIN} bytes (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Some(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }))
    }

    /// Checks an `Authorization` header.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let given = authorization
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(Denied::Missing)?;
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let differs = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs == 0 {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_token_itself_lets_in() {
        let token = AdminToken::load(None, Some(format!(" {GOOD}\n")))
            .unwrap()
            .unwrap();
        assert_eq!(
            token.check(Some(format!("Bearer {GOOD}").as_bytes())),
            Ok(())
        );
        assert_eq!(
            token.check(Some(format!("bearer  {GOOD} ").as_bytes())),
            Ok(())
        );
        assert_eq!(token.check(None), Err(Denied::Missing));
        assert_eq!(token.check(Some(GOOD.as_bytes())), Err(Denied::Missing));
        assert_eq!(token.check(Some(b"Basic abc")), Err(Denied::Missing));
        assert_eq!(
            token.check(Some(format!("Bearer {GOOD}0").as_bytes())),
            Err(Denied::Wrong)
        );
        assert_eq!(token.check(Some(b"Bearer \xff")), Err(Denied::Missing));
    }

    #[test]
    fn a_short_or_missing_token_is_refused_naming_where_it_came_from() {
        assert!(AdminToken::load(None, None).unwrap().is_none());
        let short = AdminToken::load(None, Some("short".into())).err().unwrap();
        assert!(
            short.contains("WIRESOCKET_ADMIN_TOKEN") && short.contains("32"),
            "{short}"
        );
        let missing = AdminToken::load(Some("/no/such/token"), None)
            .err()
            .unwrap();
        assert!(missing.contains("admin_token_file"), "{missing}");
    }
}
