//! Decoder tests. Packets come from etherparse's builder (an independent encoder) where
//! it can make them, and are spliced by hand where it cannot (extension headers, bad
//! lengths, odd link layers).

use std::net::IpAddr;

use etherparse::{PacketBuilder, VlanId};
use proptest::prelude::*;

use super::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn v4_syn_ethernet() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
        .tcp(5973, 80, 1, 1024)
        .syn()
        .write(&mut out, &[])
        .expect("build");
    out
}

/// IPv4 + TCP SYN with no link header.
fn v4_syn_raw() -> Vec<u8> {
    v4_syn_ethernet()[14..].to_vec()
}

/// IPv6 + TCP SYN with no link header.
fn v6_syn_raw(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(ip6("2001:db8::bad"), ip6("2001:db8::5"), 64)
        .tcp(sport, dport, 1, 1024)
        .write(&mut out, &[])
        .expect("build");
    out[40 + 13] = flags;
    out
}

fn ip6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not v6"),
    }
}

fn seg(d: Result<Decoded, DecodeError>) -> Segment {
    match d {
        Ok(Decoded::Segment(s)) => s,
        other => panic!("expected a segment, got {other:?}"),
    }
}

fn syn_v4_expected(s: Segment) {
    assert_eq!(s.src, ip("192.0.2.56"));
    assert_eq!(s.dst, ip("10.0.0.5"));
    assert_eq!((s.sport, s.dport), (5973, 80));
    assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));
}

#[test]
fn ethernet_ipv4_tcp() {
    let s = seg(decode(LinkType::Ethernet, &v4_syn_ethernet()));
    syn_v4_expected(s);
    assert_eq!(s.ip_len, 40);
}

#[test]
fn single_vlan_and_qinq_stacks() {
    let mut single = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(42).expect("vlan"))
        .ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
        .tcp(5973, 80, 1, 1024)
        .syn()
        .write(&mut single, &[])
        .expect("build");
    assert_eq!(u16::from_be_bytes([single[12], single[13]]), 0x8100);
    syn_v4_expected(seg(decode(LinkType::Ethernet, &single)));

    let mut double = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(
            VlanId::try_new(100).expect("vlan"),
            VlanId::try_new(200).expect("vlan"),
        )
        .ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
        .tcp(5973, 80, 1, 1024)
        .syn()
        .write(&mut double, &[])
        .expect("build");
    syn_v4_expected(seg(decode(LinkType::Ethernet, &double)));

    // 802.1ad outer tag (0x88a8) over 802.1Q, and the old 0x9100 QinQ type.
    for outer in [0x88a8u16, 0x9100] {
        let mut pkt = MAC_A.to_vec();
        pkt.extend(MAC_B);
        pkt.extend(outer.to_be_bytes());
        pkt.extend([0, 100, 0x81, 0x00, 0, 200, 0x08, 0x00]);
        pkt.extend(v4_syn_raw());
        syn_v4_expected(seg(decode(LinkType::Ethernet, &pkt)));
    }
}

#[test]
fn vlan_stack_depth_is_bounded() {
    let mut pkt = MAC_A.to_vec();
    pkt.extend(MAC_B);
    for _ in 0..=MAX_VLAN_TAGS {
        pkt.extend([0x81, 0x00, 0, 1]);
    }
    pkt.extend([0x08, 0x00]);
    pkt.extend(v4_syn_raw());
    assert_eq!(
        decode(LinkType::Ethernet, &pkt),
        Err(DecodeError::TooManyVlanTags)
    );
}

#[test]
fn linux_cooked_v1_and_v2() {
    let mut sll = Vec::new();
    PacketBuilder::linux_sll(
        etherparse::LinuxSllPacketType::HOST,
        6,
        [1, 2, 3, 4, 5, 6, 0, 0],
    )
    .ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
    .tcp(5973, 80, 1, 1024)
    .syn()
    .write(&mut sll, &[])
    .expect("build");
    syn_v4_expected(seg(decode(LinkType::LinuxSll, &sll)));

    // SLL2: protocol, reserved, ifindex, hatype, pkttype, addrlen, 8 address bytes.
    let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6];
    sll2.extend([1, 2, 3, 4, 5, 6, 0, 0]);
    sll2.extend(v4_syn_raw());
    syn_v4_expected(seg(decode(LinkType::LinuxSll2, &sll2)));

    let mut sll2_v6 = vec![
        0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
    ];
    sll2_v6.extend(v6_syn_raw(1, 2, TcpFlags::SYN));
    assert_eq!(
        seg(decode(LinkType::LinuxSll2, &sll2_v6)).src,
        ip("2001:db8::bad")
    );

    let arp = [
        0x08, 0x06, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1,
    ];
    assert_eq!(
        decode(LinkType::LinuxSll2, &arp),
        Ok(Decoded::Skipped(Skip::NotIp))
    );
    assert_eq!(
        decode(LinkType::LinuxSll2, &sll2[..19]),
        Err(DecodeError::TruncatedLink)
    );
    assert_eq!(
        decode(LinkType::LinuxSll, &sll[..15]),
        Err(DecodeError::TruncatedLink)
    );
}

