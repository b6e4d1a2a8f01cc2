//! A shard's long-lived tasks: its start (listener, mesh, the tasks below), the accept loop
//! (the only code that starts admissions, `router::serve`), the mesh receivers (handoffs,
//! links), the drain, the node heartbeat and the keepalive sweep.

use super::mesh::Mesh;
use super::shard::{spawn_detached, Liveness, Shard, Stamp, Taken};
use super::shared::Shared;
use super::stats::{self, ShardStats};
use crate::refusal::Refusal;
use crate::registry::Unavailable;
use crate::webhook::delivery::Fate;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct Setup {
    pub addr: SocketAddr,
    /// The node's first listening socket, already bound to `addr`: one shard takes it, the
    /// others bind beside it. Holding it from the start leaves no moment in which the
    /// resolved port is free for another process to take.
    pub first_listener: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
    pub shared: Arc<Shared>,
    pub shards: usize,
    pub stats: Arc<[ShardStats]>,
    pub mesh: MeshBuilder<Mesh, Full>,
    pub ready: mpsc::Sender<Result<(), String>>,
    /// What the admin listener asks of the shards.
    pub jobs: Arc<super::operator::ShardJobs>,
}

pub async fn run(setup: Setup) {
    let Setup {
        addr,
        first_listener,
        shared,
        shards,
        stats,
        mesh,
        ready,
        jobs,
    } = setup;
    let taken = first_listener.lock().expect("listener lock").take();
    let bound = match taken {
        // SAFETY: a listening socket the node created and handed to this shard alone.
        Some(socket) => Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) }),
        None => {
            listen(addr).map(|socket| unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
        }
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
            return;
        }
    };
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot join the shard mesh: {e}")));
            return;
        }
    };
    let id = senders.peer_id();
    let shard = Rc::new(Shard::new(
        id,
        shared,
        shards,
        stats,
        senders,
        admission_queue(),
        sessions_queue(),
    ));
    let members = Rc::new(super::link::Members::default());
    for (_, receiver) in receivers.streams() {
        let (shard, members, queue) = (shard.clone(), members.clone(), shard.session_queue);
        let receive = async move {
            while let Some(message) = receiver.recv().await {
                let handoff = match message {
                    Mesh::Handoff(handoff) => handoff,
                    Mesh::Link(link) => {
                        super::link::receive(&shard, &members, link);
                        continue;
                    }
                };
                // SAFETY: the fd was dup'ed for us by the sending shard and is owned here.
                let stream = unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) };
                stats::add(&shard.my_stats().handoffs_total, 1);
                let handed = super::router::serve_handed(shard.clone(), stream, handoff.handed);
                admit_later(&shard, handed);
            }
        };
        spawn_detached(queue, receive);
    }
    glommio::spawn_local(keepalive(shard.clone())).detach();
    glommio::spawn_local(super::operator::serve_jobs(shard.clone(), jobs)).detach();
    glommio::spawn_local(send_debounced(shard.clone())).detach();
    super::link::start(&shard);
    spawn_integration(&shard);
    if shard.id == 0 {
        // Before the node says it is ready: it does not admit what is already revoked.
        read_operator_state(&shard).await;
        glommio::spawn_local(heartbeat(shard.clone())).detach();
        glommio::spawn_local(sync_ops(shard.clone())).detach();
    }
    let _ = ready.send(Ok(()));
    // While draining the listener stays open, so that health checks see 503 and new
    // upgrades are refused with 503, until the drain is done.
    let drained = async {
        while !shard.shared.draining() {
            sleep(Duration::from_millis(50)).await;
        }
        drain(&shard).await;
    };
    // Accepting runs on the admission queue (see `accept_loop`); dropping the task ends it,
    // with the listener.
    let accepting = {
        let (accepter, queue) = (shard.clone(), shard.admission_queue);
        glommio::spawn_local_into(
            async move { accept_loop(&accepter, &listener).await },
            queue,
        )
        .expect("the admission task queue lives as long as the shard")
    };
    drained.await;
    drop(accepting);
}

