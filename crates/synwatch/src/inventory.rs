//! `synwatch inventory`: what talks to this host, folded into flows for writing firewall
//! policy. Reads capture files (`--pcap`) or captures live; the folding itself is
//! [`synwatch_detect::inventory`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use synwatch_capture::live::{Filter, LiveError, LiveOptions};
use synwatch_decode::{Decoded, LinkType, Segment, decode};
use synwatch_detect::Nanos;
use synwatch_detect::inventory::{
    Class, DEFAULT_MAX_KEYS, Endpoint, FlowKey, FlowStats, Inventory, InventoryConfig, Proto,
};

use crate::config::{HostBits, parse_set};
use crate::host::Host;
use crate::output::rfc3339;

/// How the flows are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InventoryFormat {
    /// Aligned columns, most connections first
    Table,
    /// One JSON object per flow and line
    Json,
    /// A header line, then one line per flow
    Csv,
}

/// `synwatch inventory` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InventoryArgs {
    /// Read these capture files (pcap or pcapng, optionally gzip-compressed; `-` is stdin)
    /// instead of capturing live
    #[arg(long = "pcap", value_name = "FILE", num_args = 1.., conflicts_with_all = ["iface", "duration"])]
    pub pcap: Vec<PathBuf>,

    /// Interface to capture on (repeatable) [default: every interface that is up]
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Capture live for this long, then print (`30s`, `10m`, `1h`) [default: until Ctrl-C]
    #[arg(long, value_name = "DUR")]
    pub duration: Option<String>,

    /// This host's addresses (repeatable) [default: the interfaces' addresses live, none
    /// for captures]
    #[arg(long, value_name = "ADDR_OR_CIDR", value_delimiter = ',')]
    pub local: Vec<String>,

    /// Ranges whose addresses are kept as they are, not folded to INTERNET (repeatable;
    /// private and link-local ranges always are)
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub internal: Vec<String>,

    /// Keep every address as it is (no INTERNET)
    #[arg(long)]
    pub keep_addresses: bool,

    /// Leave out flows where neither side is local (on a mirror port they can be many)
    #[arg(long)]
    pub no_else: bool,

    /// A UDP port that marks the server side, like the ports below 1024 (repeatable)
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub udp_service_port: Vec<u16>,

    /// How to print the flows [default: table on a terminal, json otherwise]
    #[arg(long, value_enum)]
    pub format: Option<InventoryFormat>,

    /// Also write the flows as files DIR/{in,out,else}/{tcp,udp}/SRC-SPORT-DST-DPORT, each
    /// holding its counts
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,

    /// Write an nftables ruleset that accepts exactly the observed inbound services and
    /// outbound destinations (to FILE, or instead of the flows on stdout)
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub nft_draft: Option<PathBuf>,

    /// Most distinct flows kept; traffic of further flows is counted in the summary only
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_KEYS)]
    pub max_keys: usize,
}

/// Validated inventory options.
fn config(args: &InventoryArgs, warnings: &mut Vec<String>) -> Result<InventoryConfig> {
    if args.max_keys == 0 {
        anyhow::bail!("invalid --max-keys '0': must be at least 1");
    }
    Ok(InventoryConfig {
        locals: parse_set("--local", &args.local, HostBits::Host, warnings)?,
        internal: parse_set("--internal", &args.internal, HostBits::Network, warnings)?,
        keep_addresses: args.keep_addresses,
        keep_else: !args.no_else,
        udp_service_ports: args.udp_service_port.clone(),
        max_keys: args.max_keys,
        ..InventoryConfig::default()
    })
}

/// What the packets of one inventory amounted to, beyond the flows.
#[derive(Debug, Default)]
struct Read {
    packets: u64,
    undecodable: u64,
    bad_input: bool,
    what: String,
}

