//! iptables for hosts without nftables: two ipsets (`synwatch4`, `synwatch6`, hash:net
//! with per-entry timeouts and counters: an address is a /32 or /128 entry, a range bans
//! the whole network) and one chain `SYNWATCH` per family holding the rules
//! that drop what matches the sets, and the same for bans on sources that held an
//! established connection (`synwatch4_new`, `synwatch6_new`, matched with `--ctstate
//! NEW`, except TCP segments with ACK and no SYN, so that their sessions live on, even
//! one older than connection tracking, picked up in mid-stream as new). The chain is jumped to from the top of INPUT,
//! FORWARD and, where Docker created it, DOCKER-USER (Docker puts its own FORWARD rules
//! ahead of anything added later, so DOCKER-USER is the only reliable place for
//! container traffic).
//!
//! Each set holds a canary element ([`crate::CANARY4`], [`crate::CANARY6`]) from set-up
//! on; `ipset test` on it, `-C` on the chain's rule and on each jump tell within a few
//! milliseconds, whatever the number of bans, whether someone flushed or removed any of
//! it.
//!
//! Bans change only the sets, never the rules: rule count stays constant whatever the
//! number of bans. Added bans go over netfilter netlink when the backend holds a socket
//! (no process start), else, and for everything else, one `ipset restore -exist` run per
//! batch.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{
    Backend, Ban, CANARY4, CANARY6, Command, DropCounters, EnforceError, Enforcer, KernelBan,
    Runner, Scope, ban_net, by_family, net_text,
};

pub const CHAIN: &str = "SYNWATCH";
pub const SET4: &str = "synwatch4";
pub const SET6: &str = "synwatch6";
/// Bans that drop only new connections (`Ban::new_only`).
pub const SET4_NEW: &str = "synwatch4_new";
pub const SET6_NEW: &str = "synwatch6_new";
/// Every set: the program of its family, its name, ipset family, and whether its rule
/// matches only new connections.
const SETS: [(&str, &str, &str, bool); 4] = [
    ("iptables", SET4, "inet", false),
    ("iptables", SET4_NEW, "inet", true),
    ("ip6tables", SET6, "inet6", false),
    ("ip6tables", SET6_NEW, "inet6", true),
];

/// The set a ban belongs in (`other`: the other set of its family).
fn set_of(ban: &Ban, other: bool) -> &'static str {
    match (
        matches!(ban_net(ban.net), IpNet::V4(_)),
        ban.new_only != other,
    ) {
        (true, false) => SET4,
        (false, false) => SET6,
        (true, true) => SET4_NEW,
        (false, true) => SET6_NEW,
    }
}

fn canary_of(family: &str) -> IpAddr {
    if family == "inet" {
        IpAddr::V4(CANARY4)
    } else {
        IpAddr::V6(CANARY6)
    }
}
/// The most bans each set holds (ipset's default of 65536 is too few under attack).
pub const MAX_ELEMENTS: u32 = 1 << 20;
/// Built-in chains that jump to ours, and the one Docker adds when present.
const HOOKS: [&str; 2] = ["INPUT", "FORWARD"];
const DOCKER_HOOK: &str = "DOCKER-USER";

/// The two families: program, set, ipset family name.
const FAMILIES: [(&str, &str, &str); 2] =
    [("iptables", SET4, "inet"), ("ip6tables", SET6, "inet6")];

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run; failure fails the plan.
    Run(Command),
    /// Run `then` only if `check` fails (insert a jump only where none exists).
    Unless { check: Command, then: Command },
    /// Run; failure is expected and ignored (removing what may not exist).
    Try(Command),
    /// Repeat until it fails (removing every copy of a rule).
    UntilFails(Command),
    /// Run `then` only if `check` succeeds (hook DOCKER-USER only where it exists).
    If { check: Command, then: Box<Step> },
    /// Run `then` only if `check` succeeds and its output holds `says` (a set of an older
    /// type to replace).
    When {
        check: Command,
        says: &'static str,
        then: Box<Step>,
    },
    /// Run (`iptables -S CHAIN`); fails the plan unless its output lists exactly `rules`
    /// rules (`-A` lines).
    Rules { list: Command, rules: usize },
}

fn ipt(program: &'static str, args: &[&str], what: impl Into<String>) -> Command {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    Command::new(program, &all, what)
}