#[test]
fn raw_ip_link_types() {
    syn_v4_expected(seg(decode(LinkType::Raw, &v4_syn_raw())));
    syn_v4_expected(seg(decode(LinkType::Ipv4, &v4_syn_raw())));
    let v6 = v6_syn_raw(33000, 443, TcpFlags::SYN);
    let s = seg(decode(LinkType::Raw, &v6));
    assert_eq!(
        (s.src, s.dst, s.dport),
        (ip("2001:db8::bad"), ip("2001:db8::5"), 443)
    );
    assert_eq!(s.ip_len, 60);
    assert_eq!(seg(decode(LinkType::Ipv6, &v6)), s);
    // The IPv4/IPv6 link types pin the version.
    assert_eq!(decode(LinkType::Ipv4, &v6), Err(DecodeError::BadIpVersion));
    assert_eq!(
        decode(LinkType::Ipv6, &v4_syn_raw()),
        Err(DecodeError::BadIpVersion)
    );
    assert_eq!(
        decode(LinkType::Raw, &[0x50; 40]),
        Err(DecodeError::BadIpVersion)
    );
    assert_eq!(decode(LinkType::Raw, &[]), Err(DecodeError::TruncatedIp));
}

#[test]
fn bsd_loopback_null_and_loop() {
    for (family, little) in [(2u32, true), (2, false)] {
        let mut pkt = if little {
            family.to_le_bytes().to_vec()
        } else {
            family.to_be_bytes().to_vec()
        };
        pkt.extend(v4_syn_raw());
        syn_v4_expected(seg(decode(LinkType::Null, &pkt)));
    }
    for family in [10u32, 24, 28, 30] {
        let mut pkt = family.to_le_bytes().to_vec();
        pkt.extend(v6_syn_raw(1, 22, TcpFlags::SYN));
        assert_eq!(seg(decode(LinkType::Null, &pkt)).dport, 22, "AF {family}");
    }
    let mut lo = 2u32.to_be_bytes().to_vec();
    lo.extend(v4_syn_raw());
    syn_v4_expected(seg(decode(LinkType::Loop, &lo)));

    let mut bad = 7u32.to_le_bytes().to_vec();
    bad.extend(v4_syn_raw());
    assert_eq!(
        decode(LinkType::Null, &bad),
        Err(DecodeError::UnknownLoopbackFamily)
    );
    assert_eq!(
        decode(LinkType::Null, &[2, 0]),
        Err(DecodeError::TruncatedLink)
    );
}

#[test]
fn ipv4_options_are_skipped() {
    // IHL 8: 12 bytes of options (NOPs and an end marker).
    let raw = v4_syn_raw();
    let mut pkt = raw[..20].to_vec();
    pkt[0] = 0x48;
    pkt.extend([1u8; 11]);
    pkt.push(0);
    pkt.extend(&raw[20..]);
    let total = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    syn_v4_expected(seg(decode(LinkType::Raw, &pkt)));
}

