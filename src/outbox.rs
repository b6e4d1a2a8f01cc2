//! A connection's bounded outbound queue of shared, already-encoded frames.
//!
//! A broadcast encodes its frame once and queues the same `Rc` on every subscriber; the
//! connection's writer drains its outbox with vectored writes. A consumer that falls
//! `outbound_bytes_max` behind is cut off: its queue is dropped and a close frame takes its
//! place (it resyncs when it reconnects), so a slow client never grows server memory.
//! A push that finds the queue empty sends at once (write-through, see [`WriteThrough`]):
//! the writer task is woken only for what the socket did not take.
//! Free of any runtime and of I/O: the writer waits through a plain `Waker`, and the
//! write-through send is a function the server hands in.

use crate::ws::close;
use crate::ws::frame::{encode_header, Opcode, SERVER_HEADER_MAX};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// One complete server frame (header and payload), shared by every queue it is on. An `Arc`:
/// a document's frames reach the sockets of other shards (a Hocuspocus socket's documents
/// live on their owner shards) without a copy.
pub type Frame = Arc<[u8]>;

/// Encodes an unfragmented server frame whose payload is `parts` joined, in one allocation.
pub fn shared_frame(opcode: Opcode, parts: &[&[u8]]) -> Frame {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; SERVER_HEADER_MAX];
    let header_len = encode_header(&mut header, opcode, payload_len);
    let mut frame = Arc::<[u8]>::new_uninit_slice(header_len + payload_len);
    let dst = Arc::get_mut(&mut frame).expect("a new Arc is unique");
    let mut at = 0;
    for part in std::iter::once(&header[..header_len]).chain(parts.iter().copied()) {
        for (d, s) in dst[at..at + part.len()].iter_mut().zip(part) {
            d.write(*s);
        }
        at += part.len();
    }
    assert_eq!(at, dst.len());
    // SAFETY: every byte was written above (asserted: `at` covers the whole slice).
    unsafe { frame.assume_init() }
}

/// A binary frame of `payload` (what every document message is).
pub fn binary_frame(payload: &[u8]) -> Frame {
    shared_frame(Opcode::Binary, &[payload])
}

/// The payload of a frame made by [`shared_frame`] (its header's length is read back from
/// the second byte, which a server frame never masks).
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let header_len = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[header_len..]
}

/// Why the outbox stopped taking frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A close frame is queued after the data (an orderly close).
    Closing,
    /// The consumer fell too far behind; its data was dropped.
    Overflowed,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Frame>,
    /// Bytes of `queue[0]` already written.
    head_written: usize,
    queued_bytes: usize,
    /// Bytes ever taken by the consumer: whether it is still reading.
    written_bytes: u64,
    closed: Option<Closed>,
    /// The code of the close frame queued, if any.
    close_code: Option<u16>,
    /// The client cannot see WebSocket pings and takes an application-level one (a v4
    /// Hocuspocus provider's `09`) beside them.
    in_band_keepalive: bool,
    waker: Option<Waker>,
}

/// A non-blocking vectored send of `frames` (in order) on `fd`: the bytes it took, or the
/// error (`WouldBlock` when the socket is full).
pub type SendNow = fn(fd: i32, frames: &mut dyn Iterator<Item = &[u8]>) -> std::io::Result<usize>;

/// How a push sends straight to the connection when nothing is queued: a broadcast then
/// costs one send per subscriber and no task wake (the server's `socket::send_vectored`).
#[derive(Debug, Clone, Copy)]
pub struct WriteThrough {
    pub fd: i32,
    pub send: SendNow,
}

#[derive(Debug)]
pub struct Outbox {
    inner: RefCell<Inner>,
    outbound_bytes_max: usize,
    /// Set once the connection's handshake is written (frames queued before it wait for the
    /// writer, behind the 101).
    write_through: std::cell::Cell<Option<WriteThrough>>,
}

