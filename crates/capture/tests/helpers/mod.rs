//! Reading helpers for the integration tests.

use std::io::{self, Read};

use synwatch_capture::{CaptureError, CaptureReader, Packet};

/// A packet copied out of the reader, so a whole capture can be compared at once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owned {
    pub ts_nanos: i64,
    pub linktype: u32,
    pub iface: u32,
    pub data: Vec<u8>,
    pub orig_len: u32,
}

impl Owned {
    pub fn new(ts_nanos: i64, linktype: u32, iface: u32, data: &[u8], orig_len: u32) -> Self {
        Self {
            ts_nanos,
            linktype,
            iface,
            data: data.to_vec(),
            orig_len,
        }
    }
}

impl From<Packet<'_>> for Owned {
    fn from(p: Packet<'_>) -> Self {
        Self::new(p.ts_nanos, p.linktype, p.iface, p.data, p.orig_len)
    }
}

/// Every packet up to the end or the first error. Also checks that the reader stays
/// finished after it stops.
pub fn read_all(r: &mut CaptureReader) -> (Vec<Owned>, Option<CaptureError>) {
    let mut out = Vec::new();
    let err = loop {
        match r.next_packet() {
            Ok(Some(p)) => out.push(p.into()),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(
        matches!(r.next_packet(), Ok(None)),
        "reader must stay finished"
    );
    assert_eq!(r.packets_read(), out.len() as u64);
    (out, err)
}

/// Every packet, failing the test on any error.
pub fn read_ok(r: &mut CaptureReader) -> Vec<Owned> {
    let (packets, err) = read_all(r);
    if let Some(err) = err {
        panic!("unexpected error after {} packets: {err}", packets.len());
    }
    packets
}

/// Hands out at most `chunk` bytes per read, to exercise the streaming refills.
pub struct Dribble {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Dribble {
    pub fn boxed(data: &[u8], chunk: usize) -> Box<dyn Read + Send> {
        Box::new(Self {
            data: data.to_vec(),
            at: 0,
            chunk,
        })
    }
}

impl Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len()).min(self.chunk);
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// Gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("write to memory");
    enc.finish().expect("finish gzip")
}
