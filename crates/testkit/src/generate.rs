//! Deterministic capture generators, the library side of the `synwatch-gen` binary.
//!
//! * [`sample_frames`] / [`write_sample`]: a small, human-sized demo capture with normal
//!   HTTP(S) connections, an IPv4 SYN scanner and an IPv6 SYN+FIN scanner.
//! * [`write_bench`]: the throughput benchmark capture (millions of packets, mostly
//!   established data, ~20% SYNs, a few hundred real scanners among tens of thousands of
//!   ordinary sources, some SYN retransmissions).
//! * [`write_spoofed`]: one SYN from each of millions of distinct spoofed sources, the
//!   state-exhaustion stress input.
//!
//! All output is classic pcap, Ethernet (link type 1), microsecond timestamps, and is a
//! pure function of the configuration (seed included): the PRNG is the crate's own
//! [`XorShift64`]. The large generators stream: nothing proportional to the packet count
//! is held in memory except the SYN schedule of [`write_bench`] (~24 bytes per SYN).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::{
    ACK, ETHERTYPE_IPV4, ETHERTYPE_IPV6, FIN, IPPROTO_TCP, Ipv4, Ipv6, PSH, RST, SYN, SYN_OPTIONS,
    Tcp, Udp, ethernet_with, ethertype_of,
};
use crate::pcap::{LINKTYPE_ETHERNET, PcapWriter};

/// Start of the sample and bench captures: 2023-11-14T22:13:20Z (Unix time 1.7e9).
pub const START_SECS: i64 = 1_700_000_000;
const NS: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;
const US: i64 = 1_000;

/// MAC address of the router that external hosts' packets arrive through.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0xfe];
/// MAC address of the monitored server(s).
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x05];

/// The monitored server of the sample and the victim of the bench and spoofed captures.
pub const VICTIM_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
/// The monitored server's IPv6 address in the sample and spoofed captures.
pub const VICTIM_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
/// The sample's DNS server (answers the client's UDP queries).
pub const SAMPLE_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
/// The sample's ordinary client.
pub const SAMPLE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The sample's IPv4 SYN scanner.
pub const SAMPLE_SCANNER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// The sample's IPv6 scanner (SYN and FIN probes).
pub const SAMPLE_SCANNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xbad);
/// Ports of [`VICTIM_V4`] / [`VICTIM_V6`] that are open in the sample.
pub const SAMPLE_OPEN_PORTS: [u16; 3] = [22, 80, 443];
/// The 20 ports the IPv4 scanner probes, in probe order.
pub const SAMPLE_SCAN_PORTS_V4: [u16; 20] = [
    443, 21, 3389, 8080, 25, 110, 22, 139, 993, 23, 5900, 53, 135, 3306, 80, 445, 143, 111, 995,
    1723,
];
/// Ports the IPv6 scanner SYN-probes, in order.
pub const SAMPLE_SYN_PORTS_V6: [u16; 3] = [22, 80, 3389];
/// Ports the IPv6 scanner FIN-probes (after the SYN probes), in order.
pub const SAMPLE_FIN_PORTS_V6: [u16; 3] = [21, 23, 443];
/// Ordinary client connections in the sample (alternating mostly between 80 and 443).
pub const SAMPLE_CONNECTIONS: usize = 16;
/// Packets in the sample: 16 connections of 14 packets, 4 DNS packets, 43 for the IPv4
/// scan (20 probes, 20 answers, 3 RSTs for the open ports), 13 for the IPv6 scan.
pub const SAMPLE_PACKETS: usize = SAMPLE_CONNECTIONS * 14 + 4 + 43 + 13;

/// What a generator wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Packet records.
    pub packets: u64,
    /// File bytes, headers included.
    pub bytes: u64,
    /// SYN packets (retransmissions included).
    pub syns: u64,
    /// Distinct source addresses that sent SYNs.
    pub sources: u64,
    /// The addresses that scan (probe many ports) in this capture.
    pub scanners: Vec<IpAddr>,
}

