//! synwatch: sees every new TCP connection attempt, logs it, recognises port scans.
//!
//! This binary is the thin edge over the library crates: the command line (clap), the
//! layering of the options into the library's validated configuration, the printers of
//! events on stdout, and exit codes (0 success, 1 runtime failure, 2 bad usage or
//! unreadable input; SPEC §3).
//!
//! Layout: `config` (the detection options and the file, layered), `diag` and
//! `crowdsec_args` (more options, layered), `output` (the event printer: the agent's
//! `EventSink`), one file per command: `run_args` (`synwatch run`, layered into the
//! settings of the agent library's `agent::run`), `replay`, `inventory`, `blocks`,
//! `manual` (completions and man pages). What they run (the agent, replay's engine,
//! the inventory, the offline ban list, the events' text, ...) is the library crate
//! `synwatch-agent`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// `eprintln!` without its panic: a message to stderr that cannot be written (stderr
/// closed, or a pipe whose reader left, as in `synwatch replay F 2>&1 | head`) is lost,
/// and the command ends as it would have. Shadows the standard macro in this crate.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` without its panic (see `eprintln!` above).
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod blocks;
mod config;
mod crowdsec_args;
mod diag;
mod inventory;
mod manual;
mod output;
mod replay;
mod run_args;

// The running agent is the library crate `synwatch-agent`; these names keep `crate::block`
// and the like pointing at its modules.
use synwatch_agent::{block, control, host, limit, privileges};

/// See every new TCP connection attempt, recognise port scans.
///
/// A port scan is one source reaching more than --max-ports distinct destination ports
/// within --window (default: more than 3 ports within 60 s). Events go to stdout, one
/// per line (JSON or a table); diagnostics and the summary go to stderr.
#[derive(Debug, Parser)]
#[command(name = "synwatch", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch interfaces live: log new connection attempts, report port scans
    ///
    /// Observes through an XDP program on each interface where it attaches (needs
    /// CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), else through libpcap with a
    /// kernel-side filter (needs CAP_NET_RAW; or reads the kernel's socket table
    /// with --source sockets, which needs none); blocks scanners in XDP and/or
    /// with nftables or iptables (see --block), serves Prometheus metrics on
    /// --metrics-addr. SIGHUP reloads --config; Ctrl-C or SIGTERM stops it.
    /// One blocking agent per network namespace: a second one refuses to
    /// start (exit 2). A stdout that stalls or closes costs events (counted),
    /// never bans.
    /// Examples:
    ///
    ///   sudo synwatch run --iface eth0 --format json
    ///   sudo synwatch run --source xdp --block xdp --iface eth0
    ///   sudo synwatch run --block none --allow 192.0.2.0/24
    #[command(verbatim_doc_comment)]
    Run(run_args::RunArgs),

    /// Replay pcap/pcapng captures through the detector (nothing is blocked)
    ///
    /// Files form one stream of time: stdin and pipes first, then regular files merged
    /// packet by packet in timestamp order.
    /// Each new connection attempt (incoming unless --direction says otherwise)
    /// is logged once, retransmissions are not, and each scanning source is
    /// reported once per episode. Example:
    ///
    ///   synwatch replay --local 10.0.0.5 --format json capture.pcapng
    #[command(verbatim_doc_comment)]
    Replay(replay::ReplayArgs),

    /// Summarise the traffic this host has (TCP and UDP flows) for writing firewall policy
    ///
    /// Flows are classified in (to a local address), out (from one) or else,
    /// folded so they read like rules: the client's port becomes PORT and
    /// globally routed remote addresses become INTERNET. Live (needs CAP_NET_RAW)
    /// for --duration or until Ctrl-C, or from capture files. Examples:
    ///
    ///   sudo synwatch inventory --duration 10m
    ///   synwatch inventory --pcap day.pcapng --local 192.0.2.1 --format csv
    ///   synwatch inventory --pcap day.pcapng --local 192.0.2.1 --nft-draft > policy.nft
    #[command(verbatim_doc_comment)]
    Inventory(inventory::InventoryArgs),

    /// Inspect and change the ban list (through the running agent, or directly)
    ///
    /// Talks to the agent through the control socket in --state-dir; with no
    /// agent running, works on the saved bans (and on synwatch's rules in the
    /// kernel if a stopped agent left them). Examples:
    ///
    ///   sudo synwatch blocks list
    ///   sudo synwatch blocks add 203.0.113.9 --for 2h
    ///   sudo synwatch blocks remove 203.0.113.9
    #[command(verbatim_doc_comment)]
    Blocks(blocks::BlocksArgs),

    /// Print the shell completion script for SHELL on stdout
    ///
    /// Examples:
    ///
    ///   synwatch completions bash > /usr/share/bash-completion/completions/synwatch
    ///   synwatch completions zsh > /usr/share/zsh/vendor-completions/_synwatch
    ///   synwatch completions fish > /usr/share/fish/vendor_completions.d/synwatch.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff) on stdout, or write every page into a directory
    ///
    /// Examples:
    ///
    ///   synwatch man | man -l -
    ///   synwatch man --out-dir /usr/local/share/man/man1
    #[command(verbatim_doc_comment)]
    Man {
        /// Write synwatch.1 and synwatch-COMMAND.1 for each command here
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// The request was refused or failed (exit 1).
    Failed,
    /// Bad usage or unreadable input (exit 2).
    BadInput,
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

/// The event format when none is configured: a table for people, JSON for programs.
pub fn default_format() -> output::Format {
    if std::io::stdout().is_terminal() {
        output::Format::Table
    } else {
        output::Format::Json
    }
}

/// Validates the detection options, installs the diagnostics subscriber they configure
/// (then says their warnings through it), or says why not: an error in the options
/// themselves is the command's one line on stderr, written before any subscriber exists.
fn settings(
    detect: &mut config::DetectArgs,
    sub: Option<&ArgMatches>,
) -> Result<config::DetectSettings, ExitCode> {
    if let Some(sub) = sub {
        // Every option of the command whose value came from its environment variable:
        // messages about it name the variable, not the flag.
        detect.from_env = sub
            .ids()
            .map(|id| id.as_str())
            .filter(|id| sub.value_source(id) == Some(ValueSource::EnvVariable))
            .map(str::to_owned)
            .collect();
    }
    let layered = config::DetectSettings::from_args(detect).and_then(|s| {
        let log = config::log_settings(&detect.log, &s.file).map_err(anyhow::Error::msg)?;
        Ok((s, log))
    });
    match layered {
        Ok((s, log)) => {
            diag::install(log);
            for warning in &s.warnings {
                tracing::warn!("warning: {warning}");
            }
            Ok(s)
        }
        Err(e) => {
            eprintln!("synwatch: {e:#}");
            Err(ExitCode::from(EXIT_BAD_INPUT))
        }
    }
}

fn exit(result: anyhow::Result<ExitStatus>) -> ExitCode {
    match result {
        Ok(ExitStatus::Success) => ExitCode::SUCCESS,
        Ok(ExitStatus::BadInput) => ExitCode::from(EXIT_BAD_INPUT),
        Ok(ExitStatus::Failed) => ExitCode::from(EXIT_RUNTIME),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A command line clap refuses: one line on stderr (SPEC §3) and exit 2. Help and the
/// version (asked for, or shown for a missing subcommand) print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let message = one_line(&e.render().to_string());
    // Not `args()`, which panics on an argument that is not UTF-8.
    let args = std::env::args_os().skip(1);
    match from_environment(&e, args.map(|a| a.to_string_lossy().into_owned())) {
        Some((var, value)) => eprintln!(
            "synwatch: invalid {var} '{value}': {} (see --help)",
            message.strip_prefix("error: ").unwrap_or(&message)
        ),
        None => eprintln!("synwatch: {message} (see --help)"),
    }
    ExitCode::from(EXIT_BAD_INPUT)
}

/// The environment variable (and its value) that gave the value clap refused, where it
/// was one: its message names the flag, which the command line did not hold.
fn from_environment(
    e: &clap::Error,
    mut args: impl Iterator<Item = String>,
) -> Option<(String, String)> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    // "--source <SOURCE>", "--dry-run[=<BOOL>]": the flag's long name.
    let long = arg
        .strip_prefix("--")?
        .split([' ', '[', '='])
        .next()
        .filter(|l| !l.is_empty())?;
    let flag = format!("--{long}");
    if args.any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
        return None;
    }
    /// Every argument of `cmd` and of its subcommands.
    fn all_args(cmd: &clap::Command) -> Vec<clap::Arg> {
        let mut args: Vec<clap::Arg> = cmd.get_arguments().cloned().collect();
        for sub in cmd.get_subcommands() {
            args.extend(all_args(sub));
        }
        args
    }
    all_args(&Cli::command())
        .into_iter()
        .filter(|a| a.get_long() == Some(long))
        .filter_map(|a| a.get_env().map(|v| v.to_string_lossy().into_owned()))
        .find_map(|var| {
            let value = std::env::var_os(&var)?;
            Some((var, value.to_string_lossy().into_owned()))
        })
}

