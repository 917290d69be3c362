//! SP wire codecs: the connection header and the stream framings.
//!
//! * [`handshake`]: the 8-byte header both ends send at once when a TCP or
//!   IPC connection comes up (`00 53 50 00 | protocol u16 BE | 00 00`).
//! * [`frame`]: message framing on a byte stream. TCP: `u64 BE length` then
//!   the payload. IPC: a type byte `0x01`, then the same.
//!
//! Decoders are incremental: they return `Ok(None)` and consume nothing while
//! a frame is incomplete, and check a length against the receive limit before
//! anything is allocated for it.

pub mod frame;
pub mod handshake;

pub use frame::{encode_frame, encode_prefix, FrameDecoder, Framing};
pub use handshake::{decode_header, encode_header, HEADER_LEN};
