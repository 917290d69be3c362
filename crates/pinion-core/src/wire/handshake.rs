//! The SP connection header (RFC sp-tcp-mapping-01 §3, also used by IPC).
//!
//! ```text
//! +------+------+------+---------+-------------------+-------------------+
//! | 0x00 | 'S'  | 'P'  | version | protocol (u16 BE) | reserved = 0x0000 |
//! +------+------+------+---------+-------------------+-------------------+
//! ```
//! Version is 0. A header with different magic or version, or non-zero
//! reserved bytes, is refused (as NNG and mangos do; nanomsg skips the
//! reserved check).

use crate::error::PeerError;

/// Length of the SP header.
pub const HEADER_LEN: usize = 8;

/// The header announcing `protocol`.
pub fn encode_header(protocol: u16) -> [u8; HEADER_LEN] {
    let p = protocol.to_be_bytes();
    [0x00, b'S', b'P', 0x00, p[0], p[1], 0x00, 0x00]
}

/// Checks a received header and returns the peer's protocol id.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<u16, PeerError> {
    if h[..4] != [0x00, b'S', b'P', 0x00] {
        // A TLS record header: handshake (22), version 3.x (TLS 1.0-1.3
        // ClientHellos say 3.1 or 3.3), then the handshake type
        // ClientHello (1) after the 2-byte length.
        if h[0] == 0x16 && h[1] == 0x03 && h[2] <= 0x04 && h[5] == 0x01 {
            return Err(PeerError::TlsOnPlainPort);
        }
        return Err(PeerError::BadMagic);
    }
    if h[6] != 0 || h[7] != 0 {
        return Err(PeerError::BadReserved);
    }
    Ok(u16::from_be_bytes([h[4], h[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_client_hello_is_named_as_such() {
        // The first 8 bytes of a ClientHello (rustls, TLS 1.3).
        let hello = [0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00];
        assert_eq!(decode_header(&hello), Err(PeerError::TlsOnPlainPort));
        // Other garbage stays "bad magic".
        let http = *b"GET / HT";
        assert_eq!(decode_header(&http), Err(PeerError::BadMagic));
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28, 0x00];
        assert_eq!(decode_header(&alert), Err(PeerError::BadMagic));
    }

    #[test]
    fn rep_header_matches_nng() {
        // REP (0x31) as captured from NNG 1.11.
        assert_eq!(encode_header(0x31), [0, 0x53, 0x50, 0, 0, 0x31, 0, 0]);
        assert_eq!(decode_header(&encode_header(0x31)), Ok(0x31));
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(decode_header(b"\0SQ\0\0\x30\0\0"), Err(PeerError::BadMagic));
        assert_eq!(
            decode_header(b"\0SP\x01\0\x30\0\0"),
            Err(PeerError::BadMagic)
        );
        assert_eq!(
            decode_header(b"\0SP\0\0\x30\0\x01"),
            Err(PeerError::BadReserved)
        );
        assert_eq!(decode_header(b"GET / HT"), Err(PeerError::BadMagic));
    }
}
