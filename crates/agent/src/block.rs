//! Blocking in the live agent: the ban book (lifecycle), the saved state and a kernel
//! backend, driven from the pipeline thread.
//!
//! Bans decided while a batch of packets is processed are applied together at the end of
//! it, as one kernel transaction, so a burst of scanners costs one `nft` run. In the
//! running agent a thread of its own puts them into the kernel and then saves them
//! (block/writer.rs), so that a burst of thousands never holds the pipeline; a ban is
//! reported only once it is in both. A change the kernel refuses is logged, counted and
//! retried every few seconds until it goes through; it never stops the agent.
//!
//! A ban is of a network: an address (/32, /128) or a range (a scanner's IPv6 /64, or
//! `synwatch blocks add 198.51.100.0/24`). A ban inside a running range is not given
//! again; a range given over running bans inside it absorbs them: they are lifted
//! (reported as unblocked with the reason "covered") before the range goes in, in the
//! same push to the kernel.

use std::net::IpAddr;

use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use synwatch_enforce::bans::{Book, Policy, Record, Refused};
use synwatch_enforce::{Backend, EnforceError, Enforcer, KernelBan, Scope};

use crate::control::{BanView, Reply, Request};
use crate::metrics::Metrics;
use crate::protect::Why;
use crate::state::Store;

pub mod fleet;
pub mod writer;

use writer::{Hands, Writer, lock};

/// Seconds between attempts to apply a change the kernel refused.
const RETRY_SECS: i64 = 5;

/// Bans ending within this many seconds are not looked for in the kernel's listing
/// ([`Blocker::reconcile`]): the kernel's own timeout may remove them first.
const RECONCILE_MARGIN_SECS: i64 = 120;
/// Seconds between checks that synwatch's rules are intact (each set's canary, the
/// rules, the jumps: microseconds for nftables through netlink, a few milliseconds for
/// iptables, whatever the number of bans) and reads of the drop rules' counters.
const COUNTERS_SECS: i64 = 3;
/// Refused bans logged per minute (all are counted in the metrics).
const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;

/// The validated blocking options of `run`.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    pub scope: Scope,
    pub policy: Policy,
    pub state_dir: PathBuf,
    pub keep_rules: bool,
    /// `--dry-run`: the enforcer is a [`synwatch_enforce::DryRun`], and bans are kept
    /// in [`DRY_RUN_DIR`] under the state directory, so a real run never restores them.
    pub dry_run: bool,
}

/// Where a dry run keeps its bans, under the state directory.
pub const DRY_RUN_DIR: &str = "dry-run";

impl BlockSettings {
    /// The directory of the ban database.
    pub fn store_dir(&self) -> PathBuf {
        if self.dry_run {
            self.state_dir.join(DRY_RUN_DIR)
        } else {
            self.state_dir.clone()
        }
    }
}

/// What became of a ban the XDP program made by itself
/// ([`Blocker::confirm_kernel_ban`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The detector decided the same ban (now, or as the cap made room): it stays.
    Kept,
    /// The cap made the scan wait: the kernel's ban is lifted, the scan waits.
    Waits,
    /// The detector did not decide it: lifted.
    Lifted,
}

/// Something to report as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    Blocked(Record),
    Unblocked(IpNet, &'static str),
}

pub struct Blocker {
    /// The kernel backend and the saved state, shared with the writer thread.
    hands: Arc<Mutex<Hands>>,
    backend: Backend,
    /// New bans into the kernel and the state file off the pipeline thread, once started
    /// ([`Blocker::write_from_thread`]); until then (and in most tests) the pipeline's own
    /// call to [`Blocker::apply`] does it.
    writer: Option<Writer>,
    book: Book,
    keep_rules: bool,
    dry_run: bool,
    /// Bans decided but not yet in the kernel.
    pending: Vec<Record>,
    /// Bans decided but not yet saved (saved together, in one transaction, just after
    /// they went to the kernel). With the writer thread, always a part of `pending`: the
    /// writer saves what it is handed.
    unsaved: Vec<Record>,
    /// Networks to remove from the kernel (or whose removal failed, to retry).
    lifting: Vec<IpNet>,
    /// Bans the XDP program made by itself that are not kept
    /// ([`Blocker::confirm_kernel_ban`]): removed like `lifting`, but the program keeps
    /// its scan track of the source, so that it does not ban it again in the same
    /// episode.
    refused: Vec<IpNet>,
    /// Of `pending`, the bans that replace one the kernel may hold (a pulled decision
    /// renewing a ban, a ban put back after a refused change): renewed in the kernel,
    /// where the others, new to it, take a plain add from the writer thread.
    renewing: std::collections::HashSet<IpNet>,
    /// What happened outside [`Blocker::apply`] (bans absorbed by a range), reported by
    /// the next one.
    reported: Vec<Happened>,
    retry_at: i64,
    counters_at: i64,
    metrics: Arc<Metrics>,
    refusal_minute: i64,
    refusals_logged: u32,
    /// Bans still to put back after the rules were set up again (in address order, the
    /// next ones last), a chunk a turn: see [`Blocker::reinstate`].
    reinstating: Vec<IpNet>,
    /// Bans the kernel's last listing lacked ([`Blocker::reconcile`]).
    suspects: std::collections::HashSet<IpNet>,
    /// The rule check and counters on a thread of their own, once started
    /// ([`Blocker::check_from_thread`]); until then (and in tests) the pipeline asks.
    upkeep: Option<crate::upkeep::Upkeep>,
    /// The CrowdSec Local API: pulled decisions held, bans to push.
    fleet: fleet::Fleet,
    /// The longest timeout the backend's kernel sets take
    /// ([`Backend::kernel_max_secs`]): a ban longer than that goes in with this timeout.
    kernel_max: u64,
    /// When the bans longer than the kernel holds are to be renewed there, before the
    /// first of their elements runs out ([`renewal_due`]).
    renew_at: Option<i64>,
    /// Bans in the book whose saving failed (the state directory full or unwritable):
    /// saved again every [`RETRY_SECS`] until it works.
    not_saved: std::collections::BTreeSet<IpNet>,
    /// Bans lifted whose removal from the state file failed (with whether their
    /// offences were forgiven): removed again with the saving, lest a restart bring
    /// them back.
    not_deleted: std::collections::BTreeMap<IpNet, bool>,
    save_retry_at: i64,
    /// When the state file was last checked to be the one the store writes
    /// ([`Blocker::check_state_file`]).
    state_checked_at: i64,
}

/// Bans put back into rules set up again, per turn of the pipeline (every 100 ms while
/// any wait): one `nft -f` or `ipset restore` adding 1,500 elements to a set of 100,000
/// takes 10-30 ms here (docs/PERFORMANCE.md, bench-hold.sh), where all of 100,000 at once
/// held the pipeline for over a second.
const REINSTATE_CHUNK: usize = 1_500;

impl std::fmt::Debug for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocker")
            .field("backend", &self.backend)
            .field("bans", &self.book.len())
            .finish()
    }
}

impl Blocker {
    /// Opens the saved state and sets up the backend holding the saved bans that are
    /// still running. Returns the blocker and the saved bans that ended while no agent
    /// ran (to report as lifted).
    pub fn start(
        mut enforcer: Box<dyn Enforcer>,
        settings: &BlockSettings,
        metrics: Arc<Metrics>,
        now: i64,
        protected: impl Fn(IpNet) -> bool,
    ) -> Result<(Self, Vec<Happened>)> {
        let mut store = Store::open_for_agent(&settings.store_dir())?;
        // A dry run saves nothing: it has nothing to lose.
        metrics
            .state_unwritable
            .store(!store.writable() && !settings.dry_run, Ordering::Relaxed);
        let mut book = Book::new(settings.policy);
        // The configuration or the host's addresses may have changed while no agent ran
        // (or the file was written by hand): a saved ban on what is now protected, or a
        // range covering it, is not restored, and is left out before a range could
        // absorb the bans inside it.
        let (mut released, saved): (Vec<Record>, Vec<Record>) = store
            .bans()?
            .into_iter()
            .partition(|r| r.expires.is_none_or(|e| e > now) && protected(r.net));
        let over = book.restore(saved, store.offenders()?, now);
        let over_addrs: Vec<IpNet> = over.iter().map(|r| r.net).collect();
        forget(&mut store, &over_addrs, false);
        // Saved bans inside a saved range: the range stands for them.
        let inside: Vec<IpNet> = book.take_absorbed().iter().map(|r| r.net).collect();
        forget(&mut store, &inside, false);
        let mut released: Vec<IpNet> = released.drain(..).map(|r| r.net).collect();
        released.extend(book.release(protected));
        forget(&mut store, &released, true);
        let bans = running_bans(&book, now);
        let refused = set_up_with(&mut *enforcer, &bans).with_context(|| {
            format!(
                "cannot set up blocking with {}",
                enforcer.backend().as_str()
            )
        })?;
        // A saved ban the kernel refuses costs that ban only: reported as damage.
        for &net in &refused {
            book.remove(net);
        }
        store.note_refused(refused.len() as u64);
        metrics.record_state_damage(store.damage());
        let kernel_max = enforcer.backend().kernel_max_secs();
        let renew_at = renewal_due(kernel_max, book.active(), now);
        let blocker = Self {
            backend: enforcer.backend(),
            hands: Arc::new(Mutex::new(Hands { enforcer, store })),
            writer: None,
            book,
            keep_rules: settings.keep_rules,
            dry_run: settings.dry_run,
            pending: Vec::new(),
            unsaved: Vec::new(),
            lifting: Vec::new(),
            refused: Vec::new(),
            renewing: std::collections::HashSet::new(),
            reported: Vec::new(),
            retry_at: now,
            counters_at: now,
            metrics,
            refusal_minute: 0,
            refusals_logged: 0,
            reinstating: Vec::new(),
            suspects: std::collections::HashSet::new(),
            upkeep: None,
            fleet: fleet::Fleet::default(),
            kernel_max,
            renew_at,
            not_saved: std::collections::BTreeSet::new(),
            not_deleted: std::collections::BTreeMap::new(),
            save_retry_at: now,
            state_checked_at: now,
        };
        let lapsed = over_addrs
            .into_iter()
            .map(|a| Happened::Unblocked(a, "expired"))
            .chain(
                inside
                    .into_iter()
                    .map(|a| Happened::Unblocked(a, "covered")),
            )
            .chain(
                released
                    .into_iter()
                    .map(|a| Happened::Unblocked(a, "allowlisted")),
            )
            .collect();
        blocker.record_held();
        Ok((blocker, lapsed))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether bans are only decided and reported (`--dry-run`).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Restored bans, for the banner.
    pub fn active(&self) -> usize {
        self.book.len()
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.book.set_policy(policy);
    }

    /// Whether the detector decided a ban covering `net`'s address (it holds, or waits for
    /// the cap).
    pub fn has_decided(&self, net: impl Into<IpNet>) -> bool {
        let addr = synwatch_enforce::ban_net(net.into());
        self.book.covering(addr).is_some() || self.book.is_waiting(addr)
    }

    /// Whether bans are decided but not yet in the kernel.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.reinstating.is_empty()
            || self.writer.as_ref().is_some_and(Writer::busy)
    }

    /// Leaves new bans (into the kernel, then into the state file) to a thread of their
    /// own (block/writer.rs), so that a burst of thousands never holds the pipeline; `wake`
    /// is called as each chunk is done, so that the pipeline reports it at once.
    pub fn write_from_thread(&mut self, wake: Box<dyn Fn() + Send>) {
        match Writer::start(Arc::clone(&self.hands), wake) {
            Ok(w) => self.writer = Some(w),
            Err(e) => tracing::warn!(
                "warning: cannot start the ban writer thread ({e}); the pipeline applies bans itself"
            ),
        }
    }

