//! An open-addressed hash table for the detector's per-attempt lookups.
//!
//! The key decision is to own the memory layout: entries live in one flat array (linear
//! probing), so a lookup that finds its key at home touches one slot, the slot of a key can
//! be prefetched before it is needed, and an eviction hand can walk the array (CLOCK) in
//! O(1) amortised per insertion. Deletion shifts the following entries back instead of
//! leaving tombstones, so probe runs never degrade under churn.
//!
//! Beside the slots, one control byte a slot: 0 for a free slot, else 7 bits of the key's
//! hash (bits the home index does not use) with the top bit set. A probe walks the control
//! bytes and reads a slot only where they match, about once in 128 for another key. Under a
//! spoofed flood nearly every lookup is of an absent key: it then reads only control bytes,
//! 64 slots to a cache line and a table's worth in a few hundred KiB to a few MiB, mostly
//! in the CPU's caches, where the slots (24 to 64 bytes each) are megabytes away in memory.
//!
//! Capacity is a power of two and the load is kept at or under 1/2: the table grows by
//! doubling and shrinks (after a sweep) when under 1/16 full, so memory follows the entries
//! held, two to four slots per entry once grown. Why 1/2 and not the usual 3/4: under a
//! spoofed flood nearly every lookup is of an absent key, and with linear probing that
//! walks 1/2 x (1 + 1/(1 - load)^2) slots on average, 8.5 at 3/4 and 2.5 at 1/2 (the
//! flood benchmark, prefetched, ran about 1.8x faster at 1/2).

use std::hash::{BuildHasher, Hash};

/// An entry of a [`Table`]: a fixed-size value that knows its key and whether the slot
/// holding it is in use.
pub(crate) trait Slot: Copy {
    type Key: Copy + Eq + Hash;
    /// An unused slot.
    const EMPTY: Self;
    fn is_used(&self) -> bool;
    fn key(&self) -> Self::Key;
    /// The hash of `key` under `seed`. A key whose derived `Hash` writes bytes that the
    /// hasher then reads back at other offsets (a `[u32; 3]` is read as two overlapping
    /// `u64`s) overrides it to hash whole words: such a read cannot be served from the
    /// stores that wrote the key and waits until they, and every store before them, reach
    /// the cache (behind a store that missed it, a memory latency).
    #[inline]
    fn hash_key(key: &Self::Key, seed: &foldhash::fast::RandomState) -> u64 {
        seed.hash_one(key)
    }
}

/// Fewest slots once anything is stored.
const MIN_SLOTS: usize = 16;

/// Slots of the old array moved on by each insertion while the table grows (at least:
/// a cluster is always moved whole). The new array is twice the old one and grows again
/// at 1/2 of it, so two an insertion would do; more end sooner the time in which a
/// lookup of an absent key may look in both arrays, at a few microseconds an insertion.
const MOVE_PER_INSERT: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct Table<S: Slot> {
    slots: Vec<S>,
    /// One control byte per slot (see the module documentation).
    ctrl: Vec<u8>,
    /// Entries held, in `slots` and `old` together.
    len: usize,
    /// While the table grows: the previous array, whose entries move to `slots` a few
    /// at a time (see [`Growing`]).
    old: Option<Growing<S>>,
    hasher: foldhash::fast::RandomState,
    /// The eviction hand (CLOCK): the next index [`Table::clock`] looks at (see
    /// [`Table::span`]).
    hand: usize,
}

/// The credit a source earns for CLOCK eviction, shared by the port-scan and sweep
/// tables: one `clock` byte (credit in the low bits, [`credit::VISITED`] once the hand
/// passed) and one of returns (a count, and the era of the last hit: see [`credit::earn`]).
pub(crate) mod credit {
    use super::Hand;

    /// Most credit an entry can hold: an open episode.
    pub const MAX: u8 = 15;
    /// The `clock` bit set when the hand passes an entry.
    pub const VISITED: u8 = 0x80;

