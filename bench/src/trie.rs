//! SUB matching cost with many subscriptions: pinion's sub0 state machine
//! (a byte trie) against a linear scan of the same topics (what NNG 1.x's
//! sub0 does: a list walked with `memcmp` for every message).

use std::time::{Duration, Instant};

use pinion_core::protocol::{self, CtxId, Output, PipeId, ProtocolKind};
use pinion_core::{Message, Options};

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct TrieSample {
    pub trie_ns_per_msg: f64,
    pub linear_ns_per_msg: f64,
}

fn topics(n: usize) -> Vec<Vec<u8>> {
    // Realistic-looking hierarchical topics: "sensor/<site>/<id>/".
    (0..n)
        .map(|i| format!("sensor/{}/{}/", i % 97, i).into_bytes())
        .collect()
}

pub fn run(subs: usize, msgs: usize) -> TrieSample {
    let now = Instant::now();
    let t = topics(subs);
    let mut sub = protocol::new(ProtocolKind::Sub0, &Options::default());
    sub.add_pipe(PipeId(1), 0x20, 1, now).unwrap();
    for topic in &t {
        sub.subscribe(CtxId::SOCKET, topic).unwrap();
    }
    // Half the messages match some topic, half match none.
    let bodies: Vec<bytes::Bytes> = (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                let mut b = t[(i * 7919) % subs].clone();
                b.extend_from_slice(b"reading=42");
                bytes::Bytes::from(b)
            } else {
                bytes::Bytes::from(format!("sensor/{}/x{}/reading", i % 97, i))
            }
        })
        .collect();

    let start = Instant::now();
    let mut delivered = 0usize;
    for i in 0..msgs {
        sub.handle_message(
            PipeId(1),
            Message::from_body(bodies[i % bodies.len()].clone()),
            now,
        );
        while let Some(o) = sub.poll_output() {
            if matches!(o, Output::Deliver { .. }) {
                delivered += 1;
            }
        }
    }
    let trie = start.elapsed();

    let start = Instant::now();
    let mut linear_hits = 0usize;
    for i in 0..msgs {
        let body = &bodies[i % bodies.len()];
        if t.iter().any(|topic| body.starts_with(topic)) {
            linear_hits += 1;
        }
    }
    let linear = start.elapsed();
    assert_eq!(delivered, linear_hits, "trie and linear scan disagree");
    let per = |d: Duration| d.as_nanos() as f64 / msgs as f64;
    TrieSample {
        trie_ns_per_msg: per(trie),
        linear_ns_per_msg: per(linear),
    }
}
