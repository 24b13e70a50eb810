//! synwatch: sees every new TCP connection attempt, logs it, recognises port scans.
//!
//! This binary is the thin edge over the library crates: command line and configuration,
//! wiring a source through decode and detect to the event output, and exit codes
//! (0 success, 1 runtime failure, 2 bad usage or unreadable input; SPEC §3).
//!
//! Layout: `config` (layered options and validation), `output` (event formats),
//! `replay` (the pipeline over capture files).

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod config;
mod output;
mod replay;

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
    /// Replay pcap/pcapng captures through the detector (nothing is blocked)
    ///
    /// Files form one stream of time, read in the order of their first packets.
    /// Each new incoming connection attempt is logged once (retransmissions are
    /// not), and each scanning source once per episode. Example:
    ///
    ///   synwatch replay --local 10.0.0.5 --format json capture.pcapng
    #[command(verbatim_doc_comment)]
    Replay(replay::ReplayArgs),
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

/// The detection options' argument ids, for telling where each value came from.
const DETECT_IDS: [&str; 7] = [
    "max_ports",
    "window",
    "local",
    "allow",
    "direction",
    "format",
    "max_sources",
];

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Replay(mut args) => {
            if let Some(sub) = matches.subcommand_matches("replay") {
                args.detect.from_env = DETECT_IDS
                    .iter()
                    .filter(|id| sub.value_source(id) == Some(ValueSource::EnvVariable))
                    .map(|id| (*id).to_owned())
                    .collect();
            }
            let settings = match config::DetectSettings::from_args(&args.detect) {
                Ok(s) => {
                    for warning in &s.warnings {
                        eprintln!("synwatch: warning: {warning}");
                    }
                    s
                }
                Err(e) => {
                    eprintln!("synwatch: {e:#}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            };
            match replay::run(&args, settings) {
                Ok(replay::Ending::Clean | replay::Ending::OutputClosed) => ExitCode::SUCCESS,
                Ok(replay::Ending::BadInput) => ExitCode::from(EXIT_BAD_INPUT),
                Err(e) => {
                    eprintln!("synwatch: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}
