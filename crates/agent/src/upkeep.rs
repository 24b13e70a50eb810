//! The rule check and the drop counters, off the pipeline thread.
//!
//! Whether synwatch's rules are still in place, and what they dropped, is asked of the
//! kernel every few seconds. With iptables that is a dozen `ipset test` and `iptables -C`
//! runs, which held the pipeline for up to 0.8 s with 100,000 bans on this machine; so a
//! thread of its own asks, through a second handle on the same rules, and the pipeline
//! only reads its latest answer. Rules found missing are set up again here, empty (for
//! iptables a dozen programs run, half a second); the pipeline, which owns the bans, then
//! puts them back a chunk a turn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use synwatch_enforce::{DropCounters, Enforcer};

/// One look at the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub intact: bool,
    /// The rules were missing and this thread set them up again, holding no ban.
    pub set_up: bool,
    /// What the drop rules dropped, when the rules are intact and could be read.
    pub counters: Option<DropCounters>,
    /// The set-ups the pipeline had made when the look began.
    setups: u64,
}

/// Every how many looks the thread also lists the bans the kernel holds, for the
/// pipeline to find a ban removed from a set or map by hand (the rules' own check sees
/// flushed sets, not one element gone): at a look every 2 s, 30 s, for every
/// [`LIST_BANS`] bans listed the last time (listing 100,000 nftables elements costs
/// `nft` about 2 s of CPU: every 5 minutes then).
const LIST_EVERY: u64 = 15;

/// Bans per [`LIST_EVERY`] looks between two listings.
const LIST_BANS: u64 = 10_000;

/// What the kernel held at a listing, and the set-ups made before it began.
type Listing = (u64, Vec<ipnet::IpNet>);

