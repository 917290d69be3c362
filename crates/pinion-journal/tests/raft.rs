//! The journal as a Raft log (format version 2): entries with terms and
//! kinds, the Raft state in the header, conflict truncation (distinct from
//! torn tails and refused below the committed index), resets past the end,
//! and a model-based property test of all of it across reopens.

mod support;

use pinion_journal::{
    verify, Journal, JournalError, JournalOptions, LogPos, NewEntry, NewRecord, RaftState, Reader,
    RecordKind, StoredVote,
};
use proptest::prelude::*;
use support::{opts, TempDir};

/// What entry `index` of term `term` holds in these tests.
fn payload(index: u64, term: u64) -> Vec<u8> {
    format!("entry {index} of term {term}").into_bytes()
}

fn kind_of(index: u64) -> RecordKind {
    match index % 5 {
        3 => RecordKind::Blank,
        4 => RecordKind::Membership,
        _ => RecordKind::Message,
    }
}

/// Whether the test marks record `index` as continued by the next one
/// (messages only; the journal ignores the flag on other kinds).
fn continued(index: u64) -> bool {
    kind_of(index) == RecordKind::Message && index.is_multiple_of(2)
}

fn append(j: &mut Journal, index: u64, term: u64) {
    let p = payload(index, term);
    let kind = kind_of(index);
    let (topic, body): (&[u8], &[u8]) = match kind {
        RecordKind::Message => (b"t", &p),
        RecordKind::Blank => (b"", b""),
        RecordKind::Membership => (b"", &p),
    };
    j.append_entry(&NewEntry {
        index,
        term,
        kind,
        continued: continued(index),
        timestamp_us: index,
        client_id: [index as u8; 16],
        seq: index,
        topic,
        payload: body,
    })
    .unwrap();
}

/// Reads every record with a standalone reader: (index, term, kind).
fn read_all(j: &Journal) -> Vec<(u64, u64, RecordKind)> {
    let mut r = Reader::open(j.path()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == RecordKind::Message {
            assert_eq!(&rec.payload[..], &payload(rec.offset, rec.term)[..]);
        }
        assert_eq!(
            rec.continued,
            continued(rec.offset),
            "record {}",
            rec.offset
        );
        out.push((rec.offset, rec.term, rec.kind));
    }
    out
}

#[test]
fn entries_keep_term_and_kind_and_the_state_survives_reopen() {
    let dir = TempDir::new("raft-basic");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(0)).unwrap();
    assert_eq!(j.version(), 2);
    for i in 0..10 {
        append(&mut j, i, 1 + i / 4);
    }
    j.commit(true).unwrap();
    let st = RaftState {
        first_index: 0,
        vote: Some(StoredVote {
            term: 3,
            node_id: Some(2),
            committed: true,
        }),
        committed: Some(LogPos { term: 3, index: 6 }),
        purged: Some(LogPos { term: 1, index: 1 }),
        first_entry: 0,
    };
    j.set_raft_state(&st, true).unwrap();
    // The wrong index is refused and appends nothing.
    let e = j
        .append_entry(&NewEntry {
            index: 12,
            term: 3,
            kind: RecordKind::Blank,
            continued: false,
            timestamp_us: 0,
            client_id: [0; 16],
            seq: 0,
            topic: b"",
            payload: b"",
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::OutOfOrder {
                index: 12,
                expected: 10
            }
        ),
        "{e:?}"
    );
    drop(j);
    let (j, rep) = Journal::open(&path, opts(0)).unwrap();
    assert_eq!(rep.records, 10);
    assert_eq!(j.raft_state(), &st);
    let all = read_all(&j);
    let want: Vec<_> = (0..10).map(|i| (i, 1 + i / 4, kind_of(i))).collect();
    assert_eq!(all, want);
    assert_eq!(pinion_journal::stat(&path).unwrap().raft, st);
}

