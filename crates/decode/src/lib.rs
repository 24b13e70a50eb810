//! Packet decoding for synwatch: one pure function from captured bytes and a link type
//! to the few facts the detector needs (addresses, ports, TCP flags).
//!
//! The key decision is to decode by hand rather than through a general packet library:
//! synwatch looks at millions of packets a second and needs only a handful of fields, so
//! [`decode`] walks the headers with bounds-checked slice reads and stops as soon as it
//! has the transport ports. Every read goes through `slice::get`, so no input can read out
//! of bounds or panic; the fuzz targets in `fuzz/` hold that line.
//!
//! Layout: link layers ([`LinkType`], Ethernet with 802.1Q/802.1ad stacks, Linux cooked
//! SLL/SLL2, raw IP, BSD loopback) then IPv4 (options, fragments) and IPv6 (extension
//! headers walked for as long as the packet lasts, as Linux walks them, with
//! [`MAX_IPV6_EXTENSION_HEADERS`] only as a backstop), then TCP or UDP. Anything that is
//! not TCP or UDP over IP is [`Skip`]ped, which is not an error; packets that claim to be
//! IP/TCP but break the rules are a [`DecodeError`], a small `Copy` kind meant to be
//! counted.
//!
//! Fragments: [`decode`] judges each packet alone (a non-first fragment is
//! [`Skip::Fragment`]). [`Reassembler`] (`reassembly.rs`) decodes the same way but collects
//! IPv4 and IPv6 fragments as the Linux stack would take them, in bounded state with time
//! passed in, and judges a fragmented segment once its transport header is whole; its
//! module docs ([`reassembly`]) list the kernel behaviours it follows and the few it does
//! not. Both share one parse (`parse`), which stops at a fragment and hands over its key,
//! offset, MF flag and payload.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod fuzz;
pub mod reassembly;

pub use reassembly::{
    HEAD_BYTES, MAX_FRAGMENT_RANGES, Reassembler, ReassemblyLimits, ReassemblyStats,
};

/// The link-layer framings synwatch understands, named after their pcap `LINKTYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// `LINKTYPE_NULL` (0): BSD loopback, 4-byte address family in the capturing host's order.
    Null,
    /// `LINKTYPE_ETHERNET` (1).
    Ethernet,
    /// `LINKTYPE_RAW` (101, and the historical DLT values 12 and 14): raw IPv4 or IPv6.
    Raw,
    /// `LINKTYPE_LOOP` (108): OpenBSD loopback, address family in network order.
    Loop,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture v1.
    LinuxSll,
    /// `LINKTYPE_IPV4` (228).
    Ipv4,
    /// `LINKTYPE_IPV6` (229).
    Ipv6,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture v2.
    LinuxSll2,
}

impl LinkType {
    /// Maps a pcap/pcapng link-type number to a supported framing, or `None`.
    pub fn from_linktype(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }

    /// Every framing, in the order of their `LINKTYPE_*` numbers (the fuzz inputs' first
    /// byte picks one by this order: [`fuzz`]).
    pub const ALL: [LinkType; 8] = [
        Self::Null,
        Self::Ethernet,
        Self::Raw,
        Self::Loop,
        Self::LinuxSll,
        Self::Ipv4,
        Self::Ipv6,
        Self::LinuxSll2,
    ];

    /// The canonical `LINKTYPE_*` number.
    pub fn linktype(self) -> u32 {
        match self {
            Self::Null => 0,
            Self::Ethernet => 1,
            Self::Raw => 101,
            Self::Loop => 108,
            Self::LinuxSll => 113,
            Self::Ipv4 => 228,
            Self::Ipv6 => 229,
            Self::LinuxSll2 => 276,
        }
    }
}

/// TCP header flags (the low byte of the flags field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

/// The transport protocol of a decoded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp(TcpFlags),
    Udp,
}

/// What synwatch keeps of one TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub transport: Transport,
    /// Length of the IP packet as the IP header states it (bytes on the wire above the
    /// link layer), or the captured length where the header leaves it open.
    pub ip_len: u32,
}

/// A packet that decoded fine but carries nothing synwatch looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The link layer carries something other than IPv4/IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP, but neither TCP nor UDP (ICMP, GRE, ...).
    OtherProtocol,
    /// A non-first IP fragment: it has no transport header.
    Fragment,
}

