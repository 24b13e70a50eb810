//! `make demo` (scripts/demo.sh) runs end to end: the scan is reported, the scanner is
//! banned and cut off while the client still connects, the metrics say so, the agent
//! stops cleanly, and nothing of the demo (namespaces, rules) is left behind.
//!
//! Needs root; `make test` runs it as root.

#[expect(dead_code, reason = "each test binary uses part of the helpers")]
mod common;

use std::process::Command;

use common::{repo_root, require_root};

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn demo_shows_a_scan_caught_and_banned_and_cleans_up() {
    require_root();
    let child = Command::new(repo_root().join("scripts/demo.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_synwatch"))
        .env("DEMO_PAUSE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/demo.sh");
    let tag = format!("swdemo{}", child.id());
    let out = child.wait_with_output().expect("demo output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the demo failed: {err}\n{text}");

    let after = |marker: &str| -> &str {
        let at = text
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"));
        &text[at..]
    };
    // Before the scan both addresses connect; after it only the client does.
    let before = after("== 3.");
    assert!(
        before.contains("10.97.0.2 -> 10.97.0.1:8080: page received"),
        "{text}"
    );
    let cut_off = after("== 7.");
    assert!(
        cut_off.contains("10.97.0.2 -> 10.97.0.1:8080: no answer"),
        "{text}"
    );
    assert!(
        cut_off.contains("10.97.0.3 -> 10.97.0.1:8080: page received"),
        "{text}"
    );
    let logged = after("== 5.");
    assert!(
        logged.contains("Port scan detected: 10.97.0.2 -> 10.97.0.1 on ports"),
        "{text}"
    );
    assert!(logged.contains("Blocked 10.97.0.2 until"), "{text}");
    let metrics = after("== 6.");
    assert!(metrics.contains("synwatch_port_scans_total 1"), "{text}");
    assert!(metrics.contains("synwatch_blocked_sources 1"), "{text}");
    assert!(cut_off.contains("10.97.0.2  ports"), "blocks list: {text}");
    let stopped = after("== 8.");
    assert!(stopped.contains("bans applied: 1"), "{text}");
    assert!(stopped.contains("no synwatch table left"), "{text}");

    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&tag),
        "the demo left its namespaces"
    );
    let agents = Command::new("pgrep")
        .args(["-f", &format!("--iface {tag}")])
        .output()
        .expect("pgrep");
    assert!(agents.stdout.is_empty(), "the demo left its agent running");
}
