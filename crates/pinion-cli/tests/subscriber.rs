//! The Rust library subscriber (`pinion::subscriber`) against real
//! `pinion serve` processes: a three-node cluster on 127.0.0.71-73 (free
//! ports), the subscriber given a dead URL first and then every node,
//! starting on a follower; that follower is killed with SIGKILL (by PID)
//! while messages are published to the leader; every acknowledged message
//! of its topics arrives once, in order, at its acknowledged offset, the
//! first ones through the killed follower and the last ones elsewhere.
//! (The fake-hub tests of the same subscriber: crates/pinion/tests/subscriber.rs;
//! `pinion subscribe` on top of it: tests/edge.rs and tests/nemesis.rs.)

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pinion::subscriber::{Error, Event, SubscriberOptions};
use pinion::Bytes;

use support::*;

#[test]
fn a_follower_killed_mid_stream_the_subscriber_resumes_on_another_node() {
    let dir = temp_dir("lib-subscriber");
    let (mut nodes, _peers) = cluster(&dir, 70);
    let l = leader(&nodes, Duration::from_secs(30));
    let followers: Vec<u64> = nodes.keys().copied().filter(|&id| id != l).collect();
    let f = followers[0];
    // Nothing listens there.
    let dead = format!("ws://127.0.0.74:{}", free_port("127.0.0.74"));
    let urls = vec![
        dead,
        format!("ws://{}", nodes[&f].spec.http),
        format!("ws://{}", nodes[&followers[1]].spec.http),
        format!("ws://{}", nodes[&l].spec.http),
    ];
    let mut sub = pinion::blocking::Subscriber::connect(SubscriberOptions {
        topics: vec![Bytes::from_static(b"lib/")],
        from: Some(0),
        start_index: Some(0),
        ..SubscriberOptions::new(urls.clone())
    })
    .expect("a node accepts the subscription");
    match sub.next_event().unwrap() {
        Event::Disconnected {
            node: 0,
            error: Error::Transport(e),
            next_node: 1,
            ..
        } => assert_eq!(e.io_kind(), Some(std::io::ErrorKind::ConnectionRefused)),
        other => panic!("the dead URL first: {other:?}"),
    }
    assert!(matches!(
        sub.next_event().unwrap(),
        Event::Connected { node: 1, next: 0 }
    ));
    assert_eq!(sub.node(), urls[1]);

    // Publish to the leader in a thread: topic lib/… and, between them,
    // another topic the subscriber must not get.
    const TOTAL: u64 = 1500;
    let pub_url = nodes[&l].spec.publish.clone();
    let publisher = std::thread::spawn(move || {
        let req = req_to(&pub_url);
        let mut acked = BTreeMap::new();
        let mut seq = 0;
        for i in 1..=TOTAL {
            seq += 1;
            let r = publish_to(&req, [0x5b; 16], seq, "lib/orders", &format!("m{i}"));
            let (off, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
            assert!(!dup);
            acked.insert(off, format!("m{i}"));
            if i.is_multiple_of(10) {
                seq += 1;
                let r = publish_to(&req, [0x5b; 16], seq, "other", "not for it");
                assert!(ack(&r).is_some(), "{r:?}");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        acked
    });

    let mut got: Vec<(u64, String, usize)> = Vec::new();
    let mut killed = false;
    let mut moves = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < TOTAL as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = sub
            .next_event_timeout(left)
            .unwrap()
            .unwrap_or_else(|| panic!("only {} deliveries within 120 s", got.len()));
        match ev {
            Event::Delivery(d) => {
                let node = sub.node_index().unwrap();
                got.push((
                    d.offset,
                    String::from_utf8(d.payload.to_vec()).unwrap(),
                    node,
                ));
                assert!(d.topic.starts_with(b"lib/"), "{d:?}");
                if !killed && got.len() >= 300 {
                    assert_eq!(node, 1, "still on the follower");
                    kill9(&mut nodes, f);
                    killed = true;
                }
            }
            Event::Disconnected { node, error, .. } => moves.push((node, error.to_string())),
            Event::Connected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let acked = publisher.join().expect("the publisher");
    assert!(killed);
    assert!(
        moves.iter().any(|(n, _)| *n == 1),
        "the subscriber left the killed follower: {moves:?}"
    );
    let want: Vec<(u64, String)> = acked.into_iter().collect();
    let seen: Vec<(u64, String)> = got.iter().map(|(o, p, _)| (*o, p.clone())).collect();
    assert_eq!(seen.len(), want.len());
    assert_eq!(seen, want, "every acknowledged message once, in order");
    assert_eq!(got[0].2, 1, "the first through the follower");
    assert_ne!(got[got.len() - 1].2, 1, "the last elsewhere");
    assert_eq!(sub.next_offset(), Some(got[got.len() - 1].0 + 1));
    eprintln!(
        "moves: {moves:?}; duplicates dropped: {}",
        sub.dropped_duplicates()
    );
    sub.close();
    for n in nodes.values_mut() {
        stop(n);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
