//! Prometheus metrics of the live agent (SPEC §5) and the small HTTP server that serves
//! them with `/healthz`.
//!
//! The agent has no other use for an async runtime, so the server is a blocking accept
//! loop on its own thread that hands each client to a thread of its own (at most
//! [`MAX_CLIENTS`] at once; see conns.rs): the request head must arrive whole within
//! [`REQUEST_WITHIN`], so a slow or silent client holds only its own thread, and only
//! that long. Each answer is a page built from atomics, well under a millisecond. Values
//! are plain atomics written by the pipeline threads, so a scrape never waits for the
//! pipeline and the pipeline never waits for a scrape.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::clock::unix_now;
use crate::prom::family;

use synwatch_decode::{DecodeError, ReassemblyStats};
use synwatch_detect::Stats;

/// Counters of one capture interface. The agent keeps spare slots for interfaces that
/// appear while it runs: a slot is unused until it is given a name, and keeps it.
#[derive(Debug, Default)]
pub struct InterfaceMetrics {
    /// `None` for an unused slot (a discovered interface that went gives its slot back).
    name: Mutex<Option<String>>,
    /// Whether the interface is watched right now (capture open, or program attached).
    pub up: AtomicBool,
    /// Why `/healthz` fails on this interface's account (a named interface missing, a
    /// capture that failed), or `None`.
    pub fault: Mutex<Option<String>>,
    /// Packets that reached synwatch (passed the kernel filter).
    pub packets: AtomicU64,
    /// Packets the kernel dropped for want of buffer space.
    pub drops: AtomicU64,
    /// Packets the interface dropped, where the driver says.
    pub if_drops: AtomicU64,
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub interfaces: Vec<InterfaceMetrics>,
    /// Whether interfaces that come up are watched (the every-interface watch: spare
    /// slots): then none watched fails `/healthz`.
    discovering: bool,
    pub attempts_in: AtomicU64,
    pub attempts_out: AtomicU64,
    pub retransmissions: AtomicU64,
    pub stealth_probes: AtomicU64,
    pub scans: AtomicU64,
    pub sweeps: AtomicU64,
    /// Observations dropped because the pipeline's queue was full.
    pub queue_dropped: AtomicU64,
    /// Observations waiting in the queue to the pipeline.
    pub queued: AtomicU64,
    pub tracked_sources: AtomicU64,
    pub sources_evicted: AtomicU64,
    pub first_sightings: AtomicU64,
    pub events_suppressed: AtomicU64,
    /// Events not written to stdout, by [`DropReason`](DropReason).
    pub events_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Blocking: active bans, bans applied, lifted, refused (by reason), failed attempts
    /// to apply, and what the drop rules dropped (read from the kernel's rule counters).
    pub blocked_sources: AtomicU64,
    /// Of the bans held, those on networks wider than one address.
    pub blocked_ranges: AtomicU64,
    pub blocks: AtomicU64,
    pub unblocks: AtomicU64,
    pub bans_refused_allowlisted: AtomicU64,
    pub bans_refused_rate: AtomicU64,
    pub bans_refused_network: AtomicU64,
    /// Scans refused by the cap that wait for room (gauge), bans given after waiting,
    /// and waiting scans forgotten (their source went quiet, became protected, or was
    /// pushed out of the full queue's door by more recently active ones).
    pub bans_waiting: AtomicU64,
    pub bans_delayed: AtomicU64,
    pub bans_abandoned: AtomicU64,
    pub ban_failures: AtomicU64,
    /// Times the rules were found unreadable (flushed by someone) and set up again.
    pub rules_reinstated: AtomicU64,
    pub dropped_packets: AtomicU64,
    pub dropped_bytes: AtomicU64,
    /// Scanners the XDP program banned by itself (read from its counters).
    pub xdp_kernel_bans: AtomicU64,
    /// SYN retransmissions judged by the XDP program (and for fragments through its
    /// table), which never reach the detector; part of `retransmissions` as reported.
    pub xdp_retransmissions: AtomicU64,
    /// The blocking backend in use ("none" when not blocking); set once at start.
    pub backend: std::sync::OnceLock<&'static str>,
    pub decode_errors: [AtomicU64; DecodeError::ALL.len()],
    /// Fragment reassembly, one entry per reassembling thread (each capture thread, and
    /// the XDP ring's reader last), summed when rendered.
    pub reassembly: Vec<Mutex<ReassemblyStats>>,
    /// Unix time (seconds) the pipeline last went round its loop: `/healthz` is healthy
    /// while this is recent.
    pub heartbeat: AtomicI64,
    pub start_time: AtomicI64,
    /// What could not be read of the saved state at start: the database moved aside
    /// (0 or 1), rows skipped, and stretches of a damaged table that did not read.
    pub state_moved_aside: AtomicU64,
    pub state_rows_skipped: AtomicU64,
    pub state_unreadable: AtomicU64,
    /// Saved bans the kernel refused at restore.
    pub state_bans_refused: AtomicU64,
    /// Why the agent runs degraded (protection partly lost, yet worth running on):
    /// said by a `/healthz` that still answers 200, so that a container is not
    /// restarted into the same state over and over.
    pub degraded: Mutex<Vec<String>>,
    /// The longest turn of the pipeline's loop (work after a message or timeout, not the
    /// wait for one), in microseconds, and the turns longer than [`SLOW_TURN`]: how long
    /// packets, bans and control requests waited behind one piece of work.
    pub longest_turn_us: AtomicU64,
    pub slow_turns: AtomicU64,
    /// Bans still to be put back into rules set up again after tampering.
    pub bans_reinstating: AtomicU64,
    /// Bans in the kernel that could not be saved yet, and lifted bans that could not be
    /// removed from the state file (the state directory full or unwritable): retried;
    /// `/healthz` says degraded meanwhile.
    pub bans_unsaved: AtomicU64,
    /// The ban database could only be read at start (its file system took no write):
    /// the saved bans hold, no change is saved until it can be written.
    pub state_unwritable: std::sync::atomic::AtomicBool,
    /// The CrowdSec Local API's counters, when the agent uses it.
    pub crowdsec: std::sync::OnceLock<Arc<crate::crowdsec::Stats>>,
}

