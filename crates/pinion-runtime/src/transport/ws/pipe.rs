//! The task of one `ws://` pipe: opening handshake, then a reader and a
//! writer until either ends, then the closing handshake.
//!
//! It speaks the same [`PipeEvent`] protocol to its socket as the other
//! pipes (`Up` with `direct: None`, so the socket driver never writes to a
//! WebSocket itself; `Messages` batches; `Down`), returns credits as its
//! writer drains, and honours the [`ReadGate`].
//!
//! Memory: while idle the task owns no buffer. Reads go into a per-thread
//! scratch buffer (one per core, [`SCRATCH_LEN`]) and the decoder copies out
//! only the message being assembled; writes build their frames in buffers
//! made for that batch and dropped after it.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pinion_core::protocol::PipeId;
use pinion_core::rng::Rng;
use pinion_core::{Message, PeerError};
use tokio::sync::{mpsc, oneshot, Notify};
use tungstenite::protocol::frame::coding::Control;

use super::frame::{self, close, Decoder, Event, FloodLimit, Side};
use super::handshake::{self, Request};
use super::{Role, WsConn};
use crate::error::Error;
use crate::pipe::{Credit, PipeCmd, PipeEvent, PipeLink, ReadGate};
use crate::stream::{write_chunks, VectoredSink};
use crate::transport::tls::io::TlsIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// The per-thread read buffer: every WebSocket pipe on a core reads into
/// it, one at a time (it is never held across an `await`).
pub const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// How long the closing handshake may take (sending our close frame, then
/// reading what the peer still sends until its end of stream).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Messages taken from the write queue at once.
const WRITE_BATCH: usize = 256;

/// Why the pipe ends.
#[derive(Debug)]
enum End {
    /// The peer sent a close frame (with this code).
    PeerClose(Option<u16>),
    /// The peer broke the protocol: close with the matching code.
    Violation(PeerError),
    /// End of stream without a close frame.
    Eof,
    /// An I/O error.
    Io(io::Error),
    /// The socket dropped the pipe's write queue (it removed the pipe).
    Dropped,
    /// The socket is closing.
    SocketClosed,
}

/// State the reader and the writer (two futures of one task) share. (Never
/// contended: one task; `Sync` types only because tasks must be `Send`.)
#[derive(Debug, Default)]
struct Shared {
    /// The payload of the last ping not answered yet.
    pong: Mutex<Option<Bytes>>,
    wake: Notify,
    /// The writer is in the middle of writing frames: a close frame now
    /// would land inside one.
    writing: AtomicBool,
}

impl Shared {
    fn take_pong(&self) -> Option<Bytes> {
        self.pong.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
    fn set_pong(&self, p: Bytes) {
        *self.pong.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        self.wake.notify_one();
    }
}

fn report(hs: Option<oneshot::Sender<Result<(), Error>>>, r: Result<(), Error>) {
    if let Some(h) = hs {
        let _ = h.send(r);
    }
}

/// Runs a `ws://` pipe to its end (see the module docs).
pub(crate) fn run_pipe<'a>(
    ws: WsConn,
    pipe: PipeId,
    link: &'a PipeLink,
    hs: Option<oneshot::Sender<Result<(), Error>>>,
) -> impl std::future::Future<Output = Option<PeerError>> + Send + 'a {
    let WsConn {
        tcp,
        role,
        read,
        tls,
    } = ws;
    // One handshake timeout for the whole opening: the TLS handshake
    // (`wss://`) and the upgrade.
    let deadline = tokio::time::Instant::now() + link.opts.handshake_timeout;
    // Not an async fn: the caller's task holds the plain pipe's future
    // alone, with no TLS state and no second copy of the arguments.
    match tls {
        None => Either::Left(run_on(tcp, role, read, pipe, link, hs, deadline)),
        // Boxed, and its own instance of the pipe: a plain pipe's task
        // holds no TLS state (the handshake's is over a kilobyte).
        Some(tls) => Either::Right(Box::pin(async move {
            let conn = crate::transport::tls::TlsConn { tcp, role: *tls };
            match crate::transport::tls::open(conn, deadline).await {
                Ok((io, peer)) => {
                    // The peer's certificate, for `peer_identity`, while
                    // the pipe runs (kept here: a plain pipe holds no
                    // such entry).
                    let _id = link.stats.peers.enter(pipe, peer);
                    run_on(io, role, read, pipe, link, hs, deadline).await
                }
                Err(e) => crate::transport::tls::failed(e, pipe, link, hs),
            }
        })),
    }
}

