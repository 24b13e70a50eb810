//! `synwatch inventory` over captures the test builds: in/out/else, TCP and UDP, PORT and
//! INTERNET folding, UDP service ports, every output (JSON, CSV, table, the tree, the
//! nftables draft, which `nft -c -f` must accept), the key cap and bad input.
//!
//! Live, it runs in the network-namespace lab while a client makes requests and nmap
//! scans.
//!
//! The draft check and the lab need root (nft talks to the kernel even in check mode);
//! `make test` runs as root.

#[expect(dead_code, reason = "this test uses part of the shared lab")]
mod lab;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use synwatch_testkit::packet::{ACK, FIN, RST, SYN, ethernet, tcp_ip, udp_v4, udp_v6};
use synwatch_testkit::pcap::PcapWriter;

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * SEC;
const LOCAL: [&str; 4] = ["--local", "192.0.2.1", "--local", "2001:db8::1"];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[derive(Default)]
struct Capture {
    frames: Vec<(i64, Vec<u8>)>,
    at: i64,
}

impl Capture {
    fn push(&mut self, ip_packet: Vec<u8>) {
        self.at += SEC / 100;
        self.frames.push((T0 + self.at, ethernet(&ip_packet)));
    }

    fn tcp(&mut self, src: &str, sport: u16, dst: &str, dport: u16, flags: u8, len: usize) {
        self.push(tcp_ip(ip(src), sport, ip(dst), dport, flags, len));
    }

    /// A whole connection: handshake, a request and an answer, FIN both ways (7 packets).
    fn session(&mut self, c: (&str, u16), s: (&str, u16)) {
        self.tcp(c.0, c.1, s.0, s.1, SYN, 0);
        self.tcp(s.0, s.1, c.0, c.1, SYN | ACK, 0);
        self.tcp(c.0, c.1, s.0, s.1, ACK, 0);
        self.tcp(c.0, c.1, s.0, s.1, ACK, 100);
        self.tcp(s.0, s.1, c.0, c.1, ACK, 1000);
        self.tcp(c.0, c.1, s.0, s.1, FIN | ACK, 0);
        self.tcp(s.0, s.1, c.0, c.1, FIN | ACK, 0);
    }

    fn udp4(&mut self, src: &str, sport: u16, dst: &str, dport: u16) {
        let (s, d) = (src.parse().expect("v4"), dst.parse().expect("v4"));
        self.push(udp_v4(s, sport, d, dport, 40));
    }

    fn write(&self, path: &Path) {
        let file = std::fs::File::create(path).expect("create capture");
        let mut w = PcapWriter::new(file, 1, false).expect("pcap header");
        for (ts, frame) in &self.frames {
            w.write_packet(*ts, frame).expect("write packet");
        }
        w.finish().expect("flush capture");
    }
}

/// The scenario: this host is 192.0.2.1 and 2001:db8::1.
fn scenario() -> Capture {
    let mut c = Capture::default();
    // Two SSH logins from the Internet, one database client on a private address.
    c.session(("8.8.8.8", 40000), ("192.0.2.1", 22));
    c.session(("1.1.1.1", 40001), ("192.0.2.1", 22));
    c.session(("10.1.1.5", 50500), ("192.0.2.1", 5432));
    // A probe of a closed port: answered only by a RST.
    c.tcp("203.0.113.9", 61000, "192.0.2.1", 23, SYN, 0);
    c.tcp("192.0.2.1", 23, "203.0.113.9", 61000, RST | ACK, 0);
    // This host out: HTTPS to the Internet, DNS to a private resolver.
    c.session(("192.0.2.1", 50000), ("9.9.9.9", 443));
    c.udp4("192.0.2.1", 53124, "10.59.184.10", 53);
    c.udp4("10.59.184.10", 53, "192.0.2.1", 53124);
    // A UDP service on an unprivileged port.
    c.udp4("8.8.4.4", 40000, "192.0.2.1", 56456);
    // Between other hosts.
    c.udp4("192.168.200.214", 5353, "224.0.0.251", 5353);
    c.session(("192.168.1.5", 41000), ("192.168.1.9", 80));
    // IPv6: HTTPS in from the Internet, and NTP out.
    c.session(("2001:4860::8888", 40002), ("2001:db8::1", 443));
    c.push(udp_v6(
        "2001:db8::1".parse().expect("v6"),
        123,
        "2606:4700::6810:1".parse().expect("v6"),
        123,
        48,
    ));
    c
}

