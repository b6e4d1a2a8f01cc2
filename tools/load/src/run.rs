//! One run: every peer connects and syncs, then (unless idle) sends updates at a fixed rate
//! until the deadline; the run waits for the last delivery and checks that every document
//! converged. One glommio executor per thread; all peers of a document live on one thread,
//! so send times and deliveries are matched without crossing threads.

use crate::peer::{Incoming, Peer};
use crate::ws_client::{parse_server_frame, Connection, Target};
use futures_lite::future;
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiresocket::ws::frame::Opcode;

/// glommio's registered-buffer pool per thread (memlock is small on these machines).
const IO_MEMORY_BYTES: usize = 256 << 10;
/// The generator spins rather than sleeps between events: on loopback a sleeping reader
/// makes every server send pay for a cross-core wakeup (an IPI, dear in a VM) that a real
/// network card would absorb, and the measurement would charge it to the server.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(100);
/// Bytes one read takes from a socket.
const READ_BYTES: usize = 64 << 10;
/// A peer that has not finished its handshake and sync step 2 by then counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// After sending stops, deliveries still missing are waited for this long without
/// progress, then counted as lost.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// An overloaded server may still be delivering slowly: stop waiting after this long.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Latencies are recorded in microseconds, up to a minute.
const LATENCY_US_MAX: u64 = 60_000_000;

pub struct Plan {
    pub target: Target,
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
}

impl Plan {
    pub fn doc_name(&self, doc: usize) -> String {
        format!("{}-{doc}", self.doc_prefix)
    }
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
}

pub struct ThreadReport {
    pub connected: u64,
    pub connect_failures: u64,
    pub first_error: Option<String>,
    pub updates_sent: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub echoes: u64,
    /// Connections the server closed while the run was live.
    pub dropped: u64,
    pub latency_us: Histogram<u64>,
    pub first_send: Option<Instant>,
    pub last_delivery: Option<Instant>,
    pub docs_checked: u64,
    pub docs_diverged: u64,
    pub lost_updates: u64,
}

/// This thread's share: documents `thread, thread + threads, ...`, each with all its peers.
struct Local {
    plan: Arc<Plan>,
    thread: usize,
    peers: Vec<Peer>,
    conns: RefCell<Vec<Option<Rc<Connection>>>>,
    scratch: RefCell<Vec<u8>>,
    synced: Cell<u64>,
    failed: Cell<u64>,
    first_error: RefCell<Option<String>>,
    measuring: Cell<bool>,
    finished: Cell<bool>,
    deliveries: Cell<u64>,
    echoes: Cell<u64>,
    dropped: Cell<u64>,
    latency_us: RefCell<Histogram<u64>>,
    last_delivery: Cell<Option<Instant>>,
}

impl Local {
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

    fn fail(&self, error: String) {
        self.failed.set(self.failed.get() + 1);
        self.first_error.borrow_mut().get_or_insert(error);
    }
}

pub fn thread_main(plan: Arc<Plan>, control: Arc<Control>, thread: usize) -> ThreadReport {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("load-{thread}"))
        .io_memory(IO_MEMORY_BYTES)
        .spin_before_park(SPIN_BEFORE_PARK)
        .make()
        .expect("a glommio executor (is memlock at least 1 MiB?)")
        .run(run_thread(plan, control, thread))
}

