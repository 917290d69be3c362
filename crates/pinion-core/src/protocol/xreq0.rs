//! Raw REQ and raw SURVEYOR (`Options::raw`): no ids, no timers, no
//! contexts — the application (typically a device) supplies and reads the
//! backtrace itself.
//!
//! # Send
//!
//! The message's header (a backtrace ending with a request or survey id,
//! usually the one a raw REP or RESPONDENT delivered) is sent as it is,
//! followed by the body:
//! * raw REQ: to one pipe, round-robin over the pipes with credit; like push,
//!   [`Protocol::can_send`] is false while no pipe has credit (backpressure);
//! * raw SURVEYOR: to every pipe with credit (best effort, never blocks).
//!
//! # Receive
//!
//! As NNG's `xreq`/`xsurveyor`: the first 32-bit word of the payload moves
//! into the header (it names the next hop back: a request id, or the pipe id
//! a device prepended), the rest is the body, and the message is delivered
//! to the socket's context. A payload shorter than one word closes the pipe
//! ([`PeerError::ShortHeader`]).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

/// Raw REQ (`kind` Req0) or raw SURVEYOR (`kind` Surveyor0).
#[derive(Debug)]
pub struct XReq0 {
    kind: ProtocolKind,
    credits: HashMap<PipeId, u32>,
    /// Pipes with credit, in round-robin order (REQ) / all pipes (SURVEYOR).
    ready: VecDeque<PipeId>,
    /// Messages a SURVEYOR could not send to a pipe without credit.
    missed: u64,
    out: VecDeque<Output>,
}

impl XReq0 {
    /// A raw REQ (`ProtocolKind::Req0`) or raw SURVEYOR
    /// (`ProtocolKind::Surveyor0`).
    pub fn new(kind: ProtocolKind, _opts: &Options) -> Self {
        assert!(matches!(kind, ProtocolKind::Req0 | ProtocolKind::Surveyor0));
        XReq0 {
            kind,
            credits: HashMap::new(),
            ready: VecDeque::new(),
            missed: 0,
            out: VecDeque::new(),
        }
    }

    fn broadcast(&self) -> bool {
        self.kind == ProtocolKind::Surveyor0
    }
}

impl Protocol for XReq0 {
    fn kind(&self) -> ProtocolKind {
        self.kind
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(self.kind, peer)?;
        self.credits.insert(pipe, credits);
        if credits > 0 {
            self.ready.push_back(pipe);
        }
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        if self.credits.remove(&pipe).is_some() {
            self.ready.retain(|p| *p != pipe);
        }
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        if let Some(c) = self.credits.get_mut(&pipe) {
            if *c == 0 && credits > 0 {
                self.ready.push_back(pipe);
            }
            *c = c.saturating_add(credits);
        }
    }

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, _now: Instant) {
        if !self.credits.contains_key(&pipe) {
            return;
        }
        // header ++ body as one string: its first word becomes the header.
        if !msg.split_header_at(4) {
            self.remove_pipe(pipe, _now);
            self.out.push_back(Output::ClosePipe {
                pipe,
                error: PeerError::ShortHeader,
            });
            return;
        }
        self.out.push_back(Output::Deliver {
            ctx: CtxId::SOCKET,
            msg,
        });
    }

    fn can_send(&self) -> bool {
        self.broadcast() || !self.ready.is_empty()
    }

    fn handle_send(&mut self, _ctx: CtxId, msg: Message, _now: Instant) -> Result<(), OpError> {
        if self.broadcast() {
            let mut pipes: Vec<PipeId> = self.credits.keys().copied().collect();
            pipes.sort_unstable();
            for pipe in pipes {
                let c = self.credits.get_mut(&pipe).expect("listed");
                if *c == 0 {
                    self.missed += 1;
                    continue;
                }
                *c -= 1;
                if *c == 0 {
                    self.ready.retain(|p| *p != pipe);
                }
                self.out.push_back(Output::Transmit {
                    pipe,
                    msg: msg.clone(),
                });
            }
            return Ok(());
        }
        let Some(pipe) = self.ready.pop_front() else {
            return Err(CallerError::BadState.into());
        };
        let c = self.credits.get_mut(&pipe).expect("ready pipe is known");
        *c -= 1;
        if *c > 0 {
            self.ready.push_back(pipe);
        }
        self.out.push_back(Output::Transmit { pipe, msg });
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn counters(&self) -> super::Counters {
        super::Counters {
            queue_drops: self.missed,
            ..super::Counters::default()
        }
    }
}

