//! What the agent says when it starts watching.

use std::net::IpAddr;

use synwatch_enforce::{Backend, Scope};

use super::{Block, Settings, duration_text};
use crate::block::{BlockSettings, Blocker};
use crate::host::Host;

/// Says what is watched, how scans are judged and blocked, what is never blocked, and
/// where events and metrics go. `run` are the settings as shown (the metrics address
/// the kernel picked).
pub(super) fn say(
    watching: &str,
    detector: &synwatch_detect::Config,
    run: &Settings,
    blocker: Option<&Blocker>,
    host: &Host,
    infra: &str,
    events: &str,
) {
    let locals: Vec<IpAddr> = host.addresses.iter().copied().collect();
    let blocking = match blocker {
        Some(b) => blocking_text(b, &run.blocking),
        None if run.block == Block::None => {
            "none (--block none: detect and report only).".to_owned()
        }
        None => "none (see the warning above): detecting and reporting only.".to_owned(),
    };
    banner(watching, detector, run, &blocking, &locals, infra, events);
}

fn banner(
    watching: &str,
    d: &synwatch_detect::Config,
    run: &Settings,
    blocking: &str,
    locals: &[IpAddr],
    infra: &str,
    events: &str,
) {
    let window = d.window as f64 / 1e9;
    let sweeps = if d.sweeps {
        format!(
            "A source whose unanswered attempts reach more than {} hosts on one port is reported as an address sweep.",
            d.max_hosts
        )
    } else if run.source == super::Source::Sockets {
        "Address sweeps are not looked for: the socket table does not show unanswered attempts."
            .to_owned()
    } else {
        "Address sweeps are not looked for: the XDP program sees what arrives, not the host's answers (--source pcap looks for them).".to_owned()
    };
    let shown: Vec<String> = locals.iter().take(8).map(IpAddr::to_string).collect();
    let more = locals.len().saturating_sub(shown.len());
    tracing::info!(
        "watching {watching} for new TCP connection attempts (IPv4 and IPv6).\n\
         \x20 A source reaching more than {} distinct ports within {window} s is reported as a port scan. {sweeps}\n\
         \x20 Blocking: {blocking}\n\
         \x20 This host's addresses (outgoing; never blocked): {}{}\n\
         \x20 Its gateways, routers, resolvers and CrowdSec LAPI (never blocked, kept current): {infra}\n\
         \x20 Events: {} on stdout. Metrics: http://{}/metrics (health: /healthz). Stop with Ctrl-C.",
        d.max_ports,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        events,
        run.metrics_addr,
    );
}

/// The blocking line of the banner.
fn blocking_text(blocker: &Blocker, b: &BlockSettings) -> String {
    let p = &b.policy;
    let length = if p.duration_secs == 0 {
        "until removed".to_owned()
    } else {
        format!(
            "for {}, doubling for repeat offenders up to {}",
            duration_text(p.duration_secs),
            duration_text(p.max_secs.max(p.duration_secs))
        )
    };
    let rules = match blocker.backend() {
        Backend::Nftables => "table inet synwatch, input and forward hooks",
        Backend::Iptables => {
            "chain SYNWATCH with ipsets synwatch4/synwatch6, from INPUT, FORWARD and DOCKER-USER"
        }
        Backend::Xdp => "ban maps of the XDP program, dropped before the network stack",
        Backend::XdpNftables => {
            "ban maps of the XDP program, and table inet synwatch for what XDP does not see"
        }
    };
    let cap = if p.per_minute == 0 {
        "no cap on new bans".to_owned()
    } else {
        format!("at most {} new bans a minute", p.per_minute)
    };
    format!(
        "{}{} ({rules}). Scanners are banned {length}; {cap}; {}. {} ban{} restored from {}.",
        if blocker.dry_run() {
            "DRY RUN (--dry-run: every ban decided and reported, none applied to the kernel) as "
        } else {
            ""
        },
        blocker.backend(),
        match b.scope {
            Scope::All => "a ban drops all their traffic",
            Scope::New => "a ban drops only their new connections",
        },
        blocker.active(),
        if blocker.active() == 1 { "" } else { "s" },
        b.store_dir().display(),
    )
}