/// A turn of the pipeline longer than this counts in `synwatch_pipeline_slow_turns_total`.
pub const SLOW_TURN: Duration = Duration::from_millis(50);

/// Why events were dropped: the label of `synwatch_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// stdout does not take events as fast as they come (the queue is full).
    Blocked,
    /// stdout's reader has gone (EPIPE); nothing more is written.
    Closed,
    /// Writing to stdout failed otherwise (a full disk, an I/O error).
    Failed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::Blocked, DropReason::Closed, DropReason::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Blocked => "output_blocked",
            DropReason::Closed => "output_closed",
            DropReason::Failed => "output_failed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl InterfaceMetrics {
    pub fn in_use(&self) -> bool {
        self.name.lock().is_ok_and(|n| n.is_some())
    }

    /// The interface's name, `None` for an unused slot (one look, so that a slot given
    /// back meanwhile is never shown under an empty name).
    pub fn used_name(&self) -> Option<String> {
        self.name.lock().ok().and_then(|n| n.clone())
    }

    fn is(&self, name: &str) -> bool {
        self.name.lock().is_ok_and(|n| n.as_deref() == Some(name))
    }

    /// Records whether the interface is watched, and what `/healthz` should say.
    pub fn set_state(&self, up: bool, fault: Option<String>) {
        self.up.store(up, Ordering::Relaxed);
        if let Ok(mut held) = self.fault.lock() {
            *held = fault;
        }
    }
}

/// Interface slots are given out and back one at a time.
static ASSIGNING: Mutex<()> = Mutex::new(());

/// How stale the pipeline's heartbeat may be before `/healthz` says it is not running.
const HEALTHY_WITHIN_SECS: i64 = 5;

/// A counter's or gauge's value now.
fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The one sample of a family without labels.
fn plain(v: u64) -> Vec<(String, u64)> {
    vec![(String::new(), v)]
}

impl Metrics {
    /// Without spare interface slots (the binary's tests use it too, so it is not
    /// `cfg(test)` any more now that they live in another crate).
    pub fn new(interfaces: &[String]) -> Self {
        Self::with_spare(interfaces, 0)
    }

    /// With `spare` unnamed interface slots for interfaces that appear later (the
    /// every-interface watch).
    pub fn with_spare(interfaces: &[String], spare: usize) -> Self {
        let now = unix_now();
        Self {
            discovering: spare > 0,
            interfaces: interfaces
                .iter()
                .map(|name| InterfaceMetrics {
                    name: Mutex::new(Some(name.clone())),
                    up: AtomicBool::new(true),
                    ..InterfaceMetrics::default()
                })
                .chain((0..spare).map(|_| InterfaceMetrics::default()))
                .collect(),
            // A slot for every interface slot, spares included, and the XDP ring's
            // reader last (at `interfaces.len()` of the metrics' own list).
            reassembly: (0..=interfaces.len() + spare)
                .map(|_| Mutex::new(ReassemblyStats::default()))
                .collect(),
            heartbeat: AtomicI64::new(crate::clock::now()),
            start_time: AtomicI64::new(now),
            ..Self::default()
        }
    }

