//! The blocker's side of the fleet (SPEC §7): pulled decisions become bans of the book,
//! and bans decided from scans are offered to the push thread.
//!
//! A pulled ban is a ban like a manual one, with the reason `lapi:<origin>` (so it is
//! saved, restored at the next start, shown with its origin by `blocks list`), that
//! neither waits for nor counts against the cap. A decision is not enforced:
//! - on a protected address, or a range covering one (reported and counted);
//! - where a running ban of synwatch's own (a scan's, a manual one) holds the network or
//!   a wider one: the local ban stands, with its own time, and a decision that outlasts
//!   it is given when it expires (a short local ban never shortens the fleet's);
//! - when it is this agent's own alert coming back.
//!
//! Several decisions may name the same network (two machines, a scenario and `cscli`):
//! the ban is lifted when the last of them is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ipnet::IpNet;
use synwatch_enforce::bans::Record;

use super::{Blocker, Happened};
use crate::crowdsec::lapi::{self, Skip};
use crate::crowdsec::pull::Pull;
use crate::crowdsec::push::{self, Note, Outbox};
use crate::crowdsec::{OriginClass, Stats};
use crate::protect::Why;

/// The reason of a pulled ban: this prefix, then its origin.
pub const LAPI_REASON: &str = "lapi:";
/// Protected decisions logged per pull (all are counted).
const PROTECTED_LOGGED: usize = 10;

/// Decisions on protected addresses in one pull: logged, and only counted.
#[derive(Debug, Default)]
struct Refused {
    logged: usize,
    more: usize,
    /// Decisions left out as not enforceable here (type, scope, value), said and not.
    unfit_logged: usize,
    unfit_more: usize,
}

impl Refused {
    /// A decision not enforceable here for its type, scope or value: said (the first
    /// few of a pull).
    fn unfit(&mut self, d: &lapi::Decision, label: &str, why: Skip) {
        if !matches!(why, Skip::Type | Skip::Scope | Skip::Invalid) {
            return;
        }
        if self.unfit_logged >= PROTECTED_LOGGED {
            self.unfit_more += 1;
            return;
        }
        self.unfit_logged += 1;
        tracing::info!(
            "not enforcing the CrowdSec decision {} ({label}): {} {} of scope {} for {} ({})",
            d.id,
            lapi::printable(&d.kind, 64),
            lapi::printable(&d.value, 64),
            lapi::printable(&d.scope, 64),
            lapi::printable(&d.duration, 64),
            why.as_str()
        );
    }
}

/// A pulled decision whose end is within this of the held ban's is not given again.
const SAME_END_SECS: i64 = 60;

/// Where a ban comes from, as `blocks list` shows it: `synwatch` (a scan), `manual`
/// (`synwatch blocks add`), or the origin of a LAPI decision (`crowdsec/<scenario>`,
/// `cscli`, ...).
pub fn origin(reason: &str) -> String {
    match reason.strip_prefix(LAPI_REASON) {
        Some(o) => o.to_owned(),
        None if reason == "manual" => "manual".to_owned(),
        None => "synwatch".to_owned(),
    }
}

fn is_pulled(r: &Record) -> bool {
    r.reason.starts_with(LAPI_REASON)
}

/// The blocker's fleet state.
#[derive(Debug, Default)]
pub struct Fleet {
    outbox: Option<Arc<Outbox>>,
    stats: Option<Arc<Stats>>,
    /// Pulled decisions held: id to network, and per network how many.
    ids: HashMap<i64, IpNet>,
    per_net: HashMap<IpNet, u32>,
    /// Networks this agent pushed, until when: their decisions coming back are its own.
    pushed: HashMap<IpNet, i64>,
    /// What the detector saw of scans whose ban is not pushed yet.
    notes: HashMap<IpNet, Note>,
    /// Decisions that outlast the local ban holding their network (or a wider one), and
    /// when they end: given when that ban expires, so that a short local ban never
    /// shortens the fleet's longer one.
    deferred: HashMap<IpNet, (i64, String)>,
    /// Bans expired since the deferred decisions were last looked at
    /// ([`Blocker::give_deferred`]).
    pub(super) expired: bool,
    /// Networks whose last decision was replaced (its id given again for another
    /// network) during a pull: lifted at its end unless given again.
    orphaned: Vec<IpNet>,
}

impl Fleet {
    /// One decision on `net` is gone: the network's count goes down; true where none is
    /// left, so that it is no longer the fleet's (to lift).
    fn release_one(&mut self, net: IpNet) -> bool {
        let left = self.per_net.get_mut(&net).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            self.per_net.remove(&net);
            self.deferred.remove(&net);
        }
        left == Some(0)
    }

    /// Drops the decisions waiting for a ban to end whose network `protected` says is
    /// protected now.
    pub(super) fn forget_protected(&mut self, protected: impl Fn(IpNet) -> bool) {
        self.deferred.retain(|net, _| !protected(*net));
    }
}

