//! The per-topic mode's publisher: paced, open loop, pipelined.
//!
//! One SP REQ connection over TCP (the hub's publisher endpoint). Message
//! `m` is **scheduled** at `start + m / rate`; a writer thread sleeps until
//! then, takes one of `inflight` credits (so at most that many requests are
//! outstanding), and writes the request. A reader thread reads the replies
//! (matched by request id = `0x8000_0000 | m`) and gives the credits back.
//!
//! Coordinated omission: every latency is measured from the message's
//! *scheduled* send time, not from when it was actually written. The
//! payload carries the scheduled time, so publish→deliver at the
//! subscribers is measured from it too, and publish→ACK here. If the
//! publisher falls behind (a full window of unanswered requests, or the
//! machine too busy to wake it on time) the wait counts in the latencies,
//! and the lag of each actual send behind its schedule is recorded and
//! reported.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use pinion_proto::{Message, Publish};

use super::hub::{reply_offset, sp_connect, ACK_TIMEOUT};
use super::topics::{topic_name, Schedule};
use super::ws;
use super::{Cpu, Pids};
use crate::driver::new_histogram;
use crate::server;

/// A send later than this behind its schedule counts as late.
pub(crate) const LATE: Duration = Duration::from_millis(1);
/// Largest reply body accepted.
const MAX_REPLY: u64 = 64 * 1024;

/// What to publish.
pub(crate) struct PacedPlan<'a> {
    pub addr: SocketAddr,
    pub schedule: &'a Schedule,
    /// Aggregate messages per second.
    pub rate: f64,
    /// Messages below this index are the warm-up (sent and delivered, not
    /// in the latency figures); the measured window starts at the
    /// scheduled time of message `warmup`.
    pub warmup: usize,
    /// Payload bytes.
    pub size: usize,
    /// Requests outstanding at most.
    pub inflight: usize,
    /// Payload times are nanoseconds since this instant.
    pub base: Instant,
    /// The hubs (and the bench's workers) whose CPU is read.
    pub pids: &'a Pids,
}

/// What the publisher saw.
pub(crate) struct PacedOut {
    /// Scheduled time of the first measured message.
    pub measured_start: Instant,
    /// CPU readings right before the first measured message was written.
    pub cpu0: Option<Cpu>,
    /// Messages written (all of them unless stopped early).
    pub sent: usize,
    /// Per message: its log offset, when ACKed.
    pub offsets: Vec<Option<u64>>,
    /// NACKs and error replies, by kind.
    pub nacks: BTreeMap<String, u64>,
    /// publish→ACK of the measured messages, from the scheduled time, ns.
    pub ack: Histogram<u64>,
    /// Actual send time behind schedule, measured messages, ns.
    pub lag: Histogram<u64>,
    /// Measured messages sent more than [`LATE`] behind schedule.
    pub late: usize,
    /// When the last reply arrived.
    pub last_reply: Option<Instant>,
    /// Why the publisher stopped early, if it did.
    pub error: Option<String>,
    /// Stopped by SIGINT/SIGTERM.
    pub interrupted: bool,
}

impl PacedOut {
    /// ACKed messages with an index in `range`.
    pub(crate) fn acked_in(&self, range: std::ops::Range<usize>) -> usize {
        self.offsets[range].iter().filter(|o| o.is_some()).count()
    }
}

/// Offset of message `m`'s scheduled time from the schedule's start.
pub(crate) fn sched_offset(m: usize, rate: f64) -> Duration {
    Duration::from_nanos((m as f64 * 1e9 / rate).round() as u64)
}

struct Progress {
    sent: AtomicUsize,
    done: AtomicBool,
}

struct ReaderOut {
    offsets: Vec<Option<u64>>,
    nacks: BTreeMap<String, u64>,
    ack: Histogram<u64>,
    last_reply: Option<Instant>,
    error: Option<String>,
}

