//! Replay: the detection pipeline over capture files, with no blocker. Its engine runs on
//! two threads: the calling one reads and decodes every packet ([`crate::packets`]) and
//! passes on only connection attempts and stealth probes, each `connection` event
//! already formatted; the detecting one runs the per-observation step
//! ([`crate::pipeline::step`]) and writes what is due to the caller's sink. Decoding is
//! most of the work per packet, detection most of the work per attempt, and the two
//! overlap.
//!
//! Files form one stream of time, whatever order they are named in: regular files are
//! merged packet by packet in timestamp order (a capture split by rotation replays as
//! the whole, and captures that overlap, one per interface or sensor, as the one capture
//! they would have made); streams (stdin, pipes) are read first, one after another. A
//! file that cannot be read is reported in one line and the rest still run; the ending
//! then says that some input was bad.

use std::io;
use std::ops::ControlFlow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use synwatch_capture::Packet;
use synwatch_decode::{DecodeError, Decoded, ReassemblyStats, Skip, Transport};
use synwatch_detect::{AddrSet, Config, Detector, Direction, Observation, Probe};

use crate::event_text::{Format, Formatter};
use crate::events::{Connection, EventSink};
use crate::packets::{
    First, Merged, Next, NotDecoded, Progress, Segments, display_name, each_merged, each_read,
    time_order_first,
};
use crate::pipeline::{PREFETCH_AHEAD, StepSink, step};

/// Where a replay's events go: an [`EventSink`] that also takes `connection` events
/// already formatted by a [`Formatter`] of its format (replay formats them on its
/// reading thread, the sink only writes them).
pub trait FormattedSink: EventSink {
    fn formatted(&mut self, event: &[u8]) -> io::Result<()>;

    /// Whether one piece given to [`FormattedSink::formatted_pieces`] may hold several
    /// events (lines written as they are may; rows padded one by one may not).
    fn joins_events(&self) -> bool {
        false
    }

    /// The events formatted in `pieces` of `text`, in order, each piece one event (or,
    /// where [`FormattedSink::joins_events`], several). A sink that writes them as they
    /// are can write them from where they lie, without copying them first.
    fn formatted_pieces(&mut self, text: &[u8], pieces: &[Range<usize>]) -> io::Result<()> {
        for piece in pieces {
            self.formatted(text.get(piece.clone()).unwrap_or_default())?;
        }
        Ok(())
    }
}

/// How the replay ended.
#[derive(Debug)]
pub enum Ending {
    /// Every file read to its end.
    Clean,
    /// Some input was missing, unreadable, cut short or not supported.
    BadInput,
    /// The sink's writer went away (e.g. stdout into `| head`): stop quietly.
    OutputClosed,
    /// Writing the events failed otherwise.
    OutputFailed(io::Error),
}

/// What a replay did: how it ended, what it counted, and the detector as it was at the
/// end (for its statistics).
#[derive(Debug)]
pub struct Replayed {
    pub ending: Ending,
    pub totals: Totals,
    pub detector: Detector,
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
    /// Packets a cooked capture marks as having come in from a `--local` address to
    /// another (martians the kernel drops, [`left_out`]).
    pub from_local: u64,
    pub decode_errors: [u64; DecodeError::ALL.len()],
    pub connections_logged: u64,
    /// The latest packet time seen, and packets stamped before it.
    pub latest_ts: i64,
    pub out_of_order: u64,
    pub max_step_back: i64,
    /// Times detection started again (the packets went back a window or more, and the
    /// next attempts stayed back).
    pub restarts: u64,
}

/// Observations travel from the reading thread to the detecting thread in batches of
/// this many, so the hand-over costs a fraction of a nanosecond per packet.
const BATCH: usize = 4096;

/// Attempts and probes for the detecting thread, each with its `connection` event already
/// formatted (empty for stealth probes): formatting is a pure function of the packet, so
/// the reading thread does it and the detecting thread only decides what is printed.
#[derive(Debug, Default)]
struct Batch {
    obs: Vec<Observation>,
    text: Vec<u8>,
    /// End of each observation's event in `text`.
    ends: Vec<usize>,
    /// Detection starts again before this batch ([`Detector::restart`]): the attempts
    /// went back in time by [`Prepare::gap`] or more, and stayed back.
    restart: bool,
}

impl Batch {
    fn clear(&mut self) {
        self.obs.clear();
        self.text.clear();
        self.ends.clear();
        self.restart = false;
    }
}

/// What the detecting thread hands back when the stream ends.
struct DetectDone {
    detector: Detector,
    connections_logged: u64,
    restarts: u64,
    output: io::Result<()>,
}

