//! `wiresocket-load`: drives any y-websocket server with real Yjs updates and reports what
//! the server delivered, how fast, at what CPU and memory cost, and whether every document
//! converged on every client.

mod arrival;
mod floor;
mod peer;
mod run;
mod server_stats;
mod stops;
mod ws_client;

use hdrhistogram::Histogram;
use peer::{Editing, Framing, Insert};
use run::{Control, Latencies, Phases, Plan, StormReport, ThreadReport, Window, WINDOWS};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
wiresocket-load: load generator for y-websocket servers

USAGE:
    wiresocket-load fanout --url URL [OPTIONS]
        D documents x K clients; every client sends updates at a fixed rate; reports
        deliveries, latency, server CPU and memory, and checks convergence
    wiresocket-load prepend --url URL [OPTIONS]
        the prepend stress: a fanout whose writers insert 1 KiB at the start of one
        document 500 times a second each, applying what they receive as it arrives (as
        --docs 1 --clients 4 --rate 500 --update-bytes 1024 --insert start --apply-live on,
        each of which can be changed); reports too the share of the other writers' updates
        each writer had when sending ended and after the drain (a writer missing one after
        the drain fails the run), and the server's RSS sampled every 100 ms
    wiresocket-load storm --url URL [OPTIONS]
        a fanout (spread) during which, after --warmup-s, --storm N more connections are
        opened as fast as the generator can, each to a new document of its own
        (PREFIX-storm-I), synced and left idle to the end; reports the fanout's latency for
        updates sent before, during and after the storm, and the storm's connections per
        second and failures (a live client dropped or a delivery lost fails the run)
    wiresocket-load capacity --url URL --connections N [OPTIONS]
        opens N idle, synced document connections and reports server memory per connection
    wiresocket-load floor [--floor-sends N] [--floor-sockets N] [--floor-group G] [--floor-gap-us U]
        what one loopback send of a 40-byte frame costs this machine's CPU: the least a
        delivery can cost a server that sends each one. Sent as a server of the run would:
        to one of --floor-sockets (default 8000) sockets, --floor-group (7) distinct ones at
        a time every --floor-gap-us (125); measured once with a send per delivery and once
        with each group in one io_uring submission. Then the relay floors: a relay that
        does nothing but wake, read each update with one recv and send it to the group's
        other sockets, once on epoll and once on glommio as a shard runs it (a task per
        socket on the sessions' queue): what sleeping between updates costs, and what the
        runtime adds. A run that sends measures the send floor and the relay floors first
        in its own shape (its connections, its K - 1, its mean time between updates) and
        prints the server's cost beside each (a relay floor that cannot be measured here,
        say without io_uring, is left out with a warning)

URL is ws://HOST:PORT/PATH (or wss://, with --ca FILE: the PEM CA the server's certificate
chains to) with {doc} where the document name goes, e.g.
    ws://127.0.0.1:8080/{doc}?token=JWT          wiresocket, the Node reference server
    wss://localhost:8443/{doc}?token=JWT         wiresocket with [tls] (--ca tests/tls/ca.pem)
    ws://127.0.0.1:8081/d/{doc}/ws/{doc}         y-sweet (with --create-docs)

