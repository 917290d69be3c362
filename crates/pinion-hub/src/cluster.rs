//! Cluster mode: the hub replicated over Raft (`pinion-cluster`, openraft
//! 0.9.25). See `docs/CLUSTER.md`.
//!
//! What changes against the single node, and nothing else does (intake,
//! envelope checks, fan-out, HTTP, subscribers are the same code):
//!
//! * the **log** is the node's journal as openraft's log
//!   ([`pinion_cluster::LogStore`]): the offset of a message is its Raft
//!   index, the same on every node;
//! * the **writer** (`run_writer`) replaces the single node's writer
//!   thread: on the leader, each fresh request becomes one Raft entry, and
//!   its ACK leaves only once the entry is committed (fdatasync'ed on a
//!   majority) and applied; elsewhere the answer is NACK `NOT_LEADER`
//!   naming the leader's publisher URL; with no quorum, NACK `UNAVAILABLE`
//!   after `write_timeout` (default 2 s);
//! * the **sessions** (the (client id, seq) table) are the replicated state
//!   machine (`HubMachine`): every node applies committed entries to its
//!   own table in log order, so a new leader answers a resend of a message
//!   committed before a failover with its original offset. A leader takes
//!   no write before it has applied an entry of its own term (its blank
//!   entry), so its table then holds everything committed before it;
//! * the **fan-out** is fed from applied entries only, on every node, so a
//!   subscriber of any node sees exactly the committed prefix, in the
//!   leader's order and offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use pinion_cluster::{
    Applied, Batch, Machine, NodeId, NodeInfo, Publish, StateMachineStore, TypeConfig,
};
use pinion_proto::{Code, Reply};
use tokio::sync::mpsc::UnboundedSender;

use crate::fanout::{self, Durable, Entry, FanBatch, FanIn};
use crate::sessions::{ClientId, Sessions, Verdict};
use crate::writer::{now_us, Answer, FanGate, Item, ToWriter};
use crate::Shared;

/// A node's cluster settings (`[cluster]` in the TOML file, or flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id (1, 2, 3, …; never reused for another node).
    pub node_id: NodeId,
    /// This node's Raft endpoint (SP REP over tcp://).
    pub raft: String,
    /// The initial voters, this node included: id → endpoints. The node
    /// with the smallest id forms the cluster when every log is empty.
    pub peers: BTreeMap<NodeId, NodeInfo>,
    /// How long a publish may wait for its entry to commit before it is
    /// answered NACK `UNAVAILABLE` (no quorum). Default 2 s.
    pub write_timeout: Duration,
    /// Raft heartbeat interval. Default 50 ms.
    pub heartbeat: Duration,
    /// Raft election timeout range. Default 150–300 ms.
    pub election_timeout: (Duration, Duration),
    /// `/ready` (may this node serve subscribers?) fails on a follower or
    /// learner that has applied more than this many entries fewer than the
    /// leader last said were committed (it is still catching up). Default
    /// 256.
    pub ready_max_lag: u64,
    /// `/ready` fails on a node that has not heard from a leader (or, on
    /// the leader, from a quorum) for this long: it is cut off, and its
    /// subscribers get nothing new. Default 5 s: well above an election,
    /// so a failover does not move every subscriber.
    pub ready_stale: Duration,
    /// When the journal is damaged (corruption it will not skip): move it
    /// aside as `pinion.log.damaged-<unix seconds>`, keep only its vote
    /// (as not committed), and start with an empty log that the leader
    /// fills again. Off by default: an operator decides.
    pub rebuild_damaged_log: bool,
}

impl ClusterConfig {
    /// A config for node `node_id` with default timings.
    pub fn new(node_id: NodeId, raft: String, peers: BTreeMap<NodeId, NodeInfo>) -> Self {
        Self {
            node_id,
            raft,
            peers,
            write_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            ready_max_lag: 256,
            ready_stale: Duration::from_secs(5),
            rebuild_damaged_log: false,
        }
    }

    /// Checks the settings together.
    ///
    /// # Errors
    ///
    /// A description of what is wrong (for [`crate::config::ConfigError`]).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.node_id == 0 {
            return Err("node ids start at 1");
        }
        if !self.raft.starts_with("tcp://") && !self.raft.starts_with("tls+tcp://") {
            return Err("the Raft endpoint must be tcp://host:port or tls+tcp://host:port");
        }
        if !self.peers.contains_key(&self.node_id) {
            return Err("the peers must include this node");
        }
        let tls = |u: &str| u.starts_with("tls+tcp://");
        if self
            .peers
            .values()
            .any(|n| !n.raft.starts_with("tcp://") && !tls(&n.raft))
        {
            return Err("every peer needs a tcp:// or tls+tcp:// Raft endpoint");
        }
        if self.peers.values().any(|n| tls(&n.raft) != tls(&self.raft)) {
            return Err("the Raft endpoints must all be tcp:// or all tls+tcp://");
        }
        if self.write_timeout.is_zero() || self.write_timeout > Duration::from_secs(60) {
            return Err("write_timeout must be between 1 ms and 60 s");
        }
        let (lo, hi) = self.election_timeout;
        if self.heartbeat.is_zero() || lo <= self.heartbeat || hi <= lo {
            return Err("need 0 < heartbeat < election timeout min < max");
        }
        Ok(())
    }
}

