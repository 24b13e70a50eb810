//! Reassembly tests. Fragments are built by hand (etherparse does not fragment), from a
//! TCP header laid out here, so every offset and length is visible in the test.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::{Segment, TcpFlags, Transport, decode};

const SEC: u64 = 1_000_000_000;
const SRC4: [u8; 4] = [192, 0, 2, 56];
const DST4: [u8; 4] = [10, 0, 0, 5];
const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A TCP SYN header 5973 -> 80 with `option_words` 4-byte words of NOP options, then
/// `data` bytes of payload.
fn tcp_syn(option_words: u8, data: usize) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&5973u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = (5 + option_words) << 4;
    tcp[13] = TcpFlags::SYN;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    tcp.extend(vec![1u8; usize::from(option_words) * 4]);
    tcp.extend(vec![0xabu8; data]);
    tcp
}

/// One IPv4 fragment: `data` at byte `offset` of the datagram's payload.
fn v4_frag(id: u16, proto: u8, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0x45, 0];
    pkt.extend(((20 + data.len()) as u16).to_be_bytes());
    pkt.extend(id.to_be_bytes());
    let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    pkt.extend(field.to_be_bytes());
    pkt.extend([64, proto, 0, 0]);
    pkt.extend(SRC4);
    pkt.extend(DST4);
    pkt.extend(data);
    crate::set_ipv4_checksum(&mut pkt);
    pkt
}

/// `payload` split into IPv4 fragments of `size` bytes (nmap -f: 8).
fn v4_split(id: u16, payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| v4_frag(id, 6, i * size, i + 1 < chunks.len(), chunk))
        .collect()
}

fn ip6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not v6"),
    }
}

/// One IPv6 fragment: fixed header, fragment header (next header `next`), `data` at
/// byte `offset` of the fragmentable part.
fn v6_frag(id: u32, next: u8, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0x60, 0, 0, 0];
    pkt.extend(((8 + data.len()) as u16).to_be_bytes());
    pkt.extend([44, 64]);
    pkt.extend(ip6("2001:db8::bad"));
    pkt.extend(ip6("2001:db8::5"));
    let field = offset as u16 | u16::from(more);
    pkt.extend([next, 0]);
    pkt.extend(field.to_be_bytes());
    pkt.extend(id.to_be_bytes());
    pkt.extend(data);
    pkt
}

/// An IPv6 fragment of TCP (more to come) behind one 8-byte extension header of type
/// `kind` holding `options`, from `data` at byte `offset` of the fragmentable part.
fn v6_frag_behind(kind: u8, options: [u8; 6], id: u32, offset: usize, data: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0x60, 0, 0, 0];
    pkt.extend(((16 + data.len()) as u16).to_be_bytes());
    pkt.extend([kind, 64]);
    pkt.extend(ip6("2001:db8::bad"));
    pkt.extend(ip6("2001:db8::5"));
    pkt.extend([44, 0]);
    pkt.extend(options);
    pkt.extend([6, 0]);
    pkt.extend((offset as u16 | 1).to_be_bytes());
    pkt.extend(id.to_be_bytes());
    pkt.extend(data);
    pkt
}

/// [`feed`] of raw IP packets some of which decode refuses (`BadIpv6Extension`): the
/// segments, and the positions of the refused packets.
fn feed_refused(r: &mut Reassembler, packets: &[Vec<u8>]) -> (Vec<Segment>, Vec<usize>) {
    let (mut got, mut refused) = (Vec::new(), Vec::new());
    for (i, p) in packets.iter().enumerate() {
        match r.decode(LinkType::Raw, p, 0) {
            Ok(Decoded::Segment(s)) => got.push(s),
            Ok(Decoded::Skipped(_)) => {}
            Err(DecodeError::BadIpv6Extension) => refused.push(i),
            other => panic!("unexpected {other:?}"),
        }
        got.extend(std::iter::from_fn(|| r.take_extra()));
    }
    (got, refused)
}

/// A destination options header of 8 bytes (six Pad1 options).
fn dst_opts(next: u8) -> Vec<u8> {
    vec![next, 0, 0, 0, 0, 0, 0, 0]
}

fn feed(r: &mut Reassembler, link: LinkType, packets: &[Vec<u8>], now: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for p in packets {
        match r.decode(link, p, now) {
            Ok(Decoded::Segment(s)) => out.push(s),
            Ok(Decoded::Skipped(Skip::Fragment)) => {}
            other => panic!("unexpected {other:?}"),
        }
        out.extend(std::iter::from_fn(|| r.take_extra()));
    }
    out
}

fn syn_v4(s: &Segment) {
    assert_eq!((s.src, s.dst), (ip("192.0.2.56"), ip("10.0.0.5")));
    assert_eq!((s.sport, s.dport), (5973, 80));
    assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));
}

fn one_segment(r: &mut Reassembler, link: LinkType, packets: &[Vec<u8>]) -> Segment {
    let got = feed(r, link, packets, 0);
    assert_eq!(got.len(), 1, "{got:?}");
    got[0]
}

#[test]
fn nmap_f_in_order_gives_one_syn_once_the_header_is_whole() {
    let frags = v4_split(7, &tcp_syn(0, 0), 8);
    assert_eq!(frags.len(), 3);
    // What decode() alone makes of them.
    assert_eq!(
        decode(LinkType::Raw, &frags[0]),
        Err(DecodeError::TruncatedTcp)
    );
    assert_eq!(
        decode(LinkType::Raw, &frags[1]),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    let mut r = Reassembler::default();
    for (i, frag) in frags.iter().enumerate() {
        let got = r.decode(LinkType::Raw, frag, 0);
        if i < 2 {
            assert_eq!(got, Ok(Decoded::Skipped(Skip::Fragment)));
        } else {
            let Ok(Decoded::Segment(s)) = got else {
                panic!("{got:?}")
            };
            syn_v4(&s);
            assert_eq!(s.ip_len, 40);
        }
    }
    let stats = r.stats();
    assert_eq!((stats.fragments, stats.completed, stats.dropped), (3, 1, 0));
    assert_eq!((stats.datagrams_in_use, stats.bytes_in_use), (0, 0));
}

#[test]
fn nmap_f_reversed_and_with_options() {
    let mut frags = v4_split(8, &tcp_syn(0, 0), 8);
    frags.reverse();
    let mut r = Reassembler::default();
    let s = one_segment(&mut r, LinkType::Raw, &frags);
    syn_v4(&s);
    assert_eq!(s.ip_len, 40);

    // A 40-byte header (options) and data: judged when the options are in, before the
    // last fragment; ip_len is then what has been seen.
    let frags = v4_split(9, &tcp_syn(5, 24), 8);
    let mut r = Reassembler::default();
    let got = feed(&mut r, LinkType::Raw, &frags[..5], 0);
    assert_eq!(got.len(), 1);
    syn_v4(&got[0]);
    assert_eq!(got[0].ip_len, 20 + 40);
    assert!(feed(&mut r, LinkType::Raw, &frags[5..], 0).is_empty());
    assert_eq!(r.stats().completed, 1);
    assert_eq!(r.stats().datagrams_in_use, 0);
}

#[test]
fn duplicates_are_ignored_and_the_datagram_kept() {
    let f = v4_split(10, &tcp_syn(0, 0), 8);
    let mut r = Reassembler::default();
    let packets = [
        f[0].clone(),
        f[0].clone(),
        f[1].clone(),
        f[0].clone(),
        f[1].clone(),
        f[2].clone(),
    ];
    syn_v4(&one_segment(&mut r, LinkType::Raw, &packets));
    assert_eq!(r.stats().dropped, 0);
    // A fragment inside a larger one held is a duplicate too.
    let tcp = tcp_syn(0, 12);
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(11, 6, 0, true, &tcp[..24]),
            v4_frag(11, 6, 8, true, &tcp[8..16]),
            v4_frag(11, 6, 24, false, &tcp[24..]),
        ],
        0,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(r.stats().dropped, 0);
}

#[test]
fn a_repeated_first_fragment_after_the_verdict_gives_no_second_segment() {
    let tcp = tcp_syn(0, 16);
    let first = v4_frag(12, 6, 0, true, &tcp[..24]);
    let last = v4_frag(12, 6, 24, false, &tcp[24..]);
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[first.clone(), first.clone(), first, last],
        0,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ip_len, 20 + 24, "judged before the last fragment");
    assert_eq!(r.stats().completed, 1);
    assert_eq!(r.stats().datagrams_in_use, 0);
}

#[test]
fn a_partial_overlap_discards_the_datagram() {
    let tcp = tcp_syn(0, 12);
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(13, 6, 0, true, &tcp[..16]),
            v4_frag(13, 6, 8, true, &tcp[8..24]),
            v4_frag(13, 6, 16, true, &tcp[16..24]),
            v4_frag(13, 6, 24, false, &tcp[24..]),
        ],
        0,
    );
    assert!(got.is_empty());
    let stats = r.stats();
    assert_eq!(stats.dropped, 1);
    // The two after the overlap started a new datagram, which lacks its first fragment.
    assert_eq!(stats.datagrams_in_use, 1);
    assert_eq!(stats.completed, 0);
}

