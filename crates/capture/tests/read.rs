//! End-to-end reads of captures built by the test writers, through every input path
//! (mmap, memory, stream, gzip), asserting every field of every packet.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

#[allow(dead_code, reason = "each test binary uses a different part")]
mod common;
#[allow(dead_code, reason = "each test binary uses a different part")]
mod helpers;

use std::io::Write;
use std::path::Path;

use common::{NgWriter, PcapWriter};
use helpers::{Dribble, Owned, gzip, read_all, read_ok};
use synwatch_capture::{CaptureError, CaptureReader, Format, Interface};

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

/// Reads `bytes` through every input path and checks they all agree; returns the
/// packets and the format.
fn read_every_way(bytes: &[u8]) -> (Vec<Owned>, Format) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = CaptureReader::from_bytes(bytes.to_vec()).unwrap();
    let format = r.format();
    let want = read_ok(&mut r);
    assert_eq!(r.position(), bytes.len() as u64);
    assert_eq!(r.total_len(), Some(bytes.len() as u64));

    let path = write_file(dir.path(), "plain.cap", bytes);
    let mut r = CaptureReader::open(&path).unwrap();
    assert_eq!(r.format(), format);
    assert_eq!(read_ok(&mut r), want, "mmap");
    assert_eq!(r.position(), bytes.len() as u64);
    assert_eq!(r.total_len(), Some(bytes.len() as u64));

    for chunk in [1, 3, 4096, usize::MAX] {
        let mut r = CaptureReader::from_reader(Dribble::boxed(bytes, chunk)).unwrap();
        assert_eq!(r.format(), format);
        assert_eq!(read_ok(&mut r), want, "stream, chunk {chunk}");
        assert_eq!(r.position(), bytes.len() as u64);
        assert_eq!(r.total_len(), None);
    }

    let gz = gzip(bytes);
    let mut r = CaptureReader::from_bytes(gz.clone()).unwrap();
    assert_eq!(read_ok(&mut r), want, "gzip bytes");
    assert_eq!(r.position(), gz.len() as u64);
    assert_eq!(r.total_len(), Some(gz.len() as u64));

    let gz_path = write_file(dir.path(), "plain.cap.gz", &gz);
    let mut r = CaptureReader::open(&gz_path).unwrap();
    assert_eq!(r.format(), format);
    assert_eq!(read_ok(&mut r), want, "gzip file");
    assert_eq!(r.position(), gz.len() as u64);
    assert_eq!(r.total_len(), Some(gz.len() as u64));

    let mut r = CaptureReader::from_reader(Dribble::boxed(&gz, 5)).unwrap();
    assert_eq!(read_ok(&mut r), want, "gzip stream");
    assert_eq!(r.position(), gz.len() as u64);

    // Concatenated gzip members (`cat a.gz b.gz`) read as one capture.
    let half = bytes.len() / 2;
    let mut two = gzip(&bytes[..half]);
    two.extend_from_slice(&gzip(&bytes[half..]));
    let mut r = CaptureReader::from_bytes(two).unwrap();
    assert_eq!(read_ok(&mut r), want, "two gzip members");

    (want, format)
}

#[test]
fn classic_pcap_both_orders_micro_and_nano() {
    let big = vec![0x5a; 3 << 20];
    for big_endian in [false, true] {
        for nanos in [false, true] {
            let mut w = PcapWriter::new(1, 262_144, big_endian, nanos);
            w.packet(1_700_000_000_123_456_789, &[0xaa; 60], 60);
            w.packet(1_700_000_001_000_000_001, b"", 1514);
            w.packet(5, b"\x01", 9000);
            // Bigger than the streaming buffer, to force it to grow.
            w.packet(4_000_000_000_999_999_999, &big, 3 << 20);
            let (got, format) = read_every_way(&w.finish());
            assert_eq!(format, Format::Pcap { nanos, big_endian });
            let sub_micro = |ns: i64| if nanos { ns } else { ns - ns % 1_000 };
            let want = vec![
                Owned::new(sub_micro(1_700_000_000_123_456_789), 1, 0, &[0xaa; 60], 60),
                Owned::new(sub_micro(1_700_000_001_000_000_001), 1, 0, b"", 1514),
                Owned::new(sub_micro(5), 1, 0, b"\x01", 9000),
                Owned::new(sub_micro(4_000_000_000_999_999_999), 1, 0, &big, 3 << 20),
            ];
            assert_eq!(got, want, "big_endian {big_endian} nanos {nanos}");
        }
    }
}

#[test]
fn classic_pcap_reports_one_interface() {
    let w = PcapWriter::new(113, 65535, true, true);
    let r = CaptureReader::from_bytes(w.finish()).unwrap();
    assert_eq!(
        r.interfaces(),
        &[Interface {
            linktype: 113,
            snaplen: 65535,
            tsresol: 9,
            tsoffset: 0,
            name: None,
        }]
    );
}

