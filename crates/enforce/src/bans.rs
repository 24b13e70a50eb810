//! The ban lifecycle, independent of any backend: how long a ban lasts, repeat offenders,
//! the cap on new bans per minute (shared between networks, with the scans it refuses
//! waiting for room: see `waiting.rs`), and expiry. Pure: time (Unix seconds) is an argument,
//! and whether an address is protected (local or allowlisted) is the caller's answer,
//! asked again at ban time.
//!
//! A ban is of a network: an address is a /32 or /128, a range anything wider (a
//! scanner's IPv6 /64, `synwatch blocks add 198.51.100.0/24`). The book never holds one
//! range inside another, which is also what nftables' interval sets require: a ban inside
//! a running one is refused as already banned, and a range banned over running bans of
//! networks inside it absorbs them (they are lifted, reported with the reason
//! "covered", and the range stands for them; see [`Book::take_absorbed`]). One exception:
//! an address ban that outlives the range around it (one until removed inside a range of
//! an hour) stands beside it, in the backends' sets of addresses, so that it still holds
//! once the range is over; a range absorbing it would end it early, and an attacker
//! banned until removed could free himself by scanning from his /64.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::waiting::{Waiting, network};
use crate::{Ban, ban_net, is_host};

/// How bans are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A first ban's length in seconds; 0 bans until removed.
    pub duration_secs: u64,
    /// Repeat offenders get twice their previous ban, up to this. A source whose last ban
    /// ended longer than this ago starts again at `duration_secs`.
    pub max_secs: u64,
    /// New automatic bans allowed in any 60 seconds; 0 for no cap.
    pub per_minute: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            duration_secs: 3600,
            max_secs: 86_400,
            per_minute: 60,
        }
    }
}

/// One active ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What is banned: an address (a /32 or /128) or a range, canonical
    /// ([`crate::ban_net`]).
    pub net: IpNet,
    /// When it began (Unix seconds).
    pub since: i64,
    /// When it ends; `None` lasts until removed.
    pub expires: Option<i64>,
    /// Why: the scan's ports, or "manual".
    pub reason: String,
    /// How many bans in a row this source has had, this one included.
    pub offences: u32,
    /// Only new connections are dropped: the source held an established connection to
    /// this host when it was banned, and its sessions live on.
    pub new_only: bool,
}

impl Record {
    /// The ban as the kernel should hold it at `now`.
    pub fn ban(&self, now: i64) -> Ban {
        Ban {
            net: self.net,
            timeout_secs: self
                .expires
                .map(|e| u64::try_from(e.saturating_sub(now)).unwrap_or(0).max(1)),
            new_only: self.new_only,
        }
    }
}

/// Whether a ban of `net` ending at `expires` (`None`: until removed), inside the
/// running `range`, stands beside it rather than being absorbed: an address that
/// outlives the range, so the range cannot stand for it. Ranges inside ranges never
/// stand (nftables' interval sets refuse them).
fn stands_inside(net: IpNet, expires: Option<i64>, range: &Record) -> bool {
    is_host(net)
        && match (expires, range.expires) {
            (None, Some(_)) => true,
            (Some(b), Some(r)) => b > r,
            (_, None) => false,
        }
}

/// New bans one network may take in any minute: a quarter of the cap (at least one), so
/// that no /24 or /48 can take it all.
pub fn network_share(per_minute: usize) -> usize {
    per_minute.div_ceil(4).max(1)
}

/// A past offender: offences so far and when the last ban ends (or ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offender {
    pub offences: u32,
    pub last_until: i64,
}

/// Why a ban was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A local or allowlisted address.
    Protected,
    /// The cap on new bans per minute was reached, or the room it has goes to a waiting
    /// scan with stronger evidence: the scan waits.
    RateLimited,
    /// The source's network (/24, /48) has had its share of the cap this minute: the scan
    /// waits.
    NetworkShare,
    /// Already banned; nothing to do.
    AlreadyBanned,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Protected => "allowlisted",
            Refused::RateLimited => "rate_limited",
            Refused::NetworkShare => "network_share",
            Refused::AlreadyBanned => "already_banned",
        }
    }
}

/// The active bans and the memory of past offenders.
#[derive(Debug, Clone)]
pub struct Book {
    policy: Policy,
    active: HashMap<IpNet, Record>,
    /// How many active bans are ranges of each (family is IPv6, prefix length): where to
    /// look for a range covering a network.
    ranges: BTreeMap<(bool, u8), usize>,
    /// The active networks in address order: the bans inside a range are a slice of it.
    order: BTreeSet<IpNet>,
    /// Bans lifted because a range banned over them stands for them, not yet collected
    /// by [`Book::take_absorbed`].
    absorbed: Vec<Record>,
    offenders: HashMap<IpNet, Offender>,
    /// New automatic bans of the last minute: when, and the network.
    recent: VecDeque<(i64, IpAddr)>,
    /// Scans the cap refused, waiting for room.
    waiting: Waiting,
    /// No active ban ends before this (a lower bound, so that looking for expired bans
    /// costs nothing until one is due).
    earliest: Option<i64>,
    /// When past offenders were last pruned.
    pruned_at: i64,
}

impl Book {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            active: HashMap::new(),
            ranges: BTreeMap::new(),
            order: BTreeSet::new(),
            absorbed: Vec::new(),
            offenders: HashMap::new(),
            recent: VecDeque::new(),
            waiting: Waiting::default(),
            earliest: None,
            pruned_at: i64::MIN,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Takes back saved state (after a restart); records already over at `now` are
    /// returned rather than kept, so the caller can report and forget them. A record
    /// inside a restored range is not kept either: [`Book::take_absorbed`] has it.
    pub fn restore(
        &mut self,
        records: Vec<Record>,
        offenders: Vec<(IpNet, Offender)>,
        now: i64,
    ) -> Vec<Record> {
        self.offenders.extend(offenders);
        let mut over = Vec::new();
        // Wider first, so that a (stale) ban inside a restored range is left out.
        let mut records = records;
        records.sort_by_key(|r| r.net.prefix_len());
        for r in records {
            if r.expires.is_some_and(|e| e <= now) {
                over.push(r);
            } else if self
                .covering(r.net)
                .is_none_or(|range| stands_inside(r.net, r.expires, range))
            {
                self.note_expiry(r.expires);
                for inside in self.covered(r.net) {
                    if let Some(stale) = self.take(inside) {
                        self.absorbed.push(stale);
                    }
                }
                self.put(r);
            } else {
                // Inside a restored range (saved by hand, or before it): the range stands
                // for it; the caller forgets it with the absorbed ones.
                self.absorbed.push(r);
            }
        }
        over
    }

