//! Sources seen once while the source table is full (`state::Sources`).
//!
//! Under a spoofed flood every packet is a new source that never comes back. Were each of
//! them given a slot, one tracked source would be evicted per packet and the table turned
//! over every `cap` packets: a scanner whose probes are further apart than that would be
//! forgotten between two of them, whatever its credit, and never reach its fourth port.
//! The key decision: at the cap, a new source's first attempt is only written down here,
//! evicting nobody; it gets a slot (by the table's CLOCK eviction) when it comes back
//! within the window, with the port it was first seen on. A flood of sources that never
//! come back then passes through this array without touching the table, and a slow
//! scanner needs only its first sighting to last until its second probe.
//!
//! Bounded: sixteen entries per source of the cap, at most [`MAX_BUCKETS`] x 4 (16 bytes
//! each, in buckets of four to a cache line: 32 MB, reached at the default cap of 100,000;
//! how long a sighting lasts depends on the flood's rate, not on the cap), allocated the
//! first time the table is full. A new sighting takes an empty
//! or expired entry of its bucket, or else the oldest. Under a flood of `R` new sources a
//! second, a sighting lasts about `16 x cap / R` seconds (at the default cap and 100,000
//! spoofed SYNs a second, a scanner probing every 5 s is found in about 98 runs out of
//! 100 on its second probe; a missed one counts from its next probe). Entries are told
//! apart by 40 bits of a keyed hash of the source: a spoofer cannot aim at one, and two
//! sources mistaken for each other (about once in 10^12 lookups) share one port.

use std::hash::BuildHasher;

use crate::Nanos;
use crate::probe::ProbeSet;

/// A source, as the source table keys it.
type Key = [u64; 2];

/// A sighting given back: when, on which port, with which probe kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub ts: Nanos,
    pub port: u16,
    pub probes: ProbeSet,
}

/// Entries per bucket: one cache line.
const WAYS: usize = 4;

/// Most buckets: 32 MB.
const MAX_BUCKETS: usize = 1 << 19;

/// A first sighting: the source's tag (hash bits, then the probe kinds and the port) and
/// when. `tag == 0` is a free entry (a used one always has a probe kind).
#[derive(Debug, Clone, Copy, Default)]
struct Sighting {
    tag: u64,
    ts: Nanos,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([Sighting; WAYS]);

/// The bits of a tag that name the source.
const SOURCE_BITS: u64 = !0 << 24;

#[derive(Debug, Default)]
pub(crate) struct FirstSights {
    buckets: Vec<Bucket>,
    hasher: foldhash::fast::RandomState,
    /// When the last sighting was written down.
    last_noted: Nanos,
}

impl FirstSights {
    /// Whether the array is allocated.
    pub fn in_use(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// The bucket of `key` and its tag without port and probes, for a table of `cap`
    /// sources (allocated on first use).
    fn locate(&mut self, key: &Key, cap: usize) -> (usize, u64) {
        if self.buckets.is_empty() {
            let n = cap
                .saturating_mul(16 / WAYS)
                .clamp(16, MAX_BUCKETS)
                .next_power_of_two();
            self.buckets = crate::table::array(n, Bucket::default());
        }
        self.hashed(key)
    }

    /// The bucket of `key` in the allocated array and its tag without port and probes.
    #[inline]
    fn hashed(&self, key: &Key) -> (usize, u64) {
        let h = self.hasher.hash_one(key);
        ((h as usize) & (self.buckets.len() - 1), h & SOURCE_BITS)
    }

    /// Starts loading `key`'s bucket (see [`crate::table::Table::prefetch`]), if the
    /// array is in use.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        if self.buckets.is_empty() {
            return;
        }
        let (b, _) = self.hashed(key);
        crate::table::prefetch_line(std::ptr::from_ref(&self.buckets[b]).cast());
    }

    /// A source not in the table, seen as `seen`: returns its first sighting if it had
    /// one within `window` (and forgets it: the source now gets a slot), or else writes
    /// this one down and returns `None`.
    pub fn take_or_note(
        &mut self,
        key: &Key,
        seen: Seen,
        window: Nanos,
        cap: usize,
    ) -> Option<Seen> {
        let (b, source) = self.locate(key, cap);
        let now = seen.ts;
        let bucket = &mut self.buckets[b].0;
        let live = |e: &Sighting| e.tag != 0 && now.saturating_sub(e.ts) <= window;
        let mut free = 0;
        for (i, e) in bucket.iter().enumerate() {
            if e.tag & SOURCE_BITS == source && live(e) {
                let first = Seen {
                    ts: e.ts,
                    port: e.tag as u16,
                    probes: ProbeSet::from_bits((e.tag >> 16) as u8),
                };
                bucket[i] = Sighting::default();
                return Some(first);
            }
            // The place for a new sighting: a free or expired entry, or the oldest.
            let f = &bucket[free];
            if live(f) && (!live(e) || e.ts < f.ts) {
                free = i;
            }
        }
        bucket[free] = Sighting {
            tag: source | u64::from(seen.probes.bits()) << 16 | u64::from(seen.port),
            ts: now,
        };
        self.last_noted = now;
        None
    }