fn synwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(args)
        .output()
        .expect("run synwatch")
}

fn scenario_file(dir: &Path) -> PathBuf {
    let path = dir.join("scenario.pcap");
    scenario().write(&path);
    path
}

fn inventory(path: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["inventory", "--pcap", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(&LOCAL);
    args.extend_from_slice(extra);
    synwatch(&args)
}

/// Each flow as `direction/proto/SRC-SPORT-DST-DPORT connections answered packets`.
fn flows(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "inventory failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let sport = match &v["sport"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!(
                "{}/{}/{}-{}-{}-{} {} {} {}",
                v["direction"].as_str().expect("direction"),
                v["proto"].as_str().expect("proto"),
                v["src"].as_str().expect("src"),
                sport,
                v["dst"].as_str().expect("dst"),
                v["dport"],
                v["connections"],
                v["answered"],
                v["packets"]
            )
        })
        .collect()
}

const EXPECTED: [&str; 10] = [
    "in/tcp/INTERNET-PORT-192.0.2.1-22 2 2 14",
    "in/tcp/10.1.1.5-PORT-192.0.2.1-5432 1 1 7",
    "in/tcp/INTERNET-PORT-2001:db8::1-443 1 1 7",
    "out/tcp/192.0.2.1-PORT-INTERNET-443 1 1 7",
    "else/tcp/192.168.1.5-PORT-192.168.1.9-80 1 1 7",
    "in/tcp/INTERNET-PORT-192.0.2.1-23 1 0 2",
    "out/udp/192.0.2.1-PORT-10.59.184.10-53 1 1 2",
    "in/udp/INTERNET-40000-192.0.2.1-56456 1 0 1",
    "out/udp/2001:db8::1-PORT-INTERNET-123 1 0 1",
    "else/udp/192.168.200.214-5353-224.0.0.251-5353 1 0 1",
];

#[test]
fn flows_are_classified_and_folded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let out = inventory(&path, &["--format", "json"]);
    assert_eq!(flows(&out), EXPECTED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("49 packets (44 tcp, 5 udp, 0 undecodable) in 10 flows"),
        "{stderr}"
    );
    // First and last seen, bytes at the IP layer.
    let first: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .next()
            .expect("a first line"),
    )
    .expect("JSON");
    assert_eq!(first["first_seen"], "2023-11-14T22:13:20.010000Z");
    assert_eq!(first["last_seen"], "2023-11-14T22:13:20.140000Z");
    assert_eq!(first["bytes"], 2 * (5 * 40 + 140 + 1040));
}

#[test]
fn udp_service_ports_no_else_internal_and_keep_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let service = flows(&inventory(
        &path,
        &[
            "--format",
            "json",
            "--udp-service-port",
            "56456",
            "--no-else",
        ],
    ));
    assert!(
        service.contains(&"in/udp/INTERNET-PORT-192.0.2.1-56456 1 0 1".to_owned()),
        "{service:#?}"
    );
    assert!(
        !service.iter().any(|f| f.starts_with("else/")),
        "{service:#?}"
    );
    assert_eq!(service.len(), EXPECTED.len() - 2);

    let internal = flows(&inventory(
        &path,
        &["--format", "json", "--internal", "8.8.8.0/24"],
    ));
    assert!(
        internal.contains(&"in/tcp/8.8.8.8-PORT-192.0.2.1-22 1 1 7".to_owned())
            && internal.contains(&"in/tcp/INTERNET-PORT-192.0.2.1-22 1 1 7".to_owned()),
        "{internal:#?}"
    );

    let kept = flows(&inventory(&path, &["--format", "json", "--keep-addresses"]));
    assert!(!kept.iter().any(|f| f.contains("INTERNET")), "{kept:#?}");
    assert!(
        kept.contains(&"out/tcp/192.0.2.1-PORT-9.9.9.9-443 1 1 7".to_owned()),
        "{kept:#?}"
    );
}

