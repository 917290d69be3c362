//! `pinion bench fanout --topics K`: the per-topic mode.
//!
//! One run, for `N` subscribers and `M` idle ones:
//!
//! 1. start the hub (or use `--hub-url`), one warm-up publish on a topic
//!    nobody takes;
//! 2. open the `M` idle subscribers (`idle.<i>/`, never published to) and
//!    wait until the hub counts them; read its RSS;
//! 3. open the `N` subscribers, subscriber `i` on `t.<i % K>/` (`--topics
//!    all`: K = N), wait until the hub counts them; read its RSS again;
//! 4. publish `rate × (warmup + duration)` messages, paced and open loop,
//!    pipelined on one SP REQ connection (module `paced`), message `m` to
//!    the topic the seeded schedule gives it, carrying its index and its
//!    **scheduled** send time: every latency is measured from the schedule
//!    (no coordinated omission); the send lag behind it is reported;
//! 5. wait until every subscriber has its topic's ACKed messages (or
//!    `--deliver-timeout` after the last ACK); that instant ends the
//!    measured window, which starts at the scheduled time of the first
//!    message after the warm-up: hub CPU over that window ÷ the window's
//!    publishes (and ÷ its deliveries);
//! 6. check every subscriber got exactly the messages of its topic, once
//!    each, in log order, with the offsets the ACKs named; close
//!    everything; stop the hub.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::clients::{ClientPlan, Target};
use super::hub::{self, HubAddrs, Publisher};
use super::paced::{self, PacedPlan, LATE};
use super::topics::{subscribers_on, Schedule, Topics};
use super::workers::{self, TargetSpec};
use super::{
    conn_label, cpu_between, finish_idle, hub_text, idle_problems, idle_text, kib, ms, node_rss,
    node_runs, nodes, open_idle, open_subscribers, pct, progress, ratio, sum_opt, wait_hub_count,
    write_json, Cpu, FanoutArgs, FanoutRun, FanoutSummary, NodeInputs, Phase, Pids, Site,
    PER_SOURCE_ADDR,
};
use crate::error::LoadgenError;
use crate::report::{median, median_runs, thousands, Latency, CONTENDED_PCT};
use crate::server::{self, check_interrupted};

/// A run's per-topic figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicsRun {
    /// Topics (K); subscriber i is on topic i % K.
    pub topics: usize,
    /// Scheduled publishes per second.
    pub rate: f64,
    /// Seed of the topic schedule.
    pub seed: u64,
    /// Publish requests in flight at most.
    pub inflight: usize,
    /// Warm-up messages before the measured window (delivered and checked,
    /// not in the figures).
    pub warmup_messages: usize,
    /// Measured messages scheduled.
    pub scheduled: usize,
    /// Measured messages written.
    pub sent: usize,
    /// Measured messages ACKed.
    pub published: usize,
    /// NACKs and error replies (warm-up included), by kind.
    pub nacks: BTreeMap<String, u64>,
    /// ACKed measured messages ÷ (last ACK − window start + 1 / rate).
    pub publishes_per_sec: f64,
    /// Measured deliveries ÷ (last measured delivery − window start + 1 /
    /// rate).
    pub deliveries_per_sec: f64,
    /// The measured window (CPU figures), seconds.
    pub window_secs: f64,
    /// How late the measured messages were written behind their schedule, µs.
    pub send_lag_us: Latency,
    /// Measured messages written more than 1 ms behind schedule.
    pub late_sends: usize,
    /// More than 1 % of the measured messages were written more than 1 ms
    /// late: the publisher could not keep the rate (the latencies, measured
    /// from the schedule, include the wait).
    pub behind_schedule: bool,
    /// Hub CPU in the window ÷ ACKed measured publishes, µs.
    pub hub_cpu_us_per_publish: Option<f64>,
    /// Deliveries received, warm-up included.
    pub delivered_all: u64,
    /// Deliveries due, warm-up included: Σ over ACKed messages of the
    /// subscribers on its topic.
    pub expected_all: u64,
    /// Deliveries due and never received.
    pub missing: u64,
    /// Subscribers that missed at least one.
    pub subscribers_missing: usize,
    /// A message received again by a subscriber that had it.
    pub duplicates: u64,
    /// A message received by a subscriber of another topic.
    pub misrouted: u64,
    /// A message received after a later one of its topic (or with an
    /// offset not above the previous one).
    pub out_of_order: u64,
    /// Messages whose deliveries named another offset than their ACK (or
    /// that were delivered without an ACK).
    pub offset_mismatches: u64,
    /// ACKed messages per topic, warm-up included (not in the JSON: K
    /// numbers).
    #[serde(skip)]
    pub published_per_topic: Vec<u64>,
}

impl TopicsRun {
    /// Every publish ACKed, every subscriber got exactly its topic's
    /// messages, once each, in order, with the ACKed offsets.
    pub fn complete(&self) -> bool {
        self.nacks.is_empty()
            && self.sent == self.scheduled
            && self.published == self.scheduled
            && self.missing == 0
            && self.duplicates == 0
            && self.misrouted == 0
            && self.out_of_order == 0
            && self.offset_mismatches == 0
            && self.delivered_all == self.expected_all
    }
}

