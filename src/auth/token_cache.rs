//! Verified tokens remembered until they expire, so that a client that reconnects (every
//! client of a restarted node at once) is admitted without its signature being verified again
//! (RS256: 171 µs, on the shard's blocking thread). Keyed by the SHA-256 of the whole token,
//! so only the same bytes find an entry; bounded; only successes are kept. Entries end at the
//! token's `exp` itself, without the leeway verification allows.

use super::verify::Identity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub struct TokenCache {
    entries: HashMap<[u8; 32], Identity>,
    entries_max: usize,
}

impl TokenCache {
    pub fn new(entries_max: usize) -> Self {
        assert!(entries_max > 0);
        TokenCache {
            entries: HashMap::new(),
            entries_max,
        }
    }

    /// The identity `token` was verified to, if it was and has not expired at `now_s`.
    pub fn get(&mut self, token: &str, now_s: u64) -> Option<Identity> {
        let key = key(token);
        match self.entries.get(&key) {
            Some(identity) if now_s < identity.expires_at_s => Some(identity.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token. When full, expired entries go first, then an arbitrary one.
    pub fn insert(&mut self, token: &str, identity: Identity, now_s: u64) {
        if now_s >= identity.expires_at_s {
            return;
        }
        if self.entries.len() >= self.entries_max {
            self.entries.retain(|_, i| now_s < i.expires_at_s);
        }
        if self.entries.len() >= self.entries_max {
            let any = *self.entries.keys().next().expect("full, so not empty");
            self.entries.remove(&any);
        }
        self.entries.insert(key(token), identity);
        debug_assert!(self.entries.len() <= self.entries_max);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::Directory;
    use crate::config::Config;

    fn verified(ttl_s: u64) -> (String, Identity) {
        let directory = Directory::from_config(&Config::default()).unwrap();
        let token = directory
            .mint("dev", "cache-test", ttl_s, serde_json::Value::Null)
            .unwrap();
        let identity = directory.verifier.verify(&token).unwrap();
        (token, identity)
    }

    #[test]
    fn a_verified_token_is_found_until_its_exp_and_only_by_its_own_bytes() {
        let (token, identity) = verified(600);
        let exp = identity.expires_at_s;
        let mut cache = TokenCache::new(4);
        assert!(cache.get(&token, exp - 600).is_none());
        cache.insert(&token, identity, exp - 600);
        let hit = cache.get(&token, exp - 1).expect("cached");
        assert_eq!(hit.app.id, "dev");
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(cache.get(&tampered, exp - 1).is_none());
        assert!(cache.get(&token, exp).is_none(), "expired at exp");
        assert!(cache.is_empty(), "and forgotten");
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_expired_entries_go_first() {
        let mut cache = TokenCache::new(2);
        let (a, ia) = verified(600);
        let (b, ib) = verified(600);
        let (c, ic) = verified(600);
        let now = ia.expires_at_s - 600;
        // `a` as if about to expire.
        let mut ia_short = ia.clone();
        ia_short.expires_at_s = now + 10;
        cache.insert(&a, ia_short, now);
        cache.insert(&b, ib, now);
        cache.insert(&c, ic, now + 10);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&a, now + 10).is_none(), "the expired one went");
        assert!(cache.get(&b, now + 10).is_some() && cache.get(&c, now + 10).is_some());
        let (d, id) = verified(600);
        cache.insert(&d, id, now + 10);
        assert_eq!(cache.len(), 2, "full of live entries: one made room");
        assert!(cache.get(&d, now + 10).is_some());
    }
}
