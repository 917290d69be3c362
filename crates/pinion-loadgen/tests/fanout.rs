//! `pinion bench fanout` end to end at a small scale against the real hub
//! (`pinion serve`, started by the bench from the `pinion` binary of this
//! workspace, built here if missing): every WebSocket subscriber gets every
//! message, in order, the hub counts them and then counts them gone, and the
//! hub process and its data dir are gone afterwards. No timing is asserted.

mod support;
use support::pinion_exe;

use pinion_loadgen::{pid_exists, run_fanout, FanoutArgs};

#[test]
fn every_subscriber_gets_every_message() {
    let exe = pinion_exe();
    let json = tempfile::NamedTempFile::new().unwrap();
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "200",
        "--messages",
        "5",
        "--interval-ms",
        "10",
        "--deliver-timeout",
        "20",
        "--no-progress",
        "--json",
        json.path().to_str().unwrap(),
    ])
    .unwrap();
    let summaries = run_fanout(&args, &exe).unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!(s.connections, 200);
    assert_eq!(s.runs.len(), 1);
    let r = &s.runs[0];
    assert!(
        r.complete(),
        "not every subscriber got every message: {r:#?}"
    );
    assert_eq!(r.missing, 0);
    assert_eq!(r.subscribers_missing, 0);
    assert_eq!(r.steady.messages, 5);
    assert_eq!(r.steady.subscribers, 200);
    assert_eq!(r.steady.delivered, 5 * 200, "{r:#?}");
    assert_eq!(r.steady.expected, 5 * 200);
    assert!(
        r.steady.to_all_ms.iter().all(Option::is_some),
        "a message did not reach every subscriber: {:?}",
        r.steady.to_all_ms
    );
    assert!(r.with_slow.is_none());
    // The hub's memory was read (the bench started it, so it knows its PID).
    assert!(r.hub_rss_before.is_some() && r.hub_rss_connected.is_some());
    assert!(
        r.close_secs.is_some(),
        "the hub still counted subscribers after they closed"
    );
    let pid = r.hub_pid.expect("hub started by the bench");
    assert!(!pid_exists(pid), "hub pid {pid} still exists");
    let dir = r.data_dir.as_ref().expect("data dir");
    assert!(!dir.exists(), "{} not removed", dir.display());
    let text = std::fs::read_to_string(json.path()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tool"], "pinion bench fanout");
    assert_eq!(v["results"][0]["runs"][0]["missing"], 0);
}

/// Slow subscribers: a few that never read, pushed past the hub's 1 MiB
/// queue bound. The reading ones still get everything.
#[test]
fn slow_subscribers_do_not_cost_the_others_messages() {
    let exe = pinion_exe();
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "50",
        "--messages",
        "4",
        "--interval-ms",
        "10",
        "--slow",
        "3",
        "--slow-fill-kib",
        "16384",
        "--fill-size",
        "65536",
        "--no-progress",
    ])
    .unwrap();
    let summaries = run_fanout(&args, &exe).unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    let r = &summaries[0].runs[0];
    assert!(r.complete(), "{r:#?}");
    let slow = r.with_slow.as_ref().expect("a phase with slow subscribers");
    assert_eq!(slow.delivered, 4 * 50, "{r:#?}");
    assert_eq!(r.steady.delivered, 4 * 50, "{r:#?}");
    // 16 MiB at each of them is past the kernel's buffers (the send buffer
    // autotunes up to net.ipv4.tcp_wmem's max, 4 MiB by default) plus the
    // hub's 1 MiB queue bound.
    assert_eq!(r.slow_disconnects, Some(3), "{r:#?}");
}

