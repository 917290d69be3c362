//! The WebSocket subscriber's wire, hand-written and allocation-free: the
//! upgrade request and the check of its answer, the server's (unmasked)
//! frames, the `topic 0x00 Delivery` body, and the bench's own payload.
//!
//! The client only reads after the upgrade, so it never has to mask a frame.

/// Bytes of the bench's payload header: message index (u32 LE), then the
/// publisher's send time (u64 LE, nanoseconds since the run's base instant).
pub(crate) const PAYLOAD_HEADER: usize = 12;

/// Standard base64 (with padding) of `bytes`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh `Sec-WebSocket-Key` (16 bytes, base64) from a per-connection seed.
pub(crate) fn key_from(seed: u64, idx: u64) -> String {
    // splitmix64 twice: distinct keys per connection, no syscall each.
    let mut x = seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&next().to_le_bytes());
    b[8..].copy_from_slice(&next().to_le_bytes());
    base64(&b)
}

/// The upgrade request for `GET <target>` on `host`.
pub(crate) fn upgrade_request(host: &str, target: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the server's answer to the upgrade: `Ok(Some(n))` when the head
/// (`n` bytes) is complete and says 101 with the right accept key,
/// `Ok(None)` when incomplete, `Err` when refused.
pub(crate) fn check_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > 8192 {
                return Err("upgrade response head over 8 KiB".into());
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("bad upgrade response: {e}")),
    };
    if resp.code != Some(101) {
        let body = String::from_utf8_lossy(&buf[n..]);
        return Err(format!(
            "upgrade refused: {} {} {}",
            resp.code.unwrap_or(0),
            resp.reason.unwrap_or(""),
            body.trim()
        ));
    }
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let got = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_string());
    match got {
        Some(g) if g == want => Ok(Some(n)),
        Some(g) => Err(format!("Sec-WebSocket-Accept {g:?}, expected {want:?}")),
        None => Err("no Sec-WebSocket-Accept in the 101 answer".into()),
    }
}

/// What the front of the receive buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Not a whole frame: at least `need` bytes are needed in all.
    Incomplete { need: usize },
    /// A binary message: its payload is `buf[start..end]`, the frame `end`
    /// bytes long.
    Binary { start: usize, end: usize },
    /// A close frame (code 1005 when it has none), `used` bytes.
    Close { code: u16, used: usize },
    /// A frame to skip (ping, pong, text), `used` bytes.
    Skip { used: usize },
    /// Not what a server may send (masked, fragmented, reserved bits).
    Bad(String),
}

/// Parses the frame at the front of `buf`.
pub(crate) fn next_frame(buf: &[u8]) -> Frame {
    if buf.len() < 2 {
        return Frame::Incomplete { need: 2 };
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Frame::Bad(format!("reserved bits set in {b0:#04x}"));
    }
    if b1 & 0x80 != 0 {
        return Frame::Bad("masked frame from the server".into());
    }
    let (head, len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Frame::Incomplete { need: 4 };
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Frame::Incomplete { need: 10 };
            }
            (
                10,
                u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            )
        }
        n => (2, u64::from(n)),
    };
    if len > 64 << 20 {
        return Frame::Bad(format!("frame of {len} bytes"));
    }
    let end = head + len as usize;
    if buf.len() < end {
        return Frame::Incomplete { need: end };
    }
    let fin = b0 & 0x80 != 0;
    match b0 & 0x0f {
        0x2 if fin => Frame::Binary { start: head, end },
        0x8 => {
            let code = if len >= 2 {
                u16::from_be_bytes([buf[head], buf[head + 1]])
            } else {
                1005
            };
            Frame::Close { code, used: end }
        }
        0x1 | 0x9 | 0xA if fin => Frame::Skip { used: end },
        op => Frame::Bad(format!(
            "unexpected frame: opcode {op:#x}{}",
            if fin { "" } else { " without FIN" }
        )),
    }
}

/// A `Delivery` as far as the bench needs it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Seen<'a> {
    pub offset: u64,
    pub payload: &'a [u8],
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Parses a message body: topic, 0x00, protobuf `pinion.v1.Delivery`
/// (only `offset` and `payload` are kept; other known and unknown fields
/// are skipped).
pub(crate) fn parse_delivery(body: &[u8]) -> Option<Seen<'_>> {
    let nul = body.iter().position(|&b| b == 0)?;
    let pb = &body[nul + 1..];
    let mut i = 0;
    let (mut offset, mut payload) = (None, None);
    while i < pb.len() {
        let key = varint(pb, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(pb, &mut i)?;
                if field == 1 {
                    offset = Some(v);
                }
            }
            2 => {
                let n = usize::try_from(varint(pb, &mut i)?).ok()?;
                let end = i.checked_add(n).filter(|&e| e <= pb.len())?;
                if field == 5 {
                    payload = Some(&pb[i..end]);
                }
                i = end;
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    if i != pb.len() {
        return None;
    }
    Some(Seen {
        offset: offset.unwrap_or(0),
        payload: payload.unwrap_or(&[]),
    })
}

/// The bench's payload: message index, send time, then `size - 12` filler
/// bytes (`size` is at least [`PAYLOAD_HEADER`]).
pub(crate) fn payload(index: u32, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(PAYLOAD_HEADER)];
    p[..4].copy_from_slice(&index.to_le_bytes());
    p[4..12].copy_from_slice(&sent_ns.to_le_bytes());
    p
}

