//! Interfaces that come and go. A watched interface may be deleted and created again
//! under the same name (a VPN or container veth, a driver reload, a renamed NIC): the
//! capture handle or XDP attachment of the old one then sees nothing, forever. So each
//! capture thread checks every [`CHECK_EVERY`] that its name still leads to the ifindex
//! it opened, and when it does not (or a read fails) it closes the handle, says so, and
//! opens the interface again as soon as it is back; the pipeline does the same for the
//! XDP program's attachments ([`check_xdp`]). With the default every-interface watch,
//! interfaces that come up later are watched too ([`discover`]).
//!
//! Why a check by name rather than rtnetlink notifications: `if_nametoindex` is a socket
//! and one ioctl (12 µs a call measured here from Python, the interpreter included), so
//! one a second per interface costs nothing measurable (with discovery, one
//! getifaddrs(3) a second as well), needs
//! no netlink socket, parser or extra thread, and cannot miss an event the way a
//! notification socket can when its buffer overflows; a delete-and-create between two
//! checks still shows as a new ifindex. The price is up to a second before an interface
//! that returned is watched again.
//!
//! While a named interface is missing, or a capture cannot be opened or read, its slot
//! in the metrics carries a fault and `/healthz` answers 503 with it; the capture thread
//! itself never ends before the agent stops, so the agent never exits on its own. With
//! the every-interface watch, an interface that goes is let go instead: its thread ends
//! and its metrics slot is given back, and [`discover`] watches it afresh when it (or
//! any other) comes up, so that containers coming and going never use up the slots.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use synwatch_capture::live::{LiveCapture, LiveOptions};
use synwatch_decode::{Decoded, LinkType, Reassembler, ReassemblyLimits};
use synwatch_detect::Observation;

use crate::clock::{monotonic, wall_nanos};
use crate::host::Host;
use crate::metrics::{InterfaceMetrics, Metrics};

/// How often an interface's name is checked against the ifindex being watched, and a
/// missing one looked for.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Observations a capture thread collects before handing them over; a quiet interface
/// hands over what it has whenever a read times out.
const BATCH: usize = 1024;

/// Packets a second from which a capture thread that has read all the kernel handed up
/// pauses [`FLOOD_PAUSE`] before looking again (see [`Pace`]).
const FLOOD_RATE: u64 = 50_000;
/// How long a capture thread under a flood waits for packets to pile up: the most a
/// packet is delayed by it.
const FLOOD_PAUSE: Duration = Duration::from_millis(5);

/// Fewer wake-ups under a flood. libpcap's kernel ring hands up a block of packets every
/// millisecond (`LiveOptions::block_ms`, kept that short so that a probe on a quiet link
/// reaches the detector at once), so a capture thread that waits for each block wakes a
/// thousand times a second, and so does the pipeline it hands each block to: under a
/// flood that is most of the capture thread's CPU. When the packets read since the last
/// time the ring ran dry came at [`FLOOD_RATE`] or more, the thread pauses
/// [`FLOOD_PAUSE`] before looking again, and then finds several blocks waiting; below
/// that rate (a scan on a quiet link) it never pauses.
#[derive(Debug, Default)]
struct Pace {
    /// When the ring last ran dry.
    dry_at: Option<Instant>,
}

impl Pace {
    /// The ring ran dry at `now`, `packets` read since it last did: how long to pause.
    fn dry(&mut self, packets: u64, now: Instant) -> Option<Duration> {
        let since = now.saturating_duration_since(self.dry_at.replace(now)?);
        // At least a millisecond's worth at the flood rate, so that a few packets read
        // moments apart are not taken for a flood.
        let flood = packets >= FLOOD_RATE / 1000
            && u128::from(packets) * 1_000_000_000 >= u128::from(FLOOD_RATE) * since.as_nanos();
        flood.then_some(FLOOD_PAUSE)
    }
}

/// Spare metric slots for interfaces that appear while the agent runs.
pub const SPARE_SLOTS: usize = 32;

/// The ifindex `name` leads to now, if any.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Whether `name`'s frames start with an Ethernet header, which the XDP program reads:
/// Ethernet devices (and all that look like one: veth, bridges, bonds, VLANs, Wi-Fi,
/// gretap) and loopback; not tun devices, WireGuard, PPP or IP tunnels, whose frames start
/// at the IP header. An interface whose type cannot be read (it does not exist yet)
/// counts as Ethernet: it is asked again when it appears.
pub fn is_ethernet(name: &str) -> bool {
    if name.contains('/') {
        return false;
    }
    // ARPHRD_ETHER and ARPHRD_LOOPBACK (<linux/if_arp.h>).
    std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
        .map_or(true, |t| matches!(t.trim(), "1" | "772"))
}

/// Why a capture handle was given up.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The agent is stopping (or the pipeline is gone).
    Stopped,
    /// The name no longer leads to the interface the handle was opened on.
    Gone,
    /// Reading failed.
    Failed(String),
}

