//! The session store: SQLite in the data directory (`sessions.sqlite`).
//!
//! Two tables:
//!
//! * `sessions(client_id BLOB PRIMARY KEY, last_seq, count, first_seen_us,
//!   last_seen_us, floor)`: one row per client (see
//!   [`Session`](crate::sessions::Session));
//! * `checkpoint(id = 1, log_offset, replay_from, written_us)`: the log
//!   offset the rows cover (every record below it is counted in them) and
//!   the oldest offset a duplicate window still needed.
//!
//! A checkpoint writes the changed rows, deletes the rows of the sessions
//! forgotten since the last one (none of their records is within the dedup
//! horizon any more), and writes the new offsets, in one transaction, so
//! the rows and the offset always agree. The hub only checkpoints offsets
//! that are durable in the log.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::sessions::{ClientId, SessionRow};

/// A failure of the session store.
#[derive(Debug, thiserror::Error)]
#[error("session store ({op}): {source}")]
pub struct StoreError {
    op: &'static str,
    #[source]
    source: rusqlite::Error,
}

fn err(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError { op, source }
}

/// The last checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Records below this offset are counted in the rows.
    pub log_offset: u64,
    /// Restart replay starts here (windows are rebuilt from it).
    pub replay_from: u64,
}

/// The open store.
pub struct Store {
    conn: Connection,
}

// SQLite keeps integers as i64; u64 values are stored bit-cast.
fn to_sql(v: u64) -> i64 {
    v as i64
}
fn from_sql(v: i64) -> u64 {
    v as u64
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS sessions (
                 client_id     BLOB PRIMARY KEY NOT NULL,
                 last_seq      INTEGER NOT NULL,
                 count         INTEGER NOT NULL,
                 first_seen_us INTEGER NOT NULL,
                 last_seen_us  INTEGER NOT NULL,
                 floor         INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS checkpoint (
                 id          INTEGER PRIMARY KEY CHECK (id = 1),
                 log_offset  INTEGER NOT NULL,
                 replay_from INTEGER NOT NULL,
                 written_us  INTEGER NOT NULL
             );",
        )
        .map_err(err("create schema"))?;
        Ok(Store { conn })
    }

    /// The last checkpoint (zeros when none was written).
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT log_offset, replay_from FROM checkpoint WHERE id = 1",
                [],
                |r| {
                    Ok(Checkpoint {
                        log_offset: from_sql(r.get(0)?),
                        replay_from: from_sql(r.get(1)?),
                    })
                },
            )
            .optional()
            .map_err(err("read checkpoint"))?
            .unwrap_or_default())
    }

    /// Every stored session.
    pub fn sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT client_id, last_seq, count, first_seen_us, last_seen_us, floor FROM sessions")
            .map_err(err("read sessions"))?;
        let rows = st
            .query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                let mut client_id = [0u8; 16];
                if id.len() == 16 {
                    client_id.copy_from_slice(&id);
                }
                Ok((
                    id.len(),
                    SessionRow {
                        client_id,
                        last_seq: from_sql(r.get(1)?),
                        count: from_sql(r.get(2)?),
                        first_seen_us: from_sql(r.get(3)?),
                        last_seen_us: from_sql(r.get(4)?),
                        floor: from_sql(r.get(5)?),
                    },
                ))
            })
            .map_err(err("read sessions"))?;
        let mut out = Vec::new();
        for r in rows {
            let (len, row) = r.map_err(err("read sessions"))?;
            if len == 16 {
                out.push(row);
            } else {
                tracing::warn!(len, "session row with a bad client id ignored");
            }
        }
        Ok(out)
    }

    /// Deletes the rows of `forgotten`, writes `rows` and the new
    /// checkpoint, in one transaction. A client should be in one list at
    /// most (the caller coalesces); if it is in both, the row is written.
    pub fn write_checkpoint(
        &mut self,
        rows: &[SessionRow],
        forgotten: &[ClientId],
        ck: Checkpoint,
        now_us: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(err("begin checkpoint"))?;
        {
            let mut st = tx
                .prepare_cached("DELETE FROM sessions WHERE client_id = ?1")
                .map_err(err("delete sessions"))?;
            for id in forgotten {
                st.execute(params![&id[..]])
                    .map_err(err("delete sessions"))?;
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO sessions (client_id, last_seq, count, first_seen_us, last_seen_us, floor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(client_id) DO UPDATE SET
                        last_seq = excluded.last_seq, count = excluded.count,
                        first_seen_us = excluded.first_seen_us, last_seen_us = excluded.last_seen_us,
                        floor = excluded.floor",
                )
                .map_err(err("write sessions"))?;
            for r in rows {
                st.execute(params![
                    &r.client_id[..],
                    to_sql(r.last_seq),
                    to_sql(r.count),
                    to_sql(r.first_seen_us),
                    to_sql(r.last_seen_us),
                    to_sql(r.floor)
                ])
                .map_err(err("write sessions"))?;
            }
            tx.execute(
                "INSERT INTO checkpoint (id, log_offset, replay_from, written_us) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET log_offset = excluded.log_offset,
                    replay_from = excluded.replay_from, written_us = excluded.written_us",
                params![to_sql(ck.log_offset), to_sql(ck.replay_from), to_sql(now_us)],
            )
            .map_err(err("write checkpoint"))?;
        }
        tx.commit().map_err(err("commit checkpoint"))
    }

    /// Forgets every session and the checkpoint (the log is then replayed
    /// from its start).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("DELETE FROM sessions; DELETE FROM checkpoint;")
            .map_err(err("reset"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_in_real_sqlite() {
        let dir = std::env::temp_dir().join(format!("pinion-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sqlite");
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Checkpoint::default());
        let row = |b: u8, n: u64| SessionRow {
            client_id: [b; 16],
            last_seq: u64::MAX - n,
            count: n,
            first_seen_us: 1,
            last_seen_us: 2,
            floor: 3,
        };
        s.write_checkpoint(
            &[row(1, 5), row(2, 6), row(3, 1)],
            &[],
            Checkpoint {
                log_offset: 11,
                replay_from: 4,
            },
            9,
        )
        .unwrap();
        // Client 3 forgotten, client 4 never written: both deletes are
        // fine; client 2's row is untouched.
        s.write_checkpoint(
            &[row(1, 7)],
            &[[3; 16], [4; 16]],
            Checkpoint {
                log_offset: 12,
                replay_from: 5,
            },
            10,
        )
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.checkpoint().unwrap(),
            Checkpoint {
                log_offset: 12,
                replay_from: 5
            }
        );
        let mut rows = s.sessions().unwrap();
        rows.sort_by_key(|r| r.client_id);
        assert_eq!(rows, vec![row(1, 7), row(2, 6)]);
        // In both lists: written (deletes go first).
        let mut s = s;
        let ck = Checkpoint {
            log_offset: 13,
            replay_from: 5,
        };
        s.write_checkpoint(&[row(5, 1)], &[[5; 16], [1; 16]], ck, 11)
            .unwrap();
        let mut rows = s.sessions().unwrap();
        rows.sort_by_key(|r| r.client_id);
        assert_eq!(rows, vec![row(2, 6), row(5, 1)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
