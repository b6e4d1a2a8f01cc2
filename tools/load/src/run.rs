//! One run: every peer connects and syncs, then (unless idle) sends updates at a fixed rate
//! until the deadline; the run waits for the last delivery and checks that every document
//! converged. All peers of a document live on one thread, so send times and deliveries are
//! matched without crossing threads. A storm (`storm_main`) is one more thread that opens
//! its own connections while the others send, each to a document of its own.
//!
//! Each thread is an epoll loop that polls without sleeping while the run is live. On
//! loopback a sleeping reader makes every server send pay for waking it (a cross-core
//! interrupt, dear in a VM) which a real network card would absorb; a polling generator
//! keeps that cost out of the server's CPU seconds.

use crate::arrival;
use crate::peer::{Editing, Framing, Incoming, Peer};
use crate::stops::BySlot;
use crate::ws_client::{self, parse_server_frame};
use hdrhistogram::Histogram;
use socket2::Socket;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wiresocket::ws::frame::Opcode;

/// Bytes one `recv` takes from a socket.
const READ_BYTES: usize = 64 << 10;
/// Events taken from epoll per call: small, so that deliveries are timestamped soon after
/// they arrive (1,024 added milliseconds to the measured p99).
const EVENTS_MAX: usize = 64;
/// A peer that has not finished its handshake and sync step 2 by then counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// After sending stops, missing deliveries are waited for this long without progress.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// An overloaded server may still be delivering slowly: stop waiting after this long.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Unsent bytes per peer: a server that stops reading makes its peers skip updates rather
/// than queue without bound.
const OUT_BYTES_MAX: usize = 64 << 10;
/// Latencies are recorded in microseconds, up to a minute.
const LATENCY_US_MAX: u64 = 60_000_000;
/// The golden ratio's fraction: a stride that spreads first sends evenly over a period
/// without repeating, fixed (not random) so that runs repeat.
const GOLDEN_STRIDE: f64 = 0.618_033_988_75;

/// When each client sends first, as a share of one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// Every client its own offset: a document's clients do not send in the same
    /// millisecond, as users typing do not.
    Spread,
    /// A document's clients share one offset and send in the same millisecond, which lets
    /// a coalescing server send several updates in one syscall.
    Burst,
}

impl Phases {
    pub fn parse(name: &str) -> Result<Phases, String> {
        match name {
            "spread" => Ok(Phases::Spread),
            "burst" => Ok(Phases::Burst),
            _ => Err(format!("--phases: {name:?} is not spread or burst")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phases::Spread => "spread",
            Phases::Burst => "burst",
        }
    }

    /// The first send of local peer `idx` (of `clients_per_doc` per document), as a
    /// fraction of one period.
    pub fn first_send_offset(self, idx: usize, clients_per_doc: usize) -> f64 {
        let slot = match self {
            Phases::Spread => idx,
            Phases::Burst => idx / clients_per_doc,
        };
        (slot as f64 * GOLDEN_STRIDE).fract()
    }
}

/// When a delivered update was sent, against the storm (without one: always `Before`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Before = 0,
    During = 1,
    After = 2,
}

pub const WINDOWS: [Window; 3] = [Window::Before, Window::During, Window::After];

pub struct Plan {
    pub target: ws_client::Target,
    pub docs: usize,
    pub clients_per_doc: usize,
    /// Updates per second per client; 0 opens idle connections only (capacity mode).
    pub rate_per_client: f64,
    pub duration: Duration,
    pub update_bytes: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N; 1 lets the kernel choose.
    pub sources: u8,
    pub threads: usize,
    pub doc_prefix: String,
    /// Handshakes in flight per thread.
    pub connect_concurrency: usize,
    pub phases: Phases,
    pub editing: Editing,
    pub framing: Framing,
    /// Replace `{token}` in the URL: document `i`'s connection uses `tokens[i % len]`
    /// (empty: the URL is used as it is).
    pub tokens: Vec<String>,
    /// How long the sending loop waits in epoll for events: 0 polls, so the server's sends
    /// never pay for waking the generator; a storm waits (1 ms), so that its own thread, at
    /// SCHED_IDLE on the same core, runs only while the live clients have nothing to do, and the
    /// live latency measured is the server's, not the two threads taking turns.
    pub live_wait_ms: i32,
    /// Also time deliveries to the kernel's receive stamp (`arrival`), not only to the read.
    pub arrival_stamps: bool,
}

