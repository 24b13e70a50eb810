//! IPv4 and IPv6 fragment reassembly, as far as synwatch needs it: pure (time is an
//! argument, `now_ns`), bounded, and following what the Linux stack accepts, so that a SYN
//! the kernel reassembles and answers (`nmap -sS -f`: the TCP header in 8-byte fragments,
//! in any order) is a SYN synwatch sees.
//!
//! The key decision is to keep no fragment data beyond the first [`HEAD_BYTES`] bytes of
//! the transport header (ports, data offset, flags), but for IPv6 datagrams whose first
//! fragment cuts the extension-header chain (below): per datagram the table holds those
//! bytes, the byte ranges received in Linux's runs (to tell duplicates, overlaps and
//! completion apart exactly as the kernel does) and a few lengths. A datagram is judged, once,
//! as soon as its transport header is whole (TCP: the full header including options, by
//! its data offset; UDP: 8 bytes), even before its last fragment, as SPEC §2 says; its
//! entry then stays, marked judged, until the datagram completes or times out, so later
//! fragments do not judge it again.
//!
//! Linux behaviours followed (`net/ipv4/ip_fragment.c`, `net/ipv6/reassembly.c`,
//! `inet_frag_queue_insert` in `net/ipv4/inet_fragment.c`):
//! - the datagram key is (src, dst, IP ID, protocol) for IPv4 and (src, dst, 32-bit ID)
//!   for IPv6; fragments come in any order;
//! - fragments are held as runs: a fragment that starts where the datagram's last byte so
//!   far ends extends the last run, any other makes a run of its own;
//! - a fragment wholly inside one run is a duplicate: ignored, datagram kept;
//! - any other overlap discards the whole datagram (Linux since 4.19 for IPv4; RFC 5722),
//!   even one that brings no new byte because it spans two runs (a scanner that sends a
//!   junk header in pieces, then one piece across them, then the real SYN with the same
//!   ID has the kernel discard the junk and answer the SYN);
//! - an IPv4 datagram that gets a fragment more than `ipfrag_max_dist` (64) fragments
//!   from its source after its previous one, counting fragments of every protocol,
//!   starts again empty (`ip_frag_too_far`, `ip_frag_reinit`); since the kernel counts
//!   only the fragments it reassembles, which cannot be told here, the datagram as it
//!   was is followed beside it (`Reassembler::restart`), so that its SYN is seen whether
//!   the kernel started it again or not: a copy for each of up to 8 restarts, each
//!   completing copy giving its own segment (`Reassembler::take_extra`);
//! - a second last fragment with another end, a last fragment ending before data already
//!   held, data beyond a known end, or a fragment left empty discard the datagram;
//! - a non-last IPv4 fragment whose length is not a multiple of 8 is trimmed down to one
//!   (the trimmed bytes are ignored); the same IPv6 fragment is dropped, alone;
//! - every IPv6 datagram is followed a second time as connection tracking's reassembly
//!   (`nf_conntrack_reasm.c`) takes it, which Linux uses instead of the stack's whenever
//!   conntrack is in use, and which takes bad fragments differently
//!   (`Reassembler::fragment_v6`);
//! - a fragment whose IP header claims more bytes than its frame held (where the frame's
//!   length is known, captured whole or not: [`Reassembler::decode_framed`]) is dropped,
//!   alone, as `ip_rcv_core` and `ip6_rcv_core` drop it before reassembly, and does not
//!   count toward `ipfrag_max_dist`; where the frame's length is not known, its missing
//!   bytes are taken as cut by a snap length ([`Reassembler::decode`]);
//! - an IPv6 fragment with payload length 0 (jumbo) or ending past 65535 is dropped, alone;
//!   so is an IPv4 fragment with total length 0 (which `ip_rcv` refuses);
//! - an IPv6 first fragment whose chain reaches the upper-layer header but does not hold
//!   it whole (TCP 20 bytes, UDP 8, ICMPv6 8, others 1) is dropped (RFC 7112, RFC 8200
//!   §4.5, Linux `ipv6frag_thdr_truncated`): it is no attempt. That check walks the chain
//!   reading two bytes of each header, and passes a fragment where it cannot read the
//!   next one (the chain runs on into later fragments): then the chain is followed over
//!   the bytes the fragments bring, kept for that (`Datagram::pieces`, bytes the
//!   fragment lengths already account for) up to [`CHAIN_CAP`] into the datagram;
//! - an IPv4 datagram times out 30 s (`net.ipv4.ipfrag_time`) after its first fragment
//!   arrived, an IPv6 one 60 s (`net.ipv6.ip6frag_time`); a fragment arriving exactly the
//!   timeout later still joins it, one arriving a nanosecond after that starts a new
//!   datagram;
//! - a datagram longer than 65535 bytes once complete is dropped.
//!
//! Deliberately different: Linux refuses new fragments above `ipfrag_high_thresh`; this
//! table evicts its oldest datagrams instead (counted in [`ReassemblyStats::evicted`]), so a
//! flood cannot stop it from seeing new datagrams. What keeps the two in step is that this
//! table holds at least what the kernel can: 16,384 datagrams is 4 MiB (the kernel's
//! default budget) at 256 bytes each, less than the smallest fragment's socket buffer
//! costs the kernel, and the byte bound counts fragment data only where the kernel counts
//! whole buffers. So by the time a junk flood pushes a real datagram's first fragment out
//! here, the kernel's budget is spent too, and it refuses the rest of that datagram: the
//! kernel cannot complete (and answer) an attempt that this table lost. (At 4,096, junk
//! between the pieces of each SYN pushed them out here while the kernel, under budget,
//! kept and completed them.) Fragments whose IPv4 header checksum is wrong are refused
//! before they take a place, as Linux refuses them before reassembly. A first fragment whose
//! chain the stack refuses once the datagram is whole (an extension header it drops, a
//! fragment header inside, a chain longer than [`CHAIN_CAP`]) is queued as the kernel
//! queues it, and never an attempt; a fragment refused after the kernel looked its
//! datagram up (odd length, past 65535 bytes) leaves that datagram held, empty. Not
//! followed: the IPv6 rule that a hop-by-hop header comes first.
//!
//! Bounds: at most [`ReassemblyLimits::max_datagrams`] datagrams and
//! [`ReassemblyLimits::max_bytes`] bytes of fragment data accounted, and as much again for
//! the IPv6 datagrams as connection tracking takes them, each budget evicting from its
//! own datagrams (the payload lengths of
//! the fragments each datagram took, what the kernel would be holding for it; this table
//! itself keeps only a fixed entry of under 256 bytes per datagram, plus 8 bytes a run
//! past the first four), and at most 65,536 runs for each reading; past any of these, the oldest
//! datagrams are evicted. No datagram needs more than [`MAX_FRAGMENT_RANGES`] runs, the
//! most 8-byte pieces 65,535 bytes hold (Linux has no limit of its own: its 4 MiB budget
//! runs out first). The IPv4 sources with datagrams held keep a fragment count for
//! `ipfrag_max_dist`, one entry each. Packets that are not fragments cost one branch over
//! [`crate::decode`] and touch no state; expiry runs on the fragment path and in
//! [`Reassembler::expire`], which a caller with a timer calls at
//! [`Reassembler::next_expiry_ns`].

