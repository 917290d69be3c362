//! Arbitrary bytes into the SP header decoder and both stream framings.
//!
//! Never panics; whatever decodes re-encodes to exactly the bytes it came
//! from; feeding the stream in chunks gives the same frames, the same error
//! and the same leftover as feeding it whole (up to where an error stopped
//! it); no payload exceeds the limit.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pinion_core::wire::{decode_header, encode_frame, encode_header, FrameDecoder, Framing, HEADER_LEN};
use pinion_core::{Message, PeerError};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Receive limit; 0 is unlimited.
    max: u16,
    /// Chunk size - 1 for the incremental feed.
    chunk: u8,
    data: Vec<u8>,
}

/// Frames decoded, the error that stopped decoding, and what was left.
fn decode_all(d: &FrameDecoder, chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Bytes>, Option<PeerError>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(p)) => frames.push(p),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), buf),
            }
        }
    }
    (frames, None, buf)
}

fuzz_target!(|input: Input| {
    let data = &input.data[..];

    // The SP header: whatever decodes re-encodes to the same 8 bytes.
    if data.len() >= HEADER_LEN {
        let h: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        if let Ok(proto) = decode_header(&h) {
            assert_eq!(encode_header(proto), h);
        }
    }
    if data.len() >= 2 {
        let proto = u16::from_be_bytes([data[0], data[1]]);
        assert_eq!(decode_header(&encode_header(proto)), Ok(proto));
    }

    for framing in [Framing::Tcp, Framing::Ipc] {
        let d = FrameDecoder::new(framing, u64::from(input.max));
        let (frames, err, rest) = decode_all(&d, &mut std::iter::once(data));
        let step = usize::from(input.chunk) + 1;
        let (frames2, err2, rest2) = decode_all(&d, &mut data.chunks(step));
        assert_eq!(frames, frames2, "chunked feed decodes differently");
        assert_eq!(err, err2);
        if err.is_none() {
            assert_eq!(rest, rest2);
        } else {
            // The chunked feed stops at the error, having seen less.
            assert!(rest.starts_with(&rest2), "chunked feed consumed differently");
        }

        // Round trip: the frames re-encode to the bytes they came from.
        let mut wire = BytesMut::new();
        for f in &frames {
            if input.max != 0 {
                assert!(f.len() <= usize::from(input.max), "payload over the limit");
            }
            encode_frame(framing, &Message::from_body(f.clone()), &mut wire);
        }
        assert_eq!(&wire[..], &data[..wire.len()], "re-encoding differs");
        if err.is_none() {
            assert_eq!(wire.len() + rest.len(), data.len(), "bytes lost");
            assert_eq!(&rest[..], &data[wire.len()..]);
        } else {
            assert_eq!(&rest[..], &data[wire.len()..], "nothing consumed by the failing frame");
        }
    }
});
