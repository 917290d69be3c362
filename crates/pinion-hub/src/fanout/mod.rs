//! Real-time fan-out: every logged message, once durable, goes to the hub's
//! subscribers, in offset order, with its offset.
//!
//! # Shape
//!
//! ```text
//!  writer ── Arc<FanBatch> ──► core 0: fan-out task ─► its subscribers' sockets
//!  (after the fdatasync)  └──► core 1: fan-out task ─► ...
//!                                   ▲  │ catch-up requests
//!                   replay chunks   │  ▼
//!                               replay thread (reads the log: at most
//!                               `max_replays` at once, one chunk each in turn)
//! ```
//!
//! The writer encodes each durable record **once** per framing (an SP
//! frame for TCP subscribers, a WebSocket frame for WebSocket ones; server
//! frames are unmasked, so every subscriber gets the same bytes) and sends
//! one shared batch to every core. Each core's fan-out task owns the
//! subscribers accepted on that core (shared-nothing) and writes to their
//! sockets itself: a non-blocking write per subscriber per batch, all the
//! batch's frames for that subscriber in one vectored write. Only a
//! subscriber whose socket is full gets a queue, and a small task that
//! waits for the socket to drain.
//!
//! How those writes are made is [`FanoutSend`]: one `writev` each
//! (through tokio), or, with `io_uring`, every such subscriber's
//! `sendmsg` of a batch (up to `YIELD_EVERY`, 2,048, at a time) queued on the
//! core's ring ([`pinion_runtime::sys::uring::BatchSender`]) and submitted
//! with one `io_uring_enter` per 1,024. Each result is then handled as a
//! `writev`'s would be: the rest of a short write is queued, and so is
//! everything on EAGAIN, and the queue is written next through tokio, whose
//! own `WouldBlock` arms the wait for the socket to drain (tokio never saw
//! the ring's EAGAIN); an error drops the subscriber.
//!
//! # Cost: what the matching subscribers cost
//!
//! Each core keeps a [`TopicIndex`] of its subscribers' prefixes (a radix
//! tree; SP subscribers, which filter on their side as NNG's do, sit at
//! its root, the match-all set). A record walks its topic down the tree
//! once and visits only the subscribers it matches, so a publish costs the
//! same whether 0 or 15,000 idle connections wait on other topics;
//! subscribing and leaving cost the prefix's length. Nothing else in a
//! batch visits subscribers the batch does not reach: see the watermark
//! below.
//!
//! # Slow consumers
//!
//! The bytes queued for one subscriber are bounded (`max_queued`, default
//! 1 MiB). Past it the queue is dropped (the frame the kernel has begun to
//! take is finished), the subscriber gets a close frame
//! ([`CLOSE_SLOW`]) whose reason names the offset to resume from, and the
//! connection is closed (after [`CLOSE_GRACE`] at the latest). Nothing
//! waits for a slow subscriber: the writer never blocks on a core, and a
//! core never blocks on a socket. The kernel's send buffer of a subscriber
//! socket is fixed at [`SUB_SNDBUF`] (not auto-tuned up to 4 MiB), so a
//! stalled subscriber holds about 1.5 MiB in all before it is cut.
//!
//! # Resume without gap or duplicate
//!
//! Each core has a **watermark**, `live_next`: every record below it has
//! been handed to the core's live subscribers. A live subscriber is owed
//! every matching record from the watermark on, so it carries no position
//! of its own that a batch would have to advance.
//!
//! A subscriber that asks for `from = N` below the watermark is "catching
//! up": live batches pass it by, and the replay thread reads the log from
//! `N` up to the watermark, in chunks of about [`REPLAY_CHUNK`] bytes of
//! log read, matching or not (and at most half the queue bound of frames,
//! so a replay never looks like a slow consumer), each requested only once
//! the previous one is written. A catching-up subscriber carries `next`,
//! the next offset it is owed; when a chunk brings it to the watermark it
//! turns live. Frames below `next`
//! are never sent again, so the seam between the log and the live stream
//! has neither a gap nor a duplicate. A batch that does not start at the
//! watermark, or whose records the writer did not encode (it saw no
//! subscriber when it logged them), turns the core's live subscribers back
//! to catching up from the watermark.
//!
//! # Replays are bounded
//!
//! What catching-up subscribers can make the replay thread do is bounded
//! (module `replay`): a chunk is bounded by the log it reads, so a filter
//! that matches nothing costs one chunk per turn like any other, never
//! the whole log; at most `max_replays` replays hold a slot (a chunk being
//! read or delivered) and the rest wait in arrival order, one chunk per
//! replay per turn; replays at one offset share a read; and a subscriber's
//! replay is cancelled when this task drops it (its `cancel` flag, set in
//! `drop_sub` and checked by the thread before every chunk).
//!
//! # A core that falls behind
//!
//! The batches queued for a core are bounded in bytes
//! (`max_fanout_backlog`) without the writer ever waiting: a core over the
//! bound is skipped, and once it has processed its backlog it is sent one
//! unencoded batch for the records it missed, which demotes its live
//! subscribers as above (see `writer::FanGate`). Each batch processed is
//! taken off the core's backlog in `Fanout::run`'s dispatch.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pinion_proto::{Delivery, Message as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::config::FanoutSend;
use crate::Shared;
use pinion_runtime::sys::uring::{self, BatchSender, UringError};

