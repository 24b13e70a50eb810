//! Capture file writers: classic pcap ([`PcapWriter`]) and pcapng ([`PcapNgWriter`]).
//!
//! Both write to any [`Write`] (a `Vec<u8>`, a `BufWriter<File>`, a gzip encoder) and
//! default to little-endian, the byte order of every capture a modern x86/ARM host
//! writes; big-endian files are available for reader tests. Timestamps are given as
//! nanoseconds since the Unix epoch and converted to the file's resolution by
//! truncation (floor, so negative times stay ordered).
//!
//! Besides well-formed records, both writers have doors for malformed-input tests:
//! [`PcapWriter::write_packet_orig_len`] and [`PcapWriter::write_raw_record`] (inconsistent
//! lengths), [`PcapNgWriter::write_unknown_block`] (blocks a reader must skip), and
//! `get_mut` to append arbitrary bytes such as a truncated record.

use std::io::{self, Write};

/// `LINKTYPE_NULL`: BSD loopback, address family in the capturing host's byte order.
pub const LINKTYPE_NULL: u32 = 0;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// `LINKTYPE_RAW`: raw IPv4 or IPv6, version from the first nibble.
pub const LINKTYPE_RAW: u32 = 101;
/// `LINKTYPE_LOOP`: OpenBSD loopback, address family in network byte order.
pub const LINKTYPE_LOOP: u32 = 108;
/// `LINKTYPE_LINUX_SLL`: Linux cooked capture v1.
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// `LINKTYPE_IPV4`: raw IPv4 only.
pub const LINKTYPE_IPV4: u32 = 228;
/// `LINKTYPE_IPV6`: raw IPv6 only.
pub const LINKTYPE_IPV6: u32 = 229;
/// `LINKTYPE_LINUX_SLL2`: Linux cooked capture v2.
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Snapshot length written by default (what tcpdump uses since 4.99).
pub const DEFAULT_SNAPLEN: u32 = 262_144;

/// Classic pcap magic for microsecond files (as a number; its byte order on disk tells
/// the file's byte order).
pub const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Classic pcap magic for nanosecond files.
pub const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;

/// pcapng block type of the Section Header Block.
pub const BLOCK_SHB: u32 = 0x0a0d_0d0a;
/// pcapng block type of the Interface Description Block.
pub const BLOCK_IDB: u32 = 0x0000_0001;
/// pcapng block type of the Simple Packet Block.
pub const BLOCK_SPB: u32 = 0x0000_0003;
/// pcapng block type of the Enhanced Packet Block.
pub const BLOCK_EPB: u32 = 0x0000_0006;
/// pcapng byte-order magic.
pub const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

const NANOS_PER_SEC: i64 = 1_000_000_000;

fn u16_bytes(v: u16, big_endian: bool) -> [u8; 2] {
    if big_endian {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn u32_bytes(v: u32, big_endian: bool) -> [u8; 4] {
    if big_endian {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn len_u32(len: usize, what: &str) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {len} bytes"),
        )
    })
}

/// Settings of a classic pcap file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcapOptions {
    /// Link type of every record (`LINKTYPE_*`).
    pub linktype: u32,
    /// Nanosecond timestamps (magic 0xa1b23c4d) instead of microseconds.
    pub nanos: bool,
    /// Snapshot length in the header; [`PcapWriter::write_packet`] truncates to it.
    pub snaplen: u32,
    /// Write a big-endian file instead of little-endian.
    pub big_endian: bool,
}

impl PcapOptions {
    /// Little-endian, microseconds, [`DEFAULT_SNAPLEN`].
    pub fn new(linktype: u32) -> Self {
        Self {
            linktype,
            nanos: false,
            snaplen: DEFAULT_SNAPLEN,
            big_endian: false,
        }
    }
}

/// Classic pcap writer. The 24-byte global header is written by the constructor.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    w: W,
    opts: PcapOptions,
    packets: u64,
    bytes: u64,
}

