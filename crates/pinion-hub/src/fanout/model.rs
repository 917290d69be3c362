//! Model test of one core's fan-out: the real [`Fanout`] state machine,
//! driven by random sequences of batches (encoded or not), subscribers
//! joining (live, from an earlier offset, from a future one; WebSocket or
//! SP; one or several prefixes), leaving, pings, replay chunks answered
//! late, time passing, and sockets that take a few bytes, nothing, or
//! everything. The sockets are in-memory pipes ([`MemSock`]); the replay
//! thread is the real [`ReplayQueue`] (few slots, so replays wait, stall
//! and are cancelled) handing out chunks read by [`replay_chunk`] from an
//! in-memory log ([`MemLog`]), whose records have their real sizes (so
//! the read budget cuts chunks short of the matching records).
//!
//! The oracle is a linear scan: what each subscriber read must be every
//! record of the log from its start whose topic passes its filter, once,
//! in order, ending (if it was cut) exactly where its close frame says to
//! resume. So delivery through the index equals a scan over every
//! subscriber, across churn and replay-to-live seams. Of the replays: no
//! chunk is read for a subscriber that has left, no more than the cap
//! hold a slot, every replay is read within one chunk per other replay
//! known when it asked (round-robin), and none is left behind at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pinion_journal::Record;
use proptest::prelude::*;

use super::*;
use crate::stats::{HubStats, LatencyBuckets};

/// An in-memory connection: accepts `room` more bytes, then `WouldBlock`.
#[derive(Default)]
struct MemSock {
    st: Mutex<MemState>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct MemState {
    out: Vec<u8>,
    room: usize,
    shut: bool,
}

impl MemSock {
    fn new(room: usize) -> Arc<MemSock> {
        let s = MemSock::default();
        s.st.lock().unwrap().room = room;
        Arc::new(s)
    }

    fn give(&self, n: usize) {
        let mut st = self.st.lock().unwrap();
        st.room = st.room.saturating_add(n);
        drop(st);
        self.notify.notify_waiters();
    }

    fn block(&self) {
        self.st.lock().unwrap().room = 0;
    }

    fn write_some<'a>(&self, bufs: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
        let mut st = self.st.lock().unwrap();
        if st.shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if st.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = st.room.min(b.len());
            st.out.extend_from_slice(&b[..take]);
            st.room -= take;
            n += take;
            if take < b.len() {
                break;
            }
        }
        Ok(n)
    }
}

impl SubSocket for MemSock {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_some(std::iter::once(buf))
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_some(bufs.iter().map(|b| &**b))
    }

    async fn writable(&self) {
        loop {
            // Registered before the check, so a `give` in between still
            // wakes it.
            let woken = self.notify.notified();
            {
                let st = self.st.lock().unwrap();
                if st.room > 0 || st.shut {
                    return;
                }
            }
            woken.await;
        }
    }

    fn shutdown(&self) {
        self.st.lock().unwrap().shut = true;
        self.notify.notify_waiters();
    }
}

/// The log as the replay thread sees it: seeking past the end is an
/// error, as in the journal's reader.
struct MemLog<'a> {
    log: &'a [Record],
    pos: usize,
}

impl LogSource for MemLog<'_> {
    type Error = String;

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        if offset > self.log.len() as u64 {
            return Err(format!("offset {offset} is beyond the end"));
        }
        self.pos = offset as usize;
        Ok(())
    }

    fn next_record(&mut self) -> Option<Result<Record, String>> {
        let r = self.log.get(self.pos)?.clone();
        self.pos += 1;
        Some(Ok(r))
    }
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        cluster: None,
        inflight: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        head: AtomicU64::new(0),
        log_ok: AtomicBool::new(true),
        stats: HubStats::default(),
        latency: LatencyBuckets::default(),
        auth: None,
        conn_claims: Vec::new(),
    })
}

