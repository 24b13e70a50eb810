//! Address sweeps (SPEC §2): a source whose unanswered attempts reached more than
//! `max_hosts` distinct destination addresses on one port within the window.
//!
//! The key decision is to judge an attempt only once its answer had time to come: each
//! new incoming attempt waits in a queue (time order, so the queue is its own timer) for
//! `answer_wait`; a SYN-ACK for its 4-tuple in the meantime marks it answered (a monitoring
//! server whose connections succeed is never a sweeper), otherwise it counts toward its
//! source's hosts on that port. Everything is bounded: the queue and the table of answers
//! by the detector's attempt cap (oldest dropped first, counted), the sweeping sources by
//! its source cap, the ports of one source to [`Bounds::ports`] and the hosts of one
//! port to `max_hosts + 1`.
//!
//! At the source cap a newcomer that came back since its first attempt (it holds a slot
//! of the port-scan table, which a source seen once at the cap does not get) gets in: a
//! CLOCK hand evicts one source, as in the port-scan table (`state`), by a credit of one
//! plus (returns after the hand passed it or an eighth of the cap came in) x (hosts it
//! reached in the window), an open
//! episode the most. A spoofed flood's sources, one unanswered attempt each, are dropped
//! at the cap (counted): they neither keep a real sweeper out nor turn the table over
//! between two of its attempts.
//!
//! Judging is a lookup per attempt, so the sweeping sources live in an open-addressed table
//! of 128-byte slots (two cache lines, loaded together) that hold the common case whole: up
//! to seven (port, IPv4 host, time) entries, the source's state being one flat list grouped
//! by port; a source with more keeps them in a side table. The detector prefetches the slot of an attempt a few
//! places ahead in the queue.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::Nanos;
use crate::key::{key_addr, key_v4};
use crate::table::{Slot, Table, credit};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Ports remembered for one sweeping source: a sweep is one port across many hosts, so a
/// few suffice. A further port is remembered only when one of these has no host left in
/// the window. Why not forget the least recently used port, as this once did: a scanner
/// that tries the same nine or more ports host after host (nmap's host groups) reaches
/// each port just after the one forgotten for it, so every port was forgotten before it
/// came round again and the sweep was never found. Keeping the ports that came first finds
/// it on them. (A source that holds eight ports with one host each in the window keeps a
/// ninth port out; reaching nine ports in a window, it is a port scanner unless
/// `--max-ports` is 9 or more, where [`Bounds::new`] keeps more ports.)
pub const PORTS_PER_SOURCE: usize = 8;

/// Most ports remembered for one sweeping source, however high `--max-ports` is (see
/// [`Bounds::new`]).
pub const MOST_PORTS: usize = 32;

/// What one source's sweep state holds: `max_hosts + 1` hosts on each port, `ports`
/// ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub max_hosts: u16,
    pub ports: usize,
}

impl Bounds {
    /// For sweeps of more than `max_hosts` hosts, beside port scans of more than
    /// `max_ports` ports: [`PORTS_PER_SOURCE`] ports, or `max_ports` where that is more
    /// (up to [`MOST_PORTS`]). With fewer, a source that first reached that many decoy
    /// ports, one host each, then swept a port of their own hid the sweep without being a
    /// port scanner (8 decoys with `--max-ports 9`); with `max_ports` of them, decoys and
    /// the swept port make it one.
    pub fn new(max_hosts: u16, max_ports: u16) -> Self {
        Self {
            max_hosts,
            ports: usize::from(max_ports).clamp(PORTS_PER_SOURCE, MOST_PORTS),
        }
    }
}

/// An attempt as its 4-tuple (client side first), for matching its answer. The addresses
/// are keys (`key::addr_key`): whole words, copied and hashed in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tuple {
    pub client: u128,
    pub server: u128,
    pub client_port: u16,
    pub server_port: u16,
}

/// An attempt waiting to learn whether it was answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub ts: Nanos,
    pub tuple: Tuple,
}

