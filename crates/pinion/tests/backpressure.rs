//! A peer that sends requests and never reads the replies: REP stops
//! reading it (TCP pushes back) instead of answering everything it sends
//! into a backlog and dropping the answers; what its pipeline had already
//! read is answered into a backlog bounded in bytes, and replies past it are
//! dropped and counted. Once the peer reads, the server resumes, and every
//! request is either answered, in order, or counted. Driven by a hand-written SP REQ client over a plain TCP socket, so
//! the test controls exactly when the peer reads.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pinion::{Options, Protocol, Socket};

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// One SP/TCP frame of a REQ: request id word, then the body.
fn request(id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(12 + body.len());
    f.extend_from_slice(&((4 + body.len()) as u64).to_be_bytes());
    f.extend_from_slice(&(id | 0x8000_0000).to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn a_peer_that_never_reads_replies_is_paused_and_nothing_is_lost_silently() {
    // A raw REP echoing every request with a 1 KiB reply.
    let rep = Socket::with_options(
        Protocol::Rep0,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap();
    let url = block(rep.listen("tcp://127.0.0.1:0"))
        .unwrap()
        .url()
        .to_string();
    let server = rep.clone();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || loop {
        let Ok(mut m) = block(server.recv_msg()) else {
            return;
        };
        m.body = vec![7u8; 1024].into();
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if block(server.send_msg(m)).is_err() {
            return;
        }
    });

    let mut c = TcpStream::connect(url.trim_start_matches("tcp://")).unwrap();
    c.write_all(&[0, b'S', b'P', 0, 0, 0x30, 0, 0]).unwrap(); // REQ v0
    let mut hdr = [0u8; 8];
    c.read_exact(&mut hdr).unwrap();
    assert_eq!(&hdr[..6], &[0, b'S', b'P', 0, 0, 0x31]);

    // Send as fast as the server takes them, never reading, until the
    // writes stall for a while: the server has stopped reading us.
    c.set_nonblocking(true).unwrap();
    let frame_len = request(0, b"q").len();
    let mut sent = 0u32;
    let mut pending: Vec<u8> = Vec::new();
    let mut last_progress = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while last_progress.elapsed() < Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline,
            "the server kept reading a peer that never reads its replies ({sent} requests)"
        );
        if pending.is_empty() {
            for _ in 0..64 {
                pending.extend(request(sent, b"q"));
                sent += 1;
            }
        }
        match c.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let written = sent as usize * frame_len - pending.len();
    let accepted = written / frame_len;
    // Each 13-byte request costs a 1 KiB reply. Without the pause the
    // server would read and answer every request the kernel buffers hold
    // (hundreds of thousands here) and drop nearly every reply. With it the
    // server stops after what was already read into its pipeline: the
    // pipe's read buffer, the socket's event queue (64 events of at most
    // MAX_EVENT_MSGS) and its receive queue.
    let drops = rep.stats().unroutable_drops;
    let n_served = served.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("kernel took {accepted} requests ({written} bytes); server answered {n_served}, dropped {drops} replies");
    assert!(
        n_served < 40_000,
        "the server stopped reading the peer ({n_served} answered of {accepted} sent)"
    );
    assert!(drops < n_served, "some replies were held for the peer");

    // Now read: the server resumes, answers the rest, and every request is
    // either answered, in order, or counted as a dropped reply: nothing is
    // lost silently.
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let rest = std::thread::spawn(move || w.write_all(&pending));
    let mut frame = vec![0u8; 8 + 4 + 1024];
    let mut received = 0u64;
    let mut last: Option<u32> = None;
    while last != Some(sent - 1) {
        c.read_exact(&mut frame).unwrap();
        assert_eq!(u64::from_be_bytes(frame[..8].try_into().unwrap()), 4 + 1024);
        let id = u32::from_be_bytes(frame[8..12].try_into().unwrap()) & 0x7fff_ffff;
        assert!(last.is_none_or(|l| id > l), "replies in request order");
        last = Some(id);
        received += 1;
    }
    rest.join().unwrap().unwrap();
    let drops = rep.stats().unroutable_drops;
    eprintln!("then: {received} replies received, {drops} dropped in all, of {sent}");
    assert_eq!(
        received + drops,
        u64::from(sent),
        "every request answered or counted"
    );
    rep.close();
}
