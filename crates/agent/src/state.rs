//! The ban list on disk: an SQLite database `bans.db` in the state directory, so that bans
//! survive a restart (even `kill -9`) with their remaining time, and so that
//! `synwatch blocks` can work on them when no agent runs.
//!
//! Times on disk are Unix seconds of the wall clock, since a ban's end must mean the same
//! moment after a reboot; the agent counts in agent time (`clock.rs`), and the store
//! converts with the offset between the two read at each read or write, so that a ban
//! saved after a step of the wall clock still ends when it should. Each change is its own
//! transaction; a batch of bans is one.
//!
//! A ban's key (column `addr`) is the network as people write it: an address alone for
//! a /32 or /128, `ADDR/LEN` for a range ([`synwatch_enforce::net_text`]), so databases
//! from before range bans read as they are; their rows are rewritten once in canonical
//! form (IPv4-mapped IPv6 as IPv4) on opening (schema version 1).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::IpNet;
use rusqlite::types::Value;
use rusqlite::{Connection, params};
use synwatch_enforce::bans::{Offender, Record};
use synwatch_enforce::{net_text, parse_net};

use crate::clock::Offset;

mod salvage;

/// `PRAGMA user_version` once the keys are canonical networks.
const SCHEMA_NETWORKS: i64 = 1;

pub const DB_FILE: &str = "bans.db";

/// The columns of a saved ban, in the order they are read and copied.
const BAN_COLUMNS: [&str; 6] = ["addr", "since", "expires", "reason", "offences", "new_only"];

/// The columns of a remembered offender.
const OFFENDER_COLUMNS: [&str; 3] = ["addr", "offences", "last_until"];

/// `SELECT columns FROM table then`: the queries that read saved rows name their
/// columns from one list, which salvaging a damaged file reads too.
fn select(columns: &[&str], table: &str, then: &str) -> String {
    format!("SELECT {} FROM {table} {then}", columns.join(", "))
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Wall time minus agent time now (`clock::wall_offset`; given by hand in tests).
    offset: fn() -> Offset,
    damage: Damage,
    /// The database file's device and inode when opened: another file at `path` (or
    /// none) means the state directory was removed or replaced behind the agent.
    file: Option<(u64, u64)>,
    /// Whether the database was opened for writing; not when it was only read, because
    /// its file system would take no write ([`Store::open_for_agent`]).
    writable: bool,
}

/// What could not be read of the state: reported in `/healthz` and `/metrics`, since a
/// ban that was not restored is protection lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where an unreadable database was moved at opening.
    pub moved_aside: Option<PathBuf>,
    /// Rows of bans or offenders skipped because they did not read.
    pub rows_skipped: u64,
    /// Saved bans the kernel refused at restore (left out; the others hold).
    pub bans_refused: u64,
    /// Where a damaged database (pages that do not read) was moved once what could be
    /// read of it was copied into a new one: those bans are restored.
    pub recovered_from: Option<PathBuf>,
    /// The stretches of rows of that damaged database that could not be read.
    pub unreadable: Vec<Unreadable>,
}

impl Damage {
    /// What was lost, one sentence each (none when nothing was).
    pub fn reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(aside) = &self.moved_aside {
            why.push(format!(
                "the ban database was unreadable and moved to {}: its bans were not restored",
                aside.display()
            ));
        }
        if let Some(aside) = &self.recovered_from {
            why.push(format!(
                "the ban database was damaged and moved to {}: the bans that could be read of it were restored",
                aside.display()
            ));
        }
        if !self.unreadable.is_empty() {
            let lost: Vec<String> = self.unreadable.iter().map(ToString::to_string).collect();
            why.push(format!(
                "could not read {} of the damaged ban database: those bans were not restored",
                lost.join(", ")
            ));
        }
        if self.rows_skipped > 0 {
            why.push(format!(
                "{} row(s) of the ban database did not read and were skipped",
                self.rows_skipped
            ));
        }
        if self.bans_refused > 0 {
            why.push(format!(
                "the kernel refused {} saved ban(s) at restore: they were not restored",
                self.bans_refused
            ));
        }
        why
    }
}

