//! The fleet: synwatch shares its bans through CrowdSec's Local API (SPEC §7).
//!
//! - **Push** ([`push`]): every ban synwatch decides from a scan is posted as an alert
//!   with its decision, from a thread of its own fed through a bounded queue
//!   ([`push::Outbox`]); the pipeline never waits for the network.
//! - **Pull** ([`pull`]): a thread streams the fleet's decisions and hands them to the
//!   pipeline thread, which applies them to the ban book and the backend like any other
//!   ban (see `block/fleet.rs`).
//!
//! Decisions taken (documented in the README):
//! - Pulled bans are bans of the book with the reason `lapi:<origin>`; they are saved
//!   like the others, so a restarted agent enforces them at once, before the LAPI
//!   answers, and its first pull (`startup=true`) reconciles: what the LAPI no longer
//!   holds is lifted, nothing held is lifted and given again.
//! - Pulled bans neither wait for nor count against `--ban-rate`: that cap guards this
//!   host against a flood of spoofed sources it sees itself; the decisions of the LAPI
//!   come from authenticated machines, each of which applied its own cap.

pub mod host;
pub mod lapi;
pub mod pull;
pub mod push;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use lapi::Skip;

/// The validated CrowdSec options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub credentials: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub url: Option<String>,
    pub pull: Duration,
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.credentials.is_some() || self.key_file.is_some()
    }

    /// The `--print-config` lines: the pull interval always, the rest when set.
    pub fn toml(&self) -> String {
        let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::new();
        if let Some(p) = &self.credentials {
            out += &format!(
                "crowdsec_credentials = {}\n",
                quoted(&p.display().to_string())
            );
        }
        if let Some(p) = &self.key_file {
            out += &format!(
                "crowdsec_bouncer_key_file = {}\n",
                quoted(&p.display().to_string())
            );
        }
        if let Some(u) = &self.url {
            out += &format!("crowdsec_url = {}\n", quoted(u));
        }
        let ms = self.pull.as_millis();
        if ms.is_multiple_of(1000) {
            out += &format!("crowdsec_pull = \"{}s\"\n", ms / 1000);
        } else {
            out += &format!("crowdsec_pull = \"{ms}ms\"\n");
        }
        out
    }

    /// The LAPI to talk to, its credentials and the bouncer key, read and checked now:
    /// a file that cannot be read is a usage error at start, not a retry loop.
    pub fn open(&self) -> Result<Opened, String> {
        let credentials = self
            .credentials
            .as_deref()
            .map(lapi::Credentials::read)
            .transpose()?;
        let key = self.key_file.as_deref().map(lapi::read_key).transpose()?;
        let url = match (&self.url, &credentials) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => c.url.clone(),
            (None, None) => {
                return Err(
                    "--crowdsec-bouncer-key-file needs the LAPI's URL: give --crowdsec-url (or --crowdsec-credentials, whose url is used)"
                        .into(),
                );
            }
        };
        let base = lapi::base_url(&url).map_err(|why| match &self.url {
            Some(_) => format!("--crowdsec-url: {why}"),
            None => format!("the url of --crowdsec-credentials: {why}"),
        })?;
        Ok(Opened {
            client: lapi::Client::new(base),
            credentials,
            key,
        })
    }
}

/// What [`Settings::open`] read.
#[derive(Debug)]
pub struct Opened {
    pub client: lapi::Client,
    pub credentials: Option<lapi::Credentials>,
    pub key: Option<String>,
}

/// Where a decision comes from, for the metrics' `origin` label (a short fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginClass {
    Synwatch,
    Crowdsec,
    Cscli,
    Capi,
    Lists,
    Other,
}

impl OriginClass {
    pub const ALL: [OriginClass; 6] = [
        Self::Synwatch,
        Self::Crowdsec,
        Self::Cscli,
        Self::Capi,
        Self::Lists,
        Self::Other,
    ];