OPTIONS (defaults are fanout's and storm's; prepend's where they differ):
    --docs D                 documents (default 1000; prepend 1)
    --clients K              clients per document (default 8; prepend 4)
    --rate R                 updates per second per client (default 1; prepend 500)
    --duration-s S           sending time (default 10)
    --update-bytes B         characters per edit (default 32; prepend 1024)
    --phases spread|burst    each client's first send: spread over one period by a
                             golden-ratio stride, so a document's clients do not send in the
                             same millisecond; burst: a document's clients all at once
                             (default spread)
    --insert end|start|random  where each edit goes in the client's array (default end;
                             prepend start); random is seeded per client, so runs repeat
    --framing y-websocket|hocuspocus  how clients speak: y-websocket (one document per
                             socket, named by the URL); hocuspocus (@hocuspocus/provider's:
                             each client a socket on /, its document and the URL's token=
                             in its messages) (default y-websocket)
    --apply-live [on|off]    every client applies each update it receives as it arrives
                             (as an editor does; costs generator CPU) rather than after the
                             run; without it a start or random position is relative to the
                             client's own edits only (default off; prepend on)
    --connections N          idle connections (capacity; documents = N / K)
    --hold-s S               keep connections open this long after measuring (default 0)
    --server-pid PID         the server process, for CPU seconds and RSS from /proc
    --threads T              generator threads (default 1)
    --sources S              spread connections over 127.0.0.1 ..= 127.0.0.S (default 1)
    --connect-concurrency C  handshakes in flight per thread (default 128)
    --create-docs URL        POST {\"docId\":NAME} here for every document first (y-sweet;
                             not for storm documents)
    --doc-prefix P           document names are P-0, P-1, ... (default load-PID)
    --label NAME             name of this run in the JSON line (default run)
    --floor-sends N          deliveries each floor is measured over, before a run that
                             sends (default 50000; 0: no floors)
    --probe-cpu N            a thread sleeping 1 ms at a time on CPU N (the server's),
                             and one on the generator's CPU if it is pinned to another,
                             report each time they woke over 2 ms late for a reason other
                             than the server or the generator (their CPU time in the gap
                             is taken out; the server's needs --server-pid): something
                             else held that core (the hypervisor, another process); the
                             run then also gives the latency of the updates sent in the
                             100 ms spans no such stop touched (default: no probe)
    --arrival-stamps         also time each delivery to the kernel's receive stamp
                             (SO_TIMESTAMPNS), taken on loopback as the server's send
                             leaves it: the server's part, without the generator's own
                             delay in reading (printed \"at arrival\" beside each latency)
    --json                   print one JSON line instead of the report

STORM OPTIONS:
    --warmup-s S             live traffic before the storm starts (default 2; below
                             --duration-s)
    --storm N                connections in the storm (default 5000)
    --storm-concurrency C    storm handshakes in flight, on the storm's own thread
                             (default 256)
    --storm-url URL          where storm connections go (default --url: the same token
                             for all, a reconnect storm)
    --storm-tokens FILE      one token a line: storm connection I uses line I (mod lines)
                             for {token} in --storm-url, which must then hold it. 1,000
                             development tokens (each `wiresocket token` signs a new one):
                               for i in $(seq 1000); do target/release/wiresocket token \\
                                 --config FILE --ttl-s 3600; done >tokens.txt
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fanout") => Options::parse(&args[1..]).and_then(|o| execute(o, Mode::Fanout)),
        Some("prepend") => Options::parse(&args[1..]).and_then(|o| execute(o, Mode::Prepend)),
        Some("storm") => Options::parse(&args[1..]).and_then(|o| execute(o, Mode::Storm)),
        Some("capacity") => Options::parse(&args[1..]).and_then(|o| execute(o, Mode::Capacity)),
        Some("floor") => Options::parse(&args[1..]).and_then(print_floor),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("unknown command\n\n{USAGE}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wiresocket-load: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fanout,
    Prepend,
    Storm,
    Capacity,
}

/// What a mode runs with when an option is not given.
struct Defaults {
    docs: usize,
    clients: usize,
    rate: f64,
    update_bytes: usize,
    editing: Editing,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fanout => "fanout",
            Mode::Prepend => "prepend",
            Mode::Storm => "storm",
            Mode::Capacity => "capacity",
        }
    }

    /// Whether clients send updates (every mode but capacity).
    fn sends(self) -> bool {
        self != Mode::Capacity
    }

    fn defaults(self) -> Defaults {
        match self {
            // A hot document: few writers, each fast, with large edits at index 0.
            Mode::Prepend => Defaults {
                docs: 1,
                clients: 4,
                rate: 500.0,
                update_bytes: 1024,
                editing: Editing {
                    insert: Insert::Start,
                    apply_live: true,
                },
            },
            Mode::Fanout | Mode::Storm | Mode::Capacity => Defaults {
                docs: 1000,
                clients: 8,
                rate: 1.0,
                update_bytes: 32,
                editing: Editing::default(),
            },
        }
    }
}

struct Options {
    values: HashMap<String, String>,
    /// Options given without a value (`SWITCHES`).
    switches: Vec<&'static str>,
}

/// Options that take no value.
const SWITCHES: [&str; 2] = ["json", "arrival-stamps"];

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let (mut values, mut switches) = (HashMap::new(), Vec::new());
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            if let Some(&switch) = SWITCHES.iter().find(|&&s| s == key) {
                switches.push(switch);
                continue;
            }
            if key == "apply-live" {
                // A switch that may be given a value: `--apply-live`, `--apply-live off`.
                let value = match it.as_slice().first().map(String::as_str) {
                    Some(v @ ("on" | "off")) => {
                        it.next();
                        v
                    }
                    _ => "on",
                };
                values.insert(key.to_owned(), value.to_owned());
                continue;
            }
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            values.insert(key.to_owned(), value.clone());
        }
        Ok(Options { values, switches })
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: cannot use {v:?}")),
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        self.switches.contains(&key)
    }
}

/// Which floor: the sends alone, made one way or the other, or a relay's whole work on one
/// waiter or the other.
#[derive(Debug, Clone, Copy)]
enum FloorOf {
    Sends(floor::Via),
    Relay(floor::Waiter),
}

/// A floor, measured over `--floor-sends` deliveries (0: not measured), laid out as `shape`.
fn measure_floor(
    options: &Options,
    shape: floor::Shape,
    of: FloorOf,
) -> Result<Option<floor::Floor>, String> {
    let deliveries = match options.get("floor-sends", 50_000usize)? {
        0 => return Ok(None),
        n => n,
    };
    match of {
        FloorOf::Sends(via) => floor::measure(FLOOR_FRAME_BYTES, deliveries, shape, via),
        FloorOf::Relay(waiter) => {
            floor::measure_relay(FLOOR_FRAME_BYTES, deliveries, shape, waiter)
        }
    }
    .map(Some)
    .map_err(|e| format!("measuring the floor ({of:?}): {e}"))
}

/// A 40-byte frame: about what a small update's broadcast is.
const FLOOR_FRAME_BYTES: usize = 40;

/// The floor of a run of `plan`: as many sockets as it has connections (as the descriptor
/// limit allows, two each), groups of one document's other clients, and the run's mean time
/// between two updates (at most 1 ms) between groups.
fn floor_shape(plan: &Plan) -> floor::Shape {
    let connections = plan.docs * plan.clients_per_doc;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let sockets_max = (limit.rlim_cur as usize).saturating_sub(64) / 2;
    let updates_per_s = connections as f64 * plan.rate_per_client;
    floor::Shape {
        sockets: connections.clamp(1, sockets_max.max(1)),
        group: plan.clients_per_doc.saturating_sub(1).max(1),
        gap_us: (1e6 / updates_per_s.max(1.0)).min(1_000.0) as u64,
    }
}

