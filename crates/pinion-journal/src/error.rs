//! Errors, split by who is at fault ([`Fault`]).

use std::io;

/// Why the bytes at a record position (or the file header) are not a valid
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The file header's CRC32C does not match.
    HeaderChecksum,
    /// The header length or a reserved header field has an unexpected value.
    HeaderFields,
    /// The record length field is below the record header size or above
    /// [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN) (or is zero inside the committed range).
    BadLength,
    /// The file ends inside the record.
    Truncated,
    /// Topic length + payload length + header length differ from the length field.
    LengthMismatch,
    /// The reserved record field is not zero.
    ReservedBits,
    /// The padding after the payload is not zero.
    Padding,
    /// The record's CRC32C does not match its content.
    Checksum,
    /// The record is intact but carries another offset than the one expected there.
    OffsetMismatch,
    /// The end marker (length 0) is followed by non-zero bytes in its slot.
    DirtyEndMarker,
    /// A version-2 record has a kind this build does not know.
    UnknownKind,
    /// Neither Raft state slot of a version-2 header is intact.
    StateSlots,
}

impl CorruptKind {
    /// A short description, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderChecksum => "file header checksum mismatch",
            Self::HeaderFields => "unexpected file header fields",
            Self::BadLength => "impossible record length",
            Self::Truncated => "file ends inside the record",
            Self::LengthMismatch => "record length does not match topic and payload lengths",
            Self::ReservedBits => "reserved record field is not zero",
            Self::Padding => "record padding is not zero",
            Self::Checksum => "record checksum mismatch",
            Self::OffsetMismatch => "record carries an unexpected offset",
            Self::DirtyEndMarker => "non-zero bytes after the end marker",
            Self::UnknownKind => "unknown record kind",
            Self::StateSlots => "both Raft state slots of the header are damaged",
        }
    }
}

impl std::fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operating system or the device failed (I/O error, no space, a
    /// failed fdatasync). May go away: free space, or `recover()` after a
    /// poisoning.
    Io,
    /// The file's content is bad (not a journal, unknown version, corruption).
    /// Retrying does not help; an operator must look at the file.
    Data,
    /// The caller asked for something impossible (record too large, offset
    /// out of range, bad options, journal already open).
    Caller,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A system call failed. `op` names the operation ("write", "fdatasync", …).
    #[error("journal {op} failed: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with a journal header.
    #[error("not a pinion journal: {reason}")]
    NotAJournal {
        /// What is wrong.
        reason: &'static str,
    },
    /// The file is a journal of a format this build cannot read.
    #[error("unsupported journal format version {version} (flags {flags:#06x}); this build reads versions 1 and 2 with flags 0")]
    UnsupportedVersion {
        /// Version found in the header.
        version: u16,
        /// Flags found in the header.
        flags: u16,
    },
    /// The file is damaged at `byte_pos`, where record `offset` was expected,
    /// and it is not a torn tail (a valid record follows), or the damage is
    /// inside the range already known to be committed. Nothing was modified.
    #[error(
        "journal corrupt at byte {byte_pos} (where record offset {offset} was expected): {reason}"
    )]
    Corrupt {
        /// Byte position of the damaged record (0 for the file header).
        byte_pos: u64,
        /// The offset of the record expected at `byte_pos` (= number of valid
        /// records before it).
        offset: u64,
        /// What is wrong there.
        reason: CorruptKind,
    },
    /// `append` was given a record larger than `max_record_bytes`
    /// (record header + topic + payload).
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Encoded record length (header + topic + payload).
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// `append` was given a topic longer than 65535 bytes.
    #[error("topic of {len} bytes exceeds the limit of 65535 bytes")]
    TopicTooLong {
        /// Topic length.
        len: usize,
    },
    /// An fdatasync failed earlier; nothing more is accepted until
    /// [`Journal::recover`](crate::Journal::recover) succeeds.
    #[error("journal poisoned by an earlier fdatasync failure; call recover()")]
    Poisoned,
    /// `seek` to an offset beyond the end of the log.
    #[error("offset {offset} is beyond the end of the journal ({end})")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: u64,
        /// The current end (next offset to be written).
        end: u64,
    },
    /// Invalid [`JournalOptions`](crate::JournalOptions).
    #[error("invalid journal options: {0}")]
    InvalidOptions(&'static str),
    /// Another `Journal` (in this or another process) holds the writer lock.
    #[error("journal is already open for writing by another Journal")]
    Locked,
    /// A Raft operation on a version-1 journal, which has no terms and no
    /// Raft state. `pinion log upgrade` rewrites a version-1 file as
    /// version 2.
    #[error("this journal is format version 1, which cannot hold a Raft log; upgrade it with `pinion log upgrade FILE` first")]
    NeedsVersion2,
    /// An entry was appended (or the log cut or reset) at an index that
    /// does not follow the log.
    #[error("log index {index} does not follow the journal (expected {expected})")]
    OutOfOrder {
        /// The index given.
        index: u64,
        /// The index the journal expected.
        expected: u64,
    },
    /// A truncation would remove an entry at or below the committed index.
    /// Raft never does this; it is refused, and nothing is modified.
    #[error(
        "refusing to truncate the log from index {index}: entries up to {committed} are committed"
    )]
    TruncateCommitted {
        /// The first index that would have been removed.
        index: u64,
        /// The committed index recorded in the header.
        committed: u64,
    },
}

impl JournalError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { op, source }
    }

    /// Whether this is an I/O error meaning "no space left" (ENOSPC) or
    /// "quota exceeded" (EDQUOT). A commit that failed this way dropped its
    /// records and restored the file; a later commit succeeds once space is
    /// freed.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }

    /// Who has to act on this error.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Io { .. } | Self::Poisoned => Fault::Io,
            Self::NotAJournal { .. } | Self::UnsupportedVersion { .. } | Self::Corrupt { .. } => {
                Fault::Data
            }
            Self::RecordTooLarge { .. }
            | Self::TopicTooLong { .. }
            | Self::OffsetOutOfRange { .. }
            | Self::InvalidOptions(_)
            | Self::Locked
            | Self::NeedsVersion2
            | Self::OutOfOrder { .. }
            | Self::TruncateCommitted { .. } => Fault::Caller,
        }
    }
}
