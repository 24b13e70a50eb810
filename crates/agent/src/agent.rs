//! The running agent (`synwatch run`), without a command line or stdout: it takes its
//! validated [`Settings`], an [`EventSink`] for its events, a writer for them, and a stop
//! token ([`Io`]), and runs until stopped. One capture thread per interface reads through libpcap
//! (kernel-side filter, kernel timestamps) and hands connection attempts and stealth
//! probes to this thread, which runs the same detector as replay, writes the events
//! (rate-limited per source and overall) and keeps the metrics that `/metrics` serves.
//!
//! With `--source xdp` (or `auto`, where it attaches) the XDP program observes instead of
//! libpcap, through its ring buffer (see `xdp.rs`).
//!
//! Scanners are blocked through an [`Enforcer`](synwatch_enforce::Enforcer) (the XDP
//! program's ban maps, nftables or iptables; see `block.rs`), chosen at start;
//! `--block none` detects and reports only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::IpNet;
use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions};
use synwatch_decode::DecodeError;
use synwatch_detect::{Detector, Direction, Observation};

use synwatch_enforce::{Backend, Scope};

use crate::block::{BlockSettings, Blocker, Happened};
use crate::clock::{monotonic, wall_nanos};
use crate::control;
use crate::event_queue::EventQueue;
use crate::events::{BlockEvent, Connection, EventSink};
use crate::host::{Host, Infrastructure, Sessions};
use crate::limit::LogLimiter;
use crate::links;
use crate::metrics::{self, Metrics};
use crate::pipeline::{StepSink, step};
use crate::protect::{self, Why};
use crate::sockets::{SocketCounters, SocketSource};
use crate::xdp::KernelBans;

/// Where the agent learns of connections (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// XDP where it attaches, else libpcap (saying why).
    Auto,
    /// The XDP program on each interface, through its ring buffer.
    Xdp,
    /// Packet capture through libpcap.
    Pcap,
    /// The kernel's socket table, polled.
    Sockets,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Pcap => "pcap",
            Self::Sockets => "sockets",
        }
    }
}

/// What is done to scanners (`--block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// xdp,nftables where the XDP program runs, else nftables, else iptables, else none.
    Auto,
    /// The XDP program's ban maps.
    Xdp,
    /// XDP, and nftables for the traffic XDP does not see.
    XdpNftables,
    Nftables,
    Iptables,
    /// Detect and report only.
    None,
}

impl Block {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::XdpNftables => "xdp,nftables",
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
            Self::None => "none",
        }
    }
}

/// Where the XDP program runs (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native where the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    pub fn mode(self) -> synwatch_xdp::Mode {
        match self {
            Self::Auto => synwatch_xdp::Mode::Auto,
            Self::Native => synwatch_xdp::Mode::Native,
            Self::Generic => synwatch_xdp::Mode::Generic,
        }
    }
}

/// The running agent's settings beyond detection, validated (the binary layers them from
/// its flags, the environment and the configuration file).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The interfaces named (none: every one that is up, and those that come up later).
    pub ifaces: Vec<String>,
    pub source: Source,
    pub xdp_mode: XdpMode,
    /// How often the socket table is read (`--source sockets`).
    pub poll: Duration,
    pub block: Block,
    pub blocking: BlockSettings,
    pub metrics_addr: SocketAddr,
    pub log_limit_source: u32,
    pub log_limit_global: u32,
    pub crowdsec: crate::crowdsec::Settings,
}

/// The configuration read again on a reload request.
#[derive(Debug, Clone)]
pub struct Reread {
    /// The file it came from, for the message.
    pub path: PathBuf,
    /// The detector's configuration as configured (before this host's addresses join it).
    pub detector: synwatch_detect::Config,
    pub settings: Settings,
}

/// What the caller hands the agent: where its events go and who prints them, the stop
/// token and the reload request (the binary's signal handlers set them), and how to read
/// the configuration again.
pub struct Io {
    /// Where events are written (stdout, in the binary), through a bounded queue and a
    /// thread of its own.
    pub out: Box<dyn std::io::Write + Send>,
    /// The printer that formats events into that queue.
    pub printer: Box<dyn FnOnce(EventQueue) -> Box<dyn EventSink>>,
    /// How the events are shown, for the banner ("JSON lines", "a table").
    pub events_shown_as: &'static str,
    /// Set to stop the agent (it then removes its rules and exits cleanly).
    pub stop: Arc<AtomicBool>,
    /// Set to have the agent read its configuration again through `reread`.
    pub reload: Arc<AtomicBool>,
    pub reread: Box<dyn FnMut() -> Option<Reread>>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("events_shown_as", &self.events_shown_as)
            .field("stop", &self.stop)
            .field("reload", &self.reload)
            .finish_non_exhaustive()
    }
}

/// How a run ended without a runtime failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop, and stopped cleanly.
    Stopped,
    /// Refused to start: a usage error, already reported (exit 2 in the binary).
    Usage,
}

/// How often the host's addresses are read again, so that an address added or removed
/// while running counts as local (or stops counting) without a restart.
const ADDRESS_REFRESH: Duration = Duration::from_secs(10);

/// Longest a decided ban waits for others to join its kernel transaction under load.
const APPLY_EVERY: Duration = Duration::from_millis(100);

/// How long a stopping agent waits for stdout to take its last events.
const FINAL_OUTPUT_WAIT: Duration = Duration::from_secs(2);

/// Opens every interface first, so that a missing privilege or a wrong name stops the
/// agent before it claims to be watching anything.
pub fn open_all(ifaces: &[String], opts: &LiveOptions) -> Result<Vec<LiveCapture>, LiveError> {
    ifaces
        .iter()
        .map(|name| LiveCapture::open(name, opts))
        .collect()
}

/// The interfaces to watch: the named ones (which must exist), or every one that is up.
/// The error is a usage error, one line.
pub fn choose_interfaces(named: &[String], host: &Host) -> Result<Vec<String>, String> {
    if named.is_empty() {
        if host.up.is_empty() {
            return Err(
                "no network interface is up (other than loopback); name one with --iface".into(),
            );
        }
        return Ok(host.up.iter().cloned().collect());
    }
    for name in named {
        if !host.all.contains(name) {
            let known: Vec<&str> = host.all.iter().map(String::as_str).collect();
            return Err(format!(
                "invalid --iface '{name}': no such interface (this host has: {})",
                known.join(", ")
            ));
        }
    }
    Ok(named.to_vec())
}

/// Observations the queue to the pipeline thread holds at most: a quarter of a million
/// (12 MB at 48 bytes each; a second or two of a heavy flood), so that a long turn of the
/// pipeline (a burst of bans) is absorbed, not lost. Bounded by observations, not
/// batches: under a flood the capture threads hand over small batches as often as their
/// buffer timer fires, and a bound in batches filled after a few thousand observations.
const QUEUE_OBSERVATIONS: u64 = 262_144;
/// Messages the channel holds at most; the observations' bound above comes first unless
/// batches are tiny.
const QUEUE_MESSAGES: usize = 16_384;

