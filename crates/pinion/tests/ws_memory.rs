//! What an idle `ws://` connection costs a listener: at most 8 KiB of
//! process memory (resident set growth divided by the connections).
//!
//! Alone in its own test binary, so no other test's allocations are
//! counted. The clients are raw blocking TCP sockets in this process: they
//! cost file descriptors, not user memory (a `TcpStream` is an fd in a
//! `Vec`). The larger measurement (10,000 connections, clients in a child
//! process) is `cargo run --release -p pinion --example ws_idle_memory`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use pinion::blocking::Socket;
use pinion::{Message, Protocol};

const N: usize = 2000;
const BUDGET: f64 = 8192.0;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn upgrade(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /m HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: rep.sp.nanomsg.org\r\n\r\n"
    )
    .expect("send upgrade");
    let mut head = Vec::new();
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("read 101");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    s
}

fn request(id: u32) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut p = (0x8000_0000 | id).to_be_bytes().to_vec();
    p.extend_from_slice(b"mem-rq");
    let mut f = vec![0x82, 0x80 | p.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn read_reply(s: &mut TcpStream) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("reply header");
    let mut p = vec![0u8; usize::from(h[1] & 0x7f)];
    s.read_exact(&mut p).expect("reply payload");
}

#[test]
fn idle_ws_connections_cost_at_most_8_kib_each() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let port = rep.listen("ws://127.0.0.1:0/m").unwrap().port().unwrap();
    // Warm-up: per-core scratch buffers and one-time allocations.
    for _ in 0..2 {
        let mut s = upgrade(port);
        s.write_all(&request(0)).unwrap();
        let m = rep.recv_msg().unwrap();
        let mut r = Message::from_body("warm");
        r.header = m.header;
        rep.send_msg(r).unwrap();
        read_reply(&mut s);
    }
    thread::sleep(Duration::from_millis(200));
    let before = rss_bytes();
    let mut conns: Vec<TcpStream> = (0..N).map(|_| upgrade(port)).collect();
    while rep.stats().pipes_added < N as u64 + 2 {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    let idle = rss_bytes();
    // One request/reply on every connection, then idle again: buffers
    // used for it must not stay behind.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&request(i as u32)).unwrap();
    }
    for _ in 0..N {
        let m = rep.recv_msg().unwrap();
        let mut r = Message::from_body("mem-rp");
        r.header = m.header;
        rep.send_msg(r).unwrap();
    }
    for s in &mut conns {
        read_reply(s);
    }
    thread::sleep(Duration::from_millis(300));
    let after = rss_bytes();
    let per = |x: u64| x.saturating_sub(before) as f64 / N as f64;
    eprintln!(
        "ws idle memory: {:.0} B per connection idle, {:.0} B after one request each ({N} connections)",
        per(idle),
        per(after)
    );
    assert!(
        per(idle) <= BUDGET,
        "idle: {:.0} B per connection",
        per(idle)
    );
    assert!(
        per(after) <= BUDGET,
        "after use: {:.0} B per connection",
        per(after)
    );
    assert_eq!(
        rep.stats().pipes_added - rep.stats().pipes_removed,
        N as u64
    );
}