/// A WebSocket pipe's byte stream: a TCP socket (`ws://`) or a TLS
/// connection (`wss://`), read and written through `&self` by readiness.
pub(crate) trait WsIo: VectoredSink + Sync {
    /// Waits until a read may make progress.
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Reads what is there (`WouldBlock`: nothing).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Ends our side (TLS: close_notify first).
    fn shutdown_write(&self);
}

impl WsIo for TcpStream {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
    }
}

impl WsIo for TlsIo {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        TlsIo::readable(self)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TlsIo::try_read(self, buf)
    }
    fn shutdown_write(&self) {
        TlsIo::shutdown_write(self)
    }
}

/// The pipe over `io`, from the upgrade on.
#[allow(clippy::too_many_arguments)]
async fn run_on<IO: WsIo>(
    io: IO,
    role: Role,
    read: Vec<u8>,
    pipe: PipeId,
    link: &PipeLink,
    hs: Option<oneshot::Sender<Result<(), Error>>>,
    deadline: tokio::time::Instant,
) -> Option<PeerError> {
    let side = match role {
        Role::Server { .. } => Side::Server,
        Role::Client { .. } => Side::Client,
    };
    let upgrade = tokio::time::timeout_at(deadline, upgrade(&io, &role, link, read));
    let leftover = match upgrade.await {
        Ok(Ok(rest)) => rest,
        Ok(Err(Failed::Peer(pe))) => {
            link.stats.count_peer_error(&pe);
            tracing::debug!(pipe = pipe.0, error = %pe, "websocket upgrade refused");
            report(hs, Err(Error::Peer(pe)));
            linger(&io, false, None).await;
            return Some(pe);
        }
        Ok(Err(Failed::Io(e))) => {
            // A TLS record that failed after the TLS handshake (`wss://`)
            // is the peer's fault; anything else is I/O.
            if let Some(pe) = crate::transport::tls::io::peer_error(&e) {
                link.stats.count_peer_error(&pe);
                report(hs, Err(Error::Peer(pe)));
                return Some(pe);
            }
            link.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            report(hs, Err(Error::io("handshake", "peer", e)));
            return None;
        }
        Err(_) => {
            let pe = PeerError::HandshakeTimeout;
            link.stats.count_peer_error(&pe);
            report(hs, Err(Error::Peer(pe)));
            return Some(pe);
        }
    };
    drop(role);

    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(ReadGate::default());
    if link
        .events
        .send(PipeEvent::Up {
            pipe,
            peer: link.kind.peer_id(),
            out: out_tx,
            credits: link.opts.pipe_buffer,
            direct: None,
            gate: gate.clone(),
        })
        .await
        .is_err()
    {
        report(hs, Err(Error::Closed));
        return None;
    }
    report(hs, Ok(()));

    let shared = Shared::default();
    let mut masks =
        (side == Side::Client).then(|| Rng::new(crate::sys::seed() ^ u64::from(pipe.0)));
    let mut dec = Decoder::new(side, link.opts.recv_max_size).limit_floods(FloodLimit::DEFAULT);
    let reader = read_loop(&io, &mut dec, pipe, link, &gate, &shared, leftover);
    let writer = write_loop(&io, pipe, link, &mut out_rx, &shared, masks.as_mut());
    let end = tokio::select! {
        e = reader => e,
        e = writer => e,
        _ = link.closed.cancelled() => End::SocketClosed,
    };
    // A TLS failure after the handshake: the TLS session is broken, so no
    // close frame can go out.
    let end = match end {
        End::Io(e) => match crate::transport::tls::io::peer_error(&e) {
            Some(pe) => {
                link.stats.count_peer_error(&pe);
                let _ = link.events.send(PipeEvent::Down(pipe)).await;
                io.shutdown_write();
                return Some(pe);
            }
            None => End::Io(e),
        },
        end => end,
    };
    let code = match &end {
        End::PeerClose(c) => Some(c.unwrap_or(close::NORMAL)),
        End::Violation(pe) => {
            tracing::debug!(pipe = pipe.0, error = %pe, "closing websocket pipe: peer error");
            link.stats.count_peer_error(pe);
            Some(frame::close_code(pe))
        }
        End::Io(e) => {
            tracing::debug!(pipe = pipe.0, error = %e, "closing websocket pipe: I/O error");
            link.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
        End::Eof => None,
        // The socket closing both cancels `closed` and drops the write
        // queue: whichever the select saw first, it is "going away".
        End::Dropped if link.closed.is_cancelled() => Some(close::GOING_AWAY),
        End::Dropped => Some(close::NORMAL),
        End::SocketClosed => Some(close::GOING_AWAY),
    };
    let _ = link.events.send(PipeEvent::Down(pipe)).await;
    // The closing handshake: our close frame (unless a write was cut short,
    // which would put it inside a frame), then our end of stream, then what
    // the peer still sends is read and dropped until its end of stream, so
    // that closing with unread input does not reset the connection before
    // the peer has read our close frame.
    if let Some(code) = code.filter(|_| !shared.writing.load(Ordering::Relaxed)) {
        let mut out = BytesMut::new();
        frame::encode_close(code, masks.as_mut(), &mut out);
        let mut chunks = vec![out.freeze()];
        let sent = tokio::time::timeout(CLOSE_LINGER, write_chunks(&io, &mut chunks)).await;
        let sent = matches!(sent, Ok(Ok(())));
        let wait_close = sent && matches!(end, End::Dropped | End::SocketClosed);
        linger(&io, sent, wait_close.then_some(&mut dec)).await;
    } else {
        io.shutdown_write();
    }
    match end {
        End::Violation(pe) => Some(pe),
        _ => None,
    }
}

enum Failed {
    Peer(PeerError),
    Io(io::Error),
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed::Io(e)
    }
}

