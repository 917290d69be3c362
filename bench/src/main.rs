//! `pinion-bench`: pinion side by side with NNG (system libnng through the `nng`
//! crate) and a plain tokio TCP floor, over tcp://127.0.0.1, measured the way
//! NNG's perf tools do (`local_thr`/`remote_thr`, `local_lat`/`remote_lat`).
//!
//! Both ends of every measurement run inside this one process (two threads or
//! two tasks). See `docs/BENCHMARKS.md` for the method and the figures.
// Every `unsafe` block here (libc calls for the harness) says why it is
// sound in a `// SAFETY:` note.
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "pinion")]
mod accept;
mod common;
mod fanout;
mod nng_impl;
mod pinion_impl;
mod tokio_impl;
mod trie;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use common::{median, with_watchdog, LatProto, LatSample, ThrSample};
use pinion_impl::PinionApi;
use tokio_impl::TokioRt;

#[derive(Parser, Debug)]
#[command(
    name = "pinion-bench",
    about = "pinion vs NNG vs plain tokio TCP over tcp://127.0.0.1 (throughput and latency)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// `thr`/`lat`: where the two sides of the tokio floor run: `split` = one
    /// current-thread runtime per side on its own OS thread; `shared` = both
    /// tasks on one 2-worker multi-threaded runtime. `all` measures both.
    #[arg(long, global = true, value_enum, default_value_t = TokioRt::Split)]
    tokio_rt: TokioRt,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// push/pull throughput: the receiver times `count` messages after a 0-byte sync message.
    Thr {
        #[arg(long = "impl", value_enum, default_value_t = ImplArg::All)]
        imp: ImplArg,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages to time; calibrated to about --secs seconds per run when omitted.
        #[arg(long)]
        count: Option<u64>,
        /// Target duration of one run when --count is omitted.
        #[arg(long, default_value_t = 1.5)]
        secs: f64,
        /// Runs per implementation; the median is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Ping-pong latency: one-way = total time / (roundtrips * 2).
    Lat {
        #[arg(long = "impl", value_enum, default_value_t = ImplArg::All)]
        imp: ImplArg,
        #[arg(long, value_enum, default_value_t = LatProto::Pair1)]
        proto: LatProto,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Timed round trips; calibrated to about --secs seconds per run when omitted.
        #[arg(long)]
        roundtrips: Option<u64>,
        /// Target duration of one run when --roundtrips is omitted.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        /// Runs per implementation; the median is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// SUB matching cost with 10, 1,000 and 10,000 subscriptions: the sub0
    /// trie against a linear scan (NNG 1.x's approach), same topics.
    Trie {
        /// Messages matched per measurement.
        #[arg(long, default_value_t = 200_000)]
        msgs: usize,
        /// Runs per size; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Accepted-connection placement: hand-off (default) vs SO_REUSEPORT.
    Accept {
        /// Client connections.
        #[arg(long, default_value_t = 256)]
        conns: usize,
        /// 64-byte messages each client sends after connecting.
        #[arg(long, default_value_t = 2000)]
        msgs: usize,
        /// Runs per mode; medians are reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Every figure for every implementation, R runs each, medians, as a markdown table.
    All {
        /// Runs per figure and implementation (R); the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Target duration of one throughput run.
        #[arg(long, default_value_t = 1.5)]
        thr_secs: f64,
        /// Target duration of one latency run.
        #[arg(long, default_value_t = 1.0)]
        lat_secs: f64,
        /// Also write the markdown report to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// pub/sub fan-out to 1, 10 and 100 subscribers and survey rounds to 100
    /// respondents, pinion (async API) vs NNG, R interleaved runs, medians.
    Fanout(fanout::FanoutArgs),
    /// pinion over tls+tcp:// next to tcp://: push/pull throughput (64 B,
    /// 1 KiB, 16 KiB) and req/rep latency (64 B), async API on two cores,
    /// R interleaved runs, medians, ratios first.
    Tls {
        /// Runs per figure (interleaved: tcp, tls, tcp, tls, ...).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Target duration of one throughput run.
        #[arg(long, default_value_t = 1.5)]
        thr_secs: f64,
        /// Target duration of one latency run.
        #[arg(long, default_value_t = 1.0)]
        lat_secs: f64,
        /// Throughput payload sizes in bytes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "64,1024,16384")]
        sizes: Vec<usize>,
        /// Skip the latency figures.
        #[arg(long)]
        no_lat: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ImplArg {
    Nng,
    Tokio,
    /// pinion's blocking API from two plain threads.
    Pinion,
    /// pinion's async API, both sides as tasks on pinion's cores.
    PinionAsync,
    /// pinion's async API, both sides as tasks on one pinion core.
    Pinion1core,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Nng,
    Tokio(TokioRt),
    Pinion(PinionApi),
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Nng => "NNG",
            Impl::Tokio(TokioRt::Split) => "tokio-split",
            Impl::Tokio(TokioRt::Shared) => "tokio-shared",
            Impl::Pinion(PinionApi::Blocking) => "pinion",
            Impl::Pinion(PinionApi::Async) => "pinion-async",
            Impl::Pinion(PinionApi::OneCore) => "pinion-1core",
        }
    }
    fn is_tokio(self) -> bool {
        matches!(self, Impl::Tokio(_))
    }
}

impl ImplArg {
    fn impls(self, rt: TokioRt) -> Vec<Impl> {
        match self {
            ImplArg::Nng => vec![Impl::Nng],
            ImplArg::Tokio => vec![Impl::Tokio(rt)],
            ImplArg::Pinion => vec![Impl::Pinion(PinionApi::Blocking)],
            ImplArg::PinionAsync => vec![Impl::Pinion(PinionApi::Async)],
            ImplArg::Pinion1core => vec![Impl::Pinion(PinionApi::OneCore)],
            ImplArg::All => vec![
                Impl::Nng,
                Impl::Tokio(rt),
                Impl::Pinion(PinionApi::Blocking),
                Impl::Pinion(PinionApi::Async),
                Impl::Pinion(PinionApi::OneCore),
            ],
        }
    }
}

/// What `all` measures: NNG, the tokio floor in both placements, pinion
/// through both of its APIs.
const ALL_IMPLS: [Impl; 6] = [
    Impl::Nng,
    Impl::Tokio(TokioRt::Split),
    Impl::Tokio(TokioRt::Shared),
    Impl::Pinion(PinionApi::Blocking),
    Impl::Pinion(PinionApi::Async),
    Impl::Pinion(PinionApi::OneCore),
];

const PINION_APIS: [PinionApi; 3] = [PinionApi::Blocking, PinionApi::Async, PinionApi::OneCore];

/// The tokio placement with the same thread layout as a pinion variant: two
/// threads that must wake each other (`split`), or one event loop serving
/// both ends (`shared`, when its scheduler keeps both tasks on one worker).
fn matching_tokio(api: PinionApi) -> Impl {
    match api {
        PinionApi::Blocking | PinionApi::Async => Impl::Tokio(TokioRt::Split),
        PinionApi::OneCore => Impl::Tokio(TokioRt::Shared),
    }
}

// ---------------------------------------------------------------------------
// Dispatch: one function per figure, same shape for every implementation.

fn run_thr(imp: Impl, size: usize, count: u64) -> Result<ThrSample> {
    with_watchdog(
        format!("{} throughput {size} B x {count}", imp.name()),
        move || match imp {
            Impl::Nng => nng_impl::throughput(size, count),
            Impl::Tokio(rt) => tokio_impl::throughput(rt, size, count),
            Impl::Pinion(api) => pinion_impl::throughput(api, size, count),
        },
    )
}

fn run_lat(imp: Impl, proto: LatProto, size: usize, roundtrips: u64) -> Result<LatSample> {
    with_watchdog(
        format!(
            "{} latency {} {size} B x {roundtrips}",
            imp.name(),
            proto.label()
        ),
        move || match imp {
            Impl::Nng => nng_impl::latency(proto, size, roundtrips),
            Impl::Tokio(rt) => tokio_impl::latency(rt, size, roundtrips),
            Impl::Pinion(api) => pinion_impl::latency(api, proto, size, roundtrips),
        },
    )
}

fn available(imp: Impl) -> Result<()> {
    match imp {
        Impl::Pinion(_) => pinion_impl::available(),
        Impl::Nng | Impl::Tokio(_) => Ok(()),
    }
}

const MAX_COUNT: u64 = 100_000_000;

/// Pilot runs (which double as warm-up) until one lasts at least 0.2 s, then
/// scales the count so that a run lasts about `target_secs`.
fn calibrate_thr(imp: Impl, size: usize, target_secs: f64) -> Result<u64> {
    let mut count: u64 = if size >= 16 * 1024 { 1_000 } else { 10_000 };
    loop {
        let s = run_thr(imp, size, count)?;
        let secs = s.elapsed.as_secs_f64();
        if secs >= 0.2 || count >= MAX_COUNT {
            return Ok(((s.msgs_per_sec() * target_secs) as u64).clamp(1_000, MAX_COUNT));
        }
        count = ((count as f64) * 0.3 / secs.max(1e-4)).max(count as f64 * 2.0) as u64;
    }
}

fn calibrate_lat(imp: Impl, proto: LatProto, size: usize, target_secs: f64) -> Result<u64> {
    let mut rts: u64 = 1_000;
    loop {
        let s = run_lat(imp, proto, size, rts)?;
        let secs = s.total.as_secs_f64();
        if secs >= 0.1 || rts >= MAX_COUNT {
            let per_rt = secs / rts as f64;
            return Ok(((target_secs / per_rt) as u64).clamp(1_000, MAX_COUNT));
        }
        rts = ((rts as f64) * 0.15 / secs.max(1e-4)).max(rts as f64 * 2.0) as u64;
    }
}

// ---------------------------------------------------------------------------
// Summaries (medians over R runs).

struct ThrSummary {
    imp: Impl,
    size: usize,
    count: u64,
    runs: Vec<ThrSample>,
}

impl ThrSummary {
    fn msgs(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|s| s.msgs_per_sec())
                .collect::<Vec<_>>(),
        )
    }
    fn gbit(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.gbit()).collect::<Vec<_>>())
    }
    fn mbit_nng(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.mbit_nng()).collect::<Vec<_>>())
    }
    fn range(&self) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|s| s.msgs_per_sec()).collect();
        (
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    }
}

