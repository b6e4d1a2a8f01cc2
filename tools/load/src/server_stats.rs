//! What the server process costs, read from /proc: CPU seconds and resident memory.

/// User plus system CPU seconds the process has used, all threads.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    wiresocket::server::stats::resident_bytes(&pid.to_string())
        .map(|bytes| bytes / 1024)
        .ok_or_else(|| format!("/proc/{pid}/statm: no such process"))
}

/// utime + stime: fields 14 and 15, counted after the parenthesised command name (which
/// may itself hold spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_resident_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        // Burn CPU until the kernel's tick-grained counter moves (it must, within seconds).
        let before = cpu_seconds(pid).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(pid).unwrap() <= before {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            assert!(start.elapsed().as_secs() < 10, "CPU time never moved");
        }
        assert!(rss_kib(u32::MAX).is_err());
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