#[test]
fn conflicting_ends_discard_the_datagram() {
    let tcp = tcp_syn(0, 12);
    // A second last fragment with another end.
    let mut r = Reassembler::default();
    feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(14, 6, 24, false, &tcp[24..]),
            v4_frag(14, 6, 24, false, &tcp[24..28]),
        ],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
    // Data beyond a known end.
    let mut r = Reassembler::default();
    feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(15, 6, 8, false, &tcp[8..16]),
            v4_frag(15, 6, 16, true, &tcp[16..24]),
        ],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
    // A last fragment ending before data held.
    let mut r = Reassembler::default();
    feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(16, 6, 16, true, &tcp[16..24]),
            v4_frag(16, 6, 8, false, &tcp[8..16]),
        ],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
}

#[test]
fn ipv4_non_last_fragments_are_trimmed_to_eight_bytes_like_linux() {
    // The first fragment holds 12 bytes: Linux keeps 8; the next one starts at 8 and
    // is no overlap.
    let tcp = tcp_syn(0, 0);
    let mut r = Reassembler::default();
    let s = one_segment(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(17, 6, 0, true, &tcp[..12]),
            v4_frag(17, 6, 8, false, &tcp[8..]),
        ],
    );
    syn_v4(&s);
    assert_eq!(s.ip_len, 40);
    assert_eq!(r.stats().dropped, 0);
    // Trimmed to nothing: the datagram is discarded (Linux `end == offset`).
    let mut r = Reassembler::default();
    feed(
        &mut r,
        LinkType::Raw,
        &[v4_frag(18, 6, 0, true, &tcp[..4])],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
}

#[test]
fn ipv6_with_the_chain_in_the_first_fragment() {
    // Destination options in the fragmentable part, then a 32-byte TCP header whose last
    // 8 option bytes are in the second fragment.
    let mut part = dst_opts(6);
    part.extend(tcp_syn(3, 0));
    assert_eq!(part.len(), 40);
    let frags = [
        v6_frag(0xdead_beef, 60, 0, true, &part[..32]),
        v6_frag(0xdead_beef, 60, 32, false, &part[32..]),
    ];
    for order in [[0, 1], [1, 0]] {
        let mut r = Reassembler::default();
        let packets: Vec<Vec<u8>> = order.iter().map(|&i| frags[i].clone()).collect();
        let got = r.decode(LinkType::Ipv6, &packets[0], 0);
        assert_eq!(got, Ok(Decoded::Skipped(Skip::Fragment)));
        let Ok(Decoded::Segment(s)) = r.decode(LinkType::Ipv6, &packets[1], 0) else {
            panic!("no segment");
        };
        assert_eq!((s.src, s.dst), (ip("2001:db8::bad"), ip("2001:db8::5")));
        assert_eq!((s.sport, s.dport), (5973, 80));
        assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));
        // Fixed header plus the 40-byte fragmentable part; the fragment header is gone.
        assert_eq!(s.ip_len, 80);
        assert_eq!(r.stats().datagrams_in_use, 0);
    }
}

#[test]
fn ipv6_first_fragment_without_the_whole_tcp_header_is_dropped() {
    let tcp = tcp_syn(0, 8);
    let first = v6_frag(1, 6, 0, true, &tcp[..16]);
    let rest = v6_frag(1, 6, 16, false, &tcp[16..]);
    // decode() alone: an error, not an attempt.
    assert_eq!(
        decode(LinkType::Raw, &first),
        Err(DecodeError::TruncatedTcp)
    );
    let mut r = Reassembler::default();
    assert!(feed(&mut r, LinkType::Raw, &[first, rest], 0).is_empty());
    let stats = r.stats();
    assert_eq!((stats.dropped, stats.completed), (1, 0));
    // The later fragment waits for a first fragment that will never come.
    assert_eq!(stats.datagrams_in_use, 1);

    // The chain itself cut inside the first fragment: dropped as well.
    let mut part = vec![6, 2];
    part.extend([0u8; 22]);
    part.extend(tcp_syn(0, 0));
    let mut r = Reassembler::default();
    feed(
        &mut r,
        LinkType::Raw,
        &[v6_frag(2, 60, 0, true, &part[..16])],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
}

/// An 8-byte destination-options header (padding only) whose next header is `next`.
fn dest_opts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A destination-options header of `len` bytes (a multiple of 8, 16 to 2048) whose next
/// header is `next`, filled with options Linux skips (type 0x1e, experimental, of up to
/// 255 bytes; no more than 7 bytes of padding, which Linux refuses).
fn options_header(next: u8, len: usize) -> Vec<u8> {
    let mut h = vec![next, (len / 8 - 1) as u8];
    while h.len() < len {
        let room = len - h.len();
        let n = room.min(257);
        h.push(0x1e);
        h.push((n - 2) as u8);
        h.resize(h.len() + n - 2, 0);
    }
    h
}

/// A 16-byte destination-options header whose next header is `next`.
fn opts16(next: u8) -> Vec<u8> {
    options_header(next, 16)
}

/// The SYN of the chain `chain` (extension headers, then TCP) split at `cuts` into IPv6
/// fragments of datagram `id`, the first fragment's next header being `first`.
fn v6_chain_split(id: u32, first: u8, chain: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(chain.len());
    bounds
        .windows(2)
        .map(|w| v6_frag(id, first, w[0], w[1] < chain.len(), &chain[w[0]..w[1]]))
        .collect()
}

#[test]
fn ipv6_first_fragment_that_cuts_the_chain_before_an_extension_header_is_followed() {
    // Linux's RFC 7112 check walks the first fragment's chain as far as it can read each
    // header's first two bytes; when it cannot read the next extension header, the check
    // passes and the fragment is queued, so the reassembled SYN is answered. Here the
    // first fragment holds one destination-options header whose next header (another)
    // is in the second fragment, with the TCP header.
    let mut chain = dest_opts(60);
    chain.extend(dest_opts(6));
    chain.extend(tcp_syn(0, 0));
    let frags = v6_chain_split(7, 60, &chain, &[8]);
    let syn = |s: &Segment| {
        assert_eq!((s.src, s.dst), (ip("2001:db8::bad"), ip("2001:db8::5")));
        assert_eq!((s.sport, s.dport), (5973, 80));
        assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));
    };
    let mut r = Reassembler::default();
    syn(&one_segment(&mut r, LinkType::Raw, &frags));
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (0, 0));
    // In any order, and in 8-byte pieces.
    let mut reversed = frags.clone();
    reversed.reverse();
    syn(&one_segment(
        &mut Reassembler::default(),
        LinkType::Raw,
        &reversed,
    ));
    let cuts: Vec<usize> = (8..chain.len()).step_by(8).collect();
    let mut pieces = v6_chain_split(8, 60, &chain, &cuts);
    pieces.rotate_left(2);
    syn(&one_segment(
        &mut Reassembler::default(),
        LinkType::Raw,
        &pieces,
    ));
    // Cut inside a 16-byte header followed by another extension header: Linux reads the
    // first two bytes, skips past the fragment's end and cannot read the next header, so
    // it passes too.
    let mut long = opts16(60);
    long.extend(dest_opts(6));
    long.extend(tcp_syn(0, 0));
    syn(&one_segment(
        &mut Reassembler::default(),
        LinkType::Raw,
        &v6_chain_split(9, 60, &long, &[8]),
    ));
    // Cut inside a 16-byte header that the TCP header follows: Linux's walk reaches TCP
    // and finds it past the fragment's end, so the fragment is dropped: no attempt.
    let mut direct = opts16(6);
    direct.extend(tcp_syn(0, 0));
    let mut r = Reassembler::default();
    assert!(
        feed(
            &mut r,
            LinkType::Raw,
            &v6_chain_split(10, 60, &direct, &[8]),
            0
        )
        .is_empty()
    );
    assert_eq!(r.stats().dropped, 1);
}

#[test]
fn a_cut_chain_is_judged_like_a_whole_one_and_only_so_far() {
    // An extension header Linux refuses, met after the cut: the datagram is no attempt,
    // but reassembly holds it until it completes, as the kernel's does (it judges no
    // header of the fragmentable part: the stack refuses the datagram once whole).
    let mut chain = dest_opts(60);
    let mut refused = dest_opts(6);
    refused[2] = 0x80; // an unknown option whose type says "discard"
    chain.extend(refused);
    chain.extend(tcp_syn(0, 0));
    let mut r = Reassembler::default();
    assert!(
        feed(
            &mut r,
            LinkType::Raw,
            &v6_chain_split(11, 60, &chain, &[8]),
            0
        )
        .is_empty()
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (0, 0));
    // A chain that runs on past CHAIN_CAP cannot be judged: no attempt, the datagram held
    // until it completes. (One that ends below it is followed.)
    let big = 2048usize;
    let long_chain = |headers: usize| {
        let mut chain = Vec::new();
        for _ in 0..headers {
            chain.extend(options_header(60, big));
        }
        let last = chain.len() - big;
        chain[last] = 6;
        chain.extend(tcp_syn(0, 0));
        let cuts: Vec<usize> = (1..chain.len() / 1400 + 1).map(|i| i * 1400).collect();
        v6_chain_split(12, 60, &chain, &cuts)
    };
    let mut r = Reassembler::default();
    let under = CHAIN_CAP as usize / big;
    assert_eq!(feed(&mut r, LinkType::Raw, &long_chain(under), 0).len(), 1);
    assert!(feed(&mut r, LinkType::Raw, &long_chain(under + 1), 0).is_empty());
    assert_eq!(r.stats().dropped, 0);
    r.expire(61 * SEC);
    assert_eq!((r.stats().datagrams_in_use, r.stats().bytes_in_use), (0, 0));
}

