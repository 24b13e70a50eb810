//! The capabilities the agent holds: whether it may claim the firewall, what the
//! backends' helper programs need, and dropping the rest once set up.

use synwatch_enforce::Backend;

use super::Block;

/// Whether this agent may set up firewall rules (or the XDP program's bans), and so
/// must be their only owner: any `--block` but `none`, where it holds CAP_NET_ADMIN
/// (without it, no rule can be touched: `auto` detects only, the others say why).
pub(super) fn claims_firewall(block: Block) -> bool {
    block != Block::None
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .unwrap_or(false)
}

/// The capabilities the firewall programs synwatch runs need: CAP_NET_ADMIN for every
/// change, and CAP_NET_RAW for iptables, whose set match opens a raw socket to ipset.
pub(super) fn backend_capabilities(backend: Backend) -> caps::CapsHashSet {
    let mut needed = caps::CapsHashSet::new();
    if backend == Backend::Xdp {
        // The ban maps are written through descriptors opened at start.
        return needed;
    }
    needed.insert(caps::Capability::CAP_NET_ADMIN);
    if backend == Backend::Iptables {
        needed.insert(caps::Capability::CAP_NET_RAW);
    }
    needed
}

/// Makes `wanted` capabilities this process holds ambient, so that the `nft`,
/// `iptables` and `ipset` it runs get them too when synwatch runs as an ordinary user
/// (file capabilities, or a container's added capabilities): a child of a non-root
/// process otherwise starts with none.
pub(super) fn share_capabilities(wanted: &caps::CapsHashSet) {
    for &cap in wanted {
        if caps::has_cap(None, caps::CapSet::Permitted, cap).unwrap_or(false) {
            // Fails harmlessly where ambient capabilities do not exist.
            let _ = caps::raise(None, caps::CapSet::Inheritable, cap)
                .and_then(|()| caps::raise(None, caps::CapSet::Ambient, cap));
        }
    }
}

/// Drops every capability (effective, permitted, inheritable, ambient): for commands
/// that have opened their handles and need no privilege after.
pub fn drop_all_capabilities() {
    drop_capabilities(None, false);
}

/// Gives up every capability once the capture handles, the listening sockets and the
/// firewall rules are set up, except what the blocking backend's programs need for
/// later bans and for setting the rules up again (kept ambient for them), and, when
/// `capturing` through libpcap, CAP_NET_RAW for the agent itself (not its children):
/// an interface deleted and created again is opened again (links.rs).
pub(super) fn drop_capabilities(blocking: Option<Backend>, capturing: bool) {
    let keep = blocking.map(backend_capabilities).unwrap_or_default();
    // Started as root, children would otherwise regain the whole bounding set.
    crate::privileges::limit_bounding(&keep);
    let mut own = keep.clone();
    if capturing {
        own.insert(caps::Capability::CAP_NET_RAW);
    }
    for (set, wanted) in [
        (caps::CapSet::Inheritable, &keep),
        (caps::CapSet::Effective, &own),
        (caps::CapSet::Permitted, &own),
    ] {
        if let Err(e) = caps::set(None, set, wanted) {
            tracing::warn!("warning: could not drop capabilities ({set:?}): {e}");
        }
    }
    let _ = caps::clear(None, caps::CapSet::Ambient);
    share_capabilities(&keep);
}
