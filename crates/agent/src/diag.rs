//! Diagnostics: what the agent says about itself, written to stderr through `tracing`
//! (events go to stdout, through the `EventSink`, untouched). The library's modules log
//! with `tracing` macros; [`install`] sets up the one subscriber (the binary calls it
//! with the level and format its options chose) and bridges `log` records (aya's) in.
//!
//! The text format is the familiar `synwatch: message` line, without a timestamp or a
//! level: journald and most supervisors stamp each line themselves, and the messages
//! that are warnings say so in their text. The JSON format is one object per line:
//! `{"level":"warn","target":"synwatch_agent::block","message":"...","fields":{...}}`.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_log::{AsLog as _, NormalizeEvent as _};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// How diagnostics are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `synwatch: message`, one per line (a message's own continuation lines follow it).
    Text,
    /// One JSON object per line: level, target, message, fields.
    Json,
}

/// Installs the subscriber writing to stderr, and the bridge for `log` records (aya's).
/// Once per process; a second call changes nothing.
pub fn install(level: LevelFilter, format: Format) {
    let subscriber =
        tracing_subscriber::registry()
            .with(level)
            .with(Lines::new(format, |line: &[u8]| {
                // Nowhere to report a failed write of a diagnostic.
                let _ = std::io::stderr().lock().write_all(line);
            }));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = tracing_log::LogTracer::init_with_filter(level.as_log());
    }
}

/// The layer that writes each event as one line (text or JSON) to `sink`.
pub struct Lines<W> {
    format: Format,
    sink: W,
}

impl<W> fmt::Debug for Lines<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lines")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl<W: Fn(&[u8]) + Send + Sync + 'static> Lines<W> {
    pub fn new(format: Format, sink: W) -> Self {
        Self { format, sink }
    }
}

impl<S: Subscriber, W: Fn(&[u8]) + Send + Sync + 'static> Layer<S> for Lines<W> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // A bridged `log` record names its own target (e.g. `aya::bpf`).
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut record = Record::default();
        event.record(&mut record);
        let line = match self.format {
            Format::Text => text_line(&record),
            Format::Json => json_line(*meta.level(), meta.target(), &record),
        };
        (self.sink)(line.as_bytes());
    }
}

/// An event's message and its other fields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record {
    pub message: String,
    pub fields: Vec<(String, Value)>,
}

impl Record {
    fn push(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => match value {
                Value::String(s) => self.message = s,
                other => self.message = other.to_string(),
            },
            // The bridge's own fields (the normalized metadata carries the target).
            name if name.starts_with("log.") => {}
            name => self.fields.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Record {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
}

/// `synwatch: message key=value ...` and a newline.
pub fn text_line(record: &Record) -> String {
    let mut line = format!("synwatch: {}", record.message);
    for (name, value) in &record.fields {
        let _ = match value {
            Value::String(s) => write!(line, " {name}={s}"),
            other => write!(line, " {name}={other}"),
        };
    }
    line.push('\n');
    line
}

/// One JSON object and a newline, its keys in this order: level, target, message,
/// fields (each field in the order the call site gave).
pub fn json_line(level: Level, target: &str, record: &Record) -> String {
    let string = |s: &str| Value::from(s).to_string();
    let fields: Vec<String> = record
        .fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", string(name)))
        .collect();
    format!(
        "{{\"level\":{},\"target\":{},\"message\":{},\"fields\":{{{}}}}}\n",
        string(&level.as_str().to_ascii_lowercase()),
        string(target),
        string(&record.message),
        fields.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The lines a subscriber at `settings` writes for a few events.
    fn written(level: LevelFilter, format: Format, emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::registry().with(level).with(Lines::new(
            format,
            move |line: &[u8]| {
                sink.lock().expect("sink").extend_from_slice(line);
            },
        ));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().expect("sink").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn text_is_the_familiar_synwatch_line_with_fields_after_it() {
        let got = written(LevelFilter::INFO, Format::Text, || {
            tracing::warn!("warning: not blocking {}: protected", "192.0.2.1");
            tracing::info!(bans = 2, "restored");
            tracing::debug!("not shown at info");
        });
        assert_eq!(
            got,
            "synwatch: warning: not blocking 192.0.2.1: protected\nsynwatch: restored bans=2\n"
        );
    }

    #[test]
    fn json_is_one_object_per_line_with_level_target_message_and_fields() {
        let got = written(LevelFilter::DEBUG, Format::Json, || {
            tracing::error!(iface = "eth0", up = false, "cannot \"attach\"\nsecond line");
            tracing::debug!("detail");
            tracing::trace!("not shown at debug");
        });
        let lines: Vec<Value> = got
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{got}");
        assert_eq!(lines[0]["level"], "error");
        assert_eq!(lines[0]["target"], module_path!());
        assert_eq!(lines[0]["message"], "cannot \"attach\"\nsecond line");
        assert_eq!(lines[0]["fields"]["iface"], "eth0");
        assert_eq!(lines[0]["fields"]["up"], false);
        assert!(
            got.starts_with("{\"level\":\"error\",\"target\":"),
            "keys in order: {got}"
        );
        assert_eq!(lines[1]["level"], "debug");
        assert_eq!(lines[1]["fields"], serde_json::json!({}));
    }

    #[test]
    fn error_level_silences_warnings_and_info() {
        let got = written(LevelFilter::ERROR, Format::Text, || {
            tracing::info!("watching");
            tracing::warn!("warning: slow");
            tracing::error!("failed");
        });
        assert_eq!(got, "synwatch: failed\n");
    }

    #[test]
    fn log_records_are_bridged_with_their_own_target() {
        // Global, like in the binary; the records reach this thread's subscriber.
        let _ = tracing_log::LogTracer::init_with_filter(tracing_log::log::LevelFilter::Trace);
        let got = written(LevelFilter::WARN, Format::Json, || {
            tracing_log::log::warn!(target: "aya::obj", "map {} ignored", "x");
            tracing_log::log::info!(target: "aya::obj", "below the level");
        });
        let line: Value = serde_json::from_str(got.trim_end()).expect("one JSON line");
        assert_eq!(line["level"], "warn");
        assert_eq!(line["target"], "aya::obj");
        assert_eq!(line["message"], "map x ignored");
        assert_eq!(line["fields"], serde_json::json!({}));
    }
}
