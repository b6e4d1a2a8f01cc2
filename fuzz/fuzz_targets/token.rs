//! Token verification (header, unverified claims, key choice, claims) on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;

fn directory() -> &'static Directory {
    static D: OnceLock<Directory> = OnceLock::new();
    D.get_or_init(|| Directory::from_config(&Config::default()).expect("development directory"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = directory().verifier.verify(token);
        let _ = serde_json::from_str::<wiresocket::auth::claims::RawClaims>(token);
    }
});
