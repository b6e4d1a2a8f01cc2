//! Socket I/O for one connection: reads into caller buffers, and the writer that drains an
//! `Outbox` with vectored, non-blocking sends.
//!
//! A session's read and its outbox's drain are polled by one task over one glommio
//! `TcpStream`; the stream sits in a `RefCell` that is borrowed only inside a single `poll`,
//! never across an `.await`.

use crate::outbox::Outbox;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// A connection's socket, borrowed only within one poll of its read or its drain.
pub type Stream = RefCell<TcpStream>;
/// Shared while a connection is admitted; its session then owns it (see `session::run`).
pub type SharedStream = Rc<Stream>;

/// Frames gathered into one `sendmsg`.
const BATCH_FRAMES_MAX: usize = 64;

/// Reads at most `bytes_max` bytes into the start of `buf`, which is only borrowed while
/// the read is polled: callers pass the shard's shared scratch buffer and take what they
/// need from it before they next await.
pub async fn read_with<B>(stream: &Stream, buf: &RefCell<B>, bytes_max: usize) -> io::Result<usize>
where
    B: AsMut<[u8]>,
{
    poll_fn(|cx| poll_read_with(stream, buf, bytes_max, cx)).await
}

/// One poll of [`read_with`].
pub fn poll_read_with<B>(
    stream: &Stream,
    buf: &RefCell<B>,
    bytes_max: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>>
where
    B: AsMut<[u8]>,
{
    let mut buf = buf.borrow_mut();
    let buf = buf.as_mut();
    let len = bytes_max.min(buf.len());
    poll_read(stream, &mut buf[..len], cx)
}

/// Reads into a buffer the caller owns.
pub async fn read(stream: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| poll_read(stream, buf, cx)).await
}

/// One poll of [`read`].
pub fn poll_read(stream: &Stream, buf: &mut [u8], cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)
}

pub async fn write_all(stream: &Stream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Shuts the socket down both ways: the peer sees the end, and our own pending read returns.
pub fn shutdown(stream: &Stream) {
    shutdown_how(stream, libc::SHUT_RDWR);
}

/// Shuts the socket's sending side: the peer reads the end, and may still send.
pub fn shutdown_write(stream: &Stream) {
    shutdown_how(stream, libc::SHUT_WR);
}

fn shutdown_how(stream: &Stream, how: libc::c_int) {
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: `fd` is the stream's open socket; shutdown does not close it.
    unsafe { libc::shutdown(fd, how) };
}

/// Writes what the outbox holds, until it is closed and empty (ready with `Ok`) or the peer
/// is gone (`Err`): each round is one non-blocking `sendmsg` over up to 64 queued frames,
/// straight from the shared buffers; when the socket is full, glommio is asked to wake us
/// once it has room. A poll function with no state of its own (the outbox keeps what was
/// written), so the session can drop and re-poll it freely, and it costs the idle session
/// nothing. (Pushes that find the outbox empty are sent by the pusher: see
/// `Outbox::write_through`.)
pub fn poll_drain(stream: &Stream, outbox: &Outbox, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let fd = stream.borrow().as_raw_fd();
    loop {
        match outbox.poll_pending(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(false) => return Poll::Ready(Ok(())),
            Poll::Ready(true) => {}
        }
        let written = match outbox.with_unwritten(|frames| send_vectored(fd, frames)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Full: glommio writes (part of) the first frame once there is room, and
                // wakes us then.
                let (frame, offset) = outbox.head().expect("poll_pending saw a frame");
                match Pin::new(&mut *stream.borrow_mut()).poll_write(cx, &frame[offset..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(written) => written?,
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        outbox.consume(written);
    }
}

/// One non-blocking `sendmsg` of up to [`BATCH_FRAMES_MAX`] frames (an `outbox::SendNow`).
pub fn send_vectored(fd: i32, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH_FRAMES_MAX];
    let mut count = 0;
    for (slot, bytes) in iov.iter_mut().zip(frames) {
        *slot = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        count += 1;
    }
    // SAFETY: an all-zero msghdr is valid; we then point it at `iov`, which outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count as _;
    // SAFETY: `msg` describes buffers the outbox keeps alive for the duration of the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
