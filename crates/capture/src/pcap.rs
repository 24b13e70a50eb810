//! Classic libpcap files: a 24-byte file header, then records of a 16-byte header
//! (seconds, fraction, captured length, original length) and the captured bytes.
//!
//! This is the hot path of replay, so [`Pcap::next`] is written to do one `fill` (a
//! no-op unless streaming), one fixed-size header load, one length check and one
//! sub-slice per packet.

use std::slice;

use crate::input::Input;
use crate::pcapng::read_u32;
use crate::{CaptureError, Format, Interface, MAX_RECORD_LEN, Packet};

const MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const MAGIC_NANO: u32 = 0xa1b2_3c4d;
/// Alexey Kuznetzov's patched libpcap: same file header, 24-byte record headers
/// (interface index, protocol and packet type appended), microsecond timestamps.
const MAGIC_MODIFIED: u32 = 0xa1b2_cd34;

/// Every magic in both byte orders, as they appear at the start of a file.
pub(crate) const MAGICS: [[u8; 4]; 6] = [
    MAGIC_MICRO.to_le_bytes(),
    MAGIC_MICRO.to_be_bytes(),
    MAGIC_NANO.to_le_bytes(),
    MAGIC_NANO.to_be_bytes(),
    MAGIC_MODIFIED.to_le_bytes(),
    MAGIC_MODIFIED.to_be_bytes(),
];

const FILE_HEADER_LEN: usize = 24;

/// The pcap spec puts FCS information in the top bits of the link-type field (4 bits of
/// FCS length, a reserved bit, an FCS-present bit) and reserves bits 16-25; libpcap's
/// `LT_LINKTYPE` masks with this value, and so do we, so a file written with FCS
/// annotations reports its plain `LINKTYPE_*`.
const LINKTYPE_MASK: u32 = 0x03ff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    big_endian: bool,
    nanos: bool,
    modified: bool,
}

/// Recognises a pcap magic number in either byte order.
pub(crate) fn detect(magic: [u8; 4]) -> Option<Kind> {
    let (value, big_endian) = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
        (v @ (MAGIC_MICRO | MAGIC_NANO | MAGIC_MODIFIED), _) => (v, false),
        (_, v @ (MAGIC_MICRO | MAGIC_NANO | MAGIC_MODIFIED)) => (v, true),
        _ => return None,
    };
    Some(Kind {
        big_endian,
        nanos: value == MAGIC_NANO,
        modified: value == MAGIC_MODIFIED,
    })
}

pub(crate) struct Pcap {
    kind: Kind,
    record_header_len: usize,
    /// Multiplier from the fraction field to nanoseconds.
    frac_to_nanos: i64,
    interface: Interface,
}

