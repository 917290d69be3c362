//! `pinion-bench fanout`: one-to-many patterns (issue 3), pinion against NNG
//! in the same run, over tcp://127.0.0.1, everything in this one process.
//!
//! * **pub/sub fan-out.** One PUB listens, N SUB sockets dial it and
//!   subscribe to everything (the empty topic). The publisher sends M
//!   messages of `size` bytes; each carries its sequence number in its first
//!   8 bytes. Deliveries/s = messages received by all subscribers together /
//!   time from the first send to the moment the last subscriber got its last
//!   message. PUB never blocks and drops what a slow subscriber cannot take
//!   (both implementations drop the oldest message of a full queue), so
//!   "as fast as the API allows" alone measures how much is thrown away. The
//!   main figure is therefore **paced**: the publisher sends batches of
//!   `batch` messages as fast as `send` returns, but never has more than
//!   `depth` batches (`batch × depth` messages) outstanding towards the
//!   slowest subscriber — the subscribers report every finished batch
//!   through shared counters of this process. The window (16 × 7 = 112
//!   messages by default) is below the 128-message queues on either side
//!   (pinion: 128 pipe credits on the PUB side, a 128-message SUB receive
//!   queue; NNG: PUB SENDBUF 128, SUB RECVBUF 128), so the normal case loses
//!   nothing, and every run checks that (delivered fraction).
//!   The **overload** figure is the same without pacing: the publisher sends
//!   all M back to back and we record how much arrived.
//! * **survey rounds.** One SURVEYOR listens, R RESPONDENT sockets dial it
//!   and answer every survey at once with its own body. A round = send a
//!   survey, receive all R responses. `survey_time` is long (2 s) so rounds
//!   end by collecting everything, not by the deadline; a round that does
//!   end by the deadline is counted as incomplete.
//!
//! Readiness: before timing, the publisher sends 1-byte "hello" messages every
//! 5 ms until every subscriber has seen one (subscribers ignore messages that
//! are not `size` bytes long), so every pipe is up, then waits 20 ms for the
//! hellos to drain; the surveyor runs untimed rounds (300 ms per-response
//! timeout) until three in a row get every response, then untimed warm-up
//! rounds.
//!
//! End of a pub/sub run: subscribers call a plain `recv` (no timeout, so no
//! timer on the hot path) until the message with the last sequence number
//! arrives. Once the publisher is done, the measuring thread waits until
//! every subscriber has it, or until no subscriber has received anything for
//! 500 ms (the rest was dropped), and then closes the subscriber sockets.
//!
//! NNG (the `nng` crate over Debian's libnng 1.5.2): blocking calls, one
//! thread per SUB or RESPONDENT socket, the publisher/surveyor on the
//! measuring thread; SUB RECVBUF and PUB SENDBUF 128, as NNG's perf tools
//! set their buffers (both already pinion's defaults). pinion: the async API
//! (`pinion-async`): the publisher/surveyor is a task on pinion's core 0, the
//! subscribers/respondents are tasks spread over the cores starting at core 1
//! (subscriber i on core (i + 1) mod cores), each opening its socket on its
//! own core; default options apart from `survey_time`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use hdrhistogram::Histogram;

use crate::common::{median, new_rtt_histogram, payload, record_rtt, with_watchdog};
use crate::group;

/// Subscribers wait this long for the first message (the set-up of every
/// pipe), and the publisher this long for every subscriber to be ready.
const SETUP_LIMIT: Duration = Duration::from_secs(20);
/// Once the publisher is done, subscribers that have not got their last
/// message are closed when no subscriber has received anything for this
/// long (the rest was dropped).
const IDLE: Duration = Duration::from_millis(500);
/// The paced publisher gives up when a batch is not acknowledged this long.
const STALL: Duration = Duration::from_secs(5);
/// Hello interval while waiting for subscribers.
const HELLO_EVERY: Duration = Duration::from_millis(5);
/// Survey warm-up: per-response timeout.
const WARM_RECV: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    All,
    Pubsub,
    Survey,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Runs per figure and implementation (interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Subscriber counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
    pub subs: Vec<usize>,
    /// Payload size of a published message (at least 8: the sequence number).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Target duration of one pub/sub run (M is calibrated per implementation
    /// and subscriber count).
    #[arg(long, default_value_t = 1.5)]
    pub secs: f64,
    /// Pacing: messages per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: u64,
    /// Pacing: batches the publisher may have outstanding towards the slowest
    /// subscriber (window = batch × depth messages).
    #[arg(long, default_value_t = 7)]
    pub depth: u64,
    /// Skip the unpaced (overload) pub/sub runs.
    #[arg(long)]
    pub no_overload: bool,
    /// Respondents answering each survey.
    #[arg(long, default_value_t = 100)]
    pub respondents: usize,
    /// Target duration of one survey run.
    #[arg(long, default_value_t = 2.0)]
    pub survey_secs: f64,
    /// The surveyor's survey_time, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub survey_time_ms: u64,
    /// Which part to run.
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Nng,
    Pinion,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Nng => "NNG",
            Imp::Pinion => "pinion-async",
        }
    }
}

// ---------------------------------------------------------------------------
// Shared measurement state.

/// Pub/sub parameters of one run.
#[derive(Clone, Copy, Debug)]
struct PubSubParams {
    subs: usize,
    msgs: u64,
    size: usize,
    batch: u64,
    depth: u64,
    paced: bool,
}