/// A host a source reached unanswered on a port, and when it last did. In a slot the host
/// is an IPv4 address as a `u32`, counted as such (cheaper to copy and compare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reached<H> {
    port: u16,
    host: H,
    ts: Nanos,
}

/// Entries held in a slot, as many as fit in two cache lines.
const INLINE: usize = 7;

/// A sweeping source's state. `reached` lists, for each port in the order the ports were
/// first reached, the distinct hosts reached unanswered inside the window in first-seen
/// order: one flat list grouped by port, so that the common case fits in a slot whole.
#[derive(Debug, Clone)]
struct Sweeper<H = IpAddr> {
    last: Nanos,
    in_episode: bool,
    reached: SmallVec<[Reached<H>; INLINE + 1]>,
    /// While `reached` is unchanged: up to when it holds all the ports it may, none of
    /// them with all its hosts out of the window (so a new port is not remembered).
    /// A port scanner's state stays so through its scan, and each of its new ports is
    /// turned away by this one comparison.
    full_until: Nanos,
}

impl<H> Default for Sweeper<H> {
    fn default() -> Self {
        Self {
            last: 0,
            in_episode: false,
            reached: SmallVec::new(),
            full_until: Nanos::MIN,
        }
    }
}

impl Sweeper<u32> {
    /// The same state with its hosts as addresses.
    fn widen(self) -> Sweeper {
        Sweeper {
            last: self.last,
            in_episode: self.in_episode,
            reached: self
                .reached
                .iter()
                .map(|r| Reached {
                    port: r.port,
                    host: IpAddr::V4(r.host.into()),
                    ts: r.ts,
                })
                .collect(),
            full_until: self.full_until,
        }
    }
}

/// `len` of a free slot.
const FREE: u8 = 0xFE;
/// `len` of a source whose state is in the side table.
const WIDE: u8 = 0xFF;

/// A sweeping source with up to [`INLINE`] reached hosts, all IPv4, held whole (two cache
/// lines, prefetched together), or a pointer (`WIDE`) to its entry in the side table.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct SweepSlot {
    // What a sweep or the hand reads comes first, in the first cache line.
    key: [u64; 2],
    last: Nanos,
    /// Entries held (0 to [`INLINE`]), [`WIDE`] or [`FREE`].
    len: u8,
    in_episode: bool,
    /// Credit left (low bits) and [`VISITED`].
    clock: u8,
    /// Times the source came back after the hand had passed it (saturating).
    returns: u8,
    ports: [u16; INLINE],
    hosts: [u32; INLINE],
    ts: [Nanos; INLINE],
}

impl Slot for SweepSlot {
    type Key = [u64; 2];
    const EMPTY: Self = Self {
        key: [0; 2],
        last: 0,
        len: FREE,
        in_episode: false,
        clock: 0,
        returns: 0,
        ports: [0; INLINE],
        hosts: [0; INLINE],
        ts: [0; INLINE],
    };
    #[inline]
    fn is_used(&self) -> bool {
        self.len != FREE
    }
    #[inline]
    fn key(&self) -> [u64; 2] {
        self.key
    }
}

/// What [`Sweeps::unanswered`] found: a sweep, with its hosts in first-seen order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub dport: u16,
    pub hosts: Vec<IpAddr>,
}

/// The sweep detector's state; the [`crate::Detector`] drives it.
#[derive(Debug, Default)]
pub(crate) struct Sweeps {
    pending: VecDeque<Pending>,
    /// Answers seen (SYN-ACKs, by the attempt's 4-tuple) and when, in arrival order for
    /// pruning.
    answered: Map<Tuple, Nanos>,
    answers: VecDeque<(Nanos, Tuple)>,
    sweepers: Table<SweepSlot>,
    /// Sources with more than one port or host.
    wide: Map<[u64; 2], Sweeper>,
    /// Sources put in `sweepers` so far (for [`credit::era`]).
    inserted: u64,
    /// Attempts and answers dropped at the caps before they could be judged.
    pub dropped: u64,
}