#[test]
fn truncation_cuts_the_uncommitted_tail_only() {
    for prealloc in [0, 256 << 10] {
        let dir = TempDir::new("raft-truncate");
        let path = dir.join("j");
        let (mut j, _) = Journal::open(&path, opts(prealloc)).unwrap();
        for i in 0..40 {
            append(&mut j, i, 1);
        }
        j.commit(true).unwrap();
        let mut follower = j.reader().unwrap();
        while follower.next().is_some() {}
        assert_eq!(follower.offset(), 40);
        let mut st = *j.raft_state();
        st.committed = Some(LogPos { term: 1, index: 20 });
        j.set_raft_state(&st, false).unwrap();

        // At or below the committed index: refused, nothing changes.
        for at in [0, 19, 20] {
            let e = j.truncate(at).unwrap_err();
            assert!(
                matches!(e, JournalError::TruncateCommitted { committed: 20, .. }),
                "{e:?}"
            );
        }
        assert_eq!(j.next_offset(), 40);
        // Above it: the conflicting tail goes, new entries of a later term follow.
        j.truncate(25).unwrap();
        assert_eq!((j.next_offset(), j.committed_offset()), (25, 25));
        // A reader that had read past the cut steps back to the new end.
        assert!(follower.next().is_none());
        assert_eq!(follower.offset(), 25);
        for i in 25..30 {
            append(&mut j, i, 2);
        }
        j.commit(true).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| follower.next())
            .map(|r| r.unwrap().term)
            .collect();
        assert_eq!(
            got,
            vec![2; 5],
            "the follower reads the new entries, not stale bytes"
        );
        // Truncating at or past the end is a no-op.
        j.truncate(30).unwrap();
        j.truncate(99).unwrap();
        drop(j);

        // The cut is a clean end: no torn tail, nothing corrupt.
        let v = verify(&path).unwrap();
        assert_eq!((v.records, v.torn_tail), (30, None));
        let (j, rep) = Journal::open(&path, opts(prealloc)).unwrap();
        assert_eq!((rep.records, rep.truncated), (30, None));
        let all = read_all(&j);
        assert_eq!(all.len(), 30);
        assert!(all[..25].iter().all(|&(_, t, _)| t == 1));
        assert!(all[25..].iter().all(|&(_, t, _)| t == 2));
    }
}

#[test]
fn reset_past_the_end_and_restart_anywhere_when_empty() {
    let dir = TempDir::new("raft-reset");
    let path = dir.join("j");
    let (mut j, _) = Journal::open(&path, opts(64 << 10)).unwrap();
    for i in 0..10 {
        append(&mut j, i, 1);
    }
    j.commit(true).unwrap();
    let e = j.reset(5, None).unwrap_err();
    assert!(
        matches!(e, JournalError::OutOfOrder { .. }),
        "cannot reset backwards: {e:?}"
    );
    let purged = LogPos { term: 1, index: 20 };
    j.reset(21, Some(purged)).unwrap();
    assert_eq!((j.first_offset(), j.next_offset()), (21, 21));
    assert_eq!(j.raft_state().purged, Some(purged));
    for i in 21..25 {
        append(&mut j, i, 2);
    }
    j.commit(true).unwrap();
    drop(j);
    let (mut j, rep) = Journal::open(&path, opts(64 << 10)).unwrap();
    assert_eq!(
        (rep.records, j.first_offset(), j.next_offset()),
        (4, 21, 25)
    );
    let all = read_all(&j);
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![21, 22, 23, 24]
    );
    let mut r = j.reader().unwrap();
    r.seek(3).unwrap();
    assert_eq!(r.offset(), 21, "below the first record: start at the first");
    r.seek(23).unwrap();
    assert_eq!(r.next().unwrap().unwrap().offset, 23);

    // Empty the log by truncation, then the next entry may start anywhere
    // beyond (the header's first index moves, durably).
    j.truncate(21).unwrap();
    assert_eq!(j.next_offset(), 21);
    append(&mut j, 40, 3);
    j.commit(true).unwrap();
    drop(j);
    let (j, _) = Journal::open(&path, opts(64 << 10)).unwrap();
    assert_eq!((j.first_offset(), j.next_offset()), (40, 41));
    assert_eq!(read_all(&j), vec![(40, 3, kind_of(40))]);
}

