//! Building blocks the attacks share: the hub's ports, many held
//! connections watched until the hub closes them, paced loops.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::hub::Addrs;
use crate::trial::Ctx;
use crate::wire::{self, Ended};

/// One of the hub's listening ports, as `/metrics` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Publishers: SP REP over TCP.
    Pub,
    /// Subscribers: SP PUB over TCP.
    Sub,
    /// HTTP (dashboard, metrics, WebSocket routes).
    Http,
}

impl Port {
    pub fn label(self) -> &'static str {
        match self {
            Port::Pub => "pub",
            Port::Sub => "sub",
            Port::Http => "http",
        }
    }
    pub fn addr(self, a: &Addrs) -> SocketAddr {
        match self {
            Port::Pub => a.publ,
            Port::Sub => a.sub,
            Port::Http => a.http,
        }
    }
    /// The SP header a real peer of this port sends (HTTP: none).
    pub fn sp_peer_header(self) -> Option<[u8; 8]> {
        match self {
            Port::Pub => Some(wire::sp_header(wire::sp::REQ)),
            Port::Sub => Some(wire::sp_header(wire::sp::SUB)),
            Port::Http => None,
        }
    }
}

/// A connection the attacker holds open, and how it ended.
pub struct Held {
    pub s: TcpStream,
    pub opened: Instant,
    got: Vec<u8>,
    /// How it ended and when (after `opened`).
    pub ended: Option<(Ended, Duration)>,
}

impl Held {
    /// Holds `s`, non-blocking from now on (so that watching thousands
    /// costs one read each per look, not three system calls).
    pub fn new(s: TcpStream) -> Held {
        let _ = s.set_nonblocking(true);
        Held {
            s,
            opened: Instant::now(),
            got: Vec::new(),
            ended: None,
        }
    }

    /// Looks (without blocking) whether the hub closed it.
    pub fn poll(&mut self) -> bool {
        use std::io::{ErrorKind, Read};
        let mut chunk = [0u8; 4096];
        while self.ended.is_none() {
            let end = match self.s.read(&mut chunk) {
                Ok(0) => Ended::Eof(std::mem::take(&mut self.got)),
                Ok(n) => {
                    if self.got.len() < 64 << 10 {
                        self.got.extend_from_slice(&chunk[..n]);
                    }
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Ended::Reset(std::mem::take(&mut self.got)),
            };
            self.ended = Some((end, self.opened.elapsed()));
        }
        self.ended.is_some()
    }

    /// Sends `bytes` if still open (a failed write ends it as a reset).
    pub fn send(&mut self, bytes: &[u8]) {
        if self.poll() {
            return;
        }
        if self.s.write_all(bytes).is_err() {
            self.poll();
            if self.ended.is_none() {
                self.ended = Some((
                    Ended::Reset(std::mem::take(&mut self.got)),
                    self.opened.elapsed(),
                ));
            }
        }
    }

    /// The HTTP status the hub answered with before closing, if any.
    pub fn status(&self) -> Option<u16> {
        self.ended.as_ref().and_then(|(e, _)| e.http_status())
    }

    /// Bytes received (so far, or before the end).
    pub fn received(&self) -> &[u8] {
        match &self.ended {
            Some((e, _)) => e.bytes(),
            None => &self.got,
        }
    }
}

/// Polls every held connection until all have ended or `limit` (from the
/// first one's opening) has passed; polls every `every`.
pub fn watch(held: &mut [Held], limit: Duration, every: Duration) {
    let Some(first) = held.iter().map(|h| h.opened).min() else {
        return;
    };
    loop {
        let open = held
            .iter_mut()
            .map(|h| h.poll())
            .filter(|closed| !closed)
            .count();
        if open == 0 || first.elapsed() >= limit {
            return;
        }
        std::thread::sleep(every);
    }
}

/// Summary of how held connections ended.
#[derive(Debug, Default)]
pub struct Endings {
    pub total: usize,
    pub still_open: usize,
    /// Ended (FIN or reset), and the range of times after opening.
    pub closed: usize,
    pub earliest: Option<Duration>,
    pub latest: Option<Duration>,
    /// HTTP statuses seen, by code.
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// Ended without an HTTP status.
    pub no_status: usize,
}

pub fn endings(held: &[Held]) -> Endings {
    let mut e = Endings {
        total: held.len(),
        ..Endings::default()
    };
    for h in held {
        match &h.ended {
            None => e.still_open += 1,
            Some((end, at)) => {
                e.closed += 1;
                e.earliest = Some(e.earliest.map_or(*at, |x| x.min(*at)));
                e.latest = Some(e.latest.map_or(*at, |x| x.max(*at)));
                match end.http_status() {
                    Some(s) => *e.statuses.entry(s).or_default() += 1,
                    None => e.no_status += 1,
                }
            }
        }
    }
    e
}

impl std::fmt::Display for Endings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} closed by the hub", self.closed, self.total)?;
        if let (Some(a), Some(b)) = (self.earliest, self.latest) {
            write!(f, " after {:.2}–{:.2} s", a.as_secs_f64(), b.as_secs_f64())?;
        }
        for (s, n) in &self.statuses {
            write!(f, ", {s} ×{n}")?;
        }
        if self.no_status > 0 && !self.statuses.is_empty() {
            write!(f, ", no status ×{}", self.no_status)?;
        }
        Ok(())
    }
}

/// Opens `n` connections to `to`, spread over the source addresses
/// `first_src..first_src + sources`, each sending `first` right away.
/// Connections that fail to open are counted, not fatal.
pub fn open_many(
    n: usize,
    first_src: usize,
    sources: usize,
    to: SocketAddr,
    first: &[u8],
) -> (Vec<Held>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for i in 0..n {
        match wire::connect_from(wire::src(first_src + i % sources), to, None) {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                if !first.is_empty() && s.write_all(first).is_err() {
                    failed += 1;
                    continue;
                }
                held.push(Held::new(s));
            }
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

/// Runs `step(i)` about `rate` times a second until `ctx` says stop, `step`
/// returns false, or `max` steps; returns the steps done and the time.
pub fn paced(
    ctx: &Ctx<'_>,
    rate: u64,
    max: u64,
    mut step: impl FnMut(u64) -> bool,
) -> (u64, Duration) {
    let start = Instant::now();
    let period_ns = 1_000_000_000 / rate.max(1);
    let mut i = 0;
    while i < max && !ctx.stopped() {
        let due = start + Duration::from_nanos(period_ns.saturating_mul(i));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if !step(i) {
            i += 1;
            break;
        }
        i += 1;
    }
    (i, start.elapsed())
}

/// Spaces steps `1/rate` apart: `wait(i)` returns at the start + i/rate.
pub struct Pacer {
    start: Instant,
    period_ns: u64,
}

impl Pacer {
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            start: Instant::now(),
            period_ns: 1_000_000_000 / rate.max(1),
        }
    }
    pub fn wait(&self, i: usize) {
        let due = self.start + Duration::from_nanos(self.period_ns * i as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}
