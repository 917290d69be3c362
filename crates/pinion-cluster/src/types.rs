//! The openraft type configuration of a pinion cluster and its data types.

use std::fmt;

use bytes::Bytes;

/// A node's id in the cluster (chosen by the operator, never reused).
pub type NodeId = u64;

/// Where a node can be reached: carried in the Raft membership, so every
/// node knows every other node's endpoints (for `NOT_LEADER` answers and
/// `pinion cluster status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The Raft endpoint (SP REQ/REP), e.g. `tcp://127.0.0.2:7460`.
    pub raft: String,
    /// The publisher endpoint, e.g. `tcp://127.0.0.2:7450`.
    pub publish: String,
    /// The subscriber endpoint, e.g. `tcp://127.0.0.2:7451`.
    pub subscribe: String,
    /// The HTTP address, e.g. `127.0.0.2:7452`.
    pub http: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} publish={}", self.raft, self.publish)
    }
}

/// A checked publish, as a Raft entry carries it (and the journal stores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// When the leader accepted it, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// The publisher's client id.
    pub client_id: [u8; 16],
    /// The publisher's sequence number.
    pub seq: u64,
    /// The topic.
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// The messages one Raft entry carries: at least one, in log order. The
/// leader batches the publishes that arrive while its previous entry is
/// being written, so one entry (one fdatasync, one replication step, one
/// apply) serves many publishers. Each message is its own journal record:
/// its offset is the entry's first offset plus its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The messages (never empty).
    pub messages: Vec<Publish>,
}

impl Batch {
    /// A batch of `messages` (which must not be empty).
    pub fn new(messages: Vec<Publish>) -> Self {
        debug_assert!(!messages.is_empty(), "a batch carries at least one message");
        Self { messages }
    }
}

/// What applying a committed message produced: what the leader answers.
/// (A blank or membership entry produces none: its result is empty.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message is in the log at this offset.
    Logged {
        /// The message's offset.
        offset: u64,
    },
    /// The message was already in the log (same client id and seq) at
    /// `offset`: this entry is a second copy, which subscribers skip.
    Duplicate {
        /// The original's offset.
        offset: u64,
    },
}

/// The snapshot data: the state machine's own encoding (see
/// [`Machine::snapshot`](crate::Machine::snapshot)).
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    /// The openraft type configuration of a pinion cluster.
    pub TypeConfig:
        D = Batch,
        R = Vec<Applied>,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An entry of the cluster's log.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id: (term, index); with one leader per term the index names the entry.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership configuration.
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
/// A membership with the id of the entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;

/// The log id (term, index), with the node id openraft's standard leader
/// ids ignore.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}

/// A vote for `voted_for` (if any) in `term`, committed or not.
pub fn vote(term: u64, voted_for: Option<NodeId>, committed: bool) -> Vote {
    let mut v = openraft::Vote {
        leader_id: openraft::LeaderId { term, voted_for },
        committed: false,
    };
    if committed {
        v.commit();
    }
    v
}
