//! Pulling the fleet's decisions, on a thread of its own.
//!
//! The first pull asks for every running decision (`startup=true`), the next ones for
//! what changed since, every `--crowdsec-pull`. What a pull gives goes to the pipeline
//! thread whole ([`Pull`]), which applies it. When a pull fails (the LAPI away, an
//! answer that is not the API's), nothing held is touched: the bans stay enforced and
//! run out at their own time; the next pull that works asks for everything again
//! (`startup=true`) and the pipeline reconciles, so nothing missed while away is lost
//! and nothing still held is lifted and given again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Stats;
use super::lapi::{self, Client, Decision, LapiError};

/// A full pull (`startup=true`) at least this often, which reconciles as after an outage:
/// whatever drifted, and decisions longer than the backend keeps a ban, given again.
pub const FULL_EVERY: Duration = Duration::from_secs(24 * 3600);

/// One pull's decisions, for the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pull {
    /// Every running decision: held pulled bans it lacks are lifted.
    pub startup: bool,
    pub new: Vec<Decision>,
    pub deleted: Vec<Decision>,
}

fn hint(e: &LapiError) -> &'static str {
    match e.status() {
        Some(401 | 403) => {
            " (the bouncer key is wrong or was deleted: check --crowdsec-bouncer-key-file against `cscli bouncers list`)"
        }
        _ => "",
    }
}

/// Most malformed decisions named per pull (the rest are counted in one line).
const MALFORMED_NAMED: usize = 5;

/// Says which pulled entries were not decisions (counted as `invalid`).
fn said_malformed(malformed: &[String], stats: &Stats) {
    for m in malformed.iter().take(MALFORMED_NAMED) {
        tracing::warn!("warning: a pulled CrowdSec decision is malformed and left out: {m}");
    }
    if malformed.len() > MALFORMED_NAMED {
        tracing::warn!(
            "warning: {} more malformed CrowdSec decisions left out in this pull",
            malformed.len() - MALFORMED_NAMED
        );
    }
    for _ in malformed {
        stats.skipped(super::OriginClass::Other, super::lapi::Skip::Invalid);
    }
}

/// The pull thread's loop, until `stop` or until the pipeline is gone (`deliver`
/// returns false). `key` is read again from `key_file` before each full pull, so that
/// a replaced key is taken without a restart.
pub fn run(
    client: &Client,
    mut key: String,
    key_file: &Path,
    every: Duration,
    stats: &Stats,
    stop: &AtomicBool,
    deliver: impl Fn(Pull) -> bool,
) {
    let mut startup = true;
    let mut full_at = crate::clock::monotonic();
    let mut failing = false;
    let mut errors_logged = 0u32;
    let mut last_kind = None;
    while !stop.load(Ordering::Relaxed) {
        if crate::clock::monotonic().duration_since(full_at) >= FULL_EVERY {
            startup = true;
        }
        if startup
            && failing
            && let Ok(k) = lapi::read_key(key_file)
        {
            key = k;
        }
        match client.stream(&key, startup) {
            Ok(stream) => {
                said_malformed(&stream.malformed, stats);
                let pull = Pull {
                    startup,
                    new: stream.new,
                    deleted: stream.deleted,
                };
                if failing {
                    tracing::info!(
                        "the CrowdSec LAPI at {} answers again; resynchronising",
                        client.base()
                    );
                }
                if startup {
                    full_at = crate::clock::monotonic();
                }
                if !deliver(pull) {
                    return;
                }
                stats
                    .last_sync
                    .store(crate::clock::unix_now(), Ordering::Relaxed);
                startup = false;
                failing = false;
                errors_logged = 0;
                last_kind = None;
            }
            Err(e) => {
                stats.pull_errors.fetch_add(1, Ordering::Relaxed);
                // Said at the first failure and when the failure changes, else once in
                // a while.
                let kind = (std::mem::discriminant(&e), e.status());
                if errors_logged.is_multiple_of(30) || last_kind != Some(kind) {
                    last_kind = Some(kind);
                    errors_logged = 0;
                    tracing::error!(
                        "cannot pull decisions from the CrowdSec LAPI at {}: {e}{}; the bans held stay enforced, retrying every {} s",
                        client.base(),
                        hint(&e),
                        every.as_secs()
                    );
                }
                errors_logged = errors_logged.wrapping_add(1);
                failing = true;
                startup = true;
            }
        }
        if !super::sleep_unless_stopped(every, stop) {
            return;
        }
    }
}
