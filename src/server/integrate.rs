//! Integration after the relay: a shard's rooms with updates relayed but not yet applied to
//! their yrs document wait here, and one task on a lower-priority task queue applies them
//! in batches, a room at a time, yielding between batches. Sessions (reads, relays, sends)
//! go first; a room that falls `pending_*_max` behind stops its writers being read (see
//! `Room::lagging`), so integration always catches up and memory stays bounded.

use super::stats::{self, ShardStats};
use crate::sync::room::Room;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Updates integrated in one transaction before the task yields: enough that the
/// transaction's fixed cost is spread, few enough that one room's backlog does not hold the
/// others (or the shard's reactor) for long.
pub const BATCH_UPDATES_MAX: usize = 256;
/// And no update is begun after this much of a batch: sessions wait at most about this (plus
/// one update) for the core.
pub const BATCH_TIME_MAX: Duration = Duration::from_micros(500);

/// Rooms waiting to be integrated, in the order they asked. A room is here at most once
/// (`Room::request_integration`), so the queue is bounded by the shard's rooms.
#[derive(Default)]
pub struct Integrator {
    rooms: RefCell<VecDeque<Rc<RefCell<Room>>>>,
    waker: Cell<Option<Waker>>,
}

impl Integrator {
    /// Queues `room` if it has updates to integrate and is not queued already.
    pub fn request(&self, room: &Rc<RefCell<Room>>) {
        if room.borrow_mut().request_integration() {
            self.rooms.borrow_mut().push_back(room.clone());
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    async fn next(&self) -> Rc<RefCell<Room>> {
        std::future::poll_fn(|cx| match self.rooms.borrow_mut().pop_front() {
            Some(room) => Poll::Ready(room),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The integration task: runs for the shard's life.
    pub async fn run(&self, stats: &ShardStats) {
        loop {
            let room = self.next().await;
            let done = super::contain::call(stats, "integrate", || {
                let until = Instant::now() + BATCH_TIME_MAX;
                room.borrow_mut().integrate(BATCH_UPDATES_MAX, Some(until))
            });
            match done {
                Some(done) => {
                    stats::add(&stats.updates_integrated_total, done.applied as u64);
                    stats::add(&stats.updates_refused_late_total, done.refused as u64);
                    if done.more {
                        self.rooms.borrow_mut().push_back(room);
                    }
                }
                // A panic inside yrs may have left the document half-changed: it starts
                // over and its clients resync into it (`Room::reset`).
                None => {
                    super::contain::call(stats, "integrate_reset", || room.borrow_mut().reset());
                    crate::log::warn("document_reset", &[("during", &"integration")]);
                }
            }
            // Every batch, not only when the time slice is spent: sessions come first.
            glommio::executor().yield_task_queue_now().await;
        }
    }
}
