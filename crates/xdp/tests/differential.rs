//! One truth for both paths: the XDP program (run by the kernel, BPF_PROG_TEST_RUN) and
//! `synwatch_decode::decode()` must reach the same verdict on every frame. For each
//! frame, either both say "connection attempt or stealth probe, with these addresses,
//! ports and flags", or both say "not an attempt", or the program handed the frame up
//! raw, and then decode() of those bytes as `LinkType::Raw` equals decode() of the frame.
//!
//! Frames: the decoder's fuzz corpus (each file as an Ethernet frame, and the packet its
//! link type frames wrapped in Ethernet as IPv4 and as IPv6), the sample capture
//! (`samples/*.pcap`) and the generator's sample traffic, the kinds of packets the golden
//! captures hold, and crafted evasions (nmap -f fragments, padding read as header, VLAN
//! stacks, AH, long IPv6 chains, bad data offsets and header lengths).
//!
//! Needs root (loading BPF): without it, or without BPF, the test fails and says why.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use synwatch_capture::CaptureReader;
use synwatch_decode::{DecodeError, Decoded, LinkType, Transport, decode};
use synwatch_testkit::packet::{
    ACK, FIN, IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv6, Ipv6Ext, MAC_DST, MAC_SRC, PSH, RST, SYN, Tcp,
    URG, Udp, ethernet, ethernet_qinq, ethernet_vlan, ethernet_with, tcp_ip, udp_v4,
};
use synwatch_xdp::layout::{FRAG_HEAD, RAW_CAP, RING_BYTES, raw_record_cost};
use synwatch_xdp::{Counter, Options, RawPacket, Record, Ring, Verdict, Xdp};

const SRC4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const DST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn src6() -> Ipv6Addr {
    "2001:db8::bad".parse().unwrap()
}

fn dst6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}

/// What one path says of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    /// A connection attempt or stealth probe: (src, dst, sport, dport, flags).
    Attempt(IpAddr, IpAddr, u16, u16, u8),
    /// Handed up for user space to judge (XDP only).
    Raw(RawPacket),
    Nothing,
}

/// The same rule as synwatch_detect's `Probe::classify`: SYN without ACK, or none of
/// SYN, ACK, RST.
fn is_probe(f: u8) -> bool {
    if f & SYN != 0 {
        return f & ACK == 0;
    }
    f & (ACK | RST) == 0
}

fn by_decode(link: LinkType, data: &[u8]) -> Said {
    match decode(link, data) {
        Ok(Decoded::Segment(s)) => match s.transport {
            Transport::Tcp(f) if is_probe(f.0) => {
                Said::Attempt(s.src, s.dst, s.sport, s.dport, f.0)
            }
            _ => Said::Nothing,
        },
        _ => Said::Nothing,
    }
}

struct Harness {
    xdp: Xdp,
    ring: Ring,
    records: Vec<Record>,
}

