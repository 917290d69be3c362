//! The hub's HTTP port (default `127.0.0.1:7452`): the dashboard, the
//! browser client, Prometheus metrics, health, and the WebSocket endpoints
//! `/sub` (subscribe, with topic filters and resume), `/pub` (publish with
//! ack, SP REQ/REP over WebSocket) and `/stats` (the dashboard's feed).
//! The contract is in `docs/HUB-WEB.md`.
//!
//! Every core accepts on its own share of the port (SO_REUSEPORT), so a
//! connection lives on the core that accepted it. The request head is
//! **peeked**, not read, until the route is known: a `/pub` connection is
//! then handed untouched to that core's REP socket as a `ws://` pipe
//! ([`pinion::Socket::adopt_ws`]), which answers the upgrade itself; every
//! other route reads the head and answers here. HTTP heads are parsed with
//! `httparse`; a head over 8 KiB, or not complete within 10 s, is refused.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pinion::Socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::fanout::{ws_frame, FanIn, Framing, NewSub};
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
pub const PINION_SUBPROTOCOL: &str = "pinion.v1";

/// Largest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `topic` filters one subscriber may give.
const MAX_FILTERS: usize = 64;

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
            Ok((s, _)) => {
                let web = web.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    if let Err(e) = connection(core, s, &web).await {
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

/// The parts of a request head the routes use.
#[derive(Debug, Default)]
pub struct Head {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// `GET`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What follows `?` (empty if nothing).
    pub query: String,
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
}

/// Parses a complete head; `Ok(None)`: incomplete; `Err`: not HTTP.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request"),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut h = Head {
        len,
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        ..Head::default()
    };
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for hd in req.headers.iter() {
        let v = std::str::from_utf8(hd.value).unwrap_or("");
        let tokens = || v.split(',').map(str::trim);
        if hd.name.eq_ignore_ascii_case("upgrade") {
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
        }
    }
    h.upgrade_ws = upgrade && connection_upgrade;
    Ok(Some(h))
}

/// Peeks at the connection until a whole request head is there.
async fn peek_head(s: &TcpStream) -> Result<Option<Head>, &'static str> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut last = 0;
    loop {
        let n = s.peek(&mut buf).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Ok(None);
        }
        if n != last {
            if let Some(h) = parse_head(&buf[..n])? {
                return Ok(Some(h));
            }
            if n == MAX_HEAD {
                return Err("request head too long");
            }
            last = n;
        }
        // Part of the head is there; the rest is on its way.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn respond(
    s: &mut TcpStream,
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
    s.write_all(&out).await?;
    let _ = s.shutdown().await;
    Ok(())
}

async fn connection(core: usize, mut s: TcpStream, web: &Web) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, peek_head(&s)).await {
        Err(_) => return respond(&mut s, "408 Request Timeout", "text/plain", "", b"").await,
        Ok(Err(why)) => {
            return respond(&mut s, "400 Bad Request", "text/plain", "", why.as_bytes()).await
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(h))) => h,
    };
    if head.path == "/pub" {
        // SP REQ/REP over WebSocket: the REP socket's pipe reads the head
        // and answers the upgrade (or refuses it) itself.
        let std = s.into_std()?;
        return match web.socks[core].adopt_ws(std, "/pub") {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot adopt a /pub connection");
                Ok(())
            }
        };
    }
    // Every other route reads the head here.
    let mut consumed = vec![0u8; head.len];
    s.read_exact(&mut consumed).await?;
    drop(consumed);
    if head.method != "GET" && head.method != "HEAD" {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            "Allow: GET\r\n",
            b"only GET\n",
        )
        .await;
    }
    match head.path.as_str() {
        "/" | "/index.html" => {
            respond(
                &mut s,
                "200 OK",
                "text/html; charset=utf-8",
                "",
                INDEX_HTML.as_bytes(),
            )
            .await
        }
        "/demo" | "/demo.html" => {
            respond(
                &mut s,
                "200 OK",
                "text/html; charset=utf-8",
                "",
                DEMO_HTML.as_bytes(),
            )
            .await
        }
        "/pinion.js" => {
            respond(
                &mut s,
                "200 OK",
                "text/javascript; charset=utf-8",
                "",
                PINION_JS.as_bytes(),
            )
            .await
        }
        "/metrics" => {
            let body = (web.metrics)();
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                "",
                body.as_bytes(),
            )
            .await
        }
        "/healthz" => match web.shared.health() {
            Ok(()) => respond(&mut s, "200 OK", "text/plain", "", b"ok\n").await,
            Err(why) => {
                respond(
                    &mut s,
                    "503 Service Unavailable",
                    "text/plain",
                    "",
                    format!("{why}\n").as_bytes(),
                )
                .await
            }
        },
        "/sub" => subscribe(core, s, &head, web).await,
        "/stats" => stats_stream(s, &head, web).await,
        _ => respond(&mut s, "404 Not Found", "text/plain", "", b"not found\n").await,
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

