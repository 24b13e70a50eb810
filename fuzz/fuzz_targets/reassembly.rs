//! `Reassembler` on a sequence of packets cut from arbitrary bytes: the first byte picks
//! the link type (the `decode` target's table), then each packet is a length byte, a time
//! step byte (in quarter seconds, so the 30 s timeout is crossed) and up to that many
//! bytes. The limits are small so that eviction runs; after every packet the table must
//! hold within them. Nothing may panic.
//!
//! `crates/capture/tests/fuzz_corpus.rs` replays the corpus through the same logic in
//! `cargo test`; keep the two in step.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use synwatch_decode::{LinkType, Reassembler, ReassemblyLimits};

/// Indexed by the first input byte (modulo the length), as in the `decode` target.
const LINKS: [LinkType; 8] = [
    LinkType::Null,
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::Loop,
    LinkType::LinuxSll,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::LinuxSll2,
];

const LIMITS: ReassemblyLimits = ReassemblyLimits {
    max_datagrams: 8,
    max_bytes: 2048,
    timeout_ns: 30_000_000_000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(selector) % LINKS.len()];
    let mut reassembler = Reassembler::new(LIMITS);
    let mut now = 0u64;
    while let [len, step, tail @ ..] = rest {
        let (packet, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        now = now.saturating_add(u64::from(*step) * 250_000_000);
        let _ = black_box(reassembler.decode(link, packet, now));
        let stats = reassembler.stats();
        assert!(stats.datagrams_in_use <= LIMITS.max_datagrams as u64);
        assert!(stats.bytes_in_use <= LIMITS.max_bytes as u64);
        assert!(stats.completed <= stats.fragments);
    }
    reassembler.expire(now.saturating_add(LIMITS.timeout_ns + 1));
    assert_eq!(reassembler.stats().datagrams_in_use, 0);
    assert_eq!(reassembler.stats().bytes_in_use, 0);
});
