//! The detector's two per-attempt tables, laid out for one cache line each:
//!
//! - [`Sources`]: one 64-byte slot per source (or IPv6 prefix) holding everything the port
//!   count needs: its key, the `max_ports + 1` most recent distinct ports with the time and
//!   probe kinds of each (inline up to four, the default `--max-ports 3`; more in a side
//!   table), the open episode and its eviction state. The time of its last activity is the
//!   latest of its ports' times, so it needs no field of its own.
//! - [`Attempts`]: the 4-tuples seen within the window, for retransmissions: IPv4 tuples in
//!   24-byte slots (two and a half to a cache line), IPv6 ones in 48-byte slots.
//!
//! The key decision is eviction by CLOCK instead of sorting: at the cap, a hand walks the
//! table; an expired entry goes at once, an entry with credit left loses one and stays, an
//! entry without goes. Each entry's credit is set when it is hit, so the hand's work is paid
//! for by the hits (O(1) amortised per insertion). A source's credit is one, plus how often
//! it came back (after the hand had passed it, or after an eighth of the cap's worth of
//! other sources came in: before the table is first full the hand has not moved, and a
//! scanner's returns then would otherwise count for nothing) times its distinct ports in
//! the window (the scan score), at most [`MAX_CREDIT`], which a source in an open episode
//! holds: a spoofed
//! source that sends its probes at once never comes back and is gone after one or two turns
//! of the hand, however many ports it reached; a real scanner, however slow, does come back,
//! and each return with more ports lets it outlive more of such noise. While the table is
//! full, a source not tracked yet is only written down (`first`) until it comes back, so
//! sources that never do evict nobody; the 4-tuple of its attempt is remembered there too,
//! not in [`Attempts`], so that they evict no remembered attempt either.

use std::hash::BuildHasher;

use smallvec::SmallVec;

use crate::Nanos;
use crate::first::{FirstSights, Seen};
use crate::probe::ProbeSet;
use crate::table::{Hand, Slot, Table, credit};

/// A source key: an address (IPv4 in its IPv4-mapped form) as two halves.
pub(crate) type Key = [u64; 2];

/// Ports held in the slot itself.
const INLINE: usize = 4;
/// `len` of a free slot.
const FREE: u8 = 0xFE;
/// `len` of a source whose ports are in the side table.
const WIDE: u8 = 0xFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortSeen {
    pub last: Nanos,
    pub port: u16,
    pub probes: ProbeSet,
}

pub(crate) type Ports = SmallVec<[PortSeen; INLINE]>;

#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct SourceSlot {
    key: Key,
    lasts: [Nanos; INLINE],
    ports: [u16; INLINE],
    probes: [ProbeSet; INLINE],
    /// Ports held inline (0 to 4), [`WIDE`] or [`FREE`]. With 0 or [`WIDE`], `lasts[0]` is
    /// the last activity.
    len: u8,
    pub in_episode: bool,
    /// Credit left (low bits) and [`VISITED`].
    clock: u8,
    /// Times the source came back, and the era of its last hit ([`credit::earn`]).
    returns: u8,
}

impl Slot for SourceSlot {
    type Key = Key;
    const EMPTY: Self = Self {
        key: [0; 2],
        lasts: [0; INLINE],
        ports: [0; INLINE],
        probes: [ProbeSet::EMPTY; INLINE],
        len: FREE,
        in_episode: false,
        clock: 0,
        returns: 0,
    };

    #[inline]
    fn is_used(&self) -> bool {
        self.len != FREE
    }

    #[inline]
    fn key(&self) -> Key {
        self.key
    }
}

impl SourceSlot {
    /// The slot of `key`, a source first seen (or seen afresh) at `now`.
    fn fresh(key: Key, now: Nanos) -> Self {
        let mut slot = Self::EMPTY;
        slot.key = key;
        slot.len = 0;
        slot.lasts[0] = now;
        slot
    }

    /// The time of the source's last attempt or probe.
    #[inline]
    pub fn last_activity(&self) -> Nanos {
        match self.len {
            0 | WIDE | FREE => self.lasts[0],
            n => self.lasts[..usize::from(n)]
                .iter()
                .copied()
                .max()
                .unwrap_or(self.lasts[0]),
        }
    }
}