#[test]
fn ipv4_fragments_first_decodes_others_skip() {
    let mut first = v4_syn_raw();
    first[6] = 0x20; // MF set, offset 0: the first fragment still carries TCP.
    crate::set_ipv4_checksum(&mut first);
    syn_v4_expected(seg(decode(LinkType::Raw, &first)));
    let mut later = v4_syn_raw();
    later[6] = 0x00;
    later[7] = 0x10; // offset 16 * 8 bytes
    crate::set_ipv4_checksum(&mut later);
    assert_eq!(
        decode(LinkType::Raw, &later),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
}

/// The fragment refactor computed a fragment's length as total - IHL before looking at a
/// total length of 0 (TSO), and underflowed.
#[test]
fn ipv4_fragment_with_total_length_zero_does_not_panic() {
    let mut pkt = v4_syn_raw();
    pkt[2..4].copy_from_slice(&[0, 0]);
    pkt[6] = 0x20;
    crate::set_ipv4_checksum(&mut pkt);
    syn_v4_expected(seg(decode(LinkType::Raw, &pkt)));
    pkt[7] = 1;
    crate::set_ipv4_checksum(&mut pkt);
    assert_eq!(
        decode(LinkType::Raw, &pkt),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    let mut r = Reassembler::default();
    assert_eq!(
        r.decode(LinkType::Raw, &pkt, 0),
        Ok(Decoded::Skipped(Skip::Fragment))
    );
    assert_eq!(r.stats().dropped, 1);
}

#[test]
fn ipv4_length_fields_are_checked() {
    let mut short_ihl = v4_syn_raw();
    short_ihl[0] = 0x44;
    assert_eq!(
        decode(LinkType::Raw, &short_ihl),
        Err(DecodeError::BadIpHeaderLength)
    );

    let mut total_below_header = v4_syn_raw();
    total_below_header[2..4].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(
        decode(LinkType::Raw, &total_below_header),
        Err(DecodeError::BadIpTotalLength)
    );

    // Total length says the TCP header is cut: the bytes past it do not count.
    let mut total_cuts_tcp = v4_syn_raw();
    total_cuts_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(
        decode(LinkType::Raw, &total_cuts_tcp),
        Err(DecodeError::TruncatedTcp)
    );

    // Total length 0 (TSO capture): the capture bounds the packet.
    let mut tso = v4_syn_raw();
    tso[2..4].copy_from_slice(&0u16.to_be_bytes());
    syn_v4_expected(seg(decode(LinkType::Raw, &tso)));

    // Ethernet padding after a short packet is ignored.
    let mut padded = v4_syn_ethernet();
    padded.extend([0u8; 20]);
    assert_eq!(seg(decode(LinkType::Ethernet, &padded)).ip_len, 40);
}

#[test]
fn tcp_data_offset_is_checked() {
    let mut bad = v4_syn_raw();
    bad[20 + 12] = 0x40; // data offset 4
    assert_eq!(
        decode(LinkType::Raw, &bad),
        Err(DecodeError::BadTcpDataOffset)
    );
    let mut options_cut = v4_syn_raw();
    options_cut[20 + 12] = 0x80; // 32 bytes claimed, 20 present
    assert_eq!(
        decode(LinkType::Raw, &options_cut),
        Err(DecodeError::TruncatedTcp)
    );
}

/// Splices extension headers between the IPv6 fixed header and the TCP header.
/// Each entry is (header type, bytes of the header with its next-header byte to be
/// filled in).
fn v6_with_extensions(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let base = v6_syn_raw(40000, 8080, TcpFlags::SYN);
    let mut pkt = base[..40].to_vec();
    let types: Vec<u8> = exts.iter().map(|(t, _)| *t).collect();
    if let Some(first) = types.first() {
        pkt[6] = *first;
    }
    for (i, (_, body)) in exts.iter().enumerate() {
        let mut body = body.clone();
        body[0] = types.get(i + 1).copied().unwrap_or(6);
        pkt.extend(body);
    }
    pkt.extend(&base[40..]);
    let payload = (pkt.len() - 40) as u16;
    pkt[4..6].copy_from_slice(&payload.to_be_bytes());
    pkt
}

/// A hop-by-hop or destination-options header of `(len_units + 1) * 8` bytes whose
/// options Linux takes: PadN alone in 8 bytes, else one option of an unknown type whose
/// top bits say "skip".
fn ext8(len_units: u8) -> Vec<u8> {
    let mut v = vec![0u8; (usize::from(len_units) + 1) * 8];
    v[1] = len_units;
    if len_units == 0 {
        v[2..4].copy_from_slice(&[1, 4]);
    } else {
        v[2] = 0x1e;
        v[3] = (v.len() - 4) as u8;
    }
    v
}

/// A routing header of type 0 with no segments left, `(len_units + 1) * 8` bytes.
fn routing8(len_units: u8) -> Vec<u8> {
    let mut v = vec![0u8; (usize::from(len_units) + 1) * 8];
    v[1] = len_units;
    v
}

fn fragment(offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut v = vec![0u8; 8];
    v[2..4].copy_from_slice(&field.to_be_bytes());
    v
}

#[test]
fn ipv6_extension_header_walk() {
    let pkt = v6_with_extensions(&[
        (0, ext8(0)),
        (43, routing8(2)),
        (60, ext8(1)),
        (44, fragment(0, true)),
    ]);
    let s = seg(decode(LinkType::Raw, &pkt));
    assert_eq!((s.sport, s.dport), (40000, 8080));
    assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));

    let ah = {
        let mut v = vec![0u8; 16];
        v[1] = 2; // (2 + 2) * 4 = 16 bytes
        v
    };
    assert_eq!(
        seg(decode(LinkType::Raw, &v6_with_extensions(&[(51, ah)]))).dport,
        8080
    );

    let later = v6_with_extensions(&[(0, ext8(0)), (44, fragment(185, false))]);
    assert_eq!(
        decode(LinkType::Raw, &later),
        Ok(Decoded::Skipped(Skip::Fragment))
    );

    // Like Linux, no count limit: the walk lasts as long as the bytes do. The backstop
    // can only be reached with payload length 0 (jumbogram/TSO capture), since 65535
    // bytes of payload hold fewer headers.
    let mut too_many = v6_with_extensions(&vec![(60, ext8(0)); MAX_IPV6_EXTENSION_HEADERS + 1]);
    too_many[4..6].copy_from_slice(&[0, 0]);
    assert_eq!(
        decode(LinkType::Raw, &too_many),
        Err(DecodeError::TooManyExtensionHeaders)
    );
    let mut just_enough = v6_with_extensions(&vec![(60, ext8(0)); MAX_IPV6_EXTENSION_HEADERS]);
    just_enough[4..6].copy_from_slice(&[0, 0]);
    assert!(matches!(
        decode(LinkType::Raw, &just_enough),
        Ok(Decoded::Segment(_))
    ));

    // A routing header claiming more bytes than the packet has.
    let mut cut = v6_with_extensions(&[(43, routing8(0))]);
    cut[41] = 200;
    assert!(decode(LinkType::Raw, &cut).is_err());

    // No next header.
    let mut none = v6_with_extensions(&[(60, ext8(0))]);
    none[40] = 59;
    assert_eq!(
        decode(LinkType::Raw, &none),
        Ok(Decoded::Skipped(Skip::OtherProtocol))
    );
}