/// Why a packet could not be decoded. Small and `Copy`, meant to be counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The capture ends inside the link-layer header.
    TruncatedLink,
    /// The capture ends inside the IPv4/IPv6 header or its options/extension headers.
    TruncatedIp,
    /// The capture ends inside the TCP header (including its options).
    TruncatedTcp,
    /// The capture ends inside the UDP header.
    TruncatedUdp,
    /// The IP version nibble is neither 4 nor 6, or disagrees with the link layer.
    BadIpVersion,
    /// IPv4 header length below 20 bytes.
    BadIpHeaderLength,
    /// IPv4 total length shorter than the IPv4 header.
    BadIpTotalLength,
    /// TCP data offset below 5 words.
    BadTcpDataOffset,
    /// More VLAN tags than a sane network stacks.
    TooManyVlanTags,
    /// More IPv6 extension headers than [`MAX_IPV6_EXTENSION_HEADERS`]: only absurd
    /// inputs (a capture with over 64 KiB of extension headers and payload length 0),
    /// since the walk otherwise ends with the packet, as Linux's does. Kept so that the
    /// metric label set [`DecodeError::ALL`] stays stable.
    TooManyExtensionHeaders,
    /// A BSD loopback header names an address family that is not IP.
    UnknownLoopbackFamily,
    /// An IPv4 fragment whose header checksum is wrong: Linux drops it before it
    /// reassembles anything, so it takes no place among the fragments held.
    BadIpChecksum,
    /// An IPv6 extension header Linux refuses (see [`ipv6_header_refused`]): a
    /// hop-by-hop header anywhere but first, a routing header with segments left (or of
    /// a segment-routing or RPL type), options that break the padding rules, an
    /// unknown option whose type says "discard", more than eight options.
    BadIpv6Extension,
    /// An IPv6 packet from a multicast or an IPv4-mapped address: Linux drops the first
    /// on input and accepts no connection from the second (a closed port still answers
    /// it with a reset), which would otherwise also be counted as the IPv4 address it
    /// maps.
    BadIpv6Source,
}

impl DecodeError {
    /// Every kind, in a stable order (for summaries and metric labels).
    pub const ALL: [DecodeError; 14] = [
        Self::TruncatedLink,
        Self::TruncatedIp,
        Self::TruncatedTcp,
        Self::TruncatedUdp,
        Self::BadIpVersion,
        Self::BadIpHeaderLength,
        Self::BadIpTotalLength,
        Self::BadTcpDataOffset,
        Self::TooManyVlanTags,
        Self::TooManyExtensionHeaders,
        Self::UnknownLoopbackFamily,
        Self::BadIpChecksum,
        Self::BadIpv6Extension,
        Self::BadIpv6Source,
    ];

    /// A short snake_case name, stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruncatedLink => "truncated_link",
            Self::TruncatedIp => "truncated_ip",
            Self::TruncatedTcp => "truncated_tcp",
            Self::TruncatedUdp => "truncated_udp",
            Self::BadIpVersion => "bad_ip_version",
            Self::BadIpHeaderLength => "bad_ip_header_length",
            Self::BadIpTotalLength => "bad_ip_total_length",
            Self::BadTcpDataOffset => "bad_tcp_data_offset",
            Self::TooManyVlanTags => "too_many_vlan_tags",
            Self::TooManyExtensionHeaders => "too_many_extension_headers",
            Self::UnknownLoopbackFamily => "unknown_loopback_family",
            Self::BadIpChecksum => "bad_ip_checksum",
            Self::BadIpv6Extension => "bad_ipv6_extension",
            Self::BadIpv6Source => "bad_ipv6_source",
        }
    }

    /// Index into [`DecodeError::ALL`], for counting in a plain array.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DecodeError {}

/// The result of decoding one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decoded {
    Segment(Segment),
    Skipped(Skip),
}

/// How deep 802.1Q/802.1ad tags may stack before the packet is refused.
pub const MAX_VLAN_TAGS: usize = 8;
/// A backstop on the IPv6 extension-header walk, not a policy: like Linux, the walk
/// follows extension headers for as long as the packet's bytes last, and since each header
/// is at least 8 bytes, a payload length (at most 65535) holds fewer than this many. Only
/// a jumbogram or TSO capture (payload length 0, bounded by the capture) with more than
/// 64 KiB of extension headers can reach it, and gets
/// [`DecodeError::TooManyExtensionHeaders`].
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 8192;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

