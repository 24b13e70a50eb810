//! Blocking scanners in the kernel.
//!
//! Each backend keeps its bans in one kernel set per address family (an nftables set, or an
//! ipset) with a per-element timeout, matched by a handful of fixed rules, never one rule
//! per address: adding the ten-thousandth ban costs what the first did, and the kernel
//! expires bans by itself even if the agent dies.
//!
//! The key decision is the split between planning and applying. A backend turns an
//! operation (set up, add these bans, remove these addresses, tear down) into a plan, the
//! exact commands and their input, with pure functions that the unit tests check line by
//! line. Applying a plan goes through [`Runner`], one narrow function that spawns a
//! program; tests substitute a recording runner, and the lab tests use the real one
//! against a network namespace's kernel.
//!
//! Layout: `nftables` (table `inet synwatch`), `iptables` (chain `SYNWATCH` with ipsets),
//! `runner` (the process edge), `bans` (the ban lifecycle: durations, repeat offenders,
//! the rate cap; pure, time passed in).

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

pub mod bans;
pub mod iptables;
pub mod nflink;
pub mod nftables;
mod runner;
pub mod waiting;

pub use runner::{Command, RecordingRunner, Runner, SystemRunner, system_command};

/// One ban as the kernel holds it: the network (an address is a /32 or /128) and how
/// long it lasts from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    /// Seconds from now; `None` lasts until removed.
    pub timeout_secs: Option<u64>,
    /// Drops only new connections (and probes), so that sessions the source holds live
    /// on: it held an established connection to this host when it was banned.
    pub new_only: bool,
}

/// What a ban drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every packet from the address (the default).
    #[default]
    All,
    /// Only packets that open a new connection; established ones continue.
    New,
}

/// The longest ban any backend takes (500 years): a saved ban longer than that is no
/// ban synwatch gave.
pub const LONGEST_BAN_SECS: u64 = 500 * 365 * 86_400;

/// The longest element timeout `nft` takes (1.0.6: "value too large" above it).
pub const NFT_MAX_TIMEOUT_SECS: u64 = 99_999_999;
/// The longest element timeout ipset takes.
pub const IPSET_MAX_TIMEOUT_SECS: u64 = 2_147_483;

/// A ban's timeout as a kernel set taking at most `max` seconds holds it: between 1 s
/// and `max` (a longer ban is renewed by the agent before the element runs out).
pub fn kernel_timeout(secs: u64, max: u64) -> u64 {
    secs.clamp(1, max.max(1))
}

/// The kernel backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Nftables,
    Iptables,
    /// The XDP program's ban maps (crate synwatch-xdp).
    Xdp,
    /// XDP first, and nftables for the traffic XDP does not see.
    XdpNftables,
}

impl Backend {
    /// The longest ban (seconds) this backend's kernel objects can time out by
    /// themselves: ipset takes timeouts up to 2,147,483 s (24 days 20 h); nftables and the
    /// XDP maps count nanoseconds in 64 bits (584 years), bounded here at 500 years.
    /// Bans "until removed" have no timeout and no limit.
    pub fn max_ban_secs(self) -> u64 {
        match self {
            Backend::Iptables => 2_147_483,
            Backend::Nftables | Backend::Xdp | Backend::XdpNftables => LONGEST_BAN_SECS,
        }
    }

    /// The longest timeout (seconds) one element of this backend's kernel sets takes:
    /// `nft` refuses timeouts over 99,999,999 s ("value too large"), ipset over
    /// 2,147,483 s; the XDP maps take [`Backend::max_ban_secs`]. Every timeout written to
    /// the kernel is clamped to it ([`kernel_timeout`]): a longer ban is held by the
    /// kernel for this long, and renewed by the agent before that runs out.
    pub fn kernel_max_secs(self) -> u64 {
        match self {
            Backend::Iptables => IPSET_MAX_TIMEOUT_SECS,
            Backend::Nftables | Backend::XdpNftables => NFT_MAX_TIMEOUT_SECS,
            Backend::Xdp => self.max_ban_secs(),
        }
    }