    /// The ban of exactly `net`.
    pub fn get(&self, net: IpNet) -> Option<&Record> {
        self.active.get(&ban_net(net))
    }

    /// The running ban that holds `net`: a ban of `net` itself or of a range around it.
    pub fn covering(&self, net: IpNet) -> Option<&Record> {
        let net = ban_net(net);
        if let Some(r) = self.active.get(&net) {
            return Some(r);
        }
        let v6 = matches!(net, IpNet::V6(_));
        self.ranges
            .range((v6, 0)..(v6, net.prefix_len()))
            .find_map(|(&(_, len), _)| {
                let outer = IpNet::new(net.addr(), len).ok()?.trunc();
                self.active.get(&outer)
            })
    }

    /// The running bans strictly inside `net` (none when `net` is an address).
    fn covered(&self, net: IpNet) -> Vec<IpNet> {
        if is_host(net) {
            return Vec::new();
        }
        // Networks inside `net` start at an address inside it; in address order they lie
        // between its first address and its last.
        let (Ok(lo), Ok(hi)) = (
            IpNet::new(net.network(), 0),
            IpNet::new(net.broadcast(), net.max_prefix_len()),
        ) else {
            return Vec::new();
        };
        self.order
            .range(lo..=hi)
            .filter(|&&k| k != net && net.contains(&k))
            .copied()
            .collect()
    }

    fn put(&mut self, r: Record) {
        self.order.insert(r.net);
        if !is_host(r.net) {
            *self
                .ranges
                .entry((matches!(r.net, IpNet::V6(_)), r.net.prefix_len()))
                .or_default() += 1;
        }
        self.active.insert(r.net, r);
    }

