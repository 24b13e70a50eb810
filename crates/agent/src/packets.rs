//! From captured packets to TCP and UDP segments: what replay and inventory share.
//!
//! Capture files are one source: opened (`-` is stdin), put in the time order of their
//! first packets so that rotated captures make one stream of time, read packet by
//! packet ([`each_packet`]) or, several at once, merged by timestamp ([`each_merged`]),
//! and named in messages ([`input_error`]). [`Segments`] is the
//! decode step every packet goes through, from files or live: its link type resolved
//! per packet (in pcapng each interface has its own), then decoded, with or without
//! fragment reassembly.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use synwatch_capture::{CaptureError, CaptureReader, Packet};
use synwatch_decode::{
    DecodeError, Decoded, LinkType, Reassembler, ReassemblyLimits, ReassemblyStats, decode,
    decode_cut,
};
use synwatch_detect::Nanos;

/// Opens a capture file; `-` reads stdin.
pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
    if path.as_os_str() == "-" {
        CaptureReader::from_reader(Box::new(io::stdin()))
    } else {
        CaptureReader::open(path)
    }
}

/// Where a file goes in the time order ([`time_order_first`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum First {
    /// A stream (stdin, a pipe), which cannot be looked into ahead: first.
    Stream,
    /// A regular file whose first packet is stamped at this time.
    At(i64),
    /// A file without a first packet (unreadable, not a capture, or empty): last, where
    /// its error comes.
    Unread,
}

/// The files in the order of their first packets' timestamps, so that rotated captures
/// given in any order (`cap-10.pcap cap-2.pcap`, as a shell glob sorts them) replay as
/// one stream of time. Streams (stdin, a pipe), which can be read only once, come first;
/// files whose first packet cannot be read come last, where their errors are reported.
pub fn time_order(files: &[PathBuf]) -> Vec<&PathBuf> {
    time_order_first(files)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// [`time_order`], each file with where it goes.
pub fn time_order_first(files: &[PathBuf]) -> Vec<(First, &PathBuf)> {
    let place = |path: &PathBuf| -> First {
        // Only regular files can be read twice: a pipe, FIFO or /dev/stdin would lose
        // what the peek consumed.
        if path.as_os_str() == "-" {
            return First::Stream;
        }
        match std::fs::metadata(path) {
            Err(_) => return First::Unread,
            Ok(m) if !m.is_file() => return First::Stream,
            Ok(_) => {}
        }
        let first = CaptureReader::open(path).ok().and_then(|mut reader| {
            let packet = reader.next_packet().ok().flatten();
            packet.map(|p| p.ts_nanos)
        });
        first.map_or(First::Unread, First::At)
    };
    let mut keyed: Vec<(First, &PathBuf)> = files.iter().map(|p| (place(p), p)).collect();
    /// The files that hold packets, in the order of `keyed`.
    fn timed<'a>(keyed: &[(First, &'a PathBuf)]) -> Vec<&'a PathBuf> {
        let timed = keyed.iter().filter(|(at, _)| matches!(at, First::At(_)));
        timed.map(|&(_, p)| p).collect()
    }
    let given = timed(&keyed);
    keyed.sort_by_key(|a| a.0);
    // Said only when files that hold packets were reordered: one that cannot be read
    // is its own error line, wherever it was.
    let reordered = timed(&keyed);
    if reordered != given {
        let names: Vec<String> = reordered
            .iter()
            .map(|p| display_name(p).to_string())
            .collect();
        tracing::info!(
            "replaying in the time order of the files' first packets: {}",
            names.join(", ")
        );
    }
    keyed
}

/// How a file is named in messages (`-` is stdin).
pub fn display_name(path: &Path) -> std::path::Display<'_> {
    if path.as_os_str() == "-" {
        Path::new("stdin").display()
    } else {
        path.display()
    }
}

/// The message for a capture error, naming the file unless the error already does.
pub fn input_error(path: &Path, e: &CaptureError) -> String {
    let path = display_name(path);
    match e {
        CaptureError::Io { path: Some(_), .. } => e.to_string(),
        CaptureError::Truncated { packets: 1.., .. } => {
            format!("{path}: {e}; every packet before it was replayed")
        }
        _ => format!("{path}: {e}"),
    }
}

/// Shows how far the reading has got (replay's progress bar on a terminal); `()` shows
/// nothing.
pub trait Progress {
    /// `position` is the byte offset in the current file; `file_done` moves on to the next.
    fn tick(&mut self, position: u64, file_done: bool);
    /// Takes the progress off the screen, before a message or at the end.
    fn clear(&mut self);
}

impl Progress for () {
    fn tick(&mut self, _position: u64, _file_done: bool) {}
    fn clear(&mut self) {}
}

