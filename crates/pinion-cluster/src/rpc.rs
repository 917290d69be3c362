//! openraft's RPC messages ↔ the protobuf messages of
//! `proto/pinion/raft/v1/raft.proto` (pure conversions, no I/O).

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{Snapshot, SnapshotMeta};
use pinion_proto::raft as pb;

use crate::codec::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, membership_from_pb, membership_to_pb,
    vote_from_pb, vote_to_pb, DecodeError,
};
use crate::types::{NodeId, NodeInfo, StoredMembership, TypeConfig, Vote};

fn need<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(field))
}

/// An append-entries request as protobuf.
pub fn append_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_to_pb),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id_to_pb),
    }
}

/// An append-entries request from protobuf.
///
/// # Errors
///
/// [`DecodeError`] for a missing vote or a malformed entry.
pub fn append_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    let vote = vote_from_pb(&need(r.vote, "append.vote")?);
    let entries = r
        .entries
        .into_iter()
        .map(entry_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    // Entries must be consecutive and follow prev_log_id: a peer that sends
    // anything else is broken, and the log must never get a hole.
    let first = r.prev_log_id.as_ref().map_or(0, |p| p.index + 1);
    if entries
        .iter()
        .zip(first..)
        .any(|(e, want)| e.log_id.index != want)
    {
        return Err(DecodeError::Invalid("append.entries (not consecutive)"));
    }
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id: r.prev_log_id.as_ref().map(log_id_from_pb),
        entries,
        leader_commit: r.leader_commit.as_ref().map(log_id_from_pb),
    })
}

/// An append-entries reply as protobuf.
pub fn append_reply_to_pb(r: &AppendEntriesResponse<NodeId>) -> pb::AppendEntriesReply {
    use pb::append_entries_reply::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
            matching: m.as_ref().map(log_id_to_pb),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesReply {
        result: Some(result),
    }
}

/// An append-entries reply from protobuf.
///
/// # Errors
///
/// [`DecodeError::Missing`] without a result.
pub fn append_reply_from_pb(
    r: pb::AppendEntriesReply,
) -> Result<AppendEntriesResponse<NodeId>, DecodeError> {
    use pb::append_entries_reply::Result as R;
    Ok(match need(r.result, "append_reply.result")? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => {
            AppendEntriesResponse::PartialSuccess(p.matching.as_ref().map(log_id_from_pb))
        }
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(&v)),
    })
}

/// A vote request as protobuf.
pub fn vote_req_to_pb(r: &VoteRequest<NodeId>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// A vote request from protobuf.
///
/// # Errors
///
/// [`DecodeError::Missing`] without a vote.
pub fn vote_req_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<NodeId>, DecodeError> {
    Ok(VoteRequest {
        vote: vote_from_pb(&need(r.vote, "vote.vote")?),
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

/// A vote reply as protobuf.
pub fn vote_reply_to_pb(r: &VoteResponse<NodeId>) -> pb::VoteReply {
    pb::VoteReply {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// A vote reply from protobuf.
///
/// # Errors
///
/// [`DecodeError::Missing`] without a vote.
pub fn vote_reply_from_pb(r: pb::VoteReply) -> Result<VoteResponse<NodeId>, DecodeError> {
    Ok(VoteResponse {
        vote: vote_from_pb(&need(r.vote, "vote_reply.vote")?),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

/// A full snapshot as protobuf.
pub fn snapshot_to_pb(vote: &Vote, s: &Snapshot<TypeConfig>) -> pb::SnapshotRequest {
    let m = &s.meta;
    pb::SnapshotRequest {
        vote: Some(vote_to_pb(vote)),
        meta: Some(pb::SnapshotMeta {
            last_log_id: m.last_log_id.as_ref().map(log_id_to_pb),
            last_membership_log_id: m.last_membership.log_id().as_ref().map(log_id_to_pb),
            last_membership: Some(membership_to_pb(m.last_membership.membership())),
            snapshot_id: m.snapshot_id.clone(),
        }),
        data: s.snapshot.get_ref().clone().into(),
    }
}

/// A full snapshot from protobuf.
///
/// # Errors
///
/// [`DecodeError`] for a missing vote, meta or membership, or a malformed
/// membership.
pub fn snapshot_from_pb(
    r: pb::SnapshotRequest,
) -> Result<(Vote, Snapshot<TypeConfig>), DecodeError> {
    let vote = vote_from_pb(&need(r.vote, "snapshot.vote")?);
    let meta = need(r.meta, "snapshot.meta")?;
    let membership =
        membership_from_pb(need(meta.last_membership, "snapshot.meta.last_membership")?)?;
    let meta: SnapshotMeta<NodeId, NodeInfo> = SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_from_pb),
        last_membership: StoredMembership::new(
            meta.last_membership_log_id.as_ref().map(log_id_from_pb),
            membership,
        ),
        snapshot_id: meta.snapshot_id,
    };
    Ok((
        vote,
        Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(r.data.to_vec())),
        },
    ))
}

/// A snapshot reply as protobuf.
pub fn snapshot_reply_to_pb(r: &SnapshotResponse<NodeId>) -> pb::SnapshotReply {
    pb::SnapshotReply {
        vote: Some(vote_to_pb(&r.vote)),
    }
}

/// A snapshot reply from protobuf.
///
/// # Errors
///
/// [`DecodeError::Missing`] without a vote.
pub fn snapshot_reply_from_pb(
    r: pb::SnapshotReply,
) -> Result<SnapshotResponse<NodeId>, DecodeError> {
    Ok(SnapshotResponse {
        vote: vote_from_pb(&need(r.vote, "snapshot_reply.vote")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{log_id, Entry};
    use openraft::EntryPayload;

    #[test]
    fn append_round_trip_and_holes_refused() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 11),
                    payload: EntryPayload::Blank,
                },
            ],
            leader_commit: Some(log_id(2, 9)),
        };
        let back = append_from_pb(append_to_pb(&req)).unwrap();
        assert_eq!(
            (
                back.vote,
                back.prev_log_id,
                back.entries,
                back.leader_commit
            ),
            (
                req.vote,
                req.prev_log_id,
                req.entries.clone(),
                req.leader_commit
            )
        );
        let mut hole = append_to_pb(&req);
        hole.entries.remove(0);
        assert!(append_from_pb(hole).is_err());
        let mut no_vote = append_to_pb(&req);
        no_vote.vote = None;
        assert_eq!(
            append_from_pb(no_vote).err(),
            Some(DecodeError::Missing("append.vote"))
        );
        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 10))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 2)),
        ] {
            assert_eq!(append_reply_from_pb(append_reply_to_pb(&r)).unwrap(), r);
        }
    }

    #[test]
    fn vote_round_trip() {
        let req = VoteRequest::<NodeId> {
            vote: Vote::new(5, 2),
            last_log_id: Some(log_id(4, 100)),
        };
        assert_eq!(vote_req_from_pb(vote_req_to_pb(&req)).unwrap(), req);
        let rep = VoteResponse::<NodeId> {
            vote: Vote::new(5, 2),
            vote_granted: true,
            last_log_id: None,
        };
        assert_eq!(vote_reply_from_pb(vote_reply_to_pb(&rep)).unwrap(), rep);
    }
}