impl Pcap {
    /// Reads and checks the file header.
    pub(crate) fn open(kind: Kind, input: &mut Input) -> Result<Self, CaptureError> {
        input.fill(FILE_HEADER_LEN)?;
        let Some(header) = input.rest().first_chunk::<FILE_HEADER_LEN>() else {
            return Err(CaptureError::Truncated {
                offset: input.end_offset(),
                packets: 0,
            });
        };
        let [
            _,
            _,
            _,
            _,
            v0,
            v1,
            v2,
            v3,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            s0,
            s1,
            s2,
            s3,
            l0,
            l1,
            l2,
            l3,
        ] = *header;
        let u16_ = |b| {
            if kind.big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let u32_ = |b| {
            if kind.big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        let (major, minor) = (u16_([v0, v1]), u16_([v2, v3]));
        if major != 2 {
            return Err(CaptureError::UnsupportedVersion { major, minor });
        }
        // The `thiszone` and `sigfigs` fields are ignored, as libpcap does: writers leave
        // them zero and timestamps are UTC.
        let snaplen = u32_([s0, s1, s2, s3]);
        let linktype = u32_([l0, l1, l2, l3]) & LINKTYPE_MASK;
        input.take(FILE_HEADER_LEN);
        Ok(Self {
            kind,
            record_header_len: if kind.modified { 24 } else { 16 },
            frac_to_nanos: if kind.nanos { 1 } else { 1_000 },
            interface: Interface {
                linktype,
                snaplen,
                tsresol: if kind.nanos { 9 } else { 6 },
                tsoffset: 0,
                name: None,
            },
        })
    }

    pub(crate) fn format(&self) -> Format {
        Format::Pcap {
            nanos: self.kind.nanos,
            big_endian: self.kind.big_endian,
        }
    }

    pub(crate) fn interfaces(&self) -> &[Interface] {
        slice::from_ref(&self.interface)
    }

    /// Whether `rest` (the input from the cursor on) holds the whole next record.
    pub(crate) fn next_buffered(&self, rest: &[u8]) -> bool {
        let Some(&[.., c0, c1, c2, c3, _, _, _, _]) = rest.first_chunk::<16>() else {
            return false;
        };
        let caplen = read_u32(self.kind.big_endian, [c0, c1, c2, c3]);
        (rest.len() as u64) >= self.record_header_len as u64 + u64::from(caplen)
    }

    #[inline]
    pub(crate) fn next<'a>(
        &self,
        input: &'a mut Input,
        packets: u64,
    ) -> Result<Option<Packet<'a>>, CaptureError> {
        let hdr_len = self.record_header_len;
        input.fill(hdr_len)?;
        let rest = input.rest();
        let avail = rest.len();
        let header = match rest.first_chunk::<16>() {
            Some(h) if avail >= hdr_len => *h,
            _ if avail == 0 => return Ok(None),
            _ => return Err(truncated(input, packets)),
        };
        let [
            s0,
            s1,
            s2,
            s3,
            f0,
            f1,
            f2,
            f3,
            c0,
            c1,
            c2,
            c3,
            o0,
            o1,
            o2,
            o3,
        ] = header;
        let be = self.kind.big_endian;
        let u32_ = |b| read_u32(be, b);
        let caplen = u32_([c0, c1, c2, c3]);
        let caplen_usize = caplen as usize;
        if caplen_usize > MAX_RECORD_LEN {
            return Err(CaptureError::TooLarge {
                offset: input.offset(),
                len: u64::from(caplen),
            });
        }
        // Cannot overflow: both terms are bounded far below usize::MAX.
        let total = hdr_len + caplen_usize;
        if avail < total {
            input.fill(total)?;
            if input.rest().len() < total {
                return Err(truncated(input, packets));
            }
        }
        // Seconds are unsigned in the pcap spec; u32::MAX seconds in nanoseconds (4.3e18)
        // plus a u32 fraction times 1000 stays below i64::MAX, so plain arithmetic is safe.
        let ts_nanos = i64::from(u32_([s0, s1, s2, s3])) * 1_000_000_000
            + i64::from(u32_([f0, f1, f2, f3])) * self.frac_to_nanos;
        let orig_len = u32_([o0, o1, o2, o3]);
        let linktype = self.interface.linktype;
        let record = input.take(total);
        Ok(Some(Packet {
            ts_nanos,
            linktype,
            iface: 0,
            data: record.get(hdr_len..).unwrap_or_default(),
            orig_len,
        }))
    }
}

