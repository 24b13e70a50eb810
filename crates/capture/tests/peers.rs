//! Real capture tools as peers: files converted or written by Wireshark's editcap and
//! mergecap and by tcpdump (libpcap) must read back as the same packets, and Wireshark
//! must read our test writers' pcapng the same way we do (so the hand-built pcapng in the
//! other tests is checked against an independent reading of the spec).
//!
//! The tools are required: a missing tool fails the test with the package to install
//! (the project's `make test` installs them), instead of passing without checking.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

#[allow(dead_code, reason = "each test binary uses a different part")]
mod common;
#[allow(dead_code, reason = "each test binary uses a different part")]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{NgWriter, PcapWriter};
use helpers::{Owned, read_ok};
use synwatch_capture::{CaptureReader, Format};

/// The path of `name` on PATH, or a test failure naming the Debian package to install.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: install the Debian package `{package}` \
                 (apt-get install {package}; `make test` does this) to run the peer tests"
            )
        })
}

#[test]
#[should_panic(expected = "install the Debian package `some-package`")]
fn a_missing_tool_fails_naming_its_package() {
    tool("synwatch-no-such-tool", "some-package");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read_file(path: &Path) -> (Vec<Owned>, Format) {
    let mut r = CaptureReader::open(path).unwrap();
    let format = r.format();
    (read_ok(&mut r), format)
}

/// A varied classic pcap: sub-second timestamps, a snapped packet, an empty one.
fn sample_pcap(linktype: u32, first_ts: i64, step: i64) -> Vec<u8> {
    let mut w = PcapWriter::new(linktype, 65535, false, false);
    for i in 0..6u8 {
        let ts = first_ts + step * i64::from(i) + 123_456_000 * i64::from(i % 3);
        let data: Vec<u8> = (0..u32::from(i) * 37).map(|b| (b as u8) ^ i).collect();
        let orig = u32::try_from(data.len()).unwrap() + u32::from(i % 2) * 100;
        w.packet(ts, &data, orig);
    }
    w.finish()
}

#[test]
fn editcap_to_pcapng_and_nsecpcap_reads_back_identically() {
    let editcap = tool("editcap", "tshark");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.pcap");
    std::fs::write(
        &src,
        sample_pcap(1, 1_700_000_000_000_000_000, 1_000_000_007),
    )
    .unwrap();
    let (want, format) = read_file(&src);
    assert_eq!(
        format,
        Format::Pcap {
            nanos: false,
            big_endian: false
        }
    );
    assert_eq!(want.len(), 6);

    let ng = dir.path().join("out.pcapng");
    run(Command::new(&editcap)
        .args(["-F", "pcapng"])
        .arg(&src)
        .arg(&ng));
    let (got, format) = read_file(&ng);
    assert_eq!(format, Format::PcapNg);
    assert_eq!(got, want, "editcap -F pcapng");

    let ns = dir.path().join("out.nsec.pcap");
    run(Command::new(&editcap)
        .args(["-F", "nsecpcap"])
        .arg(&src)
        .arg(&ns));
    let (got, format) = read_file(&ns);
    assert!(
        matches!(format, Format::Pcap { nanos: true, .. }),
        "{format}"
    );
    assert_eq!(got, want, "editcap -F nsecpcap");
}

#[test]
fn mergecap_of_two_link_types_reads_back_as_two_interfaces() {
    let mergecap = tool("mergecap", "tshark");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.pcap");
    let b = dir.path().join("b.pcap");
    // Interleaved in time, so the merge alternates between the inputs.
    std::fs::write(&a, sample_pcap(1, 1_700_000_000_000_000_000, 2_000_000_000)).unwrap();
    std::fs::write(
        &b,
        sample_pcap(101, 1_700_000_001_000_000_000, 2_000_000_000),
    )
    .unwrap();
    let (from_a, _) = read_file(&a);
    let (from_b, _) = read_file(&b);

    let merged = dir.path().join("out.pcapng");
    run(Command::new(&mergecap)
        .args(["-F", "pcapng", "-w"])
        .arg(&merged)
        .arg(&a)
        .arg(&b));
    let mut r = CaptureReader::open(&merged).unwrap();
    assert_eq!(r.format(), Format::PcapNg);
    let got = read_ok(&mut r);
    let linktypes: Vec<u32> = r.interfaces().iter().map(|i| i.linktype).collect();
    assert_eq!(linktypes, [1, 101]);

    assert!(
        got.windows(2).all(|w| w[0].ts_nanos <= w[1].ts_nanos),
        "mergecap merges in time order"
    );
    // Interface ids follow the input order; otherwise the packets are the inputs'.
    let mut want: Vec<Owned> = from_a
        .into_iter()
        .chain(from_b.into_iter().map(|p| Owned { iface: 1, ..p }))
        .collect();
    want.sort_by_key(|p| p.ts_nanos);
    assert_eq!(got, want);
}

/// A pcapng with interfaces of three resolutions (default micro, nano with an offset,
/// binary 2^-20) and two link types.
fn sample_pcapng() -> (Vec<u8>, usize) {
    let mut w = NgWriter::new(false);
    w.shb();
    w.idb(1, 0, None, None, Some("eth0"));
    w.idb(101, 0, Some(9), Some(1_000), Some("tun0"));
    w.idb(1, 0, Some(0x80 | 20), None, None);
    w.epb(0, 1_700_000_000_000_001, b"micro", 5);
    w.epb(1, 1_699_999_000_123_456_789, b"\x45nano+offset", 60);
    w.block(0x0bad, b"unknown");
    w.epb(2, (1_700_000_002u64 << 20) | (1 << 19), b"binary half", 11);
    w.epb(0, 1_700_000_003_999_999, b"", 0);
    (w.finish(), 4)
}

/// Parses tshark's `frame.time_epoch` ("1700000000.000001000") into nanoseconds.
fn epoch_nanos(s: &str) -> i64 {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    secs.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

#[test]
fn tshark_reads_our_pcapng_as_we_do() {
    let tshark = tool("tshark", "tshark");
    let dir = tempfile::tempdir().unwrap();
    let (bytes, count) = sample_pcapng();
    let path = dir.path().join("ours.pcapng");
    std::fs::write(&path, &bytes).unwrap();
    let (ours, _) = read_file(&path);
    assert_eq!(ours.len(), count);

    let out = run(Command::new(&tshark)
        .arg("-r")
        .arg(&path)
        .args(["-T", "fields", "-E", "separator=,"])
        .args(["-e", "frame.time_epoch", "-e", "frame.interface_id"])
        .args(["-e", "frame.cap_len", "-e", "frame.len"]));
    // Wireshark lists the unknown block as a record of its own, with no interface or
    // timestamp; we skip it, so leave it out of the comparison.
    let (records, unknown): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|line| !line.starts_with(",,"));
    assert!(unknown.len() <= 1, "tshark output:\n{out}");
    let theirs: Vec<(i64, u32, usize, u32)> = records
        .into_iter()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "tshark line {line:?}");
            (
                epoch_nanos(f[0]),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    let mine: Vec<(i64, u32, usize, u32)> = ours
        .iter()
        .map(|p| (p.ts_nanos, p.iface, p.data.len(), p.orig_len))
        .collect();
    assert_eq!(mine, theirs);
    assert_eq!(
        mine.iter().map(|m| m.0).collect::<Vec<_>>(),
        [
            1_700_000_000_000_001_000,
            1_700_000_000_123_456_789,
            1_700_000_002_500_000_000,
            1_700_000_003_999_999_000
        ]
    );
}

#[test]
fn tcpdump_rewrites_our_pcapng_as_classic_pcap_with_the_same_packets() {
    let tcpdump = tool("tcpdump", "tcpdump");
    let dir = tempfile::tempdir().unwrap();
    // libpcap's pcapng reader wants one link type per file.
    let mut w = NgWriter::new(true);
    w.shb();
    w.idb(1, 0, Some(9), Some(5), None);
    w.idb(1, 0, None, None, None);
    w.epb(0, 1_700_000_000_123_456_789, &[1; 60], 60);
    w.epb(1, 1_700_000_006_000_001, &[2; 14], 1514);
    w.epb(0, 1_700_000_002_000_000_000, b"", 64);
    let src = dir.path().join("ours.pcapng");
    std::fs::write(&src, w.finish()).unwrap();
    let (ours, _) = read_file(&src);
    assert_eq!(ours.len(), 3);

    let nsec = dir.path().join("nsec.pcap");
    run(Command::new(&tcpdump)
        .args(["--time-stamp-precision=nano", "-r"])
        .arg(&src)
        .arg("-w")
        .arg(&nsec));
    let (got, format) = read_file(&nsec);
    assert!(
        matches!(format, Format::Pcap { nanos: true, .. }),
        "{format}"
    );
    // Classic pcap has a single interface.
    let want: Vec<Owned> = ours
        .iter()
        .map(|p| Owned {
            iface: 0,
            ..p.clone()
        })
        .collect();
    assert_eq!(got, want);

    let usec = dir.path().join("usec.pcap");
    run(Command::new(&tcpdump)
        .arg("-r")
        .arg(&src)
        .arg("-w")
        .arg(&usec));
    let (got, format) = read_file(&usec);
    assert!(
        matches!(format, Format::Pcap { nanos: false, .. }),
        "{format}"
    );
    let want: Vec<Owned> = want
        .into_iter()
        .map(|p| Owned {
            ts_nanos: p.ts_nanos - p.ts_nanos % 1_000,
            ..p
        })
        .collect();
    assert_eq!(got, want);
}