use std::collections::HashMap;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::{
    DecodeError, Decoded, Fragment, LinkType, PROTO_TCP, PROTO_UDP, Segment, Skip, Walk, parse,
    transport, walk_ipv6,
};

/// The most runs one datagram may hold: every run holds at least 8 bytes but the last,
/// so no datagram of up to 65535 bytes needs more; Linux has no lower limit of its own.
pub const MAX_FRAGMENT_RANGES: usize = 8192;

/// The most runs all datagrams together may hold before the oldest datagrams are pushed
/// out (8 bytes each, 512 KiB). More than the kernel can hold: each fragment it keeps
/// costs it a socket buffer of several hundred bytes against its 4 MiB budget.
const MAX_RUNS_HELD: usize = 65_536;

/// How many bytes of the transport header a datagram keeps: the TCP base header (ports,
/// data offset, flags); the options are only counted, never read.
pub const HEAD_BYTES: usize = 20;

/// The largest IP payload (IPv6) or datagram (IPv4) reassembly produces.
const IP_MAX: u32 = 65535;

/// How far into an IPv6 datagram's fragmentable part an extension-header chain that its
/// first fragment cuts is followed (libpcap's snap length: as far as a whole packet's
/// chain is seen); a chain that goes on past it cannot be judged.
pub const CHAIN_CAP: u32 = 9216;
const PROTO_ICMPV6: u8 = 58;
const NIL: u32 = u32::MAX;
/// Copies of one datagram followed beside it, each as it was before one time
/// `ipfrag_max_dist` started it again ([`Reassembler::restart`]).
const MAX_SHADOWS: u8 = 8;

/// The lists of held datagrams: IPv4, IPv6 as the stack takes it, IPv6 as connection
/// tracking takes it.
const POOLS: usize = 3;
/// The pools of the stack's own reassembly, which share one budget (as before the
/// second IPv6 reading was followed), and the pool of connection tracking's.
const STACK: [usize; 2] = [0, 1];
const CONNTRACK: [usize; 1] = [2];

/// The pool of a datagram of this family (`v6`) and reading (`ct`).
fn pool(v6: bool, ct: bool) -> usize {
    if ct { 2 } else { usize::from(v6) }
}

/// How much a [`Reassembler`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Datagrams held at once (at least 1 is used). Default 16,384: at least as many as
    /// the kernel's default budget can hold (see the module documentation).
    pub max_datagrams: usize,
    /// Fragment bytes accounted at once, like `net.ipv4.ipfrag_high_thresh`. Default 4 MiB.
    pub max_bytes: usize,
    /// How long an IPv4 datagram may wait for its fragments, from its first one; the
    /// kernel's `net.ipv4.ipfrag_time`. Default 30 s.
    pub timeout_ns: u64,
    /// The same for IPv6: `net.ipv6.ip6frag_time`. Default 60 s.
    pub timeout6_ns: u64,
    /// `net.ipv4.ipfrag_max_dist`: an IPv4 datagram that gets a fragment after more than
    /// this many other fragments from its source since its previous one starts again,
    /// empty (0: never). Default 64.
    pub max_dist: u32,
}

impl ReassemblyLimits {
    /// The timeout of an IPv6 (`v6`) or IPv4 datagram.
    fn timeout(&self, v6: bool) -> u64 {
        if v6 {
            self.timeout6_ns
        } else {
            self.timeout_ns
        }
    }
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_datagrams: 16_384,
            max_bytes: 4 << 20,
            timeout_ns: 30_000_000_000,
            timeout6_ns: 60_000_000_000,
            max_dist: 64,
        }
    }
}

/// Counters and gauges of a [`Reassembler`], meant for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Fragments seen (every IPv4/IPv6 fragment passed to [`Reassembler::decode`]).
    pub fragments: u64,
    /// Segments produced from fragments (one at most per datagram).
    pub completed: u64,
    /// Datagrams discarded (overlaps, conflicting ends, too many ranges, oversize) and
    /// fragments dropped alone (bad length, RFC 7112, unsupported).
    pub dropped: u64,
    /// Datagrams pushed out, oldest first, to make room within the limits.
    pub evicted: u64,
    /// Datagrams that timed out before completing.
    pub timed_out: u64,
    /// Datagrams held now.
    pub datagrams_in_use: u64,
    /// Fragment bytes accounted now (see [`ReassemblyLimits::max_bytes`]).
    pub bytes_in_use: u64,
}

/// Decodes packets like [`crate::decode`], collecting IP fragments into datagrams.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    index: HashMap<Key, u32, foldhash::fast::RandomState>,
    /// Entries by slot; `index` points here and `free` lists the empty ones.
    slots: Vec<Option<Datagram>>,
    free: Vec<u32>,
    /// Both ends of the lists of held datagrams in creation order (`older`/`newer`
    /// links), one list per pool ([`pool`]: IPv4, IPv6 as the stack takes it, IPv6 as
    /// connection tracking does): each has one timeout, so each list is also in the order
    /// its datagrams time out, and each budget evicts from its own pools.
    oldest: [u32; POOLS],
    newest: [u32; POOLS],
    bytes: usize,
    /// Runs held by all datagrams together (see [`MAX_RUNS_HELD`]).
    runs: usize,
    /// IPv4 sources with datagrams held: Linux's `inet_peer` fragment counter.
    peers: HashMap<IpAddr, Peer, foldhash::fast::RandomState>,
    /// Datagrams held as shadows ([`Reassembler::restart`]): while there are none, a
    /// fragment does not look for one (a spoofed flood of first fragments has none).
    shadows: usize,
    /// IPv6 datagrams held as connection tracking takes them, and their fragment bytes:
    /// a budget of their own beside the stack's, as the kernel keeps one for each.
    ct_held: usize,
    ct_bytes: usize,
    /// Of `runs`, those of conntrack's reading (each reading has [`MAX_RUNS_HELD`]).
    ct_runs: usize,
    /// The fragment being taken is one only conntrack's reading takes (behind an
    /// extension header the stack refuses: [`Reassembler::for_conntrack`]).
    only_ct: bool,
    /// Segments a fragment gave beyond the one returned (where a datagram and its
    /// shadows decide differently on it): [`Reassembler::take_extra`].
    extra: Vec<Segment>,
    /// State of the generator that picks which copy of a datagram goes when all of
    /// [`MAX_SHADOWS`] are held (seeded at random).
    pick: u64,
    stats: ReassemblyStats,
    /// Bytes of the packet being decoded that the frame held beyond those captured
    /// (a snap length, or the XDP program's copy of a fragment's head), where known
    /// ([`Reassembler::decode_framed`]).
    uncaptured: Option<usize>,
}

/// An IPv4 source's fragments, counted for `ipfrag_max_dist` while it has datagrams held
/// (only the differences between the count and the datagrams' marks matter, so a source
/// without datagrams needs no count).
#[derive(Debug)]
struct Peer {
    /// Fragments from the source (Linux `peer->rid`).
    rid: u32,
    /// Its datagrams held.
    held: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    /// The IPv4 protocol; 0 for IPv6, whose key has none.
    proto: u8,
    /// 0 for the datagram; 1 to [`MAX_SHADOWS`] for a copy of it as it was before
    /// `ipfrag_max_dist` started it again, followed beside it (see
    /// [`Reassembler::restart`]).
    shadow: u8,
    /// An IPv6 datagram as connection tracking's reassembly takes it (see
    /// [`Reassembler::fragment`]), beside the one the stack's own takes.
    ct: bool,
}

