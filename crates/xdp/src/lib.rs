//! synwatch's XDP fast path.
//!
//! The program (`bpf/synwatch.bpf.c`, compiled by clang from `build.rs` and embedded in
//! the binary) runs on every packet a watched interface receives, before the network
//! stack allocates anything for it. It drops packets from banned sources, reports SYNs
//! and stealth probes through a ring buffer, and, when blocking in XDP, detects scans
//! itself so that the packet that makes a source a scanner is already dropped (counting
//! an IPv6 source as its `--ipv6-prefix` network and banning that, unless
//! [`Xdp::set_per_address`] covers it, as the user-space detector counts). Observing, it
//! judges SYN retransmissions itself ([`Options::same_attempt_ns`]) and sends up only
//! new attempts.
//!
//! The key decision: one truth for both paths. What the program judges, it judges exactly
//! as `synwatch_decode::decode()` does (up to 8 VLAN tags, IPv4 bounded by its total
//! length, IPv6 bounded by its payload length through up to 8 hop-by-hop, routing,
//! destination-options and AH headers, TCP with a data offset of at least 5 and its whole
//! header present); what it cannot judge in the kernel it hands to user space as a
//! [`RawPacket`] instead of guessing: IPv4 fragments of every protocol (the kernel's
//! reassembly counts them all toward `ipfrag_max_dist`, and an overlap anywhere discards
//! a datagram), IPv6 packets with a fragment header, and longer IPv6 header chains. Those
//! go up from their L3 header on (decode them as `LinkType::Raw`), at most
//! [`layout::RAW_CAP`] (9,216, libpcap's snap length) bytes of each, so that user space
//! reaches every TCP header libpcap reaches however long the header chain before it (an
//! IPv4 fragment that cannot hold part of a TCP header brings only its first
//! [`layout::FRAG_HEAD`] bytes, its IP header), and are passed unless their source is
//! banned; in-kernel detection never counts them. `tests/differential.rs` holds the two paths
//! to the same verdicts on the decoder's fuzz corpus, the golden captures and crafted
//! evasions.
//!
//! This crate loads it with aya and hands out its parts to the threads that use them:
//! - [`Xdp`]: the loaded program and its attachments (one bpf_link per interface, so
//!   the kernel detaches it when the process ends, even by a crash), the configuration
//!   and the allowlist tries. Dropping it detaches the program.
//! - [`Ring`]: the ring buffer of [`Record`]s (a probe [`Event`] or a [`RawPacket`]) and
//!   the per-CPU counters, for the thread that observes.
//! - [`XdpBans`]: the ban maps, as a blocking backend ([`synwatch_enforce::Enforcer`]).
//!
//! The ring buffer holds 4 MiB ([`layout::RING_BYTES`]). A probe record takes 64 bytes of
//! it (56 and the ring's 8-byte header); a raw record 8 + 48 + the bytes copied, rounded
//! up to 8 ([`layout::raw_record_cost`]), since the program writes only what it copied:
//! 88 bytes for one of `nmap -f`'s 28-byte fragments (a full ring holds 47,662 of them),
//! 1,560 for a 1,500-byte packet (2,688), 9,272 at most (452), 120 for an IPv4 fragment
//! that brings only its head (34,952). What did not fit is
//! counted ([`Counter::RingbufFull`]); `tests/differential.rs` floods the ring with each
//! size and checks these figures.
//!
//! Layout: `layout` (the byte layouts shared with the C program, pure), `bans` (the
//! blocking backend), `clock` (the kernel's boot clock against Unix time), this file
//! (loading, attaching, errors).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader, include_bytes_aligned};
use ipnet::IpNet;

mod bans;
pub mod clock;
pub mod layout;

pub use bans::XdpBans;
pub use layout::{Config, Counter, Event, RawPacket, Record};

/// The program object, compiled at build time.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synwatch.bpf.o"));

/// The program's name in the object (and as `ip link` and `bpftool` show it).
pub const PROGRAM: &str = "synwatch_xdp";

/// The compiled object, for tools that load it themselves (tests attach it with `ip`).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native where the driver supports it, generic otherwise.
    Auto,
    /// In the driver only.
    Native,
    /// In the kernel's generic path (any interface; slower).
    Generic,
}

