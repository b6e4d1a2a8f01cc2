//! Runs the real-client interop suites (tests/js: npm `yjs`, `y-websocket`, `ws` in
//! interop.test.mjs; `@hocuspocus/provider` 2.x, 3.x and 4.x in hocuspocus.test.mjs; Tiptap
//! editors in headless Chromium pages, driven by `puppeteer-core`, in tiptap.test.mjs; the demo
//! page over https/wss in two Chromium pages in demo.test.mjs; the authorization callback with
//! the README's example receiver in authorize.test.mjs; all pinned
//! by the committed package-lock.json) against the binary cargo built, so that `cargo test` is
//! the one command for every test. Needs Node 20, npm and Debian's Chromium
//! (`apt-get install chromium`); fails (never skips) without them.

use std::path::Path;
use std::process::Command;

#[test]
fn yjs_and_y_websocket_clients_interoperate() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    // Packages the test files need; any missing (an older checkout's node_modules) means npm ci.
    let needed = [
        "y-websocket",
        "hocuspocus-provider-4",
        "@tiptap/core",
        "puppeteer-core",
    ];
    if needed
        .iter()
        .any(|package| !js.join("node_modules").join(package).exists())
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm is required for the interop tests (install Node 20 and npm)");
        assert!(status.success(), "npm ci failed in tests/js");
    }
    let output = Command::new("node")
        .args([
            "--test",
            "--test-force-exit",
            "--test-concurrency=1",
            "interop.test.mjs",
            "hocuspocus.test.mjs",
            "tiptap.test.mjs",
            "webhook.test.mjs",
            "demo.test.mjs",
            "authorize.test.mjs",
        ])
        .current_dir(&js)
        .env("WIRESOCKET_BIN", env!("CARGO_BIN_EXE_wiresocket"))
        .env("WIRESOCKET_CLUSTER_BIN", local_cluster_example())
        .output()
        .expect("node is required for the interop tests (install Node 20)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the JavaScript interop tests failed"
    );
    // node's runner prints "# pass N" (all files together); make sure every test ran:
    // 9 in interop.test.mjs, 15 in hocuspocus.test.mjs (5 for each provider release),
    // 1 in tiptap.test.mjs, 2 in webhook.test.mjs, 2 in demo.test.mjs, 2 in
    // authorize.test.mjs.
    let passed: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 31,
        "expected 31 passing interop tests, got {passed}"
    );
}

/// The `local_cluster` example, which `cargo test` builds next to the test binaries.
fn local_cluster_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/interop_js-HASH -> target/debug/examples/local_cluster
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/local_cluster");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test`, which builds the examples",
        path.display()
    );
    path
}