/// Runs a connection's admission as a task on the admission queue (see `router::serve`).
fn admit_later<F: std::future::Future<Output = ()> + 'static>(shard: &Shard, serve: F) {
    // Checked when built: a change that makes it larger fails the build.
    const { assert!(std::mem::size_of::<F>() <= ADMISSION_FUTURE_BYTES_MAX) };
    spawn_detached(shard.admission_queue, serve);
}

/// What an admission's task may hold inline: a storm's admissions in flight are counted by
/// the thousand. 5,584 bytes plain and 6,104 over TLS; it was 23,264 while the wrappers
/// around it were `async fn`s, each of which holds the future it is given twice (see
/// `contain::future`).
const ADMISSION_FUTURE_BYTES_MAX: usize = 8 << 10;

/// A task queue for the work of serving connections: sessions and the mesh's relays, and
/// at a quarter of their shares the work that must not hold them up (admissions,
/// integration), so when both have work sessions get four fifths of the core.
///
/// glommio looks at its sockets only between runs of task queues, and a run lasts until no
/// queue has a task left or the preemption timer fires. It arms that timer when it polls,
/// for the shortest period asked by the queues active then, and a queue woken during the
/// run runs under it. With the sessions on glommio's default queue (100 ms), admissions
/// woken while sessions ran went on for 2-11 ms in a storm, and the storm's sessions moving
/// to their queue all at once for 75 ms, live reads unseen (BENCHMARKS.md, "The preemption
/// timer"). So every serving queue asks for a period: `SESSION_PERIOD` bounds what runs
/// while sessions do, and admissions and integration ask for `PREEMPT_PERIOD` when the poll
/// finds them waiting. (A session moves off the admission queue at its first wake after
/// its joining phase, `router::start_session`, so a storm's moves are spread out.)
/// The default queue keeps the shard's start and housekeeping, so a shard starting up runs
/// under the long period: glommio parks with tasks still runnable if its timer fires before
/// the first of them runs (the machine took the core away), and until a first timer of the
/// shard's is armed nothing would wake it.
fn serving_queue(name: &str, shares: usize, period: Duration) -> glommio::TaskQueueHandle {
    glommio::executor().create_task_queue(
        glommio::Shares::Static(shares),
        glommio::Latency::Matters(period),
        name,
    )
}

/// The sessions' queue, on the calling executor. (Public for the load generator's relay
/// floor, which measures the runtime as the sessions run on it.)
pub fn sessions_queue() -> glommio::TaskQueueHandle {
    serving_queue("sessions", SESSION_SHARES, SESSION_PERIOD)
}

/// The admissions' queue, on the calling executor.
fn admission_queue() -> glommio::TaskQueueHandle {
    serving_queue("admission", BACKGROUND_SHARES, PREEMPT_PERIOD)
}

/// As glommio's default queue.
const SESSION_SHARES: usize = 1_000;
const BACKGROUND_SHARES: usize = 250;

/// How long admissions and integration run before the shard looks at its sockets again.
const PREEMPT_PERIOD: Duration = Duration::from_millis(1);
/// And anything while sessions run: longer than the kernel's tick (4 ms at 250 Hz), so
/// arming it does not rewrite the CPU's timer register, which a 1 ms period did on most
/// polls (an exit to the hypervisor in a VM: 12 % of the light load's CPU on this
/// project's VM, BENCHMARKS.md).
const SESSION_PERIOD: Duration = Duration::from_millis(5);

/// Integration on its own background queue (see `server::integrate`).
fn spawn_integration(shard: &Rc<Shard>) {
    let shard = shard.clone();
    spawn_detached(
        serving_queue("integrate", BACKGROUND_SHARES, PREEMPT_PERIOD),
        async move { shard.integrator.run(shard.my_stats()).await },
    );
}

/// A listening socket shared by every shard through SO_REUSEPORT. SO_REUSEADDR as well, so
/// that a restarted server can bind while old connections sit in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket)
}

