//! Raw clients for the hub's three ports, written by hand so that every
//! byte on the wire is the test's choice: SP over TCP, WebSocket frames
//! (masked or not, announcing any length), HTTP requests, protobuf
//! `Publish` bodies (including ones a protobuf library refuses to build,
//! such as a topic that is not UTF-8).
//!
//! Every connection is opened from a chosen loopback source address
//! (127.0.0.x): the legitimate clients use 127.0.0.1 and the attackers
//! other addresses, so the hub's per-source caps see them as different
//! peers.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Source address of the legitimate clients (and of the suite's own
/// `/metrics` scrapes).
pub const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// Attacker source address number `n`: 127.0.0.(2 + n).
pub fn src(n: usize) -> Ipv4Addr {
    assert!(n <= 252, "only 253 attacker addresses on 127.0.0.0/24");
    Ipv4Addr::new(127, 0, 0, 2 + n as u8)
}

/// Opens a TCP connection from `from` (an ephemeral port on that address).
/// `rcvbuf`, when given, is set before connecting, so the window the
/// client advertises stays that small for the connection's life.
pub fn connect_from(
    from: Ipv4Addr,
    to: SocketAddr,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    Ok(s)
}

/// Small deterministic generator for garbage bytes and filter names.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ---------------------------------------------------------------- SP

/// SP protocol numbers (as NNG numbers them).
pub mod sp {
    pub const PUB: u16 = 0x20;
    pub const SUB: u16 = 0x21;
    pub const REQ: u16 = 0x30;
    pub const REP: u16 = 0x31;
}

/// The 8-byte SP connection header for `protocol`.
pub fn sp_header(protocol: u16) -> [u8; 8] {
    let p = protocol.to_be_bytes();
    [0, b'S', b'P', 0, p[0], p[1], 0, 0]
}

/// One SP-over-TCP frame: a 64-bit big-endian length, then the body.
pub fn sp_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A REQ message body: the 32-bit request id (high bit set, as REQ sends
/// it), then the request.
pub fn req_body(id: u32, request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + request.len());
    out.extend_from_slice(&(id | 0x8000_0000).to_be_bytes());
    out.extend_from_slice(request);
    out
}

/// Connects from `from`, sends the SP header for `ours` and reads the
/// hub's; `Err` if the hub closes first or answers with another protocol
/// than `theirs`.
pub fn sp_connect(from: Ipv4Addr, to: SocketAddr, ours: u16, theirs: u16) -> io::Result<TcpStream> {
    let mut s = connect_from(from, to, None)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&sp_header(ours))?;
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    if h != sp_header(theirs) {
        return Err(io::Error::other(format!("unexpected SP header {h:02x?}")));
    }
    Ok(s)
}

/// Takes the complete SP frames at the front of `buf` (bodies), leaving a
/// partial one in place. `Err` if a frame announces more than `max`.
pub fn take_sp_frames(buf: &mut Vec<u8>, max: u64) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 8 {
        let len = u64::from_be_bytes(buf[at..at + 8].try_into().unwrap());
        if len > max {
            return Err(io::Error::other(format!("SP frame of {len} bytes")));
        }
        let end = at + 8 + len as usize;
        if buf.len() < end {
            break;
        }
        out.push(buf[at + 8..end].to_vec());
        at = end;
    }
    buf.drain(..at);
    Ok(out)
}

// ---------------------------------------------------------- protobuf

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(tag: u8, b: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A `pinion.v1.Publish` encoded by hand (field numbers from
/// proto/pinion/v1/hub.proto): the topic is raw bytes, so a test can send
/// one that is not UTF-8, which prost would not let it build.
pub fn publish(client_id: &[u8; 16], seq: u64, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + topic.len() + payload.len());
    field_bytes(0x0a, client_id, &mut out); // 1: client_id
    out.push(0x10); // 2: seq (varint)
    varint(seq, &mut out);
    field_bytes(0x1a, topic, &mut out); // 3: topic
    field_bytes(0x22, payload, &mut out); // 4: payload
    out
}

/// What a `Reply` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack {
        seq: u64,
        offset: u64,
    },
    Nack {
        seq: Option<u64>,
        code: i32,
        reason: String,
    },
}

