//! The WebSocket opening handshake for SP (sans-IO): HTTP/1.1 heads parsed
//! with `httparse`, keys with tungstenite's `derive_accept_key`.
//!
//! As NNG does it (see `docs/ARCHITECTURE.md` and the SP-over-WebSocket
//! notes): the dialer asks for `Sec-WebSocket-Protocol: <name>.sp.nanomsg.org`
//! where `<name>` is the *server's* protocol (a REQ dialing a REP sends
//! `rep.sp.nanomsg.org`), sends `Host:` as the URL's `host:port`, HTTP/1.1
//! and `Sec-WebSocket-Version: 13`. The listener checks that the
//! subprotocol names its own protocol and echoes it. A wrong path is
//! answered `404`, anything else wrong (missing or wrong subprotocol,
//! missing `Host`, bad key or version, a body) `400`.

use pinion_core::protocol::ProtocolKind;
use pinion_core::{PeerError, UpgradeFault};

/// Longest HTTP head accepted (request or response).
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines accepted in a head.
const MAX_HEADERS: usize = 32;

/// The subprotocol naming `kind`: `<name>.sp.nanomsg.org`.
pub fn subprotocol(kind: ProtocolKind) -> String {
    format!("{}.sp.nanomsg.org", kind.name())
}

/// The pattern a subprotocol names, if any.
pub fn kind_of_subprotocol(s: &str) -> Option<ProtocolKind> {
    let name = s.strip_suffix(".sp.nanomsg.org")?;
    ProtocolKind::ALL.into_iter().find(|k| k.name() == name)
}

/// The pattern a socket of `kind` talks to (what a dialer names).
pub fn peer_kind(kind: ProtocolKind) -> ProtocolKind {
    ProtocolKind::ALL
        .into_iter()
        .find(|k| k.id() == kind.peer_id())
        .unwrap_or(kind)
}

/// What to do with a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// More bytes are needed (and the limit is not reached).
    Incomplete,
    /// Upgrade: send `response`; the head was `head_len` bytes (anything
    /// after it is already WebSocket frames).
    Accept {
        /// The `101 Switching Protocols` answer.
        response: Vec<u8>,
        /// Bytes of the request head.
        head_len: usize,
    },
    /// Refuse: send `response` (an HTTP error) and close.
    Refuse {
        /// The HTTP status sent.
        status: u16,
        /// Why, as counted in the socket's statistics.
        error: PeerError,
        /// The complete HTTP answer.
        response: Vec<u8>,
    },
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header value has `token` (ASCII case-insensitive).
fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn refusal(status: u16) -> Vec<u8> {
    let reason = match status {
        404 => "Not Found",
        _ => "Bad Request",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn refuse(status: u16, error: PeerError) -> Request {
    Request::Refuse {
        status,
        error,
        response: refusal(status),
    }
}

/// Checks a client's upgrade request (`buf` is what arrived so far) for a
/// listener of `kind` on `path`.
pub fn server_request(buf: &[u8], path: &str, kind: ProtocolKind) -> Request {
    let bad = |f| refuse(400, PeerError::BadUpgrade(f));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return bad(UpgradeFault::TooLong)
        }
        Ok(httparse::Status::Partial) => return Request::Incomplete,
        Err(_) => return bad(UpgradeFault::Malformed),
    };
    if head_len > MAX_HEAD {
        return bad(UpgradeFault::TooLong);
    }
    let h = &*req.headers;
    if req.path != Some(path) {
        return refuse(404, PeerError::BadUpgrade(UpgradeFault::WrongPath));
    }
    if req.method != Some("GET") {
        return bad(UpgradeFault::NotGet);
    }
    if req.version != Some(1) {
        return bad(UpgradeFault::NotHttp11);
    }
    if header(h, "host").is_none() {
        return bad(UpgradeFault::MissingHost);
    }
    if !has_token(header(h, "upgrade"), "websocket")
        || !has_token(header(h, "connection"), "upgrade")
    {
        return bad(UpgradeFault::NotUpgrade);
    }
    if header(h, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return bad(UpgradeFault::BadVersion);
    }
    let key = match header(h, "sec-websocket-key").map(<[u8]>::trim_ascii) {
        Some(k) if valid_key(k) => k,
        _ => return bad(UpgradeFault::BadKey),
    };
    let has_body = header(h, "transfer-encoding").is_some()
        || header(h, "content-length").is_some_and(|v| v.trim_ascii().iter().any(|&b| b != b'0'));
    if has_body {
        return bad(UpgradeFault::HasBody);
    }
    // Every offered subprotocol (there may be several header lines, each a
    // list); ours must be among them.
    let own = subprotocol(kind);
    let mut other = None;
    let mut found = false;
    for v in h
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("sec-websocket-protocol"))
    {
        for t in v.value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t == own.as_bytes() {
                found = true;
            } else if let Some(k) = std::str::from_utf8(t).ok().and_then(kind_of_subprotocol) {
                other.get_or_insert(k);
            }
        }
    }
    if !found {
        // A client naming another SP protocol is a wrong peer; a client
        // naming none is not an SP client at all.
        let e = match other {
            Some(k) => PeerError::WrongProtocol(k.peer_id()),
            None => PeerError::BadUpgrade(UpgradeFault::NoSubprotocol),
        };
        return refuse(400, e);
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\
         Sec-WebSocket-Protocol: {own}\r\n\r\n"
    )
    .into_bytes();
    Request::Accept { response, head_len }
}