impl Plan {
    pub fn doc_name(&self, doc: usize) -> String {
        format!("{}-{doc}", self.doc_prefix)
    }

    /// The URL's path for global document `doc`, its placeholders filled.
    fn path(&self, doc: usize) -> String {
        let token =
            (!self.tokens.is_empty()).then(|| self.tokens[doc % self.tokens.len()].as_str());
        self.target.path(&self.doc_name(doc), token)
    }

    /// What a connection to global document `doc` requests: the URL's path, or `/` for the
    /// Hocuspocus framing (the document and its token then travel in the messages).
    fn request_path(&self, doc: usize) -> String {
        match self.framing {
            Framing::YWebsocket => self.path(doc),
            Framing::Hocuspocus => "/".into(),
        }
    }

    /// A client of global document `doc`.
    fn peer(&self, client_id: u64, doc: usize) -> Peer {
        let peer = Peer::new(client_id, self.editing);
        match self.framing {
            Framing::YWebsocket => peer,
            Framing::Hocuspocus => {
                let path = self.path(doc);
                peer.with_hocuspocus(&self.doc_name(doc), query_token(&path).unwrap_or(""))
            }
        }
    }
}

/// The `token` query parameter of a request path.
fn query_token(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// The coordinator's phases, seen by every thread.
#[derive(Default)]
pub struct Control {
    /// Threads whose peers have all synced (or failed).
    pub ready: AtomicUsize,
    pub go: AtomicBool,
    /// Threads done sending whose deliveries have all arrived (or stopped arriving).
    pub drained: AtomicUsize,
    /// Measurements taken: threads may close their connections and return.
    pub release: AtomicBool,
    /// When the storm's first handshake started, and when its last one ended.
    pub storm_started: OnceLock<Instant>,
    pub storm_finished: OnceLock<Instant>,
    /// Set before `go` in a run that probes its cores for stops: latencies are then also
    /// kept by the span they were sent in (`stops::BySlot`), counted from here.
    pub epoch: OnceLock<Instant>,
}

impl Control {
    /// Where an update sent at `sent` falls against the storm, seen at its delivery (a
    /// storm not started yet will start after `sent`; one not finished, after it too).
    fn window(&self, sent: Instant) -> Window {
        match self.storm_started.get() {
            Some(&started) if sent >= started => match self.storm_finished.get() {
                Some(&finished) if sent >= finished => Window::After,
                _ => Window::During,
            },
            _ => Window::Before,
        }
    }
}

pub struct ThreadReport {
    pub connected: u64,
    pub connect_failures: u64,
    pub first_error: Option<String>,
    pub updates_sent: u64,
    /// Updates not sent because the peer's unsent bytes were at their bound.
    pub updates_skipped: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub echoes: u64,
    /// Connections the server closed while the run was live.
    pub dropped: u64,
    /// Delivery latencies to the read, and (`Plan::arrival_stamps`) to the kernel's stamp.
    pub latency: Latencies,
    pub arrival: Option<Latencies>,
    pub first_send: Option<Instant>,
    pub last_delivery: Option<Instant>,
    /// Time spent handling events while measuring (the rest was polling for them).
    pub busy: Duration,
    pub docs_checked: u64,
    pub docs_diverged: u64,
    pub lost_updates: u64,
    /// Per connected client: the share of the other clients' updates of its document it had
    /// received when sending ended, and after the drain.
    pub received_at_send_end: Vec<f64>,
    pub received_after_drain: Vec<f64>,
}

/// Delivery latencies, each from the update's send to one end of its delivery.
pub struct Latencies {
    /// By the send's `Window`.
    pub by_window: [Histogram<u64>; 3],
    /// And by the span it was sent in, in a run that probes its cores (`Control::epoch`).
    pub by_slot: Option<BySlot>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            by_window: WINDOWS
                .map(|_| Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds")),
            by_slot: None,
        }
    }

    fn record(&mut self, window: Window, sent: Instant, us: u64) {
        self.by_window[window as usize].saturating_record(us.max(1));
        if let Some(by_slot) = &mut self.by_slot {
            by_slot.record(sent, us);
        }
    }
}

/// What the storm thread saw.
pub struct StormReport {
    pub connections: u64,
    /// Handshakes it kept in flight.
    pub concurrency: usize,
    /// Live traffic before it started.
    pub warmup: Duration,
    pub connected: u64,
    pub failed: u64,
    /// Storm connections the server closed after they synced.
    pub dropped: u64,
    /// When the first handshake started.
    pub started: Instant,
    /// From the first handshake to the last one's end (synced or failed).
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Waiting,
    Connecting,
    Upgrading,
    Syncing,
    Open,
    Closed,
}

