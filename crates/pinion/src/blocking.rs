//! Blocking wrappers for plain threads.
//!
//! Each call parks the calling thread until the operation completes; the I/O
//! still happens on pinion's core threads. Do not call these from inside an
//! async task (use the async API there).
//!
//! ```
//! # fn main() -> Result<(), pinion::Error> {
//! use pinion::{blocking::Socket, Protocol};
//! let a = Socket::new(Protocol::Pair1)?;
//! a.listen("inproc://doc-pair")?;
//! let b = Socket::new(Protocol::Pair1)?;
//! b.dial("inproc://doc-pair")?;
//! b.send("hi")?;
//! assert_eq!(&a.recv()?[..], b"hi");
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;
use pinion_core::{Message, Options};
use pinion_runtime::socket::Endpoint;
use pinion_runtime::stats::StatsSnapshot;
use pinion_runtime::Runtime;

use crate::Protocol;

/// A blocking SP socket; see [`crate::Socket`] for the semantics.
#[derive(Debug, Clone)]
pub struct Socket(crate::Socket);

impl Socket {
    /// Opens a socket with default options on the global runtime.
    pub fn new(proto: Protocol) -> crate::Result<Socket> {
        crate::Socket::new(proto).map(Socket)
    }

    /// Opens a socket with options on the global runtime.
    pub fn with_options(proto: Protocol, opts: Options) -> crate::Result<Socket> {
        crate::Socket::with_options(proto, opts).map(Socket)
    }

    /// Opens a socket on a given runtime.
    pub fn on(rt: &Runtime, proto: Protocol, opts: Options) -> crate::Result<Socket> {
        crate::Socket::on(rt, proto, opts).map(Socket)
    }

    /// The async socket underneath.
    pub fn as_async(&self) -> &crate::Socket {
        &self.0
    }

    /// See [`crate::Socket::set_tls`].
    pub fn set_tls(&self, cfg: crate::TlsConfig) {
        self.0.set_tls(cfg)
    }

    /// See [`crate::Socket::peer_identity`].
    pub fn peer_identity(
        &self,
        pipe: crate::PipeId,
    ) -> Option<std::sync::Arc<crate::PeerIdentity>> {
        self.0.peer_identity(pipe)
    }

    /// Listens on `url`.
    pub fn listen(&self, url: &str) -> crate::Result<Endpoint> {
        block_on(self.0.listen(url))
    }

    /// Dials `url`, waiting for the first connection.
    pub fn dial(&self, url: &str) -> crate::Result<Endpoint> {
        block_on(self.0.dial(url))
    }

    /// Dials `url` in the background.
    pub fn dial_background(&self, url: &str) -> crate::Result<Endpoint> {
        block_on(self.0.dial_background(url))
    }

    /// Sends a body.
    pub fn send(&self, body: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.send(body))
    }

    /// Sends with an explicit timeout.
    pub fn send_timeout(
        &self,
        body: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> crate::Result<()> {
        block_on(self.0.send_timeout(body, timeout))
    }

    /// Sends a message.
    pub fn send_msg(&self, msg: Message) -> crate::Result<()> {
        block_on(self.0.send_msg(msg))
    }

    /// Receives a body.
    pub fn recv(&self) -> crate::Result<Bytes> {
        block_on(self.0.recv())
    }

    /// Receives with an explicit timeout.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> crate::Result<Bytes> {
        block_on(self.0.recv_timeout(timeout))
    }

    /// Receives a message.
    pub fn recv_msg(&self) -> crate::Result<Message> {
        block_on(self.0.recv_msg())
    }

    /// SUB: subscribe to a topic prefix (empty: everything).
    pub fn subscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.subscribe(topic))
    }

    /// SUB: drop a subscription.
    pub fn unsubscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.unsubscribe(topic))
    }

    /// Opens a context (REQ, REP, SURVEYOR, RESPONDENT, SUB).
    pub fn context(&self) -> crate::Result<Context> {
        block_on(self.0.context()).map(Context)
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.0.stats()
    }

    /// Closes the socket.
    pub fn close(&self) {
        self.0.close()
    }
}

/// A blocking context; see [`crate::Context`].
#[derive(Debug)]
pub struct Context(crate::Context);

