//! Edge nodes (issue 13): non-voting learners that replicate the log and
//! serve subscribers as voters do, on real `pinion serve` processes on
//! loopback addresses (127.0.0.41-44 and .51-55, free ports):
//!
//! * `a_learner_catches_up_from_an_empty_data_dir_then_serves_a_resume`:
//!   a learner added to a cluster that already holds messages fills its
//!   empty log from the leader, then serves a WebSocket resume (`from=`,
//!   topic filter: replay, then live) and a TCP SP subscriber, refuses
//!   publishes naming the leader, and is not needed for a commit;
//! * `an_edge_node_killed_mid_stream_its_subscribers_resume_elsewhere`:
//!   behind HAProxy (the configuration in docs/CLUSTER.md: publishers to
//!   the leader only, WebSocket and SP subscribers over every node,
//!   leastconn), an edge node is killed with SIGKILL while publishing goes
//!   on; its WebSocket subscribers (`pinion.js` in Node, and the Rust
//!   `pinion subscribe`, each given several URLs, and subscribers through
//!   HAProxy) resume on other nodes and end with every committed message
//!   once, in order, at its offset.
//!
//! They need `node` (>= 20) and `haproxy`; `scripts/setup-test-env.sh`
//! installs them. Without them these tests fail, saying so.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::Protocol;
use pinion_proto::{reply, Code, Delivery, Message};

use support::*;

/// One delivery a subscriber process printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    offset: u64,
    payload: String,
    node: String,
}

/// A subscriber process (`pinion subscribe` or `edge_sub.mjs`) whose JSON
/// lines a thread collects; stopped by PID when dropped.
struct SubProc {
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    name: String,
}

