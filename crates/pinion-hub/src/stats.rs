//! Hub counters (atomics, no locks on the request path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters since start.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Requests received (every kind).
    pub requests: AtomicU64,
    /// Records appended to the log and made durable per the fsync policy.
    pub logged: AtomicU64,
    /// Duplicates answered with their original offset.
    pub duplicates: AtomicU64,
    /// NACKs sent.
    pub nacks: AtomicU64,
    /// Group commits (one write, and with `fsync = always` one fdatasync).
    pub commits: AtomicU64,
    /// Times a connection's reads were paused at its in-flight cap.
    pub paused: AtomicU64,
    /// Subscribers connected over SP/TCP (a gauge).
    pub subscribers_tcp: AtomicU64,
    /// Subscribers connected over WebSocket (a gauge).
    pub subscribers_ws: AtomicU64,
    /// Messages written to subscribers (live and replayed).
    pub delivered: AtomicU64,
    /// Of those, read back from the log for subscribers catching up.
    pub replayed: AtomicU64,
    /// Subscribers disconnected for falling too far behind.
    pub slow_disconnects: AtomicU64,
}

/// A latency histogram with power-of-two microsecond buckets: cheap enough
/// to record every ack, precise to a factor of two (enough for a dashboard;
/// the benchmark measures latency exactly on the client side).
#[derive(Debug)]
pub struct LatencyBuckets {
    buckets: [AtomicU64; 32],
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyBuckets {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = (64 - us.leading_zeros() as usize).min(31);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1).
    pub fn quantile_us(&self, q: f64) -> u64 {
        quantile_of(&self.counts(), q)
    }

    /// The bucket counts (bucket `i` holds durations below 2^i µs).
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// The upper bound (µs) of the bucket holding quantile `q` of `counts`
/// (as [`LatencyBuckets::counts`] gives them, or a difference of two).
pub fn quantile_of(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return if i == 0 { 0 } else { 1u64 << i };
        }
    }
    1u64 << 31
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`HubStats::requests`].
    pub requests: u64,
    /// See [`HubStats::logged`].
    pub logged: u64,
    /// See [`HubStats::duplicates`].
    pub duplicates: u64,
    /// See [`HubStats::nacks`].
    pub nacks: u64,
    /// See [`HubStats::commits`].
    pub commits: u64,
    /// See [`HubStats::paused`].
    pub paused: u64,
    /// See [`HubStats::subscribers_tcp`].
    pub subscribers_tcp: u64,
    /// See [`HubStats::subscribers_ws`].
    pub subscribers_ws: u64,
    /// See [`HubStats::delivered`].
    pub delivered: u64,
    /// See [`HubStats::replayed`].
    pub replayed: u64,
    /// See [`HubStats::slow_disconnects`].
    pub slow_disconnects: u64,
    /// Next offset of the log.
    pub head: u64,
    /// Ack latency inside the hub (receive → reply), p50, µs (bucket bound).
    pub p50_us: u64,
    /// The same, p99.
    pub p99_us: u64,
}

impl HubStats {
    /// Reads the counters.
    pub fn snapshot(&self, lat: &LatencyBuckets, head: u64) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            logged: self.logged.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            subscribers_tcp: self.subscribers_tcp.load(Ordering::Relaxed),
            subscribers_ws: self.subscribers_ws.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            slow_disconnects: self.slow_disconnects.load(Ordering::Relaxed),
            head,
            p50_us: lat.quantile_us(0.5),
            p99_us: lat.quantile_us(0.99),
        }
    }
}
