//! Several wiresocket nodes in one process over one embedded registry: try pinning, 4009
//! redirects and discovery on one machine without FoundationDB.
//!
//!     cargo run --example local_cluster -- 2
//!
//! Prints one `node ID listening on ADDR` line per node; runs until interrupted.

use std::sync::Arc;
use wiresocket::config::Config;
use wiresocket::registry::embedded::EmbeddedRegistry;
use wiresocket::registry::Registry;

fn main() {
    let nodes: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::new(30_000));
    let started: Vec<wiresocket::server::Node> = (0..nodes)
        .map(|i| {
            let toml = format!(
                "listen = \"127.0.0.1:0\"\nallow_development_tenant = true\nshards = 1\n[node]\nid = \"node-{i}\"\nregion = \"local-{i}\"\n"
            );
            let config = Config::from_toml(&toml, "local_cluster").expect("valid config");
            wiresocket::server::start(config, registry.clone()).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            })
        })
        .collect();
    for node in &started {
        println!("node {} listening on {}", node.info.id, node.addr);
    }
    for node in started {
        if let Err(e) = node.join() {
            eprintln!("error: {e}");
        }
    }
}
