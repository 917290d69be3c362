//! Append / commit / reopen / read, seeking, tail-following, API errors.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use pinion_journal::{Fault, Journal, JournalError, JournalOptions, NewRecord, Reader};
use support::{append_range, build, check, opts, read_all, TempDir};

#[test]
fn round_trip_all_fields_plain_and_preallocated() {
    // Both format versions: version 1 files stay readable and appendable.
    for (prealloc, version, h) in [(0, 2, 288), (1 << 20, 2, 288), (0, 1, 32), (1 << 20, 1, 32)] {
        let o = JournalOptions {
            create_version: version,
            ..opts(prealloc)
        };
        let dir = TempDir::new("roundtrip");
        let path = dir.join("j");
        let (mut j, rep) = Journal::open(&path, o).unwrap();
        assert!(rep.created);
        assert_eq!((rep.records, rep.valid_bytes, rep.truncated), (0, h, None));
        // Edge sizes: empty topic and payload, max topic.
        let big_topic = vec![b't'; 65535];
        for (t, p) in [(&b""[..], &b""[..]), (&big_topic[..], &b"x"[..])] {
            let rec = NewRecord {
                timestamp_us: u64::MAX,
                client_id: [0xFF; 16],
                seq: u64::MAX,
                topic: t,
                payload: p,
            };
            j.append(&rec).unwrap();
        }
        j.commit(true).unwrap();
        append_range(&mut j, 2, 100);
        j.commit(true).unwrap();
        assert_eq!(
            (j.next_offset(), j.committed_offset(), j.pending_records()),
            (102, 102, 0)
        );
        drop(j);

        let (j, rep) = Journal::open(&path, o).unwrap();
        assert!(!rep.created);
        assert_eq!((rep.records, rep.truncated), (102, None));
        assert_eq!(j.next_offset(), 102);
        let all = read_all(&path);
        assert_eq!(all.len(), 102);
        assert_eq!(
            (&all[0].topic[..], &all[0].payload[..], all[0].seq),
            (&b""[..], &b""[..], u64::MAX)
        );
        assert_eq!(all[1].topic.len(), 65535);
        assert_eq!(all[0].byte_pos, h);
        assert_eq!(j.version(), version);
        for w in all.windows(2) {
            assert_eq!(w[0].byte_pos + u64::from(w[0].byte_len), w[1].byte_pos);
            assert_eq!(w[1].byte_pos % 8, 0);
        }
        for (i, r) in all.iter().enumerate().skip(2) {
            check(r, i as u64);
        }
        assert_eq!(
            rep.valid_bytes,
            all[101].byte_pos + u64::from(all[101].byte_len)
        );
        // The journal's own reader agrees.
        let mut r = j.reader().unwrap();
        let mut n = 0;
        while let Some(rec) = r.next() {
            assert_eq!(rec.unwrap(), all[n]);
            n += 1;
        }
        assert_eq!(n, 102);

        let v = pinion_journal::verify(&path).unwrap();
        assert_eq!(
            (v.records, v.valid_bytes, v.torn_tail.clone()),
            (102, rep.valid_bytes, None)
        );
        assert_eq!(
            (v.first_timestamp_us, v.last_timestamp_us),
            (Some(u64::MAX), Some(1_000_101))
        );
        let s = pinion_journal::stat(&path).unwrap();
        assert_eq!(
            (s.version, s.records, s.file_bytes),
            (version, 102, std::fs::metadata(&path).unwrap().len())
        );
        assert_eq!(s.preallocated_bytes, s.file_bytes - s.valid_bytes);
        assert_eq!(s.distinct_clients, 6, "[0xFF;16] plus client(i) for i % 5");
        assert_eq!(s.first.map(|r| r.offset), Some(0));
        assert_eq!(
            s.last.map(|r| (r.offset, r.timestamp_us)),
            Some((101, 1_000_101))
        );
        if prealloc > 0 {
            assert!(s.preallocated_bytes >= prealloc / 2, "{s:?}");
        } else {
            assert_eq!(s.preallocated_bytes, 0);
        }
    }
}

