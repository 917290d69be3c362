//! Mid-file corruption: damage followed by valid records is reported with
//! its byte position and expected offset, never skipped, and nothing is
//! modified (until an explicit `repair`).

mod support;

use std::path::Path;

use pinion_journal::{repair, stat, verify, CorruptKind, Fault, Journal, JournalError, Reader};
use support::{build, check, layout, opts, TempDir};

const RECORDS: u64 = 40;
const VICTIM: usize = 3;

#[track_caller]
fn expect_corrupt(e: JournalError, byte_pos: u64, offset: u64) -> CorruptKind {
    match e {
        JournalError::Corrupt {
            byte_pos: b,
            offset: o,
            reason,
        } => {
            assert_eq!((b, o), (byte_pos, offset), "{reason}");
            assert_eq!(e.fault(), Fault::Data);
            reason
        }
        other => panic!("expected Corrupt at {byte_pos}, got {other:?}"),
    }
}

/// Flips `mask` into byte `delta` of record `VICTIM` and checks every entry
/// point; returns the reason reported.
fn flip_and_check(dir: &TempDir, prealloc: u64, delta: u64, mask: u8) -> CorruptKind {
    let path = dir.join(&format!("j-{prealloc}-{delta}-{mask}"));
    build(&path, opts(prealloc), RECORDS, 7);
    let (pos, _) = layout(&path)[VICTIM];
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(pos + delta) as usize] ^= mask;
    std::fs::write(&path, &bytes).unwrap();

    let reason = expect_corrupt(
        Journal::open(&path, opts(prealloc)).unwrap_err(),
        pos,
        VICTIM as u64,
    );
    assert_eq!(
        expect_corrupt(verify(&path).unwrap_err(), pos, VICTIM as u64),
        reason
    );
    expect_corrupt(stat(&path).unwrap_err(), pos, VICTIM as u64);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file not modified");

    // A reader serves the records before the damage, then the error (repeatedly).
    let mut r = Reader::open(&path).unwrap();
    for i in 0..VICTIM as u64 {
        check(&r.next().unwrap().unwrap(), i);
    }
    for _ in 0..2 {
        expect_corrupt(r.next().unwrap().unwrap_err(), pos, VICTIM as u64);
    }
    assert!(matches!(
        r.seek(VICTIM as u64 + 1),
        Err(JournalError::OffsetOutOfRange { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file not modified");
    cleanup_and_repair(&path, prealloc, pos);
    reason
}

/// `repair` cuts at the damage; the journal then opens with the records before it.
fn cleanup_and_repair(path: &Path, prealloc: u64, pos: u64) {
    let t = repair(path).unwrap().expect("something was cut");
    assert_eq!(t.at_byte, pos);
    let (_j, rep) = Journal::open(path, opts(prealloc)).unwrap();
    assert_eq!((rep.records, rep.truncated), (VICTIM as u64, None));
    drop(_j);
    assert_eq!(repair(path).unwrap(), None);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn flipped_bytes_in_an_early_record() {
    let dir = TempDir::new("corrupt");
    for prealloc in [0, 256 << 10] {
        // length field (low and high byte), CRC, offset, timestamp, seq,
        // topic length, term, payload byte (version-2 layout).
        assert_eq!(
            flip_and_check(&dir, prealloc, 0, 0x08),
            CorruptKind::LengthMismatch
        );
        assert_eq!(
            flip_and_check(&dir, prealloc, 3, 0x80),
            CorruptKind::BadLength
        );
        assert_eq!(
            flip_and_check(&dir, prealloc, 0, 0xFF),
            CorruptKind::LengthMismatch
        );
        for delta in [4, 9, 20, 44, 57, 63, 66] {
            let mask = 1 << (delta % 8);
            assert_eq!(
                flip_and_check(&dir, prealloc, delta, mask),
                CorruptKind::Checksum,
                "byte {delta}"
            );
        }
        assert_eq!(
            flip_and_check(&dir, prealloc, 48, 0x01),
            CorruptKind::LengthMismatch
        );
        // Byte 55 holds flags: bit 0 (continued) is valid on a message,
        // so only the CRC catches it; other bits are reserved.
        assert_eq!(
            flip_and_check(&dir, prealloc, 55, 0x01),
            CorruptKind::Checksum
        );
        assert_eq!(
            flip_and_check(&dir, prealloc, 55, 0x02),
            CorruptKind::ReservedBits
        );
        assert_eq!(
            flip_and_check(&dir, prealloc, 54, 0x04),
            CorruptKind::UnknownKind
        );
        // Kind 1 (blank) with a topic and payload.
        assert_eq!(
            flip_and_check(&dir, prealloc, 54, 0x01),
            CorruptKind::LengthMismatch
        );
    }
}

#[test]
fn non_zero_padding() {
    let dir = TempDir::new("corrupt-pad");
    let path = dir.join("j");
    build(&path, opts(0), RECORDS, 7);
    let l = layout(&path);
    let bytes = std::fs::read(&path).unwrap();
    // Find a record with padding.
    let (i, &(pos, slot)) = l
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, &(p, s))| {
            let len = u32::from_le_bytes(bytes[p as usize..p as usize + 4].try_into().unwrap());
            u64::from(len) < s
        })
        .unwrap();
    let mut b = bytes.clone();
    b[(pos + slot - 1) as usize] = 0x5A;
    std::fs::write(&path, &b).unwrap();
    let e = Journal::open(&path, opts(0)).unwrap_err();
    assert_eq!(expect_corrupt(e, pos, i as u64), CorruptKind::Padding);
}

#[test]
fn record_with_a_wrong_offset_is_corruption_even_at_the_end() {
    // An intact record carrying another offset (e.g. a block copied from
    // elsewhere) is never treated as a torn write.
    let dir = TempDir::new("corrupt-offset");
    let path = dir.join("j");
    build(&path, opts(0), 5, 5);
    let l = layout(&path);
    let bytes = std::fs::read(&path).unwrap();
    // Duplicate record 2 at the end.
    let mut b = bytes.clone();
    b.extend_from_slice(&bytes[l[2].0 as usize..(l[2].0 + l[2].1) as usize]);
    std::fs::write(&path, &b).unwrap();
    let e = Journal::open(&path, opts(0)).unwrap_err();
    assert_eq!(
        expect_corrupt(e, bytes.len() as u64, 5),
        CorruptKind::OffsetMismatch
    );
}

#[test]
fn damaged_file_header() {
    let dir = TempDir::new("corrupt-header");
    let path = dir.join("j");
    build(&path, opts(0), 3, 3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1; // creation time, under the header CRC
    std::fs::write(&path, &bytes).unwrap();
    for e in [
        Journal::open(&path, opts(0)).unwrap_err(),
        verify(&path).unwrap_err(),
        Reader::open(&path).unwrap_err(),
    ] {
        assert_eq!(expect_corrupt(e, 0, 0), CorruptKind::HeaderChecksum);
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}