/// `floor`: the floors of a D=1000 x K=8 x 1/s run by default, side by side: one send per
/// delivery, each group through one io_uring submission, and a relay that does nothing else.
fn print_floor(options: Options) -> Result<bool, String> {
    let known = [
        "floor-sends",
        "floor-sockets",
        "floor-group",
        "floor-gap-us",
    ];
    if let Some(unknown) = options.values.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown option --{unknown}"));
    }
    let shape = floor::Shape {
        sockets: options.get("floor-sockets", 8000)?,
        group: options.get("floor-group", 7)?,
        gap_us: options.get("floor-gap-us", 125)?,
    };
    if shape.group == 0 || shape.sockets == 0 {
        return Err("--floor-sockets and --floor-group must be at least 1".into());
    }
    if shape.sockets <= shape.group {
        eprintln!("wiresocket-load: the relay floors need more --floor-sockets than --floor-group: not measured");
    }
    for (of, how) in [
        (FloorOf::Sends(floor::Via::Sendmsg), "one send per delivery"),
        (
            FloorOf::Sends(floor::Via::Ring),
            "a group's sends in one io_uring submission",
        ),
        (
            FloorOf::Relay(floor::Waiter::Epoll),
            "a relay on epoll (per update a wake, a recv and the group's sends)",
        ),
        (
            FloorOf::Relay(floor::Waiter::Glommio),
            "the same relay on glommio as a shard runs it (a task per socket)",
        ),
    ] {
        if matches!(of, FloorOf::Relay(_)) && shape.sockets <= shape.group {
            continue;
        }
        let Some(f) = measure_floor(&options, shape, of)? else {
            return Err("--floor-sends must be at least 1".into());
        };
        println!(
            "floor          {how}: a {}-byte frame to one of {} sockets, {} at a time every {} us, costs {:.2} us of CPU per delivery: at most {:.0} deliveries per CPU-second",
            f.frame_bytes,
            shape.sockets,
            shape.group,
            shape.gap_us,
            f.delivery_us,
            f.deliveries_per_cpu_s()
        );
    }
    Ok(true)
}

fn execute(options: Options, mode: Mode) -> Result<bool, String> {
    let mut known = vec![
        "url",
        "ca",
        "docs",
        "clients",
        "rate",
        "duration-s",
        "update-bytes",
        "connections",
        "hold-s",
        "server-pid",
        "threads",
        "sources",
        "connect-concurrency",
        "create-docs",
        "doc-prefix",
        "label",
        "floor-sends",
        "phases",
        "insert",
        "framing",
        "apply-live",
        "probe-cpu",
    ];
    if mode == Mode::Storm {
        known.extend([
            "warmup-s",
            "storm",
            "storm-concurrency",
            "storm-url",
            "storm-tokens",
        ]);
    }
    if let Some(unknown) = options.values.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown option --{unknown}"));
    }
    let target = ws_client::Target::parse(
        options.text("url").ok_or("--url is required")?,
        options.text("ca"),
    )?;
    let defaults = mode.defaults();
    let clients_per_doc: usize = options.get("clients", defaults.clients)?;
    let docs = match mode {
        Mode::Fanout | Mode::Prepend | Mode::Storm => options.get("docs", defaults.docs)?,
        Mode::Capacity => {
            let n: usize = options.get("connections", 0)?;
            if n == 0 {
                return Err("capacity needs --connections N".into());
            }
            n.div_ceil(clients_per_doc)
        }
    };
    let probe_cpu: Option<usize> = options
        .text("probe-cpu")
        .map(|c| c.parse())
        .transpose()
        .map_err(|_| "--probe-cpu: not a CPU number")?;
    if probe_cpu.is_some() && !mode.sends() {
        return Err("--probe-cpu is for runs that send".into());
    }
    if options.flag("arrival-stamps") && !mode.sends() {
        return Err("--arrival-stamps is for runs that send".into());
    }
    let plan = Plan {
        target,
        docs,
        clients_per_doc,
        rate_per_client: if mode.sends() {
            options.get("rate", defaults.rate)?
        } else {
            0.0
        },
        duration: Duration::from_secs_f64(options.get("duration-s", 10.0)?),
        update_bytes: options.get("update-bytes", defaults.update_bytes)?,
        sources: options.get("sources", 1)?,
        threads: options.get("threads", 1)?,
        doc_prefix: options
            .text("doc-prefix")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("load-{}", std::process::id())),
        connect_concurrency: options.get("connect-concurrency", 128)?,
        phases: Phases::parse(options.text("phases").unwrap_or("spread"))?,
        framing: options
            .text("framing")
            .map_or(Ok(Framing::YWebsocket), Framing::parse)?,
        editing: Editing {
            insert: options
                .text("insert")
                .map_or(Ok(defaults.editing.insert), Insert::parse)?,
            apply_live: options
                .text("apply-live")
                .map_or(defaults.editing.apply_live, |v| v == "on"),
        },
        tokens: Vec::new(),
        live_wait_ms: if mode == Mode::Storm { 1 } else { 0 },
        arrival_stamps: options.flag("arrival-stamps"),
    };
    if plan.docs == 0 || plan.clients_per_doc == 0 || plan.threads == 0 || plan.sources == 0 {
        return Err("--docs, --clients, --threads and --sources must be at least 1".into());
    }
    if mode.sends() && plan.rate_per_client <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    let storm = match mode {
        Mode::Storm => Some(storm_plan(&options, &plan)?),
        _ => None,
    };
    let pid: Option<u32> = options
        .text("server-pid")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| "--server-pid: not a number")?;
    if let Some(url) = options.text("create-docs") {
        for doc in 0..plan.docs {
            create_doc(url, &plan.doc_name(doc))?;
        }
    }
    let hold = Duration::from_secs_f64(options.get("hold-s", 0.0)?);
    // Before connecting: the server is idle and the machine quiet.
    let floors = match mode {
        Mode::Capacity => Floors::default(),
        _ => measure_floors(&options, floor_shape(&plan))?,
    };
    let mut measured = coordinate(Arc::new(plan), storm, pid, hold, probe_cpu)?;
    measured.floors = floors;
    let ok = measured.failures().is_empty();
    let label = options.text("label").unwrap_or("run");
    if options.flag("json") {
        println!("{}", measured.json(label, mode));
    } else {
        measured.print(mode);
    }
    Ok(ok)
}

