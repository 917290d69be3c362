//! `pinion bench fanout`: how many idle WebSocket subscribers the hub holds,
//! what each costs it in memory, and how fast one publish reaches all of
//! them.
//!
//! One run, for `N` connections:
//!
//! 1. start `pinion serve` (fresh temp data dir, free loopback ports) or use
//!    `--hub-url`/`--http-url`; one warm-up publish; read the hub's RSS
//!    (`VmRSS`) and the machine's slab;
//! 2. open `N` WebSocket subscribers to `ws://127.0.0.1:H/sub?topic=T`
//!    from 127.0.0.x source addresses (10,000 per address) with a
//!    progress bar and the connect rate ([`clients`]); wait until the hub's
//!    `/metrics` counts them (`pinion_subscribers{transport="ws"}`); read
//!    the RSS again: (after − before) ÷ N is the **hub memory per idle
//!    connection**;
//! 3. publish `--messages` messages one at a time over SP REQ/TCP, each
//!    carrying its index and its send time (the publisher's clock, taken
//!    right before the request is written); after each ACK wait until every
//!    subscriber has it (or `--deliver-timeout`), then pause `--interval-ms`.
//!    Every subscriber records publish→deliver latency in an HDR histogram;
//!    the latest arrival of a message gives its **time to all N**;
//! 4. with `--slow K`: open K more subscribers that never read, and repeat
//!    step 3 while pushing `--slow-fill-kib` of filler (on a topic only they
//!    subscribe to) at them, interleaved with the measured messages, so their
//!    sockets fill and the hub queues for them and cuts them at its 1 MiB
//!    bound: the figures with and without them, side by side;
//! 5. check every subscriber got every message (missing ones are reported),
//!    close everything, wait for the hub to count the subscribers gone, and
//!    stop the hub by PID.
//!
//! CPU use of the hub, of the bench and of everything else is read from
//! `/proc` during step 3; a run in which other processes used more than
//! [`crate::CONTENDED_PCT`] % of a core is flagged and left out of the
//! medians when clean runs exist.
//!
//! **Per-topic mode** (`--topics K`, module `per_topic`): subscriber `i`
//! takes one topic, `t.<i % K>/` (`--topics all`: one each), and a paced,
//! open-loop, pipelined publisher sends `--rate` messages per second, each
//! to a random topic (seeded), for `--warmup` + `--duration` seconds;
//! publish→deliver at the targeted subscribers, publish→ACK, hub CPU per
//! publish and per delivery, and every subscriber is checked to get exactly
//! its topic's messages, once each, in order.
//!
//! **`--idle M`** (both modes; comma-separated for a series): M more
//! subscribers, each on its own topic `idle.<i>/` that nobody publishes to,
//! opened before anything is measured and held (reading) to the end.
//!
//! **Multi-node mode** (`--nodes N [--learners L]`, both modes; module
//! `nodes`): instead of one hub the bench starts a local cluster, N voters
//! then L learners (each `pinion serve --node-id` its own process on
//! 127.0.0.1 with free ports and the bench's lifted connection caps;
//! learners added with `pinion cluster add --learner` once a leader exists,
//! caught up before anyone subscribes). Subscriber `i` of `n` goes to node
//! `⌊i·(N+L)/n⌋`'s HTTP port (an even, contiguous split over every node),
//! and the subscribers live in worker processes (module `workers`: the
//! hidden `pinion bench fanout-worker`, at most `--worker-connections`,
//! 19,000 by default, each), because one process here may open at most
//! ~19,950 files; the parent talks to them in JSON lines over their
//! stdin/stdout and merges their histograms and tallies. Send times are
//! nanoseconds since a base read on `CLOCK_MONOTONIC`, the same clock in
//! every process. Publishing goes to the leader. The figures gain a
//! per-node table: role, subscribers, hub CPU per delivery, memory per
//! idle connection, replication lag (sampled from `/metrics` during the
//! measured phase) and missing/duplicate deliveries; a multi-node run with
//! any missing or duplicate delivery makes `pinion bench fanout` fail. The
//! limits are checked first: at most 19,000 subscribers per node, a worker
//! within the open-file hard limit, about 24 KiB of available memory per
//! subscriber ([`LoadgenError::Capacity`] otherwise). `--slow`, `--idle`
//! and `--hub-url` are single-hub only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::driver::new_histogram;
use crate::error::LoadgenError;
use crate::report::{median, median_runs, thousands, Latency, CONTENDED_PCT};
use crate::server::{self, check_interrupted};

mod clients;
mod foreign;
mod hub;
mod nodes;
mod paced;
mod per_topic;
mod topics;
mod workers;
mod ws;

use clients::{ClientPlan, Clients, Outcome, Target};
pub use foreign::run_idle_pairs;
use hub::{HubAddrs, Publisher};
pub use nodes::NodeRun;
pub use per_topic::{TopicsRun, TopicsSummary};
pub use workers::run_fanout_worker;

use crate::targets::cluster;
use nodes::Site;
pub use topics::Topics;
use workers::{Subs, Workers};

/// Connections per 127.0.0.x source address (see `driver::source_addr`).
const PER_SOURCE_ADDR: usize = 10_000;
/// Descriptors a process needs besides one per connection (std streams,
/// epoll and event fds, listeners, the log, the publisher, HTTP polls).
const FD_MARGIN: u64 = 64;

/// Why the open-file limit may not be raisable: raising the hard limit
/// needs CAP_SYS_RESOURCE, which root may lack (e.g. in a container or VM
/// sandbox whose capability bounding set drops it).
fn fd_limit_hint() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    const CAP_SYS_RESOURCE: u32 = 24;
    match eff {
        Some(caps) if caps & (1 << CAP_SYS_RESOURCE) == 0 => {
            "this process lacks CAP_SYS_RESOURCE (not in its effective set, even as root), \
             so the hard limit (`ulimit -Hn`) cannot be lifted from here; start the bench \
             from a shell whose hard limit is already high enough"
                .to_string()
        }
        _ => "raise the hard limit (`ulimit -Hn`, /etc/security/limits.conf, or \
              LimitNOFILE= for a systemd unit) and run again"
            .to_string(),
    }
}

/// The soft open-file limit of a process, from `/proc/<pid>/limits`.
fn fd_limit_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Arguments of `pinion bench fanout`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// WebSocket subscribers; comma-separated for a series (e.g.
    /// 1000,50000,100000: ratios are against the first).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize])]
    pub connections: Vec<usize>,
    /// Broadcast mode: measured messages per phase, published one at a time.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Payload bytes of a measured message (at least 12: index + send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Broadcast mode: pause after a message reached every subscriber,
    /// milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// How long one message may take to reach every subscriber before the
    /// bench moves on (and reports the missing ones), seconds.
    #[arg(long, default_value_t = 30.0)]
    pub deliver_timeout: f64,
    /// Also run a phase with K extra subscribers that never read.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Filler pushed at the slow subscribers during that phase, KiB each.
    /// (On loopback a stalled socket takes about 4 MiB before the hub has
    /// to queue: the default cuts them about half way through the phase.)
    #[arg(long, default_value_t = 8192)]
    pub slow_fill_kib: usize,
    /// Payload bytes of one filler message.
    #[arg(long, default_value_t = 65536)]
    pub fill_size: usize,
    /// Runs per connection count (interleaved); medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Connects in progress at once, per subscriber thread.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Threads holding the (reading) subscribers.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The started hub's --fsync policy.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// One more argument for the started hub, as `pinion serve` takes it
    /// (repeat; e.g. `--hub-arg=--fanout-send=io_uring`).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub hub_arg: Vec<String>,
    /// Use a running hub's publisher endpoint (tcp://HOST:PORT) instead of
    /// starting one; needs --http-url.
    #[arg(long, value_name = "URL", requires = "http_url")]
    pub hub_url: Option<String>,
    /// The running hub's HTTP port (http://HOST:PORT).
    #[arg(long, value_name = "URL", requires = "hub_url")]
    pub http_url: Option<String>,
    /// The running hub's PID, to read its memory and CPU.
    #[arg(long, value_name = "PID", requires = "hub_url")]
    pub hub_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Idle subscribers, each on its own topic `idle.<i>/` that is never
    /// published to, opened before measuring (both modes); comma-separated
    /// for a series (e.g. 0,15000: every connection count runs with each).
    #[arg(long, value_delimiter = ',', default_values_t = [0usize])]
    #[serde(skip_serializing_if = "no_idle")]
    pub idle: Vec<usize>,
    /// Per-topic mode: K topics, subscriber i on topic `t.<i % K>/`; `all`
    /// = one topic per subscriber (K = each run's connections). Absent: the
    /// broadcast mode (every subscriber on one topic).
    #[arg(long, value_name = "K|all")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Topics>,
    /// Per-topic mode: aggregate publishes per second, paced (open loop),
    /// each to a uniformly random topic; latencies are measured from each
    /// message's scheduled send time. [default: 1000]
    #[arg(long, value_name = "MSG_PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Per-topic mode: measured seconds of publishing. [default: 10]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Per-topic mode: seconds of publishing at the same rate before the
    /// measured window (delivered and checked, not in the figures).
    /// [default: 1]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// Per-topic mode: publish requests in flight at most (one SP REQ
    /// connection, pipelined). [default: 64]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inflight: Option<usize>,
    /// Per-topic mode: seed of the topic each message goes to (the same
    /// schedule in every run). [default: 1]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Start a local cluster of N voters (each `pinion serve --node-id` its
    /// own process on 127.0.0.1) instead of one hub, spread the subscribers
    /// evenly over every node and hold them in worker processes of at most
    /// 19,000 each; publish to the leader. Absent: one hub.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    /// With --nodes: also L non-voting learners (edge nodes), added once a
    /// leader exists and caught up before subscribers connect.
    #[arg(long, value_name = "L", default_value_t = 0, requires = "nodes")]
    #[serde(skip_serializing_if = "is_zero")]
    pub learners: usize,
    /// With --nodes: which nodes hold the subscribers: spread over `all`
    /// of them, or all on the `leader`, on one `follower` or on the first
    /// `learner` (e.g. 1,000 subscribers on one node of the same cluster,
    /// the baseline for the same cluster's 50,000 spread over every node).
    #[arg(long, value_name = "WHERE", value_enum, default_value_t = nodes::Placement::All, requires = "nodes")]
    #[serde(skip_serializing_if = "is_all_nodes")]
    pub subscribers_on: nodes::Placement,
    /// Control measurement: also hold N idle loopback TCP connection pairs
    /// (2·N sockets) in helper processes that pinion knows nothing of,
    /// open for the whole run. Tells what a run's open sockets cost the
    /// machine from what pinion's handling of its subscribers costs (e.g.
    /// 1,000 subscribers with --foreign-idle 50000 against 50,000
    /// subscribers).
    #[arg(long, value_name = "PAIRS", default_value_t = 0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub foreign_idle: usize,
    /// With --nodes: most subscribers one worker process holds.
    #[arg(long, value_name = "K", default_value_t = workers::MAX_PER_WORKER, hide = true)]
    #[serde(skip)]
    pub worker_connections: usize,
}

fn is_all_nodes(p: &nodes::Placement) -> bool {
    *p == nodes::Placement::All
}

fn no_idle(v: &[usize]) -> bool {
    v.iter().all(|&i| i == 0)
}

/// Per-topic defaults (the flags are options so that the broadcast mode can
/// refuse them).
const DEFAULT_RATE: f64 = 1000.0;
const DEFAULT_DURATION: f64 = 10.0;
const DEFAULT_WARMUP: f64 = 1.0;
const DEFAULT_INFLIGHT: usize = 64;
const DEFAULT_SEED: u64 = 1;
/// Most messages one per-topic run may schedule (per-message tallies are
/// kept per subscriber thread).
const MAX_SCHEDULED: usize = 2_000_000;

