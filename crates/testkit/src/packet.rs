//! Packet builders: IPv4/IPv6 packets carrying TCP or UDP, and the link-layer framings
//! synwatch reads (Ethernet with VLAN stacks, Linux cooked SLL/SLL2, BSD loopback).
//!
//! Everything is written by hand into `Vec<u8>` so that the exact bytes are under the
//! test's control. Checksums are real: the IPv4 header checksum and the TCP/UDP checksum
//! (over the pseudo-header) are computed for every packet, so captures built here pass
//! `tcpdump -vv` checksum verification.
//!
//! Three levels of control:
//!
//! * one-line helpers for the common case: [`tcp_v4`], [`tcp_v4_opts`], [`tcp_v6`],
//!   [`tcp_v6_opts`], [`udp_v4`], [`udp_v6`], [`tcp_ip`];
//! * the [`Tcp`] / [`Udp`] segment builders (sequence numbers, window, options, payload)
//!   combined with the [`Ipv4`] builder (TTL, id, options, fragments) or the [`Ipv6`]
//!   builder (extension headers, fragment header);
//! * link framings that wrap any IP packet: [`ethernet`], [`ethernet_vlan`], [`sll`],
//!   [`sll2`], [`null_loopback`], [`loop_loopback`] and their `_with`/`_af` variants.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag FIN.
pub const FIN: u8 = 0x01;
/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag RST.
pub const RST: u8 = 0x04;
/// TCP flag PSH.
pub const PSH: u8 = 0x08;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;
/// TCP flag URG.
pub const URG: u8 = 0x20;
/// TCP flag ECE.
pub const ECE: u8 = 0x40;
/// TCP flag CWR.
pub const CWR: u8 = 0x80;

/// IP protocol number of IPv6 hop-by-hop options.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of the IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IP protocol number of the IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IP protocol number of the IPv6 authentication header.
pub const IPPROTO_AH: u8 = 51;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number "no next header" (IPv6).
pub const IPPROTO_NONE: u8 = 59;
/// IP protocol number of IPv6 destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q VLAN tag (the inner tag of a QinQ stack).
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad service tag (the outer tag of a QinQ stack).
pub const TPID_8021AD: u16 = 0x88a8;

/// BSD loopback address family of IPv4 (every BSD, macOS and Linux agree).
pub const AF_INET: u32 = 2;
/// IPv6 address family value on Linux.
pub const AF_INET6_LINUX: u32 = 10;
/// IPv6 address family value on NetBSD and OpenBSD (and so in `LINKTYPE_LOOP`).
pub const AF_INET6_BSD: u32 = 24;
/// IPv6 address family value on FreeBSD and DragonFly.
pub const AF_INET6_FREEBSD: u32 = 28;
/// IPv6 address family value on macOS/Darwin.
pub const AF_INET6_DARWIN: u32 = 30;

/// Default source MAC address of [`ethernet`] (locally administered).
pub const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Default destination MAC address of [`ethernet`] (locally administered).
pub const MAC_DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// TCP options of a typical Linux SYN, 20 bytes: MSS 1460, SACK permitted,
/// timestamps (TSval 1, TSecr 0), NOP, window scale 7. With them the TCP header is
/// 40 bytes (data offset 10).
pub const SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, // MSS 1460
    4, 2, // SACK permitted
    8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
    1, // NOP
    3, 3, 7, // window scale 7
];

/// IPv4 Router Alert option (RFC 2113), 4 bytes: makes IHL 6.
pub const IPV4_OPT_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// Internet checksum accumulator (RFC 1071) that accepts data in pieces of any length.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checksum {
    sum: u64,
    odd: Option<u8>,
}

impl Checksum {
    /// An empty sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes, continuing an odd byte left over from the previous piece.
    pub fn add(&mut self, mut data: &[u8]) -> &mut Self {
        if let Some(hi) = self.odd.take() {
            match data.split_first() {
                Some((&lo, rest)) => {
                    self.sum += u64::from(u16::from_be_bytes([hi, lo]));
                    data = rest;
                }
                None => {
                    self.odd = Some(hi);
                    return self;
                }
            }
        }
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            self.sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            self.odd = Some(*b);
        }
        self
    }

    /// The one's complement of the one's complement sum, as stored in a header.
    pub fn finish(&self) -> u16 {
        let mut s = self.sum;
        if let Some(hi) = self.odd {
            s += u64::from(hi) << 8;
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        // The loop above leaves at most 16 bits.
        !(s as u16)
    }
}

/// The Internet checksum of `data` (0 when `data` already holds a valid checksum).
pub fn internet_checksum(data: &[u8]) -> u16 {
    Checksum::new().add(data).finish()
}

/// True when the IPv4 header at the start of `ip` (IHL taken from the packet) has a
/// valid header checksum.
pub fn ipv4_header_checksum_ok(ip: &[u8]) -> bool {
    let Some(&b0) = ip.first() else {
        return false;
    };
    let ihl = usize::from(b0 & 0x0f) * 4;
    ip.get(..ihl).is_some_and(|h| internet_checksum(h) == 0)
}

fn pattern_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn pad_to(v: &mut Vec<u8>, multiple: usize, fill: u8) {
    while !v.len().is_multiple_of(multiple) {
        v.push(fill);
    }
}

fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Checksum {
    let len = u16::try_from(len).unwrap_or_else(|_| panic!("IPv4 transport length {len} > 65535"));
    let mut c = Checksum::new();
    c.add(&src.octets())
        .add(&dst.octets())
        .add(&[0, proto])
        .add(&len.to_be_bytes());
    c
}

fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> Checksum {
    let len = u32::try_from(len).unwrap_or_else(|_| panic!("IPv6 transport length {len} too big"));
    let mut c = Checksum::new();
    c.add(&src.octets())
        .add(&dst.octets())
        .add(&len.to_be_bytes())
        .add(&[0, 0, 0, proto]);
    c
}

