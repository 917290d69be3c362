//! Typed errors, split by who is at fault.
//!
//! * [`PeerError`]: the remote end broke the protocol. The driver closes that
//!   one pipe, counts the fault in the socket's statistics and carries on.
//! * [`CallerError`]: the application asked for something the socket cannot
//!   do in its present state or configuration.
//! * [`OpError`]: how one application operation (a send or a receive) ended
//!   when it did not succeed.
//!
//! None of these carry strings to match on; every rule has its own variant.

use thiserror::Error;

/// A protocol violation by the remote peer. The pipe it arrived on is closed;
/// nothing else is disturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The 8-byte SP header did not start with `00 53 50 00`.
    #[error("bad SP header magic")]
    BadMagic,
    /// The SP header's reserved bytes (6 and 7) were not zero.
    #[error("non-zero reserved bytes in SP header")]
    BadReserved,
    /// The peer speaks a protocol that cannot talk to this socket.
    #[error("peer protocol 0x{0:04x} is not compatible with this socket")]
    WrongProtocol(u16),
    /// The peer announced a message longer than the receive limit.
    #[error("message of {len} bytes exceeds the receive limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The socket's receive limit.
        max: u64,
    },
    /// An IPC message carried a type byte other than `0x01`.
    #[error("unknown IPC message type 0x{0:02x}")]
    BadIpcType(u8),
    /// The peer did not send its SP header in time.
    #[error("SP handshake timed out")]
    HandshakeTimeout,
    /// A request or survey had no backtrace word with the top bit set.
    #[error("message has no end-of-backtrace word")]
    NoBacktraceEnd,
    /// A reply shorter than the 4-byte request id.
    #[error("message too short for its protocol header")]
    ShortHeader,
    /// A PAIR v1 hop count above 255.
    #[error("pair1 hop count {0} is over 255")]
    BadHopCount(u32),
    /// The socket already has its one peer (pair).
    #[error("socket already has a peer")]
    AlreadyPaired,
    /// A WebSocket opening handshake (the HTTP/1.1 upgrade request, or the
    /// server's answer to ours) that pinion cannot accept. A listener
    /// answers it with HTTP 400 (404 for [`UpgradeFault::WrongPath`]).
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(UpgradeFault),
    /// The WebSocket server answered our upgrade with this HTTP status
    /// instead of `101 Switching Protocols` (NNG: 400 for a missing or wrong
    /// subprotocol, 404 for an unknown path or host).
    #[error("WebSocket upgrade refused with HTTP status {0}")]
    UpgradeRefused(u16),
    /// A WebSocket framing violation; the connection is closed with status
    /// 1002 (protocol error).
    #[error("WebSocket protocol violation: {0}")]
    WsFrame(WsViolation),
    /// A WebSocket text frame: SP messages travel in binary frames. Closed
    /// with status 1003 (unsupported data), as NNG does.
    #[error("WebSocket text frame (SP needs binary frames)")]
    WsText,
    /// More WebSocket frames that carry no data (control frames and empty
    /// data frames) than the connection's allowance: a flood that costs the
    /// reader work per frame with no bytes to bound it. Closed with status
    /// 1008 (policy violation).
    #[error(
        "WebSocket flood: over {burst} frames without data at once, or over {per_sec} a second"
    )]
    WsFlood {
        /// Frames allowed at once.
        burst: u32,
        /// Frames allowed per second, sustained.
        per_sec: u32,
    },
    /// A TLS ClientHello where the SP header was expected: a TLS client
    /// (`tls+tcp://` or `wss://`) dialed a plain `tcp://` or `ws://` port.
    #[error("TLS handshake on a plain (non-TLS) port")]
    TlsOnPlainPort,
    /// The TLS handshake, or a TLS record after it, failed; the reason says
    /// which end refused what.
    #[error("TLS: {0}")]
    Tls(TlsFault),
}

/// Why a TLS connection failed. The first group is this end refusing the
/// peer's certificate, the second the peer refusing ours (it sent an alert),
/// the third a peer that does not speak TLS as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum TlsFault {
    /// The peer's certificate does not chain to a trusted CA.
    #[error("peer certificate signed by an unknown CA")]
    UnknownIssuer,
    /// The peer's certificate has expired.
    #[error("peer certificate expired")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error("peer certificate not valid yet")]
    NotYetValid,
    /// The server's certificate is not valid for the name dialed (or the
    /// configured server name).
    #[error("server certificate not valid for the name dialed")]
    NameMismatch,
    /// The peer's certificate was revoked.
    #[error("peer certificate revoked")]
    Revoked,
    /// Some other problem with the peer's certificate (bad encoding or
    /// signature, wrong key usage, a CA certificate used as an end entity).
    #[error("peer certificate rejected")]
    BadCertificate,
    /// This listener requires a client certificate and the client sent none.
    #[error("client sent no certificate and one is required")]
    NoClientCertificate,
    /// The peer refused the handshake with this TLS alert (RFC 8446 §6):
    /// 42 bad_certificate, 45 certificate_expired, 48 unknown_ca, 116
    /// certificate_required, 40 handshake_failure, ...
    #[error("peer refused the handshake with TLS alert {0}")]
    PeerAlert(u8),
    /// The peer sent something that is not TLS (a plain SP header, HTTP):
    /// a plain client on a TLS port, or a TLS dialer to a plain port.
    #[error("peer does not speak TLS")]
    NotTls,
    /// A record longer than TLS allows (2^14 bytes plus expansion), refused
    /// from its header before anything of it was buffered.
    #[error("TLS record over the size limit")]
    RecordOverflow,
    /// The two ends share no protocol version, cipher suite or key exchange
    /// group.
    #[error("no TLS version, cipher suite or group in common")]
    Incompatible,
    /// Another TLS protocol violation (a malformed or unexpected message,
    /// a bad record MAC, a decryption failure).
    #[error("TLS protocol violation")]
    Protocol,
}

