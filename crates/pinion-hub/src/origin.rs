//! Who may talk to the HTTP port: the `Host` a request names and the
//! `Origin` of the web page that sent it (pure functions; no I/O but the
//! optional "is this address mine?" probe the caller passes in).
//!
//! Two attacks motivate them, both from a web page in a browser on a
//! machine that can reach the hub:
//!
//! * **Cross-site WebSocket hijacking.** Browsers let any page open a
//!   WebSocket to any address; the same-origin policy does not apply, the
//!   server is expected to check the `Origin` header the browser sets. So a
//!   request carrying an `Origin` must come from one of the hub's own pages
//!   or from an origin the operator allowed.
//! * **DNS rebinding.** A page on `evil.example` re-points that name at
//!   `127.0.0.1`; its requests are then same-origin to the browser and reach
//!   the hub with `Host: evil.example:7452`. So the `Host` must be one of the
//!   hub's names or addresses.
//!
//! Clients that are not browsers (the CLI, pynng, NNG's ws transport)
//! send no `Origin` and are not affected by the origin rule. The rules in
//! full, for users, are in `docs/HARDENING.md` ("The front door").

use std::net::{IpAddr, SocketAddr};

/// A `host[:port]` as found in a `Host` header, an `Origin` or the
/// configuration, normalized for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The host: an address ([`HostKey::Ip`], IPv4-mapped IPv6 as IPv4) or
    /// a name (lower case, without a trailing dot).
    pub host: HostKey,
    /// The port, if one was written.
    pub port: Option<u16>,
}

/// The host part of an [`Authority`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// An IP literal (`127.0.0.1`, `[::1]`).
    Ip(IpAddr),
    /// A DNS name (`localhost`, `hub.example.com`).
    Name(String),
}

impl HostKey {
    fn is_loopback_name(&self) -> bool {
        matches!(self, HostKey::Name(n) if n == "localhost")
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`, what a dual-stack
/// socket reports) compare as the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Parses `host[:port]` (`[v6]:port` for IPv6). `None` when it is not a
/// valid authority: empty, a user-info part, a path, characters a host
/// name cannot hold, a port that is not a number below 65536.
pub fn parse_authority(s: &str) -> Option<Authority> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':')?)?),
        };
        (HostKey::Ip(canonical_ip(IpAddr::V6(ip))), port)
    } else {
        let (h, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        if h.is_empty() {
            return None;
        }
        match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => (HostKey::Ip(IpAddr::V4(ip)), port),
            Err(_) => {
                // A registered name: letters, digits, '-', '_', '.', and
                // nothing else (no '@', '/', spaces, percent-escapes).
                let ok = h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !ok {
                    return None;
                }
                let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
                // No empty label anywhere ("..", ".x", or "." alone, which
                // fuzzing found passing as a name).
                if name.is_empty()
                    || name.starts_with('.')
                    || name.ends_with('.')
                    || name.contains("..")
                {
                    return None;
                }
                (HostKey::Name(name), port)
            }
        }
    };
    Some(Authority { host, port })
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// A web origin: `scheme://host[:port]` (the default port filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https` (lower case).
    pub scheme: String,
    /// Host and port (the scheme's default port when none was written).
    pub host: HostKey,
    /// The port.
    pub port: u16,
}

/// Parses an `Origin` header value (or an `allow_origin` entry): `None`
/// for `null` (sandboxed frames, `file:` pages), schemes other than
/// `http`/`https`, a path, or a malformed host.
pub fn parse_origin(s: &str) -> Option<Origin> {
    let s = s.trim();
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    // An origin has no path; tolerate the one trailing slash people write
    // in configuration files.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return None;
    }
    let a = parse_authority(rest)?;
    Some(Origin {
        scheme,
        host: a.host,
        port: a.port.unwrap_or(default),
    })
}

