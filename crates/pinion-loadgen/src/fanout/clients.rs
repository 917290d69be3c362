//! The subscribers: many WebSocket connections held by few threads.
//!
//! Lean by design, so one process on 2 cores can hold 100,000 of them:
//! * a few OS threads, each a tokio `current_thread` runtime with a
//!   `LocalSet`; connection `i` lives on thread `i % threads`;
//! * one small task per connection: its socket, a 512-byte read buffer
//!   (grown only for a frame that does not fit), a few counters;
//! * the upgrade is hand-written (one request write, the 101 answer checked
//!   with its accept key), and after it the client only reads: no frame is
//!   ever sent, so no masking;
//! * one `recv` per wake-up: a short read clears the readiness (no second
//!   `recv` just to hear `EAGAIN`);
//! * per-thread tallies (one HDR histogram per phase, per-message arrival
//!   counts and times, per-connection records) behind `Rc`, no locks; the
//!   main thread sees one relaxed counter per thread.
//!
//! Connections opened with `read = false` (the `--slow` ones) read the 101
//! answer and then never read again.
//!
//! Per-topic mode ([`Target::Topic`]): connection `i` subscribes to topic
//! `i % K` and checks each delivery against the schedule: the message must
//! be one sent to its topic (else *misrouted*), not seen before (else a
//! *duplicate*), and arrive after the ones before it in the log (else *out
//! of order*); a bitmap over its topic's messages tells, at the end, how
//! many it never got.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::topics::{idle_topic, topic_name, Schedule};
use super::ws::{self, Frame};
use crate::driver::{connect, new_histogram};
use crate::error::LoadgenError;

/// Initial read buffer per connection.
const READ_BUF: usize = 512;
/// Limit for one connection's connect + upgrade.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// What each connection subscribes to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The same `GET` target for every connection, e.g. `/sub?topic=fo-1234`.
    Fixed(String),
    /// Per-topic mode: connection `i` (counted from the plan's first)
    /// subscribes to topic `i % K` of the schedule, and checks what it gets.
    Topic(Arc<Schedule>),
    /// Connection `i` subscribes to `idle.<i>/`, which nobody publishes to.
    Idle,
}

impl Target {
    /// The `GET` target of the plan's `i`-th connection.
    pub(crate) fn path(&self, i: usize) -> String {
        match self {
            Target::Fixed(t) => t.clone(),
            Target::Topic(s) => format!("/sub?topic={}", topic_name(i % s.k)),
            Target::Idle => format!("/sub?topic={}", idle_topic(i)),
        }
    }

    fn schedule(&self) -> Option<&Schedule> {
        match self {
            Target::Topic(s) => Some(s),
            _ => None,
        }
    }
}

/// What to open and how to count what arrives.
#[derive(Debug)]
pub(crate) struct ClientPlan {
    pub http: SocketAddr,
    /// What each connection subscribes to.
    pub target: Target,
    /// Index of the first connection (picks its source address: 10,000
    /// connections per 127.0.0.x).
    pub first_idx: usize,
    /// The target index of the plan's first connection: connection `j` of
    /// the plan subscribes as subscriber `target_offset + j` of the run
    /// (a worker process holds a slice of the run's subscribers).
    pub target_offset: usize,
    pub count: usize,
    pub threads: usize,
    /// False: never read after the upgrade (a stalled subscriber).
    pub read: bool,
    /// Measured messages, indices `0..messages`.
    pub messages: usize,
    /// Messages with an index below this are phase 0, the rest phase 1.
    pub phase_split: usize,
    /// Send times in payloads are nanoseconds since this instant.
    pub base: Instant,
    /// Connects in progress at once, per thread.
    pub concurrency: usize,
    pub key_seed: u64,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Counters the main thread reads while the clients run.
pub(crate) struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    ended: AtomicUsize,
    first_error: Mutex<Option<String>>,
    delivered: Vec<Padded>,
}

/// How one connection ended (if it did before the bench closed it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum End {
    #[default]
    Open,
    /// The hub sent a close frame with this code.
    Closed(u16),
    /// The hub closed the TCP connection without a close frame.
    Eof,
    /// A read error or a protocol violation (counted in `errors`).
    Error,
}

/// One connection's record.
#[derive(Debug, Clone, Copy, Default)]
struct SubRec {
    got: u32,
    next_index: u32,
    out_of_order: u32,
    last_offset: Option<u64>,
    end: End,
}

