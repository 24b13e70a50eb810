//! Detector tests: the edges of SPEC §2, then a property test against a reference model
//! that keeps every observation and recomputes each answer from scratch.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use proptest::prelude::*;
use synwatch_decode::TcpFlags;

use crate::*;

const SEC: Nanos = 1_000_000_000;
const MS: Nanos = 1_000_000;
const SYN: u8 = TcpFlags::SYN;
const T0: Nanos = 1_700_000_000 * SEC;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn obs(ts: Nanos, src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Observation {
    Observation {
        foreign: false,
        ts: T0 + ts,
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        flags: TcpFlags(flags),
    }
}

fn syn(ts: Nanos, src: &str, dport: u16) -> Observation {
    obs(ts, src, 40000 + dport, "192.0.2.1", dport, SYN)
}

fn local_cfg() -> Config {
    Config {
        locals: ["192.0.2.1"]
            .iter()
            .map(|s| parse_cidr(s).expect("cidr"))
            .collect(),
        ..Config::default()
    }
}

/// Feeds all observations; returns the scans and the number of logged connections.
fn run(det: &mut Detector, stream: &[Observation]) -> (Vec<Scan>, usize) {
    let mut scans = Vec::new();
    let mut logged = 0;
    for o in stream {
        let out = det.observe(o);
        logged += usize::from(out.log);
        scans.extend(out.scan);
    }
    (scans, logged)
}

#[test]
fn four_ports_at_0_20_40_59_seconds_is_a_scan() {
    let mut det = Detector::new(local_cfg());
    let stream = [
        syn(0, "203.0.113.9", 21),
        syn(20 * SEC, "203.0.113.9", 22),
        syn(40 * SEC, "203.0.113.9", 23),
        syn(59 * SEC, "203.0.113.9", 25),
    ];
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 4);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [21, 22, 23, 25]);
    assert_eq!(scans[0].ts, T0 + 59 * SEC);
    assert_eq!(scans[0].src, ip("203.0.113.9"));
    assert_eq!(scans[0].dst, ip("192.0.2.1"));
    assert!(!scans[0].allowlisted);
}

#[test]
fn window_is_inclusive_at_exactly_60_seconds() {
    let mut det = Detector::new(local_cfg());
    let stream = [
        syn(0, "203.0.113.9", 21),
        syn(20 * SEC, "203.0.113.9", 22),
        syn(40 * SEC, "203.0.113.9", 23),
        syn(60 * SEC, "203.0.113.9", 25),
    ];
    assert_eq!(run(&mut det, &stream).0.len(), 1);
}

#[test]
fn a_port_60_001_seconds_old_has_left_the_window() {
    let mut det = Detector::new(local_cfg());
    let stream = [
        syn(0, "203.0.113.9", 21),
        syn(20 * SEC, "203.0.113.9", 22),
        syn(40 * SEC, "203.0.113.9", 23),
        syn(60 * SEC + MS, "203.0.113.9", 25),
    ];
    let (scans, logged) = run(&mut det, &stream);
    assert!(scans.is_empty(), "{scans:?}");
    assert_eq!(logged, 4);
    // One more port inside the window of the last three makes it a scan, with the
    // expired port 21 no longer reported.
    let (scans, _) = run(&mut det, &[syn(61 * SEC, "203.0.113.9", 26)]);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [22, 23, 25, 26]);
}

#[test]
fn retransmissions_are_one_attempt() {
    let mut det = Detector::new(local_cfg());
    let a = |ts| obs(ts, "198.51.100.7", 5973, "192.0.2.1", 80, SYN);
    let outs: Vec<_> = [0, SEC, 3 * SEC, 7 * SEC]
        .iter()
        .map(|t| det.observe(&a(*t)))
        .collect();
    assert_eq!(outs[0].seen, Seen::Attempt(Direction::In));
    assert!(outs[0].log);
    for out in &outs[1..] {
        assert_eq!(out.seen, Seen::Retransmission(Direction::In));
        assert!(!out.log);
    }
    let stats = det.stats();
    assert_eq!((stats.attempts_in, stats.retransmissions), (1, 3));
}

#[test]
fn retransmission_window_runs_from_the_last_sighting() {
    let mut det = Detector::new(local_cfg());
    let a = |ts| obs(ts, "198.51.100.7", 5973, "192.0.2.1", 80, SYN);
    assert!(det.observe(&a(0)).log);
    assert!(!det.observe(&a(50 * SEC)).log);
    assert!(
        !det.observe(&a(110 * SEC)).log,
        "60 s after the last sighting is still a repeat"
    );
    assert!(
        det.observe(&a(170 * SEC + MS)).log,
        "more than a window later: a new attempt"
    );
}

#[test]
fn distinct_source_ports_are_distinct_attempts_to_the_same_port() {
    let mut det = Detector::new(local_cfg());
    let stream: Vec<_> = (0..20)
        .map(|i| {
            obs(
                i * SEC,
                "198.51.100.7",
                50000 + i as u16,
                "192.0.2.1",
                80,
                SYN,
            )
        })
        .collect();
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 20);
    assert!(scans.is_empty());
}

#[test]
fn replies_and_established_segments_never_count() {
    let mut det = Detector::new(local_cfg());
    use TcpFlags as F;
    let flags = [
        F::SYN | F::ACK,
        F::RST,
        F::RST | F::ACK,
        F::ACK,
        F::FIN | F::ACK,
        F::PSH | F::ACK,
    ];
    let stream: Vec<_> = flags
        .iter()
        .enumerate()
        .map(|(i, f)| {
            obs(
                i as Nanos,
                "203.0.113.9",
                1000,
                "192.0.2.1",
                20 + i as u16,
                *f,
            )
        })
        .collect();
    for o in &stream {
        let out = det.observe(o);
        assert_eq!(out.seen, Seen::Ignored, "{:?}", o.flags);
        assert!(!out.log && out.scan.is_none());
    }
    assert_eq!(det.tracked_sources(), 0);
    assert_eq!(det.stats(), Stats::default());
}

#[test]
fn interleaved_sources_are_counted_apart() {
    let mut det = Detector::new(local_cfg());
    let mut stream = Vec::new();
    for (i, port) in [21u16, 22, 23].iter().enumerate() {
        stream.push(syn(i as Nanos * SEC, "203.0.113.1", *port));
        stream.push(syn(i as Nanos * SEC + MS, "203.0.113.2", *port + 100));
    }
    assert!(run(&mut det, &stream).0.is_empty());
    let (scans, _) = run(&mut det, &[syn(5 * SEC, "203.0.113.2", 9999)]);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].src, ip("203.0.113.2"));
    assert_eq!(scans[0].ports, [121, 122, 123, 9999]);
}

#[test]
fn counting_is_per_source_across_destinations() {
    let mut det = Detector::new(local_cfg());
    let stream = [
        obs(0, "203.0.113.9", 1, "192.0.2.10", 22, SYN),
        obs(SEC, "203.0.113.9", 1, "192.0.2.11", 22, SYN),
        obs(2 * SEC, "203.0.113.9", 1, "192.0.2.12", 80, SYN),
        obs(3 * SEC, "203.0.113.9", 1, "192.0.2.13", 443, SYN),
        obs(4 * SEC, "203.0.113.9", 1, "192.0.2.14", 8080, SYN),
    ];
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 5);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [22, 80, 443, 8080]);
    assert_eq!(scans[0].dst, ip("192.0.2.14"));
}

#[test]
fn one_report_per_episode_and_a_new_one_after_a_quiet_window() {
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let mut stream: Vec<_> = (0..10).map(|i| syn(i * SEC, s, 1000 + i as u16)).collect();
    // Keeps attempting every 59 s for a while: the episode goes on.
    stream.extend((1..5).map(|i| syn(10 * SEC + i * 59 * SEC, s, 2000 + i as u16)));
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 14);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [1000, 1001, 1002, 1003]);
    assert_eq!(scans[0].ts, T0 + 3 * SEC);

    // Quiet for exactly a window: still the same episode.
    let last = 10 * SEC + 4 * 59 * SEC;
    let again: Vec<_> = (0..4)
        .map(|i| syn(last + 60 * SEC + i * MS, s, 3000 + i as u16))
        .collect();
    assert!(run(&mut det, &again).0.is_empty());

    // Quiet for more than a window: a new episode, reported again.
    let last = last + 60 * SEC + 3 * MS;
    let fresh: Vec<_> = (0..4)
        .map(|i| syn(last + 60 * SEC + MS + i * MS, s, 4000 + i as u16))
        .collect();
    let (scans, _) = run(&mut det, &fresh);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [4000, 4001, 4002, 4003]);
    assert_eq!(det.stats().scans, 2);
}

