//! The fuzz targets' harnesses, kept here so that `fuzz/fuzz_targets/` and the corpus
//! replay of `cargo test` (`crates/capture/tests/fuzz_corpus.rs`) run the same code on the
//! same input layout: the first byte picks a link type from [`LinkType::ALL`] (modulo its
//! length), the rest is the input proper.

use std::hint::black_box;

use crate::{LinkType, Reassembler, ReassemblyLimits, decode};

/// A fuzz input's link type and the bytes after its selector byte; `None` when empty.
pub fn split_input(data: &[u8]) -> Option<(LinkType, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    Some((
        LinkType::ALL[usize::from(selector) % LinkType::ALL.len()],
        rest,
    ))
}

/// The `decode` target: the rest is one packet. Decoding must never panic.
pub fn decode_input(data: &[u8]) {
    if let Some((link, packet)) = split_input(data) {
        let _ = black_box(decode(link, packet));
    }
}

/// The `reassembly` target's limits: small, so that eviction runs.
pub const REASSEMBLY_LIMITS: ReassemblyLimits = ReassemblyLimits {
    max_datagrams: 8,
    max_bytes: 2048,
    timeout_ns: 30_000_000_000,
    timeout6_ns: 60_000_000_000,
    max_dist: 64,
};

/// The `reassembly` target: the rest is a sequence of packets, each a length byte, a time
/// step byte (in quarter seconds, so the 30 s and 60 s timeouts are crossed) and up to that many
/// bytes, fed to one [`Reassembler`]. Panics if the table ever holds more than its limits,
/// or anything once every datagram has timed out.
pub fn reassembly_input(data: &[u8]) {
    let Some((link, mut rest)) = split_input(data) else {
        return;
    };
    let limits = REASSEMBLY_LIMITS;
    let mut reassembler = Reassembler::new(limits);
    let mut now = 0u64;
    while let [len, step, tail @ ..] = rest {
        let (packet, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        now = now.saturating_add(u64::from(*step) * 250_000_000);
        let _ = black_box(reassembler.decode(link, packet, now));
        let stats = reassembler.stats();
        assert!(stats.datagrams_in_use <= limits.max_datagrams as u64);
        assert!(stats.bytes_in_use <= limits.max_bytes as u64);
        assert!(stats.completed <= stats.fragments);
    }
    reassembler.expire(now.saturating_add(limits.timeout_ns.max(limits.timeout6_ns) + 1));
    assert_eq!(reassembler.stats().datagrams_in_use, 0);
    assert_eq!(reassembler.stats().bytes_in_use, 0);
}
