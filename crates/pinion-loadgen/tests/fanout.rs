//! `pinion bench fanout` end to end at a small scale against the real hub
//! (`pinion serve`, started by the bench from the `pinion` binary of this
//! workspace, built here if missing): every WebSocket subscriber gets every
//! message, in order, the hub counts them and then counts them gone, and the
//! hub process and its data dir are gone afterwards. No timing is asserted.

mod support;
use support::pinion_exe;

use std::time::{Duration, Instant};

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

/// A stand-in for the hub's fan-out (`--hub-url`/`--http-url`): SP REP
/// publishers (ACK with offsets 0, 1, 2, ...), `/metrics` counting the
/// WebSocket subscribers, `/sub?topic=P` with byte-prefix filters and the
/// hub's `topic 0x00 Delivery` frames, and one fault of each kind on the
/// paced messages (`seq - 1` = message index): one delivery dropped, one
/// sent twice, one also sent to a subscriber of another topic.
mod stand_in {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use pinion_proto::{Delivery, Message, Publish, Reply};

    #[derive(Clone, Copy)]
    pub struct Faults {
        pub drop: u64,
        pub duplicate: u64,
        pub misroute: u64,
    }

    #[derive(Default)]
    struct State {
        next_sub: AtomicU64,
        next_offset: AtomicU64,
        subs: Mutex<Vec<(u64, Vec<u8>, TcpStream)>>,
    }

