//! Sequential scanning of a journal file: used by `Journal::open`,
//! `Journal::recover`, `Reader::open`, `verify` and `stat`.
//!
//! The scan reads the file in large chunks, validates every record (length,
//! checksum, expected offset) and, at the first position that is not a valid
//! record, classifies the rest of the file ([`Tail`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::{CorruptKind, JournalError};
use crate::format::{
    self, Fmt, Head, RaftState, RecordView, HEADER_LEN, RECORD_ALIGN, STATE_SLOT_LEN,
};

/// Bytes read per `pread` while scanning.
const SCAN_CHUNK: usize = 1 << 20;

/// A forward-moving window over a file, refilled with one `pread` per chunk.
pub(crate) struct ChunkReader<'f> {
    file: &'f File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'f> ChunkReader<'f> {
    pub(crate) fn new(file: &'f File, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// How many bytes from `pos` are already buffered.
    fn buffered_from(&self, pos: u64) -> usize {
        let end = self.start + self.buf.len() as u64;
        if pos >= self.start && pos < end {
            (end - pos) as usize
        } else {
            0
        }
    }

    /// Bytes `[pos, pos + len)`; the caller guarantees they are inside the
    /// file (`pos + len <= file_len`), so the buffer never exceeds
    /// `max(SCAN_CHUNK, len)` nor the file size.
    pub(crate) fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        debug_assert!(pos + len as u64 <= self.file_len);
        let end = self.start + self.buf.len() as u64;
        if pos < self.start || pos + len as u64 > end {
            let n = (len.max(SCAN_CHUNK) as u64).min(self.file_len - pos) as usize;
            self.buf.clear();
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// What follows the last valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Only zero bytes (or nothing) after the valid records: the clean end.
    Clean,
    /// Damaged or partial bytes with no valid record after them: a torn write.
    /// `nonzero_end` is the end of the last 8-byte word that is not zero.
    Torn {
        at: u64,
        offset: u64,
        nonzero_end: u64,
        reason: CorruptKind,
    },
    /// Damage followed by a valid record: corruption.
    Corrupt {
        at: u64,
        offset: u64,
        reason: CorruptKind,
    },
}

impl Tail {
    pub(crate) fn corrupt_error(&self) -> Option<JournalError> {
        match *self {
            Self::Corrupt { at, offset, reason } => Some(JournalError::Corrupt {
                byte_pos: at,
                offset,
                reason,
            }),
            _ => None,
        }
    }
}

/// The result of a scan.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Offset of the first record not found (= number of records when the
    /// scan started at offset 0).
    pub next_offset: u64,
    /// Byte position just after the last valid record.
    pub valid_end: u64,
    pub tail: Tail,
}

/// Scans records from `pos` (where record `offset` must start) to the end
/// of the file, calling `visit(byte_pos, record)` for each valid record.
pub(crate) fn scan(
    file: &File,
    file_len: u64,
    mut pos: u64,
    mut offset: u64,
    fmt: Fmt,
    mut visit: impl FnMut(u64, &RecordView),
) -> io::Result<Scan> {
    let mut r = ChunkReader::new(file, file_len);
    loop {
        if pos >= file_len {
            return Ok(Scan {
                next_offset: offset,
                valid_end: pos,
                tail: Tail::Clean,
            });
        }
        let avail = file_len - pos;
        let reason = if avail < 4 {
            CorruptKind::Truncated
        } else {
            match format::head(r.get(pos, 4)?, fmt) {
                Head::Zero => CorruptKind::DirtyEndMarker,
                Head::Bad(k) => k,
                Head::Slot(slot) if slot > avail => CorruptKind::Truncated,
                Head::Slot(slot) => {
                    match format::validate_at(r.get(pos, slot as usize)?, offset, fmt) {
                        Ok(v) => {
                            visit(pos, &v);
                            pos += slot;
                            offset += 1;
                            continue;
                        }
                        Err(k) => k,
                    }
                }
            }
        };
        let tail = classify_tail(&mut r, pos, offset, reason, fmt)?;
        return Ok(Scan {
            next_offset: offset,
            valid_end: pos,
            tail,
        });
    }
}

