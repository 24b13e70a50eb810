//! How long the tamper check of the nftables backend takes, against the `inet synwatch`
//! table of the current network namespace (set one up with as many bans as you like):
//! the rule dump and the two canary lookups through netlink, as the agent runs them every
//! few seconds. Prints figures; asserts nothing. See docs/PERFORMANCE.md.
//!
//!     ip netns exec NS target/release/examples/nflook [ROUNDS]

use std::net::IpAddr;

use synwatch_enforce::nflink::{NFPROTO_INET, Netlink};
use synwatch_enforce::{CANARY4, CANARY6};

#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            eprintln!("nflook: {e}");
            std::process::exit(1);
        }
    };
    #[expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]
    let start = std::time::Instant::now();
    let mut intact = true;
    for _ in 0..rounds {
        let rules = nl.rules(NFPROTO_INET, "synwatch").map(|r| r.len());
        let c4 = nl.has_element(NFPROTO_INET, "synwatch", "banned4", IpAddr::V4(CANARY4));
        let c6 = nl.has_element(NFPROTO_INET, "synwatch", "banned6", IpAddr::V6(CANARY6));
        intact &= matches!((rules, c4, c6), (Ok(4), Ok(true), Ok(true)));
    }
    let each = start.elapsed() / rounds;
    println!("{rounds} checks (rule dump + 2 canary lookups): {each:?} each; intact: {intact}");
}
