//! The subscriber's task: connections, the WebSocket upgrade and stream
//! (the runtime's sans-IO handshake helpers and frame decoder), timers.
//! The decisions are [`Tracker`]'s.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pinion_core::rng::Rng;
use pinion_runtime::transport::ws::frame::{
    self, close, encode_close, encode_control, Decoder, Event as WsEvent, FloodLimit, Side,
};
use pinion_runtime::transport::ws::handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tungstenite::protocol::frame::coding::Control;

use super::track::{self, Ended, Next, Tracker};
use super::{Config, Error, Event, Feed, HubViolation, Shared, SUBPROTOCOL};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The subscriber's task: one connection after another until the
/// [`super::Subscriber`] is dropped or gives up.
pub(crate) async fn drive(
    cfg: Arc<Config>,
    order: Vec<usize>,
    tx: mpsc::Sender<Feed>,
    shared: Arc<Shared>,
    seed: u64,
    now: Instant,
) {
    let o = &cfg.opts;
    let mut rng = Rng::new(seed);
    let mut t = Tracker::new(
        order,
        o.from,
        (o.backoff_min, o.backoff_max),
        o.give_up_after,
        now,
    );
    loop {
        let node = t.node();
        let mut s = Session {
            cfg: &cfg,
            node,
            tx: &tx,
            shared: &shared,
            ended: Ended::default(),
            subscribed_at: None,
        };
        let error = tokio::select! {
            r = s.run(&mut t, &mut rng) => match r {
                Ok(e) => e,
                Err(Gone) => return,
            },
            () = tx.closed() => return,
        };
        let mut ended = s.ended;
        if let Some(at) = s.subscribed_at {
            ended.lived = at.elapsed();
        }
        match t.on_end(ended, Instant::now(), &mut rng) {
            Next::GiveUp => {
                let _ = tx.send(Feed::Fatal(error)).await;
                return;
            }
            Next::Retry {
                node: next_node,
                delay,
            } => {
                tracing::debug!(url = %cfg.targets[node].url, %error, ?delay, "subscriber moves on");
                let ev = Event::Disconnected {
                    node,
                    error,
                    resume: t.next(),
                    next_node,
                    retry_in: delay,
                };
                if tx.send(Feed::Event(ev)).await.is_err() {
                    return;
                }
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        }
    }
}

/// The [`super::Subscriber`] is gone: stop.
struct Gone;

struct Session<'a> {
    cfg: &'a Config,
    node: usize,
    tx: &'a mpsc::Sender<Feed>,
    shared: &'a Shared,
    ended: Ended,
    subscribed_at: Option<Instant>,
}

fn io_error(op: &'static str, url: &str, source: io::Error) -> Error {
    Error::Transport(crate::Error::Io {
        op,
        addr: url.to_string(),
        source,
    })
}

/// How decoding one batch of input ended.
enum Fed {
    /// Everything taken; `out` may hold pongs to send.
    More,
    /// The connection must end with this error; `out` holds the close
    /// frame to send first.
    End(Error),
}