pub fn run(args: &InventoryArgs) -> Result<crate::ExitStatus> {
    let usage = |why: String| {
        eprintln!("synwatch: {why}");
        Ok(crate::ExitStatus::BadInput)
    };
    let mut warnings = Vec::new();
    let mut cfg = match config(args, &mut warnings) {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    for w in &warnings {
        eprintln!("synwatch: warning: {w}");
    }
    let format = args
        .format
        .unwrap_or_else(|| match crate::default_format() {
            crate::output::Format::Table => InventoryFormat::Table,
            crate::output::Format::Json => InventoryFormat::Json,
        });
    let (inventory, read) = if args.pcap.is_empty() {
        let duration = match args.duration.as_deref().map(crate::config::parse_duration) {
            None => None,
            Some(Ok(n)) if n > 0 => Some(Duration::from_nanos(n.unsigned_abs())),
            Some(Ok(_)) => return usage("invalid --duration: must be longer than zero".into()),
            Some(Err(why)) => return usage(format!("invalid --duration: {why}")),
        };
        let host = Host::read()?;
        let ifaces = match synwatch_agent::agent::choose_interfaces(&args.iface, &host) {
            Ok(i) => i,
            Err(why) => return usage(why),
        };
        cfg.locals = host.locals(&cfg.locals);
        match live(&ifaces, cfg, duration)? {
            Ok(done) => done,
            Err(why) => return usage(why),
        }
    } else {
        if cfg.locals.is_empty() {
            eprintln!(
                "synwatch: warning: no --local addresses: every flow is 'else' (name this host's addresses with --local)"
            );
        }
        // Reading captures and writing the tree need no other privilege.
        crate::privileges::keep_only(&[
            caps::Capability::CAP_DAC_READ_SEARCH,
            caps::Capability::CAP_DAC_OVERRIDE,
        ]);
        files(&args.pcap, cfg)
    };
    let flows = inventory.flows();
    summary(&inventory, &read, flows.len());
    if let Some(dir) = &args.tree {
        write_tree(dir, &flows, inventory.config().keep_else)
            .with_context(|| format!("cannot write the tree under {}", dir.display()))?;
    }
    let mut stdout = io::stdout().lock();
    let printed = match &args.nft_draft {
        Some(path) => {
            let draft = nft_draft(&flows, inventory.config());
            if path.as_os_str() == "-" {
                stdout.write_all(draft.as_bytes())
            } else {
                std::fs::write(path, draft).with_context(|| {
                    format!("cannot write the nftables draft to {}", path.display())
                })?;
                print_flows(&mut stdout, &flows, format)
            }
        }
        None => print_flows(&mut stdout, &flows, format),
    };
    match printed.and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the inventory to stdout")?,
    }
    Ok(if read.bad_input {
        crate::ExitStatus::BadInput
    } else {
        crate::ExitStatus::Success
    })
}

/// The TCP or UDP segment of a captured packet: `Ok(None)` for other traffic, `Err` for a
/// packet that cannot be decoded (an unsupported link type included).
fn segment(link: Option<LinkType>, data: &[u8]) -> Result<Option<Segment>, ()> {
    match link.map(|l| decode(l, data)) {
        Some(Ok(Decoded::Segment(seg))) => Ok(Some(seg)),
        Some(Ok(Decoded::Skipped(_))) => Ok(None),
        _ => Err(()),
    }
}

/// Counts one captured packet.
fn feed(inventory: &mut Inventory, read: &mut Read, linktype: u32, ts: Nanos, data: &[u8]) {
    read.packets += 1;
    match segment(LinkType::from_linktype(linktype), data) {
        Ok(Some(seg)) => inventory.observe(ts, &seg),
        Ok(None) => {}
        Err(()) => read.undecodable += 1,
    }
}

/// The inventory of capture files, read as one stream of time. A file that cannot be
/// read is reported in one line and the others still count.
fn files(paths: &[PathBuf], cfg: InventoryConfig) -> (Inventory, Read) {
    let mut inventory = Inventory::new(cfg);
    let mut read = Read {
        what: format!("{} capture file(s)", paths.len()),
        ..Read::default()
    };
    let mut warned = false;
    for path in synwatch_agent::packets::time_order(paths) {
        let mut reader = match synwatch_agent::packets::open(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "synwatch: {}",
                    synwatch_agent::packets::input_error(path, &e)
                );
                read.bad_input = true;
                continue;
            }
        };
        loop {
            match reader.next_packet() {
                Ok(Some(p)) => feed(&mut inventory, &mut read, p.linktype, p.ts_nanos, p.data),
                Ok(None) => break,
                Err(e) => {
                    eprintln!(
                        "synwatch: {}",
                        synwatch_agent::packets::input_error(path, &e)
                    );
                    read.bad_input = true;
                    break;
                }
            }
            warned = warn_cap(&inventory, warned);
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
            eprintln!(
                "synwatch: warning: --max-keys {} reached at {}: traffic of further flows is counted in the summary only",
                inventory.config().max_keys,
                rfc3339(ts)
            );
            true
        }
        None => false,
    }
}

type Batch = Vec<(Nanos, Segment)>;

