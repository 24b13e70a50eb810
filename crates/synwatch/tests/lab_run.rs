//! The live agent against a real scanner: `synwatch run` on the victim's interface in the
//! network-namespace lab while nmap -sS scans it over IPv4 and IPv6 and a client makes 20
//! curl requests; tcpdump records the same traffic. The agent's events must be exactly
//! what the traffic holds (checked against tcpdump's reading of the capture) and what
//! replaying that capture gives (but for timestamps, which each capture socket takes
//! itself); SIGTERM stops it with a summary and exit 0.
//!
//! Needs root (network namespaces, CAP_NET_RAW); `make test` runs it as root.

mod common;

use std::process::Command;

use common::{check_lab_events, parse_events, replay_lab_capture, repo_root, require_root};

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn live_agent_reports_a_real_scan_like_its_replay() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("lab.pcap");
    let events = dir.path().join("events.jsonl");
    let log = dir.path().join("agent.log");
    let agent = format!(
        "{} run --iface {{iface}} --format json --source pcap --block none",
        env!("CARGO_BIN_EXE_synwatch")
    );
    let status = Command::new(repo_root().join("scripts/lab-capture.sh"))
        .arg(&capture)
        .args(["1-100", "20"])
        .env("LAB_AGENT", agent)
        .env("LAB_AGENT_OUT", &events)
        .env("LAB_AGENT_ERR", &log)
        .env("LAB_AGENT_METRICS", "http://127.0.0.1:9809/metrics")
        .status()
        .expect("run scripts/lab-capture.sh");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the lab run failed: {log_text}");
    let exit = std::fs::read_to_string(events.with_extension("jsonl.exit")).expect("exit code");
    assert_eq!(
        exit.trim(),
        "0",
        "SIGTERM ends the agent cleanly: {log_text}"
    );
    assert!(
        log_text.contains("synwatch: stopped."),
        "a summary at the end: {log_text}"
    );
    assert!(log_text.contains("0 dropped by the kernel"), "{log_text}");

    let live = parse_events(&std::fs::read(&events).expect("events"));
    check_lab_events(&live, &capture);

    // The metrics agree with the events.
    let page = std::fs::read_to_string(events.with_extension("jsonl.metrics")).expect("metrics");
    let value = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from:\n{page}"))
    };
    let connections = live.iter().filter(|e| e["event"] == "connection").count() as u64;
    let scans = live.iter().filter(|e| e["event"] == "scan").count() as u64;
    assert_eq!(
        value("synwatch_new_connections_total{direction=\"in\"}"),
        connections
    );
    assert_eq!(
        value("synwatch_new_connections_total{direction=\"out\"}"),
        0
    );
    assert_eq!(value("synwatch_port_scans_total"), scans);
    assert_eq!(value("synwatch_events_suppressed_total"), 0);
    assert_eq!(value("synwatch_tracked_sources"), 3);
    let iface = log_text
        .split("watching ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("interface in the banner");
    assert!(value(&format!("synwatch_packets_total{{interface=\"{iface}\"}}")) >= connections);
    assert_eq!(
        value(&format!(
            "synwatch_capture_drops_total{{interface=\"{iface}\"}}"
        )),
        0
    );

    // The same traffic replayed gives the same events (the agent's own addresses were
    // discovered from the interface; replay is told them).
    let replayed = replay_lab_capture(&capture);
    // Each capture socket stamps packets itself: times may differ by microseconds.
    let without_ts = |events: &[serde_json::Value]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.as_object_mut().expect("object").remove("ts");
                e
            })
            .collect()
    };
    assert_eq!(
        without_ts(&replayed),
        without_ts(&live),
        "live and replay agree"
    );
}
