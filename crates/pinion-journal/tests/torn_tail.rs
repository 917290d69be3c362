//! Torn tails: a partially written or damaged last record, or garbage in the
//! pre-zeroed region, is cut by `open`, which keeps exactly the records
//! before it; a second open finds nothing to cut.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use pinion_journal::{verify, Journal, JournalOptions, NewRecord};
use support::{append_range, build, check, layout, opts, read_all, TempDir};

const RECORDS: u64 = 12;

/// Opens (which cuts), checks what was kept, reopens (nothing to cut) and
/// appends one more record to prove the journal is usable.
#[track_caller]
fn expect_cut(path: &Path, o: JournalOptions, at_byte: u64, keep: u64) {
    let torn = verify(path)
        .unwrap()
        .torn_tail
        .expect("verify reports the torn tail");
    assert_eq!(torn.at_byte, at_byte);
    let before = std::fs::read(path).unwrap();
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "verify modifies nothing"
    );
    let (mut j, rep) = Journal::open(path, o).unwrap();
    let t = rep.truncated.expect("open reports the truncation");
    assert_eq!(t.at_byte, at_byte, "{t:?}");
    assert!(t.bytes_cut > 0);
    assert_eq!((rep.records, rep.valid_bytes), (keep, at_byte));
    assert_eq!(j.next_offset(), keep);
    append_range(&mut j, keep, 1);
    j.commit(true).unwrap();
    drop(j);
    let (_j, rep) = Journal::open(path, o).unwrap();
    assert_eq!((rep.records, rep.truncated), (keep + 1, None));
    let all = read_all(path);
    assert_eq!(all.len() as u64, keep + 1);
    for (i, r) in all.iter().enumerate() {
        check(r, i as u64);
    }
}

#[test]
fn truncated_at_every_byte_of_the_last_record() {
    let dir = TempDir::new("torn-cut");
    let orig = dir.join("orig");
    build(&orig, opts(0), RECORDS, 5);
    let (last_pos, last_len) = *layout(&orig).last().unwrap();
    let bytes = std::fs::read(&orig).unwrap();
    assert_eq!(bytes.len() as u64, last_pos + last_len);
    let path = dir.join("j");
    // Cut exactly at the record start: a clean end with one record fewer.
    std::fs::write(&path, &bytes[..last_pos as usize]).unwrap();
    let (_j, rep) = Journal::open(&path, opts(0)).unwrap();
    assert_eq!((rep.records, rep.truncated), (RECORDS - 1, None));
    drop(_j);
    for cut in last_pos + 1..last_pos + last_len {
        std::fs::write(&path, &bytes[..cut as usize]).unwrap();
        expect_cut(&path, opts(0), last_pos, RECORDS - 1);
    }
}

#[test]
fn partially_written_last_record_in_the_pre_zeroed_region() {
    let dir = TempDir::new("torn-zeroed");
    let o = opts(256 << 10);
    let orig = dir.join("orig");
    build(&orig, o, RECORDS, 5);
    let (last_pos, last_slot) = *layout(&orig).last().unwrap();
    let bytes = std::fs::read(&orig).unwrap();
    let file_len = bytes.len() as u64;
    assert!(
        file_len > last_pos + last_slot + (64 << 10),
        "pre-zeroed region present"
    );
    // The unpadded length is in the first 4 bytes.
    let len = u64::from(u32::from_le_bytes(
        bytes[last_pos as usize..last_pos as usize + 4]
            .try_into()
            .unwrap(),
    ));
    let path = dir.join("j");
    // Only the first `written` bytes of the record reached the disk; the
    // rest of its slot is still zero.
    for written in 1..len {
        let mut b = bytes.clone();
        b[(last_pos + written) as usize..(last_pos + last_slot) as usize].fill(0);
        std::fs::write(&path, &b).unwrap();
        expect_cut(&path, o, last_pos, RECORDS - 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            file_len,
            "zeroed, not truncated"
        );
    }
}

