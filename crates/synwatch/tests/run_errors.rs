//! `synwatch run` refuses clearly what it cannot do: an unknown interface, or capture
//! without CAP_NET_RAW (one line saying how to grant it, exit 2).

#[expect(
    dead_code,
    reason = "this test uses only the root check of the shared lab module"
)]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::require_root;

#[test]
fn an_unknown_interface_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "no-such-if0"])
        .output()
        .expect("run synwatch");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid --iface 'no-such-if0': no such interface (this host has: "),
        "{stderr}"
    );
    assert!(stderr.contains("lo"), "{stderr}");
}

#[test]
#[ignore = "needs root to become an unprivileged user; make test runs it"]
fn without_cap_net_raw_it_says_how_to_grant_it() {
    require_root();
    // A copy the unprivileged user can execute.
    let dir = std::env::temp_dir().join(format!("synwatch-noprivs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("synwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_synwatch"), &bin).expect("copy binary");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["run", "--iface", "lo"])
        .output()
        .expect("runuser (util-linux)");
    let _ = std::fs::remove_dir_all(&dir);
    assert_usage_error(
        &out,
        &[
            "not allowed to capture on lo",
            "CAP_NET_RAW",
            "setcap",
            "--cap-add NET_RAW",
            "--source sockets",
        ],
    );
}

#[test]
#[ignore = "needs root to drop a capability; make test runs it"]
fn the_socket_table_source_runs_without_cap_net_raw() {
    require_root();
    let state = tempfile::tempdir().expect("tempdir");
    let (mut child, mut lines) = spawn_reading_stderr(
        Command::new("setpriv")
            .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw"])
            .arg(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--source", "sockets", "--block", "none"])
            .args(["--metrics-addr", "127.0.0.1:0", "--state-dir"])
            .arg(state.path()),
    );
    let mut seen = read_until(&mut lines, "Stop with Ctrl-C");
    assert!(
        seen.contains("synwatch: watching the TCP socket table (netlink sock_diag every 1000 ms"),
        "{seen}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for line in lines {
        seen.push_str(&line.expect("read stderr"));
        seen.push('\n');
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{seen}");
    assert!(seen.contains("socket table: "), "{seen}");
}

#[test]
fn print_config_shows_the_layered_configuration_as_toml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("synwatch.toml");
    std::fs::write(
        &file,
        "max_ports = 10\nwindow = \"2m\"\nmetrics_addr = \"127.0.0.1:9900\"\nban = \"2h\"\nblock = \"iptables\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "lo", "--print-config", "--config"])
        .arg(&file)
        .args(["--max-ports", "7", "--block-scope", "new"])
        .env("SYNWATCH_WINDOW", "90s")
        .env("SYNWATCH_BAN_RATE", "5")
        .output()
        .expect("run synwatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    for line in [
        "max_ports = 7",
        "window = \"90s\"",
        "metrics_addr = \"127.0.0.1:9900\"",
        "iface = [\"lo\"]",
        "block = \"iptables\"",
        "block_scope = \"new\"",
        "ban = \"2h\"",
        "ban_max = \"24h\"",
        "ban_rate = 5",
        "state_dir = \"/var/lib/synwatch\"",
        "keep_rules_on_exit = false",
        "dry_run = false",
    ] {
        assert!(text.lines().any(|l| l == line), "lacks {line}:\n{text}");
    }
    // What it prints is a config file that gives the same configuration.
    let again = dir.path().join("printed.toml");
    reads_back(&again, &text);
    // Regression: durations under a millisecond were printed rounded down (`1us` as
    // `0ms`, which the printed file then refused).
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "lo", "--print-config"])
        .args(["--window", "1us", "--answer-wait", "2500us"])
        .output()
        .expect("run synwatch");
    let text = String::from_utf8(out.stdout).expect("utf8");
    for line in ["window = \"1us\"", "answer_wait = \"2500us\""] {
        assert!(text.lines().any(|l| l == line), "lacks {line}:\n{text}");
    }
    reads_back(&again, &text);
}

/// That `text`, printed by `--print-config` and written to `file`, gives the same
/// configuration as a config file.
fn reads_back(file: &std::path::Path, text: &str) {
    std::fs::write(file, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--print-config", "--config"])
        .arg(file)
        .output()
        .expect("run synwatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
}

#[test]
fn the_crowdsec_options_layer_like_the_others_and_bad_ones_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("synwatch.toml");
    std::fs::write(
        &file,
        "crowdsec_url = \"http://10.0.0.9:8080\"\ncrowdsec_pull = \"30s\"\ncrowdsec_bouncer_key_file = \"/etc/synwatch/key\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "lo", "--print-config", "--config"])
        .arg(&file)
        .env("SYNWATCH_CROWDSEC_PULL", "5s")
        .output()
        .expect("run synwatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "crowdsec_url = \"http://10.0.0.9:8080\"",
        "crowdsec_pull = \"5s\"",
        "crowdsec_bouncer_key_file = \"/etc/synwatch/key\"",
    ] {
        assert!(text.lines().any(|l| l == line), "lacks {line}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args([
            "run",
            "--iface",
            "lo",
            "--print-config",
            "--crowdsec-pull",
            "100ms",
        ])
        .output()
        .expect("run synwatch");
    assert_usage_error(&out, &["--crowdsec-pull", "at least 1s"]);
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "lo", "--print-config"])
        .env("SYNWATCH_CROWDSEC_URL", "lapi.example:8080")
        .output()
        .expect("run synwatch");
    assert_usage_error(&out, &["SYNWATCH_CROWDSEC_URL", "http://HOST:PORT"]);
}

/// A file named as credentials, bouncer key or config that never ends (a device, a
/// sparse file of gigabytes) or is a FIFO nobody writes to is one line and exit 2, at
/// once: never a start-up that waits forever or reads until memory runs out.
#[test]
fn a_credentials_key_or_config_file_that_never_ends_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let long = dir.path().join("long.yaml");
    std::fs::File::create(&long)
        .and_then(|f| f.set_len(8 << 30))
        .expect("a sparse 8 GiB file");
    let fifo = fifo.to_str().expect("utf-8");
    let long = long.to_str().expect("utf-8");
    for (option, path, says) in [
        ("--crowdsec-credentials", fifo, "nobody wrote"),
        ("--crowdsec-credentials", "/dev/zero", "longer than"),
        ("--crowdsec-credentials", long, "longer than"),
        ("--crowdsec-bouncer-key-file", fifo, "nobody wrote"),
        ("--crowdsec-bouncer-key-file", "/dev/zero", "longer than"),
        ("--config", fifo, "nobody wrote"),
        ("--config", "/dev/zero", "longer than"),
        ("--config", long, "longer than"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--iface", "lo", "--block", "nftables", "--dry-run"])
            .args([option, path])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run synwatch");
        // Up to 10 s, in steps of 50 ms.
        for step in 0.. {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if step == 200 {
                let _ = child.kill();
                panic!("{option} {path}: still running after 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        assert_usage_error(&out, &[path, says]);
    }
}

/// A bad value names where it came from: the environment variable, else the flag.
#[test]
fn a_bad_value_names_the_variable_or_the_flag_it_came_from() {
    let cases = [
        ("ban_max", "abc", "unknown unit"),
        ("metrics_addr", "x", "HOST:PORT"),
        ("poll", "1ms", "at least 10ms"),
        ("window", "zz", "unknown unit"),
        ("crowdsec_pull", "100ms", "at least 1s"),
        ("crowdsec_url", "ftp://x", "http://HOST:PORT"),
    ];
    for (id, bad, why) in cases {
        let var = format!("SYNWATCH_{}", id.to_ascii_uppercase());
        let flag = format!("--{}", id.replace('_', "-"));
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--iface", "lo", "--print-config"])
            .env(&var, bad)
            .output()
            .expect("run synwatch");
        assert_usage_error(&out, &[&var, why]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&flag));
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--iface", "lo", "--print-config", &flag, bad])
            .output()
            .expect("run synwatch");
        assert_usage_error(&out, &[&flag, why]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&var));
    }
}

/// A value clap itself refuses (not one of the choices, not a boolean, empty) names the
/// environment variable it came from too, not only the flag the command line did not
/// hold (reviewer's finding); given on the command line, the flag alone.
#[test]
fn a_value_clap_refuses_from_the_environment_names_the_variable() {
    let cases = [
        ("SYNWATCH_SOURCE", "", "--source", "a value is required"),
        ("SYNWATCH_SOURCE", "bogus", "--source", "possible values"),
        ("SYNWATCH_DRY_RUN", "maybe", "--dry-run", "not a boolean"),
        ("SYNWATCH_BLOCK", "pf", "--block", "possible values"),
    ];
    let print_config = |flag: Option<&str>, (var, bad): (&str, &str)| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_synwatch"));
        cmd.args(["run", "--iface", "lo", "--print-config"]);
        cmd.args(flag).env(var, bad).output().expect("run synwatch")
    };
    for (var, bad, flag, why) in cases {
        let out = print_config(None, (var, bad));
        assert_usage_error(&out, &[&format!("invalid {var} '{bad}'"), why]);
        // The flag given as well: it is what clap refused, and the variable is not.
        let out = print_config(Some(&format!("{flag}=bogus")), (var, bad));
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && !stderr.contains(var), "{stderr}");
    }
}

/// An argument that is not UTF-8 beside a refused one: exit 2, no panic (reviewer's
/// finding: looking for the flag on the command line read it as UTF-8 and panicked).
#[test]
fn a_refused_value_beside_an_argument_that_is_not_utf8_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::OsStr::from_bytes(b"/tmp/\xff.pcap");
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .arg("replay")
        .arg(name)
        .args(["--direction", "bogus"])
        .output()
        .expect("run synwatch");
    assert_usage_error(&out, &["--direction", "possible values"]);
}

