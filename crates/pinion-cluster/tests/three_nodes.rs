//! Three real openraft nodes in one process, each with its own journal
//! file, talking over pinion REQ/REP sockets on 127.0.0.1: election,
//! replication, identical logs on every node, a leader shut down and a new
//! one elected, the old one restarted from its journal and caught up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::{Config, Raft};
use pinion_cluster::network::{serve, Network};
use pinion_cluster::{
    Applied, Batch, LogStore, Machine, NodeInfo, Publish, StateMachineStore, TypeConfig,
};
use pinion_journal::{JournalOptions, RecordKind};

/// Records what it applied, shared with the test.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<Vec<(u64, u64)>>>);

impl Machine for Seen {
    fn apply(&mut self, index: u64, msg: &Publish) -> Applied {
        self.0.lock().unwrap().push((index, msg.seq));
        Applied::Logged { offset: index }
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), String> {
        Err("this test never sends snapshots".into())
    }
}

struct Node {
    raft: Raft<TypeConfig>,
    server: pinion::Socket,
    seen: Seen,
}

fn config() -> Arc<Config> {
    Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Config::default()
        }
        .validate()
        .unwrap(),
    )
}

async fn start(id: u64, dir: &Path, url: &str) -> Node {
    let path = dir.join(format!("node{id}.log"));
    let opts = JournalOptions {
        preallocate: 1 << 20,
        ..JournalOptions::default()
    };
    // A restarted node waits for its previous I/O thread to release the file.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        match LogStore::open(&path, opts) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open node {id}: {e}"),
        }
    };
    let seen = Seen::default();
    let sm = StateMachineStore::new(seen.clone(), Some(log.offsets()));
    let raft = Raft::new(id, config(), Network::new(id), log, sm)
        .await
        .unwrap();
    let (server, _) = serve(raft.clone(), id, url, Default::default())
        .await
        .unwrap();
    Node { raft, server, seen }
}

async fn leader_of(nodes: &BTreeMap<u64, Node>, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        for (id, n) in nodes {
            let m = n.raft.metrics().borrow().clone();
            if m.current_leader == Some(*id) && m.state.is_leader() {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes one entry carrying `seqs` (a batch); returns (offset, seq) of
/// each, checking that a batch's messages take consecutive offsets.
async fn write(raft: &Raft<TypeConfig>, seqs: &[u64]) -> Vec<(u64, u64)> {
    let messages = seqs
        .iter()
        .map(|&seq| Publish {
            timestamp_us: seq,
            client_id: [1; 16],
            seq,
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(format!("message {seq}")),
        })
        .collect();
    let r = raft.client_write(Batch::new(messages)).await.unwrap();
    assert_eq!(r.data.len(), seqs.len());
    let out: Vec<(u64, u64)> = r
        .data
        .iter()
        .zip(seqs)
        .map(|(a, &seq)| match a {
            Applied::Logged { offset } => (*offset, seq),
            other => panic!("{other:?}"),
        })
        .collect();
    for w in out.windows(2) {
        assert_eq!(w[0].0 + 1, w[1].0, "a batch's offsets are consecutive");
    }
    out
}

/// The messages in a node's journal: (offset, seq), and the terms seen.
fn journal_messages(path: &Path) -> Vec<(u64, u64)> {
    let mut r = pinion_journal::Reader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == RecordKind::Message {
            assert_eq!(&rec.payload[..], format!("message {}", rec.seq).as_bytes());
            out.push((rec.offset, rec.seq));
        }
    }
    out
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir =
            Dir(std::env::temp_dir().join(format!("pinion-cluster-3n-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        // Ports picked by binding port 0 first.
        let urls: BTreeMap<u64, String> = (1..=3)
            .map(|id| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                (id, format!("tcp://{}", l.local_addr().unwrap()))
            })
            .collect();
        let mut nodes = BTreeMap::new();
        for (id, url) in &urls {
            nodes.insert(*id, start(*id, &dir.0, url).await);
        }
        let members: BTreeMap<u64, NodeInfo> = urls
            .iter()
            .map(|(id, url)| {
                (
                    *id,
                    NodeInfo {
                        raft: url.clone(),
                        ..NodeInfo::default()
                    },
                )
            })
            .collect();
        nodes[&1].raft.initialize(members).await.unwrap();
        let leader = leader_of(&nodes, Duration::from_secs(10)).await;

        // Replicate: every write is acknowledged only once committed.
        let mut acked = Vec::new();
        for i in 0..100 {
            acked.extend(write(&nodes[&leader].raft, &[2 * i, 2 * i + 1]).await);
        }
        // Concurrent writers too (pipelined appends, group commit).
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let raft = nodes[&leader].raft.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for k in 0..100u64 {
                    let seq = 1000 + w * 1000 + k;
                    mine.extend(write(&raft, &[seq]).await);
                }
                mine
            }));
        }
        for t in tasks {
            acked.extend(t.await.unwrap());
        }

        // The leader goes away; the other two elect a new one and go on.
        let old = leader;
        let gone = nodes.remove(&old).unwrap();
        gone.raft.shutdown().await.unwrap();
        gone.server.close();
        drop(gone);
        let t0 = Instant::now();
        let leader = leader_of(&nodes, Duration::from_secs(10)).await;
        assert_ne!(leader, old);
        let failover = t0.elapsed();
        for seq in (20_000..20_100).step_by(5) {
            let seqs: Vec<u64> = (seq..seq + 5).collect();
            acked.extend(write(&nodes[&leader].raft, &seqs).await);
        }

        // The old leader comes back from its journal and catches up.
        nodes.insert(old, start(old, &dir.0, &urls[&old]).await);
        let last = nodes[&leader]
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = nodes
                .values()
                .all(|n| n.raft.metrics().borrow().last_applied.map(|l| l.index) >= last);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "nodes did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Every acknowledged message is in every journal exactly once, at
        // the offset its ACK named; all journals hold the same messages.
        acked.sort();
        let logs: Vec<_> = (1..=3)
            .map(|id| journal_messages(&dir.0.join(format!("node{id}.log"))))
            .collect();
        for (id, log) in logs.iter().enumerate() {
            assert_eq!(log, &acked, "node {} journal", id + 1);
        }
        // Every state machine applied them in log order (the restarted one
        // re-applied its log, then the rest).
        for (id, n) in &nodes {
            let seen = n.seen.0.lock().unwrap().clone();
            assert_eq!(seen, acked, "node {id} applied");
        }
        eprintln!("failover (shutdown of the leader to a new leader): {failover:?}");
        for n in nodes.values() {
            n.raft.shutdown().await.unwrap();
            n.server.close();
        }
    });
}
