//! Starting the agent, in the order that keeps a refusal cheap: the CrowdSec client and
//! the claim on this network namespace, the XDP program and the capture handles (a
//! missing privilege or a wrong name stops the agent before it claims to be watching
//! anything), the listening sockets, the blocker (which sets up the firewall), then the
//! privileges are dropped, the banner said, and the threads started. What it returns,
//! [`Running`], is the loop (`core.rs`) with the threads it joins at the end.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use anyhow::Context;
use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions};
use synwatch_enforce::{Backend, Scope};

use super::backend::start_blocking;
use super::caps::{backend_capabilities, claims_firewall, drop_capabilities, share_capabilities};
use super::core::{Core, Parts, XdpRunning};
use super::feed::{Feed, Msg};
use super::host_now::{HostNow, is_protected_net, neighbours};
use super::seams::{Clock, SystemClock, SystemHost};
use super::{Block, Io, Settings, Source, open_all};
use crate::block::{Blocker, Happened};
use crate::control;
use crate::event_queue::{Drainer, EventQueue};
use crate::host::{Host, Sessions};
use crate::links;
use crate::metrics::{self, Metrics};
use crate::sockets::{SocketCounters, SocketSource};

/// Why the agent did not start.
pub(super) enum Refusal {
    /// A usage error, said once (exit 2 in the binary).
    Usage(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

fn usage<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Usage(why.into()))
}

