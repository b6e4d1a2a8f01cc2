//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): how an application's
//! receiver knows an event came from this server, unaltered and recently. The server signs
//! `"{id}.{timestamp}.{body}"` with HMAC-SHA256 under the app's secret; the receiver
//! recomputes it and refuses stale timestamps, so a replayed or altered body fails.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a secret is written with: `whsec_` and the key in standard base64.
const PREFIX: &str = "whsec_";
/// Standard Webhooks keys are 24 to 64 random bytes; fewer is guessable.
const KEY_BYTES_MIN: usize = 24;
const KEY_BYTES_MAX: usize = 64;

/// An app's webhook signing key. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Reads `whsec_<base64>` (surrounding whitespace ignored, as a secret file ends with a
    /// newline). The error says what is wrong, never the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(encoded) = text.trim().strip_prefix(PREFIX) else {
            return Err(format!("must start with {PREFIX:?}"));
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("must be {PREFIX:?} followed by standard base64"))?;
        if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
            return Err(format!(
                "its key must be {KEY_BYTES_MIN} to {KEY_BYTES_MAX} bytes, got {}",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }

    /// The `webhook-signature` header's value for an event: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its README and reference
    /// libraries use this secret, message and signature).
    #[test]
    fn signs_the_specification_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_to_id_time_or_body_changes_the_signature() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = secret.sign("msg_1", 100, b"{}");
        assert_ne!(base, secret.sign("msg_2", 100, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 101, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 100, b"{ }"));
        let other = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        assert_ne!(base, other.sign("msg_1", 100, b"{}"));
    }

    #[test]
    fn malformed_or_weak_secrets_are_refused_without_echoing_them() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_",
            &format!("whsec_{}", STANDARD.encode([1u8; 16])),
            &format!("whsec_{}", STANDARD.encode([1u8; 65])),
        ] {
            let error = WebhookSecret::parse(bad).unwrap_err();
            let key = bad.trim_start_matches(PREFIX);
            assert!(key.is_empty() || !error.contains(key), "{error}");
        }
        assert!(WebhookSecret::parse(&format!("  whsec_{}\n", STANDARD.encode([1u8; 24]))).is_ok());
        assert_eq!(
            format!(
                "{:?}",
                WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "WebhookSecret(..)"
        );
    }
}