impl Sweeps {
    /// A new incoming attempt, to be judged once `answer_wait` has passed.
    pub fn attempt(&mut self, pending: Pending, cap: usize) {
        if self.pending.len() >= cap {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(pending);
    }

    /// A SYN-ACK, from the attempt's server back to its client.
    pub fn answer(&mut self, tuple: Tuple, now: Nanos, cap: usize) {
        if self.answers.len() >= cap
            && let Some((_, old)) = self.answers.pop_front()
        {
            self.answered.remove(&old);
            self.dropped += 1;
        }
        self.answered.insert(tuple, now);
        self.answers.push_back((now, tuple));
    }

    /// The next attempt whose answer time is over at `now` (all of them when `now` is
    /// `None`: the input has ended), with whether it was answered. An answer `wait` after
    /// its attempt is within the time (SPEC: "within `answer_wait`"), so an attempt is due
    /// only once more than `wait` has passed: an answer stamped exactly then is recorded
    /// first.
    pub fn next_due(&mut self, now: Option<Nanos>, wait: Nanos) -> Option<(Pending, bool)> {
        let first = self.pending.front()?;
        if now.is_some_and(|now| now.saturating_sub(first.ts) <= wait) {
            return None;
        }
        let p = self.pending.pop_front()?;
        let answered = !self.answered.is_empty()
            && self
                .answered
                .get(&p.tuple)
                .is_some_and(|&at| at >= p.ts && at.saturating_sub(p.ts) <= wait);
        Some((p, answered))
    }

    /// Forgets answers too old to match any waiting attempt.
    pub fn prune_answers(&mut self, now: Nanos, wait: Nanos) {
        while let Some(&(at, tuple)) = self.answers.front() {
            if now.saturating_sub(at) <= 2 * wait {
                break;
            }
            self.answers.pop_front();
            if self.answered.get(&tuple) == Some(&at) {
                self.answered.remove(&tuple);
            }
        }
    }

    /// Counts an unanswered attempt from the source counted as `key`, made at `ts` to
    /// `host`:`port` (the host as its `key::addr_key`); returns the sweep it makes, once
    /// per episode. At the cap, a source without sweep state gets a place (evicting one)
    /// only if `returned` says it came back since its first attempt (it holds a slot of
    /// the port-scan table, where a source seen once at the cap gets none): a spoofed
    /// flood's sources, which never come back, are dropped (counted) instead of turning
    /// the table over.
    #[expect(
        clippy::too_many_arguments,
        reason = "the thresholds travel with the attempt"
    )]
    pub fn unanswered(
        &mut self,
        key: [u64; 2],
        ts: Nanos,
        host: u128,
        port: u16,
        window: Nanos,
        bounds: Bounds,
        cap: usize,
        returned: impl FnOnce() -> bool,
    ) -> Option<Found> {
        let era = credit::era(self.inserted, cap);
        let (at, new) = match self.sweepers.find(&key) {
            Some(i) => (i, false),
            None => {
                if self.sweepers.len() >= cap {
                    if !returned() {
                        self.dropped += 1;
                        return None;
                    }
                    self.dropped += self.evict_one(ts, window);
                }
                let Err(i) = self.sweepers.find_or_free(&key) else {
                    return None;
                };
                let mut slot = SweepSlot::EMPTY;
                slot.key = key;
                slot.len = 0;
                self.sweepers.fill(i, slot);
                self.inserted += 1;
                (i, true)
            }
        };
        let slot = self.sweepers.get_mut(at);
        let (found, held, in_episode) = if slot.len == WIDE {
            // Stays in the side table until it goes quiet.
            let s = self.wide.entry(slot.key).or_default();
            let found = count(s, ts, key_addr(host), port, window, bounds);
            slot.last = s.last;
            (found, s.reached.len(), s.in_episode)
        } else if let Some(v4) = key_v4(host) {
            let keep = usize::from(bounds.max_hosts) + 1;
            match count_in_slot(slot, (ts, window), v4, port, keep) {
                // The common case: counted in the slot's own arrays.
                Counted::Done(found) => (found, usize::from(slot.len), slot.in_episode),
                // The slot is full and this host is new to it: counted as a list, which
                // the side table takes.
                Counted::Full => {
                    let mut s = self.load(at);
                    let found = count(&mut s, ts, v4, port, window, bounds);
                    let (held, in_episode) = (s.reached.len(), s.in_episode);
                    self.store(at, s);
                    let found = found
                        .map(|hosts| hosts.into_iter().map(|h| IpAddr::V4(h.into())).collect());
                    (found, held, in_episode)
                }
            }
        } else {
            let mut s = self.load(at).widen();
            let found = count(&mut s, ts, key_addr(host), port, window, bounds);
            let (held, in_episode) = (s.reached.len(), s.in_episode);
            self.store_wide(at, s);
            (found, held, in_episode)
        };
        self.credit(at, (new, era), held, in_episode);
        found.map(|hosts| Found { dport: port, hosts })
    }

    /// Gives a source its credit after an attempt counted (see the module documentation):
    /// it now holds `held` hosts in the window; `hit` is whether it is new, and the era.
    #[inline]
    fn credit(&mut self, at: usize, hit: (bool, u8), held: usize, in_episode: bool) {
        let slot = self.sweepers.get_mut(at);
        credit::earn(&mut slot.clock, &mut slot.returns, hit, held, in_episode);
    }

    /// Makes room for one source at the cap (CLOCK): a source quiet for more than a window
    /// goes at once, one with credit left loses one and stays, one without goes. Returns 1
    /// if a live source had to go, 0 if a quiet one did. O(1) amortised: the hand's steps
    /// over sources with credit were paid for by the attempts that gave it.
    fn evict_one(&mut self, now: Nanos, window: Nanos) -> u64 {
        // By reference: a slot is two cache lines, and the hand needs only the first.
        let live = |slot: &SweepSlot| now.saturating_sub(slot.last) <= window;
        let Some(h) = self.sweepers.clock(|slot| {
            let live = live(slot);
            credit::spend(&mut slot.clock, live)
        }) else {
            return 0;
        };
        let slot = self.sweepers.get(h);
        let (key, wide, was_live) = (slot.key, slot.len == WIDE, live(slot));
        if wide {
            self.wide.remove(&key);
        }
        self.sweepers.remove(h);
        u64::from(was_live)
    }

    /// The state of a source held in its slot.
    #[inline]
    fn load(&self, at: usize) -> Sweeper<u32> {
        let slot = self.sweepers.get(at);
        let n = usize::from(slot.len).min(INLINE);
        Sweeper {
            last: slot.last,
            in_episode: slot.in_episode,
            reached: (0..n)
                .map(|i| Reached {
                    port: slot.ports[i],
                    host: slot.hosts[i],
                    ts: slot.ts[i],
                })
                .collect(),
            full_until: Nanos::MIN,
        }
    }

    /// Puts the state of a source held in its slot back: in the slot if it fits, else in
    /// the side table.
    #[inline]
    fn store(&mut self, at: usize, s: Sweeper<u32>) {
        if s.reached.len() > INLINE {
            return self.store_wide(at, s.widen());
        }
        let slot = self.sweepers.get_mut(at);
        slot.last = s.last;
        slot.in_episode = s.in_episode;
        for (i, r) in s.reached.iter().enumerate() {
            slot.ports[i] = r.port;
            slot.hosts[i] = r.host;
            slot.ts[i] = r.ts;
        }
        slot.len = s.reached.len() as u8;
    }

    /// [`Sweeps::store`] for a state that may hold IPv6 hosts.
    fn store_wide(&mut self, at: usize, s: Sweeper) {
        let slot = self.sweepers.get_mut(at);
        slot.last = s.last;
        slot.in_episode = s.in_episode;
        if s.reached.len() <= INLINE {
            let mut fits = true;
            for (i, r) in s.reached.iter().enumerate() {
                let IpAddr::V4(host) = r.host else {
                    fits = false;
                    break;
                };
                slot.ports[i] = r.port;
                slot.hosts[i] = host.to_bits();
                slot.ts[i] = r.ts;
            }
            if fits {
                slot.len = s.reached.len() as u8;
                return;
            }
        }
        slot.len = WIDE;
        let key = slot.key;
        self.wide.insert(key, s);
    }

    /// An answered attempt from the source counted as `key` at `ts`: it counts toward no
    /// sweep, but it is an attempt, so a sweeping source's episode goes on (SPEC: an
    /// episode ends when the source has made no attempt for a whole window).
    pub fn touch(&mut self, key: [u64; 2], ts: Nanos) {
        let Some(i) = self.sweepers.find(&key) else {
            return;
        };
        let slot = self.sweepers.get_mut(i);
        slot.last = slot.last.max(ts);
        if slot.len == WIDE
            && let Some(s) = self.wide.get_mut(&key)
        {
            s.last = s.last.max(ts);
        }
    }

    /// Asks for the slot of the source counted as `key` to be loaded: it is judged soon.
    pub fn prefetch(&self, key: &[u64; 2]) {
        self.sweepers.prefetch(key, true);
    }

    /// The attempt `n` places from the front of the queue.
    pub fn queued(&self, n: usize) -> Option<&Pending> {
        self.pending.get(n)
    }
}

