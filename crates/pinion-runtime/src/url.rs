//! Endpoint URLs: `tcp://host:port`, `ipc:///path`, `inproc://name`,
//! `ws://host:port/path`, and over TLS `tls+tcp://host:port` and
//! `wss://host:port/path` (NNG's spellings, `tls+tcp4`/`tls+tcp6` and
//! `wss4`/`wss6` included).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, UrlError};

/// A parsed endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Url {
    /// TCP: a host (name, IPv4, `[IPv6]`, or `*`/empty for any) and a port.
    Tcp {
        /// Host part as written (`*` and empty mean every interface).
        host: String,
        /// Port; 0 asks for an ephemeral one when listening.
        port: u16,
    },
    /// A UNIX-domain socket path.
    Ipc(PathBuf),
    /// An in-process endpoint name.
    Inproc(String),
    /// SP over WebSocket (NNG's `ws://`): TCP to `host:port`, then an HTTP/1.1
    /// upgrade on `path`.
    Ws {
        /// Host part as written, without IPv6 brackets (`*` and empty mean
        /// every interface when listening). A dialer sends it, with the port,
        /// as the `Host:` header.
        host: String,
        /// Port; 0 asks for an ephemeral one when listening. `ws://host/path`
        /// means port 80.
        port: u16,
        /// The HTTP request path, starting with `/` (`ws://host:port` means
        /// `/`). Matched exactly by a listener.
        path: String,
    },
    /// SP over TLS over TCP (NNG's `tls+tcp://`): a TLS handshake, then the
    /// SP header and messages exactly as on `tcp://`.
    Tls {
        /// Host part as written (`*` and empty mean every interface). A
        /// dialer checks the server's certificate against it unless a
        /// server name is configured.
        host: String,
        /// Port; 0 asks for an ephemeral one when listening.
        port: u16,
    },
    /// SP over WebSocket over TLS (`wss://`): as [`Url::Ws`] after a TLS
    /// handshake. `wss://host/path` means port 443.
    Wss {
        /// Host part, as for [`Url::Ws`].
        host: String,
        /// Port.
        port: u16,
        /// The HTTP request path.
        path: String,
    },
}

