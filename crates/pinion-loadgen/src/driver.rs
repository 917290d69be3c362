//! The client side, shared by every target: worker threads, one task per
//! client, the measurement window, latency recording, and the TCP request
//! loop that the network targets plug a tiny protocol codec into.
//!
//! Design (the same for every target, so the comparison is fair):
//! * [`WORKERS`] OS threads, each running a tokio `current_thread` runtime
//!   with a `LocalSet`; client `i` lives on thread `i % WORKERS` for the
//!   whole run. No work stealing, no cross-thread wakeups on the hot path.
//! * Each client is one task with its own TCP connection (bound to a
//!   127.0.0.x source address, see [`connect`]). It keeps `pipeline`
//!   requests in flight: whenever replies arrive (one `read`), each answered
//!   slot gets its next request, and all of them go out in one `write`.
//! * Per-thread counters and one HDR histogram per thread (no locks, no
//!   atomics but one relaxed store per ack for the progress bar); merged
//!   after the run. Requests are encoded into a reused buffer: no allocation
//!   per request.
//! * Time line: all clients connect first (not measured), then a common
//!   start; acks that arrive in `[start + warmup, start + warmup +
//!   duration)` count, with their latency (request written → reply read).
//!   After the window no new requests are sent; outstanding ones are drained
//!   (bounded by [`DRAIN`]), so the servers see clean disconnects.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::error::LoadgenError;
use crate::server::interrupted;

/// Load-generator threads (the VM has 2 cores, shared with the server).
pub(crate) const WORKERS: usize = 2;
/// Connects in progress at once per worker (keeps accept backlogs sane).
const CONNECT_CONCURRENCY: usize = 32;
/// Limit for one client's connect + handshake.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long outstanding requests may take after the window before they are
/// counted as errors and the client gives up.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);
/// Clients per loopback source address (well inside the ephemeral range).
const CLIENTS_PER_SOURCE_ADDR: usize = 10_000;
/// Histogram range: 1 µs .. 10 min, 3 significant digits, in nanoseconds.
const HIST_LOW_NS: u64 = 1_000;
const HIST_HIGH_NS: u64 = 600_000_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid histogram bounds")
}

/// The run's time line, fixed when every client is connected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub start: Instant,
    pub warm_end: Instant,
    pub end: Instant,
    pub hard: Instant,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub clients: usize,
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// State shared by the main thread and the worker threads.
pub(crate) struct Shared {
    progress: Vec<Padded>,
    errors: AtomicU64,
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    first_connect_error: Mutex<Option<String>>,
    stop: AtomicBool,
    clock: OnceLock<Clock>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            progress: (0..WORKERS).map(|_| Padded::default()).collect(),
            errors: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            connect_failed: AtomicUsize::new(0),
            first_connect_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            clock: OnceLock::new(),
        }
    }

    fn acked(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One worker thread's tallies.
struct Stats {
    worker: usize,
    hist: RefCell<Histogram<u64>>,
    window_acks: Cell<u64>,
    total_acks: Cell<u64>,
    errors: RefCell<BTreeMap<String, u64>>,
    max_offset: Cell<Option<u64>>,
}

/// What the clients measured, merged over the worker threads.
pub(crate) struct Collected {
    pub hist: Histogram<u64>,
    /// Acks inside the measurement window.
    pub window_acks: u64,
    /// Acks at any time (warmup and drain included).
    pub total_acks: u64,
    pub errors: BTreeMap<String, u64>,
    /// Highest log offset seen in an ACK (pinion only).
    pub max_offset: Option<u64>,
}

/// A client's handle on its worker's tallies and the run's time line.
pub(crate) struct Ctx {
    pub idx: usize,
    pub pipeline: usize,
    stats: Rc<Stats>,
    shared: Arc<Shared>,
    start: watch::Receiver<bool>,
    connect_permits: Rc<tokio::sync::Semaphore>,
}

impl Ctx {
    /// Waits for a connect slot (at most [`CONNECT_CONCURRENCY`] per worker).
    pub async fn connect_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.connect_permits
            .acquire()
            .await
            .expect("semaphore never closed")
    }

    /// This client is connected and ready; waits for the common start.
    /// `None`: the run was called off (another client failed, Ctrl-C).
    pub async fn ready(&mut self) -> Option<Clock> {
        self.shared.connected.fetch_add(1, Ordering::AcqRel);
        let _ = self.start.wait_for(|s| *s).await;
        if self.shared.stop.load(Ordering::Acquire) {
            return None;
        }
        self.shared.clock.get().copied()
    }

    /// This client could not connect: the run will be called off.
    pub fn connect_failed(&self, why: String) {
        let mut first = self
            .shared
            .first_connect_error
            .lock()
            .expect("not poisoned");
        if first.is_none() {
            *first = Some(format!("client {}: {why}", self.idx));
        }
        drop(first);
        self.shared.connect_failed.fetch_add(1, Ordering::AcqRel);
    }

    /// Stop sending: the window is over or the run was interrupted.
    #[inline]
    pub fn stopping(&self, now: Instant, clock: &Clock) -> bool {
        now >= clock.end || self.shared.stop.load(Ordering::Relaxed)
    }

    /// An ACK arrived at `now` for a request written at `sent`.
    #[inline]
    pub fn ack(&self, now: Instant, sent: Instant, clock: &Clock, offset: Option<u64>) {
        let s = &*self.stats;
        let total = s.total_acks.get() + 1;
        s.total_acks.set(total);
        // Only this thread writes its slot: a plain store, no locked add.
        self.shared.progress[s.worker]
            .0
            .store(total, Ordering::Relaxed);
        if now >= clock.warm_end && now < clock.end {
            s.window_acks.set(s.window_acks.get() + 1);
            let ns = now.saturating_duration_since(sent).as_nanos() as u64;
            s.hist.borrow_mut().saturating_record(ns.max(HIST_LOW_NS));
        }
        if let Some(o) = offset {
            if s.max_offset.get().is_none_or(|m| o > m) {
                s.max_offset.set(Some(o));
            }
        }
    }

    /// A NACK or an error reply, or a client-side failure, `n` times.
    pub fn error(&self, kind: &str, n: u64) {
        *self
            .stats
            .errors
            .borrow_mut()
            .entry(kind.to_string())
            .or_insert(0) += n;
        self.shared.errors.fetch_add(n, Ordering::Relaxed);
    }
}