    /// [`Blocker::apply`], after waiting for the bans in the writer's hands: at the end,
    /// every ban decided is applied, saved and reported.
    pub fn apply_all(&mut self, now: i64) -> Vec<Happened> {
        let mut happened = Vec::new();
        loop {
            if let Some(w) = self.writer.as_mut() {
                let done = w.wait();
                happened.extend(self.take_done(done, now));
            }
            // Hands what is pending to the writer (or applies it here without one).
            happened.extend(self.apply(now));
            if !self.writer.as_ref().is_some_and(Writer::busy) {
                return happened;
            }
        }
    }

    /// The chunks the writer handed back: bans in the kernel and saved (reported now), or
    /// refused (pending again, retried later). A ban lifted while it was on its way (a
    /// `blocks remove`, a range absorbing it) is taken out of the kernel and the state
    /// file again, and not reported.
    fn take_done(&mut self, done: Vec<writer::Done>, now: i64) -> Vec<Happened> {
        let mut happened = Vec::new();
        let mut gone = Vec::new();
        for d in done {
            match d.result {
                Ok(()) => {
                    self.metrics
                        .blocks
                        .fetch_add(d.records.len() as u64, Ordering::Relaxed);
                    let (held, lifted): (Vec<Record>, Vec<Record>) = d
                        .records
                        .into_iter()
                        .partition(|r| self.book.get(r.net).is_some());
                    if !d.saved {
                        self.keep_unsaved(held.iter().map(|r| r.net), now);
                    }
                    gone.extend(lifted.into_iter().map(|r| r.net));
                    self.push_to_fleet(&held, now);
                    happened.extend(held.into_iter().map(Happened::Blocked));
                }
                Err(e) => {
                    self.failed(&e, d.records.len(), "apply", now);
                    // Part of the batch may be in: renewed, not added, next time.
                    self.renewing.extend(d.records.iter().map(|r| r.net));
                    let mut back: Vec<Record> = d
                        .records
                        .into_iter()
                        .filter(|r| self.book.get(r.net).is_some())
                        .collect();
                    back.append(&mut self.pending);
                    self.pending = back;
                }
            }
        }
        if !gone.is_empty() {
            self.unban(&gone, false, now);
        }
        happened
    }