/// Decodes a REP message body (request id, then a `Reply`): the request
/// id without its high bit, and the answer.
pub fn decode_reply(body: &[u8]) -> io::Result<(u32, Answer)> {
    use pinion_proto::{reply, Message, Reply};
    if body.len() < 4 {
        return Err(io::Error::other("reply shorter than its request id"));
    }
    let id = u32::from_be_bytes(body[..4].try_into().unwrap()) & 0x7fff_ffff;
    let r = Reply::decode(&body[4..]).map_err(io::Error::other)?;
    let a = match r.result {
        Some(reply::Result::Ack(a)) => Answer::Ack {
            seq: a.seq.unwrap_or(0),
            offset: a.offset.unwrap_or(0),
        },
        Some(reply::Result::Nack(n)) => Answer::Nack {
            seq: n.seq,
            code: n.code.unwrap_or(0),
            reason: n.reason.unwrap_or_default(),
        },
        None => return Err(io::Error::other("reply with neither ack nor nack")),
    };
    Ok((id, a))
}

/// NACK code MALFORMED (hub.proto).
pub const MALFORMED: i32 = 2;

// ---------------------------------------------------------- WebSocket

/// A fixed `Sec-WebSocket-Key` (RFC 6455's example): the hub's answer to
/// it is known, and a key carries no secret.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade request for `target` (path and query), with `Host`
/// `host` and, when given, `Origin` and an offered subprotocol.
pub fn upgrade_request(
    target: &str,
    host: &str,
    origin: Option<&str>,
    protocol: Option<&str>,
) -> String {
    let mut r = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(o) = origin {
        r.push_str(&format!("Origin: {o}\r\n"));
    }
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Encodes one frame. Clients mask (`mask: Some`); a test that wants to
/// break the rule passes `None`.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = ws_head(fin, opcode, payload.len() as u64, mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    out
}

/// A frame header announcing `len` payload bytes, in the shortest form
/// RFC 6455 allows (so `len` up to 2^64 − 1 can be announced: values with
/// the top bit set are illegal, which is what some tests want).
pub fn ws_head(fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out
}

/// A frame from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame (1005 if it has none).
    pub fn close_code(&self) -> u16 {
        if self.payload.len() >= 2 {
            u16::from_be_bytes([self.payload[0], self.payload[1]])
        } else {
            1005
        }
    }
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or(&[])).into_owned()
    }
}

/// Parses one server frame at the front of `buf`: `Ok(None)` if incomplete.
/// Server frames must not be masked and must not announce more than `max`.
pub fn parse_frame(buf: &[u8], max: u64) -> io::Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(io::Error::other("the server masked a frame"));
    }
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (n as u64, 2),
    };
    if len > max {
        return Err(io::Error::other(format!("server frame of {len} bytes")));
    }
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            payload: buf[at..end].to_vec(),
        },
        end,
    )))
}

/// An HTTP response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub text: String,
}

