//! Per-client request budgets (fixed one-minute windows), shared by every shard, and who the
//! client is: the peer, or what trusted proxies say in `X-Forwarded-For`. Pure: the time is
//! passed in.
//!
//! A client is one IPv4 address or one IPv6 prefix (a /64 by default: a single host is
//! usually given a whole /64, so keying on full addresses would hand it 2^64 budgets).
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as the IPv4 address.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// Clients tracked at most per budget; past it the least recently seen one is forgotten
/// (O(1)), so a flood of new addresses costs bounded memory and never refuses a newcomer
/// that has budget left.
pub const TRACKED_IPS_MAX: usize = 100_000;
pub const WINDOW_S: u64 = 60;

/// The table is split by a keyed hash of the client into this many independently locked
/// parts, so shards asking about different clients rarely wait on each other. A client
/// always lands in the same part, so its budget is exactly "per client per minute" across the
/// node; per-shard tables could not say that, since the kernel spreads one client's
/// connections over all shards. The hash key is random per process: a client cannot choose
/// addresses that crowd one part.
const PARTS: usize = 16;

pub struct IpRateLimiter {
    /// Changed by a reload.
    per_window: std::sync::atomic::AtomicU32,
    ipv6_prefix_bits: u8,
    hasher: RandomState,
    parts: Box<[Mutex<Table>]>,
}

impl IpRateLimiter {
    /// `per_window` requests per client per minute; IPv6 clients keyed by their first
    /// `ipv6_prefix_bits` bits.
    pub fn new(per_window: u32, ipv6_prefix_bits: u8) -> Self {
        Self::with_capacity(per_window, ipv6_prefix_bits, TRACKED_IPS_MAX)
    }

    fn with_capacity(per_window: u32, ipv6_prefix_bits: u8, clients_max: usize) -> Self {
        let per_part = clients_max.div_ceil(PARTS).max(1);
        IpRateLimiter {
            per_window: std::sync::atomic::AtomicU32::new(per_window),
            ipv6_prefix_bits,
            hasher: RandomState::new(),
            parts: (0..PARTS)
                .map(|_| Mutex::new(Table::new(per_part)))
                .collect(),
        }
    }

    /// Counts a request from `ip` at `now_s`; false when its client's budget for this
    /// minute is spent.
    pub fn allow(&self, ip: IpAddr, now_s: u64) -> bool {
        let key = client_key(ip, self.ipv6_prefix_bits);
        let part = self.hasher.hash_one(key) as usize % PARTS;
        let mut table = self.parts[part].lock().expect("rate limiter lock");
        let per_window = self.per_window.load(std::sync::atomic::Ordering::Relaxed);
        table.count(key, now_s / WINDOW_S) <= per_window
    }