/// Every packet of the capture file at `path`, in order, to `each`, until the file ends
/// (`Ok(None)`) or `each` breaks (`Ok(Some)` with its value). A file that cannot be
/// opened, or turns out bad part-way, is the message naming it ([`input_error`]); the
/// packets before the bad one were handed over.
pub fn each_packet<B>(
    path: &Path,
    progress: &mut impl Progress,
    mut each: impl FnMut(Packet<'_>) -> ControlFlow<B>,
) -> Result<Option<B>, String> {
    each_read(path, progress, |next| match next {
        Next::Packet(packet) => each(packet),
        Next::CaughtUp => ControlFlow::Continue(()),
    })
}

/// What [`each_read`] hands over.
#[derive(Debug)]
pub enum Next<'a> {
    Packet(Packet<'a>),
    /// A stream (a pipe) has no whole packet waiting: reading on may wait for its writer,
    /// so what the caller holds back (a batch) should go on now.
    CaughtUp,
}

/// As [`each_packet`], and [`Next::CaughtUp`] after each packet a stream has nothing
/// more to follow yet.
pub fn each_read<B>(
    path: &Path,
    progress: &mut impl Progress,
    mut each: impl FnMut(Next<'_>) -> ControlFlow<B>,
) -> Result<Option<B>, String> {
    let mut reader = open(path).map_err(|e| input_error(path, &e))?;
    let mut count: u64 = 0;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                progress.tick(reader.position(), true);
                return Err(input_error(path, &e));
            }
        };
        count += 1;
        if let ControlFlow::Break(value) = each(Next::Packet(packet)) {
            return Ok(Some(value));
        }
        if !reader.next_is_buffered()
            && let ControlFlow::Break(value) = each(Next::CaughtUp)
        {
            return Ok(Some(value));
        }
        if count & 0xffff == 0 {
            progress.tick(reader.position(), false);
        }
    }
    progress.tick(reader.position(), true);
    Ok(None)
}

/// A packet copied out of its reader, so that several files' next packets can wait side
/// by side ([`each_merged`]).
#[derive(Debug, Default)]
struct Held {
    ts_nanos: i64,
    linktype: u32,
    iface: u32,
    orig_len: u32,
    data: Vec<u8>,
}

impl Held {
    fn hold(&mut self, p: &Packet<'_>) {
        self.ts_nanos = p.ts_nanos;
        self.linktype = p.linktype;
        self.iface = p.iface;
        self.orig_len = p.orig_len;
        self.data.clear();
        self.data.extend_from_slice(p.data);
    }

    fn packet(&self) -> Packet<'_> {
        Packet {
            ts_nanos: self.ts_nanos,
            linktype: self.linktype,
            iface: self.iface,
            data: &self.data,
            orig_len: self.orig_len,
        }
    }
}

/// A file being merged: its reader, and its next packet.
struct Merging<'p> {
    /// Its place among the files given.
    index: usize,
    path: &'p Path,
    reader: CaptureReader,
    next: Held,
}

impl Merging<'_> {
    /// Reads the file's next packet: whether there was one.
    fn advance(&mut self) -> Result<bool, String> {
        match self.reader.next_packet() {
            Ok(Some(p)) => {
                self.next.hold(&p);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(input_error(self.path, &e)),
        }
    }
}

/// The most capture files [`each_merged`] holds open at once: each compressed one holds a
/// descriptor and a megabyte of buffer.
pub const MERGED_AT_ONCE: usize = 64;

