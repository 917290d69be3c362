//! `pinion::subscriber` against hand-written fake hubs (plain threads and
//! std TCP speaking `/sub` byte by byte): a dead URL first, a malformed
//! frame that closes one connection and a resume on the next node (with a
//! duplicate dropped), a slow consumer's 4008 and a shutdown's 1001, a
//! silent node, an oversized message, giving up, bad options.
//! The same subscriber against real `pinion serve` processes (a cluster
//! node killed mid-stream): `crates/pinion-cli/tests/subscriber.rs`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use pinion::subscriber::{Error, Event, HubViolation, OptionsError, Subscriber, SubscriberOptions};
use pinion::{Fault, PeerError};
use pinion_proto::{Bytes, Message as _};
use pinion_runtime::transport::ws::frame::{Decoder, Event as WsEvent, Side};

/// One server frame (unmasked).
fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | op];
    match payload.len() {
        n if n < 126 => v.push(n as u8),
        n if n < 65536 => {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(payload);
    v
}

fn hello(next: u64) -> Vec<u8> {
    frame(1, format!("{{\"next\":{next}}}").as_bytes())
}

fn delivery(offset: u64, topic: &str, payload: &str) -> Vec<u8> {
    let d = pinion_proto::Delivery {
        offset: Some(offset),
        timestamp_us: Some(1_000 + offset),
        client_id: Some(Bytes::from_static(&[9; 16])),
        seq: Some(offset + 100),
        payload: Some(Bytes::copy_from_slice(payload.as_bytes())),
    };
    let mut body = topic.as_bytes().to_vec();
    body.push(0);
    body.extend(d.encode_to_vec());
    frame(2, &body)
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    frame(8, &p)
}

/// Reads the upgrade request, answers 101 with `pinion.v1`: the request
/// target (path and query).
fn accept(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the request ended early");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: pinion.v1\r\n"),
        "{head}"
    );
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap();
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: pinion.v1\r\n\r\n"
    )
    .unwrap();
    head.lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string()
}

/// The client's frames until it closes or goes away (at most `within`).
fn client_frames(s: &mut TcpStream, within: Duration) -> Vec<WsEvent> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut d = Decoder::new(Side::Server, 1 << 16);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => n,
        };
        let mut input = &buf[..n];
        while let Some(e) = d.decode(&mut input).expect("the client's frames are valid") {
            let end = matches!(e, WsEvent::Close(_));
            out.push(e);
            if end {
                return out;
            }
        }
    }
}

/// A fake hub: each accepted connection is handed to `script` with its
/// index and request target.
fn fake_hub(
    conns: usize,
    script: impl Fn(usize, TcpStream, String) + Send + 'static,
) -> (String, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        for i in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            let target = accept(&mut s);
            script(i, s, target);
        }
    });
    (url, h)
}

fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn opts(urls: &[&str]) -> SubscriberOptions {
    SubscriberOptions {
        topics: vec![Bytes::from_static(b"t/")],
        start_index: Some(0),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..SubscriberOptions::new(urls.iter().copied())
    }
}

fn offsets(sub: &mut pinion::blocking::Subscriber, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            sub.next_timeout(Duration::from_secs(10))
                .unwrap()
                .expect("a delivery within 10 s")
                .offset
        })
        .collect()
}

