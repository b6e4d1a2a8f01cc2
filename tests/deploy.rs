//! The deployment files under `deploy/` (PRODUCT.md 14): the example configuration validates
//! (`wiresocket check-config`), and the systemd unit stops no sooner than a drain can end.

mod common;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_example_configuration_validates() {
    let dir = common::TempDir::new("deploy");
    let token = dir.path().join("admin.token");
    std::fs::write(
        &token,
        "9f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100\n",
    )
    .unwrap();
    let example = std::fs::read_to_string(format!("{DEPLOY}/wiresocket.toml")).unwrap();
    // The files it names, as this machine has them; the registry this build has.
    let replacements = [
        (
            "/etc/wiresocket/fullchain.pem",
            format!("{ROOT}/tests/tls/server.pem"),
        ),
        (
            "/etc/wiresocket/privkey.pem",
            format!("{ROOT}/tests/tls/server.key"),
        ),
        ("/etc/wiresocket/admin.token", token.display().to_string()),
        (
            "/etc/wiresocket/acme-es256.pub.pem",
            format!("{ROOT}/tests/keys/es256_public.pem"),
        ),
        (
            "backend = \"foundationdb\"",
            "backend = \"embedded\"".to_owned(),
        ),
    ];
    let mut config = example.clone();
    for (from, to) in &replacements {
        assert!(config.contains(from), "the example no longer names {from}");
        config = config.replace(from, to);
    }
    let path = dir.path().join("wiresocket.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiresocket"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every section of the configuration is in the example.
    for section in [
        "[tls]",
        "[node]",
        "[registry]",
        "[http]",
        "[websocket]",
        "[documents]",
        "[hocuspocus]",
        "[auth]",
        "[rate_limits]",
        "[webhooks]",
        "[[tenants]]",
        "[[tenants.keys]]",
        "[[apps]]",
    ] {
        assert!(example.contains(section), "{section} missing");
    }
}

#[test]
fn the_unit_reloads_with_sighup_and_outwaits_a_drain() {
    let unit = std::fs::read_to_string(format!("{DEPLOY}/wiresocket.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_owned()
    };
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    let stop_s: u64 = value("TimeoutStopSec").parse().unwrap();
    let example = std::fs::read_to_string(format!("{DEPLOY}/wiresocket.toml")).unwrap();
    let drain_ms: u64 = example
        .lines()
        .find_map(|l| l.strip_prefix("drain_timeout_ms = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("drain_timeout_ms in the example");
    let close_ms: u64 = example
        .lines()
        .find_map(|l| l.strip_prefix("close_timeout_ms = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("close_timeout_ms in the example");
    // A drain waits up to drain_timeout_ms for sessions, for pins in flight and for the
    // webhooks' session.ended, and closing sessions twice close_timeout_ms.
    let drain_max_ms = 3 * drain_ms + 2 * close_ms;
    assert!(
        stop_s * 1000 > drain_max_ms,
        "TimeoutStopSec {stop_s} s <= the longest drain, {drain_max_ms} ms"
    );
    assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
}
