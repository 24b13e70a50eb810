//! The socket table for real: a loopback connection made by the test shows up in the
//! sock_diag dump and in `/proc/net/tcp{,6}` alike, as a listener and both established
//! ends, and [`NewConnections`] reports its server side as incoming and its client side as
//! outgoing, once. Needs no privileges and no network namespace.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};

use synwatch_capture::sockets::{
    Connection, DestroyEvents, Method, NewConnections, ProcSource, SocketTable, TcpSocket, TcpState,
};

/// A listener and an accepted connection to it, held open while the tables are read.
struct Pair {
    listener: SocketAddr,
    /// The client's end: local is the client, remote the listener's address.
    client: SocketAddr,
    _held: (TcpListener, TcpStream, TcpStream),
}

fn connect(bind: SocketAddr, connect_ip: IpAddr) -> std::io::Result<Pair> {
    let listener = TcpListener::bind(bind)?;
    let port = listener.local_addr()?.port();
    let client = TcpStream::connect((connect_ip, port))?;
    let (server, _) = listener.accept()?;
    Ok(Pair {
        listener: listener.local_addr()?,
        client: client.local_addr()?,
        _held: (listener, client, server),
    })
}

fn table() -> SocketTable {
    let table = SocketTable::open().unwrap();
    assert_eq!(
        table.method(),
        Method::SockDiag,
        "sock_diag should work here: {:?}",
        table.fallback_reason()
    );
    assert_eq!(table.fallback_reason(), None);
    table
}

fn unspecified(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn has(dump: &[TcpSocket], local: SocketAddr, remote: SocketAddr, state: TcpState) -> bool {
    dump.iter()
        .any(|s| s.local == local && s.remote == remote && s.state == state)
}

/// The new connections that are the pair's two ends (other tests' sockets are ignored).
fn ours(connections: &[Connection], pair: &Pair, server_ip: IpAddr) -> Vec<Connection> {
    let server = SocketAddr::new(server_ip, pair.listener.port());
    connections
        .iter()
        .filter(|c| {
            (c.local == server && c.remote == pair.client)
                || (c.local == pair.client && c.remote == server)
        })
        .copied()
        .collect()
}

fn check_one_incoming_one_outgoing(dump: &[TcpSocket], pair: &Pair, server_ip: IpAddr) {
    let server = SocketAddr::new(server_ip, pair.listener.port());
    let mut watch = NewConnections::new();
    let first = ours(&watch.update(dump), pair, server_ip);
    let incoming = Connection {
        local: server,
        remote: pair.client,
        state: TcpState::Established,
        incoming: true,
    };
    let outgoing = Connection {
        local: pair.client,
        remote: server,
        state: TcpState::Established,
        incoming: false,
    };
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.contains(&incoming), "{first:?}");
    assert!(first.contains(&outgoing), "{first:?}");
    // Reported once.
    assert_eq!(ours(&watch.update(dump), pair, server_ip), []);
}

fn check_pair(pair: &Pair) {
    let listener = pair.listener;
    let client = pair.client;
    let remote_of_listener = unspecified(listener.ip());

    let diag = table().dump().unwrap();
    let proc = ProcSource::new().dump().unwrap();
    for (name, dump) in [("sock_diag", &diag), ("/proc", &proc)] {
        assert!(
            has(dump, listener, remote_of_listener, TcpState::Listen),
            "{name}: no listener {listener} in {dump:?}"
        );
        assert!(
            has(dump, listener, client, TcpState::Established),
            "{name}: no server end {listener} <- {client}"
        );
        assert!(
            has(dump, client, listener, TcpState::Established),
            "{name}: no client end {client} -> {listener}"
        );
        check_one_incoming_one_outgoing(dump, pair, listener.ip());
    }
}

#[test]
fn ipv4_loopback_connection() {
    let pair = connect((Ipv4Addr::LOCALHOST, 0).into(), Ipv4Addr::LOCALHOST.into()).unwrap();
    check_pair(&pair);
}

#[test]
fn ipv6_loopback_connection() {
    let pair = match connect((Ipv6Addr::LOCALHOST, 0).into(), Ipv6Addr::LOCALHOST.into()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback here ({e})");
            return;
        }
    };
    check_pair(&pair);
}

/// An IPv4 client of a dual-stack `[::]` listener: the server end is in the IPv6 table
/// with IPv4-mapped addresses, and is reported as a plain IPv4 incoming connection.
#[test]
fn ipv4_connection_to_a_dual_stack_listener() {
    let pair = match connect(
        (Ipv6Addr::UNSPECIFIED, 0).into(),
        Ipv4Addr::LOCALHOST.into(),
    ) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("skipped: no dual-stack IPv6 listener here ({e})");
            return;
        }
    };
    let port = pair.listener.port();
    let mapped_server: SocketAddr = (Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port).into();
    let mapped_client: SocketAddr = match pair.client {
        SocketAddr::V4(c) => (c.ip().to_ipv6_mapped(), c.port()).into(),
        SocketAddr::V6(c) => panic!("client should be IPv4, is {c}"),
    };
    let diag = table().dump().unwrap();
    let proc = ProcSource::new().dump().unwrap();
    for (name, dump) in [("sock_diag", &diag), ("/proc", &proc)] {
        let listener = (Ipv6Addr::UNSPECIFIED, port).into();
        assert!(
            has(dump, listener, unspecified(listener.ip()), TcpState::Listen),
            "{name}: no listener [::]:{port}"
        );
        assert!(
            has(dump, mapped_server, mapped_client, TcpState::Established),
            "{name}: no mapped server end {mapped_server} <- {mapped_client}"
        );
        assert!(
            has(
                dump,
                pair.client,
                (Ipv4Addr::LOCALHOST, port).into(),
                TcpState::Established
            ),
            "{name}: no client end"
        );
        check_one_incoming_one_outgoing(dump, &pair, Ipv4Addr::LOCALHOST.into());
    }
}

/// A connection opened and closed between two dumps is announced when its sockets go:
/// the server's end as incoming (by the listener of the dump before). (The client's end,
/// closed with a reset, loses its addresses in the kernel before it is announced.)
#[test]
fn a_connection_closed_between_dumps_is_seen_through_destroy_events() {
    let mut events = DestroyEvents::open().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let mut table = table();
    let mut nc = NewConnections::new();
    nc.update(&table.dump().unwrap());
    let client = TcpStream::connect(server).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (accepted, _) = listener.accept().unwrap();
    // Reset rather than FIN, as nmap's connect scan does: no TIME_WAIT is left.
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    drop(client);
    drop(accepted);
    let mut destroyed = Vec::new();
    for _ in 0..100 {
        events.read(&mut destroyed).unwrap();
        if destroyed
            .iter()
            .any(|s| s.local == server && s.remote == client_addr)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ours: Vec<Connection> = destroyed
        .iter()
        .filter_map(|s| nc.destroyed(s))
        .filter(|c| c.local == server && c.remote == client_addr)
        .collect();
    assert_eq!(ours.len(), 1, "destroyed: {destroyed:?}");
    assert!(ours[0].incoming, "{ours:?}");
    assert!(
        !table
            .dump()
            .unwrap()
            .iter()
            .any(|s| s.remote == client_addr),
        "the reset connection should be gone from the table"
    );
}
