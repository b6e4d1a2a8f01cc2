//! The floors: what one delivery costs a server when it is one loopback send of a small
//! frame, and what it costs a relay that does nothing but wake, read an update and send it
//! to the document's other clients, measured on the machine the run is on. No server can
//! deliver for less than the first while each delivery is its own send, nor for less than
//! the second while it sleeps between updates and reads each one, so every fan-out run
//! prints its server's cost beside both.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// One delivery's cost, in CPU microseconds of the delivering thread.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub frame_bytes: usize,
    pub delivery_us: f64,
}

impl Floor {
    /// Deliveries per CPU-second a server that does nothing but this would reach.
    pub fn deliveries_per_cpu_s(&self) -> f64 {
        1e6 / self.delivery_us
    }
}

/// How the floor's sends are laid out, to match the run they are the floor of: a server
/// sends each update to the document's other clients (a group of sends to different
/// sockets), then handles other connections for a while; its sockets number as many as the
/// run's connections. Both matter on this machine: 256 sockets sent to back to back cost
/// about half of what 8,000 sockets sent to in groups of 7 cost (the sockets' kernel state
/// no longer stays in cache).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub sockets: usize,
    /// Sends per group, each to a different socket.
    pub group: usize,
    /// Time between groups (the send floor's sender spins through it, not counted; a
    /// relay sleeps).
    pub gap_us: u64,
}

/// How each group is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One non-blocking `send` per delivery: what wiresocket does.
    Sendmsg,
    /// The group's sends submitted through an io_uring in one `io_uring_enter`.
    Ring,
}

/// Sends `sends` server frames of `frame_bytes` (header included), one per delivery, to
/// sockets chosen at random among `shape.sockets` loopback TCP connections, in groups, while
/// a thread reads them all; returns the sender's CPU time per send. On loopback the
/// sender's call also runs the receiving socket's TCP input, as a server's does on the
/// machine the clients share with it.
pub fn measure(frame_bytes: usize, sends: usize, shape: Shape, via: Via) -> io::Result<Floor> {
    assert!((2..=125).contains(&frame_bytes) && sends > 0);
    assert!(shape.sockets > 0 && shape.group > 0);
    let (senders, receivers) = connected_pairs(shape.sockets)?;
    let total_bytes = frame_bytes * sends;
    let (sender_cpu, reader_cpu) = cpus();
    let reader = std::thread::spawn(move || {
        pin(reader_cpu)?;
        read_all(receivers, total_bytes)
    });
    // The sends run where a server would: on a core the generator was not given (compare.sh
    // gives it one, the server the other), while the reader polls on the generator's.
    let sending = std::thread::spawn(move || {
        pin(sender_cpu)?;
        send_all(&senders, frame_bytes, sends, shape, via)
    });
    let delivery_us = sending.join().expect("sender thread")?;
    let received = reader.join().expect("reader thread")?;
    if received != total_bytes {
        return Err(io::Error::other(format!(
            "received {received} of {total_bytes} bytes"
        )));
    }
    Ok(Floor {
        frame_bytes,
        delivery_us,
    })
}

/// What waits for a relay's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// One thread in `epoll_wait`, each socket registered once: what a server on epoll
    /// (tokio, Node) pays to sleep between updates and learn which socket has one.
    Epoll,
    /// The server's runtime as a shard runs it: a glommio executor configured as the
    /// shards' (`RING_DEPTH`, `IO_MEMORY_BYTES`), a task per socket on the sessions' task
    /// queue, reading through glommio's `TcpStream` into one shared buffer as the sessions
    /// do, sending as they do (one non-blocking send each).
    Glommio,
}

