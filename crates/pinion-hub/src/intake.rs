//! One intake task per core: reads requests from that core's REP socket,
//! checks them, hands batches to the writer, and sends the answers back.
//!
//! In-flight bytes (requests handed to the writer and not answered yet) are
//! bounded per connection and for the whole hub:
//!
//! * a request that would take its connection over the per-connection cap
//!   is held, and that connection's pipe is paused
//!   ([`Socket::pause_pipe`]): the hub stops reading that socket, TCP
//!   pushes back on that client alone, and the few requests it had already
//!   sent wait in order. They go on (and the pipe is resumed) as the
//!   connection's earlier requests are answered;
//! * at the hub-wide cap the task stops taking requests from its socket
//!   altogether; the socket's queues fill, its pipes stop reading, and TCP
//!   pushes back on every client of that core.
//!
//! Held requests count toward the hub-wide cap from the moment they are
//! held (they are in the hub's memory as much as admitted ones), so a client
//! that pipelines without reading its acks cannot make a core hold more
//! than the cap; admitting them later moves their bytes from "held" to
//! "admitted" without counting them twice, so releasing them never takes
//! the hub past its cap either.
//!
//! # Fairness between connections
//!
//! Admitted requests wait in one queue per connection ([`Fair`]), and a
//! core hands the writer one batch at a time: the next only once the
//! writer has taken the previous one into a group (the batch's token is
//! dropped then), made of at most [`QUANTUM`] requests of each connection
//! in turn, [`MAX_SEND`] in all, connections that were idle first. So
//! what waits ahead of a request *in the intake* is at most the group
//! being committed and one batch, not everything every other connection
//! has in flight: a client that sends one request at a time gets it into
//! the next batch however many requests 200 pipelining clients have
//! queued here. The writer still always has the next batch when it
//! finishes a group, so a single pipelining client loses nothing.
//!
//! Under a burst of 100,000 requests from 200 connections (the hostile
//! suite's `req_never_read_replies`) an instrumented build showed where a
//! light client's request waits: before the intake takes it (its pipe's
//! turn on a saturated core), between the intake and its answer (the
//! batch ahead of it and its own group), and on the way back; the first
//! two about equally. docs/HARDENING.md has the figures.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pinion::{Message, Socket};
use pinion_proto::{Code, Message as _, Reply};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::envelope;
use crate::writer::{Answer, Item, ToWriter};
use crate::Shared;

/// Requests held because their connection is at its cap, per pipe, in
/// arrival order.
type Held = HashMap<u32, VecDeque<(Message, envelope::Checked, Instant)>>;

/// Requests taken from the socket per wake-up, at most.
const BATCH: usize = 512;

/// Requests of one connection per turn when a batch for the writer is
/// made.
const QUANTUM: usize = 16;

/// Requests in one batch for the writer, at most. A group is about one
/// batch per core, and a request that arrives while one is being
/// committed waits for it and its own: under a burst, groups of 8,192
/// took 5-25 ms to commit, groups of 2,048 take 0.5-2 ms. Throughput does
/// not need more: with 50 clients pipelining 16 each, groups hold about
/// 220 requests.
const MAX_SEND: usize = 1024;

/// Admitted requests not yet handed to the writer: a queue per connection,
/// served in turn, newly active connections first.
///
/// A connection whose queue was empty joins `fresh`, which is served
/// before the round of busy connections (`order`), as in DRR++ and
/// FQ-CoDel's new flows: a client with one request in flight gets it into
/// the very next batch, not behind one quantum of each of 100 pipelining
/// connections (1,600 requests, more than a batch holds). A fresh
/// connection then joins the back of `order`, even with nothing left, so
/// it is fresh again only after a whole round of the others: sending a
/// little at a time does not buy a permanent head of the line.
#[derive(Default)]
struct Fair {
    queues: HashMap<u32, VecDeque<Item>>,
    /// Connections that were idle, in arrival order; served first.
    fresh: VecDeque<u32>,
    /// The round of connections with requests (or just served fresh), in
    /// serving order.
    order: VecDeque<u32>,
    len: usize,
}

impl Fair {
    fn push(&mut self, pipe: u32, it: Item) {
        match self.queues.get_mut(&pipe) {
            Some(q) => q.push_back(it),
            None => {
                self.queues.insert(pipe, VecDeque::from([it]));
                self.fresh.push_back(pipe);
            }
        }
        self.len += 1;
    }

