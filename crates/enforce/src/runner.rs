//! The one place where enforcement touches the system: running a program with some input.
//!
//! Helper programs (`nft`, `iptables`, `ipset`, `ip`) run from fixed system directories,
//! checked to be changeable by root only, with a clean environment and a deadline: the
//! agent holds CAP_NET_ADMIN, so whatever it runs does too.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::EnforceError;

/// A program to run, with what it reads on stdin, and what it is for (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: &'static str,
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub what: String,
}

impl Command {
    pub fn new(program: &'static str, args: &[&str], what: impl Into<String>) -> Self {
        Self {
            program,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stdin: None,
            what: what.into(),
        }
    }

    pub fn with_stdin(mut self, stdin: String) -> Self {
        self.stdin = Some(stdin);
        self
    }
}

/// Runs commands; returns stdout on success.
pub trait Runner: Send + std::fmt::Debug {
    fn run(&mut self, cmd: &Command) -> Result<String, EnforceError>;
}

/// Where helper programs are taken from, in this order: never from `$PATH`, which the
/// user who started the agent controls (a fake `nft` first in it would run with the
/// agent's capabilities).
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The environment children get: nothing inherited.
const CLEAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a helper program may run before it is killed (`nft -f` of 100,000 elements
/// takes about 1.5 s, a listing of them about 4 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `name` in `dirs` and checks that only root can change what runs: the file, the
/// target of every link on the way, and each directory holding them must belong to root
/// and be writable by nobody else.
pub fn find_trusted(name: &str, dirs: &[&Path]) -> Result<PathBuf, String> {
    if name.contains('/') || name.is_empty() {
        return Err(format!("{name:?} is not a program name"));
    }
    let mut last_refusal = None;
    for dir in dirs {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        match trusted(&path) {
            Ok(()) => return Ok(path),
            Err(why) => last_refusal = Some(why),
        }
    }
    Err(last_refusal.unwrap_or_else(|| "not found".to_owned()))
}

/// Whether `path` (following links, at most 16) can be changed only by root.
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let owned_by_root_only = |p: &Path, what: &str| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 {
            return Err(format!("{what} {} is not owned by root", p.display()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{what} {} is writable by others than root",
                p.display()
            ));
        }
        Ok(())
    };
    let mut current = path.to_path_buf();
    for _ in 0..16 {
        let dir = current.parent().unwrap_or(Path::new("/"));
        owned_by_root_only(dir, "directory")?;
        let meta = std::fs::symlink_metadata(&current)
            .map_err(|e| format!("{}: {e}", current.display()))?;
        if !meta.file_type().is_symlink() {
            owned_by_root_only(&current, "program")?;
            if !meta.is_file() {
                return Err(format!("{} is not a file", current.display()));
            }
            return Ok(());
        }
        let target =
            std::fs::read_link(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        current = dir.join(target);
    }
    Err(format!("{}: too many links", path.display()))
}

/// The path of helper program `name`, found once per process in [`SYSTEM_DIRS`] and
/// checked by [`find_trusted`].
pub fn system_program(name: &str) -> Result<PathBuf, EnforceError> {
    static FOUND: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut found = FOUND
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dirs: Vec<&Path> = SYSTEM_DIRS.iter().map(Path::new).collect();
    let entry = found
        .entry(name.to_owned())
        .or_insert_with(|| find_trusted(name, &dirs));
    entry.clone().map_err(|why| EnforceError::Untrusted {
        program: name.to_owned(),
        why,
    })
}

/// A [`std::process::Command`] for helper program `name`: from its fixed system path,
/// with a clean environment (only `PATH` of the system directories and `LC_ALL=C`).
pub fn system_command(name: &str) -> Result<std::process::Command, EnforceError> {
    let mut command = std::process::Command::new(system_program(name)?);
    command
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("LC_ALL", "C");
    Ok(command)
}

/// Runs commands for real: from their fixed system paths, with a clean environment, and
/// killed when they overrun `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Runner for SystemRunner {
    fn run(&mut self, cmd: &Command) -> Result<String, EnforceError> {
        let spawn_error = |source| EnforceError::Spawn {
            program: cmd.program.to_owned(),
            source,
        };
        let mut child = system_command(cmd.program)?
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        // Both pipes are drained on threads of their own, so that a child writing more
        // than a pipe holds never blocks, while this thread watches the clock.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        if let Some(input) = &cmd.stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            // A program that exits early closes its end; its exit status says why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let status = wait_for(&mut child, self.timeout).map_err(spawn_error)?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(EnforceError::Timeout {
                program: cmd.program.to_owned(),
                what: cmd.what.clone(),
                secs: self.timeout.as_secs(),
            });
        };
        if status.success() {
            return String::from_utf8(stdout).map_err(|_| EnforceError::Output {
                program: cmd.program.to_owned(),
                what: cmd.what.clone(),
                detail: "not UTF-8".into(),
            });
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let mut lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        // nft echoes the failing input line and a caret line under it; keep the message.
        lines.truncate(3);
        let detail = if lines.is_empty() {
            format!("exit status {status}")
        } else {
            lines.join(" / ")
        };
        Err(EnforceError::Failed {
            program: cmd.program.to_owned(),
            what: cmd.what.clone(),
            stderr: detail,
        })
    }
}