impl Harness {
    fn new() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
            "the differential test runs the XDP program in the kernel and must run as root (make test runs it as root); it never passes without BPF"
        );
        let mut xdp = Xdp::load(Options {
            emit: true,
            detection: None,
            scope_new: false,
            same_attempt_ns: 0,
        })
        .unwrap_or_else(|e| panic!("BPF unavailable, the differential test cannot run: {e}"));
        let ring = xdp.ring().unwrap();
        Harness {
            xdp,
            ring,
            records: Vec::new(),
        }
    }

    fn by_xdp(&mut self, frame: &[u8]) -> Said {
        let verdict = self.xdp.test_run(frame).unwrap();
        assert_eq!(verdict, Verdict::Pass, "nothing is banned: {frame:02x?}");
        self.records.clear();
        // The program ran synchronously: its record, if any, is in the ring already.
        self.ring.wait(Duration::ZERO, &mut self.records).unwrap();
        assert!(
            self.records.len() <= 1,
            "one record a frame: {:?}",
            self.records
        );
        match self.records.pop() {
            None => Said::Nothing,
            Some(Record::Probe(e)) => {
                assert!(e.probe() && !e.banned(), "{e:?}");
                Said::Attempt(e.src, e.dst, e.sport, e.dport, e.flags)
            }
            Some(Record::Raw(r)) => Said::Raw(r),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    frames: u64,
    /// Malformed frames the program counted by kind.
    counted: u64,
    attempts: u64,
    raw: u64,
    truncated: u64,
    heads: u64,
    nothing: u64,
}

/// Runs `frame` through both paths and requires one verdict; returns the program's.
fn check(h: &mut Harness, tally: &mut Tally, what: &str, frame: &[u8]) -> Said {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header; decode() says
    // truncated_link of them, no attempt.
    if frame.len() < 14 {
        assert_eq!(by_decode(LinkType::Ethernet, frame), Said::Nothing);
        return Said::Nothing;
    }
    tally.frames += 1;
    let reference = by_decode(LinkType::Ethernet, frame);
    let counted_before = Counter::MALFORMED.map(|(c, _)| h.ring.counter(c, &[0]));
    let xdp = h.by_xdp(frame);
    // A malformed frame the program judges is counted there, by the kind decode() gives
    // it; every other frame moves none of those counters.
    let rose: Vec<&str> = Counter::MALFORMED
        .iter()
        .zip(counted_before)
        .filter(|&(&(c, _), before)| h.ring.counter(c, &[0]) != before)
        .map(|(&(_, kind), _)| kind)
        .collect();
    let kind = decode(LinkType::Ethernet, frame)
        .err()
        .map(DecodeError::as_str);
    let counted = kind.filter(|k| Counter::MALFORMED.iter().any(|&(_, name)| name == *k));
    if counted.is_some() && xdp == Said::Nothing {
        // Passed as malformed: counted, by the kind decode() gives it.
        assert_eq!(rose, Vec::from_iter(counted), "{what}: {frame:02x?}");
    }
    if !rose.is_empty() {
        assert_eq!(
            (rose.as_slice(), &xdp),
            (Vec::from_iter(kind).as_slice(), &Said::Nothing),
            "{what}: {frame:02x?}"
        );
        tally.counted += 1;
    }
    match &xdp {
        Said::Raw(r) => {
            tally.raw += 1;
            let len = usize::try_from(r.len).unwrap();
            assert!(
                len <= frame.len() - 14
                    && r.bytes.len() == raw_bytes_of(&frame[frame.len() - len..]),
                "{what}: raw lengths {} of {len} for a frame of {}",
                r.bytes.len(),
                frame.len()
            );
            let l3 = &frame[frame.len() - len..];
            assert_eq!(
                r.bytes,
                l3[..r.bytes.len()],
                "{what}: raw bytes are the L3 packet"
            );
            // User space judges what it is handed as libpcap judges what it captures
            // (the frame's first SNAPLEN bytes): the same attempt, or none.
            assert_eq!(
                by_decode(LinkType::Raw, &r.bytes),
                by_decode(LinkType::Ethernet, &frame[..frame.len().min(snaplen())]),
                "{what}: the raw bytes ({} of {len}) say what libpcap's capture says",
                r.bytes.len()
            );
            if r.truncated() {
                // Cut at the cap (counted by the program), or a fragment's head.
                if r.bytes.len() == RAW_CAP {
                    tally.truncated += 1;
                } else {
                    tally.heads += 1;
                }
            } else {
                assert_eq!(
                    decode(LinkType::Raw, &r.bytes),
                    decode(LinkType::Ethernet, frame),
                    "{what}: the raw bytes decode as the frame does: {frame:02x?}"
                );
            }
        }
        Said::Attempt(..) => {
            tally.attempts += 1;
            assert_eq!(xdp, reference, "{what}: {frame:02x?}");
        }
        Said::Nothing => {
            tally.nothing += 1;
            assert_eq!(xdp, reference, "{what}: {frame:02x?}");
        }
    }
    xdp
}

/// How many bytes of an L3 packet a raw record carries: an IPv4 fragment that cannot
/// hold part of a TCP header (another protocol's, or at offset 60 or more) its first
/// FRAG_HEAD, any other packet up to RAW_CAP.
fn raw_bytes_of(l3: &[u8]) -> usize {
    let v4_fragment = l3.len() >= 20 && l3[0] >> 4 == 4 && (l3[6] & 0x3f, l3[7]) != (0, 0);
    let offset = usize::from(u16::from_be_bytes([l3[6] & 0x1f, l3[7]])) * 8;
    if v4_fragment && (l3[9] != IPPROTO_TCP || offset >= 60) {
        l3.len().min(FRAG_HEAD)
    } else {
        l3.len().min(RAW_CAP)
    }
}

/// The bytes of a frame libpcap captures (synwatch's snap length).
fn snaplen() -> usize {
    usize::try_from(synwatch_capture::live::SNAPLEN).unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The IP packet a non-Ethernet link type frames, as the decoder finds it.
fn l3_of(link: LinkType, packet: &[u8]) -> Option<&[u8]> {
    match link {
        LinkType::Ethernet => None,
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => Some(packet),
        LinkType::Null | LinkType::Loop => packet.get(4..),
        LinkType::LinuxSll => packet.get(16..),
        LinkType::LinuxSll2 => packet.get(20..),
    }
}

fn corpus_frames() -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus/decode");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 100, "the decode corpus is there");
    let mut frames = Vec::new();
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The decode target's layout: a link type selector, then the packet.
        let Some((link, packet)) = synwatch_decode::fuzz::split_input(&data) else {
            continue;
        };
        // Any bytes are an Ethernet frame.
        frames.push((format!("corpus {name} as Ethernet"), packet.to_vec()));
        if let Some(ip) = l3_of(link, packet) {
            for ethertype in [0x0800u16, 0x86dd] {
                frames.push((
                    format!("corpus {name} ({link:?}) in Ethernet {ethertype:#06x}"),
                    ethernet_with(MAC_DST, MAC_SRC, ethertype, ip),
                ));
            }
        }
    }
    frames
}