/// The flow of one pub/sub run between the publisher and its subscribers:
/// readiness, and per-batch completion counters for pacing.
struct Pacer {
    subs: usize,
    paced: bool,
    /// Subscribers that have seen a message.
    ready: AtomicUsize,
    /// Subscribers still to finish batch b, in slot b % ring.len().
    ring: Vec<AtomicUsize>,
    /// Batches every subscriber has finished (they finish in order).
    done: AtomicU64,
    /// Messages each subscriber has received so far (for the end-of-run
    /// idle check, not the hot path's synchronisation).
    progress: Vec<Padded>,
    /// Subscribers that got the last message.
    finished: AtomicUsize,
    /// Set before the coordinator closes the subscribers.
    stop: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Pacer {
    fn new(p: &PubSubParams) -> Pacer {
        Pacer {
            subs: p.subs,
            paced: p.paced,
            ready: AtomicUsize::new(0),
            ring: (0..=p.depth).map(|_| AtomicUsize::new(0)).collect(),
            done: AtomicU64::new(0),
            progress: (0..p.subs).map(|_| Padded::default()).collect(),
            finished: AtomicUsize::new(0),
            stop: Default::default(),
            notify: tokio::sync::Notify::new(),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Wakes the publisher, whether it waits as a task or as a thread.
    fn kick(&self) {
        self.notify.notify_one();
        drop(self.lock.lock().unwrap());
        self.cv.notify_all();
    }

    fn sub_ready(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
        self.kick();
    }

    fn all_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) >= self.subs
    }

    /// Publisher, before sending batch `b`: every subscriber has it to do.
    fn arm(&self, b: u64) {
        let slot = &self.ring[(b % self.ring.len() as u64) as usize];
        slot.store(self.subs, Ordering::Release);
    }

    /// A subscriber has received the last message of batch `b` (or a later one).
    fn sub_done(&self, b: u64) {
        if !self.paced {
            return;
        }
        let slot = &self.ring[(b % self.ring.len() as u64) as usize];
        if slot.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.fetch_add(1, Ordering::AcqRel);
            self.kick();
        }
    }

    fn done_at_least(&self, n: u64) -> bool {
        self.done.load(Ordering::Acquire) >= n
    }

