//! Per-client-IP request budgets (fixed one-minute windows), shared by every shard.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// IPs tracked at most; past it, finished windows are dropped, then new IPs are refused
/// (memory stays bounded even when many addresses knock at once).
pub const TRACKED_IPS_MAX: usize = 100_000;
pub const WINDOW_S: u64 = 60;

pub struct IpRateLimiter {
    per_window: u32,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl IpRateLimiter {
    pub fn new(per_window: u32) -> Self {
        IpRateLimiter {
            per_window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request from `ip` at `now_s`; false when its budget for this minute is spent.
    pub fn allow(&self, ip: IpAddr, now_s: u64) -> bool {
        let window = now_s / WINDOW_S;
        let mut windows = self.windows.lock().expect("rate limiter lock");
        if windows.len() >= TRACKED_IPS_MAX && !windows.contains_key(&ip) {
            windows.retain(|_, (w, _)| *w == window);
            if windows.len() >= TRACKED_IPS_MAX {
                return false;
            }
        }
        let entry = windows.entry(ip).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= self.per_window {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address
/// it put in `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&[u8]>, trusted_proxies: &[IpAddr]) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    forwarded_for
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_per_ip_per_minute() {
        let l = IpRateLimiter::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = 6_000;
        assert!((0..3).all(|_| l.allow(a, t)));
        assert!(!l.allow(a, t + 59));
        assert!(l.allow(b, t + 59), "other IPs have their own budget");
        assert!(l.allow(a, t + 60), "a new minute");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let other: IpAddr = "10.9.9.9".parse().unwrap();
        let xff = Some(&b"203.0.113.7, 198.51.100.2"[..]);
        assert_eq!(
            client_ip(proxy, xff, &[proxy]),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(other, xff, &[proxy]), other);
        assert_eq!(client_ip(proxy, Some(b"garbage"), &[proxy]), proxy);
    }
}
