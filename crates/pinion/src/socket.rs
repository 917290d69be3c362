//! The async socket and context types.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use std::time::Duration;

use bytes::Bytes;
use pinion_core::protocol::CtxId;
use pinion_core::{CallerError, Header, Message, Options};
use pinion_runtime::socket::{CtxQueue, Endpoint, SocketHandle};
use pinion_runtime::stats::StatsSnapshot;
use pinion_runtime::{Error, Runtime};

use crate::Protocol;

/// An SP socket. Cheap to clone; clones share the socket, which closes when
/// the last clone is dropped (or on [`Socket::close`]).
///
/// Sends and receives follow the pattern:
/// * push: `send` round-robins over peers that can take a message and waits
///   while none can (backpressure); pull: `recv` takes from every peer;
/// * pair0/pair1: one peer; a second is refused;
/// * req: `send` starts a request (cancelling the previous one), `recv`
///   returns its reply; requests are resent after `req_resend` and when the
///   connection carrying them drops. Use [`Socket::context`] for many
///   concurrent requests;
/// * rep: `recv` returns a request, the next `send` answers it.
#[derive(Debug, Clone)]
pub struct Socket {
    h: SocketHandle,
    /// REP: the backtrace of the request being answered on the socket's own
    /// context (lock-free slot: the last request received wins, as in NNG).
    /// Only REP touches it.
    rep: Arc<ArcSwapOption<Header>>,
}

impl Socket {
    /// Opens a socket with default options on the global runtime.
    pub fn new(proto: Protocol) -> crate::Result<Socket> {
        Self::with_options(proto, Options::default())
    }

    /// Opens a socket with `opts` on the global runtime.
    pub fn with_options(proto: Protocol, opts: Options) -> crate::Result<Socket> {
        Self::on(Runtime::global(), proto, opts)
    }

    /// Opens a socket on a given runtime.
    pub fn on(rt: &Runtime, proto: Protocol, opts: Options) -> crate::Result<Socket> {
        Ok(Socket {
            h: SocketHandle::open(rt, proto, opts)?,
            rep: Default::default(),
        })
    }

    /// The socket's pattern.
    pub fn protocol(&self) -> Protocol {
        self.h.kind()
    }

    /// Whether the socket is raw ([`Options::raw`]): headers pass between
    /// the application and the wire, no per-request state.
    pub fn is_raw(&self) -> bool {
        self.h.options().raw
    }

    /// The options the socket was opened with.
    pub fn options(&self) -> &Options {
        self.h.options()
    }

    /// Counters: pipes, refusals by reason, messages.
    pub fn stats(&self) -> StatsSnapshot {
        self.h.stats()
    }

    /// The runtime the socket runs on.
    pub fn runtime(&self) -> &Runtime {
        self.h.runtime()
    }

    /// The core running this socket's state machine.
    pub fn home_core(&self) -> usize {
        self.h.home_core()
    }

    /// Closes the socket now.
    pub fn close(&self) {
        self.h.close()
    }

    /// Sets the TLS settings of the `tls+tcp://` and `wss://` listeners and
    /// dialers opened from now on (NNG's socket-wide `NNG_OPT_TLS_CONFIG`).
    /// A listener needs its own certificate; a dialer verifies the server
    /// against the given CA (else the system's roots) and the URL's host,
    /// unless told [`insecure`](crate::TlsConfig::insecure).
    pub fn set_tls(&self, cfg: crate::TlsConfig) {
        self.h.set_tls(cfg)
    }

    /// The certificate identity the peer on `pipe` proved in its TLS
    /// handshake (subject, common name, alternative names), while that
    /// pipe is up. A received message names its pipe
    /// ([`Message::pipe`]). `None` for a pipe that is gone, not TLS, or
    /// whose peer sent no certificate.
    pub fn peer_identity(
        &self,
        pipe: crate::PipeId,
    ) -> Option<std::sync::Arc<crate::PeerIdentity>> {
        self.h.peer_identity(pipe)
    }

