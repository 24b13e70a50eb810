//! `synwatch blocks list|add|remove|flush`: the ban list, through the running agent's
//! control socket when one runs, or straight on the saved state and the kernel when none
//! does (the agent library's [`synwatch_agent::offline`]); the bans printed as a table or
//! JSON lines.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::control::{self, BanView, Request};
use crate::output::{Format, rfc3339};

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
        /// How long, in whole seconds rounded up (0: until removed) [default: the agent's
        /// --ban, 1h without an agent]
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
                    Ok(n) => Some(crate::config::ban_secs(n)),
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
        None => {
            // No agent answers at this state directory; one that runs in this network
            // namespace anyway owns the kernel's bans: editing them (or another saved
            // list) behind it would leave bans it can neither see nor lift.
            if let Some(holder) = synwatch_agent::owner::holder_if_any() {
                eprintln!(
                    "synwatch: an agent runs in this network namespace ({holder}), but its control socket does not answer at state directory {}: give blocks the agent's --state-dir (or SYNWATCH_STATE_DIR); if that is it, the agent could not make its socket yet (a full file system: see its log)",
                    args.state_dir.display()
                );
                return Ok(crate::ExitStatus::BadInput);
            }
            synwatch_agent::offline::answer(&args.state_dir, &request)?
        }
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
    // A list of a damaged state file shows what could be read (the note says what
    // could not), and exits 2 as a capture cut short does; a change made is made.
    if reply.damaged && matches!(args.action, Action::List) {
        return Ok(crate::ExitStatus::BadInput);
    }
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

/// Text from the state file (a reason, an origin) as one cell of a row for a
/// terminal: control characters (a newline that would forge a row, an escape sequence
/// that would rewrite the screen) shown escaped, as Rust's `escape_debug` writes them.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn table(bans: &[BanView]) -> String {
    let rows: Vec<[String; 7]> = bans
        .iter()
        .map(|b| {
            let count = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            [
                synwatch_enforce::net_text(b.addr),
                printable(&b.reason),
                when(b.since),
                b.expires.map_or("never".into(), when),
                match b.in_kernel {
                    Some(false) => "not in kernel".into(),
                    _ => count(b.packets),
                },
                count(b.bytes),
                printable(&b.origin),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile state file's reason cannot forge a row or send the terminal an escape
    /// sequence: every ban is one line, its control characters shown escaped.
    #[test]
    fn a_reason_with_control_characters_stays_on_its_row() {
        let ban = BanView {
            addr: "192.0.2.7/32".parse().expect("net"),
            reason: "evil\nsynwatch: FAKE LOG LINE \u{1b}[2J".into(),
            origin: "manual\r".into(),
            since: 1_700_000_000,
            expires: None,
            offences: 1,
            in_kernel: Some(true),
            packets: Some(3),
            bytes: Some(180),
        };
        let text = table(&[ban]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            text.contains(r"evil\nsynwatch: FAKE LOG LINE \u{1b}[2J"),
            "{text}"
        );
    }
}