fn capture_frames() -> Vec<(String, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    pcaps.sort();
    assert!(!pcaps.is_empty(), "samples/*.pcap are there");
    for path in pcaps {
        let mut reader = CaptureReader::open(&path).unwrap();
        let mut n = 0;
        while let Some(p) = reader.next_packet().unwrap() {
            n += 1;
            let link = LinkType::from_linktype(p.linktype).unwrap();
            let frame = match l3_of(link, p.data) {
                None => p.data.to_vec(),
                Some(ip) => ethernet(ip),
            };
            frames.push((format!("{} #{n}", path.display()), frame));
        }
    }
    for (i, (_, frame)) in synwatch_testkit::generate::sample_frames()
        .into_iter()
        .enumerate()
    {
        frames.push((format!("sample frame {i}"), frame));
    }
    frames
}

/// The kinds of packet the golden captures (crates/synwatch/tests/golden.rs) hold.
fn golden_kind_frames() -> Vec<(String, Vec<u8>)> {
    let (s, h) = (IpAddr::from(SRC4), IpAddr::from(DST4));
    let syn = |dport| Tcp::new(42000, dport, SYN);
    let mut frames = vec![
        (
            "hop-by-hop",
            ethernet(&Ipv6::new(src6(), dst6()).hop_by_hop().tcp(&syn(22))),
        ),
        (
            "routing",
            ethernet(&Ipv6::new(src6(), dst6()).routing().tcp(&syn(23))),
        ),
        (
            "dest-opts",
            ethernet(&Ipv6::new(src6(), dst6()).dest_opts().tcp(&syn(24))),
        ),
        (
            "v6 first fragment",
            ethernet(
                &Ipv6::new(src6(), dst6())
                    .ext(Ipv6Ext::fragment(0, true))
                    .tcp(&syn(25)),
            ),
        ),
        (
            "v6 later fragment",
            ethernet(
                &Ipv6::new(src6(), dst6())
                    .ext(Ipv6Ext::fragment(185, false))
                    .tcp(&syn(26)),
            ),
        ),
        (
            "v6 chain with an atomic fragment",
            ethernet(
                &Ipv6::new(src6(), dst6())
                    .hop_by_hop()
                    .dest_opts()
                    .routing()
                    .ext(Ipv6Ext::fragment(0, false))
                    .tcp(&syn(27)),
            ),
        ),
        ("udp", ethernet(&udp_v4(SRC4, 53, DST4, 5353, 20))),
    ];
    let mut bad_offset = tcp_ip(s, 1, h, 1, SYN, 0);
    bad_offset[20 + 12] = 0x30;
    frames.push(("data offset 3", ethernet(&bad_offset)));
    let mut bad_version = tcp_ip(s, 1, h, 2, SYN, 0);
    bad_version[0] = 0x55;
    frames.push(("version 5", ethernet(&bad_version)));
    let cut = ethernet(&tcp_ip(s, 1, h, 3, SYN, 0));
    frames.push(("cut in TCP", cut[..14 + 20 + 10].to_vec()));
    for (i, flags) in [0, FIN | PSH | URG, FIN, SYN | ACK, RST, ACK, SYN | 0xc0]
        .into_iter()
        .enumerate()
    {
        let dport = 1000 + u16::try_from(i).unwrap();
        frames.push(("flags v4", ethernet(&tcp_ip(s, 50505, h, dport, flags, 0))));
        let v6 = tcp_ip(src6().into(), 50505, dst6().into(), dport, flags, 0);
        frames.push(("flags v6", ethernet(&v6)));
    }
    let ip = tcp_ip(s, 1, h, 22, SYN, 0);
    frames.push(("802.1Q", ethernet_vlan(&ip, &[(0x8100, 7)])));
    frames.push(("QinQ", ethernet_qinq(&ip, 7, 8)));
    frames
        .into_iter()
        .map(|(w, f)| (format!("golden kind: {w}"), f))
        .collect()
}

