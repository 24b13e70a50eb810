//! pcapng: a sequence of blocks, each `type, total length, body, total length`, grouped
//! into sections that each start with a Section Header Block carrying the byte order.
//!
//! Every block is framed and validated the same way (length at least 12, a multiple of
//! 4, within [`MAX_RECORD_LEN`], trailing copy equal to the leading one) before its body
//! is looked at, so the per-type parsers only ever see a complete block. Blocks this
//! reader has no use for (name resolution, statistics, custom, ...) are skipped whole.

use crate::input::Input;
use crate::{CaptureError, Interface, MAX_RECORD_LEN, Packet};

/// Longest interface name kept (`if_name`); longer ones are cut.
const MAX_NAME_LEN: usize = 256;
const SHB_TYPE: u32 = 0x0a0d_0d0a;
/// The Section Header Block type is a palindrome, so it reads the same in either order.
pub(crate) const SHB_TYPE_BYTES: [u8; 4] = SHB_TYPE.to_le_bytes();
const IDB_TYPE: u32 = 1;
const PB_TYPE: u32 = 2;
const SPB_TYPE: u32 = 3;
const EPB_TYPE: u32 = 6;

const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

const MIN_BLOCK_LEN: u32 = 12;
/// Fixed part of an SHB: byte-order magic, version, section length.
const SHB_MIN_LEN: usize = 12 + 16;
/// Fixed part of an IDB: link type, reserved, snap length.
const IDB_MIN_LEN: usize = 12 + 8;
/// Fixed part of an EPB (interface, timestamp, two lengths) or an obsolete PB
/// (16-bit interface, drops, timestamp, two lengths): both 20 bytes.
const PACKET_FIXED_LEN: usize = 20;
const PACKET_MIN_LEN: usize = 12 + PACKET_FIXED_LEN;
/// Packet data of an EPB or PB starts after the 8-byte block header and fixed part.
const PACKET_DATA_AT: usize = 8 + PACKET_FIXED_LEN;
/// Fixed part of an SPB: the original length.
const SPB_MIN_LEN: usize = 12 + 4;
const SPB_DATA_AT: usize = 8 + 4;

/// A section may describe this many interfaces. Far beyond any real capture; it bounds
/// the memory a hostile (e.g. highly compressed) input can make the reader hold.
const MAX_INTERFACES: usize = 1 << 20;

const OPT_ENDOFOPT: u16 = 0;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

const DEFAULT_TSRESOL: u8 = 6;

pub(crate) struct PcapNg {
    big_endian: bool,
    interfaces: Vec<Interface>,
    /// Timestamp conversion for each entry of `interfaces`, precomputed from its options.
    clocks: Vec<Clock>,
    /// Simple Packet Blocks have no timestamp; they inherit the previous packet's.
    last_ts: i64,
}

/// A validated block: its type, length and byte order, with the bytes still in `input`.
struct Frame {
    block_type: u32,
    len: usize,
    big_endian: bool,
    offset: u64,
}

impl PcapNg {
    /// Reads the first Section Header Block. A first block with a bad byte-order magic
    /// means the file only happened to start like pcapng, so it is not a capture.
    pub(crate) fn open(input: &mut Input) -> Result<Self, CaptureError> {
        input.fill(12)?;
        let rest = input.rest();
        if let Some([t0, t1, t2, t3, _, _, _, _, m0, m1, m2, m3]) = rest.first_chunk::<12>()
            && byte_order([*m0, *m1, *m2, *m3]).is_none()
        {
            return Err(CaptureError::NotACapture {
                magic: [*t0, *t1, *t2, *t3],
            });
        }
        let mut ng = Self {
            big_endian: false,
            interfaces: Vec::new(),
            clocks: Vec::new(),
            last_ts: 0,
        };
        match ng.frame(input, 0)? {
            Some(frame) if frame.block_type == SHB_TYPE => {
                ng.section(input, &frame)?;
                input.take(frame.len);
                Ok(ng)
            }
            _ => Err(CaptureError::Truncated {
                offset: input.end_offset(),
                packets: 0,
            }),
        }
    }

    pub(crate) fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// Whether `rest` (the input from the cursor on) holds the whole next block, as far as
    /// its length in this section's byte order says (a new section's header in the other
    /// order reads as too long: not buffered).
    pub(crate) fn next_buffered(&self, rest: &[u8]) -> bool {
        let Some(&[_, _, _, _, l0, l1, l2, l3]) = rest.first_chunk::<8>() else {
            return false;
        };
        let len = read_u32(self.big_endian, [l0, l1, l2, l3]);
        (rest.len() as u64) >= u64::from(len.max(12))
    }