    /// A scan whose attempt from `src` crossed the threshold: decides a ban of `target`
    /// (the network the detector counted `src` in: `src` itself as a /32 or /128, or its
    /// IPv6 prefix), applied at the next [`Blocker::apply`], unless `protected` says why
    /// `target` must not be banned (for a range, that it would cover a protected
    /// address: see [`crate::protect::ban_target`], which narrows such a range to `src`).
    /// Nothing is given when a running ban already holds `target`. `session`: the source
    /// holds an established connection to this host, so the ban drops only its new
    /// connections.
    pub fn scan(
        &mut self,
        src: IpAddr,
        target: IpNet,
        ports: &[u16],
        now: i64,
        protected: Option<Why>,
        session: bool,
    ) {
        let ports_seen = ports;
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let reason = if synwatch_enforce::is_host(target) {
            format!("ports {}", ports.join(","))
        } else {
            format!("ports {} from {src}", ports.join(","))
        };
        match self
            .book
            .scan_ports(target, reason, ports_seen, now, protected.is_some())
        {
            Ok(record) => {
                self.absorb(now);
                self.decided(record, session);
            }
            Err(Refused::AlreadyBanned) => {}
            Err(why) => {
                let counter = match why {
                    Refused::Protected => &self.metrics.bans_refused_allowlisted,
                    Refused::NetworkShare => &self.metrics.bans_refused_network,
                    _ => &self.metrics.bans_refused_rate,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .bans_abandoned
                    .fetch_add(self.book.take_evicted() as u64, Ordering::Relaxed);
                self.note_waiting();
                self.log_refusal(target, why, protected, now);
            }
        }
    }

    /// Lifts the bans a range just given absorbed (before the range goes in: nftables
    /// refuses overlapping elements); reported by the next [`Blocker::apply`].
    fn absorb(&mut self, now: i64) -> Vec<Happened> {
        let absorbed: Vec<IpNet> = self.book.take_absorbed().iter().map(|r| r.net).collect();
        if absorbed.is_empty() {
            return Vec::new();
        }
        self.unban(&absorbed, false, now);
        let happened: Vec<Happened> = absorbed
            .into_iter()
            .map(|n| Happened::Unblocked(n, "covered"))
            .collect();
        self.reported.extend(happened.iter().cloned());
        happened
    }

    /// A ban decided: on new connections only when its source holds a session; saved and
    /// applied at the next [`Blocker::apply`].
    fn decided(&mut self, mut record: Record, session: bool) {
        if session && let Some(r) = self.book.mark_new_only(record.net) {
            record = r;
        }
        self.unsaved.push(record.clone());
        self.pending.push(record);
    }

    fn note_waiting(&self) {
        self.metrics
            .bans_waiting
            .store(self.book.waiting() as u64, Ordering::Relaxed);
    }

    /// Whether scans wait for the cap (then [`Blocker::activity`] is worth calling).
    pub fn has_waiting(&self) -> bool {
        self.book.waiting() > 0
    }

    /// `src` was seen reaching `port` at `now`: if its scan waits for the cap, that is more
    /// evidence, and a sign it is still active.
    pub fn activity(&mut self, src: IpAddr, port: u16, now: i64) {
        self.book.touch(src, port, now);
    }

    /// Bans waiting scans as the cap makes room, strongest evidence first (applied at the
    /// next [`Blocker::apply`]); forgets those whose source was quiet for `quiet_secs` or
    /// became protected.
    pub fn promote(
        &mut self,
        now: i64,
        quiet_secs: i64,
        protected: impl Fn(IpNet) -> bool,
        mut session: impl FnMut(IpNet) -> bool,
    ) {
        if !self.has_waiting() {
            return;
        }
        let (given, forgotten) = self.book.promote(now, quiet_secs, protected);
        self.metrics
            .bans_delayed
            .fetch_add(given.len() as u64, Ordering::Relaxed);
        self.metrics
            .bans_abandoned
            .fetch_add(forgotten as u64, Ordering::Relaxed);
        self.absorb(now);
        for record in given {
            // A range holds a session when any address of it does.
            let held = session(record.net);
            self.decided(record, held);
        }
        self.note_waiting();
        self.retry_at = self.retry_at.min(now);
    }

    fn log_refusal(&mut self, src: IpNet, why: Refused, protected: Option<Why>, now: i64) {
        let minute = now.div_euclid(60);
        if minute != self.refusal_minute {
            self.refusal_minute = minute;
            self.refusals_logged = 0;
        }
        self.refusals_logged += 1;
        if self.refusals_logged > REFUSALS_LOGGED_PER_MINUTE {
            return;
        }
        let text = match why {
            Refused::Protected => format!(
                "it is {} (reported, never blocked)",
                protected.map_or("local or allowlisted", Why::describe)
            ),
            Refused::NetworkShare => format!(
                "its network (/24 or /48) had its share of the cap of {} new bans per minute (--ban-rate); it waits, {} scan(s) in all, and is banned as soon as the cap allows while it is active",
                self.book.policy().per_minute,
                self.book.waiting()
            ),
            _ => format!(
                "the cap of {} new bans per minute is reached (--ban-rate; a flood of spoofed sources looks like this); it waits, {} scan(s) in all, strongest evidence first, and is banned as soon as the cap allows while it is active",
                self.book.policy().per_minute,
                self.book.waiting()
            ),
        };
        let more = if self.refusals_logged == REFUSALS_LOGGED_PER_MINUTE {
            "; further refusals this minute are only counted (synwatch_bans_refused_total)"
        } else {
            ""
        };
        let src = synwatch_enforce::net_text(src);
        tracing::warn!("not blocking {src}: {text}{more}");
    }

    /// Applies pending bans in one batch, lifts expired ones, retries failed changes and
    /// refreshes the drop counters. Returns what to report. Fleet decisions that waited
    /// for an expired ban are given by [`Blocker::give_deferred`] after it.
    pub fn apply(&mut self, now: i64) -> Vec<Happened> {
        let mut happened = std::mem::take(&mut self.reported);
        if let Some(w) = self.writer.as_mut() {
            let done = w.collect();
            happened.extend(self.take_done(done, now));
        }
        if self.book.next_expiry().is_some_and(|t| t <= now) {
            let over = self.book.expire(now);
            let addrs: Vec<IpNet> = over.iter().map(|r| r.net).collect();
            // The kernel lets them lapse by itself; removing them as well keeps the two
            // in step even when clocks disagree by a second.
            self.unban(&addrs, false, now);
            let policy = self.book.policy();
            let memory = policy.max_secs.max(policy.duration_secs) as i64;
            let pruned = lock(&self.hands)
                .store
                .prune_offenders(now.saturating_sub(memory));
            if let Err(e) = pruned {
                tracing::error!("{e:#}");
            }
            self.metrics
                .unblocks
                .fetch_add(addrs.len() as u64, Ordering::Relaxed);
            happened.extend(addrs.into_iter().map(|a| Happened::Unblocked(a, "expired")));
            // Fleet decisions deferred behind these bans are given by give_deferred,
            // which asks whether their sources hold sessions.
            self.fleet.expired = true;
        }
        // The kernel first, the state file after: a scanner is dropped microseconds
        // after its crossing probe, not after a database commit (milliseconds).
        let lifts = !self.lifting.is_empty() || !self.refused.is_empty();
        if (!self.pending.is_empty() || lifts) && now >= self.retry_at {
            happened.extend(self.push_to_kernel(now));
        }
        if !self.unsaved.is_empty() && self.writer.is_none() {
            let saved = lock(&self.hands).store.save(&self.unsaved);
            let unsaved = std::mem::take(&mut self.unsaved);
            if let Err(e) = saved {
                tracing::error!(
                    "{e:#}; {} new ban(s) hold only until the agent stops unless saving them succeeds later (retried every {RETRY_SECS} s)",
                    unsaved.len()
                );
                self.keep_unsaved(unsaved.iter().map(|r| r.net), now);
            }
        }
        if now >= self.state_checked_at + RETRY_SECS {
            self.state_checked_at = now;
            self.check_state_file(now);
        }
        if (!self.not_saved.is_empty() || !self.not_deleted.is_empty()) && now >= self.save_retry_at
        {
            self.save_again(now);
        }
        if !self.reinstating.is_empty() && now >= self.retry_at {
            self.reinstate_chunk(now);
        }
        if self.renew_at.is_some_and(|t| now >= t) {
            self.renew_long(now);
        }
        // The rule check's latest answer (each turn: it costs a lock), or every few
        // seconds the pipeline's own look.
        let looked = match &self.upkeep {
            Some(u) => u.take().map(|r| (r.intact, r.set_up, r.counters)),
            // Not while the writer thread holds the hands (applying bans): the pipeline
            // looks again at its next turn instead of waiting for the kernel.
            None if now >= self.counters_at => writer::try_lock(&self.hands).map(|mut h| {
                self.counters_at = now + COUNTERS_SECS;
                if h.enforcer.intact() {
                    (true, false, h.enforcer.counters().ok())
                } else {
                    (false, false, None)
                }
            }),
            None => None,
        };
        if let Some((intact, set_up, counters)) = looked {
            if !intact {
                self.reinstate(now, set_up);
            } else if let Some(c) = counters {
                self.metrics
                    .dropped_packets
                    .store(c.packets, Ordering::Relaxed);
                self.metrics.dropped_bytes.store(c.bytes, Ordering::Relaxed);
            }
        }
        if let Some(listed) = self.upkeep.as_ref().and_then(|u| u.take_listing()) {
            self.reconcile(&listed, now);
        }
        self.record_held();
        happened
    }

    /// The ban gauges: bans held, and of them ranges.
    fn record_held(&self) {
        let held = |n: usize| n as u64;
        self.metrics
            .blocked_sources
            .store(held(self.book.len()), Ordering::Relaxed);
        self.metrics
            .blocked_ranges
            .store(held(self.book.ranges()), Ordering::Relaxed);
        self.metrics
            .bans_reinstating
            .store(held(self.reinstating.len()), Ordering::Relaxed);
    }

    /// Lifts what waits to be lifted, then puts the pending bans into the kernel: here,
    /// or handed to the writer thread when it runs (and is not busy with the last batch:
    /// then they wait for the next call), which reports them through the next
    /// [`Blocker::apply`].
    fn push_to_kernel(&mut self, now: i64) -> Vec<Happened> {
        self.remove_lifted(now);
        if self.pending.is_empty() {
            return Vec::new();
        }
        let pending = std::mem::take(&mut self.pending);
        self.note_kernel(&pending, now);
        self.pending = pending;
        if let Some(w) = self.writer.as_mut() {
            if w.busy() {
                return Vec::new();
            }
            let renewing = std::mem::take(&mut self.renewing);
            let renew = (self.backend != Backend::Iptables).then_some(renewing);
            match w.send(std::mem::take(&mut self.pending), renew, now) {
                Ok(()) => {
                    // The writer saves what it is handed: with it, `unsaved` is a part
                    // of `pending`.
                    self.unsaved.clear();
                    return Vec::new();
                }
                // The thread is gone: applied here.
                Err(records) => self.pending = records,
            }
        }
        let records = std::mem::take(&mut self.pending);
        self.add_now(records, now)
    }

    fn remove_lifted(&mut self, now: i64) {
        // A network banned again since its lift was asked for (a removal that failed
        // waits here for its retry) keeps its new ban: removing it now would take that
        // out of the kernel while the book holds it.
        let book = &self.book;
        self.lifting.retain(|net| book.get(*net).is_none());
        self.refused.retain(|net| book.get(*net).is_none());
        if !self.lifting.is_empty() {
            let result = lock(&self.hands).enforcer.remove(&self.lifting);
            match result {
                Ok(()) => self.lifting.clear(),
                Err(e) => self.failed(&e, self.lifting.len(), "lift", now),
            }
        }
        if !self.refused.is_empty() {
            let result = lock(&self.hands).enforcer.remove_refused(&self.refused);
            match result {
                Ok(()) => self.refused.clear(),
                Err(e) => self.failed(&e, self.refused.len(), "lift", now),
            }
        }
    }

    /// Puts `records` into the kernel on this thread; what the kernel refuses is pending
    /// again.
    fn add_now(&mut self, records: Vec<Record>, now: i64) -> Vec<Happened> {
        self.note_kernel(&records, now);
        let bans: Vec<_> = records.iter().map(|r| r.ban(now)).collect();
        let result = lock(&self.hands).enforcer.add(&bans);
        match result {
            Ok(()) => {
                self.metrics
                    .blocks
                    .fetch_add(bans.len() as u64, Ordering::Relaxed);
                self.push_to_fleet(&records, now);
                records.into_iter().map(Happened::Blocked).collect()
            }
            Err(e) => {
                self.failed(&e, bans.len(), "apply", now);
                let mut back = records;
                back.append(&mut self.pending);
                self.pending = back;
                Vec::new()
            }
        }
    }

    /// Sets synwatch's rules up again once they are found missing: someone flushed them
    /// (a firewall service reloading its configuration with `flush ruleset`, `iptables
    /// -F`). Until then the scanners it had banned got through. The rules come back with
    /// the first [`REINSTATE_CHUNK`] bans, the rest follow a chunk a turn, so that the
    /// pipeline never waits for a hundred thousand bans to be written at once. `set_up`:
    /// the rule check's thread has set the rules up again already (empty); every ban
    /// goes back a chunk a turn.
    fn reinstate(&mut self, now: i64, set_up: bool) {
        let mut nets: Vec<IpNet> = running_bans(&self.book, now)
            .into_iter()
            .map(|b| b.net)
            .collect();
        let total = nets.len();
        // The first chunk goes with the set-up; the rest wait, the next ones last.
        let first = if set_up { 0 } else { REINSTATE_CHUNK };
        let rest = nets.split_off(nets.len().min(first));
        let bans: Vec<_> = nets
            .iter()
            .filter_map(|&n| self.book.get(n))
            .map(|r| r.ban(now))
            .collect();
        let backend = self.backend;
        let done = if set_up {
            Ok(())
        } else {
            lock(&self.hands).enforcer.setup(&bans)
        };
        match done {
            Ok(()) => {
                self.renew_at = None;
                let all: Vec<Record> = self.book.active().cloned().collect();
                self.note_kernel(&all, now);
                self.reinstating = rest;
                self.reinstating.reverse();
                if let Some(u) = &self.upkeep {
                    u.set_up_again();
                }
                if set_up {
                    // Set up empty by the check's thread: the first chunk goes now.
                    self.reinstate_chunk(now);
                }
                self.metrics
                    .rules_reinstated
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "synwatch's {backend} rules were removed by someone else (a firewall reload?); set them up again with {total} ban{}",
                    if total == 1 { "" } else { "s" }
                );
            }
            Err(e) => {
                self.metrics.ban_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "synwatch's {backend} rules were removed by someone else, and setting them up again failed: {e}; retrying in {COUNTERS_SECS} s"
                );
            }
        }
    }

    /// Leaves the rule check and the counters to a thread asking `checker` (a second
    /// handle on the same rules), so that the pipeline never waits for them. Called once
    /// privileges are dropped (the thread inherits the pipeline's).
    pub fn check_from_thread(&mut self, checker: Box<dyn Enforcer>) {
        match crate::upkeep::Upkeep::start(checker, std::time::Duration::from_secs(2)) {
            Ok(u) => self.upkeep = Some(u),
            Err(e) => tracing::warn!(
                "warning: cannot start the rule check thread ({e}); the pipeline checks the rules itself"
            ),
        }
    }

    /// Puts the next chunk of bans back into rules that were set up again. A ban lifted
    /// or ended meanwhile is skipped; a chunk the kernel refuses is tried again later.
    fn reinstate_chunk(&mut self, now: i64) {
        let from = self.reinstating.len().saturating_sub(REINSTATE_CHUNK);
        let chunk = self.reinstating.split_off(from);
        let bans: Vec<_> = chunk
            .iter()
            .rev()
            .filter_map(|&n| self.book.get(n))
            .map(|r| r.ban(now))
            .collect();
        let result = lock(&self.hands).enforcer.refill(&bans);
        if let Err(e) = result {
            self.failed(&e, bans.len(), "put back", now);
            self.reinstating.extend(chunk);
        }
    }

    /// Compares the kernel's listing with the running bans: a ban missing from two
    /// listings in a row (30 s or more apart, so that none still on its way to the kernel
    /// counts) was removed by hand (`nft delete element`, `bpftool map delete`), where
    /// the rules' own check only sees whole sets flushed; it is put back, said and
    /// counted in `synwatch_rules_reinstated_total`.
    fn reconcile(&mut self, listed: &[IpNet], now: i64) {
        if self.dry_run || !self.reinstating.is_empty() {
            self.suspects.clear();
            return;
        }
        let listed: std::collections::HashSet<IpNet> = listed.iter().copied().collect();
        // Bans ending within the next listing may leave the kernel first, by its timeout.
        let lasting = now.saturating_add(RECONCILE_MARGIN_SECS);
        let missing: std::collections::HashSet<IpNet> = self
            .book
            .active()
            .filter(|r| r.expires.is_none_or(|e| e > lasting) && !listed.contains(&r.net))
            .map(|r| r.net)
            .collect();
        let mut gone: Vec<IpNet> = missing.intersection(&self.suspects).copied().collect();
        self.suspects = missing;
        if gone.is_empty() {
            return;
        }
        gone.sort();
        let backend = self.backend;
        tracing::warn!(
            "{} ban{} missing from synwatch's {backend} sets (removed by someone else?): putting {} back",
            gone.len(),
            if gone.len() == 1 { " was" } else { "s were" },
            if gone.len() == 1 { "it" } else { "them" },
        );
        self.metrics
            .rules_reinstated
            .fetch_add(1, Ordering::Relaxed);
        for net in &gone {
            self.suspects.remove(net);
        }
        gone.reverse();
        self.reinstating = gone;
        self.reinstate_chunk(now);
    }

    /// Bans whose saving failed: saved again later, reported meanwhile.
    fn keep_unsaved(&mut self, nets: impl Iterator<Item = IpNet>, now: i64) {
        let before = self.not_saved.len();
        self.not_saved.extend(nets);
        if self.not_saved.len() > before {
            self.save_retry_at = now + RETRY_SECS;
        }
        self.note_unsaved();
    }

    fn note_unsaved(&self) {
        self.metrics.bans_unsaved.store(
            (self.not_saved.len() + self.not_deleted.len()) as u64,
            Ordering::Relaxed,
        );
    }

    /// The state directory removed (or its database replaced) while the agent runs: what
    /// it saves would be lost at the next start. A new database is opened in its place and
    /// every ban the book holds is saved into it (as bans whose saving failed are, so that
    /// a directory that cannot be made again yet is tried again, and `/healthz` says so).
    /// A database that could only be read at start is opened for writing the same way,
    /// once its file system takes writes again.
    fn check_state_file(&mut self, now: i64) {
        if self.dry_run {
            return;
        }
        let (was_read_only, reopened) = {
            let mut h = lock(&self.hands);
            let read_only = !h.store.writable();
            if !read_only && !h.store.detached() {
                return;
            }
            (read_only, h.store.reopen())
        };
        match reopened {
            Ok(()) => {
                if was_read_only {
                    tracing::info!(
                        "the ban database can be written again: saving the {} bans held",
                        self.book.len()
                    );
                } else {
                    tracing::error!(
                        "the ban database was removed or replaced while the agent ran: opened a new one and saving all {} bans into it",
                        self.book.len()
                    );
                }
                self.metrics
                    .state_unwritable
                    .store(false, Ordering::Relaxed);
                let held: Vec<IpNet> = self.book.active().map(|r| r.net).collect();
                self.keep_unsaved(held.into_iter(), now);
                self.save_retry_at = now;
            }
            // Said at start, and each failed save says it again.
            Err(e) if was_read_only => {
                tracing::debug!("the ban database still cannot be written: {e:#}");
            }
            Err(e) => tracing::error!(
                "the ban database was removed while the agent ran, and a new one cannot be opened: {e:#} (retried every {RETRY_SECS} s)"
            ),
        }
    }

    /// Removes the lifted bans whose removal failed, then saves the bans whose saving
    /// failed, as the book holds them now.
    fn save_again(&mut self, now: i64) {
        if !self.not_deleted.is_empty() {
            // A network banned again since is saved anew (or waits in `not_saved`).
            let (mut forgiven, mut kept) = (Vec::new(), Vec::new());
            for (&net, &forgive) in &self.not_deleted {
                if self.book.get(net).is_none() {
                    if forgive {
                        forgiven.push(net);
                    } else {
                        kept.push(net);
                    }
                }
            }
            let deleted = {
                let mut h = lock(&self.hands);
                h.store
                    .delete(&forgiven, true)
                    .and_then(|()| h.store.delete(&kept, false))
            };
            match deleted {
                Ok(()) => self.not_deleted.clear(),
                Err(e) => {
                    tracing::debug!("{e:#}; retrying in {RETRY_SECS} s");
                    self.save_retry_at = now + RETRY_SECS;
                    self.note_unsaved();
                    return;
                }
            }
        }
        let records: Vec<Record> = self
            .not_saved
            .iter()
            .filter_map(|&n| self.book.get(n).cloned())
            .collect();
        let saved = lock(&self.hands).store.save(&records);
        match saved {
            Ok(()) => {
                if !records.is_empty() {
                    tracing::info!(
                        "saved {} ban(s) that could not be saved before",
                        records.len()
                    );
                }
                self.not_saved.clear();
            }
            Err(e) => {
                tracing::debug!("{e:#}; retrying in {RETRY_SECS} s");
                self.save_retry_at = now + RETRY_SECS;
            }
        }
        self.note_unsaved();
    }

    /// Notes `records` going to the kernel at `now`: those longer than its sets hold
    /// are renewed there before their elements run out.
    fn note_kernel(&mut self, records: &[Record], now: i64) {
        if let Some(due) = renewal_due(self.kernel_max, records.iter(), now) {
            self.renew_at = Some(self.renew_at.map_or(due, |t| t.min(due)));
        }
    }

    /// Renews in the kernel every ban that may outlast its element there: each ban
    /// ending later than [`renew_margin`] from now (those given with a clamped timeout
    /// end no earlier than that), with its remaining time, clamped again.
    fn renew_long(&mut self, now: i64) {
        self.renew_at = None;
        let margin = renew_margin(self.kernel_max);
        let records: Vec<Record> = self
            .book
            .active()
            .filter(|r| r.expires.is_some_and(|e| e > now.saturating_add(margin)))
            .cloned()
            .collect();
        if records.is_empty() {
            return;
        }
        let bans: Vec<_> = records.iter().map(|r| r.ban(now)).collect();
        let result = lock(&self.hands).enforcer.add(&bans);
        match result {
            Ok(()) => {
                self.note_kernel(&records, now);
                tracing::info!(
                    "renewed {} ban(s) longer than {} keeps an element ({} s)",
                    bans.len(),
                    self.backend,
                    self.kernel_max
                );
            }
            Err(e) => {
                self.failed(&e, bans.len(), "renew", now);
                self.renew_at = Some(now + RETRY_SECS);
            }
        }
    }

    fn failed(&mut self, e: &EnforceError, count: usize, verb: &str, now: i64) {
        self.metrics.ban_failures.fetch_add(1, Ordering::Relaxed);
        self.retry_at = now + RETRY_SECS;
        tracing::error!(
            "cannot {verb} {count} ban{} with {}: {e}; retrying in {RETRY_SECS} s",
            if count == 1 { "" } else { "s" },
            self.backend
        );
    }

    /// The XDP program banned `net` by itself (an address, or the network of an IPv6
    /// source it counted per `--ipv6-prefix`). The detector, which saw the same packet,
    /// normally decided the same ban a moment earlier. The program has no cap of its own:
    /// if the cap made that scan wait, the kernel's ban is kept only when the cap would
    /// give it now (counted against it); otherwise it is lifted again at the next apply
    /// and the scan waits like any other. If the detector did not decide it at all (the
    /// source is protected, the two disagree), the kernel's ban is lifted too, without
    /// an event.
    pub fn confirm_kernel_ban(
        &mut self,
        net: impl Into<IpNet>,
        now: i64,
        session: bool,
    ) -> Confirmed {
        let addr = synwatch_enforce::ban_net(net.into());
        if self.book.covering(addr).is_some() {
            return Confirmed::Kept;
        }
        let waiting = self.book.is_waiting(addr);
        if let Some(record) = self.book.take_waiting(addr, now) {
            self.metrics.bans_delayed.fetch_add(1, Ordering::Relaxed);
            // With a session, the kernel's ban (all traffic) is rewritten as one on new
            // connections only by the next apply.
            self.decided(record, session);
            self.note_waiting();
            self.retry_at = self.retry_at.min(now);
            return Confirmed::Kept;
        }
        // The program keeps its track of the source: banning it again at its next port,
        // then lifted again, a spoofer could have it cut off any address it forges for
        // as long as it sends (the cap is there to stop that).
        if !self.refused.contains(&addr) {
            self.refused.push(addr);
        }
        self.retry_at = self.retry_at.min(now);
        if waiting {
            Confirmed::Waits
        } else {
            Confirmed::Lifted
        }
    }

    /// Lifts bans on addresses that became protected (an allowlist reloaded, an address
    /// added to this host), and on ranges that came to cover one.
    pub fn release_protected(
        &mut self,
        now: i64,
        protected: impl Fn(IpNet) -> bool,
    ) -> Vec<Happened> {
        // A fleet decision waiting for a ban to end is not given on it either.
        self.fleet.forget_protected(&protected);
        let addrs = self.book.release(protected);
        self.note_waiting();
        if addrs.is_empty() {
            return Vec::new();
        }
        self.lift(addrs, "allowlisted", now)
    }

    /// A request from `synwatch blocks`. Changes are applied at once, and what they did
    /// is reported like the agent's own. `protected` is [`crate::protect::why_net`]: why
    /// a network must not be banned, and the protected address or range it would cover.
    pub fn control(
        &mut self,
        request: &Request,
        now: i64,
        protected: impl Fn(IpNet) -> Option<(Why, IpNet)>,
    ) -> (Reply, Vec<Happened>) {
        let backend = self.backend.as_str();
        let mut happened = Vec::new();
        let mut reply = Reply::ok(backend);
        match request {
            Request::List => {
                let kernel = lock(&self.hands).enforcer.list().ok();
                let mut records: Vec<&Record> = self.book.active().collect();
                records.sort_by_key(|r| (r.since, r.net));
                reply.bans = records
                    .into_iter()
                    .map(|r| view(r, kernel.as_deref()))
                    .collect();
            }
            Request::Add { addr, secs } => {
                (reply, happened) = self.add_manual(*addr, *secs, now, &protected);
            }
            Request::Remove { addr } => match self.book.remove(*addr) {
                Some(record) => {
                    self.withdraw_from_fleet(std::slice::from_ref(&record));
                    happened = self.lift(vec![record.net], "removed", now);
                    reply.bans = vec![view(&record, None)];
                    // An address ban that stood beside a range around it (it outlived
                    // the range): the range still holds the address.
                    if let Some(range) = self.book.covering(record.net) {
                        reply.note = Some(format!(
                            "{} is still blocked by the banned range {} until that ends",
                            synwatch_enforce::net_text(record.net),
                            synwatch_enforce::net_text(range.net)
                        ));
                    }
                }
                None => {
                    let inside = self
                        .book
                        .covering(*addr)
                        .map(|r| {
                            format!(
                                " (it is inside the banned range {}: remove that, or let it end)",
                                synwatch_enforce::net_text(r.net)
                            )
                        })
                        .unwrap_or_default();
                    let addr = synwatch_enforce::net_text(*addr);
                    reply = Reply::error(backend, format!("{addr} is not blocked{inside}"));
                }
            },
            Request::Flush => {
                let records = self.book.flush();
                self.withdraw_from_fleet(&records);
                self.note_waiting();
                let addrs = records.iter().map(|r| r.net).collect();
                happened = self.lift(addrs, "flushed", now);
                reply.bans = records.iter().map(|r| view(r, None)).collect();
            }
        }
        self.record_held();
        (reply, happened)
    }

    /// `synwatch blocks add`: bans `addr` at once, for `secs` (the policy's length when
    /// `None`), unless it is protected or already inside a banned range.
    fn add_manual(
        &mut self,
        addr: IpNet,
        secs: Option<u64>,
        now: i64,
        protected: &impl Fn(IpNet) -> Option<(Why, IpNet)>,
    ) -> (Reply, Vec<Happened>) {
        let backend = self.backend.as_str();
        let mut happened = Vec::new();
        let mut reply = Reply::ok(backend);
        if let Some(why) = self.backend().refuses_ban_of(secs.unwrap_or(0)) {
            return (Reply::error(backend, why), happened);
        }
        let addr = synwatch_enforce::ban_net(addr);
        if let Some((why, covered)) = protected(addr) {
            let text = refusal(addr, why, covered);
            tracing::warn!("not blocking {text}");
            return (Reply::error(backend, text), happened);
        }
        let record = match self.book.manual(addr, secs, now) {
            Ok(r) => r,
            Err((_, by)) => {
                let by = synwatch_enforce::net_text(by.net);
                return (
                    Reply::error(
                        backend,
                        format!(
                            "{} is already blocked: it is inside the banned range {by}",
                            synwatch_enforce::net_text(addr)
                        ),
                    ),
                    happened,
                );
            }
        };
        // What this ban absorbs is reported with it, not again by the next apply (which
        // still reports what was absorbed before).
        let reported = self.reported.len();
        happened = self.absorb(now);
        self.reported.truncate(reported);
        self.unsaved.retain(|p| p.net != addr);
        let saved = lock(&self.hands).store.save(std::slice::from_ref(&record));
        if let Err(e) = saved {
            reply.note = Some(format!(
                "{e:#}; the ban holds until the agent stops unless saving it succeeds later (retried every {RETRY_SECS} s)"
            ));
            self.keep_unsaved(std::iter::once(record.net), now);
        }
        self.pending.retain(|p| p.net != addr);
        // This ban alone, at once: not behind a burst of scanners' bans.
        self.retry_at = now;
        self.remove_lifted(now);
        happened.extend(self.add_now(vec![record], now));
        if self.pending.iter().any(|p| p.net == addr) {
            reply.note = Some(format!(
                "saved, but the kernel refused it for now; retrying every {RETRY_SECS} s (see the agent's log)"
            ));
        }
        reply.bans = self
            .book
            .get(addr)
            .map(|r| view(r, None))
            .into_iter()
            .collect();
        (reply, happened)
    }

    /// Takes the bans on `nets` out of the state file (`forgive`: their offences too) and
    /// out of what waits to go into the kernel or the file, and queues them to be lifted
    /// from the kernel at the next push.
    fn unban(&mut self, nets: &[IpNet], forgive: bool, now: i64) {
        let deleted = lock(&self.hands).store.delete(nets, forgive);
        if let Err(e) = deleted {
            tracing::error!(
                "{e:#}; {} lifted ban(s) stay in the state file until removing them succeeds (retried every {RETRY_SECS} s)",
                nets.len()
            );
            if self.not_deleted.is_empty() && self.not_saved.is_empty() {
                self.save_retry_at = now + RETRY_SECS;
            }
            for &net in nets {
                *self.not_deleted.entry(net).or_default() |= forgive;
            }
            self.note_unsaved();
        }
        // A set: thousands may end at once (expiry, the LAPI deleting decisions).
        let gone: std::collections::HashSet<IpNet> = nets.iter().copied().collect();
        self.pending.retain(|p| !gone.contains(&p.net));
        self.unsaved.retain(|p| !gone.contains(&p.net));
        if !self.not_saved.is_empty() {
            self.not_saved.retain(|n| !gone.contains(n));
            self.note_unsaved();
        }
        self.lifting.extend(nets);
        self.retry_at = self.retry_at.min(now);
    }

    fn lift(&mut self, addrs: Vec<IpNet>, why: &'static str, now: i64) -> Vec<Happened> {
        self.unban(&addrs, true, now);
        let mut happened = self.push_to_kernel(now);
        self.metrics
            .unblocks
            .fetch_add(addrs.len() as u64, Ordering::Relaxed);
        happened.extend(addrs.into_iter().map(|a| Happened::Unblocked(a, why)));
        happened
    }

    /// Stops blocking: removes synwatch's rules (the saved bans come back at the next
    /// start) unless told to keep them.
    pub fn stop(mut self) {
        if self.dry_run {
            return;
        }
        // The rule check must not set the rules up again behind the teardown.
        if let Some(u) = self.upkeep.take() {
            u.finish();
        }
        // Nothing is in flight after [`Blocker::apply_all`]; the thread ends here.
        if let Some(w) = self.writer.take() {
            drop(w.finish());
        }
        if self.keep_rules {
            // Whatever did not reach the kernel yet still should, since the rules stay.
            let now = crate::clock::now();
            self.retry_at = now;
            self.push_to_kernel(now);
            tracing::info!(
                "leaving {} bans in the kernel (--keep-rules-on-exit)",
                self.book.len()
            );
            return;
        }
        let torn = lock(&self.hands).enforcer.teardown();
        if let Err(e) = torn {
            tracing::error!("cannot remove synwatch's firewall rules: {e}");
        }
    }
}

