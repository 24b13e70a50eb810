//! An open-addressed hash table for the detector's per-attempt lookups.
//!
//! The key decision is to own the memory layout: entries live in one flat array (linear
//! probing, no separate control bytes), so a lookup that finds its key at home touches one
//! cache line, the slot of a key can be prefetched before it is needed, and an eviction hand
//! can walk the array (CLOCK) in O(1) amortised per insertion. Deletion shifts the following
//! entries back instead of leaving tombstones, so probe runs never degrade under churn.
//!
//! Capacity is a power of two and the load is kept at or under 3/4: the table grows by
//! doubling and shrinks (after a sweep) when under 1/8 full, so memory follows the entries
//! held, at most 8/3 slots per entry.

use std::hash::{BuildHasher, Hash};

/// An entry of a [`Table`]: a fixed-size value that knows its key and whether the slot
/// holding it is in use.
pub(crate) trait Slot: Copy {
    type Key: Copy + Eq + Hash;
    /// An unused slot.
    const EMPTY: Self;
    fn is_used(&self) -> bool;
    fn key(&self) -> Self::Key;
}

/// Fewest slots once anything is stored.
const MIN_SLOTS: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct Table<S: Slot> {
    slots: Vec<S>,
    len: usize,
    hasher: foldhash::fast::RandomState,
    /// The eviction hand (CLOCK): the next slot an eviction looks at.
    pub hand: usize,
}

impl<S: Slot> Default for Table<S> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
            hand: 0,
        }
    }
}

impl<S: Slot> Table<S> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (used or not).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn home(&self, key: &S::Key) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.slots.len().wrapping_sub(1))
    }

    /// Asks the CPU to start loading `key`'s home slot (all its cache lines), so that a lookup a little later
    /// does not wait for memory. Does nothing where there is no prefetch instruction.
    #[inline]
    pub fn prefetch(&self, key: &S::Key) {
        if self.slots.is_empty() {
            return;
        }
        let slot: *const S = &self.slots[self.home(key)];
        // Every cache line of a slot wider than one (they are aligned to 64 bytes).
        for line in (0..std::mem::size_of::<S>()).step_by(64) {
            prefetch(slot.cast::<i8>().wrapping_add(line));
        }
    }

    /// The index of `key`'s slot.
    #[inline]
    pub fn find(&self, key: &S::Key) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if !s.is_used() {
                return None;
            }
            if s.key() == *key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// `Ok(index)` of `key`'s slot, or `Err(index)` of the free slot it would take (the
    /// table grows first if one more entry would overload it).
    #[inline]
    pub fn find_or_free(&mut self, key: &S::Key) -> Result<usize, usize> {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            if let Some(i) = self.find(key) {
                return Ok(i);
            }
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if !s.is_used() {
                return Err(i);
            }
            if s.key() == *key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Stores `slot` in the free slot `i` that [`Table::find_or_free`] returned (with no
    /// change to the table in between).
    #[inline]
    pub fn fill(&mut self, i: usize, slot: S) {
        debug_assert!(!self.slots[i].is_used() && slot.is_used());
        self.slots[i] = slot;
        self.len += 1;
    }

    #[inline]
    pub fn get(&self, i: usize) -> &S {
        &self.slots[i]
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> &mut S {
        &mut self.slots[i]
    }

    /// Empties slot `i`, shifting the entries after it back so that no probe run is cut.
    /// The entry that lands in `i` (if any) has not been looked at by a walk at `i`.
    pub fn remove(&mut self, i: usize) {
        debug_assert!(self.slots[i].is_used());
        let mask = self.slots.len() - 1;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let s = self.slots[j];
            if !s.is_used() {
                break;
            }
            let home = self.home(&s.key());
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = S::EMPTY;
        self.len -= 1;
    }

    /// Keeps the entries for which `keep` holds (it may see an entry twice, so it must
    /// answer the same both times); returns how many were removed. A table left under an
    /// eighth full shrinks.
    pub fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) -> usize {
        let before = self.len;
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.is_used() && !keep(s) {
                self.remove(i);
            } else {
                i += 1;
            }
        }
        if self.slots.len() > MIN_SLOTS && self.len * 8 < self.slots.len() {
            let want = (self.len * 2).next_power_of_two().max(MIN_SLOTS);
            self.resize(want);
        }
        before - self.len
    }

    /// The used entries, in slot order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &S> + '_ {
        self.slots.iter().filter(|s| s.is_used())
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![S::EMPTY; slots]);
        let mask = slots - 1;
        for s in old.into_iter().filter(|s| s.is_used()) {
            let mut i = self.home(&s.key());
            while self.slots[i].is_used() {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
        self.hand &= mask;
    }
}

/// A hint to bring the cache line at `p` in; never dereferences `p` as far as the program
/// can tell.
#[inline]
fn prefetch(p: *const i8) {
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
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
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
        assert!(t.capacity() <= 4 * model.len().max(MIN_SLOTS));
    }

    #[test]
    fn an_emptied_table_shrinks_and_finds_nothing() {
        let mut t = Table::<Pair>::default();
        assert_eq!(t.find(&1), None);
        for k in 0..10_000 {
            put(&mut t, k, k);
        }
        assert!(t.capacity() >= 10_000 * 4 / 3);
        assert_eq!(t.retain(|p| p.key < 10), 9_990);
        assert_eq!(t.len(), 10);
        assert!(t.capacity() <= 32, "{}", t.capacity());
        assert_eq!(t.find(&5).map(|i| t.get(i).value), Some(5));
        assert_eq!(t.find(&500), None);
    }
}