/// Notes kept at most (scans waiting for the cap have one each).
const NOTES_MAX: usize = 100_000;

impl Blocker {
    /// Joins the fleet: bans decided from scans go to `outbox` (none: pull only), and
    /// the fleet's counters to `stats`.
    pub fn join_fleet(&mut self, outbox: Option<Arc<Outbox>>, stats: Arc<Stats>) {
        self.fleet.outbox = outbox;
        stats.held.store(
            self.book.active().filter(|r| is_pulled(r)).count() as u64,
            Ordering::Relaxed,
        );
        self.fleet.stats = Some(stats);
    }

    /// What the detector saw of the scan about to be banned as `target` (for its alert).
    pub fn note_scan(&mut self, target: IpNet, scan: &synwatch_detect::Scan) {
        if self.fleet.outbox.is_none() || self.dry_run {
            return;
        }
        if self.fleet.notes.len() >= NOTES_MAX {
            self.fleet.notes.clear();
        }
        self.fleet.notes.insert(
            synwatch_enforce::ban_net(target),
            Note {
                src: scan.src,
                sweep: scan.kind == synwatch_detect::ScanKind::Sweep,
                ports: scan.ports.clone(),
                hosts: scan.hosts.clone(),
            },
        );
    }

    /// Bans that just reached the kernel: those decided from scans are pushed.
    pub(super) fn push_to_fleet(&mut self, records: &[Record], now: i64) {
        let Some(outbox) = &self.fleet.outbox else {
            return;
        };
        if self.dry_run {
            return;
        }
        for r in records.iter().filter(|r| push::is_detection(r)) {
            let note = self.fleet.notes.remove(&r.net);
            outbox.offer(push::alert(r, note.as_ref(), now), push::ends_wall(r));
            self.fleet
                .pushed
                .insert(r.net, r.expires.unwrap_or(i64::MAX));
        }
    }

    /// Bans lifted by hand (`blocks remove`, `flush`): those this agent pushed are
    /// withdrawn from the fleet (their decisions stay its own meanwhile, so a pull does
    /// not bring them back before the LAPI deletes them).
    pub(super) fn withdraw_from_fleet(&mut self, records: &[Record]) {
        let Some(outbox) = &self.fleet.outbox else {
            return;
        };
        for r in records
            .iter()
            .filter(|r| self.fleet.pushed.contains_key(&r.net))
        {
            outbox.withdraw(r.net);
        }
    }

    /// Applies one pull: lifts the bans of deleted decisions (when no other decision
    /// holds them), gives those of new ones, and after a full pull (`startup`) lifts the
    /// pulled bans the LAPI no longer has. Bans given are applied at the next
    /// [`Blocker::apply`]; lifts at once. `protected` is [`crate::protect::why_net`].
    /// `session`: whether an address of a network holds an established connection with
    /// this host, as for a scan's ban: a ban given on such a network drops only its new
    /// connections (SPEC §2).
    pub fn pulled(
        &mut self,
        pull: Pull,
        now: i64,
        protected: impl Fn(IpNet) -> Option<(Why, IpNet)>,
        mut session: impl FnMut(IpNet) -> bool,
    ) -> Vec<Happened> {
        let stats = self.fleet.stats.clone().unwrap_or_default();
        self.fleet.pushed.retain(|_, until| *until > now);
        if pull.startup {
            self.fleet.ids.clear();
            self.fleet.per_net.clear();
            self.fleet.deferred.clear();
        }
        let mut lift = self.fleet_deleted(&pull.deleted);
        let mut keep: HashSet<IpNet> = HashSet::new();
        let mut refused = Refused::default();
        for d in &pull.new {
            let given = self.fleet_decision(d, now, &stats, &protected, &mut session, &mut refused);
            if let Some(net) = given {
                keep.insert(net);
                lift.remove(&net);
            }
        }
        for net in std::mem::take(&mut self.fleet.orphaned) {
            if !keep.contains(&net) {
                lift.insert(net);
            }
        }
        if refused.more > 0 {
            tracing::warn!(
                "not enforcing {} more CrowdSec decision(s) on protected addresses (synwatch_crowdsec_decisions_skipped_total{{reason=\"protected\"}})",
                refused.more
            );
        }
        if refused.unfit_more > 0 {
            tracing::info!(
                "not enforcing {} more CrowdSec decision(s) of another type or scope or with a bad value (synwatch_crowdsec_decisions_skipped_total)",
                refused.unfit_more
            );
        }
        if pull.startup {
            lift.extend(
                self.book
                    .active()
                    .filter(|r| is_pulled(r) && !keep.contains(&r.net))
                    .map(|r| r.net),
            );
        }
        // Only pulled bans are lifted by the LAPI; a scan's or a manual ban stays.
        let lift: Vec<IpNet> = lift
            .into_iter()
            .filter(|n| self.book.get(*n).is_some_and(is_pulled))
            .collect();
        let mut happened = Vec::new();
        if !lift.is_empty() {
            for n in &lift {
                self.book.remove(*n);
            }
            stats.lifted.fetch_add(lift.len() as u64, Ordering::Relaxed);
            happened = self.lift(lift, "deleted", now);
        }
        self.record_held();
        self.note_fleet_held();
        happened
    }

