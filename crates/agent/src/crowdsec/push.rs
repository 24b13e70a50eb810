//! Pushing synwatch's bans to the LAPI as alerts, from a thread of its own.
//!
//! The pipeline offers each ban to the [`Outbox`] (a bounded queue: when it is full,
//! the alert is dropped and counted, the pipeline never waits); the push thread logs in
//! (a JWT, renewed before it runs out and whenever the LAPI says 401), posts what is
//! queued in batches of up to [`BATCH`], and while the LAPI is away retries with a
//! backoff doubling from 1 s to 60 s, keeping the queue.
//!
//! A ban this agent pushed and the operator then lifts by hand (`synwatch blocks remove`
//! or `flush`) is withdrawn from the fleet in the same queue, after its alert: the
//! LAPI's decisions of synwatch's scenarios on exactly that network are deleted
//! (`DELETE /v1/decisions`), so that the ban comes back neither on the other hosts nor
//! here, pulled, after a restart.

use std::collections::VecDeque;
use std::io::{self, Read as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use synwatch_enforce::bans::Record;

use super::Stats;
use super::lapi::{Client, Credentials, LapiError};
use crate::clock::monotonic;
use crate::clock::unix_now;

/// Alerts held while the LAPI is away; more are dropped (counted).
pub const QUEUE: usize = 10_000;
/// Alerts per request.
pub const BATCH: usize = 100;
/// A token is renewed this long after it was given (CrowdSec's JWTs last an hour).
const TOKEN_LIFE: Duration = Duration::from_secs(30 * 60);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The file in the state directory where a stopping agent leaves the alerts and
/// withdrawals it could not send, for its next start.
pub const QUEUE_FILE: &str = "crowdsec-queue.jsonl";

/// The most of a saved queue read at start (a full queue of alerts is about 15 MB).
const SAVED_MAX: u64 = 64 << 20;

/// The scenarios synwatch pushes under.
pub const SCENARIOS: [&str; 2] = ["synwatch/port-scan", "synwatch/address-sweep"];

/// What the detector saw of a scan, for its alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The scanning address (a range ban's alert names it, not the range's first).
    pub src: std::net::IpAddr,
    pub sweep: bool,
    pub ports: Vec<u16>,
    /// A sweep's hosts, in the order first seen.
    pub hosts: Vec<std::net::IpAddr>,
}

/// What the push thread sends, in the order it was queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An alert with its decision (`POST /v1/alerts`), and when its ban ends (Unix
    /// seconds; `None`: until removed): the decision's duration is counted from when it
    /// is sent, so an alert that waited for the LAPI does not ban for longer on the
    /// fleet than here, and one whose ban is over is not sent.
    Alert(serde_json::Value, Option<i64>),
    /// A network this agent pushed and the operator lifted: the fleet's decisions of
    /// synwatch's scenarios on it are deleted.
    Withdraw(ipnet::IpNet),
}

/// What one request of the push thread carries: the alerts at the front of the queue,
/// or the withdrawal there.
enum Work {
    /// The alerts to post, and how many queue entries they take (alerts whose ban ended
    /// while queued among them, not posted).
    Alerts(Vec<serde_json::Value>, usize),
    Withdraw(ipnet::IpNet),
}

impl Work {
    /// The work at the front of `items` (not empty), at `now_wall` (Unix seconds).
    fn of(items: Vec<Outgoing>, now_wall: i64) -> Self {
        let (mut alerts, mut taken) = (Vec::new(), 0);
        for item in items {
            match item {
                Outgoing::Alert(a, ends) => {
                    taken += 1;
                    alerts.extend(with_duration(a, ends, now_wall));
                }
                Outgoing::Withdraw(net) if taken == 0 => return Self::Withdraw(net),
                Outgoing::Withdraw(_) => break,
            }
        }
        Self::Alerts(alerts, taken)
    }

    /// Queue entries it takes.
    fn len(&self) -> usize {
        match self {
            Self::Alerts(_, taken) => *taken,
            Self::Withdraw(_) => 1,
        }
    }

    fn send(&self, client: &Client, token: &str) -> Result<(), LapiError> {
        match self {
            Self::Alerts(batch, _) if batch.is_empty() => Ok(()),
            Self::Alerts(batch, _) => client.post_alerts(token, batch),
            Self::Withdraw(net) => {
                let mut deleted = 0;
                for scenario in SCENARIOS {
                    deleted += client.delete_decisions(token, *net, scenario)?;
                }
                tracing::info!(
                    "withdrew {deleted} decision(s) of synwatch's scenarios on {} from the CrowdSec LAPI (the ban was lifted here by hand)",
                    synwatch_enforce::net_text(*net)
                );
                Ok(())
            }
        }
    }
}