/// Takes `nets` out of the state file at start; a file that cannot be written (a full
/// disk) keeps them, to be let go at the next start, and never stops blocking.
fn forget(store: &mut Store, nets: &[IpNet], forgive: bool) {
    // A database that could only be read keeps them: the next start leaves them out
    // again, as this one did.
    if !store.writable() || nets.is_empty() {
        return;
    }
    if let Err(e) = store.delete(nets, forgive) {
        tracing::error!("{e:#}");
    }
}

/// How long before a clamped element runs out its ban is renewed: a day, or half the
/// longest timeout of a kernel that takes less than two.
fn renew_margin(kernel_max: u64) -> i64 {
    i64::try_from((kernel_max / 2).min(86_400)).unwrap_or(86_400)
}

/// When bans going to the kernel at `now` need renewing there: some time before the
/// element of the first of them longer than `kernel_max` runs out; `None` if none is.
fn renewal_due<'a>(
    kernel_max: u64,
    records: impl Iterator<Item = &'a Record>,
    now: i64,
) -> Option<i64> {
    let max = i64::try_from(kernel_max).unwrap_or(i64::MAX);
    let clamped = records
        .into_iter()
        .any(|r| r.expires.is_some_and(|e| e.saturating_sub(now) > max));
    clamped.then(|| {
        now.saturating_add(max)
            .saturating_sub(renew_margin(kernel_max))
    })
}