    /// Moves up to `max` requests into `out`, at most `quantum` of one
    /// connection per turn; fresh connections first, then the round, a
    /// connection with more going to the back of the round.
    fn take(&mut self, max: usize, quantum: usize, out: &mut Vec<Item>) {
        while out.len() < max {
            let (pipe, was_fresh) = match self.fresh.pop_front() {
                Some(p) => (p, true),
                None => match self.order.pop_front() {
                    Some(p) => (p, false),
                    None => break,
                },
            };
            let Some(q) = self.queues.get_mut(&pipe) else {
                continue;
            };
            let n = quantum.min(max - out.len()).min(q.len());
            out.extend(q.drain(..n));
            self.len -= n;
            if q.is_empty() && !was_fresh {
                self.queues.remove(&pipe);
            } else {
                self.order.push_back(pipe);
            }
        }
    }
}

/// Fixed accounting cost of a request besides its body: its [`Item`]
/// (184 bytes on x86-64: backtrace, decoded envelope, timestamps), which
/// becomes an [`Answer`] (224) on its way back, plus its topic's
/// allocation, its reply and queue slots, so that the in-flight caps bound
/// the memory small requests really take, not just their wire bytes.
const OVERHEAD: usize = std::mem::size_of::<Answer>() + 128;

pub(crate) struct Intake {
    pub core: usize,
    pub sock: Socket,
    pub to_writer: crate::writer::WriterTx,
    pub answers: UnboundedReceiver<Vec<Answer>>,
    pub shared: Arc<Shared>,
    pub max_payload: usize,
    pub max_total: usize,
    pub max_per_conn: usize,
    /// Tokens this core has checked (authentication on).
    pub tokens: crate::auth::TokenCache,
}

fn pipe_of(m: &Message) -> u32 {
    let h = m.header.as_slice();
    if h.len() >= 4 {
        u32::from_be_bytes([h[0], h[1], h[2], h[3]])
    } else {
        0
    }
}

