//! The hub as a three-node cluster of real `pinion serve` processes on
//! loopback addresses (127.0.0.11-13, free ports): ACK from the leader only,
//! NOT_LEADER naming the leader from the others, a subscriber on a
//! follower seeing every committed message once and in order, kill -9 of
//! the leader and a new one elected, resends answered as duplicates at
//! their original offsets, the old leader restarted and caught up,
//! identical logs that verify. And `pinion cluster local`.
//!
//! The network-namespace + HAProxy nemesis test is separate (issue 12).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::Protocol;
use pinion_proto::{reply, Code, Delivery, Message, Publish, Reply};

const PINION: &str = env!("CARGO_BIN_EXE_pinion");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-cli-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let t = String::from_utf8_lossy(&buf).into_owned();
    let code = t.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        t.split_once("\r\n\r\n").map_or("", |x| x.1).to_string(),
    ))
}

struct NodeSpec {
    id: u64,
    publish: String,
    subscribe: String,
    http: String,
    raft: String,
    dir: PathBuf,
}

struct Node {
    spec: NodeSpec,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(spec: &NodeSpec, peers: &[String], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node-{}.out", spec.id)))
        .unwrap();
    Command::new(PINION)
        .arg("serve")
        .arg(format!("--data-dir={}", spec.dir.display()))
        .arg(format!("--listen={}", spec.publish))
        .arg(format!("--subscribe={}", spec.subscribe))
        .arg(format!("--http={}", spec.http))
        .arg(format!("--node-id={}", spec.id))
        .arg(format!("--raft={}", spec.raft))
        .args(peers)
        .args(["--threads=1", "--stats-every=0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn pinion serve")
}

/// The node answering `/leader` 200 (waits up to `within`).
fn leader(nodes: &BTreeMap<u64, Node>, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        for (id, n) in nodes {
            if n.child.is_some() && http_get(&n.spec.http, "/leader").is_some_and(|r| r.0 == 200) {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish(req: &Socket, client: [u8; 16], seq: u64, payload: &str) -> Reply {
    let p = Publish {
        client_id: Some(client.to_vec().into()),
        seq: Some(seq),
        topic: Some("orders".into()),
        payload: Some(payload.as_bytes().to_vec().into()),
    };
    req.send(p.encode_to_vec()).unwrap();
    Reply::decode(req.recv().unwrap()).unwrap()
}

fn ack(r: &Reply) -> Option<(u64, bool)> {
    match &r.result {
        Some(reply::Result::Ack(a)) => Some((a.offset(), a.duplicate())),
        _ => None,
    }
}

fn timeout_opts() -> pinion::Options {
    pinion::Options {
        recv_timeout: Some(Duration::from_secs(10)),
        ..pinion::Options::default()
    }
}

fn req_to(url: &str) -> Socket {
    let s = Socket::with_options(Protocol::Req0, timeout_opts()).unwrap();
    s.dial(url).unwrap();
    s
}

/// Every message in a node's log: (offset, client, seq, payload).
fn log_messages(dir: &Path) -> Vec<(u64, [u8; 16], u64, Vec<u8>)> {
    let mut r = pinion_journal::Reader::open(&dir.join("pinion.log")).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == pinion_journal::RecordKind::Message {
            out.push((rec.offset, rec.client_id, rec.seq, rec.payload.to_vec()));
        }
    }
    out
}

#[test]
fn three_processes_ack_on_commit_fail_over_and_agree() {
    let dir = temp_dir("three");
    // Every node up (its HTTP port answers), then a leader.
    let (mut nodes, peers) = cluster(&dir, 10);
    let first = leader(&nodes, Duration::from_secs(30));
    let follower = *nodes.keys().find(|&&id| id != first).unwrap();

    // A subscriber on a follower, from the start of the log.
    // Read only at the end: a SUB socket drops what does not fit its
    // receive queue (as NNG's does), so make it hold every delivery.
    let sub_opts = pinion::Options {
        recv_buffer: 4096,
        ..timeout_opts()
    };
    let sub = Socket::with_options(Protocol::Sub0, sub_opts).unwrap();
    sub.subscribe("").unwrap();
    sub.dial(&nodes[&follower].spec.subscribe).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // A follower refuses and names the leader.
    let to_follower = req_to(&nodes[&follower].spec.publish);
    let r = publish(&to_follower, [9; 16], 1, "refused");
    match &r.result {
        Some(reply::Result::Nack(n)) => {
            assert_eq!(n.code(), Code::NotLeader);
            assert_eq!(
                n.leader.as_deref(),
                Some(nodes[&first].spec.publish.as_str())
            );
        }
        other => panic!("a follower answered {other:?}"),
    }

    // The leader acknowledges; offsets increase.
    let client = [7u8; 16];
    let to_leader = req_to(&nodes[&first].spec.publish);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // seq -> offset
    for seq in 1..=200u64 {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        let (offset, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
        assert!(!dup);
        acked.insert(seq, offset);
    }

    // kill -9 of the leader; another node takes over.
    let t0 = Instant::now();
    {
        let n = nodes.get_mut(&first).unwrap();
        let mut c = n.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let second = leader(&nodes, Duration::from_secs(30));
    let failover = t0.elapsed();
    assert_ne!(second, first);
    let to_leader = req_to(&nodes[&second].spec.publish);
    // Resends of committed messages: duplicates at their original offsets.
    for (&seq, &offset) in &acked {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        assert_eq!(ack(&r), Some((offset, true)), "resend of seq {seq}: {r:?}");
    }
    for seq in 201..=250u64 {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        let (offset, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
        assert!(!dup);
        acked.insert(seq, offset);
    }

    // The old leader comes back with the same flags and catches up.
    {
        let n = nodes.get_mut(&first).unwrap();
        n.child = Some(start(&n.spec, &peers, &dir));
    }
    let last = *acked.values().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = nodes.values().all(|n| {
            http_get(&n.spec.http, "/cluster").is_some_and(|(_, b)| {
                let k = "\"applied_next\":";
                b.find(k)
                    .and_then(|at| {
                        b[at + k.len()..]
                            .split([',', '}'])
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .is_some_and(|a| a > last)
            })
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The subscriber on the follower (which never went down) saw every
    // committed message once, in order, at its offset.
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let m = sub
            .recv()
            .unwrap_or_else(|e| panic!("a delivery after {} of {}: {e}", seen.len(), acked.len()));
        let at = m
            .iter()
            .position(|&b| b == 0)
            .expect("topic, NUL, delivery");
        let d = Delivery::decode(&m[at + 1..]).unwrap();
        seen.push((d.seq(), d.offset()));
    }
    let want: Vec<(u64, u64)> = acked.iter().map(|(s, o)| (*s, *o)).collect();
    assert_eq!(seen, want);

    // Stop everything gracefully; the logs are identical and verify.
    for n in nodes.values_mut() {
        if let Some(c) = &n.child {
            pinion_runtime_terminate(c.id());
        }
    }
    for n in nodes.values_mut() {
        if let Some(mut c) = n.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "node {} did not stop on SIGTERM",
                    n.spec.id
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let logs: Vec<_> = nodes.values().map(|n| log_messages(&n.spec.dir)).collect();
    assert_eq!(
        logs[0].len(),
        acked.len(),
        "each acked message exactly once"
    );
    for (seq, off) in &acked {
        let hits: Vec<_> = logs[0]
            .iter()
            .filter(|m| m.1 == client && m.2 == *seq)
            .collect();
        assert_eq!(hits.len(), 1, "seq {seq}");
        assert_eq!(hits[0].0, *off);
        assert_eq!(hits[0].3, format!("m{seq}").into_bytes());
    }
    assert!(logs.iter().all(|l| *l == logs[0]), "the three logs differ");
    for n in nodes.values() {
        let out = Command::new(PINION)
            .args(["log", "verify"])
            .arg(n.spec.dir.join("pinion.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("failover: kill -9 of the leader to /leader 200 elsewhere in {failover:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn pinion_runtime_terminate(pid: u32) {
    pinion_runtime::sys::terminate(pid).unwrap();
}

#[test]
fn cluster_local_prints_every_node_and_stops_them_all() {
    let dir = temp_dir("local");
    let mut parent = Command::new(PINION)
        .args([
            "cluster",
            "local",
            "--nodes",
            "3",
            "--learners",
            "1",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    for id in 1..=4 {
        let line = lines.next().expect("a line per node").unwrap();
        let role = if id == 4 { "learner" } else { "voter" };
        assert!(line.contains(&format!("\"role\":\"{role}\"")), "{line}");
        for key in [
            "\"id\"",
            "\"pid\"",
            "\"publish\"",
            "\"subscribe\"",
            "\"http\"",
            "\"data_dir\"",
        ] {
            assert!(line.contains(key), "{line}");
        }
        assert!(line.contains(&format!("\"id\":{id},")), "{line}");
        assert!(line.contains(&format!("tcp://127.0.0.{id}:7450")), "{line}");
        let pid: u32 = line
            .split("\"pid\":")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        pids.push(pid);
    }
    // Exactly one leader.
    let leaders = (1..=3)
        .filter(|i| http_get(&format!("127.0.0.{i}:7452"), "/leader").is_some_and(|r| r.0 == 200))
        .count();
    assert_eq!(leaders, 1);
    // The learner holds the log (it was added only once caught up) and
    // never leads.
    let (code, body) = http_get("127.0.0.4:7452", "/cluster").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"role\":\"learner\""), "{body}");
    pinion_runtime_terminate(parent.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while parent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cluster local did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        // Gone, or a zombie of a parent that exited (reaped by init).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "node {pid} still runs: {stat}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three nodes on 127.0.0.{base+1..base+3}, started, every node up.
fn cluster(dir: &Path, base: u8) -> (BTreeMap<u64, Node>, Vec<String>) {
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let ip = format!("127.0.0.{}", u64::from(base) + id);
        let spec = NodeSpec {
            id,
            publish: format!("tcp://{ip}:{}", free_port(&ip)),
            subscribe: format!("tcp://{ip}:{}", free_port(&ip)),
            http: format!("{ip}:{}", free_port(&ip)),
            raft: format!("tcp://{ip}:{}", free_port(&ip)),
            dir: dir.join(format!("node-{id}")),
        };
        nodes.insert(id, Node { spec, child: None });
    }
    let peers: Vec<String> = nodes
        .values()
        .map(|n| {
            let s = &n.spec;
            format!(
                "--peer={}={},{},{},{}",
                s.id, s.raft, s.publish, s.subscribe, s.http
            )
        })
        .collect();
    for n in nodes.values_mut() {
        n.child = Some(start(&n.spec, &peers, dir));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes.values() {
        while http_get(&n.spec.http, "/healthz").is_none_or(|r| r.0 != 200) {
            assert!(
                Instant::now() < deadline,
                "node {} did not come up",
                n.spec.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (nodes, peers)
}

fn stop(n: &mut Node) {
    if let Some(mut c) = n.child.take() {
        pinion_runtime::sys::terminate(c.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "node {} did not stop", n.spec.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A byte flipped in the middle of a follower's log: without the flag the
/// node refuses to start (corruption is never skipped); with
/// `--rebuild-damaged-log` it moves the file aside (kept, byte for byte)
/// and rejoins, and the leader fills its log again: identical to the
/// others, verified.
#[test]
fn a_follower_with_a_damaged_log_rebuilds_from_the_leader() {
    let dir = temp_dir("rebuild");
    let (mut nodes, peers) = cluster(&dir, 20);
    let l = leader(&nodes, Duration::from_secs(30));
    let f = *nodes.keys().find(|&&id| id != l).unwrap();
    let req = req_to(&nodes[&l].spec.publish);
    for seq in 1..=300u64 {
        let r = publish(&req, [5; 16], seq, &format!("m{seq}"));
        assert!(ack(&r).is_some(), "{r:?}");
    }
    // Let the follower apply everything, then stop it and damage its log.
    std::thread::sleep(Duration::from_millis(500));
    stop(nodes.get_mut(&f).unwrap());
    let log = nodes[&f].spec.dir.join("pinion.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let valid = pinion_journal::verify(&log).unwrap().valid_bytes as usize;
    bytes[valid / 2] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();
    assert!(
        pinion_journal::verify(&log).is_err(),
        "the flip went unnoticed"
    );

    // Without the flag: refused, nothing touched.
    let out = Command::new(PINION)
        .arg("serve")
        .arg(format!("--data-dir={}", nodes[&f].spec.dir.display()))
        .arg(format!("--listen={}", nodes[&f].spec.publish))
        .arg(format!("--subscribe={}", nodes[&f].spec.subscribe))
        .arg(format!("--http={}", nodes[&f].spec.http))
        .arg(format!("--node-id={f}"))
        .arg(format!("--raft={}", nodes[&f].spec.raft))
        .args(&peers)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes);

    // With it: the damaged file is kept aside, the node rejoins.
    {
        let n = nodes.get_mut(&f).unwrap();
        let mut args = peers.clone();
        args.push("--rebuild-damaged-log".into());
        n.child = Some(start(&n.spec, &args, &dir));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader_log = nodes[&l].spec.dir.clone();
    loop {
        if try_count(&nodes[&f].spec.dir) == Some(300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let aside: Vec<_> = std::fs::read_dir(&nodes[&f].spec.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pinion.log.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged log is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes);
    for n in nodes.values_mut() {
        stop(n);
    }
    assert_eq!(log_messages(&nodes[&f].spec.dir), log_messages(&leader_log));
    let out = Command::new(PINION)
        .args(["log", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(format!("node-{f}.out"))).unwrap();
    assert!(text.contains("THE LOG IS DAMAGED"), "logged loudly");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages in a node's log, or None while it cannot be read whole.
fn try_count(dir: &Path) -> Option<usize> {
    let mut r = pinion_journal::Reader::open(&dir.join("pinion.log")).ok()?;
    let mut n = 0;
    while let Some(rec) = r.next() {
        if rec.ok()?.kind == pinion_journal::RecordKind::Message {
            n += 1;
        }
    }
    Some(n)
}

fn run_pinion(args: &[String]) -> (bool, String) {
    let out = Command::new(PINION).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `pinion cluster add` (learner, caught up, then voter) and `remove` on a
/// live cluster, with publishing before and after each change and no ACK
/// lost.
#[test]
fn membership_changes_on_a_live_cluster() {
    let dir = temp_dir("members");
    let (mut nodes, mut peers) = cluster(&dir, 30);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut publish_some = |nodes: &BTreeMap<u64, Node>, from: u64, n: u64| {
        let l = leader(nodes, Duration::from_secs(30));
        let req = req_to(&nodes[&l].spec.publish);
        for seq in from..from + n {
            let r = publish(&req, [3; 16], seq, &format!("m{seq}"));
            let (off, _) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
            acked.insert(seq, off);
        }
    };
    publish_some(&nodes, 1, 100);

    // Node 4, started on its own (its log empty; it does not form a cluster).
    let ip = "127.0.0.34";
    let spec = NodeSpec {
        id: 4,
        publish: format!("tcp://{ip}:{}", free_port(ip)),
        subscribe: format!("tcp://{ip}:{}", free_port(ip)),
        http: format!("{ip}:{}", free_port(ip)),
        raft: format!("tcp://{ip}:{}", free_port(ip)),
        dir: dir.join("node-4"),
    };
    peers.push(format!(
        "--peer=4={},{},{},{}",
        spec.raft, spec.publish, spec.subscribe, spec.http
    ));
    let child = start(&spec, &peers, &dir);
    nodes.insert(
        4,
        Node {
            spec,
            child: Some(child),
        },
    );
    let s4 = &nodes[&4].spec;
    let (ok, text) = run_pinion(&[
        "cluster".into(),
        "add".into(),
        format!("--raft={}", nodes[&2].spec.raft),
        "--id=4".into(),
        format!("--node-raft={}", s4.raft),
        format!("--publish={}", s4.publish),
        format!("--subscribe={}", s4.subscribe),
        format!("--http={}", s4.http),
        "--voter".into(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("voters [[1, 2, 3, 4]]"), "{text}");
    let mut r = pinion_journal::Reader::open(&nodes[&4].spec.dir.join("pinion.log")).unwrap();
    let mut n4 = 0;
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == pinion_journal::RecordKind::Message {
            n4 += 1;
        }
    }
    assert_eq!(n4, 100, "the learner caught up before it votes");
    publish_some(&nodes, 101, 100);

    // Remove node 2 (whatever its role).
    let (ok, text) = run_pinion(&[
        "cluster".into(),
        "remove".into(),
        format!("--raft={}", nodes[&3].spec.raft),
        "--id=2".into(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("voters [[1, 3, 4]]"), "{text}");
    stop(nodes.get_mut(&2).unwrap());
    nodes.remove(&2);
    publish_some(&nodes, 201, 100);

    // Every ACK is in the logs of 1, 3 and 4, at its offset; they agree.
    std::thread::sleep(Duration::from_millis(500));
    for n in nodes.values_mut() {
        stop(n);
    }
    let logs: Vec<_> = nodes.values().map(|n| log_messages(&n.spec.dir)).collect();
    assert!(logs.iter().all(|l| *l == logs[0]), "the logs differ");
    let got: BTreeMap<u64, u64> = logs[0].iter().map(|m| (m.2, m.0)).collect();
    assert_eq!(got, acked);
    let _ = std::fs::remove_dir_all(&dir);
}
