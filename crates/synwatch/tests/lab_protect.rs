//! What the host cannot work without is never banned on forged scans (SPEC §2, "Never cut
//! the host off"), beyond the plain default gateway of `lab_spoof.rs`: the CrowdSec Local
//! API server the agent pulls from, and the gateways that only a full read of the routing
//! tables finds (the second next hop of an ECMP default route, a policy-routing table's
//! default route, the members of a nexthop group, IPv6 included).
//!
//! Needs root; `make test` runs these as root.

#[expect(dead_code, reason = "these tests use part of the lab")]
mod lab;

use lab::{Agent, Lab, SCANNER, VICTIM, VICTIM6, eventually};

/// Where the fake LAPI listens: an address of the attacker's namespace.
const LAPI: &str = "10.77.0.99";

/// A LAPI that answers every decision stream with nothing new, and appends a line to
/// `log` for each request.
fn fake_lapi(lab: &mut Lab, log: &std::path::Path) {
    let server = format!(
        r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.0'
    def do_GET(self):
        b = b'{{"new": [], "deleted": []}}'
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
        with open('{}', 'a') as f:
            f.write(self.path + '\n')
    def log_message(self, *a):
        pass
http.server.HTTPServer(('{LAPI}', 8080), H).serve_forever()
"#,
        log.display()
    );
    lab.spawn_in_attacker(&["python3", "-c", &server]);
}