/// What [`each_merged`] hands its packets and file endings to.
pub trait Merged<B> {
    /// A packet of file `file`.
    fn packet(&mut self, file: usize, packet: Packet<'_>) -> ControlFlow<B>;
    /// File `file` ended, or could not be opened, or turned out bad part-way (the
    /// message naming it, [`input_error`]; the progress is off the screen).
    fn ended(&mut self, file: usize, result: Result<(), String>) -> ControlFlow<B>;
}

/// Every packet of the regular capture files `files` (in [`time_order_first`]'s order,
/// each with its first packet's time, `None` where it could not be read), in the order
/// of their timestamps across the files: captures that overlap in time (one per
/// interface, or per sensor) are read as the one capture they would have made, so that
/// a scan split between them is seen in its own window. Each packet goes to `to` with
/// the index of its file, and so does the end of each file (the other files go on after
/// a bad one). A file is opened only when its first packet is due, and at most
/// [`MERGED_AT_ONCE`] are open: more files than that overlapping in time are read as
/// their turn comes (their packets then counted at the latest time seen), said once.
/// Packets of one file keep their order; at equal times the file earlier in `files`
/// comes first. Breaks where `to` breaks.
pub fn each_merged<B>(
    files: &[(Option<i64>, &Path)],
    progress: &mut impl Progress,
    to: &mut impl Merged<B>,
) -> ControlFlow<B> {
    let mut waiting = files.iter().enumerate().peekable();
    let mut reading: Vec<Merging<'_>> = Vec::new();
    let mut count: u64 = 0;
    let mut said_full = false;
    loop {
        let due_by = reading.iter().map(|m| m.next.ts_nanos).min();
        let due = waiting
            .peek()
            .filter(|&&(_, &(first, _))| due_by.is_none_or(|due| first.is_some_and(|f| f <= due)));
        if due.is_some() && reading.len() >= MERGED_AT_ONCE && !said_full {
            said_full = true;
            tracing::warn!(
                "warning: more than {MERGED_AT_ONCE} capture files overlap in time; the others are read as their turn comes, their packets counted at the latest time seen"
            );
        }
        if let Some(&(index, &(_, path))) = due
            && reading.len() < MERGED_AT_ONCE
        {
            waiting.next();
            let mut file = match open(path) {
                Ok(reader) => Merging {
                    index,
                    path,
                    reader,
                    next: Held::default(),
                },
                Err(e) => {
                    ended(to, progress, index, Err(input_error(path, &e)))?;
                    continue;
                }
            };
            match file.advance() {
                Ok(true) => reading.push(file),
                done => {
                    progress.tick(file.reader.position(), true);
                    ended(to, progress, index, done.map(|_| ()))?;
                }
            }
            continue;
        }
        // The earliest next packet; at equal times, the file earlier in `files`.
        let Some(at) =
            (0..reading.len()).min_by_key(|&k| (reading[k].next.ts_nanos, reading[k].index))
        else {
            return ControlFlow::Continue(());
        };
        let file = &mut reading[at];
        to.packet(file.index, file.next.packet())?;
        count += 1;
        match file.advance() {
            Ok(true) => {
                if count & 0xffff == 0 {
                    progress.tick(reading.iter().map(|m| m.reader.position()).sum(), false);
                }
            }
            done => {
                let file = reading.remove(at);
                progress.tick(file.reader.position(), true);
                ended(to, progress, file.index, done.map(|_| ()))?;
            }
        }
    }
}

/// Tells `to` that file `index` ended with `result`, the progress off the screen first.
fn ended<B>(
    to: &mut impl Merged<B>,
    progress: &mut impl Progress,
    index: usize,
    result: Result<(), String>,
) -> ControlFlow<B> {
    // `to` may say something of the file even when it ended well (a link type it could
    // not decode).
    progress.clear();
    to.ended(index, result)
}

/// Why a packet has no segment to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDecoded {
    /// Framed as a link type (this `LINKTYPE_*`) that is not supported.
    Link(u32),
    /// Malformed or cut short.
    Bad(DecodeError),
}

/// The decode step: a captured packet (its raw link type and bytes) to a segment, or to
/// what it was instead.
#[derive(Debug)]
pub struct Segments {
    /// `None`: each fragment is judged alone.
    defrag: Option<Reassembler>,
}

impl Segments {
    /// Fragments are collected and reassembled (replay, one reassembly across all its
    /// files: they are read in time order, as one capture).
    pub fn reassembling() -> Self {
        Self {
            defrag: Some(Reassembler::new(ReassemblyLimits::default())),
        }
    }

    /// Each packet alone: a non-first fragment is skipped (inventory).
    pub fn per_packet() -> Self {
        Self { defrag: None }
    }

    /// Decodes one packet framed as `linktype`, captured at `ts`, `wire_len` bytes long
    /// on the wire (`data` may hold fewer: a snap length cut it). A segment whose header
    /// the capture cut after what decoding reads is still one ([`decode_cut`]).
    #[inline]
    pub fn decode(
        &mut self,
        linktype: u32,
        data: &[u8],
        ts: Nanos,
        wire_len: u32,
    ) -> Result<Decoded, NotDecoded> {
        let Some(link) = LinkType::from_linktype(linktype) else {
            return Err(NotDecoded::Link(linktype));
        };
        let got = match &mut self.defrag {
            Some(defrag) => {
                let at = u64::try_from(ts).unwrap_or(0);
                defrag.decode_framed(link, data, wire_len as usize, at)
            }
            None => decode(link, data),
        };
        match got {
            Err(e @ (DecodeError::TruncatedTcp | DecodeError::TruncatedUdp)) => {
                decode_cut(link, data, wire_len as usize)
                    .map(Decoded::Segment)
                    .ok_or(NotDecoded::Bad(e))
            }
            got => got.map_err(NotDecoded::Bad),
        }
    }

