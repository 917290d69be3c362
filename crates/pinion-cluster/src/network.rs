//! Node-to-node transport over pinion's own SP sockets: REQ/REP on
//! `tcp://`, one [`pb::RaftRequest`] per request and one [`pb::RaftReply`]
//! per reply (`proto/pinion/raft/v1/raft.proto`).
//!
//! * [`Network`] is openraft's network factory: one REQ socket per peer,
//!   dialed in the background (it reconnects by itself), one REQ context
//!   per call so that calls to one peer can overlap, each bounded by
//!   openraft's time-to-live for that RPC.
//! * [`serve`] answers a node's Raft endpoint: a REP socket with a few
//!   contexts, each decoding a request, handing it to the local `Raft` and
//!   sending its answer. A request that does not decode, or is addressed
//!   to another node id, is answered with an error reply (the peer is at
//!   fault; nothing reaches Raft).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{OptionalSend, Raft};
use pinion::{Protocol, Runtime, Socket};
use pinion_proto::raft as pb;
use pinion_proto::Message as _;

use crate::codec::DecodeError;
use crate::rpc;
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote};

/// Largest Raft message a node accepts (a full snapshot is sent in one
/// message; append batches are far smaller).
pub const MAX_RAFT_MESSAGE: u64 = 64 << 20;

/// Socket options of both ends: big messages allowed, no REQ resend
/// (openraft retries on its own terms), quick reconnects (a restarted peer
/// must be reachable again well within an election timeout).
fn options() -> pinion::Options {
    pinion::Options {
        recv_max_size: MAX_RAFT_MESSAGE,
        req_resend: None,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        ..pinion::Options::default()
    }
}

/// Concurrent requests a node's Raft endpoint serves.
const SERVER_CONTEXTS: usize = 8;

/// Why a call to a peer failed (the transport's view).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The socket failed (not connected, closed).
    #[error("transport: {0}")]
    Transport(#[from] pinion::Error),
    /// The peer's reply did not decode (the peer is at fault).
    #[error("malformed reply: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer answered with an error (shutting down, wrong node id, or it
    /// could not decode our request).
    #[error("peer refused the request: {0}")]
    Refused(String),
    /// The reply was of another kind than the request.
    #[error("reply of the wrong kind")]
    WrongKind,
}

/// When this node last heard from a leader, and the commit position that
/// leader announced: what a follower or learner needs to tell whether it
/// is current enough to serve subscribers (the hub's `/ready`). openraft
/// 0.9's metrics carry neither on a non-leader.
#[derive(Debug)]
pub struct LeaderContact {
    epoch: std::time::Instant,
    /// Milliseconds from `epoch` to the last AppendEntries from a leader
    /// this node accepted as current (0: never).
    at_ms: std::sync::atomic::AtomicU64,
    /// The leader's committed index + 1 in that request (0: nothing).
    commit_next: std::sync::atomic::AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            at_ms: std::sync::atomic::AtomicU64::new(0),
            commit_next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    /// Records an AppendEntries accepted from the current leader.
    pub fn record(&self, leader_commit_next: u64) {
        use std::sync::atomic::Ordering;
        let ms = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.at_ms.store(ms, Ordering::Relaxed);
        self.commit_next
            .fetch_max(leader_commit_next, Ordering::Relaxed);
    }

    /// How long ago the last leader contact was (`None`: never).
    pub fn since(&self) -> Option<std::time::Duration> {
        use std::sync::atomic::Ordering;
        let at = self.at_ms.load(Ordering::Relaxed);
        (at > 0).then(|| {
            let now = self.epoch.elapsed().as_millis() as u64;
            std::time::Duration::from_millis(now.saturating_sub(at))
        })
    }

