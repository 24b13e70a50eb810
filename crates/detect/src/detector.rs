//! The scan detector (SPEC §2): a pure state machine fed one observation at a time.
//!
//! State is two bounded tables (laid out in `state`, one cache line per lookup):
//! - attempts by 4-tuple, to tell a retransmission (same 4-tuple within a window of its
//!   last sighting) from a new attempt;
//! - sources, each holding only what the window needs: the `max_ports + 1` most recently
//!   reached distinct ports (enough to decide "more than `max_ports` within the window"
//!   exactly), with the time of each, and whether a scan episode is open.
//!
//! Both tables are swept of expired entries as time advances and have a hard cap; at the
//! cap, a CLOCK hand evicts one entry per insertion in O(1) amortised, sources by a credit
//! that favours those closest to being scanners and those that keep coming back, so that
//! noise cannot push a real scanner out.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use synwatch_decode::TcpFlags;

use crate::Nanos;
use crate::addrset::AddrSet;
use crate::key::{AddrKey, addr_key, halves, key_addr, key_v4};
use crate::probe::{Probe, ProbeSet};
use crate::state::{Attempts, Key, PortSeen, Sources, Tuple as Tuple4};
use crate::sweep::{Bounds, Pending, Sweeps, Tuple};
use crate::table::SlotUse;

/// Whether an attempt leaves or enters the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To this host (or, on a gateway, through it): the source is not local.
    In,
    /// From one of this host's addresses.
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// Which attempts are logged (`--direction`). Incoming attempts always count toward
/// scans; outgoing ones only with `Both` (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DirectionFilter {
    #[default]
    In,
    Out,
    Both,
}

impl DirectionFilter {
    /// Whether an attempt in `direction` counts toward its source's scan detection.
    #[inline]
    pub fn counts_toward_scans(self, direction: Direction) -> bool {
        direction == Direction::In || self == Self::Both
    }

    /// Whether an attempt in `direction` is logged.
    #[inline]
    pub fn selects(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (Self::Both, _) | (Self::In, Direction::In) | (Self::Out, Direction::Out)
        )
    }
}

/// Detector settings, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A scan is more than this many distinct destination ports...
    pub max_ports: u16,
    /// ...within this many nanoseconds (inclusive).
    pub window: Nanos,
    pub direction: DirectionFilter,
    /// The host's own addresses: attempts from them are outgoing.
    pub locals: AddrSet,
    /// Sources that are reported but never to be blocked.
    pub allow: AddrSet,
    /// Whether local addresses count as allowlisted.
    pub allow_local: bool,
    /// Cap on tracked sources.
    pub max_sources: usize,
    /// Cap on remembered 4-tuples (for retransmission detection): every attempt of the
    /// window is remembered up to it (see [`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: usize,
    /// IPv6 sources count per /N (48 to 128; 128 counts per address).
    pub ipv6_prefix: u8,
    /// Addresses of this host's neighbourhood besides `locals` (its gateways, routers,
    /// resolvers): an IPv6 prefix holding one of them or a local address counts per
    /// address, so that the host's LAN neighbours are never lumped into one scanner.
    pub neighbours: AddrSet,
    /// An address sweep is unanswered attempts to more than this many distinct hosts on
    /// one port within the window...
    pub max_hosts: u16,
    /// ...an attempt being unanswered when no SYN-ACK for it came within this time.
    pub answer_wait: Nanos,
    /// Whether to look for sweeps at all: only where the answers can be seen (libpcap and
    /// captures see both directions; the XDP program sees what arrives, not what the host
    /// sends back, so there every attempt would look unanswered).
    pub sweeps: bool,
}

/// Default cap on tracked sources (state at the cap: see docs/PERFORMANCE.md).
pub const DEFAULT_MAX_SOURCES: usize = 100_000;

/// Default cap on remembered 4-tuples, independent of the source cap: a few sources may
/// make many attempts. At the cap the tables hold at most 2^21 slots: 48 MB of 24-byte
/// IPv4 slots, 96 MB were they all IPv6 (see docs/PERFORMANCE.md).
pub const DEFAULT_MAX_ATTEMPTS: usize = 1_000_000;

/// IPv6 sources count per /64 unless configured otherwise: one subscriber, one host or
/// one cloud instance usually holds a whole /64, and rotating through it is free.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The default scan window (`--window`): 60 s.
pub const DEFAULT_WINDOW: Nanos = 60_000_000_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            max_ports: 3,
            window: DEFAULT_WINDOW,
            direction: DirectionFilter::In,
            locals: AddrSet::new(),
            allow: AddrSet::new(),
            allow_local: true,
            max_sources: DEFAULT_MAX_SOURCES,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            neighbours: AddrSet::new(),
            max_hosts: 16,
            answer_wait: 3_000_000_000,
            sweeps: true,
        }
    }
}

