//! Arbitrary bytes after a valid journal header (version 1 or 2, chosen by
//! the first byte) as a file: every reader of the journal (verify, stat,
//! the standalone reader, and the writer's open) must return records or a
//! typed error, never panic, never allocate beyond the file; a file the
//! writer opened (torn tails cut) must then verify cleanly with the same
//! number of records. The records also go through the cluster's
//! records-to-entries assembler (batch entries span several records).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use pinion_cluster::codec::EntryAssembler;
use pinion_journal::{verify, Journal, JournalOptions, Reader};

fn header(version: u16) -> Vec<u8> {
    use std::sync::OnceLock;
    static H: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    let h = H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pinion-fuzz-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = [Vec::new(), Vec::new()];
        for v in [1u16, 2] {
            let p = dir.join(format!("v{v}"));
            let _ = std::fs::remove_file(&p);
            let o = JournalOptions { preallocate: 0, create_version: v, ..JournalOptions::default() };
            drop(Journal::open(&p, o).unwrap());
            out[usize::from(v - 1)] = std::fs::read(&p).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        out
    });
    h[usize::from(version - 1)].clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let version = if sel & 1 == 0 { 2 } else { 1 };
    let mut file = header(version);
    // Optionally damage the header's state slots too (version 2).
    if sel & 2 != 0 && version == 2 && !body.is_empty() {
        let i = 32 + usize::from(body[0]) % 256;
        file[i] ^= body.get(1).copied().unwrap_or(1) | 1;
    }
    file.extend_from_slice(body);
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() { dir.to_path_buf() } else { std::env::temp_dir() };
    let path = dir.join(format!("pinion-fuzz-journal-{}", std::process::id()));
    std::fs::File::create(&path).unwrap().write_all(&file).unwrap();

    let verified = verify(&path);
    let _ = pinion_journal::stat(&path);
    if let Ok(mut r) = Reader::open(&path) {
        // Records into Raft entries, as the cluster's log store reads them:
        // typed errors only; indexes advance one per completed entry.
        let mut asm = EntryAssembler::new(0);
        let mut n = 0u64;
        while let Some(rec) = r.next() {
            let Ok(rec) = rec else { break };
            if n > 100_000 {
                break;
            }
            let before = asm.next_index;
            match asm.push(rec) {
                Ok(Some(e)) => {
                    assert_eq!(e.log_id.index, before);
                    assert_eq!(asm.next_index, before + 1);
                }
                Ok(None) => assert!(asm.in_entry()),
                Err(_) => break,
            }
            n += 1;
        }
    }
    let o = JournalOptions { preallocate: 0, ..JournalOptions::default() };
    if let Ok((j, rep)) = Journal::open(&path, o) {
        if let Ok(v) = &verified {
            assert_eq!(v.records, rep.records, "verify and open disagree");
        }
        drop(j);
        let again = verify(&path).expect("a file the writer opened verifies");
        assert_eq!((again.records, again.torn_tail), (rep.records, None));
    }
    let _ = std::fs::remove_file(&path);
});