/// Sets the backend up holding `bans`. If the kernel refuses them (a saved ban it
/// cannot take), it is set up empty and they are put back in chunks, halving any chunk
/// it refuses down to the bans it refuses alone: those are left out and returned, the
/// others hold. Fails only if it cannot be set up at all.
fn set_up_with(
    enforcer: &mut dyn Enforcer,
    bans: &[synwatch_enforce::Ban],
) -> Result<Vec<IpNet>, EnforceError> {
    let first = match enforcer.setup(bans) {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if bans.is_empty() => return Err(e),
        Err(e) => e,
    };
    enforcer.setup(&[])?;
    tracing::error!(
        "the kernel refused the {} saved ban(s) together ({first}); putting them back a few at a time",
        bans.len()
    );
    let mut refused = Vec::new();
    // Kernel calls left for halving: past them, what is refused stays out whole.
    let mut budget = 2_000_usize;
    for chunk in bans.chunks(REINSTATE_CHUNK) {
        put_back(enforcer, chunk, &mut refused, &mut budget);
    }
    for net in refused.iter().take(REFUSALS_LOGGED_PER_MINUTE as usize) {
        tracing::error!(
            "WARNING: the kernel refused the saved ban of {}: it is not restored",
            synwatch_enforce::net_text(*net)
        );
    }
    Ok(refused)
}

/// Puts `bans` into rules just set up; a refused group is halved until the refused
/// bans are found (added to `refused`).
fn put_back(
    enforcer: &mut dyn Enforcer,
    bans: &[synwatch_enforce::Ban],
    refused: &mut Vec<IpNet>,
    budget: &mut usize,
) {
    if bans.is_empty() {
        return;
    }
    if *budget == 0 {
        refused.extend(bans.iter().map(|b| b.net));
        return;
    }
    *budget -= 1;
    if enforcer.refill(bans).is_ok() {
        return;
    }
    if let [one] = bans {
        refused.push(one.net);
        return;
    }
    let (a, b) = bans.split_at(bans.len() / 2);
    put_back(enforcer, a, refused, budget);
    put_back(enforcer, b, refused, budget);
}

/// Every running ban with its remaining time, in address order: what a set-up puts in
/// the kernel.
fn running_bans(book: &Book, now: i64) -> Vec<synwatch_enforce::Ban> {
    let mut bans: Vec<_> = book.active().map(|r| r.ban(now)).collect();
    bans.sort_by_key(|b| b.net);
    bans
}

/// Why `net` is not banned, for the log and the reply: what it is, or for a range the
/// protected address or range inside it.
pub fn refusal(net: IpNet, why: Why, covered: IpNet) -> String {
    let text = synwatch_enforce::net_text(net);
    if synwatch_enforce::is_host(net) {
        format!(
            "{text}: it is {} ({}): synwatch never blocks it",
            why.describe(),
            why.as_str()
        )
    } else {
        format!(
            "{text}: the range covers {}, which is {} ({}): synwatch never blocks it; ban a narrower range or the addresses",
            synwatch_enforce::net_text(covered),
            why.describe(),
            why.as_str()
        )
    }
}