#[test]
fn version_1_files_refuse_raft_operations() {
    let dir = TempDir::new("raft-v1");
    let path = dir.join("j");
    let o = JournalOptions {
        create_version: 1,
        ..opts(0)
    };
    let (mut j, _) = Journal::open(&path, o).unwrap();
    j.append(&NewRecord {
        timestamp_us: 1,
        client_id: [1; 16],
        seq: 1,
        topic: b"t",
        payload: b"p",
    })
    .unwrap();
    j.commit(true).unwrap();
    assert_eq!(j.raft_state(), &RaftState::default());
    let e = j.set_raft_state(&RaftState::default(), true).unwrap_err();
    assert!(matches!(e, JournalError::NeedsVersion2));
    assert!(e.to_string().contains("pinion log upgrade"), "{e}");
    assert!(matches!(j.truncate(0), Err(JournalError::NeedsVersion2)));
    assert!(matches!(j.reset(5, None), Err(JournalError::NeedsVersion2)));
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    /// Append this many entries in the current term, then commit (synced or not).
    Append(u8, bool),
    /// A new term starts.
    NewTerm,
    /// Mark this fraction (of 256) of the log committed.
    Commit(u8),
    /// Truncate at this fraction (of 256) of the uncommitted tail.
    Truncate(u8),
    /// Purge everything and restart this far beyond the end.
    Reset(u8),
    /// Close and reopen the journal.
    Reopen,
    /// Write a new vote, synced.
    Vote(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20, any::<bool>()).prop_map(|(n, s)| Op::Append(n, s)),
        1 => Just(Op::NewTerm),
        2 => any::<u8>().prop_map(Op::Commit),
        2 => any::<u8>().prop_map(Op::Truncate),
        1 => (0u8..8).prop_map(Op::Reset),
        2 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Vote),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The journal agrees with a plain in-memory model after any sequence
    /// of appends, commits, truncations, resets, votes and reopens: same
    /// entries (index, term, kind, bytes), same Raft state; committed
    /// entries are never cut; every file verifies without a torn tail.
    #[test]
    fn journal_matches_the_model(ops in proptest::collection::vec(op(), 1..40), prealloc in prop_oneof![Just(0u64), Just(64u64 << 10)]) {
        let dir = TempDir::new("raft-model");
        let path = dir.join("j");
        let o = JournalOptions { index_interval: 4, ..opts(prealloc) };
        let (mut j, _) = Journal::open(&path, o).unwrap();
        let mut model: Vec<(u64, u64, RecordKind)> = Vec::new();
        let mut first = 0u64;
        let mut term = 1u64;
        let mut st = RaftState::default();
        for op in ops {
            let next = first + model.len() as u64;
            match op {
                Op::Append(n, sync) => {
                    for i in next..next + u64::from(n) {
                        append(&mut j, i, term);
                        model.push((i, term, kind_of(i)));
                    }
                    j.commit(sync).unwrap();
                }
                Op::NewTerm => term += 1,
                Op::Commit(f) => {
                    if !model.is_empty() {
                        let k = (model.len() - 1) * usize::from(f) / 255;
                        let (index, t, _) = model[k];
                        if st.committed.is_none_or(|c| c.index < index) {
                            st.committed = Some(LogPos { term: t, index });
                            j.set_raft_state(&st, false).unwrap();
                        }
                    }
                }
                Op::Truncate(f) => {
                    let lo = st.committed.map_or(first, |c| (c.index + 1).max(first));
                    if lo < next {
                        let at = lo + (next - lo) * u64::from(f) / 256;
                        j.truncate(at).unwrap();
                        model.truncate((at - first) as usize);
                    } else if let Some(c) = st.committed.filter(|c| c.index >= first && c.index < next) {
                        let refused = j.truncate(c.index).is_err();
                        prop_assert!(refused, "a committed entry was cut");
                    }
                }
                Op::Reset(gap) => {
                    let to = next + u64::from(gap);
                    let purged = LogPos { term, index: to.saturating_sub(1) };
                    j.reset(to, Some(purged)).unwrap();
                    st.purged = Some(purged);
                    st.first_index = to;
                    first = to;
                    model.clear();
                }
                Op::Reopen => {
                    drop(j);
                    let (j2, rep) = Journal::open(&path, o).unwrap();
                    prop_assert_eq!(rep.truncated, None);
                    prop_assert_eq!(rep.records, model.len() as u64);
                    j = j2;
                }
                Op::Vote(n) => {
                    st.vote = Some(StoredVote { term, node_id: (n % 3 != 0).then_some(u64::from(n)), committed: n % 2 == 0 });
                    j.set_raft_state(&st, true).unwrap();
                }
            }
            prop_assert_eq!(j.raft_state(), &st);
            prop_assert_eq!(j.next_offset(), first + model.len() as u64);
        }
        prop_assert_eq!(read_all(&j), model.clone());
        // A shared reader agrees too, from any position.
        let mut r = j.reader().unwrap();
        if let Some(&(mid, _, _)) = model.get(model.len() / 2) {
            r.seek(mid).unwrap();
            let rest: Vec<_> = std::iter::from_fn(|| r.next()).map(|x| x.unwrap().offset).collect();
            let want: Vec<_> = model[model.len() / 2..].iter().map(|e| e.0).collect();
            prop_assert_eq!(rest, want);
        }
        drop(j);
        let v = verify(&path).unwrap();
        prop_assert_eq!((v.records, v.torn_tail), (model.len() as u64, None));
        let (j, _) = Journal::open(&path, o).unwrap();
        prop_assert_eq!(j.raft_state(), &st);
        prop_assert_eq!(read_all(&j), model);
    }
}