/// The storm's own plan (one idle connection to each of `--storm` new documents) and its
/// warm-up.
fn storm_plan(options: &Options, live: &Plan) -> Result<(Arc<Plan>, Duration), String> {
    let warmup = Duration::from_secs_f64(options.get("warmup-s", 2.0)?);
    if warmup >= live.duration {
        return Err(
            "--warmup-s must be below --duration-s: the storm runs while clients send".into(),
        );
    }
    let connections: usize = options.get("storm", 5000)?;
    let concurrency: usize = options.get("storm-concurrency", 256)?;
    if connections == 0 || concurrency == 0 {
        return Err("--storm and --storm-concurrency must be at least 1".into());
    }
    let target = match options.text("storm-url") {
        Some(url) => ws_client::Target::parse(url, options.text("ca"))?,
        None => live.target.clone(),
    };
    let tokens = match options.text("storm-tokens") {
        None => Vec::new(),
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let tokens: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if tokens.is_empty() {
                return Err(format!("--storm-tokens {file}: no tokens in it"));
            }
            if !target.has_token_placeholder() {
                return Err(
                    "--storm-tokens needs --storm-url with {token} where a token goes".into(),
                );
            }
            tokens
        }
    };
    let plan = Plan {
        target,
        docs: connections,
        clients_per_doc: 1,
        rate_per_client: 0.0,
        duration: Duration::ZERO,
        update_bytes: 0,
        sources: live.sources,
        threads: 1,
        doc_prefix: format!("{}-storm", live.doc_prefix),
        connect_concurrency: concurrency,
        phases: live.phases,
        editing: Editing::default(),
        // Storm connections are y-websocket ones (their URL is `--storm-url`).
        framing: Framing::YWebsocket,
        tokens,
        live_wait_ms: 1,
        arrival_stamps: false,
    };
    Ok((Arc::new(plan), warmup))
}

/// POSTs `{"docId": doc}` (y-sweet creates documents before they can be joined).
fn create_doc(url: &str, doc: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// is supported"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let body = serde_json::json!({ "docId": doc }).to_string();
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        let line = response.lines().next().unwrap_or("");
        return Err(format!("creating {doc} at {url}: {line}"));
    }
    Ok(())
}

/// The floors measured before a run, in its shape (see `floor`).
#[derive(Default)]
struct Floors {
    sends: Option<floor::Floor>,
    epoll_relay: Option<floor::Floor>,
    glommio_relay: Option<floor::Floor>,
}

/// A run's floors. A relay floor that fails (no io_uring for glommio, say) is left out with
/// a warning: the run does not depend on it. A relay needs a whole group to relay to.
fn measure_floors(options: &Options, shape: floor::Shape) -> Result<Floors, String> {
    let relay = |waiter| {
        if shape.sockets <= shape.group {
            return None;
        }
        measure_floor(options, shape, FloorOf::Relay(waiter)).unwrap_or_else(|e| {
            eprintln!("wiresocket-load: {e}: left out");
            None
        })
    };
    Ok(Floors {
        sends: measure_floor(options, shape, FloorOf::Sends(floor::Via::Sendmsg))?,
        epoll_relay: relay(floor::Waiter::Epoll),
        glommio_relay: relay(floor::Waiter::Glommio),
    })
}

struct Measured {
    plan: Arc<Plan>,
    reports: Vec<ThreadReport>,
    storm: Option<StormReport>,
    connect_elapsed: Duration,
    rss_idle_kib: Option<u64>,
    rss_connected_kib: Option<u64>,
    /// The most the server held while clients sent, sampled every `RSS_SAMPLE`.
    rss_max_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    server_cpu_s: Option<f64>,
    wall: Duration,
    floors: Floors,
    /// What the probes of the server's and the generator's cores saw (`--probe-cpu`), and
    /// when sending began.
    stops: Option<(Instant, Vec<stops::Stops>)>,
}

/// How often the server's RSS is read while clients send.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

/// The largest of the server's RSS readings, taken at most every `RSS_SAMPLE`.
struct RssSampler {
    pid: Option<u32>,
    max_kib: Option<u64>,
    next: Instant,
}

impl RssSampler {
    fn tick(&mut self) -> Result<(), String> {
        let Some(pid) = self.pid else {
            return Ok(());
        };
        if Instant::now() >= self.next {
            self.next += RSS_SAMPLE;
            let kib = server_stats::rss_kib(pid)?;
            self.max_kib = Some(self.max_kib.map_or(kib, |max| max.max(kib)));
        }
        Ok(())
    }
}

