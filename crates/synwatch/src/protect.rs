//! The one rule for what synwatch never bans, whoever asks: a scan, `synwatch blocks
//! add`, a ban restored at start, or the XDP program's own in-kernel detection (which
//! consults [`allowlist`], built from the same rule).
//!
//! A blind spoofer can make any address look like a scanner (four forged SYNs are a
//! scan), so besides the configured allowlist the addresses the host cannot work without
//! are protected, discovered live: its own, its gateways and IPv6 routers (link-local
//! ones included), its resolvers (SPEC §2, "Never cut the host off"). A scan from one of
//! them is still reported, with why it is not banned.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use synwatch_detect::{Config, DirectionFilter};

use crate::host::{Infrastructure, Role};

/// Why an address is never banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Loopback, unspecified, broadcast, multicast, 0.0.0.0/8 or 100::/64: never a real
    /// source.
    Special,
    /// One of this host's addresses, or a configured `--local` range.
    Local,
    /// A configured `--allow` range.
    Allowlisted,
    /// A gateway, router or resolver of this host.
    Infra(Role),
}

impl Why {
    /// The word in events (`allowlisted_reason`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Special => "special",
            Why::Local => "local",
            Why::Allowlisted => "allowlisted",
            Why::Infra(role) => role.as_str(),
        }
    }

    /// For people, in the log line of a refused ban.
    pub fn describe(self) -> &'static str {
        match self {
            Why::Special => "a loopback, unspecified, broadcast or multicast address",
            Why::Local => "one of this host's addresses (or --local)",
            Why::Allowlisted => "allowlisted (--allow)",
            Why::Infra(Role::Gateway) => "a gateway of this host (a next hop of its routes)",
            Why::Infra(Role::Router) => "an IPv6 router of this host (a next hop of its routes)",
            Why::Infra(Role::Resolver) => "a DNS resolver of this host (resolv.conf)",
        }
    }
}

/// What the rule is asked against: the host as last read and the running configuration.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// This host's addresses, as discovered.
    pub host: &'a BTreeSet<IpAddr>,
    pub infra: &'a Infrastructure,
    pub cfg: &'a Config,
}

/// Special ranges, as the XDP allowlist holds them; [`why`] tests the same with
/// `std`'s predicates. 0.0.0.0/8 and the discard-only 100::/64 are never a source, and
/// hold the canaries synwatch keeps in its kernel sets.
const SPECIAL: [&str; 8] = [
    "127.0.0.0/8",
    "0.0.0.0/8",
    "100::/64",
    "255.255.255.255/32",
    "224.0.0.0/4",
    "::1/128",
    "::/128",
    "ff00::/8",
];

/// Whether configured local ranges are protected: unless turned off (`--no-allow-local`
/// with `--direction both`, where local sources are counted as scanners on purpose).
/// With any other direction they are outgoing and never scan anyway.
fn locals_protected(cfg: &Config) -> bool {
    cfg.allow_local || cfg.direction != DirectionFilter::Both
}

/// Why `addr` must never be banned, or `None` when it may be.
pub fn why(addr: IpAddr, view: View<'_>) -> Option<Why> {
    let addr = addr.to_canonical();
    let never_a_source = match addr {
        IpAddr::V4(a) => a.octets()[0] == 0,
        IpAddr::V6(a) => a.segments()[..4] == [0x100, 0, 0, 0],
    };
    if never_a_source
        || addr.is_loopback()
        || addr.is_unspecified()
        || addr.is_multicast()
        || addr == IpAddr::from([255, 255, 255, 255])
    {
        return Some(Why::Special);
    }
    if view.host.contains(&addr) {
        return Some(Why::Local);
    }
    if let Some(infra) = view.infra.get(addr) {
        return Some(Why::Infra(infra.role));
    }
    if view.cfg.allow.contains(addr) {
        return Some(Why::Allowlisted);
    }
    if locals_protected(view.cfg) && view.cfg.locals.contains(addr) {
        return Some(Why::Local);
    }
    None
}