    /// Why a ban of `secs` (0: until removed) cannot go to this backend, if it cannot.
    pub fn refuses_ban_of(self, secs: u64) -> Option<String> {
        let max = self.max_ban_secs();
        (secs > max).then(|| {
            format!(
                "{self} keeps bans for at most {max} s ({} days); ban for less, or until removed (0)",
                max / 86_400
            )
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
            Backend::Xdp => "xdp",
            Backend::XdpNftables => "xdp,nftables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ban as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBan {
    pub net: IpNet,
    /// Seconds left; `None` for a ban without timeout.
    pub expires_secs: Option<u64>,
    /// Packets and bytes this element has matched, where the backend counts them.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// Packets and bytes the drop rules have dropped since the rules were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot run {program}: {source} (is it installed? `make deps` installs it)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed while trying to {what}: {stderr}")]
    Failed {
        program: String,
        what: String,
        stderr: String,
    },
    #[error("cannot read {program}'s output while trying to {what}: {detail}")]
    Output {
        program: String,
        what: String,
        detail: String,
    },
    /// A BPF map operation failed (the XDP backend).
    #[error("cannot {what} in the XDP ban map {map}: {detail}")]
    Map {
        map: String,
        what: String,
        detail: String,
    },
    /// The program is missing from the system directories, or could be replaced by
    /// someone other than root.
    #[error(
        "refusing to run {program}: {why} (helper programs run only from root-owned system directories: {dirs})",
        dirs = runner::SYSTEM_DIRS.join(", ")
    )]
    Untrusted { program: String, why: String },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {secs} s while trying to {what}; it was killed")]
    Timeout {
        program: String,
        what: String,
        secs: u64,
    },
}

impl EnforceError {
    /// Whether the failure says the caller lacks a privilege (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        match self {
            EnforceError::Failed { stderr, .. } => {
                let s = stderr.to_ascii_lowercase();
                s.contains("operation not permitted") || s.contains("permission denied")
            }
            EnforceError::Spawn { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            EnforceError::Output { .. }
            | EnforceError::Map { .. }
            | EnforceError::Untrusted { .. }
            | EnforceError::Timeout { .. } => false,
        }
    }
}

/// The seam between the agent and a way of blocking: `run` drives an `Enforcer`
/// without knowing which kernel facility is behind it.
pub trait Enforcer: Send {
    fn backend(&self) -> Backend;

    /// Creates synwatch's own rules and sets, replacing whatever a previous run left,
    /// holding exactly `bans` afterwards (in one transaction where the backend has them).
    fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError>;

    /// Adds bans, or renews them (an address already banned takes the new timeout).
    fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError>;

    /// Puts bans back into rules just set up again ([`Enforcer::setup`]) that do not
    /// hold them yet: nothing to renew, so it may be cheaper than [`Enforcer::add`]. A
    /// ban already there keeps what it has.
    fn refill(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.add(bans)
    }

    /// Removes bans (each exactly as it was added); one that is not banned (any more)
    /// is not an error.
    fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError>;

    /// Removes bans the XDP program made by itself and the agent does not keep (its cap
    /// refused them, or its detector did not decide them): as [`Enforcer::remove`], but
    /// the program keeps its scan track of each source, so that it does not ban the
    /// source again before the episode ends.
    fn remove_refused(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.remove(nets)
    }

    /// The bans the kernel holds now.
    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError>;

    /// What the drop rules have dropped.
    fn counters(&mut self) -> Result<DropCounters, EnforceError>;

    /// Whether synwatch's rules exist in the kernel now (an agent, or one that stopped with
    /// its rules kept).
    fn present(&mut self) -> bool;

    /// Whether everything the running agent set up is still in place: false once someone
    /// flushed it (a firewall service reloading with `flush ruleset`, `iptables -F`).
    fn intact(&mut self) -> bool {
        self.present()
    }

    /// Removes synwatch's rules and sets, leaving nothing behind.
    fn teardown(&mut self) -> Result<(), EnforceError>;
}

/// The canary element synwatch keeps in each of its IPv4 sets from set-up on: a source
/// no packet can have (0.0.0.0/8, "this network", is a martian source to Linux), so its
/// presence costs nothing, and its absence says the set was flushed or replaced.
pub const CANARY4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(0, 0, 0, 1);
/// The same for the IPv6 sets: in the discard-only prefix 100::/64 (RFC 6666).
pub const CANARY6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);

