//! Batch entries in the journal: one record per message, the records of an
//! entry flagged `continued` but the last; the log store maps Raft indexes
//! to offsets, and cuts an entry that only partly reached the file.

use std::path::PathBuf;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::EntryPayload;
use pinion_cluster::{log_id, LogStore, OpenError};
use pinion_journal::{Journal, JournalOptions, NewEntry, Reader, RecordKind};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("pinion-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Writes records straight into a journal: (kind, continued, seq).
fn write(path: &std::path::Path, records: &[(RecordKind, bool, u64)]) {
    let (mut j, _) = Journal::open(path, JournalOptions::default()).unwrap();
    for (i, &(kind, continued, seq)) in records.iter().enumerate() {
        let body = format!("message {seq}");
        let (topic, payload): (&[u8], &[u8]) = match kind {
            RecordKind::Message => (b"t", body.as_bytes()),
            _ => (b"", b""),
        };
        j.append_entry(&NewEntry {
            index: i as u64,
            term: 1,
            kind,
            continued,
            timestamp_us: seq,
            client_id: [1; 16],
            seq,
            topic,
            payload,
        })
        .unwrap();
    }
    j.commit(true).unwrap();
}

fn offsets_in_file(path: &std::path::Path) -> Vec<u64> {
    let mut r = Reader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        out.push(rec.unwrap().offset);
    }
    out
}

#[test]
fn batch_entries_map_to_offsets_and_a_torn_entry_is_cut() {
    let d = dir("batches");
    let path = d.0.join("pinion.log");
    use RecordKind::{Blank, Message};
    write(
        &path,
        &[
            (Blank, false, 0),  // entry 0 at offset 0
            (Message, true, 1), // entry 1: offsets 1, 2, 3
            (Message, true, 2),
            (Message, false, 3),
            (Blank, false, 0),   // entry 2 at offset 4
            (Message, false, 4), // entry 3 at offset 5 (a batch of one)
            (Message, true, 5),  // entry 4: its last record never written
            (Message, true, 6),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut log = LogStore::open(&path, JournalOptions::default()).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(
            st.last_log_id,
            Some(log_id(1, 3)),
            "the torn entry 4 is gone"
        );
        let o = log.offsets();
        assert_eq!(
            (0..5).map(|i| o.start(i)).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(4), Some(5), None]
        );
        let entries = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(entries.len(), 4);
        let seqs: Vec<Vec<u64>> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(b) => b.messages.iter().map(|m| m.seq).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(seqs, vec![vec![], vec![1, 2, 3], vec![], vec![4]]);
        // Reading from the middle starts at the entry's first record.
        let mid = log.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(
            mid.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
    });
    drop(rt);
    // The cut is in the file: offsets 6 and 7 are gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // The store's I/O thread releases the file when it stops.
        if Journal::open(&path, JournalOptions::default()).is_ok()
            || std::time::Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(offsets_in_file(&path), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn an_entry_mixing_kinds_is_refused_at_open() {
    let d = dir("batches-mixed");
    let path = d.0.join("pinion.log");
    // A message says the next record is of its entry, but it is a blank.
    write(
        &path,
        &[
            (RecordKind::Message, true, 1),
            (RecordKind::Blank, false, 0),
        ],
    );
    match LogStore::open(&path, JournalOptions::default()) {
        Err(OpenError::Entry { offset: 1, .. }) => {}
        other => panic!(
            "expected a refused entry at offset 1, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn big_entries_leave_memory_and_are_read_back_from_the_file() {
    use bytes::Bytes;
    use openraft::storage::RaftLogStorageExt;
    use pinion_cluster::{Batch, Entry, Publish};
    let d = dir("batches-big");
    let path = d.0.join("pinion.log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut log = LogStore::open(&path, JournalOptions::default()).unwrap();
        // 120 entries of two 150 KiB messages: 36 MiB, more than the
        // store keeps in memory, so the first ones come from the file.
        let body = |i: u64, j: u8| Bytes::from(vec![(i as u8) ^ j; 150 << 10]);
        for i in 0..120u64 {
            let messages = (0..2u8)
                .map(|j| Publish {
                    timestamp_us: i,
                    client_id: [j; 16],
                    seq: i * 2 + u64::from(j),
                    topic: Bytes::from_static(b"big"),
                    payload: body(i, j),
                })
                .collect();
            log.blocking_append([Entry {
                log_id: log_id(1, i),
                payload: EntryPayload::Normal(Batch::new(messages)),
            }])
            .await
            .unwrap();
        }
        for range in [0..3u64, 58..61, 117..120] {
            let got = log.try_get_log_entries(range.clone()).await.unwrap();
            assert_eq!(got.len(), 3);
            for (e, i) in got.iter().zip(range) {
                assert_eq!(e.log_id.index, i);
                let EntryPayload::Normal(b) = &e.payload else {
                    panic!("entry {i} is not a batch")
                };
                assert_eq!(b.messages.len(), 2);
                for (j, m) in b.messages.iter().enumerate() {
                    assert_eq!(m.payload, body(i, j as u8), "entry {i} message {j}");
                }
            }
        }
        assert_eq!(log.offsets().start(119), Some(238));
        let (entries, bytes) = log.tail_size();
        assert!(
            entries < 120 && bytes <= (32 << 20) + (301 << 10),
            "{entries} entries, {bytes} bytes kept in memory"
        );
    });
}
