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

/// Connections the sends go round: a server's broadcast sends once to each of many
/// subscribers, each socket idle since its last frame. (Back-to-back sends on one socket
/// are corked together by the kernel and cost a fraction of that.)
const SOCKETS: usize = 256;

/// Sends `sends` server frames of `frame_bytes` (header included), one `send` each, round
/// [`SOCKETS`] loopback TCP connections while a thread reads them all, and returns the
/// sender's CPU time per send. On loopback the sender's call also runs the receiving
/// socket's TCP input, as a server's does on the machine the clients share with it.
pub fn measure(frame_bytes: usize, sends: usize) -> io::Result<Floor> {
    assert!((2..=125).contains(&frame_bytes) && sends > 0);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut senders = Vec::with_capacity(SOCKETS);
    let mut receivers = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let sender = TcpStream::connect(listener.local_addr()?)?;
        sender.set_nodelay(true)?;
        senders.push(sender);
        receivers.push(listener.accept()?.0);
    }
    let total_bytes = frame_bytes * sends;
    let reader = std::thread::spawn(move || read_all(receivers, total_bytes));
    // An unmasked server binary frame: what a broadcast sends.
    let mut frame = vec![0u8; frame_bytes];
    frame[0] = 0x82;
    frame[1] = (frame_bytes - 2) as u8;
    let fds: Vec<i32> = senders.iter().map(AsRawFd::as_raw_fd).collect();
    let started = thread_cpu_us();
    let mut sent = 0;
    while sent < sends {
        let fd = fds[sent % SOCKETS];
        // SAFETY: `frame` outlives the call; `fd` is an open socket `senders` owns.
        let n = unsafe {
            libc::send(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match n {
            n if n == frame_bytes as isize => sent += 1,
            n if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
                std::thread::yield_now()
            }
            // A partial send of so small a frame does not happen on loopback; say so if it does.
            _ => return Err(io::Error::last_os_error()),
        }
    }
    let cpu_us = thread_cpu_us() - started;
    drop(senders);
    let received = reader.join().expect("reader thread")?;
    if received != total_bytes {
        return Err(io::Error::other(format!(
            "received {received} of {total_bytes} bytes"
        )));
    }
    Ok(Floor {
        frame_bytes,
        send_us: cpu_us / sends as f64,
    })
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
        // SAFETY: `events` has room for 64 entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 64, 100) };
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
    fn a_loopback_send_costs_some_microseconds() {
        let floor = measure(40, 2_000).unwrap();
        // A syscall through the TCP stack: not free, and not milliseconds.
        assert!(floor.send_us > 0.2 && floor.send_us < 1_000.0, "{floor:?}");
        assert!(floor.deliveries_per_cpu_s() > 1_000.0);
    }
}