pub mod index;
#[cfg(test)]
mod model;
mod replay;

pub use index::TopicIndex;
pub use replay::REPLAY_STALL;
#[cfg(test)]
use replay::{replay_chunk, LogSource, ReplayQueue};
pub(crate) use replay::{run_replay, ReplayReq, Replayed};

/// WebSocket close code for a subscriber that fell too far behind (the
/// private-use range 4000-4999 of RFC 6455).
pub const CLOSE_SLOW: u16 = pinion_proto::ws::CLOSE_SLOW_CONSUMER;
/// WebSocket close code for a subscriber whose replay failed (the log could
/// not be read).
pub const CLOSE_REPLAY_FAILED: u16 = pinion_proto::ws::CLOSE_REPLAY_FAILED;
/// Bytes of log a replay chunk reads, matching or not, and of frames it
/// hands a subscriber, at most (each also at most half the subscriber's
/// queue bound; the record that crosses it is the chunk's last).
pub const REPLAY_CHUNK: usize = 256 << 10;
/// How long a subscriber being closed may take to read its close frame.
/// A slow consumer's close frame waits behind what fills its socket, so it
/// must read that much first: a browser whose page was busy for a few
/// seconds (the node test blocks its event loop ~10 s on a loaded machine)
/// still learns where to resume. What it holds meanwhile is its socket and
/// the kernel's buffer, its queue having been dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(15);

/// Index entries of departed subscribers removed between two messages
/// (about half a millisecond of work).
const UNINDEX_SLICE: usize = 512;
/// Kernel send buffer of a subscriber's socket (the kernel doubles it).
/// Fixed rather than auto-tuned (up to `tcp_wmem`'s 4 MiB by default), so
/// a subscriber that stops reading holds at most this much in the kernel
/// besides the queue bound in the hub.
pub const SUB_SNDBUF: usize = 256 << 10;

/// Fixes a subscriber socket's kernel send buffer (see [`SUB_SNDBUF`]).
pub(crate) fn bound_send_buffer(io: &TcpStream) {
    let _ = socket2::SockRef::from(io).set_send_buffer_size(SUB_SNDBUF);
}

/// Subscribers served per batch before the fan-out task yields.
const YIELD_EVERY: usize = 2048;
/// Queue entries that are not log records (pongs, close frames).
const CONTROL: u64 = u64::MAX;

/// How a subscriber's frames are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// SP over TCP: 64-bit big-endian length, then the body.
    Sp,
    /// WebSocket: one binary frame per message.
    Ws,
}

/// One durable record, encoded for both framings.
#[derive(Debug)]
pub(crate) struct Entry {
    pub offset: u64,
    pub topic: Bytes,
    pub sp: Bytes,
    pub ws: Bytes,
}

/// Records `[first, next)` of the log, in order. When nobody subscribed
/// the writer does not encode them (`encoded` is false, `entries` empty):
/// the cores still learn how far the log is, and a subscriber that joined
/// meanwhile reads those records from the log instead.
#[derive(Debug)]
pub(crate) struct FanBatch {
    pub first: u64,
    pub next: u64,
    pub encoded: bool,
    pub entries: Vec<Entry>,
}

/// A record as the writer hands it to [`encode`].
pub(crate) struct Durable<'a> {
    pub offset: u64,
    pub timestamp_us: u64,
    pub client_id: &'a [u8; 16],
    pub seq: u64,
    pub topic: &'a [u8],
    pub payload: &'a Bytes,
}

fn delivery(d: &Durable<'_>) -> Delivery {
    Delivery {
        offset: Some(d.offset),
        timestamp_us: Some(d.timestamp_us),
        client_id: Some(Bytes::copy_from_slice(d.client_id)),
        seq: Some(d.seq),
        payload: Some(d.payload.clone()),
    }
}

/// A server-side (unmasked) binary WebSocket frame header for `len` bytes.
pub fn ws_head(len: usize, out: &mut BytesMut) {
    ws_frame_head(0x82, len, out); // FIN + binary
}

/// A whole server-side (unmasked, FIN) WebSocket frame: `first` is the
/// first byte (0x81 text, 0x82 binary, 0x8A pong, …).
pub fn ws_frame(first: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    ws_frame_head(first, payload.len(), &mut b);
    b.put_slice(payload);
    b.freeze()
}