    /// Listens on `url` (`tcp://127.0.0.1:0` picks a free port: read it back
    /// from the returned [`Endpoint`]).
    pub async fn listen(&self, url: &str) -> crate::Result<Endpoint> {
        self.h.listen(url).await
    }

    /// Listens on a `tcp://` URL as one of several sockets sharing the port
    /// with `SO_REUSEPORT`, each on its own core (see
    /// [`SocketHandle::listen_shared`](pinion_runtime::socket::SocketHandle::listen_shared)).
    /// Open the socket from the core it should live on ([`Runtime::spawn_on`]).
    pub async fn listen_shared(&self, url: &str) -> crate::Result<Endpoint> {
        self.h.listen_shared(url).await
    }

    /// Raw servers: stops (`true`) or resumes (`false`) reading from one
    /// connection, named by the pipe id a raw REP or RESPONDENT socket puts
    /// in the first header word of what it delivers. The other connections
    /// are unaffected; TCP pushes back on that peer alone. Messages already
    /// read from it are still delivered.
    pub fn pause_pipe(&self, pipe_id: u32, paused: bool) {
        self.h
            .pause_pipe(pinion_core::protocol::PipeId(pipe_id), paused);
    }

    /// Adopts a TCP connection accepted by the application's own HTTP
    /// server, none of its request read yet, as a `ws://` pipe answering
    /// upgrades for `path` (see
    /// [`SocketHandle::adopt_ws`](pinion_runtime::socket::SocketHandle::adopt_ws)).
    /// Call it from a task on one of the runtime's cores; the pipe stays on
    /// that core.
    pub fn adopt_ws(&self, tcp: std::net::TcpStream, path: &str) -> crate::Result<()> {
        self.h.adopt_ws(tcp, path)
    }

    /// Adopts a connection whose upgrade request the application already
    /// read (`read`: every byte read from it so far) as a `ws://` pipe for
    /// `path`; `hold` is kept for the pipe's life (see
    /// [`SocketHandle::adopt_ws_read`](pinion_runtime::socket::SocketHandle::adopt_ws_read)).
    pub fn adopt_ws_read(
        &self,
        tcp: std::net::TcpStream,
        path: &str,
        read: Vec<u8>,
        hold: Box<dyn crate::Adopted>,
    ) -> crate::Result<crate::PipeId> {
        self.h.adopt_ws_read(tcp, path, read, hold)
    }

    /// Adopts a TCP connection the application accepted itself as a
    /// `tcp://` pipe, as a listener of this socket would have; `hold` is
    /// kept for the pipe's life, `on_handshake` told the SP header
    /// exchange's outcome (see
    /// [`SocketHandle::adopt_tcp`](pinion_runtime::socket::SocketHandle::adopt_tcp)).
    /// Call it from a task on one of the runtime's cores.
    pub fn adopt_tcp(
        &self,
        tcp: std::net::TcpStream,
        hold: Box<dyn crate::Adopted>,
        on_handshake: Box<dyn FnOnce(crate::Result<()>) + Send>,
    ) -> crate::Result<()> {
        self.h.adopt_tcp(tcp, hold, on_handshake)
    }

    /// Adopts a TCP connection the application accepted itself as a
    /// `tls+tcp://` pipe: the TLS handshake as `tls` says (a listener's
    /// side: [`TlsConfig::listener_role`](crate::TlsConfig::listener_role)),
    /// then the SP header (see
    /// [`SocketHandle::adopt_tls`](pinion_runtime::socket::SocketHandle::adopt_tls)).
    pub fn adopt_tls(
        &self,
        tcp: std::net::TcpStream,
        tls: crate::TlsRole,
        hold: Box<dyn crate::Adopted>,
        on_handshake: Box<dyn FnOnce(crate::Result<()>) + Send>,
    ) -> crate::Result<()> {
        self.h.adopt_tls(tcp, tls, hold, on_handshake)
    }

