//! `ws://`: SP over WebSocket, as NNG maps it.
//!
//! * **Opening handshake** ([`handshake`]): HTTP/1.1 `GET` upgrade. The
//!   dialer sends `Host: <host>:<port>` exactly as its URL has them (NNG's
//!   HTTP server routes on it), `Sec-WebSocket-Version: 13` and
//!   `Sec-WebSocket-Protocol: <peer>.sp.nanomsg.org`, naming the *server's*
//!   pattern (`rep` for a REQ dialer, `pub` for a SUB dialer; `pair1` for
//!   PAIR v1). The listener checks that it names its own pattern and echoes
//!   it; a missing or wrong subprotocol (and any other malformed upgrade) is
//!   answered HTTP 400, a path other than the listener's HTTP 404. There is
//!   no 8-byte SP header: the subprotocol says who the peer is.
//! * **Messages** ([`frame`]): one binary WebSocket message = one SP message,
//!   its SP header (REQ backtrace, PAIR v1 hop count) at the start of the
//!   payload. Fragmented messages are reassembled. Outgoing messages are cut
//!   into frames of at most 64 KiB (like NNG). Client frames are masked,
//!   server frames not.
//! * **Closing** (status codes as NNG sends them): a text frame → close
//!   1003; an unmasked client frame (or any other framing violation) → 1002;
//!   a message over the socket's `recv_max_size` → 1009, decided from the
//!   frame header before anything of its payload is allocated. Pings are
//!   answered with pongs; a peer's close frame is answered with one and the
//!   connection closed.
//!
//! A malformed upgrade or frame closes that connection only (counted in the
//! socket's [`Stats`](crate::Stats)); nothing here panics on network input.
//!
//! # Codec crate: tungstenite, at the frame level
//!
//! The frame header codec ([`FrameHeader::parse`](tungstenite::protocol::frame::FrameHeader::parse)
//! / `format`, opcodes and close codes) and the handshake keys
//! (`derive_accept_key`, `generate_key`) are tungstenite's, HTTP heads are
//! parsed by `httparse`. tungstenite is the most used and most scrutinised
//! WebSocket implementation in Rust and maintained; its header parser is the
//! part worth not rewriting (variable-length lengths, masks, opcode checks).
//!
//! Its `WebSocket` type (and tokio-tungstenite's stream over it) is not used:
//! each connection owns an input buffer allocated up front (128 KiB by
//! default; a small `read_buffer_size` turns a large message into many
//! small reads, and a buffer grown for one is kept) plus an output buffer,
//! and it needs a blocking-style `Read`/`Write` adapter. tokio-websockets
//! keeps an 8 KiB `FramedRead` buffer per connection from the start, and
//! fastwebsockets likewise reads through a per-connection buffer. None fits
//! the budget this transport is built for: **100,000 idle connections at
//! ≤ 8 KiB of process memory each.** So the pipe (`ws/pipe.rs`) reads into one
//! 64 KiB scratch buffer per core, the streaming [`frame::Decoder`] copies
//! out only the message being assembled (grown as bytes arrive, never from
//! an announced length), and write buffers live only as long as one batch.
//!
//! # Measured idle memory
//!
//! `cargo run --release -p pinion --example ws_idle_memory` opens 10,000
//! WebSocket connections (clients in a child process) to one pinion REP
//! listener and reports the listener process's RSS growth per connection.
//! Last run (2 cores, Linux, release): **6,890 B per idle connection**,
//! 7,192 B after every connection made one request/reply and went idle
//! again. `crates/pinion/tests/ws_memory.rs` checks ≤ 8 KiB with 2,000
//! connections (about 7.0 and 7.4 KB in a debug build). Where it goes,
//! roughly: the pipe task (its future is ~1.8 KB, checked ≤ 2 KiB by a
//! test), the write queue the socket holds (`PipeEvent::Up::out`, a tokio
//! unbounded channel whose first block of 32 `PipeCmd`s, ~3.3 KB, is
//! allocated when it is made; the same for every transport), and the
//! socket's per-pipe entry, the read gate and the I/O registration.

use std::io;
use std::sync::Arc;

use super::tls::TlsRole;
use crate::error::Error;
use crate::url::Url;

pub mod frame;
pub mod handshake;
mod pipe;

pub(crate) use pipe::run_pipe;
pub use pipe::SCRATCH_LEN;