/// A saved ban with what the kernel says about it.
pub fn view(r: &Record, kernel: Option<&[KernelBan]>) -> BanView {
    let k = kernel.and_then(|k| k.iter().find(|b| b.net == r.net));
    BanView {
        addr: r.net,
        reason: r.reason.clone(),
        origin: fleet::origin(&r.reason),
        since: r.since,
        expires: r.expires,
        offences: r.offences,
        in_kernel: kernel.map(|_| k.is_some()),
        packets: k.and_then(|k| k.packets),
        bytes: k.and_then(|k| k.bytes),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use synwatch_enforce::{RecordingRunner, open};

    fn settings(dir: &std::path::Path) -> BlockSettings {
        BlockSettings {
            scope: Scope::All,
            policy: Policy {
                duration_secs: 60,
                max_secs: 3600,
                per_minute: 2,
            },
            state_dir: dir.to_path_buf(),
            keep_rules: false,
            dry_run: false,
        }
    }

    fn start(
        dir: &std::path::Path,
        runner: &RecordingRunner,
        now: i64,
    ) -> (Blocker, Vec<Happened>) {
        let enforcer = open(Backend::Nftables, Scope::All, Box::new(runner.clone()))
            .expect("nftables opens without a program");
        Blocker::start(
            enforcer,
            &settings(dir),
            Arc::new(Metrics::default()),
            now,
            |a| a == n("192.0.2.200"),
        )
        .unwrap()
    }

    /// A blocker at time 0 over `enforcer`, nothing protected.
    fn with_enforcer(dir: &std::path::Path, enforcer: Box<dyn Enforcer>) -> Blocker {
        Blocker::start(
            enforcer,
            &settings(dir),
            Arc::new(Metrics::default()),
            0,
            |_| false,
        )
        .unwrap()
        .0
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_manual_ban_longer_than_the_backend_keeps_is_refused_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let enforcer = open(Backend::Iptables, Scope::All, Box::new(runner.clone()))
            .expect("iptables opens without a program");
        let mut b = with_enforcer(dir.path(), enforcer);
        let add = |secs| Request::Add {
            addr: n("198.51.100.7"),
            secs: Some(secs),
        };
        // ipset keeps timeouts up to 2,147,483 s: thirty days would fail every later batch.
        let (reply, happened) = b.control(&add(30 * 86_400), 10, |_| None);
        assert!(!reply.ok, "{reply:?}");
        assert!(
            reply
                .error
                .as_deref()
                .is_some_and(|e| e.contains("2147483 s")),
            "{reply:?}"
        );
        assert!(happened.is_empty());
        assert_eq!(b.active(), 0);
        // Twenty days, and until removed, are taken.
        assert!(b.control(&add(20 * 86_400), 10, |_| None).0.ok);
        assert!(b.control(&add(0), 10, |_| None).0.ok);
    }

    #[test]
    fn a_ban_removed_from_the_kernel_by_hand_is_put_back_after_two_listings() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let enforcer = open(Backend::Nftables, Scope::All, Box::new(runner.clone())).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (mut b, _) = Blocker::start(
            enforcer,
            &settings(dir.path()),
            Arc::clone(&metrics),
            0,
            |_| false,
        )
        .unwrap();
        // Until removed.
        let add = |addr: &str| Request::Add {
            addr: n(addr),
            secs: Some(0),
        };
        assert!(b.control(&add("198.51.100.7"), 10, |_| None).0.ok);
        assert!(b.control(&add("198.51.100.8"), 10, |_| None).0.ok);
        b.apply(11);
        let both = [n("198.51.100.7"), n("198.51.100.8")];
        let put_back = |runner: &RecordingRunner| {
            runner
                .transcript()
                .iter()
                .filter(|c| c.contains("add element") && c.contains("198.51.100.7"))
                .count()
        };
        let before = put_back(&runner);
        // Listed whole: nothing to do.
        b.reconcile(&both, 20);
        // Missing once: it may still be on its way to the kernel.
        b.reconcile(&both[1..], 50);
        assert_eq!(put_back(&runner), before);
        assert_eq!(metrics.rules_reinstated.load(Ordering::Relaxed), 0);
        // Missing twice in a row: removed by hand, put back.
        b.reconcile(&both[1..], 80);
        assert_eq!(put_back(&runner), before + 1, "{:#?}", runner.transcript());
        assert_eq!(metrics.rules_reinstated.load(Ordering::Relaxed), 1);
        // Back in the kernel's listing: nothing more.
        b.reconcile(&both, 110);
        b.reconcile(&both, 140);
        assert_eq!(put_back(&runner), before + 1);
        // A ban ending soon is left to the kernel's own timeout.
        assert!(
            b.control(
                &Request::Add {
                    addr: n("198.51.100.9"),
                    secs: Some(60)
                },
                150,
                |_| None
            )
            .0
            .ok
        );
        b.apply(151);
        b.reconcile(&both, 160);
        b.reconcile(&both, 190);
        assert_eq!(metrics.rules_reinstated.load(Ordering::Relaxed), 1);
    }

    fn n(s: &str) -> IpNet {
        synwatch_enforce::parse_net(s).unwrap()
    }

    /// Saves `records` in the state directory `dir`, as an earlier run would have.
    fn saved(dir: &std::path::Path, records: &[Record]) {
        crate::state::Store::open(dir)
            .unwrap()
            .save(records)
            .unwrap();
    }

    fn manual(net: &str, since: i64, expires: Option<i64>) -> Record {
        Record {
            net: n(net),
            since,
            expires,
            reason: "manual".into(),
            offences: 1,
            new_only: false,
        }
    }

    #[test]
    fn a_ban_longer_than_nft_takes_is_restored_clamped_and_renewed_before_it_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400;
        saved(
            dir.path(),
            &[manual("192.0.2.1", 1000, Some(1000 + 1200 * day))],
        );
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 1000);
        let setup = &runner.transcript()[0];
        // nft 1.0.6 refuses "timeout 103680000s" (value too large).
        assert!(
            setup.contains("banned4 { 192.0.2.1 timeout 99999999s }"),
            "{setup}"
        );
        assert_eq!(b.active(), 1);
        // Not renewed while its element has long to run...
        let before = runner.transcript().len();
        b.apply(1000 + 1000 * day);
        let renewals = |t: &[String]| {
            t.iter()
                .filter(|c| c.contains("delete element inet synwatch banned4 { 192.0.2.1 }"))
                .count()
        };
        assert_eq!(renewals(&runner.transcript()[before..]), 0);
        // ...but a day before it runs out, with the time left (clamped again).
        let due = 1000 + 99_999_999 - day;
        b.apply(due);
        let t = runner.transcript();
        assert_eq!(renewals(&t[before..]), 1, "{t:#?}");
        let left = 1200 * day - (due - 1000);
        assert!(
            t.iter()
                .any(|c| c.contains(&format!("banned4 {{ 192.0.2.1 timeout {left}s }}"))),
            "{t:#?}"
        );
        // Renewed once, not at every turn.
        b.apply(due + 10);
        assert_eq!(renewals(&runner.transcript()[before..]), 1);
    }

    #[test]
    fn a_saved_ban_the_kernel_refuses_is_left_out_and_the_others_restored() {
        let dir = tempfile::tempdir().unwrap();
        saved(
            dir.path(),
            &[
                manual("192.0.2.1", 1000, Some(5000)),
                manual("192.0.2.2", 1000, Some(5000)),
            ],
        );
        let runner = RecordingRunner::default();
        // The set-up with both, then (empty) set-up, both put back, the first, the second.
        for answer in [
            Err("Error: value too large"),
            Ok(""),
            Err("Error: value too large"),
            Ok(""),
            Err("Error: value too large"),
        ] {
            runner.answer(answer);
        }
        let metrics = Arc::new(Metrics::default());
        let enforcer = open(Backend::Nftables, Scope::All, Box::new(runner.clone())).unwrap();
        let (b, _) = Blocker::start(
            enforcer,
            &settings(dir.path()),
            Arc::clone(&metrics),
            1000,
            |_| false,
        )
        .expect("a ban the kernel refuses never stops the restore");
        assert_eq!(b.active(), 1);
        let t = runner.transcript();
        assert_eq!(t.len(), 5, "{t:#?}");
        assert!(
            t[3].contains("banned4 { 192.0.2.1 timeout 4000s }"),
            "{}",
            t[3]
        );
        assert!(
            t[4].contains("banned4 { 192.0.2.2 timeout 4000s }"),
            "{}",
            t[4]
        );
        assert_eq!(metrics.state_bans_refused.load(Ordering::Relaxed), 1);
        assert!(
            metrics
                .healthy_body()
                .contains("the kernel refused 1 saved ban(s) at restore"),
            "{}",
            metrics.healthy_body()
        );
    }

    #[test]
    fn a_saved_range_covering_a_protected_address_is_refused_before_it_absorbs_the_bans_inside() {
        let dir = tempfile::tempdir().unwrap();
        saved(
            dir.path(),
            &[
                manual("192.0.2.2", 1000, Some(5000)),
                // Covers 192.0.2.200, protected in `start`.
                manual("192.0.2.0/24", 1000, Some(5000)),
                manual("0.0.0.0/0", 1000, None),
                // A range that covers nothing protected still stands for the bans inside.
                manual("198.51.100.0/24", 1000, Some(5000)),
                manual("198.51.100.7", 1000, Some(5000)),
            ],
        );
        let runner = RecordingRunner::default();
        let enforcer = open(Backend::Nftables, Scope::All, Box::new(runner.clone())).unwrap();
        // As `protect::why_net` answers: a network covering a protected address.
        let (b, lapsed) = Blocker::start(
            enforcer,
            &settings(dir.path()),
            Arc::new(Metrics::default()),
            1000,
            |net| net.contains(&ip("192.0.2.200")),
        )
        .unwrap();
        let mut nets: Vec<IpNet> = b.book.active().map(|r| r.net).collect();
        nets.sort();
        assert_eq!(nets, [n("192.0.2.2"), n("198.51.100.0/24")]);
        let setup = &runner.transcript()[0];
        assert!(
            setup.contains("banned4 { 192.0.2.2 timeout 4000s }"),
            "{setup}"
        );
        let mut lapsed = lapsed;
        lapsed.sort_by_key(|h| format!("{h:?}"));
        assert_eq!(
            lapsed,
            [
                Happened::Unblocked(n("0.0.0.0/0"), "allowlisted"),
                Happened::Unblocked(n("192.0.2.0/24"), "allowlisted"),
                Happened::Unblocked(n("198.51.100.7"), "covered"),
            ]
        );
        // The ban inside the refused range is still saved; the refused range is not.
        drop(b);
        assert_eq!(
            saved_nets(dir.path()),
            [n("192.0.2.2"), n("198.51.100.0/24")]
        );
    }

    /// Runs `statements` on the state file in `dir` behind the blocker's back.
    fn sql(dir: &std::path::Path, statements: &str) {
        rusqlite::Connection::open(dir.join(crate::state::DB_FILE))
            .unwrap()
            .execute_batch(statements)
            .unwrap();
    }

    /// The bans saved in the state file in `dir`, in order.
    fn saved_nets(dir: &std::path::Path) -> Vec<IpNet> {
        let mut store = crate::state::Store::open(dir).unwrap();
        let mut nets: Vec<IpNet> = store.bans().unwrap().iter().map(|r| r.net).collect();
        nets.sort();
        nets
    }

    #[test]
    fn bans_added_or_decided_while_the_disk_is_full_are_saved_once_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 1000);
        sql(
            dir.path(),
            "CREATE TRIGGER full BEFORE INSERT ON bans BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        );
        let add = Request::Add {
            addr: n("198.51.100.7"),
            secs: Some(600),
        };
        let (reply, _) = b.control(&add, 1000, |_| None);
        assert!(reply.ok, "{reply:?}");
        assert!(
            reply.note.as_deref().is_some_and(|n| n.contains("retried")),
            "{reply:?}"
        );
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            1000,
            None,
            false,
        );
        assert_eq!(b.apply(1000).len(), 1);
        assert_eq!(b.metrics.bans_unsaved.load(Ordering::Relaxed), 2);
        assert!(b.metrics.healthy_body().starts_with("degraded\n"));
        sql(dir.path(), "DROP TRIGGER full;");
        b.apply(1005);
        assert_eq!(b.metrics.bans_unsaved.load(Ordering::Relaxed), 0);
        assert_eq!(b.metrics.healthy_body(), "ok\n");
        assert_eq!(saved_nets(dir.path()), [n("192.0.2.1"), n("198.51.100.7")]);
    }

    #[test]
    fn a_ban_lifted_while_the_disk_is_full_is_removed_from_the_file_once_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 1000);
        for a in ["198.51.100.7", "198.51.100.8"] {
            let add = Request::Add {
                addr: n(a),
                secs: Some(600),
            };
            assert!(b.control(&add, 1000, |_| None).0.ok);
        }
        sql(
            dir.path(),
            "CREATE TRIGGER full BEFORE DELETE ON bans BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        );
        let remove = Request::Remove {
            addr: n("198.51.100.7"),
        };
        let (reply, happened) = b.control(&remove, 1001, |_| None);
        assert!(reply.ok, "{reply:?}");
        assert_eq!(
            happened,
            [Happened::Unblocked(n("198.51.100.7"), "removed")]
        );
        b.apply(1001);
        assert_eq!(b.metrics.bans_unsaved.load(Ordering::Relaxed), 1);
        assert!(b.metrics.healthy_body().starts_with("degraded\n"));
        sql(dir.path(), "DROP TRIGGER full;");
        b.apply(1006);
        assert_eq!(b.metrics.bans_unsaved.load(Ordering::Relaxed), 0);
        assert_eq!(b.metrics.healthy_body(), "ok\n");
        // A restart does not bring it back.
        drop(b);
        let (b, _) = start(dir.path(), &RecordingRunner::default(), 1010);
        let nets: Vec<IpNet> = b.book.active().map(|r| r.net).collect();
        assert_eq!(nets, [n("198.51.100.8")]);
    }

    #[test]
    fn scans_in_one_batch_are_one_kernel_change_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, lapsed) = start(dir.path(), &runner, 1000);
        assert!(lapsed.is_empty());
        // Two networks: with a cap of 2, one /24 gets one a minute.
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[21, 22, 23, 25],
            1000,
            None,
            false,
        );
        b.scan(
            ip("198.51.100.2"),
            n("198.51.100.2"),
            &[21, 22, 23, 25],
            1000,
            None,
            false,
        );
        b.scan(
            ip("203.0.113.3"),
            n("203.0.113.3"),
            &[21, 22, 23, 25],
            1000,
            None,
            false,
        ); // over the cap of 2
        b.scan(
            ip("10.0.0.1"),
            n("10.0.0.1"),
            &[21, 22, 23, 25],
            1000,
            Some(Why::Local),
            false,
        ); // protected
        let happened = b.apply(1000);
        assert_eq!(happened.len(), 2);
        assert_eq!(b.metrics.bans_refused_rate.load(Ordering::Relaxed), 1);
        assert_eq!(
            b.metrics.bans_refused_allowlisted.load(Ordering::Relaxed),
            1
        );
        let t = runner.transcript();
        // Setup, one batch, one counter read of two chains.
        let adds: Vec<_> = t.iter().filter(|c| c.contains("timeout 60s")).collect();
        assert_eq!(adds.len(), 1, "{t:#?}");
        assert!(adds[0].contains("{ 192.0.2.1 timeout 60s, 198.51.100.2 timeout 60s }"));

        // Restarted 30 s later (as after kill -9): the bans return with 30 s left.
        drop(b);
        let runner = RecordingRunner::default();
        let (_b, lapsed) = start(dir.path(), &runner, 1030);
        assert!(lapsed.is_empty());
        let setup = &runner.transcript()[0];
        assert!(
            setup.contains(
                "add element inet synwatch banned4 { 192.0.2.1 timeout 30s, 198.51.100.2 timeout 30s }"
            ),
            "{setup}"
        );
        // Restarted after they ended: reported as lifted, nothing restored.
        let runner = RecordingRunner::default();
        let (b, lapsed) = start(dir.path(), &runner, 2000);
        assert_eq!(lapsed.len(), 2);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn a_dry_run_decides_and_reports_bans_but_applies_and_keeps_none_for_a_real_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut dry = settings(dir.path());
        dry.dry_run = true;
        let enforcer = Box::new(synwatch_enforce::DryRun {
            backend: Backend::Nftables,
        });
        let (mut b, _) =
            Blocker::start(enforcer, &dry, Arc::new(Metrics::default()), 0, |_| false).unwrap();
        assert!(b.dry_run());
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        );
        b.scan(
            ip("192.0.2.254"),
            n("192.0.2.254"),
            &[1, 2, 3, 4],
            0,
            Some(Why::Infra(crate::host::Role::Gateway)),
            false,
        );
        let happened = b.apply(0);
        assert!(matches!(&happened[..], [Happened::Blocked(r)] if r.net == n("192.0.2.1")));
        assert_eq!(b.metrics.blocks.load(Ordering::Relaxed), 1);
        assert_eq!(
            b.metrics.bans_refused_allowlisted.load(Ordering::Relaxed),
            1
        );
        assert_eq!(b.active(), 1);
        // Expiry is reported as in a real run.
        assert_eq!(
            b.apply(60),
            vec![Happened::Unblocked(n("192.0.2.1"), "expired")]
        );
        b.scan(
            ip("192.0.2.2"),
            n("192.0.2.2"),
            &[1, 2, 3, 4],
            61,
            None,
            false,
        );
        assert_eq!(b.apply(61).len(), 1);
        b.stop();
        assert!(
            dir.path()
                .join(DRY_RUN_DIR)
                .join(crate::state::DB_FILE)
                .exists()
        );
        // A real run on the same state directory restores nothing of it.
        let runner = RecordingRunner::default();
        let (b, lapsed) = start(dir.path(), &runner, 62);
        assert!(lapsed.is_empty());
        assert_eq!(b.active(), 0);
        assert!(!runner.transcript()[0].contains("192.0.2.2"));
    }

    #[test]
    fn a_scan_the_cap_refused_waits_and_is_banned_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        b.scan(ip("10.1.0.1"), n("10.1.0.1"), &[1, 2, 3, 4], 0, None, false);
        b.scan(ip("10.2.0.1"), n("10.2.0.1"), &[1, 2, 3, 4], 0, None, false);
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        ); // over the cap of 2: waits
        assert_eq!(b.apply(0).len(), 2);
        assert!(b.has_waiting());
        assert_eq!(b.metrics.bans_waiting.load(Ordering::Relaxed), 1);
        assert_eq!(b.metrics.bans_refused_rate.load(Ordering::Relaxed), 1);
        // Still scanning; at 60 the first bans leave the cap's minute.
        b.activity(ip("192.0.2.1"), 80, 40);
        b.promote(59, 60, |_| false, |_| false);
        assert!(b.apply(59).is_empty());
        b.promote(60, 60, |_| false, |_| false);
        let happened = b.apply(60);
        // (The first two bans, of 60 s, end at the same moment.)
        assert!(
            happened
                .iter()
                .any(|h| matches!(h, Happened::Blocked(r) if r.net == n("192.0.2.1"))),
            "{happened:?}"
        );
        assert_eq!(b.metrics.bans_waiting.load(Ordering::Relaxed), 0);
        assert_eq!(b.metrics.bans_delayed.load(Ordering::Relaxed), 1);
    }

    /// Two scans banned at time 0, which spend the cap (two a minute), and a third,
    /// 192.0.2.1, waiting for it.
    fn two_banned_and_one_waiting(b: &mut Blocker) {
        for src in ["10.1.0.1", "10.2.0.1", "192.0.2.1"] {
            b.scan(ip(src), n(src), &[1, 2, 3, 4], 0, None, false);
        }
        b.apply(0);
    }

    /// The red team's F3: the XDP program bans by itself, with no cap; a ban of a
    /// scan the cap made wait is lifted again and the scan waits like any other.
    #[test]
    fn a_kernel_ban_on_a_scanner_waiting_for_the_cap_is_lifted_and_given_as_the_cap_allows() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        two_banned_and_one_waiting(&mut b);
        let before = runner.transcript().len();
        // The XDP program banned it by itself: over the cap, so lifted; it waits.
        assert_eq!(
            b.confirm_kernel_ban(ip("192.0.2.1"), 1, false),
            Confirmed::Waits
        );
        assert!(b.apply(1).is_empty());
        let t = &runner.transcript()[before..];
        assert!(
            t.iter()
                .any(|c| c.contains("delete element") && c.contains("192.0.2.1")),
            "{t:#?}"
        );
        assert!(b.has_waiting());
        assert_eq!(b.active(), 2);
        // Once the cap has room, a kernel ban of it is kept (and reported).
        b.activity(ip("192.0.2.1"), 80, 40);
        assert_eq!(
            b.confirm_kernel_ban(ip("192.0.2.1"), 60, false),
            Confirmed::Kept
        );
        let happened = b.apply(60);
        assert!(
            happened
                .iter()
                .any(|h| matches!(h, Happened::Blocked(r) if r.net == n("192.0.2.1"))),
            "{happened:?}"
        );
        assert!(!b.has_waiting());
        // A source the detector never decided on is lifted, as before.
        assert_eq!(
            b.confirm_kernel_ban(ip("198.51.100.7"), 61, false),
            Confirmed::Lifted
        );
    }

    /// nftables through the recording runner, noting which networks were lifted as
    /// refused kernel bans ([`Enforcer::remove_refused`]).
    struct NotingRefused {
        inner: Box<dyn Enforcer>,
        refused: Arc<Mutex<Vec<IpNet>>>,
    }

    impl Enforcer for NotingRefused {
        fn backend(&self) -> Backend {
            self.inner.backend()
        }
        fn setup(&mut self, bans: &[synwatch_enforce::Ban]) -> Result<(), EnforceError> {
            self.inner.setup(bans)
        }
        fn add(&mut self, bans: &[synwatch_enforce::Ban]) -> Result<(), EnforceError> {
            self.inner.add(bans)
        }
        fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
            self.inner.remove(nets)
        }
        fn remove_refused(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
            self.refused.lock().unwrap().extend_from_slice(nets);
            self.inner.remove(nets)
        }
        fn list(&mut self) -> Result<Vec<synwatch_enforce::KernelBan>, EnforceError> {
            self.inner.list()
        }
        fn counters(&mut self) -> Result<synwatch_enforce::DropCounters, EnforceError> {
            self.inner.counters()
        }
        fn present(&mut self) -> bool {
            self.inner.present()
        }
        fn teardown(&mut self) -> Result<(), EnforceError> {
            self.inner.teardown()
        }
    }

    /// Regression (a black-box test): a kernel ban lifted because the cap refused it
    /// (or the detector did not decide it) went out as an ordinary removal, which also
    /// made the XDP program forget its track of the source, so it banned the source again
    /// at its next ports: a spoofer cut off the addresses it forged for most of the time,
    /// past the cap. Such a lift is a removal of a refused ban, which keeps the track; an
    /// expiry is an ordinary removal.
    #[test]
    fn a_kernel_ban_the_cap_refuses_is_lifted_as_refused_and_an_expired_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let inner = open(Backend::Nftables, Scope::All, Box::new(runner.clone()))
            .expect("nftables opens without a program");
        let enforcer = Box::new(NotingRefused {
            inner,
            refused: Arc::clone(&refused),
        });
        let mut b = with_enforcer(dir.path(), enforcer);
        two_banned_and_one_waiting(&mut b);
        assert_eq!(
            b.confirm_kernel_ban(ip("192.0.2.1"), 1, false),
            Confirmed::Waits
        );
        assert_eq!(
            b.confirm_kernel_ban(ip("198.51.100.7"), 1, false),
            Confirmed::Lifted
        );
        b.apply(1);
        assert_eq!(
            *refused.lock().unwrap(),
            vec![n("192.0.2.1"), n("198.51.100.7")]
        );
        // The first two bans expire: ordinary removals.
        b.apply(3600);
        assert_eq!(refused.lock().unwrap().len(), 2);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn a_source_holding_a_session_is_banned_for_new_connections_only_and_stays_so() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            0,
            None,
            true,
        );
        let happened = b.apply(0);
        assert!(
            matches!(&happened[..], [Happened::Blocked(r)] if r.new_only),
            "{happened:?}"
        );
        let t = runner.transcript();
        assert!(
            t.iter()
                .any(|c| c
                    .contains("add element inet synwatch banned4_new { 192.0.2.1 timeout 60s }")),
            "{t:#?}"
        );
        // Restarted: restored as it was.
        drop(b);
        let runner = RecordingRunner::default();
        let (_b, _) = start(dir.path(), &runner, 10);
        assert!(
            runner.transcript()[0]
                .contains("add element inet synwatch banned4_new { 192.0.2.1 timeout 50s }"),
            "{:#?}",
            runner.transcript()
        );
    }

    /// The red team's F1, for a range banned after waiting for the cap: an address of
    /// it (not the scanner's) holds a session, so the range drops only new connections.
    #[test]
    fn a_waiting_range_holding_a_session_is_banned_for_new_connections_only() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        b.scan(ip("10.1.0.1"), n("10.1.0.1"), &[1, 2, 3, 4], 0, None, false);
        b.scan(ip("10.2.0.1"), n("10.2.0.1"), &[1, 2, 3, 4], 0, None, false);
        b.scan(
            ip("fd72::99"),
            n("fd72::/64"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        ); // waits
        b.apply(0);
        b.activity(ip("fd72::99"), 80, 40);
        let mut asked = Vec::new();
        b.promote(
            60,
            60,
            |_| false,
            |net| {
                asked.push(net);
                net.contains(&ip("fd72::5"))
            },
        );
        assert_eq!(asked, [n("fd72::/64")]);
        let happened = b.apply(60);
        assert!(
            happened.iter().any(
                |h| matches!(h, Happened::Blocked(r) if r.net == n("fd72::/64") && r.new_only)
            ),
            "{happened:?}"
        );
    }

    #[test]
    fn a_refused_change_is_retried_until_it_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        runner.answer(Err(
            "Error: Could not process rule: Device or resource busy",
        ));
        b.scan(
            ip("2001:db8::5"),
            n("2001:db8::5"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        );
        assert!(b.apply(0).is_empty());
        assert_eq!(b.metrics.ban_failures.load(Ordering::Relaxed), 1);
        assert!(b.apply(4).is_empty(), "not before the retry time");
        let happened = b.apply(5);
        assert!(matches!(&happened[..], [Happened::Blocked(r)] if r.net == n("2001:db8::5")));
    }

    /// Regression: a removal that failed was retried after its network had been banned
    /// again (the new ban went in meanwhile), and took the new ban out of the kernel
    /// while the book and the saved bans held it.
    #[test]
    fn a_lift_retried_after_the_network_was_banned_again_leaves_the_new_ban() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        let x = "203.0.113.9";
        b.scan(ip(x), n(x), &[1, 2, 3, 4], 0, None, false);
        assert!(matches!(&b.apply(0)[..], [Happened::Blocked(_)]));
        // The ban expires; removing it from the kernel fails (nft busy).
        runner.answer(Err(
            "Error: Could not process rule: Device or resource busy",
        ));
        let expired = b.apply(60);
        assert!(
            matches!(&expired[..], [Happened::Unblocked(_, "expired")]),
            "{expired:?}"
        );
        // The source scans again and is banned again; at the retry the kernel refuses
        // once more (the old code's removal, which let the new ban in after it).
        b.scan(ip(x), n(x), &[5, 6, 7, 8], 61, None, false);
        b.apply(61);
        runner.answer(Err(
            "Error: Could not process rule: Device or resource busy",
        ));
        let mut happened = b.apply(65);
        // Later turns retry what failed.
        happened.extend(b.apply(70));
        happened.extend(b.apply(80));
        assert!(
            happened.iter().any(|h| matches!(h, Happened::Blocked(_))),
            "{happened:?}"
        );
        assert!(b.book.get(n(x)).is_some());
        let sent = runner.transcript();
        let last = sent
            .iter()
            .rev()
            .find(|l| l.contains(x))
            .expect("changes naming the address");
        // An addition gives the ban its time; a removal has none.
        assert!(
            last.contains("timeout"),
            "the kernel's last change on {x} took the new ban out: {last}"
        );
    }

    #[test]
    fn rules_flushed_by_someone_else_are_set_up_again_with_the_running_bans() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        );
        assert_eq!(b.apply(0).len(), 1);
        let before = runner.transcript().len();
        // At the next check the table is gone (nft answers with an error).
        runner.answer(Err("Error: No such file or directory"));
        assert!(b.apply(5).is_empty());
        let t = runner.transcript();
        let setup = t[before..]
            .iter()
            .find(|c| c.contains("add table inet synwatch"))
            .unwrap_or_else(|| panic!("no setup after the failed read: {t:#?}"));
        assert!(
            setup.contains("add element inet synwatch banned4 { 192.0.2.1 timeout 55s }"),
            "{setup}"
        );
        assert_eq!(b.metrics.rules_reinstated.load(Ordering::Relaxed), 1);
        assert_eq!(b.metrics.ban_failures.load(Ordering::Relaxed), 0);
        // A read that works sets nothing up.
        let before = runner.transcript().len();
        b.apply(10);
        assert!(
            !runner.transcript()[before..]
                .iter()
                .any(|c| c.contains("add table")),
            "{:#?}",
            runner.transcript()
        );
    }

    #[test]
    fn many_bans_come_back_a_chunk_a_turn_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let total = REINSTATE_CHUNK * 2 + 7;
        {
            let mut store = Store::open(&settings(dir.path()).store_dir()).unwrap();
            let records: Vec<Record> = (0..total)
                .map(|i| Record {
                    net: IpNet::from(IpAddr::from([10, 9, (i >> 8) as u8, i as u8])),
                    since: 0,
                    expires: Some(3600),
                    reason: "1,2,3,4".into(),
                    offences: 1,
                    new_only: false,
                })
                .collect();
            store.save(&records).unwrap();
        }
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        let elements = |text: &str| text.matches(" timeout ").count();
        let before = runner.transcript().len();
        runner.answer(Err("Error: No such file or directory"));
        b.apply(5);
        let t = runner.transcript();
        let setup = t[before..]
            .iter()
            .find(|c| c.contains("add table inet synwatch"))
            .unwrap_or_else(|| panic!("no setup: {:#?}", &t[before..]));
        assert_eq!(
            elements(setup),
            REINSTATE_CHUNK,
            "the rules and the first chunk"
        );
        assert!(
            b.has_pending(),
            "the rest waits, and the pipeline comes back soon"
        );
        assert_eq!(
            b.metrics.bans_reinstating.load(Ordering::Relaxed),
            (total - REINSTATE_CHUNK) as u64
        );
        let mut put_back = REINSTATE_CHUNK;
        for turn in 0..3 {
            let before = runner.transcript().len();
            b.apply(5);
            let added: usize = runner.transcript()[before..]
                .iter()
                .filter(|c| !c.contains("add table"))
                .map(|c| elements(c))
                .sum();
            assert!(added <= REINSTATE_CHUNK, "turn {turn}: {added}");
            put_back += added;
        }
        assert_eq!(put_back, total, "every ban is back");
        assert!(!b.has_pending());
        assert_eq!(b.metrics.bans_reinstating.load(Ordering::Relaxed), 0);
        // And each at most once: the set-up and the chunks hold every address.
        let all: String = runner.transcript()[before..].concat();
        for i in [0usize, REINSTATE_CHUNK, total - 1] {
            let addr = IpAddr::from([10, 9, (i >> 8) as u8, i as u8]);
            assert_eq!(
                all.matches(&format!(" {addr} timeout")).count(),
                1,
                "{addr}"
            );
        }
    }

    #[test]
    fn expiry_removal_and_flush_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        b.scan(
            ip("192.0.2.1"),
            n("192.0.2.1"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        );
        b.apply(0);
        assert_eq!(
            b.apply(60),
            vec![Happened::Unblocked(n("192.0.2.1"), "expired")]
        );
        let (reply, happened) = b.control(
            &Request::Add {
                addr: n("192.0.2.9"),
                secs: Some(0),
            },
            61,
            |_| None,
        );
        assert!(reply.ok);
        assert_eq!(reply.bans[0].expires, None);
        assert!(matches!(&happened[..], [Happened::Blocked(r)] if r.reason == "manual"));
        let (reply, _) = b.control(
            &Request::Add {
                addr: n("192.0.2.254"),
                secs: None,
            },
            61,
            |a| (a == n("192.0.2.254")).then_some((Why::Infra(crate::host::Role::Gateway), a)),
        );
        assert!(!reply.ok);
        assert!(
            reply
                .error
                .as_deref()
                .is_some_and(|e| e.contains("a gateway of this host") && e.contains("(gateway)")),
            "{reply:?}"
        );
        let (reply, _) = b.control(
            &Request::Remove {
                addr: n("192.0.2.7"),
            },
            62,
            |_| None,
        );
        assert_eq!(reply.error.as_deref(), Some("192.0.2.7 is not blocked"));
        let (reply, happened) = b.control(&Request::Flush, 62, |_| None);
        assert_eq!(reply.bans.len(), 1);
        assert_eq!(
            happened,
            vec![Happened::Unblocked(n("192.0.2.9"), "flushed")]
        );
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn bans_on_addresses_that_became_protected_are_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        for a in ["192.0.2.200", "192.0.2.201"] {
            b.control(
                &Request::Add {
                    addr: n(a),
                    secs: Some(0),
                },
                0,
                |_| None,
            );
        }
        // Restarted with 192.0.2.200 now protected (see `start`): not restored.
        drop(b);
        let runner = RecordingRunner::default();
        let (mut b, lapsed) = start(dir.path(), &runner, 10);
        assert_eq!(
            lapsed,
            vec![Happened::Unblocked(n("192.0.2.200"), "allowlisted")]
        );
        assert!(!runner.transcript()[0].contains("192.0.2.200"));
        assert_eq!(b.active(), 1);
        // Protected while running (a reload): lifted at once.
        let happened = b.release_protected(11, |a| a == n("192.0.2.201"));
        assert_eq!(
            happened,
            vec![Happened::Unblocked(n("192.0.2.201"), "allowlisted")]
        );
        assert_eq!(b.active(), 0);
        assert!(b.release_protected(12, |_| true).is_empty());
    }

    #[test]
    fn an_address_banned_until_removed_stays_in_the_kernel_past_a_shorter_range_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        let add = |b: &mut Blocker, addr: &str, secs: u64, now: i64| {
            let request = Request::Add {
                addr: n(addr),
                secs: Some(secs),
            };
            let (reply, happened) = b.control(&request, now, |_| None);
            assert!(reply.ok, "{reply:?}");
            happened
        };
        add(&mut b, "198.51.100.80", 0, 0);
        let before = runner.transcript().len();
        let happened = add(&mut b, "198.51.100.0/24", 5, 1);
        assert!(
            matches!(&happened[..], [Happened::Blocked(r)] if r.net == n("198.51.100.0/24")),
            "{happened:?}"
        );
        let lifted = |runner: &RecordingRunner| {
            runner.transcript()[before..]
                .iter()
                .any(|c| c.contains("delete element inet synwatch banned4 { 198.51.100.80 }"))
        };
        assert!(!lifted(&runner), "{:#?}", runner.transcript());
        // The range ends; the address ban stands, in the kernel and in the saved state.
        let happened = b.apply(7);
        assert_eq!(
            happened,
            vec![Happened::Unblocked(n("198.51.100.0/24"), "expired")]
        );
        assert!(!lifted(&runner), "{:#?}", runner.transcript());
        assert_eq!(b.active(), 1);
        // Removed while a range around it runs, the address is said to stay blocked.
        add(&mut b, "198.51.100.0/24", 60, 8);
        let remove = Request::Remove {
            addr: n("198.51.100.80"),
        };
        let (reply, _) = b.control(&remove, 8, |_| None);
        assert_eq!(
            reply.note.as_deref(),
            Some(
                "198.51.100.80 is still blocked by the banned range 198.51.100.0/24 until that ends"
            )
        );
        add(&mut b, "198.51.100.80", 0, 9);
        drop(b);
        let runner = RecordingRunner::default();
        let (b, _) = start(dir.path(), &runner, 10);
        assert_eq!(b.active(), 2);
        assert!(
            runner.transcript()[0].contains("add element inet synwatch banned4 { 198.51.100.80 }"),
            "{:#?}",
            runner.transcript()
        );
    }

    #[test]
    fn a_manual_ban_keeps_the_lifts_a_scans_range_made_before_it_for_the_next_report() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        let (one, net) = ("2001:db8:1:2::77", "2001:db8:1:2::/64");
        let add = |addr| Request::Add {
            addr: n(addr),
            secs: Some(30),
        };
        let (reply, _) = b.control(&add(one), 0, |_| None);
        assert!(reply.ok, "{reply:?}");
        // A scanner of the same /64 is banned as the /64, which takes the address ban in.
        b.scan(ip("2001:db8:1:2::9"), n(net), &[1, 2, 3, 4], 1, None, false);
        // A manual ban before the next report.
        let (reply, mut happened) = b.control(&add("198.51.100.20"), 1, |_| None);
        assert!(reply.ok, "{reply:?}");
        happened.extend(b.apply(2));
        assert!(
            happened.contains(&Happened::Unblocked(n(one), "covered")),
            "the address ban the range took in is reported lifted: {happened:?}"
        );
    }

    #[test]
    fn ranges_hold_once_absorb_what_they_cover_and_never_cover_a_protected_address() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 0);
        // A scanner counted in its /64 is banned as the /64.
        b.scan(
            ip("2001:db8:1:2::9"),
            n("2001:db8:1:2::/64"),
            &[1, 2, 3, 4],
            0,
            None,
            false,
        );
        let happened = b.apply(0);
        assert!(
            matches!(&happened[..], [Happened::Blocked(r)] if r.net == n("2001:db8:1:2::/64") && r.reason == "ports 1,2,3,4 from 2001:db8:1:2::9"),
            "{happened:?}"
        );
        let t = runner.transcript();
        assert!(
            t.iter().any(|c| c.contains(
                "add element inet synwatch banned6_net { 2001:db8:1:2::/64 timeout 60s }"
            )),
            "{t:#?}"
        );
        // Another address of it: nothing more.
        b.scan(
            ip("2001:db8:1:2::77"),
            n("2001:db8:1:2::77"),
            &[1, 2, 3, 4],
            1,
            None,
            false,
        );
        assert!(b.apply(1).is_empty());
        let (reply, _) = b.control(
            &Request::Add {
                addr: n("2001:db8:1:2::5"),
                secs: Some(30),
            },
            1,
            |_| None,
        );
        assert_eq!(
            reply.error.as_deref(),
            Some(
                "2001:db8:1:2::5 is already blocked: it is inside the banned range 2001:db8:1:2::/64"
            )
        );
        let (reply, _) = b.control(
            &Request::Remove {
                addr: n("2001:db8:1:2::5"),
            },
            1,
            |_| None,
        );
        assert!(
            reply
                .error
                .as_deref()
                .is_some_and(|e| e.contains("inside the banned range 2001:db8:1:2::/64")),
            "{reply:?}"
        );
        // A manual /48 absorbs the /64: lifted before the /48 goes in.
        let before = runner.transcript().len();
        let (reply, happened) = b.control(
            &Request::Add {
                addr: n("2001:db8:1::/48"),
                secs: Some(0),
            },
            2,
            |_| None,
        );
        assert!(reply.ok, "{reply:?}");
        assert_eq!(
            happened,
            vec![
                Happened::Unblocked(n("2001:db8:1:2::/64"), "covered"),
                Happened::Blocked(b.book.get(n("2001:db8:1::/48")).unwrap().clone()),
            ]
        );
        let t = &runner.transcript()[before..];
        assert_eq!(t.len(), 2, "{t:#?}");
        assert!(t[0].contains("delete element inet synwatch banned6_net { 2001:db8:1:2::/64 }"));
        assert!(t[1].contains("add element inet synwatch banned6_net { 2001:db8:1::/48 }"));
        assert_eq!(b.active(), 1);
        // A range over the gateway is refused and says which address it would cover.
        let gateway = |a: IpNet| {
            a.contains(&n("192.0.2.254"))
                .then_some((Why::Infra(crate::host::Role::Gateway), n("192.0.2.254")))
        };
        let (reply, happened) = b.control(
            &Request::Add {
                addr: n("192.0.2.0/24"),
                secs: None,
            },
            3,
            gateway,
        );
        assert!(!reply.ok && happened.is_empty());
        assert_eq!(
            reply.error.as_deref(),
            Some(
                "192.0.2.0/24: the range covers 192.0.2.254, which is a gateway of this host (a next hop of its routes) (gateway): synwatch never blocks it; ban a narrower range or the addresses"
            )
        );
        // Removed as it was given; restored as a range after a restart.
        drop(b);
        let runner = RecordingRunner::default();
        let (mut b, _) = start(dir.path(), &runner, 10);
        assert!(
            runner.transcript()[0]
                .contains("add element inet synwatch banned6_net { 2001:db8:1::/48 }")
        );
        let (reply, happened) = b.control(
            &Request::Remove {
                addr: n("2001:db8:1::/48"),
            },
            11,
            |_| None,
        );
        assert!(reply.ok);
        assert_eq!(
            happened,
            vec![Happened::Unblocked(n("2001:db8:1::/48"), "removed")]
        );
        assert_eq!(b.active(), 0);
    }
}
