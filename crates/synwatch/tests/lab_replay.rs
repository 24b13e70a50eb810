//! End to end with a real scanner: two network namespaces, nmap -sS over IPv4 and IPv6
//! from one address, 20 curl requests from another, tcpdump recording on the victim.
//! The replay must report the scanners, and only the scanners, and log every attempt once;
//! tcpdump's own reading of the capture is the peer it is checked against.
//!
//! Needs root (network namespaces); `make test` runs it as root. Without root it fails
//! and says so rather than passing.

mod common;

use std::process::Command;

use common::{check_lab_events, replay_lab_capture, repo_root, require_root};

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn replay_of_a_real_nmap_scan_reports_the_scanners_only() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("lab.pcap");
    let status = Command::new(repo_root().join("scripts/lab-capture.sh"))
        .arg(&capture)
        .args(["1-100", "20"])
        .status()
        .expect("run scripts/lab-capture.sh");
    assert!(status.success(), "the lab capture failed");

    check_lab_events(&replay_lab_capture(&capture), &capture);
}
