//! REP v0 (0x31): the raw REP core; replies are routed by the header.
//!
//! # Wire
//!
//! A request's payload starts with its backtrace: 32-bit big-endian words,
//! one per hop, the last (the request id) with the top bit set:
//!
//! ```text
//! | 0|hop id | 0|hop id | ... | 1|request id | body |
//! ```
//!
//! Without devices a REQ sends exactly `| 1|request id | body |`.
//!
//! # Receive
//!
//! As NNG's `rep.c`/`xrep.c`: words move from the front of the payload into
//! the header until one has the top bit set (that word included). Every word
//! is one hop; before reading a word beyond [`Options::max_ttl`] the message
//! is dropped and counted ([`Rep0::ttl_drops`]) and the pipe kept, because
//! long backtraces legitimately come through devices. A payload that runs out
//! first is garbage: the pipe is closed ([`PeerError::NoBacktraceEnd`]).
//!
//! A request is delivered to the socket's context with the header
//! `| pipe id | backtrace |`: the receiving pipe's id (top bit clear) in
//! front, as a raw NNG REP (`xrep`) does. The cooked REP in the facade keeps
//! that header per context and sends it back with the reply.
//!
//! # Send
//!
//! [`Protocol::handle_send`] takes a message whose header starts with a pipe
//! id word: the word is popped and the rest (header and body) goes to that
//! pipe. REP never blocks the socket on one peer (RFC sp-request-reply-01),
//! so [`Protocol::can_send`] is always true; but a reply is not dropped just
//! because its pipe's write queue is momentarily full (NNG queues the
//! context's send on the busy pipe too): it waits in that pipe's backlog,
//! which drains as credits return. Replies are dropped and counted
//! ([`Rep0::unroutable_drops`]) only when their pipe is gone, or when the
//! backlog already holds [`MAX_BACKLOG`] replies or [`MAX_BACKLOG_BYTES`]
//! bytes. Before that, once a pipe's backlog holds [`PAUSE_BACKLOG_BYTES`],
//! REP asks the driver to stop reading that pipe ([`Output::PausePipe`]),
//! and to resume once the backlog is empty: a peer that sends requests and
//! never reads the answers is pushed back on by TCP instead of having its
//! requests served and the answers dropped. A header shorter than one word
//! is the caller's mistake ([`CallerError::BadState`]).
//!
//! Contexts are not kept here: the cooked facade keeps each context's
//! backtrace and uses this core as its raw transport.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::{Message, MAX_HEADER};
use crate::options::{Options, MAX_TTL_LIMIT};

/// Replies one pipe may hold waiting for credit before more are dropped.
pub const MAX_BACKLOG: usize = 4096;
/// Bytes of replies (header, body and [`MSG_OVERHEAD`] each) one pipe may
/// hold waiting for credit before more are dropped.
pub const MAX_BACKLOG_BYTES: usize = 256 << 10;
/// Backlog bytes at which the pipe's reads are paused.
pub const PAUSE_BACKLOG_BYTES: usize = 64 << 10;
/// What a queued message costs besides its bytes (its struct, allocation).
pub const MSG_OVERHEAD: usize = 128;

/// One pipe: its credits and the replies waiting for them.
#[derive(Debug, Default)]
struct PipeState {
    credits: u32,
    backlog: VecDeque<Message>,
    /// Bytes in `backlog`, as [`cost`] counts them.
    backlog_bytes: usize,
    /// Its reads are paused (asked through [`Output::PausePipe`]).
    paused: bool,
}

/// What a reply held in a backlog counts for.
fn cost(m: &Message) -> usize {
    m.header.len() + m.body.len() + MSG_OVERHEAD
}

/// Which answering pattern a [`RawAnswerer`] is: REP or RESPONDENT. The two
/// share every rule (backtrace parsing, TTL, routing by the pipe id word,
/// the per-pipe backlog); only their ids differ.
pub trait AnswerKind: Send + std::fmt::Debug + 'static {
    /// The pattern.
    const KIND: ProtocolKind;
}

/// REP (see the module docs).
#[derive(Debug)]
pub struct Rep;

impl AnswerKind for Rep {
    const KIND: ProtocolKind = ProtocolKind::Rep0;
}