    /// Forgets the first sighting of `key`, if any.
    pub fn forget(&mut self, key: &Key) {
        if self.buckets.is_empty() {
            return;
        }
        let (b, source) = self.locate(key, 0);
        for e in &mut self.buckets[b].0 {
            if e.tag != 0 && e.tag & SOURCE_BITS == source {
                *e = Sighting::default();
            }
        }
    }

    /// Frees the array once nothing was written down for a whole window (every sighting
    /// in it has expired): the table is no longer full.
    pub fn release_if_quiet(&mut self, now: Nanos, window: Nanos) {
        if self.in_use() && now.saturating_sub(self.last_noted) > window {
            self.buckets = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Probe;

    fn seen(ts: Nanos, port: u16) -> Seen {
        Seen {
            ts,
            port,
            probes: Probe::Syn.into(),
        }
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }

    #[test]
    fn a_source_seen_again_within_the_window_gets_its_first_sighting_back_once() {
        let mut f = FirstSights::default();
        let key = [1, 2];
        assert_eq!(f.take_or_note(&key, seen(100, 22), 50, 10), None);
        let mut probes = ProbeSet::EMPTY;
        probes.insert(Probe::Fin);
        let fin = Seen {
            ts: 120,
            port: 23,
            probes,
        };
        assert_eq!(f.take_or_note(&[1, 3], fin, 50, 10), None);
        assert_eq!(
            f.take_or_note(&key, seen(150, 80), 50, 10),
            Some(seen(100, 22))
        );
        // Taken: the next sighting is a first one again.
        assert_eq!(f.take_or_note(&key, seen(151, 80), 50, 10), None);
        // The probe kind travels with the port.
        assert_eq!(f.take_or_note(&[1, 3], seen(125, 1), 50, 10), Some(fin));
    }

    #[test]
    fn a_sighting_older_than_the_window_is_not_taken() {
        let mut f = FirstSights::default();
        assert_eq!(f.take_or_note(&[7, 7], seen(0, 22), 50, 10), None);
        assert_eq!(f.take_or_note(&[7, 7], seen(51, 80), 50, 10), None);
        assert_eq!(
            f.take_or_note(&[7, 7], seen(60, 81), 50, 10),
            Some(seen(51, 80))
        );
    }

    #[test]
    fn the_array_is_freed_once_every_sighting_has_expired() {
        let mut f = FirstSights::default();
        assert!(!f.in_use());
        assert_eq!(f.take_or_note(&[7, 7], seen(10, 22), 50, 10), None);
        f.release_if_quiet(60, 50);
        assert!(f.in_use(), "a sighting 50 ns old is inside a 50 ns window");
        assert_eq!(
            f.take_or_note(&[7, 7], seen(60, 80), 50, 10),
            Some(seen(10, 22))
        );
        assert_eq!(f.take_or_note(&[8, 8], seen(60, 80), 50, 10), None);
        f.release_if_quiet(110, 50);
        assert!(f.in_use());
        f.release_if_quiet(111, 50);
        assert!(!f.in_use());
        assert_eq!(f.take_or_note(&[8, 8], seen(112, 81), 50, 10), None);
    }

    #[test]
    fn a_forgotten_source_starts_again() {
        let mut f = FirstSights::default();
        assert_eq!(f.take_or_note(&[7, 7], seen(0, 22), 50, 10), None);
        f.forget(&[7, 7]);
        assert_eq!(f.take_or_note(&[7, 7], seen(1, 80), 50, 10), None);
    }

    #[test]
    fn a_full_bucket_gives_up_its_oldest_sighting_first() {
        // The smallest array: 16 buckets. Twenty sources that share a bucket with the
        // first: the four most recent are remembered, the older ones not.
        let mut f = FirstSights::default();
        let (b0, _) = f.locate(&[0, 0], 1);
        let mut same = Vec::new();
        let mut k = 1u64;
        while same.len() < 20 {
            if f.locate(&[0, k], 1).0 == b0 {
                same.push([0, k]);
            }
            k += 1;
        }
        for (i, key) in same.iter().enumerate() {
            assert_eq!(f.take_or_note(key, seen(i as Nanos, 22), 1_000, 1), None);
        }
        for (i, key) in same.iter().enumerate().rev() {
            let got = f.take_or_note(key, seen(100, 80), 1_000, 1);
            assert_eq!(got.is_some(), i >= 16, "source {i}: {got:?}");
        }
    }
}
