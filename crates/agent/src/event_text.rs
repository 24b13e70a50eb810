//! The event lines of SPEC §4 as bytes, JSON lines for machines and table rows for
//! people, formatted without being written anywhere: the binary's printers (which pad the
//! table's columns and write stdout) and replay's reading thread (which formats
//! `connection` events ahead of the thread that decides which are due) both use it.
//!
//! It lives in the library, not beside the printers, because the JSON text is the
//! contract (like the timestamps of [`crate::timefmt`]) and replay's engine, here too,
//! needs it on its reading thread. Formatting is hand-written rather than going through
//! serde or `format!`: a replay can print hundreds of thousands of events a second, and
//! every field here is an address, a number or a fixed word, none of which needs JSON
//! escaping.

use std::net::{IpAddr, Ipv4Addr};

use synwatch_detect::{Direction, Nanos, Probe, Scan, ScanKind};

use crate::events::{BlockEvent, Connection};
use crate::timefmt::{TimestampCache, rfc3339};

/// The two event formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Formats events as bytes, without writing them anywhere: the part of output that can
/// run on another thread than the one that decides which events are due.
#[derive(Debug, Clone)]
pub struct Formatter {
    format: Format,
    clock: TimestampCache,
}

impl Formatter {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            clock: TimestampCache::default(),
        }
    }

    /// The format this formatter writes.
    pub fn format(&self) -> Format {
        self.format
    }

    pub fn connection(&mut self, c: &Connection, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => {
                if let (IpAddr::V4(src), IpAddr::V4(dst)) = (c.src, c.dst) {
                    return self.json_connection_v4(c, (src, dst), out);
                }
                self.json_head(out, c.ts, b"connection", c.src);
                out.extend_from_slice(b"\",\"sport\":");
                write_small(out, c.sport);
                out.extend_from_slice(b",\"dst\":\"");
                write_ip(out, c.dst);
                out.extend_from_slice(b"\",\"dport\":");
                write_small(out, c.dport);
                out.extend_from_slice(b",\"direction\":\"");
                out.extend_from_slice(c.direction.as_str().as_bytes());
                out.extend_from_slice(b"\"}\n");
            }
            Format::Table => {
                let mut src = Vec::with_capacity(48);
                write_socket(&mut src, c.src, c.sport);
                let mut dst = Vec::with_capacity(48);
                write_socket(&mut dst, c.dst, c.dport);
                self.table_row(out, c.ts, &src, &dst);
                out.extend_from_slice(b"New connection: ");
                out.extend_from_slice(&src);
                out.extend_from_slice(b" -> ");
                out.extend_from_slice(&dst);
                if c.direction == Direction::Out {
                    out.extend_from_slice(b" (outgoing)");
                }
                out.push(b'\n');
            }
        }
    }

    pub fn scan(&mut self, s: &Scan, out: &mut Vec<u8>) {
        self.scan_protected(s, None, out);
    }

    /// A scan, with why its source is never banned when the agent knows better than the
    /// detector (a gateway, router or resolver of this host: `"allowlisted_reason"`).
    pub fn scan_protected(&mut self, s: &Scan, protected: Option<&str>, out: &mut Vec<u8>) {
        let allowlisted = s.allowlisted || protected.is_some();
        if s.kind == ScanKind::Sweep {
            return self.sweep(s, allowlisted, protected, out);
        }
        match self.format {
            Format::Json => {
                // `kind` goes right after `event`, as SPEC §4 shows it.
                self.json_head(out, s.ts, b"scan\",\"kind\":\"ports", s.src);
                json_prefix(out, s);
                out.extend_from_slice(b"\",\"dst\":\"");
                write_ip(out, s.dst);
                out.extend_from_slice(b"\",\"ports\":[");
                write_ports(out, &s.ports);
                out.extend_from_slice(b"],\"window_secs\":");
                write_secs(out, s.window);
                out.extend_from_slice(b",\"probes\":[");
                for (i, p) in s.probes.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(p.as_str().as_bytes());
                    out.push(b'"');
                }
                out.push(b']');
                json_allowlisted(out, allowlisted, protected);
            }
            Format::Table => {
                let mut src = Vec::with_capacity(40);
                write_ip(&mut src, s.src);
                let mut dst = Vec::with_capacity(40);
                write_ip(&mut dst, s.dst);
                self.table_row(out, s.ts, &src, &dst);
                out.extend_from_slice(b"Port scan detected: ");
                out.extend_from_slice(&src);
                out.extend_from_slice(b" -> ");
                out.extend_from_slice(&dst);
                out.extend_from_slice(b" on ports ");
                write_ports(out, &s.ports);
                let only_syn = s.probes.iter().all(|p| p == Probe::Syn);
                if !only_syn {
                    out.extend_from_slice(b" (probes: ");
                    for (i, p) in s.probes.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(p.as_str().as_bytes());
                    }
                    out.push(b')');
                }
                table_notes(out, s, allowlisted, protected);
            }
        }
    }

    /// An address sweep: `{"event":"scan","kind":"sweep","src":...,"dport":22,"hosts":[...]}`.
    fn sweep(&mut self, s: &Scan, allowlisted: bool, protected: Option<&str>, out: &mut Vec<u8>) {
        let dport = s.ports.first().copied().unwrap_or(0);
        match self.format {
            Format::Json => {
                self.json_head(out, s.ts, b"scan\",\"kind\":\"sweep", s.src);
                json_prefix(out, s);
                out.extend_from_slice(b"\",\"dport\":");
                write_ports(out, &[dport]);
                out.extend_from_slice(b",\"hosts\":[");
                for (i, host) in s.hosts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    write_ip(out, *host);
                    out.push(b'"');
                }
                out.extend_from_slice(b"],\"window_secs\":");
                write_secs(out, s.window);
                json_allowlisted(out, allowlisted, protected);
            }
            Format::Table => {
                let mut src = Vec::with_capacity(40);
                write_ip(&mut src, s.src);
                let mut port = Vec::with_capacity(8);
                port.push(b':');
                write_ports(&mut port, &[dport]);
                self.table_row(out, s.ts, &src, &port);
                out.extend_from_slice(b"Address sweep detected: ");
                out.extend_from_slice(&src);
                out.extend_from_slice(b" -> port ");
                write_ports(out, &[dport]);
                out.extend_from_slice(b" on ");
                write_u64(out, s.hosts.len() as u64);
                out.extend_from_slice(b" hosts (");
                for (i, host) in s.hosts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_ip(out, *host);
                }
                out.push(b')');
                table_notes(out, s, allowlisted, protected);
            }
        }
    }

    pub fn suppressed(&mut self, s: &crate::limit::Suppressed, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => {
                out.extend_from_slice(b"{\"ts\":\"");
                self.clock.write(s.since, out);
                out.extend_from_slice(b"\",\"event\":\"suppressed\",\"count\":");
                write_u64(out, s.count);
                out.extend_from_slice(b",\"sources\":");
                write_u64(out, s.sources);
                out.extend_from_slice(b",\"untracked\":");
                write_u64(out, s.untracked);
                out.extend_from_slice(b",\"interval_secs\":1,\"top\":[");
                for (i, (src, count)) in s.top.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"src\":\"");
                    write_ip(out, *src);
                    out.extend_from_slice(b"\",\"count\":");
                    write_u64(out, *count);
                    out.push(b'}');
                }
                out.extend_from_slice(b"]}\n");
            }
            Format::Table => {
                self.table_row(out, s.since, b"-", b"-");
                use std::io::Write as _;
                let top: Vec<String> = s.top.iter().map(|(ip, n)| format!("{ip} ({n})")).collect();
                let untracked = if s.untracked > 0 {
                    format!(
                        "; {} of them from further sources not told apart",
                        s.untracked
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "Log limit: {} connection events from {} sources not shown in this second (most: {}){untracked}",
                    s.count,
                    s.sources,
                    top.join(", ")
                );
            }
        }
    }

    pub fn block(&mut self, b: &BlockEvent<'_>, out: &mut Vec<u8>) {
        let until = b.until.map(|u| rfc3339(u.saturating_mul(1_000_000_000)));
        match self.format {
            Format::Json => {
                self.json_head(out, b.ts, b"block", b.src);
                write_prefix(out, b.prefix);
                out.extend_from_slice(b"\",\"backend\":\"");
                out.extend_from_slice(b.backend.as_bytes());
                out.extend_from_slice(b"\",\"until\":");
                match &until {
                    Some(u) => {
                        out.push(b'"');
                        out.extend_from_slice(u.as_bytes());
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"reason\":\"");
                // Reasons are fixed words, port lists and "manual": nothing to escape.
                out.extend_from_slice(b.reason.as_bytes());
                out.extend_from_slice(b"\",\"offences\":");
                write_u64(out, u64::from(b.offences));
                if b.dry_run {
                    out.extend_from_slice(b",\"dry_run\":true");
                }
                if b.new_only {
                    out.extend_from_slice(b",\"scope\":\"new\",\"established\":true");
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Table => {
                let mut src = Vec::with_capacity(44);
                match b.prefix {
                    Some(p) => src.extend_from_slice(p.to_string().as_bytes()),
                    None => write_ip(&mut src, b.src),
                }
                self.table_row(out, b.ts, &src, b"-");
                use std::io::Write as _;
                let _ = writeln!(
                    out,
                    "{} {} {} ({}, {}{}){}",
                    if b.dry_run {
                        "Would block (dry run)"
                    } else {
                        "Blocked"
                    },
                    b.prefix.map_or(b.src.to_string(), |p| p.to_string()),
                    until.map_or("until removed".to_owned(), |u| format!("until {u}")),
                    b.backend,
                    b.reason,
                    if b.offences > 1 {
                        format!(", offence {}", b.offences)
                    } else {
                        String::new()
                    },
                    if b.new_only {
                        ": new connections only, it holds an established one"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    pub fn unblock(
        &mut self,
        ts: Nanos,
        src: IpAddr,
        prefix: Option<ipnet::IpNet>,
        reason: &str,
        out: &mut Vec<u8>,
    ) {
        match self.format {
            Format::Json => {
                self.json_head(out, ts, b"unblock", src);
                write_prefix(out, prefix);
                out.extend_from_slice(b"\",\"reason\":\"");
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\"}\n");
            }
            Format::Table => {
                let mut text = Vec::with_capacity(44);
                match prefix {
                    Some(p) => text.extend_from_slice(p.to_string().as_bytes()),
                    None => write_ip(&mut text, src),
                }
                self.table_row(out, ts, &text, b"-");
                out.extend_from_slice(b"Unblocked ");
                out.extend_from_slice(&text);
                out.extend_from_slice(b" (");
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b")\n");
            }
        }
    }

    /// Table rows leave their columns unpadded, separated by [`COLUMN`]: column widths
    /// are the writer's business, since only it sees every row in output order.
    /// The start every JSON event about a source shares: `{"ts":"…","event":"…","src":"…`
    /// (the source's closing quote is the caller's).
    /// [`Formatter::connection`]'s JSON line for IPv4 addresses, the common case of a
    /// replay's hundreds of thousands a second: built on the stack, one store a piece,
    /// and appended to `out` at once.
    fn json_connection_v4(
        &mut self,
        c: &Connection,
        (src, dst): (Ipv4Addr, Ipv4Addr),
        out: &mut Vec<u8>,
    ) {
        let mut line = Line::<192>::default();
        line.put(b"{\"ts\":\"");
        line.put(self.clock.stamp(c.ts));
        line.put(b"\",\"event\":\"connection\",\"src\":\"");
        line.ipv4(src);
        line.put(b"\",\"sport\":");
        line.number(c.sport);
        line.put(b",\"dst\":\"");
        line.ipv4(dst);
        line.put(b"\",\"dport\":");
        line.number(c.dport);
        line.put(b",\"direction\":\"");
        line.put(c.direction.as_str().as_bytes());
        line.put(b"\"}\n");
        out.extend_from_slice(line.bytes());
    }

    fn json_head(&mut self, out: &mut Vec<u8>, ts: Nanos, event: &[u8], src: IpAddr) {
        out.extend_from_slice(b"{\"ts\":\"");
        self.clock.write(ts, out);
        out.extend_from_slice(b"\",\"event\":\"");
        out.extend_from_slice(event);
        out.extend_from_slice(b"\",\"src\":\"");
        write_ip(out, src);
    }

    fn table_row(&mut self, out: &mut Vec<u8>, ts: Nanos, src: &[u8], dst: &[u8]) {
        self.clock.write(ts, out);
        for field in [src, dst] {
            out.push(COLUMN);
            out.extend_from_slice(field);
        }
        out.push(COLUMN);
    }
}

/// A scan's `"prefix"` (after `src`, its string still open), when counted per prefix.
fn json_prefix(out: &mut Vec<u8>, s: &Scan) {
    if let Some(prefix) = s.prefix {
        out.extend_from_slice(b"\",\"prefix\":\"");
        out.extend_from_slice(prefix.to_string().as_bytes());
    }
}

/// A scan's closing `"allowlisted"` (and why, where the agent knows), then the end of
/// the line.
fn json_allowlisted(out: &mut Vec<u8>, allowlisted: bool, protected: Option<&str>) {
    out.extend_from_slice(b",\"allowlisted\":");
    out.extend_from_slice(if allowlisted { b"true" } else { b"false" });
    if let Some(why) = protected {
        out.extend_from_slice(b",\"allowlisted_reason\":\"");
        out.extend_from_slice(why.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}\n");
}

/// The end of a scan's table message: the prefix it was counted as, and why it is not
/// to be blocked.
fn table_notes(out: &mut Vec<u8>, s: &Scan, allowlisted: bool, protected: Option<&str>) {
    if let Some(prefix) = s.prefix {
        out.extend_from_slice(b" (counted as ");
        out.extend_from_slice(prefix.to_string().as_bytes());
        out.push(b')');
    }
    match protected {
        Some(why) => {
            out.extend_from_slice(b" (");
            out.extend_from_slice(why.as_bytes());
            out.extend_from_slice(b": not to be blocked)");
        }
        None if allowlisted => out.extend_from_slice(b" (allowlisted: not to be blocked)"),
        None => {}
    }
    out.push(b'\n');
}

/// Separates the columns of a formatted table row until the writer pads them.
pub const COLUMN: u8 = 0x1f;

fn write_ports(line: &mut Vec<u8>, ports: &[u16]) {
    for (i, port) in ports.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        write_small(line, *port);
    }
}

/// Seconds as a JSON number: an integer when whole, else with the fraction needed.
fn write_secs(line: &mut Vec<u8>, nanos: Nanos) {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    write_u64(line, secs.unsigned_abs());
    if frac != 0 {
        let digits = format!("{:09}", frac.unsigned_abs());
        line.push(b'.');
        line.extend_from_slice(digits.trim_end_matches('0').as_bytes());
    }
}

/// `addr:port`, or `[addr]:port` for IPv6 (as Rust's `SocketAddr` prints it).
fn write_socket(line: &mut Vec<u8>, addr: IpAddr, port: u16) {
    match addr {
        IpAddr::V4(_) => write_ip(line, addr),
        IpAddr::V6(_) => {
            line.push(b'[');
            write_ip(line, addr);
            line.push(b']');
        }
    }
    line.push(b':');
    write_small(line, port);
}

/// In a JSON event whose `src` string is still open: closes it and adds `prefix` (left
/// open in turn) when the event is about a range.
fn write_prefix(out: &mut Vec<u8>, prefix: Option<ipnet::IpNet>) {
    if let Some(p) = prefix {
        out.extend_from_slice(b"\",\"prefix\":\"");
        out.extend_from_slice(p.to_string().as_bytes());
    }
}

pub fn write_ip(line: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => write_ipv4(line, a),
        IpAddr::V6(a) => {
            use std::io::Write as _;
            // Rust's Display is the contract for IPv6 text (compressed form).
            let _ = write!(line, "{a}");
        }
    }
}

fn write_ipv4(line: &mut Vec<u8>, a: Ipv4Addr) {
    // 15 characters at most, and the 4 bytes an octet is stored as.
    let mut text = Line::<20>::default();
    text.ipv4(a);
    line.extend_from_slice(text.bytes());
}

/// Text built on the stack, `N` bytes at most: each piece is stored at a moving index,
/// with no check of a vector's capacity per byte. A piece that would not fit is left
/// out (never the case for the text built here: 192 bytes hold any line of IPv4
/// addresses).
struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Line<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Line<N> {
    #[inline]
    fn put(&mut self, piece: &[u8]) {
        if let Some(to) = self.buf.get_mut(self.len..self.len + piece.len()) {
            to.copy_from_slice(piece);
            self.len += piece.len();
        }
    }

    /// Four bytes stored, `n` of them kept (the rest is overwritten by what follows).
    #[inline]
    fn put_first(&mut self, four: [u8; 4], n: usize) {
        if let Some(to) = self.buf.get_mut(self.len..self.len + 4) {
            to.copy_from_slice(&four);
            self.len += n.min(4);
        }
    }

    #[inline]
    fn ipv4(&mut self, a: Ipv4Addr) {
        let [a, b, c, d] = a.octets();
        for (i, octet) in [a, b, c, d].into_iter().enumerate() {
            let digits = OCTETS[usize::from(octet)];
            // An octet's digits, then its dot (the last one's is overwritten).
            let n = usize::from(digits[3]);
            let mut four = digits;
            four[n] = b'.';
            self.put_first(four, n + usize::from(i < 3));
        }
    }

    /// A port's decimal digits.
    #[inline]
    fn number(&mut self, n: u16) {
        let width = match n {
            0..10 => 1,
            10..100 => 2,
            100..1_000 => 3,
            1_000..10_000 => 4,
            _ => 5,
        };
        let mut digits = [b'0'; 5];
        let mut m = n;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        self.put(&digits[..width]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

/// The decimal digits of each octet value, their count in the last byte.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let (d, n) = match i {
            0..10 => ([b'0' + i as u8, 0, 0], 1),
            10..100 => ([b'0' + (i / 10) as u8, b'0' + (i % 10) as u8, 0], 2),
            _ => (
                [
                    b'0' + (i / 100) as u8,
                    b'0' + (i / 10 % 10) as u8,
                    b'0' + (i % 10) as u8,
                ],
                3,
            ),
        };
        table[i] = [d[0], d[1], d[2], n];
        i += 1;
    }
    table
};

/// Decimal digits of a port (the hot IPv4 JSON line builds its own in a [`Line`]).
#[inline]
fn write_small(line: &mut Vec<u8>, n: u16) {
    let mut digits = Line::<5>::default();
    digits.number(n);
    line.extend_from_slice(digits.bytes());
}

pub fn write_u64(line: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use synwatch_detect::ProbeSet;

    use crate::fixtures::{connection as conn, ip, port_scan as scan};

    /// What the formatter makes of the events a test gives it, as the printers' methods
    /// take them (table columns are left unpadded: the printers pad them).
    struct Lines {
        f: Formatter,
        out: Vec<u8>,
    }

    impl Lines {
        fn connection(&mut self, c: &Connection) -> io::Result<()> {
            self.f.connection(c, &mut self.out);
            Ok(())
        }
        fn scan(&mut self, s: &Scan) -> io::Result<()> {
            self.f.scan(s, &mut self.out);
            Ok(())
        }
        fn scan_protected(&mut self, s: &Scan, protected: Option<&str>) -> io::Result<()> {
            self.f.scan_protected(s, protected, &mut self.out);
            Ok(())
        }
        fn block(&mut self, b: &BlockEvent<'_>) -> io::Result<()> {
            self.f.block(b, &mut self.out);
            Ok(())
        }
    }

    fn render(f: impl FnOnce(&mut Lines) -> io::Result<()>, format: Format) -> String {
        let mut w = Lines {
            f: Formatter::new(format),
            out: Vec::new(),
        };
        f(&mut w).expect("write");
        String::from_utf8(w.out).expect("utf8")
    }

    /// The stack-built line of IPv4 addresses says what a line built by pushes (and
    /// Rust's own formatting of the numbers) says, at every digit count.
    #[test]
    fn ipv4_connection_lines_at_every_digit_count() {
        let mut f = Formatter::new(Format::Json);
        let values = [
            0u16, 7, 9, 10, 42, 99, 100, 255, 999, 1000, 9999, 10_000, 65_535,
        ];
        for (i, &a) in values.iter().enumerate() {
            let b = values[(i * 5 + 3) % values.len()];
            let (x, y) = ((a % 256) as u8, (b % 256) as u8);
            let c = Connection {
                ts: 1_700_000_000_123_456_789 + Nanos::from(a) * 1_000_000_000,
                src: IpAddr::V4(Ipv4Addr::new(x, y, 0, 255)),
                sport: a,
                dst: IpAddr::V4(Ipv4Addr::new(255, 0, y, x)),
                dport: b,
                direction: if i % 2 == 0 {
                    Direction::In
                } else {
                    Direction::Out
                },
            };
            let mut line = Vec::new();
            f.connection(&c, &mut line);
            let want = format!(
                "{{\"ts\":\"{}\",\"event\":\"connection\",\"src\":\"{}\",\"sport\":{},\"dst\":\"{}\",\"dport\":{},\"direction\":\"{}\"}}\n",
                rfc3339(c.ts),
                c.src,
                c.sport,
                c.dst,
                c.dport,
                c.direction.as_str()
            );
            assert_eq!(String::from_utf8(line).expect("utf8"), want);
        }
    }

    #[test]
    fn a_sweep_names_its_port_and_hosts() {
        let sweep = Scan {
            kind: ScanKind::Sweep,
            src: ip("198.51.100.77"),
            dst: ip("10.20.0.17"),
            ports: vec![22],
            hosts: vec![ip("10.20.0.1"), ip("10.20.0.2")],
            ..scan()
        };
        assert_eq!(
            render(|w| w.scan(&sweep), Format::Json),
            "{\"ts\":\"2023-11-14T22:13:20.900000Z\",\"event\":\"scan\",\"kind\":\"sweep\",\"src\":\"198.51.100.77\",\"dport\":22,\"hosts\":[\"10.20.0.1\",\"10.20.0.2\"],\"window_secs\":60,\"allowlisted\":false}\n"
        );
        let text = render(|w| w.scan(&sweep), Format::Table);
        assert!(
            text.contains(
                "Address sweep detected: 198.51.100.77 -> port 22 on 2 hosts (10.20.0.1,10.20.0.2)"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_events_match_the_spec_examples() {
        let line = render(|w| w.connection(&conn()), Format::Json);
        assert_eq!(
            line,
            "{\"ts\":\"2023-11-14T22:13:20.300000Z\",\"event\":\"connection\",\"src\":\"203.0.113.9\",\"sport\":40001,\"dst\":\"192.0.2.1\",\"dport\":22,\"direction\":\"in\"}\n"
        );
        let line = render(|w| w.scan(&scan()), Format::Json);
        assert_eq!(
            line,
            "{\"ts\":\"2023-11-14T22:13:20.900000Z\",\"event\":\"scan\",\"kind\":\"ports\",\"src\":\"203.0.113.9\",\"dst\":\"192.0.2.1\",\"ports\":[21,22,23,25],\"window_secs\":60,\"probes\":[\"syn\"],\"allowlisted\":false}\n"
        );
        // An IPv6 scanner counted per /64 (SPEC §4's second example).
        let v6 = Scan {
            src: ip("2001:db8:77:1::2"),
            dst: ip("2001:db8::1"),
            ports: vec![1000, 1001, 1002, 1003],
            prefix: Some("2001:db8:77:1::/64".parse().expect("net")),
            ..scan()
        };
        let line = render(|w| w.scan(&v6), Format::Json);
        assert_eq!(
            line,
            "{\"ts\":\"2023-11-14T22:13:20.900000Z\",\"event\":\"scan\",\"kind\":\"ports\",\"src\":\"2001:db8:77:1::2\",\"prefix\":\"2001:db8:77:1::/64\",\"dst\":\"2001:db8::1\",\"ports\":[1000,1001,1002,1003],\"window_secs\":60,\"probes\":[\"syn\"],\"allowlisted\":false}\n"
        );
        let text = render(|w| w.scan(&v6), Format::Table);
        assert!(
            text.contains("on ports 1000,1001,1002,1003 (counted as 2001:db8:77:1::/64)"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_prints_compressed_and_bracketed_with_ports() {
        let c = Connection {
            src: ip("2001:db8:0:0:0:0:0:bad"),
            dst: ip("2001:db8::5"),
            ..conn()
        };
        let json = render(|w| w.connection(&c), Format::Json);
        assert!(json.contains("\"src\":\"2001:db8::bad\""), "{json}");
        let table = render(|w| w.connection(&c), Format::Table);
        assert!(
            table.contains("New connection: [2001:db8::bad]:40001 -> [2001:db8::5]:22"),
            "{table}"
        );
    }

    #[test]
    fn stealth_and_allowlisted_scans_say_so() {
        let mut s = scan();
        s.probes = ProbeSet::default();
        s.probes.insert(Probe::Fin);
        s.probes.insert(Probe::Xmas);
        s.allowlisted = true;
        s.window = 1500 * 1_000_000;
        let json = render(|w| w.scan(&s), Format::Json);
        assert!(
            json.contains("\"window_secs\":1.5,\"probes\":[\"fin\",\"xmas\"],\"allowlisted\":true"),
            "{json}"
        );
        let table = render(|w| w.scan(&s), Format::Table);
        assert!(
            table.contains("on ports 21,22,23,25 (probes: fin,xmas) (allowlisted"),
            "{table}"
        );
    }

    #[test]
    fn a_dry_run_block_says_so_and_a_real_one_is_unchanged() {
        let mut b = BlockEvent {
            ts: 0,
            src: IpAddr::from([203, 0, 113, 9]),
            prefix: None,
            backend: "nftables",
            until: None,
            reason: "ports 1,2,3,4",
            offences: 1,
            dry_run: false,
            new_only: false,
        };
        let real = render(|w| w.block(&b), Format::Json);
        assert!(real.ends_with("\"offences\":1}\n"), "{real}");
        b.dry_run = true;
        let dry = render(|w| w.block(&b), Format::Json);
        assert!(dry.ends_with("\"offences\":1,\"dry_run\":true}\n"), "{dry}");
        let table = render(|w| w.block(&b), Format::Table);
        assert!(
            table.contains("Would block (dry run) 203.0.113.9 until removed"),
            "{table}"
        );
        b.dry_run = false;
        b.new_only = true;
        let session = render(|w| w.block(&b), Format::Json);
        assert!(
            session.ends_with("\"offences\":1,\"scope\":\"new\",\"established\":true}\n"),
            "{session}"
        );
        let table = render(|w| w.block(&b), Format::Table);
        assert!(table.contains("new connections only"), "{table}");
    }

    #[test]
    fn a_scan_from_a_gateway_says_why_it_is_not_banned() {
        let s = scan();
        assert!(!s.allowlisted);
        let json = render(|w| w.scan_protected(&s, Some("gateway")), Format::Json);
        assert!(
            json.contains("\"allowlisted\":true,\"allowlisted_reason\":\"gateway\"}"),
            "{json}"
        );
        let table = render(|w| w.scan_protected(&s, Some("resolver")), Format::Table);
        assert!(table.contains("(resolver: not to be blocked)"), "{table}");
        // Nothing added where nothing is protected.
        let json = render(|w| w.scan_protected(&s, None), Format::Json);
        assert_eq!(json, render(|w| w.scan(&s), Format::Json));
        assert!(!json.contains("allowlisted_reason"), "{json}");
    }

    #[test]
    fn small_numbers_at_every_magnitude() {
        for n in [
            0u16, 7, 9, 10, 99, 100, 255, 999, 1000, 9999, 10_000, 65_535,
        ] {
            let mut line = Vec::new();
            write_small(&mut line, n);
            assert_eq!(line, n.to_string().into_bytes());
        }
        let mut line = Vec::new();
        write_ip(&mut line, ip("0.10.100.255"));
        assert_eq!(line, b"0.10.100.255");
    }
}