/// A TCP segment: header fields, options and payload. Build the bytes with
/// [`Tcp::segment_v4`] / [`Tcp::segment_v6`], or wrap it in IP with [`Ipv4::tcp`] /
/// [`Ipv6::tcp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sent whatever the ACK flag says).
    pub ack: u32,
    /// Flag byte (FIN..CWR); the NS bit is never set.
    pub flags: u8,
    /// Window size.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Raw options; padded with EOL (0) to a multiple of 4 when encoded, at most 40 bytes.
    pub options: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A segment with no options and no payload. Sequence number 1,000,000; the
    /// acknowledgment number is 2,000,000 when ACK is set and 0 otherwise; window 64240.
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            sport,
            dport,
            seq: 1_000_000,
            ack: if flags & ACK != 0 { 2_000_000 } else { 0 },
            flags,
            window: 64240,
            urgent: 0,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Sets the sequence number.
    #[must_use]
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    /// Sets the acknowledgment number.
    #[must_use]
    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    /// Sets the window.
    #[must_use]
    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// Sets the urgent pointer.
    #[must_use]
    pub fn urgent(mut self, urgent: u16) -> Self {
        self.urgent = urgent;
        self
    }

    /// Sets raw options (padded with EOL to a multiple of 4 when encoded).
    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Sets the options of a typical SYN ([`SYN_OPTIONS`]): a 40-byte header.
    #[must_use]
    pub fn syn_options(self) -> Self {
        self.options(&SYN_OPTIONS)
    }

    /// Sets the payload bytes.
    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets a payload of `len` bytes of a repeating `a..z` pattern.
    #[must_use]
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = pattern_payload(len);
        self
    }

    /// TCP header length in bytes (20 plus padded options).
    ///
    /// # Panics
    /// When the options exceed 40 bytes.
    pub fn header_len(&self) -> usize {
        let opts = self.options.len().div_ceil(4) * 4;
        assert!(opts <= 40, "TCP options are {opts} bytes, at most 40 fit");
        20 + opts
    }

    fn encode(&self, mut csum: Checksum) -> Vec<u8> {
        let hlen = self.header_len();
        let mut v = Vec::with_capacity(hlen + self.payload.len());
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.ack.to_be_bytes());
        // hlen <= 60, so hlen / 4 <= 15 fits the 4-bit data offset.
        v.push(((hlen / 4) as u8) << 4);
        v.push(self.flags);
        v.extend_from_slice(&self.window.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // checksum, filled below
        v.extend_from_slice(&self.urgent.to_be_bytes());
        v.extend_from_slice(&self.options);
        pad_to(&mut v, 4, 0);
        v.extend_from_slice(&self.payload);
        let sum = csum.add(&v).finish();
        v[16..18].copy_from_slice(&sum.to_be_bytes());
        v
    }

    /// The segment bytes with the checksum over the IPv4 pseudo-header of `src`/`dst`.
    pub fn segment_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let len = self.header_len() + self.payload.len();
        self.encode(pseudo_v4(src, dst, IPPROTO_TCP, len))
    }

    /// The segment bytes with the checksum over the IPv6 pseudo-header of `src`/`dst`.
    pub fn segment_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let len = self.header_len() + self.payload.len();
        self.encode(pseudo_v6(src, dst, IPPROTO_TCP, len))
    }
}

/// A UDP datagram: ports and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Udp {
    /// A datagram with an empty payload.
    pub fn new(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            payload: Vec::new(),
        }
    }

    /// Sets the payload bytes.
    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets a payload of `len` bytes of a repeating `a..z` pattern.
    #[must_use]
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = pattern_payload(len);
        self
    }

    fn encode(&self, mut csum: Checksum) -> Vec<u8> {
        let len = 8 + self.payload.len();
        let len16 = u16::try_from(len).unwrap_or_else(|_| panic!("UDP length {len} > 65535"));
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        v.extend_from_slice(&len16.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&self.payload);
        let sum = match csum.add(&v).finish() {
            0 => 0xffff,
            s => s,
        };
        v[6..8].copy_from_slice(&sum.to_be_bytes());
        v
    }

    /// The datagram bytes with the checksum over the IPv4 pseudo-header.
    pub fn datagram_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        self.encode(pseudo_v4(src, dst, IPPROTO_UDP, 8 + self.payload.len()))
    }

    /// The datagram bytes with the checksum over the IPv6 pseudo-header.
    pub fn datagram_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        self.encode(pseudo_v6(src, dst, IPPROTO_UDP, 8 + self.payload.len()))
    }
}

/// IPv4 header builder: addresses, TTL, id, options and fragmentation fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live (default 64).
    pub ttl: u8,
    /// DSCP/ECN byte (default 0).
    pub tos: u8,
    /// Identification (default 0x1234).
    pub id: u16,
    /// DF flag (default set, as Linux does for TCP).
    pub dont_fragment: bool,
    /// MF flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (13 bits).
    pub frag_offset: u16,
    /// Raw options, padded with EOL to a multiple of 4 when encoded (at most 40 bytes).
    pub options: Vec<u8>,
}

