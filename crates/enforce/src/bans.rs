//! The ban lifecycle, independent of any backend: how long a ban lasts, repeat offenders,
//! the cap on new bans per minute, and expiry. Pure: time (Unix seconds) is an argument,
//! and whether an address is protected (local or allowlisted) is the caller's answer,
//! asked again at ban time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::Ban;

/// How bans are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A first ban's length in seconds; 0 bans until removed.
    pub duration_secs: u64,
    /// Repeat offenders get twice their previous ban, up to this. A source whose last ban
    /// ended longer than this ago starts again at `duration_secs`.
    pub max_secs: u64,
    /// New automatic bans allowed in any 60 seconds; 0 for no cap.
    pub per_minute: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            duration_secs: 3600,
            max_secs: 86_400,
            per_minute: 60,
        }
    }
}

/// One active ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub addr: IpAddr,
    /// When it began (Unix seconds).
    pub since: i64,
    /// When it ends; `None` lasts until removed.
    pub expires: Option<i64>,
    /// Why: the scan's ports, or "manual".
    pub reason: String,
    /// How many bans in a row this source has had, this one included.
    pub offences: u32,
}

impl Record {
    /// The ban as the kernel should hold it at `now`.
    pub fn ban(&self, now: i64) -> Ban {
        Ban {
            addr: self.addr,
            timeout_secs: self
                .expires
                .map(|e| u64::try_from(e.saturating_sub(now)).unwrap_or(0).max(1)),
        }
    }
}

/// A past offender: offences so far and when the last ban ends (or ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offender {
    pub offences: u32,
    pub last_until: i64,
}

/// Why a ban was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A local or allowlisted address.
    Protected,
    /// The cap on new bans per minute was reached.
    RateLimited,
    /// Already banned; nothing to do.
    AlreadyBanned,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Protected => "allowlisted",
            Refused::RateLimited => "rate_limited",
            Refused::AlreadyBanned => "already_banned",
        }
    }
}

/// The active bans and the memory of past offenders.
#[derive(Debug, Clone)]
pub struct Book {
    policy: Policy,
    active: HashMap<IpAddr, Record>,
    offenders: HashMap<IpAddr, Offender>,
    recent: VecDeque<i64>,
    /// No active ban ends before this (a lower bound, so that looking for expired bans
    /// costs nothing until one is due).
    earliest: Option<i64>,
    /// When past offenders were last pruned.
    pruned_at: i64,
}

impl Book {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            active: HashMap::new(),
            offenders: HashMap::new(),
            recent: VecDeque::new(),
            earliest: None,
            pruned_at: i64::MIN,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Takes back saved state (after a restart); records already over at `now` are
    /// returned rather than kept, so the caller can report and forget them.
    pub fn restore(
        &mut self,
        records: Vec<Record>,
        offenders: Vec<(IpAddr, Offender)>,
        now: i64,
    ) -> Vec<Record> {
        self.offenders.extend(offenders);
        let mut over = Vec::new();
        for r in records {
            if r.expires.is_some_and(|e| e <= now) {
                over.push(r);
            } else {
                self.note_expiry(r.expires);
                self.active.insert(r.addr, r);
            }
        }
        over
    }

    pub fn get(&self, addr: IpAddr) -> Option<&Record> {
        self.active.get(&addr)
    }

