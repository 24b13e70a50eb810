//! This host's interfaces and addresses, read with getifaddrs(3), and the infrastructure
//! it depends on (gateways, IPv6 routers, resolvers), read from /proc and resolv.conf
//! (plain file reads, cheap enough to repeat every second) and from `ip -j` (the default
//! routes of every table with all their next hops, and nexthop objects, which /proc does
//! not show), run again only when /proc's routes change or every [`ROUTES_EVERY`]; no
//! privilege is needed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::IpNet;
use nix::net::if_::InterfaceFlags;
use synwatch_capture::sockets::{SocketTable, TcpSocket, TcpState};
use synwatch_detect::AddrSet;

/// One read of the host's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Every address of every interface (loopback included: traffic to 127.0.0.1 is
    /// local too).
    pub addresses: BTreeSet<IpAddr>,
    /// Interfaces that are up, loopback excepted: the default capture set.
    pub up: BTreeSet<String>,
    /// Every interface name.
    pub all: BTreeSet<String>,
    /// Loopback interfaces (whose packets all come in from this host's own addresses).
    pub loopback: BTreeSet<String>,
    /// The link-local IPv6 addresses of each interface: the host's on that link only.
    pub link_local: std::collections::BTreeMap<String, BTreeSet<std::net::Ipv6Addr>>,
    /// The hardware address of each interface that has one.
    pub mac: std::collections::BTreeMap<String, [u8; 6]>,
}

/// The addresses of `/proc/net/if_inet6` lines ("address ifindex prefix scope flags
/// name", hexadecimal) whose flags hold `IFA_F_PERMANENT`.
fn permanent_in_if_inet6(text: &str) -> BTreeSet<std::net::Ipv6Addr> {
    const PERMANENT: u32 = 0x80;
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (fields.first()?, fields.get(4)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let addr = u128::from_str_radix(addr, 16).ok()?;
            (addr != 0 && flags & PERMANENT != 0).then(|| std::net::Ipv6Addr::from(addr))
        })
        .collect()
}

impl Host {
    /// Interfaces are named by getifaddrs(3)'s link-level entries alone: every entry
    /// that is not an IPv4 or IPv6 address, one an interface, under its name. An IPv4
    /// address with a label (`ip addr add ... label eth0:1` or `label foo`, or one the
    /// kernel made, cut to fit, when renaming an interface with several addresses)
    /// comes under the label, which is no interface.
    pub fn read() -> Result<Self> {
        let mut host = Host::default();
        for ifa in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
            let addr = ifa.address;
            if let Some(v4) = addr.as_ref().and_then(|a| a.as_sockaddr_in()) {
                host.addresses.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_ref().and_then(|a| a.as_sockaddr_in6()) {
                host.addresses.insert(IpAddr::V6(v6.ip()));
                // IPv6 addresses carry no label: the name is the interface's.
                if v6.ip().is_unicast_link_local() {
                    host.link_local
                        .entry(ifa.interface_name.clone())
                        .or_default()
                        .insert(v6.ip());
                }
            } else {
                // The link-level entry (a tun's may carry no address at all).
                let mac = addr.as_ref().and_then(|a| a.as_link_addr()?.addr());
                host.interface(&ifa.interface_name, ifa.flags, mac);
            }
        }
        Ok(host)
    }

    /// An interface, from its link-level entry: its flags and hardware address.
    fn interface(&mut self, name: &str, flags: InterfaceFlags, mac: Option<[u8; 6]>) {
        self.all.insert(name.to_owned());
        if flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            self.loopback.insert(name.to_owned());
        } else if flags.contains(InterfaceFlags::IFF_UP) {
            self.up.insert(name.to_owned());
        }
        if let Some(mac) = mac {
            self.mac.insert(name.to_owned(), mac);
        }
    }

    /// The IPv6 addresses the kernel holds as permanent (`IFA_F_PERMANENT` in
    /// `/proc/net/if_inet6`: configured, not learnt from a router advertisement), if the
    /// file can be read.
    pub fn permanent_v6() -> Option<BTreeSet<std::net::Ipv6Addr>> {
        std::fs::read_to_string("/proc/net/if_inet6")
            .ok()
            .map(|text| permanent_in_if_inet6(&text))
    }

    /// The local address set: these addresses plus the configured ones.
    pub fn locals(&self, configured: &AddrSet) -> AddrSet {
        let mut set = configured.clone();
        for addr in &self.addresses {
            set.insert(IpNet::from(*addr));
        }
        set
    }
}

