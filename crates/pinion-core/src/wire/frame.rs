//! Message framing on a byte stream.
//!
//! TCP (RFC sp-tcp-mapping-01): each message is a 64-bit big-endian length
//! followed by that many bytes (protocol header and body together).
//!
//! IPC (RFC sp-ipc-mapping-01): each message is a one-byte type, a 64-bit
//! big-endian length and the payload. The only type defined is `0x01`
//! ("in-band"); anything else is a protocol error, as in NNG.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::PeerError;
use crate::message::Message;

/// Which stream framing a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `u64 length | payload`.
    Tcp,
    /// `0x01 | u64 length | payload`.
    Ipc,
}

impl Framing {
    /// Bytes in front of each payload.
    pub const fn prefix_len(self) -> usize {
        match self {
            Framing::Tcp => 8,
            Framing::Ipc => 9,
        }
    }
}

/// The largest length a stream frame may announce, even with no receive
/// limit: NNG 2.0 reserves the top 4 bits of the 64-bit size and refuses
/// anything above this, and no memory could hold it anyway.
pub const MAX_STREAM_MSG: u64 = 0x0fff_ffff_ffff_ffff;

/// The IPC in-band message type.
pub const IPC_MSG_TYPE: u8 = 0x01;

/// Appends `msg` to `out` framed for `framing`.
pub fn encode_frame(framing: Framing, msg: &Message, out: &mut BytesMut) {
    out.reserve(framing.prefix_len() + msg.wire_len());
    encode_prefix(framing, msg, out);
    out.put_slice(&msg.body);
}

/// Appends everything of `msg`'s frame but the body (type byte, length,
/// protocol header), for writers that send large bodies from their own
/// buffer with a vectored write instead of copying them.
pub fn encode_prefix(framing: Framing, msg: &Message, out: &mut BytesMut) {
    if framing == Framing::Ipc {
        out.put_u8(IPC_MSG_TYPE);
    }
    out.put_u64(msg.wire_len() as u64);
    out.put_slice(msg.header.as_slice());
}

/// Incremental decoder for one connection.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    framing: Framing,
    max: u64,
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max` bytes (0: no limit).
    pub fn new(framing: Framing, max: u64) -> Self {
        FrameDecoder { framing, max }
    }

    /// The payload length announced at the front of `buf`, if the prefix is
    /// complete, after checking the type byte and the receive limit. Lets a
    /// reader reserve exactly what the next frame needs.
    pub fn peek_len(&self, buf: &[u8]) -> Result<Option<u64>, PeerError> {
        let p = self.framing.prefix_len();
        if buf.len() < p {
            if self.framing == Framing::Ipc && !buf.is_empty() && buf[0] != IPC_MSG_TYPE {
                return Err(PeerError::BadIpcType(buf[0]));
            }
            return Ok(None);
        }
        let len_at = match self.framing {
            Framing::Tcp => 0,
            Framing::Ipc => {
                if buf[0] != IPC_MSG_TYPE {
                    return Err(PeerError::BadIpcType(buf[0]));
                }
                1
            }
        };
        let len = u64::from_be_bytes(buf[len_at..len_at + 8].try_into().expect("8 bytes"));
        let max = if self.max == 0 {
            MAX_STREAM_MSG
        } else {
            self.max.min(MAX_STREAM_MSG)
        };
        if len > max {
            return Err(PeerError::TooLarge { len, max });
        }
        Ok(Some(len))
    }

    /// Takes the next complete payload off the front of `buf`.
    ///
    /// Returns `Ok(None)` without consuming anything while the frame is
    /// incomplete. The returned `Bytes` shares `buf`'s allocation.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, PeerError> {
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
        let p = self.framing.prefix_len();
        // `len` passed the limit check; on 32-bit targets it may still not fit.
        let Ok(len) = usize::try_from(len) else {
            return Err(PeerError::TooLarge { len, max: self.max });
        };
        if buf.len() - p < len {
            return Ok(None);
        }
        buf.advance(p);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tcp_roundtrip_and_partial() {
        let mut out = BytesMut::new();
        encode_frame(Framing::Tcp, &Message::from_body("ping"), &mut out);
        assert_eq!(&out[..], b"\0\0\0\0\0\0\0\x04ping");
        let d = FrameDecoder::new(Framing::Tcp, 1024);
        let mut part = BytesMut::from(&out[..5]);
        assert_eq!(d.decode(&mut part), Ok(None));
        assert_eq!(part.len(), 5, "nothing consumed on partial input");
        let mut full = out.clone();
        assert_eq!(d.decode(&mut full).unwrap().unwrap(), Bytes::from("ping"));
        assert!(full.is_empty());
    }

    #[test]
    fn huge_length_refused_before_allocation() {
        let d = FrameDecoder::new(Framing::Tcp, 1 << 20);
        let mut b = BytesMut::from(&u64::MAX.to_be_bytes()[..]);
        assert_eq!(
            d.decode(&mut b),
            Err(PeerError::TooLarge {
                len: u64::MAX,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn ipc_type_byte() {
        let mut out = BytesMut::new();
        encode_frame(Framing::Ipc, &Message::from_body("x"), &mut out);
        assert_eq!(&out[..], b"\x01\0\0\0\0\0\0\0\x01x");
        let d = FrameDecoder::new(Framing::Ipc, 0);
        let mut bad = BytesMut::from(&b"\x02"[..]);
        assert_eq!(d.decode(&mut bad), Err(PeerError::BadIpcType(2)));
    }

    proptest! {
        #[test]
        fn any_sequence_roundtrips(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            ipc in any::<bool>(),
            cut in 1usize..64,
        ) {
            let framing = if ipc { Framing::Ipc } else { Framing::Tcp };
            let mut wire = BytesMut::new();
            for b in &bodies {
                encode_frame(framing, &Message::from_body(b.clone()), &mut wire);
            }
            // Feed the stream in chunks of `cut` bytes.
            let d = FrameDecoder::new(framing, 300);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(p) = d.decode(&mut buf).unwrap() {
                    got.push(p.to_vec());
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, bodies);
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), ipc in any::<bool>()) {
            let framing = if ipc { Framing::Ipc } else { Framing::Tcp };
            let d = FrameDecoder::new(framing, 32);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }
    }
}
