//! `wiresocket-load`: drives any y-websocket server with real Yjs updates and reports what
//! the server delivered, how fast, at what CPU and memory cost, and whether every document
//! converged on every client.

mod floor;
mod peer;
mod run;
mod server_stats;
mod ws_client;

use run::{Control, Plan, ThreadReport};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
wiresocket-load: load generator for y-websocket servers

USAGE:
    wiresocket-load fanout --url URL [OPTIONS]
        D documents x K clients; every client sends updates at a fixed rate; reports
        deliveries, latency, server CPU and memory, and checks convergence
    wiresocket-load capacity --url URL --connections N [OPTIONS]
        opens N idle, synced document connections and reports server memory per connection
    wiresocket-load floor [--floor-sends N]
        what one loopback send of a 40-byte frame costs this machine's CPU: the least a
        delivery can cost a server that sends each one (fanout prints it beside the server)

URL is ws://HOST:PORT/PATH with {doc} where the document name goes, e.g.
    ws://127.0.0.1:8080/{doc}?token=JWT          wiresocket, the Node reference server
    ws://127.0.0.1:8081/d/{doc}/ws/{doc}         y-sweet (with --create-docs)

OPTIONS:
    --docs D                 documents (fanout; default 1000)
    --clients K              clients per document (default 8)
    --rate R                 updates per second per client (fanout; default 1)
    --duration-s S           sending time (fanout; default 10)
    --update-bytes B         characters per edit (default 32)
    --connections N          idle connections (capacity; documents = N / K)
    --hold-s S               keep idle connections open this long after measuring (capacity)
    --server-pid PID         the server process, for CPU seconds and RSS from /proc
    --threads T              generator threads (default 1)
    --sources S              spread connections over 127.0.0.1 ..= 127.0.0.S (default 1)
    --connect-concurrency C  handshakes in flight per thread (default 128)
    --create-docs URL        POST {\"docId\":NAME} here for every document first (y-sweet)
    --doc-prefix P           document names are P-0, P-1, ... (default load-PID)
    --label NAME             name of this run in the JSON line
    --floor-sends N          sends the floor is measured with, before a fanout (default 50000; 0: none)
    --json                   print one JSON line instead of the report
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fanout") => Options::parse(&args[1..]).and_then(|o| execute(o, Mode::Fanout)),
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
    Capacity,
}

struct Options {
    values: HashMap<String, String>,
    json: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut values = HashMap::new();
        let mut json = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            if key == "json" {
                json = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            values.insert(key.to_owned(), value.clone());
        }
        Ok(Options { values, json })
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
}

/// The loopback send floor, measured with `--floor-sends` sends (0: not measured).
fn measure_floor(options: &Options) -> Result<Option<floor::Floor>, String> {
    match options.get("floor-sends", 50_000usize)? {
        0 => Ok(None),
        sends => floor::measure(FLOOR_FRAME_BYTES, sends)
            .map(Some)
            .map_err(|e| format!("measuring the floor: {e}")),
    }
}

/// A 40-byte frame: about what a small update's broadcast is.
const FLOOR_FRAME_BYTES: usize = 40;

fn print_floor(options: Options) -> Result<bool, String> {
    if let Some(unknown) = options.values.keys().find(|k| k.as_str() != "floor-sends") {
        return Err(format!("unknown option --{unknown}"));
    }
    let Some(f) = measure_floor(&options)? else {
        return Err("--floor-sends must be at least 1".into());
    };
    println!(
        "floor          one loopback send of a {}-byte frame costs {:.2} us of CPU here: at most {:.0} deliveries per CPU-second",
        f.frame_bytes,
        f.send_us,
        f.deliveries_per_cpu_s()
    );
    Ok(true)
}

fn execute(options: Options, mode: Mode) -> Result<bool, String> {
    let known = [
        "url",
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
    ];
    if let Some(unknown) = options.values.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown option --{unknown}"));
    }
    let target = ws_client::Target::parse(options.text("url").ok_or("--url is required")?)?;
    let clients_per_doc: usize = options.get("clients", 8)?;
    let docs = match mode {
        Mode::Fanout => options.get("docs", 1000)?,
        Mode::Capacity => {
            let n: usize = options.get("connections", 0)?;
            if n == 0 {
                return Err("capacity needs --connections N".into());
            }
            n.div_ceil(clients_per_doc)
        }
    };
    let plan = Plan {
        target,
        docs,
        clients_per_doc,
        rate_per_client: if mode == Mode::Fanout {
            options.get("rate", 1.0)?
        } else {
            0.0
        },
        duration: Duration::from_secs_f64(options.get("duration-s", 10.0)?),
        update_bytes: options.get("update-bytes", 32)?,
        sources: options.get("sources", 1)?,
        threads: options.get("threads", 1)?,
        doc_prefix: options
            .text("doc-prefix")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("load-{}", std::process::id())),
        connect_concurrency: options.get("connect-concurrency", 128)?,
    };
    if plan.docs == 0 || plan.clients_per_doc == 0 || plan.threads == 0 || plan.sources == 0 {
        return Err("--docs, --clients, --threads and --sources must be at least 1".into());
    }
    if mode == Mode::Fanout && plan.rate_per_client <= 0.0 {
        return Err("--rate must be above 0".into());
    }
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
    let floor = match mode {
        Mode::Fanout => measure_floor(&options)?,
        Mode::Capacity => None,
    };
    let mut measured = coordinate(Arc::new(plan), pid, hold)?;
    measured.floor = floor;
    let ok = measured.failures().is_empty();
    let label = options.text("label").unwrap_or("run");
    if options.json {
        println!("{}", measured.json(label, mode));
    } else {
        measured.print(mode);
    }
    Ok(ok)
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