#[inline]
fn be16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[inline]
fn be32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Decodes one captured packet (`data` is what the capture holds, possibly cut short by
/// the snap length) framed as `link`.
///
/// IP fragments are judged alone: a non-first fragment is [`Skip::Fragment`], a first
/// fragment is decoded from the bytes it holds (so a first fragment cut inside the TCP
/// header is [`DecodeError::TruncatedTcp`]). [`Reassembler::decode`] collects them instead.
pub fn decode(link: LinkType, data: &[u8]) -> Result<Decoded, DecodeError> {
    parse(link, data, |at| at.read().decode_alone())
}

/// What a parse does with a fragment it meets: judge it alone ([`decode`]) or collect it
/// ([`Reassembler`]). Handing it to a closure, rather than returning it in a larger enum,
/// keeps every other packet's result on the path it always took (returned through an
/// enum, each packet's decode took twice as long).
pub(crate) trait OnFragment<'a>:
    FnOnce(FragmentAt<'a>) -> Result<Decoded, DecodeError>
{
}

impl<'a, F: FnOnce(FragmentAt<'a>) -> Result<Decoded, DecodeError>> OnFragment<'a> for F {}

/// Where a fragment is: its IP packet (from the IP header to the end the IP header
/// gives, within the capture), whose header fields the parse has checked, and for IPv6
/// the position of the fragment header (0 for IPv4, where no fragment header can be).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FragmentAt<'a> {
    ip: &'a [u8],
    frag_at: u32,
}

impl<'a> FragmentAt<'a> {
    /// The fragment's fields. The parse checked every length read here; the fallbacks
    /// only keep this panic-free should that ever change.
    #[inline(never)]
    pub(crate) fn read(self) -> Fragment<'a> {
        let ip = self.ip;
        let field = |at: usize| be16(ip, at).unwrap_or(0);
        let byte = |at: usize| ip.get(at).copied().unwrap_or(0);
        let addr4 = |at: usize| Ipv4Addr::from(be32(ip, at).unwrap_or(0));
        let addr6 = |at: usize| {
            let mut octets = [0u8; 16];
            if let Some(bytes) = ip.get(at..at + 16) {
                octets.copy_from_slice(bytes);
            }
            Ipv6Addr::from(octets)
        };
        if self.frag_at == 0 {
            let ihl = usize::from(byte(0) & 0x0f) * 4;
            let total = usize::from(field(2));
            let frag = field(6);
            Fragment {
                src: IpAddr::V4(addr4(12)),
                dst: IpAddr::V4(addr4(16)),
                id: u32::from(field(4)),
                v6: false,
                next: byte(9),
                offset: u32::from(frag & 0x1fff) * 8,
                more: frag & 0x2000 != 0,
                header_len: ihl as u32,
                claimed: (total != 0).then(|| total.saturating_sub(ihl) as u32),
                payload: ip.get(ihl..).unwrap_or(&[]),
                ip_len: if total == 0 { ip.len() } else { total },
            }
        } else {
            let at = self.frag_at as usize;
            let payload_len = usize::from(field(4));
            let ip_len = if payload_len == 0 {
                ip.len()
            } else {
                40 + payload_len
            };
            let frag = field(at + 2);
            Fragment {
                src: IpAddr::V6(addr6(8)),
                dst: IpAddr::V6(addr6(24)),
                id: be32(ip, at + 4).unwrap_or(0),
                v6: true,
                next: byte(at),
                offset: u32::from(frag & 0xfff8),
                more: frag & 1 != 0,
                header_len: at as u32,
                claimed: (payload_len != 0).then(|| ip_len.saturating_sub(at + 8) as u32),
                payload: ip.get(at + 8..).unwrap_or(&[]),
                ip_len,
            }
        }
    }
}

/// One IPv4 fragment (MF set or a non-zero offset), or one IPv6 packet with a fragment
/// header that makes it a fragment (not an atomic one, RFC 6946).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fragment<'a> {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    /// The IPv4 identification (16 bits) or the IPv6 fragment header's (32 bits).
    pub(crate) id: u32,
    pub(crate) v6: bool,
    /// IPv4: the protocol. IPv6: the fragment header's next header, the first header of
    /// the fragmentable part (it means something only in the first fragment).
    pub(crate) next: u8,
    /// Where this fragment's data starts in the fragmentable part, in bytes.
    pub(crate) offset: u32,
    /// More fragments follow (MF).
    pub(crate) more: bool,
    /// Bytes before the fragmentable part that a reassembled datagram keeps: the IPv4
    /// header, or the IPv6 header with its unfragmentable extension headers (the fragment
    /// header itself is removed by reassembly).
    pub(crate) header_len: u32,
    /// Fragment data length by the IP header; `None` when the header leaves it open
    /// (IPv4 total length 0, IPv6 payload length 0), which reassembly refuses.
    pub(crate) claimed: Option<u32>,
    /// The captured fragment data (at most `claimed` bytes; fewer under a snap length).
    pub(crate) payload: &'a [u8],
    /// What [`decode`] reports as [`Segment::ip_len`] for this packet alone.
    pub(crate) ip_len: usize,
}