#[derive(Debug)]
struct Datagram {
    key: Key,
    v6: bool,
    created_ns: u64,
    older: u32,
    newer: u32,
    /// The datagram's fragmentable-part length as known so far (Linux `q.len`).
    len: u32,
    /// Bytes of the fragments taken (Linux `q.meat`).
    meat: u32,
    first_in: bool,
    last_in: bool,
    judged: bool,
    /// The upper-layer protocol (IPv4: the key's; IPv6: from the first fragment).
    upper: u8,
    /// Where the transport header starts in the fragmentable part (IPv6: after the
    /// extension headers the first fragment carries there).
    transport_at: u32,
    /// IP header bytes the reassembled datagram keeps (from the first fragment).
    header_len: u32,
    /// The lowest offset from which the capture lacks bytes the IP header says a
    /// fragment has (a snap length); `u32::MAX` when nothing is missing.
    captured_to: u32,
    head: [u8; HEAD_BYTES],
    /// Whether `upper` and `transport_at` are known (IPv4: always; IPv6: once the first
    /// fragment's chain, or the chain it cuts, is walked through).
    upper_known: bool,
    /// IPv6, while the upper layer is not known: the bytes taken below [`CHAIN_CAP`], by
    /// offset, to walk a chain the first fragment cuts (bytes the fragment lengths already
    /// account for).
    pieces: Vec<(u32, Box<[u8]>)>,
    /// The fragments taken, as Linux keeps them: runs of fragments each of which began
    /// where the one before it ended and came in as the datagram's last so far (a run is
    /// extended only at the datagram's tail); sorted and disjoint, but two runs may touch.
    runs: SmallVec<[(u32, u32); 4]>,
    /// The source's fragment count at this datagram's previous fragment (IPv4,
    /// `ipfrag_max_dist`).
    rid: u32,
}

/// How a fragment's byte range relates to the ranges held.
enum Fit {
    New,
    Duplicate,
    Overlap,
}

impl Datagram {
    /// The datagram is no attempt (the stack refuses its chain once it is whole), but
    /// reassembly holds it all the same.
    fn refuse(&mut self) {
        self.upper_known = true;
        self.judged = true;
        self.pieces = Vec::new();
    }

    /// `inet_frag_queue_insert`'s verdict on a fragment: past the tail, it overlaps if it
    /// starts before the tail's end; elsewhere it is a duplicate only if it lies wholly
    /// inside one run, and overlaps if it touches any run otherwise. So a fragment that
    /// exactly spans two runs is an overlap, and discards the datagram, where the bytes
    /// it brings were all held already.
    fn fit(&self, start: u32, end: u32) -> Fit {
        match self.runs.last() {
            None => return Fit::New,
            Some(&(_, tail)) if tail < end => {
                return if start < tail { Fit::Overlap } else { Fit::New };
            }
            Some(_) => {}
        }
        let at = self.runs.partition_point(|&(_, e)| e <= start);
        match self.runs.get(at) {
            Some(&(s, e)) if s < end => {
                if s <= start && end <= e {
                    Fit::Duplicate
                } else {
                    Fit::Overlap
                }
            }
            _ => Fit::New,
        }
    }

    /// Takes a fragment [`Datagram::fit`] called new: it extends the tail run if it starts
    /// where that ends, else it is a run of its own. False when that would need too many
    /// runs.
    fn insert(&mut self, start: u32, end: u32) -> bool {
        if let Some(tail) = self.runs.last_mut()
            && tail.1 == start
        {
            tail.1 = end;
            return true;
        }
        if self.runs.len() >= MAX_FRAGMENT_RANGES {
            return false;
        }
        let at = self.runs.partition_point(|&(s, _)| s < start);
        self.runs.insert(at, (start, end));
        true
    }

    /// Takes the datagram's length from a fragment ending at `end` (the last one unless
    /// `more`); true when the fragment conflicts with the length known (a second last
    /// fragment with another end, a last one ending before data held, data past the
    /// end): the datagram is discarded.
    fn end_conflicts(&mut self, end: u32, more: bool) -> bool {
        if !more {
            let conflicts = end < self.len || (self.last_in && end != self.len);
            if !conflicts {
                self.last_in = true;
                self.len = end;
            }
            conflicts
        } else if end > self.len {
            if !self.last_in {
                self.len = end;
            }
            self.last_in
        } else {
            false
        }
    }

    /// Bytes of the transport header present from its start on, contiguously.
    fn transport_bytes(&self) -> u32 {
        let t = self.transport_at;
        let at = self.runs.partition_point(|&(_, e)| e <= t);
        let mut covered = t;
        for &(s, e) in self.runs.get(at..).unwrap_or(&[]) {
            if s > covered {
                break;
            }
            covered = e;
        }
        covered.min(self.captured_to).saturating_sub(t)
    }

    /// Linux's test: first and last fragments in, and as many bytes taken (never twice:
    /// duplicates and overlaps are not taken) as the datagram is long.
    fn complete(&self) -> bool {
        self.first_in && self.last_in && self.meat == self.len
    }

    /// The transport header's verdict once it is whole (or the datagram complete).
    fn judge(&self, complete: bool) -> Option<Result<Decoded, DecodeError>> {
        let avail = self.transport_bytes() as usize;
        let head = self.head.get(..avail.min(HEAD_BYTES)).unwrap_or(&[]);
        let whole = match self.upper {
            PROTO_TCP => match head.get(12) {
                Some(&offset_byte) if avail >= HEAD_BYTES => {
                    let header_len = usize::from(offset_byte >> 4) * 4;
                    header_len < 20 || avail >= header_len
                }
                _ => false,
            },
            PROTO_UDP => avail >= 8,
            _ => true,
        };
        if !(whole || complete) {
            return None;
        }
        let ip_len = if self.last_in {
            self.header_len + self.len
        } else {
            self.header_len + self.meat
        };
        Some(transport(
            self.upper,
            self.key.src,
            self.key.dst,
            head,
            avail,
            ip_len as usize,
        ))
    }
}

/// Whether two segments are the same packet to the detector (their lengths aside).
fn same_segment(a: &Segment, b: &Segment) -> bool {
    (a.src, a.dst, a.sport, a.dport, a.transport) == (b.src, b.dst, b.sport, b.dport, b.transport)
}

/// The key of the stack's reading of an IPv6 fragment's datagram.
fn v6_key(f: &Fragment<'_>) -> Key {
    Key {
        src: f.src,
        dst: f.dst,
        id: f.id,
        proto: 0,
        shadow: 0,
        ct: false,
    }
}

/// What a fragment says of its datagram's upper layer.
#[derive(Debug, Clone, Copy)]
enum Upper {
    /// Not the first fragment: nothing.
    Later,
    /// The upper-layer protocol and where its header starts in the fragmentable part.
    Known(u8, u32),
    /// An IPv6 first fragment whose extension-header chain goes on past its end; the
    /// type of the chain's first header.
    Cut(u8),
    /// An IPv6 first fragment whose chain the stack refuses once the datagram is whole
    /// (an extension header it drops, a fragment header inside): reassembly takes it
    /// as any other (its overlaps count), but it is no attempt.
    Refused,
}

