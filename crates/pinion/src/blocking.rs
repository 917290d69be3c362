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
