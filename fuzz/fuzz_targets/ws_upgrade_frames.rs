//! Arbitrary bytes into the `ws://` transport's sans-IO parts: the HTTP
//! upgrade request parser (listener side), the upgrade response parser
//! (dialer side) and the streaming frame decoder of both sides.
//!
//! Never panics; the request parser answers every complete head with a 101
//! or an HTTP 400/404 and never reads past the head; the decoder gives the
//! same events and the same error whether the input comes whole or in
//! chunks, never delivers a message over the limit, and takes nothing more
//! after a close or an error; whatever pinion encodes decodes back. With a
//! flood limit (and no time passing), no more frames without data than its
//! burst are taken before the `WsFlood` error.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pinion_core::protocol::ProtocolKind;
use pinion_core::rng::Rng;
use pinion_core::{Message, PeerError};
use pinion_runtime::transport::ws::frame::{encode_message, Decoder, Event, FloodLimit, Side};
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
    /// A flood limit's burst (none: no limit).
    flood: Option<u8>,
    data: Vec<u8>,
}

fn decode_all<'a>(
    side: Side,
    max: u64,
    flood: Option<FloodLimit>,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Event>, Option<PeerError>) {
    let mut d = Decoder::new(side, max);
    if let Some(f) = flood {
        d = d.limit_floods(f);
        // One instant for every call: no tokens are added.
        let now = std::time::Instant::now();
        d.refill(now);
        d.refill(now);
    }
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
    let flood = inp.flood.map(|b| FloodLimit {
        burst: u32::from(b),
        per_sec: 1,
    });
    let whole = decode_all(side, max, flood, std::iter::once(data));
    let chunked = decode_all(side, max, flood, data.chunks(usize::from(inp.chunk) + 1));
    assert_eq!(whole, chunked);
    if let Some(f) = flood {
        // Pings and pongs are frames without data counted whole; empty
        // messages too (continuations cannot be told apart here).
        let light = whole
            .0
            .iter()
            .filter(|e| matches!(e, Event::Ping(_) | Event::Pong))
            .count();
        assert!(light <= f.burst as usize, "{light} light frames over a burst of {}", f.burst);
        if let Some(PeerError::WsFlood { burst, .. }) = whole.1 {
            assert_eq!(burst, f.burst);
        }
    }
    let (events, _) = &whole;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Message(m) => assert!(max == 0 || m.len() as u64 <= max),
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Close(_) => assert_eq!(i, events.len() - 1, "events after a close"),
            Event::Pong => {}
            Event::Text(_) => panic!("text without accept_text"),
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
    let (events, err) = decode_all(side, 0, None, wire.chunks(usize::from(inp.chunk) + 1));
    assert_eq!(err, None);
    assert_eq!(events, vec![Event::Message(msg.body)]);
});
