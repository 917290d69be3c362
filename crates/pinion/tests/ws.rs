//! `ws://`: pinion ↔ pinion for every pattern family, and the wire checked
//! byte by byte with hand-written WebSocket peers on raw TCP sockets (the
//! upgrade request pinion sends, HTTP 400/404 refusals, close codes 1002,
//! 1003 and 1009, ping/pong, the closing handshake, fragmentation both
//! ways).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::{Error, Options, PeerError, Protocol, UpgradeFault};

const T: Duration = Duration::from_secs(10);

fn recv(s: &Socket, what: &str) -> Vec<u8> {
    match s.recv_timeout(Some(T)) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("recv {what}: {e:?}; stats {:?}", s.stats()),
    }
}

fn listen(s: &Socket, path: &str) -> String {
    let ep = s
        .listen(&format!("ws://127.0.0.1:0{path}"))
        .expect("ws listen");
    assert!(ep.port().unwrap() > 0);
    ep.url().to_string()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn big(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------
// pinion ↔ pinion
// ---------------------------------------------------------------------------

#[test]
fn req_rep_both_directions_with_large_messages() {
    for rep_listens in [true, false] {
        let rep = Socket::new(Protocol::Rep0).unwrap();
        let req = Socket::new(Protocol::Req0).unwrap();
        if rep_listens {
            let url = listen(&rep, "/rr");
            req.dial(&url).unwrap();
        } else {
            let url = listen(&req, "/rr");
            rep.dial(&url).unwrap();
        }
        for (i, len) in [0usize, 1, 125, 126, 65535, 65536, 200_000, 1_000_000]
            .into_iter()
            .enumerate()
        {
            let q = big(len, i as u8);
            req.send(q.clone()).unwrap();
            assert!(recv(&rep, "request") == q, "request {len}");
            let r = big(len / 2 + 3, i as u8 + 1);
            rep.send(r.clone()).unwrap();
            assert!(recv(&req, "reply") == r, "reply {len}");
        }
        for s in [&rep, &req] {
            let st = s.stats();
            assert_eq!((st.malformed, st.too_large, st.io_errors), (0, 0, 0));
        }
    }
}

#[test]
fn push_pull_pipeline_in_order() {
    let pull = Socket::new(Protocol::Pull0).unwrap();
    let url = listen(&pull, "/");
    let push = Socket::new(Protocol::Push0).unwrap();
    push.dial(&url).unwrap();
    let sender = thread::spawn(move || {
        for i in 0..5000u32 {
            push.send(i.to_be_bytes().to_vec()).unwrap();
        }
        push
    });
    for i in 0..5000u32 {
        assert_eq!(recv(&pull, "push")[..], i.to_be_bytes());
    }
    sender.join().unwrap();
}

#[test]
fn pair_v0_and_v1() {
    for proto in [Protocol::Pair0, Protocol::Pair1] {
        let a = Socket::new(proto).unwrap();
        let url = listen(&a, "/pair");
        let b = Socket::new(proto).unwrap();
        b.dial(&url).unwrap();
        b.send("x").unwrap();
        assert_eq!(recv(&a, "pair"), b"x");
        a.send(big(300_000, 3)).unwrap();
        assert_eq!(recv(&b, "pair"), big(300_000, 3));
    }
    // PAIR v0 and v1 do not talk: the listener refuses the upgrade.
    let a = Socket::new(Protocol::Pair0).unwrap();
    let url = listen(&a, "/pair");
    let b = Socket::new(Protocol::Pair1).unwrap();
    match b.dial(&url) {
        Err(Error::Peer(PeerError::UpgradeRefused(400))) => {}
        other => panic!("pair1 dialing pair0: {other:?}"),
    }
    wait_until("the refusal counted", || a.stats().rejected_protocol == 1);
}

#[test]
fn pub_sub_filters() {
    let publ = Socket::new(Protocol::Pub0).unwrap();
    let url = listen(&publ, "/ps");
    let sub = Socket::new(Protocol::Sub0).unwrap();
    sub.subscribe("a/").unwrap();
    sub.dial(&url).unwrap();
    wait_until("the pub's pipe", || publ.stats().pipes_added == 1);
    for m in ["b/no", "a/yes", "a", "a/two"] {
        publ.send(m).unwrap();
    }
    assert_eq!(recv(&sub, "pub"), b"a/yes");
    assert_eq!(recv(&sub, "pub"), b"a/two");
}

#[test]
fn surveyor_respondent() {
    let surveyor = Socket::new(Protocol::Surveyor0).unwrap();
    let url = listen(&surveyor, "/survey");
    let resp: Vec<Socket> = (0..2)
        .map(|_| {
            let r = Socket::new(Protocol::Respondent0).unwrap();
            r.dial(&url).unwrap();
            r
        })
        .collect();
    wait_until("both respondents", || surveyor.stats().pipes_added == 2);
    surveyor.send("q?").unwrap();
    for (k, r) in resp.iter().enumerate() {
        assert_eq!(recv(r, "survey"), b"q?");
        r.send(format!("a{k}")).unwrap();
    }
    let mut got = vec![recv(&surveyor, "answer"), recv(&surveyor, "answer")];
    got.sort();
    assert_eq!(got, vec![b"a0".to_vec(), b"a1".to_vec()]);
}

#[test]
fn bus_mesh_of_three() {
    let hub = Socket::new(Protocol::Bus0).unwrap();
    let url = listen(&hub, "/bus");
    let leaves: Vec<Socket> = (0..2)
        .map(|_| {
            let s = Socket::new(Protocol::Bus0).unwrap();
            s.dial(&url).unwrap();
            s
        })
        .collect();
    wait_until("two bus pipes", || hub.stats().pipes_added == 2);
    hub.send("all").unwrap();
    for l in &leaves {
        assert_eq!(recv(l, "bus"), b"all");
    }
    leaves[0].send("from0").unwrap();
    assert_eq!(recv(&hub, "bus"), b"from0");
    // One hop: leaf 1 does not get leaf 0's message.
    assert!(leaves[1]
        .recv_timeout(Some(Duration::from_millis(200)))
        .is_err());
}

#[test]
fn wrong_path_wrong_pattern_and_nothing_listening() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let url = listen(&rep, "/right");
    let req = Socket::new(Protocol::Req0).unwrap();
    match req.dial(&url.replace("/right", "/wrong")) {
        Err(Error::Peer(PeerError::UpgradeRefused(404))) => {}
        other => panic!("wrong path: {other:?}"),
    }
    let sub = Socket::new(Protocol::Sub0).unwrap();
    match sub.dial(&url) {
        Err(Error::Peer(PeerError::UpgradeRefused(400))) => {}
        other => panic!("wrong pattern: {other:?}"),
    }
    wait_until("refusals counted", || {
        let st = rep.stats();
        st.rejected_header == 1 && st.rejected_protocol == 1
    });
    assert_eq!(rep.stats().pipes_added, 0);
    // The listener still works.
    req.dial(&url).unwrap();
    req.send("ok?").unwrap();
    assert_eq!(recv(&rep, "after refusals"), b"ok?");
}

#[test]
fn dialer_reconnects_after_the_listener_returns() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/again");
    let req = Socket::new(Protocol::Req0).unwrap();
    req.dial_background(&url).unwrap();
    let rep = Socket::new(Protocol::Rep0).unwrap();
    rep.listen(&url).unwrap();
    req.send("late").unwrap();
    assert_eq!(recv(&rep, "after reconnect"), b"late");
    rep.send("hi").unwrap();
    assert_eq!(recv(&req, "reply"), b"hi");
}

