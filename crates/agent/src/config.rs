//! The validated configuration's parsers and its TOML form: durations, counts and
//! address sets checked into what the detector and the agent are configured with, each
//! error one line naming the option (its flag, variable or file key, as the caller
//! names it); and [`to_toml`], the effective configuration as `--print-config` shows it.
//! Layering the options (file < environment < flags) is the binary's.

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use synwatch_detect::{AddrSet, Config, DirectionFilter, Nanos, parse_cidr};
use synwatch_enforce::Scope;

use crate::agent::{Settings, duration_text};

/// Reads a small text file the user names (a config, credentials or key file), up to
/// `limit` bytes: a regular file longer than that is refused before reading, and so is
/// anything else that goes on past it (`/dev/zero`). A pipe (`<(cscli ... -o raw)`) or
/// device is read as it comes (one that is held open and never written holds the read
/// up, as it would `cat`), but opening never waits: a FIFO nobody writes to is refused
/// rather than hanging the start.
pub fn read_small_file(path: &std::path::Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    // Without blocking: opening a FIFO would otherwise wait for its writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::InvalidInput, "a directory"));
    }
    let too_long = || Error::new(ErrorKind::InvalidData, format!("longer than {limit} bytes"));
    if meta.is_file() && meta.len() > limit {
        return Err(too_long());
    }
    if !meta.is_file() {
        // A pipe's writer may not have written yet: wait for what it sends (its end,
        // or the limit) as a read of it would.
        let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(too_long());
    }
    if text.is_empty() && std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
        return Err(Error::new(
            ErrorKind::UnexpectedEof,
            "a FIFO nobody wrote to (no writer had it open)",
        ));
    }
    Ok(text)
}

/// The largest accepted `--max-sources`.
pub const MAX_SOURCES_LIMIT: u64 = u32::MAX as u64;

/// What `ADDR/LEN` with host bits set (`10.1.2.5/24`, as `ip addr` prints an interface
/// address) stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostBits {
    /// The one address: this host's address on that network (`--local`).
    Host,
    /// The whole network (`--allow`: the wider reading never bans more).
    Network,
}

pub fn parse_set(
    option: &str,
    values: &[String],
    host_bits: HostBits,
    warnings: &mut Vec<String>,
) -> Result<AddrSet> {
    let mut set = AddrSet::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let net = parse_cidr(value).with_context(|| format!("invalid {option}"))?;
        let exact: Option<IpNet> = value.parse().ok();
        let net = match exact {
            Some(given) if given.addr() != given.network() => match host_bits {
                HostBits::Host => {
                    warnings.push(format!(
                        "{option} {value} has host bits set: taken as the single address {} \
                         (write {net} for the whole network)",
                        given.addr()
                    ));
                    IpNet::from(given.addr())
                }
                HostBits::Network => {
                    warnings.push(format!(
                        "{option} {value} has host bits set: taken as the network {net}"
                    ));
                    net
                }
            },
            _ => net,
        };
        set.insert(net);
    }
    Ok(set)
}

/// A whole number between `min` and `max`, or the message naming `option`.
pub fn parse_count(option: &str, text: &str, min: u64, max: u64) -> Result<u64> {
    let n: u64 = text
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid {option} '{text}': expected a whole number"))?;
    if n < min || n > max {
        bail!("invalid {option} '{text}': must be between {min} and {max}");
    }
    Ok(n)
}

/// A duration longer than zero, or the message naming `option`.
pub fn parse_window(option: &str, text: &str) -> Result<Nanos> {
    let nanos =
        parse_duration(text).map_err(|why| anyhow::anyhow!("invalid {option} '{text}': {why}"))?;
    if nanos == 0 {
        bail!("invalid {option} '{text}': it must be longer than zero");
    }
    Ok(nanos)
}

/// A ban's length in whole seconds (what the backends and the state file keep), from
/// `nanos` as [`parse_duration`] read it: rounded up, so that a length under a second
/// is one second and never 0, which means "until removed".
pub fn ban_secs(nanos: Nanos) -> u64 {
    u64::try_from(nanos).unwrap_or(0).div_ceil(1_000_000_000)
}

/// Parses `60s`, `1m`, `500ms`, `1h30m`, `1.5s`, `2d`; a bare number is seconds.
/// Returns nanoseconds.
pub fn parse_duration(text: &str) -> std::result::Result<Nanos, String> {
    const EXPECTED: &str = "expected a duration such as 60s, 1m, 500ms or 1h30m";
    let text = text.trim();
    if text.is_empty() {
        return Err(EXPECTED.into());
    }
    // A bare number is seconds (`90`, and `window = 1.5` in the file).
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_duration(&format!("{text}s"));
    }
    let mut total: i128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit: {EXPECTED}"))?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(format!("unknown unit '{unit}': {EXPECTED}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(EXPECTED.into());
        }
        let int: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| "too large".to_owned())?
        };
        let mut part = int.checked_mul(scale).ok_or("too large")?;
        let mut denom: i128 = 1;
        for digit in frac.bytes().take(18) {
            denom *= 10;
            part += i128::from(digit - b'0') * scale / denom;
        }
        total = total.checked_add(part).ok_or("too large")?;
        rest = tail;
    }
    Nanos::try_from(total).map_err(|_| "too large".to_owned())
}