    /// Dials `url`: waits for the first connection (returning its error, e.g.
    /// connection refused), then reconnects in the background whenever it is
    /// lost.
    pub async fn dial(&self, url: &str) -> crate::Result<Endpoint> {
        self.h.dial(url, true).await
    }

    /// Dials `url` without waiting: failures are retried in the background
    /// with backoff, from the first attempt on.
    pub async fn dial_background(&self, url: &str) -> crate::Result<Endpoint> {
        self.h.dial(url, false).await
    }

    /// Sends a body, waiting at most the socket's send timeout.
    pub async fn send(&self, body: impl Into<Bytes>) -> crate::Result<()> {
        self.send_msg(Message::from_body(body)).await
    }

    /// Sends a message with an explicit timeout (`None`: wait forever).
    pub async fn send_timeout(
        &self,
        body: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> crate::Result<()> {
        self.send_inner(Message::from_body(body), timeout).await
    }

    /// Sends a message (its header is ignored for cooked patterns).
    pub async fn send_msg(&self, msg: Message) -> crate::Result<()> {
        self.send_inner(msg, self.h.options().send_timeout).await
    }

    async fn send_inner(&self, mut msg: Message, timeout: Option<Duration>) -> crate::Result<()> {
        if self.h.is_closed() {
            return Err(Error::Closed);
        }
        if self.is_raw() {
            check_raw_header(self.h.kind(), &msg.header)?;
            return self.h.send(CtxId::SOCKET, msg, timeout).await;
        }
        msg.header.clear();
        if answers(self.h.kind()) {
            let header = self
                .rep
                .swap(None)
                .ok_or(Error::Caller(CallerError::BadState))?;
            msg.header = *header;
        }
        self.h.send(CtxId::SOCKET, msg, timeout).await
    }

    /// Receives a body, waiting at most the socket's receive timeout.
    pub async fn recv(&self) -> crate::Result<Bytes> {
        Ok(self.recv_msg().await?.body)
    }

    /// Receives with an explicit timeout (`None`: wait forever).
    pub async fn recv_timeout(&self, timeout: Option<Duration>) -> crate::Result<Bytes> {
        Ok(self.recv_inner(timeout).await?.body)
    }

    /// Receives a message (cooked: the header is empty; raw: the protocol
    /// header as received).
    pub async fn recv_msg(&self) -> crate::Result<Message> {
        self.recv_inner(self.h.options().recv_timeout).await
    }

    /// Raw sockets and the queued patterns (PULL, SUB, PAIR, BUS, raw REP,
    /// ...): takes the next message if one is already queued, without waiting
    /// (`Ok(None)` when none is). Lets a server drain everything that has
    /// arrived into one batch after an awaited [`Socket::recv_msg`]. Cooked
    /// REQ, REP, SURVEYOR and RESPONDENT give `NotSupported`.
    pub fn try_recv_msg(&self) -> crate::Result<Option<Message>> {
        if !self.is_raw() && answers(self.h.kind()) {
            return Err(CallerError::NotSupported.into());
        }
        self.h.try_recv()
    }

    /// [`Socket::recv_msg`] with a 5 s timeout at most (tests and tools).
    #[doc(hidden)]
    pub async fn recv_timeout_msg(&self) -> crate::Result<Message> {
        self.recv_inner(Some(Duration::from_secs(5))).await
    }

    pub(crate) async fn recv_inner(&self, timeout: Option<Duration>) -> crate::Result<Message> {
        let mut m = self.h.recv(CtxId::SOCKET, timeout).await?;
        if self.is_raw() {
            return Ok(m);
        }
        if answers(self.h.kind()) {
            self.rep.store(Some(Arc::new(m.header)));
        }
        m.header.clear();
        Ok(m)
    }

    /// SUB: receive messages whose body starts with `topic` (the empty
    /// topic: everything). A new SUB socket receives nothing until it
    /// subscribes.
    pub async fn subscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        self.h.subscribe(CtxId::SOCKET, topic.into(), true).await
    }

