//! The byte layouts shared with the C program in `bpf/synwatch.bpf.c`, and the pure
//! parsing of what it writes. Nothing here touches the kernel, so it is unit-tested
//! anywhere; the C side's structs must stay in step with these offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

/// Ports one source's track holds in the kernel: `max_ports + 1` must fit.
pub const TRACK_PORTS: u16 = 16;
/// Interfaces whose counters are kept apart (more share the last slot's).
pub const SLOTS: u32 = 64;
/// The size of the program's ifindex -> slot array (indexed modulo this).
pub const IFSLOTS: u32 = 4096;
/// The most interfaces whose index shares an entry of that array with another's.
pub const IFSLOTS_MORE: u32 = 1024;

/// `config.flags`: report every probe through the ring buffer (the XDP source).
pub const CFG_EMIT: u32 = 1;
/// `config.flags`: detect scans in the kernel and ban them there.
pub const CFG_DETECT: u32 = 2;
/// `config.flags`: a ban drops only new connections and probes.
pub const CFG_SCOPE_NEW: u32 = 4;
/// `config.flags`: judge SYN retransmissions in the kernel (`config.same_ns`), and send
/// up only new attempts.
pub const CFG_SAME: u32 = 8;

/// `event.kind`: a SYN without ACK or a stealth probe.
pub const EV_PROBE: u8 = 1;
/// `event.kind`: this packet took its source over `max_ports`; the kernel banned the
/// source and dropped the packet.
pub const EV_BANNED: u8 = 2;
/// `raw_event.kind`: a packet the program could not judge, handed up whole (up to
/// [`RAW_CAP`] bytes of it) for user space to decode and reassemble.
pub const EV_RAW: u8 = 4;
/// Where both record layouts keep their kind byte.
pub const KIND_AT: usize = 46;
/// The size of `struct raw_event`'s header; the packet bytes follow it.
pub const RAW_HEADER: usize = 48;
/// The most bytes of a raw packet (from its L3 header on) one record carries:
/// libpcap's snap length (`synwatch_capture::live::SNAPLEN`), so that user space
/// reaches every TCP header libpcap reaches, behind however long a header chain. Longer
/// packets are cut there and counted in [`Counter::RawTruncated`]. A record takes only
/// the bytes it carries of the ring (see [`raw_record_cost`]).
pub const RAW_CAP: usize = 9216;

/// The bytes an IPv4 fragment that cannot hold part of a TCP header (another protocol's,
/// or one at offset 60 or beyond) brings up: its IP header and a little. Reassembly needs
/// its place in the datagram (every fragment counts toward `ipfrag_max_dist`, and an
/// overlap anywhere discards the datagram), not its data.
pub const FRAG_HEAD: usize = 64;

/// What a raw record of a packet of `len` bytes (from its L3 header on) takes of the
/// ring: the ring's 8-byte header, [`RAW_HEADER`] and the bytes copied, rounded up to 8.
pub const fn raw_record_cost(len: usize) -> usize {
    let copied = if len < RAW_CAP { len } else { RAW_CAP };
    (8 + RAW_HEADER + copied).next_multiple_of(8)
}

/// The size of the ring buffer `events` (`RING_BYTES` in C). A record takes the ring's
/// 8-byte header plus its own length, rounded up to 8.
pub const RING_BYTES: usize = 1 << 22;

/// The per-interface counters, in the order of the C enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Packets = 0,
    Events = 1,
    RingbufFull = 2,
    Dropped = 3,
    DroppedBytes = 4,
    KernelBans = 5,
    PassedUnparsed = 6,
    /// Raw records (packets the program could not judge) sent up the ring.
    RawRecords = 7,
    /// Raw records whose packet was longer than [`RAW_CAP`] and was cut.
    RawTruncated = 8,
    /// SYNs the program judged retransmissions (`CFG_SAME`) and did not send up.
    Retransmissions = 9,
    /// Malformed packets the program judges, counted by the kind decode() gives them
    /// (not handed up, so that a flood of them takes no room in the ring): the Ethernet
    /// header or a VLAN tag cut short (`truncated_link`),
    BadLink = 10,
    /// a 9th VLAN tag (`too_many_vlan_tags`),
    VlanTags = 11,
    /// the IP header or its options cut short (`truncated_ip`),
    TruncatedIp = 12,
    /// an IP version that disagrees with the EtherType (`bad_ip_version`),
    BadVersion = 13,
    /// an IPv4 header length below 20 bytes (`bad_ip_header_length`),
    BadIhl = 14,
    /// an IPv4 total length below the header's (`bad_ip_total_length`),
    BadTotal = 15,
    /// the TCP header or its options cut short (`truncated_tcp`),
    TruncatedTcp = 16,
    /// a TCP data offset below 5 (`bad_tcp_data_offset`).
    BadDoff = 17,
}