/// Moves a damaged journal aside and starts an empty one that keeps the
/// damaged one's vote (not committed: the node promises not to vote twice
/// in that term, and claims no leadership). Returns where the damaged file
/// went. The node then catches up from the leader, whose log is complete
/// (the cluster never purges).
///
/// # Errors
///
/// I/O errors moving the file or creating the new one.
pub fn rebuild_damaged_log(
    path: &std::path::Path,
    opts: pinion_journal::JournalOptions,
) -> Result<std::path::PathBuf, pinion_journal::JournalError> {
    use pinion_journal::{Journal, JournalError, RaftState};
    let vote = pinion_journal::read_raft_state(path)
        .ok()
        .and_then(|s| s.vote)
        .map(|mut v| {
            v.committed = false;
            v
        });
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".damaged-{secs}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).map_err(|source| JournalError::Io {
        op: "move the damaged log aside",
        source,
    })?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| JournalError::Io {
                op: "fsync directory",
                source,
            })?;
    }
    let (mut j, _) = Journal::open(path, opts)?;
    if vote.is_some() {
        j.set_raft_state(
            &RaftState {
                vote,
                ..RaftState::default()
            },
            true,
        )?;
    }
    Ok(aside)
}

/// Parses a peer: `ID=RAFT_URL[,PUBLISH_URL[,SUBSCRIBE_URL[,HTTP_ADDR]]]`.
///
/// # Errors
///
/// A description of what is wrong.
pub fn parse_peer(spec: &str) -> Result<(NodeId, NodeInfo), &'static str> {
    let (id, rest) = spec
        .split_once('=')
        .ok_or("expected ID=RAFT_URL[,PUBLISH[,SUBSCRIBE[,HTTP]]]")?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| "the node id must be a number")?;
    let mut parts = rest.split(',').map(str::trim);
    let raft = parts.next().unwrap_or("").to_string();
    if !raft.starts_with("tcp://") && !raft.starts_with("tls+tcp://") {
        return Err("the Raft endpoint must be tcp://host:port or tls+tcp://host:port");
    }
    let node = NodeInfo {
        raft,
        publish: parts.next().unwrap_or("").to_string(),
        subscribe: parts.next().unwrap_or("").to_string(),
        http: parts.next().unwrap_or("").to_string(),
    };
    if parts.next().is_some() {
        return Err("too many fields");
    }
    Ok((id, node))
}

/// What `/leader`, `/cluster` and `/metrics` show, updated from openraft's
/// metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// This node leads and has heard from a quorum within the election
    /// timeout (what `/leader` answers 200 for).
    pub serving_leader: AtomicBool,
    /// This node's id.
    pub node_id: AtomicU64,
    /// The current term.
    pub term: AtomicU64,
    /// The leader's id (0: none known).
    pub leader: AtomicU64,
    /// Last log index + 1 (0: empty).
    pub log_next: AtomicU64,
    /// Last applied index + 1 (0: nothing).
    pub applied_next: AtomicU64,
    /// Role: 0 learner, 1 follower, 2 candidate, 3 leader, 4 shut down.
    pub role: AtomicU64,
    /// Per-peer matched index + 1 (leader only), and the status as JSON.
    pub detail: Mutex<(BTreeMap<NodeId, u64>, String)>,
    /// Milliseconds since the leader last heard from a quorum (leader
    /// only; `u64::MAX` otherwise or unknown).
    pub quorum_ms: AtomicU64,
    /// When this node last heard from a leader (filled by the Raft
    /// endpoint).
    pub contact: Arc<pinion_cluster::network::LeaderContact>,
    /// [`ClusterConfig::ready_max_lag`].
    pub ready_max_lag: AtomicU64,
    /// [`ClusterConfig::ready_stale`], in milliseconds.
    pub ready_stale_ms: AtomicU64,
}

