//! The one place where enforcement touches the system: running a program with some input.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

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

/// Runs commands for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, cmd: &Command) -> Result<String, EnforceError> {
        let spawn_error = |source| EnforceError::Spawn {
            program: cmd.program.to_owned(),
            source,
        };
        let mut child = std::process::Command::new(cmd.program)
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
        if let Some(input) = &cmd.stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            // A program that exits early closes its end; its exit status says why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        if out.status.success() {
            return String::from_utf8(out.stdout).map_err(|_| EnforceError::Output {
                program: cmd.program.to_owned(),
                what: cmd.what.clone(),
                detail: "not UTF-8".into(),
            });
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        // nft echoes the failing input line and a caret line under it; keep the message.
        lines.truncate(3);
        let detail = if lines.is_empty() {
            format!("exit status {}", out.status)
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