/// Accepts connections and starts each one's admission. On the admission queue, and giving
/// way once its preemption period (1 ms) is over: while the backlog holds connections,
/// `accept` never waits, so without that a storm kept the loop accepting for tens of
/// milliseconds, live reads unseen meanwhile.
async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::yield_if_needed().await;
                let _ = stream.set_nodelay(true);
                stats::add(&shard.my_stats().connections_accepted_total, 1);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.ip())
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                if shard.shared.tls.is_some() {
                    admit_later(shard, super::tls::serve(shard.clone(), stream, peer));
                } else {
                    admit_later(shard, super::router::serve(shard.clone(), stream, peer));
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, back off, keep serving.
                crate::log::warn("accept_failed", &[("shard", &shard.id), ("error", &e)]);
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The shard's part of a drain: new upgrades are refused (see the router), sessions get
/// `drain_timeout_ms` to end on their own, the rest are closed with 1012 (service restart)
/// so clients reconnect elsewhere, and the pins of this shard's documents are released at
/// once (no grace period) so another node can take them.
async fn drain(shard: &Rc<Shard>) {
    let deadline = Instant::now() + Duration::from_millis(shard.config().node.drain_timeout_ms);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(50)).await;
    }
    let (code, reason) = Refusal::Restart.close();
    for live in shard.conns.borrow().values() {
        live.outbox.close(code, &reason);
    }
    let close_deadline =
        Instant::now() + Duration::from_millis(shard.config().websocket.close_timeout_ms * 2);
    while !shard.conns.borrow().is_empty() && Instant::now() < close_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    // Each release is bounded by the registry deadline.
    while shard.releases_in_flight.get() > 0 {
        sleep(Duration::from_millis(10)).await;
    }
    // A claim still in flight (a registry call, a load hook) makes its room after this:
    // waited for, within the drain timeout, so its session.ended is not missed.
    let claims_deadline =
        Instant::now() + Duration::from_millis(shard.config().node.drain_timeout_ms);
    while shard.rooms.claims_in_flight() && Instant::now() < claims_deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let rooms = shard.rooms.take_live();
    // The apps get every final state they asked for before the pins go, within the drain
    // timeout; what they could not take is logged with its document.
    let until = Instant::now() + Duration::from_millis(shard.config().node.drain_timeout_ms);
    while Instant::now() < until
        && rooms
            .iter()
            .any(|(_, _, r)| r.as_ref().is_some_and(|r| r.fate() == Fate::Waiting))
    {
        sleep(Duration::from_millis(20)).await;
    }
    for (key, app, receipt) in rooms {
        if receipt.is_some_and(|r| r.fate() != Fate::Delivered) {
            crate::log::event(
                "error",
                "session_end_not_delivered",
                &[
                    ("document", &key),
                    (
                        "note",
                        &"the node drained before the app took session.ended",
                    ),
                ],
            );
        }
        shard.rooms.release_pin(&key, &app).await;
        stats::sub(&shard.my_stats().documents, 1);
    }
    crate::log::info("shard_drained", &[("shard", &shard.id)]);
}

/// Sends the rooms' debounced webhooks (`document.changed`, `presence.changed`) as their
/// waits end.
async fn send_debounced(shard: Rc<Shard>) {
    loop {
        sleep(super::rooms::CHANGE_TICK).await;
        let rooms = &shard.rooms;
        super::contain::call(shard.my_stats(), "debounced_webhooks", || {
            rooms.send_debounced()
        });
    }
}

/// Tells the registry this node is alive and what it holds, every
/// `node.heartbeat_interval_ms`.
async fn heartbeat(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.config().node.heartbeat_interval_ms);
    loop {
        let registry = &shard.shared.registry;
        let held = shard.shared.held.all();
        if let Err(Unavailable(why)) = registry
            .heartbeat(&shard.shared.node, &held, crate::log::unix_ms())
            .await
        {
            crate::log::warn("heartbeat_failed", &[("error", &why)]);
        }
        read_operator_state(&shard).await;
        sleep(every).await;
    }
}