/// One TCP segment as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Observation {
    pub ts: Nanos,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: TcpFlags,
    /// The source is not this host although it holds the address: the packet came in
    /// on a link that does not hold it (a link-local address is the host's on its own
    /// link only, and another host may use it on another). Its attempt is incoming.
    pub foreign: bool,
}

impl Observation {
    /// The observation of a decoded segment taken at `ts`, if it is something the
    /// detector looks at: a TCP connection attempt, a stealth probe, or a SYN-ACK (the
    /// answer that keeps an attempt out of sweep counting).
    #[inline]
    pub fn of_segment(ts: Nanos, seg: &synwatch_decode::Segment) -> Option<Self> {
        let synwatch_decode::Transport::Tcp(flags) = seg.transport else {
            return None;
        };
        if Probe::classify(flags).is_none() && !is_answer(flags) {
            return None;
        }
        Some(Self {
            ts,
            src: seg.src,
            dst: seg.dst,
            sport: seg.sport,
            dport: seg.dport,
            flags,
            foreign: false,
        })
    }

    /// Its direction given this host's addresses `locals`: outgoing when the source is
    /// one of them, unless it is [`Observation::foreign`].
    #[inline]
    pub fn direction(&self, locals: &AddrSet) -> Direction {
        if !self.foreign && locals.contains(self.src) {
            Direction::Out
        } else {
            Direction::In
        }
    }
}

/// What an observation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not a connection attempt nor a stealth probe.
    Ignored,
    /// A repeat of an attempt's 4-tuple within the window.
    Retransmission(Direction),
    /// A new connection attempt.
    Attempt(Direction),
    /// A stealth probe (no SYN, ACK or RST).
    Stealth(Direction, Probe),
}

/// What a [`Scan`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// More than `max_ports` distinct ports (`ports` holds them).
    Ports,
    /// Unanswered attempts to more than `max_hosts` hosts on one port (`ports` holds the
    /// port, `hosts` the hosts).
    Sweep,
}

impl ScanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ports => "ports",
            Self::Sweep => "sweep",
        }
    }
}

/// A detected port scan or address sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub kind: ScanKind,
    pub ts: Nanos,
    pub src: IpAddr,
    /// The destination of the attempt that crossed the threshold.
    pub dst: IpAddr,
    /// Exactly `max_ports + 1` distinct ports, in first-seen order.
    pub ports: Vec<u16>,
    pub probes: ProbeSet,
    pub window: Nanos,
    /// The source is local, on the allowlist or never a real source
    /// ([`is_special_source`]): report, never block.
    pub allowlisted: bool,
    /// The IPv6 network the source was counted as (`--ipv6-prefix`), when it was counted
    /// per prefix rather than per address: the ban covers it.
    pub prefix: Option<IpNet>,
    /// A sweep's hosts: the first `max_hosts + 1` reached, in first-seen order.
    pub hosts: Vec<IpAddr>,
}

/// The detector's verdict on one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seen: Seen,
    /// Whether a `connection` event is due (a new attempt in a selected direction).
    pub log: bool,
    pub scan: Option<Scan>,
    /// Address sweeps that became known by this observation's time (their attempts' answer
    /// time ran out); usually none.
    pub sweeps: Vec<Scan>,
}

/// Running totals, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub attempts_in: u64,
    pub attempts_out: u64,
    pub retransmissions: u64,
    pub stealth_probes: u64,
    pub scans: u64,
    /// Address sweeps detected (not counted in `scans`).
    pub sweeps: u64,
    /// Attempts or answers dropped at the caps before a sweep could be judged.
    pub sweep_state_dropped: u64,
    /// Sources dropped to stay under the cap before their state expired.
    pub sources_evicted: u64,
    /// Attempts or probes of sources not tracked, seen while the source table was full:
    /// written down apart as first sightings instead of evicting a tracked source (a
    /// spoofed flood's packets, mostly).
    pub first_sightings: u64,
    /// 4-tuples dropped to stay under the cap before they expired.
    pub attempts_evicted: u64,
}