/// Replays `files` through a detector configured by `config`, the events in `format`
/// to the sink `open_sink` makes on the detecting thread (so that it may hold a lock,
/// such as stdout's, that cannot move between threads).
pub fn replay<S, F>(
    files: &[PathBuf],
    config: Config,
    format: Format,
    open_sink: F,
    progress: &mut impl Progress,
) -> anyhow::Result<Replayed>
where
    S: FormattedSink,
    F: FnOnce() -> S + Send + 'static,
{
    let mut totals = Totals::default();
    let mut prep = Prepare {
        formatter: Formatter::new(format),
        locals: config.locals.clone(),
        gap: config.window.max(60 * 1_000_000_000),
        latest: i64::MIN,
        held: None,
        settled: false,
        rebased: false,
        segments: Segments::reassembling(),
    };
    let detector = Detector::new(config);

    let (batches, inbox) = mpsc::sync_channel::<Batch>(8);
    let (recycle, spare) = mpsc::channel::<Batch>();
    let worker = thread::Builder::new()
        .name("synwatch-detect".into())
        .spawn(move || detect_thread(detector, open_sink, &inbox, &recycle))
        .map_err(|e| anyhow::anyhow!("cannot start the detection thread: {e}"))?;

    let mut ending = Ending::Clean;
    let mut batch = Batch::default();
    totals.latest_ts = i64::MIN;
    // Streams first, one after another (they cannot be looked into ahead); then the
    // regular files, merged into one stream of time where there are several.
    let (streams, regular): (Vec<_>, Vec<_>) = time_order_first(files)
        .into_iter()
        .partition(|(first, _)| *first == First::Stream);
    let mut gone = false;
    for (_, path) in streams {
        totals.files += 1;
        let sink = (&mut batch, &batches, &spare);
        match replay_file(path, &mut totals, progress, &mut prep, sink) {
            Ok(()) => {}
            Err(FileError::OutputGone) => {
                gone = true;
                break;
            }
            Err(FileError::Input(msg)) => {
                progress.clear();
                failed(&mut totals, &mut ending, &msg);
            }
        }
    }
    if !gone && let [(_, path)] = regular[..] {
        // One file: read as it lies, without copying its packets out.
        totals.files += 1;
        let sink = (&mut batch, &batches, &spare);
        if let Err(FileError::Input(msg)) =
            replay_file(path, &mut totals, progress, &mut prep, sink)
        {
            progress.clear();
            failed(&mut totals, &mut ending, &msg);
        }
    } else if !gone && !regular.is_empty() {
        let sink = (&mut batch, &batches, &spare);
        replay_merged(
            &regular,
            &mut totals,
            progress,
            &mut prep,
            sink,
            &mut ending,
        );
    }
    prep.end(&mut batch);
    if !batch.obs.is_empty() {
        let _ = batches.send(batch);
    }
    drop(batches);
    totals.reassembly = prep.segments.reassembly();
    progress.clear();
    let done = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the detection thread failed"))?;
    totals.connections_logged = done.connections_logged;
    totals.restarts = done.restarts;
    let ending = match done.output {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ending::OutputClosed,
        Err(e) => Ending::OutputFailed(e),
        Ok(()) => {
            warn_out_of_order(&totals);
            ending
        }
    };
    Ok(Replayed {
        ending,
        totals,
        detector: done.detector,
    })
}

fn warn_out_of_order(totals: &Totals) {
    if totals.restarts > 0 {
        tracing::warn!(
            "warning: the packets went back in time by a window or more and stayed back {} times: \
             detection started again at each, as for a new capture",
            totals.restarts,
        );
    }
    if totals.max_step_back >= 1_000_000_000 {
        tracing::warn!(
            "warning: {} packets are stamped earlier than packets before them (up to {:.3} s back); \
             the detector counts each at the latest time seen (which can join attempts into one window), unless detection started again there",
            totals.out_of_order,
            totals.max_step_back as f64 / 1e9
        );
    }
}

fn detect_thread<S: FormattedSink>(
    mut detector: Detector,
    open_sink: impl FnOnce() -> S,
    inbox: &mpsc::Receiver<Batch>,
    recycle: &mpsc::Sender<Batch>,
) -> DetectDone {
    let mut events = open_sink();
    let mut connections_logged = 0;
    let mut restarts = 0;
    let mut output = Ok(());
    let mut next = inbox.recv().ok();
    let join = events.joins_events();
    // The connection lines of a batch to print, as pieces of its text, written at the
    // batch's end (or before a scan, which comes after them).
    let mut pieces: Vec<Range<usize>> = Vec::new();
    'batches: while let Some(mut batch) = next.take() {
        if batch.restart {
            restarts += 1;
            for scan in detector.restart() {
                if let Err(e) = events.scan(&scan, None) {
                    output = Err(e);
                    break 'batches;
                }
            }
        }
        let mut start = 0;
        for (i, (obs, &end)) in batch.obs.iter().zip(&batch.ends).enumerate() {
            // The detector's table slots for an observation a few places on start loading
            // now, so its lookups overlap this one's instead of waiting in turn.
            if let Some(ahead) = batch.obs.get(i + PREFETCH_AHEAD) {
                detector.prefetch(ahead);
            }
            let mut sink = ReplayStep {
                events: &mut events,
                text: &batch.text,
                event: start..end,
                pieces: &mut pieces,
                join,
                logged: &mut connections_logged,
                failed: false,
            };
            if let Err(e) = step(&mut detector, obs, &mut sink) {
                output = Err(e);
                break 'batches;
            }
            start = end;
        }
        if let Err(e) = events.formatted_pieces(&batch.text, &pieces) {
            output = Err(e);
            break 'batches;
        }
        pieces.clear();
        batch.clear();
        let _ = recycle.send(batch);
        next = match inbox.try_recv() {
            Ok(batch) => Some(batch),
            Err(mpsc::TryRecvError::Disconnected) => None,
            // The reader is behind (or waits on a pipe): what was printed goes out now.
            Err(mpsc::TryRecvError::Empty) => {
                if let Err(e) = events.flush() {
                    output = Err(e);
                    break 'batches;
                }
                inbox.recv().ok()
            }
        };
    }
    // The capture has ended: attempts still waiting for their answer time are judged
    // unanswered.
    if output.is_ok() {
        for scan in detector.finish() {
            output = output.and_then(|()| events.scan(&scan, None));
        }
    }
    if output.is_ok() {
        output = events.flush();
    }
    DetectDone {
        detector,
        connections_logged,
        restarts,
        output,
    }
}

/// Replay's end of the per-observation step: the `connection` line was formatted by the
/// reading thread (`event` of the batch's `text`) and joins the `pieces` to print;
/// nothing more is written after the first failed write.
struct ReplayStep<'a, S> {
    events: &'a mut S,
    text: &'a [u8],
    event: Range<usize>,
    pieces: &'a mut Vec<Range<usize>>,
    /// Whether a piece may hold several events ([`FormattedSink::joins_events`]).
    join: bool,
    logged: &'a mut u64,
    failed: bool,
}