#[test]
fn many_commits_across_reopens() {
    let dir = TempDir::new("many");
    let path = dir.join("j");
    let o = JournalOptions {
        preallocate: 64 << 10,
        index_interval: 5,
        ..JournalOptions::default()
    };
    let mut total = 0;
    for round in 0..4 {
        let (mut j, rep) = Journal::open(&path, o).unwrap();
        assert_eq!((rep.records, rep.truncated), (total, None));
        for c in 0..250u64 {
            let k = (c + round) % 4 + 1;
            append_range(&mut j, total, k);
            j.commit(c % 3 != 0).unwrap();
            total += k;
        }
        j.commit(true).unwrap();
    }
    let all = read_all(&path);
    assert_eq!(all.len() as u64, total);
    for (i, r) in all.iter().enumerate() {
        check(r, i as u64);
    }
    // The pre-zeroed region grew in steps; the file is only records + zeros.
    let s = pinion_journal::stat(&path).unwrap();
    assert!(
        s.file_bytes > s.valid_bytes && s.torn_tail.is_none(),
        "{s:?}"
    );
}

/// Tiny xorshift, for reproducible "random" offsets.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn seek_to_random_offsets_and_boundaries() {
    let dir = TempDir::new("seek");
    let path = dir.join("j");
    let n = 700;
    build(&path, opts(0), n, 33); // index_interval 16
    let (j, _) = Journal::open(&path, opts(0)).unwrap();
    let mut targets = vec![0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 683, 688, 699, n];
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    targets.extend((0..300).map(|_| rng(&mut seed) % (n + 1)));
    for mut r in [j.reader().unwrap(), Reader::open(&path).unwrap()] {
        assert_eq!(r.end_offset(), n);
        for &t in &targets {
            r.seek(t).unwrap();
            assert_eq!(r.offset(), t);
            match r.next() {
                Some(rec) => check(&rec.unwrap(), t),
                None => assert_eq!(t, n),
            }
            if t + 1 < n {
                check(&r.next().unwrap().unwrap(), t + 1);
            }
        }
        // Backwards, one by one.
        for t in (0..n).rev().step_by(7) {
            r.seek(t).unwrap();
            check(&r.next().unwrap().unwrap(), t);
        }
        assert!(
            matches!(r.seek(n + 1), Err(JournalError::OffsetOutOfRange { offset, end }) if offset == n + 1 && end == n)
        );
        r.seek(n).unwrap();
        assert!(r.next().is_none());
    }
}

#[test]
fn reader_follows_commits_from_another_thread() {
    let dir = TempDir::new("follow");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(1 << 20)).unwrap();
    let mut r = j.reader().unwrap();
    let (tx, rx) = mpsc::channel();
    let total = 2000u64;
    let t = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = 0u64;
        while got < total {
            assert!(Instant::now() < deadline, "reader stuck at {got}");
            match r.next() {
                Some(rec) => {
                    let rec = rec.unwrap();
                    check(&rec, got);
                    got += 1;
                }
                None => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        tx.send(got).unwrap();
        assert!(r.next().is_none());
    });
    let mut i = 0;
    while i < total {
        let k = (i % 13 + 1).min(total - i);
        append_range(&mut j, i, k);
        j.commit(i % 2 == 0).unwrap();
        i += k;
    }
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), total);
    t.join().unwrap();
}

#[test]
fn standalone_reader_follows_the_file() {
    let dir = TempDir::new("follow-standalone");
    let path = dir.join("j");
    for prealloc in [0, 1 << 20] {
        let _ = std::fs::remove_file(&path);
        let (mut j, _) = Journal::open(&path, opts(prealloc)).unwrap();
        append_range(&mut j, 0, 10);
        j.commit(true).unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.end_offset(), 10);
        for i in 0..10 {
            check(&r.next().unwrap().unwrap(), i);
        }
        assert!(r.next().is_none());
        append_range(&mut j, 10, 50);
        j.commit(false).unwrap();
        for i in 10..60 {
            check(&r.next().unwrap().unwrap(), i);
        }
        assert!(r.next().is_none());
        assert_eq!(r.end_offset(), 60);
        // Seeking beyond the known end discovers new records.
        append_range(&mut j, 60, 40);
        j.commit(false).unwrap();
        r.seek(95).unwrap();
        check(&r.next().unwrap().unwrap(), 95);
    }
}

