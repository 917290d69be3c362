//! Offline tools: [`verify`], [`stat`] (read-only) and [`repair`].

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::JournalError;
use crate::format::{Fmt, HeaderInfo, RaftState};
use crate::journal::{cut_tail, file_len_of, Truncation};
use crate::scan::{self, Tail};

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file header.
    pub header: HeaderInfo,
    /// Number of valid records (= the next offset).
    pub records: u64,
    /// Bytes of header and valid records.
    pub valid_bytes: u64,
    /// File size (valid bytes, torn tail, pre-zeroed region).
    pub file_bytes: u64,
    /// Timestamp of the first record.
    pub first_timestamp_us: Option<u64>,
    /// Timestamp of the last record.
    pub last_timestamp_us: Option<u64>,
    /// A torn tail that [`Journal::open`](crate::Journal::open) would cut
    /// (reported here, not fixed).
    pub torn_tail: Option<Truncation>,
}

/// Offset and timestamp of one record, for [`Stat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    /// The record's offset.
    pub offset: u64,
    /// The record's timestamp.
    pub timestamp_us: u64,
}

/// What [`stat`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Format version from the header.
    pub version: u16,
    /// Header flags.
    pub flags: u16,
    /// Creation time from the header, microseconds since the Unix epoch.
    pub created_unix_us: u64,
    /// Number of valid records.
    pub records: u64,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Bytes of header and valid records.
    pub valid_bytes: u64,
    /// Zero bytes at the end of the file (the pre-zeroed region).
    pub preallocated_bytes: u64,
    /// The first record.
    pub first: Option<RecordSummary>,
    /// The last record.
    pub last: Option<RecordSummary>,
    /// Number of distinct client ids among the records.
    pub distinct_clients: u64,
    /// A torn tail that `Journal::open` would cut.
    pub torn_tail: Option<Truncation>,
    /// The Raft state in the header (version 2; the default for version 1).
    pub raft: RaftState,
}

/// Scans a whole journal read-only and reports what it holds. Never
/// modifies the file.
///
/// # Errors
///
/// [`JournalError::Corrupt`] for mid-file corruption (a damaged record
/// followed by a valid one): `byte_pos` is the damaged record and `offset`
/// the number of valid records before it. Also the header errors and I/O.
pub fn verify(path: &Path) -> Result<VerifyReport, JournalError> {
    let i = inspect(path, false)?;
    Ok(VerifyReport {
        header: i.header,
        records: i.records,
        valid_bytes: i.valid_bytes,
        file_bytes: i.file_bytes,
        first_timestamp_us: i.first.map(|r| r.timestamp_us),
        last_timestamp_us: i.last.map(|r| r.timestamp_us),
        torn_tail: i.torn_tail,
    })
}

/// Header information and statistics of a journal (one read-only scan).
///
/// # Errors
///
/// As [`verify`].
pub fn stat(path: &Path) -> Result<Stat, JournalError> {
    let i = inspect(path, true)?;
    Ok(Stat {
        version: i.header.version,
        flags: i.header.flags,
        created_unix_us: i.header.created_unix_us,
        records: i.records,
        file_bytes: i.file_bytes,
        valid_bytes: i.valid_bytes,
        preallocated_bytes: i.zero_tail,
        first: i.first,
        last: i.last,
        distinct_clients: i.clients,
        torn_tail: i.torn_tail,
        raft: i.raft,
    })
}

