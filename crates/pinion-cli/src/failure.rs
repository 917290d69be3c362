//! Failures: a one-line message for stderr and the exit code, chosen from the
//! typed [`pinion::Error`] (never from its text).

use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;

use pinion::{Error, Fault, PeerError, TlsFault};

use crate::exit;

/// Why the command stopped before finishing its work.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code (one of [`crate::exit`]).
    pub code: i32,
    /// One line, printed after `pinion: ` on stderr; empty for a quiet stop
    /// (stdout closed by its reader).
    pub message: String,
}

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A usage error (bad or contradictory flags).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(exit::USAGE, message)
    }

    /// Stdout was closed by its reader: stop quietly with success, as a
    /// command killed by SIGPIPE would in a shell pipeline.
    pub fn quiet() -> Failure {
        Failure::new(exit::OK, "")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code for a pinion error.
pub fn code_for(e: &Error) -> i32 {
    match e {
        Error::InvalidUrl { .. } => exit::BAD_URL,
        Error::TimedOut => exit::TIMED_OUT,
        Error::Peer(_) => exit::PEER,
        _ => match e.io_kind() {
            Some(ErrorKind::ConnectionRefused) => exit::CONNECTION_REFUSED,
            Some(ErrorKind::AddrInUse) => exit::ADDRESS_IN_USE,
            _ => match e.fault() {
                Fault::Io => exit::IO,
                Fault::Peer => exit::PEER,
                _ => exit::FAILED,
            },
        },
    }
}

/// The error's own words without the URL it may repeat.
fn detail(e: &Error) -> String {
    match e {
        Error::InvalidUrl { reason, .. } => reason.to_string(),
        Error::Io { source, .. } => source.to_string(),
        Error::Peer(p) => p.to_string(),
        other => other.to_string(),
    }
}

/// Dialing or listening.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `--dial`.
    Dial,
    /// `--listen`.
    Listen,
}

/// A failed `--dial URL` or `--listen URL`.
pub fn endpoint(action: Action, url: &str, e: &Error) -> Failure {
    let code = match (action, e.io_kind()) {
        // Dialing an ipc:// path with no socket file: nothing listens there,
        // as with a refused connection.
        (Action::Dial, Some(ErrorKind::NotFound)) => exit::CONNECTION_REFUSED,
        _ => code_for(e),
    };
    let verb = match action {
        Action::Dial => "dial",
        Action::Listen => "listen on",
    };
    let hint = match (code, action) {
        (exit::BAD_URL, _) => {
            "write it as tcp://HOST:PORT, ipc:///PATH, inproc://NAME, ws://HOST:PORT/PATH, tls+tcp://HOST:PORT or wss://HOST:PORT/PATH".to_string()
        }
        (exit::CONNECTION_REFUSED, _) => {
            "nothing is listening there: start the listening side first, or check the address"
                .to_string()
        }
        (exit::ADDRESS_IN_USE, _) => {
            "another socket is already listening there: stop it, or listen on another port or path (port 0 picks a free one)"
                .to_string()
        }
        (exit::PEER, _) => match e {
            Error::Peer(pe @ (PeerError::Tls(_) | PeerError::TlsOnPlainPort)) => tls_hint(pe).to_string(),
            _ => format!(
                "the peer is not a compatible socket (pairs: {})",
                crate::PEERS
            ),
        },
        (exit::TIMED_OUT, _) => "the peer did not complete the SP handshake in time".to_string(),
        (_, Action::Dial) => "check the address, the network and that the peer is running".to_string(),
        (_, Action::Listen) => {
            "check the address and that this user may bind it".to_string()
        }
    };
    Failure::new(code, format!("cannot {verb} {url}: {}; {hint}", detail(e)))
}

/// What to do about a TLS failure.
fn tls_hint(e: &PeerError) -> &'static str {
    match e {
        PeerError::Tls(TlsFault::UnknownIssuer) => {
            "the server's certificate is not signed by a CA this end trusts: give its CA with --cacert (or -k to skip verification)"
        }
        PeerError::Tls(TlsFault::NameMismatch) => {
            "the server's certificate is not for the host dialed: dial the name it carries, or give --server-name"
        }
        PeerError::Tls(TlsFault::Expired | TlsFault::NotYetValid) => {
            "the peer's certificate is outside its validity period (check both clocks)"
        }
        PeerError::Tls(TlsFault::PeerAlert(116)) => {
            "the listener requires a client certificate: give --cert (and --key)"
        }
        PeerError::Tls(TlsFault::PeerAlert(42 | 48)) => {
            "the listener does not trust this end's certificate: use one signed by a CA it trusts"
        }
        PeerError::Tls(TlsFault::PeerAlert(45)) => {
            "the listener refused this end's certificate as expired"
        }
        PeerError::Tls(TlsFault::NotTls) => {
            "the peer does not speak TLS: dial it with tcp:// or ws://"
        }
        PeerError::TlsOnPlainPort => "the peer speaks TLS: use tls+tcp:// or wss://",
        _ => "the TLS handshake failed: check both ends' certificates and TLS settings",
    }
}

/// Seconds for messages: `1.5s`.
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A failed send or receive. `doing` says what the command was doing
/// ("waiting for a reply on tcp://…"), `timeout` the limit that applied.
pub fn op(e: &Error, doing: &str, timeout: Option<(Duration, &str)>) -> Failure {
    let code = code_for(e);
    let message = match (code, timeout) {
        (exit::TIMED_OUT, Some((d, flag))) => format!(
            "timed out after {} {doing}; check that the peer is running and connected, or raise {flag}",
            secs(d)
        ),
        _ => format!("{doing} failed: {}", detail(e)),
    };
    Failure::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_typed_error() {
        let io = |kind| Error::Io {
            op: "connect",
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            code_for(&io(ErrorKind::ConnectionRefused)),
            exit::CONNECTION_REFUSED
        );
        assert_eq!(code_for(&io(ErrorKind::AddrInUse)), exit::ADDRESS_IN_USE);
        assert_eq!(code_for(&io(ErrorKind::PermissionDenied)), exit::IO);
        assert_eq!(code_for(&Error::ConnectionReset), exit::IO);
        assert_eq!(code_for(&Error::TimedOut), exit::TIMED_OUT);
        assert_eq!(
            code_for(&Error::Peer(pinion::PeerError::WrongProtocol(0x51))),
            exit::PEER
        );
        assert_eq!(code_for(&Error::Closed), exit::FAILED);
        assert_eq!(code_for(&Error::Bug("x")), exit::FAILED);
    }

    #[test]
    fn messages_are_one_line_and_name_the_url() {
        let e = Error::Io {
            op: "bind",
            addr: "127.0.0.1:5555".into(),
            source: std::io::Error::from(ErrorKind::AddrInUse),
        };
        let f = endpoint(Action::Listen, "tcp://127.0.0.1:5555", &e);
        assert_eq!(f.code, exit::ADDRESS_IN_USE);
        assert!(f.message.contains("tcp://127.0.0.1:5555"), "{f}");
        assert!(!f.message.contains('\n'));
    }

    #[test]
    fn dialing_a_missing_ipc_file_is_refused() {
        let e = Error::Io {
            op: "connect",
            addr: "/tmp/x.sock".into(),
            source: std::io::Error::from(ErrorKind::NotFound),
        };
        assert_eq!(
            endpoint(Action::Dial, "ipc:///tmp/x.sock", &e).code,
            exit::CONNECTION_REFUSED
        );
        assert_eq!(endpoint(Action::Listen, "ipc:///x/y", &e).code, exit::IO);
    }
}