/// What a `Host` may name (see the module docs and `docs/HARDENING.md`).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The address the port is bound to.
    bound: SocketAddr,
    /// The host of the configured address when it is a name
    /// (`--http myhost:7452`).
    configured: Option<HostKey>,
    /// `allow_hosts` entries other than `*` (a name without a port matches
    /// any port).
    allowed: Vec<Authority>,
    /// `allow_hosts` has `*`: any `Host` is accepted.
    any: bool,
}

impl HostPolicy {
    /// The policy of a port bound to `bound`, configured as
    /// `configured_host` (the host part of the `http` setting, as written),
    /// with the operator's `allow_hosts`. Entries that do not parse are
    /// ignored (the configuration is validated before).
    pub fn new(bound: SocketAddr, configured_host: &str, allow_hosts: &[String]) -> HostPolicy {
        let configured = parse_authority(configured_host)
            .map(|a| a.host)
            .filter(|h| matches!(h, HostKey::Name(_)));
        HostPolicy {
            bound: SocketAddr::new(canonical_ip(bound.ip()), bound.port()),
            configured,
            allowed: allow_hosts
                .iter()
                .filter(|h| h.as_str() != "*")
                .filter_map(|h| parse_authority(h))
                .collect(),
            any: allow_hosts.iter().any(|h| h == "*"),
        }
    }

    /// Whether a request naming `host` reached through `local` (the address
    /// the connection arrived on) is for this hub. `is_local_ip` says
    /// whether an address belongs to this machine (asked only when the port
    /// is bound to a wildcard address).
    pub fn accepts(
        &self,
        host: &Authority,
        local: SocketAddr,
        is_local_ip: &dyn Fn(IpAddr) -> bool,
    ) -> bool {
        self.any || self.names(host, local, is_local_ip)
    }

    /// The same without the `*` wildcard: whether `host` is one of the
    /// hub's own names or addresses (the origin rule's notion of "the
    /// hub's own pages").
    pub fn names(
        &self,
        host: &Authority,
        local: SocketAddr,
        is_local_ip: &dyn Fn(IpAddr) -> bool,
    ) -> bool {
        // Operator-given names first: a name without a port takes any port
        // (a reverse proxy in front sends its own).
        if self
            .allowed
            .iter()
            .any(|a| a.host == host.host && (a.port.is_none() || a.port == host.port))
        {
            return true;
        }
        // Everything else only with the bound port (port 80 when the Host
        // names none, as HTTP says).
        if host.port.unwrap_or(80) != self.bound.port() {
            return false;
        }
        let bound_ip = self.bound.ip();
        let loopback = bound_ip.is_loopback();
        let wildcard = bound_ip.is_unspecified();
        if self.configured.as_ref() == Some(&host.host) {
            return true;
        }
        match &host.host {
            HostKey::Name(_) => host.host.is_loopback_name() && (loopback || wildcard),
            HostKey::Ip(ip) => {
                let ip = canonical_ip(*ip);
                ip == bound_ip
                    || ((loopback || wildcard) && ip.is_loopback())
                    || (wildcard && (ip == canonical_ip(local.ip()) || is_local_ip(ip)))
            }
        }
    }
}

/// Which web pages may use the port: the operator's `allow_origins`, and
/// the hub's own pages.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
    any: bool,
}

impl OriginPolicy {
    /// From `allow_origins` (`*` = any; entries that do not parse are
    /// ignored, the configuration is validated before).
    pub fn new(allow_origins: &[String]) -> OriginPolicy {
        OriginPolicy {
            allowed: allow_origins
                .iter()
                .filter_map(|o| parse_origin(o))
                .collect(),
            any: allow_origins.iter().any(|o| o == "*"),
        }
    }

