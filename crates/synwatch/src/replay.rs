//! `synwatch replay`: the detection pipeline over capture files. Nothing is blocked.
//!
//! Files form one stream of time, read in the order of their first packets, so a capture
//! split by rotation replays as the whole whatever order the files are named in. A file that cannot be read is reported in one line and
//! the rest still run; the exit code then says that some input was bad.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use synwatch_capture::{CaptureError, CaptureReader};
use synwatch_decode::{
    DecodeError, Decoded, LinkType, Reassembler, ReassemblyLimits, ReassemblyStats, Skip, Transport,
};
use synwatch_detect::{AddrSet, Detector, Direction, Observation, Probe};

use crate::config::DetectSettings;
use crate::output::{Connection, EventWriter, Format};
use crate::pipeline::{StepSink, step};
use synwatch_agent::event_text::Formatter;

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

/// How the replay ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every file read to its end.
    Clean,
    /// Some input was missing, unreadable, cut short or not supported (exit 2).
    BadInput,
    /// stdout went away (e.g. `| head`): stop quietly.
    OutputClosed,
}

/// What a replay counted.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub files: u64,
    pub files_failed: u64,
    pub packets: u64,
    pub bytes: u64,
    pub tcp: u64,
    pub udp: u64,
    pub not_ip: u64,
    pub other_protocol: u64,
    pub fragments: u64,
    /// What fragment reassembly did over the whole replay.
    pub reassembly: ReassemblyStats,
    pub unsupported_link: u64,
    pub decode_errors: [u64; DecodeError::ALL.len()],
    pub connections_logged: u64,
    /// The latest packet time seen, and packets stamped before it.
    pub latest_ts: i64,
    pub out_of_order: u64,
    pub max_step_back: i64,
}

/// Observations travel from the reading thread to the detecting thread in batches of
/// this many, so the hand-over costs a fraction of a nanosecond per packet.
const BATCH: usize = 4096;

/// How many observations ahead the detecting thread prefetches the detector's slots.
const PREFETCH_AHEAD: usize = 8;

/// Attempts and probes for the detecting thread, each with its `connection` event already
/// formatted (empty for stealth probes): formatting is a pure function of the packet, so
/// the reading thread does it and the detecting thread only decides what is printed.
#[derive(Debug, Default)]
struct Batch {
    obs: Vec<Observation>,
    text: Vec<u8>,
    /// End of each observation's event in `text`.
    ends: Vec<usize>,
}

impl Batch {
    fn clear(&mut self) {
        self.obs.clear();
        self.text.clear();
        self.ends.clear();
    }
}

/// What the detecting thread hands back when the stream ends.
struct DetectDone {
    detector: Detector,
    connections_logged: u64,
    output: io::Result<()>,
}

/// Runs the replay on two threads: this one reads and decodes every packet and passes on
/// only connection attempts and stealth probes; the other runs the detector and writes
/// the events. Decoding is most of the work per packet, detection most of the work per
/// attempt, and the two overlap.
pub fn run(args: &ReplayArgs, settings: DetectSettings) -> anyhow::Result<Ending> {
    // Replay reads the files named and writes stdout: no other privilege, before any
    // byte of a capture is read.
    crate::privileges::keep_only(&[caps::Capability::CAP_DAC_READ_SEARCH]);
    let format = settings.format.unwrap_or_else(crate::default_format);
    let mut totals = Totals::default();
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
    let mut prep = Prepare {
        formatter: Formatter::new(format.into()),
        locals: settings.detector.locals.clone(),
        defrag: Reassembler::new(ReassemblyLimits::default()),
    };
    let detector = Detector::new(settings.detector);

    let (batches, inbox) = mpsc::sync_channel::<Batch>(8);
    let (recycle, spare) = mpsc::channel::<Batch>();
    let worker = thread::Builder::new()
        .name("synwatch-detect".into())
        .spawn(move || detect_thread(detector, format, &inbox, &recycle))
        .map_err(|e| anyhow::anyhow!("cannot start the detection thread: {e}"))?;

    let mut ending = Ending::Clean;
    let mut batch = Batch::default();
    totals.latest_ts = i64::MIN;
    for path in time_order(&args.files) {
        totals.files += 1;
        let sink = (&mut batch, &batches, &spare);
        match replay_file(path, &mut totals, &mut progress, &mut prep, sink) {
            Ok(()) => {}
            Err(FileError::OutputGone) => break,
            Err(FileError::Input(msg)) => {
                progress.clear();
                totals.files_failed += 1;
                tracing::error!("{msg}");
                ending = Ending::BadInput;
            }
        }
    }
    if !batch.obs.is_empty() {
        let _ = batches.send(batch);
    }
    drop(batches);
    totals.reassembly = prep.defrag.stats();
    progress.clear();
    let done = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the detection thread failed"))?;
    totals.connections_logged = done.connections_logged;
    match done.output {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Ending::OutputClosed),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot write events to stdout")),
        Ok(()) => {}
    }
    if totals.max_step_back >= 1_000_000_000 {
        tracing::warn!(
            "warning: {} packets are stamped earlier than packets before them (up to {:.3} s back); \
             the detector counts them at the latest time seen, which can join attempts into one window",
            totals.out_of_order,
            totals.max_step_back as f64 / 1e9
        );
    }
    // When nothing at all could be read, the error lines say everything.
    if !args.no_summary && (totals.packets > 0 || totals.files_failed < totals.files) {
        let elapsed = started.elapsed();
        eprint!("{}", summary(&totals, &done.detector, elapsed));
    }
    Ok(ending)
}

