//! The connection inventory: what talks to this host, folded into flows that read like a
//! rule set (`synwatch inventory`).
//!
//! Every TCP and UDP packet is assigned to a connection (its 4-tuple), each connection is
//! oriented (which side is the client, which the server), and the connection is counted
//! under a folded key: the direction relative to this host (`in`, `out`, `else`), the
//! protocol, the client with its ephemeral port folded to `PORT`, and the server with its
//! port. Remote addresses that are globally routed fold to `INTERNET`.
//!
//! Orientation:
//! - TCP: the sender of a SYN (without ACK) is the client; a SYN-ACK names the client as its
//!   destination. A connection first seen mid-stream is oriented by its ports: a port
//!   below 1024 against one above is the server, otherwise the lower port. A stealth
//!   probe (none of SYN, ACK, RST: nmap's FIN, NULL and Xmas scans) is oriented like a
//!   SYN (its sender the client) but begins no connection: its packets count, its flow's
//!   connections do not, and neither does the reset that answers it. A SYN on a 4-tuple
//!   quiet for a window ([`RETRANSMIT_WINDOW`]) begins a new one; within it, the SYN is
//!   a retransmission.
//! - UDP: the side on a port below 1024, or on a configured service port, is the server
//!   (the destination if both are). With neither, there is no server to tell apart: the
//!   sender of the first packet is written first and both ports stay as they are.
//!
//! Like the detector, the inventory is pure (time arrives with each packet) and bounded:
//! at most `max_keys` folded keys (what arrives for a new key after that is counted in
//! [`Overflow`]) and at most `max_connections` tracked 4-tuples.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use synwatch_decode::{Segment, TcpFlags, Transport};

use crate::{AddrSet, Nanos, Probe};

/// Where a flow goes relative to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Towards a local address: this host is the server.
    In,
    /// From a local address: this host is the client.
    Out,
    /// Neither side is local (transit, mirror ports, broadcasts of others).
    Else,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
            Self::Else => "else",
        }
    }
}

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One side's address after folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A local, private, link-local, multicast or `--internal` address (or any address
    /// under `--keep-addresses`), as it is.
    Addr(IpAddr),
    /// Some globally routed address.
    Internet,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Internet => f.write_str("INTERNET"),
        }
    }
}

/// The client's port after folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientPort {
    /// The client's port is kept: a UDP flow with no identifiable server.
    Port(u16),
    /// Any (ephemeral) port.
    Any,
}

impl fmt::Display for ClientPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(p) => p.fmt(f),
            Self::Any => f.write_str("PORT"),
        }
    }
}

/// A folded flow: what the inventory counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub class: Class,
    pub proto: Proto,
    pub client: Endpoint,
    pub client_port: ClientPort,
    pub server: Endpoint,
    pub server_port: u16,
}

/// What was seen of one folded flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Connections (TCP: handshakes begun, or connections first seen mid-stream; UDP:
    /// 4-tuples seen after being idle for the UDP timeout).
    pub connections: u64,
    /// Connections the server answered (TCP: anything but a RST from the server, so
    /// attempts on closed ports and unanswered scans do not count; UDP: any packet back).
    pub answered: u64,
    pub packets: u64,
    /// Bytes at the IP layer.
    pub bytes: u64,
    pub first: Nanos,
    pub last: Nanos,
}

impl FlowStats {
    fn touch(&mut self, ts: Nanos, bytes: u32) {
        if self.packets == 0 {
            self.first = ts;
            self.last = ts;
        }
        self.packets += 1;
        self.bytes += u64::from(bytes);
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
    }
}

/// What arrived for new keys after the key cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overflow {
    /// When the cap was first reached (`None`: it never was).
    pub since: Option<Nanos>,
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of an inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InventoryStats {
    pub tcp_packets: u64,
    pub udp_packets: u64,
    /// Packets of flows between two other hosts, left out by `keep_else: false`.
    pub else_skipped: u64,
    /// Times the connection table filled up and idle connections were dropped from it.
    pub table_purges: u64,
}

