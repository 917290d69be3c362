//! The cluster under a nemesis, in real network namespaces (issue 12).
//!
//! Topology, created and removed by the test (it needs root, as CI runs):
//! a bridge in its own namespace; three nodes, each in its own namespace
//! on a veth to the bridge (10.77.0.11-13); a client namespace
//! (10.77.0.100) running HAProxy (TCP mode, health-checked on `/leader`,
//! sessions to a server marked down are shut) and 50 publishers
//! (`pinion publish --retry-for`, each its own client id) going through
//! it, and two resuming subscribers (`pinion subscribe`, WebSocket, from
//! offset 0) attached to followers directly, each moving to the next node
//! with `from = last + 1` when its node goes away.
//!
//! The nemesis, while the publishers keep going: kill -9 of the leader at
//! random moments, then its restart (10 times); SIGSTOP of the leader for
//! longer than the election timeout, then SIGCONT; the leader's link cut
//! (veth down) with a publisher inside its namespace that must get no ACK,
//! then the link healed.
//!
//! The checker, after everything caught up and stopped: every ACKed
//! (client id, seq) is in every node's log exactly once, at the offset its
//! ACK named, with the bytes sent; the three logs are identical; nothing
//! was ACKed from the minority side; every subscriber saw every committed
//! message exactly once, in offset order, each as in the log;
//! `pinion log verify` passes on every node.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PINION: &str = env!("CARGO_BIN_EXE_pinion");
const PUBLISHERS: usize = 50;
const KILLS: usize = 10;

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links of one run; removed on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Node `i`'s address.
    fn addr(i: u64) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    fn create() -> Net {
        let prefix = format!("pn{}-", std::process::id() % 100_000);
        let net = Net { prefix };
        let br = net.ns("br");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        let hosts: Vec<(String, String)> = (1..=3)
            .map(|i| (format!("n{i}"), Net::addr(i)))
            .chain(std::iter::once((
                "cl".to_string(),
                "10.77.0.100".to_string(),
            )))
            .collect();
        for (k, (name, addr)) in hosts.iter().enumerate() {
            let ns = net.ns(name);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // veth names: at most 15 bytes, unique per run.
            let (a, b) = (format!("{}{k}a", net.prefix), format!("{}{k}b", net.prefix));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &br]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &a]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
            ip(&["-n", &br, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &b, "up"]);
        }
        net
    }

    /// The bridge-side end of node `i`'s veth (cutting it isolates the node).
    fn node_link(&self, i: u64) -> String {
        format!("{}{}b", self.prefix, i - 1)
    }

    fn set_link(&self, i: u64, up: bool) {
        let br = self.ns("br");
        let link = self.node_link(i);
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            &link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in ["n1", "n2", "n3", "cl", "br"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(name)])
                .output();
        }
    }
}

/// A process in a namespace, SIGKILLed on drop if still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

struct Cluster {
    net: Net,
    dir: PathBuf,
    peers: Vec<String>,
    nodes: BTreeMap<u64, Option<Proc>>,
}

