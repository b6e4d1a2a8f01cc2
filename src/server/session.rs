//! A WebSocket session after the 101: reads frames, assembles messages, answers control
//! frames, and passes data messages to a `Handler` (a document, or the echo route). The
//! same task drains the connection's `Outbox` while it waits to read (what a push could not
//! send at once, see `Outbox::write_through`).

use super::handler::Handler;
use super::shard::{Liveness, Shard, Stamp, SCRATCH_BYTES};
use super::socket::{self, Stream};
use super::stats;
use crate::outbox::{shared_frame, Closed, Outbox};
use crate::refusal::Refusal;
use crate::ws::close::{self, ClosePayload};
use crate::ws::frame::{parse_header, Opcode};
use crate::ws::mask::unmask;
use crate::ws::message::{Assembler, Event};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

/// What counts as progress for an incomplete frame or message, besides a message ending:
/// this many more bytes of it. A client trickling a byte at a time does not progress.
const PROGRESS_BYTES: usize = SCRATCH_BYTES;

/// Runs `handler` against the connection until either side closes. `pending` starts with
/// the bytes the client sent after its request head. The stream lives in the session's
/// future (not behind an `Rc` of its own: one allocation less per idle connection).
/// (Not an `async fn`: its arguments would sit in the future twice, as arguments and as the
/// locals they are moved into, in every idle connection.)
#[allow(clippy::manual_async_fn)]
pub fn run(
    shard: Rc<Shard>,
    stream: Stream,
    outbox: Rc<Outbox>,
    mut pending: Vec<u8>,
    mut handler: Box<dyn Handler>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*stream.borrow());
        let registration = shard.register(outbox.clone(), fd);
        // The 101 is out: from here a push that finds nothing queued is sent at once.
        outbox.write_through(crate::outbox::WriteThrough {
            fd,
            send: socket::send_vectored,
        });
        // The reading phase, in a block of its own: the future then keeps no room for its
        // state through the close wait after it. (Every idle connection holds this future,
        // sized for its largest wait, so the waits hold references, not copies.)
        let peer_closed = {
            let mut frames = Frames {
                peer_closed: false,
                shard: &shard,
                outbox: &outbox,
                assembler: Assembler::new(shard.message_limits),
                frame_bytes_max: shard.config().websocket.frame_bytes_max,
                held_bytes: 0,
                progress_mark_bytes: 0,
                message_completed: false,
            };
            // `pending` holds only the bytes of a frame cut across reads; whole frames are
            // handled straight from the shard's scratch buffer.
            let mut open =
                pending.is_empty() || frames.process_pending(&mut pending, handler.as_mut());
            open = open && frames.hold(&pending);
            frames.track_progress(&pending, &registration.live);
            while open {
                // A frame cut across reads is read into room after its bytes, made here once
                // per read (not on every poll of the wait).
                let start = pending.len();
                if start > 0 && !frames.make_room(&mut pending) {
                    break;
                }
                // One task reads and writes: the outbox is drained while the read waits (an
                // idle connection holds no writer task of its own). One poll function, not
                // two futures raced: its state is a few references. A poll that reads skips
                // the drain; the next wait drains (the outbox keeps its place).
                let step = std::future::poll_fn(|cx| {
                    let read =
                        poll_read(cx, &shard, &stream, handler.as_mut(), &mut pending[start..]);
                    if read.is_ready() {
                        return read;
                    }
                    // Done: the outbox is closed and written, or the peer is gone.
                    socket::poll_drain(&stream, &outbox, cx).map(|_| Step::Written)
                })
                .await;
                let n = match step {
                    Step::Read(Ok(n)) if n > 0 => n,
                    Step::Written => {
                        socket::shutdown(&stream);
                        break;
                    }
                    Step::Read(_) => break,
                };
                if start > 0 {
                    // What did not arrive is not kept (the room made is).
                    pending.truncate(start + n);
                }
                // Refused meanwhile (the sweep, a full outbox): nothing more it sends counts.
                if outbox.closed().is_some() {
                    break;
                }
                registration.live.last_rx.set(Stamp::now());
                stats::add(&shard.my_stats().bytes_in_total, n as u64);
                open = if pending.is_empty() {
                    let mut scratch = shard.scratch.borrow_mut();
                    let data = &mut scratch[..n];
                    let (consumed, open) = frames.process(data, handler.as_mut());
                    if open {
                        pending.extend_from_slice(&data[consumed..]);
                    }
                    open
                } else {
                    frames.process_pending(&mut pending, handler.as_mut())
                };
                open = open && frames.hold(&pending);
                frames.track_progress(&pending, &registration.live);
            }
            frames.peer_closed
        };
        super::contain::end(shard.my_stats(), handler.as_mut());
        if outbox.closed() == Some(Closed::Overflowed) {
            stats::add(&shard.my_stats().slow_consumer_closes_total, 1);
        }
        // A close the client started is echoed, not a refusal.
        if let (Some(code), false) = (outbox.close_code(), peer_closed) {
            shard.my_stats().count_rejection(code);
        }
        // Not held through the close wait.
        drop(pending);
        // A client that vanished gets no close frame; this only lets the writing finish.
        outbox.close(close::NORMAL, "");
        let close_timeout = Duration::from_millis(shard.config().websocket.close_timeout_ms);
        let written = async {
            let _ = std::future::poll_fn(|cx| socket::poll_drain(&stream, &outbox, cx)).await;
        };
        futures_lite::future::or(written, glommio::timer::sleep(close_timeout)).await;
        socket::shutdown(&stream);
        drop(registration);
    }
}