/// The source table (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Sources {
    table: Table<SourceSlot>,
    /// Port lists longer than [`INLINE`] (only with `--max-ports` above 3).
    wide: std::collections::HashMap<Key, Ports, foldhash::fast::RandomState>,
    /// Sources seen once while the table is full (see `first`).
    first: FirstSights,
    /// Sources put in the table so far.
    inserted: u64,
    /// The turnover era of the current observation ([`credit::era`]).
    era: u8,
}

/// A source's state taken out of its slot to be worked on.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub index: usize,
    pub ports: Ports,
    pub in_episode: bool,
    /// The source was not tracked before this observation.
    pub new: bool,
    pub last_activity: Nanos,
}

impl Loaded {
    /// A source with nothing behind it yet, in slot `index`.
    fn fresh(index: usize, now: Nanos) -> Self {
        Self {
            index,
            ports: Ports::new(),
            in_episode: false,
            new: true,
            last_activity: now,
        }
    }
}

impl Sources {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.table.span()
    }

    /// Starts loading what a lookup of `key` will read: its control byte, its slot where
    /// `slot` (see [`crate::table::Table::prefetch`]), and its first sighting.
    #[inline]
    pub fn prefetch(&self, key: &Key, slot: bool) {
        self.table.prefetch(key, slot);
        // At the cap, an untracked source's first sighting is looked up too.
        self.first.prefetch(key);
    }

    /// Whether first sightings are kept (the table was full within the window).
    #[inline]
    pub fn first_in_use(&self) -> bool {
        self.first.in_use()
    }

    /// The mark a first sighting keeps of an attempt's 4-tuple (see `first`).
    #[inline]
    pub fn mark(&self, tuple: &Tuple) -> u32 {
        self.first.mark(tuple)
    }

    /// Whether the attempt marked `mark` of source `key` is a first sighting's, seen within
    /// `window` of `now`: a retransmission, whose 4-tuple the caller now remembers in the
    /// 4-tuple table.
    #[inline]
    pub fn first_repeat(&mut self, key: &Key, mark: u32, now: Nanos, window: Nanos) -> bool {
        self.first.repeat(key, mark, now, window)
    }

    /// The state of `key`, made room for (evicting one source when `cap` is reached) and
    /// created at `now` if it is not tracked. Returns the state and how many sources were
    /// evicted to make room.
    ///
    /// With `seen` (this observation's port, when one port alone cannot make a scan), a
    /// source not tracked while the table is full is not given a slot at once: its first
    /// sighting is written down apart (`first`), with `mark`, its attempt's 4-tuple mark
    /// (0 for a stealth probe), and `None` returned; it gets a slot, holding that first
    /// port, when it comes back within the window. `first_entries`: how many first
    /// sightings to make room for.
    #[inline]
    pub fn load(
        &mut self,
        key: Key,
        (now, window): (Nanos, Nanos),
        cap: usize,
        first_entries: usize,
        seen: Option<(PortSeen, u32)>,
    ) -> Option<(Loaded, u64)> {
        let mut evicted = 0;
        self.era = credit::era(self.inserted, cap);
        let index = match self.table.find(&key) {
            // A source quiet for more than a window starts afresh, as it would had a sweep
            // dropped it already: what it did before (its returns) is no longer evidence.
            Some(i) if now.saturating_sub(self.table.get(i).last_activity()) > window => {
                if self.table.get(i).len == WIDE {
                    self.wide.remove(&key);
                }
                *self.table.get_mut(i) = SourceSlot::fresh(key, now);
                self.inserted += 1;
                return Some((Loaded::fresh(i, now), evicted));
            }
            Some(i) => i,
            None => {
                let mut before = None;
                if self.table.len() >= cap.max(1) {
                    if let Some((p, mark)) = seen {
                        let seen = Seen {
                            ts: p.last,
                            port: p.port,
                            probes: p.probes,
                        };
                        let first =
                            self.first
                                .take_or_note(&key, seen, mark, window, first_entries)?;
                        before = Some(PortSeen {
                            last: first.ts,
                            port: first.port,
                            probes: first.probes,
                        });
                    }
                    evicted = self.evict_one(now, window);
                }
                match self.table.find_or_free(&key) {
                    Ok(i) => i,
                    Err(i) => {
                        self.table.fill(i, SourceSlot::fresh(key, now));
                        self.inserted += 1;
                        let mut fresh = Loaded::fresh(i, now);
                        fresh.ports.extend(before);
                        return Some((fresh, evicted));
                    }
                }
            }
        };
        let slot = self.table.get(index);
        let ports = if slot.len == WIDE {
            self.wide.get(&key).cloned().unwrap_or_default()
        } else {
            (0..usize::from(slot.len))
                .map(|i| PortSeen {
                    last: slot.lasts[i],
                    port: slot.ports[i],
                    probes: slot.probes[i],
                })
                .collect()
        };
        Some((
            Loaded {
                index,
                ports,
                in_episode: slot.in_episode,
                new: false,
                last_activity: slot.last_activity(),
            },
            evicted,
        ))
    }

    /// Writes a source's state back after an observation at `now`, giving it its credit.
    #[inline]
    pub fn store(&mut self, s: &Loaded, now: Nanos) {
        let slot = self.table.get_mut(s.index);
        let key = slot.key;
        let was_wide = slot.len == WIDE;
        if s.ports.len() <= INLINE {
            for (i, p) in s.ports.iter().enumerate() {
                slot.lasts[i] = p.last;
                slot.ports[i] = p.port;
                slot.probes[i] = p.probes;
            }
            slot.len = s.ports.len() as u8;
            if s.ports.is_empty() {
                slot.lasts[0] = now;
            }
        } else {
            slot.len = WIDE;
            slot.lasts[0] = now;
        }
        slot.in_episode = s.in_episode;
        credit::earn(
            &mut slot.clock,
            &mut slot.returns,
            (s.new, self.era),
            s.ports.len(),
            s.in_episode,
        );
        if s.ports.len() > INLINE {
            self.wide.insert(key, s.ports.clone());
        } else if was_wide {
            self.wide.remove(&key);
        }
    }

    /// Whether `key` holds a slot.
    pub fn contains(&self, key: &Key) -> bool {
        self.table.find(key).is_some()
    }

    /// Forgets a source (a first sighting of it too); whether it was tracked.
    pub fn remove(&mut self, key: &Key) -> bool {
        self.first.forget(key);
        let Some(i) = self.table.find(key) else {
            return false;
        };
        self.remove_at(i);
        true
    }

    fn remove_at(&mut self, i: usize) {
        let slot = self.table.get(i);
        if slot.len == WIDE {
            let key = slot.key;
            self.wide.remove(&key);
        }
        self.table.remove(i);
    }

    /// Drops the sources quiet for more than `window` at `now`.
    pub fn expire(&mut self, now: Nanos, window: Nanos) {
        self.first.release_if_quiet(now, window);
        let wide = &mut self.wide;
        self.table.retain(|s| {
            let keep = now.saturating_sub(s.last_activity()) <= window;
            if !keep && s.len == WIDE {
                wide.remove(&s.key);
            }
            keep
        });
    }

    /// Makes room for one source (CLOCK, see the module documentation); returns 1 if a
    /// live source had to go, 0 if an expired one did.
    fn evict_one(&mut self, now: Nanos, window: Nanos) -> u64 {
        let live = |slot: &SourceSlot| now.saturating_sub(slot.last_activity()) <= window;
        let Some(h) = self.table.clock(|slot| {
            let live = live(slot);
            credit::spend(&mut slot.clock, live)
        }) else {
            return 0;
        };
        let was_live = live(self.table.get(h));
        self.remove_at(h);
        u64::from(was_live)
    }
}