impl Fragment<'_> {
    /// What [`decode`] makes of this fragment without reassembly.
    #[inline(never)]
    pub(crate) fn decode_alone(&self) -> Result<Decoded, DecodeError> {
        if self.offset != 0 {
            return Ok(Decoded::Skipped(Skip::Fragment));
        }
        if !self.v6 {
            return decode_transport(self.next, self.src, self.dst, self.payload, self.ip_len);
        }
        // A first IPv6 fragment: the rest of the chain, then the transport, from what
        // this fragment holds.
        match walk_ipv6(self.payload, self.next, 0)? {
            Walk::Upper { next, at } => {
                let payload = self.payload.get(at..).ok_or(DecodeError::TruncatedIp)?;
                decode_transport(next, self.src, self.dst, payload, self.ip_len)
            }
            Walk::Fragment { .. } => Ok(Decoded::Skipped(Skip::Fragment)),
        }
    }
}

/// The IP source and destination of a packet a Linux cooked capture (SLL, SLL2: what
/// `tcpdump -i any` writes) marks as having come in (any packet type but outgoing), read
/// from its IPv4 or IPv6 header; `None` for any other packet or link type, which do not
/// say which way a packet went.
pub fn came_in(link: LinkType, data: &[u8]) -> Option<(IpAddr, IpAddr)> {
    if cooked_outgoing(link, data)? {
        return None;
    }
    let (proto, payload) = match link {
        LinkType::LinuxSll => (be16(data, 14)?, 16),
        _ => (be16(data, 0)?, 20),
    };
    let (proto, l3) = behind_tags(data, proto, payload).ok()?;
    let ip = data.get(l3..)?;
    match proto {
        0x0800 if ip.len() >= 20 => {
            let at = |i: usize| Ipv4Addr::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]);
            Some((IpAddr::V4(at(12)), IpAddr::V4(at(16))))
        }
        0x86dd if ip.len() >= 40 => {
            let at = |i: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&ip[i..i + 16]);
                Ipv6Addr::from(b)
            };
            Some((IpAddr::V6(at(8)), IpAddr::V6(at(24))))
        }
        _ => None,
    }
}

/// Whether the host sent a packet of a Linux cooked capture (SLL, SLL2), by its packet
/// type (`PACKET_OUTGOING`, the one type of what the host sent); `None` for other link
/// types, which do not say, or a packet too short to.
pub fn cooked_outgoing(link: LinkType, data: &[u8]) -> Option<bool> {
    const OUTGOING: u16 = 4;
    let kind = match link {
        LinkType::LinuxSll => be16(data, 0)?,
        LinkType::LinuxSll2 => u16::from(*data.get(10)?),
        _ => return None,
    };
    Some(kind == OUTGOING)
}

/// [`decode`], with what to do about a fragment left to `on_fragment`.
#[inline]
pub(crate) fn parse<'a>(
    link: LinkType,
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    match link {
        LinkType::Ethernet => decode_ethernet(data, on_fragment),
        LinkType::Raw => decode_ip(data, on_fragment),
        LinkType::Ipv4 => decode_ipv4_checked(data, on_fragment),
        LinkType::Ipv6 => decode_ipv6_checked(data, on_fragment),
        LinkType::LinuxSll => {
            let proto = be16(data, 14).ok_or(DecodeError::TruncatedLink)?;
            let (proto, at) = behind_tags(data, proto, 16)?;
            decode_ethertype(proto, &data[at..], on_fragment)
        }
        LinkType::LinuxSll2 => {
            let proto = be16(data, 0).ok_or(DecodeError::TruncatedLink)?;
            let (proto, at) = behind_tags(data, proto, 20)?;
            let payload = data.get(at..).ok_or(DecodeError::TruncatedLink)?;
            decode_ethertype(proto, payload, on_fragment)
        }
        LinkType::Null | LinkType::Loop => {
            let raw = data.get(..4).ok_or(DecodeError::TruncatedLink)?;
            let raw = [raw[0], raw[1], raw[2], raw[3]];
            // NULL stores the family in the capturing host's byte order, LOOP in network
            // order; a family number is small, so whichever reading is small is right.
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(raw)
            } else {
                let le = u32::from_le_bytes(raw);
                if le <= 0xffff {
                    le
                } else {
                    u32::from_be_bytes(raw)
                }
            };
            let payload = &data[4..];
            match family {
                2 => decode_ipv4_checked(payload, on_fragment),
                // AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD/DragonFly, macOS.
                10 | 24 | 28 | 30 => decode_ipv6_checked(payload, on_fragment),
                _ => Err(DecodeError::UnknownLoopbackFamily),
            }
        }
    }
}