struct LatSummary {
    imp: Impl,
    /// `None` for the tokio floor, which has no SP protocol.
    proto: Option<LatProto>,
    roundtrips: u64,
    runs: Vec<LatSample>,
}

impl LatSummary {
    fn mean(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|s| s.mean_oneway_us())
                .collect::<Vec<_>>(),
        )
    }
    fn q(&self, q: f64) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|s| s.oneway_quantile_us(q))
                .collect::<Vec<_>>(),
        )
    }
    fn range(&self) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|s| s.mean_oneway_us()).collect();
        (
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    }
}

fn print_thr(s: &ThrSample, imp: Impl) {
    println!(
        "{:<12} thr  size {:>6} B  count {:>9}  {:>8.3} s  {:>12.0} msg/s  {:>10.1} Mbit/s (NNG: /2^20)  {:>7.3} Gbit/s",
        imp.name(),
        s.size,
        s.count,
        s.elapsed.as_secs_f64(),
        s.msgs_per_sec(),
        s.mbit_nng(),
        s.gbit()
    );
}

fn print_lat(s: &LatSample, imp: Impl, proto: LatProto, size: usize) {
    println!(
        "{:<12} lat  {:<7} size {:>6} B  roundtrips {:>8}  one-way mean {:>8.2} us  p50 {:>8.2} us  p99 {:>8.2} us",
        imp.name(),
        if imp.is_tokio() { "(tcp)" } else { proto.label() },
        size,
        s.roundtrips,
        s.mean_oneway_us(),
        s.oneway_quantile_us(0.5),
        s.oneway_quantile_us(0.99)
    );
}

