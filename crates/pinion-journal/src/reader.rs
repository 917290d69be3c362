//! Readers: [`Reader`] and [`Record`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{CorruptKind, JournalError};
use crate::format::{self, Fmt, RecordKind};
use crate::journal::{file_len_of, Shared};
use crate::scan::{self, Tail};

/// Bytes read per `pread` by a reader.
const READ_CHUNK: usize = 64 << 10;
/// Index interval of a standalone reader.
const STANDALONE_INDEX_INTERVAL: u32 = 1024;

/// One record read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Logical record number (0, 1, 2, …).
    pub offset: u64,
    /// The Raft term (0 in a single-node log and in version 1).
    pub term: u64,
    /// What the record holds (always a message in version 1).
    pub kind: RecordKind,
    /// The next record belongs to the same Raft entry (see
    /// [`NewEntry::continued`](crate::NewEntry::continued)).
    pub continued: bool,
    /// As appended.
    pub timestamp_us: u64,
    /// As appended.
    pub client_id: [u8; 16],
    /// As appended.
    pub seq: u64,
    /// As appended (shares the reader's read buffer; no copy).
    pub topic: Bytes,
    /// As appended (shares the reader's read buffer; no copy).
    pub payload: Bytes,
    /// Byte position of the record in the file.
    pub byte_pos: u64,
    /// Bytes the record occupies in the file, padding included
    /// (`byte_pos + byte_len` is where the next record starts).
    pub byte_len: u32,
}

#[derive(Debug)]
enum Source {
    /// Created by [`Journal::reader`](crate::Journal::reader): the writer
    /// publishes the committed end and the index.
    Shared(Arc<Shared>),
    /// Created by [`Reader::open`]: own index, end found by reading.
    Standalone(Standalone),
}

#[derive(Debug)]
struct Standalone {
    interval: u32,
    base: u64,
    index: Vec<u64>,
    /// Damage followed by valid records, found by `Reader::open`.
    damage: Option<(u64, u64, CorruptKind)>,
}

/// Iterates over records from any offset, concurrently with the writer.
///
/// Each reader has its own file descriptor and reads with `pread` in 64 KiB
/// chunks; record topics and payloads are slices of those chunks. Every
/// record's checksum is verified.
///
/// A reader from [`Journal::reader`](crate::Journal::reader) sees exactly
/// the committed records and follows new commits. A standalone reader
/// ([`Reader::open`], for a file another process may be writing) sees every
/// record that is completely written with a valid checksum, which can be
/// before the writer's fdatasync; if that commit then fails, the writer
/// drops those records again and may reuse their offsets.
#[derive(Debug)]
pub struct Reader {
    file: File,
    header_len: u64,
    fmt: Fmt,
    /// The writer's cut counter when this reader last looked.
    cuts: u64,
    source: Source,
    /// Next record to return.
    pos: u64,
    offset: u64,
    /// End of the records known to be readable.
    end_pos: u64,
    end_offset: u64,
    /// Read buffer holding file bytes `[chunk_pos, chunk_pos + chunk.len())`.
    chunk: Bytes,
    chunk_pos: u64,
}

impl Reader {
    pub(crate) fn from_shared(file: File, header_len: u64, fmt: Fmt, shared: Arc<Shared>) -> Self {
        let (end_pos, end_offset, base, cuts) = {
            let st = shared.lock();
            (st.bytes, st.offset, st.base, st.cuts)
        };
        Self {
            file,
            header_len,
            fmt,
            cuts,
            source: Source::Shared(shared),
            pos: header_len,
            offset: base,
            end_pos,
            end_offset,
            chunk: Bytes::new(),
            chunk_pos: 0,
        }
    }

