//! pinion's cluster: the hub replicated over Raft with
//! [openraft](https://docs.rs/openraft/0.9.25) (pinned `=0.9.25`; the
//! design and the reasons are in `docs/CLUSTER.md`).
//!
//! What is here so far:
//!
//! * [`TypeConfig`]: openraft's type configuration (node ids are `u64`,
//!   nodes carry their endpoints, an entry's data is a [`Batch`] of checked
//!   [`Publish`]es);
//! * [`LogStore`]: openraft's log storage **on the node's single journal
//!   file** (format version 2: every record carries its term and kind; a
//!   batch entry is one record per message, so offsets and Raft indexes
//!   differ and the store maps one to the other; the vote and the committed
//!   and purged positions live in the journal header). Group commit: one
//!   `pwrite` and one `fdatasync` per batch of appends, callbacks fired only
//!   after the sync;
//! * [`StateMachineStore`]: openraft's state machine around an application
//!   [`Machine`] (the hub's session table);
//! * [`codec`]: openraft types ↔ journal records ↔ the protobuf messages of
//!   `proto/pinion/raft/v1/raft.proto`.
//!
//! Both stores pass openraft's storage conformance suite
//! (`tests/storage_suite.rs`).
//!
//! ```
//! use pinion_cluster::{LogStore, codec, log_id};
//! use pinion_journal::JournalOptions;
//! use openraft::storage::{RaftLogStorage, RaftLogReader};
//!
//! # let dir = std::env::temp_dir().join(format!("pinion-cluster-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! rt.block_on(async {
//!     let mut log = LogStore::open(&dir.join("pinion.log"), JournalOptions::default()).unwrap();
//!     let state = log.get_log_state().await.unwrap();
//!     assert_eq!(state.last_log_id, None);
//! });
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
mod log_store;
pub mod network;
pub mod rpc;
mod state_machine;
mod types;

pub use log_store::{LogReader, LogStore, OffsetLookup, OpenError};
pub use state_machine::{Builder, Machine, StateMachineStore};
pub use types::{
    log_id, vote, Applied, Batch, Entry, LogId, Membership, NodeId, NodeInfo, Publish,
    SnapshotData, StorageError, StoredMembership, TypeConfig, Vote,
};