fn requests(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn the_lapi_server_is_never_banned(backend: &str, block: &[&str]) {
    let mut lab = Lab::new();
    lab.add_attacker_address(&format!("{LAPI}/24"));
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("lapi.log");
    fake_lapi(&mut lab, &served);
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
    let state = dir.path().join("state");
    let url = format!("http://{LAPI}:8080/");
    let mut args = vec![
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--crowdsec-bouncer-key-file",
        key.to_str().expect("utf-8"),
        "--crowdsec-url",
        &url,
        "--crowdsec-pull",
        "1s",
    ];
    args.extend_from_slice(block);
    let agent = Agent::start(&lab, dir.path(), backend, &args);
    let log = agent.log();
    assert!(log.contains(&format!("{LAPI} (lapi)")), "{log}");
    eventually(10, "the agent pulls from the LAPI", || {
        requests(&served) >= 2
    });

    lab.forge_syns(LAPI, VICTIM, &[7001, 7002, 7003, 7004]);
    let scan = agent.wait_for(5, |e| e["event"] == "scan" && e["src"] == LAPI);
    assert_eq!(scan["allowlisted"], true, "{scan}");
    assert_eq!(scan["allowlisted_reason"], "lapi", "{scan}");
    // The agent still reaches its LAPI: more pulls are served after the forged scan.
    let before = requests(&served);
    eventually(10, "the agent keeps pulling from the LAPI", || {
        requests(&served) >= before + 2
    });
    let events = agent.events();
    assert!(!events.iter().any(|e| e["event"] == "block"), "{events:#?}");
    assert!(
        agent.log().contains(&format!(
            "not blocking {LAPI}: it is the CrowdSec Local API"
        )),
        "{}",
        agent.log()
    );

    // A real scanner is still banned.
    lab.scan(SCANNER, VICTIM, "1-20");
    agent.wait_for(5, |e| e["event"] == "block" && e["src"] == SCANNER);
    assert_eq!(agent.stop(), Some(0));
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_never_bans_the_crowdsec_lapi_server_on_forged_scans() {
    the_lapi_server_is_never_banned("nftables", &["--block", "nftables"]);
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_never_bans_the_crowdsec_lapi_server_on_forged_scans() {
    the_lapi_server_is_never_banned("xdp", &["--source", "xdp", "--block", "xdp"]);
}

/// Next hops that /proc/net/route (the main table's first hop) does not show: the
/// second hop of an ECMP default route, a policy table's default route, the members of
/// a nexthop group (IPv4 in a policy table, IPv6 as the default), and a hop added to the
/// ECMP default route while the agent runs. None of them need to exist: the
/// protection rule reads the routes.
const HOPS: [(&str, &str); 7] = [
    ("10.77.0.253", "gateway"),
    ("10.77.0.252", "gateway"),
    ("10.77.0.249", "gateway"),
    ("10.77.0.248", "gateway"),
    ("fe80::260", "router"),
    ("fe80::261", "router"),
    ("10.77.0.251", "gateway"),
];

fn every_next_hop_is_never_banned(backend: &str, block: &[&str]) {
    let lab = Lab::new();
    let vif = lab.vif.clone();
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "ip",
            "route",
            "add",
            "default",
            "nexthop",
            "via",
            "10.77.0.254",
            "dev",
            &vif,
            "nexthop",
            "via",
            "10.77.0.253",
            "dev",
            &vif,
        ],
        vec![
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.77.0.252",
            "dev",
            &vif,
            "table",
            "100",
        ],
        vec![
            "ip",
            "nexthop",
            "add",
            "id",
            "8",
            "via",
            "10.77.0.249",
            "dev",
            &vif,
        ],
        vec![
            "ip",
            "nexthop",
            "add",
            "id",
            "9",
            "via",
            "10.77.0.248",
            "dev",
            &vif,
        ],
        vec!["ip", "nexthop", "add", "id", "10", "group", "8/9"],
        vec![
            "ip", "route", "add", "default", "nhid", "10", "table", "200",
        ],
        vec![
            "ip",
            "nexthop",
            "add",
            "id",
            "16",
            "via",
            "fe80::260",
            "dev",
            &vif,
        ],
        vec![
            "ip",
            "nexthop",
            "add",
            "id",
            "17",
            "via",
            "fe80::261",
            "dev",
            &vif,
        ],
        vec!["ip", "nexthop", "add", "id", "18", "group", "16/17"],
        vec!["ip", "-6", "route", "add", "default", "nhid", "18"],
    ];
    for args in &commands {
        let out = lab.in_victim(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut args = vec!["--state-dir", state.to_str().expect("utf-8")];
    args.extend_from_slice(block);
    let agent = Agent::start(&lab, dir.path(), backend, &args);
    let log = agent.log();
    for (addr, role) in &HOPS[..6] {
        assert!(log.contains(&format!("{addr} ({role}")), "{addr}: {log}");
    }
    // A third hop of the main default route, set while the agent runs, counts at once:
    // /proc's routes do not show it (their line names the first hop alone, as before),
    // the kernel's word of a route change does, well before `ip` lists every ROUTES_EVERY.
    let replace = [
        "ip",
        "route",
        "replace",
        "default",
        "nexthop",
        "via",
        "10.77.0.254",
        "dev",
        &vif,
        "nexthop",
        "via",
        "10.77.0.253",
        "dev",
        &vif,
        "nexthop",
        "via",
        "10.77.0.251",
        "dev",
        &vif,
    ];
    let out = lab.in_victim(&replace);
    assert!(out.status.success(), "{replace:?}: {out:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));

    // The new hop first, then the others.
    for &(src, role) in HOPS.iter().rev() {
        let dst = if src.contains(':') { VICTIM6 } else { VICTIM };
        lab.forge_syns(src, dst, &[4001, 4002, 4003, 4004]);
        let scan = agent.wait_for(5, |e| e["event"] == "scan" && e["src"] == src);
        assert_eq!(scan["allowlisted"], true, "{scan}");
        assert_eq!(scan["allowlisted_reason"], role, "{scan}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let events = agent.events();
    assert!(!events.iter().any(|e| e["event"] == "block"), "{events:#?}");
    assert_eq!(agent.stop(), Some(0));
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_never_bans_any_next_hop_of_the_default_routes_on_forged_scans() {
    every_next_hop_is_never_banned("nftables", &["--block", "nftables"]);
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_never_bans_any_next_hop_of_the_default_routes_on_forged_scans() {
    every_next_hop_is_never_banned("xdp", &["--source", "xdp", "--block", "xdp"]);
}

/// IPv6 networks that count per address although `--ipv6-prefix` is 64: an allowlisted
/// monitor's /64 (its neighbour is not lumped in with the monitor's ports) and NAT64's
/// 64:ff9b::/96 (each address stands for an IPv4 host: a forged scan "from" one bans it
/// alone, not the /64 through which the host reaches all of IPv4).
fn per_address_networks_are_never_banned_whole(backend: &str, block: &[&str]) {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut args = vec![
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--allow",
        "2001:db8:7::7/128",
    ];
    args.extend_from_slice(block);
    let agent = Agent::start(&lab, dir.path(), backend, &args);
    // Attaching a native XDP program takes the link down and up: the victim's IPv6
    // address is usable again once the attacker's side reaches it.
    eventually(10, "the victim's IPv6 address answers", || {
        lab.in_attacker(&["ping", "-6", "-n", "-c", "1", "-W", "1", VICTIM6])
            .status
            .success()
    });

    lab.forge_syns("2001:db8:7::7", VICTIM6, &[7001, 7002, 7003]);
    lab.forge_syns("2001:db8:7::8", VICTIM6, &[443]);
    lab.forge_syns("64:ff9b::102:304", VICTIM6, &[3001, 3002, 3003, 3004]);
    let block = agent.wait_for(5, |e| e["event"] == "block");
    assert_eq!(block["src"], "64:ff9b::102:304", "{block}");
    assert!(block.get("prefix").is_none(), "{block}");
    // The allowlisted monitor's neighbour was not made a scanner by the monitor's ports.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let events = agent.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "scan" && e["src"] == "2001:db8:7::8"),
        "{events:#?}"
    );
    assert_eq!(
        events.iter().filter(|e| e["event"] == "block").count(),
        1,
        "{events:#?}"
    );
    assert_eq!(agent.stop(), Some(0));
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_counts_an_allowlisted_addresss_neighbours_and_nat64_per_address() {
    per_address_networks_are_never_banned_whole("nftables", &["--block", "nftables"]);
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_counts_an_allowlisted_addresss_neighbours_and_nat64_per_address() {
    per_address_networks_are_never_banned_whole("xdp", &["--source", "xdp", "--block", "xdp"]);
}

/// A gateway set while the agent runs: the XDP program bans by itself, from its own
/// allowlist, before user space sees a packet. Once the agent has seen the new gateway
/// (told of the route change by the kernel, or at a ban-time read), the program's
/// allowlist holds it at once: it is not banned in the kernel again on each of the next
/// forged scans (which would drop its traffic for a moment each time) until the periodic
/// read, 10 s later.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_is_told_a_new_gateway_as_soon_as_the_host_view_sees_it() {
    const NEW_GATEWAY: &str = "10.77.0.242";
    let (lab, dir, args) =
        lab_with_spare_address(NEW_GATEWAY, &["--source", "xdp", "--block", "xdp"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&lab, dir.path(), "xdp", &args);
    make_default_gateway(&lab, NEW_GATEWAY);
    // The host view at ban time is at most a second old.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for i in 0..6u16 {
        let ports: Vec<u16> = (0..4).map(|p| 6000 + i * 10 + p).collect();
        lab.forge_syns(NEW_GATEWAY, VICTIM, &ports);
        // One scan episode: reported once; each burst's attempts are logged.
        let last = serde_json::json!(ports[3]);
        agent.wait_for(5, |e| {
            e["event"] == "connection" && e["src"] == NEW_GATEWAY && e["dport"] == last
        });
        // A moment for a kernel ban, if the program made one, to reach user space.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let scan = agent.wait_for(1, |e| e["event"] == "scan" && e["src"] == NEW_GATEWAY);
    assert_eq!(scan["allowlisted_reason"], "gateway", "{scan}");
    let log = agent.log();
    let kernel_bans = log
        .matches(&format!("the XDP program banned {NEW_GATEWAY}/32"))
        .count();
    assert!(
        kernel_bans <= 1,
        "banned in the kernel {kernel_bans} times: {log}"
    );
    let events = agent.events();
    assert!(!events.iter().any(|e| e["event"] == "block"), "{events:#?}");
    assert_eq!(agent.stop(), Some(0));
}

/// The kernel's word of a route change wakes the agent at once, not at its next turn
/// (up to 200 ms when idle): a forged scan "from" a gateway set 60 ms before is not
/// banned by the XDP program in the kernel, three gateways in a row.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn xdp_is_told_a_new_gateway_before_a_forged_scan_that_follows_the_route_change() {
    const GATEWAYS: [&str; 3] = ["10.77.0.231", "10.77.0.232", "10.77.0.233"];
    let (lab, dir, args) =
        lab_with_spare_address(GATEWAYS[0], &["--source", "xdp", "--block", "xdp"]);
    for gateway in &GATEWAYS[1..] {
        lab.add_attacker_address(&format!("{gateway}/24"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&lab, dir.path(), "xdp", &args);
    for (i, gateway) in (0u16..).zip(GATEWAYS) {
        // The agent idle for more than a turn first.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let ports: Vec<u16> = (0..4).map(|p| 7000 + i * 10 + p).collect();
        let route = [
            "ip",
            "-n",
            &lab.victim,
            "route",
            "replace",
            "default",
            "via",
            gateway,
            "dev",
            &lab.vif,
        ];
        lab.forge_syns_after(&route, 60, gateway, VICTIM, &ports);
        let scan = agent.wait_for(5, |e| e["event"] == "scan" && e["src"] == gateway);
        assert_eq!(scan["allowlisted_reason"], "gateway", "{scan}");
    }
    // A moment for a kernel ban, if the program made one, to reach user space.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = agent.log();
    assert!(!log.contains("the XDP program banned"), "{log}");
    let events = agent.events();
    assert!(!events.iter().any(|e| e["event"] == "block"), "{events:#?}");
    assert_eq!(agent.stop(), Some(0));
}

/// A forged scan "from" a gateway set up a moment ago (no sleep between the route change
/// and the scan, and the host view read just before it) is never banned: the kernel
/// tells the agent of the route change, and the ban-time read sees the new gateway.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_never_bans_a_gateway_set_up_a_moment_before_a_forged_scan() {
    const NEW_GATEWAY: &str = "10.77.0.243";
    let (lab, dir, args) = lab_with_spare_address(NEW_GATEWAY, &["--block", "nftables"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&lab, dir.path(), "nftables", &args);
    // A ban first, so that the host view was read a moment ago.
    lab.forge_syns("10.77.0.244", VICTIM, &[7001, 7002, 7003, 7004]);
    agent.wait_for(5, |e| e["event"] == "block" && e["src"] == "10.77.0.244");
    make_default_gateway(&lab, NEW_GATEWAY);
    lab.forge_syns(NEW_GATEWAY, VICTIM, &[7011, 7012, 7013, 7014]);
    let scan = agent.wait_for(5, |e| e["event"] == "scan" && e["src"] == NEW_GATEWAY);
    assert_eq!(scan["allowlisted_reason"], "gateway", "{scan}");
    let events = agent.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "block" && e["src"] == NEW_GATEWAY),
        "{events:#?}"
    );
    assert_eq!(agent.stop(), Some(0));
}

/// The same for a resolver: resolv.conf written a moment before a forged scan "from"
/// the new resolver (the host view read just before it), and written in IPv4-mapped form
/// (glibc then asks the IPv4 address): reported, never banned (red team, resolvers D1
/// and D2).
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn nftables_never_bans_a_resolver_set_a_moment_before_a_forged_scan() {
    const NEW_RESOLVER: &str = "10.77.0.245";
    let (lab, dir, args) = lab_with_spare_address(NEW_RESOLVER, &["--block", "nftables"]);
    lab.victim_etc("resolv.conf", "nameserver 10.77.0.246\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&lab, dir.path(), "nftables", &args);
    // A ban first, so that the host view was read a moment ago.
    lab.forge_syns("10.77.0.244", VICTIM, &[7001, 7002, 7003, 7004]);
    agent.wait_for(5, |e| e["event"] == "block" && e["src"] == "10.77.0.244");
    lab.victim_etc(
        "resolv.conf",
        &format!("nameserver ::ffff:{NEW_RESOLVER}\n"),
    );
    lab.forge_syns(NEW_RESOLVER, VICTIM, &[7011, 7012, 7013, 7014]);
    let scan = agent.wait_for(5, |e| e["event"] == "scan" && e["src"] == NEW_RESOLVER);
    assert_eq!(scan["allowlisted_reason"], "resolver", "{scan}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let events = agent.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "block" && e["src"] == NEW_RESOLVER),
        "{events:#?}"
    );
    assert_eq!(agent.stop(), Some(0));
}

/// Makes `gateway` (an address of the attacker's side of the link) the victim's default
/// gateway.
fn make_default_gateway(lab: &Lab, gateway: &str) {
    let vif = lab.vif.clone();
    let route = [
        "ip", "route", "replace", "default", "via", gateway, "dev", &vif,
    ];
    let out = lab.in_victim(&route);
    assert!(out.status.success(), "{route:?}: {out:?}");
}

/// A lab whose attacker side also holds `spare` (a gateway to be), a directory for the
/// agent, and the agent's arguments: a state directory in it, then `more`.
fn lab_with_spare_address(spare: &str, more: &[&str]) -> (Lab, tempfile::TempDir, Vec<String>) {
    let lab = Lab::new();
    lab.add_attacker_address(&format!("{spare}/24"));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut args = vec![
        "--state-dir".to_owned(),
        state.to_str().expect("utf-8").to_owned(),
    ];
    args.extend(more.iter().map(|a| (*a).to_owned()));
    (lab, dir, args)
}