fn decode_ethernet<'a>(
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    let ethertype = be16(data, 12).ok_or(DecodeError::TruncatedLink)?;
    let (ethertype, offset) = behind_tags(data, ethertype, 14)?;
    decode_ethertype(ethertype, &data[offset..], on_fragment)
}

/// The ethertype and offset of the network header behind the VLAN tags (802.1Q,
/// 802.1ad, 0x9100) that may start at `payload`, the link header having said
/// `ethertype`: an Ethernet frame's, or a cooked capture's protocol field (libpcap puts
/// the tag it took from the packet's metadata back in).
fn behind_tags(
    data: &[u8],
    mut ethertype: u16,
    mut payload: usize,
) -> Result<(u16, usize), DecodeError> {
    let mut tags = 0;
    while matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return Err(DecodeError::TooManyVlanTags);
        }
        ethertype = be16(data, payload + 2).ok_or(DecodeError::TruncatedLink)?;
        payload += 4;
    }
    Ok((ethertype, payload))
}

fn decode_ethertype<'a>(
    ethertype: u16,
    payload: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    match ethertype {
        ETHERTYPE_IPV4 => decode_ipv4_checked(payload, on_fragment),
        ETHERTYPE_IPV6 => decode_ipv6_checked(payload, on_fragment),
        _ => Ok(Decoded::Skipped(Skip::NotIp)),
    }
}

fn decode_ip<'a>(data: &'a [u8], on_fragment: impl OnFragment<'a>) -> Result<Decoded, DecodeError> {
    match data.first() {
        Some(b) if b >> 4 == 4 => decode_ipv4(data, on_fragment),
        Some(b) if b >> 4 == 6 => decode_ipv6(data, on_fragment),
        Some(_) => Err(DecodeError::BadIpVersion),
        None => Err(DecodeError::TruncatedIp),
    }
}

fn decode_ipv4_checked<'a>(
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    match data.first() {
        Some(b) if b >> 4 == 4 => decode_ipv4(data, on_fragment),
        Some(_) => Err(DecodeError::BadIpVersion),
        None => Err(DecodeError::TruncatedIp),
    }
}

fn decode_ipv6_checked<'a>(
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    match data.first() {
        Some(b) if b >> 4 == 6 => decode_ipv6(data, on_fragment),
        Some(_) => Err(DecodeError::BadIpVersion),
        None => Err(DecodeError::TruncatedIp),
    }
}