#[test]
fn a_fragment_claiming_more_than_its_whole_frame_is_dropped_not_taken_for_a_cut() {
    // Junk the kernel drops before reassembly (its IP length runs past the frame) sent
    // across a real SYN's fragments: taken for a fragment a snap length cut, it
    // overlapped them and discarded the SYN's datagram here alone.
    let tcp = tcp_syn(6, 0);
    let mut junk6 = v6_frag(21, 6, 16, true, &[0u8; 16]);
    junk6[4..6].copy_from_slice(&(8u16 + 16 + 8).to_be_bytes());
    let v6 = vec![
        v6_frag(21, 6, 0, true, &tcp[..24]),
        junk6,
        v6_frag(21, 6, 24, false, &tcp[24..]),
    ];
    let mut junk4 = v4_frag(22, 6, 16, true, &[0u8; 16]);
    junk4[2..4].copy_from_slice(&(20u16 + 16 + 8).to_be_bytes());
    crate::set_ipv4_checksum(&mut junk4);
    let v4 = vec![
        v4_frag(22, 6, 0, true, &tcp[..24]),
        junk4,
        v4_frag(22, 6, 24, false, &tcp[24..]),
    ];
    for packets in [v6, v4] {
        let mut r = Reassembler::default();
        let mut got = Vec::new();
        for p in &packets {
            if let Ok(Decoded::Segment(s)) = r.decode_framed(LinkType::Raw, p, p.len(), 0) {
                got.push(s);
            }
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].sport, got[0].dport), (5973, 80));
        assert_eq!(r.stats().dropped, 1);
        // Where the capture may have cut the frame, the short fragment is taken as cut:
        // it overlaps, and the datagram goes (what a snap-length cut capture can show).
        let mut r = Reassembler::default();
        assert!(feed(&mut r, LinkType::Raw, &packets, 0).is_empty());
    }
}

#[test]
fn ipv6_bad_fragment_lengths_are_dropped_alone() {
    let tcp = tcp_syn(0, 12);
    let mut r = Reassembler::default();
    // Not a multiple of 8 and not the last: dropped, its datagram held empty (the
    // kernel looked it up, and so created it, before it refused the fragment).
    feed(
        &mut r,
        LinkType::Raw,
        &[v6_frag(3, 6, 0, true, &tcp[..28])],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 1));
    // Payload length 0 (jumbo) with a fragment header: refused before the lookup.
    let mut jumbo = v6_frag(4, 6, 0, true, &tcp[..24]);
    jumbo[4..6].copy_from_slice(&[0, 0]);
    feed(&mut r, LinkType::Raw, &[jumbo], 0);
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (2, 1));
    // Ending past 65535: after the lookup.
    feed(
        &mut r,
        LinkType::Raw,
        &[v6_frag(5, 6, 65528, false, &tcp[..16])],
        0,
    );
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (3, 2));
    assert!(r.runs_agree());
}

#[test]
fn the_timeout_is_30_s_from_the_first_fragment_inclusive() {
    let f = v4_split(20, &tcp_syn(0, 0), 8);
    let t0 = 5 * SEC;
    // Exactly 30 s later: still the same datagram.
    let mut r = Reassembler::default();
    assert!(feed(&mut r, LinkType::Raw, &f[..2], t0).is_empty());
    assert_eq!(r.next_expiry_ns(), Some(t0 + 30 * SEC + 1));
    assert_eq!(feed(&mut r, LinkType::Raw, &f[2..], t0 + 30 * SEC).len(), 1);
    assert_eq!(r.stats().timed_out, 0);

    // 30 s + 1 ns later: a new datagram, which lacks the first two fragments.
    let mut r = Reassembler::default();
    feed(&mut r, LinkType::Raw, &f[..2], t0);
    assert!(feed(&mut r, LinkType::Raw, &f[2..], t0 + 30 * SEC + 1).is_empty());
    let stats = r.stats();
    assert_eq!((stats.timed_out, stats.datagrams_in_use), (1, 1));

    // expire() on its own, at the boundary.
    let mut r = Reassembler::default();
    feed(&mut r, LinkType::Raw, &f[..1], t0);
    r.expire(t0 + 30 * SEC);
    assert_eq!(r.stats().datagrams_in_use, 1);
    r.expire(t0 + 30 * SEC + 1);
    assert_eq!((r.stats().datagrams_in_use, r.stats().timed_out), (0, 1));
    assert_eq!(r.next_expiry_ns(), None);

    // A shorter configured timeout.
    let mut r = Reassembler::new(ReassemblyLimits {
        timeout_ns: SEC,
        ..ReassemblyLimits::default()
    });
    feed(&mut r, LinkType::Raw, &f[..2], 0);
    assert!(feed(&mut r, LinkType::Raw, &f[2..], SEC + 1).is_empty());
}

#[test]
fn an_ipv6_datagram_waits_60_s_like_ip6frag_time() {
    // Linux keeps an IPv6 datagram 60 s (net.ipv6.ip6frag_time), not IPv4's 30 s: a
    // scanner that sends the tail of each fragmented SYN 40 s after its head still gets
    // an answer, so the SYN must still be seen. (The head holds the base TCP header, as
    // RFC 7112 wants, but not its options.)
    let part = tcp_syn(3, 0);
    let v6 = [
        v6_frag(7, 6, 0, true, &part[..24]),
        v6_frag(7, 6, 24, false, &part[24..]),
    ];
    let v4 = v4_split(21, &tcp_syn(0, 0), 8);
    let t0 = 5 * SEC;
    let mut r = Reassembler::default();
    assert!(feed(&mut r, LinkType::Ipv6, &v6[..1], t0).is_empty());
    // An IPv4 datagram begun later times out first, and does not take the IPv6 one along.
    assert!(feed(&mut r, LinkType::Raw, &v4[..1], t0 + SEC).is_empty());
    assert_eq!(r.next_expiry_ns(), Some(t0 + 31 * SEC + 1));
    r.expire(t0 + 40 * SEC);
    assert_eq!((r.stats().timed_out, r.stats().datagrams_in_use), (1, 1));
    assert_eq!(r.next_expiry_ns(), Some(t0 + 60 * SEC + 1));
    let got = feed(&mut r, LinkType::Ipv6, &v6[1..], t0 + 60 * SEC);
    assert_eq!(
        got.len(),
        1,
        "the IPv6 SYN completed 60 s after its first fragment"
    );
    assert_eq!(got[0].transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));

    // A nanosecond later it is a new datagram, lacking its head.
    let mut r = Reassembler::default();
    feed(&mut r, LinkType::Ipv6, &v6[..1], t0);
    assert!(feed(&mut r, LinkType::Ipv6, &v6[1..], t0 + 60 * SEC + 1).is_empty());
    assert_eq!(r.stats().timed_out, 1);
}

#[test]
fn the_oldest_datagram_of_either_family_is_pushed_out_first() {
    let part = tcp_syn(3, 0);
    let mut r = Reassembler::new(ReassemblyLimits {
        max_datagrams: 2,
        ..ReassemblyLimits::default()
    });
    let old6 = v6_frag(1, 6, 0, true, &part[..24]);
    let v4 = v4_split(2, &part, 8);
    feed(&mut r, LinkType::Ipv6, &[old6], 0);
    feed(&mut r, LinkType::Raw, &v4[..1], SEC);
    // A third datagram pushes out the IPv6 one (the oldest), not the IPv4 one.
    feed(
        &mut r,
        LinkType::Ipv6,
        &[v6_frag(3, 6, 0, true, &part[..24])],
        2 * SEC,
    );
    assert_eq!(r.stats().evicted, 1);
    assert_eq!(feed(&mut r, LinkType::Raw, &v4[1..], 2 * SEC).len(), 1);
}

/// A small xorshift, so the flood is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_flood_of_spoofed_first_fragments_stays_within_bounds() {
    let limits = ReassemblyLimits::default();
    let mut r = Reassembler::new(limits);
    // Spoofed first fragments: 8 bytes of TCP (held, waiting), or a whole SYN header
    // and data (judged at once, then held until complete or pushed out).
    let big = v4_frag(1, 6, 0, true, &tcp_syn(0, 1460));
    let small = v4_frag(1, 6, 0, true, &tcp_syn(0, 0)[..8]);
    let normal = {
        let mut p = v4_frag(99, 6, 0, false, &tcp_syn(0, 0));
        p[6..8].copy_from_slice(&[0, 0]);
        p
    };
    let nmap_f = v4_split(4242, &tcp_syn(0, 0), 8);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut segments = 0;
    for i in 0..1_000_000u64 {
        let now = i * 1_000; // 1M fragments a second
        let x = next(&mut rng);
        let mut p = if x & 1 == 0 {
            big.clone()
        } else {
            small.clone()
        };
        p[12..16].copy_from_slice(&(x >> 8).to_be_bytes()[..4]);
        p[4..6].copy_from_slice(&(x as u16).to_be_bytes());
        crate::set_ipv4_checksum(&mut p);
        let got = r.decode(LinkType::Raw, &p, now);
        if x & 1 == 0 {
            assert!(matches!(got, Ok(Decoded::Segment(_))), "{got:?}");
        } else {
            assert_eq!(got, Ok(Decoded::Skipped(Skip::Fragment)));
        }
        if i == 500_000 {
            let Ok(Decoded::Segment(s)) = r.decode(LinkType::Raw, &normal, now) else {
                panic!("the normal SYN was lost in the flood");
            };
            syn_v4(&s);
            segments += feed(&mut r, LinkType::Raw, &nmap_f, now).len();
        }
        let stats = r.stats();
        assert!(stats.datagrams_in_use <= limits.max_datagrams as u64);
        assert!(stats.bytes_in_use <= limits.max_bytes as u64);
    }
    assert_eq!(segments, 1, "the fragmented SYN in the flood");
    let stats = r.stats();
    assert!(
        stats.evicted >= 1_000_000 - limits.max_datagrams as u64,
        "{stats:?}"
    );
    assert_eq!(stats.fragments, 1_000_003);
    assert_eq!(stats.timed_out, 0);
    // The fragmented SYN's datagram completed; every other one is held or was evicted.
    assert_eq!(
        stats.evicted + stats.datagrams_in_use,
        1_000_000,
        "every datagram is held or was evicted: {stats:?}"
    );
}

