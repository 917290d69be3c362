//! The writer: [`Journal`].

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{CorruptKind, JournalError};
use crate::format::{self, Fields, Fmt, LogPos, RaftState, RecordKind, MAX_RECORD_LEN};
use crate::reader::Reader;
use crate::scan::{self, Tail};

/// Options of [`Journal::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Bytes to keep pre-zeroed ahead of the write position, so that most
    /// commits overwrite already-allocated blocks instead of growing the file
    /// (an fdatasync then needs no filesystem-journal commit for the file
    /// size). 0 = plain appends. Default 64 MiB.
    pub preallocate: u64,
    /// One sparse-index entry (offset → byte position) per this many
    /// records. Default 1024. Must be at least 1.
    pub index_interval: u32,
    /// Largest record `append` accepts: record header (56 bytes) + topic +
    /// payload. Default 1 MiB; at most [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN).
    pub max_record_bytes: u32,
    /// How much a commit extends the pre-zeroed region by when less than
    /// half of `preallocate` is left. The zeros are flushed by that
    /// commit's fdatasync, so this bounds the extra latency one commit
    /// pays (about `extend_step` / disk bandwidth); smaller steps spread the
    /// same work over more commits. Default 1 MiB.
    pub extend_step: u64,
    /// Format version of a journal this call creates (1 or 2; default 2,
    /// [`VERSION`](crate::VERSION)). An existing file keeps its version.
    pub create_version: u16,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            preallocate: 64 << 20,
            index_interval: 1024,
            max_record_bytes: 1 << 20,
            extend_step: 1 << 20,
            create_version: crate::VERSION,
        }
    }
}

impl JournalOptions {
    fn validate(&self) -> Result<(), JournalError> {
        if self.index_interval == 0 {
            return Err(JournalError::InvalidOptions(
                "index_interval must be at least 1",
            ));
        }
        if (self.max_record_bytes as usize) < format::RECORD_HEADER_LEN_V2
            || self.max_record_bytes > MAX_RECORD_LEN
        {
            return Err(JournalError::InvalidOptions(
                "max_record_bytes must be between 64 and 64 MiB",
            ));
        }
        if !(self.create_version == 1 || self.create_version == 2) {
            return Err(JournalError::InvalidOptions(
                "create_version must be 1 or 2",
            ));
        }
        Ok(())
    }
}

/// A record to append. The journal copies it; nothing is borrowed after
/// [`Journal::append`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord<'a> {
    /// Time of the publish, microseconds since the Unix epoch (not interpreted).
    pub timestamp_us: u64,
    /// The publisher's client id.
    pub client_id: [u8; 16],
    /// The publisher's sequence number.
    pub seq: u64,
    /// Topic, at most 65535 bytes.
    pub topic: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// A Raft log entry to append with [`Journal::append_entry`] (version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry<'a> {
    /// The entry's Raft index, which is its offset.
    pub index: u64,
    /// The entry's Raft term.
    pub term: u64,
    /// What the entry holds.
    pub kind: RecordKind,
    /// For messages: the next record belongs to the same Raft entry (an
    /// entry that carries several messages is written as consecutive
    /// message records, all but the last with this flag). Ignored for
    /// other kinds.
    pub continued: bool,
    /// For messages: time of the publish, µs since the Unix epoch; else 0.
    pub timestamp_us: u64,
    /// For messages: the publisher's client id; else zeros.
    pub client_id: [u8; 16],
    /// For messages: the publisher's sequence number; else 0.
    pub seq: u64,
    /// For messages: the topic; else empty.
    pub topic: &'a [u8],
    /// For messages: the payload; for membership entries the encoded
    /// membership; for blank entries empty.
    pub payload: &'a [u8],
}

/// What [`Journal::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Number of records in the journal (the next offset minus the first
    /// record's offset, which is 0 unless the log was reset).
    pub records: u64,
    /// Bytes of header and valid records (where the next record goes).
    pub valid_bytes: u64,
    /// The torn tail that was cut (truncated, or zeroed in a pre-zeroed file), if any.
    pub truncated: Option<Truncation>,
    /// Whether the file was created by this call.
    pub created: bool,
}

/// A torn tail cut by [`Journal::open`] (or found by [`verify`](crate::verify)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Where the valid records end and the damaged bytes start.
    pub at_byte: u64,
    /// How many bytes were (or would be) cut or zeroed.
    pub bytes_cut: u64,
    /// Human-readable description, for logs only.
    pub reason: String,
}

