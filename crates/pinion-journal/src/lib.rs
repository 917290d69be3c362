//! The hub's durable log: one append-only file of CRC32C-checked records.
//!
//! One writer thread owns the [`Journal`]: it [`append`](Journal::append)s
//! every pending publish (encoding into memory, no I/O), then calls
//! [`commit(true)`](Journal::commit) once — one `pwrite` and one
//! `fdatasync` for the whole batch — and only then acknowledges the batch
//! (group commit). Any number of [`Reader`]s, each with its own file
//! descriptor, iterate from any offset concurrently and follow new commits.
//! Offsets are logical record numbers 0, 1, 2, …; a sparse in-memory index
//! (one entry per [`JournalOptions::index_interval`] records) maps them to
//! byte positions.
//!
//! This crate spawns no threads, reads no clock except to stamp a new file,
//! and never panics on file content: every length read from disk is checked
//! against the file size and [`MAX_RECORD_LEN`] before anything is
//! allocated.
//!
//! ```
//! use pinion_journal::{Journal, JournalOptions, NewRecord};
//!
//! # let dir = std::env::temp_dir().join(format!("pinion-journal-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("hub.journal");
//! let opts = JournalOptions { preallocate: 1 << 20, ..JournalOptions::default() };
//! let (mut journal, report) = Journal::open(&path, opts)?;
//! assert!(report.created);
//!
//! let mut reader = journal.reader()?;
//! for seq in 0..3 {
//!     let rec = NewRecord { timestamp_us: 1, client_id: [7; 16], seq, topic: b"orders", payload: b"hello" };
//!     assert_eq!(journal.append(&rec)?, seq);
//! }
//! assert!(reader.next().is_none(), "nothing is visible before the commit");
//! journal.commit(true)?; // one write + one fdatasync; now ACK the three publishes
//!
//! let rec = reader.next().unwrap()?;
//! assert_eq!((rec.offset, &rec.topic[..], &rec.payload[..]), (0, &b"orders"[..], &b"hello"[..]));
//! reader.seek(2)?;
//! assert_eq!(reader.next().unwrap()?.seq, 2);
//! assert!(reader.next().is_none());
//!
//! drop(journal);
//! let (journal, report) = Journal::open(&path, opts)?;
//! assert_eq!((report.records, report.truncated), (3, None));
//! assert_eq!(journal.next_offset(), 3);
//! # drop(journal);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), pinion_journal::JournalError>(())
//! ```
//!
//! # File format
//!
//! Two versions exist. **Version 2** is what new journals are created with
//! (and what a cluster node needs: it carries Raft terms and state);
//! **version 1** files, written by earlier builds, are still opened, read
//! and appended to by the single-node hub, and refused by every Raft
//! operation with [`JournalError::NeedsVersion2`] (whose message names
//! `pinion log upgrade`). The version is fixed per file.
//!
//! All integers are little-endian. The file is a header followed by
//! records, each starting on a multiple of 8 bytes, followed by zero bytes
//! (the pre-zeroed region) or nothing.
//!
//! File header (the first 32 bytes, both versions):
//!
//! | bytes  | field            | value |
//! |--------|------------------|-------|
//! | 0..8   | magic            | `PINIONLG` |
//! | 8..10  | version          | u16 = 1 or 2 |
//! | 10..12 | flags            | u16 = 0 (a reader refuses unknown flags) |
//! | 12..16 | header length    | u32: 32 in version 1, 288 in version 2; the first record starts here |
//! | 16..24 | created          | u64, µs since the Unix epoch |
//! | 24..28 | reserved         | 0 |
//! | 28..32 | header CRC       | CRC32C (Castagnoli) of bytes 0..28 |
//!
//! In version 2 two **Raft state slots** of 128 bytes follow, at bytes
//! 32..160 and 160..288. They hold what Raft needs besides the entries
//! ([`RaftState`]):
//!
//! | bytes    | field | value |
//! |----------|-------|-------|
//! | 0..8     | generation | u64 ≥ 1, incremented by every write |
//! | 8..16    | first index | u64, the offset of the first record in the file |
//! | 16..24   | vote term | u64 |
//! | 24..32   | voted for | u64, node id |
//! | 32       | flags | bit 0 a vote is present, bit 1 the vote is committed, bit 2 a committed position is present, bit 3 a purged position is present, bit 4 a voted-for node is present; other bits 0 |
//! | 33..40   | reserved | 0 |
//! | 40..56   | committed | term u64, index u64 |
//! | 56..72   | purged | term u64, index u64 |
//! | 72..80   | first entry | u64, the Raft index of the entry the first record belongs to (0 unless the log was reset) |
//! | 80..124  | reserved | 0 |
//! | 124..128 | CRC | CRC32C of bytes 0..124 |
//!
//! A write goes to the slot *not* holding the current state, so a torn
//! write damages only the slot being written; at open the intact slot with
//! the higher generation wins. Both slots damaged is corruption
//! ([`CorruptKind::StateSlots`]). A new file gets the empty state in both
//! slots (generations 1 and 2). The header and the records are separate
//! regions, so writing the state never overwrites a record, and cutting
//! records never loses a vote.
//!
//! Record, version 1 (56-byte header, then topic and payload):
//!
//! | bytes     | field          | value |
//! |-----------|----------------|-------|
//! | 0..4      | length         | u32 = 56 + topic length + payload length (padding excluded); 0 = end of log |
//! | 4..8      | CRC            | CRC32C of bytes 8..length (everything after the CRC, padding excluded) |
//! | 8..16     | offset         | u64, the record's logical number; must equal its position in the sequence |
//! | 16..24    | timestamp      | u64, µs since the Unix epoch (as given by the writer) |
//! | 24..40    | client id      | 16 bytes |
//! | 40..48    | seq            | u64, the client's sequence number |
//! | 48..50    | topic length   | u16 |
//! | 50..54    | payload length | u32 |
//! | 54..56    | reserved       | u16 = 0 |
//! | 56..      | topic, payload | |
//! | length..  | padding        | zeros up to the next multiple of 8 |
//!
//! Record, version 2 (64-byte header): bytes 0..54 as in version 1, then
//!
//! | bytes     | field          | value |
//! |-----------|----------------|-------|
//! | 54        | kind           | u8: 0 a published message, 1 a Raft blank entry (no topic, no payload), 2 a Raft membership entry (the payload is the encoded membership; the journal does not interpret it) |
//! | 55        | flags          | bit 0 *continued*: the next record belongs to the same Raft entry (messages only); other bits 0 |
//! | 56..64    | term           | u64, the Raft term (0 in a single-node log) |
//! | 64..      | topic, payload | |
//!
//! and the length is 64 + topic length + payload length. In a Raft log an
//! entry is one record (blank, membership) or several consecutive message
//! records (a batch), all but the last flagged *continued*; so Raft
//! indexes and offsets differ, but every node writes the same entries and
//! an offset names the same record on every node. Blank and membership
//! entries take offsets too (readers that serve subscribers skip them).
//! The first record's offset is the header's first index (0 unless the log
//! was reset past its end, see [`Journal::reset`]); the Raft index of its
//! entry is the state's *first entry*. The journal itself does not group
//! records into entries: its Raft user does (and cuts an entry that was
//! only partly written).
//!
//! The length field is not under the CRC but is cross-checked: it must equal
//! the record header length + topic length + payload length (both
//! CRC-covered), lie between the header length and [`MAX_RECORD_LEN`]
//! (64 MiB), and the record must fit in the file. Padding, reserved bytes
//! and unknown kinds are damage. A record is *valid* when all of these hold, the CRC
//! matches and its offset is the one expected at that position; a stale or
//! misplaced record (right CRC, wrong offset) is damage.
//!
//! # Finding the end, torn tails and corruption
//!
//! A scan starts after the header expecting the first index and follows valid
//! records. The first position that is not a valid record ends the log;
//! the bytes from there to the end of the file decide what happened:
//!
//! * **only zeros, or nothing** (length 0 and a zero remainder, e.g. the
//!   pre-zeroed region): the clean end.
//! * **non-zero bytes but no valid record anywhere after** (a short record,
//!   a bad CRC, garbage in the pre-zeroed region): a **torn tail** — a
//!   commit that never completed, so never acknowledged.
//!   [`Journal::open`] cuts it (truncates the file, or zeroes it when zeros
//!   follow, i.e. in a pre-zeroed file), fdatasyncs and reports it in
//!   [`OpenReport::truncated`]; a second open finds nothing.
//! * **a valid record after the damage** (any 8-byte aligned position
//!   after the damaged record, holding a record with a matching CRC and an
//!   offset that can follow): **corruption** of data that was committed.
//!   Open, [`verify`] and [`stat`] return [`JournalError::Corrupt`] with the
//!   byte position and the offset expected there, and modify nothing; a
//!   record is never skipped silently. [`Reader::open`] serves the records
//!   before the damage, then returns the same error. [`repair`] is the
//!   explicit operator tool that cuts the file at the damage.
//!
//! One ambiguity is inherent to any log: damage confined to the very last
//! committed record(s), with nothing valid after, looks exactly like a torn
//! write and is cut. Conversely, if power fails while an unsynced commit is
//! being written back, its pages may reach the disk out of order; a hole
//! followed by a later record of the same batch then looks like corruption
//! and needs `repair` (that batch was never acknowledged).
//!
//! # Raft truncation is not torn-tail recovery
//!
//! [`Journal::truncate`] removes a follower's conflicting, *uncommitted*
//! tail, as Raft requires: the records are zeroed (in the pre-zeroed
//! region) or the file is truncated, and one fdatasync makes the cut
//! durable, leaving a clean end, never a torn tail. It refuses any index at
//! or below the committed position recorded in the header
//! ([`JournalError::TruncateCommitted`]): cutting a committed entry is a
//! bug, and nothing is modified. Torn-tail recovery at open only removes
//! bytes no commit ever completed; corruption still stops the node.
//! [`Journal::reset`] empties the log when Raft purges past its end (a
//! snapshot covers everything), cutting the records first and then moving
//! the header's first index.
//!
//! # What `commit` guarantees
//!
//! [`Journal::commit`] writes all pending records at the committed end with
//! one positioned write (looping on short writes). With `sync = true` it
//! then calls `fdatasync` once: when it returns `Ok`, every record up to
//! [`Journal::committed_offset`] is on stable storage as far as the kernel
//! and device honour a flush. With `sync = false` the records are in the
//! page cache: they survive a crash of the process, not of the machine, and
//! the next `commit(true)` (even with nothing pending) makes them durable.
//! Choosing when to sync and when to acknowledge is the hub's job.
//!
//! On any error the commit's records are dropped and the file is put back
//! to its last committed length, so the journal stays usable: after ENOSPC
//! ([`JournalError::is_out_of_space`]) a later commit succeeds once space is
//! freed. A failed `fdatasync` additionally **poisons** the journal: the
//! kernel may have discarded the dirty pages and a retried fsync would
//! report success without the data ("fsyncgate"), so `append`/`commit`
//! return [`JournalError::Poisoned`] until [`Journal::recover`] reopens the
//! file, re-verifies and rewrites the records since the last good sync,
//! cuts the rest and syncs again.
//!
//! # Pre-zeroing
//!
//! On ext4, an fdatasync after growing a file must also commit the
//! filesystem journal (new size, block allocation); after overwriting blocks
//! that were already written it need not, which roughly halves its cost.
//! With [`JournalOptions::preallocate`] > 0 the file is kept
//! `preallocate` bytes of written zeros ahead of the last record: at
//! creation and open, and, when less than half is left, by the commit
//! itself before it writes its records (at most 4 MiB of zeros per commit,
//! covered by that commit's own fdatasync), or by
//! [`Journal::extend_preallocation`] when the writer is idle. If the
//! filesystem is full, the journal falls back to plain appends. The end of
//! the log is then the first record slot whose length field is 0 with only
//! zeros after it. (`fallocate` does not help: converting unwritten extents
//! is journalled too.)
//!
//! Measured with `examples/commit_bench.rs` (one writer, N records with
//! 256-byte payloads per `commit(true)`) on the 2-vCPU VM (ext4 on virtio,
//! `discard`, write-back cache), 2026-11-22, under `chrt -f 10` with other
//! engineers' builds running (load 2–4): ranges over 3 alternating runs of
//! 4 s each. Noisy; read it as "what this VM did", not as a spec.
//!
//! | records/commit | preallocate | commits/s | p50 µs | p99 µs |
//! |---|---|---|---|---|
//! | 1  | off    | 3.7k–5.7k | 150–203 | 309–3,427 |
//! | 1  | 64 MiB | 6.4k–6.8k | 137–151 | 270–353 |
//! | 16 | off    | 2.2k–3.8k | 257–263 | 351–6,509 |
//! | 16 | 64 MiB | 5.4k–7.2k | 132–170 | 216–318 |
//! | 64 | off    | 0.8k–2.9k | 195–319 | 861–4,110 |
//! | 64 | 64 MiB | 5.7k–7.3k (≈ 360k–470k records/s) | 89–99 | 156–421 |
//!
//! Pre-zeroed commits are ~1.5–2× cheaper at the median and, more
//! importantly, avoid the ~4 ms mode that plain appends hit when the
//! filesystem journal thread (not real-time) waits for a CPU. The price is
//! the commit that extends the region: writing and flushing up to 4 MiB of
//! zeros took 10–38 ms (the max column; under 0.5% of commits here, so not
//! in p99) — call [`Journal::extend_preallocation`] when idle to move it out
//! of the ACK path — and each byte is written twice. At normal priority the
//! same runs were dominated by the 4 ms scheduling mode in both modes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod format;
mod inspect;
mod journal;
mod reader;
mod scan;

pub use error::{CorruptKind, Fault, JournalError};
pub use format::{
    HeaderInfo, LogPos, RaftState, RecordKind, StoredVote, HEADER_LEN, MAGIC, MAX_RECORD_LEN,
    RECORD_HEADER_LEN, RECORD_HEADER_LEN_V2, STATE_SLOT_LEN, VERSION,
};
pub use inspect::{
    read_raft_state, repair, stat, upgrade, verify, RecordSummary, Stat, UpgradeReport,
    VerifyReport,
};
pub use journal::{
    Journal, JournalOptions, NewEntry, NewRecord, OpenReport, ReaderSource, Truncation,
};
pub use reader::{Reader, Record};

#[cfg(test)]
mod tests;
