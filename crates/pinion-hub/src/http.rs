//! The hub's HTTP port (default `127.0.0.1:7452`): the dashboard, the
//! browser client, Prometheus metrics, health, and the WebSocket endpoints
//! `/sub` (subscribe, with topic filters and resume), `/pub` (publish with
//! ack, SP REQ/REP over WebSocket) and `/stats` (the dashboard's feed).
//! The contract is in `docs/HUB-WEB.md`, what it refuses in
//! `docs/HARDENING.md`.
//!
//! Every core accepts on its own share of the port (SO_REUSEPORT), so a
//! connection lives on the core that accepted it. Each connection is first
//! admitted by the port's gate (`guard.rs`: caps on connections and
//! handshakes, per port and per source), then its request head is **read**
//! as it arrives: the task sleeps until the socket is readable, and the
//! head is parsed (`httparse`) only when it may be complete, so a peer
//! sending one byte at a time costs a wake-up per byte and nothing while
//! silent. The whole head must arrive within `handshake_timeout` (else
//! 408) and fit in 8 KiB and 48 headers (else 431). Then, before any route:
//! the `Host` must be one of the hub's names (421) and a browser's `Origin`
//! one of its own pages' or an allowed one (403) ([`crate::origin`]).
//!
//! A `/pub` connection is then handed, with the bytes already read, to
//! that core's REP socket as a `ws://` pipe
//! ([`pinion::Socket::adopt_ws_read`]), which answers the upgrade itself;
//! every other route is answered here, each response within
//! `write_timeout` (else the connection is cut).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pinion::Socket;
use pinion_core::protocol::ProtocolKind;
use pinion_runtime::transport::ws::frame::{close_code, Event};
use pinion_runtime::transport::ws::handshake;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::fanout::{ws_frame, FanIn, Framing, NewSub};
use crate::guard::{ConnGuard, Gate, HandshakeGuard, Limits};
use crate::origin::{self, HostPolicy, OriginPolicy};
use crate::stats::Refusal;
use crate::subs;
use crate::Shared;

/// The dashboard page.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The demo page (publish and subscribe from a browser).
pub const DEMO_HTML: &str = include_str!("../web/demo.html");
/// The browser client module.
pub const PINION_JS: &str = include_str!("../web/pinion.js");

/// The WebSocket subprotocol of pinion's own subscribers (pinion.js): like
/// no subprotocol, plus a first text frame `{"next":N}`.
pub const PINION_SUBPROTOCOL: &str = pinion_proto::ws::SUBPROTOCOL;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 << 10;
/// Most header lines in a request head.
pub const MAX_HEADERS: usize = 48;
/// Most `topic` filters one subscriber may give.
const MAX_FILTERS: usize = 64;
/// How long a rendered `/metrics` is served again: rendering reads
/// `/proc` for every thread, so a client polling in a loop would otherwise
/// take a core's time from the publishers.
pub const METRICS_TTL: Duration = Duration::from_millis(250);
/// How long a connection is read (and what it sends dropped) after its
/// answer, waiting for the peer to close first (see `linger`).
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read (and dropped) that way.
const LINGER_BYTES: usize = 64 << 10;
/// Read space added to a head's buffer at a time (a peer sending a few
/// bytes holds little; a whole head takes a few reads at most).
const HEAD_STEP: usize = 1024;

/// The answer to a connection refused at the door (a cap): said without
/// waiting on the peer, then closed.
const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

/// What every connection handler needs.
pub(crate) struct Web {
    /// Per core: its fan-out task.
    pub fan: Vec<UnboundedSender<FanIn>>,
    /// Per core: its REP socket (for `/pub`).
    pub socks: Vec<Socket>,
    pub shared: Arc<Shared>,
    pub sub_ids: Arc<AtomicU64>,
    /// The latest `/stats` JSON.
    pub feed: watch::Receiver<Arc<str>>,
    /// Renders `/metrics`.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// The last `/metrics` rendered (see [`METRICS_TTL`]).
    pub metrics_cache: Cached,
    /// Admission on this port.
    pub gate: Arc<Gate>,
    /// Timeouts, keepalive, ping interval.
    pub limits: Limits,
    /// What a `Host` may name.
    pub hosts: HostPolicy,
    /// Which pages' `Origin` is accepted.
    pub origins: OriginPolicy,
}

impl Web {
    /// The `/metrics` text, rendered at most once per [`METRICS_TTL`].
    fn metrics_text(&self) -> Arc<str> {
        self.metrics_cache.get(METRICS_TTL, &self.metrics)
    }
}