    pub(crate) fn next<'a>(
        &mut self,
        input: &'a mut Input,
        packets: u64,
    ) -> Result<Option<Packet<'a>>, CaptureError> {
        loop {
            let Some(frame) = self.frame(input, packets)? else {
                return Ok(None);
            };
            let found = match frame.block_type {
                SHB_TYPE => {
                    self.section(input, &frame)?;
                    None
                }
                IDB_TYPE => {
                    self.interface(input, &frame)?;
                    None
                }
                EPB_TYPE | PB_TYPE => Some(self.packet(input, &frame)?),
                SPB_TYPE => Some(self.simple_packet(input, &frame)?),
                _ => None,
            };
            // `frame` has made the whole block available, so `take` returns all of it.
            // (Taking only in the returning branch keeps the borrow checker happy.)
            if let Some(found) = found {
                let block = input.take(frame.len);
                return Ok(Some(Packet {
                    ts_nanos: found.ts_nanos,
                    linktype: found.linktype,
                    iface: found.iface,
                    data: block.get(found.data_at..found.data_end).unwrap_or_default(),
                    orig_len: found.orig_len,
                }));
            }
            input.take(frame.len);
        }
    }

    /// Reads and validates the next block's framing, making the whole block available.
    /// `Ok(None)` at a clean end of input.
    fn frame(&self, input: &mut Input, packets: u64) -> Result<Option<Frame>, CaptureError> {
        let offset = input.offset();
        // Every block is at least 12 bytes, and 12 covers an SHB's byte-order magic.
        input.fill(12)?;
        let rest = input.rest();
        let Some(&[t0, t1, t2, t3, l0, l1, l2, l3, m0, m1, m2, m3]) = rest.first_chunk::<12>()
        else {
            return if rest.is_empty() {
                Ok(None)
            } else {
                Err(CaptureError::Truncated {
                    offset: input.end_offset(),
                    packets,
                })
            };
        };
        let type_bytes = [t0, t1, t2, t3];
        // A new section may switch byte order, so its own magic decides how to read it.
        let big_endian = if type_bytes == SHB_TYPE_BYTES {
            byte_order([m0, m1, m2, m3]).ok_or(CaptureError::Corrupt {
                offset,
                what: "section header has an unknown byte-order magic",
            })?
        } else {
            self.big_endian
        };
        let block_type = read_u32(big_endian, type_bytes);
        let len_bytes = [l0, l1, l2, l3];
        let len = read_u32(big_endian, len_bytes);
        if len < MIN_BLOCK_LEN {
            return Err(CaptureError::Corrupt {
                offset,
                what: "block length is less than 12 bytes",
            });
        }
        if !len.is_multiple_of(4) {
            return Err(CaptureError::Corrupt {
                offset,
                what: "block length is not a multiple of 4",
            });
        }
        let len_usize = len as usize;
        if len_usize > MAX_RECORD_LEN {
            return Err(CaptureError::TooLarge {
                offset,
                len: u64::from(len),
            });
        }
        input.fill(len_usize)?;
        let Some(block) = input.rest().get(..len_usize) else {
            return Err(CaptureError::Truncated {
                offset: input.end_offset(),
                packets,
            });
        };
        if block.last_chunk::<4>() != Some(&len_bytes) {
            return Err(CaptureError::Corrupt {
                offset,
                what: "block's trailing length differs from its leading length",
            });
        }
        Ok(Some(Frame {
            block_type,
            len: len_usize,
            big_endian,
            offset,
        }))
    }

    /// The block's bytes; `frame` has made them available.
    fn block<'i>(input: &'i Input, frame: &Frame) -> &'i [u8] {
        input.rest().get(..frame.len).unwrap_or_default()
    }

    fn section(&mut self, input: &Input, frame: &Frame) -> Result<(), CaptureError> {
        let block = Self::block(input, frame);
        if block.len() < SHB_MIN_LEN {
            return Err(corrupt(frame, "section header block is too short"));
        }
        let be = frame.big_endian;
        let major = read_u16(be, field(block, 12));
        let minor = read_u16(be, field(block, 14));
        if major != 1 {
            return Err(CaptureError::UnsupportedVersion { major, minor });
        }
        self.big_endian = be;
        self.interfaces.clear();
        self.clocks.clear();
        Ok(())
    }

    fn interface(&mut self, input: &Input, frame: &Frame) -> Result<(), CaptureError> {
        let block = Self::block(input, frame);
        if block.len() < IDB_MIN_LEN {
            return Err(corrupt(frame, "interface description block is too short"));
        }
        if self.interfaces.len() >= MAX_INTERFACES {
            return Err(corrupt(
                frame,
                "more than 1048576 interfaces in one section",
            ));
        }
        let be = self.big_endian;
        let mut iface = Interface {
            linktype: u32::from(read_u16(be, field(block, 8))),
            snaplen: read_u32(be, field(block, 12)),
            tsresol: DEFAULT_TSRESOL,
            tsoffset: 0,
            name: None,
        };
        let options = block
            .get(IDB_MIN_LEN - 4..block.len().saturating_sub(4))
            .unwrap_or_default();
        for_each_option(options, be, |code, value| match code {
            OPT_IF_NAME => {
                // Names are kept short: a hostile file may describe a million
                // interfaces, each with a 64 KiB name.
                let value = &value[..value.len().min(MAX_NAME_LEN)];
                let name = String::from_utf8_lossy(value);
                iface.name = Some(name.trim_end_matches('\0').to_owned());
            }
            OPT_IF_TSRESOL => {
                if let Some(&r) = value.first() {
                    iface.tsresol = r;
                }
            }
            OPT_IF_TSOFFSET => {
                if let Some(&v) = value.first_chunk::<8>() {
                    iface.tsoffset = if be {
                        i64::from_be_bytes(v)
                    } else {
                        i64::from_le_bytes(v)
                    };
                }
            }
            _ => {}
        })
        .map_err(|what| corrupt(frame, what))?;
        self.clocks.push(Clock::new(iface.tsresol, iface.tsoffset));
        self.interfaces.push(iface);
        Ok(())
    }

    /// An Enhanced Packet Block, or the obsolete Packet Block (same layout but for a
    /// 16-bit interface id followed by a drops counter).
    fn packet(&mut self, input: &Input, frame: &Frame) -> Result<Found, CaptureError> {
        let block = Self::block(input, frame);
        if block.len() < PACKET_MIN_LEN {
            return Err(corrupt(frame, "packet block is too short"));
        }
        let be = self.big_endian;
        let iface = if frame.block_type == PB_TYPE {
            u32::from(read_u16(be, field(block, 8)))
        } else {
            read_u32(be, field(block, 8))
        };
        let ts_high = read_u32(be, field(block, 12));
        let ts_low = read_u32(be, field(block, 16));
        let caplen = read_u32(be, field(block, 20));
        let orig_len = read_u32(be, field(block, 24));
        // The block is at least PACKET_MIN_LEN long, so this cannot underflow.
        let room = block.len() - PACKET_MIN_LEN;
        let caplen_usize = caplen as usize;
        if caplen_usize > room {
            return Err(corrupt(
                frame,
                "captured length runs past the end of its block",
            ));
        }
        let (linktype, clock) = self.lookup(frame, iface)?;
        let units = (u64::from(ts_high) << 32) | u64::from(ts_low);
        let ts_nanos = clock.to_nanos(units);
        self.last_ts = ts_nanos;
        Ok(Found {
            ts_nanos,
            linktype,
            iface,
            data_at: PACKET_DATA_AT,
            data_end: PACKET_DATA_AT + caplen_usize,
            orig_len,
        })
    }

    /// A Simple Packet Block: interface 0, no timestamp, captured length implied by the
    /// original length, the snap length and the block size.
    fn simple_packet(&mut self, input: &Input, frame: &Frame) -> Result<Found, CaptureError> {
        let block = Self::block(input, frame);
        if block.len() < SPB_MIN_LEN {
            return Err(corrupt(frame, "simple packet block is too short"));
        }
        let orig_len = read_u32(self.big_endian, field(block, 8));
        let (linktype, _) = self.lookup(frame, 0)?;
        let snaplen = self.interfaces.first().map_or(0, |i| i.snaplen);
        // The block is at least SPB_MIN_LEN long, so this cannot underflow.
        let room = block.len() - SPB_MIN_LEN;
        let mut caplen = (orig_len as usize).min(room);
        if snaplen != 0 {
            caplen = caplen.min(snaplen as usize);
        }
        Ok(Found {
            ts_nanos: self.last_ts,
            linktype,
            iface: 0,
            data_at: SPB_DATA_AT,
            data_end: SPB_DATA_AT + caplen,
            orig_len,
        })
    }

    fn lookup(&self, frame: &Frame, iface: u32) -> Result<(u32, Clock), CaptureError> {
        match (
            self.interfaces.get(iface as usize),
            self.clocks.get(iface as usize),
        ) {
            (Some(i), Some(c)) => Ok((i.linktype, *c)),
            _ => Err(CaptureError::NoSuchInterface {
                offset: frame.offset,
                iface,
                described: self.interfaces.len(),
            }),
        }
    }
}