#[test]
fn a_forgotten_source_starts_a_new_episode_at_once() {
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let first: Vec<_> = (0..6).map(|i| syn(i * SEC, s, 1000 + i as u16)).collect();
    assert_eq!(run(&mut det, &first).0.len(), 1);
    // Its ban is lifted while it is still scanning: the next ports are a new scan.
    assert!(det.forget(ip(s)));
    assert!(!det.forget(ip(s)));
    let more: Vec<_> = (6..10).map(|i| syn(i * SEC, s, 1000 + i as u16)).collect();
    let (scans, logged) = run(&mut det, &more);
    assert_eq!(logged, 4);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [1006, 1007, 1008, 1009]);
    // A retransmission of an attempt from before is still one.
    assert!(!det.observe(&syn(5 * SEC, s, 1005)).log);
}

#[test]
fn reported_ports_are_in_first_seen_order() {
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let stream = [
        obs(0, s, 1, "192.0.2.1", 443, SYN),
        obs(SEC, s, 2, "192.0.2.1", 22, SYN),
        obs(2 * SEC, s, 3, "192.0.2.1", 443, SYN),
        obs(3 * SEC, s, 4, "192.0.2.1", 80, SYN),
        obs(4 * SEC, s, 5, "192.0.2.1", 22, SYN),
        obs(5 * SEC, s, 6, "192.0.2.1", 25, SYN),
    ];
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 6);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, [443, 22, 80, 25]);
}

#[test]
fn ipv6_sources_are_tracked_and_reported() {
    let mut det = Detector::new(Config {
        locals: [parse_cidr("2001:db8::5").expect("cidr")]
            .into_iter()
            .collect(),
        ..Config::default()
    });
    let stream: Vec<_> = (0..4u16)
        .map(|i| {
            obs(
                i64::from(i) * SEC,
                "2001:db8::bad",
                33000,
                "2001:db8::5",
                8000 + i,
                SYN,
            )
        })
        .collect();
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 4);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].src, ip("2001:db8::bad"));
    assert_eq!(scans[0].ports, [8000, 8001, 8002, 8003]);
    // Outgoing from the local IPv6 address is not an incoming scan.
    let out: Vec<_> = (0..4u16)
        .map(|i| {
            obs(
                10 * SEC,
                "2001:db8::5",
                33000 + i,
                "2001:db8::99",
                100 + i,
                SYN,
            )
        })
        .collect();
    assert_eq!(run(&mut det, &out), (vec![], 0));
    assert_eq!(det.stats().attempts_out, 4);
}

/// The `i`-th attempt of four from the host's own address (`local_cfg`), a second apart,
/// each to the next port.
fn from_the_host(i: u16) -> Observation {
    obs(
        i64::from(i) * SEC,
        "192.0.2.1",
        50000 + i,
        "198.51.100.80",
        20 + i,
        SYN,
    )
}

#[test]
fn outgoing_attempts_are_counted_not_logged_unless_direction_both() {
    let stream: Vec<_> = (0..4u16).map(from_the_host).collect();
    let mut det = Detector::new(local_cfg());
    assert_eq!(run(&mut det, &stream), (vec![], 0));
    assert_eq!(det.stats().attempts_out, 4);
    assert_eq!(det.tracked_sources(), 0);

    let mut det = Detector::new(Config {
        direction: DirectionFilter::Both,
        ..local_cfg()
    });
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 4);
    assert_eq!(scans.len(), 1);
    assert!(
        scans[0].allowlisted,
        "a local source is never to be blocked"
    );

    let mut det = Detector::new(Config {
        direction: DirectionFilter::Both,
        allow_local: false,
        ..local_cfg()
    });
    assert!(!run(&mut det, &stream).0[0].allowlisted);
}

/// An attempt from one of the host's addresses that its capture knows is another host's
/// (a link-local address of another link, [`Observation::foreign`]) is incoming: logged,
/// and a scan of its own; still never to be blocked.
#[test]
fn a_foreign_attempt_from_a_local_address_is_incoming() {
    let stream: Vec<_> = (0..4u16)
        .map(|i| Observation {
            foreign: true,
            ..from_the_host(i)
        })
        .collect();
    let mut det = Detector::new(local_cfg());
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!((scans.len(), logged), (1, 4));
    assert_eq!(det.stats().attempts_in, 4);
    assert!(scans[0].allowlisted);
}

#[test]
fn direction_out_logs_only_outgoing() {
    let mut det = Detector::new(Config {
        direction: DirectionFilter::Out,
        ..local_cfg()
    });
    assert!(!det.observe(&syn(0, "203.0.113.9", 22)).log);
    assert!(
        det.observe(&obs(SEC, "192.0.2.1", 5000, "198.51.100.1", 22, SYN))
            .log
    );
    let s = det.stats();
    assert_eq!((s.attempts_in, s.attempts_out), (1, 1));
}

#[test]
fn allowlisted_sources_are_still_logged_and_reported() {
    let mut det = Detector::new(Config {
        allow: [parse_cidr("198.51.100.0/24").expect("cidr")]
            .into_iter()
            .collect(),
        ..local_cfg()
    });
    let stream: Vec<_> = (0..4u16)
        .map(|i| syn(i64::from(i), "198.51.100.77", 100 + i))
        .collect();
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 4);
    assert_eq!(scans.len(), 1);
    assert!(scans[0].allowlisted);
}

#[test]
fn stealth_probes_count_toward_ports_but_are_not_connections() {
    use TcpFlags as F;
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let stream = [
        obs(0, s, 1, "192.0.2.1", 21, F::FIN),
        obs(SEC, s, 1, "192.0.2.1", 22, 0),
        obs(2 * SEC, s, 1, "192.0.2.1", 23, F::FIN | F::PSH | F::URG),
        obs(3 * SEC, s, 1, "192.0.2.1", 24, F::FIN),
    ];
    let outs: Vec<_> = stream.iter().map(|o| det.observe(o)).collect();
    assert_eq!(outs[0].seen, Seen::Stealth(Direction::In, Probe::Fin));
    assert!(outs.iter().all(|o| !o.log));
    let scan = outs[3]
        .scan
        .clone()
        .expect("a FIN/NULL/Xmas scan is a scan");
    assert_eq!(scan.ports, [21, 22, 23, 24]);
    let kinds: Vec<_> = scan.probes.iter().map(Probe::as_str).collect();
    assert_eq!(kinds, ["null", "fin", "xmas"]);
    assert_eq!(det.stats().stealth_probes, 4);
    assert_eq!(det.stats().attempts_in, 0);
}

#[test]
fn mixed_syn_and_stealth_probes_report_both_kinds() {
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let stream = [
        syn(0, s, 21),
        obs(SEC, s, 1, "192.0.2.1", 22, TcpFlags::FIN),
        syn(2 * SEC, s, 23),
        obs(3 * SEC, s, 1, "192.0.2.1", 24, TcpFlags::FIN),
    ];
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 2);
    let kinds: Vec<_> = scans[0].probes.iter().map(Probe::as_str).collect();
    assert_eq!(kinds, ["syn", "fin"]);
}

#[test]
fn more_than_max_ports_reports_exactly_max_ports_plus_one() {
    let mut det = Detector::new(Config {
        max_ports: 10,
        ..local_cfg()
    });
    let stream: Vec<_> = (0..100u16)
        .map(|i| syn(i64::from(i) * MS, "203.0.113.9", 1 + i))
        .collect();
    let (scans, logged) = run(&mut det, &stream);
    assert_eq!(logged, 100);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].ports, (1..=11).collect::<Vec<u16>>());
}

#[test]
fn out_of_order_timestamps_do_not_rewind_time() {
    let mut det = Detector::new(local_cfg());
    let s = "203.0.113.9";
    let stream = [
        syn(100 * SEC, s, 1),
        syn(0, s, 2),
        syn(SEC, s, 3),
        syn(2 * SEC, s, 4),
    ];
    let (scans, _) = run(&mut det, &stream);
    assert_eq!(
        scans.len(),
        1,
        "all four fall in one window at the latest time seen"
    );
}

