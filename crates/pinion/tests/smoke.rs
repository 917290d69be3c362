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
        for i in 0..1000u32 {
            push.send(i.to_be_bytes().to_vec()).unwrap();
        }
        for i in 0..1000u32 {
            assert_eq!(pull.recv().unwrap()[..], i.to_be_bytes(), "{url}");
        }
    }
}
