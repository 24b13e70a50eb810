//! Configuration in two stages: raw values layered from the TOML file, environment and
//! flags (file < env < flags), then one validation step that parses durations and CIDRs
//! and checks ranges. Everything after start-up sees only [`DetectSettings`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use synwatch_detect::{
    Config, DEFAULT_IPV6_PREFIX, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_SOURCES, DirectionFilter,
};

use crate::diag::{LogArgs, LogFormat, LogLevel, LogSettings};
use crate::output::Format;

/// `--direction`: which attempts are logged and tracked for scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectionArg {
    In,
    Out,
    Both,
}

impl From<DirectionArg> for DirectionFilter {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::In => DirectionFilter::In,
            DirectionArg::Out => DirectionFilter::Out,
            DirectionArg::Both => DirectionFilter::Both,
        }
    }
}

/// The detection options shared by `run` and `replay` (SPEC §3), as flags and
/// `SYNWATCH_*` environment variables. `None`/empty means "not given here".
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DetectArgs {
    /// TOML file with any of these options (keys as the long flags, with underscores).
    #[arg(long, env = "SYNWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A scan is more than N distinct destination ports from one source... [default: 3]
    #[arg(long, env = "SYNWATCH_MAX_PORTS", value_name = "N")]
    pub max_ports: Option<String>,

    /// ...within this window, inclusive (60s, 1m, 500ms, 1h30m) [default: 60s]
    #[arg(long, env = "SYNWATCH_WINDOW", value_name = "DUR")]
    pub window: Option<String>,

    /// This host's address or CIDR; attempts from it are outgoing (repeatable, or
    /// comma-separated in the environment) [default in replay: none]
    #[arg(
        long,
        env = "SYNWATCH_LOCAL",
        value_name = "ADDR_OR_CIDR",
        value_delimiter = ','
    )]
    pub local: Vec<String>,

    /// Never block sources in this CIDR; they are still logged and reported (repeatable)
    #[arg(
        long,
        env = "SYNWATCH_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,

    /// Do not treat local addresses as allowlisted (`=false` turns it off again where the
    /// environment or the config file turned it on)
    #[arg(
        long,
        env = "SYNWATCH_NO_ALLOW_LOCAL",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_allow_local: Option<bool>,

    /// Which attempts are logged; incoming ones always count toward scans, outgoing ones
    /// only with `both` [default: in]
    #[arg(long, env = "SYNWATCH_DIRECTION", value_enum)]
    pub direction: Option<DirectionArg>,

    /// Event format on stdout [default: table on a terminal, json otherwise]
    #[arg(long, env = "SYNWATCH_FORMAT", value_enum)]
    pub format: Option<Format>,

    /// Most sources tracked at once; beyond it those that came back least (a return with
    /// more ports counts more) are evicted first
    /// [default: 100000]
    #[arg(long, env = "SYNWATCH_MAX_SOURCES", value_name = "N")]
    pub max_sources: Option<String>,

    /// IPv6 sources are counted, and banned, per /N (48 to 128; 128 counts each address);
    /// a network holding this host's, its router's or an --allow address counts per
    /// address, and so do NAT64's 64:ff9b::/96 and 64:ff9b:1::/48, link-local fe80::/10
    /// and ::/64 (the loopback's) [default: 64]
    #[arg(long, env = "SYNWATCH_IPV6_PREFIX", value_name = "N")]
    pub ipv6_prefix: Option<String>,

    /// An address sweep is unanswered attempts to more than N hosts on one port within
    /// the window... [default: 16]
    #[arg(long, env = "SYNWATCH_MAX_HOSTS", value_name = "N")]
    pub max_hosts: Option<String>,

    /// ...an attempt being unanswered when no SYN-ACK for it is seen within DUR (sweeps
    /// are looked for where the answers are seen: replay and --source pcap) [default: 3s]
    #[arg(long, env = "SYNWATCH_ANSWER_WAIT", value_name = "DUR")]
    pub answer_wait: Option<String>,

    #[command(flatten)]
    pub log: LogArgs,

    /// The options (by argument id) whose values came from `SYNWATCH_*` variables, so
    /// that an error names the variable the user set rather than a flag they never typed.
    #[arg(skip)]
    pub from_env: Vec<String>,
}

impl DetectArgs {
    /// How to name option `id` (`max_ports`) in a message: as the variable when the value
    /// came from the environment, else as the flag.
    pub(crate) fn label(&self, id: &str) -> String {
        if self.from_env.iter().any(|e| e == id) {
            format!("SYNWATCH_{}", id.to_ascii_uppercase())
        } else {
            format!("--{}", id.replace('_', "-"))
        }
    }
}