#[derive(Debug, Clone)]
enum Start {
    Live,
    Back(u64),
    Ahead(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// A batch; `lost`: logged, but the core never gets it (the next
    /// batch then starts past the watermark).
    Publish {
        topics: Vec<Vec<u8>>,
        encoded: bool,
        lost: bool,
    },
    Subscribe {
        ws: bool,
        hello: bool,
        filter: Vec<Vec<u8>>,
        start: Start,
        room: usize,
    },
    Leave(usize),
    Replay,
    Drain(usize, usize),
    Block(usize),
    Ping(usize),
    /// Time passes (milliseconds): replays parked that long give up their
    /// slots.
    Wait(u64),
}

fn word() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'/')], 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    let start = prop_oneof![
        2 => Just(Start::Live),
        2 => (0u64..12).prop_map(Start::Back),
        1 => (1u64..3).prop_map(Start::Ahead),
    ];
    let room = prop_oneof![Just(0usize), Just(60), Just(usize::MAX / 4)];
    prop_oneof![
        5 => (
            proptest::collection::vec(word(), 1..5),
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.05),
        )
            .prop_map(|(topics, encoded, lost)| Op::Publish { topics, encoded, lost }),
        3 => (
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(word(), 0..4),
            start,
            room,
        )
            .prop_map(|(ws, hello, filter, start, room)| Op::Subscribe {
                ws,
                hello: ws && hello,
                filter,
                start,
                room,
            }),
        1 => any::<usize>().prop_map(Op::Leave),
        4 => Just(Op::Replay),
        3 => (any::<usize>(), prop_oneof![Just(30usize), Just(200), Just(usize::MAX / 4)])
            .prop_map(|(k, n)| Op::Drain(k, n)),
        1 => any::<usize>().prop_map(Op::Block),
        1 => any::<usize>().prop_map(Op::Ping),
        1 => prop_oneof![Just(5u64), Just(150)].prop_map(Op::Wait),
    ]
}

struct Client {
    id: u64,
    framing: Framing,
    hello: bool,
    filter: Vec<Bytes>,
    start: u64,
    sock: Arc<MemSock>,
    /// The test ended it (`Gone`).
    left: bool,
}

struct Harness {
    fan: Fanout<MemSock>,
    subs: HashMap<u64, Sub<MemSock>>,
    replay_rx: std::sync::mpsc::Receiver<ReplayReq>,
    replays: ReplayQueue,
    max_replays: usize,
    /// The replay thread's clock.
    now: Instant,
    /// Chunks read so far.
    served: u64,
    /// Per subscriber with a request at the queue: chunks read when it
    /// asked, and how many replays the queue held then (it must be read
    /// within that many chunks).
    asked: HashMap<u64, (u64, u64)>,
    log: Vec<Record>,
    buf: BytesMut,
    clients: Vec<Client>,
    next_id: u64,
}

impl Harness {
    fn new(max_queued: usize, max_replays: usize) -> Harness {
        let (rtx, replay_rx) = std::sync::mpsc::channel();
        let fan = Fanout::new(
            0,
            tokio::sync::mpsc::unbounded_channel(),
            rtx,
            0,
            max_queued,
            shared(),
        );
        Harness {
            fan,
            subs: HashMap::new(),
            replay_rx,
            replays: ReplayQueue::new(max_replays),
            max_replays,
            now: Instant::now(),
            served: 0,
            asked: HashMap::new(),
            log: Vec::new(),
            buf: BytesMut::new(),
            clients: Vec::new(),
            next_id: 1,
        }
    }

    /// Lets the writability tasks run, and handles what they and the
    /// fan-out sent itself; collects replay requests.
    async fn settle(&mut self) {
        loop {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let mut any = false;
            while let Ok(m) = self.fan.rx.try_recv() {
                any = true;
                self.fan.dispatch(m, &mut self.subs).await;
            }
            if !any {
                break;
            }
        }
        while let Ok(r) = self.replay_rx.try_recv() {
            self.asked
                .insert(r.sub, (self.served, self.replays.held() as u64 + 1));
            self.replays.push(r);
        }
    }

