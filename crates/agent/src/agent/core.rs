//! The agent's loop: one thread that owns the detector, the log limiter, the blocker and
//! the event writer, and takes what the sources send through the queue ([`Msg`]), one
//! message a turn. After each it does what is due: sweeps whose answer time ran out,
//! bans to apply (together, as one kernel change), a reload asked for, the XDP
//! program's attachments, this host's addresses read again.
//!
//! Everything it reads from the system comes through a seam (`seams.rs`: the clocks,
//! the host; the blocker's `Enforcer`; the queue), so the unit tests at the bottom drive
//! it without root.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use synwatch_detect::{AddrSet, Detector, Observation};

use super::feed::Msg;
use super::host_now::{HostNow, is_protected_net, neighbours};
use super::seams::Clock;
use super::step::{LiveStep, Seen, holds_session, on_scan};
use super::{ADDRESS_REFRESH, APPLY_EVERY, Reread, Settings};
use crate::block::{Blocker, Happened};
use crate::control;
use crate::events::{BlockEvent, EventSink};
use crate::host::Infrastructure;
use crate::limit::LogLimiter;
use crate::links;
use crate::metrics::Metrics;
use crate::pipeline::{PREFETCH_AHEAD, step};
use crate::sockets::SocketCounters;
use crate::xdp::KernelBans;

/// How long the loop waits for a message when nothing is due.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// How long a ban the XDP program made by itself waits for the detector's verdict when
/// the detector's packets come another way (libpcap, the socket table): those reach it
/// after the program's ban, by up to a capture thread's pause and the queue.
const KERNEL_BAN_GRACE: Duration = Duration::from_secs(1);

/// Most kernel bans waiting for the detector's verdict; past it the oldest is judged at
/// once (the program bans without a cap, so a forged flood could make many).
const KERNEL_BANS_WAITING: usize = 65_536;

/// Most waiting kernel bans looked at in one turn of the loop.
const KERNEL_BANS_PER_TURN: usize = 4_096;

/// The XDP program while it runs, and what the loop needs to keep it current.
pub(super) struct XdpRunning {
    pub(super) xdp: synwatch_xdp::Xdp,
    /// It observes (the XDP source) rather than libpcap.
    pub(super) observing: bool,
    /// It bans by itself: its ban maps are the blocker's backend.
    pub(super) blocking: bool,
    pub(super) mode: synwatch_xdp::Mode,
    pub(super) links: links::XdpLinks,
    /// The interfaces were named (their absence fails `/healthz`).
    pub(super) required: bool,
    /// Interfaces that come up later are attached too.
    pub(super) discovering: bool,
}

/// What the loop starts with.
pub(super) struct Parts {
    /// The detector's configuration, this host's addresses and neighbours included.
    pub(super) detector: synwatch_detect::Config,
    /// The local ranges as configured (before this host's addresses join them).
    pub(super) configured_locals: AddrSet,
    /// The log limits: per source, overall.
    pub(super) log_limits: (u32, u32),
    pub(super) blocker: Option<Blocker>,
    pub(super) host: HostNow,
    pub(super) clock: Rc<dyn Clock>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: Box<dyn EventSink>,
    pub(super) xdp: Option<XdpRunning>,
    /// Set to have the configuration read again through `reread`.
    pub(super) reload: Arc<AtomicBool>,
    pub(super) reread: Box<dyn FnMut() -> Option<Reread>>,
    /// Set to have the status written on stderr.
    pub(super) status: Arc<AtomicBool>,
}

/// When the loop next (or last) does what it does on a timer.
struct Timers {
    next_refresh: Instant,
    next_link_check: Instant,
    /// When bans were last applied (with expiry and the rest of the upkeep).
    applied_at: Instant,
    /// When bans last went to the kernel.
    pushed_at: Instant,
}

/// The loop's state.
pub(super) struct Core {
    pub(super) detector: Detector,
    limiter: LogLimiter,
    pub(super) blocker: Option<Blocker>,
    host: HostNow,
    clock: Rc<dyn Clock>,
    pub(super) metrics: Arc<Metrics>,
    events: Box<dyn EventSink>,
    /// The first failure to write events, if any (the agent then stops).
    pub(super) output: io::Result<()>,
    /// Connections logged.
    pub(super) logged: u64,
    configured_locals: AddrSet,
    /// The infrastructure last said, to say when it changes.
    known_infra: Infrastructure,
    pub(super) xdp: Option<XdpRunning>,
    reload: Arc<AtomicBool>,
    reread: Box<dyn FnMut() -> Option<Reread>>,
    status: Arc<AtomicBool>,
    /// The socket table's counters, with `--source sockets`.
    pub(super) socket_counters: Option<Arc<SocketCounters>>,
    timers: Timers,
    /// The XDP program bans by itself but the detector's packets come another way, so
    /// its bans can arrive before the detector saw the packet that made them.
    pub(super) kernel_bans_lead: bool,
    /// The program's bans not yet judged, and when each must be ([`KERNEL_BAN_GRACE`]).
    unconfirmed: std::collections::VecDeque<(ipnet::IpNet, Instant)>,
}

impl Core {
    /// The loop's state, reporting `lapsed` (the saved bans that ended while no agent
    /// ran) first.
    pub(super) fn new(parts: Parts, lapsed: Vec<Happened>) -> Self {
        let now = parts.clock.monotonic();
        let known_infra = parts.host.snapshot().infra.clone();
        let kernel_bans_lead = parts
            .xdp
            .as_ref()
            .is_some_and(|x| x.blocking && !x.observing);
        let mut core = Self {
            detector: Detector::new(parts.detector),
            limiter: LogLimiter::new(parts.log_limits.0, parts.log_limits.1),
            blocker: parts.blocker,
            host: parts.host,
            clock: parts.clock,
            metrics: parts.metrics,
            events: parts.events,
            output: Ok(()),
            logged: 0,
            configured_locals: parts.configured_locals,
            known_infra,
            xdp: parts.xdp,
            reload: parts.reload,
            reread: parts.reread,
            status: parts.status,
            socket_counters: None,
            kernel_bans_lead,
            unconfirmed: std::collections::VecDeque::new(),
            // Bans go to the kernel at once when none went for APPLY_EVERY (the first
            // scanner of a quiet spell is banned within the batch that made it one), then
            // at most every APPLY_EVERY while packets keep coming, so that a burst of them
            // is one kernel transaction; expiry and the rest of the upkeep run at that
            // pace, or when idle.
            timers: Timers {
                next_refresh: now + ADDRESS_REFRESH,
                next_link_check: now + links::CHECK_EVERY,
                applied_at: now,
                pushed_at: now.checked_sub(APPLY_EVERY).unwrap_or(now),
            },
        };
        core.report(lapsed);
        core
    }