fn skip_unavailable(impls: Vec<Impl>) -> Vec<Impl> {
    impls
        .into_iter()
        .filter(|&imp| match available(imp) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipping {}: {e:#}", imp.name());
                false
            }
        })
        .collect()
}

#[cfg(feature = "pinion")]
fn accept_cmd(conns: usize, msgs: usize, repeat: usize) -> Result<()> {
    println!("| mode | conns | connect (ms, median) | pipes per core (each run) | max-min (worst) | msg/s (median) |");
    println!("|---|---|---|---|---|---|");
    for reuseport in [false, true] {
        let mut samples = Vec::new();
        for _ in 0..repeat {
            samples.push(accept::run(reuseport, conns, msgs)?);
        }
        let mut c: Vec<f64> = samples.iter().map(|s| s.connect_secs * 1e3).collect();
        let mut t: Vec<f64> = samples.iter().map(|s| s.msgs_per_sec).collect();
        c.sort_by(f64::total_cmp);
        t.sort_by(f64::total_cmp);
        let spread: Vec<String> = samples.iter().map(|s| format!("{:?}", s.loads)).collect();
        let worst = samples
            .iter()
            .map(|s| s.loads.iter().max().unwrap_or(&0) - s.loads.iter().min().unwrap_or(&0))
            .max()
            .unwrap_or(0);
        println!(
            "| {} | {conns} | {:.1} | {} | {worst} | {:.0} |",
            if reuseport {
                "SO_REUSEPORT"
            } else {
                "hand-off"
            },
            c[c.len() / 2],
            spread.join(" "),
            t[t.len() / 2]
        );
    }
    Ok(())
}