/// One poll of the session's read, once its handler takes messages: into `room` after the
/// bytes of a frame cut across reads, or (no such frame: `room` is empty) into the shard's
/// scratch buffer.
fn poll_read(
    cx: &mut Context<'_>,
    shard: &Shard,
    stream: &Stream,
    handler: &mut dyn Handler,
    room: &mut [u8],
) -> Poll<Step> {
    if handler.poll_read_ready(cx).is_pending() {
        return Poll::Pending;
    }
    let read = if room.is_empty() {
        socket::poll_read_with(stream, &shard.scratch, SCRATCH_BYTES, cx)
    } else {
        socket::poll_read(stream, room, cx)
    };
    read.map(Step::Read)
}

/// What one turn of the session loop came to.
enum Step {
    Read(std::io::Result<usize>),
    /// The outbox is closed and written (or the peer is gone): the session is over.
    Written,
}

struct Frames<'s> {
    /// The client sent a close frame (ours only answers it).
    peer_closed: bool,
    shard: &'s Rc<Shard>,
    outbox: &'s Rc<Outbox>,
    assembler: Assembler,
    frame_bytes_max: usize,
    /// Bytes of incomplete frames and messages (buffer capacity) this connection has
    /// counted in the node's `incomplete_bytes`.
    held_bytes: usize,
    /// Bytes of the incomplete frame and message when they last made progress.
    progress_mark_bytes: usize,
    /// A data message ended during this read.
    message_completed: bool,
}

/// Gives back what [`Frames::hold`] counted, however the session ends.
impl Drop for Frames<'_> {
    fn drop(&mut self) {
        let total = &self.shard.shared.incomplete_bytes;
        total.fetch_sub(std::mem::take(&mut self.held_bytes), Relaxed);
    }
}