    fn take(&mut self, net: IpNet) -> Option<Record> {
        let r = self.active.remove(&net)?;
        self.order.remove(&net);
        if !is_host(net) {
            let key = (matches!(net, IpNet::V6(_)), net.prefix_len());
            if let Some(n) = self.ranges.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.ranges.remove(&key);
                }
            }
        }
        Some(r)
    }

    /// Bans lifted since the last call because a range banned over them stands for them:
    /// the caller removes them from the kernel (before adding the range, which nftables
    /// would otherwise refuse as overlapping) and from the saved state.
    pub fn take_absorbed(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.absorbed)
    }

    pub fn active(&self) -> impl Iterator<Item = &Record> {
        self.active.values()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// How many of the active bans are ranges (networks wider than one address).
    pub fn ranges(&self) -> usize {
        self.ranges.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn offender(&self, net: IpNet) -> Option<Offender> {
        self.offenders.get(&ban_net(net)).copied()
    }

    /// An automatic ban for a scan from `addr` (an address or the network it counts in):
    /// refused when protected, already banned (by itself or a range around it), or over
    /// the per-minute cap.
    pub fn scan(
        &mut self,
        addr: IpNet,
        reason: String,
        now: i64,
        protected: bool,
    ) -> Result<Record, Refused> {
        self.scan_ports(addr, reason, &[], now, protected)
    }

    /// The same, with the ports the scan reached (its evidence). A scan the cap refuses
    /// ([`Refused::RateLimited`], [`Refused::NetworkShare`]) waits: see [`Book::promote`].
    pub fn scan_ports(
        &mut self,
        addr: IpNet,
        reason: String,
        ports: &[u16],
        now: i64,
        protected: bool,
    ) -> Result<Record, Refused> {
        let addr = ban_net(addr);
        if protected {
            return Err(Refused::Protected);
        }
        if self.covering(addr).is_some() {
            return Err(Refused::AlreadyBanned);
        }
        if let Err(why) = self.room(addr, now) {
            self.waiting.add(addr, reason, ports, now);
            return Err(why);
        }
        if self.waiting.is_empty() {
            self.recent.push_back((now, network(addr.addr())));
            return Ok(self.give(addr, reason, now, None));
        }
        // Scans wait: a slot the cap freed goes to the strongest evidence, and the
        // newcomer competes for it from the queue, on the same footing (a trickle of
        // invented scanners must not take every freed slot before the waiting get it).
        self.waiting.add(addr, reason, ports, now);
        self.admit(addr, now)?;
        let Some(w) = self.waiting.remove(addr) else {
            return Err(Refused::RateLimited);
        };
        self.recent.push_back((now, network(addr.addr())));
        Ok(self.give(addr, w.reason, now, None))
    }

    /// Whether the waiting scan of `addr` may take a slot of the cap now: the cap has
    /// room for it (in all, and in its network's share), and no waiting scan with
    /// stronger evidence (or as strong and more recently active) whose network has room
    /// is ahead of it. A scan that is not waiting (a newcomer the full queue did not
    /// keep) is refused.
    fn admit(&mut self, addr: IpNet, now: i64) -> Result<(), Refused> {
        self.room(addr, now)?;
        let share = network_share(self.policy.per_minute as usize);
        let mut taken: HashMap<IpAddr, usize> = HashMap::new();
        for &(_, net) in &self.recent {
            *taken.entry(net).or_default() += 1;
        }
        let best = self.waiting.best(|a| {
            taken.get(&network(a.addr())).copied().unwrap_or(0) < share
                && self.covering(a).is_none()
        });
        match best {
            Some(b) if b == addr => Ok(()),
            _ => Err(Refused::RateLimited),
        }
    }

    /// Whether the cap leaves room for a new ban of `addr` at `now`: fewer than
    /// `per_minute` new bans in the last minute, and fewer than its network's share.
    fn room(&mut self, addr: IpNet, now: i64) -> Result<(), Refused> {
        while self.recent.front().is_some_and(|&(t, _)| t <= now - 60) {
            self.recent.pop_front();
        }
        let cap = self.policy.per_minute as usize;
        if cap == 0 {
            return Ok(());
        }
        if self.recent.len() >= cap {
            return Err(Refused::RateLimited);
        }
        let net = network(addr.addr());
        if self.recent.iter().filter(|(_, n)| *n == net).count() >= network_share(cap) {
            return Err(Refused::NetworkShare);
        }
        Ok(())
    }

    /// The source of a waiting scan was seen again, reaching `port` (more evidence, and
    /// still active): the scan of the address, or of a range holding it.
    pub fn touch(&mut self, addr: IpAddr, port: u16, now: i64) {
        self.waiting.touch_covering(addr, port, now);
    }

    /// Scans waiting for room.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Waiting scans dropped since the last call: pushed out of the door of the full
    /// queue by more recently active ones (the full queue's weakest, or a newcomer weaker
    /// still, waits at its door first).
    pub fn take_evicted(&mut self) -> usize {
        self.waiting.take_dropped()
    }

    /// Bans waiting scans while the cap has room, strongest evidence first, skipping
    /// those whose network has had its share (they wait on) and forgetting those whose
    /// source was quiet for `quiet_secs` (the episode is over) or became protected.
    /// Returns the bans given and how many waiting scans were forgotten.
    pub fn promote(
        &mut self,
        now: i64,
        quiet_secs: i64,
        protected: impl Fn(IpNet) -> bool,
    ) -> (Vec<Record>, usize) {
        if self.waiting.is_empty() {
            return (Vec::new(), 0);
        }
        let before = self.waiting.len();
        self.waiting.prune(now.saturating_sub(quiet_secs));
        let covered: HashSet<IpNet> = self
            .waiting
            .keys()
            .filter(|&a| self.covering(a).is_some())
            .collect();
        self.waiting
            .retain(|a| !protected(a) && !covered.contains(&a));
        let forgotten = before - self.waiting.len();
        let mut given = Vec::new();
        // Networks found without room this round (at most one look each).
        let mut full: Vec<IpAddr> = Vec::new();
        while let Some(addr) = self.waiting.best(|a| !full.contains(&network(a.addr()))) {
            match self.room(addr, now) {
                Ok(()) => {
                    let Some(w) = self.waiting.remove(addr) else {
                        break;
                    };
                    self.recent.push_back((now, network(addr.addr())));
                    given.push(self.give(addr, w.reason, now, None));
                }
                Err(Refused::NetworkShare) => full.push(network(addr.addr())),
                Err(_) => break,
            }
        }
        (given, forgotten)
    }

    /// Makes `addr`'s running ban one on new connections only (its source holds an
    /// established connection to this host). Returns the updated record.
    pub fn mark_new_only(&mut self, addr: IpNet) -> Option<Record> {
        let r = self.active.get_mut(&ban_net(addr))?;
        r.new_only = true;
        Some(r.clone())
    }

    /// Whether a scan of `addr` waits for the cap.
    pub fn is_waiting(&self, addr: IpNet) -> bool {
        self.waiting.holds(&ban_net(addr))
    }

    /// The kernel banned a waiting source by itself (the XDP program's own detection,
    /// which has no cap of its own): the ban is given, counted against the cap, only when
    /// the cap would give it now (room for it, and no stronger waiting scan ahead of
    /// it). Otherwise `None`: the scan waits on, and the caller lifts the kernel's ban.
    pub fn take_waiting(&mut self, addr: IpNet, now: i64) -> Option<Record> {
        let addr = ban_net(addr);
        if !self.waiting.contains(addr) || self.covering(addr).is_some() {
            return None;
        }
        self.admit(addr, now).ok()?;
        let w = self.waiting.remove(addr)?;
        self.recent.push_back((now, network(addr.addr())));
        Some(self.give(addr, w.reason, now, None))
    }

    /// A ban asked for by the operator: no cap, and `secs` (0 = until removed) or the
    /// policy's length with doubling when `None`. Replaces an active ban of the same
    /// network; a network inside a running range is refused as already banned (with
    /// the range's record); a range absorbs the bans inside it.
    pub fn manual(
        &mut self,
        addr: IpNet,
        secs: Option<u64>,
        now: i64,
    ) -> Result<Record, (Refused, Record)> {
        self.given(addr, secs, "manual".into(), now)
    }

    /// A ban given from outside with its reason (a manual one, a decision of the fleet's
    /// CrowdSec Local API): replaces a ban of the same network (as the same offence: asked
    /// for again, it is not doubled), is refused inside a wider running one, and neither
    /// waits for nor counts against the cap.
    pub fn given(
        &mut self,
        addr: IpNet,
        secs: Option<u64>,
        reason: String,
        now: i64,
    ) -> Result<Record, (Refused, Record)> {
        let addr = ban_net(addr);
        if let Some(r) = self.covering(addr)
            && r.net != addr
        {
            let (_, expires) = self.length(addr, now, secs);
            if !stands_inside(addr, expires, r) {
                return Err((Refused::AlreadyBanned, r.clone()));
            }
        }
        if let Some(r) = self.take(addr) {
            // The running ban's offence, asked for again: counted once.
            self.offenders.insert(
                addr,
                Offender {
                    offences: r.offences.saturating_sub(1),
                    last_until: now,
                },
            );
        }
        Ok(self.give(addr, reason, now, secs))
    }

    /// The offence count and end of a ban of `addr` given at `now`: `secs` long, or the
    /// policy's length doubled per earlier offence when `None`.
    fn length(&self, addr: IpNet, now: i64, secs: Option<u64>) -> (u32, Option<i64>) {
        let max = self.policy.max_secs.max(self.policy.duration_secs);
        let offences = match self.offenders.get(&addr) {
            Some(o) if now.saturating_sub(o.last_until) <= max as i64 => {
                o.offences.saturating_add(1)
            }
            _ => 1,
        };
        let length = secs.unwrap_or_else(|| match self.policy.duration_secs {
            0 => 0,
            base => {
                let doubled = base.saturating_mul(1u64 << (offences - 1).min(40));
                doubled.min(max)
            }
        });
        (
            offences,
            (length > 0).then(|| now.saturating_add(length as i64)),
        )
    }

    fn give(&mut self, addr: IpNet, reason: String, now: i64, secs: Option<u64>) -> Record {
        let (offences, expires) = self.length(addr, now, secs);
        let record = Record {
            net: addr,
            since: now,
            expires,
            reason,
            offences,
            new_only: false,
        };
        self.offenders.insert(
            addr,
            Offender {
                offences,
                last_until: expires.unwrap_or(i64::MAX),
            },
        );
        self.note_expiry(expires);
        for inside in self.covered(addr) {
            if self
                .active
                .get(&inside)
                .is_some_and(|r| stands_inside(r.net, r.expires, &record))
            {
                continue;
            }
            if let Some(r) = self.take(inside) {
                self.absorbed.push(r);
            }
        }
        self.put(record.clone());
        record
    }

    fn note_expiry(&mut self, expires: Option<i64>) {
        if let Some(e) = expires {
            self.earliest = Some(self.earliest.map_or(e, |x| x.min(e)));
        }
    }

    /// Lifts a ban now (the operator's `remove`): the source's offences are forgiven.
    pub fn remove(&mut self, addr: IpNet) -> Option<Record> {
        let addr = ban_net(addr);
        self.offenders.remove(&addr);
        self.take(addr)
    }

    /// Lifts the bans `pred` selects (networks that became protected, or came to cover a
    /// protected address); their offences are forgiven. Returns the networks.
    pub fn release(&mut self, pred: impl Fn(IpNet) -> bool) -> Vec<IpNet> {
        self.waiting.retain(|a| !pred(a));
        let addrs: Vec<IpNet> = self.active.keys().copied().filter(|a| pred(*a)).collect();
        for addr in &addrs {
            self.remove(*addr);
        }
        addrs
    }

    /// Lifts every ban.
    pub fn flush(&mut self) -> Vec<Record> {
        self.offenders.clear();
        self.waiting.clear();
        self.ranges.clear();
        self.order.clear();
        self.active.drain().map(|(_, r)| r).collect()
    }

    /// The bans over at `now`, removed from the book; past offenders remembered longer
    /// than the policy's `max_secs` are forgotten.
    pub fn expire(&mut self, now: i64) -> Vec<Record> {
        let max = self.policy.max_secs.max(self.policy.duration_secs) as i64;
        if now.saturating_sub(self.pruned_at) >= 60 {
            self.pruned_at = now;
            self.offenders
                .retain(|_, o| now.saturating_sub(o.last_until) <= max);
        }
        if self.earliest.is_none_or(|e| e > now) {
            return Vec::new();
        }
        let over: Vec<IpNet> = self
            .active
            .values()
            .filter(|r| r.expires.is_some_and(|e| e <= now))
            .map(|r| r.net)
            .collect();
        let over: Vec<Record> = over.into_iter().filter_map(|a| self.take(a)).collect();
        self.earliest = self.active.values().filter_map(|r| r.expires).min();
        over
    }

    /// No ban ends before this (it may be earlier than the real next expiry after a
    /// removal), to know when to look again.
    pub fn next_expiry(&self) -> Option<i64> {
        self.earliest
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpNet {
        crate::parse_net(s).unwrap()
    }

    fn book(duration: u64, max: u64, per_minute: u32) -> Book {
        Book::new(Policy {
            duration_secs: duration,
            max_secs: max,
            per_minute,
        })
    }

    #[test]
    fn a_scan_is_banned_for_the_policy_duration() {
        let mut b = book(3600, 86_400, 60);
        let r = b
            .scan(ip("192.0.2.1"), "21,22,23,25".into(), 1000, false)
            .unwrap();
        assert_eq!(r.expires, Some(4600));
        assert_eq!(r.offences, 1);
        assert_eq!(r.ban(1000).timeout_secs, Some(3600));
        assert_eq!(r.ban(4599).timeout_secs, Some(1));
        assert_eq!(
            b.scan(ip("192.0.2.1"), String::new(), 1001, false),
            Err(Refused::AlreadyBanned)
        );
    }

    #[test]
    fn protected_addresses_are_never_banned() {
        let mut b = book(3600, 86_400, 60);
        assert_eq!(
            b.scan(ip("10.0.0.1"), String::new(), 0, true),
            Err(Refused::Protected)
        );
        assert!(b.is_empty());
    }

    #[test]
    fn repeat_offenders_get_doubled_bans_up_to_the_cap() {
        let mut b = book(100, 350, 0);
        let a = ip("2001:db8::9");
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let r = b.scan(a, String::new(), now, false).unwrap();
            lengths.push(r.expires.unwrap() - now);
            now = r.expires.unwrap();
            assert_eq!(b.expire(now).len(), 1);
            now += 10;
        }
        assert_eq!(lengths, [100, 200, 350, 350]);
        // Quiet for longer than the cap: back to the first length.
        now += 351;
        b.expire(now);
        assert_eq!(b.offender(a), None);
        let r = b.scan(a, String::new(), now, false).unwrap();
        assert_eq!(r.expires.unwrap() - now, 100);
    }

    #[test]
    fn the_rate_cap_refuses_bans_beyond_it_for_a_minute() {
        let mut b = book(3600, 86_400, 3);
        for i in 0..3 {
            assert!(
                b.scan(ip(&format!("10.{i}.0.1")), String::new(), 100, false)
                    .is_ok()
            );
        }
        assert_eq!(
            b.scan(ip("192.0.2.9"), String::new(), 159, false),
            Err(Refused::RateLimited)
        );
        assert_eq!(b.waiting(), 1);
        assert!(b.scan(ip("192.0.2.9"), String::new(), 160, false).is_ok());
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn one_network_gets_a_quarter_of_the_cap_and_the_rest_waits_its_turn() {
        let mut b = book(3600, 86_400, 8);
        assert_eq!(network_share(8), 2);
        assert!(b.scan(ip("192.0.2.1"), String::new(), 0, false).is_ok());
        assert!(b.scan(ip("192.0.2.2"), String::new(), 0, false).is_ok());
        assert_eq!(
            b.scan(ip("192.0.2.3"), String::new(), 0, false),
            Err(Refused::NetworkShare)
        );
        // Another network still has room; the same /48 of IPv6 shares one budget.
        assert!(b.scan(ip("198.51.100.1"), String::new(), 0, false).is_ok());
        assert!(
            b.scan(ip("2001:db8:1:1::1"), String::new(), 0, false)
                .is_ok()
        );
        assert!(
            b.scan(ip("2001:db8:1:2::1"), String::new(), 0, false)
                .is_ok()
        );
        assert_eq!(
            b.scan(ip("2001:db8:1:3::1"), String::new(), 0, false),
            Err(Refused::NetworkShare)
        );
        // A minute later the waiting scans get their turn, while still active.
        b.touch(ip("192.0.2.3").addr(), 80, 50);
        b.touch(ip("2001:db8:1:3::1").addr(), 80, 50);
        let (given, forgotten) = b.promote(59, 60, |_| false);
        assert!(given.is_empty() && forgotten == 0);
        let (given, _) = b.promote(60, 60, |_| false);
        let mut addrs: Vec<IpNet> = given.iter().map(|r| r.net).collect();
        addrs.sort();
        assert_eq!(addrs, [ip("192.0.2.3"), ip("2001:db8:1:3::1")]);
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn a_waiting_scan_whose_source_went_quiet_or_protected_is_forgotten() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("10.0.0.1"), String::new(), 0, false).unwrap();
        b.scan(ip("192.0.2.1"), String::new(), 0, false)
            .unwrap_err();
        b.scan(ip("198.51.100.1"), String::new(), 0, false)
            .unwrap_err();
        b.touch(ip("198.51.100.1").addr(), 9, 30);
        // At 61 the cap has room, but 192.0.2.1 was quiet for a whole window (60 s).
        let (given, forgotten) = b.promote(61, 60, |a| a == ip("198.51.100.1"));
        assert!(given.is_empty());
        assert_eq!(forgotten, 2, "one quiet, one now protected");
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn scans_dropped_from_the_full_queue_are_counted() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("10.0.0.1"), String::new(), 0, false).unwrap();
        let full = crate::waiting::MAX_WAITING + crate::waiting::MAX_AT_DOOR;
        for i in 0..full as u32 + 3 {
            let a = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
                0xc000_0000 + (i << 8),
            )));
            let _ = b.scan_ports(a, String::new(), &[1, 2, 3, 4], 1, false);
        }
        assert_eq!(b.waiting(), full);
        assert_eq!(b.take_evicted(), 3);
        assert_eq!(b.take_evicted(), 0);
    }

    /// The red team's F3: the XDP program bans in the kernel with no cap; its bans of
    /// scans the cap made wait are given only as the cap allows.
    #[test]
    fn a_ban_the_kernel_made_on_a_waiting_source_is_given_only_as_the_cap_allows() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("10.0.0.1"), String::new(), 0, false).unwrap();
        assert_eq!(
            b.scan(ip("192.0.2.1"), "ports 1,2,3,4".into(), 0, false),
            Err(Refused::RateLimited)
        );
        assert_eq!(
            b.take_waiting(ip("192.0.2.1"), 1),
            None,
            "no room: it waits"
        );
        assert!(b.is_waiting(ip("192.0.2.1")));
        assert!(b.get(ip("192.0.2.1")).is_none());
        b.touch(ip("192.0.2.1").addr(), 5, 59);
        let r = b.take_waiting(ip("192.0.2.1"), 60).unwrap();
        assert_eq!(r.reason, "ports 1,2,3,4");
        assert!(b.get(ip("192.0.2.1")).is_some());
        assert!(!b.is_waiting(ip("192.0.2.1")));
        assert_eq!(b.take_waiting(ip("192.0.2.9"), 61), None);
    }

    /// Five hundred invented scanners (two hundred of one /24) the kernel banned by
    /// itself: the cap's sixty a minute are kept, fifteen of them from the one /24.
    #[test]
    fn kernel_bans_of_a_forged_flood_keep_to_the_cap_and_the_network_shares() {
        let mut b = book(3600, 86_400, 60);
        let mut kernel = Vec::new();
        for i in 0..500u32 {
            let a = if i < 200 {
                IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0ac8_0000 + i)))
            } else {
                IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
                    0x0a64_0009 + (i << 8),
                )))
            };
            let _ = b.scan(a, "forged".into(), i64::from(i / 100), false);
            kernel.push(a);
        }
        for (i, a) in kernel.iter().enumerate() {
            let _ = b.take_waiting(*a, 5 + i as i64 / 100);
        }
        assert_eq!(b.len(), 60);
        let one24 = b
            .active()
            .filter(|r| network(r.net.addr()) == network(ip("10.200.0.0").addr()))
            .count();
        assert_eq!(one24, 15);
    }

    /// A forger queues 200 invented scanners from random networks, then keeps adding five
    /// a second; a real scanner that keeps reaching new ports is banned within about one
    /// cap period of the moment the cap was filled.
    #[test]
    fn a_forged_flood_of_scanners_cannot_keep_a_real_one_unbanned() {
        let mut b = book(3600, 86_400, 60);
        // A small deterministic generator of "random" networks.
        let mut x: u32 = 0x2545_f491;
        let mut invented = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(x | 0x0100_0000)))
        };
        for _ in 0..200 {
            let _ = b.scan_ports(invented(), "forged".into(), &[21, 22, 23, 25], 0, false);
        }
        assert_eq!(b.len(), 60, "the first comers took the whole cap");
        assert_eq!(b.waiting(), 140);
        let real = ip("203.0.113.66");
        let mut banned_at = None;
        for now in 1..=300i64 {
            if now == 1 {
                assert_eq!(
                    b.scan_ports(real, "real".into(), &[1, 2, 3, 4], now, false),
                    Err(Refused::RateLimited)
                );
            }
            for _ in 0..5 {
                let _ = b.scan_ports(invented(), "forged".into(), &[21, 22, 23, 25], now, false);
            }
            // The real scanner keeps scanning: a new port every second.
            if banned_at.is_none() {
                b.touch(real.addr(), 1000 + now as u16, now);
            }
            let (given, _) = b.promote(now, 60, |_| false);
            if given.iter().any(|r| r.net == real) {
                banned_at = Some(now);
            }
        }
        assert_eq!(
            banned_at,
            Some(60),
            "banned as soon as the first slot freed"
        );
        // The queue stays bounded however long the forger goes on (1,640 forged in all,
        // 60 a minute banned, the quiet ones forgotten).
        assert!(b.waiting() <= crate::waiting::MAX_WAITING);
        assert_eq!(b.take_evicted(), 0);
    }

    /// The red team's lock-out: a forger fills the queue with invented scanners and keeps
    /// each one reaching a new port every 50 s (a second of evidence each, more than a
    /// newcomer has), inventing four more a second to take every place a ban frees: about
    /// 100 packets a second. A real scanner refused then waits at the door, gains
    /// evidence there, gets into the queue and is banned within a minute (before the
    /// door, it was never queued and never banned).
    #[test]
    fn a_queue_kept_full_of_slow_invented_scanners_does_not_lock_a_real_one_out() {
        let mut b = book(3600, 86_400, 60);
        let invented = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0009 + (n << 8)));
        let real = ip("192.0.2.2");
        let mut made = 0u32;
        let mut kept: Vec<(IpAddr, i64)> = Vec::new();
        let mut banned_at = None;
        for now in 0..500i64 {
            kept.retain(|&(a, _)| b.is_waiting(a.into()));
            for &(a, since) in &kept {
                if (now - since) % 50 == 1 {
                    b.touch(a, 5 + ((now - since) / 50) as u16, now);
                }
            }
            let newcomers = match now {
                0..60 => 1,
                60..105 => 100,
                _ => 4,
            };
            for _ in 0..newcomers {
                made += 1;
                let a = invented(made);
                let _ = b.scan_ports(a.into(), "forged".into(), &[1, 2, 3, 4], now, false);
                if b.is_waiting(a.into()) {
                    kept.push((a, now));
                }
            }
            if now == 300 {
                assert!(b.waiting() >= crate::waiting::MAX_WAITING);
                assert_eq!(
                    b.scan_ports(real, "real".into(), &[1, 2, 3, 4], now, false),
                    Err(Refused::RateLimited)
                );
            }
            if now > 300 {
                for k in 0..10 {
                    b.touch(real.addr(), (1000 + (now - 300) * 10 + k) as u16, now);
                }
            }
            b.promote(now, 60, |_| false);
            if banned_at.is_none() && b.get(real).is_some() {
                banned_at = Some(now);
            }
        }
        let waited = banned_at.expect("the real scanner was banned") - 300;
        assert!(waited <= 60, "banned {waited} s after it was refused");
    }

    /// A scan waiting at the door of the full queue waits for the XDP path too: a ban
    /// the program made of it is not given (it is not the queue's strongest), and the
    /// caller lifts the kernel's ban rather than wait for the detector.
    #[test]
    fn a_scan_at_the_door_is_waiting_to_the_xdp_path() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("10.0.0.1"), String::new(), 0, false).unwrap();
        for i in 0..crate::waiting::MAX_WAITING as u32 {
            let a = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
                0xc000_0000 + (i << 8),
            )));
            let _ = b.scan_ports(a, String::new(), &[1, 2, 3, 4], 1, false);
        }
        let late = ip("198.51.100.7");
        assert!(
            b.scan_ports(late, String::new(), &[1, 2, 3, 4], 0, false)
                .is_err()
        );
        assert!(b.is_waiting(late));
        assert!(b.take_waiting(late, 61).is_none());
        assert!(b.is_waiting(late));
    }

    /// One network holding the queue: a forger fills it from the /64s of one /48 and
    /// keeps each reaching a new port every second. That network gets its quarter of the
    /// cap; had it all 4096 places, every other scan would wait at the door (and the rest
    /// of the cap go unused) until it had more seconds than they. It holds 1024 places at
    /// most, so a real scanner from elsewhere gets into the queue and is banned at once.
    #[test]
    fn one_network_cannot_hold_the_whole_queue() {
        let mut b = book(3600, 86_400, 60);
        let forged = |i: u32| -> IpNet { format!("2001:db8:1:{i:x}::/64").parse().unwrap() };
        for i in 0..5000u32 {
            let _ = b.scan_ports(forged(i), "forged".into(), &[1, 2, 3, 4], 0, false);
        }
        for now in 1..=130i64 {
            for i in 0..5000u32 {
                b.touch(forged(i).addr(), 100 + now as u16, now);
            }
            b.promote(now, 60, |_| false);
        }
        assert_eq!(b.waiting(), 5000 - 15 - 15 - 15);
        assert!(
            b.scan_ports(ip("192.0.2.2"), "real".into(), &[1, 2, 3, 4], 130, false)
                .is_ok()
        );
    }

    /// The red team's F4: a forger fills the cap with bans spread over a minute (one a
    /// second), then invents 170 scanners a second, each from its own /24, so that one
    /// slot frees every second with newcomers already at the door. A real scanner
    /// detected at +63 s (a thousand ports) waits, and the next slot that frees goes to
    /// it, not to the next invented scanner.
    #[test]
    fn a_slot_the_cap_frees_goes_to_the_strongest_waiting_scan_not_to_the_next_newcomer() {
        let mut b = book(3600, 86_400, 60);
        let mut n = 0u32;
        let mut invented = move || {
            n += 1;
            IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0009 + (n << 8),
            )))
        };
        let forged = [5000, 5001, 5002, 5003];
        for now in 0..60 {
            assert!(
                b.scan_ports(invented(), "forged".into(), &forged, now, false)
                    .is_ok()
            );
        }
        let real = ip("192.0.2.2");
        let mut banned_at = None;
        for now in 60..200i64 {
            for i in 0..170 {
                if now == 63 && i == 50 {
                    assert_eq!(
                        b.scan_ports(real, "real".into(), &[1, 2, 3, 4], now, false),
                        Err(Refused::RateLimited),
                        "this second's slot went to the first newcomer"
                    );
                    for port in 5..=1000 {
                        b.touch(real.addr(), port, now);
                    }
                }
                let _ = b.scan_ports(invented(), "forged".into(), &forged, now, false);
            }
            // The real scanner went quiet after its scan; it stays the strongest.
            b.promote(now, 60, |_| false);
            if banned_at.is_none() && b.get(real).is_some() {
                banned_at = Some(now);
            }
        }
        assert_eq!(banned_at, Some(64), "the next slot that freed");
        assert_eq!(b.get(real).map(|r| r.reason.as_str()), Some("real"));
    }

    /// A newcomer competes with the waiting scans whose network has room: one whose
    /// network had its share does not hold the cap's room from other networks, and a
    /// newcomer from a network that had its share waits even with room in the cap.
    #[test]
    fn a_newcomer_competes_with_the_waiting_scans_by_evidence_within_the_network_shares() {
        let mut b = book(3600, 86_400, 8);
        b.scan(ip("192.0.2.1"), String::new(), 0, false).unwrap();
        b.scan(ip("192.0.2.2"), String::new(), 0, false).unwrap();
        assert_eq!(
            b.scan_ports(ip("192.0.2.3"), String::new(), &[1, 2, 3, 4], 0, false),
            Err(Refused::NetworkShare)
        );
        b.touch(ip("192.0.2.3").addr(), 9, 1);
        // The strong waiting scan cannot be banned (its /24 had its share): the
        // newcomer from another network takes the room.
        assert!(
            b.scan_ports(ip("198.51.100.1"), String::new(), &[1, 2, 3, 4], 2, false)
                .is_ok()
        );
        assert_eq!(
            b.scan_ports(
                ip("192.0.2.4"),
                String::new(),
                &[1, 2, 3, 4, 5, 6],
                2,
                false
            ),
            Err(Refused::NetworkShare)
        );
        // Another network's scan waiting with more evidence than a newcomer goes first.
        for i in 0..5 {
            b.scan(ip(&format!("10.{i}.0.1")), String::new(), 3, false)
                .unwrap();
        }
        assert_eq!(
            b.scan_ports(ip("203.0.113.1"), String::new(), &[1, 2, 3, 4, 5], 4, false),
            Err(Refused::RateLimited)
        );
        assert_eq!(b.len(), 8);
        b.touch(ip("203.0.113.1").addr(), 6, 59);
        // At 60 the first two bans' slots free (and 192.0.2.0/24's share with them): the
        // waiting take them by evidence, first those that reached a new port after they
        // began to wait, 203.0.113.1 (6 ports) and 192.0.2.3 (5); 192.0.2.4 (6 ports, in
        // one burst) and the newcomer (4) wait.
        assert_eq!(
            b.scan_ports(ip("198.51.100.9"), String::new(), &[1, 2, 3, 4], 60, false),
            Err(Refused::RateLimited)
        );
        let (given, _) = b.promote(60, 60, |_| false);
        let given: Vec<IpNet> = given.iter().map(|r| r.net).collect();
        assert_eq!(given, [ip("203.0.113.1"), ip("192.0.2.3")]);
        assert_eq!(b.waiting(), 2);
    }

    #[test]
    fn bursts_of_forged_ports_do_not_keep_a_scanner_that_goes_on_waiting() {
        // A forger invents two scanners a second, more than the cap gives, each a burst of
        // 100 ports from a network of its own; a real scanner reaches a new port every
        // 2 s. Ordered by ports alone, every freed slot went to a burst until the real
        // scanner had reached 100 ports (200 s); it must be banned within about a cap
        // period of being refused.
        let mut b = book(3600, 86_400, 8);
        let burst: Vec<u16> = (1..=100).collect();
        let real = ip("192.0.2.77");
        let mut banned_at = None;
        let mut forged = 0u32;
        for now in 0..240i64 {
            for _ in 0..2 {
                forged += 1;
                let fake = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
                    0x0a00_0001 + (forged << 8),
                )));
                let _ = b.scan_ports(fake, String::new(), &burst, now, false);
            }
            if now == 5 {
                assert!(
                    b.scan_ports(real, String::new(), &[1, 2, 3, 4], now, false)
                        .is_err()
                );
            }
            if now > 5 && now % 2 == 0 && banned_at.is_none() {
                b.touch(real.addr(), 1000 + now as u16, now);
            }
            let (given, _) = b.promote(now, 60, |_| false);
            if given.iter().any(|r| r.net == real) {
                banned_at = Some(now);
            }
        }
        let at = banned_at.expect("the real scanner was never banned");
        assert!(at <= 5 + 60 + 10, "banned only at {at} s");
    }

    #[test]
    fn zero_duration_bans_until_removed() {
        let mut b = book(0, 86_400, 60);
        let r = b.scan(ip("192.0.2.1"), String::new(), 5, false).unwrap();
        assert_eq!(r.expires, None);
        assert_eq!(r.ban(10).timeout_secs, None);
        assert!(b.expire(i64::MAX / 2).is_empty());
        assert_eq!(b.remove(ip("192.0.2.1")).map(|r| r.since), Some(5));
        assert!(b.is_empty());
    }

    #[test]
    fn manual_bans_replace_and_ignore_the_cap() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("192.0.2.1"), String::new(), 0, false).unwrap();
        let r = b.manual(ip("192.0.2.2"), Some(3), 0).unwrap();
        assert_eq!(r.expires, Some(3));
        let r = b.manual(ip("192.0.2.1"), Some(0), 1).unwrap();
        assert_eq!((r.expires, r.reason.as_str()), (None, "manual"));
        assert_eq!(b.next_expiry(), Some(3));
        assert_eq!(b.expire(3).len(), 1);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_running_ban_asked_for_again_is_the_same_offence_not_a_doubled_one() {
        let mut b = book(3600, 86_400, 60);
        let first = b.manual(ip("2001:db8::5"), None, 0).unwrap();
        assert_eq!((first.offences, first.expires), (1, Some(3600)));
        for at in [10, 20] {
            let again = b.manual(ip("2001:db8::5"), None, at).unwrap();
            assert_eq!(
                (again.offences, again.expires),
                (1, Some(at + 3600)),
                "at {at}"
            );
        }
        let shorter = b.manual(ip("2001:db8::5"), Some(300), 30).unwrap();
        assert_eq!((shorter.offences, shorter.expires), (1, Some(330)));
        // A scan banned again once that ban is over is a repeat offence.
        assert_eq!(b.expire(330).len(), 1);
        let repeat = b.manual(ip("2001:db8::5"), None, 400).unwrap();
        assert_eq!((repeat.offences, repeat.expires), (2, Some(400 + 7200)));
    }

    #[test]
    fn restored_bans_keep_their_remaining_time() {
        let mut b = book(3600, 86_400, 60);
        let saved = vec![
            Record {
                net: ip("192.0.2.1"),
                since: 0,
                expires: Some(3600),
                reason: "22,80,443,8080".into(),
                offences: 1,
                new_only: false,
            },
            Record {
                net: ip("192.0.2.2"),
                since: 0,
                expires: Some(100),
                reason: String::new(),
                offences: 1,
                new_only: false,
            },
        ];
        let over = b.restore(saved, vec![], 1000);
        assert_eq!(over.len(), 1);
        assert_eq!(
            b.get(ip("192.0.2.1")).unwrap().ban(1000).timeout_secs,
            Some(2600)
        );
    }

    #[test]
    fn an_address_inside_a_banned_range_is_not_banned_twice() {
        let mut b = book(3600, 86_400, 0);
        let r = b
            .scan(ip("2001:db8:1:2::/64"), "ports".into(), 0, false)
            .unwrap();
        assert_eq!(r.ban(0).net, ip("2001:db8:1:2::/64"));
        for inside in [
            "2001:db8:1:2::77",
            "2001:db8:1:2:8000::/65",
            "2001:db8:1:2::/64",
        ] {
            assert_eq!(
                b.scan(ip(inside), String::new(), 1, false),
                Err(Refused::AlreadyBanned),
                "{inside}"
            );
        }
        assert_eq!(
            b.covering(ip("2001:db8:1:2::9")).map(|r| r.net),
            Some(ip("2001:db8:1:2::/64"))
        );
        assert_eq!(b.covering(ip("2001:db8:1:3::9")), None);
        // Outside it, banned as usual; a manual ban inside that ends before the range
        // is refused with the range.
        assert!(
            b.scan(ip("2001:db8:1:3::9"), String::new(), 1, false)
                .is_ok()
        );
        let (why, by) = b.manual(ip("2001:db8:1:2::5"), Some(60), 2).unwrap_err();
        assert_eq!(
            (why, by.net),
            (Refused::AlreadyBanned, ip("2001:db8:1:2::/64"))
        );
        assert_eq!(b.len(), 2);
        // Once the range is lifted, its addresses can be banned again.
        b.remove(ip("2001:db8:1:2::/64"));
        assert!(b.manual(ip("2001:db8:1:2::5"), None, 3).is_ok());
        assert!(b.take_absorbed().is_empty());
    }

    #[test]
    fn an_address_banned_longer_than_a_range_around_it_outlives_the_range() {
        let mut b = book(3600, 86_400, 0);
        // Until removed, then a range of 5 s over it: the address stands beside the
        // range and is still banned once the range is over.
        b.manual(ip("198.51.100.80"), Some(0), 0).unwrap();
        b.manual(ip("198.51.100.81"), Some(3), 0).unwrap();
        b.manual(ip("198.51.100.0/24"), Some(5), 1).unwrap();
        let gone: Vec<IpNet> = b.take_absorbed().iter().map(|r| r.net).collect();
        assert_eq!(gone, [ip("198.51.100.81")], "the shorter one is absorbed");
        assert_eq!(b.len(), 2);
        let over: Vec<IpNet> = b.expire(6).iter().map(|r| r.net).collect();
        assert_eq!(over, [ip("198.51.100.0/24")]);
        let left = b.covering(ip("198.51.100.80")).expect("still banned");
        assert_eq!((left.net, left.expires), (ip("198.51.100.80"), None));
        assert_eq!(b.covering(ip("198.51.100.81")), None);
        // An attacker banned until removed scans from his /64: the /64's ban of an hour
        // does not end his.
        b.manual(ip("2001:db8:9::7"), Some(0), 10).unwrap();
        b.scan(ip("2001:db8:9::/64"), String::new(), 11, false)
            .unwrap();
        assert!(b.take_absorbed().is_empty());
        b.expire(11 + 3600);
        assert_eq!(
            b.covering(ip("2001:db8:9::7")).map(|r| r.expires),
            Some(None)
        );
        // Asked for inside a running range, an address ban that outlives it is given;
        // one that ends first is refused as already banned.
        b.manual(ip("203.0.113.0/24"), Some(60), 20).unwrap();
        assert!(b.manual(ip("203.0.113.9"), Some(0), 21).is_ok());
        assert!(b.manual(ip("203.0.113.10"), Some(600), 21).is_ok());
        let (why, by) = b.manual(ip("203.0.113.11"), Some(30), 21).unwrap_err();
        assert_eq!(
            (why, by.net),
            (Refused::AlreadyBanned, ip("203.0.113.0/24"))
        );
        // A range inside a longer-lived range is still absorbed (interval sets refuse
        // overlapping ranges).
        b.manual(ip("192.0.2.0/26"), Some(0), 30).unwrap();
        b.manual(ip("192.0.2.0/24"), Some(60), 31).unwrap();
        assert_eq!(b.take_absorbed().len(), 1);
    }

    #[test]
    fn a_saved_address_ban_outliving_a_saved_range_around_it_is_restored_beside_it() {
        let mut b = book(3600, 86_400, 0);
        let record = |net: &str, expires: Option<i64>| Record {
            net: ip(net),
            since: 0,
            expires,
            reason: String::new(),
            offences: 1,
            new_only: false,
        };
        let saved = vec![
            record("198.51.100.80", None),
            record("198.51.100.81", Some(500)),
            record("198.51.100.82", Some(5000)),
            record("198.51.100.0/24", Some(3600)),
        ];
        assert!(b.restore(saved, vec![], 100).is_empty());
        let mut gone: Vec<IpNet> = b.take_absorbed().iter().map(|r| r.net).collect();
        gone.sort();
        assert_eq!(gone, [ip("198.51.100.81")]);
        assert_eq!(b.len(), 3);
        b.expire(3600);
        assert!(b.get(ip("198.51.100.80")).is_some());
        assert!(b.get(ip("198.51.100.82")).is_some());
    }

    #[test]
    fn a_range_absorbs_the_bans_inside_it() {
        let mut b = book(3600, 86_400, 0);
        b.scan(ip("198.51.100.7"), String::new(), 0, false).unwrap();
        b.scan(ip("198.51.100.8"), String::new(), 0, false).unwrap();
        b.scan(ip("198.51.101.8"), String::new(), 0, false).unwrap();
        let r = b.manual(ip("198.51.100.0/24"), Some(0), 5).unwrap();
        assert_eq!((r.net, r.expires), (ip("198.51.100.0/24"), None));
        let mut gone: Vec<IpNet> = b.take_absorbed().iter().map(|r| r.net).collect();
        gone.sort();
        assert_eq!(gone, [ip("198.51.100.7"), ip("198.51.100.8")]);
        assert_eq!(b.len(), 2);
        assert!(b.get(ip("198.51.101.8")).is_some());
        // A wider range absorbs the narrower one in turn.
        b.manual(ip("198.51.0.0/16"), None, 6).unwrap();
        assert_eq!(b.take_absorbed().len(), 2);
        assert_eq!(b.len(), 1);
        // Expiry and flush keep the index of ranges in step.
        assert_eq!(b.expire(6 + 3600).len(), 1);
        assert_eq!(b.covering(ip("198.51.100.7")), None);
    }

    #[test]
    fn a_waiting_range_is_touched_by_its_addresses_and_protection_goes_by_network() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("10.0.0.1"), String::new(), 0, false).unwrap();
        assert_eq!(
            b.scan(ip("2001:db8:7:7::/64"), String::new(), 0, false),
            Err(Refused::RateLimited)
        );
        b.touch(ip("2001:db8:7:7::1234").addr(), 80, 50);
        let (given, forgotten) = b.promote(61, 60, |_| false);
        assert_eq!(forgotten, 0, "still active through its addresses");
        assert_eq!(given[0].net, ip("2001:db8:7:7::/64"));
        // A range the caller says covers a protected address is released.
        let lifted = b.release(|n| n.contains(&ip("2001:db8:7:7::1")));
        assert_eq!(lifted, [ip("2001:db8:7:7::/64")]);
        assert_eq!(
            b.scan(ip("2001:db8:7:7::/64"), String::new(), 200, true),
            Err(Refused::Protected)
        );
    }

    /// A hundred thousand ranges (an IPv6 scanner per /64, no cap) are given and
    /// restored without looking at every ban for each (the bans inside a range are a
    /// slice of the book in address order).
    #[test]
    fn many_ranges_are_given_and_restored_without_quadratic_work() {
        let mut b = book(3600, 86_400, 0);
        let n = 100_000u32;
        let net = |i: u32| {
            IpNet::new(
                IpAddr::from(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    (i >> 16) as u16,
                    i as u16,
                    0,
                    0,
                    0,
                    0,
                )),
                64,
            )
            .unwrap()
        };
        for i in 0..n {
            b.scan(net(i), String::new(), 0, false).unwrap();
        }
        assert_eq!(b.len(), n as usize);
        let inside = ip("2001:db8:1:869f::9");
        assert_eq!(b.covering(inside).map(|r| r.net), Some(net(n - 1)));
        let saved: Vec<Record> = b.active().cloned().collect();
        let mut again = book(3600, 86_400, 0);
        // A stale address ban inside a range, saved before it: left out.
        let mut stale = saved[0].clone();
        stale.net = IpNet::from(stale.net.addr());
        let mut all = vec![stale];
        all.extend(saved);
        assert!(again.restore(all, vec![], 1).is_empty());
        assert_eq!(again.len(), n as usize);
        assert_eq!(again.take_absorbed().len(), 1, "the stale address");
        // A /48 over the first 65,536 absorbs them.
        again.manual(ip("2001:db8::/48"), None, 2).unwrap();
        assert_eq!(again.take_absorbed().len(), 65_536);
        assert_eq!(again.len(), n as usize - 65_536 + 1);
    }
}