/// A rendered text and when it was rendered.
#[derive(Default)]
pub(crate) struct Cached(Mutex<Option<(Instant, Arc<str>)>>);

impl Cached {
    /// The text rendered less than `ttl` ago, or a fresh one from `render`.
    fn get(&self, ttl: Duration, render: impl FnOnce() -> String) -> Arc<str> {
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, text)) = &*lock() {
            if at.elapsed() < ttl {
                return text.clone();
            }
        }
        // Rendered outside the lock: a core never waits for another's
        // rendering (two may render at once; both results are current).
        let text: Arc<str> = Arc::from(render());
        *lock() = Some((Instant::now(), text.clone()));
        text
    }
}

/// Accepts HTTP connections on one core's share of the port.
pub(crate) async fn serve(core: usize, listener: std::net::TcpListener, web: Arc<Web>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the HTTP listener");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let (conn, hs) = match web.gate.admit(peer.ip()) {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::debug!(%peer, reason = why.label(), "http connection refused");
                        refuse_now(&s, SERVICE_UNAVAILABLE);
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                let _ =
                    crate::guard::set_keepalive(&socket2::SockRef::from(&s), web.limits.keepalive);
                let web = web.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(core, s, &web, conn, hs).await {
                        tracing::debug!(error = %e, "http connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (http)");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Says `bytes` to a peer refused at the door if its socket takes them at
/// once (one non-blocking write: never waits on a refused peer), and
/// closes. What the peer already sent is read off first (once, without
/// waiting), so that the close is a FIN after the answer rather than a
/// reset that could overtake it.
fn refuse_now(s: &TcpStream, bytes: &[u8]) {
    let _ = s.try_write(bytes);
    let mut sink = [0u8; 1024];
    let _ = s.try_read(&mut sink);
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// The parts of a request head the routes use.
#[derive(Debug, Default)]
pub struct Head {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// `GET`, …
    pub method: String,
    /// The minor HTTP version (`1`: HTTP/1.1).
    pub version: u8,
    /// The path, without the query.
    pub path: String,
    /// What follows `?` (empty if nothing).
    pub query: String,
    /// Every `Host` header's value (a valid request has exactly one).
    pub hosts: Vec<String>,
    /// Every `Origin` header's value (browsers send one; other clients
    /// none).
    pub origins: Vec<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both there.
    pub upgrade_ws: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// The subprotocols offered.
    pub protocols: Vec<String>,
    /// A `Content-Length` other than 0, or a `Transfer-Encoding`.
    pub has_body: bool,
    /// The token of an `Authorization: Bearer …` header.
    pub bearer: Option<String>,
}

/// Why a request head was refused (the peer's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not an HTTP request head (answered `400`).
    Malformed(&'static str),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers (answered `431`).
    TooLarge,
}

impl HeadError {
    /// The refusal counted for it.
    pub fn refusal(self) -> Refusal {
        match self {
            HeadError::Malformed(_) => Refusal::Malformed,
            HeadError::TooLarge => Refusal::HeadTooLarge,
        }
    }
}

/// Parses a complete head; `Ok(None)`: incomplete; `Err`: refused.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request")),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut h = Head {
        len,
        method: req.method.unwrap_or("").to_string(),
        version: req.version.unwrap_or(0),
        path: path.to_string(),
        query: query.to_string(),
        ..Head::default()
    };
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for hd in req.headers.iter() {
        // A value that is not UTF-8 reads as empty: no route needs one.
        let v = std::str::from_utf8(hd.value).unwrap_or("");
        let tokens = || v.split(',').map(str::trim);
        if hd.name.eq_ignore_ascii_case("host") {
            h.hosts.push(v.trim().to_string());
        } else if hd.name.eq_ignore_ascii_case("origin") {
            h.origins.push(v.trim().to_string());
        } else if hd.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket"));
        } else if hd.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade"));
        } else if hd.name.eq_ignore_ascii_case("sec-websocket-key") {
            h.ws_key = Some(v.trim().to_string());
        } else if hd.name.eq_ignore_ascii_case("sec-websocket-version") {
            h.ws_version = Some(v.trim().to_string());
        } else if hd.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            h.protocols.extend(tokens().map(String::from));
        } else if hd.name.eq_ignore_ascii_case("content-length") {
            h.has_body |= v.trim() != "0";
        } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
            h.has_body = true;
        } else if hd.name.eq_ignore_ascii_case("authorization") {
            let v = v.trim();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                h.bearer = Some(v[7..].trim().to_string());
            }
        }
    }
    h.upgrade_ws = upgrade && connection_upgrade;
    Ok(Some(h))
}