/// The queue between the pipeline and the push thread.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    ready: Condvar,
    stats: Arc<Stats>,
}

impl Outbox {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            stats,
        }
    }

    /// Queues an alert; false (and counted) when the queue is full.
    pub fn offer(&self, alert: serde_json::Value, ends: Option<i64>) -> bool {
        self.queue_up(Outgoing::Alert(alert, ends))
    }

    /// Queues the withdrawal of a network this agent pushed; false (and counted) when
    /// the queue is full.
    pub fn withdraw(&self, net: ipnet::IpNet) -> bool {
        self.queue_up(Outgoing::Withdraw(net))
    }

    fn queue_up(&self, item: Outgoing) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() >= QUEUE {
            let before = self.stats.push_dropped.fetch_add(1, Ordering::Relaxed);
            // Said at the first drop and at every thousandth after.
            if before.is_multiple_of(1000) {
                tracing::warn!(
                    "warning: the queue of alerts for the CrowdSec LAPI is full ({QUEUE}); {} dropped so far (synwatch_crowdsec_push_dropped_total)",
                    before + 1
                );
            }
            return false;
        }
        q.push_back(item);
        self.stats
            .push_queue
            .store(q.len() as u64, Ordering::Relaxed);
        self.ready.notify_one();
        true
    }

    /// Up to `n` entries from the front (left in the queue), waiting up to `wait` for one.
    fn peek(&self, n: usize, wait: Duration) -> Vec<Outgoing> {
        let Ok(q) = self.queue.lock() else {
            return Vec::new();
        };
        let q = match self.ready.wait_timeout_while(q, wait, |q| q.is_empty()) {
            Ok((q, _)) => q,
            Err(_) => return Vec::new(),
        };
        q.iter().take(n).cloned().collect()
    }

    /// Removes `n` alerts from the front (posted, or refused for good).
    fn done(&self, n: usize) {
        if let Ok(mut q) = self.queue.lock() {
            let n = n.min(q.len());
            q.drain(..n);
            self.stats
                .push_queue
                .store(q.len() as u64, Ordering::Relaxed);
        }
    }

    pub fn wake(&self) {
        self.ready.notify_all();
    }

    /// Writes what is still queued to `path` (a stopping agent, for its next start): one
    /// JSON object a line, `{"alert":...,"ends":UNIX_OR_NULL}` or `{"withdraw":"NET"}`,
    /// written aside and renamed into place, readable by root alone. Nothing queued
    /// removes the file. Returns how many were saved.
    pub fn save(&self, path: &Path) -> io::Result<usize> {
        let items: Vec<Outgoing> = match self.queue.lock() {
            Ok(q) => q.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        };
        if items.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(0),
            };
        }
        let mut text = String::new();
        for item in &items {
            let line = match item {
                Outgoing::Alert(a, ends) => serde_json::json!({ "alert": a, "ends": ends }),
                Outgoing::Withdraw(net) => serde_json::json!({ "withdraw": net.to_string() }),
            };
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let aside = path.with_extension("jsonl.new");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&aside, path)?;
        Ok(items.len())
    }

    /// Queues what a stopped agent saved in `path` ([`Outbox::save`]), then removes the
    /// file: withdrawals as they were; alerts unless their ban ended while the agent was
    /// away. Lines that do not read are left out and counted. Returns (queued, left
    /// out); no file is (0, 0).
    pub fn restore(&self, path: &Path, now_wall: i64) -> io::Result<(usize, usize)> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e),
            // A FIFO would hold the start, a device or a link is not what a stop wrote.
            Ok(m) if !m.is_file() => {
                return Err(io::Error::other("not a regular file; left alone, not read"));
            }
            Ok(_) => {}
        }
        // At most what a full queue takes and more: a larger file is cut there.
        let mut bytes = Vec::new();
        io::Read::take(std::fs::File::open(path)?, SAVED_MAX).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let (mut queued, mut left_out) = (0, 0);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if saved_item(line, now_wall).is_some_and(|item| self.queue_up(item)) {
                queued += 1;
            } else {
                left_out += 1;
            }
        }
        std::fs::remove_file(path)?;
        Ok((queued, left_out))
    }
}

