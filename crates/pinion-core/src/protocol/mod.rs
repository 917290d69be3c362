//! One sans-IO state machine per messaging pattern, behind [`Protocol`].
//!
//! # Driving a protocol
//!
//! A driver (the runtime, or a test) owns one `Box<dyn Protocol>` per socket
//! and feeds it four kinds of input:
//!
//! * **pipes**: [`Protocol::add_pipe`] once a connection finished its SP
//!   handshake, [`Protocol::remove_pipe`] when it is gone,
//!   [`Protocol::handle_message`] for each message it carried, and
//!   [`Protocol::handle_credit`] when its write queue drained;
//! * **queued sends**: [`Protocol::handle_send`], called only while
//!   [`Protocol::can_send`] is true (the driver keeps the send buffer);
//! * **operations** (patterns whose sends and receives have state, such as
//!   REQ): [`Protocol::start_op`] and [`Protocol::cancel_op`];
//! * **time**: [`Protocol::handle_timeout`] once `now` reaches
//!   [`Protocol::poll_timeout`].
//!
//! After any input the driver drains [`Protocol::poll_output`] until it
//! returns `None`, then re-reads [`Protocol::poll_timeout`]. Outputs are
//! transmissions to a pipe, deliveries into a context's receive queue,
//! completions of operations, and pipes to close.
//!
//! # Flow control
//!
//! Each pipe starts with `credits`, the number of messages its write queue
//! may hold. Every [`Output::Transmit`] to a pipe spends one; the driver gives
//! them back with [`Protocol::handle_credit`] as the queue drains. A pattern
//! never transmits to a pipe without credit, so the memory a pipe holds is
//! bounded. On the receive side the driver stops reading pipes while a
//! delivery waits for room in the receive queue.
//!
//! # Patterns
//!
//! | module | socket | id | sends | receives |
//! |---|---|---|---|---|
//! | [`push0`] | PUSH | 0x50 | queued, round-robin over pipes with credit | — |
//! | [`pull0`] | PULL | 0x51 | — | delivered to context 0 |
//! | [`pair0`] | PAIR v0 | 0x10 | queued to the one peer | delivered |
//! | [`pair1`] | PAIR v1 | 0x11 | queued, with hop count | delivered, TTL checked |
//! | [`req0`] | REQ | 0x30 | operations, per context | operations, per context |
//! | [`rep0`] | REP | 0x31 | queued, routed by the header | delivered with pipe id + backtrace in the header |
//! | [`pub0`] | PUB | 0x20 | queued, to every pipe; never blocks (16-message drop-oldest queue per pipe) | — |
//! | [`sub0`] | SUB | 0x21 | — | delivered to every context with a matching subscription (trie) |
//! | [`surveyor0`] | SURVEYOR | 0x62 | operations: a survey to every pipe | operations: responses until the deadline |
//! | [`respondent0`] | RESPONDENT | 0x63 | queued, routed by the header | delivered with pipe id + backtrace in the header |
//! | [`bus0`] | BUS | 0x70 | queued, to every pipe (but the one in the header) | delivered with the pipe id in the header |

use std::fmt;
use std::time::Instant;