/// In-kernel scan detection, when blocking in XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub max_ports: u16,
    pub window_ns: u64,
    /// How long a ban the kernel decides lasts until user space sets its real length
    /// (0: until lifted).
    pub ban_secs: u64,
    /// `--ipv6-prefix`: an IPv6 source counts (and is banned) as its network of this
    /// many bits, unless [`Xdp::set_per_address`] covers it; 128: per address.
    pub ipv6_prefix: u8,
}

/// What the program is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Report every probe (the XDP source); without it, only kernel bans are reported.
    pub emit: bool,
    pub detection: Option<Detection>,
    /// A ban drops only new connections and probes.
    pub scope_new: bool,
    /// With `emit`: judge SYN retransmissions in the kernel, a SYN whose 4-tuple was
    /// last seen at most this many nanoseconds ago (the detector's window) being one,
    /// and send up only new attempts (0: every SYN goes up). See [`Ring::same_attempt`].
    pub same_attempt_ns: u64,
}

impl Options {
    fn config(&self) -> Config {
        let mut flags = 0;
        if self.emit {
            flags |= layout::CFG_EMIT;
        }
        if self.scope_new {
            flags |= layout::CFG_SCOPE_NEW;
        }
        let same_ns = if self.emit && self.same_attempt_ns > 0 {
            flags |= layout::CFG_SAME;
            self.same_attempt_ns
        } else {
            0
        };
        let (window_ns, ban_ns, max_ports, ipv6_prefix) = match self.detection {
            Some(d) if d.max_ports < layout::TRACK_PORTS => {
                flags |= layout::CFG_DETECT;
                (
                    d.window_ns,
                    // The program ends its bans at boot time plus this: kept far below
                    // the flag bit of a ban's end, so that the sum never reaches it.
                    d.ban_secs.saturating_mul(1_000_000_000).min(MAX_BAN_NS),
                    u32::from(d.max_ports),
                    u32::from(d.ipv6_prefix.min(128)),
                )
            }
            _ => (0, 0, 0, 128),
        };
        Config {
            window_ns,
            ban_ns,
            max_ports,
            flags,
            ipv6_prefix,
            same_ns,
        }
    }
}

/// The longest ban the program gives by itself (about 146 years): boot time plus it stays
/// below [`layout::BAN_NEW_ONLY`], the flag bit of a ban's end.
const MAX_BAN_NS: u64 = 1 << 62;

/// Whether in-kernel detection can run with `max_ports` (the kernel keeps at most 16
/// ports per source).
pub fn detects_in_kernel(max_ports: u16) -> bool {
    max_ports < layout::TRACK_PORTS
}

/// Why the XDP path could not start. The text is one line, with a hint.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "the kernel refused BPF ({call}: {source}): XDP needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root), a kernel with BPF enabled (Linux 5.18 or later for everything synwatch's program uses), and under systemd the bpf system call allowed"
    )]
    Refused {
        call: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel's verifier rejected synwatch's XDP program ({source}): {log}. Hint: this program needs Linux 5.18 or later (bpf_loop, ring buffers, the boot clock, bpf_xdp_load_bytes); on an older kernel use --source pcap"
    )]
    Verifier {
        #[source]
        source: io::Error,
        /// The end of the verifier's log, on one line.
        log: String,
        /// The whole log, for the curious.
        full: String,
    },
    #[error("cannot load synwatch's XDP program: {0}")]
    Load(String),
    #[error("cannot attach XDP to {iface} in {mode} mode: {why}")]
    Attach {
        iface: String,
        mode: &'static str,
        why: String,
    },
    #[error("XDP map {map}: {why}")]
    Map { map: &'static str, why: String },
}

impl XdpError {
    fn map(map: &'static str, e: impl fmt::Display) -> Self {
        XdpError::Map {
            map,
            why: e.to_string(),
        }
    }

    /// The verifier's whole log, when the verifier refused the program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            XdpError::Verifier { full, .. } => Some(full),
            _ => None,
        }
    }
}

/// Turns a loader error into one that says what to do.
fn load_error(e: EbpfError) -> XdpError {
    match e {
        EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => {
            refused_or(format!("creating map {name}"), io_error, |source| {
                XdpError::Load(format!(
                    "the kernel cannot create map {name} ({source}); ring buffers need Linux 5.8 or later, LPM tries and LRU hashes 4.11"
                ))
            })
        }
        other => XdpError::Load(other.to_string()),
    }
}

