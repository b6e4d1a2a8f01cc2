//! The process's file descriptors: how many connections the open-file limit leaves room
//! for, and the descriptor table sized for that limit once, at start.
//!
//! Why the table: Linux grows a process's descriptor table by doubling it, and in a process
//! with several threads each growth waits for an RCU grace period (`expand_fdtable` →
//! `synchronize_rcu`), which blocks the thread that opened the descriptor, here a shard in
//! `accept`, for 12-18 ms at a time (measured during a storm of new connections: the live
//! documents on that shard waited as long). A table never shrinks, so growing it to the
//! limit before this node's shards start spares them those stalls; the kernel keeps 8
//! bytes (and two bits) per slot, 8 MiB for a limit of 1,048,576.

/// File descriptors kept back from connections: the node's own (listeners, io_uring rings,
/// event fds) and enough to accept a client and answer it 503 rather than leave it waiting
/// in the listen backlog.
pub const RESERVED: u64 = 64;

/// The largest table reserved at start (a limit above it grows the table later, as before).
const TABLE_SLOTS_MAX: u64 = 1 << 22;

/// The soft open-file limit, `None` if unlimited or unreadable.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// The open-file limit less [`RESERVED`]; unbounded if there is no limit.
pub fn connections_max() -> u64 {
    open_files_limit().map_or(u64::MAX, |limit| limit.saturating_sub(RESERVED))
}

/// Grows this process's descriptor table to hold the open-file limit (at most
/// [`TABLE_SLOTS_MAX`]) by placing a descriptor in its last slot and closing it again;
/// the slots it reserves, or why not (the node runs on without: the table then grows as
/// descriptors are opened). Call before the shards start.
pub fn reserve_table() -> Result<u64, std::io::Error> {
    let slots = open_files_limit()
        .unwrap_or(TABLE_SLOTS_MAX)
        .min(TABLE_SLOTS_MAX);
    let Some(last) = slots.checked_sub(1).and_then(|l| i32::try_from(l).ok()) else {
        return Ok(0);
    };
    // SAFETY: opening /dev/null and duplicating the new descriptor into a free slot touch no
    // descriptor anything else owns: `last` is checked to be free first (F_GETFD fails).
    unsafe {
        if libc::fcntl(last, libc::F_GETFD) != -1 {
            // In use already: the table is that large.
            return Ok(slots);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let placed = libc::dup3(null, last, libc::O_CLOEXEC);
        let error = std::io::Error::last_os_error();
        libc::close(null);
        if placed < 0 {
            return Err(error);
        }
        libc::close(placed);
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    /// The table's size, as the kernel reports it.
    fn table_slots() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn the_table_holds_the_open_file_limit_after_it_is_reserved() {
        let reserved = super::reserve_table().unwrap();
        let limit = super::open_files_limit().unwrap_or(u64::MAX);
        assert_eq!(reserved, limit.min(super::TABLE_SLOTS_MAX));
        assert!(table_slots() >= reserved, "{} < {reserved}", table_slots());
        // Nothing was left open in the last slot.
        // SAFETY: F_GETFD only reads the descriptor's flags.
        assert_eq!(
            unsafe { libc::fcntl(reserved as i32 - 1, libc::F_GETFD) },
            -1
        );
        assert_eq!(
            super::connections_max(),
            limit.saturating_sub(super::RESERVED)
        );
    }
}
