//! SURVEYOR v0 (0x62): surveys to every respondent, responses collected
//! until the survey's deadline, per context.
//!
//! # Wire
//!
//! A survey is `| 1|survey id (31 bits) | body |`: one 32-bit big-endian
//! word with the top bit set, then the body, exactly like a REQ request. A
//! response comes back with the same word in front (devices on the way pop
//! their own hops).
//!
//! # Operations and contexts
//!
//! As in REQ, sends and receives have state, so they are operations
//! ([`Protocol::start_op`]); [`Protocol::handle_send`] is not supported.
//! Every context ([`CtxId::SOCKET`] and those from [`Protocol::open_ctx`])
//! runs at most one survey at a time, and different contexts' surveys
//! overlap freely (NNG's `nng_ctx`):
//!
//! * **send** starts a new survey on the context. The previous one is
//!   cancelled: its pending receive ends with [`OpError::Canceled`], its
//!   queued responses are discarded and later responses to it are dropped.
//!   The survey takes a fresh id and goes out at once to **every** pipe that
//!   has credit; a pipe whose write queue is full misses it (surveys are best
//!   effort and never wait, as in NNG and the RFC). The send completes at
//!   once with `Ok(None)`. The survey collects responses until
//!   `now + `[`Options::survey_time`] (NNG's `NNG_OPT_SURVEYOR_SURVEYTIME`,
//!   1 s by default).
//! * **receive** fails at once with [`CallerError::BadState`] (NNG's
//!   `NNG_ESTATE`) if the context never started a survey, and with
//!   [`OpError::TimedOut`] (NNG's `NNG_ETIMEDOUT`) if its survey is over.
//!   Both are returned by `start_op` itself (no completion follows). A
//!   queued response completes the receive at once; otherwise it waits. When
//!   the survey's deadline passes the pending receive ends with
//!   [`OpError::TimedOut`], queued responses are discarded and the survey
//!   ends: later responses are dropped, later receives fail with
//!   `TimedOut`. The operation's own `deadline` (the receive timeout) also
//!   applies, whichever comes first, but it ends only that receive, not the
//!   survey. [`Protocol::cancel_op`] withdraws a receive without completion
//!   and leaves the survey running. A context has at most one pending
//!   receive; a second one is [`CallerError::BadState`].
//! * closing a context ends its pending receive with [`OpError::Closed`] and
//!   its survey. Closing [`CtxId::SOCKET`] does that too, but the context
//!   stays (with no survey, so a receive is `BadState` again).
//!
//! # Survey ids
//!
//! `0x8000_0000 | x`, `x` starting at a random 31-bit value (from
//! [`Options::seed`]) and incrementing with wrap-around, skipping ids of
//! surveys still running (NNG: one id map over `0x80000000..=0xffffffff`
//! with a random start, shared with REQ's scheme).
//!
//! # Responses
//!
//! A response shorter than 4 bytes is garbage and its pipe is closed
//! ([`PeerError::ShortHeader`]). Its first word names the survey; unknown or
//! finished surveys' responses are dropped ([`Surveyor0::stale_drops`]).
//! Otherwise the response (body without the id word, empty header) completes
//! the context's pending receive, or waits in the survey's queue, which holds
//! at most [`Options::recv_buffer`] responses; beyond that they are dropped
//! ([`Surveyor0::overflow_drops`]). A survey takes any number of responses,
//! from any pipe (one per respondent, usually).
//!
//! Messages from stream transports arrive with an empty header, inproc ones
//! with the sender's split; both are read as `header ++ body`.
//!
//! # Time
//!
//! Deadlines are enforced against the `now` of every input, not only in
//! [`Protocol::handle_timeout`]: a response or receive that comes in at or
//! after a deadline the driver has not fired yet first lets that deadline
//! fire, so nothing is ever delivered to a survey after its deadline.
//!
//! # Cost
//!
//! Contexts, survey ids and pending receives live in hash maps, deadlines in
//! one ordered timer set, so every event is `O(log n)` in the number of
//! contexts, except a send, which also visits every pipe once. An idle
//! context is a few words.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{check_peer, CtxId, Op, OpId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::{Header, Message};
use crate::options::Options;
use crate::rng::Rng;

use super::ids::END_BIT;

/// A running survey.
#[derive(Debug)]
struct Survey {
    id: u32,
    /// When it stops collecting; `None` if `now + survey_time` overflows.
    deadline: Option<Instant>,
    /// Responses no receive has taken yet, oldest first.
    responses: VecDeque<Message>,
}

/// Where a context is.
#[derive(Debug, Default)]
enum SurveyState {
    /// No survey was ever started (or the context was reset by closing it).
    #[default]
    Never,
    /// A survey collects responses.
    Active(Survey),
    /// The last survey's deadline passed.
    Expired,
}

/// One context.
#[derive(Debug, Default)]
struct Ctx {
    survey: SurveyState,
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
    /// The context's survey ends.
    Survey(CtxId),
    /// The receive operation's own deadline.
    Deadline(OpId),
}

