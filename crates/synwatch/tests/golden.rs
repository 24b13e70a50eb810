//! Golden captures: the tests build each capture (every link type, VLAN/QinQ, IPv6
//! extension headers, malformed and truncated packets, pcapng with two interfaces), replay
//! it through the real binary, and compare the JSON events with `tests/golden/NAME.jsonl`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p synwatch --test golden` rewrites the expected files;
//! review the diff before committing it.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use synwatch_testkit::packet::{
    ACK, FIN, Ipv4, Ipv6, Ipv6Ext, PSH, RST, SYN, Tcp, URG, ethernet, ethernet_qinq, ethernet_vlan,
    loop_loopback, null_loopback, sll, sll_with, sll2, sll2_with, tcp_ip, udp_v4,
};
use synwatch_testkit::pcap::{PcapNgWriter, PcapWriter};

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * SEC;
const LOCAL_ARGS: [&str; 4] = ["--local", "192.0.2.1", "--local", "2001:db8::1"];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Timestamped link-layer frames of one capture.
type Frames = Vec<(i64, Vec<u8>)>;

/// One IP packet of the standard scenario, at `T0 + at`.
struct Frame {
    at: i64,
    ip: Vec<u8>,
}

fn tcp(at: i64, src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Frame {
    Frame {
        at,
        ip: tcp_ip(ip(src), sport, ip(dst), dport, flags, 0),
    }
}

/// A client connection, a SYN scanner with replies and a retransmission, an outgoing
/// attempt, UDP, and an IPv6 scanner: the same events whatever the framing.
fn standard() -> Vec<Frame> {
    let (h, c, s, s6, h6) = (
        "192.0.2.1",
        "198.51.100.20",
        "203.0.113.9",
        "2001:db8::bad",
        "2001:db8::1",
    );
    let udp = Frame {
        at: 3 * SEC,
        ip: udp_v4(
            "192.0.2.53".parse().expect("v4"),
            53,
            "198.51.100.20".parse().expect("v4"),
            5353,
            20,
        ),
    };
    vec![
        tcp(0, c, 50000, h, 80, SYN),
        tcp(SEC / 1000, h, 80, c, 50000, SYN | ACK),
        tcp(2 * SEC / 1000, c, 50000, h, 80, ACK),
        tcp(SEC, s, 40000, h, 22, SYN),
        tcp(SEC + SEC / 2000, h, 22, s, 40000, RST | ACK),
        tcp(2 * SEC, s, 40000, h, 22, SYN),
        udp,
        tcp(20 * SEC, s, 40000, h, 21, SYN),
        tcp(40 * SEC, s, 40000, h, 23, SYN),
        tcp(59 * SEC, s, 40000, h, 25, SYN),
        tcp(62 * SEC, h, 33333, "198.51.100.99", 443, SYN),
        tcp(70 * SEC, s6, 41000, h6, 80, SYN),
        tcp(71 * SEC, s6, 41000, h6, 443, SYN),
        tcp(72 * SEC + 123_456_789, s6, 41000, h6, 8080, SYN),
        tcp(73 * SEC, s6, 41000, h6, 8443, SYN),
    ]
}

fn write_pcap(path: &Path, linktype: u32, nanos: bool, frames: &[(i64, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create capture");
    let mut w =
        PcapWriter::new(std::io::BufWriter::new(file), linktype, nanos).expect("pcap header");
    for (at, data) in frames {
        w.write_packet(T0 + at, data).expect("write packet");
    }
    w.finish().expect("finish").flush().expect("flush");
}

fn framed(f: impl Fn(&[u8]) -> Vec<u8>) -> Frames {
    standard()
        .into_iter()
        .map(|fr| (fr.at, f(&fr.ip)))
        .collect()
}

fn replay(args: &[&str], files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .arg("replay")
        .args(args)
        .args(files)
        .output()
        .expect("run synwatch")
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.jsonl"))
}

/// Compares stdout with the golden file (or writes it under UPDATE_GOLDEN=1).
fn check_golden(name: &str, out: &Output) {
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf8 stdout");
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &stdout).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(stdout, want, "events differ from {}", path.display());
}

fn run_case(name: &str, linktype: u32, frames: &[(i64, Vec<u8>)], nanos: bool) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.pcap"));
    write_pcap(&path, linktype, nanos, frames);
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json"]);
    let out = replay(&args, &[&path]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_golden(name, &out);
    out
}

#[test]
fn standard_scenario_over_every_link_type() {
    let cases: Vec<(&str, u32, Frames)> = vec![
        ("ethernet", 1, framed(ethernet)),
        (
            "vlan_8021q",
            1,
            framed(|ip| ethernet_vlan(ip, &[(0x8100, 42)])),
        ),
        ("qinq_8021ad", 1, framed(|ip| ethernet_qinq(ip, 100, 200))),
        ("linux_sll", 113, framed(sll)),
        ("linux_sll2", 276, framed(sll2)),
        ("raw_ip", 101, framed(|ip| ip.to_vec())),
        ("bsd_null_le", 0, framed(|ip| null_loopback(ip, true))),
        ("bsd_null_be", 0, framed(|ip| null_loopback(ip, false))),
        ("bsd_loop", 108, framed(loop_loopback)),
    ];
    let mut first: Option<Vec<u8>> = None;
    for (name, linktype, frames) in cases {
        let out = run_case(name, linktype, &frames, false);
        // Framing must not change a single event.
        match &first {
            None => first = Some(out.stdout.clone()),
            Some(want) => assert_eq!(&out.stdout, want, "{name} differs from ethernet"),
        }
    }
}

#[test]
fn ipv4_and_ipv6_link_types_take_their_own_family() {
    let frames = standard();
    let v4: Vec<(i64, Vec<u8>)> = frames
        .iter()
        .filter(|f| f.ip[0] >> 4 == 4)
        .map(|f| (f.at, f.ip.clone()))
        .collect();
    let v6: Vec<(i64, Vec<u8>)> = frames
        .iter()
        .filter(|f| f.ip[0] >> 4 == 6)
        .map(|f| (f.at, f.ip.clone()))
        .collect();
    run_case("linktype_ipv4", 228, &v4, false);
    run_case("linktype_ipv6", 229, &v6, false);
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    let (s6, h6) = (
        "2001:db8::bad".parse().expect("v6"),
        "2001:db8::1".parse().expect("v6"),
    );
    let syn = |dport| Tcp::new(42000, dport, SYN);
    let frames = vec![
        (0, Ipv6::new(s6, h6).hop_by_hop().tcp(&syn(22))),
        (SEC, Ipv6::new(s6, h6).routing().tcp(&syn(23))),
        (2 * SEC, Ipv6::new(s6, h6).dest_opts().tcp(&syn(24))),
        // First fragment (offset 0, more follow): it carries the TCP header (with an MSS
        // option: Linux drops a non-last fragment whose length is not a multiple of 8).
        (
            3 * SEC,
            Ipv6::new(s6, h6)
                .ext(Ipv6Ext::fragment(0, true))
                .tcp(&syn(25).options(&[2, 4, 5, 180])),
        ),
        // A later fragment: no TCP header in it, skipped.
        (
            4 * SEC,
            Ipv6::new(s6, h6)
                .ext(Ipv6Ext::fragment(185, false))
                .tcp(&syn(26)),
        ),
        (
            5 * SEC,
            Ipv6::new(s6, h6)
                .hop_by_hop()
                .dest_opts()
                .routing()
                .ext(Ipv6Ext::fragment(0, false))
                .tcp(&syn(27)),
        ),
    ];
    let frames: Vec<(i64, Vec<u8>)> = frames.into_iter().map(|(t, p)| (t, ethernet(&p))).collect();
    let out = run_case("ipv6_extension_headers", 1, &frames, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 fragments held or past the TCP header"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fragments:       2 seen, 1 datagrams reassembled"),
        "{stderr}"
    );
}

#[test]
fn malformed_and_truncated_packets_are_counted_and_skipped() {
    let good = |at, dport| {
        (
            at,
            ethernet(&tcp_ip(
                ip("203.0.113.9"),
                40000,
                ip("192.0.2.1"),
                dport,
                SYN,
                0,
            )),
        )
    };
    let mut bad_offset = tcp_ip(ip("203.0.113.66"), 1, ip("192.0.2.1"), 1, SYN, 0);
    bad_offset[20 + 12] = 0x30;
    let mut bad_version = tcp_ip(ip("203.0.113.66"), 1, ip("192.0.2.1"), 2, SYN, 0);
    bad_version[0] = 0x55;
    let cut_tcp = ethernet(&tcp_ip(ip("203.0.113.66"), 1, ip("192.0.2.1"), 3, SYN, 0));
    let frames = vec![
        good(0, 21),
        (SEC, ethernet(&bad_offset)),
        (2 * SEC, ethernet(&bad_version)),
        (3 * SEC, cut_tcp[..14 + 20 + 10].to_vec()),
        (4 * SEC, cut_tcp[..10].to_vec()),
        good(5 * SEC, 22),
        good(6 * SEC, 23),
        good(7 * SEC, 24),
    ];
    let out = run_case("malformed", 1, &frames, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "truncated_link 1",
        "truncated_tcp 1",
        "bad_ip_version 1",
        "bad_tcp_data_offset 1",
    ] {
        assert!(stderr.contains(want), "summary lacks {want}: {stderr}");
    }
}

#[test]
fn stealth_scans_are_reported_without_connections() {
    let s = "203.0.113.77";
    let frames: Vec<(i64, Vec<u8>)> = [0, 0, FIN | PSH | URG, FIN]
        .iter()
        .enumerate()
        .map(|(i, flags)| {
            let at = i as i64 * SEC;
            (
                at,
                ethernet(&tcp_ip(
                    ip(s),
                    50505,
                    ip("192.0.2.1"),
                    1000 + i as u16,
                    *flags,
                    0,
                )),
            )
        })
        .collect();
    run_case("stealth_fin_null_xmas", 1, &frames, false);
}

#[test]
fn nanosecond_timestamps_decide_the_window_edge() {
    // Four ports, the last 60 s + 1 ns after the first: not a scan. A fifth port then is.
    let s = "203.0.113.9";
    let h = "192.0.2.1";
    let frames = vec![
        (0, ethernet(&tcp_ip(ip(s), 1, ip(h), 21, SYN, 0))),
        (20 * SEC, ethernet(&tcp_ip(ip(s), 1, ip(h), 22, SYN, 0))),
        (40 * SEC, ethernet(&tcp_ip(ip(s), 1, ip(h), 23, SYN, 0))),
        (60 * SEC + 1, ethernet(&tcp_ip(ip(s), 1, ip(h), 24, SYN, 0))),
        (60 * SEC + 2, ethernet(&tcp_ip(ip(s), 1, ip(h), 25, SYN, 0))),
    ];
    run_case("nanosecond_window_edge", 1, &frames, true);
}

#[test]
fn pcapng_with_two_interfaces_of_different_link_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("two.pcapng");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = PcapNgWriter::new(std::io::BufWriter::new(file)).expect("shb");
    let eth = w.add_interface(1, None).expect("idb eth");
    let raw = w.add_interface(101, Some(9)).expect("idb raw");
    for (i, f) in standard().iter().enumerate() {
        // Alternate interfaces: the scan spans both.
        if i % 2 == 0 {
            w.write_packet(eth, T0 + f.at, &ethernet(&f.ip))
                .expect("epb");
        } else {
            w.write_packet(raw, T0 + f.at, &f.ip).expect("epb");
        }
        if i == 3 {
            w.write_unknown_block(0x0bad_cafe, &[1, 2, 3, 4])
                .expect("unknown block");
        }
    }
    w.finish().expect("finish").flush().expect("flush");
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json"]);
    let out = replay(&args, &[&path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_golden("pcapng_two_interfaces", &out);
    // Same events as the single-interface Ethernet capture.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(golden_path("ethernet")).expect("ethernet golden")
    );
}

#[test]
fn gzip_capture_replays_like_the_plain_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.pcap");
    write_pcap(&plain, 1, false, &framed(ethernet));
    let gz = dir.path().join("plain.pcap.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::default(),
    );
    enc.write_all(&std::fs::read(&plain).expect("read"))
        .expect("compress");
    enc.finish().expect("finish gzip");
    let a = replay(&LOCAL_ARGS, &[&plain]);
    let b = replay(&LOCAL_ARGS, &[&gz]);
    assert!(b.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert!(!a.stdout.is_empty());
}

#[test]
fn a_capture_cut_mid_record_prints_every_event_before_the_cut_then_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.pcap");
    write_pcap(&path, 1, false, &framed(ethernet));
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 7]).expect("cut");
    let out = replay(&LOCAL_ARGS, &[&path]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().expect("a line");
    assert!(
        first.contains("cut.pcap") && first.contains("cut short"),
        "{stderr}"
    );
    // All but the last frame's events.
    let full = std::fs::read_to_string(golden_path("ethernet")).expect("golden");
    let want: Vec<&str> = full
        .lines()
        .filter(|l| {
            !l.contains("\"dport\":8443")
                && !l.contains("\"event\":\"scan\",\"kind\":\"ports\",\"src\":\"2001")
        })
        .collect();
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}