/// Medians of the per-topic figures over the runs of one configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicsSummary {
    /// Topics (K).
    pub topics: usize,
    /// Scheduled publishes per second.
    pub rate: f64,
    /// Median achieved publishes per second.
    pub publishes_per_sec: f64,
    /// Median deliveries per second.
    pub deliveries_per_sec: f64,
    /// Medians of publish→ACK percentiles (from the scheduled send time), µs.
    pub ack_us: Latency,
    /// Median send lag p99, µs.
    pub send_lag_p99_us: f64,
    /// Median hub CPU per publish, µs.
    pub hub_cpu_us_per_publish: Option<f64>,
    /// Median hub CPU, % of one core.
    pub hub_cpu_pct: Option<f64>,
    /// Sums over all runs.
    pub duplicates: u64,
    /// See `duplicates`.
    pub misrouted: u64,
    /// See `duplicates`.
    pub out_of_order: u64,
    /// See `duplicates`.
    pub offset_mismatches: u64,
    /// Runs whose publisher fell behind schedule.
    pub behind_schedule_runs: usize,
    /// Runs that were not complete.
    pub incomplete_runs: usize,
}

/// Runs every (connections, idle) configuration `--runs` times
/// (interleaved), prints each run, the summary and the issue-10 targets.
pub(super) fn run(
    args: &FanoutArgs,
    topics: Topics,
    pinion_exe: &Path,
    external: Option<HubAddrs>,
    machine: &str,
) -> Result<Vec<FanoutSummary>, LoadgenError> {
    let configs = args.configs();
    let (w, m) = args.scheduled();
    println!(
        "pinion bench fanout per topic: {} WebSocket subscribers on {} (subscriber i on t.<i % K>/) on {} thread{}; \
         {} msg/s paced, open loop (up to {} in flight on one SP REQ connection), each to a random topic (seed {}), \
         {} messages of {} B measured after {} warm-up; latencies from the scheduled send time; {} run{}; hub {}{}",
        args.connections
            .iter()
            .map(|n| thousands(*n as u64))
            .collect::<Vec<_>>()
            .join(" / "),
        match topics {
            Topics::All => "one topic each".to_string(),
            Topics::Count(k) => format!("{} topic{}", thousands(k as u64), if k == 1 { "" } else { "s" }),
        },
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        thousands(args.rate().round() as u64),
        args.inflight(),
        args.seed(),
        thousands(m as u64),
        args.size,
        thousands(w as u64),
        args.runs,
        if args.runs == 1 { "" } else { "s (medians)" },
        hub_text(args, pinion_exe, external),
        idle_text(args),
    );
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
        for (i, &(n, idle)) in configs.iter().enumerate() {
            let r = one_run(args, topics, pinion_exe, external, n, idle, run)?;
            println!("{}", run_line(&r, run, args.runs));
            summaries[i].runs.push(r);
            server::sleep_interruptible(Duration::from_secs(1))?;
        }
    }
    for s in &mut summaries {
        summarize(s, args);
    }
    print!("{}", summary_text(&summaries, args));
    if let Some(path) = &args.json {
        write_json(path, args, machine, &summaries)?;
        println!("JSON written to {}", path.display());
    }
    Ok(summaries)
}