/// Counts an unanswered attempt at `ts` to `host`:`port` against a source's state;
/// returns the hosts of the sweep it makes, once per episode.
fn count<H: Copy + Eq>(
    s: &mut Sweeper<H>,
    ts: Nanos,
    host: H,
    port: u16,
    window: Nanos,
    bounds: Bounds,
) -> Option<Vec<H>> {
    let keep = usize::from(bounds.max_hosts) + 1;
    if ts.saturating_sub(s.last) > window {
        s.in_episode = false;
        s.reached.clear();
        s.full_until = Nanos::MIN;
    }
    s.last = s.last.max(ts);
    let r = &mut s.reached;
    let (start, mut end) = match r.iter().position(|e| e.port == port) {
        Some(at) => (
            at,
            at + r[at..].iter().take_while(|e| e.port == port).count(),
        ),
        None if ts <= s.full_until => return None,
        None => {
            if groups(r).count() >= bounds.ports {
                // A port whose hosts all left the window makes room; else the newcomer
                // is not remembered (see PORTS_PER_SOURCE and Bounds::new).
                let gone = groups(r)
                    .find(|&(a, b)| r[a..b].iter().all(|e| ts.saturating_sub(e.ts) > window));
                let Some((a, b)) = gone else {
                    // The first time a port leaves: when its last host does.
                    s.full_until = groups(r)
                        .map(|(a, b)| r[a..b].iter().map(|e| e.ts).max().unwrap_or(Nanos::MIN))
                        .min()
                        .map_or(Nanos::MIN, |t| t.saturating_add(window));
                    return None;
                };
                r.drain(a..b);
            }
            (r.len(), r.len())
        }
    };
    s.full_until = Nanos::MIN;
    // This port's hosts that left the window are forgotten.
    let mut i = start;
    while i < end {
        if ts.saturating_sub(r[i].ts) > window {
            r.remove(i);
            end -= 1;
        } else {
            i += 1;
        }
    }
    match r[start..end].iter_mut().find(|e| e.host == host) {
        Some(seen) => seen.ts = seen.ts.max(ts),
        None => {
            r.insert(end, Reached { port, host, ts });
            end += 1;
        }
    }
    while end - start > keep {
        let oldest = (start..end).min_by_key(|&i| r[i].ts).unwrap_or(start);
        r.remove(oldest);
        end -= 1;
    }
    if s.in_episode || end - start < keep {
        return None;
    }
    s.in_episode = true;
    Some(r[start..end].iter().map(|e| e.host).collect())
}