/// What a piece of infrastructure is to this host: why it must never be banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The next hop of an IPv4 route (the default gateway, or the gateway of any other
    /// route).
    Gateway,
    /// The next hop of an IPv6 route (a router, often link-local).
    Router,
    /// A DNS resolver of resolv.conf.
    Resolver,
    /// The CrowdSec Local API server the agent talks to (`--crowdsec-url`, or the url
    /// of `--crowdsec-credentials`): banning it would cut the agent off its fleet.
    Lapi,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Router => "router",
            Role::Resolver => "resolver",
            Role::Lapi => "lapi",
        }
    }
}

/// Where one piece of infrastructure is: its role and, for a next hop, the interface
/// (a link-local next hop means nothing without it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Infra {
    pub role: Role,
    pub iface: Option<String>,
}

/// The gateways, routers and resolvers this host depends on, by address. A blind
/// spoofer can make any of them look like a scanner; banning one would cut the host
/// off (SPEC §2, "Never cut the host off").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Infrastructure {
    pub by_addr: BTreeMap<IpAddr, Infra>,
}

/// Where [`Infrastructure::read`] looks.
pub const ROUTES4: &str = "/proc/net/route";
pub const ROUTES6: &str = "/proc/net/ipv6_route";
/// resolv.conf, and systemd-resolved's list of its upstream servers (where it runs, the
/// first names only its local stub, 127.0.0.53).
pub const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

impl Infrastructure {
    /// Reads this network namespace's routes and the resolvers, once (see [`Routes`],
    /// which the running agent keeps). A file that is missing or unreadable contributes
    /// nothing (no IPv6, no resolv.conf).
    pub fn read() -> Self {
        Routes::default().read()
    }

    /// The same from /proc's routes and the resolv.confs' contents.
    pub fn parse<'a>(
        routes4: &str,
        routes6: &str,
        resolv_confs: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut infra = Self::default();
        for (addr, iface) in gateways4(routes4) {
            infra.add(addr, Role::Gateway, Some(iface));
        }
        for (addr, iface) in routers6(routes6) {
            infra.add(addr, Role::Router, Some(iface));
        }
        for conf in resolv_confs {
            for addr in nameservers(conf) {
                infra.add(addr, Role::Resolver, None);
            }
        }
        infra
    }

    /// Adds the addresses of the CrowdSec Local API server (where not already known in
    /// another role).
    pub fn add_lapi(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        for addr in addrs {
            self.add(addr.to_canonical(), Role::Lapi, None);
        }
    }

    /// Adds a next hop: a gateway (IPv4) or a router (IPv6).
    fn add_hop(&mut self, addr: IpAddr, iface: Option<String>) {
        let role = if addr.is_ipv4() {
            Role::Gateway
        } else {
            Role::Router
        };
        self.add(addr, role, iface);
    }

    fn add(&mut self, addr: IpAddr, role: Role, iface: Option<String>) {
        // A gateway that is also the resolver (a home router) is kept as the gateway.
        // An IPv4-mapped form (`nameserver ::ffff:192.0.2.53`: glibc then asks over
        // IPv4) is kept as the IPv4 address, which is what its packets come from.
        self.by_addr
            .entry(addr.to_canonical())
            .or_insert(Infra { role, iface });
    }

    pub fn get(&self, addr: IpAddr) -> Option<&Infra> {
        self.by_addr.get(&addr.to_canonical())
    }

    /// For the banner and logs: "10.0.0.1 (gateway, eth0), fe80::1 (router, eth0)".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .by_addr
            .iter()
            .map(|(addr, i)| match &i.iface {
                Some(iface) => format!("{addr} ({}, {iface})", i.role.as_str()),
                None => format!("{addr} ({})", i.role.as_str()),
            })
            .collect();
        if parts.is_empty() {
            "none found".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// How long the next hops read through `ip` serve before `ip` runs again, when
/// /proc's routes have not changed meanwhile (the host view's own pace).
pub const ROUTES_EVERY: Duration = Duration::from_secs(10);

/// The `ip` commands that list what /proc does not show: default routes of every
/// table (policy routing) with every next hop (ECMP, nexthop groups), both families,
/// and the nexthop objects.
const IP_LISTINGS: [(&[&str], &str); 3] = [
    (
        &["-j", "-4", "route", "show", "table", "all", "default"],
        "list the IPv4 default routes",
    ),
    (
        &["-j", "-6", "route", "show", "table", "all", "default"],
        "list the IPv6 default routes",
    ),
    (&["-j", "nexthop", "show"], "list the nexthop objects"),
];

/// The infrastructure, read live: /proc's routes and resolv.conf at every read (plain
/// file reads), and the next hops only `ip` shows (every default route of every table,
/// every next hop of a multipath route or nexthop group). `ip` runs at the first read,
/// again at once when /proc's routes changed or the kernel told of a route change (so
/// that a forged scan right after a route change cannot ban the new hop), and every
/// [`ROUTES_EVERY`] on a thread of its own (so that a change counts within that time
/// where the kernel's word cannot be had, without the pipeline waiting on `ip`). `ip`
/// runs from its fixed system path with a clean environment; where it cannot run,
/// /proc's routes alone count (said once). Clones share what was listed; the thread
/// ends once no clone is left.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    listed: Arc<Mutex<Listed>>,
    /// Told of every route change by the kernel (see [`Routes::changed`]).
    watch: Arc<std::sync::OnceLock<Option<std::os::fd::OwnedFd>>>,
    /// What the resolver files looked like when [`Routes::changed`] last asked.
    resolv_seen: Arc<Mutex<Option<u64>>>,
}