use crate::error::{CallerError, OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

pub mod bus0;
mod ids;
pub mod pair0;
pub mod pair1;
pub mod pub0;
pub mod pull0;
pub mod push0;
pub mod rep0;
pub mod req0;
pub mod respondent0;
pub mod sub0;
pub mod surveyor0;
pub mod xreq0;

/// A pipe (one connection to a peer) within a socket. The driver picks the
/// values: non-zero, top bit clear (`1..=0x7fff_ffff`), like NNG's pipe ids,
/// because REP puts them into backtrace words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipeId(pub u32);

/// A context: an independent state machine on one socket (REQ requests, REP
/// replies). [`CtxId::SOCKET`] is the socket's own context and always exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtxId(pub u32);

impl CtxId {
    /// The socket's own context.
    pub const SOCKET: CtxId = CtxId(0);
}

/// An application operation, named by the driver; unique per socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// What an operation asks for.
#[derive(Debug, Clone)]
pub enum Op {
    /// Send this message on the context.
    Send(Message),
    /// Receive the next message for the context.
    Recv,
}

/// Something the driver must do.
#[derive(Debug)]
#[must_use]
pub enum Output {
    /// Queue `msg` on `pipe`'s write queue (one credit spent).
    Transmit {
        /// Destination.
        pipe: PipeId,
        /// Message, header included.
        msg: Message,
    },
    /// Put `msg` into the receive queue of `ctx`.
    Deliver {
        /// Context whose queue takes it.
        ctx: CtxId,
        /// The message.
        msg: Message,
    },
    /// An operation finished; receives carry their message.
    Completed {
        /// Which operation.
        op: OpId,
        /// `Ok(Some(msg))` for a receive, `Ok(None)` for a send.
        result: Result<Option<Message>, OpError>,
    },
    /// Close `pipe`: its peer broke the protocol, or the pattern refuses it.
    ClosePipe {
        /// The pipe.
        pipe: PipeId,
        /// Why.
        error: PeerError,
    },
    /// Stop (`true`) or resume reading from `pipe`: the pattern holds as
    /// much for that peer as it will (REP: replies the peer does not read),
    /// so TCP should push back on it alone.
    PausePipe {
        /// The pipe.
        pipe: PipeId,
        /// Stop reading (`true`) or resume.
        paused: bool,
    },
}

/// Messages a pattern dropped without closing a pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages over the max-TTL (REP backtraces, PAIR v1 hop counts).
    pub ttl_drops: u64,
    /// Replies whose pipe was gone or full (REP, RESPONDENT).
    pub unroutable_drops: u64,
    /// Messages a peer without room did not get (PUB: pushed out of a full
    /// per-pipe queue; BUS: sent while the pipe had no credit).
    pub queue_drops: u64,
}

/// The patterns pinion implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolKind {
    /// PAIR v0.
    Pair0,
    /// PAIR v1.
    Pair1,
    /// REQ v0.
    Req0,
    /// REP v0.
    Rep0,
    /// PUSH v0.
    Push0,
    /// PULL v0.
    Pull0,
    /// PUB v0.
    Pub0,
    /// SUB v0.
    Sub0,
    /// SURVEYOR v0.
    Surveyor0,
    /// RESPONDENT v0.
    Respondent0,
    /// BUS v0.
    Bus0,
}

impl ProtocolKind {
    /// Every kind.
    pub const ALL: [ProtocolKind; 11] = [
        ProtocolKind::Pair0,
        ProtocolKind::Pair1,
        ProtocolKind::Req0,
        ProtocolKind::Rep0,
        ProtocolKind::Push0,
        ProtocolKind::Pull0,
        ProtocolKind::Pub0,
        ProtocolKind::Sub0,
        ProtocolKind::Surveyor0,
        ProtocolKind::Respondent0,
        ProtocolKind::Bus0,
    ];

    /// The 16-bit id sent in the SP header (`protocol << 4 | role`).
    pub const fn id(self) -> u16 {
        match self {
            ProtocolKind::Pair0 => 0x10,
            ProtocolKind::Pair1 => 0x11,
            ProtocolKind::Req0 => 0x30,
            ProtocolKind::Rep0 => 0x31,
            ProtocolKind::Push0 => 0x50,
            ProtocolKind::Pull0 => 0x51,
            ProtocolKind::Pub0 => 0x20,
            ProtocolKind::Sub0 => 0x21,
            ProtocolKind::Surveyor0 => 0x62,
            ProtocolKind::Respondent0 => 0x63,
            ProtocolKind::Bus0 => 0x70,
        }
    }

    /// The id a compatible peer announces.
    pub const fn peer_id(self) -> u16 {
        match self {
            ProtocolKind::Pair0 => 0x10,
            ProtocolKind::Pair1 => 0x11,
            ProtocolKind::Req0 => 0x31,
            ProtocolKind::Rep0 => 0x30,
            ProtocolKind::Push0 => 0x51,
            ProtocolKind::Pull0 => 0x50,
            ProtocolKind::Pub0 => 0x21,
            ProtocolKind::Sub0 => 0x20,
            ProtocolKind::Surveyor0 => 0x63,
            ProtocolKind::Respondent0 => 0x62,
            ProtocolKind::Bus0 => 0x70,
        }
    }