    fn pick(&self, k: usize) -> Option<usize> {
        (!self.clients.is_empty()).then(|| k % self.clients.len())
    }

    async fn apply(&mut self, op: Op) {
        self.apply_op(op).await;
        // As the run loop does after each round of messages: a slice of
        // the departed subscribers' index entries.
        self.fan.unindex_some();
    }

    async fn apply_op(&mut self, op: Op) {
        match op {
            Op::Publish {
                topics,
                encoded,
                lost,
            } => {
                let first = self.log.len() as u64;
                let mut entries = Vec::new();
                for t in topics {
                    let offset = self.log.len() as u64;
                    // As the journal lays it out (header, topic, 8 bytes of
                    // payload, padded to 8), for the read budget.
                    let byte_len =
                        (pinion_journal::RECORD_HEADER_LEN_V2 + t.len() + 8).next_multiple_of(8);
                    let rec = Record {
                        offset,
                        term: 0,
                        kind: pinion_journal::RecordKind::Message,
                        continued: false,
                        timestamp_us: 1000 + offset,
                        client_id: [7; 16],
                        seq: offset,
                        topic: Bytes::from(t),
                        payload: Bytes::from(offset.to_be_bytes().to_vec()),
                        byte_pos: 0,
                        byte_len: byte_len as u32,
                    };
                    if encoded {
                        entries.push(encode(
                            &Durable {
                                offset,
                                timestamp_us: rec.timestamp_us,
                                client_id: &rec.client_id,
                                seq: rec.seq,
                                topic: &rec.topic,
                                payload: &rec.payload,
                            },
                            &mut self.buf,
                        ));
                    }
                    self.log.push(rec);
                }
                let b = FanBatch {
                    first,
                    next: self.log.len() as u64,
                    encoded,
                    entries,
                };
                if !lost {
                    self.fan
                        .dispatch(FanIn::Batch(Arc::new(b)), &mut self.subs)
                        .await;
                }
            }
            Op::Subscribe {
                ws,
                hello,
                filter,
                start,
                room,
            } => {
                let live = self.fan.live_next;
                let from = match start {
                    Start::Live => None,
                    Start::Back(k) => Some(live.saturating_sub(k)),
                    Start::Ahead(k) => Some(live + k),
                };
                let id = self.next_id;
                self.next_id += 1;
                let sock = MemSock::new(room);
                let filter: Vec<Bytes> = filter.into_iter().map(Bytes::from).collect();
                let framing = if ws { Framing::Ws } else { Framing::Sp };
                self.clients.push(Client {
                    id,
                    framing,
                    hello,
                    filter: filter.clone(),
                    start: from.unwrap_or(live),
                    sock: sock.clone(),
                    left: false,
                });
                let n = NewSub {
                    id,
                    framing,
                    io: sock,
                    filter,
                    from,
                    hello,
                };
                self.fan.dispatch(FanIn::NewSub(n), &mut self.subs).await;
            }
            Op::Leave(k) => {
                if let Some(i) = self.pick(k) {
                    self.clients[i].left = true;
                    let id = self.clients[i].id;
                    self.fan.dispatch(FanIn::Gone(id), &mut self.subs).await;
                }
            }
            Op::Replay => {
                self.answer_replay().await;
            }
            Op::Wait(ms) => self.now += Duration::from_millis(ms),
            Op::Drain(k, n) => {
                if let Some(i) = self.pick(k) {
                    self.clients[i].sock.give(n);
                }
            }
            Op::Block(k) => {
                if let Some(i) = self.pick(k) {
                    self.clients[i].sock.block();
                }
            }
            Op::Ping(k) => {
                if let Some(i) = self.pick(k) {
                    if self.clients[i].framing == Framing::Ws {
                        let id = self.clients[i].id;
                        let p = Bytes::from_static(b"ping");
                        self.fan.dispatch(FanIn::Pong(id, p), &mut self.subs).await;
                    }
                }
            }
        }
        self.settle().await;
    }

