//! Offline capture-file reader for synwatch: classic pcap and pcapng, read from a
//! memory-mapped file, an in-memory buffer, or a stream (stdin, gzip), handing out each
//! packet as a [`Packet`] that borrows its bytes from the reader.
//!
//! # Key decision
//!
//! The parsers are written by hand over one byte window instead of going through a
//! general pcap library, for two reasons. Speed: replay has to sustain tens of millions
//! of packets a second, so the hot path ([`CaptureReader::next_packet`] on a memory-mapped
//! classic pcap) is a handful of bounds checks and loads with no copy and no allocation;
//! the packet bytes are borrowed straight out of the map. Robustness: the reader is a fuzz
//! target and reads files from anywhere, so every read goes through `slice::get` or
//! fixed-size chunks, every length taken from the input is checked before it is used in
//! arithmetic, and no single record may exceed [`MAX_RECORD_LEN`] (so a garbage length
//! cannot make the streamed mode allocate gigabytes). No input makes it panic or read out
//! of bounds; bad input is a [`CaptureError`], and after an error the reader is finished
//! (further calls return `Ok(None)`), so a loop over it always terminates.
//!
//! # Layout
//!
//! - `input.rs`: where the bytes come from. A memory map or an owned `Vec` is one
//!   contiguous slice; a stream (gzip, stdin, pipes) is a growable buffer that is refilled
//!   so that each record is contiguous before it is parsed.
//! - `pcap.rs`: classic pcap (micro- and nanosecond magics, both byte orders, and the
//!   "modified" Kuznetzov variant with 24-byte record headers).
//! - `pcapng.rs`: pcapng sections, interface descriptions (`if_tsresol`, `if_tsoffset`,
//!   `if_name`), enhanced, simple and obsolete packet blocks; other blocks are skipped.
//! - `sockets.rs`: not a packet source but its stand-in where capture is not allowed: the
//!   kernel's TCP socket table (netlink sock_diag, or `/proc/net/tcp{,6}`), polled, and the
//!   connections that appear in it.
//! - this file: the public types and the dispatch between the two formats.

mod input;
pub mod live;
mod pcap;
mod pcapng;
pub mod sockets;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use input::Input;

/// The largest record (pcap packet record or pcapng block, headers included) the reader
/// accepts: 256 MiB. Anything claiming to be larger is [`CaptureError::TooLarge`]. Real
/// snap lengths top out at 256 KiB, so this only ever rejects garbage.
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// One captured packet, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Nanoseconds since the Unix epoch (pcapng `if_tsresol` and `if_tsoffset` applied),
    /// saturating at the ends of the `i64` range.
    pub ts_nanos: i64,
    /// The pcap `LINKTYPE_*` of the interface or file, as a raw number.
    pub linktype: u32,
    /// The pcapng interface id within its section (0 for classic pcap).
    pub iface: u32,
    /// The captured bytes (may be shorter than `orig_len`).
    pub data: &'a [u8],
    /// The length of the packet on the wire.
    pub orig_len: u32,
}

/// The kind of capture file being read.
///
/// The "modified pcap" variant (magic `a1b2cd34`) reads as `Pcap { nanos: false, .. }`:
/// it differs only in the size of its record headers, which is the reader's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Classic libpcap format.
    Pcap {
        /// Timestamps carry nanoseconds (magic `a1b23c4d`) rather than microseconds.
        nanos: bool,
        /// The file was written big-endian.
        big_endian: bool,
    },
    /// pcapng (each section carries its own byte order).
    PcapNg,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Pcap { nanos, big_endian } => write!(
                f,
                "pcap ({}, {})",
                if *nanos {
                    "nanoseconds"
                } else {
                    "microseconds"
                },
                if *big_endian {
                    "big-endian"
                } else {
                    "little-endian"
                }
            ),
            Format::PcapNg => f.write_str("pcapng"),
        }
    }
}

