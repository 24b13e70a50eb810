//! `synwatch run`: the live agent. One capture thread per interface reads through libpcap
//! (kernel-side filter, kernel timestamps) and hands connection attempts and stealth
//! probes to this thread, which runs the same detector as replay, writes the events
//! (rate-limited per source and overall) and keeps the metrics that `/metrics` serves.
//!
//! Blocking (`--block`) offers only `none` in this version: the enforcer is the next step.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions};
use synwatch_decode::{DecodeError, Decoded, LinkType, decode};
use synwatch_detect::{Detector, Direction, Observation, Seen};

use crate::config::{DetectArgs, DetectSettings};
use crate::host::Host;
use crate::limit::LogLimiter;
use crate::metrics::{self, InterfaceMetrics, Metrics};
use crate::output::{Connection, EventWriter, Format};

/// `--block`: what is done to scanners. Only `none` exists in this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockArg {
    /// Detect and report only.
    None,
}

/// `synwatch run` options beyond the shared detection ones.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub detect: DetectArgs,

    /// Interface to capture on (repeatable, or comma-separated in the environment)
    /// [default: every interface that is up, loopback only when named]
    #[arg(
        long,
        env = "SYNWATCH_IFACE",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub iface: Vec<String>,

    /// What to do to scanners (this version detects and reports only) [default: none]
    #[arg(long, env = "SYNWATCH_BLOCK", value_enum)]
    pub block: Option<BlockArg>,

    /// Where to serve /metrics and /healthz [default: 127.0.0.1:9809]
    #[arg(long, env = "SYNWATCH_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Connection events one source may log per second; more are counted, not printed
    /// (0: no limit) [default: 1000]
    #[arg(long, env = "SYNWATCH_LOG_LIMIT_SOURCE", value_name = "N")]
    pub log_limit_source: Option<u32>,

    /// Connection events all sources together may log per second (0: no limit)
    /// [default: 5000]
    #[arg(long, env = "SYNWATCH_LOG_LIMIT_GLOBAL", value_name = "N")]
    pub log_limit_global: Option<u32>,

    /// Print the effective configuration (file < environment < flags) as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

/// The run-only settings, validated.
#[derive(Debug, Clone)]
struct RunSettings {
    ifaces: Vec<String>,
    metrics_addr: SocketAddr,
    log_limit_source: u32,
    log_limit_global: u32,
}

impl RunSettings {
    fn from_args(args: &RunArgs, detect: &DetectSettings) -> Result<Self, String> {
        let file = &detect.file;
        let ifaces = if args.iface.is_empty() {
            file.iface.clone().unwrap_or_default()
        } else {
            args.iface.clone()
        };
        let (addr_text, option) = match (&args.metrics_addr, &file.metrics_addr) {
            (Some(a), _) => (a.clone(), "--metrics-addr"),
            (None, Some(a)) => (a.clone(), "metrics_addr"),
            (None, None) => ("127.0.0.1:9809".to_owned(), "--metrics-addr"),
        };
        let metrics_addr = addr_text.parse().map_err(|_| {
            format!("invalid {option} '{addr_text}': expected HOST:PORT, e.g. 127.0.0.1:9809 or [::1]:9809")
        })?;
        if let Some(block) = &file.block
            && block != "none"
        {
            return Err(format!(
                "invalid block '{block}' in the config file: this version supports only none"
            ));
        }
        Ok(Self {
            ifaces,
            metrics_addr,
            log_limit_source: args
                .log_limit_source
                .or(file.log_limit_source)
                .unwrap_or(1000),
            log_limit_global: args
                .log_limit_global
                .or(file.log_limit_global)
                .unwrap_or(5000),
        })
    }
}

/// How often the host's addresses are read again, so that an address added or removed
/// while running counts as local (or stops counting) without a restart.
const ADDRESS_REFRESH: Duration = Duration::from_secs(10);

/// How often capture threads read the kernel's drop counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Observations a capture thread collects before handing them over; a quiet interface
/// hands over what it has whenever a read times out.
const BATCH: usize = 256;

