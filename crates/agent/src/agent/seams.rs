//! The agent loop's two OS edges besides its sources and its firewall: the clocks it
//! reads ([`Clock`]) and what it asks about this host ([`HostView`]). Both belong to the
//! loop that uses them; the system implementations are the only code here that reads a
//! clock or the host, and the loop's unit tests (`core.rs`) hand in fakes, so that ban
//! batching, reload, an address appearing and a kernel ban's confirmation are tested
//! without root.

use ipnet::IpNet;
use std::time::Instant;

use crate::clock::Offset;
use crate::host::{Host, Infrastructure, Sessions};

/// The clocks the loop reads.
pub trait Clock {
    /// The monotonic clock: the loop's timers and how fresh its view of the host is.
    fn monotonic(&self) -> Instant;
    /// Agent time (`crate::clock`): what bans, their expiry and the cap count in.
    fn agent_secs(&self) -> i64;
    /// Unix nanoseconds: the time of events the agent causes, and when the detector's
    /// sweeps are due.
    fn wall_nanos(&self) -> i64;
    /// Wall time minus agent time, to say when a ban ends on the wall clock.
    fn wall_offset(&self) -> Offset;
}

/// The system's clocks (`crate::clock`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Instant {
        crate::clock::monotonic()
    }

    fn agent_secs(&self) -> i64 {
        crate::clock::now()
    }

    fn wall_nanos(&self) -> i64 {
        crate::clock::wall_nanos()
    }

    fn wall_offset(&self) -> Offset {
        crate::clock::wall_offset()
    }
}

/// What the loop asks about this host: its addresses (local, never banned), the
/// gateways, routers and resolvers it depends on (never banned), and who holds an
/// established connection with it (banned for new connections only).
pub trait HostView {
    /// This host's interfaces and addresses now; `None` where they cannot be read.
    fn host(&mut self) -> Option<Host>;
    /// Its gateways, routers and resolvers now, and the CrowdSec LAPI server.
    fn infrastructure(&mut self) -> Infrastructure;
    /// Whether an address in `net` (an address, or a range about to be banned) holds an
    /// established TCP connection with this host.
    fn holds_session(&mut self, net: IpNet) -> bool;
    /// Whether the infrastructure may have changed since this was last asked (a route:
    /// a new gateway, a router gone; a resolver file written): cheap enough to ask at
    /// every scan.
    fn infra_changed(&mut self) -> bool {
        false
    }
}

/// This host as the system says: getifaddrs(3), /proc's routes and resolv.conf
/// (`host.rs`), the CrowdSec LAPI's addresses, and, where `sessions` is open, the socket
/// table.
#[derive(Debug)]
pub struct SystemHost {
    /// `None`: no source counts as holding a session (nothing is banned, or every ban
    /// drops only new connections anyway).
    pub sessions: Option<Sessions>,
    /// The CrowdSec Local API server the agent talks to, if any.
    pub lapi: Option<crate::crowdsec::host::LapiAddrs>,
    /// The routes, read again as they change.
    pub routes: crate::host::Routes,
}

impl HostView for SystemHost {
    fn host(&mut self) -> Option<Host> {
        Host::read().ok()
    }

    fn infrastructure(&mut self) -> Infrastructure {
        let mut infra = self.routes.read();
        if let Some(lapi) = &self.lapi {
            infra.add_lapi(lapi.get());
        }
        infra
    }

    fn holds_session(&mut self, net: IpNet) -> bool {
        self.sessions
            .as_mut()
            .is_some_and(|s| s.holds(net, crate::clock::monotonic()))
    }

    fn infra_changed(&mut self) -> bool {
        self.routes.changed()
    }
}