/// One target's client behaviour. `client` runs one client from connect to
/// the end of the run: connect (holding a [`Ctx::connect_permit`]), call
/// [`Ctx::ready`] (or [`Ctx::connect_failed`]), then loop until
/// [`Ctx::stopping`] and drain.
pub(crate) trait Workload: Send + Sync + 'static {
    fn client(self: Arc<Self>, ctx: Ctx) -> impl Future<Output = ()> + 'static;
}

/// Points in the time line at which the caller takes measurements (CPU time,
/// fsync counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    WindowStart,
    WindowEnd,
}

/// Runs `plan.clients` clients of `workload` and collects what they saw.
/// Blocks the calling thread; shows progress on `bar`; calls `mark` at the
/// window's start and end.
pub(crate) fn run_clients<W: Workload>(
    target: &'static str,
    workload: Arc<W>,
    plan: &Plan,
    bar: &ProgressBar,
    mark: &mut dyn FnMut(Mark),
) -> Result<Collected, LoadgenError> {
    let shared = Arc::new(Shared::new());
    let (start_tx, start_rx) = watch::channel(false);
    let mut threads = Vec::with_capacity(WORKERS);
    for w in 0..WORKERS {
        let shared = shared.clone();
        let workload = workload.clone();
        let start_rx = start_rx.clone();
        let plan = *plan;
        let t = std::thread::Builder::new()
            .name(format!("loadgen-{w}"))
            .spawn(move || worker_thread(w, workload, plan, shared, start_rx))
            .map_err(|e| LoadgenError::io("spawning a load-generator thread", e))?;
        threads.push(t);
    }
    drop(start_rx);

    let join_all = |threads: Vec<std::thread::JoinHandle<Option<WorkerOut>>>| -> Vec<WorkerOut> {
        threads
            .into_iter()
            .filter_map(|t| t.join().ok().flatten())
            .collect()
    };
    let call_off = |shared: &Shared, start_tx: &watch::Sender<bool>| {
        shared.stop.store(true, Ordering::Release);
        let _ = start_tx.send(true);
    };

    // 1. Everyone connects (not measured).
    bar.set_message(format!("connecting {} clients", plan.clients));
    let connect_deadline =
        Instant::now() + CONNECT_TIMEOUT + Duration::from_millis(2 * plan.clients as u64);
    loop {
        let ok = shared.connected.load(Ordering::Acquire);
        let failed = shared.connect_failed.load(Ordering::Acquire);
        if ok + failed >= plan.clients {
            if failed > 0 {
                call_off(&shared, &start_tx);
                join_all(threads);
                let first = shared
                    .first_connect_error
                    .lock()
                    .expect("not poisoned")
                    .take()
                    .unwrap_or_default();
                return Err(LoadgenError::Connect {
                    target,
                    failed,
                    clients: plan.clients,
                    first,
                });
            }
            break;
        }
        if interrupted() {
            call_off(&shared, &start_tx);
            join_all(threads);
            return Err(LoadgenError::Interrupted);
        }
        if Instant::now() >= connect_deadline {
            call_off(&shared, &start_tx);
            join_all(threads);
            return Err(LoadgenError::Connect {
                target,
                failed: plan.clients - ok,
                clients: plan.clients,
                first: "timed out connecting".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    // 2. Common start.
    let start = Instant::now();
    let clock = Clock {
        start,
        warm_end: start + plan.warmup,
        end: start + plan.warmup + plan.duration,
        hard: start + plan.warmup + plan.duration + DRAIN,
    };
    shared.clock.set(clock).expect("clock set once");
    let _ = start_tx.send(true);

    // 3. Progress until the window closes.
    let total_ms = (plan.warmup + plan.duration).as_millis() as u64;
    bar.set_length(total_ms.max(1));
    let mut marked_start = plan.warmup.is_zero();
    if marked_start {
        mark(Mark::WindowStart);
    }
    let mut last = (Instant::now(), 0u64);
    loop {
        let now = Instant::now();
        if !marked_start && now >= clock.warm_end {
            mark(Mark::WindowStart);
            marked_start = true;
        }
        if now >= clock.end {
            mark(Mark::WindowEnd);
            break;
        }
        if interrupted() {
            shared.stop.store(true, Ordering::Release);
            break;
        }
        let acked = shared.acked();
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 0.25 {
            let rate = (acked - last.1) as f64 / dt;
            let phase = if now < clock.warm_end {
                "warmup"
            } else {
                "measuring"
            };
            bar.set_message(format!(
                "{phase}: {} acked/s, {} errors",
                fmt_count(rate),
                shared.errors.load(Ordering::Relaxed)
            ));
            last = (now, acked);
        }
        bar.set_position(now.duration_since(start).as_millis() as u64);
        let until_end = clock.end.saturating_duration_since(now);
        std::thread::sleep(until_end.min(Duration::from_millis(50)));
    }
    bar.set_position(total_ms);
    bar.set_message("draining");

    // 4. Drain and merge.
    let outs = join_all(threads);
    if interrupted() {
        return Err(LoadgenError::Interrupted);
    }
    let mut c = Collected {
        hist: new_histogram(),
        window_acks: 0,
        total_acks: 0,
        errors: BTreeMap::new(),
        max_offset: None,
    };
    if outs.len() != WORKERS {
        *c.errors
            .entry("load-generator thread panicked".into())
            .or_insert(0) += 1;
    }
    for o in outs {
        c.hist.add(&o.hist).expect("same bounds");
        c.window_acks += o.window_acks;
        c.total_acks += o.total_acks;
        for (k, v) in o.errors {
            *c.errors.entry(k).or_insert(0) += v;
        }
        c.max_offset = c.max_offset.max(o.max_offset);
    }
    Ok(c)
}

struct WorkerOut {
    hist: Histogram<u64>,
    window_acks: u64,
    total_acks: u64,
    errors: BTreeMap<String, u64>,
    max_offset: Option<u64>,
}

fn worker_thread<W: Workload>(
    w: usize,
    workload: Arc<W>,
    plan: Plan,
    shared: Arc<Shared>,
    start_rx: watch::Receiver<bool>,
) -> Option<WorkerOut> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // Count this thread's clients as failed so the run is called off.
            let mine = (w..plan.clients).step_by(WORKERS).count();
            let mut first = shared.first_connect_error.lock().expect("not poisoned");
            first.get_or_insert_with(|| format!("building a tokio runtime: {e}"));
            drop(first);
            shared.connect_failed.fetch_add(mine, Ordering::AcqRel);
            return None;
        }
    };
    let stats = Rc::new(Stats {
        worker: w,
        hist: RefCell::new(new_histogram()),
        window_acks: Cell::new(0),
        total_acks: Cell::new(0),
        errors: RefCell::new(BTreeMap::new()),
        max_offset: Cell::new(None),
    });
    let permits = Rc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut handles = Vec::new();
        for idx in (w..plan.clients).step_by(WORKERS) {
            let ctx = Ctx {
                idx,
                pipeline: plan.pipeline,
                stats: stats.clone(),
                shared: shared.clone(),
                start: start_rx.clone(),
                connect_permits: permits.clone(),
            };
            handles.push(tokio::task::spawn_local(workload.clone().client(ctx)));
        }
        drop(start_rx);
        for h in handles {
            if h.await.is_err() {
                *stats
                    .errors
                    .borrow_mut()
                    .entry("client task panicked".into())
                    .or_insert(0) += 1;
            }
        }
    });
    drop(local);
    let stats = Rc::try_unwrap(stats).ok()?;
    Some(WorkerOut {
        hist: stats.hist.into_inner(),
        window_acks: stats.window_acks.get(),
        total_acks: stats.total_acks.get(),
        errors: stats.errors.into_inner(),
        max_offset: stats.max_offset.get(),
    })
}

