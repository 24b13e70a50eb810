//! Shell completions and manual pages, generated from the command-line definition so they
//! never drift from `--help`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Command;

/// Sections the generated page lacks: what the agent touches and how it ends.
const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
runtime failure (a firewall backend failed, the request was refused)
.TP
\fB2\fR
bad usage or unreadable input, with one line on standard error saying what and why
.SH SIGNALS
\fBSIGHUP\fR re\-reads the file given by \fB\-\-config\fR and applies its thresholds and
address lists without losing state; \fBSIGINT\fR and \fBSIGTERM\fR stop the agent, which
removes its firewall rules (unless \fB\-\-keep\-rules\-on\-exit\fR) and prints a summary on
standard error.
\fBSIGUSR1\fR and \fBSIGUSR2\fR write the same summary so far on standard error, headed
\fBstatus:\fR, and the agent runs on.
.SH FILES
.TP
\fI/etc/synwatch/synwatch.toml\fR
configuration read by the systemd unit (\fB\-\-config\fR); keys are the long option
names with underscores
.TP
\fI/var/lib/synwatch/\fR
the default \fB\-\-state\-dir\fR: saved bans (bans.db) and the control socket used by
\fBsynwatch blocks\fR
.SH ENVIRONMENT
The options of \fBrun\fR and \fBreplay\fR can also be given as an environment variable
\fBSYNWATCH_\fR\fINAME\fR (for example \fBSYNWATCH_MAX_PORTS=5\fR); the command line wins
over the environment, which wins over the configuration file.
.SH "SEE ALSO"
\fBnft\fR(8), \fBiptables\fR(8), \fBpcap\-filter\fR(7), \fBss\fR(8)
"#;

/// The completion script for `shell`.
pub fn completions(cmd: &mut Command, shell: clap_complete::Shell) -> Vec<u8> {
    // Generated in memory: clap_complete panics when its writer fails.
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, "synwatch", &mut script);
    script
}

/// Writes `bytes` to stdout; a reader that went away early (`| head`) is not an error.
pub fn print(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// Renders the page of `cmd` (the top-level page carries the extra sections).
fn render(cmd: Command, top: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("synwatch manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    if cmd.get_after_help().is_some() || cmd.get_after_long_help().is_some() {
        man.render_extra_section(out)?;
    }
    if top {
        out.write_all(EXTRA_SECTIONS.as_bytes())?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// `cmd` as the pages describe it: built (so subcommands carry their full names, such as
/// `synwatch-run`), without clap's `help` subcommand.
fn built(cmd: Command) -> Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The page for `synwatch` itself.
pub fn page(cmd: Command) -> Vec<u8> {
    let cmd = built(cmd);
    let mut page = Vec::new();
    // Writing to memory cannot fail.
    let _ = render(cmd, true, &mut page);
    page
}

/// Writes `synwatch.1` and `synwatch-COMMAND.1` for each command into `dir`; returns the
/// file names.
pub fn pages_to(cmd: Command, dir: &Path) -> Result<Vec<String>> {
    let cmd = built(cmd);
    let mut written = Vec::new();
    let mut write = |cmd: Command, top: bool| -> Result<()> {
        let name = format!(
            "{}.1",
            cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
        );
        let path = dir.join(&name);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        render(cmd, top, &mut file)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(name);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(sub.clone(), false)?;
    }
    write(cmd, true)?;
    Ok(written)
}