#[test]
fn source_cap_keeps_the_scanner_under_a_spoofed_flood() {
    let mut det = Detector::new(Config {
        max_sources: 1000,
        max_attempts: 4000,
        ..local_cfg()
    });
    let scanner = "203.0.113.9";
    let mut scans = Vec::new();
    for i in 0..200_000u32 {
        let spoofed = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
        let o = Observation {
            foreign: false,
            ts: T0 + Nanos::from(i) * 100_000,
            src: spoofed,
            dst: ip("192.0.2.1"),
            sport: 1024,
            dport: 80,
            flags: TcpFlags(SYN),
        };
        scans.extend(det.observe(&o).scan);
        assert!(det.tracked_sources() <= 1000);
        assert!(det.tracked_attempts() <= 4000);
        // The scanner probes a new port every 500 spoofed packets (50 ms): a single
        // port cannot be told from the flood, but from its second port on it outranks it.
        if i % 500 == 0 {
            let probe = syn(Nanos::from(i) * 100_000, scanner, 1 + (i / 500) as u16);
            scans.extend(det.observe(&probe).scan);
        }
    }
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert_eq!(scans[0].src, ip(scanner));
    assert_eq!(scans[0].ports, [1, 2, 3, 4]);
    let stats = det.stats();
    // The flood's sources, seen once each, were written down apart at the cap instead of
    // turning the table over: the scanner, tracked since its first probe, kept its slot
    // and nobody was evicted. Once the 4-tuple table was full, their attempts were written
    // down with them, so they did not turn it over either: only the scanner's own
    // attempts (400) made room.
    assert!(stats.first_sightings > 190_000, "{stats:?}");
    assert_eq!(stats.sources_evicted, 0, "{stats:?}");
    assert!(stats.attempts_evicted <= 400, "{stats:?}");
}

/// Spoofed sources reaching three ports each (as many as a source may without being a
/// scanner) at once, never to come back, through a table of `cap` sources, and a slow
/// scanner whose four probes (at spoofed source 1/10 of the cap, then 3/10, 9/10 and past
/// two caps more) are further apart each time, the last gap longer than it takes the flood
/// to fill the whole table: neither its port count nor its recency can keep it, only that it
/// keeps coming back. Returns the scans and the sources evicted.
fn slow_scanner_through_three_port_noise(cap: u32) -> (Vec<Scan>, u64) {
    let mut det = Detector::new(Config {
        max_sources: cap as usize,
        ..local_cfg()
    });
    let scanner = "203.0.113.9";
    let mut probes_at = vec![cap / 10];
    for g in [cap * 3 / 10, cap * 6 / 10, cap * 12 / 10] {
        probes_at.push(probes_at[probes_at.len() - 1] + g);
    }
    let mut scans = Vec::new();
    let mut t = 0;
    for i in 0..probes_at[probes_at.len() - 1] + 2 * cap {
        let spoofed = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
        for dport in [22, 80, 443] {
            t += 10_000;
            let o = Observation {
                foreign: false,
                ts: T0 + t,
                src: spoofed,
                dst: ip("192.0.2.1"),
                sport: 1024,
                dport,
                flags: TcpFlags(SYN),
            };
            scans.extend(det.observe(&o).scan);
        }
        assert!(det.tracked_sources() <= cap as usize);
        if let Some(n) = probes_at.iter().position(|&at| at == i) {
            scans.extend(det.observe(&syn(t, scanner, 1000 + n as u16)).scan);
        }
    }
    if let [scan] = &scans[..] {
        assert_eq!(scan.src, ip(scanner));
        assert_eq!(scan.ports, [1000, 1001, 1002, 1003]);
    }
    (scans, det.stats().sources_evicted)
}

#[test]
fn spoofed_sources_with_three_ports_each_do_not_evict_a_slow_scanner() {
    let (scans, evicted) = slow_scanner_through_three_port_noise(1000);
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert!(evicted > 2000, "{evicted}");
}

#[test]
fn a_scanner_back_before_the_table_first_filled_outlives_the_first_evictions() {
    // Until the table is first full the hand has not moved, so a return then was not
    // seen as one: the scanner held the same credit as each spoofed source, and when the
    // hand first had to evict, went first in about one run in a cap's worth (0.17% of
    // runs at a cap of 1,000). At a cap of 40, 400 runs (each keyed afresh) all find it.
    let missed = (0..400)
        .filter(|_| slow_scanner_through_three_port_noise(40).0.len() != 1)
        .count();
    assert_eq!(missed, 0);
}

#[test]
fn every_distinct_attempt_of_a_window_is_remembered_beyond_the_source_cap() {
    // Few sources, many attempts each: remembered 4-tuples are not capped by the source
    // cap, so every retransmission is recognised (each attempt is sent twice, the repeat
    // after all the others, all inside one window).
    let mut det = Detector::new(Config {
        max_sources: 1000,
        ..local_cfg()
    });
    let attempts: Vec<Observation> = (0..300_000u32)
        .map(|i| Observation {
            foreign: false,
            ts: T0 + Nanos::from(i) * 10_000,
            src: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i % 1000)),
            dst: ip("192.0.2.1"),
            sport: 1024 + (i / 1000) as u16,
            dport: 80,
            flags: TcpFlags(SYN),
        })
        .collect();
    let (_, logged) = run(&mut det, &attempts);
    assert_eq!(logged, 300_000);
    let end = T0 + 3 * SEC;
    let repeats: Vec<Observation> = attempts
        .iter()
        .map(|o| Observation {
            foreign: false,
            ts: end,
            ..*o
        })
        .collect();
    let (_, logged) = run(&mut det, &repeats);
    assert_eq!(logged, 0);
    let stats = det.stats();
    assert_eq!(stats.retransmissions, 300_000, "{stats:?}");
    assert_eq!(stats.attempts_evicted, 0, "{stats:?}");
}

#[test]
fn state_expires_once_sources_go_quiet() {
    let mut det = Detector::new(local_cfg());
    for i in 0..100u16 {
        det.observe(&syn(0, &format!("198.51.100.{}", i % 250), 80 + i));
    }
    assert_eq!(det.tracked_sources(), 100);
    det.observe(&syn(200 * SEC, "203.0.113.1", 22));
    assert_eq!(det.tracked_sources(), 1);
    assert_eq!(det.tracked_attempts(), 1);
}

// ---------------------------------------------------------------------------------------
// Reference model: keeps every observation and answers each question from scratch.

#[derive(Debug, Clone)]
struct Sighting {
    seq: usize,
    ts: Nanos,
    src: IpAddr,
    port: u16,
    probe: Probe,
}

#[derive(Debug, Default)]
struct Reference {
    syns: Vec<Observation>,
    sightings: Vec<Sighting>,
    in_episode: HashSet<IpAddr>,
}

impl Reference {
    fn observe(
        &mut self,
        cfg: &Config,
        o: &Observation,
    ) -> (Seen, bool, Option<(Vec<u16>, ProbeSet)>) {
        let Some(probe) = Probe::classify(o.flags) else {
            return (Seen::Ignored, false, None);
        };
        let direction = if cfg.locals.contains(o.src) {
            Direction::Out
        } else {
            Direction::In
        };
        let now = o.ts;
        if probe == Probe::Syn {
            let last = self
                .syns
                .iter()
                .rev()
                .find(|p| (p.src, p.dst, p.sport, p.dport) == (o.src, o.dst, o.sport, o.dport))
                .map(|p| p.ts);
            self.syns.push(*o);
            if last.is_some_and(|t| now - t <= cfg.window) {
                return (Seen::Retransmission(direction), false, None);
            }
        }
        let seen = if probe == Probe::Syn {
            Seen::Attempt(direction)
        } else {
            Seen::Stealth(direction, probe)
        };
        let log = probe == Probe::Syn && cfg.direction.selects(direction);
        // SPEC §2: outgoing attempts count toward scans only with --direction both.
        if direction == Direction::Out && cfg.direction != DirectionFilter::Both {
            return (seen, log, None);
        }
        let previous = self
            .sightings
            .iter()
            .rev()
            .find(|s| s.src == o.src)
            .map(|s| s.ts);
        if previous.is_some_and(|t| now - t > cfg.window) {
            self.in_episode.remove(&o.src);
        }
        self.sightings.push(Sighting {
            seq: self.sightings.len(),
            ts: now,
            src: o.src,
            port: o.dport,
            probe,
        });
        if self.in_episode.contains(&o.src) {
            return (seen, log, None);
        }
        let mine: Vec<&Sighting> = self.sightings.iter().filter(|s| s.src == o.src).collect();
        let in_window: HashSet<u16> = mine
            .iter()
            .filter(|s| now - s.ts <= cfg.window)
            .map(|s| s.port)
            .collect();
        if in_window.len() <= usize::from(cfg.max_ports) {
            return (seen, log, None);
        }
        self.in_episode.insert(o.src);
        // A port's first sighting is the start of its current run of sightings no more
        // than a window apart.
        let mut firsts: HashMap<u16, usize> = HashMap::new();
        let mut probes = ProbeSet::default();
        for port in &in_window {
            let runs: Vec<&&Sighting> = mine.iter().filter(|s| s.port == *port).collect();
            let mut start = runs.len() - 1;
            while start > 0 && runs[start].ts - runs[start - 1].ts <= cfg.window {
                start -= 1;
            }
            firsts.insert(*port, runs[start].seq);
            for s in &runs[start..] {
                probes.insert(s.probe);
            }
        }
        let mut ports: Vec<u16> = in_window.into_iter().collect();
        ports.sort_by_key(|p| firsts[p]);
        (seen, log, Some((ports, probes)))
    }
}

