//! The kernel's TCP socket table, for hosts where packet capture is not allowed: each
//! dump lists the TCP sockets of this network namespace, and [`NewConnections`] turns
//! successive dumps into the connections that appeared in between, each reported once.
//!
//! Two readers, tried in this order by [`SocketTable::open`]:
//!
//! - [`SockDiag`]: one `SOCK_DIAG_BY_FAMILY` netlink dump per address family. Fast, needs
//!   no privileges, and sees a consistent snapshot of each hash bucket; it needs the
//!   `tcp_diag` kernel module (built in or loadable), which some minimal kernels and
//!   sandboxes lack.
//! - [`ProcSource`]: `/proc/net/tcp` and `/proc/net/tcp6`, text the kernel formats per
//!   socket. Slower and read in pages, so a socket that moves while the file is read can
//!   be missed or seen twice in one dump (the next dump catches up); always present when
//!   `/proc` is mounted.
//!
//! Both parsers take their input from outside the process, so they work through
//! bounds-checked `get` and fixed-size chunks only: no input makes them panic; bad input is
//! a [`SocketError`] naming what was wrong and where.
//!
//! A poll-based view only sees what exists at the instant of each dump: a connection that
//! opens and is fully gone (including `TIME_WAIT`, which the side closing first keeps for
//! about a minute) between two dumps is never seen. [`DestroyEvents`] closes most of that
//! gap: the kernel announces every full TCP socket it destroys to sock_diag's multicast
//! groups (no privileges needed), so a connection that was accepted and closed between two
//! dumps (nmap's connect scan, which resets each connection at once) is still seen when
//! its socket goes. Request sockets of half-open handshakes are not full sockets and are
//! not announced.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, recvmsg,
    sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

/// A TCP state, numbered as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    /// A request socket of a listener (a SYN answered, the handshake not complete). Both
    /// sock_diag and `/proc` normally report these as [`TcpState::SynRecv`].
    NewSynRecv,
    /// A number outside 1..=12.
    Unknown(u8),
}

impl TcpState {
    /// The state for the kernel's number.
    pub fn from_kernel(n: u8) -> Self {
        match n {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            n => Self::Unknown(n),
        }
    }

    /// The name `ss` uses (`ESTAB` spelled out), `UNKNOWN` for an unknown number.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "UNKNOWN({n})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// An IP version: which table (`tcp` or `tcp6`, `AF_INET` or `AF_INET6`) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// One entry of the socket table, addresses as the kernel holds them (a dual-stack socket
/// in the IPv6 table has IPv4-mapped `::ffff:a.b.c.d` addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpSocket {
    pub local: SocketAddr,
    /// `0.0.0.0:0` or `[::]:0` for a listener or an unconnected socket.
    pub remote: SocketAddr,
    pub state: TcpState,
}

/// How a [`SocketTable`] reads the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Netlink `NETLINK_SOCK_DIAG` dumps.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6`.
    Proc,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SockDiag => "netlink sock_diag",
            Self::Proc => "/proc/net/tcp",
        })
    }
}

/// Why the socket table could not be read. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A netlink system call failed.
    #[error("cannot {what}: {source}")]
    Netlink {
        /// What was being attempted, e.g. "open a NETLINK_SOCK_DIAG socket".
        what: &'static str,
        #[source]
        source: Errno,
    },
    /// The kernel did not answer a dump request in time.
    #[error("no sock_diag reply from the kernel within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The kernel answered a dump request with an error (`ENOENT` when `tcp_diag` is
    /// missing, for one).
    #[error("the kernel refused the sock_diag dump of {family} TCP sockets: {source}")]
    Refused {
        family: IpFamily,
        #[source]
        source: Errno,
    },
    /// A sock_diag reply does not have the expected layout.
    #[error("malformed sock_diag reply to the {family} dump: {what}")]
    Malformed { family: IpFamily, what: String },
    /// A `/proc/net/tcp*` file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    ProcRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line of a `/proc/net/tcp*` file could not be parsed.
    #[error("{}line {line}: {what}", proc_prefix(.path.as_deref()))]
    ProcLine {
        /// The file, when known (the pure parser does not know it).
        path: Option<PathBuf>,
        /// 1-based, counting the header line.
        line: usize,
        what: String,
    },
    /// Neither reader works.
    #[error(
        "cannot read the TCP socket table: sock_diag failed ({sock_diag}), and so did /proc: {source}"
    )]
    Unavailable {
        /// Why sock_diag failed.
        sock_diag: String,
        /// Why the `/proc` fallback failed.
        #[source]
        source: Box<SocketError>,
    },
}

fn proc_prefix(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{} ", path.display()),
        None => String::new(),
    }
}

/// Reads the table through sock_diag when that works, else through `/proc`.
#[derive(Debug)]
pub struct SocketTable {
    reader: Reader,
    fallback_reason: Option<String>,
}

#[derive(Debug)]
enum Reader {
    SockDiag(SockDiag),
    Proc(ProcSource),
}

impl SocketTable {
    /// Tries sock_diag, with one dump to be sure the kernel answers it, and falls back to
    /// `/proc/net/tcp{,6}` (also dumped once) when it fails; the reason sock_diag failed is
    /// kept for [`fallback_reason`](Self::fallback_reason).
    pub fn open() -> Result<Self, SocketError> {
        let reason = match SockDiag::open().and_then(|mut diag| diag.dump().map(|_| diag)) {
            Ok(diag) => {
                return Ok(Self {
                    reader: Reader::SockDiag(diag),
                    fallback_reason: None,
                });
            }
            Err(e) => e.to_string(),
        };
        let proc = ProcSource::new();
        match proc.dump() {
            Ok(_) => Ok(Self {
                reader: Reader::Proc(proc),
                fallback_reason: Some(reason),
            }),
            Err(e) => Err(SocketError::Unavailable {
                sock_diag: reason,
                source: Box::new(e),
            }),
        }
    }

    /// Reads through `/proc` only (for a configuration that asks for it, or a `/proc`
    /// mounted elsewhere). Nothing is read until [`dump`](Self::dump).
    pub fn with_proc(source: ProcSource) -> Self {
        Self {
            reader: Reader::Proc(source),
            fallback_reason: None,
        }
    }

    /// The reader in use.
    pub fn method(&self) -> Method {
        match self.reader {
            Reader::SockDiag(_) => Method::SockDiag,
            Reader::Proc(_) => Method::Proc,
        }
    }

