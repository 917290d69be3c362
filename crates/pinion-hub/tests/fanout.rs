//! Fan-out end to end, in process: publishers on the hub's REP port,
//! subscribers over SP/TCP (a pinion SUB socket) and over WebSocket (a
//! hand-written client reading raw frames, so nothing is dropped or hidden
//! on the client side).

mod common;

use common::base_config;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion::{Options, Protocol, Socket};
use pinion_hub::{FanoutSend, Hub, HubConfig};
use pinion_proto::{Delivery, Message as _};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-fanout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: &std::path::Path) -> HubConfig {
    HubConfig {
        data_dir: dir.to_path_buf(),
        listen: vec!["tcp://127.0.0.1:0".into()],
        subscribe: vec!["tcp://127.0.0.1:0".into()],
        http: Some("127.0.0.1:0".into()),
        threads: 2,
        ..base_config()
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// Publishes `n` messages (topic chosen per index), returns their offsets.
fn publish(url: &str, id: u8, n: u32, topic: impl Fn(u32) -> String) -> Vec<u64> {
    publish_with(url, id, n, 0, None, topic)
}

/// [`publish`] with `pad` extra payload bytes, pausing `pace` after every
/// 50 messages.
fn publish_with(
    url: &str,
    id: u8,
    n: u32,
    pad: usize,
    pace: Option<Duration>,
    topic: impl Fn(u32) -> String,
) -> Vec<u64> {
    block(async {
        let mut p = Publisher::connect(
            url,
            PublisherOptions {
                client_id: [id; 16],
                window: 128,
                ..PublisherOptions::default()
            },
        )
        .await
        .unwrap();
        for i in 0..n {
            let mut payload = i.to_be_bytes().to_vec();
            payload.resize(4 + pad, b'.');
            p.send(&topic(i), payload).await.unwrap();
            if let Some(d) = pace {
                if i % 50 == 49 {
                    std::thread::sleep(d);
                }
            }
        }
        p.flush()
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Outcome::Ack { offset, .. } => offset,
                other => panic!("not acked: {other:?}"),
            })
            .collect()
    })
}

/// Splits a delivered body: topic, then the Delivery.
fn split(body: &[u8]) -> (String, Delivery) {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .expect("topic ends with NUL");
    let topic = String::from_utf8(body[..nul].to_vec()).unwrap();
    (
        topic,
        Delivery::decode(&body[nul + 1..]).expect("a Delivery"),
    )
}

/// What a raw WebSocket client reads.
#[derive(Debug)]
enum Frame {
    Binary(Vec<u8>),
    Text(String),
    Close(u16, String),
}

/// A minimal WebSocket client: blocking, reads server frames as they are.
struct Ws {
    s: TcpStream,
    last: Option<u64>,
}

impl Ws {
    fn connect(addr: &str, path: &str, rcvbuf: Option<usize>) -> Ws {
        Ws::connect_with(addr, path, rcvbuf, None)
    }

