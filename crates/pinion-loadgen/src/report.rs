//! Results: per-run figures, medians over runs, ratios, the side-by-side
//! table and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Target;

/// Ack latency of one run (or medians over runs), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    pub(crate) fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1_000.0,
        }
    }
}

/// One run of one row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    /// ACKs received inside the measurement window.
    pub acked: u64,
    /// `acked` / window length.
    pub msgs_per_sec: f64,
    /// ACKs received at any time (warmup and drain too).
    pub total_acked: u64,
    /// NACKs, error replies and client-side failures (whole run).
    pub errors: u64,
    /// `errors` by kind (e.g. `pinion: NACK UNAVAILABLE`, `redis: -ERR ...`,
    /// `i/o: connection reset`).
    pub error_kinds: BTreeMap<String, u64>,
    /// Ack latency inside the window.
    pub latency_us: Latency,
    /// fdatasyncs per second (disk rows only).
    pub syncs_per_sec: Option<f64>,
    /// Records per fdatasync (disk rows only).
    pub avg_batch: Option<f64>,
    /// What the server holds after the run, as it reports it (Redis `XLEN`,
    /// JetStream stream messages, pinion's highest acked offset + 1, records
    /// in the disk probe's file). Checked to be `>= total_acked`.
    pub stored: Option<u64>,
    /// PID of the server the bench started (gone when `run_publish` returns).
    pub server_pid: Option<u32>,
    /// The temp dir the server (or the disk probe) wrote to (removed when
    /// `run_publish` returns).
    pub data_dir: Option<std::path::PathBuf>,
    /// Server CPU during the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Load generator CPU during the window (all its threads), % of one core.
    pub loadgen_cpu_pct: Option<f64>,
    /// Whole machine busy during the window, % of one core (all CPUs: the
    /// rest beyond server + load generator is kernel softirq work, e.g.
    /// loopback TCP, and any other process).
    pub machine_cpu_pct: Option<f64>,
    /// CPU used during the window by everything else (machine busy minus
    /// server and load generator), % of one core. Above
    /// [`CONTENDED_PCT`] the run is flagged: another process competed for
    /// the 2 cores and the figures are not representative.
    pub other_cpu_pct: Option<f64>,
}

/// `other_cpu_pct` above this flags a run as contended.
pub const CONTENDED_PCT: f64 = 15.0;

impl RunResult {
    /// Whether another process used more than [`CONTENDED_PCT`] of a core
    /// during the window.
    pub fn contended(&self) -> bool {
        self.other_cpu_pct.is_some_and(|o| o > CONTENDED_PCT)
    }
}

/// One row of the comparison: a target (the disk probe gives two rows), all
/// its runs and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Which target produced this row.
    pub target: Target,
    /// Row name in the table (`pinion`, `redis`, `nats`, `disk`, `disk 1w`, ...).
    pub row: String,
    /// What was measured, with versions and settings.
    pub description: String,
    /// What an ACK guarantees on this row.
    pub ack_means: String,
    /// True when an ACK means "fdatasync'ed" (comparable with pinion).
    pub durable_ack: bool,
    /// Clients (connections / submitting tasks).
    pub clients: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Requests in flight per client.
    pub pipeline: usize,
    /// Warmup seconds (not counted).
    pub warmup_secs: f64,
    /// Measured seconds.
    pub duration_secs: f64,
    /// Every run, in order.
    pub runs: Vec<RunResult>,
    /// Runs the medians are taken over: the uncontended ones if there is
    /// any, else all (see [`RunResult::contended`]).
    pub runs_in_median: usize,
    /// Median of the runs' acked msg/s.
    pub msgs_per_sec: f64,
    /// Lowest run.
    pub msgs_per_sec_min: f64,
    /// Highest run.
    pub msgs_per_sec_max: f64,
    /// Median over runs of each latency figure.
    pub latency_us: Latency,
    /// Sum of errors over the runs.
    pub errors: u64,
    /// Median fdatasyncs/s (disk rows).
    pub syncs_per_sec: Option<f64>,
    /// Median records per fdatasync (disk rows).
    pub avg_batch: Option<f64>,
    /// Pinion's median msg/s ÷ this row's (None without a pinion row).
    pub pinion_ratio: Option<f64>,
}