fn arb_stream() -> impl Strategy<Value = Vec<Observation>> {
    let step = prop_oneof![Just(0i64), 0i64..3, Just(10), 8i64..13, 20i64..40];
    let flags = prop_oneof![
        6 => Just(SYN),
        1 => Just(SYN | TcpFlags::ACK),
        1 => Just(TcpFlags::RST),
        1 => Just(TcpFlags::FIN),
        1 => Just(0u8),
        1 => Just(TcpFlags::ACK),
    ];
    prop::collection::vec((step, 0u8..4, 0u16..3, 0u8..2, 0u16..7, flags), 1..120).prop_map(
        |steps| {
            let mut ts = 0;
            steps
                .into_iter()
                .map(|(dt, src, sport, dst, dport, flags)| {
                    ts += dt * SEC;
                    // Source 0 is the local host.
                    let src = if src == 0 {
                        ip("192.0.2.1")
                    } else {
                        IpAddr::from([203, 0, 113, src])
                    };
                    Observation {
                        foreign: false,
                        ts: T0 + ts,
                        src,
                        dst: IpAddr::from([192, 0, 2, 1 + dst]),
                        sport: 1000 + sport,
                        dport: 20 + dport,
                        flags: TcpFlags(flags),
                    }
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn detector_agrees_with_the_reference_model(
        stream in arb_stream(),
        max_ports in 0u16..5,
        direction in prop_oneof![Just(DirectionFilter::In), Just(DirectionFilter::Out), Just(DirectionFilter::Both)],
    ) {
        let cfg = Config {
            max_ports,
            window: 10 * SEC,
            direction,
            ..local_cfg()
        };
        let mut det = Detector::new(cfg.clone());
        let mut reference = Reference::default();
        for (i, o) in stream.iter().enumerate() {
            let got = det.observe(o);
            let (seen, log, ports) = reference.observe(&cfg, o);
            prop_assert_eq!(got.seen, seen, "observation {} {:?}", i, o);
            prop_assert_eq!(got.log, log, "observation {} {:?}", i, o);
            prop_assert_eq!(got.scan.map(|s| (s.ports, s.probes)), ports, "observation {} {:?}", i, o);
        }
    }
}

/// Three ports from each of `addresses` addresses of 2001:db8:77:1::/64, one second apart.
fn rotation(addresses: u16) -> Vec<Observation> {
    (0..addresses)
        .flat_map(|a| {
            (0..3u16).map(move |p| {
                let t = i64::from(a * 3 + p) * SEC;
                obs(
                    t,
                    &format!("2001:db8:77:1::{:x}", a + 2),
                    40000,
                    "2001:db8::1",
                    1000 + a * 3 + p,
                    SYN,
                )
            })
        })
        .collect()
}

#[test]
fn forty_addresses_of_one_64_with_three_ports_each_are_one_scanner() {
    let mut det = Detector::new(Config::default());
    let (scans, logged) = run(&mut det, &rotation(40));
    assert_eq!(logged, 120, "connection events are per attempt, as before");
    assert_eq!(scans.len(), 1, "{scans:?}");
    let scan = &scans[0];
    // The address whose attempt crossed the threshold: the second one's first port.
    assert_eq!(scan.src, ip("2001:db8:77:1::3"));
    assert_eq!(
        scan.prefix,
        Some("2001:db8:77:1::/64".parse().expect("net"))
    );
    assert_eq!(scan.ports, [1000, 1001, 1002, 1003]);
    assert_eq!(det.tracked_sources(), 1);
    // Forgetting any address of the network forgets the network.
    assert!(det.forget(ip("2001:db8:77:1::ffff")));
}

#[test]
fn a_single_ipv6_scanner_carries_its_64_and_ipv4_has_no_prefix() {
    let mut det = Detector::new(Config::default());
    let v6: Vec<_> = (0..4u16)
        .map(|i| {
            obs(
                i64::from(i) * SEC,
                "2001:db8:9::77",
                40000,
                "2001:db8::1",
                20 + i,
                SYN,
            )
        })
        .collect();
    let (scans, _) = run(&mut det, &v6);
    assert_eq!(scans[0].src, ip("2001:db8:9::77"));
    assert_eq!(
        scans[0].prefix,
        Some("2001:db8:9::/64".parse().expect("net"))
    );
    let v4: Vec<_> = (0..4u16)
        .map(|i| syn(i64::from(i) * SEC, "203.0.113.9", 20 + i))
        .collect();
    let (scans, _) = run(&mut det, &v4);
    assert_eq!(scans[0].prefix, None);
}

#[test]
fn per_address_with_ipv6_prefix_128() {
    let mut det = Detector::new(Config {
        ipv6_prefix: 128,
        ..Config::default()
    });
    assert_eq!(run(&mut det, &rotation(40)).0, vec![]);
    // One source an address: at least the 20 of the last window are held (per /64 it
    // would be one).
    assert!(det.tracked_sources() >= 20, "{}", det.tracked_sources());
}

#[test]
fn a_prefix_that_holds_this_host_or_its_router_counts_per_address() {
    // The host's own on-link /64: its neighbours are not one scanner.
    let mut det = Detector::new(Config {
        locals: ["2001:db8:77:1::1"]
            .iter()
            .map(|s| parse_cidr(s).expect("cidr"))
            .collect(),
        ..Config::default()
    });
    assert_eq!(run(&mut det, &rotation(40)).0, vec![]);
    // A router's /64 (a link-local one here) likewise; another /64 still counts as one.
    let mut cfg = Config {
        neighbours: ["2001:db8:77:1::fe"]
            .iter()
            .map(|s| parse_cidr(s).expect("cidr"))
            .collect(),
        ..Config::default()
    };
    let mut det = Detector::new(cfg.clone());
    assert_eq!(run(&mut det, &rotation(40)).0, vec![]);
    // The router moves away: on reconfiguration the /64 is one scanner again.
    cfg.neighbours = AddrSet::new();
    det.reconfigure(cfg);
    let later: Vec<_> = rotation(2)
        .into_iter()
        .map(|mut o| {
            o.ts += 3600 * SEC;
            o
        })
        .collect();
    let (scans, _) = run(&mut det, &later);
    assert_eq!(scans.len(), 1);
    assert!(scans[0].prefix.is_some());
}

#[test]
fn an_allowlisted_addresss_neighbours_count_per_address() {
    // An allowlisted monitor checks three ports, a neighbour of its /64 connects once:
    // not one scanner (SPEC §2: a prefix holding a protected address counts per
    // address).
    let cfg = Config {
        allow: ["2001:db8:7::7"]
            .iter()
            .map(|s| parse_cidr(s).expect("cidr"))
            .collect(),
        ..Config::default()
    };
    let mut det = Detector::new(cfg);
    let mut stream: Vec<Observation> = (0..3u16)
        .map(|p| {
            obs(
                i64::from(p) * SEC,
                "2001:db8:7::7",
                40000,
                "2001:db8::1",
                7001 + p,
                SYN,
            )
        })
        .collect();
    stream.push(obs(
        4 * SEC,
        "2001:db8:7::8",
        40000,
        "2001:db8::1",
        443,
        SYN,
    ));
    assert_eq!(run(&mut det, &stream).0, vec![]);
    assert_eq!(
        det.source_of(ip("2001:db8:7::8")),
        (ip("2001:db8:7::8"), None)
    );
    // Outside the allowlisted address's /64, sources still count per /64.
    assert!(det.source_of(ip("2001:db8:8::8")).1.is_some());
    // An allowlisted network as wide as the prefix is counted as one, as configured.
    let mut det = Detector::new(Config {
        allow: ["2001:db8:77:1::/64"]
            .iter()
            .map(|s| parse_cidr(s).expect("cidr"))
            .collect(),
        ..Config::default()
    });
    assert_eq!(run(&mut det, &rotation(2)).0.len(), 1);
}

#[test]
fn nat64_sources_count_per_address_as_the_ipv4_hosts_they_stand_for() {
    // NAT64: every address of 64:ff9b::/96 and 64:ff9b:1::/48 is an IPv4 host of its
    // own, with any --ipv6-prefix.
    for prefix in [48, 56, 64, 96] {
        let det = Detector::new(Config {
            ipv6_prefix: prefix,
            ..Config::default()
        });
        for a in ["64:ff9b::102:304", "64:ff9b::a47:909", "64:ff9b:1:ab::1"] {
            assert_eq!(det.source_of(ip(a)), (ip(a), None), "{a} /{prefix}");
        }
    }
    let mut det = Detector::new(Config::default());
    let stream: Vec<Observation> = (0..4u16)
        .map(|i| {
            let src = format!("64:ff9b::102:{:x}", 0x300 + i);
            obs(
                i64::from(i) * SEC,
                &src,
                40000,
                "2001:db8::1",
                3001 + i,
                SYN,
            )
        })
        .collect();
    assert_eq!(run(&mut det, &stream).0, vec![]);
    // Four ports from one of them is a scan of that address alone.
    let stream: Vec<Observation> = (0..4u16)
        .map(|i| {
            obs(
                10 * SEC + i64::from(i) * SEC,
                "64:ff9b::102:304",
                40000,
                "2001:db8::1",
                3001 + i,
                SYN,
            )
        })
        .collect();
    let (scans, _) = run(&mut det, &stream);
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].prefix, None);
}

/// SYNs from `src` to port 22 of 10.20.0.1, .2, ... `hosts` of them, 100 ms apart; with
/// `answered`, each host answers 10 ms later with a SYN-ACK.
fn sweep_stream(src: &str, hosts: u8, answered: bool) -> Vec<Observation> {
    let mut stream = Vec::new();
    for h in 1..=hosts {
        let host = format!("10.20.0.{h}");
        let at = i64::from(h) * 100 * MS;
        stream.push(obs(at, src, 50000 + u16::from(h), &host, 22, SYN));
        if answered {
            stream.push(obs(
                at + 10 * MS,
                &host,
                22,
                src,
                50000 + u16::from(h),
                SYN | TcpFlags::ACK,
            ));
        }
    }
    stream
}

/// Feeds all observations, then ends the input; returns every sweep.
fn sweeps_of(det: &mut Detector, stream: &[Observation]) -> Vec<Scan> {
    let mut sweeps: Vec<Scan> = stream.iter().flat_map(|o| det.observe(o).sweeps).collect();
    sweeps.extend(det.finish());
    sweeps
}

#[test]
fn a_restart_judges_waiting_attempts_and_forgets_every_source() {
    let mut det = Detector::new(local_cfg());
    // A sweep of 20 hosts still waiting for its answers, and 3 ports of another source.
    for o in sweep_stream("198.51.100.77", 20, false) {
        assert!(det.observe(&o).sweeps.is_empty());
    }
    let s = "203.0.113.9";
    let first: Vec<_> = (0..3).map(|i| syn(i * SEC, s, 1000 + i as u16)).collect();
    assert!(run(&mut det, &first).0.is_empty());
    let found = det.restart();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ScanKind::Sweep);
    assert_eq!((det.tracked_sources(), det.tracked_attempts()), (0, 0));
    // Earlier in time than anything before: a fourth port is no scan, and a 4-tuple seen
    // before the restart is a new attempt.
    let (scans, logged) = run(
        &mut det,
        &[syn(-3600 * SEC, s, 1003), syn(-3599 * SEC, s, 1000)],
    );
    assert!(scans.is_empty());
    assert_eq!(logged, 2);
    assert_eq!(det.stats().attempts_in, 25);
}

#[test]
fn decoy_ports_reached_first_hide_no_sweep_at_any_max_ports() {
    // One unanswered SYN to each of `decoys` ports, then port 22 swept over 40 hosts:
    // with --max-ports 9 the 8 decoys held every port the sweep state kept, the sweep
    // was never remembered and no port scan came either (found by an independent
    // check). Now either the sweep or the port scan is reported, whatever the setting.
    for max_ports in [3u16, 8, 9, 12, 31, 32] {
        for decoys in [
            8u16,
            u16::try_from(crate::sweep::MOST_PORTS).unwrap_or(32) - 1,
        ] {
            let mut stream: Vec<Observation> = (0..decoys)
                .map(|p| {
                    obs(
                        i64::from(p) * MS,
                        "198.51.100.66",
                        40_000 + p,
                        "10.20.9.1",
                        1 + p,
                        SYN,
                    )
                })
                .collect();
            for h in 1..=40u8 {
                let at = SEC + i64::from(h) * 100 * MS;
                let host = format!("10.20.0.{h}");
                stream.push(obs(
                    at,
                    "198.51.100.66",
                    50_000 + u16::from(h),
                    &host,
                    22,
                    SYN,
                ));
            }
            let cfg = Config {
                max_ports,
                ..Config::default()
            };
            let mut det = Detector::new(cfg);
            let sweeps = sweeps_of(&mut det, &stream);
            let ports_scan = det.stats().scans > 0;
            assert!(
                sweeps.len() == 1 || ports_scan,
                "--max-ports {max_ports}, {decoys} decoys: no sweep and no port scan"
            );
            if usize::from(max_ports) < crate::sweep::MOST_PORTS && decoys < max_ports {
                assert_eq!(sweeps.len(), 1, "--max-ports {max_ports}, {decoys} decoys");
            }
        }
    }
}

#[test]
fn thirty_unanswered_hosts_on_one_port_are_one_sweep() {
    let mut det = Detector::new(Config::default());
    let sweeps = sweeps_of(&mut det, &sweep_stream("198.51.100.77", 30, false));
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    let s = &sweeps[0];
    assert_eq!(s.kind, ScanKind::Sweep);
    assert_eq!(s.src, ip("198.51.100.77"));
    assert_eq!(s.ports, [22]);
    let want: Vec<IpAddr> = (1..=17).map(|h| ip(&format!("10.20.0.{h}"))).collect();
    assert_eq!(
        s.hosts, want,
        "the first max_hosts + 1, in first-seen order"
    );
    // Known once the 17th attempt's answer time ran out: 1.7 s + 3 s.
    assert_eq!(s.ts, T0 + 4_700 * MS);
    assert_eq!(det.stats().sweeps, 1);
    assert_eq!(det.stats().scans, 0, "one port is no port scan");
}

#[test]
fn a_monitoring_server_whose_connections_are_answered_is_no_sweeper() {
    let mut det = Detector::new(Config::default());
    assert_eq!(
        sweeps_of(&mut det, &sweep_stream("192.0.2.200", 30, true)),
        vec![]
    );
}

#[test]
fn an_answer_after_the_answer_wait_does_not_count() {
    let mut det = Detector::new(Config {
        answer_wait: 5 * MS,
        ..Config::default()
    });
    // Every SYN-ACK comes 10 ms after its SYN: too late.
    assert_eq!(
        sweeps_of(&mut det, &sweep_stream("198.51.100.77", 30, true)).len(),
        1
    );
}

#[test]
fn sixteen_hosts_are_not_a_sweep_and_seventeen_are() {
    let mut det = Detector::new(Config::default());
    assert_eq!(
        sweeps_of(&mut det, &sweep_stream("198.51.100.1", 16, false)),
        vec![]
    );
    let mut det = Detector::new(Config::default());
    assert_eq!(
        sweeps_of(&mut det, &sweep_stream("198.51.100.1", 17, false)).len(),
        1
    );
}

#[test]
fn a_sweep_is_found_by_the_clock_when_no_packet_follows() {
    let mut det = Detector::new(Config::default());
    let stream = sweep_stream("198.51.100.77", 20, false);
    let during: Vec<Scan> = stream.iter().flat_map(|o| det.observe(o).sweeps).collect();
    assert_eq!(during, vec![], "none is judged before its answer time");
    assert_eq!(det.poll_at(), Some(T0 + 100 * MS + 3 * SEC + 1));
    assert_eq!(det.tick(T0 + 4 * SEC), vec![]);
    let found = det.tick(T0 + 5 * SEC);
    assert_eq!(found.len(), 1);
    // The last attempt (2 s) may still be answered at exactly 5 s.
    assert_eq!(det.awaiting_answers(), 1);
    assert_eq!(det.tick(T0 + 5 * SEC + 1), vec![]);
    assert_eq!(det.awaiting_answers(), 0);
    assert_eq!(det.poll_at(), None);
}

#[test]
fn without_visible_answers_no_sweep_is_looked_for() {
    let mut det = Detector::new(Config {
        sweeps: false,
        ..Config::default()
    });
    assert_eq!(
        sweeps_of(&mut det, &sweep_stream("198.51.100.77", 30, false)),
        vec![]
    );
    assert_eq!(det.awaiting_answers(), 0);
}

#[test]
fn a_sweep_is_reported_once_per_episode() {
    let mut det = Detector::new(Config::default());
    let mut stream = sweep_stream("198.51.100.77", 30, false);
    // The same sweep again 10 s later (same episode), then after a quiet window.
    let again: Vec<Observation> = stream
        .iter()
        .map(|o| Observation {
            foreign: false,
            ts: o.ts + 10 * SEC,
            sport: o.sport + 100,
            ..*o
        })
        .collect();
    let later: Vec<Observation> = stream
        .iter()
        .map(|o| Observation {
            foreign: false,
            ts: o.ts + 200 * SEC,
            sport: o.sport + 200,
            ..*o
        })
        .collect();
    stream.extend(again);
    stream.extend(later);
    let found = sweeps_of(&mut det, &stream);
    assert_eq!(
        found.len(),
        2,
        "{:?}",
        found.iter().map(|s| s.ts - T0).collect::<Vec<_>>()
    );
}

/// A spoofed SYN flood's attempt: source number `i`, unanswered, to `host` on port 80.
fn spoofed(ts: Nanos, i: u32, host: u8) -> Observation {
    Observation {
        foreign: false,
        ts: T0 + ts,
        src: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i)),
        dst: IpAddr::from(std::net::Ipv4Addr::new(10, 30, 0, host)),
        sport: 1024,
        dport: 80,
        flags: TcpFlags(SYN),
    }
}

