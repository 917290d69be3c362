//! The journal as openraft's log storage ([`LogStore`]).
//!
//! One **I/O thread** owns the [`Journal`]. openraft's core calls
//! [`append`](RaftLogStorage::append) once per client write on a leader
//! (and waits for its flush before the next: 0.9 does not batch client
//! writes, which is why an entry carries a [`Batch`] of messages) and once
//! per AppendEntries on a follower. `append` puts the entries in an
//! in-memory tail (readable at once, as the contract requires; written
//! entries beyond 16 Ki entries or 32 MiB leave it and are read back from
//! the file) and queues them; the I/O thread takes everything queued,
//! encodes it, writes it with one `pwrite` and one `fdatasync`, and only
//! then fires the callbacks that tell openraft the entries are durable. Votes, truncations and resets go
//! through the same queue, so every write reaches the file in the order
//! openraft issued it; a vote is synced before `save_vote` returns.
//!
//! The committed position openraft reports with `save_committed` is
//! written into the journal header with the next batch (no extra sync: a
//! stale value is a safe lower bound). `save_committed` only leaves it in
//! a slot shared with the I/O thread, which takes it when it next flushes
//! appends, once the committed entry is among what it has written: a
//! commit costs neither an fdatasync nor a wake-up of that thread. The
//! journal refuses to truncate at or below it.
//!
//! Purging is logical (the single file keeps its records); a purge past the
//! last entry resets the journal, which then restarts at the next index.
//!
//! **Entries and offsets.** A normal entry carries a [`Batch`] of
//! messages, each written as its own journal record (all but the last
//! flagged `continued`); blank and membership entries take one record. So
//! Raft indexes and offsets differ: the store keeps, in memory, the first
//! offset of every entry ([`Offsets`], 8 bytes per entry, rebuilt at open
//! by one scan of the file). Every node writes the same entries, so every
//! node gives a message the same offset. An entry whose records were only
//! partly written when the process died was never reported durable; it is
//! cut at open.
//!
//! [`Batch`]: crate::Batch

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use pinion_journal::{Journal, JournalError, JournalOptions, LogPos, ReaderSource, StoredVote};

use crate::codec::{self, EntryAssembler};
use crate::types::{log_id, Entry, LogId, StorageError, TypeConfig, Vote};

/// Entries kept in memory after they are written (for replication to
/// followers that are slightly behind), at most …
const TAIL_KEEP: usize = 16 * 1024;

/// … and at most this many bytes of them (an entry is a batch of up to a
/// few hundred KiB). Older entries are read back from the file.
const TAIL_BYTES: usize = 32 << 20;

/// What an entry costs the in-memory tail, roughly.
fn entry_bytes(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(b) => b
            .messages
            .iter()
            .map(|m| 64 + m.topic.len() + m.payload.len())
            .sum(),
        _ => 64,
    }
}

/// Why the log store could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The journal could not be opened (damaged, locked, I/O error, or a
    /// version-1 file, which must be upgraded first).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A record in the journal is not part of a valid entry (a membership
    /// that does not decode, or an entry whose records mix terms or kinds).
    #[error("record at offset {offset} is not part of a valid Raft entry: {source}")]
    Entry {
        /// The record's offset.
        offset: u64,
        /// Why.
        source: codec::DecodeError,
    },
    /// The I/O thread could not be started.
    #[error("could not start the journal I/O thread: {0}")]
    Thread(std::io::Error),
}

/// What the Raft core side keeps in memory (authoritative for reads; the
/// I/O thread makes it durable in order).
#[derive(Debug)]
struct Meta {
    vote: Option<Vote>,
    last_log: Option<LogId>,
    purged: Option<LogId>,
    committed: Option<LogId>,
}