/// A digest of what the resolver files are (device, inode, size, modification time,
/// following symbolic links): a file written again or swapped for another shows, at the
/// cost of a `stat` each.
fn resolv_signature() -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in RESOLV_CONFS {
        match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

/// What `ip` listed, shared by the clones of a [`Routes`] and its refreshing thread.
#[derive(Debug, Default)]
struct Listed {
    /// A digest of /proc's routes when `ip` last ran for a read.
    digest: Option<u64>,
    /// The kernel told of a route change since `ip` last ran for a read. /proc's
    /// routes do not show every change: a hop added to a multipath route leaves its
    /// line as it was (it names the first hop alone), as does any change in a policy
    /// table.
    told: bool,
    /// When `ip` last ran for a read.
    listed_at: Option<Instant>,
    /// The next hops it found.
    hops: Vec<(IpAddr, Option<String>)>,
    /// Bumped by every listing, so that the thread's (which runs without the lock) never
    /// replaces a newer one.
    generation: u64,
    said: bool,
    /// The refreshing thread runs ([`Routes::keep_listing`]).
    refreshing: bool,
}

impl Listed {
    /// Whether `ip` may run for a read at `now` (see [`LIST_AT_MOST_EVERY`]).
    fn may_list(&self, now: Instant) -> bool {
        self.listed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LIST_AT_MOST_EVERY)
    }
}

impl Routes {
    /// The infrastructure now.
    pub fn read(&mut self) -> Infrastructure {
        let text = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let (routes4, routes6) = (text(ROUTES4), text(ROUTES6));
        let digest = routes_digest(&routes4, &routes6);
        let hops = {
            let mut l = lock(&self.listed);
            let now = crate::clock::monotonic();
            // At most every LIST_AT_MOST_EVERY: route changes come as fast as a flood of
            // router advertisements can make them, and each would otherwise start `ip`
            // while the pipeline waits. /proc's routes, read every time, cover the main
            // table's next hops meanwhile.
            if (l.digest != Some(digest) || l.told) && l.may_list(now) {
                l.hops = listed_hops(&mut l.said);
                l.digest = Some(digest);
                l.told = false;
                l.listed_at = Some(now);
                l.generation += 1;
            }
            l.hops.clone()
        };
        let resolvers: Vec<String> = RESOLV_CONFS.iter().map(|p| text(p)).collect();
        let mut infra =
            Infrastructure::parse(&routes4, &routes6, resolvers.iter().map(String::as_str));
        for (addr, iface) in hops {
            infra.add_hop(addr, iface);
        }
        infra
    }
}

/// The least time between two listings by `ip` for reads (see [`Routes::read`]).
const LIST_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// A digest of /proc's routes as routes: without the columns that count their use
/// (`RefCnt` and `Use`; `refcnt` and `use` in IPv6's), which change with traffic and
/// would make every read look like a route change.
fn routes_digest(routes4: &str, routes6: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (text, skip) in [(routes4, [4, 5]), (routes6, [6, 7])] {
        for line in text.lines() {
            for (i, field) in line.split_whitespace().enumerate() {
                if !skip.contains(&i) {
                    field.hash(&mut h);
                }
            }
            0xffu8.hash(&mut h);
        }
        0xfeu8.hash(&mut h);
    }
    h.finish()
}

/// The rtnetlink groups of IPv4 and IPv6 route changes (`RTMGRP_IPV4_ROUTE`,
/// `RTMGRP_IPV6_ROUTE`).
const ROUTE_GROUPS: u32 = 0x40 | 0x400;