/// One message's arrivals on one thread.
#[derive(Debug, Clone, Copy)]
struct MsgRec {
    arrivals: u64,
    first_ns: u64,
    last_ns: u64,
    /// The log offset its first delivery named.
    offset: u64,
}

/// Per-topic mode: what one connection got of its topic's messages.
#[derive(Debug, Clone, Default)]
struct TopicRec {
    topic: usize,
    /// Bit `p`: the `p`-th message of the topic arrived.
    seen: Vec<u64>,
    /// Distinct messages of its topic received.
    unique: u32,
    duplicates: u32,
    /// Messages of other topics received.
    misrouted: u32,
    /// Arrived after a later message of the topic, or with an offset not
    /// above the one before.
    out_of_order: u32,
    /// Highest position seen.
    max_pos: Option<u32>,
}

impl TopicRec {
    fn new(topic: usize, messages: usize) -> TopicRec {
        TopicRec {
            topic,
            seen: vec![0; messages.div_ceil(64)],
            ..TopicRec::default()
        }
    }

    /// A delivery arrived: the `pos`-th message of this topic (`None`: a
    /// message of another topic); `offset_back`: its offset was not above
    /// the previous delivery's. True when it was one of the topic's
    /// messages not seen before.
    fn record(&mut self, pos: Option<usize>, offset_back: bool) -> bool {
        let Some(pos) = pos else {
            self.misrouted += 1;
            return false;
        };
        let (word, bit) = (pos / 64, 1u64 << (pos % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if offset_back || self.max_pos.is_some_and(|m| pos as u32 <= m) {
            self.out_of_order += 1;
        }
        self.max_pos = self.max_pos.max(Some(pos as u32));
        true
    }
}

/// Per-topic mode: one connection's tally, as [`Outcome`] reports it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct TopicTally {
    pub topic: usize,
    pub unique: u32,
    pub duplicates: u32,
    pub misrouted: u32,
    pub out_of_order: u32,
}

struct Thread {
    worker: usize,
    plan: Arc<ClientPlan>,
    shared: Arc<Shared>,
    permits: tokio::sync::Semaphore,
    hist: [RefCell<Histogram<u64>>; 2],
    msgs: RefCell<Vec<MsgRec>>,
    subs: RefCell<Vec<SubRec>>,
    /// Per-topic mode only (else empty).
    topic_recs: RefCell<Vec<TopicRec>>,
    errors: RefCell<BTreeMap<String, u64>>,
    delivered: Cell<u64>,
}

impl Thread {
    fn error(&self, kind: String) {
        *self.errors.borrow_mut().entry(kind).or_insert(0) += 1;
    }

    fn open_failed(&self, idx: usize, why: String) {
        let mut first = self.shared.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(format!("connection {idx}: {why}"));
        }
        drop(first);
        self.shared.failed.fetch_add(1, Ordering::AcqRel);
    }

