//! Operation-sequence drivers that check the [`Protocol`] contract.
//!
//! Shared by the proptest suite (`tests/patterns_prop.rs`) and the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, which include this file with
//! `#[path]`), so both exercise the same invariants. It depends on nothing
//! but `pinion-core` and `std`; the callers turn their random input into
//! [`Step`]s or [`LinkStep`]s.
//!
//! [`Harness`] drives one state machine as a runtime would, with a model of
//! its pipes' write queues, and checks after every call, for every pattern:
//!
//! * a transmission goes to a pipe the pattern was given (not removed, not
//!   closed) that has credit;
//! * every started operation completes at most once, never after
//!   `start_op` returned `Err` or after `cancel_op`;
//! * no call panics.
//!
//! For the patterns whose rules it knows (all but SURVEYOR and RESPONDENT,
//! which get only the checks above) it also checks:
//!
//! * every receive with a deadline has completed once time passed it,
//!   `can_send` matches the pipes' credits, `poll_timeout` is in the future
//!   after `handle_timeout`, and at the end closing every context completes
//!   every pending operation;
//! * pattern rules: pair1 hop counts, REQ ids with the top bit and replies
//!   matched to their own request, REP backtraces, routing and TTL; PUB
//!   fan-out to every pipe with credit and the bounded drop-oldest queue of
//!   the others, drained in order; SUB deliveries to exactly the contexts
//!   with a matching subscription (against a linear model), subscribe and
//!   unsubscribe results; BUS fan-out except the pipe named in the header,
//!   and deliveries headed with the receiving pipe's id.
//!
//! [`Link`] connects a REQ and a REP back to back through their state
//! machines and checks that every reply reaches the request it answers and
//! that, with resend on and a link up, every request is eventually answered.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use pinion_core::message::MAX_HEADER;
use pinion_core::protocol::pub0::PIPE_QUEUE;
use pinion_core::protocol::{self, CtxId, Op, OpId, Output, PipeId, Protocol, ProtocolKind};
use pinion_core::{CallerError, Header, Message, OpError, Options, PeerError};

/// One input to a [`Harness`].
#[derive(Debug, Clone)]
pub enum Step {
    /// `add_pipe` (skipped while that pipe is live); `peer` `None` is the
    /// compatible protocol.
    AddPipe {
        pipe: u8,
        peer: Option<u16>,
        credits: u8,
    },
    /// `remove_pipe`, live or not.
    RemovePipe { pipe: u8 },
    /// The pipe's write queue drains up to `n` messages (`handle_credit`);
    /// on a dead pipe, a stray `handle_credit`.
    Credit { pipe: u8, n: u8 },
    /// `handle_message` with arbitrary bytes, the first `split` of them in
    /// the header (as inproc may deliver).
    Message { pipe: u8, split: u8, data: Vec<u8> },
    /// A well-formed message for the pattern (a reply to a recorded request,
    /// a request with `shape` hops, a pair1 hop count, a SUB payload that
    /// starts with a subscribed topic).
    Echo { pipe: u8, shape: u8, tail: Vec<u8> },
    /// `handle_send` (only while `can_send`, except for REP, which routes by
    /// a recorded backtrace or an arbitrary header; BUS picks its header
    /// from `route`). On SUB, which cannot send, also a subscribe (even
    /// `route`) or unsubscribe (odd) of the first bytes of `data`, so that
    /// inputs without [`Step::Subscribe`] (the fuzz targets') reach
    /// subscriptions.
    Send { route: u8, data: Vec<u8> },
    /// `start_op` with a send on a context (255: an unknown one).
    StartSend { ctx: u8, deadline: Option<u16> },
    /// `start_op` with a receive on a context.
    StartRecv { ctx: u8, deadline: Option<u16> },
    /// `cancel_op` on a pending operation (or an unknown one).
    CancelOp { which: u8 },
    /// `open_ctx`.
    OpenCtx,
    /// `close_ctx` on an open context (or an unknown one).
    CloseCtx { which: u8 },
    /// Time passes by `ms`; `handle_timeout`.
    Advance { ms: u16 },
    /// `subscribe` on a context (255: an unknown one).
    Subscribe { ctx: u8, topic: Vec<u8> },
    /// `unsubscribe` on a context (255: an unknown one).
    Unsubscribe { ctx: u8, topic: Vec<u8> },
}

/// Number of distinct pipe ids the steps name.
pub const PIPES: u8 = 6;

fn pipe_id(p: u8) -> PipeId {
    PipeId(1 + u32::from(p % PIPES))
}

/// `header ++ body`: the bytes a message carries on the wire.
fn flat(msg: &Message) -> Vec<u8> {
    let mut v = msg.header.as_slice().to_vec();
    v.extend_from_slice(&msg.body);
    v
}

/// The driver's view of one pipe.
#[derive(Debug, Default)]
struct PipeModel {
    /// Credits the pattern may still spend.
    credits: u32,
    /// Messages in the write queue (spent credits).
    queued: VecDeque<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Send,
    Recv,
}

#[derive(Debug)]
struct PendingOp {
    ctx: CtxId,
    kind: OpKind,
    deadline: Option<Instant>,
}

/// Drives one pattern and checks the contract. Panics on a violation.
#[derive(Debug)]
pub struct Harness {
    kind: ProtocolKind,
    opts: Options,
    proto: Box<dyn Protocol>,
    now: Instant,
    pipes: BTreeMap<PipeId, PipeModel>,
    ctxs: Vec<CtxId>,
    next_op: u64,
    pending: BTreeMap<OpId, PendingOp>,
    /// Ops that are over (completed, failed to start, cancelled).
    finished: BTreeSet<OpId>,
    /// REQ: body of the latest request per context.
    last_body: BTreeMap<CtxId, Vec<u8>>,
    /// REQ: recent transmissions `(pipe, id, body)`.
    requests: VecDeque<(PipeId, u32, Vec<u8>)>,
    /// REP (and RESPONDENT, unchecked): recent delivered headers.
    backtraces: VecDeque<Header>,
    /// SURVEYOR (unchecked): recent transmissions `(pipe, first word)`.
    surveys: VecDeque<(PipeId, u32)>,
    /// SUB: each context's topics.
    subs: BTreeMap<CtxId, BTreeSet<Vec<u8>>>,
    /// PUB: the payloads each pipe without credit holds, oldest first.
    pub_queues: BTreeMap<PipeId, VecDeque<Vec<u8>>>,
    /// Transmissions and deliveries of the current step.
    step_tx: Vec<(PipeId, Message)>,
    step_rx: Vec<(CtxId, Message)>,
    next_tag: u64,
    /// Outputs seen, for the end-of-run summary.
    pub transmits: u64,
    pub deliveries: u64,
    pub completions: u64,
    pub closes: u64,
    /// PUB messages evicted from a full queue, BUS copies that missed a
    /// pipe without credit (as the model predicts them).
    pub drops: u64,
}

