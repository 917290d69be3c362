//! One task per pipe (connection), on one core for its whole life.
//!
//! A pipe task:
//! 1. sends the 8-byte SP header and reads the peer's, within the handshake
//!    timeout; a bad header or an incompatible protocol closes the connection
//!    and is counted in the socket's [`Stats`];
//! 2. announces itself to its socket with [`PipeEvent::Up`], carrying the
//!    sender of its write queue;
//! 3. then runs two loops until either ends:
//!    * the **reader** reads as much as the kernel has, decodes every complete
//!      frame (refusing an over-size length before allocating) and hands the
//!      socket one batch per read;
//!    * the **writer** takes every queued message at once, frames them into
//!      one buffer, writes it with one call and returns the credits;
//! 4. reports [`PipeEvent::Down`].
//!
//! Events go to the socket through one channel per socket, so a pipe's `Up`,
//! messages and `Down` arrive in order. That channel is bounded: when the
//! socket stops taking input (its receive queue is full) readers stop reading
//! and TCP flow control pushes back on the peer.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pinion_core::protocol::{PipeId, ProtocolKind};
use pinion_core::wire::{
    decode_header, encode_frame, encode_header, encode_prefix, FrameDecoder, Framing, HEADER_LEN,
};
use pinion_core::{Message, Options, PeerError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::stats::Stats;
use crate::stream::StreamIo;
use crate::transport::tls::PeerIdentity;
use crate::transport::{inproc::InprocEnd, Conn};

/// Commands from the socket to a pipe's writer.
#[derive(Debug)]
pub enum PipeCmd {
    /// Frame and send this message.
    Send(Message),
    /// Send these bytes as they are: the unwritten rest of `msgs` messages
    /// the socket driver framed and began to write itself.
    ///
    /// Empty `bytes` with `msgs` 0 asks the writer only to flush: the
    /// socket driver wrote to a TLS stream itself and some ciphertext is
    /// still waiting for the kernel. (Not a variant of its own: a third
    /// variant would cost this enum a tag, 8 bytes more in every slot of
    /// every pipe's write queue.)
    Raw {
        /// Framed bytes.
        bytes: Bytes,
        /// Messages they complete (credits to return once written).
        msgs: u32,
    },
}

impl PipeCmd {
    /// The writer's "flush what the TLS stream holds" (see [`PipeCmd::Raw`]).
    pub const FLUSH: PipeCmd = PipeCmd::Raw {
        bytes: Bytes::new(),
        msgs: 0,
    };
}

/// What the socket driver needs to write to a pipe itself.
#[derive(Debug, Clone)]
pub struct Direct {
    /// The pipe's stream.
    pub io: Arc<StreamIo>,
    /// Its framing.
    pub framing: Framing,
}

/// What a pipe tells its socket, in order.
#[derive(Debug)]
pub enum PipeEvent {
    /// Handshake done.
    Up {
        /// The pipe.
        pipe: PipeId,
        /// Protocol id the peer announced.
        peer: u16,
        /// The pipe's write queue; dropping it closes the pipe.
        out: mpsc::UnboundedSender<PipeCmd>,
        /// Messages the write queue may hold.
        credits: u32,
        /// The stream, for write-through (byte-stream transports only).
        direct: Option<Direct>,
        /// Pauses this pipe's reads.
        gate: Arc<ReadGate>,
    },
    /// One message (the usual case: a read that held one).
    Message(PipeId, Message),
    /// Messages read in one go.
    Messages(PipeId, Vec<Message>),
    /// The pipe is gone.
    Down(PipeId),
}

/// Lets the application stop one pipe's reads (a server holding too many of
/// that connection's requests) without touching the others: while closed,
/// the pipe's reader does not read, so TCP pushes back on that peer alone.
///
/// Three parties may close it for their own reasons, the application
/// ([`ReadGate::set_paused`]), the pattern (REP holding replies the peer
/// does not read, [`ReadGate::set_paused_by`] with [`ReadGate::PATTERN`])
/// and the pipe itself until the socket has taken its last event of
/// messages ([`ReadGate::EVENT`]); it is open only when none holds it
/// closed.
#[derive(Debug, Default)]
pub struct ReadGate {
    closed: std::sync::atomic::AtomicU8,
    opened: tokio::sync::Notify,
}

impl ReadGate {
    /// The application's reason (`Socket::pause_pipe`).
    pub const APP: u8 = 1;
    /// The pattern's reason (`Output::PausePipe`).
    pub const PATTERN: u8 = 2;
    /// The pipe's last event of messages waits for the socket to take it.
    /// A pipe reads and decodes nothing more meanwhile, so the socket's
    /// event queue holds at most one event (≤ [`MAX_EVENT_MSGS`]
    /// messages) per pipe, and pipes are taken in turn: a connection that
    /// sends one message is behind at most one event of each other
    /// connection, not behind everything a fast one could read ahead (it
    /// was up to 64 events, 8,192 messages, of one connection).
    pub const EVENT: u8 = 4;

    /// Stops (`true`) or resumes (`false`) reading, for the application.
    pub fn set_paused(&self, paused: bool) {
        self.set_paused_by(Self::APP, paused);
    }

    /// Stops or resumes reading for one reason (`APP` or `PATTERN`).
    pub fn set_paused_by(&self, reason: u8, paused: bool) {
        use std::sync::atomic::Ordering;
        let before = if paused {
            self.closed.fetch_or(reason, Ordering::AcqRel)
        } else {
            self.closed.fetch_and(!reason, Ordering::AcqRel)
        };
        if !paused && before & !reason == 0 {
            self.opened.notify_waiters();
        }
    }

    /// Waits while the gate is closed (returns at once when open).
    pub async fn wait_open(&self) {
        loop {
            let opened = self.opened.notified();
            if self.closed.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            opened.await;
        }
    }
}

/// Control messages to a socket that are not ordered with pipe input.
#[derive(Debug)]
pub enum Credit {
    /// `pipe` wrote `n` messages.
    Returned(PipeId, u32),
    /// The pipe task ended abnormally (a panic) before reporting `Down`.
    Lost(PipeId),
}

/// Reports [`Credit::Lost`] if a pipe task unwinds before its `Down`.
struct LostGuard<'a> {
    link: &'a PipeLink,
    pipe: PipeId,
    armed: bool,
}