/// The alert of one ban (swagger's `Alert`, with one `Decision`).
pub fn alert(record: &Record, note: Option<&Note>, now: i64) -> serde_json::Value {
    let net = record.net;
    let host = synwatch_enforce::is_host(net);
    let value = synwatch_enforce::net_text(net);
    let scope = if host { "Ip" } else { "Range" };
    let sweep = note.is_some_and(|n| n.sweep);
    let scenario = SCENARIOS[usize::from(sweep)];
    let ports: Vec<u16> = match note {
        Some(n) => n.ports.clone(),
        None => ports_of(&record.reason),
    };
    let ports_text = comma_joined(&ports);
    let count = if sweep {
        note.map_or(0, |n| n.hosts.len())
    } else {
        ports.len()
    };
    let message = if sweep {
        format!("synwatch: {value} swept {count} hosts on port {ports_text}")
    } else {
        format!("synwatch: {value} scanned {count} ports ({ports_text})")
    };
    let duration = match record.expires {
        Some(e) => format!("{}s", e.saturating_sub(now).max(1)),
        // Until removed: a year, the LAPI has no "forever".
        None => "8760h".to_owned(),
    };
    // Ban times are agent time (crate::clock); the LAPI is told wall-clock times.
    let wall = crate::clock::wall_offset();
    let at = crate::timefmt::rfc3339(wall.to_wall(record.since).saturating_mul(1_000_000_000));
    let stamp = crate::timefmt::rfc3339(wall.to_wall(now).saturating_mul(1_000_000_000));
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if host {
        source["ip"] = serde_json::Value::String(net.addr().to_string());
    } else {
        source["range"] = serde_json::Value::String(value.clone());
    }
    let mut meta = vec![
        serde_json::json!({"key": "source_ip", "value": note.map_or(net.addr(), |n| n.src).to_string()}),
        serde_json::json!({"key": "ports", "value": ports_text}),
        serde_json::json!({"key": "offences", "value": record.offences.to_string()}),
    ];
    if let Some(n) = note.filter(|_| sweep) {
        meta.push(serde_json::json!({"key": "hosts", "value": comma_joined(&n.hosts)}));
    }
    serde_json::json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": message,
        "events_count": i32::try_from(count.max(1)).unwrap_or(i32::MAX),
        "start_at": at,
        "stop_at": stamp,
        "capacity": 0,
        "leakspeed": "0s",
        "simulated": false,
        "remediation": true,
        "events": [{ "timestamp": stamp, "meta": meta }],
        "source": source,
        "decisions": [{
            "origin": "crowdsec",
            "type": "ban",
            "scope": scope,
            "value": value,
            "duration": duration,
            "scenario": scenario,
        }],
    })
}

/// One line of a saved queue ([`Outbox::save`]), as it is to be queued again at
/// `now_wall`: `None` if it does not read, or is an alert whose ban is over.
fn saved_item(line: &str, now_wall: i64) -> Option<Outgoing> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if let Some(net) = v.get("withdraw") {
        return net.as_str()?.parse().ok().map(Outgoing::Withdraw);
    }
    let ends = match v.get("ends")? {
        serde_json::Value::Null => None,
        e => Some(e.as_i64()?),
    };
    if ended(ends, now_wall) {
        return None;
    }
    Some(Outgoing::Alert(v.get("alert")?.clone(), ends))
}

/// Whether a ban ending at `ends` (Unix seconds; `None`: until removed) is over at
/// `now_wall`.
fn ended(ends: Option<i64>, now_wall: i64) -> bool {
    ends.is_some_and(|e| e <= now_wall)
}

/// `alert` with its decision's duration counted from `now_wall` to `ends` (Unix seconds;
/// `None`, until removed: "8760h" as made); `None` once the ban is over.
fn with_duration(
    mut alert: serde_json::Value,
    ends: Option<i64>,
    now_wall: i64,
) -> Option<serde_json::Value> {
    if ended(ends, now_wall) {
        return None;
    }
    let Some(ends) = ends else {
        return Some(alert);
    };
    let left = ends.saturating_sub(now_wall);
    if let Some(d) = alert
        .get_mut("decisions")
        .and_then(|d| d.get_mut(0))
        .and_then(|d| d.get_mut("duration"))
    {
        *d = serde_json::Value::String(format!("{left}s"));
    }
    Some(alert)
}

