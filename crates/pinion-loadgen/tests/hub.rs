//! A short real run against the hub (`pinion serve`, started by the bench
//! from the `pinion` binary of this workspace, built here if missing).

mod support;
use support::pinion_exe;

use pinion_loadgen::{pid_exists, run_publish, PublishArgs, Target};

#[test]
fn pinion_short_run() {
    let exe = pinion_exe();
    let args = PublishArgs::parse_from([
        "publish",
        "--target",
        "pinion",
        "--clients",
        "8",
        "--pipeline",
        "2",
        "--duration",
        "1.5",
        "--warmup",
        "0.2",
        "--no-progress",
    ])
    .unwrap();
    let reports = run_publish(&args, &exe).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.target, Target::Pinion);
    assert!(r.durable_ack);
    let run = &r.runs[0];
    assert!(run.acked > 0, "{run:?}");
    assert_eq!(run.errors, 0, "{:?}", run.error_kinds);
    let stored = run.stored.expect("offsets in the ACKs");
    assert!(stored >= run.total_acked);
    let pid = run.server_pid.expect("hub started");
    assert!(!pid_exists(pid), "hub pid {pid} still exists");
    // The hub's stats log gave its group-commit batch size.
    let batch = run
        .avg_batch
        .expect("batch size read from the hub's stats log");
    assert!(batch >= 1.0, "{batch}");
    let dir = run.data_dir.as_ref().expect("data dir");
    assert!(!dir.exists(), "{} not removed", dir.display());
}
