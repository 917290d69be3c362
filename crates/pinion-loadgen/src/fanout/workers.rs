//! Subscriber worker processes: how `pinion bench fanout --nodes N` holds
//! more WebSocket subscribers than one process may open files.
//!
//! One process here may hold about 19,950 descriptors (a hard limit of
//! 20,000 that cannot be raised), so the bench spreads its subscribers over
//! worker processes, each at most `--worker-connections` (19,000 by
//! default), running the hidden `pinion bench fanout-worker`: the same
//! [`Clients`] as the single-process bench, fed by a plan.
//!
//! The parent and a worker talk JSON lines over the worker's stdin and
//! stdout:
//!
//! ```text
//! parent → worker   {"assignments":[{"node":0,"http":"127.0.0.1:P","first":0,"count":50}, …], "target":…, "base_mono_ns":…, …}
//! worker → parent   {"Progress":{"connected":50,"failed":0,"delivered":250,"ended":0,"first_error":null}}   (every 5 ms while it changes)
//! parent → worker   finish
//! worker → parent   {"Done":[<one outcome per assignment: histogram buckets, per-message arrivals, per-subscriber counts>]}
//! ```
//!
//! Latencies cross processes: a payload carries its send time as
//! nanoseconds since the run's base, and the plan gives that base as a
//! `CLOCK_MONOTONIC` reading (system-wide, the clock `std::time::Instant`
//! reads on Linux); each worker turns it into its own `Instant`, so every
//! process measures from the same point of the same clock.
//!
//! Workers are stopped by PID when the run ends, on error and on Ctrl-C
//! (dropping [`Workers`]), and die with the bench (`PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::clients::{ClientPlan, Clients, Outcome, Target, TopicTally};
use super::topics::Schedule;
use crate::driver::new_histogram;
use crate::error::LoadgenError;
use crate::server;

/// Most subscribers one worker process holds by default (the open-file
/// hard limit here is 20,000 and cannot be raised).
pub(crate) const MAX_PER_WORKER: usize = 19_000;
/// Descriptors a worker needs besides its sockets.
const WORKER_FD_MARGIN: u64 = 64;
/// How often a worker reports its counters (when they changed).
const PROGRESS_EVERY: Duration = Duration::from_millis(5);

/// Now on `CLOCK_MONOTONIC`, nanoseconds: the same clock in every process
/// of the machine.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `Instant` of a `CLOCK_MONOTONIC` reading taken in this or another
/// process (`Instant` reads `CLOCK_MONOTONIC` on Linux; the translation is
/// off by the few ns between the two readings below).
pub(crate) fn instant_at(mono: u64) -> Instant {
    let (i, m) = (Instant::now(), mono_ns());
    i.checked_sub(Duration::from_nanos(m.saturating_sub(mono)))
        .unwrap_or(i)
}

/// One slice of the run's subscribers, all on one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Assignment {
    /// The node (index into the run's nodes).
    pub node: usize,
    /// Its HTTP port (`/sub`).
    pub http: SocketAddr,
    /// The run's index of the first subscriber of the slice (its topic
    /// and its source address follow from it).
    pub first: usize,
    pub count: usize,
}

/// What every subscriber subscribes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TargetSpec {
    /// The same `GET` target for all (broadcast mode).
    Fixed(String),
    /// Per-topic mode: subscriber `i` on topic `i % k` of the seeded
    /// schedule of `messages` messages (rebuilt in the worker).
    Topic {
        seed: u64,
        k: usize,
        messages: usize,
    },
}

/// What one worker is told to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerPlan {
    pub assignments: Vec<Assignment>,
    pub target: TargetSpec,
    /// Subscriber threads in all.
    pub threads: usize,
    pub messages: usize,
    pub phase_split: usize,
    /// The run's base instant as a `CLOCK_MONOTONIC` reading.
    pub base_mono_ns: u64,
    pub concurrency: usize,
    pub key_seed: u64,
}

/// A worker's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Progress {
    pub connected: usize,
    pub failed: usize,
    pub delivered: u64,
    pub ended: usize,
    pub first_error: Option<String>,
}

/// One line from a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    Progress(Progress),
    /// One outcome per assignment, in plan order.
    Done(Vec<WireOutcome>),
    /// The worker could not run its plan.
    Failed(String),
}

