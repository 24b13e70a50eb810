//! Test and benchmark toolkit for synwatch: builds packets and writes capture files so
//! the other crates' tests and the benchmarks can make their own inputs instead of
//! shipping binary fixtures.
//!
//! Layout:
//!
//! * [`packet`]: IPv4/IPv6 + TCP/UDP packet builders with real checksums, IPv4 options
//!   and fragments, IPv6 extension headers (hop-by-hop, routing, destination options,
//!   fragment), and the link framings synwatch decodes: Ethernet, 802.1Q/802.1ad VLAN
//!   stacks, Linux cooked SLL and SLL2, BSD `NULL` and OpenBSD `LOOP` loopback.
//! * [`pcap`]: classic pcap ([`PcapWriter`]) and pcapng ([`PcapNgWriter`]) writers,
//!   little- or big-endian, micro- or nanosecond (pcapng: any `if_tsresol`), with doors
//!   for malformed-file tests (inconsistent lengths, unknown blocks, raw bytes).
//! * [`generate`]: deterministic whole-capture generators: the small demo
//!   [`sample_frames`]/[`write_sample`], the throughput benchmark [`write_bench`] and
//!   the spoofed-source flood [`write_spoofed`], with the [`XorShift64`] PRNG they use.
//! * the `synwatch-gen` binary (`src/bin/synwatch-gen.rs`): a command line over
//!   [`generate`] (`synwatch-gen sample|bench|spoofed OUT ...`).
//!
//! Everything is deterministic: the same call writes the same bytes.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use synwatch_testkit::{ethernet, tcp_v4, PcapWriter, LINKTYPE_ETHERNET, SYN};
//!
//! let ip = tcp_v4(Ipv4Addr::new(203, 0, 113, 9), 40000, Ipv4Addr::new(10, 0, 0, 5), 22, SYN, 0);
//! let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET, false)?;
//! w.write_packet(1_700_000_000_000_000_000, &ethernet(&ip))?;
//! let file = w.finish()?;
//! assert_eq!(file.len(), 24 + 16 + 14 + 40);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod generate;
pub mod packet;
pub mod pcap;

pub use generate::{
    BenchConfig, BenchPlan, GenStats, SpoofedConfig, XorShift64, sample_frames, write_bench,
    write_sample, write_spoofed,
};
pub use packet::{
    ACK, CWR, ECE, FIN, Ipv4, Ipv6, Ipv6Ext, PSH, RST, SYN, Tcp, URG, Udp, ethernet, ethernet_qinq,
    ethernet_vlan, ethernet_with, loop_loopback, loop_loopback_af, null_loopback, null_loopback_af,
    sll, sll_with, sll2, sll2_with, tcp_ip, tcp_v4, tcp_v4_opts, tcp_v6, tcp_v6_ext, tcp_v6_opts,
    udp_v4, udp_v6,
};
pub use pcap::{
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL,
    LINKTYPE_RAW, PcapNgWriter, PcapOptions, PcapWriter,
};
