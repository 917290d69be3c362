//! openraft's storage conformance suite (`openraft::testing::Suite`) on the
//! journal-backed log store and the state machine store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use openraft::testing::{StoreBuilder, Suite};
use pinion_cluster::{
    Applied, LogStore, Machine, Publish, StateMachineStore, StorageError, TypeConfig,
};
use pinion_journal::JournalOptions;

/// A machine that remembers what it applied (enough for the suite, which
/// checks membership and applied ids, not application state).
#[derive(Debug, Default)]
struct Count(u64);

impl Machine for Count {
    fn apply(&mut self, index: u64, _msg: &Publish) -> Applied {
        self.0 += 1;
        Applied::Logged { offset: index }
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        // The suite installs snapshots whose bytes are its own.
        self.0 = data.try_into().map(u64::from_le_bytes).unwrap_or(0);
        Ok(())
    }
}

/// Removes the directory when the suite's test is done with the stores.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder {
    prealloc: u64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Count>, Dir> for Builder {
    async fn build(&self) -> Result<(Dir, LogStore, StateMachineStore<Count>), StorageError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pinion-cluster-suite-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let opts = JournalOptions {
            preallocate: self.prealloc,
            index_interval: 4,
            ..JournalOptions::default()
        };
        let log = LogStore::open(&dir.join("pinion.log"), opts).expect("open the log store");
        Ok((
            Dir(dir),
            log,
            StateMachineStore::new(Count::default(), None),
        ))
    }
}

#[test]
fn openraft_storage_suite_plain_file() {
    Suite::test_all(Builder { prealloc: 0 }).unwrap();
}

#[test]
fn openraft_storage_suite_prezeroed_file() {
    Suite::test_all(Builder {
        prealloc: 256 << 10,
    })
    .unwrap();
}

/// The same suite, one test at a time, so that a failure names its test
/// (`Suite::test_all` stops at the first failure without saying which).
#[test]
fn openraft_storage_suite_by_name() {
    type S = Suite<TypeConfig, LogStore, StateMachineStore<Count>, Builder, Dir>;
    macro_rules! each {
        ($($name:ident)*) => {{
            let mut failed = Vec::new();
            $(
                let rt = tokio::runtime::Runtime::new().unwrap();
                let r = rt.block_on(async {
                    let (_dir, log, sm) = Builder { prealloc: 0 }.build().await?;
                    S::$name(log, sm).await
                });
                if let Err(e) = r {
                    failed.push(format!("{}: {e}", stringify!($name)));
                }
            )*
            failed
        }};
    }
    let failed = each!(
        last_membership_in_log_initial last_membership_in_log last_membership_in_log_multi_step
        get_membership_initial get_membership_from_log_and_empty_sm get_membership_from_empty_log_and_sm
        get_membership_from_log_le_sm_last_applied get_membership_from_log_gt_sm_last_applied_1
        get_membership_from_log_gt_sm_last_applied_2 get_initial_state_without_init
        get_initial_state_membership_from_log_and_sm get_initial_state_with_state
        get_initial_state_last_log_gt_sm get_initial_state_last_log_lt_sm get_initial_state_log_ids
        get_initial_state_re_apply_committed save_vote get_log_entries limited_get_log_entries
        try_get_log_entry initial_logs get_log_state get_log_id last_id_in_log last_applied_state
        purge_logs_upto_0 purge_logs_upto_5 purge_logs_upto_20 delete_logs_since_11 delete_logs_since_0
        append_to_log snapshot_meta apply_single apply_multiple
    );
    assert!(failed.is_empty(), "{failed:#?}");
}