/// The bytes of an upper-layer header `next` that an IPv6 first fragment must hold
/// (`ipv6frag_thdr_truncated`): TCP 20, UDP and ICMPv6 8, others 1.
fn upper_need(next: u8) -> usize {
    match next {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMPV6 => 8,
        _ => 1,
    }
}

/// Linux's verdict on an IPv6 first fragment `f` of `claimed` bytes: `None` to drop it
/// (its chain reaches the upper-layer header, which is not whole in it, or an extension
/// header Linux refuses, or a fragment inside: not followed), else its upper layer or
/// the chain it cuts. `ipv6_skip_exthdr` reads only the first two bytes of each header
/// (and a fragment header's offset); where it cannot read them, the check passes.
fn first_v6_upper(f: &Fragment<'_>, claimed: u32) -> Result<Option<Upper>, DecodeError> {
    let data = f.payload.get(..claimed as usize).unwrap_or(f.payload);
    let cut_by_capture = f.payload.len() < claimed as usize;
    let (mut next, mut at) = (f.next, 0usize);
    loop {
        match next {
            0 | 43 | 60 | 51 | 44 => {}
            // No next header: Linux's walk stops there and passes the check.
            59 => return Ok(Some(Upper::Cut(f.next))),
            _ => break,
        }
        let Some(ext) = data.get(at..at + 2) else {
            if cut_by_capture {
                return Err(DecodeError::TruncatedIp);
            }
            return Ok(Some(Upper::Cut(f.next)));
        };
        let len = match next {
            44 => {
                let Some(field) = data.get(at + 2..at + 4) else {
                    return Ok(Some(Upper::Cut(f.next)));
                };
                if u16::from_be_bytes([field[0], field[1]]) & 0xfff8 != 0 {
                    // A later fragment inside: the check passes it, no attempt.
                    return Ok(Some(Upper::Refused));
                }
                8
            }
            _ => crate::ext_len(next, ext[1]),
        };
        next = ext[0];
        at += len;
    }
    if at + upper_need(next) > claimed as usize {
        return Ok(None);
    }
    // The chain is whole in the fragment: judged as before, extension headers and all.
    // Reassembly judges none of those headers: a chain the stack refuses after it (a
    // destination option whose type says discard) still has the fragment queued, and
    // its overlap throw away what was held under its id.
    match walk_ipv6(f.payload, f.next, 0) {
        Ok(Walk::Upper { next, at }) => Ok(Some(Upper::Known(next, at as u32))),
        Ok(Walk::Fragment { .. }) => Ok(Some(Upper::Refused)),
        Err(e) if cut_by_capture => Err(e),
        Err(_) => Ok(Some(Upper::Refused)),
    }
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new(ReassemblyLimits::default())
    }
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        let limits = ReassemblyLimits {
            max_datagrams: limits.max_datagrams.max(1),
            ..limits
        };
        Self {
            index: HashMap::with_capacity_and_hasher(
                limits.max_datagrams.min(4096),
                foldhash::fast::RandomState::default(),
            ),
            slots: Vec::new(),
            free: Vec::new(),
            oldest: [NIL; POOLS],
            newest: [NIL; POOLS],
            bytes: 0,
            runs: 0,
            peers: HashMap::default(),
            shadows: 0,
            ct_held: 0,
            ct_bytes: 0,
            ct_runs: 0,
            only_ct: false,
            extra: Vec::new(),
            pick: {
                use std::hash::BuildHasher as _;
                foldhash::fast::RandomState::default().hash_one(0x5eed_u64) | 1
            },
            stats: ReassemblyStats::default(),
            uncaptured: None,
            limits,
        }
    }

    /// The limits in force (`max_datagrams` raised to 1 if it was 0).
    pub fn limits(&self) -> ReassemblyLimits {
        self.limits
    }

    /// Decodes one captured packet like [`crate::decode`], except that fragments are
    /// collected: a held fragment gives `Ok(Decoded::Skipped(Skip::Fragment))`; the
    /// fragment that makes the transport header whole gives the datagram's verdict
    /// (usually `Ok(Decoded::Segment(..))`), once per datagram. Its
    /// [`Segment::ip_len`](crate::Segment::ip_len) is the reassembled datagram's length
    /// (IP header of the first fragment, without an IPv6 fragment header, plus the
    /// fragmentable part) when the last fragment has been seen, else that header plus the
    /// fragment bytes seen so far. A fragment dropped by the rules in the module docs is
    /// also `Skipped(Fragment)`, and counted in [`ReassemblyStats`].
    pub fn decode(
        &mut self,
        link: LinkType,
        data: &[u8],
        now_ns: u64,
    ) -> Result<Decoded, DecodeError> {
        self.uncaptured = None;
        self.extra.clear();
        let verdict = parse(link, data, |at| self.fragment(&at.read(), now_ns));
        self.for_conntrack(link, data, now_ns, verdict)
    }

    /// A further segment the last packet decoded gave, if any: where a datagram that
    /// `ipfrag_max_dist` may or may not have started again is followed both ways and
    /// both copies complete on one fragment with different bytes, each is a segment
    /// (the kernel took one of them). The caller takes these after the packet's own
    /// verdict, until none is left; the next packet decoded clears any not taken.
    pub fn take_extra(&mut self) -> Option<Segment> {
        self.extra.pop()
    }

    /// `first` (the last packet's segment), then every further one it gave
    /// ([`Reassembler::take_extra`]).
    pub fn with_extra(&mut self, first: Segment) -> impl Iterator<Item = Segment> + '_ {
        std::iter::once(first).chain(std::iter::from_fn(move || self.take_extra()))
    }

    /// [`Reassembler::decode`] of a packet that was `wire_len` bytes long as received
    /// (framed as `data` is, which may hold only its first bytes). A fragment whose IP
    /// header claims more bytes than the frame held is one the kernel drops
    /// (`ip_rcv_core`, `ip6_rcv_core`): it is dropped here too rather than taken for a
    /// fragment a snap length cut, and does not count toward `ipfrag_max_dist`, so that
    /// such junk, which the kernel never queues, can neither overlap and so discard the
    /// datagram of a real SYN here alone nor push it out as too far. That holds for a
    /// head the XDP program copied as well as for a whole frame.
    pub fn decode_framed(
        &mut self,
        link: LinkType,
        data: &[u8],
        wire_len: usize,
        now_ns: u64,
    ) -> Result<Decoded, DecodeError> {
        self.uncaptured = Some(wire_len.saturating_sub(data.len()));
        self.extra.clear();
        let verdict = parse(link, data, |at| self.fragment(&at.read(), now_ns));
        self.for_conntrack(link, data, now_ns, verdict)
    }

    /// What connection tracking's reassembly takes of a packet the stack's reassembly
    /// did not get (`verdict` is the stack's): an IPv6 fragment behind an extension
    /// header the stack refuses (a destination option whose type says discard, a
    /// routing header with segments left), which conntrack queues before the stack looks
    /// at those headers, so its overlap can throw away junk held for a SYN's id; and an
    /// atomic fragment ([`Reassembler::atomic_for_conntrack`]). Only a refused packet, or
    /// one while conntrack's reading holds a datagram, costs a look.
    #[inline]
    fn for_conntrack(
        &mut self,
        link: LinkType,
        data: &[u8],
        now_ns: u64,
        verdict: Result<Decoded, DecodeError>,
    ) -> Result<Decoded, DecodeError> {
        let refused = matches!(verdict, Err(DecodeError::BadIpv6Extension));
        if self.ct_held == 0 && !refused {
            return verdict;
        }
        self.conntrack_only(link, data, now_ns, verdict)
    }

    #[cold]
    #[inline(never)]
    fn conntrack_only(
        &mut self,
        link: LinkType,
        data: &[u8],
        now_ns: u64,
        verdict: Result<Decoded, DecodeError>,
    ) -> Result<Decoded, DecodeError> {
        let Some(f) = crate::fragment_header_v6(link, data).map(|at| at.read()) else {
            return verdict;
        };
        if f.offset == 0 && !f.more {
            return self.atomic_for_conntrack(&f, now_ns, verdict);
        }
        if !matches!(verdict, Err(DecodeError::BadIpv6Extension)) {
            return verdict;
        }
        self.only_ct = true;
        let got = self.fragment(&f, now_ns);
        self.only_ct = false;
        match got {
            Ok(Decoded::Segment(s)) => Ok(Decoded::Segment(s)),
            _ => verdict,
        }
    }

    /// An IPv6 packet with an atomic fragment header (RFC 6946): the stack takes it
    /// whole (`verdict`, from the walk through it), but connection tracking's reassembly
    /// queues it like any fragment, under its id. Meeting a datagram it holds under that
    /// id, it is dropped alone where its end conflicts, and otherwise overlaps the data
    /// held and throws the datagram away: a junk head, an atomic packet, then the real
    /// SYN's pieces with the same id have the kernel answer the SYN.
    fn atomic_for_conntrack(
        &mut self,
        f: &Fragment<'_>,
        now_ns: u64,
        verdict: Result<Decoded, DecodeError>,
    ) -> Result<Decoded, DecodeError> {
        let Some(claimed) = f.claimed.filter(|&c| c <= IP_MAX) else {
            return verdict;
        };
        self.expire(now_ns);
        let key = Key {
            ct: true,
            ..v6_key(f)
        };
        let Some(index) = self.index.get(&key).copied() else {
            return verdict;
        };
        let upper = match first_v6_upper(f, claimed) {
            Ok(Some(upper)) => upper,
            _ => return verdict,
        };
        let got = self.queue(index, f, 0, claimed, upper);
        let (verdict, gained) = self.either(verdict, got);
        self.stats.completed += u64::from(gained);
        verdict
    }

    /// Drops the datagrams whose first fragment came more than the timeout before
    /// `now_ns`. Also done on every fragment [`Reassembler::decode`] sees.
    pub fn expire(&mut self, now_ns: u64) {
        for list in 0..POOLS {
            let timeout = self.limits.timeout(list != 0);
            while let Some(oldest) = self.slot(self.oldest[list]) {
                if now_ns.saturating_sub(oldest.created_ns) <= timeout {
                    break;
                }
                let index = self.oldest[list];
                self.stats.timed_out += u64::from(!self.is_ct(index));
                self.remove(index);
            }
        }
    }

    /// When the oldest datagram times out (the first `now_ns` at which
    /// [`Reassembler::expire`] drops it), or `None` when nothing is held.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        (0..POOLS)
            .filter_map(|list| {
                let d = self.slot(self.oldest[list])?;
                Some(
                    d.created_ns
                        .saturating_add(self.limits.timeout(list != 0))
                        .saturating_add(1),
                )
            })
            .min()
    }

    pub fn stats(&self) -> ReassemblyStats {
        ReassemblyStats {
            datagrams_in_use: (self.index.len() - self.ct_held) as u64,
            bytes_in_use: (self.bytes - self.ct_bytes) as u64,
            ..self.stats
        }
    }

    /// Whether the runs, shadows and second readings counted are those the datagrams
    /// hold.
    #[cfg(test)]
    fn runs_agree(&self) -> bool {
        let held: usize = self.slots.iter().flatten().map(|d| d.runs.len()).sum();
        let shadows = self
            .slots
            .iter()
            .flatten()
            .filter(|d| d.key.shadow != 0)
            .count();
        let ct = self.slots.iter().flatten().filter(|d| d.key.ct);
        let (ct_held, ct_bytes, ct_runs) = ct.fold((0, 0, 0), |(n, b, r), d| {
            (n + 1, b + d.meat as usize, r + d.runs.len())
        });
        held == self.runs
            && shadows == self.shadows
            && (ct_held, ct_bytes, ct_runs) == (self.ct_held, self.ct_bytes, self.ct_runs)
    }

    fn slot(&self, index: u32) -> Option<&Datagram> {
        self.slots.get(index as usize)?.as_ref()
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Datagram> {
        self.slots.get_mut(index as usize)?.as_mut()
    }

    fn dropped(&mut self) -> Result<Decoded, DecodeError> {
        self.stats.dropped += 1;
        Ok(Decoded::Skipped(Skip::Fragment))
    }

    fn fragment(&mut self, f: &Fragment<'_>, now_ns: u64) -> Result<Decoded, DecodeError> {
        self.stats.fragments += 1;
        self.expire(now_ns);
        // The bytes the fragment claims, unless the frame did not hold them: the kernel
        // drops such a fragment on arrival.
        let held = f.claimed.filter(|&claimed| {
            self.uncaptured
                .is_none_or(|more| f.payload.len().saturating_add(more) >= claimed as usize)
        });
        // Every IPv4 fragment the kernel queues counts toward its source's
        // `ipfrag_max_dist`, whatever its protocol; one it dropped on arrival does not.
        let rid = match (f.v6, held, self.peers.get_mut(&f.src)) {
            (false, Some(_), Some(peer)) => {
                peer.rid = peer.rid.wrapping_add(1);
                Some(peer.rid)
            }
            _ => None,
        };
        if !f.v6 && !matches!(f.next, PROTO_TCP | PROTO_UDP) {
            // The protocol is in every IPv4 fragment: nothing to collect.
            return f.decode_alone();
        }
        let Some(claimed) = held else {
            return self.dropped();
        };
        let start = f.offset;
        let mut end = start + claimed;
        let odd = f.more && !end.is_multiple_of(8);
        if odd && !f.v6 {
            end &= !7;
        }
        if f.v6 && end > IP_MAX {
            // Refused once its datagram was looked up: one is held from now on in both
            // readings, empty, its timer running (`fq_find` comes first).
            let key = v6_key(f);
            if !self.only_ct {
                self.hold(key, f, now_ns);
            }
            self.hold(Key { ct: true, ..key }, f, now_ns);
            return self.dropped();
        }
        // The first fragment's upper layer: for IPv6, Linux drops a first fragment whose
        // chain it can walk to the upper-layer header when that header is not whole in it
        // (RFC 7112, `ipv6frag_thdr_truncated`), but takes one whose chain it cannot walk
        // that far (an extension header past its end): that chain is followed here over
        // the fragments that bring it (`Upper::Cut`).
        let upper = if start != 0 {
            Upper::Later
        } else if f.v6 {
            match first_v6_upper(f, claimed) {
                Ok(Some(upper)) => upper,
                Ok(None) => return self.dropped(),
                Err(e) => return Err(e),
            }
        } else {
            Upper::Known(f.next, 0)
        };
        let key = Key {
            src: f.src,
            dst: f.dst,
            id: f.id,
            proto: if f.v6 { 0 } else { f.next },
            shadow: 0,
            ct: false,
        };
        if f.v6 {
            return self.fragment_v6(key, f, (start, end), upper, now_ns);
        }
        let Some(index) = self.datagram_for(key, f, (start, end), rid, now_ns) else {
            return self.dropped();
        };
        let said = self.queue(index, f, start, end, upper);
        if self.shadows == 0 {
            return said;
        }
        self.queue_shadows(key, index, f, (start, end), upper, said)
    }

    /// An IPv6 fragment (bytes `start..end`), taken both ways Linux may take it. Where
    /// connection tracking is in use in the namespace (any `ct state` rule: synwatch's
    /// own nftables and iptables rules, most firewalls, container hosts), every IPv6
    /// fragment goes first to its reassembly (`nf_ct_frag6_gather`), which takes
    /// fragments the stack's own would refuse and refuses some it would take:
    /// - a fragment that is not the last and not a multiple of 8 bytes long throws its
    ///   whole datagram away there, where the stack drops it alone;
    /// - a second last fragment with another end, a last one ending before data held,
    ///   data past a known end and an empty fragment are dropped alone there, where the
    ///   stack throws the datagram away.
    ///
    /// Which one the kernel uses cannot be told from the packets (nor, live, from this
    /// process), so both are followed and a verdict from either counts: a SYN the kernel
    /// takes is seen whichever it is. A sender who crafts fragments the two take
    /// differently can make an attempt seen that one kernel did not take. The datagrams
    /// of the second reading (`Key::ct`) have a budget of their own, as the kernel keeps
    /// one for each; an empty fragment creates one there (conntrack keeps the end it
    /// gives), and an atomic fragment meets it ([`Reassembler::atomic_for_conntrack`]).
    /// Not followed: conntrack also keys a datagram by its interface and zone.
    fn fragment_v6(
        &mut self,
        key: Key,
        f: &Fragment<'_>,
        (start, end): (u32, u32),
        upper: Upper,
        now_ns: u64,
    ) -> Result<Decoded, DecodeError> {
        let ct = Key { ct: true, ..key };
        let skipped = Ok(Decoded::Skipped(Skip::Fragment));
        if f.more && !end.is_multiple_of(8) {
            if let Some(index) = self.index.get(&ct).copied() {
                self.remove(index);
            }
            // The stack looked its datagram up before it refused the fragment.
            if !self.only_ct {
                self.hold(key, f, now_ns);
            }
            return if self.only_ct {
                skipped
            } else {
                self.dropped()
            };
        }
        let said = if self.only_ct {
            skipped
        } else {
            match self.datagram_for(key, f, (start, end), None, now_ns) {
                Some(index) => self.queue(index, f, start, end, upper),
                None => self.dropped(),
            }
        };
        let Some(index) = self.datagram_for(ct, f, (start, end), None, now_ns) else {
            return said;
        };
        let got = self.queue(index, f, start, end, upper);
        let (verdict, gained) = self.either(said, got);
        self.stats.completed += u64::from(gained);
        verdict
    }

    /// Makes sure datagram `key` is held (an empty one created, or an expired one started
    /// again), as Linux's lookup of a fragment's datagram does before it judges the
    /// fragment: a datagram's timer runs from there.
    fn hold(&mut self, key: Key, f: &Fragment<'_>, now_ns: u64) {
        let _ = self.datagram_for(key, f, (0, 1), None, now_ns);
    }

    /// The verdict of a fragment on the datagram and on another copy of it (`said` and
    /// `got`): the first segment, any other kept for [`Reassembler::take_extra`] (the
    /// copies can hold different bytes for the same range, and the kernel took one of
    /// them); and whether the copy gave a segment the datagram did not.
    fn either(
        &mut self,
        said: Result<Decoded, DecodeError>,
        got: Result<Decoded, DecodeError>,
    ) -> (Result<Decoded, DecodeError>, bool) {
        match (said, got) {
            (Ok(Decoded::Segment(first)), Ok(Decoded::Segment(other))) => {
                let known = |s: &Segment| same_segment(s, &other);
                let new = !known(&first) && !self.extra.iter().any(known);
                if new {
                    self.extra.push(other);
                }
                (Ok(Decoded::Segment(first)), new)
            }
            (Ok(Decoded::Segment(s)), _) => (Ok(Decoded::Segment(s)), false),
            (_, Ok(Decoded::Segment(s))) => (Ok(Decoded::Segment(s)), true),
            (said, _) => (said, false),
        }
    }

    /// The held datagram `key` that fragment `f` (bytes `start..end`) joins: the one held,
    /// started again where `ipfrag_max_dist` says so (its source's fragment count now
    /// `rid`) or where it timed out, or a new one; `None` when the fragment is dropped
    /// instead (one that would discard a new datagram at once creates none).
    fn datagram_for(
        &mut self,
        key: Key,
        f: &Fragment<'_>,
        (start, end): (u32, u32),
        rid: Option<u32>,
        now_ns: u64,
    ) -> Option<u32> {
        Some(match self.index.get(&key).copied() {
            Some(index) => {
                let expired = self.slot(index).is_some_and(|d| {
                    now_ns.saturating_sub(d.created_ns) > self.limits.timeout(d.v6)
                });
                if !expired {
                    if self.too_far(index, rid) {
                        // Linux's `ip_frag_reinit`: the datagram starts again, empty, its
                        // timer restarted, and takes this fragment.
                        self.restart(index, key);
                        self.stats.dropped += 1;
                        self.create(key, f, now_ns)
                    } else {
                        index
                    }
                } else {
                    self.remove(index);
                    self.stats.timed_out += u64::from(!key.ct);
                    if end == start && !key.ct {
                        return None;
                    }
                    self.create(key, f, now_ns)
                }
            }
            // A fragment that would discard a new datagram at once creates none; to
            // connection tracking it is dropped alone, from a datagram it creates and
            // keeps (with the end a last one gives: `nf_ct_frag6_queue`).
            None if end == start && !key.ct => return None,
            None => self.create(key, f, now_ns),
        })
    }

    /// The fragment `f` (bytes `start..end`) for the shadows of datagram `index` (under
    /// `key`) too, where any are held; `said` is what the datagram made of it. The
    /// shadows take every fragment the datagram takes, and a verdict from any counts:
    /// the first segment is returned, any other segment (the copies can hold different
    /// bytes for the same range, and the kernel took one of them) is kept for
    /// [`Reassembler::take_extra`]. Apart, so that the common case (no shadow held)
    /// keeps its one queue inline.
    #[cold]
    #[inline(never)]
    fn queue_shadows(
        &mut self,
        key: Key,
        index: u32,
        f: &Fragment<'_>,
        (start, end): (u32, u32),
        upper: Upper,
        mut said: Result<Decoded, DecodeError>,
    ) -> Result<Decoded, DecodeError> {
        for depth in 1..=MAX_SHADOWS {
            let Some(held) = self
                .index
                .get(&Key {
                    shadow: depth,
                    ..key
                })
                .copied()
            else {
                continue;
            };
            if held == index {
                continue;
            }
            let got = self.queue(held, f, start, end, upper);
            said = self.either(said, got).0;
        }
        said
    }

    /// A held datagram (`index`, under `key`) gets a fragment more than `max_dist` of its
    /// source's fragments after its previous one, and starts again. The kernel counts
    /// only the fragments it reassembles (those to this host, or all with connection
    /// tracking; never a frame for another MAC address), which cannot be told apart
    /// here: so the datagram as it was goes on beside the new one as its shadow, taking
    /// the same fragments, and whether the kernel started it again or not, its SYN is
    /// seen. After several restarts the kernel holds the datagram as it was since any
    /// one of them (the last one it counted), so a shadow is kept for each, up to
    /// [`MAX_SHADOWS`]. With all of them held, one of the copies (the one that just
    /// ended included) goes, picked at random: a fixed choice would let a sender who
    /// knows it arrange its rounds of junk so that the copy the kernel holds is always
    /// the one dropped.
    fn restart(&mut self, index: u32, key: Key) {
        let free = (1..=MAX_SHADOWS).find(|&depth| {
            !self.index.contains_key(&Key {
                shadow: depth,
                ..key
            })
        });
        let depth = match free {
            Some(depth) => depth,
            None => {
                let pick = self.pick_below(u64::from(MAX_SHADOWS) + 1) as u8;
                let goes = Key {
                    shadow: pick,
                    ..key
                };
                match self.index.get(&goes).copied() {
                    Some(victim) if pick != 0 => {
                        self.remove(victim);
                        pick
                    }
                    _ => {
                        self.remove(index);
                        return;
                    }
                }
            }
        };
        self.index.remove(&key);
        let shadow = Key {
            shadow: depth,
            ..key
        };
        self.index.insert(shadow, index);
        self.shadows += 1;
        if let Some(d) = self.slot_mut(index) {
            d.key = shadow;
        }
    }

    /// A number below `n` (xorshift64*; its state seeded at random).
    fn pick_below(&mut self, n: u64) -> u64 {
        let mut x = self.pick;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.pick = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }

    /// What a fragment of datagram `index`, `captured` bytes from `start` on, tells of
    /// its upper layer; an IPv6 one's bytes are kept while that is not known, and the
    /// chain its first fragment cut is followed. False when that chain cannot be judged.
    fn take_upper(
        &mut self,
        index: u32,
        f: &Fragment<'_>,
        (start, captured): (u32, u32),
        upper: Upper,
    ) -> bool {
        let Some(d) = self.slot_mut(index) else {
            return true;
        };
        match upper {
            Upper::Known(upper, transport_at) => {
                d.first_in = true;
                d.upper = upper;
                d.transport_at = transport_at;
                d.upper_known = true;
                d.pieces = Vec::new();
                d.header_len = f.header_len;
            }
            Upper::Cut(first) => {
                d.first_in = true;
                d.upper = first;
                d.header_len = f.header_len;
            }
            Upper::Refused => {
                d.first_in = true;
                d.header_len = f.header_len;
                d.refuse();
            }
            Upper::Later => {}
        }
        if d.upper_known || start >= CHAIN_CAP {
            return true;
        }
        let keep = captured.min(CHAIN_CAP - start) as usize;
        let bytes = f.payload.get(..keep).unwrap_or(&[]);
        d.pieces.push((start, bytes.into()));
        if d.first_in && !self.follow_chain(index) {
            // Held on as the kernel holds it (its overlaps count), never an attempt.
            if let Some(d) = self.slot_mut(index) {
                d.refuse();
            }
        }
        true
    }

    /// Walks the chain the first fragment of the IPv6 datagram `index` cut, over the
    /// bytes its fragments brought so far, once they reach far enough: on success the
    /// upper layer is known and its header's first bytes are in `head`. False when the
    /// chain cannot be judged (an extension header Linux refuses, a fragment inside,
    /// or longer than [`CHAIN_CAP`]): the datagram is no attempt.
    fn follow_chain(&mut self, index: u32) -> bool {
        let Some(d) = self.slot_mut(index) else {
            return true;
        };
        d.pieces.sort_unstable_by_key(|&(at, _)| at);
        let mut prefix: Vec<u8> = Vec::new();
        for (at, bytes) in &d.pieces {
            let at = *at as usize;
            if at > prefix.len() {
                break;
            }
            let new = bytes.get(prefix.len() - at..).unwrap_or(&[]);
            prefix.extend_from_slice(new);
        }
        match walk_ipv6(&prefix, d.upper, 0) {
            Ok(Walk::Upper { next, at }) if at + upper_need(next) <= prefix.len() => {
                d.upper = next;
                d.transport_at = at as u32;
                let head = prefix
                    .get(at..(at + HEAD_BYTES).min(prefix.len()))
                    .unwrap_or(&[]);
                if let Some(to) = d.head.get_mut(..head.len()) {
                    to.copy_from_slice(head);
                }
                d.upper_known = true;
                d.pieces = Vec::new();
                true
            }
            Ok(Walk::Upper { .. }) | Err(DecodeError::TruncatedIp) => {
                (prefix.len() as u32) < CHAIN_CAP
            }
            Ok(Walk::Fragment { .. }) | Err(_) => false,
        }
    }

    /// Linux's `ip_frag_too_far`: whether the IPv4 datagram `index`, holding fragments,
    /// gets this one (its source's fragment `rid`) after more than `max_dist` other
    /// fragments from that source. Marks the datagram with `rid` either way.
    fn too_far(&mut self, index: u32, rid: Option<u32>) -> bool {
        let max = self.limits.max_dist;
        let (Some(rid), Some(d)) = (rid, self.slot_mut(index)) else {
            return false;
        };
        let since = rid.wrapping_sub(std::mem::replace(&mut d.rid, rid));
        max > 0 && !d.runs.is_empty() && since > max
    }

    /// Linux's `ip_frag_queue`/`ip6_frag_queue` for one fragment of a held datagram.
    #[inline]
    fn queue(
        &mut self,
        index: u32,
        f: &Fragment<'_>,
        start: u32,
        end: u32,
        upper: Upper,
    ) -> Result<Decoded, DecodeError> {
        let Some(d) = self.slot_mut(index) else {
            return Ok(Decoded::Skipped(Skip::Fragment));
        };
        if d.end_conflicts(end, f.more) || end == start {
            // Connection tracking drops such a fragment alone (`nf_ct_frag6_queue`).
            if d.key.ct {
                return Ok(Decoded::Skipped(Skip::Fragment));
            }
            return self.discard(index);
        }
        let before = d.runs.len();
        match d.fit(start, end) {
            Fit::Duplicate => return Ok(Decoded::Skipped(Skip::Fragment)),
            Fit::Overlap => return self.discard(index),
            Fit::New => {
                if !d.insert(start, end) {
                    return self.discard(index);
                }
            }
        }
        let added = d.runs.len() - before;
        let ct = d.key.ct;
        d.meat += end - start;
        let captured = (f.payload.len() as u32).min(end - start);
        if captured < end - start {
            d.captured_to = d.captured_to.min(start + captured);
        }
        // Accounted before anything can discard the datagram (which takes them back).
        self.bytes += (end - start) as usize;
        if ct {
            self.ct_bytes += (end - start) as usize;
            self.ct_runs += added;
        }
        self.runs += added;
        if !self.take_upper(index, f, (start, captured), upper) {
            return self.discard(index);
        }
        let Some(d) = self.slot_mut(index) else {
            return Ok(Decoded::Skipped(Skip::Fragment));
        };
        // The transport header's first bytes: IPv4 ones may come in any fragment; IPv6
        // ones once its place is known (the first fragment holds them all unless it cut
        // the chain before them).
        if d.upper_known {
            let (t, s) = (d.transport_at as usize, start as usize);
            let from = t.max(s);
            let to = (s + captured as usize).min(t + HEAD_BYTES);
            if from < to
                && let (Some(head), Some(bytes)) = (
                    d.head.get_mut(from - t..to - t),
                    f.payload.get(from - s..to - s),
                )
            {
                head.copy_from_slice(bytes);
            }
        }
        if !self.make_room(index) {
            return Ok(Decoded::Skipped(Skip::Fragment));
        }
        let Some(d) = self.slot_mut(index) else {
            return Ok(Decoded::Skipped(Skip::Fragment));
        };
        let complete = d.complete();
        let oversize = if d.v6 {
            d.header_len - 40 + d.len > IP_MAX
        } else {
            d.header_len + d.len > IP_MAX
        };
        if complete && oversize {
            return self.discard(index);
        }
        let mut verdict = Ok(Decoded::Skipped(Skip::Fragment));
        if !d.judged
            && d.first_in
            && d.upper_known
            && let Some(judged) = d.judge(complete)
        {
            d.judged = true;
            if matches!(judged, Ok(Decoded::Segment(_))) && !d.key.ct {
                self.stats.completed += 1;
            }
            verdict = judged;
        }
        if complete {
            self.remove(index);
        }
        verdict
    }

    fn discard(&mut self, index: u32) -> Result<Decoded, DecodeError> {
        // The stack's datagrams are counted; the second reading of one mirrors it.
        if self.is_ct(index) {
            self.remove(index);
            return Ok(Decoded::Skipped(Skip::Fragment));
        }
        self.remove(index);
        self.dropped()
    }

    /// Whether datagram `index` is connection tracking's reading of an IPv6 one.
    fn is_ct(&self, index: u32) -> bool {
        self.slot(index).is_some_and(|d| d.key.ct)
    }

    /// Evicts the oldest datagrams other than `keep` while over the byte budget; false
    /// when `keep` alone is over it (then it is evicted too).
    fn make_room(&mut self, keep: u32) -> bool {
        loop {
            // Each budget evicts from its own pools only: junk one reading throws away
            // at once (and the kernel with it) must not push the other's datagrams out.
            let stack = self.bytes - self.ct_bytes > self.limits.max_bytes
                || self.runs - self.ct_runs > MAX_RUNS_HELD;
            let pools: &[usize] = if stack {
                &STACK
            } else if self.ct_bytes > self.limits.max_bytes || self.ct_runs > MAX_RUNS_HELD {
                &CONNTRACK
            } else {
                return true;
            };
            let victim = self.oldest_but(keep, pools);
            if victim == NIL {
                self.stats.evicted += u64::from(!self.is_ct(keep));
                self.remove(keep);
                return false;
            }
            self.stats.evicted += u64::from(!self.is_ct(victim));
            self.remove(victim);
        }
    }

    /// The oldest datagram of either family other than `keep` (`NIL` if none).
    /// The oldest datagram of the lists `pools` other than `keep` (`NIL` if none).
    fn oldest_but(&self, keep: u32, pools: &[usize]) -> u32 {
        let head = |list: usize| {
            let i = self.oldest[list];
            let i = if i == keep {
                self.slot(keep).map_or(NIL, |d| d.newer)
            } else {
                i
            };
            self.slot(i).map(|d| (d.created_ns, i))
        };
        pools
            .iter()
            .filter_map(|&list| head(list))
            .min()
            .map_or(NIL, |(_, i)| i)
    }

    fn create(&mut self, key: Key, f: &Fragment<'_>, now_ns: u64) -> u32 {
        let full = |r: &Self| {
            let held = if key.ct {
                r.ct_held
            } else {
                r.index.len() - r.ct_held
            };
            held >= r.limits.max_datagrams
        };
        let pools: &[usize] = if key.ct { &CONNTRACK } else { &STACK };
        while full(self) {
            let oldest = self.oldest_but(NIL, pools);
            if oldest == NIL {
                break;
            }
            self.stats.evicted += u64::from(!self.is_ct(oldest));
            self.remove(oldest);
        }
        let family = pool(f.v6, key.ct);
        let datagram = Datagram {
            key,
            v6: f.v6,
            created_ns: now_ns,
            older: self.newest[family],
            newer: NIL,
            len: 0,
            meat: 0,
            first_in: false,
            last_in: false,
            judged: false,
            upper: if f.v6 { 0 } else { f.next },
            transport_at: 0,
            header_len: f.header_len,
            captured_to: u32::MAX,
            head: [0; HEAD_BYTES],
            upper_known: !f.v6,
            pieces: Vec::new(),
            runs: SmallVec::new(),
            rid: 0,
        };
        let index = match self.free.pop() {
            Some(index) => {
                if let Some(slot) = self.slots.get_mut(index as usize) {
                    *slot = Some(datagram);
                }
                index
            }
            None => {
                self.slots.push(Some(datagram));
                (self.slots.len() - 1) as u32
            }
        };
        let newest = self.newest[family];
        match self.slot_mut(newest) {
            Some(prev) => prev.newer = index,
            None => self.oldest[family] = index,
        }
        self.newest[family] = index;
        self.index.insert(key, index);
        self.ct_held += usize::from(key.ct);
        if !f.v6 {
            let peer = self.peers.entry(key.src).or_insert_with(|| Peer {
                // This fragment, which [`Reassembler::fragment`] could not count yet.
                rid: 1,
                held: 0,
            });
            peer.held += 1;
            let rid = peer.rid;
            if let Some(d) = self.slot_mut(index) {
                d.rid = rid;
            }
        }
        index
    }

    fn remove(&mut self, index: u32) {
        let Some(d) = self.slots.get_mut(index as usize).and_then(Option::take) else {
            return;
        };
        let family = pool(d.v6, d.key.ct);
        match self.slot_mut(d.older) {
            Some(older) => older.newer = d.newer,
            None => self.oldest[family] = d.newer,
        }
        match self.slot_mut(d.newer) {
            Some(newer) => newer.older = d.older,
            None => self.newest[family] = d.older,
        }
        self.index.remove(&d.key);
        if d.key.shadow != 0 {
            self.shadows -= 1;
        }
        if d.key.ct {
            self.ct_held -= 1;
            self.ct_bytes -= d.meat as usize;
            self.ct_runs -= d.runs.len();
        }
        self.bytes -= d.meat as usize;
        self.runs -= d.runs.len();
        if !d.v6
            && let Some(peer) = self.peers.get_mut(&d.key.src)
        {
            peer.held -= 1;
            if peer.held == 0 {
                self.peers.remove(&d.key.src);
            }
        }
        self.free.push(index);
    }
}

#[cfg(test)]
mod tests;
