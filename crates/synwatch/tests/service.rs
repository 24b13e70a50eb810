//! Running synwatch as a service: the default configuration file documents every key
//! with its true default, `make install` puts the binary, unit, configuration, manual
//! pages and completions in place (and keeps an edited configuration), systemd accepts
//! the unit, and the unit's privileges (a non-root user with the ambient capabilities it
//! lists, no new privileges) are enough to catch and ban a real scanner in the lab.

#[expect(dead_code, reason = "each test binary uses part of the helpers")]
mod common;
#[expect(dead_code, reason = "each test binary uses part of the lab")]
mod lab;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::repo_root;
use lab::{Agent, CLIENT, Deadline, Lab, SCANNER, VICTIM};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn synwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run synwatch")
}

fn keys(toml_text: &str) -> BTreeSet<String> {
    toml_text
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_owned()))
        .filter(|k| !k.starts_with('#') && !k.contains(' '))
        .collect()
}

#[test]
fn default_config_documents_every_key_with_its_default() {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/synwatch.toml"))
        .expect("deploy/synwatch.toml");
    // As shipped (everything commented) it is valid and changes nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synwatch.toml");
    std::fs::write(&path, &shipped).expect("write");
    let defaults = synwatch(&["run", "--print-config"]);
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    let as_shipped = synwatch(&[
        "run",
        "--config",
        &path.display().to_string(),
        "--print-config",
    ]);
    assert!(as_shipped.status.success(), "{}", text(&as_shipped.stderr));
    assert_eq!(text(&as_shipped.stdout), text(&defaults.stdout));

    // Every commented `#key = value` line, uncommented, is the default.
    let uncommented: String = shipped
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, &uncommented).expect("write");
    let explicit = synwatch(&[
        "run",
        "--config",
        &path.display().to_string(),
        "--print-config",
    ]);
    assert!(explicit.status.success(), "{}", text(&explicit.stderr));
    assert_eq!(
        text(&explicit.stdout),
        text(&defaults.stdout),
        "a commented value in deploy/synwatch.toml is not the default"
    );
    // ...and every key the agent has is there.
    assert_eq!(keys(&uncommented), keys(&text(&defaults.stdout)));
}

