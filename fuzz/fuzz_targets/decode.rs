//! `decode` on arbitrary bytes: the first byte picks one of the supported link types,
//! the rest is the packet. Decoding must never panic, whatever the bytes.
//!
//! `crates/capture/tests/fuzz_corpus.rs` replays the corpus through the same logic in
//! `cargo test`; keep the two in step.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use synwatch_decode::{LinkType, decode};

/// Indexed by the first input byte (modulo the length); the corpus relies on this order.
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

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(selector) % LINKS.len()];
    let _ = black_box(decode(link, packet));
});