    /// `(hub url, http url)`.
    pub fn start(faults: Faults) -> (String, String) {
        let st = Arc::new(State::default());
        let sp = TcpListener::bind("127.0.0.1:0").unwrap();
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let urls = (
            format!("tcp://{}", sp.local_addr().unwrap()),
            format!("http://{}", http.local_addr().unwrap()),
        );
        let s1 = st.clone();
        std::thread::spawn(move || {
            for c in sp.incoming().flatten() {
                let st = s1.clone();
                std::thread::spawn(move || publisher(c, &st, faults));
            }
        });
        std::thread::spawn(move || {
            for c in http.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || web(c, &st));
            }
        });
        urls
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = vec![0x82];
        match body.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(body);
        f
    }

    fn publisher(mut s: TcpStream, st: &State, faults: Faults) {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() || h != [0, b'S', b'P', 0, 0, 0x30, 0, 0] {
            return;
        }
        s.write_all(&[0, b'S', b'P', 0, 0, 0x31, 0, 0]).unwrap();
        let mut len = [0u8; 8];
        while s.read_exact(&mut len).is_ok() {
            let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            let p = Publish::decode(&body[4..]).unwrap();
            let topic = p.topic.clone().unwrap_or_default();
            let seq = p.seq.unwrap_or(0);
            let offset = st.next_offset.fetch_add(1, Ordering::Relaxed);
            let d = Delivery {
                offset: Some(offset),
                seq: Some(seq),
                client_id: p.client_id.clone(),
                payload: p.payload.clone(),
                ..Delivery::default()
            };
            let mut msg = topic.clone().into_bytes();
            msg.push(0);
            msg.extend_from_slice(&d.encode_to_vec());
            let f = frame(&msg);
            let paced = topic.starts_with("t.");
            let m = seq.wrapping_sub(1);
            {
                let mut subs = st.subs.lock().unwrap();
                let mut first = true;
                for (_, filter, sub) in subs.iter_mut() {
                    if !topic.as_bytes().starts_with(filter) {
                        continue;
                    }
                    let nth = std::mem::replace(&mut first, false);
                    if paced && nth && m == faults.drop {
                        continue;
                    }
                    let _ = sub.write_all(&f);
                    if paced && nth && m == faults.duplicate {
                        let _ = sub.write_all(&f);
                    }
                }
                if paced && m == faults.misroute {
                    if let Some((_, _, sub)) = subs
                        .iter_mut()
                        .find(|(_, filter, _)| !topic.as_bytes().starts_with(filter))
                    {
                        let _ = sub.write_all(&f);
                    }
                }
            }
            let r = Reply::ack(seq, offset, false).encode_to_vec();
            let mut out = ((4 + r.len()) as u64).to_be_bytes().to_vec();
            out.extend_from_slice(&body[..4]);
            out.extend_from_slice(&r);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn web(mut s: TcpStream, st: &State) {
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if path == "/metrics" {
            let n = st.subs.lock().unwrap().len();
            let body = format!(
                "pinion_subscribers{{transport=\"ws\"}} {n}\npinion_slow_disconnects_total 0\n"
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        let filter = path
            .strip_prefix("/sub?topic=")
            .expect("a /sub request with one topic")
            .as_bytes()
            .to_vec();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .unwrap();
        let id = st.next_sub.fetch_add(1, Ordering::Relaxed);
        st.subs
            .lock()
            .unwrap()
            .push((id, filter, s.try_clone().unwrap()));
        // Gone when the bench closes it.
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        st.subs.lock().unwrap().retain(|(i, _, _)| *i != id);
    }
}

/// The per-topic checks against a stand-in hub that drops one delivery,
/// sends one twice and one to a subscriber of another topic: each is
/// counted, the run is incomplete and reported as a failure.
#[test]
fn per_topic_checks_catch_missing_duplicate_and_misrouted_deliveries() {
    let (hub_url, http_url) = stand_in::start(stand_in::Faults {
        drop: 5,
        duplicate: 6,
        misroute: 7,
    });
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "6",
        "--topics",
        "3",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--deliver-timeout",
        "1",
        "--hub-url",
        &hub_url,
        "--http-url",
        &http_url,
        "--no-progress",
    ])
    .unwrap();
    let summaries = run_fanout(&args, std::path::Path::new("/nonexistent/pinion"))
        .unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    let s = &summaries[0];
    let r = &s.runs[0];
    let t = r.per_topic.as_ref().unwrap();
    assert_eq!((t.sent, t.published), (50, 50), "{t:#?}");
    // 50 messages, 2 subscribers per topic.
    assert_eq!(t.expected_all, 100, "{t:#?}");
    assert_eq!(t.delivered_all, 100 - 1 + 1 + 1, "{t:#?}");
    assert_eq!((t.missing, t.subscribers_missing), (1, 1), "{t:#?}");
    assert_eq!(t.duplicates, 1, "{t:#?}");
    assert_eq!(t.misrouted, 1, "{t:#?}");
    assert_eq!((t.out_of_order, t.offset_mismatches), (0, 0), "{t:#?}");
    assert_eq!(r.missing, 1);
    assert!(!t.complete() && !r.complete());
    assert_eq!(s.per_topic_failures(), 1);
    assert_eq!(s.per_topic.as_ref().unwrap().incomplete_runs, 1);
    assert!(r.hub_pid.is_none(), "nothing started");
}

/// `--nodes 3 --learners 1`: a local cluster of three voters and one
/// learner, 300 subscribers spread over all four nodes and held by three
/// worker processes (at most 100 each, forced with the hidden
/// `--worker-connections`). Every subscriber gets every message, in order,
/// once; every node held its share and delivered it; the leader and the
/// learner are told apart; the nodes and the workers are gone afterwards.
#[test]
fn multi_node_broadcast_reaches_every_subscriber_on_every_node() {
    let exe = pinion_exe();
    let json = tempfile::NamedTempFile::new().unwrap();
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "300",
        "--nodes",
        "3",
        "--learners",
        "1",
        "--worker-connections",
        "100",
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
    let s = &summaries[0];
    assert_eq!(s.failures(), 0, "{s:#?}");
    let r = &s.runs[0];
    assert!(
        r.complete(),
        "not every subscriber got every message: {r:#?}"
    );
    assert_eq!((r.missing, r.duplicates, r.out_of_order), (0, 0, 0));
    assert_eq!(r.steady.delivered, 5 * 300, "{r:#?}");
    assert!(r.steady.to_all_ms.iter().all(Option::is_some), "{r:#?}");
    assert_eq!(r.workers, 3, "300 subscribers at most 100 per worker");
    assert_eq!(r.nodes.len(), 4, "{r:#?}");
    for n in &r.nodes {
        assert_eq!(n.subscribers, 75, "node {}: {n:#?}", n.id);
        assert_eq!(n.deliveries, 5 * 75, "node {}: {n:#?}", n.id);
        assert_eq!((n.missing, n.duplicates), (0, 0), "node {}", n.id);
        assert!(n.rss_connected.is_some(), "node {}: no RSS", n.id);
    }
    let roles: Vec<&str> = r.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(
        roles.iter().filter(|x| **x == "leader").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(r.nodes[3].role, "learner", "{roles:?}");
    for pid in r
        .nodes
        .iter()
        .filter_map(|n| n.pid)
        .chain(r.worker_pids.clone())
    {
        assert!(!pid_exists(pid), "pid {pid} still exists");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    assert_eq!(v["results"][0]["runs"][0]["nodes"][3]["role"], "learner");
    assert_eq!(v["results"][0]["runs"][0]["duplicates"], 0);
}

/// Per-topic mode over `--nodes 3`: one topic per subscriber, two workers;
/// every subscriber gets exactly its topic's messages on whichever node it
/// is.
#[test]
fn multi_node_per_topic_delivers_exactly_each_topic() {
    let exe = pinion_exe();
    let args = FanoutArgs::parse_from([
        "fanout",
        "--connections",
        "120",
        "--nodes",
        "3",
        "--worker-connections",
        "60",
        "--topics",
        "all",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--no-progress",
    ])
    .unwrap();
    let summaries = run_fanout(&args, &exe).unwrap_or_else(|e| panic!("bench fanout failed: {e}"));
    let s = &summaries[0];
    assert_eq!(s.failures(), 0, "{s:#?}");
    let r = &s.runs[0];
    let t = r.per_topic.as_ref().expect("per-topic figures");
    assert!(r.complete(), "{r:#?}");
    assert_eq!(t.published, 200);
    assert_eq!(t.delivered_all, t.expected_all);
    assert_eq!(r.workers, 2);
    assert_eq!(r.nodes.len(), 3);
    assert!(
        r.nodes.iter().all(|n| n.subscribers == 40),
        "{:#?}",
        r.nodes
    );
    let delivered: u64 = r.nodes.iter().map(|n| n.deliveries).sum();
    assert!(
        delivered > 0 && delivered <= t.delivered_all,
        "{:#?}",
        r.nodes
    );
}

/// The `pinion` children of `parent`: (pid, whether it is a subscriber
/// worker, `bench fanout-worker`).
fn pinion_children(parent: u32) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("PPid:").as_deref() == Some(&parent.to_string())
            && field("Name:").as_deref() == Some("pinion")
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let worker = String::from_utf8_lossy(&cmd).contains("fanout-worker");
            out.push((pid, worker));
        }
    }
    out
}

