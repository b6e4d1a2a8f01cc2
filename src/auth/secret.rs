//! Client secrets, stored only as slow salted hashes:
//! `pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>`.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;

/// Iterations for new hashes: about 0.1 s of one core, so guessing is slow and a login is not.
pub const ITERATIONS: u32 = 100_000;
const HASH_BYTES: usize = 32;

pub fn hash_secret(secret: &str, iterations: u32) -> String {
    let salt: [u8; 16] = rand::random();
    format!(
        "pbkdf2-sha256${iterations}${}${}",
        B64.encode(salt),
        B64.encode(derive(secret, &salt, iterations))
    )
}

/// Checks `secret` against a stored hash in constant time. A malformed hash never matches.
pub fn verify_secret(secret: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) = (
        iterations.parse::<u32>(),
        B64.decode(salt),
        B64.decode(hash),
    ) else {
        return false;
    };
    if hash.len() != HASH_BYTES || iterations == 0 {
        return false;
    }
    let derived = derive(secret, &salt, iterations);
    derived
        .iter()
        .zip(&hash)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Spends what checking `secret` against a new hash would, and matches nothing: for a
/// client id that is unknown (or disabled), so that its answer takes as long as a known
/// one's and timing does not tell which client ids exist.
pub fn verify_nothing(secret: &str) -> bool {
    std::hint::black_box(derive(secret, &[0; 16], ITERATIONS));
    false
}

/// Whether `stored` is a hash this module can check (for configuration errors).
pub fn is_valid_hash(stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    parts.len() == 4
        && parts[0] == "pbkdf2-sha256"
        && parts[1].parse::<u32>().is_ok_and(|i| i > 0)
        && B64.decode(parts[2]).is_ok()
        && B64.decode(parts[3]).is_ok_and(|h| h.len() == HASH_BYTES)
}

fn derive(secret: &str, salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    #[cfg(test)]
    ITERATIONS_RUN.with(|n| n.set(n.get() + iterations as u64));
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(secret.as_bytes(), salt, iterations, &mut out);
    out
}

#[cfg(test)]
thread_local! {
    /// PBKDF2 iterations this thread has run, so tests can tell what a check cost.
    pub static ITERATIONS_RUN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let stored = hash_secret("s3cret", 1000);
        assert!(is_valid_hash(&stored));
        assert!(verify_secret("s3cret", &stored));
        assert!(!verify_secret("s3cret!", &stored));
        assert!(!verify_secret("s3cret", "plain-text"));
        assert!(!verify_secret("s3cret", "pbkdf2-sha256$0$AAAA$AAAA"));
        assert_ne!(
            hash_secret("same", 1000),
            hash_secret("same", 1000),
            "salted"
        );
    }

    #[test]
    fn rfc_7914_pbkdf2_sha256_vector() {
        // RFC 7914 section 11: P="passwd", S="salt", c=1, dkLen=64 (first 32 bytes).
        let out = derive("passwd", b"salt", 1);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }
}