#[test]
fn bad_inputs_get_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a capture\n").expect("write");
    let wifi = dir.path().join("wifi.pcap");
    write_pcap(&wifi, 105, false, &[(0, vec![0u8; 40])]);
    let missing = dir.path().join("missing.pcap");
    let cases: [(&Path, &str); 3] = [
        (&text, "not a pcap or pcapng capture"),
        (&wifi, "link type 105 not supported"),
        (&missing, "No such file"),
    ];
    for (path, want) in cases {
        let out = replay(&[], &[path]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("synwatch: ") && *l != "synwatch: replay summary")
            .collect();
        assert_eq!(problems.len(), 1, "{stderr}");
        assert!(problems[0].contains(want), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let missing = dir.path().join("missing.pcap");
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json", "--no-summary"]);
    let want = std::fs::read_to_string(golden_path("ethernet")).expect("golden");
    // Named before or after the good one, the missing file is one line on stderr: no
    // line about the files' time order (it has no packets to be ordered by).
    for files in [
        [missing.as_path(), good.as_path()],
        [good.as_path(), missing.as_path()],
    ] {
        let out = replay(&args, &files);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("missing.pcap"), "{stderr}");
    }
}

#[test]
fn bad_options_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    for args in [
        vec!["--window", "0s"],
        vec!["--max-ports", "many"],
        vec!["--local", "10.0.0.300"],
        vec!["--direction", "sideways"],
    ] {
        let out = replay(&args, &[&good]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .arg("replay")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "FILE is required");
}

