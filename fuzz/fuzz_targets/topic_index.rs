//! Random inserts, removes and matches on the fan-out's topic index,
//! checked against a scan over every (prefix, subscriber) pair, with the
//! tree's invariants checked after every step. Prefixes and topics come
//! from subscribers' queries and publishers' envelopes, so they are
//! arbitrary bytes here.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pinion_hub::fanout::TopicIndex;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(Vec<u8>, u8),
    Remove(Vec<u8>, u8),
    RemoveHeld(u16),
    Match(Vec<u8>),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut idx = TopicIndex::new();
    let mut held: BTreeSet<(Vec<u8>, u64)> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Insert(p, s) => {
                let s = u64::from(s);
                assert_eq!(idx.insert(&p, s), held.insert((p, s)));
            }
            Op::Remove(p, s) => {
                let s = u64::from(s);
                assert_eq!(idx.remove(&p, s), held.remove(&(p, s)));
            }
            Op::RemoveHeld(i) => {
                if let Some(k) = held.iter().nth(usize::from(i) % held.len().max(1)).cloned() {
                    held.remove(&k);
                    assert!(idx.remove(&k.0, k.1));
                }
            }
            Op::Match(t) => {
                let mut got = Vec::new();
                idx.for_each_match(&t, |s| got.push(s));
                got.sort_unstable();
                let mut want: Vec<u64> = held
                    .iter()
                    .filter(|(p, _)| t.starts_with(p))
                    .map(|&(_, s)| s)
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want);
            }
        }
        idx.check();
        assert_eq!(idx.len(), held.len());
    }
});
