//! `synwatch run --source sockets`: connections from the kernel's socket table instead of
//! packet capture, for hosts where capture is not allowed (no CAP_NET_RAW needed).
//!
//! Every `--poll` the table is dumped (sock_diag, or /proc/net/tcp{,6}) and each
//! connection that was not in the previous dump becomes one observation; in between, the
//! kernel's announcements of destroyed sockets add the connections that opened and closed
//! between two dumps. The observations look like the SYN that opened each connection
//! (source: the connecting side), so the detector, the events and the blocking work as
//! with captured packets. What this cannot see: attempts on closed ports (no socket is
//! made), and half-open SYN scans of open ports unless a dump happens to catch the
//! request socket.
//!
//! The first dump is only a baseline: the connections open when the agent starts were not
//! seen opening, at a time it does not know, so they are not reported. Taken as attempts
//! made at start, a client holding sessions to four services (a monitoring server, the
//! operator's own workstation) would be a port scanner on every restart.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use synwatch_capture::sockets::{Connection, DestroyEvents, NewConnections, SocketTable};
use synwatch_decode::TcpFlags;
use synwatch_detect::{Nanos, Observation};

/// Counters of the socket source, for the summary.
#[derive(Debug, Default)]
pub struct SocketCounters {
    pub dumps: AtomicU64,
    pub dump_failures: AtomicU64,
    pub connections: AtomicU64,
    /// Connections seen only through destroy events.
    pub brief: AtomicU64,
}

/// The table and, where the kernel offers them, its destroy events.
#[derive(Debug)]
pub struct SocketSource {
    pub table: SocketTable,
    pub events: Option<DestroyEvents>,
    pub poll: Duration,
}

impl SocketSource {
    /// Opens the table (sock_diag, else /proc) and subscribes to destroy events. The
    /// strings are warnings for stderr (a fallback taken, and why).
    pub fn open(poll: Duration) -> anyhow::Result<(Self, Vec<String>)> {
        let table = SocketTable::open()?;
        let mut warnings = Vec::new();
        if let Some(why) = table.fallback_reason() {
            warnings.push(format!(
                "sock_diag is not available ({why}): reading /proc/net/tcp and tcp6 instead"
            ));
        }
        let events = match DestroyEvents::open() {
            Ok(e) => Some(e),
            Err(e) => {
                warnings.push(format!(
                    "{e}: connections opened and closed between two dumps will be missed"
                ));
                None
            }
        };
        Ok((
            Self {
                table,
                events,
                poll,
            },
            warnings,
        ))
    }

    /// How the source reads, for the banner.
    pub fn describe(&self) -> String {
        format!(
            "the TCP socket table ({} every {} ms{})",
            self.table.method(),
            self.poll.as_millis(),
            if self.events.is_some() {
                ", and sock_diag destroy events"
            } else {
                ""
            }
        )
    }
}

/// The observation standing for a connection: the SYN that opened it.
pub fn observation(ts: Nanos, c: &Connection) -> Observation {
    let (src, dst) = if c.incoming {
        (c.remote, c.local)
    } else {
        (c.local, c.remote)
    };
    Observation {
        foreign: false,
        ts,
        src: src.ip(),
        sport: src.port(),
        dst: dst.ip(),
        dport: dst.port(),
        flags: TcpFlags(TcpFlags::SYN),
    }
}