/// The port-scan detector. Feed it observations in time order with [`Detector::observe`].
#[derive(Debug)]
pub struct Detector {
    cfg: Config,
    /// The IPv6 networks (at `ipv6_prefix`) holding a local or neighbour address, whose
    /// sources count per address.
    shared: AddrSet,
    now: Nanos,
    last_sweep: Nanos,
    sources: Sources,
    attempts: Attempts,
    stats: Stats,
    sweeps: Sweeps,
    /// Sweeps found while time advanced, for the next [`Outcome`].
    found: Vec<Scan>,
    /// Whether recent SYNs' 4-tuples and recent sources held slots (what
    /// [`Detector::prefetch`] loads).
    attempt_slots: SlotUse,
    source_slots: SlotUse,
}

impl Detector {
    pub fn new(cfg: Config) -> Self {
        Self {
            shared: per_address_prefixes(&cfg),
            cfg,
            now: Nanos::MIN,
            last_sweep: Nanos::MIN,
            sources: Sources::default(),
            attempts: Attempts::default(),
            stats: Stats::default(),
            sweeps: Sweeps::default(),
            found: Vec::new(),
            attempt_slots: SlotUse::default(),
            source_slots: SlotUse::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Replaces thresholds and address sets, keeping all state. Tracked port lists longer
    /// than a lowered threshold needs are trimmed at their next observation.
    pub fn reconfigure(&mut self, cfg: Config) {
        self.shared = per_address_prefixes(&cfg);
        self.cfg = cfg;
    }

    /// What a source counts as: its own address, or (IPv6, per `--ipv6-prefix`) its
    /// network, unless that network holds one of this host's, its neighbours' or an
    /// allowlisted address, or is NAT64's ([`per_address_prefixes`]).
    pub fn source_of(&self, addr: IpAddr) -> (IpAddr, Option<IpNet>) {
        match addr {
            IpAddr::V6(a) if self.counts_per_prefix(addr_key(addr)) => {
                let Ok(net) = Ipv6Net::new(a, self.cfg.ipv6_prefix) else {
                    return (addr, None);
                };
                let net = net.trunc();
                (IpAddr::V6(net.network()), Some(IpNet::V6(net)))
            }
            _ => (addr, None),
        }
    }

    /// Whether the address of `key` counts as its network at `--ipv6-prefix` (see
    /// [`Detector::source_of`]): an IPv6 address, not IPv4-mapped, whose network holds
    /// none of the per-address prefixes. The one rule [`Detector::source_of`] and
    /// [`Detector::counted_key`] both follow.
    #[inline(always)]
    fn counts_per_prefix(&self, key: AddrKey) -> bool {
        self.cfg.ipv6_prefix < 128
            && key_v4(key).is_none()
            && !self.shared.contains(IpAddr::V6(key.into()))
    }

    /// The key of what `addr` counts as ([`Detector::source_of`] without the prefix): on
    /// the hot path, inlined so that the address stays in registers. An address handed
    /// back through memory is read in other pieces than it was written in, and such a read
    /// waits for every store before it to reach the cache.
    #[inline(always)]
    fn key_of(&self, addr: IpAddr) -> Key {
        self.counted_key(addr_key(addr))
    }

    /// [`Detector::key_of`] for an address given as its [`AddrKey`].
    #[inline(always)]
    fn counted_key(&self, key: AddrKey) -> Key {
        if !self.counts_per_prefix(key) {
            return halves(key);
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.cfg.ipv6_prefix))
            .unwrap_or(0);
        halves(key & mask)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            sweep_state_dropped: self.sweeps.dropped,
            ..self.stats
        }
    }

    /// Attempts waiting for their answer time before they count toward a sweep.
    pub fn awaiting_answers(&self) -> usize {
        self.sweeps.waiting()
    }

    /// Moves time to `now` without an observation (a quiet interface): returns the sweeps
    /// that became known. The agent calls it at [`Detector::poll_at`].
    pub fn tick(&mut self, now: Nanos) -> Vec<Scan> {
        self.advance(now);
        std::mem::take(&mut self.found)
    }

    /// When [`Detector::tick`] next has something to do: just after the answer time of
    /// the oldest waiting attempt (an answer at exactly `answer_wait` still counts).
    pub fn poll_at(&self) -> Option<Nanos> {
        self.sweeps
            .oldest()
            .map(|ts| ts.saturating_add(self.cfg.answer_wait).saturating_add(1))
    }

    /// The input has ended (the end of a replay): every attempt still waiting for its
    /// answer is judged unanswered. Returns the sweeps that makes.
    pub fn finish(&mut self) -> Vec<Scan> {
        self.judge_due(None);
        std::mem::take(&mut self.found)
    }