impl<W: Write> PcapWriter<W> {
    /// A little-endian file of `linktype`, microsecond (`nanos == false`) or nanosecond
    /// timestamps, snaplen [`DEFAULT_SNAPLEN`].
    pub fn new(w: W, linktype: u32, nanos: bool) -> io::Result<Self> {
        Self::with_options(
            w,
            PcapOptions {
                nanos,
                ..PcapOptions::new(linktype)
            },
        )
    }

    /// A file with explicit settings.
    pub fn with_options(mut w: W, opts: PcapOptions) -> io::Result<Self> {
        let be = opts.big_endian;
        let magic = if opts.nanos {
            PCAP_MAGIC_NANOS
        } else {
            PCAP_MAGIC_MICROS
        };
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&u32_bytes(magic, be));
        h[4..6].copy_from_slice(&u16_bytes(2, be));
        h[6..8].copy_from_slice(&u16_bytes(4, be));
        // thiszone and sigfigs stay 0.
        h[16..20].copy_from_slice(&u32_bytes(opts.snaplen, be));
        h[20..24].copy_from_slice(&u32_bytes(opts.linktype, be));
        w.write_all(&h)?;
        Ok(Self {
            w,
            opts,
            packets: 0,
            bytes: 24,
        })
    }

    /// The settings this file was written with.
    pub fn options(&self) -> PcapOptions {
        self.opts
    }

    /// Splits nanoseconds since the epoch into the record's seconds and fraction fields.
    fn ts_fields(&self, ts_nanos: i64) -> (u32, u32) {
        let secs = ts_nanos.div_euclid(NANOS_PER_SEC);
        let sub = ts_nanos.rem_euclid(NANOS_PER_SEC);
        let frac = if self.opts.nanos { sub } else { sub / 1000 };
        // pcap seconds are 32 bits: times outside 1970..2106 wrap, as in real files.
        (secs as u32, frac as u32)
    }

    /// One record of the whole packet, truncated to the snaplen (orig_len is the full
    /// length, as a capture with a short snaplen records it).
    pub fn write_packet(&mut self, ts_nanos: i64, data: &[u8]) -> io::Result<()> {
        let orig = len_u32(data.len(), "packet")?;
        let cap = data.len().min(self.opts.snaplen as usize);
        self.write_packet_orig_len(ts_nanos, &data[..cap], orig)
    }

    /// One record holding `data` as captured (no snaplen truncation) while declaring
    /// `orig_len` as the original wire length; `orig_len < data.len()` makes an
    /// inconsistent record for reader tests.
    pub fn write_packet_orig_len(
        &mut self,
        ts_nanos: i64,
        data: &[u8],
        orig_len: u32,
    ) -> io::Result<()> {
        let (secs, frac) = self.ts_fields(ts_nanos);
        let incl = len_u32(data.len(), "packet")?;
        self.write_raw_record(secs, frac, incl, orig_len, data)
    }

    /// A record header with arbitrary field values followed by `data`: `incl_len` need
    /// not match `data.len()` (for tests of readers facing corrupt files).
    pub fn write_raw_record(
        &mut self,
        ts_sec: u32,
        ts_frac: u32,
        incl_len: u32,
        orig_len: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let be = self.opts.big_endian;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&u32_bytes(ts_sec, be));
        h[4..8].copy_from_slice(&u32_bytes(ts_frac, be));
        h[8..12].copy_from_slice(&u32_bytes(incl_len, be));
        h[12..16].copy_from_slice(&u32_bytes(orig_len, be));
        self.w.write_all(&h)?;
        self.w.write_all(data)?;
        self.packets += 1;
        self.bytes += 16 + data.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes written so far, global header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The underlying writer, e.g. to append garbage or a truncated record.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Converts nanoseconds since the epoch into pcapng timestamp units for `if_tsresol`
