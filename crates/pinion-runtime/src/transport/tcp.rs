//! `tcp://`: TCP sockets.

use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, UrlError};
use crate::url::Url;

async fn resolve(url: &Url) -> Result<Vec<std::net::SocketAddr>, Error> {
    let Url::Tcp { host, port } = url else {
        return Err(Error::Bug("tcp transport given a non-tcp URL"));
    };
    let host = Url::tcp_host(host);
    let addrs: Vec<_> = tokio::net::lookup_host((host, *port))
        .await
        .map_err(|_| Error::InvalidUrl {
            url: url.to_string(),
            reason: UrlError::Unresolved,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: UrlError::Unresolved,
        });
    }
    Ok(addrs)
}

/// Connects, trying each resolved address in turn.
pub async fn connect(url: &Url, nodelay: bool) -> Result<TcpStream, Error> {
    let mut last = None;
    for addr in resolve(url).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(nodelay)
                    .map_err(|e| Error::io("connect", url, e))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        "connect",
        url,
        last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)),
    ))
}

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
/// A small backlog makes a burst of connections overflow the SYN queue, and
/// the kernel then answers with SYN cookies or drops, costing the clients a
/// one-second retransmit.
const BACKLOG: i32 = 4096;

fn listener_socket(
    addr: std::net::SocketAddr,
    reuseport: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Binds, returning the URL with the port actually bound.
pub async fn bind(url: &Url) -> Result<(TcpListener, Url), Error> {
    let addr = resolve(url).await?[0];
    let l = listener_socket(addr, false)
        .and_then(TcpListener::from_std)
        .map_err(|e| Error::io("bind", url, e))?;
    let local = l.local_addr().map_err(|e| Error::io("bind", url, e))?;
    let Url::Tcp { host, .. } = url else {
        unreachable!("resolved a tcp URL")
    };
    Ok((
        l,
        Url::Tcp {
            host: host.clone(),
            port: local.port(),
        },
    ))
}

/// Binds `n` listening sockets to the same address with `SO_REUSEPORT` (the
/// kernel then spreads incoming connections over them by 4-tuple hash).
/// Port 0 is resolved by the first bind and reused for the others.
pub async fn bind_reuseport(
    url: &Url,
    n: usize,
) -> Result<(Vec<std::net::TcpListener>, Url), Error> {
    let mut addr = resolve(url).await?[0];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let l = listener_socket(addr, true).map_err(|e| Error::io("bind", url, e))?;
        addr = l.local_addr().map_err(|e| Error::io("bind", url, e))?;
        out.push(l);
    }
    let Url::Tcp { host, .. } = url else {
        unreachable!("resolved a tcp URL")
    };
    Ok((
        out,
        Url::Tcp {
            host: host.clone(),
            port: addr.port(),
        },
    ))
}
