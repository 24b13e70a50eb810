//! The whole replay path on arbitrary bytes: the bytes are a capture file (pcap, pcapng,
//! or either gzipped), every packet is read and every packet of a supported link type is
//! decoded, alone and through a `Reassembler` at its timestamp. Nothing may panic and the
//! packet loop must end.
//!
//! `crates/capture/tests/fuzz_corpus.rs` replays the corpus through the same logic in
//! `cargo test`; keep the two in step.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use synwatch_capture::CaptureReader;
use synwatch_decode::{LinkType, Reassembler, decode};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::from_bytes(data.to_vec()) else {
        return;
    };
    // Every record takes at least 12 bytes of the (decompressed) capture and deflate
    // expands at most 1032:1, so a reader that yields more packets than this is looping.
    let limit = data.len().saturating_mul(1032) / 12 + 1;
    let mut packets = 0usize;
    let mut reassembler = Reassembler::default();
    while let Ok(Some(packet)) = reader.next_packet() {
        packets += 1;
        assert!(packets <= limit, "more packets than the input can hold");
        if let Some(link) = LinkType::from_linktype(packet.linktype) {
            let _ = black_box(decode(link, packet.data));
            let now = u64::try_from(packet.ts_nanos).unwrap_or(0);
            let _ = black_box(reassembler.decode(link, packet.data, now));
        }
    }
});