impl FanoutArgs {
    /// Parses command-line style arguments (the first is the program name).
    pub fn parse_from<I, T>(args: I) -> Result<FanoutArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        crate::parse_args(
            "fanout",
            "WebSocket fan-out: connections, memory, delivery latency",
            args,
        )
    }

    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |s: String| Err(LoadgenError::Args(s));
        if self.connections.is_empty() {
            return bad("no --connections".into());
        }
        if self.foreign_idle > 500_000 {
            return bad(format!(
                "--foreign-idle: at most 500000 pairs, not {}",
                self.foreign_idle
            ));
        }
        if let Some(n) = self
            .connections
            .iter()
            .find(|n| !(1..=1_000_000).contains(*n))
        {
            return bad(format!("--connections {n}: must be 1..=1000000"));
        }
        if !(1..=100_000).contains(&self.messages) {
            return bad(format!("--messages {}: must be 1..=100000", self.messages));
        }
        if !(ws::PAYLOAD_HEADER..=1 << 20).contains(&self.size) {
            return bad(format!(
                "--size {}: must be {}..=1048576",
                self.size,
                ws::PAYLOAD_HEADER
            ));
        }
        if self.slow > 100_000 {
            return bad(format!("--slow {}: at most 100000", self.slow));
        }
        if !(ws::PAYLOAD_HEADER..=16 << 20).contains(&self.fill_size) {
            return bad(format!(
                "--fill-size {}: must be 12..=16777216",
                self.fill_size
            ));
        }
        if self.slow_fill_kib > 1 << 20 {
            return bad(format!(
                "--slow-fill-kib {}: at most 1 GiB",
                self.slow_fill_kib
            ));
        }
        if !(1..=100).contains(&self.runs) {
            return bad(format!("--runs {}: must be 1..=100", self.runs));
        }
        if !(1..=64).contains(&self.threads) {
            return bad(format!("--threads {}: must be 1..=64", self.threads));
        }
        if !(1..=10_000).contains(&self.connect_concurrency) {
            return bad("--connect-concurrency: must be 1..=10000".into());
        }
        if !(self.deliver_timeout > 0.0 && self.deliver_timeout <= 3600.0) {
            return bad("--deliver-timeout: must be in (0, 3600]".into());
        }
        if self.interval_ms > 60_000 {
            return bad("--interval-ms: at most 60000".into());
        }
        if self.idle.is_empty() {
            return bad("no --idle".into());
        }
        if let Some(i) = self.idle.iter().find(|&&i| i > 1_000_000) {
            return bad(format!("--idle {i}: at most 1000000"));
        }
        if let Some(nodes) = self.nodes {
            if nodes == 0 || nodes + self.learners > cluster::MAX_NODES {
                return bad(format!(
                    "--nodes {nodes} --learners {}: 1 to {} nodes in all",
                    self.learners,
                    cluster::MAX_NODES
                ));
            }
            if self.hub_url.is_some() {
                return bad("--nodes starts its own cluster: it does not go with --hub-url".into());
            }
            if self.slow > 0 || !no_idle(&self.idle) {
                return bad("--slow and --idle are not supported with --nodes (yet)".into());
            }
            if !(1..=workers::MAX_PER_WORKER).contains(&self.worker_connections) {
                return bad(format!(
                    "--worker-connections {}: must be 1..={}",
                    self.worker_connections,
                    workers::MAX_PER_WORKER
                ));
            }
        }
        let Some(topics) = self.topics else {
            for (flag, given) in [
                ("--rate", self.rate.is_some()),
                ("--duration", self.duration.is_some()),
                ("--warmup", self.warmup.is_some()),
                ("--inflight", self.inflight.is_some()),
                ("--seed", self.seed.is_some()),
            ] {
                if given {
                    return bad(format!(
                        "{flag} is for the per-topic mode: add --topics K (or --topics all)"
                    ));
                }
            }
            return Ok(());
        };
        if self.slow > 0 {
            return bad("--slow is for the broadcast mode (without --topics)".into());
        }
        // The broadcast mode's one-at-a-time messages; this mode publishes
        // --rate × --duration (a flag left at its default cannot be told
        // from an absent one).
        let d = FanoutArgs::default();
        if self.messages != d.messages || self.interval_ms != d.interval_ms {
            return bad(
                "--messages and --interval-ms are for the broadcast mode; with --topics \
                 the bench publishes --rate messages per second for --duration seconds"
                    .into(),
            );
        }
        if let Topics::Count(k) = topics {
            if let Some(n) = self.connections.iter().find(|&&n| n < k) {
                return bad(format!(
                    "--topics {k} with --connections {n}: every topic needs a subscriber \
                     (K <= connections; --topics all gives one topic per subscriber)"
                ));
            }
        }
        let rate = self.rate();
        if !(rate > 0.0 && rate <= 1_000_000.0) {
            return bad(format!("--rate {rate}: must be in (0, 1000000]"));
        }
        let duration = self.duration();
        if !(duration > 0.0 && duration <= 3600.0) {
            return bad(format!("--duration {duration}: must be in (0, 3600]"));
        }
        let warmup = self.warmup();
        if !(0.0..=600.0).contains(&warmup) {
            return bad(format!("--warmup {warmup}: must be in [0, 600]"));
        }
        let (w, m) = self.scheduled();
        if m == 0 {
            return bad("--rate × --duration is below one message".into());
        }
        if w + m > MAX_SCHEDULED {
            return bad(format!(
                "--rate × (--warmup + --duration) = {} messages: at most {MAX_SCHEDULED}",
                w + m
            ));
        }
        if !(1..=65_536).contains(&self.inflight()) {
            return bad("--inflight: must be 1..=65536".into());
        }
        Ok(())
    }

    /// Per-topic mode: publishes per second.
    fn rate(&self) -> f64 {
        self.rate.unwrap_or(DEFAULT_RATE)
    }

    fn duration(&self) -> f64 {
        self.duration.unwrap_or(DEFAULT_DURATION)
    }

    fn warmup(&self) -> f64 {
        self.warmup.unwrap_or(DEFAULT_WARMUP)
    }

    fn inflight(&self) -> usize {
        self.inflight.unwrap_or(DEFAULT_INFLIGHT)
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// Per-topic mode: (warm-up, measured) messages per run.
    fn scheduled(&self) -> (usize, usize) {
        let n = |secs: f64| (self.rate() * secs).round().max(0.0) as usize;
        (n(self.warmup()), n(self.duration()))
    }

    /// Every (connections, idle) pair, in the order they run (and are
    /// reported): each connection count with each idle count.
    fn configs(&self) -> Vec<(usize, usize)> {
        self.connections
            .iter()
            .flat_map(|&n| self.idle.iter().map(move |&i| (n, i)))
            .collect()
    }

    fn max_payload(&self) -> usize {
        let fill = if self.slow > 0 { self.fill_size } else { 0 };
        self.size.max(fill).max(256)
    }
}

impl Default for FanoutArgs {
    fn default() -> Self {
        FanoutArgs::parse_from(["fanout"]).expect("defaults parse")
    }
}

/// One phase of measured messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Messages published (and acked) in this phase.
    pub messages: usize,
    /// Reading subscribers during the phase.
    pub subscribers: usize,
    /// Deliveries received / expected (messages × subscribers).
    pub delivered: u64,
    /// See `delivered`.
    pub expected: u64,
    /// publish→deliver over every delivery, µs.
    pub latency_us: Latency,
    /// Per message: time from its publish to its last delivery, ms; `None`
    /// when it did not reach every subscriber.
    pub to_all_ms: Vec<Option<f64>>,
    /// Median of `to_all_ms` (messages that reached all), ms.
    pub to_all_p50_ms: f64,
    /// Largest of `to_all_ms`, ms.
    pub to_all_max_ms: f64,
    /// Slow phase: per message, the stalled subscribers the hub had not
    /// cut yet when it was published (empty in the steady phase).
    pub slow_attached: Vec<u64>,
    /// Slow phase: median time to all over the messages published while at
    /// least one stalled subscriber was attached, ms.
    pub to_all_p50_ms_while_attached: Option<f64>,
    /// publish→ACK (logged and, with fsync always, fdatasync'ed), µs.
    pub ack_us: Latency,
    /// Hub CPU per delivery during the phase, µs (hub CPU ÷ deliveries).
    pub hub_cpu_us_per_delivery: Option<f64>,
    /// The bench's own CPU per delivery (its subscribers share the
    /// machine's CPUs with the hub), µs.
    pub loadgen_cpu_us_per_delivery: Option<f64>,
    /// CPU during the phase, % of one core: the hub, the bench, the rest.
    pub hub_cpu_pct: Option<f64>,
    /// See `hub_cpu_pct`.
    pub loadgen_cpu_pct: Option<f64>,
    /// See `hub_cpu_pct`: other processes (task time only); above
    /// [`CONTENDED_PCT`] the run is flagged.
    pub other_cpu_pct: Option<f64>,
    /// See `hub_cpu_pct`: interrupts and softirqs, machine-wide (the
    /// loopback TCP receive path, charged to no process).
    pub softirq_cpu_pct: Option<f64>,
}

/// One run at one connection count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutRun {
    /// Reading WebSocket subscribers.
    pub connections: usize,
    /// 127.0.0.x source addresses used.
    pub source_addrs: usize,
    /// Seconds from the first connect to the hub counting all of them.
    pub connect_secs: f64,
    /// `connections / connect_secs`.
    pub connects_per_sec: f64,
    /// The hub's PID (gone when the run returns, if the bench started it).
    pub hub_pid: Option<u32>,
    /// The hub's temp data dir (removed when the run returns).
    pub data_dir: Option<PathBuf>,
    /// Hub RSS before connecting, bytes.
    pub hub_rss_before: Option<u64>,
    /// Hub RSS with every connection open and idle, bytes.
    pub hub_rss_connected: Option<u64>,
    /// Hub RSS after the measured messages, bytes.
    pub hub_rss_after_messages: Option<u64>,
    /// (connected − before) ÷ connections: the hub's memory per idle
    /// connection, bytes.
    pub hub_bytes_per_conn: Option<f64>,
    /// Growth of the machine's kernel slab per connection, bytes (both ends'
    /// sockets: the hub's and the bench's).
    pub slab_bytes_per_conn: Option<f64>,
    /// Without slow subscribers.
    pub steady: Phase,
    /// With `slow` stalled subscribers.
    pub with_slow: Option<Phase>,
    /// Stalled subscribers in the second phase.
    pub slow: usize,
    /// Subscribers the hub cut for being slow during the run.
    pub slow_disconnects: Option<u64>,
    /// Deliveries the reading subscribers did not get.
    pub missing: u64,
    /// Reading subscribers that missed at least one message.
    pub subscribers_missing: usize,
    /// Deliveries out of order or duplicated.
    pub out_of_order: u64,
    /// Reading subscribers the hub closed (close code → count) or dropped.
    pub closed_by_hub: BTreeMap<u16, usize>,
    /// See `closed_by_hub`: dropped without a close frame.
    pub dropped_by_hub: usize,
    /// Client-side errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Seconds until the hub counted every closed subscriber gone.
    pub close_secs: Option<f64>,
    /// Idle subscribers (`--idle`), each on its own never-published topic.
    #[serde(skip_serializing_if = "is_zero")]
    pub idle: usize,
    /// Idle subscribers the hub closed (close code → count).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub idle_closed_by_hub: BTreeMap<u16, usize>,
    /// Idle subscribers the hub dropped without a close frame.
    #[serde(skip_serializing_if = "is_zero")]
    pub idle_dropped_by_hub: usize,
    /// Errors at the idle subscribers (anything delivered to them is one).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub idle_errors: BTreeMap<String, u64>,
    /// Per-topic mode: its figures (`steady` holds the measured window's
    /// latencies, ACK times and CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_topic: Option<TopicsRun>,
    /// Deliveries a subscriber received more than once (broadcast: beyond
    /// the messages published; per-topic: see `per_topic`).
    pub duplicates: u64,
    /// `--nodes`: per node, its role, subscribers, CPU per delivery,
    /// memory per idle connection, replication lag, missing and duplicate
    /// deliveries (the top-level memory and CPU figures are the nodes'
    /// sums).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRun>,
    /// `--nodes`: subscriber worker processes.
    #[serde(skip_serializing_if = "is_zero")]
    pub workers: usize,
    /// `--nodes`: their PIDs (gone when the run returns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worker_pids: Vec<u32>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl FanoutRun {
    /// Whether other processes used the CPUs during the measured phase.
    pub fn contended(&self) -> bool {
        let busy = |p: &Phase| p.other_cpu_pct.is_some_and(|o| o > CONTENDED_PCT);
        busy(&self.steady) || self.with_slow.as_ref().is_some_and(busy)
    }

    /// Every reading subscriber got every message, in order, and none was
    /// closed or failed (per-topic mode: exactly its topic's messages, once
    /// each, and every publish was ACKed); no idle subscriber was closed,
    /// failed or got anything.
    pub fn complete(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.closed_by_hub.is_empty()
            && self.dropped_by_hub == 0
            && self.errors.is_empty()
            && self.idle_closed_by_hub.is_empty()
            && self.idle_dropped_by_hub == 0
            && self.idle_errors.is_empty()
            && self.per_topic.as_ref().is_none_or(TopicsRun::complete)
    }
}