async fn run_thread(plan: Arc<Plan>, control: Arc<Control>, thread: usize) -> ThreadReport {
    let docs = (plan.docs + plan.threads - 1 - thread) / plan.threads;
    let count = docs * plan.clients_per_doc;
    let mut local = Local {
        plan: plan.clone(),
        thread,
        peers: Vec::with_capacity(count),
        conns: RefCell::new(vec![None; count]),
        scratch: RefCell::new(vec![0; READ_BYTES]),
        synced: Cell::new(0),
        failed: Cell::new(0),
        first_error: RefCell::new(None),
        measuring: Cell::new(false),
        finished: Cell::new(false),
        deliveries: Cell::new(0),
        echoes: Cell::new(0),
        dropped: Cell::new(0),
        latency_us: RefCell::new(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap()),
        last_delivery: Cell::new(None),
    };
    for idx in 0..count {
        local.peers.push(Peer::new(local.client_id(idx)));
    }
    let local = Rc::new(local);

    let permits = Rc::new(Semaphore::new(plan.connect_concurrency as u64));
    for idx in 0..count {
        glommio::spawn_local(peer_task(local.clone(), idx, permits.clone())).detach();
    }
    while local.synced.get() + local.failed.get() < count as u64 {
        sleep(Duration::from_millis(5)).await;
    }
    control.ready.fetch_add(1, Ordering::SeqCst);
    while !control.go.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(1)).await;
    }

    let mut first_send = None;
    if plan.rate_per_client > 0.0 {
        let start = Instant::now();
        first_send = Some(start);
        local.measuring.set(true);
        let writers: Vec<_> = (0..count)
            .filter(|&idx| local.conns.borrow()[idx].is_some())
            .map(|idx| glommio::spawn_local(writer(local.clone(), idx, start)))
            .collect();
        for w in writers {
            w.await;
        }
        let expected = expected_deliveries(&local);
        let drain_start = Instant::now();
        let mut seen = (local.deliveries.get(), drain_start);
        while local.deliveries.get() < expected
            && seen.1.elapsed() < DRAIN_QUIET
            && drain_start.elapsed() < DRAIN_MAX
        {
            sleep(Duration::from_millis(10)).await;
            if local.deliveries.get() != seen.0 {
                seen = (local.deliveries.get(), Instant::now());
            }
        }
        local.measuring.set(false);
    }
    control.drained.fetch_add(1, Ordering::SeqCst);

    let (mut docs_checked, mut docs_diverged, mut lost_updates) = (0, 0, 0);
    if plan.rate_per_client > 0.0 {
        for j in 0..local.docs() {
            let (diverged, lost) = check_document(&local, j);
            docs_checked += 1;
            docs_diverged += diverged as u64;
            lost_updates += lost;
        }
    }
    while !control.release.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(5)).await;
    }
    local.finished.set(true);
    let connected = local.conns.borrow().iter().filter(|c| c.is_some()).count() as u64;
    let expected = expected_deliveries(&local);
    let report = ThreadReport {
        connected,
        connect_failures: local.failed.get(),
        first_error: local.first_error.borrow().clone(),
        updates_sent: local.peers.iter().map(Peer::updates_sent).sum(),
        expected_deliveries: expected,
        deliveries: local.deliveries.get(),
        echoes: local.echoes.get(),
        dropped: local.dropped.get(),
        latency_us: local.latency_us.borrow().clone(),
        first_send,
        last_delivery: local.last_delivery.get(),
        docs_checked,
        docs_diverged,
        lost_updates,
    };
    // Close every connection before the executor goes: the server sees clean ends.
    let conns: Vec<_> = local
        .conns
        .borrow_mut()
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    for conn in conns {
        let _ = conn.send(Opcode::Close, &1000u16.to_be_bytes()).await;
    }
    report
}

/// Every update reaches every other connected peer of its document.
fn expected_deliveries(local: &Local) -> u64 {
    let k = local.plan.clients_per_doc;
    let conns = local.conns.borrow();
    (0..local.docs())
        .map(|j| {
            let live: Vec<usize> = (j * k..(j + 1) * k)
                .filter(|&i| conns[i].is_some())
                .collect();
            let sent: u64 = live.iter().map(|&i| local.peers[i].updates_sent()).sum();
            sent * (live.len() as u64).saturating_sub(1)
        })
        .sum()
}

/// Whether local document `j` diverged between its connected peers, and how many updates
/// the peers are missing in all.
fn check_document(local: &Local, j: usize) -> (bool, u64) {
    let k = local.plan.clients_per_doc;
    let conns = local.conns.borrow();
    let live: Vec<usize> = (j * k..(j + 1) * k)
        .filter(|&i| conns[i].is_some())
        .collect();
    let sent: u64 = live.iter().map(|&i| local.peers[i].updates_sent()).sum();
    let mut views = Vec::with_capacity(live.len());
    for &i in &live {
        match local.peers[i].converged_items() {
            Ok(items) => views.push(items),
            Err(e) => {
                local.first_error.borrow_mut().get_or_insert(e);
                views.push(Vec::new());
            }
        }
    }
    let lost = views
        .iter()
        .map(|v| sent.saturating_sub(v.len() as u64))
        .sum();
    let diverged = views.windows(2).any(|w| w[0] != w[1]);
    (diverged, lost)
}

