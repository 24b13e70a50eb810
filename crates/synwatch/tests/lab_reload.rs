//! SIGHUP reloads the config file into the running agent without losing detector state:
//! a scanner's ports seen before the reload still count after it, under the new
//! threshold; a file that no longer validates is reported and the running configuration
//! kept.
//!
//! Needs root; `make test` runs it as root.

#[expect(dead_code, reason = "this test uses part of the shared lab")]
mod lab;

use lab::{Agent, Deadline, Lab, SCANNER, VICTIM};

fn wait_log(agent: &Agent, text: &str) {
    let deadline = Deadline::after(5);
    while !agent.log().contains(text) {
        assert!(
            !deadline.passed(),
            "no '{text}' in the log: {}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn sighup_reloads_thresholds_and_keeps_state() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("synwatch.toml");
    std::fs::write(&config, "max_ports = 10\n").expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let agent = Agent::start(
        &lab,
        dir.path(),
        "agent",
        &["--block", "none", "--config", config_arg],
    );

    // Five ports: no scan under max_ports = 10.
    lab.scan(SCANNER, VICTIM, "1-5");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!agent.events().iter().any(|e| e["event"] == "scan"));

    // A file that does not validate changes nothing.
    std::fs::write(&config, "max_ports = \"many\"\n").expect("write config");
    agent.signal("HUP");
    wait_log(&agent, "keeping the running configuration");

    // Lowered to 6 ports: two more make seven, a scan, and the report lists the ports
    // seen before the reload too.
    std::fs::write(&config, "max_ports = 6\n").expect("write config");
    agent.signal("HUP");
    wait_log(&agent, "a scan is more than 6 ports");
    lab.scan(SCANNER, VICTIM, "6-7");
    let scan = agent.wait_for(2, |e| e["event"] == "scan" && e["src"] == SCANNER);
    let mut ports: Vec<u64> = scan["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [1, 2, 3, 4, 5, 6, 7], "{scan}");
    assert_eq!(agent.stop(), Some(0));
}
