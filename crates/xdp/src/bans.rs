//! The XDP program's ban maps as a blocking backend.
//!
//! A ban of an address is an entry in the hashes `ban4`/`ban6`, a ban of a range one in
//! the LPM tries `bannet4`/`bannet6` (consulted when the hash has no running ban for the
//! source, and only while the array `ranges_held` says the trie of its family holds a
//! range); either value holds its end on the kernel's boot clock (0: until removed) and the packets and bytes it dropped; the program compares
//! the end with `bpf_ktime_get_boot_ns()` on every packet, so a ban stops dropping the
//! moment it ends even before user space deletes the entry. Removing a ban also forgets
//! the source's in-kernel scan track, as the user-space detector forgets it (for an IPv6
//! range, the track of the network: the program counts a source per `--ipv6-prefix`
//! under its network, and bans that itself as a range in `bannet6`); except removing a
//! ban the program made by itself that the agent does not keep
//! ([`Enforcer::remove_refused`]), whose track stays, so that the program does not make
//! it again before the source's episode ends.
//!
//! The maps live as long as the program: they are not a firewall that outlives the
//! agent, so `--keep-rules-on-exit` does not keep XDP bans; the next start restores them
//! from the saved state.

use std::net::{IpAddr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray};
use ipnet::IpNet;
use synwatch_enforce::{
    Backend, Ban, DropCounters, EnforceError, Enforcer, KernelBan, ban_net, is_host,
};

use crate::XdpError;
use crate::clock;
use crate::layout::{BanValue, Counter, key4};

/// The ban maps and the drop counters of the loaded program.
pub struct XdpBans {
    ban4: HashMap<MapData, u32, [u64; 3]>,
    ban6: HashMap<MapData, [u8; 16], [u64; 3]>,
    bannet4: LpmTrie<MapData, [u8; 4], [u64; 3]>,
    bannet6: LpmTrie<MapData, [u8; 16], [u64; 3]>,
    /// Whether each trie holds a range (the program skips an empty one).
    ranges_held: Array<MapData, u32>,
    track4: HashMap<MapData, u32, [u8; 176]>,
    track6: HashMap<MapData, [u8; 16], [u8; 176]>,
    counters: PerCpuArray<MapData, u64>,
    slots: Vec<u32>,
}

impl std::fmt::Debug for XdpBans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdpBans")
    }
}

fn failed(map: &str, what: &str, e: &MapError) -> EnforceError {
    EnforceError::Map {
        map: map.to_owned(),
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Whether a removal failed only because the key was not there.
fn missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(nix::libc::ENOENT),
        _ => false,
    }
}

/// The network as the program keys it: an address in the hashes (IPv4-mapped IPv6 as
/// IPv4), a range in the tries.
enum Keyed {
    V4(u32),
    V6([u8; 16]),
    Net4(Key<[u8; 4]>),
    Net6(Key<[u8; 16]>),
}

fn keyed(net: IpNet) -> Keyed {
    let net = ban_net(net);
    match (net, is_host(net)) {
        (IpNet::V4(n), true) => Keyed::V4(key4(n.addr())),
        (IpNet::V6(n), true) => Keyed::V6(n.addr().octets()),
        (IpNet::V4(n), false) => {
            Keyed::Net4(Key::new(u32::from(n.prefix_len()), n.addr().octets()))
        }
        (IpNet::V6(n), false) => {
            Keyed::Net6(Key::new(u32::from(n.prefix_len()), n.addr().octets()))
        }
    }
}