async fn peer_task(local: Rc<Local>, idx: usize, permits: Rc<Semaphore>) {
    let permit = permits
        .acquire_permit(1)
        .await
        .expect("the semaphore stays open");
    let plan = &local.plan;
    let doc = plan.doc_name(local.doc_of(idx / plan.clients_per_doc));
    let source = (plan.sources > 1)
        .then(|| Ipv4Addr::new(127, 0, 0, 1 + (idx % plan.sources as usize) as u8));
    let peer = &local.peers[idx];
    let timeout = async {
        sleep(CONNECT_TIMEOUT).await;
        Err(format!("no sync step 2 within {CONNECT_TIMEOUT:?}"))
    };
    let opened = future::or(
        async {
            let (conn, leftover) = Connection::open(&plan.target, &doc, source).await?;
            conn.send(Opcode::Binary, &peer.sync_step1())
                .await
                .map_err(|e| format!("send sync step 1: {e}"))?;
            let mut pending = leftover;
            while !peer.synced.get() {
                read_some(&conn, &local, &mut pending).await?;
                handle_frames(&local, idx, &conn, &mut pending).await?;
            }
            Ok((conn, pending))
        },
        timeout,
    )
    .await;
    let (conn, mut pending) = match opened {
        Ok(opened) => opened,
        Err(e) => return local.fail(format!("{doc}: {e}")),
    };
    local.conns.borrow_mut()[idx] = Some(conn.clone());
    local.synced.set(local.synced.get() + 1);
    drop(permit);
    let ended = loop {
        if let Err(e) = read_some(&conn, &local, &mut pending).await {
            break e;
        }
        if let Err(e) = handle_frames(&local, idx, &conn, &mut pending).await {
            break e;
        }
    };
    if !local.finished.get() {
        local.dropped.set(local.dropped.get() + 1);
        local
            .first_error
            .borrow_mut()
            .get_or_insert(format!("{doc}: {ended}"));
    }
}

/// Appends what the socket has to `pending`.
async fn read_some(conn: &Connection, local: &Local, pending: &mut Vec<u8>) -> Result<(), String> {
    let n = conn
        .read_with(&local.scratch)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection".into());
    }
    pending.extend_from_slice(&local.scratch.borrow()[..n]);
    Ok(())
}

/// Handles every whole frame in `pending` and keeps the rest.
async fn handle_frames(
    local: &Local,
    idx: usize,
    conn: &Connection,
    pending: &mut Vec<u8>,
) -> Result<(), String> {
    let mut at = 0;
    while let Some(frame) = parse_server_frame(&pending[at..])? {
        let end = at + frame.header_len + frame.payload_len;
        if end > pending.len() {
            break;
        }
        let payload = &pending[at + frame.header_len..end];
        if !frame.fin || frame.opcode == Opcode::Continuation {
            return Err("the server fragmented a message (not supported here)".into());
        }
        match frame.opcode {
            Opcode::Binary => {
                if let Some(reply) = on_message(local, idx, payload)? {
                    conn.send(Opcode::Binary, &reply)
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                }
            }
            Opcode::Ping => {
                let payload = payload.to_vec();
                conn.send(Opcode::Pong, &payload)
                    .await
                    .map_err(|e| format!("pong: {e}"))?;
            }
            Opcode::Close => {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                return Err(format!("closed by the server: {code:?} {reason}"));
            }
            Opcode::Text | Opcode::Pong | Opcode::Continuation => {}
        }
        at = end;
    }
    pending.drain(..at);
    if pending.capacity() > READ_BYTES && pending.len() < READ_BYTES / 4 {
        pending.shrink_to(READ_BYTES / 4);
    }
    Ok(())
}

fn on_message(local: &Local, idx: usize, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match local.peers[idx].on_message(payload)? {
        Incoming::Delivery { author, clock } => {
            let now = Instant::now();
            if local.measuring.get() {
                local.deliveries.set(local.deliveries.get() + 1);
                local.last_delivery.set(Some(now));
                let sent = local
                    .local_index(author)
                    .and_then(|i| local.peers[i].sent_at(clock));
                if let Some(sent) = sent {
                    let us = now.duration_since(sent).as_micros() as u64;
                    local.latency_us.borrow_mut().saturating_record(us.max(1));
                }
            }
            Ok(None)
        }
        Incoming::Echo => {
            local.echoes.set(local.echoes.get() + 1);
            Ok(None)
        }
        Incoming::Reply(reply) => Ok(Some(reply)),
        Incoming::Other => Ok(None),
    }
}

/// Sends updates every `1 / rate` seconds from a per-peer offset until the run ends.
async fn writer(local: Rc<Local>, idx: usize, start: Instant) {
    let plan = &local.plan;
    let period = Duration::from_secs_f64(1.0 / plan.rate_per_client);
    let end = start + plan.duration;
    // Spread the peers' sends evenly over one period (a fixed stride, not random, so runs
    // repeat).
    let offset = (idx as f64 * 0.618_033_988_75).fract();
    let mut due = start + period.mul_f64(offset);
    let Some(conn) = local.conns.borrow()[idx].clone() else {
        return;
    };
    while due < end {
        let now = Instant::now();
        if due > now {
            sleep(due - now).await;
        }
        let message = local.peers[idx].next_update(plan.update_bytes);
        if conn.send(Opcode::Binary, &message).await.is_err() {
            return;
        }
        due += period;
    }
}