    /// Takes messages until the queue ends, or until `finished()` (capture has ended:
    /// stopped, or every interface failed) and what the sources sent last is taken.
    /// A failure to write events sets `stop`.
    pub(super) fn run(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        stop: &AtomicBool,
        finished: impl Fn() -> bool,
    ) {
        // The control thread's sender never disconnects, so the end of capture is
        // checked rather than waited for.
        let mut draining = false;
        let mut turn_started: Option<Instant> = None;
        loop {
            if let Some(t) = turn_started.take() {
                let took = self.clock.monotonic().saturating_duration_since(t);
                self.metrics.record_turn(took);
            }
            let msg = if draining {
                match rx.try_recv() {
                    Ok(m) => Ok(m),
                    Err(_) => break,
                }
            } else {
                rx.recv_timeout(self.wait())
            };
            turn_started = Some(self.clock.monotonic());
            match msg {
                // A chunk of bans is in the kernel and saved: reported at once. A route
                // changed: the turn reads the host again (`refresh_host`).
                Ok(Msg::Applied | Msg::RoutesChanged) => self.turn(None, true),
                Ok(m) => self.turn(Some(m), draining),
                Err(mpsc::RecvTimeoutError::Timeout) => self.turn(None, true),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.output.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            if finished() {
                draining = true;
            }
        }
    }

    /// How long to wait for a message: bans waiting to be put back go a chunk every
    /// APPLY_EVERY, traffic or not.
    fn wait(&self) -> Duration {
        if self.blocker.as_ref().is_some_and(Blocker::has_pending) {
            APPLY_EVERY
        } else {
            IDLE_WAIT
        }
    }

    /// One turn: `msg` (none when the wait ran out), then what is due. `idle`: no
    /// traffic is waiting, so bans are applied now.
    pub(super) fn turn(&mut self, msg: Option<Msg>, idle: bool) {
        match msg {
            Some(Msg::Batch(batch)) => self.on_batch(&batch),
            Some(Msg::KernelBans(banned)) => self.on_kernel_bans(banned),
            Some(Msg::Call(call)) => self.on_call(call),
            Some(Msg::Fleet(pull)) => self.on_fleet(pull),
            Some(Msg::Applied | Msg::RoutesChanged) | None => {}
        }
        self.tick_detector();
        let now = self.clock.monotonic();
        if !self.unconfirmed.is_empty() {
            self.confirm_waiting_kernel_bans(now);
        }
        self.apply_due(now, idle);
        // Live events go out as they happen, not when a buffer fills.
        let flushed = self.events.flush();
        self.written(flushed);
        self.metrics
            .record_detector(&self.detector.stats(), self.detector.tracked_sources());
        self.reload_if_asked();
        if self.status.swap(false, Ordering::Relaxed) {
            self.tell("status:");
        }
        self.check_links(now);
        self.refresh_host(now);
    }

    fn written(&mut self, result: io::Result<()>) {
        if self.output.is_ok() {
            self.output = result;
        }
    }

    /// Observations from a source, through the detector.
    fn on_batch(&mut self, batch: &[Observation]) {
        // Saturating: a count that wrapped would make the feed refuse every batch after.
        let n = batch.len() as u64;
        let _ = self
            .metrics
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
        let mut sink = LiveStep {
            limiter: &mut self.limiter,
            events: &mut *self.events,
            blocker: self.blocker.as_mut(),
            host: &self.host,
            clock: &*self.clock,
            logged: &mut self.logged,
            held: 0,
        };
        let mut result = Ok(());
        for (i, obs) in batch.iter().enumerate() {
            // The slots an observation a few places on will need start loading now, so
            // that under a flood of new sources the lookups overlap instead of each
            // waiting for memory in turn.
            if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                self.detector.prefetch(ahead);
                sink.limiter.prefetch(ahead.src);
            }
            result = result.and(step(&mut self.detector, obs, &mut sink));
        }
        self.metrics
            .events_suppressed
            .fetch_add(sink.held, Ordering::Relaxed);
        self.written(result);
    }

    /// Sources the XDP program banned by itself: kept where the detector decided the
    /// same (or its scan waited for the cap and the cap now has room for it), lifted
    /// otherwise (a scan the cap refuses waits on). Where the detector's packets come
    /// another way than the program's ([`Core::kernel_bans_lead`]), a ban the detector
    /// has not decided yet waits up to [`KERNEL_BAN_GRACE`] for the packet that makes it,
    /// unless its source is protected: that one is lifted at once.
    fn on_kernel_bans(&mut self, KernelBans(banned): KernelBans) {
        let now = self.clock.monotonic();
        for (net, _) in banned {
            let wait = self.kernel_bans_lead
                && self.blocker.as_ref().is_some_and(|b| !b.has_decided(net))
                && is_protected_net(synwatch_enforce::ban_net(net), &self.detector, &self.host)
                    .is_none();
            if wait {
                if self.unconfirmed.len() >= KERNEL_BANS_WAITING
                    && let Some((oldest, _)) = self.unconfirmed.pop_front()
                {
                    self.confirm_kernel_ban(oldest);
                }
                self.unconfirmed.push_back((net, now + KERNEL_BAN_GRACE));
            } else {
                self.confirm_kernel_ban(net);
            }
        }
    }

    /// Judges the program's bans that waited for the detector: each once the detector
    /// decided it or its grace ran out. At most [`KERNEL_BANS_PER_TURN`] are looked at in
    /// a turn, the rest in the turns after (the ones kept go to the back).
    fn confirm_waiting_kernel_bans(&mut self, now: Instant) {
        let Some(b) = self.blocker.as_ref() else {
            self.unconfirmed.clear();
            return;
        };
        let mut due = Vec::new();
        for _ in 0..self.unconfirmed.len().min(KERNEL_BANS_PER_TURN) {
            let Some((net, by)) = self.unconfirmed.pop_front() else {
                break;
            };
            if now >= by || b.has_decided(net) {
                due.push(net);
            } else {
                self.unconfirmed.push_back((net, by));
            }
        }
        for net in due {
            self.confirm_kernel_ban(net);
        }
    }

    /// Keeps or lifts one ban the XDP program made ([`Blocker::confirm_kernel_ban`]).
    fn confirm_kernel_ban(&mut self, net: ipnet::IpNet) {
        let Some(b) = self.blocker.as_mut() else {
            return;
        };
        // For a range, any address of it holding a session keeps its sessions.
        let session = self.host.holds_session(synwatch_enforce::ban_net(net));
        let now = self.clock.agent_secs();
        if b.confirm_kernel_ban(net, now, session) == crate::block::Confirmed::Lifted {
            tracing::warn!(
                "the XDP program banned {net}, but the detector did not (see above); lifting it"
            );
        }
    }