/// Counters per slot in the per-CPU array.
pub const COUNTERS_PER_SLOT: u32 = 32;

impl Counter {
    pub const ALL: [Counter; 18] = [
        Counter::Packets,
        Counter::Events,
        Counter::RingbufFull,
        Counter::Dropped,
        Counter::DroppedBytes,
        Counter::KernelBans,
        Counter::PassedUnparsed,
        Counter::RawRecords,
        Counter::RawTruncated,
        Counter::Retransmissions,
        Counter::BadLink,
        Counter::VlanTags,
        Counter::TruncatedIp,
        Counter::BadVersion,
        Counter::BadIhl,
        Counter::BadTotal,
        Counter::TruncatedTcp,
        Counter::BadDoff,
    ];

    /// The malformed-packet counters, each with the name of the kind decode() gives
    /// what it counts (`DecodeError::as_str`).
    pub const MALFORMED: [(Counter, &'static str); 8] = [
        (Counter::BadLink, "truncated_link"),
        (Counter::VlanTags, "too_many_vlan_tags"),
        (Counter::TruncatedIp, "truncated_ip"),
        (Counter::BadVersion, "bad_ip_version"),
        (Counter::BadIhl, "bad_ip_header_length"),
        (Counter::BadTotal, "bad_ip_total_length"),
        (Counter::TruncatedTcp, "truncated_tcp"),
        (Counter::BadDoff, "bad_tcp_data_offset"),
    ];

    /// The key of this counter for interface slot `slot`.
    pub fn key(self, slot: u32) -> u32 {
        slot.min(SLOTS - 1) * COUNTERS_PER_SLOT + self as u32
    }
}

/// `struct config`: what the program is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub window_ns: u64,
    /// A kernel ban's first length in nanoseconds; 0 lasts until user space lifts it.
    pub ban_ns: u64,
    pub max_ports: u32,
    pub flags: u32,
    /// `--ipv6-prefix`: in-kernel detection counts an IPv6 source as its network of
    /// this many bits (1..=127) unless `peraddr6` holds it; 0 or 128: per address.
    pub ipv6_prefix: u32,
    /// With [`CFG_SAME`]: a SYN whose 4-tuple was last seen at most this many
    /// nanoseconds ago is a retransmission (the detector's window).
    pub same_ns: u64,
}

/// The size of `struct config`.
pub const CONFIG_LEN: usize = 40;

impl Config {
    pub fn to_bytes(self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.window_ns.to_ne_bytes());
        b[8..16].copy_from_slice(&self.ban_ns.to_ne_bytes());
        b[16..20].copy_from_slice(&self.max_ports.to_ne_bytes());
        b[20..24].copy_from_slice(&self.flags.to_ne_bytes());
        b[24..28].copy_from_slice(&self.ipv6_prefix.to_ne_bytes());
        b[32..40].copy_from_slice(&self.same_ns.to_ne_bytes());
        b
    }

    /// The flags and `same_ns` of a config as [`Config::to_bytes`] wrote it.
    pub fn same_of(b: &[u8; CONFIG_LEN]) -> Option<u64> {
        let flags = u32::from_ne_bytes(b[20..24].try_into().ok()?);
        let same = u64::from_ne_bytes(b[32..40].try_into().ok()?);
        (flags & CFG_SAME != 0).then_some(same)
    }
}

