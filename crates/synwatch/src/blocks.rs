//! `synwatch blocks list|add|remove|flush`: the ban list, through the running agent's
//! control socket when one runs, or straight on the saved state and the kernel when none
//! does (after a stop with `--keep-rules-on-exit`, the rules are still there to change;
//! otherwise the change waits in the state for the next start).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use anyhow::{Context, Result};
use synwatch_enforce::bans::{Book, Policy};
use synwatch_enforce::{Backend, Enforcer, Scope, SystemRunner};

use crate::block::view;
use crate::control::{self, BanView, Reply, Request};
use crate::host::{Host, Infrastructure};
use crate::output::{Format, rfc3339};
use crate::state::{DB_FILE, Store};

#[derive(Debug, Clone, clap::Args)]
pub struct BlocksArgs {
    #[command(subcommand)]
    pub action: Action,

    /// The agent's state directory (as given to `synwatch run`)
    #[arg(
        long,
        global = true,
        env = "SYNWATCH_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/synwatch"
    )]
    pub state_dir: PathBuf,

    /// Output format [default: table on a terminal, json otherwise]
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Show every ban: address or range, reason (ports seen), since, expires, packets
    /// dropped, origin (synwatch, manual, or a CrowdSec origin: crowdsec/SCENARIO, cscli)
    List,
    /// Ban an address or a CIDR range (198.51.100.0/24, 2001:db8:1::/48) now
    Add {
        #[arg(value_name = "ADDR|CIDR", value_parser = parse_net)]
        addr: IpNet,
        /// How long (0: until removed) [default: the agent's --ban, 1h without an agent]
        #[arg(long = "for", value_name = "DUR")]
        duration: Option<String>,
    },
    /// Lift a ban now, named as it was given (and forget its earlier offences)
    Remove {
        #[arg(value_name = "ADDR|CIDR", value_parser = parse_net)]
        addr: IpNet,
    },
    /// Lift every ban
    Flush,
}

/// An address or a CIDR range, canonical.
fn parse_net(text: &str) -> std::result::Result<IpNet, String> {
    synwatch_enforce::parse_net(text).ok_or_else(|| {
        format!("'{text}' is neither an address nor a CIDR range (like 198.51.100.0/24)")
    })
}

pub fn run(args: &BlocksArgs) -> Result<crate::ExitStatus> {
    let request = match &args.action {
        Action::List => Request::List,
        Action::Add { addr, duration } => {
            let secs = match duration {
                None => None,
                Some(text) => match crate::config::parse_duration(text) {
                    Ok(n) => Some(u64::try_from(n / 1_000_000_000).unwrap_or(0)),
                    Err(why) => {
                        eprintln!("synwatch: invalid --for '{text}': {why}");
                        return Ok(crate::ExitStatus::BadInput);
                    }
                },
            };
            Request::Add { addr: *addr, secs }
        }
        Action::Remove { addr } => Request::Remove { addr: *addr },
        Action::Flush => Request::Flush,
    };
    let reply = match control::call(&args.state_dir, &request)? {
        Some(reply) => reply,
        None => offline(&args.state_dir, &request)?,
    };
    let format = args.format.unwrap_or_else(crate::default_format);
    if let Some(note) = &reply.note {
        eprintln!("synwatch: {note}");
    }
    if !reply.ok {
        eprintln!(
            "synwatch: {}",
            reply.error.as_deref().unwrap_or("the request failed")
        );
        return Ok(crate::ExitStatus::Failed);
    }
    let mut out = std::io::stdout().lock();
    let text = match (&args.action, format) {
        (_, Format::Json) => reply
            .bans
            .iter()
            .map(|b| json_line(b, &reply.backend))
            .collect::<Vec<_>>()
            .concat(),
        (Action::List, Format::Table) => table(&reply.bans),
        (Action::Add { .. }, Format::Table) => reply
            .bans
            .iter()
            .map(|b| {
                format!(
                    "blocked {} {}\n",
                    synwatch_enforce::net_text(b.addr),
                    until(b.expires)
                )
            })
            .collect(),
        (Action::Remove { addr }, Format::Table) => {
            format!("unblocked {}\n", synwatch_enforce::net_text(*addr))
        }
        (Action::Flush, Format::Table) => format!(
            "unblocked {} address{}\n",
            reply.bans.len(),
            if reply.bans.len() == 1 { "" } else { "es" }
        ),
    };
    out.write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(crate::ExitStatus::Success)
}

fn until(expires: Option<i64>) -> String {
    expires.map_or("until removed".into(), |e| format!("until {}", when(e)))
}

/// Unix seconds as RFC 3339 to the second.
fn when(secs: i64) -> String {
    rfc3339(secs.saturating_mul(1_000_000_000)).replace(".000000Z", "Z")
}

fn json_line(b: &BanView, backend: &str) -> String {
    let value = serde_json::json!({
        "addr": synwatch_enforce::net_text(b.addr),
        "reason": b.reason,
        "origin": b.origin,
        "since": when(b.since),
        "expires": b.expires.map(when),
        "offences": b.offences,
        "backend": backend,
        "in_kernel": b.in_kernel,
        "packets": b.packets,
        "bytes": b.bytes,
    });
    format!("{value}\n")
}

