//! Where the server may send an app's HTTP calls (webhooks; later the load hook and the
//! authorization callback): the URL an operator configured, and the address rules that keep
//! an app from aiming the server at itself, its admin listener, a cloud metadata service or
//! the operator's private network.
//!
//! The rules are checked on every address the host resolves to, at start and again before
//! each connection (a name can be re-pointed after start), and the connection goes to the
//! address that was checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A parsed `http(s)://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// A DNS name, or an IP address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// At least `/`.
    pub path_and_query: String,
}

/// Longest URL accepted: configuration, not data, so generous but bounded.
const URL_BYTES_MAX: usize = 2048;

impl Target {
    /// Parses a configured URL. No user info (`user@`), no fragment, a host of letters,
    /// digits, `-` and `.` (or an IP address), a port 1-65535.
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.len() > URL_BYTES_MAX {
            return Err(format!("longer than {URL_BYTES_MAX} bytes"));
        }
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must start with https:// (or http://)".into());
        };
        if url.contains('#') {
            return Err("must not have a fragment (#)".into());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err("must not carry user info (user@host)".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port {p:?} is not 1-65535"))?,
            None if https => 443,
            None => 80,
        };
        if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
            return Err(format!("host {host:?} is not a DNS name or an IP address"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("path must not contain spaces or control characters".into());
        }
        let path_and_query = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Target {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query,
        })
    }

    /// The `Host` header's value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 host must end with ]")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("after an IPv6 host only :port may follow".into()),
            },
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.contains(':') {
        return Err("an IPv6 host must be in brackets: [::1]".into());
    }
    Ok((host, port))
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What an address is, for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reachable on the internet: always allowed (over https).
    Public,
    /// Loopback, private, shared (CGNAT) or unique-local: allowed only to apps with
    /// `webhook_allow_private`.
    Private,
    /// Never: unspecified, link-local (where cloud metadata services answer), multicast,
    /// broadcast, reserved, or a known metadata address.
    Forbidden,
}

/// Cloud metadata services outside the link-local ranges: Alibaba's in shared address space;
/// AWS's, GCP's and OCI's IPv6 ones in unique-local space.
const METADATA: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x00c1, 0, 0, 0, 0, 0xa9fe, 0xa9fe)),
];

pub fn scope(ip: IpAddr) -> Scope {
    let real = effective(ip);
    if METADATA.contains(&ip) || METADATA.contains(&real) {
        return Scope::Forbidden;
    }
    match real {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => scope_v6(v6),
    }
}

/// The address a packet to `ip` reaches: the IPv4 address inside an IPv6 address that
/// carries one (mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), else `ip` itself.
fn effective(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let v4 = |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match v6.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0xffff, 0, hi, lo] => v4(hi, lo),
        // Not `::` or `::1`, which are IPv6's own.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => v4(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => ip,
    }
}