#[test]
fn bad_checksum_of_the_last_record() {
    let dir = TempDir::new("torn-crc");
    for prealloc in [0, 256 << 10] {
        let path = dir.join(&format!("j{prealloc}"));
        build(&path, opts(prealloc), RECORDS, 4);
        let (last_pos, _) = *layout(&path).last().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Byte 4..8 is the CRC.
        f.write_all_at(&[0xDE, 0xAD], last_pos + 5).unwrap();
        drop(f);
        expect_cut(&path, opts(prealloc), last_pos, RECORDS - 1);
    }
}

#[test]
fn garbage_in_the_pre_zeroed_region() {
    let dir = TempDir::new("torn-garbage");
    let o = opts(256 << 10);
    let orig = dir.join("orig");
    build(&orig, o, RECORDS, 4);
    let end = verify(&orig).unwrap().valid_bytes;
    let bytes = std::fs::read(&orig).unwrap();
    let path = dir.join("j");
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    // Right at the end, a little after it, far after it, and a lone length
    // field claiming a huge record.
    for (at, g) in [
        (end, &garbage[..]),
        (end + 3, &garbage[..20]),
        (end + 1000, &garbage[..]),
        (bytes.len() as u64 - 7, &garbage[..7]),
        (end, &(60u32 << 20).to_le_bytes()[..]),
        (end + 8, &[1u8][..]),
    ] {
        let mut b = bytes.clone();
        b[at as usize..at as usize + g.len()].copy_from_slice(g);
        std::fs::write(&path, &b).unwrap();
        expect_cut(&path, o, end, RECORDS);
        // Everything after the records is zero again.
        let after = std::fs::read(&path).unwrap();
        let new_end = verify(&path).unwrap().valid_bytes;
        assert!(after[new_end as usize..].iter().all(|&x| x == 0));
        assert_eq!(after.len(), bytes.len());
    }
}

#[test]
fn torn_tail_after_a_commit_of_many_records() {
    // A torn multi-record commit: the first records of the batch are
    // intact and kept, the cut record and everything after it go.
    let dir = TempDir::new("torn-batch");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(0)).unwrap();
    append_range(&mut j, 0, 3);
    j.commit(true).unwrap();
    append_range(&mut j, 3, 6);
    j.commit(true).unwrap();
    drop(j);
    let l = layout(&path);
    let cut = l[6].0 + 10;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..cut as usize]).unwrap();
    expect_cut(&path, opts(0), l[6].0, 6);
}

#[test]
fn torn_record_whose_payload_holds_a_valid_record_is_still_torn() {
    // The payload of the torn record is itself an encoded record with the
    // offset a following record would have. It lies inside the torn
    // record's slot, so it is not evidence of a later commit.
    let dir = TempDir::new("torn-embedded");
    let src = dir.join("src");
    build(&src, opts(0), RECORDS + 1, RECORDS + 1);
    let (epos, eslot) = layout(&src)[RECORDS as usize];
    let embedded = std::fs::read(&src).unwrap()[epos as usize..(epos + eslot) as usize].to_vec();

    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(0)).unwrap();
    append_range(&mut j, 0, RECORDS);
    let mut payload = embedded.clone();
    payload.extend_from_slice(b"trailing bytes");
    // An 8-byte topic keeps the embedded record 8-byte aligned in the file.
    let rec = NewRecord {
        timestamp_us: 0,
        client_id: [9; 16],
        seq: 0,
        topic: b"8bytes!!",
        payload: &payload,
    };
    assert_eq!(j.append(&rec).unwrap(), RECORDS);
    j.commit(true).unwrap();
    drop(j);
    let (last_pos, _) = *layout(&path).last().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = last_pos + 64 + embedded.len() as u64 + 3;
    std::fs::write(&path, &bytes[..cut as usize]).unwrap();
    expect_cut(&path, opts(0), last_pos, RECORDS);
}