    /// Copies the detector's totals (the detector thread calls this after each batch).
    pub fn record_detector(&self, s: &Stats, tracked: usize) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.attempts_in, s.attempts_in);
        set(&self.attempts_out, s.attempts_out);
        set(&self.retransmissions, s.retransmissions);
        set(&self.stealth_probes, s.stealth_probes);
        set(&self.scans, s.scans);
        set(&self.sweeps, s.sweeps);
        set(&self.sources_evicted, s.sources_evicted);
        set(&self.first_sightings, s.first_sightings);
        set(&self.tracked_sources, tracked as u64);
        // In agent time (monotonic): a step of the wall clock neither fails /healthz nor
        // hides a pipeline that stopped.
        self.heartbeat.store(crate::clock::now(), Ordering::Relaxed);
    }

    /// Copies the totals of reassembling thread `slot` (a capture thread's interface
    /// index, or the interface count for the XDP ring's reader).
    pub fn record_reassembly(&self, slot: usize, stats: ReassemblyStats) {
        if let Some(cell) = self.reassembly.get(slot)
            && let Ok(mut held) = cell.lock()
        {
            *held = stats;
        }
    }

    fn render_reassembly(&self, out: &mut String) {
        let mut sum = ReassemblyStats::default();
        for cell in &self.reassembly {
            if let Ok(s) = cell.lock() {
                sum.fragments += s.fragments;
                sum.completed += s.completed;
                sum.dropped += s.dropped;
                sum.evicted += s.evicted;
                sum.timed_out += s.timed_out;
                sum.datagrams_in_use += s.datagrams_in_use;
                sum.bytes_in_use += s.bytes_in_use;
            }
        }
        let plain = |v: u64| [(String::new(), v)];
        family(
            out,
            "synwatch_fragments_total",
            "counter",
            "IP fragments that reached synwatch's reassembly.",
            &plain(sum.fragments),
        );
        family(
            out,
            "synwatch_reassembled_datagrams_total",
            "counter",
            "Fragmented datagrams whose transport header was made whole (and judged).",
            &plain(sum.completed),
        );
        family(
            out,
            "synwatch_reassembly_failures_total",
            "counter",
            "Incomplete datagrams given up, by reason: overlapping or invalid fragments (dropped as Linux drops them), pushed out by the table's bounds (oldest first), or timed out (IPv4 30 s, IPv6 60 s).",
            &[
                ("{reason=\"invalid\"}".into(), sum.dropped),
                ("{reason=\"evicted\"}".into(), sum.evicted),
                ("{reason=\"timeout\"}".into(), sum.timed_out),
            ],
        );
        family(
            out,
            "synwatch_reassembly_datagrams",
            "gauge",
            "Incomplete datagrams held for reassembly.",
            &plain(sum.datagrams_in_use),
        );
        family(
            out,
            "synwatch_reassembly_bytes",
            "gauge",
            "Bytes held for reassembly (bounded).",
            &plain(sum.bytes_in_use),
        );
    }

    /// Records how long one turn of the pipeline's loop took.
    pub fn record_turn(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.longest_turn_us.fetch_max(us, Ordering::Relaxed);
        if took > SLOW_TURN {
            self.slow_turns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records what could not be read of the saved state, for `/healthz` and `/metrics`.
    pub fn record_state_damage(&self, damage: &crate::state::Damage) {
        let moved = damage.moved_aside.is_some() || damage.recovered_from.is_some();
        self.state_moved_aside
            .store(u64::from(moved), Ordering::Relaxed);
        self.state_unreadable
            .store(damage.unreadable.len() as u64, Ordering::Relaxed);
        self.state_rows_skipped
            .store(damage.rows_skipped, Ordering::Relaxed);
        self.state_bans_refused
            .store(damage.bans_refused, Ordering::Relaxed);
        for why in damage.reasons() {
            self.record_degraded(why);
        }
    }

    /// Records why the agent runs with less protection than asked, for `/healthz`.
    pub fn record_degraded(&self, why: String) {
        if let Ok(mut held) = self.degraded.lock() {
            held.push(why);
        }
    }

    /// The body of a healthy `/healthz`: `ok`, or `degraded` and why, one line each.
    pub fn healthy_body(&self) -> String {
        let mut why = match self.degraded.lock() {
            Ok(why) => why.clone(),
            Err(_) => Vec::new(),
        };
        if self.state_unwritable.load(Ordering::Relaxed) {
            why.push(
                "the ban database could only be read at start (its file system is full or gives I/O errors): the saved bans are enforced, but no change is saved until it can be written; retried"
                    .to_owned(),
            );
        }
        let unsaved = self.bans_unsaved.load(Ordering::Relaxed);
        if unsaved > 0 {
            why.push(format!(
                "{unsaved} change(s) to the saved bans (new bans, lifted bans) could not be saved (the state directory is full or unwritable): a restart would not see them; saving is retried"
            ));
        }
        if why.is_empty() {
            "ok\n".to_owned()
        } else {
            format!("degraded\n{}\n", why.join("\n"))
        }
    }

    /// `Ok` while the pipeline runs and every source works; else why not, one line per
    /// fault (the body of a failing `/healthz`).
    pub fn health(&self) -> Result<(), String> {
        let mut faults = String::new();
        if crate::clock::now() - self.heartbeat.load(Ordering::Relaxed) > HEALTHY_WITHIN_SECS {
            faults.push_str("the capture pipeline is not running\n");
        }
        // Watching every interface, one that went gives its slot back (libpcap) or keeps
        // it, not up (XDP): none watched is a lost source too (one that comes up is
        // watched again).
        let watched = |i: &InterfaceMetrics| i.in_use() && i.up.load(Ordering::Relaxed);
        if self.discovering && !self.interfaces.iter().any(watched) {
            faults.push_str("no network interface is watched: every one went away\n");
        }
        for iface in &self.interfaces {
            if let Ok(fault) = iface.fault.lock()
                && let Some(why) = fault.as_deref()
            {
                faults.push_str(why);
                faults.push('\n');
            }
        }
        if faults.is_empty() {
            Ok(())
        } else {
            Err(faults)
        }
    }

    /// The slot of interface `name`: the one it had, else the first unused one (`None`
    /// when every slot is taken).
    pub fn interface_slot(&self, name: &str) -> Option<usize> {
        let _one_at_a_time = ASSIGNING.lock();
        if let Some(slot) = self.interface_held(name) {
            return Some(slot);
        }
        let slot = self.interfaces.iter().position(|i| !i.in_use())?;
        if let Ok(mut held) = self.interfaces[slot].name.lock() {
            *held = Some(name.to_owned());
        }
        Some(slot)
    }

    /// The slot that holds interface `name` now, if one does.
    pub fn interface_held(&self, name: &str) -> Option<usize> {
        self.interfaces.iter().position(|i| i.is(name))
    }

    /// Gives a discovered interface's slot back (the interface went): its series leave
    /// `/metrics`, and the slot serves the next interface that comes up, from zero.
    pub fn release_interface(&self, slot: usize) {
        let _one_at_a_time = ASSIGNING.lock();
        self.release_locked(slot);
    }

    /// [`Metrics::release_interface`], with `ASSIGNING` held.
    fn release_locked(&self, slot: usize) {
        let Some(iface) = self.interfaces.get(slot) else {
            return;
        };
        iface.set_state(false, None);
        for counter in [&iface.packets, &iface.drops, &iface.if_drops] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Ok(mut held) = iface.name.lock() {
            *held = None;
        }
    }

    /// Gives the slot of interface `name` back, if one holds it (see
    /// [`Metrics::release_interface`]).
    pub fn release_named(&self, name: &str) {
        let _one_at_a_time = ASSIGNING.lock();
        if let Some(slot) = self.interface_held(name) {
            self.release_locked(slot);
        }
    }

    /// Sets the packets and drops of interface `name`, where a slot holds it (under the
    /// lock that gives slots out: never into a slot given to another interface since).
    pub fn store_interface(&self, name: &str, packets: u64, drops: u64) {
        let _one_at_a_time = ASSIGNING.lock();
        if let Some(iface) = self.interface_held(name).map(|s| &self.interfaces[s]) {
            iface.packets.store(packets, Ordering::Relaxed);
            iface.drops.store(drops, Ordering::Relaxed);
        }
    }

    /// The page in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_traffic(&mut out);
        self.render_blocking(&mut out);
        self.render_kernel(&mut out);
        self.render_interfaces(&mut out);
        self.render_pipeline(&mut out);
        self.render_turns(&mut out);
        self.render_reassembly(&mut out);
        // Served without the fleet too (zero), so that its alert and panels always
        // find their series.
        match self.crowdsec.get() {
            Some(c) => c.render(&mut out),
            None => crate::crowdsec::Stats::default().render(&mut out),
        }
        process_metrics(&mut out, self.start_time.load(Ordering::Relaxed));
        out
    }

    /// What was seen (attempts, probes, scans, sweeps), the queue to the pipeline, and
    /// the saved state's damage.
    fn render_traffic(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            family(out, name, kind, help, samples);
        };
        family(
            "synwatch_new_connections_total",
            "counter",
            "New TCP connection attempts (SYN without ACK, retransmissions excluded), by direction.",
            &[
                ("{direction=\"in\"}".into(), get(&self.attempts_in)),
                ("{direction=\"out\"}".into(), get(&self.attempts_out)),
            ],
        );
        family(
            "synwatch_retransmitted_attempts_total",
            "counter",
            "SYNs repeating a 4-tuple seen within the window (not new attempts).",
            &plain(get(&self.retransmissions) + get(&self.xdp_retransmissions)),
        );
        family(
            "synwatch_stealth_probes_total",
            "counter",
            "TCP segments with none of SYN, ACK, RST (NULL, FIN, Xmas probes).",
            &plain(get(&self.stealth_probes)),
        );
        family(
            "synwatch_port_scans_total",
            "counter",
            "Port scans detected (one per scanning source and episode).",
            &plain(get(&self.scans)),
        );
        family(
            "synwatch_queue_dropped_total",
            "counter",
            "Observations dropped because the queue from capture to the pipeline was full (the pipeline fell behind); bounded instead of growing.",
            &plain(get(&self.queue_dropped)),
        );
        family(
            "synwatch_queue_observations",
            "gauge",
            "Observations waiting in the queue from capture to the pipeline (at most 262,144; beyond it they are dropped and counted in synwatch_queue_dropped_total).",
            &plain(get(&self.queued)),
        );
        family(
            "synwatch_state_damage",
            "gauge",
            "What of the saved ban database could not be read at start: file_moved_aside is 1 when it was no sound database (moved aside; a damaged one's readable bans restored, an unreadable one's not), unreadable_stretches the stretches of rows of a damaged one that could not be read, rows_skipped the rows that did not read, bans_refused the saved bans the kernel refused (not restored; the others were). /healthz then says degraded.",
            &[
                (
                    "{kind=\"file_moved_aside\"}".into(),
                    get(&self.state_moved_aside),
                ),
                (
                    "{kind=\"unreadable_stretches\"}".into(),
                    get(&self.state_unreadable),
                ),
                (
                    "{kind=\"rows_skipped\"}".into(),
                    get(&self.state_rows_skipped),
                ),
                (
                    "{kind=\"bans_refused\"}".into(),
                    get(&self.state_bans_refused),
                ),
            ],
        );
        family(
            "synwatch_address_sweeps_total",
            "counter",
            "Address sweeps detected: unanswered attempts to more than --max-hosts hosts on one port (one per source and episode).",
            &plain(get(&self.sweeps)),
        );
    }

    /// The bans: held, given, lifted, refused, waiting, failed.
    fn render_blocking(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            family(out, name, kind, help, samples);
        };
        family(
            "synwatch_blocked_sources",
            "gauge",
            "Sources currently blocked.",
            &plain(get(&self.blocked_sources)),
        );
        family(
            "synwatch_blocked_ranges",
            "gauge",
            "Of the blocked sources, the bans on networks wider than one address (an IPv6 scanner's /64, a manual CIDR).",
            &plain(get(&self.blocked_ranges)),
        );
        family(
            "synwatch_blocks_total",
            "counter",
            "Bans applied in the kernel (scans and manual bans).",
            &plain(get(&self.blocks)),
        );
        family(
            "synwatch_unblocks_total",
            "counter",
            "Bans lifted (expired, removed or flushed).",
            &plain(get(&self.unblocks)),
        );
        family(
            "synwatch_bans_refused_total",
            "counter",
            "Bans not given at once, by reason: the source is protected (allowlisted, local, a gateway, router or resolver), the cap on new bans per minute was reached, or the source's network (/24, /48) had its share of it (those two wait: synwatch_bans_waiting).",
            &[
                (
                    "{reason=\"allowlisted\"}".into(),
                    get(&self.bans_refused_allowlisted),
                ),
                (
                    "{reason=\"rate_limited\"}".into(),
                    get(&self.bans_refused_rate),
                ),
                (
                    "{reason=\"network_share\"}".into(),
                    get(&self.bans_refused_network),
                ),
            ],
        );
        family(
            "synwatch_bans_waiting",
            "gauge",
            "Scans refused by the cap on new bans, waiting for room while their source is active (strongest evidence first).",
            &plain(get(&self.bans_waiting)),
        );
        family(
            "synwatch_bans_delayed_total",
            "counter",
            "Bans given to scans that had waited for the cap.",
            &plain(get(&self.bans_delayed)),
        );
        family(
            "synwatch_bans_abandoned_total",
            "counter",
            "Waiting scans forgotten: the source went quiet for a window, became protected, or was pushed out of the full queue's door.",
            &plain(get(&self.bans_abandoned)),
        );
        family(
            "synwatch_ban_failures_total",
            "counter",
            "Attempts to change the kernel's ban set that failed (each is logged and retried).",
            &plain(get(&self.ban_failures)),
        );
        family(
            "synwatch_rules_reinstated_total",
            "counter",
            "Times synwatch's firewall rules could not be read (a flushed ruleset) and were set up again with the running bans, bans found deleted one by one were put back, or its XDP program was found detached and attached again.",
            &plain(get(&self.rules_reinstated)),
        );
    }

    /// What the kernel did with the bans: drops, the XDP program's own bans, the backend.
    fn render_kernel(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            family(out, name, kind, help, samples);
        };
        family(
            "synwatch_dropped_packets_total",
            "counter",
            "Packets dropped by synwatch's rules, from the kernel's rule counters.",
            &plain(get(&self.dropped_packets)),
        );
        family(
            "synwatch_dropped_bytes_total",
            "counter",
            "Bytes dropped by synwatch's rules, from the kernel's rule counters.",
            &plain(get(&self.dropped_bytes)),
        );
        family(
            "synwatch_xdp_kernel_bans_total",
            "counter",
            "Scanners the XDP program detected and banned by itself, dropping the packet that made them scanners (the detector decides the ban's length and reports it).",
            &plain(get(&self.xdp_kernel_bans)),
        );
        family(
            "synwatch_block_backend_info",
            "gauge",
            "The blocking backend in use.",
            &[(
                format!(
                    "{{backend=\"{}\"}}",
                    self.backend.get().copied().unwrap_or("none")
                ),
                1,
            )],
        );
    }

    /// Per interface: up, packets, drops; and what could not be decoded.
    fn render_interfaces(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            family(out, name, kind, help, samples);
        };
        let by_iface = |f: &dyn Fn(&InterfaceMetrics) -> u64| -> Vec<(String, u64)> {
            self.interfaces
                .iter()
                .filter_map(|i| Some((i.used_name()?, i)))
                .map(|(name, i)| (format!("{{interface=\"{}\"}}", escape(&name)), f(i)))
                .collect()
        };
        family(
            "synwatch_interface_up",
            "gauge",
            "Whether the interface is watched right now (1), or missing or failed and waited for (0).",
            &by_iface(&|i| u64::from(i.up.load(Ordering::Relaxed))),
        );
        // Required names (SPEC §5): with no interface watched (`--source sockets`, which
        // reads no packets) each is one sample of 0 without labels, so that it is there.
        let or_zero = |samples: Vec<(String, u64)>| {
            if samples.is_empty() {
                vec![(String::new(), 0)]
            } else {
                samples
            }
        };
        family(
            "synwatch_packets_total",
            "counter",
            "Packets that passed the kernel filter and reached synwatch, by interface.",
            &or_zero(by_iface(&|i| get(&i.packets))),
        );
        family(
            "synwatch_capture_drops_total",
            "counter",
            "Packets the kernel dropped before synwatch could read them (buffer full), by interface.",
            &or_zero(by_iface(&|i| get(&i.drops))),
        );
        family(
            "synwatch_interface_drops_total",
            "counter",
            "Packets the network interface dropped, as its driver reports, by interface.",
            &by_iface(&|i| get(&i.if_drops)),
        );
        family(
            "synwatch_decode_errors_total",
            "counter",
            "Packets that could not be decoded, by kind.",
            &DecodeError::ALL
                .iter()
                .map(|k| {
                    (
                        format!("{{kind=\"{}\"}}", k.as_str()),
                        get(&self.decode_errors[k.index()]),
                    )
                })
                .collect::<Vec<_>>(),
        );
    }

    /// The detector, the event output, the heartbeat and the version.
    fn render_pipeline(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            family(out, name, kind, help, samples);
        };
        family(
            "synwatch_tracked_sources",
            "gauge",
            "Sources the detector holds state for.",
            &plain(get(&self.tracked_sources)),
        );
        family(
            "synwatch_sources_evicted_total",
            "counter",
            "Sources dropped at the tracking cap before their state expired.",
            &plain(get(&self.sources_evicted)),
        );
        family(
            "synwatch_first_sightings_total",
            "counter",
            "Attempts of untracked sources seen while the source table was full, written down apart instead of evicting a tracked source (a source gets a slot when it comes back within the window).",
            &plain(get(&self.first_sightings)),
        );
        family(
            "synwatch_events_suppressed_total",
            "counter",
            "Connection events not printed by the per-source log rate limit (still counted here).",
            &plain(get(&self.events_suppressed)),
        );
        family(
            "synwatch_events_dropped_total",
            "counter",
            "Events not written to stdout, by reason: its reader does not keep up (output_blocked: the bounded queue to the writer is full), has gone (output_closed: EPIPE), or writing failed (output_failed). Detecting and blocking go on regardless.",
            &DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        format!("{{reason=\"{}\"}}", r.as_str()),
                        get(&self.events_dropped[r.index()]),
                    )
                })
                .collect::<Vec<_>>(),
        );
        family(
            "synwatch_pipeline_heartbeat_timestamp_seconds",
            "gauge",
            "Unix time the pipeline last went round its loop (at least once a second while it runs; /healthz fails once this is too old).",
            &plain(
                u64::try_from(
                    crate::clock::wall_offset().to_wall(self.heartbeat.load(Ordering::Relaxed)),
                )
                .unwrap_or(0),
            ),
        );
        family(
            "synwatch_build_info",
            "gauge",
            "Version of the running synwatch.",
            &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
        );
    }
}