impl Url {
    /// Parses a URL.
    pub fn parse(s: &str) -> Result<Url, Error> {
        let bad = |reason| Error::InvalidUrl {
            url: s.to_string(),
            reason,
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad(UrlError::MissingScheme))?;
        match scheme {
            "tls+tcp" | "tls+tcp4" | "tls+tcp6" => match Url::parse(&format!("tcp://{rest}")) {
                Ok(Url::Tcp { host, port }) => Ok(Url::Tls { host, port }),
                _ => Err(bad(UrlError::BadHostPort)),
            },
            "wss" | "wss4" | "wss6" => {
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                let with_port = if split_host_port(authority, 0).is_some_and(|(_, p)| p == 0)
                    && !authority.ends_with(":0")
                {
                    // No port written: 443.
                    format!("ws://{authority}:443{path}")
                } else {
                    format!("ws://{rest}")
                };
                match Url::parse(&with_port) {
                    Ok(Url::Ws { host, port, path }) => Ok(Url::Wss { host, port, path }),
                    Err(Error::InvalidUrl { reason, .. }) => Err(bad(reason)),
                    _ => Err(bad(UrlError::BadHostPort)),
                }
            }
            "tcp" | "tcp4" | "tcp6" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(UrlError::BadHostPort))?;
                let port: u16 = port.parse().map_err(|_| bad(UrlError::BadHostPort))?;
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                if host.contains('/') {
                    return Err(bad(UrlError::BadHostPort));
                }
                Ok(Url::Tcp { host, port })
            }
            "ws" => {
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                let (host, port) =
                    split_host_port(authority, 80).ok_or_else(|| bad(UrlError::BadHostPort))?;
                if path.contains(['#', ' ', '\r', '\n']) || path.chars().any(|c| c.is_control()) {
                    return Err(bad(UrlError::BadPath));
                }
                Ok(Url::Ws {
                    host,
                    port,
                    path: path.to_string(),
                })
            }
            "ipc" | "unix" => {
                if rest.is_empty() {
                    return Err(bad(UrlError::Empty));
                }
                Ok(Url::Ipc(PathBuf::from(rest)))
            }
            "inproc" => {
                if rest.is_empty() {
                    return Err(bad(UrlError::Empty));
                }
                Ok(Url::Inproc(rest.to_string()))
            }
            _ => Err(bad(UrlError::UnsupportedScheme)),
        }
    }

    /// The port of a `tcp://`, `ws://`, `tls+tcp://` or `wss://` URL.
    pub fn port(&self) -> Option<u16> {
        match self {
            Url::Tcp { port, .. }
            | Url::Ws { port, .. }
            | Url::Tls { port, .. }
            | Url::Wss { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// Whether the transport runs over TLS (`tls+tcp://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        matches!(self, Url::Tls { .. } | Url::Wss { .. })
    }

    /// The same address without TLS: `tls+tcp://` becomes `tcp://`,
    /// `wss://` becomes `ws://`; others are returned as they are.
    pub fn without_tls(&self) -> Url {
        match self {
            Url::Tls { host, port } => Url::Tcp {
                host: host.clone(),
                port: *port,
            },
            Url::Wss { host, port, path } => Url::Ws {
                host: host.clone(),
                port: *port,
                path: path.clone(),
            },
            u => u.clone(),
        }
    }

    /// The same address over TLS: the inverse of [`Url::without_tls`]
    /// (`tcp://` to `tls+tcp://`, `ws://` to `wss://`).
    pub fn with_tls(&self) -> Url {
        match self {
            Url::Tcp { host, port } => Url::Tls {
                host: host.clone(),
                port: *port,
            },
            Url::Ws { host, port, path } => Url::Wss {
                host: host.clone(),
                port: *port,
                path: path.clone(),
            },
            u => u.clone(),
        }
    }

    /// The host of a URL with one, as written (without IPv6 brackets).
    pub fn host(&self) -> Option<&str> {
        match self {
            Url::Tcp { host, .. }
            | Url::Ws { host, .. }
            | Url::Tls { host, .. }
            | Url::Wss { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The host to bind or connect to (`*` and empty become `0.0.0.0`).
    pub(crate) fn tcp_host(host: &str) -> &str {
        if host.is_empty() || host == "*" {
            "0.0.0.0"
        } else {
            host
        }
    }
}

/// Splits `host:port`, `[v6]:port`, or a bare host (then `default` port).
/// The host loses its brackets; `None` for a bad port or stray characters.
fn split_host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.contains(['/', '[', ']', '@', ' '])
        || (host.contains(':') && !authority.starts_with('['))
    {
        return None;
    }
    let port = match port {
        None => default,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((host.to_string(), port))
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Url::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Url::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Url::Ipc(p) => write!(f, "ipc://{}", p.display()),
            Url::Inproc(n) => write!(f, "inproc://{n}"),
            Url::Ws { host, port, path } if host.contains(':') => {
                write!(f, "ws://[{host}]:{port}{path}")
            }
            Url::Ws { host, port, path } => write!(f, "ws://{host}:{port}{path}"),
            Url::Tls { host, port } if host.contains(':') => {
                write!(f, "tls+tcp://[{host}]:{port}")
            }
            Url::Tls { host, port } => write!(f, "tls+tcp://{host}:{port}"),
            Url::Wss { host, port, path } if host.contains(':') => {
                write!(f, "wss://[{host}]:{port}{path}")
            }
            Url::Wss { host, port, path } => write!(f, "wss://{host}:{port}{path}"),
        }
    }
}

impl std::str::FromStr for Url {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Url::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            Url::parse("tcp://127.0.0.1:0").unwrap(),
            Url::Tcp {
                host: "127.0.0.1".into(),
                port: 0
            }
        );
        assert_eq!(
            Url::parse("tcp://[::1]:5555").unwrap().to_string(),
            "tcp://[::1]:5555"
        );
        assert_eq!(
            Url::parse("ipc:///tmp/a.sock").unwrap(),
            Url::Ipc("/tmp/a.sock".into())
        );
        assert_eq!(Url::parse("inproc://x").unwrap(), Url::Inproc("x".into()));
        assert_eq!(
            Url::parse("ws://127.0.0.1:5555/a/b").unwrap(),
            Url::Ws {
                host: "127.0.0.1".into(),
                port: 5555,
                path: "/a/b".into()
            }
        );
        assert_eq!(
            Url::parse("ws://localhost:80").unwrap(),
            Url::Ws {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            Url::parse("ws://example.org/x").unwrap(),
            Url::Ws {
                host: "example.org".into(),
                port: 80,
                path: "/x".into()
            }
        );
        let v6 = Url::parse("ws://[::1]:9/p?q=1").unwrap();
        assert_eq!(
            v6,
            Url::Ws {
                host: "::1".into(),
                port: 9,
                path: "/p?q=1".into()
            }
        );
        assert_eq!(v6.to_string(), "ws://[::1]:9/p?q=1");
        assert_eq!(v6.port(), Some(9));
        assert_eq!(
            Url::parse("ws://127.0.0.1:0/").unwrap().to_string(),
            "ws://127.0.0.1:0/"
        );
        let tls = Url::parse("tls+tcp://localhost:5556").unwrap();
        assert_eq!(
            tls,
            Url::Tls {
                host: "localhost".into(),
                port: 5556
            }
        );
        assert!(tls.is_tls());
        assert_eq!(tls.to_string(), "tls+tcp://localhost:5556");
        assert_eq!(tls.without_tls().to_string(), "tcp://localhost:5556");
        assert_eq!(tls.without_tls().with_tls(), tls);
        assert_eq!(
            Url::parse("tls+tcp6://[::1]:7").unwrap().to_string(),
            "tls+tcp://[::1]:7"
        );
        assert_eq!(
            Url::parse("wss://example.org/x").unwrap(),
            Url::Wss {
                host: "example.org".into(),
                port: 443,
                path: "/x".into()
            }
        );
        assert_eq!(
            Url::parse("wss://example.org").unwrap().to_string(),
            "wss://example.org:443/"
        );
        assert_eq!(
            Url::parse("wss://[::1]:0/p").unwrap().to_string(),
            "wss://[::1]:0/p"
        );
        assert_eq!(
            Url::parse("wss://127.0.0.1:8443/sub")
                .unwrap()
                .without_tls(),
            Url::Ws {
                host: "127.0.0.1".into(),
                port: 8443,
                path: "/sub".into()
            }
        );
        for bad in [
            "127.0.0.1:5",
            "tcp://127.0.0.1",
            "tcp://h:99999",
            "ftp://x",
            "ipc://",
            "inproc://",
            "ws://h:99999/x",
            "ws://h:/x",
            "ws://h:x/y",
            "ws://::1:80/x",
            "ws://[::1/x",
            "ws://h:1/a b",
            "ws://h:1/a#frag",
            "wss://h:99999/x",
            "wss://h:1/a b",
            "tls+tcp://h",
            "tls+tcp://h:x",
            "tls://h:1",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