/// A capture interface: the one interface of a classic pcap file, or a pcapng Interface
/// Description Block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The pcap `LINKTYPE_*` of packets on this interface.
    pub linktype: u32,
    /// The snapshot length (0 means no limit in pcapng).
    pub snaplen: u32,
    /// The raw `if_tsresol` value: high bit clear means units of 10^-n seconds, set means
    /// 2^-n. 6 (microseconds) when absent; 9 for nanosecond classic pcap.
    pub tsresol: u8,
    /// The `if_tsoffset` value, seconds added to every timestamp (0 when absent).
    pub tsoffset: i64,
    /// The `if_name` option, when present (invalid UTF-8 replaced, trailing NULs trimmed).
    pub name: Option<String>,
}

fn truncated_message(offset: u64, packets: u64) -> String {
    match packets {
        // Cut in the file header or in the first record: no complete packet at all.
        0 => format!("capture is cut short at byte {offset}, before its first packet was complete"),
        1 => format!("capture is cut short at byte {offset} inside a record, after 1 packet"),
        n => format!("capture is cut short at byte {offset} inside a record, after {n} packets"),
    }
}

/// Why a capture could not be read. Each message is one line meant to follow
/// `synwatch: <file>: `.
#[derive(thiserror::Error, Debug)]
pub enum CaptureError {
    /// Opening or reading the input failed (this includes a corrupt gzip stream).
    #[error("{}", io_message(.path.as_deref(), .source))]
    Io {
        /// The file, when the reader was opened from a path.
        path: Option<PathBuf>,
        /// The underlying error.
        source: io::Error,
    },
    /// The input is empty.
    #[error("empty file (no capture header)")]
    Empty,
    /// The input starts with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng capture (starts with 0x{})", hex(.magic))]
    NotACapture {
        /// The first four bytes (zero-padded when the input is shorter).
        magic: [u8; 4],
    },
    /// The input ends in the middle of a header, record or block.
    #[error("{}", truncated_message(*.offset, *.packets))]
    Truncated {
        /// Where the data ends (in the decompressed stream for gzip).
        offset: u64,
        /// How many packets were returned before it.
        packets: u64,
    },
    /// A structural rule of the format is broken.
    #[error("corrupt capture at byte {offset}: {what}")]
    Corrupt {
        /// Where the offending record or block starts (decompressed, for gzip).
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A record or block claims a length over [`MAX_RECORD_LEN`].
    #[error("corrupt capture at byte {offset}: record length {len} exceeds the 256 MiB limit")]
    TooLarge {
        /// Where the record or block starts.
        offset: u64,
        /// The length it claims.
        len: u64,
    },
    /// A pcapng packet names an interface its section has not described.
    #[error(
        "corrupt capture at byte {offset}: packet refers to interface {iface}, but its section describes {described} interface{}",
        if *.described == 1 { "" } else { "s" }
    )]
    NoSuchInterface {
        /// Where the packet block starts.
        offset: u64,
        /// The interface id it names.
        iface: u32,
        /// How many interfaces the section had described by then.
        described: usize,
    },
    /// A pcap major version other than 2, or a pcapng major version other than 1.
    #[error(
        "unsupported capture format version {major}.{minor} (pcap 2.x and pcapng 1.x are supported)"
    )]
    UnsupportedVersion {
        /// Major version from the file header.
        major: u16,
        /// Minor version from the file header.
        minor: u16,
    },
}

fn io_message(path: Option<&Path>, source: &io::Error) -> String {
    match path {
        Some(path) => format!("cannot read {}: {source}", path.display()),
        None => format!("cannot read input: {source}"),
    }
}

fn hex(magic: &[u8; 4]) -> String {
    magic.iter().map(|b| format!("{b:02x}")).collect()
}

enum Parser {
    Pcap(pcap::Pcap),
    PcapNg(pcapng::PcapNg),
}

/// Reads packets from a pcap or pcapng capture, one at a time, without copying them.
///
/// After any error the reader is finished and further calls to
/// [`next_packet`](Self::next_packet) return `Ok(None)`.
pub struct CaptureReader {
    input: Input,
    parser: Parser,
    format: Format,
    packets: u64,
    done: bool,
}