/// Cuts a journal at its first damaged record, **dropping every record
/// after it**, zeroing or truncating, then fdatasyncs. For an operator after
/// [`verify`] or [`Journal::open`](crate::Journal::open) reported
/// [`JournalError::Corrupt`] (e.g. pages of an unsynced commit reached the
/// disk out of order before a power loss, or the media failed). Returns
/// what was cut, or `None` if the journal was intact.
///
/// # Errors
///
/// [`JournalError::Locked`] while a `Journal` has the file open, header and
/// I/O errors.
pub fn repair(path: &Path) -> Result<Option<Truncation>, JournalError> {
    let file = open_locked(path)?;
    let file_len = file_len_of(&file)?;
    let header = scan::read_header(&file, file_len)?;
    let fmt = Fmt {
        version: header.version,
    };
    let base = scan::read_state(&file, file_len, fmt)?.2.first_index;
    let s = scan::scan(&file, file_len, header.header_len, base, fmt, |_, _| {})
        .map_err(JournalError::io("read"))?;
    let (at, offset, reason) = match s.tail {
        Tail::Clean => {
            let _ = file.unlock();
            return Ok(None);
        }
        Tail::Torn {
            at, offset, reason, ..
        }
        | Tail::Corrupt { at, offset, reason } => (at, offset, reason),
    };
    let nonzero_end = scan::nonzero_end(&file, at, file_len).map_err(JournalError::io("read"))?;
    let cut = cut_tail(&file, at, nonzero_end, file_len)?;
    file.sync_data().map_err(JournalError::io("fdatasync"))?;
    let mut t = Truncation::from_tail(at, offset, cut.bytes_cut, reason);
    if matches!(s.tail, Tail::Corrupt { .. }) {
        t.reason = format!(
            "corruption at byte {at} (record offset {offset}): {reason}; cut {} bytes including valid records after it",
            cut.bytes_cut
        );
    }
    let _ = file.unlock();
    Ok(Some(t))
}

struct Inspection {
    header: HeaderInfo,
    records: u64,
    valid_bytes: u64,
    file_bytes: u64,
    zero_tail: u64,
    first: Option<RecordSummary>,
    last: Option<RecordSummary>,
    clients: u64,
    torn_tail: Option<Truncation>,
    raft: RaftState,
}

fn inspect(path: &Path, count_clients: bool) -> Result<Inspection, JournalError> {
    let file = File::open(path).map_err(JournalError::io("open"))?;
    let file_len = file_len_of(&file)?;
    let header = scan::read_header(&file, file_len)?;
    let fmt = Fmt {
        version: header.version,
    };
    let raft = scan::read_state(&file, file_len, fmt)?.2;
    let mut first = None;
    let mut last = None;
    let mut clients = HashSet::new();
    let s = scan::scan(
        &file,
        file_len,
        header.header_len,
        raft.first_index,
        fmt,
        |_, v| {
            let r = RecordSummary {
                offset: v.offset,
                timestamp_us: v.timestamp_us,
            };
            first.get_or_insert(r);
            last = Some(r);
            if count_clients {
                clients.insert(v.client_id);
            }
        },
    )
    .map_err(JournalError::io("read"))?;
    if let Some(e) = s.tail.corrupt_error() {
        return Err(e);
    }
    let (zero_tail, torn_tail) = match s.tail {
        Tail::Torn {
            at,
            offset,
            nonzero_end,
            reason,
        } => {
            // What `Journal::open` would do: zero if zeros follow, else truncate.
            let cut = if nonzero_end < file_len {
                nonzero_end - at
            } else {
                file_len - at
            };
            (
                file_len - nonzero_end,
                Some(Truncation::from_tail(at, offset, cut, reason)),
            )
        }
        _ => (file_len - s.valid_end, None),
    };
    Ok(Inspection {
        header,
        records: s.next_offset - raft.first_index,
        valid_bytes: s.valid_end,
        file_bytes: file_len,
        zero_tail,
        raft,
        first,
        last,
        clients: clients.len() as u64,
        torn_tail,
    })
}

/// What [`upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The file was already version 2: nothing was done.
    pub already: bool,
    /// Records copied (offsets unchanged, term 0, kind message).
    pub records: u64,
    /// Where the version-1 file was kept (never deleted).
    pub kept_at: Option<std::path::PathBuf>,
    /// A torn tail of the version-1 file that was not copied (never
    /// acknowledged data, as `Journal::open` would have cut it).
    pub torn_tail: Option<Truncation>,
}