/// (`None` is the default, 6 = microseconds; MSB clear = 10^-n, MSB set = 2^-n).
/// Negative times and overflow wrap to 64 bits.
pub fn pcapng_ts_units(ts_nanos: i64, tsresol: Option<u8>) -> u64 {
    let r = tsresol.unwrap_or(6);
    let t = i128::from(ts_nanos);
    let ns = i128::from(NANOS_PER_SEC);
    let units = if r & 0x80 == 0 {
        let e = u32::from(r);
        if e <= 9 {
            t.div_euclid(10i128.pow(9 - e))
        } else {
            10i128
                .checked_pow(e - 9)
                .and_then(|m| t.checked_mul(m))
                .unwrap_or(i128::MAX)
        }
    } else {
        let k = u32::from(r & 0x7f);
        2i128
            .checked_pow(k)
            .and_then(|m| t.checked_mul(m))
            .map_or(i128::MAX, |v| v.div_euclid(ns))
    };
    // Keep the low 64 bits: what a 64-bit timestamp field holds.
    units as u64
}

/// pcapng writer: a Section Header Block, then Interface Description Blocks and
/// Enhanced Packet Blocks as the caller adds them. All blocks are padded to 32 bits and
/// carry their total length at both ends.
#[derive(Debug)]
pub struct PcapNgWriter<W: Write> {
    w: W,
    big_endian: bool,
    /// `if_tsresol` of each interface of the current section.
    ifaces: Vec<Option<u8>>,
    packets: u64,
    bytes: u64,
}

impl<W: Write> PcapNgWriter<W> {
    /// A little-endian file; writes the Section Header Block.
    pub fn new(w: W) -> io::Result<Self> {
        Self::with_endianness(w, false)
    }

    /// A file in the chosen byte order; writes the Section Header Block.
    pub fn with_endianness(w: W, big_endian: bool) -> io::Result<Self> {
        let mut s = Self {
            w,
            big_endian,
            ifaces: Vec::new(),
            packets: 0,
            bytes: 0,
        };
        s.new_section()?;
        Ok(s)
    }