/// The sweeper's attempt to its `n`th host (10.20.0.n) on port 22.
fn sweeping(ts: Nanos, n: u8) -> Observation {
    obs(
        ts,
        "198.51.100.77",
        50000 + u16::from(n),
        &format!("10.20.0.{n}"),
        22,
        SYN,
    )
}

#[test]
fn a_spoofed_flood_at_the_cap_does_not_keep_a_new_sweeper_out() {
    // Every spoofed source makes one unanswered attempt and never comes back; the sweep
    // state is full of them, all inside the window, long before the sweeper starts. It
    // reaches a new host every 500 spoofed attempts, and must still be found (counted
    // from its second host: its first attempt, at the cap, was a first sighting).
    let cap = 1000;
    let mut det = Detector::new(Config {
        max_sources: cap,
        ..Config::default()
    });
    let mut found = Vec::new();
    let mut n = 0u8;
    for i in 0..60_000u32 {
        let t = Nanos::from(i) * 100_000;
        found.extend(det.observe(&spoofed(t, i, 1)).sweeps);
        if i >= 5_000 && i % 500 == 0 && n < 20 {
            n += 1;
            found.extend(det.observe(&sweeping(t, n)).sweeps);
        }
        assert!(det.tracked_sweepers() <= cap);
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].src, ip("198.51.100.77"));
    assert_eq!(found[0].hosts, hosts_from(found[0].hosts[0], 17));
    assert_eq!(found[0].hosts[0], ip("10.20.0.2"));
}

