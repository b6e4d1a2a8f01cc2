//! Builds the demo page's script (`demo/`, served at `GET /demo` with the development
//! tenant) with esbuild, from the npm packages `demo/package-lock.json` pins: `npm ci` the
//! first time (with `--ignore-scripts`), then `node demo/build.mjs`. Without Node and npm, or
//! with `WIRESOCKET_NO_DEMO` set (offline builds), the node is built without it and `/demo`
//! says how to get it. The bundle is never committed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for input in [
        "demo/demo.page.mjs",
        "demo/build.mjs",
        "demo/package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rustc-check-cfg=cfg(demo_bundle)");
    println!("cargo:rerun-if-env-changed=WIRESOCKET_NO_DEMO");
    if std::env::var_os("WIRESOCKET_NO_DEMO").is_some() {
        // Offline or vendored builds: no npm, no demo.
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("demo.js");
    let demo = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("demo");
    match build(&demo, &out) {
        Ok(()) => println!("cargo:rustc-cfg=demo_bundle"),
        Err(why) => println!(
            "cargo:warning=the demo page (GET /demo) is not built: {why}; install Node.js and npm, then build again"
        ),
    }
}

fn build(demo: &Path, out: &Path) -> Result<(), String> {
    let installed = demo.join("node_modules/.package-lock.json");
    let lock = demo.join("package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&installed) < modified(&lock) {
        run(Command::new("npm")
            // esbuild's install script is not needed (its binary comes as a package).
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(demo))?;
    }
    run(Command::new("node")
        .arg("build.mjs")
        .arg(out)
        .current_dir(demo))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("{shown} did not run ({e})"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