/// The inventory of live traffic on `ifaces` until `duration` passes or SIGINT/SIGTERM.
/// The inner error is a usage error (a missing privilege), one line.
fn live(
    ifaces: &[String],
    cfg: InventoryConfig,
    duration: Option<Duration>,
) -> Result<std::result::Result<(Inventory, Read), String>> {
    let opts = LiveOptions {
        filter: Filter::Inventory,
        // Every packet passes: keep only the headers the flow summary reads.
        snaplen: 256,
        ..LiveOptions::default()
    };
    let captures = match synwatch_agent::agent::open_all(ifaces, &opts) {
        Ok(c) => c,
        Err(e @ LiveError::Permission { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    // The handles are open: nothing after this needs a privilege.
    synwatch_agent::agent::drop_all_capabilities();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    eprintln!(
        "synwatch: inventory of {} {}; Ctrl-C prints the flows",
        ifaces.join(", "),
        duration.map_or("until stopped".to_owned(), |d| format!(
            "for {} s",
            d.as_secs_f64()
        )),
    );
    let (tx, rx) = mpsc::channel::<(Batch, u64, u64)>();
    let mut workers = Vec::new();
    for mut cap in captures {
        let (stop, tx) = (Arc::clone(&stop), tx.clone());
        let name = cap.iface().to_owned();
        let handle = thread::Builder::new()
            .name(format!("inventory-{name}"))
            .spawn(move || {
                let link = LinkType::from_linktype(cap.linktype());
                let mut batch = Batch::new();
                let (mut packets, mut undecodable) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let got = match cap.next_packet() {
                        Ok(Some(p)) => {
                            packets += 1;
                            match segment(link, p.data) {
                                Ok(Some(seg)) => batch.push((p.ts_nanos, seg)),
                                Ok(None) => {}
                                Err(()) => undecodable += 1,
                            }
                            true
                        }
                        Ok(None) => false,
                        Err(e) => {
                            eprintln!("synwatch: {e}");
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
            .context("cannot start a capture thread")?;
        workers.push(handle);
    }
    drop(tx);
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is the edge that reads clocks"
    )]
    let started = Instant::now();
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
    Ok(Ok((inventory, read)))
}

fn summary(inventory: &Inventory, read: &Read, flows: usize) {
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
    eprintln!("{text}");
}

/// The columns of a flow, as JSON keys and the CSV header name them.
const COLUMNS: [&str; 12] = [
    "direction",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "connections",
    "answered",
    "packets",
    "bytes",
    "first_seen",
    "last_seen",
];

/// A flow's cells in [`COLUMNS`] order.
fn cells(k: &FlowKey, s: &FlowStats) -> [String; 12] {
    [
        k.class.as_str().to_owned(),
        k.proto.as_str().to_owned(),
        k.client.to_string(),
        k.client_port.to_string(),
        k.server.to_string(),
        k.server_port.to_string(),
        s.connections.to_string(),
        s.answered.to_string(),
        s.packets.to_string(),
        s.bytes.to_string(),
        rfc3339(s.first),
        rfc3339(s.last),
    ]
}

fn print_flows<W: Write>(
    out: &mut W,
    flows: &[(FlowKey, FlowStats)],
    format: InventoryFormat,
) -> io::Result<()> {
    let rows = flows.iter().map(|(k, s)| cells(k, s));
    match format {
        InventoryFormat::Json => {
            // Numbers bare, everything else quoted; no cell holds a character that needs
            // escaping (addresses, INTERNET, PORT, names, timestamps).
            for row in rows {
                let fields: Vec<String> = COLUMNS
                    .iter()
                    .zip(&row)
                    .map(|(key, cell)| {
                        if cell.parse::<u64>().is_ok() {
                            format!("\"{key}\":{cell}")
                        } else {
                            format!("\"{key}\":\"{cell}\"")
                        }
                    })
                    .collect();
                writeln!(out, "{{{}}}", fields.join(","))?;
            }
        }
        InventoryFormat::Csv => {
            writeln!(out, "{}", COLUMNS.join(","))?;
            for row in rows {
                writeln!(out, "{}", row.join(","))?;
            }
        }
        InventoryFormat::Table => {
            let header = [
                "DIR",
                "PROTO",
                "SRC",
                "SPORT",
                "DST",
                "DPORT",
                "CONNS",
                "ANSWERED",
                "PACKETS",
                "BYTES",
                "FIRST SEEN",
                "LAST SEEN",
            ];
            let rows: Vec<[String; 12]> = rows.collect();
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.len());
                }
            }
            let line = |cells: &[&str]| {
                let mut text = String::new();
                for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                    // Counts are right-aligned, text left-aligned.
                    if (6..10).contains(&i) {
                        let _ = write!(text, "{cell:>w$}  ");
                    } else {
                        let _ = write!(text, "{cell:<w$}  ");
                    }
                }
                text.trim_end().to_owned()
            };
            writeln!(out, "{}", line(&header))?;
            for row in &rows {
                let cells: Vec<&str> = row.iter().map(String::as_str).collect();
                writeln!(out, "{}", line(&cells))?;
            }
        }
    }
    Ok(())
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
fn write_tree(dir: &Path, flows: &[(FlowKey, FlowStats)], with_else: bool) -> io::Result<()> {
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
