//! Files that are not journals (or not ones this build reads) are refused
//! and left untouched; a header-only journal is an empty journal.

mod support;

use std::path::Path;

use pinion_journal::{
    stat, verify, CorruptKind, Fault, Journal, JournalError, Reader, HEADER_LEN, STATE_SLOT_LEN,
};
use support::{append_range, build, opts, TempDir};

/// The version-2 header: the fixed part and two Raft state slots.
const H: u64 = HEADER_LEN + 2 * STATE_SLOT_LEN;

/// Every entry point refuses the file with `want`, and nothing is modified.
#[track_caller]
fn refused(path: &Path, want: fn(&JournalError) -> bool) {
    let before = std::fs::read(path).unwrap();
    let errors = [
        Journal::open(path, opts(0)).map(|_| ()).unwrap_err(),
        Journal::open(path, opts(1 << 20)).map(|_| ()).unwrap_err(),
        verify(path).map(|_| ()).unwrap_err(),
        stat(path).map(|_| ()).unwrap_err(),
        Reader::open(path).map(|_| ()).unwrap_err(),
        pinion_journal::repair(path).map(|_| ()).unwrap_err(),
    ];
    for e in errors {
        assert!(want(&e), "unexpected {e:?}");
        assert_eq!(e.fault(), Fault::Data);
    }
    assert_eq!(std::fs::read(path).unwrap(), before, "file modified");
}

fn not_a_journal(e: &JournalError) -> bool {
    matches!(e, JournalError::NotAJournal { .. })
}

#[test]
fn not_a_journal_files() {
    let dir = TempDir::new("header");
    let path = dir.join("f");
    for content in [
        &b""[..],
        b"P",
        b"PINIONL",
        b"hello world, this is a text file and not a journal",
        &[0u8; 64],
    ] {
        std::fs::write(&path, content).unwrap();
        refused(&path, not_a_journal);
    }
    // A valid header cut short.
    std::fs::remove_file(&path).unwrap();
    build(&path, opts(0), 0, 1);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, H);
    for cut in [8, 11, 12, 20, 31, 32, 100, 287] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        refused(&path, not_a_journal);
    }
}

#[test]
fn unsupported_version_or_flags() {
    let dir = TempDir::new("header-version");
    let path = dir.join("f");
    build(&path, opts(0), 2, 2);
    let bytes = std::fs::read(&path).unwrap();
    let mut b = bytes.clone();
    b[8] = 3;
    std::fs::write(&path, &b).unwrap();
    refused(&path, |e| {
        matches!(
            e,
            JournalError::UnsupportedVersion {
                version: 3,
                flags: 0
            }
        )
    });
    let mut b = bytes.clone();
    b[10] = 1;
    std::fs::write(&path, &b).unwrap();
    refused(&path, |e| {
        matches!(
            e,
            JournalError::UnsupportedVersion {
                version: 2,
                flags: 1
            }
        )
    });
    // The version is checked before the header CRC, even in a short file.
    std::fs::write(&path, &b[..12]).unwrap();
    refused(&path, |e| {
        matches!(e, JournalError::UnsupportedVersion { .. })
    });
}

#[test]
fn header_only_file_is_an_empty_journal() {
    let dir = TempDir::new("header-only");
    let path = dir.join("j");
    build(&path, opts(0), 0, 1);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), H);
    let v = verify(&path).unwrap();
    assert_eq!(
        (v.records, v.valid_bytes, v.torn_tail, v.first_timestamp_us),
        (0, H, None, None)
    );
    let s = stat(&path).unwrap();
    assert_eq!(
        (s.records, s.first, s.distinct_clients, s.preallocated_bytes),
        (0, None, 0, 0)
    );
    let mut r = Reader::open(&path).unwrap();
    assert!(r.next().is_none());
    r.seek(0).unwrap();
    // Opening with pre-zeroing grows it; records then go after the header.
    let (mut j, rep) = Journal::open(&path, opts(128 << 10)).unwrap();
    assert_eq!(
        (rep.records, rep.valid_bytes, rep.truncated, rep.created),
        (0, H, None, false)
    );
    assert!(std::fs::metadata(&path).unwrap().len() >= H + (128 << 10));
    append_range(&mut j, 0, 2);
    j.commit(true).unwrap();
    assert_eq!(
        r.next().unwrap().unwrap().offset,
        0,
        "standalone reader follows"
    );
}

#[test]
fn missing_file_is_an_io_error_for_readers() {
    let dir = TempDir::new("header-missing");
    let path = dir.join("nope");
    for e in [
        verify(&path).unwrap_err(),
        stat(&path).unwrap_err(),
        Reader::open(&path).unwrap_err(),
    ] {
        assert!(
            matches!(&e, JournalError::Io { op: "open", source } if source.kind() == std::io::ErrorKind::NotFound)
        );
        assert_eq!(e.fault(), Fault::Io);
        assert!(!e.is_out_of_space());
    }
    assert!(!path.exists());
}

/// One damaged Raft state slot is survivable (a torn header write damages
/// only the slot being written; the other one holds the previous state);
/// both damaged is corruption, refused everywhere.
#[test]
fn damaged_state_slots() {
    let dir = TempDir::new("header-slots");
    let path = dir.join("j");
    build(&path, opts(0), 3, 3);
    let bytes = std::fs::read(&path).unwrap();
    for slot in [0u64, 1] {
        let mut b = bytes.clone();
        b[(HEADER_LEN + slot * STATE_SLOT_LEN + 9) as usize] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        let (j, rep) = Journal::open(&path, opts(0)).unwrap();
        assert_eq!(rep.records, 3, "slot {slot}");
        drop(j);
    }
    let mut b = bytes.clone();
    b[(HEADER_LEN + 9) as usize] ^= 0x10;
    b[(HEADER_LEN + STATE_SLOT_LEN + 9) as usize] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    refused(&path, |e| {
        matches!(
            e,
            JournalError::Corrupt {
                reason: CorruptKind::StateSlots,
                ..
            }
        )
    });
}