    /// The turnover era (modulo 16) after `inserted` insertions into a table of `cap`
    /// entries: an eighth of the cap's worth of insertions each, rounded down to a power
    /// of two (a shift, not a division, on every hit).
    #[inline]
    pub fn era(inserted: u64, cap: usize) -> u8 {
        ((inserted >> (cap / 8).max(1).ilog2()) & 0xF) as u8
    }

    /// After a hit in `era`: a return is counted if the entry is not `new` and the hand
    /// passed it or an era began since its last hit (before the table is first full the
    /// hand does not move, and a return then would otherwise count for nothing); the
    /// credit is then one plus returns x `evidence` (ports or hosts in the window), at
    /// most [`MAX`], which an open episode holds. `returns` holds the count of returns
    /// (low four bits, saturating) and the era of the last hit (high four).
    #[inline]
    pub fn earn(
        clock: &mut u8,
        returns: &mut u8,
        (new, era): (bool, u8),
        evidence: usize,
        in_episode: bool,
    ) {
        let mut count = *returns & 0xF;
        if !new && (*clock & VISITED != 0 || *returns >> 4 != era) {
            count = (count + 1).min(0xF);
        }
        *returns = count | era << 4;
        *clock = if in_episode {
            MAX
        } else {
            (1 + usize::from(count) * evidence).min(usize::from(MAX)) as u8
        };
    }

    /// The hand at an entry: a live one with credit left spends one and stays, any
    /// other goes.
    #[inline]
    pub fn spend(clock: &mut u8, live: bool) -> Hand {
        let left = *clock & !VISITED;
        if live && left > 0 {
            *clock = (left - 1) | VISITED;
            return Hand::Pass;
        }
        Hand::Evict
    }
}

/// What the eviction hand does with the entry it points at ([`Table::clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hand {
    /// Leave it (after taking a credit or clearing a bit) and move on.
    Pass,
    /// This one goes.
    Evict,
}

/// The array a growing table is leaving. Its entries move a whole cluster (a run of used
/// slots between two empty ones) at a time, and the slots they leave are emptied: as a
/// cluster only ever goes whole, no probe run through what is left is ever cut, so the
/// old array stays a correct table of the entries not moved yet (removals there shift
/// entries back inside their cluster, as in any table; nothing is inserted there).
#[derive(Debug, Clone)]
struct Growing<S> {
    slots: Vec<S>,
    ctrl: Vec<u8>,
    len: usize,
    /// The first slot looked at: just after an empty one, so at a cluster's start.
    start: usize,
    /// The next slot to look at.
    cursor: usize,
    /// Slots not looked at yet.
    left: usize,
}

impl<S: Slot> Default for Table<S> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            ctrl: Vec::new(),
            len: 0,
            old: None,
            hasher: foldhash::fast::RandomState::default(),
            hand: 0,
        }
    }
}