/// Medians over the runs at one connection count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutSummary {
    /// Reading subscribers.
    pub connections: usize,
    /// Runs, and how many went into the medians (uncontended ones, if any).
    pub runs: Vec<FanoutRun>,
    /// See `runs`.
    pub runs_in_median: usize,
    /// Median connects per second.
    pub connects_per_sec: f64,
    /// Median hub bytes per idle connection.
    pub hub_bytes_per_conn: Option<f64>,
    /// Median kernel slab bytes per connection (both ends).
    pub slab_bytes_per_conn: Option<f64>,
    /// Medians of the steady phase's publish→deliver percentiles, µs.
    pub latency_us: Latency,
    /// Median of the runs' median time to all, ms.
    pub to_all_p50_ms: f64,
    /// Largest time to all over the runs, ms.
    pub to_all_max_ms: f64,
    /// Median publish→ACK p50, µs.
    pub ack_p50_us: f64,
    /// Median hub CPU per delivery, µs.
    pub hub_cpu_us_per_delivery: Option<f64>,
    /// The same figures with the slow subscribers present.
    pub slow_latency_us: Option<Latency>,
    /// See `slow_latency_us`.
    pub slow_to_all_p50_ms: Option<f64>,
    /// See `slow_latency_us`.
    pub slow_ack_p50_us: Option<f64>,
    /// Median time to all over messages published while stalled
    /// subscribers were still attached, ms.
    pub slow_to_all_attached_p50_ms: Option<f64>,
    /// Missing deliveries over all runs.
    pub missing: u64,
    /// Idle subscribers next to the measured ones.
    #[serde(skip_serializing_if = "is_zero")]
    pub idle: usize,
    /// Per-topic mode: medians of its figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_topic: Option<TopicsSummary>,
}

impl FanoutSummary {
    /// Per-topic runs that were not [complete](FanoutRun::complete)
    /// (missing, duplicate, misrouted or out-of-order deliveries, NACKs,
    /// subscribers closed): `pinion bench fanout --topics` exits non-zero
    /// when there is any.
    pub fn per_topic_failures(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.per_topic.is_some() && !r.complete())
            .count()
    }

    /// Runs that must be complete and were not: per-topic runs, and every
    /// multi-node run (`--nodes`; missing or duplicate deliveries anywhere).
    /// `pinion bench fanout` exits non-zero when there is any.
    pub fn failures(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| (r.per_topic.is_some() || !r.nodes.is_empty()) && !r.complete())
            .count()
    }
}

/// Runs the fan-out bench for every `--connections` value, `--runs` times
/// (interleaved), printing each run and then the summary (ratios first)
/// and the issue's targets. `pinion_exe` is the binary to start `serve`
/// from (unused with `--hub-url`).
///
/// Installs the SIGINT/SIGTERM handlers of [`crate::run_publish`].
pub fn run_fanout(
    args: &FanoutArgs,
    pinion_exe: &Path,
) -> Result<Vec<FanoutSummary>, LoadgenError> {
    args.validate()?;
    server::install_signal_handlers();
    // Before anything of pinion's starts, so that the control sockets are
    // already open when the hub's and subscribers' are.
    let foreign = match args.foreign_idle {
        0 => None,
        n => Some(foreign::ForeignIdle::start(pinion_exe, n)?),
    };
    let configs = args.configs();
    let most = configs.iter().map(|&(n, i)| n + i).max().unwrap_or(0) + args.slow;
    if let Some(voters) = args.nodes {
        let holders = match args.subscribers_on {
            nodes::Placement::All => voters + args.learners,
            _ => 1,
        };
        check_capacity(most, holders, args.worker_connections)?;
    }
    // With --nodes the subscribers live in worker processes (which inherit
    // this limit), at most --worker-connections each.
    let in_process = if args.nodes.is_some() {
        most.min(args.worker_connections)
    } else {
        most
    };
    let need = in_process as u64 + FD_MARGIN;
    let limit = pinion_runtime::sys::raise_fd_limit(need.max(1 << 20))
        .map_err(|e| LoadgenError::io("raising the open-file limit", e))?;
    if limit < need {
        return Err(LoadgenError::Args(format!(
            "{most} connections{} need about {need} open files in this process (and in the hub), \
             but the limit is {limit} and cannot be raised: {}",
            if no_idle(&args.idle) {
                String::new()
            } else {
                " (subscribers + idle ones)".to_string()
            },
            fd_limit_hint()
        )));
    }
    let external = match (&args.hub_url, &args.http_url) {
        (Some(h), Some(w)) => Some(hub::parse_urls(h, w)?),
        (None, None) => None,
        _ => {
            return Err(LoadgenError::Args(
                "--hub-url and --http-url go together".into(),
            ))
        }
    };
    if external.is_none() && !server::is_executable(pinion_exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![pinion_exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    let mut machine = crate::machine_description();
    if let Some(f) = &foreign {
        machine.push_str(&format!(
            "\ncontrol: {} idle loopback TCP connection pairs ({} sockets) held by {} helper process{} outside pinion, open for the whole run",
            thousands(f.pairs as u64),
            thousands(2 * f.pairs as u64),
            f.pairs.div_ceil(foreign::PAIRS_PER_PROCESS),
            if f.pairs > foreign::PAIRS_PER_PROCESS { "es" } else { "" },
        ));
    }
    if let Some(topics) = args.topics {
        return per_topic::run(args, topics, pinion_exe, external, &machine);
    }
    let header = format!(
        "fanout: {} WebSocket subscribers on {} thread{}; {} messages of {} B, one at a time, {} ms apart{}; {} run{}; hub {}",
        args.connections
            .iter()
            .map(|n| thousands(*n as u64))
            .collect::<Vec<_>>()
            .join(" / "),
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        args.messages,
        args.size,
        args.interval_ms,
        if args.slow > 0 {
            format!(
                "; then again with {} subscribers that never read ({} KiB of filler each)",
                args.slow, args.slow_fill_kib
            )
        } else {
            String::new()
        },
        args.runs,
        if args.runs == 1 { "" } else { "s (medians)" },
        hub_text(args, pinion_exe, external)
    );
    println!("pinion bench {header}{}", idle_text(args));
    println!("{machine}");
    let mut summaries: Vec<FanoutSummary> = configs
        .iter()
        .map(|&(n, idle)| FanoutSummary {
            connections: n,
            idle,
            ..FanoutSummary::default()
        })
        .collect();
    for run in 1..=args.runs {
        for (k, &(n, idle)) in configs.iter().enumerate() {
            let r = one_run(args, pinion_exe, external, n, idle, run)?;
            println!("{}", run_line(&r, run, args.runs));
            summaries[k].runs.push(r);
            server::sleep_interruptible(Duration::from_secs(1))?;
        }
    }
    for s in &mut summaries {
        summarize(s);
    }
    print!("{}", summary_text(&summaries, args));
    if let Some(path) = &args.json {
        write_json(path, args, &machine, &summaries)?;
        println!("JSON written to {}", path.display());
    }
    Ok(summaries)
}

/// The header's hub part: started by the bench, or given.
fn hub_text(args: &FanoutArgs, pinion_exe: &Path, external: Option<HubAddrs>) -> String {
    if let Some(voters) = args.nodes {
        return format!(
            "a local cluster of {voters} voter{}{} ({} serve --node-id N --fsync {} --max-payload {} on 127.0.0.1, free ports), \
             publishing to the leader, subscribers {} and held by worker processes of at most {} each",
            if voters == 1 { "" } else { "s" },
            if args.learners > 0 {
                format!(" + {} learner{}", args.learners, if args.learners == 1 { "" } else { "s" })
            } else {
                String::new()
            },
            pinion_exe.display(),
            args.fsync,
            args.max_payload(),
            match args.subscribers_on {
                nodes::Placement::All => "spread evenly over every node's HTTP port",
                nodes::Placement::Leader => "all on the leader",
                nodes::Placement::Follower => "all on one follower",
                nodes::Placement::Learner => "all on the first learner",
            },
            thousands(args.worker_connections as u64)
        );
    }
    match (&args.hub_url, external) {
        (Some(u), Some(_)) => format!("at {u} (not started by the bench)"),
        _ => format!(
            "{} serve --fsync {} --max-payload {}{}",
            pinion_exe.display(),
            args.fsync,
            args.max_payload(),
            args.hub_arg
                .iter()
                .map(|a| format!(" {a}"))
                .collect::<String>()
        ),
    }
}

/// The header's note on `--idle` (empty without).
fn idle_text(args: &FanoutArgs) -> String {
    if no_idle(&args.idle) {
        return String::new();
    }
    format!(
        "; with {} idle subscribers (each on its own never-published topic idle.<i>/, opened before measuring)",
        args.idle
            .iter()
            .map(|i| thousands(*i as u64))
            .collect::<Vec<_>>()
            .join(" / ")
    )
}

/// "1,000" or "1,000 + 15,000 idle".
fn conn_label(n: usize, idle: usize) -> String {
    if idle > 0 {
        format!("{} + {} idle", thousands(n as u64), thousands(idle as u64))
    } else {
        thousands(n as u64)
    }
}

/// Memory the machine needs per subscriber in a multi-node run, bytes: the
/// hub's (≤ 8 KiB), the worker's (about 3 KiB) and both ends' kernel
/// socket memory (about 8 KiB), rounded up.
const BYTES_PER_SUBSCRIBER: u64 = 24 * 1024;

/// Checks up front that `n` subscribers fit on `nodes` nodes (at most
/// [`nodes::MAX_PER_NODE`] each: one process holds at most ~19,950 open
/// files here), in workers of `per_worker`, and in the memory available.
fn check_capacity(n: usize, nodes: usize, per_worker: usize) -> Result<(), LoadgenError> {
    let per_node = n.div_ceil(nodes.max(1));
    if per_node > nodes::MAX_PER_NODE {
        return Err(LoadgenError::Capacity {
            what: format!("{n} subscribers over {nodes} nodes: {per_node} connections on one node"),
            need: per_node as u64,
            limit: nodes::MAX_PER_NODE as u64,
            advice: format!(
                "one process may hold at most about 19,950 open files here; use at least {} nodes \
                 (--nodes + --learners)",
                n.div_ceil(nodes::MAX_PER_NODE)
            ),
        });
    }
    let hard = fd_hard_limit();
    if let Some(h) = hard.filter(|&h| h < per_worker as u64 + FD_MARGIN) {
        return Err(LoadgenError::Capacity {
            what: format!("a worker process holding {per_worker} subscribers (open files)"),
            need: per_worker as u64 + FD_MARGIN,
            limit: h,
            advice: format!("lower --worker-connections, or {}", fd_limit_hint()),
        });
    }
    if let Some(avail) = mem_available() {
        let need = n as u64 * BYTES_PER_SUBSCRIBER;
        if need > avail {
            return Err(LoadgenError::Capacity {
                what: format!(
                    "{n} subscribers (memory, about 24 KiB each: hub, worker and kernel)"
                ),
                need,
                limit: avail,
                advice: "ask for fewer --connections, or free memory (MemAvailable)".into(),
            });
        }
    }
    Ok(())
}

/// This process's hard open-file limit.
fn fd_hard_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_max)
}