impl Ipv4 {
    /// A header with no options, not fragmented.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0x1234,
            dont_fragment: true,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }

    /// Sets the TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the identification field.
    #[must_use]
    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// Sets raw options (IHL becomes 5 + padded length / 4).
    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Marks the packet as a fragment: `offset` in 8-byte units, MF = `more`. Clears DF.
    /// `fragment(0, true)` is a first fragment, any `offset > 0` a later one.
    #[must_use]
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        assert!(
            offset < 0x2000,
            "fragment offset {offset} does not fit 13 bits"
        );
        self.frag_offset = offset;
        self.more_fragments = more;
        self.dont_fragment = false;
        self
    }

    /// Header length in bytes (20 plus padded options).
    ///
    /// # Panics
    /// When the options exceed 40 bytes.
    pub fn header_len(&self) -> usize {
        let opts = self.options.len().div_ceil(4) * 4;
        assert!(opts <= 40, "IPv4 options are {opts} bytes, at most 40 fit");
        20 + opts
    }

    /// The packet: this header (protocol `protocol`, valid checksum) then `payload`.
    ///
    /// # Panics
    /// When the total length exceeds 65535.
    pub fn encode(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let hlen = self.header_len();
        let total = hlen + payload.len();
        let total16 =
            u16::try_from(total).unwrap_or_else(|_| panic!("IPv4 total length {total} > 65535"));
        let mut v = Vec::with_capacity(total);
        // hlen <= 60, so hlen / 4 fits the 4-bit IHL.
        v.push(0x40 | (hlen / 4) as u8);
        v.push(self.tos);
        v.extend_from_slice(&total16.to_be_bytes());
        v.extend_from_slice(&self.id.to_be_bytes());
        let mut frag = self.frag_offset & 0x1fff;
        if self.dont_fragment {
            frag |= 0x4000;
        }
        if self.more_fragments {
            frag |= 0x2000;
        }
        v.extend_from_slice(&frag.to_be_bytes());
        v.push(self.ttl);
        v.push(protocol);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&self.src.octets());
        v.extend_from_slice(&self.dst.octets());
        v.extend_from_slice(&self.options);
        pad_to(&mut v, 4, 0);
        let sum = internet_checksum(&v[..hlen]);
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// This header around a TCP segment (checksummed with this header's addresses).
    pub fn tcp(&self, tcp: &Tcp) -> Vec<u8> {
        self.encode(IPPROTO_TCP, &tcp.segment_v4(self.src, self.dst))
    }

    /// This header around a UDP datagram.
    pub fn udp(&self, udp: &Udp) -> Vec<u8> {
        self.encode(IPPROTO_UDP, &udp.datagram_v4(self.src, self.dst))
    }

    /// Real fragmentation of `payload` (a whole transport segment, e.g. from
    /// [`Tcp::segment_v4`]) into packets carrying at most `max_frag_payload` bytes each
    /// (rounded down to a multiple of 8, at least 8). This header's own fragment offset
    /// is the base of the first piece; MF is set on all but the last piece, which keeps
    /// this header's MF.
    pub fn fragments(&self, protocol: u8, payload: &[u8], max_frag_payload: usize) -> Vec<Vec<u8>> {
        let step = (max_frag_payload / 8 * 8).max(8);
        let pieces: Vec<&[u8]> = payload.chunks(step).collect();
        let n = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                let offset = usize::from(self.frag_offset) + i * step / 8;
                let offset = u16::try_from(offset)
                    .ok()
                    .filter(|&o| o < 0x2000)
                    .unwrap_or_else(|| panic!("fragment offset {offset} does not fit 13 bits"));
                let more = if i + 1 < n { true } else { self.more_fragments };
                self.clone().fragment(offset, more).encode(protocol, piece)
            })
            .collect()
    }
}

/// One IPv6 extension header for [`Ipv6`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options (protocol 0); raw option TLVs, padded with Pad1/PadN.
    HopByHop(Vec<u8>),
    /// Destination options (protocol 60); raw option TLVs, padded with Pad1/PadN.
    DestOpts(Vec<u8>),
    /// Routing header (protocol 43). `data` is what follows the 4 fixed bytes (for
    /// type 0: 4 reserved bytes then addresses); zero-padded to a multiple of 8 overall.
    Routing {
        /// Routing type.
        routing_type: u8,
        /// Segments left (keep 0 so the final destination is the IPv6 destination).
        segments_left: u8,
        /// Type-specific data.
        data: Vec<u8>,
    },
    /// Authentication header (protocol 51): SPI, sequence number 1, then `icv`
    /// (zero-padded to a multiple of 8 bytes overall). Its length field counts 4-octet
    /// units minus 2, unlike the other extension headers.
    Auth {
        /// Security parameters index.
        spi: u32,
        /// Integrity check value.
        icv: Vec<u8>,
    },
    /// Fragment header (protocol 44), 8 bytes.
    Fragment {
        /// Fragment offset in 8-byte units (13 bits).
        offset: u16,
        /// M flag (more fragments).
        more: bool,
        /// Identification.
        id: u32,
    },
}

impl Ipv6Ext {
    /// Hop-by-hop header holding only padding: 8 bytes.
    pub fn hop_by_hop() -> Self {
        Self::HopByHop(Vec::new())
    }

    /// Destination options header holding only padding: 8 bytes.
    pub fn dest_opts() -> Self {
        Self::DestOpts(Vec::new())
    }

    /// Type 0 routing header, segments left 0, listing one address, `addr`: 24 bytes
    /// (header extension length 2). Pass the packet's destination: some readers
    /// (tcpdump) take the last listed address as the final destination for the TCP/UDP
    /// checksum whatever segments left says, and the transport checksum here always uses
    /// the IPv6 destination field.
    pub fn routing(addr: Ipv6Addr) -> Self {
        let mut data = vec![0; 4];
        data.extend_from_slice(&addr.octets());
        Self::Routing {
            routing_type: 0,
            segments_left: 0,
            data,
        }
    }

    /// Authentication header with a 12-byte ICV (HMAC-SHA1-96): 24 bytes, length field 4.
    pub fn auth() -> Self {
        Self::Auth {
            spi: 0x0000_1001,
            icv: vec![0xa5; 12],
        }
    }

    /// Fragment header: `offset` in 8-byte units, M flag `more`, id 0x0bad_f00d.
    /// `fragment(0, false)` is an atomic fragment, `offset > 0` a non-first fragment.
    pub fn fragment(offset: u16, more: bool) -> Self {
        assert!(
            offset < 0x2000,
            "fragment offset {offset} does not fit 13 bits"
        );
        Self::Fragment {
            offset,
            more,
            id: 0x0bad_f00d,
        }
    }