/// What [`count_in_slot`] did.
enum Counted {
    /// Counted: the hosts of the sweep it makes, once per episode.
    Done(Option<Vec<IpAddr>>),
    /// The slot holds [`INLINE`] entries and the host is new: what was done so far (the
    /// window's leavers forgotten) is stored, and [`count`] does the rest.
    Full,
}

// A slot's entries hold fewer ports than a source may keep, so a new port always finds
// room in a slot that has room for an entry (no port has to make way, as in `count`).
const _: () = assert!(INLINE < PORTS_PER_SOURCE);

/// [`count`] on a slot's own arrays, for an IPv4 `host`: the same steps, without building
/// a list and storing it back. `keep` is `max_hosts + 1`.
#[inline]
fn count_in_slot(
    slot: &mut SweepSlot,
    (ts, window): (Nanos, Nanos),
    host: u32,
    port: u16,
    keep: usize,
) -> Counted {
    let mut n = usize::from(slot.len).min(INLINE);
    if ts.saturating_sub(slot.last) > window {
        slot.in_episode = false;
        n = 0;
    }
    slot.last = slot.last.max(ts);
    let start = slot.ports[..n].iter().position(|&p| p == port).unwrap_or(n);
    let mut end = start
        + slot.ports[start..n]
            .iter()
            .take_while(|&&p| p == port)
            .count();
    // This port's hosts that left the window are forgotten.
    let mut i = start;
    while i < end {
        if ts.saturating_sub(slot.ts[i]) > window {
            slot_remove(slot, i);
            n -= 1;
            end -= 1;
        } else {
            i += 1;
        }
    }
    match (start..end).find(|&i| slot.hosts[i] == host) {
        Some(i) => slot.ts[i] = slot.ts[i].max(ts),
        None if n == INLINE => {
            slot.len = n as u8;
            return Counted::Full;
        }
        None => {
            // Over the whole arrays, not `end..n`: a fixed count of moves, where a
            // variable range becomes a call to `memmove`.
            for j in (1..INLINE).rev() {
                if j > end {
                    slot.ports[j] = slot.ports[j - 1];
                    slot.hosts[j] = slot.hosts[j - 1];
                    slot.ts[j] = slot.ts[j - 1];
                }
            }
            (slot.ports[end], slot.hosts[end], slot.ts[end]) = (port, host, ts);
            n += 1;
            end += 1;
        }
    }
    while end - start > keep {
        let oldest = (start..end).min_by_key(|&i| slot.ts[i]).unwrap_or(start);
        slot_remove(slot, oldest);
        n -= 1;
        end -= 1;
    }
    slot.len = n as u8;
    if slot.in_episode || end - start < keep {
        return Counted::Done(None);
    }
    slot.in_episode = true;
    let hosts = slot.hosts[start..end].iter();
    Counted::Done(Some(hosts.map(|&h| IpAddr::V4(h.into())).collect()))
}