/// How the inventory classifies and folds.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// This host's addresses: flows to them are `in`, flows from them `out`.
    pub locals: AddrSet,
    /// Ranges kept as they are even when globally routed (`--internal`).
    pub internal: AddrSet,
    /// Keep every address as it is (no `INTERNET`).
    pub keep_addresses: bool,
    /// Count flows between two other hosts (`else`).
    pub keep_else: bool,
    /// UDP ports that mark the server side, beyond those below 1024.
    pub udp_service_ports: Vec<u16>,
    /// Most folded keys kept; what comes for new keys beyond is counted in [`Overflow`].
    pub max_keys: usize,
    /// Most 4-tuples tracked for orientation at once.
    pub max_connections: usize,
    /// A UDP 4-tuple idle this long starts a new connection when it is seen again.
    pub udp_timeout: Nanos,
}

/// The default cap on folded keys.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The default cap on tracked 4-tuples (about 100 bytes each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1 << 18;
/// The default UDP idle timeout (as conntrack's for UDP streams).
pub const DEFAULT_UDP_TIMEOUT: Nanos = 120_000_000_000;

/// A repeated SYN of a 4-tuple within this long of its last packet is a retransmission
/// (the detector's default window, SPEC's "same attempt"); later, a new connection.
pub const RETRANSMIT_WINDOW: Nanos = crate::detector::DEFAULT_WINDOW;

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            locals: AddrSet::new(),
            internal: AddrSet::new(),
            keep_addresses: false,
            keep_else: true,
            udp_service_ports: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
        }
    }
}

/// A 4-tuple in a canonical order (lower endpoint first), so both directions meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tuple {
    proto: Proto,
    low: (IpAddr, u16),
    high: (IpAddr, u16),
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Whether `low` is the client (for UDP without a server: the first sender).
    low_is_client: bool,
    /// Whether one side is known to be the server (false: a UDP flow between two
    /// unprivileged ports, kept unfolded).
    has_server: bool,
    answered: bool,
    /// A FIN or RST was seen: a SYN on the same tuple is a new connection.
    closed: bool,
    /// A connection began here (false: only a stealth probe or a reset was seen, and
    /// the first packet that begins one does).
    begun: bool,
    last: Nanos,
}

/// The inventory: feed it packets with [`Inventory::observe`], read it with
/// [`Inventory::flows`].
#[derive(Debug)]
pub struct Inventory {
    config: InventoryConfig,
    service: Box<[bool; 65536]>,
    flows: HashMap<FlowKey, FlowStats, foldhash::fast::RandomState>,
    conns: HashMap<Tuple, Conn, foldhash::fast::RandomState>,
    overflow: Overflow,
    stats: InventoryStats,
}

impl Inventory {
    pub fn new(config: InventoryConfig) -> Self {
        let mut service = Box::new([false; 65536]);
        for p in &config.udp_service_ports {
            service[usize::from(*p)] = true;
        }
        Self {
            config,
            service,
            flows: HashMap::default(),
            conns: HashMap::default(),
            overflow: Overflow::default(),
            stats: InventoryStats::default(),
        }
    }

    pub fn config(&self) -> &InventoryConfig {
        &self.config
    }

    /// Counts one decoded TCP or UDP packet seen at `ts`.
    pub fn observe(&mut self, ts: Nanos, seg: &Segment) {
        let (proto, flags) = match seg.transport {
            Transport::Tcp(f) => (Proto::Tcp, Some(f)),
            Transport::Udp => (Proto::Udp, None),
        };
        match proto {
            Proto::Tcp => self.stats.tcp_packets += 1,
            Proto::Udp => self.stats.udp_packets += 1,
        }
        let src = (seg.src.to_canonical(), seg.sport);
        let dst = (seg.dst.to_canonical(), seg.dport);
        let src_is_low = src <= dst;
        let tuple = Tuple {
            proto,
            low: if src_is_low { src } else { dst },
            high: if src_is_low { dst } else { src },
        };
        let (conn, new) = self.orient(tuple, src_is_low, flags, ts, src.1, dst.1);
        let src_is_client = conn.low_is_client == src_is_low;
        let (client, server) = if src_is_client {
            (src, dst)
        } else {
            (dst, src)
        };
        let Some(key) = self.key(proto, client, server, conn.has_server) else {
            self.stats.else_skipped += 1;
            return;
        };
        // The server answering: anything from its side but a RST (or a stealth probe).
        let rst = flags.is_some_and(|f| f.has(TcpFlags::RST));
        let answer = !src_is_client && !rst && !conn.answered && !is_probe(flags);
        if answer && let Some(c) = self.conns.get_mut(&tuple) {
            c.answered = true;
        }
        let len = self.flows.len();
        let stats = match self.flows.get_mut(&key) {
            Some(s) => s,
            None if len < self.config.max_keys => self.flows.entry(key).or_default(),
            None => {
                let o = &mut self.overflow;
                o.since.get_or_insert(ts);
                o.connections += u64::from(new);
                o.packets += 1;
                o.bytes += u64::from(seg.ip_len);
                return;
            }
        };
        stats.touch(ts, seg.ip_len);
        stats.connections += u64::from(new);
        stats.answered += u64::from(answer);
    }

