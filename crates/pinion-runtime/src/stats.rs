//! Per-socket counters, readable from any thread.
//!
//! Pipe faults are counted by the pipe tasks (on whichever core they run);
//! message counts by the socket task. Relaxed atomics: they are statistics,
//! not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pinion_core::{PeerError, TlsFault};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one socket (and the TLS identities of its
        /// pipes, kept here to share its `Arc`: a pipe carries one
        /// pointer fewer).
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// The verified TLS identities of the socket's pipes.
            pub peers: crate::pipe::PeerTable,
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Stats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Pipes that completed the handshake and were accepted.
    pipes_added,
    /// Pipes that went away after being accepted.
    pipes_removed,
    /// Headers with bad magic, version or reserved bytes; WebSocket
    /// upgrades refused (either way).
    rejected_header,
    /// Peers speaking an incompatible protocol.
    rejected_protocol,
    /// Peers refused because the pattern has its one peer already.
    rejected_busy,
    /// Peers that did not send their header within the handshake timeout.
    handshake_timeouts,
    /// Pipes closed for announcing a message over the receive limit.
    too_large,
    /// Pipes closed for malformed messages (bad backtrace, short header,
    /// bad IPC type, bad hop count, WebSocket framing violations and text
    /// frames).
    malformed,
    /// TLS handshakes this end refused for the peer's certificate (unknown
    /// CA, expired or not yet valid, wrong name, revoked, malformed, or
    /// missing where one is required).
    tls_cert_rejected,
    /// Other TLS failures: the peer refused ours (an alert), spoke no TLS
    /// (a plain client on a TLS port, or a TLS ClientHello on a plain
    /// port), sent an oversize record, shared no cipher suite, or broke the
    /// TLS protocol.
    tls_failures,
    /// Pipes closed by an I/O error (reset, broken pipe).
    io_errors,
    /// Dial attempts that failed.
    dial_failures,
    /// Messages dropped for exceeding the max TTL (pipe kept).
    ttl_drops,
    /// Replies dropped because their pipe was gone or full.
    unroutable_drops,
    /// Messages a slow peer did not get (PUB queue overflow, BUS no room).
    queue_drops,
    /// Messages handed to pipes.
    msgs_sent,
    /// Messages received from pipes.
    msgs_received,
    /// Pipes reading back to back right now (a gauge, not a counter): a
    /// pipe counts from a read that holds more than one message until a
    /// read finds nothing waiting. It sizes their events
    /// ([`event_cap`](crate::pipe::event_cap)).
    busy_pipes,
}

impl Stats {
    /// Counts a pipe closed for `e`.
    pub fn count_peer_error(&self, e: &PeerError) {
        let c = match e {
            PeerError::BadMagic
            | PeerError::BadReserved
            | PeerError::BadUpgrade(_)
            | PeerError::UpgradeRefused(_) => &self.rejected_header,
            PeerError::WrongProtocol(_) => &self.rejected_protocol,
            PeerError::AlreadyPaired => &self.rejected_busy,
            PeerError::HandshakeTimeout => &self.handshake_timeouts,
            PeerError::TooLarge { .. } => &self.too_large,
            PeerError::Tls(
                TlsFault::UnknownIssuer
                | TlsFault::Expired
                | TlsFault::NotYetValid
                | TlsFault::NameMismatch
                | TlsFault::Revoked
                | TlsFault::BadCertificate
                | TlsFault::NoClientCertificate,
            ) => &self.tls_cert_rejected,
            PeerError::Tls(_) | PeerError::TlsOnPlainPort => &self.tls_failures,
            _ => &self.malformed,
        };
        c.fetch_add(1, Relaxed);
    }
}