struct Measured {
    plan: Arc<Plan>,
    reports: Vec<ThreadReport>,
    connect_elapsed: Duration,
    rss_idle_kib: Option<u64>,
    rss_connected_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    server_cpu_s: Option<f64>,
    wall: Duration,
    floor: Option<floor::Floor>,
}

fn coordinate(plan: Arc<Plan>, pid: Option<u32>, hold: Duration) -> Result<Measured, String> {
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
    let wait_for = |count: &std::sync::atomic::AtomicUsize| {
        while count.load(Ordering::SeqCst) < plan.threads {
            if handles.iter().any(|h| h.is_finished()) {
                return Err("a generator thread stopped early".to_owned());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    wait_for(&control.ready)?;
    let connect_elapsed = connect_start.elapsed();
    // Let the server settle (allocator, lazily created state) before measuring memory.
    std::thread::sleep(Duration::from_millis(500));
    let rss_connected_kib = rss(pid)?;
    let cpu_start = cpu(pid)?;
    let start = Instant::now();
    control.go.store(true, Ordering::SeqCst);
    wait_for(&control.drained)?;
    let wall = start.elapsed();
    let cpu_end = cpu(pid)?;
    let rss_end_kib = rss(pid)?;
    std::thread::sleep(hold);
    control.release.store(true, Ordering::SeqCst);
    let reports = handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| "a generator thread panicked".to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Measured {
        plan,
        reports,
        connect_elapsed,
        rss_idle_kib,
        rss_connected_kib,
        rss_end_kib,
        server_cpu_s: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        wall,
        floor: None,
    })
}

impl Measured {
    fn sum(&self, f: impl Fn(&ThreadReport) -> u64) -> u64 {
        self.reports.iter().map(f).sum()
    }

    fn connected(&self) -> u64 {
        self.sum(|r| r.connected)
    }

    fn latency(&self) -> hdrhistogram::Histogram<u64> {
        let mut all = self.reports[0].latency_us.clone();
        for r in &self.reports[1..] {
            all.add(&r.latency_us).expect("same bounds");
        }
        all
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

    /// The server's deliveries per CPU-second as a share of the floor's.
    fn of_floor(&self) -> Option<f64> {
        Some(self.deliveries_per_cpu_s()? / self.floor?.deliveries_per_cpu_s())
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
        if mode == Mode::Fanout {
            let h = self.latency();
            println!(
                "sent           {} updates ({} per client per second for {:.1} s, {} bytes each)",
                self.sum(|r| r.updates_sent),
                p.rate_per_client,
                p.duration.as_secs_f64(),
                p.update_bytes
            );
            println!(
                "delivered      {} of {} expected ({} echoes to senders): {:.0} deliveries/s",
                self.sum(|r| r.deliveries),
                self.sum(|r| r.expected_deliveries),
                self.sum(|r| r.echoes),
                self.deliveries_per_s()
            );
            println!(
                "latency        p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
            if let Some(cpu) = self.server_cpu_s {
                println!(
                    "server CPU     {cpu:.2} s over {:.2} s ({:.0} % of one core): {:.0} deliveries per CPU-second",
                    self.wall.as_secs_f64(),
                    cpu / self.wall.as_secs_f64() * 100.0,
                    self.deliveries_per_cpu_s().unwrap_or(0.0)
                );
            }
            if let Some(f) = self.floor {
                let server = self.deliveries_per_cpu_s().map_or(
                    "no server CPU (--server-pid)".to_owned(),
                    |d| {
                        format!(
                            "the server reached {:.2} of that rate ({:.2} us per delivery)",
                            self.of_floor().unwrap_or(0.0),
                            1e6 / d
                        )
                    },
                );
                println!(
                    "floor          one loopback send of a {}-byte frame costs {:.2} us here ({:.0} per CPU-second); {server}",
                    f.frame_bytes,
                    f.send_us,
                    f.deliveries_per_cpu_s()
                );
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
                "server RSS     {idle} KiB before, {connected} KiB connected, {end} KiB at the end: {:.0} bytes per connection",
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
        let h = self.latency();
        let fanout = mode == Mode::Fanout;
        serde_json::json!({
            "label": label,
            "mode": if fanout { "fanout" } else { "capacity" },
            "docs": p.docs,
            "clients": p.clients_per_doc,
            "rate": p.rate_per_client,
            "connected": self.connected(),
            "connect_per_s": self.connect_per_s().round(),
            "updates_sent": self.sum(|r| r.updates_sent),
            "deliveries": self.sum(|r| r.deliveries),
            "expected_deliveries": self.sum(|r| r.expected_deliveries),
            "deliveries_per_s": self.deliveries_per_s().round(),
            "server_cpu_s": self.server_cpu_s,
            "deliveries_per_cpu_s": self.deliveries_per_cpu_s().map(f64::round),
            "server_cpu_percent": self.server_cpu_s.map(|c| (c / self.wall.as_secs_f64() * 100.0).round()),
            "floor_send_us": self.floor.map(|f| f.send_us),
            "of_floor": self.of_floor(),
            "generator_busy_percent": self.generator_busy_percent().round(),
            "p50_us": fanout.then(|| h.value_at_quantile(0.5)),
            "p99_us": fanout.then(|| h.value_at_quantile(0.99)),
            "p999_us": fanout.then(|| h.value_at_quantile(0.999)),
            "rss_connected_kib": self.rss_connected_kib,
            "rss_per_connection_bytes": self.rss_per_connection_bytes().map(f64::round),
            "failures": self.failures(),
        })
        .to_string()
    }
}