    /// SUB: drop a subscription; [`CallerError::NoSuchSubscription`] if
    /// there is none for `topic`.
    pub async fn unsubscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        self.h.subscribe(CtxId::SOCKET, topic.into(), false).await
    }

    /// Opens a context: an independent request (REQ), reply (REP), survey
    /// (SURVEYOR), response (RESPONDENT) or subscription set with its own
    /// receive queue (SUB) on this socket, so many exchanges run at once.
    pub async fn context(&self) -> crate::Result<Context> {
        if self.is_raw() {
            return Err(CallerError::NoContexts.into());
        }
        let (ctx, queue) = match self.h.kind() {
            Protocol::Req0 | Protocol::Surveyor0 | Protocol::Sub0 => self.h.open_ctx().await?,
            Protocol::Rep0 | Protocol::Respondent0 => (CtxId::SOCKET, None),
            _ => return Err(CallerError::NoContexts.into()),
        };
        Ok(Context {
            h: self.h.clone(),
            ctx,
            queue,
            rep: None,
        })
    }
}

/// Refuses raw messages whose header the pattern could not send (checked
/// here because a queued send's refusal would otherwise be silent).
fn check_raw_header(kind: Protocol, header: &Header) -> crate::Result<()> {
    let ok = match kind {
        // The hop count, below 255.
        Protocol::Pair1 => header.first_word().is_some_and(|h| h < 0xff),
        // The pipe id word naming where the reply goes.
        Protocol::Rep0 | Protocol::Respondent0 => header.len() >= 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(CallerError::BadHeader.into())
    }
}

/// Patterns whose receive hands back a header the next send must carry
/// (the pipe id and backtrace of the request or survey being answered).
fn answers(kind: Protocol) -> bool {
    matches!(kind, Protocol::Rep0 | Protocol::Respondent0)
}

/// An independent exchange on a REQ, REP, SURVEYOR, RESPONDENT or SUB
/// socket. Each context has at most one request or survey outstanding (REQ,
/// SURVEYOR) or one being answered (REP, RESPONDENT), with its own ids and
/// timers; a SUB context has its own subscriptions and receive queue.
/// Closed when dropped.
#[derive(Debug)]
pub struct Context {
    h: SocketHandle,
    ctx: CtxId,
    queue: Option<CtxQueue>,
    rep: Option<Header>,
}

impl Context {
    /// Sends a request (REQ) or the reply to the last request received (REP).
    pub async fn send(&mut self, body: impl Into<Bytes>) -> crate::Result<()> {
        let mut msg = Message::from_body(body);
        if self.h.is_closed() {
            return Err(Error::Closed);
        }
        if answers(self.h.kind()) {
            msg.header = self
                .rep
                .take()
                .ok_or(Error::Caller(CallerError::BadState))?;
        }
        self.h
            .send(self.ctx, msg, self.h.options().send_timeout)
            .await
    }

    /// Receives the reply (REQ) or the next request (REP).
    pub async fn recv(&mut self) -> crate::Result<Bytes> {
        self.recv_timeout(self.h.options().recv_timeout).await
    }

    /// Receives with an explicit timeout.
    pub async fn recv_timeout(&mut self, timeout: Option<Duration>) -> crate::Result<Bytes> {
        let m = match &self.queue {
            Some(q) => self.h.recv_ctx_queue(q, timeout).await?,
            None => self.h.recv(self.ctx, timeout).await?,
        };
        if answers(self.h.kind()) {
            self.rep = Some(m.header);
        }
        Ok(m.body)
    }

    /// SUB: subscribe this context to `topic`.
    pub async fn subscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        self.h.subscribe(self.ctx, topic.into(), true).await
    }

    /// SUB: drop one of this context's subscriptions.
    pub async fn unsubscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        self.h.subscribe(self.ctx, topic.into(), false).await
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.ctx != CtxId::SOCKET {
            self.h.close_ctx(self.ctx);
        }
    }
}
