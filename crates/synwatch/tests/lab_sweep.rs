//! Address sweeps in the network-namespace lab, through libpcap: the victim holds thirty
//! addresses; a source probing port 22 (closed: answered by RST, not SYN-ACK) on all of
//! them is reported as a sweep and banned, while a client fetching a page from port 8080
//! of every one of them (answered) is not.
//!
//! Needs root; `make test` runs these as root.

mod lab;

use lab::{ALLOWED, Agent, CLIENT, HTTP_PORT, Lab, SCANNER, SCANNER6, VICTIM, eventually};

/// The victim with thirty addresses (10.77.1.1-30, routed from the attacker's side) and
/// an agent watching it through libpcap, banning with nftables.
fn many_addresses(lab: &Lab, dir: &std::path::Path) -> (Vec<String>, Agent) {
    let hosts: Vec<String> = (1..=30).map(|i| format!("10.77.1.{i}")).collect();
    for h in &hosts {
        let out = lab.in_victim(&["ip", "addr", "add", &format!("{h}/24"), "dev", &lab.vif]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = lab.in_attacker(&["ip", "route", "add", "10.77.1.0/24", "dev", &lab.aif]);
    assert!(out.status.success(), "{out:?}");
    let state = dir.join("state");
    let agent = Agent::start(
        lab,
        dir,
        "sweep",
        &[
            "--source",
            "pcap",
            "--block",
            "nftables",
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ],
    );
    (hosts, agent)
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_sweep_of_the_hosts_addresses_is_reported_and_banned_a_monitoring_client_is_not() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (hosts, agent) = many_addresses(&lab, dir.path());

    // The monitoring client: one answered connection to each address.
    for h in &hosts {
        let url = format!("http://{h}:{HTTP_PORT}/");
        let out = lab.in_attacker(&[
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "--interface",
            CLIENT,
            "--max-time",
            "2",
            &url,
        ]);
        assert!(out.status.success(), "the client could not fetch {url}");
    }
    // The sweeper: port 22 on every address, nobody listening.
    lab.nmap(SCANNER, "10.77.1.1-30", "22", &[]);

    let sweep = agent.wait_for(8, |e| e["event"] == "scan" && e["kind"] == "sweep");
    assert_eq!(sweep["src"], SCANNER, "{sweep}");
    assert_eq!(sweep["dport"], 22);
    assert_eq!(sweep["hosts"].as_array().map(Vec::len), Some(17));
    agent.wait_for(3, |e| e["event"] == "block" && e["src"] == SCANNER);
    assert!(
        !lab.connects(SCANNER, VICTIM),
        "the sweeper still connects after its ban"
    );
    assert!(
        lab.connects(CLIENT, VICTIM),
        "the monitoring client was cut off"
    );
    let events = agent.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "scan" && e["src"] == CLIENT),
        "the monitoring client was reported: {events:?}"
    );
    // Port scans are reported beside sweeps, as before.
    lab.scan(ALLOWED, VICTIM, "1-20");
    let scan = agent.wait_for(3, |e| e["event"] == "scan" && e["src"] == ALLOWED);
    assert_eq!(scan["kind"], "ports");
    // The detector's totals reach the metrics after each batch.
    eventually(3, "the sweep is counted", || {
        lab.metric("synwatch_address_sweeps_total") == 1
    });
    assert_eq!(agent.stop(), Some(0));
}