/// What a delivery costs a relay that does nothing else, laid out as `shape`: documents of
/// `shape.group + 1` loopback connections each (`shape.sockets` rounded down to whole
/// documents); a client (on the reader's core, polling) sends a `frame_bytes` frame and
/// waits `shape.gap_us`, and the relay (on the sender's core) wakes, reads it with one
/// `recv` and sends it to the document's `shape.group` other clients. Returns the relay
/// thread's CPU time per delivery from when it waits for every socket to its last send,
/// over enough updates for about `deliveries` deliveries; fails unless every client
/// received exactly its document's other clients' frames. Between this on epoll and
/// [`measure`] is what sleeping between updates and reading each one costs this machine;
/// between epoll and glommio, what the runtime adds; the rest of a server's cost (parsing,
/// checking, storing) is the server's own. At short gaps the relay falls behind and reads
/// several updates at once, as a server does.
pub fn measure_relay(
    frame_bytes: usize,
    deliveries: usize,
    shape: Shape,
    waiter: Waiter,
) -> io::Result<Floor> {
    assert!((2..=125).contains(&frame_bytes) && deliveries > 0);
    assert!(shape.sockets > shape.group && shape.group > 0);
    let members = shape.group + 1;
    let updates = deliveries.div_ceil(shape.group);
    let (clients, relayed_sockets) = connected_pairs(shape.sockets / members * members)?;
    let (relay_cpu, client_cpu) = cpus();
    // The clients start sending once the relay waits for every socket: setting up is not
    // relaying. A relay that fails before drops the sender, which stops the clients too.
    let (ready, relay_ready) = std::sync::mpsc::sync_channel(1);
    let relaying = std::thread::spawn(move || {
        pin(relay_cpu)?;
        let relay_bytes = updates * frame_bytes;
        match waiter {
            Waiter::Epoll => relay(&relayed_sockets, members, relay_bytes, ready),
            Waiter::Glommio => relay_on_glommio(relayed_sockets, members, relay_bytes, ready),
        }
    });
    let patience = Duration::from_micros(shape.gap_us) * updates as u32 + RELAY_PATIENCE;
    let driving = std::thread::spawn(move || {
        pin(client_cpu)?;
        relay_ready
            .recv()
            .map_err(|_| io::Error::other("the relay did not start"))?;
        drive(
            clients,
            members,
            frame_bytes,
            updates,
            shape.gap_us,
            patience,
        )
    });
    // Both end (a failing side makes the other fail soon: closed sockets); the relay's error
    // first, the clients' being then its consequence.
    let relayed = relaying.join().expect("relay thread");
    let driven = driving.join().expect("client thread");
    let relay_us = relayed?;
    driven?;
    Ok(Floor {
        frame_bytes,
        delivery_us: relay_us / (updates * shape.group) as f64,
    })
}

/// How long the clients wait for the relay beyond their sending time.
const RELAY_PATIENCE: Duration = Duration::from_secs(30);

/// `n` loopback TCP connections: (connecting ends, accepted ends), both without Nagle.
fn connected_pairs(n: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut connecting = Vec::with_capacity(n);
    let mut accepted = Vec::with_capacity(n);
    for _ in 0..n {
        let near = TcpStream::connect(listener.local_addr()?)?;
        near.set_nodelay(true)?;
        connecting.push(near);
        let far = listener.accept()?.0;
        far.set_nodelay(true)?;
        accepted.push(far);
    }
    Ok((connecting, accepted))
}

/// The other members of socket `i`'s group, groups being `members` consecutive sockets.
fn peers(i: usize, members: usize) -> impl Iterator<Item = usize> {
    let first = i / members * members;
    (first..first + members).filter(move |&p| p != i)
}

/// Sends `bytes` from socket `i` of `fds` to the other members of its group.
fn forward(fds: &[i32], i: usize, members: usize, bytes: &[u8]) -> io::Result<()> {
    peers(i, members).try_for_each(|peer| send_one(fds[peer], bytes))
}