/// The device and inode of the file at `path`, if there is one.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A stretch of rows of a damaged table that could not be read, between the rowids of
/// the rows read on either side (none: the table's start or end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub table: &'static str,
    pub after: Option<i64>,
    pub before: Option<i64>,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the rows of {}", self.table)?;
        match (self.after, self.before) {
            (Some(a), Some(b)) => write!(
                f,
                " between rowids {a} and {b} (at most {})",
                b.abs_diff(a).saturating_sub(1)
            ),
            (Some(a), None) => write!(f, " after rowid {a}"),
            (None, Some(b)) => write!(f, " before rowid {b}"),
            (None, None) => write!(f, ", all of them"),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, which is created with mode 0700.
    ///
    /// A file that is not a database, a corrupt one, or one whose tables are not
    /// synwatch's (columns missing), is moved aside (`bans.db.corrupt-
    /// UNIXTIME`) with a warning and a new one started: blocking must not stop because the
    /// list of past bans cannot be read.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, crate::clock::wall_offset)
    }

    /// [`Store::open`] with the wall clock's offset from agent time read by `offset`.
    pub fn open_with(dir: &Path, offset: fn() -> Offset) -> Result<Self> {
        create_dir_private(dir)?;
        let path = dir.join(DB_FILE);
        tighten(dir);
        let mut damage = Damage {
            moved_aside: set_aside_what_is_no_file(dir),
            ..Damage::default()
        };
        let conn = match Self::connect(&path) {
            Err(e) if e.moves_aside() => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    "WARNING: the ban database {} is not readable ({e}); moved it to {} and started a new one: the bans it held are not restored",
                    path.display(),
                    aside.display()
                );
                damage.moved_aside = Some(aside);
                Self::connect(&path)
            }
            other => other,
        }
        .with_context(|| format!("cannot open the ban database {}", path.display()))?;
        let mut store = Self {
            conn,
            path,
            offset,
            damage,
            file: None,
            writable: true,
        };
        if let Some(why) = damaged(&store.conn) {
            store.recover(&why)?;
        }
        // Keys left as they were still read (canonical when parsed): a failure here
        // costs nothing restored.
        if let Err(e) = store.canonicalise() {
            tracing::warn!("warning: {}: {e}", store.context("upgrade the keys"));
        }
        store.file = file_id(&store.path);
        Ok(store)
    }

    /// [`Store::open`] for the agent, which must enforce the saved bans even where it
    /// cannot save: a state directory whose file system takes no write (full, or giving
    /// I/O errors) at start is read as it is and the bans it holds are restored; changes
    /// are not saved until [`Store::reopen`] succeeds ([`Store::writable`]). A
    /// directory that is full could otherwise keep the agent from starting, and any
    /// local user who can fill the file system could so turn off its protection.
    pub fn open_for_agent(dir: &Path) -> Result<Self> {
        match Self::open(dir) {
            Err(e) if takes_no_write(&e, dir) => {
                let path = dir.join(DB_FILE);
                let conn = read_saved(&path);
                if conn.is_some() {
                    tracing::error!(
                        "WARNING: {e:#}: the bans saved in it are read as they are and enforced, but no change to them is saved until it can be written (tried again every 5 s)"
                    );
                } else {
                    tracing::error!(
                        "WARNING: {e:#}: no saved ban can be read from it, so none is restored; new bans are enforced, but not saved until it can be written (tried again every 5 s)"
                    );
                }
                let conn = match conn {
                    Some(conn) => conn,
                    // Read-only as the file would be: what is not saved is retried.
                    None => Self::tables(Path::new(":memory:"))
                        .and_then(|c| c.execute_batch("PRAGMA query_only = 1").map(|()| c))
                        .context("cannot set up an empty ban list in memory")?,
                };
                Ok(Self {
                    conn,
                    file: file_id(&path),
                    path,
                    offset: crate::clock::wall_offset,
                    damage: Damage::default(),
                    writable: false,
                })
            }
            other => other,
        }
    }

    /// Whether changes are saved: false while the database could only be read.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether the database file this store writes is no longer the one at its path:
    /// the state directory (or the file) was removed or replaced while the agent ran, so
    /// what it saves would be lost at the next start.
    pub fn detached(&self) -> bool {
        file_id(&self.path) != self.file
    }

    /// Opens the database at this store's path afresh (creating the directory again),
    /// for [`Store::detached`]: the caller saves what it holds into it.
    pub fn reopen(&mut self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/")).to_owned();
        *self = Self::open_with(&dir, self.offset)?;
        Ok(())
    }

    /// Opens `path` and sets its tables up (creating them, adding later columns), and
    /// checks that they have what synwatch reads.
    fn connect(path: &Path) -> Result<Connection, Unsound> {
        let conn = Self::tables(path)?;
        // synwatch makes no triggers: one found (written by hand) could refuse every
        // save or delete, so it goes, and the bans stay.
        let triggers: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in triggers {
            tracing::warn!(
                "warning: removing the trigger '{name}' from the ban database {} (synwatch makes none; edited by hand?)",
                path.display()
            );
            conn.execute_batch(&format!("DROP TRIGGER \"{}\"", name.replace('"', "\"\"")))?;
        }
        for (table, columns) in [("bans", &BAN_COLUMNS[..]), ("offenders", &OFFENDER_COLUMNS)] {
            if let Err(e) = conn.prepare(&select(columns, table, "LIMIT 0")) {
                return Err(Unsound::Schema(e.to_string()));
            }
        }
        Ok(conn)
    }

    /// Opens `path` and sets its tables up (creating them, adding later columns).
    fn tables(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS bans (
                 addr TEXT PRIMARY KEY,
                 since INTEGER NOT NULL,
                 expires INTEGER,
                 reason TEXT NOT NULL,
                 offences INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS offenders (
                 addr TEXT PRIMARY KEY,
                 offences INTEGER NOT NULL,
                 last_until INTEGER NOT NULL
             );",
        )?;
        // Added after the first release: databases from before get the column.
        if conn.prepare("SELECT new_only FROM bans LIMIT 0").is_err() {
            conn.execute_batch("ALTER TABLE bans ADD COLUMN new_only INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(conn)
    }

    /// Rewrites keys saved before range bans in canonical form, once.
    fn canonicalise(&mut self) -> rusqlite::Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version >= SCHEMA_NETWORKS {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for table in ["bans", "offenders"] {
            let keys: Vec<String> = tx
                .prepare(&format!(
                    "SELECT addr FROM {table} WHERE typeof(addr) = 'text'"
                ))?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for key in keys {
                if let Some(net) = parse_net(&key)
                    && net_text(net) != key
                {
                    tx.execute(
                        &format!("UPDATE OR REPLACE {table} SET addr = ?1 WHERE addr = ?2"),
                        params![net_text(net), key],
                    )?;
                }
            }
        }
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_NETWORKS}"))?;
        tx.commit()
    }

    /// Counts saved bans the kernel refused at restore as damage.
    pub fn note_refused(&mut self, n: u64) {
        self.damage.bans_refused += n;
    }

    /// What could not be read since opening.
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    fn context(&self, what: &str) -> String {
        format!("cannot {what} in the ban database {}", self.path.display())
    }

    /// Records bans (new or renewed) and their offenders, in one transaction.
    pub fn save(&mut self, records: &[Record]) -> Result<()> {
        let what = self.context("save bans");
        let off = (self.offset)();
        let tx = self.conn.transaction().context(what.clone())?;
        {
            let mut ban = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO bans (addr, since, expires, reason, offences, new_only)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .context(what.clone())?;
            let mut offender = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO offenders (addr, offences, last_until)
                     VALUES (?1, ?2, ?3)",
                )
                .context(what.clone())?;
            for r in records {
                let addr = net_text(r.net);
                let expires = r.expires.map(|t| off.to_wall(t));
                ban.execute(params![
                    addr,
                    off.to_wall(r.since),
                    expires,
                    r.reason,
                    r.offences,
                    r.new_only
                ])
                .with_context(|| what.clone())?;
                offender
                    .execute(params![addr, r.offences, expires.unwrap_or(i64::MAX)])
                    .with_context(|| what.clone())?;
            }
        }
        tx.commit().context(what)
    }

    /// Forgets bans that ended or were lifted; `forgive` also forgets the offences.
    pub fn delete(&mut self, nets: &[IpNet], forgive: bool) -> Result<()> {
        let what = self.context("delete bans");
        let tx = self.conn.transaction().context(what.clone())?;
        {
            // Prepared once: the LAPI deleting a list, or a list's bans ending together,
            // is hundreds of thousands of rows, and preparing each took tens of
            // microseconds of the pipeline's time.
            let mut ban = tx
                .prepare_cached("DELETE FROM bans WHERE addr = ?1")
                .context(what.clone())?;
            let mut offender = tx
                .prepare_cached("DELETE FROM offenders WHERE addr = ?1")
                .context(what.clone())?;
            for &net in nets {
                let addr = net_text(net);
                ban.execute(params![addr]).with_context(|| what.clone())?;
                if forgive {
                    offender
                        .execute(params![addr])
                        .with_context(|| what.clone())?;
                }
            }
        }
        tx.commit().context(what)
    }

    /// Forgets offenders whose last ban ended before agent time `before`.
    pub fn prune_offenders(&mut self, before: i64) -> Result<()> {
        let before = (self.offset)().to_wall(before);
        self.conn
            .execute(
                "DELETE FROM offenders WHERE last_until < ?1",
                params![before],
            )
            .map(drop)
            .with_context(|| self.context("prune offenders"))
    }

    /// Every saved ban, in agent time; rows that do not parse (edited by hand) are
    /// reported and skipped. A table that stops reading part way (a damaged page) is
    /// read again around the damage ([`Store::recover`]).
    pub fn bans(&mut self) -> Result<Vec<Record>> {
        let rows = self
            .rows(&select(&BAN_COLUMNS, "bans", "ORDER BY since, addr"))
            .with_context(|| self.context("read bans"))?;
        let off = (self.offset)();
        Ok(rows
            .into_iter()
            .filter_map(|row| self.ban_of(row, off))
            .collect())
    }

    /// The rows `query` reads, each column as it is stored; when the file turns out
    /// damaged, what can be read of it is moved into a new database first.
    fn rows(&mut self, query: &str) -> Result<Vec<Vec<Value>>> {
        let read = |conn: &Connection| -> rusqlite::Result<Vec<Vec<Value>>> {
            let mut stmt = conn.prepare(query)?;
            let width = stmt.column_count();
            stmt.query_map([], |row| {
                (0..width).map(|i| row.get::<_, Value>(i)).collect()
            })?
            .collect()
        };
        match read(&self.conn) {
            // Only read (no room to write): the damaged file stays where it is, for a
            // start with room to move aside; what can be read of it is read.
            Err(e) if is_corrupt(&e) && !self.writable => {
                self.salvage_in_memory(&e.to_string())?;
                Ok(read(&self.conn)?)
            }
            Err(e) if is_corrupt(&e) && self.damage.recovered_from.is_none() => {
                self.recover(&e.to_string())?;
                if let Err(e) = self.canonicalise() {
                    tracing::warn!("warning: {}: {e}", self.context("upgrade the keys"));
                }
                Ok(read(&self.conn)?)
            }
            other => Ok(other?),
        }
    }

    /// The ban of one row (`BAN_COLUMNS`, as stored), or `None`, reported and counted,
    /// when it does not read. Only the address and the end decide a ban: the other
    /// columns, unreadable (SQLite keeps any type in any column), fall back to a
    /// default, so that a row edited by hand still blocks.
    fn ban_of(&mut self, row: Vec<Value>, off: Offset) -> Option<Record> {
        let [addr, since, expires, reason, offences, new_only] =
            <[Value; 6]>::try_from(row).ok()?;
        let addr = match addr {
            Value::Text(t) => t,
            Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
            other => format!("{other:?}"),
        };
        let int = |v: Value| match v {
            Value::Integer(i) => Some(i),
            Value::Real(f) if f.is_finite() => Some(f as i64),
            _ => None,
        };
        let expires = match expires {
            Value::Null => None,
            v => {
                let Some(e) = int(v) else {
                    self.damage.rows_skipped += 1;
                    tracing::warn!(
                        "warning: skipping a ban in {}: its end (expires of '{addr}') is not a number (edited by hand?)",
                        self.path.display()
                    );
                    return None;
                };
                Some(e)
            }
        };
        let since = int(since).unwrap_or(0);
        // No backend takes a ban this long: no ban synwatch gave (9223372036854775807,
        // written by hand, made the kernel refuse the whole restore).
        let longest = i64::try_from(synwatch_enforce::LONGEST_BAN_SECS).unwrap_or(i64::MAX);
        if let Some(e) = expires
            && e.saturating_sub(since) > longest
        {
            self.damage.rows_skipped += 1;
            tracing::warn!(
                "warning: skipping the ban of '{addr}' in {}: it would end at {e}, more than 500 years after it began",
                self.path.display()
            );
            return None;
        }
        let Some(net) = parse_net(&addr) else {
            self.damage.rows_skipped += 1;
            tracing::warn!(
                "warning: skipping '{addr}' in {}: not an address or CIDR range",
                self.path.display()
            );
            return None;
        };
        Some(Record {
            net,
            since: off.to_agent(since),
            expires: expires.map(|t| off.to_agent(t)),
            reason: match reason {
                Value::Text(t) => t,
                _ => String::new(),
            },
            offences: int(offences).map_or(1, |n| u32::try_from(n.max(1)).unwrap_or(u32::MAX)),
            new_only: int(new_only).is_some_and(|n| n != 0),
        })
    }

    /// Every remembered offender, in agent time.
    pub fn offenders(&mut self) -> Result<Vec<(IpNet, Offender)>> {
        let rows = self
            .rows(&select(&OFFENDER_COLUMNS, "offenders", ""))
            .with_context(|| self.context("read offenders"))?;
        let off = (self.offset)();
        let mut out = Vec::new();
        // A row that does not read (edited by hand) costs that offender's history only.
        for row in rows {
            use rusqlite::types::FromSql as _;
            let parsed = <[Value; 3]>::try_from(row).ok().and_then(|[a, o, l]| {
                let addr = String::column_result((&a).into()).ok()?;
                let offences = u32::column_result((&o).into()).ok()?;
                let last_until = i64::column_result((&l).into()).ok()?;
                Some((parse_net(&addr)?, offences, last_until))
            });
            let Some((addr, offences, last_until)) = parsed else {
                self.damage.rows_skipped += 1;
                continue;
            };
            out.push((
                addr,
                Offender {
                    offences,
                    last_until: off.to_agent(last_until),
                },
            ));
        }
        Ok(out)
    }

    /// [`Store::recover`] for a database that could only be read: what can be read of it
    /// goes into a read-only database in memory, and the file is left as it is.
    fn salvage_in_memory(&mut self, why: &str) -> Result<()> {
        let bans = salvage::read(&self.conn, "bans", &BAN_COLUMNS);
        let offenders = salvage::read(&self.conn, "offenders", &OFFENDER_COLUMNS);
        let what = self.context("read what is left of bans");
        let mut conn = Self::tables(Path::new(":memory:")).context(what.clone())?;
        let skipped = copy_rows(&mut conn, &bans.rows, &offenders.rows).context(what.clone())?;
        conn.execute_batch("PRAGMA query_only = 1").context(what)?;
        self.conn = conn;
        let unreadable: Vec<_> = bans
            .unreadable
            .into_iter()
            .chain(offenders.unreadable)
            .collect();
        tracing::error!(
            "WARNING: the ban database {} is damaged ({why}) and cannot be moved aside now (its file system takes no write): restored the {} ban(s) that could be read of it",
            self.path.display(),
            bans.rows.len(),
        );
        self.damage.rows_skipped += skipped;
        self.damage.unreadable.extend(unreadable);
        Ok(())
    }

    /// Copies what can be read of the damaged database into a new one, the damaged file
    /// moved aside (`bans.db.corrupt-UNIXTIME`), and reports what could not be read.
    fn recover(&mut self, why: &str) -> Result<()> {
        let bans = salvage::read(&self.conn, "bans", &BAN_COLUMNS);
        let offenders = salvage::read(&self.conn, "offenders", &OFFENDER_COLUMNS);
        // The damaged file is closed before it moves.
        let what = self.context("recover bans");
        let closed = Connection::open_in_memory().context(what.clone())?;
        drop(std::mem::replace(&mut self.conn, closed));
        let aside = match move_aside(&self.path) {
            Ok(aside) => aside,
            Err(e) => {
                // Left in place: the store goes on with the damaged file, not with none.
                if let Ok(conn) = Connection::open(&self.path) {
                    self.conn = conn;
                }
                return Err(e);
            }
        };
        self.conn = Self::connect(&self.path)
            .with_context(|| format!("cannot start a new ban database {}", self.path.display()))?;
        let skipped = copy_rows(&mut self.conn, &bans.rows, &offenders.rows).context(what)?;
        let unreadable: Vec<_> = bans
            .unreadable
            .into_iter()
            .chain(offenders.unreadable)
            .collect();
        let lost: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
        tracing::error!(
            "WARNING: the ban database {} is damaged ({why}); moved it to {} and started a new one with the {} ban(s) and {} offender(s) that could be read{}",
            self.path.display(),
            aside.display(),
            bans.rows.len(),
            offenders.rows.len(),
            if lost.is_empty() {
                String::new()
            } else {
                format!("; could not read {}", lost.join(", "))
            }
        );
        self.damage.rows_skipped += skipped;
        self.damage.recovered_from = Some(aside);
        self.damage.unreadable.extend(unreadable);
        // A new file now stands at the path: the one this store writes.
        self.file = file_id(&self.path);
        Ok(())
    }
}