impl Frames<'_> {
    /// Counts what this connection holds of incomplete frames and messages in the node's
    /// total; past `incomplete_bytes_max` (or past half of it, for a connection holding more
    /// than a sixteenth) the connection is refused (1013) and false returned.
    fn hold(&mut self, pending: &Vec<u8>) -> bool {
        let held = pending.capacity() + self.assembler.held_bytes();
        let total = &self.shard.shared.incomplete_bytes;
        if held <= self.held_bytes {
            total.fetch_sub(self.held_bytes - held, Relaxed);
            self.held_bytes = held;
            return true;
        }
        let more = held - self.held_bytes;
        let now_total = total.fetch_add(more, Relaxed) + more;
        self.held_bytes = held;
        let max = self.shard.config().websocket.incomplete_bytes_max;
        // Past half the bound, no one connection may hold more than a sixteenth of it: a
        // few slow large messages cannot take the room every other client's frames need.
        let fair = now_total <= max / 2 || held <= max / 16;
        if now_total <= max && fair {
            return true;
        }
        stats::add(&self.shard.my_stats().incomplete_bytes_closes_total, 1);
        self.refuse(&Refusal::IncompleteBytes);
        false
    }

    /// After a read: restarts the incomplete frame or message's clock (which the keepalive
    /// sweep watches) when it made progress, clears it when nothing is incomplete. Progress
    /// is a data message ending, or the incomplete data growing by [`PROGRESS_BYTES`] and by
    /// an eighth of itself (at most 1 MiB): bytes that do not add to it (pings) are not
    /// progress, and a large message must keep coming in proportion, so one cannot be held
    /// open for long.
    fn track_progress(&mut self, pending: &[u8], live: &Liveness) {
        let completed = std::mem::take(&mut self.message_completed);
        let incomplete = pending.len() + self.assembler.buffered_bytes();
        if pending.is_empty() && !self.assembler.in_message() {
            live.incomplete_since.set(None);
            return;
        }
        let mark = self.progress_mark_bytes;
        // An eighth, up to 1 MiB: a 16 MiB upload must bring 1 MiB per timeout (35 KB/s).
        let grown = incomplete >= mark + PROGRESS_BYTES.max(mark / 8).min(1 << 20);
        if live.incomplete_since.get().is_none() || completed || grown {
            live.incomplete_since.set(Some(Stamp::now()));
            self.progress_mark_bytes = incomplete;
        }
    }

    /// Handles the whole frames in `pending` and keeps the rest.
    fn process_pending(&mut self, pending: &mut Vec<u8>, handler: &mut dyn Handler) -> bool {
        let (consumed, open) = self.process(pending, handler);
        pending.drain(..consumed);
        if pending.is_empty() && pending.capacity() > SCRATCH_BYTES {
            *pending = Vec::new();
        }
        open
    }

    /// Makes room after the bytes of a frame cut across reads for the next read, counted
    /// by [`Frames::hold`]; false if that refuses the connection. Grown by a quarter (at least
    /// a scratch buffer), reserved exactly, only when the room left is too small: so the
    /// buffer holds at most a quarter more than has arrived, and reallocation is amortized
    /// over many reads.
    fn make_room(&mut self, pending: &mut Vec<u8>) -> bool {
        let start = pending.len();
        let want = self.next_read_len(pending);
        if pending.capacity() - start < want {
            pending.reserve_exact((start / 4).max(SCRATCH_BYTES));
        }
        pending.resize(start + want, 0);
        self.hold(pending)
    }

    /// How much to read next into `pending`: a scratch buffer's worth, never more than the
    /// rest of the cut frame. So the buffer grows with the bytes that arrive, never to what
    /// a header announces (15 bytes announcing 16 MiB cost one scratch buffer), and no read
    /// zero-fills more than a scratch buffer ahead of the data.
    fn next_read_len(&self, pending: &[u8]) -> usize {
        match parse_header(pending, self.frame_bytes_max) {
            Ok(Some(h)) => h
                .frame_len()
                .saturating_sub(pending.len())
                .clamp(1, SCRATCH_BYTES),
            _ => SCRATCH_BYTES,
        }
    }

    /// Handles every whole frame at the start of `data` (unmasking in place), then ends the
    /// handler's batch. Returns the bytes consumed and whether the session stays open.
    fn process(&mut self, data: &mut [u8], handler: &mut dyn Handler) -> (usize, bool) {
        let (consumed, open) = self.process_frames(data, handler);
        match guarded(|| handler.on_batch_end()) {
            Ok(()) => (consumed, open),
            Err(refused) => {
                if open {
                    self.refuse_guarded(refused, handler);
                } else if matches!(refused, Guarded::Panicked) {
                    // Already closing: only the document needs its reset.
                    stats::add(&self.shard.my_stats().panics_total, 1);
                    handler.on_panic();
                }
                (consumed, false)
            }
        }
    }

    fn process_frames(&mut self, data: &mut [u8], handler: &mut dyn Handler) -> (usize, bool) {
        let mut at = 0;
        loop {
            // Refused meanwhile (its outbox overflowed): the rest of the read counts for
            // nothing.
            if self.outbox.closed().is_some() {
                return (at, false);
            }
            let header = match parse_header(&data[at..], self.frame_bytes_max) {
                Ok(Some(h)) if h.frame_len() <= data.len() - at => h,
                Ok(_) => return (at, true),
                Err(e) => {
                    self.refuse(&Refusal::Frame(e));
                    return (at, false);
                }
            };
            let payload = &mut data[at + header.header_len..at + header.frame_len()];
            unmask(payload, header.mask, 0);
            at += header.frame_len();
            let event = match self.assembler.push(&header, payload) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => {
                    self.refuse(&Refusal::Message(e));
                    return (at, false);
                }
            };
            match event {
                Event::Ping(p) => {
                    self.outbox.push(&shared_frame(Opcode::Pong, &[p]));
                }
                Event::Pong(_) => {}
                Event::Close(p) => {
                    self.peer_closed = true;
                    match close::parse_close_payload(p) {
                        Ok(ClosePayload::Empty) => self.outbox.close(close::NORMAL, ""),
                        Ok(ClosePayload::Code { code, .. }) => self.outbox.close(code, ""),
                        Err(e) => self.refuse(&Refusal::BadClose(e)),
                    }
                    return (at, false);
                }
                Event::Message { opcode, payload } => {
                    self.message_completed = true;
                    stats::add(&self.shard.my_stats().messages_in_total, 1);
                    match guarded(|| handler.on_message(opcode, payload)) {
                        Ok(()) => continue,
                        Err(refused) => {
                            self.refuse_guarded(refused, handler);
                            return (at, false);
                        }
                    }
                }
            }
        }
    }

    fn refuse(&self, refusal: &Refusal) {
        let (code, reason) = refusal.close();
        self.outbox.close(code, &reason);
    }

    /// Closes for a handler's refusal, or with 1011 for its panic.
    fn refuse_guarded(&self, refused: Guarded, handler: &mut dyn Handler) {
        let stats = self.shard.my_stats();
        let refusal = match refused {
            Guarded::Refused(refusal) => refusal,
            Guarded::Panicked => {
                stats::add(&stats.panics_total, 1);
                // A second panic here would end the shard; the handler's reset is simple.
                handler.on_panic();
                Refusal::Panicked
            }
        };
        stats::add(&stats.messages_refused_total, 1);
        self.refuse(&refusal);
    }
}