/// The size of `struct tuple`, the key of the `attempts` map.
pub const TUPLE_LEN: usize = 40;

/// The `attempts` key of a SYN's 4-tuple, as the program builds it from its event: the
/// addresses in the first 4 or 16 bytes of two 16-byte fields, the ports in host order,
/// the family; `None` when the two addresses are of different families.
pub fn tuple_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<[u8; TUPLE_LEN]> {
    let mut k = [0u8; TUPLE_LEN];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            k[0..4].copy_from_slice(&s.octets());
            k[16..20].copy_from_slice(&d.octets());
            k[36] = 4;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            k[0..16].copy_from_slice(&s.octets());
            k[16..32].copy_from_slice(&d.octets());
            k[36] = 6;
        }
        _ => return None,
    }
    k[32..34].copy_from_slice(&sport.to_ne_bytes());
    k[34..36].copy_from_slice(&dport.to_ne_bytes());
    Some(k)
}

/// `struct ban`: the value of `ban4`/`ban6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BanValue {
    /// Boot-clock nanoseconds when the ban ends; 0 lasts until removed.
    pub expires: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Drops only new connections and probes (the source held an established connection
    /// when it was banned). The top bit of `expires` in the map (`BAN_NEW_ONLY` in C):
    /// boot-clock nanoseconds never reach it.
    pub new_only: bool,
}

/// `BAN_NEW_ONLY`: the flag bit of a ban's `expires` word.
pub const BAN_NEW_ONLY: u64 = 1 << 63;

impl BanValue {
    pub fn to_words(self) -> [u64; 3] {
        let flag = if self.new_only { BAN_NEW_ONLY } else { 0 };
        [
            // An end past the flag bit (a ban for centuries, `now` plus a saturated
            // length) is the farthest end there is, not its low bits (which were in
            // the past: the ban was announced and not enforced).
            self.expires.min(BAN_NEW_ONLY - 1) | flag,
            self.packets,
            self.bytes,
        ]
    }

    pub fn from_words(w: [u64; 3]) -> Self {
        Self {
            expires: w[0] & !BAN_NEW_ONLY,
            packets: w[1],
            bytes: w[2],
            new_only: w[0] & BAN_NEW_ONLY != 0,
        }
    }
}

/// The size of `struct event`.
pub const EVENT_LEN: usize = 56;

/// One ring buffer record, as [`crate::Ring::wait`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A probe the program judged (and maybe the ban it decided).
    Probe(Event),
    /// A packet it could not judge: user space decodes it.
    Raw(RawPacket),
}

impl Record {
    /// Parses a record of either kind, by its kind byte; `None` for anything this crate
    /// and the program do not agree on. Never panics, whatever the bytes.
    pub fn parse(b: &[u8]) -> Option<Record> {
        if *b.get(KIND_AT)? == EV_RAW {
            RawPacket::parse(b).map(Record::Raw)
        } else {
            Event::parse(b).map(Record::Probe)
        }
    }
}

/// `struct raw_event`: a packet handed up as it arrived, from its L3 header on (decode
/// it as `LinkType::Raw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Boot-clock nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_boot: u64,
    pub ifindex: u32,
    /// How many bytes the frame held from the L3 header on.
    pub len: u32,
    /// The first `min(len, RAW_CAP)` of them ([`FRAG_HEAD`] of a fragment that cannot
    /// hold part of a TCP header).
    pub bytes: Vec<u8>,
}

impl RawPacket {
    /// Parses a raw record: the header, then exactly `copied` bytes (all of the packet
    /// up to [`RAW_CAP`], or at least [`FRAG_HEAD`] of it); `None` when the lengths
    /// disagree or the kind is not [`EV_RAW`].
    pub fn parse(b: &[u8]) -> Option<RawPacket> {
        if *b.get(KIND_AT)? != EV_RAW {
            return None;
        }
        let u32_at = |o: usize| b.get(o..o + 4)?.try_into().ok().map(u32::from_ne_bytes);
        let ts_boot = b.get(0..8)?.try_into().ok().map(u64::from_ne_bytes)?;
        let ifindex = u32_at(8)?;
        let len = u32_at(12)?;
        let copied = usize::from(b.get(16..18)?.try_into().ok().map(u16::from_ne_bytes)?);
        let whole = usize::try_from(len).ok()?.min(RAW_CAP);
        if copied == 0 || copied > whole || (copied < whole && copied < FRAG_HEAD) {
            return None;
        }
        let bytes = b.get(RAW_HEADER..RAW_HEADER + copied)?.to_vec();
        Some(RawPacket {
            ts_boot,
            ifindex,
            len,
            bytes,
        })
    }