impl XdpBans {
    pub(crate) fn open(
        share: impl Fn(&'static str) -> Result<aya::maps::Map, XdpError>,
        slots: Vec<u32>,
    ) -> Result<Self, XdpError> {
        fn typed<T: TryFrom<aya::maps::Map, Error = MapError>>(
            share: &impl Fn(&'static str) -> Result<aya::maps::Map, XdpError>,
            name: &'static str,
        ) -> Result<T, XdpError> {
            T::try_from(share(name)?).map_err(|e| XdpError::map(name, e))
        }
        Ok(Self {
            ban4: typed(&share, "ban4")?,
            ban6: typed(&share, "ban6")?,
            bannet4: typed(&share, "bannet4")?,
            bannet6: typed(&share, "bannet6")?,
            ranges_held: typed(&share, "ranges_held")?,
            track4: typed(&share, "track4")?,
            track6: typed(&share, "track6")?,
            counters: typed(&share, "counters")?,
            slots,
        })
    }

    fn insert(&mut self, ban: &Ban, now: u64) -> Result<(), EnforceError> {
        let expires = match ban.timeout_secs {
            None => 0,
            Some(s) => now.saturating_add(s.saturating_mul(1_000_000_000)).max(1),
        };
        match keyed(ban.net) {
            Keyed::V4(k) => renew(&mut self.ban4, k, expires, ban.new_only)
                .map_err(|e| failed("ban4", "add a ban", &e)),
            Keyed::V6(k) => renew(&mut self.ban6, k, expires, ban.new_only)
                .map_err(|e| failed("ban6", "add a ban", &e)),
            Keyed::Net4(k) => renew_net(&mut self.bannet4, &k, expires, ban.new_only)
                .map_err(|e| failed("bannet4", "add a range ban", &e)),
            Keyed::Net6(k) => renew_net(&mut self.bannet6, &k, expires, ban.new_only)
                .map_err(|e| failed("bannet6", "add a range ban", &e)),
        }
    }

    /// Tells the program which tries hold a range (after the tries changed).
    fn note_ranges(&mut self) -> Result<(), EnforceError> {
        // The program's RANGES_V4 and RANGES_V6 bits.
        let held = u32::from(self.bannet4.keys().next().is_some())
            | (u32::from(self.bannet6.keys().next().is_some()) << 1);
        self.ranges_held
            .set(0, held, 0)
            .map_err(|e| failed("ranges_held", "note the ranges held", &e))
    }

    fn clear(&mut self) -> Result<(), EnforceError> {
        let v4: Vec<u32> = self.ban4.keys().filter_map(Result::ok).collect();
        let v6: Vec<[u8; 16]> = self.ban6.keys().filter_map(Result::ok).collect();
        let mut nets: Vec<IpNet> = v4
            .into_iter()
            .map(|k| IpNet::from(IpAddr::from(k.to_ne_bytes())))
            .chain(
                v6.into_iter()
                    .map(|k| IpNet::from(IpAddr::V6(Ipv6Addr::from(k)))),
            )
            .collect();
        nets.extend(self.bannet4.keys().filter_map(Result::ok).filter_map(net4));
        nets.extend(self.bannet6.keys().filter_map(Result::ok).filter_map(net6));
        self.remove(&nets)
    }

    /// Removes the bans on `nets`, and the program's scan tracks of their sources where
    /// `forget` (see [`Enforcer::remove_refused`]).
    fn remove_with(&mut self, nets: &[IpNet], forget: bool) -> Result<(), EnforceError> {
        let mut first = Ok(());
        for &net in nets {
            let (ban, track) = match keyed(net) {
                Keyed::V4(k) if forget => (self.ban4.remove(&k), self.track4.remove(&k)),
                Keyed::V4(k) => (self.ban4.remove(&k), Ok(())),
                Keyed::V6(k) if forget => (self.ban6.remove(&k), self.track6.remove(&k)),
                Keyed::V6(k) => (self.ban6.remove(&k), Ok(())),
                Keyed::Net4(k) => (self.bannet4.remove(&k), Ok(())),
                // The program tracks a source counted per prefix under its network.
                Keyed::Net6(k) if forget => {
                    (self.bannet6.remove(&k), self.track6.remove(&k.data()))
                }
                Keyed::Net6(k) => (self.bannet6.remove(&k), Ok(())),
            };
            for (map, result) in [("ban", ban), ("track", track)] {
                if let Err(e) = result
                    && !missing(&e)
                    && first.is_ok()
                {
                    first = Err(failed(map, "remove an address", &e));
                }
            }
        }
        if nets.iter().any(|n| !is_host(*n)) {
            first = first.and(self.note_ranges());
        }
        first
    }
}

fn net4(k: Key<[u8; 4]>) -> Option<IpNet> {
    IpNet::new(IpAddr::from(k.data()), u8::try_from(k.prefix_len()).ok()?).ok()
}

fn net6(k: Key<[u8; 16]>) -> Option<IpNet> {
    IpNet::new(IpAddr::from(k.data()), u8::try_from(k.prefix_len()).ok()?).ok()
}

/// [`renew`] for a range.
fn renew_net<K: aya::Pod>(
    map: &mut LpmTrie<MapData, K, [u64; 3]>,
    key: &Key<K>,
    expires: u64,
    new_only: bool,
) -> Result<(), MapError> {
    // `get` is a longest-prefix match; the book never holds a ban inside another, so
    // what it finds is this range's own entry (whose counters a renewal keeps).
    let old = map
        .get(key, 0)
        .map(BanValue::from_words)
        .unwrap_or_default();
    let value = BanValue {
        expires,
        new_only,
        ..old
    };
    map.insert(key, value.to_words(), 0)
}

/// Sets the ban on `key` to end at `expires` (dropping only new connections when
/// `new_only`); a ban that is renewed keeps its counters.
fn renew<K: aya::Pod>(
    map: &mut HashMap<MapData, K, [u64; 3]>,
    key: K,
    expires: u64,
    new_only: bool,
) -> Result<(), MapError> {
    let old = map
        .get(&key, 0)
        .map(BanValue::from_words)
        .unwrap_or_default();
    let value = BanValue {
        expires,
        new_only,
        ..old
    };
    map.insert(key, value.to_words(), 0)
}

impl Enforcer for XdpBans {
    fn backend(&self) -> Backend {
        Backend::Xdp
    }

    fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.clear()?;
        self.add(bans)
    }

    fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        let now = clock::boot_now();
        let mut first = Ok(());
        for ban in bans {
            if let Err(e) = self.insert(ban, now)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        if bans.iter().any(|b| !is_host(b.net)) {
            first = first.and(self.note_ranges());
        }
        first
    }

    fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.remove_with(nets, true)
    }

