//! The live agent's end of the per-observation step (`pipeline.rs`): the log limiter,
//! the event writer, and the blocker (which takes scans, and activity of scans waiting
//! for the cap).

use ipnet::IpNet;
use synwatch_detect::{Detector, Direction, Observation};

use super::host_now::{HostNow, is_protected};
use super::seams::Clock;
use crate::block::Blocker;
use crate::events::{Connection, EventSink};
use crate::limit::LogLimiter;
use crate::pipeline::StepSink;
use crate::protect::{self, Why};

pub(super) struct LiveStep<'a> {
    pub(super) limiter: &'a mut LogLimiter,
    pub(super) events: &'a mut dyn EventSink,
    pub(super) blocker: Option<&'a mut Blocker>,
    pub(super) host: &'a HostNow,
    pub(super) clock: &'a dyn Clock,
    pub(super) logged: &'a mut u64,
    /// Connection events the limiter held back in this batch, added to the metric once
    /// the batch is through (one atomic add a batch, not one a packet of a flood).
    pub(super) held: u64,
}

impl StepSink for LiveStep<'_> {
    fn before(&mut self, obs: &Observation) -> std::io::Result<()> {
        match self.limiter.roll(obs.ts) {
            Some(held) => self.events.suppressed(&held),
            None => Ok(()),
        }
    }

    fn observed(&mut self, obs: &Observation) {
        // A scan waiting for the cap gains evidence, and shows it is active.
        if let Some(b) = self.blocker.as_deref_mut()
            && b.has_waiting()
        {
            // Agent time, as the cap counts (packet times are wall time).
            b.activity(obs.src, obs.dport, self.clock.agent_secs());
        }
    }

    fn connection(&mut self, obs: &Observation, direction: Direction) -> std::io::Result<()> {
        if self.limiter.allow(obs.src) {
            *self.logged += 1;
            self.events.connection(&Connection::of(obs, direction))
        } else {
            self.held += 1;
            Ok(())
        }
    }

    fn scan(&mut self, detector: &Detector, scan: &synwatch_detect::Scan) -> std::io::Result<()> {
        let seen = Seen {
            detector,
            host: self.host,
            clock: self.clock,
        };
        on_scan(scan, seen, self.events, self.blocker.as_deref_mut())
    }
}

/// What a scan is judged against: the detector that saw it, the host now, the time.
#[derive(Clone, Copy)]
pub(super) struct Seen<'a> {
    pub(super) detector: &'a Detector,
    pub(super) host: &'a HostNow,
    pub(super) clock: &'a dyn Clock,
}

/// A port scan or sweep: reported (saying why its source is never banned, where it is
/// protected), and banned unless protected (for new connections only when the source
/// holds a session with this host).
pub(super) fn on_scan(
    scan: &synwatch_detect::Scan,
    seen: Seen<'_>,
    events: &mut dyn EventSink,
    blocker: Option<&mut Blocker>,
) -> std::io::Result<()> {
    let Seen {
        detector,
        host,
        clock,
    } = seen;
    let protected = is_protected(scan.src, detector, host);
    let written = events.scan(scan, protected.map(Why::as_str));
    if let Some(b) = blocker {
        // The network the detector counted the source in (its /64 for IPv6), narrowed
        // to the address where it would cover a protected one.
        let wanted = scan.prefix.unwrap_or_else(|| IpNet::from(scan.src));
        let (target, protected) = {
            let snapshot = host.snapshot();
            protect::ban_target(scan.src, wanted, snapshot.view(detector.config()))
        };
        // For a range, any address of it that holds a session keeps its sessions.
        let session = protected.is_none() && host.holds_session(target);
        b.note_scan(target, scan);
        b.scan(
            scan.src,
            target,
            &scan.ports,
            clock.agent_secs(),
            protected,
            session,
        );
    }
    written
}

/// Whether an address in a network holds a session, for the blocker's `session`
/// arguments.
pub(super) fn holds_session(host: &HostNow) -> impl FnMut(IpNet) -> bool + '_ {
    move |a| host.holds_session(a)
}
