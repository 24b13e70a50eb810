//! Events for the tests of the printers, here and in the binary (feature `fixtures`):
//! one connection attempt and one port scan, the same everywhere they are printed.

use std::net::IpAddr;

use synwatch_detect::{Direction, Nanos, Probe, ProbeSet, Scan, ScanKind};

use crate::events::Connection;

/// A second, in the detector's nanoseconds.
pub const SEC: Nanos = 1_000_000_000;

/// `s` as an address (a test's literal).
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// 203.0.113.9:40001 to 192.0.2.1:22, incoming.
pub fn connection() -> Connection {
    Connection {
        ts: 1_700_000_000 * SEC + 300_000_000,
        src: ip("203.0.113.9"),
        sport: 40001,
        dst: ip("192.0.2.1"),
        dport: 22,
        direction: Direction::In,
    }
}

/// 203.0.113.9 reaching ports 21, 22, 23 and 25 of 192.0.2.1 with SYNs.
pub fn port_scan() -> Scan {
    let mut probes = ProbeSet::default();
    probes.insert(Probe::Syn);
    Scan {
        ts: 1_700_000_000 * SEC + 900_000_000,
        src: ip("203.0.113.9"),
        dst: ip("192.0.2.1"),
        ports: vec![21, 22, 23, 25],
        probes,
        window: 60 * SEC,
        allowlisted: false,
        prefix: None,
        kind: ScanKind::Ports,
        hosts: Vec::new(),
    }
}