#[test]
fn small_limits_evict_oldest_first() {
    let mut r = Reassembler::new(ReassemblyLimits {
        max_datagrams: 2,
        max_bytes: 100,
        ..ReassemblyLimits::default()
    });
    let tcp = tcp_syn(0, 0);
    // Three datagrams: the first is evicted, the later two complete.
    let a = v4_split(1, &tcp, 8);
    let b = v4_split(2, &tcp, 8);
    let c = v4_split(3, &tcp, 8);
    feed(
        &mut r,
        LinkType::Raw,
        &[a[0].clone(), b[0].clone(), c[0].clone()],
        0,
    );
    assert_eq!(r.stats().evicted, 1);
    assert!(feed(&mut r, LinkType::Raw, &a[1..], 0).is_empty());
    // a's late fragments made a new datagram, pushing b out.
    assert_eq!(r.stats().evicted, 2);
    assert_eq!(feed(&mut r, LinkType::Raw, &c[1..], 0).len(), 1);
    // One fragment alone over the byte budget does not stay.
    feed(
        &mut r,
        LinkType::Raw,
        &[v4_frag(4, 6, 0, true, &[0; 128])],
        0,
    );
    assert!(r.stats().bytes_in_use <= 100);
    assert_eq!(r.limits().max_datagrams, 2);
    assert_eq!(
        Reassembler::new(ReassemblyLimits {
            max_datagrams: 0,
            ..ReassemblyLimits::default()
        })
        .limits()
        .max_datagrams,
        1
    );
}

#[test]
fn an_entry_stays_small() {
    assert!(std::mem::size_of::<Option<Datagram>>() < 256);
}

/// A TCP header with ACK alone (no attempt), 5973 -> 80 like [`tcp_syn`]'s.
fn tcp_ack() -> Vec<u8> {
    let mut tcp = tcp_syn(0, 0);
    tcp[13] = TcpFlags::ACK;
    tcp
}

fn flags_of(segments: &[Segment]) -> Vec<Transport> {
    segments.iter().map(|s| s.transport).collect()
}

#[test]
fn seventy_gaps_between_the_header_pieces_keep_the_datagram_as_linux_does() {
    // The first 8 bytes, 70 separate pieces of payload, then the rest of the header:
    // Linux holds them all and answers the SYN (this table once dropped a datagram past
    // 64 separate ranges, so the scan went unseen).
    let tcp = tcp_syn(0, 8);
    let mut packets = vec![v4_frag(5, 6, 0, true, &tcp[..8])];
    for i in 0..70 {
        packets.push(v4_frag(5, 6, 40 + i * 16, true, &[0; 8]));
    }
    packets.push(v4_frag(5, 6, 8, true, &tcp[8..24]));
    let mut r = Reassembler::default();
    syn_v4(&one_segment(&mut r, LinkType::Raw, &packets));
    assert_eq!(r.stats().dropped, 0);
}

#[test]
fn fragments_in_reverse_are_runs_of_their_own_and_complete() {
    // 2,000 runs of 8 bytes, none extended at the tail: complete once every byte is in.
    let mut payload = tcp_syn(0, 0);
    payload.resize(16_000, 0);
    let mut frags = v4_split(6, &payload, 8);
    frags.reverse();
    let mut r = Reassembler::default();
    assert!(feed(&mut r, LinkType::Raw, &frags[..1000], 0).is_empty());
    assert_eq!(r.runs, 1000);
    syn_v4(&one_segment(&mut r, LinkType::Raw, &frags[1000..]));
    let stats = r.stats();
    assert_eq!(
        (stats.completed, stats.dropped, stats.datagrams_in_use),
        (1, 0, 0)
    );
    assert_eq!(r.runs, 0);
}

#[test]
fn a_fragment_spanning_two_runs_is_an_overlap_as_in_linux() {
    // Held: [8, 16) then [0, 8), two runs. [0, 16) brings no new byte, but it lies in no
    // single run: Linux calls it an overlap and discards the datagram, so the real SYN's
    // pieces that follow with the same ID make a new one, which it answers. Taken as a
    // duplicate here, the junk header was kept and the SYN never seen.
    let junk = tcp_ack();
    let syn = tcp_syn(0, 0);
    let mut packets = vec![
        v4_frag(21, 6, 8, true, &junk[8..16]),
        v4_frag(21, 6, 0, true, &junk[..8]),
        v4_frag(21, 6, 0, true, &junk[..16]),
    ];
    packets.extend(v4_split(21, &syn, 8));
    let mut r = Reassembler::default();
    syn_v4(&one_segment(&mut r, LinkType::Raw, &packets));
    assert_eq!(r.stats().dropped, 1);

    // The same in IPv6: two runs, the spanning fragment, then the real SYN (its first
    // fragment holds the whole header, as RFC 7112 wants).
    let syn = tcp_syn(0, 8);
    let mut r = Reassembler::default();
    let frag6 = |offset: usize, more: bool, data: &[u8]| v6_frag(22, 6, offset, more, data);
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            frag6(32, true, &[0; 8]),
            frag6(24, true, &[0; 8]),
            frag6(24, true, &[0; 16]),
            frag6(0, true, &syn[..24]),
            frag6(24, false, &syn[24..]),
        ],
        0,
    );
    assert_eq!(flags_of(&got), [Transport::Tcp(TcpFlags(TcpFlags::SYN))]);
    assert_eq!(r.stats().dropped, 1);
}

#[test]
fn a_fragment_inside_one_run_is_still_a_duplicate() {
    // [0, 8) then [8, 16) appended at the tail: one run [0, 16), so [0, 16) again is a
    // duplicate and the datagram stays.
    let tcp = tcp_syn(0, 0);
    let packets = [
        v4_frag(23, 6, 0, true, &tcp[..8]),
        v4_frag(23, 6, 8, true, &tcp[8..16]),
        v4_frag(23, 6, 0, true, &tcp[..16]),
        v4_frag(23, 6, 16, false, &tcp[16..]),
    ];
    let mut r = Reassembler::default();
    syn_v4(&one_segment(&mut r, LinkType::Raw, &packets));
    assert_eq!(r.stats().dropped, 0);
}

#[test]
fn a_fragment_head_copied_up_is_judged_by_the_frame_it_came_in() {
    // The XDP program hands up the first 64 bytes of a fragment at offset 64 or more,
    // with the length of its frame. Junk whose IP length runs past its frame (which the
    // kernel drops on arrival) was taken for a fragment a snap length cut: as the
    // datagram's last piece it ended it at byte 120, the real SYN's second piece ran
    // past that end, and the SYN's datagram was discarded here alone.
    let tcp = tcp_syn(0, 108);
    let mut junk = v4_frag(31, 6, 64, false, &[b'X'; 48]);
    junk[2..4].copy_from_slice(&(20u16 + 56).to_be_bytes());
    crate::set_ipv4_checksum(&mut junk);
    let mut r = Reassembler::default();
    let head = r.decode_framed(LinkType::Raw, &junk[..64], junk.len(), 0);
    assert_eq!(head, Ok(Decoded::Skipped(Skip::Fragment)));
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
    let mut got = Vec::new();
    for p in [
        v4_frag(31, 6, 0, true, &tcp[..8]),
        v4_frag(31, 6, 8, false, &tcp[8..]),
    ] {
        if let Ok(Decoded::Segment(s)) = r.decode_framed(LinkType::Raw, &p, p.len(), 0) {
            got.push(s);
        }
    }
    assert_eq!(got.len(), 1, "{got:?}");
    syn_v4(&got[0]);
    // A real fragment's head, its frame as long as its IP length says, is held.
    let mut r = Reassembler::default();
    let tail = v4_frag(32, 6, 64, false, &tcp[64..]);
    let head = r.decode_framed(LinkType::Raw, &tail[..64], tail.len(), 0);
    assert_eq!(head, Ok(Decoded::Skipped(Skip::Fragment)));
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (0, 1));
}

