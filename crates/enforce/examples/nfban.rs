//! How long one address ban takes to reach the kernel through the nftables backend, over
//! netlink (as the agent bans) and through `nft -f -` (the fallback), one ban at a time, in
//! the current network namespace. Sets up table `inet synwatch` and tears it down. Prints
//! figures, and checks with `nft` that the last netlink ban is in the set. With
//! `iptables` after the count, the same for the iptables backend (netlink against
//! `ipset restore`, checked with `ipset list`). `NFBAN_V6=1` bans IPv6 addresses.
//!
//!     ip netns add nfban && ip netns exec nfban target/release/examples/nfban [BANS] [iptables]

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(clippy::disallowed_methods, reason = "a benchmark reads the clock")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use synwatch_enforce::iptables::Iptables;
use synwatch_enforce::nflink::Netlink;
use synwatch_enforce::nftables::Nftables;
use synwatch_enforce::{Ban, Enforcer, Scope, SystemRunner};

/// The `i`th address banned: 198.51.100.0 on, or 2001:db8::5100:0 on with `NFBAN_V6`.
fn addr(i: u32) -> IpAddr {
    if std::env::var_os("NFBAN_V6").is_some() {
        IpAddr::V6(Ipv6Addr::from(
            0x2001_0db8_0000_0000_0000_0000_5100_0000u128 + u128::from(i),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))
    }
}

fn ban(i: u32) -> Ban {
    Ban {
        net: IpNet::from(addr(i)),
        timeout_secs: Some(600),
        new_only: false,
    }
}

fn percentiles(mut t: Vec<Duration>) -> String {
    t.sort();
    let at = |p: usize| t[(t.len() - 1) * p / 100];
    format!(
        "median {:?}, p90 {:?}, max {:?} ({} bans)",
        at(50),
        at(90),
        at(100),
        t.len()
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200)
        .max(1);
    let look = Netlink::open().map_err(|e| e.to_string())?;
    let iptables = std::env::args().nth(2).as_deref() == Some("iptables");
    let (mut netlink, mut nft): (Box<dyn Enforcer>, Box<dyn Enforcer>) = if iptables {
        (
            Box::new(
                Iptables::new(Scope::All, Box::new(SystemRunner::default())).with_netlink(look),
            ),
            Box::new(Iptables::new(Scope::All, Box::new(SystemRunner::default()))),
        )
    } else {
        (
            Box::new(
                Nftables::new(Scope::All, Box::new(SystemRunner::default()))
                    .with_look(Box::new(look)),
            ),
            Box::new(Nftables::new(Scope::All, Box::new(SystemRunner::default()))),
        )
    };
    netlink.setup(&[])?;
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        netlink.add(&[ban(i)])?;
        times.push(started.elapsed());
    }
    println!("netlink: {}", percentiles(times));
    let mut times = Vec::new();
    for i in n..2 * n {
        let started = Instant::now();
        nft.add(&[ban(i)])?;
        times.push(started.elapsed());
    }
    println!(
        "{}: {}",
        if iptables {
            "ipset restore"
        } else {
            "nft -f -"
        },
        percentiles(times)
    );
    let last = addr(n - 1);
    let listed = match (iptables, last.is_ipv4()) {
        (true, v4) => std::process::Command::new("ipset")
            .args(["list", if v4 { "synwatch4" } else { "synwatch6" }])
            .output()?,
        (false, v4) => std::process::Command::new("nft")
            .args(["list", "set", "inet", "synwatch"])
            .arg(if v4 { "banned4" } else { "banned6" })
            .output()?,
    };
    let text = String::from_utf8_lossy(&listed.stdout);
    let timed = if iptables { "timeout " } else { "timeout 10m" };
    println!(
        "last netlink ban {last} in the set: {}",
        text.contains(&format!("{last} ")) && text.contains(timed)
    );
    if std::env::var_os("NFBAN_KEEP").is_none() {
        netlink.teardown()?;
    }
    Ok(())
}