#[test]
fn environment_variables_set_options_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .arg("replay")
            .args(args)
            .arg(&good)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        String::from_utf8(out.stdout).expect("utf8")
    };
    let env = [
        ("SYNWATCH_MAX_PORTS", "10"),
        ("SYNWATCH_LOCAL", "192.0.2.1,2001:db8::1"),
        ("SYNWATCH_FORMAT", "json"),
    ];
    assert!(
        !run(&env, &[]).contains("\"event\":\"scan\""),
        "max_ports 10 from the environment"
    );
    assert!(
        run(&env, &["--max-ports", "3"]).contains("\"event\":\"scan\""),
        "the flag wins"
    );
}

#[test]
fn table_format_for_people() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "table"]);
    let out = replay(&args, &[&good]);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TIME")
            && lines[0].contains("SOURCE")
            && lines[0].contains("DESTINATION")
    );
    assert!(
        lines[1].ends_with("New connection: 198.51.100.20:50000 -> 192.0.2.1:80"),
        "{}",
        lines[1]
    );
    assert!(
        text.contains("Port scan detected: 203.0.113.9 -> 192.0.2.1 on ports 22,21,23,25\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "Port scan detected: 2001:db8::bad -> 2001:db8::1 on ports 80,443,8080,8443\n"
        ),
        "{text}"
    );
}