struct Conn {
    socket: Option<Socket>,
    phase: Phase,
    inbuf: Vec<u8>,
    /// What to send (plaintext when over TLS).
    out: Vec<u8>,
    /// Over TLS (`wss://`): the connection, and its ciphertext not yet sent.
    tls: Option<Box<rustls::ClientConnection>>,
    wire: Vec<u8>,
    /// Whether epoll reports writability for this socket.
    want_out: bool,
    connect_deadline: Instant,
}

/// One thread's share: documents `thread, thread + threads, ...`, each with all its peers.
struct Thread {
    plan: Arc<Plan>,
    control: Arc<Control>,
    thread: usize,
    epoll: OwnedFd,
    peers: Vec<Peer>,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    next_connect: usize,
    in_flight: usize,
    synced: u64,
    failed: u64,
    first_error: Option<String>,
    measuring: bool,
    finished: bool,
    deliveries: u64,
    echoes: u64,
    dropped: u64,
    skipped: u64,
    latency: Latencies,
    arrival: Option<Latencies>,
    /// When the bytes of the read being handled arrived, if the kernel stamped them.
    arrived: Option<Instant>,
    last_delivery: Option<Instant>,
    busy: Duration,
}

pub fn thread_main(plan: Arc<Plan>, control: Arc<Control>, thread: usize) -> ThreadReport {
    Thread::new(plan, control, thread).run()
}

/// The storm: once the others have sent for `warmup`, opens every connection of `plan`
/// (one document each) as fast as `plan.connect_concurrency` allows, then keeps them open
/// and idle until the measurements are taken.
pub fn storm_main(plan: Arc<Plan>, control: Arc<Control>, warmup: Duration) -> StormReport {
    let mut t = Thread::new(plan, control.clone(), 0);
    // SCHED_IDLE: a live thread that wakes always preempts this one at once (a nice 19
    // thread may still finish its slice first, milliseconds the live latency would show).
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's own policy (pid 0), from a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    while !control.go.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(warmup);
    let started = Instant::now();
    control.storm_started.set(started).expect("one storm a run");
    // Waits in epoll rather than spinning: the live clients may share this core, and their
    // threads poll.
    t.connect_all(1);
    let finished = Instant::now();
    control
        .storm_finished
        .set(finished)
        .expect("one storm a run");
    while !control.release.load(Ordering::SeqCst) {
        t.poll(1);
    }
    t.finished = true;
    let report = StormReport {
        connections: t.conns.len() as u64,
        concurrency: t.plan.connect_concurrency,
        warmup,
        connected: t.synced,
        failed: t.failed,
        dropped: t.dropped,
        started,
        elapsed: finished - started,
        first_error: t.first_error.clone(),
    };
    t.close_all();
    report
}

impl Thread {
    fn new(plan: Arc<Plan>, control: Arc<Control>, thread: usize) -> Thread {
        // SAFETY: epoll_create1 has no preconditions; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            epoll >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        let docs = (plan.docs + plan.threads - 1 - thread) / plan.threads;
        let count = docs * plan.clients_per_doc;
        let now = Instant::now();
        let mut t = Thread {
            plan: plan.clone(),
            control,
            thread,
            // SAFETY: a fresh descriptor we own.
            epoll: unsafe { OwnedFd::from_raw_fd(epoll) },
            peers: Vec::with_capacity(count),
            conns: (0..count)
                .map(|_| Conn {
                    socket: None,
                    phase: Phase::Waiting,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    tls: None,
                    wire: Vec::new(),
                    want_out: false,
                    connect_deadline: now,
                })
                .collect(),
            scratch: vec![0; READ_BYTES],
            next_connect: 0,
            in_flight: 0,
            synced: 0,
            failed: 0,
            first_error: None,
            measuring: false,
            finished: false,
            deliveries: 0,
            echoes: 0,
            dropped: 0,
            skipped: 0,
            latency: Latencies::new(),
            arrival: plan.arrival_stamps.then(Latencies::new),
            arrived: None,
            last_delivery: None,
            busy: Duration::ZERO,
        };
        for idx in 0..count {
            let peer = plan.peer(t.client_id(idx), t.doc_of(idx / plan.clients_per_doc));
            t.peers.push(peer);
        }
        t
    }

    fn docs(&self) -> usize {
        self.peers.len() / self.plan.clients_per_doc
    }