/// Publishes every message of `p.schedule` on schedule; blocks until all
/// are answered (or the connection fails: see [`PacedOut::error`]).
pub(crate) fn publish(p: &PacedPlan<'_>, bar: &ProgressBar) -> Result<PacedOut, String> {
    let total = p.schedule.topic_of.len();
    assert!(total < 1 << 31, "request ids hold 31 bits of index");
    let mut s = sp_connect(p.addr)?;
    let rd = s
        .try_clone()
        .map_err(|e| format!("publisher: cloning the socket: {e}"))?;
    let names: Vec<String> = (0..p.schedule.k).map(topic_name).collect();
    let (credit_tx, credits) = mpsc::channel::<()>();
    for _ in 0..p.inflight {
        credit_tx.send(()).expect("receiver alive");
    }
    let progress = Arc::new(Progress {
        sent: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    });
    // A little slack so the first messages are not late by construction.
    let start = Instant::now() + Duration::from_millis(20);
    let rate = p.rate;
    let warmup = p.warmup;
    let reader = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("fanout-pub-rx".into())
            .spawn(move || read_replies(rd, credit_tx, progress, start, rate, total, warmup))
            .map_err(|e| format!("spawning the publisher's reader: {e}"))?
    };

    let mut msg = Publish {
        client_id: Some(crate::rand_bytes16().to_vec().into()),
        seq: Some(0),
        topic: None,
        payload: None,
        token: None,
    };
    let mut out = Vec::with_capacity(p.size + 64);
    let mut lag = new_histogram();
    let mut late = 0usize;
    let mut cpu0 = None;
    let mut error = None;
    let mut interrupted = false;
    let mut sent = 0usize;
    bar.set_length(total as u64);
    bar.set_position(0);
    for m in 0..total {
        if server::interrupted() {
            interrupted = true;
            break;
        }
        let at = start + sched_offset(m, rate);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if m == warmup {
            cpu0 = Some(Cpu::now(p.pids));
        }
        match credits.recv_timeout(ACK_TIMEOUT) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                error = Some(format!(
                    "publisher: {} requests unanswered for {ACK_TIMEOUT:?}",
                    p.inflight
                ));
                break;
            }
            // The reader stopped: its error says why.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let actual = Instant::now();
        let behind = actual.saturating_duration_since(at);
        if m >= warmup {
            lag.saturating_record((behind.as_nanos() as u64).max(1_000));
            if behind > LATE {
                late += 1;
            }
        }
        let sched_ns = at.saturating_duration_since(p.base).as_nanos() as u64;
        msg.seq = Some(m as u64 + 1);
        msg.topic = Some(names[p.schedule.topic_of[m] as usize].clone());
        msg.payload = Some(ws::payload(m as u32, sched_ns, p.size).into());
        let id = 0x8000_0000u32 | m as u32;
        out.clear();
        out.extend_from_slice(&((4 + msg.encoded_len()) as u64).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        msg.encode(&mut out).expect("a Vec grows");
        if let Err(e) = s.write_all(&out) {
            error = Some(format!("publisher: writing request {m}: {e}"));
            break;
        }
        sent += 1;
        progress.sent.store(sent, Ordering::Release);
        if m % 64 == 0 {
            bar.set_position(m as u64);
        }
    }
    progress.done.store(true, Ordering::Release);
    bar.set_position(sent as u64);
    if error.is_some() || interrupted {
        // Do not wait out the reader's timeout for answers that may not come.
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let r = reader
        .join()
        .map_err(|_| "the publisher's reader panicked".to_string())?;
    let measured_start = start + sched_offset(warmup, rate);
    Ok(PacedOut {
        measured_start,
        cpu0,
        sent,
        offsets: r.offsets,
        nacks: r.nacks,
        ack: r.ack,
        lag,
        late,
        last_reply: r.last_reply,
        error: error.or(r.error),
        interrupted,
    })
}

fn read_replies(
    mut s: TcpStream,
    credits: mpsc::Sender<()>,
    progress: Arc<Progress>,
    start: Instant,
    rate: f64,
    total: usize,
    warmup: usize,
) -> ReaderOut {
    let mut o = ReaderOut {
        offsets: vec![None; total],
        nacks: BTreeMap::new(),
        ack: new_histogram(),
        last_reply: None,
        error: None,
    };
    let mut answered = vec![false; total];
    let mut answers = 0usize;
    // Short timeouts: the loop checks whether the writer is done.
    if let Err(e) = s.set_read_timeout(Some(Duration::from_millis(100))) {
        o.error = Some(format!("publisher: {e}"));
        return o;
    }
    let mut buf = vec![0u8; 2 * (8 + MAX_REPLY as usize)];
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    loop {
        // Every complete reply in the buffer.
        let now = Instant::now();
        loop {
            let b = &buf[lo..hi];
            if b.len() < 8 {
                break;
            }
            let len = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            if !(4..=MAX_REPLY).contains(&len) {
                o.error = Some(format!("publisher: bad reply length {len}"));
                return o;
            }
            let end = 8 + len as usize;
            if b.len() < end {
                break;
            }
            let id = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
            let m = (id & 0x7fff_ffff) as usize;
            if id & 0x8000_0000 == 0 || m >= total || answered[m] {
                o.error = Some(format!(
                    "publisher: reply to no outstanding request ({id:#x})"
                ));
                return o;
            }
            answered[m] = true;
            answers += 1;
            match reply_offset(&b[12..end]) {
                Ok(offset) => {
                    o.offsets[m] = Some(offset);
                    if m >= warmup {
                        let sched = start + sched_offset(m, rate);
                        let ns = now.saturating_duration_since(sched).as_nanos() as u64;
                        o.ack.saturating_record(ns.max(1_000));
                    }
                }
                Err(kind) => *o.nacks.entry(kind).or_insert(0) += 1,
            }
            o.last_reply = Some(now);
            last_progress = now;
            // The writer may be gone (stopped early): then nobody needs it.
            let _ = credits.send(());
            lo += end;
        }
        if lo == hi {
            lo = 0;
            hi = 0;
        } else if hi == buf.len() {
            buf.copy_within(lo..hi, 0);
            hi -= lo;
            lo = 0;
        }
        let sent = progress.sent.load(Ordering::Acquire);
        if progress.done.load(Ordering::Acquire) && answers >= sent {
            return o;
        }
        if answers < sent && last_progress.elapsed() > ACK_TIMEOUT {
            o.error = Some(format!(
                "publisher: {} requests unanswered for {ACK_TIMEOUT:?}",
                sent - answers
            ));
            return o;
        }
        match s.read(&mut buf[hi..]) {
            Ok(0) => {
                if answers < progress.sent.load(Ordering::Acquire)
                    || !progress.done.load(Ordering::Acquire)
                {
                    o.error
                        .get_or_insert_with(|| "publisher: the hub closed the connection".into());
                }
                return o;
            }
            Ok(n) => hi += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                o.error
                    .get_or_insert_with(|| format!("publisher: reading replies: {e}"));
                return o;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_times() {
        assert_eq!(sched_offset(0, 2000.0), Duration::ZERO);
        assert_eq!(sched_offset(1, 2000.0), Duration::from_micros(500));
        assert_eq!(sched_offset(2000, 2000.0), Duration::from_secs(1));
        assert_eq!(sched_offset(3, 3.0), Duration::from_secs(1));
    }
}