    pub fn active(&self) -> impl Iterator<Item = &Record> {
        self.active.values()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn offender(&self, addr: IpAddr) -> Option<Offender> {
        self.offenders.get(&addr).copied()
    }

    /// An automatic ban for a scan from `addr`: refused when protected, already banned,
    /// or over the per-minute cap.
    pub fn scan(
        &mut self,
        addr: IpAddr,
        reason: String,
        now: i64,
        protected: bool,
    ) -> Result<Record, Refused> {
        if protected {
            return Err(Refused::Protected);
        }
        if self.active.contains_key(&addr) {
            return Err(Refused::AlreadyBanned);
        }
        while self.recent.front().is_some_and(|&t| t <= now - 60) {
            self.recent.pop_front();
        }
        if self.policy.per_minute > 0 && self.recent.len() >= self.policy.per_minute as usize {
            return Err(Refused::RateLimited);
        }
        self.recent.push_back(now);
        Ok(self.give(addr, reason, now, None))
    }

    /// A ban asked for by the operator: no cap, and `secs` (0 = until removed) or the
    /// policy's length with doubling when `None`. Replaces an active ban of the address.
    pub fn manual(&mut self, addr: IpAddr, secs: Option<u64>, now: i64) -> Record {
        self.active.remove(&addr);
        self.give(addr, "manual".into(), now, secs)
    }

    fn give(&mut self, addr: IpAddr, reason: String, now: i64, secs: Option<u64>) -> Record {
        let max = self.policy.max_secs.max(self.policy.duration_secs);
        let offences = match self.offenders.get(&addr) {
            Some(o) if now.saturating_sub(o.last_until) <= max as i64 => {
                o.offences.saturating_add(1)
            }
            _ => 1,
        };
        let length = secs.unwrap_or_else(|| match self.policy.duration_secs {
            0 => 0,
            base => {
                let doubled = base.saturating_mul(1u64 << (offences - 1).min(40));
                doubled.min(max)
            }
        });
        let expires = (length > 0).then(|| now.saturating_add(length as i64));
        let record = Record {
            addr,
            since: now,
            expires,
            reason,
            offences,
        };
        self.offenders.insert(
            addr,
            Offender {
                offences,
                last_until: expires.unwrap_or(i64::MAX),
            },
        );
        self.note_expiry(expires);
        self.active.insert(addr, record.clone());
        record
    }

    fn note_expiry(&mut self, expires: Option<i64>) {
        if let Some(e) = expires {
            self.earliest = Some(self.earliest.map_or(e, |x| x.min(e)));
        }
    }

    /// Lifts a ban now (the operator's `remove`): the source's offences are forgiven.
    pub fn remove(&mut self, addr: IpAddr) -> Option<Record> {
        self.offenders.remove(&addr);
        self.active.remove(&addr)
    }

    /// Lifts the bans of the addresses `pred` selects (addresses that became protected);
    /// their offences are forgiven. Returns the addresses.
    pub fn release(&mut self, pred: impl Fn(IpAddr) -> bool) -> Vec<IpAddr> {
        let addrs: Vec<IpAddr> = self.active.keys().copied().filter(|a| pred(*a)).collect();
        for addr in &addrs {
            self.remove(*addr);
        }
        addrs
    }

    /// Lifts every ban.
    pub fn flush(&mut self) -> Vec<Record> {
        self.offenders.clear();
        self.active.drain().map(|(_, r)| r).collect()
    }

    /// The bans over at `now`, removed from the book; past offenders remembered longer
    /// than the policy's `max_secs` are forgotten.
    pub fn expire(&mut self, now: i64) -> Vec<Record> {
        let max = self.policy.max_secs.max(self.policy.duration_secs) as i64;
        if now.saturating_sub(self.pruned_at) >= 60 {
            self.pruned_at = now;
            self.offenders
                .retain(|_, o| now.saturating_sub(o.last_until) <= max);
        }
        if self.earliest.is_none_or(|e| e > now) {
            return Vec::new();
        }
        let over: Vec<IpAddr> = self
            .active
            .values()
            .filter(|r| r.expires.is_some_and(|e| e <= now))
            .map(|r| r.addr)
            .collect();
        let over: Vec<Record> = over
            .into_iter()
            .filter_map(|a| self.active.remove(&a))
            .collect();
        self.earliest = self.active.values().filter_map(|r| r.expires).min();
        over
    }

    /// No ban ends before this (it may be earlier than the real next expiry after a
    /// removal), to know when to look again.
    pub fn next_expiry(&self) -> Option<i64> {
        self.earliest
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn book(duration: u64, max: u64, per_minute: u32) -> Book {
        Book::new(Policy {
            duration_secs: duration,
            max_secs: max,
            per_minute,
        })
    }

    #[test]
    fn a_scan_is_banned_for_the_policy_duration() {
        let mut b = book(3600, 86_400, 60);
        let r = b
            .scan(ip("192.0.2.1"), "21,22,23,25".into(), 1000, false)
            .unwrap();
        assert_eq!(r.expires, Some(4600));
        assert_eq!(r.offences, 1);
        assert_eq!(r.ban(1000).timeout_secs, Some(3600));
        assert_eq!(r.ban(4599).timeout_secs, Some(1));
        assert_eq!(
            b.scan(ip("192.0.2.1"), String::new(), 1001, false),
            Err(Refused::AlreadyBanned)
        );
    }

    #[test]
    fn protected_addresses_are_never_banned() {
        let mut b = book(3600, 86_400, 60);
        assert_eq!(
            b.scan(ip("10.0.0.1"), String::new(), 0, true),
            Err(Refused::Protected)
        );
        assert!(b.is_empty());
    }

    #[test]
    fn repeat_offenders_get_doubled_bans_up_to_the_cap() {
        let mut b = book(100, 350, 0);
        let a = ip("2001:db8::9");
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let r = b.scan(a, String::new(), now, false).unwrap();
            lengths.push(r.expires.unwrap() - now);
            now = r.expires.unwrap();
            assert_eq!(b.expire(now).len(), 1);
            now += 10;
        }
        assert_eq!(lengths, [100, 200, 350, 350]);
        // Quiet for longer than the cap: back to the first length.
        now += 351;
        b.expire(now);
        assert_eq!(b.offender(a), None);
        let r = b.scan(a, String::new(), now, false).unwrap();
        assert_eq!(r.expires.unwrap() - now, 100);
    }

    #[test]
    fn the_rate_cap_refuses_bans_beyond_it_for_a_minute() {
        let mut b = book(3600, 86_400, 3);
        for i in 0..3 {
            assert!(
                b.scan(ip(&format!("192.0.2.{i}")), String::new(), 100, false)
                    .is_ok()
            );
        }
        assert_eq!(
            b.scan(ip("192.0.2.9"), String::new(), 159, false),
            Err(Refused::RateLimited)
        );
        assert!(b.scan(ip("192.0.2.9"), String::new(), 160, false).is_ok());
    }

    #[test]
    fn zero_duration_bans_until_removed() {
        let mut b = book(0, 86_400, 60);
        let r = b.scan(ip("192.0.2.1"), String::new(), 5, false).unwrap();
        assert_eq!(r.expires, None);
        assert_eq!(r.ban(10).timeout_secs, None);
        assert!(b.expire(i64::MAX / 2).is_empty());
        assert_eq!(b.remove(ip("192.0.2.1")).map(|r| r.since), Some(5));
        assert!(b.is_empty());
    }

    #[test]
    fn manual_bans_replace_and_ignore_the_cap() {
        let mut b = book(3600, 86_400, 1);
        b.scan(ip("192.0.2.1"), String::new(), 0, false).unwrap();
        let r = b.manual(ip("192.0.2.2"), Some(3), 0);
        assert_eq!(r.expires, Some(3));
        let r = b.manual(ip("192.0.2.1"), Some(0), 1);
        assert_eq!((r.expires, r.reason.as_str()), (None, "manual"));
        assert_eq!(b.next_expiry(), Some(3));
        assert_eq!(b.expire(3).len(), 1);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn restored_bans_keep_their_remaining_time() {
        let mut b = book(3600, 86_400, 60);
        let saved = vec![
            Record {
                addr: ip("192.0.2.1"),
                since: 0,
                expires: Some(3600),
                reason: "22,80,443,8080".into(),
                offences: 1,
            },
            Record {
                addr: ip("192.0.2.2"),
                since: 0,
                expires: Some(100),
                reason: String::new(),
                offences: 1,
            },
        ];
        let over = b.restore(saved, vec![], 1000);
        assert_eq!(over.len(), 1);
        assert_eq!(
            b.get(ip("192.0.2.1")).unwrap().ban(1000).timeout_secs,
            Some(2600)
        );
    }
}