    /// Whether the packet was longer than what the record carries.
    pub fn truncated(&self) -> bool {
        usize::try_from(self.len).map_or(true, |l| l > self.bytes.len())
    }
}

/// A probe record: a probe the program saw, and whether it banned its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Boot-clock nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_boot: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags byte.
    pub flags: u8,
    /// `EV_PROBE` and/or `EV_BANNED`.
    pub kind: u8,
    /// With `EV_BANNED`: the length of the IPv6 network the program counted the source
    /// as and banned (see [`Event::banned_net`]); 0 when it counted the address.
    pub prefix: u8,
    pub ifindex: u32,
}

impl Event {
    /// Parses a probe record; `None` for one of the wrong size, an unknown family or
    /// a kind that is not a probe's (which would mean the program and this crate are
    /// out of step). Never panics, whatever the bytes.
    pub fn parse(b: &[u8]) -> Option<Event> {
        if b.len() < EVENT_LEN {
            return None;
        }
        let kind = *b.get(KIND_AT)?;
        if kind == 0 || kind & !(EV_PROBE | EV_BANNED) != 0 {
            return None;
        }
        let u64_at = |o: usize| b.get(o..o + 8)?.try_into().ok().map(u64::from_ne_bytes);
        let u16_at = |o: usize| b.get(o..o + 2)?.try_into().ok().map(u16::from_ne_bytes);
        let addr_at = |o: usize, family: u8| -> Option<IpAddr> {
            match family {
                4 => {
                    let a: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
                    Some(IpAddr::V4(Ipv4Addr::from(a)))
                }
                6 => {
                    let a: [u8; 16] = b.get(o..o + 16)?.try_into().ok()?;
                    Some(IpAddr::V6(Ipv6Addr::from(a)))
                }
                _ => None,
            }
        };
        let family = *b.get(45)?;
        Some(Event {
            ts_boot: u64_at(0)?,
            src: addr_at(8, family)?,
            dst: addr_at(24, family)?,
            sport: u16_at(40)?,
            dport: u16_at(42)?,
            flags: *b.get(44)?,
            kind,
            prefix: *b.get(47)?,
            ifindex: b.get(48..52)?.try_into().ok().map(u32::from_ne_bytes)?,
        })
    }

    pub fn probe(&self) -> bool {
        self.kind & EV_PROBE != 0
    }

    pub fn banned(&self) -> bool {
        self.kind & EV_BANNED != 0
    }

    /// What the program banned with this packet (when [`Event::banned`]): the source's
    /// IPv6 network when it counted the source per prefix, else the address.
    pub fn banned_net(&self) -> IpNet {
        match self.src {
            IpAddr::V6(a) if (1..128).contains(&self.prefix) => {
                Ipv6Net::new(a, self.prefix).map_or(IpNet::from(self.src), |n| IpNet::V6(n.trunc()))
            }
            _ => IpNet::from(self.src),
        }
    }
}