    fn remove_refused(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.remove_with(nets, false)
    }

    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
        let now = clock::boot_now();
        let entry = |net: IpNet, v: [u64; 3]| {
            let v = BanValue::from_words(v);
            (v.expires == 0 || v.expires > now).then(|| KernelBan {
                net,
                expires_secs: (v.expires != 0).then(|| (v.expires - now).div_ceil(1_000_000_000)),
                packets: Some(v.packets),
                bytes: Some(v.bytes),
            })
        };
        let mut out: Vec<KernelBan> = self
            .ban4
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| entry(IpNet::from(IpAddr::from(k.to_ne_bytes())), v))
            .collect();
        out.extend(
            self.ban6
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| entry(IpNet::from(IpAddr::V6(Ipv6Addr::from(k))), v)),
        );
        out.extend(
            self.bannet4
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| entry(net4(k)?, v)),
        );
        out.extend(
            self.bannet6
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| entry(net6(k)?, v)),
        );
        Ok(out)
    }

    fn counters(&mut self) -> Result<DropCounters, EnforceError> {
        Ok(DropCounters {
            packets: crate::counter_total(&self.counters, Counter::Dropped, &self.slots),
            bytes: crate::counter_total(&self.counters, Counter::DroppedBytes, &self.slots),
        })
    }

    /// The maps exist while the agent holds the program.
    fn present(&mut self) -> bool {
        true
    }

    fn teardown(&mut self) -> Result<(), EnforceError> {
        self.clear()
    }
}