fn decode_ipv4<'a>(
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    let header = data.get(..20).ok_or(DecodeError::TruncatedIp)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(DecodeError::BadIpHeaderLength);
    }
    if data.len() < ihl {
        return Err(DecodeError::TruncatedIp);
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // A total length of 0 is what TSO/GSO super-packets show in Linux captures; the
    // capture length is then the only bound there is.
    let end = if total == 0 {
        data.len()
    } else if total < ihl {
        return Err(DecodeError::BadIpTotalLength);
    } else {
        total.min(data.len())
    };
    let frag = u16::from_be_bytes([header[6], header[7]]);
    // MF (0x2000) or a fragment offset: a fragment (bit 0x8000 is reserved, 0x4000 DF).
    if frag & 0x3fff != 0 {
        // Linux checks the header before it reassembles (ip_rcv_core): a fragment with a
        // wrong checksum is dropped there. Held here, a flood of such never-completing
        // fragments would push out the real ones the kernel keeps and completes.
        if !ipv4_checksum_ok(&data[..ihl]) {
            return Err(DecodeError::BadIpChecksum);
        }
        return on_fragment(FragmentAt {
            ip: &data[..end],
            frag_at: 0,
        });
    }
    let src = IpAddr::V4(Ipv4Addr::new(
        header[12], header[13], header[14], header[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ));
    let ip_len = if total == 0 { data.len() } else { total };
    decode_transport(header[9], src, dst, &data[ihl..end], ip_len)
}

/// Whether an IPv4 header (options included) sums to all ones, as a correct one does.
fn ipv4_checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Writes the header checksum of the IPv4 packet `pkt` (its fields set): for tests that
/// build or change headers.
#[cfg(test)]
pub(crate) fn set_ipv4_checksum(pkt: &mut [u8]) {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    pkt[10..12].fill(0);
    let mut sum: u32 = pkt[..ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    pkt[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn decode_ipv6<'a>(
    data: &'a [u8],
    on_fragment: impl OnFragment<'a>,
) -> Result<Decoded, DecodeError> {
    let header = data.get(..40).ok_or(DecodeError::TruncatedIp)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    // Payload length 0 means a jumbogram (or a TSO capture): bounded by the capture.
    let end = if payload_len == 0 {
        data.len()
    } else {
        (40 + payload_len).min(data.len())
    };
    let ip_len = if payload_len == 0 {
        data.len()
    } else {
        40 + payload_len
    };
    let mut src = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&header[24..40]);
    let src = Ipv6Addr::from(src);
    if src.is_multicast() || src.to_ipv4_mapped().is_some() {
        return Err(DecodeError::BadIpv6Source);
    }
    let src = IpAddr::V6(src);
    let dst = IpAddr::V6(Ipv6Addr::from(dst));

    let data = &data[..end];
    match walk_ipv6(data, header[6], 40)? {
        Walk::Upper { next, at } => {
            let payload = data.get(at..).ok_or(DecodeError::TruncatedIp)?;
            decode_transport(next, src, dst, payload, ip_len)
        }
        // The walk read the fragment header's 8 bytes before it stopped there.
        Walk::Fragment { at } => on_fragment(FragmentAt {
            ip: data,
            frag_at: at as u32,
        }),
    }
}

/// An IPv6 packet's first fragment header, found as connection tracking's reassembly
/// finds it (`find_prev_fhdr`: extension headers stepped over by their lengths, none
/// judged), as a fragment. Conntrack takes two kinds of packet the stack's walk does not
/// give reassembly: one whose fragment header is atomic (offset 0, no more fragments:
/// RFC 6946; the stack walks through it, as [`decode`] does), and one behind an
/// extension header the stack refuses (`Reassembler::for_conntrack`). `None` for any
/// other packet.
pub(crate) fn fragment_header_v6(link: LinkType, data: &[u8]) -> Option<FragmentAt<'_>> {
    let (ethertype, at) = match link {
        LinkType::Ethernet => behind_tags(data, be16(data, 12)?, 14).ok()?,
        LinkType::LinuxSll => behind_tags(data, be16(data, 14)?, 16).ok()?,
        LinkType::LinuxSll2 => behind_tags(data, be16(data, 0)?, 20).ok()?,
        LinkType::Raw | LinkType::Ipv6 => (ETHERTYPE_IPV6, 0),
        LinkType::Null | LinkType::Loop => (ETHERTYPE_IPV6, 4),
        LinkType::Ipv4 => return None,
    };
    let ip = data.get(at..)?;
    if ethertype != ETHERTYPE_IPV6 || ip.first()? >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(ip, 4)?);
    if payload_len == 0 {
        return None;
    }
    let ip = ip.get(..(40 + payload_len).min(ip.len()))?;
    let (mut next, mut at) = (*ip.get(6)?, 40usize);
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        let ext = ip.get(at..at + 2)?;
        match next {
            44 => {
                ip.get(at..at + 8)?;
                return Some(FragmentAt {
                    ip,
                    frag_at: at as u32,
                });
            }
            0 | 43 | 60 | 51 => {}
            _ => return None,
        }
        let len = ext_len(next, ext[1]);
        // A first hop-by-hop header the stack refuses drops the packet on arrival
        // (`ip6_rcv_core`), before conntrack sees it.
        if next == 0 && at == 40 && ipv6_header_refused(0, ip.get(at..at + len)?, at, true, ip) {
            return None;
        }
        next = ext[0];
        at += len;
    }
    None
}

/// The length of an IPv6 extension header of type `next` whose length byte (its second)
/// is `len_byte`: the authentication header's in 4-octet units minus 2, the others' in
/// 8-octet units not counting the first 8.
pub(crate) fn ext_len(next: u8, len_byte: u8) -> usize {
    if next == 51 {
        (usize::from(len_byte) + 2) * 4
    } else {
        (usize::from(len_byte) + 1) * 8
    }
}

/// The segment of a packet the capture cut short, where [`decode`] found its TCP or
/// UDP header cut: `data` holds the first bytes of a packet that had `wire_len` bytes on
/// the wire (a pcap record's original length). An old capture's snap length (tcpdump
/// once defaulted to 68 bytes) cuts a SYN inside its TCP options; the host received the
/// whole header, so it is still an attempt. The packet is decoded again with the missing
/// bytes (up to `wire_len`, at most [`MAX_CUT_FILL`] more) filled once with zeros and
/// once with ones: only if both give the same segment, so that nothing it reports came
/// from a byte that was not captured, is it returned. A fragment never is (its bytes
/// matter to reassembly).
pub fn decode_cut(link: LinkType, data: &[u8], wire_len: usize) -> Option<Segment> {
    if wire_len <= data.len() {
        return None;
    }
    let filled = |byte: u8| {
        let mut whole = Vec::with_capacity(wire_len.min(data.len() + MAX_CUT_FILL));
        whole.extend_from_slice(data);
        whole.resize(wire_len.min(data.len() + MAX_CUT_FILL), byte);
        parse(link, &whole, |_| Err(DecodeError::TruncatedTcp))
    };
    match (filled(0), filled(0xff)) {
        (Ok(Decoded::Segment(a)), Ok(Decoded::Segment(b))) if a == b => Some(a),
        _ => None,
    }
}