/// The ipset input that creates both sets (if missing), empties them and adds `bans`.
pub fn sets_script(bans: &[Ban]) -> String {
    let mut s = String::new();
    for (_, set, family, _) in SETS {
        let _ = writeln!(
            s,
            "create {set} hash:net family {family} timeout 0 counters maxelem {MAX_ELEMENTS}"
        );
        let _ = writeln!(s, "flush {set}");
        let _ = writeln!(s, "add {set} {} timeout 0", canary_of(family));
    }
    s.push_str(&add_script(bans));
    s
}

/// A timeout as ipset takes it (see [`crate::Backend::kernel_max_secs`]); 0 is ipset's
/// "until removed", so a timed ban takes at least 1 s.
fn ipset_timeout(secs: u64) -> u64 {
    crate::kernel_timeout(secs, crate::IPSET_MAX_TIMEOUT_SECS)
}

/// The ipset input adding `bans`; with `-exist`, an address already present takes the
/// new timeout. Timeout 0 is ipset's "until removed".
pub fn add_script(bans: &[Ban]) -> String {
    let mut s = String::new();
    let (v4, v6) = by_family(bans, |b| b.net);
    for family in [v4, v6] {
        for ban in family {
            let timeout = ban.timeout_secs.map_or(0, ipset_timeout);
            let addr = net_text(ban.net);
            let _ = writeln!(s, "add {} {addr} timeout {timeout}", set_of(&ban, false));
            // Out of the other set of its family, in case the ban changed kind.
            let _ = writeln!(s, "del {} {addr}", set_of(&ban, true));
        }
    }
    s
}

/// The ipset input putting `bans` back into sets just set up: plain adds, without
/// [`add_script`]'s removal from the other set of the family (empty after a set-up),
/// which costs ipset five times the add when the element is absent.
pub fn refill_script(bans: &[Ban]) -> String {
    let mut s = String::new();
    let (v4, v6) = by_family(bans, |b| b.net);
    for family in [v4, v6] {
        for ban in family {
            let timeout = ban.timeout_secs.map_or(0, ipset_timeout);
            let _ = writeln!(
                s,
                "add {} {} timeout {timeout}",
                set_of(&ban, false),
                net_text(ban.net)
            );
        }
    }
    s
}

/// The changes of [`add_script`], for [`crate::nflink::Netlink::change_ipsets`].
pub fn ipset_changes(bans: &[Ban]) -> Vec<crate::nflink::IpsetChange<'static>> {
    let mut out = Vec::with_capacity(bans.len() * 2);
    for ban in bans {
        let net = ban_net(ban.net);
        let timeout = ban.timeout_secs.map_or(0, ipset_timeout);
        out.push(crate::nflink::IpsetChange {
            add: true,
            set: set_of(ban, false),
            net,
            timeout_secs: u32::try_from(timeout).unwrap_or(u32::MAX),
        });
        out.push(crate::nflink::IpsetChange {
            add: false,
            set: set_of(ban, true),
            net,
            timeout_secs: 0,
        });
    }
    out
}

/// The ipset input removing `nets` (with `-exist`, an absent one is no error).
pub fn remove_script(nets: &[IpNet]) -> String {
    let mut s = String::new();
    let (v4, v6) = by_family(nets, |n| *n);
    for (sets, family) in [([SET4, SET4_NEW], v4), ([SET6, SET6_NEW], v6)] {
        for net in family {
            for set in sets {
                let _ = writeln!(s, "del {set} {}", net_text(net));
            }
        }
    }
    s
}

fn ipset_restore(script: String, what: &str) -> Command {
    Command::new("ipset", &["restore", "-exist"], what).with_stdin(script)
}

/// The output of `ipset list -t` for a set of the type synwatch used before range bans,
/// which cannot hold a network.
const OLD_TYPE: &str = "Type: hash:ip\n";

/// The steps that replace sets left by an older synwatch (hash:ip): the chain that uses
/// them is emptied (set-up fills it again) so that they can be destroyed, and set-up
/// creates them anew with the saved bans. Nothing where the sets are already hash:net.
fn migrate_plan() -> Vec<Step> {
    let old = |set: &str| {
        Command::new(
            "ipset",
            &["-q", "list", "-t", set],
            format!("look at the type of the {set} ipset"),
        )
    };
    let mut plan = Vec::new();
    for (program, set, _) in FAMILIES {
        plan.push(Step::When {
            check: old(set),
            says: OLD_TYPE,
            then: Box::new(Step::Try(ipt(program, &["-F", CHAIN], "empty the chain"))),
        });
    }
    for (_, set, _, _) in SETS {
        plan.push(Step::When {
            check: old(set),
            says: OLD_TYPE,
            then: Box::new(Step::Try(Command::new(
                "ipset",
                &["destroy", set],
                format!("replace the hash:ip {set} ipset"),
            ))),
        });
    }
    plan
}