/// `n` sweep hosts in a row from `first` (10.20.0.x).
fn hosts_from(first: IpAddr, n: u8) -> Vec<IpAddr> {
    let IpAddr::V4(v4) = first else {
        panic!("an IPv4 host: {first}");
    };
    let x = v4.octets()[3];
    (x..x + n).map(|h| ip(&format!("10.20.0.{h}"))).collect()
}

/// As [`slow_scanner_through_three_port_noise`], for sweeps: every spoofed source reaches
/// `max_hosts` hosts at once, as many as a source may without being a sweeper, and never
/// comes back; the sweeper's attempts are further apart each time, the last gap longer
/// than it takes the flood to fill the whole table. Only its coming back can keep it.
/// Returns the sweeps and the sweep states dropped.
fn slow_sweeper_through_max_hosts_noise(cap: u32) -> (Vec<Scan>, u64) {
    let mut det = Detector::new(Config {
        max_sources: cap as usize,
        max_hosts: 4,
        // A quarter of the cap's worth of spoofed sources.
        answer_wait: Nanos::from(cap) * 10_000,
        ..Config::default()
    });
    let mut hosts_at = vec![cap / 10];
    for g in [cap * 3 / 10, cap * 6 / 10, cap * 12 / 10, cap * 15 / 10] {
        hosts_at.push(hosts_at[hosts_at.len() - 1] + g);
    }
    let mut found = Vec::new();
    let mut t = 0;
    for i in 0..hosts_at[hosts_at.len() - 1] + 2 * cap {
        for host in 1..=4 {
            t += 10_000;
            found.extend(det.observe(&spoofed(t, i, host)).sweeps);
        }
        assert!(det.tracked_sweepers() <= cap as usize);
        if let Some(n) = hosts_at.iter().position(|&at| at == i) {
            found.extend(det.observe(&sweeping(t, n as u8 + 1)).sweeps);
        }
    }
    if let [sweep] = &found[..] {
        assert_eq!(sweep.src, ip("198.51.100.77"));
        let want: Vec<IpAddr> = (1..=5).map(|h| ip(&format!("10.20.0.{h}"))).collect();
        assert_eq!(sweep.hosts, want);
    }
    (found, det.stats().sweep_state_dropped)
}

#[test]
fn spoofed_sources_with_max_hosts_each_do_not_evict_a_slow_sweeper() {
    let (found, dropped) = slow_sweeper_through_max_hosts_noise(1000);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(dropped > 2000, "{dropped}");
}

#[test]
fn a_sweeper_back_before_the_table_first_filled_outlives_the_first_evictions() {
    // As a_scanner_back_before_the_table_first_filled_outlives_the_first_evictions, for
    // the sweep table (0.5% of runs missed the sweeper at a cap of 1,000).
    let missed = (0..400)
        .filter(|_| slow_sweeper_through_max_hosts_noise(40).0.len() != 1)
        .count();
    assert_eq!(missed, 0);
}

#[test]
fn a_scanner_slower_than_a_flood_turns_the_table_over_is_still_found() {
    // Every spoofed source sends one SYN and never comes back; between two of the
    // scanner's probes the flood brings three times as many new sources as the table
    // holds, from the first gap on, so neither its credit nor its recency can keep it in
    // the table. Sources seen once at the cap are remembered apart (first sightings), so
    // its second probe finds its first and it gets a place the flood cannot take.
    let cap = 1000u32;
    let mut det = Detector::new(Config {
        max_sources: cap as usize,
        ..local_cfg()
    });
    let scanner = "203.0.113.9";
    let mut scans = Vec::new();
    let mut probes = 0u16;
    for i in 0..26_000u32 {
        let t = Nanos::from(i) * 10_000;
        let o = Observation {
            foreign: false,
            ts: T0 + t,
            src: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i)),
            dst: ip("192.0.2.1"),
            sport: 1024,
            dport: 80,
            flags: TcpFlags(SYN),
        };
        scans.extend(det.observe(&o).scan);
        assert!(det.tracked_sources() <= cap as usize);
        if i >= 2000 && i % 3000 == 2000 {
            scans.extend(det.observe(&syn(t, scanner, 1000 + probes)).scan);
            probes += 1;
        }
    }
    assert_eq!(probes, 8);
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert_eq!(scans[0].src, ip(scanner));
    // Four of its ports in a row: from its first, unless (about once in 150 runs: the
    // array's buckets are picked by a keyed hash) the flood wrote over a first sighting
    // before the next probe came, and it counted from that one. Eight probes leave room
    // for five such misses in a row (about once in 10^10).
    let first = scans[0].ports[0];
    assert!((1000..=1004).contains(&first), "{:?}", scans[0].ports);
    assert_eq!(scans[0].ports, [first, first + 1, first + 2, first + 3]);
}