/// Two sections of opposite byte order; the first has two interfaces with different
/// link types and resolutions and unknown blocks between packets.
fn two_sections() -> (Vec<u8>, Vec<Owned>) {
    let mut a = NgWriter::new(false);
    a.shb();
    a.idb(1, 65535, None, None, Some("eth0"));
    a.idb(101, 0, Some(9), Some(1_600_000_000), Some("tun0"));
    a.epb(0, 1_700_000_000_000_001, b"ether frame", 64);
    a.block(0x0bad, b"an unknown block"); // skipped by its length
    a.block(4, &[0; 4]); // name resolution: skipped
    a.epb(1, 5, b"\x45raw ip", 7);
    a.block(0x4000_0bad, &[1, 2, 3, 4, 5]); // custom block: skipped
    a.epb(0, 1_700_000_000_000_002, b"", 0);
    a.block(5, &[0; 20]); // interface statistics: skipped
    a.spb(b"simple!", 7);
    let mut b = NgWriter::new(true);
    b.shb();
    b.idb(113, 0, Some(0x80 | 20), Some(-1), Some("any"));
    b.epb(0, 3 << 20, b"cooked", 1000);
    b.pb(0, 1 << 19, b"obsolete", 8);
    let mut bytes = a.finish();
    bytes.extend_from_slice(&b.finish());
    let want = vec![
        Owned::new(1_700_000_000_000_001_000, 1, 0, b"ether frame", 64),
        Owned::new(1_600_000_000_000_000_005, 101, 1, b"\x45raw ip", 7),
        Owned::new(1_700_000_000_000_002_000, 1, 0, b"", 0),
        // Simple packets inherit the previous timestamp.
        Owned::new(1_700_000_000_000_002_000, 1, 0, b"simple!", 7),
        Owned::new(2_000_000_000, 113, 0, b"cooked", 1000),
        Owned::new(-500_000_000, 113, 0, b"obsolete", 8),
    ];
    (bytes, want)
}

#[test]
fn pcapng_interfaces_resolutions_unknown_blocks_and_sections() {
    let (bytes, want) = two_sections();
    let (got, format) = read_every_way(&bytes);
    assert_eq!(format, Format::PcapNg);
    assert_eq!(got, want);
}

#[test]
fn pcapng_interfaces_are_per_section() {
    let (bytes, _) = two_sections();
    let mut r = CaptureReader::from_bytes(bytes).unwrap();
    assert!(r.interfaces().is_empty(), "no IDB read yet");
    r.next_packet().unwrap().unwrap();
    assert_eq!(
        r.interfaces(),
        &[
            Interface {
                linktype: 1,
                snaplen: 65535,
                tsresol: 6,
                tsoffset: 0,
                name: Some("eth0".into()),
            },
            Interface {
                linktype: 101,
                snaplen: 0,
                tsresol: 9,
                tsoffset: 1_600_000_000,
                name: Some("tun0".into()),
            },
        ]
    );
    for _ in 0..4 {
        r.next_packet().unwrap().unwrap();
    }
    assert_eq!(r.interfaces().len(), 1);
    assert_eq!(r.interfaces()[0].name.as_deref(), Some("any"));
    assert_eq!(r.interfaces()[0].tsresol, 0x80 | 20);
}

#[test]
fn pcapng_second_section_forgets_first_sections_interfaces() {
    let mut a = NgWriter::new(false);
    a.shb();
    a.idb(1, 0, None, None, None);
    a.idb(1, 0, None, None, None);
    a.shb();
    a.idb(1, 0, None, None, None);
    let at = a.offset();
    a.epb(1, 0, b"x", 1);
    let mut r = CaptureReader::from_bytes(a.finish()).unwrap();
    let err = r.next_packet().unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::NoSuchInterface { iface: 1, described: 1, offset } if offset == at as u64
        ),
        "{err}"
    );
}

#[test]
fn open_reports_missing_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pcap");
    let err = CaptureReader::open(&missing).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CaptureError::Io { path: Some(p), .. } if *p == missing),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("cannot read {}: ", missing.display())),
        "{msg}"
    );

    let empty = write_file(dir.path(), "empty.pcap", b"");
    let err = CaptureReader::open(&empty).unwrap_err();
    assert!(matches!(err, CaptureError::Empty), "{err}");
    let err = CaptureReader::from_reader(Dribble::boxed(b"", 1)).unwrap_err();
    assert!(matches!(err, CaptureError::Empty), "{err}");
    // An empty gzip stream decompresses to nothing.
    let err = CaptureReader::from_bytes(gzip(b"")).unwrap_err();
    assert!(matches!(err, CaptureError::Empty), "{err}");

    let err = CaptureReader::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read {}: ", dir.path().display())),
        "{err}"
    );

    let text = write_file(dir.path(), "notes.txt", b"hello world\n");
    let err = CaptureReader::open(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a pcap or pcapng capture (starts with 0x68656c6c)"
    );
}

