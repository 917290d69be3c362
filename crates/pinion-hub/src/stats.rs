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
    /// Connections refused or cut by the hub's guards, per port and reason.
    pub refused: [[AtomicU64; Refusal::COUNT]; Port::COUNT],
    /// Connections open per port (a gauge).
    pub open: [AtomicU64; Port::COUNT],
    /// Replays reading the log now (a gauge).
    pub replays_active: AtomicU64,
    /// Replays waiting for a turn (a gauge).
    pub replays_waiting: AtomicU64,
    /// Replays dropped because their subscriber left first.
    pub replays_cancelled: AtomicU64,
    /// Clients whose session the hub holds (a gauge).
    pub sessions: AtomicU64,
    /// Sessions forgotten: none of their records is within the dedup
    /// horizon any more.
    pub sessions_forgotten: AtomicU64,
    /// Bytes of live batches queued for the cores' fan-out (a gauge).
    pub fanout_backlog: AtomicU64,
    /// Times a core's fan-out fell over `max_fanout_backlog` and its
    /// subscribers were switched to reading the log.
    pub fanout_overflows: AtomicU64,
}

/// A listening port of the hub, for the guards' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// Publishers (SP REP over TCP).
    Pub = 0,
    /// Subscribers (SP PUB over TCP).
    Sub = 1,
    /// HTTP: dashboard, metrics, WebSocket routes.
    Http = 2,
}

impl Port {
    /// Number of ports.
    pub const COUNT: usize = 3;
    /// Every port, in index order.
    pub const ALL: [Port; Port::COUNT] = [Port::Pub, Port::Sub, Port::Http];
    /// The `port` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Port::Pub => "pub",
            Port::Sub => "sub",
            Port::Http => "http",
        }
    }
}

/// Why the hub refused or cut a connection (the `reason` label of
/// `pinion_connections_refused_total`; docs/HARDENING.md lists what the
/// peer sees for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The port holds `max_connections` already.
    PortCap = 0,
    /// The source address holds `max_connections_per_source` on this port.
    SourceCap = 1,
    /// Too many connections still in their handshake (port or source).
    HandshakeCap = 2,
    /// The HTTP head or SP header did not arrive within the timeout.
    HandshakeTimeout = 3,
    /// An HTTP head over 8 KiB, or with too many headers.
    HeadTooLarge = 4,
    /// Not HTTP, not SP, a bad WebSocket upgrade, or a malformed frame.
    Malformed = 5,
    /// A cross-origin WebSocket from an origin not allowed.
    BadOrigin = 6,
    /// A `Host` that is not one of the hub's names (DNS rebinding).
    BadHost = 7,
    /// A response or frame was not taken within `write_timeout`.
    WriteTimeout = 8,
    /// A WebSocket peer answered no ping (or TCP keepalive gave up).
    DeadPeer = 9,
    /// A frame or message over a size or count limit.
    Oversize = 10,
    /// A flood of WebSocket frames without data (pings, pongs, empty
    /// frames) over the connection's allowance.
    Flood = 11,
    /// A TLS handshake or record that failed (certificate refused either
    /// way, no TLS spoken, an oversize record), or a TLS ClientHello on a
    /// plain port.
    Tls = 12,
}

impl Refusal {
    /// Number of reasons.
    pub const COUNT: usize = 13;
    /// Every reason, in index order.
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::PortCap,
        Refusal::SourceCap,
        Refusal::HandshakeCap,
        Refusal::HandshakeTimeout,
        Refusal::HeadTooLarge,
        Refusal::Malformed,
        Refusal::BadOrigin,
        Refusal::BadHost,
        Refusal::WriteTimeout,
        Refusal::DeadPeer,
        Refusal::Oversize,
        Refusal::Flood,
        Refusal::Tls,
    ];
    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PortCap => "port_cap",
            Refusal::SourceCap => "source_cap",
            Refusal::HandshakeCap => "handshake_cap",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::Malformed => "malformed",
            Refusal::BadOrigin => "bad_origin",
            Refusal::BadHost => "bad_host",
            Refusal::WriteTimeout => "write_timeout",
            Refusal::DeadPeer => "dead_peer",
            Refusal::Oversize => "oversize",
            Refusal::Flood => "flood",
            Refusal::Tls => "tls",
        }
    }

    /// The reason a connection closed for the peer's fault `e` is counted
    /// under.
    pub fn of_peer_error(e: &pinion_core::PeerError) -> Refusal {
        use pinion_core::PeerError as P;
        match e {
            P::TooLarge { .. } => Refusal::Oversize,
            P::WsFlood { .. } => Refusal::Flood,
            P::HandshakeTimeout => Refusal::HandshakeTimeout,
            P::Tls(_) | P::TlsOnPlainPort => Refusal::Tls,
            _ => Refusal::Malformed,
        }
    }
}

impl HubStats {
    /// Counts one refusal.
    pub fn refuse(&self, port: Port, why: Refusal) {
        self.refused[port as usize][why as usize].fetch_add(1, Ordering::Relaxed);
    }
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
    /// See [`HubStats::refused`].
    pub refused: [[u64; Refusal::COUNT]; Port::COUNT],
    /// See [`HubStats::open`].
    pub open: [u64; Port::COUNT],
    /// See [`HubStats::replays_active`].
    pub replays_active: u64,
    /// See [`HubStats::replays_waiting`].
    pub replays_waiting: u64,
    /// See [`HubStats::replays_cancelled`].
    pub replays_cancelled: u64,
    /// See [`HubStats::sessions`].
    pub sessions: u64,
    /// See [`HubStats::sessions_forgotten`].
    pub sessions_forgotten: u64,
    /// See [`HubStats::fanout_backlog`].
    pub fanout_backlog: u64,
    /// See [`HubStats::fanout_overflows`].
    pub fanout_overflows: u64,
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
            refused: std::array::from_fn(|p| {
                std::array::from_fn(|r| self.refused[p][r].load(Ordering::Relaxed))
            }),
            open: std::array::from_fn(|p| self.open[p].load(Ordering::Relaxed)),
            replays_active: self.replays_active.load(Ordering::Relaxed),
            replays_waiting: self.replays_waiting.load(Ordering::Relaxed),
            replays_cancelled: self.replays_cancelled.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            sessions_forgotten: self.sessions_forgotten.load(Ordering::Relaxed),
            fanout_backlog: self.fanout_backlog.load(Ordering::Relaxed),
            fanout_overflows: self.fanout_overflows.load(Ordering::Relaxed),
            head,
            p50_us: lat.quantile_us(0.5),
            p99_us: lat.quantile_us(0.99),
        }
    }
}