impl Metrics {
    fn render_turns(&self, out: &mut String) {
        let longest = self.longest_turn_us.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP synwatch_pipeline_longest_turn_seconds The longest one turn of the pipeline took since start (handling a batch of packets, applying bans, a control request): the longest any packet or ban waited behind other work.\n\
             # TYPE synwatch_pipeline_longest_turn_seconds gauge\n\
             synwatch_pipeline_longest_turn_seconds {}.{:06}",
            longest / 1_000_000,
            longest % 1_000_000
        );
        family(
            out,
            "synwatch_pipeline_slow_turns_total",
            "counter",
            "Turns of the pipeline that took longer than 50 ms.",
            &[(String::new(), self.slow_turns.load(Ordering::Relaxed))],
        );
        family(
            out,
            "synwatch_bans_reinstating",
            "gauge",
            "Bans still to be put back into synwatch's rules after someone removed them (they go back a chunk every 100 ms).",
            &[(String::new(), self.bans_reinstating.load(Ordering::Relaxed))],
        );
        family(
            out,
            "synwatch_bans_unsaved",
            "gauge",
            "Changes to the saved bans not written to the state file yet (the state directory full or unwritable; retried every 5 s): bans in the kernel a restart would lose, lifted bans a restart would bring back. /healthz says degraded meanwhile.",
            &[(String::new(), self.bans_unsaved.load(Ordering::Relaxed))],
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The standard `process_*` metrics, from /proc/self.
fn process_metrics(out: &mut String, start_time: i64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name; vsize 23
    // (20 after), rss in pages 24 (21 after). Clock ticks and pages are the Linux norms.
    let cpu_secs = (field(11) + field(12)) as f64 / 100.0;
    let vsize = field(20);
    let rss = field(21) * 4096;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu_secs}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
         # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
         # TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {vsize}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_max_fds Maximum number of open file descriptors.\n\
         # TYPE process_max_fds gauge\nprocess_max_fds {max_fds}\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start_time}\n"
    );
}

