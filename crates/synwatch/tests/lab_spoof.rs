//! Spoofed packets must never turn synwatch against its own host (SPEC §2, "Never cut
//! the host off"), in the network-namespace lab: the victim's default gateway, its IPv6
//! router (link-local) and its resolver live in the attacker's namespace; SYN bursts
//! forged "from" each of them are reported but banned by no backend, so the victim
//! still pings its gateway and router and gets its resolver's answer, while a real
//! `nmap -sS` from another address is still banned.
//!
//! Needs root; `make test` runs these as root.

mod lab;

use lab::{Agent, CLIENT, Lab, SCANNER, VICTIM, VICTIM6, eventually};
use serde_json::Value;

const GATEWAY: &str = "10.77.0.254";
const ROUTER: &str = "fe80::fe";
const RESOLVER: &str = "10.77.0.53";

/// The victim's infrastructure, served from the attacker's namespace: routes through
/// the gateway and the router, resolv.conf naming the resolver (a UDP echo on port 53).
fn infrastructure(lab: &mut Lab) {
    for (addr, extra) in [
        (format!("{GATEWAY}/24"), None),
        (format!("{RESOLVER}/24"), None),
        (format!("{ROUTER}/64"), Some("nodad")),
    ] {
        let mut args = vec!["ip", "addr", "add", addr.as_str(), "dev", lab.aif.as_str()];
        args.extend(extra);
        let out = lab.in_attacker(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let vif = lab.vif.clone();
    for args in [
        vec!["ip", "route", "add", "default", "via", GATEWAY],
        vec![
            "ip", "-6", "route", "add", "default", "via", ROUTER, "dev", &vif,
        ],
    ] {
        let out = lab.in_victim(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    lab.victim_etc("resolv.conf", &format!("nameserver {RESOLVER}\n"));
    let echo = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{RESOLVER}', 53))\nwhile True:\n    d, a = s.recvfrom(512)\n    s.sendto(d, a)\n"
    );
    lab.spawn_in_attacker(&["python3", "-c", &echo]);
}

fn pings(lab: &Lab, addr: &str) -> bool {
    lab.in_victim(&["ping", "-n", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

fn resolver_answers(lab: &Lab) -> bool {
    let ask = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1)\ns.sendto(b'q', ('{RESOLVER}', 53))\nassert s.recv(16) == b'q'\n"
    );
    lab.in_victim(&["python3", "-c", &ask]).status.success()
}

fn scan_from(agent: &Agent, src: &str) -> Value {
    agent.wait_for(3, |e| e["event"] == "scan" && e["src"] == src)
}

fn spoofed_infrastructure_is_never_banned(args: &[&str], backend: &str) {
    let mut lab = Lab::new();
    infrastructure(&mut lab);
    let router = format!("{ROUTER}%{}", lab.vif);
    eventually(5, "the resolver starts", || resolver_answers(&lab));
    assert!(pings(&lab, GATEWAY), "the gateway does not answer");
    assert!(pings(&lab, &router), "the router does not answer");

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut all = vec!["--state-dir", state.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let agent = Agent::start(&lab, dir.path(), backend, &all);
    let log = agent.log();
    for (addr, role) in [
        (GATEWAY, "gateway"),
        (ROUTER, "router"),
        (RESOLVER, "resolver"),
    ] {
        assert!(log.contains(&format!("{addr} ({role}")), "{log}");
    }

    for (src, dst, role) in [
        (GATEWAY, VICTIM, "gateway"),
        (ROUTER, VICTIM6, "router"),
        (RESOLVER, VICTIM, "resolver"),
    ] {
        lab.forge_syns(src, dst, &[21, 22, 23, 25]);
        let scan = scan_from(&agent, src);
        assert_eq!(scan["allowlisted"], true, "{scan}");
        assert_eq!(scan["allowlisted_reason"], role, "{scan}");
    }
    // A moment for any (wrong) ban to reach the kernel.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(pings(&lab, GATEWAY), "the gateway was cut off");
    assert!(pings(&lab, &router), "the router was cut off");
    assert!(resolver_answers(&lab), "the resolver was cut off");
    let events = agent.events();
    assert!(!events.iter().any(|e| e["event"] == "block"), "{events:#?}");
    assert_eq!(
        lab.metric("synwatch_bans_refused_total{reason=\"allowlisted\"}"),
        3
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("not blocking {GATEWAY}: it is a gateway")),
        "{log}"
    );

    // A real scanner is still banned.
    lab.scan(SCANNER, VICTIM, "1-20");
    agent.wait_for(3, |e| e["event"] == "block" && e["src"] == SCANNER);
    assert!(!lab.connects(SCANNER, VICTIM), "the scanner still connects");
    assert!(lab.connects(CLIENT, VICTIM), "the client is cut off");
    assert!(pings(&lab, GATEWAY), "the gateway was cut off");
    assert_eq!(agent.stop(), Some(0));
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_never_bans_the_gateway_router_or_resolver_on_forged_scans() {
    spoofed_infrastructure_is_never_banned(&["--block", "nftables"], "nftables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn iptables_never_bans_the_gateway_router_or_resolver_on_forged_scans() {
    spoofed_infrastructure_is_never_banned(&["--block", "iptables"], "iptables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_never_bans_the_gateway_router_or_resolver_on_forged_scans() {
    // The program's own in-kernel detection sees the forged bursts first: its allowlist
    // must hold the infrastructure too.
    spoofed_infrastructure_is_never_banned(&["--source", "xdp", "--block", "xdp"], "xdp");
}