impl Truncation {
    pub(crate) fn from_tail(at: u64, offset: u64, bytes_cut: u64, reason: CorruptKind) -> Self {
        Self {
            at_byte: at,
            bytes_cut,
            reason: format!(
                "torn tail at byte {at} (record offset {offset}): {reason}; no valid record follows, \
                 {bytes_cut} bytes of never-committed data"
            ),
        }
    }
}

/// State shared between the writer and its [`Reader`]s: the committed end
/// and the sparse index. Locked once per commit by the writer, and by a
/// reader only when it reaches the end it knows or seeks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) interval: u32,
    pub(crate) state: Mutex<Published>,
}

#[derive(Debug)]
pub(crate) struct Published {
    /// Next offset to be committed (= records visible to readers).
    pub(crate) offset: u64,
    /// Byte position after the last committed record.
    pub(crate) bytes: u64,
    /// Offset of the first record in the file.
    pub(crate) base: u64,
    /// `index[i]` = byte position of offset `base + i * interval`.
    pub(crate) index: Vec<u64>,
    /// Bumped whenever records are removed from the end (Raft truncation,
    /// reset): readers drop buffered bytes and step back if they were past
    /// the new end.
    pub(crate) cuts: u64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Published> {
        // The lock is never held across anything that can panic; a poisoned
        // mutex still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Extensions of the pre-zeroed region are rounded up to this (the step
/// per commit is [`JournalOptions::extend_step`];
/// [`Journal::extend_preallocation`] tops up the whole region when the
/// writer is idle).
const EXTEND_ALIGN: u64 = 64 << 10;
/// After the filesystem refused to extend the pre-zeroed region, this many
/// commits use plain appends before the next attempt.
const PREALLOC_RETRY_COMMITS: u64 = 1024;

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The durable single-file append-only log, owned by one writer thread.
///
/// `append` encodes records into a pending buffer (no I/O); `commit` writes
/// all pending records with one `pwrite` and, with `sync = true`, one
/// `fdatasync`. Only after `commit(true)` returns `Ok` are the records
/// durable; readers see records once their commit has returned.
///
/// The file is locked (`flock`, exclusive) while a `Journal` is open, so a
/// second writer fails with [`JournalError::Locked`].
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    opts: JournalOptions,
    fmt: Fmt,
    header_len: u64,
    /// The Raft state in the header (version 2), its generation and the
    /// slot it was read from or last written to.
    state: RaftState,
    state_gen: u64,
    state_slot: u64,
    /// Records `< committed_offset` live in `[header_len, committed_bytes)`.
    committed_offset: u64,
    committed_bytes: u64,
    /// Position of the last successful fdatasync (or open / recover).
    synced_offset: u64,
    synced_bytes: u64,
    /// Current file length; `[committed_bytes, file_len)` is all zeros.
    file_len: u64,
    next_offset: u64,
    pending: Vec<u8>,
    /// Byte positions of pending records whose offset is a multiple of the interval.
    pending_index: Vec<u64>,
    poisoned: bool,
    commits: u64,
    prealloc_paused_until: u64,
    shared: Arc<Shared>,
    #[cfg(any(test, feature = "fault-injection"))]
    fail_syncs: u32,
}

impl Journal {
    /// Opens the journal at `path`, creating it if it does not exist.
    ///
    /// A new journal is written to `<path>.creating` (header, and the
    /// pre-zeroed region if enabled), fsynced, renamed to `path`, and the
    /// parent directory is fsynced, so a crash never leaves a half-created
    /// journal at `path`.
    ///
    /// An existing journal is verified: header, then every record's
    /// checksum and offset up to the end of the log. A torn tail (damaged or
    /// partial bytes with no valid record after them) is cut — truncated, or
    /// zeroed if zeros follow it — synced and reported in
    /// [`OpenReport::truncated`].
    ///
    /// # Errors
    ///
    /// [`JournalError::Corrupt`] if a damaged record is followed by a valid
    /// one (the file is left untouched; see [`repair`](crate::repair)),
    /// [`JournalError::NotAJournal`] / [`JournalError::UnsupportedVersion`]
    /// for foreign files (an empty file is not a journal),
    /// [`JournalError::Locked`] if another `Journal` has it open,
    /// [`JournalError::InvalidOptions`], or I/O errors.
    pub fn open(path: &Path, opts: JournalOptions) -> Result<(Self, OpenReport), JournalError> {
        opts.validate()?;
        let (file, created) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_file(path, &opts)?;
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(JournalError::io("open"))?;
                (f, true)
            }
            Err(e) => {
                return Err(JournalError::Io {
                    op: "open",
                    source: e,
                })
            }
        };
        lock(&file)?;
        let mut file_len = file_len_of(&file)?;
        let header = scan::read_header(&file, file_len)?;
        let fmt = Fmt {
            version: header.version,
        };
        let (state_gen, state_slot, state) = scan::read_state(&file, file_len, fmt)?;
        let base = state.first_index;
        let interval = u64::from(opts.index_interval);
        let mut index = Vec::new();
        let s = scan::scan(&file, file_len, header.header_len, base, fmt, |pos, v| {
            if (v.offset - base).is_multiple_of(interval) {
                index.push(pos);
            }
        })
        .map_err(JournalError::io("read"))?;
        let truncated = match s.tail {
            Tail::Clean => None,
            Tail::Torn {
                at,
                offset,
                nonzero_end,
                reason,
            } => {
                let cut = cut_tail(&file, at, nonzero_end, file_len)?;
                file_len = cut.new_len;
                file.sync_data().map_err(JournalError::io("fdatasync"))?;
                Some(Truncation::from_tail(at, offset, cut.bytes_cut, reason))
            }
            Tail::Corrupt { at, offset, reason } => {
                return Err(JournalError::Corrupt {
                    byte_pos: at,
                    offset,
                    reason,
                });
            }
        };
        let shared = Arc::new(Shared {
            interval: opts.index_interval,
            state: Mutex::new(Published {
                offset: s.next_offset,
                bytes: s.valid_end,
                base,
                index,
                cuts: 0,
            }),
        });
        let mut j = Self {
            path: path.to_path_buf(),
            file,
            opts,
            fmt,
            header_len: header.header_len,
            state,
            state_gen,
            state_slot,
            committed_offset: s.next_offset,
            committed_bytes: s.valid_end,
            synced_offset: s.next_offset,
            synced_bytes: s.valid_end,
            file_len,
            next_offset: s.next_offset,
            pending: Vec::new(),
            pending_index: Vec::new(),
            poisoned: false,
            commits: 0,
            prealloc_paused_until: 0,
            shared,
            #[cfg(any(test, feature = "fault-injection"))]
            fail_syncs: 0,
        };
        // Top up the pre-zeroed region now, while nothing waits for an ACK.
        j.extend_preallocation()?;
        let report = OpenReport {
            records: s.next_offset - base,
            valid_bytes: s.valid_end,
            truncated,
            created,
        };
        Ok((j, report))
    }

    /// The path this journal was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset the next [`append`](Self::append) returns.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// All records below this offset are written (and durable if the
    /// commit that wrote the last of them synced).
    pub fn committed_offset(&self) -> u64 {
        self.committed_offset
    }

    /// Records appended but not yet committed.
    pub fn pending_records(&self) -> usize {
        (self.next_offset - self.committed_offset) as usize
    }

    /// Whether an fdatasync failed; see [`recover`](Self::recover).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The options the journal was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.opts
    }

    /// Byte length of the file (valid records plus the pre-zeroed region).
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Encodes `rec` into the pending buffer and returns its offset. No I/O:
    /// the record is written by the next [`commit`](Self::commit) and is
    /// lost if the journal is dropped before.
    ///
    /// # Errors
    ///
    /// [`JournalError::RecordTooLarge`] if header + topic + payload exceed
    /// `max_record_bytes`, [`JournalError::TopicTooLong`] above 65535 topic
    /// bytes, [`JournalError::Poisoned`]. Nothing is appended on error.
    pub fn append(&mut self, rec: &NewRecord<'_>) -> Result<u64, JournalError> {
        let offset = self.next_offset;
        self.encode(&Fields {
            offset,
            term: 0,
            kind: RecordKind::Message,
            continued: false,
            timestamp_us: rec.timestamp_us,
            client_id: &rec.client_id,
            seq: rec.seq,
            topic: rec.topic,
            payload: rec.payload,
        })?;
        Ok(offset)
    }

    /// Encodes a Raft log entry into the pending buffer, like
    /// [`append`](Self::append) (no I/O), at `entry.index`, which must be
    /// [`next_offset`](Self::next_offset).
    ///
    /// One exception: when the journal holds no record at all, an index
    /// beyond `next_offset` is accepted (a follower's log that restarts
    /// after a snapshot). The header's first index is then moved there and
    /// made durable at once (one header write and one fdatasync) before the
    /// entry is encoded.
    ///
    /// # Errors
    ///
    /// [`JournalError::NeedsVersion2`] on a version-1 file,
    /// [`JournalError::OutOfOrder`] for any other index, and the errors of
    /// `append`.
    pub fn append_entry(&mut self, e: &NewEntry<'_>) -> Result<(), JournalError> {
        self.require_v2()?;
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if e.index != self.next_offset {
            let empty = self.next_offset == self.state.first_index;
            if !(empty && e.index > self.next_offset) {
                return Err(JournalError::OutOfOrder {
                    index: e.index,
                    expected: self.next_offset,
                });
            }
            self.move_base(e.index)?;
        }
        self.encode(&Fields {
            offset: e.index,
            term: e.term,
            kind: e.kind,
            // Only messages share an entry.
            continued: e.continued && e.kind == RecordKind::Message,
            timestamp_us: e.timestamp_us,
            client_id: &e.client_id,
            seq: e.seq,
            topic: e.topic,
            payload: e.payload,
        })
    }

    fn encode(&mut self, f: &Fields<'_>) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if f.topic.len() > usize::from(u16::MAX) {
            return Err(JournalError::TopicTooLong { len: f.topic.len() });
        }
        let len = self
            .fmt
            .rec_header()
            .saturating_add(f.topic.len())
            .saturating_add(f.payload.len());
        if len > self.opts.max_record_bytes as usize {
            return Err(JournalError::RecordTooLarge {
                len,
                max: self.opts.max_record_bytes,
            });
        }
        debug_assert_eq!(f.offset, self.next_offset);
        if (f.offset - self.state.first_index).is_multiple_of(u64::from(self.opts.index_interval)) {
            self.pending_index
                .push(self.committed_bytes + self.pending.len() as u64);
        }
        format::encode_record(&mut self.pending, self.fmt, f);
        self.next_offset += 1;
        Ok(())
    }

    /// The file's format version (1 or 2).
    pub fn version(&self) -> u16 {
        self.fmt.version
    }

    /// The Raft state kept in the header (the default for version 1).
    pub fn raft_state(&self) -> &RaftState {
        &self.state
    }

    /// Offset of the first record in the file (0 unless the log was reset).
    pub fn first_offset(&self) -> u64 {
        self.state.first_index
    }

    /// Writes the Raft state (vote, committed, purged) into the header's
    /// older slot, so that a torn write leaves the newer one intact; with
    /// `sync`, one fdatasync makes it durable before this returns. Without
    /// `sync` the next `commit(true)` covers it. The header and the records
    /// are separate regions, so the state never overwrites a record.
    ///
    /// `first_index` cannot be changed here (see
    /// [`reset`](Self::reset)). A failed fdatasync poisons the journal.
    ///
    /// # Errors
    ///
    /// [`JournalError::NeedsVersion2`], [`JournalError::InvalidOptions`]
    /// if `first_index` differs, [`JournalError::Poisoned`], I/O errors.
    pub fn set_raft_state(&mut self, st: &RaftState, sync: bool) -> Result<(), JournalError> {
        self.require_v2()?;
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if st.first_index != self.state.first_index {
            return Err(JournalError::InvalidOptions(
                "set_raft_state cannot move the first index; use reset",
            ));
        }
        self.write_state(st, sync)
    }

    fn write_state(&mut self, st: &RaftState, sync: bool) -> Result<(), JournalError> {
        let slot = 1 - self.state_slot;
        let generation = self.state_gen + 1;
        self.file
            .write_all_at(
                &format::encode_state(st, generation),
                format::state_slot_pos(slot),
            )
            .map_err(JournalError::io("write"))?;
        self.state = *st;
        self.state_gen = generation;
        self.state_slot = slot;
        if sync {
            let r = self.fdatasync();
            self.poison_on(r)?;
        }
        Ok(())
    }

    /// Removes the records from offset `index` on: a Raft follower's
    /// conflicting, uncommitted tail. Pending records must have been
    /// committed first. The records are zeroed (inside the pre-zeroed
    /// region) or the file is truncated, then one fdatasync makes the cut
    /// durable. Readers past the cut step back to the new end.
    ///
    /// This is not torn-tail recovery (which only ever removes bytes that
    /// were never fully written) and never touches committed entries: an
    /// index at or below the header's committed index is refused.
    ///
    /// # Errors
    ///
    /// [`JournalError::NeedsVersion2`], [`JournalError::TruncateCommitted`],
    /// [`JournalError::OutOfOrder`] below the first record or with pending
    /// records, [`JournalError::Poisoned`], I/O errors (an fdatasync
    /// failure poisons).
    pub fn truncate(&mut self, index: u64) -> Result<(), JournalError> {
        self.require_v2()?;
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if let Some(c) = self.state.committed {
            if index <= c.index {
                return Err(JournalError::TruncateCommitted {
                    index,
                    committed: c.index,
                });
            }
        }
        if !self.pending.is_empty() || index < self.state.first_index {
            return Err(JournalError::OutOfOrder {
                index,
                expected: self.committed_offset,
            });
        }
        if index >= self.committed_offset {
            return Ok(());
        }
        let pos = self.position_of(index)?;
        self.cut_records(pos, index)?;
        self.fdatasync_or_poison()
    }

    /// Empties the log and makes `first_index` the offset of the next
    /// record: used when a Raft log is purged past its end (a snapshot
    /// covers every record). The records are cut and synced first, then the
    /// header's first index and `purged` are written and synced, so a crash
    /// in between leaves an empty log that `append_entry` can restart
    /// anywhere.
    ///
    /// # Errors
    ///
    /// [`JournalError::NeedsVersion2`], [`JournalError::OutOfOrder`] if
    /// `first_index` is below the next offset or records are pending,
    /// [`JournalError::Poisoned`], I/O errors.
    pub fn reset(&mut self, first_index: u64, purged: Option<LogPos>) -> Result<(), JournalError> {
        self.require_v2()?;
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if !self.pending.is_empty() || first_index < self.next_offset {
            return Err(JournalError::OutOfOrder {
                index: first_index,
                expected: self.next_offset,
            });
        }
        if self.committed_offset > self.state.first_index {
            self.cut_records(self.header_len, self.state.first_index)?;
            self.fdatasync_or_poison()?;
        }
        let mut st = self.state;
        st.purged = purged.or(st.purged);
        self.set_base(first_index, st)
    }

    /// Moves the first index of an empty journal (durably).
    fn move_base(&mut self, first_index: u64) -> Result<(), JournalError> {
        debug_assert_eq!(self.next_offset, self.state.first_index);
        let st = self.state;
        self.set_base(first_index, st)
    }

    fn set_base(&mut self, first_index: u64, mut st: RaftState) -> Result<(), JournalError> {
        st.first_index = first_index;
        self.write_state(&st, true)?;
        self.next_offset = first_index;
        self.committed_offset = first_index;
        self.synced_offset = first_index;
        let mut sh = self.shared.lock();
        sh.base = first_index;
        sh.offset = first_index;
        sh.index.clear();
        sh.cuts += 1;
        Ok(())
    }

    /// Byte position of committed record `index` (first ≤ index < committed).
    fn position_of(&self, index: u64) -> Result<u64, JournalError> {
        let mut r = self.reader()?;
        r.seek(index)?;
        Ok(r.byte_pos())
    }

    /// Removes committed records from byte `pos` (record `index`) on:
    /// zeros inside the pre-zeroed region, truncation otherwise. Not synced.
    fn cut_records(&mut self, pos: u64, index: u64) -> Result<(), JournalError> {
        if self.file_len > self.committed_bytes {
            write_zeros(&self.file, pos, self.committed_bytes)
                .map_err(JournalError::io("write"))?;
        } else {
            self.file
                .set_len(pos)
                .map_err(JournalError::io("truncate"))?;
            self.file_len = pos;
        }
        self.committed_bytes = pos;
        self.committed_offset = index;
        self.next_offset = index;
        self.synced_bytes = self.synced_bytes.min(pos);
        self.synced_offset = self.synced_offset.min(index);
        let interval = u64::from(self.opts.index_interval);
        let mut sh = self.shared.lock();
        sh.offset = index;
        sh.bytes = pos;
        let keep = (index - sh.base).div_ceil(interval) as usize;
        sh.index.truncate(keep);
        sh.cuts += 1;
        Ok(())
    }

    fn fdatasync_or_poison(&mut self) -> Result<(), JournalError> {
        let r = self.fdatasync();
        self.poison_on(r)?;
        self.mark_synced();
        Ok(())
    }

    /// A failed fdatasync poisons the journal (see [`Journal::recover`]).
    fn poison_on(&mut self, r: io::Result<()>) -> Result<(), JournalError> {
        r.map_err(|source| {
            self.poisoned = true;
            JournalError::Io {
                op: "fdatasync",
                source,
            }
        })
    }

    fn require_v2(&self) -> Result<(), JournalError> {
        if self.fmt.version == 1 {
            Err(JournalError::NeedsVersion2)
        } else {
            Ok(())
        }
    }

    /// Writes all pending records with one positioned write (looping on
    /// short writes) and, if `sync`, makes them durable with one fdatasync.
    ///
    /// On `Ok`, the records are visible to readers, and with `sync = true`
    /// they (and every earlier record) are on stable storage as far as the
    /// OS and device honour fdatasync. With `sync = false` they survive a
    /// process crash but not a power loss; a later `commit(true)`, even
    /// with nothing pending, syncs them.
    ///
    /// # Errors
    ///
    /// On any error the pending records are dropped (`next_offset` goes
    /// back to `committed_offset`) and the file is restored to its last
    /// committed length (truncated, or re-zeroed inside the pre-zeroed
    /// region), so a later commit can succeed — e.g. after ENOSPC
    /// ([`JournalError::is_out_of_space`]) once space is freed.
    ///
    /// If the fdatasync itself fails, the journal is also *poisoned*: the
    /// kernel may have dropped the dirty pages, so a retried fsync could
    /// "succeed" without the data. Every later `append`/`commit` returns
    /// [`JournalError::Poisoned`] until [`recover`](Self::recover) succeeds.
    pub fn commit(&mut self, sync: bool) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if self.pending.is_empty() {
            if sync && self.synced_bytes != self.committed_bytes {
                if let Err(e) = self.fdatasync() {
                    self.poisoned = true;
                    return Err(JournalError::Io {
                        op: "fdatasync",
                        source: e,
                    });
                }
                self.mark_synced();
            }
            return Ok(());
        }
        self.commits += 1;
        self.extend_for_commit();
        if self.poisoned {
            self.abort_pending();
            return Err(JournalError::Poisoned);
        }
        let pos = self.committed_bytes;
        if let Err(e) = self.file.write_all_at(&self.pending, pos) {
            self.abort_pending();
            // Make the restored state durable too, so that complete records
            // of the failed batch which writeback may already have flushed
            // cannot reappear after a crash.
            if !self.poisoned {
                match self.fdatasync() {
                    Ok(()) => self.mark_synced(),
                    Err(_) => self.poisoned = true,
                }
            }
            return Err(JournalError::Io {
                op: "write",
                source: e,
            });
        }
        if sync {
            if let Err(e) = self.fdatasync() {
                self.poisoned = true;
                self.abort_pending();
                return Err(JournalError::Io {
                    op: "fdatasync",
                    source: e,
                });
            }
        }
        self.committed_bytes += self.pending.len() as u64;
        self.committed_offset = self.next_offset;
        self.file_len = self.file_len.max(self.committed_bytes);
        self.pending.clear();
        {
            let mut st = self.shared.lock();
            st.offset = self.committed_offset;
            st.bytes = self.committed_bytes;
            st.index.append(&mut self.pending_index);
        }
        if sync {
            self.mark_synced();
        }
        Ok(())
    }

    /// Clears the poisoning left by a failed fdatasync.
    ///
    /// Reopens the file (a new file description, so no stale error state
    /// is inherited), re-verifies the records written since the last
    /// successful sync, rewrites them (so their pages are dirty again and
    /// the next fdatasync really writes them), cuts everything after the
    /// last committed record (truncate, or re-zero in the pre-zeroed
    /// region) and fdatasyncs. Records of the failed commit are gone; every
    /// committed record is kept. A no-op if the journal is not poisoned.
    ///
    /// # Errors
    ///
    /// I/O errors (the journal stays poisoned and `recover` may be called
    /// again), [`JournalError::Corrupt`] if committed records no longer
    /// verify, [`JournalError::Locked`] if another writer took the lock.
    pub fn recover(&mut self) -> Result<(), JournalError> {
        if !self.poisoned {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(JournalError::io("open"))?;
        // Release the lock of the old description before taking it on the
        // new one.
        let _ = self.file.unlock();
        self.file = file;
        lock(&self.file)?;
        let actual_len = file_len_of(&self.file)?;
        scan::read_header(&self.file, actual_len)?;
        if actual_len < self.committed_bytes {
            return Err(JournalError::Corrupt {
                byte_pos: actual_len,
                offset: self.committed_offset,
                reason: CorruptKind::Truncated,
            });
        }
        // Re-verify the unsynced committed range, treating its end as EOF.
        let s = scan::scan(
            &self.file,
            self.committed_bytes,
            self.synced_bytes,
            self.synced_offset,
            self.fmt,
            |_, _| {},
        )
        .map_err(JournalError::io("read"))?;
        if s.next_offset != self.committed_offset || s.valid_end != self.committed_bytes {
            let reason = match s.tail {
                Tail::Torn { reason, .. } | Tail::Corrupt { reason, .. } => reason,
                Tail::Clean => CorruptKind::BadLength,
            };
            return Err(JournalError::Corrupt {
                byte_pos: s.valid_end,
                offset: s.next_offset,
                reason,
            });
        }
        rewrite_range(&self.file, self.synced_bytes, self.committed_bytes)?;
        // Cut whatever the failed commit left after the committed end.
        let keep_len = if self.file_len > self.committed_bytes && actual_len >= self.file_len {
            self.file_len
        } else {
            self.committed_bytes
        };
        if actual_len > keep_len {
            self.file
                .set_len(keep_len)
                .map_err(JournalError::io("truncate"))?;
        }
        let dirty_end = scan::nonzero_end(&self.file, self.committed_bytes, keep_len)
            .map_err(JournalError::io("read"))?;
        write_zeros(&self.file, self.committed_bytes, dirty_end)
            .map_err(JournalError::io("write"))?;
        self.file_len = keep_len;
        self.fdatasync().map_err(JournalError::io("fdatasync"))?;
        self.poisoned = false;
        self.mark_synced();
        Ok(())
    }

    /// Tops up the pre-zeroed region to `preallocate` bytes ahead of the
    /// write position (writing zeros, then one fdatasync). Commits extend it
    /// by themselves in steps of at most 4 MiB when less than half of
    /// `preallocate` is left; a writer thread can call this when idle so
    /// that commits rarely pay for it. Running out of space is not an error
    /// here: the journal falls back to plain appends for a while.
    ///
    /// # Errors
    ///
    /// [`JournalError::Poisoned`], or an fdatasync failure (which poisons).
    pub fn extend_preallocation(&mut self) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if self.opts.preallocate == 0 {
            return Ok(());
        }
        let end = self.committed_bytes + self.pending.len() as u64;
        let target = (end + self.opts.preallocate).next_multiple_of(EXTEND_ALIGN);
        if target <= self.file_len || !self.try_extend(target) {
            return Ok(());
        }
        let r = self.fdatasync();
        self.poison_on(r)
    }

    /// An independent reader (own file descriptor) positioned at offset 0.
    /// It sees records up to the last successful commit, and follows new
    /// commits.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened.
    pub fn reader(&self) -> Result<Reader, JournalError> {
        self.reader_source().reader()
    }

    /// A handle that opens readers of this journal from any thread, also
    /// after the `Journal` has moved to its writer thread.
    pub fn reader_source(&self) -> ReaderSource {
        ReaderSource {
            path: self.path.clone(),
            header_len: self.header_len,
            fmt: self.fmt,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Makes the test hook fail the next `n` fdatasync calls with an I/O error.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_next_syncs(&mut self, n: u32) {
        self.fail_syncs = n;
    }

    fn fdatasync(&mut self) -> io::Result<()> {
        #[cfg(any(test, feature = "fault-injection"))]
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()
    }

    fn mark_synced(&mut self) {
        self.synced_offset = self.committed_offset;
        self.synced_bytes = self.committed_bytes;
    }

    /// Extends the pre-zeroed region before a commit writes its records,
    /// when the batch does not fit or less than half of `preallocate` would
    /// be left. Not synced separately: the commit's own fdatasync covers the
    /// new zeros and the new file size, and later commits only overwrite.
    fn extend_for_commit(&mut self) {
        let prealloc = self.opts.preallocate;
        if prealloc == 0 || self.commits < self.prealloc_paused_until {
            return;
        }
        let end = self.committed_bytes + self.pending.len() as u64;
        if self.file_len >= end && self.file_len - end >= prealloc / 2 {
            return;
        }
        let target = (self.file_len + self.opts.extend_step.max(EXTEND_ALIGN))
            .min(end + prealloc)
            .max(end)
            .next_multiple_of(EXTEND_ALIGN);
        self.try_extend(target);
    }

    /// Writes zeros from the file end to `target`. On failure (typically
    /// ENOSPC) the file is cut back and pre-zeroing pauses; returns whether
    /// the region was extended.
    fn try_extend(&mut self, target: u64) -> bool {
        if target <= self.file_len {
            return false;
        }
        match write_zeros(&self.file, self.file_len, target) {
            Ok(()) => {
                self.file_len = target;
                true
            }
            Err(_) => {
                if self.file.set_len(self.file_len).is_err() {
                    // Unknown file state: make recover() re-establish it.
                    self.poisoned = true;
                }
                self.prealloc_paused_until = self.commits + PREALLOC_RETRY_COMMITS;
                false
            }
        }
    }

    /// Drops the pending records after a failed commit and restores the
    /// file to its committed length: zeros inside the pre-zeroed region,
    /// truncation beyond it. Poisons the journal if that fails.
    fn abort_pending(&mut self) {
        let written_end = self.committed_bytes + self.pending.len() as u64;
        self.pending.clear();
        self.pending_index.clear();
        self.next_offset = self.committed_offset;
        let restored = (|| -> io::Result<()> {
            if self.file_len > self.committed_bytes {
                write_zeros(
                    &self.file,
                    self.committed_bytes,
                    written_end.min(self.file_len),
                )?;
            }
            if written_end > self.file_len {
                self.file.set_len(self.file_len)?;
            }
            Ok(())
        })();
        if restored.is_err() {
            self.poisoned = true;
        }
    }
}

/// Opens [`Reader`]s that follow one [`Journal`]'s commits (from
/// [`Journal::reader_source`]); cheap to clone and `Send`.
#[derive(Debug, Clone)]
pub struct ReaderSource {
    path: PathBuf,
    header_len: u64,
    fmt: Fmt,
    shared: Arc<Shared>,
}

impl ReaderSource {
    /// A reader positioned at the first record, as [`Journal::reader`].
    ///
    /// # Errors
    ///
    /// If the file cannot be opened.
    pub fn reader(&self) -> Result<Reader, JournalError> {
        let file = File::open(&self.path).map_err(JournalError::io("open"))?;
        Ok(Reader::from_shared(
            file,
            self.header_len,
            self.fmt,
            Arc::clone(&self.shared),
        ))
    }
}

impl Drop for Journal {
    /// Releases the writer lock explicitly: a child process forked by
    /// another thread may briefly hold a copy of the descriptor (until its
    /// exec closes it), which would otherwise keep the lock alive and make
    /// an immediate reopen fail with [`JournalError::Locked`].
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Takes the exclusive writer lock.
fn lock(file: &File) -> Result<(), JournalError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(JournalError::Locked),
        Err(TryLockError::Error(e)) => Err(JournalError::Io {
            op: "lock",
            source: e,
        }),
    }
}

