//! Conversions between openraft's types, the journal's records and the
//! protobuf messages of `proto/pinion/raft/v1/raft.proto`.
//!
//! Decoders never panic: anything a peer or the disk can get wrong is a
//! [`DecodeError`].

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use pinion_journal::{NewEntry, Record, RecordKind};
use pinion_proto::raft as pb;
use pinion_proto::Message as _;

use crate::types::{
    log_id, Batch, Entry, LogId, Membership, NodeId, NodeInfo, Publish, TypeConfig, Vote,
};

/// Why bytes from a peer or from the disk are not a valid cluster message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a protobuf message of the expected type.
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    /// A field that must be present is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field has an impossible value.
    #[error("invalid field {0}")]
    Invalid(&'static str),
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Protobuf(e.to_string())
    }
}

/// Encodes a membership for a journal membership record.
pub fn encode_membership(m: &Membership) -> Vec<u8> {
    membership_to_pb(m).encode_to_vec()
}

/// Decodes a membership from a journal membership record.
///
/// # Errors
///
/// [`DecodeError`] if the bytes are not an encoded membership.
pub fn decode_membership(bytes: &[u8]) -> Result<Membership, DecodeError> {
    membership_from_pb(pb::Membership::decode(bytes)?)
}

/// A membership as a protobuf message.
pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::VoterSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| pb::NodeEntry {
                id: *id,
                node: Some(node_to_pb(n)),
            })
            .collect(),
    }
}

/// A membership from a protobuf message.
///
/// # Errors
///
/// [`DecodeError`] for no config or more than two, or a voter without its node.
pub fn membership_from_pb(m: pb::Membership) -> Result<Membership, DecodeError> {
    if m.configs.is_empty() || m.configs.len() > 2 {
        return Err(DecodeError::Invalid("membership.configs"));
    }
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|c| c.ids.into_iter().collect())
        .collect();
    let mut nodes = BTreeMap::new();
    for e in m.nodes {
        let node = e
            .node
            .ok_or(DecodeError::Missing("membership.nodes.node"))?;
        nodes.insert(e.id, node_from_pb(node));
    }
    // Every voter must have its node (openraft fills in defaults otherwise,
    // which would hide a damaged record).
    if configs.iter().flatten().any(|id| !nodes.contains_key(id)) {
        return Err(DecodeError::Invalid("membership.nodes"));
    }
    Ok(Membership::new(configs, nodes))
}

/// A node's endpoints as a protobuf message.
pub fn node_to_pb(n: &NodeInfo) -> pb::Node {
    pb::Node {
        raft: n.raft.clone(),
        publish: n.publish.clone(),
        subscribe: n.subscribe.clone(),
        http: n.http.clone(),
    }
}

/// A node's endpoints from a protobuf message.
pub fn node_from_pb(n: pb::Node) -> NodeInfo {
    NodeInfo {
        raft: n.raft,
        publish: n.publish,
        subscribe: n.subscribe,
        http: n.http,
    }
}

/// A log id as a protobuf message.
pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        index: id.index,
    }
}

/// A log id from a protobuf message.
pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    log_id(id.term, id.index)
}

/// A vote as a protobuf message.
pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        voted_for: v.leader_id.voted_for,
        committed: v.committed,
    }
}

/// A vote from a protobuf message.
pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    crate::types::vote(v.term, v.voted_for, v.committed)
}