/// The runs medians are taken over: the uncontended ones if there are any
/// (a run that shared the CPUs with another process says little), else
/// all of them.
pub(crate) fn median_runs<T>(runs: &[T], contended: impl Fn(&T) -> bool) -> Vec<&T> {
    let clean: Vec<&T> = runs.iter().filter(|r| !contended(r)).collect();
    if clean.is_empty() {
        runs.iter().collect()
    } else {
        clean
    }
}

impl Latency {
    /// Each percentile's median over `v` (zeros when `v` is empty).
    pub(crate) fn median_of<'a>(v: impl IntoIterator<Item = &'a Latency>) -> Latency {
        let v: Vec<&Latency> = v.into_iter().collect();
        let m = |f: fn(&Latency) -> f64| median(v.iter().map(|l| f(l)).collect());
        Latency {
            p50: m(|l| l.p50),
            p90: m(|l| l.p90),
            p99: m(|l| l.p99),
            p999: m(|l| l.p999),
            max: m(|l| l.max),
            mean: m(|l| l.mean),
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl TargetReport {
    /// Recomputes the medians from `runs`.
    pub(crate) fn summarize(&mut self) {
        let runs = median_runs(&self.runs, RunResult::contended);
        self.runs_in_median = runs.len();
        let runs = &runs;
        self.msgs_per_sec = median(runs.iter().map(|r| r.msgs_per_sec).collect());
        self.msgs_per_sec_min = runs
            .iter()
            .map(|r| r.msgs_per_sec)
            .fold(f64::INFINITY, f64::min);
        self.msgs_per_sec_max = runs.iter().map(|r| r.msgs_per_sec).fold(0.0, f64::max);
        if runs.is_empty() {
            self.msgs_per_sec_min = 0.0;
        }
        self.latency_us = Latency::median_of(runs.iter().map(|r| &r.latency_us));
        self.errors = self.runs.iter().map(|r| r.errors).sum();
        let opt = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        self.syncs_per_sec = opt(&|r| r.syncs_per_sec);
        self.avg_batch = opt(&|r| r.avg_batch);
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    let first = match s.len() % 3 {
        0 => 3,
        r => r,
    };
    for (i, c) in s.chars().enumerate() {
        if i >= first && (i - first) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds for tables: `87`, `1,234`; `-` for nothing measured.
pub(crate) fn us(x: f64) -> String {
    if x <= 0.0 {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.1}")
    } else {
        thousands(x.round() as u64)
    }
}

pub(crate) fn ratio(x: Option<f64>) -> String {
    match x {
        Some(r) if r.is_finite() && r >= 10.0 => format!("{r:.1}x"),
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

/// The line printed after each run of each row.
pub(crate) fn run_line(row: &str, run: usize, runs: usize, r: &RunResult, secs: f64) -> String {
    let mut s = format!(
        "{row:<9} run {run}/{runs}: {} acked msg/s ({} in {secs} s), {} errors/nacks",
        thousands(r.msgs_per_sec.round() as u64),
        thousands(r.acked),
        thousands(r.errors),
    );
    if let (Some(sps), Some(b)) = (r.syncs_per_sec, r.avg_batch) {
        let _ = write!(
            s,
            ", {} fdatasync/s, {b:.1} per batch",
            thousands(sps.round() as u64)
        );
    }
    let l = &r.latency_us;
    let _ = write!(
        s,
        "\n{:<9}   ack latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        "",
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.p999),
        us(l.max)
    );
    let mut cpu = Vec::new();
    // CPU per acked message: where the 2 cores go.
    let per_msg = |pct: f64| {
        if r.msgs_per_sec > 0.0 {
            format!(" = {:.1} us/msg", pct / 100.0 * 1e6 / r.msgs_per_sec)
        } else {
            String::new()
        }
    };
    if let Some(c) = r.server_cpu_pct {
        cpu.push(format!("server CPU {c:.0}%{}", per_msg(c)));
    }
    if let Some(c) = r.loadgen_cpu_pct {
        cpu.push(format!("load generator CPU {c:.0}%{}", per_msg(c)));
    }
    if let Some(c) = r.machine_cpu_pct {
        cpu.push(format!("machine busy {c:.0}%"));
    }
    if let Some(c) = r.other_cpu_pct {
        cpu.push(format!("other processes {:.0}%", c.max(0.0)));
    }
    if let Some(n) = r.stored {
        cpu.push(format!(
            "stored {} (>= {} acked)",
            thousands(n),
            thousands(r.total_acked)
        ));
    }
    if !cpu.is_empty() {
        let _ = write!(s, "\n{:<9}   {}", "", cpu.join(", "));
    }
    if r.contended() {
        let _ = write!(
            s,
            "\n{:<9}   WARNING: other processes used {:.0}% of a core during this run: contended, not representative",
            "",
            r.other_cpu_pct.unwrap_or(0.0)
        );
    }
    for (k, v) in &r.error_kinds {
        let _ = write!(s, "\n{:<9}   error: {k}: {}", "", thousands(*v));
    }
    s
}

/// The final side-by-side table: ratios first, then the figures, then what
/// each row's ACK means.
pub(crate) fn table(reports: &[TargetReport], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {header} ==");
    let pinion = reports.iter().find(|r| r.target == Target::Pinion);
    if let Some(p) = pinion {
        let ratios: Vec<String> = reports
            .iter()
            .filter(|r| r.target != Target::Pinion)
            .map(|r| {
                let what = if r.row == "disk" || r.row == "disk-zeroed" {
                    format!("{} (ceiling)", r.row)
                } else {
                    r.row.clone()
                };
                format!("pinion ÷ {what} = {}", ratio(r.pinion_ratio))
            })
            .collect();
        let _ = writeln!(
            out,
            "ratios (acked msg/s, medians): {}",
            if ratios.is_empty() {
                format!(
                    "pinion only: {} msg/s",
                    thousands(p.msgs_per_sec.round() as u64)
                )
            } else {
                ratios.join(", ")
            }
        );
    }
    let head = [
        "row",
        "pinion/row",
        "acked msg/s",
        "[min - max]",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "fsync/s",
        "batch",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in reports {
        rows.push(vec![
            r.row.clone(),
            ratio(r.pinion_ratio),
            thousands(r.msgs_per_sec.round() as u64),
            if r.runs.len() > 1 {
                format!(
                    "[{} - {}]",
                    thousands(r.msgs_per_sec_min.round() as u64),
                    thousands(r.msgs_per_sec_max.round() as u64)
                )
            } else {
                "".into()
            },
            us(r.latency_us.p50),
            us(r.latency_us.p90),
            us(r.latency_us.p99),
            us(r.latency_us.p999),
            us(r.latency_us.max),
            thousands(r.errors),
            r.syncs_per_sec
                .map(|x| thousands(x.round() as u64))
                .unwrap_or_else(|| "-".into()),
            r.avg_batch
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    let contended: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let n = r.runs.iter().filter(|x| x.contended()).count();
            (n > 0).then(|| format!("{} ({n} of {})", r.row, r.runs.len()))
        })
        .collect();
    if !contended.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: contended runs (other processes > {CONTENDED_PCT:.0}% of a core), left out of the medians and ranges when a clean run exists: {}",
            contended.join(", ")
        );
    }
    let _ = writeln!(out, "ACK means:");
    let w = reports.iter().map(|r| r.row.len()).max().unwrap_or(0);
    for r in reports {
        let _ = writeln!(out, "  {:<w$}  {}", r.row, r.ack_means);
    }
    let _ = writeln!(out, "measured:");
    for r in reports {
        let _ = writeln!(out, "  {:<w$}  {}", r.row, r.description);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(ratio(Some(1.234)), "1.23x");
        assert_eq!(ratio(None), "-");
        assert_eq!(us(1234.4), "1,234");
    }
}
