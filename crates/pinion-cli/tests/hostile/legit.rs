//! The legitimate traffic every case measures, from 127.0.0.1 on threads
//! of the test process:
//!
//! * a **steady publisher**: one SP REQ connection over TCP, open loop at
//!   [`RATE`] publishes per second (each sent at its scheduled time whether
//!   or not earlier ones were answered, at most [`MAX_INFLIGHT`]
//!   unanswered), one client id, seq 1, 2, 3, …; publish→ack is measured
//!   from the moment a request is written to the moment its ACK is read;
//! * a **WebSocket subscriber** on `/sub?topic=legit/&from=0` (no Origin,
//!   as a CLI or native client connects; it answers pings): publish→deliver
//!   is measured from the same send time to the moment the delivery is
//!   read. `from=0` means nothing published before it was registered can
//!   be missed.
//!
//! Every message must be acked (never NACKed) and delivered exactly once,
//! in order; anything else is recorded as a failure of the case.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hub::Addrs;
use crate::wire::{self, Upgraded, LEGIT};

/// Publishes per second. The debug build of the hub (what `cargo test`
/// runs) spends about 0.4-0.6 ms of CPU per message published and
/// delivered: at 1,000/s the legitimate load alone takes half a core of
/// the two, and at 1,500/s it took nearly one, which made the hub's own
/// latency noisy (p99 up to 17 ms in windows with nothing attacking).
/// Three windows of 1,500 samples take about 4.5 s per case.
pub const RATE: u64 = 1000;
/// Unanswered requests at most; past it the publisher waits (a hub that
/// stalls shows up as the latency of those already sent).
pub const MAX_INFLIGHT: u64 = 2000;
/// Seqs the publisher can send in one case (about 5 minutes at [`RATE`]).
const CAPACITY: usize = 1 << 19;
/// The legitimate publisher's client id.
pub const LEGIT_ID: [u8; 16] = *b"legit-publisher!";
/// Its topic; the legitimate subscriber filters on `legit/`.
pub const TOPIC: &[u8] = b"legit/p";

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the suite started (never 0: 0 marks "not yet").
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// What the threads record; indexed by seq.
pub struct Shared {
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
    /// The next seq to send (seqs `1..next` were sent).
    next: AtomicU64,
    acks: AtomicU64,
    deliveries: AtomicU64,
    sub_ready: AtomicBool,
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(why);
        }
    }
}

/// Latency figures of the messages sent in one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowStats {
    pub sent: usize,
    pub ack_p50_ns: u64,
    pub ack_p99_ns: u64,
    pub del_p50_ns: u64,
    pub del_p99_ns: u64,
    pub missing_acks: usize,
    pub missing_deliveries: usize,
}