fn ws_frame_head(first: u8, len: usize, out: &mut BytesMut) {
    out.put_u8(first);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A server-side WebSocket control frame (close with a code and reason).
pub fn ws_close(code: u16, reason: &str, out: &mut BytesMut) {
    let mut reason = reason.as_bytes();
    if reason.len() > 123 {
        reason = &reason[..123];
    }
    out.put_u8(0x88);
    out.put_u8((2 + reason.len()) as u8);
    out.put_u16(code);
    out.put_slice(reason);
}

/// Encodes one record for both framings, sharing one buffer.
/// The body every subscriber gets is topic, 0x00, [`Delivery`]. Both
/// frames share `buf`'s storage; the body is encoded once, after the SP
/// length (known up front from the protobuf's encoded length), and copied
/// once behind the WebSocket header.
pub(crate) fn encode(d: &Durable<'_>, buf: &mut BytesMut) -> Entry {
    let msg = delivery(d);
    let n = d.topic.len() + 1 + msg.encoded_len();
    buf.reserve(2 * n + 24);
    buf.put_u64(n as u64);
    buf.put_slice(d.topic);
    buf.put_u8(0);
    // Encoding into a BytesMut cannot fail (it grows).
    let _ = msg.encode(buf);
    let sp = buf.split().freeze();
    ws_head(n, buf);
    buf.put_slice(&sp[8..]);
    let ws = buf.split().freeze();
    Entry {
        offset: d.offset,
        topic: sp.slice(8..8 + d.topic.len()),
        sp,
        ws,
    }
}

/// The writing side of a subscriber's connection, as the fan-out uses it:
/// a TCP stream in the hub, an in-memory pipe in the model tests.
pub(crate) trait SubSocket: Send + Sync + 'static {
    /// Writes what the kernel takes now (`WouldBlock` if nothing).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// As [`SubSocket::try_write`], gathering several buffers.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Resolves once the socket may take bytes again (or has failed).
    fn writable(&self) -> impl std::future::Future<Output = ()> + Send;
    /// Ends the connection both ways (its reader task sees the end too).
    fn shutdown(&self);
    /// The socket's descriptor, for batched sends through io_uring
    /// (`None`: not a kernel socket; always written through `try_write*`).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl SubSocket for TcpStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    async fn writable(&self) {
        let _ = TcpStream::writable(self).await;
    }

    fn shutdown(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// A new subscriber, handed to its core's fan-out task by the acceptor.
pub(crate) struct NewSub<S = TcpStream> {
    pub id: u64,
    pub framing: Framing,
    pub io: Arc<S>,
    /// Topic prefixes; empty: every topic.
    pub filter: Vec<Bytes>,
    /// Replay from this offset first (absent: live from now).
    pub from: Option<u64>,
    /// Send the `pinion.v1` hello first: a text frame `{"next":N}` naming
    /// the first offset this subscription can deliver.
    pub hello: bool,
}

/// Input of a core's fan-out task.
pub(crate) enum FanIn<S = TcpStream> {
    Batch(Arc<FanBatch>),
    NewSub(NewSub<S>),
    /// The subscriber's connection ended (or must end now).
    Gone(u64),
    /// The subscriber's socket can take bytes again.
    Writable(u64),
    /// Answer a WebSocket ping.
    Pong(u64, Bytes),
    /// The WebSocket subscriber broke the protocol (or flooded): send it a
    /// close frame with this code and reason, then drop it (at once if the
    /// frame went out, else once it has or after [`CLOSE_GRACE`]).
    Violation(u64, u16, &'static str),
    /// Ping a WebSocket subscriber that has been silent (its reader task
    /// asks; it drops the subscriber if no answer comes).
    Ping(u64),
    Replayed(Replayed),
    /// The hub is stopping: say goodbye to every subscriber.
    Shutdown,
}

/// Whether `topic` passes `filter` (prefixes; empty passes everything).
pub fn matches(filter: &[Bytes], topic: &[u8]) -> bool {
    filter.is_empty() || filter.iter().any(|p| topic.starts_with(p))
}

struct Sub<S> {
    framing: Framing,
    io: Arc<S>,
    /// Its prefixes, [normalized](index::normalize): as held in the index.
    filter: Vec<Bytes>,
    /// Catching up: the next offset it is owed. Live: the lowest offset it
    /// may be sent (above the core's watermark only when it asked to start
    /// in the future); a live subscriber is owed every matching record
    /// from the watermark on, so nothing about it changes while records it
    /// does not match go by.
    next: u64,
    live: bool,
    /// A replay request is outstanding.
    replaying: bool,
    /// Set when it is dropped: the replay thread reads nothing more for
    /// it (shared with its requests).
    cancel: Arc<AtomicBool>,
    /// This batch's frames for it, gathered record by record while the
    /// index is walked, then written in one go (freed after: an idle
    /// subscriber holds no buffer).
    pending: Vec<(u64, Bytes)>,
    /// Frames not yet taken by the kernel, with their offsets (the front
    /// one may be partly written).
    queue: VecDeque<(u64, Bytes)>,
    queued: usize,
    /// The front frame is partly written.
    front_started: bool,
    /// A task waits for the socket to become writable.
    waiting: bool,
    /// Closing: flush the queue (ending in a close frame), then drop.
    closing: bool,
}

/// One core's fan-out: its subscribers, their topic index, and the
/// position of the live stream on this core.
pub(crate) struct Fanout<S = TcpStream> {
    core: usize,
    rx: UnboundedReceiver<FanIn<S>>,
    tx: UnboundedSender<FanIn<S>>,
    replay: std::sync::mpsc::Sender<ReplayReq>,
    /// The watermark: every record below it has reached this core's live
    /// subscribers (or their queues).
    live_next: u64,
    max_queued: usize,
    shared: Arc<Shared>,
    index: TopicIndex,
    /// Index entries of departed subscribers, removed a slice at a time
    /// between messages ([`UNINDEX_SLICE`]): 1,000 subscribers with 64
    /// prefixes each leaving at once were 64,000 removals in one go, tens
    /// of milliseconds in which this core served nothing else. Until
    /// removed, a match on them finds no subscriber and is skipped (ids
    /// are never reused).
    unindex: VecDeque<(u64, Vec<Bytes>)>,
    /// Scratch: the subscribers one batch reaches.
    touched: Vec<u64>,
    /// This core's backlog as the writer bounds it (`writer::FanGate`):
    /// every batch processed is taken off it. `None` when batches do not
    /// come from a writer (the model tests).
    backlog: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// How batches are written (see [`FanoutSend`]).
    send_mode: FanoutSend,
    /// This core's ring, with `io_uring`: made in [`Fanout::run`], on the
    /// core's own thread (a `SINGLE_ISSUER` ring is tied to the thread
    /// that made it). `None`: writing with `writev`.
    ring: Option<BatchSender>,
}

/// A subscriber written through the ring: its id, its socket, its frames.
type Direct<S> = (u64, Arc<S>, Vec<(u64, Bytes)>);

/// Frames gathered in one vectored write at most.
const MAX_IOV: usize = 64;

/// What writing to a subscriber came to.
enum Wrote {
    Ok,
    /// Its queue is over the bound.
    Slow,
    /// The socket failed.
    Dead,
}

impl<S: SubSocket> Fanout<S> {
    /// Core `core`'s fan-out, whose live stream starts at `live_next`.
    pub fn new(
        core: usize,
        (tx, rx): (UnboundedSender<FanIn<S>>, UnboundedReceiver<FanIn<S>>),
        replay: std::sync::mpsc::Sender<ReplayReq>,
        live_next: u64,
        max_queued: usize,
        shared: Arc<Shared>,
    ) -> Fanout<S> {
        Fanout {
            core,
            rx,
            tx,
            replay,
            live_next,
            max_queued,
            shared,
            index: TopicIndex::new(),
            unindex: VecDeque::new(),
            touched: Vec::new(),
            backlog: None,
            // The model tests' default: their sockets have no descriptor.
            send_mode: FanoutSend::Writev,
            ring: None,
        }
    }

    /// Writes batches as `mode` says (the ring itself is made when the
    /// task starts, on its core).
    pub fn with_send(mut self, mode: FanoutSend) -> Self {
        self.send_mode = mode;
        self
    }

    /// Takes each batch it has processed off `backlog`, the counter the
    /// writer bounds this core's backlog with.
    pub fn with_backlog(mut self, backlog: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.backlog = Some(backlog);
        self
    }

    pub async fn run(mut self) {
        use tokio::sync::mpsc::error::TryRecvError;
        if self.send_mode == FanoutSend::IoUring {
            match BatchSender::new(uring::DEFAULT_ENTRIES) {
                Ok(r) => {
                    tracing::debug!(core = self.core, kind = ?r.kind(), "fan-out sends through io_uring");
                    self.ring = Some(r);
                }
                Err(e) => {
                    tracing::warn!(core = self.core, error = %e, "fan-out: io_uring unavailable; sending with writev");
                }
            }
        }
        let mut subs: HashMap<u64, Sub<S>> = HashMap::new();
        loop {
            let first = if self.unindex.is_empty() {
                match self.rx.recv().await {
                    Some(m) => m,
                    None => return,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => {
                        // Nothing else to do: a slice of the removals,
                        // then the core's other tasks get their turn.
                        self.unindex_some();
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
            };
            self.dispatch(first, &mut subs).await;
            let mut n = 1;
            while n < 257 {
                match self.rx.try_recv() {
                    Ok(m) => self.dispatch(m, &mut subs).await,
                    Err(_) => break,
                }
                n += 1;
            }
            if !self.unindex.is_empty() {
                self.unindex_some();
            }
            if n >= 257 || !self.unindex.is_empty() {
                // A long run of messages (subscribers leaving by the
                // thousand, say): let the intake and the pipes in.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Removes up to [`UNINDEX_SLICE`] index entries of departed
    /// subscribers.
    fn unindex_some(&mut self) {
        let mut left = UNINDEX_SLICE;
        while left > 0 {
            let Some((id, filter)) = self.unindex.front_mut() else {
                return;
            };
            while left > 0 {
                let Some(p) = filter.pop() else { break };
                self.index.remove(&p, *id);
                left -= 1;
            }
            if filter.is_empty() {
                self.unindex.pop_front();
            }
        }
    }

    async fn dispatch(&mut self, m: FanIn<S>, subs: &mut HashMap<u64, Sub<S>>) {
        match m {
            FanIn::Batch(b) => {
                self.batch(&b, subs).await;
                // Processed: the writer may send this core as much again.
                if let Some(backlog) = &self.backlog {
                    crate::writer::release(backlog, &self.shared.stats, &b);
                }
            }
            other => self.handle(other, subs),
        }
    }

    fn handle(&mut self, m: FanIn<S>, subs: &mut HashMap<u64, Sub<S>>) {
        match m {
            FanIn::Batch(_) => unreachable!("batches go through dispatch"),
            FanIn::NewSub(n) => self.add(n, subs),
            // The end of its stream, or the grace after a close frame ran
            // out (the socket is shut down either way, also when its reader
            // task is still waiting).
            FanIn::Gone(id) => self.drop_sub(id, subs),
            FanIn::Writable(id) => {
                let Some(s) = subs.get_mut(&id) else { return };
                s.waiting = false;
                match self.flush(id, s) {
                    Wrote::Ok => {}
                    Wrote::Slow | Wrote::Dead => {
                        self.drop_sub(id, subs);
                        return;
                    }
                }
                if s.closing && s.queue.is_empty() {
                    self.drop_sub(id, subs);
                    return;
                }
                if !s.live && !s.replaying && s.queue.is_empty() {
                    self.request_replay(id, s);
                }
            }
            FanIn::Pong(id, payload) => {
                let Some(s) = subs.get_mut(&id) else { return };
                let pong = ws_frame(0x8A, &payload[..payload.len().min(125)]);
                let r = self.send(id, s, &mut vec![(CONTROL, pong)]);
                self.settle(id, r, subs);
            }
            FanIn::Violation(id, code, why) => {
                let Some(s) = subs.get_mut(&id) else { return };
                if s.closing {
                    self.drop_sub(id, subs);
                    return;
                }
                self.close_with(id, s, code, why);
                if s.queue.is_empty() {
                    self.drop_sub(id, subs);
                }
            }
            FanIn::Ping(id) => {
                let Some(s) = subs.get_mut(&id) else { return };
                if s.framing != Framing::Ws || s.closing {
                    return;
                }
                let ping = ws_frame(0x89, b"");
                let r = self.send(id, s, &mut vec![(CONTROL, ping)]);
                self.settle(id, r, subs);
            }
            FanIn::Replayed(r) => self.replayed(r, subs),
            FanIn::Shutdown => {
                for (_, s) in subs.drain() {
                    s.cancel.store(true, Ordering::Release);
                    // Best effort: a WebSocket subscriber whose queue is not
                    // mid-frame gets "going away" (1001).
                    if s.framing == Framing::Ws && !s.front_started {
                        let mut b = BytesMut::new();
                        ws_close(1001, "the hub is shutting down", &mut b);
                        let _ = s.io.try_write(&b);
                    }
                    s.io.shutdown();
                    self.forget(&s);
                }
                self.index = TopicIndex::new();
                self.unindex.clear();
            }
        }
    }

    fn add(&mut self, n: NewSub<S>, subs: &mut HashMap<u64, Sub<S>>) {
        if subs.contains_key(&n.id) {
            // Ids are unique per hub; a repeat is a bug upstream, and must
            // not leave the index pointing at the wrong subscriber.
            debug_assert!(false, "subscriber {} added twice", n.id);
            n.io.shutdown();
            return;
        }
        let (next, live) = match n.from {
            Some(f) if f < self.live_next => (f, false),
            Some(f) => (f, true),
            None => (self.live_next, true),
        };
        let counter = match n.framing {
            Framing::Sp => &self.shared.stats.subscribers_tcp,
            Framing::Ws => &self.shared.stats.subscribers_ws,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut s = Sub {
            framing: n.framing,
            io: n.io,
            filter: index::normalize(&n.filter),
            next,
            live,
            replaying: false,
            cancel: Arc::new(AtomicBool::new(false)),
            pending: Vec::new(),
            queue: VecDeque::new(),
            queued: 0,
            front_started: false,
            waiting: false,
            closing: false,
        };
        if n.hello {
            // Before anything else on this connection (replays come later,
            // through this task).
            let json = format!("{{\"next\":{next}}}");
            let hello = ws_frame(0x81, json.as_bytes());
            if !matches!(
                self.send(n.id, &mut s, &mut vec![(CONTROL, hello)]),
                Wrote::Ok
            ) {
                s.io.shutdown();
                self.forget(&s);
                return;
            }
        }
        for p in &s.filter {
            self.index.insert(p, n.id);
        }
        if !live {
            self.request_replay(n.id, &mut s);
        }
        subs.insert(n.id, s);
    }

    fn forget(&self, s: &Sub<S>) {
        let counter = match s.framing {
            Framing::Sp => &self.shared.stats.subscribers_tcp,
            Framing::Ws => &self.shared.stats.subscribers_ws,
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes a subscriber from the table now and from the index a slice
    /// at a time ([`Fanout::unindex_some`]; its socket closes when the last
    /// reference, held by its reader task, goes), and
    /// cancels its replay: whatever it still had queued at the replay
    /// thread is dropped there unread.
    fn drop_sub(&mut self, id: u64, subs: &mut HashMap<u64, Sub<S>>) {
        if let Some(mut s) = subs.remove(&id) {
            s.cancel.store(true, Ordering::Release);
            // Out of the index later, a slice at a time (`unindex`).
            let filter = std::mem::take(&mut s.filter);
            if !filter.is_empty() {
                self.unindex.push_back((id, filter));
            }
            self.forget(&s);
            s.io.shutdown();
        }
    }

    /// Where a subscriber stands: the next offset it is owed.
    fn position(&self, s: &Sub<S>) -> u64 {
        if s.live {
            s.next.max(self.live_next)
        } else {
            s.next
        }
    }

    fn request_replay(&self, id: u64, s: &mut Sub<S>) {
        s.replaying = true;
        let _ = self.replay.send(ReplayReq {
            core: self.core,
            sub: id,
            from: s.next,
            upto: self.live_next,
            framing: s.framing,
            filter: s.filter.clone(),
            budget: REPLAY_CHUNK.min(self.max_queued / 2),
            cancel: s.cancel.clone(),
        });
    }

    /// Delivers one batch to the live subscribers of this core that its
    /// records match, found through the index: the cost is the matching
    /// subscribers' and the topics' lengths, not the connections'. Every
    /// [`YIELD_EVERY`] subscribers written it lets the core's other tasks
    /// run (the publishers' intake among them), so a fan-out to tens of
    /// thousands of connections does not hold up acks on this core.
    async fn batch(&mut self, b: &FanBatch, subs: &mut HashMap<u64, Sub<S>>) {
        let watermark = self.live_next;
        if b.next <= watermark {
            return;
        }
        self.live_next = b.next;
        if b.first > watermark || !b.encoded {
            // The live stream skipped records, or they were not encoded
            // (the writer saw no subscriber when it logged them).
            self.demote_all(watermark, subs);
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        for e in &b.entries {
            if e.offset < watermark {
                continue;
            }
            self.index.for_each_match(&e.topic, |id| {
                let Some(s) = subs.get_mut(&id) else { return };
                if !s.live || s.closing || e.offset < s.next {
                    return;
                }
                if s.pending.is_empty() {
                    touched.push(id);
                }
                let f = match s.framing {
                    Framing::Sp => &e.sp,
                    Framing::Ws => &e.ws,
                };
                s.pending.push((e.offset, f.clone()));
            });
        }
        // Counted once per batch: the counter is shared by every core.
        let mut delivered = 0;
        if self.ring.is_some() {
            for (i, ids) in touched.chunks(YIELD_EVERY).enumerate() {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                delivered += self.send_ring(ids, subs);
            }
        } else {
            for (i, &id) in touched.iter().enumerate() {
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    tokio::task::yield_now().await;
                }
                let Some(s) = subs.get_mut(&id) else { continue };
                let mut frames = std::mem::take(&mut s.pending);
                let n = frames.len() as u64;
                match self.send(id, s, &mut frames) {
                    Wrote::Ok => delivered += n,
                    w => self.settle(id, w, subs),
                }
            }
        }
        touched.clear();
        self.touched = touched;
        self.shared
            .stats
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Writes the pending frames of the subscribers `ids` through the
    /// ring: those with nothing queued in one `send_batch` (the others
    /// behind their queues, as [`Fanout::send`] does), then each result as
    /// a `writev`'s. Returns the frames delivered.
    fn send_ring(&mut self, ids: &[u64], subs: &mut HashMap<u64, Sub<S>>) -> u64 {
        let mut delivered = 0;
        // (id, its socket, its frames): sent together below.
        let mut direct: Vec<Direct<S>> = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(s) = subs.get_mut(&id) else { continue };
            let mut frames = std::mem::take(&mut s.pending);
            if s.queue.is_empty() && !s.waiting && s.io.fd().is_some() {
                direct.push((id, s.io.clone(), frames));
                continue;
            }
            let n = frames.len() as u64;
            match self.send(id, s, &mut frames) {
                Wrote::Ok => delivered += n,
                w => self.settle(id, w, subs),
            }
        }
        if direct.is_empty() {
            return delivered;
        }
        let mut results = Vec::with_capacity(direct.len());
        {
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(direct.len());
            let mut ends = Vec::with_capacity(direct.len());
            for (_, _, frames) in &direct {
                iov.extend(frames.iter().take(MAX_IOV).map(|(_, f)| IoSlice::new(f)));
                ends.push(iov.len());
            }
            let mut start = 0;
            let items: Vec<(BorrowedFd<'_>, &[IoSlice<'_>])> = direct
                .iter()
                .zip(&ends)
                .filter_map(|((_, io, _), &end)| {
                    let bufs = &iov[start..end];
                    start = end;
                    Some((io.fd()?, bufs))
                })
                .collect();
            debug_assert_eq!(items.len(), direct.len());
            let ring = self.ring.as_mut().expect("checked by the caller");
            if let Err(e) = ring.send_batch(&items, &mut results) {
                // Every result is still right (what was not sent reads as
                // WouldBlock: queued, written by the fallback below).
                tracing::warn!(core = self.core, error = %e, "fan-out: io_uring failed; sending with writev from now on");
                if matches!(e, UringError::Broken(_)) {
                    self.ring = None;
                }
            }
        }
        for ((id, _, mut frames), r) in direct.into_iter().zip(results) {
            let Some(s) = subs.get_mut(&id) else { continue };
            let n = frames.len() as u64;
            match self.wrote(id, s, &mut frames, r) {
                Wrote::Ok => delivered += n,
                w => self.settle(id, w, subs),
            }
        }
        delivered
    }

    /// Every live subscriber of this core turns to catching up from
    /// `from` (or its own start, if later). This visits every subscriber,
    /// but happens only when the live stream has a hole: records the
    /// writer logged while no subscriber existed anywhere (so this core
    /// has at most the few that joined since), or a skipped batch.
    fn demote_all(&mut self, from: u64, subs: &mut HashMap<u64, Sub<S>>) {
        for (&id, s) in subs.iter_mut() {
            // A subscriber that asked to start at or past the new watermark
            // is owed nothing from the hole.
            if !s.live || s.closing || s.next >= self.live_next {
                continue;
            }
            s.live = false;
            s.next = s.next.max(from);
            if !s.replaying && s.queue.is_empty() {
                self.request_replay(id, s);
            }
        }
    }

    fn replayed(&mut self, r: Replayed, subs: &mut HashMap<u64, Sub<S>>) {
        let id = r.sub;
        let Some(s) = subs.get_mut(&id) else { return };
        s.replaying = false;
        // Only what this subscriber is still owed (after a read error: the
        // records read before it, then the close).
        let mut frames: Vec<(u64, Bytes)> =
            r.frames.into_iter().filter(|(o, _)| *o >= s.next).collect();
        let n = frames.len() as u64;
        s.next = s.next.max(r.next);
        if r.error.is_none() && !s.closing && s.next >= self.live_next {
            // Caught up with the watermark: from now on the live stream
            // carries it.
            s.live = true;
        }
        let w = if frames.is_empty() {
            Wrote::Ok
        } else {
            self.send(id, s, &mut frames)
        };
        match w {
            Wrote::Ok => {
                self.shared.stats.delivered.fetch_add(n, Ordering::Relaxed);
                self.shared.stats.replayed.fetch_add(n, Ordering::Relaxed);
            }
            w => {
                self.settle(id, w, subs);
                return;
            }
        }
        if let Some(why) = r.error {
            // Never skip past what cannot be read: say so and close.
            tracing::warn!(sub = id, at = s.next, error = %why, "replay failed; closing the subscriber");
            let why = format!("replay failed at offset {}: {why}", s.next);
            self.close_with(id, s, CLOSE_REPLAY_FAILED, &why);
            if s.queue.is_empty() {
                self.drop_sub(id, subs);
            }
            return;
        }
        if !s.live && !s.closing && s.queue.is_empty() {
            self.request_replay(id, s);
        }
        // Otherwise the next chunk is asked for once this one is written
        // (see `FanIn::Writable`).
    }

    /// Acts on what a write to one subscriber came to: a slow one is cut
    /// (with its resume offset), a dead one dropped.
    fn settle(&mut self, id: u64, w: Wrote, subs: &mut HashMap<u64, Sub<S>>) {
        let mut gone = Vec::new();
        match (w, subs.get_mut(&id)) {
            (Wrote::Ok, _) | (_, None) => {}
            (Wrote::Slow, Some(s)) => self.slow(id, s, &mut gone),
            (Wrote::Dead, Some(_)) => gone.push(id),
        }
        for id in gone {
            self.drop_sub(id, subs);
        }
    }

    /// A subscriber over its queue bound: drop what the kernel has not
    /// begun, tell it where to resume, close.
    fn slow(&self, id: u64, s: &mut Sub<S>, gone: &mut Vec<u64>) {
        self.shared
            .stats
            .slow_disconnects
            .fetch_add(1, Ordering::Relaxed);
        let keep = usize::from(s.front_started);
        let resume = s
            .queue
            .iter()
            .skip(keep)
            .map(|(o, _)| *o)
            .find(|&o| o != CONTROL)
            .unwrap_or_else(|| self.position(s));
        while s.queue.len() > keep {
            if let Some((_, f)) = s.queue.pop_back() {
                s.queued -= f.len();
            }
        }
        tracing::info!(
            sub = id,
            resume,
            limit = self.max_queued,
            "slow subscriber disconnected"
        );
        match s.framing {
            Framing::Sp => gone.push(id),
            Framing::Ws => {
                let why = format!(
                    "slow consumer: over {} bytes queued; resume from offset {resume}",
                    self.max_queued
                );
                self.close_with(id, s, CLOSE_SLOW, &why);
            }
        }
    }

    /// Queues a close frame behind what is left, and gives the subscriber
    /// [`CLOSE_GRACE`] to read it.
    fn close_with(&self, id: u64, s: &mut Sub<S>, code: u16, why: &str) {
        s.closing = true;
        s.live = false;
        let mut b = BytesMut::new();
        ws_close(code, why, &mut b);
        let f = b.freeze();
        s.queued += f.len();
        s.queue.push_back((CONTROL, f));
        let _ = self.flush(id, s);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            let _ = tx.send(FanIn::Gone(id));
        });
    }

    /// Writes `frames` (behind anything queued), queueing what the kernel
    /// does not take; empties `frames`. The usual case, nothing queued,
    /// writes straight from `frames` (no queue, no allocation).
    fn send(&self, id: u64, s: &mut Sub<S>, frames: &mut Vec<(u64, Bytes)>) -> Wrote {
        if s.queue.is_empty() && !s.waiting {
            let r = if frames.len() == 1 {
                s.io.try_write(&frames[0].1)
            } else {
                let iov: Vec<IoSlice<'_>> = frames
                    .iter()
                    .take(MAX_IOV)
                    .map(|(_, f)| IoSlice::new(f))
                    .collect();
                s.io.try_write_vectored(&iov)
            };
            return self.wrote(id, s, frames, r);
        }
        for (o, f) in frames.drain(..) {
            s.queued += f.len();
            s.queue.push_back((o, f));
        }
        if s.waiting {
            return if s.queued > self.max_queued {
                Wrote::Slow
            } else {
                Wrote::Ok
            };
        }
        match self.flush(id, s) {
            Wrote::Ok if s.queued > self.max_queued => Wrote::Slow,
            w => w,
        }
    }

    /// Acts on the result `r` of writing `frames` (from their start) to a
    /// subscriber with nothing queued: what was not taken is queued and
    /// then written through [`Fanout::flush`] (whose `WouldBlock`, seen by
    /// tokio, arms the wait for the socket to drain); empties `frames`.
    fn wrote(
        &self,
        id: u64,
        s: &mut Sub<S>,
        frames: &mut Vec<(u64, Bytes)>,
        r: io::Result<usize>,
    ) -> Wrote {
        let mut n = match r {
            Ok(0) if !frames.is_empty() => return Wrote::Dead,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Wrote::Dead,
        };
        for (o, mut f) in frames.drain(..) {
            if n >= f.len() {
                n -= f.len();
                continue;
            }
            if n > 0 {
                f = f.slice(n..);
                s.front_started = true;
                n = 0;
            }
            s.queued += f.len();
            s.queue.push_back((o, f));
        }
        if s.queue.is_empty() {
            return Wrote::Ok;
        }
        match self.flush(id, s) {
            Wrote::Ok if s.queued > self.max_queued => Wrote::Slow,
            w => w,
        }
    }

    /// Writes as much of the queue as the kernel takes; if some is left,
    /// starts a task that reports when the socket drains.
    fn flush(&self, id: u64, s: &mut Sub<S>) -> Wrote {
        while !s.queue.is_empty() {
            let r = if s.queue.len() == 1 {
                s.io.try_write(&s.queue[0].1)
            } else {
                let iov: Vec<IoSlice<'_>> = s
                    .queue
                    .iter()
                    .take(MAX_IOV)
                    .map(|(_, f)| IoSlice::new(f))
                    .collect();
                s.io.try_write_vectored(&iov)
            };
            match r {
                Ok(0) => return Wrote::Dead,
                Ok(mut n) => {
                    s.queued -= n;
                    while n > 0 {
                        let (_, f) = s.queue.front_mut().expect("bytes written from it");
                        if n >= f.len() {
                            n -= f.len();
                            s.queue.pop_front();
                            s.front_started = false;
                        } else {
                            let rest = f.slice(n..);
                            *f = rest;
                            s.front_started = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.waiting = true;
                    let io = s.io.clone();
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        io.writable().await;
                        let _ = tx.send(FanIn::Writable(id));
                    });
                    return Wrote::Ok;
                }
                Err(_) => return Wrote::Dead,
            }
        }
        Wrote::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_same_body() {
        let payload = Bytes::from_static(b"hello");
        let mut buf = BytesMut::new();
        let e = encode(
            &Durable {
                offset: 7,
                timestamp_us: 1,
                client_id: &[3; 16],
                seq: 9,
                topic: b"orders",
                payload: &payload,
            },
            &mut buf,
        );
        let sp_len = u64::from_be_bytes(e.sp[..8].try_into().unwrap()) as usize;
        let body = &e.sp[8..];
        assert_eq!(sp_len, body.len());
        assert_eq!(e.ws[0], 0x82);
        assert_eq!(e.ws[1] as usize, body.len());
        assert_eq!(&e.ws[2..], body);
        assert!(body.starts_with(b"orders\0"));
        let d = Delivery::decode(&body[7..]).unwrap();
        assert_eq!(
            (d.offset, d.seq, d.payload.as_deref()),
            (Some(7), Some(9), Some(&b"hello"[..]))
        );
    }

    #[test]
    fn ws_heads() {
        for (len, head_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut b = BytesMut::new();
            ws_head(len, &mut b);
            assert_eq!(b.len(), head_len, "len {len}");
        }
    }

    #[test]
    fn prefix_filters() {
        let f = vec![Bytes::from_static(b"a/"), Bytes::from_static(b"b")];
        assert!(matches(&f, b"a/x"));
        assert!(matches(&f, b"bob"));
        assert!(!matches(&f, b"a"));
        assert!(matches(&[], b"anything"));
    }
}
