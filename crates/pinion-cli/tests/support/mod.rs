//! What the cluster and edge-node tests share: real `pinion serve`
//! processes on loopback addresses with free ports, started and stopped by
//! PID, and a REQ publisher.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::Protocol;
use pinion_proto::{reply, Message, Publish, Reply};

pub const PINION: &str = env!("CARGO_BIN_EXE_pinion");

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-cli-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
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

pub struct NodeSpec {
    pub id: u64,
    pub publish: String,
    pub subscribe: String,
    pub http: String,
    pub raft: String,
    pub dir: PathBuf,
}

impl NodeSpec {
    /// Node `id` on 127.0.0.{base + id}, free ports, data in `dir/node-<id>`.
    pub fn on(id: u64, base: u8, dir: &Path) -> NodeSpec {
        let ip = format!("127.0.0.{}", u64::from(base) + id);
        NodeSpec {
            id,
            publish: format!("tcp://{ip}:{}", free_port(&ip)),
            subscribe: format!("tcp://{ip}:{}", free_port(&ip)),
            http: format!("{ip}:{}", free_port(&ip)),
            raft: format!("tcp://{ip}:{}", free_port(&ip)),
            dir: dir.join(format!("node-{id}")),
        }
    }
}

pub struct Node {
    pub spec: NodeSpec,
    pub child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn start(spec: &NodeSpec, peers: &[String], dir: &Path) -> Child {
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
        // Several nodes share the CPUs: unpinned (see `pin_threads`).
        .args(["--threads=1", "--stats-every=0", "--pin-threads=false"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn pinion serve")
}

/// The node answering `/leader` 200 (waits up to `within`).
pub fn leader(nodes: &BTreeMap<u64, Node>, within: Duration) -> u64 {
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

pub fn publish(req: &Socket, client: [u8; 16], seq: u64, payload: &str) -> Reply {
    publish_to(req, client, seq, "orders", payload)
}

pub fn publish_to(req: &Socket, client: [u8; 16], seq: u64, topic: &str, payload: &str) -> Reply {
    let p = Publish {
        client_id: Some(client.to_vec().into()),
        seq: Some(seq),
        topic: Some(topic.into()),
        payload: Some(payload.as_bytes().to_vec().into()),
        token: None,
    };
    req.send(p.encode_to_vec()).unwrap();
    Reply::decode(req.recv().unwrap()).unwrap()
}

pub fn ack(r: &Reply) -> Option<(u64, bool)> {
    match &r.result {
        Some(reply::Result::Ack(a)) => Some((a.offset(), a.duplicate())),
        _ => None,
    }
}

pub fn timeout_opts() -> pinion::Options {
    pinion::Options {
        recv_timeout: Some(Duration::from_secs(10)),
        ..pinion::Options::default()
    }
}

pub fn req_to(url: &str) -> Socket {
    let s = Socket::with_options(Protocol::Req0, timeout_opts()).unwrap();
    s.dial(url).unwrap();
    s
}

/// Every message in a node's log: (offset, client, seq, payload).
pub fn log_messages(dir: &Path) -> Vec<(u64, [u8; 16], u64, Vec<u8>)> {
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

/// Three nodes on 127.0.0.{base+1..base+3}, started, every node up.
pub fn cluster(dir: &Path, base: u8) -> (BTreeMap<u64, Node>, Vec<String>) {
    cluster_with(dir, base, &[])
}

/// [`cluster`], every node also given `extra` flags (kept in the returned
/// argument list, so nodes added later get them too).
pub fn cluster_with(dir: &Path, base: u8, extra: &[String]) -> (BTreeMap<u64, Node>, Vec<String>) {
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let spec = NodeSpec::on(id, base, dir);
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
        .chain(extra.iter().cloned())
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

pub fn stop(n: &mut Node) {
    if let Some(mut c) = n.child.take() {
        pinion_runtime::sys::terminate(c.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "node {} did not stop", n.spec.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Messages in a node's log, or None while it cannot be read whole.
pub fn try_count(dir: &Path) -> Option<usize> {
    let mut r = pinion_journal::Reader::open(&dir.join("pinion.log")).ok()?;
    let mut n = 0;
    while let Some(rec) = r.next() {
        if rec.ok()?.kind == pinion_journal::RecordKind::Message {
            n += 1;
        }
    }
    Some(n)
}

pub fn run_pinion(args: &[String]) -> (bool, String) {
    let out = Command::new(PINION).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A number field of a node's `/cluster` JSON.
pub fn cluster_field(http: &str, key: &str) -> Option<u64> {
    let (_, b) = http_get(http, "/cluster")?;
    let k = format!("\"{key}\":");
    let at = b.find(&k)? + k.len();
    b[at..].split([',', '}']).next()?.parse().ok()
}

/// A node's role as its `/cluster` names it.
pub fn role(http: &str) -> Option<String> {
    let (_, b) = http_get(http, "/cluster")?;
    let at = b.find("\"role\":\"")? + 8;
    Some(b[at..].split('"').next()?.to_string())
}

/// A gauge or counter of a node's `/metrics` (the first line starting
/// with `series`, e.g. `pinion_subscribers{transport="ws"}`).
pub fn metric(http: &str, series: &str) -> Option<f64> {
    let (_, b) = http_get(http, "/metrics")?;
    b.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Node `id` on 127.0.0.{base + id} with an empty data dir, started (it
/// does not form a cluster: its id is not the smallest) and its `--peer`
/// flag added to `peers`. Waits until its HTTP port answers.
pub fn spawn_node(
    nodes: &mut BTreeMap<u64, Node>,
    peers: &mut Vec<String>,
    dir: &Path,
    (id, base): (u64, u8),
) {
    let spec = NodeSpec::on(id, base, dir);
    peers.push(format!(
        "--peer={id}={},{},{},{}",
        spec.raft, spec.publish, spec.subscribe, spec.http
    ));
    let child = start(&spec, peers, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&spec.http, "/healthz").is_none_or(|r| r.0 != 200) {
        assert!(Instant::now() < deadline, "node {id} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes.insert(
        id,
        Node {
            spec,
            child: Some(child),
        },
    );
}

/// `pinion cluster add` of node `id` through node `via` (`role`:
/// `--learner` or `--voter`); it returns once the node holds every entry
/// the leader had. Returns what it printed.
pub fn join_node(nodes: &BTreeMap<u64, Node>, id: u64, via: u64, role: &str) -> String {
    let s = &nodes[&id].spec;
    let (ok, text) = run_pinion(&[
        "cluster".into(),
        "add".into(),
        format!("--raft={}", nodes[&via].spec.raft),
        format!("--id={id}"),
        format!("--node-raft={}", s.raft),
        format!("--publish={}", s.publish),
        format!("--subscribe={}", s.subscribe),
        format!("--http={}", s.http),
        role.into(),
    ]);
    assert!(ok, "cluster add {id}: {text}");
    text
}

/// [`spawn_node`], then [`join_node`].
pub fn add_node(
    nodes: &mut BTreeMap<u64, Node>,
    peers: &mut Vec<String>,
    dir: &Path,
    (id, base, via): (u64, u8, u64),
    role: &str,
) -> String {
    spawn_node(nodes, peers, dir, (id, base));
    join_node(nodes, id, via, role)
}

/// Kills node `id` with SIGKILL (no shutdown of any kind) and reaps it.
pub fn kill9(nodes: &mut BTreeMap<u64, Node>, id: u64) {
    let n = nodes.get_mut(&id).unwrap();
    let mut c = n.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
}