/// Checks a usage error: exit 2 and one stderr line holding each of `wants`.
fn assert_usage_error(out: &std::process::Output, wants: &[&str]) {
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for want in wants {
        assert!(stderr.contains(want), "lacks {want}: {stderr}");
    }
}

type StderrLines = std::io::Lines<std::io::BufReader<std::process::ChildStderr>>;

/// Starts `cmd` with stderr piped, to be read line by line.
fn spawn_reading_stderr(cmd: &mut Command) -> (std::process::Child, StderrLines) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run synwatch under setpriv");
    let stderr = child.stderr.take().expect("stderr");
    (
        child,
        std::io::BufRead::lines(std::io::BufReader::new(stderr)),
    )
}

/// The stderr lines up to and including the first containing `marker`.
fn read_until(lines: &mut StderrLines, marker: &str) -> String {
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            break;
        }
    }
    seen
}

/// `synwatch run --block BLOCK` as root without CAP_NET_ADMIN: capture works, blocking
/// cannot.
fn run_without_net_admin(block: &str, state: &std::path::Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
        .arg(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "lo", "--metrics-addr", "127.0.0.1:0"])
        .args(["--block", block, "--state-dir"])
        .arg(state);
    cmd
}

#[test]
#[ignore = "needs root to drop a capability; make test runs it"]
fn blocking_without_cap_net_admin_says_how_to_grant_it() {
    require_root();
    let state = tempfile::tempdir().expect("tempdir");
    let out = run_without_net_admin("nftables", state.path())
        .output()
        .expect("run synwatch under setpriv");
    assert_usage_error(
        &out,
        &[
            "cannot block with --block nftables: blocking needs CAP_NET_ADMIN",
            "sudo synwatch run",
            "setcap cap_net_raw,cap_net_admin+ep",
            "--cap-add NET_ADMIN",
            "--block none",
        ],
    );
    // The control socket, bound before blocking was tried, is not left behind.
    let socket = state.path().join("control.sock");
    assert!(!socket.exists(), "the control socket is left behind");

    // auto falls back to detecting only, saying why, and runs.
    let (mut child, mut lines) =
        spawn_reading_stderr(&mut run_without_net_admin("auto", state.path()));
    let seen = read_until(&mut lines, "Stop with Ctrl-C");
    // Nothing is blocked, so no control socket answers (`synwatch blocks` says no agent
    // runs): it is gone by the time the banner is said.
    let socket_left = socket.exists();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !socket_left,
        "the control socket stays though nothing is blocked"
    );
    assert!(
        seen.contains("warning: not blocking: blocking needs CAP_NET_ADMIN"),
        "{seen}"
    );
    assert!(
        seen.contains("Blocking: none (see the warning above)"),
        "{seen}"
    );
}