/// The relay of [`measure_relay`] on epoll: forwards what each socket sends to the other
/// sockets of its group of `members` until `relay_bytes` have come in; says on `ready` when
/// it waits for every socket; returns its CPU microseconds from then to its last send.
fn relay(
    sockets: &[TcpStream],
    members: usize,
    relay_bytes: usize,
    ready: std::sync::mpsc::SyncSender<()>,
) -> io::Result<f64> {
    let mut readiness = Readiness::new(sockets)?;
    let fds: Vec<i32> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut buf = [0u8; RELAY_BUF_BYTES];
    let mut relayed = 0;
    let started = thread_cpu_us();
    ready.send(()).map_err(io::Error::other)?;
    while relayed < relay_bytes {
        for i in readiness.wait(-1)? {
            // One read per readiness, as a server reads each update; level-triggered, so
            // what it leaves comes back at the next wait.
            let n = match (&sockets[i]).read(&mut buf) {
                Ok(0) => return Err(io::Error::other("a client closed before the end")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            forward(&fds, i, members, &buf[..n])?;
            relayed += n;
        }
    }
    Ok(thread_cpu_us() - started)
}

/// What either relay reads at once.
const RELAY_BUF_BYTES: usize = 4096;

/// [`relay`] on a glommio executor made on this thread (see [`Waiter::Glommio`]).
fn relay_on_glommio(
    sockets: Vec<TcpStream>,
    members: usize,
    relay_bytes: usize,
    ready: std::sync::mpsc::SyncSender<()>,
) -> io::Result<f64> {
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(wiresocket::server::IO_MEMORY_BYTES)
        .ring_depth(wiresocket::server::RING_DEPTH)
        .make()
        .map_err(|e| io::Error::other(format!("a glommio executor: {e}")))?;
    executor.run(async move {
        let queue = wiresocket::server::sessions_queue();
        let relay = Rc::new(GlommioRelay {
            fds: sockets.iter().map(AsRawFd::as_raw_fd).collect(),
            members,
            relay_bytes,
            relayed: Cell::new(0),
            buf: RefCell::new([0; RELAY_BUF_BYTES]),
            started_us: Cell::new(0.0),
            outcome: Outcome::default(),
        });
        let tasks = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                // SAFETY: the descriptor is taken from the std stream, which gives it up.
                let stream = unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) };
                glommio::spawn_local_into(relay.clone().run(stream, i), queue)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io::Error::other(format!("spawning a relay task: {e}")))?;
        // Each task reads its socket once and asks for its readiness; sleeping makes the
        // executor hand those requests to the kernel before the clock starts.
        glommio::timer::sleep(Duration::from_millis(10)).await;
        relay.started_us.set(thread_cpu_us());
        ready.send(()).map_err(io::Error::other)?;
        let ended = std::future::poll_fn(|cx| relay.outcome.poll(cx)).await;
        drop(tasks);
        ended
    })
}

/// The glommio relay's state, shared by its tasks.
struct GlommioRelay {
    fds: Vec<i32>,
    members: usize,
    relay_bytes: usize,
    relayed: Cell<usize>,
    /// Shared, as a shard's scratch buffer is by its sessions: a task forwards what it read
    /// before it yields.
    buf: RefCell<[u8; RELAY_BUF_BYTES]>,
    started_us: Cell<f64>,
    outcome: Outcome,
}

impl GlommioRelay {
    /// Relays what socket `i` sends until the relay has relayed all it should; the task
    /// that sees the end sets the outcome.
    async fn run(self: Rc<Self>, mut stream: glommio::net::TcpStream, i: usize) {
        use futures_lite::AsyncRead;
        let ended = std::future::poll_fn(|cx| loop {
            if self.relayed.get() >= self.relay_bytes {
                return Poll::Ready(Ok(thread_cpu_us() - self.started_us.get()));
            }
            let mut buf = self.buf.borrow_mut();
            let n = match std::pin::Pin::new(&mut stream).poll_read(cx, &mut buf[..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::other("a client closed before the end")))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            };
            if let Err(e) = forward(&self.fds, i, self.members, &buf[..n]) {
                return Poll::Ready(Err(e));
            }
            self.relayed.set(self.relayed.get() + n);
        })
        .await;
        self.outcome.set(ended);
    }
}