    /// A new budget from now on (a reload).
    pub fn set_per_window(&self, per_window: u32) {
        self.per_window
            .store(per_window, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The budget key of `ip`: IPv4 (mapped addresses unwrapped), or the IPv6 prefix.
pub fn client_key(ip: IpAddr, ipv6_prefix_bits: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & prefix_mask(ipv6_prefix_bits, 128),
        )),
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The top `bits` of a `width`-bit address set.
fn prefix_mask(bits: u8, width: u8) -> u128 {
    let bits = bits.min(width);
    let host_bits = u32::from(128 - bits);
    (u128::MAX.checked_shl(host_bits).unwrap_or(0)) >> (128 - u32::from(width))
}

/// One part of a budget: clients with their window and count, in order of last use (a
/// doubly linked list through a slab), so the least recently seen is found and reused in
/// O(1) when the part is full.
struct Table {
    capacity: usize,
    index: HashMap<IpAddr, u32>,
    slots: Vec<Slot>,
    /// Least recently seen, and most.
    oldest: u32,
    newest: u32,
}

struct Slot {
    key: IpAddr,
    window: u64,
    count: u32,
    older: u32,
    newer: u32,
}

const NONE: u32 = u32::MAX;

impl Table {
    fn new(capacity: usize) -> Table {
        Table {
            capacity,
            index: HashMap::new(),
            slots: Vec::new(),
            oldest: NONE,
            newest: NONE,
        }
    }

    /// Counts one request of `key` in `window`; returns its requests in that window, this
    /// one included (saturating).
    fn count(&mut self, key: IpAddr, window: u64) -> u32 {
        let i = match self.index.get(&key) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => self.take_slot(key),
        };
        self.push_newest(i);
        let slot = &mut self.slots[i as usize];
        if slot.window != window {
            (slot.window, slot.count) = (window, 0);
        }
        slot.count = slot.count.saturating_add(1);
        slot.count
    }

    /// A fresh, unlinked slot for `key`: a new one below capacity, else the oldest's.
    fn take_slot(&mut self, key: IpAddr) -> u32 {
        let fresh = Slot {
            key,
            window: u64::MAX,
            count: 0,
            older: NONE,
            newer: NONE,
        };
        let i = if self.slots.len() < self.capacity {
            self.slots.push(fresh);
            (self.slots.len() - 1) as u32
        } else {
            let i = self.oldest;
            self.unlink(i);
            self.index.remove(&self.slots[i as usize].key);
            self.slots[i as usize] = fresh;
            i
        };
        self.index.insert(key, i);
        i
    }

    fn unlink(&mut self, i: u32) {
        let (older, newer) = {
            let s = &self.slots[i as usize];
            (s.older, s.newer)
        };
        match older {
            NONE => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
    }

    fn push_newest(&mut self, i: u32) {
        let previous = self.newest;
        {
            let s = &mut self.slots[i as usize];
            s.older = previous;
            s.newer = NONE;
        }
        match previous {
            NONE => self.oldest = i,
            p => self.slots[p as usize].newer = i,
        }
        self.newest = i;
    }

    #[cfg(test)]
    fn keys_oldest_first(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        let mut i = self.oldest;
        while i != NONE {
            out.push(self.slots[i as usize].key);
            i = self.slots[i as usize].newer;
        }
        out
    }
}

/// A trusted proxy: one address (`10.0.0.5`) or a network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask(self.prefix_bits, 32) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask(self.prefix_bits, 128);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("expected an address or ADDRESS/BITS such as 10.0.0.0/8, got {s:?}");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let network = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match bits {
            None => width,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= width)
                .ok_or_else(bad)?,
        };
        Ok(Cidr {
            network,
            prefix_bits,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The client's address. When the peer is a trusted proxy, the `X-Forwarded-For` lines
/// (in the order received, as one list) are walked from the right, each entry having been
/// added by the hop to its right: trusted proxies are skipped and the first untrusted
/// address is the client. Entries left of it may be anything the client wrote, so they are
/// never read. An entry that does not parse stops the walk at the last address walked (a
/// trusted hop): the budget is then charged to that proxy rather than to a guess.
pub fn client_ip<'h>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'h [u8]>,
    trusted_proxies: &[Cidr],
) -> IpAddr {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|c| c.contains(ip));
    let peer = canonical(peer);
    if !trusted(peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = forwarded_for.collect();
    let entries = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','));
    let mut client = peer;
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            break;
        };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    let ip = s
        .parse::<IpAddr>()
        .or_else(|_| s.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()?;
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn budgets_per_client_per_minute() {
        let l = IpRateLimiter::new(3, 64);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let t = 6_000;
        assert!((0..3).all(|_| l.allow(a, t)));
        assert!(!l.allow(a, t + 59));
        assert!(l.allow(b, t + 59), "other IPs have their own budget");
        assert!(l.allow(a, t + 60), "a new minute");
    }

    #[test]
    fn ipv6_clients_are_their_prefix_and_mapped_addresses_are_ipv4() {
        let l = IpRateLimiter::new(2, 64);
        let t = 6_000;
        assert!(l.allow(ip("2001:db8:1:2::1"), t));
        assert!(l.allow(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), t));
        assert!(!l.allow(ip("2001:db8:1:2::99"), t), "one /64, one budget");
        assert!(
            l.allow(ip("2001:db8:1:3::1"), t),
            "the next /64 is another client"
        );
        assert!(l.allow(ip("192.0.2.1"), t));
        assert!(l.allow(ip("::ffff:192.0.2.1"), t));
        assert!(
            !l.allow(ip("192.0.2.1"), t),
            "mapped and plain share one budget"
        );

        assert_eq!(
            client_key(ip("2001:db8:1:2:3:4:5:6"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:3:4:5:6"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(
            client_key(ip("10.1.2.3"), 1),
            ip("10.1.2.3"),
            "IPv4 is never masked"
        );
    }

    #[test]
    fn a_full_part_forgets_its_least_recently_seen_client() {
        let mut t = Table::new(3);
        let (a, b, c, d) = (
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
            ip("10.0.0.4"),
        );
        assert_eq!((t.count(a, 1), t.count(b, 1), t.count(c, 1)), (1, 1, 1));
        assert_eq!(t.count(a, 1), 2, "a is now the most recently seen");
        assert_eq!(t.keys_oldest_first(), [b, c, a]);
        assert_eq!(t.count(d, 1), 1, "full: b is evicted, d admitted");
        assert_eq!(t.keys_oldest_first(), [c, a, d]);
        assert_eq!(
            (t.index.len(), t.slots.len()),
            (3, 3),
            "never past capacity"
        );
        assert_eq!(t.count(a, 1), 3, "a kept its count");
        assert_eq!(t.count(b, 1), 1, "b starts over");
        assert_eq!(t.keys_oldest_first(), [d, a, b]);
        assert_eq!(t.count(a, 2), 1, "a new window");
    }

    #[test]
    fn a_full_limiter_still_admits_new_clients() {
        let l = IpRateLimiter::with_capacity(1, 64, PARTS);
        let t = 6_000;
        for i in 0..(PARTS as u32 * 20) {
            assert!(
                l.allow(IpAddr::V4((0x0a00_0000 + i).into()), t),
                "client {i}"
            );
        }
        let tracked: usize = l.parts.iter().map(|p| p.lock().unwrap().index.len()).sum();
        assert!(tracked <= PARTS, "{tracked} tracked");
        // The newest client of a part is still tracked: its budget is spent.
        let last = IpAddr::V4((0x0a00_0000 + PARTS as u32 * 20 - 1).into());
        assert!(!l.allow(last, t));
    }

    #[test]
    fn cidrs_and_plain_addresses() {
        let list = cidrs(&["10.0.0.0/8", "fd00::/8", "192.0.2.7", "2001:db8::5"]);
        for (addr, trusted) in [
            ("10.200.3.4", true),
            ("11.0.0.1", false),
            ("::ffff:10.0.0.1", true),
            ("fd12:3456::1", true),
            ("fe00::1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8::5", true),
            ("2001:db8::6", false),
        ] {
            assert_eq!(list.iter().any(|c| c.contains(ip(addr))), trusted, "{addr}");
        }
        assert!(cidrs(&["0.0.0.0/0"])[0].contains(ip("203.0.113.1")));
        assert!(!cidrs(&["0.0.0.0/0"])[0].contains(ip("2001:db8::1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "nope",
            "10.0.0.0/8/8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    fn walk(peer: &str, lines: &[&str], trusted: &[&str]) -> IpAddr {
        client_ip(
            ip(peer),
            lines.iter().map(|l| l.as_bytes()),
            &cidrs(trusted),
        )
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let proxies = ["10.0.0.0/8"];
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            walk("198.51.100.9", &["203.0.113.7"], &proxies),
            ip("198.51.100.9")
        );
        // One proxy.
        assert_eq!(
            walk("10.1.1.1", &["203.0.113.7"], &proxies),
            ip("203.0.113.7")
        );
        // A spoofed leftmost entry is never read: the client is the first untrusted one
        // from the right.
        assert_eq!(
            walk("10.1.1.1", &["1.2.3.4, 203.0.113.7, 10.2.2.2"], &proxies),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            walk(
                "10.1.1.1",
                &["6.6.6.6", "203.0.113.7", "10.3.3.3, 10.2.2.2"],
                &proxies
            ),
            ip("203.0.113.7")
        );
        assert_eq!(
            walk("10.1.1.1", &["6.6.6.6, 203.0.113.7", "10.2.2.2"], &proxies),
            ip("203.0.113.7")
        );
        // Every entry trusted: the furthest one.
        assert_eq!(
            walk("10.1.1.1", &["10.9.9.9, 10.2.2.2"], &proxies),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            walk("10.1.1.1", &["203.0.113.7, junk, 10.2.2.2"], &proxies),
            ip("10.2.2.2")
        );
        assert_eq!(walk("10.1.1.1", &["junk"], &proxies), ip("10.1.1.1"));
        assert_eq!(walk("10.1.1.1", &[], &proxies), ip("10.1.1.1"));
        // Ports, IPv6 and mapped addresses.
        assert_eq!(
            walk("10.1.1.1", &["203.0.113.7:4711"], &proxies),
            ip("203.0.113.7")
        );
        assert_eq!(
            walk("10.1.1.1", &["[2001:db8::1]:80"], &proxies),
            ip("2001:db8::1")
        );
        assert_eq!(
            walk("::ffff:10.1.1.1", &["::ffff:203.0.113.7"], &proxies),
            ip("203.0.113.7")
        );
        assert_eq!(
            walk("fd00::1", &["2001:db8::7, fd00::2"], &["fd00::/8"]),
            ip("2001:db8::7")
        );
    }
}