    /// Of an origin as [`lapi::origin_label`] gives it.
    pub fn of(label: &str) -> Self {
        if lapi::is_synwatch_origin(label) {
            Self::Synwatch
        } else if label == "crowdsec" || label.starts_with("crowdsec/") {
            Self::Crowdsec
        } else if label == "cscli" {
            Self::Cscli
        } else if label == "capi" {
            Self::Capi
        } else if label.starts_with("lists/") {
            Self::Lists
        } else {
            Self::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synwatch => "synwatch",
            Self::Crowdsec => "crowdsec",
            Self::Cscli => "cscli",
            Self::Capi => "capi",
            Self::Lists => "lists",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

const ORIGINS: usize = OriginClass::ALL.len();
const SKIPS: usize = Skip::ALL.len();

/// The fleet's counters, rendered into `/metrics` after the agent's own.
#[derive(Debug, Default)]
pub struct Stats {
    pulled: [AtomicU64; ORIGINS],
    applied: [AtomicU64; ORIGINS],
    skipped: [[AtomicU64; SKIPS]; ORIGINS],
    /// Pulled bans lifted because the LAPI deleted their decisions.
    pub lifted: AtomicU64,
    /// Pulled bans held now (gauge).
    pub held: AtomicU64,
    pub pull_errors: AtomicU64,
    /// Unix time of the last pull that was applied.
    pub last_sync: AtomicI64,
    /// `--crowdsec-pull` in seconds (0: not pulling).
    pub pull_interval: AtomicU64,
    pub pushed: AtomicU64,
    pub push_queue: AtomicU64,
    pub push_dropped: AtomicU64,
    pub push_errors: AtomicU64,
    /// Unix time of the last alerts the LAPI took.
    pub last_push: AtomicI64,
}

impl Stats {
    pub fn pulled(&self, origin: OriginClass) {
        self.pulled[origin.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn applied(&self, origin: OriginClass) {
        self.applied[origin.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn skipped(&self, origin: OriginClass, why: Skip) {
        self.skipped[origin.index()][why.index()].fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn skipped_of(&self, origin: OriginClass, why: Skip) -> u64 {
        self.skipped[origin.index()][why.index()].load(Ordering::Relaxed)
    }

    /// The `synwatch_crowdsec_*` families (those of pulls here).
    pub fn render(&self, out: &mut String) {
        use crate::prom::family;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_origin = |counters: &[AtomicU64; ORIGINS]| -> Vec<(String, u64)> {
            OriginClass::ALL
                .iter()
                .map(|o| {
                    (
                        format!("{{origin=\"{}\"}}", o.as_str()),
                        get(&counters[o.index()]),
                    )
                })
                .collect()
        };
        let plain = |v: u64| vec![(String::new(), v)];
        let stamp = |a: &AtomicI64| plain(u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0));
        family(
            out,
            "synwatch_crowdsec_decisions_pulled_total",
            "counter",
            "New decisions received from the CrowdSec Local API, by origin (synwatch: a scenario of a synwatch).",
            &by_origin(&self.pulled),
        );
        family(
            out,
            "synwatch_crowdsec_decisions_applied_total",
            "counter",
            "Decisions from the CrowdSec Local API given as bans, by origin.",
            &by_origin(&self.applied),
        );
        let mut skipped = Vec::new();
        for o in OriginClass::ALL {
            for s in Skip::ALL {
                skipped.push((
                    format!("{{origin=\"{}\",reason=\"{}\"}}", o.as_str(), s.as_str()),
                    get(&self.skipped[o.index()][s.index()]),
                ));
            }
        }
        family(
            out,
            "synwatch_crowdsec_decisions_skipped_total",
            "counter",
            "Decisions from the CrowdSec Local API not enforced, by origin and reason (protected: an address synwatch never blocks; held: a running ban holds it; own: pushed by this agent; type, scope, invalid, simulated, expired).",
            &skipped,
        );
        family(
            out,
            "synwatch_crowdsec_decisions_lifted_total",
            "counter",
            "Bans from the CrowdSec Local API lifted because their decisions were deleted there.",
            &plain(get(&self.lifted)),
        );
        family(
            out,
            "synwatch_crowdsec_bans",
            "gauge",
            "Bans held that came from the CrowdSec Local API.",
            &plain(get(&self.held)),
        );
        family(
            out,
            "synwatch_crowdsec_pull_errors_total",
            "counter",
            "Pulls from the CrowdSec Local API that failed (unreachable, refused, invalid answer).",
            &plain(get(&self.pull_errors)),
        );
        family(
            out,
            "synwatch_crowdsec_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last pull from the CrowdSec Local API that was applied (0: none yet).",
            &stamp(&self.last_sync),
        );
        family(
            out,
            "synwatch_crowdsec_pull_interval_seconds",
            "gauge",
            "How often decisions are pulled from the CrowdSec Local API (--crowdsec-pull; 0: not pulling).",
            &plain(get(&self.pull_interval)),
        );
        self.render_push(out);
    }

    /// The `synwatch_crowdsec_*` families of the push thread.
    fn render_push(&self, out: &mut String) {
        use crate::prom::family;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let plain = |v: u64| vec![(String::new(), v)];
        let stamp = |a: &AtomicI64| plain(u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0));
        family(
            out,
            "synwatch_crowdsec_alerts_pushed_total",
            "counter",
            "Bans posted to the CrowdSec Local API as alerts and accepted.",
            &plain(get(&self.pushed)),
        );
        family(
            out,
            "synwatch_crowdsec_push_queue",
            "gauge",
            "Alerts waiting to be posted to the CrowdSec Local API.",
            &plain(get(&self.push_queue)),
        );
        family(
            out,
            "synwatch_crowdsec_push_dropped_total",
            "counter",
            "Alerts dropped: the queue was full (the LAPI away too long), or the LAPI refused them as invalid.",
            &plain(get(&self.push_dropped)),
        );
        family(
            out,
            "synwatch_crowdsec_push_errors_total",
            "counter",
            "Attempts to post alerts that failed (each is retried with backoff).",
            &plain(get(&self.push_errors)),
        );
        family(
            out,
            "synwatch_crowdsec_last_push_timestamp_seconds",
            "gauge",
            "Unix time the CrowdSec Local API last took alerts (0: none yet).",
            &stamp(&self.last_push),
        );
    }
}

/// The push and pull threads, joined when the agent stops.
#[derive(Debug, Default)]
pub struct Threads {
    handles: Vec<std::thread::JoinHandle<()>>,
    outbox: Option<Arc<push::Outbox>>,
    /// Where the queue left at stop is saved ([`push::QUEUE_FILE`] in the state directory).
    queue_file: Option<std::path::PathBuf>,
}

impl Threads {
    /// Where the blocker hands bans to push (`Blocker::join_fleet`): none without
    /// machine credentials.
    pub fn outbox(&self) -> Option<Arc<push::Outbox>> {
        self.outbox.clone()
    }

    /// Waits for the threads (the agent's stop flag is set), for at most `wait` in all: a
    /// request to a LAPI that stalls would otherwise hold the agent's exit until its
    /// timeout (20 s). A thread still in such a request is left to end with the process.
    pub fn join(self, wait: std::time::Duration) {
        if let Some(o) = &self.outbox {
            o.wake();
        }
        let deadline = crate::clock::monotonic() + wait;
        for h in self.handles {
            while !h.is_finished() && crate::clock::monotonic() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !h.is_finished() {
                tracing::warn!(
                    "warning: a request to the CrowdSec LAPI is still under way; stopping without waiting for its answer"
                );
            } else if h.join().is_err() {
                tracing::error!("a CrowdSec thread failed");
            }
        }
        // What could not be sent is sent at the next start, not lost with this process.
        if let (Some(o), Some(path)) = (&self.outbox, &self.queue_file) {
            match o.save(path) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    "{n} alert(s) and withdrawal(s) for the CrowdSec LAPI not sent yet; saved in {} for the next start",
                    path.display()
                ),
                Err(e) => tracing::error!(
                    "cannot save the queued alert(s) for the CrowdSec LAPI in {}: {e}; they are lost",
                    path.display()
                ),
            }
        }
    }
}

/// Joins the fleet: the push thread (with machine credentials) and the pull thread
/// (with a bouncer key), which hands each pull to `deliver` (the pipeline's queue).
/// Counts in `stats`. The blocker joins with the threads' outbox. What the last run left
/// queued in `state_dir` is queued first.
pub fn start(
    opened: Opened,
    settings: &Settings,
    state_dir: &std::path::Path,
    stats: &Arc<Stats>,
    stop: &Arc<AtomicBool>,
    deliver: impl Fn(pull::Pull) -> bool + Send + 'static,
) -> anyhow::Result<Threads> {
    use anyhow::Context as _;
    let mut threads = Threads::default();
    let base = opened.client.base().to_owned();
    if let Some(creds) = opened.credentials {
        let outbox = Arc::new(push::Outbox::new(Arc::clone(stats)));
        let queue_file = state_dir.join(push::QUEUE_FILE);
        match outbox.restore(&queue_file, crate::clock::unix_now()) {
            Ok((0, 0)) => {}
            Ok((queued, left_out)) => tracing::info!(
                "{queued} alert(s) and withdrawal(s) for the CrowdSec LAPI left by the last run queued again ({left_out} over or unreadable, left out)"
            ),
            Err(e) => tracing::error!(
                "cannot read {} (what the last run could not push): {e}",
                queue_file.display()
            ),
        }
        threads.outbox = Some(Arc::clone(&outbox));
        threads.queue_file = Some(queue_file);
        let (client, st, stop) = (opened.client.clone(), Arc::clone(stats), Arc::clone(stop));
        let ob = Arc::clone(&outbox);
        threads.handles.push(
            std::thread::Builder::new()
                .name("crowdsec-push".into())
                .spawn(move || {
                    // It talks to the network and parses what comes back: it needs no
                    // capability, and holds none (they are per thread).
                    crate::privileges::drop_all_in_this_thread();
                    push::run(&client, &creds, &ob, &st, &stop)
                })
                .context("cannot start the CrowdSec push thread")?,
        );
        tracing::info!(
            "pushing bans to the CrowdSec LAPI at {base} (scenarios {})",
            push::SCENARIOS.join(", ")
        );
    }
    if let (Some(key), Some(key_file)) = (opened.key, settings.key_file.clone()) {
        let (client, stats, stop) = (opened.client, Arc::clone(stats), Arc::clone(stop));
        let every = settings.pull;
        stats
            .pull_interval
            .store(every.as_secs().max(1), Ordering::Relaxed);
        threads.handles.push(
            std::thread::Builder::new()
                .name("crowdsec-pull".into())
                .spawn(move || {
                    crate::privileges::drop_all_in_this_thread();
                    pull::run(&client, key, &key_file, every, &stats, &stop, deliver)
                })
                .context("cannot start the CrowdSec pull thread")?,
        );
        tracing::info!(
            "enforcing the ban decisions of the CrowdSec LAPI at {base}, pulled every {} s",
            every.as_secs()
        );
    }
    Ok(threads)
}

/// Sleeps `total` in short steps, returning early (false) once `stop` is set.
pub(crate) fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(100);
    let mut left = total;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let d = left.min(step);
        std::thread::sleep(d);
        left -= d;
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_a_url_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k\n").unwrap();
        let s = Settings {
            credentials: None,
            key_file: Some(key),
            url: None,
            pull: Duration::from_secs(10),
        };
        assert!(s.open().unwrap_err().contains("--crowdsec-url"));
    }

    #[test]
    fn origins_fall_in_a_few_classes() {
        assert_eq!(
            OriginClass::of("crowdsec/synwatch/port-scan"),
            OriginClass::Synwatch
        );
        assert_eq!(
            OriginClass::of("crowdsec/crowdsecurity/ssh-bf"),
            OriginClass::Crowdsec
        );
        assert_eq!(OriginClass::of("cscli"), OriginClass::Cscli);
        assert_eq!(OriginClass::of("lists/x"), OriginClass::Lists);
        assert_eq!(OriginClass::of("weird"), OriginClass::Other);
    }
}