fn refused_or(
    call: String,
    source: io::Error,
    otherwise: impl FnOnce(io::Error) -> XdpError,
) -> XdpError {
    match source.raw_os_error() {
        Some(libc_eperm) if libc_eperm == nix::libc::EPERM || libc_eperm == nix::libc::ENOSYS => {
            XdpError::Refused { call, source }
        }
        _ => otherwise(source),
    }
}

/// One interface the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub mode: &'static str,
    /// The slot of its counters.
    pub slot: u32,
    /// A stale synwatch program was found on it and replaced.
    pub replaced: Option<String>,
    /// What its counter slot held when the interface took it under this name (a slot
    /// freed by an interface that went serves the next one, whose counts start here).
    pub base: Counts,
}

/// An interface's own counters: packets the program saw, and records it could not send
/// up because the ring buffer was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub ringbuf_full: u64,
}

impl Counts {
    fn of(counters: &PerCpuArray<MapData, u64>, slot: u32) -> Self {
        let one = std::slice::from_ref(&slot);
        Counts {
            packets: counter_total(counters, Counter::Packets, one),
            ringbuf_full: counter_total(counters, Counter::RingbufFull, one),
        }
    }

    /// The counts since `base`.
    fn since(self, base: Counts) -> Self {
        Counts {
            packets: self.packets.saturating_sub(base.packets),
            ringbuf_full: self.ringbuf_full.saturating_sub(base.ringbuf_full),
        }
    }
}

/// Every counter slot: totals (bans, drops, retransmissions) add them all, those of
/// interfaces gone or attached since the start too, so that they never go down.
fn every_slot() -> Vec<u32> {
    (0..layout::SLOTS).collect()
}

/// The loaded program, its attachments, its configuration and allowlist.
pub struct Xdp {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    /// `attached` as the ring's reader sees it, brought up to date after every change.
    published: Arc<Mutex<Vec<Attached>>>,
    counters: PerCpuArray<MapData, u64>,
    /// The bpf_link of each attachment, in the order of `attached` (`None` where it
    /// could not be kept apart).
    links: Vec<Option<aya::programs::xdp::XdpLinkId>>,
    config: Array<MapData, [u8; layout::CONFIG_LEN]>,
    /// `[ifindex, slot]` at ifindex modulo [`layout::IFSLOTS`] (ifindex 0: free).
    ifslot: Array<MapData, [u32; 2]>,
    /// ifindex -> slot, for interfaces whose entry in `ifslot` another holds.
    ifslot_more: HashMap<MapData, u32, u32>,
    allow4: LpmTrie<MapData, [u8; 4], u8>,
    allow6: LpmTrie<MapData, [u8; 16], u8>,
    peraddr6: LpmTrie<MapData, [u8; 16], u8>,
    options: Options,
}

impl fmt::Debug for Xdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xdp")
            .field("attached", &self.attached)
            .field("options", &self.options)
            .finish()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map>,
    T::Error: fmt::Display,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| XdpError::map(name, "missing from the object"))?;
    T::try_from(map).map_err(|e| XdpError::map(name, e))
}

/// Why the program could not be attached to `iface` in `mode`.
fn attach_error(iface: &str, mode: &'static str, why: String) -> XdpError {
    XdpError::Attach {
        iface: iface.to_owned(),
        mode,
        why,
    }
}

/// The XDP program in the object.
fn program(ebpf: &mut Ebpf) -> Result<&mut aya::programs::Xdp, ProgramError> {
    ebpf.program_mut(PROGRAM)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()
}

/// A per-interface counter summed over CPUs and over the interface slots `slots`.
fn counter_total(counters: &PerCpuArray<MapData, u64>, which: Counter, slots: &[u32]) -> u64 {
    slots
        .iter()
        .filter_map(|&slot| counters.get(&which.key(slot), 0).ok())
        .map(|v| v.iter().sum::<u64>())
        .sum()
}

/// A second handle on a map another part owns (same kernel map, own descriptor).
fn share(ebpf: &Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    use aya::maps::Map;
    let map = ebpf
        .map(name)
        .ok_or_else(|| XdpError::map(name, "missing from the object"))?;
    // A duplicate of the descriptor: unlike opening the map by id, it needs no
    // privilege, so it works after the agent dropped its capabilities.
    let again = |d: &MapData| -> Result<MapData, XdpError> {
        let fd = d
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| XdpError::map(name, e))?;
        MapData::from_fd(fd).map_err(|e| XdpError::map(name, e))
    };
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d) => again(d)?,
        _ => return Err(XdpError::map(name, "unexpected map type")),
    };
    Map::from_map_data(data).map_err(|e| XdpError::map(name, e))
}