impl Status {
    /// The role's name.
    pub fn role_name(&self) -> &'static str {
        match self.role.load(Ordering::Relaxed) {
            0 => "learner",
            1 => "follower",
            2 => "candidate",
            3 => "leader",
            _ => "shutdown",
        }
    }

    /// Whether this node is current enough to serve subscribers (`/ready`):
    /// a leader that heard from a quorum, or a follower or learner that
    /// heard from a leader and has applied what it announced committed,
    /// each within [`ClusterConfig::ready_stale`] and
    /// [`ClusterConfig::ready_max_lag`]. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        let stale = self.ready_stale_ms.load(Ordering::Relaxed);
        match self.role.load(Ordering::Relaxed) {
            3 => {
                let q = self.quorum_ms.load(Ordering::Relaxed);
                if q < stale {
                    Ok(())
                } else {
                    Err(format!(
                        "leader without word from a quorum for {stale} ms or more"
                    ))
                }
            }
            0 | 1 => {
                let Some(since) = self.contact.since() else {
                    return Err("no word from a leader yet".into());
                };
                if since.as_millis() as u64 >= stale {
                    return Err(format!(
                        "no word from a leader for {} ms",
                        since.as_millis()
                    ));
                }
                let applied = self.applied_next.load(Ordering::Relaxed);
                let commit = self.contact.commit_next();
                let lag = commit.saturating_sub(applied);
                if lag > self.ready_max_lag.load(Ordering::Relaxed) {
                    return Err(format!(
                        "catching up: {lag} entries behind the leader's commit"
                    ));
                }
                Ok(())
            }
            2 => Err("candidate: no leader".into()),
            _ => Err("shutting down".into()),
        }
    }

    /// The status as JSON (for `/cluster` and `pinion cluster status`).
    pub fn json(&self) -> String {
        self.detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Prometheus lines for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        let role = self.role.load(Ordering::Relaxed);
        s.push_str("# HELP pinion_cluster_role 0 learner, 1 follower, 2 candidate, 3 leader, 4 shut down.\n# TYPE pinion_cluster_role gauge\n");
        s.push_str(&format!("pinion_cluster_role {role}\n"));
        s.push_str(&format!(
            "# TYPE pinion_cluster_is_leader gauge\npinion_cluster_is_leader {}\n",
            u8::from(self.serving_leader.load(Ordering::Relaxed))
        ));
        s.push_str(&format!(
            "# TYPE pinion_cluster_term gauge\npinion_cluster_term {}\n",
            self.term.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "# TYPE pinion_cluster_leader_id gauge\npinion_cluster_leader_id {}\n",
            self.leader.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "# TYPE pinion_cluster_log_next gauge\npinion_cluster_log_next {}\n",
            self.log_next.load(Ordering::Relaxed)
        ));
        let applied = self.applied_next.load(Ordering::Relaxed);
        s.push_str(&format!(
            "# TYPE pinion_cluster_applied_next gauge\npinion_cluster_applied_next {applied}\n"
        ));
        let peers = self
            .detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        if !peers.is_empty() {
            s.push_str("# HELP pinion_cluster_peer_match_next Per peer (as seen by the leader): matched index + 1.\n# TYPE pinion_cluster_peer_match_next gauge\n");
            for (id, m) in &peers {
                s.push_str(&format!(
                    "pinion_cluster_peer_match_next{{peer=\"{id}\"}} {m}\n"
                ));
            }
            s.push_str("# TYPE pinion_cluster_peer_lag gauge\n");
            let head = self.log_next.load(Ordering::Relaxed);
            for (id, m) in &peers {
                s.push_str(&format!(
                    "pinion_cluster_peer_lag{{peer=\"{id}\"}} {}\n",
                    head.saturating_sub(*m)
                ));
            }
        }
        s
    }
}

/// The hub's replicated state: the session table, and the hand-off of
/// applied messages to the fan-out.
pub(crate) struct HubMachine {
    pub sessions: Arc<Mutex<Sessions>>,
    pub fan: Arc<Fan>,
    pub shared: Arc<Shared>,
    /// First index not yet handed to the fan-out.
    pub fan_first: u64,
    pub pending: Vec<Entry>,
    pub encoded: bool,
    pub buf: BytesMut,
    pub horizon: u64,
    pub max_sessions: usize,
}

/// Sessions are evicted (deterministically, so on every node alike) every
/// this many applied indexes.
const EVICT_EVERY: u64 = 4096;

impl Machine for HubMachine {
    fn apply(&mut self, index: u64, msg: &Publish) -> Applied {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let verdict = sessions.check(&msg.client_id, msg.seq);
        let applied = match verdict {
            Verdict::Duplicate { offset } => return Applied::Duplicate { offset },
            Verdict::Fresh => {
                sessions.record(&msg.client_id, msg.seq, index, msg.timestamp_us, true);
                Applied::Logged { offset: index }
            }
            // Below the client's window: the leader refuses these, so one
            // can only be here after a race; it is in the log, so it is
            // delivered, but the window is not moved backwards.
            Verdict::Stale { .. } => Applied::Logged { offset: index },
        };
        if index.is_multiple_of(EVICT_EVERY) {
            sessions.evict_before(index.saturating_sub(self.horizon));
            sessions.evict_to(self.max_sessions);
        }
        drop(sessions);
        let subscribers = self.shared.stats.subscribers_tcp.load(Ordering::Relaxed)
            + self.shared.stats.subscribers_ws.load(Ordering::Relaxed);
        if subscribers > 0 {
            let e = fanout::encode(
                &Durable {
                    offset: index,
                    timestamp_us: msg.timestamp_us,
                    client_id: &msg.client_id,
                    seq: msg.seq,
                    topic: &msg.topic,
                    payload: &msg.payload,
                },
                &mut self.buf,
            );
            self.pending.push(e);
        } else {
            self.encoded = false;
        }
        self.shared.stats.logged.fetch_add(1, Ordering::Relaxed);
        applied
    }

