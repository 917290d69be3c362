//! BUS v0 (0x70): the raw BUS core; every message goes to every directly
//! connected peer.
//!
//! # Wire
//!
//! No protocol header on the wire: a cooked NNG bus sends the bare body.
//! BUS peers only talk to BUS (0x70). There is no forwarding: a message goes
//! one hop, to the sender's direct peers (a full mesh is built by hand).
//!
//! # Receive
//!
//! As a raw NNG bus (`bus0` in raw mode): a message from a pipe is delivered
//! to the socket's context with the header set to that pipe's id (one 32-bit
//! big-endian word, top bit clear) and the whole payload (`header ++ body`,
//! whatever split inproc kept) as the body. The cooked bus in the facade
//! strips that word before the application sees the message.
//!
//! # Send
//!
//! [`Protocol::handle_send`] never blocks ([`Protocol::can_send`] is always
//! true):
//!
//! * an empty header: the message goes to every pipe;
//! * a header of at least 4 bytes: its first word is popped and names the
//!   pipe the message came from; the message goes to every pipe **except**
//!   that one, so a single raw BUS socket can rebroadcast what it receives
//!   without echoing it back (nanomsg: "Raw BUS socket never sends the
//!   message to the peer it was received from"). A word naming no pipe (or
//!   with the top bit set, which no pipe id has) excludes nothing. Whatever
//!   header is left after the word goes on the wire in front of the body,
//!   as NNG does;
//! * a header of 1 to 3 bytes names no pipe and is sent in front of the body
//!   unchanged (NNG only pops a word when there is a whole one).
//!
//! A pipe without credit simply does not get the message: it is dropped for
//! that pipe and counted ([`Bus0::drops`]); the other pipes are not held
//! back. BUS has no contexts.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{OpError, PeerError};
use crate::message::{Header, Message};
use crate::options::Options;

/// BUS state: pipes (in id order, so fan-out order is deterministic) with
/// their credits, and the drop counter.
#[derive(Debug, Default)]
pub struct Bus0 {
    pipes: BTreeMap<PipeId, u32>,
    drops: u64,
    out: VecDeque<Output>,
}

impl Bus0 {
    /// A bus socket with no pipes.
    pub fn new(_opts: &Options) -> Self {
        Bus0::default()
    }

    /// Copies of sent messages dropped because their pipe had no credit (one
    /// per pipe that missed a message).
    pub fn drops(&self) -> u64 {
        self.drops
    }
}