/// An [`Outcome`] as it crosses the pipe (histograms as bucket counts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireOutcome {
    pub hist: [Vec<(u64, u64)>; 2],
    pub arrivals: Vec<u64>,
    pub last_ns: Vec<u64>,
    pub offsets: Vec<Option<u64>>,
    pub topics: Vec<TopicTally>,
    pub got: Vec<u32>,
    pub out_of_order: u64,
    pub closed: BTreeMap<u16, usize>,
    pub eof: usize,
    pub errors: BTreeMap<String, u64>,
}

fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

impl From<Outcome> for WireOutcome {
    fn from(o: Outcome) -> Self {
        WireOutcome {
            hist: [buckets(&o.hist[0]), buckets(&o.hist[1])],
            arrivals: o.arrivals,
            last_ns: o.last_ns,
            offsets: o.offsets,
            topics: o.topics,
            got: o.got,
            out_of_order: o.out_of_order,
            closed: o.closed,
            eof: o.eof,
            errors: o.errors,
        }
    }
}

/// Splits `n` subscribers evenly over `nodes` (the nodes that hold
/// subscribers, each its index among the run's nodes and its HTTP port;
/// the `h`-th gets the run's subscribers `h·n/H .. (h+1)·n/H`) and over
/// `⌈n / per_worker⌉` workers (contiguous slices); a worker's slice is cut
/// at node boundaries into assignments.
pub(crate) fn layout(
    n: usize,
    nodes: &[(usize, SocketAddr)],
    per_worker: usize,
) -> Vec<Vec<Assignment>> {
    if n == 0 || nodes.is_empty() {
        return Vec::new();
    }
    let per_worker = per_worker.max(1);
    let node_start = |h: usize| h * n / nodes.len();
    let workers = n.div_ceil(per_worker);
    (0..workers)
        .map(|w| {
            let (lo, hi) = (w * n / workers, (w + 1) * n / workers);
            (0..nodes.len())
                .filter_map(|h| {
                    let (a, b) = (node_start(h).max(lo), node_start(h + 1).min(hi));
                    (a < b).then(|| Assignment {
                        node: nodes[h].0,
                        http: nodes[h].1,
                        first: a,
                        count: b - a,
                    })
                })
                .collect()
        })
        .collect()
}