/// Decides what the bytes from `at` (the first position that is not a valid
/// record with offset `offset`) to the end of the file are: zeros (clean end),
/// a torn write (damage with nothing valid after it) or corruption (a valid
/// record follows).
///
/// A "valid record that follows" is an 8-byte aligned position holding a
/// record that passes its checksum and carries an offset that can follow
/// `offset` at that distance. Positions inside the damaged record's own slot
/// are not considered when its header is plausible (so a torn record whose
/// payload happens to contain an encoded record is still a torn tail).
fn classify_tail(
    r: &mut ChunkReader<'_>,
    at: u64,
    offset: u64,
    reason: CorruptKind,
    fmt: Fmt,
) -> io::Result<Tail> {
    let hl = fmt.rec_header();
    let file_len = r.file_len;
    if reason == CorruptKind::OffsetMismatch {
        // An intact record with the wrong offset is never a torn write.
        return Ok(Tail::Corrupt { at, offset, reason });
    }
    // Where candidates may start: after the damaged record's slot if its
    // header is plausible, else right after `at`.
    let skip_to = if file_len - at >= hl as u64 {
        match format::check_header(r.get(at, hl)?, fmt) {
            Ok(slot) => at + slot,
            Err(_) => at + RECORD_ALIGN,
        }
    } else {
        at + RECORD_ALIGN
    };
    let mut nonzero_end = at;
    let mut q = at;
    while q < file_len {
        // Continue in the buffered chunk if there is one (after a rejected
        // candidate), else read the next one.
        let n = match r.buffered_from(q) {
            b if b >= RECORD_ALIGN as usize => b,
            _ => SCAN_CHUNK,
        };
        let n = (n as u64).min(file_len - q) as usize;
        let chunk = r.get(q, n)?;
        if chunk.iter().all(|&b| b == 0) {
            // The common case: the pre-zeroed region.
            q += n as u64;
            continue;
        }
        let mut candidate = None;
        let mut i = 0usize;
        while i < n {
            let w = &chunk[i..n.min(i + RECORD_ALIGN as usize)];
            if w.iter().any(|&b| b != 0) {
                let p = q + i as u64;
                nonzero_end = p + w.len() as u64;
                if p >= skip_to && plausible(&chunk[i..], p, file_len, at, offset, fmt) {
                    candidate = Some(p);
                    break;
                }
            }
            i += RECORD_ALIGN as usize;
        }
        match candidate {
            Some(p) => {
                // `plausible` guarantees a whole record header fits in the file.
                let header = r.get(p, hl)?;
                if plausible(header, p, file_len, at, offset, fmt) {
                    if let Ok(slot) = format::check_header(header, fmt) {
                        if format::validate(r.get(p, slot as usize)?, fmt).is_ok() {
                            return Ok(Tail::Corrupt { at, offset, reason });
                        }
                    }
                }
                q = p + RECORD_ALIGN;
            }
            None => q += n as u64,
        }
    }
    if nonzero_end == at {
        Ok(Tail::Clean)
    } else {
        Ok(Tail::Torn {
            at,
            offset,
            nonzero_end,
            reason,
        })
    }
}

/// Cheap pre-filter for a record candidate at file position `p` whose bytes
/// start `rest` (possibly cut short by the chunk end).
fn plausible(rest: &[u8], p: u64, file_len: u64, at: u64, offset: u64, fmt: Fmt) -> bool {
    let hl = fmt.rec_header();
    if rest.len() < hl {
        // Header straddles the chunk end: let the caller look closer.
        // (`Head::Slot` implies at least a record header's length.)
        return rest.len() >= 4
            && matches!(format::head(rest, fmt), Head::Slot(s) if s <= file_len - p);
    }
    let Ok(slot) = format::check_header(rest, fmt) else {
        return false;
    };
    if slot > file_len - p {
        return false;
    }
    let o = format::offset_field(rest);
    let max_skipped = (p - at) / hl as u64;
    o >= offset && o - offset <= max_skipped + 1
}

/// Reads and decodes the file header.
pub(crate) fn read_header(file: &File, file_len: u64) -> Result<format::HeaderInfo, JournalError> {
    let n = file_len.min(HEADER_LEN) as usize;
    let mut buf = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut buf[..n], 0)
        .map_err(JournalError::io("read"))?;
    format::decode_header(&buf[..n])
}

/// Reads the Raft state slots of a version-2 header: the intact slot with
/// the higher generation wins. Returns (generation, slot number, state);
/// version 1 has no slots and gives generation 0 and the default state.
///
/// # Errors
///
/// [`CorruptKind::StateSlots`] if neither slot is intact (a torn write
/// damages at most the slot being written, so this is damage, not a crash).
pub(crate) fn read_state(
    file: &File,
    file_len: u64,
    fmt: Fmt,
) -> Result<(u64, u64, RaftState), JournalError> {
    if fmt.version == 1 {
        return Ok((0, 1, RaftState::default()));
    }
    if file_len < fmt.header_len() {
        return Err(JournalError::NotAJournal {
            reason: "file shorter than the journal header",
        });
    }
    let mut buf = [0u8; 2 * STATE_SLOT_LEN as usize];
    file.read_exact_at(&mut buf, HEADER_LEN)
        .map_err(JournalError::io("read"))?;
    let a = format::decode_state(&buf[..STATE_SLOT_LEN as usize]);
    let b = format::decode_state(&buf[STATE_SLOT_LEN as usize..]);
    match (a, b) {
        (Some((ga, sa)), Some((gb, _))) if ga > gb => Ok((ga, 0, sa)),
        (Some((ga, sa)), None) => Ok((ga, 0, sa)),
        (_, Some((gb, sb))) => Ok((gb, 1, sb)),
        (None, None) => Err(JournalError::Corrupt {
            byte_pos: HEADER_LEN,
            offset: 0,
            reason: CorruptKind::StateSlots,
        }),
    }
}

/// End (exclusive, rounded up to 8 bytes) of the last non-zero byte in
/// `[from, to)`, or `from` if the range is all zeros.
pub(crate) fn nonzero_end(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut r = ChunkReader::new(file, to);
    let mut end = from;
    let mut q = from;
    while q < to {
        let n = (SCAN_CHUNK as u64).min(to - q) as usize;
        let chunk = r.get(q, n)?;
        if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
            end = (q + last as u64 + 1).next_multiple_of(RECORD_ALIGN).min(to);
        }
        q += n as u64;
    }
    Ok(end)
}
