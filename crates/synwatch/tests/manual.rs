//! Shell completions and manual pages: generated from the command line, so every
//! command and option must be in them, bash must complete with them, and groff must
//! render the pages without a warning.

use std::process::{Command, Output, Stdio};

fn synwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(args)
        .output()
        .expect("run synwatch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The long options `synwatch SUB --help` lists.
fn long_options(sub: &str) -> Vec<String> {
    let help = text(&synwatch(&[sub, "--help"]).stdout);
    // Option lines start at column 2 ("  -h, --help") or 6 ("      --window <DUR>");
    // descriptions are indented further.
    let options: Vec<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("      --").or_else(|| {
                l.strip_prefix("  -")
                    .and_then(|l| l.split_once(", --"))
                    .map(|(_, o)| o)
            })?;
            Some(l.split([' ', '=', '<', '[']).next().unwrap_or(l).to_owned())
        })
        .collect();
    assert!(options.len() >= 3, "no options found in: {help}");
    options
}

/// Completes `words` (the last one being completed) with the bash script, like
/// bash would on TAB.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = synwatch(&["completions", "bash"]);
    assert!(script.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synwatch.bash");
    std::fs::write(&path, &script.stdout).expect("write script");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prog = format!(
        "source {path}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
         _synwatch synwatch '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path = path.display(),
        words = quoted.join(" "),
        cur = words[cword],
        prev = words[cword - 1],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_commands_and_options() {
    let script = synwatch(&["completions", "bash"]);
    let check = Command::new("bash")
        .args(["-n", "-c", &text(&script.stdout)])
        .output()
        .expect("bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));

    let commands = bash_complete(&["synwatch", ""]);
    for c in ["run", "replay", "inventory", "blocks", "completions", "man"] {
        assert!(commands.contains(&c.to_owned()), "{c} in {commands:?}");
    }
    assert_eq!(bash_complete(&["synwatch", "inv"]), ["inventory"]);

    let options = bash_complete(&["synwatch", "run", "--"]);
    for o in long_options("run") {
        assert!(options.contains(&format!("--{o}")), "--{o} in {options:?}");
    }
    // Enumerated values complete too.
    let sources = bash_complete(&["synwatch", "run", "--source", ""]);
    for s in ["auto", "pcap", "sockets"] {
        assert!(sources.contains(&s.to_owned()), "{s} in {sources:?}");
    }
}

#[test]
fn every_shell_gets_a_script_naming_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = synwatch(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["inventory", "max-ports", "metrics-addr", "nft-draft"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let bad = synwatch(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("invalid value 'tcsh'"));
}

/// Renders a page with groff, failing on any warning.
fn render(page: &[u8]) -> String {
    let mut child = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-rLL=100n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff (Debian package groff-base) is needed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(page).expect("feed groff");
    }
    let out = child.wait_with_output().expect("groff");
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "", "groff warnings");
    // Drop overstrike formatting (bold, underline) so the text can be searched.
    let mut plain = String::new();
    for c in text(&out.stdout).chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn manual_pages_cover_every_command_and_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = synwatch(&["man", "--out-dir", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "synwatch-blocks.1",
            "synwatch-completions.1",
            "synwatch-inventory.1",
            "synwatch-man.1",
            "synwatch-replay.1",
            "synwatch-run.1",
            "synwatch.1",
        ]
    );

    let top = std::fs::read(dir.path().join("synwatch.1")).expect("synwatch.1");
    assert_eq!(top, synwatch(&["man"]).stdout, "stdout page = synwatch.1");
    let page = render(&top);
    for section in [
        "SYNOPSIS",
        "SUBCOMMANDS",
        "EXIT STATUS",
        "SIGNALS",
        "FILES",
        "ENVIRONMENT",
        "synwatch-run(1)",
        "/var/lib/synwatch",
    ] {
        assert!(
            page.contains(section),
            "synwatch.1 lacks {section}:\n{page}"
        );
    }

    for sub in ["run", "replay", "inventory", "blocks"] {
        let page =
            render(&std::fs::read(dir.path().join(format!("synwatch-{sub}.1"))).expect("page"));
        for option in long_options(sub) {
            assert!(
                page.contains(&format!("--{option}")),
                "synwatch-{sub}.1 lacks --{option}"
            );
        }
    }
}

#[test]
fn output_errors_are_reported_not_panics() {
    let out = synwatch(&["man", "--out-dir", "/nonexistent/synwatch-man"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("synwatch: creating /nonexistent/synwatch-man/"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A reader that stops early is not an error.
    for args in [["man", ""], ["completions", "bash"]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = Command::new("bash")
            .args([
                "-c",
                &format!(
                    "set -o pipefail; {} {} | head -c 1 >/dev/null",
                    env!("CARGO_BIN_EXE_synwatch"),
                    args.join(" ")
                ),
            ])
            .output()
            .expect("bash");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}
