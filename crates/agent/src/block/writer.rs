//! New bans into the kernel and the state file, off the pipeline thread.
//!
//! A burst of new scanners is thousands of bans a turn: about 10 µs each over netlink and
//! a few more in SQLite here, so a batch of 15,000 held the pipeline for 0.3-0.6 s
//! (docs/PERFORMANCE.md, "Turns over 50 ms while banning"), while no packet was judged.
//! The writer thread takes each batch, puts it into the kernel and then saves it, a
//! chunk at a time, and hands every chunk back; the pipeline reports a chunk's bans only
//! then, so a `block` event still means the ban is in the kernel and saved. One batch is
//! in flight at a time: what the pipeline decides meanwhile waits and goes as the next,
//! larger batch. The enforcer and the store stay shared ([`Hands`]) with the pipeline,
//! which locks them for everything else (lifts, control requests, rules put back): it
//! waits at most for one chunk.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use ipnet::IpNet;
use synwatch_enforce::bans::Record;
use synwatch_enforce::{EnforceError, Enforcer};

use crate::state::Store;

/// Bans per kernel transaction and SQLite transaction of the writer, between which the
/// pipeline may take the lock: about 10-20 ms of work here.
pub const CHUNK: usize = 1_000;

/// What changes the kernel and what remembers: one lock, so that a chunk goes into
/// both before anything else touches either.
pub struct Hands {
    pub enforcer: Box<dyn Enforcer>,
    pub store: Store,
}

impl std::fmt::Debug for Hands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hands")
            .field("backend", &self.enforcer.backend())
            .finish()
    }
}