/// The key of an address in `ban4`/`track4` (network byte order, as the packet has it).
pub fn key4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(family: u8, kind: u8) -> Vec<u8> {
        let mut b = vec![0u8; EVENT_LEN];
        b[0..8].copy_from_slice(&123_456_789u64.to_ne_bytes());
        if family == 4 {
            b[8..12].copy_from_slice(&[192, 0, 2, 7]);
            b[24..28].copy_from_slice(&[10, 0, 0, 1]);
        } else {
            b[8..24].copy_from_slice(
                &"2001:db8::7"
                    .parse::<Ipv6Addr>()
                    .map_or([0; 16], |a| a.octets()),
            );
            b[24..40].copy_from_slice(
                &"fd00::1"
                    .parse::<Ipv6Addr>()
                    .map_or([0; 16], |a| a.octets()),
            );
        }
        b[40..42].copy_from_slice(&40000u16.to_ne_bytes());
        b[42..44].copy_from_slice(&22u16.to_ne_bytes());
        b[44] = 0x02;
        b[45] = family;
        b[46] = kind;
        b[47] = if family == 6 { 64 } else { 0 };
        b[48..52].copy_from_slice(&7u32.to_ne_bytes());
        b
    }

    #[test]
    fn an_ipv4_record_parses_field_by_field() {
        let e = Event::parse(&record(4, EV_PROBE | EV_BANNED)).expect("parses");
        assert_eq!(e.ts_boot, 123_456_789);
        assert_eq!(e.src, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(e.dst, IpAddr::from([10, 0, 0, 1]));
        assert_eq!((e.sport, e.dport, e.flags, e.ifindex), (40000, 22, 0x02, 7));
        assert!(e.probe() && e.banned());
    }

    #[test]
    fn an_ipv6_record_parses() {
        let e = Event::parse(&record(6, EV_BANNED)).expect("parses");
        assert_eq!(e.src.to_string(), "2001:db8::7");
        assert_eq!(e.dst.to_string(), "fd00::1");
        assert!(!e.probe() && e.banned());
        assert_eq!(e.prefix, 64);
        assert_eq!(e.banned_net().to_string(), "2001:db8::/64");
        let per_address = Event { prefix: 0, ..e };
        assert_eq!(per_address.banned_net().to_string(), "2001:db8::7/128");
        let v4 = Event::parse(&record(4, EV_BANNED)).expect("parses");
        assert_eq!(v4.banned_net().to_string(), "192.0.2.7/32");
    }

    #[test]
    fn short_records_and_unknown_families_are_refused() {
        assert_eq!(Event::parse(&record(4, 1)[..EVENT_LEN - 1]), None);
        assert_eq!(Event::parse(&record(5, 1)), None);
        assert_eq!(Event::parse(&[]), None);
    }

    /// The C program's `struct lpm4`/`struct lpm6` (its `_Static_assert`s say 8 and 20),
    /// the keys of the range-ban tries bannet4/bannet6 and the allowlist tries.
    #[test]
    fn lpm_keys_are_the_c_structs() {
        use aya::maps::lpm_trie::Key;
        assert_eq!(std::mem::size_of::<Key<[u8; 4]>>(), 8);
        assert_eq!(std::mem::size_of::<Key<[u8; 16]>>(), 20);
        let k = Key::new(24, [198u8, 51, 100, 0]);
        assert_eq!((k.prefix_len(), k.data()), (24, [198, 51, 100, 0]));
    }

    #[test]
    fn a_ban_on_new_connections_only_is_the_top_bit_of_its_end() {
        let v = BanValue {
            expires: 5_000,
            packets: 1,
            bytes: 2,
            new_only: true,
        };
        let w = v.to_words();
        assert_eq!(w, [BAN_NEW_ONLY | 5_000, 1, 2]);
        assert_eq!(BanValue::from_words(w), v);
        let all = BanValue {
            new_only: false,
            ..v
        };
        assert_eq!(all.to_words()[0], 5_000);
        assert_eq!(BanValue::from_words(all.to_words()), all);
    }

    #[test]
    fn an_end_past_the_flag_bit_is_the_farthest_end_not_a_past_one() {
        // `--ban 2562047h` on a machine up for an hour: boot time plus the length passes
        // 2^63 ns; masked, the end was an hour into boot time, long gone.
        let hour = 3_600_000_000_000u64;
        for expires in [(1 << 63) + hour, u64::MAX] {
            for new_only in [false, true] {
                let v = BanValue {
                    expires,
                    packets: 0,
                    bytes: 0,
                    new_only,
                };
                let back = BanValue::from_words(v.to_words());
                assert_eq!(back.expires, BAN_NEW_ONLY - 1, "{expires}");
                assert_eq!(back.new_only, new_only);
            }
        }
    }

    #[test]
    fn config_bytes_follow_the_c_struct() {
        let b = Config {
            window_ns: 60_000_000_000,
            ban_ns: 3_600_000_000_000,
            max_ports: 3,
            flags: CFG_EMIT | CFG_DETECT,
            ipv6_prefix: 64,
            same_ns: 0,
        }
        .to_bytes();
        assert_eq!(
            u64::from_ne_bytes(b[0..8].try_into().unwrap_or_default()),
            60_000_000_000
        );
        assert_eq!(
            u32::from_ne_bytes(b[16..20].try_into().unwrap_or_default()),
            3
        );
        assert_eq!(
            u32::from_ne_bytes(b[20..24].try_into().unwrap_or_default()),
            3
        );
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap_or_default()),
            64
        );
        assert_eq!(Config::same_of(&b), None);
        let same = Config {
            flags: CFG_EMIT | CFG_SAME,
            same_ns: 60_000_000_000,
            ..Config::default()
        }
        .to_bytes();
        assert_eq!(Config::same_of(&same), Some(60_000_000_000));
    }

    #[test]
    fn tuple_keys_follow_the_c_struct() {
        let k = tuple_key(
            IpAddr::from([192, 0, 2, 7]),
            IpAddr::from([10, 0, 0, 1]),
            40000,
            22,
        )
        .unwrap_or([0; TUPLE_LEN]);
        assert_eq!(&k[0..4], &[192, 0, 2, 7]);
        assert!(k[4..16].iter().all(|&b| b == 0));
        assert_eq!(&k[16..20], &[10, 0, 0, 1]);
        assert_eq!(u16::from_ne_bytes([k[32], k[33]]), 40000);
        assert_eq!(u16::from_ne_bytes([k[34], k[35]]), 22);
        assert_eq!(&k[36..40], &[4, 0, 0, 0]);
        let v6: IpAddr = "2001:db8::7".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let k6 = tuple_key(v6, v6, 1, 2).unwrap_or([0; TUPLE_LEN]);
        assert_eq!(k6[36], 6);
        assert_eq!(tuple_key(v6, IpAddr::from([10, 0, 0, 1]), 1, 2), None);
    }

    #[test]
    fn counter_keys_stay_inside_the_array() {
        assert_eq!(Counter::Dropped.key(0), 3);
        assert_eq!(Counter::Packets.key(2), 64);
        assert_eq!(Counter::PassedUnparsed.key(1000), (SLOTS - 1) * 32 + 6);
        assert_eq!(Counter::RawTruncated.key(1), 32 + 8);
        for c in Counter::ALL {
            assert!((c as u32) < COUNTERS_PER_SLOT, "{c:?} fits a slot");
        }
        // Each malformed-packet counter names a kind decode() gives.
        for (c, name) in Counter::MALFORMED {
            assert!(
                synwatch_decode::DecodeError::ALL
                    .iter()
                    .any(|k| k.as_str() == name),
                "{c:?}: {name}"
            );
        }
    }

    fn raw_record(len: u32, packet: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; RAW_HEADER];
        b[0..8].copy_from_slice(&987_654_321u64.to_ne_bytes());
        b[8..12].copy_from_slice(&3u32.to_ne_bytes());
        b[12..16].copy_from_slice(&len.to_ne_bytes());
        let copied = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        b[16..18].copy_from_slice(&copied.to_ne_bytes());
        b[KIND_AT] = EV_RAW;
        b.extend_from_slice(packet);
        b
    }

    #[test]
    fn a_raw_record_parses_with_its_bytes() {
        let packet: Vec<u8> = (0..28u8).collect();
        let r = Record::parse(&raw_record(28, &packet)).expect("parses");
        let Record::Raw(r) = r else {
            panic!("a raw record: {r:?}")
        };
        assert_eq!((r.ts_boot, r.ifindex, r.len), (987_654_321, 3, 28));
        assert_eq!(r.bytes, packet);
        assert!(!r.truncated());
        // Cut at the cap: the length says how long the packet was.
        let long = vec![0x45u8; RAW_CAP];
        let Some(Record::Raw(r)) = Record::parse(&raw_record(10_000, &long)) else {
            panic!("a truncated raw record parses")
        };
        assert_eq!((r.len, r.bytes.len()), (10_000, RAW_CAP));
        assert!(r.truncated());
    }

    #[test]
    fn raw_records_whose_lengths_disagree_are_refused() {
        let packet = [0x45u8; 40];
        // Fewer bytes than `copied` says, a `copied` that is not min(len, cap), none.
        assert_eq!(
            Record::parse(&raw_record(40, &packet)[..RAW_HEADER + 39]),
            None
        );
        assert_eq!(Record::parse(&raw_record(41, &packet)), None);
        assert_eq!(Record::parse(&raw_record(0, &[])), None);
        // A fragment's head: FRAG_HEAD bytes of a longer packet parse, fewer do not.
        let head = [0x45u8; FRAG_HEAD];
        let Some(Record::Raw(r)) = Record::parse(&raw_record(1500, &head)) else {
            panic!("a fragment's head parses")
        };
        assert_eq!((r.len, r.bytes.len()), (1500, FRAG_HEAD));
        assert!(r.truncated());
        assert_eq!(
            Record::parse(&raw_record(1500, &head[..FRAG_HEAD - 1])),
            None
        );
        assert_eq!(
            Record::parse(&raw_record(10_000, &vec![0x45u8; RAW_CAP + 1])),
            None
        );
        assert_eq!(RawPacket::parse(&record(4, EV_PROBE)), None);
        // A probe record is not a raw one and the other way round.
        assert_eq!(Event::parse(&raw_record(40, &packet)), None);
        assert!(matches!(
            Record::parse(&record(4, EV_PROBE)),
            Some(Record::Probe(_))
        ));
    }

    #[test]
    fn record_layout_constants_follow_the_c_structs() {
        // struct event: kind at 46; struct raw_event: kind at 46, data at 48, RAW_CAP
        // bytes of it (the _Static_asserts in bpf/synwatch.bpf.c hold the C side).
        assert_eq!(KIND_AT, 46);
        assert_eq!(RAW_HEADER, 48);
        assert_eq!(RAW_CAP, 9216);
        assert_eq!(FRAG_HEAD, 64);
        // raw_event.copied is 16 bits; a whole record fits the ring.
        const {
            assert!(RAW_CAP <= u16::MAX as usize);
            assert!(raw_record_cost(RAW_CAP) <= RING_BYTES);
        }
        // nmap -f's 28-byte fragments take what they took with a 512-byte cap.
        assert_eq!(raw_record_cost(28), 88);
        assert_eq!(raw_record_cost(512), 568);
        assert_eq!(raw_record_cost(1500), 1560);
        assert_eq!(raw_record_cost(RAW_CAP), 9272);
        assert_eq!(raw_record_cost(60_000), 9272);
        const {
            assert!(KIND_AT < EVENT_LEN && KIND_AT < RAW_HEADER);
            assert!(EV_RAW & (EV_PROBE | EV_BANNED) == 0);
        }
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_parsing_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..10_000)) {
            let _ = Record::parse(&b);
            let _ = Event::parse(&b);
            let _ = RawPacket::parse(&b);
        }

        #[test]
        fn any_raw_record_with_a_raw_kind_byte_parses_or_is_refused_cleanly(
            len in 0u32..20_000,
            fill in proptest::num::u8::ANY,
            cut in 0usize..10_000,
        ) {
            let packet = vec![fill; usize::try_from(len).unwrap_or(0).min(RAW_CAP)];
            let mut b = raw_record(len, &packet);
            b.truncate(cut.max(KIND_AT + 1));
            match Record::parse(&b) {
                Some(Record::Raw(r)) => {
                    proptest::prop_assert_eq!(r.bytes.len(), packet.len());
                    proptest::prop_assert_eq!(r.len, len);
                }
                Some(Record::Probe(p)) => proptest::prop_assert!(false, "a probe: {p:?}"),
                None => proptest::prop_assert!(len == 0 || b.len() < RAW_HEADER + packet.len()),
            }
        }
    }
}