/// Most bytes [`decode_cut`] fills in: a whole TCP header's options and more.
const MAX_CUT_FILL: usize = 64;

/// Where an IPv6 extension-header walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// At the upper-layer header `next`, which starts `at` bytes in (possibly past the
    /// end of the data, when the last extension header claims more than there is).
    Upper { next: u8, at: usize },
    /// At a fragment header that makes the packet a fragment, `at` bytes in.
    Fragment { at: usize },
}

/// Walks IPv6 extension headers from `at` in `data`, `next` being the type of the first,
/// the way Linux does: hop-by-hop, routing, destination options, AH and fragment headers
/// for as long as the bytes last. Each header is at least 8 bytes, so the walk ends with
/// the data; [`MAX_IPV6_EXTENSION_HEADERS`] is only a backstop against absurd inputs.
///
/// An atomic fragment header (offset 0, no MF) is walked through, as Linux does (RFC
/// 6946); any other fragment header stops the walk. Only one fragment header is taken:
/// Linux refuses a fragment header once the packet was defragmented (`ipv6_frag_rcv`:
/// after an atomic fragment header, and in a reassembled datagram, which is what a walk
/// from anywhere but the fixed header reads: a fragment's payload), and a fragment
/// header in a jumbogram (payload length 0).
pub(crate) fn walk_ipv6(data: &[u8], mut next: u8, mut at: usize) -> Result<Walk, DecodeError> {
    // Only a walk from the fixed header (byte 40 of the packet) starts where a hop-by-hop
    // header may be.
    let from_fixed_header = at == 40;
    let mut defragmented = !from_fixed_header;
    for i in 0..=MAX_IPV6_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                let ext = data.get(at..at + 2).ok_or(DecodeError::TruncatedIp)?;
                let len = ext_len(next, ext[1]);
                let header = data.get(at..at + len).ok_or(DecodeError::TruncatedIp)?;
                let first = i == 0 && from_fixed_header;
                if ipv6_header_refused(next, header, at, first, data) {
                    return Err(DecodeError::BadIpv6Extension);
                }
                next = ext[0];
                at += len;
            }
            // Fragment header: fixed 8 bytes; offset in the top 13 bits, MF the lowest.
            44 => {
                let ext = data.get(at..at + 8).ok_or(DecodeError::TruncatedIp)?;
                if defragmented {
                    return Err(DecodeError::BadIpv6Extension);
                }
                let field = u16::from_be_bytes([ext[2], ext[3]]);
                if field & 0xfff9 != 0 {
                    // A real fragment: reassembly judges it (a jumbogram's included).
                    return Ok(Walk::Fragment { at });
                }
                if data.get(4..6) == Some(&[0, 0]) {
                    return Err(DecodeError::BadIpv6Extension);
                }
                defragmented = true;
                next = ext[0];
                at += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let ext = data.get(at..at + 2).ok_or(DecodeError::TruncatedIp)?;
                at += ext_len(next, ext[1]);
                next = ext[0];
            }
            _ => return Ok(Walk::Upper { next, at }),
        }
    }
    Err(DecodeError::TooManyExtensionHeaders)
}

