//! PULL v0 (0x51): receives from every PUSH peer.
//!
//! No protocol header; every message is delivered to the socket's context.
//! Fair queueing across pipes comes from the driver, which takes input from
//! pipes in arrival order and stops reading all of them while the receive
//! queue is full.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

/// PULL state: the set of live pipes.
#[derive(Debug, Default)]
pub struct Pull0 {
    pipes: HashSet<PipeId>,
    out: VecDeque<Output>,
}

impl Pull0 {
    /// A pull socket with no pipes.
    pub fn new(_opts: &Options) -> Self {
        Pull0::default()
    }
}

impl Protocol for Pull0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Pull0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        _credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Pull0, peer)?;
        self.pipes.insert(pipe);
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        self.pipes.remove(&pipe);
    }

    fn handle_credit(&mut self, _pipe: PipeId, _credits: u32, _now: Instant) {}

    fn handle_message(&mut self, pipe: PipeId, msg: Message, _now: Instant) {
        if self.pipes.contains(&pipe) {
            self.out.push_back(Output::Deliver {
                ctx: CtxId::SOCKET,
                msg,
            });
        }
    }

    fn can_send(&self) -> bool {
        false
    }

    fn handle_send(&mut self, _ctx: CtxId, _msg: Message, _now: Instant) -> Result<(), OpError> {
        Err(CallerError::NotSupported.into())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_from_known_pipes_only() {
        let now = Instant::now();
        let mut p = Pull0::new(&Options::default());
        p.add_pipe(PipeId(3), 0x50, 1, now).unwrap();
        p.handle_message(PipeId(3), Message::from_body("a"), now);
        p.handle_message(PipeId(4), Message::from_body("b"), now);
        match p.poll_output() {
            Some(Output::Deliver { ctx, msg }) => {
                assert_eq!(ctx, CtxId::SOCKET);
                assert_eq!(&msg.body[..], b"a");
            }
            o => panic!("{o:?}"),
        }
        assert!(p.poll_output().is_none());
        assert!(p
            .handle_send(CtxId::SOCKET, Message::default(), now)
            .is_err());
    }
}
