//! Measures what an idle `ws://` connection costs a pinion listener.
//!
//! ```text
//! cargo run --release -p pinion --example ws_idle_memory [-- N]
//! ```
//!
//! One REP socket listens on `ws://127.0.0.1:0/idle`. A child process (this
//! program again, so the clients' memory is not counted) opens N WebSocket
//! connections (default 10,000) with raw TCP sockets and hand-written
//! upgrades, and keeps them open. The listener's resident memory
//! (`/proc/self/statm`) is read before, once all N are up and idle, and
//! again after every connection has made one request/reply (so each pipe
//! has read, decoded, written and gone idle again). Reported: the growth
//! divided by N.
//!
//! The baseline is taken after one warm-up connection has exchanged a
//! message, so the per-core scratch buffers and the runtime's one-time
//! allocations are not charged to the N connections.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::Protocol;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

const PATH: &str = "/idle";

fn upgrade(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
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
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "no 101: {:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked binary frame carrying request id `id` and an 8-byte body.
fn request(id: u32) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut p = (0x8000_0000 | id).to_be_bytes().to_vec();
    p.extend_from_slice(b"idle-rq!");
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

/// The child: N connections, then one request each on command.
fn clients(port: u16, n: usize) {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| upgrade(port)).collect();
    println!("up");
    let mut line = String::new();
    let stdin = std::io::stdin();
    stdin.lock().read_line(&mut line).unwrap();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&request(i as u32)).expect("send request");
    }
    for s in &mut conns {
        read_reply(s);
    }
    println!("answered");
    line.clear();
    let _ = stdin.lock().read_line(&mut line); // EOF: the parent is done
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--clients") {
        clients(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    let n: usize = args.get(1).map(|a| a.parse().expect("N")).unwrap_or(10_000);
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let ep = rep.listen(&format!("ws://127.0.0.1:0{PATH}")).unwrap();
    let port = ep.port().unwrap();
    // Warm-up: one connection, one exchange, closed.
    {
        let mut s = upgrade(port);
        s.write_all(&request(0)).unwrap();
        let _ = rep.recv().unwrap();
        rep.send("warm").unwrap();
        read_reply(&mut s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--clients", &port.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the client process");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let t0 = Instant::now();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "up", "client process failed");
    // Every pipe is up once the socket counted it.
    while rep.stats().pipes_added < n as u64 + 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let up = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_bytes();

    writeln!(stdin, "go").unwrap();
    for _ in 0..n {
        let m = rep.recv_msg().unwrap();
        let mut r = pinion::Message::from_body("idle-rp!");
        r.header = m.header;
        rep.send_msg(r).unwrap();
    }
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "answered");
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes();
    let st = rep.stats();
    assert_eq!(st.pipes_added - st.pipes_removed, n as u64, "{st:?}");

    let per = |x: u64| x.saturating_sub(before) as f64 / n as f64;
    println!(
        "ws idle memory, {n} connections to one REP listener ({} cores)",
        std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1)
    );
    println!("  connections up in {:.2?}", up);
    println!(
        "  RSS before            {:>8.1} MiB",
        before as f64 / 1048576.0
    );
    println!(
        "  RSS idle              {:>8.1} MiB  ({:.0} B per connection)",
        idle as f64 / 1048576.0,
        per(idle)
    );
    println!(
        "  RSS after 1 req each  {:>8.1} MiB  ({:.0} B per connection)",
        after as f64 / 1048576.0,
        per(after)
    );
    drop(stdin);
    let _ = child.wait();
}