    /// The input's time went back a window or more (a capture's sections out of order,
    /// a clock stepped back): what came before is judged as at the input's end
    /// ([`Detector::finish`]) and forgotten, and detection starts again as for a new
    /// capture, so that attempts far apart in time are never joined into one window and
    /// a repeat of a 4-tuple hours later is a new attempt. Totals and configuration
    /// stay. Returns the sweeps the judging makes.
    pub fn restart(&mut self) -> Vec<Scan> {
        let found = self.finish();
        self.now = Nanos::MIN;
        self.last_sweep = Nanos::MIN;
        self.sources = Sources::default();
        self.attempts = Attempts::default();
        self.sweeps = Sweeps::default();
        self.attempt_slots = SlotUse::default();
        self.source_slots = SlotUse::default();
        found
    }

    /// Sources currently tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// 4-tuples currently remembered.
    pub fn tracked_attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Sources with address-sweep state.
    pub fn tracked_sweepers(&self) -> usize {
        self.sweeps.tracked()
    }

    /// Forgets a source's ports and episode (its 4-tuples stay, so retransmissions are
    /// still recognised): once a ban on it is lifted, its next scan is a new episode and is
    /// reported (and banned) again, even if it never paused for a whole window.
    pub fn forget(&mut self, addr: IpAddr) -> bool {
        let key = self.key_of(addr);
        self.sweeps.forget(key);
        self.sources.remove(&key)
    }

    /// Whether `addr` is local or allowlisted under the current configuration, or never
    /// a real source ([`is_special_source`]): reported, never to be blocked.
    pub fn is_allowlisted(&self, addr: IpAddr) -> bool {
        self.cfg.allow.contains(addr)
            || (self.cfg.allow_local && self.cfg.locals.contains(addr))
            || is_special_source(addr)
    }

    /// Whether `addr` is one of the host's addresses.
    pub fn is_local(&self, addr: IpAddr) -> bool {
        self.cfg.locals.contains(addr)
    }

    /// A hint that `obs` is observed soon: starts loading the table slots it will need, so
    /// that a caller holding a batch of observations can overlap their memory latency
    /// (calling it a few observations ahead of [`Detector::observe`]). Changes nothing.
    #[inline]
    pub fn prefetch(&self, obs: &Observation) {
        let Some(probe) = Probe::classify(obs.flags) else {
            return;
        };
        if probe == Probe::Syn {
            self.attempts.prefetch(
                &Tuple4::new(addr_key(obs.src), addr_key(obs.dst), obs.sport, obs.dport),
                self.attempt_slots.likely(),
            );
        }
        self.sources
            .prefetch(&self.key_of(obs.src), self.source_slots.likely());
    }

