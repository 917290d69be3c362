//! A model-based property test of the log store with batch entries: random
//! appends (blank entries and batches of 1–4 messages, one journal record
//! each), truncations of the uncommitted tail, commits, purges (inside the
//! log, and past its end) and reopens, checked after every step against a
//! plain model: the entries read back, the log state, and the offset of
//! every entry (offsets continue across truncations and resets exactly as
//! the records in the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::EntryPayload;
use pinion_cluster::{log_id, Batch, Entry, LogId, LogStore, Publish};
use pinion_journal::JournalOptions;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Entries of these sizes (0: a blank entry, k: a batch of k messages).
    Append(Vec<u8>),
    /// A new term for later appends.
    NewTerm,
    /// Truncate this many entries from the end (never committed ones).
    Truncate(u8),
    /// Commit up to this fraction (of 255) of the log.
    Commit(u8),
    /// Purge up to this fraction (of 255) of the committed entries.
    Purge(u8),
    /// Purge everything (past the last entry: the store resets).
    PurgeAll,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u8..=4, 1..4).prop_map(Op::Append),
        1 => Just(Op::NewTerm),
        2 => (1u8..4).prop_map(Op::Truncate),
        2 => any::<u8>().prop_map(Op::Commit),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::PurgeAll),
        1 => Just(Op::Reopen),
    ]
}

/// One entry of the model: its term and size (0 = blank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct M {
    term: u64,
    size: u8,
    offset: u64,
}

#[derive(Debug, Default)]
struct Model {
    /// Index → entry, for every entry the store holds (purged ones too,
    /// until a reset).
    entries: BTreeMap<u64, M>,
    /// The index of the next entry.
    next_index: u64,
    /// The offset of the next record.
    next_offset: u64,
    term: u64,
    committed: Option<u64>,
    purged: Option<LogId>,
}

impl Model {
    fn records(size: u8) -> u64 {
        u64::from(size.max(1))
    }
    fn last(&self) -> Option<LogId> {
        self.entries
            .iter()
            .next_back()
            .map(|(i, m)| log_id(m.term, *i))
            .or(self.purged)
    }
}

fn seq(index: u64, j: usize) -> u64 {
    index * 10 + j as u64
}

