//! Property tests for SURVEYOR (`surveyor0`) and RESPONDENT (`respondent0`):
//! random operation sequences on each state machine, checked against a
//! model of the pattern, and the two connected back to back.
//!
//! The drivers live in [`survey_driver`] and depend on nothing but
//! `pinion-core` and `std`; the cargo-fuzz targets `fuzz/fuzz_targets/
//! surveyor0.rs` and `respondent0.rs` include this file with `#[path]` and
//! feed the same drivers. The proptest part is compiled only as a test
//! (`cfg(test)`), so the fuzz crate needs no proptest.
//!
//! * [`survey_driver::SurveyorHarness`] drives one `Surveyor0` as a runtime
//!   would (pipes with write queues, operations, time) and predicts every
//!   output from a model: which pipes a survey goes to, which operation
//!   completes with what, queued responses and their bound, deadlines,
//!   closes. Besides, a transmission only ever goes to a live pipe with
//!   credit, every operation completes at most once (never after a failed
//!   start or a cancel), no receive stays pending past its own or its
//!   survey's deadline, and `poll_timeout` is exactly the earliest of them.
//! * [`survey_driver::RespondentHarness`] does the same for `Respondent0`:
//!   backtrace parsing against an independent reading of the rule (TTL,
//!   missing end word), routing, per-pipe backlogs drained in order,
//!   counters.
//! * [`survey_driver::Link`] connects one `Surveyor0` to three
//!   `Respondent0`s through their state machines, with random
//!   interleavings: every response reaches the survey that asked, at most
//!   once per respondent, and never at or after the survey's deadline; in
//!   the end a survey to connected respondents gets every answer.

#![allow(dead_code)]

pub mod survey_driver {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::time::{Duration, Instant};

    use pinion_core::message::MAX_HEADER;
    use pinion_core::protocol::respondent0::{Respondent0, MAX_BACKLOG};
    use pinion_core::protocol::surveyor0::Surveyor0;
    use pinion_core::protocol::{
        Counters, CtxId, Op, OpId, Output, PipeId, Protocol, ProtocolKind,
    };
    use pinion_core::{CallerError, Header, Message, OpError, Options, PeerError};

    /// Number of distinct pipe ids the steps name.
    pub const PIPES: u8 = 6;

    /// Transmissions remembered for well-formed answers.
    const RECENT: usize = 32;

    const SURVEYOR: u16 = 0x62;
    const RESPONDENT: u16 = 0x63;

    fn pipe_id(p: u8) -> PipeId {
        PipeId(1 + u32::from(p % PIPES))
    }

    fn word(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
    }

