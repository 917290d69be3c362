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

/// Binds, returning the URL with the port actually bound.
pub async fn bind(url: &Url) -> Result<(TcpListener, Url), Error> {
    let addr = resolve(url).await?[0];
    let l = TcpListener::bind(addr)
        .await
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