    /// A request from `synwatch blocks`, answered.
    fn on_call(&mut self, call: control::Call) {
        let Some(b) = self.blocker.as_mut() else {
            return;
        };
        let (detector, host) = (&self.detector, &self.host);
        let (mut reply, happened) = b.control(&call.request, self.clock.agent_secs(), |a| {
            is_protected_net(a, detector, host)
        });
        control::bans_to_wall(&mut reply.bans, self.clock.wall_offset());
        self.report(happened);
        let _ = call.reply.send(reply);
    }

    /// Decisions pulled from the CrowdSec Local API.
    fn on_fleet(&mut self, pull: crate::crowdsec::pull::Pull) {
        let Some(b) = self.blocker.as_mut() else {
            return;
        };
        let (detector, host) = (&self.detector, &self.host);
        let happened = b.pulled(
            pull,
            self.clock.agent_secs(),
            |a| is_protected_net(a, detector, host),
            holds_session(host),
        );
        self.report(happened);
    }

    /// Sweeps become known when their attempts' answer time runs out, packets or not.
    fn tick_detector(&mut self) {
        let wall = self.clock.wall_nanos();
        if self.detector.poll_at().is_none_or(|at| at > wall) {
            return;
        }
        for scan in self.detector.tick(wall) {
            let seen = Seen {
                detector: &self.detector,
                host: &self.host,
                clock: &*self.clock,
            };
            let written = on_scan(&scan, seen, &mut *self.events, self.blocker.as_mut());
            self.written(written);
        }
    }

    /// Applies decided bans and lifts expired ones when idle, or when APPLY_EVERY has
    /// passed since the last time (or since bans last went, while some wait).
    fn apply_due(&mut self, now: Instant, idle: bool) {
        let Some(b) = self.blocker.as_mut() else {
            return;
        };
        let t = &mut self.timers;
        if !(idle
            || now.duration_since(t.applied_at) >= APPLY_EVERY
            || (b.has_pending() && now.duration_since(t.pushed_at) >= APPLY_EVERY))
        {
            return;
        }
        t.applied_at = now;
        // Waiting scans whose source was quiet for a whole window have ended.
        let quiet_secs = (self.detector.config().window + 999_999_999) / 1_000_000_000;
        let (detector, host) = (&self.detector, &self.host);
        b.promote(
            self.clock.agent_secs(),
            quiet_secs,
            |a| is_protected_net(a, detector, host).is_some(),
            holds_session(host),
        );
        if b.has_pending() {
            t.pushed_at = now;
        }
        let secs = self.clock.agent_secs();
        let mut happened = b.apply(secs);
        // Fleet decisions that waited for a local ban just expired: given now (for new
        // connections only where their source holds a session), into the kernel at once.
        let protected = |a| is_protected_net(a, detector, host).is_some();
        if b.give_deferred(secs, protected, holds_session(host)) {
            happened.extend(b.apply(secs));
        }
        self.report(happened);
    }

    /// A reload request (SIGHUP): the configuration read again applies to the running
    /// detector, thresholds and address lists (keeping its state), to the ban policy, to
    /// what is protected (bans on what now is are lifted) and to the XDP program.
    fn reload_if_asked(&mut self) {
        if !self.reload.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(fresh) = (self.reread)() else {
            return;
        };
        let fresh_run = self.reconfigure(fresh);
        if let Some(b) = self.blocker.as_mut() {
            b.set_policy(fresh_run.blocking.policy);
            self.release_protected();
        }
        if let Some(x) = self.xdp.as_mut() {
            let options = crate::xdp::options(
                self.detector.config(),
                x.observing,
                x.blocking.then_some((&fresh_run.blocking, true)),
            );
            reconfigure_xdp(&mut x.xdp, options, &self.detector, &self.host);
        }
    }

    /// Applies the configuration read again to the detector; returns its settings.
    fn reconfigure(&mut self, fresh: Reread) -> Settings {
        let Reread {
            path,
            detector: mut cfg,
            settings,
        } = fresh;
        self.configured_locals = cfg.locals.clone();
        let host = self.host.host().unwrap_or_default();
        cfg.locals = host.locals(&self.configured_locals);
        cfg.neighbours = self.detector.config().neighbours.clone();
        cfg.sweeps = self.detector.config().sweeps;
        tracing::info!(
            "reloaded {}: a scan is more than {} ports within {} s; {} allowlisted ranges",
            path.display(),
            cfg.max_ports,
            cfg.window as f64 / 1e9,
            cfg.allow.len()
        );
        self.detector.reconfigure(cfg);
        settings
    }

    /// Re-attaches the XDP program where an interface came back (or up), every
    /// `links::CHECK_EVERY`.
    fn check_links(&mut self, now: Instant) {
        let Some(x) = self.xdp.as_mut() else {
            return;
        };
        if now < self.timers.next_link_check {
            return;
        }
        self.timers.next_link_check = now + links::CHECK_EVERY;
        links::check_xdp(
            &mut x.xdp,
            x.mode,
            &mut x.links,
            &self.metrics,
            x.required,
            x.discovering,
            x.observing,
        );
    }

    /// Reads this host's addresses and infrastructure again every ADDRESS_REFRESH, so
    /// that an address added or removed while running counts as local (or stops
    /// counting) without a restart; bans on what became protected are lifted. A change
    /// that a ban-time read saw (at most a second old) is applied at once, rather than
    /// at the next periodic read: above all to the XDP program's allowlist, which would
    /// otherwise ban a gateway changed a moment ago in the kernel on every forged scan
    /// until then.
    fn refresh_host(&mut self, now: Instant) {
        // A route or resolver change (a new gateway or resolver: a ban on it is lifted
        // now, not at the next periodic read), or a change a ban-time read saw.
        let changed = self.host.infra_changed() | self.host.take_changed();
        if now < self.timers.next_refresh && !changed {
            return;
        }
        self.timers.next_refresh = now + ADDRESS_REFRESH;
        let Some(fresh) = self.host.host() else {
            return;
        };
        let mut cfg = self.detector.config().clone();
        cfg.locals = fresh.locals(&self.configured_locals);
        let snapshot = self.host.snapshot_of(fresh);
        cfg.neighbours = neighbours(&snapshot.infra);
        let infra_changed = snapshot.infra != self.known_infra;
        if infra_changed {
            tracing::info!(
                "this host's gateways, routers, resolvers and CrowdSec LAPI (never blocked) are now: {}",
                snapshot.infra.describe()
            );
            self.known_infra = snapshot.infra.clone();
        }
        self.host.set(now, snapshot);
        // What this read found is applied here.
        self.host.take_changed();
        let locals_changed = cfg.locals != self.detector.config().locals;
        if locals_changed || cfg.neighbours != self.detector.config().neighbours {
            self.detector.reconfigure(cfg);
        }
        if locals_changed || infra_changed {
            self.release_protected();
        }
        if let Some(x) = self.xdp.as_mut() {
            let options = x.xdp.options();
            reconfigure_xdp(&mut x.xdp, options, &self.detector, &self.host);
        }
    }

