//! The live agent's log rate limit: under a flood, connection events must neither fall
//! behind nor fill the disk. Each second, each source may log `per_source` connection
//! events and all sources together `global`; the rest are counted (metrics stay exact)
//! and summed up in one `suppressed` line per second that had any. Scan events are never
//! limited. Pure: time (nanoseconds) is passed in.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use synwatch_detect::Nanos;

const SECOND: Nanos = 1_000_000_000;

/// Most distinct sources counted per second; events from further sources are held to
/// the global limit only and counted together (`untracked`), never under a made-up
/// address. With a global limit, the table holds the next power of two at or above it
/// (at least [`MIN_SOURCES_PER_SECOND`]): every source that may log in a second has
/// room, and a source beyond them could not log anyway (the global limit is spent), so
/// only a flood's count of distinct sources held back is less exact. A table that fits
/// the core's cache is what keeps a spoofed flood cheap: its every event is a new source.
const MAX_SOURCES_PER_SECOND: usize = 65_536;

/// The fewest distinct sources counted per second, whatever the global limit.
const MIN_SOURCES_PER_SECOND: usize = 8_192;

/// What was held back during one second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// The second's start.
    pub since: Nanos,
    pub count: u64,
    /// Distinct sources with events held back.
    pub sources: u64,
    /// The sources that lost the most, most first (at most five).
    pub top: Vec<(IpAddr, u64)>,
    /// Of `count`, events from sources beyond the first the table holds (at most
    /// [`MAX_SOURCES_PER_SECOND`]) of the
    /// second (a flood of spoofed addresses), not told apart.
    pub untracked: u64,
}

/// The most distinct sources counted per second under a global limit of `global`
/// events a second (0: none).
fn sources_per_second(global: u32) -> usize {
    match global {
        0 => MAX_SOURCES_PER_SECOND,
        n => (n as usize)
            .next_power_of_two()
            .clamp(MIN_SOURCES_PER_SECOND, MAX_SOURCES_PER_SECOND),
    }
}

/// One IPv4 source's events of the current second: logged and held back. A slot belongs
/// to the second whose number it carries; older ones are free.
#[derive(Debug, Clone, Copy, Default)]
struct V4Slot {
    second: u32,
    addr: u32,
    logged: u32,
    held: u32,
}

/// Under a spoofed flood every event is a new source, and the limiter's table is read
/// at a cache miss per event in the live agent (the detector's tables take the caches):
/// IPv4 sources are counted in an open-addressed table of 16-byte slots, one miss where a
/// `HashMap` of `IpAddr`s took two or three, and emptied each second by a new second
/// number rather than a sweep. IPv6 sources use the `HashMap`.
#[derive(Debug)]
pub struct LogLimiter {
    per_source: u32,
    global: u32,
    second: Nanos,
    logged: u32,
    /// The IPv4 sources' table, allocated at the first IPv4 event.
    v4: Vec<V4Slot>,
    /// Sources in `v4` this second.
    v4_len: usize,
    /// The most distinct sources counted a second ([`sources_per_second`]); the IPv4
    /// table has twice as many slots, so that it is at most half full (and a free slot is
    /// always found; the hash is keyed per run, so no one can line sources up in one run
    /// of slots).
    max_sources: usize,
    /// The number the slots of this second carry (0: none yet).
    v4_second: u32,
    hasher: foldhash::fast::RandomState,
    by_source: HashMap<IpAddr, (u32, u64)>,
    suppressed: u64,
    untracked: u64,
}

/// Where an IPv4 source's slot is.
enum Slot {
    Held(usize),
    Free(usize),
}

impl LogLimiter {
    /// Limits per second; 0 means no limit.
    pub fn new(per_source: u32, global: u32) -> Self {
        Self {
            per_source,
            global,
            second: Nanos::MIN,
            logged: 0,
            v4: Vec::new(),
            v4_len: 0,
            max_sources: sources_per_second(global),
            v4_second: 1,
            hasher: foldhash::fast::RandomState::default(),
            by_source: HashMap::new(),
            suppressed: 0,
            untracked: 0,
        }
    }