/// `items` as text, comma-separated.
fn comma_joined<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// When the ban of `record` ends, in Unix seconds (`None`: until removed), for
/// [`Outbox::offer`].
pub fn ends_wall(record: &Record) -> Option<i64> {
    record
        .expires
        .map(|e| crate::clock::wall_offset().to_wall(e))
}

/// The ports of a scan's reason (`ports 22,80` or `ports 22,80 from ADDR`).
fn ports_of(reason: &str) -> Vec<u16> {
    reason
        .strip_prefix("ports ")
        .and_then(|r| r.split_whitespace().next())
        .map(|list| list.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a record is a ban synwatch decided from a scan (not manual, not pulled).
pub fn is_detection(record: &Record) -> bool {
    record.reason.starts_with("ports ")
}

/// Whether an HTTP status refusing a push says the request itself is refused, so that
/// sending it again cannot help: any 4xx but 401 and 403 (the credentials: logged in
/// again, or retried with backoff), 408 (a timeout) and 429 (too many requests), which
/// are retried. (A 413 for more than one alert splits the batch instead: see [`run`].)
fn refused_for_good(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 401 | 403 | 408 | 429)
}

/// Takes out of the queue the work the LAPI refused for good (`e`), counted and said.
fn drop_refused(client: &Client, outbox: &Outbox, stats: &Stats, work: &Work, e: &LapiError) {
    outbox.done(work.len());
    stats
        .push_dropped
        .fetch_add(work.len() as u64, Ordering::Relaxed);
    stats.push_errors.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        "the CrowdSec LAPI at {} refused {} alert(s) or withdrawal(s), dropped: {e}",
        client.base(),
        work.len()
    );
}