    /// The replay thread's turn: one read of the log for the chunks the
    /// queue hands out, if any. Whether it did.
    async fn answer_replay(&mut self) -> bool {
        let group = self.replays.next(self.now);
        if group.is_empty() {
            return false;
        }
        assert!(self.replays.active() <= self.max_replays, "over the cap");
        for req in &group {
            assert!(
                self.subs.contains_key(&req.sub),
                "a chunk read for subscriber {}, who left",
                req.sub
            );
            let (at, within) = self.asked.remove(&req.sub).expect("it asked");
            assert!(
                self.served - at < within,
                "subscriber {} waited {} reads, more than the {within} replays then known",
                req.sub,
                self.served - at
            );
        }
        self.served += 1;
        let mut log = MemLog {
            log: &self.log,
            pos: 0,
        };
        let outs = replay_chunk(&group, &mut log, &mut self.buf);
        for (req, r) in group.iter().zip(outs) {
            let finished = r.error.is_some() || r.next >= req.upto;
            let frames = !r.frames.is_empty();
            self.fan.dispatch(FanIn::Replayed(r), &mut self.subs).await;
            self.replays.done(req.sub, finished, frames, self.now);
        }
        // The thread publishes these after every read.
        let c = self.replays.take_cancelled();
        self.fan
            .shared
            .stats
            .replays_cancelled
            .fetch_add(c, Ordering::Relaxed);
        true
    }

    /// Opens every socket and answers every replay until nothing moves.
    async fn finish(&mut self) {
        let end = self.log.len() as u64;
        if self.fan.live_next < end {
            // The last batch was lost: an empty one tells the core how far
            // the log is.
            let b = FanBatch {
                first: end,
                next: end,
                encoded: true,
                entries: Vec::new(),
            };
            self.fan
                .dispatch(FanIn::Batch(Arc::new(b)), &mut self.subs)
                .await;
        }
        for c in &self.clients {
            c.sock.give(usize::MAX / 4);
        }
        for _ in 0..100_000 {
            self.settle().await;
            if !self.answer_replay().await {
                // Nothing to read: either nothing is left, or slots are
                // held by chunks the sockets took without the core asking
                // again (it is not waiting for anything then), which time
                // frees.
                if self.replays.held() == 0 {
                    return;
                }
                self.now += REPLAY_STALL;
            }
        }
        panic!("the fan-out never settled");
    }
}

#[derive(Debug, PartialEq)]
enum Item {
    Hello(u64),
    Record(u64, Vec<u8>),
    Close(u16, String),
    Pong,
}

fn record(body: &[u8]) -> Item {
    let z = body.iter().position(|&b| b == 0).expect("topic end");
    let d = Delivery::decode(&body[z + 1..]).expect("a Delivery");
    Item::Record(d.offset.expect("offset"), body[..z].to_vec())
}

