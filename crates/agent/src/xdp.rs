//! The XDP path of the running agent: starting the program on the watched interfaces, the
//! thread that turns its ring buffer into observations, and the allowlist it consults.
//!
//! The program reports probes (with `--source xdp`) and the packets with which it
//! banned a scanner itself (with `--block xdp`). Both become observations for the same
//! detector as libpcap's, so the user-space detector stays the reference: it decides the
//! scan events, the ban lengths, the logging and the saved state. A source the program
//! banned but the detector would not (a ban cap reached, say) is lifted again. Packets
//! the program cannot judge (fragments, long IPv6 header chains) come up raw, from their
//! L3 header on, and go through the same decoder as libpcap's.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use synwatch_decode::{DecodeError, Decoded, LinkType, Reassembler, ReassemblyLimits, TcpFlags};
use synwatch_detect::{DirectionFilter, Observation, Probe};
use synwatch_xdp::clock::{BootToUnix, boot_now};
use synwatch_xdp::{Counter, Detection, Mode, Options, Record, Ring, Xdp, XdpError};

use crate::metrics::Metrics;

/// What the program is told, from the running configuration.
pub fn options(
    detector: &synwatch_detect::Config,
    emit: bool,
    blocking: Option<(&crate::block::BlockSettings, bool)>,
) -> Options {
    let detection = blocking.and_then(|(b, detect)| {
        (detect
            && detector.direction != DirectionFilter::Out
            && synwatch_xdp::detects_in_kernel(detector.max_ports))
        .then(|| Detection {
            max_ports: detector.max_ports,
            window_ns: u64::try_from(detector.window).unwrap_or(u64::MAX),
            ban_secs: b.policy.duration_secs,
            ipv6_prefix: detector.ipv6_prefix,
        })
    });
    Options {
        emit,
        detection,
        scope_new: blocking.is_some_and(|(b, _)| b.scope == synwatch_enforce::Scope::New),
        // Observing through XDP, the program judges SYN retransmissions by the
        // detector's window (SPEC §2 "same attempt") and sends up only new attempts.
        same_attempt_ns: u64::try_from(detector.window).unwrap_or(0),
    }
}

/// Loads the program and attaches it to every interface; on any failure nothing stays
/// attached (the program is dropped).
pub fn start(ifaces: &[String], mode: Mode, options: Options) -> Result<Xdp, XdpError> {
    let mut xdp = Xdp::load(options)?;
    for iface in ifaces {
        let attached = xdp.attach(iface, mode)?;
        if let Some(old) = &attached.replaced {
            tracing::info!(
                "replaced a stale synwatch XDP program on {iface} ({old}) left by an earlier run"
            );
        }
    }
    Ok(xdp)
}

/// Tells the program what to do and which ranges it must never drop or track (the
/// protected ones: see `protect.rs`).
pub fn apply(
    xdp: &mut Xdp,
    options: Options,
    protected: crate::protect::View<'_>,
) -> Result<(), XdpError> {
    xdp.configure(options)?;
    xdp.set_per_address(&per_address(protected.cfg))?;
    xdp.set_allowed(&crate::protect::allowlist(protected))
}

