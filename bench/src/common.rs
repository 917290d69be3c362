//! Types and helpers shared by the three implementations.

use std::sync::mpsc;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Which SP pattern the latency test uses (the tokio floor ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LatProto {
    /// req0 (dialer, measures) against rep0 (listener, echoes).
    Reqrep,
    /// pair1 on both sides, like NNG's `local_lat`/`remote_lat`.
    Pair1,
}

impl LatProto {
    pub fn label(self) -> &'static str {
        match self {
            LatProto::Reqrep => "req/rep",
            LatProto::Pair1 => "pair1",
        }
    }
}

/// One throughput run, as seen by the receiver (the side that keeps time).
#[derive(Clone, Copy, Debug)]
pub struct ThrSample {
    /// Payload size of each message in bytes.
    pub size: usize,
    /// Messages timed (the 0-byte sync message is not counted).
    pub count: u64,
    /// Time from "sync message received" to "last message received".
    pub elapsed: Duration,
}

impl ThrSample {
    pub fn msgs_per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    /// NNG `local_thr` formula: msg/s * 8 * size / (1024 * 1024).
    pub fn mbit_nng(&self) -> f64 {
        self.msgs_per_sec() * 8.0 * self.size as f64 / (1024.0 * 1024.0)
    }
    /// Decimal gigabits of payload per second: msg/s * 8 * size / 1e9.
    pub fn gbit(&self) -> f64 {
        self.msgs_per_sec() * 8.0 * self.size as f64 / 1e9
    }
}

/// One latency run, as seen by the side that initiates each round trip.
#[derive(Clone, Debug)]
pub struct LatSample {
    pub roundtrips: u64,
    /// Wall time for all timed round trips.
    pub total: Duration,
    /// Per-round-trip times in nanoseconds.
    pub rtt_ns: Histogram<u64>,
}

impl LatSample {
    /// NNG `remote_lat` formula: total / (roundtrips * 2), in microseconds.
    pub fn mean_oneway_us(&self) -> f64 {
        self.total.as_secs_f64() * 1e6 / (self.roundtrips as f64 * 2.0)
    }
    /// Quantile of the one-way latency (round trip / 2), in microseconds.
    pub fn oneway_quantile_us(&self, q: f64) -> f64 {
        self.rtt_ns.value_at_quantile(q) as f64 / 2.0 / 1e3
    }
}

/// A histogram for round-trip times in ns: 1 ns .. 60 s, 3 significant digits.
pub fn new_rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one round trip (saturating at the histogram's upper bound).
pub fn record_rtt(hist: &mut Histogram<u64>, rtt: Duration) {
    let ns = (rtt.as_nanos() as u64).clamp(1, 60_000_000_000);
    hist.record(ns).expect("value within bounds");
}

/// Untimed round trips before a latency measurement (connection set-up, caches, allocator).
pub fn warmup_roundtrips(roundtrips: u64) -> u64 {
    (roundtrips / 10).clamp(10, 1_000)
}

/// The payload every implementation sends: `size` bytes of a fixed pattern.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// How long one measurement may take before the whole process gives up.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and waits at most [`RUN_TIMEOUT`]. A hung
/// benchmark (a lost message, a deadlocked implementation) becomes an error;
/// its thread is left behind, blocked, and dies with the process.
pub fn with_watchdog<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bench-run".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            anyhow::bail!("{what} did not finish within {RUN_TIMEOUT:?} (hung?)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("{what}: benchmark thread panicked")
        }
    }
}

/// Median of a non-empty slice (mean of the two middle values for an even length).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    assert!(n > 0, "median of nothing");
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_formulas() {
        let s = ThrSample {
            size: 1024,
            count: 1_000_000,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(s.msgs_per_sec(), 1e6);
        assert!((s.mbit_nng() - 7812.5).abs() < 1e-9);
        assert!((s.gbit() - 8.192).abs() < 1e-9);
    }

    #[test]
    fn latency_formulas() {
        let mut h = new_rtt_histogram();
        for _ in 0..100 {
            record_rtt(&mut h, Duration::from_micros(40));
        }
        let s = LatSample {
            roundtrips: 100,
            total: Duration::from_micros(4000),
            rtt_ns: h,
        };
        assert!((s.mean_oneway_us() - 20.0).abs() < 1e-9);
        assert!((s.oneway_quantile_us(0.5) - 20.0).abs() < 0.05);
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