/// The REP state machine.
pub type Rep0 = RawAnswerer<Rep>;

/// A raw answering core (REP, RESPONDENT): pipes with their credits and
/// backlogs, the TTL and drop counters.
#[derive(Debug)]
pub struct RawAnswerer<K: AnswerKind> {
    pipes: HashMap<PipeId, PipeState>,
    max_ttl: usize,
    ttl_drops: u64,
    unroutable_drops: u64,
    out: VecDeque<Output>,
    kind: std::marker::PhantomData<K>,
}

impl<K: AnswerKind> RawAnswerer<K> {
    /// A socket with no pipes.
    pub fn new(opts: &Options) -> Self {
        // The pipe id word and a full backtrace must fit in a header.
        let ttl = opts.max_ttl.min(MAX_TTL_LIMIT) as usize;
        debug_assert!((ttl + 1) * 4 <= MAX_HEADER);
        RawAnswerer {
            kind: std::marker::PhantomData,
            pipes: HashMap::new(),
            max_ttl: ttl,
            ttl_drops: 0,
            unroutable_drops: 0,
            out: VecDeque::new(),
        }
    }

    /// Requests dropped because their backtrace was longer than the max TTL.
    pub fn ttl_drops(&self) -> u64 {
        self.ttl_drops
    }

    /// Replies dropped because their pipe was unknown or had no credit.
    pub fn unroutable_drops(&self) -> u64 {
        self.unroutable_drops
    }

    /// Forgets `pipe`; the replies in its backlog are lost (and counted).
    fn drop_pipe(&mut self, pipe: PipeId) {
        if let Some(p) = self.pipes.remove(&pipe) {
            self.unroutable_drops += p.backlog.len() as u64;
        }
    }

    /// Number of words in the backtrace at the front of `msg` (request id
    /// included), `Ok(None)` when it is longer than the TTL.
    fn backtrace_len(&self, msg: &Message) -> Result<Option<usize>, PeerError> {
        // As NNG: the TTL is checked before each word is read, so a
        // backtrace over the TTL is dropped even if it would also run out.
        for hop in 0..self.max_ttl {
            let w = msg.word_at(hop * 4).ok_or(PeerError::NoBacktraceEnd)?;
            if w & 0x8000_0000 != 0 {
                return Ok(Some(hop + 1));
            }
        }
        Ok(None)
    }
}