    fn connect_with(addr: &str, path: &str, rcvbuf: Option<usize>, protocol: Option<&str>) -> Ws {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(b) = rcvbuf {
            sock.set_recv_buffer_size(b).unwrap();
        }
        let sa: std::net::SocketAddr = addr.parse().unwrap();
        sock.connect(&sa.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default()
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        if let Some(p) = protocol {
            assert!(
                head.contains(&format!("Sec-WebSocket-Protocol: {p}\r\n")),
                "{head}"
            );
        }
        Ws { s, last: None }
    }

    fn next(&mut self) -> Frame {
        let mut h = [0u8; 2];
        if let Err(e) = self.s.read_exact(&mut h) {
            panic!(
                "no frame within 10 s ({e}); last offset read: {:?}",
                self.last
            );
        }
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                self.s.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        match h[0] {
            0x82 => Frame::Binary(p),
            0x81 => Frame::Text(String::from_utf8(p).unwrap()),
            0x88 => {
                let code = u16::from_be_bytes([p[0], p[1]]);
                Frame::Close(code, String::from_utf8_lossy(&p[2..]).into_owned())
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    }

    /// Reads deliveries until `last` (inclusive) has arrived; returns their
    /// offsets and topics.
    fn read_through(&mut self, last: u64) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        loop {
            match self.next() {
                Frame::Binary(b) => {
                    let (t, d) = split(&b);
                    let o = d.offset.unwrap();
                    self.last = Some(o);
                    got.push((o, t));
                    if o >= last {
                        return got;
                    }
                }
                Frame::Text(t) => panic!("unexpected text frame {t:?}"),
                Frame::Close(c, why) => panic!("closed {c}: {why} after {} messages", got.len()),
            }
        }
    }
}

#[test]
fn tcp_and_websocket_subscribers_get_durable_messages_in_order() {
    in_order(None);
}

/// The same through io_uring, and through writev, whatever
/// `PINION_FANOUT_SEND` says.
#[test]
fn tcp_and_websocket_subscribers_get_durable_messages_in_order_through_io_uring() {
    in_order(Some(FanoutSend::IoUring));
}

#[test]
fn tcp_and_websocket_subscribers_get_durable_messages_in_order_through_writev() {
    in_order(Some(FanoutSend::Writev));
}

fn in_order(send: Option<FanoutSend>) {
    let dir = temp_dir(&format!("basic-{send:?}"));
    let mut cfg = config(&dir);
    cfg.fanout_send = send.unwrap_or(cfg.fanout_send);
    let hub = Hub::start(cfg).unwrap();
    let url = hub.endpoints()[0].clone();
    let http = hub.http_addr().unwrap().to_string();
    // An SP SUB over TCP (any NNG SUB would do), every topic.
    let sub = Socket::with_options(
        Protocol::Sub0,
        Options {
            recv_buffer: 8192,
            ..Options::default()
        },
    )
    .unwrap();
    block(sub.subscribe(&b""[..])).unwrap();
    block(sub.dial(&hub.subscribe_endpoints()[0])).unwrap();
    // A WebSocket subscriber filtering on the prefix "even".
    let mut ws = Ws::connect(&http, "/sub?topic=even", None);
    // Both are registered before the first publish.
    let t = Instant::now();
    while hub.stats().subscribers_tcp + hub.stats().subscribers_ws < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "subscribers not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let offsets = publish(&url, 1, 400, |i| {
        if i % 2 == 0 {
            "even/x".into()
        } else {
            "odd".into()
        }
    });
    assert_eq!(offsets, (0..400).collect::<Vec<_>>());
    for i in 0..400u64 {
        let body = block(sub.recv_timeout(Some(Duration::from_secs(10)))).unwrap();
        let (topic, d) = split(&body);
        assert_eq!(d.offset, Some(i));
        assert_eq!(topic, if i % 2 == 0 { "even/x" } else { "odd" });
        assert_eq!(d.payload.as_deref(), Some(&(i as u32).to_be_bytes()[..]));
        assert_eq!(d.client_id.as_deref(), Some(&[1u8; 16][..]));
        assert_eq!(d.seq, Some(i + 1));
    }
    // pinion.js's subprotocol: a hello naming the first offset comes first.
    let mut hello = Ws::connect_with(&http, "/sub?from=10", None, Some("pinion.v1"));
    match hello.next() {
        Frame::Text(t) => assert_eq!(t, "{\"next\":10}"),
        other => panic!("expected the hello, got {other:?}"),
    }
    assert_eq!(hello.read_through(10), vec![(10, "even/x".to_string())]);
    let got = ws.read_through(398);
    let want: Vec<(u64, String)> = (0..400)
        .step_by(2)
        .map(|o| (o, "even/x".to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(hub.stats().delivered >= 600);
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_from_any_offset_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let dir = temp_dir("resume");
    let hub = Hub::start(config(&dir)).unwrap();
    let url = hub.endpoints()[0].clone();
    let http = hub.http_addr().unwrap().to_string();
    const PER: u32 = 3000;
    const PUBLISHERS: u8 = 4;
    let total = PER as u64 * PUBLISHERS as u64;
    let pubs: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            let url = url.clone();
            std::thread::spawn(move || {
                publish_with(&url, id + 1, PER, 0, Some(Duration::from_millis(4)), |i| {
                    format!("t{}", i % 3)
                })
            })
        })
        .collect();
    // Subscribers join while the publishers run, each from some offset at
    // or below the head (0 = the whole log), one from beyond it, one live.
    let mut subs = Vec::new();
    for k in 0..7u64 {
        // Subscriber k joins once the log holds k/9 of the messages, so the
        // last ones join while publishing goes on.
        let t = Instant::now();
        while hub.stats().head < total * k / 9 {
            assert!(t.elapsed() < Duration::from_secs(20), "publishing stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        let head = hub.stats().head;
        let from = match k {
            0 => Some(0),
            5 => Some(head + 50),
            6 => None,
            _ => Some(head * k / 5),
        };
        let path = match from {
            Some(f) => format!("/sub?from={f}"),
            None => "/sub".to_string(),
        };
        let http = http.clone();
        subs.push(std::thread::spawn(move || {
            eprintln!("subscriber {k}: {path} (head {head})");
            let mut ws = Ws::connect(&http, &path, None);
            (from, ws.read_through(total - 1))
        }));
    }
    for p in pubs {
        assert_eq!(p.join().unwrap().len(), PER as usize);
    }
    for s in subs {
        let (from, got) = s.join().unwrap();
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        let first = offsets[0];
        if let Some(f) = from {
            assert_eq!(first, f, "a resumed stream starts at its from");
        }
        let want: Vec<u64> = (first..total).collect();
        assert!(
            offsets == want,
            "from {from:?}: {} messages, expected {} contiguous from {first} (gap or duplicate)",
            offsets.len(),
            want.len()
        );
    }
    assert!(
        hub.stats().replayed > 0,
        "some subscribers read from the log"
    );
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_subscriber_is_disconnected_with_its_resume_offset_and_nobody_else_waits() {
    slow_one(None);
}

/// The same through io_uring, and through writev, whatever
/// `PINION_FANOUT_SEND` says: sockets that fill up (EAGAIN from the ring)
/// are still woken when they drain.
#[test]
fn a_slow_subscriber_is_disconnected_and_nobody_else_waits_through_io_uring() {
    slow_one(Some(FanoutSend::IoUring));
}

#[test]
fn a_slow_subscriber_is_disconnected_and_nobody_else_waits_through_writev() {
    slow_one(Some(FanoutSend::Writev));
}

fn slow_one(send: Option<FanoutSend>) {
    let dir = temp_dir(&format!("slow-{send:?}"));
    let base = config(&dir);
    let hub = Hub::start(HubConfig {
        max_queued_per_subscriber: 64 << 10,
        fanout_send: send.unwrap_or(base.fanout_send),
        ..base
    })
    .unwrap();
    let url = hub.endpoints()[0].clone();
    let http = hub.http_addr().unwrap().to_string();
    // One subscriber that does not read (and has a small receive buffer),
    // one that reads everything.
    let mut slow = Ws::connect(&http, "/sub", Some(4096));
    let fast_http = http.clone();
    const N: u32 = 40_000;
    let fast = std::thread::spawn(move || {
        let mut ws = Ws::connect(&fast_http, "/sub", None);
        ws.read_through(N as u64 - 1).len()
    });
    let t = Instant::now();
    while hub.stats().subscribers_ws < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Publishing is never held up by the slow subscriber: every message is
    // acked while it reads nothing. (Small payloads and a short pause every
    // 50 publishes: the fast subscriber is a test thread on a busy 2-core
    // machine and must not fall 64 KiB behind; the slow one reads nothing,
    // so the ~2 MB sent to it gets it cut at any rate.)
    let offsets = publish_with(&url, 7, N, 16, Some(Duration::from_millis(1)), |_| {
        "x".into()
    });
    assert_eq!(offsets.len(), N as usize);
    assert_eq!(
        fast.join().unwrap(),
        N as usize,
        "the fast subscriber got everything"
    );
    let t = Instant::now();
    while hub.stats().slow_disconnects == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "slow subscriber not cut: {:?}",
            hub.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Now it reads: whole frames up to some offset, then the close frame
    // naming the next one.
    let mut last = None;
    let (code, why) = loop {
        match slow.next() {
            Frame::Binary(b) => {
                let o = split(&b).1.offset.unwrap();
                if let Some(l) = last {
                    assert_eq!(o, l + 1, "no gap before the cut");
                }
                last = Some(o);
            }
            Frame::Close(c, why) => break (c, why),
            Frame::Text(t) => panic!("unexpected text frame {t:?}"),
        }
    };
    assert_eq!(code, pinion_hub::fanout::CLOSE_SLOW, "{why}");
    let resume: u64 = why
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume offset in {why:?}"));
    assert_eq!(resume, last.map_or(0, |l| l + 1), "{why}");
    assert!(resume < N as u64, "it was cut before the end");
    // Resuming from there gives the rest.
    let mut again = Ws::connect(&http, &format!("/sub?from={resume}"), None);
    let rest = again.read_through(N as u64 - 1);
    assert_eq!(rest.first().map(|r| r.0), Some(resume));
    assert_eq!(rest.len() as u64, N as u64 - resume);
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_routes_metrics_health_and_refusals() {
    let dir = temp_dir("http");
    let hub = Hub::start(config(&dir)).unwrap();
    let http = hub.http_addr().unwrap().to_string();
    publish(&hub.endpoints()[0], 2, 3, |_| "m".into());
    let get = |req: &str| -> String {
        let mut s = TcpStream::connect(&http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let m = get(&format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\n\r\n"));
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("\npinion_logged_total 3\n"), "{m}");
    let h = get(&format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n"));
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    assert!(get(&format!("GET /nope HTTP/1.1\r\nHost: {http}\r\n\r\n")).starts_with("HTTP/1.1 404"));
    assert!(get(&format!(
        "POST /metrics HTTP/1.1\r\nHost: {http}\r\nContent-Length: 0\r\n\r\n"
    ))
    .starts_with("HTTP/1.1 405"));
    // /sub without an upgrade, or with a bad query: 400.
    assert!(get(&format!("GET /sub HTTP/1.1\r\nHost: {http}\r\n\r\n")).starts_with("HTTP/1.1 400"));
    assert!(
        get(&format!("GET /sub?from=x HTTP/1.1\r\nHost: {http}\r\n\r\n"))
            .starts_with("HTTP/1.1 400")
    );
    // Garbage gets a 400 and closes only that connection.
    assert!(get("\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    for page in ["/", "/pinion.js", "/demo"] {
        let r = get(&format!("GET {page} HTTP/1.1\r\nHost: {http}\r\n\r\n"));
        assert!(r.starts_with("HTTP/1.1 200"), "{page}: {r}");
    }
    // The stats feed: a JSON text frame at once.
    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /stats HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"head\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("101 Switching Protocols"));
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn publish_over_websocket_is_sp_req_rep() {
    // /pub is the REP socket over ws://, so a pinion (or NNG) REQ over
    // WebSocket publishes like one over TCP.
    let dir = temp_dir("wspub");
    let hub = Hub::start(config(&dir)).unwrap();
    let http = hub.http_addr().unwrap().to_string();
    let offsets = publish(&format!("ws://{http}/pub"), 3, 50, |_| "w".into());
    assert_eq!(offsets, (0..50).collect::<Vec<_>>());
    // Retrying one is a duplicate, over either transport.
    let again = publish(&hub.endpoints()[0], 3, 1, |_| "w".into());
    assert_eq!(again, vec![0]);
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_the_replay_cannot_read_closes_with_4011_after_the_ones_before_it() {
    let dir = temp_dir("corrupt");
    let hub = Hub::start(config(&dir)).unwrap();
    let http = hub.http_addr().unwrap().to_string();
    publish(&hub.endpoints()[0], 4, 300, |_| "c".into());
    // Damage record 150 in place (its payload: the CRC no longer matches).
    let log = dir.join(pinion_hub::LOG_FILE);
    let mut reader = pinion_journal::Reader::open(&log).unwrap();
    reader.seek(150).unwrap();
    let rec = reader.next().unwrap().unwrap();
    assert_eq!(rec.offset, 150);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        let at = rec.byte_pos + u64::from(rec.byte_len) - 9;
        f.write_at(&[0xEE], at).unwrap();
    }
    let mut ws = Ws::connect(&http, "/sub?from=0", None);
    let mut got = Vec::new();
    let (code, why) = loop {
        match ws.next() {
            Frame::Binary(b) => got.push(split(&b).1.offset.unwrap()),
            Frame::Close(c, why) => break (c, why),
            Frame::Text(t) => panic!("unexpected text frame {t:?}"),
        }
    };
    assert_eq!(
        got,
        (0..150).collect::<Vec<_>>(),
        "everything before the damage, nothing after"
    );
    assert_eq!(code, pinion_hub::fanout::CLOSE_REPLAY_FAILED, "{why}");
    assert!(why.contains("offset 150"), "{why}");
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shutdown_tells_websocket_subscribers_going_away() {
    let dir = temp_dir("bye");
    let hub = Hub::start(config(&dir)).unwrap();
    let http = hub.http_addr().unwrap().to_string();
    let mut ws = Ws::connect(&http, "/sub", None);
    let t = Instant::now();
    while hub.stats().subscribers_ws < 1 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.shutdown();
    match ws.next() {
        Frame::Close(code, _) => assert_eq!(code, 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_fsync_policy_delivers_everything_in_order() {
    for (name, fsync) in [
        (
            "interval",
            pinion_hub::FsyncPolicy::Interval(Duration::from_millis(5)),
        ),
        ("never", pinion_hub::FsyncPolicy::Never),
    ] {
        let dir = temp_dir(name);
        let hub = Hub::start(HubConfig {
            fsync,
            ..config(&dir)
        })
        .unwrap();
        let http = hub.http_addr().unwrap().to_string();
        let mut ws = Ws::connect(&http, "/sub?from=0", None);
        let offsets = publish(&hub.endpoints()[0], 5, 500, |_| "f".into());
        let got: Vec<u64> = ws.read_through(499).into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, offsets, "{name}");
        hub.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Through the real hub: overlapping and repeated prefixes of one
/// subscriber deliver each record once; 300 subscribers on other topics
/// (half of them leaving mid-stream) get nothing of it and cost it
/// nothing; a subscriber that joins mid-stream with `from` gets the
/// records before and after its join, once each.
#[test]
fn overlapping_filters_deliver_once_among_many_subscribers_on_other_topics() {
    let dir = temp_dir("index");
    let hub = Hub::start(config(&dir)).unwrap();
    let url = hub.endpoints()[0].clone();
    let http = hub.http_addr().unwrap().to_string();
    let mut others: Vec<Ws> = (0..300)
        .map(|i| Ws::connect(&http, &format!("/sub?topic=other.{i}/"), None))
        .collect();
    let mut ws = Ws::connect(&http, "/sub?topic=a&topic=a/b&topic=a&topic=c/", None);
    let mut all = Ws::connect(&http, "/sub?topic=", None);
    let t = Instant::now();
    while hub.stats().subscribers_ws < 302 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "subscribers not seen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let topics = ["a/b/1", "a/x", "ab", "b", "c/1", "c", "a"];
    let topic = |i: u32| topics[i as usize % topics.len()].to_string();
    let first = publish(&url, 1, 140, topic);
    // Churn: half of the others leave, a late subscriber joins from 70.
    for o in others.drain(..150) {
        drop(o);
    }
    let mut late = Ws::connect(&http, "/sub?topic=c/&topic=c/1&from=70", None);
    let second = publish(&url, 2, 140, topic);
    let offsets: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(offsets, (0..280).collect::<Vec<_>>());
    let want = |pred: &dyn Fn(&str) -> bool, from: u64| -> Vec<(u64, String)> {
        (from..280)
            .map(|o| (o, topic((o % 140) as u32)))
            .filter(|(_, t)| pred(t))
            .collect()
    };
    let mine = want(&|t| t.starts_with('a') || t.starts_with("c/"), 0);
    assert_eq!(ws.read_through(mine.last().unwrap().0), mine);
    let everything = want(&|_| true, 0);
    assert_eq!(all.read_through(279), everything);
    let late_want = want(&|t| t.starts_with("c/"), 70);
    assert_eq!(late.read_through(late_want.last().unwrap().0), late_want);
    // Nothing more for anyone: the index sent the others nothing.
    for s in others.iter_mut().chain([&mut ws, &mut late]) {
        s.s.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(s.s.read(&mut b).is_err(), "an unexpected frame");
    }
    let t = Instant::now();
    while hub.stats().subscribers_ws != 153 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the leavers were not dropped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The timing tests of replays run one at a time (each measures a
/// catch-up against a baseline of its own).
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fills a hub's log with `n` records of 160 bytes each (topic `real`,
/// a 100-byte payload), from four publishers at once.
fn fill_log(url: &str, n: u32) {
    let pubs: Vec<_> = (0..4u8)
        .map(|id| {
            let url = url.to_string();
            std::thread::spawn(move || {
                publish_with(&url, 20 + id, n / 4, 96, None, |_| "real".into())
            })
        })
        .collect();
    let acked: usize = pubs.into_iter().map(|p| p.join().unwrap().len()).sum();
    assert_eq!(acked, (n / 4 * 4) as usize);
}

/// A subscriber's catch-up from `from` through `last`: how long from
/// connecting to its last record (which must all come, once, in order).
fn catch_up(http: &str, from: u64, last: u64) -> Duration {
    let t = Instant::now();
    let mut ws = Ws::connect(http, &format!("/sub?from={from}"), None);
    let got: Vec<u64> = ws.read_through(last).into_iter().map(|(o, _)| o).collect();
    let took = t.elapsed();
    assert_eq!(got, (from..=last).collect::<Vec<_>>());
    took
}

/// `n` WebSocket subscribers replaying the whole log for a topic that
/// matches nothing, once the hub has registered them (`others` besides).
fn hostile(hub: &Hub, http: &str, n: usize, others: u64) -> Vec<Ws> {
    let subs: Vec<Ws> = (0..n)
        .map(|_| Ws::connect(http, "/sub?topic=nomatch&from=0", None))
        .collect();
    wait_for(hub, "the hostile subscribers registered", |s| {
        s.subscribers_ws == others + n as u64
    });
    subs
}

fn wait_for(hub: &Hub, what: &str, done: impl Fn(&pinion_hub::StatsSnapshot) -> bool) {
    let t = Instant::now();
    loop {
        let s = hub.stats();
        if done(&s) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Through the real hub: 50 subscribers that asked for the whole log on a
/// topic that matches nothing, and left, cost a later subscriber's
/// catch-up nothing: their replays are cancelled without being read
/// (each counted once) and nothing is left queued. (Before, each one read
/// and checksummed the whole log, one after the other, and the catch-up
/// waited behind them all.)
#[test]
fn replays_of_subscribers_that_left_are_cancelled_unread() {
    let _serial = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("cancel");
    let hub = Hub::start(HubConfig {
        fsync: pinion_hub::FsyncPolicy::Never,
        ..config(&dir)
    })
    .unwrap();
    let http = hub.http_addr().unwrap().to_string();
    const N: u64 = 30_000;
    fill_log(&hub.endpoints()[0], N as u32);
    let mut base = Vec::new();
    let mut after = Vec::new();
    for _ in 1..=3u64 {
        base.push(catch_up(&http, N - 2000, N - 1));
        drop(hostile(&hub, &http, 50, 0));
        after.push(catch_up(&http, N - 2000, N - 1));
        // Nothing of theirs is left queued or running.
        wait_for(&hub, "no replay of the leavers left", |s| {
            s.replays_active == 0 && s.replays_waiting == 0 && s.subscribers_ws == 0
        });
    }
    // Cancelled, each once: at most the 150 that left. In an optimized
    // build some of them end (the log is read in milliseconds) before
    // their subscribers leave, so not all 150 are cancelled here, and the
    // count is published by the replay thread a little later than the
    // gauges; the unit test `replays_of_subscribers_that_left_are_dropped_unread`
    // checks the cancellation itself, exactly.
    let cancelled = hub.stats().replays_cancelled;
    assert!(
        (1..=150).contains(&cancelled),
        "replays cancelled: {cancelled} (want 1..=150, each once)"
    );
    let (base, after) = (median(base), median(after));
    eprintln!(
        "catch-up of 2,000 of {N} records: {base:?} alone, {after:?} after 50 replays of \
         subscribers that left ({:.2}x)",
        after.as_secs_f64() / base.as_secs_f64()
    );
    assert!(
        after <= base * 5 + Duration::from_millis(200),
        "the leavers' replays were read: {after:?} against {base:?}"
    );
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the real hub: 100 subscribers replaying the whole log on a
/// topic that matches nothing, and staying, slow a real subscriber's
/// catch-up of the last 2,000 records by a bounded factor (each replay
/// reads one bounded chunk per turn, in turn), and no more than
/// `max_replays` of them hold a slot at any time while the rest wait.
#[test]
fn a_catch_up_is_not_stalled_by_a_hundred_replays_that_match_nothing() {
    let _serial = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("fair");
    let cfg = HubConfig {
        fsync: pinion_hub::FsyncPolicy::Never,
        ..config(&dir)
    };
    let max = cfg.max_replays as u64;
    let hub = Hub::start(cfg).unwrap();
    let http = hub.http_addr().unwrap().to_string();
    const N: u64 = 60_000;
    fill_log(&hub.endpoints()[0], N as u32);
    // The gauges, sampled all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stats, stop) = (hub.stats_handle(), stop.clone());
        std::thread::spawn(move || {
            let (mut active, mut waiting) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = stats();
                active = s.replays_active.max(active);
                waiting = s.replays_waiting.max(waiting);
                std::thread::sleep(Duration::from_micros(200));
            }
            (active, waiting)
        })
    };
    let mut base = Vec::new();
    let mut attacked = Vec::new();
    for _ in 0..3 {
        base.push(catch_up(&http, N - 2000, N - 1));
        let h = hostile(&hub, &http, 100, 0);
        attacked.push(catch_up(&http, N - 2000, N - 1));
        drop(h);
        wait_for(&hub, "the hostile subscribers gone", |s| {
            s.subscribers_ws == 0 && s.replays_active == 0 && s.replays_waiting == 0
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (active, waiting) = sampler.join().unwrap();
    let (base, attacked) = (median(base), median(attacked));
    eprintln!(
        "catch-up of 2,000 of {N} records: {base:?} alone, {attacked:?} beside 100 replays \
         matching nothing ({:.2}x); replays active at most {active} (cap {max}), waiting at \
         most {waiting}",
        attacked.as_secs_f64() / base.as_secs_f64()
    );
    assert!(
        attacked <= base * 5 + Duration::from_millis(200),
        "the catch-up was stalled: {attacked:?} against {base:?}"
    );
    assert!(
        active <= max,
        "{active} replays active, over the cap of {max}"
    );
    assert!(
        active == max && waiting > 0,
        "the cap never came into play (active {active}, waiting {waiting})"
    );
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the real hub: subscribers that ask for the whole log and then
/// read nothing hold a replay slot for `REPLAY_STALL` at most each, so
/// with every slot taken by them a real subscriber's catch-up still gets
/// its turn, and no more than `max_replays` replays are ever active.
#[test]
fn subscribers_that_do_not_read_cannot_hold_the_replay_slots() {
    let _serial = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("stall");
    let hub = Hub::start(HubConfig {
        fsync: pinion_hub::FsyncPolicy::Never,
        max_replays: 2,
        ..config(&dir)
    })
    .unwrap();
    let http = hub.http_addr().unwrap().to_string();
    const N: u64 = 20_000;
    fill_log(&hub.endpoints()[0], N as u32);
    // Eight subscribers of everything from 0, with a small receive buffer,
    // that never read; each from its own offset, so no two share a read.
    let stuck: Vec<Ws> = (0..8u64)
        .map(|i| Ws::connect(&http, &format!("/sub?from={}", i * 100), Some(4096)))
        .collect();
    wait_for(&hub, "the stuck subscribers registered", |s| {
        s.subscribers_ws == 8
    });
    let stats = hub.stats_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let sampler = std::thread::spawn(move || {
        let mut active = 0;
        while rx.try_recv().is_err() {
            active = stats().replays_active.max(active);
            std::thread::sleep(Duration::from_micros(200));
        }
        active
    });
    let took = catch_up(&http, N - 2000, N - 1);
    tx.send(()).unwrap();
    let active = sampler.join().unwrap();
    let s = hub.stats();
    eprintln!(
        "catch-up of 2,000 records beside 8 subscribers that do not read: {took:?}; \
         replays active at most {active} (cap 2), now active {} waiting {}",
        s.replays_active, s.replays_waiting
    );
    assert!(active <= 2, "{active} replays active, over the cap of 2");
    assert_eq!(
        s.slow_disconnects, 0,
        "nobody was cut: they only lost their turn"
    );
    drop(stuck);
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
