//! Keeps a panic in one connection's work to that connection: it is caught, counted in
//! `panics_total` and logged, and the shard goes on with every other connection. (A panic
//! that escaped a task would end the shard's executor, and with it all of its sessions.)

use super::handler::Handler;
use super::stats::{self, ShardStats};
use futures_lite::future::CatchUnwind;
use futures_lite::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// `f()`, or `None` if it panicked.
pub fn call<T>(stats: &ShardStats, what: &str, f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|panic| caught(stats, what, &*panic))
        .ok()
}

/// `future`'s output, or `None` if one of its polls panicked (what is left of the future is
/// dropped with the returned one).
/// Not an `async fn`, which would hold `future` twice (see `respond::within`).
pub fn future<'a, F: Future>(stats: &'a ShardStats, what: &'a str, future: F) -> Contained<'a, F> {
    Contained {
        future: AssertUnwindSafe(future).catch_unwind(),
        stats,
        what,
    }
}

pin_project_lite::pin_project! {
    /// See [`future`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Contained<'a, F> {
        #[pin]
        future: CatchUnwind<AssertUnwindSafe<F>>,
        stats: &'a ShardStats,
        what: &'a str,
    }
}

impl<F: Future> Future for Contained<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(|caught_or_not| {
            caught_or_not
                .map_err(|panic| caught(this.stats, this.what, &*panic))
                .ok()
        })
    }
}

/// Ends a session's handler. If its end panics, the handler's state may be half-changed
/// (a document in the middle of its transaction): it gets its `on_panic` reset, contained too.
pub fn end(stats: &ShardStats, handler: &mut dyn Handler) {
    if call(stats, "session_end", || handler.on_end()).is_none() {
        call(stats, "session_end_reset", || handler.on_panic());
    }
}

fn caught(stats: &ShardStats, what: &str, panic: &(dyn Any + Send)) {
    stats::add(&stats.panics_total, 1);
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    crate::log::warn("panic_caught", &[("in", &what), ("panic", &message)]);
}

/// No client input is known to make admission, a handler's end or the sweep panic (each such
/// input found becomes a fix and a regression test), and the production binary has no switch
/// to make one: so the containment is tested here on work that panics by itself, and the
/// sweep's per-connection guard in `shard`; the server's uses are single calls of these.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::Opcode;

    #[test]
    fn a_panic_in_a_call_is_counted_and_the_value_kept_otherwise() {
        let stats = ShardStats::default();
        assert_eq!(call(&stats, "test", || 7), Some(7));
        assert_eq!(stats::get(&stats.panics_total), 0);
        assert_eq!(call(&stats, "test", || -> u8 { panic!("boom") }), None);
        assert_eq!(stats::get(&stats.panics_total), 1);
    }

    #[test]
    fn a_panic_in_a_later_poll_of_a_future_is_caught() {
        let stats = ShardStats::default();
        let panics_after_a_wait = async {
            futures_lite::future::yield_now().await;
            panic!("in the second poll");
        };
        let out: Option<()> =
            futures_lite::future::block_on(future(&stats, "test", panics_after_a_wait));
        assert_eq!(out, None);
        assert_eq!(stats::get(&stats.panics_total), 1);
        let fine = async {
            futures_lite::future::yield_now().await;
            2
        };
        assert_eq!(
            futures_lite::future::block_on(future(&stats, "test", fine)),
            Some(2)
        );
        assert_eq!(stats::get(&stats.panics_total), 1);
    }

    #[test]
    fn a_contained_future_holds_what_it_wraps_once() {
        let large = || async {
            let block = [7u8; 4096];
            futures_lite::future::yield_now().await;
            block.iter().map(|&b| usize::from(b)).sum::<usize>()
        };
        let inner = std::mem::size_of_val(&large());
        assert!(inner >= 4096);
        let stats = ShardStats::default();
        let contained = future(&stats, "test", large());
        // As an `async fn` it held the future twice, its argument and what it awaited: an
        // admission in flight took 23 KiB.
        assert!(
            std::mem::size_of_val(&contained) < inner + 128,
            "{} against {inner}",
            std::mem::size_of_val(&contained)
        );
        assert_eq!(futures_lite::future::block_on(contained), Some(7 * 4096));
    }

    /// A handler whose end panics, recording whether it was reset.
    struct PanicsAtTheEnd {
        reset: bool,
    }

    impl Handler for PanicsAtTheEnd {
        fn on_message(&mut self, _: Opcode, _: &[u8]) -> Result<(), crate::refusal::Refusal> {
            Ok(())
        }
        fn on_panic(&mut self) {
            self.reset = true;
        }
        fn on_end(&mut self) {
            panic!("while leaving the room");
        }
    }

    #[test]
    fn a_panicking_end_is_contained_and_resets_the_handler() {
        let stats = ShardStats::default();
        let mut handler = PanicsAtTheEnd { reset: false };
        end(&stats, &mut handler);
        assert!(handler.reset);
        assert_eq!(stats::get(&stats.panics_total), 1);
    }
}