    /// Takes one segment. Time is the observation's; it never runs backwards here (an
    /// out-of-order timestamp is treated as the latest time seen).
    pub fn observe(&mut self, obs: &Observation) -> Outcome {
        let Some(probe) = Probe::classify(obs.flags) else {
            if self.cfg.sweeps && is_answer(obs.flags) {
                self.advance(obs.ts);
                let tuple = Tuple {
                    client: addr_key(obs.dst),
                    server: addr_key(obs.src),
                    client_port: obs.dport,
                    server_port: obs.sport,
                };
                self.sweeps.answer(tuple, self.now, self.cfg.max_attempts);
            }
            return Outcome {
                seen: Seen::Ignored,
                log: false,
                scan: None,
                sweeps: std::mem::take(&mut self.found),
            };
        };
        self.advance(obs.ts);
        let now = self.now;
        let direction = obs.direction(&self.cfg.locals);

        // The key of what the source counts as, for the 4-tuple and the port count.
        let key = self.key_of(obs.src);
        // While the 4-tuple table has room, every attempt is remembered there, exactly.
        // Only once it is full (where it would evict remembered attempts: a spoofed flood)
        // does a first sighting keep its attempt's mark instead (see `first`).
        let marks = self.attempts.len() >= self.cfg.max_attempts;
        // A new attempt's 4-tuple not remembered yet, and its mark: remembered once the
        // source is known to hold a slot (a first sighting keeps the mark instead).
        let mut unremembered = None;
        let seen = if probe == Probe::Syn {
            let Some(tuple) = self.new_attempt(obs, &key, marks) else {
                self.attempt_slots.note(true);
                self.stats.retransmissions += 1;
                return Outcome {
                    seen: Seen::Retransmission(direction),
                    log: false,
                    scan: None,
                    sweeps: std::mem::take(&mut self.found),
                };
            };
            unremembered = tuple;
            match direction {
                Direction::In => self.stats.attempts_in += 1,
                Direction::Out => self.stats.attempts_out += 1,
            }
            Seen::Attempt(direction)
        } else {
            self.stats.stealth_probes += 1;
            Seen::Stealth(direction, probe)
        };

        let log = probe == Probe::Syn && self.cfg.direction.selects(direction);
        if !self.cfg.direction.counts_toward_scans(direction) {
            self.settle_attempt(probe, unremembered, true);
            return Outcome {
                seen,
                log,
                scan: None,
                sweeps: std::mem::take(&mut self.found),
            };
        }
        let mark = unremembered.filter(|_| marks).map_or(0, |(_, mark)| mark);
        let (scan, tracked) = self.track(obs, probe, (now, &key), mark);
        self.source_slots.note(tracked);
        self.settle_attempt(probe, unremembered, tracked || !marks);
        // A source seen for the first time at the cap (a first sighting) is not counted
        // toward sweeps: under a spoofed flood that is every packet, whose answer would
        // otherwise be waited for and judged, and a sweeper counts from its next attempt.
        if probe == Probe::Syn && self.cfg.sweeps && tracked {
            let tuple = Tuple {
                client: addr_key(obs.src),
                server: addr_key(obs.dst),
                client_port: obs.sport,
                server_port: obs.dport,
            };
            self.sweeps
                .attempt(Pending { ts: now, tuple }, self.cfg.max_attempts);
        }
        if scan.is_some() {
            self.stats.scans += 1;
        }
        Outcome {
            seen,
            log,
            scan,
            sweeps: std::mem::take(&mut self.found),
        }
    }

    /// Judges the waiting attempts whose answer time is over at `now` (all, at `None`),
    /// keeping the sweeps they make in `found`.
    fn judge_due(&mut self, now: Option<Nanos>) {
        let (wait, window) = (self.cfg.answer_wait, self.cfg.window);
        while let Some((p, answered)) = self.sweeps.next_due(now, wait) {
            if let Some(ahead) = self.sweeps.queued(PREFETCH_AHEAD) {
                self.sweeps.prefetch(&self.counted_key(ahead.tuple.client));
            }
            let key = self.counted_key(p.tuple.client);
            if answered {
                self.sweeps.touch(key, p.ts);
                continue;
            }
            let Some(found) = self.sweeps.unanswered(
                key,
                p.ts,
                p.tuple.server,
                p.tuple.server_port,
                window,
                Bounds::new(self.cfg.max_hosts, self.cfg.max_ports),
                self.cfg.max_sources,
                || self.sources.contains(&key),
            ) else {
                continue;
            };
            self.stats.sweeps += 1;
            let src = key_addr(p.tuple.client);
            self.found.push(Scan {
                kind: ScanKind::Sweep,
                ts: p.ts.saturating_add(wait),
                src,
                dst: key_addr(p.tuple.server),
                ports: vec![found.dport],
                probes: Probe::Syn.into(),
                window,
                allowlisted: self.is_allowlisted(src),
                prefix: self.source_of(src).1,
                hosts: found.hosts,
            });
        }
        if let Some(now) = now {
            self.sweeps.prune_answers(now, wait);
        }
    }

    fn advance(&mut self, ts: Nanos) {
        if ts > self.now {
            self.now = ts;
        }
        // A sweep reads every slot of every table, so it runs once a window: expired
        // state stays below the live state (the tables' memory at most doubles), and the
        // lookups, which compare times, give the same answers whether an expired entry was
        // swept or not. Near a cap, where an expired entry takes a live one's room, every
        // quarter window. Measured from the last sweep, not against a deadline: a deadline
        // saturates near i64::MAX and would then sweep on every packet.
        // Attempts whose answer time ran out are judged first: the sweep below must not
        // drop a source's history before its last attempts are counted.
        if self.cfg.sweeps {
            self.judge_due(Some(self.now));
        }
        let near_cap = self.sources.len() * 2 >= self.cfg.max_sources
            || self.sweeps.tracked() * 2 >= self.cfg.max_sources
            || self.attempts.len() * 2 >= self.cfg.max_attempts;
        let period = if near_cap {
            self.cfg.window / 4
        } else {
            self.cfg.window
        }
        .max(1_000_000_000);
        if self.last_sweep == Nanos::MIN || self.now.saturating_sub(self.last_sweep) >= period {
            self.sweep();
        }
    }