/// The plan that sets everything up holding exactly `bans`.
pub fn setup_plan(scope: Scope, bans: &[Ban]) -> Vec<Step> {
    let mut plan = migrate_plan();
    plan.push(Step::Run(ipset_restore(
        sets_script(bans),
        "create the synwatch4/synwatch6 ipsets",
    )));
    for (program, _, _) in FAMILIES {
        let rules: Vec<String> = SETS
            .iter()
            .filter(|(p, ..)| *p == program)
            .flat_map(|&(_, set, _, new_only)| drop_rules(scope, set, new_only))
            .map(|rule| format!("-A {CHAIN} {}", rule.join(" ")))
            .collect();
        let rule = rules.join("\n");
        // Declaring the chain in a --noflush restore creates it, or empties it if a
        // previous run left it.
        let restore = format!("*filter\n:{CHAIN} - [0:0]\n{rule}\nCOMMIT\n");
        plan.push(Step::Run(
            Command::new(
                if program == "iptables" {
                    "iptables-restore"
                } else {
                    "ip6tables-restore"
                },
                &["-w", "--noflush"],
                format!("create the {CHAIN} chain ({program})"),
            )
            .with_stdin(restore),
        ));
        for hook in HOOKS {
            plan.push(jump(program, hook));
        }
        plan.push(Step::If {
            check: ipt(program, &["-n", "-L", DOCKER_HOOK], "look for DOCKER-USER"),
            then: Box::new(jump(program, DOCKER_HOOK)),
        });
    }
    plan
}

/// The chain's rules for `set`, each after `-A CHAIN` (or `-C CHAIN`). For new
/// connections only, two: every protocol's new flows but TCP's, and TCP's new flows but
/// those conntrack picks up in mid-stream (ACK without SYN: a session older than the
/// tracking, which must live on, not a new connection).
fn drop_rules(scope: Scope, set: &str, new_only: bool) -> Vec<Vec<&str>> {
    let base = ["-m", "set", "--match-set", set, "src"];
    let tail = ["-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"];
    if scope == Scope::New || new_only {
        vec![
            [&base[..], &["!", "-p", "tcp"], &tail].concat(),
            [
                &base[..],
                &["-p", "tcp", "!", "--tcp-flags", "SYN,ACK", "ACK"],
                &tail,
            ]
            .concat(),
        ]
    } else {
        vec![[&base[..], &["-j", "DROP"]].concat()]
    }
}

fn jump(program: &'static str, hook: &str) -> Step {
    Step::Unless {
        check: ipt(
            program,
            &["-C", hook, "-j", CHAIN],
            format!("look for the jump from {hook}"),
        ),
        then: ipt(
            program,
            &["-I", hook, "1", "-j", CHAIN],
            format!("jump from {hook} to {CHAIN} ({program})"),
        ),
    }
}

/// The checks that everything set up is in place, each failing when it is not: each
/// set's canary (`ipset test`, which also fails for a missing set), each family's drop
/// rule in the chain and jumps from INPUT and FORWARD. A few milliseconds each, whatever
/// the number of bans.
pub fn check_plan(scope: Scope) -> Vec<Step> {
    let mut plan = Vec::new();
    for (program, set, family, new_only) in SETS {
        plan.push(Step::Run(Command::new(
            "ipset",
            &["-q", "test", set, &canary_of(family).to_string()],
            format!("look for the canary of the {set} ipset"),
        )));
        for drop in drop_rules(scope, set, new_only) {
            let rule = [&["-C", CHAIN][..], &drop].concat();
            plan.push(Step::Run(ipt(
                program,
                &rule,
                format!("look for the rule of the {CHAIN} chain ({program})"),
            )));
        }
    }
    for (program, _, _) in FAMILIES {
        for hook in HOOKS {
            plan.push(Step::Run(ipt(
                program,
                &["-C", hook, "-j", CHAIN],
                format!("look for the jump from {hook}"),
            )));
        }
        // And no other rule in the chain: one put in before synwatch's (`-I SYNWATCH 1
        // -j RETURN`) lets banned sources through as surely as a deleted one.
        let rules = SETS
            .iter()
            .filter(|(p, ..)| *p == program)
            .map(|&(_, set, _, new_only)| drop_rules(scope, set, new_only).len())
            .sum();
        plan.push(Step::Rules {
            list: ipt(
                program,
                &["-S", CHAIN],
                format!("list the rules of the {CHAIN} chain ({program})"),
            ),
            rules,
        });
    }
    plan
}