    /// The decisions the LAPI deleted: the networks whose last decision it was (or which
    /// this agent did not see given, before a restart), to lift.
    fn fleet_deleted(&mut self, deleted: &[lapi::Decision]) -> HashSet<IpNet> {
        let mut lift: HashSet<IpNet> = HashSet::new();
        for d in deleted {
            let Ok(net) = lapi::decision_net(d) else {
                continue;
            };
            let net = synwatch_enforce::ban_net(net);
            match self.fleet.ids.get(&d.id).copied() {
                Some(held) if held == net => {
                    self.fleet.ids.remove(&d.id);
                    if self.fleet.release_one(held) {
                        lift.insert(held);
                    }
                }
                // The deletion of what the id held before it was given again for another
                // network: that one went when the id moved; the id holds the new one.
                Some(_) => {}
                // A decision this agent did not see given (before a restart).
                None if !self.fleet.per_net.contains_key(&net) => {
                    lift.insert(net);
                }
                None => {}
            }
        }
        lift
    }

    /// One new decision: given unless it is malformed, synwatch's own, protected or
    /// already held (for new connections only when `session` says its network holds
    /// one). Returns the network it holds to (kept through a startup pull).
    fn fleet_decision(
        &mut self,
        d: &lapi::Decision,
        now: i64,
        stats: &Stats,
        protected: &impl Fn(IpNet) -> Option<(Why, IpNet)>,
        session: &mut impl FnMut(IpNet) -> bool,
        refused: &mut Refused,
    ) -> Option<IpNet> {
        let label = lapi::origin_label(&d.origin, &d.scenario);
        let class = OriginClass::of(&label);
        stats.pulled(class);
        let ban = match lapi::to_ban(d) {
            Ok(b) => b,
            Err(why) => {
                stats.skipped(class, why);
                refused.unfit(d, &label, why);
                return None;
            }
        };
        let net = synwatch_enforce::ban_net(ban.net);
        if ban.synwatch && self.fleet.pushed.contains_key(&net) {
            stats.skipped(class, Skip::Own);
            return None;
        }
        if let Some((why, covered)) = protected(net) {
            stats.skipped(class, Skip::Protected);
            if refused.logged < PROTECTED_LOGGED {
                refused.logged += 1;
                tracing::warn!(
                    "not enforcing the CrowdSec decision {} ({}) on {}",
                    d.id,
                    ban.origin,
                    super::refusal(net, why, covered)
                );
            } else {
                refused.more += 1;
            }
            return None;
        }
        let kept = Some(net);
        match self.fleet.ids.insert(ban.id, net) {
            Some(before) if before == net => {}
            before => {
                *self.fleet.per_net.entry(net).or_default() += 1;
                // The same id given again for another network (a LAPI that reuses ids):
                // it no longer holds the first one, which goes if nothing else does.
                if let Some(before) = before
                    && self.fleet.release_one(before)
                {
                    self.fleet.orphaned.push(before);
                }
            }
        }
        // As long as the backend keeps a ban (iptables: 24 days); a longer decision
        // is given again by the next full pull after it ends here.
        let secs = ban.secs.min(self.backend().max_ban_secs());
        let ends = now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
        let reason = format!("{LAPI_REASON}{}", ban.origin);
        let holds = match self.book.covering(net) {
            // A ban of synwatch's own, or a wider one, stands; should it end first,
            // the decision is given then.
            Some(r) if !is_pulled(r) || r.net != net => {
                if r.expires.is_some_and(|e| e + SAME_END_SECS < ends) {
                    let later = self.fleet.deferred.get(&net).is_none_or(|d| d.0 < ends);
                    if later {
                        self.fleet.deferred.insert(net, (ends, reason.clone()));
                    }
                }
                true
            }
            Some(r) => r.expires.is_none_or(|e| e + SAME_END_SECS >= ends),
            None => false,
        };
        if holds {
            stats.skipped(class, Skip::Held);
            return kept;
        }
        let replaced = self.book.get(net).is_some();
        match self.book.given(net, Some(secs), reason, now) {
            Ok(record) => {
                stats.applied(class);
                self.absorb(now);
                // (Only a ban held before can be on its way to the kernel: a
                // startup pull of 100,000 new ones must not scan the queue each time.)
                if replaced {
                    self.pending.retain(|p| p.net != net);
                    self.unsaved.retain(|p| p.net != net);
                    self.renewing.insert(net);
                }
                // A range holds a session when any address of it does.
                let held = session(net);
                self.decided(record, held);
                self.retry_at = self.retry_at.min(now);
            }
            Err(_) => stats.skipped(class, Skip::Held),
        }
        kept
    }