/// Removes entry `i` of a slot's entries (those past the last are moved too: no
/// harm, and a fixed count of moves).
#[inline]
fn slot_remove(slot: &mut SweepSlot, i: usize) {
    for j in 0..INLINE - 1 {
        if j >= i {
            slot.ports[j] = slot.ports[j + 1];
            slot.hosts[j] = slot.hosts[j + 1];
            slot.ts[j] = slot.ts[j + 1];
        }
    }
}

/// The runs of one port in a flat list grouped by port, as index ranges.
fn groups<H>(r: &[Reached<H>]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = r.get(start)?;
        let end = start
            + r[start..]
                .iter()
                .take_while(|e| e.port == first.port)
                .count();
        let run = (start, end);
        start = end;
        Some(run)
    })
}

impl Sweeps {
    /// Sources with sweep state (some may have expired since the last sweep).
    pub fn tracked(&self) -> usize {
        self.sweepers.len()
    }

    /// Attempts waiting for their answer.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest waiting attempt was made.
    pub fn oldest(&self) -> Option<Nanos> {
        self.pending.front().map(|p| p.ts)
    }

    /// Forgets what a source (counted as `key`) swept: its ban was lifted.
    pub fn forget(&mut self, key: [u64; 2]) {
        if let Some(i) = self.sweepers.find(&key) {
            self.sweepers.remove(i);
        }
        self.wide.remove(&key);
    }