impl Xdp {
    /// Loads the program (the verifier runs here) and configures it. Nothing is attached
    /// yet.
    pub fn load(options: Options) -> Result<Self, XdpError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(load_error)?;
        let program = program(&mut ebpf).map_err(|e| XdpError::Load(e.to_string()))?;
        if let Err(e) = program.load() {
            return Err(match e {
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => {
                    let full = verifier_log.to_string();
                    if full.trim().is_empty() {
                        refused_or("BPF_PROG_LOAD".into(), io_error, |source| {
                            XdpError::Verifier {
                                source,
                                log: "no log".into(),
                                full: String::new(),
                            }
                        })
                    } else {
                        let tail: Vec<&str> = full
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .collect();
                        let start = tail.len().saturating_sub(3);
                        XdpError::Verifier {
                            source: io_error,
                            log: tail[start..].join(" | "),
                            full,
                        }
                    }
                }
                ProgramError::SyscallError(s) => {
                    refused_or(s.call.to_string(), s.io_error, |source| {
                        XdpError::Load(source.to_string())
                    })
                }
                other => XdpError::Load(other.to_string()),
            });
        }
        let mut xdp = Xdp {
            // Shared, not taken: the ring's reader reads it too.
            config: Array::try_from(share(&ebpf, "config")?)
                .map_err(|e| XdpError::map("config", e))?,
            ifslot: take(&mut ebpf, "ifslot")?,
            ifslot_more: take(&mut ebpf, "ifslot_more")?,
            counters: PerCpuArray::try_from(share(&ebpf, "counters")?)
                .map_err(|e| XdpError::map("counters", e))?,
            allow4: take(&mut ebpf, "allow4")?,
            allow6: take(&mut ebpf, "allow6")?,
            peraddr6: take(&mut ebpf, "peraddr6")?,
            ebpf,
            attached: Vec::new(),
            published: Arc::default(),
            links: Vec::new(),
            options,
        };
        xdp.configure(options)?;
        xdp.set_per_address(&[])?;
        Ok(xdp)
    }

    /// Changes what the program does (a reload: detection thresholds).
    pub fn configure(&mut self, options: Options) -> Result<(), XdpError> {
        self.options = options;
        self.config
            .set(0, options.config().to_bytes(), 0)
            .map_err(|e| XdpError::map("config", e))
    }

    pub fn options(&self) -> Options {
        self.options
    }

    /// Attaches the program to `iface`. A synwatch program left there by an earlier run
    /// (attached the old way, through netlink, which outlives its process) is replaced;
    /// another tool's program is left alone and is an error.
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<&Attached, XdpError> {
        // The first counter slot no attachment holds (attachments come and go).
        let slot = (0..)
            .find(|s| self.attached.iter().all(|a| a.slot != *s))
            .unwrap_or(u32::MAX);
        // Read before the slot is given out: no interface counts there until then.
        let base = Counts::of(&self.counters, slot.min(layout::SLOTS - 1));
        let (mut attached, link) = self.attach_at(iface, mode, slot)?;
        attached.base = base;
        self.attached.push(attached);
        self.links.push(link);
        self.publish();
        Ok(self.attached.last().unwrap_or_else(|| unreachable!()))
    }

    /// Shows the ring's reader the attachments as they now are.
    fn publish(&self) {
        if let Ok(mut shown) = self.published.lock() {
            shown.clone_from(&self.attached);
        }
    }

    /// Attaches the program again to `iface` when the interface of that name was
    /// deleted and created again (a new ifindex: the old attachment went with the old
    /// interface), keeping its counter slot. A name not attached before is attached.
    pub fn reattach(&mut self, iface: &str, mode: Mode) -> Result<&Attached, XdpError> {
        let Some(at) = self.attached.iter().position(|a| a.iface == iface) else {
            return self.attach(iface, mode);
        };
        let (mut fresh, link) = self.attach_at(iface, mode, self.attached[at].slot)?;
        // The same name: its counts go on from where they were.
        fresh.base = self.attached[at].base;
        let was = self.attached[at].ifindex;
        if was != fresh.ifindex {
            self.unplace(was);
        }
        // The old link went with the old interface, but its descriptor and the kernel's
        // link object stay until detached: one per re-creation, without bound.
        let old = self.links.get_mut(at).and_then(Option::take);
        self.detach(old);
        self.attached[at] = fresh;
        if let Some(l) = self.links.get_mut(at) {
            *l = link;
        }
        self.publish();
        Ok(&self.attached[at])
    }

    /// The interface attached as `ifindex` is now named `iface` (renamed: the kernel's
    /// attachment follows the interface, not its name). Its counts start again from zero
    /// under the new name.
    pub fn rename(&mut self, ifindex: u32, iface: &str) {
        for a in self.attached.iter_mut().filter(|a| a.ifindex == ifindex) {
            iface.clone_into(&mut a.iface);
            a.base = Counts::of(&self.counters, a.slot);
        }
        self.publish();
    }

    /// Lets the attachment to `ifindex` go: the interface is gone (the kernel's
    /// attachment went with it), and its bpf_link's descriptor and counter slot are freed
    /// for the interfaces that come after it.
    pub fn forget(&mut self, ifindex: u32) {
        while let Some(at) = self.attached.iter().position(|a| a.ifindex == ifindex) {
            let gone = self.attached.remove(at);
            let link = (at < self.links.len())
                .then(|| self.links.remove(at))
                .flatten();
            self.detach(link);
            self.unplace(gone.ifindex);
        }
        self.publish();
    }

    /// Tells the program that interface `ifindex` counts in `slot`. Where its entry is
    /// another's and [`layout::IFSLOTS_MORE`] such interfaces are placed already, it
    /// counts in slot 0: its counts are wrong, its bans and detection are not.
    fn place(&mut self, ifindex: u32, slot: u32) -> Result<(), XdpError> {
        let key = ifindex % layout::IFSLOTS;
        let entry = [ifindex, slot.min(layout::SLOTS - 1)];
        match self.ifslot.get(&key, 0) {
            Ok([held, _]) if held != 0 && held != ifindex => {
                let _ = self.ifslot_more.insert(ifindex, entry[1], 0);
                Ok(())
            }
            _ => self
                .ifslot
                .set(key, entry, 0)
                .map_err(|e| XdpError::map("ifslot", e)),
        }
    }

    /// Forgets interface `ifindex`'s slot (it went, or came back under a new index).
    fn unplace(&mut self, ifindex: u32) {
        let key = ifindex % layout::IFSLOTS;
        if matches!(self.ifslot.get(&key, 0), Ok([held, _]) if held == ifindex) {
            let _ = self.ifslot.set(key, [0, 0], 0);
        }
        let _ = self.ifslot_more.remove(&ifindex);
    }

    /// Detaches a bpf_link of the program (a link whose interface is gone still holds a
    /// descriptor and a kernel object until then).
    fn detach(&mut self, link: Option<aya::programs::xdp::XdpLinkId>) {
        if let Some(link) = link
            && let Ok(p) = program(&mut self.ebpf)
        {
            let _ = p.detach(link);
        }
    }

    /// Attaches the program to `iface`, its counts in `slot`. Where it cannot be
    /// attached, the program is told nothing of the interface (an entry left behind
    /// would hold room meant for others, and outlive the interface).
    fn attach_at(
        &mut self,
        iface: &str,
        mode: Mode,
        slot: u32,
    ) -> Result<(Attached, Option<aya::programs::xdp::XdpLinkId>), XdpError> {
        let refused = |why: String| attach_error(iface, "any", why);
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|e| refused(format!("no such interface ({e})")))?;
        // The name now belongs to an interface attached under another (renamed onto a
        // deleted one's name): its entry and attachment are that one's.
        if let Some(other) = self
            .attached
            .iter()
            .find(|a| a.ifindex == ifindex && a.iface != iface)
        {
            return Err(refused(format!(
                "it is the interface attached as {} (renamed)",
                other.iface
            )));
        }
        self.place(ifindex, slot)?;
        let attached = self.attach_placed(iface, ifindex, mode, slot);
        if attached.is_err() {
            self.unplace(ifindex);
        }
        attached
    }

    fn attach_placed(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: Mode,
        slot: u32,
    ) -> Result<(Attached, Option<aya::programs::xdp::XdpLinkId>), XdpError> {
        let attach_error = |mode: &'static str, why: String| attach_error(iface, mode, why);
        let tries: &[(XdpMode, &'static str)] = match mode {
            Mode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            Mode::Native => &[(XdpMode::Driver, "native")],
            Mode::Generic => &[(XdpMode::Skb, "generic")],
        };
        let mut replaced = None;
        let mut failures = Vec::new();
        for &(xdp_mode, name) in tries {
            let mut result = self.attach_once(ifindex, xdp_mode);
            if let Err(e) = &result
                && busy(e)
            {
                match stale::occupant(iface) {
                    Some(p) if p.name == PROGRAM => {
                        stale::remove(iface).map_err(|why| attach_error(name, why))?;
                        replaced = Some(format!("{} (id {})", p.name, p.id));
                        result = self.attach_once(ifindex, xdp_mode);
                    }
                    Some(p) => {
                        return Err(attach_error(
                            name,
                            format!(
                                "another XDP program is attached there ({}, id {}); synwatch does not replace another tool's program: remove it (ip link set dev {iface} xdp off) or use --source pcap",
                                p.name, p.id
                            ),
                        ));
                    }
                    None => {}
                }
            }
            match result {
                Ok(link) => {
                    let attached = Attached {
                        iface: iface.to_owned(),
                        ifindex,
                        mode: name,
                        slot: slot.min(layout::SLOTS - 1),
                        replaced,
                        base: Counts::default(),
                    };
                    return Ok((attached, Some(link)));
                }
                Err(e) => failures.push(format!("{name}: {}", describe(&e))),
            }
        }
        Err(attach_error(
            match mode {
                Mode::Auto => "native or generic",
                Mode::Native => "native",
                Mode::Generic => "generic",
            },
            failures.join("; "),
        ))
    }

    fn attach_once(
        &mut self,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<aya::programs::xdp::XdpLinkId, ProgramError> {
        program(&mut self.ebpf)?.attach_to_if_index(ifindex, mode)
    }

    /// The kernel's id of the loaded program, as `ip -d link show` lists it on the
    /// interfaces it is attached to (its name there needs privileges the agent drops;
    /// the id does not).
    pub fn program_id(&mut self) -> Option<u32> {
        let info = program(&mut self.ebpf).ok()?.info().ok()?;
        Some(info.id())
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// Replaces the allowlist the program consults before a ban: packets from these
    /// ranges are never dropped, and their sources never tracked.
    pub fn set_allowed(&mut self, nets: &[IpNet]) -> Result<(), XdpError> {
        let want4: Vec<Key<[u8; 4]>> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(Key::new(u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V6(_) => None,
            })
            .collect();
        let want6: Vec<Key<[u8; 16]>> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) => Some(Key::new(u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V4(_) => None,
            })
            .collect();
        replace_trie(&mut self.allow4, &want4).map_err(|e| XdpError::map("allow4", e))?;
        replace_trie(&mut self.allow6, &want6).map_err(|e| XdpError::map("allow6", e))
    }

    /// Replaces the IPv6 networks whose sources in-kernel detection counts per address
    /// although [`Detection::ipv6_prefix`] is shorter than 128: those that hold this
    /// host's or its neighbours' addresses (the user-space detector's rule, so the
    /// host's LAN neighbours are never one scanner). IPv4-mapped addresses
    /// (`::ffff:0:0/96`) always count per address, as the detector counts them.
    pub fn set_per_address(&mut self, nets: &[ipnet::Ipv6Net]) -> Result<(), XdpError> {
        let mapped = ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
            .map_err(|e| XdpError::map("peraddr6", e))?;
        let want: Vec<Key<[u8; 16]>> = nets
            .iter()
            .chain(std::iter::once(&mapped))
            .map(|n| Key::new(u32::from(n.prefix_len()), n.network().octets()))
            .collect();
        replace_trie(&mut self.peraddr6, &want).map_err(|e| XdpError::map("peraddr6", e))
    }

    /// Whether the allowlist covers `addr` (as the program sees it).
    pub fn is_allowed(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.allow4.get(&Key::new(32, a.octets()), 0).is_ok(),
            IpAddr::V6(a) => self.allow6.get(&Key::new(128, a.octets()), 0).is_ok(),
        }
    }

    /// The ring buffer and counters, for the observing thread. Once only.
    pub fn ring(&mut self) -> Result<Ring, XdpError> {
        let events: RingBuf<MapData> = take(&mut self.ebpf, "events")?;
        let counters = PerCpuArray::try_from(share(&self.ebpf, "counters")?)
            .map_err(|e| XdpError::map("counters", e))?;
        let attempts = HashMap::try_from(share(&self.ebpf, "attempts")?)
            .map_err(|e| XdpError::map("attempts", e))?;
        let config = Array::try_from(share(&self.ebpf, "config")?)
            .map_err(|e| XdpError::map("config", e))?;
        Ok(Ring {
            events,
            counters,
            attempts,
            config,
            attached: Arc::clone(&self.published),
        })
    }

    /// The counter slots of the attached interfaces; slot 0 (where packets of unknown
    /// interfaces count, as test runs' do) while none is attached.
    pub fn slots(&self) -> Vec<u32> {
        if self.attached.is_empty() {
            return vec![0];
        }
        self.attached.iter().map(|a| a.slot).collect()
    }

    /// The ban maps as a blocking backend.
    pub fn bans(&self) -> Result<XdpBans, XdpError> {
        XdpBans::open(|name| share(&self.ebpf, name), every_slot())
    }

    /// How many instructions the kernel's verifier went through to accept the program
    /// (the cost of its paths; the kernel's limit is a million), where the kernel says.
    pub fn verified_instructions(&mut self) -> Option<u32> {
        let program = program(&mut self.ebpf).ok()?;
        program.info().ok()?.verified_instruction_count()
    }

    /// Runs the program once over `frame` as if `ifindex` had received it (the kernel's
    /// BPF_PROG_TEST_RUN), and returns its verdict. For tests.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<Verdict, XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let program = program(&mut self.ebpf).map_err(|e| XdpError::Load(e.to_string()))?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = 1;
        let result = program
            .test_run(opts)
            .map_err(|e| XdpError::Load(format!("test run: {e}")))?;
        Ok(match result.return_value {
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            other => Verdict::Other(other),
        })
    }
}

