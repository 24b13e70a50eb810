//! Property tests standing in for the fuzz target: on any input the reader never
//! panics, always terminates, and reads the same way from memory and from a stream.

#[allow(dead_code, reason = "each test binary uses a different part")]
mod common;
#[allow(dead_code, reason = "each test binary uses a different part")]
mod helpers;

use common::{NgWriter, PcapWriter};
use helpers::{Dribble, Owned};
use proptest::prelude::*;
use synwatch_capture::CaptureReader;

/// Everything a reader yields for `open()`: the packets and the final error's message.
fn outcome(
    open: impl FnOnce() -> Result<CaptureReader, synwatch_capture::CaptureError>,
    input_len: usize,
) -> (Vec<Owned>, Option<String>) {
    let mut r = match open() {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let mut packets = Vec::new();
    // Every packet consumes at least 12 bytes of input, so this bounds a correct reader
    // and catches one that loops without consuming.
    let limit = input_len / 12 + 1;
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                assert!(p.data.len() <= input_len);
                packets.push(Owned::from(p));
                assert!(
                    packets.len() <= limit,
                    "more packets than the input can hold"
                );
            }
            Ok(None) => return (packets, None),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "{msg:?}");
                return (packets, Some(msg));
            }
        }
    }
}

fn check(bytes: &[u8], chunk: usize) {
    let mem = outcome(|| CaptureReader::from_bytes(bytes.to_vec()), bytes.len());
    let stream = outcome(
        || CaptureReader::from_reader(Dribble::boxed(bytes, chunk)),
        bytes.len(),
    );
    assert_eq!(mem, stream, "memory and stream readers disagree");
}

/// Valid starts of every format, so random tails exercise the record parsers rather
/// than stopping at the magic number.
fn prefixes() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for big_endian in [false, true] {
        for nanos in [false, true] {
            out.push(PcapWriter::new(1, 65535, big_endian, nanos).finish());
        }
        let mut modified = PcapWriter::new(1, 65535, big_endian, false).finish();
        modified[..4].copy_from_slice(&if big_endian {
            0xa1b2_cd34u32.to_be_bytes()
        } else {
            0xa1b2_cd34u32.to_le_bytes()
        });
        out.push(modified);
        let mut ng = NgWriter::new(big_endian);
        ng.shb();
        out.push(ng.finish());
        let mut ng = NgWriter::new(big_endian);
        ng.shb();
        ng.idb(1, 0, Some(0x80 | 3), Some(-7), Some("x"));
        ng.idb(101, 64, Some(200), None, None);
        out.push(ng.finish());
    }
    out
}

/// A small valid capture of each kind, to be mutated.
fn samples() -> Vec<Vec<u8>> {
    let mut pcap = PcapWriter::new(1, 65535, false, true);
    pcap.packet(1, b"abcdefgh", 8);
    pcap.packet(2, b"", 3);
    pcap.packet(3, b"xyz", 3);
    let mut ng = NgWriter::new(true);
    ng.shb();
    ng.idb(1, 0, Some(9), Some(1), Some("eth0"));
    ng.epb(0, 5, b"abcd", 4);
    ng.block(77, b"??");
    ng.spb(b"simple", 6);
    ng.pb(0, 9, b"old", 3);
    ng.shb();
    ng.idb(101, 0, None, None, None);
    ng.epb(0, 1, b"e", 1);
    vec![pcap.finish(), ng.finish()]
}

proptest! {
    // No failure persistence: proptest cannot locate a source file to store regressions
    // beside for integration tests, and prints the minimal failing input anyway.
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES still wins, for long runs.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..9) {
        check(&bytes, chunk);
    }

    #[test]
    fn valid_header_then_arbitrary_bytes(
        which in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..9,
    ) {
        let mut all = prefixes();
        let mut bytes = all.swap_remove(which.index(all.len()));
        bytes.extend_from_slice(&tail);
        check(&bytes, chunk);
    }

    #[test]
    fn mutated_valid_capture(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        chunk in 1usize..9,
    ) {
        let mut bytes = samples().swap_remove(which);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check(&bytes, chunk);
    }

    /// Small numbers in the length fields are where off-by-one errors live.
    #[test]
    fn pcapng_blocks_with_arbitrary_small_fields(
        big_endian in any::<bool>(),
        blocks in proptest::collection::vec(
            (prop_oneof![Just(1u32), Just(2), Just(3), Just(6), Just(0x0a0d_0d0a), 0u32..10],
             proptest::collection::vec(prop_oneof![0u8..40, any::<u8>()], 0..40)),
            0..8,
        ),
        chunk in 1usize..9,
    ) {
        let mut w = NgWriter::new(big_endian);
        w.shb();
        for (block_type, body) in &blocks {
            w.block(*block_type, body);
        }
        check(&w.finish(), chunk);
    }
}
