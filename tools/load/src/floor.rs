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
use std::sync::{Arc, Barrier};
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
    /// Time between groups (spent spinning, not counted).
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
    /// One thread in `epoll_wait`, each socket armed once: the cheapest way to wait for
    /// thousands of sockets that Linux offers a thread that sleeps.
    Epoll,
    /// A glommio executor (the server's runtime, configured as its shards are) with a task
    /// per socket reading it as the server's sessions do (glommio's `TcpStream`), sending as
    /// they do (one non-blocking send each).
    Glommio,
}

/// What a delivery costs a relay that does nothing else, laid out as `shape`: documents of
/// `shape.group + 1` loopback connections each; every `shape.gap_us` a client (on the
/// reader's core, polling) sends a `frame_bytes` frame, and the relay (on the sender's
/// core) wakes in `epoll_wait`, reads it with one `recv` and sends it to the document's
/// `shape.group` other clients. Returns the relay thread's CPU time per delivery, over
/// enough updates for about `deliveries` deliveries; fails unless every client received
/// exactly its document's other clients' frames. Between this on epoll and [`measure`] is
/// what sleeping between updates and reading each one costs this machine; between epoll
/// and glommio, what the runtime adds; the rest of a server's cost (parsing, checking,
/// storing) is the server's own.
pub fn measure_relay(
    frame_bytes: usize,
    deliveries: usize,
    shape: Shape,
    waiter: Waiter,
) -> io::Result<Floor> {
    assert!((2..=125).contains(&frame_bytes) && deliveries > 0);
    assert!(shape.sockets > shape.group && shape.group > 0);
    let members = shape.group + 1;
    let sockets = shape.sockets / members * members;
    let updates = deliveries.div_ceil(shape.group);
    let (clients, relayed) = connected_pairs(sockets)?;
    let (relay_cpu, client_cpu) = cpus();
    // The clients start sending once the relay waits for every socket, and the relay's
    // clock starts there: setting up is not relaying.
    let ready = Arc::new(Barrier::new(2));
    let relay_ready = ready.clone();
    let relay = std::thread::spawn(move || {
        pin(relay_cpu)?;
        let relay_bytes = updates * frame_bytes;
        match waiter {
            Waiter::Epoll => relay(&relayed, members, relay_bytes, &relay_ready),
            Waiter::Glommio => relay_on_glommio(relayed, members, relay_bytes, &relay_ready),
        }
    });
    let driver = std::thread::spawn(move || {
        pin(client_cpu)?;
        ready.wait();
        drive(clients, members, frame_bytes, updates, shape.gap_us)
    });
    let relay_us = relay.join().expect("relay thread")?;
    driver.join().expect("client thread")?;
    Ok(Floor {
        frame_bytes,
        delivery_us: relay_us / (updates * shape.group) as f64,
    })
}

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

/// The relay of [`measure_relay`]: forwards what each socket sends to the other sockets of
/// its group of `members` until `relay_bytes` have come in; returns its CPU microseconds
/// from its first wait (when it meets the clients at `start`) to its last send.
fn relay(
    sockets: &[TcpStream],
    members: usize,
    relay_bytes: usize,
    start: &Barrier,
) -> io::Result<f64> {
    let mut ready = Readiness::new(sockets)?;
    let fds: Vec<i32> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut buf = [0u8; 4096];
    let mut relayed = 0;
    start.wait();
    let started = thread_cpu_us();
    while relayed < relay_bytes {
        for i in ready.wait(-1)? {
            // One read per readiness, as a server reads each update; level-triggered, so
            // what it leaves comes back at the next wait.
            let n = match (&sockets[i]).read(&mut buf) {
                Ok(0) => return Err(io::Error::other("a client closed before the end")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let first = i / members * members;
            for peer in (first..first + members).filter(|&p| p != i) {
                send_one(fds[peer], &buf[..n])?;
            }
            relayed += n;
        }
    }
    Ok(thread_cpu_us() - started)
}

/// [`relay`] on a glommio executor made on this thread: a task per socket.
fn relay_on_glommio(
    sockets: Vec<TcpStream>,
    members: usize,
    relay_bytes: usize,
    start: &Barrier,
) -> io::Result<f64> {
    // Configured as the server's shards are (a deep ring keeps glommio's cancellations from
    // walking long lists of armed polls).
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(wiresocket::server::IO_MEMORY_BYTES)
        .ring_depth(wiresocket::server::RING_DEPTH)
        .make()
        .map_err(|e| io::Error::other(format!("a glommio executor: {e}")))?;
    executor.run(async move {
        let fds: Rc<[i32]> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let relayed = Rc::new(Cell::new(0));
        let outcome: Rc<Outcome> = Rc::default();
        let started = Rc::new(Cell::new(0.0));
        let tasks: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                // SAFETY: the descriptor is taken from the std stream, which gives it up.
                let stream = unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) };
                let (fds, relayed) = (fds.clone(), relayed.clone());
                let (outcome, started) = (outcome.clone(), started.clone());
                glommio::spawn_local(async move {
                    let ended = relay_one(
                        stream,
                        i,
                        members,
                        &fds,
                        || relayed.get() >= relay_bytes,
                        |n| relayed.set(relayed.get() + n),
                    )
                    .await;
                    outcome.set(ended.map(|()| thread_cpu_us() - started.get()));
                })
            })
            .collect();
        // Behind every task, so each has read its socket once and armed its poll.
        futures_lite::future::yield_now().await;
        start.wait();
        started.set(thread_cpu_us());
        let ended = std::future::poll_fn(|cx| outcome.poll(cx)).await;
        drop(tasks);
        ended
    })
}

