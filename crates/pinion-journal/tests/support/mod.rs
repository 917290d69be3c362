//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use pinion_journal::{Journal, JournalOptions, NewRecord, Reader, Record};

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pinion-journal-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn opts(preallocate: u64) -> JournalOptions {
    JournalOptions {
        preallocate,
        index_interval: 16,
        ..JournalOptions::default()
    }
}

/// Deterministic content of record `i`: sizes vary so padding varies.
pub fn content(i: u64) -> (Vec<u8>, Vec<u8>) {
    let topic = format!("topic/{}", i % 7).into_bytes();
    let payload: Vec<u8> = (0..(i * 37 % 300))
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect();
    (topic, payload)
}

pub fn client(i: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&(i % 5).to_le_bytes());
    c[15] = 0xC1;
    c
}

/// Appends records `start..start + n` with `content(i)`.
pub fn append_range(j: &mut Journal, start: u64, n: u64) {
    for i in start..start + n {
        let (topic, payload) = content(i);
        let rec = NewRecord {
            timestamp_us: 1_000_000 + i,
            client_id: client(i),
            seq: i * 3,
            topic: &topic,
            payload: &payload,
        };
        assert_eq!(j.append(&rec).unwrap(), i);
    }
}

/// Checks that `r` is record `i` as written by `append_range`.
#[track_caller]
pub fn check(r: &Record, i: u64) {
    let (topic, payload) = content(i);
    assert_eq!(r.offset, i);
    assert_eq!(r.timestamp_us, 1_000_000 + i);
    assert_eq!(r.client_id, client(i));
    assert_eq!(r.seq, i * 3);
    assert_eq!(&r.topic[..], &topic[..]);
    assert_eq!(&r.payload[..], &payload[..]);
}

/// Creates a journal with `n` records in commits of `per_commit`.
pub fn build(path: &Path, o: JournalOptions, n: u64, per_commit: u64) {
    let (mut j, rep) = Journal::open(path, o).unwrap();
    let mut i = rep.records;
    while i < rep.records + n {
        let k = per_commit.min(rep.records + n - i);
        append_range(&mut j, i, k);
        j.commit(true).unwrap();
        i += k;
    }
}

/// All records a fresh standalone reader returns; panics on errors.
pub fn read_all(path: &Path) -> Vec<Record> {
    let mut r = Reader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        out.push(rec.unwrap());
    }
    out
}

/// Position and slot length of each record.
pub fn layout(path: &Path) -> Vec<(u64, u64)> {
    read_all(path)
        .iter()
        .map(|r| (r.byte_pos, u64::from(r.byte_len)))
        .collect()
}
