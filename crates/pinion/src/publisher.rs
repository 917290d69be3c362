//! A pipelined publisher for pinion's hub (`pinion serve`).
//!
//! [`Publisher`] speaks the hub's protocol (SP REQ/REP with a protobuf
//! envelope, `proto/pinion/v1/hub.proto`) over a raw REQ socket, so it can
//! keep many requests in flight on one connection. Every message gets the
//! next sequence number of the publisher's client id; a request not
//! answered within [`PublisherOptions::resend_after`] (for instance because
//! the connection dropped and was redialed) is sent again **with the same
//! seq**, and the hub answers a retry of a message it already logged with
//! the original offset and `duplicate = true`, so nothing is logged twice.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), pinion::Error> {
//! use pinion::publisher::{Outcome, Publisher, PublisherOptions};
//!
//! let mut p = Publisher::connect("tcp://127.0.0.1:7450", PublisherOptions::default()).await?;
//! // One at a time:
//! match p.publish("orders", &b"hello"[..]).await? {
//!     Outcome::Ack { offset, .. } => println!("logged at {offset}"),
//!     Outcome::Nack { code, reason, .. } => println!("refused: {code:?} {reason}"),
//! }
//! // Pipelined: up to `window` in flight, outcomes in any order.
//! for i in 0..1000u32 {
//!     p.send("orders", i.to_be_bytes().to_vec()).await?;
//! }
//! for outcome in p.flush().await? {
//!     assert!(outcome.is_ack());
//! }
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pinion_proto::{reply, Code, Message as _, Publish, Reply};

use crate::{Message, Options, Protocol, Socket};

/// How a [`Publisher`] behaves.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// The client id (16 bytes). Default: random. Keep it (with the seq)
    /// across restarts of your program to make its retries idempotent too.
    pub client_id: [u8; 16],
    /// The seq of the first message. Default 1.
    pub first_seq: u64,
    /// Requests in flight at most. Default 64.
    pub window: usize,
    /// Resend a request unanswered for this long. Default 1 s.
    pub resend_after: Duration,
    /// Retry a message NACKed `NOT_LEADER`, `UNAVAILABLE` or
    /// `SHUTTING_DOWN` (a cluster electing a leader, a load balancer not
    /// yet switched, a node restarting) with the same seq, every
    /// [`retry_backoff`](Self::retry_backoff), until it is answered
    /// otherwise or this long after it was first sent; then the NACK is
    /// returned. A `NOT_LEADER` that names the leader's URL makes the
    /// publisher send there from then on. `None` (the default): such NACKs
    /// are returned at once.
    pub retry_transient: Option<Duration>,
    /// Pause before a transient NACK's retry. Default 100 ms.
    pub retry_backoff: Duration,
    /// A token (`pinion token issue`) for a hub with authentication on,
    /// sent with every publish. `None` (the default): none sent. Replace it
    /// before it expires with [`Publisher::set_token`].
    pub token: Option<String>,
    /// TLS settings for a `tls+tcp://` hub endpoint (its CA; this
    /// publisher's certificate where the hub maps client certificates to
    /// permissions). `None`: plain endpoints only.
    pub tls: Option<crate::TlsConfig>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            client_id: random_id(),
            first_seq: 1,
            window: 64,
            resend_after: Duration::from_secs(1),
            retry_transient: None,
            retry_backoff: Duration::from_millis(100),
            token: None,
            tls: None,
        }
    }
}

fn random_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_usize(i);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    // RFC 4122 version 4, variant 1.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// The hub's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Logged (durably, with the hub's default fsync policy).
    Ack {
        /// The message's seq.
        seq: u64,
        /// Its offset in the hub's log.
        offset: u64,
        /// It had been logged before (a retry).
        duplicate: bool,
    },
    /// Refused; nothing was logged.
    Nack {
        /// The message's seq.
        seq: u64,
        /// Why, for programs.
        code: Code,
        /// Why, for humans.
        reason: String,
    },
}

impl Outcome {
    /// The message's seq.
    pub fn seq(&self) -> u64 {
        match self {
            Outcome::Ack { seq, .. } | Outcome::Nack { seq, .. } => *seq,
        }
    }

    /// Whether it is an ACK.
    pub fn is_ack(&self) -> bool {
        matches!(self, Outcome::Ack { .. })
    }
}

