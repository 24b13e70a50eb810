//! What a TCP segment means to the detector: a connection attempt, a stealth probe, or
//! nothing at all.

use std::fmt;

use synwatch_decode::TcpFlags;

/// The kinds of segment that count toward a source's distinct ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// SYN set and ACK clear: a connection attempt (whatever else is set).
    Syn,
    /// No flags at all (nmap `-sN`).
    Null,
    /// FIN alone (nmap `-sF`).
    Fin,
    /// FIN, PSH and URG (nmap `-sX`).
    Xmas,
    /// Any other segment with none of SYN, ACK, RST.
    Other,
}

impl Probe {
    pub const ALL: [Probe; 5] = [Self::Syn, Self::Null, Self::Fin, Self::Xmas, Self::Other];

    /// Classifies a segment by its flags; `None` for segments of established or closing
    /// connections (anything with ACK or RST, and SYN-ACK).
    #[inline]
    pub fn classify(flags: TcpFlags) -> Option<Probe> {
        let f = flags.0;
        if f & TcpFlags::SYN != 0 {
            return (f & TcpFlags::ACK == 0).then_some(Probe::Syn);
        }
        if f & (TcpFlags::ACK | TcpFlags::RST) != 0 {
            return None;
        }
        // ECE and CWR are congestion signalling, not part of any probe's signature.
        Some(match f & (TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG) {
            0 => Probe::Null,
            TcpFlags::FIN => Probe::Fin,
            x if x == TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG => Probe::Xmas,
            _ => Probe::Other,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Null => "null",
            Self::Fin => "fin",
            Self::Xmas => "xmas",
            Self::Other => "other",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Probe`] kinds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProbeSet(u8);

impl ProbeSet {
    /// No probe kinds.
    pub const EMPTY: Self = Self(0);

    pub fn insert(&mut self, probe: Probe) {
        self.0 |= probe.bit();
    }

    pub fn contains(self, probe: Probe) -> bool {
        self.0 & probe.bit() != 0
    }

    /// The set as one byte, for packed tables.
    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    /// The set [`ProbeSet::bits`] gave.
    pub(crate) fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    pub fn union(self, other: ProbeSet) -> ProbeSet {
        ProbeSet(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds present, in [`Probe::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Probe> {
        Probe::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl From<Probe> for ProbeSet {
    fn from(probe: Probe) -> Self {
        ProbeSet(probe.bit())
    }
}

impl fmt::Debug for ProbeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Probe::as_str))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u8 = TcpFlags::FIN;
    const S: u8 = TcpFlags::SYN;
    const R: u8 = TcpFlags::RST;
    const P: u8 = TcpFlags::PSH;
    const A: u8 = TcpFlags::ACK;
    const U: u8 = TcpFlags::URG;
    const E: u8 = TcpFlags::ECE;
    const C: u8 = TcpFlags::CWR;

    fn c(flags: u8) -> Option<Probe> {
        Probe::classify(TcpFlags(flags))
    }

    #[test]
    fn syn_without_ack_is_an_attempt_whatever_else_is_set() {
        assert_eq!(c(S), Some(Probe::Syn));
        assert_eq!(c(S | E | C), Some(Probe::Syn));
        assert_eq!(c(S | F), Some(Probe::Syn));
        assert_eq!(c(S | R), Some(Probe::Syn));
    }

    #[test]
    fn replies_and_established_traffic_are_ignored() {
        for flags in [S | A, R, R | A, A, F | A, P | A, F | P | A, A | U] {
            assert_eq!(c(flags), None, "{:?}", TcpFlags(flags));
        }
    }

    #[test]
    fn stealth_probes_by_kind() {
        assert_eq!(c(0), Some(Probe::Null));
        assert_eq!(c(E | C), Some(Probe::Null));
        assert_eq!(c(F), Some(Probe::Fin));
        assert_eq!(c(F | P | U), Some(Probe::Xmas));
        assert_eq!(c(P), Some(Probe::Other));
        assert_eq!(c(F | U), Some(Probe::Other));
    }

    #[test]
    fn probe_sets_list_in_stable_order() {
        let mut set = ProbeSet::default();
        set.insert(Probe::Xmas);
        set.insert(Probe::Syn);
        let names: Vec<_> = set.iter().map(Probe::as_str).collect();
        assert_eq!(names, ["syn", "xmas"]);
    }
}
