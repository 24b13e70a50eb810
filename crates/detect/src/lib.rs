//! The detection core of synwatch: decides, packet by packet, what is a new connection
//! attempt, what is a retransmission, and when a source becomes a port scanner (the
//! semantics of SPEC §2).
//!
//! The key decision is purity: the [`Detector`] reads no clock and does no I/O. Time
//! arrives with each [`Observation`], so live capture, capture replay and tests drive
//! exactly the same state machine, and every edge (59 s, 60 s, 60.001 s) is a unit test.
//!
//! Layout: [`probe`] classifies TCP flags, [`addrset`] holds local and allowlisted ranges,
//! [`detector`] is the state machine with its bounded tables (port scans per source, IPv6
//! sources per prefix; `first` holds the sources seen once while the table is full), `sweep` finds address sweeps among the attempts nobody answered,
//! [`inventory`] folds TCP and UDP traffic into flows for `synwatch inventory`.

pub mod addrset;
pub mod detector;
mod first;
pub mod inventory;
mod key;
pub mod probe;
mod state;
mod sweep;
mod table;

pub use addrset::{AddrSet, ParseCidrError, parse_cidr};
pub use detector::{
    Config, DEFAULT_IPV6_PREFIX, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_SOURCES, Detector, Direction,
    DirectionFilter, NAT64_PREFIXES, Observation, Outcome, Scan, ScanKind, Seen, Stats,
    is_special_source, per_address_prefixes,
};
pub use probe::{Probe, ProbeSet};

/// Asks the CPU to start loading the cache line holding `value`, so that a use a little
/// later does not wait for memory (a hint: it changes nothing). For callers that keep
/// tables of their own beside the detector's, under the same batch prefetching.
#[inline]
pub fn prefetch<T>(value: &T) {
    table::prefetch_line(std::ptr::from_ref(value).cast());
}

/// Nanoseconds since the Unix epoch: the only notion of time the detector has.
pub type Nanos = i64;

#[cfg(test)]
mod tests;