/// Shuts our side down and reads what the peer still sends (dropped) until
/// its end of stream, an error, or [`CLOSE_LINGER`] (a quarter of it when
/// no close frame went out). With the connection's decoder (we sent a close
/// frame while the peer's stream was in a known state), the peer's answering
/// close frame ends the wait too; messages still in flight are decoded
/// (within the receive limit) and dropped.
async fn linger(io: &impl WsIo, sent_close: bool, mut dec: Option<&mut Decoder>) {
    io.shutdown_write();
    let limit = if sent_close {
        CLOSE_LINGER
    } else {
        CLOSE_LINGER / 4
    };
    let drain = async {
        loop {
            if io.readable().await.is_err() {
                return;
            }
            let done = SCRATCH.with_borrow_mut(|s| match io.try_read(s) {
                Ok(0) => true,
                Ok(n) => {
                    let Some(d) = dec.as_mut() else {
                        return false;
                    };
                    let mut input = &s[..n];
                    loop {
                        match d.decode(&mut input) {
                            Ok(None) => return false,
                            Ok(Some(Event::Close(_))) | Err(_) => return true,
                            Ok(Some(_)) => {}
                        }
                    }
                }
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            });
            if done {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, drain).await;
}

/// Reads into the scratch buffer until `f` says it has what it needs.
async fn read_head(io: &impl WsIo, buf: &mut Vec<u8>) -> Result<(), Failed> {
    loop {
        io.readable().await?;
        let r = SCRATCH.with_borrow_mut(|s| {
            let room = handshake::MAX_HEAD
                .saturating_sub(buf.len())
                .clamp(1, s.len());
            let n = io.try_read(&mut s[..room])?;
            buf.extend_from_slice(&s[..n]);
            Ok::<_, io::Error>(n)
        });
        match r {
            Ok(0) => return Err(Failed::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Failed::Io(e)),
        }
    }
}

/// The opening handshake, from the bytes already `read` (an adopted
/// connection's request head). Returns the bytes that came after the HTTP
/// head (already WebSocket frames).
async fn upgrade(
    io: &impl WsIo,
    role: &Role,
    link: &PipeLink,
    read: Vec<u8>,
) -> Result<Vec<u8>, Failed> {
    let mut buf = read;
    match role {
        Role::Server { path } => loop {
            match handshake::server_request(&buf, path, link.kind) {
                Request::Incomplete => read_head(io, &mut buf).await?,
                Request::Accept { response, head_len } => {
                    write_chunks(io, &mut vec![Bytes::from(response)]).await?;
                    buf.drain(..head_len);
                    return Ok(buf);
                }
                Request::Refuse {
                    error, response, ..
                } => {
                    let _ = write_chunks(io, &mut vec![Bytes::from(response)]).await;
                    return Err(Failed::Peer(error));
                }
            }
        },
        Role::Client { host, path } => {
            let key = handshake::new_key();
            let req = handshake::client_request(host, path, link.kind, &key);
            write_chunks(io, &mut vec![Bytes::from(req)]).await?;
            loop {
                read_head(io, &mut buf).await?;
                match handshake::client_response(&buf, &key, link.kind) {
                    Ok(None) => continue,
                    Ok(Some(head_len)) => {
                        buf.drain(..head_len);
                        return Ok(buf);
                    }
                    Err(pe) => return Err(Failed::Peer(pe)),
                }
            }
        }
    }
}

/// Messages handed to the socket in one event at most. A flood of empty
/// frames (6 bytes each, masked) would otherwise turn one 64 KiB read into
/// ~11,000 messages (~1 MB of message structs) held by this pipe until the
/// socket takes them; past this many, the rest of the read waits (copied
/// aside) until the event is taken, so a pipe holds at most one event's
/// worth however its input is cut.
pub const MAX_EVENT_MSGS: usize = 128;

/// Feeds `input` to the decoder: messages go to `batch`, pings to the
/// writer. Stops after [`MAX_EVENT_MSGS`] messages; returns how many bytes
/// of `input` it took, and `Some` when the pipe must end.
fn feed(
    dec: &mut Decoder,
    input: &[u8],
    batch: &mut Vec<Message>,
    shared: &Shared,
    pipe: PipeId,
) -> (usize, Option<End>) {
    let mut rest = input;
    let end = loop {
        if batch.len() >= MAX_EVENT_MSGS {
            break None;
        }
        match dec.decode(&mut rest) {
            Ok(None) => break None,
            Ok(Some(Event::Message(b))) => batch.push(Message::received(b, pipe)),
            Ok(Some(Event::Ping(p))) => {
                // Only the latest ping needs an answer (RFC 6455 §5.5.3).
                shared.set_pong(p);
            }
            // No text without `accept_text`, which SP pipes never ask for.
            Ok(Some(Event::Pong | Event::Text(_))) => {}
            Ok(Some(Event::Close(code))) => break Some(End::PeerClose(code)),
            Err(e) => break Some(End::Violation(e)),
        }
    };
    (input.len() - rest.len(), end)
}

async fn read_loop(
    io: &impl WsIo,
    dec: &mut Decoder,
    pipe: PipeId,
    link: &PipeLink,
    gate: &ReadGate,
    shared: &Shared,
    leftover: Vec<u8>,
) -> End {
    // Bytes read but not decoded yet: what followed the upgrade head, or
    // the rest of a read cut at MAX_EVENT_MSGS.
    let mut pending = leftover;
    loop {
        let mut batch = Vec::new();
        let end = if !pending.is_empty() {
            // The rest of a read cut at MAX_EVENT_MSGS: once the socket has
            // taken the last event (and the application lets us read).
            gate.wait_open().await;
            let (used, end) = feed(dec, &pending, &mut batch, shared, pipe);
            pending.drain(..used);
            if end.is_some() {
                pending = Vec::new();
            }
            end
        } else {
            gate.wait_open().await;
            if let Err(e) = io.readable().await {
                return End::Io(e);
            }
            let r = SCRATCH.with_borrow_mut(|s| match io.try_read(s) {
                Ok(0) => Err(Some(End::Eof)),
                Ok(n) => {
                    dec.refill(std::time::Instant::now());
                    let (used, end) = feed(dec, &s[..n], &mut batch, shared, pipe);
                    if end.is_none() && used < n {
                        pending.extend_from_slice(&s[used..n]);
                    }
                    Ok(end)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(None),
                Err(e) => Err(Some(End::Io(e))),
            });
            match r {
                Ok(end) => end,
                Err(None) => continue,
                Err(Some(end)) => return end,
            }
        };
        if pending.is_empty() && pending.capacity() > 0 {
            pending = Vec::new(); // hold nothing while idle
        }
        if !batch.is_empty() {
            gate.set_paused_by(ReadGate::EVENT, true);
            if link
                .events
                .send(PipeEvent::Messages(pipe, batch))
                .await
                .is_err()
            {
                return End::SocketClosed;
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
}

async fn write_loop(
    io: &impl WsIo,
    pipe: PipeId,
    link: &PipeLink,
    out_rx: &mut mpsc::UnboundedReceiver<PipeCmd>,
    shared: &Shared,
    mut masks: Option<&mut Rng>,
) -> End {
    loop {
        // Made per batch and dropped after it: nothing is kept while idle.
        let mut cmds = Vec::new();
        tokio::select! {
            n = out_rx.recv_many(&mut cmds, WRITE_BATCH) => {
                if n == 0 {
                    return End::Dropped;
                }
            }
            _ = shared.wake.notified() => {}
        }
        let mut out = BytesMut::new();
        let mut chunks = Vec::new();
        if let Some(p) = shared.take_pong() {
            frame::encode_control(Control::Pong, &p, masks.as_deref_mut(), &mut out);
        }
        let mut n = 0u32;
        for cmd in cmds {
            match cmd {
                PipeCmd::Send(m) => {
                    n += 1;
                    frame::encode_message(&m, masks.as_deref_mut(), &mut out, &mut chunks);
                }
                // Raw bytes are framed for byte streams: never sent to a
                // WebSocket pipe (its `Up` offers no direct writes).
                PipeCmd::Raw { msgs, .. } => {
                    tracing::warn!(pipe = pipe.0, "raw stream bytes sent to a websocket pipe");
                    n += msgs;
                }
            }
        }
        if !out.is_empty() {
            chunks.push(out.freeze());
        }
        shared.writing.store(true, Ordering::Relaxed);
        if let Err(e) = write_chunks(io, &mut chunks).await {
            return End::Io(e);
        }
        shared.writing.store(false, Ordering::Relaxed);
        if n > 0 {
            let _ = link.credits.send(Credit::Returned(pipe, n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task's own state is part of every idle connection's cost (the
    /// idle budget is 8 KiB per connection in all): keep it small.
    #[test]
    fn pipe_task_state_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (events, _ev) = async_channel::bounded(4);
            let (credits, _cr) = mpsc::unbounded_channel();
            let link = PipeLink {
                kind: pinion_core::protocol::ProtocolKind::Rep0,
                opts: Arc::new(pinion_core::Options::default()),
                events,
                credits,
                stats: Default::default(),
                closed: Default::default(),
            };
            let role = Role::Server { path: "/".into() };
            let read = Vec::new();
            let conn = WsConn {
                tcp,
                role,
                read,
                tls: None,
            };
            let f = run_pipe(conn, PipeId(1), &link, None);
            let size = std::mem::size_of_val(&f);
            eprintln!("ws pipe future: {size} bytes");
            assert!(size <= 2048, "ws pipe future is {size} bytes");
            // 120 bytes, and 32 for the flood bucket (FloodLimit).
            assert!(std::mem::size_of::<Decoder>() <= 152);
        });
    }
}
