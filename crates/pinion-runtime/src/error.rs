//! The error type of sockets, split by who is at fault.

use std::io;

use pinion_core::{CallerError, OpError, PeerError};
use thiserror::Error;

/// Who caused an [`Error`](enum@Error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The application: bad URL, wrong state, unsupported operation.
    Caller,
    /// The remote peer broke the protocol.
    Peer,
    /// The operating system or network: refused, reset, address in use.
    Io,
    /// Not a fault: the operation ran out of time, was replaced, or the
    /// socket was closed.
    Outcome,
    /// A bug in pinion.
    Bug,
}

/// What went wrong with a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UrlError {
    /// No `scheme://`.
    #[error("missing scheme (expected tcp://, ipc://, inproc://, ws://, tls+tcp:// or wss://)")]
    MissingScheme,
    /// A scheme pinion does not know.
    #[error("unsupported scheme")]
    UnsupportedScheme,
    /// `tcp://` without `host:port`, or a bad port.
    #[error("expected host:port")]
    BadHostPort,
    /// A `ws://` path with characters an HTTP request line cannot carry.
    #[error("bad path")]
    BadPath,
    /// Empty path or name.
    #[error("empty address")]
    Empty,
    /// The host name did not resolve.
    #[error("host name did not resolve")]
    Unresolved,
}

/// Errors from sockets, dialers and listeners.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: UrlError,
    },
    /// The application asked for something the socket cannot do.
    #[error(transparent)]
    Caller(#[from] CallerError),
    /// TLS settings that cannot be used (a file that is not there, PEM
    /// without a certificate, a listener without a certificate of its
    /// own, a server name that is neither a DNS name nor an address).
    #[error(transparent)]
    TlsConfig(#[from] crate::transport::tls::TlsConfigError),
    /// The peer broke the protocol (reported by a dial).
    #[error("peer error: {0}")]
    Peer(#[from] PeerError),
    /// An operating-system error while binding, connecting or talking.
    #[error("{op} {addr}: {source}")]
    Io {
        /// What pinion was doing (`bind`, `connect`, ...).
        op: &'static str,
        /// The address involved.
        addr: String,
        /// The OS error; match on `source.kind()`.
        #[source]
        source: io::Error,
    },
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// A newer operation replaced this one.
    #[error("canceled")]
    Canceled,
    /// The socket is closed.
    #[error("socket closed")]
    Closed,
    /// The connection carrying a request was lost and resending is off.
    #[error("connection reset")]
    ConnectionReset,
    /// A bug in pinion.
    #[error("internal error: {0}")]
    Bug(&'static str),
}

impl Error {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Error::InvalidUrl { .. } | Error::Caller(_) | Error::TlsConfig(_) => Fault::Caller,
            Error::Peer(_) => Fault::Peer,
            Error::Io { .. } | Error::ConnectionReset => Fault::Io,
            Error::TimedOut | Error::Canceled | Error::Closed => Fault::Outcome,
            Error::Bug(_) => Fault::Bug,
        }
    }

    /// The `io::ErrorKind` of an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, addr: impl std::fmt::Display, source: io::Error) -> Self {
        Error::Io {
            op,
            addr: addr.to_string(),
            source,
        }
    }
}

impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        match e {
            OpError::TimedOut => Error::TimedOut,
            OpError::Canceled => Error::Canceled,
            OpError::Closed => Error::Closed,
            OpError::ConnectionReset => Error::ConnectionReset,
            OpError::Caller(c) => Error::Caller(c),
            _ => Error::Bug("unknown OpError variant"),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::TimedOut => io::ErrorKind::TimedOut,
            Error::InvalidUrl { .. } | Error::Caller(_) | Error::TlsConfig(_) => {
                io::ErrorKind::InvalidInput
            }
            Error::Peer(_) => io::ErrorKind::InvalidData,
            Error::Closed | Error::ConnectionReset => io::ErrorKind::ConnectionReset,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
