//! Token verification per algorithm (what every handshake pays once).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use wiresocket::auth::directory::Directory;
use wiresocket::config::Config;

fn config(alg: &str) -> String {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let key = match alg {
        "RS256" => format!(
            "public_key_pem = '''{}'''\nprivate_key_pem = '''{}'''",
            wiresocket::auth::DEV_PUBLIC_KEY_PEM,
            wiresocket::auth::DEV_PRIVATE_KEY_PEM
        ),
        "ES256" => format!("public_key_file = \"{keys}/es256_public.pem\"\nprivate_key_file = \"{keys}/es256_private.pem\""),
        "EdDSA" => format!("public_key_file = \"{keys}/ed25519_public.pem\"\nprivate_key_file = \"{keys}/ed25519_private.pem\""),
        _ => "secret = \"development-only-secret-of-32-bytes\"".to_owned(),
    };
    format!("[[tenants]]\nid = \"t\"\n[[tenants.keys]]\nalg = \"{alg}\"\n{key}\n[[apps]]\nid = \"a\"\ntenant = \"t\"\n")
}

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_token");
    for alg in ["RS256", "ES256", "EdDSA", "HS256"] {
        let directory =
            Directory::from_config(&Config::from_toml(&config(alg), "bench").unwrap()).unwrap();
        let token = directory
            .mint("a", "bench", 3600, serde_json::Value::Null)
            .unwrap();
        group.bench_function(alg, |b| {
            b.iter(|| directory.verifier.verify(black_box(&token)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