/// An entry as a protobuf message (for replication).
pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    use openraft::EntryPayload as P;
    let payload = match &e.payload {
        P::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        P::Normal(b) => pb::entry::Payload::Batch(pb::Batch {
            messages: b
                .messages
                .iter()
                .map(|p| pb::Message {
                    timestamp_us: p.timestamp_us,
                    client_id: Bytes::copy_from_slice(&p.client_id),
                    seq: p.seq,
                    topic: p.topic.clone(),
                    payload: p.payload.clone(),
                })
                .collect(),
        }),
        P::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

/// An entry from a protobuf message.
///
/// # Errors
///
/// [`DecodeError`] for a missing log id or payload, an empty batch, or a
/// client id that is not 16 bytes.
pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    use openraft::EntryPayload as P;
    let id = e
        .log_id
        .as_ref()
        .ok_or(DecodeError::Missing("entry.log_id"))?;
    let payload = match e.payload.ok_or(DecodeError::Missing("entry.payload"))? {
        pb::entry::Payload::Blank(_) => P::Blank,
        pb::entry::Payload::Batch(b) => {
            if b.messages.is_empty() {
                return Err(DecodeError::Invalid("entry.batch.messages"));
            }
            let mut messages = Vec::with_capacity(b.messages.len());
            for m in b.messages {
                messages.push(Publish {
                    timestamp_us: m.timestamp_us,
                    client_id: m.client_id[..]
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("entry.message.client_id"))?,
                    seq: m.seq,
                    topic: m.topic,
                    payload: m.payload,
                });
            }
            P::Normal(Batch { messages })
        }
        pb::entry::Payload::Membership(m) => P::Membership(membership_from_pb(m)?),
    };
    Ok(Entry {
        log_id: log_id_from_pb(id),
        payload,
    })
}

/// How many journal records entry `e` takes: one per message of a batch,
/// one for a blank or membership entry.
pub fn records(e: &Entry) -> u64 {
    match &e.payload {
        openraft::EntryPayload::Normal(b) => b.messages.len().max(1) as u64,
        _ => 1,
    }
}

