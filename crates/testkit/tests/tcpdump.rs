//! Cross-checks against tcpdump: files written by this crate must be read by a real
//! pcap reader with the expected packet counts and no checksum complaints.
//!
//! tcpdump is required: these tests fail (never skip) when it is missing. The
//! project's `make test` installs it (`apt-get install tcpdump`).

#![expect(clippy::unwrap_used, reason = "tests fail loudly on I/O errors")]

use std::fs::File;
use std::io::BufWriter;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use synwatch_testkit::generate::SAMPLE_PACKETS;
use synwatch_testkit::packet::{IPV4_OPT_ROUTER_ALERT, TPID_8021AD, TPID_8021Q};
use synwatch_testkit::pcap::{LINKTYPE_IPV4, LINKTYPE_IPV6};
use synwatch_testkit::*;

const A4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xbad);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

/// Runs `tcpdump -nn [extra] -r path`, returning stdout; panics with an install hint
/// when tcpdump is missing and with its stderr when it fails.
fn tcpdump(path: &Path, extra: &[&str]) -> String {
    let out = match Command::new("tcpdump")
        .arg("-nn")
        .args(extra)
        .arg("-r")
        .arg(path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "tcpdump is not installed: install it (apt-get install tcpdump; the project's make test does) \
             to run the capture cross-checks"
        ),
        Err(e) => panic!("running tcpdump: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tcpdump failed on {}: {stderr}",
        path.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Packet count as tcpdump prints it (one line per packet without -v).
fn count(path: &Path) -> usize {
    tcpdump(path, &[]).lines().count()
}

/// tcpdump -vv verifies IPv4 header, TCP and UDP checksums: none may be wrong.
fn assert_checksums_ok(path: &Path) {
    let text = tcpdump(path, &["-vv"]);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("incorrect") || l.contains("bad cksum") || l.contains("bad udp cksum")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "checksum errors in {}:\n{}",
        path.display(),
        bad.join("\n")
    );
}

fn run_gen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch-gen"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn sample_is_read_by_tcpdump() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.pcap");
    let out = run_gen(&["sample", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!("{SAMPLE_PACKETS} packets")),
        "{summary}"
    );
    assert!(summary.contains("2 scanner addresses"), "{summary}");

    let text = tcpdump(&path, &[]);
    assert_eq!(text.lines().count(), SAMPLE_PACKETS);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("22:13:20.100000 IP 198.51.100.20"),
        "{text}"
    );
    let scans = text
        .lines()
        .filter(|l| l.contains("203.0.113.9.61234 > 10.0.0.5") && l.contains("Flags [S]"));
    assert_eq!(scans.count(), 20);
    let fin6 = text
        .lines()
        .filter(|l| l.contains("IP6 2001:db8::bad") && l.contains("Flags [F]"));
    assert_eq!(fin6.count(), 3);
    assert_checksums_ok(&path);
}