/// The running agent: its loop, and the threads it joins when the loop ends.
pub(super) struct Running {
    pub(super) core: Core,
    pub(super) rx: std::sync::mpsc::Receiver<Msg>,
    pub(super) stop: Arc<AtomicBool>,
    /// The sources' threads, each with what it watches.
    pub(super) workers: Vec<(String, thread::JoinHandle<()>)>,
    /// The metrics server's and the control socket's accepting threads.
    pub(super) servers: Vec<(&'static str, thread::JoinHandle<()>)>,
    /// Set once blocking has stopped, to end the control socket's thread (see
    /// [`serve_control`]).
    pub(super) control_stop: Arc<AtomicBool>,
    pub(super) fleet_threads: crate::crowdsec::Threads,
    /// Waits for stdout to take the last events.
    pub(super) drainer: Drainer,
    pub(super) state_dir: PathBuf,
}

/// Where connections come from: the XDP program, libpcap's handles or the socket table.
struct Sources {
    xdp: Option<synwatch_xdp::Xdp>,
    /// The XDP program observes (rather than libpcap).
    xdp_source: bool,
    captures: Vec<LiveCapture>,
    /// Interfaces opened through libpcap.
    pcap: bool,
    sockets: Option<SocketSource>,
    /// What is watched, for the banner.
    watching: String,
}

impl Sources {
    /// The XDP program, to keep current from the loop.
    fn running(&mut self, run: &Settings, blocking: bool, discovering: bool) -> Option<XdpRunning> {
        self.xdp.take().map(|xdp| XdpRunning {
            xdp,
            observing: self.xdp_source,
            blocking,
            mode: run.xdp_mode.mode(),
            links: links::XdpLinks::default(),
            required: !run.ifaces.is_empty(),
            discovering,
        })
    }
}

/// What the blocker set up, or why nothing is blocked.
struct Blocking {
    blocker: Option<Blocker>,
    /// Saved bans that ended while no agent ran.
    lapsed: Vec<Happened>,
    /// The XDP program bans by itself.
    in_xdp: bool,
}

/// What set-up opened and decided before anything runs.
struct Opened {
    run: Settings,
    /// The detector's configuration, this host's addresses and neighbours included.
    cfg: synwatch_detect::Config,
    /// The local ranges as configured.
    configured_locals: synwatch_detect::AddrSet,
    clock: Rc<dyn Clock>,
    host_now: HostNow,
    fleet: Option<crate::crowdsec::Opened>,
    /// The CrowdSec LAPI server's addresses (protected), where it is used.
    lapi: Option<crate::crowdsec::host::LapiAddrs>,
    /// The routes as listed, shared by the set-up's host view and the loop's.
    routes: crate::host::Routes,
    sources: Sources,
    /// The metrics server's socket.
    listener: metrics::Socket,
    /// The control socket, where something is blocked.
    control: Control,
    metrics: Arc<Metrics>,
    blocking: Blocking,
    /// Interfaces that come up later are watched too.
    discovering: bool,
}

/// Sets the agent up (see the module's documentation) and starts its threads.
pub(super) fn start(
    run: Settings,
    detector: synwatch_detect::Config,
    host: Host,
    ifaces: Vec<String>,
    io: Io,
) -> Result<Running, Refusal> {
    let opened = open(run, detector, &host, &ifaces)?;
    announce(&opened, &host, io.events_shown_as);
    launch(opened, io)
}

/// Opens everything that needs a privilege, and drops the privileges after.
fn open(
    run: Settings,
    detector: synwatch_detect::Config,
    host: &Host,
    ifaces: &[String],
) -> Result<Opened, Refusal> {
    let fleet = open_fleet(&run)?;
    // Before any rule or XDP program is touched: one agent per network namespace.
    if claims_firewall(run.block)
        && let Err(e) = crate::owner::claim()
    {
        return usage(e.to_string());
    }
    let clock: Rc<dyn Clock> = Rc::new(SystemClock);
    // The LAPI server is protected like a gateway (SPEC §2).
    let lapi = fleet
        .as_ref()
        .and_then(|f| crate::crowdsec::host::LapiAddrs::start(f.client.base()));
    let routes = crate::host::Routes::default();
    routes.watch();
    let host_now = HostNow::new(
        Box::new(SystemHost {
            sessions: None,
            lapi: lapi.clone(),
            routes: routes.clone(),
        }),
        Rc::clone(&clock),
    );
    let configured_locals = detector.locals.clone();
    let mut cfg = detector;
    cfg.locals = host.locals(&configured_locals);
    cfg.neighbours = neighbours(&host_now.infrastructure());

    let mut sources = open_sources(&run, &cfg, ifaces)?;
    let listener = bind_metrics(run.metrics_addr);
    // With the default every-interface watch, interfaces that come up later get a slot.
    let discovering = run.ifaces.is_empty() && run.source != Source::Sockets;
    let spare = if discovering { links::SPARE_SLOTS } else { 0 };
    let metrics = Arc::new(Metrics::with_spare(ifaces, spare));
    // The control socket first: a second agent on the same state directory must stop
    // before it touches the first one's firewall rules.
    let control = bind_control(&run)?;
    let mut blocking = start_blocker(&run, &cfg, &metrics, &host_now, &mut sources)?;
    // Without blocking the socket is not served, and `synwatch blocks` says no agent runs.
    if blocking.blocker.is_none() && matches!(control, Control::Bound(_)) {
        let _ = std::fs::remove_file(control::socket_path(&run.blocking.state_dir));
    }
    drop_capabilities(
        blocking
            .blocker
            .as_ref()
            .filter(|b| !b.dry_run())
            .map(Blocker::backend),
        sources.pcap || discovering && !sources.xdp_source,
    );
    start_rule_check(&run, blocking.blocker.as_mut(), sources.xdp.as_ref());
    Ok(Opened {
        run,
        cfg,
        configured_locals,
        clock,
        host_now,
        fleet,
        lapi,
        routes,
        sources,
        listener,
        control,
        metrics,
        blocking,
        discovering,
    })
}

/// The banner, saying what is watched and how.
fn announce(o: &Opened, host: &Host, events_shown_as: &str) {
    let mut shown = o.run.clone();
    // With port 0 the kernel picks one: say which.
    if let metrics::Socket::Bound(l) = &o.listener {
        shown.metrics_addr = l.local_addr().unwrap_or(o.run.metrics_addr);
    }
    let mut cfg = o.cfg.clone();
    cfg.sweeps = sees_answers(&o.sources, &o.run);
    super::banner::say(
        &o.sources.watching,
        &cfg,
        &shown,
        o.blocking.blocker.as_ref(),
        host,
        &o.host_now.snapshot().infra.describe(),
        events_shown_as,
    );
}

/// Whether sweeps can be looked for: they need the answers, and libpcap sees what the
/// host sends back where the XDP program and the socket table do not.
fn sees_answers(sources: &Sources, run: &Settings) -> bool {
    !sources.xdp_source && run.source != Source::Sockets
}

/// Starts the servers, the sources' threads and the event writer, and hands the loop
/// what it runs with.
fn launch(mut o: Opened, io: Io) -> Result<Running, Refusal> {
    let run = &o.run;
    let (feed, rx) = Feed::channel(Arc::clone(&o.metrics));
    let mut servers = vec![(
        "the metrics server",
        metrics::serve(o.listener, Arc::clone(&o.metrics), Arc::clone(&io.stop))
            .context("cannot start the metrics server")?,
    )];
    let mut control_stop = Arc::default();
    let listener = match o.control {
        Control::Bound(l) => Some(Some(l)),
        Control::Later => Some(None),
        Control::Off => None,
    };
    if let (Some(l), Some(_)) = (listener, &o.blocking.blocker) {
        let (thread, stop) = serve_control(l, &run.blocking.state_dir, &feed)?;
        servers.push(("the control socket", thread));
        control_stop = stop;
    }
    if let Some(b) = o.blocking.blocker.as_mut() {
        let tx = feed.sender();
        // A full queue means the pipeline is busy and collects the chunk on a turn soon.
        b.write_from_thread(Box::new(move || {
            let _ = tx.try_send(Msg::Applied);
        }));
    }
    let routes_tx = feed.sender();
    let threads = start_threads(run, &mut o.sources, &feed, &io.stop, o.discovering)?;
    let fleet_threads = start_fleet(o.fleet, run, o.blocking.blocker.as_mut(), &feed, &io.stop)?;
    drop(feed);

    o.cfg.sweeps = sees_answers(&o.sources, run);
    // Events reach stdout through a bounded queue and a thread of their own: a reader
    // that stalls or goes away costs events (counted), never detection or bans.
    let queue = EventQueue::start(io.out, Arc::clone(&o.metrics))
        .context("cannot start the stdout writer thread")?;
    let drainer = queue.drainer();
    // A source holding an established connection is banned for new connections only
    // (with --block-scope new every ban is, so the socket table is not read).
    let sessions =
        (o.blocking.blocker.is_some() && run.blocking.scope == Scope::All).then(Sessions::open);
    let parts = Parts {
        detector: o.cfg,
        configured_locals: o.configured_locals,
        log_limits: (run.log_limit_source, run.log_limit_global),
        blocker: o.blocking.blocker,
        host: HostNow::new(
            Box::new(SystemHost {
                sessions,
                lapi: o.lapi,
                routes: {
                    // Privileges are dropped by now: the thread starts without them. A
                    // full queue means the pipeline is busy: it reads the host every turn.
                    o.routes.keep_listing(Box::new(move || {
                        let _ = routes_tx.try_send(Msg::RoutesChanged);
                    }));
                    o.routes
                },
            }),
            Rc::clone(&o.clock),
        ),
        clock: o.clock,
        metrics: o.metrics,
        events: (io.printer)(queue),
        xdp: o.sources.running(run, o.blocking.in_xdp, o.discovering),
        reload: io.reload,
        reread: io.reread,
        status: io.status,
    };
    let mut core = Core::new(parts, o.blocking.lapsed);
    core.socket_counters = threads.socket_counters;
    Ok(Running {
        core,
        rx,
        stop: io.stop,
        workers: threads.workers,
        servers,
        control_stop,
        fleet_threads,
        drainer,
        state_dir: o.run.blocking.state_dir.clone(),
    })
}

/// Serves the control socket, handing requests to the loop through `feed`, until the
/// token returned with its thread is set, which the agent does once its blocker has
/// stopped (`stop.rs`), not when it is asked to stop: a request made while the agent
/// winds down (the loop takes what the sources sent last) is answered by the agent,
/// rather than refused, which would have `synwatch blocks` change the saved bans and the
/// rules behind the stopping agent's back.
pub(super) fn serve_control(
    listener: Option<std::os::unix::net::UnixListener>,
    state_dir: &std::path::Path,
    feed: &Feed,
) -> anyhow::Result<(thread::JoinHandle<()>, Arc<AtomicBool>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (dir, calls) = (state_dir.to_owned(), feed.sender());
    let thread = control::serve(listener, dir, calls, Msg::Call, Arc::clone(&stop))?;
    Ok((thread, stop))
}

/// The metrics server's socket. An address that cannot be bound (a port another process
/// took first, which any local user can do) is said and tried again later: the agent
/// runs and blocks without it rather than not at all.
fn bind_metrics(addr: std::net::SocketAddr) -> metrics::Socket {
    match metrics::bind(addr) {
        Ok(listener) => metrics::Socket::Bound(listener),
        Err(e) => {
            tracing::error!(
                "cannot serve metrics on {addr}: {e}; running and blocking without /metrics \
                 and /healthz, trying the address again every {} s (choose another with \
                 --metrics-addr)",
                metrics::REBIND_EVERY.as_secs()
            );
            metrics::Socket::Retry(addr)
        }
    }
}

/// Joins the CrowdSec fleet, where its client is open and something is blocked: pulls
/// reach the loop through `feed`.
fn start_fleet(
    fleet: Option<crate::crowdsec::Opened>,
    run: &Settings,
    blocker: Option<&mut Blocker>,
    feed: &Feed,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<crate::crowdsec::Threads> {
    let (Some(opened), Some(b)) = (fleet, blocker) else {
        return Ok(crate::crowdsec::Threads::default());
    };
    let deliver = {
        let (feed, stop) = (feed.clone(), Arc::clone(stop));
        move |pull| feed.send_unless_stopped(Msg::Fleet(pull), &stop)
    };
    let stats = Arc::clone(feed.metrics().crowdsec.get_or_init(Arc::default));
    let threads = crate::crowdsec::start(
        opened,
        &run.crowdsec,
        &run.blocking.state_dir,
        &stats,
        stop,
        deliver,
    )?;
    b.join_fleet(threads.outbox(), stats);
    Ok(threads)
}

/// The CrowdSec client, where its options are given and something is enforced.
fn open_fleet(run: &Settings) -> Result<Option<crate::crowdsec::Opened>, Refusal> {
    if !run.crowdsec.enabled() {
        return Ok(None);
    }
    if run.block == Block::None {
        tracing::warn!(
            "warning: the CrowdSec options are ignored with --block none (nothing to push, nothing to enforce)"
        );
        return Ok(None);
    }
    match run.crowdsec.open() {
        Ok(o) => Ok(Some(o)),
        Err(why) => usage(why),
    }
}

/// Starts the XDP program (first: where it attaches, it observes instead of libpcap),
/// opens libpcap on the interfaces it does not observe, or the socket table.
fn open_sources(
    run: &Settings,
    cfg: &synwatch_detect::Config,
    ifaces: &[String],
) -> Result<Sources, Refusal> {
    let from_sockets = run.source == Source::Sockets;
    let (xdp, xdp_observing, xdp_fallback) = start_xdp(run, cfg, ifaces)?;
    let xdp_source = xdp.is_some() && xdp_observing;
    let pcap_ifaces = if xdp_source { &[] } else { ifaces };
    let captures = match open_all(pcap_ifaces, &LiveOptions::default()) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => {
            return usage(format!(
                "{e}; or, without capture, read the socket table with --source sockets"
            ));
        }
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    if let Some(line) = xdp_fallback {
        tracing::warn!("{line}");
    }
    let sockets = if from_sockets {
        let (source, warnings) = SocketSource::open(run.poll)?;
        for w in warnings {
            tracing::warn!("warning: {w}");
        }
        Some(source)
    } else {
        None
    };
    let watching = match (&sockets, &xdp) {
        (Some(s), _) => s.describe(),
        (None, Some(x)) if xdp_source => crate::xdp::describe(x),
        (None, _) => ifaces.join(", "),
    };
    Ok(Sources {
        xdp,
        xdp_source,
        captures,
        pcap: !pcap_ifaces.is_empty(),
        sockets,
        watching,
    })
}

/// The XDP program, where it observes or bans, and whether it observes. When it cannot
/// start but libpcap can stand in (`--source auto`), the line saying so, to say once
/// libpcap is open.
///
/// The program reads Ethernet frames: an interface whose frames start at the IP header
/// (a tun device, WireGuard, an IP tunnel) gets no XDP program. With `--source auto`
/// every interface is then watched through libpcap; the hybrid `--block xdp,nftables`
/// drops in XDP on the others and nftables covers that one; `--source xdp` and
/// `--block xdp` refuse to start rather than watch or ban nothing there.
fn start_xdp(
    run: &Settings,
    cfg: &synwatch_detect::Config,
    ifaces: &[String],
) -> Result<(Option<synwatch_xdp::Xdp>, bool, Option<String>), Refusal> {
    let xdp_blocking = matches!(run.block, Block::Xdp | Block::XdpNftables);
    let mut xdp_observing = matches!(run.source, Source::Auto | Source::Xdp);
    if run.source == Source::Sockets || !(xdp_observing || xdp_blocking) {
        return Ok((None, false, None));
    }
    let (framed, bare): (Vec<String>, Vec<String>) =
        ifaces.iter().cloned().partition(|i| links::is_ethernet(i));
    let mut fallback = None;
    let outgoing = cfg.direction != synwatch_detect::DirectionFilter::In;
    if outgoing && run.source == Source::Auto {
        fallback = Some(
            "outgoing attempts are asked for (--direction out or both), and the XDP program sees only what arrives: watching every interface through libpcap"
                .to_owned(),
        );
        xdp_observing = false;
        if !xdp_blocking {
            return Ok((None, false, fallback));
        }
    } else if outgoing && run.source == Source::Xdp {
        tracing::warn!(
            "warning: --source xdp sees only what arrives: no outgoing attempt is logged or counted (--source pcap sees them)"
        );
    }
    if !bare.is_empty() {
        let why = format!(
            "{} {} no Ethernet header (frames start at the IP header: a tunnel or VPN), and the XDP program reads Ethernet frames",
            bare.join(", "),
            if bare.len() == 1 { "has" } else { "have" },
        );
        if run.source == Source::Xdp {
            return usage(format!(
                "cannot use XDP (--source xdp): {why}; watch through libpcap (--source pcap), or leave it out (--iface)"
            ));
        }
        if run.block == Block::Xdp {
            return usage(format!(
                "cannot use XDP (--block xdp): {why}; ban with --block nftables, iptables or auto"
            ));
        }
        if xdp_observing {
            fallback = Some(format!("{why}: watching every interface through libpcap"));
            xdp_observing = false;
        }
        if !xdp_blocking || framed.is_empty() {
            return Ok((None, false, fallback));
        }
    }
    let options = crate::xdp::options(
        cfg,
        xdp_observing,
        (xdp_blocking && !run.blocking.dry_run).then_some((&run.blocking, true)),
    );
    match crate::xdp::start(&framed, run.xdp_mode.mode(), options) {
        Ok(x) => Ok((Some(x), xdp_observing, fallback)),
        Err(e) => {
            if let Some(log) = e.verifier_log() {
                tracing::warn!("the verifier's log:\n{log}");
            }
            if run.source == Source::Xdp || xdp_blocking {
                let option = if xdp_blocking {
                    format!("--block {}", run.block.as_str())
                } else {
                    "--source xdp".to_owned()
                };
                return usage(format!("cannot use XDP ({option}): {e}"));
            }
            // Said once libpcap is open: if it cannot open either, that is the error.
            let line = format!("XDP is not available, watching through libpcap instead: {e}");
            Ok((None, false, Some(line)))
        }
    }
}

/// The control socket at start.
enum Control {
    /// Nothing is blocked (`--block none`): none.
    Off,
    Bound(std::os::unix::net::UnixListener),
    /// The state directory's file system had no room for it: bound by the control
    /// thread once it has (an agent that cannot be reached by `synwatch blocks` for a
    /// while still enforces; one refused at start would not).
    Later,
}

/// The control socket, where something may be blocked.
fn bind_control(run: &Settings) -> Result<Control, Refusal> {
    if run.block == Block::None {
        return Ok(Control::Off);
    }
    let dir = &run.blocking.state_dir;
    let bound = crate::state::create_dir_private(dir).and_then(|()| control::bind(dir));
    match bound {
        Ok(l) => Ok(Control::Bound(l)),
        Err(e) if crate::state::no_room(&e) => {
            tracing::error!(
                "WARNING: {e:#}: `synwatch blocks` cannot reach the agent until the state directory's file system has room (tried again every second)"
            );
            Ok(Control::Later)
        }
        Err(e) if dir.is_dir() => usage(format!("{e:#}")),
        Err(e) => usage(format!("{e:#} (choose another with --state-dir)")),
    }
}

/// Starts the blocker `--block` asks for (a usage error where it cannot), and tells the
/// XDP program what to do.
fn start_blocker(
    run: &Settings,
    cfg: &synwatch_detect::Config,
    metrics: &Arc<Metrics>,
    host_now: &HostNow,
    sources: &mut Sources,
) -> Result<Blocking, Refusal> {
    let protected_at_start = {
        let detector = synwatch_detect::Detector::new(cfg.clone());
        move |n| is_protected_net(n, &detector, host_now).is_some()
    };
    // The firewall programs run during set-up need the capabilities already.
    share_capabilities(
        &backend_capabilities(Backend::Iptables)
            .union(&backend_capabilities(Backend::Nftables))
            .copied()
            .collect(),
    );
    let started = start_blocking(
        run.block,
        &run.blocking,
        metrics,
        &protected_at_start,
        sources.xdp.as_ref(),
    );
    let (blocker, lapsed) = match started {
        Ok(Some((b, lapsed))) => (Some(b), lapsed),
        Ok(None) => (None, Vec::new()),
        Err(why) => {
            if run.block != Block::None {
                let _ = std::fs::remove_file(control::socket_path(&run.blocking.state_dir));
            }
            return usage(format!(
                "cannot block with --block {}: {why}",
                run.block.as_str()
            ));
        }
    };
    let _ = metrics
        .backend
        .set(blocker.as_ref().map_or("none", |b| b.backend().as_str()));
    // In a dry run the program neither detects nor drops: nothing is applied.
    let in_xdp = blocker.as_ref().is_some_and(|b| {
        !b.dry_run() && matches!(b.backend(), Backend::Xdp | Backend::XdpNftables)
    });
    if let Some(x) = sources.xdp.as_mut() {
        let options = crate::xdp::options(
            cfg,
            sources.xdp_source,
            in_xdp.then_some((&run.blocking, true)),
        );
        if in_xdp && options.detection.is_none() {
            tracing::warn!(
                "warning: the XDP program detects scans itself only with a --max-ports of 15 or less and --direction in or both; scanners are banned from user space instead, a few packets later"
            );
        }
        crate::xdp::apply(x, options, host_now.snapshot().view(cfg))
            .context("cannot configure the XDP program")?;
    }
    Ok(Blocking {
        blocker,
        lapsed,
        in_xdp,
    })
}

/// The rule check, the counters and the listing of the kernel's bans run on a thread of
/// their own (upkeep.rs), through a second handle on the same rules or maps, started
/// with the privileges just kept.
fn start_rule_check(
    run: &Settings,
    blocker: Option<&mut Blocker>,
    xdp: Option<&synwatch_xdp::Xdp>,
) {
    if let Some(b) = blocker.filter(|b| !b.dry_run())
        && let Ok(checker) = super::backend::open_kernel(b.backend(), run.blocking.scope, xdp)
    {
        b.check_from_thread(checker);
    }
}

/// The sources' threads.
struct Threads {
    workers: Vec<(String, thread::JoinHandle<()>)>,
    socket_counters: Option<Arc<SocketCounters>>,
}

/// Starts a thread per source: the capture threads, the socket table's, the XDP ring
/// buffer's; each hands what it sees to `feed`.
fn start_threads(
    run: &Settings,
    sources: &mut Sources,
    feed: &Feed,
    stop: &Arc<AtomicBool>,
    discovering: bool,
) -> anyhow::Result<Threads> {
    let mut workers = start_captures(
        std::mem::take(&mut sources.captures),
        discovering && !sources.xdp_source,
        !run.ifaces.is_empty(),
        stop,
        feed,
    )?;
    let mut socket_counters = None;
    if let Some(source) = sources.sockets.take() {
        let counters = Arc::new(SocketCounters::default());
        socket_counters = Some(Arc::clone(&counters));
        let (stop, feed) = (Arc::clone(stop), feed.clone());
        let (wall, mono) = (crate::clock::wall_nanos, crate::clock::monotonic);
        let handle = thread::Builder::new()
            .name("sockets".into())
            .spawn(move || {
                crate::sockets::run(source, &stop, &counters, wall, mono, |batch| {
                    feed.offer(batch)
                });
            })
            .context("cannot start the socket table thread")?;
        workers.push(("the socket table".to_owned(), handle));
    }
    if let Some(x) = sources.xdp.as_mut() {
        let ring = x
            .ring()
            .context("cannot read the XDP program's ring buffer")?;
        let (stop, feed, observing) = (Arc::clone(stop), feed.clone(), sources.xdp_source);
        let metrics = Arc::clone(feed.metrics());
        let handle = thread::Builder::new()
            .name("xdp".into())
            .spawn(move || {
                let (batches, bans) = (|batch| feed.offer(batch), |b| feed.kernel_bans(b));
                crate::xdp::run(ring, &stop, &metrics, observing, batches, bans);
            })
            .context("cannot start the XDP thread")?;
        workers.push(("the XDP ring buffer".to_owned(), handle));
    }
    Ok(Threads {
        workers,
        socket_counters,
    })
}

/// Starts a capture thread for each interface opened at start, each watching its
/// interface until the agent stops (reopening it when it returns; see links.rs), and,
/// with `discover`, a thread that watches interfaces that come up later.
fn start_captures(
    captures: Vec<LiveCapture>,
    discover: bool,
    required: bool,
    stop: &Arc<AtomicBool>,
    feed: &Feed,
) -> anyhow::Result<Vec<(String, thread::JoinHandle<()>)>> {
    let send = {
        let feed = feed.clone();
        move |batch| feed.offer(batch)
    };
    let watch = Arc::new(links::Watch {
        stop: Arc::clone(stop),
        metrics: Arc::clone(feed.metrics()),
        options: LiveOptions::default(),
        required,
        rediscovered: discover,
        watched: std::sync::Mutex::default(),
        send,
    });
    let mut workers = Vec::new();
    for (slot, cap) in captures.into_iter().enumerate() {
        let name = cap.iface().to_owned();
        watch.watch(&name);
        let watch = Arc::clone(&watch);
        let thread_name = name.clone();
        let handle = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || links::supervise(&thread_name, slot, Some(cap), &watch))
            .context("cannot start a capture thread")?;
        workers.push((name, handle));
    }
    if discover {
        let handle = thread::Builder::new()
            .name("interfaces".into())
            .spawn(move || links::discover(&watch))
            .context("cannot start the interface watch thread")?;
        workers.push(("new interfaces".to_owned(), handle));
    }
    Ok(workers)
}