    /// An output, in a comparable form.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Ev {
        Tx {
            pipe: u32,
            header: Vec<u8>,
            body: Vec<u8>,
        },
        Deliver {
            ctx: u32,
            header: Vec<u8>,
            body: Vec<u8>,
        },
        Done {
            op: u64,
            res: Res,
        },
        Pause {
            pipe: u32,
            paused: bool,
        },
        Close {
            pipe: u32,
            error: String,
        },
    }

    /// How an operation ended, in a comparable form.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Res {
        Sent,
        Msg { header: Vec<u8>, body: Vec<u8> },
        Err(String),
    }

    impl Res {
        fn err(e: OpError) -> Res {
            Res::Err(format!("{e:?}"))
        }

        fn msg(body: &[u8]) -> Res {
            Res::Msg {
                header: Vec::new(),
                body: body.to_vec(),
            }
        }
    }

    impl From<&Output> for Ev {
        fn from(o: &Output) -> Ev {
            match o {
                Output::Transmit { pipe, msg } => Ev::Tx {
                    pipe: pipe.0,
                    header: msg.header.as_slice().to_vec(),
                    body: msg.body.to_vec(),
                },
                Output::Deliver { ctx, msg } => Ev::Deliver {
                    ctx: ctx.0,
                    header: msg.header.as_slice().to_vec(),
                    body: msg.body.to_vec(),
                },
                Output::Completed { op, result } => Ev::Done {
                    op: op.0,
                    res: match result {
                        Ok(None) => Res::Sent,
                        Ok(Some(m)) => Res::Msg {
                            header: m.header.as_slice().to_vec(),
                            body: m.body.to_vec(),
                        },
                        Err(e) => Res::err(*e),
                    },
                },
                Output::ClosePipe { pipe, error } => Ev::Close {
                    pipe: pipe.0,
                    error: format!("{error:?}"),
                },
                Output::PausePipe { pipe, paused } => Ev::Pause {
                    pipe: pipe.0,
                    paused: *paused,
                },
            }
        }
    }

    fn sorted(mut v: Vec<Ev>) -> Vec<Ev> {
        v.sort();
        v
    }

    /// The driver's view of one pipe's write queue.
    #[derive(Debug, Default)]
    struct PipeModel {
        /// Credits the pattern may still spend.
        credits: u32,
        /// Messages in the write queue (spent credits).
        queued: u32,
    }

    // ------------------------------------------------------------------
    // SURVEYOR alone
    // ------------------------------------------------------------------

    /// One input to a [`SurveyorHarness`].
    #[derive(Debug, Clone)]
    pub enum SurveyorStep {
        /// `add_pipe` (skipped while that pipe is live); `peer` `None` is
        /// RESPONDENT.
        AddPipe {
            pipe: u8,
            peer: Option<u16>,
            credits: u8,
        },
        /// `remove_pipe`, live or not.
        RemovePipe {
            pipe: u8,
        },
        /// The pipe's write queue drains up to `n` messages.
        Credit {
            pipe: u8,
            n: u8,
        },
        /// Arbitrary bytes from a pipe, `split` of them in the header. A
        /// first word never names a survey (top bit cleared), so only short
        /// payloads matter: they close the pipe.
        Garbage {
            pipe: u8,
            split: u8,
            data: Vec<u8>,
        },
        /// A well-formed response to a recent transmission (`which`), from
        /// the pipe it went to or from `pipe`.
        Respond {
            which: u8,
            pipe: Option<u8>,
            split: u8,
            tail: Vec<u8>,
        },
        /// A survey on a context (255: an unknown one).
        Send {
            ctx: u8,
            deadline: Option<u16>,
        },
        /// A receive on a context with an optional timeout in ms.
        Recv {
            ctx: u8,
            deadline: Option<u16>,
        },
        /// `cancel_op` on a pending receive (or an unknown op).
        Cancel {
            which: u8,
        },
        OpenCtx,
        /// `close_ctx` (255: an unknown one).
        CloseCtx {
            which: u8,
        },
        /// `handle_send`, which surveyor does not support.
        HandleSend {
            data: Vec<u8>,
        },
        /// Time passes; `handle_timeout`.
        Advance {
            ms: u16,
        },
    }

    #[derive(Debug)]
    enum MSurvey {
        Never,
        Active {
            /// Learnt from its transmissions (none if no pipe had credit).
            id: Option<u32>,
            body: Vec<u8>,
            deadline: Instant,
            queue: VecDeque<Vec<u8>>,
        },
        Expired,
    }

    #[derive(Debug)]
    struct MCtx {
        survey: MSurvey,
        recv: Option<(OpId, Option<Instant>)>,
    }

    impl MCtx {
        fn new() -> Self {
            MCtx {
                survey: MSurvey::Never,
                recv: None,
            }
        }
    }

    /// Drives one `Surveyor0` against a model. Panics on any difference.
    #[derive(Debug)]
    pub struct SurveyorHarness {
        s: Surveyor0,
        survey_time: Duration,
        recv_buffer: usize,
        now: Instant,
        pipes: BTreeMap<PipeId, PipeModel>,
        ctxs: BTreeMap<CtxId, MCtx>,
        next_op: u64,
        /// Ops that are over (completed, failed to start, cancelled).
        finished: BTreeSet<OpId>,
        /// Recent transmissions `(pipe, id, body)`.
        recent: VecDeque<(PipeId, u32, Vec<u8>)>,
        next_tag: u64,
        pub transmits: u64,
        pub responses: u64,
        pub timeouts: u64,
        pub cancels: u64,
        pub closes: u64,
    }

    impl SurveyorHarness {
        pub fn new(survey_ms: u64, recv_buffer: usize, seed: u64) -> Self {
            let opts = Options {
                survey_time: Duration::from_millis(survey_ms),
                recv_buffer,
                seed,
                ..Options::default()
            };
            opts.validate().expect("valid options");
            let mut ctxs = BTreeMap::new();
            ctxs.insert(CtxId::SOCKET, MCtx::new());
            SurveyorHarness {
                s: Surveyor0::new(&opts),
                survey_time: opts.survey_time,
                recv_buffer,
                now: Instant::now(),
                pipes: BTreeMap::new(),
                ctxs,
                next_op: 0,
                finished: BTreeSet::new(),
                recent: VecDeque::new(),
                next_tag: 0,
                transmits: 0,
                responses: 0,
                timeouts: 0,
                cancels: 0,
                closes: 0,
            }
        }

        /// Runs every step, then [`SurveyorHarness::finish`].
        pub fn run(survey_ms: u64, recv_buffer: usize, seed: u64, steps: &[SurveyorStep]) -> Self {
            let mut h = SurveyorHarness::new(survey_ms, recv_buffer, seed);
            for s in steps {
                h.step(s);
            }
            h.finish();
            h
        }

        fn op_id(&mut self) -> OpId {
            self.next_op += 1;
            OpId(self.next_op)
        }

        fn ctx_at(&self, which: u8) -> CtxId {
            if which == 255 {
                CtxId(u32::MAX)
            } else {
                let i = usize::from(which) % self.ctxs.len();
                *self.ctxs.keys().nth(i).expect("in range")
            }
        }

        /// Drains every output, checks the contract's generic rules, and
        /// returns them as events.
        fn drain(&mut self) -> Vec<Ev> {
            let mut evs = Vec::new();
            while let Some(o) = self.s.poll_output() {
                evs.push(Ev::from(&o));
                match o {
                    Output::Transmit { pipe, msg } => {
                        self.transmits += 1;
                        let m = self
                            .pipes
                            .get_mut(&pipe)
                            .unwrap_or_else(|| panic!("transmit to unknown pipe {pipe:?}"));
                        assert!(m.credits > 0, "transmit to {pipe:?} without credit");
                        m.credits -= 1;
                        m.queued += 1;
                        assert_eq!(msg.header.len(), 4, "a survey's header is its id");
                        let id = msg.word_at(0).expect("id");
                        assert_ne!(id & 0x8000_0000, 0, "survey id without top bit");
                        if self.recent.len() == RECENT {
                            self.recent.pop_front();
                        }
                        self.recent.push_back((pipe, id, msg.body.to_vec()));
                    }
                    Output::Completed { op, result } => {
                        assert!(
                            self.finished.insert(op),
                            "{op:?} completed twice, or after a failed start or cancel"
                        );
                        match result {
                            Ok(Some(_)) => self.responses += 1,
                            Err(OpError::TimedOut) => self.timeouts += 1,
                            Err(OpError::Canceled) => self.cancels += 1,
                            _ => {}
                        }
                    }
                    Output::ClosePipe { pipe, .. } => {
                        self.closes += 1;
                        assert!(
                            self.pipes.remove(&pipe).is_some(),
                            "close of unknown pipe {pipe:?}"
                        );
                        // The driver closes it and reports it gone.
                        self.s.remove_pipe(pipe, self.now);
                    }
                    Output::Deliver { .. } => panic!("surveyor delivered: {o:?}"),
                    Output::PausePipe { .. } => panic!("surveyor paused a pipe: {o:?}"),
                }
            }
            evs
        }

        /// The earliest deadline the model knows of.
        fn next_deadline(&self) -> Option<Instant> {
            self.ctxs
                .values()
                .flat_map(|c| {
                    let s = match &c.survey {
                        MSurvey::Active { deadline, .. } => Some(*deadline),
                        _ => None,
                    };
                    [s, c.recv.and_then(|(_, d)| d)]
                })
                .flatten()
                .min()
        }

        /// Applies one step and checks its outputs against the model.
        pub fn step(&mut self, step: &SurveyorStep) {
            let now = self.now;
            match step {
                SurveyorStep::AddPipe {
                    pipe,
                    peer,
                    credits,
                } => {
                    let pipe = pipe_id(*pipe);
                    if self.pipes.contains_key(&pipe) {
                        return; // a driver never adds a live pipe twice
                    }
                    let peer = peer.unwrap_or(RESPONDENT);
                    let credits = u32::from(*credits % 8);
                    match self.s.add_pipe(pipe, peer, credits, now) {
                        Ok(()) => {
                            assert_eq!(peer, RESPONDENT, "accepted a wrong peer");
                            self.pipes.insert(pipe, PipeModel { credits, queued: 0 });
                        }
                        Err(e) => {
                            assert_eq!(e, PeerError::WrongProtocol(peer));
                            assert_ne!(peer, RESPONDENT);
                            self.s.remove_pipe(pipe, now);
                        }
                    }
                    assert_eq!(self.drain(), vec![]);
                }
                SurveyorStep::RemovePipe { pipe } => {
                    let pipe = pipe_id(*pipe);
                    self.pipes.remove(&pipe);
                    self.s.remove_pipe(pipe, now);
                    assert_eq!(self.drain(), vec![]);
                }
                SurveyorStep::Credit { pipe, n } => {
                    let pipe = pipe_id(*pipe);
                    let k = match self.pipes.get_mut(&pipe) {
                        Some(m) => {
                            let k = u32::from(*n).min(m.queued);
                            m.queued -= k;
                            m.credits += k;
                            k
                        }
                        None => u32::from(*n),
                    };
                    if k > 0 {
                        self.s.handle_credit(pipe, k, now);
                    }
                    assert_eq!(self.drain(), vec![], "surveys never wait for credit");
                }
                SurveyorStep::Garbage { pipe, split, data } => {
                    let pipe = pipe_id(*pipe);
                    let mut data = data.clone();
                    if data.len() >= 4 {
                        data[0] &= 0x7f;
                    }
                    let short = data.len() < 4;
                    let mut msg = Message::from_body(data);
                    let split = usize::from(*split).min(msg.wire_len()).min(MAX_HEADER);
                    assert!(msg.split_header_at(split));
                    let live = self.pipes.contains_key(&pipe);
                    self.s.handle_message(pipe, msg, now);
                    let want = if live && short {
                        vec![Ev::Close {
                            pipe: pipe.0,
                            error: format!("{:?}", PeerError::ShortHeader),
                        }]
                    } else {
                        vec![]
                    };
                    assert_eq!(self.drain(), want, "garbage");
                }
                SurveyorStep::Respond {
                    which,
                    pipe,
                    split,
                    tail,
                } => self.respond(*which, *pipe, *split, tail),
                SurveyorStep::Send { ctx, deadline } => self.send(*ctx, *deadline),
                SurveyorStep::Recv { ctx, deadline } => self.recv(*ctx, *deadline),
                SurveyorStep::Cancel { which } => {
                    let pending: Vec<(CtxId, OpId)> = self
                        .ctxs
                        .iter()
                        .filter_map(|(c, m)| m.recv.map(|(op, _)| (*c, op)))
                        .collect();
                    let (ctx, op) = if pending.is_empty() || *which == 255 {
                        (None, OpId(u64::MAX))
                    } else {
                        let (c, op) = pending[usize::from(*which) % pending.len()];
                        (Some(c), op)
                    };
                    self.s.cancel_op(op, now);
                    if let Some(c) = ctx {
                        self.ctxs.get_mut(&c).expect("open").recv = None;
                        self.finished.insert(op);
                    }
                    assert_eq!(self.drain(), vec![], "cancel completes nothing");
                }
                SurveyorStep::OpenCtx => {
                    let c = self.s.open_ctx().expect("surveyor has contexts");
                    assert!(!self.ctxs.contains_key(&c), "context id reused while open");
                    self.ctxs.insert(c, MCtx::new());
                    assert_eq!(self.drain(), vec![]);
                }
                SurveyorStep::CloseCtx { which } => {
                    let c = self.ctx_at(*which);
                    self.close_ctx(c);
                }
                SurveyorStep::HandleSend { data } => {
                    assert!(!self.s.can_send());
                    assert_eq!(
                        self.s
                            .handle_send(CtxId::SOCKET, Message::from_body(data.clone()), now),
                        Err(OpError::Caller(CallerError::NotSupported))
                    );
                    assert_eq!(self.drain(), vec![]);
                }
                SurveyorStep::Advance { ms } => self.advance(Duration::from_millis(u64::from(*ms))),
            }
            self.check_state();
        }

        fn respond(&mut self, which: u8, pipe: Option<u8>, split: u8, tail: &[u8]) {
            if self.recent.is_empty() {
                return;
            }
            let now = self.now;
            let (p, id, body) = self.recent[usize::from(which) % self.recent.len()].clone();
            let pipe = pipe.map(pipe_id).unwrap_or(p);
            let mut rsp = b"rsp:".to_vec();
            rsp.extend_from_slice(&body);
            rsp.extend_from_slice(tail);
            let mut v = id.to_be_bytes().to_vec();
            v.extend_from_slice(&rsp);
            let mut msg = Message::from_body(v);
            let split = usize::from(split).min(msg.wire_len()).min(MAX_HEADER);
            assert!(msg.split_header_at(split));
            // The model's answer.
            let mut want = vec![];
            if self.pipes.contains_key(&pipe) {
                let target = self
                    .ctxs
                    .values_mut()
                    .find(|c| matches!(&c.survey, MSurvey::Active { id: Some(i), .. } if *i == id));
                if let Some(c) = target {
                    let MSurvey::Active {
                        body: sbody,
                        deadline,
                        queue,
                        ..
                    } = &mut c.survey
                    else {
                        unreachable!()
                    };
                    assert_eq!(sbody, &body, "the model's survey and its transmission");
                    assert!(*deadline > now);
                    if let Some((op, _)) = c.recv.take() {
                        want.push(Ev::Done {
                            op: op.0,
                            res: Res::msg(&rsp),
                        });
                    } else if queue.len() < self.recv_buffer {
                        queue.push_back(rsp.clone());
                    }
                }
            }
            self.s.handle_message(pipe, msg, now);
            assert_eq!(self.drain(), want, "response to survey {id:08x}");
        }

        fn send(&mut self, ctx: u8, deadline: Option<u16>) {
            let now = self.now;
            let c = self.ctx_at(ctx);
            let op = self.op_id();
            self.next_tag += 1;
            let body = format!("svy:{}", self.next_tag).into_bytes();
            let deadline = deadline.map(|ms| now + Duration::from_millis(u64::from(ms)));
            let with_credit: Vec<u32> = self
                .pipes
                .iter()
                .filter(|(_, m)| m.credits > 0)
                .map(|(p, _)| p.0)
                .collect();
            let res = self.s.start_op(
                op,
                c,
                Op::Send(Message::from_body(body.clone())),
                deadline,
                now,
            );
            let Some(m) = self.ctxs.get_mut(&c) else {
                assert_eq!(res, Err(OpError::Caller(CallerError::NoSuchContext)));
                self.finished.insert(op);
                assert_eq!(self.drain(), vec![]);
                return;
            };
            assert_eq!(res, Ok(()), "a send always starts");
            let mut want = vec![Ev::Done {
                op: op.0,
                res: Res::Sent,
            }];
            if let Some((prev, _)) = m.recv.take() {
                want.push(Ev::Done {
                    op: prev.0,
                    res: Res::err(OpError::Canceled),
                });
            }
            let evs = self.drain();
            let (tx, rest): (Vec<Ev>, Vec<Ev>) =
                evs.into_iter().partition(|e| matches!(e, Ev::Tx { .. }));
            assert_eq!(sorted(rest), sorted(want), "send completions");
            let mut id = None;
            let mut pipes = Vec::new();
            for e in tx {
                let Ev::Tx {
                    pipe,
                    header,
                    body: b,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(b, body, "survey body");
                let w = word(&header);
                assert!(id.is_none_or(|i| i == w), "one id per survey");
                id = Some(w);
                pipes.push(pipe);
            }
            pipes.sort_unstable();
            assert_eq!(
                pipes, with_credit,
                "a survey goes to every pipe with credit"
            );
            if let Some(i) = id {
                let clash = self.ctxs.iter().any(|(k, m)| {
                    *k != c && matches!(&m.survey, MSurvey::Active { id: Some(j), .. } if *j == i)
                });
                assert!(!clash, "survey id {i:08x} in use by another context");
            }
            self.ctxs.get_mut(&c).expect("open").survey = MSurvey::Active {
                id,
                body,
                deadline: now + self.survey_time,
                queue: VecDeque::new(),
            };
        }

        fn recv(&mut self, ctx: u8, deadline: Option<u16>) {
            let now = self.now;
            let c = self.ctx_at(ctx);
            let op = self.op_id();
            let deadline = deadline.map(|ms| now + Duration::from_millis(u64::from(ms)));
            let res = self.s.start_op(op, c, Op::Recv, deadline, now);
            let Some(m) = self.ctxs.get_mut(&c) else {
                assert_eq!(res, Err(OpError::Caller(CallerError::NoSuchContext)));
                self.finished.insert(op);
                assert_eq!(self.drain(), vec![]);
                return;
            };
            let mut want = vec![];
            let expect: Result<(), OpError> = if m.recv.is_some() {
                Err(CallerError::BadState.into())
            } else {
                match &mut m.survey {
                    MSurvey::Never => Err(CallerError::BadState.into()),
                    MSurvey::Expired => Err(OpError::TimedOut),
                    MSurvey::Active {
                        deadline: sd,
                        queue,
                        ..
                    } => {
                        assert!(*sd > now, "the model expires surveys on time");
                        if let Some(b) = queue.pop_front() {
                            want.push(Ev::Done {
                                op: op.0,
                                res: Res::msg(&b),
                            });
                        } else if deadline.is_some_and(|d| d <= now) {
                            want.push(Ev::Done {
                                op: op.0,
                                res: Res::err(OpError::TimedOut),
                            });
                        } else {
                            m.recv = Some((op, deadline));
                        }
                        Ok(())
                    }
                }
            };
            assert_eq!(res, expect, "receive start on {c:?}");
            if res.is_err() {
                self.finished.insert(op);
            }
            assert_eq!(self.drain(), want, "receive on {c:?}");
        }

        fn close_ctx(&mut self, c: CtxId) {
            self.s.close_ctx(c, self.now);
            let mut want = vec![];
            if let Some(m) = self.ctxs.get_mut(&c) {
                if let Some((op, _)) = m.recv.take() {
                    want.push(Ev::Done {
                        op: op.0,
                        res: Res::err(OpError::Closed),
                    });
                }
                if c == CtxId::SOCKET {
                    m.survey = MSurvey::Never;
                } else {
                    self.ctxs.remove(&c);
                }
            }
            assert_eq!(self.drain(), want, "close {c:?}");
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            let now = self.now;
            let mut want = vec![];
            for m in self.ctxs.values_mut() {
                let ended =
                    matches!(&m.survey, MSurvey::Active { deadline, .. } if *deadline <= now);
                if ended {
                    m.survey = MSurvey::Expired;
                }
                if let Some((op, d)) = m.recv {
                    if ended || d.is_some_and(|d| d <= now) {
                        m.recv = None;
                        want.push(Ev::Done {
                            op: op.0,
                            res: Res::err(OpError::TimedOut),
                        });
                    }
                }
            }
            self.s.handle_timeout(now);
            assert_eq!(sorted(self.drain()), sorted(want), "timeouts at {by:?}");
        }

        fn check_state(&self) {
            assert!(!self.s.can_send());
            // No receive outlives its deadline or its survey's.
            for m in self.ctxs.values() {
                if let Some((op, d)) = m.recv {
                    assert!(d.is_none_or(|d| d > self.now), "{op:?} past its deadline");
                    assert!(
                        matches!(&m.survey, MSurvey::Active { deadline, .. } if *deadline > self.now),
                        "{op:?} pending without a running survey"
                    );
                }
            }
            assert_eq!(self.s.poll_timeout(), self.next_deadline(), "poll_timeout");
            if let Some(t) = self.s.poll_timeout() {
                assert!(t > self.now, "a timer left due");
            }
            let active = self
                .ctxs
                .values()
                .filter(|c| matches!(c.survey, MSurvey::Active { .. }))
                .count();
            assert_eq!(self.s.active_surveys(), active);
            assert_eq!(self.s.contexts(), self.ctxs.len());
            assert_eq!(self.s.counters(), Counters::default());
        }

        /// Time runs out for every deadline, then every context closes: no
        /// operation may be left pending.
        pub fn finish(&mut self) {
            // Receive deadlines are at most 65.535 s away.
            self.advance(self.survey_time + Duration::from_secs(66));
            self.check_state();
            assert!(self.ctxs.values().all(|c| c.recv.is_none()));
            assert_eq!(self.s.active_surveys(), 0);
            let all: Vec<CtxId> = self.ctxs.keys().copied().collect();
            for c in all {
                self.close_ctx(c);
            }
            self.check_state();
            assert_eq!(self.s.poll_timeout(), None);
        }
    }

    // ------------------------------------------------------------------
    // RESPONDENT alone
    // ------------------------------------------------------------------

    /// One input to a [`RespondentHarness`].
    #[derive(Debug, Clone)]
    pub enum RespondentStep {
        AddPipe {
            pipe: u8,
            peer: Option<u16>,
            credits: u8,
        },
        RemovePipe {
            pipe: u8,
        },
        Credit {
            pipe: u8,
            n: u8,
        },
        /// Arbitrary bytes, `split` of them in the header.
        Garbage {
            pipe: u8,
            split: u8,
            data: Vec<u8>,
        },
        /// A survey with `1 + hops % (max_ttl + 3)` backtrace words.
        Survey {
            pipe: u8,
            hops: u8,
            split: u8,
            tail: Vec<u8>,
        },
        /// `handle_send`: with a delivered header (`route & 0x80 == 0`), or
        /// the first `(route & 0x7f) % 12` bytes of `data` as the header.
        Reply {
            route: u8,
            data: Vec<u8>,
        },
        /// Calls the pattern does not support.
        Misuse {
            which: u8,
        },
        Advance {
            ms: u16,
        },
    }

    #[derive(Debug, Default)]
    struct RPipe {
        credits: u32,
        queued: u32,
        /// `(header, body)` of responses waiting for credit.
        backlog: VecDeque<(Vec<u8>, Vec<u8>)>,
    }

    /// Drives one `Respondent0` against a model.
    #[derive(Debug)]
    pub struct RespondentHarness {
        r: Respondent0,
        max_ttl: usize,
        now: Instant,
        pipes: BTreeMap<PipeId, RPipe>,
        ttl_drops: u64,
        unroutable: u64,
        /// Recently delivered headers.
        headers: VecDeque<Header>,
        pub deliveries: u64,
        pub transmits: u64,
        pub closes: u64,
    }

    impl RespondentHarness {
        pub fn new(max_ttl: u8, seed: u64) -> Self {
            let opts = Options {
                max_ttl,
                seed,
                ..Options::default()
            };
            opts.validate().expect("valid options");
            RespondentHarness {
                r: Respondent0::new(&opts),
                max_ttl: usize::from(max_ttl),
                now: Instant::now(),
                pipes: BTreeMap::new(),
                ttl_drops: 0,
                unroutable: 0,
                headers: VecDeque::new(),
                deliveries: 0,
                transmits: 0,
                closes: 0,
            }
        }

        pub fn run(max_ttl: u8, seed: u64, steps: &[RespondentStep]) -> Self {
            let mut h = RespondentHarness::new(max_ttl, seed);
            for s in steps {
                h.step(s);
            }
            h.finish();
            h
        }

        fn drain(&mut self) -> Vec<Ev> {
            let mut evs = Vec::new();
            while let Some(o) = self.r.poll_output() {
                evs.push(Ev::from(&o));
                match o {
                    Output::Transmit { pipe, .. } => {
                        self.transmits += 1;
                        let m = self
                            .pipes
                            .get_mut(&pipe)
                            .unwrap_or_else(|| panic!("transmit to unknown pipe {pipe:?}"));
                        assert!(m.credits > 0, "transmit to {pipe:?} without credit");
                        m.credits -= 1;
                        m.queued += 1;
                    }
                    Output::Deliver { msg, .. } => {
                        self.deliveries += 1;
                        if self.headers.len() == RECENT {
                            self.headers.pop_front();
                        }
                        self.headers.push_back(msg.header);
                    }
                    Output::ClosePipe { pipe, .. } => {
                        self.closes += 1;
                        let m = self
                            .pipes
                            .remove(&pipe)
                            .unwrap_or_else(|| panic!("close of unknown pipe {pipe:?}"));
                        self.unroutable += m.backlog.len() as u64;
                        self.r.remove_pipe(pipe, self.now);
                    }
                    Output::Completed { .. } => panic!("respondent completed an op: {o:?}"),
                    // Flow control: the model's pipes keep no read state.
                    Output::PausePipe { .. } => {}
                }
            }
            evs
        }

        /// What a message from `pipe` must produce: an independent reading
        /// of the backtrace rule (TTL checked before every word).
        fn expect_message(&mut self, pipe: PipeId, payload: &[u8]) -> Vec<Ev> {
            if !self.pipes.contains_key(&pipe) {
                return vec![];
            }
            for hop in 0..self.max_ttl {
                let at = hop * 4;
                if payload.len() < at + 4 {
                    return vec![Ev::Close {
                        pipe: pipe.0,
                        error: format!("{:?}", PeerError::NoBacktraceEnd),
                    }];
                }
                if word(&payload[at..]) & 0x8000_0000 != 0 {
                    let mut header = pipe.0.to_be_bytes().to_vec();
                    header.extend_from_slice(&payload[..at + 4]);
                    return vec![Ev::Deliver {
                        ctx: CtxId::SOCKET.0,
                        header,
                        body: payload[at + 4..].to_vec(),
                    }];
                }
            }
            self.ttl_drops += 1;
            vec![]
        }

        fn message(&mut self, pipe: PipeId, split: u8, payload: Vec<u8>) {
            let want = self.expect_message(pipe, &payload);
            let mut msg = Message::from_body(payload);
            let split = usize::from(split).min(msg.wire_len()).min(MAX_HEADER);
            assert!(msg.split_header_at(split));
            self.r.handle_message(pipe, msg, self.now);
            assert_eq!(self.drain(), want, "message on {pipe:?}");
        }

        pub fn step(&mut self, step: &RespondentStep) {
            let now = self.now;
            match step {
                RespondentStep::AddPipe {
                    pipe,
                    peer,
                    credits,
                } => {
                    let pipe = pipe_id(*pipe);
                    if self.pipes.contains_key(&pipe) {
                        return;
                    }
                    let peer = peer.unwrap_or(SURVEYOR);
                    let credits = u32::from(*credits % 8);
                    match self.r.add_pipe(pipe, peer, credits, now) {
                        Ok(()) => {
                            assert_eq!(peer, SURVEYOR, "accepted a wrong peer");
                            self.pipes.insert(
                                pipe,
                                RPipe {
                                    credits,
                                    ..RPipe::default()
                                },
                            );
                        }
                        Err(e) => {
                            assert_eq!(e, PeerError::WrongProtocol(peer));
                            self.r.remove_pipe(pipe, now);
                        }
                    }
                    assert_eq!(self.drain(), vec![]);
                }
                RespondentStep::RemovePipe { pipe } => {
                    let pipe = pipe_id(*pipe);
                    if let Some(m) = self.pipes.remove(&pipe) {
                        self.unroutable += m.backlog.len() as u64;
                    }
                    self.r.remove_pipe(pipe, now);
                    assert_eq!(self.drain(), vec![]);
                }
                RespondentStep::Credit { pipe, n } => {
                    let pipe = pipe_id(*pipe);
                    let (k, want) = match self.pipes.get_mut(&pipe) {
                        Some(m) => {
                            let k = u32::from(*n).min(m.queued);
                            m.queued -= k;
                            let avail = m.credits + k;
                            let go = (avail as usize).min(m.backlog.len());
                            let want: Vec<Ev> = m
                                .backlog
                                .drain(..go)
                                .map(|(header, body)| Ev::Tx {
                                    pipe: pipe.0,
                                    header,
                                    body,
                                })
                                .collect();
                            m.credits += k;
                            (k, want)
                        }
                        None => (u32::from(*n), vec![]),
                    };
                    if k > 0 {
                        self.r.handle_credit(pipe, k, now);
                    }
                    assert_eq!(self.drain(), want, "backlog drains in order");
                }
                RespondentStep::Garbage { pipe, split, data } => {
                    self.message(pipe_id(*pipe), *split, data.clone());
                }
                RespondentStep::Survey {
                    pipe,
                    hops,
                    split,
                    tail,
                } => {
                    let words = 1 + usize::from(*hops) % (self.max_ttl + 3);
                    let mut v = Vec::new();
                    for i in 1..words {
                        v.extend_from_slice(&(i as u32 * 0x0101).to_be_bytes());
                    }
                    v.extend_from_slice(&(0x8000_0000 | u32::from(*hops) << 8).to_be_bytes());
                    v.extend_from_slice(tail);
                    let pipe = pipe_id(*pipe);
                    let live = self.pipes.contains_key(&pipe);
                    let before = self.deliveries;
                    self.message(pipe, *split, v);
                    assert_eq!(
                        self.deliveries - before,
                        u64::from(live && words <= self.max_ttl),
                        "survey of {words} words"
                    );
                }
                RespondentStep::Reply { route, data } => {
                    assert!(self.r.can_send(), "respondent always takes responses");
                    let header = if route & 0x80 == 0 && !self.headers.is_empty() {
                        self.headers[usize::from(*route) % self.headers.len()]
                    } else {
                        Header::from_slice(&data[..data.len().min(usize::from(route & 0x7f) % 12)])
                            .expect("short")
                    };
                    let hb = header.as_slice().to_vec();
                    let res = self.r.handle_send(
                        CtxId::SOCKET,
                        Message {
                            header,
                            body: data.clone().into(),
                        },
                        now,
                    );
                    let mut want = vec![];
                    if hb.len() < 4 {
                        assert_eq!(res, Err(OpError::Caller(CallerError::BadState)));
                    } else {
                        assert_eq!(res, Ok(()));
                        let pipe = PipeId(word(&hb));
                        let rest = hb[4..].to_vec();
                        match self.pipes.get_mut(&pipe) {
                            Some(m) if m.credits > 0 && m.backlog.is_empty() => {
                                want.push(Ev::Tx {
                                    pipe: pipe.0,
                                    header: rest,
                                    body: data.clone(),
                                });
                            }
                            Some(m) if m.backlog.len() < MAX_BACKLOG => {
                                m.backlog.push_back((rest, data.clone()));
                            }
                            _ => self.unroutable += 1,
                        }
                    }
                    assert_eq!(self.drain(), want, "routing by {hb:02x?}");
                }
                RespondentStep::Misuse { which } => {
                    match which % 4 {
                        0 => assert_eq!(
                            self.r.start_op(OpId(1), CtxId::SOCKET, Op::Recv, None, now),
                            Err(OpError::Caller(CallerError::NotSupported))
                        ),
                        1 => assert_eq!(self.r.open_ctx(), Err(CallerError::NoContexts)),
                        2 => self.r.cancel_op(OpId(1), now),
                        _ => self.r.close_ctx(CtxId::SOCKET, now),
                    }
                    assert_eq!(self.drain(), vec![]);
                }
                RespondentStep::Advance { ms } => {
                    self.now += Duration::from_millis(u64::from(*ms));
                    self.r.handle_timeout(self.now);
                    assert_eq!(self.drain(), vec![]);
                }
            }
            self.check_state();
        }

        fn check_state(&self) {
            assert!(self.r.can_send());
            assert_eq!(self.r.poll_timeout(), None);
            assert_eq!(self.r.kind(), ProtocolKind::Respondent0);
            assert_eq!(
                self.r.counters(),
                Counters {
                    ttl_drops: self.ttl_drops,
                    unroutable_drops: self.unroutable,
                    queue_drops: 0,
                }
            );
        }

        /// Every pipe drains its write queue; every backlog empties; then
        /// every pipe goes.
        pub fn finish(&mut self) {
            let pipes: Vec<u8> = self.pipes.keys().map(|p| (p.0 - 1) as u8).collect();
            for p in &pipes {
                let pipe = pipe_id(*p);
                // A pipe whose write queue holds nothing never gets credit.
                while self.pipes[&pipe].queued > 0 {
                    self.step(&RespondentStep::Credit { pipe: *p, n: 255 });
                }
                let m = &self.pipes[&pipe];
                assert!(
                    m.backlog.is_empty() || m.credits == 0,
                    "backlog left with credit"
                );
            }
            for p in pipes {
                self.step(&RespondentStep::RemovePipe { pipe: p });
            }
            self.check_state();
        }
    }

    // ------------------------------------------------------------------
    // SURVEYOR and RESPONDENTs back to back
    // ------------------------------------------------------------------

    /// Respondents in a [`Link`].
    pub const RESPONDENTS: usize = 3;

    /// One input to a [`Link`].
    #[derive(Debug, Clone)]
    pub enum LinkStep {
        /// Connects respondent `resp % 3` (if it is not connected) with
        /// write queues of `1 + n % 4` messages each way.
        Connect {
            resp: u8,
            s_credits: u8,
            r_credits: u8,
        },
        /// A connection goes away (both ends), dropping what it carried.
        Disconnect {
            which: u8,
        },
        /// SURVEYOR: a new survey on a context.
        Send {
            ctx: u8,
        },
        /// SURVEYOR: a receive on a context.
        Recv {
            ctx: u8,
            deadline: Option<u16>,
        },
        Cancel {
            which: u8,
        },
        OpenCtx,
        CloseCtx {
            which: u8,
        },
        /// One message crosses from the surveyor to a respondent.
        ToResp {
            which: u8,
        },
        /// One message crosses from a respondent to the surveyor.
        ToSurv {
            which: u8,
        },
        /// A respondent's application answers a survey it received.
        Answer {
            which: u8,
        },
        /// A respondent's application ignores a survey.
        Forget {
            which: u8,
        },
        Advance {
            ms: u16,
        },
    }

    #[derive(Debug)]
    struct Conn {
        resp: usize,
        s_cap: usize,
        r_cap: usize,
        to_resp: VecDeque<Message>,
        to_surv: VecDeque<Message>,
    }

    #[derive(Debug)]
    struct LSurvey {
        body: Vec<u8>,
        deadline: Instant,
        answered_by: BTreeSet<usize>,
    }

    #[derive(Debug, Default)]
    struct LCtx {
        /// The latest survey (kept after its deadline, to check timeouts).
        survey: Option<LSurvey>,
        recv: Option<(OpId, Option<Instant>)>,
    }

    /// What the op being started is.
    #[derive(Debug, Clone, Copy)]
    enum Starting {
        Send(OpId),
        Recv(OpId, CtxId, Option<Instant>),
    }

    /// One `Surveyor0` and three `Respondent0`s back to back.
    #[derive(Debug)]
    pub struct Link {
        s: Surveyor0,
        rs: Vec<Respondent0>,
        survey_time: Duration,
        now: Instant,
        /// Connections by pipe id (the same id at both ends).
        conns: BTreeMap<u32, Conn>,
        next_conn: u32,
        ctxs: BTreeMap<CtxId, LCtx>,
        /// Per respondent: received surveys `(header, body)` not yet answered.
        apps: Vec<Vec<(Header, Vec<u8>)>>,
        next_op: u64,
        next_tag: u64,
        finished: BTreeSet<OpId>,
        starting: Option<Starting>,
        /// The context a send or close in this step may cancel or close.
        canceling: Option<CtxId>,
        closing: Option<CtxId>,
        pub responses: u64,
        pub answers: u64,
        pub timeouts: u64,
    }

    impl Link {
        pub fn new(survey_ms: u64, seed: u64) -> Self {
            let opts = Options {
                survey_time: Duration::from_millis(survey_ms),
                seed,
                ..Options::default()
            };
            let mut ctxs = BTreeMap::new();
            ctxs.insert(CtxId::SOCKET, LCtx::default());
            Link {
                s: Surveyor0::new(&opts),
                rs: (0..RESPONDENTS).map(|_| Respondent0::new(&opts)).collect(),
                survey_time: opts.survey_time,
                now: Instant::now(),
                conns: BTreeMap::new(),
                next_conn: 0,
                ctxs,
                apps: vec![Vec::new(); RESPONDENTS],
                next_op: 0,
                next_tag: 0,
                finished: BTreeSet::new(),
                starting: None,
                canceling: None,
                closing: None,
                responses: 0,
                answers: 0,
                timeouts: 0,
            }
        }

        /// Runs every step, then [`Link::finish`].
        pub fn run(survey_ms: u64, seed: u64, steps: &[LinkStep]) -> Self {
            let mut l = Link::new(survey_ms, seed);
            for s in steps {
                l.step(s);
            }
            l.finish();
            l
        }

        fn op_id(&mut self) -> OpId {
            self.next_op += 1;
            OpId(self.next_op)
        }

        fn ctx_at(&self, which: u8) -> CtxId {
            let i = usize::from(which) % self.ctxs.len();
            *self.ctxs.keys().nth(i).expect("in range")
        }

        fn drain(&mut self) {
            loop {
                let mut any = false;
                while let Some(o) = self.s.poll_output() {
                    any = true;
                    self.surveyor_output(o);
                }
                for r in 0..RESPONDENTS {
                    while let Some(o) = self.rs[r].poll_output() {
                        any = true;
                        self.respondent_output(r, o);
                    }
                }
                if !any {
                    return;
                }
            }
        }

        fn surveyor_output(&mut self, o: Output) {
            let now = self.now;
            match o {
                Output::Transmit { pipe, msg } => {
                    let c = self
                        .conns
                        .get_mut(&pipe.0)
                        .unwrap_or_else(|| panic!("survey to unknown pipe {pipe:?}"));
                    assert!(
                        c.to_resp.len() < c.s_cap,
                        "survey to {pipe:?} without credit"
                    );
                    c.to_resp.push_back(msg);
                }
                Output::Completed { op, result } => {
                    assert!(self.finished.insert(op), "{op:?} completed twice");
                    let (ctx, deadline) = match self.starting {
                        Some(Starting::Send(o)) if o == op => {
                            assert!(matches!(result, Ok(None)), "send result {result:?}");
                            return;
                        }
                        Some(Starting::Recv(o, c, d)) if o == op => (c, d),
                        _ => {
                            let (c, m) = self
                                .ctxs
                                .iter_mut()
                                .find(|(_, m)| m.recv.is_some_and(|(o, _)| o == op))
                                .unwrap_or_else(|| panic!("completion of unknown {op:?}"));
                            let (_, d) = m.recv.take().expect("found");
                            (*c, d)
                        }
                    };
                    let m = self.ctxs.get_mut(&ctx).expect("open");
                    match result {
                        Ok(Some(msg)) => {
                            self.responses += 1;
                            assert!(msg.header.is_empty(), "response with a header");
                            let b = &msg.body[..];
                            assert!(b.starts_with(b"ans:") && b.len() >= 6, "{b:?}");
                            let r = usize::from(b[4] - b'0');
                            let asked = &b[6..];
                            let s = m.survey.as_mut().expect("a survey asked");
                            assert_eq!(asked, &s.body[..], "response reached another survey");
                            assert!(now < s.deadline, "response after the survey's deadline");
                            assert!(s.answered_by.insert(r), "respondent {r} answered twice");
                        }
                        Ok(None) => panic!("receive without a message"),
                        Err(OpError::TimedOut) => {
                            self.timeouts += 1;
                            let own = deadline.is_some_and(|d| d <= now);
                            let survey = m.survey.as_ref().is_some_and(|s| s.deadline <= now);
                            assert!(own || survey, "timed out early");
                        }
                        Err(OpError::Canceled) => {
                            assert_eq!(self.canceling, Some(ctx), "cancelled without a send")
                        }
                        Err(OpError::Closed) => {
                            assert_eq!(self.closing, Some(ctx), "closed without a close")
                        }
                        Err(e) => panic!("receive ended with {e:?}"),
                    }
                }
                o => panic!("surveyor: {o:?}"),
            }
        }

        fn respondent_output(&mut self, r: usize, o: Output) {
            match o {
                Output::Transmit { pipe, msg } => {
                    let c = self
                        .conns
                        .get_mut(&pipe.0)
                        .unwrap_or_else(|| panic!("response to unknown pipe {pipe:?}"));
                    assert_eq!(c.resp, r, "response on another respondent's pipe");
                    assert!(c.to_surv.len() < c.r_cap, "response without credit");
                    assert_eq!(msg.header.len(), 4, "the backtrace is the survey id");
                    assert_ne!(msg.word_at(0).expect("id") & 0x8000_0000, 0);
                    c.to_surv.push_back(msg);
                }
                Output::Deliver { ctx, msg } => {
                    assert_eq!(ctx, CtxId::SOCKET);
                    let h = msg.header;
                    assert_eq!(h.len(), 8, "pipe id + survey id: {h:?}");
                    let p = h.first_word().expect("pipe word");
                    assert!(
                        self.conns.get(&p).is_some_and(|c| c.resp == r),
                        "delivered from a pipe that is not this respondent's"
                    );
                    assert_ne!(h.last_word().expect("id") & 0x8000_0000, 0);
                    self.apps[r].push((h, msg.body.to_vec()));
                }
                o => panic!("respondent {r}: {o:?}"),
            }
        }

        fn conn_at(&self, which: u8, f: impl Fn(&Conn) -> bool) -> Option<u32> {
            let ids: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| f(c))
                .map(|(i, _)| *i)
                .collect();
            (!ids.is_empty()).then(|| ids[usize::from(which) % ids.len()])
        }

        pub fn step(&mut self, step: &LinkStep) {
            let now = self.now;
            self.starting = None;
            self.canceling = None;
            self.closing = None;
            match step {
                LinkStep::Connect {
                    resp,
                    s_credits,
                    r_credits,
                } => {
                    let r = usize::from(*resp) % RESPONDENTS;
                    if self.conns.values().any(|c| c.resp == r) {
                        return;
                    }
                    self.next_conn += 1;
                    let id = self.next_conn;
                    let s_cap = 1 + usize::from(*s_credits % 4);
                    let r_cap = 1 + usize::from(*r_credits % 4);
                    self.conns.insert(
                        id,
                        Conn {
                            resp: r,
                            s_cap,
                            r_cap,
                            to_resp: VecDeque::new(),
                            to_surv: VecDeque::new(),
                        },
                    );
                    self.s
                        .add_pipe(PipeId(id), RESPONDENT, s_cap as u32, now)
                        .expect("respondent peer");
                    self.rs[r]
                        .add_pipe(PipeId(id), SURVEYOR, r_cap as u32, now)
                        .expect("surveyor peer");
                }
                LinkStep::Disconnect { which } => {
                    if let Some(id) = self.conn_at(*which, |_| true) {
                        let c = self.conns.remove(&id).expect("found");
                        self.s.remove_pipe(PipeId(id), now);
                        self.rs[c.resp].remove_pipe(PipeId(id), now);
                    }
                }
                LinkStep::Send { ctx } => {
                    let c = self.ctx_at(*ctx);
                    let op = self.op_id();
                    self.next_tag += 1;
                    let body = format!("svy:{}", self.next_tag).into_bytes();
                    self.starting = Some(Starting::Send(op));
                    self.canceling = Some(c);
                    self.s
                        .start_op(op, c, Op::Send(Message::from_body(body.clone())), None, now)
                        .expect("a send starts");
                    self.drain();
                    let m = self.ctxs.get_mut(&c).expect("open");
                    assert!(m.recv.is_none(), "the new survey cancelled the receive");
                    m.survey = Some(LSurvey {
                        body,
                        deadline: now + self.survey_time,
                        answered_by: BTreeSet::new(),
                    });
                }
                LinkStep::Recv { ctx, deadline } => {
                    let c = self.ctx_at(*ctx);
                    let op = self.op_id();
                    let deadline = deadline.map(|ms| now + Duration::from_millis(u64::from(ms)));
                    let m = &self.ctxs[&c];
                    let expect = if m.recv.is_some() {
                        Err(OpError::Caller(CallerError::BadState))
                    } else {
                        match &m.survey {
                            None => Err(OpError::Caller(CallerError::BadState)),
                            Some(s) if s.deadline <= now => Err(OpError::TimedOut),
                            Some(_) => Ok(()),
                        }
                    };
                    self.starting = Some(Starting::Recv(op, c, deadline));
                    let res = self.s.start_op(op, c, Op::Recv, deadline, now);
                    assert_eq!(res, expect, "receive start on {c:?}");
                    if res.is_err() {
                        self.finished.insert(op);
                    }
                    self.drain();
                    if res.is_ok() && !self.finished.contains(&op) {
                        self.ctxs.get_mut(&c).expect("open").recv = Some((op, deadline));
                    }
                }
                LinkStep::Cancel { which } => {
                    let pending: Vec<(CtxId, OpId)> = self
                        .ctxs
                        .iter()
                        .filter_map(|(c, m)| m.recv.map(|(op, _)| (*c, op)))
                        .collect();
                    if !pending.is_empty() {
                        let (c, op) = pending[usize::from(*which) % pending.len()];
                        self.s.cancel_op(op, now);
                        self.ctxs.get_mut(&c).expect("open").recv = None;
                        self.finished.insert(op);
                    }
                }
                LinkStep::OpenCtx => {
                    let c = self.s.open_ctx().expect("contexts");
                    assert!(self.ctxs.insert(c, LCtx::default()).is_none());
                }
                LinkStep::CloseCtx { which } => {
                    let c = self.ctx_at(*which);
                    self.close_ctx(c);
                }
                LinkStep::ToResp { which } => {
                    if let Some(id) = self.conn_at(*which, |c| !c.to_resp.is_empty()) {
                        let c = self.conns.get_mut(&id).expect("found");
                        let msg = c.to_resp.pop_front().expect("non-empty");
                        let r = c.resp;
                        self.s.handle_credit(PipeId(id), 1, now);
                        self.rs[r].handle_message(PipeId(id), msg, now);
                    }
                }
                LinkStep::ToSurv { which } => {
                    if let Some(id) = self.conn_at(*which, |c| !c.to_surv.is_empty()) {
                        let c = self.conns.get_mut(&id).expect("found");
                        let msg = c.to_surv.pop_front().expect("non-empty");
                        let r = c.resp;
                        self.rs[r].handle_credit(PipeId(id), 1, now);
                        self.s.handle_message(PipeId(id), msg, now);
                    }
                }
                LinkStep::Answer { which } => self.answer(usize::from(*which)),
                LinkStep::Forget { which } => {
                    let all: Vec<(usize, usize)> = (0..RESPONDENTS)
                        .flat_map(|r| (0..self.apps[r].len()).map(move |i| (r, i)))
                        .collect();
                    if !all.is_empty() {
                        let (r, i) = all[usize::from(*which) % all.len()];
                        self.apps[r].remove(i);
                    }
                }
                LinkStep::Advance { ms } => {
                    self.now += Duration::from_millis(u64::from(*ms));
                    self.s.handle_timeout(self.now);
                    for r in &mut self.rs {
                        r.handle_timeout(self.now);
                    }
                }
            }
            self.drain();
            self.check();
        }

        fn answer(&mut self, which: usize) {
            let all: Vec<(usize, usize)> = (0..RESPONDENTS)
                .flat_map(|r| (0..self.apps[r].len()).map(move |i| (r, i)))
                .collect();
            if all.is_empty() {
                return;
            }
            let (r, i) = all[which % all.len()];
            let (header, body) = self.apps[r].remove(i);
            let mut ans = format!("ans:{r}:").into_bytes();
            ans.extend_from_slice(&body);
            self.answers += 1;
            self.rs[r]
                .handle_send(
                    CtxId::SOCKET,
                    Message {
                        header,
                        body: ans.into(),
                    },
                    self.now,
                )
                .expect("a routed response");
        }

        fn close_ctx(&mut self, c: CtxId) {
            self.closing = Some(c);
            self.s.close_ctx(c, self.now);
            self.drain();
            self.closing = None;
            let m = self.ctxs.get_mut(&c).expect("open");
            assert!(m.recv.is_none(), "closing {c:?} left its receive pending");
            if c == CtxId::SOCKET {
                m.survey = None;
            } else {
                self.ctxs.remove(&c);
            }
        }

        fn check(&self) {
            let now = self.now;
            for (c, m) in &self.ctxs {
                if let Some((op, d)) = m.recv {
                    assert!(
                        d.is_none_or(|d| d > now),
                        "{op:?} on {c:?} past its deadline"
                    );
                    let s = m.survey.as_ref().expect("pending without a survey");
                    assert!(
                        s.deadline > now,
                        "{op:?} on {c:?} past its survey's deadline"
                    );
                }
            }
            if let Some(t) = self.s.poll_timeout() {
                assert!(t > now, "a timer left due");
            }
            for (id, c) in &self.conns {
                assert!(
                    c.to_resp.len() <= c.s_cap && c.to_surv.len() <= c.r_cap,
                    "{id}"
                );
            }
        }

        /// Every deadline passes; then, on fresh connections, a survey gets
        /// exactly one response from every respondent.
        pub fn finish(&mut self) {
            self.step(&LinkStep::Advance {
                ms: u16::try_from(self.survey_time.as_millis()).unwrap_or(u16::MAX),
            });
            self.step(&LinkStep::Advance { ms: u16::MAX });
            assert!(self.ctxs.values().all(|m| m.recv.is_none()));
            assert_eq!(self.s.active_surveys(), 0);
            assert_eq!(self.s.poll_timeout(), None);
            for c in self.ctxs.keys().copied().collect::<Vec<_>>() {
                self.close_ctx(c);
            }
            while !self.conns.is_empty() {
                self.step(&LinkStep::Disconnect { which: 0 });
            }
            for a in &mut self.apps {
                a.clear();
            }
            for r in 0..RESPONDENTS {
                self.step(&LinkStep::Connect {
                    resp: r as u8,
                    s_credits: 0,
                    r_credits: 0,
                });
            }
            self.step(&LinkStep::OpenCtx);
            let c = *self.ctxs.keys().last().expect("opened");
            let w = self.ctxs.keys().position(|k| *k == c).expect("open") as u8;
            self.step(&LinkStep::Send { ctx: w });
            self.step(&LinkStep::Recv {
                ctx: w,
                deadline: None,
            });
            let before = self.responses;
            loop {
                let moved = !self.conns.values().all(|c| c.to_resp.is_empty())
                    || !self.conns.values().all(|c| c.to_surv.is_empty())
                    || self.apps.iter().any(|a| !a.is_empty());
                if !moved {
                    break;
                }
                self.step(&LinkStep::ToResp { which: 0 });
                self.step(&LinkStep::Answer { which: 0 });
                self.step(&LinkStep::ToSurv { which: 0 });
            }
            for _ in 1..RESPONDENTS {
                self.step(&LinkStep::Recv {
                    ctx: w,
                    deadline: Some(0),
                });
            }
            assert_eq!(
                self.responses - before,
                RESPONDENTS as u64,
                "every respondent answered the last survey"
            );
            let s = self.ctxs[&c].survey.as_ref().expect("sent");
            assert_eq!(s.answered_by.len(), RESPONDENTS);
            // Nothing more: the next receive waits until the deadline.
            self.step(&LinkStep::Recv {
                ctx: w,
                deadline: None,
            });
            assert!(self.ctxs[&c].recv.is_some());
            let t = self.timeouts;
            self.step(&LinkStep::Advance {
                ms: u16::try_from(self.survey_time.as_millis()).unwrap_or(u16::MAX),
            });
            assert_eq!(self.timeouts, t + 1);
        }
    }
}

