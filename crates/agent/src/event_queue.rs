//! Event output that can never hold up enforcement. The pipeline formats events as
//! before (through the binary's `EventWriter`), but what it writes goes
//! into a bounded queue that a thread of its own copies to stdout. A reader that stops
//! reading (an unread pipe, a stalled log shipper) fills the queue, and further events
//! are dropped and counted (`synwatch_events_dropped_total{reason="output_blocked"}`)
//! instead of growing memory or stopping the pipeline; a reader that goes away (EPIPE:
//! `| head`, a log shipper restarting) makes output stop for good, counted as
//! `output_closed`, while the agent carries on detecting and banning. Either is said on
//! stderr, at most once every [`WARN_EVERY`].
//!
//! The queue holds whole writes of the event writer, each made of whole events, so a
//! dropped write never leaves half a line on stdout.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::clock::monotonic;
use crate::metrics::{DropReason, Metrics};

/// Bytes of events waiting for the writer thread, at most (one write larger than this
/// is still taken when the queue is empty).
pub const QUEUE_BYTES: usize = 4 << 20;

/// Shortest time between two warnings about dropped events.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer thread holds a chunk it is writing.
    writing: bool,
    /// stdout's reader has gone: nothing is queued any more.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a chunk is queued.
    queued: Condvar,
    /// Signalled when the writer has written (or given up) everything queued.
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The pipeline's end of the queue: an [`io::Write`] that never blocks and never fails.
#[derive(Debug)]
pub struct EventQueue {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    limit: usize,
    warned_at: Option<Instant>,
    /// Events dropped since the last warning.
    unreported: u64,
}

/// Events in a chunk of whole events (table headers count as lines too).
fn lines(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

impl EventQueue {
    /// Starts the writer thread on `out` (stdout, in the agent).
    pub fn start<W: Write + Send + 'static>(out: W, metrics: Arc<Metrics>) -> io::Result<Self> {
        Self::with_limit(out, metrics, QUEUE_BYTES)
    }

    fn with_limit<W: Write + Send + 'static>(
        out: W,
        metrics: Arc<Metrics>,
        limit: usize,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (thread_shared, thread_metrics) = (Arc::clone(&shared), Arc::clone(&metrics));
        thread::Builder::new()
            .name("stdout".into())
            .spawn(move || writer(out, &thread_shared, &thread_metrics))?;
        Ok(Self {
            shared,
            metrics,
            limit,
            warned_at: None,
            unreported: 0,
        })
    }

    /// Queues one chunk of whole events, or drops and counts it.
    fn push(&mut self, chunk: &[u8]) {
        let reason = {
            let mut state = self.shared.lock();
            if state.closed {
                Some(DropReason::Closed)
            } else if state.bytes > 0 && state.bytes + chunk.len() > self.limit {
                Some(DropReason::Blocked)
            } else {
                state.bytes += chunk.len();
                state.chunks.push_back(chunk.to_vec());
                None
            }
        };
        match reason {
            None => self.shared.queued.notify_one(),
            Some(reason) => self.dropped(reason, lines(chunk)),
        }
    }

    fn dropped(&mut self, reason: DropReason, events: u64) {
        self.metrics.events_dropped[reason.index()].fetch_add(events, Ordering::Relaxed);
        if reason == DropReason::Closed {
            // Said once, by the writer thread, when it found out.
            return;
        }
        self.unreported += events;
        let now = monotonic();
        if self
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                "warning: stdout is not taking events as fast as they come: {} dropped since the last warning (counted in synwatch_events_dropped_total{{reason=\"output_blocked\"}}); detecting and blocking go on",
                self.unreported
            );
            self.warned_at = Some(now);
            self.unreported = 0;
        }
    }

    /// Waits up to `timeout` for the writer to write what is queued (at a clean stop);
    /// whether it did. A reader that never reads does not hold the agent's exit.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.drainer().drain(timeout)
    }

    /// A handle that can wait for the queue to empty once the queue itself has been
    /// handed to a printer.
    pub fn drainer(&self) -> Drainer {
        Drainer(Arc::clone(&self.shared))
    }
}

/// Waits for the writer thread to take what is queued (see [`EventQueue::drain`]).
#[derive(Debug, Clone)]
pub struct Drainer(Arc<Shared>);