/// What a packet block says, with the data's place inside the block.
struct Found {
    ts_nanos: i64,
    linktype: u32,
    iface: u32,
    data_at: usize,
    data_end: usize,
    orig_len: u32,
}

fn corrupt(frame: &Frame, what: &'static str) -> CaptureError {
    CaptureError::Corrupt {
        offset: frame.offset,
        what,
    }
}

fn byte_order(magic: [u8; 4]) -> Option<bool> {
    if u32::from_be_bytes(magic) == BYTE_ORDER_MAGIC {
        Some(true)
    } else if u32::from_le_bytes(magic) == BYTE_ORDER_MAGIC {
        Some(false)
    } else {
        None
    }
}

/// `N` bytes at `at`, zeros if out of range (callers check block sizes first, so the
/// zeros are never actually used; they only avoid a panic path).
fn field<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    block
        .get(at..)
        .and_then(|b| b.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}

fn read_u16(big_endian: bool, b: [u8; 2]) -> u16 {
    if big_endian {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}

pub(crate) fn read_u32(big_endian: bool, b: [u8; 4]) -> u32 {
    if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// Calls `f(code, value)` for each option up to `opt_endofopt` or the end of the area.
fn for_each_option(
    mut area: &[u8],
    big_endian: bool,
    mut f: impl FnMut(u16, &[u8]),
) -> Result<(), &'static str> {
    while let Some((&[c0, c1, l0, l1], tail)) = area.split_first_chunk::<4>() {
        let code = read_u16(big_endian, [c0, c1]);
        if code == OPT_ENDOFOPT {
            break;
        }
        let len = usize::from(read_u16(big_endian, [l0, l1]));
        let Some(value) = tail.get(..len) else {
            return Err("an option runs past the end of its block");
        };
        f(code, value);
        // Values are padded to 4 bytes; a missing final pad just ends the area.
        area = tail.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(())
}

/// How one interface's timestamp units become nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock {
    scale: Scale,
    /// `if_tsoffset` in nanoseconds; i128 so any i64 of seconds fits.
    offset_nanos: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Units of 10^-n s with n <= 9: multiply by 10^(9-n).
    Mul(u64),
    /// Units of 10^-n s with 9 < n <= 28: divide by 10^(n-9).
    Div(u64),
    /// Units of 10^-n s with n > 28: any u64 count of them is under a nanosecond.
    Zero,
    /// Units of 2^-n s: multiply by 10^9, shift right by n.
    Shift(u32),
}

impl Clock {
    fn new(tsresol: u8, tsoffset: i64) -> Self {
        let scale = if tsresol & 0x80 == 0 {
            let n = u32::from(tsresol);
            if n <= 9 {
                10u64.checked_pow(9 - n).map_or(Scale::Zero, Scale::Mul)
            } else {
                // 10^19 is the largest power of ten in a u64; beyond it the quotient of
                // any u64 is zero.
                10u64.checked_pow(n - 9).map_or(Scale::Zero, Scale::Div)
            }
        } else {
            Scale::Shift(u32::from(tsresol & 0x7f))
        };
        Self {
            scale,
            offset_nanos: i128::from(tsoffset) * 1_000_000_000,
        }
    }

    /// Exact in 128 bits (u64 units times 10^9 stays below 2^94), then saturated to i64.
    #[inline]
    fn to_nanos(self, units: u64) -> i64 {
        let nanos: u128 = match self.scale {
            Scale::Mul(m) => u128::from(units) * u128::from(m),
            Scale::Div(d) => u128::from(units.checked_div(d).unwrap_or(0)),
            Scale::Zero => 0,
            Scale::Shift(s) => (u128::from(units) * 1_000_000_000)
                .checked_shr(s)
                .unwrap_or(0),
        };
        let total = i128::try_from(nanos)
            .unwrap_or(i128::MAX)
            .saturating_add(self.offset_nanos);
        i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::CaptureReader;
    use crate::testwriter::NgWriter;

    #[test]
    fn clock_scales() {
        let c = |r, off| Clock::new(r, off);
        assert_eq!(c(6, 0).to_nanos(1_500_000), 1_500_000_000);
        assert_eq!(c(9, 0).to_nanos(42), 42);
        assert_eq!(c(0, 0).to_nanos(3), 3_000_000_000);
        assert_eq!(c(12, 0).to_nanos(5_000), 5);
        assert_eq!(c(0x80 | 10, 0).to_nanos(1024), 1_000_000_000);
        assert_eq!(c(0x80 | 20, 0).to_nanos(1 << 20), 1_000_000_000);
        assert_eq!(c(0x80, 0).to_nanos(2), 2_000_000_000);
        assert_eq!(c(6, 10).to_nanos(1), 10_000_001_000);
        assert_eq!(c(6, -10).to_nanos(1), -9_999_999_000);
    }

    #[test]
    fn extreme_resolutions_and_offsets_saturate() {
        // Too coarse: saturate at the top.
        assert_eq!(Clock::new(0, 0).to_nanos(u64::MAX), i64::MAX);
        assert_eq!(Clock::new(0x80, 0).to_nanos(u64::MAX), i64::MAX);
        // Too fine: everything rounds to zero.
        assert_eq!(Clock::new(30, 0).to_nanos(u64::MAX), 0);
        assert_eq!(Clock::new(127, 0).to_nanos(u64::MAX), 0);
        assert_eq!(Clock::new(0x80 | 100, 0).to_nanos(u64::MAX), 0);
        assert_eq!(Clock::new(0x80 | 127, 0).to_nanos(u64::MAX), 0);
        assert_eq!(Clock::new(28, 0).to_nanos(u64::MAX), 1);
        assert_eq!(Clock::new(29, 0).to_nanos(u64::MAX), 0);
        assert_eq!(Clock::new(19, 0).to_nanos(u64::MAX), 1_844_674_407);
        // Offsets at the ends of i64 saturate instead of wrapping.
        assert_eq!(Clock::new(6, i64::MAX).to_nanos(u64::MAX), i64::MAX);
        assert_eq!(Clock::new(6, i64::MIN).to_nanos(0), i64::MIN);
        for r in 0..=255u8 {
            for off in [i64::MIN, -1, 0, 1, i64::MAX] {
                for units in [0, 1, u64::MAX] {
                    let _ = Clock::new(r, off).to_nanos(units);
                }
            }
        }
    }

    #[test]
    fn options_parse_and_reject_overruns() {
        let mut area = Vec::new();
        area.extend_from_slice(&2u16.to_le_bytes());
        area.extend_from_slice(&3u16.to_le_bytes());
        area.extend_from_slice(b"eth\0");
        area.extend_from_slice(&9u16.to_le_bytes());
        area.extend_from_slice(&1u16.to_le_bytes());
        area.extend_from_slice(&[9, 0, 0, 0]);
        area.extend_from_slice(&[0; 4]);
        area.extend_from_slice(&[0xff; 8]); // after opt_endofopt: ignored
        let mut seen = Vec::new();
        for_each_option(&area, false, |c, v| seen.push((c, v.to_vec()))).unwrap();
        assert_eq!(seen, vec![(2, b"eth".to_vec()), (9, vec![9])]);

        let bad = [2, 0, 200, 0, b'x'];
        assert!(for_each_option(&bad, false, |_, _| {}).is_err());
        // A last option without its padding is fine.
        let unpadded = [2, 0, 1, 0, b'x'];
        assert!(for_each_option(&unpadded, false, |_, _| {}).is_ok());
    }

    #[test]
    fn block_framing_errors() {
        fn first_error(tweak: impl Fn(&mut Vec<u8>)) -> CaptureError {
            let mut w = NgWriter::new(false);
            w.shb();
            w.idb(1, 0, None, None, None);
            let at = w.offset();
            w.epb(0, 1, b"abcd", 4);
            let mut bytes = w.finish();
            let mut block = bytes[at..].to_vec();
            tweak(&mut block);
            bytes.truncate(at);
            bytes.extend_from_slice(&block);
            let mut r = CaptureReader::from_bytes(bytes).unwrap();
            r.next_packet().unwrap_err()
        }
        let msg = |e: CaptureError| e.to_string();
        let at = 28 + 20;
        assert_eq!(
            msg(first_error(
                |b| b[4..8].copy_from_slice(&33u32.to_le_bytes())
            )),
            format!("corrupt capture at byte {at}: block length is not a multiple of 4")
        );
        assert_eq!(
            msg(first_error(|b| b[4..8].copy_from_slice(&8u32.to_le_bytes()))),
            format!("corrupt capture at byte {at}: block length is less than 12 bytes")
        );
        assert_eq!(
            msg(first_error(|b| {
                let n = b.len();
                b[n - 4..].copy_from_slice(&0u32.to_le_bytes());
            })),
            format!(
                "corrupt capture at byte {at}: block's trailing length differs from its leading length"
            )
        );
        assert_eq!(
            msg(first_error(
                |b| b[20..24].copy_from_slice(&5u32.to_le_bytes())
            )),
            format!("corrupt capture at byte {at}: captured length runs past the end of its block")
        );
        assert_eq!(
            msg(first_error(
                |b| b[8..12].copy_from_slice(&3u32.to_le_bytes())
            )),
            format!(
                "corrupt capture at byte {at}: packet refers to interface 3, but its section describes 1 interface"
            )
        );
        assert_eq!(
            msg(first_error(
                |b| b[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes())
            )),
            format!(
                "corrupt capture at byte {at}: record length 4294967280 exceeds the 256 MiB limit"
            )
        );
    }

    #[test]
    fn bad_first_byte_order_magic_is_not_a_capture() {
        let mut bytes = b"\n\r\r\n".to_vec();
        bytes.extend_from_slice(&[28, 0, 0, 0]);
        bytes.extend_from_slice(b"text text text text text");
        let err = CaptureReader::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, CaptureError::NotACapture { .. }), "{err}");
    }

    #[test]
    fn unsupported_section_version() {
        let mut w = NgWriter::new(true);
        w.shb();
        let mut bytes = w.finish();
        bytes[12..14].copy_from_slice(&2u16.to_be_bytes());
        let err = CaptureReader::from_bytes(bytes).unwrap_err();
        assert!(
            matches!(err, CaptureError::UnsupportedVersion { major: 2, minor: 0 }),
            "{err}"
        );
    }

    #[test]
    fn simple_packet_uses_interface_zero_and_previous_timestamp() {
        let mut w = NgWriter::new(false);
        w.shb();
        w.idb(101, 3, None, None, None);
        w.spb(b"abcdef", 6); // snaplen 3 limits the captured bytes
        w.epb(0, 7, b"xy", 2);
        w.spb(b"q", 1);
        let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.ts_nanos, p.linktype, p.iface, p.data, p.orig_len),
            (0, 101, 0, &b"abc"[..], 6)
        );
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.ts_nanos, 7_000);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.ts_nanos, p.data), (7_000, &b"q"[..]));
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn simple_packet_without_interface_is_an_error() {
        let mut w = NgWriter::new(false);
        w.shb();
        w.spb(b"abcd", 4);
        let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
        let err = r.next_packet().unwrap_err();
        assert!(
            matches!(
                err,
                CaptureError::NoSuchInterface {
                    iface: 0,
                    described: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn obsolete_packet_block() {
        let mut w = NgWriter::new(true);
        w.shb();
        w.idb(1, 0, None, None, None);
        w.idb(105, 0, Some(9), None, Some("wlan0"));
        w.pb(1, 1_000_000_001, b"hello", 50);
        let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.ts_nanos, p.linktype, p.iface, p.data, p.orig_len),
            (1_000_000_001, 105, 1, &b"hello"[..], 50)
        );
        assert_eq!(r.interfaces()[1].name.as_deref(), Some("wlan0"));
    }

    #[test]
    fn long_interface_names_are_cut_to_bound_memory() {
        let long = "x".repeat(10_000);
        let mut w = NgWriter::new(false);
        w.shb();
        w.idb(1, 0, None, None, Some(&long));
        w.epb(0, 1, b"hello", 5);
        let mut r = CaptureReader::from_bytes(w.finish()).unwrap();
        assert!(r.next_packet().unwrap().is_some());
        assert_eq!(
            r.interfaces()[0].name.as_deref().map(str::len),
            Some(MAX_NAME_LEN)
        );
    }
}