impl<S: FormattedSink> ReplayStep<'_, S> {
    fn write(&mut self, write: impl FnOnce(&mut S) -> io::Result<()>) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        let result = write(self.events);
        self.failed = result.is_err();
        result
    }
}

impl<S: FormattedSink> StepSink for ReplayStep<'_, S> {
    fn connection(&mut self, _obs: &Observation, _direction: Direction) -> io::Result<()> {
        *self.logged += 1;
        let event = self.event.clone();
        match self.pieces.last_mut() {
            // Right after the last piece in the text: one piece, one write.
            Some(last) if self.join && last.end == event.start => last.end = event.end,
            _ => self.pieces.push(event),
        }
        Ok(())
    }

    fn scan(&mut self, _detector: &Detector, scan: &synwatch_detect::Scan) -> io::Result<()> {
        // The connections before it go out first (the list is kept for its room).
        let (text, pieces) = (self.text, std::mem::take(self.pieces));
        let written = self.write(|events| events.formatted_pieces(text, &pieces));
        *self.pieces = pieces;
        self.pieces.clear();
        written?;
        self.write(|events| events.scan(scan, None))
    }
}

enum FileError {
    /// The input is bad: reported, and the other files still run.
    Input(String),
    /// The detecting thread stopped (its output failed): nothing more to do.
    OutputGone,
}

/// What the reading thread needs to prepare observations for the detecting thread.
struct Prepare {
    formatter: Formatter,
    /// The detector's local addresses, to give each formatted event its direction.
    locals: AddrSet,
    /// A step of the attempts' time this long or longer, back or ahead, is looked at
    /// again with the attempt after it ([`Prepare::offer`]): the detector's window, and
    /// at least a minute (interfaces' packets interleaved a little out of order are
    /// counted at the latest time).
    gap: i64,
    /// The latest attempt's time the detector was given.
    latest: i64,
    /// An attempt a gap away from `latest`, waiting for the next to say which it is.
    held: Option<(Observation, Step)>,
    /// An attempt a gap away was given because nothing followed it yet (a pipe that
    /// waits): the next attempt still says what it was ([`Prepare::settle`]).
    settled: bool,
    /// The attempts' time was set anew (detection started again, or an attempt
    /// stamped ahead was found wrong) since the reading thread last looked.
    rebased: bool,
    /// One reassembly across all files: they are read in time order, as one capture.
    segments: Segments,
}

/// Which way an attempt's time stepped by a gap or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Back,
    Ahead,
}

impl Prepare {
    /// Puts `obs` in the batch (the detector counts it at `at`), with its `connection`
    /// line as stamped.
    fn push_at(&mut self, batch: &mut Batch, obs: Observation, at: i64) {
        // An attempt, by the detector's own rule (not a SYN-ACK, not a stealth probe).
        if Probe::classify(obs.flags) == Some(Probe::Syn) {
            let event = Connection::of(&obs, obs.direction(&self.locals));
            self.formatter.connection(&event, &mut batch.text);
        }
        batch.ends.push(batch.text.len());
        batch.obs.push(Observation { ts: at, ..obs });
    }

    fn push(&mut self, batch: &mut Batch, obs: Observation) {
        self.push_at(batch, obs, obs.ts);
    }

    /// Gives the detector the next attempt or probe, in order. Time that steps back by a
    /// gap or more and stays back (the next attempt is back too: `cat a.pcapng
    /// b.pcapng` with b older, a clock stepped back) starts detection again, as for a
    /// new capture; one attempt stamped a gap back or ahead of those around it is a
    /// wrong stamp, counted at the latest time (a single packet stamped years ahead
    /// does not move the detector's time, nor one stamped far back erase a scan).
    fn offer(&mut self, obs: Observation, sink: BatchSink<'_>) -> ControlFlow<FileError> {
        let (batch, batches, spare) = sink;
        if let Some((held, step)) = self.held.take() {
            match step {
                Step::Back if obs.ts < self.latest.saturating_sub(self.gap) => {
                    self.start_again(held.ts, (batch, batches, spare))?;
                    self.push(batch, held);
                }
                Step::Back => self.push(batch, held),
                Step::Ahead if obs.ts >= held.ts.saturating_sub(self.gap) => {
                    self.latest = held.ts;
                    self.push(batch, held);
                }
                Step::Ahead => {
                    self.rebased = true;
                    self.push_at(batch, held, self.latest);
                }
            }
        } else if std::mem::take(&mut self.settled) && obs.ts < self.latest.saturating_sub(self.gap)
        {
            // The attempt given when the pipe waited is judged now, by this one, back
            // a gap from the latest time too (after one stamped back: the time went
            // back; after one stamped ahead, now the latest: that stamp was wrong, and
            // the detector's time moved to it): detection starts again before this one.
            self.start_again(obs.ts, (batch, batches, spare))?;
        }
        if self.latest != i64::MIN {
            if obs.ts < self.latest.saturating_sub(self.gap) {
                self.held = Some((obs, Step::Back));
                return ControlFlow::Continue(());
            }
            if obs.ts > self.latest.saturating_add(self.gap) {
                self.held = Some((obs, Step::Ahead));
                return ControlFlow::Continue(());
            }
        }
        self.latest = self.latest.max(obs.ts);
        self.push(batch, obs);
        if batch.obs.len() >= BATCH {
            hand_over(batch, batches, spare)?;
        }
        ControlFlow::Continue(())
    }

