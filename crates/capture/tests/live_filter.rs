//! What the kernel-side filter of live capture lets through, checked on built packets
//! with libpcap's own BPF interpreter (no interface, no privileges): every connection
//! attempt and stealth probe, IPv4 and IPv6 (with extension headers), every IPv4
//! fragment; not replies, not established traffic, not UDP.

use std::net::{IpAddr, Ipv6Addr};

use synwatch_capture::live::compiled_filter;
use synwatch_testkit::packet::{
    ACK, CWR, ECE, FIN, Ipv4, Ipv6, PSH, RST, SYN, TPID_8021AD, TPID_8021Q, Tcp, URG, Udp,
    ethernet, ethernet_vlan, sll, sll2, tcp_ip, udp_v4,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn packet(src: &str, dst: &str, flags: u8) -> Vec<u8> {
    tcp_ip(ip(src), 40000, ip(dst), 22, flags, 0)
}

#[test]
fn attempts_and_stealth_probes_pass_everything_else_stays_in_the_kernel() {
    let filter = compiled_filter(1).expect("compile for Ethernet");
    let pass = [
        ("SYN", SYN),
        ("SYN+ECE+CWR", SYN | ECE | CWR),
        ("NULL", 0),
        ("FIN", FIN),
        ("Xmas", FIN | PSH | URG),
        ("PSH", PSH),
        // The answer that keeps an attempt out of sweep counting.
        ("SYN-ACK", SYN | ACK),
        // SYN set and ACK clear: an attempt (SPEC §2), as XDP and replay count it.
        ("SYN+RST", SYN | RST),
        ("SYN+FIN+RST+PSH+URG", SYN | FIN | RST | PSH | URG),
    ];
    let block = [
        ("ACK", ACK),
        ("PSH-ACK", PSH | ACK),
        ("FIN-ACK", FIN | ACK),
        ("RST", RST),
        ("RST-ACK", RST | ACK),
    ];
    for (src, dst) in [
        ("203.0.113.9", "192.0.2.1"),
        ("2001:db8::bad", "2001:db8::1"),
    ] {
        for (name, flags) in pass {
            assert!(
                filter.filter(&ethernet(&packet(src, dst, flags))),
                "{name} from {src} must pass"
            );
        }
        for (name, flags) in block {
            assert!(
                !filter.filter(&ethernet(&packet(src, dst, flags))),
                "{name} from {src} must not pass"
            );
        }
    }
    let udp = udp_v4(
        "203.0.113.9".parse().expect("v4"),
        53,
        "192.0.2.1".parse().expect("v4"),
        53,
        10,
    );
    assert!(!filter.filter(&ethernet(&udp)));
}

#[test]
fn with_the_hosts_addresses_named_attempts_from_others_still_pass() {
    // The filter leaves out packets coming in from this host's own addresses, by the
    // packet type the kernel gives it. libpcap's own interpreter (which filters the
    // packets already in the ring again when the filter is set anew, as it is when the
    // host's addresses change) has no packet type and takes every packet for one coming
    // in: there only packets from the host's own addresses (its outgoing ones, at that
    // moment) are left out, never an attempt from anyone else.
    use synwatch_capture::live::compiled_filter_for;
    let own = [ip("192.0.2.1"), ip("2001:db8::1")];
    let filter = compiled_filter_for(1, &own).expect("compile for Ethernet");
    for (src, dst) in [
        ("203.0.113.9", "192.0.2.1"),
        ("2001:db8::bad", "2001:db8::1"),
    ] {
        assert!(filter.filter(&ethernet(&packet(src, dst, SYN))), "{src}");
        assert!(filter.filter(&ethernet(&packet(src, dst, FIN))), "{src}");
    }
    let first = Ipv4::new(
        "203.0.113.9".parse().expect("v4"),
        "192.0.2.1".parse().expect("v4"),
    )
    .id(7)
    .fragment(0, true)
    .encode(6, &[0; 8]);
    assert!(filter.filter(&ethernet(&first)));
}

#[test]
fn ipv6_with_extension_headers_is_left_to_the_decoder() {
    let filter = compiled_filter(1).expect("compile for Ethernet");
    let syn = Ipv6::new(v6("2001:db8::bad"), v6("2001:db8::1"))
        .hop_by_hop()
        .tcp(&Tcp::new(1, 22, SYN));
    assert!(filter.filter(&ethernet(&syn)));
    let routed = Ipv6::new(v6("2001:db8::bad"), v6("2001:db8::1"))
        .routing()
        .tcp(&Tcp::new(1, 22, SYN));
    assert!(filter.filter(&ethernet(&routed)));
}

#[test]
fn cooked_captures_filter_the_same() {
    for linktype in [113u32, 276] {
        let filter = compiled_filter(linktype).expect("compile");
        let frame = |ip: &[u8]| if linktype == 113 { sll(ip) } else { sll2(ip) };
        assert!(
            filter.filter(&frame(&packet("203.0.113.9", "192.0.2.1", SYN))),
            "linktype {linktype}"
        );
        assert!(
            !filter.filter(&frame(&packet("203.0.113.9", "192.0.2.1", ACK))),
            "linktype {linktype}"
        );
        assert!(
            filter.filter(&frame(&packet("2001:db8::bad", "2001:db8::1", SYN))),
            "linktype {linktype}"
        );
        assert!(
            !filter.filter(&frame(&packet("2001:db8::bad", "2001:db8::1", RST | ACK))),
            "linktype {linktype}"
        );
    }
}

/// `nmap -f`: a SYN whose 20-byte TCP header is cut into 8-byte IPv4 fragments.
fn nmap_f(flags: u8, protocol_udp: bool) -> Vec<Vec<u8>> {
    let src = "203.0.113.9".parse().expect("v4");
    let dst = "192.0.2.1".parse().expect("v4");
    let header = Ipv4::new(src, dst).id(4242);
    if protocol_udp {
        let payload = Udp::new(5353, 53).payload_len(40).datagram_v4(src, dst);
        return header.fragments(17, &payload, 8);
    }
    header.fragments(6, &Tcp::new(40000, 22, flags).segment_v4(src, dst), 8)
}

/// Every IPv4 fragment passes: the kernel counts every protocol's toward
/// `ipfrag_max_dist` and discards a datagram on an overlap anywhere in it, so user space
/// must see them all to know which datagrams the kernel still holds.
#[test]
fn ipv4_fragments_of_every_protocol_and_offset_pass_for_reassembly() {
    let filter = compiled_filter(1).expect("compile for Ethernet");
    let pieces = nmap_f(SYN, false);
    assert_eq!(pieces.len(), 3, "8 + 8 + 4 bytes of TCP header");
    for (i, piece) in pieces.iter().enumerate() {
        assert!(filter.filter(&ethernet(piece)), "fragment {i} must pass");
    }
    // Later pieces of a long segment, payload only (offset 64 bytes and beyond), of a
    // segment that is no attempt (ACK) at that.
    let src = "203.0.113.9".parse().expect("v4");
    let dst = "192.0.2.1".parse().expect("v4");
    let long = Tcp::new(40000, 22, ACK)
        .payload_len(400)
        .segment_v4(src, dst);
    let pieces = Ipv4::new(src, dst).fragments(6, &long, 56);
    assert!(pieces.len() > 3);
    for (i, piece) in pieces.iter().enumerate() {
        assert!(filter.filter(&ethernet(piece)), "TCP fragment {i}");
    }
    for (i, piece) in nmap_f(0, true).iter().enumerate() {
        assert!(filter.filter(&ethernet(piece)), "UDP fragment {i}");
    }
    // Not fragments: a plain ACK and a plain UDP datagram stay in the kernel.
    assert!(!filter.filter(&ethernet(&Ipv4::new(src, dst).tcp(&Tcp::new(1, 22, ACK)))));
    assert!(!filter.filter(&ethernet(&udp_v4(src, 53, dst, 53, 10))));
}

/// Behind three to eight in-band tags every frame passes, for the decoder to judge as XDP
/// and replay do (up to eight tags); an untagged or singly tagged ACK still does not.
#[test]
fn three_to_eight_in_band_vlan_tags_pass_for_the_decoder() {
    let filter = compiled_filter(1).expect("compile for Ethernet");
    let tag = (TPID_8021Q, 7);
    for n in 3..=8 {
        let tags = vec![tag; n];
        for (src, dst) in [
            ("203.0.113.9", "192.0.2.1"),
            ("2001:db8::bad", "2001:db8::1"),
        ] {
            for flags in [SYN, FIN | PSH | URG, ACK] {
                let frame = ethernet_vlan(&packet(src, dst, flags), &tags);
                assert!(filter.filter(&frame), "{n} tags {src} flags {flags:#x}");
            }
        }
    }
    for tags in [&[][..], &[tag][..], &[tag, tag][..]] {
        let frame = ethernet_vlan(&packet("203.0.113.9", "192.0.2.1", ACK), tags);
        assert!(!filter.filter(&frame), "{} tags: an ACK", tags.len());
    }
}

#[test]
fn one_and_two_in_band_vlan_tags_filter_like_untagged_frames() {
    let filter = compiled_filter(1).expect("compile for Ethernet");
    let stacks: [&[(u16, u16)]; 4] = [
        &[(TPID_8021Q, 10)],
        &[(TPID_8021AD, 10)],
        &[(0x9100, 10)],
        &[(TPID_8021AD, 10), (TPID_8021Q, 20)],
    ];
    for tags in stacks {
        for (src, dst) in [
            ("203.0.113.9", "192.0.2.1"),
            ("2001:db8::bad", "2001:db8::1"),
        ] {
            for (flags, pass) in [
                (SYN, true),
                (FIN | PSH | URG, true),
                (SYN | ACK, true),
                (RST | ACK, false),
            ] {
                let frame = ethernet_vlan(&packet(src, dst, flags), tags);
                assert_eq!(
                    filter.filter(&frame),
                    pass,
                    "{tags:?} {src} flags {flags:#x}"
                );
            }
            let ip = packet(src, dst, ACK);
            assert!(!filter.filter(&ethernet_vlan(&ip, tags)), "{tags:?} ACK");
        }
        for piece in nmap_f(SYN, false).into_iter().chain(nmap_f(0, true)) {
            assert!(
                filter.filter(&ethernet_vlan(&piece, tags)),
                "{tags:?} fragment"
            );
        }
        let ext = Ipv6::new(v6("2001:db8::bad"), v6("2001:db8::1"))
            .dest_opts()
            .tcp(&Tcp::new(1, 22, SYN));
        assert!(
            filter.filter(&ethernet_vlan(&ext, tags)),
            "{tags:?} IPv6 chain"
        );
        let udp = udp_v4(
            "203.0.113.9".parse().expect("v4"),
            53,
            "192.0.2.1".parse().expect("v4"),
            53,
            10,
        );
        assert!(!filter.filter(&ethernet_vlan(&udp, tags)), "{tags:?} UDP");
    }
}