impl Outbox {
    pub fn new(outbound_bytes_max: usize) -> Self {
        Outbox {
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                head_written: 0,
                queued_bytes: 0,
                written_bytes: 0,
                closed: None,
                close_code: None,
                in_band_keepalive: false,
                waker: None,
            }),
            outbound_bytes_max,
            write_through: std::cell::Cell::new(None),
        }
    }

    /// From now on a push that finds nothing queued is sent at once through `write_through`.
    pub fn write_through(&self, write_through: WriteThrough) {
        self.write_through.set(Some(write_through));
    }

    /// Queues a frame. Returns false if the outbox no longer takes frames, including when
    /// this push found the consumer over its budget (it is then closed with 1008).
    ///
    /// The budget counts what waits behind the frame being written: a frame larger than the
    /// whole budget (a big document sent to a joining client) still goes out, and the pings
    /// and updates queued behind it while the client downloads it do not cut the client off
    /// unless they pile up past the budget themselves.
    pub fn push(&self, frame: &Frame) -> bool {
        self.push_all(std::slice::from_ref(frame))
    }

    /// Queues frames, in order, as one push: with write-through, they leave in one send.
    pub fn push_all(&self, frames: &[Frame]) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.closed.is_some() {
            return false;
        }
        let head_left = inner
            .queue
            .front()
            .map_or(0, |f| f.len() - inner.head_written);
        if inner.queued_bytes - head_left >= self.outbound_bytes_max {
            drop(inner);
            self.cut_off();
            return false;
        }
        self.send_or_queue(&mut inner, frames);
        true
    }

    /// Sends what the socket takes at once when nothing is queued (so nothing can be sent
    /// out of order, and no writer is mid-frame), queues the rest and wakes the writer for it.
    fn send_or_queue(&self, inner: &mut Inner, frames: &[Frame]) {
        let mut sent = 0;
        if let (true, Some(w)) = (inner.queue.is_empty(), self.write_through.get()) {
            // An error (the peer is gone) is left for the writer to find on the queued bytes.
            sent = (w.send)(w.fd, &mut frames.iter().map(|f| &f[..])).unwrap_or(0);
            inner.written_bytes += sent as u64;
        }
        for frame in frames {
            if sent >= frame.len() {
                sent -= frame.len();
                continue;
            }
            // Only the first frame not wholly sent can be partly sent; it is the head.
            if sent > 0 {
                assert!(inner.queue.is_empty() && inner.head_written == 0);
                inner.head_written = sent;
            }
            inner.queued_bytes += frame.len() - sent;
            inner.queue.push_back(frame.clone());
            sent = 0;
        }
        if !inner.queue.is_empty() {
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
    }

    /// Queues a close frame after whatever is queued; nothing more is taken after it.
    pub fn close(&self, code: u16, reason: &str) {
        let mut inner = self.inner.borrow_mut();
        if inner.closed.is_some() {
            return;
        }
        let frame = shared_frame(Opcode::Close, &[&close::close_payload(code, reason)]);
        inner.closed = Some(Closed::Closing);
        inner.close_code = Some(code);
        self.send_or_queue(&mut inner, &[frame]);
        // The writer ends once the close is written, and is woken to see that.
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// Drops the queued data (all but the first frame, which the writer may be writing right
    /// now, from its own reference, and which must finish to keep the stream well formed)
    /// and queues the slow consumer's close in its place.
    fn cut_off(&self) {
        let mut inner = self.inner.borrow_mut();
        let keep = usize::from(!inner.queue.is_empty());
        inner.queue.truncate(keep);
        inner.queued_bytes =
            inner.queue.iter().map(|f| f.len()).sum::<usize>() - inner.head_written;
        drop(inner);
        let (code, reason) = crate::refusal::Refusal::SlowConsumer.close();
        self.close(code, &reason);
        self.inner.borrow_mut().closed = Some(Closed::Overflowed);
    }

    /// From now on the keepalive sends an application-level ping beside the WebSocket one.
    pub fn set_in_band_keepalive(&self) {
        self.inner.borrow_mut().in_band_keepalive = true;
    }

    pub fn in_band_keepalive(&self) -> bool {
        self.inner.borrow().in_band_keepalive
    }

    pub fn closed(&self) -> Option<Closed> {
        self.inner.borrow().closed
    }

    /// The code of the close frame queued, once closed.
    pub fn close_code(&self) -> Option<u16> {
        self.inner.borrow().close_code
    }

    pub fn queued_bytes(&self) -> usize {
        self.inner.borrow().queued_bytes
    }

    /// Bytes the consumer has taken so far.
    pub fn written_bytes(&self) -> u64 {
        self.inner.borrow().written_bytes
    }

    /// Writer side: ready with `true` when frames are queued, `false` when the outbox is
    /// closed and fully written (the writer is done).
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut inner = self.inner.borrow_mut();
        if !inner.queue.is_empty() {
            return Poll::Ready(true);
        }
        if inner.closed.is_some() {
            return Poll::Ready(false);
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Writer side: calls `f` with the unwritten bytes of the queued frames, in order (the
    /// first one may be partly written). The queue is borrowed for the call, so `f` must not
    /// touch the outbox; it hands the slices to one vectored send, no copies.
    pub fn with_unwritten<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &[u8]>) -> R) -> R {
        let inner = self.inner.borrow();
        let head_written = inner.head_written;
        let mut slices = inner.queue.iter().enumerate().map(|(i, frame)| {
            if i == 0 {
                &frame[head_written..]
            } else {
                &frame[..]
            }
        });
        f(&mut slices)
    }

    /// Writer side: the first queued frame and how many of its bytes are written, to wait for
    /// the socket with when it is full.
    pub fn head(&self) -> Option<(Frame, usize)> {
        let inner = self.inner.borrow();
        inner.queue.front().map(|f| (f.clone(), inner.head_written))
    }

    /// For a consumer that forwards whole frames (a document's subscriber on another shard):
    /// takes every queued frame, and, once the outbox is closed, the close frame's code and
    /// reason apart from them.
    pub fn take_frames(&self) -> (Vec<Frame>, Option<(u16, String)>) {
        let mut inner = self.inner.borrow_mut();
        assert_eq!(
            inner.head_written, 0,
            "a forwarding consumer never writes part of a frame"
        );
        inner.written_bytes += inner.queued_bytes as u64;
        inner.queued_bytes = 0;
        let mut frames: Vec<Frame> = inner.queue.drain(..).collect();
        // A closed outbox's close frame is the last it queued, and nothing follows it.
        let close = match (inner.closed, inner.close_code) {
            (Some(_), Some(code)) if !frames.is_empty() => {
                let frame = frames.pop().expect("not empty");
                let reason = match close::parse_close_payload(frame_payload(&frame)) {
                    Ok(close::ClosePayload::Code { reason, .. }) => reason.to_owned(),
                    _ => String::new(),
                };
                Some((code, reason))
            }
            _ => None,
        };
        (frames, close)
    }

    /// Writer side: `n` more bytes went out.
    pub fn consume(&self, mut n: usize) {
        let mut inner = self.inner.borrow_mut();
        assert!(n <= inner.queued_bytes, "consumed more than was queued");
        inner.queued_bytes -= n;
        inner.written_bytes += n as u64;
        while n > 0 {
            let head_left = inner.queue[0].len() - inner.head_written;
            if n >= head_left {
                n -= head_left;
                inner.queue.pop_front();
                inner.head_written = 0;
            } else {
                inner.head_written += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_payload_is_found_behind_each_header_length() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let frame = shared_frame(Opcode::Binary, &[&payload]);
            assert_eq!(frame_payload(&frame), &payload[..], "{len}");
        }
    }
    use std::task::Waker;

    fn frame(len: usize) -> Frame {
        shared_frame(Opcode::Binary, &[&vec![7u8; len]])
    }

    fn unwritten(o: &Outbox) -> Vec<Vec<u8>> {
        o.with_unwritten(|it| it.map(<[u8]>::to_vec).collect())
    }

    #[test]
    fn shared_frames_are_well_formed() {
        let f = shared_frame(Opcode::Binary, &[b"ab", b"", b"c"]);
        assert_eq!(&f[..], &[0x82, 3, b'a', b'b', b'c']);
        let big = shared_frame(Opcode::Text, &[&[b'x'; 300]]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        assert_eq!(big.len(), 304);
    }

    #[test]
    fn partial_writes_advance_through_frames() {
        let o = Outbox::new(1 << 20);
        let (a, b) = (frame(10), frame(20));
        assert!(o.push(&a) && o.push(&b));
        assert_eq!(unwritten(&o), vec![a.to_vec(), b.to_vec()]);
        o.consume(5);
        assert_eq!(unwritten(&o)[0], a[5..].to_vec());
        o.consume(a.len() - 5 + 3);
        assert_eq!(unwritten(&o), vec![b[3..].to_vec()]);
        assert_eq!(o.head().unwrap().1, 3);
        o.consume(b.len() - 3);
        assert!(o.head().is_none());
        assert_eq!(o.queued_bytes(), 0);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_pending(&mut cx), Poll::Pending);
    }

    #[test]
    fn a_slow_consumer_is_cut_off_at_the_budget_and_memory_is_released() {
        let o = Outbox::new(100);
        let f = frame(40);
        assert!(o.push(&f)); // the head, being written
        assert!(o.push(&f)); // 42 behind it
        assert!(o.push(&f)); // 84
        assert!(o.push(&f)); // 126: over budget only after this push
        assert!(!o.push(&f));
        assert_eq!(o.closed(), Some(Closed::Overflowed));
        assert_eq!(o.close_code(), Some(1008));
        // The head (the writer may be writing it) and the close frame are left; the frames
        // behind the head are no longer held.
        assert_eq!(Arc::strong_count(&f), 2, "ours and the head's");
        let left = unwritten(&o);
        assert_eq!(left.len(), 2);
        assert_eq!(left[0], f.to_vec());
        assert_eq!(left[1][0], 0x88);
        assert_eq!(u16::from_be_bytes([left[1][2], left[1][3]]), 1008);
        assert!(!o.push(&f));
    }

    #[test]
    fn a_big_frame_being_written_does_not_count_against_what_follows_it() {
        let o = Outbox::new(100);
        let snapshot = frame(10_000);
        assert!(o.push(&snapshot));
        o.consume(1_000);
        // Small frames behind it are taken until they reach the budget themselves.
        let small = frame(40);
        assert!(o.push(&small)); // 42 behind the head
        assert!(o.push(&small)); // 84
        assert!(o.push(&small)); // 126: over only after this push
        assert!(!o.push(&small));
        assert_eq!(o.closed(), Some(Closed::Overflowed));
    }

    #[test]
    fn a_partly_written_frame_survives_the_cut_off() {
        let o = Outbox::new(50);
        let f = frame(40);
        assert!(o.push(&f));
        assert!(o.push(&f));
        o.consume(10);
        assert!(o.push(&f)); // 42 behind the head, then 84: over budget after this push
        assert!(!o.push(&f));
        let left = unwritten(&o);
        assert_eq!(left.len(), 2);
        assert_eq!(left[0], f[10..].to_vec());
        assert_eq!(o.queued_bytes(), left[0].len() + left[1].len());
    }

    /// The writer waits for room with the head frame in hand before anything of it is
    /// written; a cut-off meanwhile must keep that frame, or the bytes the writer then sends
    /// are taken from the close frame (found in review: a panic in `consume`, which ended the
    /// shard).
    #[test]
    fn a_head_frame_not_yet_written_survives_the_cut_off() {
        let o = Outbox::new(50);
        let big = frame(100);
        assert!(o.push(&big));
        let (held_by_writer, offset) = o.head().unwrap();
        assert_eq!(offset, 0);
        let f = frame(40);
        assert!(o.push(&f));
        assert!(o.push(&f));
        assert!(!o.push(&f), "over budget: cut off");
        // The writer's write of 90 bytes of the head then completes.
        o.consume(90);
        let left = unwritten(&o);
        assert_eq!(left[0], held_by_writer[90..].to_vec());
        assert_eq!(left.len(), 2, "the rest of the head, then the close");
        o.consume(left.iter().map(Vec::len).sum());
        assert_eq!(o.close_code(), Some(1008));
    }

    #[test]
    fn close_is_last_and_final() {
        let o = Outbox::new(1000);
        assert!(o.push(&frame(1)));
        o.close(1000, "bye");
        assert!(!o.push(&frame(1)));
        let left = unwritten(&o);
        assert_eq!(left.len(), 2);
        o.consume(left.iter().map(Vec::len).sum());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_pending(&mut cx), Poll::Ready(false));
    }

    thread_local! {
        /// What the fake socket below took, and how many more bytes it takes.
        static SOCKET: std::cell::RefCell<(Vec<u8>, usize, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0, 0)) };
    }

    /// A socket with room for what `SOCKET.1` says; counts its calls in `SOCKET.2`.
    fn fake_send(_fd: i32, frames: &mut dyn Iterator<Item = &[u8]>) -> std::io::Result<usize> {
        SOCKET.with_borrow_mut(|(taken, room, calls)| {
            *calls += 1;
            if *room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for f in frames {
                let k = f.len().min(*room);
                taken.extend_from_slice(&f[..k]);
                *room -= k;
                n += k;
            }
            Ok(n)
        })
    }

    fn written_through(room: usize) -> Outbox {
        SOCKET.with_borrow_mut(|s| *s = (Vec::new(), room, 0));
        let o = Outbox::new(1 << 20);
        o.write_through(WriteThrough {
            fd: -1,
            send: fake_send,
        });
        o
    }

    fn socket() -> (Vec<u8>, usize) {
        SOCKET.with_borrow(|(taken, _, calls)| (taken.clone(), *calls))
    }

    #[test]
    fn a_push_to_an_empty_outbox_is_sent_at_once_and_only_the_rest_queued() {
        let o = written_through(1 << 20);
        let (a, b) = (frame(10), frame(20));
        assert!(o.push_all(&[a.clone(), b.clone()]));
        assert_eq!(
            socket(),
            ([&a[..], &b[..]].concat(), 1),
            "one send for both"
        );
        assert!(unwritten(&o).is_empty());
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.written_bytes(), (a.len() + b.len()) as u64);

        // The socket takes 5 bytes: the rest of the frame waits as the head, partly written.
        let o = written_through(5);
        assert!(o.push(&a));
        assert_eq!(unwritten(&o), vec![a[5..].to_vec()]);
        assert_eq!((o.queued_bytes(), o.written_bytes()), (a.len() - 5, 5));
        // Something is queued now: the next push waits behind it, unsent.
        SOCKET.with_borrow_mut(|s| s.1 = 1 << 20);
        assert!(o.push(&b));
        assert_eq!(socket().1, 1, "no second send past a queued frame");
        assert_eq!(unwritten(&o), vec![a[5..].to_vec(), b.to_vec()]);
        o.consume(a.len() - 5 + b.len());
        assert_eq!(o.written_bytes(), (a.len() + b.len()) as u64);

        // A full socket: everything waits for the writer, which is woken.
        let o = written_through(0);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_pending(&mut cx), Poll::Pending);
        assert!(o.push(&a));
        assert_eq!(unwritten(&o), vec![a.to_vec()]);
        assert_eq!(o.poll_pending(&mut cx), Poll::Ready(true));
    }

    #[test]
    fn a_close_is_written_through_too_and_the_writer_then_ends() {
        let o = written_through(1 << 20);
        o.close(1008, "slow");
        let (taken, _) = socket();
        assert_eq!(taken[0], 0x88);
        assert_eq!(u16::from_be_bytes([taken[2], taken[3]]), 1008);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_pending(&mut cx), Poll::Ready(false));
    }
}
