//! `wiresocket serve`: the command line.

use std::process::ExitCode;
use wiresocket::config::{Config, ConfigError};

const USAGE: &str = "\
wiresocket: a self-hostable, WireSocket-compatible sync server for Yjs documents

USAGE:
    wiresocket serve [OPTIONS]

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

/// Defaults, then `--config FILE`, then the environment, then the other flags.
fn serve_config(args: &[String]) -> Result<Config, ConfigError> {
    let mut flags = Vec::new();
    let mut file = None;
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
        if name == "config" {
            file = Some(value);
        } else {
            flags.push((name, value));
        }
    }
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

fn serve(config: Config) -> ExitCode {
    let result = wiresocket::server::run(config, |addr, shards| {
        // Scripts and tests read this line to learn the port.
        println!("wiresocket listening on {addr} ({shards} shards)");
        wiresocket::log::info("listening", &[("addr", &addr), ("shards", &shards)]);
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