/// What a capture thread needs besides its interface.
pub struct Watch<F: Fn(Vec<Observation>) -> bool> {
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub options: LiveOptions,
    /// Named with --iface: while it is missing, `/healthz` fails.
    pub required: bool,
    /// [`discover`] runs: an interface that goes is let go (its thread ends, its slot is
    /// given back), to be watched afresh when it comes up again.
    pub rediscovered: bool,
    /// The interfaces with a capture thread now, by name (not the metrics slots, which
    /// the XDP side gives out by name too).
    pub watched: std::sync::Mutex<BTreeSet<String>>,
    pub send: F,
}

impl<F: Fn(Vec<Observation>) -> bool> Watch<F> {
    /// Puts `name` on the list of interfaces with a capture thread; false if it was.
    pub fn watch(&self, name: &str) -> bool {
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.insert(name.to_owned())
    }

    fn unwatch(&self, name: &str) {
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.remove(name);
    }

    fn watches(&self, name: &str) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }
}

impl<F: Fn(Vec<Observation>) -> bool> std::fmt::Debug for Watch<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// A capture thread: watches `name` through libpcap (starting with `first`, opened at
/// start, when given) until the agent stops, opening it again whenever it returns.
pub fn supervise<F: Fn(Vec<Observation>) -> bool>(
    name: &str,
    slot: usize,
    mut first: Option<LiveCapture>,
    watch: &Watch<F>,
) {
    let counters = &watch.metrics.interfaces[slot];
    // The trouble last said on stderr, so that each is said once.
    let mut trouble: Option<String> = None;
    let report = |trouble: &mut Option<String>, why: String, fault: bool| {
        if trouble.as_deref() != Some(why.as_str()) {
            tracing::warn!("{why}");
        }
        counters.set_state(false, fault.then(|| why.clone()));
        *trouble = Some(why);
    };
    let let_go = |why: &str| {
        tracing::info!("interface {name} {why}: no longer watched (watched again if it comes up)");
        // The slot first: a thread started for the name once it is off the list must
        // not be given this slot as still the name's.
        watch.metrics.release_interface(slot);
        watch.unwatch(name);
    };
    while !watch.stop.load(Ordering::Relaxed) {
        let cap = match first.take() {
            Some(cap) => Some(cap),
            None if ifindex(name).is_none() && watch.rediscovered => {
                return let_go("is missing (deleted or renamed)");
            }
            None if ifindex(name).is_none() => {
                let why = format!(
                    "interface {name} is missing (deleted or renamed): waiting for it to return"
                );
                report(&mut trouble, why, watch.required);
                None
            }
            None => match LiveCapture::open(name, &watch.options) {
                Ok(cap) => Some(cap),
                Err(e) => {
                    report(
                        &mut trouble,
                        format!("cannot watch {name}: {e}; trying again"),
                        true,
                    );
                    None
                }
            },
        };
        let (Some(cap), Some(index)) = (cap, ifindex(name)) else {
            sleep_unless_stopped(&watch.stop, CHECK_EVERY);
            continue;
        };
        if trouble.take().is_some() {
            tracing::info!("interface {name} is back (ifindex {index}): watching it again");
        }
        counters.set_state(true, None);
        match capture(cap, index, name, slot, watch) {
            End::Stopped => break,
            End::Gone if watch.rediscovered => return let_go("went (deleted or renamed)"),
            End::Gone => {
                let why = format!(
                    "interface {name} is missing (deleted or renamed): waiting for it to return"
                );
                report(&mut trouble, why, watch.required);
            }
            End::Failed(why) => {
                report(&mut trouble, format!("{why}; opening it again"), true);
                sleep_unless_stopped(&watch.stop, CHECK_EVERY);
            }
        }
    }
    counters.up.store(false, Ordering::Relaxed);
}

/// Sleeps `total`, in steps of 100 ms, ending early once `stop` is set.
pub(crate) fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        thread::sleep(step);
        slept += step;
    }
}

/// This host's addresses as the capture filter last named them
/// ([`synwatch_capture::live::Filter::text_for`]: packets coming in from one are
/// martians, neither attempts nor answers), read again as soon as the kernel tells of a
/// change and every [`CHECK_EVERY`].
struct OwnAddresses {
    /// The kernel's word of address changes, subscribed to before the first read.
    changes: crate::host::AddressChanges,
    named: Vec<IpNet>,
    /// The host's link-local addresses on other links only, each with the hardware
    /// addresses of the interfaces holding it ([`foreign_link_locals`]).
    foreign: ForeignLinkLocals,
    /// The failures to set the filter, or too many addresses to name them all, said.
    said: Vec<String>,
}

impl OwnAddresses {
    /// Subscribed to address changes, and the filter set for the addresses now.
    fn watch(cap: &mut LiveCapture) -> Self {
        let mut own = Self {
            changes: crate::host::AddressChanges::watch(),
            named: Vec::new(),
            foreign: ForeignLinkLocals::new(),
            said: Vec::new(),
        };
        own.refresh(cap);
        own
    }

