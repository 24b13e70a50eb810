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

//!
//! Layout: this file holds what the caller hands the agent and [`run`]; `setup`
//! starts it (sources, listeners, blocker, threads; `backend` and `caps` for the
//! firewall and the privileges, `banner` for what it says), `core` is the loop with its
//! seams (`seams`: the clocks and the host; `feed`: the queue every source writes to),
//! `host_now` and `step` what the loop asks per scan, `stop` the shutdown and summary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;
use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions};

use crate::block::BlockSettings;
use crate::event_queue::EventQueue;
use crate::events::EventSink;
use crate::host::Host;
use setup::Refusal;

mod backend;
mod banner;
mod caps;
mod core;
mod feed;
mod host_now;
pub mod seams;
mod setup;
mod step;
mod stop;

pub use caps::drop_all_capabilities;

/// Where the agent learns of connections (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// XDP where it attaches and only incoming attempts are asked for, else libpcap
    /// (saying why).
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
/// token, the reload and status requests (the binary's signal handlers set them), and how
/// to read the configuration again.
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
    /// Set to have the agent write its status (the lines of its stop summary) on stderr
    /// and go on.
    pub status: Arc<AtomicBool>,
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
/// The error is a usage error, one line, naming the names as `option` (where they were
/// given: `--iface`, `SYNWATCH_IFACE`, the file's `iface`).
pub fn choose_interfaces(
    named: &[String],
    option: &str,
    host: &Host,
) -> Result<Vec<String>, String> {
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
                "invalid {option} '{name}': no such interface (this host has: {})",
                known.join(", ")
            ));
        }
    }
    Ok(named.to_vec())
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

/// The interfaces the agent will watch: none with `--source sockets` (saying the named
/// ones are ignored), else the named ones (which must exist) or every one that is up.
/// The error is a usage error, one line, naming them as `option`.
pub fn interfaces(settings: &Settings, option: &str, host: &Host) -> Result<Vec<String>, String> {
    if settings.source == Source::Sockets {
        if !settings.ifaces.is_empty() {
            tracing::warn!(
                "warning: --iface is ignored with --source sockets (the socket table is the whole host's)"
            );
        }
        return Ok(Vec::new());
    }
    choose_interfaces(&settings.ifaces, option, host)
}

/// Runs the agent until `io.stop` is set (or every source ends): `detector` is the
/// configured detection, `host` this host as read at start, `ifaces` what
/// [`interfaces`] chose. Sets up the sources, the blocker, the metrics and control
/// servers, then runs the loop; at the end removes what it set up and joins its threads.
pub fn run(
    settings: Settings,
    detector: synwatch_detect::Config,
    host: Host,
    ifaces: Vec<String>,
    io: Io,
) -> Result<Outcome> {
    match setup::start(settings, detector, host, ifaces, io) {
        Ok(running) => running.run(),
        Err(Refusal::Usage(why)) => {
            tracing::error!("{why}");
            Ok(Outcome::Usage)
        }
        Err(Refusal::Failed(e)) => Err(e),
    }
}