impl Intake {
    pub async fn run(mut self) {
        let mut per_pipe: HashMap<u32, usize> = HashMap::new();
        let mut held: Held = HashMap::new();
        let mut batch = Fair::default();
        // Held by each batch on its way to the writer (see `pump`).
        let token = Arc::new(());
        loop {
            let room = self.shared.inflight.load(Ordering::Relaxed) < self.max_total;
            tokio::select! {
                biased;
                a = self.answers.recv() => {
                    let Some(answers) = a else { return };
                    let pipes = self.answer(answers, &mut per_pipe).await;
                    for pipe in pipes {
                        self.release(pipe, &mut per_pipe, &mut held, &mut batch);
                    }
                }
                // The hub-wide cap is shared with the other cores: look
                // again soon, as their answers free it.
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)), if !room => {}
                r = self.sock.recv_msg(), if room => {
                    let Ok(m) = r else { return };
                    self.take(m, &mut per_pipe, &mut held, &mut batch).await;
                    let mut taken = 1;
                    while taken < BATCH
                        && self.shared.inflight.load(Ordering::Relaxed) < self.max_total
                    {
                        match self.sock.try_recv_msg() {
                            Ok(Some(m)) => self.take(m, &mut per_pipe, &mut held, &mut batch).await,
                            _ => break,
                        }
                        taken += 1;
                    }
                }
            }
            if !self.pump(&mut batch, &token) {
                return;
            }
        }
    }

    /// Hands the writer the next batch if it has taken the last one (no
    /// batch holds `token` any more): up to [`MAX_SEND`] requests,
    /// [`QUANTUM`] of each connection in turn. `false` once the writer is
    /// gone.
    fn pump(&self, fair: &mut Fair, token: &Arc<()>) -> bool {
        if fair.len == 0 || Arc::strong_count(token) > 1 {
            return true;
        }
        // Sized to what it holds: a batch lives until the writer has made
        // it durable, and a full-capacity Vec per batch held while a
        // pipelining client's requests trickle in cost 50 MB once.
        let mut b = Vec::with_capacity(fair.len.min(MAX_SEND));
        fair.take(MAX_SEND, QUANTUM, &mut b);
        self.to_writer.send(ToWriter::Batch(b, token.clone()))
    }

    /// Checks one request: answers it at once (NACK), holds it (its
    /// connection is at its cap), or adds it to the batch for the writer.
    async fn take(
        &mut self,
        m: Message,
        per_pipe: &mut HashMap<u32, usize>,
        held: &mut Held,
        batch: &mut Fair,
    ) {
        let received = Instant::now();
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        if self.shared.shutting_down.load(Ordering::Acquire) {
            let seq = pinion_proto::Publish::decode(&m.body[..])
                .ok()
                .and_then(|p| p.seq);
            let r = Reply::nack(seq, Code::ShuttingDown, "the hub is shutting down");
            self.shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
            self.send(m.header, r).await;
            return;
        }
        let mut req = match envelope::check(&m.body, self.max_payload) {
            Ok(req) => req,
            Err(nack) => {
                self.shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
                self.send(m.header, nack).await;
                return;
            }
        };
        let pipe = pipe_of(&m);
        // The token is checked here and not kept with the request.
        let token = req.token.take();
        if let Some(auth) = &self.shared.auth {
            // Without a token in the request: the connection's own
            // credential (a WebSocket /pub opened with a token, or a TLS
            // client certificate named in [[auth.cert]]).
            let conn = match token {
                None => self.shared.conn_claims[self.core]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&pipe)
                    .cloned()
                    .or_else(|| {
                        let id = self.sock.peer_identity(pinion::PipeId(pipe))?;
                        auth.cert_claims(&id)
                    }),
                Some(_) => None,
            };
            let now = pinion_auth::Verifier::now();
            let r = self
                .tokens
                .publish(auth, token.as_deref(), conn.as_deref(), &req.topic, now);
            if let Err(refused) = r {
                let code = if refused.reason.is_forbidden() {
                    Code::Forbidden
                } else {
                    Code::Unauthenticated
                };
                self.shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
                let nack = Reply::nack(Some(req.seq), code, refused.message);
                self.send(m.header, nack).await;
                return;
            }
        }
        let cost = m.body.len() + OVERHEAD;
        let used = per_pipe.get(&pipe).copied().unwrap_or(0);
        if let Some(q) = held.get_mut(&pipe) {
            // Behind earlier held requests of the same connection: in order.
            self.shared.inflight.fetch_add(cost, Ordering::Relaxed);
            q.push_back((m, req, received));
            return;
        }
        if used > 0 && used + cost > self.max_per_conn {
            self.shared.inflight.fetch_add(cost, Ordering::Relaxed);
            held.entry(pipe).or_default().push_back((m, req, received));
            self.sock.pause_pipe(pipe, true);
            self.shared.stats.paused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.inflight.fetch_add(cost, Ordering::Relaxed);
        self.admit(pipe, cost, m, req, received, per_pipe, batch);
    }

    /// Takes held requests of `pipe` while its connection has room again;
    /// resumes reading it once none is left. Their bytes were counted in the
    /// hub-wide total when they were held.
    fn release(
        &self,
        pipe: u32,
        per_pipe: &mut HashMap<u32, usize>,
        held: &mut Held,
        batch: &mut Fair,
    ) {
        let Some(q) = held.get_mut(&pipe) else { return };
        while let Some((m, _, _)) = q.front() {
            let cost = m.body.len() + OVERHEAD;
            let used = per_pipe.get(&pipe).copied().unwrap_or(0);
            if used > 0 && used + cost > self.max_per_conn {
                return;
            }
            let (m, req, received) = q.pop_front().expect("front exists");
            self.admit(pipe, cost, m, req, received, per_pipe, batch);
        }
        held.remove(&pipe);
        self.sock.pause_pipe(pipe, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        pipe: u32,
        cost: usize,
        m: Message,
        req: envelope::Checked,
        received: Instant,
        per_pipe: &mut HashMap<u32, usize>,
        batch: &mut Fair,
    ) {
        // The hub-wide total counted it already (when taken or held).
        *per_pipe.entry(pipe).or_insert(0) += cost;
        batch.push(
            pipe,
            Item {
                core: self.core,
                header: m.header,
                pipe,
                cost,
                req,
                received,
            },
        );
    }

    /// Sends answers back; returns the pipes whose in-flight bytes dropped.
    async fn answer(
        &mut self,
        answers: Vec<Answer>,
        per_pipe: &mut HashMap<u32, usize>,
    ) -> Vec<u32> {
        let mut freed = 0;
        let mut pipes: Vec<u32> = Vec::new();
        for a in answers {
            freed += a.cost;
            if pipes.last() != Some(&a.pipe) {
                pipes.push(a.pipe);
            }
            if let Some(u) = per_pipe.get_mut(&a.pipe) {
                *u = u.saturating_sub(a.cost);
                if *u == 0 {
                    per_pipe.remove(&a.pipe);
                }
            }
            self.shared.latency.record(a.received.elapsed());
            // Freed here, on the core that allocated it.
            drop(a.req);
            self.send(a.header, a.reply).await;
        }
        self.shared.inflight.fetch_sub(freed, Ordering::Relaxed);
        pipes.sort_unstable();
        pipes.dedup();
        pipes
    }

    /// Sends `reply` back along the backtrace `header`. A reply whose
    /// connection is gone is dropped by the socket: the client resends with
    /// the same seq and gets a duplicate ack.
    async fn send(&self, header: pinion::Header, reply: Reply) {
        let mut msg = Message::from_body(reply.encode_to_vec());
        msg.header = header;
        let _ = self.sock.send_msg(msg).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pipe: u32, n: u64) -> Item {
        Item {
            core: 0,
            header: pinion::Header::default(),
            pipe,
            cost: 0,
            req: envelope::Checked {
                client_id: [0; 16],
                seq: n,
                topic: Vec::new(),
                payload: bytes::Bytes::new(),
                token: None,
            },
            received: Instant::now(),
        }
    }

    fn seqs(v: &[Item]) -> Vec<(u32, u64)> {
        v.iter().map(|i| (i.pipe, i.req.seq)).collect()
    }

    #[test]
    fn connections_are_served_in_turn_a_quantum_at_a_time() {
        let mut f = Fair::default();
        // A pipelining connection with 10 queued, then one with 1.
        for n in 0..10 {
            f.push(1, item(1, n));
        }
        f.push(2, item(2, 0));
        let mut out = Vec::new();
        f.take(100, 3, &mut out);
        assert_eq!(
            seqs(&out),
            vec![
                (1, 0),
                (1, 1),
                (1, 2),
                (2, 0),
                (1, 3),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
                (1, 8),
                (1, 9),
            ]
        );
        assert_eq!(f.len, 0);
        assert!(f.queues.is_empty() && f.order.is_empty() && f.fresh.is_empty());
    }

    #[test]
    fn a_late_single_request_waits_one_turn_not_the_whole_queue() {
        let mut f = Fair::default();
        for pipe in 1..=100u32 {
            for n in 0..500 {
                f.push(pipe, item(pipe, n));
            }
        }
        let mut first = Vec::new();
        f.take(4096, 32, &mut first);
        assert_eq!(first.len(), 4096);
        // 128 turns of 32: every connection once, the first 28 twice.
        f.push(999, item(999, 0));
        let mut second = Vec::new();
        f.take(4096, 32, &mut second);
        let pos = second
            .iter()
            .position(|i| i.pipe == 999)
            .expect("in the next batch");
        // A newly active connection goes first.
        assert_eq!(pos, 0);
        assert_eq!(f.len, 100 * 500 + 1 - 2 * 4096);
        // Order within a connection is kept.
        let mut all = first;
        all.extend(second);
        f.take(usize::MAX, 32, &mut all);
        for pipe in 1..=100u32 {
            let s: Vec<u64> = all
                .iter()
                .filter(|i| i.pipe == pipe)
                .map(|i| i.req.seq)
                .collect();
            assert_eq!(s, (0..500).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_connection_is_fresh_again_only_after_a_round_of_the_others() {
        let mut f = Fair::default();
        for n in 0..100 {
            f.push(1, item(1, n));
            f.push(2, item(2, n));
        }
        let mut out = Vec::new();
        f.take(8, 4, &mut out);
        // Connection 3 sends one request: first in the next batch.
        f.push(3, item(3, 0));
        out.clear();
        f.take(1, 4, &mut out);
        assert_eq!(seqs(&out), vec![(3, 0)]);
        // It sends another at once: now it waits its turn behind the
        // round (1 and 2 go first), it does not jump the line again.
        f.push(3, item(3, 1));
        out.clear();
        f.take(12, 4, &mut out);
        let order: Vec<u32> = out.iter().map(|i| i.pipe).collect();
        assert_eq!(order, vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 1, 1, 1]);
        // Once it has been served and the round has passed, a new
        // request of it is fresh again.
        f.push(3, item(3, 2));
        out.clear();
        f.take(4, 4, &mut out);
        assert_eq!(seqs(&out)[0], (3, 2));
    }
}
