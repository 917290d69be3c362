use pinion::{blocking::Socket, Protocol};

#[test]
fn push_pull_over_every_transport() {
    let dir = std::env::temp_dir().join(format!("pinion-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ipc = format!("ipc://{}/pp.sock", dir.display());
    for url in ["tcp://127.0.0.1:0", ipc.as_str(), "inproc://smoke-pp"] {
        let pull = Socket::new(Protocol::Pull0).unwrap();
        let ep = pull.listen(url).unwrap();
        let push = Socket::new(Protocol::Push0).unwrap();
        push.dial(&ep.url().to_string()).unwrap();
        // Send from another thread: the pipeline between the two sockets is
        // bounded (that is the point), so 1000 unreceived messages may not fit.
        let sender = std::thread::spawn(move || {
            for i in 0..1000u32 {
                push.send(i.to_be_bytes().to_vec()).unwrap();
            }
            push
        });
        for i in 0..1000u32 {
            assert_eq!(pull.recv().unwrap()[..], i.to_be_bytes(), "{url}");
        }
        sender.join().unwrap();
    }
}

#[test]
fn req_rep_and_pair_over_tcp() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let url = rep.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
    let req = Socket::new(Protocol::Req0).unwrap();
    req.dial(&url).unwrap();
    for i in 0..100u32 {
        req.send(i.to_be_bytes().to_vec()).unwrap();
        let q = rep.recv().unwrap();
        assert_eq!(q[..], i.to_be_bytes());
        rep.send(format!("r{i}")).unwrap();
        assert_eq!(req.recv().unwrap(), format!("r{i}").as_bytes());
    }
    for proto in [Protocol::Pair0, Protocol::Pair1] {
        let a = Socket::new(proto).unwrap();
        let url = a.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
        let b = Socket::new(proto).unwrap();
        b.dial(&url).unwrap();
        b.send("x").unwrap();
        assert_eq!(&a.recv().unwrap()[..], b"x");
        a.send("y").unwrap();
        assert_eq!(&b.recv().unwrap()[..], b"y");
    }
}

#[test]
fn queued_sends_survive_close() {
    // Messages accepted by send() are written out even when the socket is
    // dropped right after (the socket lingers).
    for url in ["tcp://127.0.0.1:0", "inproc://smoke-linger"] {
        let pull = Socket::new(Protocol::Pull0).unwrap();
        let ep = pull.listen(url).unwrap();
        let push = Socket::new(Protocol::Push0).unwrap();
        push.dial(&ep.url().to_string()).unwrap();
        for i in 0..100u32 {
            push.send(i.to_be_bytes().to_vec()).unwrap();
        }
        drop(push);
        for i in 0..100u32 {
            let m = pull
                .recv_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            assert_eq!(m[..], i.to_be_bytes(), "{url}");
        }
    }
}

#[test]
fn pub_sub_bus_survey_over_tcp() {
    use std::time::Duration;
    let t = Some(Duration::from_secs(5));
    // pub/sub with prefix subscriptions and a context.
    let publ = Socket::new(Protocol::Pub0).unwrap();
    let url = publ.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
    let sub = Socket::new(Protocol::Sub0).unwrap();
    sub.subscribe("a/").unwrap();
    sub.dial(&url).unwrap();
    let mut ctx = sub.context().unwrap();
    ctx.subscribe("b/").unwrap();
    // Warm up until the subscription path is live (pub/sub is best effort).
    loop {
        publ.send("a/warm").unwrap();
        if sub.recv_timeout(Some(Duration::from_millis(100))).is_ok() {
            break;
        }
    }
    while sub.recv_timeout(Some(Duration::from_millis(50))).is_ok() {}
    for m in ["a/1", "b/1", "c/1", "a/2"] {
        publ.send(m).unwrap();
    }
    assert_eq!(&sub.recv_timeout(t).unwrap()[..], b"a/1");
    assert_eq!(&sub.recv_timeout(t).unwrap()[..], b"a/2");
    assert_eq!(&ctx.recv_timeout(t).unwrap()[..], b"b/1");
    assert!(sub.recv_timeout(Some(Duration::from_millis(100))).is_err());
    assert!(matches!(
        sub.unsubscribe("zzz"),
        Err(pinion::Error::Caller(
            pinion::CallerError::NoSuchSubscription
        ))
    ));

    // bus: one hop to every peer, no echo.
    let a = Socket::new(Protocol::Bus0).unwrap();
    let url = a.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
    let b = Socket::new(Protocol::Bus0).unwrap();
    let c = Socket::new(Protocol::Bus0).unwrap();
    b.dial(&url).unwrap();
    c.dial(&url).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    a.send("hi").unwrap();
    assert_eq!(&b.recv_timeout(t).unwrap()[..], b"hi");
    assert_eq!(&c.recv_timeout(t).unwrap()[..], b"hi");
    b.send("from b").unwrap();
    assert_eq!(&a.recv_timeout(t).unwrap()[..], b"from b");
    assert!(
        c.recv_timeout(Some(Duration::from_millis(100))).is_err(),
        "one hop only"
    );
}