/// The IPv4 4-tuple key: source, destination, ports.
type Key4 = [u32; 3];

/// The words [`Key4`] is hashed as: two registers, never its bytes (see
/// [`Slot::hash_key`]).
#[inline]
fn key4_words(key: &Key4) -> (u64, u32) {
    (u64::from(key[0]) << 32 | u64::from(key[1]), key[2])
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt4 {
    key: Key4,
    /// 0 free, 1 in use, 2 in use and referenced since the hand passed.
    state: u32,
    last: Nanos,
}

/// The IPv6 (or mixed) 4-tuple key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key6 {
    src: Key,
    dst: Key,
    ports: u32,
}

/// Flat rather than holding a [`Key6`], so that `state` fills the key's padding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt6 {
    src: Key,
    dst: Key,
    ports: u32,
    state: u32,
    last: Nanos,
}

/// What both attempt slots offer the generic code.
pub(crate) trait AttemptSlot: Slot {
    fn new(key: Self::Key, now: Nanos) -> Self;
    fn last(&self) -> Nanos;
    /// Records a sighting at `now`; returns the previous one.
    fn seen(&mut self, now: Nanos) -> Nanos;
    /// Clears the reference bit; whether it was set.
    fn unreference(&mut self) -> bool;
}

/// The parts both attempt slots share.
macro_rules! attempt_slot {
    ($ty:ty, $key:ty) => {
        impl AttemptSlot for $ty {
            #[inline]
            fn new(key: $key, now: Nanos) -> Self {
                let mut slot = Self::EMPTY;
                slot.set_key(key);
                slot.state = 2;
                slot.last = now;
                slot
            }
            #[inline]
            fn last(&self) -> Nanos {
                self.last
            }
            #[inline]
            fn seen(&mut self, now: Nanos) -> Nanos {
                self.state = 2;
                std::mem::replace(&mut self.last, now)
            }
            #[inline]
            fn unreference(&mut self) -> bool {
                std::mem::replace(&mut self.state, 1) == 2
            }
        }
    };
}