impl Drop for LostGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.link.credits.send(Credit::Lost(self.pipe));
        }
    }
}

/// The verified TLS identities of a socket's pipes, by pipe (only pipes
/// whose peer presented a certificate are in it).
#[derive(Debug, Default)]
pub struct PeerTable(std::sync::Mutex<std::collections::HashMap<PipeId, Arc<PeerIdentity>>>);

impl PeerTable {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PipeId, Arc<PeerIdentity>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `pipe`'s peer identity (if it has one) until the returned
    /// guard is dropped.
    pub fn enter(&self, pipe: PipeId, peer: Option<Arc<PeerIdentity>>) -> PeerEntry<'_> {
        let entered = peer.is_some();
        if let Some(p) = peer {
            self.map().insert(pipe, p);
        }
        PeerEntry {
            table: self,
            pipe,
            entered,
        }
    }

    /// The identity `pipe`'s peer proved, while the pipe is up.
    pub fn get(&self, pipe: PipeId) -> Option<Arc<PeerIdentity>> {
        self.map().get(&pipe).cloned()
    }
}

/// Removes a pipe's entry from its [`PeerTable`] when dropped.
#[derive(Debug)]
pub struct PeerEntry<'a> {
    table: &'a PeerTable,
    pipe: PipeId,
    entered: bool,
}

impl Drop for PeerEntry<'_> {
    fn drop(&mut self) {
        if self.entered {
            self.table.map().remove(&self.pipe);
        }
    }
}

/// What a pipe needs from its socket.
#[derive(Debug, Clone)]
pub struct PipeLink {
    /// The socket's pattern.
    pub kind: ProtocolKind,
    /// Socket options.
    pub opts: Arc<Options>,
    /// Ordered pipe events.
    pub events: async_channel::Sender<PipeEvent>,
    /// Credits returned by writers.
    pub credits: mpsc::UnboundedSender<Credit>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Cancelled when the socket closes.
    pub closed: CancellationToken,
}

