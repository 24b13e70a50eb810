//! Live capture for real: a handle on the loopback interface sees a connection attempt
//! to a closed port (the SYN) and not the kernel's RST-ACK answer, with a kernel
//! timestamp close to the wall clock. Needs CAP_NET_RAW; `make test` runs it as root.

#![expect(
    clippy::disallowed_methods,
    reason = "compares kernel timestamps with the clock"
)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use synwatch_capture::live::{LiveCapture, LiveError, LiveOptions};
use synwatch_decode::{Decoded, LinkType, TcpFlags, Transport, decode};

/// A live handle on `device`, with the default options.
fn open(device: &str) -> LiveCapture {
    match LiveCapture::open(device, &LiveOptions::default()) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => panic!("run as root (make test does): {e}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
#[ignore = "needs CAP_NET_RAW; make test runs it as root"]
fn loopback_capture_sees_the_syn_and_not_the_reply() {
    let mut cap = open("lo");
    // A port nobody listens on: bind and drop a listener to find a free one.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let refused = TcpStream::connect_timeout(&target, Duration::from_secs(1));
    assert!(refused.is_err(), "port {port} should be closed");

    let link = LinkType::from_linktype(cap.linktype()).expect("loopback link type");
    let mut deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(p) = cap.next_packet().expect("read") else {
            continue;
        };
        let ts = p.ts_nanos;
        if let Ok(Decoded::Segment(s)) = decode(link, p.data)
            && let Transport::Tcp(flags) = s.transport
            && (s.dport == port || s.sport == port)
        {
            seen.push((flags, ts));
            // Keep reading a little: the RST-ACK answer must not show up.
            deadline = deadline.min(Instant::now() + Duration::from_millis(300));
        }
    }
    assert_eq!(seen.len(), 1, "only the SYN passes the filter: {seen:?}");
    let (flags, ts) = seen[0];
    assert_eq!(flags.0 & (TcpFlags::SYN | TcpFlags::ACK), TcpFlags::SYN);
    assert!(
        (ts - before).abs() < 5_000_000_000,
        "kernel timestamp {ts} vs clock {before}"
    );
    let stats = cap.stats().expect("stats");
    assert!(stats.received >= 1, "{stats:?}");
}

/// The SYNs to closed ports on 127.0.0.1 that `cap` hands up within `wait`.
fn syns_seen(cap: &mut LiveCapture, ports: &[u16], wait: Duration) -> usize {
    let link = LinkType::from_linktype(cap.linktype()).expect("loopback link type");
    let deadline = Instant::now() + wait;
    let mut seen = 0;
    while Instant::now() < deadline {
        let Some(p) = cap.next_packet().expect("read") else {
            continue;
        };
        if let Ok(Decoded::Segment(s)) = decode(link, p.data)
            && let Transport::Tcp(flags) = s.transport
            && flags.0 & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN
            && ports.contains(&s.dport)
        {
            seen += 1;
        }
    }
    seen
}

/// Attempts to `count` closed ports of 127.0.0.1; returns them.
fn refused_attempts(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect();
    drop(listeners);
    for &port in &ports {
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_err());
    }
    ports
}

#[test]
#[ignore = "needs CAP_NET_RAW; make test runs it as root"]
fn naming_the_hosts_addresses_keeps_what_the_ring_holds_and_drops_what_comes_in_from_them() {
    let mut cap = open("lo");
    let own = [ipnet::IpNet::from(std::net::IpAddr::from(
        Ipv4Addr::LOCALHOST,
    ))];
    // Attempts waiting in the kernel's ring when the filter changes were judged by the
    // filter of their time: none is lost (set through libpcap, they were filtered again
    // in user space, where the packet type cannot be read, and every one from the named
    // address was dropped).
    let before = refused_attempts(5);
    cap.set_own(&own).expect("filter naming 127.0.0.1");
    assert_eq!(syns_seen(&mut cap, &before, Duration::from_millis(500)), 5);
    // After it, the kernel leaves out what comes in from a named address (on loopback
    // that is every packet: the agent never names the addresses there).
    let during = refused_attempts(5);
    assert_eq!(syns_seen(&mut cap, &during, Duration::from_millis(500)), 0);
    cap.set_own(&[]).expect("filter naming no address");
    let after = refused_attempts(5);
    assert_eq!(syns_seen(&mut cap, &after, Duration::from_millis(500)), 5);
}

#[test]
#[ignore = "needs CAP_NET_RAW; make test runs it as root"]
fn a_cooked_capture_names_the_hosts_addresses_where_the_kernel_reads_them() {
    // libpcap's "any" device is a cooked capture (as PPP links are): the kernel's filter
    // sees each packet from its network header, so the filter's loads are moved.
    let mut cap = open("any");
    assert!(
        matches!(cap.linktype(), 113 | 276),
        "linktype {}",
        cap.linktype()
    );
    let other = [ipnet::IpNet::from(std::net::IpAddr::from(Ipv4Addr::new(
        192, 0, 2, 1,
    )))];
    cap.set_own(&other).expect("filter naming 192.0.2.1");
    let seen = refused_attempts(5);
    assert_eq!(syns_seen(&mut cap, &seen, Duration::from_millis(500)), 5);
    let own = [ipnet::IpNet::from(std::net::IpAddr::from(
        Ipv4Addr::LOCALHOST,
    ))];
    cap.set_own(&own).expect("filter naming 127.0.0.1");
    let left_out = refused_attempts(5);
    assert_eq!(
        syns_seen(&mut cap, &left_out, Duration::from_millis(500)),
        0
    );
}
