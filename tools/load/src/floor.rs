//! The floor: what one delivery costs a server when it is one loopback send of a small
//! frame, measured on the machine the run is on. No server can deliver for less while each
//! delivery is its own send, so every fan-out run prints its server's cost beside it.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// One loopback send's cost, in CPU microseconds of the sending thread.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub frame_bytes: usize,
    pub send_us: f64,
}

impl Floor {
    /// Deliveries per CPU-second a server that does nothing but these sends would reach.
    pub fn deliveries_per_cpu_s(&self) -> f64 {
        1e6 / self.send_us
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
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut senders = Vec::with_capacity(shape.sockets);
    let mut receivers = Vec::with_capacity(shape.sockets);
    for _ in 0..shape.sockets {
        let sender = TcpStream::connect(listener.local_addr()?)?;
        sender.set_nodelay(true)?;
        senders.push(sender);
        receivers.push(listener.accept()?.0);
    }
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
    let send_us = sending.join().expect("sender thread")?;
    let received = reader.join().expect("reader thread")?;
    if received != total_bytes {
        return Err(io::Error::other(format!(
            "received {received} of {total_bytes} bytes"
        )));
    }
    Ok(Floor {
        frame_bytes,
        send_us,
    })
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
        let until = std::time::Instant::now() + Duration::from_micros(shape.gap_us);
        while std::time::Instant::now() < until {
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
    // SAFETY: epoll_create1 has no preconditions.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    for (i, r) in receivers.iter().enumerate() {
        r.set_nonblocking(true)?;
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: a valid epoll fd, an open socket, and an event to copy from.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut event) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = vec![0u8; 1 << 16];
    let (mut got, mut ended) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got < total_bytes && ended < receivers.len() && std::time::Instant::now() < deadline {
        // Polls, as the load generator does: a sleeping reader makes every send pay for
        // waking it, which the runs keep out of the server's CPU.
        // SAFETY: `events` has room for 64 entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 64, 0) };
        for e in &events[..n.max(0) as usize] {
            let mut r = &receivers[e.u64 as usize];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => {
                        ended += 1;
                        break;
                    }
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // SAFETY: closing the epoll fd this function made.
    unsafe { libc::close(epoll) };
    Ok(got)
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
                floor.send_us > 0.2 && floor.send_us < 1_000.0,
                "{via:?} {floor:?}"
            );
            assert!(floor.deliveries_per_cpu_s() > 1_000.0);
        }
    }
}