impl Drainer {
    /// As [`EventQueue::drain`].
    pub fn drain(&self, timeout: Duration) -> bool {
        let state = self.0.lock();
        let (state, _) = self
            .0
            .idle
            .wait_timeout_while(state, timeout, |s| {
                !s.closed && (s.writing || !s.chunks.is_empty())
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.chunks.is_empty() && !state.writing
    }
}

impl Write for EventQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.push(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread: copies queued chunks to `out` until its reader goes away.
fn writer<W: Write>(mut out: W, shared: &Shared, metrics: &Metrics) {
    let mut failed_at: Option<Instant> = None;
    loop {
        let chunk = {
            let mut state = shared.lock();
            while state.chunks.is_empty() {
                state.writing = false;
                shared.idle.notify_all();
                state = shared
                    .queued
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let chunk = state.chunks.pop_front().unwrap_or_default();
            state.bytes -= chunk.len();
            state.writing = true;
            chunk
        };
        let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) else {
            continue;
        };
        if e.kind() == io::ErrorKind::BrokenPipe {
            let mut state = shared.lock();
            let lost = lines(&chunk) + state.chunks.iter().map(|c| lines(c)).sum::<u64>();
            metrics.events_dropped[DropReason::Closed.index()].fetch_add(lost, Ordering::Relaxed);
            state.chunks.clear();
            state.bytes = 0;
            state.closed = true;
            state.writing = false;
            shared.idle.notify_all();
            drop(state);
            tracing::warn!(
                "warning: stdout is closed ({e}): events are no longer written (counted in synwatch_events_dropped_total{{reason=\"output_closed\"}}); detecting and blocking go on"
            );
            return;
        }
        metrics.events_dropped[DropReason::Failed.index()]
            .fetch_add(lines(&chunk), Ordering::Relaxed);
        let now = monotonic();
        if failed_at.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            failed_at = Some(now);
            tracing::warn!(
                "warning: cannot write events to stdout ({e}): dropped (counted in synwatch_events_dropped_total{{reason=\"output_failed\"}}); detecting and blocking go on"
            );
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that holds every write until told to go on, then records it.
    struct Gate {
        go: mpsc::Receiver<()>,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.go
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.seen.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
        metrics.events_dropped[reason.index()].load(Ordering::Relaxed)
    }

    #[test]
    fn a_blocked_reader_drops_and_counts_whole_writes_without_blocking() {
        let metrics = Arc::new(Metrics::default());
        let (go, gate) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = Gate {
            go: gate,
            seen: Arc::clone(&seen),
        };
        let mut q = EventQueue::with_limit(out, Arc::clone(&metrics), 10).unwrap();
        // The writer takes the first write and blocks on it; the next fills the queue;
        // the rest are dropped, and none of this waits.
        q.write_all(b"one\n").unwrap();
        while !q.shared.lock().writing {
            thread::yield_now();
        }
        q.write_all(b"two\nthree\n").unwrap();
        for _ in 0..1000 {
            q.write_all(b"x\ny\n").unwrap();
        }
        assert_eq!(dropped(&metrics, DropReason::Blocked), 2000);
        assert!(!q.drain(Duration::from_millis(10)));
        for _ in 0..2 {
            go.send(()).unwrap();
        }
        assert!(q.drain(Duration::from_secs(5)));
        assert_eq!(seen.lock().unwrap().as_slice(), b"one\ntwo\nthree\n");
    }

    #[test]
    fn a_closed_reader_stops_output_for_good_and_counts_what_follows() {
        let metrics = Arc::new(Metrics::default());
        let (go, gate) = mpsc::channel::<()>();
        // The reader goes away: the first write fails with EPIPE.
        drop(go);
        let out = Gate {
            go: gate,
            seen: Arc::default(),
        };
        let mut q = EventQueue::with_limit(out, Arc::clone(&metrics), 1 << 20).unwrap();
        q.write_all(b"a\nb\n").unwrap();
        assert!(q.drain(Duration::from_secs(5)) || q.shared.lock().closed);
        q.write_all(b"c\n").unwrap();
        assert_eq!(dropped(&metrics, DropReason::Closed), 3);
        assert_eq!(dropped(&metrics, DropReason::Blocked), 0);
    }
}