/// Opens every interface first, so that a missing privilege or a wrong name stops the
/// agent before it claims to be watching anything.
fn open_all(ifaces: &[String]) -> Result<Vec<LiveCapture>, LiveError> {
    ifaces
        .iter()
        .map(|name| LiveCapture::open(name, &LiveOptions::default()))
        .collect()
}

/// The interfaces to watch: the named ones (which must exist), or every one that is up.
/// The error is a usage error, one line.
fn choose_interfaces(named: &[String], host: &Host) -> Result<Vec<String>, String> {
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

fn capture_thread(
    mut cap: LiveCapture,
    stop: &AtomicBool,
    out: &mpsc::Sender<Vec<Observation>>,
    metrics: &Metrics,
    slot: usize,
) {
    let counters: &InterfaceMetrics = &metrics.interfaces[slot];
    let link = LinkType::from_linktype(cap.linktype());
    let mut batch = Vec::with_capacity(BATCH);
    let mut packets = 0u64;
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is the edge that reads clocks"
    )]
    let mut next_stats = Instant::now() + STATS_EVERY;
    let record_stats = |cap: &mut LiveCapture| {
        if let Ok(s) = cap.stats() {
            counters.drops.store(s.dropped, Ordering::Relaxed);
            counters.if_drops.store(s.if_dropped, Ordering::Relaxed);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let packet = match cap.next_packet() {
            Ok(Some(p)) => Some(p),
            Ok(None) => None,
            Err(e) => {
                eprintln!("synwatch: {e}");
                break;
            }
        };
        if let Some(packet) = packet {
            packets += 1;
            if let Some(link) = link {
                match decode(link, packet.data) {
                    Ok(Decoded::Segment(seg)) => {
                        batch.extend(Observation::of_segment(packet.ts_nanos, &seg));
                    }
                    Ok(Decoded::Skipped(_)) => {}
                    Err(kind) => {
                        metrics.decode_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if batch.len() < BATCH {
                continue;
            }
        }
        // A full batch, or a read that found nothing: hand over what there is.
        counters.packets.fetch_add(packets, Ordering::Relaxed);
        packets = 0;
        if !batch.is_empty() && out.send(std::mem::take(&mut batch)).is_err() {
            break;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the binary is the edge that reads clocks"
        )]
        let now = Instant::now();
        if now >= next_stats {
            next_stats = now + STATS_EVERY;
            record_stats(&mut cap);
        }
    }
    counters.packets.fetch_add(packets, Ordering::Relaxed);
    if !batch.is_empty() {
        let _ = out.send(batch);
    }
    record_stats(&mut cap);
}

fn banner(
    ifaces: &[String],
    settings: &DetectSettings,
    run: &RunSettings,
    locals: &[IpAddr],
    format: Format,
) {
    let d = &settings.detector;
    let window = d.window as f64 / 1e9;
    let shown: Vec<String> = locals.iter().take(8).map(IpAddr::to_string).collect();
    let more = locals.len().saturating_sub(shown.len());
    eprintln!(
        "synwatch: watching {} for new TCP connection attempts (IPv4 and IPv6).\n\
         \x20 A source reaching more than {} distinct ports within {window} s is reported as a port scan.\n\
         \x20 Blocking: none (this version detects and reports only).\n\
         \x20 This host's addresses (outgoing; never reported as scanners to block): {}{}\n\
         \x20 Events: {} on stdout. Metrics: http://{}/metrics (health: /healthz). Stop with Ctrl-C.",
        ifaces.join(", "),
        d.max_ports,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        match format {
            Format::Json => "JSON lines",
            Format::Table => "a table",
        },
        run.metrics_addr,
    );
}

/// The effective configuration as TOML, as `--print-config` shows it.
fn print_config(settings: &DetectSettings, run: &RunSettings, format: Format) -> String {
    let d = &settings.detector;
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let window = if d.window % 1_000_000_000 == 0 {
        format!("{}s", d.window / 1_000_000_000)
    } else {
        format!("{}ms", d.window / 1_000_000)
    };
    format!(
        "max_ports = {}\nwindow = \"{window}\"\nlocal = {}\nallow = {}\nno_allow_local = {}\n\
         direction = \"{}\"\nformat = \"{}\"\nmax_sources = {}\niface = {}\nblock = \"none\"\n\
         metrics_addr = \"{}\"\nlog_limit_source = {}\nlog_limit_global = {}\n",
        d.max_ports,
        list(d.locals.iter().map(|n| n.to_string()).collect()),
        list(d.allow.iter().map(|n| n.to_string()).collect()),
        !d.allow_local,
        match d.direction {
            synwatch_detect::DirectionFilter::In => "in",
            synwatch_detect::DirectionFilter::Out => "out",
            synwatch_detect::DirectionFilter::Both => "both",
        },
        match format {
            Format::Json => "json",
            Format::Table => "table",
        },
        d.max_sources,
        list(run.ifaces.clone()),
        run.metrics_addr,
        run.log_limit_source,
        run.log_limit_global,
    )
}

/// Gives up every capability once the capture handles and the listening socket are open:
/// nothing after this needs one (blocking, when it comes, will keep CAP_NET_ADMIN).
fn drop_capabilities() {
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        if let Err(e) = caps::clear(None, set) {
            eprintln!("synwatch: warning: could not drop capabilities ({set:?}): {e}");
        }
    }
}

pub fn run(args: &RunArgs, mut settings: DetectSettings) -> Result<crate::ExitStatus> {
    let usage = |why: String| {
        eprintln!("synwatch: {why}");
        Ok(crate::ExitStatus::BadInput)
    };
    let run_settings = match RunSettings::from_args(args, &settings) {
        Ok(r) => r,
        Err(why) => return usage(why),
    };
    let format = settings.format.unwrap_or_else(crate::default_format);
    let host = Host::read()?;
    let ifaces = match choose_interfaces(&run_settings.ifaces, &host) {
        Ok(i) => i,
        Err(why) => return usage(why),
    };
    if args.print_config {
        let mut shown = run_settings.clone();
        shown.ifaces = ifaces;
        use std::io::Write as _;
        std::io::stdout()
            .write_all(print_config(&settings, &shown, format).as_bytes())
            .context("cannot write the configuration to stdout")?;
        return Ok(crate::ExitStatus::Success);
    }
    let mut configured_locals = settings.detector.locals.clone();
    settings.detector.locals = host.locals(&configured_locals);

    let captures = match open_all(&ifaces) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => return usage(e.to_string()),
        Err(e) => return Err(e.into()),
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
    drop_capabilities();
    let mut shown = run_settings.clone();
    // With port 0 the kernel picks one: say which.
    shown.metrics_addr = listener.local_addr().unwrap_or(run_settings.metrics_addr);
    let locals: Vec<IpAddr> = host.addresses.iter().copied().collect();
    banner(&ifaces, &settings, &shown, &locals, format);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("cannot install the SIGHUP handler")?;

    let metrics = Arc::new(Metrics::new(&ifaces));
    metrics::serve(listener, Arc::clone(&metrics), Arc::clone(&stop))
        .context("cannot start the metrics server")?;

    let (tx, rx) = mpsc::channel::<Vec<Observation>>();
    let mut workers = Vec::new();
    for (slot, cap) in captures.into_iter().enumerate() {
        let (stop, tx, metrics) = (Arc::clone(&stop), tx.clone(), Arc::clone(&metrics));
        let name = cap.iface().to_owned();
        let handle = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || capture_thread(cap, &stop, &tx, &metrics, slot))
            .context("cannot start a capture thread")?;
        workers.push((name, handle));
    }
    drop(tx);

    let mut detector = Detector::new(settings.detector.clone());
    let mut limiter = LogLimiter::new(run_settings.log_limit_source, run_settings.log_limit_global);
    let mut events = EventWriter::new(std::io::stdout().lock(), format);
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is the edge that reads clocks"
    )]
    let mut next_refresh = Instant::now() + ADDRESS_REFRESH;
    let mut logged = 0u64;
    let mut output: std::io::Result<()> = Ok(());
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                for obs in &batch {
                    if let Some(held) = limiter.roll(obs.ts) {
                        output = output.and(events.suppressed(&held));
                    }
                    let out = detector.observe(obs);
                    if out.log {
                        if limiter.allow(obs.src) {
                            logged += 1;
                            let direction = match out.seen {
                                Seen::Attempt(d) => d,
                                _ => Direction::In,
                            };
                            output = output.and(events.connection(&Connection {
                                ts: obs.ts,
                                src: obs.src,
                                sport: obs.sport,
                                dst: obs.dst,
                                dport: obs.dport,
                                direction,
                            }));
                        } else {
                            metrics.events_suppressed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(scan) = &out.scan {
                        output = output.and(events.scan(scan));
                    }
                }
                // Live events go out as they happen, not when a buffer fills.
                output = output.and(events.flush());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        metrics.record_detector(&detector.stats(), detector.tracked_sources());
        if output.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        if reload.swap(false, Ordering::Relaxed)
            && let Some(configured) = reload_config(args, &mut detector)
        {
            configured_locals = configured;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the binary is the edge that reads clocks"
        )]
        let now = Instant::now();
        if now >= next_refresh {
            next_refresh = now + ADDRESS_REFRESH;
            if let Ok(fresh) = Host::read() {
                let mut cfg = detector.config().clone();
                cfg.locals = fresh.locals(&configured_locals);
                if cfg.locals != detector.config().locals {
                    detector.reconfigure(cfg);
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut lines = Vec::new();
    for (name, handle) in workers {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread for {name} failed"))?;
    }
    for iface in &metrics.interfaces {
        let decode_errors: u64 = DecodeError::ALL
            .iter()
            .map(|k| metrics.decode_errors[k.index()].load(Ordering::Relaxed))
            .sum();
        lines.push(format!(
            "  {}: {} packets passed the filter, {} dropped by the kernel; {} undecodable in all",
            iface.name,
            iface.packets.load(Ordering::Relaxed),
            iface.drops.load(Ordering::Relaxed),
            decode_errors,
        ));
    }
    let s = detector.stats();
    eprintln!(
        "synwatch: stopped.\n{}\n  attempts: {} incoming, {} outgoing, {} retransmissions, {} stealth probes; {} connections logged, {} held back by the log limit\n  scans: {}; sources tracked: {} ({} evicted)",
        lines.join("\n"),
        s.attempts_in,
        s.attempts_out,
        s.retransmissions,
        s.stealth_probes,
        logged,
        metrics.events_suppressed.load(Ordering::Relaxed),
        s.scans,
        detector.tracked_sources(),
        s.sources_evicted,
    );
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(crate::ExitStatus::Success),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write events to stdout")),
        Ok(()) => Ok(crate::ExitStatus::Success),
    }
}

/// SIGHUP: reads the configuration again (file, environment and flags as at start) and
/// applies thresholds and address lists to the running detector, keeping its state. A
/// configuration that does not validate is reported and the running one kept.
/// Returns the newly configured (not discovered) local addresses.
fn reload_config(args: &RunArgs, detector: &mut Detector) -> Option<synwatch_detect::AddrSet> {
    let Some(path) = &args.detect.config else {
        eprintln!("synwatch: SIGHUP: no --config file to reload; configuration unchanged");
        return None;
    };
    match DetectSettings::from_args(&args.detect) {
        Ok(fresh) => {
            for warning in &fresh.warnings {
                eprintln!("synwatch: warning: {warning}");
            }
            let mut cfg = fresh.detector;
            let configured = cfg.locals.clone();
            let host = Host::read().unwrap_or_default();
            cfg.locals = host.locals(&configured);
            eprintln!(
                "synwatch: reloaded {}: a scan is more than {} ports within {} s; {} allowlisted ranges",
                path.display(),
                cfg.max_ports,
                cfg.window as f64 / 1e9,
                cfg.allow.len()
            );
            detector.reconfigure(cfg);
            Some(configured)
        }
        Err(e) => {
            eprintln!(
                "synwatch: reloading {} failed, keeping the running configuration: {e:#}",
                path.display()
            );
            None
        }
    }
}