/// The rtnetlink groups of link changes (`RTMGRP_LINK`: a hardware address set anew,
/// an interface added) and of IPv4 and IPv6 address changes (`RTMGRP_IPV4_IFADDR`,
/// `RTMGRP_IPV6_IFADDR`).
const ADDRESS_AND_LINK_GROUPS: u32 = 0x1 | 0x10 | 0x100;

/// A netlink socket told of every route change in this network namespace, read without
/// waiting; `None` where it cannot be opened.
fn route_socket() -> Option<std::os::fd::OwnedFd> {
    change_socket(ROUTE_GROUPS)
}

/// A netlink socket told of every change of the rtnetlink `groups` in this network
/// namespace, read without waiting; `None` where it cannot be opened.
fn change_socket(groups: u32) -> Option<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .ok()?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, groups),
    )
    .ok()?;
    Some(fd)
}

impl Routes {
    /// Subscribes to the kernel's route changes (at once, so that [`Routes::changed`]
    /// misses none from here on); clones share the subscription.
    pub fn watch(&self) {
        self.watch.get_or_init(route_socket);
        let mut seen = lock(&self.resolv_seen);
        seen.get_or_insert_with(resolv_signature);
    }

    /// Whether the infrastructure may have changed since the last call: a route added,
    /// changed or removed (a gateway replaced, a router gone), or a resolver file
    /// written or replaced (a resolver changed by hand or by DHCP). The kernel tells of
    /// route changes on a netlink socket as they are made, so asking costs a system call
    /// whatever the size of the routing table, where reading /proc's routes grows with
    /// it; the resolver files cost a `stat` each. Without the socket (it could not be
    /// opened) route changes are seen by the periodic reads alone.
    pub fn changed(&self) -> bool {
        let resolv = resolv_signature();
        let resolv_changed = {
            let mut seen = lock(&self.resolv_seen);
            let changed = seen.is_some_and(|s| s != resolv);
            *seen = Some(resolv);
            changed
        };
        if self.routes_changed() {
            lock(&self.listed).told = true;
            return true;
        }
        // A change told while `ip` could not run again yet: the read that lists it is
        // asked for once it may.
        resolv_changed || self.listing_due()
    }

    /// Whether a change the kernel told of waits for `ip` and `ip` may run again.
    fn listing_due(&self) -> bool {
        let l = lock(&self.listed);
        l.told && l.may_list(crate::clock::monotonic())
    }

    /// The route part of [`Routes::changed`].
    fn routes_changed(&self) -> bool {
        match self.watch.get() {
            Some(Some(fd)) => told(fd),
            _ => false,
        }
    }
}

/// Whether the change socket `fd` told of anything since it was last asked (its
/// messages read and dropped).
fn told(fd: &std::os::fd::OwnedFd) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
    let mut buf = [0u8; 8192];
    let mut changed = false;
    loop {
        match nix::sys::socket::recv(fd, &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return changed,
            Ok(_) => changed = true,
            // Messages were lost: something changed.
            Err(nix::errno::Errno::ENOBUFS) => changed = true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return changed,
        }
    }
}

/// The kernel's word of the host's addresses changing (an address added or removed,
/// IPv4 or IPv6, or an interface's hardware address), asked without waiting; where the
/// subscription cannot be made, never any (the periodic reads see changes alone).
#[derive(Debug)]
pub struct AddressChanges(Option<std::os::fd::OwnedFd>);

impl AddressChanges {
    pub fn watch() -> Self {
        Self(change_socket(ADDRESS_AND_LINK_GROUPS))
    }

    /// Whether an address changed since the last call.
    pub fn changed(&self) -> bool {
        self.0.as_ref().is_some_and(told)
    }
}

