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