    /// Detection starts again before the next attempt put in the batch (a batch of its
    /// own), from time `at`.
    fn start_again(&mut self, at: i64, sink: BatchSink<'_>) -> ControlFlow<FileError> {
        let (batch, batches, spare) = sink;
        if !batch.obs.is_empty() {
            hand_over(batch, batches, spare)?;
        }
        batch.restart = true;
        self.rebased = true;
        self.latest = at;
        ControlFlow::Continue(())
    }

    /// The input waits (a pipe): an attempt held for the next is given now, and the
    /// next attempt, when one comes, says what it was. One stamped back is counted at
    /// the latest time (the next, back too, starts detection again before it); one
    /// stamped ahead at its own (a quiet spell on a live pipe is the common case; the
    /// next, back again, shows the stamp was wrong and starts detection again, the
    /// detector's time having moved to it).
    fn settle(&mut self, batch: &mut Batch) {
        if let Some((held, step)) = self.held.take() {
            self.settled = true;
            match step {
                Step::Back => self.push_at(batch, held, self.latest),
                Step::Ahead => {
                    self.latest = held.ts;
                    self.push(batch, held);
                }
            }
        }
    }

    /// The input has ended: an attempt held for the next is given as it is, nothing
    /// after it to join it with.
    fn end(&mut self, batch: &mut Batch) {
        if let Some((held, step)) = self.held.take() {
            if step == Step::Ahead {
                self.latest = held.ts;
            }
            self.push(batch, held);
        }
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
    progress: &mut impl Progress,
    prep: &mut Prepare,
    (batch, batches, spare): BatchSink<'_>,
) -> Result<(), FileError> {
    let mut unsupported = UnsupportedLinks::default();
    let read = each_read(path, progress, |next| {
        let packet = match next {
            Next::Packet(packet) => packet,
            // A pipe with nothing more yet: what was read goes to the detector now, not
            // when the batch fills (a quiet live link could take minutes).
            Next::CaughtUp => {
                prep.settle(batch);
                if batch.obs.is_empty() {
                    return ControlFlow::Continue(());
                }
                return hand_over(batch, batches, spare);
            }
        };
        take(
            packet,
            totals,
            prep,
            &mut unsupported,
            (batch, batches, spare),
        )
    });
    match read {
        Ok(None) => {}
        Ok(Some(stopped)) => return Err(stopped),
        Err(msg) => return Err(FileError::Input(msg)),
    }
    match unsupported.message(path) {
        Some(line) => Err(FileError::Input(line)),
        None => Ok(()),
    }
}

/// One packet of a file through the reading thread's step: counted, decoded, and its
/// observation (with its `connection` line) put in the batch.
fn take(
    packet: Packet<'_>,
    totals: &mut Totals,
    prep: &mut Prepare,
    unsupported: &mut UnsupportedLinks,
    (batch, batches, spare): BatchSink<'_>,
) -> ControlFlow<FileError> {
    totals.packets += 1;
    let back = totals.latest_ts.saturating_sub(packet.ts_nanos);
    if back > 0 {
        totals.out_of_order += 1;
        totals.max_step_back = totals.max_step_back.max(back);
    } else {
        totals.latest_ts = packet.ts_nanos;
    }
    totals.bytes += u64::from(packet.orig_len);
    if left_out(&prep.locals, &packet) {
        totals.from_local += 1;
        return ControlFlow::Continue(());
    }
    // Resolved per packet: in pcapng each section and interface has its own link type.
    match prep.segments.decode(
        packet.linktype,
        packet.data,
        packet.ts_nanos,
        packet.orig_len,
    ) {
        Ok(Decoded::Segment(seg)) => {
            match seg.transport {
                Transport::Tcp(_) => totals.tcp += 1,
                Transport::Udp => totals.udp += 1,
            }
            // The packet's segment, then any other its datagram's copies gave (not
            // `Segments::with_extra`: `prep.push` needs `prep` while the segments are
            // taken).
            let mut seg = Some(seg);
            while let Some(s) = seg {
                if let Some(obs) = Observation::of_segment(packet.ts_nanos, &s) {
                    prep.offer(obs, (batch, batches, spare))?;
                    // A new stream of time (or one stamp found wrong): packets are out
                    // of order against it alone.
                    if std::mem::take(&mut prep.rebased) {
                        totals.latest_ts = packet.ts_nanos;
                    }
                }
                seg = prep.segments.take_extra();
            }
        }
        Ok(Decoded::Skipped(Skip::NotIp)) => totals.not_ip += 1,
        Ok(Decoded::Skipped(Skip::OtherProtocol)) => totals.other_protocol += 1,
        Ok(Decoded::Skipped(Skip::Fragment)) => totals.fragments += 1,
        Err(NotDecoded::Link(linktype)) => {
            totals.unsupported_link += 1;
            unsupported.note(linktype);
        }
        Err(NotDecoded::Bad(kind)) => totals.decode_errors[kind.index()] += 1,
    }
    ControlFlow::Continue(())
}

/// Whether `packet` came in, by its cooked capture's packet type, from one of this
/// host's addresses to another host: a martian the kernel drops (the live filter leaves
/// such packets out too), neither an attempt nor an answer. A sweeper that forges a
/// SYN-ACK "from" each address it probed must not have its attempts taken as answered.
/// Other link types do not say which way a packet went; their packets all count.
fn left_out(locals: &AddrSet, packet: &Packet<'_>) -> bool {
    let Some(link) = synwatch_decode::LinkType::from_linktype(packet.linktype) else {
        return false;
    };
    synwatch_decode::came_in(link, packet.data)
        .is_some_and(|(src, dst)| locals.contains(src) && !locals.contains(dst))
}

/// A file that could not be read, or only in part: said in one line, and the replay
/// ends saying that some input was bad.
fn failed(totals: &mut Totals, ending: &mut Ending, msg: &str) {
    totals.files_failed += 1;
    tracing::error!("{msg}");
    *ending = Ending::BadInput;
}

/// Several regular files, as one stream of time ([`each_merged`]).
fn replay_merged(
    files: &[(First, &PathBuf)],
    totals: &mut Totals,
    progress: &mut impl Progress,
    prep: &mut Prepare,
    (batch, batches, spare): BatchSink<'_>,
    ending: &mut Ending,
) {
    let given: Vec<(Option<i64>, &Path)> = files
        .iter()
        .map(|&(first, path)| match first {
            First::At(ts) => (Some(ts), path.as_path()),
            _ => (None, path.as_path()),
        })
        .collect();
    totals.files += given.len() as u64;
    let mut to = MergedReplay {
        files: &given,
        unsupported: given.iter().map(|_| UnsupportedLinks::default()).collect(),
        totals,
        prep,
        sink: (batch, batches, spare),
        ending,
    };
    let _ = each_merged(&given, progress, &mut to);
}

/// Replay's end of [`each_merged`].
struct MergedReplay<'a, 'f> {
    files: &'a [(Option<i64>, &'f Path)],
    unsupported: Vec<UnsupportedLinks>,
    totals: &'a mut Totals,
    prep: &'a mut Prepare,
    sink: BatchSink<'a>,
    ending: &'a mut Ending,
}

