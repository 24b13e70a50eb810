//! The log limiter under a spoofed SYN flood, alone: every connection event from a new
//! random IPv4 source, 100,000 a second, through `LogLimiter::allow` with the agent's
//! default limits (`--log-limit-source 10`, `--log-limit-global 5000`) and a `roll` as
//! each second starts, as the live agent calls them. Prints nanoseconds per event
//! (median and fastest of `RUNS`, default 5): alone, and with three random cache lines of
//! a 96 MiB table read before each event (about what the detector's tables make of the
//! caches under the same flood), beside that pollution alone, so that the difference is
//! what the limiter costs in the live agent.
//!
//! ```text
//! cargo run --release -p synwatch-agent --example limiter_bench
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use synwatch_agent::limit::LogLimiter;

const EVENTS: u64 = 2_000_000;
const PER_SECOND: u64 = 100_000;

/// Nanoseconds per event; `pollute` reads three random lines of it before each event;
/// without `limit`, only that.
fn once(sources: &[IpAddr], pollute: &[u64], limit: bool) -> f64 {
    let mut limiter = LogLimiter::new(10, 5000);
    let started = Instant::now();
    let mut logged = 0u64;
    let mut held = 0u64;
    let mut sink = 0u64;
    let lines = (pollute.len() / 8) as u64;
    for (i, src) in sources.iter().enumerate() {
        if lines > 0 {
            let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for _ in 0..3 {
                x ^= x >> 29;
                x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
                sink = sink.wrapping_add(pollute[((x >> 16) % lines * 8) as usize]);
            }
        }
        if !limit {
            continue;
        }
        let ts = i as i64 * (1_000_000_000 / PER_SECOND as i64);
        if let Some(s) = limiter.roll(ts) {
            held += s.count;
        }
        logged += u64::from(limiter.allow(*src));
    }
    black_box((logged, held, sink));
    started.elapsed().as_nanos() as f64 / sources.len() as f64
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let sources: Vec<IpAddr> = (0..EVENTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            IpAddr::V4(Ipv4Addr::from(x as u32))
        })
        .collect();
    let pollute: Vec<u64> = (0..96u64 << 17).collect();
    for (name, pollute, limit) in [
        ("alone", &[][..], true),
        ("after 3 random lines of 96 MiB", &pollute[..], true),
        ("3 random lines of 96 MiB, no limiter", &pollute[..], false),
    ] {
        let mut times: Vec<f64> = (0..runs).map(|_| once(&sources, pollute, limit)).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "log limiter, spoofed flood at {PER_SECOND}/s, {name:<36}: median {:6.1} ns/event, fastest {:6.1} ({runs} runs)",
            times[times.len() / 2],
            times[0]
        );
    }
}