/// Sets the IPv4 total length of an IPv4 packet (checksum left stale: neither path
/// checks it).
fn with_total(mut ip: Vec<u8>, total: u16) -> Vec<u8> {
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip
}

/// Pads a frame to Ethernet's 60-byte minimum, as a NIC does.
fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    frame.resize(frame.len().max(60), 0xff);
    frame
}

/// What the program must do with a crafted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Attempt,
    Raw,
    Nothing,
}

fn crafted_frames() -> Vec<(String, Expect, Vec<u8>)> {
    use Expect::{Attempt, Nothing, Raw};
    let mut out: Vec<(String, Expect, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, expect, frame| out.push((what.to_owned(), expect, frame));
    let v4 = Ipv4::new(SRC4, DST4);
    let syn = Tcp::new(40000, 22, SYN);

    // nmap -sS -f: the TCP header in 8-byte fragments, each handed up.
    let segment = syn.segment_v4(SRC4, DST4);
    let pieces = v4.fragments(IPPROTO_TCP, &segment, 8);
    assert_eq!(pieces.len(), 3);
    for (i, piece) in pieces.iter().enumerate() {
        add(&format!("nmap -f fragment {i}"), Raw, ethernet(piece));
    }
    // With options in the header (60 bytes), in reverse order: the same.
    let with_opts = Tcp::new(40000, 23, SYN)
        .syn_options()
        .segment_v4(SRC4, DST4);
    for (i, piece) in v4
        .fragments(IPPROTO_TCP, &with_opts, 8)
        .iter()
        .rev()
        .enumerate()
    {
        add(
            &format!("nmap -f fragment with options, reversed {i}"),
            Raw,
            ethernet(piece),
        );
    }
    // A first fragment holding the whole header is handed up too: the kernel judges it
    // reassembled.
    add(
        "v4 first fragment, whole header",
        Raw,
        ethernet(&v4.clone().fragment(0, true).tcp(&syn)),
    );
    // An offset of 7 units (56 bytes) can still hold header options; 8 cannot.
    add(
        "v4 fragment at 56",
        Raw,
        ethernet(&v4.clone().fragment(7, true).tcp(&syn)),
    );
    // Fragments that cannot hold part of a TCP header come up too, their IP header
    // only: the kernel counts every protocol's toward ipfrag_max_dist, and an overlap
    // anywhere in a datagram discards it.
    add(
        "v4 fragment at 64",
        Raw,
        ethernet(&v4.clone().fragment(8, false).tcp(&syn)),
    );
    add(
        "v4 fragment at 64, 1400 bytes",
        Raw,
        ethernet(
            &v4.clone()
                .fragment(8, true)
                .encode(IPPROTO_TCP, &[0x5a; 1400]),
        ),
    );
    add(
        "v4 UDP first fragment",
        Raw,
        ethernet(
            &v4.clone()
                .fragment(0, true)
                .udp(&Udp::new(1, 53).payload_len(64)),
        ),
    );
    add(
        "v4 UDP later fragment",
        Raw,
        ethernet(&v4.clone().fragment(3, false).encode(IPPROTO_UDP, &[0; 16])),
    );
    add(
        "v4 ICMP first fragment with IP options",
        Raw,
        ethernet(
            &v4.clone()
                .options(&[1; 40])
                .fragment(0, true)
                .encode(1, &[0; 1400]),
        ),
    );

    // Padding after a short total length is not header.
    let plain = v4.tcp(&syn);
    add("padded SYN", Attempt, padded(ethernet(&plain)));
    let mut doff6 = plain.clone();
    doff6[20 + 12] = 0x60; // 24-byte TCP header: 4 more bytes than the packet holds
    add("padding read as options", Nothing, padded(ethernet(&doff6)));
    add(
        "total length cuts TCP",
        Nothing,
        padded(ethernet(&with_total(plain.clone(), 20 + 12))),
    );
    add(
        "total length below IHL",
        Nothing,
        padded(ethernet(&with_total(plain.clone(), 16))),
    );
    add(
        "total length 0 (TSO)",
        Attempt,
        ethernet(&with_total(plain.clone(), 0)),
    );
    add(
        "total length beyond the frame",
        Attempt,
        ethernet(&with_total(plain.clone(), 1400)),
    );
    let mut ihl4 = plain.clone();
    ihl4[0] = 0x44;
    add("IHL 4", Nothing, ethernet(&ihl4));
    let mut ihl_long = plain.clone();
    ihl_long[0] = 0x4f; // 60 bytes of header in a 40-byte packet
    add("IHL beyond the packet", Nothing, ethernet(&ihl_long));
    let mut doff4 = plain.clone();
    doff4[20 + 12] = 0x40;
    add("data offset 4", Nothing, ethernet(&doff4));
    let mut v6_in_v4 = plain.clone();
    v6_in_v4[0] = 0x65;
    add("ethertype IPv4, version 6", Nothing, ethernet(&v6_in_v4));
    add(
        "SYN with options",
        Attempt,
        ethernet(&v4.tcp(&Tcp::new(40000, 24, SYN).syn_options())),
    );
    let mut opts_cut = ethernet(&v4.tcp(&Tcp::new(40000, 24, SYN).syn_options()));
    opts_cut.truncate(opts_cut.len() - 4);
    add("SYN with options cut short", Nothing, opts_cut);

    // VLAN stacks: decode takes 8 tags of 0x8100, 0x88a8 or 0x9100; a 9th is refused.
    let tags = |n: usize| -> Vec<(u16, u16)> {
        (0..n)
            .map(|i| {
                (
                    [0x88a8, 0x9100, 0x8100][i % 3],
                    u16::try_from(i).unwrap() + 1,
                )
            })
            .collect()
    };
    for n in [1, 3, 8] {
        add(
            &format!("{n} VLAN tags"),
            Attempt,
            ethernet_vlan(&plain, &tags(n)),
        );
        let v6 = Ipv6::new(src6(), dst6()).tcp(&syn);
        add(
            &format!("{n} VLAN tags, IPv6"),
            Attempt,
            ethernet_vlan(&v6, &tags(n)),
        );
    }
    add("9 VLAN tags", Nothing, ethernet_vlan(&plain, &tags(9)));
    add(
        "0x9100 alone",
        Attempt,
        ethernet_vlan(&plain, &[(0x9100, 5)]),
    );
    let mut cut_tag = ethernet_vlan(&plain, &tags(3));
    cut_tag.truncate(14 + 4 + 2);
    add("cut inside a tag", Nothing, cut_tag);

    // IPv6: AH (4-octet units), chains as long as walked and longer, fragments.
    let v6 = Ipv6::new(src6(), dst6());
    add(
        "AH",
        Raw,
        ethernet(&v6.clone().ext(Ipv6Ext::auth()).tcp(&syn)),
    );
    add(
        "hop-by-hop, AH, dest-opts",
        Raw,
        ethernet(
            &v6.clone()
                .hop_by_hop()
                .ext(Ipv6Ext::auth())
                .dest_opts()
                .tcp(&syn),
        ),
    );
    let chain = |n: usize| {
        let mut p = v6.clone();
        for _ in 0..n {
            p = p.dest_opts();
        }
        p
    };
    // Header chains that put TCP past the first 512 bytes, handed up whole: a 608-byte
    // hop-by-hop header before an atomic fragment header, nine 104-byte
    // destination-options headers (the red team's hbhfrag and dest9).
    let big_opts = |n: usize, size: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                let mut opt = vec![0x1e, u8::try_from(size).unwrap()];
                opt.resize(2 + size, 0);
                opt
            })
            .collect()
    };
    let hbh_frag = v6
        .clone()
        .ext(Ipv6Ext::HopByHop(big_opts(3, 200)))
        .ext(Ipv6Ext::fragment(0, false))
        .tcp(&syn);
    assert_eq!(hbh_frag.len(), 40 + 608 + 8 + 20);
    add(
        "608-byte hop-by-hop, atomic fragment",
        Raw,
        ethernet(&hbh_frag),
    );
    let mut fat_chain = v6.clone();
    for _ in 0..9 {
        fat_chain = fat_chain.ext(Ipv6Ext::DestOpts(big_opts(1, 100)));
    }
    let dest9 = fat_chain.tcp(&syn);
    assert_eq!(dest9.len(), 40 + 9 * 104 + 20);
    add("nine 104-byte dest-opts", Raw, ethernet(&dest9));
    let mut two_kib = v6.clone();
    for _ in 0..2 {
        two_kib = two_kib.ext(Ipv6Ext::DestOpts(big_opts(4, 250)));
    }
    add(
        "two 1 KiB dest-opts, first fragment",
        Raw,
        ethernet(
            &two_kib
                .ext(Ipv6Ext::fragment(0, true))
                .tcp(&syn.clone().syn_options()),
        ),
    );
    add("8 dest-opts", Raw, ethernet(&chain(8).tcp(&syn)));
    // Chains Linux refuses (decode says why): every extension header is handed up, so
    // the two agree whatever the rule.
    add(
        "dest-opts before hop-by-hop",
        Raw,
        ethernet(&v6.clone().dest_opts().hop_by_hop().tcp(&syn)),
    );
    add(
        "14 bytes of PadN",
        Raw,
        ethernet(
            &v6.clone()
                .ext(Ipv6Ext::DestOpts(vec![
                    1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]))
                .tcp(&syn),
        ),
    );
    add(
        "routing header with a segment left",
        Raw,
        ethernet(
            &v6.clone()
                .ext(Ipv6Ext::Routing {
                    routing_type: 0,
                    segments_left: 1,
                    data: vec![0; 20],
                })
                .tcp(&syn),
        ),
    );
    for (name, src) in [
        ("IPv4-mapped source", "::ffff:192.0.2.9"),
        ("multicast source", "ff02::1"),
    ] {
        let src: std::net::Ipv6Addr = src.parse().unwrap();
        add(name, Raw, ethernet(&Ipv6::new(src, dst6()).tcp(&syn)));
    }
    add("9 dest-opts", Raw, ethernet(&chain(9).tcp(&syn)));
    add("10 dest-opts", Raw, ethernet(&chain(10).tcp(&syn)));
    add(
        "10 dest-opts, UDP",
        Raw,
        ethernet(&chain(10).udp(&Udp::new(1, 53))),
    );
    add(
        "v6 fragment after 7 headers",
        Raw,
        ethernet(&chain(7).ext(Ipv6Ext::fragment(0, true)).tcp(&syn)),
    );
    add(
        "v6 UDP fragment",
        Raw,
        ethernet(
            &v6.clone()
                .ext(Ipv6Ext::fragment(0, true))
                .udp(&Udp::new(1, 53)),
        ),
    );
    let mut short_plen = v6.clone().dest_opts().tcp(&syn);
    short_plen[4..6].copy_from_slice(&(8u16 + 12).to_be_bytes());
    add(
        "payload length cuts TCP behind dest-opts",
        Raw,
        padded(ethernet(&short_plen)),
    );
    let mut short_plen = v6.clone().tcp(&syn);
    short_plen[4..6].copy_from_slice(&12u16.to_be_bytes());
    add(
        "payload length cuts TCP",
        Nothing,
        padded(ethernet(&short_plen)),
    );
    let mut plen_in_ext = v6.clone().dest_opts().tcp(&syn);
    plen_in_ext[4..6].copy_from_slice(&1u16.to_be_bytes());
    add(
        "payload length cuts an extension header",
        Raw,
        ethernet(&plen_in_ext),
    );
    let mut plen0 = v6.clone().dest_opts().tcp(&syn);
    plen0[4..6].copy_from_slice(&0u16.to_be_bytes());
    add("payload length 0 (TSO), dest-opts", Raw, ethernet(&plen0));
    let mut plen0 = v6.clone().tcp(&syn);
    plen0[4..6].copy_from_slice(&0u16.to_be_bytes());
    add("payload length 0 (TSO)", Attempt, ethernet(&plen0));
    let mut v6_doff4 = v6.clone().tcp(&syn);
    v6_doff4[40 + 12] = 0x40;
    add("IPv6 data offset 4", Nothing, ethernet(&v6_doff4));
    let mut v4_in_v6 = v6.tcp(&syn);
    v4_in_v6[0] = 0x45;
    add(
        "ethertype IPv6, version 4",
        Nothing,
        ethernet_with(MAC_DST, MAC_SRC, 0x86dd, &v4_in_v6),
    );
    // The same bytes as IPv4: total length 0 and an offset, a fragment ip_rcv refuses.
    add(
        "v4 fragment of total length 0",
        Nothing,
        ethernet(&v4_in_v6),
    );
    out
}