    /// The protocol number that announces this header.
    pub fn protocol(&self) -> u8 {
        match self {
            Self::HopByHop(_) => IPPROTO_HOPOPTS,
            Self::DestOpts(_) => IPPROTO_DSTOPTS,
            Self::Routing { .. } => IPPROTO_ROUTING,
            Self::Auth { .. } => IPPROTO_AH,
            Self::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn encode_into(&self, next: u8, v: &mut Vec<u8>) {
        let start = v.len();
        v.push(next);
        v.push(0); // header extension length, filled below
        match self {
            Self::HopByHop(opts) | Self::DestOpts(opts) => {
                v.extend_from_slice(opts);
                let pad = (8 - (v.len() - start) % 8) % 8;
                match pad {
                    0 => {}
                    1 => v.push(0), // Pad1
                    n => {
                        v.push(1); // PadN
                        // n - 2 <= 5
                        v.push((n - 2) as u8);
                        v.extend(std::iter::repeat_n(0, n - 2));
                    }
                }
            }
            Self::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                v.push(*routing_type);
                v.push(*segments_left);
                v.extend_from_slice(data);
                while !(v.len() - start).is_multiple_of(8) {
                    v.push(0);
                }
            }
            Self::Auth { spi, icv } => {
                v.extend_from_slice(&[0, 0]); // reserved
                v.extend_from_slice(&spi.to_be_bytes());
                v.extend_from_slice(&1u32.to_be_bytes());
                v.extend_from_slice(icv);
                while !(v.len() - start).is_multiple_of(8) {
                    v.push(0);
                }
                let units = (v.len() - start) / 4 - 2;
                v[start + 1] = u8::try_from(units).unwrap_or_else(|_| {
                    panic!("authentication header of {} bytes", v.len() - start)
                });
                return;
            }
            Self::Fragment { offset, more, id } => {
                let field = ((offset & 0x1fff) << 3) | u16::from(*more);
                v.extend_from_slice(&field.to_be_bytes());
                v.extend_from_slice(&id.to_be_bytes());
                return;
            }
        }
        let units = (v.len() - start) / 8 - 1;
        v[start + 1] = u8::try_from(units)
            .unwrap_or_else(|_| panic!("IPv6 extension header of {} bytes", v.len() - start));
    }
}

/// IPv6 header builder with an optional chain of extension headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit (default 64).
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Extension headers, in wire order, placed between this header and the payload.
    pub exts: Vec<Ipv6Ext>,
}

impl Ipv6 {
    /// A header with no extension headers.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            exts: Vec::new(),
        }
    }

    /// Sets the hop limit.
    #[must_use]
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// Sets the flow label (low 20 bits used).
    #[must_use]
    pub fn flow_label(mut self, flow_label: u32) -> Self {
        self.flow_label = flow_label & 0xf_ffff;
        self
    }

    /// Appends an extension header.
    #[must_use]
    pub fn ext(mut self, ext: Ipv6Ext) -> Self {
        self.exts.push(ext);
        self
    }

    /// Appends a padding-only hop-by-hop header.
    #[must_use]
    pub fn hop_by_hop(self) -> Self {
        self.ext(Ipv6Ext::hop_by_hop())
    }

    /// Appends a type 0 routing header listing this packet's destination
    /// ([`Ipv6Ext::routing`]).
    #[must_use]
    pub fn routing(self) -> Self {
        let dst = self.dst;
        self.ext(Ipv6Ext::routing(dst))
    }

    /// Appends a padding-only destination options header.
    #[must_use]
    pub fn dest_opts(self) -> Self {
        self.ext(Ipv6Ext::dest_opts())
    }

    /// Appends a fragment header ([`Ipv6Ext::fragment`]).
    #[must_use]
    pub fn fragment(self, offset: u16, more: bool) -> Self {
        self.ext(Ipv6Ext::fragment(offset, more))
    }

    /// The packet: header, extension headers, then `payload` as protocol `protocol`.
    ///
    /// # Panics
    /// When the payload length exceeds 65535 (no jumbograms).
    pub fn encode(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, e) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(protocol, Ipv6Ext::protocol);
            e.encode_into(next, &mut exts);
        }
        let plen = exts.len() + payload.len();
        let plen16 =
            u16::try_from(plen).unwrap_or_else(|_| panic!("IPv6 payload length {plen} > 65535"));
        let first = self.exts.first().map_or(protocol, Ipv6Ext::protocol);
        let mut v = Vec::with_capacity(40 + plen);
        let word =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xf_ffff);
        v.extend_from_slice(&word.to_be_bytes());
        v.extend_from_slice(&plen16.to_be_bytes());
        v.push(first);
        v.push(self.hop_limit);
        v.extend_from_slice(&self.src.octets());
        v.extend_from_slice(&self.dst.octets());
        v.extend_from_slice(&exts);
        v.extend_from_slice(payload);
        v
    }

    /// This header (and extension headers) around a TCP segment.
    pub fn tcp(&self, tcp: &Tcp) -> Vec<u8> {
        self.encode(IPPROTO_TCP, &tcp.segment_v6(self.src, self.dst))
    }

    /// This header (and extension headers) around a UDP datagram.
    pub fn udp(&self, udp: &Udp) -> Vec<u8> {
        self.encode(IPPROTO_UDP, &udp.datagram_v6(self.src, self.dst))
    }
}

/// Raw IPv4 packet carrying TCP: data offset 5, no options, `payload_len` pattern bytes.
pub fn tcp_v4(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    Ipv4::new(src, dst).tcp(&Tcp::new(sport, dport, flags).payload_len(payload_len))
}

/// Like [`tcp_v4`] with the options of a real SYN ([`SYN_OPTIONS`]): 40-byte TCP header.
pub fn tcp_v4_opts(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    Ipv4::new(src, dst).tcp(
        &Tcp::new(sport, dport, flags)
            .syn_options()
            .payload_len(payload_len),
    )
}

/// Raw IPv6 packet carrying TCP: data offset 5, no options, `payload_len` pattern bytes.
pub fn tcp_v6(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    Ipv6::new(src, dst).tcp(&Tcp::new(sport, dport, flags).payload_len(payload_len))
}

/// Like [`tcp_v6`] with the options of a real SYN ([`SYN_OPTIONS`]).
pub fn tcp_v6_opts(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    Ipv6::new(src, dst).tcp(
        &Tcp::new(sport, dport, flags)
            .syn_options()
            .payload_len(payload_len),
    )
}

/// Raw IPv6 packet with the given extension headers (in wire order) before a TCP
/// header with no options and no payload.
pub fn tcp_v6_ext(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    exts: &[Ipv6Ext],
) -> Vec<u8> {
    let mut ip = Ipv6::new(src, dst);
    ip.exts = exts.to_vec();
    ip.tcp(&Tcp::new(sport, dport, flags))
}

/// Raw IPv4 packet carrying UDP with `payload_len` pattern bytes.
pub fn udp_v4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload_len: usize) -> Vec<u8> {
    Ipv4::new(src, dst)
        .id(0x4321)
        .udp(&Udp::new(sport, dport).payload_len(payload_len))
}