    /// Sources counted this second.
    fn sources(&self) -> usize {
        self.v4_len + self.by_source.len()
    }

    /// Where the probe for `addr` starts in the IPv4 table (allocated).
    #[inline]
    fn v4_home(&self, addr: u32) -> usize {
        (self.hasher.hash_one(addr) as usize) & (self.v4.len() - 1)
    }

    /// The slot of `addr` in the IPv4 table, or where it would go.
    fn v4_slot(&mut self, addr: u32) -> Slot {
        if self.v4.is_empty() {
            self.v4 = vec![V4Slot::default(); 2 * self.max_sources];
        }
        let mask = self.v4.len() - 1;
        let mut i = self.v4_home(addr);
        // Ends: at most `max_sources` of the slots belong to this second.
        loop {
            let slot = &self.v4[i];
            if slot.second != self.v4_second {
                return Slot::Free(i);
            }
            if slot.addr == addr {
                return Slot::Held(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the slot [`LogLimiter::allow`] will look at for `src` (a hint for
    /// a batch's later observations: changes nothing).
    #[inline]
    pub fn prefetch(&self, src: IpAddr) {
        if let (IpAddr::V4(v4), false) = (src, self.v4.is_empty()) {
            synwatch_detect::prefetch(&self.v4[self.v4_home(u32::from(v4))]);
        }
    }

    /// Whether a connection event from `src` may be printed in the current second. Call
    /// [`LogLimiter::roll`] with the event's time first.
    pub fn allow(&mut self, src: IpAddr) -> bool {
        let over_global = self.global != 0 && self.logged >= self.global;
        let full = self.sources() >= self.max_sources;
        if let IpAddr::V4(v4) = src {
            let addr = u32::from(v4);
            let i = match self.v4_slot(addr) {
                Slot::Held(i) => i,
                Slot::Free(i) if !full => {
                    self.v4[i] = V4Slot {
                        second: self.v4_second,
                        addr,
                        logged: 0,
                        held: 0,
                    };
                    self.v4_len += 1;
                    i
                }
                Slot::Free(_) => return self.untracked(over_global),
            };
            let slot = &mut self.v4[i];
            let over_source = self.per_source != 0 && slot.logged >= self.per_source;
            if over_source || over_global {
                slot.held = slot.held.saturating_add(1);
                self.suppressed += 1;
                return false;
            }
            slot.logged += 1;
            self.logged += 1;
            return true;
        }
        if full && !self.by_source.contains_key(&src) {
            return self.untracked(over_global);
        }
        let entry = self.by_source.entry(src).or_insert((0, 0));
        let over_source = self.per_source != 0 && entry.0 >= self.per_source;
        if over_source || over_global {
            entry.1 += 1;
            self.suppressed += 1;
            return false;
        }
        entry.0 += 1;
        self.logged += 1;
        true
    }

    /// An event from a source beyond the second's table: held to the global limit only.
    fn untracked(&mut self, over_global: bool) -> bool {
        if over_global {
            self.untracked += 1;
            self.suppressed += 1;
            return false;
        }
        self.logged += 1;
        true
    }

    /// Starts the second `now` falls in, returning the summary of the one that ended
    /// if anything was held back in it.
    pub fn roll(&mut self, now: Nanos) -> Option<Suppressed> {
        // Within the current second (every event but one a second): no division.
        if now < self.second.saturating_add(SECOND) {
            return None;
        }
        let second = now - now.rem_euclid(SECOND);
        if second <= self.second {
            return None;
        }
        let previous = std::mem::replace(&mut self.second, second);
        let summary = (self.suppressed > 0).then(|| {
            let second = self.v4_second;
            let v4 = self
                .v4
                .iter()
                .filter(|s| s.second == second && s.held > 0)
                .map(|s| {
                    (
                        IpAddr::from(std::net::Ipv4Addr::from(s.addr)),
                        u64::from(s.held),
                    )
                });
            let mut top: Vec<(IpAddr, u64)> = self
                .by_source
                .iter()
                .filter(|(_, (_, held))| *held > 0)
                .map(|(src, (_, held))| (*src, *held))
                .chain(v4)
                .collect();
            let sources = top.len() as u64;
            // The five that lost most (a total order: ties by address), without sorting
            // a flood's tens of thousands of sources.
            let order = |a: &(IpAddr, u64), b: &(IpAddr, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
            if top.len() > 5 {
                top.select_nth_unstable_by(4, order);
                top.truncate(5);
            }
            top.sort_by(order);
            Suppressed {
                since: previous,
                count: self.suppressed,
                sources,
                top,
                untracked: self.untracked,
            }
        });
        self.by_source.clear();
        self.v4_len = 0;
        self.v4_second = self.v4_second.wrapping_add(1).max(1);
        self.logged = 0;
        self.suppressed = 0;
        self.untracked = 0;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn per_source_and_global_limits_per_second() {
        let mut l = LogLimiter::new(3, 5);
        let t = 100 * SECOND;
        assert_eq!(l.roll(t), None);
        let a: Vec<bool> = (0..5).map(|_| l.allow(ip("203.0.113.1"))).collect();
        assert_eq!(a, [true, true, true, false, false]);
        assert!(l.allow(ip("203.0.113.2")));
        assert!(l.allow(ip("203.0.113.2")));
        assert!(!l.allow(ip("203.0.113.3")), "global limit of 5 reached");
        let s = l.roll(t + SECOND).expect("a summary");
        assert_eq!((s.since, s.count, s.sources), (t, 3, 2));
        assert_eq!(s.top, [(ip("203.0.113.1"), 2), (ip("203.0.113.3"), 1)]);
        // A fresh second: fresh budgets, and nothing to report for a quiet one.
        assert!(l.allow(ip("203.0.113.1")));
        assert_eq!(l.roll(t + 2 * SECOND), None);
    }

    #[test]
    fn a_flood_of_sources_beyond_the_table_is_not_blamed_on_one_address() {
        for global in [10, 0] {
            let mut l = LogLimiter::new(1000, global);
            l.roll(0);
            let table = l.max_sources;
            let mut n = 0u32;
            let mut next = || {
                n += 1;
                IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
            };
            for _ in 0..table + 100 {
                l.allow(next());
            }
            let s = l.roll(SECOND);
            if global == 0 {
                assert_eq!(s, None, "no limit: nothing held");
                continue;
            }
            let s = s.expect("a summary");
            let logged = 10;
            assert_eq!(s.count, (table + 100 - logged) as u64);
            assert_eq!(s.untracked, 100);
            assert_eq!(s.sources, (table - logged) as u64);
            assert!(
                s.top.iter().all(|(ip, _)| !ip.is_unspecified()),
                "{:?}",
                s.top
            );
        }
    }

    /// The table holds every source that may log in a second (the global limit, to a
    /// power of two), within a floor and a ceiling; no global limit takes the ceiling.
    #[test]
    fn the_table_is_sized_to_the_global_limit() {
        let sized = |global| LogLimiter::new(10, global).max_sources;
        assert_eq!(sized(5000), 8192);
        assert_eq!(sized(1), MIN_SOURCES_PER_SECOND);
        assert_eq!(sized(8193), 16_384);
        assert_eq!(sized(40_000), MAX_SOURCES_PER_SECOND);
        assert_eq!(sized(u32::MAX), MAX_SOURCES_PER_SECOND);
        assert_eq!(sized(0), MAX_SOURCES_PER_SECOND);
        // Under the global limit, a source that finds the table full could not have
        // logged anyway: every source before it logged its first event or found the
        // global limit spent.
        let mut l = LogLimiter::new(1, 5000);
        l.roll(0);
        let logged = (0..20_000u32)
            .filter(|i| l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))))
            .count();
        assert_eq!(logged, 5000);
        let s = l.roll(SECOND).expect("a summary");
        assert_eq!((s.count, s.untracked), (15_000, 20_000 - 8192));
    }

    /// Of many sources held back, the five that lost most, most first, ties by address.
    #[test]
    fn the_top_five_are_the_five_that_lost_most() {
        let mut l = LogLimiter::new(1, 0);
        l.roll(0);
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Source i sends 1 + (i * 7919 % 40) events: one logged, the rest held.
        for i in 0..1_000 {
            for _ in 0..1 + (i * 7919 % 40) {
                l.allow(addr(i));
            }
        }
        let s = l.roll(SECOND).expect("a summary");
        let mut want: Vec<(IpAddr, u64)> = (0..1_000)
            .map(|i| (addr(i), u64::from(i * 7919 % 40)))
            .filter(|e| e.1 > 0)
            .collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(5);
        assert_eq!(s.top, want);
        assert!(s.top.iter().all(|e| e.1 == 39), "{:?}", s.top);
    }

    /// IPv4 sources (in their own table) and IPv6 ones (in the map) share the budgets
    /// and the cap on sources a second, and both are summed up; a new second starts
    /// every source afresh.
    #[test]
    fn ipv4_and_ipv6_sources_share_the_limits_and_the_summary() {
        let mut l = LogLimiter::new(2, 0);
        l.roll(0);
        let (v4, v6) = (ip("203.0.113.1"), ip("2001:db8::1"));
        let a: Vec<bool> = (0..5).flat_map(|_| [l.allow(v4), l.allow(v6)]).collect();
        assert_eq!(
            a,
            [
                true, true, true, true, false, false, false, false, false, false
            ]
        );
        let s = l.roll(SECOND).expect("a summary");
        assert_eq!((s.count, s.sources, s.untracked), (6, 2, 0));
        assert_eq!(s.top, [(v4, 3), (v6, 3)]);
        assert!(l.allow(v4) && l.allow(v4) && !l.allow(v4));
        let s = l.roll(2 * SECOND).expect("a summary");
        assert_eq!((s.count, s.top), (1, vec![(v4, 1)]));
        // The cap on sources counts both: with the table full of IPv4 sources, an IPv6
        // one is untracked, and the reverse.
        let mut l = LogLimiter::new(1, 1);
        l.roll(0);
        let table = l.max_sources;
        for i in 0..table as u32 - 1 {
            l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(!l.allow(v6));
        assert!(!l.allow(v4), "one source too many");
        assert!(!l.allow(ip("2001:db8::2")));
        let s = l.roll(SECOND).expect("a summary");
        assert_eq!(s.untracked, 2);
        assert_eq!(s.sources, table as u64 - 1);
        assert_eq!(s.count, s.sources + s.untracked);
    }

    #[test]
    fn a_second_ends_at_its_last_nanosecond_and_time_running_back_starts_none() {
        let mut l = LogLimiter::new(1, 0);
        let t = 7 * SECOND;
        assert_eq!(l.roll(t + SECOND - 1), None);
        assert!(l.allow(ip("192.0.2.1")));
        assert!(!l.allow(ip("192.0.2.1")));
        // Still the same second, to its last nanosecond; an event from before it (a clock
        // that ran back) counts in it too.
        assert_eq!(l.roll(t), None);
        assert_eq!(l.roll(t + SECOND - 1), None);
        assert_eq!(l.roll(t - 5 * SECOND), None);
        assert!(!l.allow(ip("192.0.2.1")));
        let s = l.roll(t + SECOND).expect("a summary");
        assert_eq!((s.since, s.count), (t, 2));
        assert!(l.allow(ip("192.0.2.1")));
        // Negative times (a capture's clock before 1970) roll by whole seconds as well.
        let mut l = LogLimiter::new(1, 0);
        assert_eq!(l.roll(-SECOND - 1), None);
        assert!(l.allow(ip("192.0.2.1")));
        assert!(!l.allow(ip("192.0.2.1")));
        assert_eq!(l.roll(-2 * SECOND), None);
        assert_eq!(l.roll(-SECOND).map(|s| s.since), Some(-2 * SECOND));
    }

    #[test]
    fn zero_means_unlimited() {
        let mut l = LogLimiter::new(0, 0);
        l.roll(0);
        assert!((0..100_000).all(|_| l.allow(ip("203.0.113.1"))));
        assert_eq!(l.roll(SECOND), None);
    }
}
