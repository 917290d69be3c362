//! WebSocket framing for SP (sans-IO): a streaming [`Decoder`] that keeps no
//! input buffer, and [`encode_message`] / [`encode_control`] for the way out.
//!
//! The frame *header* codec is tungstenite's ([`FrameHeader::parse`] and
//! [`FrameHeader::format`]); the rest — what SP accepts, reassembly, the
//! receive limit, masking — is here, because it decides what a connection
//! holds in memory.
//!
//! # What the decoder holds
//!
//! Input is fed in whatever pieces the network gives (the pipe reads into a
//! per-core scratch buffer and feeds that). The decoder copies out only:
//! * up to 14 bytes of a frame header split across reads (inline array);
//! * the payload of the message being assembled, into a buffer grown as the
//!   bytes *arrive* (never reserved from an announced length, so a peer that
//!   announces a large frame and sends nothing costs nothing);
//! * up to 125 bytes of a control frame's payload.
//!
//! Between messages it owns no heap memory at all.
//!
//! # Rules (RFC 6455 §5, as NNG applies them in SP mode)
//! * one binary message (a first frame, continuations, FIN) = one SP
//!   message; the SP header is the start of the payload;
//! * a text frame → [`PeerError::WsText`] (close 1003), unless text is
//!   accepted ([`Decoder::accept_text`]: a client of a non-SP endpoint,
//!   such as the hub's `/sub`, then gets [`Event::Text`]);
//! * a message over the receive limit → [`PeerError::TooLarge`] (close
//!   1009), decided from the frame header, before any payload is copied;
//! * a server expects masked frames and a client unmasked ones; reserved
//!   bits, reserved opcodes, fragmented or long control frames, stray
//!   continuations, 1-byte close payloads and invalid close codes →
//!   [`PeerError::WsFrame`] (close 1002);
//! * with a [`FloodLimit`] ([`Decoder::limit_floods`]), frames that carry
//!   no data — control frames and empty data frames — draw on a token
//!   bucket refilled by [`Decoder::refill`] (the caller brings the time);
//!   past it → [`PeerError::WsFlood`] (close 1008). Frames with data need
//!   no such rule: their bytes are bounded like any other input, while a
//!   stream of 6-byte empty frames costs a frame's work per 6 bytes.

use std::io::Cursor;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use pinion_core::rng::Rng;
use pinion_core::{Message, PeerError, WsViolation};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest frame pinion sends: longer messages are split into continuation
/// frames of this size (NNG's `WS_DEF_MAXTXFRAME`).
pub const MAX_TX_FRAME: usize = 64 * 1024;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

/// Largest control frame payload.
const MAX_CONTROL: usize = 125;

/// Close status codes pinion sends.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (the socket is closing).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (a text frame in SP mode).
    pub const UNSUPPORTED: u16 = 1003;
    /// Policy violation (a flood of frames without data).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// How many frames without data (control frames, empty data frames) a
/// connection may send: `burst` at once, `per_sec` sustained. No client
/// pinion knows of comes near it (browsers send no pings; libraries ping
/// every few seconds; pongs follow our own pings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimit {
    /// Frames allowed at once (the bucket's size).
    pub burst: u32,
    /// Frames allowed per second (its refill rate).
    pub per_sec: u32,
}

impl FloodLimit {
    /// The limit pinion's WebSocket endpoints apply: 256 at once, 128 a
    /// second.
    pub const DEFAULT: FloodLimit = FloodLimit {
        burst: 256,
        per_sec: 128,
    };
}

/// The token bucket behind a [`FloodLimit`].
#[derive(Debug, Clone, Copy)]
struct Flood {
    limit: FloodLimit,
    /// Frames still allowed.
    left: u32,
    /// When `left` was last topped up (`None`: not yet).
    at: Option<Instant>,
    /// Nanoseconds not yet turned into a whole token (under one token's
    /// period, at most a second).
    carry_ns: u32,
}

