//! Inventory: what talks to this host, folded into flows for writing firewall policy
//! (the folding itself is [`synwatch_detect::inventory`]). The flows come from capture
//! files ([`files`]) or live capture ([`open`], then [`live`]), each packet through the
//! packet-to-segment step replay uses too ([`crate::packets`]); [`write_tree`] and
//! [`nft_draft`] make files of them. Printing them is the binary's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use synwatch_capture::live::{Filter, LiveCapture, LiveError, LiveOptions};
use synwatch_decode::{Decoded, Segment};
use synwatch_detect::Nanos;
use synwatch_detect::inventory::{
    Class, Endpoint, FlowKey, FlowStats, Inventory, InventoryConfig, Proto,
};

use crate::packets::{NotDecoded, Segments, each_packet, time_order};
use crate::timefmt::rfc3339;

/// What the packets of one inventory amounted to, beyond the flows.
#[derive(Debug, Default)]
pub struct Read {
    pub packets: u64,
    pub undecodable: u64,
    /// Some capture file could not be read, or not to its end, or held packets of a link
    /// type that cannot be decoded.
    pub bad_input: bool,
    /// A live capture failed before the end (its interface went away): the flows cover
    /// only the traffic before.
    pub lost: bool,
    /// What was read, for the summary: the files, or the interfaces.
    pub what: String,
}

/// Counts one captured packet; returns its link type if that is one that cannot be
/// decoded.
fn feed(
    inventory: &mut Inventory,
    read: &mut Read,
    segments: &mut Segments,
    (linktype, ts, data, wire_len): (u32, Nanos, &[u8], u32),
) -> Option<u32> {
    read.packets += 1;
    match segments.decode(linktype, data, ts, wire_len) {
        Ok(Decoded::Segment(seg)) => {
            for seg in segments.with_extra(seg) {
                inventory.observe(ts, &seg);
            }
        }
        Ok(Decoded::Skipped(_)) => {}
        Err(NotDecoded::Link(linktype)) => {
            read.undecodable += 1;
            return Some(linktype);
        }
        Err(NotDecoded::Bad(_)) => read.undecodable += 1,
    }
    None
}

/// The inventory of capture files, read as one stream of time. A file that cannot be
/// read, or holds packets of a link type that cannot be decoded, is reported in one line
/// (as `replay` reports it) and the others still count. Fragments are reassembled as in
/// `replay`: a flow whose packets all came in fragments is a flow the host saw. A
/// fragmented datagram is one packet of its flow, counted once its transport header is
/// whole, with the bytes of the fragments up to there (the rest is not added).
pub fn files(paths: &[PathBuf], cfg: InventoryConfig) -> (Inventory, Read) {
    let mut inventory = Inventory::new(cfg);
    let mut read = Read {
        what: format!("{} capture file(s)", paths.len()),
        ..Read::default()
    };
    let mut segments = Segments::reassembling();
    let mut warned = false;
    for path in time_order(paths) {
        let mut unsupported = crate::replay::UnsupportedLinks::default();
        let each = each_packet(path, &mut (), |p| {
            let packet = (p.linktype, p.ts_nanos, p.data, p.orig_len);
            if let Some(link) = feed(&mut inventory, &mut read, &mut segments, packet) {
                unsupported.note(link);
            }
            warned = warn_cap(&inventory, warned);
            ControlFlow::<()>::Continue(())
        });
        if let Err(msg) = each {
            tracing::error!("{msg}");
            read.bad_input = true;
        }
        if let Some(line) = unsupported.message(path) {
            tracing::error!("{line}");
            read.bad_input = true;
        }
    }
    (inventory, read)
}

/// Says once, when it happens, that the key cap was reached.
fn warn_cap(inventory: &Inventory, warned: bool) -> bool {
    if warned {
        return true;
    }
    match inventory.overflow().since {
        Some(ts) => {
            tracing::warn!(
                "warning: --max-keys {} reached at {}: traffic of further flows is counted in the summary only",
                inventory.config().max_keys,
                rfc3339(ts)
            );
            true
        }
        None => false,
    }
}

type Batch = Vec<(Nanos, Segment)>;

/// Opens live capture on `ifaces` for an inventory, then gives up every privilege (the
/// handles are open: nothing after this needs one). The inner error is a usage error (a
/// missing privilege), one line.
pub fn open(ifaces: &[String]) -> Result<std::result::Result<Vec<LiveCapture>, String>> {
    let opts = LiveOptions {
        filter: Filter::Inventory,
        // Every packet passes: keep only the headers the flow summary reads.
        snaplen: 256,
        ..LiveOptions::default()
    };
    let captures = match crate::agent::open_all(ifaces, &opts) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    crate::agent::drop_all_capabilities();
    Ok(Ok(captures))
}