/// Whether `addr` is one of the canaries (left out of what the kernel is said to ban).
pub fn is_canary(addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    addr == IpAddr::V4(CANARY4) || addr == IpAddr::V6(CANARY6)
}

/// Opens a firewall backend over a runner. Nothing touches the kernel until a method is
/// called. `None` for the XDP backends, which need the loaded program (synwatch-xdp).
pub fn open(backend: Backend, scope: Scope, runner: Box<dyn Runner>) -> Option<Box<dyn Enforcer>> {
    match backend {
        Backend::Nftables => Some(Box::new(nftables::Nftables::new(scope, runner))),
        Backend::Iptables => Some(Box::new(iptables::Iptables::new(scope, runner))),
        Backend::Xdp | Backend::XdpNftables => None,
    }
}

/// Opens a firewall backend on this system: its programs through [`SystemRunner`], and
/// for nftables the cheap netlink look ([`nflink`]) for tamper checks, counters and
/// address bans (with `nft` as the fallback where the netlink socket cannot be opened or
/// a change through it fails).
pub fn open_system(backend: Backend, scope: Scope) -> Option<Box<dyn Enforcer>> {
    match backend {
        Backend::Nftables => {
            let nft = nftables::Nftables::new(scope, Box::new(SystemRunner::default()));
            Some(Box::new(match nflink::Netlink::open() {
                Ok(look) => nft.with_look(Box::new(look)),
                Err(_) => nft,
            }))
        }
        Backend::Iptables => {
            let ipt = iptables::Iptables::new(scope, Box::new(SystemRunner::default()));
            Some(Box::new(match nflink::Netlink::open() {
                Ok(nl) => ipt.with_netlink(nl),
                Err(_) => ipt,
            }))
        }
        other => open(other, scope, Box::new(SystemRunner::default())),
    }
}

/// Two backends holding the same bans: a fast one first (XDP) and one behind it for the
/// traffic the first does not see (nftables). Every change goes to both; the first
/// error is returned after both were tried.
pub struct Layered {
    backend: Backend,
    first: Box<dyn Enforcer>,
    second: Box<dyn Enforcer>,
}

impl fmt::Debug for Layered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Layered {
    pub fn new(backend: Backend, first: Box<dyn Enforcer>, second: Box<dyn Enforcer>) -> Self {
        Self {
            backend,
            first,
            second,
        }
    }

    fn both<T>(
        &mut self,
        mut op: impl FnMut(&mut dyn Enforcer) -> Result<T, EnforceError>,
    ) -> Result<T, EnforceError> {
        let a = op(self.first.as_mut());
        let b = op(self.second.as_mut());
        a.and_then(|x| b.map(|_| x))
    }
}

impl Enforcer for Layered {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.both(|e| e.setup(bans))
    }

    fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.both(|e| e.add(bans))
    }

    fn refill(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.both(|e| e.refill(bans))
    }

    fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.both(|e| e.remove(nets))
    }

    fn remove_refused(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.both(|e| e.remove_refused(nets))
    }

    /// The first backend's view, with the packets the second dropped added per address.
    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
        let mut bans = self.first.list()?;
        if let Ok(behind) = self.second.list() {
            for ban in &mut bans {
                if let Some(b) = behind.iter().find(|b| b.net == ban.net) {
                    ban.packets = Some(ban.packets.unwrap_or(0) + b.packets.unwrap_or(0));
                    ban.bytes = Some(ban.bytes.unwrap_or(0) + b.bytes.unwrap_or(0));
                }
            }
        }
        Ok(bans)
    }

    /// What both dropped (a packet dropped by the first never reaches the second).
    fn counters(&mut self) -> Result<DropCounters, EnforceError> {
        let a = self.first.counters()?;
        let b = self.second.counters().unwrap_or_default();
        Ok(DropCounters {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        })
    }

    fn present(&mut self) -> bool {
        self.first.present() && self.second.present()
    }

    fn intact(&mut self) -> bool {
        self.first.intact() && self.second.intact()
    }

    fn teardown(&mut self) -> Result<(), EnforceError> {
        self.both(|e| e.teardown())
    }
}

/// `--dry-run`: stands in for `backend`, takes every change and applies none, so the
/// agent decides and reports everything while the kernel stays as it was.
#[derive(Debug, Clone, Copy)]
pub struct DryRun {
    pub backend: Backend,
}