impl Slot for Attempt4 {
    type Key = Key4;
    const EMPTY: Self = Self {
        key: [0; 3],
        state: 0,
        last: 0,
    };
    #[inline]
    fn is_used(&self) -> bool {
        self.state != 0
    }
    #[inline]
    fn key(&self) -> Key4 {
        self.key
    }
    #[inline]
    fn hash_key(key: &Key4, seed: &foldhash::fast::RandomState) -> u64 {
        seed.hash_one(key4_words(key))
    }
}

impl Attempt4 {
    #[inline]
    fn set_key(&mut self, key: Key4) {
        self.key = key;
    }
}

impl Slot for Attempt6 {
    type Key = Key6;
    const EMPTY: Self = Self {
        src: [0; 2],
        dst: [0; 2],
        ports: 0,
        state: 0,
        last: 0,
    };
    #[inline]
    fn is_used(&self) -> bool {
        self.state != 0
    }
    #[inline]
    fn key(&self) -> Key6 {
        Key6 {
            src: self.src,
            dst: self.dst,
            ports: self.ports,
        }
    }
}

impl Attempt6 {
    #[inline]
    fn set_key(&mut self, key: Key6) {
        (self.src, self.dst, self.ports) = (key.src, key.dst, key.ports);
    }
}

attempt_slot!(Attempt4, Key4);
attempt_slot!(Attempt6, Key6);

/// A 4-tuple, sorted into the table that holds its kind.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tuple {
    V4(Key4),
    V6(Key6),
}

impl std::hash::Hash for Tuple {
    /// Whole words, as the tables hash their keys (see [`Slot::hash_key`]).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::V4(key) => key4_words(key).hash(state),
            Self::V6(key) => key.hash(state),
        }
    }
}

impl Tuple {
    /// The tuple of addresses given as keys (IPv4 ones IPv4-mapped) and ports.
    #[inline]
    pub fn new(src: u128, dst: u128, sport: u16, dport: u16) -> Self {
        let ports = u32::from(sport) << 16 | u32::from(dport);
        const MAPPED: u128 = 0xffff_0000_0000;
        if src >> 32 == MAPPED >> 32 && dst >> 32 == MAPPED >> 32 {
            Self::V4([src as u32, dst as u32, ports])
        } else {
            Self::V6(Key6 {
                src: [(src >> 64) as u64, src as u64],
                dst: [(dst >> 64) as u64, dst as u64],
                ports,
            })
        }
    }
}

/// The remembered 4-tuples (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    v4: Table<Attempt4>,
    v6: Table<Attempt6>,
}