impl<S: Slot> Table<S> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (used or not) in the array new entries go to.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The indexes a hand walks, `0..span()`: while the table grows, the old array's
    /// slots follow the new one's.
    pub fn span(&self) -> usize {
        self.slots.len() + self.old.as_ref().map_or(0, |o| o.slots.len())
    }

    #[inline]
    fn home_in(&self, key: &S::Key, slots: usize) -> usize {
        (S::hash_key(key, &self.hasher) as usize) & (slots.wrapping_sub(1))
    }

    #[inline]
    fn home(&self, key: &S::Key) -> usize {
        self.home_in(key, self.slots.len())
    }

    /// The control byte of a used slot holding `key`.
    #[inline]
    fn tag(&self, key: &S::Key) -> u8 {
        tag_of(S::hash_key(key, &self.hasher))
    }

    /// Asks the CPU to start loading `key`'s home slot (all its cache lines), so that a lookup a little later
    /// does not wait for memory. Does nothing where there is no prefetch instruction.
    /// With `slot` false, only the home's control byte: enough to learn that the key is
    /// absent, where the caller expects it to be and will not write its slot either.
    #[inline]
    pub fn prefetch(&self, key: &S::Key, slot: bool) {
        if self.slots.is_empty() {
            return;
        }
        let home = self.home(key);
        prefetch_line(std::ptr::from_ref(&self.ctrl[home]).cast());
        if !slot {
            return;
        }
        let slot: *const S = &self.slots[home];
        // Every cache line of a slot wider than one (they are aligned to 64 bytes).
        for line in (0..std::mem::size_of::<S>()).step_by(64) {
            prefetch_line(slot.cast::<i8>().wrapping_add(line));
        }
    }

    /// The index of `key`'s slot in `slots` (linear probing from its home over the
    /// control bytes `ctrl`), or of the free slot that ends its probe run.
    #[inline]
    fn find_in(&self, slots: &[S], ctrl: &[u8], key: &S::Key) -> Result<usize, usize> {
        let mask = slots.len() - 1;
        let hash = S::hash_key(key, &self.hasher);
        let tag = tag_of(hash);
        let mut i = (hash as usize) & mask;
        loop {
            let c = ctrl[i];
            if c == FREE {
                return Err(i);
            }
            if c == tag && slots[i].key() == *key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The index of `key`'s slot. While the table grows, an entry still in the old array
    /// has an index past [`Table::capacity`]; [`Table::get`] and the rest take it alike.
    #[inline]
    pub fn find(&self, key: &S::Key) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // Entries held means an array to hold them: `slots` is not empty.
        match self.find_in(&self.slots, &self.ctrl, key) {
            Ok(i) => Some(i),
            Err(_) => self.find_old(key),
        }
    }

    /// The index of `key`'s slot in the old array (as [`Table::find`] gives it), without
    /// touching memory when its home there was moved already (the slots moved are empty,
    /// so the key is not there).
    #[inline]
    fn find_old(&self, key: &S::Key) -> Option<usize> {
        let old = self.old.as_ref().filter(|o| o.len > 0)?;
        let n = old.slots.len();
        let home = self.home_in(key, n);
        if (home.wrapping_sub(old.start) & (n - 1)) < n - old.left {
            return None;
        }
        let i = self.find_in(&old.slots, &old.ctrl, key).ok()?;
        Some(self.slots.len() + i)
    }

    /// `Ok(index)` of `key`'s slot, or `Err(index)` of the free slot it would take (the
    /// table grows first if one more entry would overload it).
    #[inline]
    pub fn find_or_free(&mut self, key: &S::Key) -> Result<usize, usize> {
        self.step();
        if (self.len + 1) * 2 > self.slots.len() {
            if let Some(i) = self.find(key) {
                return Ok(i);
            }
            // A growth still under way (rare: each insertion moves 64 slots on) ends
            // first; moving entries changes neither their number nor the new array.
            self.settle();
            self.grow((self.slots.len() * 2).max(MIN_SLOTS));
        }
        // The new array first: most keys are there, and its free slot is the answer
        // when the key is in neither.
        match self.find_in(&self.slots, &self.ctrl, key) {
            Ok(i) => Ok(i),
            Err(free) => self.find_old(key).ok_or(free),
        }
    }

    /// Stores `slot` in the free slot `i` that [`Table::find_or_free`] returned (with no
    /// change to the table in between).
    #[inline]
    pub fn fill(&mut self, i: usize, slot: S) {
        debug_assert!(!self.slots[i].is_used() && slot.is_used());
        self.ctrl[i] = self.tag(&slot.key());
        self.slots[i] = slot;
        self.len += 1;
    }

    #[inline]
    pub fn get(&self, i: usize) -> &S {
        match i.checked_sub(self.slots.len()) {
            None => &self.slots[i],
            Some(j) => {
                &self
                    .old
                    .as_ref()
                    .expect("an index past the array is in the old one")
                    .slots[j]
            }
        }
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> &mut S {
        match i.checked_sub(self.slots.len()) {
            None => &mut self.slots[i],
            Some(j) => {
                &mut self
                    .old
                    .as_mut()
                    .expect("an index past the array is in the old one")
                    .slots[j]
            }
        }
    }

    /// Empties slot `i`, shifting the entries after it back so that no probe run is cut.
    /// The entry that lands in `i` (if any) has not been looked at by a walk at `i`.
    pub fn remove(&mut self, i: usize) {
        match i.checked_sub(self.slots.len()) {
            None => {
                let (mut slots, mut ctrl) = (
                    std::mem::take(&mut self.slots),
                    std::mem::take(&mut self.ctrl),
                );
                self.remove_in(&mut slots, &mut ctrl, i);
                (self.slots, self.ctrl) = (slots, ctrl);
            }
            Some(j) => {
                let mut old = self
                    .old
                    .take()
                    .expect("an index past the array is in the old one");
                self.remove_in(&mut old.slots, &mut old.ctrl, j);
                old.len -= 1;
                self.old = Some(old);
            }
        }
        self.len -= 1;
    }

    fn remove_in(&self, slots: &mut [S], ctrl: &mut [u8], i: usize) {
        debug_assert!(slots[i].is_used());
        let mask = slots.len() - 1;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while ctrl[j] != FREE {
            let s = slots[j];
            let home = self.home_in(&s.key(), slots.len());
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                slots[hole] = s;
                ctrl[hole] = ctrl[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        slots[hole] = S::EMPTY;
        ctrl[hole] = FREE;
    }

    /// Keeps the entries for which `keep` holds (it may see an entry twice, so it must
    /// answer the same both times); returns how many were removed. A table left under an
    /// eighth full shrinks.
    ///
    /// One pass, a cluster (a run of used slots between two empty ones) at a time: a
    /// cluster that lost entries is emptied from its first loss on and the survivors after
    /// that put back from their homes. A survivor's home lies in its cluster, before it,
    /// so it lands at or before where it was, in the cluster's own slots; no other cluster
    /// is touched. Removing entry by
    /// entry, shifting the rest of the cluster back each time, cost several times more
    /// where a sweep drops most of a table.
    pub fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) -> usize {
        self.settle();
        let before = self.len;
        let n = self.slots.len();
        if self.len > 0 {
            let mask = n - 1;
            // That start's empty slot is looked at last, so no cluster is cut in two.
            let mut i = cluster_start(&self.ctrl);
            let mut left = n;
            let mut survivors: Vec<(S, u8)> = Vec::new();
            while left > 0 {
                if self.ctrl[i] == FREE {
                    i = (i + 1) & mask;
                    left -= 1;
                    continue;
                }
                // The cluster's first loss: the survivors before it stay where they are
                // (their way from home to slot crosses no emptied slot).
                let mut first_gone = None;
                survivors.clear();
                while self.ctrl[i] != FREE {
                    if keep(&self.slots[i]) {
                        if first_gone.is_some() {
                            survivors.push((self.slots[i], self.ctrl[i]));
                        }
                    } else {
                        first_gone.get_or_insert(i);
                        self.len -= 1;
                    }
                    i = (i + 1) & mask;
                    left -= 1;
                }
                let Some(mut j) = first_gone else {
                    continue;
                };
                while j != i {
                    self.slots[j] = S::EMPTY;
                    self.ctrl[j] = FREE;
                    j = (j + 1) & mask;
                }
                for &(s, c) in &survivors {
                    let (Ok(free) | Err(free)) = self.find_in(&self.slots, &self.ctrl, &s.key());
                    self.slots[free] = s;
                    self.ctrl[free] = c;
                }
            }
        }
        if self.slots.len() > MIN_SLOTS && self.len * 16 < self.slots.len() {
            let want = (self.len * 4).next_power_of_two().max(MIN_SLOTS);
            self.grow(want);
            self.settle();
        }
        before - self.len
    }

    /// Whether every control byte says what its slot holds.
    #[cfg(test)]
    fn consistent(&self) -> bool {
        let agree = |slots: &[S], ctrl: &[u8]| {
            slots.len() == ctrl.len()
                && slots.iter().zip(ctrl).all(|(s, &c)| {
                    if s.is_used() {
                        c == self.tag(&s.key())
                    } else {
                        c == FREE
                    }
                })
        };
        agree(&self.slots, &self.ctrl) && self.old.as_ref().is_none_or(|o| agree(&o.slots, &o.ctrl))
    }

    /// The used entries.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &S> + '_ {
        let old = self.old.iter().flat_map(|o| o.slots.iter());
        self.slots.iter().chain(old).filter(|s| s.is_used())
    }

    /// Moves the eviction hand (CLOCK) over the used entries, both arrays while the table
    /// grows, until `judge` picks one to evict, and returns its index, the hand left on
    /// it; `None` if the table is empty. `judge` may change the entries it passes (take a
    /// credit, clear a reference bit): that, paid for by the hits that gave the credit,
    /// is what keeps a walk O(1) amortised. The caller removes the entry.
    pub fn clock(&mut self, mut judge: impl FnMut(&mut S) -> Hand) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        self.step();
        loop {
            let h = if self.hand >= self.span() {
                0
            } else {
                self.hand
            };
            self.hand = h;
            let slot = self.get_mut(h);
            if slot.is_used() && judge(slot) == Hand::Evict {
                return Some(h);
            }
            self.hand = h + 1;
        }
    }

    /// Moves a few more of the old array's entries on, if the table is growing. Insertions
    /// do this themselves; a table at its cap takes none, so its evictions call this, or
    /// a growth begun just under the cap would never end.
    #[inline]
    pub fn step(&mut self) {
        if self.old.is_some() {
            self.move_some(MOVE_PER_INSERT);
        }
    }

    /// Moves what is left of the old array, if the table is growing.
    fn settle(&mut self) {
        while self.old.is_some() {
            self.move_some(usize::MAX);
        }
    }

    /// Moves `at_least` slots' worth of the old array (whole clusters) into the new one.
    fn move_some(&mut self, at_least: usize) {
        let Some(mut old) = self.old.take() else {
            return;
        };
        let mask = old.slots.len() - 1;
        let mut looked = 0;
        // Stop only at an empty slot, so that a cluster goes whole.
        while old.left > 0 && (looked < at_least || old.ctrl[old.cursor] != FREE) {
            let s = std::mem::replace(&mut old.slots[old.cursor], S::EMPTY);
            let c = std::mem::replace(&mut old.ctrl[old.cursor], FREE);
            if c != FREE {
                // An entry is in one array only, so this finds a free slot.
                let (Ok(free) | Err(free)) = self.find_in(&self.slots, &self.ctrl, &s.key());
                debug_assert!(!self.slots[free].is_used());
                self.slots[free] = s;
                self.ctrl[free] = c;
                old.len -= 1;
            }
            old.cursor = (old.cursor + 1) & mask;
            old.left -= 1;
            looked += 1;
        }
        debug_assert!(
            old.left > 0 || old.len == 0,
            "every slot looked at, every entry moved"
        );
        if old.left > 0 && old.len > 0 {
            self.old = Some(old);
        }
    }

    /// Gives the table a new array of `slots` slots; the entries move to it as the table
    /// is used (or at once, with [`Table::settle`]).
    fn grow(&mut self, slots: usize) {
        debug_assert!(self.old.is_none());
        let previous = std::mem::replace(&mut self.slots, array(slots, S::EMPTY));
        let previous_ctrl = std::mem::replace(&mut self.ctrl, array(slots, FREE));
        let held = self.len;
        if held == 0 {
            return;
        }
        let n = previous.len();
        let start = cluster_start(&previous_ctrl);
        self.old = Some(Growing {
            slots: previous,
            ctrl: previous_ctrl,
            len: held,
            start,
            cursor: start,
            left: n,
        });
    }
}