fn one_run(
    args: &FanoutArgs,
    topics: Topics,
    pinion_exe: &Path,
    external: Option<HubAddrs>,
    n: usize,
    idle: usize,
    run: usize,
) -> Result<FanoutRun, LoadgenError> {
    check_interrupted()?;
    let k = topics.for_subscribers(n);
    let label = if args.runs > 1 {
        format!("{} {run}/{}", conn_label(n, idle), args.runs)
    } else {
        conn_label(n, idle)
    };
    let mut site = Site::start(args, pinion_exe, external)?;
    let addrs = site.addrs;
    let https = site.https();
    let hub_pid = site.leader_pid();
    site.check_fds(n, idle)?;
    let setup = |e: String| LoadgenError::Setup {
        target: "pinion",
        reason: e,
    };
    {
        // Warm up the publish path (nobody subscribes to this topic).
        let tag = format!("{:012x}", crate::rand_u64() & 0xffff_ffff_ffff);
        let mut publisher = Publisher::connect(addrs.publish).map_err(setup)?;
        publisher
            .publish(&format!("warmup-{tag}"), vec![b'w'; 16])
            .map_err(setup)?;
    }
    server::sleep_interruptible(Duration::from_millis(500))?;
    let base_mono = workers::mono_ns();
    let base = workers::instant_at(base_mono);
    let idle_clients = open_idle(args, addrs.http, n, idle, base, &label)?;
    let baseline = hub::metrics_sum(&https).map_err(setup)?;
    let rss0s = node_rss(&site);
    let rss0 = sum_opt(&rss0s);
    let slab0 = hub::slab_bytes();

    // The subscribers, each on its topic.
    let (warmup, measured) = args.scheduled();
    let total = warmup + measured;
    let schedule = Arc::new(Schedule::new(args.seed(), k, total));
    let bar = progress(args, n as u64, format!("connect {label}"));
    let plan = ClientPlan {
        http: addrs.http,
        target_offset: 0,
        target: Target::Topic(schedule.clone()),
        first_idx: 0,
        count: n,
        threads: args.threads.min(n),
        read: true,
        messages: total,
        phase_split: warmup,
        base,
        concurrency: args.connect_concurrency,
        key_seed: crate::rand_u64(),
    };
    let t_connect = Instant::now();
    let spec = TargetSpec::Topic {
        seed: args.seed(),
        k,
        messages: total,
    };
    let clients = open_subscribers(args, &site, pinion_exe, plan, spec, base_mono, &bar)?;
    wait_hub_count(&https, baseline.subscribers_ws + n as u64, true, n)?;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    bar.finish_and_clear();
    server::sleep_interruptible(Duration::from_secs(1))?;
    let rss1s = node_rss(&site);
    let rss1 = sum_opt(&rss1s);
    let pids = Pids {
        hubs: site.hub_pids(),
        bench: clients.pids(),
    };
    let slab1 = hub::slab_bytes();

    // Publish on schedule.
    let bar = progress(args, total as u64, format!("publish {label}"));
    let rate = args.rate();
    let lag = site.multi().then(|| nodes::LagSampler::start(&site.nodes));
    let out = paced::publish(
        &PacedPlan {
            addr: addrs.publish,
            schedule: &schedule,
            rate,
            warmup,
            size: args.size,
            inflight: args.inflight(),
            base,
            pids: &pids,
        },
        &bar,
    )
    .map_err(setup)?;
    if out.interrupted {
        return Err(LoadgenError::Interrupted);
    }
    if let Some(e) = &out.error {
        return Err(setup(e.clone()));
    }
    // Every ACKed message is due at every subscriber of its topic.
    let mut published_per_topic = vec![0u64; k];
    for (m, o) in out.offsets.iter().enumerate() {
        if o.is_some() {
            published_per_topic[schedule.topic_of[m] as usize] += 1;
        }
    }
    let due = |range: std::ops::Range<usize>| -> u64 {
        range
            .filter(|&m| out.offsets[m].is_some())
            .map(|m| subscribers_on(n, k, schedule.topic_of[m] as usize) as u64)
            .sum()
    };
    let expected_all = due(0..total);
    let expected = due(warmup..total);
    let until =
        out.last_reply.unwrap_or_else(Instant::now) + Duration::from_secs_f64(args.deliver_timeout);
    bar.set_message("waiting for the last deliveries");
    while clients.delivered() < expected_all && Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep(Duration::from_micros(200));
    }
    let cpu1 = Cpu::now(&pids);
    let lags = lag.map(nodes::LagSampler::finish).unwrap_or_default();
    bar.finish_and_clear();
    let rss2 = sum_opt(&node_rss(&site));
    let after = hub::metrics_sum(&https).ok();
    site.check_alive()?;

    // Close everything.
    let t_close = Instant::now();
    let worker_pids = clients.pids();
    let (outcome, per_assignment) = clients.finish();
    let close_secs = wait_hub_count(&https, baseline.subscribers_ws, false, n)
        .ok()
        .map(|_| t_close.elapsed().as_secs_f64());

    // What the subscribers got against what was due.
    let (mut missing, mut subscribers_missing) = (0u64, 0usize);
    let (mut duplicates, mut misrouted, mut out_of_order) = (0u64, 0u64, 0u64);
    for t in &outcome.topics {
        let due = published_per_topic[t.topic];
        let lacking = due.saturating_sub(u64::from(t.unique));
        missing += lacking;
        subscribers_missing += usize::from(lacking > 0);
        duplicates += u64::from(t.duplicates);
        misrouted += u64::from(t.misrouted);
        out_of_order += u64::from(t.out_of_order);
    }
    if outcome.topics.len() != n {
        // A subscriber thread failed: none of its subscribers counted.
        missing += expected_all;
    }
    let offset_mismatches = outcome
        .offsets
        .iter()
        .zip(&out.offsets)
        .filter(|(got, acked)| got.is_some() && *got != *acked)
        .count() as u64;
    let delivered_all: u64 = outcome.arrivals.iter().sum();
    let delivered: u64 = outcome.arrivals[warmup..].iter().sum();
    let published = out.acked_in(warmup..total);
    let since_base = |t: Instant| t.saturating_duration_since(base).as_secs_f64();
    let window_start = since_base(out.measured_start);
    let last_delivery = outcome.last_ns[warmup..]
        .iter()
        .zip(&outcome.arrivals[warmup..])
        .filter(|(_, &a)| a > 0)
        .map(|(&ns, _)| ns as f64 / 1e9)
        .fold(window_start, f64::max);
    // Over the window's time slots: on schedule, `published` messages take
    // `published / rate` seconds (plus the last one's latency).
    let per_sec = |count: f64, secs: f64| {
        let secs = secs + 1.0 / rate;
        if secs > 0.0 {
            count / secs
        } else {
            0.0
        }
    };
    let cpu = out
        .cpu0
        .as_ref()
        .map(|c0| cpu_between(c0, &cpu1))
        .unwrap_or_default();
    let per = |count: u64| {
        cpu.hub_secs
            .filter(|_| count > 0)
            .map(|s| s * 1e6 / count as f64)
    };
    let steady = Phase {
        messages: published,
        subscribers: n,
        delivered,
        expected,
        latency_us: Latency::from_hist(&outcome.hist[1]),
        ack_us: Latency::from_hist(&out.ack),
        hub_cpu_us_per_delivery: per(delivered),
        loadgen_cpu_us_per_delivery: cpu
            .me_secs
            .filter(|_| delivered > 0)
            .map(|s| s * 1e6 / delivered as f64),
        hub_cpu_pct: cpu.hub,
        loadgen_cpu_pct: cpu.me,
        other_cpu_pct: cpu.other,
        softirq_cpu_pct: cpu.softirq,
        ..Phase::default()
    };
    let late = out.late;
    let topics_run = TopicsRun {
        topics: k,
        rate,
        seed: args.seed(),
        inflight: args.inflight(),
        warmup_messages: warmup,
        scheduled: measured,
        sent: out.sent.saturating_sub(warmup),
        published,
        nacks: out.nacks.clone(),
        publishes_per_sec: per_sec(
            published as f64,
            out.last_reply.map(since_base).unwrap_or(0.0) - window_start,
        ),
        deliveries_per_sec: per_sec(delivered as f64, last_delivery - window_start),
        window_secs: cpu1
            .at
            .saturating_duration_since(out.measured_start)
            .as_secs_f64(),
        send_lag_us: Latency::from_hist(&out.lag),
        late_sends: late,
        behind_schedule: late * 100 > measured,
        hub_cpu_us_per_publish: per(published as u64),
        delivered_all,
        expected_all,
        missing,
        subscribers_missing,
        duplicates,
        misrouted,
        out_of_order,
        offset_mismatches,
        published_per_topic,
    };
    let node_figures = if site.multi() {
        let per_topic_due = &topics_run.published_per_topic;
        let due = |j: usize| -> (u64, u64) {
            let range = site.node_range(j, n);
            outcome
                .topics
                .get(range)
                .unwrap_or_default()
                .iter()
                .fold((0, 0), |(m, d), t| {
                    let want = per_topic_due.get(t.topic).copied().unwrap_or(0);
                    (
                        m + want.saturating_sub(u64::from(t.unique)),
                        d + u64::from(t.duplicates),
                    )
                })
        };
        node_runs(
            &site,
            n,
            &NodeInputs {
                rss0: &rss0s,
                rss1: &rss1s,
                cpu: &cpu,
                lags: &lags,
                per_assignment: &per_assignment,
                measured_share: if delivered_all > 0 {
                    delivered as f64 / delivered_all as f64
                } else {
                    0.0
                },
                due: &due,
            },
        )
    } else {
        Vec::new()
    };
    let bytes_per = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some((b? as f64 - a? as f64) / n as f64)
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
        hub_bytes_per_conn: bytes_per(rss0, rss1),
        slab_bytes_per_conn: bytes_per(slab0, slab1),
        steady,
        slow_disconnects: after.map(|m| m.slow_disconnects - baseline.slow_disconnects),
        missing,
        subscribers_missing,
        out_of_order,
        closed_by_hub: outcome.closed,
        dropped_by_hub: outcome.eof,
        errors: outcome.errors,
        close_secs,
        idle,
        per_topic: Some(topics_run),
        ..FanoutRun::default()
    };
    finish_idle(idle_clients, &mut r);
    site.check_alive()?;
    drop(site);
    Ok(r)
}