impl Routes {
    /// Starts the thread that lists the routes every [`ROUTES_EVERY`] (once), and in
    /// between calls `wake` as soon as the kernel tells of a route change (where
    /// [`Routes::watch`] subscribed), so that the pipeline, which reads the change,
    /// does so at once rather than at its next turn: the XDP program's allowlist gets a
    /// new gateway within milliseconds, before a forged scan "from" it can be banned in
    /// the kernel. Call it after the agent dropped its privileges: a thread keeps the
    /// capabilities it was started with.
    pub fn keep_listing(&self, wake: Box<dyn Fn() + Send>) {
        let mut l = lock(&self.listed);
        if l.refreshing {
            return;
        }
        l.refreshing = true;
        let weak = Arc::downgrade(&self.listed);
        let watch = Arc::clone(&self.watch);
        let spawned = std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || refresh(&weak, &watch, &*wake));
        if let Err(e) = spawned {
            tracing::warn!(
                "warning: cannot start the thread that lists the routes again: {e}; they are listed when /proc's routes change"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists the routes again every [`ROUTES_EVERY`] while a clone of the [`Routes`] lives,
/// calling `wake` in between whenever the kernel tells of a route change on `watch`.
fn refresh(
    listed: &Weak<Mutex<Listed>>,
    watch: &std::sync::OnceLock<Option<std::os::fd::OwnedFd>>,
    wake: &dyn Fn(),
) {
    loop {
        let deadline = crate::clock::monotonic() + ROUTES_EVERY;
        wait_telling(watch.get().and_then(Option::as_ref), deadline, wake);
        let Some(shared) = listed.upgrade() else {
            return;
        };
        let (generation, mut said) = {
            let l = lock(&shared);
            (l.generation, l.said)
        };
        let hops = listed_hops(&mut said);
        let mut l = lock(&shared);
        l.said = said;
        if l.generation == generation {
            l.hops = hops;
            l.generation += 1;
        }
    }
}

/// The least time between two calls of [`refresh`]'s `wake`: a flood of route changes
/// (router advertisements) wakes the pipeline this often at most.
const WAKE_AT_MOST_EVERY: Duration = Duration::from_millis(5);

/// Waits until `deadline`, calling `wake` whenever `watch` (the route-change socket) has
/// news. It only polls: the pipeline reads the news ([`Routes::changed`]).
fn wait_telling(watch: Option<&std::os::fd::OwnedFd>, deadline: Instant, wake: &dyn Fn()) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let left = deadline.saturating_duration_since(crate::clock::monotonic());
        if left.is_zero() {
            return;
        }
        let Some(fd) = watch else {
            std::thread::sleep(left);
            return;
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::from(u16::try_from(left.as_millis()).unwrap_or(u16::MAX));
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => {
                wake();
                std::thread::sleep(WAKE_AT_MOST_EVERY);
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(left.min(Duration::from_secs(1))),
        }
    }
}

/// The next hops `ip` lists (`said`: whether its failure was said already).
/// What `ip ARGS` prints, run from its fixed system path with a clean environment and
/// given 2 s; `what` names the job in an error.
pub fn ip_output(args: &[&str], what: &str) -> Result<String, synwatch_enforce::EnforceError> {
    let mut runner = synwatch_enforce::SystemRunner {
        timeout: Duration::from_secs(2),
    };
    synwatch_enforce::Runner::run(
        &mut runner,
        &synwatch_enforce::Command::new("ip", args, what),
    )
}

fn listed_hops(said: &mut bool) -> Vec<(IpAddr, Option<String>)> {
    let mut listings = Vec::new();
    for (args, what) in IP_LISTINGS {
        match ip_output(args, what) {
            Ok(out) => listings.push(out),
            Err(e) => {
                if !*said {
                    tracing::warn!(
                        "warning: cannot {what} with ip ({e}): only the next hops of /proc/net/route and /proc/net/ipv6_route are protected"
                    );
                    *said = true;
                }
                listings.push(String::new());
            }
        }
    }
    listings.iter().flat_map(|l| next_hops_json(l)).collect()
}

/// The next hops of `ip -j route` (every route given: the gateway, an IPv4 route's
/// IPv6 `via`, each of `nexthops`) or `ip -j nexthop` (every nexthop object with a
/// gateway), with their interfaces. Anything else (bad JSON, an empty listing) gives
/// nothing.
pub fn next_hops_json(text: &str) -> Vec<(IpAddr, Option<String>)> {
    use serde_json::Value;
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let hop = |v: &Value, dev: Option<&str>| -> Option<(IpAddr, Option<String>)> {
        let addr = v
            .get("gateway")
            .and_then(Value::as_str)
            .or_else(|| v.get("via")?.get("host")?.as_str())?;
        let addr: IpAddr = addr.split('%').next()?.parse().ok()?;
        let dev = v.get("dev").and_then(Value::as_str).or(dev);
        (!addr.is_unspecified()).then(|| (addr.to_canonical(), dev.map(str::to_owned)))
    };
    let mut hops = Vec::new();
    for item in &items {
        let dev = item.get("dev").and_then(Value::as_str);
        hops.extend(hop(item, None));
        if let Some(Value::Array(nexthops)) = item.get("nexthops") {
            hops.extend(nexthops.iter().filter_map(|n| hop(n, dev)));
        }
    }
    hops
}

/// The remote addresses of this host's established TCP connections, whichever side opened
/// them (IPv4-mapped addresses as IPv4).
pub fn established_peers(sockets: &[TcpSocket]) -> HashSet<IpAddr> {
    sockets
        .iter()
        .filter(|s| s.state == TcpState::Established)
        .map(|s| s.remote.ip().to_canonical())
        .collect()
}

/// Whether an address of `net` is among `peers`: for an address, a lookup; for a range
/// (an IPv6 scanner's /64), whether any peer lies inside it, so that banning the range
/// never cuts another address's session.
fn held_in(peers: &HashSet<IpAddr>, net: IpNet) -> bool {
    if net.prefix_len() == net.max_prefix_len() {
        return peers.contains(&net.addr().to_canonical());
    }
    peers.iter().any(|p| net.contains(p))
}

/// Who holds an established connection to this host, asked when a ban is decided (a
/// source with a session is banned for new connections only: SPEC §2). The socket table
/// (sock_diag, else /proc) is read at most once a second, and only when asked.
#[derive(Debug)]
pub struct Sessions {
    table: Option<SocketTable>,
    read: Option<(Instant, HashSet<IpAddr>)>,
}

impl Sessions {
    /// Opens the socket table; where it cannot be read, no source counts as holding a
    /// session (said once, here).
    pub fn open() -> Self {
        let table = match SocketTable::open() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "warning: cannot read the socket table ({e}): bans will drop established sessions too"
                );
                None
            }
        };
        Self { table, read: None }
    }

    /// Whether an address in `net` (an address, or a range about to be banned) held an
    /// established connection at most a second before `now`.
    pub fn holds(&mut self, net: IpNet, now: Instant) -> bool {
        let Some(table) = self.table.as_mut() else {
            return false;
        };
        let stale = self
            .read
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1));
        if stale {
            let peers = table
                .dump()
                .map(|s| established_peers(&s))
                .unwrap_or_default();
            self.read = Some((now, peers));
        }
        self.read
            .as_ref()
            .is_some_and(|(_, peers)| held_in(peers, net))
    }
}