/// Rewrites a version-1 journal as version 2, so that it can become a Raft
/// log: every record keeps its offset, timestamp, client id, seq, topic
/// and payload, with term 0 and kind "message". The new file is written
/// next to the old one (`<file>.upgrading`), fdatasynced and checked
/// record by record against the old one; then the old file is renamed to
/// `<file>.v1` (kept, never deleted) and the new one takes its name, and
/// the directory is fsynced. A crash at any point leaves either the old
/// file in place or both files complete.
///
/// # Errors
///
/// [`JournalError::Locked`] while a `Journal` (a running hub) has the file
/// open, [`JournalError::Corrupt`] if the old file is damaged (repair it
/// first), `<file>.v1` already existing (as an I/O error, nothing done),
/// header and I/O errors.
pub fn upgrade(path: &Path) -> Result<UpgradeReport, JournalError> {
    use crate::journal::{Journal, JournalOptions, NewRecord};
    use crate::reader::Reader;
    let file = open_locked(path)?;
    let file_len = file_len_of(&file)?;
    let header = scan::read_header(&file, file_len)?;
    if header.version == 2 {
        return Ok(UpgradeReport {
            already: true,
            records: 0,
            kept_at: None,
            torn_tail: None,
        });
    }
    let v = verify(path)?;
    let with_suffix = |suffix: &str| {
        let mut n = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        n.push(suffix);
        path.with_file_name(n)
    };
    let kept = with_suffix(".v1");
    if kept.exists() {
        return Err(JournalError::Io {
            op: "upgrade",
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists; move it away first", kept.display()),
            ),
        });
    }
    let tmp = with_suffix(".upgrading");
    let _ = std::fs::remove_file(&tmp);
    let opts = JournalOptions {
        preallocate: 0,
        create_version: 2,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&tmp, opts)?;
    let mut r = Reader::open(path)?;
    let mut n = 0u64;
    while let Some(rec) = r.next() {
        let rec = rec?;
        let off = j.append(&NewRecord {
            timestamp_us: rec.timestamp_us,
            client_id: rec.client_id,
            seq: rec.seq,
            topic: &rec.topic,
            payload: &rec.payload,
        })?;
        debug_assert_eq!(off, rec.offset);
        n += 1;
        if j.pending_records() >= 4096 {
            j.commit(false)?;
        }
    }
    j.commit(true)?;
    drop(j);
    // Check the copy record by record before anything is renamed.
    let mut a = Reader::open(path)?;
    let mut b = Reader::open(&tmp)?;
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (Some(x), Some(y)) => {
                let (x, y) = (x?, y?);
                let same = x.offset == y.offset
                    && x.timestamp_us == y.timestamp_us
                    && x.client_id == y.client_id
                    && x.seq == y.seq
                    && x.topic == y.topic
                    && x.payload == y.payload;
                if !same {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(JournalError::Io {
                        op: "upgrade",
                        source: std::io::Error::other(format!(
                            "the copy of record {} differs; nothing was changed",
                            x.offset
                        )),
                    });
                }
            }
            _ => {
                let _ = std::fs::remove_file(&tmp);
                return Err(JournalError::Io {
                    op: "upgrade",
                    source: std::io::Error::other(
                        "the copy has another number of records; nothing was changed",
                    ),
                });
            }
        }
    }
    std::fs::rename(path, &kept).map_err(JournalError::io("rename"))?;
    std::fs::rename(&tmp, path).map_err(JournalError::io("rename"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(JournalError::io("fsync directory"))?;
    let _ = file.unlock();
    Ok(UpgradeReport {
        already: false,
        records: n,
        kept_at: Some(kept),
        torn_tail: v.torn_tail,
    })
}

/// The Raft state in a journal's header (version 2), read without scanning
/// the records: what survives of a journal whose records are damaged (for
/// rebuilding a cluster node while keeping its vote).
///
/// # Errors
///
/// Header errors, [`JournalError::NeedsVersion2`] for a version-1 file,
/// [`CorruptKind::StateSlots`](crate::CorruptKind::StateSlots) if both slots
/// are damaged, I/O errors.
pub fn read_raft_state(path: &Path) -> Result<RaftState, JournalError> {
    let file = File::open(path).map_err(JournalError::io("open"))?;
    let file_len = file_len_of(&file)?;
    let header = scan::read_header(&file, file_len)?;
    if header.version == 1 {
        return Err(JournalError::NeedsVersion2);
    }
    let fmt = Fmt {
        version: header.version,
    };
    Ok(scan::read_state(&file, file_len, fmt)?.2)
}

/// Opens `path` read-write with the writer lock (refused while a `Journal`
/// has it open).
fn open_locked(path: &Path) -> Result<File, JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(JournalError::io("open"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::Io {
            op: "lock",
            source: e,
        }),
    }
}