/// The push thread's loop: until `stop`. A batch of alerts refused as too large (HTTP
/// 413) is sent again in halves, down to one alert, which alone is dropped; after each
/// batch taken, the next may be twice as large again, up to [`BATCH`].
pub fn run(
    client: &Client,
    creds: &Credentials,
    outbox: &Outbox,
    stats: &Stats,
    stop: &AtomicBool,
) {
    let mut token: Option<(String, Instant)> = None;
    let mut backoff = Duration::from_secs(1);
    let mut failing = false;
    // Alerts per request now.
    let mut per_post = BATCH;
    while !stop.load(Ordering::Relaxed) {
        let items = outbox.peek(per_post, Duration::from_millis(500));
        if items.is_empty() {
            continue;
        }
        let work = Work::of(items, unix_now());
        if token
            .as_ref()
            .is_some_and(|(_, at)| monotonic().duration_since(*at) >= TOKEN_LIFE)
        {
            token = None;
        }
        // Whether the token was held before this turn: a 401 to a token just given is
        // no reason to log in again at once (that would spin against the LAPI).
        let held = token.is_some();
        let result = match &token {
            Some((t, _)) => work.send(client, t),
            None => match client.login(creds, &SCENARIOS) {
                Ok(t) => {
                    let r = work.send(client, &t);
                    token = Some((t, monotonic()));
                    r
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                outbox.done(work.len());
                if let Work::Alerts(batch, _) = &work {
                    stats
                        .pushed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                stats.last_push.store(unix_now(), Ordering::Relaxed);
                if failing {
                    tracing::info!("the CrowdSec LAPI at {} takes alerts again", client.base());
                }
                failing = false;
                backoff = Duration::from_secs(1);
                per_post = (per_post * 2).min(BATCH);
            }
            Err(e) if e.status() == Some(401) && held => {
                // The token ran out or the LAPI restarted with another secret: log in again.
                token = None;
            }
            Err(e) if e.status() == Some(413) && work.len() > 1 => {
                // Too large for the LAPI (or a proxy before it): its first half at once.
                per_post = work.len() / 2;
                stats.push_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the CrowdSec LAPI at {} refused {} alerts at once as too large ({e}); sending {per_post} at a time",
                    client.base(),
                    work.len()
                );
            }
            Err(e @ LapiError::Status { code, .. }) if refused_for_good(code) => {
                drop_refused(client, outbox, stats, &work, &e);
            }
            Err(e) => {
                stats.push_errors.fetch_add(1, Ordering::Relaxed);
                let hint = match e.status() {
                    Some(401 | 403) => " (check --crowdsec-credentials: `cscli machines list`)",
                    _ => "",
                };
                if !failing {
                    tracing::error!(
                        "cannot push bans to the CrowdSec LAPI at {}: {e}{hint}; {} alert(s) queued, retrying with backoff (up to {} s)",
                        client.base(),
                        work.len(),
                        BACKOFF_MAX.as_secs()
                    );
                }
                failing = true;
                token = token.filter(|_| e.status().is_none());
                if !super::sleep_unless_stopped(backoff, stop) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// A LAPI on 127.0.0.1 answering each request (one a connection) with
    /// `answer(path, bearer token, logins so far, body)`; what it was asked is logged.
    struct FakeLapi {
        base: String,
        asked: Arc<Mutex<Vec<String>>>,
    }

    impl FakeLapi {
        fn start(answer: fn(&str, &str, usize, &str) -> (u16, String)) -> Self {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let asked = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&asked);
            std::thread::spawn(move || {
                let mut logins = 0;
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { return };
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        continue;
                    }
                    let method = line.split_whitespace().next().unwrap_or("").to_owned();
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (mut length, mut token) = (0, String::new());
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                        let lower = header.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if let Some(v) = header.strip_prefix("Authorization: Bearer ") {
                            token = v.trim().to_owned();
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    if path.ends_with("/login") {
                        logins += 1;
                        log.lock().unwrap().push("login".to_owned());
                    } else if path.starts_with("/v1/alerts") {
                        log.lock().unwrap().push(format!("alerts {token}"));
                    } else {
                        log.lock().unwrap().push(format!("{method} {path} {token}"));
                    }
                    let (code, text) =
                        answer(&path, &token, logins, &String::from_utf8_lossy(&body));
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
            });
            Self { base, asked }
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    /// Runs the push thread against `lapi` while `during` offers alerts and waits.
    fn pushing(lapi: &FakeLapi, during: impl FnOnce(&Outbox, &Stats)) {
        pushing_queued(lapi, &[], during);
    }

    /// [`pushing`], with `queued` in the queue before the push thread starts.
    fn pushing_queued(
        lapi: &FakeLapi,
        queued: &[serde_json::Value],
        during: impl FnOnce(&Outbox, &Stats),
    ) {
        let stats = Arc::new(Stats::default());
        let outbox = Arc::new(Outbox::new(Arc::clone(&stats)));
        for alert in queued {
            assert!(outbox.offer(alert.clone(), None));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let creds = Credentials {
            url: lapi.base.clone(),
            login: "victim".into(),
            password: "secret".into(),
        };
        let client = Client::new(lapi.base.clone());
        let thread = {
            let (outbox, stats, stop) =
                (Arc::clone(&outbox), Arc::clone(&stats), Arc::clone(&stop));
            std::thread::spawn(move || run(&client, &creds, &outbox, &stats, &stop))
        };
        during(&outbox, &stats);
        stop.store(true, Ordering::Relaxed);
        outbox.wake();
        thread.join().unwrap();
    }

    fn pushed_within(stats: &Stats, n: u64, secs: u64) -> bool {
        let until = monotonic() + Duration::from_secs(secs);
        while monotonic() < until {
            if stats.pushed.load(Ordering::Relaxed) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_token_the_lapi_no_longer_takes_is_renewed_at_once() {
        // The first token is taken once, then refused (the LAPI restarted with another
        // secret); the second is taken.
        let lapi = FakeLapi::start(|path, token, logins, _| {
            static TAKEN: AtomicBool = AtomicBool::new(false);
            if path.ends_with("/login") {
                return (200, format!("{{\"code\":200,\"token\":\"t{logins}\"}}"));
            }
            match token {
                "t1" if !TAKEN.swap(true, Ordering::Relaxed) => (201, "[]".into()),
                "t2" => (201, "[]".into()),
                _ => (401, "{\"message\":\"token expired\"}".into()),
            }
        });
        pushing(&lapi, |outbox, stats| {
            assert!(outbox.offer(serde_json::json!({"scenario": "synwatch/port-scan"}), None));
            assert!(pushed_within(stats, 1, 10), "the first alert pushed");
            assert!(outbox.offer(serde_json::json!({"scenario": "synwatch/port-scan"}), None));
            assert!(pushed_within(stats, 2, 10), "the second alert pushed");
            // Renewed at once: no failed push counted, no backoff taken.
            assert_eq!(stats.push_errors.load(Ordering::Relaxed), 0);
        });
        assert_eq!(
            lapi.asked(),
            ["login", "alerts t1", "alerts t1", "login", "alerts t2"]
        );
    }

    /// The decisions are named by `value=`, which the LAPI matches exactly: with `ip=`
    /// or `range=` it deletes every decision whose range contains the network too (the
    /// /64 or /26 another host pushed), fleet-wide.
    #[test]
    fn a_ban_lifted_by_hand_is_withdrawn_after_its_alert_for_both_scenarios() {
        let lapi = FakeLapi::start(|path, _, logins, _| {
            if path.ends_with("/login") {
                (200, format!("{{\"code\":200,\"token\":\"t{logins}\"}}"))
            } else if path.starts_with("/v1/decisions") {
                (200, "{\"nbDeleted\":\"1\"}".into())
            } else {
                (201, "[]".into())
            }
        });
        pushing(&lapi, |outbox, stats| {
            assert!(outbox.offer(serde_json::json!({"scenario": "synwatch/port-scan"}), None));
            assert!(outbox.withdraw("192.0.2.7/32".parse().unwrap()));
            assert!(outbox.withdraw("2001:db8:1:2::/64".parse().unwrap()));
            let until = monotonic() + Duration::from_secs(10);
            while lapi.asked().len() < 6 && monotonic() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(stats.pushed.load(Ordering::Relaxed), 1);
            assert_eq!(stats.push_errors.load(Ordering::Relaxed), 0);
        });
        let asked = lapi.asked();
        assert_eq!(asked[..2], ["login", "alerts t1"], "{asked:?}");
        let deletes: Vec<String> = asked[2..]
            .iter()
            .map(|a| a.replace("%2F", "/").replace("%3A", ":"))
            .collect();
        assert_eq!(
            deletes,
            [
                "DELETE /v1/decisions?value=192.0.2.7&scenario=synwatch/port-scan t1",
                "DELETE /v1/decisions?value=192.0.2.7&scenario=synwatch/address-sweep t1",
                "DELETE /v1/decisions?value=2001:db8:1:2::/64&scenario=synwatch/port-scan t1",
                "DELETE /v1/decisions?value=2001:db8:1:2::/64&scenario=synwatch/address-sweep t1",
            ],
            "{asked:?}"
        );
    }

    #[test]
    fn a_fresh_token_refused_backs_off_instead_of_spinning() {
        let lapi = FakeLapi::start(|path, _, logins, _| {
            if path.ends_with("/login") {
                (200, format!("{{\"code\":200,\"token\":\"t{logins}\"}}"))
            } else {
                (401, "{\"message\":\"no\"}".into())
            }
        });
        pushing(&lapi, |outbox, stats| {
            assert!(outbox.offer(serde_json::json!({"scenario": "synwatch/port-scan"}), None));
            std::thread::sleep(Duration::from_millis(2_500));
            assert_eq!(stats.pushed.load(Ordering::Relaxed), 0);
            assert!(stats.push_errors.load(Ordering::Relaxed) >= 1);
        });
        let logins = lapi.asked().iter().filter(|a| *a == "login").count();
        // Backoff of 1 s, then 2 s: two or three logins in 2.5 s, not hundreds.
        assert!((1..=3).contains(&logins), "{:?}", lapi.asked());
    }

    /// A LAPI (or a proxy before it) that times out once (408), then takes alerts: the
    /// alert is sent again, not dropped.
    #[test]
    fn an_alert_answered_408_is_sent_again() {
        let lapi = FakeLapi::start(|path, _, logins, _| {
            static TIMED_OUT: AtomicBool = AtomicBool::new(false);
            if path.ends_with("/login") {
                (200, format!("{{\"code\":200,\"token\":\"t{logins}\"}}"))
            } else if !TIMED_OUT.swap(true, Ordering::Relaxed) {
                (408, "{\"message\":\"request timeout\"}".into())
            } else {
                (201, "[]".into())
            }
        });
        pushing(&lapi, |outbox, stats| {
            assert!(outbox.offer(serde_json::json!({"scenario": "synwatch/port-scan"}), None));
            assert!(pushed_within(stats, 1, 10), "pushed after the 408");
            assert_eq!(stats.push_dropped.load(Ordering::Relaxed), 0);
        });
        let posts = lapi
            .asked()
            .iter()
            .filter(|a| a.starts_with("alerts"))
            .count();
        assert_eq!(posts, 2, "{:?}", lapi.asked());
    }

    /// A LAPI that takes at most two alerts a request and refuses one of them alone as
    /// too large (413): the batch is halved until each part is taken, and only that one
    /// alert is dropped.
    #[test]
    fn a_batch_refused_as_too_large_is_split_and_only_a_lone_alert_refused_is_dropped() {
        let lapi = FakeLapi::start(|path, _, logins, body| {
            if path.ends_with("/login") {
                return (200, format!("{{\"code\":200,\"token\":\"t{logins}\"}}"));
            }
            let alerts = body.matches("\"scenario\"").count();
            if alerts > 2 || body.contains("huge") {
                (413, "{\"message\":\"request entity too large\"}".into())
            } else {
                (201, "[]".into())
            }
        });
        let alert =
            |tag: &str| serde_json::json!({"scenario": "synwatch/port-scan", "message": tag});
        let queued: Vec<serde_json::Value> = ["a", "huge", "c", "d", "e"]
            .iter()
            .map(|t| alert(t))
            .collect();
        pushing_queued(&lapi, &queued, |_, stats| {
            assert!(pushed_within(stats, 4, 10), "the four others pushed");
            assert_eq!(stats.push_dropped.load(Ordering::Relaxed), 1);
            assert_eq!(stats.push_queue.load(Ordering::Relaxed), 0);
        });
        // The five refused; a and huge refused; a; huge and c refused; huge alone
        // refused (dropped); c; d and e.
        let posts = lapi
            .asked()
            .iter()
            .filter(|a| a.starts_with("alerts"))
            .count();
        assert_eq!(posts, 7, "{:?}", lapi.asked());
    }

    fn record(net: &str, reason: &str, expires: Option<i64>) -> Record {
        Record {
            net: net.parse().unwrap(),
            since: 1_000,
            expires,
            reason: reason.into(),
            offences: 1,
            new_only: false,
        }
    }

    #[test]
    fn a_port_scan_becomes_an_ip_alert_with_its_decision() {
        let r = record("192.0.2.7/32", "ports 22,80,443", Some(4_600));
        let a = alert(&r, None, 1_000);
        assert_eq!(a["scenario"], "synwatch/port-scan");
        assert_eq!(a["source"]["scope"], "Ip");
        assert_eq!(a["source"]["value"], "192.0.2.7");
        assert_eq!(a["source"]["ip"], "192.0.2.7");
        assert_eq!(a["events_count"], 3);
        let d = &a["decisions"][0];
        assert_eq!(d["type"], "ban");
        assert_eq!(d["scope"], "Ip");
        assert_eq!(d["value"], "192.0.2.7");
        assert_eq!(d["duration"], "3600s");
        assert_eq!(d["scenario"], "synwatch/port-scan");
        let meta = a["events"][0]["meta"].as_array().unwrap();
        assert!(
            meta.iter()
                .any(|m| m["key"] == "ports" && m["value"] == "22,80,443")
        );
        for field in [
            "scenario_hash",
            "scenario_version",
            "message",
            "start_at",
            "stop_at",
            "capacity",
            "leakspeed",
            "simulated",
        ] {
            assert!(!a[field].is_null(), "{field}");
        }
    }

    #[test]
    fn an_ipv6_prefix_is_a_range_alert_and_a_sweep_its_own_scenario() {
        let r = record(
            "2001:db8:1:2::/64",
            "ports 22,80 from 2001:db8:1:2::9",
            None,
        );
        let hosts: Vec<std::net::IpAddr> = (1..=12)
            .map(|i| format!("2001:db8:ff::{i}").parse().unwrap())
            .collect();
        let note = Note {
            src: "2001:db8:1:2::9".parse().unwrap(),
            sweep: true,
            ports: vec![22],
            hosts,
        };
        let a = alert(&r, Some(&note), 1_000);
        assert_eq!(a["scenario"], "synwatch/address-sweep");
        assert_eq!(a["source"]["scope"], "Range");
        assert_eq!(a["source"]["range"], "2001:db8:1:2::/64");
        assert_eq!(a["decisions"][0]["scope"], "Range");
        assert_eq!(a["decisions"][0]["duration"], "8760h");
        assert_eq!(a["events_count"], 12);
        // The meta names the scanning address (not the range's first) and the hosts.
        let meta = |key: &str| {
            a["events"][0]["meta"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["key"] == key)
                .map(|m| m["value"].clone())
        };
        assert_eq!(meta("source_ip").unwrap(), "2001:db8:1:2::9");
        let listed = meta("hosts").unwrap();
        let listed: Vec<&str> = listed.as_str().unwrap().split(',').collect();
        assert_eq!(listed.len(), 12);
        assert_eq!(listed[0], "2001:db8:ff::1");
        assert_eq!(listed[11], "2001:db8:ff::12");
    }

    /// What a stopping agent leaves queued comes back at the next start: withdrawals as
    /// they were, alerts unless their ban ended meanwhile; a line that does not read is
    /// left out, and the file is gone once read. An alert's duration is counted from
    /// when it is sent.
    #[test]
    fn a_queue_saved_at_stop_is_queued_again_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(QUEUE_FILE);
        let stats = Arc::new(Stats::default());
        let o = Outbox::new(Arc::clone(&stats));
        let made = |net: &str| alert(&record(net, "ports 1,2,3,4", None), None, 1_000);
        o.offer(made("192.0.2.7/32"), Some(50_100));
        o.withdraw("198.51.100.0/24".parse().unwrap());
        o.offer(made("192.0.2.8/32"), Some(54_000));
        o.offer(made("192.0.2.9/32"), None);
        assert_eq!(o.save(&path).unwrap(), 4);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n{\"withdraw\":\"not a net\"}\n");
        std::fs::write(&path, text).unwrap();

        // Started again at 50,500: the first alert's ban is over.
        let again = Outbox::new(Arc::clone(&stats));
        assert_eq!(again.restore(&path, 50_500).unwrap(), (3, 3));
        assert!(!path.exists());
        let items = again.peek(10, Duration::ZERO);
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            Outgoing::Withdraw("198.51.100.0/24".parse().unwrap())
        );
        assert_eq!(
            items[1],
            Outgoing::Alert(made("192.0.2.8/32"), Some(54_000))
        );
        assert_eq!(items[2], Outgoing::Alert(made("192.0.2.9/32"), None));
        // Sent at 51,000: the alert bans for what is left of the ban, 3,000 s.
        let Work::Alerts(batch, taken) = Work::of(items[1..].to_vec(), 51_000) else {
            panic!("alerts")
        };
        assert_eq!(taken, 2);
        assert_eq!(batch[0]["decisions"][0]["duration"], "3000s");
        assert_eq!(batch[1]["decisions"][0]["duration"], "8760h");
        // Sent after its end: taken from the queue, not posted.
        let Work::Alerts(batch, taken) = Work::of(items[1..2].to_vec(), 54_000) else {
            panic!("alerts")
        };
        assert_eq!((batch.len(), taken), (0, 1));
        // Bytes that are not UTF-8 are one bad line; the others still read.
        std::fs::write(&path, b"\xff\xfe{\n{\"withdraw\":\"192.0.2.0/24\"}\n").unwrap();
        assert_eq!(
            Outbox::new(Arc::clone(&stats)).restore(&path, 0).unwrap(),
            (1, 1)
        );
        // Something other than a file there is left alone, not read (a FIFO would hang).
        std::fs::create_dir(&path).unwrap();
        assert!(Outbox::new(Arc::clone(&stats)).restore(&path, 0).is_err());
        std::fs::remove_dir(&path).unwrap();
        // Nothing queued: no file, and none to read.
        assert_eq!(Outbox::new(Arc::clone(&stats)).save(&path).unwrap(), 0);
        assert!(!path.exists());
        assert_eq!(again.restore(&path, 0).unwrap(), (0, 0));
    }

    #[test]
    fn the_outbox_is_bounded_and_counts_what_it_drops() {
        let stats = Arc::new(Stats::default());
        let o = Outbox::new(Arc::clone(&stats));
        for i in 0..QUEUE + 5 {
            o.offer(serde_json::json!(i), None);
        }
        assert_eq!(stats.push_dropped.load(Ordering::Relaxed), 5);
        assert_eq!(stats.push_queue.load(Ordering::Relaxed), QUEUE as u64);
        let first = o.peek(BATCH, Duration::ZERO);
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0], Outgoing::Alert(serde_json::json!(0), None));
        o.done(BATCH);
        assert_eq!(
            o.peek(1, Duration::ZERO)[0],
            Outgoing::Alert(serde_json::json!(BATCH), None)
        );
    }

    #[test]
    fn detections_are_told_from_manual_and_pulled_bans() {
        assert!(is_detection(&record("192.0.2.1/32", "ports 1,2", None)));
        assert!(!is_detection(&record("192.0.2.1/32", "manual", None)));
        assert!(!is_detection(&record("192.0.2.1/32", "lapi:cscli", None)));
        assert_eq!(ports_of("ports 22,80 from 2001:db8::1"), vec![22, 80]);
    }
}