    /// The highest commit position (index + 1) a leader announced.
    pub fn commit_next(&self) -> u64 {
        self.commit_next.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// openraft's network factory over pinion REQ sockets.
#[derive(Debug, Clone)]
pub struct Network {
    node_id: NodeId,
    rt: Runtime,
    /// TLS for `tls+tcp://` peers (mutual: this node's certificate, and
    /// the CA the peers' chain to).
    tls: Option<pinion::TlsConfig>,
}

impl Network {
    /// The network of node `node_id`, its sockets on pinion's global
    /// runtime.
    pub fn new(node_id: NodeId) -> Self {
        Self::on(node_id, Runtime::global().clone())
    }

    /// The network of node `node_id`, its sockets on `rt` (a hub node puts
    /// them on the event loop openraft runs on, so a Raft message reaches
    /// openraft without waking another thread).
    pub fn on(node_id: NodeId, rt: Runtime) -> Self {
        Self {
            node_id,
            rt,
            tls: None,
        }
    }

    /// The TLS settings its connections to `tls+tcp://` peers use.
    pub fn with_tls(mut self, tls: Option<pinion::TlsConfig>) -> Self {
        self.tls = tls;
        self
    }
}

/// The connection to one peer.
pub struct Peer {
    from: NodeId,
    to: NodeId,
    url: String,
    rt: Runtime,
    tls: Option<pinion::TlsConfig>,
    socket: Option<Socket>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            from: self.node_id,
            to: target,
            url: node.raft.clone(),
            rt: self.rt.clone(),
            tls: self.tls.clone(),
            socket: None,
        }
    }
}

impl Peer {
    async fn socket(&mut self) -> Result<&Socket, CallError> {
        if self.socket.is_none() {
            let s = Socket::on(&self.rt, Protocol::Req0, options())?;
            if let Some(t) = &self.tls {
                s.set_tls(t.clone());
            }
            s.dial_background(&self.url).await?;
            self.socket = Some(s);
        }
        Ok(self.socket.as_ref().expect("set above"))
    }

    /// One request/reply exchange, bounded by `ttl`. `Ok(None)` = timeout.
    async fn call(
        &mut self,
        rpc: pb::raft_request::Rpc,
        ttl: Duration,
    ) -> Result<Option<pb::raft_reply::Result>, CallError> {
        let req = pb::RaftRequest {
            from: self.from,
            to: self.to,
            rpc: Some(rpc),
        };
        let body = req.encode_to_vec();
        let socket = self.socket().await?;
        let mut ctx = socket.context().await?;
        let sent = tokio::time::timeout(ttl, async {
            ctx.send(body).await?;
            ctx.recv().await
        })
        .await;
        let bytes = match sent {
            Err(_) => return Ok(None),
            Ok(r) => r?,
        };
        let reply = pb::RaftReply::decode(bytes).map_err(DecodeError::from)?;
        match reply.result {
            None => Err(DecodeError::Missing("reply.result").into()),
            Some(pb::raft_reply::Result::Error(e)) => Err(CallError::Refused(e)),
            Some(r) => Ok(Some(r)),
        }
    }
}

