//! Arbitrary bytes into the cluster's decoders: a Raft request or reply
//! from a peer (down to openraft's types), an entry, and a membership
//! record from the disk. Never
//! panics; what decodes re-encodes to something that decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_cluster::{codec, rpc};
use pinion_proto::raft as pb;
use pinion_proto::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = codec::decode_membership(data) {
        let again = codec::decode_membership(&codec::encode_membership(&m)).expect("round trip");
        assert_eq!(again, m);
    }
    if let Ok(e) = pb::Entry::decode(data) {
        if let Ok(entry) = codec::entry_from_pb(e) {
            if let Some(pb::entry::Payload::Batch(b)) = codec::entry_to_pb(&entry).payload {
                assert!(!b.messages.is_empty(), "an empty batch decoded");
                assert_eq!(codec::records(&entry), b.messages.len() as u64);
            }
            let back = codec::entry_from_pb(codec::entry_to_pb(&entry)).expect("round trip");
            assert_eq!(back, entry);
        }
    }
    if let Ok(req) = pb::RaftRequest::decode(data) {
        match req.rpc {
            Some(pb::raft_request::Rpc::Append(a)) => {
                if let Ok(a) = rpc::append_from_pb(a) {
                    // What a node accepts has no holes.
                    let first = a.prev_log_id.map_or(0, |p| p.index + 1);
                    for (i, e) in a.entries.iter().enumerate() {
                        assert_eq!(e.log_id.index, first + i as u64);
                    }
                }
            }
            Some(pb::raft_request::Rpc::Vote(v)) => {
                let _ = rpc::vote_req_from_pb(v);
            }
            Some(pb::raft_request::Rpc::Snapshot(s)) => {
                let _ = rpc::snapshot_from_pb(s);
            }
            Some(pb::raft_request::Rpc::Admin(a)) => {
                if let Some(pb::admin_request::Op::Add(add)) = a.op {
                    let _ = add.node.map(codec::node_from_pb);
                }
            }
            None => {}
        }
    }
    if let Ok(rep) = pb::RaftReply::decode(data) {
        match rep.result {
            Some(pb::raft_reply::Result::Append(a)) => {
                let _ = rpc::append_reply_from_pb(a);
            }
            Some(pb::raft_reply::Result::Vote(v)) => {
                let _ = rpc::vote_reply_from_pb(v);
            }
            Some(pb::raft_reply::Result::Snapshot(s)) => {
                let _ = rpc::snapshot_reply_from_pb(s);
            }
            Some(pb::raft_reply::Result::Admin(a)) => {
                if let Some(m) = a.membership {
                    if let Ok(m) = codec::membership_from_pb(m) {
                        let again = codec::decode_membership(&codec::encode_membership(&m));
                        assert_eq!(again.ok(), Some(m));
                    }
                }
            }
            _ => {}
        }
    }
});
