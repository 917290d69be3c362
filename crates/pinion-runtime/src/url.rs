//! Endpoint URLs: `tcp://host:port`, `ipc:///path`, `inproc://name`.

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

    /// The host to bind or connect to (`*` and empty become `0.0.0.0`).
    pub(crate) fn tcp_host(host: &str) -> &str {
        if host.is_empty() || host == "*" {
            "0.0.0.0"
        } else {
            host
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Url::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Url::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Url::Ipc(p) => write!(f, "ipc://{}", p.display()),
            Url::Inproc(n) => write!(f, "inproc://{n}"),
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
        for bad in [
            "127.0.0.1:5",
            "tcp://127.0.0.1",
            "tcp://h:99999",
            "ftp://x",
            "ipc://",
            "inproc://",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