/// The plan that removes every trace: jumps, chain, sets.
pub fn teardown_plan() -> Vec<Step> {
    let mut plan = Vec::new();
    for (program, _, _) in FAMILIES {
        for hook in HOOKS.iter().chain([&DOCKER_HOOK]) {
            plan.push(Step::UntilFails(ipt(
                program,
                &["-D", hook, "-j", CHAIN],
                format!("remove the jump from {hook}"),
            )));
        }
        plan.push(Step::Try(ipt(program, &["-F", CHAIN], "empty the chain")));
        plan.push(Step::Try(ipt(program, &["-X", CHAIN], "delete the chain")));
    }
    for (_, set, _, _) in SETS {
        plan.push(Step::Try(Command::new(
            "ipset",
            &["destroy", set],
            format!("destroy the {set} ipset"),
        )));
    }
    plan
}

/// Reads `ipset save SET` output: `add SET ADDR[/LEN] timeout N packets P bytes B`.
pub fn parse_ipset_save(text: &str) -> Vec<KernelBan> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("add") {
                return None;
            }
            let _set = words.next()?;
            let net = crate::parse_net(words.next()?)?;
            let mut ban = KernelBan {
                net,
                expires_secs: None,
                packets: None,
                bytes: None,
            };
            while let (Some(key), Some(value)) = (words.next(), words.next()) {
                let value: Option<u64> = value.parse().ok();
                match key {
                    // ipset writes timeout 0 for an entry without one.
                    "timeout" => ban.expires_secs = value.filter(|&v| v > 0),
                    "packets" => ban.packets = value,
                    "bytes" => ban.bytes = value,
                    _ => {}
                }
            }
            Some(ban)
        })
        .collect()
}

/// Sums the packet and byte columns of `iptables -L CHAIN -n -v -x`.
pub fn parse_rule_counters(text: &str) -> DropCounters {
    let mut sum = DropCounters::default();
    for line in text.lines().skip(2) {
        let mut words = line.split_whitespace();
        if let (Some(Ok(p)), Some(Ok(b))) = (
            words.next().map(str::parse::<u64>),
            words.next().map(str::parse::<u64>),
        ) {
            sum.packets += p;
            sum.bytes += b;
        }
    }
    sum
}

/// The iptables backend.
#[derive(Debug)]
pub struct Iptables {
    scope: Scope,
    runner: Box<dyn Runner>,
    /// Where bans go without starting `ipset`, when there is one.
    netlink: Option<crate::nflink::Netlink>,
}

impl Iptables {
    pub fn new(scope: Scope, runner: Box<dyn Runner>) -> Self {
        Self {
            scope,
            runner,
            netlink: None,
        }
    }

    /// Adds bans over this netfilter netlink socket instead of `ipset restore` (which
    /// stays the fallback when the kernel refuses).
    pub fn with_netlink(mut self, netlink: crate::nflink::Netlink) -> Self {
        self.netlink = Some(netlink);
        self
    }