#[test]
fn xdp_and_decode_reach_the_same_verdict_on_every_frame() {
    let mut h = Harness::new();
    let mut tally = Tally::default();
    for (what, frame) in corpus_frames()
        .into_iter()
        .chain(capture_frames())
        .chain(golden_kind_frames())
    {
        check(&mut h, &mut tally, &what, &frame);
    }
    let judged = (tally.frames, tally.attempts);
    for (what, expect, frame) in crafted_frames() {
        let said = check(&mut h, &mut tally, &what, &frame);
        let kind = match said {
            Said::Attempt(..) => Expect::Attempt,
            Said::Raw(_) => Expect::Raw,
            Said::Nothing => Expect::Nothing,
        };
        assert_eq!(kind, expect, "{what}: {said:?}");
    }
    eprintln!("{tally:?} (before the crafted frames: {judged:?})");
    assert!(
        tally.attempts > 100
            && tally.raw > 10
            && tally.nothing > 100
            && tally.heads >= 3
            && tally.counted > 10,
        "{tally:?}"
    );
    assert_eq!(h.ring.counter(Counter::RawRecords, &[0]), tally.raw);
    assert_eq!(h.ring.counter(Counter::RawTruncated, &[0]), tally.truncated);
    assert_eq!(h.ring.counter(Counter::RingbufFull, &[0]), 0);
}