/// The control byte of a free slot.
const FREE: u8 = 0;

/// The slot just after the first empty one of `ctrl` (a table is never full): a
/// cluster's start, where a walk round the array cuts no cluster in two.
fn cluster_start(ctrl: &[u8]) -> usize {
    let empty = ctrl.iter().position(|&c| c == FREE).unwrap_or(0);
    (empty + 1) & (ctrl.len() - 1)
}

/// The control byte of a used slot whose key hashes to `hash`: bits 57 to 63 (a home
/// index takes the low bits) with the top bit set, so never [`FREE`].
#[inline]
fn tag_of(hash: u64) -> u8 {
    0x80 | (hash >> 57) as u8
}

/// An array of `n` empty slots. One of 2 MiB or more is backed by huge pages where the
/// kernel has them on request (transparent huge pages in `madvise` mode, Debian's
/// default): its lookups land anywhere in it, and with 4 KiB pages nearly each one also
/// misses the TLB, a page walk that under virtualisation costs as much again as the
/// cache miss itself.
pub(crate) fn array<S: Copy>(n: usize, empty: S) -> Vec<S> {
    let mut v: Vec<S> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<S>();
    if bytes >= HUGE_PAGE {
        advise_huge(v.as_mut_ptr().cast(), bytes);
    }
    v.resize(n, empty);
    v
}

