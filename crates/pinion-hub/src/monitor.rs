//! What the hub tells about itself: the `/stats` feed of the dashboard
//! (JSON every 500 ms, rates over the last interval) and `/metrics`
//! (Prometheus text format 0.0.4, counters since start).
//!
//! Per-core load is each event-loop thread's CPU time, read from
//! `/proc/self/task/*/stat` (Linux; elsewhere the figures are absent).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pinion::Socket;
use tokio::sync::watch;

use crate::stats::{Port, Refusal};
use crate::{Shared, StatsSnapshot};

/// How often the feed is refreshed.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds used so far by the hub's threads: per core, and the writer.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    /// Per core event-loop thread (index = core).
    pub cores: Vec<f64>,
    /// The writer thread.
    pub writer: f64,
}

/// Reads the CPU time of the threads named `<name>-<core>` and
/// `<name>-writer` (the kernel keeps 15 bytes of a thread name).
pub fn cpu_times(name: &str, cores: usize) -> CpuTimes {
    let mut out = CpuTimes {
        cores: vec![0.0; cores],
        writer: 0.0,
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    let writer_comm: String = format!("{name}-writer").chars().take(15).collect();
    for e in dir.flatten() {
        let p = e.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
            continue;
        };
        let Some(secs) = stat_cpu_seconds(&stat) else {
            continue;
        };
        if comm == writer_comm {
            out.writer += secs;
        } else if let Some(i) = comm
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.parse::<usize>().ok())
        {
            if let Some(c) = out.cores.get_mut(i) {
                *c += secs;
            }
        }
    }
    out
}

/// utime + stime of a `/proc/<pid>/task/<tid>/stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// Publishers connected (REP pipes up, over every core's socket).
pub fn publishers(socks: &[Socket]) -> u64 {
    socks
        .iter()
        .map(|s| {
            let st = s.stats();
            st.pipes_added.saturating_sub(st.pipes_removed)
        })
        .sum()
}

/// The sampler thread: refreshes the `/stats` feed until `stop`.
pub(crate) fn run_sampler(
    shared: Arc<Shared>,
    socks: Vec<Socket>,
    name: String,
    tx: watch::Sender<Arc<str>>,
    stop: Arc<AtomicBool>,
) {
    let start = Instant::now();
    let n = socks.len();
    let mut prev = shared.snapshot();
    let mut prev_cpu = cpu_times(&name, n);
    let mut prev_lat = shared.latency.counts();
    let mut prev_t = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(INTERVAL);
        let now = Instant::now();
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-3);
        let snap = shared.snapshot();
        let cpu = cpu_times(&name, n);
        let lat = shared.latency.counts();
        let window: Vec<u64> = lat.iter().zip(&prev_lat).map(|(a, b)| a - b).collect();
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let mut j = String::with_capacity(512);
        let t_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let _ = write!(
            j,
            "{{\"t_ms\":{t_ms},\"uptime_s\":{:.1},\"head\":{},\"in_rate\":{:.1},\"out_rate\":{:.1},\"nack_rate\":{:.1},\
             \"ack_p50_us\":{},\"ack_p99_us\":{},\"publishers\":{},\"subscribers_tcp\":{},\"subscribers_ws\":{},\
             \"logged\":{},\"delivered\":{},\"nacks\":{},\"duplicates\":{},\"slow_disconnects\":{},\"cores\":[",
            start.elapsed().as_secs_f64(),
            snap.head,
            rate(snap.logged, prev.logged),
            rate(snap.delivered, prev.delivered),
            rate(snap.nacks, prev.nacks),
            crate::stats::quantile_of(&window, 0.5),
            crate::stats::quantile_of(&window, 0.99),
            publishers(&socks),
            snap.subscribers_tcp,
            snap.subscribers_ws,
            snap.logged,
            snap.delivered,
            snap.nacks,
            snap.duplicates,
            snap.slow_disconnects,
        );
        for (i, (a, b)) in cpu.cores.iter().zip(&prev_cpu.cores).enumerate() {
            if i > 0 {
                j.push(',');
            }
            let _ = write!(j, "{{\"core\":{i},\"cpu\":{:.3}}}", ((a - b) / dt).max(0.0));
        }
        let _ = write!(
            j,
            "],\"writer_cpu\":{:.3}}}",
            ((cpu.writer - prev_cpu.writer) / dt).max(0.0)
        );
        tx.send_replace(Arc::from(j));
        prev = snap;
        prev_cpu = cpu;
        prev_lat = lat;
        prev_t = now;
    }
}

