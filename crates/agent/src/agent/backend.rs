//! The blocking backend `--block` asks for: tried in order of preference where `auto`,
//! opened, and the blocker started on it.

use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use synwatch_enforce::Backend;

use super::{Block, duration_text};
use crate::block::{BlockSettings, Blocker, Happened};
use crate::metrics::Metrics;

/// How to give synwatch CAP_NET_ADMIN, for the message when it lacks it.
const GRANT_NET_ADMIN: &str = "run it as root (sudo synwatch run), or grant the capabilities to the binary (sudo setcap cap_net_raw,cap_net_admin+ep $(command -v synwatch)), or in a container add --cap-add NET_RAW --cap-add NET_ADMIN with --network host; or detect only with --block none";

/// A handle on `backend`'s rules or maps in the kernel (the XDP program's maps from
/// `xdp`): the blocker's, or a second one on the same for the rule check's thread.
pub(super) fn open_kernel(
    backend: Backend,
    scope: synwatch_enforce::Scope,
    xdp: Option<&synwatch_xdp::Xdp>,
) -> anyhow::Result<Box<dyn synwatch_enforce::Enforcer>> {
    let rules = |b| synwatch_enforce::open_system(b, scope);
    let maps = || -> anyhow::Result<Box<dyn synwatch_enforce::Enforcer>> {
        let xdp = xdp.context("the XDP program is not running")?;
        Ok(Box::new(xdp.bans()?))
    };
    Ok(match backend {
        Backend::Xdp => maps()?,
        Backend::XdpNftables => Box::new(synwatch_enforce::Layered::new(
            backend,
            maps()?,
            rules(Backend::Nftables).context("nftables")?,
        )),
        other => rules(other).context("no such backend")?,
    })
}

/// Starts the blocking backend `choice` asks for. `Err` is a usage error (exit 2):
/// a backend named explicitly that cannot work. `auto` falls back to none with a
/// warning saying why.
pub(super) fn start_blocking(
    choice: Block,
    settings: &BlockSettings,
    metrics: &Arc<Metrics>,
    protected: &dyn Fn(IpNet) -> bool,
    xdp: Option<&synwatch_xdp::Xdp>,
) -> Result<Option<(Blocker, Vec<Happened>)>, String> {
    let candidates: &[Backend] = match (choice, xdp.is_some()) {
        (Block::None, _) => return Ok(None),
        (Block::Auto, true) => &[Backend::XdpNftables, Backend::Xdp],
        (Block::Auto, false) => &[Backend::Nftables, Backend::Iptables],
        (Block::Xdp, _) => &[Backend::Xdp],
        (Block::XdpNftables, _) => &[Backend::XdpNftables],
        (Block::Nftables, _) => &[Backend::Nftables],
        (Block::Iptables, _) => &[Backend::Iptables],
    };
    // A dry run stands in for the first choice and needs no privilege.
    // The XDP ban maps are reached through descriptors the agent already holds.
    if settings.dry_run || candidates == [Backend::Xdp] {
        let backend = candidates[0];
        return start_backend(backend, settings, metrics, protected, xdp)
            .map(Some)
            .map_err(|e| format!("{e:#}"));
    }
    let admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_NET_ADMIN,
    )
    .unwrap_or(false);
    if !admin {
        let why =
            format!("blocking needs CAP_NET_ADMIN, which this process lacks: {GRANT_NET_ADMIN}");
        if choice == Block::Auto {
            tracing::warn!("warning: not blocking: {why}");
            metrics.record_degraded(format!("not blocking (--block auto): {why}"));
            return Ok(None);
        }
        return Err(why);
    }
    let mut failures = Vec::new();
    for &backend in candidates {
        match start_backend(backend, settings, metrics, protected, xdp) {
            Ok(started) => return Ok(Some(started)),
            Err(e) => failures.push(format!("{backend}: {e:#}")),
        }
    }
    if choice == Block::Auto {
        let why = format!("no backend works here; {}", failures.join("; "));
        tracing::warn!("warning: not blocking (detecting and reporting only): {why}");
        metrics.record_degraded(format!("not blocking (--block auto): {why}"));
        Ok(None)
    } else {
        Err(failures.join("; "))
    }
}

/// Opens one backend and starts the blocker on it.
fn start_backend(
    backend: Backend,
    settings: &BlockSettings,
    metrics: &Arc<Metrics>,
    protected: &dyn Fn(IpNet) -> bool,
    xdp: Option<&synwatch_xdp::Xdp>,
) -> anyhow::Result<(Blocker, Vec<Happened>)> {
    let policy = settings.policy;
    if let Some(why) = backend.refuses_ban_of(policy.duration_secs.max(policy.max_secs)) {
        anyhow::bail!(
            "invalid --ban {} / --ban-max {}: {why}",
            duration_text(policy.duration_secs),
            duration_text(policy.max_secs)
        );
    }
    let enforcer: Box<dyn synwatch_enforce::Enforcer> = if settings.dry_run {
        Box::new(synwatch_enforce::DryRun { backend })
    } else {
        open_kernel(backend, settings.scope, xdp)?
    };
    Blocker::start(
        enforcer,
        settings,
        Arc::clone(metrics),
        crate::clock::now(),
        protected,
    )
}