#[test]
fn fragments_the_kernel_drops_on_arrival_do_not_push_a_datagram_out() {
    // Linux counts toward ipfrag_max_dist only the fragments it queues: 70 whose IP
    // length runs past their frame, sent between a real SYN's pieces, are dropped in
    // `ip_rcv_core` and the kernel answers the SYN. Counted, they pushed the first
    // piece out here and the SYN was never seen.
    let pieces = v4_split(33, &tcp_syn(0, 0), 8);
    let mut packets = vec![pieces[0].clone()];
    for id in 0..70u16 {
        let mut junk = v4_frag(2000 + id, 17, 8, true, &[0; 8]);
        junk[2..4].copy_from_slice(&(20u16 + 16).to_be_bytes());
        crate::set_ipv4_checksum(&mut junk);
        packets.push(junk);
    }
    packets.extend(pieces[1..].iter().cloned());
    let mut r = Reassembler::default();
    let got: Vec<Segment> = packets
        .iter()
        .filter_map(|p| match r.decode_framed(LinkType::Raw, p, p.len(), 0) {
            Ok(Decoded::Segment(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    syn_v4(&got[0]);
    assert_eq!(r.stats().dropped, 70);
}

/// A junk ACK header's first 16 bytes held for ID 24, `between` ICMP fragments from the
/// same source, then the real SYN's three pieces with ID 24: what comes out.
fn after_fragments_between(between: u16) -> (Vec<Transport>, ReassemblyStats) {
    let mut r = Reassembler::default();
    let got = junk_between_then_syn(&mut r, between);
    (got, r.stats())
}

/// [`after_fragments_between`]'s packets through `r`: the transports of the segments.
fn junk_between_then_syn(r: &mut Reassembler, between: u16) -> Vec<Transport> {
    let mut packets = vec![v4_frag(24, 6, 0, true, &tcp_ack()[..16])];
    for id in 0..between {
        packets.push(v4_frag(1000 + id, 1, 0, true, &[0; 8]));
    }
    packets.extend(v4_split(24, &tcp_syn(0, 0), 8));
    packets
        .iter()
        .filter_map(|p| match r.decode(LinkType::Raw, p, 0) {
            Ok(Decoded::Segment(s)) => Some(s.transport),
            _ => None,
        })
        .collect()
}

#[test]
fn a_datagram_starts_again_after_more_than_max_dist_fragments_from_its_source() {
    // Linux's ipfrag_max_dist (64): a fragment more than 64 of its source's fragments
    // after the datagram's previous one (itself included: 64 others in between, of any
    // protocol) empties it, so the real SYN's pieces make it afresh and the kernel
    // answers. Kept here, the junk bytes were judged and the SYN never seen.
    let (got, stats) = after_fragments_between(64);
    assert_eq!(got, [Transport::Tcp(TcpFlags(TcpFlags::SYN))]);
    assert_eq!(stats.dropped, 1);
    // 63 do not: the SYN's first two pieces are duplicates of the junk, whose header is
    // what the datagram holds (an ACK, no attempt), as in Linux.
    let (got, stats) = after_fragments_between(63);
    assert_eq!(got, [Transport::Tcp(TcpFlags(TcpFlags::ACK))]);
    assert_eq!(stats.dropped, 0);
    // Turned off, nothing starts again.
    let mut r = Reassembler::new(ReassemblyLimits {
        max_dist: 0,
        ..ReassemblyLimits::default()
    });
    assert_eq!(
        junk_between_then_syn(&mut r, 200),
        [Transport::Tcp(TcpFlags(TcpFlags::ACK))]
    );
}

#[test]
fn a_datagram_started_again_is_followed_as_it_was_too() {
    // A real SYN's first piece, 70 well-formed fragments from the same source to an
    // address this host does not own, then the SYN's other pieces. A kernel that does
    // not reassemble them (no connection tracking) does not count them toward
    // ipfrag_max_dist, keeps the first piece and answers the SYN; one that does counts
    // them and starts the datagram again. Followed both ways, the SYN is seen here
    // either way (it was not, when the datagram only started again).
    let pieces = v4_split(35, &tcp_syn(0, 0), 8);
    let mut packets = vec![pieces[0].clone()];
    for id in 0..70u16 {
        let mut junk = v4_frag(3000 + id, 17, 0, true, &[0; 16]);
        junk[16..20].copy_from_slice(&[198, 51, 100, 99]);
        crate::set_ipv4_checksum(&mut junk);
        packets.push(junk);
    }
    packets.extend(pieces[1..].iter().cloned());
    let mut r = Reassembler::default();
    let got: Vec<Segment> = feed(&mut r, LinkType::Raw, &packets, 0)
        .into_iter()
        .filter(|s| matches!(s.transport, Transport::Tcp(_)))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    syn_v4(&got[0]);
    // Restarted, the SYN's datagram lacks its first piece; its shadow completed.
    assert_eq!(r.stats().dropped, 1);
    // A junk header held for the SYN's id before the junk between (the kernel that
    // counts them starts the datagram again and answers the real SYN): the datagram
    // started again gives the SYN, its shadow only the junk ACK, and the SYN wins.
    assert_eq!(
        after_fragments_between(64).0,
        [Transport::Tcp(TcpFlags(TcpFlags::SYN))]
    );
}

/// A TCP header to `dport` with `flags`, from [`tcp_syn`]'s source port.
fn tcp_to(dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = tcp_syn(0, 0);
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[13] = flags;
    tcp
}

/// Heads of 16 bytes for IP id 36 (in order), each followed by 70 junk fragments from
/// the same source, then the 4 bytes all the heads share last (port, flags and the rest
/// differ in the first 16): after each round of junk the kernel may or may not have
/// started the datagram again, depending on whether it counted that junk, so it holds
/// the datagram as it was since any one head (or since the last junk: the tail alone).
/// Every segment the pieces give.
fn heads_between_junk(heads: &[Vec<u8>]) -> (Vec<Segment>, Reassembler) {
    let mut packets = Vec::new();
    for (round, head) in heads.iter().enumerate() {
        packets.push(v4_frag(36, 6, 0, true, &head[..16]));
        for id in 0..70u16 {
            packets.push(v4_frag(4000 + 100 * round as u16 + id, 1, 0, true, &[0; 8]));
        }
    }
    packets.push(v4_frag(36, 6, 16, false, &heads[0][16..20]));
    let mut r = Reassembler::default();
    let got = tcp_segments(&mut r, &packets);
    assert!(r.runs_agree());
    (got, r)
}

/// The TCP segments raw IP `packets` give through `r`, those [`Reassembler::take_extra`]
/// gives included (other verdicts ignored).
fn tcp_segments(r: &mut Reassembler, packets: &[Vec<u8>]) -> Vec<Segment> {
    let mut out = Vec::new();
    for p in packets {
        if let Ok(Decoded::Segment(s)) = r.decode(LinkType::Raw, p, 0) {
            out.push(s);
        }
        out.extend(std::iter::from_fn(|| r.take_extra()));
    }
    out.retain(|s| matches!(s.transport, Transport::Tcp(_)));
    out
}

#[test]
fn where_a_datagram_and_its_shadow_decide_together_each_gives_its_segment() {
    // A real SYN's first 16 bytes, 70 junk fragments from its source, then a junk
    // ACK's first 16 bytes with the same IP id (restarting the datagram) and the last
    // 4 bytes they share. A kernel that did not count the junk keeps the SYN's bytes and
    // answers it; one that did holds the ACK. Both decide on the last piece: both are
    // seen.
    let (got, _) = heads_between_junk(&[tcp_syn(0, 0), tcp_ack()]);
    let mut flags = flags_of(&got);
    flags.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        flags,
        [
            Transport::Tcp(TcpFlags(TcpFlags::ACK)),
            Transport::Tcp(TcpFlags(TcpFlags::SYN))
        ]
    );
    // The same with two SYNs to different ports: the real one (the kernel ignores the
    // second head as a duplicate when it did not count the junk) is not hidden behind a
    // decoy to port 80; and the other way round, a decoy first and the real SYN after
    // junk the kernel did count.
    for heads in [
        [tcp_to(22, TcpFlags::SYN), tcp_to(80, TcpFlags::SYN)],
        [tcp_to(80, TcpFlags::SYN), tcp_to(22, TcpFlags::SYN)],
    ] {
        let (got, _) = heads_between_junk(&heads);
        let mut ports: Vec<u16> = got.iter().map(|s| s.dport).collect();
        ports.sort_unstable();
        assert_eq!(ports, [22, 80], "{got:?}");
    }
}

#[test]
fn every_restart_point_is_followed_up_to_the_shadows_kept() {
    // A junk ACK's head, junk, the real SYN's head, junk, the tail. A kernel that
    // counted the first round of junk but not the second holds the SYN: the copy since
    // the first restart, which one shadow alone did not keep.
    let (got, _) = heads_between_junk(&[tcp_ack(), tcp_syn(0, 0), tcp_ack()]);
    assert!(
        got.iter()
            .any(|s| s.transport == Transport::Tcp(TcpFlags(TcpFlags::SYN))),
        "{got:?}"
    );
    // With the real SYN at each place among as many heads as shadows are kept (one
    // more restart comes before the tail), it is seen.
    let n = usize::from(MAX_SHADOWS);
    for real in 0..n {
        let heads: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                tcp_to(
                    1000 + i as u16,
                    if i == real {
                        TcpFlags::SYN
                    } else {
                        TcpFlags::ACK
                    },
                )
            })
            .collect();
        let (got, r) = heads_between_junk(&heads);
        assert!(
            got.iter().any(|s| s.dport == 1000 + real as u16
                && s.transport == Transport::Tcp(TcpFlags(TcpFlags::SYN))),
            "{real}: {got:?}"
        );
        // The copies that completed are gone; the one holding the tail alone is not.
        assert_eq!(r.stats().datagrams_in_use, 1, "copies freed once done");
    }
    // More rounds than copies: at most MAX_SHADOWS copies are held beside the datagram,
    // and what is held still adds up.
    let heads: Vec<Vec<u8>> = (0..40).map(|i| tcp_to(2000 + i, TcpFlags::ACK)).collect();
    let mut packets = Vec::new();
    for (round, head) in heads.iter().enumerate() {
        packets.push(v4_frag(37, 6, 0, true, &head[..16]));
        for id in 0..70u16 {
            packets.push(v4_frag(
                10_000 + 100 * round as u16 + id,
                1,
                0,
                true,
                &[0; 8],
            ));
        }
    }
    let mut r = Reassembler::default();
    assert!(tcp_segments(&mut r, &packets).is_empty());
    assert!(r.runs_agree());
    assert_eq!(r.shadows, usize::from(MAX_SHADOWS));
}

#[test]
fn an_oversize_datagram_is_dropped_on_completion() {
    let mut first = tcp_syn(0, 0);
    first.resize(65504, 0);
    let mut r = Reassembler::default();
    // The first fragment holds the whole header: judged at once.
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v4_frag(6, 6, 0, true, &first),
            v4_frag(6, 6, 65504, false, &[0; 40]),
        ],
        0,
    );
    assert_eq!(got.len(), 1);
    assert_eq!((r.stats().dropped, r.stats().datagrams_in_use), (1, 0));
}

