//! The outbound guard of the `http` action (server-side request forgery): refuses targets in
//! private, loopback, link-local and other non-public address ranges unless allow-listed.
//!
//! The hub turns it on (workflows written by API users must not reach the hub's own network:
//! its database, the cloud metadata service at 169.254.169.254, admin ports on localhost);
//! the agent leaves it off (talking to the local network is what a device is for).
//!
//! Decisions:
//! - The check is on **addresses after DNS resolution**, inside the client's resolver, so the
//!   address checked is the address connected to (no time-of-check/time-of-use gap, no DNS
//!   rebinding). Addresses written in the URL (`http://127.0.0.1/`, which bypass the resolver)
//!   are checked before the request. Every **redirect** is checked the same way: its literal
//!   address by the redirect policy, its name by the resolver when it connects.
//! - A name that resolves to some public and some private addresses keeps only the public ones;
//!   with none left the request fails permanently, naming the host, address and range.
//! - Refused ranges: IPv4 unspecified/"this network" 0/8, 10/8, CGNAT 100.64/10, loopback
//!   127/8, link-local 169.254/16 (the metadata address), 172.16/12, 192.0.0/24, the
//!   documentation nets, 192.168/16, benchmarking 198.18/15, multicast 224/4, reserved 240/4
//!   and broadcast; IPv6 unspecified, loopback, ULA fc00::/7, link-local fe80::/10, site-local
//!   fec0::/10, multicast ff00::/8, documentation 2001:db8::/32, discard 100::/64, and the
//!   forms that embed an IPv4 address (mapped ::ffff:0:0/96, compatible ::/96, NAT64
//!   64:ff9b::/96, 6to4 2002::/16), judged by the IPv4 address inside.
//! - The allow list holds CIDRs (`10.1.0.0/16`, `fd00::/8`), single addresses, host names
//!   (`api.internal`) and wildcard domains (`*.corp.example`, which also matches
//!   `corp.example`). An allowed name skips the check for whatever it resolves to.
//! - With the guard on, system proxy variables are ignored: a proxy resolves names itself,
//!   out of the guard's reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A request refused by the guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub host: String,
    pub address: IpAddr,
    /// Which range (`loopback`, `private`, `link-local` …).
    pub range: &'static str,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let literal = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        if literal {
            write!(f, "{} is a {} address", self.host, self.range)?;
        } else {
            write!(
                f,
                "{} is {}, a {} address",
                self.host, self.address, self.range
            )?;
        }
        f.write_str(
            ": the http action refuses non-public targets here unless they are allow-listed",
        )
    }
}

impl std::error::Error for Blocked {}

/// An allow-list entry that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an address, a CIDR (10.0.0.0/8), a host name or *.domain: {reason}")]
pub struct AllowListError {
    pub entry: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Net {
    base: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                prefix_eq(&base.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                prefix_eq(&base.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The outbound guard: which targets the `http` action may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetGuard {
    nets: Vec<Net>,
    /// Lower-case host names; a leading `.` marks a wildcard domain.
    hosts: Vec<String>,
}

impl NetGuard {
    /// A guard that refuses every non-public address except those in `allow`.
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<NetGuard, AllowListError> {
        let mut guard = NetGuard::default();
        for entry in allow {
            let entry = entry.as_ref().trim();
            let error = |reason: &str| AllowListError {
                entry: entry.to_string(),
                reason: reason.to_string(),
            };
            if let Some((base, prefix)) = entry.split_once('/') {
                let base: IpAddr = base.parse().map_err(|_| error("bad address"))?;
                let max = if base.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| error("bad prefix length"))?;
                guard.nets.push(Net {
                    base: canonical(base),
                    prefix,
                });
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                let ip = canonical(ip);
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                guard.nets.push(Net { base: ip, prefix });
            } else {
                let name = entry.strip_prefix("*.").map_or_else(
                    || entry.to_ascii_lowercase(),
                    |d| format!(".{}", d.to_ascii_lowercase()),
                );
                let bare = name.trim_start_matches('.');
                let valid = !bare.is_empty()
                    && bare.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if !valid {
                    return Err(error("bad host name"));
                }
                guard.hosts.push(name);
            }
        }
        Ok(guard)
    }

    /// Whether the host name is allow-listed (then anything it resolves to is reachable).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(allowed.as_str()),
                None => host == *allowed,
            })
    }