    /// Finds or starts the connection of `tuple`; says whether this packet starts one.
    fn orient(
        &mut self,
        tuple: Tuple,
        src_is_low: bool,
        flags: Option<TcpFlags>,
        ts: Nanos,
        sport: u16,
        dport: u16,
    ) -> (Conn, bool) {
        let udp_timeout = self.config.udp_timeout;
        let ends = flags.is_some_and(|f| f.has(TcpFlags::FIN) || f.has(TcpFlags::RST));
        // Whether this packet begins a connection where none is: not a stealth probe,
        // nor a reset with nothing before it.
        let begins = !is_probe(flags) && !flags.is_some_and(|f| f.has(TcpFlags::RST));
        let known = if let Some(c) = self.conns.get_mut(&tuple) {
            let continues = match flags {
                Some(f) => {
                    // A SYN after a close, from the other side, or after a window's
                    // quiet, starts a new one; so does any packet that begins one
                    // where only probes or resets were.
                    let syn = f.has(TcpFlags::SYN) && !f.has(TcpFlags::ACK);
                    let quiet = ts.saturating_sub(c.last) > RETRANSMIT_WINDOW;
                    !(syn && (c.closed || c.low_is_client != src_is_low || quiet))
                        && (c.begun || !begins)
                }
                None => ts.saturating_sub(c.last) <= udp_timeout,
            };
            if continues {
                c.closed |= ends;
                c.last = c.last.max(ts);
                return (*c, false);
            }
            true
        } else {
            false
        };
        let (src_is_client, has_server) = match flags {
            Some(f) if f.has(TcpFlags::SYN) => (!f.has(TcpFlags::ACK), true),
            // A stealth probe's sender is the client, as a SYN's.
            Some(_) if is_probe(flags) => (true, true),
            Some(_) => (server_by_port(dport, sport, |p| p < 1024), true),
            None => {
                let svc = |p: u16| p < 1024 || self.service[usize::from(p)];
                if svc(dport) {
                    (true, true)
                } else if svc(sport) {
                    (false, true)
                } else {
                    (true, false)
                }
            }
        };
        // A stealth probe begins no connection (remembered closed, so that the closed
        // port's reset is its flow's and a SYN after it begins one), nor does a reset
        // with nothing before it.
        let conn = Conn {
            low_is_client: src_is_client == src_is_low,
            has_server,
            answered: false,
            closed: ends || !begins,
            begun: begins,
            last: ts,
        };
        // A restarted connection replaces its entry; a new one needs room.
        if !known && self.conns.len() >= self.config.max_connections {
            self.purge(ts);
        }
        if known || self.conns.len() < self.config.max_connections {
            self.conns.insert(tuple, conn);
        }
        (conn, begins)
    }

    /// Makes room in a full connection table: drops closed TCP connections and idle UDP
    /// ones, and if that frees less than a quarter, everything (connections seen again
    /// are then oriented by their ports).
    fn purge(&mut self, now: Nanos) {
        self.stats.table_purges += 1;
        let udp_timeout = self.config.udp_timeout;
        self.conns.retain(|t, c| match t.proto {
            Proto::Tcp => !c.closed,
            Proto::Udp => now.saturating_sub(c.last) <= udp_timeout,
        });
        if self.conns.len() > self.config.max_connections / 4 * 3 {
            self.conns.clear();
        }
    }