    /// NNG's name for the protocol (also the WebSocket subprotocol prefix).
    pub const fn name(self) -> &'static str {
        match self {
            ProtocolKind::Pair0 => "pair",
            ProtocolKind::Pair1 => "pair1",
            ProtocolKind::Req0 => "req",
            ProtocolKind::Rep0 => "rep",
            ProtocolKind::Push0 => "push",
            ProtocolKind::Pull0 => "pull",
            ProtocolKind::Pub0 => "pub",
            ProtocolKind::Sub0 => "sub",
            ProtocolKind::Surveyor0 => "surveyor",
            ProtocolKind::Respondent0 => "respondent",
            ProtocolKind::Bus0 => "bus",
        }
    }

    /// Whether the application may send.
    pub const fn can_send(self) -> bool {
        !matches!(self, ProtocolKind::Pull0 | ProtocolKind::Sub0)
    }

    /// Whether the application may receive.
    pub const fn can_recv(self) -> bool {
        !matches!(self, ProtocolKind::Push0 | ProtocolKind::Pub0)
    }

    /// True when sends and receives are [`Op`]s with per-context state
    /// (REQ, SURVEYOR); false when sends go through
    /// [`Protocol::handle_send`] and receives arrive as [`Output::Deliver`].
    /// Raw sockets never use operations (see [`ProtocolKind::uses_ops_when`]).
    pub const fn uses_ops(self) -> bool {
        matches!(self, ProtocolKind::Req0 | ProtocolKind::Surveyor0)
    }

    /// [`ProtocolKind::uses_ops`] for a socket that is `raw` or not.
    pub const fn uses_ops_when(self, raw: bool) -> bool {
        !raw && self.uses_ops()
    }

    /// Whether the pattern has contexts.
    pub const fn has_contexts(self) -> bool {
        matches!(
            self,
            ProtocolKind::Req0
                | ProtocolKind::Rep0
                | ProtocolKind::Sub0
                | ProtocolKind::Surveyor0
                | ProtocolKind::Respondent0
        )
    }

    /// True when a full receive queue drops its *oldest* message to take a
    /// new one (SUB prefers new messages, as NNG's `NNG_OPT_SUB_PREFNEW`),
    /// instead of stopping input (backpressure).
    pub const fn drops_oldest(self) -> bool {
        matches!(self, ProtocolKind::Sub0)
    }

    /// True when the delivered header starts with the pipe id and the
    /// application's reply must carry it back (REP, RESPONDENT), or, for BUS,
    /// names the pipe a message came from.
    pub const fn header_routed(self) -> bool {
        matches!(
            self,
            ProtocolKind::Rep0 | ProtocolKind::Respondent0 | ProtocolKind::Bus0
        )
    }
}

impl fmt::Display for ProtocolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The contract between a pattern and its driver. See the module docs for
/// the order of calls. No method blocks, reads the clock or does I/O.
pub trait Protocol: Send + fmt::Debug {
    /// Which pattern this is.
    fn kind(&self) -> ProtocolKind;