    /// Waits (as a thread) until `cond` holds; false on timeout.
    fn wait_blocking(&self, timeout: Duration, cond: impl Fn(&Pacer) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap();
        while !cond(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    /// Waits (as a task; one waiter only) until `cond` holds; false on timeout.
    #[cfg_attr(not(feature = "pinion"), allow(dead_code))]
    async fn wait_async(&self, timeout: Duration, cond: impl Fn(&Pacer) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // notify_one stores a permit when nobody waits: no lost wake-up.
            let _ = tokio::time::timeout(left, self.notify.notified()).await;
        }
    }
}

/// A counter on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Pacer {
    fn total_progress(&self) -> u64 {
        self.progress
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// The coordinator, once the publisher is done: waits until every
    /// subscriber has its last message, or nothing has arrived anywhere for
    /// [`IDLE`]; then sets `stop`, and `close` closes the subscribers.
    fn finish(&self, publisher_ok: bool, close: impl FnOnce()) {
        if publisher_ok {
            let mut last = self.total_progress();
            let mut since = Instant::now();
            while self.finished.load(Ordering::Acquire) < self.subs {
                thread::sleep(Duration::from_millis(2));
                let now = self.total_progress();
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= IDLE {
                    break;
                }
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        close();
    }
}

/// The message with sequence number `seq`.
fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

fn seq_of(body: &[u8]) -> u64 {
    u64::from_le_bytes(body[..8].try_into().expect("8 bytes"))
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
struct SubResult {
    received: u64,
    last_at: Option<Instant>,
    /// Messages whose sequence number was not above the previous one.
    out_of_order: u64,
}

/// A subscriber's bookkeeping, shared by both implementations.
struct SubState {
    p: PubSubParams,
    index: usize,
    ready: bool,
    last_seq: Option<u64>,
    /// Next batch this subscriber has to report finished.
    next_batch: u64,
    res: SubResult,
}

enum Step {
    More,
    Done,
}

impl SubState {
    fn new(p: PubSubParams, index: usize) -> SubState {
        SubState {
            p,
            index,
            ready: false,
            last_seq: None,
            next_batch: 0,
            res: SubResult::default(),
        }
    }

    fn on_msg(&mut self, body: &[u8], pacer: &Pacer) -> Result<Step> {
        if !self.ready {
            self.ready = true;
            pacer.sub_ready();
        }
        if body.len() != self.p.size {
            ensure!(body.len() == 1, "unexpected {}-byte message", body.len());
            return Ok(Step::More); // hello
        }
        let now = Instant::now();
        let seq = seq_of(body);
        ensure!(seq < self.p.msgs, "sequence number {seq} out of range");
        if self.last_seq.is_some_and(|l| seq <= l) {
            self.res.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        self.res.received += 1;
        self.res.last_at = Some(now);
        pacer.progress[self.index]
            .0
            .store(self.res.received, Ordering::Relaxed);
        while (self.next_batch + 1) * self.p.batch <= seq + 1 {
            pacer.sub_done(self.next_batch);
            self.next_batch += 1;
        }
        Ok(if seq + 1 == self.p.msgs {
            pacer.finished.fetch_add(1, Ordering::AcqRel);
            Step::Done
        } else {
            Step::More
        })
    }
}

/// One pub/sub run.
#[derive(Debug, Clone)]
struct PubSubSample {
    sent: u64,
    delivered: u64,
    expected: u64,
    elapsed: Duration,
    out_of_order: u64,
    /// pinion only: messages the PUB socket dropped from full per-pipe
    /// queues (`StatsSnapshot::queue_drops`); the rest of the losses are
    /// the SUB side's full receive queues.
    pub_drops: Option<u64>,
}

impl PubSubSample {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
    fn fraction(&self) -> f64 {
        self.delivered as f64 / self.expected as f64
    }
}

fn pubsub_sample(p: &PubSubParams, start: Instant, subs: &[SubResult]) -> Result<PubSubSample> {
    let end = subs
        .iter()
        .filter_map(|s| s.last_at)
        .max()
        .context("no subscriber received anything")?;
    Ok(PubSubSample {
        sent: p.msgs,
        delivered: subs.iter().map(|s| s.received).sum(),
        expected: p.msgs * p.subs as u64,
        elapsed: end.saturating_duration_since(start),
        out_of_order: subs.iter().map(|s| s.out_of_order).sum(),
        pub_drops: None,
    })
}

/// One survey run.
#[derive(Debug, Clone)]
struct SurveySample {
    rounds: u64,
    total: Duration,
    /// Round times in ns.
    hist: Histogram<u64>,
    incomplete: u64,
    stale: u64,
}

impl SurveySample {
    fn rate(&self) -> f64 {
        self.rounds as f64 / self.total.as_secs_f64()
    }
    fn q_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }
}

/// Survey parameters of one run.
#[derive(Clone, Copy, Debug)]
struct SurveyParams {
    respondents: usize,
    rounds: u64,
    warm: u64,
    size: usize,
    survey_time: Duration,
}

/// The survey body of round `id`.
fn survey_body(size: usize, id: u64) -> Vec<u8> {
    let mut b = payload(size.max(8));
    stamp(&mut b, id);
    b
}

// ---------------------------------------------------------------------------
// NNG.

mod nng_side {
    use super::*;
    use nng::options::protocol::pubsub::Subscribe;
    use nng::options::protocol::survey::SurveyTime;
    use nng::options::transport::tcp::BoundPort;
    use nng::options::{Options, RecvBufferSize, RecvTimeout, SendBufferSize};
    use nng::{Error as NngError, Listener, Message, Protocol, Socket};

    fn listen(proto: Protocol) -> Result<(Socket, Listener, String)> {
        let sock = Socket::new(proto).context("nng socket")?;
        let listener = Listener::new(&sock, "tcp://127.0.0.1:0").context("nng listen")?;
        let port = listener.get_opt::<BoundPort>().context("nng bound port")?;
        Ok((sock, listener, format!("tcp://127.0.0.1:{port}")))
    }

    pub fn pubsub(p: PubSubParams) -> Result<PubSubSample> {
        let (pubs, _l, url) = listen(Protocol::Pub0)?;
        pubs.set_opt::<SendBufferSize>(128)
            .context("nng PUB SENDBUF")?;
        let pacer = Arc::new(Pacer::new(&p));
        let registry: Arc<Mutex<Vec<Socket>>> = Arc::default();
        let mut subs = Vec::with_capacity(p.subs);
        for i in 0..p.subs {
            let (url, pacer, registry) = (url.clone(), pacer.clone(), registry.clone());
            subs.push(thread::Builder::new().name(format!("nng-sub-{i}")).spawn(
                move || -> Result<SubResult> {
                    let s = Socket::new(Protocol::Sub0)?;
                    s.set_opt::<RecvBufferSize>(128)?;
                    s.set_opt::<Subscribe>(Vec::new())?;
                    registry.lock().unwrap().push(s.clone());
                    let mut st = SubState::new(p, i);
                    if pacer.stop.load(Ordering::SeqCst) {
                        return Ok(st.res);
                    }
                    s.dial(&url).with_context(|| format!("nng dial {url}"))?;
                    loop {
                        match s.recv() {
                            Ok(m) => {
                                if let Step::Done = st.on_msg(&m, &pacer)? {
                                    break;
                                }
                            }
                            Err(NngError::Closed) => break,
                            Err(e) => return Err(e).context("nng sub recv"),
                        }
                    }
                    Ok(st.res)
                },
            )?);
        }
        let published = publish(&pubs, &pacer, &p);
        pacer.finish(published.is_ok(), || {
            for s in registry.lock().unwrap().iter() {
                s.close();
            }
        });
        let mut results = Vec::with_capacity(p.subs);
        let mut first_err = None;
        for h in subs {
            match h.join().expect("nng subscriber panicked") {
                Ok(r) => results.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        drop(pubs);
        let start = published?;
        if let Some(e) = first_err {
            return Err(e);
        }
        pubsub_sample(&p, start, &results)
    }

    fn publish(pubs: &Socket, pacer: &Pacer, p: &PubSubParams) -> Result<Instant> {
        let hello_deadline = Instant::now() + SETUP_LIMIT;
        while !pacer.all_ready() {
            ensure!(
                Instant::now() < hello_deadline,
                "only {}/{} subscribers ready after {SETUP_LIMIT:?}",
                pacer.ready.load(Ordering::Acquire),
                p.subs
            );
            pubs.send(Message::from(&[0u8][..]))
                .map_err(|(_, e)| e)
                .context("nng send hello")?;
            pacer.wait_blocking(HELLO_EVERY, Pacer::all_ready);
        }
        thread::sleep(Duration::from_millis(20)); // let the hellos drain
        let mut buf = payload(p.size);
        let batches = p.msgs / p.batch;
        let start = Instant::now();
        for b in 0..batches {
            if p.paced {
                if b >= p.depth {
                    let need = b + 1 - p.depth;
                    ensure!(
                        pacer.wait_blocking(STALL, |pc| pc.done_at_least(need)),
                        "pacing stalled: batch {} not finished by every subscriber within {STALL:?}",
                        need - 1
                    );
                }
                pacer.arm(b);
            }
            for i in 0..p.batch {
                stamp(&mut buf, b * p.batch + i);
                pubs.send(Message::from(&buf[..]))
                    .map_err(|(_, e)| e)
                    .context("nng send")?;
            }
        }
        Ok(start)
    }

    pub fn survey(p: SurveyParams) -> Result<SurveySample> {
        let (surv, _l, url) = listen(Protocol::Surveyor0)?;
        surv.set_opt::<SurveyTime>(Some(p.survey_time))?;
        let registry: Arc<Mutex<Vec<Socket>>> = Arc::default();
        let mut resp = Vec::with_capacity(p.respondents);
        for i in 0..p.respondents {
            let (url, registry) = (url.clone(), registry.clone());
            resp.push(thread::Builder::new().name(format!("nng-resp-{i}")).spawn(
                move || -> Result<()> {
                    let s = Socket::new(Protocol::Respondent0)?;
                    s.dial(&url).with_context(|| format!("nng dial {url}"))?;
                    registry.lock().unwrap().push(s.clone());
                    loop {
                        let m = match s.recv() {
                            Ok(m) => m,
                            Err(NngError::Closed) => return Ok(()),
                            Err(e) => return Err(e).context("nng respondent recv"),
                        };
                        match s.send(m) {
                            Ok(()) => {}
                            Err((_, NngError::Closed)) => return Ok(()),
                            Err((_, e)) => return Err(e).context("nng respondent send"),
                        }
                    }
                },
            )?);
        }
        let result = survey_rounds(&surv, &p);
        for s in registry.lock().unwrap().iter() {
            s.close();
        }
        surv.close();
        let mut first_err = None;
        for h in resp {
            if let Err(e) = h.join().expect("nng respondent panicked") {
                first_err.get_or_insert(e);
            }
        }
        let sample = result?;
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(sample)
    }

    /// One round: (responses to this survey, stale responses).
    fn round(surv: &Socket, p: &SurveyParams, id: u64) -> Result<(usize, u64)> {
        surv.send(Message::from(&survey_body(p.size, id)[..]))
            .map_err(|(_, e)| e)
            .context("nng survey send")?;
        let (mut got, mut stale) = (0, 0);
        while got < p.respondents {
            match surv.recv() {
                Ok(m) if m.len() >= 8 && seq_of(&m) == id => got += 1,
                Ok(_) => stale += 1,
                Err(NngError::TimedOut) => break,
                Err(e) => return Err(e).context("nng survey recv"),
            }
        }
        Ok((got, stale))
    }

    fn survey_rounds(surv: &Socket, p: &SurveyParams) -> Result<SurveySample> {
        surv.set_opt::<RecvTimeout>(Some(WARM_RECV))?;
        let mut id = 0;
        let deadline = Instant::now() + SETUP_LIMIT;
        let mut in_a_row = 0;
        let mut last_got = 0;
        while in_a_row < 3 {
            ensure!(
                Instant::now() < deadline,
                "survey warm-up: last round got {last_got}/{} responses",
                p.respondents
            );
            id += 1;
            last_got = round(surv, p, id)?.0;
            in_a_row = if last_got == p.respondents {
                in_a_row + 1
            } else {
                0
            };
        }
        surv.set_opt::<RecvTimeout>(None)?;
        for _ in 0..p.warm {
            id += 1;
            round(surv, p, id)?;
        }
        let mut hist = new_rtt_histogram();
        let (mut incomplete, mut stale) = (0, 0);
        let start = Instant::now();
        for _ in 0..p.rounds {
            id += 1;
            let t0 = Instant::now();
            let (got, st) = round(surv, p, id)?;
            record_rtt(&mut hist, t0.elapsed());
            stale += st;
            if got < p.respondents {
                incomplete += 1;
            }
        }
        Ok(SurveySample {
            rounds: p.rounds,
            total: start.elapsed(),
            hist,
            incomplete,
            stale,
        })
    }
}

// ---------------------------------------------------------------------------
// pinion (async API, tasks on pinion's cores).

#[cfg(not(feature = "pinion"))]
mod pinion_side {
    use super::*;

    pub fn pubsub(_p: PubSubParams) -> Result<PubSubSample> {
        bail!(crate::pinion_impl::NOT_AVAILABLE)
    }
    pub fn survey(_p: SurveyParams) -> Result<SurveySample> {
        bail!(crate::pinion_impl::NOT_AVAILABLE)
    }
}

#[cfg(feature = "pinion")]
mod pinion_side {
    use super::*;
    use bytes::Bytes;
    use pinion::{Error as PError, Options, Protocol, Runtime, Socket};

    const LISTEN: &str = "tcp://127.0.0.1:0";

    /// Waits until the pipes of earlier runs have closed, so runs do not
    /// overlap (bounded; a leftover is reported on stderr, not an error).
    fn settle(rt: &Runtime) {
        let until = Instant::now() + Duration::from_secs(10);
        while rt.loads().iter().sum::<usize>() != 0 {
            if Instant::now() > until {
                eprintln!(
                    "note: pinion pipes still open from earlier runs: {:?}",
                    rt.loads()
                );
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
        match r {
            Ok(r) => r,
            Err(e) => bail!("pinion task failed: {e}"),
        }
    }

    pub fn pubsub(p: PubSubParams) -> Result<PubSubSample> {
        let rt = Runtime::global();
        settle(rt);
        let cores = rt.cores();
        let (pubs, url) = rt.block_on(0, async {
            let s = Socket::new(Protocol::Pub0).context("pinion socket")?;
            let ep = s.listen(LISTEN).await.context("pinion listen")?;
            anyhow::Ok((s, ep.url().to_string()))
        })?;
        let pacer = Arc::new(Pacer::new(&p));
        let registry: Arc<Mutex<Vec<Socket>>> = Arc::default();
        let mut subs = Vec::with_capacity(p.subs);
        for i in 0..p.subs {
            let (url, pacer, registry) = (url.clone(), pacer.clone(), registry.clone());
            subs.push(rt.spawn_on((i + 1) % cores, async move {
                let s = Socket::new(Protocol::Sub0).context("pinion socket")?;
                registry.lock().unwrap().push(s.clone());
                let mut st = SubState::new(p, i);
                if pacer.stop.load(Ordering::SeqCst) {
                    return Ok(st.res);
                }
                s.subscribe(Bytes::new())
                    .await
                    .context("pinion subscribe")?;
                s.dial(&url)
                    .await
                    .with_context(|| format!("pinion dial {url}"))?;
                loop {
                    match s.recv().await {
                        Ok(m) => {
                            if let Step::Done = st.on_msg(&m, &pacer)? {
                                break;
                            }
                        }
                        Err(PError::Closed) => break,
                        Err(e) => return Err(e).context("pinion sub recv"),
                    }
                }
                anyhow::Ok(st.res)
            }));
        }
        let publisher = {
            let (pubs, pacer) = (pubs.clone(), pacer.clone());
            rt.spawn_on(0, async move { publish(&pubs, &pacer, &p).await })
        };
        let published = rt.block_on(0, async move { joined(publisher.await) });
        pacer.finish(published.is_ok(), || {
            for s in registry.lock().unwrap().iter() {
                s.close();
            }
        });
        let results = rt.block_on(0, async move {
            let mut results = Vec::with_capacity(subs.len());
            for h in subs {
                results.push(joined(h.await));
            }
            results
        });
        let pub_drops = pubs.stats().queue_drops;
        pubs.close();
        let start = published?;
        let results = results.into_iter().collect::<Result<Vec<_>>>()?;
        let mut sample = pubsub_sample(&p, start, &results)?;
        sample.pub_drops = Some(pub_drops);
        Ok(sample)
    }

    async fn publish(pubs: &Socket, pacer: &Pacer, p: &PubSubParams) -> Result<Instant> {
        let hello_deadline = Instant::now() + SETUP_LIMIT;
        let hello = Bytes::from_static(&[0u8]);
        while !pacer.all_ready() {
            ensure!(
                Instant::now() < hello_deadline,
                "only {}/{} subscribers ready after {SETUP_LIMIT:?}",
                pacer.ready.load(Ordering::Acquire),
                p.subs
            );
            pubs.send(hello.clone())
                .await
                .context("pinion send hello")?;
            pacer.wait_async(HELLO_EVERY, Pacer::all_ready).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // let the hellos drain
        let mut buf = payload(p.size);
        let batches = p.msgs / p.batch;
        let start = Instant::now();
        for b in 0..batches {
            if p.paced {
                if b >= p.depth {
                    let need = b + 1 - p.depth;
                    ensure!(
                        pacer
                            .wait_async(STALL, |pc| pc.done_at_least(need))
                            .await,
                        "pacing stalled: batch {} not finished by every subscriber within {STALL:?}",
                        need - 1
                    );
                }
                pacer.arm(b);
            }
            for i in 0..p.batch {
                stamp(&mut buf, b * p.batch + i);
                pubs.send(Bytes::copy_from_slice(&buf))
                    .await
                    .context("pinion send")?;
            }
        }
        Ok(start)
    }

    pub fn survey(p: SurveyParams) -> Result<SurveySample> {
        let rt = Runtime::global();
        settle(rt);
        let cores = rt.cores();
        let opts = Options {
            survey_time: p.survey_time,
            ..Options::default()
        };
        let (surv, url) = rt.block_on(0, async move {
            let s = Socket::with_options(Protocol::Surveyor0, opts).context("pinion socket")?;
            let ep = s.listen(LISTEN).await.context("pinion listen")?;
            anyhow::Ok((s, ep.url().to_string()))
        })?;
        let registry: Arc<Mutex<Vec<Socket>>> = Arc::default();
        let mut resp = Vec::with_capacity(p.respondents);
        for i in 0..p.respondents {
            let (url, registry) = (url.clone(), registry.clone());
            resp.push(rt.spawn_on((i + 1) % cores, async move {
                let s = Socket::new(Protocol::Respondent0).context("pinion socket")?;
                s.dial(&url)
                    .await
                    .with_context(|| format!("pinion dial {url}"))?;
                registry.lock().unwrap().push(s.clone());
                loop {
                    let m = match s.recv().await {
                        Ok(m) => m,
                        Err(PError::Closed) => return Ok(()),
                        Err(e) => return Err(e).context("pinion respondent recv"),
                    };
                    match s.send(m).await {
                        Ok(()) => {}
                        Err(PError::Closed) => return Ok(()),
                        Err(e) => return Err(e).context("pinion respondent send"),
                    }
                }
            }));
        }
        let result = {
            let surv = surv.clone();
            rt.block_on(0, async move { survey_rounds(&surv, &p).await })
        };
        for s in registry.lock().unwrap().iter() {
            s.close();
        }
        surv.close();
        let ends = rt.block_on(0, async move {
            let mut ends = Vec::with_capacity(resp.len());
            for h in resp {
                ends.push(joined(h.await));
            }
            ends
        });
        let sample = result?;
        ends.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(sample)
    }

    async fn round(
        surv: &Socket,
        p: &SurveyParams,
        id: u64,
        timeout: Option<Duration>,
    ) -> Result<(usize, u64)> {
        surv.send(survey_body(p.size, id))
            .await
            .context("pinion survey send")?;
        let (mut got, mut stale) = (0, 0);
        while got < p.respondents {
            let r = match timeout {
                Some(t) => surv.recv_timeout(Some(t)).await,
                None => surv.recv().await,
            };
            match r {
                Ok(m) if m.len() >= 8 && seq_of(&m) == id => got += 1,
                Ok(_) => stale += 1,
                Err(PError::TimedOut) => break,
                Err(e) => return Err(e).context("pinion survey recv"),
            }
        }
        Ok((got, stale))
    }

    async fn survey_rounds(surv: &Socket, p: &SurveyParams) -> Result<SurveySample> {
        let mut id = 0;
        let deadline = Instant::now() + SETUP_LIMIT;
        let mut in_a_row = 0;
        let mut last_got = 0;
        while in_a_row < 3 {
            ensure!(
                Instant::now() < deadline,
                "survey warm-up: last round got {last_got}/{} responses",
                p.respondents
            );
            id += 1;
            last_got = round(surv, p, id, Some(WARM_RECV)).await?.0;
            in_a_row = if last_got == p.respondents {
                in_a_row + 1
            } else {
                0
            };
        }
        for _ in 0..p.warm {
            id += 1;
            round(surv, p, id, None).await?;
        }
        let mut hist = new_rtt_histogram();
        let (mut incomplete, mut stale) = (0, 0);
        let start = Instant::now();
        for _ in 0..p.rounds {
            id += 1;
            let t0 = Instant::now();
            let (got, st) = round(surv, p, id, None).await?;
            record_rtt(&mut hist, t0.elapsed());
            stale += st;
            if got < p.respondents {
                incomplete += 1;
            }
        }
        Ok(SurveySample {
            rounds: p.rounds,
            total: start.elapsed(),
            hist,
            incomplete,
            stale,
        })
    }
}

// ---------------------------------------------------------------------------
// Driver: calibrate, interleave R runs, report.

fn run_pubsub(imp: Imp, p: PubSubParams) -> Result<PubSubSample> {
    let what = format!(
        "{} pub/sub {} subs x {} msgs{}",
        imp.name(),
        p.subs,
        p.msgs,
        if p.paced { "" } else { " (unpaced)" }
    );
    with_watchdog(what, move || match imp {
        Imp::Nng => nng_side::pubsub(p),
        Imp::Pinion => pinion_side::pubsub(p),
    })
}

fn run_survey(imp: Imp, p: SurveyParams) -> Result<SurveySample> {
    let what = format!(
        "{} survey {} respondents x {} rounds",
        imp.name(),
        p.respondents,
        p.rounds
    );
    with_watchdog(what, move || match imp {
        Imp::Nng => nng_side::survey(p),
        Imp::Pinion => pinion_side::survey(p),
    })
}

/// Pilot runs (warm-up too) until one lasts 0.2 s; then M for `secs`.
fn calibrate_pubsub(imp: Imp, mut p: PubSubParams, secs: f64) -> Result<u64> {
    let min = p.batch * p.depth * 4;
    p.msgs = (20_000 / p.subs as u64).max(min) / p.batch * p.batch;
    loop {
        let s = run_pubsub(imp, p)?;
        let t = s.elapsed.as_secs_f64();
        eprintln!(
            "  pilot {} {} subs M={}: {:.0} deliveries/s, delivered {:.4}, {:.3} s",
            imp.name(),
            p.subs,
            p.msgs,
            s.rate(),
            s.fraction(),
            t
        );
        if t >= 0.2 || p.msgs >= 50_000_000 {
            let m = (s.rate() * secs / p.subs as f64) as u64;
            return Ok((m.max(min) / p.batch * p.batch).min(50_000_000));
        }
        let grow = (0.3 / t.max(1e-4)).max(2.0);
        p.msgs = ((p.msgs as f64 * grow) as u64 / p.batch * p.batch).min(50_000_000);
    }
}

fn calibrate_survey(imp: Imp, mut p: SurveyParams, secs: f64) -> Result<u64> {
    p.rounds = 50;
    p.warm = 10;
    loop {
        let s = run_survey(imp, p)?;
        let t = s.total.as_secs_f64();
        eprintln!(
            "  pilot {} survey {} rounds: {:.0} rounds/s, {:.3} s",
            imp.name(),
            p.rounds,
            s.rate(),
            t
        );
        if t >= 0.2 || p.rounds >= 10_000_000 {
            return Ok(((s.rate() * secs) as u64).max(50));
        }
        p.rounds = ((p.rounds as f64 * (0.3 / t.max(1e-4)).max(2.0)) as u64).min(10_000_000);
    }
}

struct PubSubRow {
    imp: Imp,
    p: PubSubParams,
    runs: Vec<PubSubSample>,
}

impl PubSubRow {
    fn rate(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.rate()).collect::<Vec<_>>())
    }
    fn fraction_median(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.fraction()).collect::<Vec<_>>())
    }
    fn fraction_min(&self) -> f64 {
        self.runs.iter().map(|s| s.fraction()).fold(1.0, f64::min)
    }
    fn range(&self) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|s| s.rate()).collect();
        (
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    }
    /// Median of pinion's PUB queue drops, "n/a" for NNG.
    fn pub_drops(&self) -> String {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|s| s.pub_drops.map(|d| d as f64))
            .collect();
        if v.is_empty() {
            "n/a".into()
        } else {
            group(median(&v))
        }
    }
    fn secs(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|s| s.elapsed.as_secs_f64())
                .collect::<Vec<_>>(),
        )
    }
}

struct SurveyRow {
    imp: Imp,
    p: SurveyParams,
    runs: Vec<SurveySample>,
}

impl SurveyRow {
    fn rate(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.rate()).collect::<Vec<_>>())
    }
    fn q_ms(&self, q: f64) -> f64 {
        median(&self.runs.iter().map(|s| s.q_ms(q)).collect::<Vec<_>>())
    }
    fn range(&self) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|s| s.rate()).collect();
        (
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    }
}