const RECENT: usize = 32;

fn tag_body(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(body);
    v
}

impl Harness {
    /// A harness for `kind`; `resend` sets REQ's resend time.
    pub fn new(kind: ProtocolKind, resend: Option<Duration>, seed: u64) -> Self {
        let opts = Options {
            req_resend: resend,
            seed,
            ..Options::default()
        };
        opts.validate().expect("valid options");
        Harness {
            kind,
            proto: protocol::new(kind, &opts),
            opts,
            now: Instant::now(),
            pipes: BTreeMap::new(),
            ctxs: vec![CtxId::SOCKET],
            next_op: 0,
            pending: BTreeMap::new(),
            finished: BTreeSet::new(),
            last_body: BTreeMap::new(),
            requests: VecDeque::new(),
            backtraces: VecDeque::new(),
            surveys: VecDeque::new(),
            subs: BTreeMap::new(),
            pub_queues: BTreeMap::new(),
            step_tx: Vec::new(),
            step_rx: Vec::new(),
            next_tag: 0,
            transmits: 0,
            deliveries: 0,
            completions: 0,
            closes: 0,
            drops: 0,
        }
    }

    /// Runs every step, then [`Harness::finish`].
    pub fn run(kind: ProtocolKind, resend: Option<Duration>, seed: u64, steps: &[Step]) -> Self {
        let mut h = Harness::new(kind, resend, seed);
        for s in steps {
            h.step(s);
        }
        h.finish();
        h
    }

    /// True for the patterns checked only against the generic contract
    /// (whatever their implementation does, it must not break it).
    fn generic(&self) -> bool {
        matches!(
            self.kind,
            ProtocolKind::Surveyor0 | ProtocolKind::Respondent0
        )
    }

    /// Patterns whose `open_ctx` succeeds.
    fn opens_ctxs(&self) -> bool {
        matches!(self.kind, ProtocolKind::Req0 | ProtocolKind::Sub0)
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn deadline(&self, d: Option<u16>) -> Option<Instant> {
        d.map(|ms| self.now + Duration::from_millis(u64::from(ms)))
    }

    fn ctx_at(&self, which: u8) -> CtxId {
        if which == 255 {
            CtxId(u32::MAX)
        } else {
            self.ctxs[usize::from(which) % self.ctxs.len()]
        }
    }

    /// Applies one step and checks everything after it.
    pub fn step(&mut self, step: &Step) {
        let now = self.now;
        self.step_tx.clear();
        self.step_rx.clear();
        match step {
            Step::AddPipe {
                pipe,
                peer,
                credits,
            } => {
                let pipe = pipe_id(*pipe);
                if self.pipes.contains_key(&pipe) {
                    return; // a driver never adds a live pipe twice
                }
                let peer = peer.unwrap_or(self.kind.peer_id());
                let res = self.proto.add_pipe(pipe, peer, u32::from(*credits), now);
                let paired = matches!(self.kind, ProtocolKind::Pair0 | ProtocolKind::Pair1);
                match res {
                    Ok(()) => {
                        assert_eq!(peer, self.kind.peer_id(), "accepted a wrong peer");
                        assert!(!paired || self.pipes.is_empty(), "pair took a second peer");
                        self.pipes.insert(
                            pipe,
                            PipeModel {
                                credits: u32::from(*credits),
                                queued: VecDeque::new(),
                            },
                        );
                        if self.kind == ProtocolKind::Pub0 {
                            self.pub_queues.insert(pipe, VecDeque::new());
                        }
                    }
                    Err(_) if self.generic() => {}
                    Err(PeerError::WrongProtocol(p)) => {
                        assert_eq!(p, peer);
                        assert_ne!(peer, self.kind.peer_id());
                    }
                    Err(PeerError::AlreadyPaired) => {
                        assert!(
                            paired && !self.pipes.is_empty(),
                            "AlreadyPaired without a peer"
                        );
                    }
                    Err(e) => panic!("add_pipe: unexpected {e:?}"),
                }
                // The driver closes a refused pipe; a remove for an id the
                // pattern never took must not disturb the live one.
                if res.is_err() && !self.pipes.contains_key(&pipe) {
                    self.proto.remove_pipe(pipe, now);
                }
                self.drain();
            }
            Step::RemovePipe { pipe } => {
                let pipe = pipe_id(*pipe);
                self.pipes.remove(&pipe);
                self.pub_queues.remove(&pipe);
                self.proto.remove_pipe(pipe, now);
                self.drain();
            }
            Step::Credit { pipe, n } => {
                let pipe = pipe_id(*pipe);
                let k = match self.pipes.get_mut(&pipe) {
                    Some(m) => {
                        let k = usize::from(*n).min(m.queued.len());
                        m.queued.drain(..k);
                        m.credits += k as u32;
                        k as u32
                    }
                    None => u32::from(*n),
                };
                // PUB: the pipe's queue drains in order into its credit.
                let mut want = Vec::new();
                if let (Some(m), Some(q)) = (self.pipes.get(&pipe), self.pub_queues.get_mut(&pipe))
                {
                    let n = (m.credits as usize).min(q.len());
                    want.extend(q.drain(..n).map(|b| (pipe, b)));
                }
                if k > 0 {
                    self.proto.handle_credit(pipe, k, now);
                }
                self.drain();
                if matches!(self.kind, ProtocolKind::Pub0 | ProtocolKind::Bus0) {
                    let got: Vec<(PipeId, Vec<u8>)> =
                        self.step_tx.iter().map(|(p, m)| (*p, flat(m))).collect();
                    assert_eq!(got, want, "{:?}: transmissions on credit", self.kind);
                }
            }
            Step::Message { pipe, split, data } => {
                let mut data = data.clone();
                if self.kind == ProtocolKind::Req0 && data.len() >= 8 && &data[4..8] == b"rep:" {
                    data[4] = b'x'; // keep the reply tag for real replies
                }
                let mut msg = Message::from_body(data);
                let split = usize::from(*split).min(msg.wire_len()).min(MAX_HEADER);
                assert!(msg.split_header_at(split));
                self.incoming(pipe_id(*pipe), msg);
            }
            Step::Echo { pipe, shape, tail } => self.echo(pipe_id(*pipe), *shape, tail),
            Step::Send { route, data } => self.send(*route, data),
            Step::StartSend { ctx, deadline } => {
                let ctx = self.ctx_at(*ctx);
                let op = self.op_id();
                self.next_tag += 1;
                let body = format!("req:{}", self.next_tag).into_bytes();
                let deadline = self.deadline(*deadline);
                let res = self.proto.start_op(
                    op,
                    ctx,
                    Op::Send(Message::from_body(body.clone())),
                    deadline,
                    now,
                );
                self.started(op, ctx, OpKind::Send, deadline, res);
                if self.pending.contains_key(&op) {
                    self.last_body.insert(ctx, body);
                }
                self.drain();
            }
            Step::StartRecv { ctx, deadline } => {
                let ctx = self.ctx_at(*ctx);
                let op = self.op_id();
                let deadline = self.deadline(*deadline);
                let res = self.proto.start_op(op, ctx, Op::Recv, deadline, now);
                self.started(op, ctx, OpKind::Recv, deadline, res);
                self.drain();
            }
            Step::CancelOp { which } => {
                let op = if self.pending.is_empty() || *which == 255 {
                    OpId(u64::MAX)
                } else {
                    let i = usize::from(*which) % self.pending.len();
                    *self.pending.keys().nth(i).expect("in range")
                };
                if self.pending.remove(&op).is_some() {
                    self.finished.insert(op);
                }
                self.proto.cancel_op(op, now);
                self.drain();
            }
            Step::OpenCtx => {
                match self.proto.open_ctx() {
                    Ok(c) => {
                        assert!(
                            self.generic() || self.opens_ctxs(),
                            "{:?} opened a context",
                            self.kind
                        );
                        assert!(!self.ctxs.contains(&c), "context id reused while open");
                        self.ctxs.push(c);
                    }
                    Err(_) if self.generic() => {}
                    Err(e) => {
                        assert!(!self.opens_ctxs(), "open_ctx failed: {e:?}");
                        assert_eq!(e, CallerError::NoContexts);
                    }
                }
                self.drain();
            }
            Step::CloseCtx { which } => {
                let ctx = self.ctx_at(*which);
                self.close_ctx(ctx);
            }
            Step::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.proto.handle_timeout(self.now);
                self.drain();
                self.check_time();
            }
            Step::Subscribe { ctx, topic } => {
                let ctx = self.ctx_at(*ctx);
                self.subscription(ctx, topic, true);
            }
            Step::Unsubscribe { ctx, topic } => {
                let ctx = self.ctx_at(*ctx);
                self.subscription(ctx, topic, false);
            }
        }
        self.check_state();
    }

