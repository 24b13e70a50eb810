//! `synwatch replay`: its options, and the wiring of the agent library's replay
//! ([`synwatch_agent::replay`]: the detection pipeline over capture files, nothing
//! blocked) to the event printer on stdout, the progress bar and the summary on stderr.

use std::io::{self, IsTerminal};
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use synwatch_agent::packets;
use synwatch_agent::replay::{Ending, FormattedSink, human_bytes, replay, summary};

use crate::config::DetectSettings;
use crate::output::EventWriter;

/// `synwatch replay` options beyond the shared detection ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub detect: crate::config::DetectArgs,

    /// Do not print the summary on stderr at the end
    #[arg(long, env = "SYNWATCH_NO_SUMMARY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_summary: bool,

    /// Capture files (pcap or pcapng, optionally gzip-compressed); `-` reads stdin
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

impl<W: io::Write> FormattedSink for EventWriter<W> {
    fn formatted(&mut self, event: &[u8]) -> io::Result<()> {
        EventWriter::formatted(self, event)
    }

    fn joins_events(&self) -> bool {
        self.writes_lines_as_they_are()
    }

    fn formatted_pieces(&mut self, text: &[u8], pieces: &[Range<usize>]) -> io::Result<()> {
        self.write_pieces(text, pieces)
    }
}

pub fn run(args: &ReplayArgs, settings: DetectSettings) -> anyhow::Result<crate::ExitStatus> {
    // Replay reads the files named and writes stdout: no other privilege, before any
    // byte of a capture is read.
    crate::privileges::keep_only(&[caps::Capability::CAP_DAC_READ_SEARCH]);
    let format = settings.format.unwrap_or_else(crate::default_format);
    let mut progress = Progress::new(&args.files);
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is the edge that reads clocks"
    )]
    let started = Instant::now();
    if settings.detector.locals.is_empty()
        && settings.detector.direction != synwatch_detect::DirectionFilter::In
    {
        tracing::warn!(
            "warning: without --local every attempt counts as incoming; give this \
             host's addresses for --direction out or both to find outgoing ones"
        );
    }
    let open_sink = move || EventWriter::new(io::stdout().lock(), format);
    let done = replay(
        &args.files,
        settings.detector,
        format.into(),
        open_sink,
        &mut progress,
    )?;
    let status = match done.ending {
        Ending::OutputClosed => return Ok(crate::ExitStatus::Success),
        Ending::OutputFailed(e) => {
            return Err(anyhow::Error::new(e).context("cannot write events to stdout"));
        }
        Ending::Clean => crate::ExitStatus::Success,
        Ending::BadInput => crate::ExitStatus::BadInput,
    };
    let t = &done.totals;
    // When nothing at all could be read, the error lines say everything.
    if !args.no_summary && (t.packets > 0 || t.files_failed < t.files) {
        let elapsed = started.elapsed();
        // A diagnostic like the others: one object under --log-format json, and not
        // shown below --log-level info.
        tracing::info!("{}", summary(t, &done.detector, elapsed).trim_end());
    }
    Ok(status)
}

/// A one-line progress bar on stderr, shown only when stderr is a terminal and the input
/// is large enough to take a while.
struct Progress {
    enabled: bool,
    total: u64,
    done_before: u64,
    last_draw: Option<Instant>,
    drawn: bool,
}

/// Inputs smaller than this replay in well under a second: no bar.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

impl Progress {
    fn new(files: &[PathBuf]) -> Self {
        let total: u64 = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Self {
            enabled: io::stderr().is_terminal() && total >= PROGRESS_MIN_BYTES,
            total,
            done_before: 0,
            last_draw: None,
            drawn: false,
        }
    }
}

impl packets::Progress for Progress {
    fn tick(&mut self, position: u64, file_done: bool) {
        if !self.enabled {
            return;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the binary is the edge that reads clocks"
        )]
        let now = Instant::now();
        let due = self
            .last_draw
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(200));
        let done = self.done_before + position;
        if due {
            self.last_draw = Some(now);
            let fraction = (done as f64 / self.total.max(1) as f64).min(1.0);
            let filled = (fraction * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {} / {}\x1b[K",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                fraction * 100.0,
                human_bytes(done),
                human_bytes(self.total)
            );
            self.drawn = true;
        }
        if file_done {
            self.done_before = done;
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}