impl Enforcer for DryRun {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn setup(&mut self, _bans: &[Ban]) -> Result<(), EnforceError> {
        Ok(())
    }

    fn add(&mut self, _bans: &[Ban]) -> Result<(), EnforceError> {
        Ok(())
    }

    fn remove(&mut self, _nets: &[IpNet]) -> Result<(), EnforceError> {
        Ok(())
    }

    /// Nothing is in the kernel.
    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
        Ok(Vec::new())
    }

    fn counters(&mut self) -> Result<DropCounters, EnforceError> {
        Ok(DropCounters::default())
    }

    fn present(&mut self) -> bool {
        false
    }

    /// Nothing was set up, so nothing can have been removed.
    fn intact(&mut self) -> bool {
        true
    }

    fn teardown(&mut self) -> Result<(), EnforceError> {
        Ok(())
    }
}

/// Splits bans by address family (their networks are canonical: see [`ban_net`]).
fn by_family<T: Copy>(items: &[T], net: impl Fn(&T) -> IpNet) -> (Vec<T>, Vec<T>) {
    items
        .iter()
        .partition(|i| matches!(ban_net(net(i)), IpNet::V4(_)))
}

/// A network as synwatch bans it: its host bits cleared, and an IPv4-mapped IPv6 network
/// (inside `::ffff:0:0/96`) as the IPv4 network it stands for, since that is how the
/// kernel sees its packets. An address is a /32 or /128.
pub fn ban_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(a) => Ipv4Net::new(a, n.prefix_len() - 96)
                .map(|v4| IpNet::V4(v4).trunc())
                .unwrap_or(net.trunc()),
            None => net.trunc(),
        },
        _ => net.trunc(),
    }
}

/// Whether `net` is a single address (a /32 or /128).
pub fn is_host(net: IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// A network as the kernel tools and people write it: an address alone for a /32 or
/// /128, `ADDR/LEN` for a range.
pub fn net_text(net: IpNet) -> String {
    let net = ban_net(net);
    if is_host(net) {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Reads an address (a /32 or /128) or a CIDR range, canonical (host bits cleared,
/// IPv4-mapped IPv6 as IPv4); `None` when it is neither.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpAddr>() {
        Ok(a) => IpNet::from(a),
        Err(_) => text.parse::<IpNet>().ok()?,
    };
    Some(ban_net(net))
}

/// A ban for the backends' tests.
#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on a bad address")]
fn test_ban(net: &str, timeout_secs: Option<u64>) -> Ban {
    Ban {
        net: parse_net(net).unwrap(),
        timeout_secs,
        new_only: false,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on a bad address")]
mod net_tests {
    use super::*;

    #[test]
    fn each_backend_says_how_long_a_ban_it_keeps() {
        let day = 86_400;
        assert!(Backend::Iptables.refuses_ban_of(24 * day).is_none());
        let why = Backend::Iptables.refuses_ban_of(25 * day).unwrap();
        assert!(
            why.contains("iptables keeps bans for at most 2147483 s"),
            "{why}"
        );
        for b in [Backend::Nftables, Backend::Xdp, Backend::XdpNftables] {
            assert!(b.refuses_ban_of(10 * 365 * day).is_none(), "{b}");
            assert!(b.refuses_ban_of(u64::MAX).is_some(), "{b}");
        }
        // Until removed: no timeout at all.
        assert!(Backend::Iptables.refuses_ban_of(0).is_none());
    }

    #[test]
    fn networks_are_canonical_and_written_as_people_do() {
        let n = |s: &str| parse_net(s).unwrap();
        assert_eq!(net_text(n("192.0.2.7")), "192.0.2.7");
        assert_eq!(net_text(n("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(net_text(n("::ffff:198.51.100.0/120")), "198.51.100.0/24");
        assert_eq!(net_text(n("198.51.100.9/24")), "198.51.100.0/24");
        assert_eq!(net_text(n("2001:db8:1:2::5/48")), "2001:db8:1::/48");
        assert_eq!(net_text(n("2001:db8::7/128")), "2001:db8::7");
        assert_eq!(parse_net("nonsense"), None);
        assert_eq!(parse_net("10.0.0.0/33"), None);
    }
}