#[test]
fn ten_ipv6_destination_options_headers_through_the_reassembler() {
    let mut part = Vec::new();
    for i in 0..10 {
        part.extend(dst_opts(if i == 9 { 6 } else { 60 }));
    }
    part.extend(tcp_syn(0, 16));
    let mut pkt = vec![0x60, 0, 0, 0];
    pkt.extend((part.len() as u16).to_be_bytes());
    pkt.extend([60, 64]);
    pkt.extend(ip6("2001:db8::bad"));
    pkt.extend(ip6("2001:db8::5"));
    pkt.extend(&part);
    let mut r = Reassembler::default();
    let want = decode(LinkType::Raw, &pkt);
    assert!(matches!(want, Ok(Decoded::Segment(s)) if s.dport == 80));
    assert_eq!(r.decode(LinkType::Raw, &pkt, 0), want);
    // And fragmented, the ten headers in the first fragment.
    let frags = [
        v6_frag(7, 60, 0, true, &part[..104]),
        v6_frag(7, 60, 104, false, &part[104..]),
    ];
    let got = feed(&mut r, LinkType::Raw, &frags, 0);
    assert_eq!(got.len(), 1);
    // Judged on the first fragment, before the last came: header plus bytes seen.
    assert_eq!(got[0].ip_len, 40 + 104);
}

fn ethernet(tags: &[u16], ethertype: u16, ip: &[u8]) -> Vec<u8> {
    let mut frame = MAC.to_vec();
    for &tpid in tags {
        frame.extend(tpid.to_be_bytes());
        frame.extend([0, 42]);
    }
    frame.extend(ethertype.to_be_bytes());
    frame.extend(ip);
    // Ethernet pads short frames to 60 bytes; the padding is no fragment data.
    if frame.len() < 60 {
        frame.resize(60, 0xee);
    }
    frame
}

#[test]
fn framings_vlan_qinq_sll_and_sll2() {
    let tcp = tcp_syn(0, 0);
    let frags = v4_split(30, &tcp, 8);
    for tags in [
        &[][..],
        &[0x8100],
        &[0x88a8, 0x8100],
        &[0x9100, 0x8100, 0x8100],
    ] {
        let framed: Vec<Vec<u8>> = frags.iter().map(|f| ethernet(tags, 0x0800, f)).collect();
        let mut r = Reassembler::default();
        let s = one_segment(&mut r, LinkType::Ethernet, &framed);
        syn_v4(&s);
        assert_eq!(s.ip_len, 40, "tags {tags:?}");
    }
    let mut r = Reassembler::default();
    let sll: Vec<Vec<u8>> = frags
        .iter()
        .map(|f| {
            let mut p = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
            p.extend(f);
            p
        })
        .collect();
    syn_v4(&one_segment(&mut r, LinkType::LinuxSll, &sll));
    let sll2: Vec<Vec<u8>> = frags
        .iter()
        .rev()
        .map(|f| {
            let mut p = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6];
            p.extend([1, 2, 3, 4, 5, 6, 0, 0]);
            p.extend(f);
            p
        })
        .collect();
    syn_v4(&one_segment(&mut r, LinkType::LinuxSll2, &sll2));
    // IPv6 fragments behind a VLAN tag.
    let mut part = dst_opts(6);
    part.extend(tcp_syn(0, 12));
    let v6: Vec<Vec<u8>> = [
        v6_frag(8, 60, 32, false, &part[32..]),
        v6_frag(8, 60, 0, true, &part[..32]),
    ]
    .iter()
    .map(|f| ethernet(&[0x8100], 0x86dd, f))
    .collect();
    assert_eq!(one_segment(&mut r, LinkType::Ethernet, &v6).dport, 80);
}

