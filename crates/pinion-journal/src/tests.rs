//! Unit tests of the fdatasync-failure (poison) path, through the
//! `fail_next_syncs` hook.

use std::path::PathBuf;

use crate::{verify, Journal, JournalError, JournalOptions, NewRecord, Reader};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d =
            std::env::temp_dir().join(format!("pinion-journal-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn append(j: &mut Journal, n: u64) {
    for _ in 0..n {
        let seq = j.next_offset();
        let payload = seq.to_le_bytes();
        let rec = NewRecord {
            timestamp_us: seq,
            client_id: [1; 16],
            seq,
            topic: b"t",
            payload: &payload,
        };
        j.append(&rec).unwrap();
    }
}

/// Every record's seq equals its offset: nothing lost, nothing duplicated.
fn check_file(j: &Journal, expected: u64) {
    let mut r = Reader::open(j.path()).unwrap();
    let mut n = 0;
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        assert_eq!((rec.offset, rec.seq), (n, n));
        n += 1;
    }
    assert_eq!(n, expected);
    let v = verify(j.path()).unwrap();
    assert_eq!((v.records, v.torn_tail), (expected, None));
}

fn poison_then_recover(preallocate: u64) {
    let dir = Dir::new(&format!("poison-{preallocate}"));
    let path = dir.0.join("j");
    let (mut j, _) = Journal::open(
        &path,
        JournalOptions {
            preallocate,
            ..Default::default()
        },
    )
    .unwrap();
    let mut reader = j.reader().unwrap();
    append(&mut j, 10);
    j.commit(true).unwrap();
    let len_before = std::fs::metadata(&path).unwrap().len();

    j.fail_next_syncs(1);
    append(&mut j, 5);
    let e = j.commit(true).unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.fault(), crate::Fault::Io);
    assert!(j.is_poisoned());
    assert_eq!(
        (j.next_offset(), j.committed_offset(), j.pending_records()),
        (10, 10, 0)
    );
    // The failed batch was removed from the file and never shown to readers.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
    check_file(&j, 10);
    reader.seek(10).unwrap();
    assert!(reader.next().is_none());

    let rec = NewRecord {
        timestamp_us: 0,
        client_id: [0; 16],
        seq: 0,
        topic: b"",
        payload: b"",
    };
    assert!(matches!(j.append(&rec), Err(JournalError::Poisoned)));
    assert!(matches!(j.commit(true), Err(JournalError::Poisoned)));
    assert!(matches!(j.commit(false), Err(JournalError::Poisoned)));
    assert!(matches!(
        j.extend_preallocation(),
        Err(JournalError::Poisoned)
    ));

    // A recovery whose own fdatasync fails leaves the journal poisoned…
    j.fail_next_syncs(1);
    assert!(matches!(
        j.recover(),
        Err(JournalError::Io {
            op: "fdatasync",
            ..
        })
    ));
    assert!(j.is_poisoned());
    assert!(matches!(j.commit(true), Err(JournalError::Poisoned)));
    // …and a later one succeeds.
    j.recover().unwrap();
    assert!(!j.is_poisoned());
    j.recover().unwrap(); // no-op
    append(&mut j, 7);
    j.commit(true).unwrap();
    assert_eq!(j.committed_offset(), 17);
    check_file(&j, 17);
    for i in 10..17 {
        assert_eq!(reader.next().unwrap().unwrap().seq, i);
    }
    drop(j);
    let (j, rep) = Journal::open(
        &path,
        JournalOptions {
            preallocate,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((rep.records, rep.truncated), (17, None));
    drop(j);
}

#[test]
fn fdatasync_failure_poisons_until_recover_plain() {
    poison_then_recover(0);
}

#[test]
fn fdatasync_failure_poisons_until_recover_preallocated() {
    poison_then_recover(256 << 10);
}

#[test]
fn failed_sync_of_earlier_unsynced_commits_keeps_them_after_recover() {
    let dir = Dir::new("unsynced");
    let path = dir.0.join("j");
    let (mut j, _) = Journal::open(
        &path,
        JournalOptions {
            preallocate: 0,
            ..Default::default()
        },
    )
    .unwrap();
    append(&mut j, 3);
    j.commit(true).unwrap();
    append(&mut j, 4);
    j.commit(false).unwrap();
    j.fail_next_syncs(1);
    assert!(j.commit(true).is_err(), "empty sync commit fails");
    assert!(j.is_poisoned());
    // Records committed with sync = false stay committed; recover rewrites
    // and syncs them.
    j.recover().unwrap();
    assert_eq!(j.committed_offset(), 7);
    append(&mut j, 1);
    j.commit(true).unwrap();
    check_file(&j, 8);
}

#[test]
fn recover_refuses_committed_records_that_no_longer_verify() {
    let dir = Dir::new("recover-corrupt");
    let path = dir.0.join("j");
    let (mut j, _) = Journal::open(
        &path,
        JournalOptions {
            preallocate: 0,
            ..Default::default()
        },
    )
    .unwrap();
    append(&mut j, 3);
    j.commit(false).unwrap();
    j.fail_next_syncs(1);
    append(&mut j, 1);
    assert!(j.commit(true).is_err());
    // Damage an unsynced committed record behind the journal's back.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[288 + 68] ^= 0x40; // inside record 0 of a version-2 file
    std::fs::write(&path, &bytes).unwrap();
    let e = j.recover().unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::Corrupt {
                byte_pos: 288,
                offset: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(j.is_poisoned());
}