/// Whether the bytes from `from` on may hold the blank line that ends a
/// head (`\n\n` or `\n\r\n`, the line ends httparse accepts).
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let from = from.saturating_sub(2);
    buf.get(from..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
}

/// How reading a head ended when no head came of it.
#[derive(Debug)]
enum HeadRead {
    /// Refused: answer and count.
    Refused(HeadError),
    /// The peer closed or reset the connection: nobody to answer.
    Gone,
}

/// Reads a request head as it arrives (waiting for readiness between
/// reads, never polling). Returns the head and every byte read, which may
/// go past the head (a WebSocket client's first frames).
///
/// The head is parsed after the first read (garbage is refused at once)
/// and then only when a blank line may have arrived, so a head sent a byte
/// at a time is parsed a couple of times, not once per byte.
async fn read_head(s: &TcpStream) -> Result<(Head, Vec<u8>), HeadRead> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if s.readable().await.is_err() {
            return Err(HeadRead::Gone);
        }
        // One byte past the limit is enough to know the head is too long.
        let room = (MAX_HEAD + 1).saturating_sub(buf.len());
        if buf.capacity() == buf.len() {
            buf.reserve_exact(HEAD_STEP.min(room));
        }
        let before = buf.len();
        match s.try_read_buf(&mut (&mut buf).limit(room)) {
            Ok(0) => return Err(HeadRead::Gone),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HeadRead::Gone),
        }
        // RFC 9112 lets a server skip an empty line before the request;
        // more than one is not a client's doing (and would make every
        // byte of a stream of line ends look like a possible end of head).
        let lead = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if lead > 2 {
            return Err(HeadRead::Refused(HeadError::Malformed(
                "empty lines before the request line",
            )));
        }
        if before == 0 || may_end_head(&buf, before) {
            match parse_head(&buf) {
                Ok(Some(h)) => return Ok((h, buf)),
                Ok(None) => {}
                Err(e) => return Err(HeadRead::Refused(e)),
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadRead::Refused(HeadError::TooLarge));
        }
    }
}

