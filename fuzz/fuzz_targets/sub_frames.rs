//! Arbitrary bytes into what `pinion::subscriber` makes of a hub's `/sub`
//! stream: the client-side frame decoder with text accepted (the hello),
//! the hello parser, the delivery-frame parser, the slow-consumer close
//! reason, and the answer to its upgrade request (explicit subprotocol).
//!
//! Never panics; a parsed delivery's topic and payload are slices of the
//! frame, its topic holds no 0x00; a resume hint is the decimal number the
//! reason ends with; a hello is the number it names; an encoded Delivery
//! parses back to its fields; chunked and whole feeds of the decoder agree
//! and never exceed the size limit.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pinion::subscriber::fuzzing::{parse_delivery, parse_hello, resume_hint};
use pinion_proto::Message as _;
use pinion_runtime::transport::ws::frame::{Decoder, Event, Side};
use pinion_runtime::transport::ws::handshake::{client_response_with, MAX_HEAD};

#[derive(Debug, Arbitrary)]
struct Input {
    max: u16,
    chunk: u8,
    code: Option<u16>,
    offset: u64,
    seq: Option<u64>,
    topic: Vec<u8>,
    payload: Vec<u8>,
    data: Vec<u8>,
}

fn decode_all<'a>(
    max: u64,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Event>, Vec<u8>, bool) {
    let mut d = Decoder::new(Side::Client, max).accept_text();
    let mut events = Vec::new();
    for mut c in chunks {
        loop {
            match d.decode(&mut c) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(_) => return (events, Vec::new(), true),
            }
        }
    }
    (events, d.close_reason().to_vec(), false)
}

fuzz_target!(|inp: Input| {
    let data = &inp.data[..];

    // The answer to the upgrade.
    if let Ok(Some(n)) = client_response_with(data, "dGhlIHNhbXBsZSBub25jZQ==", "pinion.v1") {
        assert!(n <= data.len() && n <= MAX_HEAD);
    }

    // The stream, whole and in chunks.
    let max = u64::from(inp.max);
    let whole = decode_all(max, std::iter::once(data));
    let chunked = decode_all(max, data.chunks(usize::from(inp.chunk) + 1));
    assert_eq!(whole, chunked);
    let (events, reason, _) = &whole;
    assert!(reason.len() <= 123);
    for e in events {
        match e {
            Event::Message(m) | Event::Text(m) => {
                assert!(max == 0 || m.len() as u64 <= max);
                if let Ok(d) = parse_delivery(m.clone()) {
                    assert!(!d.topic.contains(&0));
                    assert!(d.topic.len() + d.payload.len() < m.len());
                }
                if let Ok(n) = parse_hello(m) {
                    assert!(std::str::from_utf8(m).unwrap().contains(&n.to_string()));
                }
            }
            Event::Close(code) => {
                if let Some(n) = resume_hint(*code, reason) {
                    assert_eq!(*code, Some(4008));
                    assert!(std::str::from_utf8(reason)
                        .unwrap()
                        .trim_end()
                        .ends_with(&n.to_string()));
                }
            }
            Event::Ping(_) | Event::Pong => {}
        }
    }

    // The raw parsers on the raw bytes.
    let frame = Bytes::copy_from_slice(data);
    if let Ok(d) = parse_delivery(frame.clone()) {
        assert!(!d.topic.contains(&0));
    }
    let _ = parse_hello(data);
    if let Some(n) = resume_hint(inp.code, data) {
        assert!(std::str::from_utf8(data).unwrap().trim_end().ends_with(&n.to_string()));
    }

    // A delivery as the hub frames it parses back (a topic without 0x00).
    let topic: Vec<u8> = inp.topic.iter().copied().filter(|&b| b != 0).collect();
    let d = pinion_proto::Delivery {
        offset: Some(inp.offset),
        timestamp_us: Some(7),
        client_id: Some(Bytes::from_static(&[1; 16])),
        seq: inp.seq,
        payload: Some(Bytes::from(inp.payload.clone())),
    };
    let mut f = topic.clone();
    f.push(0);
    f.extend(d.encode_to_vec());
    let got = parse_delivery(Bytes::from(f)).expect("a hub frame parses");
    assert_eq!(got.offset, inp.offset);
    assert_eq!(&got.topic[..], &topic[..]);
    assert_eq!(&got.payload[..], &inp.payload[..]);
    assert_eq!(got.seq, inp.seq.unwrap_or(0));
    let hello = format!("{{\"next\":{}}}", inp.offset);
    assert_eq!(parse_hello(hello.as_bytes()), Ok(inp.offset));
});
