//! RFC 3339 timestamps, for the event printers and the CrowdSec alerts alike.

use synwatch_detect::Nanos;

/// Formats RFC 3339 UTC timestamps with microseconds, remembering the last whole second
/// so that consecutive events (the usual case) only format their fraction.
#[derive(Debug, Clone)]
pub struct TimestampCache {
    second: Option<i64>,
    /// The last timestamp written: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (nanosecond times
    /// span the years 1677 to 2262, always four digits).
    stamp: [u8; STAMP],
}

/// Bytes of a timestamp.
pub const STAMP: usize = 27;

impl Default for TimestampCache {
    fn default() -> Self {
        Self {
            second: None,
            stamp: *b"0000-00-00T00:00:00.000000Z",
        }
    }
}

impl TimestampCache {
    pub fn write(&mut self, ts: Nanos, line: &mut Vec<u8>) {
        line.extend_from_slice(self.stamp(ts));
    }

    /// The timestamp of `ts`, as bytes.
    pub fn stamp(&mut self, ts: Nanos) -> &[u8; STAMP] {
        let second = ts.div_euclid(1_000_000_000);
        let micros = ts.rem_euclid(1_000_000_000) / 1000;
        if self.second != Some(second) {
            self.second = Some(second);
            let (y, mo, d, h, mi, s) = civil(second);
            let mut prefix = Vec::with_capacity(20);
            use std::io::Write as _;
            let _ = write!(prefix, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.");
            if let Some(head) = self.stamp.get_mut(..prefix.len().min(20)) {
                head.copy_from_slice(&prefix[..head.len()]);
            }
        }
        let mut m = micros;
        for slot in self.stamp[20..26].iter_mut().rev() {
            *slot = b'0' + (m % 10) as u8;
            m /= 10;
        }
        &self.stamp
    }
}

/// RFC 3339 text for one timestamp.
pub fn rfc3339(ts: Nanos) -> String {
    let mut line = Vec::with_capacity(27);
    TimestampCache::default().write(ts, &mut line);
    String::from_utf8_lossy(&line).into_owned()
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), proleptic
/// Gregorian, after Howard Hinnant's `civil_from_days`.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y, m as u32, d as u32, h as u32, mi as u32, s as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn timestamps_across_dates_and_before_the_epoch() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400 * SEC), "2000-02-29T00:00:00.000000Z");
        assert_eq!(
            rfc3339(4_107_542_399 * SEC + 999_999_999),
            "2100-02-28T23:59:59.999999Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339(i64::MAX), "2262-04-11T23:47:16.854775Z");
        assert_eq!(rfc3339(i64::MIN), "1677-09-21T00:12:43.145224Z");
    }

    #[test]
    fn cached_second_is_refreshed() {
        let mut cache = TimestampCache::default();
        let mut line = Vec::new();
        cache.write(5 * SEC + 1000, &mut line);
        cache.write(5 * SEC + 2000, &mut line);
        cache.write(6 * SEC, &mut line);
        assert_eq!(
            String::from_utf8(line).expect("utf8"),
            "1970-01-01T00:00:05.000001Z1970-01-01T00:00:05.000002Z1970-01-01T00:00:06.000000Z"
        );
    }
}