/// `MemAvailable` of `/proc/meminfo`, bytes.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line["MemAvailable:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Checks the hub may open files enough for `conns` connections.
fn check_hub_fds(hub_pid: Option<u32>, conns: usize) -> Result<(), LoadgenError> {
    if let Some(limit) = hub_pid.and_then(fd_limit_of) {
        let need = conns as u64 + FD_MARGIN;
        if limit < need {
            return Err(LoadgenError::Setup {
                target: "pinion",
                reason: format!(
                    "the hub (pid {}) may open {limit} files, {conns} connections need about {need}: {}",
                    hub_pid.unwrap_or(0),
                    fd_limit_hint()
                ),
            });
        }
    }
    Ok(())
}

/// Opens `idle` subscribers, each on its own never-published topic, from
/// source addresses after the first `n` connections', and waits until the
/// hub counts them. `None` when `idle` is 0.
fn open_idle(
    args: &FanoutArgs,
    http: std::net::SocketAddr,
    n: usize,
    idle: usize,
    base: Instant,
    label: &str,
) -> Result<Option<Clients>, LoadgenError> {
    if idle == 0 {
        return Ok(None);
    }
    let before = hub::metrics(http)
        .map_err(|e| LoadgenError::Setup {
            target: "pinion",
            reason: e,
        })?
        .subscribers_ws;
    let bar = progress(args, idle as u64, format!("idle {label}"));
    let plan = ClientPlan {
        http,
        target_offset: 0,
        target: Target::Idle,
        first_idx: n.next_multiple_of(PER_SOURCE_ADDR),
        count: idle,
        threads: 1,
        read: true,
        messages: 0,
        phase_split: 0,
        base,
        concurrency: args.connect_concurrency,
        key_seed: crate::rand_u64(),
    };
    let (c, _) = connect_all(plan, &bar)?;
    wait_hub_count(&[http], before + idle as u64, true, idle)?;
    bar.finish_and_clear();
    Ok(Some(c))
}

/// Closes the idle subscribers and files what happened to them in `r`.
fn finish_idle(idle: Option<Clients>, r: &mut FanoutRun) {
    let Some(c) = idle else { return };
    let o: Outcome = c.finish();
    r.idle_closed_by_hub = o.closed;
    r.idle_dropped_by_hub = o.eof;
    r.idle_errors = o.errors;
}

fn progress(args: &FanoutArgs, len: u64, prefix: String) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len.max(1));
    bar.set_style(
        ProgressStyle::with_template("{prefix:<20} [{bar:30}] {pos}/{len} {elapsed:>3} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// The processes whose CPU a phase reads: the hubs (one, or every node of
/// a cluster) and the bench's own worker processes (counted with the
/// bench, not as other processes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Pids {
    pub hubs: Vec<u32>,
    pub bench: Vec<u32>,
}

/// CPU readings at a phase's edges.
pub(crate) struct Cpu {
    at: Instant,
    /// Per hub PID.
    hubs: Vec<Option<Duration>>,
    /// This process and its workers.
    me: Option<Duration>,
    /// Machine-wide (task time, interrupt + softirq time).
    machine: Option<(Duration, Duration)>,
}

impl Cpu {
    pub(crate) fn now(p: &Pids) -> Cpu {
        let of = |pid: &u32| server::cpu_time_of(&format!("/proc/{pid}/stat"));
        let workers: Option<Duration> = p.bench.iter().map(of).sum();
        Cpu {
            at: Instant::now(),
            hubs: p.hubs.iter().map(of).collect(),
            me: server::self_cpu_time().and_then(|m| Some(m + workers?)),
            machine: machine_times(),
        }
    }

    /// The hubs' CPU time together (`None` if any could not be read).
    fn hub(&self) -> Option<Duration> {
        if self.hubs.is_empty() {
            return None;
        }
        self.hubs.iter().copied().sum()
    }
}

/// The machine's busy time from `/proc/stat`, split into time charged to
/// tasks (user, nice, system, steal) and interrupt + softirq time. The
/// loopback TCP receive path runs as softirq work that the kernel charges
/// to no process, so it is kept out of "other processes".
fn machine_times() -> Option<(Duration, Duration)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        h if h > 0 => h as u64,
        _ => 100,
    };
    let d = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Some((d(get(0) + get(1) + get(2) + get(7)), d(get(5) + get(6))))
}

/// CPU over a phase, % of one core.
#[derive(Debug, Clone, Default)]
struct CpuUse {
    hub: Option<f64>,
    me: Option<f64>,
    /// Tasks other than the hub and the bench.
    other: Option<f64>,
    /// Interrupts and softirqs (mostly loopback TCP).
    softirq: Option<f64>,
    /// The hub's and the bench's CPU seconds.
    hub_secs: Option<f64>,
    me_secs: Option<f64>,
    /// Per hub PID, its CPU seconds.
    per_hub_secs: Vec<Option<f64>>,
}

fn cpu_between(a: &Cpu, b: &Cpu) -> CpuUse {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let d = |x: Option<Duration>, y: Option<Duration>| -> Option<f64> {
        Some(y?.checked_sub(x?)?.as_secs_f64())
    };
    let pct = |s: Option<f64>| s.filter(|_| wall > 0.0).map(|s| 100.0 * s / wall);
    let (hub_secs, me_secs) = (d(a.hub(), b.hub()), d(a.me, b.me));
    let per_hub_secs = a.hubs.iter().zip(&b.hubs).map(|(x, y)| d(*x, *y)).collect();
    let (hub, me) = (pct(hub_secs), pct(me_secs));
    let tasks = pct(d(a.machine.map(|m| m.0), b.machine.map(|m| m.0)));
    let softirq = pct(d(a.machine.map(|m| m.1), b.machine.map(|m| m.1)));
    let other = tasks.map(|m| (m - hub.unwrap_or(0.0) - me.unwrap_or(0.0)).max(0.0));
    CpuUse {
        hub,
        me,
        other,
        softirq,
        hub_secs,
        me_secs,
        per_hub_secs,
    }
}

/// Bound on waiting for the hub to count connections (per 1,000 of them,
/// on top of 30 s).
fn count_deadline(n: usize) -> Instant {
    Instant::now() + Duration::from_secs(30) + Duration::from_millis(n as u64)
}