/// The same options as read from the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub max_ports: Option<toml::Value>,
    pub window: Option<toml::Value>,
    pub local: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub no_allow_local: Option<bool>,
    pub direction: Option<DirectionArg>,
    pub format: Option<Format>,
    pub max_sources: Option<toml::Value>,
    pub ipv6_prefix: Option<toml::Value>,
    pub max_hosts: Option<toml::Value>,
    pub answer_wait: Option<toml::Value>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    // Keys of `synwatch run` only (replay ignores them, so one file serves both).
    pub iface: Option<Vec<String>>,
    pub source: Option<String>,
    pub xdp_mode: Option<String>,
    pub poll: Option<toml::Value>,
    pub block: Option<String>,
    pub block_scope: Option<String>,
    pub ban: Option<toml::Value>,
    pub ban_max: Option<toml::Value>,
    pub ban_rate: Option<u32>,
    pub state_dir: Option<std::path::PathBuf>,
    pub keep_rules_on_exit: Option<bool>,
    pub dry_run: Option<bool>,
    pub metrics_addr: Option<String>,
    pub log_limit_source: Option<u32>,
    pub log_limit_global: Option<u32>,
    pub crowdsec_credentials: Option<std::path::PathBuf>,
    pub crowdsec_bouncer_key_file: Option<std::path::PathBuf>,
    pub crowdsec_url: Option<String>,
    pub crowdsec_pull: Option<toml::Value>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        // A config file holds options and address lists: a few MiB is far beyond any.
        let text = synwatch_agent::config::read_small_file(path, 16 << 20)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; keep the first.
            let msg = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {msg}", path.display())
        })
    }
}

/// Validated detection settings.
#[derive(Debug, Clone)]
pub struct DetectSettings {
    /// The file's own values, for the keys only `run` reads.
    pub file: FileConfig,
    pub detector: Config,
    /// `None`: decide by whether stdout is a terminal.
    pub format: Option<Format>,
    /// Things worth telling the user about values that were accepted.
    pub warnings: Vec<String>,
}

impl DetectSettings {
    /// Layers file < env/flags (clap has already put flags over env) over defaults and
    /// validates. Every error is one line naming the option and the bad value.
    pub fn from_args(args: &DetectArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let max_ports = match (&args.max_ports, &file.max_ports) {
            (Some(text), _) => parse_count(&args.label("max_ports"), text, 0, 65_535)?,
            (None, Some(value)) => parse_count("max_ports", &toml_number(value), 0, 65_535)?,
            (None, None) => 3,
        };
        let window = match (&args.window, &file.window) {
            (Some(text), _) => parse_window(&args.label("window"), text)?,
            (None, Some(value)) => parse_window("window", &toml_number(value))?,
            (None, None) => 60_000_000_000,
        };
        let max_sources = match (&args.max_sources, &file.max_sources) {
            (Some(text), _) => parse_count(&args.label("max_sources"), text, 1, MAX_SOURCES_LIMIT)?,
            (None, Some(value)) => {
                parse_count("max_sources", &toml_number(value), 1, MAX_SOURCES_LIMIT)?
            }
            (None, None) => DEFAULT_MAX_SOURCES as u64,
        };
        let ipv6_prefix = match (&args.ipv6_prefix, &file.ipv6_prefix) {
            (Some(text), _) => parse_count(&args.label("ipv6_prefix"), text, 48, 128)?,
            (None, Some(value)) => parse_count("ipv6_prefix", &toml_number(value), 48, 128)?,
            (None, None) => u64::from(DEFAULT_IPV6_PREFIX),
        };
        let max_hosts = match (&args.max_hosts, &file.max_hosts) {
            (Some(text), _) => parse_count(&args.label("max_hosts"), text, 1, 65_535)?,
            (None, Some(value)) => parse_count("max_hosts", &toml_number(value), 1, 65_535)?,
            (None, None) => 16,
        };
        let answer_wait = match (&args.answer_wait, &file.answer_wait) {
            (Some(text), _) => parse_window(&args.label("answer_wait"), text)?,
            (None, Some(value)) => parse_window("answer_wait", &toml_number(value))?,
            (None, None) => 3_000_000_000,
        };
        let mut warnings = Vec::new();
        let format = args.format.or(file.format);
        let local = pick_list(&args.local, &file.local);
        let allow = pick_list(&args.allow, &file.allow);
        let local_label = list_label(args, "local", &args.local, &file.local);
        let allow_label = list_label(args, "allow", &args.allow, &file.allow);
        let direction = args
            .direction
            .or(file.direction)
            .unwrap_or(DirectionArg::In);
        let allow_local = !args.no_allow_local.or(file.no_allow_local).unwrap_or(false);
        let max_sources = usize::try_from(max_sources).unwrap_or(usize::MAX);
        Ok(Self {
            file,
            detector: Config {
                max_ports: u16::try_from(max_ports).unwrap_or(u16::MAX),
                window,
                direction: direction.into(),
                locals: parse_set(&local_label, &local, HostBits::Host, &mut warnings)?,
                allow: parse_set(&allow_label, &allow, HostBits::Network, &mut warnings)?,
                allow_local,
                max_sources,
                // Retransmission memory does not follow the source cap: a few sources may
                // make many attempts (SPEC §2 asks that every one be remembered).
                max_attempts: max_sources.saturating_mul(2).max(DEFAULT_MAX_ATTEMPTS),
                ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(128),
                // The agent adds its gateways, routers and resolvers as it finds them.
                neighbours: Default::default(),
                max_hosts: u16::try_from(max_hosts).unwrap_or(u16::MAX),
                answer_wait,
                // The agent turns them off where it cannot see the answers.
                sweeps: true,
            },
            format,
            warnings,
        })
    }
}