    /// Gives the deferred decisions whose network no ban holds any more (the local ban
    /// that held it expired), for new connections only where `session` says the network
    /// holds one; drops those that ended, and those on a network `protected` says is
    /// protected now (an allowlist reloaded, a new gateway or address since the decision
    /// came: SPEC §7, protected addresses are never enforced, whatever the LAPI says).
    /// Does something only after bans expired (see [`Blocker::apply`]); returns whether it
    /// gave a ban, to be applied at once.
    pub fn give_deferred(
        &mut self,
        now: i64,
        protected: impl Fn(IpNet) -> bool,
        mut session: impl FnMut(IpNet) -> bool,
    ) -> bool {
        if !std::mem::take(&mut self.fleet.expired) || self.fleet.deferred.is_empty() {
            return false;
        }
        let mut gave = false;
        let deferred = std::mem::take(&mut self.fleet.deferred);
        for (net, (ends, reason)) in deferred {
            if ends <= now {
                continue;
            }
            if protected(net) {
                if let Some(stats) = &self.fleet.stats {
                    stats.skipped(OriginClass::of(&origin(&reason)), Skip::Protected);
                }
                tracing::warn!(
                    "not enforcing the CrowdSec decision ({}) on {}, which waited for a ban \
                     that has ended: it is protected now",
                    origin(&reason),
                    synwatch_enforce::net_text(net)
                );
                continue;
            }
            if self.book.covering(net).is_some() {
                self.fleet.deferred.insert(net, (ends, reason));
                continue;
            }
            let secs = u64::try_from(ends - now).unwrap_or(0);
            if let Ok(record) = self.book.given(net, Some(secs), reason, now) {
                if let Some(stats) = &self.fleet.stats {
                    stats.applied(OriginClass::of(&origin(&record.reason)));
                }
                let held = session(net);
                self.decided(record, held);
                self.retry_at = self.retry_at.min(now);
                gave = true;
            }
        }
        self.note_fleet_held();
        gave
    }