/// `tls`: tcp:// and tls+tcp:// interleaved, medians, ratios first.
#[cfg(feature = "pinion")]
fn tls_cmd(repeat: usize, thr_secs: f64, lat_secs: Option<f64>, sizes: &[usize]) -> Result<()> {
    let tls = pinion_impl::Tls::new()?;
    let over = |t: bool| if t { Some(&tls) } else { None };
    let label = |t: bool| if t { "tls+tcp" } else { "tcp" };
    let started = std::time::Instant::now();
    let load_before = loadavg();
    let mut rows = Vec::new();
    for &size in sizes {
        // Calibrate on plain TCP (and warm both up), then use one count for
        // both, so the two time the same work.
        let mut count: u64 = if size >= 16 * 1024 { 2_000 } else { 20_000 };
        loop {
            let s = pinion_impl::throughput_over(size, count, None)?;
            let secs = s.elapsed.as_secs_f64();
            if secs >= 0.2 {
                count = ((s.msgs_per_sec() * thr_secs) as u64).clamp(1_000, MAX_COUNT);
                break;
            }
            count = count.saturating_mul(4);
        }
        pinion_impl::throughput_over(size, count / 10, Some(&tls))?;
        let mut per = [Vec::new(), Vec::new()];
        for _ in 0..repeat {
            for t in [false, true] {
                let s = pinion_impl::throughput_over(size, count, over(t))?;
                eprintln!("thr {} {size} B: {:.0} msg/s", label(t), s.msgs_per_sec());
                per[usize::from(t)].push(s.msgs_per_sec());
            }
        }
        let (plain, tls_m) = (median(&per[0]), median(&per[1]));
        rows.push((
            format!(
                "push/pull throughput {} (msg/s; higher is better)",
                size_label(size)
            ),
            tls_m / plain,
            format!("{plain:.0}"),
            format!("{tls_m:.0}"),
        ));
    }
    let mut rts: u64 = 2_000;
    while let Some(lat_secs) = lat_secs {
        let s = pinion_impl::latency_over(64, rts, None)?;
        let secs = s.total.as_secs_f64();
        if secs >= 0.1 {
            rts = ((lat_secs / (secs / rts as f64)) as u64).clamp(1_000, MAX_COUNT);
            break;
        }
        rts = rts.saturating_mul(4);
    }
    if lat_secs.is_some() {
        lat_rows(&tls, rts, repeat, &mut rows)?;
    }
    print_tls_report(repeat, &load_before, started, rows);
    Ok(())
}

#[cfg(feature = "pinion")]
fn lat_rows(
    tls: &pinion_impl::Tls,
    rts: u64,
    repeat: usize,
    rows: &mut Vec<(String, f64, String, String)>,
) -> Result<()> {
    let over = |t: bool| if t { Some(tls) } else { None };
    let label = |t: bool| if t { "tls+tcp" } else { "tcp" };
    pinion_impl::latency_over(64, rts / 10, Some(tls))?;
    let mut mean = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    for _ in 0..repeat {
        for t in [false, true] {
            let s = pinion_impl::latency_over(64, rts, over(t))?;
            eprintln!(
                "lat {} 64 B: {:.2} µs one-way",
                label(t),
                s.mean_oneway_us()
            );
            mean[usize::from(t)].push(s.mean_oneway_us());
            p99[usize::from(t)].push(s.oneway_quantile_us(0.99));
        }
    }
    let (m0, m1) = (median(&mean[0]), median(&mean[1]));
    let (q0, q1) = (median(&p99[0]), median(&p99[1]));
    rows.push((
        "req/rep one-way latency 64 B, mean µs (lower is better)".into(),
        m1 / m0,
        format!("{m0:.2}"),
        format!("{m1:.2}"),
    ));
    rows.push((
        "req/rep one-way latency 64 B, p99 µs (lower is better)".into(),
        q1 / q0,
        format!("{q0:.2}"),
        format!("{q1:.2}"),
    ));
    Ok(())
}