/// Raw IPv6 packet carrying UDP with `payload_len` pattern bytes.
pub fn udp_v6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload_len: usize) -> Vec<u8> {
    Ipv6::new(src, dst).udp(&Udp::new(sport, dport).payload_len(payload_len))
}

/// [`tcp_v4`] or [`tcp_v6`] by address family.
///
/// # Panics
/// When `src` and `dst` are of different families.
pub fn tcp_ip(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp_v4(s, sport, d, dport, flags, payload_len),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp_v6(s, sport, d, dport, flags, payload_len),
        _ => panic!("tcp_ip: {src} and {dst} are of different families"),
    }
}

/// The ethertype for an IP packet, from its version nibble: 0x86dd for 6, else 0x0800.
pub fn ethertype_of(ip: &[u8]) -> u16 {
    match ip.first().map(|b| b >> 4) {
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_IPV4,
    }
}

/// The BSD address family for an IP packet: [`AF_INET`] for version 4, otherwise
/// `v6` (the IPv6 value of the platform being imitated).
fn af_of(ip: &[u8], v6: u32) -> u32 {
    match ip.first().map(|b| b >> 4) {
        Some(6) => v6,
        _ => AF_INET,
    }
}

/// Ethernet II frame (no FCS) from [`MAC_SRC`] to [`MAC_DST`] around an IP packet;
/// the ethertype comes from the IP version nibble.
pub fn ethernet(ip: &[u8]) -> Vec<u8> {
    ethernet_with(MAC_DST, MAC_SRC, ethertype_of(ip), ip)
}

/// Ethernet II frame (no FCS) with explicit addresses and ethertype.
pub fn ethernet_with(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + payload.len());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Ethernet II frame with a stack of VLAN tags, outermost first, each `(tpid, vlan_id)`
/// (priority and DEI 0; the id is masked to 12 bits). One `(TPID_8021Q, id)` is plain
/// 802.1Q; `[(TPID_8021AD, outer), (TPID_8021Q, inner)]` is 802.1ad QinQ. The ethertype
/// after the last tag comes from the IP version nibble.
pub fn ethernet_vlan(ip: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + 4 * tags.len() + ip.len());
    v.extend_from_slice(&MAC_DST);
    v.extend_from_slice(&MAC_SRC);
    for &(tpid, id) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    v.extend_from_slice(&ethertype_of(ip).to_be_bytes());
    v.extend_from_slice(ip);
    v
}

/// 802.1ad QinQ frame: outer tag 0x88a8 `outer_id`, inner tag 0x8100 `inner_id`.
pub fn ethernet_qinq(ip: &[u8], outer_id: u16, inner_id: u16) -> Vec<u8> {
    ethernet_vlan(ip, &[(TPID_8021AD, outer_id), (TPID_8021Q, inner_id)])
}

/// Linux cooked capture v1 (`LINKTYPE_LINUX_SLL`, 16-byte header): packet type 0
/// (to us), ARPHRD_ETHER, 6-byte sender address [`MAC_SRC`], protocol from the IP
/// version nibble.
pub fn sll(ip: &[u8]) -> Vec<u8> {
    sll_with(0, ethertype_of(ip), ip)
}

/// Linux cooked capture v1 with an explicit packet type (0 host, 1 broadcast,
/// 2 multicast, 3 other host, 4 outgoing) and protocol field.
pub fn sll_with(packet_type: u16, protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + payload.len());
    v.extend_from_slice(&packet_type.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    v.extend_from_slice(&6u16.to_be_bytes());
    v.extend_from_slice(&MAC_SRC);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&protocol.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Linux cooked capture v2 (`LINKTYPE_LINUX_SLL2`, 20-byte header): protocol from the
/// IP version nibble, interface index 1, ARPHRD_ETHER, packet type 0, 6-byte address.
pub fn sll2(ip: &[u8]) -> Vec<u8> {
    sll2_with(ethertype_of(ip), 1, 0, ip)
}

/// Linux cooked capture v2 with explicit protocol, interface index and packet type.
pub fn sll2_with(protocol: u16, if_index: u32, packet_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + payload.len());
    v.extend_from_slice(&protocol.to_be_bytes());
    v.extend_from_slice(&[0, 0]); // reserved
    v.extend_from_slice(&if_index.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    v.push(packet_type);
    v.push(6);
    v.extend_from_slice(&MAC_SRC);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// BSD loopback (`LINKTYPE_NULL`): 4-byte address family in the capturing host's byte
/// order, 2 for IPv4 and 30 ([`AF_INET6_DARWIN`], as on macOS) for IPv6.
pub fn null_loopback(ip: &[u8], little_endian: bool) -> Vec<u8> {
    null_loopback_af(ip, af_of(ip, AF_INET6_DARWIN), little_endian)
}

/// BSD loopback with an explicit address family (e.g. [`AF_INET6_BSD`] 24,
/// [`AF_INET6_FREEBSD`] 28, [`AF_INET6_LINUX`] 10).
pub fn null_loopback_af(ip: &[u8], af: u32, little_endian: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + ip.len());
    if little_endian {
        v.extend_from_slice(&af.to_le_bytes());
    } else {
        v.extend_from_slice(&af.to_be_bytes());
    }
    v.extend_from_slice(ip);
    v
}

/// OpenBSD loopback (`LINKTYPE_LOOP`): 4-byte address family in network byte order,
/// 2 for IPv4 and 24 ([`AF_INET6_BSD`], OpenBSD's value) for IPv6.
pub fn loop_loopback(ip: &[u8]) -> Vec<u8> {
    loop_loopback_af(ip, af_of(ip, AF_INET6_BSD))
}

/// OpenBSD loopback with an explicit address family.
pub fn loop_loopback_af(ip: &[u8], af: u32) -> Vec<u8> {
    null_loopback_af(ip, af, false)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "tests fail loudly on unexpected parse errors"
)]
mod tests {
    use super::*;
    use etherparse::{
        Ipv6ExtensionSlice, LinkExtSlice, LinkSlice, NetSlice, SlicedPacket, TcpOptionElement,
        TransportSlice,
    };

