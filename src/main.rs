//! `wiresocket serve`: the command line.

use std::process::ExitCode;
use wiresocket::config::{Config, ConfigError};

const USAGE: &str = "\
wiresocket: a self-hostable, WireSocket-compatible sync server for Yjs documents

USAGE:
    wiresocket serve [OPTIONS]
    wiresocket token [--config FILE] [--app ID] [--role editor|viewer] [--ttl-s N] [--docs a,b-*]
        prints an access token for a configured app (the development app without --config)
    wiresocket hash-secret < secret.txt
        prints the client_secret_hash for an app's client secret (read from standard input)

OPTIONS (override WIRESOCKET_* environment variables, which override the config file):
    --listen ADDR:PORT     where to listen (default 127.0.0.1:8080; port 0 picks a free one)
    --shards N             executor threads, one per core (default: all cores)
    --config FILE          TOML configuration file
    --echo-path PATH       enable a plain WebSocket echo route at PATH (conformance runs)
    --grace-period-ms MS   how long a document outlives its last client (default 10000)
    -h, --help             print this help
    -V, --version          print the version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => match serve_config(&args[1..]) {
            Ok(config) => serve(config),
            Err(e) => fail(&e.0),
        },
        Some("token") => match token(&args[1..]) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some("hash-secret") => {
            let mut secret = String::new();
            if std::io::stdin().read_line(&mut secret).is_err() || secret.trim().is_empty() {
                return fail("write the client secret on standard input");
            }
            println!(
                "{}",
                wiresocket::auth::secret::hash_secret(
                    secret.trim_end_matches(['\r', '\n']),
                    wiresocket::auth::secret::ITERATIONS
                )
            );
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("wiresocket {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => fail(&format!(
            "unknown command {other:?}; run `wiresocket --help`"
        )),
        None => fail(
            "missing command; run `wiresocket serve` to start a server, or `wiresocket --help`",
        ),
    }
}

/// `--name value` and `--name=value` pairs.
fn flags(args: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(ConfigError(format!(
                "unexpected argument {arg:?}; run `wiresocket --help`"
            )));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?;
                (name.to_owned(), v.clone())
            }
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Defaults, then `--config FILE`, then the environment, then the other flags.
fn serve_config(args: &[String]) -> Result<Config, ConfigError> {
    let mut flags = flags(args)?;
    let file = take_flag(&mut flags, "config");
    let mut config = match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("cannot read config file {path}: {e}")))?;
            Config::from_toml(&text, &path)?
        }
        None => Config::default(),
    };
    config.apply_env(std::env::vars())?;
    for (name, value) in flags {
        config.set(&name, &value, &format!("--{name}"))?;
    }
    Ok(config)
}

fn take_flag(flags: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let i = flags.iter().position(|(n, _)| n == name)?;
    Some(flags.remove(i).1)
}

/// `wiresocket token`: signs an access token with the app's tenant key.
fn token(args: &[String]) -> Result<String, String> {
    let mut flags = flags(args).map_err(|e| e.0)?;
    let config = serve_config(
        &take_flag(&mut flags, "config").map_or_else(Vec::new, |f| vec!["--config".into(), f]),
    )
    .map_err(|e| e.0)?;
    config.validate().map_err(|e| e.0)?;
    let directory =
        wiresocket::auth::directory::Directory::from_config(&config).map_err(|e| e.0)?;
    let app = match take_flag(&mut flags, "app") {
        Some(app) => app,
        None if directory.apps.len() == 1 => {
            directory.apps.keys().next().cloned().unwrap_or_default()
        }
        None => return Err("several apps are configured: choose one with --app ID".into()),
    };
    let ttl_s = match take_flag(&mut flags, "ttl-s") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--ttl-s: expected seconds, got {v:?}"))?,
        None => 900,
    };
    if ttl_s > config.auth.token_lifetime_max_s {
        return Err(format!(
            "--ttl-s {ttl_s}: servers refuse tokens valid longer than auth.token_lifetime_max_s ({} s)",
            config.auth.token_lifetime_max_s
        ));
    }
    let mut extra = serde_json::Map::new();
    if let Some(role) = take_flag(&mut flags, "role") {
        extra.insert("role".into(), role.into());
    }
    if let Some(docs) = take_flag(&mut flags, "docs") {
        extra.insert(
            "docs".into(),
            docs.split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into(),
        );
    }
    if let Some((name, _)) = flags.first() {
        return Err(format!("unknown option --{name}; run `wiresocket --help`"));
    }
    directory.mint(&app, "wiresocket-cli", ttl_s, extra.into())
}

/// SIGTERM and SIGINT drain the node (PRODUCT.md 8): no new upgrades, sessions closed
/// with 1012 after `node.drain_timeout_ms`, pins and counts released, exit 0.
fn drain_on_signals() {
    extern "C" fn on_signal(_: libc::c_int) {
        wiresocket::server::request_drain();
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn serve(config: Config) -> ExitCode {
    drain_on_signals();
    let result = wiresocket::server::run(config, |node| {
        // Scripts and tests read this line to learn the port.
        println!(
            "wiresocket listening on {} ({} shards)",
            node.addr, node.shards
        );
        wiresocket::log::info(
            "listening",
            &[
                ("addr", &node.addr),
                ("shards", &node.shards),
                ("node", &node.info.id),
                ("region", &node.info.region),
                ("url", &node.info.url),
                // Raise `ulimit -n` to hold more connections.
                ("connections_max_by_open_files", &node.connections_fd_max()),
                ("memory_budget_bytes", &node.memory_budget_bytes()),
            ],
        );
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.0),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
