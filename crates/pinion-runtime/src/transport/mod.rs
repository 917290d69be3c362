//! Transports: how pipes come to exist.
//!
//! Each transport gives a [`Listener`] (bind, then accept connections) and a
//! [`connect`] function. A connection is handed around as a [`Portable`]
//! value (a standard-library socket, or an in-process channel pair), so the
//! listener can accept on one core and the pipe can run on another: the pipe
//! task registers it with its own core's event loop ([`Conn::adopt`]).
//!
//! | scheme | module | framing |
//! |---|---|---|
//! | `tcp://` | [`tcp`] | SP header, then `u64 length + payload` |
//! | `ipc://` | [`ipc`] | SP header, then `0x01 + u64 length + payload` |
//! | `inproc://` | [`inproc`] | messages moved through channels, no bytes |
//! | `ws://` | [`ws`] | HTTP/1.1 upgrade, then one binary WebSocket message per SP message |
//! | `tls+tcp://` | [`tls`] | TLS handshake, then as `tcp://` |
//! | `wss://` | [`tls`], [`ws`] | TLS handshake, then as `ws://` |

use std::io;

use pinion_core::wire::Framing;

use crate::error::Error;
use crate::url::Url;

pub mod inproc;
pub mod ipc;
pub mod tcp;
pub mod tls;
pub mod ws;

/// A connection that can move between cores.
#[derive(Debug)]
pub enum Portable {
    /// A connected TCP socket (non-blocking).
    Tcp(std::net::TcpStream),
    /// A connected UNIX-domain socket (non-blocking).
    Ipc(std::os::unix::net::UnixStream),
    /// One end of an in-process pipe.
    Inproc(inproc::InprocEnd),
    /// A TCP connection to upgrade to a WebSocket (by the pipe task).
    Ws(ws::PortableWs),
    /// A TCP connection to run a TLS handshake on (by the pipe task).
    Tls(tls::PortableTls),
}

/// A connection registered with the current core's event loop.
#[derive(Debug)]
pub enum Conn {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// IPC.
    Ipc(tokio::net::UnixStream),
    /// inproc.
    Inproc(inproc::InprocEnd),
    /// WebSocket (not yet upgraded: the pipe task does that).
    Ws(ws::WsConn),
    /// TLS (no handshake yet: the pipe task does that).
    Tls(tls::TlsConn),
}

impl Conn {
    /// Registers a portable connection with the calling core. Must run inside
    /// a core's event loop.
    pub fn adopt(p: Portable) -> io::Result<Conn> {
        Ok(match p {
            Portable::Tcp(s) => Conn::Tcp(tokio::net::TcpStream::from_std(s)?),
            Portable::Ipc(s) => Conn::Ipc(tokio::net::UnixStream::from_std(s)?),
            Portable::Inproc(e) => Conn::Inproc(e),
            Portable::Ws(p) => Conn::Ws(ws::WsConn::adopt(p)?),
            Portable::Tls(p) => Conn::Tls(tls::TlsConn::adopt(p)?),
        })
    }

    /// The stream framing, for byte-stream transports.
    pub fn framing(&self) -> Option<Framing> {
        match self {
            Conn::Tcp(_) | Conn::Tls(_) => Some(Framing::Tcp),
            Conn::Ipc(_) => Some(Framing::Ipc),
            Conn::Inproc(_) | Conn::Ws(_) => None,
        }
    }
}

/// Connects to `url` from the calling core. `proto` is the local protocol id
/// (inproc exchanges it at connect time); `depth` bounds an inproc pipe's
/// queue; `tls` is the dialer's TLS side, which a `tls+tcp://` or `wss://`
/// URL needs.
pub async fn connect(
    url: &Url,
    proto: u16,
    depth: usize,
    nodelay: bool,
    tls: Option<&tls::TlsRole>,
) -> Result<Conn, Error> {
    let need_tls = || {
        tls.cloned()
            .ok_or(Error::Caller(pinion_core::CallerError::TlsNotConfigured))
    };
    match url {
        Url::Tcp { .. } => tcp::connect(url, nodelay).await.map(Conn::Tcp),
        Url::Ipc(path) => ipc::connect(path).await.map(Conn::Ipc),
        Url::Inproc(name) => inproc::connect(name, proto, depth).map(Conn::Inproc),
        Url::Ws { .. } => ws::connect(url, nodelay, None).await.map(Conn::Ws),
        Url::Tls { .. } => {
            let role = need_tls()?;
            let tcp = tcp::connect(&url.without_tls(), nodelay).await?;
            Ok(Conn::Tls(tls::TlsConn { tcp, role }))
        }
        Url::Wss { .. } => {
            let role = need_tls()?;
            ws::connect(&url.without_tls(), nodelay, Some(role))
                .await
                .map(Conn::Ws)
        }
    }
}

/// A bound endpoint accepting connections.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// IPC; removes its socket file when dropped.
    Ipc(ipc::IpcListener),
    /// inproc; unregisters its name when dropped.
    Inproc(inproc::InprocListener),
    /// WebSocket (over TLS for `wss://`).
    Ws(ws::WsListener),
    /// TLS over TCP.
    Tls(tokio::net::TcpListener, tls::TlsRole),
}

impl Listener {
    /// Binds `url` on the calling core and returns the listener and the URL
    /// actually bound (with the port filled in for `tcp://host:0`). `tls`
    /// is the listener's TLS side, which a `tls+tcp://` or `wss://` URL
    /// needs.
    pub async fn bind(
        url: &Url,
        proto: u16,
        tls: Option<tls::TlsRole>,
    ) -> Result<(Listener, Url), Error> {
        let need_tls = || {
            tls.clone()
                .ok_or(Error::Caller(pinion_core::CallerError::TlsNotConfigured))
        };
        match url {
            Url::Tls { .. } => {
                let role = need_tls()?;
                let (l, bound) = tcp::bind(&url.without_tls()).await?;
                Ok((Listener::Tls(l, role), bound.with_tls()))
            }
            Url::Wss { .. } => {
                let role = need_tls()?;
                let (mut l, bound) = ws::bind(&url.without_tls()).await?;
                l.set_tls(role);
                Ok((Listener::Ws(l), bound.with_tls()))
            }
            Url::Tcp { .. } => {
                let (l, bound) = tcp::bind(url).await?;
                Ok((Listener::Tcp(l), bound))
            }
            Url::Ipc(path) => Ok((Listener::Ipc(ipc::bind(path).await?), url.clone())),
            Url::Inproc(name) => Ok((Listener::Inproc(inproc::bind(name, proto)?), url.clone())),
            Url::Ws { .. } => {
                let (l, bound) = ws::bind(url).await?;
                Ok((Listener::Ws(l), bound))
            }
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&mut self, nodelay: bool) -> io::Result<Portable> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(nodelay)?;
                Ok(Portable::Tcp(s.into_std()?))
            }
            Listener::Ipc(l) => l.accept().await.map(Portable::Ipc),
            Listener::Inproc(l) => l.accept().await.map(Portable::Inproc),
            Listener::Ws(l) => l.accept(nodelay).await.map(Portable::Ws),
            Listener::Tls(l, role) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(nodelay)?;
                Ok(Portable::Tls(tls::PortableTls {
                    tcp: s.into_std()?,
                    role: role.clone(),
                }))
            }
        }
    }
}
