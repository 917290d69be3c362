//! REQ v0 (0x30): requests with ids, replies matched to them, per context.
//!
//! # Wire
//!
//! A request is `| 1|request id (31 bits) | body |`: one 32-bit big-endian
//! word with the top bit set, then the body. The reply from a REP comes back
//! with the same word in front (devices on the way pop their own hops).
//!
//! # Operations and contexts
//!
//! REQ's sends and receives have state, so they are operations
//! ([`Protocol::start_op`]); [`Protocol::handle_send`] is not supported.
//! Every context ([`CtxId::SOCKET`] and those from [`Protocol::open_ctx`])
//! has at most one request outstanding, as in NNG:
//!
//! * **send** cancels the context's previous request (its pending receive
//!   ends with [`OpError::Canceled`]; a late reply to the old id is dropped),
//!   takes a new id and completes at once. The request waits until some pipe
//!   has credit and then goes out round-robin over those pipes.
//! * **receive** with no request outstanding fails at once with
//!   [`CallerError::BadState`] (NNG's `NNG_ESTATE`). If the reply already
//!   came it completes at once; otherwise it waits. At its deadline it ends
//!   with [`OpError::TimedOut`] and the request is abandoned (NNG aborts the
//!   request when the receive times out); so does [`Protocol::cancel_op`],
//!   without a completion.
//! * closing a context ends its pending receive with [`OpError::Closed`].
//!   Closing [`CtxId::SOCKET`] does that too, but the context stays.
//!
//! # Request ids
//!
//! `0x8000_0000 | x`, `x` starting at a random 31-bit value (from
//! [`Options::seed`]) and incrementing with wrap-around, skipping ids still
//! in use (NNG: id map over `0x80000000..=0xffffffff`, random start).
//!
//! # Resend
//!
//! With [`Options::req_resend`] `Some(d)` (NNG's `NNG_OPT_REQ_RESENDTIME`,
//! 60 s by default) an unanswered request is sent again, same id, `d` after
//! it went out, and at once (as soon as a pipe has credit) when the pipe that
//! carried it goes away. With `None` (or a zero duration, which NNG also
//! reads as "off") losing the carrying pipe fails the request with
//! [`OpError::ConnectionReset`]: the pending receive gets it, or the next
//! receive on the context if none was pending.
//!
//! # Replies
//!
//! A reply shorter than 4 bytes is garbage and its pipe is closed
//! ([`PeerError::ShortHeader`]). Replies with an unknown or stale id are
//! dropped silently. The reply is accepted from any pipe (a resent request
//! may be answered by the first recipient) and handed over with an empty
//! header.
//!
//! # Cost
//!
//! Contexts, ids and pending operations live in hash maps; requests waiting
//! for a pipe in an ordered queue; resend times and deadlines in one ordered
//! timer set. Every event costs `O(log n)` in the number of contexts, except
//! losing a pipe, which touches the requests that pipe carried.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{check_peer, CtxId, Op, OpId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::{Header, Message};
use crate::options::Options;
use crate::rng::Rng;

use super::ids::END_BIT;

/// One pipe: its credits and the contexts whose request it carried last.
#[derive(Debug, Default)]
struct PipeState {
    credits: u32,
    carrying: BTreeSet<CtxId>,
}

/// Where a context's request is.
#[derive(Debug)]
enum ReqState {
    /// Waiting for a pipe with credit; `seq` is its place in the queue.
    Queued { seq: u64 },
    /// Transmitted on `pipe`; resent at `resend_at`.
    Sent {
        pipe: PipeId,
        resend_at: Option<Instant>,
    },
    /// The reply came; the next receive takes it.
    Replied(Message),
    /// The request failed; the next receive gets the error.
    Failed(OpError),
}

/// The outstanding request of one context.
#[derive(Debug)]
struct Request {
    id: u32,
    /// The request as it goes on the wire (header = the id word).
    msg: Message,
    state: ReqState,
}

/// One context.
#[derive(Debug, Default)]
struct Ctx {
    req: Option<Request>,
    /// The pending receive operation.
    recv: Option<OpId>,
}

/// A pending receive operation.
#[derive(Debug, Clone, Copy)]
struct RecvOp {
    ctx: CtxId,
    deadline: Option<Instant>,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Resend the context's request.
    Resend(CtxId),
    /// The receive operation's deadline.
    Deadline(OpId),
}