    fn close_ctx(&mut self, ctx: CtxId) {
        self.proto.close_ctx(ctx, self.now);
        self.drain();
        if ctx != CtxId::SOCKET {
            self.ctxs.retain(|c| *c != ctx);
        }
        // SUB: a closed context's topics are gone (the socket's context
        // stays, with none).
        self.subs.remove(&ctx);
        if !self.generic() {
            assert!(
                !self.pending.values().any(|p| p.ctx == ctx),
                "closing {ctx:?} left operations pending"
            );
        }
    }

    /// `subscribe` or `unsubscribe`, checked against the model for SUB.
    fn subscription(&mut self, ctx: CtxId, topic: &[u8], subscribe: bool) {
        let res = if subscribe {
            self.proto.subscribe(ctx, topic)
        } else {
            self.proto.unsubscribe(ctx, topic)
        };
        if self.kind == ProtocolKind::Sub0 {
            let want = if !self.ctxs.contains(&ctx) {
                Err(CallerError::NoSuchContext)
            } else if subscribe {
                // Subscribing twice is one subscription.
                self.subs.entry(ctx).or_default().insert(topic.to_vec());
                Ok(())
            } else if self.subs.get_mut(&ctx).is_some_and(|t| t.remove(topic)) {
                Ok(())
            } else {
                Err(CallerError::NoSuchSubscription)
            };
            assert_eq!(res, want, "subscribe {subscribe} {ctx:?} {topic:?}");
        } else if !self.generic() {
            assert_eq!(res, Err(CallerError::NotSupported));
        }
        self.drain();
        assert!(
            self.step_tx.is_empty() && self.step_rx.is_empty(),
            "(un)subscribe produced output"
        );
    }

    /// SUB: the contexts with a topic that is a prefix of `payload`.
    fn sub_matches(&self, payload: &[u8]) -> Vec<CtxId> {
        self.subs
            .iter()
            .filter(|(_, ts)| ts.iter().any(|t| payload.starts_with(t)))
            .map(|(c, _)| *c)
            .collect()
    }

    /// `handle_message`; for PUB, SUB and BUS, checks exactly what came out.
    fn incoming(&mut self, pipe: PipeId, msg: Message) {
        let live = self.pipes.contains_key(&pipe);
        let payload = flat(&msg);
        self.proto.handle_message(pipe, msg, self.now);
        self.drain();
        let mut want = match self.kind {
            ProtocolKind::Sub0 if live => self.sub_matches(&payload),
            ProtocolKind::Bus0 if live => vec![CtxId::SOCKET],
            ProtocolKind::Pub0 | ProtocolKind::Sub0 | ProtocolKind::Bus0 => Vec::new(),
            _ => return,
        };
        assert!(
            self.step_tx.is_empty(),
            "{:?} transmitted on input",
            self.kind
        );
        let mut got: Vec<CtxId> = self.step_rx.iter().map(|(c, _)| *c).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{:?}: deliveries of {payload:?}", self.kind);
        for (_, m) in &self.step_rx {
            assert_eq!(&m.body[..], &payload[..], "delivered payload");
            if self.kind == ProtocolKind::Bus0 {
                assert_eq!(m.header.as_slice(), &pipe.0.to_be_bytes()[..]);
            } else {
                assert!(m.header.is_empty());
            }
        }
    }