#[test]
fn bench_and_spoofed_are_read_by_tcpdump() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench.pcap");
    let out = run_gen(&[
        "bench",
        bench.to_str().unwrap(),
        "--packets",
        "20_000",
        "--sources",
        "2000",
        "--scanners",
        "5",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&bench), 20_000);
    assert_checksums_ok(&bench);

    let spoofed = dir.path().join("spoofed.pcap");
    let out = run_gen(&[
        "spoofed",
        spoofed.to_str().unwrap(),
        "--sources",
        "3000",
        "--v6",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = tcpdump(&spoofed, &[]);
    assert_eq!(text.lines().count(), 3000);
    assert_eq!(text.lines().filter(|l| l.contains(" IP6 ")).count(), 1500);
    assert!(text.lines().all(|l| l.contains("Flags [S]")));
    assert_checksums_ok(&spoofed);
}

/// One capture per link type, each holding the same TCP/UDP packets.
fn ip_packets() -> Vec<Vec<u8>> {
    vec![
        tcp_v4_opts(A4, 40000, B4, 22, SYN, 0),
        tcp_v4(B4, 22, A4, 40000, RST | ACK, 0),
        tcp_v6(A6, 40000, B6, 443, SYN, 0),
        tcp_v6_opts(B6, 443, A6, 40000, SYN | ACK, 0),
        udp_v4(A4, 40001, B4, 7777, 12),
        udp_v6(A6, 40001, B6, 7777, 12),
        Ipv4::new(A4, B4)
            .options(&IPV4_OPT_ROUTER_ALERT)
            .tcp(&Tcp::new(1, 2, FIN | PSH | URG)),
        Ipv6::new(A6, B6)
            .hop_by_hop()
            .routing()
            .dest_opts()
            .tcp(&Tcp::new(3, 4, SYN).payload_len(10)),
        Ipv6::new(A6, B6)
            .fragment(0, true)
            .tcp(&Tcp::new(5, 6, SYN).payload_len(64)),
        Ipv6::new(A6, B6)
            .fragment(9, false)
            .tcp(&Tcp::new(5, 6, SYN)),
        Ipv4::new(A4, B4)
            .fragment(0, true)
            .tcp(&Tcp::new(7, 8, SYN).payload_len(64)),
        Ipv4::new(A4, B4)
            .fragment(9, false)
            .tcp(&Tcp::new(7, 8, SYN)),
    ]
}

#[test]
fn every_framing_in_pcap_and_pcapng_is_read_by_tcpdump() {
    let dir = tempfile::tempdir().unwrap();
    type Frame = fn(&[u8]) -> Vec<u8>;
    let framings: [(&str, u32, Frame); 10] = [
        ("ethernet", LINKTYPE_ETHERNET, ethernet),
        ("vlan", LINKTYPE_ETHERNET, |ip| {
            ethernet_vlan(ip, &[(TPID_8021Q, 7)])
        }),
        ("qinq", LINKTYPE_ETHERNET, |ip| {
            ethernet_vlan(ip, &[(TPID_8021AD, 7), (TPID_8021Q, 8)])
        }),
        ("sll", LINKTYPE_LINUX_SLL, sll),
        ("sll2", LINKTYPE_LINUX_SLL2, sll2),
        // tcpdump on Linux reads DLT_NULL in the file's byte order (little-endian here).
        ("null", LINKTYPE_NULL, |ip| null_loopback(ip, true)),
        ("loop", LINKTYPE_LOOP, loop_loopback),
        ("raw", LINKTYPE_RAW, |ip| ip.to_vec()),
        ("ipv4", LINKTYPE_IPV4, |ip| ip.to_vec()),
        ("ipv6", LINKTYPE_IPV6, |ip| ip.to_vec()),
    ];
    let packets = ip_packets();
    for (name, linktype, frame) in framings {
        let chosen: Vec<&Vec<u8>> = packets
            .iter()
            .filter(|ip| match linktype {
                LINKTYPE_IPV4 => ip[0] >> 4 == 4,
                LINKTYPE_IPV6 => ip[0] >> 4 == 6,
                _ => true,
            })
            .collect();
        for nanos in [false, true] {
            let path = dir.path().join(format!("{name}-{nanos}.pcap"));
            let mut w = PcapWriter::new(
                BufWriter::new(File::create(&path).unwrap()),
                linktype,
                nanos,
            )
            .unwrap();
            for (i, ip) in chosen.iter().enumerate() {
                w.write_packet(1_700_000_000_000_000_000 + i as i64 * 1_001, &frame(ip))
                    .unwrap();
            }
            w.finish().unwrap();
            let text = tcpdump(&path, &[]);
            assert_eq!(text.lines().count(), chosen.len(), "{name}:\n{text}");
            assert!(
                !text.contains("[|"),
                "{name}: tcpdump saw a truncated header:\n{text}"
            );
            assert_checksums_ok(&path);
            if nanos {
                let ts = tcpdump(&path, &["--nano"]);
                assert!(
                    ts.lines().nth(1).unwrap().contains(".000001001 "),
                    "{name}: {ts}"
                );
            }
        }

        for (tsresol, big_endian) in [(None, false), (Some(9), true), (Some(0x80 | 20), false)] {
            let path = dir.path().join(format!("{name}-{tsresol:?}.pcapng"));
            let mut w = PcapNgWriter::with_endianness(
                BufWriter::new(File::create(&path).unwrap()),
                big_endian,
            )
            .unwrap();
            w.write_unknown_block(0x0000_0bad, b"skip me").unwrap();
            let iface = w.add_interface(linktype, tsresol).unwrap();
            for (i, ip) in chosen.iter().enumerate() {
                w.write_packet(
                    iface,
                    1_700_000_000_000_000_000 + i as i64 * 1_000_000,
                    &frame(ip),
                )
                .unwrap();
                if i == 0 {
                    w.write_unknown_block(0x4242_4242, &[1, 2, 3, 4, 5])
                        .unwrap();
                }
            }
            w.finish().unwrap();
            let text = tcpdump(&path, &[]);
            assert_eq!(text.lines().count(), chosen.len(), "{name} pcapng:\n{text}");
            // 1 ms is not a whole number of 2^-20 s units: floor gives 0.000999.
            let want = if tsresol == Some(0x80 | 20) {
                "22:13:20.000999 "
            } else {
                "22:13:20.001000 "
            };
            assert!(
                text.lines().nth(1).unwrap().starts_with(want),
                "{name}: {text}"
            );
            assert_checksums_ok(&path);
        }
    }
}

#[test]
fn snaplen_truncation_is_what_tcpdump_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.pcap");
    let opts = PcapOptions {
        snaplen: 54,
        ..PcapOptions::new(LINKTYPE_ETHERNET)
    };
    let mut w =
        PcapWriter::with_options(BufWriter::new(File::create(&path).unwrap()), opts).unwrap();
    w.write_packet(0, &ethernet(&tcp_v4(A4, 1, B4, 2, PSH | ACK, 500)))
        .unwrap();
    w.finish().unwrap();
    let text = tcpdump(&path, &["-v"]);
    assert!(
        text.contains("length 540"),
        "IP total length survives truncation: {text}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 24 + 16 + 54);
}