/// Largest read buffer space offered to the kernel at once (a peer that
/// keeps it full gets it; see [`next_chunk`]).
const READ_CHUNK: usize = 64 * 1024;
/// Smallest: what a peer sending one small request at a time is offered.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// Messages handed to the socket in one event at most: a stream of empty
/// frames (8 bytes each) would otherwise make one 64 KiB read into 8,192
/// message structs (~850 KB) held by this pipe until the socket takes them.
/// Past this many the rest of the buffer is decoded after the event is
/// taken, before reading more.
pub const MAX_EVENT_MSGS: usize = 128;
/// Fewest messages in one event: the cap when many pipes have events
/// waiting (see [`event_cap`]).
pub const MIN_EVENT_MSGS: usize = 16;
/// Messages that other busy pipes' events may hold ahead of a newcomer,
/// about: [`event_cap`] shrinks events toward it.
const EVENT_BUDGET: usize = 1024;

/// Messages a pipe may put in its next event, given how many pipes of its
/// socket are reading back to back (`Stats::busy_pipes`). The socket's
/// driver takes one event per pipe in turn ([`ReadGate::EVENT`]), so a
/// connection that sends one message waits behind about one event of
/// each busy pipe: a lone busy pipe gets [`MAX_EVENT_MSGS`] (fewer task
/// switches), and with many each gets less, down to [`MIN_EVENT_MSGS`],
/// keeping that wait near 1,024 messages (`EVENT_BUDGET`) rather than 128 per
/// busy pipe (12,800 with 100 pipelining peers on a core; the hostile
/// suite's `req_never_read_replies`).
pub fn event_cap(busy: u64) -> usize {
    let busy = usize::try_from(busy).unwrap_or(usize::MAX).max(1);
    (EVENT_BUDGET / busy).clamp(MIN_EVENT_MSGS, MAX_EVENT_MSGS)
}

/// This pipe's place in `Stats::busy_pipes`; leaves it when dropped.
struct Busy<'a> {
    stats: &'a Stats,
    counted: bool,
}

