//! Scans the cap on new bans refused, waiting for room (SPEC §2, "Spoofing cannot buy a
//! scanner time"). A forger can invent scanners by the hundred, each a burst of forged
//! SYNs to as many ports as it likes; a real scanner keeps reaching new ports as time
//! goes by. So the waiting are ordered by evidence, first the seconds in which the source
//! reached a new port since it began to wait (a burst is over within one, however many
//! ports it holds; outranking a real scanner waiting for a minute takes a forged source
//! kept reaching new ports for as long), then the distinct ports, then how recently it
//! was active; not by arrival. A source that went quiet for a whole window leaves the
//! queue (its episode is over). The queue is bounded: when full, the weakest entry makes
//! room. The order is kept in an index, so a refused scan costs O(log n) under a flood of
//! invented ones, not a pass over the queue.
//!
//! A newcomer has no seconds yet, so a forger who kept a full queue of invented sources
//! each with one second of evidence (a new port a minute each) would turn every later
//! scan away. So a scan the full queue turns away (or pushes out) waits at its door: a
//! bounded set that keeps the most recently active, where its source gains evidence as
//! in the queue and from which it takes the place of the queue's weakest as soon as it
//! outranks it (or a place the queue has free). Pushing a real scanner out of the door
//! takes [`MAX_AT_DOOR`] invented scans more recent than its last packet; keeping it
//! out of the queue, every waiter kept gaining seconds at its pace.
//!
//! Networks share the cap: [`network`] is the /24 (IPv4) or /48 (IPv6) of an address,
//! the unit a single operator (or a forger's chosen range) typically holds.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// Most scans waiting at once.
pub const MAX_WAITING: usize = 4096;
/// Most places in the queue one network ([`network`]) holds: a network whose share of
/// the cap is spent cannot be banned from, so one that held the whole queue would leave
/// the rest of the cap unused while every other scan waited at the door.
pub const NETWORK_PLACES: usize = MAX_WAITING / 4;
/// Most scans waiting at the door of a full queue (each a few hundred bytes: no ports
/// are kept there).
pub const MAX_AT_DOOR: usize = 32_768;
/// Distinct ports remembered per waiting source: its count of ports saturates there
/// (its seconds do not).
const MAX_PORTS: usize = 1024;

/// The network an address counts in for the cap: its /24 or /48.
pub fn network(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            let [x, y, z, _] = a.octets();
            IpAddr::from([x, y, z, 0])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// One waiting scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub reason: String,
    /// The ports its source reached (none kept while it waits at the door).
    ports: HashSet<u16>,
    /// How many distinct ports it reached, as counted (saturating at [`MAX_PORTS`]).
    count: usize,
    /// When the scan was refused and when its source was last seen (Unix seconds).
    pub since: i64,
    pub last: i64,
    /// Seconds after `since` in which its source reached a port new to it.
    seconds: u32,
    /// The last of those seconds.
    new_at: i64,
}

/// Where a waiter stands: more is stronger.
type Rank = (u32, usize, i64, Reverse<i64>);

impl Waiter {
    /// Distinct ports its source reached (saturating at [`MAX_PORTS`]).
    pub fn evidence(&self) -> usize {
        self.count
    }

    fn rank(&self) -> Rank {
        (
            self.seconds,
            self.evidence(),
            self.last,
            Reverse(self.since),
        )
    }

    /// Its source was seen at `now` reaching `ports`. At the door, where no ports are
    /// kept, any packet in a later second counts as a second of evidence (what a forger
    /// pays for it is the same packet a second).
    fn seen(&mut self, ports: impl IntoIterator<Item = u16>, now: i64, at_door: bool) {
        self.last = self.last.max(now);
        let mut new = false;
        for p in ports {
            if at_door {
                new = true;
                continue;
            }
            // A port it has not reached as far as it remembers. Past MAX_PORTS none is
            // remembered more, and every port not among those counts as new: a scanner
            // of every port goes on gaining seconds (a forger gains nothing by it, one
            // packet a second is what a new port a second costs anyway).
            if self.ports.len() < MAX_PORTS {
                if self.ports.insert(p) {
                    new = true;
                    self.count = (self.count + 1).min(MAX_PORTS);
                }
            } else {
                new |= !self.ports.contains(&p);
            }
        }
        if new && now > self.since && now > self.new_at {
            self.seconds = self.seconds.saturating_add(1);
            self.new_at = now;
        }
    }
}