fn table(bans: &[BanView]) -> String {
    let rows: Vec<[String; 7]> = bans
        .iter()
        .map(|b| {
            let count = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            [
                synwatch_enforce::net_text(b.addr),
                b.reason.clone(),
                when(b.since),
                b.expires.map_or("never".into(), when),
                match b.in_kernel {
                    Some(false) => "not in kernel".into(),
                    _ => count(b.packets),
                },
                count(b.bytes),
                b.origin.clone(),
            ]
        })
        .collect();
    let header = [
        "ADDRESS", "REASON", "SINCE", "EXPIRES", "PACKETS", "BYTES", "ORIGIN",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if bans.is_empty() {
        out.push_str("(no bans)\n");
    }
    out
}

/// The firewall rules a stopped agent left (with `--keep-rules-on-exit`), if any.
fn kernel_backend() -> Option<Box<dyn Enforcer>> {
    [Backend::Nftables, Backend::Iptables]
        .into_iter()
        .filter_map(|b| synwatch_enforce::open(b, Scope::All, Box::new(SystemRunner::default())))
        .find_map(|mut e| e.present().then_some(e))
}

/// No agent runs: work on the saved state, and on the kernel if rules are there.
fn offline(state_dir: &Path, request: &Request) -> Result<Reply> {
    let now = crate::clock::now();
    let exists = state_dir.join(DB_FILE).exists();
    if matches!(
        request,
        Request::List | Request::Remove { .. } | Request::Flush
    ) && !exists
    {
        return Ok(match request {
            Request::Remove { addr } => Reply::error(
                "none",
                format!("{} is not blocked", synwatch_enforce::net_text(*addr)),
            ),
            _ => Reply::ok("none"),
        });
    }
    let mut store = Store::open(state_dir)?;
    let mut book = Book::new(Policy::default());
    let lapsed = book.restore(store.bans()?, store.offenders()?, now);
    store.delete(&lapsed.iter().map(|r| r.net).collect::<Vec<_>>(), false)?;
    // Saved bans inside a saved range: the range stands for them.
    let inside: Vec<IpNet> = book.take_absorbed().iter().map(|r| r.net).collect();
    store.delete(&inside, false)?;
    let mut kernel = kernel_backend();
    let backend_kind = kernel.as_ref().map(|k| k.backend());
    let backend = backend_kind.map_or("none", Backend::as_str).to_owned();
    let waiting = "no agent is running and no synwatch rules are in the kernel: the change is saved and takes effect when the agent starts";
    let mut reply = Reply::ok(&backend);
    match request {
        Request::List => {
            let listed = kernel.as_mut().and_then(|k| k.list().ok());
            let mut records: Vec<_> = book.active().collect();
            records.sort_by_key(|r| (r.since, r.net));
            reply.bans = records
                .into_iter()
                .map(|r| view(r, listed.as_deref()))
                .collect();
        }
        Request::Add { addr, secs } => {
            if let Some(b) = backend_kind
                && let Some(why) = b.refuses_ban_of(secs.unwrap_or(0))
            {
                return Ok(Reply::error(&backend, why));
            }
            // No agent runs, so no configuration is known: the host's own addresses,
            // gateways, routers and resolvers are protected all the same.
            let host = Host::read().unwrap_or_default();
            let infra = Infrastructure::read();
            let cfg = synwatch_detect::Config::default();
            let protection = crate::protect::View {
                host: &host.addresses,
                infra: &infra,
                cfg: &cfg,
            };
            if let Some((why, covered)) = crate::protect::why_net(*addr, protection) {
                return Ok(Reply::error(
                    &backend,
                    crate::block::refusal(*addr, why, covered),
                ));
            }
            let record = match book.manual(*addr, *secs, now) {
                Ok(r) => r,
                Err((_, by)) => {
                    return Ok(Reply::error(
                        &backend,
                        format!(
                            "{} is already blocked: it is inside the banned range {}",
                            synwatch_enforce::net_text(*addr),
                            synwatch_enforce::net_text(by.net)
                        ),
                    ));
                }
            };
            // Bans inside a new range are lifted: the range stands for them.
            let absorbed: Vec<IpNet> = book.take_absorbed().iter().map(|r| r.net).collect();
            store.delete(&absorbed, false)?;
            store.save(std::slice::from_ref(&record))?;
            match kernel.as_mut() {
                Some(k) => {
                    k.remove(&absorbed).context(
                        "saved, but the kernel refused to lift the bans inside the range",
                    )?;
                    k.add(&[record.ban(now)])
                        .context("saved, but the kernel refused the ban")?
                }
                None => reply.note = Some(waiting.into()),
            }
            reply.bans = vec![view(&record, None)];
        }
        Request::Remove { addr } => {
            let Some(record) = book.remove(*addr) else {
                let addr = synwatch_enforce::net_text(*addr);
                return Ok(Reply::error(&backend, format!("{addr} is not blocked")));
            };
            store.delete(&[*addr], true)?;
            if let Some(k) = kernel.as_mut() {
                k.remove(&[*addr])
                    .context("removed from the saved bans, but the kernel refused")?;
            }
            reply.bans = vec![view(&record, None)];
        }
        Request::Flush => {
            let records = book.flush();
            let addrs: Vec<IpNet> = records.iter().map(|r| r.net).collect();
            store.delete(&addrs, true)?;
            if let Some(k) = kernel.as_mut() {
                // Also whatever the kernel holds that the state does not.
                let mut all = addrs.clone();
                all.extend(k.list().unwrap_or_default().into_iter().map(|b| b.net));
                k.remove(&all)
                    .context("flushed the saved bans, but the kernel refused")?;
            }
            reply.bans = records.iter().map(|r| view(r, None)).collect();
        }
    }
    Ok(reply)
}