/// The `q` quantile of `v` (nearest rank: the smallest value with at
/// least q of the samples at or below it).
pub fn quantile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub struct Legit {
    sh: Arc<Shared>,
    stop_sending: Arc<AtomicBool>,
    stop_all: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Legit {
    /// Starts the subscriber, then the publisher; returns once a first
    /// message went all the way through (or `Err` after 15 s).
    pub fn start(addrs: Addrs) -> Result<Legit, String> {
        let _ = now_ns();
        let sh = Arc::new(Shared {
            sent: (0..CAPACITY).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..CAPACITY).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..CAPACITY).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(1),
            acks: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            sub_ready: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
        });
        let stop_sending = Arc::new(AtomicBool::new(false));
        let stop_all = Arc::new(AtomicBool::new(false));
        let mut l = Legit {
            sh: sh.clone(),
            stop_sending: stop_sending.clone(),
            stop_all: stop_all.clone(),
            threads: Vec::new(),
        };
        {
            let (sh, stop_all) = (sh.clone(), stop_all.clone());
            l.threads.push(std::thread::spawn(move || {
                subscriber(addrs.http, &sh, &stop_all)
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sh.sub_ready.load(Ordering::Acquire) {
            if Instant::now() > deadline || !sh.failures.lock().unwrap().is_empty() {
                let f = l.failures();
                l.stop(Duration::ZERO);
                return Err(format!("legitimate subscriber not connected: {f:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        {
            let (sh, stop_sending, stop_all) = (sh.clone(), stop_sending.clone(), stop_all.clone());
            l.threads.push(std::thread::spawn(move || {
                publisher(addrs.publ, sh, &stop_sending, &stop_all)
            }));
        }
        while sh.deliveries.load(Ordering::Acquire) == 0 {
            if Instant::now() > deadline || !sh.failures.lock().unwrap().is_empty() {
                let f = l.failures();
                l.stop(Duration::ZERO);
                return Err(format!("no legitimate message went through in 15 s: {f:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(l)
    }

    /// Messages sent with a send time in `[a, b)`.
    pub fn sent_between(&self, a: u64, b: u64) -> usize {
        let n = self.sh.next.load(Ordering::Acquire) as usize;
        // Send times grow with seq: two binary searches over 1..n.
        let first_at_or_after = |t: u64| {
            let (mut lo, mut hi) = (1usize, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if self.sh.sent[mid].load(Ordering::Acquire) < t {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        first_at_or_after(b).saturating_sub(first_at_or_after(a))
    }

    /// Latencies of the messages sent in `[a, b)` (those not answered or
    /// not delivered yet are counted as missing).
    pub fn window(&self, a: u64, b: u64) -> WindowStats {
        let n = self.sh.next.load(Ordering::Acquire) as usize;
        let (mut acks, mut dels) = (Vec::new(), Vec::new());
        let mut w = WindowStats::default();
        for seq in 1..n {
            let t = self.sh.sent[seq].load(Ordering::Acquire);
            if t < a || t >= b {
                continue;
            }
            w.sent += 1;
            match self.sh.acked[seq].load(Ordering::Acquire) {
                0 => w.missing_acks += 1,
                at => acks.push(at.saturating_sub(t)),
            }
            match self.sh.delivered[seq].load(Ordering::Acquire) {
                0 => w.missing_deliveries += 1,
                at => dels.push(at.saturating_sub(t)),
            }
        }
        w.ack_p50_ns = quantile(&mut acks, 0.50);
        w.ack_p99_ns = quantile(&mut acks, 0.99);
        w.del_p50_ns = quantile(&mut dels, 0.50);
        w.del_p99_ns = quantile(&mut dels, 0.99);
        w
    }

    pub fn failures(&self) -> Vec<String> {
        self.sh.failures.lock().unwrap().clone()
    }

    /// Stops sending, waits up to `drain` for every message sent to be
    /// acked and delivered, then stops both threads. Returns how many
    /// were sent, acked and delivered.
    pub fn stop(&mut self, drain: Duration) -> (u64, u64, u64) {
        self.stop_sending.store(true, Ordering::Release);
        let deadline = Instant::now() + drain;
        let sent = || self.sh.next.load(Ordering::Acquire) - 1;
        while Instant::now() < deadline
            && (self.sh.acks.load(Ordering::Acquire) < sent()
                || self.sh.deliveries.load(Ordering::Acquire) < sent())
            && self.sh.failures.lock().unwrap().is_empty()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop_all.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            sent(),
            self.sh.acks.load(Ordering::Acquire),
            self.sh.deliveries.load(Ordering::Acquire),
        )
    }
}

impl Drop for Legit {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(Duration::ZERO);
        }
    }
}

fn publisher(
    to: SocketAddr,
    sh: Arc<Shared>,
    stop_sending: &AtomicBool,
    stop_all: &Arc<AtomicBool>,
) {
    use std::io::{Read, Write};
    let mut s = match wire::sp_connect(LEGIT, to, wire::sp::REQ, wire::sp::REP) {
        Ok(s) => s,
        Err(e) => return sh.fail(format!("legitimate publisher cannot connect: {e}")),
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut rd = s.try_clone().unwrap();
    let _ = rd.set_read_timeout(Some(Duration::from_millis(100)));
    let reader = {
        let (sh, stop_all) = (sh.clone(), stop_all.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 << 10];
            while !stop_all.load(Ordering::Acquire) {
                match rd.read(&mut chunk) {
                    Ok(0) => {
                        return sh
                            .fail("the hub closed the legitimate publisher's connection".into())
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if wire::is_timeout(&e) => continue,
                    Err(e) => return sh.fail(format!("legitimate publisher: read: {e}")),
                }
                let frames = match wire::take_sp_frames(&mut buf, 1 << 20) {
                    Ok(f) => f,
                    Err(e) => return sh.fail(format!("legitimate publisher: {e}")),
                };
                let now = now_ns();
                for f in frames {
                    match wire::decode_reply(&f) {
                        Ok((_, wire::Answer::Ack { seq, .. })) => {
                            let Some(slot) = sh.acked.get(seq as usize) else {
                                sh.fail(format!("ACK for seq {seq} never sent"));
                                continue;
                            };
                            if slot.swap(now, Ordering::AcqRel) != 0 {
                                sh.fail(format!("second ACK for seq {seq}"));
                            }
                            sh.acks.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok((_, a)) => sh.fail(format!("legitimate publish refused: {a:?}")),
                        Err(e) => sh.fail(format!("legitimate publisher: bad reply: {e}")),
                    }
                }
            }
        })
    };
    let period = 1_000_000_000 / RATE;
    let t0 = now_ns();
    let mut seq: u64 = 1;
    let payload = [b'.'; 32];
    while !stop_sending.load(Ordering::Acquire) && (seq as usize) < CAPACITY {
        let due = t0 + (seq - 1) * period;
        let now = now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos((due - now).min(2_000_000)));
            continue;
        }
        if (seq - 1).saturating_sub(sh.acks.load(Ordering::Acquire)) >= MAX_INFLIGHT {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let body = wire::req_body(seq as u32, &wire::publish(&LEGIT_ID, seq, TOPIC, &payload));
        let frame = wire::sp_frame(&body);
        sh.sent[seq as usize].store(now_ns(), Ordering::Release);
        sh.next.store(seq + 1, Ordering::Release);
        if let Err(e) = s.write_all(&frame) {
            sh.fail(format!("legitimate publisher: write: {e}"));
            break;
        }
        seq += 1;
    }
    if (seq as usize) >= CAPACITY {
        sh.fail(format!(
            "legitimate publisher ran out of seqs ({CAPACITY}): case too long"
        ));
    }
    let _ = reader.join();
}

fn subscriber(http: SocketAddr, sh: &Shared, stop_all: &AtomicBool) {
    use pinion_proto::{Delivery, Message};
    let mut ws = match wire::ws_connect(LEGIT, http, "/sub?topic=legit%2F&from=0", None, None, None)
    {
        Ok(Upgraded::Yes(ws)) => ws,
        Ok(Upgraded::No(h)) => {
            return sh.fail(format!("legitimate subscriber refused: {}", h.text))
        }
        Err(e) => return sh.fail(format!("legitimate subscriber cannot connect: {e}")),
    };
    let _ = ws.s.set_read_timeout(Some(Duration::from_millis(100)));
    sh.sub_ready.store(true, Ordering::Release);
    let mut last_offset: Option<u64> = None;
    while !stop_all.load(Ordering::Acquire) {
        let f = match ws.read_frame(1 << 20) {
            Ok(f) => f,
            Err(e) if wire::is_timeout(&e) => continue,
            Err(e) => return sh.fail(format!("legitimate subscriber: {e}")),
        };
        let now = now_ns();
        match f.opcode {
            0x2 if !f.fin => sh.fail("a delivery split over frames (they are small)".into()),
            0x2 => {
                let Some(nul) = f.payload.iter().position(|&b| b == 0) else {
                    sh.fail("delivery without the topic separator".into());
                    continue;
                };
                if !f.payload[..nul].starts_with(b"legit/") {
                    sh.fail(format!(
                        "legitimate subscriber got topic {:?}",
                        String::from_utf8_lossy(&f.payload[..nul])
                    ));
                    continue;
                }
                let d = match Delivery::decode(&f.payload[nul + 1..]) {
                    Ok(d) => d,
                    Err(e) => {
                        sh.fail(format!("undecodable delivery: {e}"));
                        continue;
                    }
                };
                let offset = d.offset.unwrap_or(0);
                if last_offset.is_some_and(|l| offset <= l) {
                    sh.fail(format!("delivery offset {offset} after {last_offset:?}"));
                }
                last_offset = Some(offset);
                if d.client_id.as_deref() != Some(&LEGIT_ID[..]) {
                    sh.fail("delivery from another client on legit/".into());
                    continue;
                }
                let seq = d.seq.unwrap_or(0) as usize;
                match sh.delivered.get(seq) {
                    Some(slot) if seq > 0 => {
                        if slot.swap(now, Ordering::AcqRel) != 0 {
                            sh.fail(format!("seq {seq} delivered twice"));
                        }
                        sh.deliveries.fetch_add(1, Ordering::AcqRel);
                    }
                    _ => sh.fail(format!("delivery of seq {seq}, never sent")),
                }
            }
            0x9 => {
                // Ping: a live client answers, so the hub's dead-peer
                // check must never drop this one.
                if let Err(e) = ws.send(true, 0xA, &f.payload) {
                    return sh.fail(format!("legitimate subscriber: pong: {e}"));
                }
            }
            0x8 => {
                return sh.fail(format!(
                    "the hub closed the legitimate subscriber: {} {}",
                    f.close_code(),
                    f.close_reason()
                ))
            }
            _ => {}
        }
    }
    let _ = ws.send(true, 0x8, &1000u16.to_be_bytes());
}