#[test]
fn a_dead_url_first_then_a_live_node() {
    let dead = dead_url();
    let (live, hub) = fake_hub(1, |_, mut s, target| {
        assert_eq!(target, "/sub?topic=t%2F&from=5");
        s.write_all(&hello(5)).unwrap();
        s.write_all(&delivery(5, "t/a", "five")).unwrap();
        s.write_all(&delivery(7, "t/b", "seven")).unwrap();
        client_frames(&mut s, Duration::from_secs(10));
    });
    let mut sub = pinion::blocking::Subscriber::connect(SubscriberOptions {
        from: Some(5),
        ..opts(&[&dead, &live])
    })
    .unwrap();
    match sub.next_event().unwrap() {
        Event::Disconnected {
            node: 0,
            error,
            resume: Some(5),
            next_node: 1,
            retry_in,
        } => {
            assert_eq!(error.fault(), Fault::Io, "{error}");
            let Error::Transport(e) = &error else {
                panic!("{error:?}")
            };
            assert_eq!(e.io_kind(), Some(std::io::ErrorKind::ConnectionRefused));
            assert_eq!(retry_in, Duration::ZERO, "the next node at once");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sub.next_event().unwrap(),
        Event::Connected { node: 1, next: 5 }
    ));
    assert_eq!(sub.node(), live);
    let d = sub.next().unwrap().unwrap();
    assert_eq!(
        (
            d.offset,
            &d.topic[..],
            &d.payload[..],
            d.seq,
            d.timestamp_us
        ),
        (5, &b"t/a"[..], &b"five"[..], 105, 1005)
    );
    assert_eq!(&d.client_id[..], &[9; 16]);
    assert_eq!(sub.next().unwrap().unwrap().offset, 7);
    assert_eq!(sub.next_offset(), Some(8));
    sub.close();
    hub.join().unwrap();
}

