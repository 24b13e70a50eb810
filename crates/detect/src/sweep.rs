//! Address sweeps (SPEC §2): a source whose unanswered attempts reached more than
//! `max_hosts` distinct destination addresses on one port within the window.
//!
//! The key decision is to judge an attempt only once its answer had time to come: each
//! new incoming attempt waits in a queue (time order, so the queue is its own timer) for
//! `answer_wait`; a SYN-ACK for its 4-tuple in the meantime marks it answered (a monitoring
//! server whose connections succeed is never a sweeper), otherwise it counts toward its
//! source's hosts on that port. Everything is bounded: the queue and the table of answers
//! by the detector's attempt cap (oldest dropped first, counted), the sweeping sources by
//! its source cap, the ports of one source to [`PORTS_PER_SOURCE`] and the hosts of one
//! port to `max_hosts + 1`.
//!
//! Judging is a lookup per attempt, so the sweeping sources live in an open-addressed table
//! of 64-byte slots that hold the common case (one port, one host) whole; a source with
//! more keeps them in a side table. The detector prefetches the slot of an attempt a few
//! places ahead in the queue.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::detector::Nanos;
use crate::table::{Slot, Table};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Ports remembered for one sweeping source: a sweep is one port across many hosts, so a
/// few suffice; the least recently active is forgotten first.
pub const PORTS_PER_SOURCE: usize = 8;

/// An attempt as its 4-tuple (client side first), for matching its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tuple {
    pub client: IpAddr,
    pub server: IpAddr,
    pub client_port: u16,
    pub server_port: u16,
}

/// An attempt waiting to learn whether it was answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub ts: Nanos,
    pub tuple: Tuple,
}

#[derive(Debug, Clone)]
struct PortHosts {
    port: u16,
    /// Distinct hosts reached unanswered inside the window, first-seen order, with the
    /// time each was last reached.
    hosts: SmallVec<[(IpAddr, Nanos); 4]>,
}

#[derive(Debug, Clone, Default)]
struct Sweeper {
    last: Nanos,
    in_episode: bool,
    ports: SmallVec<[PortHosts; 2]>,
}

/// Sources the hand looks at for a stale one when the table is full.
const STALE_LOOKS: usize = 16;

/// `len` of a free slot.
const FREE: u8 = 0xFE;
/// `len` of a source whose ports are in the side table.
const WIDE: u8 = 0xFF;

/// A sweeping source with at most one port and one host held whole, or a pointer (`WIDE`)
/// to its entry in the side table.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct SweepSlot {
    key: [u64; 2],
    last: Nanos,
    host_ts: Nanos,
    host: IpAddr,
    port: u16,
    /// Ports held (0 or 1, with one host), [`WIDE`] or [`FREE`].
    len: u8,
    in_episode: bool,
}