    fn started(
        &mut self,
        op: OpId,
        ctx: CtxId,
        kind: OpKind,
        deadline: Option<Instant>,
        res: Result<(), OpError>,
    ) {
        match res {
            Ok(()) => {
                if !self.generic() {
                    assert!(self.kind.uses_ops(), "{:?} started an op", self.kind);
                    assert!(self.ctxs.contains(&ctx), "op started on unknown context");
                }
                self.pending.insert(
                    op,
                    PendingOp {
                        ctx,
                        kind,
                        deadline,
                    },
                );
            }
            Err(e) => {
                self.finished.insert(op);
                if self.generic() {
                    // Any error: the op is over, nothing may follow.
                } else if !self.kind.uses_ops() {
                    assert_eq!(e, OpError::Caller(CallerError::NotSupported));
                } else if !self.ctxs.contains(&ctx) {
                    assert_eq!(e, OpError::Caller(CallerError::NoSuchContext));
                } else {
                    assert_eq!(kind, OpKind::Recv, "a send failed to start: {e:?}");
                    assert_eq!(e, OpError::Caller(CallerError::BadState));
                }
            }
        }
    }

    fn echo(&mut self, pipe: PipeId, shape: u8, tail: &[u8]) {
        let now = self.now;
        let live = self.pipes.contains_key(&pipe);
        let (msg, expect_delivery) = match self.kind {
            ProtocolKind::Req0 => {
                if self.requests.is_empty() {
                    return;
                }
                let (p, id, body) = self.requests[usize::from(shape) % self.requests.len()].clone();
                let mut v = id.to_be_bytes().to_vec();
                v.extend_from_slice(&tag_body(b"rep:", &body));
                self.proto.handle_message(p, Message::from_body(v), now);
                self.drain();
                return;
            }
            ProtocolKind::Rep0 | ProtocolKind::Respondent0 => {
                let hops = 1 + usize::from(shape % (self.opts.max_ttl + 3));
                let mut v = Vec::new();
                for i in 1..hops {
                    v.extend_from_slice(&(i as u32 * 0x0101).to_be_bytes());
                }
                v.extend_from_slice(&(0x8000_0000 | u32::from(shape)).to_be_bytes());
                v.extend_from_slice(tail);
                if self.kind == ProtocolKind::Respondent0 {
                    // Shaped like a survey; the outcome is not checked.
                    self.proto.handle_message(pipe, Message::from_body(v), now);
                    self.drain();
                    return;
                }
                (v, live && hops <= usize::from(self.opts.max_ttl))
            }
            ProtocolKind::Surveyor0 => {
                // A response to a recorded survey (or bare bytes); the
                // outcome is not checked.
                let (p, v) = if self.surveys.is_empty() {
                    (pipe, tail.to_vec())
                } else {
                    let (p, w) = self.surveys[usize::from(shape) % self.surveys.len()];
                    (p, tag_body(&w.to_be_bytes(), tail))
                };
                self.proto.handle_message(p, Message::from_body(v), now);
                self.drain();
                return;
            }
            ProtocolKind::Pair1 => {
                let hops = u32::from(shape % 12);
                let mut v = hops.to_be_bytes().to_vec();
                v.extend_from_slice(tail);
                (v, live && hops <= u32::from(self.opts.max_ttl))
            }
            ProtocolKind::Pair0 | ProtocolKind::Pull0 => (tail.to_vec(), live),
            ProtocolKind::Push0 => (tail.to_vec(), false),
            ProtocolKind::Pub0 | ProtocolKind::Sub0 | ProtocolKind::Bus0 => {
                // SUB: a subscribed topic (picked by `shape`) and the tail.
                let topics: Vec<&Vec<u8>> = self.subs.values().flatten().collect();
                let mut v = if topics.is_empty() {
                    Vec::new()
                } else {
                    topics[usize::from(shape) % topics.len()].clone()
                };
                v.extend_from_slice(tail);
                // Over inproc the split is kept: some bytes in the header.
                let mut msg = Message::from_body(v);
                let split = usize::from(shape / 16 % 6).min(msg.wire_len());
                assert!(msg.split_header_at(split));
                self.incoming(pipe, msg);
                return;
            }
        };
        let before = self.deliveries;
        self.proto
            .handle_message(pipe, Message::from_body(msg), now);
        self.drain();
        assert_eq!(
            self.deliveries - before,
            u64::from(expect_delivery),
            "{:?}: well-formed message (shape {shape}) delivered wrongly",
            self.kind
        );
    }

