//! Address sweeps in the network-namespace lab, through libpcap: the victim holds thirty
//! addresses; a source probing port 22 (closed: answered by RST, not SYN-ACK) on all of
//! them is reported as a sweep and banned, while a client fetching a page from port 8080
//! of every one of them (answered) is not.
//!
//! Needs root; `make test` runs these as root.

mod lab;

use lab::{ALLOWED, Agent, CLIENT, HTTP_PORT, Lab, SCANNER, VICTIM, eventually};

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_sweep_of_the_hosts_addresses_is_reported_and_banned_a_monitoring_client_is_not() {
    let lab = Lab::new();
    let hosts: Vec<String> = (1..=30).map(|i| format!("10.77.1.{i}")).collect();
    for h in &hosts {
        let out = lab.in_victim(&["ip", "addr", "add", &format!("{h}/24"), "dev", &lab.vif]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = lab.in_attacker(&["ip", "route", "add", "10.77.1.0/24", "dev", &lab.aif]);
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let agent = Agent::start(
        &lab,
        dir.path(),
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