fn coordinate(
    plan: Arc<Plan>,
    storm: Option<(Arc<Plan>, Duration)>,
    pid: Option<u32>,
    hold: Duration,
    probe_cpu: Option<usize>,
) -> Result<Measured, String> {
    let rss = |pid: Option<u32>| pid.map(server_stats::rss_kib).transpose();
    let cpu = |pid: Option<u32>| pid.map(server_stats::cpu_seconds).transpose();
    let control = Arc::new(Control::default());
    let rss_idle_kib = rss(pid)?;
    let connect_start = Instant::now();
    let handles: Vec<_> = (0..plan.threads)
        .map(|t| {
            let (plan, control) = (plan.clone(), control.clone());
            std::thread::spawn(move || run::thread_main(plan, control, t))
        })
        .collect();
    let storm_handle = storm.map(|(storm_plan, warmup)| {
        let control = control.clone();
        std::thread::spawn(move || run::storm_main(storm_plan, control, warmup))
    });
    let stopped_early = || {
        handles.iter().any(|h| h.is_finished())
            || storm_handle.as_ref().is_some_and(|h| h.is_finished())
    };
    let wait_until = |done: &dyn Fn() -> bool, rss_sampler: &mut RssSampler| {
        while !done() {
            if stopped_early() {
                return Err("a generator thread stopped early".to_owned());
            }
            rss_sampler.tick()?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    let threads_at = |count: &AtomicUsize| count.load(Ordering::SeqCst) >= plan.threads;
    // Connecting is not sampled: the memory of idle connections is measured after it.
    let mut no_sampling = RssSampler {
        pid: None,
        max_kib: None,
        next: connect_start,
    };
    wait_until(&|| threads_at(&control.ready), &mut no_sampling)?;
    let connect_elapsed = connect_start.elapsed();
    // Let the server settle (allocator, lazily created state) before measuring memory.
    std::thread::sleep(Duration::from_millis(500));
    let rss_connected_kib = rss(pid)?;
    let cpu_start = cpu(pid)?;
    // The server's core, and the generator's if it is pinned to another one: a stop of
    // either delays what the generator measures.
    let probed = probe_cpu.map_or(Vec::new(), |server_cpu| {
        let mut cores = vec![(server_cpu, stops::Owner::Server(pid))];
        if let Some(own) = stops::own_cpu().filter(|&own| own != server_cpu) {
            cores.push((own, stops::Owner::Generator));
        }
        cores
    });
    let probes = probed
        .into_iter()
        .map(|(cpu, owner)| stops::Probe::start(cpu, owner))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let mut sampler = RssSampler {
        pid,
        max_kib: rss_connected_kib,
        next: start,
    };
    if !probes.is_empty() {
        control.epoch.set(start).expect("set once");
    }
    control.go.store(true, Ordering::SeqCst);
    wait_until(&|| threads_at(&control.drained), &mut sampler)?;
    // A storm still connecting when the clients have drained is part of the run.
    wait_until(
        &|| storm_handle.is_none() || control.storm_finished.get().is_some(),
        &mut sampler,
    )?;
    let wall = start.elapsed();
    let stops = probes
        .into_iter()
        .map(stops::Probe::finish)
        .collect::<Result<Vec<_>, _>>()?;
    let cpu_end = cpu(pid)?;
    let rss_end_kib = rss(pid)?;
    std::thread::sleep(hold);
    control.release.store(true, Ordering::SeqCst);
    let panicked = |_| "a generator thread panicked".to_owned();
    let reports = handles
        .into_iter()
        .map(|h| h.join().map_err(panicked))
        .collect::<Result<Vec<_>, _>>()?;
    let storm = storm_handle
        .map(|h| h.join().map_err(panicked))
        .transpose()?;
    Ok(Measured {
        plan,
        reports,
        storm,
        connect_elapsed,
        rss_idle_kib,
        rss_connected_kib,
        rss_max_kib: sampler.max_kib.max(rss_end_kib),
        rss_end_kib,
        server_cpu_s: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        wall,
        floors: Floors::default(),
        stops: (!stops.is_empty()).then_some((start, stops)),
    })
}

impl Measured {
    fn sum(&self, f: impl Fn(&ThreadReport) -> u64) -> u64 {
        self.reports.iter().map(f).sum()
    }

    fn connected(&self) -> u64 {
        self.sum(|r| r.connected)
    }

    /// Delivery latencies to `end` of updates sent in any of `windows`, from every thread
    /// (empty for an end not measured).
    fn latency(&self, end: End, windows: &[Window]) -> Histogram<u64> {
        let mut all = self.reports[0].latency.by_window[0].clone();
        all.reset();
        for latencies in self.reports.iter().filter_map(|r| end.of(r)) {
            for &w in windows {
                all.add(&latencies.by_window[w as usize])
                    .expect("same bounds");
            }
        }
        all
    }

    /// With probes of the cores: the latencies of updates sent in the spans no stop of either
    /// core touched, and their share of all deliveries; only spans wholly inside `within`
    /// (the storm) if given.
    fn untouched(
        &self,
        end: End,
        within: Option<(Instant, Instant)>,
    ) -> Option<(Histogram<u64>, f64)> {
        let (epoch, seen) = self
            .stops
            .as_ref()
            .filter(|(_, seen)| seen.iter().all(stops::Stops::complete))?;
        let all_stops: Vec<stops::Stop> =
            seen.iter().flat_map(|s| s.stops.iter().copied()).collect();
        let by_slot: Vec<&stops::BySlot> = self
            .reports
            .iter()
            .filter_map(|r| end.of(r)?.by_slot.as_ref())
            .collect();
        let slots = by_slot.iter().map(|b| b.len()).max()?;
        let keep: Vec<bool> = stops::touched(&all_stops, *epoch, slots)
            .into_iter()
            .enumerate()
            .map(|(slot, touched)| {
                let begins = *epoch + stops::SLOT * slot as u32;
                let inside =
                    within.is_none_or(|(from, to)| begins >= from && begins + stops::SLOT <= to);
                !touched && inside
            })
            .collect();
        let mut kept = by_slot[0].empty_like();
        for b in &by_slot {
            b.add_to(&mut kept, &keep);
        }
        // Of every delivery, those sent past the spans kept (`stops::SLOTS_MAX`) too.
        let share = kept.len() as f64 / self.latency(End::Read, &WINDOWS).len().max(1) as f64;
        Some((kept, share))
    }

    /// The least and the mean of the clients' received shares that `f` picks.
    fn received(&self, f: impl Fn(&ThreadReport) -> &Vec<f64>) -> Option<(f64, f64)> {
        let shares: Vec<f64> = self
            .reports
            .iter()
            .flat_map(|r| f(r).iter().copied())
            .collect();
        let least = shares.iter().copied().reduce(f64::min)?;
        Some((least, shares.iter().sum::<f64>() / shares.len() as f64))
    }

    /// The ends deliveries were timed to.
    fn ends(&self) -> Vec<End> {
        let mut ends = vec![End::Read];
        if self.plan.arrival_stamps {
            ends.push(End::Arrival);
        }
        ends
    }

    /// When the storm's first handshake started and its last one ended.
    fn storm_span(&self) -> Option<(Instant, Instant)> {
        let s = self.storm.as_ref()?;
        Some((s.started, s.started + s.elapsed))
    }

    fn storm_connect_per_s(&self) -> Option<f64> {
        let s = self.storm.as_ref()?;
        Some(s.connected as f64 / s.elapsed.as_secs_f64().max(1e-9))
    }

    /// From the first update sent to the last delivery received.
    fn delivery_window(&self) -> Option<Duration> {
        let first = self.reports.iter().filter_map(|r| r.first_send).min()?;
        let last = self.reports.iter().filter_map(|r| r.last_delivery).max()?;
        Some(last.saturating_duration_since(first))
    }

    fn deliveries_per_s(&self) -> f64 {
        let secs = self.delivery_window().map_or(0.0, |w| w.as_secs_f64());
        if secs > 0.0 {
            self.sum(|r| r.deliveries) as f64 / secs
        } else {
            0.0
        }
    }

    fn deliveries_per_cpu_s(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|&c| c > 0.0)
            .map(|c| self.sum(|r| r.deliveries) as f64 / c)
    }

    /// The server's deliveries per CPU-second as a share of `floor`'s.
    fn of(&self, floor: Option<floor::Floor>) -> Option<f64> {
        Some(self.deliveries_per_cpu_s()? / floor?.deliveries_per_cpu_s())
    }

    /// Time the generator threads spent handling events while measuring, against the time
    /// they had (they poll, so their CPU time says nothing).
    fn generator_busy_percent(&self) -> f64 {
        let busy: f64 = self.reports.iter().map(|r| r.busy.as_secs_f64()).sum();
        busy / (self.wall.as_secs_f64() * self.plan.threads as f64).max(1e-9) * 100.0
    }

    fn rss_per_connection_bytes(&self) -> Option<f64> {
        let (idle, connected) = self.rss_idle_kib.zip(self.rss_connected_kib)?;
        let n = self.connected();
        (n > 0).then(|| (connected as f64 - idle as f64) * 1024.0 / n as f64)
    }

    fn connect_per_s(&self) -> f64 {
        self.connected() as f64 / self.connect_elapsed.as_secs_f64().max(1e-9)
    }

    /// Everything that makes the run fail: lost or diverged documents, dropped or refused
    /// connections.
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let failed = self.sum(|r| r.connect_failures);
        if failed > 0 {
            out.push(format!("{failed} connections failed"));
        }
        let dropped = self.sum(|r| r.dropped);
        if dropped > 0 {
            out.push(format!("{dropped} connections were closed by the server"));
        }
        let skipped = self.sum(|r| r.updates_skipped);
        if skipped > 0 {
            out.push(format!(
                "{skipped} updates not sent: the server stopped reading (overloaded)"
            ));
        }
        let lost = self.sum(|r| r.lost_updates);
        if lost > 0 {
            out.push(format!(
                "{lost} updates missing from a client's document at the end"
            ));
        }
        let missing: Vec<f64> = self
            .reports
            .iter()
            .flat_map(|r| r.received_after_drain.iter().copied())
            .filter(|&share| share < 1.0)
            .collect();
        if let Some(least) = missing.iter().copied().reduce(f64::min) {
            out.push(format!(
                "{} clients lack some of the other clients' updates after the drain (the least has {:.1} %)",
                missing.len(),
                least * 100.0
            ));
        }
        if let Some(s) = self.storm.as_ref().filter(|s| s.connected == 0) {
            out.push(format!(
                "none of the storm's {} connections synced: the storm measured nothing",
                s.connections
            ));
        }
        let diverged = self.sum(|r| r.docs_diverged);
        if diverged > 0 {
            out.push(format!("{diverged} documents diverged between clients"));
        }
        let (expected, got) = (
            self.sum(|r| r.expected_deliveries),
            self.sum(|r| r.deliveries),
        );
        if got < expected {
            out.push(format!(
                "{} of {expected} deliveries had not arrived when the run stopped waiting",
                expected - got
            ));
        }
        if let Some(e) = self.reports.iter().find_map(|r| r.first_error.clone()) {
            if !out.is_empty() {
                out.push(format!("first error: {e}"));
            }
        }
        if let Some(e) = self.storm.as_ref().and_then(|s| s.first_error.clone()) {
            if !out.is_empty() {
                out.push(format!("first storm error: {e}"));
            }
        }
        out
    }

    fn print(&self, mode: Mode) {
        let p = &self.plan;
        println!(
            "connected      {} of {} ({} documents x {}) in {:.2} s: {:.0} connections/s",
            self.connected(),
            p.docs * p.clients_per_doc,
            p.docs,
            p.clients_per_doc,
            self.connect_elapsed.as_secs_f64(),
            self.connect_per_s()
        );
        if mode.sends() {
            println!(
                "sent           {} updates ({} per client per second for {:.1} s, {} bytes each; phases {}, inserted at the {}, {})",
                self.sum(|r| r.updates_sent),
                p.rate_per_client,
                p.duration.as_secs_f64(),
                p.update_bytes,
                p.phases.name(),
                p.editing.insert.name(),
                if p.editing.apply_live {
                    "applied live"
                } else {
                    "applied after the run"
                }
            );
            println!(
                "delivered      {} of {} expected ({} echoes to senders): {:.0} deliveries/s",
                self.sum(|r| r.deliveries),
                self.sum(|r| r.expected_deliveries),
                self.sum(|r| r.echoes),
                self.deliveries_per_s()
            );
            println!(
                "latency        {}",
                latency_text(&self.latency(End::Read, &WINDOWS))
            );
            if p.arrival_stamps {
                println!(
                    "  at arrival   {} (to the kernel's receive stamp, the generator's delay in reading left out)",
                    latency_text(&self.latency(End::Arrival, &WINDOWS))
                );
            }
            for seen in self.stops.iter().flat_map(|(_, seen)| seen) {
                println!(
                    "core stops     CPU {} (the {}'s): a thread sleeping 1 ms at a time there was held off it by something else {} times for over {} ms while measured{}: worst {:.1} ms, {:.0} ms in all",
                    seen.cpu,
                    seen.owner.name(),
                    seen.count,
                    stops::STOP_MIN.as_millis(),
                    if seen.owner_subtracted {
                        ""
                    } else {
                        " (no --server-pid: the server's own use counted too)"
                    },
                    seen.worst.as_secs_f64() * 1e3,
                    seen.total.as_secs_f64() * 1e3
                );
                if seen.clock_failures > 0 {
                    println!(
                        "  clock        the {}'s CPU clock failed {} times (gone?): those gaps count whole",
                        seen.owner.name(),
                        seen.clock_failures
                    );
                }
                if !seen.complete() {
                    println!(
                        "  untouched    not told apart: more stops than the {} kept",
                        seen.stops.len()
                    );
                }
            }
            if let Some([server]) = self.stops.as_ref().map(|(_, seen)| seen.as_slice()) {
                println!(
                    "  generator    not pinned to one other CPU: its own time on CPU {} counts as stops, and its core is not probed",
                    server.cpu
                );
            }
            for end in self.ends() {
                if let Some((kept, share)) = self.untouched(end, None) {
                    println!(
                        "  untouched    sent in the {} ms spans no stop touched ({:.1} % of deliveries){}: {}",
                        stops::SLOT.as_millis(),
                        share * 100.0,
                        end.suffix(),
                        latency_text(&kept)
                    );
                }
            }
            if let Some(s) = &self.storm {
                println!(
                    "storm          {} connections after {:.1} s: {} synced in {:.2} s ({:.0} connections/s), {} failed, {} closed by the server later",
                    s.connections,
                    s.warmup.as_secs_f64(),
                    s.connected,
                    s.elapsed.as_secs_f64(),
                    self.storm_connect_per_s().unwrap_or(0.0),
                    s.failed,
                    s.dropped
                );
                for end in self.ends() {
                    for (w, when) in WINDOWS.iter().zip(STORM_WINDOW_NAMES) {
                        println!(
                            "  sent {when:<13}{}{}",
                            latency_text(&self.latency(end, &[*w])),
                            end.suffix()
                        );
                    }
                    if let Some((kept, share)) =
                        self.storm_span().and_then(|s| self.untouched(end, Some(s)))
                    {
                        println!(
                            "  during storm, untouched spans ({:.1} % of all deliveries){}: {}",
                            share * 100.0,
                            end.suffix(),
                            latency_text(&kept)
                        );
                    }
                }
            }
            if let (Some((end_min, end_mean)), Some((drained_min, drained_mean))) = (
                self.received(|r| &r.received_at_send_end),
                self.received(|r| &r.received_after_drain),
            ) {
                println!(
                    "received       of the other clients' updates, each client had {:.1} % (least) / {:.1} % (mean) when sending ended, {:.1} % / {:.1} % after the drain",
                    end_min * 100.0,
                    end_mean * 100.0,
                    drained_min * 100.0,
                    drained_mean * 100.0
                );
            }
            if let Some(cpu) = self.server_cpu_s {
                println!(
                    "server CPU     {cpu:.2} s over {:.2} s ({:.0} % of one core): {:.0} deliveries per CPU-second",
                    self.wall.as_secs_f64(),
                    cpu / self.wall.as_secs_f64() * 100.0,
                    self.deliveries_per_cpu_s().unwrap_or(0.0)
                );
            }
            let server = |floor| {
                self.deliveries_per_cpu_s()
                    .map_or("no server CPU (--server-pid)".to_owned(), |d| {
                        format!(
                            "the server reached {:.2} of that rate ({:.2} us per delivery)",
                            self.of(floor).unwrap_or(0.0),
                            1e6 / d
                        )
                    })
            };
            if let Some(f) = self.floors.sends {
                println!(
                    "floor          one loopback send of a {}-byte frame costs {:.2} us here ({:.0} per CPU-second); {}",
                    f.frame_bytes,
                    f.delivery_us,
                    f.deliveries_per_cpu_s(),
                    server(Some(f))
                );
            }
            for (f, waiter) in [
                (self.floors.epoll_relay, "epoll"),
                (self.floors.glommio_relay, "glommio as a shard runs it"),
            ] {
                if let Some(f) = f {
                    println!(
                        "relay floor    a relay that does nothing else, on {waiter} (per update a wake, a recv and the document's other clients' sends), costs {:.2} us per delivery here ({:.0} per CPU-second); {}",
                        f.delivery_us,
                        f.deliveries_per_cpu_s(),
                        server(Some(f))
                    );
                }
            }
            println!(
                "generator      busy {:.0} % of the run (the rest polling): near 100 %, the generator is the bottleneck",
                self.generator_busy_percent()
            );
            println!(
                "converged      {} of {} documents checked",
                self.sum(|r| r.docs_checked) - self.sum(|r| r.docs_diverged),
                self.sum(|r| r.docs_checked)
            );
        }
        if let (Some(idle), Some(connected), Some(end)) =
            (self.rss_idle_kib, self.rss_connected_kib, self.rss_end_kib)
        {
            println!(
                "server RSS     {idle} KiB before, {connected} KiB connected, {} KiB at most while sending (every {} ms), {end} KiB at the end: {:.0} bytes per connection",
                self.rss_max_kib.unwrap_or(end),
                RSS_SAMPLE.as_millis(),
                self.rss_per_connection_bytes().unwrap_or(0.0)
            );
        }
        let failures = self.failures();
        if failures.is_empty() {
            println!("result         OK");
        } else {
            for f in failures {
                println!("FAILED         {f}");
            }
        }
    }

    fn json(&self, label: &str, mode: Mode) -> String {
        let p = &self.plan;
        let h = self.latency(End::Read, &WINDOWS);
        let sends = mode.sends();
        let received = |f: fn(&ThreadReport) -> &Vec<f64>| {
            self.received(f).map_or(
                serde_json::json!({"min": null, "mean": null}),
                |(min, mean)| serde_json::json!({"min": min, "mean": mean}),
            )
        };
        let mut report = serde_json::json!({
            "label": label,
            "mode": mode.name(),
            "docs": p.docs,
            "clients": p.clients_per_doc,
            "rate": p.rate_per_client,
            "duration_s": p.duration.as_secs_f64(),
            "update_bytes": p.update_bytes,
            "phases": p.phases.name(),
            "insert": p.editing.insert.name(),
            "framing": p.framing.name(),
            "apply_live": p.editing.apply_live,
            "connected": self.connected(),
            "connect_per_s": self.connect_per_s().round(),
            "updates_sent": self.sum(|r| r.updates_sent),
            "deliveries": self.sum(|r| r.deliveries),
            "expected_deliveries": self.sum(|r| r.expected_deliveries),
            "deliveries_per_s": self.deliveries_per_s().round(),
            "server_cpu_s": self.server_cpu_s,
            "deliveries_per_cpu_s": self.deliveries_per_cpu_s().map(f64::round),
            "server_cpu_percent": self.server_cpu_s.map(|c| (c / self.wall.as_secs_f64() * 100.0).round()),
            "floor_send_us": self.floors.sends.map(|f| f.delivery_us),
            "of_floor": self.of(self.floors.sends),
            "epoll_relay_floor_us": self.floors.epoll_relay.map(|f| f.delivery_us),
            "of_epoll_relay_floor": self.of(self.floors.epoll_relay),
            "glommio_relay_floor_us": self.floors.glommio_relay.map(|f| f.delivery_us),
            "of_glommio_relay_floor": self.of(self.floors.glommio_relay),
            "generator_busy_percent": self.generator_busy_percent().round(),
            "p50_us": sends.then(|| h.value_at_quantile(0.5)),
            "p99_us": sends.then(|| h.value_at_quantile(0.99)),
            "p999_us": sends.then(|| h.value_at_quantile(0.999)),
            "max_us": sends.then(|| h.max()),
            // Shares (0..1) of the other clients' updates of its document a client had.
            "received_share_at_send_end": received(|r| &r.received_at_send_end),
            "received_share_after_drain": received(|r| &r.received_after_drain),
            "rss_connected_kib": self.rss_connected_kib,
            "rss_max_kib": self.rss_max_kib,
            "rss_end_kib": self.rss_end_kib,
            "rss_per_connection_bytes": self.rss_per_connection_bytes().map(f64::round),
            "failures": self.failures(),
        });
        if let Some((_, seen)) = &self.stops {
            let fields = report.as_object_mut().expect("an object");
            let cores: Vec<serde_json::Value> = seen
                .iter()
                .map(|seen| {
                    serde_json::json!({
                        "cpu": seen.cpu,
                        "owner": seen.owner.name(),
                        "owner_subtracted": seen.owner_subtracted,
                        "clock_failures": seen.clock_failures,
                        "count": seen.count,
                        "complete": seen.complete(),
                        "worst_ms": seen.worst.as_secs_f64() * 1e3,
                        "total_ms": seen.total.as_secs_f64() * 1e3,
                    })
                })
                .collect();
            fields.insert("core_stops".into(), cores.into());
            for end in self.ends() {
                let key = format!("untouched{}", end.key());
                insert_untouched(fields, &key, self.untouched(end, None));
            }
        }
        if let Some(s) = &self.storm {
            let fields = report.as_object_mut().expect("an object");
            fields.insert(
                "storm".into(),
                serde_json::json!({
                    "connections": s.connections,
                    "concurrency": s.concurrency,
                    "warmup_s": s.warmup.as_secs_f64(),
                    "connected": s.connected,
                    "failed": s.failed,
                    "dropped": s.dropped,
                    "elapsed_s": s.elapsed.as_secs_f64(),
                    "connect_per_s": self.storm_connect_per_s().map(f64::round),
                    "first_error": s.first_error,
                }),
            );
            for end in self.ends() {
                for (w, when) in WINDOWS.iter().zip(STORM_WINDOW_KEYS) {
                    let key = format!("latency_{when}_storm{}_us", end.key());
                    fields.insert(key, latency_json(&self.latency(end, &[*w])));
                }
                insert_untouched(
                    fields,
                    &format!("during_storm_untouched{}", end.key()),
                    self.storm_span().and_then(|s| self.untouched(end, Some(s))),
                );
            }
        }
        report.to_string()
    }
}