    fn send(&mut self, route: u8, data: &[u8]) {
        let now = self.now;
        let ctx = CtxId::SOCKET;
        match self.kind {
            ProtocolKind::Rep0 => {
                assert!(self.proto.can_send(), "REP always takes replies");
                let header = if route & 0x80 == 0 && !self.backtraces.is_empty() {
                    self.backtraces[usize::from(route) % self.backtraces.len()]
                } else {
                    Header::from_slice(&data[..data.len().min(usize::from(route & 0x7f) % 12)])
                        .expect("short")
                };
                let target = header.first_word().map(PipeId);
                let routable = target
                    .and_then(|p| self.pipes.get(&p))
                    .is_some_and(|m| m.credits > 0);
                let before = self.transmits;
                let res = self.proto.handle_send(
                    ctx,
                    Message {
                        header,
                        body: data.to_vec().into(),
                    },
                    now,
                );
                if header.len() < 4 {
                    assert_eq!(res, Err(OpError::Caller(CallerError::BadState)));
                } else {
                    assert_eq!(res, Ok(()));
                }
                self.drain();
                assert_eq!(self.transmits - before, u64::from(routable), "REP routing");
            }
            ProtocolKind::Req0 | ProtocolKind::Pull0 | ProtocolKind::Sub0 => {
                assert!(!self.proto.can_send());
                let res = self
                    .proto
                    .handle_send(ctx, Message::from_body(data.to_vec()), now);
                assert_eq!(res, Err(OpError::Caller(CallerError::NotSupported)));
                self.drain();
                if self.kind == ProtocolKind::Sub0 {
                    let ctx = self.ctx_at(route / 8 % 255);
                    let topic = &data[..data.len().min(usize::from(route / 2 % 4))];
                    self.subscription(ctx, topic, route.is_multiple_of(2));
                }
            }
            ProtocolKind::Push0 | ProtocolKind::Pair0 | ProtocolKind::Pair1 => {
                if !self.proto.can_send() {
                    return;
                }
                let before = self.transmits;
                self.proto
                    .handle_send(ctx, Message::from_body(data.to_vec()), now)
                    .expect("queued send");
                self.drain();
                assert_eq!(
                    self.transmits - before,
                    1,
                    "a queued send is transmitted at once"
                );
            }
            ProtocolKind::Pub0 => {
                assert!(self.proto.can_send(), "PUB never blocks");
                // Pipes with credit get it now, the others queue it.
                let mut want = Vec::new();
                for (p, m) in &self.pipes {
                    if m.credits > 0 {
                        want.push((*p, data.to_vec()));
                    } else {
                        let q = self.pub_queues.get_mut(p).expect("pub pipe queue");
                        if q.len() == PIPE_QUEUE {
                            q.pop_front();
                            self.drops += 1;
                        }
                        q.push_back(data.to_vec());
                    }
                }
                let res = self
                    .proto
                    .handle_send(ctx, Message::from_body(data.to_vec()), now);
                assert_eq!(res, Ok(()));
                self.drain();
                let mut got: Vec<(PipeId, Vec<u8>)> =
                    self.step_tx.iter().map(|(p, m)| (*p, flat(m))).collect();
                got.sort();
                assert_eq!(got, want, "PUB fan-out");
            }
            ProtocolKind::Bus0 => {
                assert!(self.proto.can_send(), "BUS never blocks");
                let header: Vec<u8> = match route % 4 {
                    0 => Vec::new(),
                    // The pipe a message came from (live or not), sometimes
                    // with more header after it.
                    1 => {
                        let mut h = pipe_id(route / 4).0.to_be_bytes().to_vec();
                        if route & 0x80 != 0 {
                            h.extend_from_slice(&[0xab, 0xcd]);
                        }
                        h
                    }
                    2 => (0x8000_0000 | u32::from(route)).to_be_bytes().to_vec(),
                    _ => vec![0xee; 1 + usize::from(route / 4) % 3],
                };
                let (from, rest) = if header.len() >= 4 {
                    let w = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
                    (Some(PipeId(w)), &header[4..])
                } else {
                    (None, &header[..])
                };
                let wire = tag_body(rest, data);
                let mut want = Vec::new();
                for (p, m) in &self.pipes {
                    if Some(*p) == from {
                        continue;
                    }
                    if m.credits > 0 {
                        want.push((*p, wire.clone()));
                    } else {
                        self.drops += 1;
                    }
                }
                let msg = Message {
                    header: Header::from_slice(&header).expect("short"),
                    body: data.to_vec().into(),
                };
                assert_eq!(self.proto.handle_send(ctx, msg, now), Ok(()));
                self.drain();
                let mut got: Vec<(PipeId, Vec<u8>)> =
                    self.step_tx.iter().map(|(p, m)| (*p, flat(m))).collect();
                got.sort();
                assert_eq!(got, want, "BUS fan-out with header {header:?}");
            }
            ProtocolKind::Surveyor0 | ProtocolKind::Respondent0 => {
                // Unchecked: a recorded header (a respondent's backtrace)
                // or none; any result.
                if !self.proto.can_send() {
                    return;
                }
                let header = if route & 0x80 == 0 && !self.backtraces.is_empty() {
                    self.backtraces[usize::from(route) % self.backtraces.len()]
                } else {
                    Header::new()
                };
                let msg = Message {
                    header,
                    body: data.to_vec().into(),
                };
                let _ = self.proto.handle_send(ctx, msg, now);
                self.drain();
            }
        }
    }

    /// Drains every output and checks each one.
    fn drain(&mut self) {
        while let Some(o) = self.proto.poll_output() {
            self.check_output(o);
        }
    }