fn scope_v4(ip: Ipv4Addr) -> Scope {
    let [a, b, c, _] = ip.octets();
    let documentation = matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113));
    if ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || a >= 240
        || (a, b, c) == (192, 0, 0)
        || documentation
    {
        Scope::Forbidden
    } else if ip.is_loopback()
        || ip.is_private()
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
    {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// An IPv6 address that carries no IPv4 address (see [`effective`]).
fn scope_v6(ip: Ipv6Addr) -> Scope {
    let s = ip.segments();
    let link_local = (s[0] & 0xffc0) == 0xfe80;
    let site_local = (s[0] & 0xffc0) == 0xfec0;
    // Teredo reaches an IPv4 host through a relay; documentation addresses are no host.
    let teredo = (s[0], s[1]) == (0x2001, 0);
    let documentation = (s[0], s[1]) == (0x2001, 0x0db8);
    let unique_local = (s[0] & 0xfe00) == 0xfc00;
    // Local-use NAT64 may translate to a private IPv4 address.
    let local_nat64 = (s[0], s[1], s[2]) == (0x64, 0xff9b, 1);
    if ip.is_unspecified()
        || ip.is_multicast()
        || link_local
        || site_local
        || teredo
        || documentation
    {
        Scope::Forbidden
    } else if ip.is_loopback() || unique_local || local_nat64 {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Whether a call (over TLS if `https`) may go to `addr`, one of its host's addresses.
/// `own` are the node's listening addresses (its public listener and, once it has one, its
/// admin listener): never a target, whatever the app's rights.
pub fn check(
    https: bool,
    addr: SocketAddr,
    allow_private: bool,
    own: &[SocketAddr],
) -> Result<(), String> {
    let ip = addr.ip();
    let here = own.iter().any(|o| {
        let mine = effective(o.ip());
        o.port() == addr.port()
            && (mine == effective(ip) || (mine.is_unspecified() && scope(ip) != Scope::Public))
    });
    if here {
        return Err(format!("{addr} is this node's own listener"));
    }
    match scope(ip) {
        Scope::Forbidden => Err(format!(
            "{ip} is never allowed (unspecified, link-local, multicast, reserved or a metadata service)"
        )),
        Scope::Private if !allow_private => Err(format!(
            "{ip} is a loopback or private address; set webhook_allow_private = true for an internal receiver"
        )),
        Scope::Public if !https => Err(format!(
            "{ip} is a public address: only https:// may go there"
        )),
        Scope::Private | Scope::Public => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_what_operators_write() {
        let t = Target::parse("https://hooks.example.com/wiresocket?app=1").unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                host: "hooks.example.com".into(),
                port: 443,
                path_and_query: "/wiresocket?app=1".into()
            }
        );
        assert_eq!(t.host_header(), "hooks.example.com");
        let t = Target::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (t.https, t.port, t.path_and_query.as_str()),
            (false, 9000, "/")
        );
        assert_eq!(t.host_header(), "127.0.0.1:9000");
        let t = Target::parse("https://[::1]:8443/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.host_header(), "[::1]:8443");
        assert_eq!(
            Target::parse("https://Example.COM?x")
                .unwrap()
                .path_and_query,
            "/?x"
        );
    }

    #[test]
    fn refuses_urls_that_hide_where_they_go() {
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "https://example.com@evil.com/",
            "https://example.com/#frag",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://exa mple.com/",
            "https://-bad-.com/",
            "https:///path",
            "https://[::1/",
            "https://[not-v6]/",
            "https://::1/",
            "https://example.com/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse(&format!("https://e.com/{}", "a".repeat(URL_BYTES_MAX))).is_err());
    }

    #[test]
    fn classifies_addresses() {
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(scope(ip(public)), Scope::Public, "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            "64:ff9b:1::a00:1",
            "::ffff:0:a00:1",
        ] {
            assert_eq!(scope(ip(private)), Scope::Private, "{private}");
        }
        for forbidden in [
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "100.100.100.200",
            "::",
            "fe80::1",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::ffff:100.100.100.200",
            "64:ff9b::6464:64c8",
            "fd20:ce::254",
            "fd00:c1::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "192.0.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "fec0::1",
        ] {
            assert_eq!(scope(ip(forbidden)), Scope::Forbidden, "{forbidden}");
        }
        assert_eq!(scope(ip("172.32.0.1")), Scope::Public);
    }

    #[test]
    fn private_needs_the_app_to_allow_it_and_public_needs_https() {
        let (https, http) = (true, false);
        let at = |s: &str, port| SocketAddr::new(ip(s), port);
        assert!(check(https, at("8.8.8.8", 443), false, &[]).is_ok());
        assert!(check(http, at("8.8.8.8", 80), true, &[]).is_err());
        assert!(check(https, at("10.0.0.5", 443), false, &[]).is_err());
        assert!(check(https, at("10.0.0.5", 443), true, &[]).is_ok());
        assert!(check(http, at("127.0.0.1", 9000), true, &[]).is_ok());
        assert!(check(http, at("169.254.169.254", 80), true, &[]).is_err());
    }

    #[test]
    fn the_nodes_own_listeners_are_never_targets() {
        let http = false;
        let own = [
            SocketAddr::new(ip("0.0.0.0"), 8080),
            SocketAddr::new(ip("127.0.0.1"), 9090),
        ];
        let at = |s: &str, port| SocketAddr::new(ip(s), port);
        assert!(check(http, at("127.0.0.1", 8080), true, &own).is_err());
        assert!(check(http, at("10.0.0.2", 8080), true, &own).is_err());
        assert!(check(http, at("127.0.0.1", 9090), true, &own).is_err());
        // The same listeners named as IPv4-mapped IPv6 addresses.
        assert!(check(http, at("::ffff:127.0.0.1", 9090), true, &own).is_err());
        assert!(check(http, at("::ffff:10.0.0.2", 8080), true, &own).is_err());
        assert!(check(http, at("127.0.0.1", 9091), true, &own).is_ok());
    }
}