/// `pinion bench fanout-worker`: reads its plan from stdin, holds the
/// subscribers, reports on stdout until told `finish` (or stdin closes),
/// then sends what they got and returns.
pub fn run_fanout_worker() -> Result<(), LoadgenError> {
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin
        .lock()
        .read_line(&mut first)
        .map_err(|e| LoadgenError::io("reading the worker plan", e))?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let send = |r: &Report| {
        let line = serde_json::to_string(r).expect("plain data serializes");
        let mut o = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    let plan: WorkerPlan = match serde_json::from_str(&first) {
        Ok(p) => p,
        Err(e) => {
            send(&Report::Failed(format!("bad plan: {e}")));
            return Err(LoadgenError::Args(format!("fanout-worker: bad plan: {e}")));
        }
    };
    let total: usize = plan.assignments.iter().map(|a| a.count).sum();
    let need = total as u64 + WORKER_FD_MARGIN;
    match pinion_runtime::sys::raise_fd_limit(need) {
        Ok(l) if l >= need => {}
        Ok(l) => {
            send(&Report::Failed(format!(
                "{total} subscribers need {need} open files, the limit is {l}"
            )));
            return Ok(());
        }
        Err(e) => {
            send(&Report::Failed(format!("raising the open-file limit: {e}")));
            return Ok(());
        }
    }
    let target = match &plan.target {
        TargetSpec::Fixed(t) => Target::Fixed(t.clone()),
        TargetSpec::Topic { seed, k, messages } => {
            if *k == 0 || *k > u32::MAX as usize || *messages > u32::MAX as usize {
                send(&Report::Failed(format!("bad topic schedule: k {k}")));
                return Ok(());
            }
            Target::Topic(Arc::new(Schedule::new(*seed, *k, *messages)))
        }
    };
    let base = instant_at(plan.base_mono_ns);
    let per = (plan.threads / plan.assignments.len().max(1)).max(1);
    let mut clients = Vec::new();
    for a in &plan.assignments {
        let c = Clients::start(ClientPlan {
            http: a.http,
            target: target.clone(),
            first_idx: a.first,
            target_offset: a.first,
            count: a.count,
            threads: per.min(a.count).max(1),
            read: true,
            messages: plan.messages,
            phase_split: plan.phase_split,
            base,
            concurrency: plan.concurrency,
            key_seed: plan.key_seed ^ (a.first as u64).wrapping_mul(0x9E37_79B9),
        });
        match c {
            Ok(c) => clients.push(c),
            Err(e) => {
                send(&Report::Failed(e.to_string()));
                return Ok(());
            }
        }
    }
    // `finish` (or the parent going away) ends the run.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("fanout-worker-stdin".into())
            .spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match std::io::stdin().lock().read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.trim() == "finish" => break,
                        Ok(_) => {}
                    }
                }
                stop.store(true, Ordering::Release);
            })
            .map_err(|e| LoadgenError::io("spawning the worker's stdin thread", e))?;
    }
    let mut last = None;
    let mut last_sent = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let p = Progress {
            connected: clients.iter().map(Clients::connected).sum(),
            failed: clients.iter().map(Clients::failed).sum(),
            delivered: clients.iter().map(Clients::delivered).sum(),
            ended: clients.iter().map(Clients::ended).sum(),
            first_error: clients.iter().find_map(Clients::first_error),
        };
        if last.as_ref() != Some(&p) || last_sent.elapsed() > Duration::from_millis(500) {
            send(&Report::Progress(p.clone()));
            last = Some(p);
            last_sent = Instant::now();
        }
        std::thread::sleep(PROGRESS_EVERY);
    }
    let outs: Vec<WireOutcome> = clients.into_iter().map(|c| c.finish().into()).collect();
    send(&Report::Done(outs));
    Ok(())
}

/// What the parent knows of one worker.
#[derive(Default)]
struct State {
    connected: AtomicUsize,
    failed: AtomicUsize,
    delivered: AtomicU64,
    ended: AtomicUsize,
    first_error: Mutex<Option<String>>,
    done: Mutex<Option<Vec<WireOutcome>>>,
    /// Its stdout closed.
    gone: AtomicBool,
}

impl State {
    fn error(&self, e: String) {
        let mut f = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.get_or_insert(e);
    }
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    state: Arc<State>,
    plan: WorkerPlan,
}

/// Running worker processes; dropping this stops them by PID.
pub(crate) struct Workers {
    procs: Vec<Proc>,
    /// Subscribers over all workers.
    count: usize,
    messages: usize,
    topic_mode: bool,
}

impl Workers {
    /// Starts one `<exe> bench fanout-worker` per plan and sends it its
    /// plan; the subscribers connect in the background.
    pub(crate) fn start(exe: &Path, plans: Vec<WorkerPlan>) -> Result<Workers, LoadgenError> {
        let count = plans
            .iter()
            .flat_map(|p| &p.assignments)
            .map(|a| a.count)
            .sum();
        let mut w = Workers {
            procs: Vec::new(),
            count,
            messages: plans.first().map_or(0, |p| p.messages),
            topic_mode: plans
                .first()
                .is_some_and(|p| matches!(p.target, TargetSpec::Topic { .. })),
        };
        for (k, plan) in plans.into_iter().enumerate() {
            let mut child =
                server::spawn_helper(exe, &["bench", "fanout-worker"]).map_err(|e| {
                    LoadgenError::io(format!("starting worker {k} ({})", exe.display()), e)
                })?;
            let mut stdin = child.stdin.take();
            let stdout = child.stdout.take();
            let state = Arc::new(State::default());
            let line = serde_json::to_string(&plan).expect("plain data serializes");
            let sent = stdin
                .as_mut()
                .map(|s| writeln!(s, "{line}").and_then(|()| s.flush()));
            let reader = stdout.map(|out| {
                let state = state.clone();
                std::thread::spawn(move || read_reports(out, &state))
            });
            w.procs.push(Proc {
                child,
                stdin,
                reader,
                state,
                plan,
            });
            if let Some(Err(e)) = sent {
                return Err(LoadgenError::io(format!("sending worker {k} its plan"), e));
            }
        }
        Ok(w)
    }

