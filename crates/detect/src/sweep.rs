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

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::detector::Nanos;

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

/// What [`Sweeps::confirm`] found: a sweep, with its hosts in first-seen order.
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
    sweepers: Map<[u64; 2], Sweeper>,
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
        let answered = self
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
        if self.sweepers.len() >= cap && !self.sweepers.contains_key(&key) {
            self.sweepers
                .retain(|_, s| ts.saturating_sub(s.last) <= window);
            if self.sweepers.len() >= cap {
                self.dropped += 1;
                return None;
            }
        }
        let keep = usize::from(max_hosts) + 1;
        let s = self.sweepers.entry(key).or_default();
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
        self.sweepers.remove(&key);
    }

    /// Drops sources quiet for more than a window.
    pub fn sweep_stale(&mut self, now: Nanos, window: Nanos) {
        self.sweepers
            .retain(|_, s| now.saturating_sub(s.last) <= window);
    }
}
