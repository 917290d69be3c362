//! Connection admission for the hub's listening ports: how many
//! connections a port holds, how many one source holds on it, and how many
//! of them are still in their handshake (HTTP head not read, SP header not
//! exchanged), plus the socket options every accepted connection gets.
//!
//! Each port has one [`Gate`] shared by the cores accepting on it. A
//! connection is admitted or refused right after `accept`, before any task
//! is spawned for it, so a refused peer costs an accept and a close.
//! Admission hands out two guards: a [`ConnGuard`] that lives as long as
//! the connection, and a [`HandshakeGuard`] dropped as soon as the
//! handshake is over. Dropping them gives the places back; the
//! `pinion_connections_open{port}` gauge follows the connection guards.
//!
//! A *source* is an IPv4 address, or an IPv6 /64 prefix (one subscriber
//! line gets a whole /64; counting single IPv6 addresses would let one
//! peer take any number of places).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::origin::canonical_ip;
use crate::stats::{Port, Refusal};
use crate::Shared;

/// The caps of one port (from [`crate::HubConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Connections open at once.
    pub connections: usize,
    /// The same per source; 0: no cap.
    pub per_source: usize,
    /// Connections in their handshake at once.
    pub handshakes: usize,
    /// The same per source.
    pub handshakes_per_source: usize,
}

impl Caps {
    /// The caps `cfg` sets (the same for every port).
    pub fn of(cfg: &crate::HubConfig) -> Caps {
        Caps {
            connections: cfg.max_connections,
            per_source: cfg.max_connections_per_source,
            handshakes: cfg.max_handshakes,
            handshakes_per_source: cfg.max_handshakes_per_source,
        }
    }
}

/// What the caps count for one source.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    open: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    handshakes: usize,
    /// Only sources holding something (an entry goes with its last
    /// connection, so the map is never larger than the port's connections).
    sources: HashMap<Source, Held>,
}

/// The unit a per-source cap counts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
}

impl Source {
    /// The source a peer address counts under.
    pub fn of(ip: IpAddr) -> Source {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => Source::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The admission state of one listening port (shared by its cores).
pub(crate) struct Gate {
    port: Port,
    caps: Caps,
    counts: Mutex<Counts>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("port", &self.port)
            .field("caps", &self.caps)
            .finish()
    }
}

/// A connection's place on its port; given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    gate: Arc<Gate>,
    source: Source,
}

/// A connection's place among those in their handshake; given back when
/// dropped (as soon as the head is read or the SP header exchanged).
#[derive(Debug)]
pub(crate) struct HandshakeGuard {
    gate: Arc<Gate>,
    source: Source,
}

impl Gate {
    /// The gate of `port`, counting into `shared.stats`.
    pub fn new(port: Port, caps: Caps, shared: Arc<Shared>) -> Arc<Gate> {
        Arc::new(Gate {
            port,
            caps,
            counts: Mutex::new(Counts::default()),
            shared,
        })
    }