/// Waits for `child` up to `timeout`, then kills it: `None` when it had to be killed.
/// The child is reaped here either way, so no process is left behind.
fn wait_for(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    #[expect(
        clippy::disallowed_methods,
        reason = "a child's deadline is measured here, at the edge that runs it"
    )]
    let started = Instant::now();
    // Most helpers finish within milliseconds: look often at first, then less.
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A runner for tests: records every command and answers from a queue of canned
/// outputs (an empty success once the queue is empty).
#[derive(Debug, Clone, Default)]
pub struct RecordingRunner {
    pub commands: Arc<Mutex<Vec<Command>>>,
    pub answers: Arc<Mutex<VecDeque<Result<String, String>>>>,
}

impl RecordingRunner {
    /// The command lines run so far, each as `program args...` followed by its stdin.
    pub fn transcript(&self) -> Vec<String> {
        let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        commands
            .iter()
            .map(|c| {
                let mut line = std::iter::once(c.program.to_owned())
                    .chain(c.args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Some(stdin) = &c.stdin {
                    line.push('\n');
                    line.push_str(stdin);
                }
                line
            })
            .collect()
    }

    pub fn answer(&self, answer: Result<&str, &str>) {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(answer.map(str::to_owned).map_err(str::to_owned));
    }
}

impl Runner for RecordingRunner {
    fn run(&mut self, cmd: &Command) -> Result<String, EnforceError> {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd.clone());
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        match answer {
            None => Ok(String::new()),
            Some(Ok(out)) => Ok(out),
            Some(Err(stderr)) => Err(EnforceError::Failed {
                program: cmd.program.to_owned(),
                what: cmd.what.clone(),
                stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A directory of the test's own holding an executable `name` (root-owned when the
    /// tests run as root, as `make test` does).
    fn program_in(name: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let path = dir.path().join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        chmod(&path, 0o755);
        dir
    }

    #[test]
    #[ignore = "needs root (files of its own owned by root); make test runs it"]
    fn helpers_come_from_root_owned_system_directories_not_from_path() {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
        assert_eq!(
            me, 0,
            "these checks need root (make test runs them as root)"
        );
        let dir = program_in("nft");
        let found = find_trusted("nft", &[dir.path()]).expect("a root-owned program");
        assert_eq!(found, dir.path().join("nft"));
        // A program others may change is refused, and so is one in a directory others
        // may write to (they could swap it).
        chmod(&found, 0o757);
        let why = find_trusted("nft", &[dir.path()]).expect_err("world-writable program");
        assert!(why.contains("writable by others"), "{why}");
        chmod(&found, 0o755);
        chmod(dir.path(), 0o777);
        let why = find_trusted("nft", &[dir.path()]).expect_err("world-writable directory");
        assert!(why.contains("directory"), "{why}");
        chmod(dir.path(), 0o755);
        // A link is judged by where it leads.
        let elsewhere = program_in("real-nft");
        let link = tempfile::tempdir().expect("tempdir");
        chmod(link.path(), 0o755);
        std::os::unix::fs::symlink(elsewhere.path().join("real-nft"), link.path().join("nft"))
            .expect("symlink");
        assert!(find_trusted("nft", &[link.path()]).is_ok());
        chmod(&elsewhere.path().join("real-nft"), 0o777);
        assert!(find_trusted("nft", &[link.path()]).is_err());
        // Names with a slash are no program names; missing programs are said missing.
        assert!(find_trusted("../nft", &[dir.path()]).is_err());
        assert_eq!(
            find_trusted("nothere", &[dir.path()]),
            Err("not found".to_owned())
        );
    }

    #[test]
    fn the_real_helpers_are_found_in_system_directories() {
        let sh = system_program("sh").expect("/bin/sh or /usr/bin/sh");
        assert!(
            SYSTEM_DIRS.iter().any(|d| sh.starts_with(d)),
            "{}",
            sh.display()
        );
    }

    #[test]
    fn a_child_gets_a_clean_environment() {
        // A variable set for the child itself is dropped too: only the two remain.
        let out = system_command("env")
            .expect("env")
            .env("SYNWATCH_TEST_LEAK", "x")
            .output()
            .expect("run env");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut vars: Vec<&str> = text.lines().collect();
        vars.retain(|v| !v.starts_with("SYNWATCH_TEST_LEAK="));
        vars.sort_unstable();
        assert_eq!(vars, ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    }

    #[test]
    fn a_helper_that_hangs_is_killed_at_its_deadline() {
        let mut runner = SystemRunner {
            timeout: Duration::from_millis(300),
        };
        let hang = Command::new("sleep", &["30"], "wait");
        #[expect(clippy::disallowed_methods, reason = "the test measures the deadline")]
        let started = Instant::now();
        let err = runner.run(&hang).expect_err("killed");
        assert!(matches!(err, EnforceError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "not killed");
        // Output larger than a pipe holds still arrives whole.
        let big = Command::new("head", &["-c", "1000000", "/dev/zero"], "read");
        assert_eq!(runner.run(&big).map(|s| s.len()).ok(), Some(1_000_000));
    }
}
