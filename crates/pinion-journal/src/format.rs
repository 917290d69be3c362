//! The on-disk format: constants, the file header, record encoding and the
//! pure record validator. No I/O here; the layout is documented in prose in
//! the crate docs (`lib.rs`).

use crate::error::{CorruptKind, JournalError};

/// The eight magic bytes every journal starts with.
pub const MAGIC: [u8; 8] = *b"PINIONLG";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Length of the version-1 file header in bytes.
pub const HEADER_LEN: u64 = 32;
/// Length of a record header (everything before the topic) in bytes.
pub const RECORD_HEADER_LEN: usize = 56;
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
const R_RESERVED: usize = 54;

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Format version (1).
    pub version: u16,
    /// Header flags (0 in version 1).
    pub flags: u16,
    /// Length of the header in bytes; the first record starts here.
    pub header_len: u64,
    /// When the journal was created, microseconds since the Unix epoch.
    pub created_unix_us: u64,
}

pub(crate) fn encode_header(created_unix_us: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&0u16.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
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
    if version != VERSION || flags != 0 {
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
    if header_len != HEADER_LEN || u32_at(bytes, 24) != 0 {
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

/// Rounds a record length up to the slot it occupies in the file.
pub(crate) fn slot_len(len: u32) -> u64 {
    (u64::from(len) + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// The fields of one validated record (topic and payload as ranges of its slot).
#[derive(Debug, Clone)]
pub(crate) struct RecordView {
    pub offset: u64,
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
pub(crate) fn head(bytes: &[u8]) -> Head {
    let len = u32_at(bytes, R_LEN);
    if len == 0 {
        Head::Zero
    } else if (len as usize) < RECORD_HEADER_LEN || len > MAX_RECORD_LEN {
        Head::Bad(CorruptKind::BadLength)
    } else {
        Head::Slot(slot_len(len))
    }
}

/// Header-only plausibility check of a record (for seeking and for looking
/// for records after a damaged one): `bytes` holds at least the record header.
/// Returns the slot length; the checksum is not verified.
pub(crate) fn check_header(bytes: &[u8]) -> Result<u64, CorruptKind> {
    debug_assert!(bytes.len() >= RECORD_HEADER_LEN);
    let slot = match head(bytes) {
        Head::Slot(s) => s,
        Head::Zero => return Err(CorruptKind::BadLength),
        Head::Bad(k) => return Err(k),
    };
    let len = u32_at(bytes, R_LEN) as usize;
    let topic_len = usize::from(u16_at(bytes, R_TOPIC_LEN));
    let payload_len = u32_at(bytes, R_PAYLOAD_LEN) as usize;
    if RECORD_HEADER_LEN + topic_len + payload_len != len {
        return Err(CorruptKind::LengthMismatch);
    }
    if u16_at(bytes, R_RESERVED) != 0 {
        return Err(CorruptKind::ReservedBits);
    }
    Ok(slot)
}

/// The offset field of a record header.
pub(crate) fn offset_field(bytes: &[u8]) -> u64 {
    u64_at(bytes, R_OFFSET)
}

/// Fully validates the record whose whole slot is `bytes` (length from
/// [`check_header`]), without checking its offset against an expectation.
pub(crate) fn validate(bytes: &[u8]) -> Result<RecordView, CorruptKind> {
    let slot = check_header(bytes)?;
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
    let topic = RECORD_HEADER_LEN..RECORD_HEADER_LEN + topic_len;
    let payload = topic.end..len;
    let mut client_id = [0u8; 16];
    client_id.copy_from_slice(&bytes[R_CLIENT..R_CLIENT + 16]);
    Ok(RecordView {
        offset: u64_at(bytes, R_OFFSET),
        timestamp_us: u64_at(bytes, R_TS),
        client_id,
        seq: u64_at(bytes, R_SEQ),
        topic,
        payload,
    })
}

/// Validates a record and checks that it carries the expected offset.
pub(crate) fn validate_at(bytes: &[u8], expected: u64) -> Result<RecordView, CorruptKind> {
    let v = validate(bytes)?;
    if v.offset != expected {
        return Err(CorruptKind::OffsetMismatch);
    }
    Ok(v)
}

/// Appends one encoded record (with padding) to `out`; the caller has
/// checked the lengths (`topic` ≤ u16::MAX, total ≤ [`MAX_RECORD_LEN`]).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    offset: u64,
    timestamp_us: u64,
    client_id: &[u8; 16],
    seq: u64,
    topic: &[u8],
    payload: &[u8],
) {
    let len = RECORD_HEADER_LEN + topic.len() + payload.len();
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
    out.extend_from_slice(&[0; 2]); // reserved
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
        let h = encode_header(1_700_000_000_000_000);
        assert_eq!(&h[..8], b"PINIONLG");
        assert_eq!(&h[8..10], &[1, 0]);
        assert_eq!(&h[12..16], &[32, 0, 0, 0]);
        let info = decode_header(&h).unwrap();
        assert_eq!(info.created_unix_us, 1_700_000_000_000_000);
        assert_eq!(info.header_len, 32);
    }

    #[test]
    fn record_layout() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 11, &[3; 16], 13, b"abc", b"hello");
        // 56 + 3 + 5 = 64, already a multiple of 8.
        assert_eq!(out.len(), 64);
        assert_eq!(&out[0..4], &64u32.to_le_bytes());
        assert_eq!(&out[8..16], &7u64.to_le_bytes());
        assert_eq!(&out[48..50], &3u16.to_le_bytes());
        assert_eq!(&out[50..54], &5u32.to_le_bytes());
        assert_eq!(&out[56..59], b"abc");
        let v = validate_at(&out, 7).unwrap();
        assert_eq!(&out[v.topic.clone()], b"abc");
        assert_eq!(&out[v.payload.clone()], b"hello");
        assert_eq!(v.seq, 13);
        assert_eq!(
            validate_at(&out, 8).unwrap_err(),
            CorruptKind::OffsetMismatch
        );

        out.clear();
        encode_record(&mut out, 0, 0, &[0; 16], 0, b"t", b"");
        assert_eq!(out.len(), 64, "57 bytes padded to 64");
        out[60] = 1;
        assert_eq!(validate(&out).unwrap_err(), CorruptKind::Padding);
    }
}
