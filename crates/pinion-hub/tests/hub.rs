//! The hub end to end, in process: real sockets, real log file, real SQLite.

mod common;

use common::base_config;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion::{Message, Options, Protocol, Socket};
use pinion_hub::{FsyncPolicy, Hub, HubConfig};
use pinion_proto::{reply, Code, Message as _, Publish, Reply};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: &std::path::Path) -> HubConfig {
    HubConfig {
        data_dir: dir.to_path_buf(),
        listen: vec![
            "tcp://127.0.0.1:0".into(),
            format!("ipc://{}", dir.join("hub.ipc").display()),
        ],
        threads: 2,
        subscribe: vec!["tcp://127.0.0.1:0".into()],
        http: Some("127.0.0.1:0".into()),
        ..base_config()
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

fn opts(id: u8) -> PublisherOptions {
    PublisherOptions {
        client_id: [id; 16],
        ..PublisherOptions::default()
    }
}

#[test]
fn acks_in_order_offsets_and_duplicates_across_restart() {
    let dir = temp_dir("restart");
    let hub = Hub::start(config(&dir)).unwrap();
    let url = hub.endpoints()[0].clone();
    let offsets: Vec<u64> = block(async {
        let mut p = Publisher::connect(&url, opts(1)).await.unwrap();
        for i in 0..500u32 {
            p.send("t", i.to_be_bytes().to_vec()).await.unwrap();
        }
        let mut outs = p.flush().await.unwrap();
        outs.sort_by_key(|o| o.seq());
        outs.iter()
            .map(|o| match o {
                Outcome::Ack {
                    offset,
                    duplicate: false,
                    ..
                } => *offset,
                other => panic!("expected a fresh ack, got {other:?}"),
            })
            .collect()
    });
    assert_eq!(offsets.len(), 500);
    let distinct: HashSet<u64> = offsets.iter().copied().collect();
    assert_eq!(distinct.len(), 500, "every message got its own offset");
    hub.shutdown();

    // Restart: retries of already-logged seqs are duplicates with the
    // original offsets; the next seq is fresh.
    let hub = Hub::start(config(&dir)).unwrap();
    assert_eq!(hub.start_report().records, 500);
    let url = hub.endpoints()[0].clone();
    block(async {
        let o = PublisherOptions {
            first_seq: 250,
            ..opts(1)
        };
        let mut p = Publisher::connect(&url, o).await.unwrap();
        for expect in [offsets[249], offsets[250]] {
            match p.publish("t", &b"again"[..]).await.unwrap() {
                Outcome::Ack {
                    offset, duplicate, ..
                } => {
                    assert!(duplicate);
                    assert_eq!(offset, expect);
                }
                other => panic!("{other:?}"),
            }
        }
        let o = PublisherOptions {
            first_seq: 501,
            ..opts(1)
        };
        let mut p = Publisher::connect(&url, o).await.unwrap();
        match p.publish("t", &b"new"[..]).await.unwrap() {
            Outcome::Ack {
                offset,
                duplicate: false,
                ..
            } => assert_eq!(offset, 500),
            other => panic!("{other:?}"),
        }
    });
    let s = hub.stats();
    assert_eq!(s.duplicates, 2);
    assert_eq!(s.logged, 1);
    hub.shutdown();
    // The log holds each (client, seq) exactly once.
    let mut r = pinion_journal::Reader::open(&dir.join(pinion_hub::LOG_FILE)).unwrap();
    let mut seen = HashSet::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        assert!(
            seen.insert((rec.client_id, rec.seq)),
            "duplicate record {:?}",
            rec.seq
        );
    }
    assert_eq!(seen.len(), 501);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A raw REQ socket, so tests can send arbitrary bodies.
fn raw_req(url: &str) -> Socket {
    let s = Socket::with_options(
        Protocol::Req0,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap();
    block(s.dial(url)).unwrap();
    s
}

fn ask(s: &Socket, id: u32, body: Vec<u8>) -> Reply {
    block(async {
        let mut m = Message::from_body(body);
        m.header.push_word(id | 0x8000_0000).unwrap();
        s.send_msg(m).await.unwrap();
        let r = s.recv_timeout_msg().await.unwrap();
        Reply::decode(&r.body[..]).unwrap()
    })
}

fn nack_code(r: &Reply) -> Option<Code> {
    match &r.result {
        Some(reply::Result::Nack(n)) => Some(n.code()),
        _ => None,
    }
}

#[test]
fn nacks_keep_the_connection_on_tcp_and_ipc() {
    let dir = temp_dir("nacks");
    let hub = Hub::start(config(&dir)).unwrap();
    for url in hub.endpoints() {
        let s = raw_req(&url);
        let good = |seq: u64, n: usize| {
            Publish {
                client_id: Some(vec![9; 16].into()),
                seq: Some(seq),
                topic: Some("x".into()),
                payload: Some(vec![1; n].into()),
                token: None,
            }
            .encode_to_vec()
        };
        assert_eq!(nack_code(&ask(&s, 1, good(1, 257))), Some(Code::TooLarge));
        assert_eq!(
            nack_code(&ask(&s, 2, b"\xff\xff".to_vec())),
            Some(Code::Malformed)
        );
        let no_id = Publish {
            seq: Some(3),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(nack_code(&ask(&s, 3, no_id)), Some(Code::Malformed));
        // Same connection still works after three NACKs.
        assert_eq!(nack_code(&ask(&s, 4, good(url.len() as u64, 256))), None);
    }
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_concurrent_publishers_each_seq_once() {
    let dir = temp_dir("many");
    let hub = Hub::start(config(&dir)).unwrap();
    let url = hub.endpoints()[0].clone();
    let threads: Vec<_> = (0..16u8)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                block(async {
                    let mut p = Publisher::connect(&url, opts(c)).await.unwrap();
                    for i in 0..300u32 {
                        p.send("load", i.to_le_bytes().to_vec()).await.unwrap();
                    }
                    let outs = p.flush().await.unwrap();
                    assert_eq!(outs.len(), 300);
                    assert!(outs.iter().all(|o| o.is_ack()), "{outs:?}");
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = hub.stats();
    assert_eq!(s.logged, 16 * 300);
    assert!(
        s.commits < s.logged,
        "group commit: {} commits for {} records",
        s.commits,
        s.logged
    );
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn second_hub_on_same_data_dir_is_refused() {
    let dir = temp_dir("lock");
    let hub = Hub::start(config(&dir)).unwrap();
    match Hub::start(config(&dir)) {
        Err(pinion_hub::HubError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second hub started on a locked data dir"),
    }
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fsync_interval_and_never_still_ack_and_recover() {
    for policy in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = temp_dir("policy");
        let mut cfg = config(&dir);
        cfg.fsync = policy;
        let hub = Hub::start(cfg.clone()).unwrap();
        let url = hub.endpoints()[0].clone();
        block(async {
            let mut p = Publisher::connect(&url, opts(3)).await.unwrap();
            for _ in 0..100 {
                p.send("t", &b"m"[..]).await.unwrap();
            }
            assert!(p.flush().await.unwrap().iter().all(|o| o.is_ack()));
        });
        hub.shutdown();
        let hub = Hub::start(cfg).unwrap();
        assert_eq!(hub.start_report().records, 100, "{policy}");
        hub.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A frame announcing more than the hub's frame limit (max_payload + 64
/// KiB) closes that connection before anything is allocated for it, and so
/// does a bad SP handshake; other connections keep working.
#[test]
fn oversize_frame_or_bad_handshake_closes_only_that_connection() {
    use std::io::{Read, Write};
    let dir = temp_dir("frames");
    let hub = Hub::start(config(&dir)).unwrap();
    let url = hub.endpoints()[0].clone();
    let addr = url.trim_start_matches("tcp://").to_string();
    let good = raw_req(&url);
    let publish = |seq: u64| {
        Publish {
            client_id: Some(vec![4; 16].into()),
            seq: Some(seq),
            payload: Some(vec![0; 8].into()),
            ..Default::default()
        }
        .encode_to_vec()
    };
    assert_eq!(nack_code(&ask(&good, 1, publish(1))), None);

    let closed = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        // Read the hub's handshake (8 bytes), then expect EOF or a reset.
        let mut got = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("connection not closed ({got} bytes read): {e}"),
            }
        }
    };
    // 1 GiB announced: refused from the length prefix.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(&[0, b'S', b'P', 0, 0, 0x30, 0, 0]).unwrap(); // REQ
    s.write_all(&(1u64 << 30).to_be_bytes()).unwrap();
    s.write_all(&[0x80, 0, 0, 1]).unwrap();
    assert!(closed(s));
    // Not SP at all.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed(s));
    // The other connection never noticed.
    assert_eq!(nack_code(&ask(&good, 2, publish(2))), None);
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A connection that keeps far more than its in-flight cap queued is paused
/// (its pipe stops being read) and resumed as its requests are answered;
/// every request is still answered, in order of seq per connection, and a
/// second connection is served meanwhile.
#[test]
fn per_connection_cap_pauses_only_that_connection() {
    let dir = temp_dir("cap");
    let mut cfg = config(&dir);
    cfg.max_inflight_bytes_per_conn = 2_000; // ~6 requests of 256 B
    cfg.max_payload = 256;
    let hub = Hub::start(cfg).unwrap();
    let url = hub.endpoints()[0].clone();
    let greedy = {
        let url = url.clone();
        std::thread::spawn(move || {
            block(async {
                let o = PublisherOptions {
                    window: 2000,
                    resend_after: Duration::from_secs(30),
                    ..opts(7)
                };
                let mut p = Publisher::connect(&url, o).await.unwrap();
                for _ in 0..2000 {
                    p.send("greedy", vec![0u8; 256]).await.unwrap();
                }
                let outs = p.flush().await.unwrap();
                assert_eq!(outs.len(), 2000);
                assert!(outs.iter().all(|o| o.is_ack()
                    && !matches!(
                        o,
                        Outcome::Ack {
                            duplicate: true,
                            ..
                        }
                    )));
                // The log order of one connection's requests is its send order.
                let mut by_seq: Vec<(u64, u64)> = outs
                    .iter()
                    .map(|o| match o {
                        Outcome::Ack { seq, offset, .. } => (*seq, *offset),
                        _ => unreachable!(),
                    })
                    .collect();
                by_seq.sort();
                assert!(
                    by_seq.windows(2).all(|w| w[0].1 < w[1].1),
                    "offsets follow seqs"
                );
            })
        })
    };
    // Meanwhile a polite client is served.
    block(async {
        let mut p = Publisher::connect(&url, opts(8)).await.unwrap();
        for _ in 0..50 {
            assert!(p.publish("polite", &b"hi"[..]).await.unwrap().is_ack());
        }
    });
    greedy.join().unwrap();
    let s = hub.stats();
    assert!(
        s.paused > 0,
        "the greedy connection was never paused: {s:?}"
    );
    assert_eq!(s.logged, 2050);
    hub.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
