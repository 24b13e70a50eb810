//! nftables: synwatch's own table `inet synwatch`, one set per address family with
//! per-element timeouts and counters (and one more per family, `banned4_new` and
//! `banned6_new`, for bans on sources that held an established connection: matched with
//! `ct state new`, except TCP segments with ACK and no SYN, so their sessions live on,
//! even one older than connection tracking, which is picked up in mid-stream as new),
//! and the same four again for range bans
//! (`banned4_net`, `banned6_net`, `banned4_net_new`, `banned6_net_new`: interval sets,
//! whose elements are CIDR ranges). Addresses stay in hash sets because nft 1.0.6 makes
//! deleting from an interval set cost a read of the whole set (every renewal deletes:
//! 20,000 address renewals took 115 s in an interval set, 0.3 s in a hash set; see
//! docs/PERFORMANCE.md). The kernel refuses an interval element overlapping another,
//! so the ban book never holds a range inside a range; and a drop rule per set in two base chains, on
//! the input hook (traffic to this host) and the forward hook (traffic routed through it,
//! which is how packets reach containers behind a bridge), at priority `filter - 10` so
//! the drop happens ahead of ordinary filter rules, Docker's included.
//!
//! Each set holds a canary element ([`crate::CANARY4`], [`crate::CANARY6`], addresses
//! that are never a packet's source) from set-up on: with the rules, it is what the check
//! for tampering looks at every few seconds, through [`crate::nflink`] rather than `nft`
//! (which reads every element of every set first), so the check costs microseconds with
//! 100k bans.
//!
//! Address bans go to the kernel over netlink ([`crate::nflink`], one transaction, no
//! process start) when the backend has a look that can; every other operation is one
//! `nft -f -` run, which the kernel applies as one transaction: a
//! batch of ten thousand bans is one run, and setting up replaces a table left by a
//! crashed run and restores the saved bans with no moment in between where they are
//! missing.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use serde_json::Value;

use crate::nflink::{ElementChange, LookError, RuleInfo};
use crate::{
    Backend, Ban, CANARY4, CANARY6, Command, DropCounters, EnforceError, Enforcer, KernelBan,
    Runner, Scope, ban_net, net_text,
};

pub const TABLE: &str = "synwatch";
pub const SET4: &str = "banned4";
pub const SET6: &str = "banned6";
/// Bans that drop only new connections (`Ban::new_only`).
pub const SET4_NEW: &str = "banned4_new";
pub const SET6_NEW: &str = "banned6_new";
/// Range bans (interval sets).
pub const NET4: &str = "banned4_net";
pub const NET6: &str = "banned6_net";
pub const NET4_NEW: &str = "banned4_net_new";
pub const NET6_NEW: &str = "banned6_net_new";
/// Every set: name, element type, whether its rule matches only new connections,
/// whether it holds ranges (an interval set).
const SETS: [(&str, &str, bool, bool); 8] = [
    (SET4, "ipv4_addr", false, false),
    (SET6, "ipv6_addr", false, false),
    (SET4_NEW, "ipv4_addr", true, false),
    (SET6_NEW, "ipv6_addr", true, false),
    (NET4, "ipv4_addr", false, true),
    (NET6, "ipv6_addr", false, true),
    (NET4_NEW, "ipv4_addr", true, true),
    (NET6_NEW, "ipv6_addr", true, true),
];
/// What a ban for new connections only drops: new flows of every protocol but TCP...
const NEW_NOT_TCP: &str = "ct state new meta l4proto != tcp";
/// ...and new TCP flows but those picked up in mid-stream.
const NEW_TCP: &str = "ct state new tcp flags & (syn | ack) != ack";

/// Elements per `add element` statement: keeps each line of the script reasonable.
const CHUNK: usize = 1000;

/// Whether a set's rules match new flows only (two rules, [`NEW_NOT_TCP`] and
/// [`NEW_TCP`]) rather than every packet (one): its bans are on new connections only,
/// or every ban is (`--block-scope new`).
fn new_flows_only(scope: Scope, new_only: bool) -> bool {
    new_only || scope == Scope::New
}

