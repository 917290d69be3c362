//! RESPONDENT v0 (0x63): the raw RESPONDENT core; responses are routed by
//! the header.
//!
//! # Wire
//!
//! A survey's payload starts with its backtrace, exactly as a REQ/REP
//! request's: 32-bit big-endian words, one per hop, the last (the survey id)
//! with the top bit set:
//!
//! ```text
//! | 0|hop id | 0|hop id | ... | 1|survey id | body |
//! ```
//!
//! Without devices a SURVEYOR sends exactly `| 1|survey id | body |`, and the
//! response goes back with the same backtrace in front.
//!
//! # Receive
//!
//! As NNG's `respond.c`/`xrespond.c` (the same loop as REP's): words move
//! from the front of the payload into the header until one has the top bit
//! set (that word included). Every word is one hop; before reading a word
//! beyond [`Options::max_ttl`](crate::Options::max_ttl) the survey is dropped and counted
//! ([`Respondent0::ttl_drops`]) and the pipe kept, because long backtraces
//! legitimately come through devices. A payload that runs out first is
//! garbage: the pipe is closed ([`PeerError::NoBacktraceEnd`](crate::PeerError::NoBacktraceEnd)).
//!
//! A survey is delivered to the socket's context with the header
//! `| pipe id | backtrace |`: the receiving pipe's id (top bit clear) in
//! front, as a raw NNG RESPONDENT does. The cooked RESPONDENT in the facade
//! keeps that header per context and sends it back with the response.
//!
//! # Send
//!
//! [`Protocol::handle_send`](super::Protocol::handle_send) takes a message whose header starts with a pipe
//! id word: the word is popped and the rest (header and body) goes to that
//! pipe. A respondent never blocks the socket on one surveyor, so
//! [`Protocol::can_send`](super::Protocol::can_send) is always true; a response whose pipe's write
//! queue is momentarily full waits in that pipe's backlog, which drains as
//! credits return, in order. Responses are dropped and counted
//! ([`Respondent0::unroutable_drops`]) only when their pipe is gone, or when
//! the backlog already holds [`MAX_BACKLOG`] responses or
//! [`MAX_BACKLOG_BYTES`](super::rep0::MAX_BACKLOG_BYTES) bytes; the pipe's
//! reads are paused while its backlog is large, as REP's are (see
//! [`rep0`](super::rep0)). A header shorter than
//! one word is the caller's mistake ([`CallerError::BadState`](crate::CallerError::BadState)).
//!
//! Contexts are not kept here: the cooked facade keeps each context's
//! backtrace and uses this core as its raw transport.

use super::rep0::{AnswerKind, RawAnswerer};
use super::ProtocolKind;

pub use super::rep0::MAX_BACKLOG;

/// RESPONDENT (see the module docs).
#[derive(Debug)]
pub struct Respondent;

impl AnswerKind for Respondent {
    const KIND: ProtocolKind = ProtocolKind::Respondent0;
}