/// The size of a huge page (x86-64, arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
fn advise_huge(start: *mut u8, bytes: usize) {
    // madvise takes whole pages: the pages wholly inside the allocation.
    const PAGE: usize = 4096;
    let first = (start as usize).next_multiple_of(PAGE);
    let end = (start as usize + bytes) & !(PAGE - 1);
    let Some(at) = std::ptr::NonNull::new(first as *mut std::ffi::c_void) else {
        return;
    };
    if end <= first {
        return;
    }
    #[expect(
        unsafe_code,
        reason = "MADV_HUGEPAGE only changes how the kernel backs pages this allocation owns \
                  (not touched yet): no content, mapping or permission changes"
    )]
    // SAFETY: [first, end) lies inside the live allocation `start..start + bytes`; the
    // advice changes neither its contents nor its mapping. A refusal (no THP) is fine.
    let _ = unsafe {
        nix::sys::mman::madvise(at, end - first, nix::sys::mman::MmapAdvise::MADV_HUGEPAGE)
    };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_start: *mut u8, _bytes: usize) {}

/// Whether the last 64 lookups of a table read or wrote their key's slot, one bit each:
/// under a spoofed flood at the caps nearly every key is absent and gets no slot (a first
/// sighting holds it), and prefetching the slot as well as its control byte only fills
/// the memory system with lines no one reads; in ordinary traffic most lookups find
/// their key, and the slot is prefetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotUse(u64);