/// What is wrong with a WebSocket opening handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum UpgradeFault {
    /// Not parseable as an HTTP/1.x request or response head.
    #[error("malformed HTTP head")]
    Malformed,
    /// The head did not end within the size limit.
    #[error("HTTP head too long")]
    TooLong,
    /// Not `GET`.
    #[error("method is not GET")]
    NotGet,
    /// Not HTTP/1.1.
    #[error("not HTTP/1.1")]
    NotHttp11,
    /// Missing `Upgrade: websocket` or `Connection: Upgrade`.
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    /// Missing or malformed `Sec-WebSocket-Key`.
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("Sec-WebSocket-Version is not 13")]
    BadVersion,
    /// The request has a body (NNG refuses those).
    #[error("request has a body")]
    HasBody,
    /// No `Host` header.
    #[error("missing Host header")]
    MissingHost,
    /// No `Sec-WebSocket-Protocol`, or one that names no SP protocol.
    #[error("missing or unknown SP subprotocol")]
    NoSubprotocol,
    /// The request path is not the listener's.
    #[error("unknown path")]
    WrongPath,
    /// The server's `Sec-WebSocket-Accept` does not match our key.
    #[error("bad Sec-WebSocket-Accept")]
    BadAccept,
}

/// A WebSocket framing rule the peer broke (RFC 6455 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum WsViolation {
    /// A client frame without a mask.
    #[error("unmasked client frame")]
    Unmasked,
    /// A server frame with a mask.
    #[error("masked server frame")]
    Masked,
    /// RSV1-3 set without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// A reserved opcode.
    #[error("reserved opcode")]
    BadOpcode,
    /// A fragmented control frame or one over 125 bytes.
    #[error("bad control frame")]
    BadControl,
    /// A continuation without a message to continue, or a new message
    /// before the previous one's last fragment.
    #[error("bad fragmentation")]
    BadContinuation,
    /// A payload length with the most significant bit set.
    #[error("bad payload length")]
    BadLength,
    /// A close frame with a 1-byte payload or an invalid status code.
    #[error("bad close frame")]
    BadClose,
}

/// The application asked for something the socket cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum CallerError {
    /// A `tls+tcp://` or `wss://` dial or listen on a socket given no TLS
    /// settings.
    #[error("no TLS configuration for a tls+tcp:// or wss:// endpoint")]
    TlsNotConfigured,
    /// This pattern does not send (pull) or does not receive (push).
    #[error("operation not supported by this protocol")]
    NotSupported,
    /// Out of order: a REQ receive with no request outstanding, or a REP send
    /// with no request to answer.
    #[error("operation not valid in the current state")]
    BadState,
    /// The context id does not name an open context.
    #[error("no such context")]
    NoSuchContext,
    /// This pattern has no contexts.
    #[error("contexts are not supported by this protocol")]
    NoContexts,
    /// The message header is longer than a header can be.
    #[error("message header too long")]
    HeaderTooLong,
    /// An option value out of its range.
    #[error("invalid option value")]
    InvalidOption,
    /// A raw message's header is not valid for the protocol (a raw PAIR v1
    /// message without a hop count below 255, a raw REP reply without a
    /// pipe id word).
    #[error("invalid protocol header for a raw message")]
    BadHeader,
    /// A device needs two raw sockets of complementary protocols (or one
    /// raw PAIR or BUS socket to reflect on).
    #[error("sockets cannot be joined by a device")]
    BadDevice,
    /// Unsubscribing from a topic the context is not subscribed to.
    #[error("no such subscription")]
    NoSuchSubscription,
}

/// How an application operation ended when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum OpError {
    /// The deadline passed first.
    #[error("timed out")]
    TimedOut,
    /// A newer operation replaced this one (a new REQ request cancels the old).
    #[error("canceled")]
    Canceled,
    /// The socket or context was closed.
    #[error("closed")]
    Closed,
    /// A request's pipe went away and resending is disabled.
    #[error("connection reset")]
    ConnectionReset,
    /// The caller made a mistake.
    #[error(transparent)]
    Caller(#[from] CallerError),
}
