//! openraft's state machine on an application [`Machine`].
//!
//! Every node applies the committed entries, in log order, to its own
//! machine; the hub's machine is the (client id, seq) session table, so
//! after a failover the new leader answers a resend of a committed message
//! with its original offset. The machine is rebuilt at start by applying
//! the log again (openraft re-applies every committed entry after the
//! machine's last applied id, which is `None` for a machine that keeps
//! nothing on disk). Snapshots are the machine's own encoding, kept in
//! memory; they are only sent to a node whose log must be rebuilt.

use std::io::Cursor;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, StorageIOError};

use crate::log_store::OffsetLookup;
use crate::types::{
    Applied, Entry, LogId, NodeId, NodeInfo, Publish, StorageError, StoredMembership, TypeConfig,
};

/// The application's replicated state: what a committed message does.
/// Deterministic: every node applies the same entries in the same order and
/// must reach the same state.
pub trait Machine: Send + Sync + 'static {
    /// Applies the committed message at `offset`.
    fn apply(&mut self, offset: u64, msg: &Publish) -> Applied;
    /// Called after each run of applied entries: every record below offset
    /// `next` (messages, blank and membership entries) is applied. The
    /// hub hands the run to its subscribers here.
    fn applied(&mut self, next: u64) {
        let _ = next;
    }
    /// The state as bytes (a snapshot as of the last applied entry).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    ///
    /// # Errors
    ///
    /// A description of why the bytes are not a snapshot of this machine.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// openraft's [`RaftStateMachine`] around a [`Machine`].
#[derive(Debug)]
pub struct StateMachineStore<M> {
    machine: M,
    offsets: Option<OffsetLookup>,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Option<(SnapshotMeta<NodeId, NodeInfo>, Vec<u8>)>,
    snapshots_built: u64,
}

impl<M: Machine> StateMachineStore<M> {
    /// A state machine store that has applied nothing. `offsets` tells where
    /// each entry starts in the log (from [`LogStore::offsets`]); without
    /// it (tests of the Raft storage contract), an entry's offset is taken
    /// to be its index.
    ///
    /// [`LogStore::offsets`]: crate::LogStore::offsets
    pub fn new(machine: M, offsets: Option<OffsetLookup>) -> Self {
        Self {
            machine,
            offsets,
            applied: None,
            membership: StoredMembership::default(),
            current: None,
            snapshots_built: 0,
        }
    }

    /// The application machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    fn build(&mut self) -> Snapshot<TypeConfig> {
        self.snapshots_built += 1;
        let data = self.machine.snapshot();
        let snapshot_id = match self.applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, self.snapshots_built
            ),
            None => format!("0-0-{}", self.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        self.current = Some((meta.clone(), data.clone()));
        Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        Ok(self.build())
    }
}

/// A snapshot builder: a copy of the state taken when openraft asked for it.
#[derive(Debug)]
pub struct Builder {
    snapshot: Option<Snapshot<TypeConfig>>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.snapshot.take().ok_or_else(|| {
            StorageIOError::write_snapshot(
                None,
                openraft::AnyError::error("snapshot already built"),
            )
            .into()
        })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachineStore<M> {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut end = None;
        for e in entries {
            let index = e.log_id.index;
            let at = match &self.offsets {
                None => index,
                Some(o) => o.start(index).ok_or_else(|| {
                    StorageError::from(StorageIOError::read_log_at_index(
                        index,
                        openraft::AnyError::error("a committed entry has no offset in the log"),
                    ))
                })?,
            };
            self.applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => {
                    end = Some(at + 1);
                    Vec::new()
                }
                EntryPayload::Normal(ref b) => {
                    end = Some(at + b.messages.len() as u64);
                    b.messages
                        .iter()
                        .zip(at..)
                        .map(|(m, offset)| self.machine.apply(offset, m))
                        .collect()
                }
                EntryPayload::Membership(m) => {
                    end = Some(at + 1);
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    Vec::new()
                }
            });
        }
        if let Some(end) = end {
            self.machine.applied(end);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // The copy is taken here, while openraft serialises access to the
        // state machine; building it is then independent of later applies.
        Builder {
            snapshot: Some(self.build()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.machine.restore(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e),
            ))
        })?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