    /// The global document number of local document `j`.
    fn doc_of(&self, j: usize) -> usize {
        self.thread + j * self.plan.threads
    }

    /// Client ids are global and never 0: `doc * K + k + 1`.
    fn client_id(&self, idx: usize) -> u64 {
        let k = self.plan.clients_per_doc;
        (self.doc_of(idx / k) * k + idx % k + 1) as u64
    }

    fn local_index(&self, client_id: u64) -> Option<usize> {
        let k = self.plan.clients_per_doc;
        let global = (client_id as usize).checked_sub(1)?;
        let doc = global / k;
        (doc % self.plan.threads == self.thread)
            .then(|| (doc / self.plan.threads) * k + global % k)
            .filter(|&i| i < self.peers.len())
    }

    /// Connects every peer and waits until each has synced or failed, polling epoll with
    /// `wait_ms` (0: spin).
    fn connect_all(&mut self, wait_ms: i32) {
        let count = self.peers.len() as u64;
        let mut expiry_check = Instant::now();
        while self.synced + self.failed < count {
            self.start_connects();
            self.poll(wait_ms);
            if expiry_check.elapsed() > Duration::from_millis(100) {
                expiry_check = Instant::now();
                self.expire_handshakes();
            }
        }
    }

    fn run(mut self) -> ThreadReport {
        let control = self.control.clone();
        self.connect_all(0);
        control.ready.fetch_add(1, Ordering::SeqCst);
        while !control.go.load(Ordering::SeqCst) {
            self.poll(1);
        }
        let mut first_send = None;
        let (mut received_at_send_end, mut received_after_drain) = (Vec::new(), Vec::new());
        if self.plan.rate_per_client > 0.0 {
            let start = Instant::now();
            first_send = Some(start);
            let epoch = control.epoch.get().copied();
            for latencies in std::iter::once(&mut self.latency).chain(&mut self.arrival) {
                latencies.by_slot = epoch.map(|epoch| BySlot::new(epoch, LATENCY_US_MAX));
            }
            self.measuring = true;
            self.send_updates(start);
            received_at_send_end = self.received_shares();
            self.drain();
            received_after_drain = self.received_shares();
            self.measuring = false;
        }
        control.drained.fetch_add(1, Ordering::SeqCst);
        let (mut docs_checked, mut docs_diverged, mut lost_updates) = (0, 0, 0);
        if self.plan.rate_per_client > 0.0 {
            for j in 0..self.docs() {
                let (diverged, lost) = self.check_document(j);
                docs_checked += 1;
                docs_diverged += diverged as u64;
                lost_updates += lost;
            }
        }
        while !control.release.load(Ordering::SeqCst) {
            self.poll(1);
        }
        self.finished = true;
        let report = ThreadReport {
            connected: self.open_count(),
            connect_failures: self.failed,
            first_error: self.first_error.clone(),
            updates_sent: self.peers.iter().map(Peer::updates_sent).sum(),
            updates_skipped: self.skipped,
            expected_deliveries: self.expected_deliveries(),
            deliveries: self.deliveries,
            echoes: self.echoes,
            dropped: self.dropped,
            latency: std::mem::replace(&mut self.latency, Latencies::new()),
            arrival: self.arrival.take(),
            first_send,
            last_delivery: self.last_delivery,
            busy: self.busy,
            docs_checked,
            docs_diverged,
            lost_updates,
            received_at_send_end,
            received_after_drain,
        };
        self.close_all();
        report
    }

    /// Closes cleanly: the server sees a close frame rather than a reset.
    fn close_all(&mut self) {
        for idx in 0..self.conns.len() {
            if self.conns[idx].phase == Phase::Open {
                ws_client::push_frame(
                    &mut self.conns[idx].out,
                    Opcode::Close,
                    &1000u16.to_be_bytes(),
                );
                self.flush(idx);
            }
        }
    }

    /// For each connected peer, the share of its document's other live peers' updates it
    /// has received (1 where they sent none).
    fn received_shares(&self) -> Vec<f64> {
        let mut shares = Vec::with_capacity(self.peers.len());
        for j in 0..self.docs() {
            let live = self.live_peers(j);
            let sent: u64 = live.iter().map(|&i| self.peers[i].updates_sent()).sum();
            for &i in &live {
                let others = sent - self.peers[i].updates_sent();
                let received = self.peers[i].deliveries();
                shares.push(if others == 0 {
                    1.0
                } else {
                    received as f64 / others as f64
                });
            }
        }
        shares
    }