fn rpc_err<E: std::error::Error>(e: CallError) -> RPCError<NodeId, NodeInfo, E> {
    match e {
        CallError::Transport(e) => RPCError::Unreachable(Unreachable::new(&e)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn timeout<E: std::error::Error>(
    action: openraft::network::RPCTypes,
    from: NodeId,
    to: NodeId,
    ttl: Duration,
) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Timeout(Timeout {
        action,
        id: from,
        target: to,
        timeout: ttl,
    })
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        let rpc = pb::raft_request::Rpc::Append(rpc::append_to_pb(&req));
        match self.call(rpc, ttl).await.map_err(rpc_err)? {
            None => Err(timeout(
                openraft::network::RPCTypes::AppendEntries,
                self.from,
                self.to,
                ttl,
            )),
            Some(pb::raft_reply::Result::Append(r)) => {
                rpc::append_reply_from_pb(r).map_err(|e| rpc_err(e.into()))
            }
            Some(_) => Err(rpc_err(CallError::WrongKind)),
        }
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        let rpc = pb::raft_request::Rpc::Vote(rpc::vote_req_to_pb(&req));
        match self.call(rpc, ttl).await.map_err(rpc_err)? {
            None => Err(timeout(
                openraft::network::RPCTypes::Vote,
                self.from,
                self.to,
                ttl,
            )),
            Some(pb::raft_reply::Result::Vote(r)) => {
                rpc::vote_reply_from_pb(r).map_err(|e| rpc_err(e.into()))
            }
            Some(_) => Err(rpc_err(CallError::WrongKind)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let ttl = option.hard_ttl();
        let rpc = pb::raft_request::Rpc::Snapshot(rpc::snapshot_to_pb(&vote, &snapshot));
        let stream_err = |e: CallError| -> StreamingError<TypeConfig, Fatal<NodeId>> {
            match e {
                CallError::Transport(e) => StreamingError::Unreachable(Unreachable::new(&e)),
                other => StreamingError::Network(NetworkError::new(&other)),
            }
        };
        match self.call(rpc, ttl).await.map_err(stream_err)? {
            None => Err(StreamingError::Timeout(Timeout {
                action: openraft::network::RPCTypes::InstallSnapshot,
                id: self.from,
                target: self.to,
                timeout: ttl,
            })),
            Some(pb::raft_reply::Result::Snapshot(r)) => {
                rpc::snapshot_reply_from_pb(r).map_err(|e| stream_err(e.into()))
            }
            Some(_) => Err(stream_err(CallError::WrongKind)),
        }
    }
}

// Unused with `generic-snapshot-data` (full_snapshot replaces it), but the
// trait still names the error type.
#[allow(dead_code)]
type _SnapshotErr = RemoteError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>;

/// Serves node `node_id`'s Raft endpoint at `url` until the returned socket
/// is closed or dropped. Returns the socket and the URL actually bound
/// (useful with port 0).
///
/// # Errors
///
/// If the socket cannot be created or the address cannot be bound.
pub async fn serve(
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    url: &str,
    contact: Arc<LeaderContact>,
) -> Result<(Socket, String), pinion::Error> {
    serve_on(Runtime::global(), raft, node_id, url, contact, None).await
}

/// As [`serve`], with the endpoint's socket on `rt`, and for a
/// `tls+tcp://` endpoint the TLS settings (`tls`: a node certificate and,
/// for mutual TLS, the CA and `AuthMode::Required`).
///
/// # Errors
///
/// If the socket cannot be created or the address cannot be bound.
pub async fn serve_on(
    rt: &Runtime,
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    url: &str,
    contact: Arc<LeaderContact>,
    tls: Option<pinion::TlsConfig>,
) -> Result<(Socket, String), pinion::Error> {
    let socket = Socket::on(rt, Protocol::Rep0, options())?;
    if let Some(t) = tls {
        socket.set_tls(t);
    }
    let ep = socket.listen(url).await?;
    let bound = ep.url().to_string();
    for _ in 0..SERVER_CONTEXTS {
        let mut ctx = socket.context().await?;
        let raft = raft.clone();
        let contact = contact.clone();
        tokio::spawn(async move {
            loop {
                let Ok(req) = ctx.recv().await else { break };
                let reply = handle(&raft, node_id, req, &contact).await;
                if ctx.send(reply.encode_to_vec()).await.is_err() {
                    // The requester went away; its context is gone.
                    continue;
                }
            }
        });
    }
    Ok((socket, bound))
}

fn error_reply(msg: String) -> pb::RaftReply {
    pb::RaftReply {
        result: Some(pb::raft_reply::Result::Error(msg)),
    }
}

/// Decodes one request, hands it to Raft, encodes the answer; an
/// AppendEntries that Raft takes as coming from the current leader is
/// recorded in `contact`.
pub async fn handle(
    raft: &Raft<TypeConfig>,
    node_id: NodeId,
    bytes: bytes::Bytes,
    contact: &LeaderContact,
) -> pb::RaftReply {
    use pb::raft_reply::Result as R;
    let req = match pb::RaftRequest::decode(bytes) {
        Ok(r) => r,
        Err(e) => return error_reply(format!("malformed request: {e}")),
    };
    let is_admin = matches!(req.rpc, Some(pb::raft_request::Rpc::Admin(_)));
    if req.to != node_id && !(is_admin && req.to == 0) {
        return error_reply(format!("this is node {node_id}, not node {}", req.to));
    }
    let result = match req.rpc {
        None => return error_reply("request without an rpc".into()),
        Some(pb::raft_request::Rpc::Append(a)) => match rpc::append_from_pb(a) {
            Err(e) => return error_reply(format!("malformed append: {e}")),
            Ok(a) => {
                let commit_next = a.leader_commit.map_or(0, |l| l.index + 1);
                match raft.append_entries(a).await {
                    Ok(r) => {
                        if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                            contact.record(commit_next);
                        }
                        R::Append(rpc::append_reply_to_pb(&r))
                    }
                    Err(e) => return error_reply(e.to_string()),
                }
            }
        },
        Some(pb::raft_request::Rpc::Vote(v)) => match rpc::vote_req_from_pb(v) {
            Err(e) => return error_reply(format!("malformed vote: {e}")),
            Ok(v) => match raft.vote(v).await {
                Ok(r) => R::Vote(rpc::vote_reply_to_pb(&r)),
                Err(e) => return error_reply(e.to_string()),
            },
        },
        Some(pb::raft_request::Rpc::Admin(a)) => R::Admin(admin(raft, node_id, a).await),
        Some(pb::raft_request::Rpc::Snapshot(s)) => match rpc::snapshot_from_pb(s) {
            Err(e) => return error_reply(format!("malformed snapshot: {e}")),
            Ok((vote, snap)) => match raft.install_full_snapshot(vote, snap).await {
                Ok(r) => R::Snapshot(rpc::snapshot_reply_to_pb(&r)),
                Err(e) => return error_reply(e.to_string()),
            },
        },
    };
    pb::RaftReply {
        result: Some(result),
    }
}

/// Performs a membership change on the leader (see `AdminRequest`).
async fn admin(raft: &Raft<TypeConfig>, me: NodeId, a: pb::AdminRequest) -> pb::AdminReply {
    use openraft::ChangeMembers;
    use std::collections::BTreeSet;
    let fail = |e: String| pb::AdminReply {
        membership: None,
        leader_raft: None,
        error: Some(e),
    };
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(me) {
        let url = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.raft.clone())
            })
            .unwrap_or_default();
        return pb::AdminReply {
            membership: None,
            leader_raft: Some(url),
            error: None,
        };
    }
    let result = match a.op {
        None => return fail("admin request without an operation".into()),
        Some(pb::admin_request::Op::Add(add)) => {
            let Some(node) = add.node.map(crate::codec::node_from_pb) else {
                return fail("add: missing node".into());
            };
            if add.id == 0 || !node.raft.starts_with("tcp://") {
                return fail("add: the node needs an id > 0 and a tcp:// Raft endpoint".into());
            }
            // openraft's `blocking` only waits until the learner is
            // within `replication_lag_threshold`; wait here until it holds
            // every entry the leader had when it was added.
            let target = raft.metrics().borrow().last_log_index;
            match raft.add_learner(add.id, node, true).await {
                Err(e) => Err(e.to_string()),
                Ok(r) => match wait_caught_up(raft, add.id, target).await {
                    Err(e) => Err(e),
                    Ok(()) if !add.voter => Ok(r),
                    Ok(()) => raft
                        .change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([add.id])),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string()),
                },
            }
        }
        Some(pb::admin_request::Op::Remove(id)) => {
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            let r = if voters.contains(&id) {
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
            };
            r.map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(r) => pb::AdminReply {
            membership: r.membership.as_ref().map(crate::codec::membership_to_pb),
            leader_raft: None,
            error: None,
        },
        Err(e) => fail(e),
    }
}

/// Waits (up to 10 minutes) until the leader sees `id` matching at least
/// `target`.
async fn wait_caught_up(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    target: Option<u64>,
) -> Result<(), String> {
    let Some(target) = target else { return Ok(()) };
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let matched = raft
            .metrics()
            .borrow()
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .map(|l| l.index);
        if matched.is_some_and(|m| m >= target) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "node {id} did not catch up to index {target} within 10 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