fn detect_thread(
    mut detector: Detector,
    format: Format,
    inbox: &mpsc::Receiver<Batch>,
    recycle: &mpsc::Sender<Batch>,
) -> DetectDone {
    let mut events = EventWriter::new(io::stdout().lock(), format);
    let mut connections_logged = 0;
    let mut output = Ok(());
    'batches: for mut batch in inbox {
        let mut start = 0;
        for (i, (obs, &end)) in batch.obs.iter().zip(&batch.ends).enumerate() {
            // The detector's table slots for an observation a few places on start loading
            // now, so its lookups overlap this one's instead of waiting in turn.
            if let Some(ahead) = batch.obs.get(i + PREFETCH_AHEAD) {
                detector.prefetch(ahead);
            }
            let mut sink = ReplayStep {
                events: &mut events,
                text: &batch.text[start..end],
                logged: &mut connections_logged,
                failed: false,
            };
            if let Err(e) = step(&mut detector, obs, &mut sink) {
                output = Err(e);
                break 'batches;
            }
            start = end;
        }
        batch.clear();
        let _ = recycle.send(batch);
    }
    // The capture has ended: attempts still waiting for their answer time are judged
    // unanswered.
    if output.is_ok() {
        for scan in detector.finish() {
            output = output.and_then(|()| events.scan(&scan));
        }
    }
    if output.is_ok() {
        output = events.flush();
    }
    DetectDone {
        detector,
        connections_logged,
        output,
    }
}

/// Replay's end of the per-observation step: the `connection` line was formatted by the
/// reading thread; nothing more is written after the first failed write.
struct ReplayStep<'a, W: io::Write> {
    events: &'a mut EventWriter<W>,
    text: &'a [u8],
    logged: &'a mut u64,
    failed: bool,
}

impl<W: io::Write> ReplayStep<'_, W> {
    fn write(
        &mut self,
        write: impl FnOnce(&mut EventWriter<W>) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        let result = write(self.events);
        self.failed = result.is_err();
        result
    }
}

impl<W: io::Write> StepSink for ReplayStep<'_, W> {
    fn connection(&mut self, _obs: &Observation, _direction: Direction) -> io::Result<()> {
        *self.logged += 1;
        let text = self.text;
        self.write(|events| events.formatted(text))
    }

    fn scan(&mut self, _detector: &Detector, scan: &synwatch_detect::Scan) -> io::Result<()> {
        self.write(|events| events.scan(scan))
    }
}

enum FileError {
    /// The input is bad: reported, and the other files still run.
    Input(String),
    /// The detecting thread stopped (its output failed): nothing more to do.
    OutputGone,
}

pub(crate) fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
    if path.as_os_str() == "-" {
        CaptureReader::from_reader(Box::new(io::stdin()))
    } else {
        CaptureReader::open(path)
    }
}

