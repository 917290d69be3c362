//! Raw sockets and devices, pinion to pinion.

use std::time::Duration;

use pinion::{blocking, CallerError, Error, Options, Protocol, Socket};

const T: Option<Duration> = Some(Duration::from_secs(5));

fn raw(p: Protocol) -> Socket {
    Socket::with_options(
        p,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap()
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

#[test]
fn req_rep_through_a_device_over_tcp_clients() {
    let front = raw(Protocol::Rep0);
    let back = raw(Protocol::Req0);
    let f = block(front.listen("tcp://127.0.0.1:0"))
        .unwrap()
        .url()
        .to_string();
    let b = block(back.listen("tcp://127.0.0.1:0"))
        .unwrap()
        .url()
        .to_string();
    std::thread::spawn(move || block(pinion::device(&front, Some(&back))));
    let server = blocking::Socket::new(Protocol::Rep0).unwrap();
    server.dial(&b).unwrap();
    let s2 = server.clone();
    std::thread::spawn(move || loop {
        let Ok(q) = s2.recv() else { return };
        let mut a = b"re:".to_vec();
        a.extend_from_slice(&q);
        if s2.send(a).is_err() {
            return;
        }
    });
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let f = f.clone();
            std::thread::spawn(move || {
                let req = blocking::Socket::new(Protocol::Req0).unwrap();
                req.dial(&f).unwrap();
                for i in 0..50 {
                    let q = format!("c{c}-{i}");
                    req.send(q.clone()).unwrap();
                    assert_eq!(req.recv_timeout(T).unwrap(), format!("re:{q}").as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

/// Each device's raw REP adds one backtrace word. With the default max TTL
/// of 8 a request may cross 7 devices (8 words at the server) but not 8: the
/// 9-word request is dropped, as NNG drops it.
#[test]
fn device_chain_enforces_max_ttl() {
    for (devices, should_pass) in [(7usize, true), (8, false)] {
        let name = format!("ttl-chain-{devices}");
        // Device d: raw REP listening on `name-d`, raw REQ dialing `name-(d+1)`;
        // the last device's raw REQ listens on `name-back` for the server.
        let back = raw(Protocol::Req0);
        let back_url = block(back.listen(&format!("inproc://{name}-back")))
            .unwrap()
            .url()
            .to_string();
        let mut next_out = Some(back);
        let mut next_url = String::new();
        for d in (0..devices).rev() {
            let front = raw(Protocol::Rep0);
            let url = format!("inproc://{name}-{d}");
            block(front.listen(&url)).unwrap();
            let out = match next_out.take() {
                Some(last) => last,
                None => {
                    let o = raw(Protocol::Req0);
                    block(o.dial(&next_url)).unwrap();
                    o
                }
            };
            std::thread::spawn(move || block(pinion::device(&front, Some(&out))));
            next_url = url;
        }
        let server = blocking::Socket::new(Protocol::Rep0).unwrap();
        server.dial(&back_url).unwrap();
        let client = blocking::Socket::new(Protocol::Req0).unwrap();
        client.dial(&next_url).unwrap();
        client.send("deep").unwrap();
        let got = server.recv_timeout(Some(Duration::from_millis(1500)));
        if should_pass {
            assert_eq!(&got.unwrap()[..], b"deep", "{devices} devices");
            server.send("ok").unwrap();
            assert_eq!(&client.recv_timeout(T).unwrap()[..], b"ok");
        } else {
            assert!(
                matches!(got, Err(Error::TimedOut)),
                "{devices} devices: {got:?}"
            );
            assert_eq!(
                server.stats().ttl_drops,
                1,
                "dropped by the server's TTL check"
            );
        }
    }
}

#[test]
fn device_refuses_cooked_or_mismatched_sockets() {
    let cooked = Socket::new(Protocol::Rep0).unwrap();
    let r = raw(Protocol::Req0);
    assert!(matches!(
        block(pinion::device(&cooked, Some(&r))),
        Error::Caller(CallerError::BadDevice)
    ));
    let p = raw(Protocol::Push0);
    assert!(matches!(
        block(pinion::device(&raw(Protocol::Rep0), Some(&p))),
        Error::Caller(CallerError::BadDevice)
    ));
    assert!(matches!(
        block(pinion::device(&raw(Protocol::Rep0), None)),
        Error::Caller(CallerError::BadDevice)
    ));
    // Closing a socket ends a running device with Closed.
    let a = raw(Protocol::Pair1);
    let b = raw(Protocol::Pair1);
    let (a2, b2) = (a.clone(), b.clone());
    let h = std::thread::spawn(move || block(pinion::device(&a2, Some(&b2))));
    std::thread::sleep(Duration::from_millis(50));
    a.close();
    assert!(matches!(h.join().unwrap(), Error::Closed));
}

#[test]
fn raw_sockets_expose_headers() {
    // raw REP: the header carries the pipe id and the request id.
    let rep = raw(Protocol::Rep0);
    let url = block(rep.listen("tcp://127.0.0.1:0"))
        .unwrap()
        .url()
        .to_string();
    let req = blocking::Socket::new(Protocol::Req0).unwrap();
    req.dial(&url).unwrap();
    req.send("q").unwrap();
    let m = block(rep.recv_timeout_msg()).unwrap();
    assert_eq!(m.header.len(), 8, "pipe id + request id");
    assert!(m.header.last_word().unwrap() & 0x8000_0000 != 0);
    block(rep.send_msg(pinion::Message {
        header: m.header,
        body: "a".into(),
    }))
    .unwrap();
    assert_eq!(&req.recv_timeout(T).unwrap()[..], b"a");
    // A raw REP reply without a pipe id word is refused, typed.
    let bad = block(rep.send_msg(pinion::Message::from_body("x")));
    assert!(matches!(bad, Err(Error::Caller(CallerError::BadHeader))));

    // raw SUB: no filtering, no subscriptions.
    let publ = Socket::new(Protocol::Pub0).unwrap();
    let url = block(publ.listen("tcp://127.0.0.1:0"))
        .unwrap()
        .url()
        .to_string();
    let sub = raw(Protocol::Sub0);
    assert!(matches!(
        block(sub.subscribe("a")),
        Err(Error::Caller(CallerError::NotSupported))
    ));
    block(sub.dial(&url)).unwrap();
    loop {
        block(publ.send("anything")).unwrap();
        if block(sub.recv_timeout(Some(Duration::from_millis(100)))).is_ok() {
            break;
        }
    }
    assert!(matches!(
        block(sub.context()),
        Err(Error::Caller(CallerError::NoContexts))
    ));
}
