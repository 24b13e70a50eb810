//! Diagnostics on stderr: `--log-level` and `--log-format` (file < env < flags), the
//! familiar `synwatch: message` text, and one JSON object per line. No root needed:
//! `replay` of two captures given out of time order says so at info, and `--direction
//! both` without `--local` warns; `run` with an unknown interface is an error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use synwatch_testkit::pcap::PcapWriter;

const INFO_LINE: &str = "replaying in the time order of the files' first packets";
const WARN_LINE: &str = "warning: without --local every attempt counts as incoming";

/// Two one-packet captures, the first named holding the later packet.
fn captures(dir: &Path) -> [PathBuf; 2] {
    let write = |name: &str, secs: i64| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).expect("create capture");
        let mut w = PcapWriter::new(file, 1, false).expect("pcap header");
        w.write_packet(secs * 1_000_000_000, &[0u8; 60])
            .expect("write packet");
        w.finish().expect("finish");
        path
    };
    [
        write("later.pcap", 1_700_000_100),
        write("earlier.pcap", 1_700_000_000),
    ]
}

fn replay(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = captures(dir.path());
    Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["replay", "--direction", "both", "--format", "json"])
        .args(args)
        .args(&files)
        .env("SYNWATCH_NO_SUMMARY", "1")
        .envs(envs.iter().copied())
        .output()
        .expect("run synwatch")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every stderr line, each of which must be a JSON object with a level and a message.
fn json_lines(out: &Output) -> Vec<Value> {
    let text = stderr(out);
    assert!(!text.is_empty(), "no diagnostics");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
            assert!(v["target"].is_string() && v["fields"].is_object(), "{l}");
            v
        })
        .collect()
}

fn has(lines: &[Value], level: &str, start: &str) -> bool {
    lines
        .iter()
        .any(|v| v["level"] == level && v["message"].as_str().is_some_and(|m| m.starts_with(start)))
}

#[test]
fn text_is_the_default_and_keeps_the_synwatch_prefix() {
    let out = replay(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains(&format!("synwatch: {INFO_LINE}")), "{text}");
    assert!(text.contains(&format!("synwatch: {WARN_LINE}")), "{text}");
}

#[test]
fn json_gives_one_object_per_line_with_level_and_message() {
    let out = replay(&["--log-format", "json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert!(has(&lines, "info", INFO_LINE), "{}", stderr(&out));
    assert!(has(&lines, "warn", WARN_LINE), "{}", stderr(&out));
    // Events stay on stdout, and stay JSON events.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"level\""));
}

#[test]
fn the_level_silences_what_is_less_severe() {
    let warn = stderr(&replay(&["--log-level", "warn"], &[]));
    assert!(
        warn.contains(WARN_LINE) && !warn.contains(INFO_LINE),
        "{warn}"
    );
    let error = replay(&["--log-level", "error"], &[]);
    assert_eq!(error.status.code(), Some(0));
    assert_eq!(stderr(&error), "");
}

#[test]
fn the_options_layer_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("synwatch.toml");
    std::fs::write(&config, "log_level = \"error\"\nlog_format = \"json\"\n").expect("write");
    let config = config.to_str().expect("utf-8 path");
    // The file alone: nothing at error level here.
    assert_eq!(stderr(&replay(&["--config", config], &[])), "");
    // The environment over the file: info again, as JSON (from the file).
    let env = replay(&["--config", config], &[("SYNWATCH_LOG_LEVEL", "info")]);
    assert!(
        has(&json_lines(&env), "info", INFO_LINE),
        "{}",
        stderr(&env)
    );
    // The flag over the environment.
    let flag = replay(
        &["--config", config, "--log-format", "text"],
        &[
            ("SYNWATCH_LOG_LEVEL", "info"),
            ("SYNWATCH_LOG_FORMAT", "json"),
        ],
    );
    assert!(
        stderr(&flag).contains(&format!("synwatch: {INFO_LINE}")),
        "{}",
        stderr(&flag)
    );
}

#[test]
fn a_bad_value_in_the_file_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("synwatch.toml");
    std::fs::write(&config, "log_format = \"xml\"\n").expect("write");
    let out = replay(&["--config", config.to_str().expect("utf-8 path")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "synwatch: invalid log_format 'xml' in the config file: expected text or json\n"
    );
}

#[test]
fn a_run_usage_error_is_a_json_error_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "no-such-if0", "--log-format", "json"])
        .output()
        .expect("run synwatch");
    assert_eq!(out.status.code(), Some(2));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(
        has(&lines, "error", "invalid --iface 'no-such-if0'"),
        "{}",
        stderr(&out)
    );
}

/// The exit code of `synwatch ARGS` run by bash with `redirect` (say `2>&1 | head -c 1`):
/// `${PIPESTATUS[0]}`, synwatch's own.
fn exit_code_with(args: &str, redirect: &str) -> String {
    let script = format!(
        "{} {args} {redirect}; echo \"exit ${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_synwatch")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("exit ").map(str::to_owned))
        .unwrap_or_default()
}

/// A stderr that cannot be written (closed, or a pipe whose reader left, as in
/// `synwatch replay F 2>&1 | head`) loses the messages, never panics (exit 101).
#[test]
fn a_closed_or_broken_stderr_is_no_panic() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/lab-nmap-scan.pcap");
    let sample = sample.to_str().expect("utf-8 path");
    for (args, redirect) in [
        (format!("replay {sample}"), "2>&1 | head -c 1 >/dev/null"),
        (format!("replay {sample}"), "2>&- >/dev/null"),
        (
            format!("inventory --pcap {sample} --local 10.199.0.1"),
            "2>&1 | head -c 1 >/dev/null",
        ),
        (format!("replay {sample} --no-such-option"), "2>&-"),
    ] {
        let code = exit_code_with(&args, redirect);
        assert!(
            ["0", "2"].contains(&code.as_str()),
            "{args} {redirect}: exit {code}"
        );
    }
}