impl Merged<()> for MergedReplay<'_, '_> {
    fn packet(&mut self, file: usize, packet: Packet<'_>) -> ControlFlow<()> {
        let (batch, batches, spare) = (&mut *self.sink.0, self.sink.1, self.sink.2);
        let Some(unsupported) = self.unsupported.get_mut(file) else {
            return ControlFlow::Continue(());
        };
        match take(
            packet,
            self.totals,
            self.prep,
            unsupported,
            (batch, batches, spare),
        ) {
            ControlFlow::Continue(()) => ControlFlow::Continue(()),
            ControlFlow::Break(_) => ControlFlow::Break(()),
        }
    }

    fn ended(&mut self, file: usize, result: Result<(), String>) -> ControlFlow<()> {
        let path = self.files.get(file).map(|&(_, p)| p);
        let unsupported = self.unsupported.get(file).zip(path);
        let result = result.and_then(|()| match unsupported {
            Some((links, path)) => links.message(path).map_or(Ok(()), Err),
            None => Ok(()),
        });
        if let Err(msg) = result {
            failed(self.totals, self.ending, &msg);
        }
        ControlFlow::Continue(())
    }
}

/// Sends `batch` to the detecting thread, taking a spare one (or a new one) in its place.
fn hand_over(
    batch: &mut Batch,
    batches: &mpsc::SyncSender<Batch>,
    spare: &mpsc::Receiver<Batch>,
) -> ControlFlow<FileError> {
    let next = spare.try_recv().unwrap_or_default();
    let full = std::mem::replace(batch, next);
    match batches.send(full) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(FileError::OutputGone),
    }
}

/// The link types of a capture file's packets that synwatch cannot decode (`replay` and
/// `inventory --pcap` alike: their packets are skipped, and the file named, exit 2).
#[derive(Debug, Default)]
pub struct UnsupportedLinks(Vec<u32>);

impl UnsupportedLinks {
    /// A packet of `linktype` could not be decoded. A few named in the message are
    /// enough; a crafted file may hold thousands.
    pub fn note(&mut self, linktype: u32) {
        if self.0.len() < 8 && !self.0.contains(&linktype) {
            self.0.push(linktype);
        }
    }

    /// The line that names them, if there were any.
    pub fn message(&self, path: &Path) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let list: Vec<String> = self.0.iter().map(u32::to_string).collect();
        Some(format!(
            "{}: link type {} not supported (supported: Ethernet, Linux cooked SLL/SLL2, raw IPv4/IPv6, BSD loopback); its packets were skipped",
            display_name(path),
            list.join(", ")
        ))
    }
}