    /// Starts a new section (another SHB, section length -1); interface ids restart at 0.
    pub fn new_section(&mut self) -> io::Result<()> {
        let be = self.big_endian;
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&u32_bytes(PCAPNG_BYTE_ORDER_MAGIC, be));
        body.extend_from_slice(&u16_bytes(1, be));
        body.extend_from_slice(&u16_bytes(0, be));
        body.extend_from_slice(&(-1i64).to_le_bytes()); // all ones in either order
        self.ifaces.clear();
        self.write_block(BLOCK_SHB, &body)
    }

    /// Adds an interface (IDB) with snaplen 0 (unlimited) and an `if_tsresol` option
    /// when `tsresol` is given; returns its id for [`write_packet`](Self::write_packet).
    pub fn add_interface(&mut self, linktype: u32, tsresol: Option<u8>) -> io::Result<u32> {
        self.add_interface_snaplen(linktype, tsresol, 0)
    }

    /// Like [`add_interface`](Self::add_interface) with an explicit snaplen.
    pub fn add_interface_snaplen(
        &mut self,
        linktype: u32,
        tsresol: Option<u8>,
        snaplen: u32,
    ) -> io::Result<u32> {
        let be = self.big_endian;
        let lt = u16::try_from(linktype).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pcapng link type {linktype} > 65535"),
            )
        })?;
        let mut body = Vec::with_capacity(20);
        body.extend_from_slice(&u16_bytes(lt, be));
        body.extend_from_slice(&u16_bytes(0, be));
        body.extend_from_slice(&u32_bytes(snaplen, be));
        if let Some(r) = tsresol {
            body.extend_from_slice(&u16_bytes(9, be)); // if_tsresol
            body.extend_from_slice(&u16_bytes(1, be));
            body.extend_from_slice(&[r, 0, 0, 0]);
            body.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
        }
        self.write_block(BLOCK_IDB, &body)?;
        let id = len_u32(self.ifaces.len(), "interface table")?;
        self.ifaces.push(tsresol);
        Ok(id)
    }

    /// An Enhanced Packet Block of the whole packet on interface `iface`, timestamp in
    /// that interface's resolution. An id that was never added is written anyway (with
    /// microsecond units), for tests of readers facing such files.
    pub fn write_packet(&mut self, iface: u32, ts_nanos: i64, data: &[u8]) -> io::Result<()> {
        let orig = len_u32(data.len(), "packet")?;
        self.write_packet_full(iface, ts_nanos, data, orig, None)
    }

    /// An Enhanced Packet Block with an explicit original length and an optional
    /// `opt_comment` option.
    pub fn write_packet_full(
        &mut self,
        iface: u32,
        ts_nanos: i64,
        data: &[u8],
        orig_len: u32,
        comment: Option<&str>,
    ) -> io::Result<()> {
        let be = self.big_endian;
        let tsresol = self.ifaces.get(iface as usize).copied().flatten();
        let ts = pcapng_ts_units(ts_nanos, tsresol);
        let mut body = Vec::with_capacity(20 + data.len() + 3);
        body.extend_from_slice(&u32_bytes(iface, be));
        body.extend_from_slice(&u32_bytes((ts >> 32) as u32, be));
        body.extend_from_slice(&u32_bytes(ts as u32, be));
        body.extend_from_slice(&u32_bytes(len_u32(data.len(), "packet")?, be));
        body.extend_from_slice(&u32_bytes(orig_len, be));
        body.extend_from_slice(data);
        pad4(&mut body);
        if let Some(c) = comment {
            let len = u16::try_from(c.len()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "comment longer than 65535 bytes",
                )
            })?;
            body.extend_from_slice(&u16_bytes(1, be)); // opt_comment
            body.extend_from_slice(&u16_bytes(len, be));
            body.extend_from_slice(c.as_bytes());
            pad4(&mut body);
            body.extend_from_slice(&[0, 0, 0, 0]);
        }
        self.write_block(BLOCK_EPB, &body)?;
        self.packets += 1;
        Ok(())
    }

    /// A Simple Packet Block (implicitly interface 0, no timestamp).
    pub fn write_simple_packet(&mut self, data: &[u8], orig_len: u32) -> io::Result<()> {
        let mut body = Vec::with_capacity(4 + data.len() + 3);
        body.extend_from_slice(&u32_bytes(orig_len, self.big_endian));
        body.extend_from_slice(data);
        pad4(&mut body);
        self.write_block(BLOCK_SPB, &body)?;
        self.packets += 1;
        Ok(())
    }

    /// A block of any type with `body` (padded to 32 bits), e.g. a custom or
    /// not-yet-defined type that a reader must skip.
    pub fn write_unknown_block(&mut self, block_type: u32, body: &[u8]) -> io::Result<()> {
        let mut b = body.to_vec();
        pad4(&mut b);
        self.write_block(block_type, &b)
    }

    fn write_block(&mut self, block_type: u32, body: &[u8]) -> io::Result<()> {
        debug_assert!(body.len().is_multiple_of(4));
        let be = self.big_endian;
        let total = len_u32(12 + body.len(), "block")?;
        self.w.write_all(&u32_bytes(block_type, be))?;
        self.w.write_all(&u32_bytes(total, be))?;
        self.w.write_all(body)?;
        self.w.write_all(&u32_bytes(total, be))?;
        self.bytes += u64::from(total);
        Ok(())
    }

    /// Packet blocks (EPB and SPB) written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The underlying writer, e.g. to append a truncated block.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on I/O errors")]
mod tests {
    use super::*;

    const TS: i64 = 1_700_000_000 * NANOS_PER_SEC + 123_456_789;