    fn check_output(&mut self, o: Output) {
        let now = self.now;
        match o {
            Output::Transmit { pipe, msg } => {
                self.transmits += 1;
                let m = self
                    .pipes
                    .get_mut(&pipe)
                    .unwrap_or_else(|| panic!("transmit to unknown pipe {pipe:?}"));
                assert!(m.credits > 0, "transmit to {pipe:?} without credit");
                m.credits -= 1;
                match self.kind {
                    ProtocolKind::Pair1 => assert_eq!(msg.header.as_slice(), &[0, 0, 0, 1]),
                    ProtocolKind::Req0 => {
                        assert_eq!(msg.header.len(), 4, "REQ header is the id");
                        let id = msg.word_at(0).expect("id");
                        assert_ne!(id & 0x8000_0000, 0, "request id without top bit");
                        if self.requests.len() == RECENT {
                            self.requests.pop_front();
                        }
                        self.requests.push_back((pipe, id, msg.body.to_vec()));
                    }
                    ProtocolKind::Sub0 | ProtocolKind::Pull0 => {
                        panic!("{:?} transmitted", self.kind)
                    }
                    ProtocolKind::Surveyor0 => {
                        if let Some(w) = msg.word_at(0) {
                            if self.surveys.len() == RECENT {
                                self.surveys.pop_front();
                            }
                            self.surveys.push_back((pipe, w));
                        }
                    }
                    _ => {}
                }
                m.queued.push_back(msg.clone());
                self.step_tx.push((pipe, msg));
            }
            Output::Deliver { ctx, msg } => {
                self.deliveries += 1;
                self.step_rx.push((ctx, msg.clone()));
                if self.generic() {
                    if self.kind == ProtocolKind::Respondent0 && msg.header.len() >= 4 {
                        if self.backtraces.len() == RECENT {
                            self.backtraces.pop_front();
                        }
                        self.backtraces.push_back(msg.header);
                    }
                    return;
                }
                assert!(
                    self.kind.can_recv() && !self.kind.uses_ops(),
                    "{:?} delivered",
                    self.kind
                );
                if self.kind == ProtocolKind::Sub0 {
                    assert!(self.ctxs.contains(&ctx), "SUB delivered to {ctx:?}");
                } else {
                    assert_eq!(ctx, CtxId::SOCKET);
                }
                match self.kind {
                    ProtocolKind::Pair0 | ProtocolKind::Pair1 | ProtocolKind::Sub0 => {
                        assert!(msg.header.is_empty())
                    }
                    ProtocolKind::Bus0 => {
                        assert_eq!(msg.header.len(), 4, "BUS header is the pipe id");
                        let p = PipeId(msg.header.first_word().expect("pipe word"));
                        assert_eq!(p.0 & 0x8000_0000, 0, "pipe id with the top bit");
                        assert!(self.pipes.contains_key(&p), "BUS header names a dead pipe");
                    }
                    ProtocolKind::Rep0 => {
                        let h = msg.header;
                        assert!(h.len() >= 8 && h.len() % 4 == 0, "REP header {h:?}");
                        let words = h.len() / 4 - 1;
                        assert!(
                            words <= usize::from(self.opts.max_ttl),
                            "over TTL delivered"
                        );
                        let p = PipeId(h.first_word().expect("pipe word"));
                        assert!(self.pipes.contains_key(&p), "REP header names a dead pipe");
                        let mut hh = h;
                        hh.pop_word_front();
                        for i in 0..words {
                            let w = u32::from_be_bytes(
                                hh.as_slice()[i * 4..i * 4 + 4].try_into().unwrap(),
                            );
                            assert_eq!(w & 0x8000_0000 != 0, i + 1 == words, "backtrace end bit");
                        }
                        if self.backtraces.len() == RECENT {
                            self.backtraces.pop_front();
                        }
                        self.backtraces.push_back(h);
                    }
                    _ => {}
                }
            }
            Output::Completed { op, result } => {
                self.completions += 1;
                let p = self.pending.remove(&op).unwrap_or_else(|| {
                    panic!(
                        "completion of {op:?}, which is not pending (finished: {})",
                        self.finished.contains(&op)
                    )
                });
                self.finished.insert(op);
                if self.generic() {
                    return;
                }
                match (p.kind, result) {
                    (OpKind::Send, r) => {
                        assert_eq!(r.map(|m| m.is_none()), Ok(true), "send result")
                    }
                    (OpKind::Recv, Ok(Some(m))) => {
                        assert!(m.header.is_empty(), "reply with a header");
                        if m.body.starts_with(b"rep:") {
                            let want =
                                tag_body(b"rep:", self.last_body.get(&p.ctx).expect("ctx sent"));
                            assert_eq!(&m.body[..], &want[..], "reply to another request");
                        }
                    }
                    (OpKind::Recv, Ok(None)) => panic!("receive completed without a message"),
                    (OpKind::Recv, Err(OpError::TimedOut)) => {
                        let d = p.deadline.expect("timed out without a deadline");
                        assert!(d <= now, "timed out early");
                    }
                    (
                        OpKind::Recv,
                        Err(OpError::Canceled | OpError::Closed | OpError::ConnectionReset),
                    ) => {}
                    (OpKind::Recv, Err(e)) => panic!("receive ended with {e:?}"),
                }
            }
            Output::ClosePipe { pipe, error } => {
                self.closes += 1;
                let known = self.pipes.remove(&pipe).is_some();
                self.pub_queues.remove(&pipe);
                if !self.generic() {
                    assert!(known, "close of unknown pipe {pipe:?}");
                    let ok = match self.kind {
                        ProtocolKind::Pair1 => {
                            matches!(error, PeerError::ShortHeader | PeerError::BadHopCount(_))
                        }
                        ProtocolKind::Req0 => error == PeerError::ShortHeader,
                        ProtocolKind::Rep0 => error == PeerError::NoBacktraceEnd,
                        _ => false,
                    };
                    assert!(ok, "{:?} closed a pipe with {error:?}", self.kind);
                }
                // The driver closes it and reports it gone.
                self.proto.remove_pipe(pipe, now);
            }
            Output::PausePipe { pipe, .. } => {
                // Flow control only: the model's pipes keep no read state.
                assert!(
                    matches!(self.kind, ProtocolKind::Rep0 | ProtocolKind::Respondent0)
                        || self.generic(),
                    "{:?} paused pipe {pipe:?}",
                    self.kind
                );
            }
        }
    }

    fn check_state(&self) {
        if self.generic() {
            return;
        }
        let credit = self.pipes.values().any(|m| m.credits > 0);
        let want = match self.kind {
            ProtocolKind::Push0 | ProtocolKind::Pair0 | ProtocolKind::Pair1 => credit,
            ProtocolKind::Rep0 | ProtocolKind::Pub0 | ProtocolKind::Bus0 => true,
            ProtocolKind::Req0 | ProtocolKind::Pull0 | ProtocolKind::Sub0 => false,
            ProtocolKind::Surveyor0 | ProtocolKind::Respondent0 => unreachable!("generic"),
        };
        assert_eq!(
            self.proto.can_send(),
            want,
            "can_send with pipes {:?}",
            self.pipes
        );
        if matches!(self.kind, ProtocolKind::Pair0 | ProtocolKind::Pair1) {
            assert!(self.pipes.len() <= 1);
        }
        if self.kind == ProtocolKind::Pub0 {
            for (p, q) in &self.pub_queues {
                assert!(q.len() <= PIPE_QUEUE);
                assert!(
                    q.is_empty() || self.pipes[p].credits == 0,
                    "PUB holds messages for {p:?}, which has credit"
                );
            }
        }
        if !self.kind.uses_ops() {
            assert!(self.pending.is_empty());
            assert_eq!(self.proto.poll_timeout(), None);
        }
    }

    fn check_time(&self) {
        if self.generic() {
            return;
        }
        if let Some(t) = self.proto.poll_timeout() {
            assert!(t > self.now, "timer left due after handle_timeout");
        }
        for (op, p) in &self.pending {
            if let Some(d) = p.deadline {
                assert!(
                    d > self.now,
                    "{op:?} is past its deadline and still pending"
                );
            }
        }
    }

    /// Time runs out for every deadline, then every context closes: no
    /// operation may be left pending (not checked for the patterns only
    /// held to the generic contract).
    pub fn finish(&mut self) {
        let far = self
            .pending
            .values()
            .filter_map(|p| p.deadline)
            .max()
            .unwrap_or(self.now)
            .max(self.now);
        self.now = far + Duration::from_millis(1);
        self.proto.handle_timeout(self.now);
        self.drain();
        self.check_time();
        for ctx in self.ctxs.clone() {
            self.close_ctx(ctx);
        }
        if !self.generic() {
            assert!(
                self.pending.is_empty(),
                "ops left pending: {:?}",
                self.pending
            );
        }
        self.check_state();
    }
}

