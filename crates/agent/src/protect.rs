//! The one rule for what synwatch never bans, whoever asks: a scan, `synwatch blocks
//! add`, a ban restored at start, or the XDP program's own in-kernel detection (which
//! consults [`allowlist`], built from the same rule).
//!
//! A blind spoofer can make any address look like a scanner (four forged SYNs are a
//! scan), so besides the configured allowlist the addresses the host cannot work without
//! are protected, discovered live: its own, its gateways and IPv6 routers (link-local
//! ones included), its resolvers, the CrowdSec Local API server it talks to (SPEC §2,
//! "Never cut the host off"). A scan from one of
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
    /// A gateway, router or resolver of this host, or its CrowdSec LAPI server.
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
            Why::Special => {
                "a loopback, unspecified, broadcast or multicast address (or 0.0.0.0/8, 100::/64)"
            }
            Why::Local => "one of this host's addresses (or --local)",
            Why::Allowlisted => "allowlisted (--allow)",
            Why::Infra(Role::Gateway) => "a gateway of this host (a next hop of its routes)",
            Why::Infra(Role::Router) => "an IPv6 router of this host (a next hop of its routes)",
            Why::Infra(Role::Resolver) => "a DNS resolver of this host (resolv.conf)",
            Why::Infra(Role::Lapi) => {
                "the CrowdSec Local API server of this agent (--crowdsec-url)"
            }
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
    if synwatch_detect::is_special_source(addr) {
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

/// Why `net` (an address, or a range) must never be banned, with the protected address
/// or range it would cover; `None` when it may be. A range is refused when it holds any
/// protected address (the host's own, a gateway, router or resolver) or overlaps a
/// protected range (the allowlist, `--local`, special ranges). For an address this is
/// [`why`].
pub fn why_net(net: IpNet, view: View<'_>) -> Option<(Why, IpNet)> {
    let net = synwatch_enforce::ban_net(net);
    if synwatch_enforce::is_host(net) {
        return why(net.addr(), view).map(|w| (w, net));
    }
    let overlaps = |other: IpNet| {
        let other = synwatch_enforce::ban_net(other);
        net.contains(&other) || other.contains(&net)
    };
    if let Some(special) = SPECIAL
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .find(|&s| overlaps(s))
    {
        return Some((Why::Special, special));
    }
    let inside = |a: &IpAddr| net.contains(&a.to_canonical());
    if let Some(a) = view.host.iter().find(|a| inside(a)) {
        return Some((Why::Local, IpNet::from(a.to_canonical())));
    }
    if let Some((a, infra)) = view.infra.by_addr.iter().find(|(a, _)| inside(a)) {
        return Some((Why::Infra(infra.role), IpNet::from(a.to_canonical())));
    }
    if let Some(n) = view.cfg.allow.iter().find(|&n| overlaps(n)) {
        return Some((Why::Allowlisted, n));
    }
    if locals_protected(view.cfg)
        && let Some(n) = view.cfg.locals.iter().find(|&n| overlaps(n))
    {
        return Some((Why::Local, n));
    }
    None
}

/// What to ban for a scan whose attempt from `src` crossed the threshold, counted in
/// `target` (`src` itself, or its IPv6 prefix), and why not: a range that would cover a
/// protected address is narrowed to `src` alone (neighbours of the host or of its router
/// are never lumped together), which is then judged by [`why`].
pub fn ban_target(src: IpAddr, target: IpNet, view: View<'_>) -> (IpNet, Option<Why>) {
    let target = synwatch_enforce::ban_net(target);
    let host = synwatch_enforce::ban_net(IpNet::from(src));
    if !synwatch_enforce::is_host(target)
        && target.contains(&host)
        && why_net(target, view).is_none()
    {
        return (target, None);
    }
    (host, why(src, view))
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
    fn a_range_that_would_cover_a_protected_address_is_refused_and_says_which() {
        let (host, infra, cfg) = fake();
        let view = View {
            host: &host,
            infra: &infra,
            cfg: &cfg,
        };
        let net = |s: &str| synwatch_enforce::parse_net(s).unwrap();
        let covered = |s: &str| why_net(net(s), view).map(|(w, n)| (w.as_str(), n.to_string()));
        assert_eq!(
            covered("192.0.2.0/24"),
            Some(("local", "192.0.2.1/32".into()))
        );
        assert_eq!(
            covered("192.0.2.128/25"),
            Some(("gateway", "192.0.2.254/32".into()))
        );
        assert_eq!(covered("fe80::/64"), Some(("router", "fe80::1/128".into())));
        assert_eq!(
            covered("198.51.100.0/24"),
            Some(("resolver", "198.51.100.53/32".into()))
        );
        // Overlapping a protected range either way.
        assert_eq!(
            covered("203.0.0.0/16"),
            Some(("allowlisted", "203.0.113.0/24".into()))
        );
        assert_eq!(
            covered("203.0.113.128/25"),
            Some(("allowlisted", "203.0.113.0/24".into()))
        );
        assert_eq!(covered("10.9.0.0/16"), Some(("local", "10.0.0.0/8".into())));
        assert_eq!(
            covered("0.0.0.0/0"),
            Some(("special", "127.0.0.0/8".into()))
        );
        assert_eq!(covered("::/0").map(|c| c.0), Some("special"));
        // Ranges clear of them may be banned; an address is judged as `why` judges it.
        assert_eq!(covered("192.0.2.128/26"), None);
        assert_eq!(covered("2001:db8:1::/48"), None);
        assert_eq!(covered("192.0.2.254").map(|c| c.0), Some("gateway"));
        assert_eq!(covered("192.0.2.77"), None);
        // A scan's prefix covering a protected address is narrowed to the source.
        let (t, p) = ban_target(ip("fe80::99"), net("fe80::/64"), view);
        assert_eq!((t, p), (net("fe80::99"), None));
        let (t, p) = ban_target(ip("2001:db8:1:2::9"), net("2001:db8:1:2::/64"), view);
        assert_eq!((t, p), (net("2001:db8:1:2::/64"), None));
        let (t, p) = ban_target(ip("192.0.2.254"), net("192.0.2.254"), view);
        assert_eq!(
            (t, p.map(Why::as_str)),
            (net("192.0.2.254"), Some("gateway"))
        );
    }

    /// Regression: an allowlist entry written in the IPv4-mapped form protected nothing,
    /// neither at ban time nor in the XDP program's allowlist.
    #[test]
    fn an_ipv4_mapped_allow_entry_protects_the_ipv4_address() {
        let (host, infra, mut cfg) = fake();
        let mut warnings = Vec::new();
        cfg.allow = crate::config::parse_set(
            "--allow",
            &[
                "::ffff:198.51.100.7".to_owned(),
                "::ffff:198.51.101.0/120".to_owned(),
            ],
            crate::config::HostBits::Network,
            &mut warnings,
        )
        .expect("the entries parse");
        let view = View {
            host: &host,
            infra: &infra,
            cfg: &cfg,
        };
        let net = |s: &str| synwatch_enforce::parse_net(s).expect("test net");
        assert_eq!(why(ip("198.51.100.7"), view), Some(Why::Allowlisted));
        assert_eq!(why(ip("198.51.101.9"), view), Some(Why::Allowlisted));
        let (_, p) = ban_target(ip("198.51.100.7"), net("198.51.100.7"), view);
        assert_eq!(p, Some(Why::Allowlisted));
        assert!(
            allowlist(view)
                .iter()
                .any(|n| n.contains(&ip("198.51.101.9"))),
            "the XDP program's allowlist holds the IPv4 range"
        );
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
