//! The agent's control socket, `control.sock` in the state directory: how
//! `synwatch blocks` reaches a running agent. One request per connection, one JSON line
//! each way. The socket is created with mode 0600 in a 0700 directory: only its owner
//! (root, normally) can change bans. Each client is served on a thread of its own (at
//! most [`MAX_CLIENTS`] at once) and must send its request within [`REQUEST_WITHIN`], so a
//! silent or slow client holds up no one else (see conns.rs).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::clock::monotonic;

pub const SOCKET_FILE: &str = "control.sock";

/// What `synwatch blocks` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    List,
    /// `secs`: 0 until removed; `None` the agent's `--ban` policy.
    /// `addr`: an address (a /32 or /128) or a CIDR range.
    Add {
        #[serde(with = "net_str")]
        addr: IpNet,
        secs: Option<u64>,
    },
    Remove {
        #[serde(with = "net_str")]
        addr: IpNet,
    },
    Flush,
}

/// One ban as `synwatch blocks list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// The address, or the range (`ADDR/LEN`).
    #[serde(with = "net_str")]
    pub addr: IpNet,
    pub reason: String,
    /// Where the ban comes from: `synwatch` (a scan), `manual`, or the origin of a
    /// CrowdSec decision (`crowdsec/<scenario>`, `cscli`, ...).
    #[serde(default)]
    pub origin: String,
    /// Unix seconds.
    pub since: i64,
    /// Unix seconds; `None` until removed.
    pub expires: Option<i64>,
    pub offences: u32,
    /// Whether the kernel holds it now (`None` when the kernel could not be asked).
    pub in_kernel: Option<bool>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backend in use.
    #[serde(default)]
    pub backend: String,
    /// For `list`, every ban; otherwise the bans the request changed.
    #[serde(default)]
    pub bans: Vec<BanView>,
    /// Something worth telling the operator even on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The saved state was found damaged (said in the note): a list shows only what
    /// could be read of it. Set by the answer given with no agent running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
}

impl Reply {
    /// Success, with nothing to list yet.
    pub fn ok(backend: &str) -> Self {
        Self {
            ok: true,
            error: None,
            backend: backend.to_owned(),
            bans: Vec::new(),
            note: None,
            damaged: false,
        }
    }

    pub fn error(backend: &str, error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            ..Self::ok(backend)
        }
    }
}

/// A network on the wire as people write it: an address alone for a /32 or /128 (as
/// before range bans), `ADDR/LEN` for a range.
mod net_str {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&synwatch_enforce::net_text(*net))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        synwatch_enforce::parse_net(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an address or CIDR: {text}")))
    }
}

/// A request on its way to the pipeline, with where the answer goes.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: mpsc::Sender<Reply>,
}