#[test]
fn direction_both_logs_outgoing_attempts_as_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json", "--direction", "both"]);
    let out = replay(&args, &[&good]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let outgoing: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"src\":\"192.0.2.1\""))
        .collect();
    assert_eq!(outgoing.len(), 1, "{text}");
    assert!(
        outgoing[0].contains("\"dport\":443,\"direction\":\"out\""),
        "{}",
        outgoing[0]
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"direction\":\"in\""))
            .count(),
        9
    );
}

#[test]
fn files_replay_in_the_time_order_of_their_first_packets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = framed(ethernet);
    let (early, late) = frames.split_at(6);
    let a = dir.path().join("cap-2.pcap");
    let b = dir.path().join("cap-10.pcap");
    write_pcap(&a, 1, false, early);
    write_pcap(&b, 1, false, late);
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json"]);
    // cap-10 sorts first by name but holds the later packets.
    let out = replay(&args, &[&b, &a]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(golden_path("ethernet")).expect("golden")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("time order of the files' first packets"),
        "{stderr}"
    );
}

#[test]
fn time_going_backwards_is_counted_and_warned_about() {
    // A client connects to four ports 40 s apart: not a scan. With its packets stamped
    // out of order they count at the latest time seen, which is said, not hidden; a
    // step back of a window or more (80 s) that the next attempt stays back with starts
    // detection again, and is said too.
    let c = "198.51.100.7";
    let h = "192.0.2.1";
    let frames: Frames = [(100, 22u16), (60, 25), (20, 80), (25, 443)]
        .iter()
        .map(|(at, port)| {
            (
                at * SEC,
                ethernet(&tcp_ip(ip(c), 50000 + port, ip(h), *port, SYN, 0)),
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("back.pcap");
    write_pcap(&path, 1, false, &frames);
    let out = replay(&LOCAL_ARGS, &[&path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: 3 packets are stamped earlier than packets before them (up to 80.000 s back)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: the packets went back in time by a window or more and stayed back 1 times"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("time order:      3 packets stamped earlier than one before them (up to 80.000 s back); detection started again 1 times"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("scan"));
}

#[test]
fn boolean_options_take_their_environment_variables_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    for (value, summary) in [("1", false), ("true", false), ("0", true)] {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["replay", "--format", "json"])
            .arg(&good)
            .env("SYNWATCH_NO_SUMMARY", value)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("replay summary"),
            summary,
            "SYNWATCH_NO_SUMMARY={value}: {stderr}"
        );
    }
}

/// The summary is a diagnostic like the others: one JSON object under `--log-format
/// json` (stderr stays JSON lines for a log shipper), and left out below `info`.
#[test]
fn the_summary_follows_the_log_format_and_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let stderr = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["replay", "--format", "json"])
            .args(args)
            .arg(&good)
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stderr).expect("utf8")
    };
    let json = stderr(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{json}");
    let message = lines[0]["message"].as_str().expect("message");
    assert!(message.starts_with("replay summary\n"), "{message}");
    assert!(message.contains("packets:"), "{message}");
    assert_eq!(stderr(&["--log-level", "warn"]), "");
    assert!(stderr(&[]).starts_with("synwatch: replay summary\n"));
}