pub use synwatch_agent::config::{HostBits, ban_secs, parse_duration, parse_set};
use synwatch_agent::config::{MAX_SOURCES_LIMIT, parse_count, parse_window};

/// How a list option `id` is named in a message: as the flag or variable that gave it,
/// else as the file's key.
fn list_label(args: &DetectArgs, id: &str, flag: &[String], file: &Option<Vec<String>>) -> String {
    if flag.is_empty() && file.is_some() {
        id.to_owned()
    } else {
        args.label(id)
    }
}

fn pick_list(flag: &[String], file: &Option<Vec<String>>) -> Vec<String> {
    if flag.is_empty() {
        file.clone().unwrap_or_default()
    } else {
        flag.to_vec()
    }
}

pub fn toml_number(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The diagnostics settings: the flag (clap has put it over the environment), else the
/// file's key, else the default. A bad file value is one line naming the key.
pub fn log_settings(args: &LogArgs, file: &FileConfig) -> Result<LogSettings, String> {
    Ok(LogSettings {
        level: choice(args.log_level, &file.log_level, "log_level", LogLevel::Info)?,
        format: choice(
            args.log_format,
            &file.log_format,
            "log_format",
            LogFormat::Text,
        )?,
    })
}

/// An enumerated option: the flag's value, else the config file's `key` (which must name
/// one of the values), else `default`.
pub(crate) fn choice<T: clap::ValueEnum + Copy>(
    flag: Option<T>,
    file: &Option<String>,
    key: &str,
    default: T,
) -> Result<T, String> {
    let Some(text) = file.as_deref().filter(|_| flag.is_none()) else {
        return Ok(flag.unwrap_or(default));
    };
    T::from_str(text, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        let (last, rest) = names
            .split_last()
            .map_or(("", &[][..]), |(l, r)| (l.as_str(), r));
        format!(
            "invalid {key} '{text}' in the config file: expected {} or {last}",
            rest.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use synwatch_detect::Nanos;

    const S: Nanos = 1_000_000_000;

    fn args() -> DetectArgs {
        DetectArgs::default()
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let s = DetectSettings::from_args(&args()).expect("defaults");
        assert_eq!(s.detector.max_ports, 3);
        assert_eq!(s.detector.window, 60 * S);
        assert_eq!(s.detector.direction, DirectionFilter::In);
        assert!(s.detector.locals.is_empty());
        assert!(s.detector.allow_local);
        assert_eq!(s.format, None);
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            f,
            "max_ports = 10\nwindow = \"2m\"\nlocal = [\"10.0.0.5\", \"2001:db8::/64\"]\ndirection = \"both\"\nformat = \"json\""
        )
        .expect("write");
        let mut a = args();
        a.config = Some(f.path().to_owned());
        let s = DetectSettings::from_args(&a).expect("file");
        assert_eq!(s.detector.max_ports, 10);
        assert_eq!(s.detector.window, 120 * S);
        assert_eq!(s.detector.locals.len(), 2);
        assert_eq!(s.detector.direction, DirectionFilter::Both);
        assert_eq!(s.format, Some(Format::Json));

        a.max_ports = Some("5".into());
        a.local = vec!["192.0.2.1".into()];
        let s = DetectSettings::from_args(&a).expect("flags");
        assert_eq!(s.detector.max_ports, 5);
        assert_eq!(s.detector.locals.len(), 1);
        assert_eq!(s.detector.window, 120 * S);
    }

    #[test]
    fn invalid_values_fail_with_one_clear_line() {
        type Case = (fn(&mut DetectArgs), &'static str);
        let cases: [Case; 7] = [
            (
                |a| a.window = Some("0s".into()),
                "invalid --window '0s': it must be longer than zero",
            ),
            (
                |a| a.answer_wait = Some("0".into()),
                "invalid --answer-wait '0': it must be longer than zero",
            ),
            (
                |a| a.window = Some("soon".into()),
                "invalid --window 'soon'",
            ),
            (
                |a| a.max_ports = Some("-1".into()),
                "invalid --max-ports '-1': expected a whole number",
            ),
            (
                |a| a.ipv6_prefix = Some("40".into()),
                "invalid --ipv6-prefix '40': must be between 48 and 128",
            ),
            (
                |a| a.max_ports = Some("70000".into()),
                "must be between 0 and 65535",
            ),
            (
                |a| a.local = vec!["10.0.0.300".into()],
                "'10.0.0.300' is not an IP address or CIDR",
            ),
        ];
        for (set, want) in cases {
            let mut a = args();
            set(&mut a);
            let err = format!("{:#}", DetectSettings::from_args(&a).expect_err(want));
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn interface_style_addresses_mean_the_host_for_local_and_the_network_for_allow() {
        let mut a = args();
        a.local = vec!["10.211.0.5/24".into()];
        a.allow = vec!["192.0.2.9/24".into()];
        let s = DetectSettings::from_args(&a).expect("accepted");
        let locals: Vec<String> = s.detector.locals.iter().map(|n| n.to_string()).collect();
        let allow: Vec<String> = s.detector.allow.iter().map(|n| n.to_string()).collect();
        assert_eq!(locals, ["10.211.0.5/32"]);
        assert_eq!(allow, ["192.0.2.0/24"]);
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("taken as the single address 10.211.0.5"));
        a.local = vec!["10.211.0.0/24".into()];
        a.allow = vec![];
        assert!(
            DetectSettings::from_args(&a)
                .expect("accepted")
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn errors_name_the_variable_when_the_value_came_from_the_environment() {
        let mut a = args();
        a.max_ports = Some(String::new());
        a.from_env = vec!["max_ports".into()];
        let err = format!("{:#}", DetectSettings::from_args(&a).expect_err("empty"));
        assert!(err.starts_with("invalid SYNWATCH_MAX_PORTS ''"), "{err}");
    }

    #[test]
    fn file_window_may_be_a_number_of_seconds_and_no_allow_local_is_a_key() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "window = 90\nno_allow_local = true").expect("write");
        let mut a = args();
        a.config = Some(f.path().to_owned());
        let s = DetectSettings::from_args(&a).expect("file");
        assert_eq!(s.detector.window, 90 * S);
        assert!(!s.detector.allow_local);
    }

    #[test]
    fn unknown_file_keys_are_refused_with_the_line() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "max_ports = 3\nwindoww = \"1m\"").expect("write");
        let mut a = args();
        a.config = Some(f.path().to_owned());
        let err = format!("{:#}", DetectSettings::from_args(&a).expect_err("typo"));
        assert!(err.contains("(line 2)") && err.contains("windoww"), "{err}");
    }

    #[test]
    fn log_flags_win_over_the_file_which_wins_over_the_default() {
        let mut file = FileConfig::default();
        let none = LogArgs::default();
        assert_eq!(log_settings(&none, &file), Ok(LogSettings::default()));
        file.log_level = Some("warn".into());
        file.log_format = Some("json".into());
        let from_file = log_settings(&none, &file).expect("valid");
        assert_eq!(from_file.level, LogLevel::Warn);
        assert_eq!(from_file.format, LogFormat::Json);
        let flags = LogArgs {
            log_level: Some(LogLevel::Debug),
            log_format: Some(LogFormat::Text),
        };
        assert_eq!(
            log_settings(&flags, &file),
            Ok(LogSettings {
                level: LogLevel::Debug,
                format: LogFormat::Text
            })
        );
        file.log_level = Some("loud".into());
        let err = log_settings(&none, &file).expect_err("refused");
        assert_eq!(
            err,
            "invalid log_level 'loud' in the config file: expected error, warn, info, debug or trace"
        );
    }
}