/// Hands a batch of observations to the pipeline: when it has fallen so far behind that
/// its queue is full, the batch is dropped and counted (`synwatch_queue_dropped_total`)
/// rather than held in memory. False once the pipeline has gone.
fn offer(tx: &mpsc::SyncSender<Msg>, batch: Vec<Observation>, metrics: &Metrics) -> bool {
    offer_within(tx, batch, metrics, QUEUE_OBSERVATIONS)
}

fn offer_within(
    tx: &mpsc::SyncSender<Msg>,
    batch: Vec<Observation>,
    metrics: &Metrics,
    limit: u64,
) -> bool {
    let n = batch.len() as u64;
    if metrics.queued.load(Ordering::Relaxed).saturating_add(n) > limit {
        metrics.queue_dropped.fetch_add(n, Ordering::Relaxed);
        return true;
    }
    metrics.queued.fetch_add(n, Ordering::Relaxed);
    match tx.try_send(Msg::Batch(batch)) {
        Ok(()) => true,
        Err(mpsc::TrySendError::Full(_)) => {
            metrics.queued.fetch_sub(n, Ordering::Relaxed);
            metrics.queue_dropped.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(mpsc::TrySendError::Disconnected(_)) => {
            metrics.queued.fetch_sub(n, Ordering::Relaxed);
            false
        }
    }
}

/// What reaches the pipeline thread: observations from a capture thread, or a request
/// from `synwatch blocks` through the control socket.
#[derive(Debug)]
enum Msg {
    Batch(Vec<Observation>),
    /// Sources the XDP program banned by itself (after the batch holding their packet).
    KernelBans(KernelBans),
    Call(control::Call),
    /// Decisions pulled from the CrowdSec Local API.
    Fleet(crate::crowdsec::pull::Pull),
    /// The ban writer finished a chunk (block/writer.rs): report it now.
    Applied,
}

fn banner(
    watching: &str,
    d: &synwatch_detect::Config,
    run: &Settings,
    blocking: &str,
    locals: &[IpAddr],
    infra: &str,
    events: &str,
) {
    let window = d.window as f64 / 1e9;
    let shown: Vec<String> = locals.iter().take(8).map(IpAddr::to_string).collect();
    let more = locals.len().saturating_sub(shown.len());
    tracing::info!(
        "watching {watching} for new TCP connection attempts (IPv4 and IPv6).\n\
         \x20 A source reaching more than {} distinct ports within {window} s is reported as a port scan.\n\
         \x20 Blocking: {blocking}\n\
         \x20 This host's addresses (outgoing; never blocked): {}{}\n\
         \x20 Its gateways, routers and resolvers (never blocked, kept current): {infra}\n\
         \x20 Events: {} on stdout. Metrics: http://{}/metrics (health: /healthz). Stop with Ctrl-C.",
        d.max_ports,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        events,
        run.metrics_addr,
    );
}

/// A duration in seconds as the config file and flags accept it.
pub fn duration_text(secs: u64) -> String {
    match secs {
        0 => "0".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The blocking line of the banner.
fn blocking_text(blocker: &Blocker, b: &BlockSettings) -> String {
    let p = &b.policy;
    let length = if p.duration_secs == 0 {
        "until removed".to_owned()
    } else {
        format!(
            "for {}, doubling for repeat offenders up to {}",
            duration_text(p.duration_secs),
            duration_text(p.max_secs.max(p.duration_secs))
        )
    };
    let rules = match blocker.backend() {
        Backend::Nftables => "table inet synwatch, input and forward hooks",
        Backend::Iptables => {
            "chain SYNWATCH with ipsets synwatch4/synwatch6, from INPUT, FORWARD and DOCKER-USER"
        }
        Backend::Xdp => "ban maps of the XDP program, dropped before the network stack",
        Backend::XdpNftables => {
            "ban maps of the XDP program, and table inet synwatch for what XDP does not see"
        }
    };
    let cap = if p.per_minute == 0 {
        "no cap on new bans".to_owned()
    } else {
        format!("at most {} new bans a minute", p.per_minute)
    };
    format!(
        "{}{} ({rules}). Scanners are banned {length}; {cap}; {}. {} ban{} restored from {}.",
        if blocker.dry_run() {
            "DRY RUN (--dry-run: every ban decided and reported, none applied to the kernel) as "
        } else {
            ""
        },
        blocker.backend(),
        match b.scope {
            Scope::All => "a ban drops all their traffic",
            Scope::New => "a ban drops only their new connections",
        },
        blocker.active(),
        if blocker.active() == 1 { "" } else { "s" },
        b.store_dir().display(),
    )
}

/// How to give synwatch CAP_NET_ADMIN, for the message when it lacks it.
const GRANT_NET_ADMIN: &str = "run it as root (sudo synwatch run), or grant the capabilities to the binary (sudo setcap cap_net_raw,cap_net_admin+ep $(command -v synwatch)), or in a container add --cap-add NET_RAW --cap-add NET_ADMIN with --network host; or detect only with --block none";

/// Starts the blocking backend `choice` asks for. `Err` is a usage error (exit 2):
/// a backend named explicitly that cannot work. `auto` falls back to none with a
/// warning saying why.
fn start_blocking(
    choice: Block,
    settings: &BlockSettings,
    metrics: &Arc<Metrics>,
    protected: &dyn Fn(IpNet) -> bool,
    xdp: Option<&synwatch_xdp::Xdp>,
) -> Result<Option<(Blocker, Vec<Happened>)>, String> {
    let candidates: &[Backend] = match (choice, xdp.is_some()) {
        (Block::None, _) => return Ok(None),
        (Block::Auto, true) => &[Backend::XdpNftables, Backend::Xdp],
        (Block::Auto, false) => &[Backend::Nftables, Backend::Iptables],
        (Block::Xdp, _) => &[Backend::Xdp],
        (Block::XdpNftables, _) => &[Backend::XdpNftables],
        (Block::Nftables, _) => &[Backend::Nftables],
        (Block::Iptables, _) => &[Backend::Iptables],
    };
    // A dry run stands in for the first choice and needs no privilege.
    // The XDP ban maps are reached through descriptors the agent already holds.
    if settings.dry_run || candidates == [Backend::Xdp] {
        let backend = candidates[0];
        return start_backend(backend, settings, metrics, protected, xdp)
            .map(Some)
            .map_err(|e| format!("{e:#}"));
    }
    let admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_NET_ADMIN,
    )
    .unwrap_or(false);
    if !admin {
        let why =
            format!("blocking needs CAP_NET_ADMIN, which this process lacks: {GRANT_NET_ADMIN}");
        if choice == Block::Auto {
            tracing::warn!("warning: not blocking: {why}");
            return Ok(None);
        }
        return Err(why);
    }
    let mut failures = Vec::new();
    for &backend in candidates {
        match start_backend(backend, settings, metrics, protected, xdp) {
            Ok(started) => return Ok(Some(started)),
            Err(e) => failures.push(format!("{backend}: {e:#}")),
        }
    }
    if choice == Block::Auto {
        tracing::warn!(
            "warning: not blocking (detecting and reporting only): no backend works here; {}",
            failures.join("; ")
        );
        Ok(None)
    } else {
        Err(failures.join("; "))
    }
}

/// Whether this agent may set up firewall rules (or the XDP program's bans), and so
/// must be their only owner: any `--block` but `none`, where it holds CAP_NET_ADMIN
/// (without it, no rule can be touched: `auto` detects only, the others say why).
fn claims_firewall(block: Block) -> bool {
    block != Block::None
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .unwrap_or(false)
}

/// Opens one backend and starts the blocker on it.
fn start_backend(
    backend: Backend,
    settings: &BlockSettings,
    metrics: &Arc<Metrics>,
    protected: &dyn Fn(IpNet) -> bool,
    xdp: Option<&synwatch_xdp::Xdp>,
) -> anyhow::Result<(Blocker, Vec<Happened>)> {
    let policy = settings.policy;
    if let Some(why) = backend.refuses_ban_of(policy.duration_secs.max(policy.max_secs)) {
        anyhow::bail!(
            "invalid --ban {} / --ban-max {}: {why}",
            duration_text(policy.duration_secs),
            duration_text(policy.max_secs)
        );
    }
    let rules = |b| synwatch_enforce::open_system(b, settings.scope);
    let maps = || -> anyhow::Result<Box<dyn synwatch_enforce::Enforcer>> {
        let xdp = xdp.context("the XDP program is not running")?;
        Ok(Box::new(xdp.bans()?))
    };
    let enforcer = match backend {
        _ if settings.dry_run => Box::new(synwatch_enforce::DryRun { backend }),
        Backend::Xdp => maps()?,
        Backend::XdpNftables => Box::new(synwatch_enforce::Layered::new(
            backend,
            maps()?,
            rules(Backend::Nftables).context("nftables")?,
        )),
        other => rules(other).context("no such backend")?,
    };
    Blocker::start(
        enforcer,
        settings,
        Arc::clone(metrics),
        crate::clock::now(),
        protected,
    )
}

/// The capabilities the firewall programs synwatch runs need: CAP_NET_ADMIN for every
/// change, and CAP_NET_RAW for iptables, whose set match opens a raw socket to ipset.
fn backend_capabilities(backend: Backend) -> caps::CapsHashSet {
    let mut needed = caps::CapsHashSet::new();
    if backend == Backend::Xdp {
        // The ban maps are written through descriptors opened at start.
        return needed;
    }
    needed.insert(caps::Capability::CAP_NET_ADMIN);
    if backend == Backend::Iptables {
        needed.insert(caps::Capability::CAP_NET_RAW);
    }
    needed
}

/// Makes `wanted` capabilities this process holds ambient, so that the `nft`,
/// `iptables` and `ipset` it runs get them too when synwatch runs as an ordinary user
/// (file capabilities, or a container's added capabilities): a child of a non-root
/// process otherwise starts with none.
fn share_capabilities(wanted: &caps::CapsHashSet) {
    for &cap in wanted {
        if caps::has_cap(None, caps::CapSet::Permitted, cap).unwrap_or(false) {
            // Fails harmlessly where ambient capabilities do not exist.
            let _ = caps::raise(None, caps::CapSet::Inheritable, cap)
                .and_then(|()| caps::raise(None, caps::CapSet::Ambient, cap));
        }
    }
}

/// Gives up every capability once the capture handles, the listening sockets and the
/// firewall rules are set up, except what the blocking backend's programs need for
/// later bans and for setting the rules up again (kept ambient for them), and, when
/// `capturing` through libpcap, CAP_NET_RAW for the agent itself (not its children):
/// an interface deleted and created again is opened again (links.rs).
/// Drops every capability (effective, permitted, inheritable, ambient): for commands
/// that have opened their handles and need no privilege after.
pub fn drop_all_capabilities() {
    drop_capabilities(None, false);
}

fn drop_capabilities(blocking: Option<Backend>, capturing: bool) {
    let keep = blocking.map(backend_capabilities).unwrap_or_default();
    // Started as root, children would otherwise regain the whole bounding set.
    crate::privileges::limit_bounding(&keep);
    let mut own = keep.clone();
    if capturing {
        own.insert(caps::Capability::CAP_NET_RAW);
    }
    for (set, wanted) in [
        (caps::CapSet::Inheritable, &keep),
        (caps::CapSet::Effective, &own),
        (caps::CapSet::Permitted, &own),
    ] {
        if let Err(e) = caps::set(None, set, wanted) {
            tracing::warn!("warning: could not drop capabilities ({set:?}): {e}");
        }
    }
    let _ = caps::clear(None, caps::CapSet::Ambient);
    share_capabilities(&keep);
}

/// Writes what blocking did as events; a lifted ban also resets the source's detector
/// state, so that scanning again is a new scan, banned again.
fn report(
    happened: Vec<Happened>,
    backend: &str,
    dry_run: bool,
    events: &mut dyn EventSink,
    detector: &mut Detector,
) -> std::io::Result<()> {
    let ts = wall_nanos();
    // Ban times are agent time (clock.rs); the event says when on the wall clock.
    let wall = crate::clock::wall_offset();
    let mut result = Ok(());
    for h in happened {
        result = result.and(match h {
            Happened::Blocked(r) => events.block(&BlockEvent {
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
                // A range's sources are forgotten as the detector counts them (what it
                // keeps per address inside the range ends with its window).
                detector.forget(net.addr());
                events.unblock(ts, net, why)
            }
        });
    }
    result
}

/// Lifts bans on addresses that became protected (after a reload or an address change)
/// and reports them.
fn release_protected(
    blocker: &mut Blocker,
    detector: &mut Detector,
    host: &HostNow,
    events: &mut dyn EventSink,
) -> std::io::Result<()> {
    let happened = blocker.release_protected(crate::clock::now(), |n| {
        is_protected_net(n, detector, host).is_some()
    });
    report(
        happened,
        blocker.backend().as_str(),
        blocker.dry_run(),
        events,
        detector,
    )
}

/// Why `addr` must never be banned, asked at ban time: the host's addresses, gateways,
/// routers and resolvers as they are now, the configured local and allowlisted ranges,
/// special addresses (one rule: `protect.rs`).
/// A port scan or sweep: reported (saying why its source is never banned, where it is
/// protected), and banned unless protected (for new connections only when the source
/// holds a session with this host).
/// The live agent's end of the per-observation step: the log limiter, the event
/// writer, and the blocker (which takes scans, and activity of scans waiting for the cap).
struct LiveStep<'a, F: FnMut(IpAddr) -> bool> {
    limiter: &'a mut LogLimiter,
    events: &'a mut dyn EventSink,
    metrics: &'a Metrics,
    blocker: Option<&'a mut Blocker>,
    host_now: &'a HostNow,
    holds_session: &'a mut F,
    logged: &'a mut u64,
}

impl<F: FnMut(IpAddr) -> bool> StepSink for LiveStep<'_, F> {
    fn before(&mut self, obs: &Observation) -> std::io::Result<()> {
        match self.limiter.roll(obs.ts) {
            Some(held) => self.events.suppressed(&held),
            None => Ok(()),
        }
    }

    fn observed(&mut self, obs: &Observation) {
        // A scan waiting for the cap gains evidence, and shows it is active.
        if let Some(b) = self.blocker.as_deref_mut()
            && b.has_waiting()
        {
            // Agent time, as the cap counts (packet times are wall time).
            b.activity(obs.src, obs.dport, crate::clock::now());
        }
    }

    fn connection(&mut self, obs: &Observation, direction: Direction) -> std::io::Result<()> {
        if self.limiter.allow(obs.src) {
            *self.logged += 1;
            self.events.connection(&Connection {
                ts: obs.ts,
                src: obs.src,
                sport: obs.sport,
                dst: obs.dst,
                dport: obs.dport,
                direction,
            })
        } else {
            self.metrics
                .events_suppressed
                .fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn scan(&mut self, detector: &Detector, scan: &synwatch_detect::Scan) -> std::io::Result<()> {
        let seen = (detector, self.host_now, &mut *self.holds_session);
        on_scan(scan, seen, self.events, self.blocker.as_deref_mut())
    }
}

fn on_scan(
    scan: &synwatch_detect::Scan,
    (detector, host_now, holds_session): (&Detector, &HostNow, &mut impl FnMut(IpAddr) -> bool),
    events: &mut dyn EventSink,
    blocker: Option<&mut Blocker>,
) -> std::io::Result<()> {
    let protected = is_protected(scan.src, detector, host_now);
    let written = events.scan(scan, protected.map(Why::as_str));
    if let Some(b) = blocker {
        // The network the detector counted the source in (its /64 for IPv6), narrowed
        // to the address where it would cover a protected one.
        let wanted = scan.prefix.unwrap_or_else(|| IpNet::from(scan.src));
        let (target, protected) = {
            let snapshot = host_now.snapshot();
            protect::ban_target(scan.src, wanted, snapshot.view(detector.config()))
        };
        let session = protected.is_none() && holds_session(scan.src);
        let sweep = scan.kind == synwatch_detect::ScanKind::Sweep;
        b.note_scan(target, sweep, &scan.ports, scan.hosts.len());
        b.scan(
            scan.src,
            target,
            &scan.ports,
            crate::clock::now(),
            protected,
            session,
        );
    }
    written
}

fn is_protected(addr: IpAddr, detector: &Detector, host: &HostNow) -> Option<Why> {
    let snapshot = host.snapshot();
    protect::why(addr, snapshot.view(detector.config()))
}

/// Why `net` (an address or a range) must never be banned, and the protected address or
/// range it would cover (`protect::why_net`).
fn is_protected_net(net: IpNet, detector: &Detector, host: &HostNow) -> Option<(Why, IpNet)> {
    let snapshot = host.snapshot();
    protect::why_net(net, snapshot.view(detector.config()))
}

/// One read of what the protection rule needs from the host.
#[derive(Debug, Clone, Default)]
struct HostSnapshot {
    addresses: std::collections::BTreeSet<IpAddr>,
    infra: Infrastructure,
}

impl HostSnapshot {
    fn read() -> Self {
        Self::of(Host::read().unwrap_or_default())
    }

    fn of(host: Host) -> Self {
        Self {
            addresses: host.addresses,
            infra: Infrastructure::read(),
        }
    }

    fn view<'a>(&'a self, cfg: &'a synwatch_detect::Config) -> protect::View<'a> {
        protect::View {
            host: &self.addresses,
            infra: &self.infra,
            cfg,
        }
    }
}

/// The gateways, routers and resolvers, as the detector's neighbours: an IPv6 prefix
/// holding one counts its sources per address.
fn neighbours(infra: &Infrastructure) -> synwatch_detect::AddrSet {
    let mut set = synwatch_detect::AddrSet::new();
    for &addr in infra.by_addr.keys() {
        set.insert(ipnet::IpNet::from(addr));
    }
    set
}

/// The host's addresses and infrastructure for ban-time checks, read again when a
/// second old: fresh enough that an address added or a gateway changed a moment ago
/// counts, without reading them per ban when thousands of scanners arrive together.
#[derive(Debug, Default)]
struct HostNow {
    /// When the host was read (`None`: never) and what it was.
    read: std::cell::RefCell<(Option<Instant>, HostSnapshot)>,
}

impl HostNow {
    fn snapshot(&self) -> std::cell::Ref<'_, HostSnapshot> {
        let now = monotonic();
        let stale = self
            .read
            .borrow()
            .0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if stale {
            self.set(now, HostSnapshot::read());
        }
        std::cell::Ref::map(self.read.borrow(), |(_, snapshot)| snapshot)
    }

    /// Takes a host read elsewhere at `at`.
    fn set(&self, at: Instant, snapshot: HostSnapshot) {
        *self.read.borrow_mut() = (Some(at), snapshot);
    }
}

/// The interfaces the agent will watch: none with `--source sockets` (saying the named
/// ones are ignored), else the named ones (which must exist) or every one that is up.
/// The error is a usage error, one line.
pub fn interfaces(settings: &Settings, host: &Host) -> Result<Vec<String>, String> {
    if settings.source == Source::Sockets {
        if !settings.ifaces.is_empty() {
            tracing::warn!(
                "warning: --iface is ignored with --source sockets (the socket table is the whole host's)"
            );
        }
        return Ok(Vec::new());
    }
    choose_interfaces(&settings.ifaces, host)
}

/// Runs the agent until `io.stop` is set (or every source ends): `detector` is the
/// configured detection, `host` this host as read at start, `ifaces` what
/// [`interfaces`] chose. Sets up the sources, the blocker, the metrics and control
/// servers, then runs the loop; at the end removes what it set up and joins its threads.
pub fn run(
    run_settings: Settings,
    detector: synwatch_detect::Config,
    host: Host,
    ifaces: Vec<String>,
    io: Io,
) -> Result<Outcome> {
    let usage = |why: String| {
        tracing::error!("{why}");
        Ok(Outcome::Usage)
    };
    let Io {
        out,
        printer,
        events_shown_as,
        stop,
        reload,
        mut reread,
    } = io;
    let mut settings = detector;
    let from_sockets = run_settings.source == Source::Sockets;
    let fleet = if run_settings.crowdsec.enabled() {
        if run_settings.block == Block::None {
            tracing::warn!(
                "warning: the CrowdSec options are ignored with --block none (nothing to push, nothing to enforce)"
            );
            None
        } else {
            match run_settings.crowdsec.open() {
                Ok(o) => Some(o),
                Err(why) => return usage(why),
            }
        }
    } else {
        None
    };
    // Before any rule or XDP program is touched: one agent per network namespace.
    if claims_firewall(run_settings.block)
        && let Err(e) = crate::owner::claim()
    {
        return usage(e.to_string());
    }
    let mut configured_locals = settings.locals.clone();
    settings.locals = host.locals(&configured_locals);
    settings.neighbours = neighbours(&Infrastructure::read());

    // XDP first: where it attaches, it observes instead of libpcap.
    let xdp_blocking = matches!(run_settings.block, Block::Xdp | Block::XdpNftables);
    let xdp_observing = matches!(run_settings.source, Source::Auto | Source::Xdp);
    let mut xdp = None;
    let mut xdp_fallback = None;
    if !from_sockets && (xdp_observing || xdp_blocking) {
        let options = crate::xdp::options(
            &settings,
            xdp_observing,
            (xdp_blocking && !run_settings.blocking.dry_run)
                .then_some((&run_settings.blocking, true)),
        );
        match crate::xdp::start(&ifaces, run_settings.xdp_mode.mode(), options) {
            Ok(x) => xdp = Some(x),
            Err(e) => {
                if let Some(log) = e.verifier_log() {
                    tracing::warn!("the verifier's log:\n{log}");
                }
                if run_settings.source == Source::Xdp || xdp_blocking {
                    let option = if xdp_blocking {
                        format!("--block {}", run_settings.block.as_str())
                    } else {
                        "--source xdp".to_owned()
                    };
                    return usage(format!("cannot use XDP ({option}): {e}"));
                }
                // Said once libpcap is open: if it cannot open either, that is the error.
                xdp_fallback = Some(format!(
                    "XDP is not available, watching through libpcap instead: {e}"
                ));
            }
        }
    }
    let xdp_source = xdp.is_some() && xdp_observing;

    let no_interfaces: &[String] = &[];
    let pcap_ifaces = if xdp_source { no_interfaces } else { &ifaces };
    let captures = match open_all(pcap_ifaces, &LiveOptions::default()) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => {
            return usage(format!(
                "{e}; or, without capture, read the socket table with --source sockets"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(line) = xdp_fallback {
        tracing::warn!("{line}");
    }
    let socket_source = if from_sockets {
        let (source, warnings) = SocketSource::open(run_settings.poll)?;
        for w in warnings {
            tracing::warn!("warning: {w}");
        }
        Some(source)
    } else {
        None
    };
    let watching = match (&socket_source, &xdp) {
        (Some(s), _) => s.describe(),
        (None, Some(x)) if xdp_source => crate::xdp::describe(x),
        (None, _) => ifaces.join(", "),
    };
    let listener = match metrics::bind(run_settings.metrics_addr) {
        Ok(l) => l,
        Err(e) => {
            return usage(format!(
                "cannot serve metrics on {}: {e} (choose another with --metrics-addr)",
                run_settings.metrics_addr
            ));
        }
    };
    // With the default every-interface watch, interfaces that come up later get a slot.
    let discovering = run_settings.ifaces.is_empty() && !from_sockets;
    let spare = if discovering { links::SPARE_SLOTS } else { 0 };
    let metrics = Arc::new(Metrics::with_spare(&ifaces, spare));
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_MESSAGES);
    // The control socket first: a second agent on the same state directory must stop
    // before it touches the first one's firewall rules.
    let control_listener = if run_settings.block == Block::None {
        None
    } else {
        let dir = &run_settings.blocking.state_dir;
        if let Err(e) = crate::state::create_dir_private(dir) {
            return usage(format!("{e:#} (choose another with --state-dir)"));
        }
        match control::bind(dir) {
            Ok(l) => Some(l),
            Err(e) => return usage(format!("{e:#}")),
        }
    };
    let host_now = HostNow::default();
    let protected_at_start = {
        let detector = Detector::new(settings.clone());
        let host_now = &host_now;
        move |n: IpNet| is_protected_net(n, &detector, host_now).is_some()
    };
    // The firewall programs run during set-up need the capabilities already.
    share_capabilities(
        &backend_capabilities(Backend::Iptables)
            .union(&backend_capabilities(Backend::Nftables))
            .copied()
            .collect(),
    );
    let (mut blocker, lapsed) = match start_blocking(
        run_settings.block,
        &run_settings.blocking,
        &metrics,
        &protected_at_start,
        xdp.as_ref(),
    ) {
        Ok(Some((b, lapsed))) => (Some(b), lapsed),
        Ok(None) => (None, Vec::new()),
        Err(why) => {
            if let Some(dir) = control_listener
                .as_ref()
                .map(|_| &run_settings.blocking.state_dir)
            {
                let _ = std::fs::remove_file(control::socket_path(dir));
            }
            return usage(format!(
                "cannot block with --block {}: {why}",
                run_settings.block.as_str()
            ));
        }
    };
    let _ = metrics
        .backend
        .set(blocker.as_ref().map_or("none", |b| b.backend().as_str()));
    // In a dry run the program neither detects nor drops: nothing is applied.
    let blocks_in_xdp = blocker.as_ref().is_some_and(|b| {
        !b.dry_run() && matches!(b.backend(), Backend::Xdp | Backend::XdpNftables)
    });
    if let Some(x) = xdp.as_mut() {
        let options = crate::xdp::options(
            &settings,
            xdp_source,
            blocks_in_xdp.then_some((&run_settings.blocking, true)),
        );
        if blocks_in_xdp && options.detection.is_none() {
            tracing::warn!(
                "warning: the XDP program detects scans itself only with a --max-ports of 15 or less and --direction in or both; scanners are banned from user space instead, a few packets later"
            );
        }
        crate::xdp::apply(x, options, host_now.snapshot().view(&settings))
            .context("cannot configure the XDP program")?;
    }
    drop_capabilities(
        blocker
            .as_ref()
            .filter(|b| !b.dry_run())
            .map(Blocker::backend),
        !pcap_ifaces.is_empty() || discovering && !xdp_source,
    );
    // The rule check and counters of nftables and iptables run on a thread of their own
    // (upkeep.rs), started with the privileges just kept.
    if let Some(b) = blocker.as_mut().filter(|b| !b.dry_run())
        && let Some(checker) = matches!(b.backend(), Backend::Nftables | Backend::Iptables)
            .then(|| synwatch_enforce::open_system(b.backend(), run_settings.blocking.scope))
            .flatten()
    {
        b.check_from_thread(checker);
    }
    if let Some(b) = blocker.as_mut() {
        let tx = tx.clone();
        // A full queue means the pipeline is busy and collects the chunk on a turn soon.
        b.write_from_thread(Box::new(move || {
            let _ = tx.try_send(Msg::Applied);
        }));
    }
    let mut shown = run_settings.clone();
    // With port 0 the kernel picks one: say which.
    shown.metrics_addr = listener.local_addr().unwrap_or(run_settings.metrics_addr);
    let locals: Vec<IpAddr> = host.addresses.iter().copied().collect();
    let blocking = match &blocker {
        Some(b) => blocking_text(b, &run_settings.blocking),
        None if run_settings.block == Block::None => {
            "none (--block none: detect and report only).".to_owned()
        }
        None => "none (see the warning above): detecting and reporting only.".to_owned(),
    };
    let infra = host_now.snapshot().infra.describe();
    banner(
        &watching,
        &settings,
        &shown,
        &blocking,
        &locals,
        &infra,
        events_shown_as,
    );

    metrics::serve(listener, Arc::clone(&metrics), Arc::clone(&stop))
        .context("cannot start the metrics server")?;
    // Without blocking the socket is not bound, and `synwatch blocks` says no agent runs.
    if let (Some(l), Some(_)) = (control_listener, &blocker) {
        control::serve(l, tx.clone(), Msg::Call)?;
    } else if run_settings.block != Block::None {
        let _ = std::fs::remove_file(control::socket_path(&run_settings.blocking.state_dir));
    }

    let mut workers = Vec::new();
    workers.extend(start_captures(
        captures,
        &ifaces,
        discovering && !xdp_source,
        !run_settings.ifaces.is_empty(),
        &stop,
        &metrics,
        &tx,
    )?);
    let socket_counters = Arc::new(SocketCounters::default());
    if let Some(source) = socket_source {
        let (stop, tx, counters) = (Arc::clone(&stop), tx.clone(), Arc::clone(&socket_counters));
        let metrics = Arc::clone(&metrics);
        let handle = thread::Builder::new()
            .name("sockets".into())
            .spawn(move || {
                crate::sockets::run(source, &stop, &counters, wall_nanos, monotonic, |batch| {
                    offer(&tx, batch, &metrics)
                });
            })
            .context("cannot start the socket table thread")?;
        workers.push(("the socket table".to_owned(), handle));
    }
    if let Some(x) = xdp.as_mut() {
        let ring = x
            .ring()
            .context("cannot read the XDP program's ring buffer")?;
        let slots = x.slots();
        let (stop, metrics) = (Arc::clone(&stop), Arc::clone(&metrics));
        let (batches, bans) = (tx.clone(), tx.clone());
        let handle = thread::Builder::new()
            .name("xdp".into())
            .spawn(move || {
                crate::xdp::run(
                    ring,
                    &stop,
                    &metrics,
                    &slots,
                    xdp_source,
                    |batch| offer(&batches, batch, &metrics),
                    |banned| bans.send(Msg::KernelBans(banned)).is_ok(),
                );
            })
            .context("cannot start the XDP thread")?;
        workers.push(("the XDP ring buffer".to_owned(), handle));
    }
    let fleet_threads = match (fleet, blocker.as_mut()) {
        (Some(opened), Some(b)) => {
            crate::crowdsec::start(opened, &run_settings.crowdsec, b, &metrics, &stop, {
                let (tx, stop) = (tx.clone(), Arc::clone(&stop));
                move |pull| {
                    let mut msg = Msg::Fleet(pull);
                    loop {
                        match tx.try_send(msg) {
                            Ok(()) => return true,
                            Err(mpsc::TrySendError::Full(m)) if !stop.load(Ordering::Relaxed) => {
                                msg = m;
                                thread::sleep(Duration::from_millis(20));
                            }
                            Err(_) => return false,
                        }
                    }
                }
            })?
        }
        _ => crate::crowdsec::Threads::default(),
    };
    drop(tx);

    // Sweeps need the answers: libpcap sees what the host sends back, the XDP program
    // and the socket table do not.
    settings.sweeps = !xdp_source && !from_sockets;
    let mut detector = Detector::new(settings.clone());
    let mut limiter = LogLimiter::new(run_settings.log_limit_source, run_settings.log_limit_global);
    // Events reach stdout through a bounded queue and a thread of their own: a reader
    // that stalls or goes away costs events (counted), never detection or bans.
    let queue = EventQueue::start(out, Arc::clone(&metrics))
        .context("cannot start the stdout writer thread")?;
    let drainer = queue.drainer();
    let mut events = printer(queue);
    let events = &mut *events;
    let backend_name = blocker.as_ref().map_or("none", |b| b.backend().as_str());
    let dry_run = blocker.as_ref().is_some_and(Blocker::dry_run);
    let mut output: std::io::Result<()> =
        report(lapsed, backend_name, dry_run, events, &mut detector);
    let mut next_refresh = monotonic() + ADDRESS_REFRESH;
    // A source holding an established connection is banned for new connections only
    // (with --block-scope new every ban is, so the socket table is not read).
    let mut sessions =
        (blocker.is_some() && run_settings.blocking.scope == Scope::All).then(Sessions::open);
    let mut holds_session =
        move |a: IpAddr| sessions.as_mut().is_some_and(|s| s.holds(a, monotonic()));
    let mut known_infra = host_now.snapshot().infra.clone();
    let mut next_link_check = monotonic() + links::CHECK_EVERY;
    let mut xdp_links = links::XdpLinks::default();
    let mut logged = 0u64;
    // The loop runs until the capture threads have ended and their last batches are
    // handled (the control thread's sender never disconnects, so that is checked).
    let mut draining = false;
    // Bans go to the kernel at once when none went for APPLY_EVERY (the first scanner of
    // a quiet spell is banned within the batch that made it one), then at most every
    // APPLY_EVERY while packets keep coming, so that a burst of them is one kernel
    // transaction; expiry and the rest of the upkeep run at that pace, or when idle.
    let mut applied_at = monotonic();
    let mut pushed_at = applied_at.checked_sub(APPLY_EVERY).unwrap_or(applied_at);
    let mut idle;
    let mut turn_started: Option<Instant> = None;
    loop {
        if let Some(t) = turn_started.take() {
            metrics.record_turn(monotonic().saturating_duration_since(t));
        }
        let msg = if draining {
            match rx.try_recv() {
                Ok(m) => Ok(m),
                Err(_) => break,
            }
        } else {
            // Bans waiting to be put back go a chunk every APPLY_EVERY, traffic or not.
            let wait = if blocker.as_ref().is_some_and(Blocker::has_pending) {
                APPLY_EVERY
            } else {
                Duration::from_millis(200)
            };
            rx.recv_timeout(wait)
        };
        idle = draining;
        turn_started = Some(monotonic());
        match msg {
            Ok(Msg::Batch(batch)) => {
                metrics
                    .queued
                    .fetch_sub(batch.len() as u64, Ordering::Relaxed);
                let mut sink = LiveStep {
                    limiter: &mut limiter,
                    events,
                    metrics: &metrics,
                    blocker: blocker.as_mut(),
                    host_now: &host_now,
                    holds_session: &mut holds_session,
                    logged: &mut logged,
                };
                for obs in &batch {
                    output = output.and(step(&mut detector, obs, &mut sink));
                }
            }
            Ok(Msg::KernelBans(KernelBans(banned))) => {
                if let Some(b) = blocker.as_mut() {
                    let now = crate::clock::now();
                    for (net, addr) in banned {
                        if !b.confirm_kernel_ban(net, now, holds_session(addr)) {
                            tracing::warn!(
                                "the XDP program banned {net}, but the detector did not (see above); lifting it"
                            );
                        }
                    }
                }
            }
            Ok(Msg::Call(call)) => {
                if let Some(b) = blocker.as_mut() {
                    let (mut reply, happened) =
                        b.control(&call.request, crate::clock::now(), |a| {
                            is_protected_net(a, &detector, &host_now)
                        });
                    crate::clock::wall_offset().bans_to_wall(&mut reply.bans);
                    output = output.and(report(
                        happened,
                        backend_name,
                        dry_run,
                        events,
                        &mut detector,
                    ));
                    let _ = call.reply.send(reply);
                }
            }
            Ok(Msg::Fleet(pull)) => {
                if let Some(b) = blocker.as_mut() {
                    let happened = b.pulled(pull, crate::clock::now(), |a| {
                        is_protected_net(a, &detector, &host_now)
                    });
                    output = output.and(report(
                        happened,
                        backend_name,
                        dry_run,
                        events,
                        &mut detector,
                    ));
                }
            }
            Ok(Msg::Applied) | Err(mpsc::RecvTimeoutError::Timeout) => idle = true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Sweeps become known when their attempts' answer time runs out, packets or not.
        if detector.poll_at().is_some_and(|at| at <= wall_nanos()) {
            for scan in detector.tick(wall_nanos()) {
                let seen = (&detector, &host_now, &mut holds_session);
                output = output.and(on_scan(&scan, seen, events, blocker.as_mut()));
            }
        }
        let now = monotonic();
        if let Some(b) = blocker.as_mut()
            && (idle
                || now.duration_since(applied_at) >= APPLY_EVERY
                || (b.has_pending() && now.duration_since(pushed_at) >= APPLY_EVERY))
        {
            applied_at = now;
            // Waiting scans whose source was quiet for a whole window have ended.
            let quiet_secs = (detector.config().window + 999_999_999) / 1_000_000_000;
            b.promote(
                crate::clock::now(),
                quiet_secs,
                |a| is_protected_net(a, &detector, &host_now).is_some(),
                &mut holds_session,
            );
            if b.has_pending() {
                pushed_at = now;
            }
            let happened = b.apply(crate::clock::now());
            output = output.and(report(
                happened,
                backend_name,
                dry_run,
                events,
                &mut detector,
            ));
        }
        // Live events go out as they happen, not when a buffer fills.
        output = output.and(events.flush());
        metrics.record_detector(&detector.stats(), detector.tracked_sources());
        if output.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        if workers.iter().all(|(_, h)| h.is_finished()) {
            // Capture has ended (stopped, or every interface failed): take what the
            // threads sent last, then stop.
            draining = true;
        }
        if reload.swap(false, Ordering::Relaxed)
            && let Some((configured, fresh_run)) = reload_config(reread(), &mut detector)
        {
            configured_locals = configured;
            if let Some(b) = blocker.as_mut() {
                b.set_policy(fresh_run.blocking.policy);
                output = output.and(release_protected(b, &mut detector, &host_now, events));
            }
            if let Some(x) = xdp.as_mut() {
                let options = crate::xdp::options(
                    detector.config(),
                    xdp_source,
                    blocks_in_xdp.then_some((&fresh_run.blocking, true)),
                );
                reconfigure_xdp(x, options, &detector, &host_now);
            }
        }
        if now >= next_link_check
            && let Some(x) = xdp.as_mut()
        {
            next_link_check = now + links::CHECK_EVERY;
            links::check_xdp(
                x,
                run_settings.xdp_mode.mode(),
                &mut xdp_links,
                &metrics,
                !run_settings.ifaces.is_empty(),
                discovering,
            );
        }
        if now >= next_refresh {
            next_refresh = now + ADDRESS_REFRESH;
            if let Ok(fresh) = Host::read() {
                let mut cfg = detector.config().clone();
                cfg.locals = fresh.locals(&configured_locals);
                let snapshot = HostSnapshot::of(fresh);
                cfg.neighbours = neighbours(&snapshot.infra);
                let infra_changed = snapshot.infra != known_infra;
                if infra_changed {
                    tracing::info!(
                        "this host's gateways, routers and resolvers (never blocked) are now: {}",
                        snapshot.infra.describe()
                    );
                    known_infra = snapshot.infra.clone();
                }
                host_now.set(now, snapshot);
                let locals_changed = cfg.locals != detector.config().locals;
                if locals_changed || cfg.neighbours != detector.config().neighbours {
                    detector.reconfigure(cfg);
                }
                if (locals_changed || infra_changed)
                    && let Some(b) = blocker.as_mut()
                {
                    output = output.and(release_protected(b, &mut detector, &host_now, events));
                }
                if let Some(x) = xdp.as_mut() {
                    reconfigure_xdp(x, x.options(), &detector, &host_now);
                }
            }
        }
    }
    // Only a signal stops the agent: anything else that ended the loop (every source
    // gone) is a failure, never exit 0, so that a supervisor restarts it.
    let asked_to_stop = stop.swap(true, Ordering::Relaxed);
    fleet_threads.join();
    if let Some(mut b) = blocker.take() {
        // Bans decided in the last moments are saved (and reported) before stopping.
        let happened = b.apply_all(crate::clock::now());
        output = output.and(report(
            happened,
            backend_name,
            dry_run,
            events,
            &mut detector,
        ));
        output = output.and(events.flush());
        b.stop();
        let _ = std::fs::remove_file(control::socket_path(&run_settings.blocking.state_dir));
    }
    output = output.and(events.flush());
    // The last events get a moment to reach a reader that reads; one that does not
    // cannot hold the exit.
    if !drainer.drain(FINAL_OUTPUT_WAIT) {
        tracing::warn!("warning: stdout did not take the last events; exiting without them");
    }

    let mut lines = Vec::new();
    for (name, handle) in workers {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread for {name} failed"))?;
    }
    for iface in metrics.interfaces.iter().filter(|i| i.in_use()) {
        let decode_errors: u64 = DecodeError::ALL
            .iter()
            .map(|k| metrics.decode_errors[k.index()].load(Ordering::Relaxed))
            .sum();
        lines.push(if xdp_source {
            format!(
                "  {} (XDP): {} packets seen by the program, {} probes lost (ring buffer full)",
                iface.name(),
                iface.packets.load(Ordering::Relaxed),
                iface.drops.load(Ordering::Relaxed),
            )
        } else {
            format!(
                "  {}: {} packets passed the filter, {} dropped by the kernel; {} undecodable in all",
                iface.name(),
                iface.packets.load(Ordering::Relaxed),
                iface.drops.load(Ordering::Relaxed),
                decode_errors,
            )
        });
    }
    if blocks_in_xdp {
        lines.push(format!(
            "  XDP: {} scanners banned by the program itself",
            metrics.xdp_kernel_bans.load(Ordering::Relaxed)
        ));
    }
    // Detaches the program from every interface.
    drop(xdp);
    if from_sockets {
        let c = &socket_counters;
        lines.push(format!(
            "  socket table: {} reads ({} failed), {} connections ({} seen only as they closed)",
            c.dumps.load(Ordering::Relaxed),
            c.dump_failures.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed),
            c.brief.load(Ordering::Relaxed),
        ));
    }
    let s = detector.stats();
    tracing::info!(
        "stopped.\n{}\n  attempts: {} incoming, {} outgoing, {} retransmissions, {} stealth probes; {} connections logged, {} held back by the log limit\n  scans: {}; sources tracked: {} ({} evicted); bans applied: {}, lifted: {}, refused: {}",
        lines.join("\n"),
        s.attempts_in,
        s.attempts_out,
        s.retransmissions + metrics.xdp_retransmissions.load(Ordering::Relaxed),
        s.stealth_probes,
        logged,
        metrics.events_suppressed.load(Ordering::Relaxed),
        s.scans,
        detector.tracked_sources(),
        s.sources_evicted,
        metrics.blocks.load(Ordering::Relaxed),
        metrics.unblocks.load(Ordering::Relaxed),
        metrics.bans_refused_allowlisted.load(Ordering::Relaxed)
            + metrics.bans_refused_rate.load(Ordering::Relaxed),
    );
    // Event output cannot fail here (see event_queue.rs): stdout's troubles are
    // counted, and never end the agent.
    match output {
        Err(e) => Err(anyhow::Error::new(e).context("cannot write events to stdout")),
        Ok(()) if !asked_to_stop => Err(anyhow::anyhow!(
            "every source of connections ended (see above) without being asked to stop"
        )),
        Ok(()) => Ok(Outcome::Stopped),
    }
}

/// Starts a capture thread for each interface opened at start, each watching its
/// interface until the agent stops (reopening it when it returns; see links.rs), and,
/// with `discover`, a thread that watches interfaces that come up later.
fn start_captures(
    captures: Vec<LiveCapture>,
    ifaces: &[String],
    discover: bool,
    required: bool,
    stop: &Arc<AtomicBool>,
    metrics: &Arc<Metrics>,
    tx: &mpsc::SyncSender<Msg>,
) -> Result<Vec<(String, thread::JoinHandle<()>)>> {
    let send = {
        let (tx, metrics) = (tx.clone(), Arc::clone(metrics));
        move |batch| offer(&tx, batch, &metrics)
    };
    let watch = Arc::new(links::Watch {
        stop: Arc::clone(stop),
        metrics: Arc::clone(metrics),
        options: LiveOptions::default(),
        required,
        send,
    });
    let mut workers = Vec::new();
    for (slot, cap) in captures.into_iter().enumerate() {
        let name = cap.iface().to_owned();
        let watch = Arc::clone(&watch);
        let thread_name = name.clone();
        let handle = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || links::supervise(&thread_name, slot, Some(cap), &watch))
            .context("cannot start a capture thread")?;
        workers.push((name, handle));
    }
    if discover {
        let watched = ifaces.to_vec();
        let handle = thread::Builder::new()
            .name("interfaces".into())
            .spawn(move || links::discover(&watched, &watch))
            .context("cannot start the interface watch thread")?;
        workers.push(("new interfaces".to_owned(), handle));
    }
    Ok(workers)
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

/// A reload request: applies the configuration read again (`None`: nothing to apply,
/// already said why) to the running detector, thresholds and address lists, keeping its
/// state. Returns the newly configured (not discovered) local addresses.
fn reload_config(
    fresh: Option<Reread>,
    detector: &mut Detector,
) -> Option<(synwatch_detect::AddrSet, Settings)> {
    let Reread {
        path,
        detector: mut cfg,
        settings,
    } = fresh?;
    let configured = cfg.locals.clone();
    let host = Host::read().unwrap_or_default();
    cfg.locals = host.locals(&configured);
    cfg.neighbours = detector.config().neighbours.clone();
    cfg.sweeps = detector.config().sweeps;
    tracing::info!(
        "reloaded {}: a scan is more than {} ports within {} s; {} allowlisted ranges",
        path.display(),
        cfg.max_ports,
        cfg.window as f64 / 1e9,
        cfg.allow.len()
    );
    detector.reconfigure(cfg);
    Some((configured, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` SYNs of one source, as a capture thread hands them over.
    fn obs(n: usize) -> Vec<Observation> {
        vec![
            Observation {
                ts: 0,
                src: IpAddr::from([192, 0, 2, 9]),
                dst: IpAddr::from([192, 0, 2, 1]),
                sport: 1,
                dport: 22,
                flags: synwatch_decode::TcpFlags(synwatch_decode::TcpFlags::SYN),
            };
            n
        ]
    }

    #[test]
    fn a_full_queue_to_the_pipeline_drops_and_counts_instead_of_growing() {
        let metrics = Metrics::new(&[]);
        let (tx, rx) = mpsc::sync_channel::<Msg>(2);
        assert!(offer(&tx, obs(10), &metrics));
        assert!(offer(&tx, obs(10), &metrics));
        // Full: the third batch is dropped and counted, the capture thread goes on.
        assert!(offer(&tx, obs(7), &metrics));
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        assert_eq!(metrics.queued.load(Ordering::Relaxed), 20);
        assert_eq!(rx.try_iter().count(), 2);
        drop(rx);
        assert!(!offer(&tx, obs(1), &metrics), "the pipeline has gone");
    }

    #[test]
    fn the_queue_is_bounded_by_observations_not_batches() {
        let metrics = Metrics::default();
        let (tx, rx) = mpsc::sync_channel::<Msg>(100);
        assert!(offer_within(&tx, obs(10), &metrics, 25));
        assert!(offer_within(&tx, obs(10), &metrics, 25));
        // 27 would be held: dropped and counted, though the channel has room.
        assert!(offer_within(&tx, obs(7), &metrics, 25));
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        // The pipeline takes a batch: there is room again.
        let Ok(Msg::Batch(b)) = rx.try_recv() else {
            panic!("a batch")
        };
        metrics.queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
        assert!(offer_within(&tx, obs(7), &metrics, 25));
        assert_eq!(metrics.queued.load(Ordering::Relaxed), 17);
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        // Many tiny batches fit where a bound in batches would have dropped them.
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_MESSAGES);
        let metrics = Metrics::default();
        for _ in 0..5_000 {
            assert!(offer(&tx, obs(1), &metrics));
        }
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(rx.try_iter().count(), 5_000);
    }
}