impl fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("input", &self.input)
            .field("format", &self.format)
            .field("packets", &self.packets)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl CaptureReader {
    /// Opens a capture file: memory-mapped when it is a plain regular file, streamed
    /// through a gzip decoder when it starts with the gzip magic (`1f 8b`), and streamed
    /// as-is when it cannot be mapped (pipes, character devices).
    ///
    /// The header is read and checked here, so a file that is not a capture fails now.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        Self::start(Input::open(path)?)
    }

    /// Reads a capture held in memory (gzip is detected and decompressed as it is read).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CaptureError> {
        Self::start(Input::from_bytes(bytes))
    }

    /// Reads a capture from a stream such as stdin (gzip is detected and decompressed).
    pub fn from_reader(reader: Box<dyn io::Read + Send>) -> Result<Self, CaptureError> {
        Self::start(Input::from_reader(reader)?)
    }

    fn start(mut input: Input) -> Result<Self, CaptureError> {
        input.fill(4)?;
        let head = input.rest();
        let magic = match head.first_chunk::<4>() {
            Some(magic) => *magic,
            None if head.is_empty() => return Err(CaptureError::Empty),
            None => {
                let mut padded = [0; 4];
                for (dst, src) in padded.iter_mut().zip(head) {
                    *dst = *src;
                }
                // A few bytes of a real magic are a cut-short capture, not a foreign file.
                let known = pcap::MAGICS
                    .iter()
                    .chain([&pcapng::SHB_TYPE_BYTES])
                    .any(|m| m.starts_with(head));
                return Err(if known {
                    CaptureError::Truncated {
                        offset: input.end_offset(),
                        packets: 0,
                    }
                } else {
                    CaptureError::NotACapture { magic: padded }
                });
            }
        };
        let (parser, format) = if let Some(kind) = pcap::detect(magic) {
            let p = pcap::Pcap::open(kind, &mut input)?;
            let format = p.format();
            (Parser::Pcap(p), format)
        } else if magic == pcapng::SHB_TYPE_BYTES {
            (
                Parser::PcapNg(pcapng::PcapNg::open(&mut input)?),
                Format::PcapNg,
            )
        } else {
            return Err(CaptureError::NotACapture { magic });
        };
        Ok(Self {
            input,
            parser,
            format,
            packets: 0,
            done: false,
        })
    }

    /// The kind of capture being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The next packet, `Ok(None)` at a clean end of the capture (or after an error).
    #[inline]
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, CaptureError> {
        if self.done {
            return Ok(None);
        }
        let result = match &mut self.parser {
            Parser::Pcap(p) => p.next(&mut self.input, self.packets),
            Parser::PcapNg(p) => p.next(&mut self.input, self.packets),
        };
        match result {
            Ok(Some(packet)) => {
                self.packets += 1;
                Ok(Some(packet))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    /// Bytes of the input consumed so far, for a progress bar: of the compressed file for
    /// gzip (read ahead by the decoder's buffer), otherwise up to the end of the last
    /// record returned.
    pub fn position(&self) -> u64 {
        self.input.position()
    }

    /// The size of the input (compressed, for gzip) when known: files and byte buffers,
    /// not pipes.
    pub fn total_len(&self) -> Option<u64> {
        self.input.total_len()
    }

    /// The interfaces described so far in the current pcapng section; the single
    /// interface of a classic pcap file.
    pub fn interfaces(&self) -> &[Interface] {
        match &self.parser {
            Parser::Pcap(p) => p.interfaces(),
            Parser::PcapNg(p) => p.interfaces(),
        }
    }

    /// Whether the next packet (or the end) can be read without waiting for input: always
    /// for files and bytes, and for a stream (a pipe) when its next record has arrived
    /// whole. A reader that batches packets sends its batch on when this is false, so that
    /// a live pipe (`tcpdump -U -w - | ...`) is not held back until more traffic comes.
    pub fn next_is_buffered(&self) -> bool {
        if self.done || !self.input.is_stream() {
            return true;
        }
        let rest = self.input.rest();
        match &self.parser {
            Parser::Pcap(p) => p.next_buffered(rest),
            Parser::PcapNg(p) => p.next_buffered(rest),
        }
    }

    /// How many packets have been returned so far.
    pub fn packets_read(&self) -> u64 {
        self.packets
    }
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
#[allow(
    dead_code,
    reason = "shared with the integration tests, which use all of it"
)]
pub(crate) mod testwriter;

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::testwriter::PcapWriter;

    #[test]
    fn empty_input_is_its_own_error() {
        let err = CaptureReader::from_bytes(Vec::new()).unwrap_err();
        assert!(matches!(err, CaptureError::Empty), "{err}");
    }

    #[test]
    fn short_prefix_of_a_magic_is_truncated_other_bytes_are_not_a_capture() {
        let err = CaptureReader::from_bytes(vec![0xd4, 0xc3]).unwrap_err();
        assert!(
            matches!(
                err,
                CaptureError::Truncated {
                    offset: 2,
                    packets: 0
                }
            ),
            "{err}"
        );
        let err = CaptureReader::from_bytes(b"hi".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng capture (starts with 0x68690000)"
        );
        let err = CaptureReader::from_bytes(b"<html>".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng capture (starts with 0x3c68746d)"
        );
    }

    #[test]
    fn messages_are_single_lines() {
        let errors = [
            CaptureError::Io {
                path: Some(PathBuf::from("/x/y.pcap")),
                source: io::Error::new(io::ErrorKind::NotFound, "No such file"),
            },
            CaptureError::Io {
                path: None,
                source: io::Error::new(io::ErrorKind::NotFound, "No such file"),
            },
            CaptureError::Empty,
            CaptureError::NotACapture {
                magic: [1, 2, 3, 4],
            },
            CaptureError::Truncated {
                offset: 10,
                packets: 2,
            },
            CaptureError::Corrupt {
                offset: 8,
                what: "block length is not a multiple of 4",
            },
            CaptureError::TooLarge {
                offset: 24,
                len: 4_000_000_000,
            },
            CaptureError::NoSuchInterface {
                offset: 100,
                iface: 3,
                described: 1,
            },
            CaptureError::UnsupportedVersion { major: 3, minor: 0 },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.is_empty(), "{msg:?}");
        }
        assert_eq!(
            CaptureError::Io {
                path: Some(PathBuf::from("/x/y.pcap")),
                source: io::Error::new(io::ErrorKind::NotFound, "No such file"),
            }
            .to_string(),
            "cannot read /x/y.pcap: No such file"
        );
        assert_eq!(
            CaptureError::TooLarge {
                offset: 24,
                len: 4_000_000_000
            }
            .to_string(),
            "corrupt capture at byte 24: record length 4000000000 exceeds the 256 MiB limit"
        );
    }

    #[test]
    fn reader_is_fused_after_an_error() {
        let mut w = PcapWriter::new(1, 65535, false, false);
        w.packet(1_000_000_000, b"abcd", 4);
        let mut bytes = w.finish();
        bytes.truncate(bytes.len() - 1);
        let mut r = CaptureReader::from_bytes(bytes).unwrap();
        assert!(matches!(
            r.next_packet(),
            Err(CaptureError::Truncated { packets: 0, .. })
        ));
        assert!(matches!(r.next_packet(), Ok(None)));
        assert!(matches!(r.next_packet(), Ok(None)));
    }

    #[test]
    fn format_display() {
        let f = Format::Pcap {
            nanos: true,
            big_endian: false,
        };
        assert_eq!(f.to_string(), "pcap (nanoseconds, little-endian)");
        assert_eq!(Format::PcapNg.to_string(), "pcapng");
    }

    #[test]
    fn reader_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CaptureReader>();
    }
}