    /// Waits for packets, then follows the changes the kernel told of before they came
    /// (an address added, a hardware address set anew) before they are read: an
    /// address added is named within a read of its coming, not a second later (a sweep
    /// of new addresses with forged answers right away is seen too).
    fn before_read(&mut self, cap: &mut LiveCapture) {
        if matches!(cap.wait(), Ok(true)) && self.changes.changed() {
            self.refresh(cap);
        }
    }

    fn refresh(&mut self, cap: &mut LiveCapture) {
        let Ok(host) = Host::read() else {
            return;
        };
        // On loopback every packet comes in from one of them.
        let iface = cap.iface();
        let (now, left) = if host.loopback.contains(iface) {
            self.foreign = ForeignLinkLocals::new();
            (Vec::new(), 0)
        } else {
            self.foreign = foreign_link_locals(&host, iface);
            // A link-local address is the host's on its own link only.
            let mine: BTreeSet<IpAddr> = host
                .addresses
                .iter()
                .filter(|a| !matches!(a, IpAddr::V6(v6) if self.foreign.contains_key(v6)))
                .copied()
                .collect();
            named_blocks(&mine, Host::permanent_v6().as_ref())
        };
        if now == self.named {
            return;
        }
        let set = cap.set_own(&now);
        let done = set.is_ok();
        let why = match set {
            Err(e) => Some(e.to_string()),
            Ok(()) if left > 0 => Some(format!(
                "more than the {} address blocks the filter names (IPv4 first, then the \
                 permanent IPv6 ones)",
                synwatch_capture::live::MAX_OWN_IN_FILTER
            )),
            Ok(()) => None,
        };
        // Each reason once (a host whose addresses come and go around the limit would
        // otherwise say it at every crossing), and a bounded number of them.
        if let Some(why) = why
            && !self.said.contains(&why)
            && self.said.len() < 8
        {
            tracing::warn!(
                "cannot name all of this host's addresses in the filter on {}: {why} (forged answers from the others can hide a sweep)",
                cap.iface()
            );
            self.said.push(why);
        }
        // Tried again at the next look where the filter could not be set.
        if done {
            self.named = now;
        }
    }
}

/// The host's link-local addresses held on other links than this one, each with the
/// hardware addresses of the interfaces holding it.
type ForeignLinkLocals = std::collections::BTreeMap<std::net::Ipv6Addr, Vec<[u8; 6]>>;

/// [`ForeignLinkLocals`] of the capture on `iface`: the link-local addresses of the
/// other interfaces that `iface` does not hold too.
fn foreign_link_locals(host: &Host, iface: &str) -> ForeignLinkLocals {
    let here = host.link_local.get(iface);
    let mut foreign = ForeignLinkLocals::new();
    for (name, addrs) in host.link_local.iter().filter(|(n, _)| n.as_str() != iface) {
        for a in addrs.iter().filter(|a| here.is_none_or(|h| !h.contains(a))) {
            let macs = foreign.entry(*a).or_default();
            macs.extend(host.mac.get(name));
        }
    }
    foreign
}

/// What a captured frame says of who sent it.
#[derive(Debug, Clone, Copy)]
enum Sender<'a> {
    /// An Ethernet frame: its source hardware address.
    Ethernet(&'a [u8]),
    /// A cooked capture's packet type: whether the host sent it (`PACKET_OUTGOING`).
    Cooked { outgoing: bool },
    /// A link of IP packets alone (tun, WireGuard): the host sends from its own link's
    /// addresses only, so a link-local address of another link is another host's.
    Raw,
}

impl<'a> Sender<'a> {
    fn of(link: LinkType, data: &'a [u8]) -> Option<Self> {
        match link {
            LinkType::Ethernet => data.get(6..12).map(Sender::Ethernet),
            LinkType::LinuxSll | LinkType::LinuxSll2 => {
                synwatch_decode::cooked_outgoing(link, data)
                    .map(|outgoing| Sender::Cooked { outgoing })
            }
            LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => Some(Sender::Raw),
            _ => None,
        }
    }
}

/// Whether an observation from `src` in a frame from `sender` came from another host
/// ([`Observation::foreign`]): `src` is one of this host's link-local addresses of
/// another link, and the frame is not the host's own. The host's own leaves through
/// this interface with the hardware address of the interface holding `src` (a bridge's
/// packets through its port, a macvlan's or VLAN's through its lower device), or
/// marked outgoing by a cooked capture; on a link of IP packets alone it cannot be
/// sent from another link's address. Where the frame says nothing: not foreign. What
/// the frame says is read (`sender`) only for such a source, not for every attempt.
fn is_foreign<'a>(
    src: IpAddr,
    sender: impl FnOnce() -> Option<Sender<'a>>,
    foreign: &ForeignLinkLocals,
) -> bool {
    let IpAddr::V6(a) = src else {
        return false;
    };
    if !a.is_unicast_link_local() {
        return false;
    }
    let Some(holders) = foreign.get(&a) else {
        return false;
    };
    match sender() {
        Some(Sender::Ethernet(mac)) => !holders.iter().any(|h| h[..] == *mac),
        Some(Sender::Cooked { outgoing }) => !outgoing,
        Some(Sender::Raw) => true,
        None => false,
    }
}