/// The inventory of live traffic on `captures` (of `ifaces`) until `duration` passes or
/// `stop` is set.
pub fn live(
    captures: Vec<LiveCapture>,
    ifaces: &[String],
    cfg: InventoryConfig,
    duration: Option<Duration>,
    stop: &Arc<AtomicBool>,
) -> Result<(Inventory, Read)> {
    tracing::info!(
        "inventory of {} {}; Ctrl-C prints the flows",
        ifaces.join(", "),
        duration.map_or("until stopped".to_owned(), |d| format!(
            "for {} s",
            d.as_secs_f64()
        )),
    );
    let (tx, rx) = mpsc::channel::<(Batch, u64, u64)>();
    let lost = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for cap in captures {
        workers.push(spawn_capture(
            cap,
            Arc::clone(stop),
            Arc::clone(&lost),
            tx.clone(),
        )?);
    }
    drop(tx);
    let started = crate::clock::monotonic();
    let mut inventory = Inventory::new(cfg);
    let mut read = Read {
        what: format!("live traffic on {}", ifaces.join(", ")),
        ..Read::default()
    };
    let mut warned = false;
    loop {
        if duration.is_some_and(|d| started.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((batch, packets, undecodable)) => {
                read.packets += packets;
                read.undecodable += undecodable;
                for (ts, seg) in &batch {
                    inventory.observe(*ts, seg);
                }
                warned = warn_cap(&inventory, warned);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for handle in workers {
        let _ = handle.join();
    }
    read.lost = lost.load(Ordering::Relaxed);
    Ok((inventory, read))
}

/// The thread that reads one interface's packets until `stop`, handing their segments
/// over in batches with the counts of packets read and not decoded; a capture that fails
/// sets `lost`.
fn spawn_capture(
    mut cap: LiveCapture,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    tx: mpsc::Sender<(Batch, u64, u64)>,
) -> Result<thread::JoinHandle<()>> {
    let name = cap.iface().to_owned();
    thread::Builder::new()
        .name(format!("inventory-{name}"))
        .spawn(move || {
            let linktype = cap.linktype();
            let mut segments = Segments::per_packet();
            let mut batch = Batch::new();
            let (mut packets, mut undecodable) = (0u64, 0u64);
            // A handle on an interface that was deleted (and perhaps made again under its
            // name) reads nothing more, often without an error: checked like the agent's.
            let index = crate::links::ifindex(&name);
            let mut next_check = crate::clock::monotonic() + crate::links::CHECK_EVERY;
            while !stop.load(Ordering::Relaxed) {
                let now = crate::clock::monotonic();
                if now >= next_check {
                    next_check = now + crate::links::CHECK_EVERY;
                    if crate::links::ifindex(&name) != index {
                        tracing::error!(
                            "capture on {name} lost: the interface went away or was made again"
                        );
                        lost.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                let got = match cap.next_packet() {
                    Ok(Some(p)) => {
                        packets += 1;
                        match segments.decode(linktype, p.data, p.ts_nanos, p.orig_len) {
                            Ok(Decoded::Segment(seg)) => batch.push((p.ts_nanos, seg)),
                            Ok(Decoded::Skipped(_)) => {}
                            Err(_) => undecodable += 1,
                        }
                        true
                    }
                    Ok(None) => false,
                    Err(e) => {
                        tracing::error!("{e}");
                        lost.store(true, Ordering::Relaxed);
                        break;
                    }
                };
                if !got || batch.len() >= 256 {
                    let sent = tx.send((std::mem::take(&mut batch), packets, undecodable));
                    (packets, undecodable) = (0, 0);
                    if sent.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((batch, packets, undecodable));
        })
        .context("cannot start a capture thread")
}

/// The one line on stderr that says what the inventory read.
pub fn summary(inventory: &Inventory, read: &Read, flows: usize) -> String {
    let s = inventory.stats();
    let mut text = format!(
        "synwatch: inventory of {}: {} packets ({} tcp, {} udp, {} undecodable) in {} flows",
        read.what, read.packets, s.tcp_packets, s.udp_packets, read.undecodable, flows
    );
    if s.else_skipped > 0 {
        let _ = write!(
            text,
            "; {} packets between other hosts left out (--no-else)",
            s.else_skipped
        );
    }
    if read.lost {
        text.push_str("; a capture failed before the end (above): these flows are incomplete");
    }
    let o = inventory.overflow();
    if o.since.is_some() {
        let _ = write!(
            text,
            "; --max-keys {} reached: {} connections, {} packets, {} bytes of further flows not listed",
            inventory.config().max_keys,
            o.connections,
            o.packets,
            o.bytes
        );
    }
    text
}

/// The file name of a flow in the tree: `SRC-SPORT-DST-DPORT`.
fn tree_name(k: &FlowKey) -> String {
    format!(
        "{}-{}-{}-{}",
        k.client, k.client_port, k.server, k.server_port
    )
}

/// Writes `DIR/{in,out,else}/{tcp,udp}/SRC-SPORT-DST-DPORT`, each file holding the
/// flow's counts (a file of an earlier run with the same name is replaced).
pub fn write_tree(dir: &Path, flows: &[(FlowKey, FlowStats)], with_else: bool) -> io::Result<()> {
    for class in [Class::In, Class::Out, Class::Else] {
        if class == Class::Else && !with_else {
            continue;
        }
        for proto in [Proto::Tcp, Proto::Udp] {
            std::fs::create_dir_all(dir.join(class.as_str()).join(proto.as_str()))?;
        }
    }
    for (k, s) in flows {
        let path = dir
            .join(k.class.as_str())
            .join(k.proto.as_str())
            .join(tree_name(k));
        let text = format!(
            "connections {}\nanswered {}\npackets {}\nbytes {}\nfirst_seen {}\nlast_seen {}\n",
            s.connections,
            s.answered,
            s.packets,
            s.bytes,
            rfc3339(s.first),
            rfc3339(s.last)
        );
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// The address match of an nftables rule (`ip saddr 10.0.0.7 `), empty for INTERNET.
fn nft_addr(direction: &str, e: Endpoint) -> String {
    match e {
        Endpoint::Internet => String::new(),
        Endpoint::Addr(IpAddr::V4(a)) => format!("ip {direction} {a} "),
        Endpoint::Addr(IpAddr::V6(a)) => format!("ip6 {direction} {a} "),
    }
}

/// An nftables ruleset accepting exactly the observed inbound services and outbound
/// destinations, for a default-deny policy. TCP flows the server never answered (closed
/// ports, scans) are left out; UDP cannot tell and is kept. Flows between other hosts
/// belong to a forward policy and are only counted in a comment.
pub fn nft_draft(flows: &[(FlowKey, FlowStats)], cfg: &InventoryConfig) -> String {
    // rule -> connections, per chain; any-address rules first make narrower ones moot.
    let mut input: BTreeMap<(Proto, u16, String), u64> = BTreeMap::new();
    let mut output: BTreeMap<(Proto, u16, String), u64> = BTreeMap::new();
    let (mut unanswered, mut others) = (0usize, 0usize);
    let (mut first, mut last) = (Nanos::MAX, Nanos::MIN);
    for (k, s) in flows {
        first = first.min(s.first);
        last = last.max(s.last);
        if k.proto == Proto::Tcp && s.answered == 0 {
            unanswered += 1;
            continue;
        }
        let (chain, addr) = match k.class {
            Class::In => (&mut input, nft_addr("saddr", k.client)),
            Class::Out => (&mut output, nft_addr("daddr", k.server)),
            Class::Else => {
                others += 1;
                continue;
            }
        };
        *chain.entry((k.proto, k.server_port, addr)).or_default() += s.connections;
    }
    let rules = |chain: &BTreeMap<(Proto, u16, String), u64>, side: &str| {
        let open: BTreeSet<(Proto, u16)> = chain
            .keys()
            .filter(|(_, _, a)| a.is_empty())
            .map(|(p, port, _)| (*p, *port))
            .collect();
        let mut text = String::new();
        for ((proto, port, addr), conns) in chain {
            if !addr.is_empty() && open.contains(&(*proto, *port)) {
                continue;
            }
            let whom = if addr.is_empty() { side } else { "" };
            let _ = writeln!(
                text,
                "\t\t{addr}{} dport {port} accept comment \"{conns} connections{whom}\"",
                proto.as_str()
            );
        }
        text
    };
    let span = if first <= last {
        format!("{} to {}", rfc3339(first), rfc3339(last))
    } else {
        "nothing".to_owned()
    };
    let locals: Vec<String> = cfg.locals.iter().map(|n| n.to_string()).collect();
    let mut text = String::new();
    let _ = write!(
        text,
        "#!/usr/sbin/nft -f
# Drafted by `synwatch inventory` from traffic seen {span}
# (this host: {}).
# It accepts the inbound services and outbound destinations that were seen, and drops
# everything else. Review it before loading: anything that did not happen while the
# inventory ran (backups, updates, monitoring) is missing. Left out: {unanswered} TCP flows
# that were never answered (closed ports, scans) and {others} flows between other hosts
# (a matter for the forward chain).
# Check: nft -c -f FILE. Load: nft -f FILE. Remove: nft delete table inet synwatch_draft

table inet synwatch_draft
delete table inet synwatch_draft
table inet synwatch_draft {{
\tchain input {{
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
\t\tiifname \"lo\" accept
\t\tmeta l4proto {{ icmp, ipv6-icmp }} accept
{}\t}}

\tchain output {{
\t\ttype filter hook output priority filter; policy drop;
\t\tct state established,related accept
\t\toifname \"lo\" accept
\t\tmeta l4proto {{ icmp, ipv6-icmp }} accept
{}\t}}
}}
",
        if locals.is_empty() {
            "no local addresses given".to_owned()
        } else {
            locals.join(", ")
        },
        rules(&input, " from anywhere"),
        rules(&output, " to anywhere"),
    );
    text
}