impl Head {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads an HTTP response head from `s` (within `s`'s read timeout); what
/// follows the head is returned too (the start of the body or of the
/// WebSocket stream).
pub fn read_head(s: &mut TcpStream) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = text
                .get(9..12)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("not an HTTP status line: {text:?}")))?;
            let rest = buf[end + 4..].to_vec();
            return Ok((Head { status, text }, rest));
        }
        if buf.len() > 64 << 10 {
            return Err(io::Error::other("response head over 64 KiB"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes of head", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A WebSocket client connection after a successful upgrade.
pub struct Ws {
    pub s: TcpStream,
    /// Bytes read but not yet parsed into frames.
    pub buf: Vec<u8>,
    mask: u32,
}

/// Result of an upgrade attempt: the connection if the hub said 101, else
/// the head it answered with.
pub enum Upgraded {
    Yes(Ws),
    No(Head),
}

/// Connects from `from` and asks to upgrade `target`.
pub fn ws_connect(
    from: Ipv4Addr,
    to: SocketAddr,
    target: &str,
    origin: Option<&str>,
    protocol: Option<&str>,
    rcvbuf: Option<usize>,
) -> io::Result<Upgraded> {
    let host = to.to_string();
    ws_connect_host(from, to, target, &host, origin, protocol, rcvbuf)
}

/// [`ws_connect`] with a chosen `Host`.
pub fn ws_connect_host(
    from: Ipv4Addr,
    to: SocketAddr,
    target: &str,
    host: &str,
    origin: Option<&str>,
    protocol: Option<&str>,
    rcvbuf: Option<usize>,
) -> io::Result<Upgraded> {
    let mut s = connect_from(from, to, rcvbuf)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(upgrade_request(target, host, origin, protocol).as_bytes())?;
    let (head, rest) = read_head(&mut s)?;
    if head.status != 101 {
        return Ok(Upgraded::No(head));
    }
    Ok(Upgraded::Yes(Ws {
        s,
        buf: rest,
        mask: 0x9e37_79b9,
    }))
}

impl Ws {
    /// A second handle on the same connection (e.g. a reader thread while
    /// another writes); it starts with no buffered input.
    pub fn try_clone(&self) -> io::Result<Ws> {
        Ok(Ws {
            s: self.s.try_clone()?,
            buf: Vec::new(),
            mask: self.mask ^ 0x5555_5555,
        })
    }

    /// A fresh masking key per frame (any value will do; it need not be
    /// unpredictable between a test and its own hub).
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask = self.mask.wrapping_mul(1664525).wrapping_add(1013904223);
        self.mask.to_be_bytes()
    }

    /// Sends one masked frame.
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let m = self.next_mask();
        self.s.write_all(&ws_frame(fin, opcode, payload, Some(m)))
    }

    /// Reads the next frame, waiting at most the socket's read timeout for
    /// more bytes (`ErrorKind::WouldBlock`/`TimedOut` then; partial input
    /// is kept for the next call).
    pub fn read_frame(&mut self, max: u64) -> io::Result<Frame> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some((f, used)) = parse_frame(&self.buf, max)? {
                self.buf.drain(..used);
                return Ok(f);
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame (its code), the end of the stream
    /// (`None`), or `within` passes (`None`, and `timed_out` set).
    /// Data frames and pings on the way are skipped.
    pub fn await_close(&mut self, within: Duration) -> Closing {
        let deadline = Instant::now() + within;
        let _ = self.s.set_read_timeout(Some(Duration::from_millis(100)));
        loop {
            match self.read_frame(64 << 20) {
                Ok(f) if f.opcode == 0x8 => {
                    return Closing::Frame(f.close_code(), f.close_reason());
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if Instant::now() >= deadline {
                        return Closing::StillOpen;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Closing::Eof,
                Err(e) => return Closing::Error(e.kind()),
            }
        }
    }
}

/// How a WebSocket connection ended (as the client saw it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// The stream ended without a close frame.
    Eof,
    /// Reset or another error.
    Error(io::ErrorKind),
    /// Nothing within the time given.
    StillOpen,
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How a raw connection ended, seen by a client that only reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The hub closed it (FIN) after sending these bytes (at most the
    /// first 64 KiB are kept).
    Eof(Vec<u8>),
    /// Reset (after these bytes).
    Reset(Vec<u8>),
    /// Still open when the time was up.
    Open(Vec<u8>),
}

impl Ended {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Ended::Eof(b) | Ended::Reset(b) | Ended::Open(b) => b,
        }
    }
    pub fn closed(&self) -> bool {
        !matches!(self, Ended::Open(_))
    }
    /// The HTTP status at the start of what was received, if any.
    pub fn http_status(&self) -> Option<u16> {
        http_status(self.bytes())
    }
}

/// The status code of an HTTP response at the start of `b`.
pub fn http_status(b: &[u8]) -> Option<u16> {
    if b.len() >= 12 && b.starts_with(b"HTTP/1.") {
        std::str::from_utf8(&b[9..12]).ok()?.parse().ok()
    } else {
        None
    }
}

/// Reads (and keeps up to 64 KiB of) whatever arrives until the peer
/// closes or `within` passes.
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> Ended {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ended::Open(got);
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut chunk) {
            Ok(0) => return Ended::Eof(got),
            Ok(n) => {
                if got.len() < 64 << 10 {
                    got.extend_from_slice(&chunk[..n]);
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ended::Reset(got),
        }
    }
}

/// An HTTP exchange from `from`: sends `request` (whole), reads until the
/// hub closes (the hub answers one request per connection) or `within`.
pub fn http_exchange(
    from: Ipv4Addr,
    to: SocketAddr,
    request: &[u8],
    within: Duration,
) -> io::Result<Ended> {
    let mut s = connect_from(from, to, None)?;
    s.set_nodelay(true)?;
    s.write_all(request)?;
    Ok(read_until_closed(&mut s, within))
}

/// `GET path` with a proper `Host`: status and body.
pub fn http_get(from: Ipv4Addr, to: SocketAddr, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n\r\n");
    let ended = http_exchange(from, to, req.as_bytes(), Duration::from_secs(10))?;
    let b = ended.bytes();
    let status = http_status(b)
        .ok_or_else(|| io::Error::other(format!("no HTTP answer to GET {path}: {ended:?}")))?;
    let body = b
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| b[at + 4..].to_vec())
        .unwrap_or_default();
    Ok((status, body))
}