    /// Checks one address reached for `host`.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Blocked> {
        match non_public(ip) {
            Some(range) if !self.nets.iter().any(|n| n.contains(ip)) => Err(Blocked {
                host: host.to_string(),
                address: ip,
                range,
            }),
            _ => Ok(()),
        }
    }

    /// Checks a URL whose host is an address (names are checked when resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Blocked> {
        let host = url.host_str().unwrap_or_default();
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check_ip(host, ip),
            // A name: checked when the resolver looks it up.
            Err(_) => Ok(()),
        }
    }

    /// A resolver for reqwest that drops the addresses this guard refuses.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn Resolve> {
        Arc::new(GuardedResolver(self.clone()))
    }

    /// A redirect policy: at most `max` hops, each one's literal address checked.
    pub fn redirect_policy(self: &Arc<Self>, max: usize) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            match guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(blocked) => attempt.error(blocked),
            }
        })
    }
}

struct GuardedResolver(Arc<NetGuard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if guard.host_allowed(&host) {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match guard.check_ip(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(blocked) => {
                        refused.get_or_insert(blocked);
                        false
                    }
                })
                .collect();
            match refused {
                Some(blocked) if kept.is_empty() => Err(Box::new(blocked) as _),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// The range a non-public address belongs to; `None` for a public address.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified",
        (10, ..) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (127, ..) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 168, _) => "private",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d (mapped) is judged by its IPv4 address; ::a.b.c.d (compatible,
    // deprecated) is refused whatever it holds.
    if s[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return non_public_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0; 6] {
        return Some(non_public_v4(embedded(s[6], s[7])).unwrap_or("IPv4-compatible"));
    }
    // NAT64 64:ff9b::a.b.c.d reaches the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7]));
    }
    // 6to4 2002:AABB:CCDD::/48 routes to AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        0xfc00..=0xfdff => "unique-local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x0100 if s[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_ranges() {
        for (text, range) in [
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::10.0.0.1", "private"),
            ("2002:c0a8:0101::1", "private"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
        ] {
            assert_eq!(non_public(ip(text)), Some(range), "{text}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allow_list_of_nets_addresses_and_names() {
        let guard = NetGuard::new(&[
            "10.1.0.0/16",
            "127.0.0.1",
            "fd00::/8",
            "api.internal",
            "*.corp.example",
        ])
        .unwrap();
        assert!(guard.check_ip("h", ip("10.1.200.3")).is_ok());
        assert!(guard.check_ip("h", ip("10.2.0.1")).is_err());
        assert!(guard.check_ip("h", ip("127.0.0.1")).is_ok());
        assert!(guard.check_ip("h", ip("::ffff:127.0.0.1")).is_ok());
        assert!(guard.check_ip("h", ip("127.0.0.2")).is_err());
        assert!(guard.check_ip("h", ip("fd12::1")).is_ok());
        assert!(guard.check_ip("h", ip("8.8.8.8")).is_ok());
        assert!(guard.host_allowed("API.internal."));
        assert!(guard.host_allowed("corp.example"));
        assert!(guard.host_allowed("a.b.corp.example"));
        assert!(!guard.host_allowed("evilcorp.example"));
        let blocked = guard.check_ip("db", ip("10.2.0.1")).unwrap_err();
        assert_eq!(
            blocked.to_string(),
            "db is 10.2.0.1, a private address: the http action refuses non-public targets here unless they are allow-listed"
        );
        for bad in ["10.0.0.0/33", "x/8", "bad host", "*.", ""] {
            assert!(NetGuard::new(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        let guard = NetGuard::new::<&str>(&[]).unwrap();
        let url = |t: &str| Url::parse(t).unwrap();
        assert!(guard.check_url(&url("http://127.0.0.1:8080/x")).is_err());
        assert!(guard.check_url(&url("http://[::1]/")).is_err());
        assert!(
            guard
                .check_url(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(
            guard.check_url(&url("http://0x7f.1/")).is_err(),
            "hex forms parse as IPv4"
        );
        assert!(guard.check_url(&url("http://example.com/")).is_ok());
    }
}
