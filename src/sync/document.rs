//! Document names, isolation keys and the owner shard of a document.

/// Close code for an invalid document name.
pub const NAME_BYTES_MAX: usize = 255;

/// Checks a (percent-decoded) document name: 1-255 of `[A-Za-z0-9_-]`, plus `/` and `.` when
/// `allow_path_chars`; never `::` (the isolation key separator).
pub fn validate_name(name: &str, allow_path_chars: bool) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err("document name must be 1 to 255 characters");
    }
    if name.contains("::") {
        return Err("document name must not contain '::'");
    }
    let ok = name.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || b == b'_'
            || b == b'-'
            || (allow_path_chars && (b == b'/' || b == b'.'))
    });
    if ok {
        Ok(())
    } else {
        Err("document name may only use A-Z a-z 0-9 _ -")
    }
}

/// `{tenant}::{app}::{document}`: documents of different apps never share state.
pub fn isolation_key(tenant: &str, app: &str, document: &str) -> String {
    format!("{tenant}::{app}::{document}")
}

/// An isolation key's app (`{tenant}::{app}`) and document name (ids and names contain no
/// `::`).
pub fn key_parts(key: &str) -> (&str, &str) {
    let app_end = key
        .match_indices("::")
        .nth(1)
        .map(|(at, _)| at)
        .expect("keys are tenant::app::document");
    (&key[..app_end], &key[app_end + 2..])
}

/// The shard that owns a document: a stable hash (FNV-1a, the same on every node and
/// every run) of its isolation key.
pub fn owner_shard(isolation_key: &str, shards: usize) -> usize {
    assert!(shards > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in isolation_key.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("my-doc_1", false).is_ok());
        assert!(validate_name(&"a".repeat(255), false).is_ok());
        assert!(validate_name(&"a".repeat(256), false).is_err());
        assert!(validate_name("", false).is_err());
        assert!(validate_name("a/b", false).is_err());
        assert!(validate_name("a/b.c", true).is_ok());
        assert!(validate_name("a::b", true).is_err());
        assert!(validate_name("é", false).is_err());
        assert!(validate_name("a b", false).is_err());
    }

    #[test]
    fn a_key_splits_back_into_its_app_and_document() {
        let key = isolation_key("acme", "web", "project/a:b");
        assert_eq!(key_parts(&key), ("acme::web", "project/a:b"));
    }

    #[test]
    fn owner_is_stable_and_spreads() {
        // Pinned values: the hash must never change between releases.
        assert_eq!(owner_shard("dev::dev::a", 7), 6);
        assert_eq!(owner_shard("dev::dev::a", 1000), 874);
        let owners: Vec<usize> = (0..64)
            .map(|i| owner_shard(&isolation_key("t", "a", &format!("doc-{i}")), 4))
            .collect();
        for shard in 0..4 {
            assert!(
                owners.iter().filter(|&&o| o == shard).count() >= 8,
                "{owners:?}"
            );
        }
        assert_eq!(
            owner_shard("dev::dev::doc", 7),
            owner_shard("dev::dev::doc", 7)
        );
    }
}