impl Attempts {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.v4.span() + self.v6.span()
    }

    /// Starts loading `t`'s control byte, and its slot where `slot`.
    #[inline]
    pub fn prefetch(&self, t: &Tuple, slot: bool) {
        match t {
            Tuple::V4(k) => self.v4.prefetch(k, slot),
            Tuple::V6(k) => self.v6.prefetch(k, slot),
        }
    }

    /// Records a sighting of `t` at `now`; returns whether it repeats one within `window`
    /// (a retransmission) and how many live tuples were evicted to stay under `cap`.
    #[cfg(test)]
    pub fn sighting(&mut self, t: Tuple, now: Nanos, window: Nanos, cap: usize) -> (bool, u64) {
        match self.again(t, now, window) {
            Some(repeat) => (repeat, 0),
            None => (false, self.insert(t, now, window, cap)),
        }
    }

    /// A sighting at `now` of `t`, if it is remembered: whether it repeats the last one
    /// within `window` (a retransmission). `None` if `t` is not remembered.
    #[inline]
    pub fn again(&mut self, t: Tuple, now: Nanos, window: Nanos) -> Option<bool> {
        match t {
            Tuple::V4(k) => again(&mut self.v4, k, now, window),
            Tuple::V6(k) => again(&mut self.v6, k, now, window),
        }
    }

    /// Remembers `t`, not remembered yet, as seen at `now`; returns how many live tuples
    /// were evicted to stay under `cap`.
    #[inline]
    pub fn insert(&mut self, t: Tuple, now: Nanos, window: Nanos, cap: usize) -> u64 {
        let full = self.len() >= cap.max(1);
        let (v4, v6) = (&mut self.v4, &mut self.v6);
        match t {
            Tuple::V4(k) => insert(v4, v6, k, now, window, full),
            Tuple::V6(k) => insert(v6, v4, k, now, window, full),
        }
    }

    /// Drops the tuples last seen more than `window` before `now`.
    pub fn expire(&mut self, now: Nanos, window: Nanos) {
        self.v4.retain(|a| now.saturating_sub(a.last()) <= window);
        self.v6.retain(|a| now.saturating_sub(a.last()) <= window);
    }
}

#[inline]
fn again<A: AttemptSlot>(
    table: &mut Table<A>,
    key: A::Key,
    now: Nanos,
    window: Nanos,
) -> Option<bool> {
    let i = table.find(&key)?;
    let last = table.get_mut(i).seen(now);
    Some(now.saturating_sub(last) <= window)
}

#[inline]
fn insert<A: AttemptSlot, B: AttemptSlot>(
    table: &mut Table<A>,
    other: &mut Table<B>,
    key: A::Key,
    now: Nanos,
    window: Nanos,
    full: bool,
) -> u64 {
    let evicted = if !full {
        0
    } else if table.len() > 0 {
        evict_attempt(table, now, window)
    } else {
        evict_attempt(other, now, window)
    };
    if let Err(i) = table.find_or_free(&key) {
        table.fill(i, A::new(key, now));
    }
    evicted
}

/// Makes room for one tuple (CLOCK over the reference bit; expired tuples go first as the
/// hand meets them); returns 1 if a live tuple had to go.
fn evict_attempt<A: AttemptSlot>(table: &mut Table<A>, now: Nanos, window: Nanos) -> u64 {
    let live = |slot: &A| now.saturating_sub(slot.last()) <= window;
    let Some(h) = table.clock(|slot| {
        if live(slot) && slot.unreference() {
            return Hand::Pass;
        }
        Hand::Evict
    }) else {
        return 0;
    };
    let was_live = live(table.get(h));
    table.remove(h);
    u64::from(was_live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_one_cache_line_or_less() {
        assert_eq!(std::mem::size_of::<SourceSlot>(), 64);
        assert_eq!(std::mem::align_of::<SourceSlot>(), 64);
        assert_eq!(std::mem::size_of::<Attempt4>(), 24);
        assert_eq!(std::mem::size_of::<Attempt6>(), 48);
    }

    #[test]
    fn ipv4_tuples_take_the_small_table_and_mixed_ones_the_large() {
        let v4 = |a: u32| 0xffff_0000_0000u128 | u128::from(a);
        assert!(matches!(
            Tuple::new(v4(1), v4(2), 3, 4),
            Tuple::V4([1, 2, 0x0003_0004])
        ));
        assert!(matches!(Tuple::new(v4(1), 2, 3, 4), Tuple::V6(_)));
        assert!(matches!(Tuple::new(1 << 100, 2, 3, 4), Tuple::V6(_)));
        let mut a = Attempts::default();
        for t in [
            Tuple::new(v4(1), v4(2), 3, 4),
            Tuple::new(1 << 100, 2, 3, 4),
        ] {
            assert_eq!(a.sighting(t, 0, 10, 10), (false, 0));
            assert_eq!(a.sighting(t, 10, 10, 10), (true, 0));
            assert_eq!(a.sighting(t, 21, 10, 10), (false, 0));
        }
        assert_eq!(a.len(), 2);
        a.expire(32, 10);
        assert_eq!(a.len(), 0);
    }
}