/// Writes `bytes` within the port's `write_timeout`; a peer that does not
/// take them in time is cut (counted `write_timeout`).
async fn write_timed(s: &mut TcpStream, bytes: &[u8], web: &Web) -> std::io::Result<()> {
    match tokio::time::timeout(web.limits.write_timeout, s.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => {
            web.gate.refuse(Refusal::WriteTimeout);
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// Answers with `status` and closes (the whole response within
/// `write_timeout`).
async fn respond(
    s: &mut TcpStream,
    web: &Web,
    status: &str,
    ctype: &str,
    extra: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    write_timed(s, &out, web).await?;
    let _ = tokio::time::timeout(web.limits.write_timeout, s.shutdown()).await;
    linger(s).await;
    Ok(())
}

/// After the answer: reads (and drops) what the peer still sends, until it
/// closes, for at most [`LINGER`] and [`LINGER_BYTES`]. Closing a socket
/// with unread input makes the kernel send a reset, which can destroy the
/// answer before the peer reads it (a refused head it was still sending,
/// say); after this the close is a plain FIN.
async fn linger(s: &TcpStream) {
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = LINGER_BYTES;
        loop {
            if s.readable().await.is_err() {
                return;
            }
            match s.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => {
                    left = left.saturating_sub(n);
                    if left == 0 {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Answers a refusal (counted as `why`) with `status` and a one-line body.
async fn refuse(
    s: &mut TcpStream,
    web: &Web,
    why: Refusal,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    web.gate.refuse(why);
    respond(s, web, status, "text/plain", "", body.as_bytes()).await
}

/// Whether the request is for this hub and from a page allowed to use
/// it; `Err` is the refusal to answer.
fn check_names(
    head: &Head,
    local: SocketAddr,
    web: &Web,
) -> Result<(), (Refusal, &'static str, &'static str)> {
    let bad = |why| Err((Refusal::Malformed, "400 Bad Request", why));
    let host = match head.hosts.as_slice() {
        // HTTP/1.0 clients may leave it out; HTTP/1.1 ones must not.
        [] if head.version == 0 => None,
        [] => return bad("an HTTP/1.1 request needs a Host header\n"),
        [h] => match origin::parse_authority(h) {
            Some(a) => Some(a),
            None => return bad("malformed Host header\n"),
        },
        _ => return bad("more than one Host header\n"),
    };
    if let Some(host) = host {
        if !web.hosts.accepts(&host, local, &origin::is_machine_ip) {
            return Err((
                Refusal::BadHost,
                "421 Misdirected Request",
                "this hub does not answer to that Host\n",
            ));
        }
    }
    if head.origins.iter().any(|o| {
        !web.origins
            .accepts(o, &web.hosts, local, &origin::is_machine_ip)
    }) {
        return Err((
            Refusal::BadOrigin,
            "403 Forbidden",
            "pages of this origin may not use this hub (see allow_origin)\n",
        ));
    }
    Ok(())
}

async fn connection(
    core: usize,
    mut s: TcpStream,
    web: &Web,
    conn: ConnGuard,
    hs: HandshakeGuard,
) -> std::io::Result<()> {
    let local = s.local_addr()?;
    let (head, read) = match tokio::time::timeout(web.limits.handshake_timeout, read_head(&s)).await
    {
        Err(_) => {
            return refuse(
                &mut s,
                web,
                Refusal::HandshakeTimeout,
                "408 Request Timeout",
                "the request head took too long\n",
            )
            .await
        }
        Ok(Err(HeadRead::Gone)) => return Ok(()),
        Ok(Err(HeadRead::Refused(e @ HeadError::TooLarge))) => {
            return refuse(
                &mut s,
                web,
                e.refusal(),
                "431 Request Header Fields Too Large",
                "request head over 8 KiB or 48 headers\n",
            )
            .await
        }
        Ok(Err(HeadRead::Refused(e @ HeadError::Malformed(why)))) => {
            let body = format!("{why}\n");
            return refuse(&mut s, web, e.refusal(), "400 Bad Request", &body).await;
        }
        Ok(Ok(h)) => h,
    };
    // The handshake is over: its place goes to the next connection.
    drop(hs);
    if let Err((why, status, body)) = check_names(&head, local, web) {
        return refuse(&mut s, web, why, status, body).await;
    }
    if head.path == "/pub" {
        return publish(core, s, &head, read, web, conn).await;
    }
    if head.method != "GET" && head.method != "HEAD" {
        return respond(
            &mut s,
            web,
            "405 Method Not Allowed",
            "text/plain",
            "Allow: GET\r\n",
            b"only GET\n",
        )
        .await;
    }
    // What came after the head: a WebSocket client's first frames.
    let rest = read.get(head.len..).unwrap_or_default();
    // With authentication on, the dashboard and the figures need an admin
    // token (the health checks stay open: load balancers ask them).
    if let Some(auth) = &web.shared.auth {
        if matches!(
            head.path.as_str(),
            "/" | "/index.html" | "/metrics" | "/stats"
        ) {
            let checked = auth
                .verify(token_of(&head).as_deref())
                .and_then(|c| crate::auth::HubAuth::may_administer(&c));
            if let Err(refused) = checked {
                auth.count(&refused);
                let (status, extra) = if refused.reason.is_forbidden() {
                    ("403 Forbidden", "")
                } else {
                    ("401 Unauthorized", "WWW-Authenticate: Bearer\r\n")
                };
                let body = format!("{}\n", refused.message);
                return respond(&mut s, web, status, "text/plain", extra, body.as_bytes()).await;
            }
        }
    }
    match head.path.as_str() {
        "/" | "/index.html" => {
            let html = INDEX_HTML.as_bytes();
            respond(&mut s, web, "200 OK", "text/html; charset=utf-8", "", html).await
        }
        "/demo" | "/demo.html" => {
            let html = DEMO_HTML.as_bytes();
            respond(&mut s, web, "200 OK", "text/html; charset=utf-8", "", html).await
        }
        "/pinion.js" => {
            let js = PINION_JS.as_bytes();
            let ctype = "text/javascript; charset=utf-8";
            respond(&mut s, web, "200 OK", ctype, "", js).await
        }
        "/metrics" => {
            let mut body = web.metrics_text().to_string();
            if let Some(c) = &web.shared.cluster {
                body.push_str(&c.metrics_text());
            }
            let ctype = "text/plain; version=0.0.4; charset=utf-8";
            respond(&mut s, web, "200 OK", ctype, "", body.as_bytes()).await
        }
        // 200 only on a leader that has heard from a quorum within the
        // election timeout and has applied its own term's first entry:
        // what a load balancer's health check sends publishers to. A
        // single node always leads.
        "/leader" => {
            let leads = web
                .shared
                .cluster
                .as_ref()
                .is_none_or(|c| c.serving_leader.load(std::sync::atomic::Ordering::Relaxed));
            if leads && web.shared.health().is_ok() {
                respond(&mut s, web, "200 OK", "text/plain", "", b"leader\n").await
            } else {
                let status = "503 Service Unavailable";
                respond(&mut s, web, status, "text/plain", "", b"not the leader\n").await
            }
        }
        // 200 on a node current enough to serve subscribers (a single
        // node: when healthy; in a cluster see `Status::ready`): what a
        // load balancer's health check for subscribers asks.
        "/ready" => {
            let ready = web
                .shared
                .health()
                .map_err(String::from)
                .and_then(|()| web.shared.cluster.as_ref().map_or(Ok(()), |c| c.ready()));
            match ready {
                Ok(()) => respond(&mut s, web, "200 OK", "text/plain", "", b"ready\n").await,
                Err(why) => {
                    let body = format!("{why}\n");
                    let status = "503 Service Unavailable";
                    respond(&mut s, web, status, "text/plain", "", body.as_bytes()).await
                }
            }
        }
        "/cluster" => match &web.shared.cluster {
            Some(c) => {
                let body = c.json();
                let ctype = "application/json";
                respond(&mut s, web, "200 OK", ctype, "", body.as_bytes()).await
            }
            None => {
                let body = b"{\"single_node\":true}";
                respond(&mut s, web, "200 OK", "application/json", "", body).await
            }
        },
        "/healthz" => match web.shared.health() {
            Ok(()) => respond(&mut s, web, "200 OK", "text/plain", "", b"ok\n").await,
            Err(why) => {
                let body = format!("{why}\n");
                let status = "503 Service Unavailable";
                respond(&mut s, web, status, "text/plain", "", body.as_bytes()).await
            }
        },
        "/sub" => subscribe(core, s, &head, rest, web, conn).await,
        "/stats" => stats_stream(s, &head, rest, web).await,
        _ => {
            respond(
                &mut s,
                web,
                "404 Not Found",
                "text/plain",
                "",
                b"not found\n",
            )
            .await
        }
    }
}

/// The request's token: an `Authorization: Bearer` header, else a
/// `token=` query parameter (what browsers can send).
fn token_of(head: &Head) -> Option<String> {
    if let Some(b) = &head.bearer {
        return Some(b.clone());
    }
    head.query.split('&').find_map(|pair| {
        let v = pair.strip_prefix("token=")?;
        percent_decode(v).map(|b| String::from_utf8_lossy(&b).into_owned())
    })
}

/// Answers a WebSocket upgrade and closes it at once with `code` and
/// `reason` (a subscriber refused by authentication: browsers only see a
/// close code, never an HTTP status).
async fn upgrade_and_close(
    s: &mut TcpStream,
    head: &Head,
    protocol: Option<&str>,
    code: u16,
    reason: &str,
    web: &Web,
) -> std::io::Result<()> {
    if !accept_upgrade(s, head, protocol, web).await? {
        return Ok(());
    }
    let mut out = BytesMut::new();
    crate::fanout::ws_close(code, reason, &mut out);
    write_timed(s, &out, web).await?;
    let _ = s.shutdown().await;
    Ok(())
}

/// `/pub`: SP REQ/REP over WebSocket, served by the core's REP socket. The
/// head is checked here first (so a bad upgrade is counted like the other
/// routes' and answered at once), then the connection goes to the socket
/// with everything read so far; the pipe holds its place on the port.
async fn publish(
    core: usize,
    mut s: TcpStream,
    head: &Head,
    read: Vec<u8>,
    web: &Web,
    conn: ConnGuard,
) -> std::io::Result<()> {
    match handshake::server_request(&read[..head.len], "/pub", ProtocolKind::Rep0) {
        handshake::Request::Accept { .. } => {}
        handshake::Request::Refuse { response, .. } => {
            web.gate.refuse(Refusal::Malformed);
            write_timed(&mut s, &response, web).await?;
            return Ok(());
        }
        handshake::Request::Incomplete => {
            // The head parsed as complete above; the pipe's parser takes
            // fewer headers (32), so a head between the two is refused.
            web.gate.refuse(Refusal::HeadTooLarge);
            let status = "431 Request Header Fields Too Large";
            return respond(&mut s, web, status, "text/plain", "", b"too many headers\n").await;
        }
    }
    // With authentication on, a token given at the upgrade (header or
    // `?token=`) covers the connection's publishes that carry none. A bad
    // one refuses the connection: 4401/4403 as for /sub.
    let mut claims = None;
    if let Some(auth) = &web.shared.auth {
        if let Some(t) = token_of(head) {
            match auth.verify(Some(&t)) {
                Ok(c) => claims = Some(c),
                Err(refused) => {
                    auth.count(&refused);
                    let proto = Some("rep.sp.nanomsg.org");
                    let (code, why) = (refused.close_code(), refused.message.clone());
                    return upgrade_and_close(&mut s, head, proto, code, &why, web).await;
                }
            }
        }
    }
    let std = s.into_std()?;
    let entry = Arc::new(std::sync::Mutex::new(ClaimsEntry::Pending));
    let hold = PubConn {
        conn,
        entry: claims
            .is_some()
            .then(|| (web.shared.clone(), core, entry.clone())),
    };
    match web.socks[core].adopt_ws_read(std, "/pub", read, Box::new(hold)) {
        Ok(pipe) => {
            if let Some(c) = claims {
                // Under the entry's lock, so that a pipe that ended already
                // leaves nothing behind.
                let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
                if *e == ClaimsEntry::Pending {
                    web.shared.conn_claims[core]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(pipe.0, c);
                    *e = ClaimsEntry::Entered(pipe.0);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot adopt a /pub connection"),
    }
    Ok(())
}

/// Where a `/pub` connection's claims are in `Shared::conn_claims`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimsEntry {
    /// Not entered yet.
    Pending,
    /// Entered under this pipe id.
    Entered(u32),
    /// The pipe ended first: never enter them.
    Ended,
}

/// What a `/pub` pipe holds: its place on the port, and (authenticated at
/// the upgrade) its claims' entry, removed when the pipe ends.
struct PubConn {
    conn: ConnGuard,
    entry: Option<(
        Arc<crate::Shared>,
        usize,
        Arc<std::sync::Mutex<ClaimsEntry>>,
    )>,
}

impl pinion::Adopted for PubConn {
    fn peer_fault(&mut self, e: &pinion::PeerError) {
        self.conn.peer_fault(e);
    }
}

impl Drop for PubConn {
    fn drop(&mut self) {
        if let Some((shared, core, entry)) = &self.entry {
            let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
            if let ClaimsEntry::Entered(pipe) = *e {
                shared.conn_claims[*core]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pipe);
            }
            *e = ClaimsEntry::Ended;
        }
    }
}

/// Checks a WebSocket upgrade; `Err` is the refusal to send.
fn check_upgrade(head: &Head) -> Result<String, &'static str> {
    if !head.upgrade_ws {
        return Err("a WebSocket upgrade is required here");
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    if head.has_body {
        return Err("an upgrade request has no body");
    }
    let key = head
        .ws_key
        .as_deref()
        .filter(|k| k.len() == 24)
        .ok_or("missing or bad Sec-WebSocket-Key")?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Answers the upgrade (101, within `write_timeout`) or refuses it (400,
/// counted `malformed`); `false` when refused.
async fn accept_upgrade(
    s: &mut TcpStream,
    head: &Head,
    protocol: Option<&str>,
    web: &Web,
) -> std::io::Result<bool> {
    let accept = match check_upgrade(head) {
        Ok(a) => a,
        Err(why) => {
            web.gate.refuse(Refusal::Malformed);
            let extra = "Sec-WebSocket-Version: 13\r\n";
            respond(
                s,
                web,
                "400 Bad Request",
                "text/plain",
                extra,
                why.as_bytes(),
            )
            .await?;
            return Ok(false);
        }
    };
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    out.push_str("\r\n");
    write_timed(s, out.as_bytes(), web).await?;
    Ok(true)
}

/// A subscriber's query: topic prefixes and the offset to start from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubQuery {
    /// Topic prefixes (none: every topic).
    pub topics: Vec<Bytes>,
    /// The first offset wanted (none: live from now).
    pub from: Option<u64>,
    /// `token=`: a credential for a hub with authentication on (browsers
    /// cannot set an `Authorization` header on a WebSocket).
    pub token: Option<String>,
}

/// Parses `topic=a&topic=b&from=12` (percent-encoded values); `Err` says
/// what is wrong, for the 400 answer.
pub fn parse_sub_query(q: &str) -> Result<SubQuery, String> {
    let mut out = SubQuery::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("bad percent-encoding in {k}"))?;
        match k {
            "topic" => {
                if v.len() > pinion_proto::MAX_TOPIC_LEN {
                    return Err("topic longer than 255 bytes".into());
                }
                if out.topics.len() == MAX_FILTERS {
                    return Err(format!("more than {MAX_FILTERS} topics"));
                }
                out.topics.push(Bytes::from(v));
            }
            "from" => {
                let s = std::str::from_utf8(&v).map_err(|_| "from: not a number".to_string())?;
                out.from = Some(
                    s.parse()
                        .map_err(|_| format!("from: {s:?} is not an offset"))?,
                );
            }
            "token" => {
                if v.len() > pinion_auth::MAX_TOKEN_LEN {
                    return Err(format!("token over {} bytes", pinion_auth::MAX_TOKEN_LEN));
                }
                out.token = Some(String::from_utf8_lossy(&v).into_owned());
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?} (expected topic, from, token)"
                ))
            }
        }
    }
    Ok(out)
}

/// Decodes `%XX` escapes and `+` (as a space); `None` on a bad escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

async fn subscribe(
    core: usize,
    mut s: TcpStream,
    head: &Head,
    rest: &[u8],
    web: &Web,
    conn: ConnGuard,
) -> std::io::Result<()> {
    let q = match parse_sub_query(&head.query) {
        Ok(q) => q,
        Err(why) => {
            web.gate.refuse(Refusal::Malformed);
            return respond(
                &mut s,
                web,
                "400 Bad Request",
                "text/plain",
                "",
                why.as_bytes(),
            )
            .await;
        }
    };
    // pinion.js offers `pinion.v1` (it gets a hello naming its first
    // offset); an NNG SUB dialing ws://…/sub offers PUB's subprotocol.
    let offered = |p: &str| head.protocols.iter().any(|o| o == p);
    let hello = offered(PINION_SUBPROTOCOL);
    let protocol = if hello {
        Some(PINION_SUBPROTOCOL)
    } else if offered("pub.sp.nanomsg.org") {
        Some("pub.sp.nanomsg.org")
    } else {
        None
    };
    // With authentication on: a token (header, else `?token=`) that allows
    // every prefix asked for (none asked: every topic). Refused with a
    // close code after the upgrade, as browsers see only those.
    let mut expires = None;
    if let Some(auth) = &web.shared.auth {
        let token = head.bearer.clone().or_else(|| q.token.clone());
        let asked: Vec<Vec<u8>> = q.topics.iter().map(|t| t.to_vec()).collect();
        let checked = auth.verify(token.as_deref()).and_then(|c| {
            crate::auth::HubAuth::may_subscribe(&c, &asked)?;
            Ok(c)
        });
        match checked {
            Ok(c) => expires = Some((auth.clone(), c.exp)),
            Err(refused) => {
                auth.count(&refused);
                let (code, why) = (refused.close_code(), refused.message.clone());
                return upgrade_and_close(&mut s, head, protocol, code, &why, web).await;
            }
        }
    }
    if !accept_upgrade(&mut s, head, protocol, web).await? {
        return Ok(());
    }
    let id = web.sub_ids.fetch_add(1, Ordering::Relaxed);
    crate::fanout::bound_send_buffer(&s);
    let io = Arc::new(s);
    let fan = web.fan[core].clone();
    let sub = NewSub {
        id,
        framing: Framing::Ws,
        io: io.clone(),
        filter: q.topics,
        from: q.from,
        hello,
    };
    if fan.send(FanIn::NewSub(sub)).is_ok() {
        let ws = subs::WsReader {
            dec: subs::ws_decoder(),
            first: rest.to_vec(),
            ping_every: web.limits.ws_ping_interval,
        };
        let reader = subs::read_until_gone(id, io, Some(ws), fan.clone(), conn.gate());
        match expires {
            None => reader.await,
            Some((auth, exp)) => {
                // Closed with 4419 when the token expires: the client
                // reconnects with a fresh one, from the next offset.
                let left = exp.saturating_sub(pinion_auth::Verifier::now());
                let at = tokio::time::Instant::now()
                    + std::time::Duration::from_secs(
                        left.min(crate::config::MAX_DURATION.as_secs() * 365),
                    );
                tokio::pin!(reader);
                tokio::select! {
                    () = &mut reader => {}
                    () = tokio::time::sleep_until(at) => {
                        auth.count(&crate::auth::Refused {
                            reason: crate::auth::Reason::Expired,
                            message: String::new(),
                        });
                        let code = crate::auth::CLOSE_EXPIRED;
                        let _ = fan.send(FanIn::Violation(id, code, "token expired"));
                        let grace = std::time::Duration::from_secs(5);
                        let _ = tokio::time::timeout(grace, reader).await;
                    }
                }
            }
        }
    }
    // The connection's place is given back once its reader is done.
    drop(conn);
    Ok(())
}

/// `/stats`: the feed's JSON as text frames, the current one at once and
/// then each change. Each frame must be taken within `write_timeout` (so a
/// reader that stops holds the task at most that long, and the hub never
/// more than the one frame being written); a peer silent for
/// `ws_ping_interval` is pinged, and cut (`dead_peer`) if silent for
/// another.
async fn stats_stream(
    mut s: TcpStream,
    head: &Head,
    rest: &[u8],
    web: &Web,
) -> std::io::Result<()> {
    if !accept_upgrade(&mut s, head, None, web).await? {
        return Ok(());
    }
    let mut feed = web.feed.clone();
    let mut dec = subs::ws_decoder();
    let mut buf = [0u8; 256];
    let every = web.limits.ws_ping_interval;
    let mut silent_until = tokio::time::Instant::now() + every;
    let mut pinged = false;
    // The current figures at once, then every change.
    let first = feed.borrow_and_update().clone();
    write_timed(&mut s, &ws_frame(0x81, first.as_bytes()), web).await?;
    let mut input: Vec<u8> = rest.to_vec();
    loop {
        // What the peer sent: the last ping of it is answered (RFC 6455
        // §5.5.3), a close ends the stream, and so does a violation (with
        // its close code, counted).
        let mut out = BytesMut::new();
        let mut end = false;
        let mut ping = None;
        let mut slice = &input[..];
        if !slice.is_empty() {
            dec.refill(std::time::Instant::now());
        }
        loop {
            match dec.decode(&mut slice) {
                Ok(Some(Event::Ping(p))) => ping = Some(p),
                Ok(Some(Event::Close(_))) => {
                    crate::fanout::ws_close(1000, "", &mut out);
                    end = true;
                    break;
                }
                Err(e) => {
                    web.gate.refuse(Refusal::of_peer_error(&e));
                    crate::fanout::ws_close(close_code(&e), subs::reason(&e), &mut out);
                    end = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        if let Some(p) = ping.filter(|_| !end) {
            out.put_slice(&ws_frame(0x8A, &p[..p.len().min(125)]));
        }
        input.clear();
        if !out.is_empty() {
            write_timed(&mut s, &out, web).await?;
        }
        if end {
            return Ok(());
        }
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let json = feed.borrow_and_update().clone();
                write_timed(&mut s, &ws_frame(0x81, json.as_bytes()), web).await?;
            }
            r = s.readable() => {
                r?;
                match s.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        input.extend_from_slice(&buf[..n]);
                        silent_until = tokio::time::Instant::now() + every;
                        pinged = false;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            _ = tokio::time::sleep_until(silent_until) => {
                if pinged {
                    web.gate.refuse(Refusal::DeadPeer);
                    return Ok(());
                }
                write_timed(&mut s, &ws_frame(0x89, b""), web).await?;
                pinged = true;
                silent_until = tokio::time::Instant::now() + every;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_rendered_at_most_once_per_ttl() {
        let cache = Cached::default();
        let renders = std::cell::Cell::new(0);
        let render = || {
            renders.set(renders.get() + 1);
            format!("render {}", renders.get())
        };
        let ttl = Duration::from_millis(200);
        let first = cache.get(ttl, render);
        for _ in 0..100 {
            assert_eq!(cache.get(ttl, render), first);
        }
        assert_eq!(renders.get(), 1);
        std::thread::sleep(ttl);
        assert_eq!(&*cache.get(ttl, render), "render 2");
    }

    #[test]
    fn queries() {
        let q = parse_sub_query("topic=a%2Fb&topic=c+d&from=12").unwrap();
        assert_eq!(
            q,
            SubQuery {
                topics: vec![Bytes::from_static(b"a/b"), Bytes::from_static(b"c d")],
                from: Some(12),
                token: None,
            }
        );
        assert_eq!(parse_sub_query("").unwrap(), SubQuery::default());
        assert!(parse_sub_query("from=x").is_err());
        assert!(parse_sub_query("topic=%zz").is_err());
        assert!(parse_sub_query("colour=red").is_err());
        assert!(parse_sub_query(&format!("topic={}", "x".repeat(256))).is_err());
    }

    #[test]
    fn heads() {
        let h = parse_head(
            b"GET /sub?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pub.sp.nanomsg.org\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.path.as_str(), h.query.as_str()), ("/sub", "topic=a"));
        assert!(h.upgrade_ws);
        assert_eq!(h.protocols, vec!["pub.sp.nanomsg.org".to_string()]);
        assert_eq!(
            check_upgrade(&h).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" // RFC 6455's example
        );
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
        let plain = parse_head(b"GET /metrics HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(check_upgrade(&plain).is_err());
    }
}