/// Small, fast, deterministic PRNG: xorshift64* seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        let s = splitmix64(seed);
        Self {
            state: if s == 0 { 0x9e37_79b9_7f4a_7c15 } else { s },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (0 when `n == 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range_u16(&mut self, lo: u16, hi: u16) -> u16 {
        // The result is <= hi, so it fits.
        (u64::from(lo) + self.below(u64::from(hi - lo) + 1)) as u16
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Uniform in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// splitmix64 finalizer: a bijection on `u64`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A bijection on 28-bit values (xor-shift-multiply rounds within the 28 bits).
fn mix28(x: u32, key: u32) -> u32 {
    const M: u32 = (1 << 28) - 1;
    let mut x = (x ^ key) & M;
    x = x.wrapping_mul(0x045d_9f3b) & M;
    x ^= x >> 13;
    x = x.wrapping_mul(0x0119_de1f) & M;
    x ^= x >> 11;
    x = x.wrapping_mul(0x0b4b_82e5) & M;
    x ^= x >> 15;
    x
}

/// The `i`-th of up to 2^28 distinct addresses in 16.0.0.0/4 (public-looking, far from
/// the victims' 10.0.0.0/24), shuffled by `key`.
pub fn distinct_v4(i: u32, key: u32) -> Ipv4Addr {
    assert!(i < (1 << 28), "distinct_v4 has 2^28 addresses");
    Ipv4Addr::from((16u32 << 24) | mix28(i, key))
}

/// The `i`-th of 2^64 distinct addresses in 2001:db8:f000::/64, shuffled by `key`.
pub fn distinct_v6(i: u64, key: u64) -> Ipv6Addr {
    let low = splitmix64(i ^ key);
    Ipv6Addr::from((0x2001_0db8_f000_0000u128 << 64) | u128::from(low))
}

// ---------------------------------------------------------------------------------------
// Fast frame encoders for the big generators (checked against the builders in tests).

/// Appends an Ethernet + IPv4 + TCP frame to `out`, equal to
/// `ethernet_with(dst_mac, src_mac, 0x0800, &Ipv4::new(src, dst).ttl(ttl).id(id).tcp(&tcp))`
/// for the corresponding [`Tcp`] (window, no urgent pointer), without intermediate buffers.
fn put_eth_v4_tcp(
    out: &mut Vec<u8>,
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    seg: &Seg<'_>,
) {
    let base = out.len();
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = out.len();
    let thl = 20 + seg.options.len();
    let total = 20 + thl + seg.payload.len();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&(total as u16).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x40, 0, ttl, IPPROTO_TCP, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = fold(sum16(&out[ip..ip + 20]));
    out[ip + 10..ip + 12].copy_from_slice(&(!c).to_be_bytes());
    let mut pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + u64::from(IPPROTO_TCP);
    pseudo += (thl + seg.payload.len()) as u64;
    put_tcp(out, seg, pseudo);
    debug_assert_eq!(out.len() - base, 14 + total);
}

/// Appends an Ethernet + IPv6 + TCP frame, as [`put_eth_v4_tcp`] for IPv6 (hop limit 64).
fn put_eth_v6_tcp(
    out: &mut Vec<u8>,
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    seg: &Seg<'_>,
) {
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let plen = 20 + seg.options.len() + seg.payload.len();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(plen as u16).to_be_bytes());
    out.extend_from_slice(&[IPPROTO_TCP, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + u64::from(IPPROTO_TCP) + plen as u64;
    put_tcp(out, seg, pseudo);
}

/// TCP header fields for the fast encoders. Options must be a multiple of 4 bytes.
#[derive(Debug, Clone, Copy)]
struct Seg<'a> {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &'a [u8],
    payload: &'a [u8],
}

fn put_tcp(out: &mut Vec<u8>, s: &Seg<'_>, pseudo: u64) {
    debug_assert!(s.options.len().is_multiple_of(4) && s.options.len() <= 40);
    let t = out.len();
    out.extend_from_slice(&s.sport.to_be_bytes());
    out.extend_from_slice(&s.dport.to_be_bytes());
    out.extend_from_slice(&s.seq.to_be_bytes());
    out.extend_from_slice(&s.ack.to_be_bytes());
    out.push((((20 + s.options.len()) / 4) as u8) << 4);
    out.push(s.flags);
    out.extend_from_slice(&s.window.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(s.options);
    out.extend_from_slice(s.payload);
    let c = fold(pseudo + sum16(&out[t..]));
    out[t + 16..t + 18].copy_from_slice(&(!c).to_be_bytes());
}

/// Sum of big-endian 16-bit words (odd tail padded with zero), not yet folded.
fn sum16(b: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut it = b.chunks_exact(2);
    for c in &mut it {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [x] = it.remainder() {
        s += u64::from(*x) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A static pattern that payloads are sliced from.
static PAYLOAD: [u8; 1500] = {
    let mut p = [0u8; 1500];
    let mut i = 0;
    while i < p.len() {
        p[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    p
};

/// MSS-only option block (what nmap sends): 4 bytes.
const MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];

// ---------------------------------------------------------------------------------------
// sample

struct Timeline {
    frames: Vec<(i64, Vec<u8>)>,
}

impl Timeline {
    /// A packet from an external host (inbound) or from a server (outbound).
    fn tcp4(&mut self, ts: i64, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, tcp: &Tcp, inbound: bool) {
        let id = (self.frames.len() as u16)
            .wrapping_mul(0x2f1)
            .wrapping_add(0x1a00);
        let ip = Ipv4::new(src, dst).ttl(ttl).id(id).tcp(tcp);
        self.push(ts, &ip, inbound);
    }

    fn tcp6(&mut self, ts: i64, src: Ipv6Addr, dst: Ipv6Addr, tcp: &Tcp, inbound: bool) {
        let ip = Ipv6::new(src, dst).tcp(tcp);
        self.push(ts, &ip, inbound);
    }

    fn push(&mut self, ts: i64, ip: &[u8], inbound: bool) {
        let (dst, src) = if inbound {
            (SERVER_MAC, ROUTER_MAC)
        } else {
            (ROUTER_MAC, SERVER_MAC)
        };
        self.frames
            .push((ts, ethernet_with(dst, src, ethertype_of(ip), ip)));
    }
}

/// A DNS query for `www.example.com` A and its answer (10.0.0.5, TTL 300).
fn dns_exchange(id: u16) -> (Vec<u8>, Vec<u8>) {
    let question: &[u8] = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01";
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    q.extend_from_slice(question);
    let mut a = Vec::new();
    a.extend_from_slice(&id.to_be_bytes());
    a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // response, RD RA, one answer
    a.extend_from_slice(question);
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4]);
    a.extend_from_slice(&VICTIM_V4.octets());
    (q, a)
}

/// One HTTP(S) connection of the sample client, as seen at the server: 14 packets.
fn sample_connection(tl: &mut Timeline, i: usize, t: i64) {
    let port = if i % 3 == 1 { 443 } else { 80 };
    let cport = 50_312 + (i as u16) * 7;
    let (c, s) = (SAMPLE_CLIENT, VICTIM_V4);
    let rtt = (18 + i as i64) * MS;
    let cisn = 0x1a2b_0000u32.wrapping_add((i as u32) * 0x0101_0101);
    let sisn = 0x7f00_0000u32.wrapping_add((i as u32) * 0x0303_0303);
    let request: Vec<u8> = if port == 80 {
        format!(
            "GET /page/{i}.html HTTP/1.1\r\nHost: 10.0.0.5\r\nUser-Agent: curl/8.4.0\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes()
    } else {
        PAYLOAD[..517].to_vec() // ClientHello-sized
    };
    let resp_sizes = [1448usize, 1448, 1448, 300 + 37 * i];
    let body_len = resp_sizes.iter().sum::<usize>();
    let mut response = if port == 80 {
        let head = |n: usize| {
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {n:05}\r\n\r\n")
        };
        // The length field is fixed-width, so the header's own length is known.
        head(body_len - head(0).len()).into_bytes()
    } else {
        Vec::new()
    };
    response.extend(PAYLOAD.iter().cycle().take(body_len - response.len()));

    let mut cseq = cisn;
    let mut sseq = sisn;
    tl.tcp4(
        t,
        c,
        s,
        52,
        &Tcp::new(cport, port, SYN).seq(cseq).ack(0).syn_options(),
        true,
    );
    cseq = cseq.wrapping_add(1);
    tl.tcp4(
        t + 50 * US,
        s,
        c,
        64,
        &Tcp::new(port, cport, SYN | ACK)
            .seq(sseq)
            .ack(cseq)
            .window(65160)
            .syn_options(),
        false,
    );
    sseq = sseq.wrapping_add(1);
    let t1 = t + rtt;
    tl.tcp4(
        t1,
        c,
        s,
        52,
        &Tcp::new(cport, port, ACK).seq(cseq).ack(sseq).window(502),
        true,
    );
    tl.tcp4(
        t1 + 30 * US,
        c,
        s,
        52,
        &Tcp::new(cport, port, PSH | ACK)
            .seq(cseq)
            .ack(sseq)
            .window(502)
            .payload(&request),
        true,
    );
    cseq = cseq.wrapping_add(request.len() as u32);
    tl.tcp4(
        t1 + 80 * US,
        s,
        c,
        64,
        &Tcp::new(port, cport, ACK).seq(sseq).ack(cseq).window(509),
        false,
    );
    let t2 = t1 + 2 * MS;
    let mut rest = &response[..];
    for (k, &len) in resp_sizes.iter().enumerate() {
        let flags = if k == resp_sizes.len() - 1 {
            PSH | ACK
        } else {
            ACK
        };
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        let seg = Tcp::new(port, cport, flags)
            .seq(sseq)
            .ack(cseq)
            .window(509)
            .payload(chunk);
        tl.tcp4(t2 + (k as i64) * 20 * US, s, c, 64, &seg, false);
        sseq = sseq.wrapping_add(len as u32);
        if k % 2 == 1 {
            // The client acknowledges every second segment one RTT later.
            let ts = t2 + rtt + (k as i64) * 20 * US;
            tl.tcp4(
                ts,
                c,
                s,
                52,
                &Tcp::new(cport, port, ACK).seq(cseq).ack(sseq).window(501),
                true,
            );
        }
    }
    let t3 = t2 + rtt + 3 * MS;
    tl.tcp4(
        t3,
        c,
        s,
        52,
        &Tcp::new(cport, port, FIN | ACK)
            .seq(cseq)
            .ack(sseq)
            .window(501),
        true,
    );
    cseq = cseq.wrapping_add(1);
    tl.tcp4(
        t3 + 60 * US,
        s,
        c,
        64,
        &Tcp::new(port, cport, FIN | ACK)
            .seq(sseq)
            .ack(cseq)
            .window(509),
        false,
    );
    sseq = sseq.wrapping_add(1);
    tl.tcp4(
        t3 + rtt,
        c,
        s,
        52,
        &Tcp::new(cport, port, ACK).seq(cseq).ack(sseq).window(501),
        true,
    );
}

/// The sample capture as `(timestamp ns, Ethernet frame)` pairs in time order:
/// [`SAMPLE_PACKETS`] packets over about two minutes from [`START_SECS`].
///
/// * [`SAMPLE_CLIENT`] resolves a name twice (UDP to [`SAMPLE_DNS`]) and makes
///   [`SAMPLE_CONNECTIONS`] full connections to [`VICTIM_V4`] ports 80 and 443 (SYN,
///   SYN-ACK, ACK, request, data, FIN exchange), one every ~7.6 s;
/// * [`SAMPLE_SCANNER_V4`] SYN-probes the 20 [`SAMPLE_SCAN_PORTS_V4`] from source port
///   61234 every ~150 ms from T+41 s: closed ports answer RST-ACK, open ones
///   ([`SAMPLE_OPEN_PORTS`]) SYN-ACK, which the scanner resets;
/// * [`SAMPLE_SCANNER_V6`] SYN-probes [`SAMPLE_SYN_PORTS_V6`] then FIN-probes
///   [`SAMPLE_FIN_PORTS_V6`] of [`VICTIM_V6`] from T+83 s (open ports do not answer a
///   FIN, closed ones answer RST-ACK).
pub fn sample_frames() -> Vec<(i64, Vec<u8>)> {
    let t0 = START_SECS * NS;
    let mut tl = Timeline { frames: Vec::new() };

    // DNS lookups (www.example.com A -> 10.0.0.5) before the first and the ninth
    // connection.
    for (k, at) in [(0u16, 100 * MS), (1, 56 * NS + 100 * MS)] {
        let (query, answer) = dns_exchange(0x1a2b + k);
        let q = Ipv4::new(SAMPLE_CLIENT, SAMPLE_DNS)
            .id(0x5100 + k)
            .udp(&Udp::new(41_000 + k, 53).payload(&query));
        let r = Ipv4::new(SAMPLE_DNS, SAMPLE_CLIENT)
            .id(0x6100 + k)
            .udp(&Udp::new(53, 41_000 + k).payload(&answer));
        tl.push(t0 + at, &q, true);
        tl.push(t0 + at + 900 * US, &r, false);
    }

    for i in 0..SAMPLE_CONNECTIONS {
        let t = t0 + 500 * MS + (i as i64) * 7_600 * MS + (i as i64 * 37 % 200) * MS;
        sample_connection(&mut tl, i, t);
    }

    // IPv4 SYN scan.
    let (sc, v) = (SAMPLE_SCANNER_V4, VICTIM_V4);
    let mut t = t0 + 41 * NS + 250 * MS;
    for (k, &port) in SAMPLE_SCAN_PORTS_V4.iter().enumerate() {
        let seq = 0x5ca0_0000u32.wrapping_add((k as u32) * 0x0011_1111);
        let probe = Tcp::new(61_234, port, SYN)
            .seq(seq)
            .ack(0)
            .window(1024)
            .options(&MSS_OPTION);
        tl.tcp4(t, sc, v, 41, &probe, true);
        if SAMPLE_OPEN_PORTS.contains(&port) {
            let sa = Tcp::new(port, 61_234, SYN | ACK)
                .seq(0x3300_0000 + k as u32)
                .ack(seq.wrapping_add(1))
                .window(64240)
                .options(&MSS_OPTION);
            tl.tcp4(t + 300 * US, v, sc, 64, &sa, false);
            let rst = Tcp::new(61_234, port, RST)
                .seq(seq.wrapping_add(1))
                .ack(0)
                .window(0);
            tl.tcp4(t + 600 * US, sc, v, 41, &rst, true);
        } else {
            let ra = Tcp::new(port, 61_234, RST | ACK)
                .seq(0)
                .ack(seq.wrapping_add(1))
                .window(0);
            tl.tcp4(t + 200 * US, v, sc, 64, &ra, false);
        }
        t += 150 * MS + ((k as i64 * 7) % 40) * MS;
    }

    // IPv6 SYN then FIN scan.
    let (sc6, v6) = (SAMPLE_SCANNER_V6, VICTIM_V6);
    let mut t = t0 + 83 * NS;
    let probes = SAMPLE_SYN_PORTS_V6
        .iter()
        .map(|&p| (p, SYN))
        .chain(SAMPLE_FIN_PORTS_V6.iter().map(|&p| (p, FIN)));
    for (k, (port, flags)) in probes.enumerate() {
        let sport = 40_000 + k as u16;
        let seq = 0x6600_0000u32.wrapping_add((k as u32) * 0x0101_0101);
        let probe = Tcp::new(sport, port, flags).seq(seq).ack(0).window(1024);
        tl.tcp6(t, sc6, v6, &probe, true);
        let open = SAMPLE_OPEN_PORTS.contains(&port);
        match (flags == SYN, open) {
            (true, true) => {
                let sa = Tcp::new(port, sport, SYN | ACK)
                    .seq(0x4400_0000 + k as u32)
                    .ack(seq.wrapping_add(1))
                    .window(64800)
                    .options(&MSS_OPTION);
                tl.tcp6(t + 250 * US, v6, sc6, &sa, false);
                let rst = Tcp::new(sport, port, RST)
                    .seq(seq.wrapping_add(1))
                    .ack(0)
                    .window(0);
                tl.tcp6(t + 500 * US, sc6, v6, &rst, true);
            }
            // A FIN to an open port gets no answer.
            (false, true) => {}
            // SYN or FIN to a closed port: RST-ACK acknowledging the probe.
            (_, false) => {
                let ra = Tcp::new(port, sport, RST | ACK)
                    .seq(0)
                    .ack(seq.wrapping_add(1))
                    .window(0);
                tl.tcp6(t + 200 * US, v6, sc6, &ra, false);
            }
        }
        t += 400 * MS;
    }

    tl.frames.sort_by_key(|f| f.0);
    tl.frames
}

/// Writes [`sample_frames`] as a classic pcap (Ethernet, microseconds).
pub fn write_sample<W: Write>(w: W) -> io::Result<GenStats> {
    let mut pw = PcapWriter::new(w, LINKTYPE_ETHERNET, false)?;
    let frames = sample_frames();
    let mut syns = 0;
    for (ts, f) in &frames {
        // Ethernet(14) + IPv4(20) TCP flags at 14+20+13, IPv6 at 14+40+13.
        let flags_at = if f[12..14] == ETHERTYPE_IPV6.to_be_bytes() {
            67
        } else {
            47
        };
        let is_tcp = f[12..14] == ETHERTYPE_IPV6.to_be_bytes() || f[23] == IPPROTO_TCP;
        if is_tcp && f[flags_at] & (SYN | ACK) == SYN {
            syns += 1;
        }
        pw.write_packet(*ts, f)?;
    }
    let (packets, bytes) = (pw.packets(), pw.bytes());
    pw.finish()?;
    Ok(GenStats {
        packets,
        bytes,
        syns,
        sources: 3, // the client and both scanners
        scanners: vec![SAMPLE_SCANNER_V4.into(), SAMPLE_SCANNER_V6.into()],
    })
}

// ---------------------------------------------------------------------------------------
// bench

/// Settings of [`write_bench`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// Total packets (default 3,000,000).
    pub packets: u64,
    /// Distinct IPv4 sources sending SYNs, scanners included (default 50,000).
    pub sources: u32,
    /// Sources that scan (default 300).
    pub scanners: u32,
    /// Distinct ports each scanner probes (default 500).
    pub ports_per_scanner: u32,
    /// PRNG seed (default 1).
    pub seed: u64,
    /// Seconds the capture spans (default [`BENCH_DURATION_SECS`]); 60 puts every attempt
    /// inside one scan window.
    pub duration_secs: u32,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            packets: 3_000_000,
            sources: 50_000,
            scanners: 300,
            ports_per_scanner: 500,
            seed: 1,
            duration_secs: BENCH_DURATION_SECS as u32,
        }
    }
}

/// Default length of the bench capture: 10 minutes.
pub const BENCH_DURATION_SECS: i64 = 600;

/// The numbers [`write_bench`] actually uses for a configuration: when the SYN budget
/// (20% of the packets) is too small for the requested scanners, fewer scanners and/or
/// ports per scanner are used (scanners get at most half of the SYNs and each probes at
/// least 100 ports when it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchPlan {
    /// SYN packets, retransmissions included.
    pub syns: u64,
    /// Established data segments.
    pub data: u64,
    /// Scanning sources.
    pub scanners: u32,
    /// Distinct ports per scanner.
    pub ports_per_scanner: u32,
    /// Ordinary (non-scanning) SYN sources.
    pub normal_sources: u32,
}

impl BenchConfig {
    /// The effective plan for this configuration.
    pub fn plan(&self) -> BenchPlan {
        let syns = self.packets / 5;
        let half = syns / 2;
        // distinct_v4 has 2^28 addresses; keep room for the data-only clients.
        let sources = self.sources.min(1 << 27);
        let want_k = u64::from(self.scanners.min(sources));
        let want_p = u64::from(self.ports_per_scanner.clamp(1, 65_535));
        let (k, p) = if want_k == 0 || half == 0 {
            (0, 0)
        } else if want_k * want_p <= half {
            (want_k, want_p)
        } else if half / want_k >= 100 {
            (want_k, half / want_k)
        } else {
            let k = (half / 100).clamp(1, want_k);
            (k, (half / k).clamp(1, want_p))
        };
        // Scanner probes plus ~3% retransmissions.
        let scan_syns = k * p + k * p * 3 / 100;
        let normal_budget = syns.saturating_sub(scan_syns);
        let normal_sources = (u64::from(sources) - k).min(normal_budget);
        BenchPlan {
            syns,
            data: self.packets - syns,
            scanners: k as u32,
            ports_per_scanner: p as u32,
            normal_sources: normal_sources as u32,
        }
    }
}

/// One scheduled SYN of the bench capture.
#[derive(Debug, Clone, Copy)]
struct SynEv {
    /// Nanoseconds from the start.
    t: u64,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    seq: u32,
    /// Full SYN options (ordinary client) or MSS only (scanner).
    full_opts: bool,
}

/// A long-lived established connection that data segments are drawn from.
#[derive(Debug, Clone, Copy)]
struct Flow {
    client: u32,
    server: u32,
    cport: u16,
    sport: u16,
    cseq: u32,
    sseq: u32,
}

fn victim_host(rng: &mut XorShift64) -> u32 {
    // 10.0.0.1 ..= 10.0.0.254, with a third of the traffic to 10.0.0.5.
    if rng.chance(1, 3) {
        u32::from(VICTIM_V4)
    } else {
        (10 << 24) | (1 + rng.below(254) as u32)
    }
}

fn service_port(rng: &mut XorShift64) -> u16 {
    match rng.below(20) {
        0..=9 => 443,
        10..=16 => 80,
        _ => 22,
    }
}

/// Writes the throughput benchmark capture: `cfg.packets` Ethernet packets over
/// `cfg.duration_secs` from [`START_SECS`], mostly established TCP data (ACK set,
/// 0–128 byte payloads, tens of thousands of 4-tuples, to and from 10.0.0.0/24 servers
/// on 443/80/22) and about 20% SYNs ([`BenchConfig::plan`]):
///
/// * `scanners` sources (in 16.0.0.0/4, see [`distinct_v4`]) each probe
///   `ports_per_scanner` distinct ports of one host (two thirds of them 10.0.0.5), at a
///   steady rate between 5,000 and 2 probes per second, with a fixed or random source
///   port, ~3% of probes retransmitted 1 s later;
/// * the other sources open connections to 443/80/22 of 10.0.0.0/24 hosts (a third
///   to 10.0.0.5) with random ephemeral ports; ~5% of those SYNs are retransmitted after
///   1 s, a third of those again after 3 s.
///
/// The returned [`GenStats::scanners`] lists the scanning addresses.
pub fn write_bench<W: Write>(w: W, cfg: &BenchConfig) -> io::Result<GenStats> {
    let plan = cfg.plan();
    let mut rng = XorShift64::new(cfg.seed);
    let key = rng.next_u32();
    let dur = (i64::from(cfg.duration_secs.max(1)) * NS) as u64;
    let k = plan.scanners;
    let p = plan.ports_per_scanner;

    let mut syns: Vec<SynEv> = Vec::with_capacity(plan.syns as usize + 16);
    let mut scanners = Vec::with_capacity(k as usize);

    // Scanners.
    let mut ports: Vec<u16> = (1..=65_535).collect();
    for i in 0..k {
        let src = distinct_v4(i, key);
        scanners.push(IpAddr::V4(src));
        let dst = if rng.chance(2, 3) {
            u32::from(VICTIM_V4)
        } else {
            victim_host(&mut rng)
        };
        // Probe spacing log-uniform in [200 us, 500 ms].
        let mut spacing = (200_000.0 * 2500f64.powf(rng.unit_f64())) as u64;
        if spacing * u64::from(p) >= dur {
            spacing = dur / (u64::from(p) + 1);
        }
        let window = spacing * u64::from(p);
        let start = rng.below(dur - window);
        let fixed_sport = if rng.chance(1, 2) {
            Some(rng.range_u16(1024, 65_535))
        } else {
            None
        };
        let sequential = rng.chance(1, 3);
        let base = rng.range_u16(1, 65_535 - p as u16 + 1);
        for j in 0..p as usize {
            let dport = if sequential {
                base + j as u16
            } else {
                // Partial Fisher-Yates over the shared permutation: distinct ports.
                let r = j + rng.below((ports.len() - j) as u64) as usize;
                ports.swap(j, r);
                ports[j]
            };
            let sport = fixed_sport.unwrap_or_else(|| rng.range_u16(1024, 65_535));
            let t = start + spacing * j as u64 + rng.below(spacing / 4 + 1);
            let ev = SynEv {
                t,
                src: u32::from(src),
                dst,
                sport,
                dport,
                seq: rng.next_u32(),
                full_opts: false,
            };
            syns.push(ev);
            if rng.chance(3, 100) && t + NS as u64 <= dur {
                syns.push(SynEv {
                    t: t + NS as u64,
                    ..ev
                });
            }
        }
    }

    // Ordinary sources: every one connects at least once (budget allowing), the rest
    // of the budget goes to a skewed choice of sources.
    let budget = plan.syns as usize;
    let n = u64::from(plan.normal_sources);
    let mut j = 0u64;
    while syns.len() < budget && n > 0 {
        let idx = if j < n {
            j
        } else {
            // Skewed towards low indices: a few sources are busy, most are quiet.
            (rng.below(n) * rng.below(n)) / n
        };
        j += 1;
        let src = u32::from(distinct_v4(k + idx as u32, key));
        let t = rng.below(dur);
        let ev = SynEv {
            t,
            src,
            dst: victim_host(&mut rng),
            sport: rng.range_u16(32_768, 60_999),
            dport: service_port(&mut rng),
            seq: rng.next_u32(),
            full_opts: true,
        };
        syns.push(ev);
        if rng.chance(5, 100) {
            for (delay, more) in [(NS as u64, true), (3 * NS as u64, rng.chance(1, 3))] {
                if more && syns.len() < budget && t + delay < dur {
                    syns.push(SynEv { t: t + delay, ..ev });
                } else {
                    break;
                }
            }
        }
    }
    syns.truncate(budget);
    syns.sort_by_key(|e| e.t);
    let sources = u64::from(k) + n.min(j);

    // Established flows, refreshed now and then.
    let nflows = (plan.data / 40).clamp(1, 40_000) as usize;
    let new_flow = |rng: &mut XorShift64| {
        let client = if n > 0 && rng.chance(1, 2) {
            u32::from(distinct_v4(k + rng.below(n) as u32, key))
        } else {
            u32::from(distinct_v4(k + n as u32 + rng.below(1 << 20) as u32, key))
        };
        Flow {
            client,
            server: victim_host(rng),
            cport: rng.range_u16(32_768, 60_999),
            sport: service_port(rng),
            cseq: rng.next_u32(),
            sseq: rng.next_u32(),
        }
    };
    let mut flows: Vec<Flow> = (0..nflows).map(|_| new_flow(&mut rng)).collect();

    let mut pw = PcapWriter::new(w, LINKTYPE_ETHERNET, false)?;
    let t0 = START_SECS * NS;
    let mut buf = Vec::with_capacity(256);
    let mut si = 0usize;
    let mut di = 0u64;
    let mut ip_id = 0u16;
    let data_total = plan.data;
    while si < syns.len() || di < data_total {
        let td = if di < data_total {
            (u128::from(di) * u128::from(dur) / u128::from(data_total)) as u64
        } else {
            u64::MAX
        };
        buf.clear();
        ip_id = ip_id.wrapping_add(1);
        let ts;
        if si < syns.len() && syns[si].t <= td {
            let e = syns[si];
            si += 1;
            ts = e.t;
            let (options, window, ttl): (&[u8], u16, u8) = if e.full_opts {
                (&SYN_OPTIONS, 64_240, 50)
            } else {
                (&MSS_OPTION, 1024, 40)
            };
            let seg = Seg {
                sport: e.sport,
                dport: e.dport,
                seq: e.seq,
                ack: 0,
                flags: SYN,
                window,
                options,
                payload: &[],
            };
            put_eth_v4_tcp(
                &mut buf,
                (SERVER_MAC, ROUTER_MAC),
                e.src.into(),
                e.dst.into(),
                ttl,
                ip_id,
                &seg,
            );
        } else {
            di += 1;
            ts = td;
            let fi = rng.below(nflows as u64) as usize;
            if rng.chance(1, 2000) {
                flows[fi] = new_flow(&mut rng);
            }
            let f = &mut flows[fi];
            let plen = if rng.chance(2, 5) {
                0
            } else {
                1 + rng.below(128) as usize
            };
            let payload = &PAYLOAD[..plen];
            let flags = if plen > 0 && rng.chance(1, 2) {
                PSH | ACK
            } else {
                ACK
            };
            if rng.chance(2, 5) {
                let seg = Seg {
                    sport: f.cport,
                    dport: f.sport,
                    seq: f.cseq,
                    ack: f.sseq,
                    flags,
                    window: 501,
                    options: &[],
                    payload,
                };
                f.cseq = f.cseq.wrapping_add(plen as u32);
                let (src, dst) = (f.client.into(), f.server.into());
                put_eth_v4_tcp(
                    &mut buf,
                    (SERVER_MAC, ROUTER_MAC),
                    src,
                    dst,
                    52,
                    ip_id,
                    &seg,
                );
            } else {
                let seg = Seg {
                    sport: f.sport,
                    dport: f.cport,
                    seq: f.sseq,
                    ack: f.cseq,
                    flags,
                    window: 509,
                    options: &[],
                    payload,
                };
                f.sseq = f.sseq.wrapping_add(plen as u32);
                let (src, dst) = (f.server.into(), f.client.into());
                put_eth_v4_tcp(
                    &mut buf,
                    (ROUTER_MAC, SERVER_MAC),
                    src,
                    dst,
                    64,
                    ip_id,
                    &seg,
                );
            }
        }
        pw.write_packet(t0 + ts as i64, &buf)?;
    }
    let (packets, bytes) = (pw.packets(), pw.bytes());
    pw.finish()?;
    Ok(GenStats {
        packets,
        bytes,
        syns: syns.len() as u64,
        sources,
        scanners,
    })
}

// ---------------------------------------------------------------------------------------
// spoofed

/// Settings of [`write_spoofed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoofedConfig {
    /// Distinct sources, one SYN each (default 10,000,000).
    pub sources: u64,
    /// Alternate IPv4 and IPv6 sources (IPv6 to [`VICTIM_V6`]).
    pub v6: bool,
    /// PRNG seed (default 1).
    pub seed: u64,
}

impl Default for SpoofedConfig {
    fn default() -> Self {
        Self {
            sources: 10_000_000,
            v6: false,
            seed: 1,
        }
    }
}

/// Writes one SYN from each of `cfg.sources` distinct spoofed sources to a random port
/// of [`VICTIM_V4`] (and, with `v6`, every second packet from a distinct IPv6 source to
/// [`VICTIM_V6`]), 1 µs apart from [`START_SECS`]. IPv4 packets are the minimum 54
/// bytes (Ethernet + IPv4 + TCP without options), IPv6 ones 74. Streams: memory use is
/// constant. Fails with `InvalidInput` past 2^28 IPv4 sources.
pub fn write_spoofed<W: Write>(w: W, cfg: &SpoofedConfig) -> io::Result<GenStats> {
    let v4_count = if cfg.v6 {
        cfg.sources.div_ceil(2)
    } else {
        cfg.sources
    };
    if v4_count > 1 << 28 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most 2^28 distinct IPv4 sources, asked for {v4_count}"),
        ));
    }
    let mut rng = XorShift64::new(cfg.seed);
    let key4 = rng.next_u32();
    let key6 = rng.next_u64();
    let mut pw = PcapWriter::new(w, LINKTYPE_ETHERNET, false)?;
    let t0 = START_SECS * NS;
    let mut buf = Vec::with_capacity(128);
    let (mut n4, mut n6) = (0u32, 0u64);
    for i in 0..cfg.sources {
        buf.clear();
        let r = rng.next_u64();
        let seg = Seg {
            sport: 1024 + (r as u16) % 64_512,
            dport: 1 + ((r >> 16) as u16) % 65_535,
            seq: (r >> 32) as u32,
            ack: 0,
            flags: SYN,
            window: 512 + ((r >> 8) as u16 & 0x3fff),
            options: &[],
            payload: &[],
        };
        if cfg.v6 && i % 2 == 1 {
            let src = distinct_v6(n6, key6);
            n6 += 1;
            put_eth_v6_tcp(&mut buf, (SERVER_MAC, ROUTER_MAC), src, VICTIM_V6, &seg);
        } else {
            let src = distinct_v4(n4, key4);
            n4 += 1;
            let ttl = 32 + (r >> 40) as u8 % 200;
            put_eth_v4_tcp(
                &mut buf,
                (SERVER_MAC, ROUTER_MAC),
                src,
                VICTIM_V4,
                ttl,
                r as u16,
                &seg,
            );
        }
        pw.write_packet(t0 + (i as i64) * US, &buf)?;
    }
    let (packets, bytes) = (pw.packets(), pw.bytes());
    pw.finish()?;
    Ok(GenStats {
        packets,
        bytes,
        syns: packets,
        sources: cfg.sources,
        scanners: Vec::new(),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on parse errors")]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use std::collections::{HashMap, HashSet};

    /// Reads back a classic LE micro pcap written by this crate: (ts_us, frame) pairs.
    fn records(file: &[u8]) -> Vec<(u64, &[u8])> {
        assert_eq!(&file[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(file[20..24].try_into().unwrap()), 1);
        let mut out = Vec::new();
        let mut b = &file[24..];
        while !b.is_empty() {
            let rd = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            let (s, us, incl, orig) = (rd(0), rd(4), rd(8) as usize, rd(12) as usize);
            assert_eq!(incl, orig);
            assert!(us < 1_000_000);
            out.push((u64::from(s) * 1_000_000 + u64::from(us), &b[16..16 + incl]));
            b = &b[16 + incl..];
        }
        out
    }

    #[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
    struct Facts {
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        flags: u8,
    }

    fn facts(frame: &[u8]) -> Option<Facts> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let (src, dst): (IpAddr, IpAddr) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                assert!(crate::packet::ipv4_header_checksum_ok(h.slice()));
                (h.source_addr().into(), h.destination_addr().into())
            }
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            other => panic!("{other:?}"),
        };
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                let want = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap()
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap()
                    }
                    _ => unreachable!(),
                };
                assert_eq!(t.checksum(), want, "TCP checksum");
                Some(Facts {
                    src,
                    dst,
                    sport: t.source_port(),
                    dport: t.destination_port(),
                    flags: t.slice()[13],
                })
            }
            Some(TransportSlice::Udp(_)) => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prng_is_deterministic_and_spread() {
        let mut a = XorShift64::new(7);
        let mut b = XorShift64::new(7);
        let va: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(XorShift64::new(8).next_u64(), va[0]);
        let mut r = XorShift64::new(0);
        let mut hist = [0u32; 10];
        for _ in 0..100_000 {
            hist[r.below(10) as usize] += 1;
        }
        assert!(
            hist.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{hist:?}"
        );
        assert!((0..1000).all(|_| (5..=9).contains(&r.range_u16(5, 9))));
    }

    #[test]
    fn distinct_addresses_are_distinct() {
        let set: HashSet<Ipv4Addr> = (0..200_000).map(|i| distinct_v4(i, 0xdead_beef)).collect();
        assert_eq!(set.len(), 200_000);
        assert!(set.iter().all(|a| a.octets()[0] >> 4 == 1));
        let set6: HashSet<Ipv6Addr> = (0..10_000).map(|i| distinct_v6(i, 3)).collect();
        assert_eq!(set6.len(), 10_000);
    }

    #[test]
    fn fast_encoders_match_builders() {
        let (s, d) = (Ipv4Addr::new(16, 1, 2, 3), VICTIM_V4);
        for (opts, payload, flags) in [
            (&SYN_OPTIONS[..], &[][..], SYN),
            (&MSS_OPTION[..], &[][..], SYN),
            (&[][..], &PAYLOAD[..77], PSH | ACK),
            (&[][..], &PAYLOAD[..1], ACK),
        ] {
            let seg = Seg {
                sport: 4444,
                dport: 443,
                seq: 0xdead_beef,
                ack: 77,
                flags,
                window: 1234,
                options: opts,
                payload,
            };
            let mut fast = Vec::new();
            put_eth_v4_tcp(&mut fast, (SERVER_MAC, ROUTER_MAC), s, d, 50, 999, &seg);
            let tcp = Tcp::new(4444, 443, flags)
                .seq(0xdead_beef)
                .ack(77)
                .window(1234)
                .options(opts)
                .payload(payload);
            let slow = ethernet_with(
                SERVER_MAC,
                ROUTER_MAC,
                ETHERTYPE_IPV4,
                &Ipv4::new(s, d).ttl(50).id(999).tcp(&tcp),
            );
            assert_eq!(fast, slow);

            let (s6, d6) = (distinct_v6(5, 5), VICTIM_V6);
            let mut fast = Vec::new();
            put_eth_v6_tcp(&mut fast, (SERVER_MAC, ROUTER_MAC), s6, d6, &seg);
            let slow6 = Ipv6::new(s6, d6).tcp(&tcp);
            assert_eq!(
                fast,
                ethernet_with(SERVER_MAC, ROUTER_MAC, ETHERTYPE_IPV6, &slow6)
            );
        }
    }

    #[test]
    fn sample_content() {
        let frames = sample_frames();
        assert_eq!(frames.len(), SAMPLE_PACKETS);
        assert!(frames.windows(2).all(|w| w[0].0 <= w[1].0), "time ordered");
        let first = frames[0].0;
        let last = frames[frames.len() - 1].0;
        assert!(first >= START_SECS * NS);
        assert!(
            (100 * NS..130 * NS).contains(&(last - START_SECS * NS)),
            "about two minutes"
        );
        assert_eq!(frames, sample_frames(), "deterministic");

        let all: Vec<Facts> = frames.iter().filter_map(|(_, f)| facts(f)).collect();
        assert_eq!(
            all.len(),
            SAMPLE_PACKETS - 4,
            "all but the DNS packets are TCP"
        );
        let syn_ports = |src: IpAddr, flags: u8| -> HashSet<u16> {
            all.iter()
                .filter(|f| f.src == src && f.flags == flags)
                .map(|f| f.dport)
                .collect()
        };
        let v4 = IpAddr::V4(SAMPLE_SCANNER_V4);
        assert_eq!(
            syn_ports(v4, SYN),
            SAMPLE_SCAN_PORTS_V4.iter().copied().collect()
        );
        assert_eq!(syn_ports(v4, RST).len(), 3);
        let answers: HashMap<u16, u8> = all
            .iter()
            .filter(|f| f.dst == v4)
            .map(|f| (f.sport, f.flags))
            .collect();
        for p in SAMPLE_SCAN_PORTS_V4 {
            let want = if SAMPLE_OPEN_PORTS.contains(&p) {
                SYN | ACK
            } else {
                RST | ACK
            };
            assert_eq!(answers[&p], want, "answer from port {p}");
        }
        let v6 = IpAddr::V6(SAMPLE_SCANNER_V6);
        assert_eq!(
            syn_ports(v6, SYN),
            SAMPLE_SYN_PORTS_V6.iter().copied().collect()
        );
        assert_eq!(
            syn_ports(v6, FIN),
            SAMPLE_FIN_PORTS_V6.iter().copied().collect()
        );
        let client = IpAddr::V4(SAMPLE_CLIENT);
        let client_syns: Vec<&Facts> = all
            .iter()
            .filter(|f| f.src == client && f.flags == SYN)
            .collect();
        assert_eq!(client_syns.len(), SAMPLE_CONNECTIONS);
        assert!(client_syns.iter().all(|f| f.dport == 80 || f.dport == 443));
        assert_eq!(
            all.iter()
                .filter(|f| f.src == client && f.flags & FIN != 0)
                .count(),
            SAMPLE_CONNECTIONS
        );

        let mut out = Vec::new();
        let st = write_sample(&mut out).unwrap();
        assert_eq!(st.packets as usize, SAMPLE_PACKETS);
        assert_eq!(st.bytes as usize, out.len());
        assert_eq!(st.syns as usize, SAMPLE_CONNECTIONS + 20 + 3);
        assert_eq!(st.sources, 3);
        assert_eq!(st.scanners.len(), 2);
        let recs = records(&out);
        assert_eq!(recs.len(), SAMPLE_PACKETS);
        assert_eq!(recs[0].0 / 1_000_000, START_SECS as u64);
        assert_eq!(recs[0].1, &frames[0].1[..]);
    }

    #[test]
    fn bench_small() {
        let cfg = BenchConfig {
            packets: 200_000,
            sources: 5_000,
            scanners: 30,
            ports_per_scanner: 300,
            seed: 42,
            ..BenchConfig::default()
        };
        let plan = cfg.plan();
        assert_eq!(plan.syns, 40_000);
        assert_eq!((plan.scanners, plan.ports_per_scanner), (30, 300));
        let mut out = Vec::new();
        let st = write_bench(&mut out, &cfg).unwrap();
        assert_eq!(st.packets, 200_000);
        assert_eq!(st.bytes as usize, out.len());
        assert_eq!(st.syns, 40_000);
        assert_eq!(st.scanners.len(), 30);
        assert_eq!(st.sources, 5_000);

        let recs = records(&out);
        assert_eq!(recs.len(), 200_000);
        assert!(
            recs.windows(2).all(|w| w[0].0 <= w[1].0),
            "timestamps never go back"
        );
        let span = recs[recs.len() - 1].0 - recs[0].0;
        assert!(span > 590_000_000 && span <= 600_000_000, "span {span} us");

        let mut syns = 0;
        let mut ports_by_src: HashMap<IpAddr, HashSet<(IpAddr, u16)>> = HashMap::new();
        let mut syn_tuples: HashMap<(IpAddr, u16, IpAddr, u16), u32> = HashMap::new();
        let mut data_tuples = HashSet::new();
        for (_, f) in &recs {
            let x = facts(f).unwrap();
            if x.flags == SYN {
                syns += 1;
                ports_by_src
                    .entry(x.src)
                    .or_default()
                    .insert((x.dst, x.dport));
                *syn_tuples
                    .entry((x.src, x.sport, x.dst, x.dport))
                    .or_default() += 1;
            } else {
                assert!(x.flags & ACK != 0 && x.flags & (SYN | FIN | RST) == 0);
                data_tuples.insert((x.src, x.sport, x.dst, x.dport));
            }
        }
        assert_eq!(syns, 40_000);
        assert_eq!(ports_by_src.len(), 5_000);
        for s in &st.scanners {
            assert_eq!(ports_by_src[s].len(), 300, "scanner {s}");
        }
        let scanner_set: HashSet<&IpAddr> = st.scanners.iter().collect();
        let max_normal = ports_by_src
            .iter()
            .filter(|(s, _)| !scanner_set.contains(s))
            .map(|(_, p)| {
                p.iter()
                    .map(|(_, port)| *port)
                    .collect::<HashSet<_>>()
                    .len()
            })
            .max()
            .unwrap();
        assert!(max_normal <= 3, "ordinary sources only use 80/443/22");
        let retrans = syn_tuples.values().filter(|&&c| c > 1).count();
        assert!(retrans > 200, "some SYN retransmissions ({retrans})");
        assert!(
            data_tuples.len() > 5_000,
            "varied 4-tuples ({})",
            data_tuples.len()
        );

        // Deterministic from the seed, different for another seed.
        let mut again = Vec::new();
        write_bench(&mut again, &cfg).unwrap();
        assert!(again == out);
        let mut other = Vec::new();
        write_bench(&mut other, &BenchConfig { seed: 43, ..cfg }).unwrap();
        assert!(other != out);
    }

    #[test]
    fn bench_plan_scales_down() {
        let p = BenchConfig {
            packets: 10_000,
            ..BenchConfig::default()
        }
        .plan();
        assert_eq!(p.syns, 2_000);
        assert_eq!((p.scanners, p.ports_per_scanner), (10, 100));
        let p = BenchConfig::default().plan();
        assert_eq!(
            (p.syns, p.data, p.scanners, p.ports_per_scanner),
            (600_000, 2_400_000, 300, 500)
        );
        assert_eq!(p.normal_sources, 49_700);
        let p = BenchConfig {
            packets: 3,
            ..BenchConfig::default()
        }
        .plan();
        assert_eq!((p.syns, p.scanners), (0, 0));
        let mut out = Vec::new();
        let st = write_bench(
            &mut out,
            &BenchConfig {
                packets: 3,
                ..BenchConfig::default()
            },
        )
        .unwrap();
        assert_eq!(st.packets, 3);
        let st = write_bench(
            &mut Vec::new(),
            &BenchConfig {
                packets: 1_000,
                ..BenchConfig::default()
            },
        )
        .unwrap();
        assert_eq!((st.packets, st.syns), (1_000, 200));
        assert_eq!(st.scanners.len(), 1);
    }

    #[test]
    fn spoofed_small() {
        for v6 in [false, true] {
            let cfg = SpoofedConfig {
                sources: 5_001,
                v6,
                seed: 9,
            };
            let mut out = Vec::new();
            let st = write_spoofed(&mut out, &cfg).unwrap();
            assert_eq!(st.packets, 5_001);
            let recs = records(&out);
            let mut srcs = HashSet::new();
            for (i, (ts, f)) in recs.iter().enumerate() {
                assert_eq!(*ts, START_SECS as u64 * 1_000_000 + i as u64);
                let x = facts(f).unwrap();
                assert_eq!(x.flags, SYN);
                assert!(x.dport != 0);
                let want_v6 = v6 && i % 2 == 1;
                assert_eq!(
                    x.dst,
                    if want_v6 {
                        IpAddr::V6(VICTIM_V6)
                    } else {
                        IpAddr::V4(VICTIM_V4)
                    }
                );
                assert_eq!(f.len(), if want_v6 { 74 } else { 54 });
                srcs.insert(x.src);
            }
            assert_eq!(srcs.len(), 5_001);
            if !v6 {
                assert_eq!(out.len(), 24 + 5_001 * (16 + 54));
            }
        }
        let too_many = SpoofedConfig {
            sources: (1 << 28) + 1,
            ..SpoofedConfig::default()
        };
        assert!(write_spoofed(Vec::new(), &too_many).is_err());
    }
}