#[test]
fn a_sweeper_slower_than_a_flood_turns_the_sweep_table_over_is_still_found() {
    // As above, for sweeps: between two of the sweeper's attempts the flood brings three
    // times as many new unanswered sources as the tables hold. At the cap, sweep state
    // goes only to sources that came back (they hold a slot of the port-scan table): the
    // flood's sources are dropped instead of evicting the sweeper's state.
    let cap = 1000u32;
    let mut det = Detector::new(Config {
        max_sources: cap as usize,
        answer_wait: 10 * MS,
        ..Config::default()
    });
    let mut found = Vec::new();
    let mut n = 0u8;
    let mut waiting = 0;
    for i in 0..64_000u32 {
        let t = Nanos::from(i) * 10_000;
        found.extend(det.observe(&spoofed(t, i, 1)).sweeps);
        if i >= 2000 && i % 3000 == 2000 {
            n += 1;
            found.extend(det.observe(&sweeping(t, n)).sweeps);
        }
        assert!(det.tracked_sweepers() <= cap as usize);
        if i >= 2000 {
            waiting = waiting.max(det.awaiting_answers());
        }
    }
    found.extend(det.finish());
    assert_eq!(n, 21);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].src, ip("198.51.100.77"));
    // Its first attempt was a first sighting (not counted), so from its second host;
    // from a later one if the flood wrote over a first sighting (see above).
    let first = found[0].hosts[0];
    assert_eq!(found[0].hosts, hosts_from(first, 17));
    assert!(
        ["10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5"].contains(&first.to_string().as_str()),
        "{first}"
    );
    // Past the cap, the flood's attempts never waited for an answer (about a thousand
    // would, one answer time's worth).
    assert!(waiting < 10, "{waiting} attempts waited at once");
    assert!(det.stats().first_sightings > 50_000, "{:?}", det.stats());
}

/// Unanswered SYNs host after host, each host tried on every port of `ports` in turn
/// (nmap's host groups), 10 ms apart.
fn host_by_host(src: &str, hosts: u8, ports: &[u16]) -> Vec<Observation> {
    let mut stream = Vec::new();
    let mut at = 0;
    for h in 1..=hosts {
        for &p in ports {
            at += 10 * MS;
            stream.push(obs(at, src, 50000 + p, &format!("10.20.0.{h}"), p, SYN));
        }
    }
    stream
}

#[test]
fn a_sweep_of_nine_ports_host_after_host_is_found() {
    // Remembering only eight ports a source, and forgetting the least recently used,
    // forgot each port just before its turn came round again: no sweep was ever found.
    let cfg = Config {
        max_ports: 20,
        ..Config::default()
    };
    for n in [8u16, 9, 12, 40] {
        let ports: Vec<u16> = (1000..1000 + n).collect();
        let mut det = Detector::new(cfg.clone());
        let sweeps = sweeps_of(&mut det, &host_by_host("198.51.100.77", 20, &ports));
        assert_eq!(sweeps.len(), 1, "{n} ports: {sweeps:?}");
        assert_eq!(sweeps[0].ports, [1000], "{n} ports: the first port");
        assert_eq!(sweeps[0].hosts.len(), 17);
    }
}

#[test]
fn an_answer_exactly_answer_wait_after_its_attempt_counts() {
    // "unanswered when no SYN-ACK for its 4-tuple is seen within answer_wait": an
    // answer at exactly 3 s is within it.
    for (delay, want) in [(3 * SEC - 1, 0), (3 * SEC, 0), (3 * SEC + 1, 1)] {
        let mut det = Detector::new(Config::default());
        let mut stream = Vec::new();
        for h in 1..=20u16 {
            let (host, at) = (format!("10.20.0.{h}"), i64::from(h) * 100 * MS);
            stream.push(obs(at, "198.51.100.77", 50000 + h, &host, 22, SYN));
            let answer = obs(at + delay, &host, 22, "198.51.100.77", 50000 + h, SYN);
            stream.push(Observation {
                foreign: false,
                flags: TcpFlags(SYN | TcpFlags::ACK),
                ..answer
            });
        }
        stream.sort_by_key(|o| o.ts);
        assert_eq!(
            sweeps_of(&mut det, &stream).len(),
            want,
            "answers {delay} ns after their attempts"
        );
    }
}

#[test]
fn answered_attempts_keep_a_sweep_episode_open() {
    // An episode ends when the source made no attempt for a whole window; answered
    // attempts are attempts. Seventeen unanswered hosts, then an answered attempt every
    // 30 s, then seventeen more unanswered hosts: one episode, one report.
    let mut det = Detector::new(Config::default());
    let src = "198.51.100.77";
    let mut stream = sweep_stream(src, 17, false);
    let mut at = 2 * SEC;
    for i in 0..7u16 {
        at += 30 * SEC;
        stream.push(obs(at, src, 40000 + i, "10.30.0.1", 22, SYN));
        stream.push(obs(
            at + 10 * MS,
            "10.30.0.1",
            22,
            src,
            40000 + i,
            SYN | TcpFlags::ACK,
        ));
    }
    for h in 1..=17u8 {
        let host = format!("10.40.0.{h}");
        stream.push(obs(
            at + i64::from(h) * 100 * MS,
            src,
            60000 + u16::from(h),
            &host,
            22,
            SYN,
        ));
    }
    assert_eq!(sweeps_of(&mut det, &stream).len(), 1);

    // Without the answered attempts the source was quiet for a window: two episodes.
    let mut det = Detector::new(Config::default());
    let quiet: Vec<Observation> = stream
        .iter()
        .filter(|o| o.dst != ip("10.30.0.1") && o.src != ip("10.30.0.1"))
        .copied()
        .collect();
    assert_eq!(sweeps_of(&mut det, &quiet).len(), 2);
}

/// A detector whose source table (cap 2) and 4-tuple table (cap 2) are full: two
/// sources hold the slots, so first sightings keep their attempts' marks.
fn full_detector() -> Detector {
    let mut det = Detector::new(Config {
        max_sources: 2,
        max_attempts: 2,
        ..local_cfg()
    });
    for (i, src) in ["10.0.0.1", "10.0.0.2"].iter().enumerate() {
        det.observe(&syn(i as Nanos * MS, src, 22));
    }
    assert_eq!(det.tracked_sources(), 2);
    det
}

#[test]
fn a_first_sightings_retransmission_is_one_and_its_memory_lasts_the_window() {
    let mut det = full_detector();
    let first = syn(SEC, "198.51.100.7", 80);
    let again = |det: &mut Detector, at: Nanos| {
        det.observe(&Observation {
            foreign: false,
            ts: T0 + at,
            ..first
        })
    };
    assert_eq!(again(&mut det, SEC).seen, Seen::Attempt(Direction::In));
    assert_eq!(det.stats().first_sightings, 1);
    // Not in the 4-tuple table: the first sighting holds it.
    assert_eq!(det.tracked_attempts(), 2);
    for at in [2 * SEC, 4 * SEC, 8 * SEC] {
        let out = again(&mut det, at);
        assert_eq!(out.seen, Seen::Retransmission(Direction::In), "at {at}");
        assert!(!out.log);
    }
    // Within the window of its last sighting (8 s), not of its first.
    assert_eq!(
        again(&mut det, 67 * SEC).seen,
        Seen::Retransmission(Direction::In)
    );
    assert_eq!(
        again(&mut det, 128 * SEC).seen,
        Seen::Attempt(Direction::In)
    );
}

#[test]
fn while_the_4_tuple_table_has_room_a_first_sightings_attempt_is_remembered_there() {
    let mut det = Detector::new(Config {
        max_sources: 2,
        ..local_cfg()
    });
    for (i, src) in ["10.0.0.1", "10.0.0.2", "198.51.100.7"].iter().enumerate() {
        det.observe(&syn(i as Nanos * MS, src, 22));
    }
    assert_eq!(det.stats().first_sightings, 1);
    assert_eq!(det.tracked_attempts(), 3);
}