    fn applied(&mut self, next: u64) {
        if next <= self.fan_first {
            return;
        }
        let batch = FanBatch {
            first: self.fan_first,
            next,
            encoded: self.encoded,
            entries: std::mem::take(&mut self.pending),
        };
        self.fan_first = next;
        self.encoded = true;
        self.shared.head.store(next, Ordering::Release);
        self.fan.offer(Some(Arc::new(batch)));
    }

    fn snapshot(&self) -> Vec<u8> {
        // Snapshots are off (the log is never purged: every node can be
        // rebuilt by replication from the start of the leader's log).
        Vec::new()
    }

    fn restore(&mut self, _data: &[u8]) -> Result<(), String> {
        Err("pinion nodes do not install snapshots yet (the log is never purged)".into())
    }
}

/// The hand-off of applied batches to the cores: every core is offered
/// each batch within its backlog bound (the single node's [`FanGate`]).
/// The state machine offers each batch as it applies it, and
/// [`run_fan_retry`] offers again every [`FAN_RETRY`] while some core was
/// skipped for being over its bound. Both run on the Raft loop's one
/// thread, so the lock is never contended; the batch reaches the cores
/// without waking a thread in between.
///
/// [`FAN_RETRY`]: crate::writer::FAN_RETRY
pub(crate) struct Fan {
    state: Mutex<FanState>,
    retry: tokio::sync::Notify,
    shared: Arc<Shared>,
}

struct FanState {
    gate: FanGate,
    cores: Vec<UnboundedSender<FanIn>>,
    /// Every core is to be told of the records below this.
    head: u64,
}

impl Fan {
    /// The hand-off to `cores`, which know of every record below `start`.
    pub(crate) fn new(
        gate: FanGate,
        cores: Vec<UnboundedSender<FanIn>>,
        shared: Arc<Shared>,
        start: u64,
    ) -> Arc<Fan> {
        Arc::new(Fan {
            state: Mutex::new(FanState {
                gate,
                cores,
                head: start,
            }),
            retry: tokio::sync::Notify::new(),
            shared,
        })
    }

    /// Offers `batch` (or, with none, what a skipped core missed) to every
    /// core; wakes the retry task if a core is still behind.
    fn offer(&self, batch: Option<Arc<FanBatch>>) {
        if self.offer_all(batch.as_ref()) {
            self.retry.notify_one();
        }
    }

    /// Whether some core is still behind afterwards.
    fn offer_all(&self, batch: Option<&Arc<FanBatch>>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *st;
        if let Some(b) = batch {
            st.head = b.next;
        }
        for (core, tx) in st.cores.iter().enumerate() {
            st.gate.offer(core, tx, batch, st.head, &self.shared.stats);
        }
        st.gate.lagging(st.head)
    }
}

/// Offers the records a core was skipped for again, every
/// [`FAN_RETRY`](crate::writer::FAN_RETRY), until every core has them
/// (so a core learns of what it missed once it drains, whether or not
/// more is published).
pub(crate) async fn run_fan_retry(fan: Arc<Fan>) {
    loop {
        fan.retry.notified().await;
        loop {
            tokio::time::sleep(crate::writer::FAN_RETRY).await;
            if !fan.offer_all(None) {
                break;
            }
        }
    }
}

/// The Raft configuration of a hub node.
pub(crate) fn raft_config(c: &ClusterConfig, max_payload: usize) -> Result<Arc<Config>, String> {
    // An AppendEntries message carries up to this many entries, each at
    // most a batch (BATCH_BYTES plus one message): keep it well under the
    // Raft endpoint's message limit.
    let entry = (BATCH_BYTES + max_payload + 64 * 1024) as u64;
    let max_payload_entries = (pinion_cluster::network::MAX_RAFT_MESSAGE / 2 / entry).clamp(1, 64);
    let cfg = Config {
        max_payload_entries,
        cluster_name: "pinion".into(),
        heartbeat_interval: c.heartbeat.as_millis() as u64,
        election_timeout_min: c.election_timeout.0.as_millis() as u64,
        election_timeout_max: c.election_timeout.1.as_millis() as u64,
        // The log is never purged (see HubMachine::snapshot).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Config::default()
    };
    cfg.validate().map(Arc::new).map_err(|e| e.to_string())
}