/// `/metrics`: Prometheus text format 0.0.4.
pub fn metrics_text(snap: &StatsSnapshot, publishers: u64, cpu: &CpuTimes) -> String {
    let mut m = String::with_capacity(2048);
    let mut one = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(m, "# HELP {name} {help}");
        let _ = writeln!(m, "# TYPE {name} {kind}");
        let _ = writeln!(m, "{name} {v}");
    };
    one(
        "pinion_requests_total",
        "counter",
        "Publish requests received.",
        snap.requests as f64,
    );
    one(
        "pinion_logged_total",
        "counter",
        "Messages appended to the log and made durable.",
        snap.logged as f64,
    );
    one(
        "pinion_duplicates_total",
        "counter",
        "Retries acked with their original offset.",
        snap.duplicates as f64,
    );
    one(
        "pinion_nacks_total",
        "counter",
        "NACKs sent.",
        snap.nacks as f64,
    );
    one(
        "pinion_commits_total",
        "counter",
        "Group commits (one write and, with fsync=always, one fdatasync).",
        snap.commits as f64,
    );
    one(
        "pinion_paused_total",
        "counter",
        "Times a publisher connection was paused at its in-flight cap.",
        snap.paused as f64,
    );
    one(
        "pinion_delivered_total",
        "counter",
        "Messages written to subscribers (live and replayed).",
        snap.delivered as f64,
    );
    one(
        "pinion_replayed_total",
        "counter",
        "Messages read back from the log for subscribers catching up.",
        snap.replayed as f64,
    );
    one(
        "pinion_slow_disconnects_total",
        "counter",
        "Subscribers disconnected for falling too far behind.",
        snap.slow_disconnects as f64,
    );
    one(
        "pinion_log_head",
        "gauge",
        "Next offset of the log (records logged so far).",
        snap.head as f64,
    );
    one(
        "pinion_publishers",
        "gauge",
        "Publisher connections.",
        publishers as f64,
    );
    one(
        "pinion_ack_latency_p50_seconds",
        "gauge",
        "Receive-to-reply latency in the hub since start, p50 (power-of-two bucket bound).",
        snap.p50_us as f64 / 1e6,
    );
    one(
        "pinion_ack_latency_p99_seconds",
        "gauge",
        "The same, p99.",
        snap.p99_us as f64 / 1e6,
    );
    one(
        "pinion_writer_cpu_seconds_total",
        "counter",
        "CPU time of the log writer thread.",
        cpu.writer,
    );
    one(
        "pinion_replays_active",
        "gauge",
        "Catch-up replays reading the log now.",
        snap.replays_active as f64,
    );
    one(
        "pinion_replays_waiting",
        "gauge",
        "Catch-up replays waiting for a turn.",
        snap.replays_waiting as f64,
    );
    one(
        "pinion_replays_cancelled_total",
        "counter",
        "Replays dropped because their subscriber left first.",
        snap.replays_cancelled as f64,
    );
    one(
        "pinion_sessions",
        "gauge",
        "Clients whose dedup session the hub holds.",
        snap.sessions as f64,
    );
    one(
        "pinion_sessions_forgotten_total",
        "counter",
        "Sessions dropped because none of their records is within the dedup horizon.",
        snap.sessions_forgotten as f64,
    );
    one(
        "pinion_fanout_backlog_bytes",
        "gauge",
        "Bytes of live batches queued for the cores' fan-out.",
        snap.fanout_backlog as f64,
    );
    one(
        "pinion_fanout_overflows_total",
        "counter",
        "Times a core's fan-out backlog went over max_fanout_backlog (its subscribers then read the log).",
        snap.fanout_overflows as f64,
    );
    let _ = writeln!(
        m,
        "# HELP pinion_connections_open Connections open per listening port."
    );
    let _ = writeln!(m, "# TYPE pinion_connections_open gauge");
    for p in Port::ALL {
        let _ = writeln!(
            m,
            "pinion_connections_open{{port=\"{}\"}} {}",
            p.label(),
            snap.open[p as usize]
        );
    }
    let _ = writeln!(
        m,
        "# HELP pinion_connections_refused_total Connections refused or cut by the hub's guards (see docs/HARDENING.md)."
    );
    let _ = writeln!(m, "# TYPE pinion_connections_refused_total counter");
    for p in Port::ALL {
        for r in Refusal::ALL {
            let _ = writeln!(
                m,
                "pinion_connections_refused_total{{port=\"{}\",reason=\"{}\"}} {}",
                p.label(),
                r.label(),
                snap.refused[p as usize][r as usize]
            );
        }
    }
    let _ = writeln!(m, "# HELP pinion_subscribers Subscriber connections.");
    let _ = writeln!(m, "# TYPE pinion_subscribers gauge");
    let _ = writeln!(
        m,
        "pinion_subscribers{{transport=\"tcp\"}} {}",
        snap.subscribers_tcp
    );
    let _ = writeln!(
        m,
        "pinion_subscribers{{transport=\"ws\"}} {}",
        snap.subscribers_ws
    );
    let _ = writeln!(
        m,
        "# HELP pinion_core_cpu_seconds_total CPU time of each core's event loop thread."
    );
    let _ = writeln!(m, "# TYPE pinion_core_cpu_seconds_total counter");
    for (i, c) in cpu.cores.iter().enumerate() {
        let _ = writeln!(m, "pinion_core_cpu_seconds_total{{core=\"{i}\"}} {c}");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let line = "1234 (pinion hub-0) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu_seconds(line), Some(3.0));
        assert_eq!(stat_cpu_seconds("garbage"), None);
    }

    #[test]
    fn this_thread_is_found() {
        let h = std::thread::Builder::new()
            .name("pmon-test-0".into())
            .spawn(|| {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(120) {}
                cpu_times("pmon-test", 1)
            })
            .unwrap();
        let c = h.join().unwrap();
        assert_eq!(c.cores.len(), 1);
        assert!(c.cores[0] > 0.0, "busy thread shows CPU time: {c:?}");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let snap = StatsSnapshot {
            logged: 5,
            subscribers_ws: 2,
            ..StatsSnapshot::default()
        };
        let m = metrics_text(
            &snap,
            1,
            &CpuTimes {
                cores: vec![0.5, 0.25],
                writer: 0.1,
            },
        );
        assert!(m.contains("# TYPE pinion_logged_total counter\npinion_logged_total 5\n"));
        assert!(m.contains("pinion_subscribers{transport=\"ws\"} 2\n"));
        assert!(m.contains("pinion_core_cpu_seconds_total{core=\"1\"} 0.25\n"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(!name.is_empty());
            value.parse::<f64>().unwrap();
        }
    }
}