    fn open_count(&self) -> u64 {
        self.conns.iter().filter(|c| c.phase == Phase::Open).count() as u64
    }

    /// Every peer sends one update every `1 / rate` seconds, from an offset within one
    /// period set by the plan's phases, until the run's end.
    fn send_updates(&mut self, start: Instant) {
        let period = Duration::from_secs_f64(1.0 / self.plan.rate_per_client);
        let end = start + self.plan.duration;
        let phases = self.plan.phases;
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..self.conns.len())
            .filter(|&idx| self.conns[idx].phase == Phase::Open)
            .map(|idx| {
                let offset = phases.first_send_offset(idx, self.plan.clients_per_doc);
                Reverse((start + period.mul_f64(offset), idx))
            })
            .collect();
        while let Some(&Reverse((at, idx))) = due.peek() {
            if at > Instant::now() {
                self.poll(self.plan.live_wait_ms);
                continue;
            }
            let busy_from = Instant::now();
            due.pop();
            if self.conns[idx].phase == Phase::Open {
                let queued = self.conns[idx].out.len() + self.conns[idx].wire.len();
                if queued < OUT_BYTES_MAX {
                    let message = self.peers[idx].next_update(self.plan.update_bytes);
                    ws_client::push_frame(&mut self.conns[idx].out, Opcode::Binary, &message);
                    self.flush(idx);
                } else {
                    self.skipped += 1;
                }
                if at + period < end {
                    due.push(Reverse((at + period, idx)));
                }
            }
            self.busy += busy_from.elapsed();
        }
    }

    /// Waits for the deliveries still in flight.
    fn drain(&mut self) {
        let expected = self.expected_deliveries();
        let drain_start = Instant::now();
        let mut seen = (self.deliveries, drain_start);
        while self.deliveries < expected
            && seen.1.elapsed() < DRAIN_QUIET
            && drain_start.elapsed() < DRAIN_MAX
        {
            self.poll(self.plan.live_wait_ms);
            if self.deliveries != seen.0 {
                seen = (self.deliveries, Instant::now());
            }
        }
    }

    /// Every update reaches every other connected peer of its document.
    fn expected_deliveries(&self) -> u64 {
        (0..self.docs())
            .map(|j| {
                let live = self.live_peers(j);
                let sent: u64 = live.iter().map(|&i| self.peers[i].updates_sent()).sum();
                sent * (live.len() as u64).saturating_sub(1)
            })
            .sum()
    }

    fn live_peers(&self, j: usize) -> Vec<usize> {
        let k = self.plan.clients_per_doc;
        (j * k..(j + 1) * k)
            .filter(|&i| self.conns[i].phase == Phase::Open)
            .collect()
    }

    /// Whether local document `j` diverged between its connected peers, and how many
    /// updates they are missing in all.
    fn check_document(&mut self, j: usize) -> (bool, u64) {
        let live = self.live_peers(j);
        let sent: u64 = live.iter().map(|&i| self.peers[i].updates_sent()).sum();
        let mut views = Vec::with_capacity(live.len());
        for &i in &live {
            match self.peers[i].converged_items() {
                Ok(items) => views.push(items),
                Err(e) => {
                    self.first_error.get_or_insert(e);
                    views.push(Vec::new());
                }
            }
        }
        let lost = views
            .iter()
            .map(|v| sent.saturating_sub(v.len() as u64))
            .sum();
        (views.windows(2).any(|w| w[0] != w[1]), lost)
    }

    fn start_connects(&mut self) {
        let plan = self.plan.clone();
        while self.in_flight < plan.connect_concurrency && self.next_connect < self.conns.len() {
            let idx = self.next_connect;
            self.next_connect += 1;
            let source = (plan.sources > 1)
                .then(|| Ipv4Addr::new(127, 0, 0, 1 + (idx % plan.sources as usize) as u8));
            let connected = ws_client::connect(plan.target.addr, source).and_then(|socket| {
                if plan.arrival_stamps {
                    arrival::enable(socket.as_raw_fd())?;
                }
                Ok(socket)
            });
            match connected {
                Ok(socket) => {
                    let conn = &mut self.conns[idx];
                    conn.phase = Phase::Connecting;
                    conn.connect_deadline = Instant::now() + CONNECT_TIMEOUT;
                    self.epoll_ctl(libc::EPOLL_CTL_ADD, &socket, idx, true);
                    self.conns[idx].socket = Some(socket);
                    self.conns[idx].want_out = true;
                    self.in_flight += 1;
                }
                Err(e) => self.fail(idx, format!("connect: {e}")),
            }
        }
    }

    fn expire_handshakes(&mut self) {
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            if c.phase > Phase::Waiting && c.phase < Phase::Open && c.connect_deadline < now {
                self.close(idx, format!("no sync step 2 within {CONNECT_TIMEOUT:?}"));
            }
        }
    }

    fn fail(&mut self, idx: usize, error: String) {
        self.failed += 1;
        let doc = self
            .plan
            .doc_name(self.doc_of(idx / self.plan.clients_per_doc));
        self.first_error.get_or_insert(format!("{doc}: {error}"));
    }

    /// Ends connection `idx`: a failure before it synced, a drop after.
    fn close(&mut self, idx: usize, why: String) {
        let phase = self.conns[idx].phase;
        if phase == Phase::Closed {
            return;
        }
        self.conns[idx].phase = Phase::Closed;
        // Closing the socket removes it from epoll.
        self.conns[idx].socket = None;
        if phase < Phase::Open {
            self.in_flight -= 1;
            self.fail(idx, why);
        } else if !self.finished {
            self.dropped += 1;
            let doc = self
                .plan
                .doc_name(self.doc_of(idx / self.plan.clients_per_doc));
            self.first_error.get_or_insert(format!("{doc}: {why}"));
        }
    }

    fn epoll_ctl(&self, op: libc::c_int, socket: &Socket, idx: usize, want_out: bool) {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32
                | if want_out { libc::EPOLLOUT as u32 } else { 0 },
            u64: idx as u64,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, socket.as_raw_fd(), &mut event) };
        assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }

    fn set_want_out(&mut self, idx: usize, want_out: bool) {
        if self.conns[idx].want_out != want_out {
            if let Some(socket) = &self.conns[idx].socket {
                self.epoll_ctl(libc::EPOLL_CTL_MOD, socket, idx, want_out);
            }
            self.conns[idx].want_out = want_out;
        }
    }

    /// Handles whatever epoll reports within `timeout_ms`.
    fn poll(&mut self, timeout_ms: i32) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        // SAFETY: `events` has room for EVENTS_MAX entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_MAX as i32,
                timeout_ms,
            )
        };
        if n <= 0 {
            return;
        }
        let busy_from = Instant::now();
        for event in &events[..n as usize] {
            let (flags, idx) = (event.events, event.u64 as usize);
            self.on_event(idx, flags);
        }
        if self.measuring {
            self.busy += busy_from.elapsed();
        }
    }

    fn on_event(&mut self, idx: usize, flags: u32) {
        let phase = self.conns[idx].phase;
        if phase == Phase::Connecting {
            let error = self.conns[idx].socket.as_ref().map(Socket::take_error);
            match error {
                Some(Ok(None)) => {
                    self.conns[idx].phase = Phase::Upgrading;
                    if let Some((config, name)) = &self.plan.target.tls {
                        match rustls::ClientConnection::new(config.clone(), name.clone()) {
                            Ok(tls) => self.conns[idx].tls = Some(Box::new(tls)),
                            Err(e) => return self.close(idx, format!("tls: {e}")),
                        }
                    }
                    let doc = self.doc_of(idx / self.plan.clients_per_doc);
                    let path = self.plan.request_path(doc);
                    let request = ws_client::upgrade_request(&self.plan.target, &path);
                    self.conns[idx].out.extend_from_slice(&request);
                    self.flush(idx);
                }
                Some(Ok(Some(e)) | Err(e)) => self.close(idx, format!("connect: {e}")),
                None => {}
            }
            return;
        }
        if phase == Phase::Closed {
            return;
        }
        if flags & libc::EPOLLOUT as u32 != 0 {
            self.flush(idx);
        }
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            self.read(idx);
        }
    }

    /// Reads everything the socket has, then handles it.
    fn read(&mut self, idx: usize) {
        self.arrived = None;
        loop {
            let Some(socket) = &self.conns[idx].socket else {
                return;
            };
            let n = match arrival::recv(socket.as_raw_fd(), &mut self.scratch) {
                Ok((0, _)) => {
                    self.handle_input(idx);
                    return self.close(idx, "the server closed the connection".into());
                }
                Ok((n, arrived)) => {
                    // The latest stamp: every frame this read completes is dated by it.
                    self.arrived = arrived.max(self.arrived);
                    n
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return self.close(idx, format!("read: {e}")),
            };
            let conn = &mut self.conns[idx];
            let received = &self.scratch[..n];
            match conn.tls.as_mut() {
                None => conn.inbuf.extend_from_slice(received),
                Some(tls) => {
                    if let Err(e) = decrypt(tls, received, &mut conn.inbuf) {
                        return self.close(idx, format!("tls: {e}"));
                    }
                }
            }
            if n < self.scratch.len() {
                break;
            }
        }
        self.handle_input(idx);
    }

    fn handle_input(&mut self, idx: usize) {
        let mut inbuf = std::mem::take(&mut self.conns[idx].inbuf);
        let result = self.handle_bytes(idx, &mut inbuf);
        inbuf.shrink_to(READ_BYTES / 4);
        self.conns[idx].inbuf = inbuf;
        match result {
            Ok(()) => {
                if self.conns[idx].phase == Phase::Syncing && self.peers[idx].synced.get() {
                    self.conns[idx].phase = Phase::Open;
                    self.in_flight -= 1;
                    self.synced += 1;
                }
                self.flush(idx);
            }
            Err(e) => self.close(idx, e),
        }
    }

    /// Handles the upgrade response and every whole frame in `inbuf`, keeping the rest.
    fn handle_bytes(&mut self, idx: usize, inbuf: &mut Vec<u8>) -> Result<(), String> {
        if self.conns[idx].phase == Phase::Upgrading {
            let Some(head_len) = ws_client::upgrade_response(inbuf)? else {
                return Ok(());
            };
            inbuf.drain(..head_len);
            self.conns[idx].phase = Phase::Syncing;
            for message in self.peers[idx].hello() {
                ws_client::push_frame(&mut self.conns[idx].out, Opcode::Binary, &message);
            }
        }
        let mut at = 0;
        while let Some(frame) = parse_server_frame(&inbuf[at..])? {
            let end = at + frame.header_len + frame.payload_len;
            if end > inbuf.len() {
                break;
            }
            let payload = &inbuf[at + frame.header_len..end];
            if !frame.fin || frame.opcode == Opcode::Continuation {
                return Err("the server fragmented a message (not supported here)".into());
            }
            match frame.opcode {
                Opcode::Binary => self.on_message(idx, payload)?,
                Opcode::Ping => {
                    ws_client::push_frame(&mut self.conns[idx].out, Opcode::Pong, payload)
                }
                Opcode::Close => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                    return Err(format!("closed by the server: {code:?} {reason}"));
                }
                Opcode::Text | Opcode::Pong | Opcode::Continuation => {}
            }
            at = end;
        }
        inbuf.drain(..at);
        Ok(())
    }

    fn on_message(&mut self, idx: usize, payload: &[u8]) -> Result<(), String> {
        match self.peers[idx].on_message(payload)? {
            Incoming::Delivery { author, clock } => {
                if self.measuring {
                    let now = Instant::now();
                    self.deliveries += 1;
                    self.last_delivery = Some(now);
                    let sent = self
                        .local_index(author)
                        .and_then(|i| self.peers[i].sent_at(clock));
                    if let Some(sent) = sent {
                        let window = self.control.window(sent);
                        let us =
                            |at: Instant| at.saturating_duration_since(sent).as_micros() as u64;
                        self.latency.record(window, sent, us(now));
                        if let (Some(arrival), Some(arrived)) = (&mut self.arrival, self.arrived) {
                            arrival.record(window, sent, us(arrived));
                        }
                    }
                }
            }
            Incoming::Echo => self.echoes += 1,
            Incoming::Reply(reply) => {
                ws_client::push_frame(&mut self.conns[idx].out, Opcode::Binary, &reply)
            }
            Incoming::Other => {}
        }
        Ok(())
    }

    /// Sends what `idx` has queued; what the socket does not take waits for writability.
    fn flush(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        if let Some(tls) = conn.tls.as_mut() {
            if let Err(e) = encrypt(tls, &mut conn.out, &mut conn.wire) {
                return self.close(idx, format!("tls: {e}"));
            }
        }
        loop {
            let conn = &self.conns[idx];
            let out = if conn.tls.is_some() {
                &conn.wire
            } else {
                &conn.out
            };
            if out.is_empty() {
                break;
            }
            let Some(socket) = &conn.socket else {
                return;
            };
            // SAFETY: `out` is valid for its length; the socket is open.
            let n = unsafe {
                libc::send(
                    socket.as_raw_fd(),
                    out.as_ptr() as *const libc::c_void,
                    out.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return self.set_want_out(idx, true);
                }
                return self.close(idx, format!("send: {e}"));
            }
            let conn = &mut self.conns[idx];
            match conn.tls {
                Some(_) => conn.wire.drain(..n as usize),
                None => conn.out.drain(..n as usize),
            };
        }
        self.set_want_out(idx, false);
    }
}

