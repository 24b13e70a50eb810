//! The capability bounding set, and what commands that only read files keep.
//!
//! Capabilities are per thread in Linux: these run on the main thread before any other
//! thread is started, so that every thread inherits the reduced sets.
//!
//! Why the bounding set: a child of a process running as root (uid 0) starts with every
//! capability of the bounding set, whatever the parent's own sets say, so an agent started
//! by root that dropped its own capabilities would still hand `nft` and `iptables` all of
//! them. Limited to what the children need, the bounding set is also the most any later
//! program run by the agent can ever get.

use caps::{CapSet, Capability, CapsHashSet};

/// Removes from the bounding set every capability but `children` (what the programs the
/// agent runs need). Needs CAP_SETPCAP, which root has; without it (an ordinary user with
/// file capabilities, whose children get only the ambient set anyway) nothing changes.
pub fn limit_bounding(children: &CapsHashSet) {
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        return;
    }
    let Ok(bounding) = caps::read(None, CapSet::Bounding) else {
        return;
    };
    for cap in bounding.difference(children) {
        if let Err(e) = caps::drop(None, CapSet::Bounding, *cap) {
            tracing::warn!("warning: could not drop {cap} from the bounding set: {e}");
        }
    }
}

/// For commands that only work on files (`replay`, `inventory --pcap`): keeps of `files`
/// (CAP_DAC_READ_SEARCH to read a capture another user owns, CAP_DAC_OVERRIDE to write
/// the inventory's tree into another user's directory) what is held, and drops every
/// other capability from every set, the bounding set included, so that a crafted
/// capture meets a process that can do nothing else.
pub fn keep_only(files: &[Capability]) {
    let keep: CapsHashSet = files
        .iter()
        .copied()
        .filter(|&c| caps::has_cap(None, CapSet::Permitted, c).unwrap_or(false))
        .collect();
    limit_bounding(&CapsHashSet::new());
    let _ = caps::clear(None, CapSet::Ambient);
    for (set, wanted) in [
        (CapSet::Inheritable, &CapsHashSet::new()),
        (CapSet::Effective, &keep),
        (CapSet::Permitted, &keep),
    ] {
        if let Err(e) = caps::set(None, set, wanted) {
            tracing::warn!("warning: could not drop capabilities ({set:?}): {e}");
        }
    }
}

/// Drops every capability of the calling thread (every set, the bounding set included):
/// for threads started before the agent drops its privileges that need none, since the
/// main thread's drop does not reach them.
pub fn drop_all_in_this_thread() {
    limit_bounding(&CapsHashSet::new());
    let _ = caps::clear(None, CapSet::Ambient);
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let _ = caps::clear(None, set);
    }
}
