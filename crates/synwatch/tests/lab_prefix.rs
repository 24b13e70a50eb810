//! IPv6 scanners per /64 in the network-namespace lab, for each backend: a scanner that
//! rotates through addresses of its own /64, three ports each, is one scanner, banned as
//! the /64 (a fresh address of that /64 is refused afterwards, an address of another /64
//! is not), while sources on the victim's own /64 still count one by one.
//!
//! Needs root; `make test` runs these as root.

#[expect(dead_code, reason = "this test uses part of the shared lab")]
mod lab;

use lab::{Agent, Lab, VICTIM6, eventually};

/// The rotating scanner's /64 and a neighbouring one, both routed to the attacker.
const ROTATING: &str = "fd77:1:2::";
const OTHER: &str = "fd77:1:3::5";

fn rotating_64_is_banned_as_a_64(block: &str) {
    let lab = Lab::new();
    let mut addrs: Vec<String> = (0x10..0x16).map(|i| format!("{ROTATING}{i:x}")).collect();
    addrs.push(format!("{ROTATING}99"));
    addrs.push(OTHER.to_owned());
    for a in &addrs {
        lab.add_attacker_address(&format!("{a}/64"));
    }
    let out = lab.in_victim(&["ip", "-6", "route", "add", "fd77:1::/32", "via", "fd77::2"]);
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let source = if block == "xdp" { "xdp" } else { "pcap" };
    let agent = Agent::start(
        &lab,
        dir.path(),
        block,
        &[
            "--source",
            source,
            "--block",
            block,
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ],
    );
    let fresh = format!("{ROTATING}99");
    // The route to both /64s works (the fresh address is not tried before: its attempt
    // would count toward its /64).
    assert!(
        lab.connects(OTHER, VICTIM6),
        "the other /64 connects before"
    );

    // Three ports from each of the first addresses: no address reaches four.
    for (i, a) in addrs[..3].iter().enumerate() {
        let ports = format!("{}-{}", 100 + 3 * i, 102 + 3 * i);
        lab.nmap(a, VICTIM6, &ports, &[]);
    }
    let scan = agent.wait_for(5, |e| {
        e["event"] == "scan" && e["prefix"] == "fd77:1:2::/64"
    });
    assert_eq!(scan["kind"], "ports", "{scan}");
    // The crossing attempt came from the second address: none reached four ports alone.
    assert_eq!(scan["src"], addrs[1], "{scan}");
    let block_event = agent.wait_for(5, |e| e["event"] == "block");
    assert_eq!(block_event["prefix"], "fd77:1:2::/64", "{block_event}");
    assert!(
        !lab.connects(&fresh, VICTIM6),
        "a fresh address of the banned /64 still connects"
    );
    assert!(lab.connects(OTHER, VICTIM6), "another /64 was banned too");
    eventually(3, "the range ban is counted", || {
        lab.metric("synwatch_blocked_ranges") == 1
    });
    if block == "xdp" {
        xdp_counts_the_64_in_the_kernel(&lab);
    }
}

/// With XDP, the program itself counted the rotation as its /64 and banned the /64 with
/// the crossing packet (one kernel ban, the same range as the detector's, so it is held
/// once); sources on the victim's own /64 are counted per address in the kernel too: two
/// neighbours with two ports each and a connection (three ports each, five in their /64)
/// are no scanner.
fn xdp_counts_the_64_in_the_kernel(lab: &Lab) {
    eventually(3, "the kernel's ban is counted", || {
        lab.metric("synwatch_xdp_kernel_bans_total") == 1
    });
    let neighbours = ["fd77::7", "fd77::8"];
    for (i, n) in neighbours.iter().enumerate() {
        lab.add_attacker_address(&format!("{n}/64"));
        let ports = format!("{}-{}", 200 + 2 * i, 201 + 2 * i);
        lab.nmap(n, VICTIM6, &ports, &[]);
    }
    for n in neighbours {
        assert!(lab.connects(n, VICTIM6), "neighbour {n} was banned");
    }
    assert_eq!(lab.metric("synwatch_xdp_kernel_bans_total"), 1);
    assert_eq!(lab.metric("synwatch_blocked_ranges"), 1);
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_rotating_64_is_banned_as_a_64_with_nftables() {
    rotating_64_is_banned_as_a_64("nftables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_rotating_64_is_banned_as_a_64_with_iptables() {
    rotating_64_is_banned_as_a_64("iptables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_rotating_64_is_banned_as_a_64_with_xdp() {
    rotating_64_is_banned_as_a_64("xdp");
}