/// clap's message without its blank lines, usage and "For more information" lines, on
/// one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `pkill -USR1 -x synwatch` asks the agent for its status, and reaches every synwatch
/// process: by default the signal would end a replay of a pipe or a live inventory hours
/// into its work. These have no status to give, so they take the signals and run on.
fn outlive_status_signals() {
    for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false))) {
            eprintln!("synwatch: warning: cannot install a handler for signal {signal}: {e}");
        }
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `run` and `replay` install theirs once their options are layered; the other
    // commands (whose own messages are their output) get the defaults.
    if !matches!(cli.command, Command::Run(_) | Command::Replay(_)) {
        diag::install(diag::LogSettings::default());
    }
    match cli.command {
        Command::Run(mut args) => {
            let settings = match settings(&mut args.detect, matches.subcommand_matches("run")) {
                Ok(s) => s,
                Err(code) => return code,
            };
            exit(run_args::run(&args, settings))
        }
        Command::Blocks(args) => exit(blocks::run(&args)),
        Command::Completions { shell } => exit(
            manual::print(&manual::completions(&mut Cli::command(), shell))
                .map(|()| ExitStatus::Success),
        ),
        Command::Man { out_dir: None } => {
            exit(manual::print(&manual::page(Cli::command())).map(|()| ExitStatus::Success))
        }
        Command::Man { out_dir: Some(dir) } => {
            exit(manual::pages_to(Cli::command(), &dir).map(|names| {
                eprintln!("synwatch: wrote {} in {}", names.join(", "), dir.display());
                ExitStatus::Success
            }))
        }
        Command::Inventory(args) => {
            outlive_status_signals();
            exit(inventory::run(&args))
        }
        Command::Replay(mut args) => {
            outlive_status_signals();
            let settings = match settings(&mut args.detect, matches.subcommand_matches("replay")) {
                Ok(s) => s,
                Err(code) => return code,
            };
            exit(replay::run(&args, settings))
        }
    }
}