/// How the glommio relay ended (its CPU microseconds, or why it failed): set by the first
/// task to see the end, awaited by the executor's main future.
#[derive(Default)]
struct Outcome {
    ended: RefCell<Option<io::Result<f64>>>,
    waiter: RefCell<Option<Waker>>,
}

impl Outcome {
    fn set(&self, ended: io::Result<f64>) {
        self.ended.borrow_mut().get_or_insert(ended);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<f64>> {
        match self.ended.take() {
            Some(ended) => Poll::Ready(ended),
            None => {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The clients of [`measure_relay`]: one of them (at random) sends a frame, then they wait
/// `gap_us`, `updates` times, while all of them are read; then checks each received exactly
/// the bytes its group's other members sent. Fails if a socket ends (the relay closed it) or
/// the relay has not delivered everything `patience` after the start.
fn drive(
    clients: Vec<TcpStream>,
    members: usize,
    frame_bytes: usize,
    updates: usize,
    gap_us: u64,
    patience: Duration,
) -> io::Result<()> {
    let frame = vec![0x82u8; frame_bytes];
    let mut expected = vec![0usize; clients.len()];
    let mut expected_total = 0;
    let mut reader = Reader::new(clients)?;
    let mut seed = SEED;
    let gap = Duration::from_micros(gap_us);
    let (mut sent, mut next) = (0, Instant::now());
    let deadline = Instant::now() + patience;
    while sent < updates || reader.got < expected_total {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "the relay delivered {} of {expected_total} bytes in {patience:?}",
                reader.got
            )));
        }
        if reader.ended > 0 {
            return Err(io::Error::other("the relay closed a connection"));
        }
        if sent < updates && Instant::now() >= next {
            let i = (next_random(&mut seed) % expected.len() as u64) as usize;
            send_one(reader.streams[i].as_raw_fd(), &frame)?;
            for peer in peers(i, members) {
                expected[peer] += frame_bytes;
                expected_total += frame_bytes;
            }
            sent += 1;
            // A gap after each send, as the send floor's: a client held up by the machine
            // does not catch up in a burst.
            next = Instant::now() + gap;
        }
        reader.poll()?;
    }
    match reader
        .got_each
        .iter()
        .zip(&expected)
        .position(|(g, e)| g != e)
    {
        Some(i) => Err(io::Error::other(format!(
            "client {i} received {} bytes, not {}",
            reader.got_each[i], expected[i]
        ))),
        None => Ok(()),
    }
}

/// A fixed start for the floors' choices of sockets, so runs repeat.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The next of a xorshift sequence.
fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// The sender's CPU microseconds per send (see [`measure`]); closes `senders` at the end.
fn send_all(
    senders: &[TcpStream],
    frame_bytes: usize,
    sends: usize,
    shape: Shape,
    via: Via,
) -> io::Result<f64> {
    // An unmasked server binary frame: what a broadcast sends.
    let mut frame = vec![0u8; frame_bytes];
    frame[0] = 0x82;
    frame[1] = (frame_bytes - 2) as u8;
    let fds: Vec<i32> = senders.iter().map(AsRawFd::as_raw_fd).collect();
    let mut ring = match via {
        Via::Ring => Some(io_uring::IoUring::new(
            shape.group.next_power_of_two() as u32
        )?),
        Via::Sendmsg => None,
    };
    // The group's sockets are distinct.
    let mut seed = SEED;
    let mut group = Vec::with_capacity(shape.group);
    let (mut sent, mut cpu_us) = (0, 0.0);
    while sent < sends {
        group.clear();
        while group.len() < shape.group.min(sends - sent).min(fds.len()) {
            let fd = fds[(next_random(&mut seed) % fds.len() as u64) as usize];
            if !group.contains(&fd) {
                group.push(fd);
            }
        }
        let started = thread_cpu_us();
        match &mut ring {
            None => {
                for &fd in &group {
                    send_one(fd, &frame)?;
                }
            }
            Some(ring) => send_ring(ring, &group, &frame)?,
        }
        cpu_us += thread_cpu_us() - started;
        sent += group.len();
        let until = Instant::now() + Duration::from_micros(shape.gap_us);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    for s in senders {
        s.shutdown(std::net::Shutdown::Write)?;
    }
    Ok(cpu_us / sends as f64)
}

/// The sender's core (the first this process was not given, else its first) and the
/// reader's (the process's first other than the sender's, if it has one).
fn cpus() -> (usize, usize) {
    // SAFETY: a zeroed cpu_set_t is empty; sched_getaffinity fills it for this process.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&mask), &mut mask) };
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: CPU_ISSET reads the mask filled above, for indices below its size.
    let given: Vec<usize> = (0..online)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &mask) })
        .collect();
    let first_given = given.first().copied().unwrap_or(0);
    let sender = (0..online)
        .find(|c| !given.contains(c))
        .unwrap_or(first_given);
    let reader = given
        .iter()
        .copied()
        .find(|&c| c != sender)
        .unwrap_or(first_given);
    (sender, reader)
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: an empty set with one CPU added, for this thread.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0
    };
    if pinned {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One non-blocking send of the whole frame (retried while the socket is full).
fn send_one(fd: i32, frame: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `frame` outlives the call; `fd` is an open socket (the relays' peers' sockets
        // stay open until the relay ends).
        let n = unsafe {
            libc::send(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match n {
            n if n == frame.len() as isize => return Ok(()),
            n if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
                std::thread::yield_now()
            }
            n if n < 0 => return Err(io::Error::last_os_error()),
            // A partial send of so small a frame does not happen on loopback; say so if it does.
            _ => return Err(io::Error::other(format!("send returned {n}"))),
        }
    }
}

/// The group's sends as one submission; every one must send the whole frame.
fn send_ring(ring: &mut io_uring::IoUring, group: &[i32], frame: &[u8]) -> io::Result<()> {
    for (i, &fd) in group.iter().enumerate() {
        let send = io_uring::opcode::Send::new(
            io_uring::types::Fd(fd),
            frame.as_ptr(),
            frame.len() as u32,
        )
        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        .build()
        .user_data(i as u64);
        // SAFETY: `frame` outlives the submission, which is waited for below.
        unsafe { ring.submission().push(&send) }
            .map_err(|_| io::Error::other("submission queue full"))?;
    }
    ring.submit_and_wait(group.len())?;
    for cqe in ring.completion() {
        if cqe.result() != frame.len() as i32 {
            return Err(io::Error::other(format!(
                "ring send returned {}",
                cqe.result()
            )));
        }
    }
    Ok(())
}

/// Reads every receiver until `total_bytes` have come or all of them ended.
fn read_all(receivers: Vec<TcpStream>, total_bytes: usize) -> io::Result<usize> {
    let mut reader = Reader::new(receivers)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reader.got < total_bytes
        && reader.ended < reader.streams.len()
        && Instant::now() < deadline
    {
        reader.poll()?;
    }
    Ok(reader.got)
}

/// Non-blocking sockets registered, level-triggered, in one epoll set.
struct Readiness {
    epoll: i32,
    events: Vec<libc::epoll_event>,
}

impl Readiness {
    fn new(sockets: &[TcpStream]) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no preconditions.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let ready = Readiness {
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        };
        for (i, s) in sockets.iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: a valid epoll fd, an open socket, and an event to copy from.
            if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut event) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(ready)
    }

    /// The indices of the sockets ready to read, waiting up to `timeout_ms` (-1: until one
    /// is).
    fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = usize> + '_> {
        // SAFETY: `events` has room for as many entries as its length says.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error());
        }
        Ok(self.events[..n.max(0) as usize]
            .iter()
            .map(|e| e.u64 as usize))
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        // SAFETY: closing the epoll fd this value made.
        unsafe { libc::close(self.epoll) };
    }
}