/// Binds `addr` (so that a taken port is said at start, not later).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// The metrics server's socket: bound at start, or an address that could not be bound
/// then (taken by another process, say), tried again every [`REBIND_EVERY`] while the
/// agent runs and blocks without it: anyone who can take a port first must not be able
/// to keep the agent from enforcing.
#[derive(Debug)]
pub enum Socket {
    Bound(TcpListener),
    Retry(SocketAddr),
}

/// How often an address that could not be bound is tried again.
pub const REBIND_EVERY: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/healthz` until `stop` is set (the thread ends within 200 ms of
/// it: join the handle); with [`Socket::Retry`], once the address can be bound.
pub fn serve(
    socket: Socket,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> io::Result<thread::JoinHandle<()>> {
    if let Socket::Bound(listener) = &socket {
        listener.set_nonblocking(true)?;
    }
    thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            let listener = match socket {
                Socket::Bound(listener) => listener,
                Socket::Retry(addr) => match rebind(addr, &stop) {
                    Some(listener) => listener,
                    None => return,
                },
            };
            let limit = crate::conns::Limit::new("metrics-client", MAX_CLIENTS, head_whole);
            let accept = |l: &TcpListener| l.accept().map(|(stream, _)| stream);
            crate::conns::accept_until(&listener, accept, &stop, |stream| {
                let metrics = Arc::clone(&metrics);
                limit.spawn(stream, move |stream, reading| {
                    let _ = answer(stream, reading, &metrics);
                });
            });
        })
}

/// Tries `addr` every [`REBIND_EVERY`] until it is bound (said once) or `stop` is set.
fn rebind(addr: SocketAddr, stop: &AtomicBool) -> Option<TcpListener> {
    let step = Duration::from_millis(200);
    loop {
        let mut waited = Duration::ZERO;
        while waited < REBIND_EVERY {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            thread::sleep(step);
            waited += step;
        }
        if let Ok(listener) = bind(addr)
            && listener.set_nonblocking(true).is_ok()
        {
            tracing::warn!("serving /metrics and /healthz on {addr} at last");
            return Some(listener);
        }
    }
}

/// Clients served at once; more are closed unanswered, or make room by closing the one
/// that has waited longest for its request. Room for many: a client reopening idle
/// connections as fast as they are closed must hold more than this many to close
/// anyone's at all, and then a health check's connection is closed only if its request
/// is still not in after this many others came (a thread each, a few pages of stack).
const MAX_CLIENTS: usize = 64;

/// How long a client has to send its whole request head, and then to take the answer.
const REQUEST_WITHIN: Duration = Duration::from_secs(2);

/// Whether an HTTP request head has come whole.
fn head_whole(r: &[u8]) -> bool {
    r.windows(4).any(|w| w == b"\r\n\r\n")
}

fn answer(
    mut stream: TcpStream,
    reading: crate::conns::Reading,
    metrics: &Metrics,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut request = Vec::with_capacity(512);
    // Read up to the end of the request head (or what fits): only its first line matters.
    crate::conns::read_request(
        &mut stream,
        crate::conns::deadline(REQUEST_WITHIN),
        2048,
        &mut request,
        head_whole,
    )?;
    // The request is in: from here on, this connection is not closed to make room.
    drop(reading);
    stream.set_write_timeout(Some(REQUEST_WITHIN))?;
    let head = String::from_utf8_lossy(&request);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = origin_path(path);
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET" | "HEAD", "/healthz") => match metrics.health() {
            Ok(()) => (
                "200 OK",
                "text/plain; charset=utf-8",
                metrics.healthy_body(),
            ),
            Err(why) => ("503 Service Unavailable", "text/plain; charset=utf-8", why),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "synwatch serves /metrics and /healthz\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    // HEAD: the head a GET would have, its length included, and no body.
    let length = body.len();
    let body = if method == "HEAD" { "" } else { body.as_str() };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    )?;
    stream.flush()
}

/// The path of a request target, without its query: from the usual origin form
/// (`/metrics?x`) or the absolute form a proxy sends (`http://host:9809/metrics`), which
/// HTTP/1.1 servers must take too.
fn origin_path(target: &str) -> &str {
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    target.split(['?', '#']).next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Serves `metrics` on a port of its own: its address, and the flag that stops it.
    fn start(metrics: &Arc<Metrics>) -> (SocketAddr, Arc<AtomicBool>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        serve(
            Socket::Bound(listener),
            Arc::clone(metrics),
            Arc::clone(&stop),
        )
        .expect("serve");
        (addr, stop)
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        reply
    }

    /// Regression: with spare interface slots (the every-interface watch, the default),
    /// the XDP ring's reader recorded its reassembly in a slot that did not exist, and
    /// `synwatch_fragments_total` stayed 0 under `--source xdp`.
    #[test]
    fn the_xdp_readers_reassembly_counts_beside_spare_interface_slots() {
        let m = Metrics::with_spare(&["eth0".to_owned()], crate::links::SPARE_SLOTS);
        let stats = ReassemblyStats {
            fragments: 7,
            completed: 2,
            ..ReassemblyStats::default()
        };
        m.record_reassembly(m.interfaces.len(), stats);
        let text = m.render();
        assert!(text.contains("synwatch_fragments_total 7"), "{text}");
        assert!(
            text.contains("synwatch_reassembled_datagrams_total 2"),
            "{text}"
        );
    }

    #[test]
    fn targets_in_origin_and_absolute_form() {
        assert_eq!(origin_path("/metrics"), "/metrics");
        assert_eq!(origin_path("/metrics?name[]=x"), "/metrics");
        assert_eq!(origin_path("http://127.0.0.1:9809/healthz"), "/healthz");
        assert_eq!(origin_path("http://[::1]:9809/metrics?x"), "/metrics");
        assert_eq!(origin_path("http://host"), "/");
        assert_eq!(origin_path(""), "");
    }

    /// HEAD answers the head a GET would: the same length, no body.
    #[test]
    fn head_says_the_length_of_what_get_would_send() {
        let metrics = Arc::new(Metrics::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn({
            let metrics = Arc::clone(&metrics);
            move || {
                for _ in 0..2 {
                    let (stream, _) = listener.accept().expect("accept");
                    let reading = crate::conns::Reading::default();
                    answer(stream, reading, &metrics).expect("answer");
                }
            }
        });
        let ask = |method: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut reply = String::new();
            s.read_to_string(&mut reply).expect("read");
            reply
        };
        let get = ask("GET");
        let head = ask("HEAD");
        server.join().expect("server");
        let (get_head, body) = get.split_once("\r\n\r\n").expect("head");
        assert!(
            get_head.contains(&format!("Content-Length: {}", body.len())),
            "{get}"
        );
        assert!(!body.is_empty());
        assert_eq!(head, format!("{get_head}\r\n\r\n"));
    }

    #[test]
    fn the_required_packet_counters_are_there_without_an_interface() {
        let page = Metrics::new(&[]).render();
        for line in ["synwatch_packets_total 0", "synwatch_capture_drops_total 0"] {
            assert!(page.lines().any(|l| l == line), "lacks {line}:\n{page}");
        }
        let watched = Metrics::new(&["eth0".to_owned()]);
        watched.interfaces[0].packets.store(5, Ordering::Relaxed);
        let page = watched.render();
        assert!(page.contains("synwatch_packets_total{interface=\"eth0\"} 5"));
        assert!(!page.lines().any(|l| l == "synwatch_packets_total 0"));
    }

    #[test]
    fn serves_metrics_health_and_nothing_else() {
        let metrics = Arc::new(Metrics::new(&["eth0".to_owned()]));
        metrics.attempts_in.store(7, Ordering::Relaxed);
        metrics.interfaces[0].drops.store(3, Ordering::Relaxed);
        let (addr, stop) = start(&metrics);

        let page = get(addr, "/metrics");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"));
        for line in [
            "synwatch_new_connections_total{direction=\"in\"} 7",
            "synwatch_new_connections_total{direction=\"out\"} 0",
            "synwatch_capture_drops_total{interface=\"eth0\"} 3",
            "synwatch_port_scans_total 0",
            "synwatch_blocked_sources 0",
            "synwatch_blocks_total 0",
            "synwatch_tracked_sources 0",
            "# TYPE synwatch_packets_total counter",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(page.contains(line), "lacks {line}:\n{page}");
        }
        assert!(page.contains("synwatch_build_info{version=\""));
        let heartbeat: i64 = page
            .lines()
            .find_map(|l| l.strip_prefix("synwatch_pipeline_heartbeat_timestamp_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("the heartbeat gauge");
        assert!((unix_now() - heartbeat).abs() <= 5, "{heartbeat}");
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        metrics.interfaces[0].set_state(false, Some("eth0 is missing".into()));
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.ends_with("\r\n\r\neth0 is missing\n"), "{health}");
        assert!(get(addr, "/metrics").contains("synwatch_interface_up{interface=\"eth0\"} 0"));
        metrics.interfaces[0].set_state(true, None);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        metrics.heartbeat.store(0, Ordering::Relaxed);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/").starts_with("HTTP/1.1 404"));
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn the_longest_turn_and_the_slow_ones_are_kept() {
        let metrics = Metrics::new(&["eth0".to_owned()]);
        for ms in [30, 70, 10, 51, 50] {
            metrics.record_turn(Duration::from_millis(ms));
        }
        let page = metrics.render();
        assert!(
            page.contains("\nsynwatch_pipeline_longest_turn_seconds 0.070000\n"),
            "{page}"
        );
        assert!(
            page.contains("\nsynwatch_pipeline_slow_turns_total 2\n"),
            "{page}"
        );
        assert!(page.contains("# TYPE synwatch_pipeline_longest_turn_seconds gauge\n"));
    }

    #[test]
    fn counts_go_only_to_the_slot_that_holds_the_name_now() {
        let metrics = Metrics::with_spare(&["eth0".to_owned()], 1);
        let series = |name: &str| format!("synwatch_packets_total{{interface=\"{name}\"}}");
        metrics.store_interface("eth0", 7, 1);
        assert!(
            metrics
                .render()
                .contains(&format!("{} 7\n", series("eth0")))
        );
        // A name no slot holds (gone, or no slot was left for it) is not counted.
        metrics.store_interface("veth1", 5, 0);
        assert!(!metrics.render().contains(&series("veth1")));
        // eth0 goes: its slot serves veth1, from zero, and eth0's counts (read before it
        // went) land nowhere.
        metrics.release_named("eth0");
        assert_eq!(metrics.interface_slot("veth1"), Some(0));
        metrics.store_interface("eth0", 9, 1);
        let page = metrics.render();
        assert!(page.contains(&format!("{} 0\n", series("veth1"))), "{page}");
        assert!(!page.contains(&series("eth0")), "{page}");
        metrics.store_interface("veth1", 3, 0);
        assert!(
            metrics
                .render()
                .contains(&format!("{} 3\n", series("veth1")))
        );
        // Releasing a name no slot holds changes nothing.
        metrics.release_named("eth0");
        assert_eq!(metrics.interface_slot("veth1"), Some(0));
    }

    #[test]
    fn health_fails_once_every_discovered_interface_went() {
        let metrics = Metrics::with_spare(&["eth0".to_owned()], 2);
        assert_eq!(metrics.health(), Ok(()));
        let slot = metrics.interface_slot("eth1").expect("a spare slot");
        metrics.interfaces[slot].set_state(true, None);
        metrics.release_interface(0);
        assert_eq!(metrics.health(), Ok(()));
        metrics.release_interface(slot);
        let why = metrics.health().expect_err("nothing is watched");
        assert!(why.contains("no network interface is watched"), "{why}");
        let slot = metrics.interface_slot("eth2").expect("a slot again");
        metrics.interfaces[slot].set_state(true, None);
        assert_eq!(metrics.health(), Ok(()));
        // One that keeps its slot but is not watched (the XDP source's gone interface).
        metrics.interfaces[slot].set_state(false, None);
        assert!(metrics.health().is_err());
        // Reading the socket table, no interface is watched at all, and that is sound;
        // a named interface that is missing says so itself.
        assert_eq!(Metrics::new(&[]).health(), Ok(()));
        let named = Metrics::new(&["eth0".to_owned()]);
        named.interfaces[0].set_state(false, Some("eth0 is missing".into()));
        assert_eq!(named.health(), Err("eth0 is missing\n".to_owned()));
    }

    #[test]
    fn damaged_state_keeps_healthz_up_and_says_degraded() {
        let metrics = Arc::new(Metrics::new(&["eth0".to_owned()]));
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve(
            Socket::Bound(listener),
            Arc::clone(&metrics),
            Arc::clone(&stop),
        )
        .expect("serve");
        assert!(get(addr, "/healthz").ends_with("\r\n\r\nok\n"));
        metrics.record_state_damage(&crate::state::Damage {
            moved_aside: Some("/var/lib/synwatch/bans.db.corrupt-1".into()),
            rows_skipped: 2,
            ..Default::default()
        });
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        assert!(
            health.ends_with(
                "\r\n\r\ndegraded\nthe ban database was unreadable and moved to /var/lib/synwatch/bans.db.corrupt-1: its bans were not restored\n2 row(s) of the ban database did not read and were skipped\n"
            ),
            "{health}"
        );
        let page = get(addr, "/metrics");
        assert!(
            page.contains("synwatch_state_damage{kind=\"file_moved_aside\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("synwatch_state_damage{kind=\"rows_skipped\"} 2"),
            "{page}"
        );
        // A real failure still wins.
        metrics.interfaces[0].set_state(false, Some("eth0 is missing".into()));
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
        // Asked to stop, the server's thread ends (the agent joins it) and lets the port go.
        stop.store(true, Ordering::Relaxed);
        server.join().expect("the server thread ends");
        assert!(
            TcpStream::connect(addr).is_err(),
            "the port is still served"
        );
    }

    #[test]
    fn slow_and_silent_clients_delay_nobody_and_are_cut_at_the_deadline() {
        let metrics = Arc::new(Metrics::new(&["eth0".to_owned()]));
        let (addr, stop) = start(&metrics);

        // Five silent connections, and one that sends a byte every 1.5 s.
        let silent: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut slow = TcpStream::connect(addr).expect("connect");
        let mut dripping = slow.try_clone().expect("clone");
        let drip = thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\n\r\n" {
                if dripping.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(1500));
            }
        });
        thread::sleep(Duration::from_millis(100));
        let asked = crate::clock::monotonic();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        assert!(
            crate::clock::monotonic() - asked < Duration::from_secs(1),
            "/healthz waited behind slow clients"
        );
        // The slow client is cut off at the deadline, not served byte by byte forever.
        slow.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        assert!(
            crate::clock::monotonic() - asked < REQUEST_WITHIN + Duration::from_secs(1),
            "the slow client held its connection past the deadline"
        );
        assert!(rest.is_empty(), "{rest:?}");
        drop(silent);
        drip.join().expect("drip");

        // Idle connections holding every slot make room for a real request: the one
        // that has waited longest is closed for it (before, the request was closed
        // unanswered until the idle ones reached their deadline).
        let mut held: Vec<TcpStream> = (0..MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        thread::sleep(Duration::from_millis(200));
        // (The test outlived the heartbeat's freshness: the pipeline would have beaten.)
        metrics
            .heartbeat
            .store(crate::clock::now(), Ordering::Relaxed);
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        held[0]
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut nothing = Vec::new();
        assert_eq!(
            held[0]
                .read_to_end(&mut nothing)
                .expect("closed for the request"),
            0
        );
        drop(held);
        stop.store(true, Ordering::Relaxed);
    }

    /// Room for many: seventeen idle connections (a client reopening each as it is
    /// closed churned through sixteen slots, closing health checks whose request had
    /// not arrived yet) close nobody's, and a health check is served beside them.
    #[test]
    fn a_few_dozen_idle_connections_close_nobody() {
        let metrics = Arc::new(Metrics::new(&["eth0".to_owned()]));
        let (addr, stop) = start(&metrics);
        let mut idle: Vec<TcpStream> = (0..40)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        thread::sleep(Duration::from_millis(100));
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        // Well inside their deadline: none was closed to make room.
        for s in &mut idle {
            s.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            let read = s.read(&mut byte);
            assert!(
                matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "an idle connection was closed: {read:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
    }
}
