//! The ban database with many bans at once: saving `BANS` bans (default 200,000) in one
//! call, then deleting them all with their offences in one call (as lifting does), as a CrowdSec list arriving and then being
//! withdrawn (or expiring together) asks of it, on the thread that calls. Prints the
//! time of each (median of `RUNS`, default 3), in a temporary state directory.
//!
//! ```text
//! cargo run --release -p synwatch-agent --example store_bench
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]

use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::IpNet;
use synwatch_agent::state::Store;
use synwatch_enforce::bans::Record;

fn main() -> anyhow::Result<()> {
    let number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let (bans, runs) = (number("BANS", 200_000), number("RUNS", 3));
    let nets: Vec<IpNet> = (0..bans as u32)
        .map(|i| IpNet::from(std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let records: Vec<Record> = nets
        .iter()
        .map(|&net| Record {
            net,
            since: 100,
            expires: Some(3700),
            reason: "crowdsec".into(),
            offences: 1,
            new_only: false,
        })
        .collect();
    let (mut saves, mut deletes) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(&dir.path().join("state"))?;
        let started = Instant::now();
        store.save(&records)?;
        saves.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        store.delete(&nets, true)?;
        deletes.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(store.bans()?.is_empty(), "every ban deleted");
    }
    for (what, times) in [("save", &mut saves), ("delete", &mut deletes)] {
        times.sort_by(f64::total_cmp);
        println!(
            "ban database, {what} {bans} bans in one call: median {:.3} s, fastest {:.3} s ({runs} runs)",
            times[times.len() / 2],
            times[0]
        );
    }
    Ok(())
}