/// Test and fuzz support, not API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
// Random operation sequences: never a transmission to an unknown pipe
// or one without credit; deliveries always carry exactly one word of
// header; no panic.
pub fn check_sequence(kind: ProtocolKind, ops: &[(u8, u8, Vec<u8>)]) {
    use std::collections::HashMap;
    let now = Instant::now();
    let mut r = XReq0::new(
        kind,
        &Options {
            raw: true,
            ..Options::default()
        },
    );
    let peer = kind.peer_id();
    let mut model: HashMap<u32, u32> = HashMap::new();
    for (op, arg, data) in ops {
        let pipe = PipeId(u32::from(*arg % 4) + 1);
        match op % 5 {
            0 => {
                let credits = u32::from(arg / 4 % 3);
                if !model.contains_key(&pipe.0) && r.add_pipe(pipe, peer, credits, now).is_ok() {
                    model.insert(pipe.0, credits);
                }
            }
            1 => {
                r.remove_pipe(pipe, now);
                model.remove(&pipe.0);
            }
            2 => {
                r.handle_credit(pipe, 1, now);
                if let Some(c) = model.get_mut(&pipe.0) {
                    *c += 1;
                }
            }
            3 => r.handle_message(pipe, Message::from_body(data.clone()), now),
            _ => {
                if r.can_send() {
                    let header =
                        crate::message::Header::from_slice(&data[..data.len().min(8)]).unwrap();
                    let _ = r.handle_send(
                        CtxId::SOCKET,
                        Message {
                            header,
                            body: "b".into(),
                        },
                        now,
                    );
                }
            }
        }
        while let Some(o) = r.poll_output() {
            match o {
                Output::Transmit { pipe, .. } => {
                    let c = model.get_mut(&pipe.0).expect("transmit to a known pipe");
                    assert!(*c > 0, "transmit without credit");
                    *c -= 1;
                }
                Output::Deliver { msg, .. } => assert_eq!(msg.header.len(), 4),
                Output::ClosePipe { pipe, .. } => {
                    model.remove(&pipe.0);
                }
                Output::Completed { .. } => panic!("raw sockets have no operations"),
                Output::PausePipe { .. } => panic!("REQ never pauses a pipe"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header;

    fn drain(p: &mut XReq0) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    #[test]
    fn raw_req_passes_the_backtrace_and_round_robins() {
        let now = Instant::now();
        let mut r = XReq0::new(ProtocolKind::Req0, &Options::default());
        r.add_pipe(PipeId(1), 0x31, 1, now).unwrap();
        r.add_pipe(PipeId(2), 0x31, 1, now).unwrap();
        let msg = Message {
            header: Header::from_slice(&[0, 0, 0, 7, 0x80, 0, 0, 9]).unwrap(),
            body: "q".into(),
        };
        r.handle_send(CtxId::SOCKET, msg.clone(), now).unwrap();
        r.handle_send(CtxId::SOCKET, msg.clone(), now).unwrap();
        assert!(!r.can_send());
        let out = drain(&mut r);
        let pipes: Vec<u32> = out
            .iter()
            .map(|o| match o {
                Output::Transmit { pipe, msg: m } => {
                    assert_eq!(m, &msg);
                    pipe.0
                }
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(pipes, vec![1, 2]);
        // A reply: the first word moves into the header.
        r.handle_message(
            PipeId(1),
            Message::from_body(&b"\0\0\0\x07\x80\0\0\x09ok"[..]),
            now,
        );
        match &drain(&mut r)[..] {
            [Output::Deliver { msg, .. }] => {
                assert_eq!(msg.header.as_slice(), &[0, 0, 0, 7]);
                assert_eq!(&msg.body[..], b"\x80\0\0\x09ok");
            }
            o => panic!("{o:?}"),
        }
        r.handle_message(PipeId(2), Message::from_body(&b"\0\0"[..]), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                error: PeerError::ShortHeader,
                ..
            }]
        ));
    }

    #[test]
    fn raw_surveyor_broadcasts_best_effort() {
        let now = Instant::now();
        let mut s = XReq0::new(ProtocolKind::Surveyor0, &Options::default());
        assert_eq!(
            s.add_pipe(PipeId(1), 0x31, 1, now),
            Err(PeerError::WrongProtocol(0x31))
        );
        s.add_pipe(PipeId(1), 0x63, 1, now).unwrap();
        s.add_pipe(PipeId(2), 0x63, 0, now).unwrap();
        assert!(s.can_send());
        s.handle_send(CtxId::SOCKET, Message::from_body("s"), now)
            .unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 1, "pipe 2 has no credit");
        assert_eq!(s.counters().queue_drops, 1);
    }

    proptest::proptest! {
        #[test]
        fn raw_req_and_surveyor_sequences(
            ops in proptest::collection::vec(
                (proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>(),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)),
                0..200),
            surveyor in proptest::prelude::any::<bool>(),
        ) {
            let kind = if surveyor { ProtocolKind::Surveyor0 } else { ProtocolKind::Req0 };
            super::check_sequence(kind, &ops);
        }
    }
}