/// SURVEYOR state. See the module docs.
#[derive(Debug)]
pub struct Surveyor0 {
    survey_time: Duration,
    /// Responses one survey may queue.
    max_queued: usize,
    /// Low 31 bits of the next survey id to try.
    next_id: u32,
    next_ctx: u32,
    /// Pipes and their credits; ordered so that a survey goes out in a
    /// repeatable order.
    pipes: BTreeMap<PipeId, u32>,
    ctxs: HashMap<CtxId, Ctx>,
    /// Ids of running surveys.
    ids: HashMap<u32, CtxId>,
    /// Pending receive operations.
    ops: HashMap<OpId, RecvOp>,
    timers: BTreeSet<(Instant, Timer)>,
    stale_drops: u64,
    overflow_drops: u64,
    missed_pipes: u64,
    out: VecDeque<Output>,
}

impl Surveyor0 {
    /// A surveyor socket with no pipes and only the socket's context.
    pub fn new(opts: &Options) -> Self {
        let mut rng = Rng::new(opts.seed);
        let mut ctxs = HashMap::new();
        ctxs.insert(CtxId::SOCKET, Ctx::default());
        Surveyor0 {
            survey_time: opts.survey_time,
            max_queued: opts.recv_buffer.max(1),
            next_id: rng.next_u32() & !END_BIT,
            next_ctx: 0,
            pipes: BTreeMap::new(),
            ctxs,
            ids: HashMap::new(),
            ops: HashMap::new(),
            timers: BTreeSet::new(),
            stale_drops: 0,
            overflow_drops: 0,
            missed_pipes: 0,
            out: VecDeque::new(),
        }
    }

    /// Surveys still collecting responses.
    pub fn active_surveys(&self) -> usize {
        self.ids.len()
    }

    /// Open contexts, the socket's included.
    pub fn contexts(&self) -> usize {
        self.ctxs.len()
    }

    /// Responses dropped because their survey was unknown, replaced or over.
    pub fn stale_drops(&self) -> u64 {
        self.stale_drops
    }

    /// Responses dropped because their survey's queue was full.
    pub fn overflow_drops(&self) -> u64 {
        self.overflow_drops
    }

    /// Survey copies not sent because a pipe had no credit at the time.
    pub fn missed_pipes(&self) -> u64 {
        self.missed_pipes
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
    fn finish_recv(&mut self, ctx: CtxId, result: Result<Option<Message>, OpError>) {
        if let Some(op) = self.ctxs.get(&ctx).and_then(|c| c.recv) {
            self.take_op(op);
            self.complete(op, result);
        }
    }

    /// Ends `ctx`'s survey, if one runs, and leaves the context in `next`:
    /// its id, timer and queued responses are dropped. The pending receive
    /// is not touched.
    fn end_survey(&mut self, ctx: CtxId, next: SurveyState) {
        let Some(c) = self.ctxs.get_mut(&ctx) else {
            return;
        };
        if let SurveyState::Active(s) = std::mem::replace(&mut c.survey, next) {
            self.ids.remove(&s.id);
            if let Some(d) = s.deadline {
                self.timers.remove(&(d, Timer::Survey(ctx)));
            }
        }
    }

    /// Fires every timer due at `now`, earliest first.
    fn run_timers(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Survey(ctx) => {
                    self.end_survey(ctx, SurveyState::Expired);
                    self.finish_recv(ctx, Err(OpError::TimedOut));
                }
                Timer::Deadline(op) => {
                    if self.take_op(op).is_some() {
                        self.complete(op, Err(OpError::TimedOut));
                    }
                }
            }
        }
    }

    fn start_send(&mut self, op: OpId, ctx: CtxId, msg: Message, now: Instant) {
        // A new survey replaces the previous one.
        self.finish_recv(ctx, Err(OpError::Canceled));
        self.end_survey(ctx, SurveyState::Never);
        let id = self.alloc_id();
        let mut header = Header::new();
        header.push_word(id).expect("4 bytes fit");
        let wire = Message {
            header,
            body: msg.body,
        };
        // Best effort: every pipe with room gets it, the others miss it.
        for (&pipe, credits) in self.pipes.iter_mut() {
            if *credits > 0 {
                *credits -= 1;
                self.out.push_back(Output::Transmit {
                    pipe,
                    msg: wire.clone(),
                });
            } else {
                self.missed_pipes += 1;
            }
        }
        let deadline = now.checked_add(self.survey_time);
        if let Some(d) = deadline {
            self.timers.insert((d, Timer::Survey(ctx)));
        }
        self.ids.insert(id, ctx);
        self.ctxs.get_mut(&ctx).expect("checked").survey = SurveyState::Active(Survey {
            id,
            deadline,
            responses: VecDeque::new(),
        });
        self.complete(op, Ok(None));
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
        let s = match &mut c.survey {
            SurveyState::Never => return Err(CallerError::BadState.into()),
            SurveyState::Expired => return Err(OpError::TimedOut),
            SurveyState::Active(s) => s,
        };
        if let Some(m) = s.responses.pop_front() {
            self.complete(op, Ok(Some(m)));
        } else if deadline.is_some_and(|d| d <= now) {
            // Only this receive times out; the survey goes on.
            self.complete(op, Err(OpError::TimedOut));
        } else {
            c.recv = Some(op);
            self.ops.insert(op, RecvOp { ctx, deadline });
            if let Some(d) = deadline {
                self.timers.insert((d, Timer::Deadline(op)));
            }
        }
        Ok(())
    }
}

