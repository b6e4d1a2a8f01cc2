//! The command line: every subcommand answers `--help`, and `check-config` judges a file as
//! a start would, without starting.

mod common;

use std::process::{Command, Output};

fn wiresocket(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_subcommand_answers_help() {
    for command in ["serve", "token", "hash-secret", "check-config", "admin"] {
        let out = wiresocket(&[command, "--help"]);
        assert!(
            out.status.success(),
            "{command} --help: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("Usage: wiresocket"), "{command}");
    }
    let out = wiresocket(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for command in ["serve", "token", "hash-secret", "check-config", "admin"] {
        assert!(help.contains(command), "{command} not listed: {help}");
    }
    let out = wiresocket(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("frobnicate"));
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_first_problem_of_a_bad_one() {
    let dir = common::TempDir::new("check-config");
    let file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = file(
        "good.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n{}\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\n",
            common::acme_eddsa_tenant()
        ),
    );
    let out = wiresocket(&["check-config", &good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"));
    let cases = [
        ("unknown.toml", "[documents]\ngrace = 1\n".to_owned(), "grace"),
        (
            "key.toml",
            "listen = \"127.0.0.1:0\"\n[[tenants]]\nid = \"acme\"\n[[tenants.keys]]\nalg = \"EdDSA\"\npublic_key_file = \"/nonexistent.pem\"\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\n".to_owned(),
            "/nonexistent.pem",
        ),
        (
            "webhook.toml",
            format!(
                "listen = \"127.0.0.1:0\"\n{}\n[[apps]]\nid = \"web\"\ntenant = \"acme\"\nwebhook_url = \"http://169.254.169.254/\"\nwebhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nwebhook_allow_private = true\n",
                common::acme_eddsa_tenant()
            ),
            "apps.web.webhook_url",
        ),
        ("fdb.toml", "allow_development_tenant = true\n[registry]\nbackend = \"foundationdb\"\n".to_owned(), "--features fdb"),
        (
            "tls.toml",
            format!(
                "allow_development_tenant = true\n[tls]\ncert_file = \"{dir}/server.pem\"\nkey_file = \"{dir}/server2.key\"\n",
                dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls")
            ),
            "tls.key_file",
        ),
    ];
    for (name, body, expected) in cases {
        let path = file(name, &body);
        let out = wiresocket(&["check-config", &path]);
        assert!(!out.status.success(), "{name} passed");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{name}: {expected:?} not in {stderr}"
        );
    }
    let out = wiresocket(&["check-config", "/no/such/file.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read config file"));
}