/// One input to a [`Link`]: REQ and REP back to back.
#[derive(Debug, Clone)]
pub enum LinkStep {
    /// A new connection with these write-queue sizes (1 + n % 4 each).
    Connect {
        req_credits: u8,
        rep_credits: u8,
    },
    /// A connection goes away (both ends), dropping what it carried.
    Disconnect {
        which: u8,
    },
    /// REQ: send a new request on a context.
    Send {
        ctx: u8,
    },
    /// REQ: receive on a context.
    Recv {
        ctx: u8,
        deadline: Option<u16>,
    },
    /// REQ: cancel a pending operation.
    Cancel {
        which: u8,
    },
    /// REQ: open or close a context.
    OpenCtx,
    CloseCtx {
        which: u8,
    },
    /// Move one message from REQ to REP over a connection.
    ToRep {
        which: u8,
    },
    /// Move one message from REP to REQ over a connection.
    ToReq {
        which: u8,
    },
    /// The REP application answers one request it received.
    Answer {
        which: u8,
    },
    /// The REP application forgets one request it received.
    Forget {
        which: u8,
    },
    /// Time passes.
    Advance {
        ms: u16,
    },
}

#[derive(Debug, Default)]
struct Conn {
    /// In flight from REQ to REP; REQ's credits are what is not in here.
    to_rep: VecDeque<Message>,
    req_credits: u32,
    /// In flight from REP to REQ.
    to_req: VecDeque<Message>,
    rep_credits: u32,
}

/// A REQ and a REP connected through their state machines.
#[derive(Debug)]
pub struct Link {
    req: Box<dyn Protocol>,
    rep: Box<dyn Protocol>,
    resend: Duration,
    now: Instant,
    conns: BTreeMap<PipeId, Conn>,
    next_pipe: u32,
    ctxs: Vec<CtxId>,
    next_op: u64,
    /// Pending REQ ops: op -> (ctx, is_recv, deadline).
    pending: BTreeMap<OpId, (CtxId, bool, Option<Instant>)>,
    /// Body of the latest request per context.
    last_body: BTreeMap<CtxId, Vec<u8>>,
    next_tag: u64,
    /// Requests the REP application holds (header, body).
    inbox: Vec<Message>,
    /// Replies matched to their own request.
    pub answered: u64,
}

impl Link {
    /// A REQ (resend every `resend`) and a REP with no connection.
    pub fn new(resend: Duration, seed: u64) -> Self {
        let opts = Options {
            req_resend: Some(resend),
            seed,
            ..Options::default()
        };
        Link {
            req: protocol::new(ProtocolKind::Req0, &opts),
            rep: protocol::new(ProtocolKind::Rep0, &opts),
            resend,
            now: Instant::now(),
            conns: BTreeMap::new(),
            next_pipe: 0,
            ctxs: vec![CtxId::SOCKET],
            next_op: 0,
            pending: BTreeMap::new(),
            last_body: BTreeMap::new(),
            next_tag: 0,
            inbox: Vec::new(),
            answered: 0,
        }
    }

    /// Runs the steps, then checks that everything outstanding gets answered.
    pub fn run(resend: Duration, seed: u64, steps: &[LinkStep]) -> Self {
        let mut l = Link::new(resend, seed);
        for s in steps {
            l.step(s);
        }
        l.settle();
        l
    }

    fn conn_at(&self, which: u8) -> Option<PipeId> {
        if self.conns.is_empty() {
            return None;
        }
        self.conns
            .keys()
            .nth(usize::from(which) % self.conns.len())
            .copied()
    }

    fn connect(&mut self, req_credits: u32, rep_credits: u32) {
        self.next_pipe += 1;
        let pipe = PipeId(self.next_pipe);
        self.conns.insert(
            pipe,
            Conn {
                req_credits,
                rep_credits,
                ..Conn::default()
            },
        );
        self.rep
            .add_pipe(pipe, 0x30, rep_credits, self.now)
            .expect("rep takes req");
        self.drain();
        self.req
            .add_pipe(pipe, 0x31, req_credits, self.now)
            .expect("req takes rep");
        self.drain();
    }

    fn disconnect(&mut self, pipe: PipeId) {
        self.conns.remove(&pipe);
        self.req.remove_pipe(pipe, self.now);
        self.rep.remove_pipe(pipe, self.now);
        self.drain();
    }