    /// Lifts bans on addresses that became protected (after a reload or an address
    /// change) and reports them.
    fn release_protected(&mut self) {
        let Some(b) = self.blocker.as_mut() else {
            return;
        };
        let (detector, host) = (&self.detector, &self.host);
        let happened = b.release_protected(self.clock.agent_secs(), |n| {
            is_protected_net(n, detector, host).is_some()
        });
        self.report(happened);
    }

    /// Writes what blocking did as events; a lifted ban also resets the source's
    /// detector state, so that scanning again is a new scan, banned again.
    fn report(&mut self, happened: Vec<Happened>) {
        let (backend, dry_run) = match &self.blocker {
            Some(b) => (b.backend().as_str(), b.dry_run()),
            None => ("none", false),
        };
        let ts = self.clock.wall_nanos();
        // Ban times are agent time (clock.rs); the event says when on the wall clock.
        let wall = self.clock.wall_offset();
        let mut result = Ok(());
        for h in happened {
            result = result.and(match h {
                Happened::Blocked(r) => self.events.block(&BlockEvent {
                    ts,
                    src: r.net.addr(),
                    prefix: (!synwatch_enforce::is_host(r.net)).then_some(r.net),
                    backend,
                    until: r.expires.map(|t| wall.to_wall(t)),
                    reason: &r.reason,
                    offences: r.offences,
                    dry_run,
                    new_only: r.new_only,
                }),
                Happened::Unblocked(net, why) => {
                    // A range's sources are forgotten as the detector counts them (what
                    // it keeps per address inside the range ends with its window).
                    self.detector.forget(net.addr());
                    self.events.unblock(ts, net, why)
                }
            });
        }
        self.written(result);
    }

    /// The end of blocking: bans decided in the last moments are saved (and reported)
    /// before the blocker stops and removes what it set up (and the control socket in
    /// `state_dir`).
    pub(super) fn stop_blocking(&mut self, state_dir: &std::path::Path) {
        if let Some(b) = self.blocker.as_mut() {
            let happened = b.apply_all(self.clock.agent_secs());
            self.report(happened);
            let flushed = self.events.flush();
            self.written(flushed);
        }
        if let Some(b) = self.blocker.take() {
            b.stop();
            let _ = std::fs::remove_file(control::socket_path(state_dir));
        }
        let flushed = self.events.flush();
        self.written(flushed);
    }
}

