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
//! Networks share the cap: [`network`] is the /24 (IPv4) or /48 (IPv6) of an address,
//! the unit a single operator (or a forger's chosen range) typically holds.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// Most scans waiting at once.
pub const MAX_WAITING: usize = 4096;
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
    ports: HashSet<u16>,
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
    /// Distinct ports its source reached (saturating at a thousand).
    pub fn evidence(&self) -> usize {
        self.ports.len()
    }

    fn rank(&self) -> Rank {
        (
            self.seconds,
            self.evidence(),
            self.last,
            Reverse(self.since),
        )
    }

    /// Its source was seen at `now` reaching `ports`.
    fn seen(&mut self, ports: impl IntoIterator<Item = u16>, now: i64) {
        self.last = self.last.max(now);
        let mut new = false;
        for p in ports {
            // A port it has not reached as far as it remembers. Past MAX_PORTS none is
            // remembered more, and every port not among those counts as new: a scanner
            // of every port goes on gaining seconds (a forger gains nothing by it, one
            // packet a second is what a new port a second costs anyway).
            if self.ports.len() < MAX_PORTS {
                new |= self.ports.insert(p);
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
    /// The (family is IPv6, prefix length) of waiting ranges, to find the range an
    /// address belongs to.
    lens: BTreeSet<(bool, u8)>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn contains(&self, addr: IpNet) -> bool {
        self.by_addr.contains_key(&addr)
    }

    /// The waiting networks.
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.by_addr.keys().copied()
    }

    fn relens(&mut self) {
        self.lens = self
            .by_addr
            .keys()
            .filter(|k| k.prefix_len() < k.max_prefix_len())
            .map(|k| (matches!(k, IpNet::V6(_)), k.prefix_len()))
            .collect();
    }

    /// The source `addr` was seen again, reaching `port`: touches the waiting scan of the
    /// address, or else of a waiting range that holds it.
    pub fn touch_covering(&mut self, addr: IpAddr, port: u16, now: i64) {
        let host = crate::ban_net(IpNet::from(addr));
        if self.by_addr.contains_key(&host) || self.lens.is_empty() {
            return self.touch(host, port, now);
        }
        let v6 = matches!(host, IpNet::V6(_));
        let outer = self
            .lens
            .range((v6, 0)..(v6, host.prefix_len()))
            .rev()
            .filter_map(|&(_, len)| IpNet::new(host.addr(), len).ok().map(|n| n.trunc()))
            .find(|n| self.by_addr.contains_key(n));
        if let Some(n) = outer {
            self.touch(n, port, now);
        }
    }

    /// The waiter of `addr` was seen at `now` reaching `ports`; keeps the index in step.
    fn seen(&mut self, addr: IpNet, ports: &[u16], now: i64) -> bool {
        let Some(w) = self.by_addr.get_mut(&addr) else {
            return false;
        };
        let before = w.rank();
        w.seen(ports.iter().copied(), now);
        let after = w.rank();
        if before != after {
            self.order.remove(&(before, Reverse(addr)));
            self.order.insert((after, Reverse(addr)));
        }
        true
    }

    /// Queues a refused scan (or updates the waiting one). When the queue is full the
    /// weakest entry makes room, unless the newcomer is weaker still. Returns the address
    /// that left the queue, if any (the newcomer itself when it was not kept).
    pub fn add(&mut self, addr: IpNet, reason: String, ports: &[u16], now: i64) -> Option<IpNet> {
        if self.seen(addr, ports, now) {
            return None;
        }
        let waiter = Waiter {
            reason,
            ports: ports.iter().copied().take(MAX_PORTS).collect(),
            since: now,
            last: now,
            seconds: 0,
            new_at: now,
        };
        let mut dropped = None;
        if self.by_addr.len() >= MAX_WAITING {
            match self.order.first().copied() {
                Some((rank, Reverse(a))) if rank < waiter.rank() => {
                    self.remove(a);
                    dropped = Some(a);
                }
                _ => return Some(addr),
            }
        }
        if addr.prefix_len() < addr.max_prefix_len() {
            self.lens
                .insert((matches!(addr, IpNet::V6(_)), addr.prefix_len()));
        }
        self.order.insert((waiter.rank(), Reverse(addr)));
        self.by_addr.insert(addr, waiter);
        dropped
    }

    /// The source of a waiting scan was seen again, reaching `port`.
    pub fn touch(&mut self, addr: IpNet, port: u16, now: i64) {
        self.seen(addr, &[port], now);
    }

    /// Forgets sources last seen before `quiet_before`; returns how many.
    pub fn prune(&mut self, quiet_before: i64) -> usize {
        let before = self.by_addr.len();
        self.retain_waiters(|_, w| w.last >= quiet_before);
        before - self.by_addr.len()
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
        self.relens();
    }

    pub fn clear(&mut self) {
        self.by_addr.clear();
        self.order.clear();
        self.lens.clear();
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
        // A full queue drops its weakest for a stronger newcomer, not for a weaker one.
        let mut w = Waiting::default();
        for i in 0..MAX_WAITING as u32 {
            let a = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert_eq!(w.add(a, String::new(), &[1, 2, 3, 4], 10), None);
        }
        let weak = n("203.0.113.1");
        assert_eq!(w.add(weak, String::new(), &[1, 2, 3, 4], 9), Some(weak));
        let strong = n("203.0.113.2");
        assert!(w.add(strong, String::new(), &[1, 2, 3, 4, 5], 10).is_some());
        assert!(w.contains(strong));
        assert_eq!(w.len(), MAX_WAITING);
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
}