    /// The gauge of pulled bans held.
    pub(super) fn note_fleet_held(&self) {
        if let Some(stats) = &self.fleet.stats {
            stats.held.store(
                self.book.active().filter(|r| is_pulled(r)).count() as u64,
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::block::BlockSettings;
    use crate::crowdsec::lapi::Decision;
    use crate::metrics::Metrics;
    use synwatch_enforce::bans::Policy;
    use synwatch_enforce::{Backend, RecordingRunner, Scope, open};

    const GATEWAY: &str = "192.0.2.254";

    fn n(s: &str) -> IpNet {
        synwatch_enforce::parse_net(s).unwrap()
    }

    /// A blocker on `backend` over `runner`, banning for 60 s (an hour at most), one a
    /// minute, with no fleet.
    fn started(backend: Backend, dir: &std::path::Path, runner: &RecordingRunner) -> Blocker {
        let enforcer = open(backend, Scope::All, Box::new(runner.clone())).unwrap();
        let settings = BlockSettings {
            scope: Scope::All,
            policy: Policy {
                duration_secs: 60,
                max_secs: 3600,
                per_minute: 1,
            },
            state_dir: dir.to_path_buf(),
            keep_rules: false,
            dry_run: false,
        };
        Blocker::start(enforcer, &settings, Arc::new(Metrics::default()), 0, |_| {
            false
        })
        .unwrap()
        .0
    }

    /// An nftables blocker that has joined the fleet.
    fn blocker(dir: &std::path::Path, runner: &RecordingRunner) -> (Blocker, Arc<Stats>) {
        let mut b = started(Backend::Nftables, dir, runner);
        let stats = Arc::new(Stats::default());
        b.join_fleet(
            Some(Arc::new(Outbox::new(Arc::clone(&stats)))),
            Arc::clone(&stats),
        );
        (b, stats)
    }

    fn protected(net: IpNet) -> Option<(Why, IpNet)> {
        net.contains(&n(GATEWAY).addr())
            .then(|| (Why::Infra(crate::host::Role::Gateway), n(GATEWAY)))
    }

    fn d(id: i64, origin: &str, scope: &str, value: &str) -> Decision {
        Decision {
            id,
            origin: origin.into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: "1h".into(),
            scenario: "crowdsecurity/ssh-bf".into(),
            simulated: None,
        }
    }

    fn pull(startup: bool, new: Vec<Decision>, deleted: Vec<Decision>) -> Pull {
        Pull {
            startup,
            new,
            deleted,
        }
    }

    fn held(b: &Blocker) -> Vec<(String, String)> {
        let mut v: Vec<_> = b
            .book
            .active()
            .map(|r| (synwatch_enforce::net_text(r.net), origin(&r.reason)))
            .collect();
        v.sort();
        v
    }

    fn lifted(h: &[Happened]) -> Vec<IpNet> {
        h.iter()
            .filter_map(|h| match h {
                Happened::Unblocked(net, "deleted") => Some(*net),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn decisions_become_bans_with_their_origin_and_protected_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, stats) = blocker(dir.path(), &runner);
        let p = pull(
            true,
            vec![
                d(1, "cscli", "Ip", "198.51.100.7"),
                d(2, "crowdsec", "Range", "2001:db8:1:2::/64"),
                d(3, "cscli", "Ip", GATEWAY),
                d(4, "cscli", "Range", "192.0.2.0/24"),
                d(5, "crowdsec", "Country", "FR"),
            ],
            vec![],
        );
        assert!(b.pulled(p, 100, protected, |_| false).is_empty());
        assert_eq!(
            held(&b),
            vec![
                ("198.51.100.7".into(), "cscli".into()),
                (
                    "2001:db8:1:2::/64".into(),
                    "crowdsec/crowdsecurity/ssh-bf".into()
                ),
            ]
        );
        assert_eq!(stats.skipped_of(OriginClass::Cscli, Skip::Protected), 2);
        assert_eq!(stats.skipped_of(OriginClass::Crowdsec, Skip::Scope), 1);
        // Given like any ban: to the kernel at the next apply, with their time, not
        // against the cap of one ban a minute.
        let happened = b.apply(100);
        assert_eq!(happened.len(), 2, "{happened:?}");
        let rec = b.book.get(n("198.51.100.7")).unwrap();
        assert_eq!(rec.expires, Some(100 + 3600));
        assert!(runner.transcript().join("\n").contains("198.51.100.7"));
        assert_eq!(stats.held.load(Ordering::Relaxed), 2);
        // Nor did they use up the cap: a scanner seen here is banned at once.
        b.scan(
            "203.0.113.9".parse().unwrap(),
            n("203.0.113.9"),
            &[1, 2, 3, 4],
            101,
            None,
            false,
        );
        let happened = b.apply(101);
        assert!(
            matches!(&happened[..], [Happened::Blocked(r)] if r.net == n("203.0.113.9")),
            "{happened:?}"
        );
    }

    /// A LAPI that gives an id again for another network (reviewer's finding: the first
    /// network's count stayed at one, so no deletion ever lifted it): the id moves, the
    /// first network goes unless another decision holds it, and deleting the id lifts
    /// the second.
    #[test]
    fn an_id_given_again_for_another_network_moves_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = blocker(dir.path(), &runner);
        let p = pull(
            true,
            vec![
                d(1, "cscli", "Ip", "198.51.100.7"),
                d(2, "cscli", "Ip", "198.51.100.8"),
                d(3, "cscli", "Ip", "198.51.100.9"),
            ],
            vec![],
        );
        b.pulled(p, 20, protected, |_| false);
        b.apply(20);
        let h = b.pulled(
            pull(
                false,
                vec![
                    d(1, "cscli", "Ip", "198.51.100.10"),
                    d(2, "cscli", "Ip", "198.51.100.10"),
                    d(4, "cscli", "Ip", "198.51.100.9"),
                    d(3, "cscli", "Ip", "198.51.100.11"),
                ],
                vec![],
            ),
            30,
            protected,
            |_| false,
        );
        b.apply(30);
        // .7 and .8 lost their only decision; .9 is still held by id 4.
        let mut gone = lifted(&h);
        gone.sort();
        assert_eq!(gone, vec![n("198.51.100.7"), n("198.51.100.8")]);
        let addrs = |b: &Blocker| held(b).into_iter().map(|(a, _)| a).collect::<Vec<_>>();
        assert_eq!(
            addrs(&b),
            ["198.51.100.10", "198.51.100.11", "198.51.100.9"]
        );
        // The deletion of what id 1 held before comes late: it lifts nothing.
        let h = b.pulled(
            pull(false, vec![], vec![d(1, "cscli", "Ip", "198.51.100.7")]),
            35,
            protected,
            |_| false,
        );
        assert!(lifted(&h).is_empty(), "{h:?}");
        let h = b.pulled(
            pull(
                false,
                vec![],
                vec![
                    d(1, "cscli", "Ip", "198.51.100.10"),
                    d(2, "cscli", "Ip", "198.51.100.10"),
                    d(3, "cscli", "Ip", "198.51.100.11"),
                ],
            ),
            40,
            protected,
            |_| false,
        );
        let mut gone = lifted(&h);
        gone.sort();
        assert_eq!(gone, vec![n("198.51.100.10"), n("198.51.100.11")]);
        assert_eq!(addrs(&b), ["198.51.100.9"]);
    }

    #[test]
    fn a_network_goes_when_its_last_decision_is_deleted_and_local_bans_stay() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = blocker(dir.path(), &runner);
        b.scan(
            "203.0.113.9".parse().unwrap(),
            n("203.0.113.9"),
            &[1, 2, 3, 4],
            10,
            None,
            false,
        );
        b.apply(10);
        let p = pull(
            true,
            vec![
                d(1, "cscli", "Ip", "198.51.100.7"),
                d(2, "crowdsec", "Ip", "198.51.100.7"),
                d(3, "cscli", "Ip", "203.0.113.9"),
            ],
            vec![],
        );
        b.pulled(p, 20, protected, |_| false);
        b.apply(20);
        // The local ban stands with its own origin.
        assert_eq!(
            held(&b),
            vec![
                ("198.51.100.7".into(), "cscli".into()),
                ("203.0.113.9".into(), "synwatch".into()),
            ]
        );
        let h = b.pulled(
            pull(false, vec![], vec![d(1, "cscli", "Ip", "198.51.100.7")]),
            30,
            protected,
            |_| false,
        );
        assert!(lifted(&h).is_empty(), "another decision still holds it");
        let h = b.pulled(
            pull(
                false,
                vec![],
                vec![
                    d(2, "crowdsec", "Ip", "198.51.100.7"),
                    d(3, "cscli", "Ip", "203.0.113.9"),
                ],
            ),
            40,
            protected,
            |_| false,
        );
        assert_eq!(lifted(&h), vec![n("198.51.100.7")]);
        assert_eq!(held(&b), vec![("203.0.113.9".into(), "synwatch".into())]);
    }

    #[test]
    fn a_decision_outlasting_the_local_ban_is_given_when_that_ban_expires() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = blocker(dir.path(), &runner);
        let (gone, stays) = ("203.0.113.10", "203.0.113.9");
        // A decision deleted before the local ban holding it ends: nothing is given.
        b.scan(
            gone.parse().unwrap(),
            n(gone),
            &[1, 2, 3, 4],
            10,
            None,
            false,
        );
        b.apply(10);
        let ends = b.book.get(n(gone)).unwrap().expires.unwrap();
        b.pulled(
            pull(true, vec![d(2, "cscli", "Ip", gone)], vec![]),
            20,
            protected,
            |_| false,
        );
        b.pulled(
            pull(false, vec![], vec![d(2, "cscli", "Ip", gone)]),
            30,
            protected,
            |_| false,
        );
        b.apply(ends + 1);
        assert!(
            !b.give_deferred(ends + 1, |_| false, |_| false),
            "nothing to give"
        );
        assert!(b.book.get(n(gone)).is_none());
        // The fleet bans a source for an hour while a one-minute local ban holds it.
        let t = ends + 1;
        b.scan(
            stays.parse().unwrap(),
            n(stays),
            &[1, 2, 3, 4],
            t,
            None,
            false,
        );
        b.apply(t);
        let ends = b.book.get(n(stays)).unwrap().expires.unwrap();
        b.pulled(
            pull(false, vec![d(1, "cscli", "Ip", stays)], vec![]),
            t + 5,
            protected,
            |_| false,
        );
        assert_eq!(origin(&b.book.get(n(stays)).unwrap().reason), "synwatch");
        let happened = b.apply(ends + 1);
        assert!(
            happened
                .iter()
                .any(|h| matches!(h, Happened::Unblocked(net, "expired") if *net == n(stays))),
            "{happened:?}"
        );
        assert!(b.give_deferred(ends + 1, |_| false, |_| false));
        // It stays banned, now by the fleet's decision, until the decision ends.
        let rec = b.book.get(n(stays)).expect("the fleet's ban given");
        assert_eq!(origin(&rec.reason), "cscli");
        assert_eq!(rec.expires, Some(t + 5 + 3600));
        b.apply(ends + 2);
        let sent = runner.transcript();
        let mentions = sent.iter().filter(|l| l.contains(stays)).count();
        assert!(mentions >= 2, "given to the kernel again: {sent:?}");
    }

    /// Regression: a decision waiting for a local ban to end was given without asking
    /// whether its network had become protected since (SPEC §7: protected addresses are
    /// never enforced, whatever the LAPI says), and held until the decision ended.
    #[test]
    fn a_decision_waiting_for_a_ban_is_not_given_on_a_network_protected_since() {
        for reloaded in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let runner = RecordingRunner::default();
            let (mut b, stats) = blocker(dir.path(), &runner);
            let x = "203.0.113.9";
            let now_protected = |net: IpNet| net == n(x);
            // A (forged) scan bans X for a minute; the fleet bans it for an hour.
            b.scan(x.parse().unwrap(), n(x), &[1, 2, 3, 4], 10, None, false);
            b.apply(10);
            let ends = b.book.get(n(x)).unwrap().expires.unwrap();
            b.pulled(
                pull(false, vec![d(1, "cscli", "Ip", x)], vec![]),
                15,
                protected,
                |_| false,
            );
            if reloaded {
                // The operator allowlists X: its ban is lifted at once.
                b.release_protected(20, now_protected);
                assert!(b.book.get(n(x)).is_none());
                // Another ban ends later, which looks at the waiting decisions.
                let add = crate::control::Request::Add {
                    addr: n("198.51.100.20"),
                    secs: Some(5),
                };
                let _ = b.control(&add, 21, |_| None);
            }
            let t = ends + 1;
            b.apply(t);
            let before = runner.transcript().len();
            assert!(!b.give_deferred(t, now_protected, |_| false));
            b.apply(t);
            assert!(b.book.get(n(x)).is_none(), "reloaded: {reloaded}");
            let sent = runner.transcript();
            assert!(
                sent[before..].iter().all(|l| !l.contains(x)),
                "nothing more sent to the kernel on {x}: {sent:?}"
            );
            // Without the reload, the waiting decision met the rule when it was due.
            let skipped = stats.skipped_of(OriginClass::Cscli, Skip::Protected);
            assert_eq!(skipped, u64::from(!reloaded), "reloaded: {reloaded}");
        }
    }