/// REQ state. See the module docs.
#[derive(Debug)]
pub struct Req0 {
    resend: Option<Duration>,
    /// Low 31 bits of the next request id to try.
    next_id: u32,
    next_ctx: u32,
    next_seq: u64,
    pipes: HashMap<PipeId, PipeState>,
    /// Pipes with credit, in round-robin order.
    ready: VecDeque<PipeId>,
    ctxs: HashMap<CtxId, Ctx>,
    /// Ids of requests awaiting their reply.
    ids: HashMap<u32, CtxId>,
    /// Pending receive operations.
    ops: HashMap<OpId, RecvOp>,
    /// Requests waiting for a pipe, oldest first.
    queue: BTreeMap<u64, CtxId>,
    timers: BTreeSet<(Instant, Timer)>,
    out: VecDeque<Output>,
}

impl Req0 {
    /// A req socket with no pipes and only the socket's context.
    pub fn new(opts: &Options) -> Self {
        let mut rng = Rng::new(opts.seed);
        let mut ctxs = HashMap::new();
        ctxs.insert(CtxId::SOCKET, Ctx::default());
        Req0 {
            resend: opts.req_resend.filter(|d| !d.is_zero()),
            next_id: rng.next_u32() & !END_BIT,
            next_ctx: 0,
            next_seq: 0,
            pipes: HashMap::new(),
            ready: VecDeque::new(),
            ctxs,
            ids: HashMap::new(),
            ops: HashMap::new(),
            queue: BTreeMap::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// Requests waiting for their reply (queued or sent).
    pub fn outstanding(&self) -> usize {
        self.ids.len()
    }

    /// Requests waiting for a pipe with credit.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Open contexts, the socket's included.
    pub fn contexts(&self) -> usize {
        self.ctxs.len()
    }

    fn alloc_id(&mut self) -> u32 {
        let ids = &self.ids;
        super::ids::alloc(&mut self.next_id, |id| ids.contains_key(&id))
    }

    fn complete(&mut self, op: OpId, result: Result<Option<Message>, OpError>) {
        self.out.push_back(Output::Completed { op, result });
    }

    /// Forgets the pending receive `op` (timer included) and returns its
    /// context.
    fn take_op(&mut self, op: OpId) -> Option<CtxId> {
        let rec = self.ops.remove(&op)?;
        if let Some(d) = rec.deadline {
            self.timers.remove(&(d, Timer::Deadline(op)));
        }
        if let Some(c) = self.ctxs.get_mut(&rec.ctx) {
            c.recv = None;
        }
        Some(rec.ctx)
    }

    /// Ends the pending receive of `ctx`, if any, with `result`.
    fn finish_recv(&mut self, ctx: CtxId, result: Result<Option<Message>, OpError>) -> bool {
        let Some(op) = self.ctxs.get(&ctx).and_then(|c| c.recv) else {
            return false;
        };
        self.take_op(op);
        self.complete(op, result);
        true
    }

    /// Removes the bookkeeping of `ctx`'s request in its current state: its
    /// id, its queue slot, its pipe and its resend timer.
    fn detach(&mut self, ctx: CtxId, req: &Request) {
        match req.state {
            ReqState::Queued { seq } => {
                self.queue.remove(&seq);
                self.ids.remove(&req.id);
            }
            ReqState::Sent { pipe, resend_at } => {
                if let Some(p) = self.pipes.get_mut(&pipe) {
                    p.carrying.remove(&ctx);
                }
                if let Some(at) = resend_at {
                    self.timers.remove(&(at, Timer::Resend(ctx)));
                }
                self.ids.remove(&req.id);
            }
            ReqState::Replied(_) | ReqState::Failed(_) => {}
        }
    }

    /// Drops `ctx`'s request, whatever its state.
    fn abandon(&mut self, ctx: CtxId) {
        if let Some(req) = self.ctxs.get_mut(&ctx).and_then(|c| c.req.take()) {
            self.detach(ctx, &req);
        }
    }

    /// Puts `ctx`'s request at the back of the queue for a pipe.
    fn enqueue(&mut self, ctx: CtxId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(req) = self.ctxs.get_mut(&ctx).and_then(|c| c.req.as_mut()) {
            req.state = ReqState::Queued { seq };
            self.queue.insert(seq, ctx);
        }
    }

    /// Sends queued requests while some pipe has credit.
    fn pump(&mut self, now: Instant) {
        while !self.ready.is_empty() {
            let Some((_, ctx)) = self.queue.pop_first() else {
                return;
            };
            let Some(req) = self.ctxs.get_mut(&ctx).and_then(|c| c.req.as_mut()) else {
                debug_assert!(false, "queued request without context");
                continue;
            };
            let pipe = self.ready.pop_front().expect("checked");
            let p = self.pipes.get_mut(&pipe).expect("ready pipe is known");
            p.credits -= 1;
            if p.credits > 0 {
                self.ready.push_back(pipe);
            }
            p.carrying.insert(ctx);
            let resend_at = self.resend.and_then(|d| now.checked_add(d));
            if let Some(at) = resend_at {
                self.timers.insert((at, Timer::Resend(ctx)));
            }
            req.state = ReqState::Sent { pipe, resend_at };
            self.out.push_back(Output::Transmit {
                pipe,
                msg: req.msg.clone(),
            });
        }
    }

    /// Forgets `pipe`; its requests are resent or fail. No pump.
    fn drop_pipe(&mut self, pipe: PipeId) {
        let Some(state) = self.pipes.remove(&pipe) else {
            return;
        };
        if state.credits > 0 {
            self.ready.retain(|p| *p != pipe);
        }
        for ctx in state.carrying {
            let Some(req) = self.ctxs.get_mut(&ctx).and_then(|c| c.req.as_mut()) else {
                continue;
            };
            let ReqState::Sent { resend_at, .. } = req.state else {
                debug_assert!(false, "carried request not in Sent state");
                continue;
            };
            if let Some(at) = resend_at {
                self.timers.remove(&(at, Timer::Resend(ctx)));
            }
            if self.resend.is_some() {
                // NNG resets the context's timer to zero: resend at once.
                self.enqueue(ctx);
            } else {
                let id = req.id;
                req.state = ReqState::Failed(OpError::ConnectionReset);
                self.ids.remove(&id);
                if self.finish_recv(ctx, Err(OpError::ConnectionReset)) {
                    self.ctxs.get_mut(&ctx).expect("exists").req = None;
                }
            }
        }
    }

    fn start_send(&mut self, op: OpId, ctx: CtxId, msg: Message, now: Instant) {
        // A new request cancels the previous one.
        self.finish_recv(ctx, Err(OpError::Canceled));
        self.abandon(ctx);
        let id = self.alloc_id();
        let mut header = Header::new();
        header.push_word(id).expect("4 bytes fit");
        let wire = Message {
            header,
            body: msg.body,
        };
        self.ids.insert(id, ctx);
        self.ctxs.get_mut(&ctx).expect("checked").req = Some(Request {
            id,
            msg: wire,
            state: ReqState::Queued { seq: 0 },
        });
        self.enqueue(ctx);
        self.complete(op, Ok(None));
        self.pump(now);
    }

    fn start_recv(
        &mut self,
        op: OpId,
        ctx: CtxId,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), OpError> {
        let c = self.ctxs.get_mut(&ctx).expect("checked");
        if c.recv.is_some() {
            return Err(CallerError::BadState.into());
        }
        match c.req.as_ref().map(|r| &r.state) {
            None => Err(CallerError::BadState.into()),
            Some(ReqState::Replied(_) | ReqState::Failed(_)) => {
                let req = c.req.take().expect("checked");
                let result = match req.state {
                    ReqState::Replied(m) => Ok(Some(m)),
                    ReqState::Failed(e) => Err(e),
                    _ => unreachable!(),
                };
                self.complete(op, result);
                Ok(())
            }
            Some(ReqState::Queued { .. } | ReqState::Sent { .. }) => {
                if deadline.is_some_and(|d| d <= now) {
                    self.abandon(ctx);
                    self.complete(op, Err(OpError::TimedOut));
                    return Ok(());
                }
                c.recv = Some(op);
                self.ops.insert(op, RecvOp { ctx, deadline });
                if let Some(d) = deadline {
                    self.timers.insert((d, Timer::Deadline(op)));
                }
                Ok(())
            }
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Deadline(op) => {
                if let Some(ctx) = self.take_op(op) {
                    self.abandon(ctx);
                    self.complete(op, Err(OpError::TimedOut));
                }
            }
            Timer::Resend(ctx) => {
                let Some(req) = self.ctxs.get_mut(&ctx).and_then(|c| c.req.as_mut()) else {
                    return;
                };
                if let ReqState::Sent { pipe, .. } = req.state {
                    if let Some(p) = self.pipes.get_mut(&pipe) {
                        p.carrying.remove(&ctx);
                    }
                    self.enqueue(ctx);
                }
            }
        }
    }
}

impl Protocol for Req0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Req0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Req0, peer)?;
        // A pipe id the driver reuses without removing it first: start over.
        self.drop_pipe(pipe);
        self.pipes.insert(
            pipe,
            PipeState {
                credits,
                carrying: BTreeSet::new(),
            },
        );
        if credits > 0 {
            self.ready.push_back(pipe);
        }
        self.pump(now);
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, now: Instant) {
        self.drop_pipe(pipe);
        self.pump(now);
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, now: Instant) {
        if let Some(p) = self.pipes.get_mut(&pipe) {
            if p.credits == 0 && credits > 0 {
                self.ready.push_back(pipe);
            }
            p.credits = p.credits.saturating_add(credits);
            self.pump(now);
        }
    }

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, now: Instant) {
        if !self.pipes.contains_key(&pipe) {
            return;
        }
        let Some(id) = msg.word_at(0) else {
            self.out.push_back(Output::ClosePipe {
                pipe,
                error: PeerError::ShortHeader,
            });
            self.drop_pipe(pipe);
            self.pump(now);
            return;
        };
        let Some(ctx) = self.ids.get(&id).copied() else {
            return; // stale or unknown: dropped
        };
        let req = self
            .ctxs
            .get_mut(&ctx)
            .and_then(|c| c.req.take())
            .expect("an id in use belongs to a request");
        self.detach(ctx, &req);
        let split = msg.split_header_at(4);
        debug_assert!(split, "4 bytes are there");
        msg.header.clear();
        if self.ctxs.get(&ctx).is_some_and(|c| c.recv.is_some()) {
            self.finish_recv(ctx, Ok(Some(msg)));
        } else {
            self.ctxs.get_mut(&ctx).expect("exists").req = Some(Request {
                state: ReqState::Replied(msg),
                ..req
            });
        }
    }

    fn can_send(&self) -> bool {
        false
    }

    fn handle_send(&mut self, _ctx: CtxId, _msg: Message, _now: Instant) -> Result<(), OpError> {
        Err(CallerError::NotSupported.into())
    }

    fn start_op(
        &mut self,
        op: OpId,
        ctx: CtxId,
        what: Op,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), OpError> {
        if self.ops.contains_key(&op) {
            // Op ids are unique per socket; this one is still pending.
            return Err(CallerError::BadState.into());
        }
        if !self.ctxs.contains_key(&ctx) {
            return Err(CallerError::NoSuchContext.into());
        }
        match what {
            // Sends complete at once, so their deadline never matters.
            Op::Send(msg) => {
                self.start_send(op, ctx, msg, now);
                Ok(())
            }
            Op::Recv => self.start_recv(op, ctx, deadline, now),
        }
    }

    fn cancel_op(&mut self, op: OpId, _now: Instant) {
        if let Some(ctx) = self.take_op(op) {
            self.abandon(ctx);
        }
    }

    fn open_ctx(&mut self) -> Result<CtxId, CallerError> {
        loop {
            self.next_ctx = self.next_ctx.wrapping_add(1);
            let id = CtxId(self.next_ctx);
            if id != CtxId::SOCKET && !self.ctxs.contains_key(&id) {
                self.ctxs.insert(id, Ctx::default());
                return Ok(id);
            }
        }
    }

    fn close_ctx(&mut self, ctx: CtxId, _now: Instant) {
        if !self.ctxs.contains_key(&ctx) {
            return;
        }
        self.finish_recv(ctx, Err(OpError::Closed));
        self.abandon(ctx);
        if ctx != CtxId::SOCKET {
            self.ctxs.remove(&ctx);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.fire(timer);
        }
        self.pump(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REP: u16 = 0x31;

    fn drain(r: &mut Req0) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// (pipe, id, body) of every transmission; panics on anything else.
    fn sent(out: Vec<Output>) -> Vec<(u32, u32, Vec<u8>)> {
        out.into_iter()
            .map(|o| match o {
                Output::Transmit { pipe, msg } => {
                    assert_eq!(msg.header.len(), 4);
                    (pipe.0, msg.word_at(0).unwrap(), msg.body.to_vec())
                }
                o => panic!("{o:?}"),
            })
            .collect()
    }

    fn reply(id: u32, body: &[u8]) -> Message {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        Message::from_body(v)
    }

    fn opts(resend: Option<Duration>) -> Options {
        Options {
            req_resend: resend,
            seed: 42,
            ..Options::default()
        }
    }

    fn send(r: &mut Req0, op: u64, ctx: CtxId, body: &'static str, now: Instant) {
        r.start_op(OpId(op), ctx, Op::Send(Message::from_body(body)), None, now)
            .unwrap();
    }

    fn completed(o: &Output) -> Option<(u64, &Result<Option<Message>, OpError>)> {
        match o {
            Output::Completed { op, result } => Some((op.0, result)),
            _ => None,
        }
    }

    #[test]
    fn refuses_wrong_peer_and_queued_sends() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        assert_eq!(
            r.add_pipe(PipeId(1), 0x30, 1, now),
            Err(PeerError::WrongProtocol(0x30))
        );
        assert!(!r.can_send());
        assert_eq!(
            r.handle_send(CtxId::SOCKET, Message::default(), now),
            Err(OpError::Caller(CallerError::NotSupported))
        );
    }

    #[test]
    fn ids_have_top_bit_and_increment() {
        let base = Instant::now();
        let mut r = Req0::new(&opts(None));
        let start = END_BIT | (Rng::new(42).next_u32() & !END_BIT);
        r.add_pipe(PipeId(1), REP, 10, base).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "a", base);
        send(&mut r, 2, CtxId::SOCKET, "b", base);
        let c = r.open_ctx().unwrap();
        send(&mut r, 3, c, "c", base);
        let out = drain(&mut r);
        let done: Vec<_> = out.iter().filter_map(completed).collect();
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|(_, res)| matches!(res, Ok(None))));
        let tx = sent(out.into_iter().filter(|o| completed(o).is_none()).collect());
        assert_eq!(
            tx,
            vec![
                (1, start, b"a".to_vec()),
                (1, END_BIT | (start + 1), b"b".to_vec()),
                (1, END_BIT | (start + 2), b"c".to_vec()),
            ]
        );
        for (_, id, _) in &tx {
            assert_ne!(id & END_BIT, 0);
        }
        assert_eq!(r.outstanding(), 2, "the first request was replaced");
    }

    #[test]
    fn ids_wrap_within_31_bits_and_skip_ids_in_use() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.next_id = 0x7fff_fffe;
        r.add_pipe(PipeId(1), REP, 10, now).unwrap();
        let c1 = r.open_ctx().unwrap();
        let c2 = r.open_ctx().unwrap();
        send(&mut r, 1, CtxId::SOCKET, "a", now);
        send(&mut r, 2, c1, "b", now);
        let ids: Vec<u32> = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        )
        .into_iter()
        .map(|t| t.1)
        .collect();
        assert_eq!(ids, vec![0xffff_fffe, 0xffff_ffff]);
        // Next candidate is 0x8000_0000; pretend it is in use.
        r.ids.insert(0x8000_0000, CtxId::SOCKET);
        send(&mut r, 3, c2, "c", now);
        let tx = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        assert_eq!(tx[0].1, 0x8000_0001);
    }

    #[test]
    fn request_waits_for_a_pipe_then_round_robin() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        let c = r.open_ctx().unwrap();
        send(&mut r, 1, CtxId::SOCKET, "a", now);
        send(&mut r, 2, c, "b", now);
        let out = drain(&mut r);
        assert_eq!(out.len(), 2, "sends complete at once: {out:?}");
        assert!(out
            .iter()
            .all(|o| matches!(completed(o), Some((_, Ok(None))))));
        assert_eq!(r.queued(), 2);
        r.add_pipe(PipeId(1), REP, 1, now).unwrap();
        r.add_pipe(PipeId(2), REP, 1, now).unwrap();
        let tx = sent(drain(&mut r));
        assert_eq!(
            tx.iter().map(|t| (t.0, t.2.clone())).collect::<Vec<_>>(),
            vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
        );
        // No credit left: the next request waits for one.
        let c2 = r.open_ctx().unwrap();
        send(&mut r, 3, c2, "c", now);
        let _ = drain(&mut r);
        assert_eq!(r.queued(), 1);
        r.handle_credit(PipeId(2), 1, now);
        assert_eq!(sent(drain(&mut r)), vec![(2, tx[1].1 + 1, b"c".to_vec())]);
    }

    #[test]
    fn reply_completes_recv_with_empty_header() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "ping", now);
        let tx = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        assert!(drain(&mut r).is_empty());
        r.handle_message(PipeId(1), reply(tx[0].1, b"pong"), now);
        match &drain(&mut r)[..] {
            [Output::Completed {
                op,
                result: Ok(Some(m)),
            }] => {
                assert_eq!(*op, OpId(2));
                assert!(m.header.is_empty());
                assert_eq!(&m.body[..], b"pong");
            }
            o => panic!("{o:?}"),
        }
        // A duplicate reply is stale now.
        r.handle_message(PipeId(1), reply(tx[0].1, b"again"), now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.outstanding(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn reply_before_recv_is_kept() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(Some(Duration::from_secs(1))));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "ping", now);
        let tx = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        // Inproc split: the id already in the header.
        let mut m = reply(tx[0].1, b"pong");
        assert!(m.split_header_at(4));
        r.handle_message(PipeId(1), m, now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.poll_timeout(), None, "no resend once answered");
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        match &drain(&mut r)[..] {
            [Output::Completed {
                op: OpId(2),
                result: Ok(Some(m)),
            }] => {
                assert!(m.header.is_empty());
                assert_eq!(&m.body[..], b"pong");
            }
            o => panic!("{o:?}"),
        }
        // The reply was taken: the next receive has nothing to wait for.
        assert_eq!(
            r.start_op(OpId(3), CtxId::SOCKET, Op::Recv, None, now),
            Err(OpError::Caller(CallerError::BadState))
        );
    }

    #[test]
    fn recv_without_request_is_bad_state() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        assert_eq!(
            r.start_op(OpId(1), CtxId::SOCKET, Op::Recv, None, now),
            Err(OpError::Caller(CallerError::BadState))
        );
        assert_eq!(
            r.start_op(OpId(2), CtxId(77), Op::Recv, None, now),
            Err(OpError::Caller(CallerError::NoSuchContext))
        );
        assert!(drain(&mut r).is_empty());
        // A second receive while one is pending is refused too.
        send(&mut r, 3, CtxId::SOCKET, "x", now);
        r.start_op(OpId(4), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        assert_eq!(
            r.start_op(OpId(5), CtxId::SOCKET, Op::Recv, None, now),
            Err(OpError::Caller(CallerError::BadState))
        );
    }

    #[test]
    fn new_send_cancels_previous_request() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "old", now);
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        let old = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        )[0]
        .1;
        send(&mut r, 3, CtxId::SOCKET, "new", now);
        let out = drain(&mut r);
        let done: Vec<_> = out.iter().filter_map(completed).collect();
        assert!(matches!(done[0], (2, Err(OpError::Canceled))));
        assert!(matches!(done[1], (3, Ok(None))));
        let new = sent(out.into_iter().filter(|o| completed(o).is_none()).collect())[0].1;
        assert_ne!(old, new);
        r.start_op(OpId(4), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        r.handle_message(PipeId(1), reply(old, b"late"), now);
        assert!(
            drain(&mut r).is_empty(),
            "late reply to the old id is dropped"
        );
        r.handle_message(PipeId(1), reply(new, b"fresh"), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed { op: OpId(4), result: Ok(Some(m)) }] if &m.body[..] == b"fresh"
        ));
    }

    #[test]
    fn recv_deadline_times_out_and_abandons() {
        let base = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, base).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "q", base);
        let id = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        )[0]
        .1;
        let deadline = base + Duration::from_millis(500);
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, Some(deadline), base)
            .unwrap();
        assert_eq!(r.poll_timeout(), Some(deadline));
        r.handle_timeout(base + Duration::from_millis(499));
        assert!(drain(&mut r).is_empty());
        r.handle_timeout(deadline);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(2),
                result: Err(OpError::TimedOut)
            }]
        ));
        assert_eq!(r.poll_timeout(), None);
        // The request is gone: its reply is dropped and recv is ESTATE.
        r.handle_message(PipeId(1), reply(id, b"late"), deadline);
        assert!(drain(&mut r).is_empty());
        assert_eq!(
            r.start_op(OpId(3), CtxId::SOCKET, Op::Recv, None, deadline),
            Err(OpError::Caller(CallerError::BadState))
        );
        // A deadline already past when the receive starts.
        send(&mut r, 4, CtxId::SOCKET, "q2", deadline);
        let _ = drain(&mut r);
        r.start_op(OpId(5), CtxId::SOCKET, Op::Recv, Some(base), deadline)
            .unwrap();
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(5),
                result: Err(OpError::TimedOut)
            }]
        ));
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn send_deadline_is_harmless() {
        let base = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.start_op(
            OpId(1),
            CtxId::SOCKET,
            Op::Send(Message::from_body("x")),
            Some(base),
            base,
        )
        .unwrap();
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(1),
                result: Ok(None)
            }]
        ));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn cancel_op_abandons_without_completion() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(Some(Duration::from_secs(1))));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "q", now);
        let id = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        )[0]
        .1;
        r.start_op(
            OpId(2),
            CtxId::SOCKET,
            Op::Recv,
            Some(now + Duration::from_secs(9)),
            now,
        )
        .unwrap();
        r.cancel_op(OpId(2), now);
        assert_eq!(r.poll_timeout(), None, "deadline and resend timers gone");
        r.handle_message(PipeId(1), reply(id, b"late"), now);
        r.handle_timeout(now + Duration::from_secs(60));
        assert!(drain(&mut r).is_empty());
        // Cancelling again, or an unknown op, does nothing.
        r.cancel_op(OpId(2), now);
        r.cancel_op(OpId(99), now);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn resend_timer_same_id() {
        let base = Instant::now();
        let d = Duration::from_secs(60);
        let mut r = Req0::new(&opts(Some(d)));
        r.add_pipe(PipeId(1), REP, 4, base).unwrap();
        r.add_pipe(PipeId(2), REP, 4, base).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "q", base);
        let first = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        assert_eq!(first.len(), 1);
        assert_eq!(r.poll_timeout(), Some(base + d));
        r.handle_timeout(base + d - Duration::from_millis(1));
        assert!(drain(&mut r).is_empty());
        r.handle_timeout(base + d);
        let again = sent(drain(&mut r));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, first[0].1, "same id");
        assert_eq!(again[0].2, b"q");
        assert_eq!(again[0].0, 2, "round robin moves on");
        assert_eq!(
            r.poll_timeout(),
            Some(base + 2 * d),
            "measured from the resend"
        );
        // A reply from the first pipe still counts.
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, None, base + d)
            .unwrap();
        r.handle_message(PipeId(1), reply(first[0].1, b"ok"), base + d);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(2),
                result: Ok(Some(_))
            }]
        ));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn resend_waits_for_credit() {
        let base = Instant::now();
        let d = Duration::from_secs(1);
        let mut r = Req0::new(&opts(Some(d)));
        r.add_pipe(PipeId(1), REP, 1, base).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "q", base);
        let _ = drain(&mut r);
        r.handle_timeout(base + d);
        assert!(drain(&mut r).is_empty(), "no credit");
        assert_eq!(r.queued(), 1);
        assert_eq!(r.poll_timeout(), None);
        r.handle_credit(PipeId(1), 1, base + 2 * d);
        assert_eq!(sent(drain(&mut r)).len(), 1);
        assert_eq!(r.poll_timeout(), Some(base + 3 * d));
    }

    #[test]
    fn resend_when_carrying_pipe_is_lost() {
        let base = Instant::now();
        let d = Duration::from_secs(60);
        let mut r = Req0::new(&opts(Some(d)));
        r.add_pipe(PipeId(1), REP, 4, base).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "q", base);
        r.start_op(OpId(2), CtxId::SOCKET, Op::Recv, None, base)
            .unwrap();
        let first = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        let t = base + Duration::from_secs(5);
        r.remove_pipe(PipeId(1), t);
        assert!(drain(&mut r).is_empty(), "no pipe yet");
        assert_eq!(r.poll_timeout(), None);
        // A peer appears: the request goes out at once.
        r.add_pipe(PipeId(3), REP, 4, t).unwrap();
        let again = sent(drain(&mut r));
        assert_eq!(again, vec![(3, first[0].1, b"q".to_vec())]);
        assert_eq!(r.poll_timeout(), Some(t + d));
        // Losing it while another pipe has credit resends immediately.
        r.add_pipe(PipeId(4), REP, 4, t).unwrap();
        r.remove_pipe(PipeId(3), t);
        assert_eq!(sent(drain(&mut r)), vec![(4, first[0].1, b"q".to_vec())]);
        // A short reply closes the pipe, which also counts as losing it.
        r.add_pipe(PipeId(5), REP, 4, t).unwrap();
        r.handle_message(PipeId(4), Message::from_body(&b"\x80\0\0"[..]), t);
        let out = drain(&mut r);
        assert!(matches!(
            &out[0],
            Output::ClosePipe {
                pipe: PipeId(4),
                error: PeerError::ShortHeader
            }
        ));
        assert_eq!(
            sent(out.into_iter().skip(1).collect()),
            vec![(5, first[0].1, b"q".to_vec())]
        );
        r.remove_pipe(PipeId(4), t);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn pipe_loss_without_resend_is_connection_reset() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        r.add_pipe(PipeId(2), REP, 4, now).unwrap();
        let c = r.open_ctx().unwrap();
        send(&mut r, 1, CtxId::SOCKET, "a", now);
        send(&mut r, 2, c, "b", now);
        r.start_op(OpId(3), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        let tx = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        );
        assert_eq!((tx[0].0, tx[1].0), (1, 2));
        assert_eq!(r.poll_timeout(), None, "no resend timer");
        r.remove_pipe(PipeId(1), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(3),
                result: Err(OpError::ConnectionReset)
            }]
        ));
        r.remove_pipe(PipeId(2), now);
        assert!(drain(&mut r).is_empty(), "no receive pending on ctx");
        // The next receive on it gets the reset.
        r.start_op(OpId(4), c, Op::Recv, None, now).unwrap();
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(4),
                result: Err(OpError::ConnectionReset)
            }]
        ));
        assert_eq!(r.outstanding(), 0);
        assert_eq!(
            r.start_op(OpId(5), c, Op::Recv, None, now),
            Err(OpError::Caller(CallerError::BadState))
        );
    }

    #[test]
    fn zero_resend_means_off() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(Some(Duration::ZERO)));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        send(&mut r, 1, CtxId::SOCKET, "a", now);
        let _ = drain(&mut r);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn short_reply_closes_pipe() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        r.handle_message(PipeId(1), Message::from_body(&b"abc"[..]), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                pipe: PipeId(1),
                error: PeerError::ShortHeader
            }]
        ));
        // Unknown pipes and unknown ids are ignored.
        r.handle_message(PipeId(9), Message::default(), now);
        r.handle_message(PipeId(1), reply(0x8000_0001, b""), now);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn close_ctx_completes_closed() {
        let now = Instant::now();
        let mut r = Req0::new(&opts(None));
        r.add_pipe(PipeId(1), REP, 4, now).unwrap();
        let c = r.open_ctx().unwrap();
        send(&mut r, 1, c, "a", now);
        r.start_op(
            OpId(2),
            c,
            Op::Recv,
            Some(now + Duration::from_secs(1)),
            now,
        )
        .unwrap();
        let id = sent(
            drain(&mut r)
                .into_iter()
                .filter(|o| completed(o).is_none())
                .collect(),
        )[0]
        .1;
        r.close_ctx(c, now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(2),
                result: Err(OpError::Closed)
            }]
        ));
        assert_eq!(r.poll_timeout(), None);
        r.handle_message(PipeId(1), reply(id, b"late"), now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(
            r.start_op(OpId(3), c, Op::Send(Message::default()), None, now),
            Err(OpError::Caller(CallerError::NoSuchContext))
        );
        // The socket's context survives being closed.
        send(&mut r, 4, CtxId::SOCKET, "b", now);
        r.start_op(OpId(5), CtxId::SOCKET, Op::Recv, None, now)
            .unwrap();
        let _ = drain(&mut r);
        r.close_ctx(CtxId::SOCKET, now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::Completed {
                op: OpId(5),
                result: Err(OpError::Closed)
            }]
        ));
        send(&mut r, 6, CtxId::SOCKET, "c", now);
        assert_eq!(r.contexts(), 1);
    }

    #[test]
    fn thousands_of_contexts_each_get_their_reply() {
        let base = Instant::now();
        let mut r = Req0::new(&opts(Some(Duration::from_secs(60))));
        const N: u64 = 5000;
        r.add_pipe(PipeId(1), REP, N as u32, base).unwrap();
        r.add_pipe(PipeId(2), REP, N as u32, base).unwrap();
        let ctxs: Vec<CtxId> = (0..N).map(|_| r.open_ctx().unwrap()).collect();
        for (i, c) in ctxs.iter().enumerate() {
            let body = format!("req-{i}");
            r.start_op(
                OpId(2 * i as u64),
                *c,
                Op::Send(Message::from_body(body)),
                None,
                base,
            )
            .unwrap();
            let deadline = base + Duration::from_secs(10 + i as u64 % 7);
            r.start_op(OpId(2 * i as u64 + 1), *c, Op::Recv, Some(deadline), base)
                .unwrap();
        }
        let mut requests = Vec::new();
        for o in drain(&mut r) {
            match o {
                Output::Transmit { pipe, msg } => requests.push((pipe, msg)),
                Output::Completed {
                    result: Ok(None), ..
                } => {}
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(requests.len(), N as usize);
        // Answer in reverse order, echoing the body.
        for (pipe, req) in requests.into_iter().rev() {
            let mut v = req.header.as_slice().to_vec();
            v.extend_from_slice(b"re:");
            v.extend_from_slice(&req.body);
            r.handle_message(pipe, Message::from_body(v), base + Duration::from_secs(1));
        }
        let mut got = 0;
        for o in drain(&mut r) {
            match o {
                Output::Completed {
                    op,
                    result: Ok(Some(m)),
                } => {
                    let i = (op.0 - 1) / 2;
                    assert_eq!(m.body, format!("re:req-{i}").as_bytes());
                    got += 1;
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(got, N);
        assert_eq!(r.outstanding(), 0);
        assert_eq!(r.poll_timeout(), None, "every timer cleared");
    }

    #[test]
    fn many_deadlines_fire_in_order() {
        let base = Instant::now();
        let mut r = Req0::new(&opts(None));
        let ctxs: Vec<CtxId> = (0..1000).map(|_| r.open_ctx().unwrap()).collect();
        for (i, c) in ctxs.iter().enumerate() {
            send(&mut r, 2 * i as u64, *c, "x", base);
            let deadline = base + Duration::from_millis(1000 - i as u64);
            r.start_op(OpId(2 * i as u64 + 1), *c, Op::Recv, Some(deadline), base)
                .unwrap();
        }
        let _ = drain(&mut r);
        assert_eq!(r.poll_timeout(), Some(base + Duration::from_millis(1)));
        r.handle_timeout(base + Duration::from_millis(500));
        let fired: Vec<u64> = drain(&mut r)
            .iter()
            .map(|o| match o {
                Output::Completed {
                    op,
                    result: Err(OpError::TimedOut),
                } => op.0,
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(fired.len(), 500);
        assert!(
            fired.windows(2).all(|w| w[0] > w[1]),
            "earliest deadline first"
        );
        assert_eq!(r.poll_timeout(), Some(base + Duration::from_millis(501)));
        assert_eq!(r.queued(), 500, "the rest still wait for a pipe");
    }
}