/// Ban views (a reply) from agent time to wall time (`wall`: wall minus agent time), as
/// they are printed.
pub fn bans_to_wall(bans: &mut [BanView], wall: crate::clock::Offset) {
    for b in bans {
        b.since = wall.to_wall(b.since);
        b.expires = b.expires.map(|t| wall.to_wall(t));
    }
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Binds the control socket. A socket file left by an agent that died is replaced; one
/// that answers belongs to a running agent, which is an error (two agents would fight
/// over the same rules).
pub fn bind(state_dir: &Path) -> Result<UnixListener> {
    let path = socket_path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another synwatch agent is running with the state directory {} (its control socket {} answers); stop it or choose another --state-dir",
                state_dir.display(),
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the control socket {}", path.display()))?;
    Ok(listener)
}

/// Accepts requests on its own thread and hands each to the pipeline through `calls`,
/// wrapped by `wrap` into the pipeline's own message type, until `stop` is set (the
/// thread ends within 200 ms of it, dropping its sender: join the handle).
///
/// A socket file removed behind the agent (its state directory deleted) is noticed
/// within a second, and the socket bound again where it was (the directory made again),
/// so that `synwatch blocks` reaches the agent again.
pub fn serve<M: Send + 'static>(
    listener: Option<UnixListener>,
    state_dir: PathBuf,
    calls: mpsc::SyncSender<M>,
    wrap: fn(Call) -> M,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<()>> {
    if let Some(l) = &listener {
        l.set_nonblocking(true)
            .context("cannot set up the control socket")?;
    }
    thread::Builder::new()
        .name("control".into())
        .spawn(move || serve_rebinding(listener, &state_dir, &calls, wrap, &stop))
        .context("cannot start the control thread")
}

/// The control thread: serves `listener` until `stop`, binding the socket again whenever
/// its file is not the one this thread bound (looked at every [`LOOK_EVERY`]); with no
/// listener (the state directory had no room for it at start), binding it first.
fn serve_rebinding<M: Send + 'static>(
    listener: Option<UnixListener>,
    state_dir: &Path,
    calls: &mpsc::SyncSender<M>,
    wrap: fn(Call) -> M,
    stop: &AtomicBool,
) {
    let limit = crate::conns::Limit::new("control-client", MAX_CLIENTS, line_whole);
    let accept = |l: &UnixListener| l.accept().map(|(stream, _)| stream);
    let path = socket_path(state_dir);
    // The socket file this thread bound, told by its device and inode.
    let mut bound = listener.as_ref().and(crate::state::file_id(&path));
    let mut trouble = None;
    let mut listener = listener;
    while !stop.load(Ordering::Relaxed) {
        if let Some(l) = &listener {
            let looked = std::cell::Cell::new(monotonic());
            // Until asked to stop, or the file is not the one bound.
            let go_on = || {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                let now = monotonic();
                if now.saturating_duration_since(looked.get()) < LOOK_EVERY {
                    return true;
                }
                looked.set(now);
                crate::state::file_id(&path) == bound
            };
            crate::conns::accept_while(l, accept, go_on, |stream| {
                // A client that fails or goes away is its own problem.
                let calls = calls.clone();
                limit.spawn(stream, move |stream, reading| {
                    let _ = answer(stream, reading, &calls, wrap);
                });
            });
            if stop.load(Ordering::Relaxed) {
                break;
            }
            listener = None;
        }
        match rebind(state_dir) {
            Ok(l) => {
                tracing::warn!(
                    "the control socket {} was missing: bound it",
                    path.display()
                );
                (listener, bound, trouble) = (Some(l), crate::state::file_id(&path), None);
            }
            Err(e) => {
                let why = format!("{e:#}");
                if trouble.as_ref() != Some(&why) {
                    tracing::error!(
                        "the control socket is missing and cannot be bound: {why} (retried every second)"
                    );
                }
                trouble = Some(why);
                crate::links::sleep_unless_stopped(stop, LOOK_EVERY);
            }
        }
    }
    // The agent removes its socket before telling this thread to end: one bound again
    // in between would be left behind.
    if bound.is_some() && crate::state::file_id(&path) == bound {
        let _ = std::fs::remove_file(&path);
    }
}

/// How often the control thread looks that its socket file is still there.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The state directory made again where it is missing, and the socket bound in it.
fn rebind(state_dir: &Path) -> Result<UnixListener> {
    crate::state::create_dir_private(state_dir)?;
    let listener = bind(state_dir)?;
    listener
        .set_nonblocking(true)
        .context("cannot set up the control socket")?;
    Ok(listener)
}

/// Clients served at once; more are closed unanswered.
const MAX_CLIENTS: usize = 8;

/// How long a client has to send its whole request, and then to take the answer.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);

/// Whether a request (one line) has come whole.
fn line_whole(r: &[u8]) -> bool {
    r.contains(&b'\n')
}

fn answer<M>(
    mut stream: UnixStream,
    reading: crate::conns::Reading,
    calls: &mpsc::SyncSender<M>,
    wrap: fn(Call) -> M,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    let mut request = Vec::with_capacity(256);
    crate::conns::read_request(
        &mut stream,
        crate::conns::deadline(REQUEST_WITHIN),
        64 * 1024,
        &mut request,
        line_whole,
    )?;
    // The request is in: from here on, this connection is not closed to make room.
    drop(reading);
    stream.set_write_timeout(Some(REQUEST_WITHIN))?;
    let line = String::from_utf8_lossy(&request);
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (tx, rx) = mpsc::channel();
            calls
                .send(wrap(Call { request, reply: tx }))
                .map_err(|_| anyhow::anyhow!("the agent is stopping"))?;
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| Reply::error("", "the agent did not answer in time".into()))
        }
        Err(e) => Reply::error("", format!("a request the agent does not understand: {e}")),
    };
    let mut out = serde_json::to_string(&reply)?;
    out.push('\n');
    (&stream).write_all(out.as_bytes())?;
    Ok(())
}