impl Protocol for Bus0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Bus0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Bus0, peer)?;
        self.pipes.insert(pipe, credits);
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        self.pipes.remove(&pipe);
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        if let Some(c) = self.pipes.get_mut(&pipe) {
            *c = c.saturating_add(credits);
        }
    }

    fn handle_message(&mut self, pipe: PipeId, msg: Message, _now: Instant) {
        if !self.pipes.contains_key(&pipe) {
            return;
        }
        let body = if msg.header.is_empty() {
            msg.body
        } else {
            let mut b = Vec::with_capacity(msg.wire_len());
            b.extend_from_slice(msg.header.as_slice());
            b.extend_from_slice(&msg.body);
            Bytes::from(b)
        };
        let mut header = Header::new();
        header.push_word(pipe.0).expect("4 bytes fit");
        self.out.push_back(Output::Deliver {
            ctx: CtxId::SOCKET,
            msg: Message { header, body },
        });
    }

    fn can_send(&self) -> bool {
        true
    }

    fn handle_send(&mut self, _ctx: CtxId, mut msg: Message, _now: Instant) -> Result<(), OpError> {
        let from = if msg.header.len() >= 4 {
            msg.header.pop_word_front().map(PipeId)
        } else {
            None
        };
        for (&pipe, credits) in &mut self.pipes {
            if Some(pipe) == from {
                continue;
            }
            if *credits == 0 {
                self.drops += 1;
                continue;
            }
            *credits -= 1;
            self.out.push_back(Output::Transmit {
                pipe,
                msg: msg.clone(),
            });
        }
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn counters(&self) -> super::Counters {
        super::Counters {
            queue_drops: self.drops(),
            ..super::Counters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CallerError;
    use std::time::Duration;

    const BUS: u16 = 0x70;

    fn bus(credits: &[(u32, u32)]) -> (Bus0, Instant) {
        let base = Instant::now();
        let mut b = Bus0::new(&Options::default());
        for &(pipe, c) in credits {
            b.add_pipe(PipeId(pipe), BUS, c, base).unwrap();
        }
        (b, base)
    }

    /// Transmissions as (pipe, header ++ body).
    fn tx(b: &mut Bus0) -> Vec<(u32, Vec<u8>)> {
        std::iter::from_fn(|| b.poll_output())
            .map(|o| match o {
                Output::Transmit { pipe, msg } => {
                    let mut v = msg.header.as_slice().to_vec();
                    v.extend_from_slice(&msg.body);
                    (pipe.0, v)
                }
                o => panic!("{o:?}"),
            })
            .collect()
    }

    fn with_header(header: &[u8], body: &str) -> Message {
        Message {
            header: Header::from_slice(header).unwrap(),
            body: body.to_string().into(),
        }
    }

    #[test]
    fn refuses_other_peers() {
        let now = Instant::now();
        let mut b = Bus0::new(&Options::default());
        for peer in [0x10, 0x20, 0x21, 0x71] {
            assert_eq!(
                b.add_pipe(PipeId(1), peer, 1, now),
                Err(PeerError::WrongProtocol(peer))
            );
        }
        b.add_pipe(PipeId(1), BUS, 1, now).unwrap();
        assert_eq!(b.open_ctx(), Err(CallerError::NoContexts));
    }

    #[test]
    fn empty_header_goes_to_every_pipe() {
        let (mut b, base) = bus(&[(3, 1), (1, 1), (2, 1)]);
        assert!(b.can_send());
        let body = Bytes::from_static(b"hello");
        b.handle_send(CtxId::SOCKET, Message::from_body(body.clone()), base)
            .unwrap();
        let mut seen = Vec::new();
        while let Some(o) = b.poll_output() {
            match o {
                Output::Transmit { pipe, msg } => {
                    assert!(msg.header.is_empty());
                    assert_eq!(msg.body.as_ptr(), body.as_ptr(), "body shared");
                    seen.push(pipe.0);
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(b.drops(), 0);
    }

    #[test]
    fn pipe_word_excludes_the_sender() {
        let (mut b, base) = bus(&[(1, 8), (2, 8), (3, 8)]);
        b.handle_send(CtxId::SOCKET, with_header(&[0, 0, 0, 2], "x"), base)
            .unwrap();
        assert_eq!(tx(&mut b), vec![(1, b"x".to_vec()), (3, b"x".to_vec())]);
        // A word naming no live pipe, or with the top bit set, excludes
        // nothing; the word itself never goes on the wire.
        for word in [9u32, 0x8000_0002] {
            b.handle_send(
                CtxId::SOCKET,
                with_header(&word.to_be_bytes(), "y"),
                base + Duration::from_millis(1),
            )
            .unwrap();
            assert_eq!(
                tx(&mut b),
                vec![(1, b"y".to_vec()), (2, b"y".to_vec()), (3, b"y".to_vec())]
            );
        }
        // Only the first word is popped; the rest of the header is sent.
        b.handle_send(
            CtxId::SOCKET,
            with_header(&[0, 0, 0, 1, 0xaa, 0xbb], "z"),
            base + Duration::from_millis(2),
        )
        .unwrap();
        assert_eq!(
            tx(&mut b),
            vec![(2, b"\xaa\xbbz".to_vec()), (3, b"\xaa\xbbz".to_vec())]
        );
        // Fewer than 4 header bytes: no pipe named, sent as they are.
        b.handle_send(
            CtxId::SOCKET,
            with_header(&[0, 0, 1], "w"),
            base + Duration::from_millis(3),
        )
        .unwrap();
        assert_eq!(
            tx(&mut b),
            vec![
                (1, b"\0\0\x01w".to_vec()),
                (2, b"\0\0\x01w".to_vec()),
                (3, b"\0\0\x01w".to_vec())
            ]
        );
        assert_eq!(b.drops(), 0);
    }

    #[test]
    fn pipe_without_credit_misses_the_message() {
        let (mut b, base) = bus(&[(1, 1), (2, 0), (3, 2)]);
        b.handle_send(CtxId::SOCKET, Message::from_body("a"), base)
            .unwrap();
        assert_eq!(tx(&mut b), vec![(1, b"a".to_vec()), (3, b"a".to_vec())]);
        assert_eq!(b.drops(), 1);
        assert!(b.can_send(), "never blocks");
        b.handle_send(
            CtxId::SOCKET,
            Message::from_body("b"),
            base + Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(tx(&mut b), vec![(3, b"b".to_vec())]);
        assert_eq!(b.drops(), 3);
        // Credit back: only new messages go; nothing was kept.
        b.handle_credit(PipeId(2), 1, base + Duration::from_millis(2));
        assert!(tx(&mut b).is_empty());
        b.handle_send(
            CtxId::SOCKET,
            Message::from_body("c"),
            base + Duration::from_millis(3),
        )
        .unwrap();
        assert_eq!(tx(&mut b), vec![(2, b"c".to_vec())]);
        assert_eq!(b.drops(), 5);
        // The excluded pipe is not a drop.
        b.handle_send(
            CtxId::SOCKET,
            with_header(&[0, 0, 0, 1], "d"),
            base + Duration::from_millis(4),
        )
        .unwrap();
        assert!(tx(&mut b).is_empty());
        assert_eq!(b.drops(), 7);
    }

    #[test]
    fn no_pipes_never_blocks() {
        let (mut b, base) = bus(&[]);
        assert!(b.can_send());
        b.handle_send(CtxId::SOCKET, Message::from_body("x"), base)
            .unwrap();
        assert!(b.poll_output().is_none());
        assert_eq!(b.drops(), 0);
    }

    #[test]
    fn delivers_with_the_pipe_id_in_the_header() {
        let (mut b, base) = bus(&[(7, 1), (0x7fff_ffff, 1)]);
        b.handle_message(PipeId(7), Message::from_body("payload"), base);
        b.handle_message(
            PipeId(0x7fff_ffff),
            Message::from_body("p2"),
            base + Duration::from_millis(1),
        );
        let got: Vec<(Vec<u8>, Vec<u8>)> = std::iter::from_fn(|| b.poll_output())
            .map(|o| match o {
                Output::Deliver { ctx, msg } => {
                    assert_eq!(ctx, CtxId::SOCKET);
                    (msg.header.as_slice().to_vec(), msg.body.to_vec())
                }
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![0, 0, 0, 7], b"payload".to_vec()),
                (vec![0x7f, 0xff, 0xff, 0xff], b"p2".to_vec())
            ]
        );
    }

    #[test]
    fn inproc_split_is_one_payload() {
        let (mut b, base) = bus(&[(4, 1)]);
        let mut m = Message::from_body(&b"\0\0\0\x09rest"[..]);
        assert!(m.split_header_at(5));
        b.handle_message(PipeId(4), m, base);
        match b.poll_output() {
            Some(Output::Deliver { msg, .. }) => {
                assert_eq!(msg.header.as_slice(), &[0, 0, 0, 4]);
                assert_eq!(&msg.body[..], b"\0\0\0\x09rest");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn unknown_and_removed_pipes() {
        let (mut b, base) = bus(&[(1, 1), (2, 1)]);
        b.handle_message(PipeId(3), Message::from_body("x"), base);
        assert!(b.poll_output().is_none());
        b.remove_pipe(PipeId(2), base + Duration::from_millis(1));
        b.handle_message(PipeId(2), Message::from_body("x"), base);
        assert!(b.poll_output().is_none());
        b.handle_credit(PipeId(2), 5, base);
        b.handle_send(
            CtxId::SOCKET,
            Message::from_body("y"),
            base + Duration::from_millis(2),
        )
        .unwrap();
        assert_eq!(tx(&mut b), vec![(1, b"y".to_vec())]);
        b.remove_pipe(PipeId(99), base);
    }

    /// A single raw bus rebroadcasting what it receives: the received header
    /// sent back as is reaches every other pipe, never the origin.
    #[test]
    fn device_rebroadcast_round_trip() {
        let (mut b, base) = bus(&[(1, 8), (2, 8), (3, 8)]);
        for from in 1..=3u32 {
            b.handle_message(PipeId(from), Message::from_body("m"), base);
            let Some(Output::Deliver { msg, .. }) = b.poll_output() else {
                panic!("delivery");
            };
            b.handle_send(CtxId::SOCKET, msg, base).unwrap();
            let to: Vec<u32> = tx(&mut b)
                .into_iter()
                .map(|(p, bytes)| {
                    assert_eq!(bytes, b"m");
                    p
                })
                .collect();
            let want: Vec<u32> = (1..=3).filter(|p| *p != from).collect();
            assert_eq!(to, want);
        }
    }
}