// ---------------------------------------------------------------------------
// A hand-written WebSocket client
// ---------------------------------------------------------------------------

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn port_of(url: &str) -> u16 {
    pinion::Url::parse(url).unwrap().port().unwrap()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads an HTTP head (to the blank line), byte by byte so that nothing
/// after it is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut v = Vec::new();
    let mut b = [0u8];
    while !v.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => v.push(b[0]),
            other => panic!(
                "reading HTTP head: {other:?} after {:?}",
                String::from_utf8_lossy(&v)
            ),
        }
    }
    String::from_utf8(v).unwrap()
}

fn request(path: &str, host: Option<&str>, proto: Option<&str>) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\n");
    if let Some(h) = host {
        r += &format!("Host: {h}\r\n");
    }
    r += &format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = proto {
        r += &format!("Sec-WebSocket-Protocol: {p}\r\n");
    }
    r + "\r\n"
}

/// Sends an upgrade request; returns the stream and the answer's head.
fn upgrade(port: u16, path: &str, proto: Option<&str>) -> (TcpStream, String) {
    let mut s = connect(port);
    let host = format!("127.0.0.1:{port}");
    s.write_all(request(path, Some(&host), proto).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    (s, head)
}

fn upgraded(port: u16, path: &str, proto: &str) -> TcpStream {
    let (s, head) = upgrade(port, path, Some(proto));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nSec-WebSocket-Protocol: {proto}\r\n")),
        "{head}"
    );
    s
}

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