    /// Applies one step.
    pub fn step(&mut self, s: &LinkStep) {
        let now = self.now;
        match s {
            LinkStep::Connect {
                req_credits,
                rep_credits,
            } => {
                if self.conns.len() < 4 {
                    self.connect(
                        1 + u32::from(req_credits % 4),
                        1 + u32::from(rep_credits % 4),
                    );
                }
            }
            LinkStep::Disconnect { which } => {
                if let Some(p) = self.conn_at(*which) {
                    self.disconnect(p);
                }
            }
            LinkStep::Send { ctx } => {
                let ctx = self.ctxs[usize::from(*ctx) % self.ctxs.len()];
                self.next_op += 1;
                let op = OpId(self.next_op);
                self.next_tag += 1;
                let body = format!("req:{}:{}", ctx.0, self.next_tag).into_bytes();
                self.req
                    .start_op(
                        op,
                        ctx,
                        Op::Send(Message::from_body(body.clone())),
                        None,
                        now,
                    )
                    .expect("send starts");
                self.pending.insert(op, (ctx, false, None));
                self.last_body.insert(ctx, body);
                self.drain();
            }
            LinkStep::Recv { ctx, deadline } => {
                let ctx = self.ctxs[usize::from(*ctx) % self.ctxs.len()];
                self.next_op += 1;
                let op = OpId(self.next_op);
                let deadline = deadline.map(|ms| now + Duration::from_millis(u64::from(ms)));
                match self.req.start_op(op, ctx, Op::Recv, deadline, now) {
                    Ok(()) => {
                        self.pending.insert(op, (ctx, true, deadline));
                    }
                    Err(e) => assert_eq!(e, OpError::Caller(CallerError::BadState)),
                }
                self.drain();
            }
            LinkStep::Cancel { which } => {
                if !self.pending.is_empty() {
                    let op = *self
                        .pending
                        .keys()
                        .nth(usize::from(*which) % self.pending.len())
                        .unwrap();
                    self.pending.remove(&op);
                    self.req.cancel_op(op, now);
                    self.drain();
                }
            }
            LinkStep::OpenCtx => {
                let c = self.req.open_ctx().expect("req has contexts");
                self.ctxs.push(c);
            }
            LinkStep::CloseCtx { which } => {
                let ctx = self.ctxs[usize::from(*which) % self.ctxs.len()];
                self.req.close_ctx(ctx, now);
                self.drain();
                if ctx != CtxId::SOCKET {
                    self.ctxs.retain(|c| *c != ctx);
                }
                assert!(!self.pending.values().any(|p| p.0 == ctx), "close left ops");
            }
            LinkStep::ToRep { which } => {
                if let Some(p) = self.conn_at(*which) {
                    let c = self.conns.get_mut(&p).unwrap();
                    if let Some(m) = c.to_rep.pop_front() {
                        c.req_credits += 1;
                        // Over a stream: header and body arrive as one body.
                        let mut m = m;
                        m.split_header_at(0);
                        self.rep.handle_message(p, m, now);
                        self.req.handle_credit(p, 1, now);
                        self.drain();
                    }
                }
            }
            LinkStep::ToReq { which } => {
                if let Some(p) = self.conn_at(*which) {
                    let c = self.conns.get_mut(&p).unwrap();
                    if let Some(m) = c.to_req.pop_front() {
                        c.rep_credits += 1;
                        // Over inproc: the split is kept.
                        self.req.handle_message(p, m, now);
                        self.rep.handle_credit(p, 1, now);
                        self.drain();
                    }
                }
            }
            LinkStep::Answer { which } => {
                if !self.inbox.is_empty() {
                    let i = usize::from(*which) % self.inbox.len();
                    let m = self.inbox.swap_remove(i);
                    self.answer(m);
                }
            }
            LinkStep::Forget { which } => {
                if !self.inbox.is_empty() {
                    let i = usize::from(*which) % self.inbox.len();
                    self.inbox.swap_remove(i);
                }
            }
            LinkStep::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.req.handle_timeout(self.now);
                self.rep.handle_timeout(self.now);
                self.drain();
                if let Some(t) = self.req.poll_timeout() {
                    assert!(t > self.now);
                }
            }
        }
    }

    fn answer(&mut self, m: Message) {
        let reply = Message {
            header: m.header,
            body: tag_body(b"rep:", &m.body).into(),
        };
        self.rep
            .handle_send(CtxId::SOCKET, reply, self.now)
            .expect("routable header");
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(o) = self.req.poll_output() {
                any = true;
                match o {
                    Output::Transmit { pipe, msg } => {
                        let c = self
                            .conns
                            .get_mut(&pipe)
                            .expect("REQ transmits to a live pipe");
                        assert!(c.req_credits > 0, "REQ transmits without credit");
                        c.req_credits -= 1;
                        c.to_rep.push_back(msg);
                    }
                    Output::Completed { op, result } => {
                        let (ctx, recv, deadline) = self
                            .pending
                            .remove(&op)
                            .expect("completion of a pending op");
                        match (recv, result) {
                            (false, r) => assert!(matches!(r, Ok(None))),
                            (true, Ok(Some(m))) => {
                                let want = tag_body(b"rep:", &self.last_body[&ctx]);
                                assert_eq!(
                                    &m.body[..],
                                    &want[..],
                                    "reply matched to the wrong request"
                                );
                                self.answered += 1;
                            }
                            (true, Err(OpError::TimedOut)) => {
                                assert!(deadline.is_some_and(|d| d <= self.now))
                            }
                            (true, Err(OpError::Canceled | OpError::Closed)) => {}
                            (true, r) => panic!("receive ended with {r:?}"),
                        }
                    }
                    o => panic!("REQ output {o:?}"),
                }
            }
            while let Some(o) = self.rep.poll_output() {
                any = true;
                match o {
                    Output::Transmit { pipe, msg } => {
                        let c = self
                            .conns
                            .get_mut(&pipe)
                            .expect("REP transmits to a live pipe");
                        assert!(c.rep_credits > 0, "REP transmits without credit");
                        c.rep_credits -= 1;
                        assert_eq!(msg.header.len(), 4, "reply carries the request id only");
                        c.to_req.push_back(msg);
                    }
                    Output::Deliver { ctx, msg } => {
                        assert_eq!(ctx, CtxId::SOCKET);
                        assert_eq!(msg.header.len(), 8, "pipe id + request id");
                        self.inbox.push(msg);
                    }
                    o => panic!("REP output {o:?}"),
                }
            }
            if !any {
                return;
            }
        }
    }

    /// With a connection up, deliver everything, answer everything and let
    /// resend timers run until no receive is pending: every request gets its
    /// own reply (or times out at its deadline).
    pub fn settle(&mut self) {
        if self.conns.is_empty() {
            self.connect(2, 2);
        }
        for _round in 0..64 {
            if !self.pending.values().any(|p| p.1) {
                break;
            }
            loop {
                let mut moved = false;
                for p in self.conns.keys().copied().collect::<Vec<_>>() {
                    let c = self.conns.get_mut(&p).unwrap();
                    if let Some(m) = c.to_rep.pop_front() {
                        c.req_credits += 1;
                        self.rep.handle_message(p, m, self.now);
                        self.req.handle_credit(p, 1, self.now);
                        moved = true;
                    }
                    let c = self.conns.get_mut(&p).unwrap();
                    if let Some(m) = c.to_req.pop_front() {
                        c.rep_credits += 1;
                        self.req.handle_message(p, m, self.now);
                        self.rep.handle_credit(p, 1, self.now);
                        moved = true;
                    }
                    self.drain();
                }
                while let Some(m) = self.inbox.pop() {
                    self.answer(m);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            self.now += self.resend;
            self.req.handle_timeout(self.now);
            self.drain();
        }
        assert!(
            !self.pending.values().any(|p| p.1),
            "receives never answered: {:?}",
            self.pending
        );
    }
}