    /// The workers' PIDs.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    pub(crate) fn connected(&self) -> usize {
        self.procs
            .iter()
            .map(|p| p.state.connected.load(Ordering::Acquire))
            .sum()
    }

    /// Subscribers that failed to open, counting every one of a worker
    /// that failed or exited before finishing.
    pub(crate) fn failed(&mut self) -> usize {
        let mut n = 0;
        for p in &mut self.procs {
            let planned: usize = p.plan.assignments.iter().map(|a| a.count).sum();
            let exited = matches!(p.child.try_wait(), Ok(Some(_)));
            if p.state.gone.load(Ordering::Acquire) || exited {
                let done = p
                    .state
                    .done
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some();
                if !done {
                    p.state
                        .error(format!("worker pid {} exited early", p.child.id()));
                    n += planned - p.state.connected.load(Ordering::Acquire).min(planned);
                    continue;
                }
            }
            n += p.state.failed.load(Ordering::Acquire);
        }
        n
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| p.state.delivered.load(Ordering::Acquire))
            .sum()
    }

    pub(crate) fn ended(&self) -> usize {
        self.procs
            .iter()
            .map(|p| p.state.ended.load(Ordering::Acquire))
            .sum()
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.procs.iter().find_map(|p| {
            p.state
                .first_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Tells every worker to close its subscribers, collects what they got
    /// and merges it in the run's subscriber order. Also returns, per
    /// assignment, its node and its deliveries (every message received).
    pub(crate) fn finish(mut self) -> (Outcome, Vec<(Assignment, u64)>) {
        for p in &mut self.procs {
            if let Some(mut s) = p.stdin.take() {
                let _ = writeln!(s, "finish").and_then(|()| s.flush());
            }
        }
        let mut o = Outcome {
            hist: [new_histogram(), new_histogram()],
            arrivals: vec![0; self.messages],
            last_ns: vec![0; self.messages],
            offsets: vec![None; self.messages],
            topics: if self.topic_mode {
                vec![TopicTally::default(); self.count]
            } else {
                Vec::new()
            },
            got: vec![0; self.count],
            out_of_order: 0,
            closed: BTreeMap::new(),
            eof: 0,
            errors: BTreeMap::new(),
        };
        let mut per_assignment = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for p in &mut self.procs {
            if let Some(r) = p.reader.take() {
                // The reader ends when the worker closes its stdout.
                while !r.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if r.is_finished() {
                    let _ = r.join();
                }
            }
            let done = p
                .state
                .done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let Some(outs) = done.filter(|d| d.len() == p.plan.assignments.len()) else {
                *o.errors
                    .entry(format!(
                        "a worker sent no results ({})",
                        p.state
                            .first_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone()
                            .unwrap_or_else(|| "no error given".into())
                    ))
                    .or_insert(0) += 1;
                continue;
            };
            for (a, w) in p.plan.assignments.iter().zip(outs) {
                let d = merge_into(&mut o, a, w);
                per_assignment.push((a.clone(), d));
            }
        }
        (o, per_assignment)
    }
}

/// Adds one assignment's outcome to the run's; returns its deliveries.
fn merge_into(o: &mut Outcome, a: &Assignment, w: WireOutcome) -> u64 {
    let bad = |o: &mut Outcome, what: &str| {
        *o.errors
            .entry(format!("worker result: {what}"))
            .or_insert(0) += 1;
    };
    for (h, b) in o.hist.iter_mut().zip(&w.hist) {
        for &(v, c) in b {
            h.saturating_record_n(v, c);
        }
    }
    if w.arrivals.len() != o.arrivals.len()
        || w.last_ns.len() != o.arrivals.len()
        || w.offsets.len() != o.arrivals.len()
    {
        bad(o, "per-message tallies of the wrong length");
    } else {
        for i in 0..o.arrivals.len() {
            o.arrivals[i] += w.arrivals[i];
            if w.arrivals[i] > 0 {
                o.last_ns[i] = o.last_ns[i].max(w.last_ns[i]);
                match (o.offsets[i], w.offsets[i]) {
                    (Some(x), Some(y)) if x != y => {
                        *o.errors
                            .entry("subscribers got one message with different offsets".into())
                            .or_insert(0) += 1;
                    }
                    (None, y) => o.offsets[i] = y,
                    _ => {}
                }
            }
        }
    }
    let end = a.first + a.count;
    if w.got.len() != a.count || end > o.got.len() {
        bad(o, "per-subscriber counts of the wrong length");
    } else {
        o.got[a.first..end].copy_from_slice(&w.got);
    }
    if !o.topics.is_empty() {
        if w.topics.len() != a.count || end > o.topics.len() {
            bad(o, "per-topic tallies of the wrong length");
        } else {
            o.topics[a.first..end].copy_from_slice(&w.topics);
        }
    }
    o.out_of_order += w.out_of_order;
    for (k, v) in w.closed {
        *o.closed.entry(k).or_insert(0) += v;
    }
    o.eof += w.eof;
    for (k, v) in w.errors {
        *o.errors.entry(k).or_insert(0) += v;
    }
    w.got.iter().map(|&g| u64::from(g)).sum()
}

fn read_reports(out: std::process::ChildStdout, state: &State) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Progress(p)) => {
                state.connected.store(p.connected, Ordering::Release);
                state.failed.store(p.failed, Ordering::Release);
                state.delivered.store(p.delivered, Ordering::Release);
                state.ended.store(p.ended, Ordering::Release);
                if let Some(e) = p.first_error {
                    state.error(e);
                }
            }
            Ok(Report::Done(outs)) => {
                *state
                    .done
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outs);
            }
            Ok(Report::Failed(e)) => state.error(e),
            Err(e) => state.error(format!("unreadable worker report: {e}")),
        }
    }
    state.gone.store(true, Ordering::Release);
}

