//! `wiresocket`: the command line (clap). Every subcommand answers `--help`.

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use wiresocket::config::{Config, ConfigError};

/// A self-hostable, WireSocket-compatible sync server for Yjs documents.
#[derive(Parser)]
#[command(name = "wiresocket", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a node (with no configuration: a development node on 127.0.0.1:8080).
    ///
    /// Precedence: defaults, then the TOML file (--config), then WIRESOCKET_* environment
    /// variables, then these flags.
    Serve(ServeArgs),
    /// Prints an access token for a configured app (the development app without --config).
    Token(TokenArgs),
    /// Prints the client_secret_hash of an app's client secret, read from standard input.
    HashSecret,
    /// Checks a configuration file as `serve` would at start (fields, keys, secret files,
    /// webhook addresses), without starting; exits non-zero naming the first problem.
    CheckConfig {
        /// The TOML file.
        file: String,
    },
    /// Calls a running node's admin listener (PRODUCT.md 13) and prints its JSON answer.
    ///
    /// The token comes from WIRESOCKET_ADMIN_TOKEN, else --token-file, else the config's
    /// admin_token_file; the address from --url, else the config's admin_listen.
    Admin(AdminArgs),
}

#[derive(Args)]
struct AdminArgs {
    /// The admin listener, e.g. http://127.0.0.1:9091 (default: the config's admin_listen).
    #[arg(long)]
    url: Option<String>,
    /// File holding the admin token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<String>,
    /// The node's TOML configuration (for admin_listen and admin_token_file).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Lists the apps with their connection and document counts and whether revoked.
    Apps,
    /// Lists this node's live documents and their connection counts.
    Documents {
        /// Only this app's.
        #[arg(long, value_name = "ID")]
        app: Option<String>,
    },
    /// Lists the revocations in force.
    Revocations,
    /// Revokes an app: its sessions are closed with 4003, new ones refused.
    RevokeApp { id: String },
    /// Lifts an app's revocation.
    RestoreApp { id: String },
    /// Gives an app's OAuth client a new secret (printed once); its refresh tokens stop
    /// working.
    RotateSecret { id: String },
    /// Revokes a tenant and all its apps.
    RevokeTenant { id: String },
    /// Lifts a tenant's revocation.
    RestoreTenant { id: String },
    /// Revokes a tenant's key by its kid: tokens signed with it are refused, sessions they
    /// opened closed with 4003.
    RevokeKey { tenant: String, kid: String },
    /// Lifts a key's revocation.
    RestoreKey { tenant: String, kid: String },
    /// Closes one document's sessions on this node (4003).
    CloseDocument { app: String, name: String },
}

#[derive(Args)]
struct ServeArgs {
    /// Where to listen (default 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Executor threads, one per core (default: all cores).
    #[arg(long, value_name = "N")]
    shards: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Enables a plain WebSocket echo route at PATH (conformance runs).
    #[arg(long, value_name = "PATH")]
    echo_path: Option<String>,
    /// How long a document outlives its last client (default 10000).
    #[arg(long, value_name = "MS")]
    grace_period_ms: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// TOML configuration file naming the app and its tenant's private key.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// The app (needed when several are configured).
    #[arg(long, value_name = "ID")]
    app: Option<String>,
    /// editor or viewer.
    #[arg(long)]
    role: Option<String>,
    /// Lifetime in seconds (default 900).
    #[arg(long, value_name = "N", default_value_t = 900)]
    ttl_s: u64,
    /// Documents granted, comma-separated; `prefix*` patterns allowed.
    #[arg(long, value_name = "a,b-*")]
    docs: Option<String>,
    /// The user the token names (`sub`), as an app's authorization callback sees it.
    #[arg(long, value_name = "ID", default_value = "wiresocket-cli")]
    sub: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_config(&args).map_err(|e| e.0).and_then(serve),
        Command::Token(args) => token(&args).map(|token| println!("{token}")),
        Command::HashSecret => hash_secret(),
        Command::CheckConfig { file } => check_config(&file),
        Command::Admin(args) => admin(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The file, or the defaults without one.
fn read_config(file: Option<&str>) -> Result<Config, ConfigError> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read config file {path}: {e}")))?;
            Config::from_toml(&text, path)
        }
        None => Ok(Config::default()),
    }
}