/// The frames in `b`, and whether it ends inside one (a connection ended
/// mid-frame).
fn parse(framing: Framing, mut b: &[u8]) -> (Vec<Item>, bool) {
    let mut out = Vec::new();
    while !b.is_empty() {
        match framing {
            Framing::Sp => {
                if b.len() < 8 {
                    return (out, true);
                }
                let n = u64::from_be_bytes(b[..8].try_into().unwrap()) as usize;
                if b.len() < 8 + n {
                    return (out, true);
                }
                out.push(record(&b[8..8 + n]));
                b = &b[8 + n..];
            }
            Framing::Ws => {
                if b.len() < 2 || (b[1] == 126 && b.len() < 4) {
                    return (out, true);
                }
                let (op, len, head) = match b[1] {
                    126 => (b[0], u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 => panic!("no frame here is that long"),
                    n => (b[0], n as usize, 2),
                };
                if b.len() < head + len {
                    return (out, true);
                }
                let p = &b[head..head + len];
                out.push(match op {
                    0x82 => record(p),
                    0x81 => {
                        let s = std::str::from_utf8(p).unwrap();
                        let n = s
                            .strip_prefix("{\"next\":")
                            .and_then(|s| s.strip_suffix('}'))
                            .unwrap();
                        Item::Hello(n.parse().unwrap())
                    }
                    0x8A => Item::Pong,
                    0x88 => Item::Close(
                        u16::from_be_bytes([p[0], p[1]]),
                        String::from_utf8(p[2..].to_vec()).unwrap(),
                    ),
                    other => panic!("unexpected opcode byte {other:#x}"),
                });
                b = &b[head + len..];
            }
        }
    }
    (out, false)
}

fn resume_offset(reason: &str) -> u64 {
    reason
        .rsplit_once("resume from offset ")
        .expect("the reason names the offset")
        .1
        .parse()
        .unwrap()
}

fn check(h: &Harness) -> Result<(), TestCaseError> {
    h.fan.index.check();
    let held: usize = h.subs.values().map(|s| s.filter.len()).sum();
    // Departed subscribers' entries still waiting for removal.
    let departing: usize = h.fan.unindex.iter().map(|(_, f)| f.len()).sum();
    prop_assert_eq!(h.fan.index.len(), held + departing);
    let counted = h.fan.shared.stats.subscribers_tcp.load(Ordering::Relaxed)
        + h.fan.shared.stats.subscribers_ws.load(Ordering::Relaxed);
    prop_assert_eq!(counted as usize, h.subs.len());
    let end = h.log.len() as u64;
    prop_assert_eq!(h.fan.live_next, end);
    prop_assert_eq!(h.replays.held(), 0, "replays left behind");
    prop_assert_eq!(h.replays.active(), 0);
    for c in &h.clients {
        let out = c.sock.st.lock().unwrap().out.clone();
        let (items, truncated) = parse(c.framing, &out);
        let mut records = Vec::new();
        let mut close = None;
        for (i, it) in items.into_iter().enumerate() {
            match it {
                Item::Hello(n) => {
                    prop_assert!(c.hello && i == 0, "sub {}: a hello at {}", c.id, i);
                    prop_assert_eq!(n, c.start);
                }
                Item::Record(o, t) => {
                    prop_assert!(close.is_none(), "sub {}: a record after the close", c.id);
                    prop_assert_eq!(&t, &h.log[o as usize].topic[..]);
                    records.push(o);
                }
                Item::Close(code, why) => {
                    prop_assert_eq!(code, CLOSE_SLOW, "sub {}: {}", c.id, why);
                    close = Some(resume_offset(&why));
                }
                Item::Pong => {}
            }
        }
        // The linear scan.
        let want: Vec<u64> = (c.start..end)
            .filter(|&o| matches(&c.filter, &h.log[o as usize].topic))
            .collect();
        if let Some(s) = h.subs.get(&c.id) {
            prop_assert!(!c.left, "sub {} left but is still held", c.id);
            prop_assert!(
                s.live && s.queue.is_empty(),
                "sub {} did not catch up",
                c.id
            );
            prop_assert!(close.is_none() && !truncated);
            prop_assert_eq!(&records, &want, "sub {} (filter {:?})", c.id, c.filter);
        } else if let Some(r) = close {
            prop_assert!(r <= end && !truncated);
            let upto: Vec<u64> = want.iter().copied().filter(|&o| o < r).collect();
            prop_assert_eq!(&records, &upto, "sub {} cut, resume {}", c.id, r);
        } else {
            prop_assert!(
                want.starts_with(&records),
                "sub {}: {:?} is not a prefix of {:?}",
                c.id,
                records,
                want
            );
            // Only the test's `Gone` or a cut SP subscriber end quietly.
            prop_assert!(c.left || c.framing == Framing::Sp, "sub {} vanished", c.id);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, max_queued: usize, max_replays: usize) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::new(max_queued, max_replays);
        for op in ops {
            h.apply(op).await;
        }
        h.finish().await;
        check(&h)
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        ..ProptestConfig::default()
    })]

    /// Delivery through the index, the watermark and the replay seam
    /// equals a linear scan of the log for every subscriber.
    #[test]
    fn delivery_equals_a_linear_scan(
        ops in proptest::collection::vec(op(), 1..150),
        max_queued in prop_oneof![Just(1usize << 20), Just(400), Just(2000)],
        max_replays in prop_oneof![Just(1usize), Just(2), Just(16)],
    ) {
        run(ops, max_queued, max_replays)?;
    }
}