/// Why a ban database could not be opened.
#[derive(Debug)]
enum Unsound {
    /// SQLite's error: a file that is no database or a corrupt one is moved aside, any
    /// other (a busy or unwritable file) is reported as it is.
    Sqlite(rusqlite::Error),
    /// A sound database whose tables are not synwatch's (a missing column, a `bans`
    /// that is a view): moved aside like a corrupt one.
    Schema(String),
}

impl From<rusqlite::Error> for Unsound {
    fn from(e: rusqlite::Error) -> Self {
        Unsound::Sqlite(e)
    }
}

impl std::fmt::Display for Unsound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsound::Sqlite(e) => e.fmt(f),
            Unsound::Schema(e) => {
                write!(
                    f,
                    "its tables are not those of a synwatch ban database: {e}"
                )
            }
        }
    }
}

impl std::error::Error for Unsound {}

impl Unsound {
    /// Whether the file is not a sound ban database: moved aside, a new one started.
    fn moves_aside(&self) -> bool {
        match self {
            Unsound::Sqlite(e) => {
                matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
                ) || is_schema_error(e)
            }
            Unsound::Schema(_) => true,
        }
    }
}

/// Whether opening the database in `dir` failed because its file system takes no write:
/// no room (blocks or inodes), or an I/O error (SQLite's `FULL` and `IOERR`, or a file
/// that cannot be made where the directory has no room); not a file that is damaged,
/// busy, read-only or not ours to open.
fn takes_no_write(e: &anyhow::Error, dir: &Path) -> bool {
    if no_room(e) {
        return true;
    }
    let code = match e.downcast_ref::<Unsound>() {
        Some(Unsound::Sqlite(e)) => e.sqlite_error_code(),
        _ => None,
    };
    match code {
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure) => true,
        Some(rusqlite::ErrorCode::CannotOpen) => {
            let probe = dir.join(".synwatch-room");
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    false
                }
                Err(e) => is_no_room(&e),
            }
        }
        _ => false,
    }
}