#[test]
fn upgrade_rewrites_version_1_keeps_the_old_file_and_is_idempotent() {
    let dir = TempDir::new("raft-upgrade");
    let path = dir.join("pinion.log");
    let o = JournalOptions {
        create_version: 1,
        ..opts(64 << 10)
    };
    let (mut j, _) = Journal::open(&path, o).unwrap();
    support::append_range(&mut j, 0, 300);
    j.commit(true).unwrap();
    // While the hub holds the file, nothing happens.
    assert!(matches!(
        pinion_journal::upgrade(&path),
        Err(JournalError::Locked)
    ));
    drop(j);
    let before = std::fs::read(&path).unwrap();
    let rep = pinion_journal::upgrade(&path).unwrap();
    assert_eq!(
        (rep.already, rep.records, rep.torn_tail),
        (false, 300, None)
    );
    let kept = rep.kept_at.unwrap();
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        before,
        "the version-1 file is kept as it was"
    );
    let (mut j, open) = Journal::open(&path, opts(0)).unwrap();
    assert_eq!((j.version(), open.records), (2, 300));
    let mut r = j.reader().unwrap();
    for i in 0..300 {
        let rec = r.next().unwrap().unwrap();
        support::check(&rec, i);
        assert_eq!((rec.term, rec.kind), (0, RecordKind::Message));
    }
    // The upgraded log goes on, and can now hold Raft state.
    j.set_raft_state(&RaftState::default(), true).unwrap();
    drop(j);
    assert!(pinion_journal::upgrade(&path).unwrap().already);
    // A second version-1 file cannot be upgraded over a kept one.
    std::fs::copy(&kept, &path).unwrap();
    assert!(pinion_journal::upgrade(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing changed");
}
