//! Events on stdout (SPEC §4): the printers. [`EventWriter`] implements the agent's
//! `EventSink`: it formats each event with the library's
//! [`synwatch_agent::event_text::Formatter`] (JSON lines for machines, rows for people),
//! pads the table's columns, and writes in large buffered chunks.

use std::io::{self, Write};

use synwatch_agent::event_text::{self, COLUMN, Formatter};
use synwatch_agent::events::EventSink;
use synwatch_detect::{Nanos, Scan};

/// The two event formats of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Table,
    Json,
}

impl From<Format> for event_text::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => Self::Table,
            Format::Json => Self::Json,
        }
    }
}

// The events and the sink the agent reports them to are the agent library's; the printers
// here implement it.
pub use synwatch_agent::events::{BlockEvent, Connection};

/// Writes events in one format. Events are formatted straight into one large buffer
/// that goes to `out` whenever it fills (and on [`EventWriter::flush`]), so each event
/// costs no copy beyond its formatting.
#[derive(Debug)]
pub struct EventWriter<W: Write> {
    out: W,
    formatter: Formatter,
    line: Vec<u8>,
    /// Table format: the SOURCE and DESTINATION widths of the last header printed, or
    /// `None` before the first row.
    columns: Option<[usize; 2]>,
    scratch: Vec<u8>,
}

impl<W: Write> EventSink for EventWriter<W> {
    fn connection(&mut self, c: &Connection) -> io::Result<()> {
        self.format_and_write(|f, out| f.connection(c, out))
    }

    fn scan(&mut self, s: &Scan, protected: Option<&str>) -> io::Result<()> {
        self.format_and_write(|f, out| f.scan_protected(s, protected, out))
    }

    /// One line for what the log rate limit held back in a second.
    fn suppressed(&mut self, s: &crate::limit::Suppressed) -> io::Result<()> {
        self.format_and_write(|f, out| f.suppressed(s, out))
    }

    fn block(&mut self, b: &BlockEvent<'_>) -> io::Result<()> {
        self.format_and_write(|f, out| f.block(b, out))
    }

    /// A ban lifted: of `net`, an address or a range.
    fn unblock(&mut self, ts: Nanos, net: ipnet::IpNet, reason: &str) -> io::Result<()> {
        let net = synwatch_enforce::ban_net(net);
        let prefix = (!synwatch_enforce::is_host(net)).then_some(net);
        self.format_and_write(|f, out| f.unblock(ts, net.addr(), prefix, reason, out))
    }

    fn flush(&mut self) -> io::Result<()> {
        EventWriter::flush(self)
    }
}

/// Buffered bytes that trigger a write to the output.
const FLUSH_AT: usize = 1 << 18;