/// Defaults, then `--config FILE`, then the environment, then the other flags.
fn serve_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = read_config(args.config.as_deref())?;
    config.apply_env(std::env::vars())?;
    let flags = [
        ("listen", &args.listen),
        ("shards", &args.shards),
        ("echo-path", &args.echo_path),
        ("grace-period-ms", &args.grace_period_ms),
    ];
    for (name, value) in flags {
        if let Some(value) = value {
            config.set(name, value, &format!("--{name}"))?;
        }
    }
    Ok(config)
}

fn check_config(file: &str) -> Result<(), String> {
    let mut config = read_config(Some(file)).map_err(|e| e.0)?;
    config.apply_env(std::env::vars()).map_err(|e| e.0)?;
    wiresocket::server::check(&config).map_err(|e| e.0)?;
    println!("{file}: ok");
    Ok(())
}

fn admin(args: &AdminArgs) -> Result<(), String> {
    let config = read_config(args.config.as_deref()).map_err(|e| e.0)?;
    let base = match (&args.url, &config.admin_listen) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(listen)) => format!("http://{listen}"),
        (None, None) => {
            return Err("say where the admin listener is: --url http://HOST:PORT, or --config FILE with admin_listen".into())
        }
    };
    let token = match std::env::var("WIRESOCKET_ADMIN_TOKEN") {
        Ok(token) => token,
        Err(_) => {
            let file = args
                .token_file
                .as_ref()
                .or(config.admin_token_file.as_ref())
                .ok_or(
                    "no admin token: set WIRESOCKET_ADMIN_TOKEN, --token-file or admin_token_file",
                )?;
            std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
        }
    };
    let segment = wiresocket::http::request::percent_encode;
    let (method, path) = match &args.action {
        AdminAction::Apps => ("GET", "/admin/apps".to_owned()),
        AdminAction::Documents { app: None } => ("GET", "/admin/documents".to_owned()),
        AdminAction::Documents { app: Some(app) } => {
            ("GET", format!("/admin/documents?app={}", segment(app)))
        }
        AdminAction::Revocations => ("GET", "/admin/revocations".to_owned()),
        AdminAction::RevokeApp { id } => ("POST", format!("/admin/apps/{}/revoke", segment(id))),
        AdminAction::RestoreApp { id } => ("POST", format!("/admin/apps/{}/restore", segment(id))),
        AdminAction::RotateSecret { id } => {
            ("POST", format!("/admin/apps/{}/rotate-secret", segment(id)))
        }
        AdminAction::RevokeTenant { id } => {
            ("POST", format!("/admin/tenants/{}/revoke", segment(id)))
        }
        AdminAction::RestoreTenant { id } => {
            ("POST", format!("/admin/tenants/{}/restore", segment(id)))
        }
        AdminAction::RevokeKey { tenant, kid } => (
            "POST",
            format!("/admin/keys/{}/{}/revoke", segment(tenant), segment(kid)),
        ),
        AdminAction::RestoreKey { tenant, kid } => (
            "POST",
            format!("/admin/keys/{}/{}/restore", segment(tenant), segment(kid)),
        ),
        AdminAction::CloseDocument { app, name } => (
            "POST",
            format!("/admin/documents/{}/{}/close", segment(app), segment(name)),
        ),
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .build()
        .new_agent();
    let url = format!("{base}{path}");
    let loopback = ["http://127.", "http://localhost", "http://[::1]"];
    if base.starts_with("http://") && !loopback.iter().any(|p| base.starts_with(p)) {
        eprintln!(
            "warning: the admin token goes over plain http to {base}: reach a remote node's admin listener through an SSH tunnel or a private network"
        );
    }
    let authorization = format!("Bearer {}", token.trim());
    let answer = match method {
        "GET" => agent
            .get(&url)
            .header("authorization", &authorization)
            .call(),
        _ => agent
            .post(&url)
            .header("authorization", &authorization)
            .send_empty(),
    };
    let mut answer = answer.map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    let shown = serde_json::from_str::<serde_json::Value>(&body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(body);
    if (200..300).contains(&status) {
        println!("{shown}");
        Ok(())
    } else {
        Err(format!("HTTP {status}: {shown}"))
    }
}

fn hash_secret() -> Result<(), String> {
    let mut secret = String::new();
    if std::io::stdin().read_line(&mut secret).is_err() || secret.trim().is_empty() {
        return Err("write the client secret on standard input".into());
    }
    let secret = secret.trim_end_matches(['\r', '\n']);
    let hash = wiresocket::auth::secret::hash_secret(secret, wiresocket::auth::secret::ITERATIONS);
    println!("{hash}");
    Ok(())
}

/// `wiresocket token`: signs an access token with the app's tenant key.
fn token(args: &TokenArgs) -> Result<String, String> {
    let mut config = read_config(args.config.as_deref()).map_err(|e| e.0)?;
    config.apply_env(std::env::vars()).map_err(|e| e.0)?;
    config.validate().map_err(|e| e.0)?;
    let directory =
        wiresocket::auth::directory::Directory::from_config(&config).map_err(|e| e.0)?;
    let app = match &args.app {
        Some(app) => app.clone(),
        None if directory.apps.len() == 1 => {
            directory.apps.keys().next().cloned().unwrap_or_default()
        }
        None => return Err("several apps are configured: choose one with --app ID".into()),
    };
    if args.ttl_s > config.auth.token_lifetime_max_s {
        return Err(format!(
            "--ttl-s {}: servers refuse tokens valid longer than auth.token_lifetime_max_s ({} s)",
            args.ttl_s, config.auth.token_lifetime_max_s
        ));
    }
    let mut extra = serde_json::Map::new();
    if let Some(role) = &args.role {
        extra.insert("role".into(), role.clone().into());
    }
    if let Some(docs) = &args.docs {
        let docs: Vec<String> = docs.split(',').map(str::to_owned).collect();
        extra.insert("docs".into(), docs.into());
    }
    directory.mint(&app, &args.sub, args.ttl_s, extra.into())
}

/// SIGTERM and SIGINT drain the node (PRODUCT.md 8): no new upgrades, sessions closed
/// with 1012 after `node.drain_timeout_ms`, pins and counts released, exit 0. SIGHUP reloads
/// the configuration file (PRODUCT.md 13).
fn handle_signals() {
    extern "C" fn on_drain(_: libc::c_int) {
        wiresocket::server::request_drain();
    }
    extern "C" fn on_reload(_: libc::c_int) {
        wiresocket::server::request_reload();
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_drain as *const () as libc::sighandler_t) };
    }
    // SAFETY: likewise (one atomic add).
    unsafe { libc::signal(libc::SIGHUP, on_reload as *const () as libc::sighandler_t) };
}

fn serve(config: Config) -> Result<(), String> {
    handle_signals();
    // Started with no configuration: a newcomer, told what to do next.
    let newcomer = config.config_file.is_none();
    wiresocket::server::run(config, |node| {
        // Scripts and tests read the first line to learn the port, and may stop reading:
        // one write, and a closed stdout is no error.
        // The admin listener's address too (`admin_listen` may ask for port 0).
        let admin = node
            .admin_addr
            .map_or(String::new(), |a| format!(", admin on {a}"));
        let mut said = format!(
            "wiresocket listening on {} ({} shards){admin}\n",
            node.addr, node.shards
        );
        if newcomer {
            let program = std::env::args().next().unwrap_or_else(|| "wiresocket".into());
            said.push_str(&format!(
                "  try it: open http://{}/demo in two browser windows\n  a token for your own client: {program} token\n",
                node.addr
            ));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = std::io::Write::write_all(&mut stdout, said.as_bytes());
        let _ = std::io::Write::flush(&mut stdout);
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
    })
    .map_err(|e| e.0)
}