/// A `Sec-WebSocket-Key`: base64 of 16 bytes (24 characters, `==` at the end).
fn valid_key(k: &[u8]) -> bool {
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// A dialer's upgrade request. `host` is the URL's `host:port` as written
/// (IPv6 in brackets); `kind` is the dialing socket's pattern (the request
/// names its peer's).
pub fn client_request(host: &str, path: &str, kind: ProtocolKind, key: &str) -> Vec<u8> {
    client_request_with(host, path, &subprotocol(peer_kind(kind)), key)
}

/// An upgrade request offering one explicit `subprotocol`, for WebSocket
/// endpoints that are not SP (the hub's `/sub` speaks `pinion.v1`).
/// `target` is the request target as sent, path and query (already
/// percent-encoded; it must not hold spaces or line breaks); `host` as for
/// [`client_request`].
pub fn client_request_with(host: &str, target: &str, subprotocol: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the server's answer (`buf` so far) to our request with `key` from
/// a socket of `kind`. `Ok(Some(n))`: upgraded, the head was `n` bytes.
pub fn client_response(
    buf: &[u8],
    key: &str,
    kind: ProtocolKind,
) -> Result<Option<usize>, PeerError> {
    let want = subprotocol(peer_kind(kind));
    response_head(buf, key, |proto| {
        if proto == Some(want.as_bytes()) {
            return Ok(());
        }
        match proto
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(kind_of_subprotocol)
        {
            Some(k) => Err(PeerError::WrongProtocol(k.id())),
            None => Err(PeerError::BadUpgrade(UpgradeFault::NoSubprotocol)),
        }
    })
}

/// Checks the server's answer (`buf` so far) to a [`client_request_with`]
/// request with `key`: a `101` whose `Sec-WebSocket-Protocol` is exactly
/// `subprotocol` (missing or another one:
/// [`UpgradeFault::NoSubprotocol`]). `Ok(Some(n))`: upgraded, the head was
/// `n` bytes (anything after it is already WebSocket frames).
pub fn client_response_with(
    buf: &[u8],
    key: &str,
    subprotocol: &str,
) -> Result<Option<usize>, PeerError> {
    response_head(buf, key, |proto| {
        if proto == Some(subprotocol.as_bytes()) {
            Ok(())
        } else {
            Err(PeerError::BadUpgrade(UpgradeFault::NoSubprotocol))
        }
    })
}

/// The checks every answer to our upgrade gets; `subprotocol` judges the
/// `Sec-WebSocket-Protocol` value (trimmed; `None` when absent).
fn response_head(
    buf: &[u8],
    key: &str,
    subprotocol: impl FnOnce(Option<&[u8]>) -> Result<(), PeerError>,
) -> Result<Option<usize>, PeerError> {
    let bad = |f| Err(PeerError::BadUpgrade(f));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return bad(UpgradeFault::TooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return bad(UpgradeFault::Malformed),
    };
    if head_len > MAX_HEAD {
        return bad(UpgradeFault::TooLong);
    }
    match res.code {
        Some(101) => {}
        Some(code) => return Err(PeerError::UpgradeRefused(code)),
        None => return bad(UpgradeFault::Malformed),
    }
    if res.version != Some(1) {
        return bad(UpgradeFault::NotHttp11);
    }
    let h = &*res.headers;
    if !has_token(header(h, "upgrade"), "websocket")
        || !has_token(header(h, "connection"), "upgrade")
    {
        return bad(UpgradeFault::NotUpgrade);
    }
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header(h, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(want.as_bytes()) {
        return bad(UpgradeFault::BadAccept);
    }
    subprotocol(header(h, "sec-websocket-protocol").map(<[u8]>::trim_ascii))?;
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(extra: &str) -> String {
        format!(
            "GET /p HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn names() {
        assert_eq!(subprotocol(ProtocolKind::Rep0), "rep.sp.nanomsg.org");
        assert_eq!(subprotocol(ProtocolKind::Pair1), "pair1.sp.nanomsg.org");
        assert_eq!(peer_kind(ProtocolKind::Sub0), ProtocolKind::Pub0);
        assert_eq!(
            peer_kind(ProtocolKind::Surveyor0),
            ProtocolKind::Respondent0
        );
        assert_eq!(peer_kind(ProtocolKind::Bus0), ProtocolKind::Bus0);
        for k in ProtocolKind::ALL {
            assert_eq!(kind_of_subprotocol(&subprotocol(k)), Some(k));
        }
        assert_eq!(kind_of_subprotocol("rep"), None);
    }

    #[test]
    fn accepts_and_echoes_own_subprotocol() {
        let r = req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n");
        let mut wire = r.clone().into_bytes();
        wire.extend_from_slice(b"\x82\x80junk");
        for cut in 0..r.len() {
            assert_eq!(
                server_request(&wire[..cut], "/p", ProtocolKind::Rep0),
                Request::Incomplete
            );
        }
        let Request::Accept { response, head_len } =
            server_request(&wire, "/p", ProtocolKind::Rep0)
        else {
            panic!("refused")
        };
        assert_eq!(head_len, r.len());
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        // RFC 6455 §1.3's example key and answer.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n"));
        // And our client takes that answer.
        assert_eq!(
            client_response(text.as_bytes(), KEY, ProtocolKind::Req0),
            Ok(Some(text.len()))
        );
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                req(""),
                400,
                PeerError::BadUpgrade(UpgradeFault::NoSubprotocol),
            ),
            (
                req("Sec-WebSocket-Protocol: req.sp.nanomsg.org\r\n"),
                400,
                PeerError::WrongProtocol(0x31),
            ),
            (
                req("Sec-WebSocket-Protocol: chat\r\n"),
                400,
                PeerError::BadUpgrade(UpgradeFault::NoSubprotocol),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\nContent-Length: 3\r\n"),
                400,
                PeerError::BadUpgrade(UpgradeFault::HasBody),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n").replace("/p ", "/q "),
                404,
                PeerError::BadUpgrade(UpgradeFault::WrongPath),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n")
                    .replace("Host: 127.0.0.1:9\r\n", ""),
                400,
                PeerError::BadUpgrade(UpgradeFault::MissingHost),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n")
                    .replace("Version: 13", "Version: 8"),
                400,
                PeerError::BadUpgrade(UpgradeFault::BadVersion),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n").replace(KEY, "short"),
                400,
                PeerError::BadUpgrade(UpgradeFault::BadKey),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n")
                    .replace("HTTP/1.1", "HTTP/1.0"),
                400,
                PeerError::BadUpgrade(UpgradeFault::NotHttp11),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n").replace("GET", "POST"),
                400,
                PeerError::BadUpgrade(UpgradeFault::NotGet),
            ),
            (
                req("Sec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n")
                    .replace("Upgrade: websocket", "Upgrade: h2c"),
                400,
                PeerError::BadUpgrade(UpgradeFault::NotUpgrade),
            ),
            (
                "GARBAGE\0\r\n\r\n".to_string(),
                400,
                PeerError::BadUpgrade(UpgradeFault::Malformed),
            ),
        ];
        for (r, status, error) in cases {
            match server_request(r.as_bytes(), "/p", ProtocolKind::Rep0) {
                Request::Refuse {
                    status: s,
                    error: e,
                    response,
                } => {
                    assert_eq!((s, e), (status, error), "{r}");
                    assert!(response.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
                }
                other => panic!("{r}: {other:?}"),
            }
        }
        let long = format!("GET /p HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            server_request(long.as_bytes(), "/p", ProtocolKind::Rep0),
            Request::Refuse {
                error: PeerError::BadUpgrade(UpgradeFault::TooLong),
                ..
            }
        ));
    }

    #[test]
    fn client_request_names_the_peer_and_the_host() {
        let r =
            String::from_utf8(client_request("[::1]:80", "/x", ProtocolKind::Sub0, KEY)).unwrap();
        assert!(r.starts_with("GET /x HTTP/1.1\r\n"));
        assert!(r.contains("\r\nHost: [::1]:80\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Protocol: pub.sp.nanomsg.org\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        // The listener of the right pattern takes it.
        assert!(matches!(
            server_request(r.as_bytes(), "/x", ProtocolKind::Pub0),
            Request::Accept { .. }
        ));
        assert_eq!(new_key().len(), 24);
    }

    #[test]
    fn explicit_subprotocol_request_and_answer() {
        let r = String::from_utf8(client_request_with(
            "127.0.0.1:7452",
            "/sub?topic=a%2Fb&from=3",
            "pinion.v1",
            KEY,
        ))
        .unwrap();
        assert!(
            r.starts_with("GET /sub?topic=a%2Fb&from=3 HTTP/1.1\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nHost: 127.0.0.1:7452\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Protocol: pinion.v1\r\n"));
        let answer = |proto: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{proto}\r\n"
            )
        };
        let ok = answer("Sec-WebSocket-Protocol: pinion.v1\r\n");
        assert_eq!(
            client_response_with(ok.as_bytes(), KEY, "pinion.v1"),
            Ok(Some(ok.len()))
        );
        assert_eq!(
            client_response_with(&ok.as_bytes()[..20], KEY, "pinion.v1"),
            Ok(None)
        );
        for bad in ["", "Sec-WebSocket-Protocol: pinion.v2\r\n"] {
            assert_eq!(
                client_response_with(answer(bad).as_bytes(), KEY, "pinion.v1"),
                Err(PeerError::BadUpgrade(UpgradeFault::NoSubprotocol))
            );
        }
        assert_eq!(
            client_response_with(b"HTTP/1.1 421 Misdirected\r\n\r\n", KEY, "pinion.v1"),
            Err(PeerError::UpgradeRefused(421))
        );
    }

    #[test]
    fn client_refusals() {
        let ok = |proto: &str, accept: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n"
            )
        };
        let good = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(
            client_response(b"HTTP/1.1 404 Not Found\r\n\r\n", KEY, ProtocolKind::Req0),
            Err(PeerError::UpgradeRefused(404))
        );
        assert_eq!(
            client_response(b"HTTP/1.1 40", KEY, ProtocolKind::Req0),
            Ok(None)
        );
        assert_eq!(
            client_response(
                ok("rep.sp.nanomsg.org", "x").as_bytes(),
                KEY,
                ProtocolKind::Req0
            ),
            Err(PeerError::BadUpgrade(UpgradeFault::BadAccept))
        );
        assert_eq!(
            client_response(
                ok("pub.sp.nanomsg.org", good).as_bytes(),
                KEY,
                ProtocolKind::Req0
            ),
            Err(PeerError::WrongProtocol(0x20))
        );
        assert_eq!(
            client_response(ok("", good).as_bytes(), KEY, ProtocolKind::Req0),
            Err(PeerError::BadUpgrade(UpgradeFault::NoSubprotocol))
        );
    }
}