/// A polling reader of many sockets, counting what each received.
struct Reader {
    streams: Vec<TcpStream>,
    ready: Readiness,
    buf: Vec<u8>,
    got: usize,
    got_each: Vec<usize>,
    ended: usize,
}

impl Reader {
    fn new(streams: Vec<TcpStream>) -> io::Result<Self> {
        Ok(Reader {
            ready: Readiness::new(&streams)?,
            got_each: vec![0; streams.len()],
            streams,
            buf: vec![0u8; 1 << 16],
            got: 0,
            ended: 0,
        })
    }

    /// Reads whatever has arrived, without waiting.
    fn poll(&mut self) -> io::Result<()> {
        // Polls, as the load generator does: a sleeping reader makes every send pay for
        // waking it, which the runs keep out of the server's CPU.
        for i in self.ready.wait(0)? {
            let mut stream = &self.streams[i];
            loop {
                match stream.read(&mut self.buf) {
                    Ok(0) => {
                        self.ended += 1;
                        break;
                    }
                    Ok(k) => {
                        self.got += k;
                        self.got_each[i] += k;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_send_costs_some_microseconds_either_way() {
        let shape = Shape {
            sockets: 64,
            group: 7,
            gap_us: 10,
        };
        for via in [Via::Sendmsg, Via::Ring] {
            let floor = measure(40, 2_000, shape, via).unwrap();
            // A syscall through the TCP stack: not free, and not milliseconds.
            assert!(
                floor.delivery_us > 0.2 && floor.delivery_us < 1_000.0,
                "{via:?} {floor:?}"
            );
            assert!(floor.deliveries_per_cpu_s() > 1_000.0);
        }
    }

    #[test]
    fn a_relay_delivers_each_frame_to_its_group_and_costs_about_its_sends() {
        // 66 sockets: eight groups of 8, and two left out (they would make a short group).
        // A gap long enough that the relay reads one update at a time.
        let shape = Shape {
            sockets: 66,
            group: 7,
            gap_us: 200,
        };
        let sends = measure(40, 2_000, shape, Via::Sendmsg).unwrap();
        for waiter in [Waiter::Epoll, Waiter::Glommio] {
            // measure_relay fails unless each client got exactly its group's others' frames.
            let relay = measure_relay(40, 2_000, shape, waiter).unwrap();
            // A relay sends each delivery as the send floor does, and reads and waits on
            // top (on glommio about 1.6-1.9 times the sends): far from that, the clock or
            // the count of deliveries is wrong (the margin is for a busy machine).
            assert!(
                relay.delivery_us > 0.3 * sends.delivery_us
                    && relay.delivery_us < 4.0 * sends.delivery_us,
                "{waiter:?} {relay:?} against {sends:?}"
            );
        }
    }

    /// Ten 40-byte frames over 4 sockets, relayed to groups of `relay_members` while the
    /// clients expect groups of 2: (the relay's outcome, the clients' check).
    fn relay_to_groups_of(relay_members: usize, patience: Duration) -> (io::Result<f64>, String) {
        let (clients, relayed) = connected_pairs(4).unwrap();
        let (ready, _started) = std::sync::mpsc::sync_channel(1);
        // The relay's sockets outlive it: a socket closed is another failure.
        let relaying =
            std::thread::spawn(move || (relay(&relayed, relay_members, 10 * 40, ready), relayed));
        let checked = drive(clients, 2, 40, 10, 50, patience);
        let (relayed, _sockets) = relaying.join().unwrap();
        (relayed, checked.unwrap_err().to_string())
    }

    #[test]
    fn a_relay_that_sends_to_the_wrong_clients_is_caught() {
        // Groups of 4: every frame reaches two clients that were owed nothing of it, which
        // the count per client catches. (The relay's own outcome is either way: the clients
        // may close before it has read all they sent.)
        let (_, error) = relay_to_groups_of(4, Duration::from_secs(10));
        assert!(error.contains("received"), "{error}");
    }

    #[test]
    fn a_relay_that_forwards_nothing_is_caught() {
        // Groups of 1 have no other members: the relay reads every frame and sends none.
        let (relayed, error) = relay_to_groups_of(1, Duration::from_millis(300));
        assert!(relayed.is_ok());
        assert!(error.contains("delivered 0 of 400 bytes"), "{error}");
    }
}
