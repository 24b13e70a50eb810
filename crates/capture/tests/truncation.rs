//! A capture cut at every byte offset: the reader never panics, returns exactly the
//! packets that are complete before the cut, then either ends cleanly (cut at a record
//! boundary) or reports `Truncated` at the cut with that packet count.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

#[allow(dead_code, reason = "each test binary uses a different part")]
mod common;
#[allow(dead_code, reason = "each test binary uses a different part")]
mod helpers;

use common::{NgWriter, PcapWriter};
use helpers::{Dribble, Owned, gzip, read_all, read_ok};
use synwatch_capture::{CaptureError, CaptureReader};

/// A capture, the offset where its header (everything before the first record or block
/// that may hold packets) ends, and for each later record boundary how many packets
/// precede it.
struct Sample {
    bytes: Vec<u8>,
    header_end: usize,
    boundaries: Vec<(usize, usize)>,
}

fn pcap_sample(big_endian: bool) -> Sample {
    let mut w = PcapWriter::new(1, 65535, big_endian, false);
    let header_end = w.offset();
    let mut boundaries = vec![(header_end, 0)];
    for (i, len) in [3usize, 0, 17, 1].into_iter().enumerate() {
        w.packet(1_000 * i as i64, &vec![i as u8; len], 100);
        boundaries.push((w.offset(), i + 1));
    }
    Sample {
        bytes: w.finish(),
        header_end,
        boundaries,
    }
}

fn pcapng_sample() -> Sample {
    let mut w = NgWriter::new(false);
    w.shb();
    let header_end = w.offset();
    let mut boundaries = vec![(header_end, 0)];
    let mut packets = 0;
    let mut mark = |w: &NgWriter, packet: bool| {
        if packet {
            packets += 1;
        }
        boundaries.push((w.offset(), packets));
    };
    w.idb(1, 0, Some(9), None, Some("eth0"));
    mark(&w, false);
    w.epb(0, 10, b"abcde", 5);
    mark(&w, true);
    w.block(0x0bad, b"unknown");
    mark(&w, false);
    w.spb(b"xy", 2);
    mark(&w, true);
    w.shb();
    mark(&w, false);
    w.idb(101, 0, None, None, None);
    mark(&w, false);
    w.pb(0, 7, b"", 0);
    mark(&w, true);
    Sample {
        bytes: w.finish(),
        header_end,
        boundaries,
    }
}

type Opener<'a> = dyn Fn() -> Result<CaptureReader, CaptureError> + 'a;

fn check_every_cut(sample: &Sample) {
    let full = read_ok(&mut CaptureReader::from_bytes(sample.bytes.clone()).unwrap());
    for cut in 0..=sample.bytes.len() {
        let prefix = &sample.bytes[..cut];
        let expected: Result<(Vec<Owned>, Option<u64>), ()> = if cut == 0 {
            Err(())
        } else if cut < sample.header_end {
            Ok((Vec::new(), Some(0)))
        } else {
            let done = sample
                .boundaries
                .iter()
                .filter(|(at, _)| *at <= cut)
                .map(|(_, n)| *n)
                .next_back()
                .unwrap();
            let clean = sample.boundaries.iter().any(|(at, _)| *at == cut);
            Ok((full[..done].to_vec(), (!clean).then_some(done as u64)))
        };
        let ways: [(&str, Box<Opener<'_>>); 3] = [
            (
                "memory",
                Box::new(|| CaptureReader::from_bytes(prefix.to_vec())),
            ),
            (
                "stream",
                Box::new(|| CaptureReader::from_reader(Dribble::boxed(prefix, 3))),
            ),
            ("gzip", Box::new(|| CaptureReader::from_bytes(gzip(prefix)))),
        ];
        for (way, open) in ways {
            let what = format!("{way}, cut at {cut} of {}", sample.bytes.len());
            match (&expected, open()) {
                (Err(()), Err(CaptureError::Empty)) => {}
                (Ok((none, Some(0))), Err(CaptureError::Truncated { offset, packets })) => {
                    assert!(none.is_empty());
                    assert_eq!((offset, packets), (cut as u64, 0), "{what}");
                }
                (Ok((want, cut_inside)), Ok(mut r)) => {
                    let (got, err) = read_all(&mut r);
                    assert_eq!(&got, want, "{what}");
                    match (cut_inside, err) {
                        (None, None) => {}
                        (Some(n), Some(CaptureError::Truncated { offset, packets })) => {
                            assert_eq!((offset, packets), (cut as u64, *n), "{what}");
                        }
                        (want, got) => panic!("{what}: expected truncation {want:?}, got {got:?}"),
                    }
                }
                (want, got) => panic!(
                    "{what}: expected {:?}, got {got:?}",
                    want.as_ref().map(|(p, t)| (p.len(), t))
                ),
            }
        }
    }
}

#[test]
fn classic_pcap_cut_at_every_byte() {
    check_every_cut(&pcap_sample(false));
    check_every_cut(&pcap_sample(true));
}

#[test]
fn pcapng_cut_at_every_byte() {
    check_every_cut(&pcapng_sample());
}
