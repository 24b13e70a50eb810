//! Running the agent to its end: the loop, then shutdown (the last bans saved, the
//! rules removed, every thread joined) and the summary on stderr.

use std::sync::atomic::Ordering;

use anyhow::Result;
use synwatch_decode::DecodeError;

use super::core::Core;
use super::setup::Running;
use super::{FINAL_OUTPUT_WAIT, Outcome};
use crate::metrics::Metrics;
use crate::sockets::SocketCounters;

/// Longest the stop waits for the CrowdSec threads (a request under way to a LAPI that
/// does not answer).
const FLEET_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Running {
    /// Runs the loop until the agent is asked to stop (or every source ends), then
    /// stops.
    pub(super) fn run(mut self) -> Result<Outcome> {
        let workers = &self.workers;
        self.core.run(&self.rx, &self.stop, || {
            workers.iter().all(|(_, h)| h.is_finished())
        });
        self.finish()
    }

    fn finish(mut self) -> Result<Outcome> {
        // Only a signal stops the agent: anything else that ended the loop (every source
        // gone) is a failure, never exit 0, so that a supervisor restarts it.
        let asked_to_stop = self.stop.swap(true, Ordering::Relaxed);
        self.fleet_threads.join(FLEET_STOP_WAIT);
        self.core.stop_blocking(&self.state_dir);
        // The control socket is gone with the blocker: its thread may end.
        self.control_stop.store(true, Ordering::Relaxed);
        // The last events get a moment to reach a reader that reads; one that does not
        // cannot hold the exit.
        if !self.drainer.drain(FINAL_OUTPUT_WAIT) {
            tracing::warn!("warning: stdout did not take the last events; exiting without them");
        }
        for (name, handle) in self.workers {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("the capture thread for {name} failed"))?;
        }
        for (name, handle) in self.servers {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("the thread of {name} failed"))?;
        }
        let core = &mut self.core;
        let lines = core.source_lines();
        // Detaches the program from every interface.
        drop(core.xdp.take());
        summary(
            "stopped.",
            &lines,
            &core.metrics,
            &core.detector,
            core.logged,
        );
        // Event output cannot fail here (see event_queue.rs): stdout's troubles are
        // counted, and never end the agent.
        match std::mem::replace(&mut core.output, Ok(())) {
            Err(e) => Err(anyhow::Error::new(e).context("cannot write events to stdout")),
            Ok(()) if !asked_to_stop => Err(anyhow::anyhow!(
                "every source of connections ended (see above) without being asked to stop"
            )),
            Ok(()) => Ok(Outcome::Stopped),
        }
    }
}

impl Core {
    /// What each source saw and lost, a line each: the summary's first lines.
    pub(super) fn source_lines(&self) -> Vec<String> {
        let xdp_source = self.xdp.as_ref().is_some_and(|x| x.observing);
        let mut lines = interface_lines(&self.metrics, xdp_source);
        if self.xdp.as_ref().is_some_and(|x| x.blocking) {
            lines.push(format!(
                "  XDP: {} scanners banned by the program itself",
                self.metrics.xdp_kernel_bans.load(Ordering::Relaxed)
            ));
        }
        if let Some(c) = &self.socket_counters {
            lines.push(socket_line(c));
        }
        lines
    }

    /// The summary so far on stderr, under `heading`, the agent running on (SIGUSR1).
    pub(super) fn tell(&self, heading: &str) {
        summary(
            heading,
            &self.source_lines(),
            &self.metrics,
            &self.detector,
            self.logged,
        );
    }
}

/// A line per interface in use: what it saw and lost.
fn interface_lines(metrics: &Metrics, xdp_source: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, iface) in metrics
        .interfaces
        .iter()
        .filter_map(|i| Some((i.used_name()?, i)))
    {
        let decode_errors: u64 = DecodeError::ALL
            .iter()
            .map(|k| metrics.decode_errors[k.index()].load(Ordering::Relaxed))
            .sum();
        lines.push(if xdp_source {
            format!(
                "  {} (XDP): {} packets seen by the program, {} probes lost (ring buffer full)",
                name,
                iface.packets.load(Ordering::Relaxed),
                iface.drops.load(Ordering::Relaxed),
            )
        } else {
            format!(
                "  {}: {} packets passed the filter, {} dropped by the kernel; {} undecodable in all",
                name,
                iface.packets.load(Ordering::Relaxed),
                iface.drops.load(Ordering::Relaxed),
                decode_errors,
            )
        });
    }
    lines
}

fn socket_line(c: &SocketCounters) -> String {
    format!(
        "  socket table: {} reads ({} failed), {} connections ({} seen only as they closed)",
        c.dumps.load(Ordering::Relaxed),
        c.dump_failures.load(Ordering::Relaxed),
        c.connections.load(Ordering::Relaxed),
        c.brief.load(Ordering::Relaxed),
    )
}

/// The summary on stderr: `heading`, the sources' `lines`, then what was seen and done.
fn summary(
    heading: &str,
    lines: &[String],
    metrics: &Metrics,
    detector: &synwatch_detect::Detector,
    logged: u64,
) {
    let s = detector.stats();
    tracing::info!(
        "{heading}\n{}\n  attempts: {} incoming, {} outgoing, {} retransmissions, {} stealth probes; {} connections logged, {} held back by the log limit\n  scans: {}; sources tracked: {} ({} evicted, {} first sightings held apart at the cap); bans applied: {}, lifted: {}, refused: {}",
        lines.join("\n"),
        s.attempts_in,
        s.attempts_out,
        s.retransmissions + metrics.xdp_retransmissions.load(Ordering::Relaxed),
        s.stealth_probes,
        logged,
        metrics.events_suppressed.load(Ordering::Relaxed),
        s.scans,
        detector.tracked_sources(),
        s.sources_evicted,
        s.first_sightings,
        metrics.blocks.load(Ordering::Relaxed),
        metrics.unblocks.load(Ordering::Relaxed),
        metrics.bans_refused_allowlisted.load(Ordering::Relaxed)
            + metrics.bans_refused_rate.load(Ordering::Relaxed),
    );
}