/// Sends one request to the agent behind `state_dir`; `Ok(None)` when no agent listens.
pub fn call(state_dir: &Path, request: &Request) -> Result<Option<Reply>> {
    let path = socket_path(state_dir);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot reach the agent at {}", path.display()));
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(40)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .with_context(|| format!("cannot send to the agent at {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("no answer from the agent at {}", path.display()))?;
    let reply = serde_json::from_str(&answer)
        .with_context(|| format!("an answer from {} that is not a reply", path.display()))?;
    Ok(Some(reply))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let add = Request::Add {
            addr: synwatch_enforce::parse_net("192.0.2.1").unwrap(),
            secs: Some(60),
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(text, r#"{"op":"add","addr":"192.0.2.1","secs":60}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
        let range = Request::Remove {
            addr: synwatch_enforce::parse_net("2001:db8:1::/48").unwrap(),
        };
        let text = serde_json::to_string(&range).unwrap();
        assert_eq!(text, r#"{"op":"remove","addr":"2001:db8:1::/48"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), range);
        assert!(serde_json::from_str::<Request>(r#"{"op":"remove","addr":"x"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"list"}"#).unwrap(),
            Request::List
        );
    }

    #[test]
    fn a_request_reaches_the_pipeline_and_its_reply_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let (tx, rx) = mpsc::sync_channel::<Call>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let dir_path = dir.path().to_owned();
        let server = serve(Some(listener), dir_path, tx, |c| c, Arc::clone(&stop)).unwrap();
        let pipeline = thread::spawn(move || {
            let call = rx.recv().unwrap();
            assert_eq!(call.request, Request::Flush);
            call.reply
                .send(Reply {
                    ok: true,
                    error: None,
                    backend: "nftables".into(),
                    bans: vec![],
                    note: Some("flushed".into()),
                    damaged: false,
                })
                .unwrap();
            rx
        });
        let reply = call(dir.path(), &Request::Flush).unwrap().unwrap();
        assert_eq!(reply.note.as_deref(), Some("flushed"));
        // A second agent on the same directory is refused.
        let err = bind(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another synwatch agent is running"), "{err}");
        // Asked to stop, the server's thread ends (the agent joins it), dropping its sender.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
        let rx = pipeline.join().unwrap();
        assert!(
            rx.recv().is_err(),
            "the control thread still holds its sender"
        );
    }

    /// The state directory deleted behind the agent: the socket is bound again where it
    /// was, and requests reach the pipeline again.
    #[test]
    fn a_socket_removed_with_its_directory_is_bound_again() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        crate::state::create_dir_private(&dir).unwrap();
        let listener = bind(&dir).unwrap();
        let (tx, rx) = mpsc::sync_channel::<Call>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve(Some(listener), dir.clone(), tx, |c| c, Arc::clone(&stop)).unwrap();
        let pipeline = thread::spawn(move || {
            while let Ok(call) = rx.recv() {
                let _ = call.reply.send(Reply {
                    ok: true,
                    error: None,
                    backend: "nftables".into(),
                    bans: vec![],
                    note: None,
                    damaged: false,
                });
            }
        });
        assert!(call(&dir, &Request::List).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
        let started = monotonic();
        let answered = loop {
            if let Ok(Some(reply)) = call(&dir, &Request::List) {
                break Some(reply);
            }
            if monotonic().saturating_duration_since(started) > Duration::from_secs(5) {
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(answered.is_some_and(|r| r.ok), "not bound again within 5 s");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the directory made again is private");
        // Removed again where it cannot be made at first (a file in the way): bound
        // again once it can be (reviewer's finding: one failure stopped the retries).
        std::fs::remove_dir_all(&dir).unwrap();
        let blocker = top.path().join("state.tmp");
        std::fs::write(&blocker, b"in the way").unwrap();
        std::fs::rename(&blocker, &dir).unwrap();
        thread::sleep(Duration::from_millis(2_500));
        assert!(!matches!(call(&dir, &Request::List), Ok(Some(_))));
        std::fs::remove_file(&dir).unwrap();
        let started = monotonic();
        while !matches!(call(&dir, &Request::List), Ok(Some(_))) {
            let waited = monotonic().saturating_duration_since(started);
            assert!(
                waited < Duration::from_secs(5),
                "not bound again after a failure"
            );
            thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        pipeline.join().unwrap();
        assert!(
            !socket_path(&dir).exists(),
            "the socket it bound is removed as it ends"
        );
    }

    #[test]
    fn no_agent_is_none_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        assert!(call(dir.path(), &Request::List).unwrap().is_none());
        drop(bind(dir.path()).unwrap());
        // The listener is gone but its file stays: no agent answers.
        assert!(call(dir.path(), &Request::List).unwrap().is_none());
        assert!(bind(dir.path()).is_ok());
    }

    #[test]
    fn silent_clients_do_not_hold_up_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let (tx, rx) = mpsc::sync_channel::<Call>(4);
        serve(
            Some(listener),
            dir.path().to_owned(),
            tx,
            |c| c,
            Arc::default(),
        )
        .unwrap();
        let pipeline = thread::spawn(move || {
            let call = rx.recv().unwrap();
            call.reply.send(Reply::ok("nftables")).unwrap();
        });
        let silent: Vec<UnixStream> = (0..5)
            .map(|_| UnixStream::connect(socket_path(dir.path())).unwrap())
            .collect();
        let asked = crate::clock::monotonic();
        let reply = call(dir.path(), &Request::List).unwrap().unwrap();
        assert!(reply.ok);
        assert!(crate::clock::monotonic() - asked < Duration::from_secs(1));
        pipeline.join().unwrap();
        drop(silent);
    }
}