#[test]
fn pipes_and_dev_stdin_are_read_once_not_lost_to_the_time_order_peek() {
    // Regression: ordering files by their first packet read pipes once to peek, leaving
    // nothing for the replay itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json", "/dev/stdin"]);
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .arg("replay")
        .args(&args)
        .stdin(std::fs::File::open(&good).expect("open"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat '{}' | '{}' replay --local 192.0.2.1 --local 2001:db8::1 --format json /dev/stdin",
            good.display(),
            env!("CARGO_BIN_EXE_synwatch")
        ))
        .output()
        .expect("sh");
    let want = std::fs::read_to_string(golden_path("ethernet")).expect("golden");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        want,
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
}

/// `tcpdump -U -w - | synwatch replay -`: what has come through the pipe is judged and
/// printed while the pipe stays open, not held back until 1,024 attempts or the end.
#[test]
fn a_pipe_left_open_has_its_events_printed_as_its_packets_come() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 1, false, &framed(ethernet));
    let mut args = LOCAL_ARGS.to_vec();
    args.extend(["--format", "json", "-"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .arg("replay")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&std::fs::read(&good).expect("read"))
        .expect("write to the pipe");
    stdin.flush().expect("flush");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = std::fs::read_to_string(golden_path("ethernet")).expect("golden");
    let mut got = String::new();
    for _ in want.lines() {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => got.push_str(&(line + "\n")),
            Err(_) => break,
        }
    }
    assert_eq!(got, want, "printed while the pipe is open");
    drop(stdin);
    let status = child.wait().expect("wait");
    reader.join().expect("the reader");
    assert!(status.success(), "{status}");
    assert!(rx.try_recv().is_err(), "nothing more at the end");
}