impl<W: Write> EventWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            formatter: Formatter::new(format.into()),
            line: Vec::with_capacity(FLUSH_AT + 4096),
            columns: None,
            scratch: Vec::new(),
        }
    }

    /// Formats one event into the scratch buffer, then writes it as [`Self::formatted`]
    /// does (the table format pads columns only once a whole row is known).
    fn format_and_write(
        &mut self,
        format: impl FnOnce(&mut Formatter, &mut Vec<u8>),
    ) -> io::Result<()> {
        let mut event = std::mem::take(&mut self.scratch);
        event.clear();
        format(&mut self.formatter, &mut event);
        let written = self.formatted(&event);
        self.scratch = event;
        written
    }

    /// Writes an event that a [`Formatter`] of the same format already formatted.
    pub fn formatted(&mut self, event: &[u8]) -> io::Result<()> {
        match self.formatter.format() {
            event_text::Format::Json => self.line.extend_from_slice(event),
            event_text::Format::Table => self.table_row(event),
        }
        self.end_event()
    }

    /// Pads a row's columns. Columns are as wide as the widest address so far (at least
    /// [`ADDR_WIDTH`]); when a longer one arrives (a full IPv6 address with a port is 47
    /// characters) they widen and the header is printed again, so every row lines up
    /// with the header above it.
    fn table_row(&mut self, event: &[u8]) {
        let mut fields = event.splitn(4, |b| *b == COLUMN);
        let (Some(time), Some(src), Some(dst), Some(message)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            self.line.extend_from_slice(event);
            return;
        };
        let old = self.columns.unwrap_or([0, 0]);
        let want = [
            old[0].max(ADDR_WIDTH).max(src.len() + 2),
            old[1].max(ADDR_WIDTH).max(dst.len() + 2),
        ];
        if self.columns != Some(want) {
            self.columns = Some(want);
            let [s, d] = want;
            let _ = writeln!(
                self.line,
                "{:<TIME_WIDTH$}{:<s$}{:<d$}MESSAGE",
                "TIME", "SOURCE", "DESTINATION"
            );
        }
        let start = self.line.len();
        self.line.extend_from_slice(time);
        pad_to(&mut self.line, start + TIME_WIDTH);
        for (field, width) in [(src, want[0]), (dst, want[1])] {
            let start = self.line.len();
            self.line.extend_from_slice(field);
            pad_to(&mut self.line, start + width);
        }
        self.line.extend_from_slice(message);
    }

    /// Whether formatted events are written as they are (JSON lines), not padded.
    pub fn writes_lines_as_they_are(&self) -> bool {
        self.formatter.format() == event_text::Format::Json
    }

    /// Writes the events formatted in `pieces` of `text`, in order: JSON lines straight
    /// from there (one vectored write for them all, no copy into the buffer) after what
    /// is buffered; table rows one by one, each padded as [`Self::formatted`] does.
    pub fn write_pieces(
        &mut self,
        text: &[u8],
        pieces: &[std::ops::Range<usize>],
    ) -> io::Result<()> {
        if !self.writes_lines_as_they_are() {
            for piece in pieces {
                self.formatted(text.get(piece.clone()).unwrap_or_default())?;
            }
            return Ok(());
        }
        if !self.line.is_empty() {
            self.write_buffered()?;
        }
        let mut slices: Vec<io::IoSlice<'_>> = pieces
            .iter()
            .filter_map(|p| text.get(p.clone()))
            .filter(|piece| !piece.is_empty())
            .map(io::IoSlice::new)
            .collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match self.out.write_vectored(left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn end_event(&mut self) -> io::Result<()> {
        if self.line.len() >= FLUSH_AT {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Hands what is buffered to the output.
    fn write_buffered(&mut self) -> io::Result<()> {
        self.out.write_all(&self.line)?;
        self.line.clear();
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.out.flush()
    }
}

const TIME_WIDTH: usize = 29;
const ADDR_WIDTH: usize = 24;

/// Pads with spaces to `width`, always leaving at least two spaces between columns.
fn pad_to(line: &mut Vec<u8>, width: usize) {
    let target = width.max(line.len() + 2);
    line.resize(target, b' ');
}

pub use synwatch_agent::timefmt::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_agent::fixtures::{connection as conn, ip, port_scan as scan};

    fn render(
        f: impl FnOnce(&mut EventWriter<&mut Vec<u8>>) -> io::Result<()>,
        format: Format,
    ) -> String {
        let mut out = Vec::new();
        let mut w = EventWriter::new(&mut out, format);
        f(&mut w).expect("write");
        w.flush().expect("flush");
        String::from_utf8(out).expect("utf8")
    }

    /// A writer that takes at most a few bytes a call, vectored or not.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines written from where they lie come after what was buffered before them, whole
    /// and in order, however little the writer takes a call.
    #[test]
    fn pieces_follow_the_buffered_lines_whole_and_in_order() {
        let mut w = EventWriter::new(Trickle(Vec::new()), Format::Json);
        w.scan(&scan(), None).expect("scan");
        let text = b"line one\nline two\nskipped\nline three\n";
        w.write_pieces(text, &[0..18, 26..37]).expect("pieces");
        w.flush().expect("flush");
        let out = String::from_utf8(w.out.0).expect("utf8");
        let (first, rest) = out.split_once('\n').expect("two parts");
        assert!(first.contains("\"event\":\"scan\""), "{out}");
        assert_eq!(rest, "line one\nline two\nline three\n");
    }

    #[test]
    fn table_lines_carry_the_messages() {
        let text = render(
            |w| {
                w.connection(&conn())?;
                w.scan(&scan(), None)
            },
            Format::Table,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME "), "{}", lines[0]);
        assert!(lines[0].ends_with("MESSAGE"));
        let msg_col = lines[0].find("MESSAGE").expect("header");
        assert!(lines[1].starts_with("2023-11-14T22:13:20.300000Z  203.0.113.9:40001"));
        assert_eq!(
            &lines[1][msg_col..],
            "New connection: 203.0.113.9:40001 -> 192.0.2.1:22"
        );
        assert_eq!(
            &lines[2][msg_col..],
            "Port scan detected: 203.0.113.9 -> 192.0.2.1 on ports 21,22,23,25"
        );
    }

    #[test]
    fn table_columns_widen_for_long_addresses_and_the_header_follows() {
        let long = Connection {
            src: ip("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"),
            sport: 40001,
            ..conn()
        };
        let text = render(
            |w| {
                w.connection(&conn())?;
                w.connection(&long)?;
                w.connection(&conn())
            },
            Format::Table,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("TIME") && lines[2].starts_with("TIME"),
            "{text}"
        );
        for (header, rows) in [(lines[0], &lines[1..2]), (lines[2], &lines[3..5])] {
            let dst_col = header.find("DESTINATION").expect("header");
            let msg_col = header.find("MESSAGE").expect("header");
            for row in rows {
                assert_eq!(&row[dst_col..dst_col + 10], "192.0.2.1:", "{text}");
                assert!(row[msg_col..].starts_with("New connection: "), "{text}");
            }
        }
    }
}
