//! `synwatch run`: the command line of the live agent. Its options (`RunArgs`, with the
//! enumerated ones as clap enums) are layered here, file < environment < flags, into the
//! agent library's plain [`Settings`]; `--print-config` shows them; the signals become
//! the agent's stop token and reload request; the printers of `output.rs` are its event
//! sink. The agent itself (sources, detection, blocking, metrics and control servers,
//! reload) is `synwatch_agent::agent`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use synwatch_agent::agent::{self, Block, Settings, Source, XdpMode};
use synwatch_agent::events::EventSink;
use synwatch_enforce::Scope;
use synwatch_enforce::bans::Policy;

use crate::block::BlockSettings;
use crate::config::{DetectArgs, DetectSettings, choice};
use crate::host::Host;
use crate::output::{EventWriter, Format};

/// `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (in the driver) where the driver supports it, else generic
    Auto,
    /// In the driver only: fails on interfaces whose driver has no XDP support
    Native,
    /// In the kernel's generic receive path: works everywhere, slower
    Generic,
}

/// `--block`: what is done to scanners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlockArg {
    /// xdp,nftables where the XDP program runs, else nftables, else iptables, else none
    /// (saying why)
    Auto,
    /// The XDP program's ban maps: dropped before the network stack, and scanners banned
    /// in the kernel by the packet that makes them scanners
    Xdp,
    /// Both: XDP, and nftables for the traffic XDP does not see
    #[value(name = "xdp,nftables")]
    XdpNftables,
    /// synwatch's own table `inet synwatch` (input and forward hooks)
    Nftables,
    /// synwatch's own chain SYNWATCH with ipsets (INPUT, FORWARD, DOCKER-USER)
    Iptables,
    /// Detect and report only
    None,
}

/// `--block-scope`: what a ban drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// Every packet from a banned source (but only new connections from one that held an
    /// established connection when it was banned)
    All,
    /// Only new connections from it (established ones continue)
    New,
}

/// Where the agent learns of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// XDP where it attaches and only incoming attempts are asked for, else libpcap (saying why)
    Auto,
    /// The XDP program on each interface, through its ring buffer (needs CAP_BPF,
    /// CAP_NET_ADMIN and CAP_PERFMON; sees incoming packets only)
    Xdp,
    /// Packet capture through libpcap (needs CAP_NET_RAW)
    Pcap,
    /// The kernel's socket table, polled (no capture privilege; sees only accepted
    /// connections)
    Sockets,
}

/// `synwatch run` options beyond the shared detection ones.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub detect: DetectArgs,

    /// Interface to capture on (repeatable, or comma-separated in the environment); one
    /// deleted and created again is watched again, and /healthz fails while it is
    /// missing [default: every interface that is up, and those that come up later;
    /// loopback only when named]
    #[arg(
        long,
        env = "SYNWATCH_IFACE",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub iface: Vec<String>,

    /// Where connections are seen: the XDP program or libpcap, or the kernel's socket
    /// table where capture is not allowed [default: auto]
    #[arg(long, env = "SYNWATCH_SOURCE", value_enum)]
    pub source: Option<SourceArg>,

    /// Where the XDP program runs: in the driver (native) where it supports XDP, else in
    /// the kernel's generic path [default: auto]
    #[arg(long, env = "SYNWATCH_XDP_MODE", value_enum)]
    pub xdp_mode: Option<XdpModeArg>,

    /// How often --source sockets reads the socket table [default: 1s]
    #[arg(long, env = "SYNWATCH_POLL", value_name = "DUR")]
    pub poll: Option<String>,

    /// How to block scanners [default: auto]
    #[arg(long, env = "SYNWATCH_BLOCK", value_enum)]
    pub block: Option<BlockArg>,

    /// What a ban drops [default: all]
    #[arg(long, env = "SYNWATCH_BLOCK_SCOPE", value_enum)]
    pub block_scope: Option<ScopeArg>,

    /// How long a first ban lasts, in whole seconds rounded up (0: until removed);
    /// repeat offenders get twice their last ban, up to --ban-max [default: 1h]
    #[arg(long, env = "SYNWATCH_BAN", value_name = "DUR")]
    pub ban: Option<String>,

    /// The longest ban a repeat offender gets; a source whose last ban ended longer ago
    /// than this starts again at --ban [default: 24h]
    #[arg(long, env = "SYNWATCH_BAN_MAX", value_name = "DUR")]
    pub ban_max: Option<String>,

    /// New bans allowed per minute, at most a quarter of them to one /24 or /48 (a guard
    /// against spoofed sources; 0: no cap); scans beyond wait, strongest evidence first,
    /// and are banned as the cap allows while their source is active [default: 60]
    #[arg(long, env = "SYNWATCH_BAN_RATE", value_name = "N")]
    pub ban_rate: Option<u32>,

    /// Where bans are kept across restarts, and the control socket of `synwatch blocks`
    /// [default: /var/lib/synwatch]
    #[arg(long, env = "SYNWATCH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Decide and report everything (scans, bans with "dry_run":true, lifts) but apply
    /// nothing to the kernel: a way to try the settings first. Bans are kept in
    /// STATE_DIR/dry-run, apart from real ones
    #[arg(
        long,
        env = "SYNWATCH_DRY_RUN",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dry_run: Option<bool>,

    /// Leave synwatch's firewall rules and bans in place when stopping (by default they
    /// are removed, and restored at the next start)
    #[arg(
        long,
        env = "SYNWATCH_KEEP_RULES_ON_EXIT",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub keep_rules_on_exit: Option<bool>,

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

    #[command(flatten)]
    pub crowdsec: Box<crate::crowdsec_args::CrowdsecArgs>,
}