/// A request waiting for its entry.
struct Waiter {
    item: Item,
    deadline: Instant,
}

type Key = (ClientId, u64);

/// The result of one proposal (a batch), back from its task: the keys of
/// its messages, in order, and what applying each produced.
type Outcome = (Vec<Key>, Result<Vec<Applied>, Reply>);

/// Entries the writer keeps proposed but not yet committed, at most. Each
/// entry costs the Raft core one log write and one fdatasync (openraft 0.9
/// waits for each), so while they are under way new publishes gather into
/// the next batch: the busier the node, the bigger the batches.
const MAX_PROPOSALS: usize = 4;

/// A batch stops growing past this many payload and topic bytes (one
/// message may exceed it) …
const BATCH_BYTES: usize = 256 << 10;

/// … or this many messages.
const BATCH_MESSAGES: usize = 4096;

/// The writer of a cluster node: answers every request the intakes send.
/// Fresh messages gather into batches; each batch is one Raft entry.
pub(crate) async fn run_writer(
    raft: Raft<TypeConfig>,
    cfg: ClusterConfig,
    sessions: Arc<Mutex<Sessions>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ToWriter>,
    cores: Vec<UnboundedSender<Vec<Answer>>>,
    shared: Arc<Shared>,
) {
    let me = cfg.node_id;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    // Every message proposed or about to be: its waiters.
    let mut inflight: HashMap<Key, Vec<Waiter>> = HashMap::new();
    // Fresh messages not yet proposed, in arrival order.
    let mut pending: Vec<(Key, Publish)> = Vec::new();
    let mut proposals = 0usize;
    let mut outbox: Vec<Vec<Answer>> = (0..cores.len()).map(|_| Vec::new()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let answer = |outbox: &mut Vec<Vec<Answer>>, it: Item, reply: Reply| {
        outbox[it.core].push(it.answer(reply));
    };
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let items = match msg {
                    Some(ToWriter::Batch(b, token)) => {
                        drop(token);
                        b
                    }
                    Some(ToWriter::Shutdown(done)) => {
                        let _ = raft.shutdown().await;
                        for (_, ws) in inflight.drain() {
                            for w in ws {
                                let seq = w.item.req.seq;
                                answer(&mut outbox, w.item, Reply::nack(Some(seq), Code::ShuttingDown, "the node is shutting down"));
                            }
                        }
                        flush(&mut outbox, &cores);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                };
                let m = raft.metrics().borrow().clone();
                let leads = m.state == ServerState::Leader && m.current_leader == Some(me);
                // A new leader first applies an entry of its own term (its
                // blank entry): every entry committed before it is then in
                // its session table.
                let ready = leads && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
                let leader_url = m.current_leader.and_then(|l| {
                    m.membership_config.membership().get_node(&l).map(|n| n.publish.clone())
                }).filter(|u| !u.is_empty());
                let now = Instant::now();
                for it in items {
                    let seq = it.req.seq;
                    if !ready {
                        let why = if leads {
                            format!("node {me} was just elected and is applying the previous terms' entries; retry shortly")
                        } else {
                            match m.current_leader {
                                Some(l) => format!("node {me} does not lead; node {l} does"),
                                None => format!("node {me} does not lead and no leader is known (election under way)"),
                            }
                        };
                        let url = if leads { None } else { leader_url.clone() };
                        answer(&mut outbox, it, Reply::not_leader(Some(seq), url, why));
                        continue;
                    }
                    let key = (it.req.client_id, seq);
                    if let Some(ws) = inflight.get_mut(&key) {
                        // The same message is being committed: one entry,
                        // both requests get its answer.
                        ws.push(Waiter { item: it, deadline: now + cfg.write_timeout });
                        continue;
                    }
                    let verdict = sessions.lock().unwrap_or_else(PoisonError::into_inner).check(&key.0, seq);
                    match verdict {
                        Verdict::Duplicate { offset } => {
                            answer(&mut outbox, it, Reply::ack(seq, offset, true));
                        }
                        Verdict::Stale { floor } => {
                            answer(&mut outbox, it, Reply::nack(
                                Some(seq),
                                Code::Stale,
                                format!("seq {seq} is below this client's duplicate window (floor {floor}); not logged"),
                            ));
                        }
                        Verdict::Fresh => {
                            pending.push((key, Publish {
                                timestamp_us: now_us(),
                                client_id: key.0,
                                seq,
                                topic: Bytes::copy_from_slice(&it.req.topic),
                                payload: it.req.payload.clone(),
                            }));
                            inflight.insert(key, vec![Waiter { item: it, deadline: now + cfg.write_timeout }]);
                        }
                    }
                }
            }
            Some((keys, r)) = done_rx.recv() => {
                proposals -= 1;
                for (i, key) in keys.into_iter().enumerate() {
                    let waiters = inflight.remove(&key).unwrap_or_default();
                    let applied = r.as_ref().map(|a| a.get(i).copied());
                    for w in waiters {
                        let seq = w.item.req.seq;
                        let reply = match &applied {
                            Ok(Some(Applied::Logged { offset })) => Reply::ack(seq, *offset, false),
                            Ok(Some(Applied::Duplicate { offset })) => Reply::ack(seq, *offset, true),
                            Ok(_) => Reply::nack(Some(seq), Code::Unavailable, "the entry applied without this message's result"),
                            Err(reply) => {
                                let mut reply: Reply = (*reply).clone();
                                reply.set_seq(seq);
                                reply
                            }
                        };
                        answer(&mut outbox, w.item, reply);
                    }
                }
                if r.is_ok() {
                    shared.log_ok.store(true, Ordering::Relaxed);
                }
            }
            _ = tick.tick() => {
                // No quorum within write_timeout: the requests are answered
                // UNAVAILABLE, but the entry stays tracked, so a resend
                // attaches to it instead of being proposed a second time.
                let now = Instant::now();
                for ws in inflight.values_mut() {
                    let mut i = 0;
                    while i < ws.len() {
                        if ws[i].deadline <= now {
                            let w = ws.swap_remove(i);
                            let seq = w.item.req.seq;
                            answer(&mut outbox, w.item, Reply::nack(
                                Some(seq),
                                Code::Unavailable,
                                "not committed within the cluster write timeout (no quorum?); it may still be: resend with the same seq".to_string(),
                            ));
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
        while proposals < MAX_PROPOSALS && !pending.is_empty() {
            let take = batch_len(&pending);
            let rest = pending.split_off(take);
            let batch = std::mem::replace(&mut pending, rest);
            let (keys, messages): (Vec<Key>, Vec<Publish>) = batch.into_iter().unzip();
            match raft.client_write_ff(Batch::new(messages)).await {
                Err(e) => {
                    for key in keys {
                        for w in inflight.remove(&key).unwrap_or_default() {
                            let seq = w.item.req.seq;
                            answer(
                                &mut outbox,
                                w.item,
                                Reply::nack(Some(seq), Code::Unavailable, format!("raft: {e}")),
                            );
                        }
                    }
                }
                Ok(rx) => {
                    proposals += 1;
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let r = match rx.await {
                            Ok(Ok(resp)) => Ok(resp.data),
                            Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                                let url =
                                    f.leader_node.map(|n| n.publish).filter(|u| !u.is_empty());
                                Err(Reply::not_leader(None, url, "leadership changed before the message was committed; it may or may not be in the log: resend it with the same seq".to_string()))
                            }
                            Ok(Err(e)) => {
                                Err(Reply::nack(None, Code::Unavailable, format!("raft: {e}")))
                            }
                            Err(_) => Err(Reply::nack(
                                None,
                                Code::Unavailable,
                                "raft stopped".to_string(),
                            )),
                        };
                        let _ = done.send((keys, r));
                    });
                }
            }
        }
        flush(&mut outbox, &cores);
    }
}

/// How many of the pending messages go into the next batch.
fn batch_len(pending: &[(Key, Publish)]) -> usize {
    let mut bytes = 0;
    for (i, (_, p)) in pending.iter().enumerate() {
        if i == BATCH_MESSAGES || (i > 0 && bytes >= BATCH_BYTES) {
            return i;
        }
        bytes += p.topic.len() + p.payload.len();
    }
    pending.len()
}

fn flush(outbox: &mut [Vec<Answer>], cores: &[UnboundedSender<Vec<Answer>>]) {
    for (core, answers) in outbox.iter_mut().enumerate() {
        if !answers.is_empty() {
            let _ = cores[core].send(std::mem::take(answers));
        }
    }
}

/// Keeps [`Status`] current from openraft's metrics.
pub(crate) async fn run_status(raft: Raft<TypeConfig>, status: Arc<Status>, cfg: ClusterConfig) {
    let mut rx = raft.metrics();
    // A leader that has not heard from a quorum for an election timeout
    // (the longest one) stops answering /leader 200.
    let quorum_window = cfg.election_timeout.1.as_millis() as u64;
    loop {
        let m = rx.borrow_and_update().clone();
        let role = match m.state {
            ServerState::Learner => 0,
            ServerState::Follower => 1,
            ServerState::Candidate => 2,
            ServerState::Leader => 3,
            ServerState::Shutdown => 4,
        };
        let leads = m.state == ServerState::Leader;
        let fresh = m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms < quorum_window);
        let caught_up = m
            .last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term);
        status
            .serving_leader
            .store(leads && fresh && caught_up, Ordering::Relaxed);
        status.node_id.store(cfg.node_id, Ordering::Relaxed);
        status.quorum_ms.store(
            m.millis_since_quorum_ack
                .filter(|_| leads)
                .unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        status
            .ready_max_lag
            .store(cfg.ready_max_lag, Ordering::Relaxed);
        status
            .ready_stale_ms
            .store(cfg.ready_stale.as_millis() as u64, Ordering::Relaxed);
        status.role.store(role, Ordering::Relaxed);
        status.term.store(m.current_term, Ordering::Relaxed);
        status
            .leader
            .store(m.current_leader.unwrap_or(0), Ordering::Relaxed);
        status
            .log_next
            .store(m.last_log_index.map_or(0, |i| i + 1), Ordering::Relaxed);
        let applied = m.last_applied.map_or(0, |l| l.index + 1);
        status.applied_next.store(applied, Ordering::Relaxed);
        let peers: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index + 1)))
                    .collect()
            })
            .unwrap_or_default();
        let members = m.membership_config.membership();
        let nodes: Vec<String> = members
            .nodes()
            .map(|(id, n)| {
                let voter = members.voter_ids().any(|v| v == *id);
                format!(
                    "{{\"id\":{id},\"voter\":{voter},\"raft\":\"{}\",\"publish\":\"{}\",\"subscribe\":\"{}\",\"http\":\"{}\"{}}}",
                    n.raft,
                    n.publish,
                    n.subscribe,
                    n.http,
                    peers.get(id).map(|m| format!(",\"match_next\":{m}")).unwrap_or_default()
                )
            })
            .collect();
        let json = format!(
            "{{\"id\":{},\"role\":\"{}\",\"term\":{},\"leader\":{},\"serving_leader\":{},\"log_next\":{},\"applied_next\":{},\"millis_since_quorum_ack\":{},\"nodes\":[{}]}}",
            cfg.node_id,
            status.role_name(),
            m.current_term,
            m.current_leader.map_or("null".to_string(), |l| l.to_string()),
            leads && fresh && caught_up,
            m.last_log_index.map_or(0, |i| i + 1),
            applied,
            m.millis_since_quorum_ack.map_or("null".to_string(), |v| v.to_string()),
            nodes.join(",")
        );
        *status.detail.lock().unwrap_or_else(PoisonError::into_inner) = (peers, json);
        // Metrics change on every commit: rebuilding the status on each
        // change cost the leader more CPU than the messages themselves
        // (measured), so it is refreshed every 50 ms at most (and at least
        // every 100 ms: the quorum-ack age only moves on changes).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        if m.state == ServerState::Shutdown {
            return;
        }
    }
}

