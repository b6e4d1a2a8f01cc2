//! CPU-heavy work that a client can ask for (token signatures: RS256 costs 171 µs; client
//! secret hashes on `POST /connect/token`: PBKDF2 costs 18 ms) runs off the data-plane executor: on the shard's
//! blocking thread, at the lowest CPU priority, so that live documents on the shard's core
//! keep their turn while a storm of handshakes or token requests waits. At most
//! [`IN_FLIGHT_MAX`] jobs wait per shard; past that the caller answers 503.

use std::cell::Cell;

/// Jobs queued or running per shard: about 350 ms of RS256 verifications.
pub const IN_FLIGHT_MAX: usize = 2048;

/// The shard's queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// One shard's count of jobs in flight.
#[derive(Debug, Default)]
pub struct Offload {
    in_flight: Cell<usize>,
}

impl Offload {
    /// Runs `job` on the shard's blocking thread and waits for its result, or refuses at
    /// once when [`IN_FLIGHT_MAX`] jobs are already waiting.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Busy> {
        if self.in_flight.get() >= IN_FLIGHT_MAX {
            return Err(Busy);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let _done = Done(&self.in_flight);
        let result = glommio::executor()
            .spawn_blocking(move || {
                lower_priority_once();
                job()
            })
            .await;
        Ok(result)
    }
}

/// Gives the count back however the wait ends (a dropped connection included).
struct Done<'a>(&'a Cell<usize>);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Sets the calling thread's nice value to 19, once: the blocking thread shares its core
/// with the shard's executor, and should run only when the executor has nothing to do.
fn lower_priority_once() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: on Linux, PRIO_PROCESS with who = 0 is the calling thread alone.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_off_the_executor_at_low_priority_and_the_queue_is_bounded() {
        glommio::LocalExecutor::default().run(async {
            let offload = Offload::default();
            let executor_thread = std::thread::current().id();
            let (thread, nice) = offload
                .run(|| {
                    // SAFETY: getpriority has no preconditions.
                    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
                    (std::thread::current().id(), nice)
                })
                .await
                .unwrap();
            assert_ne!(thread, executor_thread);
            assert_eq!(nice, 19);
            assert_eq!(offload.in_flight.get(), 0, "given back");
            offload.in_flight.set(IN_FLIGHT_MAX);
            assert_eq!(offload.run(|| ()).await, Err(Busy));
            assert_eq!(
                offload.in_flight.get(),
                IN_FLIGHT_MAX,
                "a refusal takes nothing"
            );
        });
    }
}