/// The run-only settings, layered (flag < environment < file < default) and validated into
/// the agent's plain settings.
pub(crate) fn settings(args: &RunArgs, detect: &DetectSettings) -> Result<Settings, String> {
    let file = &detect.file;
    let ifaces = if args.iface.is_empty() {
        file.iface.clone().unwrap_or_default()
    } else {
        args.iface.clone()
    };
    let label = |id: &str| args.detect.label(id);
    let (addr_text, option) = match (&args.metrics_addr, &file.metrics_addr) {
        (Some(a), _) => (a.clone(), label("metrics_addr")),
        (None, Some(a)) => (a.clone(), "metrics_addr".to_owned()),
        (None, None) => ("127.0.0.1:9809".to_owned(), label("metrics_addr")),
    };
    let metrics_addr = addr_text.parse().map_err(|_| {
        format!(
            "invalid {option} '{addr_text}': expected HOST:PORT, e.g. 127.0.0.1:9809 or [::1]:9809"
        )
    })?;
    let block = choice(args.block, &file.block, "block", BlockArg::Auto)?;
    let scope = choice(
        args.block_scope,
        &file.block_scope,
        "block_scope",
        ScopeArg::All,
    )?;
    let source = choice(args.source, &file.source, "source", SourceArg::Auto)?;
    let xdp_mode = choice(args.xdp_mode, &file.xdp_mode, "xdp_mode", XdpModeArg::Auto)?;
    // A duration from the flag, else the file key, else `default`; with the option's
    // name and text as written, for messages.
    let duration = |flag: &Option<String>, key: &Option<toml::Value>, name: &str, default: &str| {
        let (text, option) = match (flag, key) {
            (Some(t), _) => (t.clone(), label(name)),
            (None, Some(v)) => (crate::config::toml_number(v), name.to_owned()),
            (None, None) => (default.to_owned(), label(name)),
        };
        match crate::config::parse_duration(&text) {
            Ok(nanos) => Ok((nanos, option, text)),
            Err(why) => Err(format!("invalid {option} '{text}': {why}")),
        }
    };
    let secs = |flag: &Option<String>, key: &Option<toml::Value>, name: &str, default: &str| {
        duration(flag, key, name, default).map(|(nanos, ..)| crate::config::ban_secs(nanos))
    };
    let poll = {
        let (nanos, option, text) = duration(&args.poll, &file.poll, "poll", "1s")?;
        if nanos < 10_000_000 {
            return Err(format!("invalid {option} '{text}': must be at least 10ms"));
        }
        Duration::from_nanos(nanos.unsigned_abs())
    };
    let duration_secs = secs(&args.ban, &file.ban, "ban", "1h")?;
    let max_secs = secs(&args.ban_max, &file.ban_max, "ban_max", "24h")?;
    let blocking = BlockSettings {
        scope: match scope {
            ScopeArg::All => Scope::All,
            ScopeArg::New => Scope::New,
        },
        policy: Policy {
            duration_secs,
            max_secs,
            per_minute: args.ban_rate.or(file.ban_rate).unwrap_or(60),
        },
        state_dir: args
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| "/var/lib/synwatch".into()),
        keep_rules: args
            .keep_rules_on_exit
            .or(file.keep_rules_on_exit)
            .unwrap_or(false),
        dry_run: args.dry_run.or(file.dry_run).unwrap_or(false),
    };
    Ok(Settings {
        ifaces,
        source: source.into(),
        xdp_mode: xdp_mode.into(),
        poll,
        block: block.into(),
        blocking,
        metrics_addr,
        log_limit_source: args
            .log_limit_source
            .or(file.log_limit_source)
            .unwrap_or(1000),
        log_limit_global: args
            .log_limit_global
            .or(file.log_limit_global)
            .unwrap_or(5000),
        crowdsec: crate::crowdsec_args::settings(&args.crowdsec, file, label)?,
    })
}

impl From<XdpModeArg> for XdpMode {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Native => Self::Native,
            XdpModeArg::Generic => Self::Generic,
        }
    }
}

impl From<BlockArg> for Block {
    fn from(arg: BlockArg) -> Self {
        match arg {
            BlockArg::Auto => Self::Auto,
            BlockArg::Xdp => Self::Xdp,
            BlockArg::XdpNftables => Self::XdpNftables,
            BlockArg::Nftables => Self::Nftables,
            BlockArg::Iptables => Self::Iptables,
            BlockArg::None => Self::None,
        }
    }
}

