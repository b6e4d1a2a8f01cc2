//! The kernel's receive stamps (`SO_TIMESTAMPNS`): when a delivery's bytes reached the
//! generator's socket. On loopback the kernel stamps a packet as the sender's `sendmsg`
//! hands it to the loopback device, on the sender's core, so the latency to the stamp is
//! the server's part of a delivery: whatever holds the generator back before it reads
//! (its core busy with a storm's handshakes, say) is left out of it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Asks the kernel to stamp what arrives on `fd`. The kernel turns stamping on for the
/// whole machine a moment later, so the first packets may arrive unstamped.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a socket descriptor and an option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking `recv` into `buf` that also says when the last of the bytes read
/// arrived (`None`: not stamped). TCP gives the stamp of the last packet read, so a read
/// that takes several frames dates them all by the latest: never earlier than they came.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    // Room for one `timespec` control message, aligned as `cmsghdr` needs.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid `msghdr`; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes `buf` and `control`, both valid for their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, stamp(&msg).map(to_instant)))
}

/// The `SCM_TIMESTAMPNS` message's time, if `msg` holds one.
fn stamp(msg: &libc::msghdr) -> Option<libc::timespec> {
    // SAFETY: `msg` was filled by `recvmsg`; the CMSG macros walk only its control buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let data = libc::CMSG_DATA(cmsg) as *const libc::timespec;
                return Some(std::ptr::read_unaligned(data));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// A wall-clock stamp as an `Instant`: now, less how long ago the stamp was by the wall
/// clock (read beside it, so a wall clock set between runs does not matter).
fn to_instant(stamp: libc::timespec) -> Instant {
    let now = Instant::now();
    let wall_now = wall_clock();
    let at = Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
    now.checked_sub(wall_now.saturating_sub(at)).unwrap_or(now)
}

fn wall_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// Bytes that wait 30 ms in the socket are dated to their arrival, not to the read.
    #[test]
    fn a_read_is_dated_to_when_its_bytes_arrived() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        enable(server.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        // Stamping starts a moment after it is asked for: send until a read is stamped.
        for _ in 0..100 {
            let sent = Instant::now();
            client.write_all(b"hello").unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let (n, arrived) = recv(server.as_raw_fd(), &mut buf).unwrap();
            let read = Instant::now();
            assert_eq!(&buf[..n], b"hello");
            if let Some(arrived) = arrived {
                assert!(
                    arrived >= sent - Duration::from_millis(1),
                    "before the send"
                );
                assert!(
                    read.duration_since(arrived) >= Duration::from_millis(25),
                    "dated {:?} before the read, not at the arrival 30 ms before",
                    read.duration_since(arrived)
                );
                return;
            }
        }
        panic!("no read was stamped in 100 tries");
    }

    #[test]
    fn an_empty_socket_would_block() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let error = recv(server.as_raw_fd(), &mut [0u8; 8]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
