//! The on-disk format: constants, the file header, record encoding and the
//! pure record validator. No I/O here; the layout is documented in prose in
//! the crate docs (`lib.rs`).

use crate::error::{CorruptKind, JournalError};

/// The eight magic bytes every journal starts with.
pub const MAGIC: [u8; 8] = *b"PINIONLG";
/// The format version this build writes for new journals. It reads and
/// appends to version 1 files too (see the crate docs).
pub const VERSION: u16 = 2;
/// Length of the fixed file header (magic, version, flags, header length,
/// creation time, CRC) in bytes; in version 2 the two Raft state slots
/// follow it (see [`STATE_SLOT_LEN`]).
pub const HEADER_LEN: u64 = 32;
/// Length of one Raft state slot of a version-2 header.
pub const STATE_SLOT_LEN: u64 = 128;
/// Length of a version-1 record header (everything before the topic) in
/// bytes. A version-2 record header is 8 bytes longer (the term).
pub const RECORD_HEADER_LEN: usize = 56;
/// Length of a version-2 record header in bytes.
pub const RECORD_HEADER_LEN_V2: usize = 64;
/// Records start and end on multiples of this many bytes (zero padding).
pub const RECORD_ALIGN: u64 = 8;
/// Format limit on a record's length field (header + topic + payload).
/// Readers treat a longer length field as damage, so no reader ever
/// allocates more than this for one record.
pub const MAX_RECORD_LEN: u32 = 64 << 20;

// Record header field positions.
const R_LEN: usize = 0;
const R_CRC: usize = 4;
const R_OFFSET: usize = 8;
const R_TS: usize = 16;
const R_CLIENT: usize = 24;
const R_SEQ: usize = 40;
const R_TOPIC_LEN: usize = 48;
const R_PAYLOAD_LEN: usize = 50;
/// Version 1: a reserved u16, zero. Version 2: the record kind (u8) and a
/// flags byte.
const R_RESERVED: usize = 54;
const R_KIND: usize = 54;
const R_FLAGS: usize = 55;
/// Record flag (version 2): the next record belongs to the same Raft entry
/// (an entry that carries several messages); messages only.
const RF_CONTINUED: u8 = 1;
const R_TERM: usize = 56;

/// The layout of one format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fmt {
    pub version: u16,
}

#[cfg(test)]
impl Fmt {
    pub(crate) const V1: Fmt = Fmt { version: 1 };
    pub(crate) const V2: Fmt = Fmt { version: 2 };
}

impl Fmt {
    /// Bytes of the record header.
    pub(crate) fn rec_header(self) -> usize {
        if self.version == 1 {
            RECORD_HEADER_LEN
        } else {
            RECORD_HEADER_LEN_V2
        }
    }

    /// Bytes of the file header (where the first record starts).
    pub(crate) fn header_len(self) -> u64 {
        if self.version == 1 {
            HEADER_LEN
        } else {
            HEADER_LEN + 2 * STATE_SLOT_LEN
        }
    }
}

/// What a record holds (version 2; every version-1 record is a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A published message: timestamp, client id, seq, topic and payload.
    Message,
    /// A Raft blank entry (a new leader's first entry): no content.
    Blank,
    /// A Raft membership entry: the payload is the encoded membership
    /// (its encoding is the caller's; the journal does not interpret it).
    Membership,
}

impl RecordKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Message => 0,
            Self::Blank => 1,
            Self::Membership => 2,
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Message),
            1 => Some(Self::Blank),
            2 => Some(Self::Membership),
            _ => None,
        }
    }
}

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Format version (1 or 2).
    pub version: u16,
    /// Header flags (0 in both versions).
    pub flags: u16,
    /// Length of the header in bytes; the first record starts here.
    pub header_len: u64,
    /// When the journal was created, microseconds since the Unix epoch.
    pub created_unix_us: u64,
}

