//! `decode` on arbitrary bytes: the first byte picks one of the supported link types,
//! the rest is the packet. Decoding must never panic, whatever the bytes. The harness is
//! `synwatch_decode::fuzz::decode_input`, which the corpus replay of `cargo test` runs too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| synwatch_decode::fuzz::decode_input(data));
