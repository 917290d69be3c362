//! What the hub holds for strangers, end to end with real sockets, a real
//! log file and real SQLite: sessions leave RAM and SQLite once their
//! records leave the dedup horizon (and dedup stays exact inside it, across
//! a restart), and a core whose fan-out falls behind its backlog bound
//! still delivers every record once, in order.

mod common;

use common::base_config;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion::{Message, Options, Protocol, Socket};
use pinion_hub::{FsyncPolicy, Hub, HubConfig};
use pinion_proto::{reply, Delivery, Message as _, Publish, Reply};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-retention-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// Waits up to 10 s for `ok`, saying what it waited for if it never came.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(n: u32) -> [u8; 16] {
    let mut c = [0xC1; 16];
    c[..4].copy_from_slice(&n.to_be_bytes());
    c
}

/// Publishes `(client, seq 1)` for every client in `clients` over one raw
/// REQ connection, `window` requests in flight; returns each one's ACK as
/// `(offset, duplicate)`.
fn publish_once_each(url: &str, clients: &[u32]) -> HashMap<u32, (u64, bool)> {
    let s = Socket::with_options(
        Protocol::Req0,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap();
    block(s.dial(url)).unwrap();
    let window = 256;
    let mut acks = HashMap::new();
    block(async {
        let send = |i: usize| {
            let body = Publish {
                client_id: Some(client(clients[i]).to_vec().into()),
                seq: Some(1),
                topic: Some("r".into()),
                payload: Some(vec![0u8; 8].into()),
                token: None,
            }
            .encode_to_vec();
            let mut m = Message::from_body(body);
            // The request id names the client's index.
            m.header.push_word(i as u32 | 0x8000_0000).unwrap();
            s.send_msg(m)
        };
        let mut sent = 0;
        while sent < clients.len().min(window) {
            send(sent).await.unwrap();
            sent += 1;
        }
        while acks.len() < clients.len() {
            let r = s.recv_timeout_msg().await.unwrap();
            let i = (r.header.first_word().unwrap() & 0x7fff_ffff) as usize;
            let reply = Reply::decode(&r.body[..]).unwrap();
            match reply.result {
                Some(reply::Result::Ack(a)) => {
                    acks.insert(clients[i], (a.offset.unwrap(), a.duplicate()));
                }
                other => panic!("client {} not acked: {other:?}", clients[i]),
            }
            if sent < clients.len() {
                send(sent).await.unwrap();
                sent += 1;
            }
        }
    });
    s.close();
    acks
}

fn stored_clients(dir: &Path) -> HashSet<[u8; 16]> {
    let db = rusqlite::Connection::open_with_flags(
        dir.join(pinion_hub::SESSIONS_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = db.prepare("SELECT client_id FROM sessions").unwrap();
    let rows = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|id| id.unwrap().try_into().expect("16-byte client id"))
        .collect();
    rows
}

#[test]
fn twenty_thousand_clients_leave_ram_and_sqlite_beyond_the_horizon_and_dedup_holds_across_restart()
{
    const CLIENTS: u32 = 20_000;
    const HORIZON: u64 = 1_000;
    let dir = temp_dir("sessions");
    let cfg = HubConfig {
        data_dir: dir.clone(),
        listen: vec!["tcp://127.0.0.1:0".into()],
        subscribe: Vec::new(),
        http: None,
        threads: 2,
        dedup_horizon: HORIZON,
        checkpoint_interval: Duration::from_millis(100),
        ..base_config()
    };
    let hub = Hub::start(cfg.clone()).unwrap();
    let url = hub.endpoints()[0].clone();
    let all: Vec<u32> = (0..CLIENTS).collect();
    let acks = publish_once_each(&url, &all);
    assert!(acks.values().all(|&(_, dup)| !dup));
    let offsets: HashSet<u64> = acks.values().map(|&(o, _)| o).collect();
    assert_eq!(offsets.len(), CLIENTS as usize, "one record each");
    // Held once the checkpoints have run: exactly the clients whose
    // record is among the last HORIZON.
    let head = CLIENTS as u64;
    let within: HashSet<u32> = all
        .iter()
        .copied()
        .filter(|c| acks[c].0 >= head - HORIZON)
        .collect();
    assert_eq!(within.len() as u64, HORIZON);
    wait_for("sessions beyond the horizon forgotten", || {
        let s = hub.stats();
        s.sessions == HORIZON && s.sessions_forgotten == head - HORIZON
    });
    let want: HashSet<[u8; 16]> = within.iter().map(|&c| client(c)).collect();
    wait_for("their rows deleted from SQLite", || {
        stored_clients(&dir) == want
    });

    // Exact dedup inside the horizon, across a restart: every client
    // still held gets its original offset back as a duplicate.
    hub.shutdown();
    let hub = Hub::start(cfg.clone()).unwrap();
    assert_eq!(hub.start_report().clients as u64, HORIZON);
    assert_eq!(hub.stats().sessions, HORIZON);
    let url = hub.endpoints()[0].clone();
    let held: Vec<u32> = within.iter().copied().collect();
    let again = publish_once_each(&url, &held);
    for c in &held {
        assert_eq!(again[c], (acks[c].0, true), "client {c}");
    }
    assert_eq!(hub.stats().logged, 0);
    // A client forgotten is unknown again: its retry is logged again (the
    // documented trade for bounded memory).
    let oldest = *all.iter().find(|c| acks[c].0 == 0).unwrap();
    let again = publish_once_each(&url, &[oldest]);
    assert_eq!(again[&oldest], (head, false));
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A minimal WebSocket subscriber (blocking; reads server frames as they
/// come, so nothing is dropped or hidden on the client side).
struct Ws(TcpStream);

impl Ws {
    fn connect(addr: &str, path: &str) -> Ws {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
        Ws(s)
    }

    /// The next delivery's offset (panics on anything but a binary frame),
    /// `None` if none began within 200 ms.
    fn next_offset(&mut self) -> Option<u64> {
        let mut h = [0u8; 2];
        match self.0.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("reading a frame: {e}"),
        }
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.0.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                self.0.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.0.read_exact(&mut p).unwrap();
        assert_eq!(
            h[0],
            0x82,
            "expected a binary frame: {:?}",
            String::from_utf8_lossy(&p)
        );
        let nul = p.iter().position(|&b| b == 0).expect("topic, NUL");
        Delivery::decode(&p[nul + 1..]).unwrap().offset
    }
}

#[test]
fn a_core_over_its_fanout_backlog_still_delivers_every_record_once_in_order() {
    const PAYLOAD: usize = 48 << 10;
    const BURST: u32 = 150;
    let dir = temp_dir("backlog");
    let cfg = HubConfig {
        data_dir: dir.clone(),
        listen: vec!["tcp://127.0.0.1:0".into()],
        subscribe: Vec::new(),
        http: Some("127.0.0.1:0".into()),
        // One core: the publishers' intake and the fan-out share it, so
        // a burst of large records outruns its fan-out.
        threads: 1,
        fsync: FsyncPolicy::Never,
        max_payload: 64 << 10,
        // The smallest bound the configuration takes: about 10 records.
        max_fanout_backlog: 1 << 20,
        // Subscribers are never cut for being slow here.
        max_queued_per_subscriber: 512 << 20,
        ..base_config()
    };
    let hub = Hub::start(cfg).unwrap();
    let url = hub.endpoints()[0].clone();
    let http = hub.http_addr().unwrap().to_string();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut ws = Ws::connect(&http, "/sub");
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let t = std::thread::spawn(move || {
                let mut got = Vec::new();
                // Reads until it has read the last offset (once told it),
                // or nothing came for 10 s.
                let mut last: Option<u64> = None;
                let mut progress = Instant::now();
                loop {
                    if let Ok(l) = rx.try_recv() {
                        last = Some(l);
                    }
                    if last.is_some() && got.last() >= last.as_ref() {
                        return got;
                    }
                    match ws.next_offset() {
                        Some(o) => {
                            got.push(o);
                            progress = Instant::now();
                        }
                        None if progress.elapsed() > Duration::from_secs(10) => return got,
                        None => {}
                    }
                }
            });
            (t, tx)
        })
        .collect();
    wait_for("subscribers registered", || hub.stats().subscribers_ws == 3);
    // Bursts until the core has fallen over its bound at least once.
    let mut p = block(Publisher::connect(
        &url,
        PublisherOptions {
            window: 256,
            ..PublisherOptions::default()
        },
    ))
    .unwrap();
    let mut total = 0u64;
    for _ in 0..20 {
        block(async {
            for _ in 0..BURST {
                p.send("big", vec![7u8; PAYLOAD]).await.unwrap();
            }
            let outs = p.flush().await.unwrap();
            assert!(outs.iter().all(|o| matches!(o, Outcome::Ack { .. })));
        });
        total += BURST as u64;
        if hub.stats().fanout_overflows > 0 {
            break;
        }
    }
    let s = hub.stats();
    eprintln!(
        "{total} records of {PAYLOAD} bytes: {} overflows, backlog {} bytes now",
        s.fanout_overflows, s.fanout_backlog
    );
    assert!(
        s.fanout_overflows > 0,
        "the fan-out never fell behind by 1 MiB in {total} records"
    );
    for (t, tx) in readers {
        tx.send(total - 1).unwrap();
        let got = t.join().unwrap();
        let want: Vec<u64> = (0..total).collect();
        if got != want {
            let dup = got.windows(2).find(|w| w[1] <= w[0]);
            let gap = got.windows(2).find(|w| w[1] > w[0] + 1);
            panic!(
                "{} of {total} delivered; first out of order {dup:?}, first gap {gap:?}, last {:?}",
                got.len(),
                got.last()
            );
        }
    }
    let s = hub.stats();
    assert!(s.replayed > 0, "the skipped records came from the log");
    wait_for("backlog drained", || hub.stats().fanout_backlog == 0);
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