    /// SPEC §2: a source holding an established connection with this host at ban time
    /// is banned for new connections only, by a pulled decision as by a scan: given at
    /// once, or when the local ban that held it expires.
    #[test]
    fn a_decision_on_a_source_holding_a_session_drops_only_its_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = blocker(dir.path(), &runner);
        let (talks, quiet, waits) = ("198.51.100.7", "198.51.100.8", "203.0.113.9");
        let peers = [
            n(talks).addr(),
            n(waits).addr(),
            n("2001:db8:1:2::5").addr(),
        ];
        let session = |net: IpNet| peers.iter().any(|a| net.contains(a));
        let decisions = vec![
            d(1, "cscli", "Ip", talks),
            d(2, "cscli", "Ip", quiet),
            d(3, "cscli", "Range", "2001:db8:1:2::/64"),
        ];
        b.pulled(pull(true, decisions, vec![]), 0, protected, session);
        b.apply(0);
        let new_only = |b: &Blocker, s: &str| b.book.get(n(s)).unwrap().new_only;
        assert!(new_only(&b, talks));
        assert!(!new_only(&b, quiet));
        assert!(
            new_only(&b, "2001:db8:1:2::/64"),
            "a peer is inside the range"
        );
        let kernel = runner.transcript().join("\n");
        assert!(
            kernel.contains(&format!("banned4_new {{ {talks} timeout 3600s }}")),
            "{kernel}"
        );
        assert!(
            kernel.contains(&format!("banned4 {{ {quiet} timeout 3600s }}")),
            "{kernel}"
        );
        // A scan's ban (new connections only) holds `waits` for a minute; the fleet's
        // hour-long decision given when it expires keeps the session alive too.
        b.scan(
            waits.parse().unwrap(),
            n(waits),
            &[1, 2, 3, 4],
            1,
            None,
            true,
        );
        b.apply(1);
        let ends = b.book.get(n(waits)).unwrap().expires.unwrap();
        b.pulled(
            pull(false, vec![d(4, "cscli", "Ip", waits)], vec![]),
            2,
            protected,
            session,
        );
        b.apply(ends + 1);
        assert!(b.give_deferred(ends + 1, |_| false, session));
        assert_eq!(origin(&b.book.get(n(waits)).unwrap().reason), "cscli");
        assert!(new_only(&b, waits));
        b.apply(ends + 1);
        let kernel = runner.transcript().join("\n");
        let given = format!("banned4_new {{ {waits} timeout {}s }}", 2 + 3600 - ends - 1);
        assert!(kernel.contains(&given), "{given} in {kernel}");
    }

    #[test]
    fn a_full_pull_keeps_what_is_held_lifts_what_is_gone_and_gives_what_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, stats) = blocker(dir.path(), &runner);
        let first = vec![
            d(1, "cscli", "Ip", "198.51.100.1"),
            d(2, "cscli", "Ip", "198.51.100.2"),
        ];
        b.pulled(pull(true, first, vec![]), 0, protected, |_| false);
        b.apply(0);
        let before = runner.transcript().len();
        // The LAPI was away; on its return everything again: 1 still, 2 gone, 3 new.
        let again = vec![
            d(1, "cscli", "Ip", "198.51.100.1"),
            d(3, "cscli", "Ip", "198.51.100.3"),
        ];
        let mut h = b.pulled(pull(true, again, vec![]), 30, protected, |_| false);
        assert_eq!(lifted(&h), vec![n("198.51.100.2")]);
        // (The lift went to the kernel at once, and the new ban with it.)
        h.extend(b.apply(30));
        let given: Vec<IpNet> = h
            .iter()
            .filter_map(|h| match h {
                Happened::Blocked(r) => Some(r.net),
                _ => None,
            })
            .collect();
        assert_eq!(given, vec![n("198.51.100.3")], "1 is not given again");
        let kernel = runner.transcript()[before..].join("\n");
        assert!(!kernel.contains("198.51.100.1"), "1 untouched: {kernel}");
        assert_eq!(stats.skipped_of(OriginClass::Cscli, Skip::Held), 1);
        assert_eq!(
            held(&b),
            vec![
                ("198.51.100.1".into(), "cscli".into()),
                ("198.51.100.3".into(), "cscli".into()),
            ]
        );
    }

    /// A scan of 203.0.113.9 banned and pushed at 10, a manual ban of 203.0.113.10 at 11.
    fn a_scan_and_a_manual_ban(b: &mut Blocker) {
        let src = "203.0.113.9".parse().unwrap();
        let scan = synwatch_detect::Scan {
            kind: synwatch_detect::ScanKind::Ports,
            hosts: Vec::new(),
            ts: 10_000_000_000,
            src,
            dst: "192.0.2.1".parse().unwrap(),
            ports: vec![1, 2, 3, 4],
            probes: synwatch_detect::Probe::Syn.into(),
            window: 60_000_000_000,
            allowlisted: false,
            prefix: None,
        };
        b.note_scan(n("203.0.113.9"), &scan);
        b.scan(src, n("203.0.113.9"), &[1, 2, 3, 4], 10, None, false);
        b.apply(10);
        let add = crate::control::Request::Add {
            addr: n("203.0.113.10"),
            secs: None,
        };
        b.control(&add, 11, |_| None);
    }

    #[test]
    fn its_own_alerts_are_pushed_once_and_skipped_when_they_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, stats) = blocker(dir.path(), &runner);
        a_scan_and_a_manual_ban(&mut b);
        // A manual ban is not pushed.
        assert_eq!(stats.push_queue.load(Ordering::Relaxed), 1);
        let mut back = d(7, "crowdsec", "Ip", "203.0.113.9");
        back.scenario = "synwatch/port-scan".into();
        b.pulled(pull(false, vec![back], vec![]), 20, protected, |_| false);
        assert_eq!(stats.skipped_of(OriginClass::Synwatch, Skip::Own), 1);
        assert_eq!(held(&b)[0], ("203.0.113.10".into(), "manual".into()));
    }

    #[test]
    fn a_pushed_ban_lifted_by_hand_is_withdrawn_and_a_manual_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, stats) = blocker(dir.path(), &runner);
        a_scan_and_a_manual_ban(&mut b);
        assert_eq!(stats.push_queue.load(Ordering::Relaxed), 1);
        for addr in ["203.0.113.10", "203.0.113.9"] {
            let remove = crate::control::Request::Remove { addr: n(addr) };
            b.control(&remove, 12, |_| None);
        }
        // The alert, then its withdrawal; nothing for the manual ban.
        assert_eq!(stats.push_queue.load(Ordering::Relaxed), 2);
        // Until the LAPI deletes it, the decision coming back is still this agent's own.
        let mut back = d(7, "crowdsec", "Ip", "203.0.113.9");
        back.scenario = "synwatch/port-scan".into();
        b.pulled(pull(false, vec![back], vec![]), 20, protected, |_| false);
        assert_eq!(stats.skipped_of(OriginClass::Synwatch, Skip::Own), 1);
        assert!(held(&b).is_empty(), "{:?}", held(&b));
    }

    #[test]
    fn a_decision_longer_than_the_backend_keeps_a_ban_is_cut_to_what_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let mut b = started(Backend::Iptables, dir.path(), &runner);
        let mut long = d(1, "cscli", "Ip", "198.51.100.7");
        long.duration = "8760h".into();
        b.pulled(pull(true, vec![long], vec![]), 0, protected, |_| false);
        b.apply(0);
        let r = b.book.get(n("198.51.100.7")).unwrap();
        assert_eq!(r.expires, Some(2_147_483));
        let script = runner.transcript().join("\n");
        assert!(script.contains("198.51.100.7 timeout 2147483"), "{script}");
    }

    #[test]
    fn origins_of_reasons() {
        assert_eq!(origin("ports 22,80"), "synwatch");
        assert_eq!(origin("manual"), "manual");
        assert_eq!(origin("lapi:cscli"), "cscli");
        assert_eq!(
            origin("lapi:crowdsec/crowdsecurity/ssh-bf"),
            "crowdsec/crowdsecurity/ssh-bf"
        );
    }
}
