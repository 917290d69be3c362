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