    /// Opens a journal read-only, positioned at its first record (offset
    /// 0 unless the log was reset). Scans the whole
    /// file once (verifying checksums) to build a sparse index and find the
    /// end; the file is never modified.
    ///
    /// If the scan finds a damaged record followed by a valid one, it
    /// re-reads a few times (a writer may be in the middle of a write);
    /// if the damage stays, [`next`](Self::next) returns
    /// [`JournalError::Corrupt`] when it gets there. A torn tail is treated
    /// as the (current) end.
    ///
    /// # Errors
    ///
    /// I/O errors, [`JournalError::NotAJournal`],
    /// [`JournalError::UnsupportedVersion`], a damaged file header.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let file = File::open(path).map_err(JournalError::io("open"))?;
        let mut file_len = file_len_of(&file)?;
        let header = scan::read_header(&file, file_len)?;
        let fmt = Fmt {
            version: header.version,
        };
        let base = scan::read_state(&file, file_len, fmt)?.2.first_index;
        let interval = u64::from(STANDALONE_INDEX_INTERVAL);
        let mut index = Vec::new();
        let (mut pos, mut offset) = (header.header_len, base);
        let mut damage = None;
        for attempt in 0..4 {
            let s = scan::scan(&file, file_len, pos, offset, fmt, |p, v| {
                if (v.offset - base).is_multiple_of(interval) {
                    index.push(p);
                }
            })
            .map_err(JournalError::io("read"))?;
            pos = s.valid_end;
            offset = s.next_offset;
            match s.tail {
                Tail::Corrupt {
                    at,
                    offset: expected,
                    reason,
                } => {
                    if attempt == 3 {
                        damage = Some((at, expected, reason));
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                        file_len = file_len_of(&file)?;
                    }
                }
                Tail::Clean | Tail::Torn { .. } => break,
            }
        }
        Ok(Self {
            file,
            header_len: header.header_len,
            fmt,
            cuts: 0,
            source: Source::Standalone(Standalone {
                interval: STANDALONE_INDEX_INTERVAL,
                base,
                index,
                damage,
            }),
            pos: header.header_len,
            offset: base,
            end_pos: pos,
            end_offset: offset,
            chunk: Bytes::new(),
            chunk_pos: 0,
        })
    }

    /// The offset of the record the next call to [`next`](Self::next) returns.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Byte position of the record the next call to [`next`](Self::next) returns.
    pub(crate) fn byte_pos(&self) -> u64 {
        self.pos
    }

    /// The offset of the first record in the file.
    pub fn first_offset(&self) -> u64 {
        match &self.source {
            Source::Shared(sh) => sh.lock().base,
            Source::Standalone(st) => st.base,
        }
    }

    /// One past the last record this reader can currently see.
    pub fn end_offset(&self) -> u64 {
        match &self.source {
            Source::Shared(sh) => sh.lock().offset,
            Source::Standalone(_) => self.end_offset,
        }
    }

    /// Positions the reader so that [`next`](Self::next) returns record
    /// `offset`. Uses the sparse index, then skips forward over record
    /// headers. `offset` equal to the end is allowed.
    ///
    /// An offset below the first record (after a reset) positions the
    /// reader at the first record.
    ///
    /// # Errors
    ///
    /// [`JournalError::OffsetOutOfRange`] beyond the end,
    /// [`JournalError::Corrupt`] if a skipped record header is damaged, I/O errors.
    pub fn seek(&mut self, offset: u64) -> Result<(), JournalError> {
        self.refresh_end();
        let offset = offset.max(self.first_offset());
        if offset > self.end_offset {
            self.refresh_end();
            while offset > self.end_offset && self.extend_end()? {}
        }
        if offset > self.end_offset {
            return Err(JournalError::OffsetOutOfRange {
                offset,
                end: self.end_offset,
            });
        }
        let (mut off, mut pos) = self.index_lookup(offset);
        if self.offset <= offset && self.offset >= off {
            (off, pos) = (self.offset, self.pos);
        }
        let hl = self.fmt.rec_header();
        while off < offset {
            let head = self.bytes_at(pos, hl, self.end_pos, off)?;
            let corrupt = |reason| JournalError::Corrupt {
                byte_pos: pos,
                offset: off,
                reason,
            };
            let slot = format::check_header(&head, self.fmt).map_err(corrupt)?;
            if format::offset_field(&head) != off {
                return Err(corrupt(CorruptKind::OffsetMismatch));
            }
            pos += slot;
            off += 1;
        }
        self.pos = pos;
        self.offset = off;
        Ok(())
    }

    /// The next record, or `None` at the current end. Later calls return
    /// records committed since (tail-follow). An error leaves the position
    /// unchanged, so it repeats until the reader is moved with `seek`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Record, JournalError>> {
        if self.pos >= self.end_pos {
            self.refresh_end();
        }
        if self.pos < self.end_pos {
            return Some(self.read_record());
        }
        if let Source::Standalone(st) = &self.source {
            if let Some((at, offset, reason)) = st.damage {
                if self.pos == at {
                    return Some(Err(JournalError::Corrupt {
                        byte_pos: at,
                        offset,
                        reason,
                    }));
                }
            }
        }
        match self.extend_end() {
            Ok(true) => Some(self.read_record()),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn refresh_end(&mut self) {
        if let Source::Shared(sh) = &self.source {
            let st = sh.lock();
            self.end_pos = st.bytes;
            self.end_offset = st.offset;
            if st.cuts != self.cuts {
                // Records were cut from the end (Raft truncation or reset):
                // buffered bytes may be stale, and a position past the new
                // end steps back to it.
                self.cuts = st.cuts;
                self.chunk = Bytes::new();
                if self.offset < st.base {
                    self.offset = st.base;
                    self.pos = self.header_len;
                } else if self.offset > st.offset || self.pos > st.bytes {
                    self.offset = st.offset;
                    self.pos = st.bytes;
                }
            }
        }
    }

    /// Sparse-index entry at or before `offset`: (offset, byte position).
    fn index_lookup(&self, offset: u64) -> (u64, u64) {
        let pick = |index: &[u64], interval: u32, base: u64| match index.len() {
            0 => (base, self.header_len),
            n => {
                let i = (offset.saturating_sub(base) / u64::from(interval)).min(n as u64 - 1);
                (base + i * u64::from(interval), index[i as usize])
            }
        };
        match &self.source {
            Source::Shared(sh) => {
                let st = sh.lock();
                pick(&st.index, sh.interval, st.base)
            }
            Source::Standalone(st) => pick(&st.index, st.interval, st.base),
        }
    }

    /// Decodes the record at `pos`, which lies below `end_pos`.
    fn read_record(&mut self) -> Result<Record, JournalError> {
        let (pos, offset) = (self.pos, self.offset);
        let corrupt = |reason| JournalError::Corrupt {
            byte_pos: pos,
            offset,
            reason,
        };
        let head = self.bytes_at(pos, self.fmt.rec_header(), self.end_pos, offset)?;
        let slot = format::check_header(&head, self.fmt).map_err(corrupt)?;
        if slot > self.end_pos - pos {
            return Err(corrupt(CorruptKind::Truncated));
        }
        let bytes = self.bytes_at(pos, slot as usize, self.end_pos, offset)?;
        let v = format::validate_at(&bytes, offset, self.fmt).map_err(corrupt)?;
        let rec = Record {
            offset,
            term: v.term,
            kind: v.kind,
            continued: v.continued,
            timestamp_us: v.timestamp_us,
            client_id: v.client_id,
            seq: v.seq,
            topic: bytes.slice(v.topic.clone()),
            payload: bytes.slice(v.payload.clone()),
            byte_pos: pos,
            byte_len: slot as u32,
        };
        self.pos += slot;
        self.offset += 1;
        Ok(rec)
    }

    /// Standalone readers: validates records from `end_pos` on, reading
    /// fresh bytes, and moves the end past them (one chunk's worth at most).
    /// Returns whether the end moved.
    fn extend_end(&mut self) -> Result<bool, JournalError> {
        let Source::Standalone(st) = &self.source else {
            return Ok(false);
        };
        if st.damage.is_some() {
            return Ok(false);
        }
        let file_len = file_len_of(&self.file)?;
        let hl = self.fmt.rec_header();
        let mut moved = false;
        loop {
            let pos = self.end_pos;
            if file_len.saturating_sub(pos) < hl as u64 {
                break;
            }
            if !moved {
                // Never trust buffered bytes beyond the known end.
                self.chunk = Bytes::new();
            } else if pos + hl as u64 > self.chunk_pos + self.chunk.len() as u64 {
                break;
            }
            let head = self.bytes_at(pos, hl, file_len, self.end_offset)?;
            let Ok(slot) = format::check_header(&head, self.fmt) else {
                break;
            };
            if slot > file_len - pos
                || (moved && pos + slot > self.chunk_pos + self.chunk.len() as u64)
            {
                break;
            }
            let bytes = self.bytes_at(pos, slot as usize, file_len, self.end_offset)?;
            if format::validate_at(&bytes, self.end_offset, self.fmt).is_err() {
                break;
            }
            if let Source::Standalone(st) = &mut self.source {
                let interval = u64::from(st.interval);
                let rel = self.end_offset - st.base;
                if rel.is_multiple_of(interval) && rel / interval == st.index.len() as u64 {
                    st.index.push(pos);
                }
            }
            self.end_pos += slot;
            self.end_offset += 1;
            moved = true;
        }
        Ok(moved)
    }

    /// File bytes `[pos, pos + len)` (with `pos + len <= limit`), from the
    /// read buffer or read into a new one of up to 64 KiB (or `len`).
    fn bytes_at(
        &mut self,
        pos: u64,
        len: usize,
        limit: u64,
        offset: u64,
    ) -> Result<Bytes, JournalError> {
        if pos + len as u64 > limit {
            return Err(JournalError::Corrupt {
                byte_pos: pos,
                offset,
                reason: CorruptKind::Truncated,
            });
        }
        let chunk_end = self.chunk_pos + self.chunk.len() as u64;
        if pos < self.chunk_pos || pos + len as u64 > chunk_end {
            let n = (len.max(READ_CHUNK) as u64).min(limit - pos) as usize;
            let mut buf = vec![0u8; n];
            self.file
                .read_exact_at(&mut buf, pos)
                .map_err(JournalError::io("read"))?;
            self.chunk = Bytes::from(buf);
            self.chunk_pos = pos;
        }
        let at = (pos - self.chunk_pos) as usize;
        Ok(self.chunk.slice(at..at + len))
    }
}