    /// Drops sources quiet for more than a window.
    pub fn sweep_stale(&mut self, now: Nanos, window: Nanos) {
        let wide = &mut self.wide;
        self.sweepers.retain(|s| {
            let keep = now.saturating_sub(s.last) <= window;
            if !keep && s.len == WIDE {
                wide.remove(&s.key);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The previous representation (a list of ports, each with its hosts), kept as the
    /// model the flat list must agree with.
    #[derive(Default)]
    struct Model {
        last: Nanos,
        in_episode: bool,
        ports: Vec<(u16, Vec<(IpAddr, Nanos)>)>,
    }

    impl Model {
        fn count(
            &mut self,
            ts: Nanos,
            host: IpAddr,
            port: u16,
            window: Nanos,
            bounds: Bounds,
        ) -> Option<Found> {
            let keep = usize::from(bounds.max_hosts) + 1;
            if ts.saturating_sub(self.last) > window {
                self.in_episode = false;
                self.ports.clear();
            }
            self.last = self.last.max(ts);
            let at = match self.ports.iter().position(|p| p.0 == port) {
                Some(i) => i,
                None => {
                    if self.ports.len() >= bounds.ports {
                        let gone = (0..self.ports.len()).find(|&i| {
                            self.ports[i]
                                .1
                                .iter()
                                .all(|h| ts.saturating_sub(h.1) > window)
                        })?;
                        self.ports.remove(gone);
                    }
                    self.ports.push((port, Vec::new()));
                    self.ports.len() - 1
                }
            };
            let hosts = &mut self.ports[at].1;
            hosts.retain(|h| ts.saturating_sub(h.1) <= window);
            match hosts.iter_mut().find(|h| h.0 == host) {
                Some(seen) => seen.1 = seen.1.max(ts),
                None => hosts.push((host, ts)),
            }
            while hosts.len() > keep {
                let oldest = (0..hosts.len()).min_by_key(|&i| hosts[i].1).unwrap_or(0);
                hosts.remove(oldest);
            }
            if self.in_episode || hosts.len() < keep {
                return None;
            }
            self.in_episode = true;
            Some(Found {
                dport: port,
                hosts: hosts.iter().map(|h| h.0).collect(),
            })
        }
    }

    #[test]
    fn slots_are_two_cache_lines() {
        assert_eq!(std::mem::size_of::<SweepSlot>(), 128);
        assert_eq!(std::mem::align_of::<SweepSlot>(), 64);
        // The hand and the sweeps read only the first line.
        assert!(std::mem::offset_of!(SweepSlot, len) < 64);
        assert!(std::mem::offset_of!(SweepSlot, last) < 64);
        assert!(std::mem::offset_of!(SweepSlot, clock) < 64);
    }

    /// An unanswered attempt of source `src` judged by the sweep state and the model,
    /// which must agree; what they found.
    fn judge_both(
        (sweeps, model): (&mut Sweeps, &mut Model),
        src: u64,
        (ts, host, port): (Nanos, IpAddr, u16),
        (window, bounds): (Nanos, Bounds),
    ) -> Option<Found> {
        let want = model.count(ts, host, port, window, bounds);
        let got = sweeps.unanswered(
            [0, src],
            ts,
            crate::key::addr_key(host),
            port,
            window,
            bounds,
            100,
            || true,
        );
        assert_eq!(got, want, "source {src}, port {port} at {ts}");
        got
    }

    /// xorshift64: `next(n)` is below `n`.
    fn rng() -> impl FnMut(u64) -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }

    /// Runs 200,000 random attempts of 20 sources, `pick` choosing each one's port and
    /// host, through the sweep state and the model with `window` and `max_hosts`;
    /// requires the same sweeps, with the same hosts in the same order; returns how many
    /// were found, and whether the side table was used.
    fn agree(
        window: Nanos,
        (max_hosts, max_ports): (u16, u16),
        mut pick: impl FnMut(&mut dyn FnMut(u64) -> u64) -> (u16, IpAddr),
    ) -> (usize, bool) {
        let mut next = rng();
        let mut sweeps = Sweeps::default();
        let mut models: Vec<Model> = (0..20).map(|_| Model::default()).collect();
        let mut ts: Nanos = 0;
        let (mut found, mut wide) = (0, false);
        for _ in 0..200_000 {
            ts += next(40) as Nanos;
            let src = next(20) as usize;
            if next(20_000) == 0 {
                ts += 2 * window;
            }
            let (port, host) = pick(&mut next);
            // Attempts are judged a little out of order: their times go back a bit.
            let at = ts - next(30) as Nanos;
            let bounds = Bounds::new(max_hosts, max_ports);
            let got = judge_both(
                (&mut sweeps, &mut models[src]),
                src as u64,
                (at, host, port),
                (window, bounds),
            );
            found += usize::from(got.is_some());
            wide |= !sweeps.wide.is_empty();
            if next(5_000) == 0 {
                sweeps.sweep_stale(ts, window);
            }
        }
        (found, wide)
    }

    /// Random attempts from a few sources, few ports and hosts, times that leave the window
    /// now and then, IPv6 hosts among them: the flat list in slots and side table finds the
    /// same sweeps, with the same hosts in the same order, as the model.
    #[test]
    fn the_flat_state_in_slots_agrees_with_the_list_of_ports() {
        for max_hosts in [1u16, 3, 6, 16] {
            let (found, wide) = agree(40_000, (max_hosts, 3), |next| {
                // Mostly two ports, now and then one of ten more (past the ports kept).
                let port = match next(4) {
                    0 => 5 + next(10) as u16,
                    _ => 1 + next(2) as u16,
                };
                let host = match next(50) {
                    0 => IpAddr::V6(std::net::Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        next(4) as u16,
                    )),
                    _ => IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, next(24) as u8)),
                };
                (port, host)
            });
            assert!(found > 10, "max_hosts {max_hosts}: {found} sweeps");
            assert!(wide, "the side table was used");
        }
        // More ports kept where --max-ports asks for more (all twelve of them here).
        let (found, _) = agree(40_000, (3, 12), |next| {
            let port = 1 + next(12) as u16;
            (
                port,
                IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, next(24) as u8)),
            )
        });
        assert!(found > 10, "--max-ports 12: {found} sweeps");
    }

    /// A port scanner holds every port a source may keep: each new port is turned away
    /// until one of them has all its hosts out of the window. Room is made then (and the
    /// port's sweep found), not once every port has left.
    #[test]
    fn a_new_port_gets_room_as_soon_as_the_first_kept_port_leaves() {
        let (window, bounds) = (100, Bounds::new(16, 3));
        let mut sweeps = Sweeps::default();
        let mut model = Model::default();
        let mut step = |ts: Nanos, port: u16, host: u8| {
            let host = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, host));
            judge_both(
                (&mut sweeps, &mut model),
                1,
                (ts, host, port),
                (window, bounds),
            )
        };
        step(0, 1, 1);
        for port in 2..=8 {
            step(50, port, 1);
        }
        // All eight kept, none left: turned away.
        assert_eq!(step(60, 9, 1), None);
        // Port 1 left the window (its host at 0); the others have not.
        let found = (0..17)
            .filter_map(|h| step(101 + Nanos::from(h), 10, h))
            .count();
        assert_eq!(found, 1, "the sweep on the port that got room");
    }

    /// The same with states that mostly fit in a slot (two ports, eight hosts, a window
    /// short enough for hosts to leave it), so that the state held in the slot (loaded,
    /// counted and stored back), which the test above seldom reaches once its sources are
    /// in the side table, is what runs: it must agree with the model too.
    #[test]
    fn the_count_in_a_slot_agrees_with_the_list_of_ports() {
        for max_hosts in [0u16, 1, 2, 3, 5, 6] {
            let (found, _) = agree(1_500, (max_hosts, 3), |next| {
                let port = 1 + next(2) as u16;
                (
                    port,
                    IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, next(8) as u8)),
                )
            });
            assert!(found > 10, "max_hosts {max_hosts}: {found} sweeps");
        }
    }
}