impl Protocol for Surveyor0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Surveyor0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Surveyor0, peer)?;
        // A pipe id reused without a remove first simply starts over.
        self.pipes.insert(pipe, credits);
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        // Surveys are not resent: nothing else depends on the pipe.
        self.pipes.remove(&pipe);
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        if let Some(c) = self.pipes.get_mut(&pipe) {
            *c = c.saturating_add(credits);
        }
    }

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, now: Instant) {
        if !self.pipes.contains_key(&pipe) {
            return;
        }
        self.run_timers(now);
        let Some(id) = msg.word_at(0) else {
            self.pipes.remove(&pipe);
            self.out.push_back(Output::ClosePipe {
                pipe,
                error: PeerError::ShortHeader,
            });
            return;
        };
        let Some(&ctx) = self.ids.get(&id) else {
            self.stale_drops += 1;
            return;
        };
        let split = msg.split_header_at(4);
        debug_assert!(split, "4 bytes are there");
        msg.header.clear();
        let c = self
            .ctxs
            .get_mut(&ctx)
            .expect("a running survey has a context");
        if let Some(op) = c.recv {
            self.take_op(op);
            self.complete(op, Ok(Some(msg)));
        } else if let SurveyState::Active(s) = &mut c.survey {
            if s.responses.len() < self.max_queued {
                s.responses.push_back(msg);
            } else {
                self.overflow_drops += 1;
            }
        } else {
            debug_assert!(false, "survey id in use without an active survey");
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
        self.run_timers(now);
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
        // The survey keeps running; only the receive is withdrawn.
        self.take_op(op);
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
        self.end_survey(ctx, SurveyState::Never);
        if ctx != CtxId::SOCKET {
            self.ctxs.remove(&ctx);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
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

    const RESP: u16 = 0x63;

    fn drain(s: &mut Surveyor0) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn opts() -> Options {
        Options {
            seed: 42,
            ..Options::default()
        }
    }

    fn first_id(seed: u64) -> u32 {
        END_BIT | (Rng::new(seed).next_u32() & !END_BIT)
    }

    fn response(id: u32, body: &[u8]) -> Message {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        Message::from_body(v)
    }

    /// Starts a survey and returns the outputs minus the send's completion.
    fn survey(
        s: &mut Surveyor0,
        op: u64,
        ctx: CtxId,
        body: &'static str,
        now: Instant,
    ) -> Vec<Output> {
        s.start_op(OpId(op), ctx, Op::Send(Message::from_body(body)), None, now)
            .unwrap();
        let out = drain(s);
        let done = out
            .iter()
            .filter(
                |o| matches!(o, Output::Completed { op: o, result: Ok(None) } if *o == OpId(op)),
            )
            .count();
        assert_eq!(done, 1, "the send completes at once: {out:?}");
        out.into_iter()
            .filter(|o| !matches!(o, Output::Completed { op: o, .. } if *o == OpId(op)))
            .collect()
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

    fn recv(s: &mut Surveyor0, op: u64, ctx: CtxId, deadline: Option<Instant>, now: Instant) {
        s.start_op(OpId(op), ctx, Op::Recv, deadline, now).unwrap();
    }

    /// The single output, a completion of `op`; returns its result.
    fn one_completion(s: &mut Surveyor0, op: u64) -> Result<Option<Message>, OpError> {
        match drain(s).as_mut_slice() {
            [Output::Completed { op: o, result }] if *o == OpId(op) => {
                std::mem::replace(result, Ok(None))
            }
            o => panic!("expected completion of op {op}: {o:?}"),
        }
    }

    fn body(r: Result<Option<Message>, OpError>) -> Vec<u8> {
        let m = r.expect("ok").expect("a message");
        assert!(m.header.is_empty(), "response handed over with a header");
        m.body.to_vec()
    }

    #[test]
    fn refuses_wrong_peer_and_queued_sends() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&opts());
        for peer in [0x62, 0x31, 0x30] {
            assert_eq!(
                s.add_pipe(PipeId(1), peer, 1, now),
                Err(PeerError::WrongProtocol(peer))
            );
        }
        s.add_pipe(PipeId(1), RESP, 1, now).unwrap();
        assert!(!s.can_send());
        assert_eq!(
            s.handle_send(CtxId::SOCKET, Message::default(), now),
            Err(OpError::Caller(CallerError::NotSupported))
        );
        assert_eq!(s.kind(), ProtocolKind::Surveyor0);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn survey_to_three_pipes_and_their_responses() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        for p in 1..=3 {
            s.add_pipe(PipeId(p), RESP, 2, base).unwrap();
        }
        let tx = sent(survey(&mut s, 1, CtxId::SOCKET, "q?", base));
        let id = first_id(42);
        assert_eq!(
            tx,
            vec![
                (1, id, b"q?".to_vec()),
                (2, id, b"q?".to_vec()),
                (3, id, b"q?".to_vec())
            ]
        );
        assert_eq!(s.poll_timeout(), Some(base + Duration::from_secs(1)));
        let t = base + Duration::from_millis(10);
        // A pending receive takes the first response.
        recv(&mut s, 2, CtxId::SOCKET, None, t);
        assert!(drain(&mut s).is_empty());
        s.handle_message(PipeId(2), response(id, b"two"), t);
        assert_eq!(body(one_completion(&mut s, 2)), b"two");
        // The others queue (one arrives over inproc with an odd split).
        s.handle_message(PipeId(1), response(id, b"one"), t);
        let mut m = response(id, b"three");
        assert!(m.split_header_at(6));
        s.handle_message(PipeId(3), m, t);
        assert!(drain(&mut s).is_empty());
        recv(&mut s, 3, CtxId::SOCKET, None, t);
        assert_eq!(body(one_completion(&mut s, 3)), b"one");
        recv(&mut s, 4, CtxId::SOCKET, None, t);
        assert_eq!(body(one_completion(&mut s, 4)), b"three");
        // A respondent may answer twice; an empty body is fine.
        s.handle_message(PipeId(3), response(id, b""), t);
        recv(&mut s, 5, CtxId::SOCKET, None, t);
        assert_eq!(body(one_completion(&mut s, 5)), b"");
        assert_eq!(s.active_surveys(), 1);
    }

    #[test]
    fn ids_have_top_bit_increment_and_skip_ids_in_use() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 100, now).unwrap();
        let start = first_id(42);
        let c = s.open_ctx().unwrap();
        let a = sent(survey(&mut s, 1, CtxId::SOCKET, "a", now))[0].1;
        let b = sent(survey(&mut s, 2, c, "b", now))[0].1;
        let a2 = sent(survey(&mut s, 3, CtxId::SOCKET, "a", now))[0].1;
        assert_eq!((a, b, a2), (start, start + 1, start + 2));
        // Wrap-around skips the id still in use by `c`.
        s.next_id = (start + 1) & !END_BIT;
        let a3 = sent(survey(&mut s, 4, CtxId::SOCKET, "a", now))[0].1;
        assert_eq!(
            a3,
            start + 2,
            "start + 1 is c's; start + 2 was freed by the new survey"
        );
        s.next_id = !END_BIT;
        let a4 = sent(survey(&mut s, 5, CtxId::SOCKET, "a", now))[0].1;
        assert_eq!(a4, 0xffff_ffff);
        let a5 = sent(survey(&mut s, 6, CtxId::SOCKET, "a", now))[0].1;
        assert_eq!(a5, END_BIT, "wraps within the top-bit range");
        // A different seed starts elsewhere.
        let mut s2 = Surveyor0::new(&Options {
            seed: 7,
            ..Options::default()
        });
        s2.add_pipe(PipeId(1), RESP, 1, now).unwrap();
        assert_eq!(
            sent(survey(&mut s2, 1, CtxId::SOCKET, "a", now))[0].1,
            first_id(7)
        );
    }

    #[test]
    fn pipes_without_credit_miss_the_survey() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 1, now).unwrap();
        s.add_pipe(PipeId(2), RESP, 0, now).unwrap();
        s.add_pipe(PipeId(3), RESP, 2, now).unwrap();
        let tx = sent(survey(&mut s, 1, CtxId::SOCKET, "a", now));
        assert_eq!(tx.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s.missed_pipes(), 1);
        // Credit later does not bring the old survey back: it never waits.
        s.handle_credit(PipeId(2), 1, now);
        assert!(drain(&mut s).is_empty());
        let tx = sent(survey(&mut s, 2, CtxId::SOCKET, "b", now));
        assert_eq!(tx.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.missed_pipes(), 2);
        // No pipe at all: the survey still runs (and times out).
        let mut e = Surveyor0::new(&opts());
        assert!(survey(&mut e, 1, CtxId::SOCKET, "x", now).is_empty());
        recv(&mut e, 2, CtxId::SOCKET, None, now);
        e.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(one_completion(&mut e, 2), Err(OpError::TimedOut));
        // Credit for unknown pipes is ignored; removed pipes get nothing.
        s.handle_credit(PipeId(9), 5, now);
        s.remove_pipe(PipeId(1), now);
        s.remove_pipe(PipeId(1), now);
        s.handle_credit(PipeId(1), 5, now);
        s.handle_credit(PipeId(3), 5, now);
        let tx = sent(survey(&mut s, 3, CtxId::SOCKET, "c", now));
        assert_eq!(tx.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn survey_deadline_times_out_the_receive() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, base).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", base))[0].1;
        recv(&mut s, 2, CtxId::SOCKET, None, base);
        let end = base + Duration::from_secs(1);
        assert_eq!(s.poll_timeout(), Some(end));
        s.handle_timeout(end - Duration::from_millis(1));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(end);
        assert_eq!(one_completion(&mut s, 2), Err(OpError::TimedOut));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.active_surveys(), 0);
        // The survey is over: late responses are dropped, receives time out.
        s.handle_message(PipeId(1), response(id, b"late"), end);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stale_drops(), 1);
        assert_eq!(
            s.start_op(OpId(3), CtxId::SOCKET, Op::Recv, None, end),
            Err(OpError::TimedOut)
        );
        assert!(drain(&mut s).is_empty(), "no completion after an Err");
        // survey_time is an option.
        let mut s = Surveyor0::new(&Options {
            survey_time: Duration::from_millis(250),
            ..opts()
        });
        let _ = survey(&mut s, 1, CtxId::SOCKET, "q", base);
        assert_eq!(s.poll_timeout(), Some(base + Duration::from_millis(250)));
    }

    #[test]
    fn expiry_discards_queued_responses() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, base).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", base))[0].1;
        s.handle_message(PipeId(1), response(id, b"r1"), base);
        s.handle_message(PipeId(1), response(id, b"r2"), base);
        s.handle_timeout(base + Duration::from_secs(1));
        assert!(drain(&mut s).is_empty(), "no receive was pending");
        assert_eq!(
            s.start_op(
                OpId(2),
                CtxId::SOCKET,
                Op::Recv,
                None,
                base + Duration::from_secs(1)
            ),
            Err(OpError::TimedOut)
        );
    }

    #[test]
    fn deadline_is_enforced_before_the_driver_fires_it() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, base).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", base))[0].1;
        let end = base + Duration::from_secs(1);
        // A response exactly at the deadline, handle_timeout not yet called.
        s.handle_message(PipeId(1), response(id, b"at deadline"), end);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stale_drops(), 1);
        assert_eq!(s.poll_timeout(), None);
        // A receive started after the deadline: TimedOut, not a response.
        let id = sent(survey(&mut s, 2, CtxId::SOCKET, "q", base))[0].1;
        s.handle_message(PipeId(1), response(id, b"queued"), base);
        assert_eq!(
            s.start_op(
                OpId(3),
                CtxId::SOCKET,
                Op::Recv,
                None,
                end + Duration::from_millis(5)
            ),
            Err(OpError::TimedOut)
        );
        // A pending receive whose own deadline passed is timed out before a
        // response that comes later can complete it.
        let t = end + Duration::from_secs(1);
        let id = sent(survey(&mut s, 4, CtxId::SOCKET, "q", t))[0].1;
        recv(
            &mut s,
            5,
            CtxId::SOCKET,
            Some(t + Duration::from_millis(10)),
            t,
        );
        s.handle_message(PipeId(1), response(id, b"r"), t + Duration::from_millis(20));
        assert_eq!(one_completion(&mut s, 5), Err(OpError::TimedOut));
        recv(
            &mut s,
            6,
            CtxId::SOCKET,
            None,
            t + Duration::from_millis(20),
        );
        assert_eq!(body(one_completion(&mut s, 6)), b"r");
    }

    #[test]
    fn receive_timeout_does_not_end_the_survey() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, base).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", base))[0].1;
        let d = base + Duration::from_millis(300);
        recv(&mut s, 2, CtxId::SOCKET, Some(d), base);
        assert_eq!(s.poll_timeout(), Some(d), "earliest deadline first");
        s.handle_timeout(d);
        assert_eq!(one_completion(&mut s, 2), Err(OpError::TimedOut));
        assert_eq!(s.poll_timeout(), Some(base + Duration::from_secs(1)));
        // Still collecting.
        let t = base + Duration::from_millis(500);
        s.handle_message(PipeId(1), response(id, b"later"), t);
        recv(
            &mut s,
            3,
            CtxId::SOCKET,
            Some(t + Duration::from_secs(5)),
            t,
        );
        assert_eq!(body(one_completion(&mut s, 3)), b"later");
        // A receive whose deadline already passed, with nothing queued.
        recv(&mut s, 4, CtxId::SOCKET, Some(base), t);
        assert_eq!(one_completion(&mut s, 4), Err(OpError::TimedOut));
        // ... and the survey's deadline wins over a later receive deadline.
        recv(
            &mut s,
            5,
            CtxId::SOCKET,
            Some(t + Duration::from_secs(5)),
            t,
        );
        s.handle_timeout(base + Duration::from_secs(1));
        assert_eq!(one_completion(&mut s, 5), Err(OpError::TimedOut));
        assert_eq!(s.poll_timeout(), None, "the receive's own timer went too");
    }

    #[test]
    fn new_survey_cancels_the_old_one() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 8, base).unwrap();
        s.add_pipe(PipeId(2), RESP, 8, base).unwrap();
        let old = sent(survey(&mut s, 1, CtxId::SOCKET, "old", base))[0].1;
        recv(&mut s, 2, CtxId::SOCKET, None, base);
        assert!(drain(&mut s).is_empty(), "pending");
        let t = base + Duration::from_millis(100);
        s.start_op(
            OpId(3),
            CtxId::SOCKET,
            Op::Send(Message::from_body("new")),
            None,
            t,
        )
        .unwrap();
        let mut out = drain(&mut s);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(matches!(
            &out[0],
            Output::Completed {
                op: OpId(2),
                result: Err(OpError::Canceled)
            }
        ));
        assert!(matches!(
            &out[3],
            Output::Completed {
                op: OpId(3),
                result: Ok(None)
            }
        ));
        let tx = sent(out.drain(1..3).collect());
        assert_eq!(tx[0].2, b"new");
        let new = tx[0].1;
        assert_eq!(tx[1].1, new);
        assert_ne!(new, old);
        // Old responses are dropped; the new survey's deadline counts from t.
        s.handle_message(PipeId(1), response(old, b"late"), t);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stale_drops(), 1);
        recv(&mut s, 4, CtxId::SOCKET, None, t);
        assert!(drain(&mut s).is_empty());
        s.handle_message(PipeId(2), response(new, b"fresh"), t);
        assert_eq!(body(one_completion(&mut s, 4)), b"fresh");
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(1)));
        assert_eq!(s.active_surveys(), 1);
    }

    #[test]
    fn new_survey_discards_queued_responses_of_the_old() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 8, base).unwrap();
        let old = sent(survey(&mut s, 1, CtxId::SOCKET, "old", base))[0].1;
        s.handle_message(PipeId(1), response(old, b"r1"), base);
        s.handle_message(PipeId(1), response(old, b"r2"), base);
        let new = sent(survey(&mut s, 2, CtxId::SOCKET, "new", base))[0].1;
        recv(&mut s, 3, CtxId::SOCKET, None, base);
        assert!(drain(&mut s).is_empty(), "old responses are gone");
        s.handle_message(PipeId(1), response(old, b"r3"), base);
        assert!(drain(&mut s).is_empty());
        s.handle_message(PipeId(1), response(new, b"n1"), base);
        assert_eq!(body(one_completion(&mut s, 3)), b"n1");
        // No receive pending: a new survey cancels nothing visible.
        let _ = survey(&mut s, 4, CtxId::SOCKET, "newer", base);
    }

    #[test]
    fn bad_state_versus_timed_out() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        // Never surveyed: ESTATE.
        assert_eq!(
            s.start_op(OpId(1), CtxId::SOCKET, Op::Recv, None, base),
            Err(OpError::Caller(CallerError::BadState))
        );
        let c = s.open_ctx().unwrap();
        assert_eq!(
            s.start_op(OpId(2), c, Op::Recv, Some(base), base),
            Err(OpError::Caller(CallerError::BadState))
        );
        assert_eq!(
            s.start_op(OpId(3), CtxId(999), Op::Recv, None, base),
            Err(OpError::Caller(CallerError::NoSuchContext))
        );
        assert_eq!(
            s.start_op(
                OpId(3),
                CtxId(999),
                Op::Send(Message::default()),
                None,
                base
            ),
            Err(OpError::Caller(CallerError::NoSuchContext))
        );
        // A second receive on the same context while one is pending.
        let _ = survey(&mut s, 4, c, "q", base);
        recv(&mut s, 5, c, None, base);
        assert_eq!(
            s.start_op(OpId(6), c, Op::Recv, None, base),
            Err(OpError::Caller(CallerError::BadState))
        );
        // The same op id while it is pending.
        let _ = survey(&mut s, 7, CtxId::SOCKET, "q", base);
        assert_eq!(
            s.start_op(OpId(5), CtxId::SOCKET, Op::Recv, None, base),
            Err(OpError::Caller(CallerError::BadState))
        );
        assert!(drain(&mut s).is_empty());
        // Expired: ETIMEDOUT, on every later receive, until a new survey.
        let end = base + Duration::from_secs(1);
        s.handle_timeout(end);
        assert_eq!(one_completion(&mut s, 5), Err(OpError::TimedOut));
        for op in 8..10 {
            assert_eq!(
                s.start_op(OpId(op), c, Op::Recv, None, end),
                Err(OpError::TimedOut)
            );
            assert_eq!(
                s.start_op(OpId(op + 10), CtxId::SOCKET, Op::Recv, None, end),
                Err(OpError::TimedOut)
            );
        }
        let _ = survey(&mut s, 30, c, "again", end);
        recv(&mut s, 31, c, None, end);
        assert!(drain(&mut s).is_empty(), "pending again");
    }

    #[test]
    fn contexts_run_overlapping_surveys() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 8, base).unwrap();
        s.add_pipe(PipeId(2), RESP, 8, base).unwrap();
        let a = s.open_ctx().unwrap();
        let b = s.open_ctx().unwrap();
        assert_ne!(a, b);
        let ida = sent(survey(&mut s, 1, a, "A", base))[0].1;
        let t1 = base + Duration::from_millis(400);
        let idb = sent(survey(&mut s, 2, b, "B", t1))[0].1;
        assert_ne!(ida, idb);
        recv(&mut s, 3, a, None, t1);
        recv(&mut s, 4, b, None, t1);
        // Interleaved responses go to their own survey.
        s.handle_message(PipeId(2), response(idb, b"b from 2"), t1);
        assert_eq!(body(one_completion(&mut s, 4)), b"b from 2");
        s.handle_message(PipeId(1), response(ida, b"a from 1"), t1);
        assert_eq!(body(one_completion(&mut s, 3)), b"a from 1");
        s.handle_message(PipeId(1), response(idb, b"b from 1"), t1);
        s.handle_message(PipeId(2), response(ida, b"a from 2"), t1);
        recv(&mut s, 5, b, None, t1);
        assert_eq!(body(one_completion(&mut s, 5)), b"b from 1");
        recv(&mut s, 6, a, None, t1);
        assert_eq!(body(one_completion(&mut s, 6)), b"a from 2");
        // A new survey on the socket context disturbs neither.
        let _ = survey(&mut s, 7, CtxId::SOCKET, "S", t1);
        assert_eq!(s.active_surveys(), 3);
        // Each survey ends at its own deadline.
        recv(&mut s, 8, a, None, t1);
        recv(&mut s, 9, b, None, t1);
        s.handle_timeout(base + Duration::from_secs(1));
        assert_eq!(one_completion(&mut s, 8), Err(OpError::TimedOut));
        s.handle_message(
            PipeId(1),
            response(idb, b"b still open"),
            base + Duration::from_secs(1),
        );
        assert_eq!(body(one_completion(&mut s, 9)), b"b still open");
        recv(&mut s, 10, b, None, base + Duration::from_secs(1));
        s.handle_timeout(t1 + Duration::from_secs(1));
        assert_eq!(one_completion(&mut s, 10), Err(OpError::TimedOut));
        assert_eq!(s.active_surveys(), 0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn queued_responses_are_bounded() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&Options {
            recv_buffer: 2,
            ..opts()
        });
        s.add_pipe(PipeId(1), RESP, 8, now).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", now))[0].1;
        for i in 0..5u8 {
            s.handle_message(PipeId(1), response(id, &[i]), now);
        }
        assert_eq!(s.overflow_drops(), 3);
        recv(&mut s, 2, CtxId::SOCKET, None, now);
        assert_eq!(body(one_completion(&mut s, 2)), [0]);
        recv(&mut s, 3, CtxId::SOCKET, None, now);
        assert_eq!(body(one_completion(&mut s, 3)), [1]);
        // Room again.
        s.handle_message(PipeId(1), response(id, b"x"), now);
        recv(&mut s, 4, CtxId::SOCKET, None, now);
        assert_eq!(body(one_completion(&mut s, 4)), b"x");
        assert_eq!(s.overflow_drops(), 3);
        assert_eq!(s.counters(), super::super::Counters::default());
    }

    #[test]
    fn short_response_closes_its_pipe() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, now).unwrap();
        s.add_pipe(PipeId(2), RESP, 4, now).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", now))[0].1;
        s.handle_message(PipeId(1), Message::from_body(&b"\x80\0\0"[..]), now);
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::ClosePipe {
                pipe: PipeId(1),
                error: PeerError::ShortHeader
            }]
        ));
        // Forgotten at once: no more messages from it, no more surveys to it.
        s.handle_message(PipeId(1), response(id, b"ignored"), now);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stale_drops(), 0, "ignored, not even counted");
        let tx = sent(survey(&mut s, 2, CtxId::SOCKET, "q", now));
        assert_eq!(tx.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2]);
        s.remove_pipe(PipeId(1), now);
        // Empty payloads too; unknown pipes and unknown ids are ignored.
        s.handle_message(PipeId(2), Message::default(), now);
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::ClosePipe {
                pipe: PipeId(2),
                error: PeerError::ShortHeader
            }]
        ));
        s.handle_message(PipeId(9), Message::default(), now);
        assert!(drain(&mut s).is_empty());
        s.add_pipe(PipeId(3), RESP, 4, now).unwrap();
        s.handle_message(PipeId(3), response(0x8000_0001 ^ id, b""), now);
        s.handle_message(PipeId(3), response(id & !END_BIT, b""), now);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stale_drops(), 2);
    }

    #[test]
    fn cancel_op_withdraws_without_completion() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, base).unwrap();
        let id = sent(survey(&mut s, 1, CtxId::SOCKET, "q", base))[0].1;
        recv(
            &mut s,
            2,
            CtxId::SOCKET,
            Some(base + Duration::from_millis(10)),
            base,
        );
        s.cancel_op(OpId(2), base);
        assert_eq!(
            s.poll_timeout(),
            Some(base + Duration::from_secs(1)),
            "the receive's timer is gone, the survey's stays"
        );
        s.handle_timeout(base + Duration::from_millis(10));
        s.handle_message(
            PipeId(1),
            response(id, b"kept"),
            base + Duration::from_millis(20),
        );
        assert!(drain(&mut s).is_empty());
        // The survey still runs; the response waits for the next receive.
        recv(
            &mut s,
            3,
            CtxId::SOCKET,
            None,
            base + Duration::from_millis(20),
        );
        assert_eq!(body(one_completion(&mut s, 3)), b"kept");
        // Cancelling again, a completed or an unknown op: nothing.
        s.cancel_op(OpId(2), base);
        s.cancel_op(OpId(3), base);
        s.cancel_op(OpId(99), base);
        assert!(drain(&mut s).is_empty());
        // A cancelled survey receive then the deadline: no completion.
        recv(
            &mut s,
            4,
            CtxId::SOCKET,
            None,
            base + Duration::from_millis(20),
        );
        s.cancel_op(OpId(4), base + Duration::from_millis(20));
        s.handle_timeout(base + Duration::from_secs(1));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn close_ctx_completes_closed_and_ends_the_survey() {
        let now = Instant::now();
        let mut s = Surveyor0::new(&opts());
        s.add_pipe(PipeId(1), RESP, 4, now).unwrap();
        let c = s.open_ctx().unwrap();
        let id = sent(survey(&mut s, 1, c, "q", now))[0].1;
        recv(&mut s, 2, c, Some(now + Duration::from_millis(500)), now);
        s.close_ctx(c, now);
        assert_eq!(one_completion(&mut s, 2), Err(OpError::Closed));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.active_surveys(), 0);
        s.handle_message(PipeId(1), response(id, b"late"), now);
        assert!(drain(&mut s).is_empty());
        assert_eq!(
            s.start_op(OpId(3), c, Op::Send(Message::default()), None, now),
            Err(OpError::Caller(CallerError::NoSuchContext))
        );
        s.close_ctx(c, now);
        s.close_ctx(CtxId(12345), now);
        assert!(drain(&mut s).is_empty());
        // The socket's context survives being closed, without a survey.
        let _ = survey(&mut s, 4, CtxId::SOCKET, "s", now);
        recv(&mut s, 5, CtxId::SOCKET, None, now);
        s.close_ctx(CtxId::SOCKET, now);
        assert_eq!(one_completion(&mut s, 5), Err(OpError::Closed));
        assert_eq!(
            s.start_op(OpId(6), CtxId::SOCKET, Op::Recv, None, now),
            Err(OpError::Caller(CallerError::BadState))
        );
        assert_eq!(s.contexts(), 1);
        // Context ids are not reused while open.
        let d = s.open_ctx().unwrap();
        assert!(d != c && d != CtxId::SOCKET);
    }

    #[test]
    fn thousand_contexts_each_get_their_responses() {
        let base = Instant::now();
        let mut s = Surveyor0::new(&opts());
        const N: u64 = 1000;
        s.add_pipe(PipeId(1), RESP, N as u32, base).unwrap();
        s.add_pipe(PipeId(2), RESP, N as u32, base).unwrap();
        let ctxs: Vec<CtxId> = (0..N).map(|_| s.open_ctx().unwrap()).collect();
        let mut surveys = Vec::new();
        for (i, c) in ctxs.iter().enumerate() {
            let i = i as u64;
            let t = base + Duration::from_millis(i % 100);
            s.start_op(
                OpId(10 * i),
                *c,
                Op::Send(Message::from_body(format!("s-{i}"))),
                None,
                t,
            )
            .unwrap();
            s.start_op(
                OpId(10 * i + 1),
                *c,
                Op::Recv,
                Some(t + Duration::from_secs(5)),
                t,
            )
            .unwrap();
        }
        for o in drain(&mut s) {
            match o {
                Output::Transmit { pipe, msg } => surveys.push((pipe, msg)),
                Output::Completed {
                    result: Ok(None), ..
                } => {}
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(surveys.len(), 2 * N as usize);
        assert_eq!(s.active_surveys(), N as usize);
        // Every respondent answers, in reverse order, echoing the body.
        let t = base + Duration::from_millis(200);
        for (pipe, q) in surveys.into_iter().rev() {
            let mut v = q.header.as_slice().to_vec();
            v.extend_from_slice(format!("{}:", pipe.0).as_bytes());
            v.extend_from_slice(&q.body);
            s.handle_message(pipe, Message::from_body(v), t);
        }
        let mut got = 0;
        for o in drain(&mut s) {
            match o {
                Output::Completed { op, result } => {
                    let i = (op.0 - 1) / 10;
                    assert_eq!(op.0 % 10, 1);
                    assert_eq!(
                        body(result),
                        format!("2:s-{i}").as_bytes(),
                        "pipe 2 answered last-first"
                    );
                    got += 1;
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(got, N);
        // The other response of each waits in its survey's queue.
        for (i, c) in ctxs.iter().enumerate() {
            let i = i as u64;
            s.start_op(OpId(10 * i + 2), *c, Op::Recv, None, t).unwrap();
            assert_eq!(
                body(one_completion(&mut s, 10 * i + 2)),
                format!("1:s-{i}").as_bytes()
            );
        }
        // Half of the contexts wait again; their surveys end in deadline
        // order.
        for (i, c) in ctxs.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            s.start_op(OpId(10 * i as u64 + 3), *c, Op::Recv, None, t)
                .unwrap();
        }
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(base + Duration::from_secs(1)));
        s.handle_timeout(base + Duration::from_millis(1049));
        let fired = drain(&mut s);
        assert_eq!(fired.len(), 250, "ctxs 0, 2, ..., 48 mod 100 timed out");
        assert!(fired.iter().all(|o| matches!(
            o,
            Output::Completed {
                result: Err(OpError::TimedOut),
                ..
            }
        )));
        s.handle_timeout(base + Duration::from_secs(2));
        assert_eq!(drain(&mut s).len(), 250);
        assert_eq!(s.active_surveys(), 0);
        assert_eq!(s.poll_timeout(), None, "every timer cleared");
        for c in &ctxs {
            s.close_ctx(*c, t);
        }
        assert_eq!(s.contexts(), 1);
        assert!(drain(&mut s).is_empty());
    }
}