fn make(args: &[&str]) -> Output {
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .arg("--no-print-directory")
        .args(args)
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_synwatch")))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn files_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                found.push(rel.display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn make_install_puts_everything_in_place_and_keeps_an_edited_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let prefix = format!("PREFIX={}/usr", root.display());
    let sysconf = format!("SYSCONFDIR={}/etc", root.display());
    make(&["install-files", &prefix, &sysconf]);
    assert_eq!(
        files_under(root),
        [
            "etc/synwatch/synwatch.toml",
            "usr/bin/synwatch",
            "usr/lib/systemd/system/synwatch.service",
            "usr/share/bash-completion/completions/synwatch",
            "usr/share/fish/vendor_completions.d/synwatch.fish",
            "usr/share/man/man1/synwatch-blocks.1",
            "usr/share/man/man1/synwatch-completions.1",
            "usr/share/man/man1/synwatch-inventory.1",
            "usr/share/man/man1/synwatch-man.1",
            "usr/share/man/man1/synwatch-replay.1",
            "usr/share/man/man1/synwatch-run.1",
            "usr/share/man/man1/synwatch.1",
            "usr/share/zsh/site-functions/_synwatch",
        ]
    );
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/synwatch.service"))
        .expect("unit");
    assert!(
        unit.contains(&format!(
            "ExecStart={0}/usr/bin/synwatch run --config {0}/etc/synwatch/synwatch.toml",
            root.display()
        )),
        "{unit}"
    );
    let installed = Command::new(root.join("usr/bin/synwatch"))
        .arg("--version")
        .output()
        .expect("installed binary");
    assert!(text(&installed.stdout).starts_with("synwatch "));

    // systemd accepts the unit (its binary exists at the path the unit names).
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(root.join("usr/lib/systemd/system/synwatch.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify.stderr)
    );

    // An edited configuration survives a reinstall; uninstall leaves it.
    let config = root.join("etc/synwatch/synwatch.toml");
    std::fs::write(&config, "max_ports = 9\n").expect("edit config");
    let again = make(&["install-files", &prefix, &sysconf]);
    assert!(
        text(&again.stdout).contains("keeping"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "max_ports = 9\n"
    );
    make(&["uninstall", &prefix, &sysconf]);
    assert_eq!(files_under(root), ["etc/synwatch/synwatch.toml"]);
}

/// Runs the agent under `wrapper` with `--block backend`, bans a scanner, flushes the
/// firewall as a reload would, and checks that the agent set its rules up again.
fn bans_and_reinstates_under(wrapper: &[&str], uid: &str, backend: &str) {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let chown = Command::new("chown")
        .args([&format!("{uid}:{uid}"), &state.display().to_string()])
        .status()
        .expect("chown");
    assert!(chown.success());
    let agent = Agent::start_under(
        &lab,
        dir.path(),
        backend,
        wrapper,
        &[
            "--block",
            backend,
            "--ban",
            "10m",
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    lab.scan(SCANNER, VICTIM, "1-40");
    agent.wait_for(20, |e| e["event"] == "block" && e["src"] == SCANNER);
    let deadline = Deadline::after(10);
    while lab.connects(SCANNER, VICTIM) {
        assert!(!deadline.passed(), "the banned scanner still connects");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(lab.connects(CLIENT, VICTIM), "the client is cut off too");
    // `synwatch blocks` (root) reaches the agent's control socket.
    let (code, listed, err) =
        lab::blocks(&lab, &["list", "--state-dir", &state.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(listed.contains(SCANNER), "{listed}");

    // A firewall reload flushes the rules; the agent (with only the capabilities it
    // kept after start) sets them up again.
    let flush: &[&[&str]] = if backend == "nftables" {
        &[&["nft", "flush", "ruleset"]]
    } else {
        &[
            &["iptables", "-w", "-F", "INPUT"],
            &["iptables", "-w", "-F", "FORWARD"],
        ]
    };
    for command in flush {
        assert!(lab.in_victim(command).status.success(), "{command:?}");
    }
    let deadline = Deadline::after(12);
    while !agent.log().contains("set them up again") {
        assert!(
            !deadline.passed(),
            "rules not set up again: {}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!lab.connects(SCANNER, VICTIM), "the ban did not come back");
    let log = agent.log();
    assert!(!log.contains("warning"), "{log}");
    assert_eq!(agent.stop(), Some(0), "{log}");
}

/// `setpriv` switching to `uid` (and its group, no others) with these inheritable and
/// bounding capability sets.
fn setpriv(uid: &str, inheritable: &str, bounding: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid",
        uid,
        "--regid",
        uid,
        "--clear-groups",
        "--inh-caps",
        inheritable,
        "--bounding-set",
        bounding,
    ]
    .map(String::from)
    .to_vec()
}

/// The `Key=` values of the unit's [Service] section (space-separated, all lines).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// The agent as the unit runs it: a user of its own (an unused uid here, like
/// DynamicUser's), the ambient and bounding capabilities the unit lists, no new
/// privileges; blocking with `backend`.
fn scanner_banned_with_unit_privileges(backend: &str) {
    let unit =
        std::fs::read_to_string(repo_root().join("deploy/systemd/synwatch.service")).expect("unit");
    assert_eq!(unit_values(&unit, "DynamicUser"), ["yes"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    let ambient = unit_values(&unit, "AmbientCapabilities");
    assert_eq!(ambient, unit_values(&unit, "CapabilityBoundingSet"));
    let caps: Vec<String> = ambient
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let caps = caps.join(",");

    let uid = "64977";
    let caps = format!("-all,{caps}");
    let mut wrapper = setpriv(uid, &caps, &caps);
    wrapper.extend(["--ambient-caps", &caps, "--no-new-privs"].map(String::from));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    bans_and_reinstates_under(&wrapper, uid, backend);
}

/// The README's recipe for running without root: file capabilities on the binary, run
/// by an ordinary user who has no capabilities of its own (as under Docker, where added
/// capabilities are only in the bounding set). The firewall programs synwatch runs get
/// what they need from it.
fn scanner_banned_with_file_capabilities(backend: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("synwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_synwatch"), &bin).expect("copy the binary");
    let mode = Command::new("chmod")
        .args(["755", &dir.path().display().to_string()])
        .status()
        .expect("chmod");
    assert!(mode.success());
    let setcap = Command::new("setcap")
        .args(["cap_net_raw,cap_net_admin+ep", &bin.display().to_string()])
        .output()
        .expect("setcap (Debian package libcap2-bin) is needed");
    assert!(setcap.status.success(), "{}", text(&setcap.stderr));
    let uid = "64978";
    let mut wrapper = setpriv(uid, "-all", "-all,+net_raw,+net_admin");
    wrapper.extend(
        [
            "env",
            &format!("SYNWATCH_BIN={}", bin.display()),
            "sh",
            "-c",
            // $1 is the test binary's path start_under adds: run the copy instead.
            "shift; exec \"$SYNWATCH_BIN\" \"$@\"",
            "synwatch",
        ]
        .map(String::from),
    );
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    bans_and_reinstates_under(&wrapper, uid, backend);
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn file_capabilities_suffice_for_nftables() {
    scanner_banned_with_file_capabilities("nftables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn file_capabilities_suffice_for_iptables() {
    scanner_banned_with_file_capabilities("iptables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn unit_privileges_suffice_for_nftables() {
    scanner_banned_with_unit_privileges("nftables");
}

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn unit_privileges_suffice_for_iptables() {
    scanner_banned_with_unit_privileges("iptables");
}