/// Feeds ciphertext the server sent to `tls`, appending what it decrypts to `plain`.
fn decrypt(
    tls: &mut rustls::ClientConnection,
    mut received: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), String> {
    use std::io::Read;
    while !received.is_empty() {
        tls.read_tls(&mut received).map_err(|e| e.to_string())?;
        tls.process_new_packets().map_err(|e| e.to_string())?;
        match tls.reader().read_to_end(plain) {
            Ok(_) => return Err("the server closed the TLS session".into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Moves the plaintext in `out` into `tls` (held until its handshake is done) and what it
/// has to send onto `wire`.
fn encrypt(
    tls: &mut rustls::ClientConnection,
    out: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) -> Result<(), String> {
    use std::io::Write;
    if !out.is_empty() {
        tls.writer().write_all(out).map_err(|e| e.to_string())?;
        out.clear();
    }
    while tls.wants_write() {
        tls.write_tls(wire).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_gives_a_documents_clients_one_offset_and_spread_distinct_ones() {
        let k = 4;
        let offsets = |phases: Phases, doc: usize| -> Vec<f64> {
            (doc * k..(doc + 1) * k)
                .map(|idx| phases.first_send_offset(idx, k))
                .collect()
        };
        let mut burst_by_doc = Vec::new();
        for doc in 0..5 {
            let burst = offsets(Phases::Burst, doc);
            assert!(burst.iter().all(|&o| o == burst[0]), "{burst:?}");
            burst_by_doc.push(burst[0]);
            let spread = offsets(Phases::Spread, doc);
            for (a, &x) in spread.iter().enumerate() {
                assert!((0.0..1.0).contains(&x));
                assert!(
                    spread[a + 1..].iter().all(|&y| (x - y).abs() > 0.01),
                    "{spread:?}"
                );
            }
        }
        // Documents still start apart from each other.
        for (a, &x) in burst_by_doc.iter().enumerate() {
            assert!(
                burst_by_doc[a + 1..].iter().all(|&y| x != y),
                "{burst_by_doc:?}"
            );
        }
    }

    #[test]
    fn storm_connections_take_the_tokens_in_turn() {
        let plan = Plan {
            target: ws_client::Target::parse("ws://127.0.0.1:1/{doc}?token={token}", None).unwrap(),
            docs: 3,
            clients_per_doc: 1,
            rate_per_client: 0.0,
            duration: Duration::ZERO,
            update_bytes: 0,
            sources: 1,
            threads: 1,
            doc_prefix: "s".into(),
            connect_concurrency: 1,
            phases: Phases::Spread,
            editing: Editing::default(),
            framing: Framing::YWebsocket,
            tokens: vec!["a".into(), "b".into()],
            live_wait_ms: 0,
            arrival_stamps: false,
        };
        let paths: Vec<String> = (0..3).map(|doc| plan.path(doc)).collect();
        assert_eq!(paths, ["/s-0?token=a", "/s-1?token=b", "/s-2?token=a"]);
        // The Hocuspocus framing requests `/`; the document and token go in the messages.
        let hocuspocus = Plan {
            framing: Framing::Hocuspocus,
            ..plan
        };
        assert_eq!(hocuspocus.request_path(1), "/");
        assert_eq!(query_token(&hocuspocus.path(1)), Some("b"));
        assert_eq!(query_token("/d?x=1&token=jwt&y=2"), Some("jwt"));
        assert_eq!(query_token("/d?tokens=no"), None);
    }

    #[test]
    fn a_send_falls_before_during_or_after_the_storm() {
        let control = Control::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(control.window(at(5)), Window::Before);
        control.storm_started.set(at(10)).unwrap();
        assert_eq!(control.window(at(5)), Window::Before);
        // Storm still running: anything sent since it started is during it.
        assert_eq!(control.window(at(50)), Window::During);
        control.storm_finished.set(at(20)).unwrap();
        assert_eq!(control.window(at(10)), Window::During);
        assert_eq!(control.window(at(19)), Window::During);
        assert_eq!(control.window(at(20)), Window::After);
    }
}