fn lat3(l: &Latency) -> String {
    format!("p50 {} p99 {} p99.9 {}", ms(l.p50), ms(l.p99), ms(l.p999))
}

fn run_line(r: &FanoutRun, run: usize, runs: usize) -> String {
    let t = r.per_topic.as_ref().expect("a per-topic run");
    let p = &r.steady;
    let mut s = format!(
        "{} subscribers on {} topic{}{}, run {run}/{runs}: connected in {:.1} s ({} conn/s); hub RSS {} per idle subscriber",
        thousands(r.connections as u64),
        thousands(t.topics as u64),
        if t.topics == 1 { "" } else { "s" },
        super::idle_note(r),
        r.connect_secs,
        thousands(r.connects_per_sec as u64),
        kib(r.hub_bytes_per_conn),
    );
    s.push_str(&format!(
        "\n    published {} of {} (+ {} warm-up) at {}/s scheduled, {}/s achieved; send lag p50 {} p99 {} max {}: {}",
        thousands(t.published as u64),
        thousands(t.scheduled as u64),
        thousands(t.warmup_messages as u64),
        thousands(t.rate.round() as u64),
        thousands(t.publishes_per_sec.round() as u64),
        ms(t.send_lag_us.p50),
        ms(t.send_lag_us.p99),
        ms(t.send_lag_us.max),
        if t.behind_schedule {
            format!(
                "BEHIND SCHEDULE ({} of {} sends more than {} ms late)",
                thousands(t.late_sends as u64),
                thousands(t.scheduled as u64),
                LATE.as_millis()
            )
        } else {
            format!(
                "on schedule ({} sends more than {} ms late)",
                t.late_sends,
                LATE.as_millis()
            )
        }
    ));
    s.push_str(&format!(
        "\n    delivered {} of {} ({}/s); publish→deliver {} max {}; publish→ack {} (from the scheduled send time)",
        thousands(p.delivered),
        thousands(p.expected),
        thousands(t.deliveries_per_sec.round() as u64),
        lat3(&p.latency_us),
        ms(p.latency_us.max),
        lat3(&p.ack_us),
    ));
    let us = |x: Option<f64>| {
        x.map(|u| format!("{u:.1} µs"))
            .unwrap_or_else(|| "?".into())
    };
    s.push_str(&format!(
        "\n    CPU over {:.1} s: hub {} ({} per publish, {} per delivery), bench {} ({} per delivery), softirq {}, other processes {}",
        t.window_secs,
        pct(p.hub_cpu_pct),
        us(t.hub_cpu_us_per_publish),
        us(p.hub_cpu_us_per_delivery),
        pct(p.loadgen_cpu_pct),
        us(p.loadgen_cpu_us_per_delivery),
        pct(p.softirq_cpu_pct),
        pct(p.other_cpu_pct),
    ));
    if r.complete() {
        s.push_str(&format!(
            "\n    every subscriber got exactly its topic's messages, once each, in order ({} deliveries, warm-up included)",
            thousands(t.delivered_all)
        ));
    } else {
        s.push_str(&format!(
            "\n    INCOMPLETE: {} deliveries missing at {} subscribers, {} duplicates, {} misrouted, {} out of order, \
             {} offsets not as ACKed ({} of {} due received, warm-up included); NACKs: {:?}; closed by the hub: {:?}; dropped: {}; errors: {:?}{}",
            thousands(t.missing),
            thousands(t.subscribers_missing as u64),
            t.duplicates,
            t.misrouted,
            t.out_of_order,
            t.offset_mismatches,
            thousands(t.delivered_all),
            thousands(t.expected_all),
            t.nacks,
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
            "\n    CONTENDED: other processes used {} of a core during the measurement",
            pct(p.other_cpu_pct)
        ));
    }
    s.push_str(&super::nodes_text(r));
    s
}