async fn accept_upgrade(
    s: &mut TcpStream,
    head: &Head,
    protocol: Option<&str>,
) -> std::io::Result<bool> {
    let accept = match check_upgrade(head) {
        Ok(a) => a,
        Err(why) => {
            respond(
                s,
                "400 Bad Request",
                "text/plain",
                "Sec-WebSocket-Version: 13\r\n",
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
    s.write_all(out.as_bytes()).await?;
    Ok(true)
}

/// A subscriber's query: topic prefixes and the offset to start from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubQuery {
    /// Topic prefixes (none: every topic).
    pub topics: Vec<Bytes>,
    /// The first offset wanted (none: live from now).
    pub from: Option<u64>,
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
            _ => return Err(format!("unknown parameter {k:?} (expected topic, from)")),
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

async fn subscribe(core: usize, mut s: TcpStream, head: &Head, web: &Web) -> std::io::Result<()> {
    let q = match parse_sub_query(&head.query) {
        Ok(q) => q,
        Err(why) => {
            return respond(&mut s, "400 Bad Request", "text/plain", "", why.as_bytes()).await
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
    if !accept_upgrade(&mut s, head, protocol).await? {
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
        subs::read_until_gone(id, io, Some(subs::ws_decoder()), fan).await;
    }
    Ok(())
}

async fn stats_stream(mut s: TcpStream, head: &Head, web: &Web) -> std::io::Result<()> {
    if !accept_upgrade(&mut s, head, None).await? {
        return Ok(());
    }
    let mut feed = web.feed.clone();
    let (mut rd, mut wr) = s.into_split();
    let mut dec = subs::ws_decoder();
    let mut buf = [0u8; 256];
    // The current figures at once, then every change.
    let first = feed.borrow_and_update().clone();
    wr.write_all(&ws_frame(0x81, first.as_bytes())).await?;
    loop {
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    break;
                }
                let json = feed.borrow_and_update().clone();
                wr.write_all(&ws_frame(0x81, json.as_bytes())).await?;
            }
            r = rd.read(&mut buf) => {
                let n = r?;
                if n == 0 {
                    break;
                }
                let mut input = &buf[..n];
                loop {
                    match dec.decode(&mut input) {
                        Ok(Some(pinion_runtime::transport::ws::frame::Event::Ping(p))) => {
                            wr.write_all(&ws_frame(0x8A, &p[..p.len().min(125)])).await?;
                        }
                        Ok(Some(pinion_runtime::transport::ws::frame::Event::Close(_))) | Err(_) => {
                            let mut b = BytesMut::new();
                            crate::fanout::ws_close(1000, "", &mut b);
                            let _ = wr.write_all(&b).await;
                            return Ok(());
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_sub_query("topic=a%2Fb&topic=c+d&from=12").unwrap();
        assert_eq!(
            q,
            SubQuery {
                topics: vec![Bytes::from_static(b"a/b"), Bytes::from_static(b"c d")],
                from: Some(12),
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
