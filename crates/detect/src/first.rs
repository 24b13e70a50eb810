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
//! Once the 4-tuple table (`state::Attempts`) is full, a first sighting of a SYN also holds
//! its attempt's 4-tuple, as a 32-bit mark (a keyed hash), in place of that table: a
//! flood's SYN is then one entry here and none there, where it used to evict a remembered
//! 4-tuple of real traffic on every packet. (While that table has room, it remembers every
//! attempt exactly, first sightings' too: a mark can be pushed out of its bucket by later
//! sightings, and its retransmission then counts as a new attempt.) A retransmission of the attempt finds its
//! mark here and moves the whole 4-tuple to the 4-tuple table; when the source comes back
//! with another attempt, its port goes to its new slot and the entry stays as the first
//! attempt's mark alone (`probes` empty) for as long as that attempt is in the window.
//! The source's next attempt is told from a retransmission of its first by the mark: they
//! are mistaken for each other about once in 4 x 10^9 returns, and no one can aim at that.
//!
//! Bounded: as many entries as the larger of sixteen per source of the cap and the cap on
//! remembered 4-tuples (whose work the marks take over), at most [`MAX_BUCKETS`] x 3 (20
//! bytes each, in buckets of three to a cache line: 32 MB, reached at the default caps;
//! how long a sighting lasts depends on the flood's rate, not on the cap), allocated the
//! first time the table is full. A new sighting takes an empty or expired
//! entry of its bucket, or else the oldest. Under a flood of `R` new sources a second, a
//! sighting lasts about `16 x cap / R` seconds (at most `1.5 M / R`: 15 s at 100,000 spoofed
//! SYNs a second; a scanner whose first sighting was pushed out counts from its next
//! probe). Entries are told apart by 39 bits of a keyed hash of the source: a spoofer cannot
//! aim at one, and two sources mistaken for each other (about once in 10^11 lookups) share
//! one port.

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
const WAYS: usize = 3;

/// Most buckets: 32 MB.
const MAX_BUCKETS: usize = 1 << 19;

/// Three first sightings, field by field so that they fill one cache line. Each holds:
/// - `tags`: the source (hash bits, top bit set, see [`SOURCE_BITS`]), then the probe
///   kinds and the port; 0 for a free entry. Without probe kinds, the port was taken and
///   the entry only remembers its attempt's mark.
/// - `ts`: when the source was first seen (and its attempt last seen).
/// - `marks`: the mark of that attempt's 4-tuple ([`FirstSights::mark`]); 0 for none (a
///   stealth probe, or the 4-tuple moved to the 4-tuple table).
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket {
    tags: [u64; WAYS],
    ts: [Nanos; WAYS],
    marks: [u32; WAYS],
}

impl Bucket {
    /// Entry `i` of `source` gives up its port: it stays as its attempt's mark alone, or
    /// is freed if it has none.
    fn port_taken(&mut self, i: usize, source: u64) {
        self.tags[i] = if self.marks[i] == 0 { 0 } else { source };
    }
}