fn summarize(s: &mut FanoutSummary, args: &FanoutArgs) {
    super::summarize(s);
    let runs = median_runs(&s.runs, FanoutRun::contended);
    let ts: Vec<&TopicsRun> = runs.iter().filter_map(|r| r.per_topic.as_ref()).collect();
    let all: Vec<&TopicsRun> = s.runs.iter().filter_map(|r| r.per_topic.as_ref()).collect();
    let m = |f: &dyn Fn(&TopicsRun) -> f64| median(ts.iter().map(|t| f(t)).collect());
    let opt = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    s.per_topic = Some(TopicsSummary {
        topics: args
            .topics
            .map(|t| t.for_subscribers(s.connections))
            .unwrap_or(0),
        rate: args.rate(),
        publishes_per_sec: m(&|t| t.publishes_per_sec),
        deliveries_per_sec: m(&|t| t.deliveries_per_sec),
        ack_us: Latency::median_of(runs.iter().map(|r| &r.steady.ack_us)),
        send_lag_p99_us: m(&|t| t.send_lag_us.p99),
        hub_cpu_us_per_publish: opt(ts.iter().filter_map(|t| t.hub_cpu_us_per_publish).collect()),
        hub_cpu_pct: opt(runs.iter().filter_map(|r| r.steady.hub_cpu_pct).collect()),
        duplicates: all.iter().map(|t| t.duplicates).sum(),
        misrouted: all.iter().map(|t| t.misrouted).sum(),
        out_of_order: all.iter().map(|t| t.out_of_order).sum(),
        offset_mismatches: all.iter().map(|t| t.offset_mismatches).sum(),
        behind_schedule_runs: all.iter().filter(|t| t.behind_schedule).count(),
        incomplete_runs: s.runs.iter().filter(|r| !r.complete()).count(),
    });
}

/// "1,000 on 1,000 topics" / "10 on 1 topic + 15,000 idle".
fn label(s: &FanoutSummary) -> String {
    let k = s.per_topic.as_ref().map_or(0, |t| t.topics);
    format!(
        "{} on {} topic{}{}",
        thousands(s.connections as u64),
        thousands(k as u64),
        if k == 1 { "" } else { "s" },
        if s.idle > 0 {
            format!(" + {} idle", thousands(s.idle as u64))
        } else {
            String::new()
        }
    )
}

