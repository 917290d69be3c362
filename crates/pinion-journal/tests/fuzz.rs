//! Fuzz-style properties: arbitrary bytes never panic `open`, `verify`,
//! `stat` or a `Reader`, and the entry points agree with each other.

mod support;

use std::path::Path;

use pinion_journal::{stat, verify, Journal, JournalError, Reader, HEADER_LEN};
use proptest::prelude::*;
use support::{build, opts, TempDir};

/// The header of a fresh journal (creation time varies, so build one).
fn valid_header(dir: &TempDir) -> Vec<u8> {
    let p = dir.join("header-source");
    if !p.exists() {
        build(&p, opts(0), 0, 1);
    }
    std::fs::read(&p).unwrap()[..HEADER_LEN as usize].to_vec()
}

/// A small valid journal (several records) to mutate.
fn valid_journal(dir: &TempDir) -> Vec<u8> {
    let p = dir.join("journal-source");
    if !p.exists() {
        build(&p, opts(0), 20, 3);
    }
    std::fs::read(&p).unwrap()
}

/// Runs every entry point on `bytes` and checks they agree:
/// `verify` ⇔ `Reader` ⇔ `open`, and `open` leaves a file `verify` finds clean.
fn exercise(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    let v = verify(path);
    let s = stat(path);
    prop_assert_eq!(v.is_ok(), s.is_ok());
    // A standalone reader returns exactly the valid prefix, then stops
    // (torn tail) or repeats the corruption error.
    if let Ok(mut r) = Reader::open(path) {
        let mut n = 0u64;
        let mut err = None;
        for _ in 0..10_000 {
            match r.next() {
                Some(Ok(rec)) => {
                    prop_assert_eq!(rec.offset, n);
                    n += 1;
                }
                Some(Err(e)) => {
                    err = Some(e);
                    break;
                }
                None => break,
            }
        }
        match &v {
            Ok(v) => {
                prop_assert_eq!(n, v.records);
                prop_assert!(err.is_none());
            }
            Err(JournalError::Corrupt { offset, .. }) => {
                prop_assert_eq!(n, *offset);
                let corrupt = matches!(err, Some(JournalError::Corrupt { .. }));
                prop_assert!(corrupt);
            }
            Err(e) => prop_assert!(false, "reader opened but verify failed: {:?}", e),
        }
        for t in [0, n / 2, n] {
            prop_assert!(r.seek(t).is_ok());
        }
    }
    let before = std::fs::read(path).unwrap();
    match (Journal::open(path, opts(0)), &v) {
        (Ok((j, rep)), Ok(v)) => {
            prop_assert_eq!(rep.records, v.records);
            prop_assert_eq!(rep.truncated.is_some(), v.torn_tail.is_some());
            drop(j);
            let again = verify(path).unwrap();
            prop_assert_eq!((again.records, again.torn_tail), (v.records, None));
        }
        (Err(e), Err(ve)) => {
            prop_assert_eq!(format!("{e}"), format!("{ve}"));
            prop_assert_eq!(std::fs::read(path).unwrap(), before);
        }
        (o, v) => prop_assert!(false, "open {:?} vs verify {:?}", o.map(|x| x.1), v),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = TempDir::new("fuzz-tail");
        let mut bytes = valid_header(&dir);
        bytes.extend_from_slice(&tail);
        exercise(&dir.join("j"), &bytes)?;
    }

    #[test]
    fn arbitrary_whole_files(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dir = TempDir::new("fuzz-whole");
        exercise(&dir.join("j"), &bytes)?;
    }

    #[test]
    fn mutated_valid_journals(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        zeros in 0usize..600,
    ) {
        let dir = TempDir::new("fuzz-mutate");
        let mut bytes = valid_journal(&dir);
        for (at, b) in edits {
            let i = HEADER_LEN as usize + at.index(bytes.len() - HEADER_LEN as usize);
            bytes[i] = b;
        }
        if do_cut {
            let keep = HEADER_LEN as usize + cut.index(bytes.len() - HEADER_LEN as usize);
            bytes.truncate(keep);
        }
        bytes.resize(bytes.len() + zeros, 0); // sometimes a pre-zeroed region
        exercise(&dir.join("j"), &bytes)?;
    }

    #[test]
    fn plausible_headers_with_huge_lengths(len in any::<u32>(), topic_len in any::<u16>(), payload_len in any::<u32>(), fill in 0usize..512) {
        // A record header whose length fields are consistent but enormous
        // must not make anyone allocate or read beyond the file.
        let dir = TempDir::new("fuzz-huge");
        let mut bytes = valid_header(&dir);
        let mut rec = vec![0u8; 56];
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        rec[48..50].copy_from_slice(&topic_len.to_le_bytes());
        rec[50..54].copy_from_slice(&payload_len.to_le_bytes());
        bytes.extend_from_slice(&rec);
        bytes.resize(bytes.len() + fill, 0xEE);
        exercise(&dir.join("j"), &bytes)?;
    }
}