impl Drop for Workers {
    fn drop(&mut self) {
        for p in &mut self.procs {
            drop(p.stdin.take());
            // By PID: SIGKILL (a worker only holds client sockets).
            let _ = p.child.kill();
            let _ = p.child.wait();
            if let Some(r) = p.reader.take() {
                let _ = r.join();
            }
        }
    }
}

/// What waiting for connections reads.
pub(crate) trait Counts {
    fn connected(&self) -> usize;
    fn failed(&mut self) -> usize;
    fn first_error(&self) -> Option<String>;
}

impl Counts for Clients {
    fn connected(&self) -> usize {
        Clients::connected(self)
    }
    fn failed(&mut self) -> usize {
        Clients::failed(self)
    }
    fn first_error(&self) -> Option<String> {
        Clients::first_error(self)
    }
}

impl Counts for Subs {
    fn connected(&self) -> usize {
        Subs::connected(self)
    }
    fn failed(&mut self) -> usize {
        Subs::failed(self)
    }
    fn first_error(&self) -> Option<String> {
        Subs::first_error(self)
    }
}

/// The subscribers of a run: in this process, or in worker processes.
pub(crate) enum Subs {
    Local(Clients),
    Remote(Workers),
}

impl Subs {
    pub(crate) fn connected(&self) -> usize {
        match self {
            Subs::Local(c) => c.connected(),
            Subs::Remote(w) => w.connected(),
        }
    }

