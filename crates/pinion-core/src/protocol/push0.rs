//! PUSH v0 (0x50): sends round-robin over the pipes that have room.
//!
//! No protocol header. Backpressure: the pattern only takes a message when
//! some pipe has credit ([`Protocol::can_send`]); otherwise the driver keeps
//! it in the socket's send buffer and `send` waits. Messages arriving from a
//! PULL peer are ignored, as in NNG.

use std::collections::VecDeque;
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

/// PUSH state: pipes and their credits, and a rotating cursor.
#[derive(Debug, Default)]
pub struct Push0 {
    /// Pipes with at least one credit, in round-robin order.
    ready: VecDeque<PipeId>,
    /// Credits per known pipe.
    credits: std::collections::HashMap<PipeId, u32>,
    out: VecDeque<Output>,
}

impl Push0 {
    /// A push socket with no pipes.
    pub fn new(_opts: &Options) -> Self {
        Push0::default()
    }
}

impl Protocol for Push0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Push0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Push0, peer)?;
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
            *c += credits;
        }
    }

    fn handle_message(&mut self, _pipe: PipeId, _msg: Message, _now: Instant) {}

    fn can_send(&self) -> bool {
        !self.ready.is_empty()
    }

    fn handle_send(&mut self, _ctx: CtxId, msg: Message, _now: Instant) -> Result<(), OpError> {
        let pipe = self
            .ready
            .pop_front()
            .expect("driver called handle_send without can_send");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(p: &mut Push0) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(o) = p.poll_output() {
            match o {
                Output::Transmit { pipe, msg } => v.push((pipe.0, msg.body.to_vec())),
                other => panic!("unexpected {other:?}"),
            }
        }
        v
    }

    #[test]
    fn round_robin_and_backpressure() {
        let now = Instant::now();
        let mut p = Push0::new(&Options::default());
        assert!(!p.can_send());
        p.add_pipe(PipeId(1), 0x51, 1, now).unwrap();
        p.add_pipe(PipeId(2), 0x51, 1, now).unwrap();
        for m in ["m0", "m1"] {
            assert!(p.can_send());
            p.handle_send(CtxId::SOCKET, Message::from_body(m), now)
                .unwrap();
        }
        assert!(!p.can_send(), "both pipes are out of credit");
        assert_eq!(tx(&mut p), vec![(1, b"m0".to_vec()), (2, b"m1".to_vec())]);
        p.handle_credit(PipeId(2), 1, now);
        p.handle_send(CtxId::SOCKET, Message::from_body("m2"), now)
            .unwrap();
        assert_eq!(tx(&mut p), vec![(2, b"m2".to_vec())]);
        p.remove_pipe(PipeId(2), now);
        p.handle_credit(PipeId(2), 5, now);
        assert!(!p.can_send(), "credit for a removed pipe is ignored");
    }

    #[test]
    fn refuses_wrong_peer() {
        let mut p = Push0::new(&Options::default());
        assert_eq!(
            p.add_pipe(PipeId(1), 0x30, 1, Instant::now()),
            Err(PeerError::WrongProtocol(0x30))
        );
        assert!(!p.can_send());
    }
}