/// The ranges the XDP program never drops or tracks: exactly what [`why`] protects.
pub fn allowlist(view: View<'_>) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = view.cfg.allow.iter().collect();
    if locals_protected(view.cfg) {
        nets.extend(view.cfg.locals.iter());
    }
    nets.extend(view.host.iter().map(|&a| IpNet::from(a)));
    nets.extend(view.infra.by_addr.keys().map(|&a| IpNet::from(a)));
    nets.extend(SPECIAL.iter().filter_map(|s| s.parse::<IpNet>().ok()));
    nets.sort();
    nets.dedup();
    nets
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::host::Infra;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A fake host: 192.0.2.1 its own, 192.0.2.254 its gateway, fe80::1 its router on
    /// eth0, 198.51.100.53 its resolver; 10.0.0.0/8 --local, 203.0.113.0/24 --allow.
    fn fake() -> (BTreeSet<IpAddr>, Infrastructure, Config) {
        let host = [ip("192.0.2.1")].into_iter().collect();
        let mut infra = Infrastructure::default();
        for (a, role, iface) in [
            ("192.0.2.254", Role::Gateway, Some("eth0")),
            ("fe80::1", Role::Router, Some("eth0")),
            ("198.51.100.53", Role::Resolver, None),
        ] {
            infra.by_addr.insert(
                ip(a),
                Infra {
                    role,
                    iface: iface.map(str::to_owned),
                },
            );
        }
        let cfg = Config {
            allow: ["203.0.113.0/24".parse::<IpNet>().unwrap()]
                .into_iter()
                .collect(),
            locals: ["10.0.0.0/8".parse::<IpNet>().unwrap()]
                .into_iter()
                .collect(),
            ..Config::default()
        };
        (host, infra, cfg)
    }

    const SAMPLES: [&str; 18] = [
        "0.0.0.1",
        "100::1",
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "192.0.2.1",
        "192.0.2.254",
        "fe80::1",
        "198.51.100.53",
        "203.0.113.9",
        "10.1.2.3",
        "192.0.2.77",
        "fe80::2",
    ];

    #[test]
    fn gateways_routers_resolvers_and_the_configured_ranges_are_protected_with_a_reason() {
        let (host, infra, cfg) = fake();
        let view = View {
            host: &host,
            infra: &infra,
            cfg: &cfg,
        };
        let reason = |a: &str| why(ip(a), view).map(Why::as_str);
        for special in &SAMPLES[..10] {
            assert_eq!(reason(special), Some("special"), "{special}");
        }
        assert_eq!(reason("192.0.2.1"), Some("local"));
        assert_eq!(reason("::ffff:192.0.2.1"), Some("local"));
        assert_eq!(reason("192.0.2.254"), Some("gateway"));
        assert_eq!(reason("fe80::1"), Some("router"));
        assert_eq!(reason("198.51.100.53"), Some("resolver"));
        assert_eq!(reason("203.0.113.9"), Some("allowlisted"));
        assert_eq!(reason("10.1.2.3"), Some("local"));
        assert_eq!(reason("192.0.2.77"), None);
        assert_eq!(reason("fe80::2"), None);
    }

    #[test]
    fn the_xdp_allowlist_and_the_ban_time_rule_agree() {
        let (host, infra, mut cfg) = fake();
        for (direction, allow_local) in [
            (DirectionFilter::In, true),
            (DirectionFilter::Both, true),
            (DirectionFilter::Both, false),
            (DirectionFilter::Out, false),
        ] {
            cfg.direction = direction;
            cfg.allow_local = allow_local;
            let view = View {
                host: &host,
                infra: &infra,
                cfg: &cfg,
            };
            let nets = allowlist(view);
            for a in SAMPLES {
                let addr = ip(a).to_canonical();
                let covered = nets.iter().any(|n| n.contains(&addr));
                assert_eq!(
                    covered,
                    why(addr, view).is_some(),
                    "{a} with {direction:?}, allow_local {allow_local}: {nets:?}"
                );
            }
        }
        // Scanning from a local range is counted (and banned) with --direction both and
        // --no-allow-local; the host's own addresses never are.
        cfg.direction = DirectionFilter::Both;
        cfg.allow_local = false;
        let view = View {
            host: &host,
            infra: &infra,
            cfg: &cfg,
        };
        assert_eq!(why(ip("10.1.2.3"), view), None);
        assert_eq!(why(ip("192.0.2.1"), view), Some(Why::Local));
    }
}