/// A count with thousands separated by commas.
pub fn thousands(n: u64) -> String {
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

/// A byte count in B, KiB, MiB, ... (one decimal above bytes).
pub fn human_bytes(n: u64) -> String {
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

/// The summary of a replay, as written on stderr at its end.
pub fn summary(t: &Totals, det: &Detector, elapsed: Duration) -> String {
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
        "replay summary\n\
         \x20 files:           {} ({} unreadable or incomplete)\n\
         \x20 packets:         {} ({} on the wire), {} TCP, {} UDP\n\
         \x20 attempts:        {} incoming, {} outgoing, {} retransmissions, {} stealth probes\n\
         \x20 connections:     {} logged\n\
         \x20 scans:           {} port scans, {} address sweeps\n\
         \x20 sources tracked: {} at the end ({} evicted to stay under the cap of {}; {} first sightings held apart at the cap)\n\
         \x20 decode problems: {}\n\
         \x20 skipped:         {} not IP, {} other protocols, {} fragments held or past the TCP header, {} on unsupported links, {} coming in from a --local address\n\
         \x20 fragments:       {} seen, {} datagrams reassembled, {} given up ({} invalid or overlapping, {} evicted, {} timed out)\n\
         \x20 time order:      {} packets stamped earlier than one before them (up to {:.3} s back); detection started again {} times\n\
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
        thousands(s.first_sightings),
        problems,
        thousands(t.not_ip),
        thousands(t.other_protocol),
        thousands(t.fragments),
        thousands(t.unsupported_link),
        thousands(t.from_local),
        thousands(t.reassembly.fragments),
        thousands(t.reassembly.completed),
        thousands(t.reassembly.dropped + t.reassembly.evicted + t.reassembly.timed_out),
        thousands(t.reassembly.dropped),
        thousands(t.reassembly.evicted),
        thousands(t.reassembly.timed_out),
        thousands(t.out_of_order),
        t.max_step_back as f64 / 1e9,
        thousands(t.restarts),
        secs,
        rate / 1e6,
    )
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use synwatch_detect::Scan;
    use synwatch_testkit::packet::{SYN, ethernet, tcp_ip};
    use synwatch_testkit::pcap::PcapWriter;

    use crate::limit::Suppressed;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;

    /// What reached the sink, in order: formatted lines as they are, scans by their ports.
    type Written = Arc<Mutex<Vec<String>>>;

    /// A sink that writes what it is given into `written`, and fails every write with
    /// `fail` once `fail_after` events are written.
    struct Record {
        written: Written,
        fail: Option<(usize, io::ErrorKind)>,
    }

    impl Record {
        fn push(&mut self, line: String) -> io::Result<()> {
            let mut written = self.written.lock().unwrap();
            match self.fail {
                Some((after, kind)) if written.len() >= after => Err(kind.into()),
                _ => {
                    written.push(line);
                    Ok(())
                }
            }
        }
    }

    impl EventSink for Record {
        fn connection(&mut self, _c: &Connection) -> io::Result<()> {
            unreachable!("replay hands its connections over formatted")
        }
        fn scan(&mut self, s: &Scan, protected: Option<&str>) -> io::Result<()> {
            self.push(format!("scan {} {:?} {protected:?}", s.src, s.ports))
        }
        fn suppressed(&mut self, _s: &Suppressed) -> io::Result<()> {
            unreachable!("replay has no log limit")
        }
        fn block(&mut self, _b: &crate::events::BlockEvent<'_>) -> io::Result<()> {
            unreachable!("replay has no blocker")
        }
        fn unblock(&mut self, _ts: i64, _net: ipnet::IpNet, _reason: &str) -> io::Result<()> {
            unreachable!("replay has no blocker")
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl FormattedSink for Record {
        fn formatted(&mut self, event: &[u8]) -> io::Result<()> {
            self.push(String::from_utf8(event.to_vec()).unwrap())
        }
    }

    /// A capture of SYNs from `src` to 192.0.2.1, to each of `ports` in turn, 10 ms apart
    /// from `start`.
    fn capture(dir: &Path, name: &str, src: &str, ports: &[u16], start: i64) -> PathBuf {
        let syns: Vec<(u16, i64)> = (0..)
            .zip(ports)
            .map(|(i, &port)| (port, start + i * SEC / 100))
            .collect();
        timed_capture(dir, name, src, &syns)
    }

    /// The destination ports of the `connection` lines among `lines`, in order.
    fn dports(lines: &[String]) -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.split("\"dport\":").nth(1))
            .map(|rest| rest.split(',').next().unwrap())
            .collect()
    }

    fn run(files: &[PathBuf], fail: Option<(usize, io::ErrorKind)>) -> (Replayed, Vec<String>) {
        let written = Written::default();
        let sink = {
            let written = Arc::clone(&written);
            move || Record { written, fail }
        };
        let done = replay(files, Config::default(), Format::Json, sink, &mut ()).unwrap();
        let lines = written.lock().unwrap().clone();
        (done, lines)
    }

    #[test]
    fn files_replay_in_time_order_each_attempt_logged_once_and_the_scan_reported() {
        let dir = tempfile::tempdir().unwrap();
        // Named against their time order; port 22 again, at the end, is a retransmission.
        let later = capture(
            dir.path(),
            "a.pcap",
            "198.51.100.7",
            &[23, 25, 22],
            T0 + SEC,
        );
        let first = capture(dir.path(), "b.pcap", "198.51.100.7", &[21, 22], T0);
        let (done, lines) = run(&[later, first], None);
        assert!(matches!(done.ending, Ending::Clean), "{:?}", done.ending);
        let dports = dports(&lines);
        assert_eq!(dports, ["21", "22", "23", "25"], "{lines:?}");
        assert!(
            lines[0]
                .starts_with("{\"ts\":\"2023-11-14T22:13:20.000000Z\",\"event\":\"connection\"")
        );
        assert_eq!(
            lines.last().unwrap(),
            "scan 198.51.100.7 [21, 22, 23, 25] None"
        );
        let t = &done.totals;
        assert_eq!((t.files, t.files_failed, t.packets, t.tcp), (2, 0, 5, 5));
        assert_eq!(t.connections_logged, 4);
        assert_eq!(done.detector.stats().retransmissions, 1);
    }

    /// A capture of SYNs from `src` to 192.0.2.1, each `(port, time)`.
    fn timed_capture(dir: &Path, name: &str, src: &str, syns: &[(u16, i64)]) -> PathBuf {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut w = PcapWriter::new(file, 1, false).unwrap();
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), "192.0.2.1".parse().unwrap());
        for &(port, at) in syns {
            let frame = ethernet(&tcp_ip(src, 40000, dst, port, SYN, 0));
            w.write_packet(at, &frame).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn time_that_goes_back_a_window_starts_detection_again() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3600 * SEC;
        let no_scan = "";
        // (what, SYNs from one source as (port, time), the last line (a scan's, or none),
        // detection restarts, packets out of order)
        type Case = (&'static str, Vec<(u16, i64)>, &'static str, u64, u64);
        let cases: [Case; 6] = [
            (
                "two sections of one file (cat a.pcapng b.pcapng), the second an hour \
                 older: ports an hour apart are no scan",
                vec![
                    (21, T0 + hour),
                    (22, T0 + hour + SEC),
                    (23, T0),
                    (25, T0 + SEC),
                ],
                no_scan,
                1,
                2,
            ),
            (
                "one stamped years ahead, then one 4-tuple two hours apart: each a new \
                 attempt",
                vec![
                    (80, T0 + 400_000_000 * SEC),
                    (22, T0),
                    (22, T0 + 2 * hour),
                    (22, T0 + 4 * hour),
                ],
                no_scan,
                1,
                2,
            ),
            (
                "a step back shorter than a window: 4 ports within it stay one scan",
                vec![
                    (1, T0 + 30 * SEC),
                    (2, T0),
                    (3, T0 + 31 * SEC),
                    (4, T0 + 32 * SEC),
                ],
                "scan 198.51.100.7 [1, 2, 3, 4] None",
                0,
                1,
            ),
            (
                "one stamped hours back amid a scan: a wrong stamp, the scan goes on",
                vec![
                    (1, T0 + 100 * SEC),
                    (2, T0 + 101 * SEC),
                    (9, T0 - 10_000 * SEC),
                    (3, T0 + 102 * SEC),
                ],
                "scan 198.51.100.7 [1, 2, 9, 3] None",
                0,
                1,
            ),
            (
                "one stamped years ahead amid a scan: the detector's time not moved",
                vec![
                    (1, T0),
                    (2, T0 + SEC),
                    (80, T0 + 100_000_000 * SEC),
                    (3, T0 + 2 * SEC),
                ],
                "scan 198.51.100.7 [1, 2, 80, 3] None",
                0,
                1,
            ),
            (
                "two stamped far back in a row: the time went back",
                vec![(1, T0 + hour), (2, T0 + hour + SEC), (3, T0), (4, T0 + SEC)],
                no_scan,
                1,
                2,
            ),
        ];
        for (i, (what, syns, last, restarts, out_of_order)) in cases.iter().enumerate() {
            let path = timed_capture(dir.path(), &format!("{i}.pcap"), "198.51.100.7", syns);
            let (done, lines) = run(&[path], None);
            let ports: Vec<String> = syns.iter().map(|(p, _)| p.to_string()).collect();
            assert_eq!(dports(&lines), ports, "{what}: {lines:?}");
            let scan = lines.iter().find(|l| l.starts_with("scan"));
            assert_eq!(scan.map_or(no_scan, String::as_str), *last, "{what}");
            let t = &done.totals;
            assert_eq!(
                (t.restarts, t.out_of_order),
                (*restarts, *out_of_order),
                "{what}"
            );
            assert_eq!(done.detector.stats().retransmissions, 0, "{what}");
        }
    }

    /// Replays SYNs (source, port, time) to 192.0.2.1 through a FIFO written one
    /// packet every 100 ms: the reader catches up after nearly every one, with no
    /// attempt after a held one yet.
    fn through_a_pipe(syns: &[(&str, u16, i64)]) -> (Replayed, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut w = PcapWriter::new(&mut bytes, 1, false).unwrap();
        let dst: IpAddr = "192.0.2.1".parse().unwrap();
        for &(src, port, at) in syns {
            let frame = ethernet(&tcp_ip(src.parse().unwrap(), 40000, dst, port, SYN, 0));
            w.write_packet(at, &frame).unwrap();
        }
        w.finish().unwrap();
        let record = (bytes.len() - 24) / syns.len();
        let fifo = dir.path().join("pipe.pcap");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                io::Write::write_all(&mut out, &bytes[..24]).unwrap();
                for r in bytes[24..].chunks(record) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    io::Write::write_all(&mut out, r).unwrap();
                }
            })
        };
        let replayed = run(&[fifo], None);
        writer.join().unwrap();
        replayed
    }

    #[test]
    fn time_that_goes_back_in_a_pipe_that_waits_starts_detection_again() {
        // An hour of attempts, then the clock an hour back: one source reaches 4 ports
        // minutes apart (no scan), another repeats a 4-tuple 5 and 10 minutes on (new
        // attempts).
        let (hour, min) = (3600 * SEC, 60 * SEC);
        let mut syns: Vec<(&str, u16, i64)> = vec![("198.51.100.1", 80, T0 + hour)];
        for i in 0..4 {
            syns.push(("198.51.100.7", 1 + i as u16, T0 + i * 5 * min));
        }
        for i in 0..3 {
            syns.push(("198.51.100.9", 22, T0 + 21 * min + i * 5 * min));
        }
        let (done, lines) = through_a_pipe(&syns);
        assert!(!lines.iter().any(|l| l.starts_with("scan")), "{lines:?}");
        assert_eq!(done.detector.stats().retransmissions, 0, "{lines:?}");
        assert_eq!(done.totals.restarts, 1);
        assert_eq!(dports(&lines).len(), syns.len());
    }

    #[test]
    fn quiet_spells_in_a_pipe_that_waits_keep_their_time() {
        // A live pipe: a client reaching a new port every 2 minutes (each attempt after
        // a quiet spell longer than the gap) is no scan, and a SYN sent again a second
        // after a quiet spell is a retransmission.
        let min = 60 * SEC;
        let mut syns: Vec<(&str, u16, i64)> = (0..5)
            .map(|i| ("198.51.100.7", 1 + i as u16, T0 + i64::from(i) * 2 * min))
            .collect();
        syns.push(("198.51.100.7", 5, T0 + 8 * min + SEC));
        let (done, lines) = through_a_pipe(&syns);
        assert!(!lines.iter().any(|l| l.starts_with("scan")), "{lines:?}");
        assert_eq!(done.detector.stats().retransmissions, 1, "{lines:?}");
        assert_eq!(done.totals.restarts, 0);
    }

    #[test]
    fn files_that_overlap_in_time_are_merged_into_one_stream() {
        // One capture per interface: ports 1 and 2 in one, 3 and 4 in the other, within
        // 3 s; the first holds a later packet too. Read one file after the other, the
        // second file's packets counted at the latest time seen (200 s on) and the scan
        // was never seen.
        let dir = tempfile::tempdir().unwrap();
        let src = "198.51.100.7";
        let a = timed_capture(
            dir.path(),
            "a.pcap",
            src,
            &[(1, T0), (2, T0 + SEC), (5, T0 + 200 * SEC)],
        );
        let b = timed_capture(
            dir.path(),
            "b.pcap",
            src,
            &[(3, T0 + 2 * SEC), (4, T0 + 3 * SEC)],
        );
        for files in [[a.clone(), b.clone()], [b, a]] {
            let (done, lines) = run(&files, None);
            assert!(matches!(done.ending, Ending::Clean), "{:?}", done.ending);
            let dports = dports(&lines);
            assert_eq!(dports, ["1", "2", "3", "4", "5"], "{lines:?}");
            assert_eq!(
                lines[4],
                format!("scan {src} [1, 2, 3, 4] None"),
                "{lines:?}"
            );
            let t = &done.totals;
            assert_eq!((t.files, t.files_failed, t.packets), (2, 0, 5));
            assert_eq!(t.out_of_order, 0);
        }
    }

    #[test]
    fn more_overlapping_files_than_are_held_open_at_once_still_all_replay() {
        // 70 captures of the same seconds: 64 merged, the rest read as their turn comes.
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..70u16)
            .map(|i| {
                let name = format!("c{i:02}.pcap");
                let src = format!("198.51.100.{}", i + 1);
                timed_capture(
                    dir.path(),
                    &name,
                    &src,
                    &[(i + 1, T0 + i64::from(i)), (80, T0 + SEC)],
                )
            })
            .collect();
        let (done, lines) = run(&files, None);
        assert!(matches!(done.ending, Ending::Clean), "{:?}", done.ending);
        let t = &done.totals;
        assert_eq!((t.files, t.files_failed, t.packets), (70, 0, 140));
        assert_eq!(lines.len(), 140);
    }

    #[test]
    fn a_file_cut_short_among_merged_ones_is_bad_input_and_the_rest_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let src = "198.51.100.7";
        let a = timed_capture(dir.path(), "a.pcap", src, &[(1, T0), (4, T0 + 3 * SEC)]);
        let b = timed_capture(
            dir.path(),
            "b.pcap",
            src,
            &[(2, T0 + SEC), (3, T0 + 2 * SEC)],
        );
        // The second record of b cut in the middle.
        let whole = std::fs::read(&b).unwrap();
        std::fs::write(&b, &whole[..whole.len() - 10]).unwrap();
        let (done, lines) = run(&[a, b], None);
        assert!(matches!(done.ending, Ending::BadInput), "{:?}", done.ending);
        let t = &done.totals;
        assert_eq!((t.files, t.files_failed, t.packets), (2, 1, 3));
        let dports = dports(&lines);
        assert_eq!(dports, ["1", "2", "4"], "{lines:?}");
    }

    #[test]
    fn an_unreadable_file_is_bad_input_and_the_others_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let good = capture(dir.path(), "good.pcap", "198.51.100.7", &[22], T0);
        let (done, lines) = run(&[dir.path().join("missing.pcap"), good], None);
        assert!(matches!(done.ending, Ending::BadInput), "{:?}", done.ending);
        assert_eq!((done.totals.files, done.totals.files_failed), (2, 1));
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    #[test]
    fn a_sink_that_closes_ends_the_replay_quietly_and_one_that_fails_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (1..=2000).collect();
        let file = capture(dir.path(), "many.pcap", "198.51.100.7", &ports, T0);
        let (done, lines) = run(
            std::slice::from_ref(&file),
            Some((3, io::ErrorKind::BrokenPipe)),
        );
        assert!(
            matches!(done.ending, Ending::OutputClosed),
            "{:?}",
            done.ending
        );
        assert_eq!(lines.len(), 3);
        let (done, _) = run(&[file], Some((0, io::ErrorKind::PermissionDenied)));
        match done.ending {
            Ending::OutputFailed(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_decoy_head_after_uncounted_junk_hides_no_syn() {
        // For each port: the real SYN's first 16 bytes, 70 junk fragments from its source
        // (which a kernel that does not reassemble them does not count), a decoy SYN's
        // head to port 80 with the same IP id, the 4 bytes both share last. Such a kernel
        // keeps the real SYN and answers it; one that counted the junk holds the decoy.
        // Both are logged, and the real ports make a scan.
        use synwatch_testkit::packet::{Ipv4, Tcp};
        let (src, dst) = (
            "198.51.100.7".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoy.pcap");
        let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap(), 1, false).unwrap();
        let mut at = T0;
        let mut put = |ip: Vec<u8>| {
            w.write_packet(at, &ethernet(&ip)).unwrap();
            at += SEC / 1000;
        };
        for (i, port) in (0u16..).zip([1001, 1002, 1003, 1004]) {
            let real = Tcp::new(40_000, port, SYN).segment_v4(src, dst);
            let decoy = Tcp::new(40_000, 80, SYN).segment_v4(src, dst);
            let piece = |off, more| Ipv4::new(src, dst).id(900 + i).fragment(off, more);
            put(piece(0, true).encode(6, &real[..16]));
            for j in 0..70 {
                let junk = Ipv4::new(src, dst)
                    .id(20_000 + 100 * i + j)
                    .fragment(0, true);
                put(junk.encode(17, &[0; 8]));
            }
            put(piece(0, true).encode(6, &decoy[..16]));
            put(piece(2, false).encode(6, &real[16..20]));
        }
        w.finish().unwrap();
        let (_, lines) = run(&[path], None);
        let mut ports = dports(&lines);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports, ["1001", "1002", "1003", "1004", "80"], "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("scan 198.51.100.7")),
            "{lines:?}"
        );
    }

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
