//! How a connection is answered and let go before any session: a complete HTTP answer, a
//! refusal told after the 101 with its close code, and the linger that keeps our close from
//! destroying the answer in flight.

use super::shard::Shard;
use super::socket::{self, SharedStream};
use super::stats;
use crate::refusal::{Refusal, Wire};
use crate::ws::handshake;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// `f`'s output, or `None` if `deadline` passes first. Not an `async fn`: one of those holds
/// a future it is given twice, as its argument and as what it awaits (an admission's
/// exchange is several KiB, and an admission in flight held 23 KiB: BENCHMARKS.md).
pub fn within<F: Future>(deadline: Instant, f: F) -> Within<F> {
    Within {
        future: f,
        timer: glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now())),
    }
}

pin_project_lite::pin_project! {
    /// See [`within`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Within<F> {
        #[pin]
        future: F,
        timer: glommio::timer::Timer,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(this.timer).poll(cx).map(|_| None)
    }
}

/// Refuses an upgrade as the refusal says: with its HTTP status before any frame, or with
/// its close code after the 101.
pub async fn refuse_upgrade(
    shard: &Rc<Shard>,
    stream: &SharedStream,
    accept: &str,
    protocol: Option<&str>,
    refusal: Refusal,
) {
    match refusal.wire() {
        Wire::Http { .. } => refuse_http(shard, stream, &refusal).await,
        Wire::Close { .. } => refuse_after_upgrade(shard, stream, accept, protocol, refusal).await,
    }
}

/// Completes the handshake and closes at once with `code`: how WebSocket clients learn why
/// (browsers hide HTTP error statuses from scripts).
async fn refuse_after_upgrade(
    shard: &Rc<Shard>,
    stream: &SharedStream,
    accept: &str,
    protocol: Option<&str>,
    refusal: Refusal,
) {
    let (code, reason) = refusal.close();
    let mut bytes = handshake::switching_protocols(accept, protocol);
    let payload = crate::ws::close::close_payload(code, &reason);
    crate::ws::frame::encode_frame(&mut bytes, crate::ws::frame::Opcode::Close, &payload);
    let _ = socket::write_all(stream, &bytes).await;
    shard.my_stats().count_rejection(code);
    linger_and_close(shard, stream).await;
}

/// Answers with the refusal's HTTP status and closes.
pub async fn refuse_http(shard: &Rc<Shard>, stream: &SharedStream, refusal: &Refusal) {
    reply(shard, stream, refusal.http_response()).await;
}

pub async fn reply(shard: &Rc<Shard>, stream: &SharedStream, bytes: Vec<u8>) {
    count_reply(shard, &bytes);
    let _ = socket::write_all(stream, &bytes).await;
    linger_and_close(shard, stream).await;
}

/// Counts an HTTP answer about to be written (its status among the rejections, if one).
pub fn count_reply(shard: &Shard, bytes: &[u8]) {
    stats::add(&shard.my_stats().http_requests_total, 1);
    // "HTTP/1.1 NNN": the status is bytes 9 to 12.
    if let Some(status) = bytes
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
    {
        shard.my_stats().count_rejection(status);
    }
}

/// Half-closes and waits briefly for the peer to finish, so that unread request bytes do not
/// turn our close into a reset that destroys the response in flight.
async fn linger_and_close(shard: &Rc<Shard>, stream: &SharedStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: shutting down the write side of our own open socket.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    let mut sink = [0u8; 512];
    let drain = async {
        while let Ok(n) = socket::read(stream, &mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(linger(shard))).await;
}

/// How long a closing answer waits for the peer (see `linger_and_close`).
pub fn linger(shard: &Shard) -> Duration {
    Duration::from_millis(shard.config().websocket.close_timeout_ms.min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_holds_what_it_wraps_once_and_ends_it_at_the_deadline() {
        let executor = glommio::LocalExecutorBuilder::default().make().unwrap();
        executor.run(async {
            let slow = async {
                let block = [7u8; 4096];
                glommio::timer::sleep(Duration::from_secs(10)).await;
                block[0]
            };
            let inner = std::mem::size_of_val(&slow);
            let bounded = within(Instant::now() + Duration::from_millis(20), slow);
            // As an `async fn` it held the future twice (see `within`).
            assert!(
                std::mem::size_of_val(&bounded) < inner + 128,
                "{} against {inner}",
                std::mem::size_of_val(&bounded)
            );
            let started = Instant::now();
            assert_eq!(bounded.await, None);
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(10) && waited < Duration::from_secs(5),
                "{waited:?}"
            );
            let in_time = within(Instant::now() + Duration::from_secs(5), async { 3 });
            assert_eq!(in_time.await, Some(3));
            // A future that is ready counts even when the deadline has passed: it is asked
            // first.
            let late_but_ready = within(Instant::now() - Duration::from_millis(1), async { 4 });
            assert_eq!(late_but_ready.await, Some(4));
        });
    }
}
