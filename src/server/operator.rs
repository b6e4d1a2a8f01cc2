//! What an operator's actions (the admin listener, PRODUCT.md 13) need from the shards: jobs
//! the control plane hands them (the data plane's state is each shard's own), each shard
//! taking its jobs every [`JOB_TICK`], and closing the sessions a revocation cuts off.

use super::shard::Shard;
use crate::refusal::Refusal;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

/// How often a shard looks for jobs and revocations.
pub const JOB_TICK: Duration = Duration::from_millis(50);

/// While revocations are in force, a shard looks for their sessions every 20 ticks (1 s).
const REVOKED_SWEEP_TICKS: u32 = 20;

/// Jobs waiting per shard, at most: the admin listener answers 503 past it.
const JOBS_QUEUED_MAX: usize = 64;

/// Closes every live session on `shard` that an admission would now refuse (4003): its
/// tenant, app or key revoked, or its app gone or disabled by a reload; how many (also counted in
/// `Revoked::closed_total`: the shard may see a change before the admin listener's job asks
/// it to).
pub fn close_refused(shard: &Shard) -> usize {
    let revoked = &shard.shared.revoked;
    let directory = shard.shared.directory();
    let why = |app: &str| {
        if let Some(why) = revoked.refusal(app) {
            return Some(why);
        }
        let (tenant, id) = app.split_once("::")?;
        match directory.apps.get(id) {
            Some(a) if a.tenant == tenant && a.enabled => None,
            Some(a) if a.tenant == tenant => Some("app disabled"),
            _ => Some("unknown app"),
        }
    };
    let closed = shard.rooms.close_where(|_, app| {
        why(app).map(|why| Refusal::Token(crate::auth::verify::Refusal::Forbidden(why)))
    }) + shard.close_revoked_keys();
    revoked.count_closed(closed);
    closed
}

/// Something for a shard to do, on its thread.
pub type ShardJob = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// The jobs waiting for each shard.
pub struct ShardJobs {
    queues: Box<[Mutex<Vec<ShardJob>>]>,
}

/// Too many jobs wait for a shard.
#[derive(Debug)]
pub struct JobsBusy;

impl ShardJobs {
    pub fn new(shards: usize) -> Self {
        ShardJobs {
            queues: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// Queues `job` for shard `id`.
    pub fn send(&self, id: usize, job: ShardJob) -> Result<(), JobsBusy> {
        let mut queue = self.queues[id].lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= JOBS_QUEUED_MAX {
            return Err(JobsBusy);
        }
        queue.push(job);
        Ok(())
    }

    /// The jobs waiting for shard `id`, taken.
    pub fn take(&self, id: usize) -> Vec<ShardJob> {
        let mut queue = self.queues[id].lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *queue)
    }
}

/// A shard's side: every [`JOB_TICK`], runs its jobs, and closes what a change of the
/// revocations revoked; while any is in force, also every [`REVOKED_SWEEP_TICKS`] ticks (a
/// session whose token was checked before a revocation may join its room after the sweep
/// that followed it).
pub async fn serve_jobs(shard: Rc<Shard>, jobs: std::sync::Arc<ShardJobs>) {
    let mut seen = shard.shared.revoked.generation();
    let directory_generation = || {
        shard
            .shared
            .directory_generation
            .load(std::sync::atomic::Ordering::Acquire)
    };
    let mut directory_seen = directory_generation();
    let mut ticks = 0u32;
    loop {
        glommio::timer::sleep(JOB_TICK).await;
        for job in jobs.take(shard.id) {
            super::contain::call(shard.my_stats(), "operator_job", || job(&shard));
        }
        ticks = ticks.wrapping_add(1);
        let reloaded = directory_generation() != directory_seen;
        if reloaded {
            directory_seen = directory_generation();
            shard.forget_tokens();
        }
        let now = shard.shared.revoked.generation();
        let sweep = ticks.is_multiple_of(REVOKED_SWEEP_TICKS) && shard.shared.revoked.any();
        if reloaded || now != seen || sweep {
            seen = now;
            let closed = close_refused(&shard);
            if closed > 0 {
                crate::log::info(
                    "refused_sessions_closed",
                    &[("shard", &shard.id), ("sessions", &closed)],
                );
            }
        }
    }
}