    fn execute(&mut self, plan: &[Step]) -> Result<(), EnforceError> {
        for step in plan {
            self.step(step)?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), EnforceError> {
        match step {
            Step::Run(c) => self.runner.run(c).map(drop),
            Step::Unless { check, then } => match self.runner.run(check) {
                Ok(_) => Ok(()),
                Err(_) => self.runner.run(then).map(drop),
            },
            Step::Try(c) => {
                let _ = self.runner.run(c);
                Ok(())
            }
            Step::UntilFails(c) => {
                // Bounded: a rule cannot be listed more often than this in practice.
                for _ in 0..64 {
                    if self.runner.run(c).is_err() {
                        break;
                    }
                }
                Ok(())
            }
            Step::If { check, then } => match self.runner.run(check) {
                Ok(_) => self.step(then),
                Err(_) => Ok(()),
            },
            Step::When { check, says, then } => match self.runner.run(check) {
                Ok(out) if out.contains(says) => self.step(then),
                _ => Ok(()),
            },
            Step::Rules { list, rules } => {
                let out = self.runner.run(list)?;
                let listed = out.lines().filter(|l| l.starts_with("-A ")).count();
                if listed == *rules {
                    Ok(())
                } else {
                    Err(EnforceError::Output {
                        program: list.program.to_string(),
                        what: list.what.clone(),
                        detail: format!("{listed} rules where synwatch set up {rules}"),
                    })
                }
            }
        }
    }

    fn restore(&mut self, script: String, what: &str) -> Result<(), EnforceError> {
        if script.is_empty() {
            return Ok(());
        }
        self.runner.run(&ipset_restore(script, what)).map(drop)
    }
}

impl Enforcer for Iptables {
    fn backend(&self) -> Backend {
        Backend::Iptables
    }

    fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.execute(&setup_plan(self.scope, bans))
    }