    /// The folded key of a connection, or `None` when it is `else` and those are left
    /// out.
    fn key(
        &self,
        proto: Proto,
        client: (IpAddr, u16),
        server: (IpAddr, u16),
        has_server: bool,
    ) -> Option<FlowKey> {
        let locals = &self.config.locals;
        let class = if locals.contains(server.0) {
            Class::In
        } else if locals.contains(client.0) {
            Class::Out
        } else {
            Class::Else
        };
        if class == Class::Else && !self.config.keep_else {
            return None;
        }
        Some(FlowKey {
            class,
            proto,
            client: self.fold(client.0),
            client_port: if has_server {
                ClientPort::Any
            } else {
                ClientPort::Port(client.1)
            },
            server: self.fold(server.0),
            server_port: server.1,
        })
    }

    fn fold(&self, addr: IpAddr) -> Endpoint {
        let c = &self.config;
        if c.keep_addresses
            || !is_global(addr)
            || c.locals.contains(addr)
            || c.internal.contains(addr)
        {
            Endpoint::Addr(addr)
        } else {
            Endpoint::Internet
        }
    }

    /// The folded flows, most connections first (then most packets, then by key).
    pub fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        let mut all: Vec<_> = self.flows.iter().map(|(k, s)| (*k, *s)).collect();
        all.sort_by(by_count);
        all
    }

    /// Number of folded keys held.
    pub fn keys(&self) -> usize {
        self.flows.len()
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn stats(&self) -> InventoryStats {
        self.stats
    }
}

/// Whether TCP `flags` are a stealth probe's (none of SYN, ACK, RST), by the
/// detector's own rule.
fn is_probe(flags: Option<TcpFlags>) -> bool {
    flags
        .and_then(Probe::classify)
        .is_some_and(|p| p != Probe::Syn)
}

fn by_count(a: &(FlowKey, FlowStats), b: &(FlowKey, FlowStats)) -> Ordering {
    b.1.connections
        .cmp(&a.1.connections)
        .then(b.1.packets.cmp(&a.1.packets))
        .then(a.0.cmp(&b.0))
}

/// Whether the destination is the server, judged by ports alone: a service port (per
/// `is_service`) against a non-service one is the server, otherwise the lower port.
fn server_by_port(dport: u16, sport: u16, is_service: impl Fn(u16) -> bool) -> bool {
    match (is_service(dport), is_service(sport)) {
        (true, false) => true,
        (false, true) => false,
        _ => dport <= sport,
    }
}

/// Whether an address is reachable across the Internet, so that it folds to `INTERNET`.
///
/// Private (RFC 1918, ULA), shared (100.64/10), loopback, link-local, multicast,
/// benchmarking, reserved and unspecified addresses are not. The documentation ranges
/// (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32) are taken as global: they stand
/// for public addresses in examples and test captures and never occur in real traffic.
pub fn is_global(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_global_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(a),
        },
    }
}

fn is_global_v4(a: Ipv4Addr) -> bool {
    let [b0, b1, b2, _] = a.octets();
    !(b0 == 0
        || a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_multicast()
        || b0 >= 240
        || (b0 == 100 && (b1 & 0xc0) == 64)
        || (b0 == 192 && b1 == 0 && b2 == 0)
        || (b0 == 198 && (b1 & 0xfe) == 18))
}