/// Ctrl-C during a multi-node run: the bench stops every node and every
/// subscriber worker by PID and ends with `Interrupted`. Runs in a child
/// process (this test binary again) so the signal hits only that process.
#[test]
fn sigint_stops_every_node_and_worker() {
    if std::env::var_os("PINION_LOADGEN_FANOUT_SIGINT_CHILD").is_some() {
        let args = FanoutArgs::parse_from([
            "fanout",
            "--connections",
            "200",
            "--nodes",
            "3",
            "--worker-connections",
            "100",
            "--messages",
            "1000",
            "--interval-ms",
            "100",
            "--no-progress",
        ])
        .unwrap();
        let e = run_fanout(&args, &pinion_exe()).unwrap_err();
        assert!(
            matches!(e, pinion_loadgen::LoadgenError::Interrupted),
            "{e}"
        );
        std::process::exit(42);
    }
    pinion_exe(); // built before the child looks for it
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigint_stops_every_node_and_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PINION_LOADGEN_FANOUT_SIGINT_CHILD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its 3 nodes and 2 workers (publishing has begun by then).
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        let c = pinion_children(child.id());
        if c.iter().filter(|(_, w)| *w).count() == 2 && c.len() == 5 {
            break c;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no 3 nodes + 2 workers appeared: {c:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill sends a signal to our own child; no memory involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the bench did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(42),
        "child should see Interrupted: {status}"
    );
    for (pid, worker) in seen {
        assert!(
            !pid_exists(pid),
            "{} {pid} survived",
            if worker { "worker" } else { "node" }
        );
    }
}