/// SYN-ACKs coming in: one "from" this host's own address is forged (the kernel drops it
/// as a martian) and answers nothing, so a sweeper who sends one for each of its SYNs is
/// still reported, over IPv4 and IPv6, whole or in fragments, untagged or behind VLAN
/// tags in the frame (an unknown tag protocol, the inner tag of QinQ); one from another host (a
/// backend behind destination NAT, the far end of a connection through a gateway) is a
/// real answer, and its attempts are no sweep.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn answers_forged_from_the_hosts_own_addresses_hide_no_sweep() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 1..=20 {
        let out = lab.in_victim(&[
            "ip",
            "addr",
            "add",
            &format!("fd77:1::{i}/64"),
            "dev",
            &lab.vif,
            "nodad",
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    // A load balancer's worth: with 10.77.1.1-30 below, 254 IPv4 addresses and 20 IPv6
    // ones, more than the filter names one by one; as blocks they are a few dozen.
    for i in 31..=254 {
        let out = lab.in_victim(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.1.{i}/24"),
            "dev",
            &lab.vif,
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    let (_, agent) = many_addresses(&lab, dir.path());
    // The agent names the host's addresses in its filter within a second of a change.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    lab.scapy(&format!(
        r#"for i in range(1, 21):
    h = '10.77.1.%d' % i
    sendp(Ether(dst=mac) / IP(src='{SCANNER}', dst=h) / TCP(sport=41000 + i, dport=22, flags='S'), iface=iface)
    sendp(Ether(dst=mac) / IP(src=h, dst='{SCANNER}') / TCP(sport=22, dport=41000 + i, flags='SA'), iface=iface)
    sendp(Ether(dst=mac) / IP(src='{ALLOWED}', dst=h) / TCP(sport=43000 + i, dport=23, flags='S'), iface=iface)
    for f in fragment(IP(src=h, dst='{ALLOWED}', id=3000 + i) / TCP(sport=23, dport=43000 + i, flags='SA'), fragsize=8):
        sendp(Ether(dst=mac) / f, iface=iface)
    h6 = 'fd77:1::%d' % i
    sendp(Ether(dst=mac) / IPv6(src='{SCANNER6}', dst=h6) / TCP(sport=44000 + i, dport=24, flags='S'), iface=iface)
    sendp(Ether(dst=mac) / IPv6(src=h6, dst='{SCANNER6}') / TCP(sport=24, dport=44000 + i, flags='SA'), iface=iface)
    sendp(Ether(dst=mac) / IP(src='10.99.0.7', dst=h) / TCP(sport=45000 + i, dport=25, flags='S'), iface=iface)
    sendp(Ether(dst=mac, type=0x9100) / Dot1Q(vlan=7, type=0x0800) / IP(src=h, dst='10.99.0.7') / TCP(sport=25, dport=45000 + i, flags='SA'), iface=iface)
    sendp(Ether(dst=mac) / IP(src='10.99.0.8', dst=h) / TCP(sport=46000 + i, dport=26, flags='S'), iface=iface)
    sendp(Ether(dst=mac) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src=h, dst='10.99.0.8') / TCP(sport=26, dport=46000 + i, flags='SA'), iface=iface)
    far = '10.78.0.%d' % i
    sendp(Ether(dst=mac) / IP(src='{CLIENT}', dst=far) / TCP(sport=42000 + i, dport=443, flags='S'), iface=iface)
    sendp(Ether(dst=mac) / IP(src=far, dst='{CLIENT}') / TCP(sport=443, dport=42000 + i, flags='SA'), iface=iface)
"#
    ));
    for (src, dport) in [
        (SCANNER, 22),
        (ALLOWED, 23),
        (SCANNER6, 24),
        ("10.99.0.7", 25),
        ("10.99.0.8", 26),
    ] {
        let sweep = agent.wait_for(8, |e| {
            e["event"] == "scan" && e["kind"] == "sweep" && e["src"] == src
        });
        assert_eq!(sweep["dport"], dport, "{sweep}");
    }
    // Past the answer wait of the client's last attempt: none of them made a sweep.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let events = agent.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "scan" && e["src"] == CLIENT),
        "answered attempts were taken for a sweep: {events:?}"
    );
    assert_eq!(agent.stop(), Some(0));
}

/// Addresses added while the agent runs are named in its filter as soon as the kernel
/// tells of them, not at its next look a second later: a sweeper that forges answers
/// "from" addresses the host has just taken (a router advertisement it sent, say), right
/// after they come, is reported.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn answers_forged_from_addresses_just_added_hide_no_sweep() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, agent) = many_addresses(&lab, dir.path());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let batch = dir.path().join("addresses");
    let lines: String = (1..=40)
        .map(|i| format!("addr add 10.77.3.{i}/24 dev {}\n", lab.vif))
        .collect();
    std::fs::write(&batch, lines).expect("write the address batch");
    // scapy is loaded and the packets built first; then the addresses are added and
    // swept at once, in one send.
    lab.scapy(&format!(
        r#"import subprocess
sweep = []
for i in range(1, 41):
    h = '10.77.3.%d' % i
    sweep.append(Ether(dst=mac) / IP(src='10.99.0.9', dst=h) / TCP(sport=47000 + i, dport=27, flags='S'))
    sweep.append(Ether(dst=mac) / IP(src=h, dst='10.99.0.9') / TCP(sport=27, dport=47000 + i, flags='SA'))
subprocess.run(['ip', '-n', '{victim}', '-batch', '{batch}'], check=True)
sendp(sweep, iface=iface, inter=0.002)
"#,
        victim = lab.victim,
        batch = batch.display(),
    ));
    let sweep = agent.wait_for(8, |e| {
        e["event"] == "scan" && e["kind"] == "sweep" && e["src"] == "10.99.0.9"
    });
    assert_eq!(sweep["dport"], 27, "{sweep}");
    assert_eq!(agent.stop(), Some(0));
}
