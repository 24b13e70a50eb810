//! `Reassembler` on a sequence of packets cut from arbitrary bytes, with small limits so
//! that eviction runs; after every packet the table must hold within them, and nothing may
//! panic. The harness (input layout and checks) is
//! `synwatch_decode::fuzz::reassembly_input`, which the corpus replay of `cargo test` runs
//! too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| synwatch_decode::fuzz::reassembly_input(data));
