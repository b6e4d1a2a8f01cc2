//! CPU-heavy work that a client can ask for (token signatures: RS256 costs 171 µs; client
//! secret hashes on `POST /connect/token`: PBKDF2 costs 18 ms; TLS handshakes: about 0.75 ms)
//! runs off the data-plane executor: on the shard's
//! blocking thread, at the lowest CPU priority, so that live documents on the shard's core
//! keep their turn while a storm of handshakes or token requests waits. Each kind of
//! [`Work`] has its own bound per shard; past it the caller answers 503.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// What a job is, for its bound: each kind waits in the same queue but is counted apart, so
/// a flood of one cannot take the other's places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A token signature (RS256: 171 µs). 2,048 queued: about 350 ms.
    Signature,
    /// A client secret hash (PBKDF2: 18 ms). 16 queued: about 300 ms.
    SecretHash,
    /// A TLS handshake's flight (P-256 key exchange and signature: about 0.75 ms). 512
    /// queued: about 400 ms.
    TlsHandshake,
}

impl Work {
    pub const fn queued_max(self) -> usize {
        match self {
            Work::Signature => 2048,
            Work::SecretHash => 16,
            Work::TlsHandshake => 512,
        }
    }
}

/// The shard's queue for that kind of work was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// One shard's jobs queued or running, by kind. The counts are given back by the job itself
/// when it has run, not by its waiter: a waiter can be dropped (its connection gone, its
/// deadline passed) while the job still sits in the blocking thread's queue.
#[derive(Debug, Default)]
pub struct Offload {
    signatures: Arc<AtomicUsize>,
    secret_hashes: Arc<AtomicUsize>,
    tls_handshakes: Arc<AtomicUsize>,
}

impl Offload {
    fn queued(&self, work: Work) -> &Arc<AtomicUsize> {
        match work {
            Work::Signature => &self.signatures,
            Work::SecretHash => &self.secret_hashes,
            Work::TlsHandshake => &self.tls_handshakes,
        }
    }

    /// Runs `job` on the shard's blocking thread and waits for its result, or refuses at
    /// once when that kind of work already has its maximum queued.
    pub async fn run<R: Send + 'static>(
        &self,
        work: Work,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Busy> {
        let queued = self.queued(work);
        // Only this shard's executor adds; the blocking thread only takes away.
        if queued.load(Relaxed) >= work.queued_max() {
            return Err(Busy);
        }
        queued.fetch_add(1, Relaxed);
        let done = Done(queued.clone());
        let result = glommio::executor()
            .spawn_blocking(move || {
                let _done = done;
                lower_priority_once();
                // Caught here so that the shard's one blocking thread lives on; the panic
                // goes on in the waiter, whose connection it is (and which is contained).
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
            })
            .await;
        match result {
            Ok(result) => Ok(result),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Gives a job's count back when the job has run (or is dropped unrun).
struct Done(Arc<AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
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
    fn jobs_run_off_the_executor_at_low_priority() {
        glommio::LocalExecutor::default().run(async {
            let offload = Offload::default();
            let executor_thread = std::thread::current().id();
            let (thread, nice) = offload
                .run(Work::Signature, || {
                    // SAFETY: getpriority has no preconditions.
                    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
                    (std::thread::current().id(), nice)
                })
                .await
                .unwrap();
            assert_ne!(thread, executor_thread);
            assert_eq!(nice, 19);
            assert_eq!(offload.signatures.load(Relaxed), 0, "given back");
        });
    }

    #[test]
    fn a_panicking_job_panics_its_waiter_and_the_blocking_thread_goes_on() {
        use futures_lite::FutureExt;
        glommio::LocalExecutor::default().run(async {
            let offload = Offload::default();
            let waited = std::panic::AssertUnwindSafe(
                offload.run(Work::Signature, || -> u8 { panic!("in the job") }),
            )
            .catch_unwind()
            .await;
            assert!(waited.is_err());
            assert_eq!(offload.signatures.load(Relaxed), 0);
            assert_eq!(offload.run(Work::Signature, || 3).await, Ok(3));
        });
    }

    #[test]
    fn a_dropped_waiter_keeps_its_place_until_its_job_has_run_and_kinds_are_bounded_apart() {
        glommio::LocalExecutor::default().run(async {
            let offload = Offload::default();
            let (release, gate) = std::sync::mpsc::channel::<()>();
            // One job holds the blocking thread; the others queue behind it.
            let mut gate = Some(gate);
            let mut waiters: Vec<_> = (0..Work::SecretHash.queued_max())
                .map(|_| {
                    let gate = gate.take();
                    Box::pin(offload.run(Work::SecretHash, move || {
                        if let Some(gate) = gate {
                            gate.recv().unwrap();
                        }
                    }))
                })
                .collect();
            // Start them all (each queues its job on its first poll), then give up waiting.
            for w in &mut waiters {
                let _ = futures_lite::future::poll_once(w).await;
            }
            drop(waiters);
            assert_eq!(
                offload.run(Work::SecretHash, || ()).await,
                Err(Busy),
                "the dropped waiters' jobs are still queued"
            );
            // Signatures have their own places.
            let (sign, _) = futures_lite::future::zip(offload.run(Work::Signature, || 1), async {
                release.send(()).unwrap();
            })
            .await;
            assert_eq!(sign, Ok(1));
            // Once the queue has run, the places are back.
            while offload.secret_hashes.load(Relaxed) > 0 {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(offload.run(Work::SecretHash, || 2).await, Ok(2));
        });
    }
}