    /// Counts one refusal (or cut) on this port.
    pub fn refuse(&self, why: Refusal) {
        self.shared.stats.refuse(self.port, why);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked (every
        // update is a few integer operations that cannot).
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, or says which cap it hit (counted).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(ConnGuard, HandshakeGuard), Refusal> {
        let source = Source::of(peer);
        let verdict = {
            let mut c = self.lock();
            let held = c.sources.get(&source).copied().unwrap_or_default();
            if c.open >= self.caps.connections {
                Err(Refusal::PortCap)
            } else if self.caps.per_source > 0 && held.open >= self.caps.per_source {
                Err(Refusal::SourceCap)
            } else if c.handshakes >= self.caps.handshakes
                || held.handshakes >= self.caps.handshakes_per_source
            {
                Err(Refusal::HandshakeCap)
            } else {
                c.open += 1;
                c.handshakes += 1;
                let h = c.sources.entry(source).or_default();
                h.open += 1;
                h.handshakes += 1;
                Ok(())
            }
        };
        match verdict {
            Ok(()) => {
                self.shared.stats.open[self.port as usize].fetch_add(1, Ordering::Relaxed);
                Ok((
                    ConnGuard {
                        gate: self.clone(),
                        source,
                    },
                    HandshakeGuard {
                        gate: self.clone(),
                        source,
                    },
                ))
            }
            Err(why) => {
                self.refuse(why);
                Err(why)
            }
        }
    }

    /// Gives back one place of `source` (`conn`: a connection place, else
    /// a handshake place).
    fn release(&self, source: Source, conn: bool) {
        let mut c = self.lock();
        if conn {
            c.open = c.open.saturating_sub(1);
        } else {
            c.handshakes = c.handshakes.saturating_sub(1);
        }
        if let Some(h) = c.sources.get_mut(&source) {
            if conn {
                h.open = h.open.saturating_sub(1);
            } else {
                h.handshakes = h.handshakes.saturating_sub(1);
            }
            if h.open == 0 && h.handshakes == 0 {
                c.sources.remove(&source);
            }
        }
        drop(c);
        if conn {
            self.shared.stats.open[self.port as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// (connections, handshakes, sources) held now, for tests.
    #[cfg(test)]
    fn held(&self) -> (usize, usize, usize) {
        let c = self.lock();
        (c.open, c.handshakes, c.sources.len())
    }
}

impl ConnGuard {
    /// The gate this connection was admitted by.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gate.release(self.source, true);
    }
}

/// A connection handed to a core's socket (publishers over TCP, `/pub`
/// over WebSocket) counts the peer's fault that ended it on its port.
impl pinion::Adopted for ConnGuard {
    fn peer_fault(&mut self, e: &pinion_core::PeerError) {
        self.gate.refuse(Refusal::of_peer_error(e));
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.gate.release(self.source, false);
    }
}

/// TCP keepalive on an accepted socket: probes after `idle` without
/// traffic, then every `idle / 6`, six of them, so a peer that vanished
/// (power off, cable pulled, NAT entry gone) is dropped after about twice
/// `idle` instead of never. `ZERO` leaves keepalive off. The kernel counts
/// in whole seconds, so both times are at least one second.
pub(crate) fn set_keepalive(s: &socket2::SockRef<'_>, idle: Duration) -> std::io::Result<()> {
    if idle.is_zero() {
        return Ok(());
    }
    let idle = idle.max(Duration::from_secs(1));
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 6).max(Duration::from_secs(1)))
        .with_retries(6);
    s.set_tcp_keepalive(&ka)
}

/// The time limits and socket options of the front door (from
/// [`crate::HubConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// For a whole HTTP head, or the SP header exchange.
    pub handshake_timeout: Duration,
    /// For one HTTP response, or one `/stats` frame.
    pub write_timeout: Duration,
    /// TCP keepalive idle time (`ZERO`: off).
    pub keepalive: Duration,
    /// A silent WebSocket subscriber is pinged after this, dropped after
    /// twice this.
    pub ws_ping_interval: Duration,
}

impl Limits {
    /// The limits `cfg` sets.
    pub fn of(cfg: &crate::HubConfig) -> Limits {
        Limits {
            handshake_timeout: cfg.handshake_timeout,
            write_timeout: cfg.write_timeout,
            keepalive: cfg.tcp_keepalive,
            ws_ping_interval: cfg.ws_ping_interval,
        }
    }
}

/// Accepts publishers (SP REQ over TCP) on one core's share of a publisher
/// port and hands each admitted connection to that core's REP socket
/// (`sock`, [`pinion::Socket::adopt_tcp`]): refused ones are closed at
/// once, before the SP header; the pipe holds its connection's place for
/// its life, and gives back its handshake place as soon as the SP headers
/// are exchanged (within the socket's `handshake_timeout`). Must run on
/// the core `sock` lives on.
pub(crate) async fn serve_rep(
    listener: std::net::TcpListener,
    sock: pinion::Socket,
    gate: Arc<Gate>,
    limits: Limits,
    tls: Option<pinion::TlsRole>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the publisher listener");
            return;
        }
    };
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed (publishers)");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (conn, hs) = match gate.admit(peer.ip()) {
            Ok(g) => g,
            Err(why) => {
                tracing::debug!(%peer, reason = why.label(), "publisher refused");
                continue; // dropped: closed
            }
        };
        let _ = set_keepalive(&socket2::SockRef::from(&s), limits.keepalive);
        let std = match s.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take an accepted publisher connection");
                continue;
            }
        };
        // A refused header (or none in time) is counted by the pipe's
        // end, through `conn` (`peer_fault`), like any later fault.
        let on_handshake = move |_: Result<(), pinion::Error>| drop(hs);
        let adopted = match &tls {
            None => sock.adopt_tcp(std, Box::new(conn), Box::new(on_handshake)),
            // The TLS handshake runs in the pipe, within the same
            // handshake timeout as the SP header.
            Some(role) => sock.adopt_tls(std, role.clone(), Box::new(conn), Box::new(on_handshake)),
        };
        if let Err(e) = adopted {
            tracing::warn!(error = %e, "cannot adopt a publisher connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HubStats, LatencyBuckets};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            cluster: None,
            inflight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            head: AtomicU64::new(0),
            log_ok: AtomicBool::new(true),
            stats: HubStats::default(),
            latency: LatencyBuckets::default(),
            auth: None,
            conn_claims: Vec::new(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_port_source_and_handshake() {
        let sh = shared();
        let caps = Caps {
            connections: 5,
            per_source: 3,
            handshakes: 4,
            handshakes_per_source: 2,
        };
        let g = Gate::new(Port::Sub, caps, sh.clone());
        let refused = |why: Refusal| {
            sh.stats.refused[Port::Sub as usize][why as usize].load(Ordering::Relaxed)
        };
        let open = || sh.stats.open[Port::Sub as usize].load(Ordering::Relaxed);

        // Two handshakes from one source, the third waits for one to end.
        let (c1, h1) = g.admit(ip("10.0.0.1")).unwrap();
        let (c2, h2) = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Refusal::HandshakeCap);
        drop(h1);
        let (c3, h3) = g.admit(ip("10.0.0.1")).unwrap();
        // Three connections from it: past that, its source cap.
        drop((h2, h3));
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Refusal::SourceCap);
        // IPv4-mapped IPv6 is the same source.
        assert_eq!(
            g.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            Refusal::SourceCap
        );
        // Other sources are not affected, up to the port's cap.
        let (c4, h4) = g.admit(ip("10.0.0.2")).unwrap();
        let (c5, h5) = g.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(open(), 5);
        assert_eq!(g.admit(ip("10.0.0.3")).unwrap_err(), Refusal::PortCap);
        assert_eq!(g.held(), (5, 2, 3));
        drop((h4, h5));
        // The whole /64 is one source.
        drop(c4);
        let (c6, h6) = g.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(g.held().2, 2, "10.0.0.1 and 2001:db8::/64");
        drop((c1, c2, c3, c5, c6, h6));
        assert_eq!(g.held(), (0, 0, 0), "every place given back, no entry left");
        assert_eq!(open(), 0);
        assert_eq!(refused(Refusal::HandshakeCap), 1);
        assert_eq!(refused(Refusal::SourceCap), 2);
        assert_eq!(refused(Refusal::PortCap), 1);
    }

    #[test]
    fn the_port_handshake_cap() {
        let caps = Caps {
            connections: 100,
            per_source: 0,
            handshakes: 2,
            handshakes_per_source: 100,
        };
        let g = Gate::new(Port::Http, caps, shared());
        let a = g.admit(ip("10.0.0.1")).unwrap();
        let _b = g.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(g.admit(ip("10.0.0.3")).unwrap_err(), Refusal::HandshakeCap);
        drop(a.1);
        // per_source 0: no cap per source.
        let many: Vec<_> = (0..50)
            .map(|_| {
                let (c, h) = g.admit(ip("10.0.0.9")).unwrap();
                drop(h);
                c
            })
            .collect();
        assert_eq!(g.held().0, 52);
        drop(many);
    }

    #[test]
    fn keepalive_is_set_on_the_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let r = socket2::SockRef::from(&s);
        set_keepalive(&r, Duration::ZERO).unwrap();
        assert!(!r.keepalive().unwrap(), "ZERO leaves it off");
        set_keepalive(&r, Duration::from_secs(60)).unwrap();
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(r.tcp_keepalive_retries().unwrap(), 6);
        // Below the kernel's one-second unit: one second.
        set_keepalive(&r, Duration::from_millis(300)).unwrap();
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(1));
    }
}