    /// Drops every source and 4-tuple whose state lies wholly outside the window.
    fn sweep(&mut self) {
        self.last_sweep = self.now;
        let (now, window) = (self.now, self.cfg.window);
        self.sources.expire(now, window);
        self.attempts.expire(now, window);
        self.sweeps.sweep_stale(now, window);
    }

    /// A SYN (of a source whose key is `key`) against the 4-tuples remembered:
    /// `None` for a retransmission; for a new attempt, its 4-tuple and mark if they are
    /// not remembered yet (the caller has it [`Detector::remember`]ed unless it becomes a
    /// first sighting). The mark is 0 where no first sighting may hold one (none are
    /// kept, and `marks` says none will be).
    fn new_attempt(
        &mut self,
        obs: &Observation,
        key: &Key,
        marks: bool,
    ) -> Option<Option<(Tuple4, u32)>> {
        let tuple = Tuple4::new(addr_key(obs.src), addr_key(obs.dst), obs.sport, obs.dport);
        match self.attempts.again(tuple, self.now, self.cfg.window) {
            Some(true) => return None,
            Some(false) => return Some(None),
            None => {}
        }
        if !marks && !self.sources.first_in_use() {
            return Some(Some((tuple, 0)));
        }
        let mark = self.sources.mark(&tuple);
        if self
            .sources
            .first_repeat(key, mark, self.now, self.cfg.window)
        {
            // A first sighting's attempt again: remembered in full from now on.
            self.remember(tuple);
            return None;
        }
        Some(Some((tuple, mark)))
    }

    /// Remembers a 4-tuple not remembered yet, seen now.
    /// After a probe: remembers a new attempt's 4-tuple (`unremembered`) where
    /// `remember`, and notes for [`Detector::prefetch`] whether a SYN's 4-tuple slot was
    /// read (it was remembered already) or written.
    fn settle_attempt(
        &mut self,
        probe: Probe,
        unremembered: Option<(Tuple4, u32)>,
        remember: bool,
    ) {
        if probe != Probe::Syn {
            return;
        }
        self.attempt_slots.note(remember || unremembered.is_none());
        if remember && let Some((tuple, _)) = unremembered {
            self.remember(tuple);
        }
    }

    fn remember(&mut self, tuple: Tuple4) {
        self.stats.attempts_evicted +=
            self.attempts
                .insert(tuple, self.now, self.cfg.window, self.cfg.max_attempts);
    }

    /// Records `obs` (of an attempt marked `mark`, 0 for none) at `now` against its
    /// source, whose key is `key` ([`Detector::key_of`]);
    /// returns a scan if this observation starts an episode, and whether the source holds
    /// a slot (not if only a first sighting of it was written down, `mark` with it).
    fn track(
        &mut self,
        obs: &Observation,
        probe: Probe,
        (now, &key): (Nanos, &Key),
        mark: u32,
    ) -> (Option<Scan>, bool) {
        let keep = usize::from(self.cfg.max_ports) + 1;
        let window = self.cfg.window;
        // One port alone cannot make a scan (unless `max_ports` is 0): at the cap, a new
        // source's first sighting may wait apart for it to come back.
        let seen = (keep > 1).then(|| {
            let seen = PortSeen {
                last: now,
                port: obs.dport,
                probes: probe.into(),
            };
            (seen, mark)
        });
        // The first sightings hold their attempts' marks in place of the 4-tuple table:
        // room for as many as it would hold, or sixteen per source of the cap.
        let first_entries = self
            .cfg
            .max_sources
            .saturating_mul(16)
            .max(self.cfg.max_attempts);
        let Some((mut source, evicted)) = self.sources.load(
            key,
            (now, window),
            self.cfg.max_sources,
            first_entries,
            seen,
        ) else {
            self.stats.first_sightings += 1;
            return (None, false);
        };
        self.stats.sources_evicted += evicted;

        if now.saturating_sub(source.last_activity) > window {
            source.in_episode = false;
        }
        // A port that left the window ends its run; seen again, it is a new first sighting.
        source
            .ports
            .retain(|p| now.saturating_sub(p.last) <= window);
        // Only the most recently seen ports decide "more than max_ports in the window".
        let drop_oldest = |ports: &mut crate::state::Ports| {
            let oldest = (0..ports.len()).min_by_key(|&i| ports[i].last).unwrap_or(0);
            ports.remove(oldest);
        };
        if let Some(seen) = source.ports.iter_mut().find(|p| p.port == obs.dport) {
            seen.last = now;
            seen.probes.insert(probe);
        } else {
            // Room is made before the newcomer comes in, not after: it is the latest (at
            // `now`, and last of any ties), so the same port goes either way, and the list
            // stays within its inline room instead of spilling to the heap and back on
            // every new port of a scanner.
            if source.ports.len() >= keep {
                drop_oldest(&mut source.ports);
            }
            source.ports.push(PortSeen {
                port: obs.dport,
                probes: probe.into(),
                last: now,
            });
        }
        while source.ports.len() > keep {
            drop_oldest(&mut source.ports);
        }

        let starts = !source.in_episode && source.ports.len() >= keep;
        source.in_episode |= starts;
        self.sources.store(&source, now);
        if !starts {
            return (None, true);
        }
        let ports = &source.ports;
        let probes = ports
            .iter()
            .fold(ProbeSet::default(), |acc, p| acc.union(p.probes));
        let scan = Scan {
            kind: ScanKind::Ports,
            hosts: Vec::new(),
            ts: obs.ts,
            src: obs.src,
            dst: obs.dst,
            ports: ports.iter().map(|p| p.port).collect(),
            probes,
            window,
            allowlisted: self.is_allowlisted(obs.src),
            prefix: self.source_of(obs.src).1,
        };
        (Some(scan), true)
    }
}

