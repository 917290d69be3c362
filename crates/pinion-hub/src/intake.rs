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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
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

/// Fixed accounting cost of a request besides its body: its [`Item`]
/// (184 bytes on x86-64: backtrace, decoded envelope, timestamps), which
/// becomes an [`Answer`] (224) on its way back, plus its topic's
/// allocation, its reply and queue slots, so that the in-flight caps bound
/// the memory small requests really take, not just their wire bytes.
const OVERHEAD: usize = std::mem::size_of::<Answer>() + 128;

pub(crate) struct Intake {
    pub core: usize,
    pub sock: Socket,
    pub to_writer: mpsc::Sender<ToWriter>,
    pub answers: UnboundedReceiver<Vec<Answer>>,
    pub shared: Arc<Shared>,
    pub max_payload: usize,
    pub max_total: usize,
    pub max_per_conn: usize,
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
        let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
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
                    while batch.len() < BATCH
                        && self.shared.inflight.load(Ordering::Relaxed) < self.max_total
                    {
                        match self.sock.try_recv_msg() {
                            Ok(Some(m)) => self.take(m, &mut per_pipe, &mut held, &mut batch).await,
                            _ => break,
                        }
                    }
                }
            }
            if !batch.is_empty() {
                // Sized to what it holds: a wake-up often brings one or a
                // few requests, and a batch lives until the writer has made
                // it durable, so a full-capacity Vec per batch (512 items,
                // ~100 KB) held while a pipelining client's requests
                // trickle in cost 50 MB in the hostile suite.
                let b: Vec<Item> = batch.drain(..).collect();
                if self.to_writer.send(ToWriter::Batch(b)).is_err() {
                    return;
                }
            }
        }
    }

    /// Checks one request: answers it at once (NACK), holds it (its
    /// connection is at its cap), or adds it to the batch for the writer.
    async fn take(
        &mut self,
        m: Message,
        per_pipe: &mut HashMap<u32, usize>,
        held: &mut Held,
        batch: &mut Vec<Item>,
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
        let req = match envelope::check(&m.body, self.max_payload) {
            Ok(req) => req,
            Err(nack) => {
                self.shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
                self.send(m.header, nack).await;
                return;
            }
        };
        let pipe = pipe_of(&m);
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
        batch: &mut Vec<Item>,
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
        batch: &mut Vec<Item>,
    ) {
        // The hub-wide total counted it already (when taken or held).
        *per_pipe.entry(pipe).or_insert(0) += cost;
        batch.push(Item {
            core: self.core,
            header: m.header,
            pipe,
            cost,
            req,
            received,
        });
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