#[test]
fn position_advances_record_by_record() {
    let mut w = PcapWriter::new(1, 65535, false, false);
    w.packet(1, &[0; 10], 10);
    w.packet(2, &[0; 20], 20);
    let bytes = w.finish();
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "p.pcap", &bytes);
    let mut r = CaptureReader::open(&path).unwrap();
    assert_eq!(r.position(), 24);
    r.next_packet().unwrap().unwrap();
    assert_eq!(r.position(), 24 + 16 + 10);
    r.next_packet().unwrap().unwrap();
    assert_eq!(r.position(), 24 + 16 + 10 + 16 + 20);
    assert!(r.next_packet().unwrap().is_none());
}

#[test]
fn mmap_packets_borrow_the_file_without_copying() {
    let mut w = PcapWriter::new(1, 65535, false, false);
    w.packet(1, b"abc", 3);
    w.packet(2, b"defg", 4);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "p.pcap", &w.finish());
    let mut r = CaptureReader::open(&path).unwrap();
    let first = r.next_packet().unwrap().unwrap().data.as_ptr();
    let second = r.next_packet().unwrap().unwrap().data.as_ptr();
    // Consecutive records sit 3 data bytes + a 16-byte header apart in the map.
    assert_eq!(second as usize - first as usize, 3 + 16);
}

#[test]
fn corrupt_gzip_is_an_io_error_naming_the_file() {
    let (bytes, _) = two_sections();
    let mut gz = gzip(&bytes);
    let n = gz.len();
    gz.truncate(n - 20);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "cut.pcapng.gz", &gz);
    let mut r = CaptureReader::open(&path).unwrap();
    let (_, err) = read_all(&mut r);
    let err = err.expect("a cut-short gzip stream is an error");
    assert!(
        matches!(&err, CaptureError::Io { path: Some(p), .. } if *p == path),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(": corrupt or cut-short gzip data: "),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn open_streams_a_named_pipe() {
    let (bytes, want) = two_sections();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.pcapng");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo failed");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, bytes).unwrap())
    };
    let mut r = CaptureReader::open(&fifo).unwrap();
    assert_eq!(r.total_len(), None, "a pipe has no size");
    assert_eq!(read_ok(&mut r), want);
    writer.join().unwrap();
}

/// A stream that hands out `bytes` cut at `cuts`, one piece per read (a pipe whose
/// writer wrote them one by one).
struct Pieces {
    pieces: std::collections::VecDeque<Vec<u8>>,
}

impl Pieces {
    fn boxed(bytes: &[u8], cuts: &[usize]) -> Box<dyn std::io::Read + Send> {
        let mut pieces = std::collections::VecDeque::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            pieces.push_back(bytes[from..cut].to_vec());
            from = cut;
        }
        Box::new(Self { pieces })
    }
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(piece) = self.pieces.front_mut() else {
            return Ok(0);
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        piece.drain(..n);
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        Ok(n)
    }
}

/// Reads the packets of `bytes`, a stream whose first piece ends at `cut`, and says before
/// the first read and after each (the end included) whether the next one is buffered.
fn buffered_after_each(bytes: &[u8], cut: usize) -> Vec<bool> {
    let mut r = CaptureReader::from_reader(Pieces::boxed(bytes, &[cut])).unwrap();
    let mut said = vec![r.next_is_buffered()];
    while r.next_packet().unwrap().is_some() {
        said.push(r.next_is_buffered());
    }
    said.push(r.next_is_buffered());
    said
}

#[test]
fn a_stream_says_whether_its_next_record_has_arrived_whole() {
    for big_endian in [false, true] {
        let mut w = PcapWriter::new(1, 65535, big_endian, false);
        let mut ends = Vec::new();
        for i in 0..3 {
            w.packet(i * 1_000_000_000, &[0xab; 60], 60);
            ends.push(w.offset());
        }
        let bytes = w.finish();
        // The first piece: the header, the first record and 10 bytes of the second.
        // Before any packet: the first is there. After it: the second is cut (the reader
        // would wait on the pipe). After the second (the rest came): the third is there.
        // After the third: nothing yet. At the end: nothing to wait for.
        assert_eq!(
            buffered_after_each(&bytes, ends[0] + 10),
            [true, false, true, false, true],
            "pcap, big endian {big_endian}"
        );
        // Cut inside the second record's header: not whole either.
        assert_eq!(
            buffered_after_each(&bytes, ends[0] + 4),
            [true, false, true, false, true]
        );
    }
    for big_endian in [false, true] {
        let mut w = NgWriter::new(big_endian);
        w.shb();
        w.idb(1, 65535, None, None, None);
        let mut ends = Vec::new();
        for i in 0..3 {
            w.epb(0, i * 1_000_000, &[0xcd; 60], 60);
            ends.push(w.offset());
        }
        let bytes = w.finish();
        assert_eq!(
            buffered_after_each(&bytes, ends[0] + 10),
            [true, false, true, false, true],
            "pcapng, big endian {big_endian}"
        );
    }
    // A file is never waited on.
    let mut w = PcapWriter::new(1, 65535, false, false);
    w.packet(0, &[0; 60], 60);
    let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
    assert!(r.next_is_buffered());
    r.next_packet().unwrap().unwrap();
    assert!(r.next_is_buffered());
}