#[test]
fn a_malformed_frame_closes_that_connection_and_the_next_node_resumes() {
    let (a, hub_a) = fake_hub(1, |_, mut s, target| {
        // Live: no `from`.
        assert_eq!(target, "/sub?topic=t%2F");
        s.write_all(&hello(10)).unwrap();
        s.write_all(&delivery(10, "t/x", "a")).unwrap();
        s.write_all(&delivery(11, "t/x", "b")).unwrap();
        s.write_all(&frame(2, b"no separator here")).unwrap();
        // The subscriber closes with 1002 (protocol error).
        let got = client_frames(&mut s, Duration::from_secs(10));
        assert_eq!(got.last(), Some(&WsEvent::Close(Some(1002))), "{got:?}");
    });
    let (b, hub_b) = fake_hub(1, |_, mut s, target| {
        assert_eq!(target, "/sub?topic=t%2F&from=12");
        s.write_all(&hello(12)).unwrap();
        // One it already has (dropped), then new ones.
        s.write_all(&delivery(11, "t/x", "b")).unwrap();
        s.write_all(&delivery(12, "t/x", "c")).unwrap();
        s.write_all(&delivery(13, "t/x", "d")).unwrap();
        client_frames(&mut s, Duration::from_secs(10));
    });
    let mut sub = pinion::blocking::Subscriber::connect(opts(&[&a, &b])).unwrap();
    assert_eq!(sub.next_offset(), Some(10));
    assert_eq!(offsets(&mut sub, 2), [10, 11]);
    assert_eq!(sub.node(), a);
    match sub.next_event_timeout(Duration::from_secs(10)).unwrap() {
        Some(Event::Disconnected {
            node: 0,
            error: Error::Hub(HubViolation::NoSeparator),
            resume: Some(12),
            next_node: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(offsets(&mut sub, 2), [12, 13]);
    assert_eq!(sub.node(), b);
    assert_eq!(sub.dropped_duplicates(), 1);
    sub.close();
    hub_a.join().unwrap();
    hub_b.join().unwrap();
}

#[test]
fn a_slow_consumer_close_and_a_shutdown_resume_by_offset() {
    let (url, hub) = fake_hub(3, |i, mut s, target| match i {
        0 => {
            assert_eq!(target, "/sub?topic=t%2F&from=0");
            s.write_all(&hello(0)).unwrap();
            s.write_all(&delivery(0, "t/", "x")).unwrap();
            s.write_all(&delivery(1, "t/", "y")).unwrap();
            s.write_all(&close(
                4008,
                "slow consumer: over 1048576 bytes queued; resume from offset 2",
            ))
            .unwrap();
            let got = client_frames(&mut s, Duration::from_secs(10));
            assert_eq!(got.last(), Some(&WsEvent::Close(Some(4008))), "{got:?}");
        }
        1 => {
            assert_eq!(target, "/sub?topic=t%2F&from=2");
            s.write_all(&hello(2)).unwrap();
            s.write_all(&delivery(2, "t/", "z")).unwrap();
            s.write_all(&close(1001, "")).unwrap();
            client_frames(&mut s, Duration::from_secs(10));
        }
        _ => {
            assert_eq!(target, "/sub?topic=t%2F&from=3");
            s.write_all(&hello(3)).unwrap();
            client_frames(&mut s, Duration::from_secs(10));
        }
    });
    let mut sub = pinion::blocking::Subscriber::connect(SubscriberOptions {
        from: Some(0),
        ..opts(&[&url])
    })
    .unwrap();
    let mut closes = Vec::new();
    let mut got = Vec::new();
    let mut hellos = Vec::new();
    // Until the third connection's hello (the fake hub waits for it).
    while hellos.last() != Some(&3) {
        match sub.next_event_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Delivery(d)) => got.push(d.offset),
            Some(Event::Disconnected {
                error: Error::ClosedByHub { code, reason },
                resume,
                retry_in,
                ..
            }) => {
                assert_eq!(retry_in, Duration::ZERO, "it had delivered: no backoff");
                closes.push((code, resume, reason));
            }
            Some(Event::Connected { next, .. }) => hellos.push(next),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(hellos, [0, 2, 3]);
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(closes[0].0, Some(4008));
    assert_eq!(closes[0].1, Some(2));
    assert!(closes[0].2.ends_with("resume from offset 2"));
    assert_eq!(closes[1].0, Some(1001));
    assert_eq!(closes[1].1, Some(3));
    sub.close();
    hub.join().unwrap();
}

#[test]
fn a_silent_node_is_pinged_then_left() {
    let (silent, hub) = fake_hub(1, |_, mut s, _| {
        s.write_all(&hello(0)).unwrap();
        // Reads the ping, answers nothing.
        let got = client_frames(&mut s, Duration::from_secs(10));
        assert!(
            matches!(got.first(), Some(WsEvent::Ping(_))),
            "the subscriber pings a quiet node: {got:?}"
        );
    });
    let mut sub = pinion::blocking::Subscriber::connect(SubscriberOptions {
        idle_timeout: Duration::from_millis(400),
        ..opts(&[&silent])
    })
    .unwrap();
    assert!(matches!(sub.next_event().unwrap(), Event::Connected { .. }));
    match sub.next_event_timeout(Duration::from_secs(10)).unwrap() {
        Some(Event::Disconnected {
            error: Error::Silent(d),
            resume: Some(0),
            ..
        }) => assert_eq!(d, Duration::from_millis(400)),
        other => panic!("{other:?}"),
    }
    sub.close();
    hub.join().unwrap();
}

#[test]
fn a_message_over_max_message_is_refused_from_its_header() {
    let (url, hub) = fake_hub(1, |_, mut s, _| {
        s.write_all(&hello(0)).unwrap();
        s.write_all(&delivery(0, "t/", &"x".repeat(1000))).unwrap();
        let got = client_frames(&mut s, Duration::from_secs(10));
        assert_eq!(got.last(), Some(&WsEvent::Close(Some(1009))), "{got:?}");
    });
    let mut sub = pinion::blocking::Subscriber::connect(SubscriberOptions {
        max_message: 100,
        ..opts(&[&url])
    })
    .unwrap();
    assert!(matches!(sub.next_event().unwrap(), Event::Connected { .. }));
    match sub.next_event_timeout(Duration::from_secs(10)).unwrap() {
        Some(Event::Disconnected { error, .. }) => {
            assert!(
                matches!(
                    error,
                    Error::Transport(pinion::Error::Peer(PeerError::TooLarge { max: 100, .. }))
                ),
                "{error:?}"
            );
            assert_eq!(error.fault(), Fault::Peer);
        }
        other => panic!("{other:?}"),
    }
    sub.close();
    hub.join().unwrap();
}

#[test]
fn gives_up_when_no_node_accepts() {
    let urls = [dead_url(), dead_url()];
    let err = pinion::blocking::Subscriber::connect(SubscriberOptions {
        give_up_after: Some(Duration::from_millis(300)),
        ..opts(&[&urls[0], &urls[1]])
    })
    .unwrap_err();
    assert_eq!(err.fault(), Fault::Io, "{err}");
    // A started subscriber reports the attempts, then the error, then
    // `Closed`.
    let mut sub = pinion::blocking::Subscriber::start(SubscriberOptions {
        give_up_after: Some(Duration::from_millis(200)),
        ..opts(&[&urls[0]])
    })
    .unwrap();
    let mut moves = 0;
    let last = loop {
        match sub.next_event() {
            Ok(Event::Disconnected { .. }) => moves += 1,
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };
    assert!(moves >= 1);
    assert!(matches!(last, Error::Transport(_)), "{last:?}");
    assert!(sub.next().is_none());
}

#[test]
fn options_that_cannot_work() {
    let bad = |o: SubscriberOptions| match Subscriber::start(o) {
        Err(Error::Options(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        bad(SubscriberOptions::new(Vec::<String>::new())),
        OptionsError::NoUrls
    );
    assert_eq!(
        bad(SubscriberOptions::new(["tcp://127.0.0.1:7452"])),
        OptionsError::NotWs { index: 0 }
    );
    assert!(matches!(
        bad(SubscriberOptions::new(["ws://a:1", "127.0.0.1:7452"])),
        OptionsError::BadUrl { index: 1, .. }
    ));
    assert_eq!(
        bad(SubscriberOptions::new(["ws://a:1/sub?from=3"])),
        OptionsError::HasQuery { index: 0 }
    );
    assert_eq!(
        bad(SubscriberOptions {
            topics: vec![Bytes::from_static(b"t"); 65],
            ..SubscriberOptions::default()
        }),
        OptionsError::TooManyTopics(65)
    );
    assert_eq!(
        bad(SubscriberOptions {
            topics: vec![Bytes::from(vec![b'x'; 256])],
            ..SubscriberOptions::default()
        }),
        OptionsError::TopicTooLong { index: 0, len: 256 }
    );
    assert!(matches!(
        bad(SubscriberOptions {
            topics: vec![Bytes::from(vec![0xff; 255]); 12],
            ..SubscriberOptions::default()
        }),
        OptionsError::RequestTooLong(_)
    ));
    assert_eq!(
        bad(SubscriberOptions {
            buffer: 0,
            ..SubscriberOptions::default()
        }),
        OptionsError::Zero
    );
    assert_eq!(Error::Options(OptionsError::NoUrls).fault(), Fault::Caller);
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_api_inside_tokio() {
    fn is_send<T: Send>(_: &T) {}
    let (url, hub) = fake_hub(1, |_, mut s, _| {
        s.write_all(&hello(3)).unwrap();
        s.write_all(&delivery(3, "t/", "x")).unwrap();
        client_frames(&mut s, Duration::from_secs(10));
    });
    let mut sub = Subscriber::connect(opts(&[&url])).await.unwrap();
    is_send(&sub);
    let d = sub.next().await.unwrap();
    assert_eq!((d.offset, sub.next_offset()), (3, Some(4)));
    // Nothing more: the timeout runs out.
    let t = std::time::Instant::now();
    assert!(sub
        .next_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert!(t.elapsed() >= Duration::from_millis(200));
    sub.close();
    tokio::task::spawn_blocking(move || hub.join().unwrap())
        .await
        .unwrap();
}