/// The thread asking, and its latest answer.
#[derive(Debug)]
pub struct Upkeep {
    latest: Arc<Mutex<Option<Report>>>,
    listing: Arc<Mutex<Option<Listing>>>,
    setups: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upkeep {
    /// Starts asking `checker` every `every`. Start it once the agent has dropped its
    /// privileges: capabilities are per thread, and this one needs only what the
    /// programs it runs need.
    pub fn start(mut checker: Box<dyn Enforcer>, every: Duration) -> std::io::Result<Self> {
        let latest: Arc<Mutex<Option<Report>>> = Arc::new(Mutex::new(None));
        let listing: Arc<Mutex<Option<Listing>>> = Arc::new(Mutex::new(None));
        let setups = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, st) = (Arc::clone(&latest), Arc::clone(&setups), Arc::clone(&stop));
        let listed = Arc::clone(&listing);
        let handle = thread::Builder::new()
            .name("upkeep".into())
            .spawn(move || {
                let (mut looks, mut list_at) = (0u64, LIST_EVERY);
                while !st.load(Ordering::Relaxed) {
                    let before = s.load(Ordering::Acquire);
                    let mut report = look(checker.as_mut(), before);
                    looks += 1;
                    if report.intact
                        && looks >= list_at
                        && let Ok(bans) = checker.list()
                    {
                        let n = bans.len() as u64;
                        list_at = looks + LIST_EVERY * n.div_ceil(LIST_BANS).max(1);
                        if let Ok(mut held) = listed.lock() {
                            *held = Some((before, bans.into_iter().map(|b| b.net).collect()));
                        }
                    }
                    if let Ok(mut held) = l.lock() {
                        // A set-up the pipeline has not heard of yet stays news: the
                        // rules it made hold none of the bans until the pipeline acts.
                        if let Some(before) = *held
                            && before.set_up
                            && before.setups == report.setups
                        {
                            report.intact = false;
                            report.set_up = true;
                        }
                        *held = Some(report);
                    }
                    let mut slept = Duration::ZERO;
                    while slept < every && !st.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            })?;
        Ok(Self {
            latest,
            listing,
            setups,
            stop,
            thread: Some(handle),
        })
    }

    /// Stops the thread and waits for it (at most one look and 100 ms), so that a look
    /// in progress cannot set the rules up again after the agent has removed them: one
    /// run of 100,000 bans in nine left an empty table behind (bench-bans.sh, "left over").
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The latest answer, once, unless it began before the last [`Upkeep::set_up_again`]
    /// (it would say the rules are missing that were just put back).
    pub fn take(&self) -> Option<Report> {
        let mut held = self.latest.lock().ok()?;
        match *held {
            Some(r) if r.setups == self.setups.load(Ordering::Acquire) => held.take(),
            _ => None,
        }
    }

    /// The bans the kernel held at the latest listing, once, unless it began before the
    /// last [`Upkeep::set_up_again`].
    pub fn take_listing(&self) -> Option<Vec<ipnet::IpNet>> {
        let (setups, bans) = self.listing.lock().ok()?.take()?;
        (setups == self.setups.load(Ordering::Acquire)).then_some(bans)
    }

    /// The pipeline set the rules up again: answers from before do not count.
    pub fn set_up_again(&self) {
        self.setups.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut held) = self.latest.lock() {
            *held = None;
        }
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn look(checker: &mut dyn Enforcer, setups: u64) -> Report {
    let intact = checker.intact();
    let set_up = !intact && {
        match checker.setup(&[]) {
            Ok(()) => true,
            Err(e) => {
                // The pipeline tries itself, and says what failed.
                tracing::error!("synwatch's rules are missing; setting them up again failed: {e}");
                false
            }
        }
    };
    Report {
        intact,
        set_up,
        counters: intact.then(|| checker.counters().ok()).flatten(),
        setups,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use synwatch_enforce::{Backend, Scope};

    #[test]
    fn answers_come_from_the_thread_and_stale_ones_are_dropped() {
        let runner = synwatch_enforce::RecordingRunner::default();
        // Without a netlink look, intact asks nft whether the table exists: no; and
        // setting it up again fails too.
        runner.answer(Err("Error: No such file or directory"));
        runner.answer(Err("Error: Operation not permitted"));
        let checker =
            synwatch_enforce::open(Backend::Nftables, Scope::All, Box::new(runner.clone()))
                .unwrap();
        // One look only, for the test's span.
        let upkeep = Upkeep::start(checker, Duration::from_secs(60)).unwrap();
        let mut report = None;
        for _ in 0..100 {
            report = upkeep.take();
            if report.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let report = report.expect("an answer within 2 s");
        assert!(!report.intact);
        assert!(!report.set_up, "the set-up failed");
        assert_eq!(report.counters, None);
        assert!(
            runner
                .transcript()
                .iter()
                .any(|c| c.contains("add table inet synwatch")),
            "set up on the thread: {:#?}",
            runner.transcript()
        );
        assert!(!runner.transcript().is_empty(), "asked on the thread");
        assert_eq!(upkeep.take(), None, "taken once");
        // Set up again: an answer from a look that began before does not count.
        upkeep.set_up_again();
        if let Ok(mut held) = upkeep.latest.lock() {
            *held = Some(Report {
                setups: 0,
                ..report
            });
        }
        assert_eq!(upkeep.take(), None, "stale");
    }

    #[test]
    fn once_finished_the_thread_asks_no_more() {
        let runner = synwatch_enforce::RecordingRunner::default();
        let checker =
            synwatch_enforce::open(Backend::Nftables, Scope::All, Box::new(runner.clone()))
                .unwrap();
        // No pause between looks: the thread is always asking.
        let upkeep = Upkeep::start(checker, Duration::ZERO).unwrap();
        while runner.transcript().is_empty() {
            thread::sleep(Duration::from_millis(5));
        }
        upkeep.finish();
        let asked = runner.transcript().len();
        thread::sleep(Duration::from_millis(300));
        assert_eq!(runner.transcript().len(), asked, "asked after finish");
    }
}