impl Xdp {
    /// Runs the program `repeat` times over `frame` (BPF_PROG_TEST_RUN) and returns its
    /// verdict and the kernel's measure of one run's time, averaged. For benchmarks.
    pub fn test_run_timed(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, Duration), XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let program = program(&mut self.ebpf).map_err(|e| XdpError::Load(e.to_string()))?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let result = program
            .test_run(opts)
            .map_err(|e| XdpError::Load(format!("test run: {e}")))?;
        let verdict = match result.return_value {
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            other => Verdict::Other(other),
        };
        Ok((verdict, result.duration))
    }
}

/// The program's verdict on a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Pass,
    Other(u32),
}

fn replace_trie<K: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<MapData, K, u8>,
    want: &[Key<K>],
) -> Result<(), aya::maps::MapError> {
    let have: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    for key in &have {
        if !want
            .iter()
            .any(|w| w.prefix_len() == key.prefix_len() && w.data() == key.data())
        {
            trie.remove(key)?;
        }
    }
    for key in want {
        trie.insert(key, 1, 0)?;
    }
    Ok(())
}

/// Whether an attach failed because a program is already there.
fn busy(e: &ProgramError) -> bool {
    let code = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let text = e.to_string();
    matches!(code, Some(c) if c == nix::libc::EBUSY || c == nix::libc::EEXIST)
        || text.contains("already")
        || text.contains("Device or resource busy")
}