/// How many attempts ahead of the one judged the sweep table is prefetched.
const PREFETCH_AHEAD: usize = 8;

/// A SYN-ACK: the answer that tells an attempt was accepted.
#[inline]
fn is_answer(flags: TcpFlags) -> bool {
    flags.has(TcpFlags::SYN | TcpFlags::ACK) && !flags.has(TcpFlags::RST)
}

/// The NAT64 prefixes (RFC 6052's well-known 64:ff9b::/96, RFC 8215's local-use
/// 64:ff9b:1::/48): each address in them stands for an IPv4 host, so their sources
/// count per address, never as one network (a forged scan "from" one would otherwise
/// ban the /64 through which the host reaches all of IPv4).
pub const NAT64_PREFIXES: [Ipv6Net; 2] = [
    match Ipv6Net::new(std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        Ok(n) => n,
        Err(_) => unreachable!(),
    },
    match Ipv6Net::new(std::net::Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48) {
        Ok(n) => n,
        Err(_) => unreachable!(),
    },
];

/// Whether `addr` is never a real source: loopback, unspecified, broadcast, multicast,
/// 0.0.0.0/8 or IPv6's discard-only 100::/64 (an IPv4-mapped address as the IPv4 address
/// it maps). The kernel answers nothing from one, and a scan "from" one is forged: it is
/// reported, and never blocked.
pub fn is_special_source(addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    let never_a_source = match addr {
        IpAddr::V4(a) => a.octets()[0] == 0,
        IpAddr::V6(a) => a.segments()[..4] == [0x100, 0, 0, 0],
    };
    never_a_source
        || addr.is_loopback()
        || addr.is_unspecified()
        || addr.is_multicast()
        || addr == IpAddr::from([255, 255, 255, 255])
}

/// The link-local range: every link's fe80::/64 holds the host's own link-local address
/// and its router's, so its sources count per address even where the host's own are not
/// known (replay without `--local`): neighbours on the link are never lumped together,
/// and a forged scan "from" one of them never bans the others.
pub const LINK_LOCAL: Ipv6Net =
    match Ipv6Net::new(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
        Ok(n) => n,
        Err(_) => unreachable!(),
    };

/// IPv6 loopback: its /64 (`::/64`, which holds the IPv4-compatible and -mapped forms
/// too) counts per address even where the host's own addresses are not known (replay
/// without `--local`), so that a scan lumped from `::a.b.c.d` sources never crosses on a
/// forged `::1`, which is never banned.
const LOOPBACK6: Ipv6Net = match Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128) {
    Ok(n) => n,
    Err(_) => unreachable!(),
};