/// Whether `e` (or an error under it) says a file system has no room left: blocks or
/// inodes (`ENOSPC`), or the quota (`EDQUOT`).
pub fn no_room(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(is_no_room)
}

fn is_no_room(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The saved database at `path` opened only to read it, with synwatch's tables; first
/// as SQLite reads a database (its write-ahead log included), else as an immutable file
/// (where the log's shared memory cannot be set up on a full file system). None where
/// neither reads (no file, a damaged one, or tables of another program).
fn read_saved(path: &Path) -> Option<Connection> {
    use rusqlite::OpenFlags;
    let uri: String = path
        .to_str()?
        .chars()
        .map(|c| match c {
            '%' | '?' | '#' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let ways = [
        (path.to_string_lossy().into_owned(), OpenFlags::empty()),
        (
            format!("file:{uri}?immutable=1"),
            OpenFlags::SQLITE_OPEN_URI,
        ),
    ];
    ways.into_iter().find_map(|(name, flags)| {
        let conn = Connection::open_with_flags(
            name,
            flags | OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        let tables = [("bans", &BAN_COLUMNS[..]), ("offenders", &OFFENDER_COLUMNS)];
        tables
            .iter()
            .all(|(table, columns)| {
                // Read, not only prepared: the log is opened at the first read.
                let read = select(columns, table, "LIMIT 1");
                conn.query_row(&format!("SELECT count(*) FROM ({read})"), [], |_| Ok(()))
                    .is_ok()
            })
            .then_some(conn)
    })
}

/// Whether setting the tables up failed on what is in the file (`ALTER TABLE` on a
/// `bans` that is a view, a column that clashes): SQLite's generic error, which a busy,
/// locked, read-only or full file never gives.
fn is_schema_error(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::Unknown))
}

/// Writes rows read from a damaged database (each column as it was stored) into the
/// new one, in one transaction; returns how many its constraints refused (a key twice, a
/// value missing), which are left out.
fn copy_rows(
    conn: &mut Connection,
    bans: &[(i64, Vec<Value>)],
    offenders: &[(i64, Vec<Value>)],
) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut refused = 0;
    for (table, columns, rows) in [
        ("bans", &BAN_COLUMNS[..], bans),
        ("offenders", &OFFENDER_COLUMNS[..], offenders),
    ] {
        let places: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let mut insert = tx.prepare(&format!(
            "INSERT OR IGNORE INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            places.join(", ")
        ))?;
        for (_, row) in rows {
            if insert.execute(rusqlite::params_from_iter(row))? == 0 {
                refused += 1;
            }
        }
    }
    tx.commit()?;
    Ok(refused)
}

/// Moves the ban database at `path` aside (`bans.db.corrupt-UNIXTIME`, beside it) and
/// removes SQLite's files that go with it; returns where it went.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let aside = aside_path(dir, &format!("{DB_FILE}.corrupt"));
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "cannot move the unreadable ban database {} aside",
            path.display()
        )
    })?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{suffix}")));
    }
    Ok(aside)
}