/// Waits until the hub's `/metrics` counts `want` WebSocket subscribers
/// (`at_least`: or more; else: at most).
fn wait_hub_count(
    https: &[std::net::SocketAddr],
    want: u64,
    at_least: bool,
    n: usize,
) -> Result<(), LoadgenError> {
    let deadline = count_deadline(n);
    let mut last = None;
    loop {
        check_interrupted()?;
        match hub::metrics_sum(https) {
            Ok(m) => {
                if (at_least && m.subscribers_ws >= want) || (!at_least && m.subscribers_ws <= want)
                {
                    return Ok(());
                }
                last = Some(m.subscribers_ws);
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(LoadgenError::Setup {
                        target: "pinion",
                        reason: format!("reading /metrics: {e}"),
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(LoadgenError::Setup {
                target: "pinion",
                reason: format!(
                    "the hub counts {} WebSocket subscribers, expected {} {want}",
                    last.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                    if at_least { "at least" } else { "at most" }
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `clients` and shows progress until every one is connected.
fn connect_all(plan: ClientPlan, bar: &ProgressBar) -> Result<(Clients, f64), LoadgenError> {
    let n = plan.count;
    let t0 = Instant::now();
    let mut c = Clients::start(plan)?;
    wait_connected(&mut c, n, t0, bar)?;
    Ok((c, t0.elapsed().as_secs_f64()))
}

/// Opens the run's `plan.count` subscribers: in this process for one hub;
/// for a cluster spread evenly over every node and held by worker
/// processes (`spec` tells them what to subscribe to). Shows progress
/// until every one is connected.
fn open_subscribers(
    args: &FanoutArgs,
    site: &Site,
    pinion_exe: &Path,
    plan: ClientPlan,
    spec: workers::TargetSpec,
    base_mono_ns: u64,
    bar: &ProgressBar,
) -> Result<Subs, LoadgenError> {
    let n = plan.count;
    let t0 = Instant::now();
    let mut subs = if site.multi() {
        let plans = workers::layout(n, &site.holder_https(), args.worker_connections)
            .into_iter()
            .map(|assignments| workers::WorkerPlan {
                assignments,
                target: spec.clone(),
                threads: args.threads,
                messages: plan.messages,
                phase_split: plan.phase_split,
                base_mono_ns,
                concurrency: args.connect_concurrency,
                key_seed: plan.key_seed,
            })
            .collect();
        Subs::Remote(Workers::start(pinion_exe, plans)?)
    } else {
        Subs::Local(Clients::start(plan)?)
    };
    wait_connected(&mut subs, n, t0, bar)?;
    Ok(subs)
}

/// Waits, showing progress, until `n` subscribers are connected (or one
/// failed, or the deadline passed).
fn wait_connected(
    c: &mut impl workers::Counts,
    n: usize,
    t0: Instant,
    bar: &ProgressBar,
) -> Result<(), LoadgenError> {
    let deadline = count_deadline(n) + Duration::from_millis(n as u64);
    let mut last = (Instant::now(), 0usize);
    let mut rate = 0.0;
    loop {
        let (ok, failed) = (c.connected(), c.failed());
        bar.set_position(ok as u64);
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 0.5 {
            rate = ok.saturating_sub(last.1) as f64 / dt;
            last = (now, ok);
        }
        let total_rate = ok as f64 / now.duration_since(t0).as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} conn/s now, {} conn/s overall{}",
            thousands(rate as u64),
            thousands(total_rate as u64),
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        ));
        if ok + failed >= n {
            if failed > 0 {
                return Err(LoadgenError::Connect {
                    target: "pinion",
                    failed,
                    clients: n,
                    first: c.first_error().unwrap_or_default(),
                });
            }
            return Ok(());
        }
        if server::interrupted() {
            return Err(LoadgenError::Interrupted);
        }
        if now >= deadline {
            return Err(LoadgenError::Connect {
                target: "pinion",
                failed: n - ok,
                clients: n,
                first: format!(
                    "timed out: {ok} of {n} connected after {:.0} s{}",
                    t0.elapsed().as_secs_f64(),
                    c.first_error()
                        .map(|e| format!("; {e}"))
                        .unwrap_or_default()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The measured messages of one phase (indices `first..first + count`).
struct PhasePlan<'a> {
    first: usize,
    count: usize,
    subscribers: usize,
    /// Filler messages before each measured one (slow phase).
    fill_each: usize,
    /// Slow phase: the stalled subscribers, and the hub's slow-disconnect
    /// count before they connected (to follow how many are still there).
    slow: Option<(usize, u64)>,
    http: std::net::SocketAddr,
    topic: &'a str,
    fill_topic: &'a str,
}

/// What a phase measured on the publisher's side.
struct Published {
    sent_ns: Vec<u64>,
    /// Slow phase: stalled subscribers still attached when each message was
    /// published.
    attached: Vec<u64>,
    ack: Histogram<u64>,
    cpu: CpuUse,
}

fn publish_phase(
    args: &FanoutArgs,
    p: &PhasePlan<'_>,
    publisher: &mut Publisher,
    clients: &Subs,
    base: Instant,
    pids: &Pids,
    bar: &ProgressBar,
) -> Result<Published, LoadgenError> {
    let publish_err = |e: String| LoadgenError::Setup {
        target: "pinion",
        reason: e,
    };
    let timeout = Duration::from_secs_f64(args.deliver_timeout);
    let mut out = Published {
        sent_ns: Vec::with_capacity(p.count),
        attached: Vec::new(),
        ack: new_histogram(),
        cpu: CpuUse::default(),
    };
    let fill = if p.fill_each > 0 {
        vec![b'f'; args.fill_size]
    } else {
        Vec::new()
    };
    bar.set_length(p.count as u64);
    bar.set_position(0);
    let c0 = Cpu::now(pids);
    let mut attached = p.slow.map(|(k, _)| k as u64);
    for k in 0..p.count {
        check_interrupted()?;
        for _ in 0..p.fill_each {
            publisher
                .publish(p.fill_topic, fill.clone())
                .map_err(publish_err)?;
        }
        let before = clients.delivered();
        let index = (p.first + k) as u32;
        let t0 = Instant::now();
        let sent = t0.duration_since(base).as_nanos() as u64;
        publisher
            .publish(p.topic, ws::payload(index, sent, args.size))
            .map_err(publish_err)?;
        let acked = t0.elapsed().as_nanos() as u64;
        out.ack.saturating_record(acked.max(1_000));
        out.sent_ns.push(sent);
        out.attached.extend(attached);
        let want = before + p.subscribers as u64;
        let until = t0 + timeout;
        while clients.delivered() < want && Instant::now() < until {
            check_interrupted()?;
            std::thread::sleep(Duration::from_micros(500));
        }
        let reached = t0.elapsed();
        if let Some((slow, cut0)) = p.slow {
            // Outside the timed part: how many stalled ones the hub has cut.
            if let Ok(m) = hub::metrics(p.http) {
                let cut = m.slow_disconnects.saturating_sub(cut0);
                attached = Some((slow as u64).saturating_sub(cut));
            }
        }
        bar.set_position(k as u64 + 1);
        let ended = clients.ended();
        bar.set_message(format!(
            "message {}: {} of {} in {:.0} ms{}",
            index,
            thousands(clients.delivered().saturating_sub(before)),
            thousands(p.subscribers as u64),
            reached.as_secs_f64() * 1e3,
            if ended > 0 {
                format!("; {ended} subscribers closed by the hub")
            } else {
                String::new()
            }
        ));
        server::sleep_interruptible(Duration::from_millis(args.interval_ms))?;
    }
    out.cpu = cpu_between(&c0, &Cpu::now(pids));
    Ok(out)
}

/// How long the slow phase waits, after its last message, for the hub to
/// cut the subscribers that never read (see where it is used).
const SLOW_CUT_WAIT: Duration = Duration::from_secs(5);

fn phase_result(
    p: &PhasePlan<'_>,
    pubd: &Published,
    hist: &Histogram<u64>,
    arrivals: &[u64],
    last_ns: &[u64],
) -> Phase {
    let mut to_all = Vec::with_capacity(p.count);
    for (k, &sent) in pubd.sent_ns.iter().enumerate() {
        let i = p.first + k;
        let complete = arrivals[i] >= p.subscribers as u64;
        to_all.push(complete.then(|| last_ns[i].saturating_sub(sent) as f64 / 1e6));
    }
    let reached: Vec<f64> = to_all.iter().flatten().copied().collect();
    let while_attached: Vec<f64> = to_all
        .iter()
        .zip(&pubd.attached)
        .filter(|(_, &a)| a > 0)
        .filter_map(|(t, _)| *t)
        .collect();
    let delivered: u64 = (p.first..p.first + pubd.sent_ns.len())
        .map(|i| arrivals[i])
        .sum();
    let c = &pubd.cpu;
    Phase {
        messages: pubd.sent_ns.len(),
        subscribers: p.subscribers,
        delivered,
        expected: (pubd.sent_ns.len() * p.subscribers) as u64,
        latency_us: Latency::from_hist(hist),
        to_all_p50_ms: median(reached.clone()),
        to_all_max_ms: reached.iter().copied().fold(0.0, f64::max),
        to_all_ms: to_all,
        to_all_p50_ms_while_attached: (!while_attached.is_empty()).then(|| median(while_attached)),
        slow_attached: pubd.attached.clone(),
        ack_us: Latency::from_hist(&pubd.ack),
        hub_cpu_us_per_delivery: c
            .hub_secs
            .filter(|_| delivered > 0)
            .map(|s| s * 1e6 / delivered as f64),
        loadgen_cpu_us_per_delivery: c
            .me_secs
            .filter(|_| delivered > 0)
            .map(|s| s * 1e6 / delivered as f64),
        hub_cpu_pct: c.hub,
        loadgen_cpu_pct: c.me,
        other_cpu_pct: c.other,
        softirq_cpu_pct: c.softirq,
    }
}

fn one_run(
    args: &FanoutArgs,
    pinion_exe: &Path,
    external: Option<HubAddrs>,
    n: usize,
    idle: usize,
    run: usize,
) -> Result<FanoutRun, LoadgenError> {
    check_interrupted()?;
    let label = if args.runs > 1 {
        format!("{} {run}/{}", conn_label(n, idle), args.runs)
    } else {
        conn_label(n, idle)
    };
    let mut site = Site::start(args, pinion_exe, external)?;
    let addrs = site.addrs;
    let https = site.https();
    let hub_pid = site.leader_pid();
    site.check_fds(n, idle + args.slow)?;
    let setup = |e: String| LoadgenError::Setup {
        target: "pinion",
        reason: e,
    };
    let tag = format!("{:012x}", crate::rand_u64() & 0xffff_ffff_ffff);
    let topic = format!("fo-{tag}");
    let fill_topic = format!("ff-{tag}");
    let mut publisher = Publisher::connect(addrs.publish).map_err(setup)?;
    // Warm up the publish path (nobody subscribes to this topic).
    publisher
        .publish(&format!("warmup-{tag}"), vec![b'w'; 16])
        .map_err(setup)?;
    server::sleep_interruptible(Duration::from_millis(500))?;
    let base_mono = workers::mono_ns();
    let base = workers::instant_at(base_mono);
    // Idle subscribers first: the memory figures below are the measured
    // subscribers' alone.
    let idle_clients = open_idle(args, addrs.http, n, idle, base, &label)?;
    let baseline = hub::metrics_sum(&https).map_err(setup)?;
    let rss0s = node_rss(&site);
    let rss0 = sum_opt(&rss0s);
    let slab0 = hub::slab_bytes();

    // Connect.
    let phases = if args.slow > 0 { 2 } else { 1 };
    let total_msgs = args.messages * phases;
    let bar = progress(args, n as u64, format!("connect {label}"));
    let plan = ClientPlan {
        http: addrs.http,
        target_offset: 0,
        target: Target::Fixed(format!("/sub?topic={topic}")),
        first_idx: 0,
        count: n,
        threads: args.threads.min(n),
        read: true,
        messages: total_msgs,
        phase_split: args.messages,
        base,
        concurrency: args.connect_concurrency,
        key_seed: crate::rand_u64(),
    };
    let t_connect = Instant::now();
    let spec = workers::TargetSpec::Fixed(format!("/sub?topic={topic}"));
    let clients = open_subscribers(args, &site, pinion_exe, plan, spec, base_mono, &bar)?;
    wait_hub_count(&https, baseline.subscribers_ws + n as u64, true, n)?;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // Let the hub settle (accept-path buffers freed), then read its memory.
    server::sleep_interruptible(Duration::from_secs(1))?;
    let rss1s = node_rss(&site);
    let rss1 = sum_opt(&rss1s);
    let slab1 = hub::slab_bytes();
    let pids = Pids {
        hubs: site.hub_pids(),
        bench: clients.pids(),
    };

    // Steady phase.
    let bar = progress(args, args.messages as u64, format!("publish {label}"));
    let steady_plan = PhasePlan {
        first: 0,
        count: args.messages,
        subscribers: n,
        fill_each: 0,
        slow: None,
        http: addrs.http,
        topic: &topic,
        fill_topic: &fill_topic,
    };
    let lag = site.multi().then(|| nodes::LagSampler::start(&site.nodes));
    let steady_pub = publish_phase(
        args,
        &steady_plan,
        &mut publisher,
        &clients,
        base,
        &pids,
        &bar,
    )?;
    let lags = lag.map(nodes::LagSampler::finish).unwrap_or_default();
    bar.finish_and_clear();

    // Slow phase.
    let mut slow_pub = None;
    let mut slow_clients = None;
    let mut slow_plan = PhasePlan {
        first: args.messages,
        count: args.messages,
        subscribers: n,
        fill_each: (args.slow_fill_kib * 1024)
            .div_ceil(args.fill_size)
            .div_ceil(args.messages),
        slow: None,
        http: addrs.http,
        topic: &topic,
        fill_topic: &fill_topic,
    };
    if args.slow > 0 {
        let bar = progress(args, args.slow as u64, format!("slow {label}"));
        let plan = ClientPlan {
            http: addrs.http,
            target_offset: 0,
            target: Target::Fixed(format!("/sub?topic={topic}&topic={fill_topic}")),
            first_idx: if idle > 0 {
                (n.next_multiple_of(PER_SOURCE_ADDR) + idle).next_multiple_of(PER_SOURCE_ADDR)
            } else {
                n.next_multiple_of(PER_SOURCE_ADDR)
            },
            count: args.slow,
            threads: 1,
            read: false,
            messages: total_msgs,
            phase_split: args.messages,
            base,
            concurrency: args.connect_concurrency,
            key_seed: crate::rand_u64(),
        };
        let (c, _) = connect_all(plan, &bar)?;
        wait_hub_count(
            &https,
            baseline.subscribers_ws + (n + args.slow) as u64,
            true,
            n + args.slow,
        )?;
        bar.finish_and_clear();
        slow_clients = Some(c);
        let cut0 = hub::metrics(addrs.http).map_err(setup)?.slow_disconnects;
        slow_plan.slow = Some((args.slow, cut0));
        let bar = progress(args, args.messages as u64, format!("with slow {label}"));
        slow_pub = Some(publish_phase(
            args,
            &slow_plan,
            &mut publisher,
            &clients,
            base,
            &pids,
            &bar,
        )?);
        bar.finish_and_clear();
        // The last round of filler is still on its way to the stalled
        // subscribers when the phase ends (kernel buffers first, then the
        // hub's queue), so the hub's cut of them can land after it: give it
        // up to SLOW_CUT_WAIT, outside every timed figure, before counting.
        let until = Instant::now() + SLOW_CUT_WAIT;
        while Instant::now() < until {
            match hub::metrics(addrs.http) {
                Ok(m) if m.slow_disconnects.saturating_sub(cut0) >= args.slow as u64 => break,
                _ => {}
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rss2 = sum_opt(&node_rss(&site));
    let after = hub::metrics_sum(&https).ok();
    site.check_alive()?;

    // Close everything; the hub should count them all gone.
    let t_close = Instant::now();
    let worker_pids = clients.pids();
    let (outcome, per_assignment) = clients.finish();
    drop(slow_clients);
    let close_secs = wait_hub_count(&https, baseline.subscribers_ws, false, n + args.slow)
        .ok()
        .map(|_| t_close.elapsed().as_secs_f64());
    drop(publisher);

    let steady = phase_result(
        &steady_plan,
        &steady_pub,
        &outcome.hist[0],
        &outcome.arrivals,
        &outcome.last_ns,
    );
    let with_slow = slow_pub.as_ref().map(|p| {
        phase_result(
            &slow_plan,
            p,
            &outcome.hist[1],
            &outcome.arrivals,
            &outcome.last_ns,
        )
    });
    let expected_each = steady.messages + with_slow.as_ref().map_or(0, |p| p.messages);
    let missing: u64 = outcome
        .got
        .iter()
        .map(|&g| (expected_each as u64).saturating_sub(u64::from(g)))
        .sum();
    let subscribers_missing = outcome
        .got
        .iter()
        .filter(|&&g| (g as usize) < expected_each)
        .count();
    let duplicates: u64 = outcome
        .got
        .iter()
        .map(|&g| u64::from(g).saturating_sub(expected_each as u64))
        .sum();
    let per = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some((b? as f64 - a? as f64) / n as f64)
    };
    let node_figures = if site.multi() {
        let due = |j: usize| -> (u64, u64) {
            outcome.got[site.node_range(j, n)]
                .iter()
                .fold((0, 0), |(m, d), &g| {
                    let g = u64::from(g);
                    let e = expected_each as u64;
                    (m + e.saturating_sub(g), d + g.saturating_sub(e))
                })
        };
        node_runs(
            &site,
            n,
            &NodeInputs {
                rss0: &rss0s,
                rss1: &rss1s,
                cpu: &steady_pub.cpu,
                lags: &lags,
                per_assignment: &per_assignment,
                measured_share: 1.0,
                due: &due,
            },
        )
    } else {
        Vec::new()
    };
    let mut r = FanoutRun {
        connections: n,
        source_addrs: n.div_ceil(PER_SOURCE_ADDR),
        connect_secs,
        connects_per_sec: n as f64 / connect_secs,
        hub_pid,
        data_dir: site.data_dir(),
        nodes: node_figures,
        workers: worker_pids.len(),
        worker_pids,
        duplicates,
        hub_rss_before: rss0,
        hub_rss_connected: rss1,
        hub_rss_after_messages: rss2,
        hub_bytes_per_conn: per(rss0, rss1),
        slab_bytes_per_conn: per(slab0, slab1),
        steady,
        with_slow,
        slow: args.slow,
        slow_disconnects: after.map(|m| m.slow_disconnects - baseline.slow_disconnects),
        missing,
        subscribers_missing,
        out_of_order: outcome.out_of_order,
        closed_by_hub: outcome.closed,
        dropped_by_hub: outcome.eof,
        errors: outcome.errors,
        close_secs,
        idle,
        ..FanoutRun::default()
    };
    finish_idle(idle_clients, &mut r);
    site.check_alive()?;
    drop(site);
    Ok(r)
}

/// Every node's RSS, bytes.
fn node_rss(site: &Site) -> Vec<Option<u64>> {
    site.nodes
        .iter()
        .map(|n| n.pid.and_then(hub::rss_bytes))
        .collect()
}

/// The sum, if every value is known (and there is one).
fn sum_opt(v: &[Option<u64>]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().copied().sum()
}

/// What [`node_runs`] is made from.
struct NodeInputs<'a> {
    rss0: &'a [Option<u64>],
    rss1: &'a [Option<u64>],
    /// The measured phase's CPU (per hub, in node order).
    cpu: &'a CpuUse,
    lags: &'a [nodes::NodeLag],
    /// Per worker assignment, all the deliveries its subscribers got.
    per_assignment: &'a [(workers::Assignment, u64)],
    /// The share of those deliveries that fell in the measured phase.
    measured_share: f64,
    /// Per node: (missing, duplicate) deliveries.
    due: &'a dyn Fn(usize) -> (u64, u64),
}

/// The per-node figures of a multi-node run.
fn node_runs(site: &Site, n: usize, x: &NodeInputs<'_>) -> Vec<NodeRun> {
    site.nodes
        .iter()
        .enumerate()
        .map(|(j, node)| {
            let subscribers = site.node_range(j, n).len();
            let all: u64 = x
                .per_assignment
                .iter()
                .filter(|(a, _)| a.node == j)
                .map(|(_, d)| d)
                .sum();
            let deliveries = (all as f64 * x.measured_share).round() as u64;
            let cpu_secs = x.cpu.per_hub_secs.get(j).copied().flatten();
            let (rss_before, rss_connected) = (
                x.rss0.get(j).copied().flatten(),
                x.rss1.get(j).copied().flatten(),
            );
            let lag = x.lags.get(j).copied().unwrap_or_default();
            let (missing, duplicates) = (x.due)(j);
            NodeRun {
                id: node.id,
                // As the node itself last said; else as the bench started it.
                role: match (lag.role, site.leader() == Some(j)) {
                    (None, true) => "leader".to_string(),
                    (role, _) => nodes::role_name(role, node.learner),
                },
                http: node.http.to_string(),
                pid: node.pid,
                subscribers,
                deliveries,
                cpu_secs,
                cpu_us_per_delivery: cpu_secs
                    .filter(|_| deliveries > 0)
                    .map(|s| s * 1e6 / deliveries as f64),
                rss_before,
                rss_connected,
                bytes_per_conn: match (rss_before, rss_connected) {
                    (Some(a), Some(b)) if subscribers > 0 => {
                        Some((b as f64 - a as f64) / subscribers as f64)
                    }
                    _ => None,
                },
                max_replication_lag: lag.replication,
                max_apply_lag: lag.apply,
                missing,
                duplicates,
            }
        })
        .collect()
}

fn ms(us: f64) -> String {
    if us <= 0.0 {
        "-".into()
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.0} ms", us / 1e3)
    }
}

/// Milliseconds given in milliseconds.
fn msf(x: f64) -> String {
    ms(x * 1e3)
}

fn kib(bytes: Option<f64>) -> String {
    bytes
        .map(|b| format!("{:.2} KiB", b / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "?".into())
}

fn phase_line(p: &Phase) -> String {
    let l = &p.latency_us;
    format!(
        "publish→deliver p50 {} p99 {} p99.9 {} max {}; to all {}: median {}, max {}{}; publish→ack p50 {}; \
         CPU: hub {} ({} per delivery), bench {} ({} per delivery), softirq {}, other processes {}",
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        thousands(p.subscribers as u64),
        msf(p.to_all_p50_ms),
        msf(p.to_all_max_ms),
        {
            let never = p.to_all_ms.iter().filter(|t| t.is_none()).count();
            if never > 0 {
                format!(" ({never} messages never reached all)")
            } else {
                String::new()
            }
        },
        ms(p.ack_us.p50),
        pct(p.hub_cpu_pct),
        p.hub_cpu_us_per_delivery
            .map(|u| format!("{u:.1} µs"))
            .unwrap_or_else(|| "?".into()),
        pct(p.loadgen_cpu_pct),
        p.loadgen_cpu_us_per_delivery
            .map(|u| format!("{u:.1} µs"))
            .unwrap_or_else(|| "?".into()),
        pct(p.softirq_cpu_pct),
        pct(p.other_cpu_pct),
    )
}

fn run_line(r: &FanoutRun, run: usize, runs: usize) -> String {
    let mut s = format!(
        "{} connections{}, run {run}/{runs}: connected in {:.1} s ({} conn/s, {} source addresses); hub RSS {} → {} = {} per idle connection (kernel slab, both ends: {} per connection); {}",
        thousands(r.connections as u64),
        idle_note(r),
        r.connect_secs,
        thousands(r.connects_per_sec as u64),
        r.source_addrs,
        r.hub_rss_before
            .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
            .unwrap_or_else(|| "?".into()),
        r.hub_rss_connected
            .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
            .unwrap_or_else(|| "?".into()),
        kib(r.hub_bytes_per_conn),
        kib(r.slab_bytes_per_conn),
        phase_line(&r.steady)
    );
    if let Some(p) = &r.with_slow {
        let attached = p.slow_attached.iter().filter(|&&a| a > 0).count();
        s.push_str(&format!(
            "\n    with {} subscribers that never read ({} cut by the hub as slow; some still attached during {} of {} messages, \
             time to all for those: median {}): {}",
            r.slow,
            r.slow_disconnects
                .map(|d| d.to_string())
                .unwrap_or_else(|| "?".into()),
            attached,
            p.messages,
            p.to_all_p50_ms_while_attached
                .map(msf)
                .unwrap_or_else(|| "-".into()),
            phase_line(p)
        ));
    }
    if r.complete() {
        s.push_str(&format!(
            "\n    every subscriber got every message, in order ({} deliveries)",
            thousands(r.steady.delivered + r.with_slow.as_ref().map_or(0, |p| p.delivered))
        ));
    } else {
        s.push_str(&format!(
            "\n    INCOMPLETE: {} deliveries missing at {} subscribers; {} out of order; closed by the hub: {:?}; dropped: {}; errors: {:?}{}",
            thousands(r.missing),
            thousands(r.subscribers_missing as u64),
            r.out_of_order,
            r.closed_by_hub,
            r.dropped_by_hub,
            r.errors,
            idle_problems(r)
        ));
    }
    match r.close_secs {
        Some(c) => s.push_str(&format!("; closed, the hub counted them gone in {c:.1} s")),
        None => s.push_str("; closed, but the hub still counted some after the wait"),
    }
    if r.contended() {
        s.push_str(&format!(
            "\n    CONTENDED: other processes used {} of a core during the measurement{}",
            pct(r.steady.other_cpu_pct),
            r.with_slow
                .as_ref()
                .map(|p| format!(" ({} with the slow subscribers)", pct(p.other_cpu_pct)))
                .unwrap_or_default()
        ));
    }
    s.push_str(&nodes_text(r));
    s
}

/// A multi-node run's per-node table (empty for one hub).
fn nodes_text(r: &FanoutRun) -> String {
    if r.nodes.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "\n\n| node | role | subscribers | deliveries | hub CPU per delivery | memory per idle connection | max replication lag (entries) | max apply lag | missing | duplicates |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    for n in &r.nodes {
        o.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            n.id,
            n.http,
            n.role,
            thousands(n.subscribers as u64),
            thousands(n.deliveries),
            n.cpu_us_per_delivery
                .map(|u| format!("{u:.1} µs"))
                .unwrap_or_else(|| "?".into()),
            kib(n.bytes_per_conn),
            opt(n.max_replication_lag),
            opt(n.max_apply_lag),
            thousands(n.missing),
            thousands(n.duplicates),
        ));
    }
    o.push_str(&format!(
        "\n{}, held by {} worker processes; missing deliveries {}, duplicates {}\n",
        placement_label(r.connections, &r.nodes),
        r.workers,
        thousands(r.missing),
        thousands(r.duplicates),
    ));
    o
}

/// "50,000 subscribers over 3 nodes", or with `--subscribers-on` "1,000
/// subscribers on node 2 (follower) of 3".
fn placement_label(connections: usize, nodes: &[nodes::NodeRun]) -> String {
    let n = thousands(connections as u64);
    let holding: Vec<&nodes::NodeRun> = nodes.iter().filter(|x| x.subscribers > 0).collect();
    match holding[..] {
        [one] if nodes.len() > 1 => format!(
            "{n} subscribers on node {} ({}) of {}",
            one.id,
            one.role,
            nodes.len()
        ),
        _ => format!("{n} subscribers over {} nodes", nodes.len()),
    }
}

/// " (+ 15,000 idle)" or nothing.
fn idle_note(r: &FanoutRun) -> String {
    if r.idle > 0 {
        format!(" (+ {} idle)", thousands(r.idle as u64))
    } else {
        String::new()
    }
}

/// What went wrong at the idle subscribers, if anything ("; idle ...").
fn idle_problems(r: &FanoutRun) -> String {
    if r.idle_closed_by_hub.is_empty() && r.idle_dropped_by_hub == 0 && r.idle_errors.is_empty() {
        return String::new();
    }
    format!(
        "; idle subscribers: closed by the hub: {:?}, dropped: {}, errors: {:?}",
        r.idle_closed_by_hub, r.idle_dropped_by_hub, r.idle_errors
    )
}

fn summarize(s: &mut FanoutSummary) {
    let runs = median_runs(&s.runs, FanoutRun::contended);
    s.runs_in_median = runs.len();
    let m = |f: &dyn Fn(&FanoutRun) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let opt = |f: &dyn Fn(&FanoutRun) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| median(v))
    };
    s.connects_per_sec = m(&|r| r.connects_per_sec);
    s.hub_bytes_per_conn = opt(&|r| r.hub_bytes_per_conn);
    s.slab_bytes_per_conn = opt(&|r| r.slab_bytes_per_conn);
    let lat = |f: &dyn Fn(&FanoutRun) -> Option<Latency>| -> Option<Latency> {
        let v: Vec<Latency> = runs.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| Latency::median_of(&v))
    };
    s.latency_us = lat(&|r| Some(r.steady.latency_us)).unwrap_or_default();
    s.to_all_p50_ms = m(&|r| r.steady.to_all_p50_ms);
    s.to_all_max_ms = runs
        .iter()
        .map(|r| r.steady.to_all_max_ms)
        .fold(0.0, f64::max);
    s.ack_p50_us = m(&|r| r.steady.ack_us.p50);
    s.hub_cpu_us_per_delivery = opt(&|r| r.steady.hub_cpu_us_per_delivery);
    s.slow_latency_us = lat(&|r| r.with_slow.as_ref().map(|p| p.latency_us));
    s.slow_to_all_p50_ms = opt(&|r| r.with_slow.as_ref().map(|p| p.to_all_p50_ms));
    s.slow_ack_p50_us = opt(&|r| r.with_slow.as_ref().map(|p| p.ack_us.p50));
    s.slow_to_all_attached_p50_ms = opt(&|r| {
        r.with_slow
            .as_ref()
            .and_then(|p| p.to_all_p50_ms_while_attached)
    });
    s.missing = s.runs.iter().map(|r| r.missing).sum();
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn summary_text(ss: &[FanoutSummary], args: &FanoutArgs) -> String {
    let mut o = String::new();
    let medians = if args.runs > 1 {
        format!("medians of {} runs", args.runs)
    } else {
        "1 run".to_string()
    };
    o.push_str(&format!("\n## fan-out summary ({medians})\n"));
    let first = &ss[0];
    if ss.len() > 1 {
        o.push_str(&format!(
            "\n### Ratios (against {} connections)\n\n| connections | p99 ÷ p99 at {} | p50 ÷ p50 | median time to all ÷ | hub memory per connection ÷ |\n|---:|---:|---:|---:|---:|\n",
            conn_label(first.connections, first.idle),
            conn_label(first.connections, first.idle)
        ));
        for s in &ss[1..] {
            o.push_str(&format!(
                "| {} | **{}** | {} | {} | {} |\n",
                conn_label(s.connections, s.idle),
                ratio(s.latency_us.p99, first.latency_us.p99),
                ratio(s.latency_us.p50, first.latency_us.p50),
                ratio(s.to_all_p50_ms, first.to_all_p50_ms),
                ratio(
                    s.hub_bytes_per_conn.unwrap_or(0.0),
                    first.hub_bytes_per_conn.unwrap_or(0.0)
                ),
            ));
        }
    }
    o.push_str(
        "\n### Figures\n\n| connections | connects/s | hub memory per idle connection | kernel slab per connection (both ends) | publish→deliver p50 | p99 | p99.9 | max | time to all (median / worst) | publish→ack p50 | hub CPU per delivery | missing |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in ss {
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            conn_label(s.connections, s.idle),
            thousands(s.connects_per_sec as u64),
            kib(s.hub_bytes_per_conn),
            kib(s.slab_bytes_per_conn),
            ms(s.latency_us.p50),
            ms(s.latency_us.p99),
            ms(s.latency_us.p999),
            ms(s.latency_us.max),
            msf(s.to_all_p50_ms),
            msf(s.to_all_max_ms),
            ms(s.ack_p50_us),
            s.hub_cpu_us_per_delivery
                .map(|u| format!("{u:.1} µs"))
                .unwrap_or_else(|| "?".into()),
            thousands(s.missing),
        ));
    }
    if args.slow > 0 {
        o.push_str(&format!(
            "\n### With {} subscribers that never read (same hub, same subscribers, after the phase above)\n\n| connections | p50 with ÷ without | p99 with ÷ without | p50 / p99 with | median time to all with (while stalled ones were attached) | publish→ack p50 with ÷ without | cut as slow |\n|---:|---:|---:|---:|---:|---:|---:|\n",
            args.slow
        ));
        for s in ss {
            let Some(l) = s.slow_latency_us else { continue };
            let cut: Vec<String> = s
                .runs
                .iter()
                .map(|r| {
                    r.slow_disconnects
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            o.push_str(&format!(
                "| {} | {} | {} | {} / {} | {} ({}) | {} | {} |\n",
                conn_label(s.connections, s.idle),
                ratio(l.p50, s.latency_us.p50),
                ratio(l.p99, s.latency_us.p99),
                ms(l.p50),
                ms(l.p99),
                msf(s.slow_to_all_p50_ms.unwrap_or(0.0)),
                s.slow_to_all_attached_p50_ms
                    .map(msf)
                    .unwrap_or_else(|| "-".into()),
                ratio(s.slow_ack_p50_us.unwrap_or(0.0), s.ack_p50_us),
                cut.join(", "),
            ));
        }
    }
    if args.nodes.is_some() {
        o.push_str(&cluster_targets_text(ss));
    } else if no_idle(&args.idle) {
        o.push_str(&targets_text(ss));
    } else {
        // The issue-5 targets are about subscribers alone: judged on the
        // runs with the first --idle value.
        let same: Vec<FanoutSummary> = ss
            .iter()
            .filter(|s| s.idle == args.idle[0])
            .cloned()
            .collect();
        o.push_str(&targets_text(&same));
    }
    let contended: usize = ss
        .iter()
        .flat_map(|s| &s.runs)
        .filter(|r| r.contended())
        .count();
    if contended > 0 {
        o.push_str(&format!(
            "\nwarning: {contended} run(s) were contended (other processes used > {CONTENDED_PCT}% of a core); \
             they are left out of the medians when clean runs exist. Rerun on an idle machine.\n"
        ));
    }
    o
}

/// The issue-13 targets a multi-node run can judge (broadcast and
/// per-topic), only where measured: medians over the runs in the medians,
/// the worst node's memory.
fn cluster_targets_text(ss: &[FanoutSummary]) -> String {
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let mut o = String::from(
        "\n### Targets (issue 13, multi-node)\n\n| target | measured | verdict |\n|---|---|---|\n",
    );
    for s in ss {
        let all_complete = s.runs.iter().all(FanoutRun::complete);
        let nodes = s.runs.first().map_or(0, |r| r.nodes.len());
        let label = placement_label(
            s.connections,
            s.runs.first().map_or(&[][..], |r| &r.nodes[..]),
        );
        if s.per_topic.is_none() {
            let big = s.connections >= 100_000 && nodes >= 6;
            o.push_str(&format!(
                "| one publish to all 100,000 over ≥ 6 nodes, every subscriber, in order, p99 ≤ 1 s | {label}: {}; publish→deliver p99 {} | {} |\n",
                if all_complete { "every subscriber got every message, in order" } else { "NOT every subscriber got every message" },
                ms(s.latency_us.p99),
                if big {
                    verdict(all_complete && s.latency_us.p99 <= 1_000_000.0)
                } else {
                    "not measured (needs 100,000 over ≥ 6 nodes)"
                }
            ));
            o.push_str(&format!(
                "| hub CPU per broadcast delivery ≤ 4 µs | {label}: {} (all nodes' CPU ÷ all deliveries) | {} |\n",
                s.hub_cpu_us_per_delivery
                    .map(|u| format!("{u:.1} µs"))
                    .unwrap_or_else(|| "?".into()),
                match s.hub_cpu_us_per_delivery {
                    Some(u) => verdict(u <= 4.0),
                    None => "not measured",
                }
            ));
        }
        let worst = s
            .runs
            .iter()
            .flat_map(|r| &r.nodes)
            .filter_map(|n| n.bytes_per_conn)
            .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
        o.push_str(&format!(
            "| memory per idle connection ≤ 8 KiB on every node | {label}: worst node {} | {} |\n",
            kib(worst),
            match worst {
                Some(b) => verdict(b <= 8192.0),
                None => "not measured",
            }
        ));
        if s.per_topic.is_some() {
            o.push_str(&format!(
                "| per topic over ≥ 3 nodes: publish→deliver and publish→ack p99 ≤ 1.5× the same at 1,000 on one node | {label}: publish→deliver p99 {}, publish→ack p99 {} | compare with `--connections 1000 --topics all` without --nodes (same --rate) |\n",
                ms(s.latency_us.p99),
                ms(s.per_topic.as_ref().map_or(0.0, |t| t.ack_us.p99)),
            ));
        }
    }
    o
}

/// The issue-5 targets, judged only where measured.
fn targets_text(ss: &[FanoutSummary]) -> String {
    let at = |n: usize| ss.iter().find(|s| s.connections == n);
    let largest = ss.iter().max_by_key(|s| s.connections).expect("non-empty");
    let mut o =
        String::from("\n### Targets (issue 5)\n\n| target | measured | verdict |\n|---|---|---|\n");
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    match at(100_000) {
        Some(s) => {
            let mem = s.hub_bytes_per_conn;
            o.push_str(&format!(
                "| 100,000 idle WebSocket connections, ≤ 8 KiB of hub memory each | {} held; {} each | {} |\n",
                if s.missing == 0 && s.runs.iter().all(|r| r.complete()) {
                    "all"
                } else {
                    "NOT all"
                },
                kib(mem),
                match mem {
                    Some(b) => verdict(b <= 8192.0 && s.runs.iter().all(|r| r.complete())),
                    None => "not measured (no hub PID)",
                }
            ));
            o.push_str(&format!(
                "| one publish to all 100,000, p99 ≤ 300 ms | publish→deliver p99 {}; median time to all {}, worst {} | {} |\n",
                ms(s.latency_us.p99),
                msf(s.to_all_p50_ms),
                msf(s.to_all_max_ms),
                verdict(s.latency_us.p99 <= 300_000.0 && s.missing == 0)
            ));
        }
        None => o.push_str(&format!(
            "| 100,000 connections (memory ≤ 8 KiB each, p99 ≤ 300 ms) | not run; largest: {} connections, {} each, p99 {} | not measured |\n",
            thousands(largest.connections as u64),
            kib(largest.hub_bytes_per_conn),
            ms(largest.latency_us.p99)
        )),
    }
    match (at(1_000), at(50_000)) {
        (Some(a), Some(b)) => {
            let r = b.latency_us.p99 / a.latency_us.p99;
            o.push_str(&format!(
                "| p99 at 50,000 ≤ 1.5× p99 at 1,000 | {} ÷ {} = {r:.2}× | {} |\n",
                ms(b.latency_us.p99),
                ms(a.latency_us.p99),
                verdict(r <= 1.5)
            ));
        }
        (Some(a), None) if largest.connections > a.connections => o.push_str(&format!(
            "| p99 at 50,000 ≤ 1.5× p99 at 1,000 | 50,000 not run; at {}: {} ÷ {} = {:.2}× | not measured |\n",
            thousands(largest.connections as u64),
            ms(largest.latency_us.p99),
            ms(a.latency_us.p99),
            largest.latency_us.p99 / a.latency_us.p99
        )),
        _ => o.push_str(
            "| p99 at 50,000 ≤ 1.5× p99 at 1,000 | needs --connections 1000,50000 | not measured |\n",
        ),
    }
    o
}

fn write_json(
    path: &Path,
    args: &FanoutArgs,
    machine: &str,
    summaries: &[FanoutSummary],
) -> Result<(), LoadgenError> {
    #[derive(Serialize)]
    struct Out<'a> {
        tool: &'static str,
        date_utc: String,
        machine: &'a str,
        args: &'a FanoutArgs,
        results: &'a [FanoutSummary],
    }
    let out = Out {
        tool: "pinion bench fanout",
        date_utc: crate::utc_now(),
        machine,
        args,
        results: summaries,
    };
    let text = serde_json::to_string_pretty(&out).expect("plain data serializes");
    std::fs::write(path, text + "\n")
        .map_err(|e| LoadgenError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = FanoutArgs::parse_from(["fanout", "--connections", "1000,50000", "--slow", "10"])
            .unwrap();
        assert_eq!(a.connections, vec![1000, 50000]);
        assert_eq!(a.max_payload(), 65536);
        a.validate().unwrap();
        let d = FanoutArgs::default();
        assert_eq!(
            (d.connections.clone(), d.messages, d.slow),
            (vec![1000], 20, 0)
        );
        assert_eq!(d.max_payload(), 256);
        assert!(FanoutArgs::parse_from(["fanout", "--size", "4"])
            .unwrap()
            .validate()
            .is_err());
        assert!(FanoutArgs::parse_from(["fanout", "--hub-url", "tcp://127.0.0.1:1"]).is_err());
    }

    #[test]
    fn per_topic_args() {
        let p =
            |a: &[&str]| FanoutArgs::parse_from(std::iter::once("fanout").chain(a.iter().copied()));
        let ok = |a: &[&str]| {
            let x = p(a).unwrap_or_else(|e| panic!("{a:?}: {e}"));
            x.validate().unwrap_or_else(|e| panic!("{a:?}: {e}"));
            x
        };
        let refused = |a: &[&str]| match p(a) {
            Err(_) => {}
            Ok(x) => assert!(x.validate().is_err(), "{a:?} accepted"),
        };
        // Target 1.
        let a = ok(&[
            "--connections",
            "1000,19000",
            "--topics",
            "all",
            "--rate",
            "2000",
        ]);
        assert_eq!(a.topics, Some(Topics::All));
        assert_eq!(a.configs(), vec![(1000, 0), (19_000, 0)]);
        assert_eq!(a.scheduled(), (2000, 20_000));
        assert_eq!(a.inflight(), DEFAULT_INFLIGHT);
        // Target 2.
        let a = ok(&[
            "--connections",
            "10",
            "--topics",
            "1",
            "--idle",
            "0,15000",
            "--duration",
            "5",
        ]);
        assert_eq!(a.topics, Some(Topics::Count(1)));
        assert_eq!(a.configs(), vec![(10, 0), (10, 15_000)]);
        assert_eq!(a.scheduled(), (1000, 5000));
        let a = ok(&["--connections", "1,2", "--idle", "3,4"]);
        assert_eq!(a.configs(), vec![(1, 3), (1, 4), (2, 3), (2, 4)]);
        let a = ok(&[
            "--topics",
            "7",
            "--warmup",
            "0",
            "--rate",
            "10",
            "--duration",
            "0.1",
        ]);
        assert_eq!(a.scheduled(), (0, 1));
        // Per-topic flags without --topics, and --slow with it.
        for flag in ["--rate", "--duration", "--warmup", "--inflight", "--seed"] {
            refused(&[flag, "5"]);
        }
        refused(&["--topics", "5", "--slow", "3"]);
        refused(&["--topics", "5", "--messages", "3"]);
        refused(&["--topics", "5", "--interval-ms", "3"]);
        // K topics need K subscribers at every scale.
        refused(&["--topics", "100", "--connections", "50,200"]);
        ok(&["--topics", "50", "--connections", "50,200"]);
        refused(&["--topics", "0"]);
        refused(&["--topics", "many"]);
        refused(&["--topics", "all", "--rate", "0"]);
        refused(&["--topics", "all", "--rate", "-5"]);
        refused(&["--topics", "all", "--duration", "0"]);
        refused(&["--topics", "all", "--warmup", "-1"]);
        refused(&["--topics", "all", "--inflight", "0"]);
        refused(&["--topics", "all", "--rate", "0.01", "--duration", "1"]);
        refused(&["--topics", "all", "--rate", "100000", "--duration", "3600"]);
        refused(&["--idle", "2000000"]);
        // The broadcast mode's JSON arguments are as before.
        let j = serde_json::to_value(FanoutArgs::default()).unwrap();
        for k in [
            "idle", "topics", "rate", "duration", "warmup", "inflight", "seed",
        ] {
            assert!(j.get(k).is_none(), "{k} in {j}");
        }
        let j = serde_json::to_value(ok(&["--topics", "all", "--idle", "0,5"])).unwrap();
        assert_eq!(j["topics"], "all");
        assert_eq!(j["idle"], serde_json::json!([0, 5]));
    }

    #[test]
    fn multi_node_args_and_capacity() {
        let p =
            |a: &[&str]| FanoutArgs::parse_from(std::iter::once("fanout").chain(a.iter().copied()));
        let a = p(&["--connections", "100000", "--nodes", "3", "--learners", "3"]).unwrap();
        a.validate().unwrap();
        assert_eq!(
            (a.nodes, a.learners, a.worker_connections),
            (Some(3), 3, 19_000)
        );
        // --learners and --subscribers-on need --nodes; --slow, --idle and
        // --hub-url do not go with it.
        assert!(p(&["--learners", "2"]).is_err());
        assert!(p(&["--subscribers-on", "follower"]).is_err());
        assert!(p(&["--nodes", "3", "--subscribers-on", "somewhere"]).is_err());
        let a = p(&["--nodes", "3", "--subscribers-on", "follower"]).unwrap();
        assert_eq!(a.subscribers_on, nodes::Placement::Follower);
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(j["subscribers_on"], "follower");
        let j = serde_json::to_value(p(&["--nodes", "3"]).unwrap()).unwrap();
        assert!(j.get("subscribers_on").is_none(), "{j}");
        for bad in [
            &["--nodes", "3", "--slow", "5"][..],
            &["--nodes", "3", "--idle", "10"],
            &["--nodes", "0"],
            &["--nodes", "30", "--learners", "5"],
            &["--nodes", "3", "--worker-connections", "0"],
            &["--nodes", "3", "--worker-connections", "19001"],
            &[
                "--nodes",
                "3",
                "--hub-url",
                "tcp://127.0.0.1:1",
                "--http-url",
                "127.0.0.1:2",
            ],
        ] {
            let refused = p(bad).map(|a| a.validate().is_err()).unwrap_or(true);
            assert!(refused, "{bad:?} accepted");
        }
        // 100,000 on 3 nodes is 33,334 on one: more than a process may open.
        match check_capacity(100_000, 3, 19_000) {
            Err(LoadgenError::Capacity { need, limit, .. }) => {
                assert_eq!((need, limit), (33_334, 19_000))
            }
            other => panic!("{other:?}"),
        }
        // A worker larger than the hard open-file limit.
        if let Some(h) = fd_hard_limit().filter(|&h| h < 1 << 30) {
            assert!(matches!(
                check_capacity(10, 1, h as usize),
                Err(LoadgenError::Capacity { .. })
            ));
        }
        assert!(check_capacity(300, 4, 100).is_ok());
        // The JSON of a one-hub run is as before.
        let j = serde_json::to_value(FanoutArgs::default()).unwrap();
        assert!(j.get("nodes").is_none() && j.get("learners").is_none());
    }

    #[test]
    fn cluster_targets_are_judged_only_where_measured() {
        let s = |n: usize, nodes: usize, p99: f64, mem: f64| FanoutSummary {
            connections: n,
            latency_us: Latency {
                p99,
                ..Latency::default()
            },
            hub_cpu_us_per_delivery: Some(8.3),
            runs: vec![FanoutRun {
                connections: n,
                nodes: (0..nodes)
                    .map(|_| NodeRun {
                        bytes_per_conn: Some(mem),
                        ..NodeRun::default()
                    })
                    .collect(),
                ..FanoutRun::default()
            }],
            ..FanoutSummary::default()
        };
        let t = cluster_targets_text(&[s(100_000, 6, 706_000.0, 5478.0)]);
        assert!(t.contains("p99 706 ms | **met**"), "{t}");
        assert!(
            t.contains("8.3 µs (all nodes' CPU ÷ all deliveries) | **not met**"),
            "{t}"
        );
        assert!(t.contains("worst node 5.35 KiB | **met**"), "{t}");
        let t = cluster_targets_text(&[s(100_000, 6, 1_200_000.0, 9000.0)]);
        assert!(t.contains("p99 1200 ms | **not met**"), "{t}");
        assert!(t.contains("8.79 KiB | **not met**"), "{t}");
        let t = cluster_targets_text(&[s(300, 4, 10_000.0, 5000.0)]);
        assert!(
            t.contains("not measured (needs 100,000 over ≥ 6 nodes)"),
            "{t}"
        );
        // Missing deliveries never meet the broadcast target.
        let mut bad = s(100_000, 6, 500_000.0, 5000.0);
        bad.runs[0].missing = 1;
        let t = cluster_targets_text(&[bad]);
        assert!(
            t.contains("NOT every subscriber") && t.contains("p99 500 ms | **not met**"),
            "{t}"
        );
    }

    #[test]
    fn multi_node_runs_with_missing_or_duplicate_deliveries_fail() {
        let run = |nodes: usize, missing: u64, duplicates: u64| FanoutRun {
            nodes: vec![NodeRun::default(); nodes],
            missing,
            duplicates,
            ..FanoutRun::default()
        };
        let s = |runs: Vec<FanoutRun>| FanoutSummary {
            runs,
            ..FanoutSummary::default()
        };
        assert_eq!(s(vec![run(4, 0, 0)]).failures(), 0);
        assert_eq!(s(vec![run(4, 1, 0), run(4, 0, 0)]).failures(), 1);
        assert_eq!(s(vec![run(6, 0, 2)]).failures(), 1);
        // One hub, broadcast: reported, not a failure (as before).
        assert_eq!(s(vec![run(0, 3, 0)]).failures(), 0);
    }

    #[test]
    fn fd_limits() {
        let mine = fd_limit_of(std::process::id()).unwrap();
        assert!(mine > 0);
        assert!(!fd_limit_hint().is_empty());
    }

    #[test]
    fn targets_are_judged_only_where_measured() {
        let s = |n: usize, p99: f64, mem: f64| FanoutSummary {
            connections: n,
            latency_us: Latency {
                p99,
                ..Latency::default()
            },
            hub_bytes_per_conn: Some(mem),
            ..FanoutSummary::default()
        };
        let t = targets_text(&[s(1000, 1000.0, 5000.0)]);
        assert!(t.contains("not run; largest: 1,000 connections"), "{t}");
        assert!(!t.contains("**met**"), "{t}");
        let t = targets_text(&[s(1000, 10_000.0, 3000.0), s(19_900, 130_000.0, 2500.0)]);
        assert!(
            t.contains("50,000 not run; at 19,900: 130 ms ÷ 10 ms = 13.00× | not measured"),
            "{t}"
        );
        assert!(
            t.contains("largest: 19,900 connections, 2.44 KiB each, p99 130 ms | not measured"),
            "{t}"
        );
        let t = targets_text(&[
            s(1000, 1000.0, 5000.0),
            s(50_000, 1400.0, 5000.0),
            s(100_000, 400_000.0, 9000.0),
        ]);
        assert!(t.contains("1.40× | **met**"), "{t}");
        assert!(t.contains("8.79 KiB each | **not met**"), "{t}");
        assert!(t.contains("p99 400 ms"), "{t}");
    }
}