#[cfg(test)]
mod props {
    use super::survey_driver::*;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn deadline() -> impl Strategy<Value = Option<u16>> {
        prop_oneof![2 => Just(None), 3 => (0u16..3000).prop_map(Some)]
    }

    fn peer() -> impl Strategy<Value = Option<u16>> {
        prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)]
    }

    fn surveyor_step() -> impl Strategy<Value = SurveyorStep> {
        prop_oneof![
            4 => (any::<u8>(), peer(), 0u8..4)
                .prop_map(|(pipe, peer, credits)| SurveyorStep::AddPipe { pipe, peer, credits }),
            1 => any::<u8>().prop_map(|pipe| SurveyorStep::RemovePipe { pipe }),
            4 => (any::<u8>(), 0u8..4).prop_map(|(pipe, n)| SurveyorStep::Credit { pipe, n }),
            1 => (any::<u8>(), 0u8..12, bytes(12))
                .prop_map(|(pipe, split, data)| SurveyorStep::Garbage { pipe, split, data }),
            8 => (any::<u8>(), prop::option::weighted(0.2, any::<u8>()), 0u8..12, bytes(6))
                .prop_map(|(which, pipe, split, tail)| SurveyorStep::Respond { which, pipe, split, tail }),
            5 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| SurveyorStep::Send { ctx, deadline }),
            6 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| SurveyorStep::Recv { ctx, deadline }),
            1 => any::<u8>().prop_map(|which| SurveyorStep::Cancel { which }),
            2 => Just(SurveyorStep::OpenCtx),
            1 => any::<u8>().prop_map(|which| SurveyorStep::CloseCtx { which }),
            1 => bytes(4).prop_map(|data| SurveyorStep::HandleSend { data }),
            3 => (0u16..1500).prop_map(|ms| SurveyorStep::Advance { ms }),
        ]
    }

    fn respondent_step() -> impl Strategy<Value = RespondentStep> {
        prop_oneof![
            3 => (any::<u8>(), peer(), 0u8..4)
                .prop_map(|(pipe, peer, credits)| RespondentStep::AddPipe { pipe, peer, credits }),
            1 => any::<u8>().prop_map(|pipe| RespondentStep::RemovePipe { pipe }),
            4 => (any::<u8>(), 0u8..4).prop_map(|(pipe, n)| RespondentStep::Credit { pipe, n }),
            3 => (any::<u8>(), 0u8..20, bytes(40))
                .prop_map(|(pipe, split, data)| RespondentStep::Garbage { pipe, split, data }),
            6 => (any::<u8>(), any::<u8>(), 0u8..20, bytes(6))
                .prop_map(|(pipe, hops, split, tail)| RespondentStep::Survey { pipe, hops, split, tail }),
            6 => (any::<u8>(), bytes(12)).prop_map(|(route, data)| RespondentStep::Reply { route, data }),
            1 => any::<u8>().prop_map(|which| RespondentStep::Misuse { which }),
            1 => any::<u16>().prop_map(|ms| RespondentStep::Advance { ms }),
        ]
    }

    fn link_step() -> impl Strategy<Value = LinkStep> {
        prop_oneof![
            2 => (any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(resp, s_credits, r_credits)| LinkStep::Connect { resp, s_credits, r_credits }),
            1 => any::<u8>().prop_map(|which| LinkStep::Disconnect { which }),
            4 => any::<u8>().prop_map(|ctx| LinkStep::Send { ctx }),
            5 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| LinkStep::Recv { ctx, deadline }),
            1 => any::<u8>().prop_map(|which| LinkStep::Cancel { which }),
            2 => Just(LinkStep::OpenCtx),
            1 => any::<u8>().prop_map(|which| LinkStep::CloseCtx { which }),
            6 => any::<u8>().prop_map(|which| LinkStep::ToResp { which }),
            6 => any::<u8>().prop_map(|which| LinkStep::ToSurv { which }),
            5 => any::<u8>().prop_map(|which| LinkStep::Answer { which }),
            1 => any::<u8>().prop_map(|which| LinkStep::Forget { which }),
            2 => (0u16..800).prop_map(|ms| LinkStep::Advance { ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn surveyor0_sequences(
            steps in proptest::collection::vec(surveyor_step(), 0..200),
            survey_ms in 1u64..3000,
            recv_buffer in 1usize..5,
            seed in any::<u64>(),
        ) {
            SurveyorHarness::run(survey_ms, recv_buffer, seed, &steps);
        }

        #[test]
        fn respondent0_sequences(
            steps in proptest::collection::vec(respondent_step(), 0..200),
            max_ttl in 1u8..=15,
            seed in any::<u64>(),
        ) {
            RespondentHarness::run(max_ttl, seed, &steps);
        }

        #[test]
        fn surveyor_respondents_back_to_back(
            steps in proptest::collection::vec(link_step(), 0..250),
            survey_ms in 1u64..2000,
            seed in any::<u64>(),
        ) {
            Link::run(survey_ms, seed, &steps);
        }
    }

    /// The surveyor harness is not vacuous: a plain exchange produces every
    /// kind of output it checks.
    #[test]
    fn surveyor_harness_sees_traffic() {
        use SurveyorStep::*;
        let steps = [
            AddPipe {
                pipe: 0,
                peer: None,
                credits: 2,
            },
            AddPipe {
                pipe: 1,
                peer: None,
                credits: 1,
            },
            AddPipe {
                pipe: 2,
                peer: None,
                credits: 0,
            },
            AddPipe {
                pipe: 3,
                peer: Some(0x62),
                credits: 1,
            },
            Recv {
                ctx: 0,
                deadline: None,
            },
            Send {
                ctx: 0,
                deadline: None,
            },
            Recv {
                ctx: 0,
                deadline: None,
            },
            Respond {
                which: 0,
                pipe: None,
                split: 0,
                tail: vec![],
            },
            Respond {
                which: 1,
                pipe: None,
                split: 6,
                tail: b"x".to_vec(),
            },
            Respond {
                which: 1,
                pipe: None,
                split: 2,
                tail: b"y".to_vec(),
            },
            Recv {
                ctx: 0,
                deadline: Some(0),
            },
            Recv {
                ctx: 0,
                deadline: Some(0),
            },
            OpenCtx,
            Send {
                ctx: 1,
                deadline: None,
            },
            Recv {
                ctx: 1,
                deadline: Some(10),
            },
            Advance { ms: 20 },
            Recv {
                ctx: 1,
                deadline: None,
            },
            Send {
                ctx: 1,
                deadline: None,
            },
            Recv {
                ctx: 1,
                deadline: None,
            },
            Advance { ms: 1000 },
            Garbage {
                pipe: 0,
                split: 1,
                data: vec![1, 2],
            },
        ];
        let h = SurveyorHarness::run(1000, 1, 7, &steps);
        assert_eq!(h.transmits, 3, "two pipes had credit, then one");
        assert_eq!(
            h.responses, 2,
            "one completed the pending receive, one queued, one dropped"
        );
        assert_eq!(
            h.cancels, 1,
            "the second survey on ctx 1 cancelled its receive"
        );
        assert_eq!(h.timeouts, 3, "at once, own deadline, survey deadline");
        assert_eq!(h.closes, 1);
    }

    #[test]
    fn respondent_harness_sees_traffic() {
        use RespondentStep::*;
        let steps = [
            AddPipe {
                pipe: 0,
                peer: None,
                credits: 1,
            },
            Survey {
                pipe: 0,
                hops: 2,
                split: 5,
                tail: b"q".to_vec(),
            },
            Reply {
                route: 0,
                data: b"a1".to_vec(),
            },
            Reply {
                route: 0,
                data: b"a2".to_vec(),
            },
            Credit { pipe: 0, n: 1 },
            Survey {
                pipe: 0,
                hops: 9,
                split: 0,
                tail: vec![],
            },
            Garbage {
                pipe: 0,
                split: 0,
                data: vec![0, 0, 0, 1],
            },
        ];
        let h = RespondentHarness::run(8, 7, &steps);
        assert_eq!((h.deliveries, h.transmits, h.closes), (1, 2, 1));
    }

    #[test]
    fn back_to_back_many_contexts() {
        let mut steps = vec![];
        for r in 0..3 {
            steps.push(LinkStep::Connect {
                resp: r,
                s_credits: 3,
                r_credits: 3,
            });
        }
        for c in 0..30u8 {
            steps.push(LinkStep::OpenCtx);
            steps.push(LinkStep::Send { ctx: c + 1 });
            steps.push(LinkStep::Recv {
                ctx: c + 1,
                deadline: None,
            });
            for _ in 0..3 {
                steps.push(LinkStep::ToResp { which: c });
                steps.push(LinkStep::Answer { which: 0 });
                steps.push(LinkStep::ToSurv { which: c });
            }
        }
        let l = Link::run(1000, 3, &steps);
        assert!(l.responses >= 30, "responses: {}", l.responses);
        assert_eq!(l.answers, 90 + 3);
    }
}
