//! What handing a packet up raw costs in the XDP program, for docs/PERFORMANCE.md: loads
//! the program (observing, not attached anywhere) and, for IPv6 packets with a fragment
//! header (which the program hands up raw) of several lengths, reports the program's
//! time per packet (BPF_PROG_TEST_RUN, the kernel's average over the runs), what each
//! record takes of the ring, and how many such records a full ring holds. The ring is
//! drained between rounds, so every run writes its record. Lengths past a page's worth
//! make BPF_PROG_TEST_RUN hand the program a multi-buffer frame. Needs root.
//!
//! Usage: raw_cost [ROUNDS] [REPEAT]

#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a command-line benchmark printing its result"
)]

use std::net::Ipv6Addr;
use std::time::Duration;

use synwatch_testkit::packet::{IPPROTO_TCP, Ipv4, Ipv6, Ipv6Ext, SYN, Tcp, ethernet};
use synwatch_xdp::layout::{RAW_CAP, RING_BYTES, raw_record_cost};
use synwatch_xdp::{Counter, Options, Record, Verdict, Xdp};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().map_or(20, |a| a.parse().unwrap());
    let repeat: u32 = args.next().map_or(400, |a| a.parse().unwrap());
    let (src, dst): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::bad".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    );
    let segment =
        Tcp::new(40000, 22, SYN).segment_v4([203, 0, 113, 9].into(), [192, 0, 2, 1].into());
    let nmap_f = Ipv4::new([203, 0, 113, 9].into(), [192, 0, 2, 1].into()).fragments(
        IPPROTO_TCP,
        &segment,
        8,
    )[0]
    .clone();
    let mut packets = vec![("nmap -f fragment (IPv4)".to_owned(), nmap_f)];
    for len in [512usize, 1500, 3000, RAW_CAP, 12_000] {
        let p = Ipv6::new(src, dst)
            .ext(Ipv6Ext::fragment(0, true))
            .tcp(&Tcp::new(1, 22, SYN).payload_len(len - 68));
        packets.push((format!("IPv6 fragment of {len} bytes"), p));
    }
    let mut xdp = Xdp::load(Options {
        emit: true,
        detection: None,
        scope_new: false,
        same_attempt_ns: 0,
    })
    .unwrap();
    let mut ring = xdp.ring().unwrap();
    println!("RAW_CAP {RAW_CAP} bytes, ring {RING_BYTES} bytes; {rounds} rounds of {repeat} runs");
    println!(
        "| packet (from L3) | ring bytes per record | records a full ring holds | ns per packet (min / median of rounds) |"
    );
    println!("|---|---|---|---|");
    let mut records = Vec::new();
    for (what, packet) in &packets {
        let frame = ethernet(packet);
        let cost = raw_record_cost(packet.len());
        let runs = repeat.min(u32::try_from(RING_BYTES / cost).unwrap() - 1);
        let mut ns: Vec<u128> = Vec::new();
        let full_before = ring.counter(Counter::RingbufFull, &[0]);
        for _ in 0..rounds {
            let (verdict, per) = xdp.test_run_timed(&frame, runs).unwrap();
            assert_eq!(verdict, Verdict::Pass);
            ns.push(per.as_nanos());
            records.clear();
            ring.wait(Duration::ZERO, &mut records).unwrap();
            assert_eq!(records.len(), usize::try_from(runs).unwrap(), "{what}");
            assert!(matches!(records[0], Record::Raw(_)));
        }
        assert_eq!(
            ring.counter(Counter::RingbufFull, &[0]),
            full_before,
            "{what}: none lost"
        );
        ns.sort_unstable();
        println!(
            "| {what} | {cost} | {} | {} / {} |",
            RING_BYTES / cost,
            ns[0],
            ns[ns.len() / 2]
        );
    }
}