/// The bits of a tag that name the source (the top one always set, so that a used
/// entry's tag is never 0).
const SOURCE_BITS: u64 = !0 << 24;
const SOURCE_SET: u64 = 1 << 63;
/// The bits of a tag that hold the probe kinds.
const PROBE_BITS: u64 = 0xff << 16;

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

    /// The bucket of `key` and its tag without port and probes, in an array of about
    /// `entries` entries (allocated on first use).
    fn locate(&mut self, key: &Key, entries: usize) -> (usize, u64) {
        if self.buckets.is_empty() {
            let n = (entries / WAYS).clamp(16, MAX_BUCKETS).next_power_of_two();
            self.buckets = crate::table::array(n, Bucket::default());
        }
        self.hashed(key)
    }

    /// The bucket of `key` in the allocated array and its tag without port and probes.
    #[inline]
    fn hashed(&self, key: &Key) -> (usize, u64) {
        let h = self.hasher.hash_one(key);
        (
            (h as usize) & (self.buckets.len() - 1),
            h & SOURCE_BITS | SOURCE_SET,
        )
    }

    /// The mark of an attempt's 4-tuple: a keyed hash, never 0.
    #[inline]
    pub fn mark(&self, tuple: &impl std::hash::Hash) -> u32 {
        self.hasher.hash_one(tuple) as u32 | 1
    }

    /// Whether `key`'s attempt marked `mark` was seen within `window` of `now` (a
    /// retransmission of a first sighting's attempt). If so, the mark is dropped: the
    /// caller puts the 4-tuple in the 4-tuple table, which remembers it from now on.
    pub fn repeat(&mut self, key: &Key, mark: u32, now: Nanos, window: Nanos) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let (b, source) = self.hashed(key);
        let bucket = &mut self.buckets[b];
        for i in 0..WAYS {
            if bucket.marks[i] == mark
                && bucket.tags[i] & SOURCE_BITS == source
                && now.saturating_sub(bucket.ts[i]) <= window
            {
                bucket.marks[i] = 0;
                if bucket.tags[i] & PROBE_BITS == 0 {
                    bucket.tags[i] = 0;
                }
                return true;
            }
        }
        false
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

    /// A source not in the table, seen as `seen` in an attempt marked `mark` (0 for a
    /// stealth probe): returns its first sighting if it had one within `window` (its port
    /// is taken: the source now gets a slot; the entry keeps the first attempt's mark), or
    /// else writes this one down, mark and all, and returns `None`. `entries`: the size
    /// of the array to allocate on first use.
    pub fn take_or_note(
        &mut self,
        key: &Key,
        seen: Seen,
        mark: u32,
        window: Nanos,
        entries: usize,
    ) -> Option<Seen> {
        let (b, source) = self.locate(key, entries);
        let now = seen.ts;
        let bucket = &mut self.buckets[b];
        let live = |tag: u64, ts: Nanos| tag != 0 && now.saturating_sub(ts) <= window;
        let mut free = 0;
        for i in 0..WAYS {
            let (tag, ts) = (bucket.tags[i], bucket.ts[i]);
            if tag & SOURCE_BITS == source && tag & PROBE_BITS != 0 && live(tag, ts) {
                let first = Seen {
                    ts,
                    port: tag as u16,
                    probes: ProbeSet::from_bits((tag >> 16) as u8),
                };
                bucket.port_taken(i, source);
                return Some(first);
            }
            // The place for a new sighting: a free or expired entry, or the oldest.
            if live(bucket.tags[free], bucket.ts[free]) && (!live(tag, ts) || ts < bucket.ts[free])
            {
                free = i;
            }
        }
        bucket.tags[free] = source | u64::from(seen.probes.bits()) << 16 | u64::from(seen.port);
        bucket.ts[free] = now;
        bucket.marks[free] = mark;
        self.last_noted = now;
        None
    }

    /// Forgets the first sighting of `key`, if any (its attempt's mark stays: a
    /// retransmission of it is still one).
    pub fn forget(&mut self, key: &Key) {
        if self.buckets.is_empty() {
            return;
        }
        let (b, source) = self.locate(key, 0);
        let bucket = &mut self.buckets[b];
        for i in 0..WAYS {
            if bucket.tags[i] & SOURCE_BITS == source && bucket.tags[i] & PROBE_BITS != 0 {
                bucket.port_taken(i, source);
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
        assert_eq!(f.take_or_note(&key, seen(100, 22), 0, 50, 10), None);
        let mut probes = ProbeSet::EMPTY;
        probes.insert(Probe::Fin);
        let fin = Seen {
            ts: 120,
            port: 23,
            probes,
        };
        assert_eq!(f.take_or_note(&[1, 3], fin, 0, 50, 10), None);
        assert_eq!(
            f.take_or_note(&key, seen(150, 80), 0, 50, 10),
            Some(seen(100, 22))
        );
        // Taken: the next sighting is a first one again.
        assert_eq!(f.take_or_note(&key, seen(151, 80), 0, 50, 10), None);
        // The probe kind travels with the port.
        assert_eq!(f.take_or_note(&[1, 3], seen(125, 1), 0, 50, 10), Some(fin));
    }

    #[test]
    fn a_sighting_older_than_the_window_is_not_taken() {
        let mut f = FirstSights::default();
        assert_eq!(f.take_or_note(&[7, 7], seen(0, 22), 0, 50, 10), None);
        assert_eq!(f.take_or_note(&[7, 7], seen(51, 80), 0, 50, 10), None);
        assert_eq!(
            f.take_or_note(&[7, 7], seen(60, 81), 0, 50, 10),
            Some(seen(51, 80))
        );
    }

    #[test]
    fn the_array_is_freed_once_every_sighting_has_expired() {
        let mut f = FirstSights::default();
        assert!(!f.in_use());
        assert_eq!(f.take_or_note(&[7, 7], seen(10, 22), 0, 50, 10), None);
        f.release_if_quiet(60, 50);
        assert!(f.in_use(), "a sighting 50 ns old is inside a 50 ns window");
        assert_eq!(
            f.take_or_note(&[7, 7], seen(60, 80), 0, 50, 10),
            Some(seen(10, 22))
        );
        assert_eq!(f.take_or_note(&[8, 8], seen(60, 80), 0, 50, 10), None);
        f.release_if_quiet(110, 50);
        assert!(f.in_use());
        f.release_if_quiet(111, 50);
        assert!(!f.in_use());
        assert_eq!(f.take_or_note(&[8, 8], seen(112, 81), 0, 50, 10), None);
    }

    #[test]
    fn a_forgotten_source_starts_again() {
        let mut f = FirstSights::default();
        assert_eq!(f.take_or_note(&[7, 7], seen(0, 22), 0, 50, 10), None);
        f.forget(&[7, 7]);
        assert_eq!(f.take_or_note(&[7, 7], seen(1, 80), 0, 50, 10), None);
    }

    #[test]
    fn a_full_bucket_gives_up_its_oldest_sighting_first() {
        // The smallest array: 16 buckets. Twenty sources that share a bucket with the
        // first: the three most recent are remembered, the older ones not.
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
            assert_eq!(f.take_or_note(key, seen(i as Nanos, 22), 0, 1_000, 1), None);
        }
        for (i, key) in same.iter().enumerate().rev() {
            let got = f.take_or_note(key, seen(100, 80), 0, 1_000, 1);
            assert_eq!(got.is_some(), i >= 17, "source {i}: {got:?}");
        }
    }
}