/// An IPv6 packet with a fragment header (handed up raw) of `len` bytes in all.
fn v6_fragment_of(len: usize) -> Vec<u8> {
    let head = 40 + 8 + 20;
    Ipv6::new(src6(), dst6())
        .ext(Ipv6Ext::fragment(0, true))
        .tcp(&Tcp::new(1, 22, SYN).payload_len(len - head))
}

#[test]
fn raw_packets_longer_than_the_cap_are_cut_and_counted() {
    // The cap is at least what libpcap captures of a frame, so that user space reaches
    // every TCP header libpcap reaches (SPEC §2: the two paths agree).
    assert!(RAW_CAP >= snaplen(), "{RAW_CAP} < {}", snaplen());
    let mut h = Harness::new();
    // A jumbo frame: BPF_PROG_TEST_RUN hands the program a multi-buffer frame (its
    // first page linear, the rest in fragments), as a driver does.
    let big = v6_fragment_of(RAW_CAP + 1000);
    let frame = ethernet(&big);
    let Said::Raw(r) = h.by_xdp(&frame) else {
        panic!("a fragment is handed up")
    };
    assert_eq!(usize::try_from(r.len).unwrap(), big.len());
    assert_eq!(r.bytes, big[..RAW_CAP]);
    assert!(r.truncated());
    // The cut bytes still hold the header chain and the TCP header.
    assert_eq!(
        by_decode(LinkType::Raw, &r.bytes),
        by_decode(LinkType::Ethernet, &frame)
    );
    assert_eq!(h.ring.counter(Counter::RawRecords, &[0]), 1);
    assert_eq!(h.ring.counter(Counter::RawTruncated, &[0]), 1);
    // One byte short of the cap from the L3 header on: whole, not cut, and so at the
    // cap exactly.
    for len in [RAW_CAP - 1, RAW_CAP] {
        let Said::Raw(r) = h.by_xdp(&ethernet(&v6_fragment_of(len))) else {
            panic!("a fragment is handed up")
        };
        assert_eq!((r.bytes.len(), r.truncated()), (len, false));
    }
    assert_eq!(h.ring.counter(Counter::RawTruncated, &[0]), 1);
}