/// The close code that answers a peer error found by the decoder.
pub fn close_code(e: &PeerError) -> u16 {
    match e {
        PeerError::WsText => close::UNSUPPORTED,
        PeerError::TooLarge { .. } => close::TOO_BIG,
        PeerError::WsFlood { .. } => close::POLICY,
        _ => close::PROTOCOL,
    }
}

/// Which end of the connection the decoder is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The listener's end: frames from the client must be masked.
    Server,
    /// The dialer's end: frames from the server must not be masked.
    Client,
}

/// What the peer sent, one complete unit at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete binary message (the SP header is at its start).
    Message(Bytes),
    /// A complete text message, only with [`Decoder::accept_text`] (its
    /// bytes as sent: UTF-8 is not checked).
    Text(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (ignored).
    Pong,
    /// A close frame with its status code, if it had one (its reason text:
    /// [`Decoder::close_reason`]). Nothing after it is decoded.
    Close(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data { fin: bool },
    Ping,
    Pong,
    Close,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header (`head[..head_len]` so far).
    Head,
    /// Reading a payload.
    Payload {
        kind: Kind,
        left: u64,
        mask: Option<[u8; 4]>,
        /// Payload bytes of this frame already taken (the mask phase).
        done: u64,
    },
    /// A close frame was decoded, or an error found: nothing more.
    Done,
}

/// Streaming decoder of one connection's incoming frames.
#[derive(Debug)]
pub struct Decoder {
    side: Side,
    max: u64,
    state: State,
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// Between the first frame of a message and its FIN frame.
    in_message: bool,
    /// Text messages are taken ([`Decoder::accept_text`]).
    text_ok: bool,
    /// The message being assembled is text.
    msg_text: bool,
    /// The message being assembled (empty, unallocated, between messages).
    msg: BytesMut,
    /// Payload bytes of the message so far, announced frames included.
    msg_len: u64,
    /// A control frame's payload.
    ctrl: Vec<u8>,
    /// Frames without data allowed (none: no limit).
    flood: Option<Flood>,
}

impl Decoder {
    /// A decoder for `side`, refusing messages over `max` bytes (0: no limit).
    pub fn new(side: Side, max: u64) -> Self {
        Decoder {
            side,
            max,
            state: State::Head,
            head: [0; MAX_HEAD],
            head_len: 0,
            in_message: false,
            text_ok: false,
            msg_text: false,
            msg: BytesMut::new(),
            msg_len: 0,
            ctrl: Vec::new(),
            flood: None,
        }
    }

    /// Limits frames without data (control frames and empty data frames)
    /// to `limit`; the bucket starts full. The caller tops it up with
    /// [`Decoder::refill`] (once per read is enough).
    pub fn limit_floods(mut self, limit: FloodLimit) -> Self {
        self.flood = Some(Flood {
            limit,
            left: limit.burst,
            at: None,
            carry_ns: 0,
        });
        self
    }

    /// Takes text messages (as [`Event::Text`]) instead of refusing them
    /// with [`PeerError::WsText`]: for a client of an endpoint that is not
    /// SP (the hub's `/sub` sends a text hello). Same size limit as binary
    /// messages.
    pub fn accept_text(mut self) -> Self {
        self.text_ok = true;
        self
    }

    /// The reason text of the close frame just decoded (after
    /// [`Event::Close`]; empty when it had none, and before any close).
    pub fn close_reason(&self) -> &[u8] {
        match self.state {
            State::Done => self.ctrl.get(2..).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Tops the flood bucket up for the time passed since the last call
    /// (`now` is the caller's clock; the decoder reads none).
    pub fn refill(&mut self, now: Instant) {
        let Some(f) = self.flood.as_mut() else { return };
        let Some(at) = f.at.replace(now) else { return };
        if f.limit.per_sec == 0 {
            return;
        }
        // One token's period, in nanoseconds (≥ 1, ≤ 10^9).
        let per = (1_000_000_000 / u64::from(f.limit.per_sec)).max(1);
        let elapsed =
            u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
        let t = elapsed.saturating_add(u64::from(f.carry_ns));
        let add = u32::try_from(t / per).unwrap_or(u32::MAX);
        f.left = f.left.saturating_add(add).min(f.limit.burst);
        f.carry_ns = if f.left == f.limit.burst {
            0
        } else {
            // Under `per`, itself at most 10^9.
            u32::try_from(t % per).unwrap_or(0)
        };
    }

    /// Heap bytes the decoder holds now (a partial message).
    pub fn held(&self) -> usize {
        self.msg.capacity() + self.ctrl.capacity()
    }

    /// Decodes from the front of `input`, advancing it past what was taken,
    /// until one event is complete (`Ok(Some)`) or the input is used up
    /// (`Ok(None)`; partial state is kept for the next call). After an
    /// error or a close, every call returns `Ok(None)` and takes nothing.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Event>, PeerError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Head => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    if !self.take_head(input)? {
                        return Ok(None);
                    }
                    // A zero-length payload completes at once.
                    if let State::Payload { left: 0, .. } = self.state {
                        if let Some(ev) = self.finish_frame()? {
                            return Ok(Some(ev));
                        }
                    }
                }
                State::Payload {
                    kind,
                    left,
                    mask,
                    done,
                } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (chunk, rest) = input.split_at(n);
                    *input = rest;
                    let dst = match kind {
                        Kind::Data { .. } => {
                            let have = self.msg.len();
                            // Grow with what arrived: at most double what
                            // the message already holds, never more than
                            // the frame still owes.
                            if self.msg.capacity() - have < n {
                                let want =
                                    n.max(have).min(usize::try_from(left).unwrap_or(usize::MAX));
                                self.msg.reserve(want);
                            }
                            self.msg.put_slice(chunk);
                            &mut self.msg[have..]
                        }
                        _ => {
                            let have = self.ctrl.len();
                            self.ctrl.extend_from_slice(chunk);
                            &mut self.ctrl[have..]
                        }
                    };
                    if let Some(m) = mask {
                        apply_mask(dst, m, (done % 4) as usize);
                    }
                    let left = left - n as u64;
                    self.state = State::Payload {
                        kind,
                        left,
                        mask,
                        done: done + n as u64,
                    };
                    if left == 0 {
                        if let Some(ev) = self.finish_frame()? {
                            return Ok(Some(ev));
                        }
                    }
                }
            }
        }
    }

    /// Takes header bytes; true once a whole header was parsed (the state is
    /// then `Payload`).
    fn take_head(&mut self, input: &mut &[u8]) -> Result<bool, PeerError> {
        let had = usize::from(self.head_len);
        let add = (MAX_HEAD - had).min(input.len());
        self.head[had..had + add].copy_from_slice(&input[..add]);
        let avail = had + add;
        let mut cur = Cursor::new(&self.head[..avail]);
        let parsed = FrameHeader::parse(&mut cur);
        let used = cur.position() as usize;
        let parsed = match parsed {
            Ok(p) => p,
            Err(_) => return Err(self.fail(PeerError::WsFrame(WsViolation::BadOpcode))),
        };
        let Some((h, len)) = parsed else {
            // Incomplete: everything copied stays in `head`.
            self.head_len = avail as u8;
            *input = &input[add..];
            return Ok(false);
        };
        *input = &input[used - had..];
        self.head_len = 0;
        self.start_frame(h, len)?;
        Ok(true)
    }

    fn start_frame(&mut self, h: FrameHeader, len: u64) -> Result<(), PeerError> {
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err(self.fail(PeerError::WsFrame(WsViolation::ReservedBits)));
        }
        if len >> 63 != 0 {
            return Err(self.fail(PeerError::WsFrame(WsViolation::BadLength)));
        }
        let light = len == 0 || matches!(h.opcode, OpCode::Control(_));
        if let Some(f) = self.flood.as_mut().filter(|_| light) {
            // A close frame ends the connection: never refused for this.
            if h.opcode != OpCode::Control(Control::Close) {
                if f.left == 0 {
                    let FloodLimit { burst, per_sec } = f.limit;
                    return Err(self.fail(PeerError::WsFlood { burst, per_sec }));
                }
                f.left -= 1;
            }
        }
        match (self.side, h.mask.is_some()) {
            (Side::Server, false) => {
                return Err(self.fail(PeerError::WsFrame(WsViolation::Unmasked)))
            }
            (Side::Client, true) => return Err(self.fail(PeerError::WsFrame(WsViolation::Masked))),
            _ => {}
        }
        let kind = match h.opcode {
            OpCode::Data(d) => {
                match d {
                    Data::Text if !self.in_message && self.text_ok => self.msg_text = true,
                    Data::Text if !self.in_message => {
                        return Err(self.fail(PeerError::WsText));
                    }
                    Data::Binary if !self.in_message => self.msg_text = false,
                    Data::Continue if self.in_message => {}
                    Data::Reserved(_) => {
                        return Err(self.fail(PeerError::WsFrame(WsViolation::BadOpcode)))
                    }
                    _ => return Err(self.fail(PeerError::WsFrame(WsViolation::BadContinuation))),
                }
                let total = self.msg_len.saturating_add(len);
                if self.max > 0 && total > self.max {
                    return Err(self.fail(PeerError::TooLarge {
                        len: total,
                        max: self.max,
                    }));
                }
                self.msg_len = total;
                self.in_message = !h.is_final;
                Kind::Data { fin: h.is_final }
            }
            OpCode::Control(c) => {
                if !h.is_final || len > MAX_CONTROL as u64 {
                    return Err(self.fail(PeerError::WsFrame(WsViolation::BadControl)));
                }
                match c {
                    Control::Ping => Kind::Ping,
                    Control::Pong => Kind::Pong,
                    Control::Close => Kind::Close,
                    Control::Reserved(_) => {
                        return Err(self.fail(PeerError::WsFrame(WsViolation::BadOpcode)))
                    }
                }
            }
        };
        self.state = State::Payload {
            kind,
            left: len,
            mask: h.mask,
            done: 0,
        };
        Ok(())
    }

    /// A frame's payload is complete.
    fn finish_frame(&mut self) -> Result<Option<Event>, PeerError> {
        let State::Payload { kind, .. } = self.state else {
            return Ok(None);
        };
        self.state = State::Head;
        Ok(match kind {
            Kind::Data { fin: false } => None,
            Kind::Data { fin: true } => {
                self.msg_len = 0;
                let body = std::mem::take(&mut self.msg).freeze();
                if self.msg_text {
                    Some(Event::Text(body))
                } else {
                    Some(Event::Message(body))
                }
            }
            Kind::Ping => Some(Event::Ping(Bytes::from(std::mem::take(&mut self.ctrl)))),
            Kind::Pong => {
                self.ctrl = Vec::new();
                Some(Event::Pong)
            }
            Kind::Close => {
                let p = std::mem::take(&mut self.ctrl);
                let code = match p.len() {
                    0 => None,
                    1 => return Err(self.fail(PeerError::WsFrame(WsViolation::BadClose))),
                    _ => {
                        let code = u16::from_be_bytes([p[0], p[1]]);
                        if !CloseCode::from(code).is_allowed() {
                            return Err(self.fail(PeerError::WsFrame(WsViolation::BadClose)));
                        }
                        Some(code)
                    }
                };
                // Kept for `close_reason` (at most 125 bytes, and nothing
                // is decoded after a close).
                self.ctrl = p;
                self.state = State::Done;
                Some(Event::Close(code))
            }
        })
    }

    fn fail(&mut self, e: PeerError) -> PeerError {
        self.state = State::Done;
        self.msg = BytesMut::new();
        self.ctrl = Vec::new();
        e
    }
}