impl Busy<'_> {
    fn set(&mut self, busy: bool) {
        if busy != self.counted {
            self.counted = busy;
            if busy {
                self.stats.busy_pipes.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.busy_pipes.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}
/// A read buffer with less spare room than this gets a new chunk.
const MIN_SPARE: usize = 4 * 1024;
/// Bodies at least this long are written with a vectored write from their
/// own buffer instead of being copied into the write buffer.
const VECTORED_MIN: usize = 16 * 1024;
/// Most a read buffer grows by before the bytes to fill it have arrived.
const MAX_GROWTH: usize = 4 << 20;
/// Write buffers larger than this are released after use (an idle pipe
/// keeps at most this much for writing).
const WRITE_BUF_KEEP: usize = 4 * 1024;

/// The read space to offer next: twice what the last read brought, between
/// [`READ_CHUNK_MIN`] and [`READ_CHUNK`]. A connection that sends small
/// requests one at a time holds 4 KiB, not 64; a busy one quickly reads
/// 64 KiB at a time again.
fn next_chunk(last_read: usize) -> usize {
    last_read
        .saturating_mul(2)
        .clamp(READ_CHUNK_MIN, READ_CHUNK)
}

/// Runs a pipe to its end. `handshake` learns how the handshake went (dialers
/// use it to report the first connection's outcome). Returns the peer's
/// fault that ended the pipe, if one did (it is counted in the socket's
/// stats too).
pub async fn run(
    conn: Conn,
    pipe: PipeId,
    link: PipeLink,
    handshake: Option<oneshot::Sender<Result<(), Error>>>,
) -> Option<PeerError> {
    let mut guard = LostGuard {
        link: &link,
        pipe,
        armed: true,
    };
    let fault = match conn {
        Conn::Tcp(s) => {
            let deadline = tokio::time::Instant::now() + link.opts.handshake_timeout;
            let io = StreamIo::Tcp(s);
            run_stream(io, Framing::Tcp, pipe, &link, handshake, deadline).await
        }
        Conn::Ipc(s) => {
            let deadline = tokio::time::Instant::now() + link.opts.handshake_timeout;
            let io = StreamIo::Ipc(s);
            run_stream(io, Framing::Ipc, pipe, &link, handshake, deadline).await
        }
        // Boxed, the whole of it: a TLS pipe's state (the handshake's, then
        // the stream's) is not part of every other pipe's task.
        Conn::Tls(t) => Box::pin(run_tls(t, pipe, &link, handshake)).await,
        Conn::Inproc(end) => run_inproc(end, pipe, &link, handshake).await,
        Conn::Ws(ws) => crate::transport::ws::run_pipe(ws, pipe, &link, handshake).await,
    };
    guard.armed = false;
    fault
}

/// A `tls+tcp://` pipe: the TLS handshake, then SP as on `tcp://`, with
/// one handshake timeout for both.
async fn run_tls(
    t: crate::transport::tls::TlsConn,
    pipe: PipeId,
    link: &PipeLink,
    handshake: Option<oneshot::Sender<Result<(), Error>>>,
) -> Option<PeerError> {
    let deadline = tokio::time::Instant::now() + link.opts.handshake_timeout;
    match crate::transport::tls::open(t, deadline).await {
        Ok((tls, peer)) => {
            // The peer's certificate, for `peer_identity`, while the pipe
            // runs (kept here: a plain pipe holds no such entry).
            let _id = link.stats.peers.enter(pipe, peer);
            let io = StreamIo::Tls(Box::new(tls));
            run_stream(io, Framing::Tcp, pipe, link, handshake, deadline).await
        }
        Err(e) => crate::transport::tls::failed(e, pipe, link, handshake),
    }
}

fn report(handshake: Option<oneshot::Sender<Result<(), Error>>>, r: Result<(), Error>) {
    if let Some(h) = handshake {
        let _ = h.send(r);
    }
}

async fn handshake(
    io: &StreamIo,
    link: &PipeLink,
    deadline: tokio::time::Instant,
) -> Result<u16, Result<PeerError, io::Error>> {
    let exchange = async {
        io.write_all(&encode_header(link.kind.id())).await?;
        let mut h = [0u8; HEADER_LEN];
        io.read_exact(&mut h).await?;
        Ok::<_, io::Error>(h)
    };
    let h = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => return Err(Ok(PeerError::HandshakeTimeout)),
        // A TLS record that failed (`tls+tcp://`) is the peer's fault.
        Ok(Err(e)) => match crate::transport::tls::io::peer_error(&e) {
            Some(pe) => return Err(Ok(pe)),
            None => return Err(Err(e)),
        },
        Ok(Ok(h)) => h,
    };
    let peer = decode_header(&h).map_err(Ok)?;
    if peer != link.kind.peer_id() {
        return Err(Ok(PeerError::WrongProtocol(peer)));
    }
    Ok(peer)
}

async fn run_stream(
    io: StreamIo,
    framing: Framing,
    pipe: PipeId,
    link: &PipeLink,
    hs: Option<oneshot::Sender<Result<(), Error>>>,
    deadline: tokio::time::Instant,
) -> Option<PeerError> {
    let io = Arc::new(io);
    let peer = match handshake(&io, link, deadline).await {
        Ok(p) => p,
        Err(Ok(pe)) => {
            link.stats.count_peer_error(&pe);
            tracing::debug!(pipe = pipe.0, error = %pe, "handshake refused");
            report(hs, Err(Error::Peer(pe)));
            return Some(pe);
        }
        Err(Err(e)) => {
            link.stats
                .io_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            report(hs, Err(Error::io("handshake", "peer", e)));
            return None;
        }
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let credits = link.opts.pipe_buffer;
    let gate = Arc::new(ReadGate::default());
    // The socket driver writes to the stream itself while the writer is
    // idle (a TLS stream too: it encrypts, and hands the writer a flush (an
    // empty `Raw`) when ciphertext is left for the kernel).
    let direct = Some(Direct {
        io: io.clone(),
        framing,
    });
    if link
        .events
        .send(PipeEvent::Up {
            pipe,
            peer,
            out: out_tx,
            credits,
            direct,
            gate: gate.clone(),
        })
        .await
        .is_err()
    {
        report(hs, Err(Error::Closed));
        return None;
    }
    report(hs, Ok(()));

    let decoder = FrameDecoder::new(framing, link.opts.recv_max_size);
    let reader = async {
        // Nothing is allocated until the peer sends something, and an idle
        // pipe gives its buffer back (see below): 10,000 idle publishers
        // cost their sockets, not 10,000 read buffers.
        let mut buf = BytesMut::new();
        let mut last_read = 0;
        // The previous event stopped at MAX_EVENT_MSGS: decode the rest of
        // the buffer before reading more.
        let mut more = false;
        let mut busy = Busy {
            stats: &link.stats,
            counted: false,
        };
        loop {
            gate.wait_open().await;
            if !more {
                // Make room: at least a chunk, or the whole of the next
                // frame (its length was checked against the limit by
                // peek_len). Growth is capped per read, so a peer can only
                // make pinion hold what it actually sent (matters with an
                // unlimited receive size).
                let want = match decoder.peek_len(&buf) {
                    Ok(Some(len)) => usize::try_from(len)
                        .unwrap_or(usize::MAX)
                        .saturating_add(framing.prefix_len())
                        .saturating_sub(buf.len())
                        .min(MAX_GROWTH),
                    Ok(None) => 0,
                    Err(e) => return Err(Ok(e)),
                };
                if buf.capacity() == 0 {
                    // Idle: allocate only once there is something to read.
                    if let Err(e) = io.readable().await {
                        return Err(Err(e));
                    }
                }
                // Reserve only when the spare room runs low: `buf` shares
                // its storage with the messages split off it, so a reserve
                // that cannot be met in place allocates a new buffer.
                // Asking for a whole chunk after every small read would
                // allocate one per read while earlier messages are still
                // held.
                let spare = buf.capacity() - buf.len();
                if want > spare || spare < MIN_SPARE.min(next_chunk(last_read)) {
                    buf.reserve(want.max(next_chunk(last_read)));
                }
                match io.try_read_buf(&mut buf) {
                    Ok(0) => return Err(Err(io::Error::from(io::ErrorKind::UnexpectedEof))),
                    Ok(n) => last_read = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        busy.set(false);
                        if buf.is_empty() {
                            // Going idle: give the buffer back (messages
                            // split off it keep their own part of the
                            // storage). The next read sizes a new one from
                            // `last_read`.
                            buf = BytesMut::new();
                        }
                        if let Err(e) = io.readable().await {
                            return Err(Err(e));
                        }
                        continue;
                    }
                    Err(e) => return Err(Err(e)),
                }
            }
            // One event per read (at most MAX_EVENT_MSGS messages). A read
            // usually holds one message (one request in flight per peer),
            // which goes without a Vec.
            let mut first = None;
            let mut batch = Vec::new();
            let mut bad = None;
            more = false;
            let cap = event_cap(link.stats.busy_pipes.load(Ordering::Relaxed));
            loop {
                if batch.len() + usize::from(first.is_some()) >= cap {
                    more = true;
                    break;
                }
                match decoder.decode(&mut buf) {
                    Ok(Some(payload)) => {
                        let m = Message::received(payload, pipe);
                        match first.take() {
                            None if batch.is_empty() => first = Some(m),
                            prev => {
                                batch.extend(prev);
                                batch.push(m);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Deliver what came before the bad frame, then close.
                        bad = Some(e);
                        break;
                    }
                }
            }
            // More than one message in a read: the peer is pipelining.
            if more || !batch.is_empty() {
                busy.set(true);
            }
            let ev = match first {
                Some(m) => Some(PipeEvent::Message(pipe, m)),
                None if !batch.is_empty() => Some(PipeEvent::Messages(pipe, batch)),
                None => None,
            };
            if let Some(ev) = ev {
                gate.set_paused_by(ReadGate::EVENT, true);
                if link.events.send(ev).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(e) = bad {
                return Err(Ok(e));
            }
        }
    };
    let writer = async {
        let mut cmds = Vec::with_capacity(64);
        // Allocated by the first write, released after a large one.
        let mut wbuf = BytesMut::new();
        let mut chunks: Vec<Bytes> = Vec::new();
        loop {
            if out_rx.recv_many(&mut cmds, 1024).await == 0 {
                return Ok::<(), io::Error>(()); // socket dropped us: close
            }
            let mut n = 0u32;
            for cmd in cmds.drain(..) {
                match cmd {
                    PipeCmd::Send(m) => {
                        n += 1;
                        if m.body.len() >= VECTORED_MIN {
                            // Large body: write it from its own buffer, no copy.
                            encode_prefix(framing, &m, &mut wbuf);
                            chunks.push(wbuf.split().freeze());
                            chunks.push(m.body);
                        } else {
                            encode_frame(framing, &m, &mut wbuf);
                        }
                    }
                    // Empty: a flush (the write below flushes what a TLS
                    // stream holds).
                    PipeCmd::Raw { bytes, .. } if bytes.is_empty() => {}
                    PipeCmd::Raw { bytes, msgs } => {
                        n += msgs;
                        if !wbuf.is_empty() {
                            chunks.push(wbuf.split().freeze());
                        }
                        chunks.push(bytes);
                    }
                }
            }
            if chunks.is_empty() {
                io.write_all(&wbuf).await?;
                wbuf.clear();
            } else {
                if !wbuf.is_empty() {
                    chunks.push(wbuf.split().freeze());
                }
                io.write_chunks(&mut chunks).await?;
            }
            if wbuf.capacity() > WRITE_BUF_KEEP {
                wbuf = BytesMut::new();
            }
            let _ = link.credits.send(Credit::Returned(pipe, n));
        }
    };
    let outcome = tokio::select! {
        r = reader => r,
        w = writer => w.map_err(Err),
        _ = link.closed.cancelled() => Ok(()),
    };
    // A TLS record that failed is the peer's fault.
    let outcome = match outcome {
        Err(Err(e)) => match crate::transport::tls::io::peer_error(&e) {
            Some(pe) => Err(Ok(pe)),
            None => Err(Err(e)),
        },
        o => o,
    };
    let fault = match outcome {
        Err(Ok(pe)) => {
            tracing::debug!(pipe = pipe.0, error = %pe, "closing pipe: peer error");
            link.stats.count_peer_error(&pe);
            Some(pe)
        }
        Err(Err(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
            tracing::debug!(pipe = pipe.0, error = %e, "closing pipe: I/O error");
            link.stats
                .io_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
        _ => None,
    };
    io.shutdown_write();
    let _ = link.events.send(PipeEvent::Down(pipe)).await;
    fault
}

async fn run_inproc(
    end: InprocEnd,
    pipe: PipeId,
    link: &PipeLink,
    hs: Option<oneshot::Sender<Result<(), Error>>>,
) -> Option<PeerError> {
    let InprocEnd { peer_proto, tx, rx } = end;
    if peer_proto != link.kind.peer_id() {
        let pe = PeerError::WrongProtocol(peer_proto);
        link.stats.count_peer_error(&pe);
        report(hs, Err(Error::Peer(pe)));
        return Some(pe);
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let credits = link.opts.pipe_buffer;
    let gate = Arc::new(ReadGate::default());
    if link
        .events
        .send(PipeEvent::Up {
            pipe,
            peer: peer_proto,
            out: out_tx,
            credits,
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
    let reader = async {
        loop {
            gate.wait_open().await;
            let Ok(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            for m in &mut batch {
                m.set_pipe(pipe);
            }
            gate.set_paused_by(ReadGate::EVENT, true);
            if link
                .events
                .send(PipeEvent::Messages(pipe, batch))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async {
        let mut cmds = Vec::with_capacity(64);
        loop {
            if out_rx.recv_many(&mut cmds, 1024).await == 0 {
                return;
            }
            let n = cmds.len() as u32;
            for cmd in cmds.drain(..) {
                let PipeCmd::Send(m) = cmd else {
                    // Raw bytes are only ever sent to byte-stream pipes.
                    return;
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            let _ = link.credits.send(Credit::Returned(pipe, n));
        }
    };
    tokio::select! {
        _ = reader => {},
        _ = writer => {},
        _ = link.closed.cancelled() => {},
    }
    let _ = link.events.send(PipeEvent::Down(pipe)).await;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pipe's task holds the largest state of any transport's pipe
    /// (the future of [`run`]): it is part of each idle connection's cost.
    #[test]
    fn a_pipe_task_is_small_whatever_its_transport() {
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
                kind: ProtocolKind::Rep0,
                opts: Arc::new(Options::default()),
                events,
                credits,
                stats: Default::default(),
                closed: Default::default(),
            };
            let tcp2 = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now();
            let rs = run_stream(
                StreamIo::Tcp(tcp2),
                Framing::Tcp,
                PipeId(2),
                &link,
                None,
                deadline,
            );
            eprintln!("run_stream future: {} bytes", std::mem::size_of_val(&rs));
            drop(rs);
            let f = run(Conn::Tcp(tcp), PipeId(1), link, None);
            let size = std::mem::size_of_val(&f);
            eprintln!(
                "pipe task future: {size} bytes; Conn {} B, PipeLink {} B, PipeCmd {} B",
                std::mem::size_of::<Conn>(),
                std::mem::size_of::<PipeLink>(),
                std::mem::size_of::<PipeCmd>()
            );
            // A write queue's first block holds 32 of them (per pipe).
            assert!(std::mem::size_of::<PipeCmd>() <= std::mem::size_of::<Message>());
            assert!(size <= 2048, "pipe future is {size} bytes");
        });
    }
}
