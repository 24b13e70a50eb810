//! What range bans cost in the XDP program, for docs/PERFORMANCE.md: loads the program
//! (not attached anywhere), fills its ban maps with `N` address bans (the hashes
//! ban4/ban6) or `N` range bans (the LPM tries bannet4/bannet6: IPv4 /24s, IPv6 /64s),
//! and reports the insert rate through the backend (`XdpBans::add`, one map update per
//! ban) and the program's time per packet (BPF_PROG_TEST_RUN, `REPEAT` runs averaged
//! by the kernel) for a SYN from a source that is not banned (both maps missed) and
//! from one that is (dropped). Needs root.
//!
//! Usage: ban_cost [N] [REPEAT]

#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a command-line benchmark printing its result"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use synwatch_enforce::{Ban, Enforcer};
use synwatch_testkit::packet::{ethernet, tcp_v4, tcp_v6};
use synwatch_xdp::{Options, Verdict, Xdp};

fn bans(n: u32, ranges: bool, v6: bool) -> Vec<Ban> {
    (0..n)
        .map(|i| {
            let net = match (v6, ranges) {
                // 16.0.0.0 onwards: consecutive addresses, or consecutive /24s.
                (false, false) => IpNet::from(IpAddr::from(Ipv4Addr::from(0x1000_0000 + i))),
                (false, true) => {
                    IpNet::new(IpAddr::from(Ipv4Addr::from(0x1000_0000 + (i << 8))), 24).unwrap()
                }
                // 2001:db8:N::1 addresses, or 2001:db8:0:N::/64s.
                (true, false) => IpNet::from(IpAddr::from(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    (i >> 16) as u16,
                    i as u16,
                    0,
                    0,
                    0,
                    1,
                ))),
                (true, true) => IpNet::new(
                    IpAddr::from(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        (i >> 16) as u16,
                        i as u16,
                        0,
                        0,
                        0,
                        0,
                    )),
                    64,
                )
                .unwrap(),
            };
            Ban {
                net,
                timeout_secs: Some(3600),
                new_only: false,
            }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let repeat: u32 = args.next().map_or(1_000_000, |a| a.parse().unwrap());
    let victim4 = Ipv4Addr::new(10, 0, 0, 1);
    let victim6: Ipv6Addr = "fd00::1".parse().unwrap();
    // A source inside the last ban of each kind, and one outside every ban.
    let last = n - 1;
    let inside4 = |ranges: bool| {
        if ranges {
            Ipv4Addr::from(0x1000_0000 + (last << 8) + 77)
        } else {
            Ipv4Addr::from(0x1000_0000 + last)
        }
    };
    let inside6 = |ranges: bool| {
        let s = Ipv6Addr::new(0x2001, 0xdb8, (last >> 16) as u16, last as u16, 0, 0, 0, 1);
        if ranges {
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                (last >> 16) as u16,
                last as u16,
                0xabcd,
                0,
                0,
                9,
            )
        } else {
            s
        }
    };
    let outside4 = Ipv4Addr::new(203, 0, 113, 9);
    let outside6: Ipv6Addr = "2001:db9::9".parse().unwrap();
    println!("N={n} REPEAT={repeat}");
    println!("case\tfamily\tinsert_s\tbans_per_s\tpass_ns\tdrop_ns");
    for (label, count, ranges) in [
        ("none", 0, false),
        ("addresses", n, false),
        ("ranges", n, true),
    ] {
        for v6 in [false, true] {
            let mut xdp = Xdp::load(Options {
                emit: false,
                detection: None,
                scope_new: false,
                same_attempt_ns: 0,
            })
            .unwrap();
            let mut maps = xdp.bans().unwrap();
            let list = bans(count, ranges, v6);
            #[expect(clippy::disallowed_methods, reason = "a benchmark timing itself")]
            let t0 = Instant::now();
            maps.add(&list).unwrap();
            let insert = t0.elapsed();
            let (pass, dropped) = if v6 {
                (
                    ethernet(&tcp_v6(outside6, 40000, victim6, 22, 0x02, 0)),
                    ethernet(&tcp_v6(inside6(ranges), 40000, victim6, 22, 0x02, 0)),
                )
            } else {
                (
                    ethernet(&tcp_v4(outside4, 40000, victim4, 22, 0x02, 0)),
                    ethernet(&tcp_v4(inside4(ranges), 40000, victim4, 22, 0x02, 0)),
                )
            };
            let (v, pass_t) = xdp.test_run_timed(&pass, repeat).unwrap();
            assert_eq!(v, Verdict::Pass);
            let drop_t = if count > 0 {
                let (v, t) = xdp.test_run_timed(&dropped, repeat).unwrap();
                assert_eq!(v, Verdict::Drop, "{label} v6={v6}");
                format!("{}", t.as_nanos())
            } else {
                "-".into()
            };
            let rate = if count > 0 {
                format!("{:.0}", f64::from(count) / insert.as_secs_f64().max(1e-9))
            } else {
                "-".into()
            };
            println!(
                "{label}\t{}\t{:.3}\t{rate}\t{}\t{drop_t}",
                if v6 { "ipv6" } else { "ipv4" },
                insert.as_secs_f64(),
                pass_t.as_nanos()
            );
            maps.teardown().unwrap();
            drop(maps);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
