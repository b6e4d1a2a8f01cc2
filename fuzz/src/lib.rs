//! What the fuzz targets share: the allocation budget (an allocation bomb is a crash) and
//! how an input is cut into one read's messages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wiresocket::outbox::Outbox;
use wiresocket::sync::room::{Room, RoomConfig, Slot};

const BUDGET_BYTES: usize = 64 << 20;

/// Counts live heap bytes and aborts past 64 MiB. A target installs it with
/// `#[global_allocator] static ALLOCATOR: Budget = Budget;`.
pub struct Budget;
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

/// The input as one read's messages: each prefixed with a one-byte length class (8 bytes
/// per unit), the last one cut at the input's end.
pub fn messages(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let len = (len as usize * 8).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;
        Some(message)
    })
}

/// A room with two subscribers; the first one's slot, which the input's messages come from.
pub fn room_of_two() -> (Room, Slot) {
    let mut room = Room::new(RoomConfig::default());
    let sender = room.join(Rc::new(Outbox::new(1 << 20)));
    room.join(Rc::new(Outbox::new(1 << 20)));
    (room, sender)
}
