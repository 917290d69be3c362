//! One intake task per core: reads requests from that core's REP socket,
//! checks them, hands batches to the writer, and sends the answers back.
//!
//! In-flight bytes (requests handed to the writer and not answered yet) are
//! bounded per connection and for the whole hub. At either cap the task
//! stops taking requests from its socket; the socket's queues then fill and
//! its pipes stop reading, so TCP pushes back on the clients instead of the
//! hub buffering (a request over its connection's cap is held, alone, until
//! that connection's earlier requests are answered).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use pinion::{Message, Socket};
use pinion_proto::{Code, Message as _, Reply};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::envelope;
use crate::writer::{Answer, Item, ToWriter};
use crate::Shared;

/// Requests taken from the socket per wake-up, at most.
const BATCH: usize = 512;

/// Fixed accounting cost of a request besides its body (header, queues).
const OVERHEAD: usize = 64;

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
        let mut held: Option<Message> = None;
        let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
        loop {
            let room =
                held.is_none() && self.shared.inflight.load(Ordering::Relaxed) < self.max_total;
            tokio::select! {
                biased;
                a = self.answers.recv() => {
                    let Some(answers) = a else { return };
                    self.answer(answers, &mut per_pipe).await;
                    if let Some(m) = held.take() {
                        self.take(m, &mut per_pipe, &mut held, &mut batch).await;
                    }
                }
                // The hub-wide cap is shared with the other cores: look
                // again soon, as their answers free it.
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)), if held.is_none() && !room => {}
                r = self.sock.recv_msg(), if room => {
                    let Ok(m) = r else { return };
                    self.take(m, &mut per_pipe, &mut held, &mut batch).await;
                    while batch.len() < BATCH && held.is_none()
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
                let b = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
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
        held: &mut Option<Message>,
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
            self.send(m, r).await;
            return;
        }
        let req = match envelope::check(&m.body, self.max_payload) {
            Ok(req) => req,
            Err(nack) => {
                self.shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
                self.send(m, nack).await;
                return;
            }
        };
        let pipe = pipe_of(&m);
        let cost = m.body.len() + OVERHEAD;
        let used = per_pipe.get(&pipe).copied().unwrap_or(0);
        if used > 0 && used + cost > self.max_per_conn {
            *held = Some(m);
            return;
        }
        *per_pipe.entry(pipe).or_insert(0) += cost;
        self.shared.inflight.fetch_add(cost, Ordering::Relaxed);
        batch.push(Item {
            core: self.core,
            header: m.header,
            pipe,
            cost,
            req,
            received,
        });
    }

    async fn answer(&mut self, answers: Vec<Answer>, per_pipe: &mut HashMap<u32, usize>) {
        let mut freed = 0;
        for a in answers {
            freed += a.cost;
            if let Some(u) = per_pipe.get_mut(&a.pipe) {
                *u = u.saturating_sub(a.cost);
                if *u == 0 {
                    per_pipe.remove(&a.pipe);
                }
            }
            self.shared.latency.record(a.received.elapsed());
            let body = a.reply.encode_to_vec();
            let mut msg = Message::from_body(body);
            msg.header = a.header;
            // A reply whose connection is gone is dropped by the socket:
            // the client resends with the same seq and gets a duplicate ack.
            let _ = self.sock.send_msg(msg).await;
        }
        self.shared.inflight.fetch_sub(freed, Ordering::Relaxed);
    }

    async fn send(&self, req: Message, reply: Reply) {
        let mut msg = Message::from_body(reply.encode_to_vec());
        msg.header = req.header;
        let _ = self.sock.send_msg(msg).await;
    }
}