impl From<SourceArg> for Source {
    fn from(arg: SourceArg) -> Self {
        match arg {
            SourceArg::Auto => Self::Auto,
            SourceArg::Xdp => Self::Xdp,
            SourceArg::Pcap => Self::Pcap,
            SourceArg::Sockets => Self::Sockets,
        }
    }
}

/// The name of an event format in the configuration file.
fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Table => "table",
    }
}

/// The `--print-config` lines of the diagnostics options (layered and checked before).
fn log_config(args: &RunArgs, settings: &DetectSettings) -> String {
    crate::config::log_settings(&args.detect.log, &settings.file)
        .unwrap_or_default()
        .toml()
}

pub fn run(args: &RunArgs, settings: DetectSettings) -> Result<crate::ExitStatus> {
    let usage = |why: String| {
        tracing::error!("{why}");
        Ok(crate::ExitStatus::BadInput)
    };
    let run_settings = match self::settings(args, &settings) {
        Ok(r) => r,
        Err(why) => return usage(why),
    };
    let format = settings.format.unwrap_or_else(crate::default_format);
    let host = Host::read()?;
    // The names as the user gave them: the flag or variable, else the file's key.
    let iface_option = if args.iface.is_empty() && settings.file.iface.is_some() {
        "iface".to_owned()
    } else {
        args.detect.label("iface")
    };
    let ifaces = match agent::interfaces(&run_settings, &iface_option, &host) {
        Ok(i) => i,
        Err(why) => return usage(why),
    };
    if args.print_config {
        let mut shown = run_settings.clone();
        shown.ifaces = ifaces;
        use std::io::Write as _;
        std::io::stdout()
            .write_all(
                (synwatch_agent::config::to_toml(&settings.detector, &shown, format_name(format))
                    + &log_config(args, &settings))
                    .as_bytes(),
            )
            .context("cannot write the configuration to stdout")?;
        return Ok(crate::ExitStatus::Success);
    }
    // The handlers go in before any firewall rule does: a SIGTERM that arrives while
    // the agent sets up (or right after its banner) stops it cleanly, rules removed,
    // instead of killing it with its rules left behind.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("cannot install the SIGHUP handler")?;
    // SIGUSR1 and SIGUSR2 (sent by log rotation scripts and by people) would end the
    // agent by default: they ask for its status on stderr instead.
    let status = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
        signal_hook::flag::register(signal, Arc::clone(&status))
            .context("cannot install the SIGUSR1 and SIGUSR2 handlers")?;
    }
    let reread = {
        let args = args.clone();
        move || reload_config(&args)
    };
    let io = agent::Io {
        out: Box::new(std::io::stdout()),
        printer: Box::new(move |queue| {
            Box::new(EventWriter::new(queue, format)) as Box<dyn EventSink>
        }),
        events_shown_as: match format {
            Format::Json => "JSON lines",
            Format::Table => "a table",
        },
        stop,
        reload,
        status,
        reread: Box::new(reread),
    };
    Ok(
        match agent::run(run_settings, settings.detector, host, ifaces, io)? {
            agent::Outcome::Stopped => crate::ExitStatus::Success,
            agent::Outcome::Usage => crate::ExitStatus::BadInput,
        },
    )
}

/// SIGHUP: reads the configuration again (file, environment and flags as at start); the
/// agent applies thresholds and address lists to the running detector, keeping its
/// state. A configuration that does not validate is reported and the running one kept.
fn reload_config(args: &RunArgs) -> Option<agent::Reread> {
    let Some(path) = &args.detect.config else {
        tracing::warn!("SIGHUP: no --config file to reload; configuration unchanged");
        return None;
    };
    let fresh = DetectSettings::from_args(&args.detect).and_then(|fresh| {
        let run = self::settings(args, &fresh).map_err(anyhow::Error::msg)?;
        Ok((fresh, run))
    });
    match fresh {
        Ok((fresh, settings)) => {
            for warning in &fresh.warnings {
                tracing::warn!("warning: {warning}");
            }
            Some(agent::Reread {
                path: path.clone(),
                detector: fresh.detector,
                settings,
            })
        }
        Err(e) => {
            tracing::error!(
                "reloading {} failed, keeping the running configuration: {e:#}",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enumerated_option_comes_from_the_flag_then_the_file_then_the_default() {
        let file = Some("new".to_owned());
        assert_eq!(
            choice(Some(ScopeArg::All), &file, "block_scope", ScopeArg::All),
            Ok(ScopeArg::All)
        );
        assert_eq!(
            choice(None, &file, "block_scope", ScopeArg::All),
            Ok(ScopeArg::New)
        );
        assert_eq!(
            choice(None, &None, "block_scope", ScopeArg::New),
            Ok(ScopeArg::New)
        );
        assert_eq!(
            choice::<BlockArg>(None, &Some("x".into()), "block", BlockArg::Auto),
            Err(
                "invalid block 'x' in the config file: expected auto, xdp, xdp,nftables, nftables, iptables or none"
                    .into()
            )
        );
        // A valid flag wins over an invalid file value.
        assert_eq!(
            choice(
                Some(SourceArg::Pcap),
                &Some("x".into()),
                "source",
                SourceArg::Auto
            ),
            Ok(SourceArg::Pcap)
        );
    }
}
