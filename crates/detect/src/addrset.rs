//! Sets of addresses and CIDR ranges: the host's own addresses and the allowlist.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Why an address or CIDR could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCidrError {
    input: String,
}

impl fmt::Display for ParseCidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not an IP address or CIDR (expected e.g. 192.0.2.1, 10.0.0.0/8, 2001:db8::/32)",
            self.input
        )
    }
}

impl std::error::Error for ParseCidrError {}

/// Parses `192.0.2.1`, `10.0.0.0/8`, `2001:db8::1` or `2001:db8::/32`. A bare address is a
/// host route; host bits set under a prefix are cleared (`10.1.2.3/8` means `10.0.0.0/8`).
pub fn parse_cidr(text: &str) -> Result<IpNet, ParseCidrError> {
    let text = text.trim();
    let err = || ParseCidrError {
        input: text.to_owned(),
    };
    if text.contains('/') {
        IpNet::from_str(text).map(|n| n.trunc()).map_err(|_| err())
    } else {
        IpAddr::from_str(text).map(IpNet::from).map_err(|_| err())
    }
}

/// A set of CIDR ranges with a membership test. Membership tests run on the hot path
/// (once per attempt), so IPv4 and IPv6 ranges are kept apart and an empty family costs
/// a single branch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    v4: Vec<ipnet::Ipv4Net>,
    v6: Vec<ipnet::Ipv6Net>,
}

impl AddrSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a range; ranges already covered by a wider one are not stored twice. A range
    /// of IPv4-mapped addresses (`::ffff:198.51.100.7`, `::ffff:198.51.100.0/120`) is the
    /// IPv4 range it stands for: the same hosts, whose packets come as IPv4.
    pub fn insert(&mut self, net: IpNet) {
        let net = unmapped(net);
        if self.contains_net(&net) {
            return;
        }
        match net {
            IpNet::V4(n) => {
                self.v4.retain(|have| !n.contains(have));
                self.v4.push(n);
            }
            IpNet::V6(n) => {
                self.v6.retain(|have| !n.contains(have));
                self.v6.push(n);
            }
        }
    }

    fn contains_net(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => self.v4.iter().any(|have| have.contains(n)),
            IpNet::V6(n) => self.v6.iter().any(|have| have.contains(n)),
        }
    }

    /// Whether `addr` falls in any range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches the IPv4 ranges too, since it is the same host.
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.contains_v4(a),
            IpAddr::V6(a) => {
                if let Some(v4) = a.to_ipv4_mapped()
                    && self.contains_v4(v4)
                {
                    return true;
                }
                !self.v6.is_empty() && self.v6.iter().any(|n| n.contains(&a))
            }
        }
    }

    /// [`AddrSet::contains`] for an IPv4 address: not recursive, so that it can be inlined
    /// where the address is in a register.
    #[inline]
    fn contains_v4(&self, a: std::net::Ipv4Addr) -> bool {
        !self.v4.is_empty() && self.v4.iter().any(|n| n.contains(&a))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The ranges, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }
}

/// The IPv4 range an IPv6 range of IPv4-mapped addresses (a /96 or longer inside
/// `::ffff:0:0/96`) stands for; any other range as it is.
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(a) => ipnet::Ipv4Net::new(a, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

impl FromIterator<IpNet> for AddrSet {
    fn from_iter<T: IntoIterator<Item = IpNet>>(iter: T) -> Self {
        let mut set = Self::new();
        for net in iter {
            set.insert(net);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(
            parse_cidr("192.0.2.1").map(|n| n.to_string()),
            Ok("192.0.2.1/32".into())
        );
        assert_eq!(
            parse_cidr(" 10.1.2.3/8 ").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            parse_cidr("2001:db8::1").map(|n| n.to_string()),
            Ok("2001:db8::1/128".into())
        );
        assert_eq!(
            parse_cidr("2001:db8::/32").map(|n| n.to_string()),
            Ok("2001:db8::/32".into())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "300.1.1.1",
            "example.com",
            "10.0.0.0/",
            "::/129",
        ] {
            let err = parse_cidr(bad).expect_err(bad);
            assert!(
                err.to_string().contains("is not an IP address or CIDR"),
                "{err}"
            );
        }
    }

    #[test]
    fn membership_by_family_and_mapped_addresses() {
        let set: AddrSet = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
            .iter()
            .map(|s| parse_cidr(s).expect("test cidr"))
            .collect();
        assert!(set.contains(ip("10.200.1.1")));
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("2001:db8:1::5")));
        assert!(!set.contains(ip("2001:db9::5")));
        assert!(set.contains(ip("::ffff:10.9.9.9")));
        // A mapped address also matches IPv6 ranges that cover it (regression: it was
        // checked against the IPv4 ranges only).
        let v6_only: AddrSet = [parse_cidr("::ffff:0:0/96").expect("cidr")]
            .into_iter()
            .collect();
        assert!(v6_only.contains(ip("::ffff:203.0.113.9")));
        let everything: AddrSet = [parse_cidr("::/0").expect("cidr")].into_iter().collect();
        assert!(everything.contains(ip("::ffff:203.0.113.9")));
        assert!(!AddrSet::new().contains(ip("10.0.0.1")));
    }

    /// Regression: `--allow ::ffff:198.51.100.7` was kept as an IPv6 range, which no IPv4
    /// source (nor the XDP program's IPv4 allowlist) matched: the partner it named could
    /// be banned by four forged SYNs.
    #[test]
    fn ipv4_mapped_ranges_are_the_ipv4_ranges_they_stand_for() {
        let set: AddrSet = ["::ffff:198.51.100.7", "::ffff:198.51.101.0/120", "::/80"]
            .iter()
            .map(|s| parse_cidr(s).expect("test cidr"))
            .collect();
        let nets: Vec<String> = set.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            nets,
            ["198.51.100.7/32", "198.51.101.0/24", "::/80"],
            "a range wider than the mapped block stays IPv6"
        );
        assert!(set.contains(ip("198.51.100.7")));
        assert!(set.contains(ip("198.51.101.9")));
        assert!(!set.contains(ip("198.51.100.8")));
        assert!(set.contains(ip("::ffff:198.51.100.7")));
    }

    #[test]
    fn wider_ranges_absorb_narrower_ones() {
        let mut set = AddrSet::new();
        set.insert(parse_cidr("10.1.0.0/16").expect("cidr"));
        set.insert(parse_cidr("10.0.0.0/8").expect("cidr"));
        set.insert(parse_cidr("10.2.0.0/16").expect("cidr"));
        assert_eq!(set.len(), 1);
    }
}