struct Pending {
    seq: u64,
    body: Bytes,
    sent: Instant,
    /// When the message was first sent (for `retry_transient`).
    first: Instant,
}

/// A pipelined, retrying publisher (see the [module docs](self)).
pub struct Publisher {
    sock: Socket,
    /// The endpoint dialed (the leader's, after a NOT_LEADER that named it).
    url: String,
    opts: PublisherOptions,
    next_seq: u64,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    ready: VecDeque<Outcome>,
}

impl Publisher {
    /// Dials the hub (waiting for the first connection; reconnects in the
    /// background afterwards).
    pub async fn connect(url: &str, opts: PublisherOptions) -> crate::Result<Publisher> {
        let sock = Self::socket(&opts)?;
        sock.dial(url).await?;
        Ok(Publisher {
            sock,
            url: url.to_string(),
            next_seq: opts.first_seq,
            next_id: 0,
            opts,
            pending: HashMap::new(),
            ready: VecDeque::new(),
        })
    }

    fn socket(opts: &PublisherOptions) -> crate::Result<Socket> {
        let s = Socket::with_options(
            Protocol::Req0,
            Options {
                raw: true,
                ..Options::default()
            },
        )?;
        if let Some(t) = &opts.tls {
            s.set_tls(t.clone());
        }
        Ok(s)
    }