#[cfg(feature = "pinion")]
fn print_tls_report(
    repeat: usize,
    load_before: &str,
    started: std::time::Instant,
    rows: Vec<(String, f64, String, String)>,
) {
    println!("{}", machine_line());
    println!();
    println!(
        "Medians of R = {repeat} interleaved runs per figure; pinion async API, sender/client on core 1, receiver/server on core 0 of this one process; \
         tls+tcp = TLS 1.3 (rustls, ring, AES-256-GCM as negotiated), server certificate ECDSA P-256; load average before/after: {load_before} / {}; total wall time {:.0} s.",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| figure | tls+tcp / tcp | tcp | tls+tcp |");
    println!("|---|---:|---:|---:|");
    for (what, r, a, b) in rows {
        println!("| {what} | {r:.2}× | {a} | {b} |");
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        #[cfg(feature = "pinion")]
        Cmd::Accept {
            conns,
            msgs,
            repeat,
        } => accept_cmd(conns, msgs, repeat)?,
        #[cfg(not(feature = "pinion"))]
        Cmd::Accept { .. } => anyhow::bail!("the accept benchmark needs the `pinion` feature"),
        #[cfg(feature = "pinion")]
        Cmd::Tls {
            repeat,
            thr_secs,
            lat_secs,
            sizes,
            no_lat,
        } => tls_cmd(repeat, thr_secs, (!no_lat).then_some(lat_secs), &sizes)?,
        #[cfg(not(feature = "pinion"))]
        Cmd::Tls { .. } => anyhow::bail!("the tls benchmark needs the `pinion` feature"),
        Cmd::Trie { msgs, repeat } => {
            println!("| subscriptions | sub0 trie (ns/msg, median) | linear scan (ns/msg, median) | linear / trie |");
            println!("|---:|---:|---:|---:|");
            for subs in [10usize, 1_000, 10_000] {
                let mut tr = Vec::new();
                let mut li = Vec::new();
                for _ in 0..repeat {
                    let s = trie::run(subs, msgs);
                    tr.push(s.trie_ns_per_msg);
                    li.push(s.linear_ns_per_msg);
                }
                tr.sort_by(f64::total_cmp);
                li.sort_by(f64::total_cmp);
                let (t, l) = (tr[tr.len() / 2], li[li.len() / 2]);
                println!("| {subs} | {t:.0} | {l:.0} | {:.1}× |", l / t);
            }
        }
        Cmd::Thr {
            imp,
            size,
            count,
            secs,
            repeat,
        } => {
            let mut summaries = Vec::new();
            for imp in only_requested(imp, cli.tokio_rt)? {
                let count = match count {
                    Some(c) => c,
                    None => calibrate_thr(imp, size, secs)?,
                };
                let mut runs = Vec::new();
                for _ in 0..repeat.max(1) {
                    let s = run_thr(imp, size, count)?;
                    print_thr(&s, imp);
                    runs.push(s);
                }
                summaries.push(ThrSummary {
                    imp,
                    size,
                    count,
                    runs,
                });
            }
            if repeat > 1 {
                for s in &summaries {
                    println!(
                        "{:<12} median of {}: {:.0} msg/s, {:.3} Gbit/s",
                        s.imp.name(),
                        s.runs.len(),
                        s.msgs(),
                        s.gbit()
                    );
                }
            }
        }
        Cmd::Lat {
            imp,
            proto,
            size,
            roundtrips,
            secs,
            repeat,
        } => {
            let mut summaries = Vec::new();
            for imp in only_requested(imp, cli.tokio_rt)? {
                let rts = match roundtrips {
                    Some(r) => r,
                    None => calibrate_lat(imp, proto, size, secs)?,
                };
                let mut runs = Vec::new();
                for _ in 0..repeat.max(1) {
                    let s = run_lat(imp, proto, size, rts)?;
                    print_lat(&s, imp, proto, size);
                    runs.push(s);
                }
                summaries.push(LatSummary {
                    imp,
                    proto: Some(proto),
                    roundtrips: rts,
                    runs,
                });
            }
            if repeat > 1 {
                for s in &summaries {
                    println!(
                        "{:<12} median of {}: one-way mean {:.2} us, p50 {:.2} us, p99 {:.2} us",
                        s.imp.name(),
                        s.runs.len(),
                        s.mean(),
                        s.q(0.5),
                        s.q(0.99)
                    );
                }
            }
        }
        Cmd::All {
            repeat,
            thr_secs,
            lat_secs,
            markdown,
        } => {
            let report = run_all(repeat.max(1), thr_secs, lat_secs)?;
            print!("{report}");
            if let Some(path) = markdown {
                std::fs::write(&path, &report)?;
                eprintln!("report written to {}", path.display());
            }
        }
        Cmd::Fanout(args) => {
            let markdown = args.markdown.clone();
            let report = fanout::run(args)?;
            print!("{report}");
            if let Some(path) = markdown {
                std::fs::write(&path, &report)?;
                eprintln!("report written to {}", path.display());
            }
        }
    }
    Ok(())
}

/// For `thr`/`lat`: `--impl all` skips what is not available, a single
/// unavailable implementation is an error.
fn only_requested(imp: ImplArg, rt: TokioRt) -> Result<Vec<Impl>> {
    if imp == ImplArg::All {
        Ok(skip_unavailable(imp.impls(rt)))
    } else {
        let imp = imp.impls(rt)[0];
        available(imp)?;
        Ok(vec![imp])
    }
}

const THR_SIZES: [usize; 3] = [64, 1024, 64 * 1024];
const LAT_SIZE: usize = 64;

/// Failures seen during `all`: an implementation that fails (or hangs past the
/// watchdog) once is not run again, and the report says why.
#[derive(Default)]
struct Failures(Vec<(Impl, String)>);

impl Failures {
    fn has(&self, imp: Impl) -> bool {
        self.0.iter().any(|(i, _)| *i == imp)
    }
    fn add(&mut self, imp: Impl, what: &str, e: anyhow::Error) {
        eprintln!(
            "{} failed ({what}): {e:#}; not running it again",
            imp.name()
        );
        self.0.push((imp, format!("{what}: {e:#}")));
    }
}

fn run_all(repeat: usize, thr_secs: f64, lat_secs: f64) -> Result<String> {
    let started = std::time::Instant::now();
    let load_before = loadavg();
    let impls = skip_unavailable(ALL_IMPLS.to_vec());
    let mut failed = Failures::default();

    // Throughput: calibrate every (size, impl), then interleave the R runs so
    // that slow drifts of the shared machine hit every implementation alike.
    let mut thr: Vec<ThrSummary> = Vec::new();
    for &size in &THR_SIZES {
        for &imp in &impls {
            if failed.has(imp) {
                continue;
            }
            match calibrate_thr(imp, size, thr_secs) {
                Ok(count) => {
                    eprintln!("calibrated {} thr {size} B: count {count}", imp.name());
                    thr.push(ThrSummary {
                        imp,
                        size,
                        count,
                        runs: Vec::new(),
                    });
                }
                Err(e) => failed.add(imp, &format!("throughput {size} B calibration"), e),
            }
        }
    }
    for r in 0..repeat {
        for s in thr.iter_mut() {
            if failed.has(s.imp) {
                continue;
            }
            match run_thr(s.imp, s.size, s.count) {
                Ok(sample) => {
                    eprint!("[thr run {}/{repeat}] ", r + 1);
                    print_thr_stderr(&sample, s.imp);
                    s.runs.push(sample);
                }
                Err(e) => failed.add(s.imp, &format!("throughput {} B", s.size), e),
            }
        }
    }

    // Latency: NNG and pinion per protocol; tokio once per placement (no SP protocol).
    let mut lat: Vec<LatSummary> = Vec::new();
    let mut wanted: Vec<(Impl, Option<LatProto>)> = Vec::new();
    for &proto in &[LatProto::Reqrep, LatProto::Pair1] {
        for &imp in impls.iter().filter(|i| !i.is_tokio()) {
            wanted.push((imp, Some(proto)));
        }
    }
    for &imp in impls.iter().filter(|i| i.is_tokio()) {
        wanted.push((imp, None));
    }
    for (imp, proto) in wanted {
        if failed.has(imp) {
            continue;
        }
        let p = proto.unwrap_or(LatProto::Pair1);
        match calibrate_lat(imp, p, LAT_SIZE, lat_secs) {
            Ok(rts) => {
                eprintln!(
                    "calibrated {} lat {}: {rts} roundtrips",
                    imp.name(),
                    proto.map_or("(tcp)", |p| p.label())
                );
                lat.push(LatSummary {
                    imp,
                    proto,
                    roundtrips: rts,
                    runs: Vec::new(),
                });
            }
            Err(e) => failed.add(imp, &format!("latency {} calibration", p.label()), e),
        }
    }
    for r in 0..repeat {
        for s in lat.iter_mut() {
            if failed.has(s.imp) {
                continue;
            }
            let proto = s.proto.unwrap_or(LatProto::Pair1);
            match run_lat(s.imp, proto, LAT_SIZE, s.roundtrips) {
                Ok(sample) => {
                    eprint!("[lat run {}/{repeat}] ", r + 1);
                    eprintln!(
                        "{:<12} {:<7} one-way mean {:>8.2} us  p50 {:>8.2} us  p99 {:>8.2} us",
                        s.imp.name(),
                        s.proto.map_or("(tcp)", |p| p.label()),
                        sample.mean_oneway_us(),
                        sample.oneway_quantile_us(0.5),
                        sample.oneway_quantile_us(0.99)
                    );
                    s.runs.push(sample);
                }
                Err(e) => failed.add(s.imp, &format!("latency {}", proto.label()), e),
            }
        }
    }

    // Keep only figures with at least one run.
    thr.retain(|s| !s.runs.is_empty());
    lat.retain(|s| !s.runs.is_empty());
    Ok(report(
        &impls,
        repeat,
        &load_before,
        &thr,
        &lat,
        &failed,
        started.elapsed(),
    ))
}

fn print_thr_stderr(s: &ThrSample, imp: Impl) {
    eprintln!(
        "{:<12} {:>6} B  {:>12.0} msg/s  {:>7.3} Gbit/s  ({:.2} s)",
        imp.name(),
        s.size,
        s.msgs_per_sec(),
        s.gbit(),
        s.elapsed.as_secs_f64()
    );
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size / 1024 * 1024 == size {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}×", n / d),
        _ => "n/a".into(),
    }
}