/// `nmap -sS -f` and its variants as Linux reassembles them: IPv4 SYNs cut into 8-byte
/// fragments in order, reversed, shuffled and with a duplicate are attempts; a SYN whose
/// fragments overlap is dropped by Linux and is none; an IPv6 SYN whose first fragment
/// holds the whole TCP header is an attempt, one whose first fragment cuts the TCP header
/// (RFC 7112) is none; a fragmented SYN behind an 802.1Q tag is an attempt.
#[test]
fn fragmented_syns_are_reassembled_as_linux_takes_them() {
    let (s4, h4) = (
        "203.0.113.66".parse().expect("v4"),
        "192.0.2.1".parse().expect("v4"),
    );
    let pieces = |dport: u16| {
        Ipv4::new(s4, h4)
            .id(dport)
            .fragments(6, &Tcp::new(40000, dport, SYN).segment_v4(s4, h4), 8)
    };
    let mut frames: Frames = Vec::new();
    let mut at = 0;
    let mut push = |frames: &mut Frames, ip: &[u8]| {
        at += SEC / 10;
        frames.push((at, ethernet(ip)));
    };
    for p in pieces(1001) {
        push(&mut frames, &p);
    }
    for p in pieces(1002).iter().rev() {
        push(&mut frames, p);
    }
    let p = pieces(1003);
    for i in [1, 2, 0] {
        push(&mut frames, &p[i]);
    }
    let p = pieces(1004);
    for i in [0, 0, 1, 1, 2] {
        push(&mut frames, &p[i]);
    }
    // 1005: after the second piece, one of 16 bytes at offset 0 overlaps it.
    let p = pieces(1005);
    let overlapping = Ipv4::new(s4, h4)
        .id(1005)
        .fragment(0, true)
        .encode(6, &Tcp::new(40000, 1005, SYN).segment_v4(s4, h4)[..16]);
    for ip in [&p[1], &overlapping, &p[0], &p[2]] {
        push(&mut frames, ip);
    }
    let (s6, h6) = (
        "2001:db8::bad".parse().expect("v6"),
        "2001:db8::1".parse().expect("v6"),
    );
    let frag6 = |offset: u16, more: bool, id: u32, bytes: &[u8]| {
        Ipv6::new(s6, h6)
            .ext(Ipv6Ext::Fragment { offset, more, id })
            .encode(6, bytes)
    };
    let syn6 = |dport| {
        Tcp::new(40000, dport, SYN)
            .payload_len(16)
            .segment_v6(s6, h6)
    };
    // 1006: 24 bytes (the whole TCP header and 4 of payload), then the rest.
    let whole = syn6(1006);
    push(&mut frames, &frag6(0, true, 6, &whole[..24]));
    push(&mut frames, &frag6(3, false, 6, &whole[24..]));
    // 1007: the first fragment holds 8 bytes of the TCP header: Linux drops it.
    let cut = syn6(1007);
    push(&mut frames, &frag6(0, true, 7, &cut[..8]));
    push(&mut frames, &frag6(1, false, 7, &cut[8..]));
    // 1008: nmap -f behind an 802.1Q tag.
    for p in pieces(1008) {
        at += SEC / 10;
        frames.push((at, ethernet_vlan(&p, &[(0x8100, 42)])));
    }
    let out = run_case("fragments", 1, &frames, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("6 datagrams reassembled, 2 given up (2 invalid or overlapping"),
        "{stderr}"
    );
}

