//! Replay throughput of the hot path (classic pcap over mmap). Ignored by default: run
//! `cargo test --release -p synwatch-capture --test throughput -- --ignored --nocapture`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
#![expect(
    clippy::disallowed_methods,
    reason = "a throughput measurement has to read the clock"
)]

#[allow(dead_code, reason = "each test binary uses a different part")]
mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{NgWriter, PcapWriter};
use synwatch_capture::CaptureReader;

const PACKETS: u32 = 4_000_000;

fn measure(name: &str, bytes: Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.cap");
    std::fs::write(&path, bytes).unwrap();
    for _ in 0..3 {
        let mut r = CaptureReader::open(&path).unwrap();
        let start = Instant::now();
        let (mut n, mut sum) = (0u64, 0u64);
        while let Some(p) = r.next_packet().unwrap() {
            n += 1;
            sum = sum.wrapping_add(p.data.len() as u64 ^ p.ts_nanos as u64);
        }
        black_box(sum);
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{name}: {n} packets in {secs:.3} s = {:.1} M packets/s",
            n as f64 / secs / 1e6
        );
    }
}

#[test]
#[ignore = "a measurement, not a check; run in release"]
fn replay_rate() {
    let mut w = PcapWriter::new(1, 65535, false, true);
    for i in 0..PACKETS {
        w.packet(
            1_700_000_000_000_000_000 + i64::from(i) * 1_000,
            &[0x42; 60],
            60,
        );
    }
    measure("pcap mmap", w.finish());

    let mut w = NgWriter::new(false);
    w.shb();
    w.idb(1, 0, None, None, None);
    for i in 0..PACKETS {
        w.epb(0, 1_700_000_000_000_000 + u64::from(i), &[0x42; 60], 60);
    }
    measure("pcapng mmap", w.finish());
}