fn entry(index: u64, term: u64, size: u8) -> Entry {
    let payload = if size == 0 {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(Batch::new(
            (0..usize::from(size))
                .map(|j| Publish {
                    timestamp_us: seq(index, j),
                    client_id: [size; 16],
                    seq: seq(index, j),
                    topic: Bytes::from_static(b"t"),
                    payload: Bytes::from(format!("{index}/{j}/{term}")),
                })
                .collect(),
        ))
    };
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

/// What an entry read back says: (index, term, size, seqs and payloads).
fn shape(e: &Entry) -> (u64, u64, u8, Vec<(u64, Bytes)>) {
    match &e.payload {
        EntryPayload::Normal(b) => (
            e.log_id.index,
            e.log_id.leader_id.term,
            b.messages.len() as u8,
            b.messages
                .iter()
                .map(|m| (m.seq, m.payload.clone()))
                .collect(),
        ),
        _ => (e.log_id.index, e.log_id.leader_id.term, 0, Vec::new()),
    }
}

fn open(path: &Path) -> LogStore {
    // A reopened store waits for the previous I/O thread to let go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match LogStore::open(path, JournalOptions::default()) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

async fn check(log: &mut LogStore, m: &Model) {
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, m.purged, "purged");
    assert_eq!(st.last_log_id, m.last(), "last log id");
    let got: Vec<_> = log
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(shape)
        .collect();
    let want: Vec<_> = m
        .entries
        .iter()
        .filter(|(i, _)| m.purged.is_none_or(|p| **i > p.index))
        .map(|(i, e)| shape(&entry(*i, e.term, e.size)))
        .collect();
    assert_eq!(got, want, "entries");
    let offsets = log.offsets();
    for (i, e) in &m.entries {
        assert_eq!(offsets.start(*i), Some(e.offset), "offset of entry {i}");
    }
    assert_eq!(offsets.start(m.next_index), None);
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory (removed when dropped), the log's path in it, and a
/// runtime to drive the store.
fn scratch(name: &str) -> (Dir, PathBuf, tokio::runtime::Runtime) {
    let dir =
        Dir(std::env::temp_dir().join(format!("pinion-cluster-{name}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("pinion.log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (dir, path, rt)
}

fn run(ops: Vec<Op>, case: u64) {
    let (_dir, path, rt) = scratch(&format!("model-{case}"));
    rt.block_on(async {
        let mut log = open(&path);
        let mut m = Model {
            term: 1,
            ..Model::default()
        };
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let mut batch = Vec::new();
                    for size in sizes {
                        let i = m.next_index;
                        batch.push(entry(i, m.term, size));
                        m.entries.insert(
                            i,
                            M {
                                term: m.term,
                                size,
                                offset: m.next_offset,
                            },
                        );
                        m.next_index += 1;
                        m.next_offset += Model::records(size);
                    }
                    log.blocking_append(batch).await.unwrap();
                }
                Op::NewTerm => m.term += 1,
                Op::Truncate(n) => {
                    let floor = m
                        .committed
                        .max(m.purged.map(|p| p.index))
                        .map_or(0, |c| c + 1);
                    let at = m.next_index.saturating_sub(u64::from(n)).max(floor);
                    let Some(e) = m.entries.get(&at).copied() else {
                        continue;
                    };
                    log.truncate(log_id(e.term, at)).await.unwrap();
                    m.entries.split_off(&at);
                    m.next_index = at;
                    m.next_offset = e.offset;
                }
                Op::Commit(f) => {
                    let Some((&last, _)) = m.entries.iter().next_back() else {
                        continue;
                    };
                    let first = *m.entries.keys().next().unwrap();
                    let to = first + (last - first) * u64::from(f) / 255;
                    if m.committed.is_some_and(|c| c >= to) {
                        continue;
                    }
                    let e = m.entries[&to];
                    log.save_committed(Some(log_id(e.term, to))).await.unwrap();
                    m.committed = Some(to);
                }
                Op::Purge(f) => {
                    let (Some(c), Some(&first)) = (m.committed, m.entries.keys().next()) else {
                        continue;
                    };
                    if c < first {
                        continue;
                    }
                    let to = first + (c - first) * u64::from(f) / 255;
                    if m.purged.is_some_and(|p| p.index >= to) || to + 1 >= m.next_index {
                        continue;
                    }
                    let id = log_id(m.entries[&to].term, to);
                    log.purge(id).await.unwrap();
                    m.purged = Some(id);
                }
                Op::PurgeAll => {
                    // Everything committed first (a snapshot covers it).
                    let Some(last) = m.last() else { continue };
                    if m.entries.is_empty() {
                        continue;
                    }
                    log.save_committed(Some(last)).await.unwrap();
                    log.purge(last).await.unwrap();
                    m.committed = Some(last.index);
                    m.purged = Some(last);
                    m.entries.clear();
                }
                Op::Reopen => {
                    drop(log);
                    log = open(&path);
                    // The header's committed position is a lower bound of
                    // what was reported committed, never past it.
                    if let Some(c) = log.committed() {
                        assert!(
                            m.committed.is_some_and(|mc| c.index <= mc),
                            "header says {c} committed, the model {:?}",
                            m.committed
                        );
                    }
                }
            }
            check(&mut log, &m).await;
        }
        drop(log);
    });
}

/// `save_committed` sends the I/O thread nothing: the position goes into
/// the header with the next flush of appends, and only once its entry is
/// written.
#[test]
fn committed_position_goes_to_the_header_with_the_next_append() {
    let (_dir, path, rt) = scratch("committed");
    rt.block_on(async {
        let mut log = open(&path);
        log.blocking_append((1..=3).map(|i| entry(i, 1, 1)))
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)));
        // A commit alone costs no write: the header does not have it yet.
        drop(log);
        let mut log = open(&path);
        assert_eq!(log.committed(), None);
        // With the next append it does.
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        log.blocking_append([entry(4, 1, 1)]).await.unwrap();
        drop(log);
        let mut log = open(&path);
        assert_eq!(log.committed(), Some(log_id(1, 2)));
        // A position past what the flush wrote waits: entry 6 is not in
        // the file when entry 5 is flushed.
        log.save_committed(Some(log_id(1, 6))).await.unwrap();
        log.blocking_append([entry(5, 1, 1)]).await.unwrap();
        drop(log);
        let mut log = open(&path);
        assert_eq!(log.committed(), Some(log_id(1, 2)));
        log.save_committed(Some(log_id(1, 6))).await.unwrap();
        log.blocking_append([entry(6, 1, 2)]).await.unwrap();
        drop(log);
        let log = open(&path);
        assert_eq!(log.committed(), Some(log_id(1, 6)));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_store_with_batches_matches_the_model(ops in prop::collection::vec(op(), 1..40), case in any::<u64>()) {
        run(ops, case);
    }
}