/// Whether Linux drops a packet for its hop-by-hop (`kind` 0), routing (43) or
/// destination-options (60) extension header `header`, `at` bytes into the packet `ip`
/// (which starts with the fixed IPv6 header when the walk did), `first` if it directly
/// follows the fixed header. As `net/ipv6/exthdrs.c` (`ip6_parse_tlv`,
/// `ipv6_rthdr_rcv`) and `ip6_input.c` judge them on a host with the default sysctls:
/// - hop-by-hop only first (later, it is an unknown next header);
/// - routing: segment routing (type 4) and RPL (3) are off by default, and any type is
///   refused while it has segments left; a mobility header (2) with none left is taken:
///   a kernel built with Mobile IPv6 discards it unless it processed it itself, one
///   without (as some are) takes it and answers the SYN, so it counts (a scanner's SYN
///   seen where a kernel dropped it costs nothing; one missed where a kernel answered it
///   hides a scan);
/// - options: at most 7 padding bytes in a row, PadN bytes all zero, at most 8 other
///   options (`max_{hbh,dst}_opts_number`), none running past the header, an unknown
///   option whose type's top bits say anything but "skip" discards the packet; known
///   ones: router alert (length 2), jumbo payload (length 4, only with payload length
///   0, above 65,535), CALIPSO (length 8 or more), IOAM (4-byte aligned) in hop-by-hop,
///   the home address option in destination options (discarded: there is no mobility
///   binding for it).
fn ipv6_header_refused(kind: u8, header: &[u8], at: usize, first: bool, ip: &[u8]) -> bool {
    match kind {
        0 if !first => true,
        43 => {
            let (kind, left) = (header[2], header[3]);
            matches!(kind, 3 | 4) || left != 0
        }
        _ => {
            let payload_len_zero = ip.get(4..6) == Some(&[0, 0]);
            ipv6_options_refused(&header[2..], at + 2, kind == 0, payload_len_zero)
        }
    }
}

/// `ip6_parse_tlv` over the options `opts`, which start `at` bytes into the packet.
fn ipv6_options_refused(opts: &[u8], at: usize, hop_by_hop: bool, payload_len_zero: bool) -> bool {
    const MAX_OPTIONS: usize = 8;
    let (mut off, mut padding, mut options) = (0, 0, 0);
    while off < opts.len() {
        let kind = opts[off];
        if kind == 0 {
            padding += 1;
            if padding > 7 {
                return true;
            }
            off += 1;
            continue;
        }
        let Some(&len) = opts.get(off + 1) else {
            return true;
        };
        let len = usize::from(len) + 2;
        let Some(option) = opts.get(off..off + len) else {
            return true;
        };
        if kind == 1 {
            padding += len;
            if padding > 7 || option[2..].iter().any(|&b| b != 0) {
                return true;
            }
        } else {
            options += 1;
            if options > MAX_OPTIONS {
                return true;
            }
            let refused = match (hop_by_hop, kind) {
                (true, 0x05) => len != 4,
                (true, 0xc2) => {
                    let jumbo = option
                        .get(2..6)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    len != 6
                        || (at + off) % 4 != 2
                        || !payload_len_zero
                        || jumbo.is_none_or(|j| j <= 65_535)
                }
                (true, 0x07) => len < 10 || usize::from(option[6]) * 4 + 8 > len - 2,
                (true, 0x31) => !(at + off).is_multiple_of(4),
                (false, 0xc9) => true,
                _ => kind >> 6 != 0,
            };
            if refused {
                return true;
            }
            padding = 0;
        }
        off += len;
    }
    false
}

#[inline]
fn decode_transport(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    payload: &[u8],
    ip_len: usize,
) -> Result<Decoded, DecodeError> {
    transport(proto, src, dst, payload, payload.len(), ip_len)
}

/// Judges a transport header of which `head` holds the first bytes (at least the 20 of a
/// TCP base header, or all there are) and `len` bytes are present in all.
#[inline]
pub(crate) fn transport(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    head: &[u8],
    len: usize,
    ip_len: usize,
) -> Result<Decoded, DecodeError> {
    let ip_len = u32::try_from(ip_len).unwrap_or(u32::MAX);
    match proto {
        PROTO_TCP => {
            let ports = be32(head, 0).ok_or(DecodeError::TruncatedTcp)?;
            let Some(&[offset_byte, flags]) = head.get(12..14) else {
                return Err(DecodeError::TruncatedTcp);
            };
            let header_len = usize::from(offset_byte >> 4) * 4;
            if header_len < 20 {
                return Err(DecodeError::BadTcpDataOffset);
            }
            if len < header_len {
                return Err(DecodeError::TruncatedTcp);
            }
            Ok(Decoded::Segment(Segment {
                src,
                dst,
                sport: (ports >> 16) as u16,
                dport: ports as u16,
                transport: Transport::Tcp(TcpFlags(flags)),
                ip_len,
            }))
        }
        PROTO_UDP => {
            let ports = be32(head, 0).ok_or(DecodeError::TruncatedUdp)?;
            if len < 8 {
                return Err(DecodeError::TruncatedUdp);
            }
            Ok(Decoded::Segment(Segment {
                src,
                dst,
                sport: (ports >> 16) as u16,
                dport: ports as u16,
                transport: Transport::Udp,
                ip_len,
            }))
        }
        _ => Ok(Decoded::Skipped(Skip::OtherProtocol)),
    }
}

#[cfg(test)]
mod tests;