pub(crate) fn encode_header(created_unix_us: u64, fmt: Fmt) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&fmt.version.to_le_bytes());
    h[10..12].copy_from_slice(&0u16.to_le_bytes());
    h[12..16].copy_from_slice(&(fmt.header_len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&created_unix_us.to_le_bytes());
    // 24..28 reserved, zero.
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes the file header from the first bytes of a file (`bytes` may be
/// shorter than a header when the file is).
pub(crate) fn decode_header(bytes: &[u8]) -> Result<HeaderInfo, JournalError> {
    if bytes.is_empty() {
        return Err(JournalError::NotAJournal {
            reason: "empty file",
        });
    }
    if bytes.len() < MAGIC.len() || bytes[..8] != MAGIC {
        return Err(JournalError::NotAJournal {
            reason: "magic bytes are not PINIONLG",
        });
    }
    if bytes.len() < 12 {
        return Err(JournalError::NotAJournal {
            reason: "file shorter than the journal header",
        });
    }
    let version = u16_at(bytes, 8);
    let flags = u16_at(bytes, 10);
    // The version is checked before the rest: a later version may lay out
    // the remainder of its header differently.
    if !(version == 1 || version == 2) || flags != 0 {
        return Err(JournalError::UnsupportedVersion { version, flags });
    }
    if bytes.len() < HEADER_LEN as usize {
        return Err(JournalError::NotAJournal {
            reason: "file shorter than the journal header",
        });
    }
    let crc = u32_at(bytes, 28);
    if crc32c::crc32c(&bytes[0..28]) != crc {
        return Err(JournalError::Corrupt {
            byte_pos: 0,
            offset: 0,
            reason: CorruptKind::HeaderChecksum,
        });
    }
    let header_len = u64::from(u32_at(bytes, 12));
    if header_len != (Fmt { version }).header_len() || u32_at(bytes, 24) != 0 {
        return Err(JournalError::Corrupt {
            byte_pos: 0,
            offset: 0,
            reason: CorruptKind::HeaderFields,
        });
    }
    Ok(HeaderInfo {
        version,
        flags,
        header_len,
        created_unix_us: u64_at(bytes, 16),
    })
}

/// A Raft log position: (term, index). With one leader per term, this
/// names one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// The term of the entry.
    pub term: u64,
    /// The index (= offset) of the entry.
    pub index: u64,
}

/// A Raft vote as the journal stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredVote {
    /// The term of the vote.
    pub term: u64,
    /// The node voted for (or the leader, once committed); `None` while
    /// the node has not voted in this term.
    pub node_id: Option<u64>,
    /// Whether a quorum granted it (the node is the established leader).
    pub committed: bool,
}

/// The Raft state a version-2 journal keeps in its header, next to the
/// records: written by [`Journal::set_raft_state`](crate::Journal::set_raft_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RaftState {
    /// Offset of the first record in the file (0 unless the log was reset
    /// past its end, e.g. after a snapshot was installed).
    pub first_index: u64,
    /// The last vote.
    pub vote: Option<StoredVote>,
    /// The last committed entry known when the state was written (a lower
    /// bound: the real commit index may be ahead).
    pub committed: Option<LogPos>,
    /// The last purged entry: records up to it may be dropped.
    pub purged: Option<LogPos>,
    /// The Raft index of the entry the first record belongs to. A Raft
    /// entry may span several records (see [`NewEntry::continued`]), so
    /// Raft indexes and offsets differ; 0 in a log that was never reset.
    ///
    /// [`NewEntry::continued`]: crate::NewEntry::continued
    pub first_entry: u64,
}

// State slot field positions (version 2; two slots after the fixed header).
const S_GEN: usize = 0;
const S_FIRST: usize = 8;
const S_VOTE_TERM: usize = 16;
const S_VOTE_NODE: usize = 24;
const S_FLAGS: usize = 32;
const S_COMMITTED: usize = 40;
const S_PURGED: usize = 56;
const S_FIRST_ENTRY: usize = 72;
const S_RESERVED: usize = 80;
const S_CRC: usize = 124;
const F_VOTE: u8 = 1;
const F_VOTE_COMMITTED: u8 = 2;
const F_COMMITTED: u8 = 4;
const F_PURGED: u8 = 8;
const F_VOTED_FOR: u8 = 16;

/// Byte position of state slot `i` (0 or 1).
pub(crate) fn state_slot_pos(i: u64) -> u64 {
    HEADER_LEN + i * STATE_SLOT_LEN
}

