//! PAIR v1 (0x11): one peer, one hop-count word in front of every message.
//!
//! # Wire
//!
//! ```text
//! | hop count (u32 BE, <= 0xff) | body |
//! ```
//!
//! A cooked NNG sender writes 0 and each pipe send increments it, so the
//! first hop carries **1**; pinion writes 1 directly. On receive (as NNG's
//! `pair1/pair.c`):
//!
//! * fewer than 4 bytes: the peer is broken, its pipe is closed
//!   ([`PeerError::ShortHeader`]);
//! * hop count above 0xff: pipe closed ([`PeerError::BadHopCount`]);
//! * hop count above [`Options::max_ttl`]: the message is dropped and counted
//!   ([`Pair1::ttl_drops`]), the pipe stays (it may come through devices);
//! * otherwise the body is delivered to the socket's context with an empty
//!   header.
//!
//! One peer only, as PAIR v0: a second pipe is refused with
//! [`PeerError::AlreadyPaired`]. NNG's deprecated polyamorous mode is not
//! implemented. PAIR v0 and v1 do not talk to each other.

use std::collections::VecDeque;
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::{Header, Message};
use crate::options::Options;

/// The largest hop count a PAIR v1 header may carry.
pub const MAX_HOP_COUNT: u32 = 0xff;

/// The one peer of a pair socket and the credits of its write queue.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pipe: PipeId,
    credits: u32,
}

/// PAIR v1 state: at most one peer, the TTL, and a drop counter.
#[derive(Debug)]
pub struct Pair1 {
    peer: Option<Peer>,
    /// Raw mode: the hop count is the application's header.
    raw: bool,
    max_ttl: u32,
    ttl_drops: u64,
    out: VecDeque<Output>,
}

impl Pair1 {
    /// A pair socket with no peer.
    pub fn new(opts: &Options) -> Self {
        Pair1 {
            peer: None,
            raw: opts.raw,
            max_ttl: u32::from(opts.max_ttl),
            ttl_drops: 0,
            out: VecDeque::new(),
        }
    }

    /// The pipe of the current peer, if any.
    pub fn peer(&self) -> Option<PipeId> {
        self.peer.map(|p| p.pipe)
    }

    /// Messages dropped because their hop count was over the max TTL.
    pub fn ttl_drops(&self) -> u64 {
        self.ttl_drops
    }

    fn close(&mut self, pipe: PipeId, error: PeerError) {
        // The pipe is dead to the pattern from now on; the driver's later
        // `remove_pipe` finds nothing.
        self.peer = None;
        self.out.push_back(Output::ClosePipe { pipe, error });
    }
}

