//! The loop's view of this host for the protection rule (`protect.rs`): its addresses
//! and infrastructure as read through the [`HostView`] at most a second ago, so that an
//! address added or a gateway changed a moment ago counts, without reading them per ban
//! when thousands of scanners arrive together.

use std::cell::{Cell, Ref, RefCell};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use synwatch_detect::Detector;

use super::seams::{Clock, HostView};
use crate::host::{Host, Infrastructure};
use crate::protect::{self, Why};

/// One read of what the protection rule needs from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HostSnapshot {
    pub(super) addresses: BTreeSet<IpAddr>,
    pub(super) infra: Infrastructure,
}

impl HostSnapshot {
    pub(super) fn view<'a>(&'a self, cfg: &'a synwatch_detect::Config) -> protect::View<'a> {
        protect::View {
            host: &self.addresses,
            infra: &self.infra,
            cfg,
        }
    }
}

/// The host's addresses and infrastructure for ban-time checks, read again when a
/// second old.
pub(super) struct HostNow {
    view: RefCell<Box<dyn HostView>>,
    clock: Rc<dyn Clock>,
    /// When the host was read (`None`: never) and what it was.
    read: RefCell<(Option<Instant>, HostSnapshot)>,
    /// A read found the host changed since the one before (an address, a gateway):
    /// the loop then applies the change at once ([`HostNow::take_changed`]).
    changed: Cell<bool>,
}

impl HostNow {
    pub(super) fn new(view: Box<dyn HostView>, clock: Rc<dyn Clock>) -> Self {
        Self {
            view: RefCell::new(view),
            clock,
            read: RefCell::default(),
            changed: Cell::new(false),
        }
    }

    pub(super) fn snapshot(&self) -> Ref<'_, HostSnapshot> {
        let now = self.clock.monotonic();
        let stale = self
            .read
            .borrow()
            .0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        // A route or a resolver file changed since: a forged scan "from" a gateway or
        // resolver set up a moment ago must find it protected, not the read before's.
        if stale || self.infra_changed() {
            let host = self.host().unwrap_or_default();
            self.set(now, self.snapshot_of(host));
        }
        Ref::map(self.read.borrow(), |(_, snapshot)| snapshot)
    }

    /// Takes a host read elsewhere at `at`.
    pub(super) fn set(&self, at: Instant, snapshot: HostSnapshot) {
        let mut read = self.read.borrow_mut();
        if read.0.is_some() && read.1 != snapshot {
            self.changed.set(true);
        }
        *read = (Some(at), snapshot);
    }

    /// Whether a read since the last call found the host changed (a ban-time read
    /// sees a new gateway before the loop's periodic read does).
    pub(super) fn take_changed(&self) -> bool {
        self.changed.replace(false)
    }

    /// Whether the infrastructure may have changed since this was last asked (see
    /// [`HostView::infra_changed`]).
    pub(super) fn infra_changed(&self) -> bool {
        self.view.borrow_mut().infra_changed()
    }

    /// Reads the host's interfaces and addresses (`None`: they cannot be read).
    pub(super) fn host(&self) -> Option<Host> {
        self.view.borrow_mut().host()
    }

    /// Reads the host's gateways, routers and resolvers.
    pub(super) fn infrastructure(&self) -> Infrastructure {
        self.view.borrow_mut().infrastructure()
    }

    /// `host` with the infrastructure read now.
    pub(super) fn snapshot_of(&self, host: Host) -> HostSnapshot {
        HostSnapshot {
            addresses: host.addresses,
            infra: self.infrastructure(),
        }
    }

    /// Whether an address in `net` holds an established connection with this host.
    pub(super) fn holds_session(&self, net: IpNet) -> bool {
        self.view.borrow_mut().holds_session(net)
    }
}

/// The gateways, routers and resolvers, as the detector's neighbours: an IPv6 prefix
/// holding one counts its sources per address.
pub(super) fn neighbours(infra: &Infrastructure) -> synwatch_detect::AddrSet {
    let mut set = synwatch_detect::AddrSet::new();
    for &addr in infra.by_addr.keys() {
        set.insert(IpNet::from(addr));
    }
    set
}

/// Why `addr` must never be banned, asked at ban time: the host's addresses, gateways,
/// routers and resolvers as they are now, the configured local and allowlisted ranges,
/// special addresses (one rule: `protect.rs`).
pub(super) fn is_protected(addr: IpAddr, detector: &Detector, host: &HostNow) -> Option<Why> {
    let snapshot = host.snapshot();
    protect::why(addr, snapshot.view(detector.config()))
}

/// Why `net` (an address or a range) must never be banned, and the protected address or
/// range it would cover (`protect::why_net`).
pub(super) fn is_protected_net(
    net: IpNet,
    detector: &Detector,
    host: &HostNow,
) -> Option<(Why, IpNet)> {
    let snapshot = host.snapshot();
    protect::why_net(net, snapshot.view(detector.config()))
}
