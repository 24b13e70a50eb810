//! What reaches the pipeline thread, and the one way in: a bounded channel of [`Msg`]s
//! that every source (capture threads, the XDP ring buffer, the socket table, the
//! control socket, the CrowdSec pull) writes through a [`Feed`]. The feed is the seam a
//! source sees: a test stands in for a source by pushing into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use synwatch_detect::Observation;

use crate::control;
use crate::metrics::Metrics;
use crate::xdp::KernelBans;

/// Observations the queue to the pipeline thread holds at most: a quarter of a million
/// (12 MB at 48 bytes each; a second or two of a heavy flood), so that a long turn of the
/// pipeline (a burst of bans) is absorbed, not lost. Bounded by observations, not
/// batches: under a flood the capture threads hand over small batches as often as their
/// buffer timer fires, and a bound in batches filled after a few thousand observations.
pub(super) const QUEUE_OBSERVATIONS: u64 = 262_144;
/// Messages the channel holds at most; the observations' bound above comes first unless
/// batches are tiny.
pub(super) const QUEUE_MESSAGES: usize = 16_384;

/// What reaches the pipeline thread: observations from a capture thread, or a request
/// from `synwatch blocks` through the control socket.
#[derive(Debug)]
pub(crate) enum Msg {
    Batch(Vec<Observation>),
    /// Sources the XDP program banned by itself (after the batch holding their packet).
    KernelBans(KernelBans),
    Call(control::Call),
    /// Decisions pulled from the CrowdSec Local API.
    Fleet(crate::crowdsec::pull::Pull),
    /// The ban writer finished a chunk (block/writer.rs): report it now.
    Applied,
    /// The kernel told of a route change (`host.rs`): read the host again now.
    RoutesChanged,
}

/// The sending end of the queue to the pipeline, as the sources hold it.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    tx: mpsc::SyncSender<Msg>,
    metrics: Arc<Metrics>,
    /// Observations the queue holds at most.
    limit: u64,
}

impl Feed {
    /// The queue (bounded by [`QUEUE_MESSAGES`] and [`QUEUE_OBSERVATIONS`]) and its
    /// receiving end.
    pub(super) fn channel(metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Msg>) {
        Self::bounded(metrics, QUEUE_MESSAGES, QUEUE_OBSERVATIONS)
    }

    /// A queue of at most `messages` messages holding at most `observations`.
    pub(super) fn bounded(
        metrics: Arc<Metrics>,
        messages: usize,
        observations: u64,
    ) -> (Self, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(messages);
        let feed = Self {
            tx,
            metrics,
            limit: observations,
        };
        (feed, rx)
    }

    /// Hands a batch of observations to the pipeline: when it has fallen so far behind
    /// that its queue is full, the batch is dropped and counted
    /// (`synwatch_queue_dropped_total`) rather than held in memory. False once the
    /// pipeline has gone.
    pub(super) fn offer(&self, batch: Vec<Observation>) -> bool {
        let metrics = &self.metrics;
        let n = batch.len() as u64;
        if metrics.queued.load(Ordering::Relaxed).saturating_add(n) > self.limit {
            metrics.queue_dropped.fetch_add(n, Ordering::Relaxed);
            return true;
        }
        metrics.queued.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Msg::Batch(batch)) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Full(_)) => {
                metrics.queued.fetch_sub(n, Ordering::Relaxed);
                metrics.queue_dropped.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                metrics.queued.fetch_sub(n, Ordering::Relaxed);
                false
            }
        }
    }

    /// Hands over what the XDP program banned by itself, waiting for room: they are
    /// few, and each must be confirmed or lifted. False once the pipeline has gone.
    pub(super) fn kernel_bans(&self, banned: KernelBans) -> bool {
        self.tx.send(Msg::KernelBans(banned)).is_ok()
    }

    /// Hands over `msg`, waiting for room unless the agent is stopping. False once the
    /// pipeline has gone (or the agent stops while the queue is full).
    pub(super) fn send_unless_stopped(&self, mut msg: Msg, stop: &AtomicBool) -> bool {
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return true,
                Err(mpsc::TrySendError::Full(m)) if !stop.load(Ordering::Relaxed) => {
                    msg = m;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return false,
            }
        }
    }

    /// The metrics the queue counts in.
    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The raw sender, for the control server (which waits for room itself).
    pub(super) fn sender(&self) -> mpsc::SyncSender<Msg> {
        self.tx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// `n` SYNs of one source, as a capture thread hands them over.
    pub(crate) fn obs(n: usize) -> Vec<Observation> {
        vec![
            Observation {
                foreign: false,
                ts: 0,
                src: IpAddr::from([192, 0, 2, 9]),
                dst: IpAddr::from([192, 0, 2, 1]),
                sport: 1,
                dport: 22,
                flags: synwatch_decode::TcpFlags(synwatch_decode::TcpFlags::SYN),
            };
            n
        ]
    }

    #[test]
    fn a_full_queue_to_the_pipeline_drops_and_counts_instead_of_growing() {
        let metrics = Arc::new(Metrics::new(&[]));
        let (feed, rx) = Feed::bounded(Arc::clone(&metrics), 2, QUEUE_OBSERVATIONS);
        assert!(feed.offer(obs(10)));
        assert!(feed.offer(obs(10)));
        // Full: the third batch is dropped and counted, the capture thread goes on.
        assert!(feed.offer(obs(7)));
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        assert_eq!(metrics.queued.load(Ordering::Relaxed), 20);
        assert_eq!(rx.try_iter().count(), 2);
        drop(rx);
        assert!(!feed.offer(obs(1)), "the pipeline has gone");
    }

    #[test]
    fn the_queue_is_bounded_by_observations_not_batches() {
        let metrics = Arc::new(Metrics::default());
        let (feed, rx) = Feed::bounded(Arc::clone(&metrics), 100, 25);
        assert!(feed.offer(obs(10)));
        assert!(feed.offer(obs(10)));
        // 27 would be held: dropped and counted, though the channel has room.
        assert!(feed.offer(obs(7)));
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        // The pipeline takes a batch: there is room again.
        let Ok(Msg::Batch(b)) = rx.try_recv() else {
            panic!("a batch")
        };
        metrics.queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
        assert!(feed.offer(obs(7)));
        assert_eq!(metrics.queued.load(Ordering::Relaxed), 17);
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 7);
        // Many tiny batches fit where a bound in batches would have dropped them.
        let metrics = Arc::new(Metrics::default());
        let (feed, rx) = Feed::channel(Arc::clone(&metrics));
        for _ in 0..5_000 {
            assert!(feed.offer(obs(1)));
        }
        assert_eq!(metrics.queue_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(rx.try_iter().count(), 5_000);
    }
}
