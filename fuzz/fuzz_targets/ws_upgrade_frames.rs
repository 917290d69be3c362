//! Arbitrary bytes into the `ws://` transport's sans-IO parts: the HTTP
//! upgrade request parser (listener side), the upgrade response parser
//! (dialer side) and the streaming frame decoder of both sides.
//!
//! Never panics; the request parser answers every complete head with a 101
//! or an HTTP 400/404 and never reads past the head; the decoder gives the
//! same events and the same error whether the input comes whole or in
//! chunks, never delivers a message over the limit, and takes nothing more
//! after a close or an error; whatever pinion encodes decodes back.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pinion_core::protocol::ProtocolKind;
use pinion_core::rng::Rng;
use pinion_core::{Message, PeerError};
use pinion_runtime::transport::ws::frame::{encode_message, Decoder, Event, Side};
use pinion_runtime::transport::ws::handshake::{client_response, server_request, Request, MAX_HEAD};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Which pattern listens / dials.
    kind: u8,
    /// Receive limit; 0 is unlimited.
    max: u16,
    /// Chunk size - 1 for the incremental feed.
    chunk: u8,
    /// Decode as the client (server frames) instead of the server.
    client: bool,
    data: Vec<u8>,
}

fn decode_all<'a>(side: Side, max: u64, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Event>, Option<PeerError>) {
    let mut d = Decoder::new(side, max);
    let mut events = Vec::new();
    for mut c in chunks {
        loop {
            match d.decode(&mut c) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    // Nothing after an error.
                    let mut rest: &[u8] = &[1, 2, 3];
                    assert_eq!(d.decode(&mut rest), Ok(None));
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

fuzz_target!(|inp: Input| {
    let kind = ProtocolKind::ALL[usize::from(inp.kind) % ProtocolKind::ALL.len()];
    let data = &inp.data[..];

    // Listener side: the upgrade request.
    match server_request(data, "/p", kind) {
        Request::Incomplete => assert!(data.len() < MAX_HEAD),
        Request::Accept { response, head_len } => {
            assert!(head_len <= data.len());
            assert!(response.starts_with(b"HTTP/1.1 101 "));
        }
        Request::Refuse { status, response, .. } => {
            assert!(status == 400 || status == 404);
            assert!(response.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
        }
    }
    // Dialer side: the answer.
    if let Ok(Some(n)) = client_response(data, "dGhlIHNhbXBsZSBub25jZQ==", kind) {
        assert!(n <= data.len());
    }

    // Frames, whole and in chunks.
    let side = if inp.client { Side::Client } else { Side::Server };
    let max = u64::from(inp.max);
    let whole = decode_all(side, max, std::iter::once(data));
    let chunked = decode_all(side, max, data.chunks(usize::from(inp.chunk) + 1));
    assert_eq!(whole, chunked);
    let (events, _) = &whole;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Message(m) => assert!(max == 0 || m.len() as u64 <= max),
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Close(_) => assert_eq!(i, events.len() - 1, "events after a close"),
            Event::Pong => {}
        }
    }

    // Round trip: the data as one message, encoded by the other side.
    let msg = Message::from_body(Bytes::copy_from_slice(data));
    let mut out = BytesMut::new();
    let mut chunks = Vec::new();
    let mut rng = Rng::new(u64::from(inp.chunk));
    // Decoding as the client means a server encoded (no masks), and back.
    let masks = if inp.client { None } else { Some(&mut rng) };
    encode_message(&msg, masks, &mut out, &mut chunks);
    chunks.push(out.freeze());
    let wire: Vec<u8> = chunks.concat();
    let (events, err) = decode_all(side, 0, wire.chunks(usize::from(inp.chunk) + 1));
    assert_eq!(err, None);
    assert_eq!(events, vec![Event::Message(msg.body)]);
});
