//! The `synwatch-gen` command line: bad arguments exit 2 with the usage, good ones
//! write what they say.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on I/O errors")]

use std::process::Command;

fn run_gen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch-gen"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &[][..],
        &["sample"][..],
        &["frobnicate", "/tmp/x.pcap"][..],
        &["bench", "--packets", "10"][..],
        &["bench", "/dev/null", "--packets"][..],
        &["bench", "/dev/null", "--packets", "ten"][..],
        &["bench", "/dev/null", "--v6"][..],
        &["spoofed", "/dev/null", "--scanners", "3"][..],
        &["sample", "/dev/null", "extra"][..],
    ] {
        let out = run_gen(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("usage: synwatch-gen"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn io_error_exits_1() {
    let out = run_gen(&["sample", "/nonexistent-dir/x.pcap"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn writes_files_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.pcap");
    let out = run_gen(&[
        "bench",
        p.to_str().unwrap(),
        "--packets",
        "5000",
        "--seed",
        "7",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("5000 packets"), "{err}");
    assert!(err.contains("scanner addresses"), "{err}");
    let len = std::fs::metadata(&p).unwrap().len();
    assert!(err.contains(&format!("{len} bytes")), "{err}");

    // Standard output works too, byte for byte the same.
    let out2 = run_gen(&["bench", "-", "--packets", "5000", "--seed", "7"]);
    assert!(out2.status.success());
    assert_eq!(out2.stdout, std::fs::read(&p).unwrap());

    let s = dir.path().join("s.pcap");
    let out = run_gen(&["spoofed", s.to_str().unwrap(), "--sources", "1000"]);
    assert!(out.status.success());
    assert_eq!(std::fs::metadata(&s).unwrap().len(), 24 + 1000 * (16 + 54));
}

/// The first and last packet times (seconds) of a little-endian pcap.
fn time_span(pcap: &[u8]) -> (u32, u32) {
    let mut at = 24;
    let (mut first, mut last) = (None, 0);
    while at + 16 <= pcap.len() {
        let word = |o: usize| u32::from_le_bytes(pcap[at + o..at + o + 4].try_into().unwrap());
        let (secs, len) = (word(0), word(8) as usize);
        first.get_or_insert(secs);
        last = secs;
        at += 16 + len;
    }
    (first.unwrap(), last)
}

#[test]
fn bench_duration_sets_the_span_of_the_capture() {
    let out = run_gen(&["bench", "-", "--packets", "5000", "--duration", "3"]);
    assert!(out.status.success());
    let (first, last) = time_span(&out.stdout);
    assert!(last - first <= 3, "{first}..{last}");
    let out = run_gen(&["bench", "-", "--packets", "5000"]);
    let (first, last) = time_span(&out.stdout);
    assert!(
        last - first > 500,
        "the default spans 10 minutes: {first}..{last}"
    );
}
