//! Keeps a panic in one connection's work to that connection: it is caught, counted in
//! `panics_total` and logged, and the shard goes on with every other connection. (A panic
//! that escaped a task would end the shard's executor, and with it all of its sessions.)

use super::handler::Handler;
use super::stats::{self, ShardStats};
use futures_lite::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `f()`, or `None` if it panicked.
pub fn call<T>(stats: &ShardStats, what: &str, f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|panic| caught(stats, what, &*panic))
        .ok()
}

/// `future`'s output, or `None` if one of its polls panicked (the future is then dropped).
pub async fn future<F: Future>(stats: &ShardStats, what: &str, future: F) -> Option<F::Output> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| caught(stats, what, &*panic))
        .ok()
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