/// A subscriber that joins while the writer saw nobody gets the records
/// the writer did not encode from the log, then the live ones.
#[test]
fn unencoded_records_come_from_the_log() {
    let ops = vec![
        Op::Subscribe {
            ws: true,
            hello: true,
            filter: vec![b"a".to_vec()],
            start: Start::Live,
            room: usize::MAX / 4,
        },
        Op::Publish {
            topics: vec![b"a1".to_vec(), b"b".to_vec()],
            encoded: false,
            lost: false,
        },
        Op::Publish {
            topics: vec![b"a2".to_vec()],
            encoded: true,
            lost: false,
        },
        Op::Replay,
        Op::Publish {
            topics: vec![b"a3".to_vec()],
            encoded: true,
            lost: false,
        },
    ];
    run(ops, 1 << 20, 16).unwrap();
}

/// Subscribers on other topics are not visited by a publish: with
/// thousands of them, one record reaches exactly its one subscriber.
#[test]
fn a_record_visits_only_its_subscribers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::new(1 << 20, 16);
        for i in 0..5000u32 {
            h.apply(Op::Subscribe {
                ws: true,
                hello: false,
                filter: vec![format!("idle.{i}/").into_bytes()],
                start: Start::Live,
                room: usize::MAX / 4,
            })
            .await;
        }
        let mut visited = 0;
        h.fan.index.for_each_match(b"idle.4321/x", |_| visited += 1);
        assert_eq!(visited, 1);
        h.apply(Op::Publish {
            topics: vec![b"idle.4321/x".to_vec()],
            encoded: true,
            lost: false,
        })
        .await;
        for c in &h.clients {
            let n = c.sock.st.lock().unwrap().out.len();
            assert_eq!(n > 0, c.filter[0] == b"idle.4321/"[..], "sub {}", c.id);
        }
        check(&h).unwrap();
    });
}

/// Subscribers leaving by the thousand do not stop the core: their index
/// entries go a slice at a time between messages, matches on them in the
/// meantime find nobody, and the index ends up empty.
#[test]
fn departed_subscribers_leave_the_index_a_slice_at_a_time() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::new(1 << 20, 16);
        for i in 0..100u32 {
            let filter = (0..64).map(|j| format!("t{i}.{j}/").into_bytes()).collect();
            h.apply_op(Op::Subscribe {
                ws: true,
                hello: false,
                filter,
                start: Start::Live,
                room: usize::MAX / 4,
            })
            .await;
        }
        assert_eq!(h.fan.index.len(), 6400);
        for k in 0..100 {
            h.apply_op(Op::Leave(k)).await;
        }
        assert!(h.subs.is_empty());
        // Nothing removed yet; a record on a departed topic reaches nobody.
        assert_eq!(h.fan.index.len(), 6400);
        h.apply_op(Op::Publish {
            topics: vec![b"t7.3/x".to_vec()],
            encoded: true,
            lost: false,
        })
        .await;
        let mut slices = 0;
        while !h.fan.index.is_empty() {
            let before = h.fan.index.len();
            h.fan.unindex_some();
            assert!(before - h.fan.index.len() <= UNINDEX_SLICE);
            slices += 1;
        }
        assert_eq!(slices, 6400usize.div_ceil(UNINDEX_SLICE));
        assert!(h.fan.unindex.is_empty());
        h.fan.index.check();
    });
}
