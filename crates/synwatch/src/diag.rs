//! The diagnostics options, `--log-level` and `--log-format`, layered file < env < flags
//! like every option; `synwatch_agent::diag` writes with what they chose.

use tracing::level_filters::LevelFilter;

use synwatch_agent::diag::Format;

/// `--log-level`: the least severe diagnostics written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Only failures
    Error,
    /// Failures and warnings
    Warn,
    /// What the agent does: start, interfaces coming and going, reloads, the summary
    Info,
    /// More detail (aya's debug records too)
    Debug,
    /// Everything
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// `--log-format`: how diagnostics are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `synwatch: message`, one per line (continuation lines indented)
    Text,
    /// One JSON object per line: level, target, message, fields
    Json,
}

impl LogFormat {
    fn format(self) -> Format {
        match self {
            Self::Text => Format::Text,
            Self::Json => Format::Json,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The diagnostics options of `run` and `replay`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// The least severe diagnostics written to stderr (events on stdout are not affected)
    /// [default: info]
    #[arg(long, env = "SYNWATCH_LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,

    /// How diagnostics are written to stderr: text lines "synwatch: message", or one JSON
    /// object per line (level, target, message, fields) [default: text]
    #[arg(long, env = "SYNWATCH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The layered diagnostics settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

impl LogSettings {
    /// The `--print-config` lines.
    pub fn toml(&self) -> String {
        format!(
            "log_level = \"{}\"\nlog_format = \"{}\"\n",
            self.level.as_str(),
            self.format.as_str()
        )
    }
}

/// Installs the agent's subscriber on stderr with these settings (once per process).
pub fn install(settings: LogSettings) {
    synwatch_agent::diag::install(settings.level.filter(), settings.format.format());
}