/// XORs `buf` with `mask`, starting at byte `phase` (0..4) of the mask.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = [
        mask[phase % 4],
        mask[(phase + 1) % 4],
        mask[(phase + 2) % 4],
        mask[(phase + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(a) ^ wide).to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Appends one frame header.
fn put_head(out: &mut BytesMut, opcode: OpCode, fin: bool, len: u64, mask: Option<[u8; 4]>) {
    let h = FrameHeader {
        is_final: fin,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    let mut arr = [0u8; MAX_HEAD];
    let mut w = &mut arr[..];
    // 14 bytes always hold a header: formatting cannot fail.
    if h.format(len, &mut w).is_ok() {
        let n = MAX_HEAD - w.len();
        out.put_slice(&arr[..n]);
    }
}

/// Bodies at least this long go out from their own buffer (server side,
/// unmasked) instead of being copied.
const COPY_MAX: usize = 16 * 1024;

/// Appends `msg` as WebSocket frames of at most [`MAX_TX_FRAME`] payload
/// bytes (a binary frame, then continuations). Without `masks` (server side)
/// long body pieces are not copied: `out` is split off into `chunks` and the
/// piece pushed after it. With `masks` (client side) every frame gets a
/// fresh mask and the payload is copied, masked, into `out`.
pub fn encode_message(
    msg: &Message,
    masks: Option<&mut Rng>,
    out: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) {
    let header = msg.header.as_slice();
    let total = header.len() + msg.body.len();
    let mut masks = masks;
    let mut at = 0;
    loop {
        let end = total.min(at + MAX_TX_FRAME);
        let opcode = if at == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = end == total;
        let len = end - at;
        let mask = masks.as_deref_mut().map(|r| r.next_u32().to_ne_bytes());
        put_head(out, opcode, fin, len as u64, mask);
        // The SP header part of this frame, then the body part.
        let h_end = end.min(header.len());
        let start = out.len();
        if at < h_end {
            out.put_slice(&header[at..h_end]);
        }
        let b_from = at.max(header.len()) - header.len();
        let b_to = end - header.len().min(end);
        if b_from < b_to {
            if mask.is_none() && b_to - b_from >= COPY_MAX {
                chunks.push(out.split().freeze());
                chunks.push(msg.body.slice(b_from..b_to));
            } else {
                out.put_slice(&msg.body[b_from..b_to]);
            }
        }
        if let Some(m) = mask {
            apply_mask(&mut out[start..], m, 0);
        }
        at = end;
        if fin {
            return;
        }
    }
}

/// Appends a control frame (ping, pong or close) with `payload` (at most
/// 125 bytes; longer is cut).
pub fn encode_control(
    control: Control,
    payload: &[u8],
    masks: Option<&mut Rng>,
    out: &mut BytesMut,
) {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let mask = masks.map(|r| r.next_u32().to_ne_bytes());
    put_head(
        out,
        OpCode::Control(control),
        true,
        payload.len() as u64,
        mask,
    );
    let start = out.len();
    out.put_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
}

/// Appends a close frame with `code`.
pub fn encode_close(code: u16, masks: Option<&mut Rng>, out: &mut BytesMut) {
    encode_control(Control::Close, &code.to_be_bytes(), masks, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Frames `payload` as a client would (masked) or a server (not).
    fn frame(op: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![op | if fin { 0x80 } else { 0 }];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            v.extend_from_slice(&k);
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        v.extend_from_slice(&p);
        v
    }

    fn all(d: &mut Decoder, mut input: &[u8]) -> Result<Vec<Event>, PeerError> {
        let mut out = Vec::new();
        while let Some(e) = d.decode(&mut input)? {
            out.push(e);
        }
        assert!(input.is_empty() || matches!(out.last(), Some(Event::Close(_))));
        Ok(out)
    }

    const K: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

    const SMALL: FloodLimit = FloodLimit {
        burst: 4,
        per_sec: 10,
    };

    #[test]
    fn frames_without_data_draw_on_the_flood_bucket() {
        // Pings, pongs, empty binary messages and empty continuations all
        // count; the fifth at once is refused with 1008.
        let mut d = Decoder::new(Side::Server, 1024).limit_floods(SMALL);
        let t0 = Instant::now();
        d.refill(t0);
        let mut input = frame(0x9, true, b"p", K);
        input.extend(frame(0xA, true, b"", K));
        input.extend(frame(0x2, false, b"", K));
        input.extend(frame(0x0, true, b"", K));
        let ev = all(&mut d, &input).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Pong,
                Event::Message(Bytes::new())
            ]
        );
        let e = all(&mut d, &frame(0xA, true, b"", K)).unwrap_err();
        assert_eq!(
            e,
            PeerError::WsFlood {
                burst: 4,
                per_sec: 10
            }
        );
        assert_eq!(close_code(&e), close::POLICY);
        // Nothing after the error.
        let after = frame(0x2, true, b"x", K);
        let mut input = &after[..];
        assert_eq!(d.decode(&mut input), Ok(None));
    }

    #[test]
    fn the_flood_bucket_refills_with_time_and_data_frames_are_free() {
        let mut d = Decoder::new(Side::Server, 1024).limit_floods(SMALL);
        let t0 = Instant::now();
        d.refill(t0);
        let pongs = |n: usize| frame(0xA, true, b"", K).repeat(n);
        assert_eq!(all(&mut d, &pongs(4)).unwrap().len(), 4);
        // Frames with data cost nothing.
        let data = frame(0x2, true, b"data", K).repeat(1000);
        assert_eq!(all(&mut d, &data).unwrap().len(), 1000);
        // 0.25 s at 10 a second: 2 more (a half left over for later).
        d.refill(t0 + Duration::from_millis(250));
        assert_eq!(all(&mut d, &pongs(2)).unwrap().len(), 2);
        d.refill(t0 + Duration::from_millis(300));
        assert_eq!(all(&mut d, &pongs(1)).unwrap().len(), 1);
        // Never more than the burst, however long it was idle; a close
        // frame is always taken.
        d.refill(t0 + Duration::from_secs(3600));
        assert_eq!(all(&mut d, &pongs(4)).unwrap().len(), 4);
        let ev = all(&mut d, &frame(0x8, true, &1000u16.to_be_bytes(), K)).unwrap();
        assert_eq!(ev, vec![Event::Close(Some(1000))]);
    }

    #[test]
    fn without_a_flood_limit_empty_frames_are_not_counted() {
        let mut d = Decoder::new(Side::Server, 1024);
        let pongs = frame(0xA, true, b"", K).repeat(10_000);
        assert_eq!(all(&mut d, &pongs).unwrap().len(), 10_000);
    }

    #[test]
    fn one_binary_frame_is_one_message_fed_byte_by_byte() {
        let wire = frame(2, true, b"\x80\x00\x00\x09wsreq", K);
        let mut d = Decoder::new(Side::Server, 0);
        let mut got = Vec::new();
        for b in &wire {
            let mut one = std::slice::from_ref(b);
            if let Some(e) = d.decode(&mut one).unwrap() {
                got.push(e);
            }
            assert!(one.is_empty());
        }
        assert_eq!(
            got,
            vec![Event::Message(Bytes::from_static(b"\x80\x00\x00\x09wsreq"))]
        );
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = frame(2, false, &body[..70_000], K);
        wire.extend(frame(9, true, b"hi", K));
        wire.extend(frame(0, false, &body[70_000..70_001], K));
        wire.extend(frame(0, true, &body[70_001..], K));
        wire.extend(frame(2, true, b"", K));
        let mut d = Decoder::new(Side::Server, 1 << 20);
        for step in [1usize, 7, 4096, usize::MAX] {
            let mut d2 = Decoder::new(Side::Server, 1 << 20);
            let mut got = Vec::new();
            for c in wire.chunks(step.min(wire.len())) {
                let mut c = c;
                while let Some(e) = d2.decode(&mut c).unwrap() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                vec![
                    Event::Ping(Bytes::from_static(b"hi")),
                    Event::Message(Bytes::from(body.clone())),
                    Event::Message(Bytes::new()),
                ],
                "chunks of {step}"
            );
        }
        assert_eq!(all(&mut d, &wire).unwrap().len(), 3);
    }

    #[test]
    fn text_frames_are_refused_before_their_payload() {
        let mut d = Decoder::new(Side::Server, 0);
        let wire = frame(1, true, b"hello", K);
        assert_eq!(all(&mut d, &wire[..6]), Err(PeerError::WsText));
        assert_eq!(close_code(&PeerError::WsText), 1003);
        // Nothing more after an error.
        let mut rest = &wire[6..];
        assert_eq!(d.decode(&mut rest), Ok(None));
    }

    #[test]
    fn text_messages_when_accepted_and_close_reasons() {
        let mut d = Decoder::new(Side::Client, 64).accept_text();
        let mut wire = frame(1, false, b"{\"next\":", None);
        wire.extend(frame(9, true, b"p", None));
        wire.extend(frame(0, true, b"7}", None));
        wire.extend(frame(2, true, b"bin", None));
        let mut close = 4008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"resume from offset 9");
        wire.extend(frame(8, true, &close, None));
        assert_eq!(d.close_reason(), b"");
        assert_eq!(
            all(&mut d, &wire).unwrap(),
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Text(Bytes::from_static(b"{\"next\":7}")),
                Event::Message(Bytes::from_static(b"bin")),
                Event::Close(Some(4008)),
            ]
        );
        assert_eq!(d.close_reason(), b"resume from offset 9");
        // The size limit holds for text too.
        let mut d = Decoder::new(Side::Client, 4).accept_text();
        assert_eq!(
            all(&mut d, &frame(1, true, b"12345", None)),
            Err(PeerError::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(d.close_reason(), b"");
    }

    #[test]
    fn masking_rules_by_side() {
        let mut d = Decoder::new(Side::Server, 0);
        assert_eq!(
            all(&mut d, &frame(2, true, b"x", None)),
            Err(PeerError::WsFrame(WsViolation::Unmasked))
        );
        let mut d = Decoder::new(Side::Client, 0);
        assert_eq!(
            all(&mut d, &frame(2, true, b"x", K)),
            Err(PeerError::WsFrame(WsViolation::Masked))
        );
        let mut d = Decoder::new(Side::Client, 0);
        assert_eq!(
            all(&mut d, &frame(2, true, b"x", None)).unwrap(),
            vec![Event::Message(Bytes::from_static(b"x"))]
        );
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        // A single frame announcing 2 MiB, nothing of it sent.
        let mut d = Decoder::new(Side::Server, 1 << 20);
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(2u64 << 20).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            all(&mut d, &head),
            Err(PeerError::TooLarge {
                len: 2 << 20,
                max: 1 << 20
            })
        );
        assert_eq!(d.held(), 0);
        // Fragments adding up over the limit.
        let mut d = Decoder::new(Side::Server, 1000);
        let mut wire = frame(2, false, &[0; 600], K);
        wire.extend(frame(0, true, &[0; 600], K));
        assert_eq!(
            all(&mut d, &wire),
            Err(PeerError::TooLarge {
                len: 1200,
                max: 1000
            })
        );
        // Exactly the limit is fine.
        let mut d = Decoder::new(Side::Server, 1000);
        assert_eq!(
            all(&mut d, &frame(2, true, &[7; 1000], K)).unwrap().len(),
            1
        );
    }

    #[test]
    fn an_announced_frame_costs_only_what_arrived() {
        let mut d = Decoder::new(Side::Server, 0);
        let wire = frame(2, true, &[5u8; 1 << 20], K);
        let mut part = &wire[..14 + 1000];
        assert_eq!(d.decode(&mut part), Ok(None));
        assert!(d.held() < 4096, "held {}", d.held());
    }

    #[test]
    fn framing_violations() {
        let cases: Vec<(Vec<u8>, WsViolation)> = vec![
            (frame(0x42, true, b"x", K), WsViolation::ReservedBits),
            (frame(3, true, b"x", K), WsViolation::BadOpcode),
            (frame(0xb, true, b"x", K), WsViolation::BadOpcode),
            (frame(0, true, b"x", K), WsViolation::BadContinuation),
            (frame(9, false, b"x", K), WsViolation::BadControl),
            (frame(9, true, &[0; 126], K), WsViolation::BadControl),
            (frame(8, true, b"x", K), WsViolation::BadClose),
            (
                frame(8, true, &999u16.to_be_bytes(), K),
                WsViolation::BadClose,
            ),
            (
                {
                    let mut w = frame(2, false, b"a", K);
                    w.extend(frame(2, true, b"b", K));
                    w
                },
                WsViolation::BadContinuation,
            ),
            (
                {
                    let mut w = vec![0x82, 0x80 | 127];
                    w.extend_from_slice(&(1u64 << 63).to_be_bytes());
                    w.extend_from_slice(&[0; 4]);
                    w
                },
                WsViolation::BadLength,
            ),
        ];
        for (wire, want) in cases {
            let mut d = Decoder::new(Side::Server, 0);
            assert_eq!(
                all(&mut d, &wire),
                Err(PeerError::WsFrame(want)),
                "{wire:02x?}"
            );
        }
    }

    #[test]
    fn close_ends_decoding() {
        let mut d = Decoder::new(Side::Server, 0);
        let mut wire = frame(8, true, &1000u16.to_be_bytes(), K);
        wire.extend(frame(2, true, b"after", K));
        let mut input = &wire[..];
        assert_eq!(d.decode(&mut input), Ok(Some(Event::Close(Some(1000)))));
        assert_eq!(d.decode(&mut input), Ok(None));
        let mut d = Decoder::new(Side::Server, 0);
        assert_eq!(
            all(&mut d, &frame(8, true, b"", K)).unwrap(),
            vec![Event::Close(None)]
        );
    }

    #[test]
    fn encoded_messages_decode_on_the_other_side() {
        let mut rng = Rng::new(7);
        for len in [0usize, 1, 125, 126, 65535, 65536, 65537, 200_004] {
            let mut m = Message::from_body((0..len).map(|i| i as u8).collect::<Vec<_>>());
            m.header.push_word(0x8000_0001).unwrap();
            let want = [&0x8000_0001u32.to_be_bytes()[..], &m.body[..]].concat();
            for client in [false, true] {
                let mut out = BytesMut::new();
                let mut chunks = Vec::new();
                encode_message(&m, client.then_some(&mut rng), &mut out, &mut chunks);
                chunks.push(out.split().freeze());
                let wire: Vec<u8> = chunks.concat();
                let side = if client { Side::Server } else { Side::Client };
                let mut d = Decoder::new(side, 0);
                assert_eq!(
                    all(&mut d, &wire).unwrap(),
                    vec![Event::Message(Bytes::from(want.clone()))],
                    "len {len} client {client}"
                );
                // Frames of at most 64 KiB: 200,004 + 4 bytes → 4 frames.
                let frames = want.len().div_ceil(MAX_TX_FRAME).max(1);
                let mut count = 0;
                let mut at = 0;
                while at < wire.len() {
                    let mut cur = Cursor::new(&wire[at..]);
                    let (h, l) = FrameHeader::parse(&mut cur).unwrap().unwrap();
                    assert!(l as usize <= MAX_TX_FRAME);
                    assert_eq!(h.mask.is_some(), client);
                    at += cur.position() as usize + l as usize;
                    count += 1;
                }
                assert_eq!(count, frames, "len {len}");
            }
        }
    }

    #[test]
    fn mask_phase() {
        let k = [1, 2, 3, 4];
        let mut a: Vec<u8> = (0..37).collect();
        let orig = a.clone();
        apply_mask(&mut a[..5], k, 0);
        apply_mask(&mut a[5..], k, 5 % 4);
        for (i, (x, y)) in a.iter().zip(&orig).enumerate() {
            assert_eq!(*x, y ^ k[i % 4]);
        }
    }
}