fn summary_text(ss: &[FanoutSummary], args: &FanoutArgs) -> String {
    let mut o = String::new();
    let medians = if args.runs > 1 {
        format!("medians of {} runs", args.runs)
    } else {
        "1 run".to_string()
    };
    o.push_str(&format!("\n## fan-out per topic summary ({medians})\n"));
    let first = &ss[0];
    let t0 = first.per_topic.clone().unwrap_or_default();
    let us = |x: Option<f64>| {
        x.map(|u| format!("{u:.1} µs"))
            .unwrap_or_else(|| "?".into())
    };
    if ss.len() > 1 {
        o.push_str(&format!(
            "\n### Ratios (against {})\n\n| subscribers | publish→deliver p99 ÷ | p50 ÷ | publish→ack p99 ÷ | p50 ÷ | hub CPU per publish ÷ | hub CPU per delivery ÷ |\n|---|---:|---:|---:|---:|---:|---:|\n",
            label(first)
        ));
        for s in &ss[1..] {
            let t = s.per_topic.clone().unwrap_or_default();
            o.push_str(&format!(
                "| {} | **{}** | {} | **{}** | {} | **{}** | {} |\n",
                label(s),
                ratio(s.latency_us.p99, first.latency_us.p99),
                ratio(s.latency_us.p50, first.latency_us.p50),
                ratio(t.ack_us.p99, t0.ack_us.p99),
                ratio(t.ack_us.p50, t0.ack_us.p50),
                ratio(
                    t.hub_cpu_us_per_publish.unwrap_or(0.0),
                    t0.hub_cpu_us_per_publish.unwrap_or(0.0)
                ),
                ratio(
                    s.hub_cpu_us_per_delivery.unwrap_or(0.0),
                    first.hub_cpu_us_per_delivery.unwrap_or(0.0)
                ),
            ));
        }
    }
    o.push_str(
        "\n### Figures\n\n| subscribers | publishes/s (scheduled / achieved) | deliveries/s | publish→deliver p50 | p99 | p99.9 | publish→ack p50 | p99 | send lag p99 | hub CPU | hub CPU per publish | per delivery | hub memory per subscriber | missing | duplicates | misrouted |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in ss {
        let t = s.per_topic.clone().unwrap_or_default();
        o.push_str(&format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            label(s),
            thousands(t.rate.round() as u64),
            thousands(t.publishes_per_sec.round() as u64),
            thousands(t.deliveries_per_sec.round() as u64),
            ms(s.latency_us.p50),
            ms(s.latency_us.p99),
            ms(s.latency_us.p999),
            ms(t.ack_us.p50),
            ms(t.ack_us.p99),
            ms(t.send_lag_p99_us),
            pct(t.hub_cpu_pct),
            us(t.hub_cpu_us_per_publish),
            us(s.hub_cpu_us_per_delivery),
            kib(s.hub_bytes_per_conn),
            thousands(s.missing),
            thousands(t.duplicates),
            thousands(t.misrouted),
        ));
    }
    if args.nodes.is_some() {
        o.push_str(&super::cluster_targets_text(ss));
    } else {
        o.push_str(&targets_text(ss));
    }
    let runs = || ss.iter().flat_map(|s| &s.runs);
    let behind = runs()
        .filter(|r| r.per_topic.as_ref().is_some_and(|t| t.behind_schedule))
        .count();
    if behind > 0 {
        o.push_str(&format!(
            "\nwarning: in {behind} run(s) the publisher fell behind schedule (more than 1% of sends over {} ms late); \
             latencies are measured from the schedule, so they include the wait.\n",
            LATE.as_millis()
        ));
    }
    let contended = runs().filter(|r| r.contended()).count();
    if contended > 0 {
        o.push_str(&format!(
            "\nwarning: {contended} run(s) were contended (other processes used > {CONTENDED_PCT}% of a core); \
             they are left out of the medians when clean runs exist. Rerun on an idle machine.\n"
        ));
    }
    let failed: usize = ss.iter().map(FanoutSummary::per_topic_failures).sum();
    if failed > 0 {
        o.push_str(&format!(
            "\nERROR: {failed} run(s) INCOMPLETE: missing, duplicate, misrouted or out-of-order deliveries, NACKs, \
             or subscribers closed (see the runs above); their figures are not valid.\n"
        ));
    }
    o
}

