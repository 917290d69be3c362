//! The publisher's transient-NACK retries against a scripted hub: NOT_LEADER
//! and UNAVAILABLE are retried with the same seq until an ACK (or until
//! `retry_transient` runs out, when the NACK is returned); other NACKs are
//! returned at once.

use std::time::Duration;

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion::{Message, Options, Protocol, Socket};
use pinion_proto::{Code, Message as _, Publish, Reply};

/// A REP "hub" answering the n-th request (0-based) with `script(n, seq)`.
async fn scripted_hub(
    script: fn(usize, u64) -> Reply,
) -> (String, tokio::task::JoinHandle<Vec<u64>>) {
    let rep = Socket::with_options(
        Protocol::Rep0,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .unwrap();
    let url = rep
        .listen("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .url()
        .to_string();
    let h = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for n in 0.. {
            let Ok(m) = rep.recv_timeout_msg().await else {
                break;
            };
            let seq = Publish::decode(&m.body[..]).unwrap().seq();
            seqs.push(seq);
            let mut out = Message::from_body(script(n, seq).encode_to_vec());
            out.header = m.header;
            if rep.send_msg(out).await.is_err() {
                break;
            }
        }
        seqs
    });
    (url, h)
}

fn opts(retry: Option<Duration>) -> PublisherOptions {
    PublisherOptions {
        retry_transient: retry,
        retry_backoff: Duration::from_millis(10),
        ..PublisherOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_nacks_are_retried_with_the_same_seq() {
    let (url, _hub) = scripted_hub(|n, seq| match n {
        0 => Reply::not_leader(Some(seq), None, "election"),
        1 => Reply::nack(Some(seq), Code::Unavailable, "no quorum"),
        _ => Reply::ack(seq, 40 + n as u64, false),
    })
    .await;
    let mut p = Publisher::connect(&url, opts(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    let o = p.publish("t", &b"x"[..]).await.unwrap();
    assert_eq!(
        o,
        Outcome::Ack {
            seq: 1,
            offset: 42,
            duplicate: false
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_or_for_other_codes_the_nack_is_returned() {
    let (url, _hub) = scripted_hub(|_, seq| Reply::not_leader(Some(seq), None, "election")).await;
    let mut p = Publisher::connect(&url, opts(None)).await.unwrap();
    let o = p.publish("t", &b"x"[..]).await.unwrap();
    assert!(
        matches!(
            o,
            Outcome::Nack {
                code: Code::NotLeader,
                seq: 1,
                ..
            }
        ),
        "{o:?}"
    );

    let (url, hub) = scripted_hub(|_, seq| Reply::nack(Some(seq), Code::TooLarge, "big")).await;
    let mut p = Publisher::connect(&url, opts(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    let o = p.publish("t", &b"x"[..]).await.unwrap();
    assert!(
        matches!(
            o,
            Outcome::Nack {
                code: Code::TooLarge,
                ..
            }
        ),
        "{o:?}"
    );
    p.close();
    drop(hub);

    // Retries stop after retry_transient: the last NACK is returned.
    let (url, _hub) = scripted_hub(|_, seq| Reply::not_leader(Some(seq), None, "election")).await;
    let mut p = Publisher::connect(&url, opts(Some(Duration::from_millis(200))))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let o = p.publish("t", &b"x"[..]).await.unwrap();
    assert!(
        matches!(
            o,
            Outcome::Nack {
                code: Code::NotLeader,
                ..
            }
        ),
        "{o:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_leader_naming_the_leader_is_followed() {
    // The "leader" ACKs everything; the "follower" names it.
    let (leader_url, _leader) = scripted_hub(|_, seq| Reply::ack(seq, 7, false)).await;
    static LEADER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LEADER.set(leader_url.clone()).unwrap();
    let (follower_url, _follower) =
        scripted_hub(|_, seq| Reply::not_leader(Some(seq), LEADER.get().cloned(), "not me")).await;
    let mut p = Publisher::connect(&follower_url, opts(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    for _ in 0..3 {
        p.send("t", &b"x"[..]).await.unwrap();
    }
    let outcomes = p.flush().await.unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Ack { offset: 7, .. })),
        "{outcomes:?}"
    );
    assert_eq!(p.url(), leader_url);
}
