//! PUB v0 (0x20): every message goes to every SUB peer; the publisher never
//! blocks.
//!
//! # Wire
//!
//! No protocol header: the topic is simply the first bytes of the body, and
//! filtering happens only at the subscriber (NNG's `pub.c`, nanomsg's
//! `nn_pubsub`). A frame is exactly `| topic | data |`.
//!
//! # Send
//!
//! [`Protocol::can_send`] is always true. [`Protocol::handle_send`] fans the
//! message out (the body is shared, not copied) to every pipe:
//!
//! * a pipe with credit gets an [`Output::Transmit`] at once;
//! * a pipe without credit keeps it in its own queue of at most
//!   [`PIPE_QUEUE`] messages (NNG's per-pipe send queue of 16, `pub.c`).
//!   When that queue is full its **oldest** message is dropped to make room
//!   and counted ([`Pub0::queue_drops`]), as NNG evicts the oldest: a slow
//!   subscriber loses old messages, never blocks the publisher or the other
//!   subscribers.
//!
//! A pipe's queue drains in order as credit comes back
//! ([`Protocol::handle_credit`]); it is forgotten with the pipe (those
//! messages are not counted as queue drops). Whatever header the caller put on
//! a message is sent in front of the body unchanged (a raw PUB forwards what
//! it is given).
//!
//! # Receive
//!
//! Nothing: messages from SUB peers are ignored, as in NNG. Only SUB (0x21)
//! peers are accepted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{OpError, PeerError};
use crate::message::Message;
use crate::options::Options;

/// Messages one pipe may hold waiting for credit; past it the oldest is
/// dropped. NNG's default per-pipe PUB queue depth.
pub const PIPE_QUEUE: usize = 16;

/// One subscriber pipe: its credits and the messages waiting for them.
/// Invariant: `credits == 0 || queue.is_empty()`.
#[derive(Debug, Default)]
struct PipeState {
    credits: u32,
    queue: VecDeque<Message>,
}

/// PUB state: pipes (in id order, so fan-out order is deterministic) with
/// their credits and queues, and the drop counter.
#[derive(Debug, Default)]
pub struct Pub0 {
    pipes: BTreeMap<PipeId, PipeState>,
    queue_drops: u64,
    out: VecDeque<Output>,
}

impl Pub0 {
    /// A pub socket with no pipes.
    pub fn new(_opts: &Options) -> Self {
        Pub0::default()
    }

    /// Messages dropped because a pipe's queue already held [`PIPE_QUEUE`]
    /// messages (the oldest one is the one dropped).
    pub fn queue_drops(&self) -> u64 {
        self.queue_drops
    }
}