    /// The endpoint this publisher sends to: the one it was given, or the
    /// leader a `NOT_LEADER` answer named (with `retry_transient`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client id.
    pub fn client_id(&self) -> [u8; 16] {
        self.opts.client_id
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Publishes one message and waits for its answer (answers to earlier
    /// pipelined messages that arrive meanwhile are kept for
    /// [`Publisher::recv`]).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> crate::Result<Outcome> {
        let seq = self.send(topic, payload).await?;
        loop {
            if let Some(i) = self.ready.iter().position(|o| o.seq() == seq) {
                return Ok(self.ready.remove(i).expect("index from position"));
            }
            let o = self.next_outcome().await?;
            self.ready.push_back(o);
        }
    }

    /// Replaces the token sent with the publishes made from now on (one
    /// already sent is resent as it was).
    pub fn set_token(&mut self, token: Option<String>) {
        self.opts.token = token;
    }

    /// Sends one message without waiting for its answer, returning its seq.
    /// With [`PublisherOptions::window`] requests in flight it first waits
    /// for an answer (kept for [`Publisher::recv`]).
    pub async fn send(&mut self, topic: &str, payload: impl Into<Bytes>) -> crate::Result<u64> {
        while self.pending.len() >= self.opts.window.max(1) {
            let o = self.next_outcome().await?;
            self.ready.push_back(o);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload: Bytes = payload.into();
        let body: Bytes = Publish {
            client_id: Some(Bytes::copy_from_slice(&self.opts.client_id)),
            seq: Some(seq),
            topic: Some(topic.to_string()),
            payload: Some(payload),
            token: self.opts.token.clone(),
        }
        .encode_to_vec()
        .into();
        let id = self.alloc_id();
        self.transmit(id, body.clone()).await?;
        let now = Instant::now();
        self.pending.insert(
            id,
            Pending {
                seq,
                body,
                sent: now,
                first: now,
            },
        );
        Ok(seq)
    }

    /// The next answer, in arrival order.
    pub async fn recv(&mut self) -> crate::Result<Outcome> {
        if let Some(o) = self.ready.pop_front() {
            return Ok(o);
        }
        self.next_outcome().await
    }

    /// Waits until every message sent has its answer; returns all answers
    /// not yet taken.
    pub async fn flush(&mut self) -> crate::Result<Vec<Outcome>> {
        while !self.pending.is_empty() {
            let o = self.next_outcome().await?;
            self.ready.push_back(o);
        }
        Ok(self.ready.drain(..).collect())
    }

    /// Closes the socket (requests in flight are abandoned).
    pub fn close(self) {
        self.sock.close();
    }

    fn alloc_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1) & 0x7fff_ffff;
            let id = self.next_id | 0x8000_0000;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    async fn transmit(&self, id: u32, body: Bytes) -> crate::Result<()> {
        let mut m = Message::from_body(body);
        m.header.push_word(id)?;
        self.sock.send_msg(m).await
    }

    /// Receives until one pending request is answered, resending overdue
    /// requests with their original seq.
    async fn next_outcome(&mut self) -> crate::Result<Outcome> {
        loop {
            if self.pending.is_empty() {
                return Err(crate::Error::Caller(crate::CallerError::BadState));
            }
            let oldest = self
                .pending
                .values()
                .map(|p| p.sent)
                .min()
                .expect("non-empty");
            let wait = (oldest + self.opts.resend_after).saturating_duration_since(Instant::now());
            match self.sock.recv_inner(Some(wait)).await {
                Ok(m) => {
                    let Some(id) = m
                        .header
                        .as_slice()
                        .get(..4)
                        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                    else {
                        continue;
                    };
                    let Some(p) = self.pending.remove(&id) else {
                        continue; // a late answer to a request already answered
                    };
                    let o = decode_outcome(p.seq, &m.body);
                    let transient = matches!(
                        o,
                        Outcome::Nack {
                            code: Code::NotLeader | Code::Unavailable | Code::ShuttingDown,
                            ..
                        }
                    );
                    if transient
                        && self
                            .opts
                            .retry_transient
                            .is_some_and(|t| p.first.elapsed() < t)
                    {
                        // Resent (same seq, new request id) by the
                        // resend path once the backoff has passed.
                        let id = self.alloc_id();
                        let backoff = self.opts.retry_backoff.min(self.opts.resend_after);
                        let sent = Instant::now()
                            .checked_sub(self.opts.resend_after - backoff)
                            .unwrap_or_else(Instant::now);
                        tracing::debug!(seq = p.seq, "transient NACK: retrying with the same seq");
                        self.pending.insert(id, Pending { sent, ..p });
                        // A follower that names its leader: send there
                        // from now on (every message in flight is resent
                        // to it, with its seq, after the backoff).
                        if let Some(leader) = leader_hint(&m.body).filter(|l| *l != self.url) {
                            if let Ok(sock) = Self::socket(&self.opts) {
                                if sock.dial_background(&leader).await.is_ok() {
                                    tracing::info!(%leader, "following the leader a NOT_LEADER answer named");
                                    self.sock.close();
                                    self.sock = sock;
                                    self.url = leader;
                                    for q in self.pending.values_mut() {
                                        q.sent = q.sent.min(sent);
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    return Ok(o);
                }
                Err(crate::Error::TimedOut) => {
                    let now = Instant::now();
                    let due: Vec<(u32, Bytes)> = self
                        .pending
                        .iter()
                        .filter(|(_, p)| now.duration_since(p.sent) >= self.opts.resend_after)
                        .map(|(id, p)| (*id, p.body.clone()))
                        .collect();
                    for (id, body) in due {
                        tracing::debug!(id, "resending an unanswered publish (same seq)");
                        self.transmit(id, body).await?;
                        if let Some(p) = self.pending.get_mut(&id) {
                            p.sent = Instant::now();
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The leader's URL a NACK `NOT_LEADER` names, if any.
fn leader_hint(body: &[u8]) -> Option<String> {
    match Reply::decode(body) {
        Ok(Reply {
            result: Some(reply::Result::Nack(n)),
        }) if n.code() == Code::NotLeader => n.leader.filter(|l| !l.is_empty()),
        _ => None,
    }
}

fn decode_outcome(seq: u64, body: &[u8]) -> Outcome {
    match Reply::decode(body) {
        Ok(Reply {
            result: Some(reply::Result::Ack(a)),
        }) => Outcome::Ack {
            seq: a.seq.unwrap_or(seq),
            offset: a.offset.unwrap_or(0),
            duplicate: a.duplicate.unwrap_or(false),
        },
        Ok(Reply {
            result: Some(reply::Result::Nack(n)),
        }) => Outcome::Nack {
            seq: n.seq.unwrap_or(seq),
            code: n.code(),
            reason: n.reason.unwrap_or_default(),
        },
        Ok(Reply { result: None }) => Outcome::Nack {
            seq,
            code: Code::Unspecified,
            reason: "the hub's reply has neither ack nor nack".into(),
        },
        Err(e) => Outcome::Nack {
            seq,
            code: Code::Unspecified,
            reason: format!("undecodable reply from the hub: {e}"),
        },
    }
}
