//! What the kernel-side filter of live capture lets through, checked on built packets
//! with libpcap's own BPF interpreter (no interface, no privileges): every connection
//! attempt and stealth probe, IPv4 and IPv6 (with extension headers); not replies, not
//! established traffic, not UDP.

use std::net::{IpAddr, Ipv6Addr};

use synwatch_capture::live::compiled_filter;
use synwatch_testkit::packet::{
    ACK, CWR, ECE, FIN, Ipv6, PSH, RST, SYN, Tcp, URG, ethernet, sll, sll2, tcp_ip, udp_v4,
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
    ];
    let block = [
        ("SYN-ACK", SYN | ACK),
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
            !filter.filter(&frame(&packet("2001:db8::bad", "2001:db8::1", SYN | ACK))),
            "linktype {linktype}"
        );
    }
}