    /// A pipe finished its handshake; `peer` is the protocol id it announced
    /// and `credits` the messages its write queue holds. An `Err` refuses the
    /// pipe (wrong protocol, or a pair that already has its peer); the driver
    /// closes it and the protocol forgets it.
    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        now: Instant,
    ) -> Result<(), PeerError>;

    /// A pipe is gone. Unknown pipes are ignored.
    fn remove_pipe(&mut self, pipe: PipeId, now: Instant);

    /// `pipe`'s write queue drained `credits` messages.
    fn handle_credit(&mut self, pipe: PipeId, credits: u32, now: Instant);

    /// A message arrived on `pipe`. A malformed one yields
    /// [`Output::ClosePipe`]; messages on unknown pipes are ignored.
    fn handle_message(&mut self, pipe: PipeId, msg: Message, now: Instant);

    /// True when [`Protocol::handle_send`] would take a message now without
    /// dropping it for lack of a pipe or credit.
    fn can_send(&self) -> bool;

    /// A queued send from the application. Call only while
    /// [`Protocol::can_send`] holds (REP may be called at any time: replies
    /// that cannot be routed are dropped, as the RFC says).
    fn handle_send(&mut self, ctx: CtxId, msg: Message, now: Instant) -> Result<(), OpError>;

    /// Starts an operation. `Ok` means it will end with one
    /// [`Output::Completed`] (possibly among the very next outputs); `Err`
    /// means it ended at once with that error and no output follows.
    /// `deadline` bounds it; past it the result is [`OpError::TimedOut`].
    fn start_op(
        &mut self,
        op: OpId,
        ctx: CtxId,
        what: Op,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), OpError> {
        let _ = (op, ctx, what, deadline, now);
        Err(OpError::Caller(CallerError::NotSupported))
    }

    /// Withdraws a pending operation (its caller went away). No completion
    /// follows for it.
    fn cancel_op(&mut self, op: OpId, now: Instant) {
        let _ = (op, now);
    }

    /// Opens a context.
    fn open_ctx(&mut self) -> Result<CtxId, CallerError> {
        Err(CallerError::NoContexts)
    }

    /// Adds a subscription (SUB): messages whose body starts with `topic`
    /// are delivered to `ctx`. The empty topic matches everything.
    /// Subscribing twice to the same topic is not an error.
    fn subscribe(&mut self, ctx: CtxId, topic: &[u8]) -> Result<(), CallerError> {
        let _ = (ctx, topic);
        Err(CallerError::NotSupported)
    }

    /// Removes a subscription (SUB); [`CallerError::NoSuchSubscription`]
    /// when `ctx` has no such topic.
    fn unsubscribe(&mut self, ctx: CtxId, topic: &[u8]) -> Result<(), CallerError> {
        let _ = (ctx, topic);
        Err(CallerError::NotSupported)
    }

    /// Closes a context; its pending operations complete with `Closed`.
    fn close_ctx(&mut self, ctx: CtxId, now: Instant) {
        let _ = (ctx, now);
    }

    /// Lets timers that are due fire.
    fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next instant at which [`Protocol::handle_timeout`] must be called.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next thing the driver must do.
    fn poll_output(&mut self) -> Option<Output>;

    /// Messages the pattern dropped on purpose, by reason.
    fn counters(&self) -> Counters {
        Counters::default()
    }
}

/// A new state machine for `kind`. `opts` must have passed
/// [`Options::validate`].
pub fn new(kind: ProtocolKind, opts: &Options) -> Box<dyn Protocol> {
    if opts.raw && matches!(kind, ProtocolKind::Req0 | ProtocolKind::Surveyor0) {
        return Box::new(xreq0::XReq0::new(kind, opts));
    }
    match kind {
        ProtocolKind::Push0 => Box::new(push0::Push0::new(opts)),
        ProtocolKind::Pull0 => Box::new(pull0::Pull0::new(opts)),
        ProtocolKind::Pair0 => Box::new(pair0::Pair0::new(opts)),
        ProtocolKind::Pair1 => Box::new(pair1::Pair1::new(opts)),
        ProtocolKind::Req0 => Box::new(req0::Req0::new(opts)),
        ProtocolKind::Rep0 => Box::new(rep0::Rep0::new(opts)),
        ProtocolKind::Pub0 => Box::new(pub0::Pub0::new(opts)),
        ProtocolKind::Sub0 => Box::new(sub0::Sub0::new(opts)),
        ProtocolKind::Surveyor0 => Box::new(surveyor0::Surveyor0::new(opts)),
        ProtocolKind::Respondent0 => Box::new(respondent0::Respondent0::new(opts)),
        ProtocolKind::Bus0 => Box::new(bus0::Bus0::new(opts)),
    }
}

/// Checks the announced peer id against the pattern's.
pub(crate) fn check_peer(kind: ProtocolKind, peer: u16) -> Result<(), PeerError> {
    if peer == kind.peer_id() {
        Ok(())
    } else {
        Err(PeerError::WrongProtocol(peer))
    }
}