impl SubProc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> SubProc {
        let err = std::fs::File::create(log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                let v: serde_json::Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                sink.lock().unwrap().push(Line {
                    offset: v["offset"].as_u64().expect("offset"),
                    payload: v["payload_hex"].as_str().expect("payload_hex").to_string(),
                    node: v["node"].as_str().expect("node").to_string(),
                });
            }
        });
        SubProc {
            child,
            lines,
            reader: Some(reader),
            name: name.to_string(),
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for the process to exit by itself (it was given a count),
    /// then returns every line it printed.
    fn finish(mut self, within: Duration) -> Vec<Line> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "{} exited with {st}", self.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {within:?} with {} lines",
                self.name,
                self.count()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reader.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for SubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process stopped (SIGKILL, by its PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rust_subscriber(https: &[&str], topic: &str, from: u64, count: usize) -> Command {
    let mut c = Command::new(PINION);
    c.arg("subscribe");
    for h in https {
        c.arg(format!("--http={h}"));
    }
    c.args([
        format!("--topic={topic}"),
        format!("--from={from}"),
        format!("--count={count}"),
    ]);
    c
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn js_subscriber(https: &[&str], topic: &str, from: u64, count: usize) -> Command {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "node is not runnable: install Node.js >= 20 (scripts/setup-test-env.sh)"
    );
    let mut c = Command::new("node");
    c.arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg(repo_root().join("tests/browser/edge_sub.mjs"));
    for h in https {
        c.arg(format!("--url=ws://{h}"));
    }
    c.args([
        format!("--topic={topic}"),
        format!("--from={from}"),
        format!("--count={count}"),
        "--start-index=0".to_string(),
    ]);
    c
}

/// Every message of a node's log as (offset, payload in hex), for the
/// topics starting with `prefix`.
fn expected(dir: &Path, prefix: &str) -> Vec<(u64, String)> {
    let mut r = pinion_journal::Reader::open(&dir.join("pinion.log")).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == pinion_journal::RecordKind::Message
            && rec.topic.starts_with(prefix.as_bytes())
        {
            let hex: String = rec.payload.iter().map(|b| format!("{b:02x}")).collect();
            out.push((rec.offset, hex));
        }
    }
    out
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn a_learner_catches_up_from_an_empty_data_dir_then_serves_a_resume() {
    let dir = temp_dir("edge-learner");
    let (mut nodes, mut peers) = cluster(&dir, 40);
    let l = leader(&nodes, Duration::from_secs(30));
    let req = req_to(&nodes[&l].spec.publish);
    let client = [4u8; 16];
    let mut offsets = BTreeMap::new(); // seq -> offset
    let mut seq = 0u64;
    let mut publish_some = |req: &Socket, n: u64, offsets: &mut BTreeMap<u64, u64>| {
        for _ in 0..n {
            seq += 1;
            let topic = if seq.is_multiple_of(2) {
                "orders.eu"
            } else {
                "audit"
            };
            let r = publish_to(req, client, seq, topic, &format!("m{seq}"));
            let (off, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
            assert!(!dup);
            offsets.insert(seq, off);
        }
    };
    publish_some(&req, 400, &mut offsets);

    // Node 4 starts with an empty data dir: up (/healthz) but not ready to
    // serve subscribers (/ready) until it is a member and caught up.
    spawn_node(&mut nodes, &mut peers, &dir, (4, 40));
    let (code, why) = http_get(&nodes[&4].spec.http, "/ready").unwrap();
    assert_eq!((code, why.trim()), (503, "no word from a leader yet"));
    // It joins as a learner; `cluster add` returns once it holds every
    // entry the leader had.
    let text = join_node(&nodes, 4, l, "--learner");
    assert!(
        text.contains("voters [[1, 2, 3]], nodes [1, 2, 3, 4]"),
        "{text}"
    );
    let n4 = nodes[&4].spec.http.clone();
    assert_eq!(role(&n4).as_deref(), Some("learner"));
    assert_eq!(try_count(&nodes[&4].spec.dir), Some(400));
    for id in 1..=3 {
        assert_ne!(role(&nodes[&id].spec.http).as_deref(), Some("learner"));
    }
    for id in 1..=4 {
        wait_for("every node ready", Duration::from_secs(10), || {
            http_get(&nodes[&id].spec.http, "/ready").is_some_and(|r| r.0 == 200)
        });
    }
    // The leader reports the learner's lag; it reaches 0.
    let head = cluster_field(&nodes[&l].spec.http, "log_next").unwrap();
    wait_for(
        "the learner applies everything",
        Duration::from_secs(10),
        || cluster_field(&n4, "applied_next").is_some_and(|a| a >= head),
    );
    wait_for(
        "the leader's lag gauge for node 4",
        Duration::from_secs(10),
        || metric(&nodes[&l].spec.http, "pinion_cluster_peer_lag{peer=\"4\"}") == Some(0.0),
    );

    // A learner refuses publishes and names the leader.
    let to_learner = req_to(&nodes[&4].spec.publish);
    match publish(&to_learner, [9; 16], 1, "refused").result {
        Some(reply::Result::Nack(n)) => {
            assert_eq!(n.code(), Code::NotLeader);
            assert_eq!(n.leader.as_deref(), Some(nodes[&l].spec.publish.as_str()));
        }
        other => panic!("a learner answered {other:?}"),
    }

    // A TCP SP subscriber on the learner (live).
    let sub = Socket::with_options(
        Protocol::Sub0,
        pinion::Options {
            recv_buffer: 4096,
            ..timeout_opts()
        },
    )
    .unwrap();
    sub.subscribe("orders").unwrap();
    sub.dial(&nodes[&4].spec.subscribe).unwrap();
    wait_for(
        "the SP subscriber is counted",
        Duration::from_secs(10),
        || metric(&n4, "pinion_subscribers{transport=\"tcp\"}") == Some(1.0),
    );

    // A WebSocket resume on the learner from seq 101's offset, topic
    // "orders": the replay from its log, then live messages.
    let from = offsets[&101];
    let want_orders = 150 + 50; // seqs 102..=400 even, then 401..=500 even
    let ws = SubProc::spawn(
        "pinion subscribe",
        rust_subscriber(&[&n4], "orders", from, want_orders),
        &dir.join("sub.err"),
    );
    wait_for("the replay", Duration::from_secs(20), || ws.count() >= 150);
    publish_some(&req, 100, &mut offsets);
    let got = ws.finish(Duration::from_secs(30));
    let want: Vec<(u64, String)> = offsets
        .iter()
        .filter(|(s, o)| *s % 2 == 0 && **o >= from)
        .map(|(s, o)| (*o, hex(&format!("m{s}"))))
        .collect();
    assert_eq!(want.len(), want_orders);
    let seen: Vec<(u64, String)> = got.iter().map(|l| (l.offset, l.payload.clone())).collect();
    assert_eq!(seen, want, "the learner's resume");
    assert!(got.iter().all(|l| l.node == n4));

    let mut live = Vec::new();
    while live.len() < 50 {
        let m = sub
            .recv()
            .expect("a live delivery on the learner's SP port");
        let at = m.iter().position(|&b| b == 0).unwrap();
        assert!(m[..at].starts_with(b"orders"));
        live.push(Delivery::decode(&m[at + 1..]).unwrap().seq());
    }
    assert_eq!(live, (402..=500).step_by(2).collect::<Vec<u64>>());

    // Not needed for a commit: with the learner killed, publishes are
    // acknowledged as before.
    kill9(&mut nodes, 4);
    publish_some(&req, 20, &mut offsets);
    assert_eq!(offsets.len(), 520);

    for n in nodes.values_mut() {
        stop(n);
    }
    // The learner's log (up to its death) is a prefix of the leader's.
    let leader_log = log_messages(&nodes[&l].spec.dir);
    let learner_log = log_messages(&nodes[&4].spec.dir);
    assert!(learner_log.len() >= 500);
    assert_eq!(learner_log[..], leader_log[..learner_log.len()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HAProxy configuration of docs/CLUSTER.md for these nodes: `pub_port`
/// to the leader, `ws_port` and `sp_port` over every node, leastconn.
fn haproxy_config(
    dir: &Path,
    ip: &str,
    ports: (u16, u16, u16),
    nodes: &BTreeMap<u64, Node>,
) -> PathBuf {
    let (pub_port, ws_port, sp_port) = ports;
    let mut cfg = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n  \
         retries 3\n  option redispatch\n\
         frontend publishers\n  bind {ip}:{pub_port}\n  default_backend leader\n\
         frontend ws_subscribers\n  bind {ip}:{ws_port}\n  default_backend ws_nodes\n\
         frontend sp_subscribers\n  bind {ip}:{sp_port}\n  default_backend sp_nodes\n"
    );
    let addr = |url: &str| url.trim_start_matches("tcp://").to_string();
    let http_port = |n: &Node| n.spec.http.rsplit(':').next().unwrap().to_string();
    cfg.push_str(
        "backend leader\n  option httpchk GET /leader\n  http-check expect status 200\n  \
         default-server inter 100ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
    );
    for (id, n) in nodes {
        cfg.push_str(&format!(
            "  server n{id} {} check port {}\n",
            addr(&n.spec.publish),
            http_port(n)
        ));
    }
    for (name, which) in [("ws_nodes", 0), ("sp_nodes", 1)] {
        cfg.push_str(&format!(
            "backend {name}\n  balance leastconn\n  option httpchk GET /ready\n  \
             http-check expect status 200\n  \
             default-server inter 100ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        ));
        for (id, n) in nodes {
            let target = if which == 0 {
                n.spec.http.clone()
            } else {
                addr(&n.spec.subscribe)
            };
            cfg.push_str(&format!(
                "  server n{id} {target} check port {}\n",
                http_port(n)
            ));
        }
    }
    let p = dir.join("haproxy.cfg");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn an_edge_node_killed_mid_stream_its_subscribers_resume_elsewhere() {
    let ok = Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "haproxy is not runnable: scripts/setup-test-env.sh installs it"
    );
    let dir = temp_dir("edge-kill");
    // Behind a proxy the Host header names the proxy: the nodes are told
    // to answer to it (docs/HARDENING.md).
    let ip = "127.0.0.59";
    let (mut nodes, mut peers) = cluster_with(&dir, 50, &[format!("--allow-host={ip}")]);
    let l = leader(&nodes, Duration::from_secs(30));
    add_node(&mut nodes, &mut peers, &dir, (4, 50, l), "--learner");
    add_node(&mut nodes, &mut peers, &dir, (5, 50, l), "--learner");

    for n in nodes.values() {
        wait_for("every node ready", Duration::from_secs(10), || {
            http_get(&n.spec.http, "/ready").is_some_and(|r| r.0 == 200)
        });
    }
    // HAProxy in front of all five.
    let ports = (free_port(ip), free_port(ip), free_port(ip));
    let cfg = haproxy_config(&dir, ip, ports, &nodes);
    let _haproxy = Killed(
        Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.out")).unwrap())
            .spawn()
            .expect("start haproxy"),
    );
    let front_ws = format!("{ip}:{}", ports.1);
    wait_for("HAProxy finds the leader", Duration::from_secs(10), || {
        http_get(&front_ws, "/healthz").is_some()
    });

    const TOTAL: usize = 3000;
    let e4 = nodes[&4].spec.http.clone();
    let n2 = nodes[&2].spec.http.clone();
    let n3 = nodes[&3].spec.http.clone();
    // From offset 0: every message of this cluster's log.
    let mut subs = vec![
        SubProc::spawn(
            "pinion subscribe (edge 4, then 2)",
            rust_subscriber(&[&e4, &n2], "orders", 0, TOTAL),
            &dir.join("rust.err"),
        ),
        SubProc::spawn(
            "edge_sub.mjs (edge 4, then 3)",
            js_subscriber(&[&e4, &n3], "orders", 0, TOTAL),
            &dir.join("js.err"),
        ),
    ];
    // Five through HAProxy: leastconn puts one on each node.
    for i in 0..5 {
        subs.push(SubProc::spawn(
            &format!("pinion subscribe via HAProxy #{i}"),
            rust_subscriber(&[&front_ws], "orders", 0, TOTAL),
            &dir.join(format!("haproxy-sub-{i}.err")),
        ));
        wait_for(
            "HAProxy spreads the subscriber",
            Duration::from_secs(10),
            || {
                let total: f64 = nodes
                    .values()
                    .filter_map(|n| metric(&n.spec.http, "pinion_subscribers{transport=\"ws\"}"))
                    .sum();
                total >= (3 + i) as f64
            },
        );
    }
    // SP subscribers through HAProxy too: one per node.
    let sps: Vec<Socket> = (0..5)
        .map(|i| {
            let s = Socket::with_options(Protocol::Sub0, timeout_opts()).unwrap();
            s.subscribe("orders").unwrap();
            s.dial(&format!("tcp://{ip}:{}", ports.2)).unwrap();
            wait_for(
                "HAProxy spreads an SP subscriber",
                Duration::from_secs(10),
                || {
                    let total: f64 = nodes
                        .values()
                        .filter_map(|n| {
                            metric(&n.spec.http, "pinion_subscribers{transport=\"tcp\"}")
                        })
                        .sum();
                    total >= (i + 1) as f64
                },
            );
            s
        })
        .collect();
    for (id, n) in &nodes {
        let ws = metric(&n.spec.http, "pinion_subscribers{transport=\"ws\"}").unwrap();
        let sp = metric(&n.spec.http, "pinion_subscribers{transport=\"tcp\"}").unwrap();
        // Two direct subscribers on node 4, and one of HAProxy's on each.
        let want_ws = if *id == 4 { 3.0 } else { 1.0 };
        assert_eq!(ws, want_ws, "node {id}: WebSocket subscribers (leastconn)");
        assert_eq!(sp, 1.0, "node {id}: SP subscribers (leastconn)");
    }
    drop(sps);

    // Publish through HAProxy's leader-only frontend, in a thread.
    let pub_url = format!("tcp://{ip}:{}", ports.0);
    let publisher = std::thread::spawn(move || {
        let req = req_to(&pub_url);
        let mut acked = BTreeMap::new();
        for seq in 1..=TOTAL as u64 {
            let r = publish_to(&req, [6; 16], seq, "orders", &format!("e{seq}"));
            let (off, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
            assert!(!dup);
            acked.insert(seq, off);
            std::thread::sleep(Duration::from_micros(1500));
        }
        acked
    });

    // Mid-stream: kill -9 of edge node 4 once its subscribers are under way.
    wait_for(
        "deliveries from the edge node",
        Duration::from_secs(30),
        || subs[..2].iter().all(|s| s.count() >= 500),
    );
    kill9(&mut nodes, 4);
    let acked = publisher.join().expect("the publisher");
    assert_eq!(acked.len(), TOTAL);

    let want: Vec<(u64, String)> = acked
        .iter()
        .map(|(s, o)| (*o, hex(&format!("e{s}"))))
        .collect();
    for (i, s) in subs.into_iter().enumerate() {
        let name = s.name.clone();
        let got = s.finish(Duration::from_secs(60));
        let seen: Vec<(u64, String)> = got.iter().map(|l| (l.offset, l.payload.clone())).collect();
        assert_eq!(seen.len(), want.len(), "{name}: count");
        assert_eq!(seen, want, "{name}: every message once, in order");
        if i < 2 {
            // It started on the edge node and finished elsewhere.
            let first = &got[0].node;
            let last = &got[got.len() - 1].node;
            assert!(first.contains(&e4), "{name}: first on {first}");
            assert!(!last.contains(&e4), "{name}: last on {last}");
        }
    }
    // The voters' logs agree with what was acknowledged.
    for n in nodes.values_mut() {
        stop(n);
    }
    let logs: Vec<_> = (1..=3)
        .map(|id| expected(&nodes[&id].spec.dir, "orders"))
        .collect();
    assert!(
        logs.iter().all(|x| *x == want),
        "the logs differ from the ACKs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