/// Starts the Raft node: its state machine, its Raft endpoint, and forms
/// the cluster when this node has the smallest id and every log is empty.
/// The endpoint and the connections to peers run on `net` (the event loop
/// openraft runs on).
pub(crate) async fn start_raft(
    net: &pinion::Runtime,
    cfg: &ClusterConfig,
    log: pinion_cluster::LogStore,
    machine: HubMachine,
    max_payload: usize,
    contact: Arc<pinion_cluster::network::LeaderContact>,
    tls: Option<(pinion::TlsConfig, pinion::TlsConfig)>,
) -> Result<(Raft<TypeConfig>, pinion::Socket), String> {
    let rc = raft_config(cfg, max_payload)?;
    let (dialer, listener) = match tls {
        Some((d, l)) => (Some(d), Some(l)),
        None => (None, None),
    };
    let sm = StateMachineStore::new(machine, Some(log.offsets()));
    let raft = Raft::new(
        cfg.node_id,
        rc,
        pinion_cluster::network::Network::on(cfg.node_id, net.clone()).with_tls(dialer),
        log,
        sm,
    )
    .await
    .map_err(|e| format!("raft: {e}"))?;
    let (server, _) = pinion_cluster::network::serve_on(
        net,
        raft.clone(),
        cfg.node_id,
        &cfg.raft,
        contact,
        listener,
    )
    .await
    .map_err(|e| format!("cannot listen on {}: {e}", cfg.raft))?;
    let first = cfg.peers.keys().next().copied();
    if first == Some(cfg.node_id) && !raft.is_initialized().await.map_err(|e| e.to_string())? {
        match raft.initialize(cfg.peers.clone()).await {
            Ok(()) => {
                tracing::info!(voters = ?cfg.peers.keys().collect::<Vec<_>>(), "cluster formed")
            }
            Err(e) => tracing::info!(error = %e, "cluster already formed"),
        }
    }
    Ok((raft, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core over its backlog bound is skipped; once it has processed
    /// what it holds, the retry task tells it of everything it missed (as
    /// one light batch: its subscribers read those records from the log).
    #[test]
    fn a_core_over_its_bound_learns_what_it_missed_from_the_retry_task() {
        use std::sync::atomic::AtomicUsize;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared {
                cluster: None,
                inflight: AtomicUsize::new(0),
                shutting_down: AtomicBool::new(false),
                head: AtomicU64::new(0),
                log_ok: AtomicBool::new(true),
                stats: crate::HubStats::default(),
                latency: crate::LatencyBuckets::default(),
                auth: None,
                conn_claims: Vec::new(),
            });
            // A bound of one byte: nothing fits while the core holds a batch.
            let gate = FanGate::new(1, 0, 1);
            let counter = gate.counter(0);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let fan = Fan::new(gate, vec![tx], shared.clone(), 0);
            tokio::spawn(run_fan_retry(fan.clone()));
            let batch = |first, next| {
                Arc::new(FanBatch {
                    first,
                    next,
                    encoded: false,
                    entries: Vec::new(),
                })
            };
            let got = |m: Option<FanIn>| match m {
                Some(FanIn::Batch(b)) => b,
                _ => panic!("not a batch"),
            };
            fan.offer(Some(batch(0, 1)));
            fan.offer(Some(batch(1, 2)));
            fan.offer(Some(batch(2, 3)));
            let first = got(rx.recv().await);
            assert_eq!((first.first, first.next), (0, 1));
            tokio::time::sleep(crate::writer::FAN_RETRY * 3).await;
            assert!(rx.try_recv().is_err(), "sent past the bound");
            assert_eq!(shared.stats.fanout_overflows.load(Ordering::Relaxed), 1);
            // The core processes its batch; nothing more is published.
            crate::writer::release(&counter, &shared.stats, &first);
            let missed = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("the retry task offers what the core missed");
            let missed = got(missed);
            assert_eq!((missed.first, missed.next), (1, 3));
            assert!(missed.entries.is_empty() && !missed.encoded);
            // Caught up: the next batch goes whole.
            crate::writer::release(&counter, &shared.stats, &missed);
            fan.offer(Some(batch(3, 4)));
            let next = got(rx.recv().await);
            assert_eq!((next.first, next.next), (3, 4));
        });
    }

    #[test]
    fn peer_specs() {
        let (id, n) = parse_peer(
            "2=tcp://127.0.0.2:7460,tcp://127.0.0.2:7450,tcp://127.0.0.2:7451,127.0.0.2:7452",
        )
        .unwrap();
        assert_eq!(id, 2);
        assert_eq!(n.publish, "tcp://127.0.0.2:7450");
        assert_eq!(n.http, "127.0.0.2:7452");
        let (_, n) = parse_peer("3=tcp://h:1").unwrap();
        assert_eq!((n.raft.as_str(), n.publish.as_str()), ("tcp://h:1", ""));
        for bad in ["", "x=tcp://h:1", "1", "1=http://h", "1=tcp://a,b,c,d,e"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ready_needs_a_recent_leader_and_a_small_lag() {
        let s = Status::default();
        s.ready_max_lag.store(10, Ordering::Relaxed);
        s.ready_stale_ms.store(60_000, Ordering::Relaxed);
        // A learner (the default role) that never heard from a leader.
        assert_eq!(s.ready().unwrap_err(), "no word from a leader yet");
        s.contact.record(100);
        s.applied_next.store(89, Ordering::Relaxed);
        assert!(s.ready().unwrap_err().contains("11 entries behind"));
        s.applied_next.store(90, Ordering::Relaxed);
        assert_eq!(s.ready(), Ok(()));
        // A follower likewise; the announced commit never goes back.
        s.role.store(1, Ordering::Relaxed);
        s.contact.record(50);
        assert_eq!(s.contact.commit_next(), 100);
        assert_eq!(s.ready(), Ok(()));
        // Cut off for longer than the window.
        s.ready_stale_ms.store(0, Ordering::Relaxed);
        assert!(s
            .ready()
            .unwrap_err()
            .starts_with("no word from a leader for"));
        // A leader: by its quorum's last word.
        s.role.store(3, Ordering::Relaxed);
        s.ready_stale_ms.store(1000, Ordering::Relaxed);
        s.quorum_ms.store(999, Ordering::Relaxed);
        assert_eq!(s.ready(), Ok(()));
        s.quorum_ms.store(u64::MAX, Ordering::Relaxed);
        assert!(s.ready().is_err());
        s.role.store(2, Ordering::Relaxed);
        assert!(s.ready().is_err(), "a candidate");
    }

    #[test]
    fn config_checks() {
        let peers: BTreeMap<_, _> = [parse_peer("1=tcp://a:1").unwrap()].into();
        let ok = ClusterConfig::new(1, "tcp://a:1".into(), peers.clone());
        assert!(ok.validate().is_ok());
        assert!(ClusterConfig::new(2, "tcp://a:1".into(), peers.clone())
            .validate()
            .is_err());
        assert!(ClusterConfig::new(0, "tcp://a:1".into(), peers.clone())
            .validate()
            .is_err());
        let mut slow = ok.clone();
        slow.election_timeout = (Duration::from_millis(10), Duration::from_millis(20));
        assert!(
            slow.validate().is_err(),
            "heartbeat must be below the election timeout"
        );
    }
}