#[test]
fn uncommitted_records_are_invisible_and_dropped_with_the_journal() {
    let dir = TempDir::new("pending");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(0)).unwrap();
    append_range(&mut j, 0, 3);
    j.commit(true).unwrap();
    append_range(&mut j, 3, 4);
    assert_eq!(
        (j.pending_records(), j.next_offset(), j.committed_offset()),
        (4, 7, 3)
    );
    let mut r = j.reader().unwrap();
    assert_eq!(r.end_offset(), 3);
    assert!(matches!(
        r.seek(5),
        Err(JournalError::OffsetOutOfRange { end: 3, .. })
    ));
    r.seek(3).unwrap();
    assert!(r.next().is_none());
    assert_eq!(read_all(&path).len(), 3);
    drop(j);
    let (j, rep) = Journal::open(&path, opts(0)).unwrap();
    assert_eq!((rep.records, j.next_offset()), (3, 3));
}

#[test]
fn unsynced_commits_are_synced_by_an_empty_sync_commit() {
    let dir = TempDir::new("sync-empty");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(0)).unwrap();
    append_range(&mut j, 0, 5);
    j.commit(false).unwrap();
    j.commit(true).unwrap();
    j.commit(true).unwrap();
    assert_eq!(j.committed_offset(), 5);
    assert_eq!(read_all(&path).len(), 5);
}

#[test]
fn caller_errors_append_nothing() {
    let dir = TempDir::new("caller");
    let path = dir.join("j");
    let o = JournalOptions {
        max_record_bytes: 200,
        ..opts(0)
    };
    let (mut j, _) = Journal::open(&path, o).unwrap();
    let payload = vec![0u8; 200 - 64 - 3 + 1];
    let rec = NewRecord {
        timestamp_us: 0,
        client_id: [0; 16],
        seq: 0,
        topic: b"abc",
        payload: &payload,
    };
    let e = j.append(&rec).unwrap_err();
    assert!(
        matches!(e, JournalError::RecordTooLarge { len: 201, max: 200 }),
        "{e:?}"
    );
    assert_eq!(e.fault(), Fault::Caller);
    let ok = NewRecord {
        payload: &payload[1..],
        ..rec
    };
    assert_eq!(j.append(&ok).unwrap(), 0);
    let topic = vec![b'a'; 65536];
    let e = j
        .append(&NewRecord {
            topic: &topic,
            payload: b"",
            ..rec
        })
        .unwrap_err();
    assert!(matches!(e, JournalError::TopicTooLong { len: 65536 }));
    assert_eq!((j.next_offset(), j.pending_records()), (1, 1));
    j.commit(true).unwrap();

    for bad in [
        JournalOptions {
            index_interval: 0,
            ..opts(0)
        },
        JournalOptions {
            max_record_bytes: 55,
            ..opts(0)
        },
        JournalOptions {
            max_record_bytes: (64 << 20) + 1,
            ..opts(0)
        },
    ] {
        let e = Journal::open(&dir.join("other"), bad).unwrap_err();
        assert!(matches!(e, JournalError::InvalidOptions(_)), "{e:?}");
    }
    assert!(!dir.join("other").exists());
}

#[test]
fn second_writer_is_locked_out() {
    let dir = TempDir::new("lock");
    let path = dir.join("j");
    let (j, _) = Journal::open(&path, opts(0)).unwrap();
    let e = Journal::open(&path, opts(0)).unwrap_err();
    assert!(matches!(e, JournalError::Locked), "{e:?}");
    assert!(matches!(
        pinion_journal::repair(&path),
        Err(JournalError::Locked)
    ));
    // Readers are not locked out.
    assert_eq!(Reader::open(&path).unwrap().end_offset(), 0);
    drop(j);
    Journal::open(&path, opts(0)).unwrap();
}

#[test]
fn creation_replaces_a_leftover_temp_file() {
    let dir = TempDir::new("create");
    let path = dir.join("j");
    // A leftover from a crash during creation is overwritten.
    std::fs::write(dir.join("j.creating"), b"junk").unwrap();
    let (_j, rep) = Journal::open(&path, opts(64 << 10)).unwrap();
    assert!(rep.created);
    assert!(!dir.join("j.creating").exists());
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len >= 32 + (64 << 10), "pre-zeroed at creation: {len}");
}

#[test]
fn journal_and_reader_can_move_to_other_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Journal>();
    send_sync::<Reader>();
    send_sync::<JournalError>();
}
