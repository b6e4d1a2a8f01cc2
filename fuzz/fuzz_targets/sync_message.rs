//! y-websocket messages behind the size limits, through a room (decode, bounded update walk,
//! a batch of yrs integration). Fails if one input makes the process hold more than 64 MiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket_fuzz::{messages, room_of_two, Budget};

#[global_allocator]
static ALLOCATOR: Budget = Budget;

fuzz_target!(|data: &[u8]| {
    let (mut room, sender) = room_of_two();
    // As in a session, one read's messages are staged, and relayed at the end or at the
    // first refusal.
    for message in messages(data) {
        if room.stage(sender, message, true).is_err() {
            break;
        }
    }
    room.flush();
    // Relayed first, integrated after, as on the server.
    room.integrate_all();
});
