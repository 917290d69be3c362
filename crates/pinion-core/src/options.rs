//! Socket options: plain data, validated in one place.

use std::time::Duration;

use crate::error::CallerError;

/// The largest max-TTL pinion accepts. NNG's code caps `NNG_OPT_MAXTTL` at 15
/// (its docs say 255); a backtrace of 15 hops plus the pipe id a raw socket
/// prepends fits in [`crate::message::MAX_HEADER`]. Accepting more would let
/// pinion forward messages an NNG device would refuse.
pub const MAX_TTL_LIMIT: u8 = 15;

/// Options of one socket. `Default` gives pinion's defaults, which follow NNG
/// where a user would notice (timeouts, resend time, TTL) and differ where
/// safety asks (a 1 MiB receive limit instead of NNG 1.x's unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Largest message accepted from a peer, in bytes (header included); a peer
    /// announcing more is disconnected before anything is allocated. 0 means
    /// unlimited. Default 1 MiB.
    pub recv_max_size: u64,
    /// How long `send` may wait for room. `None`: forever (default).
    pub send_timeout: Option<Duration>,
    /// How long `recv` may wait for a message. `None`: forever (default).
    pub recv_timeout: Option<Duration>,
    /// Messages the socket queues on the sending side before `send` waits.
    /// Default 128.
    pub send_buffer: usize,
    /// Messages the socket queues on the receiving side before it stops
    /// reading from its pipes. Default 128.
    pub recv_buffer: usize,
    /// Messages that may be in flight towards one pipe (its write queue).
    /// Default 128.
    pub pipe_buffer: u32,
    /// First reconnect interval. Default 100 ms.
    pub reconnect_min: Duration,
    /// Ceiling of the exponential reconnect backoff; zero keeps the interval at
    /// `reconnect_min`. Default 5 s.
    pub reconnect_max: Duration,
    /// Hops a REQ/REP backtrace or PAIR v1 message may take (1..=15). Default 8.
    pub max_ttl: u8,
    /// REQ: resend an unanswered request after this long. `None` disables.
    /// Default 60 s.
    pub req_resend: Option<Duration>,
    /// SURVEYOR: how long a survey collects responses. Default 1 s (NNG's
    /// and nanomsg's default; the RFC's 60 s is not what peers use).
    pub survey_time: Duration,
    /// How long a new pipe may take to send its SP header. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a closed socket keeps writing messages that `send` had
    /// already accepted. Default 1 s.
    pub linger: Duration,
    /// Set TCP_NODELAY on TCP pipes. Default true.
    pub tcp_nodelay: bool,
    /// `tcp://` listeners: bind one `SO_REUSEPORT` socket per core and let
    /// the kernel spread connections, instead of accepting on the socket's
    /// home core and handing each connection to the least-loaded core.
    /// Default false (see docs/BENCHMARKS.md for the measurement).
    pub tcp_reuseport: bool,
    /// Raw mode (NNG's `NNG_OPT_RAW`): the socket hands protocol headers to
    /// the application and takes them from it, and keeps no per-request
    /// state — for devices and proxies. Raw REQ and SURVEYOR have no ids,
    /// timers or contexts; raw SUB does no filtering; raw REP, RESPONDENT
    /// and BUS expose the pipe-id header; raw PAIR v1 exposes the hop count.
    pub raw: bool,
    /// Seed for request ids and jitter. The runtime fills it from the OS.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            recv_max_size: 1024 * 1024,
            send_timeout: None,
            recv_timeout: None,
            send_buffer: 128,
            recv_buffer: 128,
            pipe_buffer: 128,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_ttl: 8,
            req_resend: Some(Duration::from_secs(60)),
            survey_time: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(1),
            tcp_nodelay: true,
            tcp_reuseport: false,
            raw: false,
            seed: 0x5eed_5eed_5eed_5eed,
        }
    }
}

impl Options {
    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), CallerError> {
        if self.max_ttl == 0 || self.max_ttl > MAX_TTL_LIMIT {
            return Err(CallerError::InvalidOption);
        }
        if self.pipe_buffer == 0 || self.recv_buffer == 0 {
            return Err(CallerError::InvalidOption);
        }
        if self.send_buffer > 1 << 20 || self.recv_buffer > 1 << 20 {
            return Err(CallerError::InvalidOption);
        }
        Ok(())
    }
}