/// The text of an attach error, with its cause.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::SyscallError(s) => format!("{}: {}", s.call, s.io_error),
        other => {
            let mut text = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

/// What the program reported and counted.
pub struct Ring {
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    attempts: HashMap<MapData, [u8; layout::TUPLE_LEN], u64>,
    config: Array<MapData, [u8; layout::CONFIG_LEN]>,
    /// The attachments as the program's owner last published them.
    attached: Arc<Mutex<Vec<Attached>>>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ring")
    }
}

impl Ring {
    /// Waits up to `timeout` for records and appends every one waiting to `out`: probes
    /// the program judged and raw packets it handed up. Returns how many records this
    /// crate could not parse (the program and this crate out of step).
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<Record>) -> io::Result<u64> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let ready = {
            let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(io::Error::from(e)),
            }
        };
        let mut bad = 0;
        if ready > 0 {
            while let Some(item) = self.events.next() {
                match Record::parse(&item) {
                    Some(e) => out.push(e),
                    None => bad += 1,
                }
            }
        }
        Ok(bad)
    }

    /// A counter summed over CPUs and over the interface slots `slots`.
    pub fn counter(&self, which: Counter, slots: &[u32]) -> u64 {
        counter_total(&self.counters, which, slots)
    }

    /// A counter summed over CPUs and over every interface slot, those of interfaces
    /// that went too: a total that never goes down.
    pub fn total(&self, which: Counter) -> u64 {
        counter_total(&self.counters, which, &every_slot())
    }

    /// Each attached interface's own counts, by name, since it took its counter slot.
    pub fn interfaces(&self) -> Vec<(String, Counts)> {
        let attached = match self.attached.lock() {
            Ok(a) => a.clone(),
            Err(_) => return Vec::new(),
        };
        attached
            .into_iter()
            .map(|a| {
                let counts = Counts::of(&self.counters, a.slot).since(a.base);
                (a.iface, counts)
            })
            .collect()
    }

    /// Whether a SYN decoded in user space from a raw record (a fragment the program
    /// could not judge) at `ts_boot` repeats a 4-tuple seen within the window: the
    /// program's own judgement, from its `attempts` map, whose sighting this records
    /// (so that the program and user space keep one table of last sightings). Always
    /// false when the program does not judge retransmissions (`CFG_SAME` off): then
    /// every SYN goes up and the detector judges them all.
    pub fn same_attempt(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        ts_boot: u64,
    ) -> bool {
        let Some(window) = self
            .config
            .get(&0, 0)
            .ok()
            .and_then(|c| Config::same_of(&c))
        else {
            return false;
        };
        let Some(key) = layout::tuple_key(src, dst, sport, dport) else {
            return false;
        };
        let same = self
            .attempts
            .get(&key, 0)
            .is_ok_and(|then| then <= ts_boot && ts_boot - then <= window);
        // A later sighting the program made meanwhile is not moved back.
        let last = self.attempts.get(&key, 0).unwrap_or(0).max(ts_boot);
        let _ = self.attempts.insert(key, last, 0);
        same
    }
}