/// The files in the order of their first packets' timestamps, so that rotated captures
/// given in any order (`cap-10.pcap cap-2.pcap`, as a shell glob sorts them) replay as
/// one stream of time. Files whose first packet cannot be read (and stdin, which can be
/// read only once) keep their place at the front, where their errors are reported.
pub(crate) fn time_order(files: &[PathBuf]) -> Vec<&PathBuf> {
    let first_ts = |path: &PathBuf| -> Option<i64> {
        // Only regular files can be read twice: a pipe, FIFO or /dev/stdin would lose
        // what the peek consumed.
        if path.as_os_str() == "-" || !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            return None;
        }
        let mut reader = CaptureReader::open(path).ok()?;
        reader.next_packet().ok().flatten().map(|p| p.ts_nanos)
    };
    let mut keyed: Vec<(Option<i64>, &PathBuf)> = files.iter().map(|p| (first_ts(p), p)).collect();
    keyed.sort_by_key(|(ts, _)| *ts);
    let ordered: Vec<&PathBuf> = keyed.into_iter().map(|(_, p)| p).collect();
    if ordered.iter().zip(files).any(|(a, b)| *a != b) {
        let names: Vec<String> = ordered
            .iter()
            .map(|p| display_name(p).to_string())
            .collect();
        tracing::info!(
            "replaying in the time order of the files' first packets: {}",
            names.join(", ")
        );
    }
    ordered
}

/// How a file is named in messages (`-` is stdin).
fn display_name(path: &Path) -> std::path::Display<'_> {
    if path.as_os_str() == "-" {
        Path::new("stdin").display()
    } else {
        path.display()
    }
}

/// The message for a capture error, naming the file unless the error already does.
pub(crate) fn input_error(path: &Path, e: &CaptureError) -> String {
    let path = display_name(path);
    match e {
        CaptureError::Io { path: Some(_), .. } => e.to_string(),
        CaptureError::Truncated { packets: 1.., .. } => {
            format!("{path}: {e}; every packet before it was replayed")
        }
        _ => format!("{path}: {e}"),
    }
}

/// What the reading thread needs to prepare observations for the detecting thread.
struct Prepare {
    formatter: Formatter,
    /// The detector's local addresses, to give each formatted event its direction.
    locals: AddrSet,
    /// One reassembly across all files: they are read in time order, as one capture.
    defrag: Reassembler,
}

impl Prepare {
    fn push(&mut self, batch: &mut Batch, obs: Observation) {
        // An attempt, by the detector's own rule (not a SYN-ACK, not a stealth probe).
        if Probe::classify(obs.flags) == Some(Probe::Syn) {
            let direction = if self.locals.contains(obs.src) {
                Direction::Out
            } else {
                Direction::In
            };
            let event = Connection {
                ts: obs.ts,
                src: obs.src,
                sport: obs.sport,
                dst: obs.dst,
                dport: obs.dport,
                direction,
            };
            self.formatter.connection(&event, &mut batch.text);
        }
        batch.ends.push(batch.text.len());
        batch.obs.push(obs);
    }
}

type BatchSink<'a> = (
    &'a mut Batch,
    &'a mpsc::SyncSender<Batch>,
    &'a mpsc::Receiver<Batch>,
);

