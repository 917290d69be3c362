//! PAIR v0 (0x10): one peer, no protocol header.
//!
//! A pair socket talks to exactly one peer at a time. A second pipe that
//! finishes its handshake while the first is attached is refused with
//! [`PeerError::AlreadyPaired`] (NNG refuses it in `pipe_start` with
//! `NNG_EBUSY` and closes it); once the peer is gone the next pipe may take
//! its place.
//!
//! Messages carry no protocol header on the wire: the whole payload is the
//! body. Sends are queued: [`Protocol::can_send`] holds while the peer exists
//! and its write queue has room, and every send goes to the peer. Messages
//! from the peer are delivered to the socket's context with an empty header
//! (a message from `inproc://` that kept a header/body split is joined back
//! into one body).

use std::collections::VecDeque;
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

/// The one peer of a pair socket and the credits of its write queue.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pipe: PipeId,
    credits: u32,
}

/// PAIR v0 state: at most one peer.
#[derive(Debug, Default)]
pub struct Pair0 {
    peer: Option<Peer>,
    out: VecDeque<Output>,
}

impl Pair0 {
    /// A pair socket with no peer.
    pub fn new(_opts: &Options) -> Self {
        Pair0::default()
    }

    /// The pipe of the current peer, if any.
    pub fn peer(&self) -> Option<PipeId> {
        self.peer.map(|p| p.pipe)
    }
}

impl Protocol for Pair0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Pair0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Pair0, peer)?;
        if self.peer.is_some() {
            return Err(PeerError::AlreadyPaired);
        }
        self.peer = Some(Peer { pipe, credits });
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        if self.peer.is_some_and(|p| p.pipe == pipe) {
            self.peer = None;
        }
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        if let Some(p) = self.peer.as_mut().filter(|p| p.pipe == pipe) {
            p.credits = p.credits.saturating_add(credits);
        }
    }

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, _now: Instant) {
        if self.peer.is_some_and(|p| p.pipe == pipe) {
            // No protocol header: whatever split inproc kept, it is all body.
            msg.split_header_at(0);
            self.out.push_back(Output::Deliver {
                ctx: CtxId::SOCKET,
                msg,
            });
        }
    }

    fn can_send(&self) -> bool {
        self.peer.is_some_and(|p| p.credits > 0)
    }

    fn handle_send(&mut self, _ctx: CtxId, msg: Message, _now: Instant) -> Result<(), OpError> {
        match self.peer.as_mut() {
            Some(p) if p.credits > 0 => {
                p.credits -= 1;
                self.out.push_back(Output::Transmit { pipe: p.pipe, msg });
            }
            // Contract breach (the driver must check `can_send`): the message
            // has nowhere to go, so it is dropped rather than over-filling the
            // peer's queue.
            _ => debug_assert!(false, "pair0: handle_send without can_send"),
        }
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header;

    fn drain(p: &mut Pair0) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    #[test]
    fn one_peer_only() {
        let now = Instant::now();
        let mut p = Pair0::new(&Options::default());
        p.add_pipe(PipeId(1), 0x10, 1, now).unwrap();
        assert_eq!(
            p.add_pipe(PipeId(2), 0x10, 1, now),
            Err(PeerError::AlreadyPaired)
        );
        assert_eq!(p.peer(), Some(PipeId(1)));
        // Removing the refused pipe does not disturb the peer.
        p.remove_pipe(PipeId(2), now);
        assert_eq!(p.peer(), Some(PipeId(1)));
        p.remove_pipe(PipeId(1), now);
        assert_eq!(p.peer(), None);
        p.add_pipe(PipeId(2), 0x10, 1, now).unwrap();
        assert_eq!(p.peer(), Some(PipeId(2)));
    }

    #[test]
    fn refuses_wrong_peer() {
        let now = Instant::now();
        let mut p = Pair0::new(&Options::default());
        assert_eq!(
            p.add_pipe(PipeId(1), 0x11, 1, now),
            Err(PeerError::WrongProtocol(0x11))
        );
        assert_eq!(p.peer(), None);
        // A refused pipe does not count as the peer.
        p.add_pipe(PipeId(2), 0x10, 1, now).unwrap();
    }

    #[test]
    fn send_needs_peer_and_credit() {
        let now = Instant::now();
        let mut p = Pair0::new(&Options::default());
        assert!(!p.can_send());
        p.add_pipe(PipeId(7), 0x10, 1, now).unwrap();
        assert!(p.can_send());
        p.handle_send(CtxId::SOCKET, Message::from_body("hi"), now)
            .unwrap();
        assert!(!p.can_send(), "out of credit");
        match &drain(&mut p)[..] {
            [Output::Transmit { pipe, msg }] => {
                assert_eq!(*pipe, PipeId(7));
                assert!(msg.header.is_empty());
                assert_eq!(&msg.body[..], b"hi");
            }
            o => panic!("{o:?}"),
        }
        p.handle_credit(PipeId(8), 3, now);
        assert!(!p.can_send(), "credit for another pipe is ignored");
        p.handle_credit(PipeId(7), 1, now);
        assert!(p.can_send());
        p.remove_pipe(PipeId(7), now);
        assert!(!p.can_send());
    }

    #[test]
    fn delivers_from_peer_with_empty_header() {
        let now = Instant::now();
        let mut p = Pair0::new(&Options::default());
        p.add_pipe(PipeId(1), 0x10, 1, now).unwrap();
        p.handle_message(PipeId(2), Message::from_body("stranger"), now);
        assert!(drain(&mut p).is_empty(), "unknown pipes are ignored");
        // An inproc message that kept a header: all of it is body for pair0.
        let msg = Message {
            header: Header::from_slice(b"ab").unwrap(),
            body: "cd".into(),
        };
        p.handle_message(PipeId(1), msg, now);
        match &drain(&mut p)[..] {
            [Output::Deliver { ctx, msg }] => {
                assert_eq!(*ctx, CtxId::SOCKET);
                assert!(msg.header.is_empty());
                assert_eq!(&msg.body[..], b"abcd");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn no_ops_no_contexts() {
        let now = Instant::now();
        let mut p = Pair0::new(&Options::default());
        assert!(p.open_ctx().is_err());
        assert!(p
            .start_op(
                super::super::OpId(1),
                CtxId::SOCKET,
                super::super::Op::Recv,
                None,
                now
            )
            .is_err());
        assert_eq!(p.poll_timeout(), None);
    }
}