/// A duration in nanoseconds as [`parse_duration`] reads it back exactly: in the largest
/// unit that holds it whole (`90s`, `1500us`).
pub fn nanos_text(n: Nanos) -> String {
    for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}ns")
}

/// The effective configuration as TOML, as `--print-config` shows it (the diagnostics
/// options are the binary's to add).
/// `format` is the event format's name.
pub fn to_toml(d: &Config, run: &Settings, format: &str) -> String {
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let window = nanos_text(d.window);
    let b = &run.blocking;
    format!(
        "max_ports = {}\nwindow = \"{window}\"\nlocal = {}\nallow = {}\nno_allow_local = {}\n\
         direction = \"{}\"\nformat = \"{}\"\nmax_sources = {}\nipv6_prefix = {}\nmax_hosts = {}\n\
         answer_wait = \"{}\"\niface = {}\nsource = \"{}\"\n\
         xdp_mode = \"{}\"\n\
         poll = \"{}\"\nblock = \"{}\"\n\
         block_scope = \"{}\"\nban = \"{}\"\nban_max = \"{}\"\nban_rate = {}\nstate_dir = \"{}\"\n\
         keep_rules_on_exit = {}\ndry_run = {}\n\
         metrics_addr = \"{}\"\nlog_limit_source = {}\nlog_limit_global = {}\n",
        d.max_ports,
        list(d.locals.iter().map(|n| n.to_string()).collect()),
        list(d.allow.iter().map(|n| n.to_string()).collect()),
        !d.allow_local,
        match d.direction {
            DirectionFilter::In => "in",
            DirectionFilter::Out => "out",
            DirectionFilter::Both => "both",
        },
        format,
        d.max_sources,
        d.ipv6_prefix,
        d.max_hosts,
        nanos_text(d.answer_wait),
        list(run.ifaces.clone()),
        run.source.as_str(),
        run.xdp_mode.as_str(),
        nanos_text(Nanos::try_from(run.poll.as_nanos()).unwrap_or(Nanos::MAX)),
        run.block.as_str(),
        match b.scope {
            Scope::All => "all",
            Scope::New => "new",
        },
        duration_text(b.policy.duration_secs),
        duration_text(b.policy.max_secs),
        b.policy.per_minute,
        b.state_dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\""),
        b.keep_rules,
        b.dry_run,
        run.metrics_addr,
        run.log_limit_source,
        run.log_limit_global,
    ) + &run.crowdsec.toml()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn a_small_file_is_read_and_anything_else_refused_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small");
        std::fs::write(&small, "url: http://127.0.0.1:8080\n").expect("write");
        assert_eq!(
            read_small_file(&small, 64).expect("read"),
            "url: http://127.0.0.1:8080\n"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(65)).expect("write");
        let e = read_small_file(&big, 64).expect_err("too long");
        assert_eq!(e.to_string(), "longer than 64 bytes");
        // A device that never ends, a directory: refused at once.
        let e = read_small_file(std::path::Path::new("/dev/zero"), 64).expect_err("endless");
        assert_eq!(e.to_string(), "longer than 64 bytes");
        let e = read_small_file(dir.path(), 64).expect_err("a directory");
        assert_eq!(e.to_string(), "a directory");
        assert_eq!(
            read_small_file(std::path::Path::new("/dev/null"), 64).expect("empty"),
            ""
        );
        // A FIFO nobody writes to is refused, at once; one with a writer is read as
        // written, to its end.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = read_small_file(&fifo, 64).expect_err("no writer");
        assert!(e.to_string().contains("nobody wrote"), "{e}");
        // Opened read-write, the writer's end never waits for a reader.
        let mut end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .expect("open the FIFO");
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut end, b"key\n").expect("write");
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        assert_eq!(read_small_file(&fifo, 64).expect("read"), "key\n");
        writer.join().expect("writer");
        assert!(read_small_file(&dir.path().join("missing"), 64).is_err());
    }

    #[test]
    fn ban_lengths_round_up_to_whole_seconds() {
        assert_eq!(ban_secs(0), 0);
        assert_eq!(ban_secs(1), 1);
        assert_eq!(ban_secs(S / 2), 1);
        assert_eq!(ban_secs(S), 1);
        assert_eq!(ban_secs(S + 1), 2);
        assert_eq!(ban_secs(3600 * S), 3600);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(60 * S));
        assert_eq!(parse_duration("1m"), Ok(60 * S));
        assert_eq!(parse_duration("500ms"), Ok(S / 2));
        assert_eq!(parse_duration("1h30m"), Ok(5400 * S));
        assert_eq!(parse_duration("1.5s"), Ok(3 * S / 2));
        assert_eq!(parse_duration("90"), Ok(90 * S));
        assert_eq!(parse_duration("1.5"), Ok(3 * S / 2));
        assert_eq!(parse_duration(".5"), Ok(S / 2));
        // The micro sign and the Greek mu look alike; both are taken.
        assert_eq!(parse_duration("3\u{b5}s"), Ok(3_000));
        assert_eq!(parse_duration("3\u{3bc}s"), Ok(3_000));
        assert_eq!(parse_duration("2d"), Ok(2 * 86_400 * S));
        for bad in [
            "",
            "s",
            "10x",
            "1.2.3s",
            "1.2.3",
            ".",
            "-5s",
            "5 s",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
