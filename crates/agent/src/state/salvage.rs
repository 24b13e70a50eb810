//! What can be read of a damaged table of the ban database: its rows walked in rowid
//! order, a read that fails skipped past, so that a damaged page costs the rows on it
//! and no others.
//!
//! A read from a rowid on a damaged page fails; one from a rowid past that page's last
//! row reads on. After a failure at rowid `r`, reads are tried at `r + 1`, `r + 2`,
//! `r + 4`, ... until one works, and then halfway back until the lowest rowid from
//! which a read works is found. Each try is counted, so that a hostile file cannot keep
//! the walk going for long.

use rusqlite::types::Value;
use rusqlite::{Connection, Statement, params};

use super::Unreadable;

/// Rows read in one go.
const BATCH: i64 = 256;

/// The most tries spent skipping past damage in one table. A damaged stretch costs at
/// most about 130 (64 doubling steps and 64 halving ones), a page in the middle of the
/// table about 15, so hundreds of damaged pages are read around.
const TRIES: u32 = 8192;

/// What could be read of one table.
pub struct Table {
    /// Each row read: its rowid and the columns asked for, as stored.
    pub rows: Vec<(i64, Vec<Value>)>,
    /// The stretches that could not be read.
    pub unreadable: Vec<Unreadable>,
}

/// Reads `columns` of every row of `table` that can be read, in rowid order.
pub fn read(conn: &Connection, table: &'static str, columns: &[&str]) -> Table {
    let mut out = Table {
        rows: Vec::new(),
        unreadable: Vec::new(),
    };
    let sql = format!(
        "SELECT rowid, {} FROM {table} WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2",
        columns.join(", ")
    );
    let Ok(stmt) = conn.prepare(&sql) else {
        out.unreadable.push(Unreadable {
            table,
            after: None,
            before: None,
        });
        return out;
    };
    let mut walk = Walk {
        stmt,
        width: columns.len(),
        tries: 0,
    };
    let mut from = i64::MIN;
    loop {
        match walk.batch(from, BATCH, &mut out.rows) {
            Ok(Some(next)) => from = next,
            Ok(None) => break,
            Err(bad) => {
                let past = walk.past(bad);
                out.unreadable.push(Unreadable {
                    table,
                    after: out.rows.last().map(|r| r.0),
                    before: past.and_then(|p| p.1),
                });
                match past {
                    Some((next, Some(_))) => from = next,
                    _ => break,
                }
            }
        }
    }
    out
}

/// The walk through one table: its query by rowid and the tries spent.
struct Walk<'conn> {
    stmt: Statement<'conn>,
    width: usize,
    tries: u32,
}

impl Walk<'_> {
    /// Reads up to `limit` rows from rowid `from` on into `rows`: `Ok` with the rowid to
    /// go on from (`None` at the table's end), or `Err` with the rowid from which a read
    /// failed (the rows before it are kept). A rowid that does not grow (a damaged page
    /// that reads as another) is a failure too, so that the walk always moves on.
    fn batch(
        &mut self,
        from: i64,
        limit: i64,
        rows: &mut Vec<(i64, Vec<Value>)>,
    ) -> Result<Option<i64>, i64> {
        let width = self.width;
        let mut found = self.stmt.query(params![from, limit]).map_err(|_| from)?;
        let mut next = from;
        let mut read = 0;
        while let Some(row) = found.next().map_err(|_| next)? {
            let rowid = match row.get::<_, Value>(0) {
                Ok(Value::Integer(id)) if id >= next => id,
                _ => return Err(next),
            };
            let values = (1..=width)
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|_| next)?;
            rows.push((rowid, values));
            read += 1;
            match rowid.checked_add(1) {
                Some(n) => next = n,
                None => return Ok(None),
            }
        }
        Ok((read == limit).then_some(next))
    }

    /// Whether a read of one row from rowid `at` works: `Ok` with that row's rowid
    /// (`None`: no row from there on).
    fn try_at(&mut self, at: i64) -> Result<Option<i64>, ()> {
        self.tries += 1;
        let mut row = Vec::new();
        match self.batch(at, 1, &mut row) {
            Ok(_) => Ok(row.first().map(|r| r.0)),
            Err(_) => Err(()),
        }
    }

    /// Where reading goes on after a read from rowid `bad` failed: the lowest rowid
    /// found from which a read works, and the first row's rowid there (`None`: no row
    /// after the damage). `None` when no read works after `bad`, or the tries are spent.
    fn past(&mut self, bad: i64) -> Option<(i64, Option<i64>)> {
        let mut step: u64 = 1;
        let mut failed = bad;
        let (mut good, mut first) = loop {
            if self.tries >= TRIES {
                return None;
            }
            let at = bad.checked_add_unsigned(step)?;
            match self.try_at(at) {
                Ok(first) => break (at, first),
                Err(()) => failed = at,
            }
            step = step.checked_mul(2)?;
        };
        // Halfway back, while the tries last: rows between the last rowid that failed
        // and the first that works may still read.
        while failed.abs_diff(good) > 1 && self.tries < TRIES {
            let mid = failed.checked_add_unsigned(failed.abs_diff(good) / 2)?;
            match self.try_at(mid) {
                Ok(f) => (good, first) = (mid, f),
                Err(()) => failed = mid,
            }
        }
        Some((good, first))
    }
}