impl<K: AnswerKind> Protocol for RawAnswerer<K> {
    fn kind(&self) -> ProtocolKind {
        K::KIND
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(K::KIND, peer)?;
        // A pipe id reused without a remove first starts over.
        self.drop_pipe(pipe);
        self.pipes.insert(
            pipe,
            PipeState {
                credits,
                ..PipeState::default()
            },
        );
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        self.drop_pipe(pipe);
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        if let Some(p) = self.pipes.get_mut(&pipe) {
            p.credits = p.credits.saturating_add(credits);
            while p.credits > 0 {
                let Some(msg) = p.backlog.pop_front() else {
                    break;
                };
                p.credits -= 1;
                p.backlog_bytes -= cost(&msg);
                self.out.push_back(Output::Transmit { pipe, msg });
            }
            if p.paused && p.backlog.is_empty() {
                p.paused = false;
                self.out.push_back(Output::PausePipe {
                    pipe,
                    paused: false,
                });
            }
        }
    }

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, _now: Instant) {
        if !self.pipes.contains_key(&pipe) {
            return;
        }
        let hops = match self.backtrace_len(&msg) {
            Ok(Some(hops)) => hops,
            Ok(None) => {
                self.ttl_drops += 1;
                return;
            }
            Err(error) => {
                self.drop_pipe(pipe);
                self.out.push_back(Output::ClosePipe { pipe, error });
                return;
            }
        };
        // Both fit: hops <= 15 words, plus the pipe id makes 64 bytes.
        if !msg.split_header_at(hops * 4) || msg.header.push_word_front(pipe.0).is_err() {
            self.ttl_drops += 1;
            return;
        }
        self.out.push_back(Output::Deliver {
            ctx: CtxId::SOCKET,
            msg,
        });
    }

    fn can_send(&self) -> bool {
        true
    }

    fn handle_send(&mut self, _ctx: CtxId, mut msg: Message, _now: Instant) -> Result<(), OpError> {
        let Some(word) = msg.header.pop_word_front() else {
            return Err(CallerError::BadState.into());
        };
        let pipe = PipeId(word);
        match self.pipes.get_mut(&pipe) {
            Some(p) if p.credits > 0 && p.backlog.is_empty() => {
                p.credits -= 1;
                self.out.push_back(Output::Transmit { pipe, msg });
            }
            Some(p)
                if p.backlog.len() < MAX_BACKLOG
                    && p.backlog_bytes + cost(&msg) <= MAX_BACKLOG_BYTES =>
            {
                p.backlog_bytes += cost(&msg);
                p.backlog.push_back(msg);
                if !p.paused && p.backlog_bytes >= PAUSE_BACKLOG_BYTES {
                    p.paused = true;
                    self.out.push_back(Output::PausePipe { pipe, paused: true });
                }
            }
            _ => self.unroutable_drops += 1,
        }
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn counters(&self) -> super::Counters {
        use super::Counters;
        Counters {
            ttl_drops: self.ttl_drops(),
            unroutable_drops: self.unroutable_drops(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header;

    fn drain(p: &mut Rep0) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    fn words(ws: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = ws.iter().flat_map(|w| w.to_be_bytes()).collect();
        v.extend_from_slice(body);
        v
    }

    fn rep() -> (Rep0, Instant) {
        let now = Instant::now();
        let mut r = Rep0::new(&Options::default());
        r.add_pipe(PipeId(5), 0x30, 2, now).unwrap();
        r.add_pipe(PipeId(6), 0x30, 1, now).unwrap();
        (r, now)
    }

    fn delivered(r: &mut Rep0) -> Message {
        match &mut drain(r)[..] {
            [Output::Deliver { ctx, msg }] => {
                assert_eq!(*ctx, CtxId::SOCKET);
                std::mem::take(msg)
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn refuses_wrong_peer() {
        let mut r = Rep0::new(&Options::default());
        assert_eq!(
            r.add_pipe(PipeId(1), 0x31, 1, Instant::now()),
            Err(PeerError::WrongProtocol(0x31))
        );
    }

    #[test]
    fn one_hop_backtrace() {
        let (mut r, now) = rep();
        // As captured from pynng: f1b176c2 "ping".
        r.handle_message(
            PipeId(5),
            Message::from_body(words(&[0xf1b1_76c2], b"ping")),
            now,
        );
        let m = delivered(&mut r);
        assert_eq!(m.header.as_slice(), &words(&[5, 0xf1b1_76c2], b"")[..]);
        assert_eq!(&m.body[..], b"ping");
    }

    #[test]
    fn several_hops_and_inproc_split() {
        let (mut r, now) = rep();
        let payload = words(&[0x11, 0x22, 0x8000_0007], b"body");
        r.handle_message(PipeId(6), Message::from_body(payload.clone()), now);
        let m = delivered(&mut r);
        assert_eq!(
            m.header.as_slice(),
            &words(&[6, 0x11, 0x22, 0x8000_0007], b"")[..]
        );
        assert_eq!(&m.body[..], b"body");
        // The same payload arriving over inproc with an odd split.
        let mut m = Message::from_body(payload);
        assert!(m.split_header_at(6));
        r.handle_message(PipeId(6), m, now);
        let m = delivered(&mut r);
        assert_eq!(
            m.header.as_slice(),
            &words(&[6, 0x11, 0x22, 0x8000_0007], b"")[..]
        );
        assert_eq!(&m.body[..], b"body");
    }

    #[test]
    fn empty_body_after_backtrace() {
        let (mut r, now) = rep();
        r.handle_message(
            PipeId(5),
            Message::from_body(words(&[0x8000_0001], b"")),
            now,
        );
        let m = delivered(&mut r);
        assert_eq!(m.header.len(), 8);
        assert!(m.body.is_empty());
    }

    #[test]
    fn no_end_word_closes() {
        let (mut r, now) = rep();
        r.handle_message(PipeId(5), Message::from_body(words(&[1, 2], b"xy")), now);
        match &drain(&mut r)[..] {
            [Output::ClosePipe { pipe, error }] => {
                assert_eq!(*pipe, PipeId(5));
                assert_eq!(*error, PeerError::NoBacktraceEnd);
            }
            o => panic!("{o:?}"),
        }
        // Forgotten at once: replies to it are unroutable.
        let mut h = Header::new();
        h.push_word(5).unwrap();
        r.handle_send(
            CtxId::SOCKET,
            Message {
                header: h,
                body: "r".into(),
            },
            now,
        )
        .unwrap();
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.unroutable_drops(), 1);
        // An empty payload is as broken.
        r.handle_message(PipeId(6), Message::default(), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                error: PeerError::NoBacktraceEnd,
                ..
            }]
        ));
    }

    #[test]
    fn ttl_drop_keeps_pipe() {
        let (mut r, now) = rep();
        // max_ttl 8: 8 words (7 hops + id) pass, 9 are dropped.
        let mut eight: Vec<u32> = (1..8).collect();
        eight.push(0x8000_0001);
        r.handle_message(PipeId(5), Message::from_body(words(&eight, b"ok")), now);
        let m = delivered(&mut r);
        assert_eq!(m.header.len(), 4 * 9);
        let mut nine: Vec<u32> = (1..9).collect();
        nine.push(0x8000_0001);
        r.handle_message(PipeId(5), Message::from_body(words(&nine, b"no")), now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.ttl_drops(), 1);
        // As NNG: the TTL is checked before the end of the payload, so nine
        // words without an end are dropped, not closed.
        let no_end: Vec<u32> = (1..10).collect();
        r.handle_message(PipeId(5), Message::from_body(words(&no_end, b"")), now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.ttl_drops(), 2);
        // The pipe is still there.
        r.handle_message(
            PipeId(5),
            Message::from_body(words(&[0x8000_0002], b"")),
            now,
        );
        let _ = delivered(&mut r);
    }

    #[test]
    fn max_ttl_limit_fits_header() {
        let now = Instant::now();
        let opts = Options {
            max_ttl: 15,
            ..Options::default()
        };
        let mut r = Rep0::new(&opts);
        r.add_pipe(PipeId(0x7fff_ffff), 0x30, 1, now).unwrap();
        let mut ws: Vec<u32> = (1..15).collect();
        ws.push(0x8000_0000);
        r.handle_message(
            PipeId(0x7fff_ffff),
            Message::from_body(words(&ws, b"b")),
            now,
        );
        let m = delivered(&mut r);
        assert_eq!(m.header.len(), MAX_HEADER);
        assert_eq!(m.header.first_word(), Some(0x7fff_ffff));
    }

    #[test]
    fn routes_reply_to_its_pipe() {
        let (mut r, now) = rep();
        r.handle_message(
            PipeId(6),
            Message::from_body(words(&[0x44, 0x8000_0009], b"q")),
            now,
        );
        let req = delivered(&mut r);
        let reply = Message {
            header: req.header,
            body: "answer".into(),
        };
        r.handle_send(CtxId::SOCKET, reply.clone(), now).unwrap();
        match &drain(&mut r)[..] {
            [Output::Transmit { pipe, msg }] => {
                assert_eq!(*pipe, PipeId(6));
                assert_eq!(msg.header.as_slice(), &words(&[0x44, 0x8000_0009], b"")[..]);
                assert_eq!(&msg.body[..], b"answer");
            }
            o => panic!("{o:?}"),
        }
        // Pipe 6 had one credit: the next replies wait for credit, in order.
        assert!(r.can_send());
        let second = Message {
            body: "second".into(),
            ..reply.clone()
        };
        let third = Message {
            body: "third".into(),
            ..reply.clone()
        };
        r.handle_send(CtxId::SOCKET, second, now).unwrap();
        r.handle_send(CtxId::SOCKET, third, now).unwrap();
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.unroutable_drops(), 0);
        r.handle_credit(PipeId(6), 1, now);
        match &drain(&mut r)[..] {
            [Output::Transmit { msg, .. }] => assert_eq!(&msg.body[..], b"second"),
            o => panic!("{o:?}"),
        }
        r.handle_credit(PipeId(6), 5, now);
        match &drain(&mut r)[..] {
            [Output::Transmit { msg, .. }] => assert_eq!(&msg.body[..], b"third"),
            o => panic!("{o:?}"),
        }
        // The backlog is bounded in bytes (and count): past it, drop.
        r.handle_credit(PipeId(6), 0, now);
        let mut r2 = rep().0;
        r2.add_pipe(PipeId(6), 0x30, 0, now).unwrap();
        // As held: the pipe id word popped.
        let fit = (MAX_BACKLOG_BYTES / (cost(&reply) - 4)).min(MAX_BACKLOG);
        for _ in 0..fit + 3 {
            r2.handle_send(CtxId::SOCKET, reply.clone(), now).unwrap();
        }
        assert_eq!(r2.unroutable_drops(), 3);
        // Gone pipe: its backlog and later replies are dropped.
        r2.remove_pipe(PipeId(6), now);
        assert_eq!(r2.unroutable_drops(), 3 + fit as u64);
        r.remove_pipe(PipeId(6), now);
        r.handle_send(CtxId::SOCKET, reply, now).unwrap();
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.unroutable_drops(), 1);
    }

    /// A peer that does not read its replies: once its backlog holds
    /// PAUSE_BACKLOG_BYTES its reads are paused (once), replies of other
    /// pipes are not affected, and it resumes when the backlog is empty.
    #[test]
    fn unread_replies_pause_that_pipe_only() {
        let (mut r, now) = rep();
        r.add_pipe(PipeId(7), 0x30, 0, now).unwrap();
        let reply = |pipe: u32| {
            let mut m = Message::from_body(vec![0u8; 1000]);
            m.header.push_word_front(0x8000_0001).unwrap();
            m.header.push_word_front(pipe).unwrap();
            m
        };
        let per = 1000 + 4 + MSG_OVERHEAD;
        let to_pause = PAUSE_BACKLOG_BYTES.div_ceil(per);
        let mut pauses = Vec::new();
        for _ in 0..to_pause + 10 {
            r.handle_send(CtxId::SOCKET, reply(7), now).unwrap();
            r.handle_send(CtxId::SOCKET, reply(6), now).unwrap();
            pauses.extend(drain(&mut r).into_iter().filter_map(|o| match o {
                Output::PausePipe { pipe, paused } => Some((pipe, paused)),
                Output::Transmit { pipe, .. } => {
                    assert_eq!(pipe, PipeId(6));
                    None
                }
                o => panic!("{o:?}"),
            }));
            r.handle_credit(PipeId(6), 1, now);
        }
        assert_eq!(pauses, vec![(PipeId(7), true)], "paused once, pipe 7 only");
        assert_eq!(r.unroutable_drops(), 0);
        // Credit for all but one: still paused; the last one: resumed.
        r.handle_credit(PipeId(7), (to_pause + 9) as u32, now);
        assert!(!drain(&mut r)
            .iter()
            .any(|o| matches!(o, Output::PausePipe { .. })));
        r.handle_credit(PipeId(7), 1, now);
        let out = drain(&mut r);
        assert!(matches!(
            out.last(),
            Some(Output::PausePipe {
                pipe: PipeId(7),
                paused: false
            })
        ));
    }

    #[test]
    fn send_needs_pipe_word() {
        let (mut r, now) = rep();
        assert_eq!(
            r.handle_send(CtxId::SOCKET, Message::from_body("no header"), now),
            Err(OpError::Caller(CallerError::BadState))
        );
        let msg = Message {
            header: Header::from_slice(&[0, 0, 5]).unwrap(),
            body: "x".into(),
        };
        assert_eq!(
            r.handle_send(CtxId::SOCKET, msg, now),
            Err(OpError::Caller(CallerError::BadState))
        );
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn unknown_pipe_messages_ignored() {
        let (mut r, now) = rep();
        r.handle_message(PipeId(99), Message::default(), now);
        assert!(drain(&mut r).is_empty());
        assert!(r.open_ctx().is_err(), "contexts live in the facade");
    }
}