    /// Why sock_diag was not used, when [`open`](Self::open) fell back to `/proc`: one
    /// line, for the caller to print.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The current table: IPv4 sockets, then IPv6 ones.
    pub fn dump(&mut self) -> Result<Vec<TcpSocket>, SocketError> {
        match &mut self.reader {
            Reader::SockDiag(diag) => diag.dump(),
            Reader::Proc(proc) => proc.dump(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// New connections

/// A connection seen for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    /// IPv4-mapped IPv6 addresses are given as plain IPv4.
    pub local: SocketAddr,
    /// IPv4-mapped IPv6 addresses are given as plain IPv4.
    pub remote: SocketAddr,
    /// The state in the dump where it first appeared.
    pub state: TcpState,
    /// Accepted by a listener of this host (rather than opened from it).
    pub incoming: bool,
}

/// Turns successive dumps into new connections, each reported once.
///
/// Only the previous dump's connections are remembered, so memory is bounded by the size
/// of the table; a connection that leaves the table and comes back (the same four-tuple
/// reused) is new again.
#[derive(Debug, Default)]
pub struct NewConnections {
    previous: HashSet<(SocketAddr, SocketAddr)>,
    /// The listeners of the latest dump, for telling destroyed sockets' direction.
    listeners: HashSet<(IpAddr, u16)>,
}

impl NewConnections {
    pub fn new() -> Self {
        Self::default()
    }

    /// The connections of `dump` that were not in the previous one, in dump order.
    ///
    /// A connection is a non-listening socket with a remote address. It is incoming when
    /// the same dump has a listener on its local port, bound to its local address or to
    /// the wildcard (`0.0.0.0` for IPv4; `::` for IPv6 and, dual-stack, IPv4); request
    /// sockets (`SYN_RECV`) of a listener are therefore incoming. The very first call
    /// reports every connection already open.
    pub fn update(&mut self, dump: &[TcpSocket]) -> Vec<Connection> {
        let listeners: HashSet<(IpAddr, u16)> = dump
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|s| (s.local.ip().to_canonical(), s.local.port()))
            .collect();
        let mut current = HashSet::with_capacity(dump.len().saturating_sub(listeners.len()));
        let mut new = Vec::new();
        for socket in dump {
            if socket.state == TcpState::Listen {
                continue;
            }
            let local = canonical(socket.local);
            let remote = canonical(socket.remote);
            if remote.ip().is_unspecified() {
                continue;
            }
            let key = (local, remote);
            // The same four-tuple twice in one dump (a request socket next to its child,
            // or a socket seen twice while /proc was read) is one connection.
            if !current.insert(key) || self.previous.contains(&key) {
                continue;
            }
            new.push(Connection {
                local,
                remote,
                state: socket.state,
                incoming: has_listener(&listeners, local),
            });
        }
        self.previous = current;
        self.listeners = listeners;
        new
    }

    /// A socket the kernel destroyed ([`DestroyEvents`]): the connection, if it was never
    /// in a dump (opened and closed since the last one); `None` if it was reported
    /// already, or is no connection. Either way it is forgotten, so the same four-tuple
    /// used again later is a new connection. Its direction comes from the latest dump's
    /// listeners.
    pub fn destroyed(&mut self, socket: &TcpSocket) -> Option<Connection> {
        let local = canonical(socket.local);
        let remote = canonical(socket.remote);
        if socket.state == TcpState::Listen
            || remote.ip().is_unspecified()
            || remote.port() == 0
            || self.previous.remove(&(local, remote))
        {
            return None;
        }
        Some(Connection {
            local,
            remote,
            state: socket.state,
            incoming: has_listener(&self.listeners, local),
        })
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn has_listener(listeners: &HashSet<(IpAddr, u16)>, local: SocketAddr) -> bool {
    let port = local.port();
    listeners.contains(&(local.ip(), port))
        || (local.is_ipv4() && listeners.contains(&(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)))
        || listeners.contains(&(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
}

// ---------------------------------------------------------------------------------------
// /proc/net/tcp

/// Reads `/proc/net/tcp` and `/proc/net/tcp6`, or the same files under another root.
#[derive(Debug, Clone)]
pub struct ProcSource {
    tcp: PathBuf,
    tcp6: PathBuf,
}

impl Default for ProcSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcSource {
    /// The files of this process's network namespace.
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// Reads `<root>/proc/net/tcp` and `<root>/proc/net/tcp6` (for tests, or a `/proc`
    /// mounted elsewhere).
    pub fn with_root(root: impl AsRef<Path>) -> Self {
        let net = root.as_ref().join("proc/net");
        Self {
            tcp: net.join("tcp"),
            tcp6: net.join("tcp6"),
        }
    }

    /// Both tables, IPv4 first. A missing `tcp6` (IPv6 disabled) is an empty table.
    pub fn dump(&self) -> Result<Vec<TcpSocket>, SocketError> {
        let mut sockets = read_table(&self.tcp, IpFamily::V4, false)?;
        sockets.extend(read_table(&self.tcp6, IpFamily::V6, true)?);
        Ok(sockets)
    }
}

fn read_table(
    path: &Path,
    family: IpFamily,
    missing_is_empty: bool,
) -> Result<Vec<TcpSocket>, SocketError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if missing_is_empty && e.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(SocketError::ProcRead {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_proc_net_tcp(&text, family).map_err(|e| match e {
        SocketError::ProcLine { line, what, .. } => SocketError::ProcLine {
            path: Some(path.to_owned()),
            line,
            what,
        },
        other => other,
    })
}

/// Parses the text of `/proc/net/tcp` (`family` V4) or `/proc/net/tcp6` (V6).
///
/// The first line is the header when it starts with `sl`; blank lines are skipped. Each
/// other line needs `N: LOCAL REMOTE ST`, where an address is the kernel's in-memory
/// address printed as 32-bit words in host byte order (`0100007F` is 127.0.0.1 on
/// little-endian machines; IPv6 is four such words), a colon, and the port as 4 hex
/// digits, and `ST` is the state number in hex. Further columns are not read.
pub fn parse_proc_net_tcp(text: &str, family: IpFamily) -> Result<Vec<TcpSocket>, SocketError> {
    let mut sockets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index.saturating_add(1);
        let fail = |what: String| SocketError::ProcLine {
            path: None,
            line: number,
            what,
        };
        let mut fields = line.split_whitespace();
        let Some(slot) = fields.next() else {
            continue;
        };
        if index == 0 && slot == "sl" {
            continue;
        }
        let slot_ok = slot
            .strip_suffix(':')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !slot_ok {
            return Err(fail(format!(
                "expected an entry number such as \"0:\", found {}",
                shown(slot)
            )));
        }
        let (Some(local), Some(remote), Some(state)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(fail(
                "line is cut short (expected local address, remote address and state)".into(),
            ));
        };
        let local = parse_endpoint(local, family)
            .map_err(|what| fail(format!("local address {}: {what}", shown(local))))?;
        let remote = parse_endpoint(remote, family)
            .map_err(|what| fail(format!("remote address {}: {what}", shown(remote))))?;
        let state = match hex_u32(state, 2) {
            Some(n) => TcpState::from_kernel(u8::try_from(n).unwrap_or(u8::MAX)),
            None => {
                return Err(fail(format!(
                    "state {} is not 1 or 2 hex digits",
                    shown(state)
                )));
            }
        };
        sockets.push(TcpSocket {
            local,
            remote,
            state,
        });
    }
    Ok(sockets)
}

/// A field quoted for an error message, cut to a readable length.
fn shown(field: &str) -> String {
    const MAX: usize = 48;
    if field.chars().count() <= MAX {
        format!("{field:?}")
    } else {
        let head: String = field.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}

/// 1 to `max_digits` hex digits (no sign, no prefix).
fn hex_u32(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits.min(8) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn parse_endpoint(field: &str, family: IpFamily) -> Result<SocketAddr, String> {
    let Some((addr, port)) = field.split_once(':') else {
        return Err("no ':' between address and port".into());
    };
    let port = hex_u32(port, 4)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("port {} is not 1 to 4 hex digits", shown(port)))?;
    let digits = match family {
        IpFamily::V4 => 8,
        IpFamily::V6 => 32,
    };
    if addr.len() != digits {
        return Err(format!(
            "address has {} characters, expected {digits} hex digits for {family}",
            addr.len()
        ));
    }
    // Each 8-digit group is a u32 the kernel read from memory in host order, so its
    // native-endian bytes are the address bytes in network order.
    let word = |k: usize| -> Result<[u8; 4], String> {
        k.checked_mul(8)
            .and_then(|start| addr.get(start..start.checked_add(8)?))
            .and_then(|group| hex_u32(group, 8))
            .map(u32::to_ne_bytes)
            .ok_or_else(|| format!("address {} is not hexadecimal", shown(addr)))
    };
    let ip = match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        IpFamily::V6 => {
            let mut bytes = [0u8; 16];
            for (k, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(k)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------------------
// Netlink sock_diag

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// Every state bit, so listeners, request sockets and `TIME_WAIT` are all included.
const ALL_STATES: u32 = u32::MAX;
/// `struct inet_diag_sockid`: sport, dport (big-endian u16), src[4], dst[4] (big-endian
/// u32 words), if u32, cookie[2] u32.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad (u8 each), states u32, id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans (u8 each), id, expires, rqueue,
/// wqueue, uid, inode (u32 each).
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Larger than any datagram the kernel builds for a dump (at most 32 KiB).
const RECV_BUF_LEN: usize = 64 << 10;
/// Reads per family before a dump that never ends is given up (a table of millions of
/// sockets needs a few thousand).
const MAX_READS: usize = 1 << 20;

/// A close-on-exec `NETLINK_SOCK_DIAG` socket (no privileges needed).
fn diag_socket(flags: SockFlag) -> Result<OwnedFd, SocketError> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | flags,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|source| SocketError::Netlink {
        what: "open a NETLINK_SOCK_DIAG socket",
        source,
    })
}

/// A `NETLINK_SOCK_DIAG` socket that dumps the TCP table.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SockDiag")
            .field("fd", &self.fd)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl SockDiag {
    /// How long one read waits for the kernel before the dump fails.
    pub const TIMEOUT_MS: u64 = 1000;

    /// Opens the socket (no privileges needed). Whether the kernel answers dumps is only
    /// known after the first [`dump`](Self::dump).
    pub fn open() -> Result<Self, SocketError> {
        let fd = diag_socket(SockFlag::empty())?;
        let timeout = TimeVal::milliseconds(i64::try_from(Self::TIMEOUT_MS).unwrap_or(1000));
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|source| {
            SocketError::Netlink {
                what: "set a receive timeout on the sock_diag socket",
                source,
            }
        })?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// The current table: IPv4 sockets, then IPv6 ones (dual-stack sockets are in the
    /// IPv6 part, with IPv4-mapped addresses).
    ///
    /// After a failed dump the socket is replaced by a fresh one (when that can be
    /// opened): the kernel would go on sending the rest of an abandoned dump on the old
    /// one, and refuses a new dump there (`EBUSY`) until that is read.
    pub fn dump(&mut self) -> Result<Vec<TcpSocket>, SocketError> {
        let mut sockets = Vec::new();
        let result = self
            .dump_family(IpFamily::V4, &mut sockets)
            .and_then(|()| self.dump_family(IpFamily::V6, &mut sockets));
        match result {
            Ok(()) => Ok(sockets),
            Err(e) => {
                if let Ok(fresh) = Self::open() {
                    *self = fresh;
                }
                Err(e)
            }
        }
    }

    fn dump_family(
        &mut self,
        family: IpFamily,
        sockets: &mut Vec<TcpSocket>,
    ) -> Result<(), SocketError> {
        // A new sequence number per request, so that the rest of a dump abandoned after an
        // error is told apart from the answer to this one.
        self.seq = self.seq.wrapping_add(1);
        let request = dump_request(family, self.seq);
        let sent = sendto(
            self.fd.as_raw_fd(),
            &request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|source| SocketError::Netlink {
            what: "send the sock_diag dump request",
            source,
        })?;
        if sent != request.len() {
            return Err(SocketError::Netlink {
                what: "send the whole sock_diag dump request",
                source: Errno::EMSGSIZE,
            });
        }
        for _ in 0..MAX_READS {
            let (len, sender, truncated) = {
                let mut iov = [IoSliceMut::new(&mut self.buf)];
                match recvmsg::<NetlinkAddr>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::empty())
                {
                    Ok(msg) => (
                        msg.bytes,
                        msg.address.map(|a| a.pid()),
                        msg.flags.contains(MsgFlags::MSG_TRUNC),
                    ),
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => {
                        return Err(SocketError::Timeout {
                            timeout_ms: Self::TIMEOUT_MS,
                        });
                    }
                    Err(source) => {
                        return Err(SocketError::Netlink {
                            what: "read the sock_diag reply",
                            source,
                        });
                    }
                }
            };
            // Only the kernel (port 0) answers; another process could write to this port.
            if sender != Some(0) {
                continue;
            }
            if truncated {
                return Err(SocketError::Malformed {
                    family,
                    what: format!("a datagram did not fit the {RECV_BUF_LEN}-byte buffer"),
                });
            }
            let data = self.buf.get(..len).unwrap_or_default();
            if parse_reply(data, self.seq, family, sockets)? == Progress::Done {
                return Ok(());
            }
        }
        Err(SocketError::Malformed {
            family,
            what: format!("the dump did not end after {MAX_READS} reads"),
        })
    }
}

/// sock_diag's multicast groups announcing destroyed TCP sockets
/// (`SKNLGRP_INET_TCP_DESTROY` = 1, `SKNLGRP_INET6_TCP_DESTROY` = 3, as a bit mask).
const TCP_DESTROY_GROUPS: u32 = (1 << 0) | (1 << 2);

/// The kernel's announcements of destroyed TCP sockets, read without blocking.
pub struct DestroyEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
    lost: u64,
}

impl fmt::Debug for DestroyEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestroyEvents")
            .field("fd", &self.fd)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl DestroyEvents {
    /// Subscribes to the IPv4 and IPv6 TCP destroy groups (no privileges needed; kernels
    /// before 4.5 refuse, and the caller does without).
    pub fn open() -> Result<Self, SocketError> {
        let fd = diag_socket(SockFlag::SOCK_NONBLOCK)?;
        // A burst of closes must not overflow the queue between two reads.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, TCP_DESTROY_GROUPS)).map_err(|source| {
            SocketError::Netlink {
                what: "subscribe to sock_diag's TCP destroy events",
                source,
            }
        })?;
        Ok(Self {
            fd,
            buf: vec![0; RECV_BUF_LEN],
            lost: 0,
        })
    }

    /// The descriptor, to wait on with poll(2).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Times the kernel reported dropped announcements (the queue was full).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Appends every announcement queued now to `out`; returns how many were added.
    /// Malformed messages are skipped (they are counted nowhere: the kernel does not send
    /// them).
    pub fn read(&mut self, out: &mut Vec<TcpSocket>) -> Result<usize, SocketError> {
        let before = out.len();
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => {
                    parse_broadcast(self.buf.get(..len).unwrap_or_default(), out);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(out.len() - before),
                Err(Errno::ENOBUFS) => self.lost += 1,
                Err(source) => {
                    return Err(SocketError::Netlink {
                        what: "read sock_diag's destroy events",
                        source,
                    });
                }
            }
        }
    }
}

/// The sockets of one multicast datagram: each `SOCK_DIAG_BY_FAMILY` message in it.
fn parse_broadcast(buf: &[u8], out: &mut Vec<TcpSocket>) {
    let mut offset = 0usize;
    while let Ok(Some(m)) = message_at(buf, offset) {
        if m.kind == SOCK_DIAG_BY_FAMILY
            && let Ok(socket) = parse_diag_msg(m.payload)
        {
            out.push(socket);
        }
        // Messages are 4-byte aligned.
        offset = offset.saturating_add(m.len.saturating_add(3) & !3);
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for every TCP socket of `family`.
fn dump_request(family: IpFamily, seq: u32) -> Vec<u8> {
    let total = NLMSG_HDRLEN + REQ_LEN;
    let mut req = Vec::with_capacity(total);
    req.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    req.push(match family {
        IpFamily::V4 => AF_INET,
        IpFamily::V6 => AF_INET6,
    });
    req.push(IPPROTO_TCP);
    req.push(0); // idiag_ext: no extensions
    req.push(0); // pad
    req.extend_from_slice(&ALL_STATES.to_ne_bytes());
    req.extend_from_slice(&[0; SOCKID_LEN]); // id: all zero, no filter
    req
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// `N` bytes at `at`, when `buf` has them.
fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// One netlink message of a datagram.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
    /// The length the header claims (the next message starts after it, 4-byte aligned).
    len: usize,
}

/// The message at `offset` of `buf` (`None` at the end), or what is wrong with it.
fn message_at(buf: &[u8], offset: usize) -> Result<Option<Message<'_>>, String> {
    let Some(rest) = buf.get(offset..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let header = (
        bytes_at::<4>(rest, 0),
        bytes_at::<2>(rest, 4),
        bytes_at::<4>(rest, 8),
    );
    let (Some(len), Some(kind), Some(seq)) = header else {
        return Err(format!(
            "{} bytes at offset {offset} are too short for a message header",
            rest.len()
        ));
    };
    let len = usize::try_from(u32::from_ne_bytes(len)).unwrap_or(usize::MAX);
    if len < NLMSG_HDRLEN {
        return Err(format!(
            "the message at offset {offset} claims {len} bytes, less than its header"
        ));
    }
    let Some(payload) = rest.get(NLMSG_HDRLEN..len) else {
        return Err(format!(
            "the message at offset {offset} claims {len} bytes, but only {} remain",
            rest.len()
        ));
    };
    Ok(Some(Message {
        kind: u16::from_ne_bytes(kind),
        seq: u32::from_ne_bytes(seq),
        payload,
        len,
    }))
}

/// Parses one datagram of a dump answer into `sockets`: every message in it, skipping
/// those of another sequence number. `Done` once `NLMSG_DONE` is seen.
fn parse_reply(
    buf: &[u8],
    seq: u32,
    family: IpFamily,
    sockets: &mut Vec<TcpSocket>,
) -> Result<Progress, SocketError> {
    let malformed = |what: String| SocketError::Malformed { family, what };
    let mut offset = 0usize;
    while let Some(Message {
        kind,
        seq: msg_seq,
        payload,
        len,
    }) = message_at(buf, offset).map_err(malformed)?
    {
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => {
                    // Since Linux 4.x the payload is the dump's final error code.
                    if let Some(code) = bytes_at::<4>(payload, 0).map(i32::from_ne_bytes)
                        && code < 0
                    {
                        return Err(refused(family, code));
                    }
                    return Ok(Progress::Done);
                }
                NLMSG_ERROR => {
                    let code = bytes_at::<4>(payload, 0)
                        .map(i32::from_ne_bytes)
                        .ok_or_else(|| {
                            malformed(format!(
                                "the error message at offset {offset} has no error code"
                            ))
                        })?;
                    // 0 is an acknowledgement, which a dump does not ask for.
                    if code < 0 {
                        return Err(refused(family, code));
                    }
                }
                NLMSG_OVERRUN => {
                    return Err(malformed(
                        "the kernel reports lost data (NLMSG_OVERRUN)".into(),
                    ));
                }
                SOCK_DIAG_BY_FAMILY => {
                    sockets.push(parse_diag_msg(payload).map_err(|what| {
                        malformed(format!("the socket message at offset {offset} {what}"))
                    })?);
                }
                NLMSG_NOOP => {}
                // Nothing else is expected in an answer to a dump; skip it.
                _ => {}
            }
        }
        // Messages are 4-byte aligned; the last one of a datagram need not be padded.
        offset = offset.saturating_add(len.saturating_add(3) & !3);
    }
    Ok(Progress::More)
}

fn refused(family: IpFamily, code: i32) -> SocketError {
    SocketError::Refused {
        family,
        source: Errno::from_raw(code.saturating_neg()),
    }
}

/// One `struct inet_diag_msg`; the error completes "the socket message at offset N ...".
fn parse_diag_msg(payload: &[u8]) -> Result<TcpSocket, String> {
    let Some(msg) = bytes_at::<DIAG_MSG_LEN>(payload, 0) else {
        return Err(format!(
            "has {} bytes, less than the {DIAG_MSG_LEN} of inet_diag_msg",
            payload.len()
        ));
    };
    let [family, state, ..] = msg;
    // Ports and addresses are in network byte order; offsets within inet_diag_msg.
    let field = |at: usize| bytes_at::<16>(&msg, at);
    let port = |at: usize| bytes_at::<2>(&msg, at).map(u16::from_be_bytes);
    let (Some(sport), Some(dport), Some(src), Some(dst)) = (port(4), port(6), field(8), field(24))
    else {
        return Err("is cut short".into());
    };
    let ip = |bytes: [u8; 16]| -> Result<IpAddr, String> {
        match family {
            AF_INET => {
                let v4 = bytes_at::<4>(&bytes, 0).ok_or("is cut short")?;
                Ok(IpAddr::V4(Ipv4Addr::from(v4)))
            }
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(format!(
                "has address family {other}, neither AF_INET nor AF_INET6"
            )),
        }
    };
    Ok(TcpSocket {
        local: SocketAddr::new(ip(src)?, sport),
        remote: SocketAddr::new(ip(dst)?, dport),
        state: TcpState::from_kernel(state),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- /proc parser --------------------------------------------------------------

    const HEADER4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn line_error(text: &str, family: IpFamily) -> (usize, String) {
        match parse_proc_net_tcp(text, family) {
            Err(SocketError::ProcLine {
                path: None,
                line,
                what,
            }) => (line, what),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn header_only_and_empty_text_are_empty_tables() {
        assert_eq!(parse_proc_net_tcp(HEADER4, IpFamily::V4).unwrap(), []);
        assert_eq!(parse_proc_net_tcp("", IpFamily::V4).unwrap(), []);
        assert_eq!(parse_proc_net_tcp("\n\n", IpFamily::V6).unwrap(), []);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_address_is_a_host_order_word_and_port_is_big_endian() {
        let text = format!(
            "{HEADER4}   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
        );
        assert_eq!(
            parse_proc_net_tcp(&text, IpFamily::V4).unwrap(),
            [TcpSocket {
                local: sa("127.0.0.1:22"),
                remote: sa("0.0.0.0:0"),
                state: TcpState::Listen,
            }]
        );
    }

    #[test]
    fn malformed_lines_name_the_line_and_the_problem() {
        let row =
            |rest: &str| format!("{HEADER4}   0: 0100007F:0016 00000000:0000 0A 0 0\n{rest}\n");
        let (line, what) = line_error(&row("   1: 0100007F:0016"), IpFamily::V4);
        assert_eq!(line, 3);
        assert!(what.contains("cut short"), "{what}");

        let (line, what) = line_error(&row("   1: 0100007G:0016 00000000:0000 01"), IpFamily::V4);
        assert_eq!(line, 3);
        assert_eq!(
            what,
            "local address \"0100007G:0016\": address \"0100007G\" is not hexadecimal"
        );

        let (line, what) = line_error(&row("   1: 0100007F:0016 0000000:0000 01"), IpFamily::V4);
        assert_eq!(line, 3);
        assert_eq!(
            what,
            "remote address \"0000000:0000\": address has 7 characters, expected 8 hex digits for IPv4"
        );

        let (_, what) = line_error(&row("   1: 0100007F:0016 00000000:0000 01"), IpFamily::V6);
        assert!(what.contains("expected 32 hex digits for IPv6"), "{what}");

        let (_, what) = line_error(&row("   1: 0100007F:+016 00000000:0000 01"), IpFamily::V4);
        assert_eq!(
            what,
            "local address \"0100007F:+016\": port \"+016\" is not 1 to 4 hex digits"
        );

        let (_, what) = line_error(&row("   1: 0100007F:00016 00000000:0000 01"), IpFamily::V4);
        assert!(what.contains("port \"00016\""), "{what}");

        let (_, what) = line_error(&row("   1: 0100007F0016 00000000:0000 01"), IpFamily::V4);
        assert!(what.contains("no ':'"), "{what}");

        let (_, what) = line_error(&row("   1: 0100007F:0016 00000000:0000 XY"), IpFamily::V4);
        assert_eq!(what, "state \"XY\" is not 1 or 2 hex digits");

        let (line, what) = line_error(&row("garbage"), IpFamily::V4);
        assert_eq!(line, 3);
        assert_eq!(
            what,
            "expected an entry number such as \"0:\", found \"garbage\""
        );

        // A non-ASCII character where hex digits should be, without slicing inside it.
        let (_, what) = line_error(&row("   1: 0100007é:0016 00000000:0000 01"), IpFamily::V4);
        assert!(what.contains("characters"), "{what}");
        let (_, what) = line_error(&row("   1: 010007é:0016 00000000:0000 01"), IpFamily::V4);
        assert!(what.contains("not hexadecimal"), "{what}");
    }

    #[test]
    fn long_fields_are_cut_in_messages() {
        let text = format!("   0: {}:0016 00000000:0000 01", "A".repeat(500));
        let err = parse_proc_net_tcp(&text, IpFamily::V4).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.starts_with("line 1: local address"), "{msg}");
    }

    #[test]
    fn error_messages_are_single_lines() {
        let errors = [
            SocketError::Netlink {
                what: "open a NETLINK_SOCK_DIAG socket",
                source: Errno::EPROTONOSUPPORT,
            },
            SocketError::Timeout { timeout_ms: 1000 },
            SocketError::Refused {
                family: IpFamily::V6,
                source: Errno::ENOENT,
            },
            SocketError::Malformed {
                family: IpFamily::V4,
                what: "x".into(),
            },
            SocketError::ProcRead {
                path: PathBuf::from("/proc/net/tcp"),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
            SocketError::ProcLine {
                path: Some(PathBuf::from("/proc/net/tcp6")),
                line: 4,
                what: "x".into(),
            },
            SocketError::Unavailable {
                sock_diag: "no".into(),
                source: Box::new(SocketError::Timeout { timeout_ms: 5 }),
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
        assert_eq!(
            SocketError::Refused {
                family: IpFamily::V4,
                source: Errno::ENOENT
            }
            .to_string(),
            "the kernel refused the sock_diag dump of IPv4 TCP sockets: ENOENT: No such file or directory"
        );
        assert_eq!(
            SocketError::ProcLine {
                path: Some(PathBuf::from("/proc/net/tcp6")),
                line: 4,
                what: "x".into()
            }
            .to_string(),
            "/proc/net/tcp6 line 4: x"
        );
    }

    #[test]
    fn states_are_numbered_like_the_kernel() {
        assert_eq!(TcpState::from_kernel(1), TcpState::Established);
        assert_eq!(TcpState::from_kernel(3), TcpState::SynRecv);
        assert_eq!(TcpState::from_kernel(6), TcpState::TimeWait);
        assert_eq!(TcpState::from_kernel(10), TcpState::Listen);
        assert_eq!(TcpState::from_kernel(12), TcpState::NewSynRecv);
        assert_eq!(TcpState::from_kernel(0), TcpState::Unknown(0));
        assert_eq!(TcpState::from_kernel(13).to_string(), "UNKNOWN(13)");
        assert_eq!(TcpState::TimeWait.to_string(), "TIME_WAIT");
    }

    #[cfg(target_endian = "little")]
    mod fixtures {
        use super::*;

        const TCP: &str = include_str!("../tests/fixtures/proc_net_tcp");
        const TCP6: &str = include_str!("../tests/fixtures/proc_net_tcp6");

        fn root() -> tempfile::TempDir {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
            std::fs::write(dir.path().join("proc/net/tcp"), TCP).unwrap();
            std::fs::write(dir.path().join("proc/net/tcp6"), TCP6).unwrap();
            dir
        }

        fn s(local: &str, remote: &str, state: TcpState) -> TcpSocket {
            TcpSocket {
                local: sa(local),
                remote: sa(remote),
                state,
            }
        }

        fn expected_v4() -> Vec<TcpSocket> {
            use TcpState::*;
            vec![
                s("0.0.0.0:22", "0.0.0.0:0", Listen),
                s("127.0.0.1:5432", "0.0.0.0:0", Listen),
                s("10.0.0.5:22", "203.0.113.9:51234", Established),
                s("10.0.0.5:22", "198.51.100.7:40000", SynRecv),
                s("10.0.0.5:48812", "93.184.216.34:443", Established),
                s("127.0.0.1:5432", "127.0.0.1:39022", TimeWait),
                s("10.0.0.5:33000", "192.0.2.1:80", SynSent),
            ]
        }

        fn expected_v6() -> Vec<TcpSocket> {
            use TcpState::*;
            vec![
                s("[::]:80", "[::]:0", Listen),
                s("[fd77::1]:8443", "[::]:0", Listen),
                s(
                    "[::ffff:10.0.0.5]:80",
                    "[::ffff:203.0.113.50]:60001",
                    Established,
                ),
                s("[fd77::1]:8443", "[fd77::2]:50500", Established),
                s("[fd77::1]:8443", "[fd77::3]:50501", SynRecv),
                s("[2001:db8::10]:55000", "[2001:db8::1]:22", TimeWait),
            ]
        }

        #[test]
        fn ipv4_table() {
            assert_eq!(
                parse_proc_net_tcp(TCP, IpFamily::V4).unwrap(),
                expected_v4()
            );
        }

        #[test]
        fn ipv6_table() {
            assert_eq!(
                parse_proc_net_tcp(TCP6, IpFamily::V6).unwrap(),
                expected_v6()
            );
        }

        #[test]
        fn proc_source_under_another_root() {
            let dir = root();
            let mut table = SocketTable::with_proc(ProcSource::with_root(dir.path()));
            assert_eq!(table.method(), Method::Proc);
            assert_eq!(table.fallback_reason(), None);
            let mut expected = expected_v4();
            expected.extend(expected_v6());
            assert_eq!(table.dump().unwrap(), expected);

            // No tcp6 (IPv6 disabled): an empty IPv6 table.
            std::fs::remove_file(dir.path().join("proc/net/tcp6")).unwrap();
            assert_eq!(table.dump().unwrap(), expected_v4());

            // No tcp: an error naming the file.
            std::fs::remove_file(dir.path().join("proc/net/tcp")).unwrap();
            let err = table.dump().unwrap_err();
            assert!(matches!(err, SocketError::ProcRead { .. }), "{err}");
            assert!(err.to_string().contains("proc/net/tcp:"), "{err}");
        }

        #[test]
        fn line_errors_from_files_name_the_file() {
            let dir = root();
            let bad = format!("{TCP}   9: 0100007F:0016\n");
            std::fs::write(dir.path().join("proc/net/tcp"), bad).unwrap();
            let err = ProcSource::with_root(dir.path()).dump().unwrap_err();
            let lines = TCP.lines().count() + 1;
            let msg = err.to_string();
            assert!(
                msg.ends_with(&format!("proc/net/tcp line {lines}: line is cut short (expected local address, remote address and state)")),
                "{msg}"
            );
        }

        #[test]
        fn fixture_connections() {
            let mut dump = expected_v4();
            dump.extend(expected_v6());
            let got = NewConnections::new().update(&dump);
            let summary: Vec<(String, String, bool)> = got
                .iter()
                .map(|c| (c.local.to_string(), c.remote.to_string(), c.incoming))
                .collect();
            let row = |l: &str, r: &str, i: bool| (l.to_owned(), r.to_owned(), i);
            assert_eq!(
                summary,
                [
                    row("10.0.0.5:22", "203.0.113.9:51234", true),
                    row("10.0.0.5:22", "198.51.100.7:40000", true),
                    row("10.0.0.5:48812", "93.184.216.34:443", false),
                    row("127.0.0.1:5432", "127.0.0.1:39022", true),
                    row("10.0.0.5:33000", "192.0.2.1:80", false),
                    // Dual-stack: accepted by the [::]:80 listener, reported as IPv4.
                    row("10.0.0.5:80", "203.0.113.50:60001", true),
                    row("[fd77::1]:8443", "[fd77::2]:50500", true),
                    row("[fd77::1]:8443", "[fd77::3]:50501", true),
                    row("[2001:db8::10]:55000", "[2001:db8::1]:22", false),
                ]
            );
        }
    }

    proptest! {
        #[test]
        fn proc_parser_never_panics_on_text(text in "\\PC*") {
            let _ = parse_proc_net_tcp(&text, IpFamily::V4);
            let _ = parse_proc_net_tcp(&text, IpFamily::V6);
        }

        #[test]
        fn proc_parser_never_panics_on_near_misses(
            lines in prop::collection::vec(
                "[ 0-9:]{0,6}[0-9A-Fa-fé:+ ]{0,40} [0-9A-F:é]{0,40} [0-9A-Fx]{0,3}( [0-9A-F:]{0,10})?",
                0..6,
            )
        ) {
            let text = lines.join("\n");
            let _ = parse_proc_net_tcp(&text, IpFamily::V4);
            let _ = parse_proc_net_tcp(&text, IpFamily::V6);
        }
    }

    // ---- NewConnections ------------------------------------------------------------

    fn sock(local: &str, remote: &str, state: TcpState) -> TcpSocket {
        TcpSocket {
            local: sa(local),
            remote: sa(remote),
            state,
        }
    }

    fn listen(local: &str) -> TcpSocket {
        let remote = if sa(local).is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        sock(local, remote, TcpState::Listen)
    }

    fn est(local: &str, remote: &str) -> TcpSocket {
        sock(local, remote, TcpState::Established)
    }

    fn conn(local: &str, remote: &str, state: TcpState, incoming: bool) -> Connection {
        Connection {
            local: sa(local),
            remote: sa(remote),
            state,
            incoming,
        }
    }

    #[test]
    fn each_connection_is_reported_once() {
        let mut nc = NewConnections::new();
        let a = est("10.0.0.1:40000", "10.0.0.2:443");
        let b = est("10.0.0.1:40001", "10.0.0.2:443");
        assert_eq!(
            nc.update(&[a]),
            [conn(
                "10.0.0.1:40000",
                "10.0.0.2:443",
                TcpState::Established,
                false
            )]
        );
        assert_eq!(nc.update(&[a]), []);
        assert_eq!(
            nc.update(&[a, b]),
            [conn(
                "10.0.0.1:40001",
                "10.0.0.2:443",
                TcpState::Established,
                false
            )]
        );
        // State changes do not make a connection new.
        assert_eq!(
            nc.update(&[
                sock("10.0.0.1:40000", "10.0.0.2:443", TcpState::TimeWait),
                b
            ]),
            []
        );
    }

    #[test]
    fn a_connection_that_left_the_table_is_new_when_it_comes_back() {
        let mut nc = NewConnections::new();
        let a = est("10.0.0.1:40000", "10.0.0.2:443");
        assert_eq!(nc.update(&[a]).len(), 1);
        assert_eq!(nc.update(&[]), []);
        assert_eq!(nc.update(&[a]).len(), 1);
        assert_eq!(nc.update(&[a]), []);
    }

    #[test]
    fn duplicates_within_one_dump_are_one_connection() {
        let mut nc = NewConnections::new();
        let syn = sock("10.0.0.1:22", "10.0.0.9:5000", TcpState::SynRecv);
        let child = est("10.0.0.1:22", "10.0.0.9:5000");
        let got = nc.update(&[listen("0.0.0.0:22"), syn, child]);
        assert_eq!(
            got,
            [conn(
                "10.0.0.1:22",
                "10.0.0.9:5000",
                TcpState::SynRecv,
                true
            )]
        );
        assert_eq!(nc.update(&[listen("0.0.0.0:22"), child]), []);
    }

    #[test]
    fn listeners_and_unconnected_sockets_are_not_connections() {
        let mut nc = NewConnections::new();
        let dump = [
            listen("0.0.0.0:22"),
            listen("[::]:22"),
            sock("10.0.0.1:5000", "0.0.0.0:0", TcpState::Close),
            sock("[fd77::1]:5000", "[::]:0", TcpState::Close),
            sock(
                "[::ffff:10.0.0.1]:5001",
                "[::ffff:0.0.0.0]:0",
                TcpState::Close,
            ),
        ];
        assert_eq!(nc.update(&dump), []);
    }

    #[test]
    fn incoming_needs_a_listener_on_the_local_address_or_the_wildcard() {
        let mut nc = NewConnections::new();
        let dump = [
            listen("127.0.0.1:8080"),
            listen("0.0.0.0:22"),
            listen("[fd77::1]:443"),
            // Specific listener, same address: incoming.
            est("127.0.0.1:8080", "127.0.0.1:50000"),
            // Same port but another local address than the specific listener: outgoing.
            est("10.0.0.1:8080", "10.0.0.2:50000"),
            // IPv4 wildcard: any IPv4 local address.
            est("10.0.0.1:22", "10.0.0.3:50001"),
            // The IPv4 wildcard does not cover IPv6.
            est("[fd77::1]:22", "[fd77::9]:50002"),
            // Specific IPv6 listener.
            est("[fd77::1]:443", "[fd77::9]:50003"),
            est("[fd77::2]:443", "[fd77::9]:50004"),
            // No listener on the port at all.
            est("10.0.0.1:45000", "10.0.0.2:22"),
        ];
        let incoming: Vec<bool> = nc.update(&dump).iter().map(|c| c.incoming).collect();
        assert_eq!(incoming, [true, false, true, false, true, false, false]);
    }

    #[test]
    fn the_ipv6_wildcard_covers_ipv6_and_dual_stack_ipv4() {
        let mut nc = NewConnections::new();
        let dump = [
            listen("[::]:80"),
            est("[fd77::1]:80", "[fd77::2]:50000"),
            // Accepted by the dual-stack listener: IPv4-mapped in tcp6.
            est("[::ffff:192.0.2.1]:80", "[::ffff:198.51.100.2]:50001"),
            // A plain IPv4 socket on the same port.
            est("192.0.2.1:80", "198.51.100.3:50002"),
            // A request socket of the listener.
            sock(
                "[::ffff:192.0.2.1]:80",
                "[::ffff:198.51.100.4]:50003",
                TcpState::SynRecv,
            ),
        ];
        assert_eq!(
            nc.update(&dump),
            [
                conn(
                    "[fd77::1]:80",
                    "[fd77::2]:50000",
                    TcpState::Established,
                    true
                ),
                conn(
                    "192.0.2.1:80",
                    "198.51.100.2:50001",
                    TcpState::Established,
                    true
                ),
                conn(
                    "192.0.2.1:80",
                    "198.51.100.3:50002",
                    TcpState::Established,
                    true
                ),
                conn(
                    "192.0.2.1:80",
                    "198.51.100.4:50003",
                    TcpState::SynRecv,
                    true
                ),
            ]
        );
    }

    #[test]
    fn a_mapped_and_a_plain_ipv4_tuple_are_the_same_connection() {
        let mut nc = NewConnections::new();
        let mapped = est("[::ffff:192.0.2.1]:80", "[::ffff:198.51.100.2]:50001");
        let plain = est("192.0.2.1:80", "198.51.100.2:50001");
        assert_eq!(nc.update(&[mapped]).len(), 1);
        assert_eq!(nc.update(&[plain]), []);
    }

    #[test]
    fn a_mapped_ipv4_listener_matches_plain_ipv4_connections() {
        let mut nc = NewConnections::new();
        let dump = [
            listen("[::ffff:192.0.2.1]:25"),
            est("192.0.2.1:25", "198.51.100.2:50001"),
        ];
        assert!(nc.update(&dump).iter().all(|c| c.incoming));
    }

    // ---- sock_diag parser ----------------------------------------------------------

    /// A netlink message: header then payload, padded to 4 bytes.
    fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NLMSG_HDRLEN + payload.len()).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    const NLM_F_MULTI: u16 = 2;

    /// An `inet_diag_msg` as the kernel builds it.
    fn diag(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut m = vec![family, state, 0, 0];
        m.extend_from_slice(&sport.to_be_bytes());
        m.extend_from_slice(&dport.to_be_bytes());
        let mut addr = |a: &[u8]| {
            let mut word = [0u8; 16];
            word.get_mut(..a.len()).unwrap().copy_from_slice(a);
            m.extend_from_slice(&word);
        };
        addr(src);
        addr(dst);
        m.extend_from_slice(&7u32.to_ne_bytes()); // if
        m.extend_from_slice(&[0xAB; 8]); // cookie
        for v in [0u32, 0, 0, 1000, 123_456] {
            m.extend_from_slice(&v.to_ne_bytes()); // expires rqueue wqueue uid inode
        }
        assert_eq!(m.len(), DIAG_MSG_LEN);
        m
    }

    fn done(seq: u32) -> Vec<u8> {
        nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, &0i32.to_ne_bytes())
    }

    fn parse(buf: &[u8], seq: u32) -> Result<(Progress, Vec<TcpSocket>), SocketError> {
        let mut out = Vec::new();
        parse_reply(buf, seq, IpFamily::V4, &mut out).map(|p| (p, out))
    }

    #[test]
    fn the_request_has_the_kernel_layout() {
        let req = dump_request(IpFamily::V6, 77);
        assert_eq!(req.len(), 72);
        assert_eq!(bytes_at::<4>(&req, 0).map(u32::from_ne_bytes), Some(72));
        assert_eq!(bytes_at::<2>(&req, 4).map(u16::from_ne_bytes), Some(20));
        assert_eq!(bytes_at::<2>(&req, 6).map(u16::from_ne_bytes), Some(0x301));
        assert_eq!(bytes_at::<4>(&req, 8).map(u32::from_ne_bytes), Some(77));
        assert_eq!(req.get(16..20), Some(&[10u8, 6, 0, 0][..]));
        assert_eq!(
            bytes_at::<4>(&req, 20).map(u32::from_ne_bytes),
            Some(u32::MAX)
        );
        assert!(req.get(24..).unwrap().iter().all(|&b| b == 0));
        assert_eq!(dump_request(IpFamily::V4, 1).get(16), Some(&2));
    }

    #[test]
    fn multipart_reply_across_datagrams() {
        let seq = 5;
        let mut first = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_MULTI,
            seq,
            &diag(AF_INET, 10, &[0, 0, 0, 0], 22, &[0, 0, 0, 0], 0),
        );
        first.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_MULTI,
            seq,
            &diag(AF_INET, 1, &[10, 0, 0, 1], 22, &[203, 0, 113, 9], 51234),
        ));
        let (progress, got) = parse(&first, seq).unwrap();
        assert_eq!(progress, Progress::More);
        assert_eq!(
            got,
            [
                sock("0.0.0.0:22", "0.0.0.0:0", TcpState::Listen),
                est("10.0.0.1:22", "203.0.113.9:51234"),
            ]
        );

        let mut second = nlmsg(NLMSG_NOOP, 0, seq, &[]);
        let v6_local = "fd77::1".parse::<Ipv6Addr>().unwrap().octets();
        let v6_remote = "::ffff:198.51.100.4".parse::<Ipv6Addr>().unwrap().octets();
        second.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_MULTI,
            seq,
            &diag(AF_INET6, 3, &v6_local, 8443, &v6_remote, 50000),
        ));
        second.extend(done(seq));
        // Anything after NLMSG_DONE is not read.
        second.extend([1, 2, 3]);
        let (progress, got) = parse(&second, seq).unwrap();
        assert_eq!(progress, Progress::Done);
        assert_eq!(
            got,
            [sock(
                "[fd77::1]:8443",
                "[::ffff:198.51.100.4]:50000",
                TcpState::SynRecv
            )]
        );
    }

    #[test]
    fn messages_of_another_sequence_are_skipped() {
        let mut buf = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_MULTI,
            4,
            &diag(AF_INET, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2),
        );
        buf.extend(done(4));
        buf.extend(nlmsg(NLMSG_ERROR, 0, 4, &(-1i32).to_ne_bytes()));
        assert_eq!(parse(&buf, 5).unwrap(), (Progress::More, vec![]));
    }

    #[test]
    fn kernel_errors_become_errno() {
        let mut payload = (-2i32).to_ne_bytes().to_vec();
        payload.extend(&dump_request(IpFamily::V4, 9)[..NLMSG_HDRLEN]);
        let err = parse(&nlmsg(NLMSG_ERROR, 0, 9, &payload), 9).unwrap_err();
        assert!(
            matches!(
                err,
                SocketError::Refused {
                    family: IpFamily::V4,
                    source: Errno::ENOENT
                }
            ),
            "{err}"
        );
        // An error code in NLMSG_DONE.
        let err = parse(&nlmsg(NLMSG_DONE, 0, 9, &(-12i32).to_ne_bytes()), 9).unwrap_err();
        assert!(
            matches!(
                err,
                SocketError::Refused {
                    source: Errno::ENOMEM,
                    ..
                }
            ),
            "{err}"
        );
        // i32::MIN does not overflow.
        let err = parse(&nlmsg(NLMSG_ERROR, 0, 9, &i32::MIN.to_ne_bytes()), 9).unwrap_err();
        assert!(matches!(err, SocketError::Refused { .. }), "{err}");
        // An acknowledgement is not an error; NLMSG_DONE without payload ends the dump.
        let mut buf = nlmsg(NLMSG_ERROR, 0, 9, &0i32.to_ne_bytes());
        buf.extend(nlmsg(NLMSG_DONE, 0, 9, &[]));
        assert_eq!(parse(&buf, 9).unwrap(), (Progress::Done, vec![]));
        let err = parse(&nlmsg(NLMSG_ERROR, 0, 9, &[1, 2]), 9).unwrap_err();
        assert!(err.to_string().contains("no error code"), "{err}");
        let err = parse(&nlmsg(NLMSG_OVERRUN, 0, 9, &[]), 9).unwrap_err();
        assert!(err.to_string().contains("NLMSG_OVERRUN"), "{err}");
    }

    #[test]
    fn truncated_and_garbled_messages_are_errors() {
        let full = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            0,
            1,
            &diag(AF_INET, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2),
        );
        // Every cut inside the message is an error, never a panic.
        for cut in 1..full.len() {
            let err = parse(full.get(..cut).unwrap(), 1).unwrap_err();
            assert!(
                matches!(err, SocketError::Malformed { .. }),
                "cut {cut}: {err}"
            );
        }
        let err = parse(full.get(..10).unwrap(), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed sock_diag reply to the IPv4 dump: 10 bytes at offset 0 are too short for a message header"
        );
        // A length below the header size.
        let mut bad = full.clone();
        bad.get_mut(..4)
            .unwrap()
            .copy_from_slice(&8u32.to_ne_bytes());
        assert!(
            parse(&bad, 1)
                .unwrap_err()
                .to_string()
                .contains("claims 8 bytes, less than its header")
        );
        // A length past the end.
        bad.get_mut(..4)
            .unwrap()
            .copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(
            parse(&bad, 1)
                .unwrap_err()
                .to_string()
                .contains("only 88 remain")
        );
        // A payload shorter than inet_diag_msg.
        let short = nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &[2; 40]);
        let err = parse(&short, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("has 40 bytes, less than the 72 of inet_diag_msg"),
            "{err}"
        );
        // An unknown address family.
        let alien = nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &diag(1, 1, &[1], 1, &[2], 2));
        let err = parse(&alien, 1).unwrap_err();
        assert!(err.to_string().contains("address family 1"), "{err}");
    }

    #[test]
    fn attributes_after_the_message_are_ignored() {
        let mut payload = diag(AF_INET, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2);
        payload.extend([8, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        let (_, got) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &payload), 1).unwrap();
        assert_eq!(got, [est("10.0.0.1:1", "10.0.0.2:2")]);
    }

    proptest! {
        #[test]
        fn sock_diag_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), seq in 0u32..3) {
            let _ = parse(&bytes, seq);
        }

        #[test]
        fn sock_diag_parser_never_panics_on_near_misses(
            kinds in prop::collection::vec((0u16..25, 0usize..100, 0u32..2), 0..6),
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut buf = Vec::new();
            for (kind, len, seq) in kinds {
                let payload = if kind == SOCK_DIAG_BY_FAMILY {
                    diag(if len % 2 == 0 { AF_INET } else { AF_INET6 }, 1, &[1; 16], 1, &[2; 16], 2)
                } else {
                    vec![0xFF; len]
                };
                buf.extend(nlmsg(kind, NLM_F_MULTI, seq, &payload));
            }
            for (at, value) in flips {
                if !buf.is_empty() {
                    let i = at.index(buf.len());
                    if let Some(b) = buf.get_mut(i) { *b = value; }
                }
            }
            let end = if buf.is_empty() { 0 } else { cut.index(buf.len() + 1) };
            let _ = parse(buf.get(..end).unwrap_or_default(), 1);
        }
    }

    // ---- destroy events ------------------------------------------------------------

    #[test]
    fn broadcasts_hold_destroyed_sockets_and_garbage_is_skipped() {
        let v4 = diag(AF_INET, 7, &[10, 0, 0, 1], 22, &[10, 0, 0, 2], 40000);
        let mut mapped = vec![0u8; 10];
        mapped.extend_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        let v6 = diag(
            AF_INET6,
            7,
            &mapped,
            80,
            &Ipv6Addr::LOCALHOST.octets(),
            40001,
        );
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 0, 0, &v4);
        buf.extend(nlmsg(NLMSG_NOOP, 0, 0, &[]));
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 0, 0, &v6));
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 0, 0, &v6[..20]));
        let mut out = Vec::new();
        parse_broadcast(&buf, &mut out);
        assert_eq!(
            out,
            [
                TcpSocket {
                    local: sa("10.0.0.1:22"),
                    remote: sa("10.0.0.2:40000"),
                    state: TcpState::Close
                },
                TcpSocket {
                    local: sa("[::ffff:10.0.0.1]:80"),
                    remote: sa("[::1]:40001"),
                    state: TcpState::Close
                },
            ]
        );
        // Every cut point of the datagram parses what is whole and stops.
        for cut in 0..buf.len() {
            let mut out = Vec::new();
            parse_broadcast(&buf[..cut], &mut out);
            assert!(out.len() <= 2);
        }
    }

    proptest! {
        #[test]
        fn broadcast_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            parse_broadcast(&bytes, &mut out);
        }
    }

    #[test]
    fn destroyed_sockets_are_connections_only_when_no_dump_reported_them() {
        let listener = TcpSocket {
            local: sa("0.0.0.0:22"),
            remote: sa("0.0.0.0:0"),
            state: TcpState::Listen,
        };
        let held = TcpSocket {
            local: sa("10.0.0.1:22"),
            remote: sa("10.0.0.2:40000"),
            state: TcpState::Established,
        };
        let mut nc = NewConnections::new();
        assert_eq!(nc.update(&[listener, held]).len(), 1);
        // Reported by the dump: its end is not a new connection.
        let closed = |s: &TcpSocket| TcpSocket {
            state: TcpState::Close,
            ..*s
        };
        assert_eq!(nc.destroyed(&closed(&held)), None);
        // Opened and closed between two dumps: new, incoming by the listener.
        let brief = TcpSocket {
            remote: sa("10.0.0.2:40001"),
            ..closed(&held)
        };
        let got = nc.destroyed(&brief).unwrap();
        assert!(got.incoming);
        assert_eq!(got.remote, sa("10.0.0.2:40001"));
        // An outgoing one, mapped addresses made plain.
        let out = TcpSocket {
            local: sa("[::ffff:10.0.0.1]:50000"),
            remote: sa("[::ffff:9.9.9.9]:443"),
            state: TcpState::Close,
        };
        let got = nc.destroyed(&out).unwrap();
        assert!(!got.incoming);
        assert_eq!(got.remote, sa("9.9.9.9:443"));
        // Listeners and unconnected sockets are no connections.
        assert_eq!(nc.destroyed(&listener), None);
        // The held one, gone, is new again when it reappears.
        assert_eq!(nc.update(&[listener, held]).len(), 1);
    }
}
