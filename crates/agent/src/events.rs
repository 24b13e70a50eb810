//! The events the running agent reports, and the seam through which it reports them:
//! [`EventSink`], owned here and implemented by the binary's printers (JSON lines, the
//! table), so that the agent decides which events are due and never formats or writes
//! them itself.

use std::io;
use std::net::IpAddr;

use synwatch_detect::{Direction, Nanos, Observation, Scan};

use crate::limit::Suppressed;

/// A new connection attempt worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub ts: Nanos,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub direction: Direction,
}

impl Connection {
    /// The attempt `obs`, going `direction`.
    pub fn of(obs: &Observation, direction: Direction) -> Self {
        Self {
            ts: obs.ts,
            src: obs.src,
            sport: obs.sport,
            dst: obs.dst,
            dport: obs.dport,
            direction,
        }
    }
}

/// A ban applied in the kernel (the `block` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEvent<'a> {
    pub ts: Nanos,
    /// The address banned, or the first address of the range banned.
    pub src: IpAddr,
    /// The range banned, when the ban is of one (written as `prefix`, as scan events
    /// write the prefix a source counts in).
    pub prefix: Option<ipnet::IpNet>,
    pub backend: &'a str,
    /// Unix seconds; `None` until removed.
    pub until: Option<i64>,
    pub reason: &'a str,
    pub offences: u32,
    /// `--dry-run`: decided, not applied.
    pub dry_run: bool,
    /// Only new connections are dropped: the source held an established connection.
    pub new_only: bool,
}

/// Where the agent's events go (SPEC §4): connection attempts, scans, what the log limit
/// held back, bans and lifted bans.
pub trait EventSink {
    fn connection(&mut self, c: &Connection) -> io::Result<()>;
    /// A port scan or sweep, saying why its source is never banned where it is protected.
    fn scan(&mut self, s: &Scan, protected: Option<&str>) -> io::Result<()>;
    /// What the log rate limit held back in a second.
    fn suppressed(&mut self, s: &Suppressed) -> io::Result<()>;
    fn block(&mut self, b: &BlockEvent<'_>) -> io::Result<()>;
    /// A ban lifted: of `net`, an address or a range.
    fn unblock(&mut self, ts: Nanos, net: ipnet::IpNet, reason: &str) -> io::Result<()>;
    /// Hands on what is buffered (live events go out as they happen).
    fn flush(&mut self) -> io::Result<()>;
}