fn is_global_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Nanos = 1_000_000_000;
    const SYN: u8 = TcpFlags::SYN;
    const SYNACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;
    const RST: u8 = TcpFlags::RST | TcpFlags::ACK;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn set(items: &[&str]) -> AddrSet {
        let mut s = AddrSet::new();
        for i in items {
            s.insert(crate::parse_cidr(i).unwrap());
        }
        s
    }

    fn inventory(locals: &[&str]) -> Inventory {
        Inventory::new(InventoryConfig {
            locals: set(locals),
            ..InventoryConfig::default()
        })
    }

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Segment {
        Segment {
            src: ip(src),
            dst: ip(dst),
            sport,
            dport,
            transport: Transport::Tcp(TcpFlags(flags)),
            ip_len: 60,
        }
    }

    fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Segment {
        Segment {
            src: ip(src),
            dst: ip(dst),
            sport,
            dport,
            transport: Transport::Udp,
            ip_len: 100,
        }
    }

    /// The flows as `class/proto/CLIENT-CPORT-SERVER-SPORT connections answered packets`.
    fn lines(inv: &Inventory) -> Vec<String> {
        inv.flows()
            .iter()
            .map(|(k, s)| {
                format!(
                    "{}/{}/{}-{}-{}-{} {} {} {}",
                    k.class.as_str(),
                    k.proto.as_str(),
                    k.client,
                    k.client_port,
                    k.server,
                    k.server_port,
                    s.connections,
                    s.answered,
                    s.packets
                )
            })
            .collect()
    }

    /// A whole TCP connection: handshake, one data segment each way, FIN both ways.
    fn session(inv: &mut Inventory, t: Nanos, c: (&str, u16), s: (&str, u16)) {
        let steps = [
            (true, SYN),
            (false, SYNACK),
            (true, ACK),
            (true, ACK),
            (false, ACK),
            (true, FIN),
            (false, FIN),
        ];
        for (i, (from_client, flags)) in steps.into_iter().enumerate() {
            let seg = if from_client {
                tcp(c.0, c.1, s.0, s.1, flags)
            } else {
                tcp(s.0, s.1, c.0, c.1, flags)
            };
            inv.observe(t + i64::try_from(i).unwrap(), &seg);
        }
    }

    #[test]
    fn tcp_flows_fold_the_client_port_and_internet_addresses() {
        let mut inv = inventory(&["10.0.0.1"]);
        session(&mut inv, S, ("8.8.8.8", 40000), ("10.0.0.1", 22));
        session(&mut inv, 2 * S, ("1.1.1.1", 40001), ("10.0.0.1", 22));
        session(&mut inv, 3 * S, ("10.0.0.1", 50000), ("9.9.9.9", 443));
        session(&mut inv, 4 * S, ("10.0.0.7", 50001), ("10.0.0.1", 5432));
        assert_eq!(
            lines(&inv),
            [
                "in/tcp/INTERNET-PORT-10.0.0.1-22 2 2 14",
                "in/tcp/10.0.0.7-PORT-10.0.0.1-5432 1 1 7",
                "out/tcp/10.0.0.1-PORT-INTERNET-443 1 1 7",
            ]
        );
        let (_, ssh) = inv.flows()[0];
        assert_eq!((ssh.first, ssh.last), (S, 2 * S + 6));
        assert_eq!(ssh.bytes, 14 * 60);
    }

    #[test]
    fn flows_between_other_hosts_are_else_or_left_out() {
        let mut inv = inventory(&["10.0.0.1"]);
        session(&mut inv, S, ("192.168.1.5", 40000), ("192.168.1.9", 80));
        inv.observe(S, &udp("192.168.200.214", 5353, "224.0.0.251", 5353));
        assert_eq!(
            lines(&inv),
            [
                "else/tcp/192.168.1.5-PORT-192.168.1.9-80 1 1 7",
                "else/udp/192.168.200.214-5353-224.0.0.251-5353 1 0 1",
            ]
        );
        let mut inv = Inventory::new(InventoryConfig {
            locals: set(&["10.0.0.1"]),
            keep_else: false,
            ..InventoryConfig::default()
        });
        session(&mut inv, S, ("192.168.1.5", 40000), ("192.168.1.9", 80));
        assert!(inv.flows().is_empty());
        assert_eq!(inv.stats().else_skipped, 7);
    }

    #[test]
    fn internal_ranges_and_keep_addresses_stop_the_internet_fold() {
        let config = InventoryConfig {
            locals: set(&["10.0.0.1"]),
            internal: set(&["8.8.4.0/24"]),
            ..InventoryConfig::default()
        };
        let mut inv = Inventory::new(config.clone());
        session(&mut inv, S, ("8.8.4.4", 40000), ("10.0.0.1", 22));
        session(&mut inv, S, ("8.8.8.8", 40000), ("10.0.0.1", 22));
        assert_eq!(
            lines(&inv),
            [
                "in/tcp/8.8.4.4-PORT-10.0.0.1-22 1 1 7",
                "in/tcp/INTERNET-PORT-10.0.0.1-22 1 1 7",
            ]
        );
        let mut inv = Inventory::new(InventoryConfig {
            keep_addresses: true,
            ..config
        });
        session(&mut inv, S, ("8.8.8.8", 40000), ("10.0.0.1", 22));
        assert_eq!(lines(&inv), ["in/tcp/8.8.8.8-PORT-10.0.0.1-22 1 1 7"]);
    }

    #[test]
    fn udp_servers_are_below_1024_or_named_service_ports() {
        let mut inv = Inventory::new(InventoryConfig {
            locals: set(&["192.168.200.230"]),
            udp_service_ports: vec![56456],
            ..InventoryConfig::default()
        });
        // DNS out, answered.
        inv.observe(S, &udp("192.168.200.230", 53124, "10.59.184.10", 53));
        inv.observe(S + 1, &udp("10.59.184.10", 53, "192.168.200.230", 53124));
        // A service on an unprivileged port, named with --udp-service-port.
        inv.observe(S, &udp("8.8.8.8", 40000, "192.168.200.230", 56456));
        // The reply of a service comes first: the sender on port 123 is still the server.
        inv.observe(S, &udp("1.2.3.4", 123, "192.168.200.230", 40123));
        // Two unprivileged ports: no server, both ports kept, first sender written first.
        inv.observe(S, &udp("192.168.200.230", 17500, "192.168.200.255", 17500));
        assert_eq!(
            lines(&inv),
            [
                "out/udp/192.168.200.230-PORT-10.59.184.10-53 1 1 2",
                "in/udp/INTERNET-PORT-192.168.200.230-56456 1 0 1",
                "out/udp/192.168.200.230-17500-192.168.200.255-17500 1 0 1",
                "out/udp/192.168.200.230-PORT-INTERNET-123 1 1 1",
            ]
        );
    }

    #[test]
    fn a_udp_tuple_idle_past_the_timeout_is_a_new_connection() {
        let mut inv = inventory(&["10.0.0.1"]);
        let q = udp("10.0.0.1", 40000, "10.0.0.53", 53);
        inv.observe(S, &q);
        inv.observe(S + DEFAULT_UDP_TIMEOUT, &q);
        assert_eq!(inv.flows()[0].1.connections, 1);
        inv.observe(S + 2 * DEFAULT_UDP_TIMEOUT + 1, &q);
        assert_eq!(inv.flows()[0].1.connections, 2);
    }

    #[test]
    fn retransmitted_syns_are_one_connection_and_a_syn_after_a_close_is_another() {
        let mut inv = inventory(&["10.0.0.1"]);
        let syn = tcp("8.8.8.8", 40000, "10.0.0.1", 80, SYN);
        inv.observe(S, &syn);
        inv.observe(2 * S, &syn);
        inv.observe(3 * S, &tcp("10.0.0.1", 80, "8.8.8.8", 40000, RST));
        assert_eq!(lines(&inv), ["in/tcp/INTERNET-PORT-10.0.0.1-80 1 0 3"]);
        inv.observe(4 * S, &syn);
        assert_eq!(lines(&inv), ["in/tcp/INTERNET-PORT-10.0.0.1-80 2 0 4"]);
    }

    #[test]
    fn stealth_probes_begin_no_connection_and_a_syn_after_a_window_begins_one() {
        let mut inv = inventory(&["10.0.0.1"]);
        // FIN, NULL and Xmas probes: packets of the flow, no connection.
        for (port, flags) in [(600, TcpFlags::FIN), (601, 0), (602, 0x29)] {
            inv.observe(S, &tcp("8.8.8.8", 40000, "10.0.0.1", port, flags));
        }
        // The closed port's reset: a packet of the probe's flow, no connection.
        inv.observe(S, &tcp("10.0.0.1", 600, "8.8.8.8", 40000, RST | ACK));
        // Sent from a port below 1024 (nmap -g 53) or between two high ports: the
        // sender is still the client.
        inv.observe(S, &tcp("8.8.8.8", 53, "10.0.0.1", 8080, TcpFlags::FIN));
        inv.observe(S, &tcp("8.8.8.8", 45000, "10.0.0.1", 50000, 0));
        let mut got = lines(&inv);
        got.sort();
        assert_eq!(
            got,
            [
                "in/tcp/INTERNET-PORT-10.0.0.1-50000 0 0 1",
                "in/tcp/INTERNET-PORT-10.0.0.1-600 0 0 2",
                "in/tcp/INTERNET-PORT-10.0.0.1-601 0 0 1",
                "in/tcp/INTERNET-PORT-10.0.0.1-602 0 0 1",
                "in/tcp/INTERNET-PORT-10.0.0.1-8080 0 0 1",
            ]
        );
        // An answer from the server after a probe was seen mid-stream: a connection
        // (never an answer without one).
        inv.observe(S, &tcp("10.0.0.1", 601, "8.8.8.8", 40000, SYNACK));
        assert!(lines(&inv).contains(&"in/tcp/INTERNET-PORT-10.0.0.1-601 1 1 2".to_owned()));
        // A SYN after a probe of the same 4-tuple begins a connection.
        inv.observe(2 * S, &tcp("8.8.8.8", 40000, "10.0.0.1", 600, SYN));
        assert!(lines(&inv).contains(&"in/tcp/INTERNET-PORT-10.0.0.1-600 1 0 3".to_owned()));
        // One 4-tuple's SYN at 0, 59 s (a retransmission), and two hours later (a new
        // connection with the same ports).
        let mut inv = inventory(&["10.0.0.1"]);
        let syn = tcp("8.8.8.8", 40000, "10.0.0.1", 22, SYN);
        inv.observe(S, &syn);
        inv.observe(S + 59 * S, &syn);
        assert_eq!(lines(&inv), ["in/tcp/INTERNET-PORT-10.0.0.1-22 1 0 2"]);
        inv.observe(S + 7200 * S, &syn);
        assert_eq!(lines(&inv), ["in/tcp/INTERNET-PORT-10.0.0.1-22 2 0 3"]);
    }

    #[test]
    fn connections_seen_mid_stream_are_oriented_by_their_ports() {
        let mut inv = inventory(&["10.0.0.1"]);
        // Captured after the handshake: data from the server first.
        inv.observe(S, &tcp("9.9.9.9", 443, "10.0.0.1", 50000, ACK));
        inv.observe(S + 1, &tcp("10.0.0.1", 50000, "9.9.9.9", 443, ACK));
        // Two unprivileged ports: the lower one is the server.
        inv.observe(S, &tcp("10.0.0.1", 45000, "10.0.0.9", 8080, ACK));
        // A SYN-ACK names the client as its destination.
        inv.observe(S, &tcp("10.0.0.1", 9000, "10.0.0.9", 9100, SYNACK));
        assert_eq!(
            lines(&inv),
            [
                "out/tcp/10.0.0.1-PORT-INTERNET-443 1 1 2",
                "in/tcp/10.0.0.9-PORT-10.0.0.1-9000 1 1 1",
                "out/tcp/10.0.0.1-PORT-10.0.0.9-8080 1 0 1",
            ]
        );
    }

    #[test]
    fn ipv6_folds_like_ipv4_and_mapped_addresses_are_ipv4() {
        let mut inv = inventory(&["fd77::1", "10.0.0.1"]);
        session(&mut inv, S, ("2001:4860::8888", 40000), ("fd77::1", 22));
        session(&mut inv, S, ("fe80::2", 40000), ("fd77::1", 22));
        inv.observe(S, &tcp("::ffff:8.8.8.8", 40000, "::ffff:10.0.0.1", 25, SYN));
        assert_eq!(
            lines(&inv),
            [
                "in/tcp/fe80::2-PORT-fd77::1-22 1 1 7",
                "in/tcp/INTERNET-PORT-fd77::1-22 1 1 7",
                "in/tcp/INTERNET-PORT-10.0.0.1-25 1 0 1",
            ]
        );
    }

    #[test]
    fn new_keys_beyond_the_cap_are_counted_not_kept() {
        let mut inv = Inventory::new(InventoryConfig {
            locals: set(&["10.0.0.1"]),
            max_keys: 2,
            ..InventoryConfig::default()
        });
        for (i, port) in [22u16, 80, 443, 25].into_iter().enumerate() {
            let t = S * (1 + i64::try_from(i).unwrap());
            inv.observe(t, &tcp("8.8.8.8", 40000, "10.0.0.1", port, SYN));
        }
        // A key already held still counts.
        inv.observe(9 * S, &tcp("8.8.8.8", 40001, "10.0.0.1", 22, SYN));
        assert_eq!(inv.keys(), 2);
        assert_eq!(
            inv.overflow(),
            Overflow {
                since: Some(3 * S),
                connections: 2,
                packets: 2,
                bytes: 120
            }
        );
        assert_eq!(lines(&inv)[0], "in/tcp/INTERNET-PORT-10.0.0.1-22 2 0 2");
    }

    #[test]
    fn the_connection_table_stays_under_its_cap() {
        let mut inv = Inventory::new(InventoryConfig {
            locals: set(&["10.0.0.1"]),
            max_connections: 8,
            ..InventoryConfig::default()
        });
        for port in 1000..1100u16 {
            inv.observe(S, &tcp("8.8.8.8", port, "10.0.0.1", 22, SYN));
            assert!(inv.conns.len() <= 8);
        }
        assert!(inv.stats().table_purges > 0);
        assert_eq!(lines(&inv), ["in/tcp/INTERNET-PORT-10.0.0.1-22 100 0 100"]);
    }

    #[test]
    fn globally_routed_addresses() {
        for a in [
            "8.8.8.8",
            "203.0.113.9",
            "2001:4860::1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_global(ip(a)), "{a}");
        }
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.251",
            "255.255.255.255",
            "0.0.0.0",
            "198.18.0.1",
            "192.0.0.8",
            "fd77::1",
            "fe80::1",
            "ff02::1",
            "::1",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(ip(a)), "{a}");
        }
    }

    fn any_segment() -> impl Strategy<Value = Segment> {
        let addr = prop_oneof![
            Just(ip("10.0.0.1")),
            Just(ip("8.8.8.8")),
            Just(ip("192.168.0.2")),
            Just(ip("fd77::1")),
        ];
        (
            addr.clone(),
            addr,
            prop_oneof![Just(22u16), Just(53), Just(40000), any::<u16>()],
            prop_oneof![Just(22u16), Just(53), Just(40000), any::<u16>()],
            proptest::option::of(any::<u8>()),
            any::<u32>(),
        )
            .prop_map(|(src, dst, sport, dport, flags, ip_len)| Segment {
                src,
                dst,
                sport,
                dport,
                transport: flags.map_or(Transport::Udp, |f| Transport::Tcp(TcpFlags(f))),
                ip_len,
            })
    }

    proptest! {
        #[test]
        fn every_packet_is_counted_once(
            packets in proptest::collection::vec((0i64..1_000_000_000_000, any_segment()), 0..200),
            keep_else: bool,
        ) {
            let mut inv = Inventory::new(InventoryConfig {
                locals: set(&["10.0.0.1", "fd77::1"]),
                keep_else,
                max_keys: 5,
                max_connections: 16,
                ..InventoryConfig::default()
            });
            for (ts, seg) in &packets {
                inv.observe(*ts, seg);
            }
            let flows = inv.flows();
            let counted: u64 = flows.iter().map(|(_, s)| s.packets).sum::<u64>()
                + inv.overflow().packets
                + inv.stats().else_skipped;
            prop_assert_eq!(counted, packets.len() as u64);
            prop_assert!(inv.keys() <= 5);
            prop_assert!(inv.conns.len() <= 16);
            for (_, s) in &flows {
                prop_assert!(s.answered <= s.connections.max(1));
                prop_assert!(s.first <= s.last);
            }
        }
    }
}