    const A4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xbad);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

    /// Checks IP addresses, TCP ports, flags, payload length and both checksums.
    fn check_tcp(
        p: &SlicedPacket<'_>,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flags: u8,
        plen: usize,
    ) {
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("no TCP in {p:?}");
        };
        assert_eq!(tcp.source_port(), sport);
        assert_eq!(tcp.destination_port(), dport);
        assert_eq!(tcp.fin(), flags & FIN != 0);
        assert_eq!(tcp.syn(), flags & SYN != 0);
        assert_eq!(tcp.rst(), flags & RST != 0);
        assert_eq!(tcp.psh(), flags & PSH != 0);
        assert_eq!(tcp.ack(), flags & ACK != 0);
        assert_eq!(tcp.urg(), flags & URG != 0);
        assert_eq!(tcp.payload().len(), plen);
        match (&p.net, src, dst) {
            (Some(NetSlice::Ipv4(ip)), IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = ip.header();
                assert_eq!(h.source_addr(), s);
                assert_eq!(h.destination_addr(), d);
                assert!(ipv4_header_checksum_ok(h.slice()));
                assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                assert_eq!(
                    tcp.checksum(),
                    tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                );
            }
            (Some(NetSlice::Ipv6(ip)), IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = ip.header();
                assert_eq!(h.source_addr(), s);
                assert_eq!(h.destination_addr(), d);
                assert_eq!(
                    tcp.checksum(),
                    tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
                );
            }
            other => panic!("unexpected network layer {other:?}"),
        }
    }

    #[test]
    fn checksum_rfc1071_example_and_odd_pieces() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), 0x220d);
        let mut c = Checksum::new();
        c.add(&data[..3])
            .add(&data[3..3])
            .add(&data[3..5])
            .add(&data[5..]);
        assert_eq!(c.finish(), 0x220d);
        // Odd total length pads with a zero byte.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn tcp_v4_parses_back() {
        for flags in [
            SYN,
            SYN | ACK,
            ACK,
            RST | ACK,
            FIN | ACK,
            PSH | ACK,
            FIN | PSH | URG,
            0,
        ] {
            let ip = tcp_v4(A4, 40000, B4, 443, flags, 7);
            assert_eq!(ip.len(), 20 + 20 + 7);
            assert_eq!(ip[0], 0x45, "IPv4, IHL 5");
            assert_eq!(ip[20 + 12], 5 << 4, "TCP data offset 5");
            let p = SlicedPacket::from_ip(&ip).unwrap();
            check_tcp(&p, A4.into(), 40000, B4.into(), 443, flags, 7);
        }
    }

    #[test]
    fn tcp_v4_opts_has_syn_options() {
        let ip = tcp_v4_opts(A4, 40000, B4, 22, SYN, 0);
        assert_eq!(ip.len(), 20 + 40);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        check_tcp(&p, A4.into(), 40000, B4.into(), 22, SYN, 0);
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            unreachable!()
        };
        assert_eq!(tcp.data_offset(), 10);
        let opts: Vec<_> = tcp.options_iterator().map(Result::unwrap).collect();
        assert!(opts.contains(&TcpOptionElement::MaximumSegmentSize(1460)));
        assert!(opts.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted));
        assert!(opts.contains(&TcpOptionElement::WindowScale(7)));
        assert!(opts.contains(&TcpOptionElement::Timestamp(1, 0)));
    }

    #[test]
    fn tcp_v6_and_udp_parse_back() {
        let ip = tcp_v6(A6, 1234, B6, 80, SYN, 0);
        assert_eq!(ip.len(), 60);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        check_tcp(&p, A6.into(), 1234, B6.into(), 80, SYN, 0);

        let ip = tcp_v6_opts(A6, 1234, B6, 80, SYN | ACK, 3);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        check_tcp(&p, A6.into(), 1234, B6.into(), 80, SYN | ACK, 3);

        let ip = tcp_ip(A4.into(), 9, B4.into(), 10, FIN, 1);
        check_tcp(
            &SlicedPacket::from_ip(&ip).unwrap(),
            A4.into(),
            9,
            B4.into(),
            10,
            FIN,
            1,
        );

        for ip in [udp_v4(A4, 53, B4, 5353, 11), udp_v6(A6, 53, B6, 5353, 11)] {
            let p = SlicedPacket::from_ip(&ip).unwrap();
            let Some(TransportSlice::Udp(udp)) = &p.transport else {
                panic!("no UDP in {p:?}");
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (53, 5353));
            assert_eq!(udp.payload().len(), 11);
            let h = udp.to_header();
            let want = match &p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    assert!(ipv4_header_checksum_ok(ip.header().slice()));
                    h.calc_checksum_ipv4_raw(
                        ip.header().source(),
                        ip.header().destination(),
                        udp.payload(),
                    )
                    .unwrap()
                }
                Some(NetSlice::Ipv6(ip)) => h
                    .calc_checksum_ipv6_raw(
                        ip.header().source(),
                        ip.header().destination(),
                        udp.payload(),
                    )
                    .unwrap(),
                other => panic!("{other:?}"),
            };
            assert_eq!(udp.checksum(), want);
        }
    }

    #[test]
    fn ethernet_framing() {
        for ip in [tcp_v4(A4, 1, B4, 2, SYN, 0), tcp_v6(A6, 1, B6, 2, SYN, 0)] {
            let frame = ethernet(&ip);
            assert_eq!(frame.len(), 14 + ip.len());
            let p = SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
                panic!("{p:?}")
            };
            assert_eq!(eth.destination(), MAC_DST);
            assert_eq!(eth.source(), MAC_SRC);
            assert_eq!(eth.ether_type().0, ethertype_of(&ip));
            assert!(p.link_exts.is_empty());
            let (s, d): (IpAddr, IpAddr) = if ip[0] >> 4 == 4 {
                (A4.into(), B4.into())
            } else {
                (A6.into(), B6.into())
            };
            check_tcp(&p, s, 1, d, 2, SYN, 0);
        }
        assert_eq!(ethertype_of(&tcp_v4(A4, 1, B4, 2, SYN, 0)), 0x0800);
        assert_eq!(ethertype_of(&tcp_v6(A6, 1, B6, 2, SYN, 0)), 0x86dd);
    }

    #[test]
    fn vlan_and_qinq_framing() {
        let ip = tcp_v4(A4, 5555, B4, 25, SYN, 0);
        let frame = ethernet_vlan(&ip, &[(TPID_8021Q, 100)]);
        assert_eq!(frame.len(), 18 + ip.len());
        assert_eq!(&frame[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        assert_eq!(p.link_exts.len(), 1);
        let LinkExtSlice::Vlan(v) = &p.link_exts[0] else {
            panic!()
        };
        assert_eq!(v.vlan_identifier().value(), 100);
        check_tcp(&p, A4.into(), 5555, B4.into(), 25, SYN, 0);

        let ip6 = tcp_v6(A6, 5555, B6, 25, SYN, 0);
        for frame in [
            ethernet_qinq(&ip6, 10, 20),
            ethernet_vlan(&ip6, &[(TPID_8021AD, 10), (TPID_8021Q, 20)]),
        ] {
            assert_eq!(
                &frame[12..22],
                &[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x86, 0xdd]
            );
            let p = SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
                panic!()
            };
            assert_eq!(eth.ether_type().0, TPID_8021AD);
            assert_eq!(p.link_exts.len(), 2);
            let ids: Vec<u16> = p
                .link_exts
                .iter()
                .map(|e| match e {
                    LinkExtSlice::Vlan(v) => v.vlan_identifier().value(),
                    LinkExtSlice::Macsec(_) => panic!("macsec"),
                })
                .collect();
            assert_eq!(ids, [10, 20]);
            check_tcp(&p, A6.into(), 5555, B6.into(), 25, SYN, 0);
        }

        // Three tags: etherparse holds up to three link extensions.
        let frame = ethernet_vlan(&ip, &[(TPID_8021AD, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)]);
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        assert_eq!(p.link_exts.len(), 3);
        check_tcp(&p, A4.into(), 5555, B4.into(), 25, SYN, 0);
    }

    #[test]
    fn sll_framing() {
        for ip in [tcp_v4(A4, 7, B4, 8, SYN, 0), tcp_v6(A6, 7, B6, 8, SYN, 0)] {
            let frame = sll(&ip);
            assert_eq!(frame.len(), 16 + ip.len());
            let p = SlicedPacket::from_linux_sll(&frame).unwrap();
            let Some(LinkSlice::LinuxSll(s)) = &p.link else {
                panic!("{p:?}")
            };
            assert_eq!(s.sender_address_valid_length(), 6);
            assert_eq!(s.sender_address(), &MAC_SRC);
            assert_eq!(s.arp_hardware_type().0, 1);
            assert_eq!(&s.header_slice()[14..16], &ethertype_of(&ip).to_be_bytes());
            assert!(p.transport.is_some());
            let (sa, da): (IpAddr, IpAddr) = if ip[0] >> 4 == 4 {
                (A4.into(), B4.into())
            } else {
                (A6.into(), B6.into())
            };
            check_tcp(&p, sa, 7, da, 8, SYN, 0);
        }
    }

    #[test]
    fn sll2_framing() {
        let ip = tcp_v6(A6, 7, B6, 8, SYN, 0);
        let frame = sll2(&ip);
        assert_eq!(frame.len(), 20 + ip.len());
        assert_eq!(
            &frame[..20],
            &[
                0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0
            ]
        );
        let p = SlicedPacket::from_ip(&frame[20..]).unwrap();
        check_tcp(&p, A6.into(), 7, B6.into(), 8, SYN, 0);
        assert_eq!(&sll2(&tcp_v4(A4, 1, B4, 2, SYN, 0))[..2], &[0x08, 0x00]);
    }

    #[test]
    fn loopback_framing() {
        let ip4 = tcp_v4(A4, 7, B4, 8, SYN, 0);
        let ip6 = tcp_v6(A6, 7, B6, 8, SYN, 0);
        assert_eq!(&null_loopback(&ip4, true)[..4], &[2, 0, 0, 0]);
        assert_eq!(&null_loopback(&ip4, false)[..4], &[0, 0, 0, 2]);
        assert_eq!(&null_loopback(&ip6, true)[..4], &[30, 0, 0, 0]);
        assert_eq!(&null_loopback(&ip6, false)[..4], &[0, 0, 0, 30]);
        for af in [AF_INET6_BSD, AF_INET6_FREEBSD, AF_INET6_LINUX] {
            let f = null_loopback_af(&ip6, af, true);
            assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()), af);
        }
        assert_eq!(&loop_loopback(&ip4)[..4], &[0, 0, 0, 2]);
        assert_eq!(&loop_loopback(&ip6)[..4], &[0, 0, 0, 24]);
        assert_eq!(&loop_loopback_af(&ip6, 28)[..4], &[0, 0, 0, 28]);
        let f = null_loopback(&ip6, true);
        assert_eq!(&f[4..], &ip6[..]);
        check_tcp(
            &SlicedPacket::from_ip(&f[4..]).unwrap(),
            A6.into(),
            7,
            B6.into(),
            8,
            SYN,
            0,
        );
    }

    #[test]
    fn ipv6_extension_headers() {
        let ip = Ipv6::new(A6, B6)
            .hop_by_hop()
            .routing()
            .dest_opts()
            .fragment(0, false)
            .tcp(&Tcp::new(33000, 443, SYN).syn_options());
        assert_eq!(ip.len(), 40 + 8 + 24 + 8 + 8 + 40);
        assert_eq!(ip[6], IPPROTO_HOPOPTS);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        let Some(NetSlice::Ipv6(v6)) = &p.net else {
            panic!()
        };
        let kinds: Vec<&str> = v6
            .extensions()
            .clone()
            .into_iter()
            .map(|e| match e {
                Ipv6ExtensionSlice::HopByHop(_) => "hop",
                Ipv6ExtensionSlice::Routing(_) => "routing",
                Ipv6ExtensionSlice::DestinationOptions(_) => "dest",
                Ipv6ExtensionSlice::Fragment(_) => "frag",
                Ipv6ExtensionSlice::Authentication(_) => "auth",
            })
            .collect();
        assert_eq!(kinds, ["hop", "routing", "dest", "frag"]);
        assert!(!v6.is_payload_fragmented());
        check_tcp(&p, A6.into(), 33000, B6.into(), 443, SYN, 0);

        // Options that need Pad1 and other PadN lengths still give 8-byte multiples.
        for n in 0u8..14 {
            let ip = Ipv6::new(A6, B6)
                .ext(Ipv6Ext::DestOpts(
                    [0x1e, n]
                        .into_iter()
                        .chain(std::iter::repeat_n(0, n.into()))
                        .collect(),
                ))
                .tcp(&Tcp::new(1, 2, SYN));
            let ext_len = ip.len() - 40 - 20;
            assert_eq!(ext_len % 8, 0, "n = {n}");
            check_tcp(
                &SlicedPacket::from_ip(&ip).unwrap(),
                A6.into(),
                1,
                B6.into(),
                2,
                SYN,
                0,
            );
        }

        let ip = tcp_v6_ext(
            A6,
            5,
            B6,
            6,
            SYN,
            &[Ipv6Ext::hop_by_hop(), Ipv6Ext::dest_opts()],
        );
        check_tcp(
            &SlicedPacket::from_ip(&ip).unwrap(),
            A6.into(),
            5,
            B6.into(),
            6,
            SYN,
            0,
        );
    }

    #[test]
    fn ipv6_non_first_fragment_has_no_transport() {
        let ip = Ipv6::new(A6, B6)
            .dest_opts()
            .fragment(185, false)
            .tcp(&Tcp::new(1, 2, SYN));
        let p = SlicedPacket::from_ip(&ip).unwrap();
        let Some(NetSlice::Ipv6(v6)) = &p.net else {
            panic!()
        };
        assert!(v6.is_payload_fragmented());
        assert!(p.transport.is_none());
        let frag = v6
            .extensions()
            .clone()
            .into_iter()
            .find_map(|e| match e {
                Ipv6ExtensionSlice::Fragment(f) => Some(f.to_header()),
                _ => None,
            })
            .unwrap();
        assert_eq!(frag.fragment_offset.value(), 185);
        assert!(!frag.more_fragments);
        assert_eq!(frag.identification, 0x0bad_f00d);
        // First fragment with M set is fragmented too.
        let ip = Ipv6::new(A6, B6)
            .fragment(0, true)
            .tcp(&Tcp::new(1, 2, SYN));
        let p = SlicedPacket::from_ip(&ip).unwrap();
        assert!(p.transport.is_none());
    }

    #[test]
    fn ipv4_options() {
        let ip = Ipv4::new(A4, B4)
            .options(&IPV4_OPT_ROUTER_ALERT)
            .tcp(&Tcp::new(1000, 80, SYN).syn_options());
        assert_eq!(ip[0], 0x46);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        let Some(NetSlice::Ipv4(v4)) = &p.net else {
            panic!()
        };
        assert_eq!(v4.header().ihl(), 6);
        assert_eq!(v4.header().options(), &IPV4_OPT_ROUTER_ALERT);
        check_tcp(&p, A4.into(), 1000, B4.into(), 80, SYN, 0);

        // Odd-length options are padded; 40 bytes of options is the maximum (IHL 15).
        let ip = Ipv4::new(A4, B4)
            .options(&[1, 1, 1])
            .tcp(&Tcp::new(1, 2, ACK));
        assert_eq!(ip[0], 0x46);
        let ip = Ipv4::new(A4, B4)
            .options(&[1; 40])
            .tcp(&Tcp::new(1, 2, ACK));
        assert_eq!(ip[0], 0x4f);
        check_tcp(
            &SlicedPacket::from_ip(&ip).unwrap(),
            A4.into(),
            1,
            B4.into(),
            2,
            ACK,
            0,
        );
    }

    #[test]
    fn ipv4_fragments() {
        let tcp = Tcp::new(1, 2, SYN);
        let later = Ipv4::new(A4, B4).fragment(100, false).tcp(&tcp);
        assert!(ipv4_header_checksum_ok(&later));
        let p = SlicedPacket::from_ip(&later).unwrap();
        let Some(NetSlice::Ipv4(v4)) = &p.net else {
            panic!()
        };
        assert!(v4.is_payload_fragmented());
        assert_eq!(v4.header().fragments_offset().value(), 100);
        assert!(!v4.header().dont_fragment());
        assert!(p.transport.is_none());

        let first = Ipv4::new(A4, B4).fragment(0, true).tcp(&tcp);
        let p = SlicedPacket::from_ip(&first).unwrap();
        let Some(NetSlice::Ipv4(v4)) = &p.net else {
            panic!()
        };
        assert!(v4.header().more_fragments());
        assert!(v4.is_payload_fragmented());

        // Real fragmentation reassembles to the original segment.
        let tcp = Tcp::new(1, 2, PSH | ACK).payload_len(100);
        let seg = tcp.segment_v4(A4, B4);
        let frags = Ipv4::new(A4, B4).fragments(IPPROTO_TCP, &seg, 50);
        assert_eq!(frags.len(), 3);
        let mut joined = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            assert!(ipv4_header_checksum_ok(f));
            let off = u16::from_be_bytes([f[6], f[7]]);
            assert_eq!(usize::from(off & 0x1fff) * 8, joined.len());
            assert_eq!(off & 0x2000 != 0, i < 2);
            joined.extend_from_slice(&f[20..]);
        }
        assert_eq!(joined, seg);
        let first = SlicedPacket::from_ip(&frags[0]).unwrap();
        assert!(first.transport.is_none());
    }

    #[test]
    fn tcp_fields() {
        let t = Tcp::new(1, 2, SYN | ACK)
            .seq(7)
            .ack(9)
            .window(100)
            .urgent(3)
            .payload(b"hi");
        let ip = Ipv4::new(A4, B4).ttl(3).id(77).tcp(&t);
        assert_eq!(ip[8], 3);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 77);
        let p = SlicedPacket::from_ip(&ip).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!()
        };
        assert_eq!(tcp.sequence_number(), 7);
        assert_eq!(tcp.acknowledgment_number(), 9);
        assert_eq!(tcp.window_size(), 100);
        assert_eq!(tcp.urgent_pointer(), 3);
        assert_eq!(tcp.payload(), b"hi");
    }
}