/// A flood of packets handed up raw fills the ring to its size and no further: the
/// records that did not fit are counted (RingbufFull), the ones that did are whole. The
/// small records of nmap -f's fragments take no more room than their bytes, and the ring
/// holds as many records of each size as the crate's documentation says.
#[test]
fn a_flood_of_raw_packets_fills_the_ring_to_its_size_and_the_rest_is_counted() {
    let segment = Tcp::new(40000, 22, SYN).segment_v4(SRC4, DST4);
    let nmap_f = Ipv4::new(SRC4, DST4).fragments(IPPROTO_TCP, &segment, 8)[0].clone();
    assert_eq!(nmap_f.len(), 28);
    let cases = [
        ("an nmap -f fragment", nmap_f, 88, 47_662),
        (
            "a 1500-byte IPv6 fragment",
            v6_fragment_of(1500),
            1560,
            2688,
        ),
        (
            "a 10,000-byte IPv6 fragment",
            v6_fragment_of(10_000),
            9272,
            452,
        ),
        // Only its IP header comes up.
        (
            "a 1500-byte IPv4 UDP fragment",
            Ipv4::new(SRC4, DST4)
                .fragment(0, true)
                .encode(IPPROTO_UDP, &[0; 1480]),
            120,
            34_952,
        ),
    ];
    for (what, packet, cost, fits) in cases {
        assert_eq!(raw_record_cost(raw_bytes_of(&packet)), cost, "{what}");
        assert_eq!(RING_BYTES / cost, fits, "{what}: the crate doc's figure");
        let mut h = Harness::new();
        let extra = 100;
        let frame = ethernet(&packet);
        let runs = u32::try_from(fits + extra).unwrap();
        let (verdict, _) = h.xdp.test_run_timed(&frame, runs).unwrap();
        assert_eq!(verdict, Verdict::Pass, "{what}");
        let sent = h.ring.counter(Counter::RawRecords, &[0]);
        let full = h.ring.counter(Counter::RingbufFull, &[0]);
        assert_eq!(
            (sent, full),
            (u64::try_from(fits).unwrap(), u64::try_from(extra).unwrap()),
            "{what}"
        );
        h.records.clear();
        h.ring.wait(Duration::ZERO, &mut h.records).unwrap();
        assert_eq!(h.records.len(), fits, "{what}");
        for record in &h.records {
            let Record::Raw(r) = record else {
                panic!("{what}: {record:?}")
            };
            assert_eq!(r.bytes, packet[..raw_bytes_of(&packet)], "{what}");
        }
        // Read, the ring has room again.
        assert!(matches!(h.by_xdp(&frame), Said::Raw(_)), "{what}");
    }
}