/// Whether SQLite's error says the file is damaged (a page that does not read).
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Why the database behind `conn` is damaged, if it is: SQLite's quick check reads every
/// page of every table and index (a damaged page of the index on `addr` would make each
/// later delete fail, and one of a table would stop a read at the first row on it).
fn damaged(conn: &Connection) -> Option<String> {
    let found: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    match found {
        Ok(lines) if lines == ["ok"] => None,
        Ok(lines) => Some(lines.join("; ")),
        Err(e) if is_corrupt(&e) => Some(e.to_string()),
        Err(e) => {
            tracing::warn!("warning: cannot check the ban database: {e}");
            None
        }
    }
}

/// Where to move a file aside: `STEM-UNIXTIME` in `dir`, or `STEM-UNIXTIME.N` where that
/// is taken (two bad files within one second must not overwrite the first one kept).
fn aside_path(dir: &Path, stem: &str) -> std::path::PathBuf {
    let base = format!("{stem}-{}", crate::clock::unix_now());
    std::iter::once(base.clone())
        .chain((1..).map(|n| format!("{base}.{n}")))
        .map(|name| dir.join(name))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| dir.join(base))
}

/// The ban database and SQLite's files beside it must be regular files: a directory, a
/// FIFO, a device or a symlink (followed, it would have the agent write where someone
/// else chose) in their place would keep the database from opening, and the agent from
/// blocking. Each is moved aside (`NAME.notfile-UNIXTIME`) with a warning, so that a new
/// database starts; returns where the database's own entry went, if it was moved.
fn set_aside_what_is_no_file(dir: &Path) -> Option<std::path::PathBuf> {
    let mut moved = None;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let name = format!("{DB_FILE}{suffix}");
        let path = dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_file() {
            continue;
        }
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        let aside = aside_path(dir, &format!("{name}.notfile"));
        match std::fs::rename(&path, &aside) {
            Ok(()) => {
                tracing::error!(
                    "WARNING: {} is {what}, not the ban database's file; moved it to {} and started a new one",
                    path.display(),
                    aside.display()
                );
                if suffix.is_empty() {
                    moved = Some(aside);
                }
            }
            Err(e) => tracing::error!("cannot move {} ({what}) aside: {e}", path.display()),
        }
    }
    moved
}