impl Default for SlotUse {
    fn default() -> Self {
        Self(u64::MAX)
    }
}

impl SlotUse {
    /// Records whether a lookup read or wrote its slot.
    #[inline]
    pub(crate) fn note(&mut self, used: bool) {
        self.0 = (self.0 << 1) | u64::from(used);
    }

    /// Whether the next lookup's slot is worth prefetching: at least one in sixteen of
    /// the last 64 lookups used theirs.
    #[inline]
    pub(crate) fn likely(self) -> bool {
        self.0.count_ones() >= 4
    }
}

/// A hint to bring the cache line at `p` in; never dereferences `p` as far as the program
/// can tell.
#[inline]
pub(crate) fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    #[expect(
        unsafe_code,
        reason = "PREFETCHT0 is only a hint: it never faults, reads nothing into the program \
                  and is part of x86-64's baseline (SSE)"
    )]
    // SAFETY: prefetching any address, valid or not, has no effect on program state.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Pair {
        key: u32,
        value: u32,
        used: bool,
    }

    impl Slot for Pair {
        type Key = u32;
        const EMPTY: Self = Self {
            key: 0,
            value: 0,
            used: false,
        };
        fn is_used(&self) -> bool {
            self.used
        }
        fn key(&self) -> u32 {
            self.key
        }
    }

    #[test]
    fn slots_are_prefetched_unless_recent_lookups_left_them_alone() {
        let mut used = SlotUse::default();
        assert!(used.likely(), "a new table's slots are prefetched");
        // A flood of absent keys: after 61 lookups that used no slot, three of 64 did.
        for _ in 0..60 {
            used.note(false);
        }
        assert!(used.likely());
        used.note(false);
        assert!(!used.likely());
        // Ordinary traffic again: four lookups that used their slot are enough.
        for _ in 0..3 {
            used.note(true);
        }
        assert!(!used.likely());
        used.note(true);
        assert!(used.likely());
    }

    /// The next of a xorshift sequence: the tests' operations and keys.
    fn xorshift(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    fn put(t: &mut Table<Pair>, key: u32, value: u32) {
        match t.find_or_free(&key) {
            Ok(i) => t.get_mut(i).value = value,
            Err(i) => t.fill(
                i,
                Pair {
                    key,
                    value,
                    used: true,
                },
            ),
        }
    }

    #[test]
    fn agrees_with_a_hash_map_under_inserts_removals_and_retains() {
        let mut t = Table::<Pair>::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u32 {
            x = xorshift(x);
            let key = (x % 5_000) as u32;
            match x % 7 {
                0..=3 => {
                    put(&mut t, key, step);
                    model.insert(key, step);
                }
                4 | 5 => {
                    if let Some(i) = t.find(&key) {
                        t.remove(i);
                    }
                    model.remove(&key);
                }
                _ if step % 997 == 0 => {
                    let cut = (x % 5_000) as u32;
                    t.retain(|p| p.key < cut);
                    model.retain(|k, _| *k < cut);
                }
                _ => {}
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(
                t.find(&key).map(|i| t.get(i).value),
                model.get(&key).copied()
            );
        }
        for (k, v) in &model {
            assert_eq!(t.find(k).map(|i| t.get(i).value), Some(*v));
        }
        assert_eq!(t.iter().count(), model.len());
        assert!(t.consistent());
        assert!(t.capacity() <= 4 * model.len().max(MIN_SLOTS));
    }

    /// A slot whose keys hash to a few homes (the top of the array among them), so that
    /// clusters are long and wrap round the array's end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Crowded(Pair);

    impl Slot for Crowded {
        type Key = u32;
        const EMPTY: Self = Self(Pair::EMPTY);
        fn is_used(&self) -> bool {
            self.0.used
        }
        fn key(&self) -> u32 {
            self.0.key
        }
        fn hash_key(key: &u32, _: &foldhash::fast::RandomState) -> u64 {
            // Homes 0, 1 and the last few slots of any array; tags still differ.
            let home = [0u64, 1, u64::MAX, u64::MAX - 2][(key % 4) as usize];
            home & 0x00ff_ffff_ffff_ffff | u64::from(key % 97) << 57
        }
    }

    #[test]
    fn a_retain_keeps_every_survivor_of_long_wrapping_clusters_findable() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300u32 {
            let mut t = Table::<Crowded>::default();
            let mut model = std::collections::HashMap::new();
            x = xorshift(x);
            let n = 1 + (x % 200) as u32;
            for key in 0..n {
                let key = key * 7 + round;
                match t.find_or_free(&key) {
                    Ok(_) => unreachable!("keys are distinct"),
                    Err(i) => t.fill(
                        i,
                        Crowded(Pair {
                            key,
                            value: key ^ 0x55,
                            used: true,
                        }),
                    ),
                }
                model.insert(key, key ^ 0x55);
            }
            x = xorshift(x);
            let salt = x;
            let kept = |k: u32| !xorshift(salt ^ u64::from(k)).is_multiple_of(3);
            let removed = t.retain(|s| kept(s.0.key));
            model.retain(|k, _| kept(*k));
            assert_eq!(removed, n as usize - model.len(), "round {round}");
            assert_eq!(t.len(), model.len());
            assert!(t.consistent());
            for key in 0..n {
                let key = key * 7 + round;
                assert_eq!(
                    t.find(&key).map(|i| t.get(i).0.value),
                    model.get(&key).copied(),
                    "round {round}, key {key}"
                );
            }
        }
    }

    /// Removes the first entry a hand meets from where it stands, as the detector's
    /// evictions do (over both arrays while the table grows); returns its key, and
    /// whether it was still in the old array.
    fn evict(t: &mut Table<Pair>) -> Option<(u32, bool)> {
        let h = t.clock(|_| Hand::Evict)?;
        let key = t.get(h).key;
        let old = h >= t.capacity();
        t.remove(h);
        Some((key, old))
    }

    #[test]
    fn evictions_by_the_hand_agree_with_a_hash_map_across_growths() {
        let mut t = Table::<Pair>::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..300_000u32 {
            x = xorshift(x);
            // Keys from a range that widens, so the table keeps growing while the hand
            // evicts and entries are removed.
            let key = (x % u64::from(1_000 + step / 10)) as u32;
            match x % 11 {
                0..=6 => {
                    put(&mut t, key, step);
                    model.insert(key, step);
                }
                7 => {
                    if let Some(i) = t.find(&key) {
                        t.remove(i);
                    }
                    model.remove(&key);
                }
                _ => {
                    if let Some((gone, _)) = evict(&mut t) {
                        assert!(model.remove(&gone).is_some(), "evicted {gone}, not held");
                    }
                }
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(
                t.find(&key).map(|i| t.get(i).value),
                model.get(&key).copied()
            );
            if step % 4_096 == 0 {
                assert!(t.consistent(), "control bytes disagree at step {step}");
            }
        }
        for (k, v) in &model {
            assert_eq!(t.find(k).map(|i| t.get(i).value), Some(*v));
        }
        assert_eq!(t.iter().count(), model.len());
        assert!(t.consistent());
    }

    #[test]
    fn a_growing_table_moves_its_entries_a_few_at_a_time_and_finds_them_all_meanwhile() {
        let mut t = Table::<Pair>::default();
        let mut k = 0;
        // Up to the insertion that grows the table past 1/2 of 4,096 slots.
        while t.capacity() <= 4_096 {
            put(&mut t, k, k);
            k += 1;
        }
        let moving = t.old.as_ref().map_or(0, |o| o.len);
        assert!(
            moving > 2_000,
            "the growth moved {} of {k} at once",
            k as usize - moving
        );
        // Every entry is found, wherever it is, and a removal in either array holds.
        assert_eq!(t.find(&7).map(|i| t.get(i).value), Some(7));
        let i = t.find(&7).expect("held");
        t.remove(i);
        assert_eq!(t.find(&7), None);
        // A hand that walks on into the old array evicts from there too.
        t.hand = t.capacity();
        let mut gone = vec![7];
        let mut from_old = 0;
        for _ in 0..20 {
            let (key, old) = evict(&mut t).expect("entries held");
            gone.push(key);
            from_old += usize::from(old);
        }
        assert!(from_old > 0, "the hand never reached the old array");
        for j in 0..k {
            let want = (!gone.contains(&j)).then_some(j);
            assert_eq!(t.find(&j).map(|i| t.get(i).value), want, "{j}");
        }
        // Insertions move the rest on, well before the next growth.
        let held = t.len();
        assert_eq!(held, k as usize - gone.len());
        for j in k..k + 1_000 {
            put(&mut t, j, j);
        }
        assert!(t.old.is_none(), "still moving after 1,000 insertions");
        assert!(t.consistent());
        assert_eq!(t.len(), held + 1_000);
        assert_eq!(t.iter().count(), t.len());
        assert!(
            (0..k + 1_000)
                .filter(|j| !gone.contains(j))
                .all(|j| t.find(&j).is_some())
        );
    }

    #[test]
    fn an_emptied_table_shrinks_and_finds_nothing() {
        let mut t = Table::<Pair>::default();
        assert_eq!(t.find(&1), None);
        for k in 0..10_000 {
            put(&mut t, k, k);
        }
        assert!(t.capacity() >= 10_000 * 2);
        assert_eq!(t.retain(|p| p.key < 10), 9_990);
        assert_eq!(t.len(), 10);
        assert!(t.capacity() <= 64, "{}", t.capacity());
        assert_eq!(t.find(&5).map(|i| t.get(i).value), Some(5));
        assert_eq!(t.find(&500), None);
    }
}