enum Guarded {
    Refused(Refusal),
    Panicked,
}

/// Runs one message's handling so that a panic in it ends only this connection (1011), not
/// the shard: every other connection and document on the shard goes on.
fn guarded(f: impl FnOnce() -> Result<(), Refusal>) -> Result<(), Guarded> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Guarded::Refused),
        Err(_) => Err(Guarded::Panicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::room::{Room, RoomConfig};
    use std::cell::RefCell;

    /// Every idle connection holds its session's future (boxed), sized for its largest wait:
    /// 528 bytes when the wait raced two futures that held copies of their references. (The
    /// compiler lays it out: after a toolchain update, see `-Zprint-type-sizes` before moving
    /// the bound.)
    #[test]
    fn a_sessions_future_stays_small() {
        fn output_bytes<F, R>(_: &F) -> usize
        where
            F: FnOnce(Rc<Shard>, Stream, Rc<Outbox>, Vec<u8>, Box<dyn Handler>) -> R,
        {
            std::mem::size_of::<R>()
        }
        let bytes = output_bytes(&run);
        assert!(bytes <= 400, "the session future grew to {bytes} bytes");
    }

    #[test]
    fn a_panic_in_a_handler_is_contained_and_the_room_stays_usable() {
        let room = RefCell::new(Room::new(RoomConfig::default()));
        let outbox = Rc::new(Outbox::new(1 << 20));
        let slot = room.borrow_mut().join(outbox);
        let result = guarded(|| {
            let _borrow = room.borrow_mut();
            panic!("boom while holding the room");
        });
        assert!(matches!(result, Err(Guarded::Panicked)));
        // The borrow was released by unwinding; the room still takes messages.
        assert!(room.borrow_mut().receive(slot, &[3], true).is_ok());
        assert!(matches!(
            guarded(|| Err(Refusal::NotBinary)),
            Err(Guarded::Refused(Refusal::NotBinary))
        ));
        assert!(guarded(|| Ok(())).is_ok());
    }
}