/// RTF_GATEWAY in the routes' flags.
const RTF_GATEWAY: u32 = 0x0002;

/// The next hops of /proc/net/route: `Iface Destination Gateway Flags ...`, addresses
/// as the kernel's %08X of a network-order word.
fn gateways4(text: &str) -> Vec<(IpAddr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, gw, flags) = (f.first()?, f.get(2)?, f.get(3)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let gw = u32::from_str_radix(gw, 16).ok()?;
            (flags & RTF_GATEWAY != 0 && gw != 0).then(|| {
                (
                    IpAddr::V4(Ipv4Addr::from(gw.to_ne_bytes())),
                    (*iface).to_owned(),
                )
            })
        })
        .collect()
}

/// The next hops of /proc/net/ipv6_route: `dest plen src plen nexthop metric refcnt use
/// flags iface`, every routing table (routers learned from advertisements included).
fn routers6(text: &str) -> Vec<(IpAddr, String)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (hop, flags, iface) = (f.get(4)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let hop = Ipv6Addr::from(u128::from_str_radix(hop, 16).ok()?);
            (flags & RTF_GATEWAY != 0 && !hop.is_unspecified())
                .then(|| (IpAddr::V6(hop), (*iface).to_owned()))
        })
        .collect()
}

/// The `nameserver` lines of a resolv.conf (a zone index such as `%eth0` dropped), read
/// as glibc reads them: an IPv4 address in any form `inet_aton` takes (`10.77.2357`,
/// `0x0a.77.8.53`, `10.77.8.053`, which is 10.77.8.43), else an IPv6 address.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            if let Some(v4) = inet_aton(addr) {
                return Some(IpAddr::V4(v4));
            }
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// An IPv4 address in the forms C's `inet_aton` takes whole: one to four parts, each
/// decimal, octal (a leading 0) or hexadecimal (0x), the last filling the bytes left.
fn inet_aton(s: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) = match part.as_bytes() {
            [b'0', b'x' | b'X', ..] => (&part[2..], 16),
            [b'0', _, ..] => (&part[1..], 8),
            [] => return None,
            _ => (*part, 10),
        };
        let value = if digits.is_empty() {
            0
        } else if digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            u32::from_str_radix(digits, radix).ok()?
        } else {
            return None;
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 0xff) {
        return None;
    }
    let room = 8 * (4 - leading.len() as u32);
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &v)| acc | (v << (24 - 8 * i as u32)));
    Some(std::net::Ipv4Addr::from(high | last))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn a_route_digest_changes_with_the_routes_not_with_their_use_counters() {
        let v4 = |gateway: &str, refcnt: u32, used: u32| {
            format!(
                "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t{gateway}\t0003\t{refcnt}\t{used}\t0\t00000000\t0\t0\t0\n"
            )
        };
        let v6 = |hop: &str, refcnt: u32, used: u32| {
            format!(
                "00000000000000000000000000000000 00 00000000000000000000000000000000 00 {hop} \
                 00000400 {refcnt:08x} {used:08x} 00050003     eth0\n"
            )
        };
        let hop = "fe800000000000000000000000000001";
        let base = routes_digest(&v4("010200C0", 0, 0), &v6(hop, 1, 0));
        // Traffic moves the counters only: the same routes.
        assert_eq!(
            routes_digest(&v4("010200C0", 3, 9_999), &v6(hop, 7, 123_456)),
            base
        );
        // A new gateway, a new router: a change.
        assert_ne!(routes_digest(&v4("020200C0", 0, 0), &v6(hop, 1, 0)), base);
        let other = "fe800000000000000000000000000002";
        assert_ne!(routes_digest(&v4("010200C0", 0, 0), &v6(other, 1, 0)), base);
        // A route moved from one family's listing to the other's is not the same.
        assert_ne!(
            routes_digest("", &v4("010200C0", 0, 0)),
            routes_digest(&v4("010200C0", 0, 0), "")
        );
    }

    #[test]
    fn resolvers_are_read_in_every_form_glibc_takes() {
        // glibc reads IPv4 resolvers with inet_aton: a forged scan from 10.77.9.53 got
        // the resolver written `10.77.2357` banned.
        let conf = "nameserver 10.77.2357\nnameserver 0x0a.77.8.53\nnameserver 10.77.8.053\n\
                    nameserver 167772161\nnameserver 10.1\nnameserver 192.0.2.53\n\
                    nameserver 08.1.1.1\nnameserver 10.1.2.3.4\nnameserver 256.1.1.1\n\
                    nameserver 10.1.65536\nnameserver fe80::53%eth0\n";
        let want: Vec<IpAddr> = [
            "10.77.9.53",
            "10.77.8.53",
            "10.77.8.43",
            "10.0.0.1",
            "10.0.0.1",
            "192.0.2.53",
            "fe80::53",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(nameservers(conf), want);
    }

    #[test]
    fn gateways_routers_and_resolvers_are_read_from_proc_and_resolv_conf() {
        let routes4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wg0\t0000330A\t0200330A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes6 = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00050003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let resolv = "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::53%eth0\nnameserver 192.0.2.1\nnameserver ::ffff:198.51.100.53\n";
        let stub = "nameserver 127.0.0.53\noptions edns0\n";
        let infra = Infrastructure::parse(routes4, routes6, [resolv, stub]);
        let role = |a: &str| infra.get(a.parse().unwrap()).map(|i| i.role);
        assert_eq!(role("192.0.2.1"), Some(Role::Gateway), "{infra:?}");
        assert_eq!(role("10.51.0.2"), Some(Role::Gateway));
        assert_eq!(role("fe80::1"), Some(Role::Router));
        assert_eq!(
            infra
                .get("fe80::1".parse().unwrap())
                .unwrap()
                .iface
                .as_deref(),
            Some("eth0")
        );
        assert_eq!(role("192.0.2.53"), Some(Role::Resolver));
        assert_eq!(role("fe80::53"), Some(Role::Resolver));
        assert_eq!(role("127.0.0.53"), Some(Role::Resolver));
        // An IPv4-mapped resolver is its IPv4 address, whichever form is asked about.
        assert_eq!(role("198.51.100.53"), Some(Role::Resolver));
        assert_eq!(role("::ffff:198.51.100.53"), Some(Role::Resolver));
        assert!(
            infra
                .by_addr
                .contains_key(&"198.51.100.53".parse().unwrap())
        );
        assert_eq!(infra.by_addr.len(), 7, "{infra:?}");
        assert_eq!(role("192.0.2.0"), None);
        assert!(infra.describe().contains("192.0.2.1 (gateway, eth0)"));
        // Nothing readable: nothing found, no error.
        assert_eq!(Infrastructure::parse("", "", []), Infrastructure::default());
    }

    #[test]
    fn every_next_hop_of_the_default_routes_and_nexthop_objects_is_read_from_ip_json() {
        // `ip -j -4 route show table all default`: a policy table's route, an ECMP
        // route, a nexthop group's route; an IPv4 route through an IPv6 next hop.
        let routes4 = r#"[{"dst":"default","gateway":"10.71.0.252","dev":"d0","table":"100","flags":[]},
            {"dst":"default","nhid":10,"table":"200","flags":[],"nexthops":[{"gateway":"10.71.0.249","dev":"d0","weight":1,"flags":[]},{"gateway":"10.71.0.248","dev":"d0","weight":1,"flags":[]}]},
            {"dst":"default","dev":"d1","flags":[],"nexthops":[{"gateway":"10.71.0.254","weight":1,"flags":[]},{"gateway":"10.71.0.253","dev":"d0","weight":1,"flags":[]}]},
            {"dst":"default","via":{"family":"inet6","host":"fe80::290"},"dev":"d0","flags":[]},
            {"dst":"default","dev":"wg0","scope":"link","flags":[]}]"#;
        let routes6 = r#"[{"dst":"default","nhid":18,"metric":10,"flags":[],"pref":"medium","nexthops":[{"gateway":"fe80::260","dev":"d0","weight":1,"flags":[]},{"gateway":"fe80::261","dev":"d0","weight":1,"flags":[]}]}]"#;
        let nexthops = r#"[{"id":8,"gateway":"10.71.0.247","dev":"d0","scope":"link","flags":[]},{"id":10,"group":[{"id":8},{"id":9}],"flags":[]},{"id":17,"gateway":"fe80::262","dev":"d0","scope":"link","flags":[]},{"id":20,"dev":"d0","flags":[]}]"#;
        let mut infra = Infrastructure::default();
        for listing in [routes4, routes6, nexthops] {
            for (addr, iface) in next_hops_json(listing) {
                infra.add_hop(addr, iface);
            }
        }
        let found: Vec<String> = infra
            .by_addr
            .iter()
            .map(|(a, i)| {
                format!(
                    "{a} {} {}",
                    i.role.as_str(),
                    i.iface.as_deref().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                "10.71.0.247 gateway d0",
                "10.71.0.248 gateway d0",
                "10.71.0.249 gateway d0",
                "10.71.0.252 gateway d0",
                "10.71.0.253 gateway d0",
                "10.71.0.254 gateway d1",
                "fe80::260 router d0",
                "fe80::261 router d0",
                "fe80::262 router d0",
                "fe80::290 router d0",
            ]
        );
        // Not JSON, or no listing: nothing, no error.
        assert!(next_hops_json("Error: nexthop objects not supported").is_empty());
        assert!(next_hops_json("").is_empty());
        assert!(next_hops_json(r#"{"dst":"default","gateway":"10.0.0.1"}"#).is_empty());
    }

    #[test]
    fn established_peers_are_the_remote_ends_of_established_sockets_only() {
        let sock = |local: &str, remote: &str, state| TcpSocket {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
        };
        let peers = established_peers(&[
            sock("192.0.2.1:22", "198.51.100.7:50000", TcpState::Established),
            sock(
                "[::ffff:192.0.2.1]:22",
                "[::ffff:198.51.100.8]:1",
                TcpState::Established,
            ),
            sock("192.0.2.1:22", "203.0.113.9:1", TcpState::SynRecv),
            sock("0.0.0.0:22", "0.0.0.0:0", TcpState::Listen),
            sock(
                "[2001:db8::1]:443",
                "[2001:db8::9]:2",
                TcpState::Established,
            ),
        ]);
        let want: HashSet<IpAddr> = ["198.51.100.7", "198.51.100.8", "2001:db8::9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(peers, want);
        // A range holds a session when any peer lies inside it (red team F1: a /64
        // banned over another address's session).
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        assert!(held_in(&peers, net("2001:db8::/64")));
        assert!(held_in(&peers, net("2001:db8::9/128")));
        assert!(!held_in(&peers, net("2001:db8::99/128")));
        assert!(!held_in(&peers, net("2001:db8:0:1::/64")));
        assert!(held_in(&peers, net("198.51.100.0/24")));
        assert!(held_in(&peers, net("198.51.100.8/32")));
    }

    #[test]
    fn this_hosts_own_routes_read_without_error() {
        let _ = Infrastructure::read();
    }

    #[test]
    fn the_loopback_address_is_local_and_loopback_is_not_a_default_interface() {
        let host = Host::read().expect("getifaddrs");
        assert!(
            host.addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{host:?}"
        );
        assert!(host.all.contains("lo"));
        assert!(!host.up.contains("lo"));
        let locals = host.locals(&AddrSet::new());
        assert!(locals.contains(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn permanent_ipv6_addresses_are_read_from_if_inet6() {
        let text = "\
fd770001000000000000000000000001 02 40 00 80     eth0
20010db8000000000000000000000bad 02 40 00 00     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
garbage
";
        let got = permanent_in_if_inet6(text);
        let want: BTreeSet<std::net::Ipv6Addr> = ["fd77:1::1", "fe80::1", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