// ---- TCP ----------------------------------------------------------------------

/// Connects client `idx` to `addr`. On loopback the socket is first bound to
/// source address `127.0.0.(1 + idx / 10000)` (then `127.0.1.x`, ...) with `IP_BIND_ADDRESS_NO_PORT`
/// (the port is chosen at connect time per 4-tuple), so any number of
/// clients fits in the ephemeral port range. TCP_NODELAY on.
pub(crate) async fn connect(idx: usize, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let fut = async {
        let stream = match addr {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                let src = source_addr(idx);
                let sock = TcpSocket::new_v4()?;
                set_bind_address_no_port(&sock);
                sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
                sock.connect(addr).await?
            }
            _ => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )),
    }
}

/// The loopback source address of client `idx`: `127.0.0.1` for the first
/// 10,000 clients, `127.0.0.2` for the next, ... then `127.0.1.1`, ...
pub(crate) fn source_addr(idx: usize) -> Ipv4Addr {
    let n = idx / CLIENTS_PER_SOURCE_ADDR;
    Ipv4Addr::new(127, 0, (n / 254) as u8, (n % 254 + 1) as u8)
}

fn set_bind_address_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // Best effort: without it, bind() reserves a port per socket.
    // SAFETY: the fd is open (owned by `sock`, borrowed for this call); the
    // option value points at a live c_int of the length passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What a codec found at the front of the receive buffer.
