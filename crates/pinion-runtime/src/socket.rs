//! The socket driver: one task per socket, on the socket's home core.
//!
//! The task owns the sans-IO pattern (`Box<dyn Protocol>`) and feeds it:
//! * pipe events (handshakes, message batches, disconnects) from the pipe
//!   tasks on any core, in order per pipe;
//! * credits from pipe writers;
//! * queued sends from the application's send buffer (only while the pattern
//!   can take them: that is where push waits for a ready peer);
//! * operations (REQ sends and receives) with their completion channels;
//! * timers, by sleeping until the pattern's `poll_timeout`.
//!
//! Outputs go to pipe write queues, to the receive queue the application
//! reads, or complete operations. The receive queue is bounded; when it is
//! full the task parks the overflow and stops taking pipe input, so memory
//! stays bounded and TCP pushes back on the senders.
//!
//! The application side is [`SocketHandle`]: sends and receives that do not
//! need the pattern's state go straight through lock-free queues (no round
//! trip through the core); the others are operations.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pinion_core::backoff::Backoff;
use pinion_core::protocol::{self, CtxId, Op, OpId, Output, PipeId, Protocol, ProtocolKind};
use pinion_core::rng::Rng;
use pinion_core::wire::encode_frame;
use pinion_core::{CallerError, Message, OpError, Options, PeerError};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::cores::{CoreId, Runtime};
use crate::error::Error;
use crate::pipe::{self, Credit, Direct, PipeCmd, PipeEvent, PipeLink};
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::tls::{PeerIdentity, TlsConfig};
use crate::transport::{self, Conn, Listener};
use crate::url::Url;

type Done = oneshot::Sender<Result<Option<Message>, OpError>>;

/// Commands from the application.
enum Ctl {
    Op {
        op: OpId,
        ctx: CtxId,
        what: Op,
        deadline: Option<Instant>,
        done: Done,
    },
    Cancel(OpId),
    OpenCtx(oneshot::Sender<Result<(CtxId, Option<CtxQueue>), CallerError>>),
    Subscribe {
        ctx: CtxId,
        topic: bytes::Bytes,
        add: bool,
        reply: oneshot::Sender<Result<(), CallerError>>,
    },
    CloseCtx(CtxId),
    /// Stop or resume reading from one pipe.
    PausePipe(PipeId, bool),
    /// The application closed the socket: fail operations, linger, stop.
    Close,
}

/// The receive queue of a context that has its own (SUB contexts).
pub type CtxQueue = async_channel::Receiver<Message>;

/// Room in the receive queue: the driver parks on it when the queue is full;
/// receivers ring it after taking a message.
#[derive(Debug, Default)]
struct Space {
    waiting: AtomicBool,
    notify: Notify,
}

impl Space {
    fn taken(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
}

struct Shared {
    kind: ProtocolKind,
    opts: Arc<Options>,
    rt: Runtime,
    home: CoreId,
    ctl: mpsc::UnboundedSender<Ctl>,
    send_q: async_channel::Sender<(CtxId, Message)>,
    recv_q: async_channel::Receiver<Message>,
    space: Arc<Space>,
    stats: Arc<Stats>,
    next_op: AtomicU64,
    next_pipe: Arc<AtomicU32>,
    /// Cancelled when the application closes the socket (or drops the last
    /// handle). Endpoints stop at once; the driver then lingers to flush
    /// queued sends, and stops the pipes with `link.closed`.
    close_req: CancellationToken,
    /// Set with `close_req`; read on every operation (an atomic load, where
    /// the token's `is_cancelled` takes a mutex).
    closing: AtomicBool,
    link: PipeLink,
    /// TLS settings for `tls+tcp://` and `wss://` endpoints opened from now
    /// on.
    tls: std::sync::Mutex<Option<Arc<TlsConfig>>>,
}

impl Shared {
    fn close(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.close_req.cancel();
            let _ = self.ctl.send(Ctl::Close);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the application attaches to a connection it hands to a socket
/// ([`SocketHandle::adopt_tcp`], [`SocketHandle::adopt_ws_read`]): kept
/// for the pipe's life and dropped when it ends (a count of open
/// connections, say), and told of the peer's fault if one ended it, so
/// that the application can count its refusals as its own.
pub trait Adopted: Send + 'static {
    /// The pipe, or its handshake, ended on the peer's fault `e` (also
    /// counted in the socket's [`Stats`]). Called at
    /// most once, before the value is dropped. By default, nothing.
    fn peer_fault(&mut self, e: &PeerError) {
        let _ = e;
    }
}

impl Adopted for () {}

/// The application's handle on a socket. Cloning shares the socket; the
/// socket closes when the last handle is dropped or [`SocketHandle::close`]
/// is called.
#[derive(Clone)]
pub struct SocketHandle {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for SocketHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketHandle")
            .field("kind", &self.inner.kind)
            .field("home", &self.inner.home)
            .finish()
    }
}

/// A dialer or listener; dropping it does not stop it, [`Endpoint::close`] does.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: Url,
    stop: CancellationToken,
}