/// How often the node publishes its update counts and reads the region's (`opsPerMinute`).
const OPS_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes this node's update counts per app and reads the other nodes' (see
/// `Registry::sync_ops`), every [`OPS_SYNC_INTERVAL`].
async fn sync_ops(shard: Rc<Shard>) {
    loop {
        sleep(OPS_SYNC_INTERVAL).await;
        let registry = &shard.shared.registry;
        let synced = registry
            .sync_ops(&shard.shared.node, crate::log::unix_ms())
            .await;
        if let Err(Unavailable(why)) = synced {
            crate::log::warn("ops_sync_failed", &[("error", &why)]);
        }
    }
}

/// Reads what operators changed from the registry, the revocations in force and rotated
/// client secrets: those made on any node reach this one here (its shards close what a
/// revocation cuts off when they see the change). If the registry does not answer, what was
/// last read stays.
async fn read_operator_state(shard: &Shard) {
    let revoked = &shard.shared.revoked;
    let read = revoked.begin_read();
    match shard.shared.registry.revocations().await {
        Ok(list) => {
            revoked.replace(read, list);
        }
        Err(Unavailable(why)) => {
            crate::log::warn("revocations_unread", &[("error", &why)]);
        }
    }
    match shard.shared.registry.client_secrets().await {
        Ok(list) => shard
            .shared
            .directory()
            .set_rotated_secrets(list.into_iter().collect()),
        Err(Unavailable(why)) => {
            crate::log::warn("client_secrets_unread", &[("error", &why)]);
        }
    }
}

/// Pings connections that have been quiet for a ping interval, closes those quiet past the
/// idle timeout, and shuts down sockets whose peer has not taken its close frame within the
/// close timeout (a peer that stopped reading): one sweep over the shard's connections
/// instead of timers per connection.
async fn keepalive(shard: Rc<Shard>) {
    let ws = &shard.config().websocket;
    let ping_every = Duration::from_millis(ws.ping_interval_ms);
    let idle_after = Duration::from_millis(ws.idle_timeout_ms);
    let close_within = Duration::from_millis(ws.close_timeout_ms);
    let message_within = Duration::from_millis(ws.message_timeout_ms);
    let tick = (ping_every.min(message_within) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    loop {
        sleep(tick).await;
        let now = Stamp::now();
        let conns = shard.conns.borrow();
        sweep_each(shard.my_stats(), conns.values(), |live| {
            live.report_bytes_out(shard.my_stats());
            if live.outbox.closed().is_some() {
                match live.closing_since.get() {
                    None => live.closing_since.set(Some(now)),
                    Some(since) if now.since(since) >= close_within => {
                        // SAFETY: the session owns this open socket until it unregisters,
                        // which removes it from `conns`; shutdown does not close the fd.
                        unsafe { libc::shutdown(live.fd, libc::SHUT_RDWR) };
                    }
                    Some(_) => {}
                }
                return;
            }
            let quiet = now.since(live.last_rx.get());
            let stalled = live
                .incomplete_since
                .get()
                .is_some_and(|since| now.since(since) >= message_within);
            let waiting = live.outbox.queued_bytes() > 0;
            let (marked, marked_at) = live.written_mark.get();
            // The socket is asked only while something waits to be written.
            let taken = if waiting { Taken::of(live) } else { marked };
            if taken != marked || !waiting {
                live.written_mark.set((taken, now));
            }
            let not_reading = waiting && taken == marked && now.since(marked_at) >= message_within;
            let refusal = if stalled {
                stats::add(&shard.my_stats().message_timeouts_total, 1);
                Refusal::MessageTimeout
            } else if not_reading {
                stats::add(&shard.my_stats().slow_consumer_closes_total, 1);
                Refusal::NotReading
            } else if quiet >= idle_after {
                stats::add(&shard.my_stats().idle_closes_total, 1);
                Refusal::Idle
            } else {
                let since_ping = now.since(live.last_ping.get());
                // A Hocuspocus provider reconnects after 30 s without a message and cannot
                // see WebSocket pings: it gets its own every half interval, quiet or not.
                // At most every 10 s, however long the interval: the provider's limit is 30 s.
                let in_band_every = (ping_every / 2).min(Duration::from_secs(10));
                if live.outbox.in_band_keepalive() && since_ping >= in_band_every {
                    live.outbox
                        .push_all(&[shard.ping.clone(), shard.in_band_ping.clone()]);
                    live.last_ping.set(now);
                } else if quiet >= ping_every && since_ping >= ping_every {
                    live.outbox.push(&shard.ping);
                    live.last_ping.set(now);
                }
                return;
            };
            let (code, reason) = refusal.close();
            live.outbox.close(code, &reason);
        });
    }
}

/// Runs the sweep's `check` on each connection. A panic in one is contained to it: counted
/// and logged, its socket shut down so that its session ends (a connection the sweep cannot
/// look after must not stay open), and the sweep goes on with the others, this tick and the
/// next.
fn sweep_each<'a>(
    stats: &ShardStats,
    conns: impl IntoIterator<Item = &'a Rc<Liveness>>,
    mut check: impl FnMut(&Liveness),
) {
    for live in conns {
        if super::contain::call(stats, "keepalive", || check(live)).is_none() {
            // SAFETY: as in the sweep: the session owns this open socket until it leaves
            // `conns`; shutdown does not close the fd.
            unsafe { libc::shutdown(live.fd, libc::SHUT_RDWR) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// The sweep's guard against the real sweep code's failure mode: a panic on one
    /// connection. (No input reaches a panic in the sweep, so the check here panics itself.)
    #[test]
    fn a_panic_on_one_connection_does_not_stop_the_sweep() {
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let conns: Vec<Rc<Liveness>> = pairs
            .iter()
            .map(|(ours, _)| {
                Rc::new(Liveness::new(
                    Rc::new(Outbox::new(1 << 10)),
                    ours.as_raw_fd(),
                ))
            })
            .collect();
        let stats = ShardStats::default();
        let panicking = conns[1].fd;
        let mut checked = Vec::new();
        for _tick in 0..2 {
            sweep_each(&stats, &conns, |live| {
                if live.fd == panicking {
                    panic!("in the sweep");
                }
                checked.push(live.fd);
            });
        }
        let (first, last) = (conns[0].fd, conns[2].fd);
        assert_eq!(checked, [first, last, first, last]);
        assert_eq!(stats::get(&stats.panics_total), 2);
        // The panicking connection's socket is shut down (its peer reads the end); the
        // others are untouched.
        let mut byte = [0u8; 1];
        assert_eq!((&pairs[1].1).read(&mut byte).unwrap(), 0);
        pairs[0].1.set_nonblocking(true).unwrap();
        let err = (&pairs[0].1).read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }

    /// A queue woken while the sessions' queue runs (as a session wakes an admission in a
    /// storm) gives way within about `SESSION_PERIOD`, not glommio's default 100 ms: the
    /// executor's `need_preempt` turns true for a task spinning on it. The fastest of five
    /// spins is taken, so a moment the machine takes the core away cannot fail it.
    #[test]
    fn a_queue_woken_by_a_session_gives_way_within_the_preemption_period() {
        let fastest = super::super::shard_executors(1)
            .on_all_shards(|| async {
                // A timer always pending, as the shard's drain watch: glommio parks with tasks
                // runnable if its timer fires before they run, and only a timer or I/O wakes it.
                glommio::spawn_local(async {
                    loop {
                        sleep(Duration::from_millis(10)).await;
                    }
                })
                .detach();
                let sessions = sessions_queue();
                let admissions = admission_queue();
                let session = async move {
                    let mut fastest = Duration::MAX;
                    for _ in 0..5 {
                        // Woken by a timer, as a session by its socket: the executor polls
                        // with the sessions' queue active.
                        sleep(Duration::from_millis(1)).await;
                        let spin = async {
                            let started = Instant::now();
                            while !glommio::executor().need_preempt()
                                && started.elapsed() < Duration::from_secs(1)
                            {
                                std::hint::spin_loop();
                            }
                            started.elapsed()
                        };
                        let spin = glommio::spawn_local_into(spin, admissions).unwrap();
                        fastest = fastest.min(spin.await);
                    }
                    fastest
                };
                glommio::spawn_local_into(session, sessions).unwrap().await
            })
            .unwrap()
            .join_all()
            .pop()
            .unwrap()
            .unwrap();
        assert!(
            fastest < Duration::from_millis(20),
            "a woken queue ran {fastest:?} before it was asked to give way"
        );
    }
}