/// Finding and removing a program another run left on an interface (through `ip`: aya
/// has no public netlink detach, and a bpf_link left by a crash cannot exist, since the
/// kernel detaches it with its process).
mod stale {

    #[derive(Debug)]
    pub struct Occupant {
        pub id: u64,
        pub name: String,
    }

    /// The XDP program attached to `iface`, as `ip -d link show` describes it.
    pub fn occupant(iface: &str) -> Option<Occupant> {
        let out = synwatch_enforce::system_command("ip")
            .ok()?
            .args(["-d", "link", "show", "dev", iface])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "prog/xdp id 42 name synwatch_xdp tag ..." (drv or generic)
        let at = text.find("prog/xdp id ")?;
        let mut words = text[at + "prog/xdp id ".len()..].split_whitespace();
        let id = words.next()?.parse().ok()?;
        let name = match (words.next(), words.next()) {
            (Some("name"), Some(n)) => n.to_owned(),
            _ => String::new(),
        };
        Some(Occupant { id, name })
    }

    /// Detaches whatever netlink attached to `iface`, in both modes.
    pub fn remove(iface: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        for mode in ["xdpgeneric", "xdpdrv"] {
            let run = synwatch_enforce::system_command("ip")
                .map_err(|e| e.to_string())
                .and_then(|mut ip| {
                    ip.args(["link", "set", "dev", iface, mode, "off"])
                        .output()
                        .map_err(|e| format!("cannot run ip: {e}"))
                });
            match run {
                Ok(o) if o.status.success() => {}
                Ok(o) => errors.push(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
                Err(e) => errors.push(e),
            }
        }
        if occupant(iface).is_some() {
            return Err(format!(
                "a synwatch program is attached and could not be removed: is another synwatch agent running on it? ({})",
                errors.join("; ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_own_ban_length_leaves_room_below_the_flag_bit() {
        let options = |ban_secs| Options {
            emit: true,
            detection: Some(Detection {
                max_ports: 3,
                window_ns: 60_000_000_000,
                ban_secs,
                ipv6_prefix: 64,
            }),
            scope_new: false,
            same_attempt_ns: 0,
        };
        assert_eq!(options(3600).config().ban_ns, 3_600_000_000_000);
        // `--ban 2562047h`: boot time plus it passed 2^63, and the end wrapped into the
        // past once the flag bit was masked.
        let long = options(2_562_047 * 3600).config().ban_ns;
        assert!(
            long.checked_add(1 << 61)
                .is_some_and(|end| end < layout::BAN_NEW_ONLY)
        );
    }
}