fn replay_file(
    path: &Path,
    totals: &mut Totals,
    progress: &mut Progress,
    prep: &mut Prepare,
    (batch, batches, spare): BatchSink<'_>,
) -> Result<(), FileError> {
    let mut reader = open(path).map_err(|e| FileError::Input(input_error(path, &e)))?;
    let mut unsupported: Vec<u32> = Vec::new();
    let mut count: u64 = 0;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                progress.tick(reader.position(), true);
                return Err(FileError::Input(input_error(path, &e)));
            }
        };
        count += 1;
        totals.packets += 1;
        if packet.ts_nanos < totals.latest_ts {
            totals.out_of_order += 1;
            totals.max_step_back = totals
                .max_step_back
                .max(totals.latest_ts.saturating_sub(packet.ts_nanos));
        } else {
            totals.latest_ts = packet.ts_nanos;
        }
        totals.bytes += u64::from(packet.orig_len);
        // Resolved per packet: in pcapng each section and interface has its own link type.
        let Some(link) = LinkType::from_linktype(packet.linktype) else {
            totals.unsupported_link += 1;
            // A few named in the message are enough; a crafted file may hold thousands.
            if unsupported.len() < 8 && !unsupported.contains(&packet.linktype) {
                unsupported.push(packet.linktype);
            }
            continue;
        };
        let at = u64::try_from(packet.ts_nanos).unwrap_or(0);
        match prep.defrag.decode(link, packet.data, at) {
            Ok(Decoded::Segment(seg)) => match seg.transport {
                Transport::Tcp(_) => {
                    totals.tcp += 1;
                    let Some(obs) = Observation::of_segment(packet.ts_nanos, &seg) else {
                        continue;
                    };
                    prep.push(batch, obs);
                    if batch.obs.len() == BATCH {
                        let next = spare.try_recv().unwrap_or_default();
                        let full = std::mem::replace(batch, next);
                        batches.send(full).map_err(|_| FileError::OutputGone)?;
                    }
                }
                Transport::Udp => totals.udp += 1,
            },
            Ok(Decoded::Skipped(Skip::NotIp)) => totals.not_ip += 1,
            Ok(Decoded::Skipped(Skip::OtherProtocol)) => totals.other_protocol += 1,
            Ok(Decoded::Skipped(Skip::Fragment)) => totals.fragments += 1,
            Err(kind) => totals.decode_errors[kind.index()] += 1,
        }
        if count & 0xffff == 0 {
            progress.tick(reader.position(), false);
        }
    }
    progress.tick(reader.position(), true);
    if !unsupported.is_empty() {
        let list: Vec<String> = unsupported.iter().map(u32::to_string).collect();
        return Err(FileError::Input(format!(
            "{}: link type {} not supported (supported: Ethernet, Linux cooked SLL/SLL2, raw IPv4/IPv6, BSD loopback); its packets were skipped",
            display_name(path),
            list.join(", ")
        )));
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn summary(t: &Totals, det: &Detector, elapsed: Duration) -> String {
    let s = det.stats();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        t.packets as f64 / secs
    } else {
        0.0
    };
    let problems: Vec<String> = DecodeError::ALL
        .iter()
        .filter(|k| t.decode_errors[k.index()] > 0)
        .map(|k| format!("{} {}", k.as_str(), thousands(t.decode_errors[k.index()])))
        .collect();
    let problems = if problems.is_empty() {
        "none".to_owned()
    } else {
        problems.join(", ")
    };
    format!(
        "synwatch replay summary\n\
         \x20 files:           {} ({} unreadable or incomplete)\n\
         \x20 packets:         {} ({} on the wire), {} TCP, {} UDP\n\
         \x20 attempts:        {} incoming, {} outgoing, {} retransmissions, {} stealth probes\n\
         \x20 connections:     {} logged\n\
         \x20 scans:           {} port scans, {} address sweeps\n\
         \x20 sources tracked: {} at the end ({} evicted to stay under the cap of {})\n\
         \x20 decode problems: {}\n\
         \x20 skipped:         {} not IP, {} other protocols, {} fragments held or past the TCP header, {} on unsupported links\n\
         \x20 fragments:       {} seen, {} datagrams reassembled, {} given up ({} invalid or overlapping, {} evicted, {} timed out)\n\
         \x20 time order:      {} packets stamped earlier than one before them (up to {:.3} s back)\n\
         \x20 elapsed:         {:.3} s, {:.2} M packets/s\n",
        t.files,
        t.files_failed,
        thousands(t.packets),
        human_bytes(t.bytes),
        thousands(t.tcp),
        thousands(t.udp),
        thousands(s.attempts_in),
        thousands(s.attempts_out),
        thousands(s.retransmissions),
        thousands(s.stealth_probes),
        thousands(t.connections_logged),
        thousands(s.scans),
        thousands(s.sweeps),
        thousands(det.tracked_sources() as u64),
        thousands(s.sources_evicted),
        thousands(det.config().max_sources as u64),
        problems,
        thousands(t.not_ip),
        thousands(t.other_protocol),
        thousands(t.fragments),
        thousands(t.unsupported_link),
        thousands(t.reassembly.fragments),
        thousands(t.reassembly.completed),
        thousands(t.reassembly.dropped + t.reassembly.evicted + t.reassembly.timed_out),
        thousands(t.reassembly.dropped),
        thousands(t.reassembly.evicted),
        thousands(t.reassembly.timed_out),
        thousands(t.out_of_order),
        t.max_step_back as f64 / 1e9,
        secs,
        rate / 1e6,
    )
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

    /// `position` is the byte offset in the current file; `file_done` moves on to the next.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(3_000_000), "3,000,000");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
