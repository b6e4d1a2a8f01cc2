//! y-websocket messages behind the size limits, through a room (decode, bounded update walk,
//! a batch of yrs integration). Fails if one input makes the process hold more than 64 MiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wiresocket::outbox::Outbox;
use wiresocket::sync::room::{Room, RoomConfig};

const BUDGET_BYTES: usize = 64 << 20;

/// Counts live heap bytes and aborts past the budget: an allocation bomb is a crash here.
struct Budget;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Budget {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if live > BUDGET_BYTES {
            // An allocator must not unwind (and must not allocate to report): abort, which
            // libFuzzer records as a crash with this input.
            std::process::abort();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Budget = Budget;

fuzz_target!(|data: &[u8]| {
    let mut room = Room::new(RoomConfig::default());
    let sender = room.join(Rc::new(Outbox::new(1 << 20)));
    room.join(Rc::new(Outbox::new(1 << 20)));
    // The input is one read's messages, each prefixed with a one-byte length class; as in a
    // session they are staged, and relayed at the end or at the first refusal.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize * 8).min(tail.len());
        if room.stage(sender, &tail[..len], true).is_err() {
            break;
        }
        rest = &tail[len..];
    }
    room.flush();
    // Relayed first, integrated after, as on the server.
    room.integrate_all();
});