/// Reads the table every `poll` and destroy events in between until `stop`, handing each
/// batch of observations to `send` (which returns false when the pipeline is gone).
/// `now` gives the wall clock in Unix nanoseconds.
pub fn run(
    mut source: SocketSource,
    stop: &AtomicBool,
    counters: &SocketCounters,
    now: impl Fn() -> Nanos,
    monotonic: impl Fn() -> Instant,
    send: impl Fn(Vec<Observation>) -> bool,
) {
    let mut tracker = NewConnections::new();
    let mut destroyed = Vec::new();
    let mut failing = false;
    let mut baseline = true;
    // Counts new connections and hands them over as observations taken now; false when
    // the pipeline is gone.
    let deliver = |found: Vec<Connection>, counter: &[&AtomicU64]| {
        let ts = now();
        let batch: Vec<Observation> = found.iter().map(|c| observation(ts, c)).collect();
        for c in counter {
            c.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        batch.is_empty() || send(batch)
    };
    while !stop.load(Ordering::Relaxed) {
        let next_dump = monotonic() + source.poll;
        match source.table.dump() {
            Ok(dump) => {
                counters.dumps.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::info!("the socket table reads again");
                    failing = false;
                }
                let found = tracker.update(&dump);
                if std::mem::take(&mut baseline) {
                    tracing::info!(
                        "{} connections already open at start: not reported (their opening was not seen)",
                        found.len()
                    );
                } else if !deliver(found, &[&counters.connections]) {
                    return;
                }
            }
            Err(e) => {
                counters.dump_failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::error!("cannot read the socket table (retrying): {e}");
                    failing = true;
                }
            }
        }
        // Until the next dump: destroy events as they come, and the stop flag.
        loop {
            let left = next_dump.saturating_duration_since(monotonic());
            if left.is_zero() || stop.load(Ordering::Relaxed) {
                break;
            }
            let wait = left.min(Duration::from_millis(100));
            let Some(events) = source.events.as_mut() else {
                std::thread::sleep(wait);
                continue;
            };
            let ready = {
                let fd = events.fd();
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let ms = u16::try_from(wait.as_millis()).unwrap_or(100);
                poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0
            };
            if !ready {
                continue;
            }
            destroyed.clear();
            if let Err(e) = events.read(&mut destroyed) {
                tracing::warn!("{e}; going on with dumps only");
                source.events = None;
                continue;
            }
            let brief = destroyed
                .iter()
                .filter_map(|s| tracker.destroyed(s))
                .collect();
            if !deliver(brief, &[&counters.connections, &counters.brief]) {
                return;
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use synwatch_capture::sockets::TcpState;

    const TCP: &str = include_str!("../../capture/tests/fixtures/proc_net_tcp");

    #[test]
    fn connections_open_at_start_are_a_baseline_and_only_later_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("proc/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("tcp"), TCP).unwrap();
        let source = SocketSource {
            table: SocketTable::with_proc(synwatch_capture::sockets::ProcSource::with_root(
                dir.path(),
            )),
            events: None,
            poll: Duration::from_millis(5),
        };
        let (stop, counters) = (AtomicBool::new(false), SocketCounters::default());
        let sent = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                run(
                    source,
                    &stop,
                    &counters,
                    || 7,
                    crate::clock::monotonic,
                    |batch| {
                        sent.lock().unwrap().extend(batch);
                        true
                    },
                );
            });
            let dumps_reach = |n: u64| {
                while counters.dumps.load(Ordering::Relaxed) < n {
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            dumps_reach(2);
            // A new connection to 10.0.0.5:22 (listening) from 203.0.113.77:40001.
            let line = "   7: 0500000A:0016 4D7100CB:9C41 01 00000000:00000000 00:00000000 00000000  1000        0 40007 1 0000000000000000 100 0 0 10 0\n";
            std::fs::write(net.join("tcp"), format!("{TCP}{line}")).unwrap();
            dumps_reach(4);
            stop.store(true, Ordering::Relaxed);
        });
        let sent = sent.into_inner().unwrap();
        let seen: Vec<_> = sent.iter().map(|o| (o.src, o.sport, o.dport)).collect();
        assert_eq!(seen, [("203.0.113.77".parse().unwrap(), 40001, 22)]);
        assert_eq!(counters.connections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_connection_stands_for_the_syn_that_opened_it() {
        let incoming = Connection {
            local: "10.0.0.1:22".parse().unwrap(),
            remote: "10.0.0.2:40000".parse().unwrap(),
            state: TcpState::Established,
            incoming: true,
        };
        let o = observation(7, &incoming);
        assert_eq!(
            (o.ts, o.src, o.sport, o.dst, o.dport),
            (
                7,
                "10.0.0.2".parse().unwrap(),
                40000,
                "10.0.0.1".parse().unwrap(),
                22
            )
        );
        assert!(o.flags.has(TcpFlags::SYN) && !o.flags.has(TcpFlags::ACK));
        let outgoing = Connection {
            incoming: false,
            ..incoming
        };
        let o = observation(7, &outgoing);
        assert_eq!((o.src, o.dport), ("10.0.0.1".parse().unwrap(), 40000));
    }
}