/// The script that (re)creates the table holding exactly `bans`.
pub fn setup_script(scope: Scope, bans: &[Ban]) -> String {
    let mut s = String::new();
    // Creating first makes the delete valid when no table exists yet.
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for (set, ty, _, interval) in SETS {
        let flags = if interval {
            "interval,timeout"
        } else {
            "timeout"
        };
        let _ = writeln!(
            s,
            "\tset {set} {{\n\t\ttype {ty}\n\t\tflags {flags}\n\t\tcounter\n\t}}"
        );
    }
    for (chain, hook) in [("input", "input"), ("forward", "forward")] {
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority filter - 10; policy accept;"
        );
        for (set, ty, new_only, _) in SETS {
            let family = if ty == "ipv4_addr" { "ip" } else { "ip6" };
            if new_flows_only(scope, new_only) {
                // New flows of every protocol but TCP, and TCP's but those conntrack
                // picks up in mid-stream (ACK without SYN: a session older than the
                // tracking, which must live on, not a new connection).
                for matched in [NEW_NOT_TCP, NEW_TCP] {
                    let _ = writeln!(s, "\t\t{family} saddr @{set} {matched} counter drop");
                }
            } else {
                let _ = writeln!(s, "\t\t{family} saddr @{set} counter drop");
            }
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    for (set, ty, ..) in SETS {
        let canary = if ty == "ipv4_addr" {
            IpAddr::V4(CANARY4)
        } else {
            IpAddr::V6(CANARY6)
        };
        let _ = writeln!(s, "add element inet {TABLE} {set} {{ {canary} }}");
    }
    add_elements(&mut s, "add", bans, true, false);
    s
}

/// Whether the rules as the kernel holds them are synwatch's, as set up for `scope`: in
/// each base chain, a rule looking up each set, as many rules as were set up and no
/// other, and each of them one lookup and a drop. A rule replaced by one that accepts, or
/// one put in before them (`nft insert rule ... accept`), lets banned sources through
/// as surely as a deleted one.
pub fn rules_intact(rules: &[RuleInfo], scope: Scope) -> bool {
    let per_chain: usize = SETS
        .iter()
        .map(|&(_, _, new_only, _)| {
            if new_flows_only(scope, new_only) {
                2
            } else {
                1
            }
        })
        .sum();
    ["input", "forward"].iter().all(|chain| {
        let ours = |r: &&RuleInfo| r.table.is_empty() || r.table == TABLE;
        let mine = || rules.iter().filter(ours).filter(|r| r.chain == *chain);
        mine().count() == per_chain
            && mine().all(|r| r.sets.len() == 1 && r.verdicts == [crate::nflink::NF_DROP])
            && SETS
                .iter()
                .all(|(set, ..)| mine().any(|r| r.sets.iter().any(|s| s == set)))
    })
}

/// A cheap look at the table as the kernel holds it: [`crate::nflink::Netlink`], or a
/// fake in tests.
pub trait Look: Send + std::fmt::Debug {
    /// Every rule of table `inet synwatch`.
    fn rules(&mut self) -> Result<Vec<RuleInfo>, LookError>;
    /// Whether `addr` is an element of `set`.
    fn has_element(&mut self, set: &str, addr: IpAddr) -> Result<bool, LookError>;
    /// Applies element changes to the sets of table `inet synwatch` in one transaction,
    /// without starting `nft`; a look that cannot says so, and `nft` does it.
    fn change_elements(&mut self, changes: &[ElementChange<'_>]) -> Result<(), LookError> {
        let _ = changes;
        Err(LookError::Failed("this look cannot change elements".into()))
    }
}

impl Look for crate::nflink::Netlink {
    fn rules(&mut self) -> Result<Vec<RuleInfo>, LookError> {
        self.rules(crate::nflink::NFPROTO_INET, TABLE)
    }

    fn has_element(&mut self, set: &str, addr: IpAddr) -> Result<bool, LookError> {
        self.has_element(crate::nflink::NFPROTO_INET, TABLE, set, addr)
    }

    fn change_elements(&mut self, changes: &[ElementChange<'_>]) -> Result<(), LookError> {
        self.change_elements(crate::nflink::NFPROTO_INET, TABLE, changes)
    }
}

/// The element changes that ban the addresses (single-address bans) of `bans` as
/// [`add_script`] does: each made sure to exist, deleted and added again with its timeout
/// (a renewal), and taken out of the other set of its family. One transaction.
pub fn host_ban_changes(bans: &[Ban]) -> Vec<ElementChange<'static>> {
    let mut out = Vec::with_capacity(bans.len() * 5);
    for b in bans {
        let (set, other) = (set_of(b, false), set_of(b, true));
        let addr = ban_net(b.net).addr();
        let timeout_ms = b.timeout_secs.map(|t| nft_timeout(t).saturating_mul(1000));
        let change = |add, set, timeout_ms| ElementChange {
            add,
            set,
            addr,
            timeout_ms,
        };
        out.extend([
            change(true, set, None),
            change(false, set, None),
            change(true, set, timeout_ms),
            change(true, other, None),
            change(false, other, None),
        ]);
    }
    out
}

/// The element changes of [`Enforcer::refill`] for address bans: each added with its
/// timeout to its set.
fn refill_changes(bans: &[Ban]) -> Vec<ElementChange<'static>> {
    bans.iter()
        .map(|b| ElementChange {
            add: true,
            set: set_of(b, false),
            addr: ban_net(b.net).addr(),
            timeout_ms: b.timeout_secs.map(|t| nft_timeout(t).saturating_mul(1000)),
        })
        .collect()
}

/// The script that adds `bans`, renewing the timeout of any already present: nft's
/// `add element` keeps an existing element as it is, so each one is made sure to exist,
/// deleted, and added again with its new timeout, all in the same transaction.
pub fn add_script(bans: &[Ban]) -> String {
    let mut s = String::new();
    add_elements(&mut s, "add", bans, false, false);
    add_elements(&mut s, "delete", bans, false, false);
    add_elements(&mut s, "add", bans, true, false);
    // Out of the other set of its family, in case the ban changed kind (a source banned
    // for new connections only, banned again once its session has ended).
    add_elements(&mut s, "add", bans, false, true);
    add_elements(&mut s, "delete", bans, false, true);
    s
}

/// The script that removes `addrs`; adding first makes removing an absent (for instance
/// just expired) element harmless instead of failing the whole batch.
pub fn remove_script(nets: &[IpNet]) -> String {
    // Each network once, in the form the sets hold: an element named twice in one
    // `delete element` fails the whole transaction (the second finds nothing), and so
    // every removal in it.
    let mut nets: Vec<IpNet> = nets.iter().map(|&n| ban_net(n)).collect();
    nets.sort_unstable();
    nets.dedup();
    let bans: Vec<Ban> = nets
        .iter()
        .map(|&net| Ban {
            net,
            timeout_secs: None,
            new_only: false,
        })
        .collect();
    let mut s = String::new();
    for other in [false, true] {
        add_elements(&mut s, "add", &bans, false, other);
        add_elements(&mut s, "delete", &bans, false, other);
    }
    s
}

pub fn teardown_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// The set a ban belongs in (`other`: the other set of its family and kind).
fn set_of(ban: &Ban, other: bool) -> &'static str {
    let net = ban_net(ban.net);
    match (
        matches!(net, IpNet::V4(_)),
        ban.new_only != other,
        crate::is_host(net),
    ) {
        (true, false, true) => SET4,
        (false, false, true) => SET6,
        (true, true, true) => SET4_NEW,
        (false, true, true) => SET6_NEW,
        (true, false, false) => NET4,
        (false, false, false) => NET6,
        (true, true, false) => NET4_NEW,
        (false, true, false) => NET6_NEW,
    }
}