#[test]
fn ipv6_headers_linux_refuses_are_no_attempt() {
    let refused = |pkt: &[u8]| decode(LinkType::Raw, pkt);
    let bad = Err(DecodeError::BadIpv6Extension);
    // Hop-by-hop anywhere but first.
    assert_eq!(
        refused(&v6_with_extensions(&[(60, ext8(0)), (0, ext8(0))])),
        bad
    );
    assert!(refused(&v6_with_extensions(&[(0, ext8(0)), (60, ext8(0))])).is_ok());
    // Routing headers: segments left, or segment routing and RPL types. A mobility
    // header (type 2) with none left is taken: a kernel without Mobile IPv6 answers it.
    for (kind, left, taken) in [
        (0, 0, true),
        (0, 1, false),
        (2, 0, true),
        (2, 1, false),
        (3, 0, false),
        (4, 0, false),
        (5, 0, true),
    ] {
        let mut rh = routing8(1);
        rh[2..4].copy_from_slice(&[kind, left]);
        let got = refused(&v6_with_extensions(&[(43, rh)]));
        assert_eq!(got.is_ok(), taken, "type {kind}, {left} left: {got:?}");
    }
    // Padding: more than 7 bytes in a row, or PadN with a non-zero byte.
    let opts = |body: &[u8]| {
        let mut v = vec![0, ((body.len() + 2) / 8 - 1) as u8];
        v.extend(body);
        v
    };
    assert_eq!(
        refused(&v6_with_extensions(&[(
            60,
            opts(&[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        )])),
        bad
    );
    assert_eq!(refused(&v6_with_extensions(&[(60, opts(&[0; 14]))])), bad);
    assert_eq!(
        refused(&v6_with_extensions(&[(60, opts(&[1, 4, 0, 0, 9, 0]))])),
        bad
    );
    // An unknown option: "skip" is taken, the three kinds of "discard" are not.
    for (kind, taken) in [(0x1e, true), (0x5e, false), (0x9e, false), (0xde, false)] {
        let got = refused(&v6_with_extensions(&[(60, opts(&[kind, 0, 1, 2, 0, 0]))]));
        assert_eq!(got.is_ok(), taken, "option {kind:#x}: {got:?}");
    }
    // Nine options where eight are allowed.
    let mut nine = Vec::new();
    for _ in 0..9 {
        nine.extend([0x1e, 0]);
    }
    nine.extend([1, 2, 0, 0]);
    assert_eq!(refused(&v6_with_extensions(&[(60, opts(&nine))])), bad);
    // An option running past its header.
    assert_eq!(
        refused(&v6_with_extensions(&[(60, opts(&[0x1e, 9, 0, 0, 0, 0]))])),
        bad
    );
    // Router alert of the right length is taken; the home address option is not.
    assert!(refused(&v6_with_extensions(&[(0, opts(&[5, 2, 0, 0, 1, 0]))])).is_ok());
    assert_eq!(
        refused(&v6_with_extensions(&[(0, opts(&[5, 3, 0, 0, 0, 1]))])),
        bad
    );
    assert_eq!(
        refused(&v6_with_extensions(&[(60, opts(&[0xc9, 4, 0, 0, 0, 0]))])),
        bad
    );
}

#[test]
fn ipv6_from_multicast_or_ipv4_mapped_sources_is_no_attempt() {
    for src in ["ff02::1", "::ffff:10.9.9.9"] {
        let mut pkt = v6_syn_raw(40000, 22, TcpFlags::SYN);
        pkt[8..24].copy_from_slice(&ip6(src));
        assert_eq!(
            decode(LinkType::Raw, &pkt),
            Err(DecodeError::BadIpv6Source),
            "{src}"
        );
    }
    // An IPv4-compatible (deprecated) or ordinary address is an attempt.
    let mut pkt = v6_syn_raw(40000, 22, TcpFlags::SYN);
    pkt[8..24].copy_from_slice(&ip6("::10.9.9.9"));
    assert!(matches!(
        decode(LinkType::Raw, &pkt),
        Ok(Decoded::Segment(_))
    ));
}

/// Linux answers a SYN behind ten destination options headers; the walk used to stop at 8.
#[test]
fn ten_destination_options_headers_then_tcp() {
    let pkt = v6_with_extensions(&vec![(60, ext8(0)); 10]);
    let s = seg(decode(LinkType::Raw, &pkt));
    assert_eq!((s.sport, s.dport), (40000, 8080));
    assert_eq!(s.transport, Transport::Tcp(TcpFlags(TcpFlags::SYN)));
    assert_eq!(s.ip_len as usize, pkt.len());
    // A long mixed chain within one ordinary packet.
    let mut chain = vec![(0, ext8(0))];
    chain.extend((0..40).map(|i| {
        if i % 2 == 0 {
            (60, ext8(1))
        } else {
            (43, routing8(0))
        }
    }));
    chain.push((44, fragment(0, false)));
    assert_eq!(
        seg(decode(LinkType::Raw, &v6_with_extensions(&chain))).dport,
        8080
    );
}

#[test]
fn udp_and_other_protocols() {
    let mut out = Vec::new();
    PacketBuilder::ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
        .udp(5353, 53)
        .write(&mut out, &[1, 2, 3])
        .expect("build");
    let s = seg(decode(LinkType::Raw, &out));
    assert_eq!((s.sport, s.dport, s.transport), (5353, 53, Transport::Udp));
    assert_eq!(
        decode(LinkType::Raw, &out[..25]),
        Err(DecodeError::TruncatedUdp)
    );

    let mut icmp = Vec::new();
    PacketBuilder::ipv4([192, 0, 2, 56], [10, 0, 0, 5], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, &[])
        .expect("build");
    assert_eq!(
        decode(LinkType::Raw, &icmp),
        Ok(Decoded::Skipped(Skip::OtherProtocol))
    );

    let mut arp = MAC_A.to_vec();
    arp.extend(MAC_B);
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    assert_eq!(
        decode(LinkType::Ethernet, &arp),
        Ok(Decoded::Skipped(Skip::NotIp))
    );
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let full = v4_syn_ethernet();
    for cut in 0..full.len() {
        let got = decode(LinkType::Ethernet, &full[..cut]);
        let want = match cut {
            0..14 => DecodeError::TruncatedLink,
            14..34 => DecodeError::TruncatedIp,
            _ => DecodeError::TruncatedTcp,
        };
        assert_eq!(got, Err(want), "cut at {cut}");
    }
    let v6 = v6_with_extensions(&[(0, ext8(0)), (44, fragment(0, false))]);
    for cut in 0..v6.len() {
        assert!(decode(LinkType::Raw, &v6[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn flags_debug_names_bits() {
    assert_eq!(
        format!("{:?}", TcpFlags(TcpFlags::SYN | TcpFlags::ACK)),
        "SYN|ACK"
    );
    assert_eq!(format!("{:?}", TcpFlags(0)), "(none)");
}

#[test]
fn error_kinds_have_distinct_names_and_indices() {
    for (i, kind) in DecodeError::ALL.iter().enumerate() {
        assert_eq!(kind.index(), i);
        assert_eq!(kind.to_string(), kind.as_str());
    }
    let names: std::collections::HashSet<_> = DecodeError::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names.len(), DecodeError::ALL.len());
}

#[test]
fn linktype_numbers_round_trip() {
    for n in [0u32, 1, 101, 108, 113, 228, 229, 276] {
        assert_eq!(LinkType::from_linktype(n).map(LinkType::linktype), Some(n));
    }
    assert_eq!(LinkType::from_linktype(12), Some(LinkType::Raw));
    assert_eq!(LinkType::from_linktype(14), Some(LinkType::Raw));
    assert_eq!(LinkType::from_linktype(105), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_bytes_never_panic(link in 0usize..8, data in prop::collection::vec(any::<u8>(), 0..200)) {
        let links = [
            LinkType::Null, LinkType::Ethernet, LinkType::Raw, LinkType::Loop,
            LinkType::LinuxSll, LinkType::Ipv4, LinkType::Ipv6, LinkType::LinuxSll2,
        ];
        let _ = decode(links[link], &data);
    }

    #[test]
    fn mutated_packets_never_panic(pos in 0usize..60, byte in any::<u8>(), cut in 0usize..80) {
        let mut pkt = v4_syn_ethernet();
        let len = pkt.len();
        pkt[pos % len] = byte;
        pkt.truncate(cut.min(len));
        let _ = decode(LinkType::Ethernet, &pkt);
    }
}

#[test]
fn a_cooked_capture_says_which_packets_came_in_and_from_where() {
    // SLL2, IPv6, packet type 0 (to this host) then 4 (outgoing).
    let mut v6 = vec![
        0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
    ];
    v6.extend(v6_syn_raw(1, 2, TcpFlags::SYN));
    let came = came_in(LinkType::LinuxSll2, &v6).expect("came in");
    assert_eq!(came.0, ip("2001:db8::bad"));
    v6[10] = 4;
    assert_eq!(came_in(LinkType::LinuxSll2, &v6), None);
    // SLL (v1): the packet type is the first two bytes.
    let mut v4 = vec![0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
    v4.extend(v4_syn_raw());
    let came = came_in(LinkType::LinuxSll, &v4).expect("came in");
    assert_eq!(came, (ip("192.0.2.56"), ip("10.0.0.5")));
    v4[1] = 4;
    assert_eq!(came_in(LinkType::LinuxSll, &v4), None);
    // Other link types do not say; cut packets never panic and say nothing.
    assert_eq!(came_in(LinkType::Ethernet, &v4), None);
    for cut in 0..v6.len() {
        v6[10] = 0;
        let got = came_in(LinkType::LinuxSll2, &v6[..cut]);
        assert_eq!(got.is_some(), cut >= 60, "{cut}");
        let _ = came_in(LinkType::LinuxSll, &v6[..cut]);
    }
}

#[test]
fn a_cooked_capture_with_the_vlan_tag_put_back_decodes_behind_it() {
    // `tcpdump -i any -y LINUX_SLL`: libpcap puts the tag it took from the packet's
    // metadata back in, after the protocol field (then 0x8100).
    let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x81, 0x00];
    sll.extend([0x00, 0x2a, 0x08, 0x00]);
    sll.extend(v4_syn_raw());
    syn_v4_expected(seg(decode(LinkType::LinuxSll, &sll)));
    assert_eq!(
        came_in(LinkType::LinuxSll, &sll),
        Some((ip("192.0.2.56"), ip("10.0.0.5")))
    );
    // SLL2, two tags.
    let mut sll2 = vec![
        0x88, 0xa8, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
    ];
    sll2.extend([0x00, 0x05, 0x81, 0x00, 0x00, 0x06, 0x08, 0x00]);
    sll2.extend(v4_syn_raw());
    syn_v4_expected(seg(decode(LinkType::LinuxSll2, &sll2)));
    // Cut inside a tag: said, never a panic.
    for cut in 14..24 {
        let _ = decode(LinkType::LinuxSll, &sll[..cut]);
        let _ = came_in(LinkType::LinuxSll, &sll[..cut]);
    }
}