/// The IPv6 networks whose sources count per address although `cfg.ipv6_prefix` is
/// shorter: those at that length that hold a local, neighbour or allowlisted address
/// (an `--allow` range narrower than the prefix), a NAT64 prefix or the loopback
/// address, and the local ranges, NAT64 prefixes and the link-local range wider than
/// it. The XDP program is given the same list.
pub fn per_address_prefixes(cfg: &Config) -> AddrSet {
    let mut shared = AddrSet::new();
    if cfg.ipv6_prefix >= 128 {
        return shared;
    }
    // An allowlisted range as wide as the prefix or wider holds only allowlisted
    // sources: counting them together lumps no one else in.
    let allowed = cfg.allow.iter().filter(|n| match n {
        IpNet::V6(n) => n.prefix_len() > cfg.ipv6_prefix,
        IpNet::V4(_) => false,
    });
    let nat64 = NAT64_PREFIXES.iter().map(|&n| IpNet::V6(n));
    for net in cfg
        .locals
        .iter()
        .chain(cfg.neighbours.iter())
        .chain(allowed)
        .chain(nat64)
        .chain([IpNet::V6(LINK_LOCAL), IpNet::V6(LOOPBACK6)])
    {
        if let IpNet::V6(n) = net {
            let wide = if n.prefix_len() >= cfg.ipv6_prefix {
                Ipv6Net::new(n.network(), cfg.ipv6_prefix).map(|w| w.trunc())
            } else {
                Ok(n.trunc())
            };
            if let Ok(w) = wide {
                shared.insert(IpNet::V6(w));
            }
        }
    }
    shared
}

#[cfg(test)]
mod sizing {
    use super::*;

    #[test]
    fn timestamps_at_the_end_of_time_do_not_sweep_every_packet() {
        let mut d = Detector::new(Config::default());
        let mut sweeps_seen = 0;
        let mut last = Nanos::MIN;
        for i in 0..1000u32 {
            let o = Observation {
                foreign: false,
                ts: Nanos::MAX - 10_000_000_000 + i64::from(i),
                src: IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)),
                dst: IpAddr::from([10, 0, 0, 5]),
                sport: 1,
                dport: 80,
                flags: TcpFlags(TcpFlags::SYN),
            };
            d.observe(&o);
            if d.last_sweep != last {
                sweeps_seen += 1;
                last = d.last_sweep;
            }
        }
        assert_eq!(sweeps_seen, 1, "one sweep at the first packet, none after");
    }

    #[test]
    fn tables_stay_near_their_caps_under_a_spoofed_flood() {
        let cfg = Config {
            max_sources: 10_000,
            max_attempts: 20_000,
            ..Config::default()
        };
        let mut d = Detector::new(cfg);
        for i in 0..300_000u32 {
            let o = Observation {
                foreign: false,
                ts: i64::from(i) * 1000,
                src: IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)),
                dst: IpAddr::from([10, 0, 0, 5]),
                sport: 1,
                dport: 80,
                flags: TcpFlags(TcpFlags::SYN),
            };
            d.observe(&o);
            assert!(d.sources.len() <= 10_000 && d.attempts.len() <= 20_000);
        }
        // The tables keep at most 1/2 of their slots full and round to powers of two:
        // under 4 slots an entry, so four times the cap bounds the allocation.
        assert!(
            d.sources.capacity() <= 4 * 10_000,
            "{}",
            d.sources.capacity()
        );
        assert!(
            d.attempts.capacity() <= 4 * 20_000,
            "{}",
            d.attempts.capacity()
        );
    }
}

#[cfg(test)]
mod keys {
    use super::*;
    use crate::parse_cidr;

    #[test]
    fn the_hot_path_key_is_the_key_of_what_source_of_counts_an_address_as() {
        let set = |nets: &[&str]| -> AddrSet {
            nets.iter().map(|n| parse_cidr(n).expect("cidr")).collect()
        };
        let addrs = [
            "198.51.100.7",
            "0.0.0.0",
            "255.255.255.255",
            "::ffff:198.51.100.7",
            "::",
            "::1",
            "2001:db8:77:1::2",
            "2001:db8:77:1:ffff:ffff:ffff:ffff",
            "2001:db8:5::9",
            "2001:db8:5:0:1::9",
            "fe80::1",
            "64:ff9b::102:304",
            "64:ff9b:1:ab::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for prefix in [48, 56, 63, 64, 65, 100, 127, 128] {
            let det = Detector::new(Config {
                ipv6_prefix: prefix,
                locals: set(&["2001:db8:5::1", "192.0.2.1"]),
                allow: set(&["2001:db8:6::/56"]),
                neighbours: set(&["fe80::1"]),
                ..Config::default()
            });
            for a in addrs {
                let addr: IpAddr = a.parse().expect("address");
                assert_eq!(
                    det.key_of(addr),
                    halves(addr_key(det.source_of(addr).0)),
                    "{a} at /{prefix}"
                );
            }
        }
    }
}