/// A timeout as nft takes it (see [`crate::Backend::kernel_max_secs`]), over netlink too,
/// so that an element ends the same however it went in.
fn nft_timeout(secs: u64) -> u64 {
    crate::kernel_timeout(secs, crate::NFT_MAX_TIMEOUT_SECS)
}

fn add_elements(s: &mut String, verb: &str, bans: &[Ban], timeouts: bool, other: bool) {
    for (set, ..) in SETS {
        let family: Vec<&Ban> = bans.iter().filter(|b| set_of(b, other) == set).collect();
        for chunk in family.chunks(CHUNK) {
            let _ = write!(s, "{verb} element inet {TABLE} {set} {{ ");
            for (i, ban) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&net_text(ban.net));
                if timeouts && let Some(t) = ban.timeout_secs {
                    let _ = write!(s, " timeout {}s", nft_timeout(t));
                }
            }
            s.push_str(" }\n");
        }
    }
}

/// Reads the elements of one set from `nft -j list set` output.
pub fn parse_set(json: &str) -> Result<Vec<KernelBan>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut out = Vec::new();
    for item in items {
        let Some(elems) = item.pointer("/set/elem").and_then(Value::as_array) else {
            continue;
        };
        for e in elems {
            // A bare string for an element without attributes, an object otherwise.
            let (val, attrs) = match e.get("elem") {
                Some(inner) => (inner.get("val"), Some(inner)),
                None => (Some(e), None),
            };
            // An address is a string; a range, {"prefix": {"addr": ..., "len": ...}}.
            let net = match val {
                Some(Value::String(a)) => a
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| "an element that is not an address")?,
                Some(v) => {
                    let addr = v
                        .pointer("/prefix/addr")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse::<IpAddr>().ok());
                    let len = v
                        .pointer("/prefix/len")
                        .and_then(Value::as_u64)
                        .and_then(|l| u8::try_from(l).ok());
                    match (addr, len) {
                        (Some(a), Some(l)) => {
                            IpNet::new(a, l).map_err(|_| "an element with a bad prefix")?
                        }
                        // A range that is no prefix: synwatch never adds one.
                        _ => continue,
                    }
                }
                None => return Err("an element without an address".into()),
            };
            let num = |path: &str| attrs.and_then(|a| a.pointer(path)).and_then(Value::as_u64);
            out.push(KernelBan {
                net,
                expires_secs: num("/expires").or(num("/timeout").map(|_| 0)),
                packets: num("/counter/packets"),
                bytes: num("/counter/bytes"),
            });
        }
    }
    Ok(out)
}

/// Sums the counters of the rules in `nft -j list chain` output.
pub fn parse_chain_counters(json: &str) -> Result<DropCounters, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut sum = DropCounters::default();
    for item in items {
        let Some(expr) = item.pointer("/rule/expr").and_then(Value::as_array) else {
            continue;
        };
        for stmt in expr {
            if let Some(counter) = stmt.get("counter") {
                sum.packets += counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
                sum.bytes += counter.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            }
        }
    }
    Ok(sum)
}

/// The nftables backend.
#[derive(Debug)]
pub struct Nftables {
    scope: Scope,
    runner: Box<dyn Runner>,
    /// Without one, checks and counters go through `nft` (slow with many bans).
    look: Option<Box<dyn Look>>,
}

impl Nftables {
    /// Sends the address bans of `bans` to the kernel over netlink, as the element
    /// changes `changes` makes of them, when the look can; returns what is left for `nft`:
    /// the ranges, or every ban when netlink was not used or failed.
    fn hosts_over_netlink(
        &mut self,
        bans: &[Ban],
        changes: fn(&[Ban]) -> Vec<ElementChange<'static>>,
    ) -> Vec<Ban> {
        let (hosts, ranges): (Vec<Ban>, Vec<Ban>) =
            bans.iter().partition(|b| crate::is_host(b.net));
        let sent = !hosts.is_empty()
            && self
                .look
                .as_mut()
                .is_some_and(|look| look.change_elements(&changes(&hosts)).is_ok());
        if sent { ranges } else { bans.to_vec() }
    }

    pub fn new(scope: Scope, runner: Box<dyn Runner>) -> Self {
        Self {
            scope,
            runner,
            look: None,
        }
    }

    /// Checks for tampering and reads counters through `look` instead of `nft`.
    pub fn with_look(mut self, look: Box<dyn Look>) -> Self {
        self.look = Some(look);
        self
    }

    /// Whether the table, its chains' rules and both canaries are in place; `None` when
    /// the look itself failed (say, a netlink error), so `nft` should be asked instead.
    fn looked_intact(&mut self) -> Option<bool> {
        let look = self.look.as_mut()?;
        let rules = match look.rules() {
            Ok(r) => r,
            Err(LookError::Absent) => return Some(false),
            Err(LookError::Failed(_)) => return None,
        };
        if !rules_intact(&rules, self.scope) {
            return Some(false);
        }
        for (set, ty, ..) in SETS {
            let canary = if ty == "ipv4_addr" {
                IpAddr::V4(CANARY4)
            } else {
                IpAddr::V6(CANARY6)
            };
            match look.has_element(set, canary) {
                Ok(true) => {}
                Ok(false) | Err(LookError::Absent) => return Some(false),
                Err(LookError::Failed(_)) => return None,
            }
        }
        Some(true)
    }

    fn script(&mut self, script: String, what: &str) -> Result<(), EnforceError> {
        if script.is_empty() {
            return Ok(());
        }
        self.runner
            .run(&Command::new("nft", &["-f", "-"], what).with_stdin(script))
            .map(drop)
    }

    fn json(&mut self, args: &[&str], what: &str) -> Result<String, EnforceError> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        self.runner.run(&Command::new("nft", &all, what))
    }
}

impl Enforcer for Nftables {
    fn backend(&self) -> Backend {
        Backend::Nftables
    }

    fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        let script = setup_script(self.scope, bans);
        self.script(script, "create table inet synwatch")
    }

    /// Ranges the kernel does not hold yet (in either set of their kind, asked through
    /// the netlink look) are simply added: deleting from an interval set costs nft a
    /// read of the whole set, so only ranges being renewed, or changing kind, take the
    /// add-delete-add path that addresses always take.
    ///
    /// Address bans go to the kernel over netlink when the look can (no process start:
    /// the kernel holds the ban microseconds after the call); if that fails they take
    /// the `nft` path with the rest.
    fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        let bans = self.hosts_over_netlink(bans, host_ban_changes);
        if bans.is_empty() {
            return Ok(());
        }
        let (fresh, known): (Vec<Ban>, Vec<Ban>) = match self.look.as_mut() {
            Some(look) => bans.iter().partition(|b| {
                !crate::is_host(b.net)
                    && [false, true].iter().all(|&other| {
                        matches!(
                            look.has_element(set_of(b, other), ban_net(b.net).addr()),
                            Ok(false)
                        )
                    })
            }),
            None => (Vec::new(), bans.to_vec()),
        };
        let mut script = add_script(&known);
        add_elements(&mut script, "add", &fresh, true, false);
        self.script(script, "add bans to table inet synwatch")
    }

    /// Plain `add element` with the timeout: a third of the work of [`add_script`]'s
    /// renewal (add, delete, add, and the other set's add and delete). Addresses go over
    /// netlink when the look can, as in [`Enforcer::add`]: a chunk of 1,500 through
    /// `nft -f -` held the pipeline 30-60 ms (starting nft alone took 7-12 ms).
    fn refill(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        let bans = self.hosts_over_netlink(bans, refill_changes);
        let mut script = String::new();
        add_elements(&mut script, "add", &bans, true, false);
        self.script(script, "put bans back into table inet synwatch")
    }

    fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.script(remove_script(nets), "remove bans from table inet synwatch")
    }

    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
        let mut all = Vec::new();
        for (set, ..) in SETS {
            let what = format!("list set inet {TABLE} {set}");
            let out = self.json(&["list", "set", "inet", TABLE, set], &what)?;
            all.extend(parse_set(&out).map_err(|detail| EnforceError::Output {
                program: "nft".into(),
                what,
                detail,
            })?);
        }
        all.retain(|b| !(crate::is_host(b.net) && crate::is_canary(b.net.addr())));
        Ok(all)
    }

    fn counters(&mut self) -> Result<DropCounters, EnforceError> {
        let mut sum = DropCounters::default();
        if let Some(Ok(rules)) = self.look.as_mut().map(|l| l.rules()) {
            for r in rules {
                sum.packets += r.packets;
                sum.bytes += r.bytes;
            }
            return Ok(sum);
        }
        for chain in ["input", "forward"] {
            let what = format!("list chain inet {TABLE} {chain}");
            // Terse: without the sets' elements, which can be a hundred thousand.
            let out = self.json(&["-t", "list", "chain", "inet", TABLE, chain], &what)?;
            let c = parse_chain_counters(&out).map_err(|detail| EnforceError::Output {
                program: "nft".into(),
                what,
                detail,
            })?;
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        Ok(sum)
    }

    fn present(&mut self) -> bool {
        self.runner
            .run(&Command::new(
                "nft",
                &["list", "table", "inet", TABLE],
                "look for table inet synwatch",
            ))
            .is_ok()
    }

    /// The table, each base chain's two drop rules and each set's canary: a deleted
    /// table, set or chain, a flushed chain or set, or a deleted rule all show.
    fn intact(&mut self) -> bool {
        match self.looked_intact() {
            Some(intact) => intact,
            None => self.present(),
        }
    }

    fn teardown(&mut self) -> Result<(), EnforceError> {
        self.script(teardown_script(), "delete table inet synwatch")
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::RecordingRunner;
    use crate::test_ban as ban;

    #[test]
    fn setup_replaces_the_table_and_restores_bans_in_one_script() {
        let s = setup_script(
            Scope::All,
            &[ban("192.0.2.7", Some(3600)), ban("2001:db8::7", None)],
        );
        let expected = "add table inet synwatch\n\
delete table inet synwatch\n\
table inet synwatch {\n\
\tset banned4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tcounter\n\t}\n\
\tset banned6 {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t\tcounter\n\t}\n\
\tset banned4_new {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tcounter\n\t}\n\
\tset banned6_new {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t\tcounter\n\t}\n\
\tset banned4_net {\n\t\ttype ipv4_addr\n\t\tflags interval,timeout\n\t\tcounter\n\t}\n\
\tset banned6_net {\n\t\ttype ipv6_addr\n\t\tflags interval,timeout\n\t\tcounter\n\t}\n\
\tset banned4_net_new {\n\t\ttype ipv4_addr\n\t\tflags interval,timeout\n\t\tcounter\n\t}\n\
\tset banned6_net_new {\n\t\ttype ipv6_addr\n\t\tflags interval,timeout\n\t\tcounter\n\t}\n\
\tchain input {\n\t\ttype filter hook input priority filter - 10; policy accept;\n\
\t\tip saddr @banned4 counter drop\n\t\tip6 saddr @banned6 counter drop\n\
\t\tip saddr @banned4_new ct state new meta l4proto != tcp counter drop\n\t\tip saddr @banned4_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip6 saddr @banned6_new ct state new meta l4proto != tcp counter drop\n\t\tip6 saddr @banned6_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip saddr @banned4_net counter drop\n\t\tip6 saddr @banned6_net counter drop\n\
\t\tip saddr @banned4_net_new ct state new meta l4proto != tcp counter drop\n\t\tip saddr @banned4_net_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip6 saddr @banned6_net_new ct state new meta l4proto != tcp counter drop\n\t\tip6 saddr @banned6_net_new ct state new tcp flags & (syn | ack) != ack counter drop\n\t}\n\
\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\
\t\tip saddr @banned4 counter drop\n\t\tip6 saddr @banned6 counter drop\n\
\t\tip saddr @banned4_new ct state new meta l4proto != tcp counter drop\n\t\tip saddr @banned4_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip6 saddr @banned6_new ct state new meta l4proto != tcp counter drop\n\t\tip6 saddr @banned6_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip saddr @banned4_net counter drop\n\t\tip6 saddr @banned6_net counter drop\n\
\t\tip saddr @banned4_net_new ct state new meta l4proto != tcp counter drop\n\t\tip saddr @banned4_net_new ct state new tcp flags & (syn | ack) != ack counter drop\n\
\t\tip6 saddr @banned6_net_new ct state new meta l4proto != tcp counter drop\n\t\tip6 saddr @banned6_net_new ct state new tcp flags & (syn | ack) != ack counter drop\n\t}\n\
}\n\
add element inet synwatch banned4 { 0.0.0.1 }\n\
add element inet synwatch banned6 { 100::1 }\n\
add element inet synwatch banned4_new { 0.0.0.1 }\n\
add element inet synwatch banned6_new { 100::1 }\n\
add element inet synwatch banned4_net { 0.0.0.1 }\n\
add element inet synwatch banned6_net { 100::1 }\n\
add element inet synwatch banned4_net_new { 0.0.0.1 }\n\
add element inet synwatch banned6_net_new { 100::1 }\n\
add element inet synwatch banned4 { 192.0.2.7 timeout 3600s }\n\
add element inet synwatch banned6 { 2001:db8::7 }\n";
        assert_eq!(s, expected);
    }

    /// The kernel's table as a fake look sees it.
    #[derive(Debug, Clone, Default)]
    struct Kernel {
        rules: Option<Vec<RuleInfo>>,
        elements: Vec<(String, IpAddr)>,
        broken: bool,
    }

    #[derive(Debug, Clone, Default)]
    struct FakeLook(std::sync::Arc<std::sync::Mutex<Kernel>>);

    impl Look for FakeLook {
        fn rules(&mut self) -> Result<Vec<RuleInfo>, LookError> {
            let k = self.0.lock().unwrap();
            if k.broken {
                return Err(LookError::Failed("EPERM".into()));
            }
            k.rules.clone().ok_or(LookError::Absent)
        }

        fn has_element(&mut self, set: &str, addr: IpAddr) -> Result<bool, LookError> {
            let k = self.0.lock().unwrap();
            Ok(k.elements.iter().any(|(s, a)| s == set && *a == addr))
        }
    }

    /// The rules set up for `Scope::All`: one a set, two for a set of bans on new
    /// connections only.
    fn synwatch_rules() -> Vec<RuleInfo> {
        let mut rules = Vec::new();
        for chain in ["input", "forward"] {
            for (set, packets) in [
                (SET4, 2),
                (SET6, 1),
                (SET4_NEW, 0),
                (SET4_NEW, 0),
                (SET6_NEW, 0),
                (SET6_NEW, 0),
                (NET4, 0),
                (NET6, 0),
                (NET4_NEW, 0),
                (NET4_NEW, 0),
                (NET6_NEW, 0),
                (NET6_NEW, 0),
            ] {
                rules.push(RuleInfo {
                    table: TABLE.into(),
                    chain: chain.into(),
                    sets: vec![set.into()],
                    packets,
                    bytes: packets * 60,
                    verdicts: vec![crate::nflink::NF_DROP],
                });
            }
        }
        rules
    }

    #[test]
    fn a_flushed_set_or_chain_or_a_deleted_table_is_noticed_without_running_nft() {
        let runner = RecordingRunner::default();
        let look = FakeLook::default();
        let mut nft =
            Nftables::new(Scope::All, Box::new(runner.clone())).with_look(Box::new(look.clone()));
        let set_up = |look: &FakeLook| {
            let mut k = look.0.lock().unwrap();
            k.rules = Some(synwatch_rules());
            k.elements = vec![
                (SET4.into(), IpAddr::V4(CANARY4)),
                (SET4_NEW.into(), IpAddr::V4(CANARY4)),
                (SET6_NEW.into(), IpAddr::V6(CANARY6)),
                (NET4.into(), IpAddr::V4(CANARY4)),
                (NET4_NEW.into(), IpAddr::V4(CANARY4)),
                (NET6_NEW.into(), IpAddr::V6(CANARY6)),
                (NET6.into(), IpAddr::V6(CANARY6)),
                (SET6.into(), IpAddr::V6(CANARY6)),
            ];
        };
        assert!(!nft.intact(), "no table");
        set_up(&look);
        assert!(nft.intact());
        assert_eq!(
            nft.counters().unwrap(),
            DropCounters {
                packets: 6,
                bytes: 360
            }
        );
        // nft flush set inet synwatch banned6: the canary is gone.
        look.0.lock().unwrap().elements.pop();
        assert!(!nft.intact());
        // nft flush set inet synwatch banned6_net: the same.
        set_up(&look);
        look.0.lock().unwrap().elements.retain(|(s, _)| s != NET6);
        assert!(!nft.intact());
        // nft flush chain inet synwatch forward: its rules are gone.
        set_up(&look);
        look.0.lock().unwrap().rules = Some(
            synwatch_rules()
                .into_iter()
                .filter(|r| r.chain != "forward")
                .collect(),
        );
        assert!(!nft.intact());
        // Regression: a rule that accepts in place of one of synwatch's (`nft replace
        // rule ... accept`), or put in before them (`nft insert rule ... accept`), let
        // banned sources through unnoticed.
        set_up(&look);
        look.0.lock().unwrap().rules = Some({
            let mut rules = synwatch_rules();
            rules[0].verdicts = vec![1];
            rules
        });
        assert!(!nft.intact(), "a rule that accepts");
        set_up(&look);
        look.0.lock().unwrap().rules = Some({
            let mut rules = synwatch_rules();
            let accept = RuleInfo {
                chain: "input".into(),
                verdicts: vec![1],
                ..RuleInfo::default()
            };
            rules.insert(0, accept);
            rules
        });
        assert!(!nft.intact(), "a rule put in before them");
        // Another table's rules, where a kernel dumped every table's: not synwatch's.
        set_up(&look);
        look.0.lock().unwrap().rules = Some({
            let mut rules = synwatch_rules();
            rules.push(RuleInfo {
                table: "filter".into(),
                chain: "input".into(),
                verdicts: vec![1],
                ..RuleInfo::default()
            });
            rules
        });
        assert!(nft.intact(), "another table's rule");
        // Nothing ran nft.
        assert!(runner.transcript().is_empty(), "{:?}", runner.transcript());
        // A look that fails is no evidence of tampering: nft is asked.
        look.0.lock().unwrap().broken = true;
        assert!(nft.intact());
        assert_eq!(runner.transcript(), ["nft list table inet synwatch"]);
    }

    #[test]
    fn scope_new_matches_only_new_connections() {
        let s = setup_script(Scope::New, &[]);
        // New flows of other protocols, and new TCP flows but mid-stream pickups (an
        // ACK without SYN: a session older than connection tracking).
        for set in [
            "ip saddr @banned4",
            "ip6 saddr @banned6",
            "ip6 saddr @banned6_new",
        ] {
            assert!(s.contains(&format!(
                "{set} ct state new meta l4proto != tcp counter drop"
            )));
            assert!(s.contains(&format!(
                "{set} ct state new tcp flags & (syn | ack) != ack counter drop"
            )));
        }
        assert_eq!(
            s.matches("add element").count(),
            8,
            "only the canaries: {s}"
        );
        assert_eq!(s.matches("ct state new").count(), 32, "{s}");
    }

    #[test]
    fn adding_renews_existing_elements_in_the_same_transaction() {
        let s = add_script(&[
            ban("192.0.2.7", Some(60)),
            ban("::ffff:198.51.100.1", Some(0)),
        ]);
        assert_eq!(
            s,
            "add element inet synwatch banned4 { 192.0.2.7, 198.51.100.1 }\n\
             delete element inet synwatch banned4 { 192.0.2.7, 198.51.100.1 }\n\
             add element inet synwatch banned4 { 192.0.2.7 timeout 60s, 198.51.100.1 timeout 1s }\n\
             add element inet synwatch banned4_new { 192.0.2.7, 198.51.100.1 }\n\
             delete element inet synwatch banned4_new { 192.0.2.7, 198.51.100.1 }\n"
        );
    }

    #[test]
    fn timeouts_longer_than_nft_takes_are_clamped_in_scripts_and_over_netlink() {
        // nft 1.0.6 refuses "timeout 103680000s" (1200 days): value too large.
        let long = Some(1200 * 86_400);
        let script = setup_script(
            Scope::All,
            &[
                ban("192.0.2.7", long),
                ban("198.51.100.0/24", Some(u64::MAX)),
            ],
        );
        assert!(
            script.contains("banned4 { 192.0.2.7 timeout 99999999s }"),
            "{script}"
        );
        assert!(
            script.contains("banned4_net { 198.51.100.0/24 timeout 99999999s }"),
            "{script}"
        );
        assert!(add_script(&[ban("192.0.2.7", long)]).contains("timeout 99999999s"));
        let changes = host_ban_changes(&[ban("192.0.2.7", long)]);
        let timeouts: Vec<u64> = changes.iter().filter_map(|c| c.timeout_ms).collect();
        assert_eq!(timeouts, [99_999_999_000]);
        let timeouts: Vec<u64> = refill_changes(&[ban("192.0.2.7", long)])
            .iter()
            .filter_map(|c| c.timeout_ms)
            .collect();
        assert_eq!(timeouts, [99_999_999_000]);
    }

    #[test]
    fn refilling_after_a_set_up_is_a_plain_add_with_timeouts() {
        let runner = RecordingRunner::default();
        let mut nft = Nftables::new(Scope::All, Box::new(runner.clone()));
        nft.refill(&[
            ban("192.0.2.7", Some(60)),
            ban("2001:db8::1", None),
            ban("198.51.100.0/24", Some(5)),
        ])
        .unwrap();
        let t = runner.transcript();
        assert_eq!(t.len(), 1, "one nft run: {t:#?}");
        assert!(
            t[0].ends_with(
                "add element inet synwatch banned4 { 192.0.2.7 timeout 60s }\n\
                 add element inet synwatch banned6 { 2001:db8::1 }\n\
                 add element inet synwatch banned4_net { 198.51.100.0/24 timeout 5s }\n"
            ),
            "{}",
            t[0]
        );
        assert!(!t[0].contains("delete"), "{}", t[0]);
    }

    #[test]
    fn ranges_are_interval_elements_with_timeouts_in_their_own_sets() {
        let s = add_script(&[
            ban("2001:db8:1::/48", Some(60)),
            ban("198.51.100.77/24", None),
        ]);
        assert_eq!(
            s,
            "add element inet synwatch banned4_net { 198.51.100.0/24 }\n\
             add element inet synwatch banned6_net { 2001:db8:1::/48 }\n\
             delete element inet synwatch banned4_net { 198.51.100.0/24 }\n\
             delete element inet synwatch banned6_net { 2001:db8:1::/48 }\n\
             add element inet synwatch banned4_net { 198.51.100.0/24 }\n\
             add element inet synwatch banned6_net { 2001:db8:1::/48 timeout 60s }\n\
             add element inet synwatch banned4_net_new { 198.51.100.0/24 }\n\
             add element inet synwatch banned6_net_new { 2001:db8:1::/48 }\n\
             delete element inet synwatch banned4_net_new { 198.51.100.0/24 }\n\
             delete element inet synwatch banned6_net_new { 2001:db8:1::/48 }\n"
        );
        assert_eq!(
            remove_script(&[crate::parse_net("198.51.100.0/24").unwrap()]),
            "add element inet synwatch banned4_net { 198.51.100.0/24 }\n\
             delete element inet synwatch banned4_net { 198.51.100.0/24 }\n\
             add element inet synwatch banned4_net_new { 198.51.100.0/24 }\n\
             delete element inet synwatch banned4_net_new { 198.51.100.0/24 }\n"
        );
    }

    #[test]
    fn reads_range_elements() {
        let json = r#"{"nftables": [{"set": {"name": "banned6", "elem": [{"elem": {"val": {"prefix": {"addr": "2001:db8:1::", "len": 48}}, "timeout": 60, "expires": 59, "counter": {"packets": 2, "bytes": 120}}}, {"elem": {"val": {"range": ["2001:db8::1", "2001:db8::5"]}}}, "100::1"]}}]}"#;
        let bans = parse_set(json).unwrap();
        assert_eq!(bans.len(), 2, "{bans:?}");
        assert_eq!(bans[0].net, crate::parse_net("2001:db8:1::/48").unwrap());
        assert_eq!(bans[0].expires_secs, Some(59));
        assert_eq!(bans[0].packets, Some(2));
        assert_eq!(bans[1].net, crate::parse_net("100::1").unwrap());
    }

    #[test]
    fn ranges_the_kernel_does_not_hold_are_added_without_deletes() {
        let runner = RecordingRunner::default();
        let look = FakeLook::default();
        look.0.lock().unwrap().elements = vec![(NET4.into(), "198.51.100.0".parse().unwrap())];
        let mut nft = Nftables::new(Scope::All, Box::new(runner.clone())).with_look(Box::new(look));
        nft.add(&[
            ban("203.0.113.0/24", Some(60)),
            ban("198.51.100.0/24", Some(60)),
            ban("192.0.2.1", Some(60)),
        ])
        .unwrap();
        let t = runner.transcript();
        assert_eq!(t.len(), 1);
        // The address and the range held already are renewed; the new range only added.
        assert!(
            t[0].contains("delete element inet synwatch banned4 { 192.0.2.1 }"),
            "{}",
            t[0]
        );
        assert!(
            t[0].contains("delete element inet synwatch banned4_net { 198.51.100.0/24 }"),
            "{}",
            t[0]
        );
        assert!(
            !t[0].contains("delete element inet synwatch banned4_net { 203.0.113.0/24"),
            "{}",
            t[0]
        );
        assert!(
            t[0].ends_with(
                "add element inet synwatch banned4_net { 203.0.113.0/24 timeout 60s }\n"
            ),
            "{}",
            t[0]
        );
    }

    #[test]
    fn a_ban_on_a_source_with_a_session_goes_to_the_new_connections_set_only() {
        let mut b = ban("2001:db8::7", Some(60));
        b.new_only = true;
        assert_eq!(
            add_script(&[b]),
            "add element inet synwatch banned6_new { 2001:db8::7 }\n\
             delete element inet synwatch banned6_new { 2001:db8::7 }\n\
             add element inet synwatch banned6_new { 2001:db8::7 timeout 60s }\n\
             add element inet synwatch banned6 { 2001:db8::7 }\n\
             delete element inet synwatch banned6 { 2001:db8::7 }\n"
        );
    }

    #[test]
    fn removing_tolerates_elements_already_gone() {
        let s = remove_script(&[crate::parse_net("2001:db8::1").unwrap()]);
        assert_eq!(
            s,
            "add element inet synwatch banned6 { 2001:db8::1 }\n\
             delete element inet synwatch banned6 { 2001:db8::1 }\n\
             add element inet synwatch banned6_new { 2001:db8::1 }\n\
             delete element inet synwatch banned6_new { 2001:db8::1 }\n"
        );
        assert_eq!(remove_script(&[]), "");
        // Regression: `blocks flush` with no agent running named each ban twice (the
        // saved list and the kernel's), `delete element` failed on the second, and the
        // whole transaction with it: every ban stayed in the kernel.
        let net = |s: &str| crate::parse_net(s).unwrap();
        let twice = remove_script(&[
            net("192.0.2.9"),
            net("198.51.100.0/24"),
            net("::ffff:192.0.2.9"),
            net("192.0.2.9"),
            net("198.51.100.0/24"),
        ]);
        assert_eq!(
            twice,
            remove_script(&[net("192.0.2.9"), net("198.51.100.0/24")]),
            "{twice}"
        );
        assert!(twice.contains("delete element inet synwatch banned4 { 192.0.2.9 }\n"));
    }

    #[test]
    fn large_batches_are_split_into_statements_of_a_thousand() {
        let bans: Vec<Ban> = (0..2500u32)
            .map(|i| Ban {
                net: IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
                timeout_secs: Some(10),
                new_only: false,
            })
            .collect();
        let s = add_script(&bans);
        assert_eq!(
            s.lines().count(),
            15,
            "three statements of each kind (two for the other set)"
        );
        assert_eq!(s.matches("timeout 10s").count(), 2500);
    }

    #[test]
    fn one_nft_run_per_operation() {
        let runner = RecordingRunner::default();
        let mut nft = Nftables::new(Scope::All, Box::new(runner.clone()));
        nft.setup(&[]).unwrap();
        nft.add(&[ban("192.0.2.1", Some(5)), ban("192.0.2.2", Some(5))])
            .unwrap();
        nft.remove(&[]).unwrap();
        nft.teardown().unwrap();
        let t = runner.transcript();
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(t.iter().all(|c| c.starts_with("nft -f -\n")));
        assert_eq!(
            t[2],
            "nft -f -\nadd table inet synwatch\ndelete table inet synwatch\n"
        );
    }

    #[test]
    fn reads_elements_with_timeouts_and_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "banned4", "table": "synwatch", "type": "ipv4_addr", "handle": 2, "flags": ["timeout"], "elem": [{"elem": {"val": "1.2.3.4", "timeout": 20, "expires": 19, "counter": {"packets": 3, "bytes": 180}}}, {"elem": {"val": "5.6.7.8", "counter": {"packets": 0, "bytes": 0}}}, "9.9.9.9"]}}]}"#;
        let bans = parse_set(json).unwrap();
        assert_eq!(
            bans,
            vec![
                KernelBan {
                    net: crate::parse_net("1.2.3.4").unwrap(),
                    expires_secs: Some(19),
                    packets: Some(3),
                    bytes: Some(180)
                },
                KernelBan {
                    net: crate::parse_net("5.6.7.8").unwrap(),
                    expires_secs: None,
                    packets: Some(0),
                    bytes: Some(0)
                },
                KernelBan {
                    net: crate::parse_net("9.9.9.9").unwrap(),
                    expires_secs: None,
                    packets: None,
                    bytes: None
                },
            ]
        );
        assert!(parse_set("not json").is_err());
        assert_eq!(parse_set(r#"{"nftables": []}"#).unwrap(), vec![]);
    }

    #[test]
    fn sums_rule_counters() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"chain": {"name": "input"}}, {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}}, {"rule": {"expr": [{"counter": {"packets": 1, "bytes": 80}}, {"drop": null}]}}]}"#;
        assert_eq!(
            parse_chain_counters(json).unwrap(),
            DropCounters {
                packets: 8,
                bytes: 500
            }
        );
    }

    /// One element change as a fake kernel took it: add or delete, set, address, timeout.
    type Applied = (bool, String, IpAddr, Option<u64>);

    /// A look that applies element changes to its fake kernel, or refuses.
    #[derive(Debug, Clone, Default)]
    struct WritingLook {
        applied: std::sync::Arc<std::sync::Mutex<Vec<Applied>>>,
        refuse: bool,
    }

    impl Look for WritingLook {
        fn rules(&mut self) -> Result<Vec<RuleInfo>, LookError> {
            Ok(synwatch_rules())
        }

        fn has_element(&mut self, _: &str, _: IpAddr) -> Result<bool, LookError> {
            Ok(false)
        }

        fn change_elements(&mut self, changes: &[ElementChange<'_>]) -> Result<(), LookError> {
            if self.refuse {
                return Err(LookError::Failed("EPERM".into()));
            }
            self.applied.lock().unwrap().extend(
                changes
                    .iter()
                    .map(|c| (c.add, c.set.to_owned(), c.addr, c.timeout_ms)),
            );
            Ok(())
        }
    }

    #[test]
    fn address_bans_go_over_netlink_without_nft_and_ranges_still_through_nft() {
        let runner = RecordingRunner::default();
        let look = WritingLook::default();
        let mut nft =
            Nftables::new(Scope::All, Box::new(runner.clone())).with_look(Box::new(look.clone()));
        nft.add(&[ban("192.0.2.7", Some(60)), ban("2001:db8::7", None)])
            .unwrap();
        assert!(runner.transcript().is_empty(), "{:?}", runner.transcript());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        // The same transaction as add_script: exist, delete, add with the timeout, and
        // out of the other set of the family.
        assert_eq!(
            *look.applied.lock().unwrap(),
            [
                (true, SET4.into(), v4, None),
                (false, SET4.into(), v4, None),
                (true, SET4.into(), v4, Some(60_000)),
                (true, SET4_NEW.into(), v4, None),
                (false, SET4_NEW.into(), v4, None),
                (true, SET6.into(), v6, None),
                (false, SET6.into(), v6, None),
                (true, SET6.into(), v6, None),
                (true, SET6_NEW.into(), v6, None),
                (false, SET6_NEW.into(), v6, None),
            ]
        );
        // A range goes through nft; the address beside it does not.
        nft.add(&[ban("198.51.100.0/24", Some(60)), ban("192.0.2.8", Some(60))])
            .unwrap();
        assert_eq!(runner.transcript().len(), 1);
        assert!(runner.transcript()[0].contains("198.51.100.0/24"));
        assert!(!runner.transcript()[0].contains("192.0.2.8"));
    }

    #[test]
    fn refilled_addresses_go_over_netlink_and_ranges_through_nft() {
        let runner = RecordingRunner::default();
        let look = WritingLook::default();
        let mut nft =
            Nftables::new(Scope::All, Box::new(runner.clone())).with_look(Box::new(look.clone()));
        nft.refill(&[
            ban("192.0.2.7", Some(60)),
            ban("2001:db8::1", None),
            ban("198.51.100.0/24", Some(5)),
        ])
        .unwrap();
        assert_eq!(
            *look.applied.lock().unwrap(),
            [
                (
                    true,
                    SET4.into(),
                    "192.0.2.7".parse::<IpAddr>().unwrap(),
                    Some(60_000)
                ),
                (
                    true,
                    SET6.into(),
                    "2001:db8::1".parse::<IpAddr>().unwrap(),
                    None
                ),
            ]
        );
        let t = runner.transcript();
        assert_eq!(t.len(), 1, "one nft run, for the range: {t:#?}");
        assert!(t[0].contains("198.51.100.0/24 timeout 5s"), "{}", t[0]);
        assert!(!t[0].contains("192.0.2.7"), "{}", t[0]);
    }

    #[test]
    fn address_bans_take_nft_when_netlink_refuses() {
        let runner = RecordingRunner::default();
        let look = WritingLook {
            refuse: true,
            ..WritingLook::default()
        };
        let mut nft = Nftables::new(Scope::All, Box::new(runner.clone())).with_look(Box::new(look));
        nft.add(&[ban("192.0.2.7", Some(60))]).unwrap();
        assert_eq!(
            runner.transcript(),
            [format!(
                "nft -f -\n{}",
                add_script(&[ban("192.0.2.7", Some(60))])
            )]
        );
    }
}
