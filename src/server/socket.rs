//! Socket I/O for one connection: reads into caller buffers, and the writer that drains an
//! `Outbox` with vectored, non-blocking sends.
//!
//! Reader and writer are separate tasks over one glommio `TcpStream`; the stream sits in a
//! `RefCell` that is borrowed only inside a single `poll`, never across an `.await`.

use crate::outbox::{Frame, Outbox};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;

pub type SharedStream = Rc<RefCell<TcpStream>>;

/// Frames gathered into one `sendmsg`.
const BATCH_FRAMES_MAX: usize = 64;

/// Reads into `buf`, which is only borrowed while the read is polled: callers pass a shared
/// scratch buffer through `with_buf`.
pub async fn read_with<B>(stream: &SharedStream, buf: &RefCell<B>) -> io::Result<usize>
where
    B: AsMut<[u8]>,
{
    poll_fn(|cx| {
        let mut buf = buf.borrow_mut();
        Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf.as_mut())
    })
    .await
}

/// Reads into a buffer the caller owns.
pub async fn read(stream: &SharedStream, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await
}

pub async fn write_all(stream: &SharedStream, mut buf: &[u8]) -> io::Result<()> {
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
pub fn shutdown(stream: &SharedStream) {
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: `fd` is the stream's open socket; shutdown does not close it.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Writes everything the outbox holds until it is closed and empty. Returns the bytes written.
pub async fn drain_outbox(
    stream: &SharedStream,
    outbox: &Outbox,
    bytes_out: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let fd = stream.borrow().as_raw_fd();
    let mut batch: Vec<Frame> = Vec::with_capacity(BATCH_FRAMES_MAX);
    while poll_fn(|cx| outbox.poll_pending(cx)).await {
        let offset = outbox.take_batch(&mut batch, BATCH_FRAMES_MAX);
        let written = match send_vectored(fd, &batch, offset) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Wait for room through glommio, writing (part of) the first frame.
                let first = &batch[0][offset..];
                poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, first)).await?
            }
            Err(e) => return Err(e),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        outbox.consume(written);
        super::stats::add(bytes_out, written as u64);
        batch.clear();
    }
    Ok(())
}

/// One non-blocking `sendmsg` of the batch, the first frame from `offset`.
fn send_vectored(fd: i32, batch: &[Frame], offset: usize) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH_FRAMES_MAX];
    for (i, frame) in batch.iter().enumerate() {
        let bytes = if i == 0 { &frame[offset..] } else { &frame[..] };
        iov[i] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
    }
    // SAFETY: an all-zero msghdr is valid; we then point it at `iov`, which outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = batch.len() as _;
    // SAFETY: `msg` describes buffers borrowed from `batch` for the duration of the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