#[test]
fn udp_is_reassembled_and_other_ipv4_protocols_are_not_held() {
    let mut udp = vec![0x14, 0xe9, 0, 53, 0, 24, 0, 0];
    udp.extend([7u8; 16]);
    let frags: Vec<Vec<u8>> = vec![
        v4_frag(40, 17, 8, false, &udp[8..]),
        v4_frag(40, 17, 0, true, &udp[..8]),
    ];
    let mut r = Reassembler::default();
    let s = one_segment(&mut r, LinkType::Raw, &frags);
    assert_eq!((s.sport, s.dport, s.transport), (5353, 53, Transport::Udp));

    let icmp = [
        v4_frag(41, 1, 0, true, &[8; 16]),
        v4_frag(41, 1, 16, false, &[0; 8]),
    ];
    assert_eq!(
        r.decode(LinkType::Raw, &icmp[0], 0),
        Ok(Decoded::Skipped(Skip::OtherProtocol))
    );
    assert_eq!(
        r.decode(LinkType::Raw, &icmp[1], 0),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    assert_eq!(r.stats().datagrams_in_use, 0);
    assert_eq!(r.stats().fragments, 4);

    // IPv6: the protocol is known from the first fragment.
    let mut r = Reassembler::default();
    let icmp6 = [
        v6_frag(9, 58, 16, false, &[0; 8]),
        v6_frag(9, 58, 0, true, &[128; 16]),
    ];
    assert_eq!(
        r.decode(LinkType::Raw, &icmp6[0], 0),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    assert_eq!(
        r.decode(LinkType::Raw, &icmp6[1], 0),
        Ok(Decoded::Skipped(Skip::OtherProtocol))
    );
    assert_eq!(r.stats().datagrams_in_use, 0);
}

#[test]
fn a_snap_length_cut_fragment_never_makes_a_segment() {
    let tcp = tcp_syn(0, 4);
    let mut first = v4_frag(50, 6, 0, true, &tcp[..16]);
    first.truncate(20 + 10);
    let rest = v4_frag(50, 6, 16, false, &tcp[16..]);
    let mut r = Reassembler::default();
    assert_eq!(
        r.decode(LinkType::Raw, &first, 0),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    // Complete by the IP headers, but the capture lacks header bytes.
    assert_eq!(
        r.decode(LinkType::Raw, &rest, 0),
        Err(DecodeError::TruncatedTcp)
    );
    assert_eq!((r.stats().completed, r.stats().datagrams_in_use), (0, 0));
}

#[test]
fn packets_that_are_not_fragments_decode_as_decode_does() {
    let mut r = Reassembler::default();
    let whole = v4_frag(1, 6, 0, false, &tcp_syn(0, 0));
    assert_eq!(
        r.decode(LinkType::Raw, &whole, 0),
        decode(LinkType::Raw, &whole)
    );
    assert_eq!(r.stats(), ReassemblyStats::default());
    // An IPv6 atomic fragment (offset 0, no MF) is no fragment (RFC 6946).
    let atomic = v6_frag(1, 6, 0, false, &tcp_syn(0, 0));
    assert!(matches!(
        r.decode(LinkType::Raw, &atomic, 0),
        Ok(Decoded::Segment(_))
    ));
    assert_eq!(r.stats().fragments, 0);
}

#[test]
fn a_second_ipv6_fragment_header_is_refused_as_linux_refuses_it() {
    let syn = tcp_syn(0, 0);
    let atomic_header = |next: u8| vec![next, 0, 0, 0, 0, 0, 0, 9];
    let bad = Err(DecodeError::BadIpv6Extension);
    // An atomic fragment header, then another: Linux marks the packet defragmented at
    // the first and refuses the second (ipv6_frag_rcv).
    let mut inner = atomic_header(6);
    inner.extend(&syn);
    let twice = v6_frag(1, 44, 0, false, &inner);
    // The same with destination options between the second and TCP.
    let mut inner = atomic_header(60);
    inner.extend(dst_opts(6));
    inner.extend(&syn);
    let with_options = v6_frag(2, 44, 0, false, &inner);
    for packet in [&twice, &with_options] {
        assert_eq!(decode(LinkType::Raw, packet), bad);
        assert_eq!(Reassembler::default().decode(LinkType::Raw, packet, 0), bad);
    }
    // An atomic fragment header in a jumbogram (payload length 0).
    let mut jumbo = v6_frag(3, 6, 0, false, &syn);
    jumbo[4..6].copy_from_slice(&[0, 0]);
    assert_eq!(decode(LinkType::Raw, &jumbo), bad);
    // A datagram of two fragments whose reassembled payload starts with a fragment
    // header: no attempt, whole or judged by its first fragment alone.
    let mut payload = atomic_header(6);
    payload.extend(&syn);
    let first = v6_frag(4, 44, 0, true, &payload[..16]);
    let rest = v6_frag(4, 44, 16, false, &payload[16..]);
    assert!(!matches!(
        decode(LinkType::Raw, &first),
        Ok(Decoded::Segment(_))
    ));
    let mut r = Reassembler::default();
    for packet in [&first, &rest] {
        let got = r.decode(LinkType::Raw, packet, 0);
        assert!(!matches!(got, Ok(Decoded::Segment(_))), "{got:?}");
    }
    // One atomic fragment header is taken, as before.
    let once = v6_frag(5, 6, 0, false, &syn);
    assert!(matches!(
        Reassembler::default().decode(LinkType::Raw, &once, 0),
        Ok(Decoded::Segment(_))
    ));
}

/// A TCP header of `flags` with ten words of options (40 bytes: whole only past a
/// 24-byte first fragment), then 8 bytes of data.
fn tcp_long(flags: u8) -> Vec<u8> {
    let mut tcp = tcp_syn(5, 8);
    tcp[13] = flags;
    tcp
}

/// Regression (found by a black-box test against a live kernel): with connection
/// tracking in use (synwatch's own `ct state` rules load it), Linux reassembles IPv6
/// fragments by `nf_conntrack_reasm.c`, which takes some bad fragments differently from
/// the stack's own reassembly. Fragments crafted for the difference made the kernel
/// answer SYNs that synwatch, following the stack's rules alone, never saw: a whole
/// port scan hidden. Both readings are followed now.
#[test]
fn ipv6_fragments_are_followed_as_connection_tracking_takes_them_too() {
    let (syn, ack) = (tcp_long(TcpFlags::SYN), tcp_long(TcpFlags::ACK));
    let v6 = |frags: &[Vec<u8>]| {
        let mut r = Reassembler::default();
        let got = feed(&mut r, LinkType::Raw, frags, 0);
        assert!(r.runs_agree());
        (flags_of(&got), r.stats())
    };
    let syn_flags = Transport::Tcp(TcpFlags(TcpFlags::SYN));
    // An ACK's head, an odd-length middle (the stack drops it alone; conntrack throws
    // the datagram away), the SYN's head (a duplicate to the stack), the rest.
    let (got, stats) = v6(&[
        v6_frag(1, 6, 0, true, &ack[..24]),
        v6_frag(1, 6, 24, true, &[0; 4]),
        v6_frag(1, 6, 0, true, &syn[..24]),
        v6_frag(1, 6, 24, false, &syn[24..]),
    ]);
    let ack_flags = Transport::Tcp(TcpFlags(TcpFlags::ACK));
    assert_eq!(
        got,
        vec![ack_flags, syn_flags],
        "the stack's datagram is the ACK, conntrack's the SYN"
    );
    assert_eq!(stats.completed, 2, "{stats:?}");
    // The SYN's head, its last fragment, a second last fragment with another end (the
    // stack throws the datagram away; conntrack drops that fragment alone), the middle.
    let (got, _) = v6(&[
        v6_frag(2, 6, 0, true, &syn[..24]),
        v6_frag(2, 6, 32, false, &syn[32..]),
        v6_frag(2, 6, 32, false, &syn[32..40]),
        v6_frag(2, 6, 24, true, &syn[24..32]),
    ]);
    assert_eq!(got, vec![syn_flags]);
    // An empty fragment in between: the stack throws the datagram away, conntrack
    // drops the empty one alone.
    let (got, _) = v6(&[
        v6_frag(3, 6, 0, true, &syn[..24]),
        v6_frag(3, 6, 8, true, &[]),
        v6_frag(3, 6, 24, false, &syn[24..]),
    ]);
    assert_eq!(got, vec![syn_flags]);
    // Data past the known end: the same.
    let (got, _) = v6(&[
        v6_frag(4, 6, 0, true, &syn[..24]),
        v6_frag(4, 6, 32, false, &syn[32..]),
        v6_frag(4, 6, 48, true, &[0; 8]),
        v6_frag(4, 6, 24, true, &syn[24..32]),
    ]);
    assert_eq!(got, vec![syn_flags]);
    // Where both take the fragments alike, one segment, counted once, and nothing held
    // after the datagram completes.
    let (got, stats) = v6(&[
        v6_frag(5, 6, 24, false, &syn[24..]),
        v6_frag(5, 6, 0, true, &syn[..24]),
    ]);
    assert_eq!(got, vec![syn_flags]);
    assert_eq!((stats.completed, stats.datagrams_in_use), (1, 0));
    // An odd-length fragment past 65535 bytes, or one that is a truncated first
    // fragment, is dropped before either reassembly sees it: conntrack's datagram
    // stays.
    let (got, _) = v6(&[
        v6_frag(6, 6, 0, true, &ack[..24]),
        v6_frag(6, 6, 65528, true, &[0; 12]),
        v6_frag(6, 6, 0, true, &syn[..16]),
        v6_frag(6, 6, 0, true, &syn[..24]),
        v6_frag(6, 6, 24, false, &syn[24..]),
    ]);
    assert_eq!(got, vec![ack_flags]);
}

/// Regressions (a review of the test above's fix): three more ways the kernel with
/// conntrack took a SYN that neither reading made.
#[test]
fn conntrack_keeps_an_empty_fragments_end_meets_atomic_fragments_and_evicts_its_own() {
    let syn = Transport::Tcp(TcpFlags(TcpFlags::SYN));
    let mut ack = tcp_syn(0, 4);
    ack[13] = TcpFlags::ACK;
    let real = tcp_syn(0, 12);
    // An empty last fragment: the stack creates nothing; conntrack keeps a datagram that
    // knows its end (24), which the ACK's head then completes; the SYN's head starts a
    // new one there, a duplicate to the stack's datagram.
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v6_frag(1, 6, 24, false, &[]),
            v6_frag(1, 6, 0, true, &ack[..24]),
            v6_frag(1, 6, 0, true, &real[..24]),
            v6_frag(1, 6, 24, false, &real[24..]),
        ],
        0,
    );
    assert!(flags_of(&got).contains(&syn), "{got:?}");
    assert!(r.runs_agree());
    // An atomic fragment with the id of a datagram conntrack holds: the stack takes it
    // whole, conntrack queues it, it overlaps (it ends past the data held: one ending
    // before would be dropped alone), and the datagram goes; the SYN's head then starts
    // a new one.
    let mut long_ack = tcp_syn(0, 12);
    long_ack[13] = TcpFlags::ACK;
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v6_frag(2, 6, 0, true, &ack[..24]),
            v6_frag(2, 6, 0, false, &long_ack),
            v6_frag(2, 6, 0, true, &real[..24]),
            v6_frag(2, 6, 24, false, &real[24..]),
        ],
        0,
    );
    assert!(flags_of(&got).contains(&syn), "{got:?}");
    assert!(r.runs_agree());
    // Junk the stack keeps and conntrack throws away at once (a head, then an odd-length
    // middle) fills the stack's budget: it evicts the stack's datagrams only, not
    // conntrack's reading of a real SYN whose header is not whole yet.
    let long = tcp_long(TcpFlags::SYN);
    let mut r = Reassembler::new(ReassemblyLimits {
        max_datagrams: 4,
        ..ReassemblyLimits::default()
    });
    let mut frags = vec![v6_frag(100, 6, 0, true, &long[..24])];
    for id in 200..210 {
        frags.push(v6_frag(id, 6, 0, true, &ack[..24]));
        frags.push(v6_frag(id, 6, 24, true, &[0; 4]));
    }
    frags.push(v6_frag(100, 6, 24, false, &long[24..]));
    let got = feed(&mut r, LinkType::Raw, &frags, 0);
    assert!(flags_of(&got).contains(&syn), "{got:?}");
    assert!(r.stats().evicted > 0, "the stack's budget was spent");
    assert!(r.runs_agree());
}

/// Regression (a differential test against a kernel with conntrack): conntrack finds a
/// fragment header behind extension headers without judging them, so a fragment behind
/// a destination option the stack refuses (type 0x9e: discard) still overlaps, and
/// throws away, junk held for the SYN's id. The stack drops it before reassembly.
#[test]
fn a_fragment_behind_a_header_the_stack_refuses_still_meets_conntracks_reading() {
    let real = tcp_long(TcpFlags::SYN);
    let mut r = Reassembler::default();
    // Option type 0x9e: unknown, "discard".
    let (got, refused) = feed_refused(
        &mut r,
        &[
            v6_frag(9, 6, 0, true, &[0xdd; 24]),
            v6_frag_behind(60, [0x9e, 4, 0, 0, 0, 0], 9, 16, &[0xee; 16]),
            v6_frag(9, 6, 0, true, &real[..24]),
            v6_frag(9, 6, 24, false, &real[24..]),
        ],
    );
    assert_eq!(refused, [1]);
    assert!(
        flags_of(&got).contains(&Transport::Tcp(TcpFlags(TcpFlags::SYN))),
        "{got:?}"
    );
    assert!(r.runs_agree());
}