impl Context {
    /// Sends on the context.
    pub fn send(&mut self, body: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.send(body))
    }

    /// Receives on the context.
    pub fn recv(&mut self) -> crate::Result<Bytes> {
        block_on(self.0.recv())
    }

    /// Receives with an explicit timeout.
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> crate::Result<Bytes> {
        block_on(self.0.recv_timeout(timeout))
    }

    /// SUB: subscribe this context.
    pub fn subscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.subscribe(topic))
    }

    /// SUB: drop one of this context's subscriptions.
    pub fn unsubscribe(&self, topic: impl Into<Bytes>) -> crate::Result<()> {
        block_on(self.0.unsubscribe(topic))
    }
}

/// Blocking [`crate::device`]: forwards between two raw sockets (or reflects
/// on one) until one is closed; returns why it stopped.
pub fn device(a: &Socket, b: Option<&Socket>) -> crate::Error {
    block_on(crate::device(&a.0, b.map(|b| &b.0)))
}

/// A blocking [`crate::subscriber::Subscriber`]: the same resuming hub
/// subscriber, for plain threads.
///
/// ```no_run
/// # fn main() -> Result<(), pinion::subscriber::Error> {
/// use pinion::subscriber::SubscriberOptions;
///
/// let opts = SubscriberOptions {
///     from: Some(0),
///     ..SubscriberOptions::new(["ws://127.0.0.1:7452", "ws://127.0.0.2:7452"])
/// };
/// let sub = pinion::blocking::Subscriber::connect(opts)?;
/// for d in sub {
///     let d = d?;
///     println!("{}: {:?}", d.offset, d.payload);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscriber(crate::subscriber::Subscriber);

impl Subscriber {
    /// [`crate::subscriber::Subscriber::start`]: checks the options and
    /// starts in the background.
    pub fn start(
        opts: crate::subscriber::SubscriberOptions,
    ) -> Result<Subscriber, crate::subscriber::Error> {
        crate::subscriber::Subscriber::start(opts).map(Subscriber)
    }

    /// [`crate::subscriber::Subscriber::connect`]: waits until a node has
    /// accepted the subscription.
    pub fn connect(
        opts: crate::subscriber::SubscriberOptions,
    ) -> Result<Subscriber, crate::subscriber::Error> {
        block_on(crate::subscriber::Subscriber::connect(opts)).map(Subscriber)
    }

    /// The async subscriber underneath.
    pub fn as_async(&mut self) -> &mut crate::subscriber::Subscriber {
        &mut self.0
    }

    /// The next event.
    pub fn next_event(&mut self) -> Result<crate::subscriber::Event, crate::subscriber::Error> {
        block_on(self.0.next_event())
    }

    /// The next message within `timeout` (`Ok(None)`: none came).
    pub fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<crate::subscriber::Delivery>, crate::subscriber::Error> {
        block_on(self.0.next_timeout(timeout))
    }

    /// The next event within `timeout` (`Ok(None)`: none came).
    pub fn next_event_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<crate::subscriber::Event>, crate::subscriber::Error> {
        block_on(self.0.next_event_timeout(timeout))
    }

    /// The URL of the node serving the subscription.
    pub fn node(&self) -> &str {
        self.0.node()
    }

    /// Its index in the options' URLs.
    pub fn node_index(&self) -> Option<usize> {
        self.0.node_index()
    }

    /// Where to resume after the latest delivery.
    pub fn next_offset(&self) -> Option<u64> {
        self.0.next_offset()
    }

    /// Deliveries dropped as duplicates.
    pub fn dropped_duplicates(&self) -> u64 {
        self.0.dropped_duplicates()
    }

    /// Closes the connection and stops.
    pub fn close(self) {}
}

/// Messages, one by one (blocking): `Some(Ok(delivery))`; once the
/// subscriber stops (after `give_up_after`), `Some(Err(last error))`, then
/// `None`.
impl Iterator for Subscriber {
    type Item = Result<crate::subscriber::Delivery, crate::subscriber::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match block_on(self.0.next()) {
            Err(crate::subscriber::Error::Closed) => None,
            r => Some(r),
        }
    }
}