/// Relays what socket `i` of `fds` sends to the other members of its group, until `done`.
async fn relay_one(
    mut stream: glommio::net::TcpStream,
    i: usize,
    members: usize,
    fds: &[i32],
    done: impl Fn() -> bool,
    count: impl Fn(usize),
) -> io::Result<()> {
    use futures_lite::AsyncReadExt;
    let mut buf = [0u8; 512];
    let first = i / members * members;
    while !done() {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::other("a client closed before the end"));
        }
        for peer in (first..first + members).filter(|&p| p != i) {
            send_one(fds[peer], &buf[..n])?;
        }
        count(n);
    }
    Ok(())
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

/// The clients of [`measure_relay`]: one of them (at random) sends a frame every `gap_us`,
/// `updates` in all, while all of them are read; then checks each received exactly the
/// bytes its group's other members sent.
fn drive(
    clients: Vec<TcpStream>,
    members: usize,
    frame_bytes: usize,
    updates: usize,
    gap_us: u64,
) -> io::Result<()> {
    let frame = vec![0x82u8; frame_bytes];
    let mut expected = vec![0usize; clients.len()];
    let mut expected_total = 0;
    let mut reader = Reader::new(clients)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let gap = Duration::from_micros(gap_us);
    let (mut sent, mut next) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < updates || reader.got < expected_total {
        if Instant::now() > deadline {
            return Err(io::Error::other("the relay did not deliver within 60 s"));
        }
        if sent < updates && Instant::now() >= next {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed % expected.len() as u64) as usize;
            send_one(reader.streams[i].as_raw_fd(), &frame)?;
            let first = i / members * members;
            for peer in (first..first + members).filter(|&p| p != i) {
                expected[peer] += frame_bytes;
                expected_total += frame_bytes;
            }
            sent += 1;
            next += gap;
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
    // A fixed generator (runs repeat); the group's sockets are distinct.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut group = Vec::with_capacity(shape.group);
    let (mut sent, mut cpu_us) = (0, 0.0);
    while sent < sends {
        group.clear();
        while group.len() < shape.group.min(sends - sent).min(fds.len()) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let fd = fds[(seed % fds.len() as u64) as usize];
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
        // SAFETY: `frame` outlives the call; `fd` is an open socket the caller owns.
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
    fn a_relay_delivers_each_frame_to_its_group_and_costs_more_than_nothing() {
        // 66 sockets: eight groups of 8, and two left out (they would make a short group).
        let shape = Shape {
            sockets: 66,
            group: 7,
            gap_us: 20,
        };
        for waiter in [Waiter::Epoll, Waiter::Glommio] {
            // measure_relay fails unless each client got exactly its group's others' frames.
            let relay = measure_relay(40, 2_000, shape, waiter).unwrap();
            assert!(
                relay.delivery_us > 0.2 && relay.delivery_us < 1_000.0,
                "{waiter:?} {relay:?}"
            );
        }
    }

    #[test]
    fn a_relay_that_drops_a_frame_is_caught() {
        // The relay forwards to groups of 4, the clients expect groups of 2: every frame
        // reaches two clients that were owed nothing of it, which the count per client
        // catches.
        let (clients, relayed) = connected_pairs(4).unwrap();
        let start = Arc::new(Barrier::new(1));
        let relay = std::thread::spawn(move || relay(&relayed, 4, 10 * 40, &start));
        let checked = drive(clients, 2, 40, 10, 50);
        // The clients may stop, and close, before the relay has read all they sent.
        if let Err(e) = relay.join().unwrap() {
            assert!(e.to_string().contains("closed before the end"), "{e}");
        }
        let error = checked.unwrap_err().to_string();
        assert!(error.contains("received"), "{error}");
    }
}