    #[test]
    fn pcap_micro_layout() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET, false).unwrap();
        w.write_packet(TS, &[0xaa, 0xbb, 0xcc]).unwrap();
        assert_eq!((w.packets(), w.bytes()), (1, 24 + 16 + 3));
        let out = w.finish().unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0xd4, 0xc3, 0xb2, 0xa1, // magic, little-endian micro
            2, 0, 4, 0,             // version 2.4
            0, 0, 0, 0,             // thiszone
            0, 0, 0, 0,             // sigfigs
            0x00, 0x00, 0x04, 0x00, // snaplen 262144
            1, 0, 0, 0,             // linktype 1
            0x00, 0xf1, 0x53, 0x65, // 1700000000 = 0x6553f100
            0x40, 0xe2, 0x01, 0x00, // 123456 us = 0x0001e240
            3, 0, 0, 0,             // incl_len
            3, 0, 0, 0,             // orig_len
            0xaa, 0xbb, 0xcc,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn pcap_nanos_snaplen_and_big_endian() {
        let opts = PcapOptions {
            nanos: true,
            snaplen: 2,
            big_endian: true,
            ..PcapOptions::new(LINKTYPE_RAW)
        };
        let mut w = PcapWriter::with_options(Vec::new(), opts).unwrap();
        w.write_packet(TS, &[1, 2, 3, 4]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..4], &[0xa1, 0xb2, 0x3c, 0x4d]);
        assert_eq!(&out[4..8], &[0, 2, 0, 4]);
        assert_eq!(&out[16..20], &[0, 0, 0, 2]);
        assert_eq!(&out[20..24], &[0, 0, 0, 101]);
        assert_eq!(&out[24..28], &0x6553_f100u32.to_be_bytes());
        assert_eq!(&out[28..32], &123_456_789u32.to_be_bytes());
        assert_eq!(&out[32..36], &[0, 0, 0, 2], "incl_len truncated to snaplen");
        assert_eq!(&out[36..40], &[0, 0, 0, 4], "orig_len is the wire length");
        assert_eq!(&out[40..], &[1, 2]);
    }

    #[test]
    fn pcap_orig_len_and_raw_record() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET, true).unwrap();
        w.write_packet_orig_len(-1, &[9; 5], 1500).unwrap();
        w.write_raw_record(1, 2, 1000, 1000, &[7]).unwrap();
        let out = w.finish().unwrap();
        let r = &out[24..];
        // -1 ns is 1969-12-31T23:59:59.999999999.
        assert_eq!(&r[0..4], &u32::MAX.to_le_bytes());
        assert_eq!(&r[4..8], &999_999_999u32.to_le_bytes());
        assert_eq!(&r[8..12], &5u32.to_le_bytes());
        assert_eq!(&r[12..16], &1500u32.to_le_bytes());
        assert_eq!(&r[16..21], &[9; 5]);
        assert_eq!(
            &r[21..37],
            &[1, 0, 0, 0, 2, 0, 0, 0, 0xe8, 3, 0, 0, 0xe8, 3, 0, 0]
        );
        assert_eq!(r.len(), 38);
    }

    /// Walks pcapng blocks checking the framing rules; returns (type, body) pairs.
    fn blocks(mut b: &[u8], be: bool) -> Vec<(u32, Vec<u8>)> {
        let rd = |s: &[u8]| {
            let a: [u8; 4] = s[..4].try_into().unwrap();
            if be {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let mut out = Vec::new();
        while !b.is_empty() {
            let ty = rd(b);
            let len = rd(&b[4..]) as usize;
            assert_eq!(len % 4, 0, "block length {len} not a multiple of 4");
            assert!(len >= 12 && len <= b.len());
            assert_eq!(rd(&b[len - 4..]) as usize, len, "trailing length");
            out.push((ty, b[8..len - 4].to_vec()));
            b = &b[len..];
        }
        out
    }

    #[test]
    fn pcapng_layout() {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        let i0 = w.add_interface(LINKTYPE_ETHERNET, None).unwrap();
        let i1 = w.add_interface(LINKTYPE_LINUX_SLL, Some(9)).unwrap();
        assert_eq!((i0, i1), (0, 1));
        w.write_packet(i0, TS, &[1, 2, 3, 4, 5]).unwrap();
        w.write_packet(i1, TS, &[6; 8]).unwrap();
        w.write_unknown_block(0x0bad_0001, &[1, 2, 3]).unwrap();
        w.write_simple_packet(&[1], 60).unwrap();
        w.write_packet_full(i0, TS, &[1, 2], 2, Some("hello"))
            .unwrap();
        assert_eq!(w.packets(), 4);
        let bytes_counted = w.bytes();
        let out = w.finish().unwrap();
        assert_eq!(bytes_counted, out.len() as u64);

        // Section header block, exactly.
        #[rustfmt::skip]
        let shb: [u8; 28] = [
            0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0,
            0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            28, 0, 0, 0,
        ];
        assert_eq!(&out[..28], &shb);

        let bl = blocks(&out, false);
        let types: Vec<u32> = bl.iter().map(|b| b.0).collect();
        assert_eq!(
            types,
            [
                BLOCK_SHB,
                BLOCK_IDB,
                BLOCK_IDB,
                BLOCK_EPB,
                BLOCK_EPB,
                0x0bad_0001,
                BLOCK_SPB,
                BLOCK_EPB
            ]
        );
        // IDB without options: linktype, reserved, snaplen.
        assert_eq!(bl[1].1, [1, 0, 0, 0, 0, 0, 0, 0]);
        // IDB with if_tsresol 9 then opt_endofopt.
        assert_eq!(
            bl[2].1,
            [113, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );

        // First EPB by hand: 5 bytes of data padded to 8, microsecond timestamp.
        let us = 1_700_000_000_123_456u64;
        let mut want = Vec::new();
        want.extend_from_slice(&6u32.to_le_bytes());
        want.extend_from_slice(&40u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&((us >> 32) as u32).to_le_bytes());
        want.extend_from_slice(&(us as u32).to_le_bytes());
        want.extend_from_slice(&5u32.to_le_bytes());
        want.extend_from_slice(&5u32.to_le_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0]);
        want.extend_from_slice(&40u32.to_le_bytes());
        let epb_start = 28 + 20 + 32;
        assert_eq!(&out[epb_start..epb_start + 40], &want[..]);

        // Second EPB is in nanoseconds.
        let ns = TS as u64;
        let body = &bl[4].1;
        assert_eq!(&body[4..8], &((ns >> 32) as u32).to_le_bytes());
        assert_eq!(&body[8..12], &(ns as u32).to_le_bytes());
        // Unknown block body padded to 4.
        assert_eq!(bl[5].1, [1, 2, 3, 0]);
        // SPB: orig len then padded data.
        assert_eq!(bl[6].1, [60, 0, 0, 0, 1, 0, 0, 0]);
        // EPB with comment: 20 + 4 (data) + 4 + 8 (comment) + 4 (end of options).
        let body = &bl[7].1;
        assert_eq!(body.len(), 20 + 4 + 4 + 8 + 4);
        assert_eq!(&body[24..28], &[1, 0, 5, 0]);
        assert_eq!(&body[28..36], b"hello\0\0\0");
    }

    #[test]
    fn pcapng_big_endian_and_sections() {
        let mut w = PcapNgWriter::with_endianness(Vec::new(), true).unwrap();
        let i = w.add_interface(LINKTYPE_RAW, None).unwrap();
        w.write_packet(i, TS, &[0x45]).unwrap();
        w.new_section().unwrap();
        assert_eq!(w.add_interface(LINKTYPE_ETHERNET, None).unwrap(), 0);
        let out = w.finish().unwrap();
        assert_eq!(&out[8..12], &[0x1a, 0x2b, 0x3c, 0x4d]);
        let types: Vec<u32> = blocks(&out, true).iter().map(|b| b.0).collect();
        assert_eq!(
            types,
            [BLOCK_SHB, BLOCK_IDB, BLOCK_EPB, BLOCK_SHB, BLOCK_IDB]
        );
        assert!(w_err_on_big_linktype());
    }

    fn w_err_on_big_linktype() -> bool {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.add_interface(70_000, None).is_err()
    }

    #[test]
    fn tsresol_conversion() {
        assert_eq!(pcapng_ts_units(TS, None), 1_700_000_000_123_456);
        assert_eq!(pcapng_ts_units(TS, Some(6)), 1_700_000_000_123_456);
        assert_eq!(pcapng_ts_units(TS, Some(9)), TS as u64);
        assert_eq!(pcapng_ts_units(TS, Some(3)), 1_700_000_000_123);
        assert_eq!(pcapng_ts_units(1_500_000_000, Some(12)), 1_500_000_000_000);
        // 2^-10 s: 1.5 s is 1536 units.
        assert_eq!(pcapng_ts_units(1_500_000_000, Some(0x80 | 10)), 1536);
        assert_eq!(pcapng_ts_units(-1, Some(6)), u64::MAX);
    }
}