/// Which end of the upgrade a connection is.
#[derive(Debug, Clone)]
pub enum Role {
    /// Accepted by a listener on this request path.
    Server {
        /// The listener's path (matched exactly).
        path: Arc<str>,
    },
    /// Dialed: the request to send.
    Client {
        /// The `Host:` header value (`host:port` as the URL gives them).
        host: String,
        /// The request path.
        path: String,
    },
}

/// A TCP connection about to be upgraded, movable between cores.
#[derive(Debug)]
pub struct PortableWs {
    /// The connection (non-blocking).
    pub tcp: std::net::TcpStream,
    /// Which end it is.
    pub role: Role,
    /// Bytes already read from the connection (a server whose application
    /// read the upgrade request to route it): the start of the stream.
    pub read: Vec<u8>,
    /// `wss://`: the TLS handshake to run before the upgrade (boxed: a
    /// plain connection carries only the pointer).
    pub tls: Option<Box<TlsRole>>,
}

/// A TCP connection about to be upgraded, registered with a core.
#[derive(Debug)]
pub struct WsConn {
    /// The connection.
    pub tcp: tokio::net::TcpStream,
    /// Which end it is.
    pub role: Role,
    /// Bytes already read from it (see [`PortableWs::read`]).
    pub read: Vec<u8>,
    /// `wss://`: the TLS handshake to run before the upgrade.
    pub tls: Option<Box<TlsRole>>,
}

impl WsConn {
    /// Registers a portable connection with the calling core.
    pub fn adopt(p: PortableWs) -> io::Result<WsConn> {
        Ok(WsConn {
            tcp: tokio::net::TcpStream::from_std(p.tcp)?,
            role: p.role,
            read: p.read,
            tls: p.tls,
        })
    }
}

/// The `Host:` value for a URL host and port (IPv6 in brackets).
fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn tcp_url(url: &Url) -> Result<(Url, &str), Error> {
    match url {
        Url::Ws { host, port, path } => Ok((
            Url::Tcp {
                host: host.clone(),
                port: *port,
            },
            path,
        )),
        _ => Err(Error::Bug("ws transport given a non-ws URL")),
    }
}

/// Connects the TCP part of a `ws://` URL; the upgrade (after the TLS
/// handshake, with `tls`: `wss://`) is done by the pipe.
pub async fn connect(url: &Url, nodelay: bool, tls: Option<TlsRole>) -> Result<WsConn, Error> {
    let tls = tls.map(Box::new);
    let (tcp, path) = tcp_url(url)?;
    let Url::Ws { host, port, .. } = url else {
        return Err(Error::Bug("ws transport given a non-ws URL"));
    };
    let s = super::tcp::connect(&tcp, nodelay).await?;
    Ok(WsConn {
        tcp: s,
        role: Role::Client {
            host: host_header(host, *port),
            path: path.to_string(),
        },
        read: Vec::new(),
        tls,
    })
}

/// A bound `ws://` endpoint.
#[derive(Debug)]
pub struct WsListener {
    tcp: tokio::net::TcpListener,
    path: Arc<str>,
    tls: Option<Box<TlsRole>>,
}

impl WsListener {
    /// Makes it a `wss://` listener: every connection starts with a TLS
    /// handshake.
    pub fn set_tls(&mut self, role: TlsRole) {
        self.tls = Some(Box::new(role));
    }

    /// Waits for the next TCP connection (upgraded later, by its pipe, so a
    /// slow client never holds up the accept loop).
    pub async fn accept(&mut self, nodelay: bool) -> io::Result<PortableWs> {
        let (s, _) = self.tcp.accept().await?;
        s.set_nodelay(nodelay)?;
        Ok(PortableWs {
            tcp: s.into_std()?,
            role: Role::Server {
                path: self.path.clone(),
            },
            read: Vec::new(),
            tls: self.tls.clone(),
        })
    }
}

/// Binds, returning the URL with the port actually bound.
pub async fn bind(url: &Url) -> Result<(WsListener, Url), Error> {
    let (tcp, path) = tcp_url(url)?;
    let (l, bound) = super::tcp::bind(&tcp).await?;
    let (Url::Tcp { host, port }, Url::Ws { .. }) = (bound, url) else {
        return Err(Error::Bug("tcp bind returned a non-tcp URL"));
    };
    Ok((
        WsListener {
            tcp: l,
            path: Arc::from(path),
            tls: None,
        },
        Url::Ws {
            host,
            port,
            path: path.to_string(),
        },
    ))
}