    fn ended(&self, i: usize, end: End) {
        self.subs.borrow_mut()[i].end = end;
        self.shared.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// One binary message arrived on connection `i` at `now_ns`.
    fn delivery(&self, i: usize, body: &[u8], now_ns: u64) -> Result<(), String> {
        let seen = ws::parse_delivery(body).ok_or("undecodable Delivery")?;
        let (index, sent_ns) = ws::read_payload(seen.payload).ok_or("payload too short")?;
        let index = index as usize;
        if index >= self.plan.messages {
            return Err(format!("message index {index} was never published"));
        }
        let lat = now_ns.saturating_sub(sent_ns);
        let phase = usize::from(index >= self.plan.phase_split);
        self.hist[phase]
            .borrow_mut()
            .saturating_record(lat.max(1_000));
        let offset_differs = {
            let mut msgs = self.msgs.borrow_mut();
            let m = &mut msgs[index];
            let differs = m.arrivals > 0 && m.offset != seen.offset;
            if m.arrivals == 0 {
                m.offset = seen.offset;
            }
            if m.arrivals == 0 || now_ns < m.first_ns {
                m.first_ns = now_ns;
            }
            m.last_ns = m.last_ns.max(now_ns);
            m.arrivals += 1;
            differs
        };
        if offset_differs {
            self.error("subscribers got one message with different offsets".into());
        }
        // Per-topic mode counts only fresh deliveries of the right topic
        // (what the main thread waits for); a duplicate or a misrouted one
        // must not make up for a missing one.
        let mut counts = true;
        {
            let mut subs = self.subs.borrow_mut();
            let s = &mut subs[i];
            s.got += 1;
            let offset_back = s.last_offset.is_some_and(|o| seen.offset <= o);
            if let Some(schedule) = self.plan.target.schedule() {
                let mut recs = self.topic_recs.borrow_mut();
                let t = &mut recs[i];
                counts = t.record(schedule.position(t.topic, index as u32), offset_back);
            } else if index as u32 != s.next_index || offset_back {
                s.out_of_order += 1;
            }
            s.next_index = index as u32 + 1;
            s.last_offset = Some(seen.offset);
        }
        if counts {
            let d = self.delivered.get() + 1;
            self.delivered.set(d);
            self.shared.delivered[self.worker]
                .0
                .store(d, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What the threads saw, merged.
pub(crate) struct Outcome {
    /// publish→deliver, ns, per phase.
    pub hist: [Histogram<u64>; 2],
    /// Per message: arrivals, earliest and latest arrival (ns since base).
    pub arrivals: Vec<u64>,
    pub last_ns: Vec<u64>,
    /// Per message: the log offset its deliveries named (`None`: none
    /// arrived).
    pub offsets: Vec<Option<u64>>,
    /// Per-topic mode: per connection (in connection order), what it got of
    /// its topic (else empty).
    pub topics: Vec<TopicTally>,
    /// Per connection: messages received (in connection order).
    pub got: Vec<u32>,
    pub out_of_order: u64,
    /// Connections the hub closed with a close frame, by code.
    pub closed: BTreeMap<u16, usize>,
    /// Connections the hub dropped without a close frame.
    pub eof: usize,
    pub errors: BTreeMap<String, u64>,
}

/// Running clients: dropping this stops them (all sockets closed).
pub(crate) struct Clients {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<Option<ThreadOut>>>,
    plan: Arc<ClientPlan>,
}

struct ThreadOut {
    worker: usize,
    hist: [Histogram<u64>; 2],
    msgs: Vec<MsgRec>,
    subs: Vec<SubRec>,
    topic_recs: Vec<TopicRec>,
    errors: BTreeMap<String, u64>,
}

impl Clients {
    /// Starts the threads; connections open in the background (see
    /// [`Clients::connected`]).
    pub(crate) fn start(plan: ClientPlan) -> Result<Clients, LoadgenError> {
        let plan = Arc::new(plan);
        let shared = Arc::new(Shared {
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            delivered: (0..plan.threads).map(|_| Padded::default()).collect(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut clients = Clients {
            shared: shared.clone(),
            stop,
            threads: Vec::new(),
            plan: plan.clone(),
        };
        for w in 0..plan.threads {
            let (plan, shared, rx) = (plan.clone(), shared.clone(), stop_rx.clone());
            let t = std::thread::Builder::new()
                .name(format!("fanout-sub-{w}"))
                .spawn(move || worker(w, plan, shared, rx))
                .map_err(|e| LoadgenError::io("spawning a subscriber thread", e))?;
            clients.threads.push(t);
        }
        Ok(clients)
    }

    pub(crate) fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Acquire)
    }

    pub(crate) fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Connections that ended before the bench closed them.
    pub(crate) fn ended(&self) -> usize {
        self.shared.ended.load(Ordering::Relaxed)
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.shared
            .first_error
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Measured messages received so far, over all connections (per-topic
    /// mode: only those of the subscriber's topic, once each).
    pub(crate) fn delivered(&self) -> u64 {
        self.shared
            .delivered
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes every connection and merges what the threads counted.
    pub(crate) fn finish(mut self) -> Outcome {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let mut outs: Vec<ThreadOut> = threads
            .into_iter()
            .filter_map(|t| t.join().ok().flatten())
            .collect();
        outs.sort_by_key(|o| o.worker);
        let plan = &self.plan;
        let mut o = Outcome {
            hist: [new_histogram(), new_histogram()],
            arrivals: vec![0; plan.messages],
            last_ns: vec![0; plan.messages],
            offsets: vec![None; plan.messages],
            topics: if plan.target.schedule().is_some() {
                vec![TopicTally::default(); plan.count]
            } else {
                Vec::new()
            },
            got: vec![0; plan.count],
            out_of_order: 0,
            closed: BTreeMap::new(),
            eof: 0,
            errors: BTreeMap::new(),
        };
        if outs.len() != plan.threads {
            o.errors.insert("a subscriber thread failed".into(), 1);
        }
        for t in outs {
            for (h, th) in o.hist.iter_mut().zip(&t.hist) {
                h.add(th).expect("same bounds");
            }
            for (i, m) in t.msgs.iter().enumerate() {
                o.arrivals[i] += m.arrivals;
                if m.arrivals > 0 {
                    o.last_ns[i] = o.last_ns[i].max(m.last_ns);
                    match o.offsets[i] {
                        Some(off) if off != m.offset => {
                            *o.errors
                                .entry("subscribers got one message with different offsets".into())
                                .or_insert(0) += 1;
                        }
                        _ => o.offsets[i] = Some(m.offset),
                    }
                }
            }
            for (j, r) in t.topic_recs.iter().enumerate() {
                o.topics[t.worker + j * plan.threads] = TopicTally {
                    topic: r.topic,
                    unique: r.unique,
                    duplicates: r.duplicates,
                    misrouted: r.misrouted,
                    out_of_order: r.out_of_order,
                };
            }
            for (j, s) in t.subs.iter().enumerate() {
                o.got[t.worker + j * plan.threads] = s.got;
                o.out_of_order += u64::from(s.out_of_order);
                match s.end {
                    End::Closed(code) => *o.closed.entry(code).or_insert(0) += 1,
                    End::Eof => o.eof += 1,
                    End::Open | End::Error => {}
                }
            }
            for (k, v) in t.errors {
                *o.errors.entry(k).or_insert(0) += v;
            }
        }
        o
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(
    w: usize,
    plan: Arc<ClientPlan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<ThreadOut> {
    let mine = (w..plan.count).step_by(plan.threads).count();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut first = shared.first_error.lock().expect("not poisoned");
            first.get_or_insert_with(|| format!("building a tokio runtime: {e}"));
            drop(first);
            shared.failed.fetch_add(mine, Ordering::AcqRel);
            return None;
        }
    };
    let th = Rc::new(Thread {
        worker: w,
        plan: plan.clone(),
        shared,
        permits: tokio::sync::Semaphore::new(plan.concurrency.max(1)),
        hist: [RefCell::new(new_histogram()), RefCell::new(new_histogram())],
        msgs: RefCell::new(vec![
            MsgRec {
                arrivals: 0,
                first_ns: 0,
                last_ns: 0,
                offset: 0,
            };
            plan.messages
        ]),
        subs: RefCell::new(vec![SubRec::default(); mine]),
        topic_recs: RefCell::new(match plan.target.schedule() {
            Some(s) => (w..plan.count)
                .step_by(plan.threads)
                .map(|i| (plan.target_offset + i) % s.k)
                .map(|t| TopicRec::new(t, s.by_topic[t].len()))
                .collect(),
            None => Vec::new(),
        }),
        errors: RefCell::new(BTreeMap::new()),
        delivered: Cell::new(0),
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for (i, idx) in (w..plan.count).step_by(plan.threads).enumerate() {
            tokio::task::spawn_local(connection(th.clone(), i, plan.first_idx + idx));
        }
        let _ = stop.wait_for(|s| *s).await;
    });
    // Dropping the tasks closes their sockets.
    drop(local);
    drop(rt);
    let th = Rc::try_unwrap(th).ok()?;
    let [h0, h1] = th.hist;
    Some(ThreadOut {
        worker: w,
        hist: [h0.into_inner(), h1.into_inner()],
        msgs: th.msgs.into_inner(),
        subs: th.subs.into_inner(),
        topic_recs: th.topic_recs.into_inner(),
        errors: th.errors.into_inner(),
    })
}

/// Connects, upgrades, then reads until the bench stops (the task is
/// dropped) or the hub ends the connection.
async fn connection(th: Rc<Thread>, i: usize, idx: usize) {
    let opened = {
        let _permit = th.permits.acquire().await.expect("never closed");
        tokio::time::timeout(OPEN_TIMEOUT, open(&th, idx)).await
    };
    let (stream, mut buf, mut filled) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => return th.open_failed(idx, why),
        Err(_) => return th.open_failed(idx, format!("no upgrade within {OPEN_TIMEOUT:?}")),
    };
    th.shared.connected.fetch_add(1, Ordering::AcqRel);
    if !th.plan.read {
        // A stalled subscriber: holds its socket, never reads.
        let _stream = stream;
        std::future::pending::<()>().await;
        return;
    }
    let fd = stream.as_raw_fd();
    let base = th.plan.base;
    let mut now_ns = base.elapsed().as_nanos() as u64;
    loop {
        // Every whole frame in the buffer.
        let mut pos = 0;
        while pos < filled {
            match ws::next_frame(&buf[pos..filled]) {
                Frame::Incomplete { need } => {
                    if need > buf.len() {
                        buf.resize(need.next_power_of_two(), 0);
                    }
                    break;
                }
                Frame::Binary { start, end } => {
                    if let Err(why) = th.delivery(i, &buf[pos + start..pos + end], now_ns) {
                        th.error(why);
                    }
                    pos += end;
                }
                Frame::Skip { used } => pos += used,
                Frame::Close { code, .. } => return th.ended(i, End::Closed(code)),
                Frame::Bad(why) => {
                    th.error(format!("protocol: {why}"));
                    return th.ended(i, End::Error);
                }
            }
        }
        if pos > 0 {
            buf.copy_within(pos..filled, 0);
            filled -= pos;
        }
        if let Err(e) = stream.readable().await {
            th.error(format!("i/o: {}", e.kind()));
            return th.ended(i, End::Error);
        }
        let space = buf.len() - filled;
        let ptr = buf[filled..].as_mut_ptr();
        let mut n = 0usize;
        let r = stream.try_io(Interest::READABLE, || {
            // SAFETY: `ptr` points at `space` writable bytes of `buf`,
            // which is not touched until this call returns.
            let k = unsafe { libc::recv(fd, ptr.cast(), space, 0) };
            if k < 0 {
                return Err(std::io::Error::last_os_error());
            }
            n = k as usize;
            if n == 0 || n == space {
                Ok(())
            } else {
                // A short read drained the socket: clear the readiness now
                // instead of with a second recv that says EAGAIN.
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        });
        match r {
            Ok(()) if n == 0 => return th.ended(i, End::Eof),
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                th.error(format!("i/o: {}", e.kind()));
                return th.ended(i, End::Error);
            }
        }
        filled += n;
        if n > 0 {
            now_ns = base.elapsed().as_nanos() as u64;
        }
    }
}

/// Connects from the connection's source address and upgrades. Returns
/// the stream, the read buffer and how much of it holds frames already.
async fn open(th: &Thread, idx: usize) -> Result<(TcpStream, Vec<u8>, usize), String> {
    let plan = &th.plan;
    let mut stream = connect(idx, plan.http)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let key = ws::key_from(plan.key_seed, idx as u64);
    let host = plan.http.to_string();
    let target = plan.target.path(plan.target_offset + idx - plan.first_idx);
    stream
        .write_all(&ws::upgrade_request(&host, &target, &key))
        .await
        .map_err(|e| format!("sending the upgrade: {e}"))?;
    let mut buf = vec![0u8; READ_BUF];
    let mut filled = 0;
    loop {
        stream
            .readable()
            .await
            .map_err(|e| format!("waiting for the upgrade answer: {e}"))?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err("closed by the hub during the upgrade".into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("reading the upgrade answer: {e}")),
        }
        if let Some(head) = ws::check_upgrade_response(&buf[..filled], &key)? {
            buf.copy_within(head..filled, 0);
            filled -= head;
            buf.truncate(READ_BUF.max(filled));
            buf.shrink_to_fit();
            return Ok((stream, buf, filled));
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_tally() {
        let mut t = TopicRec::new(3, 130);
        assert!(t.record(Some(0), false));
        assert!(t.record(Some(1), false));
        assert!(!t.record(Some(1), true)); // again
        assert!(!t.record(None, false)); // another topic's
        assert!(t.record(Some(129), false)); // 2..=128 skipped
        assert!(t.record(Some(64), false)); // late: after 129
        assert!(t.record(Some(65), true)); // its offset went back (and late)
        assert_eq!(
            (t.unique, t.duplicates, t.misrouted, t.out_of_order),
            (5, 1, 1, 2)
        );
        assert_eq!(t.max_pos, Some(129));
        // In order, once each: nothing flagged.
        let mut u = TopicRec::new(0, 3);
        for p in 0..3 {
            assert!(u.record(Some(p), false));
        }
        assert_eq!(
            (u.unique, u.duplicates, u.misrouted, u.out_of_order),
            (3, 0, 0, 0)
        );
    }

    #[test]
    fn targets() {
        let s = Arc::new(Schedule::new(1, 7, 100));
        assert_eq!(Target::Topic(s.clone()).path(0), "/sub?topic=t.0/");
        assert_eq!(Target::Topic(s).path(15), "/sub?topic=t.1/");
        assert_eq!(Target::Idle.path(12), "/sub?topic=idle.12/");
        assert_eq!(Target::Fixed("/sub?topic=x".into()).path(5), "/sub?topic=x");
    }
}