/// The storm's latency groups, in `WINDOWS` order.
const STORM_WINDOW_NAMES: [&str; 3] = ["before storm", "during storm", "after storm"];
const STORM_WINDOW_KEYS: [&str; 3] = ["before", "during", "after"];

/// Which end of a delivery a latency runs to.
#[derive(Clone, Copy)]
enum End {
    /// The generator's read of it.
    Read,
    /// The kernel's receive stamp on it (`--arrival-stamps`).
    Arrival,
}

impl End {
    fn of(self, report: &ThreadReport) -> Option<&Latencies> {
        match self {
            End::Read => Some(&report.latency),
            End::Arrival => report.arrival.as_ref(),
        }
    }

    /// Said after a line of latencies, and added to their JSON keys.
    fn suffix(self) -> &'static str {
        match self {
            End::Read => "",
            End::Arrival => " at arrival",
        }
    }

    fn key(self) -> &'static str {
        match self {
            End::Read => "",
            End::Arrival => "_at_arrival",
        }
    }
}

fn latency_text(h: &Histogram<u64>) -> String {
    format!(
        "{} deliveries: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

/// `latency_{key}_us` and the share of all deliveries they are, `{key}_deliveries_share`.
fn insert_untouched(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    untouched: Option<(Histogram<u64>, f64)>,
) {
    if let Some((kept, share)) = untouched {
        fields.insert(format!("latency_{key}_us"), latency_json(&kept));
        fields.insert(format!("{key}_deliveries_share"), share.into());
    }
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "deliveries": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}