/// What [`write_fragment_flood`] writes.
#[derive(Debug, Clone)]
pub struct FragmentFloodConfig {
    /// Incomplete first fragments, each from its own spoofed source (default 1,000,000).
    pub fragments: u64,
    /// PRNG seed (default 1).
    pub seed: u64,
}

impl Default for FragmentFloodConfig {
    fn default() -> Self {
        Self {
            fragments: 1_000_000,
            seed: 1,
        }
    }
}

/// The `nmap -f` scanner hidden in [`write_fragment_flood`]: every SYN it sends is cut
/// into 8-byte fragments.
pub const FRAGMENTING_SCANNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// The ordinary (unfragmented) SYN scanner in [`write_fragment_flood`].
pub const PLAIN_SCANNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);

/// Writes a flood of incomplete IPv4 fragments at [`VICTIM_V4`], 1 µs apart from
/// [`START_SECS`]: `cfg.fragments` first fragments (offset 0, more to follow, 8 bytes of a
/// SYN's TCP header: the flags never arrive), each from a distinct spoofed source and IP
/// id, none ever completed. Spread evenly through the flood, two scanners probe 20 ports
/// each: [`FRAGMENTING_SCANNER`] as `nmap -sS -f` does (each SYN in three fragments sent
/// back to back, the last first), [`PLAIN_SCANNER`] with whole SYNs. Streams: memory use
/// is constant. The state-exhaustion input for fragment reassembly: both scanners must
/// still be found.
pub fn write_fragment_flood<W: Write>(w: W, cfg: &FragmentFloodConfig) -> io::Result<GenStats> {
    const PORTS: u64 = 20;
    if cfg.fragments >= 1 << 28 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most 2^28 spoofed sources, asked for {}", cfg.fragments),
        ));
    }
    let mut rng = XorShift64::new(cfg.seed);
    let key = rng.next_u32();
    let mut pw = PcapWriter::new(w, LINKTYPE_ETHERNET, false)?;
    let t0 = START_SECS * NS;
    let every = (cfg.fragments / PORTS).max(1);
    let mut at = t0;
    let mut write = |pw: &mut PcapWriter<W>, ip: &[u8]| -> io::Result<()> {
        let frame = ethernet_with(SERVER_MAC, ROUTER_MAC, ETHERTYPE_IPV4, ip);
        at += US;
        pw.write_packet(at, &frame)
    };
    let mut syns = 0;
    for i in 0..cfg.fragments {
        let r = rng.next_u64();
        let src = distinct_v4(u32::try_from(i).unwrap_or(0), key);
        let syn = Tcp::new(
            1024 + (r as u16) % 64_512,
            1 + ((r >> 16) as u16) % 65_535,
            SYN,
        )
        .segment_v4(src, VICTIM_V4);
        let first = Ipv4::new(src, VICTIM_V4)
            .id((r >> 32) as u16)
            .fragment(0, true)
            .encode(IPPROTO_TCP, &syn[..8]);
        write(&mut pw, &first)?;
        if i % every == every / 2 && i / every < PORTS {
            let port = 1000 + (i / every) as u16;
            let scan = Tcp::new(40_000, port, SYN).segment_v4(FRAGMENTING_SCANNER, VICTIM_V4);
            let mut pieces = Ipv4::new(FRAGMENTING_SCANNER, VICTIM_V4)
                .id(port)
                .fragments(IPPROTO_TCP, &scan, 8);
            pieces.rotate_right(1);
            for piece in &pieces {
                write(&mut pw, piece)?;
            }
            let plain = Ipv4::new(PLAIN_SCANNER, VICTIM_V4).tcp(&Tcp::new(40_000, port, SYN));
            write(&mut pw, &plain)?;
            syns += 2;
        }
    }
    let (packets, bytes) = (pw.packets(), pw.bytes());
    pw.finish()?;
    Ok(GenStats {
        packets,
        bytes,
        syns,
        sources: cfg.fragments + 2,
        scanners: vec![IpAddr::V4(FRAGMENTING_SCANNER), IpAddr::V4(PLAIN_SCANNER)],
    })
}
