//! `synwatch inventory`: its options, and the flows printed on stdout (table, JSON lines
//! or CSV). What talks to this host, folded into flows for writing firewall policy, is
//! the agent library's [`synwatch_agent::inventory`], from capture files (`--pcap`) or
//! live capture.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use synwatch_agent::inventory::{self, nft_draft, summary, write_tree};
use synwatch_detect::inventory::{DEFAULT_MAX_KEYS, FlowKey, FlowStats, InventoryConfig};

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
        let ifaces = match synwatch_agent::agent::choose_interfaces(&args.iface, "--iface", &host) {
            Ok(i) => i,
            Err(why) => return usage(why),
        };
        cfg.locals = host.locals(&cfg.locals);
        let captures = match inventory::open(&ifaces)? {
            Ok(c) => c,
            Err(why) => return usage(why),
        };
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&stop))
                .context("cannot install the signal handlers")?;
        }
        inventory::live(captures, &ifaces, cfg, duration, &stop)?
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
        inventory::files(&args.pcap, cfg)
    };
    if let Some(status) = nothing_to_print(args, &read) {
        return Ok(status);
    }
    let flows = inventory.flows();
    eprintln!("{}", summary(&inventory, &read, flows.len()));
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
    } else if read.lost {
        crate::ExitStatus::Failed
    } else {
        crate::ExitStatus::Success
    })
}

/// How the inventory ends without printing flows, if it does: nothing could be read at
/// all (the error lines say everything), or a draft was asked for and the input was not
/// read whole (a ruleset that drops by default, drawn from part of the traffic, would
/// drop what the missing part holds: none is written).
fn nothing_to_print(args: &InventoryArgs, read: &inventory::Read) -> Option<crate::ExitStatus> {
    if read.bad_input && read.packets == 0 {
        return Some(crate::ExitStatus::BadInput);
    }
    if args.nft_draft.is_some() && (read.bad_input || read.lost) {
        eprintln!(
            "synwatch: no nftables draft written: the input was not read whole (above), and a \
             draft from part of the traffic would drop what the rest holds"
        );
        return Some(if read.bad_input {
            crate::ExitStatus::BadInput
        } else {
            crate::ExitStatus::Failed
        });
    }
    None
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