/// Tells the XDP program the configuration and protected ranges now in force; a failure
/// is logged and the program keeps what it had.
fn reconfigure_xdp(
    xdp: &mut synwatch_xdp::Xdp,
    options: synwatch_xdp::Options,
    detector: &Detector,
    host: &HostNow,
) {
    if let Err(e) = crate::xdp::apply(xdp, options, host.snapshot().view(detector.config())) {
        tracing::error!("cannot update the XDP program: {e}");
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    //! The loop without root: a clock that moves when told, a host whose addresses the
    //! test changes, nftables over a runner that records its commands, events recorded
    //! as lines, and the test standing in for the sources by pushing into the queue.

    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashSet;
    use std::net::IpAddr;
    use std::path::PathBuf;

    use ipnet::IpNet;
    use synwatch_decode::TcpFlags;
    use synwatch_enforce::bans::Policy;
    use synwatch_enforce::{Backend, RecordingRunner, Scope};

    use super::super::feed::Feed;
    use super::super::seams::HostView;
    use super::super::{Block, Source, XdpMode};
    use crate::block::BlockSettings;
    use crate::clock::Offset;
    use crate::host::Host;

    /// Agent time when a test starts.
    const T0: i64 = 1_700_000_000;
    /// This host's address.
    const HOST: &str = "192.0.2.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        synwatch_enforce::parse_net(s).unwrap()
    }

    /// Moves only when told.
    struct FakeClock {
        start: Instant,
        elapsed: Cell<Duration>,
    }

    impl FakeClock {
        fn advance(&self, by: Duration) {
            self.elapsed.set(self.elapsed.get() + by);
        }
    }

    impl Clock for FakeClock {
        fn monotonic(&self) -> Instant {
            self.start + self.elapsed.get()
        }
        fn agent_secs(&self) -> i64 {
            T0 + i64::try_from(self.elapsed.get().as_secs()).unwrap()
        }
        fn wall_nanos(&self) -> i64 {
            T0 * 1_000_000_000 + i64::try_from(self.elapsed.get().as_nanos()).unwrap()
        }
        fn wall_offset(&self) -> Offset {
            Offset::default()
        }
    }

    /// The host as the test says it is.
    #[derive(Default)]
    struct FakeHost {
        addresses: Vec<IpAddr>,
        gateways: Vec<IpAddr>,
        sessions: HashSet<IpAddr>,
        /// A route changed since the loop last asked.
        infra_changed: bool,
    }

    struct SharedHost(Rc<RefCell<FakeHost>>);

    impl HostView for SharedHost {
        fn host(&mut self) -> Option<Host> {
            let mut host = Host::default();
            host.addresses
                .extend(self.0.borrow().addresses.iter().copied());
            Some(host)
        }
        fn infrastructure(&mut self) -> Infrastructure {
            let mut infra = Infrastructure::default();
            for &addr in &self.0.borrow().gateways {
                infra.by_addr.insert(
                    addr,
                    crate::host::Infra {
                        role: crate::host::Role::Gateway,
                        iface: None,
                    },
                );
            }
            infra
        }
        fn holds_session(&mut self, net: IpNet) -> bool {
            self.0.borrow().sessions.iter().any(|a| net.contains(a))
        }
        fn infra_changed(&mut self) -> bool {
            std::mem::take(&mut self.0.borrow_mut().infra_changed)
        }
    }

    /// The events, one line each.
    struct Lines(Rc<RefCell<Vec<String>>>);

    impl EventSink for Lines {
        fn connection(&mut self, _: &crate::events::Connection) -> io::Result<()> {
            Ok(())
        }
        fn scan(&mut self, s: &synwatch_detect::Scan, protected: Option<&str>) -> io::Result<()> {
            let why = protected
                .map(|p| format!(" protected {p}"))
                .unwrap_or_default();
            self.0.borrow_mut().push(format!("scan {}{why}", s.src));
            Ok(())
        }
        fn suppressed(&mut self, _: &crate::limit::Suppressed) -> io::Result<()> {
            Ok(())
        }
        fn block(&mut self, b: &BlockEvent<'_>) -> io::Result<()> {
            let until = b.until.map_or(-1, |t| t - T0);
            self.0
                .borrow_mut()
                .push(format!("block {} for {until}", b.src));
            Ok(())
        }
        fn unblock(&mut self, _: i64, net: IpNet, reason: &str) -> io::Result<()> {
            self.0
                .borrow_mut()
                .push(format!("unblock {} {reason}", net.addr()));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn block_settings(dir: &std::path::Path, ban_secs: u64) -> BlockSettings {
        BlockSettings {
            scope: Scope::All,
            policy: Policy {
                duration_secs: ban_secs,
                max_secs: 3600,
                per_minute: 0,
            },
            state_dir: dir.to_path_buf(),
            keep_rules: false,
            dry_run: false,
        }
    }

    fn settings(dir: &std::path::Path, ban_secs: u64) -> Settings {
        Settings {
            ifaces: Vec::new(),
            source: Source::Pcap,
            xdp_mode: XdpMode::Auto,
            poll: Duration::from_secs(1),
            block: Block::Nftables,
            blocking: block_settings(dir, ban_secs),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            log_limit_source: 100,
            log_limit_global: 1000,
            crowdsec: crate::crowdsec::Settings {
                credentials: None,
                key_file: None,
                url: None,
                pull: Duration::from_secs(10),
            },
        }
    }

    /// The detector's configuration as configured: more than 3 ports in a minute.
    fn configured() -> synwatch_detect::Config {
        synwatch_detect::Config {
            sweeps: false,
            ..synwatch_detect::Config::default()
        }
    }

    struct Harness {
        core: Core,
        clock: Rc<FakeClock>,
        host: Rc<RefCell<FakeHost>>,
        runner: RecordingRunner,
        /// Commands the blocker ran setting up.
        setup: usize,
        events: Rc<RefCell<Vec<String>>>,
        metrics: Arc<Metrics>,
        reload: Arc<AtomicBool>,
        reread: Rc<RefCell<Option<Reread>>>,
        dir: tempfile::TempDir,
        /// The source port of the next scan's SYNs (each scan's attempts are new ones).
        sport: Cell<u16>,
    }

    /// The loop with a blocker on nftables (bans of 600 s, no cap), on a host whose
    /// address is [`HOST`].
    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Rc::new(FakeClock {
            start: crate::clock::monotonic(),
            elapsed: Cell::new(Duration::ZERO),
        });
        let host = Rc::new(RefCell::new(FakeHost {
            addresses: vec![ip(HOST)],
            ..FakeHost::default()
        }));
        let runner = RecordingRunner::default();
        let metrics = Arc::new(Metrics::default());
        let enforcer =
            synwatch_enforce::open(Backend::Nftables, Scope::All, Box::new(runner.clone()))
                .unwrap();
        let blocking = block_settings(dir.path(), 600);
        let (blocker, lapsed) =
            Blocker::start(enforcer, &blocking, Arc::clone(&metrics), T0, |_| false).unwrap();
        let setup = runner.transcript().len();
        let events = Rc::new(RefCell::new(Vec::new()));
        let reload = Arc::new(AtomicBool::new(false));
        let reread = Rc::new(RefCell::new(None));
        let configured = configured();
        let mut detector = configured.clone();
        detector.locals = Host {
            addresses: [ip(HOST)].into_iter().collect(),
            ..Host::default()
        }
        .locals(&configured.locals);
        let view: Rc<dyn Clock> = clock.clone();
        let parts = Parts {
            detector,
            configured_locals: configured.locals,
            log_limits: (100, 1000),
            blocker: Some(blocker),
            host: HostNow::new(Box::new(SharedHost(Rc::clone(&host))), Rc::clone(&view)),
            clock: view,
            metrics: Arc::clone(&metrics),
            events: Box::new(Lines(Rc::clone(&events))),
            xdp: None,
            reload: Arc::clone(&reload),
            status: Arc::default(),
            reread: {
                let reread = Rc::clone(&reread);
                Box::new(move || reread.borrow_mut().take())
            },
        };
        Harness {
            core: Core::new(parts, lapsed),
            clock,
            host,
            runner,
            setup,
            events,
            metrics,
            reload,
            reread,
            dir,
            sport: Cell::new(40_000),
        }
    }

    impl Harness {
        /// SYNs from `src` to four ports of this host, now: a port scan.
        fn scan(&self, src: &str) -> Vec<Observation> {
            let sport = self.sport.get();
            self.sport.set(sport + 1);
            (0..4)
                .map(|i| Observation {
                    foreign: false,
                    ts: self.clock.wall_nanos() + i,
                    src: ip(src),
                    dst: ip(HOST),
                    sport,
                    dport: 20 + u16::try_from(i).unwrap(),
                    flags: TcpFlags(TcpFlags::SYN),
                })
                .collect()
        }

        /// What the blocker ran since it was set up.
        fn commands(&self) -> Vec<String> {
            self.runner.transcript()[self.setup..].to_vec()
        }

        /// The kernel changes that only lifted bans (nftables adds what it deletes first,
        /// without a timeout, so that deleting what is gone is no error).
        fn removals(&self) -> Vec<String> {
            let commands = self.commands();
            commands
                .into_iter()
                .filter(|c| c.contains("delete element") && !c.contains(" timeout "))
                .collect()
        }

        /// The kernel changes that added bans (with their timeout).
        fn adds(&self) -> Vec<String> {
            let commands = self.commands();
            commands
                .into_iter()
                .filter(|c| c.contains(" timeout "))
                .collect()
        }

        /// The events since the last call.
        fn events(&self) -> Vec<String> {
            std::mem::take(&mut *self.events.borrow_mut())
        }
    }

    #[test]
    fn scanners_in_one_batch_are_banned_in_one_kernel_change() {
        let mut h = harness();
        let mut batch = h.scan("198.51.100.1");
        batch.extend(h.scan("198.51.100.2"));
        batch.extend(h.scan("203.0.113.3"));
        h.core.turn(Some(Msg::Batch(batch)), false);
        let adds = h.adds();
        assert_eq!(adds.len(), 1, "{:#?}", h.commands());
        for a in ["198.51.100.1", "198.51.100.2", "203.0.113.3"] {
            assert!(adds[0].contains(&format!("{a} timeout 600s")), "{adds:#?}");
        }
        let blocks = h.events().into_iter().filter(|e| e.starts_with("block"));
        assert_eq!(blocks.count(), 3);
        // More scanners while traffic keeps coming wait for the next change, all
        // together, APPLY_EVERY later.
        h.core.turn(Some(Msg::Batch(h.scan("203.0.113.4"))), false);
        h.core.turn(Some(Msg::Batch(h.scan("203.0.113.5"))), false);
        assert_eq!(h.adds().len(), 1, "{:#?}", h.commands());
        h.clock.advance(APPLY_EVERY);
        h.core.turn(None, false);
        let adds = h.adds();
        assert_eq!(adds.len(), 2, "{adds:#?}");
        assert!(adds[1].contains("203.0.113.4 timeout 600s, 203.0.113.5 timeout 600s"));
    }

    #[test]
    fn a_reload_lifts_bans_on_what_became_allowlisted_and_applies_the_new_policy() {
        let mut h = harness();
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert_eq!(
            h.events(),
            ["scan 198.51.100.7", "block 198.51.100.7 for 600"]
        );
        // Read again, the configuration allowlists its network and bans for 120 s.
        let mut detector = configured();
        detector.allow.insert(net("198.51.100.0/24"));
        *h.reread.borrow_mut() = Some(Reread {
            path: PathBuf::from("/etc/synwatch.toml"),
            detector,
            settings: settings(h.dir.path(), 120),
        });
        // Not read until asked.
        h.core.turn(None, true);
        assert!(h.reread.borrow().is_some());
        assert!(h.events().is_empty());
        h.reload.store(true, Ordering::Relaxed);
        h.core.turn(None, true);
        assert!(h.reread.borrow().is_none(), "read again");
        assert!(!h.reload.load(Ordering::Relaxed));
        assert_eq!(h.events(), ["unblock 198.51.100.7 allowlisted"]);
        let removed = h.removals();
        assert!(
            removed.iter().any(|c| c.contains("198.51.100.7")),
            "{removed:#?}"
        );
        assert!(h.core.detector.config().allow.contains(ip("198.51.100.7")));
        // This host's addresses are still local.
        assert!(h.core.detector.config().locals.contains(ip(HOST)));
        // Scanning again is reported, never banned; another scanner is banned for 120 s.
        h.clock.advance(Duration::from_secs(1));
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        h.core.turn(Some(Msg::Batch(h.scan("203.0.113.9"))), true);
        assert_eq!(
            h.events(),
            [
                "scan 198.51.100.7 protected allowlisted",
                "scan 203.0.113.9",
                "block 203.0.113.9 for 121",
            ]
        );
    }

    #[test]
    fn an_address_added_to_the_host_is_local_and_unbanned_and_removed_is_not() {
        let mut h = harness();
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert_eq!(
            h.events(),
            ["scan 198.51.100.7", "block 198.51.100.7 for 600"]
        );
        // The address is added to an interface: at the next read of the host it is local.
        h.host.borrow_mut().addresses.push(ip("198.51.100.7"));
        h.clock.advance(ADDRESS_REFRESH - Duration::from_secs(1));
        h.core.turn(None, true);
        assert!(h.events().is_empty(), "not read again yet");
        h.clock.advance(Duration::from_secs(1));
        h.core.turn(None, true);
        assert_eq!(h.events(), ["unblock 198.51.100.7 allowlisted"]);
        assert!(h.core.detector.config().locals.contains(ip("198.51.100.7")));
        assert!(h.removals().iter().any(|c| c.contains("198.51.100.7")));
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert!(
            !h.events().iter().any(|e| e.starts_with("block")),
            "a local address is never banned"
        );
        // Removed again: it scans like any other source, and is banned.
        h.host
            .borrow_mut()
            .addresses
            .retain(|&a| a != ip("198.51.100.7"));
        h.clock.advance(ADDRESS_REFRESH);
        h.core.turn(None, true);
        assert!(!h.core.detector.config().locals.contains(ip("198.51.100.7")));
        assert!(h.core.detector.config().locals.contains(ip(HOST)));
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        let events = h.events();
        assert!(
            events.iter().any(|e| e.starts_with("block 198.51.100.7 ")),
            "banned again: {events:?}"
        );
    }

    /// The red team's F1: an IPv6 scanner is banned as its /64; an address of that /64
    /// (not the scanner's) holds a session with this host, so the range is banned for
    /// new connections only and the session lives on.
    #[test]
    fn a_range_holding_another_address_with_a_session_is_banned_for_new_connections_only() {
        let mut h = harness();
        h.host.borrow_mut().sessions.insert(ip("fd72::5"));
        h.core.turn(Some(Msg::Batch(h.scan("fd72::99"))), true);
        let adds = h.adds();
        assert_eq!(adds.len(), 1, "{:#?}", h.commands());
        assert!(
            adds[0]
                .contains("add element inet synwatch banned6_net_new { fd72::/64 timeout 600s }"),
            "{adds:#?}"
        );
        // A /64 no session is in drops everything.
        h.clock.advance(APPLY_EVERY);
        h.core.turn(Some(Msg::Batch(h.scan("fd73::99"))), true);
        let adds = h.adds();
        assert!(
            adds[1].contains("add element inet synwatch banned6_net { fd73::/64 timeout 600s }"),
            "{adds:#?}"
        );
    }

    #[test]
    fn a_gateway_change_seen_at_ban_time_is_applied_at_once() {
        let mut h = harness();
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert_eq!(
            h.events(),
            ["scan 198.51.100.7", "block 198.51.100.7 for 600"]
        );
        // It becomes the default gateway; a second later another scanner's ban reads
        // the host again (at most a second old), well before the periodic read.
        h.host.borrow_mut().gateways.push(ip("198.51.100.7"));
        h.clock.advance(Duration::from_secs(1));
        h.core.turn(Some(Msg::Batch(h.scan("203.0.113.9"))), true);
        let events = h.events();
        assert!(
            events.contains(&"unblock 198.51.100.7 allowlisted".to_owned()),
            "{events:?}"
        );
        assert!(h.removals().iter().any(|c| c.contains("198.51.100.7")));
        // The detector's neighbours (its per-address prefixes) follow as well.
        assert!(
            h.core
                .detector
                .config()
                .neighbours
                .contains(ip("198.51.100.7"))
        );
        // Nothing changed since: the next turns do not read the host again.
        h.core.turn(None, true);
        assert!(h.events().is_empty());
    }

    #[test]
    fn a_route_change_protects_the_new_gateway_at_once() {
        let mut h = harness();
        // Banned, then made the default gateway: lifted at the next turn, not at the
        // periodic read ten seconds on.
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert_eq!(
            h.events(),
            ["scan 198.51.100.7", "block 198.51.100.7 for 600"]
        );
        {
            let mut host = h.host.borrow_mut();
            host.gateways.push(ip("198.51.100.7"));
            host.infra_changed = true;
        }
        h.core.turn(None, true);
        assert_eq!(h.events(), ["unblock 198.51.100.7 allowlisted"]);
        assert!(h.removals().iter().any(|c| c.contains("198.51.100.7")));
        // A gateway set up a moment after the host was read: a forged scan "from" it in
        // the same instant is reported, never banned.
        {
            let mut host = h.host.borrow_mut();
            host.gateways.push(ip("203.0.113.9"));
            host.infra_changed = true;
        }
        h.core.turn(Some(Msg::Batch(h.scan("203.0.113.9"))), true);
        let events = h.events();
        assert!(
            !events.iter().any(|e| e.starts_with("block 203.0.113.9")),
            "{events:?}"
        );
        assert!(!h.adds().iter().any(|c| c.contains("203.0.113.9")));
    }

    #[test]
    fn a_kernel_ban_is_kept_when_the_detector_agrees_and_lifted_when_protected() {
        let mut h = harness();
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        let bans = |pairs: &[&str]| {
            Msg::KernelBans(KernelBans(pairs.iter().map(|a| (net(a), ip(a))).collect()))
        };
        // The program banned the same scanner the detector did: kept.
        h.core.turn(Some(bans(&["198.51.100.7"])), true);
        assert!(h.removals().is_empty(), "{:#?}", h.commands());
        assert_eq!(h.core.blocker.as_ref().unwrap().active(), 1);
        // The host's own address, which the program banned (it disagrees): lifted.
        h.core.turn(Some(bans(&[HOST])), true);
        let lifted = h.removals();
        assert_eq!(lifted.len(), 1, "{:#?}", h.commands());
        assert!(lifted[0].contains(HOST), "{lifted:#?}");
        assert!(!lifted[0].contains("198.51.100.7"));
        assert_eq!(h.core.blocker.as_ref().unwrap().active(), 1);
        assert!(
            !h.events().iter().any(|e| e.contains(HOST)),
            "lifted without an event"
        );
    }

    #[test]
    fn a_kernel_ban_ahead_of_the_detectors_packets_waits_for_them() {
        // The XDP program blocks, libpcap observes: the program's ban of a scanner
        // reaches the loop before the capture's batch with the same packets.
        let mut h = harness();
        h.core.kernel_bans_lead = true;
        let bans = |pairs: &[&str]| {
            Msg::KernelBans(KernelBans(pairs.iter().map(|a| (net(a), ip(a))).collect()))
        };
        h.core
            .turn(Some(bans(&["198.51.100.7", "203.0.113.5", HOST])), true);
        // The host's own address is lifted at once; the others wait for the detector.
        let lifted = h.removals();
        assert_eq!(lifted.len(), 1, "{:#?}", h.commands());
        assert!(lifted[0].contains(HOST), "{lifted:#?}");
        h.clock.advance(Duration::from_millis(5));
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.7"))), true);
        assert_eq!(
            h.events(),
            ["scan 198.51.100.7", "block 198.51.100.7 for 600"]
        );
        // The grace running out judges what the detector has not decided by then.
        let lifted_only = |h: &Harness, what: &[&str]| {
            let lifted = h.removals();
            assert_eq!(lifted.len(), what.len(), "{:#?}", h.commands());
            for (l, w) in lifted.iter().zip(what) {
                assert!(l.contains(w) && !l.contains("198.51.100.7"), "{lifted:#?}");
            }
        };
        lifted_only(&h, &[HOST]);
        h.clock.advance(Duration::from_millis(900));
        h.core.turn(None, true);
        lifted_only(&h, &[HOST]);
        h.clock.advance(KERNEL_BAN_GRACE);
        h.core.turn(None, true);
        lifted_only(&h, &[HOST, "203.0.113.5"]);
        assert_eq!(h.core.blocker.as_ref().unwrap().active(), 1);
        assert!(h.events().is_empty());
    }

    #[test]
    fn many_kernel_bans_waiting_for_the_detector_are_all_judged_in_a_few_turns() {
        let mut h = harness();
        h.core.kernel_bans_lead = true;
        let n = 3 * KERNEL_BANS_PER_TURN + 7;
        let addrs: Vec<String> = (0..n)
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let banned = addrs.iter().map(|a| (net(a), ip(a))).collect();
        h.core.turn(Some(Msg::KernelBans(KernelBans(banned))), true);
        assert_eq!(h.core.unconfirmed.len(), n);
        h.clock.advance(KERNEL_BAN_GRACE + Duration::from_millis(1));
        for _ in 0..4 {
            h.core.turn(None, true);
        }
        assert!(h.core.unconfirmed.is_empty());
        let lifted = h.removals().join("\n");
        for a in &addrs {
            assert!(
                lifted.contains(&format!("{a} ")) || lifted.contains(&format!("{a},")),
                "{a}"
            );
        }
    }

    #[test]
    fn stopping_applies_and_reports_the_last_bans_then_removes_the_rules() {
        let mut h = harness();
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.1"))), false);
        // Decided while traffic keeps coming: it waits for the next change.
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.2"))), false);
        assert_eq!(h.adds().len(), 1);
        let socket = control::socket_path(h.dir.path());
        std::fs::write(&socket, "").unwrap();
        h.core.stop_blocking(h.dir.path());
        let commands = h.commands();
        let adds = h.adds();
        assert_eq!(adds.len(), 2, "{commands:#?}");
        assert!(adds[1].contains("198.51.100.2 timeout 600s"));
        let last = commands.last().unwrap();
        assert!(last.contains("delete table inet synwatch"), "{commands:#?}");
        assert!(
            h.events()
                .contains(&"block 198.51.100.2 for 600".to_owned()),
            "reported"
        );
        assert!(h.core.blocker.is_none());
        assert!(!socket.exists(), "the control socket is removed");
    }

    /// The agent run to its end after its one source handed over a last batch and ended,
    /// with a ban decided that no turn has applied yet; `asked`: the stop token was set
    /// (a signal). Either way the stop token ends set (for the threads), the rules and
    /// the control socket are removed; returns the outcome and the events.
    fn run_to_end(asked: bool) -> (Result<super::super::Outcome, String>, Vec<String>) {
        let mut h = harness();
        let (feed, rx) = Feed::bounded(Arc::clone(&h.metrics), 4, 1_000);
        for src in ["198.51.100.1", "198.51.100.2"] {
            assert!(feed.offer(h.scan(src)));
            // The second is decided while traffic keeps coming: it waits.
            h.core.turn(Some(rx.recv().unwrap()), false);
        }
        assert_eq!(h.adds().len(), 1);
        let socket = control::socket_path(h.dir.path());
        std::fs::write(&socket, "").unwrap();
        let last = h.scan("198.51.100.3");
        let source = std::thread::spawn(move || {
            assert!(feed.offer(last));
        });
        let queue =
            crate::event_queue::EventQueue::start(io::sink(), Arc::clone(&h.metrics)).unwrap();
        let stop = Arc::new(AtomicBool::new(asked));
        let running = super::super::setup::Running {
            core: h.core,
            rx,
            stop: Arc::clone(&stop),
            workers: vec![("the test's source".to_owned(), source)],
            servers: Vec::new(),
            control_stop: Arc::default(),
            fleet_threads: crate::crowdsec::Threads::default(),
            drainer: queue.drainer(),
            state_dir: h.dir.path().to_path_buf(),
        };
        let outcome = running.run().map_err(|e| format!("{e:#}"));
        assert!(
            stop.load(Ordering::Relaxed),
            "the stop token is set for the threads"
        );
        assert!(!socket.exists(), "the control socket is removed");
        let commands = h.runner.transcript()[h.setup..].to_vec();
        let last = commands.last().unwrap();
        assert!(last.contains("delete table inet synwatch"), "{commands:#?}");
        let events = h.events.borrow().clone();
        (outcome, events)
    }

    #[test]
    fn sources_that_end_unasked_are_a_failure_and_a_stop_is_not_and_both_clean_up() {
        let (outcome, events) = run_to_end(false);
        let err = outcome.expect_err("sources ended without a signal");
        assert!(
            err.contains(
                "every source of connections ended (see above) without being asked to stop"
            ),
            "{err}"
        );
        // The source's last batch is taken, and the last bans applied and reported.
        for src in ["198.51.100.2", "198.51.100.3"] {
            assert!(
                events.contains(&format!("block {src} for 600")),
                "{events:#?}"
            );
        }
        let (outcome, events) = run_to_end(true);
        assert_eq!(outcome, Ok(super::super::Outcome::Stopped));
        for src in ["198.51.100.2", "198.51.100.3"] {
            assert!(
                events.contains(&format!("block {src} for 600")),
                "{events:#?}"
            );
        }
    }

    #[test]
    fn a_control_request_made_while_the_agent_winds_down_is_answered_by_it() {
        let mut h = harness();
        let (feed, rx) = Feed::bounded(Arc::clone(&h.metrics), 4, 1_000);
        assert!(feed.offer(h.scan("198.51.100.1")));
        h.core.turn(Some(rx.recv().unwrap()), true);
        let listener = control::bind(h.dir.path()).unwrap();
        let (server, control_stop) =
            super::super::setup::serve_control(Some(listener), h.dir.path(), &feed).unwrap();
        drop(feed);
        // Asked to stop (a signal) while a source still hands over its last packets, and
        // `synwatch blocks list` asks meanwhile; the source ends once it has its answer.
        let (answered, source_ends) = std::sync::mpsc::channel::<()>();
        let source = std::thread::spawn(move || {
            let _ = source_ends.recv();
        });
        let dir = h.dir.path().to_path_buf();
        let client = std::thread::spawn(move || {
            let reply = control::call(&dir, &control::Request::List);
            let _ = answered.send(());
            reply.map_err(|e| format!("{e:#}"))
        });
        let queue =
            crate::event_queue::EventQueue::start(io::sink(), Arc::clone(&h.metrics)).unwrap();
        let running = super::super::setup::Running {
            core: h.core,
            rx,
            stop: Arc::new(AtomicBool::new(true)),
            workers: vec![("the test's source".to_owned(), source)],
            servers: vec![("the control socket", server)],
            control_stop,
            fleet_threads: crate::crowdsec::Threads::default(),
            drainer: queue.drainer(),
            state_dir: h.dir.path().to_path_buf(),
        };
        // Ends: the control socket's thread is joined.
        assert_eq!(running.run().unwrap(), super::super::Outcome::Stopped);
        let reply = client.join().unwrap();
        let reply = reply
            .expect("an answer")
            .expect("the agent answers, not the state");
        assert_eq!(reply.backend, "nftables");
        let banned: Vec<String> = reply.bans.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(banned, ["198.51.100.1/32"]);
        assert!(!control::socket_path(h.dir.path()).exists());
    }

    #[test]
    fn connection_events_held_back_by_the_log_limit_are_all_counted() {
        let mut h = harness();
        // A flood from distinct sources to one port within a second: 1,000 logged (the
        // global limit), the rest held back and counted, batch after batch.
        let flood = |first: u32, n: u32| -> Vec<Observation> {
            (first..first + n)
                .map(|i| Observation {
                    foreign: false,
                    ts: h.clock.wall_nanos() + i64::from(i),
                    src: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                    dst: ip(HOST),
                    sport: 40_000,
                    dport: 80,
                    flags: TcpFlags(TcpFlags::SYN),
                })
                .collect()
        };
        let held = |h: &Harness| h.metrics.events_suppressed.load(Ordering::Relaxed);
        let batch = flood(0, 1_500);
        h.core.turn(Some(Msg::Batch(batch)), false);
        assert_eq!(held(&h), 500);
        let batch = flood(1_500, 200);
        h.core.turn(Some(Msg::Batch(batch)), false);
        assert_eq!(held(&h), 700);
        assert_eq!(h.core.logged, 1_000);
    }

    #[test]
    fn a_batch_the_feed_did_not_count_never_wraps_the_queue_count() {
        let mut h = harness();
        let (feed, _rx) = Feed::bounded(Arc::clone(&h.metrics), 2, 1_000);
        h.core.turn(Some(Msg::Batch(h.scan("198.51.100.1"))), false);
        assert_eq!(h.metrics.queued.load(Ordering::Relaxed), 0);
        // Wrapped, the count would be near 2^64 and the feed would refuse this.
        assert!(feed.offer(h.scan("198.51.100.2")));
    }

    #[test]
    fn batches_offered_to_a_full_queue_are_counted_as_dropped() {
        let mut h = harness();
        let (feed, rx) = Feed::bounded(Arc::clone(&h.metrics), 2, 1_000);
        // A source hands over three batches before the loop takes any: two fit.
        assert!(feed.offer(h.scan("198.51.100.1")));
        assert!(feed.offer(h.scan("198.51.100.2")));
        assert!(feed.offer(h.scan("198.51.100.3")));
        assert_eq!(h.metrics.queued.load(Ordering::Relaxed), 8);
        let stop = AtomicBool::new(false);
        h.core.run(&rx, &stop, || true);
        let text = h.metrics.render();
        assert!(
            text.contains("\nsynwatch_queue_dropped_total 4\n"),
            "{text}"
        );
        assert!(text.contains("\nsynwatch_queue_observations 0\n"), "{text}");
        let events = h.events();
        let banned: Vec<&String> = events.iter().filter(|e| e.starts_with("block")).collect();
        assert_eq!(
            banned,
            ["block 198.51.100.1 for 600", "block 198.51.100.2 for 600"]
        );
        assert!(!stop.load(Ordering::Relaxed));
    }
}