/// The RESPONDENT state machine: the REP core with RESPONDENT's ids (the
/// wire rules are the same; see [`super::rep0`]).
pub type Respondent0 = RawAnswerer<Respondent>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CallerError, OpError, PeerError};
    use crate::message::{Header, Message, MAX_HEADER};
    use crate::options::Options;
    use crate::protocol::Counters;
    use crate::protocol::{CtxId, Output, PipeId, Protocol};
    use std::time::Instant;

    const SURVEYOR: u16 = 0x62;

    fn drain(p: &mut Respondent0) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    fn words(ws: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = ws.iter().flat_map(|w| w.to_be_bytes()).collect();
        v.extend_from_slice(body);
        v
    }

    /// Pipe 5 with two credits, pipe 6 with one.
    fn respondent() -> (Respondent0, Instant) {
        let now = Instant::now();
        let mut r = Respondent0::new(&Options::default());
        r.add_pipe(PipeId(5), SURVEYOR, 2, now).unwrap();
        r.add_pipe(PipeId(6), SURVEYOR, 1, now).unwrap();
        (r, now)
    }

    fn delivered(r: &mut Respondent0) -> Message {
        match &mut drain(r)[..] {
            [Output::Deliver { ctx, msg }] => {
                assert_eq!(*ctx, CtxId::SOCKET);
                std::mem::take(msg)
            }
            o => panic!("{o:?}"),
        }
    }

    fn routed(pipe: u32, rest: &[u32], body: &'static str) -> Message {
        let mut h = Header::new();
        h.push_word(pipe).unwrap();
        for w in rest {
            h.push_word(*w).unwrap();
        }
        Message {
            header: h,
            body: body.into(),
        }
    }

    /// (pipe, header, body) of every transmission; panics on anything else.
    fn sent(out: Vec<Output>) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
        out.into_iter()
            .map(|o| match o {
                Output::Transmit { pipe, msg } => {
                    (pipe.0, msg.header.as_slice().to_vec(), msg.body.to_vec())
                }
                o => panic!("{o:?}"),
            })
            .collect()
    }

    #[test]
    fn refuses_wrong_peer() {
        let now = Instant::now();
        let mut r = Respondent0::new(&Options::default());
        for peer in [0x63, 0x30, 0x31, 0x60] {
            assert_eq!(
                r.add_pipe(PipeId(1), peer, 1, now),
                Err(PeerError::WrongProtocol(peer))
            );
        }
        r.add_pipe(PipeId(1), SURVEYOR, 1, now).unwrap();
        assert_eq!(r.kind(), ProtocolKind::Respondent0);
        assert!(r.open_ctx().is_err(), "contexts live in the facade");
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn one_hop_backtrace() {
        let (mut r, now) = respondent();
        // As captured from pynng: dee9ebba + body.
        r.handle_message(
            PipeId(5),
            Message::from_body(words(&[0xdee9_ebba], b"survey")),
            now,
        );
        let m = delivered(&mut r);
        assert_eq!(m.header.as_slice(), &words(&[5, 0xdee9_ebba], b"")[..]);
        assert_eq!(&m.body[..], b"survey");
        // An empty body after the id is fine.
        r.handle_message(
            PipeId(6),
            Message::from_body(words(&[0x8000_0000], b"")),
            now,
        );
        let m = delivered(&mut r);
        assert_eq!(m.header.as_slice(), &words(&[6, 0x8000_0000], b"")[..]);
        assert!(m.body.is_empty());
    }

    #[test]
    fn several_hops_and_inproc_split() {
        let (mut r, now) = respondent();
        let payload = words(&[0x11, 0x7fff_ffff, 0x8000_0007], b"body");
        r.handle_message(PipeId(6), Message::from_body(payload.clone()), now);
        let m = delivered(&mut r);
        assert_eq!(
            m.header.as_slice(),
            &words(&[6, 0x11, 0x7fff_ffff, 0x8000_0007], b"")[..]
        );
        assert_eq!(&m.body[..], b"body");
        // The same payload over inproc, split inside a word, and split past
        // the backtrace.
        for split in [6, 14] {
            let mut msg = Message::from_body(payload.clone());
            assert!(msg.split_header_at(split));
            r.handle_message(PipeId(6), msg, now);
            let m = delivered(&mut r);
            assert_eq!(
                m.header.as_slice(),
                &words(&[6, 0x11, 0x7fff_ffff, 0x8000_0007], b"")[..]
            );
            assert_eq!(&m.body[..], b"body");
        }
    }

    #[test]
    fn ttl_drop_keeps_pipe() {
        let (mut r, now) = respondent();
        // max_ttl 8: 8 words (7 hops + id) pass, 9 are dropped.
        let mut eight: Vec<u32> = (1..8).collect();
        eight.push(0x8000_0001);
        r.handle_message(PipeId(5), Message::from_body(words(&eight, b"ok")), now);
        assert_eq!(delivered(&mut r).header.len(), 4 * 9);
        let mut nine: Vec<u32> = (1..9).collect();
        nine.push(0x8000_0001);
        r.handle_message(PipeId(5), Message::from_body(words(&nine, b"no")), now);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.ttl_drops(), 1);
        // The TTL is checked before the end of the payload: nine words
        // without an end are dropped, not closed.
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
        // A smaller max_ttl.
        let mut r = Respondent0::new(&Options {
            max_ttl: 1,
            ..Options::default()
        });
        r.add_pipe(PipeId(1), SURVEYOR, 1, now).unwrap();
        r.handle_message(
            PipeId(1),
            Message::from_body(words(&[1, 0x8000_0001], b"")),
            now,
        );
        assert!(drain(&mut r).is_empty());
        assert_eq!(
            r.counters(),
            Counters {
                ttl_drops: 1,
                unroutable_drops: 0,
                queue_drops: 0,
            }
        );
    }

    #[test]
    fn max_ttl_limit_fits_header() {
        let now = Instant::now();
        let mut r = Respondent0::new(&Options {
            max_ttl: 15,
            ..Options::default()
        });
        r.add_pipe(PipeId(0x7fff_ffff), SURVEYOR, 1, now).unwrap();
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
    fn no_end_word_closes() {
        let (mut r, now) = respondent();
        r.handle_message(PipeId(5), Message::from_body(words(&[1, 2], b"xy")), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                pipe: PipeId(5),
                error: PeerError::NoBacktraceEnd
            }]
        ));
        // Forgotten at once: responses to it are unroutable, messages ignored.
        r.handle_send(CtxId::SOCKET, routed(5, &[0x8000_0001], "r"), now)
            .unwrap();
        r.handle_message(
            PipeId(5),
            Message::from_body(words(&[0x8000_0001], b"")),
            now,
        );
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.unroutable_drops(), 1);
        // Empty and 3-byte payloads are as broken.
        r.handle_message(PipeId(6), Message::default(), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                pipe: PipeId(6),
                error: PeerError::NoBacktraceEnd
            }]
        ));
        r.add_pipe(PipeId(7), SURVEYOR, 1, now).unwrap();
        r.handle_message(PipeId(7), Message::from_body(&b"\x80\0\0"[..]), now);
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::ClosePipe {
                pipe: PipeId(7),
                error: PeerError::NoBacktraceEnd
            }]
        ));
    }

    #[test]
    fn routes_response_to_its_pipe() {
        let (mut r, now) = respondent();
        r.handle_message(
            PipeId(6),
            Message::from_body(words(&[0x44, 0x8000_0009], b"q")),
            now,
        );
        let survey = delivered(&mut r);
        let response = Message {
            header: survey.header,
            body: "answer".into(),
        };
        assert!(r.can_send());
        r.handle_send(CtxId::SOCKET, response, now).unwrap();
        assert_eq!(
            sent(drain(&mut r)),
            vec![(6, words(&[0x44, 0x8000_0009], b""), b"answer".to_vec())]
        );
        r.handle_send(CtxId::SOCKET, routed(5, &[0x8000_0001], "to 5"), now)
            .unwrap();
        assert_eq!(
            sent(drain(&mut r)),
            vec![(5, words(&[0x8000_0001], b""), b"to 5".to_vec())]
        );
        assert_eq!(r.unroutable_drops(), 0);
        // Unknown pipes: dropped and counted.
        r.handle_send(CtxId::SOCKET, routed(99, &[0x8000_0001], "x"), now)
            .unwrap();
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.unroutable_drops(), 1);
        assert_eq!(r.counters().unroutable_drops, 1);
    }

    #[test]
    fn backlog_waits_for_credit_in_order() {
        let (mut r, now) = respondent();
        // Pipe 6 has one credit: the first goes, the next two wait.
        for b in ["first", "second", "third"] {
            r.handle_send(CtxId::SOCKET, routed(6, &[0x8000_0001], b), now)
                .unwrap();
        }
        assert!(r.can_send(), "always");
        assert_eq!(sent(drain(&mut r)).len(), 1);
        assert_eq!(r.unroutable_drops(), 0);
        r.handle_credit(PipeId(6), 1, now);
        assert_eq!(sent(drain(&mut r))[0].2, b"second");
        // Once a backlog exists, a new response queues behind it even if a
        // credit arrived in between (order is kept).
        r.handle_credit(PipeId(6), 0, now);
        r.handle_send(CtxId::SOCKET, routed(6, &[0x8000_0001], "fourth"), now)
            .unwrap();
        assert!(drain(&mut r).is_empty());
        r.handle_credit(PipeId(6), 5, now);
        let bodies: Vec<Vec<u8>> = sent(drain(&mut r)).into_iter().map(|t| t.2).collect();
        assert_eq!(bodies, vec![b"third".to_vec(), b"fourth".to_vec()]);
        // Backlog empty and credit left: straight out.
        r.handle_send(CtxId::SOCKET, routed(6, &[0x8000_0001], "fifth"), now)
            .unwrap();
        assert_eq!(sent(drain(&mut r))[0].2, b"fifth");
        // Credit for unknown pipes is ignored.
        r.handle_credit(PipeId(42), 3, now);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn backlog_is_bounded_and_lost_with_its_pipe() {
        let now = Instant::now();
        let mut r = Respondent0::new(&Options::default());
        r.add_pipe(PipeId(6), SURVEYOR, 0, now).unwrap();
        // Held as survey id + body: bounded in bytes before the count.
        let fit = (super::super::rep0::MAX_BACKLOG_BYTES
            / (4 + 1 + super::super::rep0::MSG_OVERHEAD))
            .min(MAX_BACKLOG);
        for _ in 0..fit + 3 {
            r.handle_send(CtxId::SOCKET, routed(6, &[0x8000_0001], "r"), now)
                .unwrap();
        }
        // Only the pause of that pipe's reads came out.
        assert!(matches!(
            &drain(&mut r)[..],
            [Output::PausePipe {
                pipe: PipeId(6),
                paused: true
            }]
        ));
        assert_eq!(r.unroutable_drops(), 3);
        r.handle_credit(PipeId(6), 2, now);
        assert_eq!(drain(&mut r).len(), 2);
        r.remove_pipe(PipeId(6), now);
        assert_eq!(r.unroutable_drops(), 3 + fit as u64 - 2);
        r.remove_pipe(PipeId(6), now);
        r.handle_credit(PipeId(6), 2, now);
        assert!(drain(&mut r).is_empty());
        // A pipe id re-added without a remove loses its old backlog.
        r.add_pipe(PipeId(7), SURVEYOR, 0, now).unwrap();
        r.handle_send(CtxId::SOCKET, routed(7, &[0x8000_0001], "old"), now)
            .unwrap();
        r.add_pipe(PipeId(7), SURVEYOR, 1, now).unwrap();
        assert_eq!(r.unroutable_drops(), 3 + fit as u64 - 1);
        r.handle_credit(PipeId(7), 1, now);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn send_needs_pipe_word() {
        let (mut r, now) = respondent();
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
        assert_eq!(r.unroutable_drops(), 0);
    }

    #[test]
    fn unknown_pipe_messages_ignored() {
        let (mut r, now) = respondent();
        r.handle_message(PipeId(99), Message::default(), now);
        r.handle_message(
            PipeId(99),
            Message::from_body(words(&[0x8000_0001], b"")),
            now,
        );
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.counters(), Counters::default());
    }
}
