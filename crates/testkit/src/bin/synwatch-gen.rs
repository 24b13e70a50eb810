//! `synwatch-gen`: writes the synwatch demo, benchmark and stress captures.
//!
//! ```text
//! synwatch-gen sample OUT
//! synwatch-gen bench OUT [--packets N] [--sources S] [--scanners K] [--ports-per-scanner P] [--seed X] [--duration SECS]
//! synwatch-gen spoofed OUT [--sources N] [--v6] [--seed X]
//! synwatch-gen fragments OUT [--fragments N] [--seed X]
//! ```
//!
//! OUT is a path, or `-` for standard output. Output is classic pcap, Ethernet,
//! microsecond timestamps. A summary goes to standard error; bad arguments print the
//! usage and exit with status 2, I/O errors exit with status 1.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use synwatch_testkit::generate::{
    BenchConfig, FragmentFloodConfig, GenStats, SpoofedConfig, write_bench, write_fragment_flood,
    write_sample, write_spoofed,
};

const USAGE: &str = "\
usage: synwatch-gen sample OUT
       synwatch-gen bench OUT [--packets N] [--sources S] [--scanners K] [--ports-per-scanner P] [--seed X] [--duration SECS]
       synwatch-gen spoofed OUT [--sources N] [--v6] [--seed X]
       synwatch-gen fragments OUT [--fragments N] [--seed X]
OUT is a file path or - for standard output (classic pcap, Ethernet, microseconds).
defaults: bench --packets 3000000 --sources 50000 --scanners 300 --ports-per-scanner 500 --seed 1 --duration 600;
          spoofed --sources 10000000 --seed 1; fragments --fragments 1000000 --seed 1";

/// Output buffer: large, so the generators' small writes become few big ones.
const BUF_SIZE: usize = 8 << 20;

enum Cmd {
    Sample,
    Bench(BenchConfig),
    Spoofed(SpoofedConfig),
    Fragments(FragmentFloodConfig),
}

/// Parses a count such as `3000000` or `3_000_000`.
fn number<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: not a valid number: {v:?}"))
}

fn parse(args: &[String]) -> Result<(Cmd, String), String> {
    let (sub, rest) = args.split_first().ok_or("missing subcommand")?;
    let (out, opts) = rest.split_first().ok_or("missing OUT path")?;
    if out.starts_with("--") {
        return Err(format!("expected OUT path, got {out:?}"));
    }
    let mut cmd = match sub.as_str() {
        "sample" => Cmd::Sample,
        "bench" => Cmd::Bench(BenchConfig::default()),
        "spoofed" => Cmd::Spoofed(SpoofedConfig::default()),
        "fragments" => Cmd::Fragments(FragmentFloodConfig::default()),
        other => return Err(format!("unknown subcommand {other:?}")),
    };
    let mut it = opts.iter();
    while let Some(flag) = it.next() {
        match (&mut cmd, flag.as_str()) {
            (Cmd::Bench(c), "--packets") => c.packets = number(flag, it.next())?,
            (Cmd::Bench(c), "--sources") => c.sources = number(flag, it.next())?,
            (Cmd::Bench(c), "--scanners") => c.scanners = number(flag, it.next())?,
            (Cmd::Bench(c), "--ports-per-scanner") => {
                c.ports_per_scanner = number(flag, it.next())?
            }
            (Cmd::Bench(c), "--seed") => c.seed = number(flag, it.next())?,
            (Cmd::Bench(c), "--duration") => c.duration_secs = number(flag, it.next())?,
            (Cmd::Spoofed(c), "--sources") => c.sources = number(flag, it.next())?,
            (Cmd::Spoofed(c), "--seed") => c.seed = number(flag, it.next())?,
            (Cmd::Spoofed(c), "--v6") => c.v6 = true,
            (Cmd::Fragments(c), "--fragments") => c.fragments = number(flag, it.next())?,
            (Cmd::Fragments(c), "--seed") => c.seed = number(flag, it.next())?,
            _ => return Err(format!("unexpected argument {flag:?} for {sub}")),
        }
    }
    Ok((cmd, out.clone()))
}

fn run(cmd: &Cmd, out: &str) -> io::Result<GenStats> {
    let sink: Box<dyn Write> = if out == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(out)?)
    };
    let w = BufWriter::with_capacity(BUF_SIZE, sink);
    match cmd {
        Cmd::Sample => write_sample(w),
        Cmd::Bench(c) => write_bench(w, c),
        Cmd::Spoofed(c) => write_spoofed(w, c),
        Cmd::Fragments(c) => write_fragment_flood(w, c),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (cmd, out) = match parse(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("synwatch-gen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Cmd::Bench(c) = &cmd {
        let p = c.plan();
        if p.scanners != c.scanners.min(c.sources) || p.ports_per_scanner != c.ports_per_scanner {
            eprintln!(
                "synwatch-gen: {} packets leave room for {} SYNs: using {} scanners x {} ports",
                c.packets, p.syns, p.scanners, p.ports_per_scanner
            );
        }
    }
    #[expect(
        clippy::disallowed_methods,
        reason = "the binary is an edge: it times its own run for the summary line"
    )]
    let started = Instant::now();
    match run(&cmd, &out) {
        Ok(st) => {
            eprintln!(
                "synwatch-gen: wrote {out}: {} packets, {} bytes, {} SYNs from {} sources, {} scanner addresses ({:.2} s)",
                st.packets,
                st.bytes,
                st.syns,
                st.sources,
                st.scanners.len(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synwatch-gen: {out}: {e}");
            ExitCode::from(1)
        }
    }
}