/// The first columns of the busiest flow, the SSH logins.
const SSH_ROW: [&str; 9] = [
    "in",
    "tcp",
    "INTERNET",
    "PORT",
    "192.0.2.1",
    "22",
    "2",
    "2",
    "14",
];

#[test]
fn csv_and_table_hold_the_same_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let csv = inventory(&path, &["--format", "csv"]);
    assert!(csv.status.success());
    let text = String::from_utf8_lossy(&csv.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "direction,proto,src,sport,dst,dport,connections,answered,packets,bytes,first_seen,last_seen"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), EXPECTED.len());
    assert!(rows.iter().all(|r| r.len() == 12), "{rows:?}");
    assert_eq!(rows[0][..9], SSH_ROW);

    let table = inventory(&path, &["--format", "table"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["DIR", "PROTO", "SRC", "SPORT", "DST", "DPORT"]
    );
    let first: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(first[..9], SSH_ROW);
    assert_eq!(text.lines().count(), EXPECTED.len() + 1);
}

#[test]
fn the_tree_has_one_file_per_flow_with_its_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let tree = dir.path().join("tree");
    let out = inventory(
        &path,
        &["--format", "json", "--tree", tree.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = BTreeSet::new();
    for class in ["in", "out", "else"] {
        for proto in ["tcp", "udp"] {
            let sub = tree.join(class).join(proto);
            assert!(sub.is_dir(), "{} is missing", sub.display());
            for entry in std::fs::read_dir(&sub).expect("read the tree") {
                let name = entry.expect("entry").file_name();
                files.insert(format!("{class}/{proto}/{}", name.to_string_lossy()));
            }
        }
    }
    let expected: BTreeSet<String> = EXPECTED
        .iter()
        .map(|f| f.split(' ').next().expect("name").to_owned())
        .collect();
    assert_eq!(files, expected);
    let ssh = std::fs::read_to_string(tree.join("in/tcp/INTERNET-PORT-192.0.2.1-22"))
        .expect("the SSH flow's file");
    assert!(
        ssh.starts_with("connections 2\nanswered 2\npackets 14\nbytes 2760\nfirst_seen 2023-11-14T22:13:20.010000Z\n"),
        "{ssh}"
    );
}

#[test]
#[ignore = "needs root (nft -c talks to the kernel); make test runs it"]
fn the_nft_draft_accepts_what_was_seen_and_passes_nft_check() {
    lab::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let out = inventory(&path, &["--nft-draft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let draft = String::from_utf8_lossy(&out.stdout).into_owned();
    let rules: Vec<String> = draft
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("dport"))
        .map(|l| l.split(" comment").next().expect("rule").to_owned())
        .collect();
    assert_eq!(
        rules,
        [
            // input
            "tcp dport 22 accept",
            "tcp dport 443 accept",
            "ip saddr 10.1.1.5 tcp dport 5432 accept",
            "udp dport 56456 accept",
            // output
            "tcp dport 443 accept",
            "ip daddr 10.59.184.10 udp dport 53 accept",
            "udp dport 123 accept",
        ],
        "{draft}"
    );
    assert!(draft.contains("policy drop"), "{draft}");
    let file = dir.path().join("draft.nft");
    std::fs::write(&file, &draft).expect("write the draft");
    let check = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("nft is installed by make deps");
    assert!(
        check.status.success(),
        "nft -c -f rejected the draft: {}\n{draft}",
        String::from_utf8_lossy(&check.stderr)
    );
    // To a file, the flows still go to stdout.
    let out = inventory(
        &path,
        &[
            "--format",
            "json",
            "--nft-draft",
            file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(flows(&out), EXPECTED);
    assert_eq!(std::fs::read_to_string(&file).expect("draft"), draft);
}

#[test]
fn the_key_cap_warns_and_counts_what_it_left_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    let out = inventory(&path, &["--format", "json", "--max-keys", "3"]);
    let listed = flows(&out);
    assert_eq!(listed.len(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --max-keys 3 reached at"),
        "{stderr}"
    );
    // 49 packets and 11 connections in all; the first three keys (the two SSH sessions,
    // the database session and the probe: 23 packets, 4 connections) are kept.
    assert!(
        stderr.contains("--max-keys 3 reached: 7 connections, 26 packets"),
        "{stderr}"
    );
}

#[test]
fn bad_input_is_reported_and_what_was_read_still_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = scenario_file(dir.path());
    // Cut the capture in the middle of its last record.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.truncate(bytes.len() - 10);
    let cut = dir.path().join("cut.pcap");
    std::fs::File::create(&cut)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write");
    let out = inventory(&cut, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut.pcap"), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), EXPECTED.len() - 1, "{text}");

    let missing = synwatch(&[
        "inventory",
        "--pcap",
        "/nonexistent.pcap",
        "--format",
        "json",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.pcap"));

    for bad in [
        vec!["--local", "not-an-address"],
        vec!["--internal", "10.0.0.0/99"],
        vec!["--max-keys", "0"],
    ] {
        let out = inventory(&path, &bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{bad:?}: {stderr}");
    }
}

#[test]
fn fragmented_datagrams_are_flows_of_their_own() {
    // A 3,000-byte DNS answer in three fragments, and a SYN cut into 8-byte fragments
    // (nmap -f), not answered: counted per packet, the SYN made no flow at all (its
    // fragments were "undecodable"). A datagram is one packet of its flow, counted once
    // its transport header is whole (its bytes as far as that fragment).
    use synwatch_testkit::packet::{Ipv4, Tcp, Udp};
    let (client, server) = (
        "192.0.2.1".parse().expect("v4"),
        "10.59.184.10".parse().expect("v4"),
    );
    let mut cap = Capture::default();
    let answer = Udp::new(53, 40_000).payload_len(3_000);
    let answer = answer.datagram_v4(server, client);
    for piece in Ipv4::new(server, client)
        .id(7)
        .fragments(17, &answer, 1_480)
    {
        cap.push(piece);
    }
    let probe = "203.0.113.5".parse().expect("v4");
    let syn = Tcp::new(45_000, 22, SYN).segment_v4(probe, client);
    for piece in Ipv4::new(probe, client).id(8).fragments(6, &syn, 8) {
        cap.push(piece);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fragments.pcap");
    cap.write(&path);
    let out = inventory(&path, &["--format", "json", "--keep-addresses"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let udp = rows
        .iter()
        .find(|r| r["proto"] == "udp")
        .expect("the DNS flow");
    assert_eq!(udp["packets"], 1, "{udp}");
    assert_eq!(udp["bytes"], 1_500, "{udp}");
    let tcp = rows
        .iter()
        .find(|r| r["proto"] == "tcp")
        .expect("the probe's flow");
    assert_eq!(
        (tcp["dport"].as_u64(), tcp["connections"].as_u64()),
        (Some(22), Some(1)),
        "{tcp}"
    );
    assert_eq!(tcp["answered"], 0, "{tcp}");
}

#[test]
fn no_nft_draft_is_written_from_input_not_read_whole() {
    // A draft drops by default: drawn from an unreadable file it dropped everything new
    // (to stdout, where `| nft -f -` loads it, or to its file).
    let dir = tempfile::tempdir().expect("tempdir");
    let good = scenario_file(dir.path());
    let text = dir.path().join("notes.pcap");
    std::fs::write(&text, "not a capture\n").expect("write");
    let mut bytes = std::fs::read(&good).expect("read");
    bytes.truncate(bytes.len() - 10);
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes).expect("write");
    let missing = dir.path().join("missing.pcap");
    for input in [&missing, &text, &cut] {
        let file = dir.path().join("draft.nft");
        for draft in ["-", file.to_str().expect("utf-8")] {
            let out = inventory(input, &["--nft-draft", draft]);
            assert_eq!(out.status.code(), Some(2), "{input:?} {draft}");
            assert!(out.stdout.is_empty(), "{input:?} {draft}: stdout not empty");
            assert!(!file.exists(), "{input:?}: a draft was written");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let name = input.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(stderr.contains(name), "{stderr}");
        }
    }
    // What could not be read at all is one line, and nothing on stdout (not even the
    // CSV header).
    for input in [&missing, &text] {
        let out = inventory(input, &["--format", "csv"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty(), "{input:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_capture_of_a_link_type_it_cannot_decode_is_named_and_exits_2_as_in_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wifi = dir.path().join("wifi.pcap");
    let file = std::fs::File::create(&wifi).expect("create capture");
    let mut w = PcapWriter::new(file, 105, false).expect("pcap header");
    for i in 0..4 {
        w.write_packet(T0 + i, &[0u8; 40]).expect("write packet");
    }
    w.finish().expect("flush capture");
    let good = scenario_file(dir.path());
    let mut args = vec![
        "inventory",
        "--pcap",
        wifi.to_str().expect("utf-8"),
        good.to_str().expect("utf-8"),
        "--format",
        "json",
    ];
    args.extend(LOCAL);
    let out = synwatch(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("wifi.pcap: link type 105 not supported"))
        .collect();
    assert_eq!(named.len(), 1, "{stderr}");
    // The other file's flows are all there.
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), EXPECTED.len(), "{text}");
}

/// `synwatch inventory` of the lab's victim interface for `duration`, as JSON.
fn live_inventory(
    lab: &lab::Lab,
    duration: &str,
    out: std::process::Stdio,
    err: &Path,
) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.victim, env!("CARGO_BIN_EXE_synwatch")])
        .args([
            "inventory",
            "--iface",
            &lab.vif,
            "--duration",
            duration,
            "--format",
            "json",
        ])
        .stdout(out)
        .stderr(std::fs::File::create(err).expect("stderr file"))
        .spawn()
        .expect("start synwatch inventory")
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn live_inventory_sees_the_lab_traffic() {
    let lab = lab::Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("flows.jsonl"), dir.path().join("log"));
    let stdout = std::fs::File::create(&out).expect("stdout file");
    let mut child = live_inventory(&lab, "4s", stdout.into(), &err);
    let deadline = lab::Deadline::after(10);
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("inventory of")
    {
        assert!(!deadline.passed(), "inventory did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..3 {
        assert!(lab.connects(lab::CLIENT, lab::VICTIM));
    }
    lab.scan(lab::SCANNER, lab::VICTIM, "20-25");
    let status = child.wait().expect("wait for the inventory");
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "{log}");
    let listed = flows(&Output {
        status,
        stdout: std::fs::read(&out).expect("flows"),
        stderr: Vec::new(),
    });
    let http: Vec<&String> = listed
        .iter()
        .filter(|f| f.starts_with("in/tcp/10.77.0.3-PORT-10.77.0.1-8080 3 3 "))
        .collect();
    assert_eq!(http.len(), 1, "{listed:#?}\n{log}");
    for port in 20..=25 {
        let probe = format!("in/tcp/10.77.0.2-PORT-10.77.0.1-{port} 1 0 ");
        assert!(
            listed.iter().any(|f| f.starts_with(&probe)),
            "{probe} missing: {listed:#?}"
        );
    }
}

/// An interface deleted and made again under its name while a live inventory reads it:
/// the handle on the old one reads nothing more, so the inventory says so and exits 1
/// (the flows printed cover only the traffic before) instead of a silent, partial 0.
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_live_inventory_whose_interface_is_made_again_says_it_is_incomplete_and_exits_1() {
    let lab = lab::Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("log");
    let mut child = live_inventory(&lab, "20s", std::process::Stdio::null(), &err);
    lab::eventually(10, "the inventory starts", || {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("inventory of")
    });
    lab.delete_link();
    lab.create_link();
    let deadline = lab::Deadline::after(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the inventory") {
            break status;
        }
        if deadline.passed() {
            let _ = child.kill();
            panic!("the inventory went on reading a deleted interface");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{log}");
    // libpcap may notice the deletion itself ("failed: ... disappeared") or not (the
    // inventory's own check of the interface's index then does).
    assert!(log.contains(&format!("capture on {} ", lab.vif)), "{log}");
    assert!(log.contains("these flows are incomplete"), "{log}");
}

/// A FIFO `capture.pcap` in `dir`: a capture a command waits on until it is written.
fn fifo_in(dir: &std::path::Path) -> std::path::PathBuf {
    let fifo = dir.join("capture.pcap");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    fifo
}

/// `synwatch inventory --iface lo --duration DURATION --format json`, once its banner
/// (its captures open) is on stderr; stdout piped.
fn live_inventory_of_lo(duration: &str) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args([
            "inventory",
            "--iface",
            "lo",
            "--duration",
            duration,
            "--format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run synwatch inventory");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("the banner");
    assert!(line.contains("inventory of lo"), "{line}");
    child
}

/// A live inventory needs CAP_NET_RAW only to open its captures: once they are open it
/// holds no capability at all.
#[test]
#[ignore = "needs root (a live capture); make test runs it"]
fn a_live_inventory_holds_no_capability_once_its_captures_are_open() {
    lab::require_root();
    // The banner comes after the captures are open and the capabilities dropped.
    let mut child = live_inventory_of_lo("4s");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    for set in ["CapEff:", "CapPrm:", "CapAmb:", "CapBnd:"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(set))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{set} missing: {status}"));
        assert_eq!(value, "0000000000000000", "{set} still held");
    }
    assert!(child.wait().expect("wait").success());
}

/// `replay` and `inventory --pcap` read files and write stdout: started as root, they
/// give up every capability but reading files before they read a byte of a capture.
/// The capture is a FIFO, so the command waits on it while its sets are looked at.
#[test]
#[ignore = "needs root (to start with capabilities); make test runs it"]
fn replay_and_a_capture_inventory_hold_only_file_access_while_reading() {
    lab::require_root();
    const DAC_OVERRIDE: u64 = 1 << 1;
    const DAC_READ_SEARCH: u64 = 1 << 2;
    for (args, keeps) in [
        (&["replay"][..], DAC_READ_SEARCH),
        (&["inventory", "--pcap"][..], DAC_READ_SEARCH | DAC_OVERRIDE),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = fifo_in(dir.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(args)
            .arg(&fifo)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run synwatch");
        let status =
            || std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let set = |status: &str, name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        // Waiting for a writer on the FIFO: by then it has dropped what it drops.
        let waiting = lab::Deadline::after(10);
        while set(&status(), "CapBnd:") != Some(0) {
            assert!(!waiting.passed(), "{args:?}: never dropped: {}", status());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = status();
        for (name, want) in [
            ("CapEff:", keeps),
            ("CapPrm:", keeps),
            ("CapInh:", 0),
            ("CapAmb:", 0),
        ] {
            assert_eq!(set(&status, name), Some(want), "{args:?} {name}: {status}");
        }
        // The writer comes and goes without a byte: an empty capture, a usage error.
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the FIFO"),
        );
        assert_eq!(child.wait().expect("wait").code(), Some(2), "{args:?}");
    }
}

/// Sends `signal` to a process.
fn signal(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {signal}");
}

/// `pkill -USR1 -x synwatch` asks the agent for its status and reaches every synwatch
/// process: a live inventory and a replay of a pipe take SIGUSR1 and SIGUSR2 and run on
/// to their normal end.
#[test]
#[ignore = "needs root (a live capture); make test runs it"]
fn sigusr1_and_sigusr2_end_neither_a_live_inventory_nor_a_replay_of_a_pipe() {
    lab::require_root();
    let child = live_inventory_of_lo("3s");
    signal(&child, "-USR1");
    signal(&child, "-USR2");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);

    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo_in(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["replay", "--format", "json", "--local", "10.199.0.1"])
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run synwatch replay");
    // It waits on the FIFO (opening it blocks until a writer comes).
    std::thread::sleep(std::time::Duration::from_millis(300));
    signal(&child, "-USR1");
    signal(&child, "-USR2");
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/lab-nmap-scan.pcap");
    std::fs::write(&fifo, std::fs::read(sample).expect("the sample capture"))
        .expect("write the FIFO");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"event\":\"scan\""), "{text}");
}