#[test]
fn a_first_sighting_left_alone_past_the_window_is_a_new_attempt_again() {
    let mut det = full_detector();
    let first = syn(SEC, "198.51.100.7", 80);
    assert_eq!(det.observe(&first).seen, Seen::Attempt(Direction::In));
    let late = Observation {
        foreign: false,
        ts: first.ts + 60 * SEC + 1,
        ..first
    };
    assert_eq!(det.observe(&late).seen, Seen::Attempt(Direction::In));
    let inside = Observation {
        foreign: false,
        ts: late.ts + 60 * SEC,
        ..first
    };
    assert_eq!(
        det.observe(&inside).seen,
        Seen::Retransmission(Direction::In)
    );
}

#[test]
fn a_source_back_with_a_new_port_still_has_its_first_attempt_remembered() {
    let mut det = full_detector();
    let first = syn(SEC, "198.51.100.7", 80);
    assert_eq!(det.observe(&first).seen, Seen::Attempt(Direction::In));
    // Back on another port: a slot (evicting one), its first port with it.
    let second = syn(2 * SEC, "198.51.100.7", 443);
    let out = det.observe(&second);
    assert_eq!(out.seen, Seen::Attempt(Direction::In));
    assert!(out.log);
    assert_eq!(det.stats().first_sightings, 1);
    // Its first attempt retransmitted, then its second: both retransmissions.
    for o in [first, second, first] {
        let o = Observation {
            foreign: false,
            ts: o.ts + 3 * SEC,
            ..o
        };
        assert_eq!(
            det.observe(&o).seen,
            Seen::Retransmission(Direction::In),
            "{o:?}"
        );
    }
    // And its ports count: two more make a scan of four.
    let (scans, _) = run(
        &mut det,
        &[
            syn(5 * SEC, "198.51.100.7", 22),
            syn(6 * SEC, "198.51.100.7", 25),
        ],
    );
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert_eq!(scans[0].ports, [80, 443, 22, 25]);
}

#[test]
fn a_forgotten_first_sighting_keeps_its_attempt_a_retransmission() {
    let mut det = full_detector();
    let first = syn(SEC, "198.51.100.7", 80);
    det.observe(&first);
    // A lifted ban forgets the source's ports, not its 4-tuples.
    det.forget(ip("198.51.100.7"));
    let again = Observation {
        foreign: false,
        ts: first.ts + SEC,
        ..first
    };
    assert_eq!(
        det.observe(&again).seen,
        Seen::Retransmission(Direction::In)
    );
    // Its port was forgotten: back on another port, it is a first sighting again.
    det.observe(&syn(3 * SEC, "198.51.100.7", 443));
    assert_eq!(det.stats().first_sightings, 2);
}

#[test]
fn first_sightings_of_an_ipv6_prefix_tell_its_addresses_attempts_apart() {
    let mut det = full_detector();
    let a = obs(SEC, "2001:db8:77:1::a", 5000, "192.0.2.1", 80, SYN);
    let b = obs(SEC, "2001:db8:77:1::b", 5000, "192.0.2.1", 80, SYN);
    assert_eq!(det.observe(&a).seen, Seen::Attempt(Direction::In));
    // Same prefix, same ports, another address: another attempt (and the prefix's
    // second, so it gets a slot).
    assert_eq!(det.observe(&b).seen, Seen::Attempt(Direction::In));
    // b's 4-tuple is in the (tiny) 4-tuple table, a's only marked with its sighting.
    for o in [b, a] {
        let o = Observation {
            foreign: false,
            ts: o.ts + SEC,
            ..o
        };
        assert_eq!(
            det.observe(&o).seen,
            Seen::Retransmission(Direction::In),
            "{o:?}"
        );
    }
}

/// Retransmissions are told apart exactly whatever the source cap, while the 4-tuple
/// table has room: the same stream (30,000 sources, 30% retransmitting up to 70 s later,
/// 15% coming back on other ports and retransmitting their first attempt again) gives
/// the same new attempts at a cap of 500 (first sightings in use, sources evicted and
/// noted again) as at a cap no stream reaches.
#[test]
fn retransmissions_are_told_apart_at_any_source_cap() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut stream = Vec::new();
    for i in 0..30_000i64 {
        let t = i * 500_000;
        let src = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + (next() as u32 >> 8)));
        let sport = 1024 + (next() % 60_000) as u16;
        let dport = [22, 80, 443, 8080][(next() % 4) as usize];
        let at = |ts: Nanos, sport: u16, dport: u16| Observation {
            foreign: false,
            ts: T0 + ts,
            src,
            dst: ip("10.0.0.1"),
            sport,
            dport,
            flags: TcpFlags(SYN),
        };
        stream.push(at(t, sport, dport));
        let r = next() % 100;
        if r < 30 {
            for dt in [1, 3, 7, 15, 31, 62, 70] {
                if next() % 3 == 0 {
                    stream.push(at(t + dt * SEC, sport, dport));
                }
            }
        }
        if r < 15 {
            for k in 0..(1 + next() % 4) as u16 {
                stream.push(at(t + (2 + i64::from(k)) * SEC, sport + 1 + k, 1000 + k));
            }
            stream.push(at(t + 9 * SEC, sport, dport));
        }
    }
    stream.sort_by_key(|o| o.ts);
    let attempts = |max_sources| {
        let mut det = Detector::new(Config {
            max_sources,
            ..local_cfg()
        });
        let (_, logged) = run(&mut det, &stream);
        assert!(det.stats().first_sightings > 0 || max_sources > 30_000);
        (logged, det.stats().retransmissions)
    };
    assert_eq!(attempts(500), attempts(10_000_000));
}

#[test]
fn link_local_sources_count_per_address_even_with_no_local_address_known() {
    // Ten neighbours of one link (fe80::/64 holds the host's own link-local address and
    // its router's) reaching three ports each (thirty in all): no scan, with any
    // --ipv6-prefix, in a replay that was told no local address.
    for prefix in [48, 64] {
        let mut det = Detector::new(Config {
            ipv6_prefix: prefix,
            ..Config::default()
        });
        let stream: Vec<Observation> = (0..30u16)
            .map(|i| {
                let src = format!("fe80::{:x}", 0x100 + i / 3);
                obs(i64::from(i) * SEC, &src, 40000, "fe80::1", 1 + i, SYN)
            })
            .collect();
        assert_eq!(run(&mut det, &stream).0, vec![], "/{prefix}");
        assert_eq!(det.source_of(ip("fe80::101")), (ip("fe80::101"), None));
        assert_eq!(det.source_of(ip("febf::1")), (ip("febf::1"), None));
        // Outside fe80::/10 sources still count per prefix.
        assert!(det.source_of(ip("fec0::1")).1.is_some());
    }
}

#[test]
fn sources_beside_loopback_count_per_address_even_with_no_local_address_known() {
    // IPv4-compatible sources ::0.0.0.5 to ::0.0.0.7 reach three ports between them, and
    // a forged ::1 the fourth: lumped as ::/64 that was a scan whose crossing source
    // (::1) is never banned. Per address it is none.
    let mut det = Detector::new(Config::default());
    let stream: Vec<Observation> = ["::5", "::6", "::7", "::1"]
        .iter()
        .zip(1u16..)
        .map(|(src, port)| syn(i64::from(port) * SEC, src, port))
        .collect();
    assert_eq!(run(&mut det, &stream).0, vec![]);
    assert_eq!(det.source_of(ip("::5")), (ip("::5"), None));
    // Other prefixes still count together.
    assert!(det.source_of(ip("1::1")).1.is_some());
}

#[test]
fn scans_from_addresses_that_are_never_a_source_are_reported_as_never_to_be_blocked() {
    // Forged: the kernel answers nothing from these. Reported, and marked as the agent
    // treats them (never banned), in replay too.
    for src in [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "100::7",
        "::ffff:127.0.0.1",
    ] {
        let mut det = Detector::new(Config::default());
        let stream: Vec<Observation> = (0..4u16)
            .map(|i| syn(i64::from(i) * SEC, src, 1 + i))
            .collect();
        let (scans, _) = run(&mut det, &stream);
        assert_eq!(scans.len(), 1, "{src}");
        assert!(scans[0].allowlisted, "{src}");
    }
    let mut det = Detector::new(Config::default());
    let stream: Vec<Observation> = (0..4u16)
        .map(|i| syn(i64::from(i) * SEC, "198.51.100.7", 1 + i))
        .collect();
    assert!(!run(&mut det, &stream).0[0].allowlisted);
}
