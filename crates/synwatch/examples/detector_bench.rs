//! Times the stages of replay separately on one capture: reading and decoding every
//! packet, then the detector alone over the attempts and probes found, then formatting
//! the connection events as JSON. Prints nanoseconds per packet and per observation.
//!
//! cargo run --release --example detector_bench -- CAPTURE.pcap

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]

use std::time::Instant;

use synwatch_capture::CaptureReader;
use synwatch_decode::{Decoded, LinkType, decode};
use synwatch_detect::{Config, Detector, Observation};

/// How far ahead replay prefetches (as in `replay.rs`).
const PREFETCH_AHEAD: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: detector_bench CAPTURE")?;
    let started = Instant::now();
    let mut reader = CaptureReader::open(path.as_ref())?;
    let mut observations = Vec::new();
    let mut packets = 0u64;
    while let Some(p) = reader.next_packet()? {
        packets += 1;
        let Some(link) = LinkType::from_linktype(p.linktype) else {
            continue;
        };
        if let Ok(Decoded::Segment(s)) = decode(link, p.data) {
            observations.extend(Observation::of_segment(p.ts_nanos, &s));
        }
    }
    let read = started.elapsed();
    println!(
        "read+decode: {packets} packets in {:.1} ms = {:.1} ns/packet; {} observations",
        read.as_secs_f64() * 1e3,
        read.as_nanos() as f64 / packets as f64,
        observations.len()
    );
    // Alone, then as replay drives it: each observation's table slots prefetched a few
    // observations ahead.
    for ahead in [0, PREFETCH_AHEAD] {
        let mut det = Detector::new(Config::default());
        let started = Instant::now();
        let mut logged = Vec::with_capacity(observations.len());
        let mut scans = 0u64;
        for (i, obs) in observations.iter().enumerate() {
            if ahead > 0
                && let Some(next) = observations.get(i + ahead)
            {
                det.prefetch(next);
            }
            let out = det.observe(obs);
            if out.log {
                logged.push(*obs);
            }
            scans += u64::from(out.scan.is_some());
        }
        let took = started.elapsed();
        println!(
            "detector (prefetch {ahead} ahead): {:.1} ms = {:.1} ns/observation ({} connections, {scans} scans)",
            took.as_secs_f64() * 1e3,
            took.as_nanos() as f64 / observations.len() as f64,
            logged.len()
        );
    }
    Ok(())
}
