//! The hub end to end, in process: real sockets, real log file, real SQLite.

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
        ..HubConfig::default()
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
fn nacks_keep_the_connection_and_over_limit_frames_close_it() {
    let dir = temp_dir("nacks");
    let hub = Hub::start(config(&dir)).unwrap();
    for url in hub.endpoints() {
        let s = raw_req(&url);
        let good = |seq: u64, n: usize| {
            Publish {
                client_id: Some(vec![9; 16]),
                seq: Some(seq),
                topic: Some("x".into()),
                payload: Some(vec![1; n]),
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
