//! `synwatch run --source sockets` against a real connect scan: the victim serves five
//! ports (accepting and closing, as servers do), nmap -sT scans them and closed ports
//! around them from one address, then from an IPv6 address. The agent, reading only the
//! socket table, reports each source's connections and the scan, and bans it with
//! nftables; another address still connects.
//!
//! Needs root (network namespaces, nftables); `make test` runs it as root.

#[expect(dead_code, reason = "this test uses part of the shared lab")]
mod lab;

use std::process::{Child, Command, Stdio};

use lab::{Agent, CLIENT, Lab, SCANNER, SCANNER6, VICTIM, VICTIM6};
use serde_json::Value;

const OPEN: [u16; 5] = [2001, 2002, 2003, 2004, 2005];

/// Five dual-stack listeners in the victim namespace that accept and close.
struct Servers(Child);

impl Servers {
    fn start(lab: &Lab) -> Self {
        let script = format!(
            "import socket, selectors
sel = selectors.DefaultSelector()
for port in {OPEN:?}:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port))
    s.listen(128)
    sel.register(s, selectors.EVENT_READ)
print('ready', flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.close()
"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.victim, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the servers");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the servers' readiness");
        assert_eq!(line.trim(), "ready", "the servers did not start");
        Servers(child)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nmap's connect scan (no raw sockets) from `src` over the five open ports and ten
/// closed ones.
fn connect_scan(lab: &Lab, src: &str, dst: &str) {
    let mut args = vec![
        "nmap",
        "-n",
        "-Pn",
        "-sT",
        "-T4",
        "-p",
        "2000-2014",
        "-S",
        src,
    ];
    if dst.contains(':') {
        args.push("-6");
    }
    args.push(dst);
    let out = lab.in_attacker(&args);
    assert!(
        out.status.success(),
        "nmap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("/tcp") && l.contains(" open "))
            .count(),
        OPEN.len(),
        "nmap should find the five open ports: {text}"
    );
}

fn check_detected_and_blocked(agent: &Agent, src: &str) {
    let scan = agent.wait_for(10, |e| e["event"] == "scan" && e["src"] == src);
    let ports: Vec<u64> = scan["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p.as_u64().expect("port"))
        .collect();
    assert_eq!(ports.len(), 4, "{scan}");
    assert!(
        ports
            .iter()
            .all(|p| OPEN.contains(&u16::try_from(*p).expect("port"))),
        "only open ports make sockets: {scan}"
    );
    agent.wait_for(5, |e| {
        e["event"] == "block" && e["src"] == src && e["backend"] == "nftables"
    });
    // Each accepted connection is one event; the closed ports made no socket to see.
    let events = agent.events();
    let connections: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "connection" && e["src"] == src)
        .collect();
    assert_eq!(connections.len(), OPEN.len(), "{connections:#?}");
    for c in &connections {
        let dport = u16::try_from(c["dport"].as_u64().expect("dport")).expect("port");
        assert!(OPEN.contains(&dport), "{c}");
        assert_eq!(c["direction"], "in", "{c}");
    }
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_connect_scan_is_detected_and_blocked_from_the_socket_table() {
    let lab = Lab::new();
    let _servers = Servers::start(&lab);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8 path");
    let agent = Agent::start(
        &lab,
        dir.path(),
        "sockets",
        &[
            "--source",
            "sockets",
            "--poll",
            "500ms",
            "--block",
            "nftables",
            "--state-dir",
            state,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let log = agent.log();
    assert!(
        log.contains("watching the TCP socket table (netlink sock_diag every 500 ms, and sock_diag destroy events)"),
        "{log}"
    );
    assert!(
        log.contains("--iface is ignored with --source sockets"),
        "{log}"
    );

    assert!(lab.connects(CLIENT, VICTIM), "the client connects before");
    connect_scan(&lab, SCANNER, VICTIM);
    check_detected_and_blocked(&agent, SCANNER);
    assert!(
        !lab.connects(SCANNER, VICTIM),
        "the banned scanner still connects"
    );
    assert!(lab.connects(CLIENT, VICTIM), "the client is blocked too");

    connect_scan(&lab, SCANNER6, VICTIM6);
    check_detected_and_blocked(&agent, SCANNER6);
    assert!(
        !lab.connects(SCANNER6, VICTIM6),
        "the banned IPv6 scanner still connects"
    );

    // The client's requests are connections too, one each, and no scan.
    let events = agent.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connection" && e["src"] == CLIENT && e["dport"] == 8080),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "scan" && e["src"] == CLIENT)
    );
    let log_path = agent.err.clone();
    assert_eq!(agent.stop(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(log.contains("socket table: "), "{log}");
    assert!(log.contains("scans: 2"), "{log}");
}
