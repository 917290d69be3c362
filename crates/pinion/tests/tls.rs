//! `tls+tcp://` and `wss://` between pinion sockets: traffic, client
//! certificates and the peer identity they give, and every way a TLS
//! connection can fail, each a typed error for that connection alone,
//! counted in the socket's stats, with a connection already up untouched.
//!
//! Certificates are made for each test (rcgen, ECDSA P-256, with SANs); no
//! private key is committed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::{AuthMode, Error, Options, PeerError, Protocol, TlsConfig, TlsFault};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf for `cn`, valid for the DNS names `dns` and 127.0.0.1 (unless
/// `dns` is empty), expired if asked.
fn leaf(ca: &Ca, cn: &str, dns: &[&str], expired: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if !dns.is_empty() {
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn server_cfg(ca: &Ca, leaf: &Leaf) -> TlsConfig {
    TlsConfig::new()
        .own_cert_pem(leaf.cert.as_bytes(), leaf.key.as_bytes())
        .unwrap()
        .ca_pem(ca.pem.as_bytes())
        .unwrap()
}

fn client_cfg(ca: &Ca) -> TlsConfig {
    TlsConfig::new().ca_pem(ca.pem.as_bytes()).unwrap()
}

fn with_cert(cfg: TlsConfig, leaf: &Leaf) -> TlsConfig {
    cfg.own_cert_pem(leaf.cert.as_bytes(), leaf.key.as_bytes())
        .unwrap()
}

fn opts() -> Options {
    Options {
        handshake_timeout: Duration::from_millis(500),
        req_resend: Some(Duration::from_secs(5)),
        ..Options::default()
    }
}

fn socket(p: Protocol) -> Socket {
    let s = Socket::with_options(p, opts()).unwrap();
    s.set_tls(TlsConfig::new()); // replaced by each test
    s
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn round_trip(req: &Socket, rep: &Socket, body: &[u8]) {
    req.send(body.to_vec()).unwrap();
    let got = rep.recv_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "request body changed in transit");
    let mut answer = got.to_vec();
    answer.reverse();
    rep.send(answer.clone()).unwrap();
    let back = req.recv_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(back[..] == answer[..], "reply body changed in transit");
}

/// A body of `n` bytes that is not one byte repeated.
fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[test]
fn req_rep_over_tls_tcp_and_wss_with_large_messages() {
    let ca = new_ca("test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    for scheme in ["tls+tcp://127.0.0.1:0", "wss://127.0.0.1:0/svc"] {
        let rep = socket(Protocol::Rep0);
        rep.set_tls(server_cfg(&ca, &srv));
        let ep = rep.listen(scheme).unwrap();
        let url = ep.url().to_string();
        assert!(
            url.starts_with(&scheme[..scheme.find(':').unwrap()]),
            "{url}"
        );
        let req = socket(Protocol::Req0);
        req.set_tls(client_cfg(&ca));
        // The certificate has 127.0.0.1 as an IP SAN.
        req.dial(&url).unwrap();
        for (i, n) in [0usize, 1, 100, 16 * 1024, 16 * 1024 + 1, 300_000, 1_000_000]
            .into_iter()
            .enumerate()
        {
            round_trip(&req, &rep, &body(n, i as u8));
        }
        let s = rep.stats();
        assert_eq!(s.pipes_added, 1, "{scheme}: {s:?}");
        assert_eq!(s.tls_failures + s.tls_cert_rejected, 0, "{scheme}: {s:?}");
    }
}

#[test]
fn pub_sub_over_tls_keeps_order_under_load() {
    let ca = new_ca("test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    // PUB drops what a pipe's queue cannot take: make it hold the burst,
    // so that every message must arrive, in order.
    let publ = Socket::with_options(
        Protocol::Pub0,
        Options {
            pipe_buffer: 30_000,
            ..opts()
        },
    )
    .unwrap();
    publ.set_tls(server_cfg(&ca, &srv));
    let port = publ
        .listen("tls+tcp://127.0.0.1:0")
        .unwrap()
        .port()
        .unwrap();
    let sub = Socket::with_options(
        Protocol::Sub0,
        Options {
            recv_buffer: 100_000,
            ..opts()
        },
    )
    .unwrap();
    sub.set_tls(client_cfg(&ca));
    sub.subscribe("t").unwrap();
    sub.dial(&format!("tls+tcp://localhost:{port}")).unwrap();
    // Slow joiner: publish until the subscription has arrived.
    wait("the subscription", || {
        publ.send("t-probe").unwrap();
        sub.recv_timeout(Some(Duration::from_millis(20))).is_ok()
    });
    while sub.recv_timeout(Some(Duration::from_millis(50))).is_ok() {}
    let n = 20_000u32;
    for i in 0..n {
        let mut m = b"t".to_vec();
        m.extend_from_slice(&i.to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', (i % 97) as usize));
        publ.send(m).unwrap();
    }
    for i in 0..n {
        let m = sub.recv_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(m[1..5], i.to_be_bytes(), "message {i} out of order");
        assert_eq!(m.len(), 5 + (i % 97) as usize);
    }
    assert_eq!(publ.stats().queue_drops, 0);
}

#[test]
fn client_certificates_give_the_server_the_peer_identity() {
    let ca = new_ca("test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let alice = leaf(&ca, "alice", &["alice.example"], false);
    for (scheme, mode) in [
        ("tls+tcp://127.0.0.1:0", AuthMode::Required),
        ("wss://127.0.0.1:0/id", AuthMode::Optional),
    ] {
        let rep = socket(Protocol::Rep0);
        rep.set_tls(server_cfg(&ca, &srv).auth_mode(mode));
        let url = rep.listen(scheme).unwrap().url().to_string();
        let req = socket(Protocol::Req0);
        req.set_tls(with_cert(client_cfg(&ca), &alice));
        req.dial(&url).unwrap();
        req.send("who am i").unwrap();
        let m = rep.recv_msg().unwrap();
        let pipe = m.pipe().expect("a received message names its pipe");
        let id = rep.peer_identity(pipe).expect("the client's identity");
        assert!(id.verified);
        assert_eq!(id.common_name.as_deref(), Some("alice"), "{scheme}");
        assert_eq!(id.subject, "CN=alice");
        assert_eq!(id.alt_names, ["alice.example", "127.0.0.1"]);
        assert!(!id.certificate.is_empty());
        rep.send("you are alice").unwrap();
        assert_eq!(&req.recv().unwrap()[..], b"you are alice");
    }

    // Optional: a client without a certificate gets in, with no identity.
    let rep = socket(Protocol::Rep0);
    rep.set_tls(server_cfg(&ca, &srv).auth_mode(AuthMode::Optional));
    let url = rep
        .listen("tls+tcp://127.0.0.1:0")
        .unwrap()
        .url()
        .to_string();
    let req = socket(Protocol::Req0);
    req.set_tls(client_cfg(&ca));
    req.dial(&url).unwrap();
    req.send("anonymous").unwrap();
    let m = rep.recv_msg().unwrap();
    assert!(rep.peer_identity(m.pipe().unwrap()).is_none());
    // Plain TCP pipes have none either, but still name their pipe.
    let plain = socket(Protocol::Rep0);
    let purl = plain.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
    let preq = socket(Protocol::Req0);
    preq.dial(&purl).unwrap();
    preq.send("plain").unwrap();
    let m = plain.recv_msg().unwrap();
    assert!(m.pipe().is_some());
    assert!(plain.peer_identity(m.pipe().unwrap()).is_none());
}

/// A listener with one good client connected and answering; the bad
/// connections below must leave it alone.
struct Server {
    rep: Socket,
    url: String,
    good: Socket,
    n: u32,
}

impl Server {
    fn new(ca: &Ca, srv: &Leaf, mode: AuthMode, scheme: &str, client: &Leaf) -> Server {
        let rep = socket(Protocol::Rep0);
        rep.set_tls(server_cfg(ca, srv).auth_mode(mode));
        let url = rep.listen(scheme).unwrap().url().to_string();
        let good = socket(Protocol::Req0);
        good.set_tls(with_cert(client_cfg(ca), client));
        good.dial(&url).unwrap();
        let mut s = Server {
            rep,
            url,
            good,
            n: 0,
        };
        s.still_serves();
        s
    }

    /// The good client still gets answers, on the pipe it had.
    fn still_serves(&mut self) {
        self.n += 1;
        round_trip(&self.good, &self.rep, format!("good {}", self.n).as_bytes());
        assert_eq!(
            self.rep.stats().pipes_added,
            1,
            "the good pipe was replaced"
        );
    }
}

fn dial_err(cfg: TlsConfig, url: &str) -> Error {
    let req = socket(Protocol::Req0);
    req.set_tls(cfg);
    match req.dial(url) {
        Ok(_) => panic!("dial {url} succeeded"),
        Err(e) => {
            // Counted in the dialer's stats too.
            let s = req.stats();
            assert_eq!(s.dial_failures, 1, "{s:?}");
            e
        }
    }
}

fn tls_fault(e: &Error) -> TlsFault {
    match e {
        Error::Peer(PeerError::Tls(f)) => *f,
        e => panic!("expected a TLS fault, got {e:?}"),
    }
}

#[test]
fn certificate_failures_are_typed_counted_and_touch_no_one_else() {
    let ca = new_ca("test CA");
    let other = new_ca("another CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let good = leaf(&ca, "good", &["good.example"], false);
    for scheme in ["tls+tcp://127.0.0.1:0", "wss://127.0.0.1:0/x"] {
        let mut s = Server::new(&ca, &srv, AuthMode::Required, scheme, &good);
        let localhost = s.url.replace("127.0.0.1", "localhost");

        // A dialer that trusts another CA.
        let e = dial_err(with_cert(client_cfg(&other), &good), &s.url);
        assert_eq!(tls_fault(&e), TlsFault::UnknownIssuer, "{scheme}");
        // The listener was refused with alert 48 (unknown_ca).
        wait("the listener counts the refusal", || {
            s.rep.stats().tls_failures == 1
        });
        s.still_serves();

        // A name the certificate does not carry.
        let e = dial_err(
            with_cert(client_cfg(&ca), &good).server_name("elsewhere.example"),
            &localhost,
        );
        assert_eq!(tls_fault(&e), TlsFault::NameMismatch, "{scheme}");
        wait("second refusal", || s.rep.stats().tls_failures == 2);
        s.still_serves();

        // A client certificate from an unknown CA: the listener refuses it.
        let stranger = leaf(&other, "mallory", &["mallory.example"], false);
        let e = dial_err(with_cert(client_cfg(&ca), &stranger), &localhost);
        // TLS 1.3: the client learns it from the server's alert 48.
        assert_eq!(tls_fault(&e), TlsFault::PeerAlert(48), "{scheme}");
        wait("the listener refuses mallory", || {
            s.rep.stats().tls_cert_rejected == 1
        });
        s.still_serves();

        // No client certificate where one is required: alert 116
        // (certificate_required).
        let e = dial_err(client_cfg(&ca), &localhost);
        assert_eq!(tls_fault(&e), TlsFault::PeerAlert(116), "{scheme}");
        wait("the listener refuses the anonymous client", || {
            s.rep.stats().tls_cert_rejected == 2
        });
        s.still_serves();

        // An expired client certificate.
        let old = leaf(&ca, "old", &["old.example"], true);
        let e = dial_err(with_cert(client_cfg(&ca), &old), &localhost);
        assert_eq!(tls_fault(&e), TlsFault::PeerAlert(45), "{scheme}");
        wait("the listener refuses the expired client", || {
            s.rep.stats().tls_cert_rejected == 3
        });
        s.still_serves();
        let st = s.rep.stats();
        assert_eq!(
            st.handshake_timeouts + st.malformed + st.rejected_header,
            0,
            "{st:?}"
        );
    }
}

#[test]
fn an_expired_server_certificate_is_refused_by_the_dialer() {
    let ca = new_ca("test CA");
    let old = leaf(&ca, "server", &["localhost"], true);
    let rep = socket(Protocol::Rep0);
    rep.set_tls(server_cfg(&ca, &old));
    let url = rep
        .listen("tls+tcp://127.0.0.1:0")
        .unwrap()
        .url()
        .to_string();
    let e = dial_err(client_cfg(&ca), &url);
    assert_eq!(tls_fault(&e), TlsFault::Expired);
    wait("alert 45 at the listener", || rep.stats().tls_failures == 1);
    // An insecure dialer (nngcat's -k) does connect, and knows the
    // identity it was shown is not verified.
    let req = socket(Protocol::Req0);
    req.set_tls(TlsConfig::new().insecure(true));
    req.dial(&url).unwrap();
    round_trip(&req, &rep, b"encrypted, not authenticated");
}

#[test]
fn plain_and_tls_mixed_up_are_named_and_counted() {
    let ca = new_ca("test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let good = leaf(&ca, "good", &["good.example"], false);
    let mut s = Server::new(&ca, &srv, AuthMode::None, "tls+tcp://127.0.0.1:0", &good);

    // A plain SP client on the TLS port.
    let plain_url = s.url.replace("tls+tcp://", "tcp://");
    let plain = socket(Protocol::Req0);
    assert!(plain.dial(&plain_url).is_err(), "plain dial to a TLS port");
    wait("NotTls at the listener", || s.rep.stats().tls_failures == 1);
    s.still_serves();

    // A TLS client on a plain port.
    let plain_rep = socket(Protocol::Rep0);
    let purl = plain_rep
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .url()
        .to_string();
    let e = dial_err(client_cfg(&ca), &purl.replace("tcp://", "tls+tcp://"));
    assert_eq!(tls_fault(&e), TlsFault::NotTls);
    wait("the plain listener names the ClientHello", || {
        plain_rep.stats().tls_failures == 1
    });
    assert_eq!(plain_rep.stats().rejected_header, 0);

    // The same over WebSocket: wss to a ws listener.
    let ws_rep = socket(Protocol::Rep0);
    let wurl = ws_rep
        .listen("ws://127.0.0.1:0/w")
        .unwrap()
        .url()
        .to_string();
    let e = dial_err(client_cfg(&ca), &wurl.replace("ws://", "wss://"));
    assert_eq!(tls_fault(&e), TlsFault::NotTls);
    s.still_serves();
}

/// Raw TCP to the TLS port: what a listener does with a peer that opens a
/// handshake and stalls, and with a record header claiming a huge length.
#[test]
fn a_stalled_handshake_and_a_huge_record_are_cut_off() {
    let ca = new_ca("test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let good = leaf(&ca, "good", &["good.example"], false);
    let mut s = Server::new(&ca, &srv, AuthMode::None, "tls+tcp://127.0.0.1:0", &good);
    let addr = s.url.trim_start_matches("tls+tcp://").to_string();

    // Half a ClientHello, then nothing: the handshake timeout (500 ms).
    let mut stall = TcpStream::connect(&addr).unwrap();
    stall
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xf4, 0x01])
        .unwrap();
    let t0 = Instant::now();
    stall
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = stall.read_to_end(&mut sink);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "not cut off: {took:?}");
    wait("the handshake timeout is counted", || {
        s.rep.stats().handshake_timeouts == 1
    });
    s.still_serves();

    // Nothing at all: the same timeout.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = idle.read_to_end(&mut sink);
    wait("second timeout", || s.rep.stats().handshake_timeouts == 2);

    // A record that claims 65,535 bytes: refused from its header.
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).unwrap();
    huge.write_all(&[0u8; 64]).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let _ = huge.read_to_end(&mut got);
    assert!(t0.elapsed() < Duration::from_secs(1), "not closed at once");
    // A fatal alert record went back before the close: 21 (alert), then
    // level 2 (fatal).
    assert!(got.len() >= 7 && got[0] == 21 && got[5] == 2, "{got:?}");
    wait("the oversize record is counted", || {
        s.rep.stats().tls_failures == 1
    });
    s.still_serves();
}

#[test]
fn tls_endpoints_need_tls_settings() {
    let s = Socket::new(Protocol::Rep0).unwrap();
    match s.listen("tls+tcp://127.0.0.1:0") {
        Err(Error::Caller(pinion::CallerError::TlsNotConfigured)) => {}
        other => panic!("{other:?}"),
    }
    // A listener needs a certificate of its own.
    s.set_tls(TlsConfig::new());
    match s.listen("wss://127.0.0.1:0/") {
        Err(Error::TlsConfig(pinion::TlsConfigError::NoOwnCertificate)) => {}
        other => panic!("{other:?}"),
    }
    let r = Socket::new(Protocol::Req0).unwrap();
    match r.dial("tls+tcp://127.0.0.1:1") {
        Err(Error::Caller(pinion::CallerError::TlsNotConfigured)) => {}
        other => panic!("{other:?}"),
    }
    assert!(Error::Caller(pinion::CallerError::TlsNotConfigured).fault() == pinion::Fault::Caller);
}
