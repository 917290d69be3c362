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
use pinion_runtime::transport::ws::frame::{Decoder, Event, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

use crate::fanout::{FanIn, Framing, NewSub};

/// How long a subscriber may take to send its SP header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a WebSocket subscriber may send us (they only need
/// control frames).
const WS_SUB_MAX_MESSAGE: u64 = 4096;

/// Accepts SP SUB connections on one core's share of a subscriber port.
pub(crate) async fn serve_sp(
    listener: std::net::TcpListener,
    fan: UnboundedSender<FanIn>,
    ids: Arc<AtomicU64>,
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
                let fan = fan.clone();
                let id = ids.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(why) = sp_handshake(&mut s).await {
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
                        read_until_gone(id, io, None, fan).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (subscribers)");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends PUB's SP header and checks that the peer is a SUB.
async fn sp_handshake(s: &mut TcpStream) -> Result<(), String> {
    let exchange = async {
        s.write_all(&encode_header(ProtocolKind::Pub0.id())).await?;
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).await?;
        Ok::<_, std::io::Error>(h)
    };
    let h = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| "handshake timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let peer = decode_header(&h).map_err(|e| e.to_string())?;
    if peer != ProtocolKind::Sub0.id() {
        return Err(format!("peer protocol {peer:#06x} is not SUB"));
    }
    Ok(())
}

/// Reads a subscriber's connection until it ends: WebSocket pings are
/// answered (through the fan-out, which owns the writing side), a close
/// frame or the end of the stream removes the subscriber. SP subscribers
/// send nothing; whatever they send is ignored.
pub(crate) async fn read_until_gone(
    id: u64,
    io: Arc<TcpStream>,
    ws: Option<Decoder>,
    fan: UnboundedSender<FanIn>,
) {
    let mut ws = ws;
    let mut buf = [0u8; 256];
    'read: loop {
        if io.readable().await.is_err() {
            break;
        }
        match io.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let Some(dec) = ws.as_mut() else { continue };
                let mut input = &buf[..n];
                loop {
                    match dec.decode(&mut input) {
                        Ok(Some(Event::Ping(p))) => {
                            let _ = fan.send(FanIn::Pong(id, p));
                        }
                        Ok(Some(Event::Close(_))) | Err(_) => break 'read,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let _ = fan.send(FanIn::Gone(id));
}

/// A decoder for what a WebSocket subscriber sends.
pub(crate) fn ws_decoder() -> Decoder {
    Decoder::new(Side::Server, WS_SUB_MAX_MESSAGE)
}