/// Entries appended recently: `entries[i]` has index `first + i`.
#[derive(Debug, Default)]
struct Tail {
    first: u64,
    entries: VecDeque<Entry>,
    /// [`entry_bytes`] of `entries`.
    bytes: usize,
    /// Entries below this index are written to the file.
    written: u64,
    /// Where every entry starts in the file.
    map: Offsets,
    /// The last committed position openraft reported (`save_committed`),
    /// for the I/O thread to write into the header with its next flush.
    committed: Option<LogPos>,
}

impl Tail {
    fn push(&mut self, e: Entry) {
        self.bytes += entry_bytes(&e);
        self.entries.push_back(e);
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(e) => {
                self.bytes -= entry_bytes(&e);
                true
            }
            None => false,
        }
    }

    fn truncate(&mut self, keep: usize) {
        for e in self.entries.drain(keep.min(self.entries.len())..) {
            self.bytes -= entry_bytes(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Raft index → offset of the entry's first record, for every entry in the
/// file (and every entry appended but not yet written).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Offsets {
    /// The Raft index of `starts[0]`.
    first: u64,
    /// The first offset of entries `first`, `first + 1`, ….
    starts: Vec<u64>,
    /// The offset after the last entry.
    next: u64,
}

impl Offsets {
    /// The index after the last entry.
    fn end(&self) -> u64 {
        self.first + self.starts.len() as u64
    }

    /// The first offset of entry `index`, if the map holds it.
    pub(crate) fn start(&self, index: u64) -> Option<u64> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.starts.get(i).copied()
    }

    /// Records entry `index` of `records` records after the last one (or,
    /// in an empty map, anywhere: a log restarting after a purge); returns
    /// its first offset.
    fn push(&mut self, index: u64, records: u64) -> Result<u64, u64> {
        if index != self.end() {
            if !self.starts.is_empty() || index < self.first {
                return Err(self.end());
            }
            self.first = index;
        }
        let at = self.next;
        self.starts.push(at);
        self.next += records;
        Ok(at)
    }

    /// Forgets entries from `index` on; returns the offset where their
    /// records start.
    fn truncate(&mut self, index: u64) -> u64 {
        match self.start(index) {
            Some(at) => {
                self.starts.truncate((index - self.first) as usize);
                self.next = at;
            }
            None if index < self.first => {
                self.next = self.starts.first().copied().unwrap_or(self.next);
                self.starts.clear();
                self.first = index;
            }
            None => {}
        }
        self.next
    }

    /// Forgets every entry; the next one is `first` (its records go on at
    /// the same offset: offsets never go back).
    fn reset(&mut self, first: u64) {
        self.starts.clear();
        self.first = first;
    }
}

/// Offsets of entries, for the state machine (a message's offset is its
/// entry's first offset plus its position in the batch).
#[derive(Debug, Clone)]
pub struct OffsetLookup {
    shared: Arc<Shared>,
}

impl OffsetLookup {
    /// The first offset of entry `index`, if the log holds it.
    pub fn start(&self, index: u64) -> Option<u64> {
        lock(&self.shared.tail).map.start(index)
    }
}

#[derive(Debug)]
struct Shared {
    tail: Mutex<Tail>,
    source: ReaderSource,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Cmd {
    /// Entries with the offset of their first record.
    Append(Vec<(Entry, u64)>, LogFlushed<TypeConfig>),
    Vote(Vote, tokio::sync::oneshot::Sender<Result<(), JournalError>>),
    /// Cut at this offset.
    Truncate(u64, tokio::sync::oneshot::Sender<Result<(), JournalError>>),
    /// Purge up to this entry; `true`: past the last entry (a reset).
    Purge(
        LogId,
        bool,
        tokio::sync::oneshot::Sender<Result<(), JournalError>>,
    ),
}

/// openraft's log storage on a pinion journal (format version 2).
pub struct LogStore {
    meta: Meta,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("meta", &self.meta)
            .finish()
    }
}

/// Reads entries for openraft's replication tasks: recent ones from memory,
/// older ones from the file with its own descriptor.
pub struct LogReader {
    shared: Arc<Shared>,
    reader: Option<pinion_journal::Reader>,
}

fn pos(id: &LogId) -> LogPos {
    LogPos {
        term: id.leader_id.term,
        index: id.index,
    }
}

fn from_pos(p: LogPos) -> LogId {
    log_id(p.term, p.index)
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn stored_vote(v: &Vote) -> StoredVote {
    StoredVote {
        term: v.leader_id.term,
        node_id: v.leader_id.voted_for,
        committed: v.committed,
    }
}

impl LogStore {
    /// Opens (or creates) the journal at `path` as a Raft log and starts
    /// its I/O thread. The thread stops when the store and all its readers
    /// are dropped.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: a damaged or version-1 journal, a membership record
    /// that does not decode, I/O.
    pub fn open(path: &Path, opts: JournalOptions) -> Result<Self, OpenError> {
        let (mut journal, report) = Journal::open(path, opts)?;
        if let Some(t) = &report.truncated {
            tracing::warn!(path = %path.display(), "{}", t.reason);
        }
        if journal.version() == 1 {
            return Err(JournalError::NeedsVersion2.into());
        }
        let st = *journal.raft_state();
        let source = journal.reader_source();
        // One scan: where each entry starts, and the last entry's id.
        let first_offset = journal.first_offset();
        let mut map = Offsets {
            first: st.first_entry,
            starts: Vec::new(),
            next: first_offset,
        };
        let mut last_log = None;
        if journal.next_offset() > first_offset {
            let mut r = source.reader()?;
            r.seek(first_offset)?;
            let mut asm = EntryAssembler::new(st.first_entry);
            let mut start = first_offset;
            while r.offset() < journal.next_offset() {
                let rec = match r.next() {
                    None => break,
                    Some(rec) => rec?,
                };
                let offset = rec.offset;
                if !asm.in_entry() {
                    start = offset;
                }
                if let Some(e) = asm
                    .push(rec)
                    .map_err(|source| OpenError::Entry { offset, source })?
                {
                    map.starts.push(start);
                    last_log = Some(e.log_id);
                }
                map.next = offset + 1;
            }
            if asm.in_entry() {
                // Only part of the last entry reached the file: it was never
                // reported durable, so it is not in any quorum. Cut it.
                tracing::warn!(
                    path = %path.display(),
                    from = start,
                    "raft: the last entry was only partly written (the process stopped \
                     while writing it); its records are cut"
                );
                journal.truncate(start)?;
                map.next = start;
            }
        }
        let purged = st.purged.map(from_pos);
        let meta = Meta {
            vote: st
                .vote
                .map(|v| crate::types::vote(v.term, v.node_id, v.committed)),
            last_log: last_log.or(purged),
            purged,
            committed: st.committed.map(from_pos),
        };
        let end = map.end();
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                first: end,
                entries: VecDeque::new(),
                bytes: 0,
                written: end,
                map,
                committed: None,
            }),
            source,
        });
        let (tx, rx) = mpsc::channel();
        let sh = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("pinion-raft-log".into())
            .spawn(move || io_thread(journal, rx, sh))
            .map_err(OpenError::Thread)?;
        Ok(Self { meta, shared, tx })
    }

    /// Readers of the journal (for subscribers' catch-up), which follow
    /// what the I/O thread writes. They see records that are written but
    /// not yet committed by Raft: a reader must stop at the applied index.
    pub fn reader_source(&self) -> ReaderSource {
        self.shared.source.clone()
    }

    /// Entries and bytes held in memory for readers (bounded: written
    /// entries beyond 16 Ki entries or 32 MiB are read back from the file).
    pub fn tail_size(&self) -> (usize, usize) {
        let t = lock(&self.shared.tail);
        (t.entries.len(), t.bytes)
    }

    /// Where entries start in the file (for the state machine).
    pub fn offsets(&self) -> OffsetLookup {
        OffsetLookup {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The committed position the journal header recorded (where a
    /// restarted node knows every entry is committed).
    pub fn committed(&self) -> Option<LogId> {
        self.meta.committed
    }

    // openraft's error type, as its traits return it.
    #[allow(clippy::result_large_err)]
    fn send(&self, cmd: Cmd) -> Result<(), StorageError> {
        self.tx.send(cmd).map_err(|_| {
            io_err(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other("the journal I/O thread has stopped"),
            )
        })
    }

    /// The log id of entry `index` (which must be in the log).
    async fn id_at(&mut self, index: u64) -> Result<Option<LogId>, StorageError> {
        if let Some(p) = self.meta.purged {
            if index <= p.index {
                return Ok((index == p.index).then_some(p));
            }
        }
        let mut r = self.get_log_reader().await;
        let e = r.try_get_log_entries(index..=index).await?;
        Ok(e.first().map(|e| e.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut r = self.get_log_reader().await;
        let purged = self.meta.purged.map(|p| p.index);
        let mut out = r.try_get_log_entries(range).await?;
        if let Some(p) = purged {
            out.retain(|e| e.log_id.index > p);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        // What memory has, and where it starts.
        let (mem_first, mem): (u64, Vec<Entry>) = {
            let t = lock(&self.shared.tail);
            let last = t.first + t.entries.len() as u64;
            let from = start.max(t.first);
            let to = end.min(last);
            let v = if from < to {
                t.entries
                    .range((from - t.first) as usize..(to - t.first) as usize)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            (t.first, v)
        };
        if start < mem_first {
            let disk_end = end.min(mem_first);
            // Entries below the map's first are gone (purged and reset).
            let (from, at) = {
                let t = lock(&self.shared.tail);
                let from = start.max(t.map.first);
                (from, t.map.start(from))
            };
            if let (true, Some(at)) = (from < disk_end, at) {
                let read_err = |e: JournalError| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
                let r = match &mut self.reader {
                    Some(r) => r,
                    None => self
                        .reader
                        .insert(self.shared.source.reader().map_err(read_err)?),
                };
                r.seek(at).map_err(read_err)?;
                let mut asm = EntryAssembler::new(from);
                while asm.next_index < disk_end {
                    match r.next() {
                        None => break,
                        Some(Err(e)) => return Err(read_err(e)),
                        Some(Ok(rec)) => {
                            let index = asm.next_index;
                            if let Some(e) = asm.push(rec).map_err(|e| {
                                io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e)
                            })? {
                                out.push(e);
                            }
                        }
                    }
                }
            }
        }
        out.extend(mem);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.meta.purged,
            last_log_id: self.meta.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
            reader: None,
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Cmd::Vote(*vote, tx))?;
        wait(rx, ErrorSubject::Vote, ErrorVerb::Write).await?;
        self.meta.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.meta.committed = committed;
        // No message to the I/O thread (one wake-up per commit on every
        // node): it picks the slot up when it next flushes appends.
        if let Some(c) = committed {
            lock(&self.shared.tail).committed = Some(pos(&c));
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Entries at or below the purged index are covered by a snapshot
        // and need not be stored (openraft never sends them; the storage
        // suite does, after purging on an empty log).
        let purged = self.meta.purged.map(|p| p.index);
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p))
            .collect();
        let mut placed = Vec::with_capacity(entries.len());
        if let Some(last) = entries.last() {
            let last = last.log_id;
            let mut t = lock(&self.shared.tail);
            for e in entries {
                let next = t.first + t.entries.len() as u64;
                let out_of_order = |expected| {
                    io_err(
                        ErrorSubject::LogIndex(e.log_id.index),
                        ErrorVerb::Write,
                        JournalError::OutOfOrder {
                            index: e.log_id.index,
                            expected,
                        },
                    )
                };
                if e.log_id.index != next {
                    if t.entries.is_empty() && e.log_id.index > next {
                        // An empty log restarting later (after a purge).
                        t.first = e.log_id.index;
                        t.written = t.written.max(t.first);
                    } else {
                        return Err(out_of_order(next));
                    }
                }
                let at = t
                    .map
                    .push(e.log_id.index, codec::records(&e))
                    .map_err(out_of_order)?;
                t.push(e.clone());
                placed.push((e, at));
            }
            self.meta.last_log = Some(last);
        }
        self.send(Cmd::Append(placed, callback))
    }

    async fn truncate(&mut self, id: LogId) -> Result<(), StorageError> {
        let before = if id.index == 0 {
            None
        } else {
            self.id_at(id.index - 1).await?
        };
        let cut = {
            let mut t = lock(&self.shared.tail);
            if id.index < t.first {
                t.clear();
                t.first = id.index;
            } else {
                let keep = (id.index - t.first) as usize;
                t.truncate(keep);
            }
            t.map.truncate(id.index)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Cmd::Truncate(cut, tx))?;
        wait(rx, ErrorSubject::Logs, ErrorVerb::Delete).await?;
        {
            let mut t = lock(&self.shared.tail);
            t.written = t.written.min(id.index);
            if t.entries.is_empty() {
                t.first = id.index;
            }
        }
        self.meta.last_log = before.or(self.meta.purged);
        Ok(())
    }

    async fn purge(&mut self, id: LogId) -> Result<(), StorageError> {
        let past_end = {
            let mut t = lock(&self.shared.tail);
            let past_end = id.index + 1 >= t.map.end();
            if past_end {
                t.map.reset(id.index + 1);
            }
            past_end
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Cmd::Purge(id, past_end, tx))?;
        wait(rx, ErrorSubject::Logs, ErrorVerb::Delete).await?;
        {
            let mut t = lock(&self.shared.tail);
            let last = t.first + t.entries.len() as u64;
            if id.index + 1 >= last {
                t.clear();
                t.first = id.index + 1;
                t.written = t.first;
            } else {
                while t.first <= id.index && t.pop_front() {
                    t.first += 1;
                }
            }
        }
        self.meta.purged = Some(id);
        if self.meta.last_log.is_none_or(|l| l.index < id.index) {
            self.meta.last_log = Some(id);
        }
        Ok(())
    }
}

async fn wait(
    rx: tokio::sync::oneshot::Receiver<Result<(), JournalError>>,
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> Result<(), StorageError> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_err(subject, verb, e)),
        Err(_) => Err(io_err(
            subject,
            verb,
            std::io::Error::other("the journal I/O thread has stopped"),
        )),
    }
}

/// The I/O thread: applies queued commands in order, batching appends.
fn io_thread(mut j: Journal, rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    let mut b = Batch {
        committed: j.raft_state().committed,
        state_dirty: false,
        appended: None,
        callbacks: Vec::new(),
        failed: None,
    };
    let mut scratch = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        while cmds.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        for cmd in cmds {
            match cmd {
                Cmd::Append(entries, cb) => {
                    if b.failed.is_none() {
                        for (e, at) in &entries {
                            let r = first_entry_here(&mut j, e.log_id.index).and_then(|()| {
                                codec::for_each_record(e, *at, &mut scratch, |ne| {
                                    j.append_entry(ne)
                                })
                            });
                            if let Err(e) = r {
                                b.failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    if let Some((e, _)) = entries.last() {
                        b.appended = Some(e.log_id.index + 1);
                    }
                    b.callbacks.push(cb);
                }
                Cmd::Vote(v, done) => {
                    b.flush(&mut j, &shared);
                    let mut st = *j.raft_state();
                    st.vote = Some(stored_vote(&v));
                    let r = j.set_raft_state(&st, true);
                    let _ = done.send(r);
                }
                Cmd::Truncate(index, done) => {
                    b.flush(&mut j, &shared);
                    let r = j.truncate(index);
                    if r.is_ok() {
                        tracing::warn!(
                            from = index,
                            "raft: conflicting uncommitted log tail truncated"
                        );
                    }
                    let _ = done.send(r);
                }
                Cmd::Purge(id, past_end, done) => {
                    b.flush(&mut j, &shared);
                    let r = if past_end {
                        let at = j.next_offset();
                        j.reset(at, Some(pos(&id))).and_then(|()| {
                            let mut st = *j.raft_state();
                            st.first_entry = id.index + 1;
                            j.set_raft_state(&st, true)
                        })
                    } else {
                        let mut st = *j.raft_state();
                        st.purged = Some(pos(&id));
                        j.set_raft_state(&st, true)
                    };
                    let _ = done.send(r);
                }
            }
        }
        b.flush(&mut j, &shared);
    }
}

/// Notes in the header that the (empty) journal's first entry is `index`,
/// if it says otherwise (a log restarting after a purge).
fn first_entry_here(j: &mut Journal, index: u64) -> Result<(), JournalError> {
    if j.next_offset() == j.first_offset() && j.raft_state().first_entry != index {
        let mut st = *j.raft_state();
        st.first_entry = index;
        j.set_raft_state(&st, false)?;
    }
    Ok(())
}

/// What the I/O thread has taken in and not yet made durable.
struct Batch {
    /// The committed position to write into the header with the next flush.
    committed: Option<LogPos>,
    state_dirty: bool,
    /// The index after the last entry appended since the last flush.
    appended: Option<u64>,
    /// openraft's callbacks of the appends since the last flush.
    callbacks: Vec<LogFlushed<TypeConfig>>,
    /// An append failed: the batch's callbacks get this error.
    failed: Option<String>,
}

impl Batch {
    /// Writes what is pending (entries and, if changed, the header state)
    /// with one fdatasync, then tells openraft.
    fn flush(&mut self, j: &mut Journal, shared: &Shared) {
        // A new committed position alone is no reason to sync: it goes to
        // the header with the next appends (a stale one is a safe lower
        // bound), so committing costs no extra fdatasync.
        if self.callbacks.is_empty() {
            return;
        }
        // The committed position openraft last reported, if its entry is
        // in the file once this flush is done (an entry whose append is
        // still queued behind this batch waits for a later flush).
        {
            let t = lock(&shared.tail);
            let end = self.appended.unwrap_or(t.written);
            if let Some(c) = t.committed.filter(|c| c.index < end) {
                if self.committed != Some(c) {
                    self.committed = Some(c);
                    self.state_dirty = true;
                }
            }
        }
        let (committed, state_dirty, callbacks, failed) = (
            self.committed,
            &mut self.state_dirty,
            &mut self.callbacks,
            &mut self.failed,
        );
        let mut r = Ok(());
        if failed.is_none() && *state_dirty {
            let mut st = *j.raft_state();
            st.committed = committed;
            r = j.set_raft_state(&st, false);
        }
        if failed.is_none() && r.is_ok() {
            r = j.commit(true);
        }
        *state_dirty = false;
        let result = match (failed.take(), r) {
            (Some(msg), _) => Err(msg),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(())) => Ok(()),
        };
        if result.is_ok() {
            let mut t = lock(&shared.tail);
            if let Some(a) = self.appended.take() {
                t.written = a;
            }
            // Keep a bounded tail of written entries for replication.
            while (t.entries.len() > TAIL_KEEP || t.bytes > TAIL_BYTES) && t.first < t.written {
                t.pop_front();
                t.first += 1;
            }
        }
        for cb in callbacks.drain(..) {
            match &result {
                Ok(()) => cb.log_io_completed(Ok(())),
                Err(msg) => cb.log_io_completed(Err(std::io::Error::other(msg.clone()))),
            }
        }
    }
}