const M: Option<[u8; 4]> = Some([0xa1, 0xb2, 0xc3, 0xd4]);

/// Reads one frame from the server: (fin, opcode, payload); fails on a
/// masked one.
fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x0f, p)
}

/// Expects a close frame with `code`, then the end of the stream.
fn expect_close(s: &mut TcpStream, code: u16) {
    let (fin, op, p) = read_frame(s);
    assert!(fin);
    assert_eq!(op, 8, "expected a close frame, got opcode {op} ({p:02x?})");
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), code);
    // Our side of the closing handshake; then the server closes.
    let _ = s.write_all(&frame(8, true, &p[..2], M));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the close frame: {rest:02x?}");
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------
// The listener, checked with the raw client
// ---------------------------------------------------------------------------

#[test]
fn raw_client_request_reply_no_sp_header_and_nng_frame_sizes() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let url = listen(&rep, "/raw");
    let mut s = upgraded(port_of(&url), "/raw", "rep.sp.nanomsg.org");
    // Nothing follows the 101 (no 8-byte SP header).
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(s.read(&mut b).is_err(), "bytes after 101: {b:?}");
    s.set_read_timeout(Some(T)).unwrap();
    // One binary frame: request id + body.
    s.write_all(&frame(2, true, b"\x80\x00\x00\x09wsreq", M))
        .unwrap();
    assert_eq!(recv(&rep, "raw request"), b"wsreq");
    rep.send("wsrep").unwrap();
    assert_eq!(
        read_frame(&mut s),
        (true, 2, b"\x80\x00\x00\x09wsrep".to_vec())
    );
    // A request in three fragments, with a ping between them.
    s.write_all(&frame(2, false, b"\x80\x00\x00\x0a", M))
        .unwrap();
    s.write_all(&frame(0, false, b"frag", M)).unwrap();
    s.write_all(&frame(9, true, b"png", M)).unwrap();
    s.write_all(&frame(0, true, b"mented", M)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 10, b"png".to_vec()), "pong");
    assert_eq!(recv(&rep, "fragmented"), b"fragmented");
    // A 200,000-byte reply (+4 bytes of id) comes as 64 KiB frames, as NNG
    // sends it: 65536 + 65536 + 65536 + 3396.
    let body = big(200_000, 9);
    rep.send(body.clone()).unwrap();
    let mut sizes = Vec::new();
    let mut payload = Vec::new();
    loop {
        let (fin, op, p) = read_frame(&mut s);
        assert_eq!(op, if sizes.is_empty() { 2 } else { 0 });
        sizes.push(p.len());
        payload.extend(p);
        if fin {
            break;
        }
    }
    assert_eq!(sizes, vec![65536, 65536, 65536, 3396]);
    assert_eq!(&payload[..4], b"\x80\x00\x00\x0a");
    assert!(payload[4..] == body[..]);
    // Closing handshake started by the client: echoed, then EOF.
    s.write_all(&frame(8, true, &1000u16.to_be_bytes(), M))
        .unwrap();
    let (_, op, p) = read_frame(&mut s);
    assert_eq!((op, &p[..]), (8, &1000u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    wait_until("the pipe gone", || rep.stats().pipes_removed == 1);
    let st = rep.stats();
    assert_eq!((st.malformed, st.io_errors), (0, 0), "{st:?}");
}

#[test]
fn refusals_400_and_404() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let url = listen(&rep, "/p");
    let port = port_of(&url);
    let host = format!("127.0.0.1:{port}");
    let cases: Vec<(String, u16)> = vec![
        // No subprotocol, the client's own name, an unknown one.
        (request("/p", Some(&host), None), 400),
        (request("/p", Some(&host), Some("req.sp.nanomsg.org")), 400),
        (request("/p", Some(&host), Some("chat")), 400),
        // Wrong path (with the right subprotocol).
        (request("/q", Some(&host), Some("rep.sp.nanomsg.org")), 404),
        (request("/", Some(&host), Some("rep.sp.nanomsg.org")), 404),
        // No Host.
        (request("/p", None, Some("rep.sp.nanomsg.org")), 400),
        // Not a WebSocket request at all.
        (format!("GET /p HTTP/1.1\r\nHost: {host}\r\n\r\n"), 400),
        ("NONSENSE\r\n\r\n".to_string(), 400),
    ];
    for (req, want) in &cases {
        let mut s = connect(port);
        s.write_all(req.as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert_eq!(status(&head), *want, "{req}\n→ {head}");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    wait_until("refusals counted", || {
        let st = rep.stats();
        st.rejected_header + st.rejected_protocol == cases.len() as u64
    });
    let st = rep.stats();
    assert_eq!(st.rejected_protocol, 1, "{st:?}");
    assert_eq!(st.pipes_added, 0, "{st:?}");
}

/// `recv_max_size` of 1 KiB on the listener.
fn small_rep() -> (Socket, u16) {
    let rep = Socket::with_options(
        Protocol::Rep0,
        Options {
            recv_max_size: 1024,
            ..Options::default()
        },
    )
    .unwrap();
    let url = listen(&rep, "/c");
    (rep, port_of(&url))
}

#[test]
fn text_frame_is_closed_with_1003() {
    let (rep, port) = small_rep();
    let mut s = upgraded(port, "/c", "rep.sp.nanomsg.org");
    s.write_all(&frame(1, true, b"\x80\x00\x00\x01text", M))
        .unwrap();
    expect_close(&mut s, 1003);
    wait_until("counted", || rep.stats().malformed == 1);
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let (rep, port) = small_rep();
    let mut s = upgraded(port, "/c", "rep.sp.nanomsg.org");
    s.write_all(&frame(2, true, b"\x80\x00\x00\x01bin", None))
        .unwrap();
    expect_close(&mut s, 1002);
    wait_until("counted", || rep.stats().malformed == 1);
}

#[test]
fn over_size_is_closed_with_1009_before_the_payload() {
    let (rep, port) = small_rep();
    // A header announcing 4096 bytes, no payload sent: the close comes
    // anyway (decided from the header).
    let mut s = upgraded(port, "/c", "rep.sp.nanomsg.org");
    let f = frame(2, true, &[0u8; 4096], M);
    s.write_all(&f[..8]).unwrap();
    expect_close(&mut s, 1009);
    // Fragments adding up over the limit: 600 + 600.
    let mut s = upgraded(port, "/c", "rep.sp.nanomsg.org");
    s.write_all(&frame(2, false, &[0x80; 600], M)).unwrap();
    s.write_all(&frame(0, true, &[0x80; 600], M)).unwrap();
    expect_close(&mut s, 1009);
    wait_until("counted", || rep.stats().too_large == 2);
    // Exactly the limit is delivered.
    let mut s = upgraded(port, "/c", "rep.sp.nanomsg.org");
    let mut m = b"\x80\x00\x00\x05".to_vec();
    m.resize(1024, b'z');
    s.write_all(&frame(2, true, &m, M)).unwrap();
    assert_eq!(recv(&rep, "1 KiB").len(), 1020);
}

#[test]
fn a_bad_peer_closes_only_its_own_connection() {
    let (rep, port) = small_rep();
    let mut good = upgraded(port, "/c", "rep.sp.nanomsg.org");
    let mut bad = upgraded(port, "/c", "rep.sp.nanomsg.org");
    bad.write_all(&frame(2, true, b"x", None)).unwrap();
    expect_close(&mut bad, 1002);
    // Garbage bytes that are no frame at all (reserved opcode).
    let mut bad2 = upgraded(port, "/c", "rep.sp.nanomsg.org");
    bad2.write_all(&[0x83, 0x80, 0, 0, 0, 0]).unwrap();
    expect_close(&mut bad2, 1002);
    good.write_all(&frame(2, true, b"\x80\x00\x00\x07alive", M))
        .unwrap();
    assert_eq!(recv(&rep, "good"), b"alive");
    rep.send("yes").unwrap();
    assert_eq!(
        read_frame(&mut good),
        (true, 2, b"\x80\x00\x00\x07yes".to_vec())
    );
}

#[test]
fn upgrade_timeout_and_slow_headers() {
    let rep = Socket::with_options(
        Protocol::Rep0,
        Options {
            handshake_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .unwrap();
    let url = listen(&rep, "/t");
    let port = port_of(&url);
    // A request trickling in, byte by byte, still within the timeout.
    let mut s = connect(port);
    let req = request(
        "/t",
        Some(&format!("127.0.0.1:{port}")),
        Some("rep.sp.nanomsg.org"),
    );
    for b in req.as_bytes() {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    // Nothing at all: closed after the timeout.
    let mut idle = connect(port);
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty());
    wait_until("timeout counted", || rep.stats().handshake_timeouts == 1);
}

// ---------------------------------------------------------------------------
// The dialer, checked with a raw server
// ---------------------------------------------------------------------------

/// Accepts one connection and returns pinion's request head.
fn serve_one(l: &TcpListener) -> (TcpStream, String) {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let head = read_head(&mut s);
    (s, head)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn answer_101(s: &mut TcpStream, head: &str, proto: &str) {
    let key = header(head, "sec-websocket-key").unwrap();
    let accept = tungstenite_accept(key);
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n"
    )
    .unwrap();
}

/// SHA-1 + base64 of key + GUID, computed here independently of pinion
/// (tiny SHA-1, so the test does not share pinion's dependency).
fn tungstenite_accept(key: &str) -> String {
    let mut m = key.as_bytes().to_vec();
    m.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let d = sha1(&m);
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in d.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[test]
fn dialer_request_host_subprotocol_and_masked_frames() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    for (host, proto, peer) in [
        ("127.0.0.1", Protocol::Req0, "rep"),
        ("localhost", Protocol::Sub0, "pub"),
        ("127.0.0.1", Protocol::Pair1, "pair1"),
        ("127.0.0.1", Protocol::Surveyor0, "respondent"),
    ] {
        let sock = Socket::new(proto).unwrap();
        let url = format!("ws://{host}:{port}/some/path");
        let dialer = {
            let url = url.clone();
            thread::spawn(move || {
                sock.dial(&url).unwrap();
                sock
            })
        };
        let (mut s, head) = serve_one(&l);
        assert!(head.starts_with("GET /some/path HTTP/1.1\r\n"), "{head}");
        assert_eq!(
            header(&head, "host"),
            Some(&*format!("{host}:{port}")),
            "{head}"
        );
        assert_eq!(
            header(&head, "sec-websocket-protocol"),
            Some(&*format!("{peer}.sp.nanomsg.org")),
            "{head}"
        );
        assert_eq!(header(&head, "sec-websocket-version"), Some("13"));
        assert_eq!(header(&head, "upgrade"), Some("websocket"));
        answer_101(&mut s, &head, &format!("{peer}.sp.nanomsg.org"));
        let sock = dialer.join().unwrap();
        if proto == Protocol::Req0 {
            sock.send("hello").unwrap();
            // A masked binary frame carrying [request id][body].
            let mut h = [0u8; 2];
            s.read_exact(&mut h).unwrap();
            assert_eq!(h[0], 0x82);
            assert_eq!(h[1], 0x80 | 9, "masked, 9 bytes");
            let mut k = [0u8; 4];
            s.read_exact(&mut k).unwrap();
            let mut p = [0u8; 9];
            s.read_exact(&mut p).unwrap();
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
            assert_eq!(&p[4..], b"hello");
            assert!(p[0] & 0x80 != 0);
            // Reply unmasked, as a server must.
            let mut reply = p[..4].to_vec();
            reply.extend_from_slice(b"world");
            s.write_all(&frame(2, true, &reply, None)).unwrap();
            assert_eq!(recv(&sock, "reply"), b"world");
            // A masked server frame is a protocol error: close 1002, masked.
            s.write_all(&frame(2, true, &reply, M)).unwrap();
            let mut h = [0u8; 2];
            s.read_exact(&mut h).unwrap();
            assert_eq!((h[0], h[1]), (0x88, 0x80 | 2), "a masked close frame");
            let mut kp = [0u8; 6];
            s.read_exact(&mut kp).unwrap();
            let code = u16::from_be_bytes([kp[4] ^ kp[0], kp[5] ^ kp[1]]);
            assert_eq!(code, 1002);
            wait_until("counted", || sock.stats().malformed == 1);
        }
        drop(s);
    }
}

#[test]
fn dialer_refuses_a_bad_answer() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/");
    for (answer, want) in [
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: wrong\r\nSec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n\r\n",
            PeerError::BadUpgrade(UpgradeFault::BadAccept),
        ),
        (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            PeerError::UpgradeRefused(404),
        ),
    ] {
        let sock = Socket::new(Protocol::Req0).unwrap();
        let u = url.clone();
        let dialer = thread::spawn(move || sock.dial(&u).map(|_| ()));
        let (mut s, _) = serve_one(&l);
        s.write_all(answer.as_bytes()).unwrap();
        match dialer.join().unwrap() {
            Err(Error::Peer(e)) => assert_eq!(e, want),
            other => panic!("{answer}: {other:?}"),
        }
    }
}

#[test]
fn queued_sends_survive_close() {
    let pull = Socket::new(Protocol::Pull0).unwrap();
    let url = listen(&pull, "/linger");
    let push = Socket::new(Protocol::Push0).unwrap();
    push.dial(&url).unwrap();
    for i in 0..100u32 {
        push.send(i.to_be_bytes().to_vec()).unwrap();
    }
    drop(push);
    for i in 0..100u32 {
        assert_eq!(recv(&pull, "lingered")[..], i.to_be_bytes());
    }
}

#[test]
fn pause_pipe_stops_reading_that_connection_only() {
    let rep = Socket::with_options(
        Protocol::Rep0,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap();
    let url = listen(&rep, "/pause");
    let port = port_of(&url);
    let mut a = upgraded(port, "/pause", "rep.sp.nanomsg.org");
    let mut b = upgraded(port, "/pause", "rep.sp.nanomsg.org");
    a.write_all(&frame(2, true, b"\x80\x00\x00\x01a1", M))
        .unwrap();
    let m = rep.recv_msg().unwrap();
    assert_eq!(&m.body[..], b"a1");
    let pipe_a = m.header.first_word().unwrap();
    rep.as_async().pause_pipe(pipe_a, true);
    // One message may already be on its way (read before the pause took
    // effect); after that, nothing from a until it resumes.
    a.write_all(&frame(2, true, b"\x80\x00\x00\x02a2", M))
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let mut early = Vec::new();
    while let Ok(m) = rep.recv_timeout(Some(Duration::from_millis(50))) {
        early.push(m.to_vec());
    }
    assert!(early.len() <= 1, "{early:?}");
    a.write_all(&frame(2, true, b"\x80\x00\x00\x03a3", M))
        .unwrap();
    b.write_all(&frame(2, true, b"\x80\x00\x00\x04b1", M))
        .unwrap();
    assert_eq!(recv(&rep, "b while a is paused"), b"b1");
    assert!(
        rep.recv_timeout(Some(Duration::from_millis(300))).is_err(),
        "a paused pipe delivered"
    );
    rep.as_async().pause_pipe(pipe_a, false);
    let mut rest = Vec::new();
    if early.is_empty() {
        rest.push(recv(&rep, "a2 after resume"));
    }
    rest.push(recv(&rep, "a3 after resume"));
    assert_eq!(rest.last().unwrap(), b"a3");
    let _ = b.flush();
}

#[test]
fn closing_the_socket_sends_going_away_and_ends_on_the_answer() {
    let pull = Socket::new(Protocol::Pull0).unwrap();
    let url = listen(&pull, "/bye");
    let mut s = upgraded(port_of(&url), "/bye", "pull.sp.nanomsg.org");
    s.write_all(&frame(2, true, b"one", M)).unwrap();
    assert_eq!(recv(&pull, "before close"), b"one");
    pull.close();
    let (_, op, p) = read_frame(&mut s);
    assert_eq!((op, &p[..]), (8, &1001u16.to_be_bytes()[..]));
    // Our answer ends the closing handshake: the server closes the TCP
    // connection at once rather than after its linger timeout.
    let t = Instant::now();
    s.write_all(&frame(8, true, &1001u16.to_be_bytes(), M))
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn dialer_takes_frames_that_arrive_with_the_101() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sub = Socket::new(Protocol::Sub0).unwrap();
    sub.subscribe("").unwrap();
    let url = format!("ws://127.0.0.1:{port}/");
    let dialer = thread::spawn(move || {
        sub.dial(&url).unwrap();
        sub
    });
    let (mut s, head) = serve_one(&l);
    assert_eq!(
        header(&head, "sec-websocket-protocol"),
        Some("pub.sp.nanomsg.org")
    );
    let key = header(&head, "sec-websocket-key").unwrap();
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: pub.sp.nanomsg.org\r\n\r\n",
        tungstenite_accept(key)
    )
    .into_bytes();
    // Two messages in the same write as the 101, the second fragmented.
    answer.extend(frame(2, true, b"first", None));
    answer.extend(frame(2, false, b"sec", None));
    answer.extend(frame(0, true, b"ond", None));
    s.write_all(&answer).unwrap();
    let sub = dialer.join().unwrap();
    assert_eq!(recv(&sub, "with the 101"), b"first");
    assert_eq!(recv(&sub, "fragmented"), b"second");
    // A ping from the server gets a masked pong.
    s.write_all(&frame(9, true, b"pp", None)).unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!((h[0], h[1]), (0x8a, 0x80 | 2));
    let mut kp = [0u8; 6];
    s.read_exact(&mut kp).unwrap();
    assert_eq!([kp[4] ^ kp[0], kp[5] ^ kp[1]], *b"pp");
}