/// The lock on [`Hands`]; a thread that panicked holding it left them usable (each
/// change is one kernel or SQLite transaction).
pub fn lock(hands: &Mutex<Hands>) -> MutexGuard<'_, Hands> {
    hands
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lock on [`Hands`] if no one holds it now: `None` while the writer thread is
/// applying bans (a look that can wait for the next turn must not wait for the kernel).
pub fn try_lock(hands: &Mutex<Hands>) -> Option<MutexGuard<'_, Hands>> {
    match hands.try_lock() {
        Ok(h) => Some(h),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A chunk of a batch, done.
#[derive(Debug)]
pub struct Done {
    pub records: Vec<Record>,
    /// The kernel's answer. On an error the chunk and the rest of its batch come back
    /// together, not applied (saved all the same, as the pipeline saves what it could
    /// not apply).
    pub result: Result<(), EnforceError>,
    /// Whether the chunk was saved (if not, the pipeline keeps trying).
    pub saved: bool,
}

struct Job {
    records: Vec<Record>,
    /// Of `records`, those that replace a ban the kernel may hold (renewed with
    /// [`Enforcer::add`]); the others are new to it and go in with a plain
    /// [`Enforcer::refill`], a fifth of the netlink work for nftables. `None`: all are
    /// renewed (iptables, whose refill runs `ipset restore` where its add goes over
    /// netlink).
    renew: Option<HashSet<IpNet>>,
    now: i64,
}

/// The writer thread.
pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    /// Bans of the batch in flight not yet handed back.
    in_flight: usize,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Writer {
    /// Starts the thread; `wake` is called after each chunk (the pipeline then collects
    /// it without waiting for its next turn).
    pub fn start(hands: Arc<Mutex<Hands>>, wake: Box<dyn Fn() + Send>) -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("ban-writer".into())
            .spawn(move || {
                for job in job_rx {
                    write(&hands, job, &done_tx, &*wake);
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            in_flight: 0,
            thread: Some(thread),
        })
    }

    /// Whether a batch is in flight (the next one waits for it).
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// Hands a batch over. False if the thread is gone (the caller applies it itself).
    pub fn send(
        &mut self,
        records: Vec<Record>,
        renew: Option<HashSet<IpNet>>,
        now: i64,
    ) -> Result<(), Vec<Record>> {
        let n = records.len();
        match &self.jobs {
            Some(jobs) => match jobs.send(Job {
                records,
                renew,
                now,
            }) {
                Ok(()) => {
                    self.in_flight += n;
                    Ok(())
                }
                Err(mpsc::SendError(job)) => Err(job.records),
            },
            None => Err(records),
        }
    }

    /// The chunks done since the last call.
    pub fn collect(&mut self) -> Vec<Done> {
        let done: Vec<Done> = self.done.try_iter().collect();
        self.account(&done);
        done
    }

    /// Waits for the batch in flight and returns its chunks.
    pub fn wait(&mut self) -> Vec<Done> {
        let mut all = Vec::new();
        while self.in_flight > 0 {
            match self.done.recv() {
                Ok(d) => {
                    self.account(std::slice::from_ref(&d));
                    all.push(d);
                }
                Err(_) => {
                    // The thread died (a panic): what it held is lost to the kernel; the
                    // records went with it. Nothing more will come.
                    self.in_flight = 0;
                }
            }
        }
        all
    }

    fn account(&mut self, done: &[Done]) {
        let n: usize = done.iter().map(|d| d.records.len()).sum();
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// Waits for what is in flight, then ends the thread.
    pub fn finish(mut self) -> Vec<Done> {
        let done = self.wait();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        done
    }
}

fn write(hands: &Mutex<Hands>, job: Job, done: &mpsc::Sender<Done>, wake: &dyn Fn()) {
    let Job {
        mut records,
        renew,
        now,
    } = job;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(CHUNK));
        let mut chunk = records;
        records = rest;
        let (renewed, fresh): (Vec<_>, Vec<_>) = chunk
            .iter()
            .map(|r| r.ban(now))
            .partition(|b| renew.as_ref().is_none_or(|r| r.contains(&b.net)));
        let result = {
            let mut h = lock(hands);
            // The kernel first, the state file after: a scanner is dropped as soon as
            // possible, and a crash between the two loses only unreported bans.
            let result = if fresh.is_empty() {
                Ok(())
            } else {
                h.enforcer.refill(&fresh)
            };
            let result = match result {
                Ok(()) if !renewed.is_empty() => h.enforcer.add(&renewed),
                other => other,
            };
            let saving = if result.is_ok() {
                &chunk[..]
            } else {
                chunk.extend(std::mem::take(&mut records));
                &chunk[..]
            };
            let saved = h.store.save(saving);
            if let Err(e) = &saved {
                tracing::error!(
                    "{e:#}; {} new ban(s) hold only until the agent stops unless saving them succeeds later (retried every few seconds)",
                    saving.len()
                );
            }
            (result, saved.is_ok())
        };
        let (result, saved) = result;
        if done
            .send(Done {
                records: chunk,
                result,
                saved,
            })
            .is_err()
        {
            return;
        }
        wake();
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::sync::atomic::Ordering;

    use ipnet::IpNet;
    use synwatch_enforce::bans::Policy;
    use synwatch_enforce::{Backend, Ban, DropCounters, KernelBan, Scope};

    use super::*;
    use crate::block::{BlockSettings, Blocker, COUNTERS_SECS, Happened};
    use crate::control::Request;
    use crate::metrics::Metrics;

    /// What the fake kernel holds, and who changed it.
    #[derive(Default)]
    struct Kernel {
        bans: BTreeSet<IpNet>,
        /// Each `add` or `refill`: which, on which thread, of what.
        calls: Vec<(&'static str, String, Vec<String>)>,
        refuse: bool,
        /// Kernel changes that reached the gate (and wait there, holding the hands).
        at_gate: usize,
    }

    /// An enforcer over [`Kernel`]; with a gate, each `add` first waits for a word on it.
    struct Fake {
        kernel: Arc<Mutex<Kernel>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Enforcer for Fake {
        fn backend(&self) -> Backend {
            Backend::Nftables
        }
        fn setup(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
            self.kernel.lock().unwrap().bans = bans.iter().map(|b| b.net).collect();
            Ok(())
        }
        fn add(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
            self.put("add", bans)
        }
        fn refill(&mut self, bans: &[Ban]) -> Result<(), EnforceError> {
            self.put("refill", bans)
        }
        fn remove(&mut self, nets: &[IpNet]) -> Result<(), EnforceError> {
            let mut k = self.kernel.lock().unwrap();
            for n in nets {
                k.bans.remove(n);
            }
            Ok(())
        }
        fn list(&mut self) -> Result<Vec<KernelBan>, EnforceError> {
            Ok(Vec::new())
        }
        fn counters(&mut self) -> Result<DropCounters, EnforceError> {
            Ok(DropCounters::default())
        }
        fn present(&mut self) -> bool {
            true
        }
        fn teardown(&mut self) -> Result<(), EnforceError> {
            self.kernel.lock().unwrap().bans.clear();
            Ok(())
        }
    }

    impl Fake {
        fn put(&mut self, how: &'static str, bans: &[Ban]) -> Result<(), EnforceError> {
            if let Some(gate) = &self.gate {
                self.kernel.lock().unwrap().at_gate += 1;
                let _ = gate.recv();
            }
            let mut k = self.kernel.lock().unwrap();
            k.calls.push((
                how,
                thread::current().name().unwrap_or("?").to_owned(),
                bans.iter().map(|b| b.net.addr().to_string()).collect(),
            ));
            if k.refuse {
                return Err(EnforceError::Map {
                    map: "fake".into(),
                    what: "add".into(),
                    detail: "refused".into(),
                });
            }
            k.bans.extend(bans.iter().map(|b| b.net));
            Ok(())
        }
    }

    struct Rig {
        blocker: Blocker,
        kernel: Arc<Mutex<Kernel>>,
        woken: mpsc::Receiver<()>,
        dir: tempfile::TempDir,
    }

    /// A blocker over [`Fake`] (without the cap) with its writer thread started.
    fn rig(gate: Option<mpsc::Receiver<()>>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Arc::new(Mutex::new(Kernel::default()));
        let settings = BlockSettings {
            scope: Scope::All,
            policy: Policy {
                duration_secs: 3600,
                max_secs: 3600,
                per_minute: 0,
            },
            state_dir: dir.path().to_path_buf(),
            keep_rules: false,
            dry_run: false,
        };
        let fake = Box::new(Fake {
            kernel: Arc::clone(&kernel),
            gate,
        });
        let (mut blocker, _) =
            Blocker::start(fake, &settings, Arc::new(Metrics::default()), 1000, |_| {
                false
            })
            .unwrap();
        let (wake, woken) = mpsc::channel();
        blocker.write_from_thread(Box::new(move || {
            let _ = wake.send(());
        }));
        Rig {
            blocker,
            kernel,
            woken,
            dir,
        }
    }

    fn scan(b: &mut Blocker, addr: &str) {
        let src: IpAddr = addr.parse().unwrap();
        b.scan(src, IpNet::from(src), &[21, 22, 23, 25], 1000, None, false);
    }

    fn blocked(happened: &[Happened]) -> BTreeSet<String> {
        happened
            .iter()
            .filter_map(|h| match h {
                Happened::Blocked(r) => Some(r.net.addr().to_string()),
                Happened::Unblocked(..) => None,
            })
            .collect()
    }

    fn saved(dir: &std::path::Path) -> BTreeSet<String> {
        Store::open(dir)
            .unwrap()
            .bans()
            .unwrap()
            .iter()
            .map(|r| r.net.addr().to_string())
            .collect()
    }

    fn set(addrs: &[&str]) -> BTreeSet<String> {
        addrs.iter().map(|a| (*a).to_owned()).collect()
    }

    /// Makes saving bans in `dir` fail as a full disk does, or work again.
    fn disk_full(dir: &std::path::Path, full: bool) {
        let conn = rusqlite::Connection::open(dir.join(crate::state::DB_FILE)).unwrap();
        conn.execute_batch(if full {
            "CREATE TRIGGER full BEFORE INSERT ON bans BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
        } else {
            "DROP TRIGGER full;"
        })
        .unwrap();
    }

    /// The addresses saved in `dir`, read without opening a [`Store`] (which would
    /// remove the trigger [`disk_full`] made).
    fn rows(dir: &std::path::Path) -> BTreeSet<String> {
        let conn = rusqlite::Connection::open(dir.join(crate::state::DB_FILE)).unwrap();
        let mut stmt = conn.prepare("SELECT addr FROM bans").unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn bans_that_could_not_be_saved_are_saved_once_the_state_directory_takes_them() {
        let mut r = rig(None);
        disk_full(r.dir.path(), true);
        scan(&mut r.blocker, "192.0.2.1");
        scan(&mut r.blocker, "192.0.2.2");
        // In the kernel and reported, but not saved: degraded, and retried.
        let happened = r.blocker.apply_all(1000);
        assert_eq!(blocked(&happened), set(&["192.0.2.1", "192.0.2.2"]));
        assert!(rows(r.dir.path()).is_empty());
        let metrics = Arc::clone(&r.blocker.metrics);
        assert_eq!(metrics.bans_unsaved.load(Ordering::Relaxed), 2);
        assert!(
            metrics
                .healthy_body()
                .starts_with("degraded\n2 change(s) to the saved bans"),
            "{}",
            metrics.healthy_body()
        );
        // Still full at the next try.
        r.blocker.apply(1005);
        assert_eq!(metrics.bans_unsaved.load(Ordering::Relaxed), 2);
        // Space again: saved at the next try, and healthy again.
        disk_full(r.dir.path(), false);
        r.blocker.apply(1007);
        assert_eq!(
            rows(r.dir.path()),
            BTreeSet::new(),
            "not before the retry is due"
        );
        r.blocker.apply(1010);
        assert_eq!(rows(r.dir.path()), set(&["192.0.2.1", "192.0.2.2"]));
        assert_eq!(metrics.bans_unsaved.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.healthy_body(), "ok\n");
    }

    /// Regression: with no rule check thread, the pipeline's own look at the rules and
    /// counters came due while the writer thread held the hands, waiting on the kernel,
    /// and the pipeline waited with it (in the test, for ever: the gate opens later).
    #[test]
    fn the_pipeline_does_not_wait_for_the_writer_to_look_at_the_counters() {
        let (open, gate) = mpsc::channel();
        let mut r = rig(Some(gate));
        scan(&mut r.blocker, "192.0.2.1");
        assert!(blocked(&r.blocker.apply(1000)).is_empty());
        while r.kernel.lock().unwrap().at_gate == 0 {
            thread::sleep(std::time::Duration::from_millis(1));
        }
        // Should the pipeline wait after all, a watchdog opens the gate and says so.
        let opened_late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let (open, opened_late) = (open.clone(), Arc::clone(&opened_late));
            let (stop, stopped) = mpsc::channel::<()>();
            let t = thread::spawn(move || {
                if stopped
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .is_err()
                {
                    opened_late.store(true, Ordering::Relaxed);
                    let _ = open.send(());
                }
            });
            (stop, t)
        };
        // Counters due (every 3 s), the writer still inside the kernel change.
        let happened = r.blocker.apply(1000 + COUNTERS_SECS + 1);
        assert!(blocked(&happened).is_empty(), "{happened:?}");
        let _ = watchdog.0.send(());
        watchdog.1.join().unwrap();
        assert!(
            !opened_late.load(Ordering::Relaxed),
            "apply waited for the writer thread"
        );
        open.send(()).unwrap();
        let happened = r.blocker.apply_all(1000 + COUNTERS_SECS + 1);
        assert_eq!(blocked(&happened), set(&["192.0.2.1"]));
    }

    #[test]
    fn new_bans_go_in_on_the_writer_thread_and_are_reported_once_in_the_kernel_and_saved() {
        let (open, gate) = mpsc::channel();
        let mut r = rig(Some(gate));
        for a in ["192.0.2.1", "192.0.2.2", "198.51.100.3"] {
            scan(&mut r.blocker, a);
        }
        // Handed over: the kernel change waits at the gate, and the pipeline goes on
        // without reporting anything, or having saved anything.
        let happened = r.blocker.apply(1000);
        assert!(blocked(&happened).is_empty(), "{happened:?}");
        assert!(r.blocker.has_pending());
        assert!(saved(r.dir.path()).is_empty());
        // Bans decided meanwhile wait for the next batch.
        scan(&mut r.blocker, "203.0.113.4");
        assert!(blocked(&r.blocker.apply(1000)).is_empty());

        open.send(()).unwrap();
        r.woken.recv().unwrap();
        let happened = r.blocker.apply(1000);
        let first = set(&["192.0.2.1", "192.0.2.2", "198.51.100.3"]);
        assert_eq!(blocked(&happened), first);
        let in_kernel: BTreeSet<String> = r
            .kernel
            .lock()
            .unwrap()
            .bans
            .iter()
            .map(|n| n.addr().to_string())
            .collect();
        assert_eq!(in_kernel, first);
        assert_eq!(saved(r.dir.path()), first);

        // The one that waited went as the next batch (the last apply handed it over).
        open.send(()).unwrap();
        let happened = r.blocker.apply_all(1000);
        assert_eq!(blocked(&happened), set(&["203.0.113.4"]));
        assert!(!r.blocker.has_pending());
        assert_eq!(
            r.blocker.metrics.blocks.load(Ordering::Relaxed),
            4,
            "counted once each"
        );
        let calls: Vec<(&str, String)> = r
            .kernel
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(how, thread, _)| (*how, thread.clone()))
            .collect();
        // Two batches, both on the writer thread, both plain adds: the kernel held none
        // of these addresses.
        assert_eq!(
            calls,
            vec![
                ("refill", "ban-writer".to_owned()),
                ("refill", "ban-writer".to_owned())
            ]
        );
        assert_eq!(saved(r.dir.path()).len(), 4);
    }

    #[test]
    fn a_ban_removed_before_its_batch_is_reported_is_taken_out_again_and_never_reported() {
        let mut r = rig(None);
        scan(&mut r.blocker, "192.0.2.1");
        scan(&mut r.blocker, "192.0.2.2");
        assert!(blocked(&r.blocker.apply(1000)).is_empty());
        // The writer has put both in and saved them; the pipeline has not heard yet when
        // `synwatch blocks remove` comes.
        r.woken.recv().unwrap();
        let (reply, _) = r.blocker.control(
            &Request::Remove {
                addr: synwatch_enforce::parse_net("192.0.2.1").unwrap(),
            },
            1001,
            |_| None,
        );
        assert!(reply.ok, "{reply:?}");
        let happened = r.blocker.apply(1001);
        assert_eq!(blocked(&happened), set(&["192.0.2.2"]));
        let in_kernel: Vec<IpNet> = r.kernel.lock().unwrap().bans.iter().copied().collect();
        assert_eq!(in_kernel, vec!["192.0.2.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(saved(r.dir.path()), set(&["192.0.2.2"]));
    }

    #[test]
    fn a_batch_the_kernel_refuses_on_the_writer_thread_is_retried_and_then_reported() {
        let mut r = rig(None);
        r.kernel.lock().unwrap().refuse = true;
        scan(&mut r.blocker, "192.0.2.1");
        let happened = r.blocker.apply_all(1000);
        assert!(blocked(&happened).is_empty(), "{happened:?}");
        assert_eq!(r.blocker.metrics.ban_failures.load(Ordering::Relaxed), 1);
        assert!(r.blocker.has_pending(), "pending again");
        assert!(r.kernel.lock().unwrap().bans.is_empty());
        // Saved all the same: a restart puts it in.
        assert_eq!(saved(r.dir.path()), set(&["192.0.2.1"]));

        r.kernel.lock().unwrap().refuse = false;
        // Not before the retry time.
        assert!(blocked(&r.blocker.apply_all(1001)).is_empty());
        let happened = r.blocker.apply_all(1000 + 5);
        assert_eq!(blocked(&happened), set(&["192.0.2.1"]));
        assert_eq!(r.kernel.lock().unwrap().bans.len(), 1);
    }

    #[test]
    fn a_manual_ban_goes_in_at_once_beside_the_writer() {
        let mut r = rig(None);
        let (reply, happened) = r.blocker.control(
            &Request::Add {
                addr: synwatch_enforce::parse_net("198.51.100.9").unwrap(),
                secs: None,
            },
            1000,
            |_| None,
        );
        assert!(reply.ok, "{reply:?}");
        assert_eq!(blocked(&happened), set(&["198.51.100.9"]));
        assert_eq!(r.kernel.lock().unwrap().bans.len(), 1);
        assert_eq!(saved(r.dir.path()), set(&["198.51.100.9"]));
        // On the caller's thread, renewing whatever the kernel holds for it.
        let calls = &r.kernel.lock().unwrap().calls;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "add");
        assert_ne!(calls[0].1, "ban-writer");
    }

    #[test]
    fn a_pulled_decision_replacing_a_held_ban_is_renewed_in_the_kernel_not_plainly_added() {
        use crate::crowdsec::lapi::Decision;
        use crate::crowdsec::pull::Pull;
        let mut r = rig(None);
        let decision = |id, duration: &str| Decision {
            id,
            origin: "cscli".into(),
            kind: "ban".into(),
            scope: "Ip".into(),
            value: "198.51.100.7".into(),
            duration: duration.into(),
            scenario: "crowdsecurity/ssh-bf".into(),
            simulated: None,
        };
        let pull = |d| Pull {
            startup: false,
            new: vec![d],
            deleted: vec![],
        };
        r.blocker
            .pulled(pull(decision(1, "1h")), 1000, |_| None, |_| false);
        assert_eq!(blocked(&r.blocker.apply_all(1000)), set(&["198.51.100.7"]));
        // The same address for longer: the kernel holds it with the old timeout.
        r.blocker
            .pulled(pull(decision(2, "4h")), 1010, |_| None, |_| false);
        assert_eq!(blocked(&r.blocker.apply_all(1010)), set(&["198.51.100.7"]));
        let calls: Vec<&'static str> = r.kernel.lock().unwrap().calls.iter().map(|c| c.0).collect();
        assert_eq!(calls, vec!["refill", "add"]);
    }
}