/// A state directory other users may write to lets them replace the ban database (or
/// plant a symlink in its place): it is made 0700 where this process owns it, and said
/// either way. So is one that another user (not root) owns, who can do the same and
/// replace the control socket, whatever its mode.
fn tighten(dir: &Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        tracing::error!(
            "WARNING: the state directory {} belongs to user {}, not to the agent's user ({me}): that user can replace the ban database and the control socket `synwatch blocks` talks to; use a directory owned by the agent's user",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 == 0 {
        return;
    }
    let mine = meta.uid() == me;
    if mine && std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_ok() {
        tracing::warn!(
            "warning: the state directory {} was writable by other users (mode {:o}); made it 0700",
            dir.display(),
            meta.mode() & 0o7777
        );
    } else {
        tracing::error!(
            "WARNING: the state directory {} is writable by other users (mode {:o}), who can change the bans it holds: make it 0700 and owned by the agent's user",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
}

/// Creates the state directory readable only by its owner (ban lists and the control
/// socket are not for other users).
pub fn create_dir_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
pub(crate) mod tests {
    use super::*;

    fn record(addr: &str, expires: Option<i64>) -> Record {
        Record {
            net: parse_net(addr).unwrap(),
            since: 100,
            expires,
            reason: "21,22,23,25".into(),
            offences: 2,
            new_only: addr.contains(':'),
        }
    }

    #[test]
    fn a_directory_fifo_or_symlink_in_the_database_s_place_is_moved_aside_and_bans_kept() {
        type Make = fn(&Path);
        let make: [(&str, Make); 3] = [
            ("directory", |p| std::fs::create_dir(p).unwrap()),
            ("fifo", |p| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
            }),
            ("dangling symlink", |p| {
                std::os::unix::fs::symlink("/nonexistent/elsewhere.db", p).unwrap();
            }),
        ];
        for (what, make) in make {
            let dir = tempfile::tempdir().unwrap();
            make(&dir.path().join(DB_FILE));
            // A -wal of the wrong kind too.
            std::fs::create_dir(dir.path().join(format!("{DB_FILE}-wal"))).unwrap();
            let mut s = Store::open(dir.path()).unwrap();
            let aside = s.damage().moved_aside.clone().expect(what);
            assert!(aside.exists() || aside.is_symlink(), "{what}");
            s.save(&[record("203.0.113.9", None)]).unwrap();
            drop(s);
            let mut s = Store::open(dir.path()).unwrap();
            assert_eq!(s.damage().moved_aside, None, "{what}");
            assert_eq!(s.bans().unwrap().len(), 1, "{what}");
        }
    }

    #[test]
    fn a_state_dir_other_users_can_write_is_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let _s = Store::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_file_that_is_no_database_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DB_FILE),
            b"this is not an SQLite database at all, but long enough to look like one's header",
        )
        .unwrap();
        let mut s = Store::open(dir.path()).expect("a new database");
        s.save(&[record("192.0.2.1", Some(3700))]).unwrap();
        assert_eq!(s.bans().unwrap().len(), 1);
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("bans.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the unreadable file is kept for a look");
        assert_eq!(
            s.damage().moved_aside,
            Some(dir.path().join(&aside[0])),
            "reported"
        );
    }

    /// Two unreadable files in a row (within the same second, as a test makes them): both
    /// are kept, neither moved over the other.
    #[test]
    fn unreadable_files_moved_aside_one_after_another_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        for text in [
            "first unreadable file, long enough for a header",
            "second one, as long",
        ] {
            std::fs::write(dir.path().join(DB_FILE), text.repeat(4)).unwrap();
            let s = Store::open(dir.path()).expect("a new database");
            let aside = s.damage().moved_aside.clone().expect("moved aside");
            assert_eq!(std::fs::read_to_string(&aside).unwrap(), text.repeat(4));
            kept.push(aside);
            drop(s);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.path().join(format!("{DB_FILE}{suffix}")));
            }
        }
        assert_ne!(kept[0], kept[1]);
        assert!(kept.iter().all(|p| p.exists()), "{kept:?}");
    }

    #[test]
    fn a_database_whose_tables_are_not_synwatch_s_is_moved_aside_and_a_new_one_started() {
        for schema in [
            // The red team's: a `bans` of one column (read: "no such column: since").
            "CREATE TABLE bans (addr TEXT); INSERT INTO bans VALUES('10.88.0.2');",
            // Offenders without their columns.
            "CREATE TABLE offenders (addr TEXT);",
            // A view where the table should be (ALTER TABLE fails on it).
            "CREATE TABLE t (x TEXT); CREATE VIEW bans AS SELECT x AS addr FROM t;",
            // Keys that are no text, before the keys were made canonical.
            "CREATE TABLE bans (addr PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER,
                 reason TEXT NOT NULL, offences INTEGER NOT NULL);
             INSERT INTO bans VALUES (7, 1, NULL, 'x', 1);",
        ] {
            let dir = tempfile::tempdir().unwrap();
            Connection::open(dir.path().join(DB_FILE))
                .unwrap()
                .execute_batch(schema)
                .unwrap();
            let mut s = Store::open(dir.path()).expect(schema);
            let bans = s.bans().expect(schema);
            assert!(bans.is_empty(), "{schema}: {bans:?}");
            s.offenders().expect(schema);
            if schema.contains("INSERT INTO bans VALUES (7") {
                // Sound tables: kept, the row that does not read skipped.
                assert_eq!(s.damage().moved_aside, None, "{schema}");
                assert_eq!(s.damage().rows_skipped, 1, "{schema}");
            } else {
                assert!(s.damage().moved_aside.is_some(), "{schema}");
            }
            s.save(&[record("192.0.2.1", Some(3700))]).expect(schema);
            assert!(
                s.bans()
                    .unwrap()
                    .iter()
                    .any(|r| r.net == record("192.0.2.1", None).net),
                "{schema}"
            );
        }
    }

    /// A ban database of 3,000 bans (as the agent writes it), one leaf page in the
    /// middle of `tree` (a table or index) then overwritten with garbage; returns the
    /// rowids of the bans.
    pub(crate) fn damaged_database(dir: &Path, tree: &str) -> Vec<(i64, String)> {
        let path = dir.join(DB_FILE);
        let mut s = Store::open_with(dir, Offset::default).unwrap();
        let records: Vec<Record> = (0..3000)
            .map(|i| Record {
                reason: "ports 1,2,3,4 from somewhere, a long reason to fill pages".into(),
                ..record(&format!("10.98.{}.{}", i / 256, i % 256), None)
            })
            .collect();
        s.save(&records).unwrap();
        let rowids: Vec<(i64, String)> = s
            .conn
            .prepare("SELECT rowid, addr FROM bans ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        s.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
            .unwrap();
        let page_size = 4096;
        let leaves: Vec<u64> = s
            .conn
            .prepare(
                "SELECT pageno FROM dbstat WHERE name = ?1 AND pagetype = 'leaf' ORDER BY pageno",
            )
            .unwrap()
            .query_map([tree], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(leaves.len() > 10, "{tree}: {leaves:?}");
        let page = leaves[leaves.len() / 2];
        drop(s);
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::{Seek as _, Write as _};
        file.seek(std::io::SeekFrom::Start(page_size * (page - 1)))
            .unwrap();
        file.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1024))
            .unwrap();
        rowids
    }

    #[test]
    fn a_damaged_page_costs_its_own_bans_only_and_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let saved = damaged_database(dir.path(), "bans");
        let mut s = Store::open_with(dir.path(), Offset::default).expect("the readable part");
        let bans = s.bans().expect("the readable bans");
        let damage = s.damage().clone();
        assert!(
            (2900..3000).contains(&bans.len()),
            "{} of 3000 restored; {damage:?}",
            bans.len()
        );
        // In the order of a sound file: by start, then key.
        let order: Vec<(i64, String)> = bans.iter().map(|r| (r.since, net_text(r.net))).collect();
        assert!(order.is_sorted());
        // What is missing is one stretch of rowids, the one reported.
        let [lost] = &damage.unreadable[..] else {
            panic!("{damage:?}")
        };
        let (after, before) = (lost.after.unwrap(), lost.before.unwrap());
        let read: std::collections::HashSet<IpNet> = bans.iter().map(|r| r.net).collect();
        for (rowid, addr) in &saved {
            let inside = *rowid > after && *rowid < before;
            assert_eq!(
                read.contains(&parse_net(addr).unwrap()),
                !inside,
                "rowid {rowid} ({addr}); {lost}"
            );
        }
        assert_eq!(lost.table, "bans");
        assert_eq!(
            saved.len() - bans.len(),
            usize::try_from(before - after - 1).unwrap()
        );
        // The damaged file was moved aside and a new one written with what was read.
        let aside = damage.recovered_from.clone().expect("moved aside");
        assert!(aside.exists(), "{aside:?}");
        assert_eq!(damage.moved_aside, None, "its bans were restored");
        assert_eq!(s.offenders().unwrap().len(), 3000, "their table is sound");
        // Writes work on the new file, and a start after reads it as sound.
        s.delete(&[bans[0].net], true).unwrap();
        s.save(&[record("192.0.2.1", Some(3700))]).unwrap();
        drop(s);
        let mut s = Store::open_with(dir.path(), Offset::default).unwrap();
        assert_eq!(s.bans().unwrap().len(), bans.len());
        assert_eq!(*s.damage(), Damage::default());
    }

    /// A damaged page of the index on the key: every ban reads (by the table), but each
    /// delete by key would fail; the file is replaced with all of them.
    #[test]
    fn a_damaged_index_page_is_found_at_opening_and_the_file_replaced() {
        let dir = tempfile::tempdir().unwrap();
        damaged_database(dir.path(), "sqlite_autoindex_bans_1");
        let mut s = Store::open_with(dir.path(), Offset::default).expect("a sound copy");
        let bans = s.bans().unwrap();
        assert_eq!(bans.len(), 3000);
        assert!(s.damage().recovered_from.is_some(), "{:?}", s.damage());
        assert_eq!(s.damage().unreadable, []);
        let nets: Vec<IpNet> = bans.iter().map(|r| r.net).collect();
        s.delete(&nets, true).expect("deletes by key work");
        assert_eq!(s.bans().unwrap(), []);
    }

    #[test]
    fn a_ban_no_backend_takes_is_skipped_and_the_others_restored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_with(dir.path(), Offset::default).unwrap();
        s.save(&[record("192.0.2.1", Some(3700))]).unwrap();
        s.conn
            .execute_batch(
                "INSERT INTO bans VALUES ('192.0.2.9', 100, 9223372036854775807, 'x', 1, 0);
                 INSERT INTO bans VALUES ('192.0.2.8', -9223372036854775808, 100, 'x', 1, 0);",
            )
            .unwrap();
        let bans = s.bans().expect("the others");
        assert_eq!(bans, vec![record("192.0.2.1", Some(3700))]);
        assert_eq!(s.damage().rows_skipped, 2);
    }

    #[test]
    fn triggers_written_into_the_database_are_removed_and_the_bans_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[record("192.0.2.1", Some(3700))]).unwrap();
        s.conn
            .execute_batch(
                "CREATE TRIGGER \"no \"\"saves\"\"\" BEFORE INSERT ON bans BEGIN SELECT RAISE(ABORT, 'no'); END;
                 CREATE TRIGGER nodeletes BEFORE DELETE ON bans BEGIN SELECT RAISE(ABORT, 'no'); END;",
            )
            .unwrap();
        assert!(s.save(&[record("192.0.2.2", Some(3700))]).is_err());
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[record("192.0.2.2", Some(3700))]).unwrap();
        s.delete(&[parse_net("192.0.2.2").unwrap()], true).unwrap();
        assert_eq!(s.bans().unwrap(), vec![record("192.0.2.1", Some(3700))]);
        assert_eq!(s.damage().moved_aside, None);
    }

    #[test]
    fn a_row_that_does_not_read_is_skipped_and_the_others_restored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[record("192.0.2.1", Some(3700))]).unwrap();
        // Only the address and the end decide a ban: a row whose other columns do not
        // read (edited by hand) still blocks, with defaults for them; one whose end does
        // not read is skipped.
        s.conn
            .execute_batch(
                "INSERT INTO bans (addr, since, expires, reason, offences) VALUES ('192.0.2.2', 'yesterday', NULL, X'00', 1);
                 INSERT INTO bans (addr, since, expires, reason, offences) VALUES ('192.0.2.3', 0, 'soon', 'x', 1);
                 INSERT INTO bans (addr, since, expires, reason, offences) VALUES ('192.0.2.4', 7, 3700.5, 'x', 9223372036854775807);
                 INSERT INTO offenders (addr, offences, last_until) VALUES ('192.0.2.2', 'many', 0);",
            )
            .unwrap();
        let bans = s.bans().expect("the readable rows");
        let kept = |addr: &str, since, expires, offences| Record {
            since,
            reason: if addr == "192.0.2.2" { "" } else { "x" }.into(),
            offences,
            new_only: false,
            ..record(addr, expires)
        };
        assert_eq!(
            bans,
            // In SQLite's order of `since`: numbers, then text.
            vec![
                kept("192.0.2.4", 7, Some(3700), u32::MAX),
                record("192.0.2.1", Some(3700)),
                kept("192.0.2.2", 0, None, 1),
            ]
        );
        assert_eq!(s.offenders().expect("the readable rows").len(), 1);
        assert_eq!(s.damage().rows_skipped, 2, "one ban, one offender");
        assert_eq!(s.damage().moved_aside, None);
    }

    #[test]
    fn bans_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let mut s = Store::open(&state).unwrap();
            s.save(&[record("192.0.2.1", Some(3700)), record("2001:db8::1", None)])
                .unwrap();
            s.save(&[record("192.0.2.1", Some(9999))]).unwrap();
        }
        let mut s = Store::open(&state).unwrap();
        let mut bans = s.bans().unwrap();
        bans.sort_by_key(|r| r.net);
        assert_eq!(
            bans,
            vec![record("192.0.2.1", Some(9999)), record("2001:db8::1", None)]
        );
        assert_eq!(s.offenders().unwrap().len(), 2);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn times_are_saved_in_wall_time_and_read_in_agent_time() {
        let dir = tempfile::tempdir().unwrap();
        // The wall clock was set an hour ahead since the agent started.
        let mut s = Store::open_with(dir.path(), || Offset { secs: 3600 }).unwrap();
        s.save(&[record("192.0.2.1", Some(3700)), record("192.0.2.2", None)])
            .unwrap();
        let on_disk: Vec<(i64, Option<i64>)> = s
            .conn
            .prepare("SELECT since, expires FROM bans ORDER BY addr")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(on_disk, [(3700, Some(7300)), (3700, None)]);
        let mut bans = s.bans().unwrap();
        bans.sort_by_key(|r| r.net);
        assert_eq!(
            bans,
            [record("192.0.2.1", Some(3700)), record("192.0.2.2", None)]
        );
        let mut offenders = s.offenders().unwrap();
        offenders.sort_by_key(|o| o.0);
        let until: Vec<i64> = offenders.iter().map(|o| o.1.last_until).collect();
        assert_eq!(until, [3700, i64::MAX], "never stays never");
        // Pruning compares in the same frame: the offender whose ban ended at 3700 of
        // agent time (7300 on the wall) goes with anything that ended before 3701.
        s.prune_offenders(3700).unwrap();
        assert_eq!(s.offenders().unwrap().len(), 2);
        s.prune_offenders(3701).unwrap();
        assert_eq!(s.offenders().unwrap().len(), 1);
        // Read by an agent whose clocks agree (after a reboot): the same wall times.
        drop(s);
        let mut s = Store::open_with(dir.path(), Offset::default).unwrap();
        let expires: Vec<Option<i64>> = s.bans().unwrap().iter().map(|r| r.expires).collect();
        assert!(expires.contains(&Some(7300)), "{expires:?}");
    }

    #[test]
    fn a_database_removed_or_replaced_behind_the_store_is_told_and_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut s = Store::open(&state).unwrap();
        s.save(&[record("192.0.2.1", Some(200))]).unwrap();
        assert!(!s.detached());
        std::fs::remove_dir_all(&state).unwrap();
        assert!(s.detached(), "the directory is gone");
        s.reopen().unwrap();
        assert!(!s.detached());
        assert!(s.bans().unwrap().is_empty(), "a new, empty database");
        s.save(&[record("192.0.2.2", Some(200))]).unwrap();
        // Another file put in its place is not the one the store writes either.
        std::fs::rename(state.join(DB_FILE), dir.path().join("elsewhere.db")).unwrap();
        std::fs::copy(dir.path().join("elsewhere.db"), state.join(DB_FILE)).unwrap();
        assert!(s.detached(), "replaced");
        s.reopen().unwrap();
        assert_eq!(s.bans().unwrap(), [record("192.0.2.2", Some(200))]);
        assert!(!s.detached());
    }

    #[test]
    fn deleting_keeps_offences_unless_forgiven() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[
            record("192.0.2.1", Some(200)),
            record("192.0.2.2", Some(200)),
        ])
        .unwrap();
        s.delete(&[parse_net("192.0.2.1").unwrap()], false).unwrap();
        s.delete(&[parse_net("192.0.2.2").unwrap()], true).unwrap();
        assert!(s.bans().unwrap().is_empty());
        let offenders = s.offenders().unwrap();
        assert_eq!(offenders.len(), 1);
        assert_eq!(offenders[0].1.offences, 2);
        s.prune_offenders(201).unwrap();
        assert!(s.offenders().unwrap().is_empty());
    }

    #[test]
    fn ranges_are_kept_and_old_keys_are_made_canonical() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A database of before range bans, with a key written as IPv4-mapped IPv6.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE bans (addr TEXT PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER,
                     reason TEXT NOT NULL, offences INTEGER NOT NULL);
                 CREATE TABLE offenders (addr TEXT PRIMARY KEY, offences INTEGER NOT NULL,
                     last_until INTEGER NOT NULL);
                 INSERT INTO bans VALUES ('::ffff:192.0.2.9', 1, NULL, 'manual', 1);
                 INSERT INTO bans VALUES ('2001:db8::1', 1, NULL, 'manual', 1);
                 INSERT INTO offenders VALUES ('::ffff:192.0.2.9', 1, 9);",
            )
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[
            record("2001:db8:1::/48", None),
            record("198.51.100.0/24", Some(500)),
        ])
        .unwrap();
        let mut nets: Vec<String> = s.bans().unwrap().iter().map(|r| net_text(r.net)).collect();
        nets.sort();
        assert_eq!(
            nets,
            [
                "192.0.2.9",
                "198.51.100.0/24",
                "2001:db8:1::/48",
                "2001:db8::1"
            ]
        );
        // Deleting by network finds the migrated row.
        s.delete(&[parse_net("::ffff:192.0.2.9").unwrap()], true)
            .unwrap();
        s.delete(&[parse_net("198.51.100.0/24").unwrap()], true)
            .unwrap();
        assert_eq!(s.bans().unwrap().len(), 2);
        assert_eq!(s.offenders().unwrap().len(), 1, "the /48 still counts");
    }
}