/// The issue-10 targets, judged only where measured.
fn targets_text(ss: &[FanoutSummary]) -> String {
    let mut o = String::from(
        "\n### Targets (issue 10)\n\n| target | measured | verdict |\n|---|---|---|\n",
    );
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let topics = |s: &FanoutSummary| s.per_topic.as_ref().map_or(0, |t| t.topics);
    let rate = |s: &FanoutSummary| s.per_topic.as_ref().map_or(0.0, |t| t.rate);
    let clean = |s: &FanoutSummary| s.per_topic_failures() == 0;
    let ack99 = |s: &FanoutSummary| s.per_topic.as_ref().map_or(0.0, |t| t.ack_us.p99);

    // 1. Distinct topics: 19,000 subscribers vs 1,000, at 2,000 publishes/s.
    let distinct: Vec<&FanoutSummary> = ss.iter().filter(|s| topics(s) == s.connections).collect();
    let base = distinct.iter().find(|s| s.connections == 1_000);
    let base_idle = base.map_or(0, |b| b.idle);
    let big = distinct
        .iter()
        .find(|s| s.connections == 19_000 && s.idle == base_idle);
    let largest = distinct
        .iter()
        .filter(|s| s.idle == base_idle)
        .max_by_key(|s| s.connections);
    let t1 = "per topic, 19,000 subscribers on distinct topics vs 1,000, at 2,000 publishes/s";
    match (base, big) {
        (Some(a), Some(b)) => {
            let rd = b.latency_us.p99 / a.latency_us.p99;
            let ra = ack99(b) / ack99(a);
            let at_rate = rate(a) == 2_000.0 && rate(b) == 2_000.0;
            let ok = clean(a) && clean(b);
            let why = if !ok {
                " (runs with missing or duplicate deliveries)"
            } else {
                ""
            };
            for (what, r, x, y) in [
                ("publish→deliver p99", rd, b.latency_us.p99, a.latency_us.p99),
                ("publish→ack p99", ra, ack99(b), ack99(a)),
            ] {
                let v = if !at_rate {
                    format!(
                        "not measured (run at {}/s)",
                        thousands(rate(a).round() as u64)
                    )
                } else if !ok {
                    format!("{}{why}", verdict(false))
                } else {
                    verdict(r.is_finite() && r <= 1.3).to_string()
                };
                o.push_str(&format!(
                    "| {t1}: {what} ≤ 1.3× | {} ÷ {} = {r:.2}× | {v} |\n",
                    ms(x),
                    ms(y)
                ));
            }
        }
        (Some(a), None) => match largest.filter(|l| l.connections > a.connections) {
            Some(l) => o.push_str(&format!(
                "| {t1}: p99 ≤ 1.3× | 19,000 not run; at {}: publish→deliver p99 {:.2}×, publish→ack p99 {:.2}× | not measured |\n",
                thousands(l.connections as u64),
                l.latency_us.p99 / a.latency_us.p99,
                ack99(l) / ack99(a)
            )),
            None => o.push_str(&format!(
                "| {t1}: p99 ≤ 1.3× | needs --connections 1000,19000 --topics all --rate 2000 | not measured |\n"
            )),
        },
        _ => o.push_str(&format!(
            "| {t1}: p99 ≤ 1.3× | needs --connections 1000,19000 --topics all --rate 2000 | not measured |\n"
        )),
    }

    // 2. Hub CPU per publish: 10 subscribers on one topic, + 15,000 idle vs + 0.
    let t2 = "hub CPU per publish, 10 subscribers on one topic + 15,000 idle on other topics vs + 0 idle, ≤ 1.2×";
    let hot: Vec<&FanoutSummary> = ss
        .iter()
        .filter(|s| topics(s) == 1 && s.connections == 10)
        .collect();
    let cpu = |s: &FanoutSummary| s.per_topic.as_ref().and_then(|t| t.hub_cpu_us_per_publish);
    let none = hot.iter().find(|s| s.idle == 0);
    let with = hot.iter().find(|s| s.idle == 15_000);
    let other = hot.iter().filter(|s| s.idle > 0).max_by_key(|s| s.idle);
    match (none, with) {
        (Some(a), Some(b)) => match (cpu(a), cpu(b)) {
            (Some(x), Some(y)) => {
                let r = y / x;
                let v = if clean(a) && clean(b) {
                    verdict(r <= 1.2).to_string()
                } else {
                    format!(
                        "{} (runs with missing or duplicate deliveries)",
                        verdict(false)
                    )
                };
                o.push_str(&format!(
                    "| {t2} | {y:.1} µs ÷ {x:.1} µs = {r:.2}× (at {}/s) | {v} |\n",
                    thousands(rate(a).round() as u64)
                ));
            }
            _ => o.push_str(&format!(
                "| {t2} | hub CPU not read (no hub PID: pass --hub-pid) | not measured |\n"
            )),
        },
        (Some(a), None) => match (other, cpu(a)) {
            (Some(b), Some(x)) if cpu(b).is_some() => o.push_str(&format!(
                "| {t2} | 15,000 idle not run; with {} idle: {:.2}× | not measured |\n",
                thousands(b.idle as u64),
                cpu(b).unwrap_or(0.0) / x
            )),
            _ => o.push_str(&format!(
                "| {t2} | needs --connections 10 --topics 1 --idle 0,15000 | not measured |\n"
            )),
        },
        _ => o.push_str(&format!(
            "| {t2} | needs --connections 10 --topics 1 --idle 0,15000 | not measured |\n"
        )),
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(n: usize, k: usize, idle: usize, rate: f64, p99: f64, ack99: f64) -> FanoutSummary {
        FanoutSummary {
            connections: n,
            idle,
            latency_us: Latency {
                p99,
                ..Latency::default()
            },
            per_topic: Some(TopicsSummary {
                topics: k,
                rate,
                ack_us: Latency {
                    p99: ack99,
                    ..Latency::default()
                },
                ..TopicsSummary::default()
            }),
            ..FanoutSummary::default()
        }
    }

    fn with_cpu(mut s: FanoutSummary, us: Option<f64>) -> FanoutSummary {
        s.per_topic.as_mut().unwrap().hub_cpu_us_per_publish = us;
        s
    }

    #[test]
    fn targets_are_judged_only_where_measured() {
        // Nothing relevant run.
        let t = targets_text(&[summary(50, 10, 0, 200.0, 1000.0, 1000.0)]);
        assert!(!t.contains("**met**") && !t.contains("**not met**"), "{t}");
        assert_eq!(t.matches("not measured").count(), 2, "{t}");

        // Target 1 met and not met.
        let t = targets_text(&[
            summary(1000, 1000, 0, 2000.0, 10_000.0, 2_000.0),
            summary(19_000, 19_000, 0, 2000.0, 12_000.0, 3_000.0),
        ]);
        assert!(
            t.contains("publish→deliver p99 ≤ 1.3× | 12 ms ÷ 10 ms = 1.20× | **met**"),
            "{t}"
        );
        assert!(
            t.contains("publish→ack p99 ≤ 1.3× | 3.00 ms ÷ 2.00 ms = 1.50× | **not met**"),
            "{t}"
        );
        // At another rate: shown, not judged.
        let t = targets_text(&[
            summary(1000, 1000, 0, 500.0, 10_000.0, 2_000.0),
            summary(19_000, 19_000, 0, 500.0, 12_000.0, 2_000.0),
        ]);
        assert!(t.contains("1.20× | not measured (run at 500/s)"), "{t}");
        assert!(!t.contains("**met**"), "{t}");
        // 19,000 not run, a smaller scale was.
        let t = targets_text(&[
            summary(1000, 1000, 0, 2000.0, 10_000.0, 2_000.0),
            summary(5000, 5000, 0, 2000.0, 20_000.0, 2_000.0),
        ]);
        assert!(
            t.contains("19,000 not run; at 5,000: publish→deliver p99 2.00×"),
            "{t}"
        );
        assert!(!t.contains("**met**") && !t.contains("**not met**"), "{t}");
        // Not distinct topics: not the target.
        let t = targets_text(&[
            summary(1000, 10, 0, 2000.0, 10_000.0, 2_000.0),
            summary(19_000, 10, 0, 2000.0, 10_000.0, 2_000.0),
        ]);
        assert!(!t.contains("**met**"), "{t}");

        // Target 2.
        let t = targets_text(&[
            with_cpu(summary(10, 1, 0, 2000.0, 1.0, 1.0), Some(20.0)),
            with_cpu(summary(10, 1, 15_000, 2000.0, 1.0, 1.0), Some(23.0)),
        ]);
        assert!(
            t.contains("23.0 µs ÷ 20.0 µs = 1.15× (at 2,000/s) | **met**"),
            "{t}"
        );
        let t = targets_text(&[
            with_cpu(summary(10, 1, 0, 2000.0, 1.0, 1.0), Some(20.0)),
            with_cpu(summary(10, 1, 15_000, 2000.0, 1.0, 1.0), Some(60.0)),
        ]);
        assert!(t.contains("= 3.00× (at 2,000/s) | **not met**"), "{t}");
        let t = targets_text(&[
            with_cpu(summary(10, 1, 0, 2000.0, 1.0, 1.0), Some(20.0)),
            with_cpu(summary(10, 1, 5_000, 2000.0, 1.0, 1.0), Some(30.0)),
        ]);
        assert!(
            t.contains("15,000 idle not run; with 5,000 idle: 1.50× | not measured"),
            "{t}"
        );
        let t = targets_text(&[
            with_cpu(summary(10, 1, 0, 2000.0, 1.0, 1.0), None),
            with_cpu(summary(10, 1, 15_000, 2000.0, 1.0, 1.0), None),
        ]);
        assert!(t.contains("hub CPU not read"), "{t}");
        assert!(!t.contains("**met**"), "{t}");
    }

    #[test]
    fn incomplete_runs_never_meet_a_target() {
        let bad = |mut s: FanoutSummary| {
            s.runs.push(FanoutRun {
                per_topic: Some(TopicsRun {
                    scheduled: 10,
                    sent: 10,
                    published: 10,
                    missing: 3,
                    ..TopicsRun::default()
                }),
                missing: 3,
                ..FanoutRun::default()
            });
            s
        };
        let t = targets_text(&[
            with_cpu(summary(10, 1, 0, 2000.0, 1.0, 1.0), Some(20.0)),
            bad(with_cpu(
                summary(10, 1, 15_000, 2000.0, 1.0, 1.0),
                Some(20.0),
            )),
        ]);
        assert!(
            t.contains("1.00× (at 2,000/s) | **not met** (runs with missing"),
            "{t}"
        );
        assert!(!t.contains("**met**"), "{t}");
    }

    #[test]
    fn completeness() {
        let ok = TopicsRun {
            scheduled: 10,
            sent: 10,
            published: 10,
            delivered_all: 30,
            expected_all: 30,
            ..TopicsRun::default()
        };
        assert!(ok.complete());
        for broken in [
            TopicsRun {
                duplicates: 1,
                ..ok.clone()
            },
            TopicsRun {
                misrouted: 1,
                ..ok.clone()
            },
            TopicsRun {
                missing: 1,
                ..ok.clone()
            },
            TopicsRun {
                out_of_order: 1,
                ..ok.clone()
            },
            TopicsRun {
                offset_mismatches: 1,
                ..ok.clone()
            },
            TopicsRun {
                published: 9,
                ..ok.clone()
            },
            TopicsRun {
                delivered_all: 31,
                ..ok.clone()
            },
            TopicsRun {
                nacks: [("publish: NACK UNAVAILABLE".to_string(), 1)].into(),
                ..ok.clone()
            },
        ] {
            assert!(!broken.complete(), "{broken:?}");
            let r = FanoutRun {
                per_topic: Some(broken),
                ..FanoutRun::default()
            };
            assert!(!r.complete());
            let s = FanoutSummary {
                runs: vec![r],
                ..FanoutSummary::default()
            };
            assert_eq!(s.per_topic_failures(), 1);
        }
        let s = FanoutSummary {
            runs: vec![FanoutRun {
                per_topic: Some(ok),
                ..FanoutRun::default()
            }],
            ..FanoutSummary::default()
        };
        assert_eq!(s.per_topic_failures(), 0);
    }
}
