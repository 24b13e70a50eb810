//! Addresses as the detector's table keys: one integer, copied and hashed in registers.

use std::net::IpAddr;

/// An address as one integer (IPv4 in its IPv4-mapped IPv6 form): hashing one `u128`
/// is several times cheaper than hashing the `IpAddr` enum, and these tables are probed
/// on every attempt.
pub(crate) type AddrKey = u128;

#[inline]
pub(crate) fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(a) => 0xffff_0000_0000 | u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

/// The IPv4 address an [`AddrKey`] stands for, if it is one.
#[inline]
pub(crate) fn key_v4(key: AddrKey) -> Option<u32> {
    (key >> 32 == 0xffff).then_some(key as u32)
}

/// The address of an [`AddrKey`]: an IPv4-mapped one as IPv4, the host the detector
/// counts it as.
#[inline]
pub(crate) fn key_addr(key: AddrKey) -> IpAddr {
    match key_v4(key) {
        Some(a) => IpAddr::V4(a.into()),
        None => IpAddr::V6(key.into()),
    }
}

#[inline]
pub(crate) fn halves(key: AddrKey) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}