/// The blocks of `addresses` the filter names, the first
/// [`synwatch_capture::live::MAX_OWN_IN_FILTER`] of: IPv4 first, then the IPv6 addresses
/// in `permanent` (configured, not learnt from a router advertisement, which anyone on
/// the link can send to add addresses until the filter is full), then the other IPv6
/// ones; and how many blocks were left out.
fn named_blocks(
    addresses: &BTreeSet<IpAddr>,
    permanent: Option<&BTreeSet<std::net::Ipv6Addr>>,
) -> (Vec<IpNet>, usize) {
    let rank = |a: &IpAddr| match a {
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if permanent.is_none_or(|p| p.contains(v6)) => 1,
        IpAddr::V6(_) => 2,
    };
    let mut blocks = Vec::new();
    for group in 0..3 {
        let members: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| rank(a) == group)
            .collect();
        blocks.extend(synwatch_capture::live::own_blocks(&members));
    }
    let left = blocks
        .len()
        .saturating_sub(synwatch_capture::live::MAX_OWN_IN_FILTER);
    blocks.truncate(synwatch_capture::live::MAX_OWN_IN_FILTER);
    (blocks, left)
}

/// One captured packet through reassembly: its segments' observations (any further one
/// its datagram's copies gave too, [`Reassembler::take_extra`]) into `batch`, a
/// malformed one counted by kind.
fn take_packet(
    (defrag, foreign): (&mut Reassembler, &ForeignLinkLocals),
    link: LinkType,
    packet: &synwatch_capture::Packet<'_>,
    batch: &mut Vec<Observation>,
    metrics: &Metrics,
) {
    let at = u64::try_from(packet.ts_nanos).unwrap_or(0);
    match defrag.decode_framed(link, packet.data, packet.orig_len as usize, at) {
        Ok(Decoded::Segment(seg)) => {
            for seg in defrag.with_extra(seg) {
                if let Some(mut obs) = Observation::of_segment(packet.ts_nanos, &seg) {
                    obs.foreign = is_foreign(obs.src, || Sender::of(link, packet.data), foreign);
                    batch.push(obs);
                }
            }
        }
        Ok(Decoded::Skipped(_)) => {}
        Err(kind) => {
            metrics.decode_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads one capture handle until the agent stops, the interface goes, or reading fails.
fn capture<F: Fn(Vec<Observation>) -> bool>(
    mut cap: LiveCapture,
    index: u32,
    name: &str,
    slot: usize,
    watch: &Watch<F>,
) -> End {
    let metrics = &watch.metrics;
    let counters: &InterfaceMetrics = &metrics.interfaces[slot];
    let link = LinkType::from_linktype(cap.linktype());
    let mut defrag = Reassembler::new(ReassemblyLimits::default());
    let mut batch = Vec::with_capacity(BATCH);
    let mut packets = 0u64;
    let mut pace = Pace::default();
    // Packets read since the ring last ran dry.
    let mut burst = 0u64;
    let mut next_check = monotonic() + CHECK_EVERY;
    let mut own = OwnAddresses::watch(&mut cap);
    // The kernel's counters restart with each handle: they add to what earlier handles
    // on this interface counted.
    let (drops_before, if_drops_before) = (
        counters.drops.load(Ordering::Relaxed),
        counters.if_drops.load(Ordering::Relaxed),
    );
    let record_stats = |cap: &mut LiveCapture| {
        if let Ok(s) = cap.stats() {
            counters
                .drops
                .store(drops_before + s.dropped, Ordering::Relaxed);
            counters
                .if_drops
                .store(if_drops_before + s.if_dropped, Ordering::Relaxed);
        }
    };
    let end = loop {
        if watch.stop.load(Ordering::Relaxed) {
            break End::Stopped;
        }
        own.before_read(&mut cap);
        // What libpcap holds of the ring, up to a full batch, in one call.
        let room = BATCH.saturating_sub(batch.len());
        let read = cap.dispatch(room, |packet| {
            if let Some(link) = link {
                take_packet(
                    (&mut defrag, &own.foreign),
                    link,
                    &packet,
                    &mut batch,
                    metrics,
                );
            }
        });
        let read = match read {
            Ok(n) => n as u64,
            Err(e) if ifindex(name) != Some(index) => {
                let _ = e;
                break End::Gone;
            }
            Err(e) => break End::Failed(e.to_string()),
        };
        packets += read;
        burst += read;
        let dry = read == 0;
        if !dry && batch.len() < BATCH {
            continue;
        }
        // A full batch, or a read that found nothing: hand over what there is.
        counters.packets.fetch_add(packets, Ordering::Relaxed);
        packets = 0;
        if !batch.is_empty()
            && !(watch.send)(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
        {
            break End::Stopped;
        }
        let mut now = monotonic();
        if dry && let Some(pause) = pace.dry(std::mem::take(&mut burst), now) {
            thread::sleep(pause);
            now = monotonic();
        }
        if now >= next_check {
            next_check = now + CHECK_EVERY;
            record_stats(&mut cap);
            own.refresh(&mut cap);
            // Packet timestamps are the kernel's wall clock: so is the expiry.
            defrag.expire(u64::try_from(wall_nanos()).unwrap_or(0));
            metrics.record_reassembly(slot, defrag.stats());
            if ifindex(name) != Some(index) {
                break End::Gone;
            }
        }
    };
    metrics.record_reassembly(slot, defrag.stats());
    counters.packets.fetch_add(packets, Ordering::Relaxed);
    if !batch.is_empty() {
        let _ = (watch.send)(batch);
    }
    record_stats(&mut cap);
    end
}

/// With the default every-interface watch: every [`CHECK_EVERY`], starts a capture
/// thread for each interface that is up and not watched (no capture thread: it came up,
/// or came back after it went), until the agent stops; then waits for those threads.
/// The threads of the interfaces watched from the start are the caller's.
pub fn discover<F>(watch: &Arc<Watch<F>>)
where
    F: Fn(Vec<Observation>) -> bool + Send + Sync + 'static,
{
    let mut threads: Vec<thread::JoinHandle<()>> = Vec::new();
    let mut full_said = false;
    while !watch.stop.load(Ordering::Relaxed) {
        sleep_unless_stopped(&watch.stop, CHECK_EVERY);
        // Threads of interfaces that went have ended: their handles go.
        threads.retain(|t| !t.is_finished());
        let Ok(host) = Host::read() else { continue };
        // Watched: the interfaces with a capture thread (one that goes comes off the
        // list as its thread ends).
        for name in host.up.iter().filter(|n| !watch.watches(n)) {
            let Some(slot) = watch.metrics.interface_slot(name) else {
                if !full_said {
                    tracing::warn!(
                        "warning: {name} came up, but every interface slot is taken: not watching it (name the interfaces with --iface, or restart)"
                    );
                    full_said = true;
                }
                continue;
            };
            tracing::info!("interface {name} came up: watching it");
            watch.watch(name);
            let (name, watch) = (name.clone(), Arc::clone(watch));
            match thread::Builder::new()
                .name(format!("capture-{name}"))
                .spawn(move || supervise(&name, slot, None, &watch))
            {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::error!("cannot start a capture thread: {e}"),
            }
        }
    }
    for handle in threads {
        let _ = handle.join();
    }
}

/// What [`check_xdp`] remembers between checks.
#[derive(Debug, Default)]
pub struct XdpLinks {
    /// Interfaces whose absence was reported.
    missing: BTreeSet<String>,
    /// Checks made, for [`VERIFY_EVERY`].
    checks: u32,
    /// Why the program could not be attached again where it was removed from outside.
    removed: std::collections::BTreeMap<String, String>,
    /// With the every-interface watch: interfaces that came up but could not be attached
    /// (another tool's program on them, no Ethernet header, gone meanwhile), with their
    /// ifindex and the check of the last try. They are tried again every
    /// [`VERIFY_EVERY`] checks, and at once when created again.
    refused: std::collections::BTreeMap<String, (u32, u32)>,
}

impl XdpLinks {
    fn fault(&self, name: &str) -> Option<String> {
        self.removed.get(name).cloned()
    }
}

/// The XDP program was removed from `name` from outside (the interface is the same):
/// attaches it again, said once per removal and counted in
/// `synwatch_rules_reinstated_total`; where that fails (another tool's program took its
/// place), the interface counts as missing, with why.
fn restore(
    xdp: &mut synwatch_xdp::Xdp,
    mode: synwatch_xdp::Mode,
    name: &str,
    links: &mut XdpLinks,
    metrics: &Metrics,
) {
    let first = !links.missing.contains(name);
    if first {
        tracing::warn!(
            "the XDP program is no longer attached to {name} (detached or replaced by another tool): attaching it again"
        );
    }
    match xdp.reattach(name, mode) {
        Ok(a) => {
            tracing::info!("the XDP program is attached to {name} again ({})", a.mode);
            metrics.rules_reinstated.fetch_add(1, Ordering::Relaxed);
            links.missing.remove(name);
            links.removed.remove(name);
        }
        Err(e) => {
            let why = format!(
                "the XDP program was removed from {name} and cannot be attached again: {e}"
            );
            if first {
                tracing::warn!("{why}; trying again");
            }
            links.missing.insert(name.to_owned());
            links.removed.insert(name.to_owned(), why);
        }
    }
}

/// Every how many checks the kernel is asked which XDP program each interface runs
/// (one `ip -j -d link show`, a few milliseconds): a program detached or replaced by
/// another tool (`bpftool link detach`, `ip link set dev X xdp off`) leaves the
/// interface unwatched and its bans unenforced, so it is attached again within seconds,
/// as a flushed nftables table is set up again.
const VERIFY_EVERY: u32 = 3;

/// The id of the XDP program each interface runs (interfaces without one are not
/// listed); `None` when `ip` cannot tell.
fn xdp_programs() -> Option<std::collections::HashMap<String, u64>> {
    let text = crate::host::ip_output(
        &["-j", "-d", "link", "show"],
        "list the XDP programs of the interfaces",
    )
    .ok()?;
    xdp_programs_json(&text)
}

/// [`xdp_programs`] from `ip -j -d link show`'s output.
fn xdp_programs_json(text: &str) -> Option<std::collections::HashMap<String, u64>> {
    use serde_json::Value;
    let Ok(Value::Array(links)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    Some(
        links
            .iter()
            .filter_map(|l| {
                let name = l.get("ifname")?.as_str()?;
                let id = l.get("xdp")?.get("prog")?.get("id")?.as_u64()?;
                Some((name.to_owned(), id))
            })
            .collect(),
    )
}

/// Checks the XDP program's attachments (the pipeline calls this every
/// [`CHECK_EVERY`]): an interface created again under a watched name gets the program
/// again; with the default every-interface watch (`discover`), one that came up is
/// attached too. `required`: named interfaces, whose absence fails `/healthz`.
/// `observing`: the program is the source, and the interfaces' metrics slots are its to
/// give back (beside libpcap, libpcap's capture threads give theirs).
pub fn check_xdp(
    xdp: &mut synwatch_xdp::Xdp,
    mode: synwatch_xdp::Mode,
    links: &mut XdpLinks,
    metrics: &Metrics,
    required: bool,
    discover: bool,
    observing: bool,
) {
    let attached: Vec<(String, u32)> = xdp
        .attached()
        .iter()
        .map(|a| (a.iface.clone(), a.ifindex))
        .collect();
    // Every VERIFY_EVERY checks: our program's id, and the program each interface runs.
    let running = if links.checks.is_multiple_of(VERIFY_EVERY) {
        xdp.program_id()
            .and_then(|ours| Some((u64::from(ours), xdp_programs()?)))
    } else {
        None
    };
    links.checks = links.checks.wrapping_add(1);
    let attached = if discover {
        follow_renames(xdp, &attached, metrics, observing)
    } else {
        attached
    };
    for (name, was) in &attached {
        let set = |up: bool, fault: Option<String>| set_state(metrics, name, up, fault);
        match ifindex(name) {
            // The same interface, and the kernel says the program is no longer on it:
            // detached or replaced from outside.
            Some(now)
                if now == *was
                    && running
                        .as_ref()
                        .is_some_and(|(ours, r)| r.get(name) != Some(ours)) =>
            {
                restore(xdp, mode, name, links, metrics);
                set(!links.missing.contains(name), links.fault(name));
            }
            // Renamed away and back: the same interface, the program still on it.
            Some(now) if now == *was => {
                if !links.removed.contains_key(name) && links.missing.remove(name) {
                    tracing::info!("interface {name} is back (ifindex {now})");
                    set(true, None);
                }
            }
            Some(_) if !is_ethernet(name) => {
                let why = format!(
                    "interface {name} is back without an Ethernet header (a tunnel or VPN now): the XDP program cannot watch it"
                );
                if links.missing.insert(name.clone()) {
                    tracing::warn!("{why}");
                }
                set(false, Some(why));
            }
            Some(now) => match xdp.reattach(name, mode) {
                Ok(a) => {
                    tracing::info!(
                        "interface {name} is back (ifindex {now}): the XDP program is attached again ({})",
                        a.mode
                    );
                    links.missing.remove(name);
                    links.removed.remove(name);
                    set(true, None);
                }
                Err(e) => {
                    let why = format!("cannot attach the XDP program to {name} again: {e}");
                    if links.missing.insert(name.clone()) {
                        tracing::warn!("{why}; trying again");
                    }
                    set(false, Some(why));
                }
            },
            None => {
                let why = format!(
                    "interface {name} is missing (deleted or renamed): waiting for it to return"
                );
                if links.missing.insert(name.clone()) {
                    tracing::warn!("{why}");
                }
                set(false, required.then_some(why));
            }
        }
    }
    if discover {
        attach_new(xdp, mode, links, metrics, (&attached, observing));
    }
}

/// Sets the state the metrics show for interface `name` (up, and why it is not
/// watched), where a slot holds it: slots are given out by the source that owns them
/// (libpcap's capture threads, or, as the source, the XDP program's attachments), never
/// here, so that an interface that went holds none.
fn set_state(metrics: &Metrics, name: &str, up: bool, fault: Option<String>) {
    if let Some(c) = metrics
        .interface_held(name)
        .and_then(|s| metrics.interfaces.get(s))
    {
        c.set_state(up, fault);
    }
}

/// The name of the interface `index`, if there is one. (nix's `if_indextoname` takes
/// the C function's null for success, an empty name.)
fn name_of(index: u32) -> Option<String> {
    let name = nix::net::if_::if_indextoname(index).ok()?;
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

/// With the every-interface watch, the kernel's attachments follow interfaces, not
/// names: an attached interface that was renamed is still watched under its new name
/// (so that an interface created under its old name is attached beside it rather than
/// taking its program away), and one that is gone is let go (its bpf_link's descriptor
/// freed; interfaces that come and go, such as containers' veths, would otherwise use
/// descriptors up). One created again under the same name is attached again by
/// [`check_xdp`]. When `observing`, the metrics slot of a name that went is given back
/// (its series leave `/metrics`; containers' veths would otherwise use every spare
/// slot up) and a renamed interface counts from zero under its new name. Returns the
/// attachments as they now are.
fn follow_renames(
    xdp: &mut synwatch_xdp::Xdp,
    attached: &[(String, u32)],
    metrics: &Metrics,
    observing: bool,
) -> Vec<(String, u32)> {
    let holds =
        |xdp: &synwatch_xdp::Xdp, index: u32| xdp.attached().iter().any(|a| a.ifindex == index);
    for (name, was) in attached {
        let index = ifindex(name);
        // Let go of already (its name went to an interface renamed onto it).
        if index == Some(*was) || !holds(xdp, *was) {
            continue;
        }
        match name_of(*was) {
            Some(now) => {
                tracing::info!("interface {name} is now named {now}: still watched");
                // An attachment still under the new name whose interface went: its
                // counts are not the renamed one's. (One whose interface lives was
                // renamed too, as in a swap of two names: its own turn follows it.)
                let went: Vec<u32> = xdp
                    .attached()
                    .iter()
                    .filter(|a| a.iface == now && a.ifindex != *was)
                    .filter(|a| name_of(a.ifindex).is_none())
                    .map(|a| a.ifindex)
                    .collect();
                for gone in went {
                    xdp.forget(gone);
                }
                xdp.rename(*was, &now);
                // In a swap of two names, the old one may be another attachment's now
                // (renamed before this one in this check): its slot is that one's.
                let taken = xdp.attached().iter().any(|a| a.iface == *name);
                if !taken {
                    set_state(metrics, name, false, None);
                }
                if observing {
                    if !taken {
                        metrics.release_named(name);
                    }
                    metrics.release_named(&now);
                    let _ = metrics.interface_slot(&now);
                }
                set_state(metrics, &now, true, None);
            }
            None if index.is_none() => {
                tracing::info!("interface {name} is gone: its XDP attachment is let go");
                xdp.forget(*was);
                set_state(metrics, name, false, None);
                if observing {
                    metrics.release_named(name);
                }
            }
            // Gone, and its name taken by an interface attached already (renamed onto
            // it before this check looked): let go, and the name counts afresh.
            None if index.is_some_and(|i| holds(xdp, i)) => {
                tracing::info!("interface {name} is gone: its XDP attachment is let go");
                xdp.forget(*was);
                if observing {
                    metrics.release_named(name);
                }
            }
            // Created again under its name: attached again by check_xdp, its counts
            // going on.
            None => {}
        }
    }
    if observing {
        for a in xdp.attached() {
            let _ = metrics.interface_slot(&a.iface);
        }
    }
    xdp.attached()
        .iter()
        .map(|a| (a.iface.clone(), a.ifindex))
        .collect()
}

/// With the default every-interface watch: attaches the program to each interface that
/// came up and is not watched yet (`attached`, by name or by ifindex). One that cannot
/// be attached is said once and tried again every [`VERIFY_EVERY`] checks (another
/// tool's program may be taken off it), and at once when created again.
fn attach_new(
    xdp: &mut synwatch_xdp::Xdp,
    mode: synwatch_xdp::Mode,
    links: &mut XdpLinks,
    metrics: &Metrics,
    (attached, observing): (&[(String, u32)], bool),
) {
    let Ok(host) = Host::read() else { return };
    links.refused.retain(|name, _| host.up.contains(name));
    for name in &host.up {
        let Some(index) = ifindex(name) else { continue };
        if attached.iter().any(|(n, i)| n == name || *i == index) {
            continue;
        }
        let said = match links.refused.get(name) {
            Some(&(i, at)) if i == index => {
                if links.checks.wrapping_sub(at) < VERIFY_EVERY {
                    continue;
                }
                true
            }
            _ => false,
        };
        links.refused.insert(name.clone(), (index, links.checks));
        if !is_ethernet(name) {
            if !said {
                tracing::warn!(
                    "interface {name} came up without an Ethernet header (a tunnel or VPN): the XDP program cannot watch it (--source pcap watches every interface)"
                );
            }
            continue;
        }
        match xdp.attach(name, mode) {
            Ok(a) => {
                tracing::info!(
                    "interface {name} came up: the XDP program is attached ({})",
                    a.mode
                );
                links.refused.remove(name);
                if observing {
                    let _ = metrics.interface_slot(name);
                }
                set_state(metrics, name, true, None);
            }
            Err(e) if !said => tracing::error!(
                "interface {name} came up, but cannot attach the XDP program: {e}; trying again every few seconds"
            ),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_of_each_interface_is_read_from_ip_json() {
        // `ip -j -d link show` as the agent (without CAP_SYS_ADMIN) gets it: ids, no names.
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
            {"ifindex":7,"ifname":"eth0","xdp":{"mode":1,"prog":{"id":772,"tag":"c0e7d73d07bac6c3","jited":1}}},
            {"ifindex":8,"ifname":"eth1","xdp":{"mode":2,"prog":{"id":9,"name":"xdp_filter"}}}]"#;
        let got = xdp_programs_json(text).expect("parsed");
        assert_eq!(got.len(), 2);
        assert_eq!(got.get("eth0"), Some(&772));
        assert_eq!(got.get("eth1"), Some(&9));
        assert_eq!(got.get("lo"), None);
        assert_eq!(xdp_programs_json("not json"), None);
    }

    #[test]
    fn a_capture_thread_pauses_under_a_flood_and_never_on_a_quiet_link() {
        let start = monotonic();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut pace = Pace::default();
        // The first time the ring runs dry there is no rate yet.
        assert_eq!(pace.dry(500, at(0)), None);
        // A scan on a quiet link: a few probes a millisecond, never a pause.
        assert_eq!(pace.dry(10, at(1)), None);
        assert_eq!(pace.dry(40, at(2)), None);
        // 100 packets a millisecond (100,000 a second): a flood.
        assert_eq!(pace.dry(100, at(3)), Some(FLOOD_PAUSE));
        assert_eq!(pace.dry(300, at(6)), Some(FLOOD_PAUSE));
        // Many packets, but over a long read timeout: 1,000 a second.
        assert_eq!(pace.dry(100, at(106)), None);
        // Just under and at the flood rate.
        assert_eq!(pace.dry(99, at(108)), None);
        assert_eq!(pace.dry(100, at(110)), Some(FLOOD_PAUSE));
        // A burst of a few packets moments after the last look is no flood.
        assert_eq!(pace.dry(3, at(110)), None);
    }

    #[test]
    fn the_filter_names_ipv4_then_permanent_ipv6_blocks_first() {
        let v4 = |i: u32| IpAddr::from((0x0a4d_0100 + i).to_be_bytes());
        let v6 = |i: u128| IpAddr::from(((0xfd77_u128 << 112) + (i << 16)).to_be_bytes());
        // 254 IPv4 addresses of one /24 (14 blocks), 10 permanent IPv6 addresses and 60
        // learnt from router advertisements (one block each).
        let mut addresses: BTreeSet<IpAddr> = (1..=254).map(v4).collect();
        addresses.extend((0..70).map(v6));
        let permanent: BTreeSet<std::net::Ipv6Addr> = (60..70)
            .map(|i| match v6(i) {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => unreachable!(),
            })
            .collect();
        let (named, left) = named_blocks(&addresses, Some(&permanent));
        let max = synwatch_capture::live::MAX_OWN_IN_FILTER;
        assert_eq!((named.len(), left), (max, 14 + 70 - max));
        assert!(named[..14].iter().all(|b| b.addr().is_ipv4()));
        for a in &permanent {
            assert!(named[14..24].contains(&IpNet::from(IpAddr::V6(*a))), "{a}");
        }
        // Without the kernel's flags every IPv6 address ranks alike; all fit when few.
        let few: BTreeSet<IpAddr> = (0..5).map(v6).chain([v4(1)]).collect();
        let (named, left) = named_blocks(&few, None);
        assert_eq!((named.len(), left), (6, 0));
        assert!(named[0].addr().is_ipv4());
    }

    #[test]
    fn a_link_local_source_of_another_link_is_foreign_unless_the_host_sent_the_frame() {
        let bridge_mac = [2, 0x77, 0, 0, 0, 1];
        let mut host = Host::default();
        let ll = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("test address");
        host.link_local.insert("br0".into(), [ll("fe80::b")].into());
        host.link_local
            .insert("eth0".into(), [ll("fe80::e"), ll("fe80::1")].into());
        host.link_local
            .insert("eth1".into(), [ll("fe80::1")].into());
        host.mac.insert("br0".into(), bridge_mac);
        let foreign = foreign_link_locals(&host, "eth0");
        // fe80::1 is eth0's own too; fe80::b is the bridge's only.
        assert_eq!(foreign.keys().collect::<Vec<_>>(), [&ll("fe80::b")]);
        let src = IpAddr::V6(ll("fe80::b"));
        let stranger = [2, 0x99, 0, 0, 0, 9];
        fn eth(mac: &[u8; 6]) -> Option<Sender<'_>> {
            Some(Sender::Ethernet(&mac[..]))
        }
        assert!(is_foreign(src, || eth(&stranger), &foreign));
        assert!(!is_foreign(src, || eth(&bridge_mac), &foreign));
        // A cooked capture says which way; a tun carries no other link's address out.
        let cooked = |outgoing| Some(Sender::Cooked { outgoing });
        assert!(is_foreign(src, || cooked(false), &foreign));
        assert!(!is_foreign(src, || cooked(true), &foreign));
        assert!(is_foreign(src, || Some(Sender::Raw), &foreign));
        // No frame header to tell, or not a link-local of another link: not foreign.
        assert!(!is_foreign(src, || None, &foreign));
        let fe80_1 = IpAddr::V6(ll("fe80::1"));
        assert!(!is_foreign(fe80_1, || eth(&stranger), &foreign));
        let v4 = "10.0.0.1".parse().expect("v4");
        assert!(!is_foreign(v4, || eth(&stranger), &foreign));
    }
}