/// The IPv6 networks whose sources the program counts per address although
/// `--ipv6-prefix` is shorter: the detector's own list
/// ([`synwatch_detect::per_address_prefixes`]: those holding a local, neighbour or
/// allowlisted address, local ranges, NAT64's prefixes, link-local), which the test below holds the
/// two to.
fn per_address(cfg: &synwatch_detect::Config) -> Vec<Ipv6Net> {
    let mut nets: Vec<Ipv6Net> = synwatch_detect::per_address_prefixes(cfg)
        .iter()
        .filter_map(|net| match net {
            IpNet::V6(n) => Some(n.trunc()),
            IpNet::V4(_) => None,
        })
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// How the interfaces are attached, for the banner: "veth0 (XDP native)".
pub fn describe(xdp: &Xdp) -> String {
    xdp.attached()
        .iter()
        .map(|a| format!("{} (XDP {})", a.iface, a.mode))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the XDP thread hands the pipeline besides observations: what the program banned
/// (an address, or the network of an IPv6 source it counted per `--ipv6-prefix`), and
/// the address whose packet crossed.
#[derive(Debug)]
pub struct KernelBans(pub Vec<(IpNet, IpAddr)>);

/// How often the program's counters are copied into the metrics.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// Records fewer than this in one read are a trickle: the thread then waits
/// [`COALESCE`] before reading again, so that under a flood each hand-over to the
/// pipeline carries many records rather than one or two (the ring wakes its reader for
/// every record, and each hand-over costs the pipeline a turn of its loop).
const TRICKLE: usize = 256;
/// What a trickle waits for company: the most an event is delayed by it.
const COALESCE: Duration = Duration::from_millis(2);

/// Whether a source the program saw is a link-local address: the program sees only
/// what comes in, and one of this host's link-local addresses coming in is another
/// host's on another link (or a forgery), never this host's own attempt
/// ([`Observation::foreign`]; an XDP program on loopback, where the host's own packets
/// do come in, is the exception this does not tell).
fn came_in_link_local(src: IpAddr) -> bool {
    matches!(src, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// A packet the program handed up raw (a fragment, a long header chain), through
/// reassembly: the observations of its segments (any further one its datagram's copies
/// gave too, [`Reassembler::take_extra`]) go into `batch`, except SYNs that the
/// program's table of last sightings takes for retransmissions (counted in `raw_same`):
/// one table for the SYNs the program judged and those it could not, so the detector
/// only ever sees the new attempts of either.
fn take_raw(
    (defrag, ring, clock): (&mut Reassembler, &mut Ring, &BootToUnix),
    p: &synwatch_xdp::RawPacket,
    batch: &mut Vec<Observation>,
    raw_same: &mut u64,
) -> Result<(), DecodeError> {
    let decoded = defrag.decode_framed(LinkType::Raw, &p.bytes, p.len as usize, p.ts_boot)?;
    let Decoded::Segment(seg) = decoded else {
        return Ok(());
    };
    for seg in defrag.with_extra(seg) {
        let Some(mut obs) = Observation::of_segment(clock.unix(p.ts_boot), &seg) else {
            continue;
        };
        obs.foreign = came_in_link_local(obs.src);
        if Probe::classify(obs.flags) == Some(Probe::Syn)
            && ring.same_attempt(obs.src, obs.dst, obs.sport, obs.dport, p.ts_boot)
        {
            *raw_same += 1;
            continue;
        }
        batch.push(obs);
    }
    Ok(())
}

/// Reads the ring buffer until `stop`: each event becomes an observation, sent in
/// batches through `send_batch`; sources the program banned follow their batch through
/// `send_bans`. When `observing` (the XDP source), the program's per-interface counters
/// are the interfaces' packet and drop metrics, each read from the counter slot its
/// interface holds now (interfaces come, go and take freed slots while it runs).
pub fn run(
    mut ring: Ring,
    stop: &AtomicBool,
    metrics: &Metrics,
    observing: bool,
    send_batch: impl Fn(Vec<Observation>) -> bool,
    send_bans: impl Fn(KernelBans) -> bool,
) {
    let mut events = Vec::new();
    // Fragments and long header chains come up raw; the boot clock of their records is
    // the reassembly's clock (monotonic, as the kernel's own reassembly timer).
    let mut defrag = Reassembler::new(ReassemblyLimits::default());
    let reassembly_slot = metrics.interfaces.len();
    let mut next_counters = crate::clock::monotonic();
    // SYNs handed up raw that the program's table of last sightings judged
    // retransmissions (the program counts its own).
    let mut raw_same = 0u64;
    let mut malformed = KernelMalformed::default();
    while !stop.load(Ordering::Relaxed) {
        events.clear();
        match ring.wait(Duration::from_millis(200), &mut events) {
            Ok(0) => {}
            Ok(bad) => {
                metrics.decode_errors[synwatch_decode::DecodeError::TruncatedIp.index()]
                    .fetch_add(bad, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!("cannot read the XDP ring buffer: {e}");
                break;
            }
        }
        if !events.is_empty() {
            let clock = BootToUnix::now();
            let mut batch: Vec<Observation> = Vec::with_capacity(events.len());
            let mut banned: Vec<(IpNet, IpAddr)> = Vec::new();
            for record in &events {
                match record {
                    Record::Probe(e) => {
                        batch.push(Observation {
                            foreign: came_in_link_local(e.src),
                            ts: clock.unix(e.ts_boot),
                            src: e.src,
                            dst: e.dst,
                            sport: e.sport,
                            dport: e.dport,
                            flags: TcpFlags(e.flags),
                        });
                        if e.banned() {
                            banned.push((e.banned_net(), e.src));
                        }
                    }
                    Record::Raw(p) => {
                        let raw = (&mut defrag, &mut ring, &clock);
                        if let Err(kind) = take_raw(raw, p, &mut batch, &mut raw_same) {
                            metrics.decode_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            let trickle = events.len() < TRICKLE;
            if !send_batch(batch) || (!banned.is_empty() && !send_bans(KernelBans(banned))) {
                break;
            }
            if trickle {
                std::thread::sleep(COALESCE);
            }
        }
        let t = crate::clock::monotonic();
        if t >= next_counters {
            next_counters = t + COUNTERS_EVERY;
            record(&ring, metrics, observing, raw_same, &mut malformed);
            defrag.expire(boot_now());
            metrics.record_reassembly(reassembly_slot, defrag.stats());
        }
    }
    record(&ring, metrics, observing, raw_same, &mut malformed);
}

/// The program's malformed-packet counters ([`Counter::MALFORMED`], by the kind decode()
/// gives each, as libpcap's path counts them) as last added to the metrics' decode
/// errors (which user space's own decoding adds to as well): over every interface slot,
/// those of interfaces attached since the start too.
#[derive(Debug, Default)]
struct KernelMalformed {
    added: [u64; Counter::MALFORMED.len()],
}

impl KernelMalformed {
    fn record(&mut self, ring: &Ring, metrics: &Metrics) {
        for (&(counter, name), added) in Counter::MALFORMED.iter().zip(&mut self.added) {
            let Some(kind) = DecodeError::ALL.iter().find(|k| k.as_str() == name) else {
                continue;
            };
            let now = ring.total(counter);
            if now > *added {
                metrics.decode_errors[kind.index()].fetch_add(now - *added, Ordering::Relaxed);
                *added = now;
            }
        }
    }
}

fn record(
    ring: &Ring,
    metrics: &Metrics,
    observing: bool,
    raw_same: u64,
    malformed: &mut KernelMalformed,
) {
    metrics
        .xdp_kernel_bans
        .store(ring.total(Counter::KernelBans), Ordering::Relaxed);
    metrics.xdp_retransmissions.store(
        ring.total(Counter::Retransmissions) + raw_same,
        Ordering::Relaxed,
    );
    if observing {
        for (iface, counts) in ring.interfaces() {
            metrics.store_interface(&iface, counts.packets, counts.ringbuf_full);
        }
        // Beside libpcap (blocking only) the program's malformed packets are libpcap's
        // too, and counted there.
        malformed.record(ring, metrics);
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use synwatch_detect::{AddrSet, Config, Detector};

    /// Whether the program counts `addr` per address: `peraddr6` (an LPM trie of
    /// [`per_address`] and ::ffff:0:0/96) holds it, or the prefix is 128.
    fn kernel_per_address(cfg: &Config, addr: IpAddr) -> bool {
        let IpAddr::V6(a) = addr else { return true };
        let mapped: Ipv6Net = "::ffff:0:0/96".parse().unwrap();
        cfg.ipv6_prefix >= 128
            || mapped.contains(&a)
            || per_address(cfg).iter().any(|n| n.contains(&a))
    }

    #[test]
    fn the_program_counts_per_address_exactly_where_the_detector_does() {
        for prefix in [48u8, 56, 64, 100, 128] {
            let mut cfg = Config {
                ipv6_prefix: prefix,
                ..Config::default()
            };
            // The host's own on-link /64, a local range wider than the prefix, and a
            // neighbour (its router) elsewhere.
            cfg.locals = AddrSet::new();
            for l in ["2001:db8:77:1::10/128", "fd00:aa00::/40", "192.0.2.1/32"] {
                cfg.locals.insert(l.parse().unwrap());
            }
            cfg.neighbours = AddrSet::new();
            cfg.neighbours
                .insert("2001:db8:99:5::fe/128".parse().unwrap());
            // An allowlisted monitor (its neighbours count per address), an allowlisted
            // network as wide as any prefix (counted as configured).
            cfg.allow = AddrSet::new();
            for a in ["2001:db8:7::7/128", "2001:db8:aa00::/40"] {
                cfg.allow.insert(a.parse().unwrap());
            }
            let detector = Detector::new(cfg.clone());
            for addr in [
                "2001:db8:77:1::10",
                "2001:db8:77:1:dead::1",
                "2001:db8:77:2::1",
                "2001:db8:77:100::1",
                "fd00:aa00:1:2::3",
                "fd00:ab00::3",
                "2001:db8:99:5::1",
                "2001:db8:99:6::1",
                "2001:db8:98::1",
                "::ffff:192.0.2.9",
                "3fff::1",
                "2001:db8:7::8",
                "2001:db8:7:1::8",
                "2001:db8:aa00:1::1",
                "64:ff9b::102:304",
                "64:ff9b::1:0:0:1",
                "64:ff9b:1:2::1",
                "64:ff9b:2::1",
                "fe80::1",
                "fe80::2:3",
                "febf:1::1",
                "fec0::1",
                "192.0.2.9",
            ] {
                let addr: IpAddr = addr.parse().unwrap();
                let (_, prefix) = detector.source_of(addr);
                assert_eq!(
                    kernel_per_address(&cfg, addr),
                    prefix.is_none(),
                    "{addr} with --ipv6-prefix {prefix:?}"
                );
                if let Some(IpNet::V6(net)) = prefix {
                    assert_eq!(net.prefix_len(), cfg.ipv6_prefix);
                }
            }
            // The allowlisted monitor's neighbours and NAT64's addresses (IPv4 hosts)
            // are never lumped together, in the kernel either.
            for addr in ["2001:db8:7::8", "64:ff9b::102:304", "64:ff9b:1:2::1"] {
                assert!(
                    kernel_per_address(&cfg, addr.parse().unwrap()),
                    "{addr} with --ipv6-prefix {prefix}"
                );
            }
        }
    }
}
