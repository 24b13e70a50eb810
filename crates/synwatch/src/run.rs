//! `synwatch run`: the live agent. One capture thread per interface reads through libpcap
//! (kernel-side filter, kernel timestamps) and hands connection attempts and stealth
//! probes to this thread, which runs the same detector as replay and writes the events.
//!
//! This version detects and reports; blocking (`--block`) offers only `none`, and
//! metrics over HTTP are not served yet.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions, LiveStats};
use synwatch_decode::{Decoded, LinkType, Transport, decode};
use synwatch_detect::{Detector, Direction, Observation, Probe, Seen};

use crate::config::{DetectArgs, DetectSettings};
use crate::host::Host;
use crate::output::{Connection, EventWriter, Format};

/// `--block`: what is done to scanners. Only `none` exists in this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

    /// What to do to scanners (this version detects and reports only)
    #[arg(long, env = "SYNWATCH_BLOCK", value_enum, default_value_t = BlockArg::None)]
    pub block: BlockArg,
}

/// How often the host's addresses are read again, so that an address added or removed
/// while running counts as local (or stops counting) without a restart.
const ADDRESS_REFRESH: Duration = Duration::from_secs(10);

/// Observations a capture thread collects before handing them over; a quiet interface
/// hands over what it has whenever a read times out.
const BATCH: usize = 256;

/// What a capture thread counted.
#[derive(Debug, Default, Clone, Copy)]
struct CaptureTotals {
    packets: u64,
    decode_errors: u64,
    kernel: LiveStats,
}

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
) -> CaptureTotals {
    let mut totals = CaptureTotals::default();
    let link = LinkType::from_linktype(cap.linktype());
    let mut batch = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let packet = match cap.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => {
                if !batch.is_empty() && out.send(std::mem::take(&mut batch)).is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                eprintln!("synwatch: {e}");
                break;
            }
        };
        totals.packets += 1;
        let Some(link) = link else { continue };
        match decode(link, packet.data) {
            Ok(Decoded::Segment(seg)) => {
                if let Transport::Tcp(flags) = seg.transport
                    && Probe::classify(flags).is_some()
                {
                    batch.push(Observation {
                        ts: packet.ts_nanos,
                        src: seg.src,
                        dst: seg.dst,
                        sport: seg.sport,
                        dport: seg.dport,
                        flags,
                    });
                }
            }
            Ok(Decoded::Skipped(_)) => {}
            Err(_) => totals.decode_errors += 1,
        }
        if batch.len() >= BATCH
            && out
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            break;
        }
    }
    if !batch.is_empty() {
        let _ = out.send(batch);
    }
    totals.kernel = cap.stats().unwrap_or_default();
    totals
}

fn banner(ifaces: &[String], settings: &DetectSettings, locals: &[IpAddr], format: Format) {
    let d = &settings.detector;
    let window = d.window as f64 / 1e9;
    let shown: Vec<String> = locals.iter().take(8).map(IpAddr::to_string).collect();
    let more = locals.len().saturating_sub(shown.len());
    eprintln!(
        "synwatch: watching {} for new TCP connection attempts (IPv4 and IPv6).\n\
         \x20 A source reaching more than {} distinct ports within {window} s is reported as a port scan.\n\
         \x20 Blocking: none (this version detects and reports only).\n\
         \x20 This host's addresses (outgoing; never reported as scanners to block): {}{}\n\
         \x20 Events: {} on stdout. Metrics over HTTP: not served by this version. Stop with Ctrl-C.",
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
    );
}

pub fn run(args: &RunArgs, mut settings: DetectSettings) -> Result<crate::ExitStatus> {
    let host = Host::read()?;
    let ifaces = match choose_interfaces(&args.iface, &host) {
        Ok(i) => i,
        Err(why) => {
            eprintln!("synwatch: {why}");
            return Ok(crate::ExitStatus::BadInput);
        }
    };
    let configured_locals = settings.detector.locals.clone();
    settings.detector.locals = host.locals(&configured_locals);
    let format = settings.format.unwrap_or_else(crate::default_format);

    let captures = match open_all(&ifaces) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => {
            eprintln!("synwatch: {e}");
            return Ok(crate::ExitStatus::BadInput);
        }
        Err(e) => return Err(e.into()),
    };
    let locals: Vec<IpAddr> = host.addresses.iter().copied().collect();
    banner(&ifaces, &settings, &locals, format);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }

    let (tx, rx) = mpsc::channel::<Vec<Observation>>();
    let mut workers = Vec::new();
    for cap in captures {
        let (stop, tx) = (Arc::clone(&stop), tx.clone());
        let name = cap.iface().to_owned();
        let handle = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || capture_thread(cap, &stop, &tx))
            .context("cannot start a capture thread")?;
        workers.push((name, handle));
    }
    drop(tx);

    let mut detector = Detector::new(settings.detector.clone());
    let stdout = std::io::stdout().lock();
    let mut events = EventWriter::new(stdout, format);
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is the edge that reads clocks"
    )]
    let mut next_refresh = Instant::now() + ADDRESS_REFRESH;
    let mut logged = 0u64;
    let mut output_failed = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                for obs in &batch {
                    let out = detector.observe(obs);
                    if out.log {
                        logged += 1;
                        let direction = match out.seen {
                            Seen::Attempt(d) => d,
                            _ => Direction::In,
                        };
                        let written = events.connection(&Connection {
                            ts: obs.ts,
                            src: obs.src,
                            sport: obs.sport,
                            dst: obs.dst,
                            dport: obs.dport,
                            direction,
                        });
                        if let Err(e) = written {
                            output_failed = Some(e);
                        }
                    }
                    if let Some(scan) = &out.scan
                        && let Err(e) = events.scan(scan)
                    {
                        output_failed = Some(e);
                    }
                }
                // Live events go out as they happen, not when a buffer fills.
                if let Err(e) = events.flush() {
                    output_failed = Some(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if output_failed.is_some() {
            stop.store(true, Ordering::Relaxed);
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

    let mut lines = Vec::new();
    for (name, handle) in workers {
        let t = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread for {name} failed"))?;
        lines.push(format!(
            "  {name}: {} packets passed the filter, {} dropped by the kernel, {} undecodable",
            t.kernel.received.max(t.packets),
            t.kernel.dropped,
            t.decode_errors
        ));
    }
    let s = detector.stats();
    eprintln!(
        "synwatch: stopped.\n{}\n  attempts: {} incoming, {} outgoing, {} retransmissions, {} stealth probes; {} connections logged\n  scans: {}; sources tracked: {} ({} evicted)",
        lines.join("\n"),
        s.attempts_in,
        s.attempts_out,
        s.retransmissions,
        s.stealth_probes,
        logged,
        s.scans,
        detector.tracked_sources(),
        s.sources_evicted,
    );
    match output_failed {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(crate::ExitStatus::Success),
        Some(e) => Err(anyhow::Error::new(e).context("cannot write events to stdout")),
        None => Ok(crate::ExitStatus::Success),
    }
}
