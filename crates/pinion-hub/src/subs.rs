//! Subscriber connections: the SP PUB endpoint over TCP, and the reader
//! side of every subscriber (WebSocket pings and closes, end of stream).
//!
//! A subscriber's socket is written by its core's fan-out task
//! ([`crate::fanout`]); the small task here only reads from it, so an idle
//! subscriber costs one parked task, its socket and its entry in the
//! fan-out's table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pinion_core::protocol::ProtocolKind;
use pinion_core::wire::{decode_header, encode_header, HEADER_LEN};
use pinion_core::PeerError;
use pinion_runtime::transport::ws::frame::{self, Decoder, Event, FloodLimit, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

use crate::fanout::{FanIn, Framing, NewSub};
use crate::guard::{Gate, Limits};
use crate::stats::Refusal;

/// Largest message a WebSocket subscriber may send us (they only need
/// control frames).
const WS_SUB_MAX_MESSAGE: u64 = 4096;

/// Accepts SP SUB connections on one core's share of a subscriber port.
/// Each is admitted by the port's `gate` first (refused: closed at once,
/// before the SP header), gets TCP keepalive, and has `handshake_timeout`
/// for the header exchange.
pub(crate) async fn serve_sp(
    listener: std::net::TcpListener,
    fan: UnboundedSender<FanIn>,
    ids: Arc<AtomicU64>,
    gate: Arc<Gate>,
    limits: Limits,
    auth: Option<Arc<crate::auth::HubAuth>>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the subscriber listener");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((mut s, peer)) => {
                let (conn, hs) = match gate.admit(peer.ip()) {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::debug!(%peer, reason = why.label(), "subscriber refused");
                        continue; // dropped: closed
                    }
                };
                // Plain SP has no place for a credential: with
                // authentication on, nobody subscribes here (closed at
                // once, counted).
                if let Some(auth) = &auth {
                    auth.count(&crate::auth::Refused {
                        reason: crate::auth::Reason::NoCredentialSlot,
                        message: String::new(),
                    });
                    tracing::debug!(%peer, "plain SP subscriber refused: authentication is on");
                    drop((s, conn, hs));
                    continue;
                }
                let _ = crate::guard::set_keepalive(&socket2::SockRef::from(&s), limits.keepalive);
                let fan = fan.clone();
                let id = ids.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let r = sp_handshake(&mut s, limits.handshake_timeout).await;
                    drop(hs);
                    if let Err(why) = r {
                        if let Some(refusal) = why.refusal() {
                            conn.gate().refuse(refusal);
                        }
                        tracing::debug!(%peer, %why, "subscriber handshake refused");
                        return;
                    }
                    let _ = s.set_nodelay(true);
                    crate::fanout::bound_send_buffer(&s);
                    let io = Arc::new(s);
                    let sub = NewSub {
                        id,
                        framing: Framing::Sp,
                        io: io.clone(),
                        filter: Vec::new(),
                        from: None,
                        hello: false,
                    };
                    if fan.send(FanIn::NewSub(sub)).is_ok() {
                        read_until_gone(id, io, None, fan, conn.gate()).await;
                    }
                    drop(conn);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (subscribers)");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why an SP header exchange failed.
#[derive(Debug, thiserror::Error)]
enum Handshake {
    /// Not within the timeout.
    #[error("no SP header within the handshake timeout")]
    Timeout,
    /// Not an SP header, or not a SUB's.
    #[error("{0}")]
    Refused(String),
    /// The connection failed (the peer left).
    #[error(transparent)]
    Io(std::io::Error),
}

impl Handshake {
    /// The refusal counted for it (none when the peer just left).
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Handshake::Timeout => Some(Refusal::HandshakeTimeout),
            Handshake::Refused(_) => Some(Refusal::Malformed),
            Handshake::Io(_) => None,
        }
    }
}

/// Sends PUB's SP header and checks that the peer is a SUB, all within
/// `timeout`.
async fn sp_handshake(s: &mut TcpStream, timeout: Duration) -> Result<(), Handshake> {
    let exchange = async {
        s.write_all(&encode_header(ProtocolKind::Pub0.id())).await?;
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).await?;
        Ok::<_, std::io::Error>(h)
    };
    let h = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Handshake::Timeout)?
        .map_err(Handshake::Io)?;
    let peer = decode_header(&h).map_err(|e| Handshake::Refused(e.to_string()))?;
    if peer != ProtocolKind::Sub0.id() {
        return Err(Handshake::Refused(format!(
            "peer protocol {peer:#06x} is not SUB"
        )));
    }
    Ok(())
}

/// What the reader of a WebSocket subscriber needs besides its socket.
pub(crate) struct WsReader {
    /// Decodes what the subscriber sends.
    pub dec: Decoder,
    /// Bytes that arrived with the upgrade request, after its head.
    pub first: Vec<u8>,
    /// A subscriber silent this long is pinged; silent for as long again
    /// after that, it is dropped (`dead_peer`).
    pub ping_every: Duration,
}