impl Cluster {
    fn start_node(&mut self, i: u64) {
        let a = Net::addr(i);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{i}.out")))
            .unwrap();
        let child = in_ns(&self.net.ns(&format!("n{i}")), PINION)
            .arg("serve")
            .arg(format!(
                "--data-dir={}",
                self.dir.join(format!("node-{i}")).display()
            ))
            .arg(format!("--listen=tcp://{a}:7450"))
            .arg(format!("--subscribe=tcp://{a}:7451"))
            .arg(format!("--http={a}:7452"))
            .arg(format!("--node-id={i}"))
            .arg(format!("--raft=tcp://{a}:7460"))
            .args(&self.peers)
            .args(["--threads=1", "--stats-every=0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start a node");
        self.nodes.insert(i, Some(Proc(child)));
    }

    /// A node's `/cluster` JSON, asked from the client namespace.
    fn status(&self, i: u64) -> Option<String> {
        let out = in_ns(&self.net.ns("cl"), PINION)
            .args([
                "cluster",
                "status",
                "--json",
                "--http",
                &format!("{}:7452", Net::addr(i)),
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node that serves as leader (its /leader would answer 200).
    fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            for (&i, p) in &self.nodes {
                if p.is_some()
                    && self
                        .status(i)
                        .is_some_and(|s| s.contains("\"serving_leader\":true"))
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn applied_next(&self, i: u64) -> u64 {
        self.status(i)
            .and_then(|s| {
                let k = "\"applied_next\":";
                let at = s.find(k)? + k.len();
                s[at..].split([',', '}']).next()?.parse().ok()
            })
            .unwrap_or(0)
    }
}

/// What one publisher process reported: seq → offset of its ACKs, and
/// how many NACKs.
#[derive(Default, Debug)]
struct PubLog {
    acks: HashMap<u64, u64>,
    nacks: u64,
    /// ACKs of one seq with different offsets (must stay empty).
    conflicts: Vec<(u64, u64, u64)>,
}

/// Each publisher: its client id, what it reported, its process.
type Publishers = Vec<([u8; 16], Arc<Mutex<PubLog>>, Proc)>;

fn spawn_publisher(
    ns: &str,
    url: &str,
    client: [u8; 16],
    args: &[&str],
    sink: Arc<Mutex<PubLog>>,
) -> Proc {
    let hex: String = client.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = in_ns(ns, PINION)
        .args([
            "publish",
            "--url",
            url,
            "--topic",
            "nemesis",
            "--client-id",
            &hex,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a publisher");
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // "ack seq=N offset=M[ duplicate]" / "nack seq=N code=…"
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let mut log = sink.lock().unwrap();
            if line.starts_with("ack ") {
                let (Some(seq), Some(off)) = (field("seq="), field("offset=")) else {
                    continue;
                };
                if let Some(prev) = log.acks.insert(seq, off) {
                    if prev != off {
                        log.conflicts.push((seq, prev, off));
                    }
                }
            } else if line.starts_with("nack ") {
                log.nacks += 1;
            }
        }
    });
    Proc(child)
}

/// A subscriber's deliveries: (offset, client, seq, payload).
type Seen = Arc<Mutex<Vec<(u64, [u8; 16], u64, Vec<u8>)>>>;

/// The value of `"key":` in one of `pinion subscribe`'s JSON lines
/// (numbers and strings without escapes, which is all this test reads).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[at..];
    if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next()
    } else {
        rest.split([',', '}']).next()
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| *c != '-').collect();
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A resuming subscriber (`pinion subscribe` over WebSocket) that starts on
/// `nodes[0]` from offset 0 and moves to the next node, resuming after its
/// last offset, whenever its node goes away.
fn spawn_subscriber(ns: &str, nodes: &[u64], seen: Seen) -> Proc {
    let mut cmd = in_ns(ns, PINION);
    cmd.args(["subscribe", "--from", "0"]);
    for i in nodes {
        cmd.arg("--http").arg(format!("{}:7452", Net::addr(*i)));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a subscriber");
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let (Some(off), Some(cl), Some(seq), Some(p)) = (
                field(&line, "offset").and_then(|v| v.parse::<u64>().ok()),
                field(&line, "client_id"),
                field(&line, "seq").and_then(|v| v.parse::<u64>().ok()),
                field(&line, "payload_hex"),
            ) else {
                panic!("a subscriber line without its fields: {line}");
            };
            let mut c = [0u8; 16];
            let cl = hex(cl);
            if cl.len() == 16 {
                c.copy_from_slice(&cl);
            }
            seen.lock().unwrap().push((off, c, seq, hex(p)));
        }
    });
    Proc(child)
}

/// Every message of a node's log: offset → (client, seq, payload).
fn log_messages(path: &Path) -> BTreeMap<u64, ([u8; 16], u64, Vec<u8>)> {
    let mut r = pinion_journal::Reader::open(path).unwrap();
    let mut out = BTreeMap::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == pinion_journal::RecordKind::Message {
            out.insert(rec.offset, (rec.client_id, rec.seq, rec.payload.to_vec()));
        }
    }
    out
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn haproxy_config(dir: &Path) -> PathBuf {
    let mut cfg = String::from(
        "global\n  maxconn 4096\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 120s\n  timeout server 120s\n\
         frontend publishers\n  bind 127.0.0.1:7450\n  default_backend leader\n\
         backend leader\n  option httpchk GET /leader\n  http-check expect status 200\n\
           default-server inter 100ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
    );
    for i in 1..=3 {
        cfg.push_str(&format!(
            "  server n{i} {}:7450 check port 7452\n",
            Net::addr(i)
        ));
    }
    let p = dir.join("haproxy.cfg");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn cluster_under_nemesis_loses_no_ack() {
    // Real namespaces need root (CI runs as root); say so instead of
    // pretending to pass.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(1) == Some("0"),
        "this test creates network namespaces and needs root (as CI runs it)"
    );
    for tool in ["ip", "haproxy"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed (scripts/setup-test-env.sh installs it)"
        );
    }
    let dir = std::env::temp_dir().join(format!("pinion-nemesis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let net = Net::create();
    let peers: Vec<String> = (1..=3)
        .map(|i| {
            let a = Net::addr(i);
            format!("--peer={i}=tcp://{a}:7460,tcp://{a}:7450,tcp://{a}:7451,{a}:7452")
        })
        .collect();
    let mut c = Cluster {
        net,
        dir: dir.clone(),
        peers,
        nodes: BTreeMap::new(),
    };
    for i in 1..=3 {
        c.start_node(i);
    }
    let _ = c.leader(Duration::from_secs(60));
    let cl = c.net.ns("cl");
    let haproxy_cfg = haproxy_config(&dir);
    let _haproxy = Proc(
        in_ns(&cl, "haproxy")
            .arg("-f")
            .arg(&haproxy_cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    std::thread::sleep(Duration::from_millis(500));

    // Subscribers on two nodes; publishers through HAProxy.
    let subs: Vec<(u64, Seen, Proc)> = [[2u64, 3, 1], [3, 1, 2]]
        .into_iter()
        .map(|nodes| {
            let seen: Seen = Arc::default();
            let p = spawn_subscriber(&cl, &nodes, seen.clone());
            (nodes[0], seen, p)
        })
        .collect();
    let mut publishers: Publishers = Vec::new();
    for k in 0..PUBLISHERS {
        let mut client = [0u8; 16];
        client[..8].copy_from_slice(&(k as u64 + 1).to_le_bytes());
        client[15] = 0x4e;
        let log: Arc<Mutex<PubLog>> = Arc::default();
        let p = spawn_publisher(
            &cl,
            "tcp://127.0.0.1:7450",
            client,
            &[
                "--data",
                "payload-of-the-nemesis",
                "--count",
                "1000000000",
                "--window",
                "2",
                "--retry-for",
                "60",
            ],
            log.clone(),
        );
        publishers.push((client, log, p));
    }
    let acked = |publishers: &Publishers| -> usize {
        publishers
            .iter()
            .map(|p| p.1.lock().unwrap().acks.len())
            .sum()
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        acked(&publishers) > 0,
        "nothing was acknowledged before the nemesis started"
    );

    let mut rng = Lcg(std::process::id() as u64 ^ 0x9e37_79b9);
    let mut failovers = Vec::new();
    // 1. kill -9 of the leader at random moments, then a restart.
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(300 + rng.next(1200)));
        let l = c.leader(Duration::from_secs(30));
        let before = acked(&publishers);
        let t0 = Instant::now();
        if let Some(mut p) = c.nodes.get_mut(&l).and_then(Option::take) {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
        let next = c.leader(Duration::from_secs(30));
        assert_ne!(next, l);
        failovers.push(t0.elapsed());
        c.start_node(l);
        // Progress again through the new leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked(&publishers) <= before {
            assert!(
                Instant::now() < deadline,
                "no ACK after the kill of node {l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // 2. SIGSTOP the leader beyond the election timeout, then SIGCONT.
    let l = c.leader(Duration::from_secs(30));
    let pid = c.nodes[&l].as_ref().unwrap().0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let other = c.leader(Duration::from_secs(30));
    assert_ne!(other, l, "a new leader while the old one is stopped");
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // 3. Cut the leader's link; a publisher on its side gets no ACK.
    std::thread::sleep(Duration::from_secs(1));
    let l = c.leader(Duration::from_secs(30));
    c.net.set_link(l, false);
    let minority: Arc<Mutex<PubLog>> = Arc::default();
    let mut cut_client = [0u8; 16];
    cut_client[0] = 0xC7;
    let url = format!("tcp://{}:7450", Net::addr(l));
    let out = in_ns(&c.net.ns(&format!("n{l}")), PINION)
        .args([
            "publish", "--url", &url, "--topic", "minority", "--data", "cut-off", "--count", "20",
            "--window", "20",
        ])
        .args([
            "--client-id",
            &cut_client
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        assert!(
            !line.starts_with("ack "),
            "an ACK from the minority side: {line}"
        );
        if line.starts_with("nack ") {
            minority.lock().unwrap().nacks += 1;
        }
    }
    assert!(
        text.lines().all(|l| !l.starts_with("nack ")
            || l.contains("UNAVAILABLE")
            || l.contains("NOT_LEADER")),
        "{text}"
    );
    assert_eq!(minority.lock().unwrap().nacks, 20, "{text}");
    let before = acked(&publishers);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked(&publishers) <= before {
        assert!(
            Instant::now() < deadline,
            "the majority side made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.net.set_link(l, true);
    std::thread::sleep(Duration::from_secs(2));

    // Stop the publishers, let every node catch up, stop the nodes.
    for (_, _, p) in &publishers {
        let _ = pinion_runtime::sys::terminate(p.0.id());
    }
    std::thread::sleep(Duration::from_millis(500));
    let head = (1..=3).map(|i| c.applied_next(i)).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (1..=3).any(|i| c.applied_next(i) < head) {
        assert!(Instant::now() < deadline, "nodes did not converge");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The subscribers catch up (their deliveries stop growing).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        let now: Vec<usize> = subs
            .iter()
            .map(|(_, s, _)| s.lock().unwrap().len())
            .collect();
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "the subscribers did not settle");
        last = now;
        std::thread::sleep(Duration::from_secs(2));
    }
    for p in c.nodes.values().flatten() {
        let _ = pinion_runtime::sys::terminate(p.0.id());
    }
    for p in c.nodes.values_mut().flatten() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // The checker.
    let logs: Vec<_> = (1..=3)
        .map(|i| log_messages(&dir.join(format!("node-{i}/pinion.log"))))
        .collect();
    assert!(logs.iter().all(|l| *l == logs[0]), "the nodes' logs differ");
    let log = &logs[0];
    let mut count: HashMap<([u8; 16], u64), u32> = HashMap::new();
    for (client, seq, _) in log.values() {
        *count.entry((*client, *seq)).or_insert(0) += 1;
    }
    let mut total = 0;
    for (client, plog, _) in &publishers {
        let plog = plog.lock().unwrap();
        assert!(
            plog.conflicts.is_empty(),
            "ACKs of one seq at two offsets: {:?}",
            plog.conflicts
        );
        for (&seq, &off) in &plog.acks {
            total += 1;
            let rec = log
                .get(&off)
                .unwrap_or_else(|| panic!("ACKed offset {off} is not in the log"));
            assert_eq!(
                (&rec.0, rec.1),
                (client, seq),
                "offset {off} holds another message"
            );
            assert_eq!(rec.2, b"payload-of-the-nemesis");
            assert_eq!(count[&(*client, seq)], 1, "seq {seq} logged twice");
        }
    }
    for (i, seen, _) in &subs {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "the subscriber on node {i} saw nothing");
        for w in seen.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "node {i}'s subscriber: {} then {}",
                w[0].0,
                w[1].0
            );
        }
        for (off, client, seq, payload) in seen.iter() {
            let rec = log
                .get(off)
                .unwrap_or_else(|| panic!("delivered offset {off} is not in the log"));
            assert_eq!((&rec.0, rec.1, &rec.2), (client, *seq, payload));
        }
        // Every committed message, once, in order, across its moves from
        // node to node (strictly increasing above, so no duplicate).
        let offsets: Vec<u64> = seen.iter().map(|d| d.0).collect();
        let committed: Vec<u64> = log.keys().copied().collect();
        if offsets != committed {
            let missing: Vec<_> = committed
                .iter()
                .filter(|o| !offsets.contains(o))
                .take(10)
                .collect();
            panic!(
                "the subscriber that started on node {i} saw {} of {} messages; first missing offsets {missing:?}",
                offsets.len(),
                committed.len()
            );
        }
    }
    for i in 1..=3 {
        let out = Command::new(PINION)
            .args(["log", "verify"])
            .arg(dir.join(format!("node-{i}/pinion.log")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut f = failovers.clone();
    f.sort();
    eprintln!(
        "nemesis: {total} messages acknowledged, {} records in each log, {} kill -9 failovers (p50 {:?}, max {:?}), subscribers saw {:?}",
        log.len(),
        f.len(),
        f[f.len() / 2],
        f[f.len() - 1],
        subs.iter().map(|s| s.1.lock().unwrap().len()).collect::<Vec<_>>()
    );
    drop(subs);
    let _ = std::fs::remove_dir_all(&dir);
}
