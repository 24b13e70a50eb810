//! The ban list on disk: an SQLite database `bans.db` in the state directory, so that bans
//! survive a restart (even `kill -9`) with their remaining time, and so that
//! `synwatch blocks` can work on them when no agent runs.
//!
//! Times are Unix seconds of the wall clock, since a ban's end must mean the same moment
//! after a reboot. Each change is its own transaction; a batch of bans is one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use synwatch_enforce::bans::{Offender, Record};

pub const DB_FILE: &str = "bans.db";

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, which is created with mode 0700.
    pub fn open(dir: &Path) -> Result<Self> {
        create_dir_private(dir)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the ban database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .context("cannot configure the ban database")?;
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
        )
        .with_context(|| format!("cannot set up the ban database {}", path.display()))?;
        // Added after the first release: databases from before get the column.
        if conn.prepare("SELECT new_only FROM bans LIMIT 0").is_err() {
            conn.execute_batch("ALTER TABLE bans ADD COLUMN new_only INTEGER NOT NULL DEFAULT 0")
                .with_context(|| format!("cannot upgrade the ban database {}", path.display()))?;
        }
        Ok(Self { conn, path })
    }

    fn context(&self, what: &str) -> String {
        format!("cannot {what} in the ban database {}", self.path.display())
    }

    /// Records bans (new or renewed) and their offenders, in one transaction.
    pub fn save(&mut self, records: &[Record]) -> Result<()> {
        let what = self.context("save bans");
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
                let addr = r.addr.to_string();
                ban.execute(params![
                    addr, r.since, r.expires, r.reason, r.offences, r.new_only
                ])
                .context(what.clone())?;
                offender
                    .execute(params![addr, r.offences, r.expires.unwrap_or(i64::MAX)])
                    .context(what.clone())?;
            }
        }
        tx.commit().context(what)
    }

    /// Forgets bans that ended or were lifted; `forgive` also forgets the offences.
    pub fn delete(&mut self, addrs: &[IpAddr], forgive: bool) -> Result<()> {
        let what = self.context("delete bans");
        let tx = self.conn.transaction().context(what.clone())?;
        for addr in addrs {
            let addr = addr.to_string();
            tx.execute("DELETE FROM bans WHERE addr = ?1", params![addr])
                .context(what.clone())?;
            if forgive {
                tx.execute("DELETE FROM offenders WHERE addr = ?1", params![addr])
                    .context(what.clone())?;
            }
        }
        tx.commit().context(what)
    }

    /// Forgets offenders whose last ban ended before `before`.
    pub fn prune_offenders(&mut self, before: i64) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM offenders WHERE last_until < ?1",
                params![before],
            )
            .map(drop)
            .with_context(|| self.context("prune offenders"))
    }

    /// Every saved ban; rows that do not parse (edited by hand) are reported and skipped.
    pub fn bans(&self) -> Result<Vec<Record>> {
        let what = self.context("read bans");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT addr, since, expires, reason, offences, new_only FROM bans ORDER BY since, addr",
            )
            .context(what.clone())?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, bool>(5)?,
                ))
            })
            .context(what.clone())?;
        let mut out = Vec::new();
        for row in rows {
            let (addr, since, expires, reason, offences, new_only) = row.context(what.clone())?;
            match addr.parse() {
                Ok(addr) => out.push(Record {
                    addr,
                    since,
                    expires,
                    reason,
                    offences,
                    new_only,
                }),
                Err(_) => eprintln!(
                    "synwatch: warning: skipping '{addr}' in {}: not an address",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    pub fn offenders(&self) -> Result<Vec<(IpAddr, Offender)>> {
        let what = self.context("read offenders");
        let mut stmt = self
            .conn
            .prepare("SELECT addr, offences, last_until FROM offenders")
            .context(what.clone())?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .context(what.clone())?;
        let mut out = Vec::new();
        for row in rows {
            let (addr, offences, last_until) = row.context(what.clone())?;
            if let Ok(addr) = addr.parse() {
                out.push((
                    addr,
                    Offender {
                        offences,
                        last_until,
                    },
                ));
            }
        }
        Ok(out)
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
mod tests {
    use super::*;

    fn record(addr: &str, expires: Option<i64>) -> Record {
        Record {
            addr: addr.parse().unwrap(),
            since: 100,
            expires,
            reason: "21,22,23,25".into(),
            offences: 2,
            new_only: addr.contains(':'),
        }
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
        let s = Store::open(&state).unwrap();
        let mut bans = s.bans().unwrap();
        bans.sort_by_key(|r| r.addr);
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
    fn deleting_keeps_offences_unless_forgiven() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save(&[
            record("192.0.2.1", Some(200)),
            record("192.0.2.2", Some(200)),
        ])
        .unwrap();
        s.delete(&["192.0.2.1".parse().unwrap()], false).unwrap();
        s.delete(&["192.0.2.2".parse().unwrap()], true).unwrap();
        assert!(s.bans().unwrap().is_empty());
        let offenders = s.offenders().unwrap();
        assert_eq!(offenders.len(), 1);
        assert_eq!(offenders[0].1.offences, 2);
        s.prune_offenders(201).unwrap();
        assert!(s.offenders().unwrap().is_empty());
    }
}
