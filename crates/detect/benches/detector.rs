//! The detector alone, on synthetic streams built in memory (no capture, no decoding), so
//! that a change to its tables shows as a change in nanoseconds per observation:
//!
//! cargo bench -p synwatch-detect [-- FILTER]
//!
//! Each scenario runs `RUNS` times (default 7) on a fresh detector and prints the median
//! and the fastest run. A dependency-free harness in the spirit of criterion: the figures
//! are for comparing two builds on one machine, run one after the other.

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use synwatch_decode::TcpFlags;
use synwatch_detect::{Config, Detector, Nanos, Observation};

const SEC: Nanos = 1_000_000_000;
const T0: Nanos = 1_700_000_000 * SEC;

/// xorshift64: the same stream on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn syn(ts: Nanos, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Observation {
    Observation {
        foreign: false,
        ts,
        src,
        dst,
        sport,
        dport,
        flags: TcpFlags(TcpFlags::SYN),
    }
}

/// Like `synwatch-gen bench`'s SYNs: 600,000 over 10 minutes from 50,000 sources (a few
/// busy, most quiet) to 443/80/22 of 254 hosts, 300 of them scanning 500 ports each, 5% of
/// the attempts retransmitted a second later. Every source's tables entry is touched in no
/// particular order: the case the one-cache-line layout is for.
fn mixed() -> Vec<Observation> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let dur = 600 * SEC as u64;
    let mut out = Vec::with_capacity(640_000);
    let host = |rng: &mut Rng| IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + rng.below(254) as u8));
    for s in 0..300u32 {
        let src = IpAddr::V4(Ipv4Addr::from(0x1000_0000 + s * 7919));
        let dst = host(&mut rng);
        let start = rng.below(dur - 60 * SEC as u64);
        let step = 1 + rng.below(100_000_000);
        for p in 0..500u64 {
            let ts = T0 + (start + p * step) as Nanos;
            out.push(syn(ts, src, dst, 40_000, 1 + (p as u16) * 7));
        }
    }
    let n = 50_000u64;
    while out.len() < 600_000 {
        let idx = rng.below(n) * rng.below(n) / n;
        let src = IpAddr::V4(Ipv4Addr::from(0x2000_0000 + idx as u32 * 104_729));
        let ts = T0 + rng.below(dur) as Nanos;
        let dport = [443, 80, 22][rng.below(3) as usize];
        let o = syn(
            ts,
            src,
            host(&mut rng),
            32_768 + rng.below(28_000) as u16,
            dport,
        );
        out.push(o);
        if rng.below(20) == 0 {
            out.push(Observation {
                foreign: false,
                ts: ts + SEC,
                ..o
            });
        }
    }
    out.sort_by_key(|o| o.ts);
    out
}

/// A spoofed SYN flood: every observation a new source, the source table at its cap.
fn flood() -> Vec<Observation> {
    let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
    (0..3_000_000u32)
        .map(|i| {
            let src = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i.wrapping_mul(2_654_435_761)));
            syn(T0 + Nanos::from(i) * 10_000, src, dst, 1024, 80)
        })
        .collect()
}

/// IPv6 sources rotating through 2,000 /64s, counted per prefix.
fn ipv6() -> Vec<Observation> {
    let mut rng = Rng(7);
    let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    (0..300_000u64)
        .map(|i| {
            let net = rng.below(2000) as u16;
            let src = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0x77,
                net,
                0,
                0,
                0,
                rng.next() as u16,
            ));
            syn(
                T0 + i as Nanos * 100_000,
                src,
                dst,
                1024 + rng.below(60_000) as u16,
                rng.below(1000) as u16,
            )
        })
        .collect()
}

/// A name, the stream's maker, the configuration, how far ahead to prefetch.
type Scenario = (&'static str, fn() -> Vec<Observation>, Config, usize);

/// Observations timed together for the longest stretch (a table growing at once shows
/// there as one stretch far longer than the rest).
const STRETCH: usize = 1024;

/// Runs `stream` through a fresh detector; returns nanoseconds per observation, over the
/// whole stream and over its second half (where a flood's tables have grown to their
/// caps), and the longest time any [`STRETCH`] observations in a row took, in
/// microseconds.
fn once(stream: &[Observation], cfg: &Config, ahead: usize) -> (f64, f64, f64) {
    let mut det = Detector::new(cfg.clone());
    let started = Instant::now();
    let mut stretch_started = started;
    let mut longest = std::time::Duration::ZERO;
    let mut logged = 0u64;
    let half = stream.len() / 2;
    let mut halfway = started;
    for (i, o) in stream.iter().enumerate() {
        if i == half {
            halfway = Instant::now();
        }
        if ahead > 0
            && let Some(next) = stream.get(i + ahead)
        {
            det.prefetch(next);
        }
        let out = det.observe(o);
        logged += u64::from(out.log) + u64::from(out.scan.is_some());
        if i % STRETCH == STRETCH - 1 {
            let now = Instant::now();
            longest = longest.max(now - stretch_started);
            stretch_started = now;
        }
    }
    black_box(logged);
    black_box(det.finish());
    let second = halfway.elapsed().as_nanos() as f64 / (stream.len() - half).max(1) as f64;
    (
        started.elapsed().as_nanos() as f64 / stream.len() as f64,
        second,
        longest.as_secs_f64() * 1e6,
    )
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7)
        .max(1);
    let small_cap = Config {
        max_sources: 10_000,
        ..Config::default()
    };
    let scenarios: [Scenario; 7] = [
        ("mixed", mixed, Config::default(), 0),
        ("mixed, prefetched 8 ahead", mixed, Config::default(), 8),
        // The live agent's case under `bench-flood.sh`: the default caps (100,000
        // sources, 1,000,000 remembered attempts), tables growing as in its first seconds.
        ("flood at the default caps", flood, Config::default(), 0),
        // As the live agent steps a batch: prefetched 8 ahead.
        (
            "flood at the default caps, prefetched",
            flood,
            Config::default(),
            8,
        ),
        ("flood at a 10,000-source cap", flood, small_cap.clone(), 0),
        (
            "flood at a 10,000-source cap, prefetched",
            flood,
            small_cap,
            8,
        ),
        ("ipv6 per /64", ipv6, Config::default(), 0),
    ];
    for (name, make, cfg, ahead) in scenarios {
        if !name.contains(&filter) {
            continue;
        }
        let stream = make();
        let runs_done: Vec<(f64, f64, f64)> =
            (0..runs).map(|_| once(&stream, &cfg, ahead)).collect();
        let median = |pick: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs_done.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0])
        };
        let (time, fastest) = median(|r| r.0);
        let (second, _) = median(|r| r.1);
        let (longest, _) = median(|r| r.2);
        println!(
            "{name:<42} {:>8} observations: median {time:7.1} ns/observation (second half {second:7.1}), fastest {fastest:7.1}; longest {STRETCH} in a row: median {longest:8.0} µs ({runs} runs)",
            stream.len(),
        );
    }
}