impl Endpoint {
    /// The URL (for a listener: as bound, with the real port).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The bound TCP port, if any (`tcp://` and `ws://`).
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// Stops dialing or accepting. Pipes already up stay up.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl SocketHandle {
    /// Opens a socket of `kind` on `rt`, homed on the next core in rotation.
    pub fn open(rt: &Runtime, kind: ProtocolKind, mut opts: Options) -> Result<Self, Error> {
        opts.validate()?;
        if opts.seed == Options::default().seed {
            opts.seed = crate::sys::seed();
        }
        let opts = Arc::new(opts);
        let home = rt.next_core();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (send_tx, send_rx) = async_channel::bounded(opts.send_buffer.max(1));
        let (deliver_tx, deliver_rx) = async_channel::bounded(opts.recv_buffer.max(1));
        let (ev_tx, ev_rx) = async_channel::bounded(64);
        let (cr_tx, cr_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let closed = CancellationToken::new();
        let close_req = CancellationToken::new();
        let space = Arc::new(Space::default());
        let mut rng = Rng::new(opts.seed ^ 0x9e37_79b9);
        let link = PipeLink {
            kind,
            opts: opts.clone(),
            events: ev_tx,
            credits: cr_tx,
            stats: stats.clone(),
            closed: closed.clone(),
        };
        let driver = Driver {
            proto: protocol::new(kind, &opts),
            kind,
            uses_ops: kind.uses_ops_when(opts.raw),
            linger: opts.linger,
            linger_until: None,
            pipes: HashMap::new(),
            ops: HashMap::new(),
            deliver_tx,
            ctx_queues: HashMap::new(),
            recv_buffer: opts.recv_buffer.max(1),
            overflow: VecDeque::new(),
            space: space.clone(),
            stats: stats.clone(),
        };
        rt.spawn_on(home, driver.run(ctl_rx, ev_rx, cr_rx, send_rx, closed));
        Ok(SocketHandle {
            inner: Arc::new(Shared {
                kind,
                opts,
                rt: rt.clone(),
                home,
                ctl: ctl_tx,
                send_q: send_tx,
                recv_q: deliver_rx,
                space,
                stats,
                next_op: AtomicU64::new(1),
                next_pipe: Arc::new(AtomicU32::new((rng.next_u32() & 0x3fff_ffff) | 1)),
                close_req,
                closing: AtomicBool::new(false),
                link,
                tls: Default::default(),
            }),
        })
    }

    /// Sets the TLS settings for the `tls+tcp://` and `wss://` listeners
    /// and dialers opened after this call (NNG's socket-wide
    /// `NNG_OPT_TLS_CONFIG`); those already open keep theirs.
    pub fn set_tls(&self, cfg: TlsConfig) {
        *self.inner.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cfg));
    }

    fn tls(&self) -> Result<Arc<TlsConfig>, Error> {
        self.inner
            .tls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Caller(CallerError::TlsNotConfigured))
    }

    /// The certificate identity the peer on `pipe` proved in its TLS
    /// handshake, while that pipe is up: `None` for a pipe that is gone,
    /// not TLS, or whose peer sent no certificate. A received message
    /// names its pipe ([`Message::pipe`](pinion_core::Message::pipe)).
    pub fn peer_identity(&self, pipe: PipeId) -> Option<Arc<PeerIdentity>> {
        self.inner.link.stats.peers.get(pipe)
    }

    /// The socket's pattern.
    pub fn kind(&self) -> ProtocolKind {
        self.inner.kind
    }

    /// The socket's options.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The runtime the socket lives on.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.rt
    }

    /// The core running the socket's driver.
    pub fn home_core(&self) -> CoreId {
        self.inner.home
    }

    /// The socket's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Closes the socket: dialers and listeners stop at once; pending and
    /// future operations fail with [`Error::Closed`]; messages already
    /// accepted by `send` are still written out for up to
    /// [`Options::linger`], then the pipes close. Dropping the last handle
    /// does the same.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the socket is closed (or closing).
    pub fn is_closed(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// A sleep registered with the home core's timer (usable from any thread
    /// or runtime).
    fn sleep(&self, d: Duration) -> tokio::time::Sleep {
        let _g = self.inner.rt.handle(self.inner.home).enter();
        tokio::time::sleep(d)
    }

    async fn with_timeout<T>(
        &self,
        timeout: Option<Duration>,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match timeout {
            None => fut.await,
            Some(d) => {
                let sleep = self.sleep(d);
                tokio::select! {
                    r = fut => r,
                    _ = sleep => Err(Error::TimedOut),
                }
            }
        }
    }

    /// Sends `msg` on context `ctx`. For queued patterns this returns once the
    /// message is in the socket's send buffer, waiting while it is full (push
    /// with no ready peer); for REQ it starts the request.
    pub async fn send(
        &self,
        ctx: CtxId,
        msg: Message,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let kind = self.inner.kind;
        if !kind.can_send() {
            return Err(CallerError::NotSupported.into());
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if kind.uses_ops_when(self.inner.opts.raw) {
            return self.op(ctx, Op::Send(msg), timeout).await.map(|_| ());
        }
        let q = &self.inner.send_q;
        match q.try_send((ctx, msg)) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Closed(_)) => Err(Error::Closed),
            Err(async_channel::TrySendError::Full(item)) => {
                let closed = self.inner.close_req.clone();
                self.with_timeout(timeout, async move {
                    tokio::select! {
                        r = q.send(item) => r.map_err(|_| Error::Closed),
                        _ = closed.cancelled() => Err(Error::Closed),
                    }
                })
                .await
            }
        }
    }

    /// Receives the next message on context `ctx`.
    pub async fn recv(&self, ctx: CtxId, timeout: Option<Duration>) -> Result<Message, Error> {
        let kind = self.inner.kind;
        if !kind.can_recv() {
            return Err(CallerError::NotSupported.into());
        }
        if kind.uses_ops_when(self.inner.opts.raw) {
            return match self.op(ctx, Op::Recv, timeout).await? {
                Some(m) => Ok(m),
                None => Err(Error::Bug("receive completed without a message")),
            };
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let q = &self.inner.recv_q;
        let r = match q.try_recv() {
            Ok(m) => Ok(m),
            Err(async_channel::TryRecvError::Closed) => Err(Error::Closed),
            Err(async_channel::TryRecvError::Empty) => {
                self.with_timeout(timeout, async { q.recv().await.map_err(|_| Error::Closed) })
                    .await
            }
        };
        if r.is_ok() {
            self.inner.space.taken();
        }
        r
    }

    /// Takes the next message on the socket's own context if one is queued,
    /// without waiting (`Ok(None)`: nothing queued). For patterns whose
    /// receives are operations (cooked REQ and SURVEYOR) this is
    /// `NotSupported`: use [`SocketHandle::recv`].
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        let kind = self.inner.kind;
        if !kind.can_recv() || kind.uses_ops_when(self.inner.opts.raw) {
            return Err(CallerError::NotSupported.into());
        }
        match self.inner.recv_q.try_recv() {
            Ok(m) => {
                self.inner.space.taken();
                Ok(Some(m))
            }
            Err(async_channel::TryRecvError::Empty) if !self.is_closed() => Ok(None),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Runs one operation through the pattern (REQ sends and receives).
    pub async fn op(
        &self,
        ctx: CtxId,
        what: Op,
        timeout: Option<Duration>,
    ) -> Result<Option<Message>, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let op = OpId(self.inner.next_op.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let deadline = timeout.map(|d| Instant::now() + d);
        self.inner
            .ctl
            .send(Ctl::Op {
                op,
                ctx,
                what,
                deadline,
                done: tx,
            })
            .map_err(|_| Error::Closed)?;
        struct CancelOnDrop<'a> {
            ctl: &'a mpsc::UnboundedSender<Ctl>,
            op: OpId,
            armed: bool,
        }
        impl Drop for CancelOnDrop<'_> {
            fn drop(&mut self) {
                if self.armed {
                    let _ = self.ctl.send(Ctl::Cancel(self.op));
                }
            }
        }
        let mut guard = CancelOnDrop {
            ctl: &self.inner.ctl,
            op,
            armed: true,
        };
        let r = rx.await;
        guard.armed = false;
        match r {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Opens a context in the pattern (REQ, SURVEYOR, SUB). A SUB context
    /// comes with its own receive queue.
    pub async fn open_ctx(&self) -> Result<(CtxId, Option<CtxQueue>), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctl
            .send(Ctl::OpenCtx(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(Error::from)
    }

    /// Adds (`add`) or removes a SUB subscription on `ctx`.
    pub async fn subscribe(&self, ctx: CtxId, topic: bytes::Bytes, add: bool) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctl
            .send(Ctl::Subscribe {
                ctx,
                topic,
                add,
                reply: tx,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(Error::from)
    }

    /// Receives from a context's own queue (SUB contexts).
    pub async fn recv_ctx_queue(
        &self,
        q: &CtxQueue,
        timeout: Option<Duration>,
    ) -> Result<Message, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        match q.try_recv() {
            Ok(m) => Ok(m),
            Err(async_channel::TryRecvError::Closed) => Err(Error::Closed),
            Err(async_channel::TryRecvError::Empty) => {
                self.with_timeout(timeout, async { q.recv().await.map_err(|_| Error::Closed) })
                    .await
            }
        }
    }

    /// Stops (`paused = true`) or resumes reading from one pipe, named by
    /// its id (the first header word a raw REP or RESPONDENT socket
    /// delivers). Other pipes are unaffected; messages already read from
    /// the pipe are still delivered. Unknown pipes are ignored.
    pub fn pause_pipe(&self, pipe: PipeId, paused: bool) {
        let _ = self.inner.ctl.send(Ctl::PausePipe(pipe, paused));
    }

    /// Adopts a TCP connection that an application's own HTTP server
    /// accepted, **before any of its request was read** (route on a
    /// `MSG_PEEK` of it), as a `ws://` pipe of this socket: the pipe reads
    /// the upgrade request, answers it as a listener on `path` would, and
    /// runs on the calling core, which must be one of this runtime's.
    pub fn adopt_ws(&self, tcp: std::net::TcpStream, path: &str) -> Result<(), Error> {
        self.adopt_ws_read(tcp, path, Vec::new(), Box::new(()))
            .map(|_| ())
    }

    /// Like [`adopt_ws`](Self::adopt_ws), for a connection whose request
    /// the application already read to route it: `read` is every byte read
    /// from it so far (the upgrade request's head, and whatever followed),
    /// which the pipe takes as the start of the stream. The head is checked
    /// and answered as by a listener on `path`.
    ///
    /// `hold` is kept as long as the pipe runs and dropped when it ends
    /// (say, the application's count of open connections); it is told the
    /// peer's fault if one ends the pipe ([`Adopted::peer_fault`]: a
    /// refused upgrade, a framing violation, an oversize message, a
    /// flood). Returns the pipe's id, which the messages received on it
    /// carry ([`Message::pipe`](pinion_core::Message::pipe), and a raw REP
    /// socket's first header word).
    pub fn adopt_ws_read(
        &self,
        tcp: std::net::TcpStream,
        path: &str,
        read: Vec<u8>,
        mut hold: Box<dyn Adopted>,
    ) -> Result<PipeId, Error> {
        let (core, sh) = self.adopting("adopt_ws called outside a core")?;
        let conn = Conn::adopt(crate::transport::Portable::Ws(
            crate::transport::ws::PortableWs {
                tcp,
                role: crate::transport::ws::Role::Server {
                    path: Arc::from(path),
                },
                read,
                tls: None,
            },
        ))
        .map_err(|e| Error::io("adopt", path, e))?;
        let guard = sh.rt.load_guard(core);
        let link = sh.link.clone();
        let pipe = SocketHandle::new_pipe_id(&sh.next_pipe);
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(e) = pipe::run(conn, pipe, link, None).await {
                hold.peer_fault(&e);
            }
        });
        Ok(pipe)
    }

    /// Adopts a TCP connection the application accepted itself (nothing
    /// read from it yet) as a `tcp://` pipe of this socket, exactly as if
    /// one of its listeners had accepted it: the pipe exchanges SP headers
    /// (within [`Options::handshake_timeout`]) and runs on the calling
    /// core, which must be one of this runtime's. This lets a server decide
    /// who gets in (caps, socket options) before the socket sees them.
    ///
    /// `hold` is kept as long as the pipe runs and dropped when it ends,
    /// and is told the peer's fault if one ends the pipe or its handshake
    /// ([`Adopted::peer_fault`]); `on_handshake` is called once, as soon as the header exchange's
    /// outcome is known (`Ok`: the pipe is up; a peer error such as
    /// [`PeerError::HandshakeTimeout`](pinion_core::PeerError) or a wrong
    /// protocol; an I/O error).
    pub fn adopt_tcp(
        &self,
        tcp: std::net::TcpStream,
        hold: Box<dyn Adopted>,
        on_handshake: Box<dyn FnOnce(Result<(), Error>) + Send>,
    ) -> Result<(), Error> {
        self.adopt_stream(tcp, None, hold, on_handshake)
    }

    /// Like [`adopt_tcp`](Self::adopt_tcp), for a `tls+tcp://` connection:
    /// the pipe runs the TLS handshake as `tls` says (a listener's side,
    /// from [`TlsConfig::listener_role`](crate::transport::tls::TlsConfig::listener_role)),
    /// then the SP header exchange, both within the handshake timeout; the
    /// peer's certificate identity is then available
    /// ([`peer_identity`](Self::peer_identity)).
    pub fn adopt_tls(
        &self,
        tcp: std::net::TcpStream,
        tls: crate::transport::tls::TlsRole,
        hold: Box<dyn Adopted>,
        on_handshake: Box<dyn FnOnce(Result<(), Error>) + Send>,
    ) -> Result<(), Error> {
        self.adopt_stream(tcp, Some(tls), hold, on_handshake)
    }

    fn adopt_stream(
        &self,
        tcp: std::net::TcpStream,
        tls: Option<crate::transport::tls::TlsRole>,
        mut hold: Box<dyn Adopted>,
        on_handshake: Box<dyn FnOnce(Result<(), Error>) + Send>,
    ) -> Result<(), Error> {
        let (core, sh) = self.adopting("adopt_tcp called outside a core")?;
        let adopt = |tcp: std::net::TcpStream| {
            tcp.set_nonblocking(true)?;
            tcp.set_nodelay(sh.opts.tcp_nodelay)?;
            Conn::adopt(match tls {
                None => crate::transport::Portable::Tcp(tcp),
                Some(role) => crate::transport::Portable::Tls(crate::transport::tls::PortableTls {
                    tcp,
                    role,
                }),
            })
        };
        let conn = adopt(tcp).map_err(|e| Error::io("adopt", "tcp", e))?;
        let guard = sh.rt.load_guard(core);
        let link = sh.link.clone();
        let pipe = SocketHandle::new_pipe_id(&sh.next_pipe);
        tokio::spawn(async move {
            let _guard = guard;
            let (tx, rx) = oneshot::channel();
            // In this task rather than another: once reported, this future
            // is done and holds nothing.
            let report = async move { on_handshake(rx.await.unwrap_or(Err(Error::Closed))) };
            let (fault, ()) = tokio::join!(pipe::run(conn, pipe, link, Some(tx)), report);
            if let Some(e) = fault {
                hold.peer_fault(&e);
            }
        });
        Ok(())
    }

    /// The calling core, for the adopt calls (`Err` outside the runtime's
    /// cores, or once the socket is closed).
    fn adopting(&self, outside: &'static str) -> Result<(CoreId, &Shared), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let sh = &*self.inner;
        let core = sh.rt.current_core().ok_or(Error::Bug(outside))?;
        Ok((core, sh))
    }

    /// Closes a context in the pattern.
    pub fn close_ctx(&self, ctx: CtxId) {
        let _ = self.inner.ctl.send(Ctl::CloseCtx(ctx));
    }

    fn new_pipe_id(next: &AtomicU32) -> PipeId {
        // 1..=0x7fff_ffff, wrapping, never 0.
        loop {
            let id = next.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            if id != 0 {
                return PipeId(id);
            }
        }
    }

    /// Binds `url` and accepts connections until closed.
    ///
    /// By default the listener accepts on the socket's home core and hands
    /// each connection to a core chosen by [`Runtime::place_pipe`]. With
    /// [`Options::tcp_reuseport`] a `tcp://` listener instead binds one
    /// `SO_REUSEPORT` socket per core and each core accepts (and keeps) the
    /// connections the kernel gives it.
    pub async fn listen(&self, url: &str) -> Result<Endpoint, Error> {
        let url = Url::parse(url)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let sh = &self.inner;
        let stop = sh.close_req.child_token();
        let (tx, rx) = oneshot::channel();
        let acceptor = Acceptor {
            link: sh.link.clone(),
            rt: sh.rt.clone(),
            next_pipe: sh.next_pipe.clone(),
            stop: stop.clone(),
        };
        let url2 = url.clone();
        let home = sh.home;
        let reuseport = sh.opts.tcp_reuseport && matches!(url, Url::Tcp { .. });
        let tls = if url.is_tls() {
            Some(self.tls()?.listener_role()?)
        } else {
            None
        };
        sh.rt.spawn_on(sh.home, async move {
            if reuseport {
                let cores = acceptor.rt.cores();
                match transport::tcp::bind_reuseport(&url2, cores).await {
                    Ok((listeners, bound)) => {
                        let _ = tx.send(Ok(bound));
                        for (core, l) in listeners.into_iter().enumerate() {
                            let acceptor = acceptor.clone();
                            acceptor.rt.clone().spawn_on(core, async move {
                                match tokio::net::TcpListener::from_std(l) {
                                    Ok(l) => acceptor.run(Listener::Tcp(l), Placement::Local(core)).await,
                                    Err(e) => tracing::warn!(error = %e, core, "cannot register reuseport listener"),
                                }
                            });
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
                return;
            }
            match Listener::bind(&url2, acceptor.link.kind.id(), tls).await {
                Ok((listener, bound)) => {
                    let _ = tx.send(Ok(bound));
                    acceptor.run(listener, Placement::Handoff(home)).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let bound = rx.await.map_err(|_| Error::Closed)??;
        Ok(Endpoint { url: bound, stop })
    }

    /// Binds `url` (`tcp://` only) as one of several sockets sharing the port
    /// with `SO_REUSEPORT`: a single listener on this socket's home core,
    /// whose connections stay on that core. Several sockets, each homed on
    /// its own core and each calling this with the same URL, make a
    /// shared-nothing server: the kernel spreads connections over them by
    /// 4-tuple hash, and each core's socket, pipes and application task
    /// never leave it.
    ///
    /// A port already bound without `SO_REUSEPORT` (another program) gives
    /// `AddrInUse`. Binding port 0 picks a free port: pass the returned
    /// URL's port to the other sockets.
    pub async fn listen_shared(&self, url: &str) -> Result<Endpoint, Error> {
        let url = Url::parse(url)?;
        if !matches!(url, Url::Tcp { .. }) {
            return Err(Error::InvalidUrl {
                url: url.to_string(),
                reason: crate::error::UrlError::UnsupportedScheme,
            });
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let sh = &self.inner;
        let stop = sh.close_req.child_token();
        let acceptor = Acceptor {
            link: sh.link.clone(),
            rt: sh.rt.clone(),
            next_pipe: sh.next_pipe.clone(),
            stop: stop.clone(),
        };
        let home = sh.home;
        let (tx, rx) = oneshot::channel();
        let url2 = url.clone();
        sh.rt.spawn_on(home, async move {
            match transport::tcp::bind_reuseport(&url2, 1).await {
                Ok((mut listeners, bound)) => {
                    match tokio::net::TcpListener::from_std(listeners.remove(0)) {
                        Ok(l) => {
                            let _ = tx.send(Ok(bound));
                            acceptor.run(Listener::Tcp(l), Placement::Local(home)).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Error::io("listen", &url2, e)));
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let bound = rx.await.map_err(|_| Error::Closed)??;
        Ok(Endpoint { url: bound, stop })
    }

    /// Connects to `url` and keeps reconnecting, with exponential backoff and
    /// jitter, whenever the connection is lost. With `block` the first attempt
    /// is awaited and its failure returned (and the dialer stops); without,
    /// failures are retried in the background from the start.
    pub async fn dial(&self, url: &str, block: bool) -> Result<Endpoint, Error> {
        let url = Url::parse(url)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let sh = &self.inner;
        let stop = sh.close_req.child_token();
        let (first_tx, first_rx) = oneshot::channel::<Result<(), Error>>();
        let mut first = block.then_some(first_tx);
        let link = sh.link.clone();
        let rt = sh.rt.clone();
        let next_pipe = sh.next_pipe.clone();
        let stop2 = stop.clone();
        let url2 = url.clone();
        let home = sh.home;
        let mut rng = Rng::new(sh.opts.seed ^ crate::sys::seed());
        let tls = match url.host().filter(|_| url.is_tls()) {
            Some(host) => Some(self.tls()?.dialer_role(host)?),
            None => None,
        };
        sh.rt.spawn_on(sh.home, async move {
            let opts = link.opts.clone();
            let mut backoff = Backoff::new(opts.reconnect_min, opts.reconnect_max);
            loop {
                let core = rt.place_pipe(home);
                let guard = rt.load_guard(core);
                let (hs_tx, hs_rx) = oneshot::channel();
                let link2 = link.clone();
                let url3 = url2.clone();
                let pipe = Self::new_pipe_id(&next_pipe);
                let depth = opts.pipe_buffer as usize;
                let tls = tls.clone();
                let task = rt.spawn_on(core, async move {
                    let _guard = guard;
                    let nodelay = link2.opts.tcp_nodelay;
                    match transport::connect(&url3, link2.kind.id(), depth, nodelay, tls.as_ref())
                        .await
                    {
                        Ok(conn) => {
                            pipe::run(conn, pipe, link2, Some(hs_tx)).await;
                        }
                        Err(e) => {
                            let _ = hs_tx.send(Err(e));
                        }
                    }
                });
                let outcome = tokio::select! {
                    r = hs_rx => r.unwrap_or(Err(Error::Closed)),
                    _ = stop2.cancelled() => return,
                };
                match outcome {
                    Ok(()) => {
                        if let Some(f) = first.take() {
                            let _ = f.send(Ok(()));
                        }
                        backoff.reset();
                        // Wait for the pipe to end, then redial.
                        tokio::select! {
                            _ = task => {},
                            _ = stop2.cancelled() => return,
                        }
                    }
                    Err(e) => {
                        link.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                        if let Some(f) = first.take() {
                            let _ = f.send(Err(e));
                            return;
                        }
                        tracing::debug!(url = %url2, error = %e, "dial failed; will retry");
                    }
                }
                let delay = backoff.next_delay(&mut rng);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {},
                    _ = stop2.cancelled() => return,
                }
            }
        });
        if block {
            first_rx.await.map_err(|_| Error::Closed)??;
        }
        Ok(Endpoint { url, stop })
    }
}

/// Where an accepted connection's pipe runs.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Hand off to [`Runtime::place_pipe`] for a socket homed here.
    Handoff(CoreId),
    /// Stay on the accepting core (SO_REUSEPORT listeners).
    Local(CoreId),
}

/// An accept loop's context.
#[derive(Clone)]
struct Acceptor {
    link: PipeLink,
    rt: Runtime,
    next_pipe: Arc<AtomicU32>,
    stop: CancellationToken,
}

impl Acceptor {
    async fn run(self, mut listener: Listener, placement: Placement) {
        loop {
            let conn = tokio::select! {
                c = listener.accept(self.link.opts.tcp_nodelay) => c,
                _ = self.stop.cancelled() => return,
            };
            match conn {
                Ok(portable) => {
                    let core = match placement {
                        Placement::Handoff(home) => self.rt.place_pipe(home),
                        Placement::Local(core) => core,
                    };
                    let guard = self.rt.load_guard(core);
                    let link = self.link.clone();
                    let pipe = SocketHandle::new_pipe_id(&self.next_pipe);
                    let run = async move {
                        let _guard = guard;
                        match Conn::adopt(portable) {
                            Ok(conn) => {
                                pipe::run(conn, pipe, link, None).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot register accepted connection")
                            }
                        }
                    };
                    if matches!(placement, Placement::Local(_)) {
                        tokio::spawn(run);
                    } else {
                        self.rt.spawn_on(core, run);
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The socket task's state.
struct Driver {
    proto: Box<dyn Protocol>,
    kind: ProtocolKind,
    /// Sends and receives are pattern operations (cooked REQ, SURVEYOR).
    uses_ops: bool,
    linger: Duration,
    /// Set once the application closed the socket: the end of lingering.
    linger_until: Option<Instant>,
    pipes: HashMap<PipeId, PipeEntry>,
    ops: HashMap<OpId, Done>,
    deliver_tx: async_channel::Sender<Message>,
    /// Receive queues of contexts other than the socket's (SUB).
    ctx_queues: HashMap<CtxId, async_channel::Sender<Message>>,
    /// Depth of a new context queue.
    recv_buffer: usize,
    overflow: VecDeque<Message>,
    space: Arc<Space>,
    stats: Arc<Stats>,
}

/// A live pipe as the driver sees it.
struct PipeEntry {
    out: mpsc::UnboundedSender<PipeCmd>,
    /// Messages handed to the pipe's writer and not yet written.
    unwritten: u32,
    /// The stream, when the driver may write to it itself.
    direct: Option<Direct>,
    /// Frames staged in this pass for a write-through.
    staged: BytesMut,
    /// Messages in `staged`.
    staged_msgs: u32,
    /// Pauses the pipe's reads (`SocketHandle::pause_pipe`).
    gate: Arc<crate::pipe::ReadGate>,
}

/// Bodies at least this long go through the pipe's writer (vectored, no
/// copy) rather than being framed into the driver's write-through buffer.
const DIRECT_MAX_BODY: usize = 16 * 1024;

/// Inputs of one kind taken before the task looks at the others again.
const BATCH: usize = 256;

impl Driver {
    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Ctl>,
        events: async_channel::Receiver<PipeEvent>,
        mut credits: mpsc::UnboundedReceiver<Credit>,
        sends: async_channel::Receiver<(CtxId, Message)>,
        closed: CancellationToken,
    ) {
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        // One timer, re-armed only when the pattern's next deadline moves
        // *earlier* than the armed one: a later deadline (every new REQ
        // request pushes its resend time out) just lets the timer fire early
        // once, which is harmless. Re-arming touches the timer wheel, so this
        // keeps it off the per-message path.
        let mut timer = Box::pin(tokio::time::sleep_until(far));
        let mut armed = far;
        let space = self.space.clone();
        let deliver_tx = self.deliver_tx.clone();
        let mut passes = 0u32;
        loop {
            self.flush();
            let c = self.proto.counters();
            self.stats.ttl_drops.store(c.ttl_drops, Ordering::Relaxed);
            self.stats
                .unroutable_drops
                .store(c.unroutable_drops, Ordering::Relaxed);
            self.stats
                .queue_drops
                .store(c.queue_drops, Ordering::Relaxed);
            if let Some(until) = self.linger_until {
                let flushed = sends.is_empty() && self.pipes.values().all(|p| p.unwritten == 0);
                if flushed || Instant::now() >= until {
                    break;
                }
            }
            let timeout = match (self.proto.poll_timeout(), self.linger_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(t) = timeout {
                let t = tokio::time::Instant::from_std(t);
                if t < armed {
                    timer.as_mut().reset(t);
                    armed = t;
                }
            }
            let can_send = !self.uses_ops && self.proto.can_send();
            let input_open = self.overflow.is_empty();
            let parked = !self.overflow.is_empty();
            // First a pass that only takes what is already there: under load
            // the task keeps going without registering wakers (the futures
            // below register with each channel, which is the parking path).
            let mut progressed = false;
            for _ in 0..BATCH {
                match credits.try_recv() {
                    Ok(c) => {
                        self.credit(c);
                        progressed = true;
                    }
                    Err(_) => break,
                }
            }
            for _ in 0..BATCH {
                match ctl.try_recv() {
                    Ok(c) => {
                        self.ctl(c);
                        progressed = true;
                    }
                    Err(_) => break,
                }
            }
            if parked && !self.deliver_tx.is_full() {
                self.flush_overflow();
                progressed = true;
            }
            for _ in 0..BATCH {
                if !self.overflow.is_empty() {
                    break;
                }
                match events.try_recv() {
                    Ok(ev) => {
                        self.event(ev);
                        progressed = true;
                    }
                    Err(_) => break,
                }
            }
            if !self.uses_ops {
                for _ in 0..BATCH {
                    self.drain();
                    if !self.proto.can_send() {
                        // Staged frames hold credits: write them, then go on.
                        self.flush();
                        if !self.proto.can_send() {
                            break;
                        }
                    }
                    match sends.try_recv() {
                        Ok((ctx, msg)) => {
                            self.send(ctx, msg);
                            progressed = true;
                        }
                        Err(_) => break,
                    }
                }
            }
            if timeout.is_some_and(|t| t <= Instant::now()) {
                self.proto.handle_timeout(Instant::now());
                progressed = true;
            }
            if progressed {
                // Every so often let the core's other tasks (pipes, the
                // application) run, even while input keeps coming.
                passes += 1;
                if passes & 31 == 0 {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            tokio::select! {
                biased;
                Some(c) = credits.recv() => {
                    self.credit(c);
                    for _ in 0..BATCH {
                        match credits.try_recv() { Ok(c) => self.credit(c), Err(_) => break }
                    }
                }
                Some(c) = ctl.recv() => {
                    self.ctl(c);
                    for _ in 0..BATCH {
                        match ctl.try_recv() { Ok(c) => self.ctl(c), Err(_) => break }
                    }
                }
                _ = wait_space(&space, &deliver_tx), if parked => self.flush_overflow(),
                Ok(ev) = events.recv(), if input_open => {
                    self.event(ev);
                    for _ in 0..BATCH {
                        if !self.overflow.is_empty() { break; }
                        match events.try_recv() { Ok(ev) => self.event(ev), Err(_) => break }
                    }
                }
                Ok((ctx, msg)) = sends.recv(), if can_send => {
                    self.send(ctx, msg);
                    for _ in 0..BATCH {
                        self.drain();
                        if !self.proto.can_send() {
                            self.flush();
                            if !self.proto.can_send() { break; }
                        }
                        match sends.try_recv() { Ok((ctx, msg)) => self.send(ctx, msg), Err(_) => break }
                    }
                }
                _ = &mut timer, if timeout.is_some() => {
                    armed = far;
                    timer.as_mut().reset(far);
                    self.proto.handle_timeout(Instant::now());
                }
            }
        }
        // Closing: fail pending operations, stop the pipes.
        for (_, done) in self.ops.drain() {
            let _ = done.send(Err(OpError::Closed));
        }
        closed.cancel();
        self.pipes.clear();
        self.deliver_tx.close();
    }

    fn credit(&mut self, c: Credit) {
        match c {
            Credit::Returned(pipe, n) => {
                if let Some(p) = self.pipes.get_mut(&pipe) {
                    p.unwritten = p.unwritten.saturating_sub(n);
                }
                self.proto.handle_credit(pipe, n, Instant::now());
            }
            // The pipe task ended without reporting `Down` (it panicked).
            Credit::Lost(pipe) => self.pipe_gone(pipe),
        }
    }

    fn pipe_gone(&mut self, pipe: PipeId) {
        if self.pipes.remove(&pipe).is_some() {
            self.stats.pipes_removed.fetch_add(1, Ordering::Relaxed);
            self.proto.remove_pipe(pipe, Instant::now());
        }
    }

    fn ctl(&mut self, c: Ctl) {
        let now = Instant::now();
        match c {
            Ctl::Op { done, .. } if self.linger_until.is_some() => {
                let _ = done.send(Err(OpError::Closed));
            }
            Ctl::Op {
                op,
                ctx,
                what,
                deadline,
                done,
            } => match self.proto.start_op(op, ctx, what, deadline, now) {
                Ok(()) => {
                    self.ops.insert(op, done);
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            },
            Ctl::Cancel(op) => {
                if self.ops.remove(&op).is_some() {
                    self.proto.cancel_op(op, now);
                }
            }
            Ctl::OpenCtx(reply) => {
                if self.linger_until.is_none() {
                    let r = self.proto.open_ctx().map(|ctx| {
                        // Contexts that receive by delivery get their own
                        // queue; operation-based ones (REQ, SURVEYOR) do not.
                        let q = (!self.uses_ops && self.kind.can_recv()).then(|| {
                            let (tx, rx) = async_channel::bounded(self.recv_buffer);
                            self.ctx_queues.insert(ctx, tx);
                            rx
                        });
                        (ctx, q)
                    });
                    let _ = reply.send(r);
                } // else: dropping `reply` reports Closed
            }
            Ctl::Subscribe {
                ctx,
                topic,
                add,
                reply,
            } => {
                let r = if add {
                    self.proto.subscribe(ctx, &topic)
                } else {
                    self.proto.unsubscribe(ctx, &topic)
                };
                let _ = reply.send(r);
            }
            Ctl::CloseCtx(ctx) => {
                self.ctx_queues.remove(&ctx);
                self.proto.close_ctx(ctx, now)
            }
            Ctl::PausePipe(pipe, paused) => {
                if let Some(p) = self.pipes.get(&pipe) {
                    p.gate.set_paused(paused);
                }
            }
            Ctl::Close => {
                if self.linger_until.is_none() {
                    self.linger_until = Some(now + self.linger);
                    for (_, done) in self.ops.drain() {
                        let _ = done.send(Err(OpError::Closed));
                    }
                }
            }
        }
    }

    fn event(&mut self, ev: PipeEvent) {
        let now = Instant::now();
        match ev {
            PipeEvent::Up {
                pipe,
                peer,
                out,
                credits,
                direct,
                gate,
            } => match self.proto.add_pipe(pipe, peer, credits, now) {
                Ok(()) => {
                    self.stats.pipes_added.fetch_add(1, Ordering::Relaxed);
                    self.pipes.insert(
                        pipe,
                        PipeEntry {
                            out,
                            unwritten: 0,
                            direct,
                            staged: BytesMut::new(),
                            staged_msgs: 0,
                            gate,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(pipe = pipe.0, error = %e, "pipe refused by pattern");
                    self.stats.count_peer_error(&e);
                    drop(out); // closes the pipe
                }
            },
            PipeEvent::Message(pipe, m) => {
                self.stats.msgs_received.fetch_add(1, Ordering::Relaxed);
                self.proto.handle_message(pipe, m, now);
                self.event_taken(pipe);
            }
            PipeEvent::Messages(pipe, batch) => {
                self.stats
                    .msgs_received
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for m in batch {
                    self.proto.handle_message(pipe, m, now);
                }
                self.event_taken(pipe);
            }
            PipeEvent::Down(pipe) => self.pipe_gone(pipe),
        }
    }

    /// Lets `pipe` read and decode its next event (see
    /// [`ReadGate::EVENT`](crate::pipe::ReadGate::EVENT)).
    fn event_taken(&self, pipe: PipeId) {
        if let Some(p) = self.pipes.get(&pipe) {
            p.gate.set_paused_by(crate::pipe::ReadGate::EVENT, false);
        }
    }

    fn send(&mut self, ctx: CtxId, msg: Message) {
        if let Err(e) = self.proto.handle_send(ctx, msg, Instant::now()) {
            tracing::debug!(error = %e, "queued send refused by pattern");
        }
    }

    /// Carries out everything the pattern asked for.
    /// Carries out the pattern's outputs; transmissions to idle pipes are
    /// only staged (see [`Driver::flush`]).
    fn drain(&mut self) {
        self.drain_outputs();
    }

    /// Drains the outputs and writes what was staged, until writing gives
    /// the pattern no new credit to act on. Called once per loop pass, so
    /// everything a pass produced for a pipe goes out in one write.
    fn flush(&mut self) {
        loop {
            self.drain_outputs();
            if !self.flush_direct() {
                break;
            }
        }
    }

    /// Routes a transmission: framed into the pipe's write-through buffer
    /// when its writer is idle (nothing unwritten) and the body is small,
    /// else queued to the writer, behind anything already staged.
    fn transmit(&mut self, pipe: PipeId, msg: Message) {
        let Some(p) = self.pipes.get_mut(&pipe) else {
            return;
        };
        self.stats.msgs_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = &p.direct {
            if p.unwritten == 0 && msg.body.len() < DIRECT_MAX_BODY {
                encode_frame(d.framing, &msg, &mut p.staged);
                p.staged_msgs += 1;
                return;
            }
        }
        if p.staged_msgs > 0 {
            let bytes = p.staged.split().freeze();
            let _ = p.out.send(PipeCmd::Raw {
                bytes,
                msgs: p.staged_msgs,
            });
            p.unwritten += p.staged_msgs;
            p.staged_msgs = 0;
        }
        p.unwritten += 1;
        let _ = p.out.send(PipeCmd::Send(msg));
    }

    /// Writes every pipe's staged frames with one non-blocking write each.
    /// What the kernel does not take goes to the pipe's writer, which waits
    /// for the socket to drain. Returns true if it gave credits back to the
    /// pattern (which may then have more to send).
    fn flush_direct(&mut self) -> bool {
        let mut done: Vec<(PipeId, u32)> = Vec::new();
        for (&pipe, p) in self.pipes.iter_mut() {
            if p.staged_msgs == 0 {
                continue;
            }
            let Some(d) = &p.direct else { continue };
            let mut written = 0;
            while written < p.staged.len() {
                match d.io.try_write(&p.staged[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    // WouldBlock, or an error the writer will meet and report.
                    Err(_) => break,
                }
            }
            if written == p.staged.len() {
                p.staged.clear();
                done.push((pipe, p.staged_msgs));
                // A TLS stream took the bytes but the kernel not all of
                // their ciphertext: the writer finishes (in order: what
                // the driver writes next goes behind it in rustls).
                if d.io.holds_unsent() {
                    let _ = p.out.send(PipeCmd::FLUSH);
                }
            } else {
                let rest = p.staged.split().freeze().slice(written..);
                let _ = p.out.send(PipeCmd::Raw {
                    bytes: rest,
                    msgs: p.staged_msgs,
                });
                p.unwritten += p.staged_msgs;
            }
            p.staged_msgs = 0;
        }
        let now = Instant::now();
        for (pipe, n) in &done {
            self.proto.handle_credit(*pipe, *n, now);
        }
        !done.is_empty()
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.proto.poll_output() {
            match out {
                Output::Transmit { pipe, msg } => self.transmit(pipe, msg),
                Output::Deliver { ctx, msg } => {
                    if ctx == CtxId::SOCKET {
                        self.deliver(msg)
                    } else if let Some(q) = self.ctx_queues.get(&ctx) {
                        // Only SUB delivers to other contexts: newest wins.
                        let _ = q.force_send(msg);
                    }
                }
                Output::Completed { op, result } => {
                    if let Some(done) = self.ops.remove(&op) {
                        let _ = done.send(result);
                    }
                }
                Output::ClosePipe { pipe, error } => {
                    tracing::debug!(pipe = pipe.0, %error, "pattern closed pipe");
                    self.stats.count_peer_error(&error);
                    self.pipe_gone(pipe);
                }
                Output::PausePipe { pipe, paused } => {
                    if let Some(p) = self.pipes.get(&pipe) {
                        p.gate.set_paused_by(crate::pipe::ReadGate::PATTERN, paused);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, msg: Message) {
        if self.kind.drops_oldest() {
            // SUB prefers new messages: a full queue loses its oldest.
            let _ = self.deliver_tx.force_send(msg);
            return;
        }
        if !self.overflow.is_empty() {
            self.overflow.push_back(msg);
            return;
        }
        match self.deliver_tx.try_send(msg) {
            Ok(()) => {}
            Err(async_channel::TrySendError::Full(m)) => self.overflow.push_back(m),
            Err(async_channel::TrySendError::Closed(_)) => {}
        }
    }

    fn flush_overflow(&mut self) {
        while let Some(m) = self.overflow.pop_front() {
            match self.deliver_tx.try_send(m) {
                Ok(()) => {}
                Err(async_channel::TrySendError::Full(m)) => {
                    self.overflow.push_front(m);
                    return;
                }
                Err(async_channel::TrySendError::Closed(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }
}

/// Resolves once the receive queue has room (or after a short fallback
/// interval, so a missed wake-up can only delay, never stall).
async fn wait_space(space: &Space, tx: &async_channel::Sender<Message>) {
    let notified = space.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    space.waiting.store(true, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    if !tx.is_full() {
        return;
    }
    tokio::select! {
        _ = notified => {},
        _ = tokio::time::sleep(Duration::from_millis(10)) => {},
    }
}