#[test]
fn a_command_line_clap_refuses_is_one_line_and_exit_2() {
    for (args, wants) in [
        (
            &["run", "--bogus"][..],
            &["unexpected argument '--bogus'"][..],
        ),
        (
            &["replay", "--format", "xml", "x.pcap"],
            &["invalid value 'xml'", "table, json"],
        ),
        (
            &["replay", "--max-ports", "many", "x.pcap"],
            &["--max-ports"],
        ),
        (&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(args)
            .output()
            .expect("synwatch runs");
        assert_usage_error(&out, wants);
    }
    // Help is not an error: stdout, exit 0.
    let help = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--help"])
        .output()
        .expect("synwatch runs");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--max-ports"));
}

/// A ban shorter than a second is one second, never 0 ("until removed"); lengths are
/// whole seconds, rounded up.
#[test]
fn a_ban_under_a_second_is_not_a_ban_until_removed() {
    for (flags, want) in [
        (
            ["--ban", "500ms", "--ban-max", "900ms"],
            ["ban = \"1s\"", "ban_max = \"1s\""],
        ),
        (
            ["--ban", "1500ms", "--ban-max", "1ms"],
            ["ban = \"2s\"", "ban_max = \"1s\""],
        ),
        (
            ["--ban", "0", "--ban-max", "0s"],
            ["ban = \"0\"", "ban_max = \"0\""],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--iface", "lo", "--print-config"])
            .args(flags)
            .output()
            .expect("run synwatch");
        assert!(out.status.success(), "{flags:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in want {
            assert!(
                text.lines().any(|l| l == line),
                "{flags:?} lacks {line}:\n{text}"
            );
        }
    }
}

/// Yes/no settings layer like the others: the environment (in any of the spellings the
/// other yes/no variables take) or `--flag=false` turns off what the file turned on.
#[test]
fn yes_no_settings_of_the_file_can_be_turned_off_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bools.toml");
    std::fs::write(
        &file,
        "dry_run = true\nno_allow_local = true\nkeep_rules_on_exit = true\n",
    )
    .expect("write");
    let print = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--iface", "lo", "--print-config", "--config"])
            .arg(&file)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run synwatch");
        assert!(out.status.success(), "{args:?} {env:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf8")
    };
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    let on = print(&[], &[]);
    for key in ["dry_run", "no_allow_local", "keep_rules_on_exit"] {
        assert!(has(&on, &format!("{key} = true")), "{on}");
    }
    let env_off = [
        ("SYNWATCH_DRY_RUN", "0"),
        ("SYNWATCH_NO_ALLOW_LOCAL", "false"),
        ("SYNWATCH_KEEP_RULES_ON_EXIT", "no"),
    ];
    let flags_off = [
        "--dry-run=false",
        "--no-allow-local=false",
        "--keep-rules-on-exit=false",
    ];
    for off in [print(&[], &env_off), print(&flags_off, &[])] {
        for key in ["dry_run", "no_allow_local", "keep_rules_on_exit"] {
            assert!(has(&off, &format!("{key} = false")), "{off}");
        }
    }
    // A flag alone still turns a setting on, over the environment.
    let text = print(&["--dry-run"], &[("SYNWATCH_DRY_RUN", "off")]);
    assert!(has(&text, "dry_run = true"), "{text}");
    let text = print(&[], &[("SYNWATCH_DRY_RUN", "1")]);
    assert!(has(&text, "dry_run = true"), "{text}");
}

/// A bad value from the config file is named as the file's key, not as a flag the user
/// never typed.
#[test]
fn a_bad_list_value_of_the_file_names_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, text, want) in [
        (
            "local",
            "local = [\"10.0.0.300\"]",
            "invalid local: '10.0.0.300'",
        ),
        (
            "allow",
            "allow = [\"10.0.0.0/33\"]",
            "invalid allow: '10.0.0.0/33'",
        ),
        (
            "iface",
            "iface = [\"no-such-if0\"]",
            "invalid iface 'no-such-if0'",
        ),
    ] {
        let file = dir.path().join(format!("{key}.toml"));
        std::fs::write(&file, format!("{text}\n")).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
            .args(["run", "--print-config", "--config"])
            .arg(&file)
            .output()
            .expect("run synwatch");
        assert_usage_error(&out, &[want]);
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("--"),
            "{out:?}"
        );
    }
}