impl Protocol for Pub0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Pub0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Pub0, peer)?;
        self.pipes.insert(
            pipe,
            PipeState {
                credits,
                queue: VecDeque::new(),
            },
        );
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        self.pipes.remove(&pipe);
    }

    fn handle_credit(&mut self, pipe: PipeId, credits: u32, _now: Instant) {
        let Some(p) = self.pipes.get_mut(&pipe) else {
            return;
        };
        p.credits = p.credits.saturating_add(credits);
        while p.credits > 0 {
            let Some(msg) = p.queue.pop_front() else {
                break;
            };
            p.credits -= 1;
            self.out.push_back(Output::Transmit { pipe, msg });
        }
    }

    fn handle_message(&mut self, _pipe: PipeId, _msg: Message, _now: Instant) {}

    fn can_send(&self) -> bool {
        true
    }

    fn handle_send(&mut self, _ctx: CtxId, msg: Message, _now: Instant) -> Result<(), OpError> {
        for (&pipe, p) in &mut self.pipes {
            if p.credits > 0 {
                debug_assert!(p.queue.is_empty());
                p.credits -= 1;
                self.out.push_back(Output::Transmit {
                    pipe,
                    msg: msg.clone(),
                });
            } else {
                if p.queue.len() >= PIPE_QUEUE {
                    p.queue.pop_front();
                    self.queue_drops += 1;
                }
                p.queue.push_back(msg.clone());
            }
        }
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn counters(&self) -> super::Counters {
        super::Counters {
            queue_drops: self.queue_drops(),
            ..super::Counters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header;
    use std::time::Duration;

    const SUB: u16 = 0x21;

    fn tx(p: &mut Pub0) -> Vec<(u32, Vec<u8>)> {
        std::iter::from_fn(|| p.poll_output())
            .map(|o| match o {
                Output::Transmit { pipe, msg } => {
                    assert!(msg.header.is_empty());
                    (pipe.0, msg.body.to_vec())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn send(p: &mut Pub0, body: &str, now: Instant) {
        assert!(p.can_send(), "the publisher never blocks");
        p.handle_send(CtxId::SOCKET, Message::from_body(body.to_string()), now)
            .unwrap();
    }

    #[test]
    fn refuses_wrong_peer() {
        let now = Instant::now();
        let mut p = Pub0::new(&Options::default());
        for peer in [0x20, 0x30, 0x51, 0x70] {
            assert_eq!(
                p.add_pipe(PipeId(1), peer, 1, now),
                Err(PeerError::WrongProtocol(peer))
            );
        }
        p.add_pipe(PipeId(1), SUB, 1, now).unwrap();
        send(&mut p, "x", now);
        assert_eq!(tx(&mut p), vec![(1, b"x".to_vec())]);
    }

    #[test]
    fn no_pipes_never_blocks() {
        let now = Instant::now();
        let mut p = Pub0::new(&Options::default());
        for _ in 0..100 {
            send(&mut p, "lost", now);
        }
        assert!(tx(&mut p).is_empty());
        assert_eq!(p.queue_drops(), 0, "nobody to queue for");
    }

    #[test]
    fn fans_out_to_every_pipe_sharing_the_body() {
        let now = Instant::now();
        let mut p = Pub0::new(&Options::default());
        for id in [3, 1, 2] {
            p.add_pipe(PipeId(id), SUB, 4, now).unwrap();
        }
        let body = bytes::Bytes::from_static(b"topic:data");
        p.handle_send(CtxId::SOCKET, Message::from_body(body.clone()), now)
            .unwrap();
        let mut seen = Vec::new();
        while let Some(o) = p.poll_output() {
            match o {
                Output::Transmit { pipe, msg } => {
                    assert_eq!(msg.body.as_ptr(), body.as_ptr(), "body shared");
                    seen.push(pipe.0);
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn pipe_without_credit_queues_and_drains_in_order() {
        let base = Instant::now();
        let mut p = Pub0::new(&Options::default());
        p.add_pipe(PipeId(1), SUB, 1, base).unwrap();
        p.add_pipe(PipeId(2), SUB, 0, base).unwrap();
        send(&mut p, "a", base);
        assert_eq!(tx(&mut p), vec![(1, b"a".to_vec())]);
        send(&mut p, "b", base + Duration::from_millis(1));
        send(&mut p, "c", base + Duration::from_millis(2));
        assert!(tx(&mut p).is_empty(), "both pipes are out of credit");
        // Pipe 2 gets everything in order as credit returns; pipe 1 too.
        p.handle_credit(PipeId(2), 2, base + Duration::from_millis(3));
        assert_eq!(tx(&mut p), vec![(2, b"a".to_vec()), (2, b"b".to_vec())]);
        p.handle_credit(PipeId(1), 10, base + Duration::from_millis(4));
        assert_eq!(tx(&mut p), vec![(1, b"b".to_vec()), (1, b"c".to_vec())]);
        p.handle_credit(PipeId(2), 1, base + Duration::from_millis(5));
        assert_eq!(tx(&mut p), vec![(2, b"c".to_vec())]);
        // Pipe 1 has credit left (10 - 2): a new message goes at once.
        send(&mut p, "d", base + Duration::from_millis(6));
        assert_eq!(tx(&mut p), vec![(1, b"d".to_vec())]);
        p.handle_credit(PipeId(2), 1, base + Duration::from_millis(7));
        assert_eq!(tx(&mut p), vec![(2, b"d".to_vec())]);
        assert_eq!(p.queue_drops(), 0);
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let base = Instant::now();
        let mut p = Pub0::new(&Options::default());
        p.add_pipe(PipeId(1), SUB, 0, base).unwrap();
        p.add_pipe(PipeId(2), SUB, 64, base).unwrap();
        let n = PIPE_QUEUE + 5;
        for i in 0..n {
            send(
                &mut p,
                &format!("m{i}"),
                base + Duration::from_millis(i as u64),
            );
        }
        // The pipe with credit got all of them; the slow one lost the oldest 5.
        let fast = tx(&mut p);
        assert_eq!(fast.len(), n);
        assert!(fast.iter().all(|(pipe, _)| *pipe == 2));
        assert_eq!(p.queue_drops(), 5);
        p.handle_credit(PipeId(1), 100, base + Duration::from_secs(1));
        let slow: Vec<Vec<u8>> = tx(&mut p).into_iter().map(|(_, b)| b).collect();
        let want: Vec<Vec<u8>> = (5..n).map(|i| format!("m{i}").into_bytes()).collect();
        assert_eq!(slow, want, "the newest PIPE_QUEUE messages, in order");
    }

    #[test]
    fn removed_pipe_forgets_its_queue() {
        let base = Instant::now();
        let mut p = Pub0::new(&Options::default());
        p.add_pipe(PipeId(1), SUB, 0, base).unwrap();
        send(&mut p, "a", base);
        p.remove_pipe(PipeId(1), base + Duration::from_millis(1));
        p.handle_credit(PipeId(1), 5, base + Duration::from_millis(2));
        assert!(
            tx(&mut p).is_empty(),
            "credit for a removed pipe is ignored"
        );
        // The id comes back as a new pipe with an empty queue.
        p.add_pipe(PipeId(1), SUB, 1, base + Duration::from_millis(3))
            .unwrap();
        p.handle_credit(PipeId(1), 1, base + Duration::from_millis(4));
        assert!(tx(&mut p).is_empty());
        send(&mut p, "b", base + Duration::from_millis(5));
        assert_eq!(tx(&mut p), vec![(1, b"b".to_vec())]);
        assert_eq!(p.queue_drops(), 0);
        p.remove_pipe(PipeId(42), base + Duration::from_millis(6));
    }

    #[test]
    fn incoming_messages_are_ignored() {
        let now = Instant::now();
        let mut p = Pub0::new(&Options::default());
        p.add_pipe(PipeId(1), SUB, 1, now).unwrap();
        p.handle_message(PipeId(1), Message::from_body("from a sub"), now);
        p.handle_message(PipeId(9), Message::from_body("unknown pipe"), now);
        assert!(p.poll_output().is_none());
        assert!(p.open_ctx().is_err());
        assert_eq!(
            p.subscribe(CtxId::SOCKET, b""),
            Err(crate::error::CallerError::NotSupported)
        );
    }

    #[test]
    fn caller_header_goes_in_front() {
        let now = Instant::now();
        let mut p = Pub0::new(&Options::default());
        p.add_pipe(PipeId(1), SUB, 1, now).unwrap();
        let msg = Message {
            header: Header::from_slice(b"top").unwrap(),
            body: "ic".into(),
        };
        p.handle_send(CtxId::SOCKET, msg, now).unwrap();
        match p.poll_output() {
            Some(Output::Transmit { msg, .. }) => {
                assert_eq!(msg.header.as_slice(), b"top");
                assert_eq!(&msg.body[..], b"ic");
            }
            o => panic!("{o:?}"),
        }
    }
}