/// The queue.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    by_addr: HashMap<IpNet, Waiter>,
    /// Every waiter by rank (ties: the lower address is the stronger), weakest first.
    order: BTreeSet<(Rank, Reverse<IpNet>)>,
    /// The (family is IPv6, prefix length) of waiting ranges (in the queue or at its
    /// door), to find the range an address belongs to.
    lens: BTreeSet<(bool, u8)>,
    /// Scans the full queue turned away or pushed out, gaining evidence until they
    /// outrank its weakest.
    door: HashMap<IpNet, Waiter>,
    /// The door's scans by their last sighting, least recent (the first to go) first.
    door_order: BTreeSet<(i64, IpNet)>,
    /// Scans that left the door (and so the queue) without a ban, not yet collected.
    dropped: usize,
    /// Places in the queue by network.
    per_network: HashMap<IpAddr, usize>,
}

impl Waiting {
    /// Scans waiting, in the queue and at its door.
    pub fn len(&self) -> usize {
        self.by_addr.len() + self.door.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty() && self.door.is_empty()
    }

    /// Whether `addr`'s scan is in the queue (not at its door).
    pub fn contains(&self, addr: IpNet) -> bool {
        self.by_addr.contains_key(&addr)
    }

    /// The waiting networks, in the queue and at its door.
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.by_addr.keys().chain(self.door.keys()).copied()
    }

    /// Scans that left without a ban (pushed out of the door, or turned away by a full
    /// one) since the last call.
    pub fn take_dropped(&mut self) -> usize {
        std::mem::take(&mut self.dropped)
    }

    fn relens(&mut self) {
        self.lens = self
            .keys()
            .filter(|k| k.prefix_len() < k.max_prefix_len())
            .map(|k| (matches!(k, IpNet::V6(_)), k.prefix_len()))
            .collect();
    }

    /// Whether `net`'s scan waits, in the queue or at its door.
    pub fn holds(&self, net: &IpNet) -> bool {
        self.by_addr.contains_key(net) || self.door.contains_key(net)
    }

    /// The source `addr` was seen again, reaching `port`: touches the waiting scan of the
    /// address, or else of a waiting range that holds it.
    pub fn touch_covering(&mut self, addr: IpAddr, port: u16, now: i64) {
        let host = crate::ban_net(IpNet::from(addr));
        if self.holds(&host) || self.lens.is_empty() {
            return self.touch(host, port, now);
        }
        let v6 = matches!(host, IpNet::V6(_));
        let outer = self
            .lens
            .range((v6, 0)..(v6, host.prefix_len()))
            .rev()
            .filter_map(|&(_, len)| IpNet::new(host.addr(), len).ok().map(|n| n.trunc()))
            .find(|n| self.holds(n));
        if let Some(n) = outer {
            self.touch(n, port, now);
        }
    }

    /// The scan of `addr` at the door was seen at `now` reaching `ports`: it gains
    /// evidence, and goes into the queue when the queue has room or it outranks the
    /// queue's weakest (which takes its place at the door).
    fn seen_at_door(&mut self, addr: IpNet, ports: &[u16], now: i64) -> bool {
        let Some(w) = self.door.get_mut(&addr) else {
            return false;
        };
        let last = w.last;
        w.seen(ports.iter().copied(), now, true);
        let rank = w.rank();
        if w.last != last {
            self.door_order.remove(&(last, addr));
            self.door_order.insert((w.last, addr));
        }
        if self.network_full(addr) {
            return true;
        }
        let weakest = self.order.first().map(|&(r, Reverse(a))| (r, a));
        let out = match weakest {
            _ if self.by_addr.len() < MAX_WAITING => None,
            Some((r, a)) if r < rank => Some(a),
            _ => return true,
        };
        // Out of the door before the weakest comes to it: a full door must not push out
        // the very scan that earned its place.
        if let Some(w) = self.take_from_door(addr) {
            if let Some(a) = out
                && let Some(weakest) = self.remove(a)
            {
                self.send_to_door(a, weakest);
            }
            self.enqueue(addr, w);
        }
        true
    }

    /// Puts `w` (the scan of `addr`) at the door, without its ports (its count stays),
    /// pushing out the door's least recently active scan when full.
    fn send_to_door(&mut self, addr: IpNet, mut w: Waiter) {
        w.ports = HashSet::new();
        // In first, then the least recently active out: that may be the one arriving.
        self.door_order.insert((w.last, addr));
        self.door.insert(addr, w);
        if self.door.len() > MAX_AT_DOOR
            && let Some((_, out)) = self.door_order.pop_first()
        {
            self.door.remove(&out);
            self.dropped += 1;
        }
    }

    fn take_from_door(&mut self, addr: IpNet) -> Option<Waiter> {
        let w = self.door.remove(&addr)?;
        self.door_order.remove(&(w.last, addr));
        Some(w)
    }

    fn enqueue(&mut self, addr: IpNet, w: Waiter) {
        self.order.insert((w.rank(), Reverse(addr)));
        self.by_addr.insert(addr, w);
        *self.per_network.entry(network(addr.addr())).or_default() += 1;
    }

    /// Whether `addr`'s network holds its [`NETWORK_PLACES`] in the queue.
    fn network_full(&self, addr: IpNet) -> bool {
        self.per_network
            .get(&network(addr.addr()))
            .is_some_and(|&n| n >= NETWORK_PLACES)
    }

    /// Fills the queue's free places from the door, most recently active first, as
    /// their networks' places allow.
    fn refill(&mut self) {
        let free = MAX_WAITING.saturating_sub(self.by_addr.len());
        if free == 0 || self.door.is_empty() {
            return;
        }
        let mut held = self.per_network.clone();
        let picks: Vec<IpNet> = self
            .door_order
            .iter()
            .rev()
            .filter_map(|&(_, a)| {
                let n = held.entry(network(a.addr())).or_default();
                (*n < NETWORK_PLACES).then(|| {
                    *n += 1;
                    a
                })
            })
            .take(free)
            .collect();
        for addr in picks {
            if let Some(w) = self.take_from_door(addr) {
                self.enqueue(addr, w);
            }
        }
    }

    /// The waiter of `addr` was seen at `now` reaching `ports`; keeps the index in step.
    fn seen(&mut self, addr: IpNet, ports: &[u16], now: i64) -> bool {
        let Some(w) = self.by_addr.get_mut(&addr) else {
            return false;
        };
        let before = w.rank();
        w.seen(ports.iter().copied(), now, false);
        let after = w.rank();
        if before != after {
            self.order.remove(&(before, Reverse(addr)));
            self.order.insert((after, Reverse(addr)));
        }
        true
    }

    /// Queues a refused scan (or updates the waiting one). When the queue is full the
    /// weakest entry makes room, unless the newcomer is weaker still; either goes to the
    /// door. Returns the address that left the queue or did not get into it, if any.
    pub fn add(&mut self, addr: IpNet, reason: String, ports: &[u16], now: i64) -> Option<IpNet> {
        if self.seen(addr, ports, now) || self.seen_at_door(addr, ports, now) {
            return None;
        }
        let ports: HashSet<u16> = ports.iter().copied().take(MAX_PORTS).collect();
        let waiter = Waiter {
            reason,
            count: ports.len(),
            ports,
            since: now,
            last: now,
            seconds: 0,
            new_at: now,
        };
        if addr.prefix_len() < addr.max_prefix_len() {
            self.lens
                .insert((matches!(addr, IpNet::V6(_)), addr.prefix_len()));
        }
        if self.network_full(addr) {
            self.send_to_door(addr, waiter);
            return Some(addr);
        }
        let mut left = None;
        if self.by_addr.len() >= MAX_WAITING {
            match self.order.first().copied() {
                Some((rank, Reverse(a))) if rank < waiter.rank() => {
                    if let Some(out) = self.remove(a) {
                        self.send_to_door(a, out);
                    }
                    left = Some(a);
                }
                _ => {
                    self.send_to_door(addr, waiter);
                    return Some(addr);
                }
            }
        }
        self.enqueue(addr, waiter);
        left
    }

    /// The source of a waiting scan was seen again, reaching `port`.
    pub fn touch(&mut self, addr: IpNet, port: u16, now: i64) {
        let _ = self.seen(addr, &[port], now) || self.seen_at_door(addr, &[port], now);
    }

    /// Forgets sources last seen before `quiet_before` (in the queue and at its door),
    /// then fills the queue's free places from the door; returns how many were forgotten.
    pub fn prune(&mut self, quiet_before: i64) -> usize {
        let before = self.len();
        self.retain_waiters(|_, w| w.last >= quiet_before);
        let forgotten = before - self.len();
        self.refill();
        forgotten
    }

    /// The strongest waiting source `eligible` accepts.
    pub fn best(&self, eligible: impl Fn(IpNet) -> bool) -> Option<IpNet> {
        self.order
            .iter()
            .rev()
            .map(|&(_, Reverse(a))| a)
            .find(|&a| eligible(a))
    }

    pub fn remove(&mut self, addr: IpNet) -> Option<Waiter> {
        let w = self.by_addr.remove(&addr)?;
        self.order.remove(&(w.rank(), Reverse(addr)));
        let net = network(addr.addr());
        if let Some(n) = self.per_network.get_mut(&net) {
            *n -= 1;
            if *n == 0 {
                self.per_network.remove(&net);
            }
        }
        Some(w)
    }

    /// Forgets the sources `pred` selects.
    pub fn retain(&mut self, pred: impl Fn(IpNet) -> bool) {
        self.retain_waiters(|a, _| pred(a));
    }

    fn retain_waiters(&mut self, keep: impl Fn(IpNet, &Waiter) -> bool) {
        let order = &mut self.order;
        self.by_addr.retain(|&a, w| {
            let kept = keep(a, w);
            if !kept {
                order.remove(&(w.rank(), Reverse(a)));
            }
            kept
        });
        let door_order = &mut self.door_order;
        self.door.retain(|&a, w| {
            let kept = keep(a, w);
            if !kept {
                door_order.remove(&(w.last, a));
            }
            kept
        });
        self.per_network.clear();
        for a in self.by_addr.keys() {
            *self.per_network.entry(network(a.addr())).or_default() += 1;
        }
        self.relens();
    }

    pub fn clear(&mut self) {
        self.by_addr.clear();
        self.order.clear();
        self.lens.clear();
        self.door.clear();
        self.door_order.clear();
        self.per_network.clear();
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn n(s: &str) -> IpNet {
        IpNet::from(ip(s))
    }

    /// The `i`-th address of 10.0.0.0/8, each in a /24 (a network) of its own.
    fn nth(i: u32) -> IpNet {
        IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + (i << 8),
        )))
    }

    /// A full queue: [`MAX_WAITING`] scans of `ports` refused at `now`, from `nth(0..)`.
    fn filled(ports: &[u16], now: i64) -> Waiting {
        let mut w = Waiting::default();
        for i in 0..MAX_WAITING as u32 {
            assert_eq!(w.add(nth(i), String::new(), ports, now), None);
        }
        w
    }

    /// A full queue of scans refused at 0, each with a second of evidence (a new port
    /// at 1).
    fn filled_a_second_each() -> Waiting {
        let mut w = filled(&[1, 2, 3, 4], 0);
        for i in 0..MAX_WAITING as u32 {
            w.touch(nth(i), 5, 1);
        }
        w
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(network(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(network(ip("2001:db8:1:2::9")), ip("2001:db8:1::"));
    }

    #[test]
    fn the_strongest_evidence_goes_first_and_the_weakest_makes_room() {
        let mut w = Waiting::default();
        w.add(n("192.0.2.1"), "a".into(), &[1, 2, 3, 4], 0);
        w.add(n("198.51.100.1"), "b".into(), &[1, 2, 3, 4], 5);
        // Same evidence: the more recently active first.
        assert_eq!(w.best(|_| true), Some(n("198.51.100.1")));
        // A source still reaching new ports outranks both.
        w.touch(n("192.0.2.1"), 9, 6);
        assert_eq!(w.best(|_| true), Some(n("192.0.2.1")));
        assert_eq!(w.best(|a| a != n("192.0.2.1")), Some(n("198.51.100.1")));
        // Quiet sources leave.
        assert_eq!(w.prune(5), 0);
        assert_eq!(w.prune(6), 1);
        assert!(!w.contains(n("198.51.100.1")));
        // A full queue puts its weakest at the door for a stronger newcomer, and a weaker
        // newcomer waits at the door itself.
        let mut w = Waiting::default();
        for i in 0..MAX_WAITING as u32 {
            let a = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert_eq!(w.add(a, String::new(), &[1, 2, 3, 4], 10), None);
        }
        let weak = n("203.0.113.1");
        assert_eq!(w.add(weak, String::new(), &[1, 2, 3, 4], 9), Some(weak));
        assert!(!w.contains(weak) && w.door.contains_key(&weak));
        let strong = n("203.0.113.2");
        let out = w.add(strong, String::new(), &[1, 2, 3, 4, 5], 10);
        assert!(w.contains(strong));
        assert!(out.is_some_and(|a| w.door.contains_key(&a)));
        assert_eq!((w.by_addr.len(), w.len()), (MAX_WAITING, MAX_WAITING + 2));
        assert_eq!(w.take_dropped(), 0);
    }

    /// The red team's lock-out: a forger keeps a full queue of invented sources, each
    /// with a second of evidence (a new port a minute each), and keeps inventing more so
    /// that every place a ban frees is taken. A real scanner refused at the door, still
    /// reaching new ports, takes the place of the weakest as soon as it outranks it, and
    /// is the strongest in the queue a few seconds later.
    #[test]
    fn a_full_queue_of_one_second_waiters_does_not_lock_a_scanner_out() {
        let mut w = filled_a_second_each();
        // Invented newcomers, four a second, and the real scanner among them.
        let scanner = n("203.0.113.9");
        let mut next = MAX_WAITING as u32;
        for t in 2..10i64 {
            for _ in 0..4 {
                w.add(nth(next), String::new(), &[1, 2, 3, 4], t);
                next += 1;
            }
            if t == 2 {
                assert_eq!(
                    w.add(scanner, String::new(), &[1, 2, 3, 4], t),
                    Some(scanner)
                );
            }
            w.touch(scanner, 100 + t as u16, t);
        }
        assert!(w.contains(scanner));
        assert_eq!(w.best(|_| true), Some(scanner));
        assert_eq!(w.by_addr.len(), MAX_WAITING);
        assert!(w.len() <= MAX_WAITING + MAX_AT_DOOR);
    }

    #[test]
    fn the_door_keeps_the_most_recently_active_and_refills_the_queue() {
        let mut w = filled_a_second_each();
        // A scanner at the door (an address below every invented one, so that only how
        // recently it was seen keeps it), then 100 newcomers, then the scanner again,
        // then enough newcomers to push 10 out of the full door: the 10 go from those
        // seen before the scanner's last packet.
        let scanner = n("9.9.9.9");
        assert_eq!(
            w.add(scanner, String::new(), &[1, 2, 3, 4], 2),
            Some(scanner)
        );
        let mut next = MAX_WAITING as u32;
        for _ in 0..100 {
            w.add(nth(next), String::new(), &[1, 2, 3, 4], 3);
            next += 1;
        }
        w.touch(scanner, 9, 4);
        for _ in 0..(MAX_AT_DOOR - 101 + 10) {
            w.add(nth(next), String::new(), &[1, 2, 3, 4], 4);
            next += 1;
        }
        assert!(w.door.contains_key(&scanner));
        assert_eq!(w.door.len(), MAX_AT_DOOR);
        assert_eq!(w.take_dropped(), 10);
        assert!((0..10).all(|k| !w.holds(&nth(MAX_WAITING as u32 + k))));
        assert!(w.door.contains_key(&nth(MAX_WAITING as u32 + 10)));
        // No ports are kept at the door; the count stays.
        assert!(w.door[&scanner].ports.is_empty());
        assert_eq!(w.door[&scanner].evidence(), 4);
        // Places the queue frees are filled from the door at the next prune; quiet
        // sources at the door are forgotten like those in the queue.
        for i in 0..10 {
            w.remove(nth(i));
        }
        assert_eq!(w.prune(0), 0);
        assert_eq!(w.by_addr.len(), MAX_WAITING);
        assert_eq!(w.prune(4), MAX_WAITING - 10 + 90);
        assert_eq!(w.by_addr.len(), MAX_WAITING);
        assert_eq!(w.len(), MAX_AT_DOOR - 90);
    }

    /// A scan at the door that outranks the queue's weakest takes its place even when
    /// the door is full and the scan is the door's least recently active (the weakest
    /// comes to the door only after the scan has left it).
    #[test]
    fn a_scan_that_earns_its_place_is_not_pushed_out_by_the_weakest_it_replaces() {
        let mut w = filled(&[1, 2, 3, 4], 1);
        let scanner = n("9.9.9.9");
        assert_eq!(
            w.add(scanner, String::new(), &[1, 2, 3, 4], 1),
            Some(scanner)
        );
        for k in 0..(MAX_AT_DOOR as u32 - 1) {
            w.add(nth(MAX_WAITING as u32 + k), String::new(), &[1, 2, 3, 4], 2);
        }
        assert_eq!(w.door.len(), MAX_AT_DOOR);
        // Its next packet, a second later, gives it a second of evidence: more than
        // any waiter in the queue. Seen in the same second as every other scan at the
        // door, it is the door's first to go (by address) when the door makes room.
        w.touch(scanner, 9, 2);
        assert!(w.contains(scanner));
        assert_eq!(w.by_addr.len(), MAX_WAITING);
        assert_eq!(w.door.len(), MAX_AT_DOOR);
        assert_eq!(w.take_dropped(), 0);
    }

    #[test]
    fn a_scanner_past_the_ports_remembered_keeps_gaining_seconds() {
        // A scanner of every port, twenty a second for half an hour (36,000 ports, far
        // past the 1,024 remembered), keeps outranking a forged source that began to
        // wait 10 s later and reaches one new port a second as long.
        let mut w = Waiting::default();
        let scanner = n("203.0.113.9");
        let forged = n("198.51.100.7");
        w.add(scanner, String::new(), &[1, 2, 3, 4], 0);
        w.add(forged, String::new(), &[1, 2, 3, 4], 10);
        let mut port = 5u32;
        for t in 1..=1800i64 {
            for _ in 0..20 {
                w.touch(scanner, (port % 65_536) as u16, t);
                port += 1;
            }
            if t > 10 {
                w.touch(forged, (100 + t) as u16, t);
            }
        }
        assert_eq!(w.by_addr[&scanner].seconds, 1800);
        assert_eq!(w.best(|_| true), Some(scanner));
        assert_eq!(w.by_addr[&scanner].evidence(), MAX_PORTS);
        // A port it remembers is not new.
        w.touch(scanner, 1, 1801);
        assert_eq!(w.by_addr[&scanner].seconds, 1800);
    }

    #[test]
    fn a_network_holds_a_quarter_of_the_queue_and_the_rest_of_it_waits_at_the_door() {
        let mut w = Waiting::default();
        let of_one = |i: u32| -> IpNet { format!("2001:db8:1:{i:x}::/64").parse().unwrap() };
        for i in 0..2000u32 {
            w.add(of_one(i), String::new(), &[1, 2, 3, 4], 0);
        }
        assert_eq!(
            (w.by_addr.len(), w.door.len()),
            (NETWORK_PLACES, 2000 - NETWORK_PLACES)
        );
        // Another network's scan goes into the queue, not to the door.
        let other = n("192.0.2.7");
        assert_eq!(w.add(other, String::new(), &[1, 2, 3, 4], 1), None);
        assert!(w.contains(other));
        // A door entry of the full network stays there, however strong.
        w.touch(of_one(1999), 9, 5);
        assert!(!w.contains(of_one(1999)));
        // Places the network gives back are filled from its scans at the door.
        for i in 0..10 {
            w.remove(of_one(i));
        }
        w.prune(0);
        assert_eq!(w.per_network[&network(of_one(0).addr())], NETWORK_PLACES);
        assert!(w.contains(of_one(1999)), "the most recently active first");
        assert_eq!(w.len(), 2000 - 10 + 1);
    }

    #[test]
    fn a_full_door_lets_go_of_its_least_recently_active_even_the_one_arriving() {
        let mut w = filled(&[1, 2, 3, 4, 5], 0);
        // Weaker newcomers, seen at 5, fill the door.
        for k in 0..MAX_AT_DOOR as u32 {
            w.add(nth(MAX_WAITING as u32 + k), String::new(), &[1, 2], 5);
        }
        assert_eq!(w.door.len(), MAX_AT_DOOR);
        // A stronger newcomer pushes the queue's weakest (last seen at 0) to the full
        // door: that one goes, not one seen at 5.
        let strong = n("203.0.113.1");
        w.add(strong, String::new(), &[1, 2, 3, 4, 5, 6], 6);
        assert!(w.contains(strong));
        assert_eq!(w.take_dropped(), 1);
        assert_eq!(w.door.len(), MAX_AT_DOOR);
        assert!(w.door.values().all(|v| v.last == 5));
    }
}