const IMPS: [Imp; 2] = [Imp::Nng, Imp::Pinion];

pub fn run(a: FanoutArgs) -> Result<String> {
    ensure!(a.size >= 8, "--size must be at least 8 (sequence number)");
    ensure!(
        a.batch >= 1 && a.depth >= 1,
        "--batch and --depth must be >= 1"
    );
    let started = Instant::now();
    let load_before = crate::loadavg();
    let repeat = a.repeat.max(1);
    let imps: Vec<Imp> = IMPS
        .into_iter()
        .filter(|&i| match i {
            Imp::Pinion => match crate::pinion_impl::available() {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("skipping pinion: {e:#}");
                    false
                }
            },
            Imp::Nng => true,
        })
        .collect();
    let mut failures: Vec<String> = Vec::new();

    // Calibrate (paced rate decides M; the unpaced runs reuse it).
    let mut paced: Vec<PubSubRow> = Vec::new();
    let mut unpaced: Vec<PubSubRow> = Vec::new();
    let mut surveys: Vec<SurveyRow> = Vec::new();
    if a.only != Only::Survey {
        for &subs in &a.subs {
            for &imp in &imps {
                let p = PubSubParams {
                    subs,
                    msgs: 0,
                    size: a.size,
                    batch: a.batch,
                    depth: a.depth,
                    paced: true,
                };
                match calibrate_pubsub(imp, p, a.secs) {
                    Ok(msgs) => {
                        eprintln!("calibrated {} pub/sub {subs} subs: M = {msgs}", imp.name());
                        let p = PubSubParams { msgs, ..p };
                        paced.push(PubSubRow {
                            imp,
                            p,
                            runs: Vec::new(),
                        });
                        if !a.no_overload {
                            unpaced.push(PubSubRow {
                                imp,
                                p: PubSubParams { paced: false, ..p },
                                runs: Vec::new(),
                            });
                        }
                    }
                    Err(e) => {
                        let m = format!("{} pub/sub {subs} subs calibration: {e:#}", imp.name());
                        eprintln!("FAILED {m}");
                        failures.push(m);
                    }
                }
            }
        }
    }
    if a.only != Only::Pubsub {
        for &imp in &imps {
            let p = SurveyParams {
                respondents: a.respondents,
                rounds: 0,
                warm: 0,
                size: a.size,
                survey_time: Duration::from_millis(a.survey_time_ms),
            };
            match calibrate_survey(imp, p, a.survey_secs) {
                Ok(rounds) => {
                    eprintln!("calibrated {} survey: {rounds} rounds", imp.name());
                    surveys.push(SurveyRow {
                        imp,
                        p: SurveyParams {
                            rounds,
                            warm: (rounds / 10).clamp(10, 200),
                            ..p
                        },
                        runs: Vec::new(),
                    });
                }
                Err(e) => {
                    let m = format!("{} survey calibration: {e:#}", imp.name());
                    eprintln!("FAILED {m}");
                    failures.push(m);
                }
            }
        }
    }

    // R rounds, interleaving implementations and figures.
    for r in 0..repeat {
        for row in paced.iter_mut().chain(unpaced.iter_mut()) {
            match run_pubsub(row.imp, row.p) {
                Ok(s) => {
                    eprintln!(
                        "[run {}/{repeat}] {:<12} pub/sub {:>3} subs{:<10} {:>12.0} deliveries/s  delivered {:.4}  {:.3} s{}{}",
                        r + 1,
                        row.imp.name(),
                        row.p.subs,
                        if row.p.paced { "" } else { " unpaced" },
                        s.rate(),
                        s.fraction(),
                        s.elapsed.as_secs_f64(),
                        if s.out_of_order > 0 {
                            format!("  OUT OF ORDER {}", s.out_of_order)
                        } else {
                            String::new()
                        },
                        s.pub_drops
                            .map_or(String::new(), |d| format!("  PUB drops {d}"))
                    );
                    row.runs.push(s);
                }
                Err(e) => {
                    let m = format!(
                        "{} pub/sub {} subs{} run {}: {e:#}",
                        row.imp.name(),
                        row.p.subs,
                        if row.p.paced { "" } else { " unpaced" },
                        r + 1
                    );
                    eprintln!("FAILED {m}");
                    failures.push(m);
                }
            }
        }
        for row in surveys.iter_mut() {
            match run_survey(row.imp, row.p) {
                Ok(s) => {
                    eprintln!(
                        "[run {}/{repeat}] {:<12} survey {} resp  {:>9.0} rounds/s  p50 {:.3} ms  p99 {:.3} ms  incomplete {}  stale {}",
                        r + 1,
                        row.imp.name(),
                        row.p.respondents,
                        s.rate(),
                        s.q_ms(0.5),
                        s.q_ms(0.99),
                        s.incomplete,
                        s.stale
                    );
                    row.runs.push(s);
                }
                Err(e) => {
                    let m = format!("{} survey run {}: {e:#}", row.imp.name(), r + 1);
                    eprintln!("FAILED {m}");
                    failures.push(m);
                }
            }
        }
    }
    paced.retain(|r| !r.runs.is_empty());
    unpaced.retain(|r| !r.runs.is_empty());
    surveys.retain(|r| !r.runs.is_empty());
    let o = report(
        &a,
        repeat,
        &load_before,
        &paced,
        &unpaced,
        &surveys,
        &failures,
        started.elapsed(),
    );
    Ok(o)
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &FanoutArgs,
    repeat: usize,
    load_before: &str,
    paced: &[PubSubRow],
    unpaced: &[PubSubRow],
    surveys: &[SurveyRow],
    failures: &[String],
    took: Duration,
) -> String {
    let ratio = |p: Option<f64>, n: Option<f64>| crate::ratio(p, n);
    let ps = |rows: &[PubSubRow], imp: Imp, subs: usize| {
        rows.iter()
            .find(|r| r.imp == imp && r.p.subs == subs)
            .map(|r| r.rate())
    };
    let sv = |imp: Imp| surveys.iter().find(|r| r.imp == imp);
    let mut o = String::new();
    let _ = writeln!(o, "## pinion-bench fanout\n");
    let _ = writeln!(o, "{}\n", crate::machine_line());
    let _ = writeln!(
        o,
        "Medians of R = {repeat} interleaved runs per figure; tcp://127.0.0.1, one process; \
         pinion = `pinion-async` (async API, publisher/surveyor as a task on core 0, subscribers/respondents as tasks on cores (i + 1) mod {cores}); \
         NNG = blocking calls, one thread per SUB/RESPONDENT socket; {} B messages; \
         pacing window {} × {} = {} messages; survey_time {} ms; \
         load average before/after: {load_before} / {}; total wall time {:.0} s.\n",
        a.size,
        a.batch,
        a.depth,
        a.batch * a.depth,
        a.survey_time_ms,
        crate::loadavg(),
        took.as_secs_f64(),
        cores = pinion_cores(),
    );
    for f in failures {
        let _ = writeln!(o, "**Failed:** {f}\n");
    }

    let _ = writeln!(o, "### Ratios (pinion-async / NNG)\n");
    let _ = writeln!(o, "| figure | pinion-async | NNG | pinion / NNG |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for &subs in &a.subs {
        let (p, n) = (ps(paced, Imp::Pinion, subs), ps(paced, Imp::Nng, subs));
        if p.is_none() && n.is_none() {
            continue;
        }
        let _ = writeln!(
            o,
            "| pub/sub fan-out to {subs} (deliveries/s, paced; higher is better) | {} | {} | {} |",
            p.map_or("n/a".into(), group),
            n.map_or("n/a".into(), group),
            ratio(p, n)
        );
    }
    for &subs in &a.subs {
        let (p, n) = (ps(unpaced, Imp::Pinion, subs), ps(unpaced, Imp::Nng, subs));
        if p.is_none() && n.is_none() {
            continue;
        }
        let _ = writeln!(
            o,
            "| pub/sub fan-out to {subs}, unpaced (deliveries/s; see delivered fraction) | {} | {} | {} |",
            p.map_or("n/a".into(), group),
            n.map_or("n/a".into(), group),
            ratio(p, n)
        );
    }
    if !surveys.is_empty() {
        let (p, n) = (sv(Imp::Pinion), sv(Imp::Nng));
        let _ = writeln!(
            o,
            "| survey to {} respondents (rounds/s; higher is better) | {} | {} | {} |",
            a.respondents,
            p.map_or("n/a".into(), |r| group(r.rate())),
            n.map_or("n/a".into(), |r| group(r.rate())),
            ratio(p.map(|r| r.rate()), n.map(|r| r.rate()))
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            let _ = writeln!(
                o,
                "| survey round time {label} (ms; lower is better) | {} | {} | {} |",
                p.map_or("n/a".into(), |r| format!("{:.3}", r.q_ms(q))),
                n.map_or("n/a".into(), |r| format!("{:.3}", r.q_ms(q))),
                ratio(p.map(|r| r.q_ms(q)), n.map(|r| r.q_ms(q)))
            );
        }
    }

    for (title, rows) in [
        ("Pub/sub fan-out, paced", paced),
        ("Pub/sub fan-out, unpaced (overload)", unpaced),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n### {title}\n");
        let _ = writeln!(
            o,
            "| subscribers | impl | deliveries/s | delivered (median) | delivered (worst run) | M msgs per run | s per run | runs | min–max deliveries/s | PUB-side drops (median) |"
        );
        let _ = writeln!(o, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            let (lo, hi) = r.range();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} % | {:.2} % | {} | {:.2} | {} | {}–{} | {} |",
                r.p.subs,
                r.imp.name(),
                group(r.rate()),
                r.fraction_median() * 100.0,
                r.fraction_min() * 100.0,
                group(r.p.msgs as f64),
                r.secs(),
                r.runs.len(),
                group(lo),
                group(hi),
                r.pub_drops()
            );
            let ooo: u64 = r.runs.iter().map(|s| s.out_of_order).sum();
            if ooo > 0 {
                let _ = writeln!(
                    o,
                    "\n**{} {} subs: {ooo} messages arrived out of order.**\n",
                    r.imp.name(),
                    r.p.subs
                );
            }
            debug_assert!(r.runs.iter().all(|s| s.sent == r.p.msgs));
        }
    }

    if !surveys.is_empty() {
        let _ = writeln!(o, "\n### Survey rounds\n");
        let _ = writeln!(
            o,
            "| respondents | impl | rounds/s | p50 ms | p99 ms | rounds per run | runs | incomplete rounds (all runs) | stale responses | min–max rounds/s |"
        );
        let _ = writeln!(o, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in surveys {
            let (lo, hi) = r.range();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {}–{} |",
                r.p.respondents,
                r.imp.name(),
                group(r.rate()),
                r.q_ms(0.5),
                r.q_ms(0.99),
                group(r.p.rounds as f64),
                r.runs.len(),
                r.runs.iter().map(|s| s.incomplete).sum::<u64>(),
                r.runs.iter().map(|s| s.stale).sum::<u64>(),
                group(lo),
                group(hi)
            );
        }
    }
    o
}

fn pinion_cores() -> usize {
    #[cfg(feature = "pinion")]
    {
        pinion::Runtime::global().cores()
    }
    #[cfg(not(feature = "pinion"))]
    {
        0
    }
}