    pub(crate) fn failed(&mut self) -> usize {
        match self {
            Subs::Local(c) => c.failed(),
            Subs::Remote(w) => w.failed(),
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        match self {
            Subs::Local(c) => c.delivered(),
            Subs::Remote(w) => w.delivered(),
        }
    }

    pub(crate) fn ended(&self) -> usize {
        match self {
            Subs::Local(c) => c.ended(),
            Subs::Remote(w) => w.ended(),
        }
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        match self {
            Subs::Local(c) => c.first_error(),
            Subs::Remote(w) => w.first_error(),
        }
    }

    /// PIDs of worker processes (none when local).
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            Subs::Local(_) => Vec::new(),
            Subs::Remote(w) => w.pids(),
        }
    }

    /// Closes them; the merged outcome and, with workers, per assignment
    /// its deliveries.
    pub(crate) fn finish(self) -> (Outcome, Vec<(Assignment, u64)>) {
        match self {
            Subs::Local(c) => (c.finish(), Vec::new()),
            Subs::Remote(w) => w.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(k: usize) -> Vec<(usize, SocketAddr)> {
        (0..k)
            .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
            .collect()
    }

    #[test]
    fn layout_spreads_evenly_and_caps_workers() {
        // 300 over 4 nodes, at most 100 per worker: 3 workers of 100.
        let l = layout(300, &addrs(4), 100);
        assert_eq!(l.len(), 3);
        let mut per_node = [0usize; 4];
        let mut next = 0;
        for w in &l {
            assert!(w.iter().map(|a| a.count).sum::<usize>() <= 100);
            for a in w {
                assert_eq!(a.first, next, "contiguous, in order");
                next += a.count;
                per_node[a.node] += a.count;
                assert_eq!(a.http, addrs(4)[a.node].1);
            }
        }
        assert_eq!(next, 300);
        assert_eq!(per_node, [75; 4]);
        // 100,000 over 6 nodes at 19,000 per worker: 6 workers.
        let l = layout(100_000, &addrs(6), MAX_PER_WORKER);
        assert_eq!(l.len(), 6);
        assert!(l
            .iter()
            .all(|w| w.iter().map(|a| a.count).sum::<usize>() <= MAX_PER_WORKER));
        assert!(layout(0, &addrs(2), 10).is_empty());
        // All on node 2 of 3 (--subscribers-on): its index, its port.
        let one = [addrs(3)[2]];
        let l = layout(250, &one, 100);
        assert_eq!(l.len(), 3);
        assert!(l
            .iter()
            .flatten()
            .all(|a| a.node == 2 && a.http == one[0].1));
        assert_eq!(l.iter().flatten().map(|a| a.count).sum::<usize>(), 250);
    }

    #[test]
    fn outcomes_cross_the_pipe_and_merge() {
        let mut h = new_histogram();
        h.record(5_000).unwrap();
        h.record_n(2_000_000, 3).unwrap();
        let w = WireOutcome {
            hist: [buckets(&h), Vec::new()],
            arrivals: vec![2, 0],
            last_ns: vec![10, 0],
            offsets: vec![Some(7), None],
            topics: Vec::new(),
            got: vec![1, 1],
            out_of_order: 0,
            closed: BTreeMap::new(),
            eof: 0,
            errors: BTreeMap::new(),
        };
        let line = serde_json::to_string(&Report::Done(vec![w])).unwrap();
        let Report::Done(mut back) = serde_json::from_str(&line).unwrap() else {
            panic!("not Done")
        };
        let mut o = Outcome {
            hist: [new_histogram(), new_histogram()],
            arrivals: vec![0; 2],
            last_ns: vec![0; 2],
            offsets: vec![None; 2],
            topics: Vec::new(),
            got: vec![0; 4],
            out_of_order: 0,
            closed: BTreeMap::new(),
            eof: 0,
            errors: BTreeMap::new(),
        };
        let a = Assignment {
            node: 1,
            http: addrs(2)[1].1,
            first: 2,
            count: 2,
        };
        assert_eq!(merge_into(&mut o, &a, back.remove(0)), 2);
        assert_eq!(o.hist[0].len(), 4);
        assert!(o.hist[0].value_at_quantile(0.99) >= 1_990_000);
        assert_eq!(o.got, vec![0, 0, 1, 1]);
        assert_eq!(
            (o.arrivals[0], o.offsets[0], o.last_ns[0]),
            (2, Some(7), 10)
        );
        assert!(o.errors.is_empty());
        // A result of the wrong shape is an error, not a panic.
        let short = WireOutcome {
            hist: [Vec::new(), Vec::new()],
            arrivals: vec![1],
            last_ns: vec![1],
            offsets: vec![None],
            topics: Vec::new(),
            got: vec![1; 5],
            out_of_order: 0,
            closed: BTreeMap::new(),
            eof: 0,
            errors: BTreeMap::new(),
        };
        merge_into(&mut o, &a, short);
        assert_eq!(o.errors.len(), 2, "{:?}", o.errors);
    }

    #[test]
    fn the_monotonic_clock_is_instants_clock() {
        let m = mono_ns();
        let i = Instant::now();
        let back = instant_at(m);
        let d = if back > i { back - i } else { i - back };
        assert!(d < Duration::from_millis(5), "{d:?}");
    }
}