/// A million incomplete first fragments from spoofed sources (the generator's
/// `fragments` capture) overflow the reassembly table, which stays within its bounds by
/// evicting the oldest; the `nmap -f` scanner and the plain scanner hidden in the flood
/// are both still reported.
#[test]
fn a_flood_of_incomplete_fragments_hides_no_scanner() {
    use synwatch_testkit::generate::{
        FRAGMENTING_SCANNER, FragmentFloodConfig, PLAIN_SCANNER, write_fragment_flood,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flood.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let cfg = FragmentFloodConfig {
        fragments: 1_000_000,
        seed: 7,
    };
    write_fragment_flood(std::io::BufWriter::new(file), &cfg).expect("write the flood");
    let out = replay(&["--format", "json"], &[&path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for scanner in [FRAGMENTING_SCANNER, PLAIN_SCANNER] {
        let scans: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("\"event\":\"scan\"") && l.contains(&format!("\"{scanner}\"")))
            .collect();
        assert_eq!(scans.len(), 1, "{scanner}: {stdout}");
        assert!(
            scans[0].contains("\"ports\":[1000,1001,1002,1003]"),
            "{}",
            scans[0]
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("20 datagrams reassembled"), "{stderr}");
    let evicted = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("fragments:"))
        .and_then(|l| l.split(" evicted").next())
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.replace(',', "").parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no eviction count in {stderr}"));
    // Everything beyond the default table of 16,384 datagrams was pushed out.
    assert!(evicted >= 1_000_000 - 16_384, "{stderr}");
}

/// IPv6 sources per /64 and address sweeps in replay: forty addresses of one /64 with
/// three ports each are one scanner with the /64 as its prefix; a source whose SYNs to
/// thirty hosts on port 22 go unanswered is a sweep, while a monitoring server whose
/// thirty connections are answered is not; an IPv4 port scan is as before.
#[test]
fn ipv6_prefixes_and_address_sweeps() {
    let mut frames: Frames = Vec::new();
    let ms = SEC / 1000;
    // Forty addresses of 2001:db8:77:1::/64, three ports each, 100 ms apart.
    for a in 0..40u16 {
        for p in 0..3u16 {
            let at = i64::from(a * 3 + p) * 100 * ms;
            let src = format!("2001:db8:77:1::{:x}", a + 2);
            let ip6 = tcp_ip(ip(&src), 40000, ip("2001:db8::1"), 1000 + a * 3 + p, SYN, 0);
            frames.push((at, ethernet(&ip6)));
        }
    }
    // A sweep of port 22 over 10.20.0.1-30 (a gateway's view), never answered, and a
    // monitoring server checking the same hosts, answered within 2 ms.
    for h in 1..=30u16 {
        let at = 20 * SEC + i64::from(h) * 50 * ms;
        let host = format!("10.20.0.{h}");
        let sweep = tcp_ip(ip("198.51.100.77"), 50000 + h, ip(&host), 22, SYN, 0);
        frames.push((at, ethernet(&sweep)));
        let check = tcp_ip(ip("192.0.2.200"), 51000 + h, ip(&host), 22, SYN, 0);
        frames.push((at + ms, ethernet(&check)));
        let answer = tcp_ip(ip(&host), 22, ip("192.0.2.200"), 51000 + h, SYN | ACK, 0);
        frames.push((at + 3 * ms, ethernet(&answer)));
    }
    // An ordinary IPv4 port scan.
    for p in 0..4u16 {
        let ip4 = tcp_ip(ip("203.0.113.9"), 40000, ip("192.0.2.1"), 21 + p, SYN, 0);
        frames.push((40 * SEC + i64::from(p) * SEC, ethernet(&ip4)));
    }
    frames.sort_by_key(|f| f.0);
    let out = run_case("prefixes_and_sweeps", 1, &frames, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scans: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|e| e["event"] == "scan")
        .collect();
    assert_eq!(scans.len(), 3, "{scans:#?}");
    assert_eq!(scans[0]["kind"], "ports");
    assert_eq!(scans[0]["prefix"], "2001:db8:77:1::/64");
    assert_eq!(scans[0]["src"], "2001:db8:77:1::3");
    assert_eq!(scans[1]["kind"], "sweep");
    assert_eq!(scans[1]["src"], "198.51.100.77");
    assert_eq!(scans[1]["dport"], 22);
    assert_eq!(scans[1]["hosts"].as_array().map(Vec::len), Some(17));
    assert_eq!(scans[2]["src"], "203.0.113.9");
    assert!(scans[2].get("prefix").is_none());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 port scans, 1 address sweeps"),
        "{stderr}"
    );
}

/// tcpdump once captured 68 bytes of each packet by default: every SYN's options are cut
/// (14 bytes of Ethernet, 20 of IPv4, 34 of a 40-byte TCP header). The host received
/// them whole, so such a capture still shows its attempts and its scan; a SYN cut before
/// its flags does not count.
#[test]
fn a_capture_with_a_68_byte_snap_length_still_shows_its_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap68.pcap");
    let file = std::fs::File::create(&path).expect("create capture");
    let opts = synwatch_testkit::pcap::PcapOptions {
        snaplen: 68,
        ..synwatch_testkit::pcap::PcapOptions::new(1)
    };
    let mut w = PcapWriter::with_options(std::io::BufWriter::new(file), opts).expect("header");
    let syn = |dport: u16| {
        ethernet(
            &Ipv4::new(
                "203.0.113.9".parse().expect("v4"),
                "192.0.2.1".parse().expect("v4"),
            )
            .tcp(&Tcp::new(40000 + dport, dport, SYN).syn_options()),
        )
    };
    for (i, port) in [21u16, 22, 23, 25].into_iter().enumerate() {
        w.write_packet(T0 + i as i64 * SEC, &syn(port))
            .expect("write");
    }
    // Cut before the flags: 14 + 20 + 12 bytes of a SYN to port 80.
    let whole = syn(80);
    w.write_packet_orig_len(T0 + 5 * SEC, &whole[..46], whole.len() as u32)
        .expect("write");
    w.finish().expect("finish").flush().expect("flush");
    let out = replay(&["--format", "json", "--no-summary"], &[&path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let connections = stdout
        .lines()
        .filter(|l| l.contains(r#""event":"connection""#))
        .count();
    assert_eq!(connections, 4, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(r#""event":"scan""#) && l.contains("[21,22,23,25]")),
        "{stdout}"
    );
}

/// A cooked capture (`tcpdump -i any`) says which way each packet went. A SYN-ACK it
/// marks as having come in "from" one of the host's own addresses (`--local`) is a
/// martian the kernel drops: a sweeper that forges one for each host it probed is still
/// reported, as live, while a client answered by the host's outgoing SYN-ACKs is not a
/// sweeper. SLL and SLL2 alike; without `--local` nothing is known to be the host's.
#[test]
fn answers_forged_from_local_addresses_in_a_cooked_capture_hide_no_sweep() {
    const HOST: u16 = 0;
    const OUTGOING: u16 = 4;
    let ms = SEC / 1000;
    type Framing = fn(u16, &[u8]) -> Vec<u8>;
    let framings: [(u32, Framing); 2] = [
        (113, |kind, ip| {
            sll_with(kind, if ip[0] >> 4 == 4 { 0x0800 } else { 0x86dd }, ip)
        }),
        (276, |kind, ip| {
            let proto = if ip[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
            sll2_with(proto, 2, u8::try_from(kind).expect("packet type"), ip)
        }),
    ];
    for (linktype, frame) in framings {
        let mut frames: Frames = Vec::new();
        for h in 1..=30u16 {
            let at = T0 + i64::from(h) * 50 * ms;
            let host = ip(&format!("10.20.0.{h}"));
            let (scanner, client) = (ip("198.51.100.77"), ip("192.0.2.200"));
            let probe = tcp_ip(scanner, 50000 + h, host, 22, SYN, 0);
            let forged = tcp_ip(host, 22, scanner, 50000 + h, SYN | ACK, 0);
            let check = tcp_ip(client, 51000 + h, host, 23, SYN, 0);
            let answer = tcp_ip(host, 23, client, 51000 + h, SYN | ACK, 0);
            frames.push((at, frame(HOST, &probe)));
            frames.push((at + ms, frame(HOST, &forged)));
            frames.push((at + 2 * ms, frame(HOST, &check)));
            frames.push((at + 3 * ms, frame(OUTGOING, &answer)));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("any.pcap");
        write_pcap(&path, linktype, false, &frames);
        let sweeps = |args: &[&str]| {
            let out = replay(args, &[&path]);
            assert!(out.status.success(), "{out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let found: Vec<serde_json::Value> = stdout
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
                .filter(|e| e["event"] == "scan")
                .collect();
            (found, String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (found, stderr) = sweeps(&["--local", "10.20.0.0/24", "--format", "json"]);
        assert_eq!(found.len(), 1, "linktype {linktype}: {found:#?}");
        assert_eq!(found[0]["kind"], "sweep");
        assert_eq!(found[0]["src"], "198.51.100.77");
        assert_eq!(found[0]["dport"], 22);
        assert!(
            stderr.contains("30 coming in from a --local address"),
            "{stderr}"
        );
        let (found, stderr) = sweeps(&["--format", "json"]);
        assert!(found.is_empty(), "linktype {linktype}: {found:#?}");
        assert!(
            stderr.contains("0 coming in from a --local address"),
            "{stderr}"
        );
    }
}