pub(crate) enum Decoded {
    /// Not a whole reply yet.
    Incomplete,
    /// The reply to the request in `slot`, `used` bytes long: `Ok(offset)`
    /// for an ACK, `Err(kind)` for a NACK or error reply.
    Reply {
        used: usize,
        slot: usize,
        result: Result<Option<u64>, String>,
    },
    /// Something to skip (e.g. `+OK`, an INFO update).
    Skip { used: usize },
    /// Something to answer (e.g. a NATS `PING`).
    Respond { used: usize, bytes: &'static [u8] },
    /// The peer broke the protocol: the connection is given up.
    Fatal(String),
}

/// A target's wire codec for one connection.
pub(crate) trait Proto {
    /// Appends the next request for pipeline slot `slot` to `out`.
    fn encode(&mut self, slot: usize, out: &mut Vec<u8>);
    /// Looks at the front of `buf` (never empty).
    fn decode(&mut self, buf: &[u8]) -> Decoded;
}

fn io_kind(e: &std::io::Error) -> String {
    format!("i/o: {}", e.kind())
}

/// The request loop every network target uses: keeps `ctx.pipeline`
/// requests in flight on `stream` until the window ends, then drains.
/// `rbuf` holds bytes already read during the handshake.
pub(crate) async fn tcp_loop<P: Proto, S>(
    mut stream: S,
    mut proto: P,
    mut rbuf: Vec<u8>,
    ctx: Ctx,
    clock: Clock,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let p = ctx.pipeline;
    let mut sent = vec![clock.start; p];
    let mut busy = vec![true; p];
    let mut inflight = p;
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut pending: Vec<usize> = Vec::with_capacity(p);

    for slot in 0..p {
        proto.encode(slot, &mut out);
    }
    let t = Instant::now();
    sent.fill(t);
    if let Err(e) = stream.write_all(&out).await {
        ctx.error(&io_kind(&e), 1);
        return;
    }
    out.clear();

    let mut rstart = 0usize;
    let mut rend = rbuf.len();
    if rbuf.len() < 16 * 1024 {
        rbuf.resize(16 * 1024, 0);
    }
    let hard = tokio::time::sleep_until(clock.hard.into());
    tokio::pin!(hard);

    'conn: loop {
        // Parse everything complete in the buffer.
        let now = Instant::now();
        let stop = ctx.stopping(now, &clock);
        let mut progressed = rstart < rend;
        while progressed && rstart < rend {
            match proto.decode(&rbuf[rstart..rend]) {
                Decoded::Incomplete => progressed = false,
                Decoded::Reply { used, slot, result } => {
                    rstart += used;
                    if slot >= p || !busy[slot] {
                        ctx.error("protocol: reply to no outstanding request", 1);
                        break 'conn;
                    }
                    match result {
                        Ok(offset) => ctx.ack(now, sent[slot], &clock, offset),
                        Err(kind) => ctx.error(&kind, 1),
                    }
                    if stop {
                        busy[slot] = false;
                        inflight -= 1;
                    } else {
                        proto.encode(slot, &mut out);
                        pending.push(slot);
                    }
                }
                Decoded::Skip { used } => rstart += used,
                Decoded::Respond { used, bytes } => {
                    rstart += used;
                    out.extend_from_slice(bytes);
                }
                Decoded::Fatal(why) => {
                    ctx.error(&why, 1);
                    break 'conn;
                }
            }
        }
        if !out.is_empty() {
            let t = Instant::now();
            for &slot in &pending {
                sent[slot] = t;
            }
            pending.clear();
            if let Err(e) = stream.write_all(&out).await {
                ctx.error(&io_kind(&e), 1);
                break 'conn;
            }
            out.clear();
        }
        if inflight == 0 {
            break;
        }
        // Make room, then read more.
        if rstart == rend {
            rstart = 0;
            rend = 0;
        } else if rend == rbuf.len() {
            if rstart > 0 {
                rbuf.copy_within(rstart..rend, 0);
                rend -= rstart;
                rstart = 0;
            } else {
                let n = rbuf.len() * 2;
                rbuf.resize(n, 0);
            }
        }
        tokio::select! {
            biased;
            r = stream.read(&mut rbuf[rend..]) => match r {
                Ok(0) => {
                    ctx.error("connection closed by the server", 1);
                    break 'conn;
                }
                Ok(n) => rend += n,
                Err(e) => {
                    ctx.error(&io_kind(&e), 1);
                    break 'conn;
                }
            },
            _ = &mut hard => {
                ctx.error("no reply before the drain deadline", inflight as u64);
                return;
            }
        }
    }
}