/// Regressions (a second review): a fragment behind a first hop-by-hop header the stack
/// refuses is dropped on arrival (`ip6_rcv_core`), before conntrack sees it, so it must
/// not throw conntrack's reading away; and each reading's cap on runs evicts its own
/// datagrams only.
#[test]
fn conntrack_never_sees_a_refused_first_header_and_each_readings_runs_evict_its_own() {
    let syn = Transport::Tcp(TcpFlags(TcpFlags::SYN));
    let long = tcp_long(TcpFlags::SYN);
    // The SYN's head (its header not whole yet); an empty fragment (the stack throws the
    // datagram away, conntrack drops it alone); junk behind a refused hop-by-hop header
    // (dropped before either); the rest. The kernel with conntrack answers.
    let mut r = Reassembler::default();
    // Option type 0x80: unknown, "discard".
    let (got, refused) = feed_refused(
        &mut r,
        &[
            v6_frag(1, 6, 0, true, &long[..24]),
            v6_frag(1, 6, 8, true, &[]),
            v6_frag_behind(0, [0x80, 4, 0, 0, 0, 0], 1, 0, &[0xee; 32]),
            v6_frag(1, 6, 24, false, &long[24..]),
        ],
    );
    assert_eq!(refused, [2]);
    assert!(flags_of(&got).contains(&syn), "{got:?}");
    // Junk that fills the stack's cap on runs, each datagram of it thrown away by
    // conntrack at its end (an odd-length middle fragment): the stack's datagrams go, not
    // conntrack's reading of the SYN whose head came first.
    let mut r = Reassembler::default();
    let mut frags = vec![v6_frag(2, 6, 0, true, &long[..24])];
    for id in 100..166u32 {
        for k in 0..2000 {
            frags.push(v6_frag(id, 6, 32 + 16 * k, true, &[0; 8]));
        }
        frags.push(v6_frag(id, 6, 8, true, &[0; 4]));
    }
    frags.push(v6_frag(2, 6, 24, false, &long[24..]));
    let got = feed(&mut r, LinkType::Raw, &frags, 0);
    assert!(flags_of(&got).contains(&syn), "{got:?}");
    assert!(r.stats().evicted > 0, "the stack's cap on runs was reached");
    assert!(r.runs_agree());
}

/// Regression (the second review): a first fragment whose chain the stack refuses once
/// the datagram is whole (a destination option whose type says discard) is still queued
/// by either reassembly, which judges no header of the fragmentable part, so its overlap
/// throws away junk held for the SYN's id. It was dropped here alone.
#[test]
fn a_first_fragment_with_a_refused_chain_is_queued_and_its_overlap_counts() {
    let syn = tcp_syn(0, 12);
    let mut ack = tcp_syn(0, 4);
    ack[13] = TcpFlags::ACK;
    let mut refused = dst_opts(6);
    refused[2] = 0x80; // an unknown option whose type says "discard"
    refused.extend(&ack);
    let mut r = Reassembler::default();
    let got = feed(
        &mut r,
        LinkType::Raw,
        &[
            v6_frag(4, 6, 0, true, &ack),
            v6_frag(4, 60, 0, true, &refused),
            v6_frag(4, 6, 0, true, &syn[..24]),
            v6_frag(4, 6, 24, false, &syn[24..]),
        ],
        0,
    );
    assert!(
        flags_of(&got).contains(&Transport::Tcp(TcpFlags(TcpFlags::SYN))),
        "{got:?}"
    );
    assert!(r.runs_agree());
}

/// Regression (the second review): a fragment refused after its datagram was looked up
/// (one ending past 65535 bytes) leaves that datagram held in the kernel, empty, its
/// 60 s timer running from then; junk joining it later times out with it, and a SYN
/// after that starts afresh. Here the junk started the clock late and outlived it.
#[test]
fn a_datagram_refused_fragments_looked_up_times_out_from_then() {
    let syn = tcp_syn(0, 12);
    let mut ack = tcp_syn(0, 4);
    ack[13] = TcpFlags::ACK;
    let mut r = Reassembler::default();
    let mut got = feed(
        &mut r,
        LinkType::Raw,
        &[v6_frag(6, 6, 65528, true, &[0; 16])],
        0,
    );
    got.extend(feed(
        &mut r,
        LinkType::Raw,
        &[v6_frag(6, 6, 0, true, &ack)],
        59 * SEC,
    ));
    got.extend(feed(
        &mut r,
        LinkType::Raw,
        &[
            v6_frag(6, 6, 0, true, &syn[..24]),
            v6_frag(6, 6, 24, false, &syn[24..]),
        ],
        61 * SEC,
    ));
    assert!(
        flags_of(&got).contains(&Transport::Tcp(TcpFlags(TcpFlags::SYN))),
        "{got:?}"
    );
    assert!(r.runs_agree());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// nmap -f (a 28-byte header and data) in any order, with duplicates sprinkled in:
    /// exactly one SYN.
    #[test]
    fn nmap_f_in_any_order_gives_exactly_one_syn(
        frags in Just(v4_split(77, &tcp_syn(2, 16), 8)).prop_shuffle(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut packets = frags.clone();
        for d in dups {
            let at = d.index(packets.len());
            // Never a copy of the fragment that completes the datagram: a copy after
            // completion starts a new datagram, as it does in Linux.
            packets.insert(at, frags[d.index(frags.len() - 1)].clone());
        }
        let mut r = Reassembler::default();
        let got = feed(&mut r, LinkType::Raw, &packets, 0);
        prop_assert_eq!(got.len(), 1);
        syn_v4(&got[0]);
        let stats = r.stats();
        prop_assert_eq!((stats.completed, stats.dropped, stats.datagrams_in_use), (1, 0, 0));
    }

    /// Well-formed IPv4 fragments of a few datagrams from two sources, any offsets,
    /// lengths, protocols and orders, under small limits: no panic, limits held, the runs
    /// counted are the runs held, and nothing is held once every datagram timed out.
    #[test]
    fn random_fragments_keep_the_runs_and_limits_consistent(
        frags in prop::collection::vec(
            (0u16..6, 0u8..3, 0usize..40, 1usize..5, any::<bool>(), 0u64..3 * SEC),
            0..300,
        ),
    ) {
        let limits = ReassemblyLimits {
            max_datagrams: 5,
            max_bytes: 600,
            max_dist: 8,
            ..ReassemblyLimits::default()
        };
        let mut r = Reassembler::new(limits);
        let mut now = 0;
        for (id, proto, offset_units, len_units, more, step) in frags {
            now += step;
            let proto = [6, 17, 1][usize::from(proto)];
            let mut p = v4_frag(id % 3, proto, offset_units * 8, more, &vec![0x5a; len_units * 8]);
            if id >= 3 {
                // The other source.
                p[15] = 57;
                crate::set_ipv4_checksum(&mut p);
            }
            let _ = r.decode(LinkType::Raw, &p, now);
            let stats = r.stats();
            prop_assert!(stats.datagrams_in_use <= 5);
            prop_assert!(stats.bytes_in_use <= 600);
            prop_assert!(r.runs_agree());
            prop_assert!(r.peers.values().map(|p| p.held as usize).sum::<usize>() <= 5);
        }
        r.expire(now + 31 * SEC);
        prop_assert_eq!((r.stats().datagrams_in_use, r.runs), (0, 0));
        prop_assert!(r.peers.is_empty());
    }

    /// Arbitrary packets at arbitrary times: no panic, limits held.
    #[test]
    fn arbitrary_sequences_stay_within_limits(
        packets in prop::collection::vec(
            (0u64..40 * SEC, prop::collection::vec(any::<u8>(), 0..120)),
            0..40,
        ),
    ) {
        let limits = ReassemblyLimits { max_datagrams: 4, max_bytes: 200, ..ReassemblyLimits::default() };
        let mut r = Reassembler::new(limits);
        for (now, mut p) in packets {
            // Mostly IPv4 fragments of one small key space, so they meet.
            if let Some(b) = p.first_mut() { *b = 0x45; }
            if p.len() > 9 { p[6] &= 0x20 | 0x03; p[9] = 6; }
            let _ = r.decode(LinkType::Raw, &p, now);
            let stats = r.stats();
            prop_assert!(stats.datagrams_in_use <= 4);
            prop_assert!(stats.bytes_in_use <= 200);
            prop_assert!(r.runs_agree());
        }
    }
}

#[test]
fn fragments_with_a_wrong_header_checksum_take_no_place() {
    // Linux drops them before reassembly, so they never push out the real fragments it
    // keeps: a scanner that sends such junk between the pieces of each SYN would
    // otherwise have every piece evicted here while the kernel answers the SYN.
    let mut r = Reassembler::default();
    let syn = v4_split(7, &tcp_syn(0, 0), 8);
    assert_eq!(
        r.decode(LinkType::Raw, &syn[0], 0),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    let held = ReassemblyLimits::default().max_datagrams;
    for i in 0..held as u32 + 100 {
        let mut junk = v4_frag(1, 6, 0, true, &tcp_syn(0, 0)[..8]);
        junk[12..16].copy_from_slice(&i.to_be_bytes());
        crate::set_ipv4_checksum(&mut junk);
        junk[10] ^= 0xff;
        assert_eq!(
            r.decode(LinkType::Raw, &junk, 1),
            Err(DecodeError::BadIpChecksum)
        );
    }
    assert_eq!(r.stats().evicted, 0);
    assert_eq!(feed(&mut r, LinkType::Raw, &syn[1..], 2).len(), 1);
}