/// Per-topic mode against the real hub: 50 subscribers on 10 topics (5
/// each) plus 20 idle ones, 200 paced publishes/s for 2 s (after 0.5 s of
/// warm-up), each to a random topic. Every subscriber gets exactly its
/// topic's messages, once each, in order, and the deliveries add up to the
/// subscribers of each published message's topic.
#[test]
fn per_topic_subscribers_get_exactly_their_topics_messages() {
    let exe = pinion_exe();
    let json = tempfile::NamedTempFile::new().unwrap();
    let (n, k, idle) = (50usize, 10usize, 20usize);
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        &n.to_string(),
        "--topics",
        &k.to_string(),
        "--idle",
        &idle.to_string(),
        "--rate",
        "200",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--deliver-timeout",
        "20",
        "--no-progress",
        "--json",
        json.path().to_str().unwrap(),
    ])
    .unwrap();
    let summaries = run_fanout(&args, &exe).unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!((s.connections, s.idle), (n, idle));
    assert_eq!(s.per_topic_failures(), 0, "{s:#?}");
    let r = &s.runs[0];
    assert!(r.complete(), "{r:#?}");
    let t = r.per_topic.as_ref().expect("per-topic figures");
    assert_eq!(t.topics, k);
    assert_eq!((t.missing, t.duplicates, t.misrouted), (0, 0, 0), "{t:#?}");
    assert_eq!((t.out_of_order, t.offset_mismatches), (0, 0), "{t:#?}");
    assert_eq!(t.subscribers_missing, 0);
    assert_eq!(r.missing, 0);
    assert!(t.nacks.is_empty(), "{:?}", t.nacks);
    // 200/s for 2 s measured, 0.5 s warm-up: every one sent and ACKed.
    assert_eq!((t.warmup_messages, t.scheduled), (100, 400));
    assert_eq!((t.sent, t.published), (400, 400));
    // Deliveries: per published message, the subscribers of its topic
    // (subscriber i is on topic i % k), counted here independently.
    assert_eq!(t.published_per_topic.len(), k);
    assert_eq!(t.published_per_topic.iter().sum::<u64>(), 500);
    let subs_on = |j: usize| (0..n).filter(|i| i % k == j).count() as u64;
    let due: u64 = t
        .published_per_topic
        .iter()
        .enumerate()
        .map(|(j, &p)| p * subs_on(j))
        .sum();
    assert_eq!(due, 500 * 5);
    assert_eq!(t.expected_all, due, "{t:#?}");
    assert_eq!(t.delivered_all, due, "{t:#?}");
    // The measured window: 400 messages to 5 subscribers each.
    assert_eq!(r.steady.delivered, 400 * 5, "{r:#?}");
    assert_eq!(r.steady.expected, 400 * 5);
    assert!(r.steady.latency_us.p50 > 0.0 && r.steady.ack_us.p50 > 0.0);
    assert!(t.publishes_per_sec > 0.0 && t.deliveries_per_sec > 0.0);
    // Every topic got some (500 seeded picks among 10).
    assert!(t.published_per_topic.iter().all(|&p| p > 0), "{t:#?}");
    // The idle subscribers got nothing and were not closed.
    assert!(r.idle_errors.is_empty() && r.idle_closed_by_hub.is_empty());
    // The hub was started and stopped by the bench; its CPU was read.
    assert!(t.hub_cpu_us_per_publish.is_some());
    let pid = r.hub_pid.expect("hub started by the bench");
    assert!(!pid_exists(pid), "hub pid {pid} still exists");
    let text = std::fs::read_to_string(json.path()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["args"]["topics"], 10);
    assert_eq!(v["args"]["idle"][0], 20);
    assert_eq!(v["results"][0]["idle"], 20);
    assert_eq!(v["results"][0]["per_topic"]["duplicates"], 0);
    assert_eq!(v["results"][0]["runs"][0]["per_topic"]["missing"], 0);
    assert_eq!(v["results"][0]["runs"][0]["per_topic"]["published"], 400);
}

/// `--topics all`: one topic per subscriber, over a series of two sizes
/// (K follows each run's N); ratios and the targets table are printed.
#[test]
fn per_topic_all_follows_each_runs_subscribers() {
    let exe = pinion_exe();
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "20,40",
        "--topics",
        "all",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--no-progress",
    ])
    .unwrap();
    let summaries = run_fanout(&args, &exe).unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    assert_eq!(summaries.len(), 2);
    for (s, n) in summaries.iter().zip([20usize, 40]) {
        let r = &s.runs[0];
        assert!(r.complete(), "{r:#?}");
        let t = r.per_topic.as_ref().unwrap();
        assert_eq!(t.topics, n);
        // One subscriber per topic: one delivery per message.
        assert_eq!(t.delivered_all, 100, "{t:#?}");
        assert_eq!(r.steady.delivered, 100);
        assert_eq!(s.per_topic.as_ref().unwrap().topics, n);
    }
}