#[cold]
fn truncated(input: &Input, packets: u64) -> CaptureError {
    CaptureError::Truncated {
        offset: input.end_offset(),
        packets,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use crate::testwriter::PcapWriter;
    use crate::{CaptureError, CaptureReader, Format, MAX_RECORD_LEN};

    #[test]
    fn detects_all_magics_in_both_orders() {
        for big_endian in [false, true] {
            for nanos in [false, true] {
                let w = PcapWriter::new(1, 65535, big_endian, nanos);
                let r = CaptureReader::from_bytes(w.finish()).unwrap();
                assert_eq!(r.format(), Format::Pcap { nanos, big_endian });
            }
        }
    }

    #[test]
    fn reads_micro_and_nano_records() {
        for big_endian in [false, true] {
            for nanos in [false, true] {
                let mut w = PcapWriter::new(101, 65535, big_endian, nanos);
                w.packet(1_700_000_000_123_456_789, b"\x45abc", 60);
                w.packet(0, b"", 0);
                let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
                let p = r.next_packet().unwrap().unwrap();
                let want_ts = if nanos {
                    1_700_000_000_123_456_789
                } else {
                    1_700_000_000_123_456_000
                };
                assert_eq!(p.ts_nanos, want_ts);
                assert_eq!(
                    (p.linktype, p.iface, p.data, p.orig_len),
                    (101, 0, &b"\x45abc"[..], 60)
                );
                let p = r.next_packet().unwrap().unwrap();
                assert_eq!((p.ts_nanos, p.data, p.orig_len), (0, &b""[..], 0));
                assert!(r.next_packet().unwrap().is_none());
                assert_eq!(r.interfaces().len(), 1);
                assert_eq!(r.interfaces()[0].tsresol, if nanos { 9 } else { 6 });
            }
        }
    }

    #[test]
    fn max_seconds_and_fraction_do_not_overflow() {
        let mut bytes = PcapWriter::new(1, 65535, false, false).finish();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let mut r = CaptureReader::from_bytes(bytes).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            p.ts_nanos,
            i64::from(u32::MAX) * 1_000_000_000 + i64::from(u32::MAX) * 1_000
        );
    }

    #[test]
    fn fcs_bits_are_masked_off_the_linktype() {
        let mut bytes = PcapWriter::new(1, 65535, false, false).finish();
        bytes[20..24].copy_from_slice(&(0x1000_0000u32 | 0x0400_0000 | 1).to_le_bytes());
        let r = CaptureReader::from_bytes(bytes).unwrap();
        assert_eq!(r.interfaces()[0].linktype, 1);
    }

    #[test]
    fn version_other_than_2_is_unsupported() {
        let mut bytes = PcapWriter::new(1, 65535, true, false).finish();
        bytes[4..6].copy_from_slice(&3u16.to_be_bytes());
        let err = CaptureReader::from_bytes(bytes.clone()).unwrap_err();
        assert!(
            matches!(err, CaptureError::UnsupportedVersion { major: 3, minor: 4 }),
            "{err}"
        );
        // Minor versions other than 4 are read as usual.
        bytes[4..8].copy_from_slice(&[0, 2, 0, 2]);
        assert!(CaptureReader::from_bytes(bytes).is_ok());
    }

    #[test]
    fn huge_caplen_is_rejected_before_reading() {
        let mut bytes = PcapWriter::new(1, 65535, false, false).finish();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&4_000_000_000u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let mut r = CaptureReader::from_bytes(bytes).unwrap();
        let err = r.next_packet().unwrap_err();
        assert!(
            matches!(
                err,
                CaptureError::TooLarge {
                    offset: 24,
                    len: 4_000_000_000
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_limit_itself_is_allowed() {
        for (caplen, too_large) in [(MAX_RECORD_LEN, false), (MAX_RECORD_LEN + 1, true)] {
            let mut bytes = PcapWriter::new(1, 65535, false, false).finish();
            bytes.extend_from_slice(&[0; 8]);
            bytes.extend_from_slice(&u32::try_from(caplen).unwrap().to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            let mut r = CaptureReader::from_bytes(bytes).unwrap();
            match r.next_packet().unwrap_err() {
                CaptureError::TooLarge { .. } => assert!(too_large),
                CaptureError::Truncated { offset: 40, .. } => assert!(!too_large),
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn modified_pcap_has_24_byte_record_headers() {
        let mut bytes = PcapWriter::new(1, 65535, false, false).finish();
        bytes[0..4].copy_from_slice(&0xa1b2_cd34u32.to_le_bytes());
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&70u32.to_le_bytes());
        bytes.extend_from_slice(&[9; 8]); // ifindex, protocol, pkt_type, pad
        bytes.extend_from_slice(b"xyz");
        let mut r = CaptureReader::from_bytes(bytes).unwrap();
        assert_eq!(
            r.format(),
            Format::Pcap {
                nanos: false,
                big_endian: false
            }
        );
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.ts_nanos, p.data, p.orig_len),
            (5_000_006_000, &b"xyz"[..], 70)
        );
        assert!(r.next_packet().unwrap().is_none());
    }
}
