//! The network-namespace lab shared by the lab tests: running scripts/lab-capture.sh and
//! checking a run's events against tcpdump's reading of the same capture.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this lab test creates network namespaces and must run as root (make test does)"
    );
}

/// tcpdump's view: (src, sport, dst, dport) of every SYN without ACK, in order.
pub fn tcpdump_syns(capture: &Path) -> Vec<(String, u16, String, u16)> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(capture)
        .output()
        .expect("tcpdump is installed by make deps");
    assert!(
        out.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut syns = Vec::new();
    for line in text.lines() {
        // "15:56:17.1 IP 10.199.0.2.51234 > 10.199.0.1.80: Flags [S], seq ..."
        let Some(flags) = line.split("Flags [").nth(1) else {
            continue;
        };
        let flags = flags.split(']').next().unwrap_or_default();
        if !flags.contains('S') || flags.contains('.') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let split = |s: &str| {
            let s = s.trim_end_matches(':');
            let (addr, port) = s.rsplit_once('.').expect("addr.port");
            (addr.to_owned(), port.parse::<u16>().expect("port"))
        };
        let (src, sport) = split(fields[2]);
        let (dst, dport) = split(fields[4]);
        syns.push((src, sport, dst, dport));
    }
    syns
}

/// `synwatch replay` of a lab capture, told the victim's addresses, as JSON events.
pub fn replay_lab_capture(capture: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args([
            "replay",
            "--local",
            "10.199.0.1",
            "--local",
            "fd99::1",
            "--format",
            "json",
        ])
        .arg(capture)
        .output()
        .expect("run synwatch replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_events(&out.stdout)
}

pub fn parse_events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The lab's traffic, as events must show it: every distinct SYN tcpdump saw logged once;
/// the client's 20 requests and no scan for it; every probed port of both scanners, and
/// one scan each with the first four ports they probed.
pub fn check_lab_events(events: &[Value], capture: &Path) {
    let syns = tcpdump_syns(capture);
    let unique: HashSet<_> = syns.iter().cloned().collect();
    let logged: Vec<(String, u16, String, u16)> = events
        .iter()
        .filter(|e| e["event"] == "connection")
        .map(|e| {
            (
                e["src"].as_str().expect("src").to_owned(),
                e["sport"].as_u64().expect("sport") as u16,
                e["dst"].as_str().expect("dst").to_owned(),
                e["dport"].as_u64().expect("dport") as u16,
            )
        })
        .collect();
    let logged_set: HashSet<_> = logged.iter().cloned().collect();
    assert_eq!(
        logged.len(),
        logged_set.len(),
        "an attempt was logged twice"
    );
    assert_eq!(
        logged_set, unique,
        "every distinct SYN tcpdump sees is logged once"
    );

    let from = |src: &str| logged.iter().filter(|c| c.0 == src).collect::<Vec<_>>();
    let client = from("10.199.0.3");
    assert_eq!(client.len(), 20, "each curl request is one attempt");
    assert!(client.iter().all(|c| c.3 == 8080));
    for scanner in ["10.199.0.2", "fd99::2"] {
        let ports: BTreeSet<u16> = from(scanner).iter().map(|c| c.3).collect();
        assert_eq!(
            ports,
            (1..=100).collect(),
            "{scanner}: every probed port logged"
        );
    }

    let scans: Vec<&Value> = events.iter().filter(|e| e["event"] == "scan").collect();
    let scanners: Vec<&str> = scans
        .iter()
        .map(|s| s["src"].as_str().expect("src"))
        .collect();
    assert_eq!(scanners, ["10.199.0.2", "fd99::2"], "{scans:?}");
    for scan in &scans {
        let ports = scan["ports"].as_array().expect("ports");
        assert_eq!(ports.len(), 4, "exactly max_ports + 1 ports: {scan}");
        // The reported ports are the first four the scanner probed, in that order.
        let src = scan["src"].as_str().expect("src");
        let first: Vec<u64> = from(src).iter().take(4).map(|c| u64::from(c.3)).collect();
        let reported: Vec<u64> = ports.iter().map(|p| p.as_u64().expect("port")).collect();
        assert_eq!(reported, first);
        assert_eq!(scan["probes"], serde_json::json!(["syn"]));
        assert_eq!(scan["allowlisted"], false);
    }
    assert_eq!(scans[0]["dst"], "10.199.0.1");
    assert_eq!(scans[1]["dst"], "fd99::1");
}