/// Reads from `stream` into `buf` until `done(buf)` returns `Some(n)` (n =
/// bytes consumed), within [`CONNECT_TIMEOUT`]. For handshakes and setup.
pub(crate) async fn read_until<F, S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut done: F,
) -> Result<usize, String>
where
    F: FnMut(&[u8]) -> Result<Option<usize>, String>,
    S: tokio::io::AsyncRead + Unpin,
{
    let fut = async {
        loop {
            if let Some(n) = done(buf)? {
                return Ok(n);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) => return Err("connection closed by the server".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err("timed out waiting for the server".to_string()),
    }
}

/// Runs `f` on a fresh current-thread runtime (setup and checks outside the
/// measured run).
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output, LoadgenError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadgenError::io("building a tokio runtime", e))?;
    Ok(rt.block_on(f))
}

/// `12,345` / `1.23 M`: counts for progress lines.
pub(crate) fn fmt_count(x: f64) -> String {
    crate::report::thousands(x.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(9_999), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(10_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(253 * 10_000), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_addr(254 * 10_000), Ipv4Addr::new(127, 0, 1, 1));
    }

    /// Client 10,000 really connects from 127.0.0.2 (bind before connect).
    #[test]
    fn connects_from_the_chosen_source_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = rt.block_on(async {
            let a = connect(3, addr).await.unwrap();
            let b = connect(10_000, addr).await.unwrap();
            (a.local_addr().unwrap(), b.local_addr().unwrap())
        });
        assert_eq!(a.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        assert_eq!(b.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer, a);
    }
}