pub(crate) fn file_len_of(file: &File) -> Result<u64, JournalError> {
    Ok(file.metadata().map_err(JournalError::io("stat"))?.len())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Creates a new journal at `path` via `<path>.creating` + rename.
fn create_file(path: &Path, opts: &JournalOptions) -> Result<(), JournalError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".creating");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> Result<(), JournalError> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(JournalError::io("create"))?;
        let fmt = Fmt {
            version: opts.create_version,
        };
        f.write_all_at(&format::encode_header(now_us(), fmt), 0)
            .map_err(JournalError::io("write"))?;
        let header_len = fmt.header_len();
        if fmt.version == 2 {
            // Both slots hold the initial state (generations 1 and 2), so
            // that damage to either one leaves a valid state.
            for slot in 0..2 {
                f.write_all_at(
                    &format::encode_state(&RaftState::default(), slot + 1),
                    format::state_slot_pos(slot),
                )
                .map_err(JournalError::io("write"))?;
            }
        }
        if opts.preallocate > 0 {
            let target = (header_len + opts.preallocate).next_multiple_of(EXTEND_ALIGN);
            if write_zeros(&f, header_len, target).is_err() {
                // No space for the region: start with plain appends.
                f.set_len(header_len)
                    .map_err(JournalError::io("truncate"))?;
            }
        }
        f.sync_all().map_err(JournalError::io("fsync"))?;
        std::fs::rename(&tmp, path).map_err(JournalError::io("rename"))?;
        sync_parent_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_parent_dir(path: &Path) -> Result<(), JournalError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(JournalError::io("fsync directory"))
}

pub(crate) fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

pub(crate) struct Cut {
    pub(crate) new_len: u64,
    pub(crate) bytes_cut: u64,
}

/// Removes damaged bytes `[at, nonzero_end)`: zeroes them if zeros follow
/// (pre-zeroed file), else truncates the file at `at`. Not synced.
pub(crate) fn cut_tail(
    file: &File,
    at: u64,
    nonzero_end: u64,
    file_len: u64,
) -> Result<Cut, JournalError> {
    if nonzero_end < file_len {
        write_zeros(file, at, nonzero_end).map_err(JournalError::io("write"))?;
        Ok(Cut {
            new_len: file_len,
            bytes_cut: nonzero_end - at,
        })
    } else {
        file.set_len(at).map_err(JournalError::io("truncate"))?;
        Ok(Cut {
            new_len: at,
            bytes_cut: file_len - at,
        })
    }
}

/// Reads `[from, to)` and writes the same bytes back, so that pages whose
/// writeback failed are dirty again.
fn rewrite_range(file: &File, from: u64, to: u64) -> Result<(), JournalError> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(JournalError::io("read"))?;
        file.write_all_at(&buf[..n], pos)
            .map_err(JournalError::io("write"))?;
        pos += n as u64;
    }
    Ok(())
}