impl Session<'_> {
    /// One connection, from the TCP connect to its end: the reason it
    /// ended (`Err(Gone)` when the application went away).
    async fn run(&mut self, t: &mut Tracker, rng: &mut Rng) -> Result<Error, Gone> {
        let o = &self.cfg.opts;
        let url = &self.cfg.targets[self.node].url;
        let deadline = tokio::time::Instant::now() + o.connect_timeout;
        let (mut tcp, rest) = match tokio::time::timeout_at(deadline, self.upgrade(t.next())).await
        {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Ok(e),
            Err(_) => return Ok(Error::Transport(crate::Error::TimedOut)),
        };
        let mut dec = Decoder::new(Side::Client, o.max_message as u64)
            .accept_text()
            .limit_floods(FloodLimit::DEFAULT);
        let mut out = BytesMut::new();
        if let Some(e) = self
            .process(&mut tcp, &mut dec, &rest, t, rng, &mut out)
            .await?
        {
            return Ok(e);
        }
        let mut buf = vec![0u8; READ_CHUNK];
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        loop {
            let wake = if self.subscribed_at.is_none() {
                deadline
            } else if pinged {
                heard + o.idle_timeout
            } else {
                heard + o.idle_timeout / 2
            };
            tokio::select! {
                r = tcp.read(&mut buf) => match r {
                    Ok(0) => {
                        return Ok(io_error("read", url, io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(n) => {
                        let input = &buf[..n];
                        if let Some(e) = self.process(&mut tcp, &mut dec, input, t, rng, &mut out).await? {
                            return Ok(e);
                        }
                        // Time spent handing deliveries over (a slow
                        // application) is not the node's silence.
                        heard = tokio::time::Instant::now();
                        pinged = false;
                    }
                    Err(e) => return Ok(io_error("read", url, e)),
                },
                () = tokio::time::sleep_until(wake) => {
                    if self.subscribed_at.is_none() {
                        return Ok(Error::Transport(crate::Error::TimedOut));
                    }
                    if pinged {
                        return Ok(Error::Silent(o.idle_timeout));
                    }
                    encode_control(Control::Ping, b"", Some(&mut *rng), &mut out);
                    let _ = tcp.write_all(&out).await;
                    out.clear();
                    pinged = true;
                }
            }
        }
    }

    /// Feeds one batch of input, then sends what it produced (pongs, a
    /// close frame): `Some(error)` when the connection must end.
    async fn process(
        &mut self,
        tcp: &mut TcpStream,
        dec: &mut Decoder,
        input: &[u8],
        t: &mut Tracker,
        rng: &mut Rng,
        out: &mut BytesMut,
    ) -> Result<Option<Error>, Gone> {
        if input.is_empty() {
            return Ok(None);
        }
        dec.refill(Instant::now());
        let fed = self.feed(dec, input, t, rng, out).await?;
        if !out.is_empty() {
            // Best effort: a write that fails shows up as a read error
            // next, or the connection is ending anyway.
            let _ = tcp.write_all(out).await;
            out.clear();
        }
        Ok(match fed {
            Fed::More => None,
            Fed::End(e) => Some(e),
        })
    }

    /// TCP connect, upgrade request, and the server's answer: the stream
    /// and what came after the answer's head.
    async fn upgrade(&self, from: Option<u64>) -> Result<(TcpStream, Vec<u8>), Error> {
        let target = &self.cfg.targets[self.node];
        let mut tcp = pinion_runtime::transport::tcp::connect(&target.tcp, true)
            .await
            .map_err(Error::Transport)?;
        let key = handshake::new_key();
        let req = handshake::client_request_with(
            &target.host,
            &self.cfg.request_target(self.node, from),
            SUBPROTOCOL,
            &key,
        );
        tcp.write_all(&req)
            .await
            .map_err(|e| io_error("write", &target.url, e))?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        loop {
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| io_error("read", &target.url, e))?;
            if n == 0 {
                return Err(io_error(
                    "read",
                    &target.url,
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            head.extend_from_slice(&chunk[..n]);
            match handshake::client_response_with(&head, &key, SUBPROTOCOL) {
                Ok(Some(len)) => return Ok((tcp, head.split_off(len))),
                Ok(None) => {}
                Err(e) => return Err(Error::Transport(crate::Error::Peer(e))),
            }
        }
    }

    /// Decodes `input`, handing deliveries over in order.
    async fn feed(
        &mut self,
        dec: &mut Decoder,
        mut input: &[u8],
        t: &mut Tracker,
        rng: &mut Rng,
        out: &mut BytesMut,
    ) -> Result<Fed, Gone> {
        loop {
            let ev = match dec.decode(&mut input) {
                Ok(None) => return Ok(Fed::More),
                Ok(Some(ev)) => ev,
                Err(e) => {
                    encode_close(frame::close_code(&e), Some(&mut *rng), out);
                    return Ok(Fed::End(Error::Transport(crate::Error::Peer(e))));
                }
            };
            match ev {
                WsEvent::Text(text) => {
                    if self.subscribed_at.is_some() {
                        return Ok(self.violation(HubViolation::ExtraText, rng, out));
                    }
                    let next = match track::parse_hello(&text) {
                        Ok(n) => n,
                        Err(v) => return Ok(self.violation(v, rng, out)),
                    };
                    self.subscribed_at = Some(Instant::now());
                    self.ended.subscribed = true;
                    t.on_hello(next, Instant::now());
                    self.send(Event::Connected {
                        node: self.node,
                        next,
                    })
                    .await?;
                }
                WsEvent::Message(m) => {
                    if self.subscribed_at.is_none() {
                        return Ok(self.violation(HubViolation::NoHello, rng, out));
                    }
                    let d = match track::parse_delivery(m) {
                        Ok(d) => d,
                        Err(v) => return Ok(self.violation(v, rng, out)),
                    };
                    if t.on_delivery(d.offset) {
                        self.ended.delivered = true;
                        self.send(Event::Delivery(d)).await?;
                    } else {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                WsEvent::Ping(p) => encode_control(Control::Pong, &p, Some(&mut *rng), out),
                WsEvent::Pong => {}
                WsEvent::Close(code) => {
                    let reason = dec.close_reason();
                    self.ended.resume_hint = track::resume_hint(code, reason);
                    let reason = String::from_utf8_lossy(reason).into_owned();
                    // Answer with the same status (RFC 6455 §5.5.1).
                    encode_close(code.unwrap_or(close::NORMAL), Some(&mut *rng), out);
                    return Ok(Fed::End(Error::ClosedByHub { code, reason }));
                }
            }
        }
    }

    fn violation(&self, v: HubViolation, rng: &mut Rng, out: &mut BytesMut) -> Fed {
        encode_close(close::PROTOCOL, Some(&mut *rng), out);
        Fed::End(Error::Hub(v))
    }

    async fn send(&self, e: Event) -> Result<(), Gone> {
        self.tx.send(Feed::Event(e)).await.map_err(|_| Gone)
    }
}