impl Slot for SweepSlot {
    type Key = [u64; 2];
    const EMPTY: Self = Self {
        key: [0; 2],
        last: 0,
        host_ts: 0,
        host: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: 0,
        len: FREE,
        in_episode: false,
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
    /// `None`: the input has ended), with whether it was answered.
    pub fn next_due(&mut self, now: Option<Nanos>, wait: Nanos) -> Option<(Pending, bool)> {
        let first = self.pending.front()?;
        if now.is_some_and(|now| now.saturating_sub(first.ts) < wait) {
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
    /// `host`:`port`; returns the sweep it makes, once per episode.
    #[expect(
        clippy::too_many_arguments,
        reason = "the thresholds travel with the attempt"
    )]
    pub fn unanswered(
        &mut self,
        key: [u64; 2],
        ts: Nanos,
        host: IpAddr,
        port: u16,
        window: Nanos,
        max_hosts: u16,
        cap: usize,
    ) -> Option<Found> {
        let at = match self.sweepers.find(&key) {
            Some(i) => i,
            None => {
                if self.sweepers.len() >= cap && !self.expire_some(ts, window) {
                    self.dropped += 1;
                    return None;
                }
                let Err(i) = self.sweepers.find_or_free(&key) else {
                    return None;
                };
                let mut slot = SweepSlot::EMPTY;
                slot.key = key;
                slot.len = 0;
                self.sweepers.fill(i, slot);
                i
            }
        };
        let slot = self.sweepers.get_mut(at);
        if slot.len == WIDE {
            // Stays in the side table until it goes quiet.
            let s = self.wide.entry(slot.key).or_default();
            let found = count(s, ts, host, port, window, max_hosts);
            slot.last = s.last;
            return found;
        }
        let mut s = self.load(at);
        let found = count(&mut s, ts, host, port, window, max_hosts);
        self.store(at, s);
        found
    }

    /// At the cap: moves the hand over up to [`STALE_LOOKS`] sources, dropping those quiet
    /// for more than a window; whether one went. A full table of live sources keeps them
    /// (what they count is evidence) and the newcomer is dropped; bounding the walk keeps
    /// that O(1) under a flood, where a pass over the whole table per attempt was not.
    fn expire_some(&mut self, now: Nanos, window: Nanos) -> bool {
        let t = &mut self.sweepers;
        let mut looked = 0;
        let mut freed = false;
        while looked < STALE_LOOKS && t.len() > 0 {
            let h = if t.hand >= t.capacity() { 0 } else { t.hand };
            t.hand = h;
            let slot = *t.get(h);
            if !slot.is_used() {
                t.hand = h + 1;
                continue;
            }
            looked += 1;
            if now.saturating_sub(slot.last) > window {
                if slot.len == WIDE {
                    self.wide.remove(&slot.key);
                }
                t.remove(h);
                freed = true;
            } else {
                t.hand = h + 1;
            }
        }
        freed
    }

    /// The state of a source held in its slot.
    fn load(&self, at: usize) -> Sweeper {
        let slot = self.sweepers.get(at);
        match slot.len {
            0 | WIDE | FREE => Sweeper {
                last: slot.last,
                in_episode: slot.in_episode,
                ports: SmallVec::new(),
            },
            _ => Sweeper {
                last: slot.last,
                in_episode: slot.in_episode,
                ports: std::iter::once(PortHosts {
                    port: slot.port,
                    hosts: std::iter::once((slot.host, slot.host_ts)).collect(),
                })
                .collect(),
            },
        }
    }

    /// Puts the state of a source held in its slot back where it fits.
    fn store(&mut self, at: usize, s: Sweeper) {
        let slot = self.sweepers.get_mut(at);
        let key = slot.key;
        slot.last = s.last;
        slot.in_episode = s.in_episode;
        match s.ports.as_slice() {
            [] => slot.len = 0,
            [one] if one.hosts.len() == 1 => {
                slot.len = 1;
                slot.port = one.port;
                (slot.host, slot.host_ts) = one.hosts[0];
            }
            _ => {
                slot.len = WIDE;
                self.wide.insert(key, s);
            }
        }
    }

    /// Asks for the slot of the source counted as `key` to be loaded: it is judged soon.
    pub fn prefetch(&self, key: &[u64; 2]) {
        self.sweepers.prefetch(key);
    }

    /// The attempt `n` places from the front of the queue.
    pub fn queued(&self, n: usize) -> Option<&Pending> {
        self.pending.get(n)
    }
}

/// Counts an unanswered attempt at `ts` to `host`:`port` against a source's state;
/// returns the sweep it makes, once per episode.
fn count(
    s: &mut Sweeper,
    ts: Nanos,
    host: IpAddr,
    port: u16,
    window: Nanos,
    max_hosts: u16,
) -> Option<Found> {
    let keep = usize::from(max_hosts) + 1;
    if ts.saturating_sub(s.last) > window {
        s.in_episode = false;
        s.ports.clear();
    }
    s.last = s.last.max(ts);
    let at = match s.ports.iter().position(|p| p.port == port) {
        Some(i) => i,
        None => {
            if s.ports.len() >= PORTS_PER_SOURCE {
                let stalest = (0..s.ports.len())
                    .min_by_key(|&i| s.ports[i].hosts.iter().map(|h| h.1).max())
                    .unwrap_or(0);
                s.ports.remove(stalest);
            }
            s.ports.push(PortHosts {
                port,
                hosts: SmallVec::new(),
            });
            s.ports.len() - 1
        }
    };
    let entry = &mut s.ports[at];
    entry.hosts.retain(|h| ts.saturating_sub(h.1) <= window);
    match entry.hosts.iter_mut().find(|h| h.0 == host) {
        Some(seen) => seen.1 = seen.1.max(ts),
        None => entry.hosts.push((host, ts)),
    }
    while entry.hosts.len() > keep {
        let oldest = (0..entry.hosts.len())
            .min_by_key(|&i| entry.hosts[i].1)
            .unwrap_or(0);
        entry.hosts.remove(oldest);
    }
    if s.in_episode || entry.hosts.len() < keep {
        return None;
    }
    s.in_episode = true;
    Some(Found {
        dport: port,
        hosts: entry.hosts.iter().map(|h| h.0).collect(),
    })
}

impl Sweeps {
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
