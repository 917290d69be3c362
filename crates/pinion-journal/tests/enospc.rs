//! ENOSPC is recoverable: on a 256 KiB tmpfs, commits run until the
//! filesystem is full; the failed commit leaves nothing behind, and after
//! space is freed the next commit succeeds. Needs root (mount); fails, not
//! skips, without it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use pinion_journal::{verify, Fault, Journal, JournalOptions, Reader};
use support::{append_range, check, TempDir};

/// A tmpfs mounted on a fresh temp dir, unmounted on drop (also when the
/// test panics).
struct Tmpfs {
    mount_point: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = TempDir::new(name);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root): mount -t tmpfs -o size={size} tmpfs {} failed: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            mount_point: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a leaked descriptor): detach lazily rather than leave it mounted.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn fill_until_enospc(preallocate: u64) {
    let fs = Tmpfs::mount(&format!("enospc-{preallocate}"), "256k");
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0xAB; 64 << 10]).unwrap();
    let path = fs.path().join("journal");
    let o = JournalOptions {
        preallocate,
        index_interval: 8,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&path, o).unwrap();
    let initial_len = std::fs::metadata(&path).unwrap().len();

    let mut commits = 0;
    let err = loop {
        assert!(commits < 10_000, "never ran out of space");
        let start = j.next_offset();
        append_range(&mut j, start, 9); // ~1.4 KiB per commit
        match j.commit(true) {
            Ok(()) => commits += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_out_of_space(), "expected ENOSPC, got {err:?}");
    assert_eq!(err.fault(), Fault::Io);
    assert!(!j.is_poisoned());
    let committed = j.committed_offset();
    assert_eq!((j.next_offset(), j.pending_records()), (committed, 0));
    assert_eq!(committed, commits * 9);
    assert!(commits > 10, "only {commits} commits fit");
    if preallocate > 0 {
        // The commits went on past the pre-zeroed region (its extension
        // failed for lack of space without failing a commit).
        assert!(
            verify(&path).unwrap().valid_bytes > initial_len,
            "never left the pre-zeroed region"
        );
    }

    // Nothing of the failed commit is visible.
    let v = verify(&path).unwrap();
    assert_eq!((v.records, v.torn_tail), (committed, None));
    let mut r = Reader::open(&path).unwrap();
    let mut n = 0;
    while let Some(rec) = r.next() {
        check(&rec.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, committed);
    // Still full: failing again is harmless.
    append_range(&mut j, committed, 9);
    assert!(j.commit(true).unwrap_err().is_out_of_space());
    assert_eq!(j.next_offset(), committed);

    // Free space; the next commit succeeds.
    std::fs::remove_file(&filler).unwrap();
    append_range(&mut j, committed, 9);
    j.commit(true).unwrap();
    append_range(&mut j, committed + 9, 9);
    j.commit(true).unwrap();
    assert!(r.next().is_some(), "reader sees the new records");
    drop(j);
    let (j, rep) = Journal::open(&path, o).unwrap();
    assert_eq!((rep.records, rep.truncated), (committed + 18, None));
    drop((j, r));
}

#[test]
fn enospc_is_recoverable_with_plain_appends() {
    fill_until_enospc(0);
}

#[test]
fn enospc_is_recoverable_with_preallocation() {
    fill_until_enospc(64 << 10);
}