impl Protocol for Pair1 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Pair1
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Pair1, peer)?;
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
        if self.peer() != Some(pipe) {
            return;
        }
        let Some(hops) = msg.word_at(0) else {
            return self.close(pipe, PeerError::ShortHeader);
        };
        if hops > MAX_HOP_COUNT {
            return self.close(pipe, PeerError::BadHopCount(hops));
        }
        if hops > self.max_ttl {
            self.ttl_drops += 1;
            return;
        }
        let split = msg.split_header_at(4);
        debug_assert!(split, "4 bytes are there");
        if !self.raw {
            msg.header.clear();
        }
        self.out.push_back(Output::Deliver {
            ctx: CtxId::SOCKET,
            msg,
        });
    }

    fn can_send(&self) -> bool {
        self.peer.is_some_and(|p| p.credits > 0)
    }

    fn handle_send(&mut self, _ctx: CtxId, mut msg: Message, _now: Instant) -> Result<(), OpError> {
        match self.peer.as_mut() {
            Some(p) if p.credits > 0 => {
                // Cooked send: the header is exactly the hop count of the
                // first hop. Raw: the application's hop count, plus this hop
                // (NNG refuses a raw header that is missing or at 0xff).
                let hops = if self.raw {
                    match msg.header.first_word() {
                        Some(h) if h < MAX_HOP_COUNT => h + 1,
                        _ => return Err(CallerError::BadHeader.into()),
                    }
                } else {
                    1
                };
                p.credits -= 1;
                let mut header = Header::new();
                header.push_word(hops).expect("4 bytes fit");
                msg.header = header;
                self.out.push_back(Output::Transmit { pipe: p.pipe, msg });
            }
            // Contract breach (the driver must check `can_send`): dropped.
            _ => debug_assert!(false, "pair1: handle_send without can_send"),
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
            ..Counters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(p: &mut Pair1) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    fn wire(hops: u32, body: &[u8]) -> Message {
        let mut v = hops.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        Message::from_body(v)
    }

    fn paired() -> (Pair1, Instant) {
        let now = Instant::now();
        let mut p = Pair1::new(&Options::default());
        p.add_pipe(PipeId(1), 0x11, 2, now).unwrap();
        (p, now)
    }

    #[test]
    fn one_peer_only_and_peer_check() {
        let (mut p, now) = paired();
        assert_eq!(
            p.add_pipe(PipeId(2), 0x11, 1, now),
            Err(PeerError::AlreadyPaired)
        );
        assert_eq!(
            p.add_pipe(PipeId(3), 0x10, 1, now),
            Err(PeerError::WrongProtocol(0x10))
        );
        p.remove_pipe(PipeId(1), now);
        p.add_pipe(PipeId(2), 0x11, 1, now).unwrap();
        assert_eq!(p.peer(), Some(PipeId(2)));
    }

    #[test]
    fn raw_mode_exposes_and_increments_the_hop_count() {
        let now = Instant::now();
        let opts = Options {
            raw: true,
            ..Options::default()
        };
        let mut p = Pair1::new(&opts);
        p.add_pipe(PipeId(1), 0x11, 4, now).unwrap();
        p.handle_message(PipeId(1), wire(3, b"x"), now);
        match &drain(&mut p)[..] {
            [Output::Deliver { msg, .. }] => {
                assert_eq!(msg.header.as_slice(), &[0, 0, 0, 3]);
                assert_eq!(&msg.body[..], b"x");
            }
            o => panic!("{o:?}"),
        }
        let fwd = Message {
            header: Header::from_slice(&[0, 0, 0, 3]).unwrap(),
            body: "x".into(),
        };
        p.handle_send(CtxId::SOCKET, fwd, now).unwrap();
        match &drain(&mut p)[..] {
            [Output::Transmit { msg, .. }] => assert_eq!(msg.header.as_slice(), &[0, 0, 0, 4]),
            o => panic!("{o:?}"),
        }
        for bad in [Header::new(), Header::from_slice(&[0, 0, 0, 0xff]).unwrap()] {
            let m = Message {
                header: bad,
                body: "x".into(),
            };
            assert_eq!(
                p.handle_send(CtxId::SOCKET, m, now),
                Err(OpError::Caller(CallerError::BadHeader))
            );
        }
    }

    #[test]
    fn send_writes_hop_count_one() {
        let (mut p, now) = paired();
        p.handle_send(CtxId::SOCKET, Message::from_body("hi"), now)
            .unwrap();
        match &drain(&mut p)[..] {
            [Output::Transmit { pipe, msg }] => {
                assert_eq!(*pipe, PipeId(1));
                // As captured from pynng: 00000001 6869.
                assert_eq!(msg.header.as_slice(), &[0, 0, 0, 1]);
                assert_eq!(&msg.body[..], b"hi");
            }
            o => panic!("{o:?}"),
        }
        p.handle_send(CtxId::SOCKET, Message::from_body("x"), now)
            .unwrap();
        let _ = drain(&mut p);
        assert!(!p.can_send(), "two credits spent");
        p.handle_credit(PipeId(1), 1, now);
        assert!(p.can_send());
    }

    #[test]
    fn receive_strips_hop_count() {
        let (mut p, now) = paired();
        p.handle_message(PipeId(1), wire(3, b"body"), now);
        // Same message with the inproc split already made.
        let mut m = wire(0, b"b2");
        assert!(m.split_header_at(4));
        p.handle_message(PipeId(1), m, now);
        let got: Vec<_> = drain(&mut p)
            .into_iter()
            .map(|o| match o {
                Output::Deliver { ctx, msg } => {
                    assert_eq!(ctx, CtxId::SOCKET);
                    assert!(msg.header.is_empty());
                    msg.body.to_vec()
                }
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(got, vec![b"body".to_vec(), b"b2".to_vec()]);
    }

    #[test]
    fn ttl_drop_keeps_pipe() {
        let (mut p, now) = paired();
        // max_ttl is 8: 8 passes, 9 is dropped.
        p.handle_message(PipeId(1), wire(8, b"ok"), now);
        p.handle_message(PipeId(1), wire(9, b"no"), now);
        p.handle_message(PipeId(1), wire(0xff, b"no"), now);
        let out = drain(&mut p);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Output::Deliver { msg, .. } if &msg.body[..] == b"ok"));
        assert_eq!(p.ttl_drops(), 2);
        assert_eq!(p.peer(), Some(PipeId(1)));
        assert!(p.can_send());
    }

    #[test]
    fn bad_hop_count_closes() {
        let (mut p, now) = paired();
        p.handle_message(PipeId(1), wire(0x100, b"x"), now);
        match &drain(&mut p)[..] {
            [Output::ClosePipe { pipe, error }] => {
                assert_eq!(*pipe, PipeId(1));
                assert_eq!(*error, PeerError::BadHopCount(0x100));
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(p.peer(), None);
        assert!(!p.can_send());
    }

    #[test]
    fn short_header_closes() {
        let (mut p, now) = paired();
        p.handle_message(PipeId(1), Message::from_body(&b"\0\0\x01"[..]), now);
        match &drain(&mut p)[..] {
            [Output::ClosePipe { pipe, error }] => {
                assert_eq!(*pipe, PipeId(1));
                assert_eq!(*error, PeerError::ShortHeader);
            }
            o => panic!("{o:?}"),
        }
        // The driver's remove_pipe after the close is harmless, and a new
        // peer may attach.
        p.remove_pipe(PipeId(1), now);
        p.add_pipe(PipeId(2), 0x11, 1, now).unwrap();
    }

    #[test]
    fn ttl_follows_options() {
        let now = Instant::now();
        let opts = Options {
            max_ttl: 1,
            ..Options::default()
        };
        let mut p = Pair1::new(&opts);
        p.add_pipe(PipeId(1), 0x11, 1, now).unwrap();
        p.handle_message(PipeId(1), wire(1, b"a"), now);
        p.handle_message(PipeId(1), wire(2, b"b"), now);
        assert_eq!(drain(&mut p).len(), 1);
        assert_eq!(p.ttl_drops(), 1);
    }
}