/// Encodes a state slot with generation `generation` (> 0).
pub(crate) fn encode_state(st: &RaftState, generation: u64) -> [u8; STATE_SLOT_LEN as usize] {
    let mut b = [0u8; STATE_SLOT_LEN as usize];
    b[S_GEN..S_GEN + 8].copy_from_slice(&generation.to_le_bytes());
    b[S_FIRST..S_FIRST + 8].copy_from_slice(&st.first_index.to_le_bytes());
    b[S_FIRST_ENTRY..S_FIRST_ENTRY + 8].copy_from_slice(&st.first_entry.to_le_bytes());
    let mut flags = 0;
    if let Some(v) = st.vote {
        flags |= F_VOTE;
        if v.committed {
            flags |= F_VOTE_COMMITTED;
        }
        b[S_VOTE_TERM..S_VOTE_TERM + 8].copy_from_slice(&v.term.to_le_bytes());
        if let Some(n) = v.node_id {
            flags |= F_VOTED_FOR;
            b[S_VOTE_NODE..S_VOTE_NODE + 8].copy_from_slice(&n.to_le_bytes());
        }
    }
    let mut put = |at: usize, p: Option<LogPos>, flag: u8, flags: &mut u8| {
        if let Some(p) = p {
            *flags |= flag;
            b[at..at + 8].copy_from_slice(&p.term.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&p.index.to_le_bytes());
        }
    };
    put(S_COMMITTED, st.committed, F_COMMITTED, &mut flags);
    put(S_PURGED, st.purged, F_PURGED, &mut flags);
    b[S_FLAGS] = flags;
    let crc = crc32c::crc32c(&b[..S_CRC]);
    b[S_CRC..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a state slot: `None` if it was never written or is damaged
/// (the other slot then holds the state).
pub(crate) fn decode_state(b: &[u8]) -> Option<(u64, RaftState)> {
    if b.len() < STATE_SLOT_LEN as usize || crc32c::crc32c(&b[..S_CRC]) != u32_at(b, S_CRC) {
        return None;
    }
    let generation = u64_at(b, S_GEN);
    let flags = b[S_FLAGS];
    if generation == 0
        || flags & !(F_VOTE | F_VOTE_COMMITTED | F_COMMITTED | F_PURGED | F_VOTED_FOR) != 0
        || b[S_FLAGS + 1..S_COMMITTED].iter().any(|&x| x != 0)
        || b[S_RESERVED..S_CRC].iter().any(|&x| x != 0)
    {
        return None;
    }
    let pos = |at: usize, flag: u8| {
        (flags & flag != 0).then(|| LogPos {
            term: u64_at(b, at),
            index: u64_at(b, at + 8),
        })
    };
    let vote = (flags & F_VOTE != 0).then(|| StoredVote {
        term: u64_at(b, S_VOTE_TERM),
        node_id: (flags & F_VOTED_FOR != 0).then(|| u64_at(b, S_VOTE_NODE)),
        committed: flags & F_VOTE_COMMITTED != 0,
    });
    Some((
        generation,
        RaftState {
            first_index: u64_at(b, S_FIRST),
            vote,
            committed: pos(S_COMMITTED, F_COMMITTED),
            purged: pos(S_PURGED, F_PURGED),
            first_entry: u64_at(b, S_FIRST_ENTRY),
        },
    ))
}

/// Rounds a record length up to the slot it occupies in the file.
pub(crate) fn slot_len(len: u32) -> u64 {
    (u64::from(len) + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// The fields of one validated record (topic and payload as ranges of its slot).
#[derive(Debug, Clone)]
pub(crate) struct RecordView {
    pub offset: u64,
    pub term: u64,
    pub kind: RecordKind,
    pub continued: bool,
    pub timestamp_us: u64,
    pub client_id: [u8; 16],
    pub seq: u64,
    /// Range of the topic within the slot.
    pub topic: std::ops::Range<usize>,
    /// Range of the payload within the slot.
    pub payload: std::ops::Range<usize>,
}

/// What the first bytes at a record position say, before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// Length field 0: the end marker (pre-zeroed region or clean end).
    Zero,
    /// A plausible record occupying this many bytes (with padding).
    Slot(u64),
    /// The length field cannot be a record.
    Bad(CorruptKind),
}

/// Interprets the length field (`bytes` holds at least 4 bytes).
pub(crate) fn head(bytes: &[u8], fmt: Fmt) -> Head {
    let len = u32_at(bytes, R_LEN);
    if len == 0 {
        Head::Zero
    } else if (len as usize) < fmt.rec_header() || len > MAX_RECORD_LEN {
        Head::Bad(CorruptKind::BadLength)
    } else {
        Head::Slot(slot_len(len))
    }
}

/// Header-only plausibility check of a record (for seeking and for looking
/// for records after a damaged one): `bytes` holds at least the record header.
/// Returns the slot length; the checksum is not verified.
pub(crate) fn check_header(bytes: &[u8], fmt: Fmt) -> Result<u64, CorruptKind> {
    debug_assert!(bytes.len() >= fmt.rec_header());
    let slot = match head(bytes, fmt) {
        Head::Slot(s) => s,
        Head::Zero => return Err(CorruptKind::BadLength),
        Head::Bad(k) => return Err(k),
    };
    let len = u32_at(bytes, R_LEN) as usize;
    let topic_len = usize::from(u16_at(bytes, R_TOPIC_LEN));
    let payload_len = u32_at(bytes, R_PAYLOAD_LEN) as usize;
    if fmt.rec_header() + topic_len + payload_len != len {
        return Err(CorruptKind::LengthMismatch);
    }
    if fmt.version == 1 {
        if u16_at(bytes, R_RESERVED) != 0 {
            return Err(CorruptKind::ReservedBits);
        }
    } else {
        let flags = bytes[R_FLAGS];
        if flags & !RF_CONTINUED != 0 {
            return Err(CorruptKind::ReservedBits);
        }
        match RecordKind::from_u8(bytes[R_KIND]) {
            None => return Err(CorruptKind::UnknownKind),
            // Only messages share an entry.
            Some(RecordKind::Blank | RecordKind::Membership) if flags != 0 => {
                return Err(CorruptKind::ReservedBits)
            }
            // Blank entries have no content at all.
            Some(RecordKind::Blank) if topic_len + payload_len != 0 => {
                return Err(CorruptKind::LengthMismatch)
            }
            Some(_) => {}
        }
    }
    Ok(slot)
}

/// The offset field of a record header.
pub(crate) fn offset_field(bytes: &[u8]) -> u64 {
    u64_at(bytes, R_OFFSET)
}

/// Fully validates the record whose whole slot is `bytes` (length from
/// [`check_header`]), without checking its offset against an expectation.
pub(crate) fn validate(bytes: &[u8], fmt: Fmt) -> Result<RecordView, CorruptKind> {
    let slot = check_header(bytes, fmt)?;
    if bytes.len() as u64 != slot {
        return Err(CorruptKind::Truncated);
    }
    let len = u32_at(bytes, R_LEN) as usize;
    if bytes[len..].iter().any(|&b| b != 0) {
        return Err(CorruptKind::Padding);
    }
    if crc32c::crc32c(&bytes[R_OFFSET..len]) != u32_at(bytes, R_CRC) {
        return Err(CorruptKind::Checksum);
    }
    let topic_len = usize::from(u16_at(bytes, R_TOPIC_LEN));
    let topic = fmt.rec_header()..fmt.rec_header() + topic_len;
    let payload = topic.end..len;
    let mut client_id = [0u8; 16];
    client_id.copy_from_slice(&bytes[R_CLIENT..R_CLIENT + 16]);
    let (term, kind, continued) = if fmt.version == 1 {
        (0, RecordKind::Message, false)
    } else {
        // check_header accepted the kind and flags bytes.
        let kind = RecordKind::from_u8(bytes[R_KIND]).ok_or(CorruptKind::UnknownKind)?;
        (
            u64_at(bytes, R_TERM),
            kind,
            bytes[R_FLAGS] & RF_CONTINUED != 0,
        )
    };
    Ok(RecordView {
        offset: u64_at(bytes, R_OFFSET),
        term,
        kind,
        continued,
        timestamp_us: u64_at(bytes, R_TS),
        client_id,
        seq: u64_at(bytes, R_SEQ),
        topic,
        payload,
    })
}

/// Validates a record and checks that it carries the expected offset.
pub(crate) fn validate_at(
    bytes: &[u8],
    expected: u64,
    fmt: Fmt,
) -> Result<RecordView, CorruptKind> {
    let v = validate(bytes, fmt)?;
    if v.offset != expected {
        return Err(CorruptKind::OffsetMismatch);
    }
    Ok(v)
}

/// The fields of a record to encode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub offset: u64,
    pub term: u64,
    pub kind: RecordKind,
    pub continued: bool,
    pub timestamp_us: u64,
    pub client_id: &'a [u8; 16],
    pub seq: u64,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// Appends one encoded record (with padding) to `out`; the caller has
/// checked the lengths (`topic` ≤ u16::MAX, total ≤ [`MAX_RECORD_LEN`]),
/// and for version 1 that the record is a message of term 0.
pub(crate) fn encode_record(out: &mut Vec<u8>, fmt: Fmt, f: &Fields<'_>) {
    let Fields {
        offset,
        term,
        kind,
        continued,
        timestamp_us,
        client_id,
        seq,
        topic,
        payload,
    } = *f;
    debug_assert!(fmt.version == 2 || (term == 0 && kind == RecordKind::Message && !continued));
    debug_assert!(!continued || kind == RecordKind::Message);
    let len = fmt.rec_header() + topic.len() + payload.len();
    debug_assert!(topic.len() <= usize::from(u16::MAX) && len <= MAX_RECORD_LEN as usize);
    let start = out.len();
    let slot = slot_len(len as u32) as usize;
    out.reserve(slot);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_us.to_le_bytes());
    out.extend_from_slice(client_id);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    if fmt.version == 1 {
        out.extend_from_slice(&[0; 2]); // reserved
    } else {
        let flags = if continued { RF_CONTINUED } else { 0 };
        out.extend_from_slice(&[kind.to_u8(), flags]);
        out.extend_from_slice(&term.to_le_bytes());
    }
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + R_OFFSET..start + len]);
    out[start + R_CRC..start + R_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + slot, 0);
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = encode_header(1_700_000_000_000_000, Fmt::V1);
        assert_eq!(&h[..8], b"PINIONLG");
        assert_eq!(&h[8..10], &[1, 0]);
        assert_eq!(&h[12..16], &[32, 0, 0, 0]);
        let info = decode_header(&h).unwrap();
        assert_eq!(info.created_unix_us, 1_700_000_000_000_000);
        assert_eq!(info.header_len, 32);
        let h = encode_header(5, Fmt::V2);
        assert_eq!(&h[8..10], &[2, 0]);
        let info = decode_header(&h).unwrap();
        assert_eq!((info.version, info.header_len), (2, 288));
        let mut h3 = h;
        h3[8] = 3;
        assert!(matches!(
            decode_header(&h3),
            Err(JournalError::UnsupportedVersion { version: 3, .. })
        ));
    }

    fn fields<'a>(offset: u64, topic: &'a [u8], payload: &'a [u8]) -> Fields<'a> {
        Fields {
            offset,
            term: 0,
            kind: RecordKind::Message,
            continued: false,
            timestamp_us: 11,
            client_id: &[3; 16],
            seq: 13,
            topic,
            payload,
        }
    }

    #[test]
    fn record_layout_v1() {
        let mut out = Vec::new();
        encode_record(&mut out, Fmt::V1, &fields(7, b"abc", b"hello"));
        // 56 + 3 + 5 = 64, already a multiple of 8.
        assert_eq!(out.len(), 64);
        assert_eq!(&out[0..4], &64u32.to_le_bytes());
        assert_eq!(&out[8..16], &7u64.to_le_bytes());
        assert_eq!(&out[48..50], &3u16.to_le_bytes());
        assert_eq!(&out[50..54], &5u32.to_le_bytes());
        assert_eq!(&out[56..59], b"abc");
        let v = validate_at(&out, 7, Fmt::V1).unwrap();
        assert_eq!(&out[v.topic.clone()], b"abc");
        assert_eq!(&out[v.payload.clone()], b"hello");
        assert_eq!((v.seq, v.term, v.kind), (13, 0, RecordKind::Message));
        assert_eq!(
            validate_at(&out, 8, Fmt::V1).unwrap_err(),
            CorruptKind::OffsetMismatch
        );
        // A version-1 record is not a version-2 one (the header is shorter).
        assert!(validate(&out, Fmt::V2).is_err());

        out.clear();
        encode_record(&mut out, Fmt::V1, &fields(0, b"t", b""));
        assert_eq!(out.len(), 64, "57 bytes padded to 64");
        out[60] = 1;
        assert_eq!(validate(&out, Fmt::V1).unwrap_err(), CorruptKind::Padding);
    }

    #[test]
    fn record_layout_v2() {
        let mut out = Vec::new();
        let f = Fields {
            term: 9,
            ..fields(7, b"abc", b"hello")
        };
        encode_record(&mut out, Fmt::V2, &f);
        // 64 + 3 + 5 = 72.
        assert_eq!(out.len(), 72);
        assert_eq!(&out[0..4], &72u32.to_le_bytes());
        assert_eq!(out[54..56], [0, 0], "kind 0 = message, reserved 0");
        assert_eq!(&out[56..64], &9u64.to_le_bytes());
        assert_eq!(&out[64..67], b"abc");
        let v = validate_at(&out, 7, Fmt::V2).unwrap();
        assert_eq!((v.term, v.kind), (9, RecordKind::Message));
        assert_eq!(&out[v.payload.clone()], b"hello");

        out.clear();
        let blank = Fields {
            kind: RecordKind::Blank,
            term: 2,
            ..fields(8, b"", b"")
        };
        encode_record(&mut out, Fmt::V2, &blank);
        assert_eq!(out.len(), 64);
        assert_eq!(validate(&out, Fmt::V2).unwrap().kind, RecordKind::Blank);
        // Unknown kinds and non-zero reserved bytes are damage (the CRC
        // would catch them too; these checks name the cause).
        let mut bad = out.clone();
        bad[54] = 7;
        assert_eq!(check_header(&bad, Fmt::V2), Err(CorruptKind::UnknownKind));
        let mut bad = out.clone();
        bad[55] = 1;
        assert_eq!(
            check_header(&bad, Fmt::V2),
            Err(CorruptKind::ReservedBits),
            "only messages continue an entry"
        );

        // A message that the next record continues (same Raft entry).
        out.clear();
        let cont = Fields {
            continued: true,
            term: 3,
            ..fields(8, b"t", b"p")
        };
        encode_record(&mut out, Fmt::V2, &cont);
        assert_eq!(out[54..56], [0, 1], "kind 0, flag continued");
        assert!(validate(&out, Fmt::V2).unwrap().continued);
        let mut bad = out.clone();
        bad[55] = 2;
        assert_eq!(check_header(&bad, Fmt::V2), Err(CorruptKind::ReservedBits));

        out.clear();
        let mem = Fields {
            kind: RecordKind::Membership,
            ..fields(9, b"", b"{1,2,3}")
        };
        encode_record(&mut out, Fmt::V2, &mem);
        let v = validate(&out, Fmt::V2).unwrap();
        assert_eq!(
            (v.kind, &out[v.payload.clone()]),
            (RecordKind::Membership, &b"{1,2,3}"[..])
        );
    }

    #[test]
    fn state_slot_round_trip_and_damage() {
        assert_eq!(
            decode_state(&[0u8; 128]),
            None,
            "a zero slot was never written"
        );
        let st = RaftState {
            first_index: 21,
            vote: Some(StoredVote {
                term: 5,
                node_id: Some(2),
                committed: true,
            }),
            committed: Some(LogPos { term: 5, index: 40 }),
            purged: None,
            first_entry: 17,
        };
        let b = encode_state(&st, 7);
        assert_eq!(decode_state(&b), Some((7, st)));
        let empty = RaftState::default();
        assert_eq!(decode_state(&encode_state(&empty, 1)), Some((1, empty)));
        for i in 0..128 {
            let mut d = b;
            d[i] ^= 0x40;
            assert_eq!(decode_state(&d), None, "flipped byte {i} went unnoticed");
        }
    }
}