    /// A further segment the last packet decoded gave ([`Reassembler::take_extra`]:
    /// copies of a datagram that may or may not have been started again, completing
    /// together with different bytes). Taken after the packet's own verdict, until none.
    pub fn take_extra(&mut self) -> Option<synwatch_decode::Segment> {
        self.defrag.as_mut()?.take_extra()
    }

    /// `first` (the last packet's segment), then every further one it gave
    /// ([`Segments::take_extra`]).
    pub fn with_extra(
        &mut self,
        first: synwatch_decode::Segment,
    ) -> impl Iterator<Item = synwatch_decode::Segment> + '_ {
        std::iter::once(first).chain(std::iter::from_fn(move || self.take_extra()))
    }

    /// What fragment reassembly did so far (all zero without it).
    pub fn reassembly(&self) -> ReassemblyStats {
        self.defrag
            .as_ref()
            .map(Reassembler::stats)
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use synwatch_decode::{TcpFlags, Transport};
    use synwatch_testkit::packet::{Ipv4, SYN, Tcp, ethernet, tcp_ip};
    use synwatch_testkit::pcap::PcapWriter;

    fn syn() -> Vec<u8> {
        let (src, dst): (IpAddr, IpAddr) = (
            "198.51.100.7".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        ethernet(&tcp_ip(src, 40000, dst, 22, SYN, 0))
    }

    #[test]
    fn the_link_type_is_resolved_per_packet_and_an_unknown_one_is_named() {
        for mut segments in [Segments::per_packet(), Segments::reassembling()] {
            let got = segments.decode(1, &syn(), 0, 54);
            assert!(
                matches!(got, Ok(Decoded::Segment(s)) if s.dport == 22),
                "{got:?}"
            );
            assert_eq!(
                segments.decode(4242, &syn(), 0, 54),
                Err(NotDecoded::Link(4242))
            );
            let bad = segments.decode(1, &syn()[..20], 0, 20);
            assert!(matches!(bad, Err(NotDecoded::Bad(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_syn_cut_inside_its_options_by_the_snap_length_is_still_an_attempt() {
        // tcpdump once captured 68 bytes by default: a SYN's 20 bytes of TCP options
        // are cut after 14 bytes of Ethernet, 20 of IP and 34 of TCP.
        let whole = ethernet(
            &Ipv4::new([198, 51, 100, 7].into(), [192, 0, 2, 1].into())
                .tcp(&Tcp::new(40000, 22, SYN).syn_options()),
        );
        assert_eq!(whole.len(), 14 + 20 + 40);
        for mut segments in [Segments::per_packet(), Segments::reassembling()] {
            let wire = whole.len() as u32;
            let got = segments.decode(1, &whole[..68], 0, wire);
            assert!(
                matches!(got, Ok(Decoded::Segment(s)) if s.dport == 22 && s.transport == Transport::Tcp(TcpFlags(SYN))),
                "{got:?}"
            );
            // The packet itself was that short: Linux drops it, no attempt.
            let short = segments.decode(1, &whole[..68], 0, 68);
            assert_eq!(short, Err(NotDecoded::Bad(DecodeError::TruncatedTcp)));
            // Cut before the flags: what they were is not known, no attempt.
            let blind = segments.decode(1, &whole[..14 + 20 + 12], 0, wire);
            assert_eq!(blind, Err(NotDecoded::Bad(DecodeError::TruncatedTcp)));
        }
    }

    #[test]
    fn each_packet_stops_where_asked_and_names_a_file_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("three.pcap");
        let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap(), 1, false).unwrap();
        for ts in [3, 1, 2] {
            w.write_packet(ts * 1_000_000_000, &syn()).unwrap();
        }
        w.finish().unwrap();
        let mut seen = Vec::new();
        let stopped = each_packet(&path, &mut (), |p| {
            seen.push(p.ts_nanos / 1_000_000_000);
            match seen.len() {
                2 => ControlFlow::Break("second"),
                _ => ControlFlow::Continue(()),
            }
        });
        assert_eq!(stopped, Ok(Some("second")));
        assert_eq!(seen, [3, 1]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let mut count = 0;
        let cut = each_packet(&path, &mut (), |_| {
            count += 1;
            ControlFlow::<()>::Continue(())
        });
        let msg = cut.unwrap_err();
        assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        assert!(
            msg.ends_with("every packet before it was replayed"),
            "{msg}"
        );
        assert_eq!(count, 2);
        let missing = dir.path().join("missing.pcap");
        let err = each_packet(&missing, &mut (), |_| ControlFlow::<()>::Continue(()));
        assert!(err.unwrap_err().contains("missing.pcap"));
    }
}
