//! Tiny capture writers for the tests. Shared by the integration tests (`mod common;`)
//! and the crate's unit tests (included by path), so it must not name the crate.
//!
//! They write exactly what the specs say and nothing clever, so that a disagreement with
//! the reader points at the reader; the peer tests check these writers against Wireshark.

/// Writes a classic pcap file.
pub struct PcapWriter {
    buf: Vec<u8>,
    big_endian: bool,
    nanos: bool,
}

impl PcapWriter {
    pub fn new(linktype: u32, snaplen: u32, big_endian: bool, nanos: bool) -> Self {
        let mut w = Self {
            buf: Vec::new(),
            big_endian,
            nanos,
        };
        w.u32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        w.u16(2);
        w.u16(4);
        w.u32(0); // thiszone
        w.u32(0); // sigfigs
        w.u32(snaplen);
        w.u32(linktype);
        w
    }

    /// `ts_nanos` must be non-negative; micro files drop the sub-microsecond part.
    pub fn packet(&mut self, ts_nanos: i64, data: &[u8], orig_len: u32) {
        let secs = u32::try_from(ts_nanos / 1_000_000_000).expect("timestamp fits pcap");
        let frac = u32::try_from(ts_nanos % 1_000_000_000).expect("non-negative timestamp");
        self.u32(secs);
        self.u32(if self.nanos { frac } else { frac / 1_000 });
        self.u32(u32::try_from(data.len()).expect("small packet"));
        self.u32(orig_len);
        self.buf.extend_from_slice(data);
    }

    pub fn offset(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn u16(&mut self, v: u16) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }
}

/// Writes pcapng blocks in one byte order (a new writer per byte order; concatenate
/// their outputs for sections of different orders).
pub struct NgWriter {
    buf: Vec<u8>,
    big_endian: bool,
}

impl NgWriter {
    pub fn new(big_endian: bool) -> Self {
        Self {
            buf: Vec::new(),
            big_endian,
        }
    }

    fn u16b(&self, v: u16) -> [u8; 2] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32b(&self, v: u32) -> [u8; 4] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// Appends an option (code, length, value padded to 4 bytes) to `out`.
    pub fn option(&self, out: &mut Vec<u8>, code: u16, value: &[u8]) {
        out.extend_from_slice(&self.u16b(code));
        out.extend_from_slice(&self.u16b(u16::try_from(value.len()).expect("small option")));
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }

    /// Appends a block of any type; `body` is padded to 4 bytes.
    pub fn block(&mut self, block_type: u32, body: &[u8]) {
        let padded = body.len().next_multiple_of(4);
        let total = u32::try_from(12 + padded).expect("small block");
        let t = self.u32b(block_type);
        let l = self.u32b(total);
        self.buf.extend_from_slice(&t);
        self.buf.extend_from_slice(&l);
        self.buf.extend_from_slice(body);
        self.buf.resize(self.buf.len() + padded - body.len(), 0);
        self.buf.extend_from_slice(&l);
    }

    pub fn shb(&mut self) {
        let mut body = Vec::new();
        body.extend_from_slice(&self.u32b(0x1a2b_3c4d));
        body.extend_from_slice(&self.u16b(1));
        body.extend_from_slice(&self.u16b(0));
        body.extend_from_slice(&[0xff; 8]); // section length: unknown (-1)
        self.block(0x0a0d_0d0a, &body);
    }

    pub fn idb(
        &mut self,
        linktype: u16,
        snaplen: u32,
        tsresol: Option<u8>,
        tsoffset: Option<i64>,
        name: Option<&str>,
    ) {
        let mut body = Vec::new();
        body.extend_from_slice(&self.u16b(linktype));
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&self.u32b(snaplen));
        let mut opts = Vec::new();
        if let Some(name) = name {
            self.option(&mut opts, 2, name.as_bytes());
        }
        if let Some(r) = tsresol {
            self.option(&mut opts, 9, &[r]);
        }
        if let Some(off) = tsoffset {
            let b = if self.big_endian {
                off.to_be_bytes()
            } else {
                off.to_le_bytes()
            };
            self.option(&mut opts, 14, &b);
        }
        if !opts.is_empty() {
            self.option(&mut opts, 0, &[]);
        }
        body.extend_from_slice(&opts);
        self.block(1, &body);
    }

    pub fn epb(&mut self, iface: u32, ts_units: u64, data: &[u8], orig_len: u32) {
        let mut body = Vec::new();
        body.extend_from_slice(&self.u32b(iface));
        body.extend_from_slice(&self.u32b((ts_units >> 32) as u32));
        body.extend_from_slice(&self.u32b(ts_units as u32));
        body.extend_from_slice(&self.u32b(u32::try_from(data.len()).expect("small")));
        body.extend_from_slice(&self.u32b(orig_len));
        body.extend_from_slice(data);
        self.block(6, &body);
    }

    /// Obsolete Packet Block (type 2).
    pub fn pb(&mut self, iface: u16, ts_units: u64, data: &[u8], orig_len: u32) {
        let mut body = Vec::new();
        body.extend_from_slice(&self.u16b(iface));
        body.extend_from_slice(&self.u16b(0)); // drops
        body.extend_from_slice(&self.u32b((ts_units >> 32) as u32));
        body.extend_from_slice(&self.u32b(ts_units as u32));
        body.extend_from_slice(&self.u32b(u32::try_from(data.len()).expect("small")));
        body.extend_from_slice(&self.u32b(orig_len));
        body.extend_from_slice(data);
        self.block(2, &body);
    }

    pub fn spb(&mut self, data: &[u8], orig_len: u32) {
        let mut body = Vec::new();
        body.extend_from_slice(&self.u32b(orig_len));
        body.extend_from_slice(data);
        self.block(3, &body);
    }

    pub fn offset(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}