/// Reads a subscriber's connection until it ends: WebSocket pings are
/// answered (through the fan-out, which owns the writing side), a close
/// frame or the end of the stream removes the subscriber. SP subscribers
/// send nothing; whatever they send is ignored (TCP keepalive finds the
/// ones that vanished).
///
/// A WebSocket subscriber that sends nothing at all for `ping_every` is
/// sent a ping (by the fan-out, [`FanIn::Ping`]); a live browser answers
/// with a pong, which counts as hearing from it. One still silent
/// `ping_every` after the ping is dropped and counted `dead_peer` on
/// `gate`'s port: a browser tab that vanished without closing holds its
/// socket and its fan-out entry for at most twice the interval.
pub(crate) async fn read_until_gone(
    id: u64,
    io: Arc<TcpStream>,
    ws: Option<WsReader>,
    fan: UnboundedSender<FanIn>,
    gate: &Gate,
) {
    let (mut dec, first, every) = match ws {
        Some(w) => (Some(w.dec), w.first, Some(w.ping_every)),
        None => (None, Vec::new(), None),
    };
    let mut buf = [0u8; 256];
    let mut silent_until = every.map(|e| tokio::time::Instant::now() + e);
    let mut pinged = false;
    // Frames that came with the upgrade request are decoded first.
    let mut fed = match dec.as_mut() {
        Some(d) if !first.is_empty() => {
            d.refill(std::time::Instant::now());
            feed(id, d, &first, &fan, gate)
        }
        _ => Fed::Alive,
    };
    let mut done = fed != Fed::Alive;
    while !done {
        let ready = match silent_until {
            Some(t) => tokio::time::timeout_at(t, io.readable()).await,
            None => Ok(io.readable().await),
        };
        match ready {
            Err(_silent) => {
                if pinged {
                    gate.refuse(Refusal::DeadPeer);
                    break;
                }
                let _ = fan.send(FanIn::Ping(id));
                pinged = true;
                silent_until = every.map(|e| tokio::time::Instant::now() + e);
                continue;
            }
            Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
        let n = match io.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        // Heard from it.
        pinged = false;
        silent_until = every.map(|e| tokio::time::Instant::now() + e);
        if let Some(d) = dec.as_mut() {
            d.refill(std::time::Instant::now());
            fed = feed(id, d, &buf[..n], &fan, gate);
            done = fed != Fed::Alive;
        }
    }
    // After a violation the fan-out drops it once its close frame is out.
    if fed != Fed::Violation {
        let _ = fan.send(FanIn::Gone(id));
    }
}

/// What a subscriber's input came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    /// Nothing final: read on.
    Alive,
    /// A close frame: the subscriber is done.
    Closed,
    /// A protocol violation: the fan-out was told to close with a frame
    /// saying so.
    Violation,
}

/// Decodes what a WebSocket subscriber sent: pings are handed to the
/// fan-out to answer. The subscriber is done after a close frame, or after
/// a protocol violation: then the fan-out is told to close with the
/// matching code, and the refusal is counted on `gate`'s port.
///
/// Only the last ping of what one read brought is answered (RFC 6455
/// §5.5.3 allows answering only the latest): a flood of pings costs the
/// fan-out one pong per read (256 bytes), not one per 6-byte ping; past
/// the decoder's [`FloodLimit`] it is cut.
fn feed(
    id: u64,
    dec: &mut Decoder,
    mut input: &[u8],
    fan: &UnboundedSender<FanIn>,
    gate: &Gate,
) -> Fed {
    let mut ping = None;
    let fed = loop {
        match dec.decode(&mut input) {
            Ok(Some(Event::Ping(p))) => ping = Some(p),
            Ok(Some(Event::Close(_))) => break Fed::Closed,
            Err(e) => {
                gate.refuse(Refusal::of_peer_error(&e));
                let _ = fan.send(FanIn::Violation(id, frame::close_code(&e), reason(&e)));
                break Fed::Violation;
            }
            Ok(Some(_)) => {}
            Ok(None) => break Fed::Alive,
        }
    };
    if let Some(p) = ping.filter(|_| fed == Fed::Alive) {
        let _ = fan.send(FanIn::Pong(id, p));
    }
    fed
}

/// A decoder for what a WebSocket subscriber (or `/stats` reader) sends,
/// with the flood limit.
pub(crate) fn ws_decoder() -> Decoder {
    Decoder::new(Side::Server, WS_SUB_MAX_MESSAGE).limit_floods(FloodLimit::DEFAULT)
}

/// The close frame's reason for a peer error (short: a close frame's
/// payload is at most 125 bytes).
pub(crate) fn reason(e: &PeerError) -> &'static str {
    match e {
        PeerError::TooLarge { .. } => "message too large",
        PeerError::WsFlood { .. } => "too many frames without data",
        PeerError::WsText => "text frames are not accepted",
        _ => "protocol error",
    }
}