    /// Whether a request with `Origin: origin`, reached through `local`, is
    /// from a page allowed to use the hub: an origin in `allow_origins`, or
    /// an `http://` origin whose host and port are one of the hub's own
    /// names ([`HostPolicy::names`]: the page was served by this hub, under
    /// any of its names; `*` in `allow_hosts` does not count).
    pub fn accepts(
        &self,
        origin: &str,
        hosts: &HostPolicy,
        local: SocketAddr,
        is_local_ip: &dyn Fn(IpAddr) -> bool,
    ) -> bool {
        if self.any {
            return true;
        }
        let Some(o) = parse_origin(origin) else {
            return false;
        };
        if self.allowed.contains(&o) {
            return true;
        }
        o.scheme == "http"
            && hosts.names(
                &Authority {
                    host: o.host,
                    port: Some(o.port),
                },
                local,
                is_local_ip,
            )
    }
}

/// Whether `ip` is one of this machine's addresses: binding a socket to it
/// succeeds only then (no interface list to keep up to date, and it follows
/// addresses that come and go).
pub fn is_machine_ip(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    /// Found by the `hub_origin` fuzz target: ".." made the name ".", and
    /// "-.." the name "-." (one trailing dot stripped, one left).
    #[test]
    fn empty_labels_are_not_names() {
        for bad in ["..", ".", "..:80", ".x", "a..b", "..\u{ce}", "-..", "x..:1"] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
        assert!(parse_authority("a.").is_some());
    }

    use super::*;

    fn a(s: &str) -> Authority {
        parse_authority(s).unwrap_or_else(|| panic!("{s:?} should parse"))
    }

    const NOT_MINE: &dyn Fn(IpAddr) -> bool = &|_| false;

    #[test]
    fn authorities() {
        assert_eq!(
            a("LocalHost.:80"),
            Authority {
                host: HostKey::Name("localhost".into()),
                port: Some(80)
            }
        );
        assert_eq!(a("[::1]:7452").host, HostKey::Ip("::1".parse().unwrap()));
        assert_eq!(
            a("[::ffff:127.0.0.1]").host,
            HostKey::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(a("10.1.2.3").port, None);
        for bad in [
            "",
            ":80",
            "a b",
            "user@host",
            "host/path",
            "host:",
            "host:99999",
            "host:-1",
            "[::1",
            "[zz]:1",
            "[::1]x",
            "a..b",
            "%41",
            ".",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("HTTP://Example.COM"),
            Some(Origin {
                scheme: "http".into(),
                host: HostKey::Name("example.com".into()),
                port: 80
            })
        );
        assert_eq!(parse_origin("https://x.example/").unwrap().port, 443);
        for bad in [
            "null",
            "file://",
            "ftp://x",
            "http://x/path",
            "x",
            "http://",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_of_a_loopback_port() {
        let bound: SocketAddr = "127.0.0.1:7452".parse().unwrap();
        let p = HostPolicy::new(bound, "127.0.0.1", &[]);
        for ok in [
            "127.0.0.1:7452",
            "localhost:7452",
            "LOCALHOST.:7452",
            "[::1]:7452",
            "127.0.0.2:7452",
        ] {
            assert!(p.accepts(&a(ok), bound, NOT_MINE), "{ok}");
        }
        for no in [
            "evil.example:7452",
            "127.0.0.1:7453",
            "localhost",
            "192.168.1.5:7452",
            "localhost.evil.example:7452",
            "sub.localhost:7452",
        ] {
            assert!(!p.accepts(&a(no), bound, &|_| true), "{no}");
        }
        // Port 80 may go unwritten.
        let p80 = HostPolicy::new("127.0.0.1:80".parse().unwrap(), "127.0.0.1", &[]);
        assert!(p80.accepts(&a("localhost"), bound, NOT_MINE));
    }

    #[test]
    fn hosts_of_a_wildcard_or_named_port() {
        let bound: SocketAddr = "0.0.0.0:7452".parse().unwrap();
        let local: SocketAddr = "192.168.1.5:7452".parse().unwrap();
        let p = HostPolicy::new(bound, "0.0.0.0", &[]);
        assert!(p.accepts(&a("192.168.1.5:7452"), local, NOT_MINE));
        assert!(p.accepts(&a("localhost:7452"), local, NOT_MINE));
        assert!(p.accepts(&a("127.0.0.1:7452"), local, NOT_MINE));
        // Another address of this machine, as the probe says.
        let mine = |ip: IpAddr| ip == "10.0.0.7".parse::<IpAddr>().unwrap();
        assert!(p.accepts(&a("10.0.0.7:7452"), local, &mine));
        assert!(!p.accepts(&a("10.0.0.8:7452"), local, &mine));
        assert!(!p.accepts(&a("myhost:7452"), local, &mine));

        // A specific address answers to it only (not to loopback names).
        let lan: SocketAddr = "192.168.1.5:7452".parse().unwrap();
        let p = HostPolicy::new(lan, "myhost", &[]);
        assert!(p.accepts(&a("192.168.1.5:7452"), lan, NOT_MINE));
        assert!(p.accepts(&a("MyHost:7452"), lan, NOT_MINE));
        assert!(!p.accepts(&a("localhost:7452"), lan, NOT_MINE));
        assert!(!p.accepts(&a("127.0.0.1:7452"), lan, NOT_MINE));
    }

    #[test]
    fn allowed_hosts() {
        let bound: SocketAddr = "127.0.0.1:7452".parse().unwrap();
        let p = HostPolicy::new(
            bound,
            "127.0.0.1",
            &["hub.example.com".into(), "proxy.example:8080".into()],
        );
        assert!(p.accepts(&a("hub.example.com"), bound, NOT_MINE));
        assert!(p.accepts(&a("HUB.example.com:443"), bound, NOT_MINE));
        assert!(p.accepts(&a("proxy.example:8080"), bound, NOT_MINE));
        assert!(!p.accepts(&a("proxy.example:8081"), bound, NOT_MINE));
        assert!(!p.accepts(&a("other.example.com"), bound, NOT_MINE));
        let any = HostPolicy::new(bound, "127.0.0.1", &["*".into()]);
        assert!(any.accepts(&a("evil.example"), bound, NOT_MINE));
        assert!(!any.names(&a("evil.example"), bound, NOT_MINE));
    }

    #[test]
    fn origin_rule() {
        let bound: SocketAddr = "127.0.0.1:7452".parse().unwrap();
        let hosts = HostPolicy::new(bound, "127.0.0.1", &["hub.example.com".into()]);
        let own = OriginPolicy::new(&[]);
        let ok = |p: &OriginPolicy, o: &str| p.accepts(o, &hosts, bound, NOT_MINE);
        // The hub's own pages, under any of its names.
        assert!(ok(&own, "http://127.0.0.1:7452"));
        assert!(ok(&own, "http://localhost:7452"));
        assert!(ok(&own, "http://[::1]:7452"));
        assert!(ok(&own, "http://hub.example.com"));
        // Everything else.
        for no in [
            "http://evil.example",
            "http://evil.example:7452",
            "http://localhost:3000",
            "https://localhost:7452",
            "null",
            "",
            "garbage",
        ] {
            assert!(!ok(&own, no), "{no}");
        }
        let some = OriginPolicy::new(&["https://app.example.com".into()]);
        assert!(ok(&some, "https://APP.example.com:443"));
        assert!(!ok(&some, "http://app.example.com"));
        assert!(!ok(&some, "https://app.example.com:8443"));
        assert!(ok(&OriginPolicy::new(&["*".into()]), "http://evil.example"));
        // A "*" Host does not make every origin the hub's own.
        let any_host = HostPolicy::new(bound, "127.0.0.1", &["*".into()]);
        assert!(!own.accepts("http://evil.example:7452", &any_host, bound, NOT_MINE));
    }

    #[test]
    fn machine_addresses() {
        assert!(is_machine_ip("127.0.0.1".parse().unwrap()));
        // TEST-NET-3 (RFC 5737) is never assigned.
        assert!(!is_machine_ip("203.0.113.254".parse().unwrap()));
    }
}