/// Calls `f` with the journal form of each record of `e`, whose first
/// record goes at `offset` (a membership is encoded into `scratch`). Stops
/// at the first error.
pub(crate) fn for_each_record<E>(
    e: &Entry,
    offset: u64,
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(&NewEntry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    use openraft::EntryPayload as P;
    let term = e.log_id.leader_id.term;
    let other = |index, kind, payload| NewEntry {
        index,
        term,
        kind,
        continued: false,
        timestamp_us: 0,
        client_id: [0; 16],
        seq: 0,
        topic: b"",
        payload,
    };
    match &e.payload {
        P::Blank => f(&other(offset, RecordKind::Blank, b"")),
        P::Normal(b) => {
            let n = b.messages.len();
            for (i, p) in b.messages.iter().enumerate() {
                f(&NewEntry {
                    index: offset + i as u64,
                    term,
                    kind: RecordKind::Message,
                    continued: i + 1 < n,
                    timestamp_us: p.timestamp_us,
                    client_id: p.client_id,
                    seq: p.seq,
                    topic: &p.topic,
                    payload: &p.payload,
                })?;
            }
            Ok(())
        }
        P::Membership(m) => {
            scratch.clear();
            membership_to_pb(m).encode(scratch).expect("a Vec grows");
            f(&other(offset, RecordKind::Membership, &scratch[..]))
        }
    }
}

/// Builds entries from journal records read in order: records of one
/// entry are consecutive, all but the last marked `continued`.
///
/// ```
/// use pinion_cluster::codec::EntryAssembler;
/// let asm = EntryAssembler::new(7);
/// assert_eq!(asm.next_index, 7);
/// assert!(!asm.in_entry());
/// ```
#[derive(Debug)]
pub struct EntryAssembler {
    /// The Raft index of the next entry to complete.
    pub next_index: u64,
    messages: Vec<Publish>,
    term: u64,
}

impl EntryAssembler {
    /// An assembler whose first entry has Raft index `next_index`.
    pub fn new(next_index: u64) -> Self {
        Self {
            next_index,
            messages: Vec::new(),
            term: 0,
        }
    }

    /// Whether records of an unfinished entry are held.
    pub fn in_entry(&self) -> bool {
        !self.messages.is_empty()
    }

    /// Takes the next record; returns the entry it completes, if any.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if a membership record does not decode, or an
    /// entry's records mix terms or kinds.
    pub fn push(&mut self, r: Record) -> Result<Option<Entry>, DecodeError> {
        use openraft::EntryPayload as P;
        if self.in_entry() && (r.kind != RecordKind::Message || r.term != self.term) {
            return Err(DecodeError::Invalid(
                "record continues an entry of another term or kind",
            ));
        }
        let payload = match r.kind {
            RecordKind::Blank => P::Blank,
            RecordKind::Membership => P::Membership(decode_membership(&r.payload)?),
            RecordKind::Message => {
                self.term = r.term;
                self.messages.push(Publish {
                    timestamp_us: r.timestamp_us,
                    client_id: r.client_id,
                    seq: r.seq,
                    topic: r.topic,
                    payload: r.payload,
                });
                if r.continued {
                    return Ok(None);
                }
                P::<TypeConfig>::Normal(Batch {
                    messages: std::mem::take(&mut self.messages),
                })
            }
        };
        let e = Entry {
            log_id: log_id(r.term, self.next_index),
            payload,
        };
        self.next_index += 1;
        Ok(Some(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u64) -> NodeInfo {
        NodeInfo {
            raft: format!("tcp://127.0.0.{i}:7460"),
            publish: format!("tcp://127.0.0.{i}:7450"),
            subscribe: format!("tcp://127.0.0.{i}:7451"),
            http: format!("127.0.0.{i}:7452"),
        }
    }

    #[test]
    fn membership_round_trip_and_refusals() {
        let nodes: BTreeMap<_, _> = (1..=4).map(|i| (i, node(i))).collect();
        let joint = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3])],
            nodes.clone(),
        );
        let back = decode_membership(&encode_membership(&joint)).unwrap();
        assert_eq!(back, joint);
        assert_eq!(back.learner_ids().collect::<Vec<_>>(), vec![4]);

        assert!(decode_membership(&[0xFF, 0xFF]).is_err());
        let no_configs = pb::Membership::default().encode_to_vec();
        assert_eq!(
            decode_membership(&no_configs),
            Err(DecodeError::Invalid("membership.configs"))
        );
        let mut missing = membership_to_pb(&joint);
        missing.nodes.retain(|n| n.id != 2);
        assert_eq!(
            decode_membership(&missing.encode_to_vec()),
            Err(DecodeError::Invalid("membership.nodes"))
        );
    }

    #[test]
    fn entries_round_trip_through_protobuf() {
        use openraft::EntryPayload as P;
        let entries = [
            Entry {
                log_id: log_id(3, 10),
                payload: P::Blank,
            },
            Entry {
                log_id: log_id(3, 11),
                payload: P::Normal(Batch::new(vec![
                    Publish {
                        timestamp_us: 5,
                        client_id: [9; 16],
                        seq: 77,
                        topic: Bytes::from_static(b"orders"),
                        payload: Bytes::from_static(b"hello"),
                    },
                    Publish {
                        timestamp_us: 6,
                        client_id: [8; 16],
                        seq: 1,
                        topic: Bytes::new(),
                        payload: Bytes::from_static(b"world"),
                    },
                ])),
            },
            Entry {
                log_id: log_id(4, 12),
                payload: P::Membership(Membership::new(
                    vec![BTreeSet::from([1])],
                    BTreeMap::from([(1, node(1))]),
                )),
            },
        ];
        for e in entries {
            let back =
                entry_from_pb(pb::Entry::decode(&entry_to_pb(&e).encode_to_vec()[..]).unwrap())
                    .unwrap();
            assert_eq!(back, e);
        }
        let mut bad = entry_to_pb(&Entry {
            log_id: log_id(1, 1),
            payload: P::Normal(Batch::new(vec![Publish {
                timestamp_us: 0,
                client_id: [0; 16],
                seq: 0,
                topic: Bytes::new(),
                payload: Bytes::new(),
            }])),
        });
        let mut empty = bad.clone();
        if let Some(pb::entry::Payload::Batch(b)) = &mut bad.payload {
            b.messages[0].client_id = Bytes::from_static(b"short");
        }
        if let Some(pb::entry::Payload::Batch(b)) = &mut empty.payload {
            b.messages.clear();
        }
        assert_eq!(
            entry_from_pb(empty),
            Err(DecodeError::Invalid("entry.batch.messages"))
        );
        assert_eq!(
            entry_from_pb(bad),
            Err(DecodeError::Invalid("entry.message.client_id"))
        );
        assert_eq!(
            entry_from_pb(pb::Entry::default()),
            Err(DecodeError::Missing("entry.log_id"))
        );
    }
}
