//! Saved bans that must never keep the agent from blocking (SPEC §6; red team C), in the
//! network-namespace lab, against the real `nft`:
//!
//! - a ban longer than an nftables element's timeout takes (`nft` refuses over
//!   99,999,999 s): given live, it is restored at the next start, with `--block
//!   nftables` and with `--block auto`, and the agent blocks;
//! - a `bans.db` whose tables are not synwatch's is moved aside (degraded), and one row
//!   no backend takes is skipped (degraded) while the others are restored: blocking goes
//!   on with `--block auto` as with `--block nftables`.
//!
//! Needs root; `make test` runs these as root.

#[allow(
    dead_code,
    reason = "the harness serves many test binaries; this one uses part of it"
)]
mod lab;

use lab::{Agent, CLIENT, Lab, SCANNER, VICTIM, blocks, eventually};

/// Whether the kernel holds a ban on `addr` in synwatch's nftables address set.
fn banned_in_nftables(lab: &Lab, addr: &str) -> bool {
    let out = lab.in_victim(&["nft", "list", "set", "inet", "synwatch", "banned4"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .any(|word| word == addr)
}

/// Runs `sql` on `STATE/bans.db` (Python's sqlite3: the lab needs python3 already).
fn sqlite(state: &std::path::Path, sql: &str) {
    std::fs::create_dir_all(state).expect("state dir");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(state.join("bans.db"))
        .arg(sql)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wall clock, in Unix seconds (from `date`, as the saved rows are).
fn unix_now() -> i64 {
    let out = std::process::Command::new("date")
        .arg("+%s")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date +%s")
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_ban_longer_than_nft_takes_is_restored_and_blocks_with_nftables_and_auto() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8 path");
    let args = ["--block", "nftables", "--state-dir", state];
    let agent = Agent::start(&lab, dir.path(), "first", &args);
    // 1200 days: 103,680,000 s, more than nft's 99,999,999.
    let (code, out, err) = blocks(
        &lab,
        &["add", SCANNER, "--for", "1200d", "--state-dir", state],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(banned_in_nftables(&lab, SCANNER));
    assert_eq!(agent.stop_within(10), Some(0));
    assert!(!banned_in_nftables(&lab, SCANNER), "rules removed at stop");

    for block in ["nftables", "auto"] {
        let args = ["--block", block, "--state-dir", state];
        let mut agent = Agent::start(&lab, dir.path(), block, &args);
        assert!(agent.running(), "--block {block}: {}", agent.log());
        eventually(10, "the long ban restored", || {
            banned_in_nftables(&lab, SCANNER)
        });
        assert!(!lab.connects(SCANNER, VICTIM), "--block {block}");
        assert!(lab.connects(CLIENT, VICTIM), "--block {block}");
        assert_eq!(lab.healthz(), (200, "ok\n".to_owned()), "--block {block}");
        // Its element holds what nft takes; the agent renews it before that runs out.
        let set = lab.in_victim(&["nft", "list", "set", "inet", "synwatch", "banned4"]);
        let set = String::from_utf8_lossy(&set.stdout);
        assert!(set.contains("timeout 1157d9h46m39s"), "{set}");
        assert_eq!(agent.stop_within(10), Some(0), "--block {block}");
    }
}

/// The addresses the `bans` table of `STATE/bans.db` holds, sorted.
fn saved_addrs(state: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print('\\n'.join(sorted(r[0] for r in c.execute('SELECT addr FROM bans'))))",
        ])
        .arg(state.join("bans.db"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// With no agent running, `synwatch blocks list` reads the saved bans itself: a saved
/// range covering a protected address (here everything, 0.0.0.0/0) is left out and said,
/// before it could stand for the sound bans inside it, which stay listed and saved
/// (reviewer's finding: they were deleted and the range listed alone).
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn with_no_agent_a_hostile_saved_range_is_left_out_and_the_bans_inside_kept() {
    let now = unix_now();
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let schema = "CREATE TABLE bans (addr TEXT PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER, reason TEXT NOT NULL, offences INTEGER NOT NULL, new_only INTEGER NOT NULL DEFAULT 0); CREATE TABLE offenders (addr TEXT PRIMARY KEY, offences INTEGER NOT NULL, last_until INTEGER NOT NULL); PRAGMA user_version=1;";
    let until = now + 3600;
    sqlite(
        &state,
        &format!(
            "{schema} INSERT INTO bans VALUES('203.0.113.1', {now}, {until}, 'a', 1, 0), ('203.0.113.2', {now}, {until}, 'b', 1, 0), ('198.51.100.9', {now}, {until}, 'c', 1, 0), ('0.0.0.0/0', {now}, NULL, 'all', 1, 0);"
        ),
    );
    let dir_arg = state.to_str().expect("utf-8 path");
    let (code, listed, said) = blocks(&lab, &["list", "--state-dir", dir_arg]);
    assert_eq!(code, 0, "{said}");
    for sound in ["203.0.113.1", "203.0.113.2", "198.51.100.9"] {
        assert!(
            listed.contains(&format!("\"{sound}\"")),
            "{sound}: {listed}"
        );
    }
    assert!(!listed.contains("0.0.0.0/0"), "{listed}");
    assert!(
        said.contains("left out of the saved bans") && said.contains("0.0.0.0/0"),
        "{said}"
    );
    assert_eq!(
        saved_addrs(&state),
        ["198.51.100.9", "203.0.113.1", "203.0.113.2"]
    );
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_hostile_ban_database_never_stops_blocking() {
    let now = unix_now();
    let schema = "CREATE TABLE bans (addr TEXT PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER, reason TEXT NOT NULL, offences INTEGER NOT NULL, new_only INTEGER NOT NULL DEFAULT 0); CREATE TABLE offenders (addr TEXT PRIMARY KEY, offences INTEGER NOT NULL, last_until INTEGER NOT NULL); PRAGMA user_version=1;";
    let cases = [
        // A `bans` table without synwatch's columns: moved aside.
        (
            "nftables",
            "CREATE TABLE bans (addr TEXT); INSERT INTO bans VALUES('10.77.0.9');".to_owned(),
            "moved to",
            None,
        ),
        (
            "auto",
            "CREATE TABLE bans (addr TEXT); INSERT INTO bans VALUES('10.77.0.9');".to_owned(),
            "moved to",
            None,
        ),
        // One row no backend takes next to a sound ban: skipped, the sound one restored.
        (
            "auto",
            format!(
                "{schema} INSERT INTO bans VALUES('10.77.0.8', {now}, {}, 'ok', 1, 0), ('10.77.0.9', {now}, 9223372036854775807, 'x', 1, 0);",
                now + 3600
            ),
            "1 row(s) of the ban database did not read",
            Some("10.77.0.8"),
        ),
        // A range covering this host's address next to a ban inside it: the range is
        // refused (an unblock event), the ban inside restored.
        (
            "nftables",
            format!(
                "{schema} INSERT INTO bans VALUES('10.77.0.8', {now}, {}, 'ok', 1, 0), ('10.77.0.0/24', {now}, {}, 'lan', 1, 0);",
                now + 3600,
                now + 3600
            ),
            "",
            Some("10.77.0.8"),
        ),
    ];
    for (block, sql, why, restored) in cases {
        let lab = Lab::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        sqlite(&state, &sql);
        let state = state.to_str().expect("utf-8 path");
        let args = ["--block", block, "--state-dir", state];
        let mut agent = Agent::start(&lab, dir.path(), "hostile", &args);
        assert!(agent.running(), "--block {block}: {}", agent.log());
        assert!(
            !agent.log().contains("not blocking"),
            "--block {block}: {}",
            agent.log()
        );
        let (code, body) = lab.healthz();
        assert_eq!(code, 200, "{body}");
        if why.is_empty() {
            eventually(10, "an unblock event for the refused range", || {
                agent.events().iter().any(|e| {
                    e["event"] == "unblock"
                        && e["prefix"] == "10.77.0.0/24"
                        && e["reason"] == "allowlisted"
                })
            });
        } else {
            assert!(
                body.starts_with("degraded\n") && body.contains(why),
                "--block {block}: {body}"
            );
        }
        if let Some(addr) = restored {
            assert!(banned_in_nftables(&lab, addr), "--block {block}");
        }
        lab.scan(SCANNER, VICTIM, "1-20");
        eventually(10, "the scanner banned in the kernel", || {
            banned_in_nftables(&lab, SCANNER)
        });
        assert_eq!(agent.stop_within(10), Some(0), "--block {block}");
    }
}

/// The state directory deleted while the agent runs (a cleanup script, a tmpfiles rule):
/// the agent makes it again, binds its control socket again, and saves every ban it
/// holds into a new database, so that a restart restores the bans given before the
/// deletion and after it (reviewer's finding: both were lost, and `synwatch blocks`
/// could no longer reach the agent).
#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn a_state_directory_removed_while_the_agent_runs_is_made_again_with_every_ban() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state_path = dir.path().join("state");
    let state = state_path.to_str().expect("utf-8 path");
    let args = ["--block", "nftables", "--state-dir", state];
    let agent = Agent::start(&lab, dir.path(), "first", &args);
    let add = |addr: &str| {
        let (code, out, err) = blocks(&lab, &["add", addr, "--for", "1h", "--state-dir", state]);
        assert_eq!(code, 0, "{out}{err}");
    };
    add("198.51.100.77");
    std::fs::remove_dir_all(&state_path).expect("remove the state directory");
    eventually(10, "the agent reachable again through its socket", || {
        let (code, out, _) = blocks(&lab, &["list", "--state-dir", state]);
        code == 0 && out.contains("198.51.100.77")
    });
    add("198.51.100.78");
    eventually(15, "every ban saved in the new database", || {
        state_path.join("bans.db").exists()
            && saved_addrs(&state_path) == ["198.51.100.77", "198.51.100.78"]
    });
    assert!(
        agent
            .log()
            .contains("removed or replaced while the agent ran"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.stop_within(10), Some(0));

    let agent = Agent::start(&lab, dir.path(), "second", &args);
    eventually(10, "both bans restored", || {
        banned_in_nftables(&lab, "198.51.100.77") && banned_in_nftables(&lab, "198.51.100.78")
    });
    assert_eq!(agent.stop_within(10), Some(0));
}