    /// Over netlink when it can (no process start), else one `ipset restore` run; both
    /// make the same changes as [`add_script`].
    fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        if let Some(nl) = self.netlink.as_mut()
            && nl.change_ipsets(&ipset_changes(bans)).is_ok()
        {
            return Ok(());
        }
        self.restore(add_script(bans), "add bans to the synwatch ipsets")
    }

    fn refill(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
        self.restore(
            refill_script(bans),
            "put bans back into the synwatch ipsets",
        )
    }

    fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
        self.restore(remove_script(nets), "remove bans from the synwatch ipsets")
    }

    fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
        let mut all = Vec::new();
        for (_, set, _, _) in SETS {
            let out = self.runner.run(&Command::new(
                "ipset",
                &["save", set],
                format!("list the {set} ipset"),
            ))?;
            all.extend(parse_ipset_save(&out));
        }
        all.retain(|b| !(crate::is_host(b.net) && crate::is_canary(b.net.addr())));
        Ok(all)
    }

    fn counters(&mut self) -> Result<DropCounters, EnforceError> {
        let mut sum = DropCounters::default();
        for (program, _, _) in FAMILIES {
            let out = self.runner.run(&ipt(
                program,
                &["-L", CHAIN, "-n", "-v", "-x"],
                format!("read the {CHAIN} chain's counters"),
            ))?;
            let c = parse_rule_counters(&out);
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        Ok(sum)
    }

    fn present(&mut self) -> bool {
        self.runner
            .run(&Command::new(
                "ipset",
                &["list", "-n", SET4],
                "look for the synwatch4 ipset",
            ))
            .is_ok()
    }

    fn intact(&mut self) -> bool {
        self.execute(&check_plan(self.scope)).is_ok()
    }

    fn teardown(&mut self) -> Result<(), EnforceError> {
        self.execute(&teardown_plan())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::RecordingRunner;
    use crate::test_ban as ban;

    #[test]
    fn timeouts_longer_than_ipset_takes_are_clamped() {
        let long = ban("192.0.2.7", Some(30 * 86_400));
        assert_eq!(
            refill_script(&[long]),
            "add synwatch4 192.0.2.7 timeout 2147483\n"
        );
        assert!(add_script(&[long]).starts_with("add synwatch4 192.0.2.7 timeout 2147483\n"));
        assert_eq!(ipset_changes(&[long])[0].timeout_secs, 2_147_483);
    }

    #[test]
    fn refilling_after_a_set_up_is_plain_adds() {
        assert_eq!(
            refill_script(&[ban("192.0.2.7", Some(60)), ban("2001:db8::7", None)]),
            "add synwatch4 192.0.2.7 timeout 60\nadd synwatch6 2001:db8::7 timeout 0\n"
        );
    }

    #[test]
    fn sets_are_created_emptied_and_filled_in_one_restore() {
        assert_eq!(
            sets_script(&[ban("192.0.2.7", Some(3600)), ban("2001:db8::7", None)]),
            "create synwatch4 hash:net family inet timeout 0 counters maxelem 1048576\n\
             flush synwatch4\n\
             add synwatch4 0.0.0.1 timeout 0\n\
             create synwatch4_new hash:net family inet timeout 0 counters maxelem 1048576\n\
             flush synwatch4_new\n\
             add synwatch4_new 0.0.0.1 timeout 0\n\
             create synwatch6 hash:net family inet6 timeout 0 counters maxelem 1048576\n\
             flush synwatch6\n\
             add synwatch6 100::1 timeout 0\n\
             create synwatch6_new hash:net family inet6 timeout 0 counters maxelem 1048576\n\
             flush synwatch6_new\n\
             add synwatch6_new 100::1 timeout 0\n\
             add synwatch4 192.0.2.7 timeout 3600\n\
             del synwatch4_new 192.0.2.7\n\
             add synwatch6 2001:db8::7 timeout 0\n\
             del synwatch6_new 2001:db8::7\n"
        );
    }

    #[test]
    fn a_flushed_set_or_chain_or_a_removed_jump_is_noticed_cheaply() {
        let runner = RecordingRunner::default();
        let mut ipt = Iptables::new(Scope::New, Box::new(runner.clone()));
        // `iptables -S SYNWATCH` of each family: two sets, two rules each.
        let listing = |rules: usize| {
            let mut text = String::from("-N SYNWATCH\n");
            for _ in 0..rules {
                text.push_str("-A SYNWATCH -m set --match-set synwatch4 src -j DROP\n");
            }
            text
        };
        let (four, five) = (listing(4), listing(5));
        let answers = |rules: &str| {
            for n in 0..18 {
                match n {
                    14 | 17 => runner.answer(Ok(rules)),
                    _ => runner.answer(Ok("")),
                }
            }
        };
        answers(&four);
        assert!(ipt.intact());
        let t = runner.transcript();
        assert_eq!(t.len(), 18, "{t:#?}");
        assert_eq!(t[14], "iptables -w -S SYNWATCH");
        assert_eq!(t[17], "ip6tables -w -S SYNWATCH");
        assert_eq!(t[0], "ipset -q test synwatch4 0.0.0.1");
        assert_eq!(
            t[1],
            "iptables -w -C SYNWATCH -m set --match-set synwatch4 src ! -p tcp -m conntrack --ctstate NEW -j DROP"
        );
        assert_eq!(
            t[2],
            "iptables -w -C SYNWATCH -m set --match-set synwatch4 src -p tcp ! --tcp-flags SYN,ACK ACK -m conntrack --ctstate NEW -j DROP"
        );
        assert_eq!(t[3], "ipset -q test synwatch4_new 0.0.0.1");
        assert_eq!(t[9], "ipset -q test synwatch6_new 100::1");
        assert!(
            t.iter().all(|c| !c.contains(" -L") && !c.contains("save")),
            "{t:#?}"
        );
        // `ipset flush` took the canary (ipset test fails): not intact.
        runner.answer(Err("Warning: 0.0.0.1 is NOT in set synwatch4."));
        assert!(!ipt.intact());
        // `iptables -F SYNWATCH`: the rule check fails.
        runner.answer(Ok(""));
        runner.answer(Err(
            "iptables: Bad rule (does a matching rule exist in that chain?).",
        ));
        assert!(!ipt.intact());
        // Regression: a rule put in before synwatch's (`iptables -I SYNWATCH 1 -j
        // RETURN`) let banned sources through, and every rule check still passed.
        runner.answers.lock().unwrap().clear();
        answers(&five);
        assert!(!ipt.intact());
    }

    #[test]
    fn the_canaries_are_not_bans() {
        let text = "add synwatch4 0.0.0.1 timeout 0 packets 0 bytes 0\nadd synwatch4 192.0.2.1 timeout 5 packets 1 bytes 60\n";
        let runner = RecordingRunner::default();
        runner.answer(Ok(text));
        runner.answer(Ok("add synwatch6 100::1 timeout 0 packets 0 bytes 0\n"));
        let mut ipt = Iptables::new(Scope::All, Box::new(runner));
        let bans = ipt.list().unwrap();
        assert_eq!(bans.len(), 1, "{bans:?}");
        assert_eq!(bans[0].net, crate::parse_net("192.0.2.1").unwrap());
    }

    #[test]
    fn bans_change_only_the_sets() {
        assert_eq!(
            add_script(&[ban("::ffff:192.0.2.9", Some(5))]),
            "add synwatch4 192.0.2.9 timeout 5\ndel synwatch4_new 192.0.2.9\n"
        );
        let mut session = ban("2001:db8::9", None);
        session.new_only = true;
        assert_eq!(
            add_script(&[session]),
            "add synwatch6_new 2001:db8::9 timeout 0\ndel synwatch6 2001:db8::9\n"
        );
        assert_eq!(
            remove_script(&[
                crate::parse_net("192.0.2.9").unwrap(),
                crate::parse_net("2001:db8::1").unwrap()
            ]),
            "del synwatch4 192.0.2.9\ndel synwatch4_new 192.0.2.9\n\
             del synwatch6 2001:db8::1\ndel synwatch6_new 2001:db8::1\n"
        );
        let runner = RecordingRunner::default();
        let mut ipt = Iptables::new(Scope::All, Box::new(runner.clone()));
        ipt.add(&[ban("192.0.2.1", Some(5)), ban("192.0.2.2", Some(5))])
            .unwrap();
        ipt.remove(&[]).unwrap();
        assert_eq!(
            runner.transcript(),
            vec![
                "ipset restore -exist\nadd synwatch4 192.0.2.1 timeout 5\ndel synwatch4_new 192.0.2.1\nadd synwatch4 192.0.2.2 timeout 5\ndel synwatch4_new 192.0.2.2\n"
            ]
        );
    }

    #[test]
    fn setup_creates_one_rule_per_family_and_jumps_only_where_missing() {
        let runner = RecordingRunner::default();
        // The sets are hash:net already (nothing to migrate).
        for _ in 0..6 {
            runner.answer(Ok("Name: synwatch4\nType: hash:net\n"));
        }
        // ipset restore, iptables-restore, -C INPUT fails (no jump yet), -I INPUT,
        // -C FORWARD succeeds (already there), DOCKER-USER lookup fails (no Docker).
        for answer in [
            Ok(""),
            Ok(""),
            Err("no such rule"),
            Ok(""),
            Ok(""),
            Err("no chain"),
        ] {
            runner.answer(answer);
        }
        let mut ipt = Iptables::new(Scope::New, Box::new(runner.clone()));
        ipt.setup(&[]).unwrap();
        let t = runner.transcript();
        assert_eq!(t[0], "ipset -q list -t synwatch4");
        let t = &t[6..];
        assert_eq!(
            t[1],
            "iptables-restore -w --noflush\n*filter\n:SYNWATCH - [0:0]\n-A SYNWATCH -m set --match-set synwatch4 src ! -p tcp -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch4 src -p tcp ! --tcp-flags SYN,ACK ACK -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch4_new src ! -p tcp -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch4_new src -p tcp ! --tcp-flags SYN,ACK ACK -m conntrack --ctstate NEW -j DROP\nCOMMIT\n"
        );
        assert_eq!(t[2], "iptables -w -C INPUT -j SYNWATCH");
        assert_eq!(t[3], "iptables -w -I INPUT 1 -j SYNWATCH");
        assert_eq!(t[4], "iptables -w -C FORWARD -j SYNWATCH");
        assert_eq!(t[5], "iptables -w -n -L DOCKER-USER");
        assert_eq!(
            t[6],
            "ip6tables-restore -w --noflush\n*filter\n:SYNWATCH - [0:0]\n-A SYNWATCH -m set --match-set synwatch6 src ! -p tcp -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch6 src -p tcp ! --tcp-flags SYN,ACK ACK -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch6_new src ! -p tcp -m conntrack --ctstate NEW -j DROP\n-A SYNWATCH -m set --match-set synwatch6_new src -p tcp ! --tcp-flags SYN,ACK ACK -m conntrack --ctstate NEW -j DROP\nCOMMIT\n"
        );
        // Everything after the canned answers succeeds: both jumps exist, Docker too.
        assert_eq!(
            &t[7..],
            [
                "ip6tables -w -C INPUT -j SYNWATCH",
                "ip6tables -w -C FORWARD -j SYNWATCH",
                "ip6tables -w -n -L DOCKER-USER",
                "ip6tables -w -C DOCKER-USER -j SYNWATCH"
            ]
        );
    }

    #[test]
    fn sets_of_the_old_hash_ip_type_are_replaced_at_setup() {
        let runner = RecordingRunner::default();
        // synwatch4 and synwatch4_new are hash:ip; the IPv6 sets do not exist. (Every
        // command takes the next answer.)
        let old = "Name: synwatch4\nType: hash:ip\nRevision: 6\n";
        let none = "The set with the given name does not exist";
        for answer in [
            Ok(old),
            Ok(""),
            Err(none),
            Ok(old),
            Ok(""),
            Ok(old),
            Ok(""),
            Err(none),
            Err(none),
        ] {
            runner.answer(answer);
        }
        let mut ipt = Iptables::new(Scope::All, Box::new(runner.clone()));
        ipt.setup(&[ban("198.51.100.0/24", Some(60))]).unwrap();
        let t = runner.transcript();
        assert_eq!(
            &t[..9],
            [
                "ipset -q list -t synwatch4",
                "iptables -w -F SYNWATCH",
                "ipset -q list -t synwatch6",
                "ipset -q list -t synwatch4",
                "ipset destroy synwatch4",
                "ipset -q list -t synwatch4_new",
                "ipset destroy synwatch4_new",
                "ipset -q list -t synwatch6",
                "ipset -q list -t synwatch6_new",
            ]
        );
        assert!(t[9].starts_with("ipset restore -exist\ncreate synwatch4 hash:net"));
        assert!(
            t[9].contains(
                "add synwatch4 198.51.100.0/24 timeout 60\ndel synwatch4_new 198.51.100.0/24\n"
            ),
            "{}",
            t[9]
        );
    }

    #[test]
    fn ranges_are_hash_net_entries() {
        assert_eq!(
            add_script(&[
                ban("2001:db8:1::/48", None),
                ban("::ffff:198.51.100.0/120", Some(9))
            ]),
            "add synwatch4 198.51.100.0/24 timeout 9\ndel synwatch4_new 198.51.100.0/24\n\
             add synwatch6 2001:db8:1::/48 timeout 0\ndel synwatch6_new 2001:db8:1::/48\n"
        );
        assert_eq!(
            remove_script(&[crate::parse_net("2001:db8:1::/48").unwrap()]),
            "del synwatch6 2001:db8:1::/48\ndel synwatch6_new 2001:db8:1::/48\n"
        );
    }

    #[test]
    fn teardown_removes_jumps_chain_and_sets() {
        let plan = teardown_plan();
        let names: Vec<String> = plan
            .iter()
            .map(|s| match s {
                Step::UntilFails(c) | Step::Try(c) | Step::Run(c) => {
                    format!("{} {}", c.program, c.args.join(" "))
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "iptables -w -D INPUT -j SYNWATCH",
                "iptables -w -D FORWARD -j SYNWATCH",
                "iptables -w -D DOCKER-USER -j SYNWATCH",
                "iptables -w -F SYNWATCH",
                "iptables -w -X SYNWATCH",
                "ip6tables -w -D INPUT -j SYNWATCH",
                "ip6tables -w -D FORWARD -j SYNWATCH",
                "ip6tables -w -D DOCKER-USER -j SYNWATCH",
                "ip6tables -w -F SYNWATCH",
                "ip6tables -w -X SYNWATCH",
                "ipset destroy synwatch4",
                "ipset destroy synwatch4_new",
                "ipset destroy synwatch6",
                "ipset destroy synwatch6_new",
            ]
        );
    }

    #[test]
    fn reads_ipset_entries_and_rule_counters() {
        let save = "create synwatch4 hash:net family inet hashsize 1024 maxelem 1048576 timeout 0 counters\n\
                    add synwatch4 192.0.2.7 timeout 3591 packets 4 bytes 240\n\
                    add synwatch4 192.0.2.8 timeout 0 packets 0 bytes 0\n\
                    add synwatch4 198.51.100.0/24 timeout 0 packets 0 bytes 0\n";
        assert_eq!(
            parse_ipset_save(save),
            vec![
                KernelBan {
                    net: crate::parse_net("192.0.2.7").unwrap(),
                    expires_secs: Some(3591),
                    packets: Some(4),
                    bytes: Some(240)
                },
                KernelBan {
                    net: crate::parse_net("192.0.2.8").unwrap(),
                    expires_secs: None,
                    packets: Some(0),
                    bytes: Some(0)
                },
                KernelBan {
                    net: crate::parse_net("198.51.100.0/24").unwrap(),
                    expires_secs: None,
                    packets: Some(0),
                    bytes: Some(0)
                },
            ]
        );
        let listing = "Chain SYNWATCH (2 references)\n    pkts      bytes target     prot opt in     out     source               destination\n      12      720 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            match-set synwatch4 src\n";
        assert_eq!(
            parse_rule_counters(listing),
            DropCounters {
                packets: 12,
                bytes: 720
            }
        );
    }
}
