//! Replays the committed fuzz corpora (`fuzz/corpus/`) through the same logic as the fuzz
//! targets (`fuzz/fuzz_targets/`), so every input that once found new coverage stays a
//! regression test in a plain `cargo test`, with no cargo-fuzz and no nightly needed.
//!
//! Like the targets, it asserts that nothing panics, that the packet loop ends and that a
//! `Reassembler` holds within its limits. The decode and reassembly harnesses are the
//! targets' own (`synwatch_decode::fuzz`); keep `read_one` in step with the
//! `capture_reader` target.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use synwatch_capture::CaptureReader;
use synwatch_decode::fuzz::{decode_input, reassembly_input};
use synwatch_decode::{LinkType, Reassembler, decode};

/// `fuzz/fuzz_targets/capture_reader.rs`.
fn read_one(data: &[u8]) {
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
            let _ = decode(link, packet.data);
            let now = u64::try_from(packet.ts_nanos).unwrap_or(0);
            let _ = reassembler.decode(link, packet.data, now);
        }
    }
}

/// The files of one target's corpus, sorted; fails when there are none, so a lost or
/// moved corpus fails the test instead of passing it vacuously.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} holds no files",
        dir.display()
    );
    files
}

/// Runs every corpus file of `target` through `run` and names every file that panicked
/// (each panic's own message is printed as it happens).
fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus_files(target);
    let mut failed = Vec::new();
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus inputs panicked: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn decode_corpus_never_panics() {
    replay("decode", decode_input);
}

#[test]
fn reassembly_corpus_never_panics() {
    replay("reassembly", reassembly_input);
}

/// The decode corpus read as packet sequences too: more shapes for the reassembler.
#[test]
fn decode_corpus_through_the_reassembler_never_panics() {
    replay("decode", reassembly_input);
}

#[test]
fn capture_reader_corpus_never_panics() {
    replay("capture_reader", read_one);
}