/// `(index, sent_ns)` from a bench payload.
pub(crate) fn read_payload(p: &[u8]) -> Option<(u32, u64)> {
    if p.len() < PAYLOAD_HEADER {
        return None;
    }
    Some((
        u32::from_le_bytes(p[..4].try_into().ok()?),
        u64::from_le_bytes(p[4..12].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_proto::{Delivery, Message};

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i:?}");
        }
        let k = key_from(1, 2);
        assert_eq!(k.len(), 24);
        assert_ne!(k, key_from(1, 3));
    }

    #[test]
    fn upgrade_answer() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x82\x00";
        assert_eq!(check_upgrade_response(ok, key), Ok(Some(ok.len() - 2)));
        assert_eq!(check_upgrade_response(&ok[..20], key), Ok(None));
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_upgrade_response(wrong, key).is_err());
        let refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nwhy";
        let e = check_upgrade_response(refused, key).unwrap_err();
        assert!(e.contains("400") && e.contains("why"), "{e}");
        let req = String::from_utf8(upgrade_request("h:1", "/sub?topic=a", key)).unwrap();
        assert!(req.starts_with("GET /sub?topic=a HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn frames() {
        assert_eq!(next_frame(&[0x82]), Frame::Incomplete { need: 2 });
        assert_eq!(
            next_frame(&[0x82, 3, 1, 2, 3, 9]),
            Frame::Binary { start: 2, end: 5 }
        );
        assert_eq!(next_frame(&[0x82, 3, 1]), Frame::Incomplete { need: 5 });
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.resize(4 + 256, 7);
        assert_eq!(next_frame(&long), Frame::Binary { start: 4, end: 260 });
        assert_eq!(next_frame(&long[..3]), Frame::Incomplete { need: 4 });
        assert_eq!(next_frame(&long[..10]), Frame::Incomplete { need: 260 });
        let close = [0x88, 4, 0x0f, 0xa8, b'h', b'i'];
        assert_eq!(
            next_frame(&close),
            Frame::Close {
                code: 4008,
                used: 6
            }
        );
        assert_eq!(
            next_frame(&[0x88, 0]),
            Frame::Close {
                code: 1005,
                used: 2
            }
        );
        assert_eq!(next_frame(&[0x89, 1, 0]), Frame::Skip { used: 3 });
        assert!(matches!(
            next_frame(&[0x82, 0x81, 0, 0, 0, 0, 0]),
            Frame::Bad(_)
        ));
        assert!(matches!(next_frame(&[0x02, 0]), Frame::Bad(_)));
        assert!(matches!(next_frame(&[0xc2, 0]), Frame::Bad(_)));
    }

    #[test]
    fn deliveries_as_the_hub_encodes_them() {
        let p = payload(7, 123_456_789, 40);
        let d = Delivery {
            offset: Some(300),
            timestamp_us: Some(1_795_400_000_000_000),
            client_id: Some(vec![9u8; 16].into()),
            seq: Some(5),
            payload: Some(p.clone().into()),
        };
        let mut body = b"bench\0".to_vec();
        body.extend_from_slice(&d.encode_to_vec());
        let seen = parse_delivery(&body).unwrap();
        assert_eq!(seen.offset, 300);
        assert_eq!(seen.payload, &p[..]);
        assert_eq!(read_payload(seen.payload), Some((7, 123_456_789)));
        // Offset 0 is not on the wire (proto3 optional still writes it, but
        // a missing one reads as 0).
        let mut b0 = b"t\0".to_vec();
        b0.extend_from_slice(&Delivery::default().encode_to_vec());
        assert_eq!(parse_delivery(&b0).unwrap().offset, 0);
        assert!(parse_delivery(b"no nul").is_none());
        assert!(parse_delivery(b"t\0\x2a\x05ab").is_none()); // truncated bytes field
        assert_eq!(read_payload(b"short"), None);
        assert_eq!(payload(1, 2, 3).len(), PAYLOAD_HEADER);
    }
}