fn report(
    impls: &[Impl],
    repeat: usize,
    load_before: &str,
    thr: &[ThrSummary],
    lat: &[LatSummary],
    failed: &Failures,
    took: std::time::Duration,
) -> String {
    let thr_of = |imp: Impl, size: usize| {
        thr.iter()
            .find(|s| s.imp == imp && s.size == size)
            .map(|s| s.msgs())
    };
    // The floor is the better of the two tokio placements, figure by figure.
    let thr_tokio = |size: usize| {
        thr.iter()
            .filter(|s| s.imp.is_tokio() && s.size == size)
            .map(|s| s.msgs())
            .reduce(f64::max)
    };
    let lat_of = |imp: Impl, proto: LatProto| {
        lat.iter()
            .find(|s| s.imp == imp && s.proto == Some(proto))
            .map(|s| s.mean())
    };
    let lat_tokio = || {
        lat.iter()
            .filter(|s| s.imp.is_tokio())
            .map(|s| s.mean())
            .reduce(f64::min)
    };
    let pinion_missing = !impls.iter().any(|i| matches!(i, Impl::Pinion(_)));
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "**yes**",
        Some(false) => "**no**",
        None => "n/a",
    };

    let mut o = String::new();
    let _ = writeln!(o, "## pinion-bench all\n");
    let _ = writeln!(o, "{}\n", machine_line());
    let _ = writeln!(
        o,
        "Medians of R = {repeat} runs per figure; tcp://127.0.0.1; both ends of every measurement are two threads/tasks of this one process; \
         tokio floor = the better of `tokio-split` and `tokio-shared` for each figure; \
         `pinion` = blocking API from two threads, `pinion-async` = async API as tasks on pinion's cores 0 and 1, `pinion-1core` = the same with both tasks on core 0; \
         load average before/after: {load_before} / {}; total wall time {:.0} s.\n",
        loadavg(),
        took.as_secs_f64()
    );
    if pinion_missing {
        let _ = writeln!(
            o,
            "pinion: not measured ({}).\n",
            pinion_impl::NOT_AVAILABLE
        );
    }
    for (imp, why) in &failed.0 {
        let _ = writeln!(
            o,
            "**{} failed** and was not run again: {why}. Its figures below are from the runs before the failure.\n",
            imp.name()
        );
    }

    let _ = writeln!(o, "### Ratios\n");
    let _ = writeln!(
        o,
        "| figure | pinion variant | pinion / NNG | pinion / tokio floor | target | met | pinion / same-layout tokio | tokio floor / NNG |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---|---|---:|---:|");
    for &size in &THR_SIZES {
        for api in PINION_APIS {
            let imp = Impl::Pinion(api);
            let (p, n, t) = (thr_of(imp, size), thr_of(Impl::Nng, size), thr_tokio(size));
            let (target, met) = if size <= 1024 {
                ("≥ 10× NNG", p.zip(n).map(|(p, n)| p >= 10.0 * n))
            } else {
                ("—", None)
            };
            let _ = writeln!(
                o,
                "| push/pull throughput {} (msg/s; higher is better) | {} | {} | {} | {target} | {} | {} | {} |",
                size_label(size),
                imp.name(),
                ratio(p, n),
                ratio(p, t),
                verdict(met),
                ratio(p, thr_of(matching_tokio(api), size)),
                ratio(t, n)
            );
        }
    }
    for &proto in &[LatProto::Reqrep, LatProto::Pair1] {
        for api in PINION_APIS {
            let imp = Impl::Pinion(api);
            let (p, n, t) = (lat_of(imp, proto), lat_of(Impl::Nng, proto), lat_tokio());
            let met = p.zip(t).map(|(p, t)| p <= 1.2 * t);
            let tokio_same = lat
                .iter()
                .find(|s| s.imp == matching_tokio(api))
                .map(|s| s.mean());
            let _ = writeln!(
                o,
                "| {} one-way latency {} (mean; lower is better) | {} | {} | {} | ≤ 1.2× tokio | {} | {} | {} |",
                proto.label(),
                size_label(LAT_SIZE),
                imp.name(),
                ratio(p, n),
                ratio(p, t),
                verdict(met),
                ratio(p, tokio_same),
                ratio(t, n)
            );
        }
    }

    let _ = writeln!(o, "\n### Throughput (push/pull)\n");
    let _ = writeln!(
        o,
        "| size | impl | msg/s | Gbit/s | Mbit/s (NNG formula) | msgs per run | runs | min–max msg/s |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
    for s in thr {
        let (lo, hi) = s.range();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.3} | {:.1} | {} | {} | {}–{} |",
            size_label(s.size),
            s.imp.name(),
            group(s.msgs()),
            s.gbit(),
            s.mbit_nng(),
            group(s.count as f64),
            s.runs.len(),
            group(lo),
            group(hi)
        );
    }

    let _ = writeln!(
        o,
        "\n### One-way latency, {} payload\n",
        size_label(LAT_SIZE)
    );
    let _ = writeln!(
        o,
        "| protocol | impl | mean µs | p50 µs | p99 µs | round trips per run | runs | min–max mean µs |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
    for s in lat {
        let (lo, hi) = s.range();
        let _ = writeln!(
            o,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2}–{:.2} |",
            s.proto.map_or("plain TCP (floor)", |p| p.label()),
            s.imp.name(),
            s.mean(),
            s.q(0.5),
            s.q(0.99),
            group(s.roundtrips as f64),
            s.runs.len(),
            lo,
            hi
        );
    }
    o
}

/// 1234567.8 -> "1,234,568".
fn group(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine_line() -> String {
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
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs, {model}, Linux {kernel}; libnng {} (runtime); date {date}.",
        nng_version()
    )
}

/// 1-, 5- and 15-minute load averages (a hint of how noisy the machine was).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The version string of the libnng actually loaded (`nng_version()`).
fn nng_version() -> String {
    // SAFETY: nng_version() returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = nng::ffi::nng_version();
        if p.is_null() {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
