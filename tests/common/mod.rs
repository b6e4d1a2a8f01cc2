//! Test harness: runs the real `wiresocket` binary and talks to it with independent clients
//! (tungstenite for WebSocket, yrs as the Yjs peer).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod hocuspocus;
pub mod receiver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The admin listener's address, as the first line gave it (with `admin_listen`).
    pub admin_addr: Option<String>,
    _config: Option<tempfile_path::TempPath>,
    /// The server's stderr, shown when the test fails.
    log: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A directory of its own under the system's temporary one, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("wiresocket-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts a server on a free port with `--shards 2` and the given TOML config.
    pub fn start(config_toml: &str) -> Server {
        Self::start_with(config_toml, &["--shards", "2"])
    }

    pub fn start_with(config_toml: &str, extra: &[&str]) -> Server {
        Self::spawn(config_toml, extra, None)
    }

    /// Starts a server whose process may open at most `open_files` files.
    pub fn start_with_open_files(config_toml: &str, open_files: u64) -> Server {
        Self::spawn(config_toml, &["--shards", "2"], Some(open_files))
    }

    fn spawn(config_toml: &str, extra: &[&str], open_files: Option<u64>) -> Server {
        let path = std::env::temp_dir().join(format!(
            "wiresocket-test-{}-{}.toml",
            std::process::id(),
            CONFIG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // Tests open many connections from one address: lift the per-IP budgets unless the
        // test is about them.
        let config_toml = if config_toml.contains("[rate_limits]") {
            config_toml.to_owned()
        } else {
            format!("{config_toml}\n[rate_limits]\nhandshakes_per_minute = 1000000\nusage_per_minute = 1000000\ntoken_requests_per_minute = 1000000\n")
        };
        // A config file without tenants must opt in to the development tenant.
        let config_toml = if config_toml.contains("[[tenants]]") {
            config_toml
        } else {
            format!("allow_development_tenant = true\n{config_toml}")
        };
        std::fs::write(&path, config_toml).unwrap();
        let log_path = path.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wiresocket"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start wiresocket");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        let admin_addr = line
            .split_once(", admin on ")
            .map(|(_, admin)| admin.trim().to_owned());
        Server {
            child,
            addr,
            admin_addr,
            _config: Some(tempfile_path::TempPath(path)),
            log: tempfile_path::TempPath(log_path),
        }
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    /// The configuration file the server was started with (a test may rewrite it and send
    /// SIGHUP).
    pub fn config_path(&self) -> &std::path::Path {
        &self._config.as_ref().expect("started with a file").0
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP and waits until the log holds one more `reloaded` or `reload_refused`
    /// line than before; that line.
    pub fn reload(&self) -> String {
        let outcomes = |log: &str| {
            log.lines()
                .filter(|l| l.contains("event=reloaded") || l.contains("event=reload_refused"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let before = outcomes(&self.log()).len();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) };
        let mut line = String::new();
        self.wait_for("the reload", Duration::from_secs(10), |s| {
            let now = outcomes(&s.log());
            now.get(before).map(|l| line.clone_from(l)).is_some()
        });
        line
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        wiresocket::server::stats::resident_bytes(&self.pid().to_string()).unwrap() / 1024
    }

    /// A raw HTTP exchange: sends `request`, returns the whole response.
    pub fn http(&self, request: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends `request` and returns the response head only (for upgrades, which stay open).
    pub fn http_head(&self, request: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            out.push(byte[0]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn get(&self, path: &str) -> String {
        self.http(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }

    /// Sum of a metric over all shards, and the per-shard values.
    pub fn metric(&self, name: &str) -> (u64, Vec<u64>) {
        let text = self.get("/metrics");
        let per_shard: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("wiresocket_{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        (per_shard.iter().sum(), per_shard)
    }

    /// Waits until `f` holds, polling; panics with `what` after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Server) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `wiresocket serve` with `config_toml` (unless empty) and `args`, expecting it to
/// refuse to start; returns what it printed on stderr.
pub fn refused_start(config_toml: &str, args: &[&str]) -> String {
    let path = std::env::temp_dir().join(format!(
        "wiresocket-test-{}-{}.toml",
        std::process::id(),
        CONFIG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut command = Command::new(env!("CARGO_BIN_EXE_wiresocket"));
    command.args(["serve", "--shards", "1"]).args(args);
    // A port of its own unless the test names one: a refusal that comes after the listener
    // is bound must not turn into "address in use" because a server runs on the default
    // port (the README's first command, say).
    let listens = args.contains(&"--listen")
        || config_toml
            .lines()
            .any(|l| l.trim_start().starts_with("listen"));
    if !listens {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    let _config = (!config_toml.is_empty()).then(|| {
        std::fs::write(&path, config_toml).unwrap();
        command.arg("--config").arg(&path);
        tempfile_path::TempPath(path)
    });
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wiresocket");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "exit status {status}: {stderr}");
    stderr
}

static CONFIG_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log.0).unwrap_or_default();
            eprintln!("--- server log ---\n{log}--- end of server log ---");
        }
    }
}

/// The status code of a raw HTTP response.
pub fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A client socket: plain TCP, or TLS over it (`connect_tls`).
pub trait Socket: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Socket for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

pub type Ws<S = TcpStream> = WebSocket<S>;

/// The test CA (`tests/tls`) as the only root, TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    #[allow(deprecated)] // ring, as the server (no post-quantum key exchange)
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// A TLS connection to `addr` for `localhost`, its handshake done.
pub fn tls_connect(addr: &str, config: std::sync::Arc<rustls::ClientConfig>) -> TlsStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// [`connect_raw`] over TLS (`wss://`), trusting the test CA.
pub fn connect_tls(addr: &str, path: &str) -> Ws<TlsStream> {
    let tls = tls_connect(addr, tls_client_config());
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(None)
        .max_message_size(None);
    let (ws, response) =
        tungstenite::client::client_with_config(format!("ws://{addr}{path}"), tls, Some(config))
            .expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// A development token (the server runs the development tenant when no tenant is
/// configured), with extra claims.
pub fn dev_token(extra: serde_json::Value) -> String {
    let directory =
        wiresocket::auth::directory::Directory::from_config(&wiresocket::config::Config::default())
            .unwrap();
    directory.mint("dev", "test", 600, extra).unwrap()
}

/// An editor token for the development app, minted once per test process.
pub fn editor_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| dev_token(serde_json::Value::Null))
}

/// Connects with a development token in the query.
pub fn connect(addr: &str, path: &str) -> Ws {
    let sep = if path.contains('?') { '&' } else { '?' };
    connect_raw(addr, &format!("{path}{sep}token={}", editor_token()))
}

/// Connects to exactly `path_and_query`.
pub fn connect_raw(addr: &str, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // No frame or message limit on the test side: a joining client may get a whole large
    // document in one sync step 2 frame (tungstenite refuses frames over 16 MiB by default).
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(None)
        .max_message_size(None);
    let (ws, response) =
        tungstenite::client::client_with_config(format!("ws://{addr}{path}"), stream, Some(config))
            .expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text frame (a side message) within `timeout`, binary ones skipped; `None` if
/// none came.
pub fn next_text(ws: &mut Ws, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
    None
}

/// Reads until the server closes; returns the close code and reason.
pub fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

pub fn close_code(code: u16) -> CloseCode {
    CloseCode::from(code)
}

/// Whether a read failed only because its timeout passed.
pub fn read_timed_out(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// lib0 varint.
pub fn var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn sync_message(step: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0, step];
    var(&mut m, body.len() as u64);
    m.extend_from_slice(body);
    m
}

/// A Yjs peer speaking y-websocket over tungstenite, with its own yrs document.
pub struct YClient<S: Socket = TcpStream> {
    pub ws: Ws<S>,
    pub doc: yrs::Doc,
}

impl YClient {
    /// Connects and completes the sync handshake (answers the server's step 1, sends ours).
    pub fn connect(addr: &str, doc_name: &str, client_id: u64) -> YClient {
        Self::from_ws(connect(addr, &format!("/{doc_name}")), client_id)
    }
}

impl<S: Socket> YClient<S> {
    /// Starts the sync handshake on an open connection.
    pub fn from_ws(ws: Ws<S>, client_id: u64) -> YClient<S> {
        // Browsers use 32-bit client ids.
        let doc = yrs::Doc::with_client_id(client_id & 0xFFFF_FFFF);
        let mut c = YClient { ws, doc };
        let sv = c.doc.transact().state_vector().encode_v1();
        c.send(sync_message(0, &sv));
        c
    }

    /// Continues on a new connection with the same document (as y-websocket does after a
    /// close): the state vectors are exchanged again and each side sends what the other lacks.
    pub fn resume(&mut self, ws: Ws<S>) {
        self.ws = ws;
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(sync_message(0, &sv));
    }

    pub fn send(&mut self, message: Vec<u8>) {
        self.ws.send(Message::Binary(message.into())).unwrap();
    }

    pub fn text(&self) -> String {
        let t = self.doc.get_or_insert_text("t");
        t.get_string(&self.doc.transact())
    }

    /// Inserts locally and sends the update.
    pub fn insert(&mut self, index: u32, s: &str) {
        let update = self.insert_offline(index, s);
        self.send(sync_message(2, &update));
    }

    /// Inserts locally only (the client is between connections); returns the update.
    pub fn insert_offline(&mut self, index: u32, s: &str) -> Vec<u8> {
        let t = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        t.insert(&mut txn, index, s);
        txn.encode_update_v1()
    }

    /// Handles one incoming message; returns false on close.
    pub fn pump_one(&mut self) -> bool {
        match self.ws.read() {
            Ok(Message::Binary(b)) => {
                self.handle(&b);
                true
            }
            Ok(Message::Close(_)) | Err(_) => false,
            Ok(_) => true,
        }
    }

    pub fn handle(&mut self, msg: &[u8]) {
        if msg[0] != 0 {
            return; // awareness and others
        }
        let step = msg[1];
        let mut pos = 2;
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let b = msg[pos];
            pos += 1;
            len |= ((b & 0x7F) as u64) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = &msg[pos..pos + len as usize];
        match step {
            0 => {
                let sv = yrs::StateVector::decode_v1(body).unwrap();
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(sync_message(1, &diff));
            }
            _ => {
                let u = yrs::Update::decode_v1(body).unwrap();
                self.doc.transact_mut().apply_update(u).unwrap();
            }
        }
    }

    /// Pumps messages until `f(self)` holds or the timeout passes.
    pub fn pump_until(&mut self, timeout: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let stream = self.ws.get_ref().tcp();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        while !f(self) {
            if Instant::now() >= deadline {
                return false;
            }
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.handle(&b),
                Ok(_) => {}
                Err(e) if read_timed_out(&e) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
        true
    }
}

/// The tenants, keys and apps of a configuration, to mint tokens for it.
pub fn directory(config_toml: &str) -> wiresocket::auth::directory::Directory {
    wiresocket::auth::directory::Directory::from_config(
        &wiresocket::config::Config::from_toml(config_toml, "test").unwrap(),
    )
    .unwrap()
}

/// The tenant `acme` with the EdDSA key pair in `tests/keys`, as configuration (its apps
/// follow it).
pub fn acme_eddsa_tenant() -> String {
    eddsa_tenant("acme")
}

/// A tenant `id` with the EdDSA key pair in `tests/keys`, as configuration.
pub fn eddsa_tenant(id: &str) -> String {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    format!(
        r#"
[[tenants]]
id = "{id}"
[[tenants.keys]]
alg = "EdDSA"
public_key_file = "{keys}/ed25519_public.pem"
private_key_file = "{keys}/ed25519_private.pem"
"#
    )
}
