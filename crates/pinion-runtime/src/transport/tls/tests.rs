//! Handshakes between configurations built here, over in-memory pipes,
//! with certificates made for each test (rcgen, ECDSA P-256, SANs): no
//! private key is committed.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// A CA that signs leaves.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

fn ca(name: &str) -> Ca {
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

fn leaf(ca: &Ca, cn: &str, dns: &[&str], expired: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
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

type Side = Result<(), std::io::Error>;

/// The TLS error inside an I/O error, if that is what it is.
fn tls(r: Side) -> Option<rustls::Error> {
    let e = r.err()?;
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

fn cert_error(r: Side) -> Option<rustls::CertificateError> {
    match tls(r)? {
        rustls::Error::InvalidCertificate(c) => Some(c),
        _ => None,
    }
}

/// Runs one handshake (and one byte each way) between a dialer and a
/// listener; the outcome on each side.
async fn handshake(client: &TlsConfig, server: &TlsConfig, name: &str) -> (Side, Side) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(client.client_config().unwrap());
    let acceptor = TlsAcceptor::from(server.server_config().unwrap());
    let sn = client.server_name_for(name).unwrap();
    let cl = async move {
        let mut t = connector.connect(sn, c).await?;
        t.write_all(b"c").await?;
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await?;
        Ok(())
    };
    let sv = async move {
        let mut t = acceptor.accept(s).await?;
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await?;
        t.write_all(b"s").await?;
        t.flush().await?;
        Ok(())
    };
    tokio::join!(cl, sv)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn server(leaf: &Leaf) -> TlsConfig {
    TlsConfig::new()
        .own_cert_pem(leaf.cert.as_bytes(), leaf.key.as_bytes())
        .unwrap()
}

#[test]
fn a_dialer_verifies_the_server_against_its_ca() {
    let ca = ca("pinion test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let client = TlsConfig::new().ca_pem(ca.pem.as_bytes()).unwrap();
    let (c, s) = rt().block_on(handshake(&client, &server(&srv), "localhost"));
    c.unwrap();
    s.unwrap();
    // An IP literal as the host: checked against the IP SAN.
    let (c, _) = rt().block_on(handshake(&client, &server(&srv), "127.0.0.1"));
    c.unwrap();
}

#[test]
fn wrong_ca_hostname_mismatch_and_expiry_are_refused() {
    let ca1 = ca("pinion test CA");
    let other = ca("another CA");
    let srv = leaf(&ca1, "server", &["localhost"], false);
    let trusts_other = TlsConfig::new().ca_pem(other.pem.as_bytes()).unwrap();
    let (c, s) = rt().block_on(handshake(&trusts_other, &server(&srv), "localhost"));
    assert_eq!(cert_error(c), Some(rustls::CertificateError::UnknownIssuer));
    assert!(s.is_err(), "the server sees the dialer give up");

    let client = TlsConfig::new().ca_pem(ca1.pem.as_bytes()).unwrap();
    let (c, _) = rt().block_on(handshake(&client, &server(&srv), "elsewhere.example"));
    assert!(
        matches!(
            cert_error(c),
            Some(rustls::CertificateError::NotValidForNameContext { .. })
        ),
        "hostname mismatch"
    );
    // The configured server name wins over the URL's host.
    let named = client.clone().server_name("localhost");
    let (c, _) = rt().block_on(handshake(&named, &server(&srv), "elsewhere.example"));
    c.unwrap();

    let old = leaf(&ca1, "server", &["localhost"], true);
    let (c, _) = rt().block_on(handshake(&client, &server(&old), "localhost"));
    assert!(
        matches!(
            cert_error(c),
            Some(rustls::CertificateError::ExpiredContext { .. })
        ),
        "expired"
    );
}

#[test]
fn insecure_dialers_accept_any_server() {
    let ca1 = ca("pinion test CA");
    let srv = leaf(&ca1, "server", &["localhost"], true);
    let client = TlsConfig::new().insecure(true);
    let (c, s) = rt().block_on(handshake(&client, &server(&srv), "elsewhere.example"));
    c.unwrap();
    s.unwrap();
}

#[test]
fn client_certificates_by_auth_mode() {
    let ca1 = ca("pinion test CA");
    let srv = leaf(&ca1, "server", &["localhost"], false);
    let cli = leaf(&ca1, "client-7", &["client-7.example"], false);
    let stranger_ca = ca("stranger CA");
    let stranger = leaf(&stranger_ca, "stranger", &["stranger.example"], false);
    let listener = |mode| {
        server(&srv)
            .ca_pem(ca1.pem.as_bytes())
            .unwrap()
            .auth_mode(mode)
    };
    let anonymous = TlsConfig::new().ca_pem(ca1.pem.as_bytes()).unwrap();
    let with = |l: &Leaf| {
        anonymous
            .clone()
            .own_cert_pem(l.cert.as_bytes(), l.key.as_bytes())
            .unwrap()
    };
    let r = rt();
    // Required: no certificate, or one from another CA, is refused.
    let ok = |(c, s): (Side, Side)| {
        c.unwrap();
        s.unwrap();
    };
    let (_, s) = r.block_on(handshake(
        &anonymous,
        &listener(AuthMode::Required),
        "localhost",
    ));
    assert_eq!(tls(s), Some(rustls::Error::NoCertificatesPresented));
    let (_, s) = r.block_on(handshake(
        &with(&stranger),
        &listener(AuthMode::Required),
        "localhost",
    ));
    assert_eq!(cert_error(s), Some(rustls::CertificateError::UnknownIssuer));
    ok(r.block_on(handshake(
        &with(&cli),
        &listener(AuthMode::Required),
        "localhost",
    )));
    // Optional: none is fine, a bad one is not.
    ok(r.block_on(handshake(
        &anonymous,
        &listener(AuthMode::Optional),
        "localhost",
    )));
    let (_, s) = r.block_on(handshake(
        &with(&stranger),
        &listener(AuthMode::Optional),
        "localhost",
    ));
    assert_eq!(cert_error(s), Some(rustls::CertificateError::UnknownIssuer));
    // None (a listener's default): a client certificate is not asked for.
    ok(r.block_on(handshake(&with(&stranger), &server(&srv), "localhost")));
}

#[test]
fn configuration_mistakes_are_typed() {
    assert!(matches!(
        TlsConfig::new().ca_pem(b"not pem"),
        Err(TlsConfigError::Pem { what: "CA", .. })
    ));
    assert!(matches!(
        TlsConfig::new().server_config(),
        Err(TlsConfigError::NoOwnCertificate)
    ));
    let ca1 = ca("pinion test CA");
    let srv = leaf(&ca1, "server", &["localhost"], false);
    assert!(matches!(
        server(&srv).auth_mode(AuthMode::Required).server_config(),
        Err(TlsConfigError::NoClientCa(AuthMode::Required))
    ));
    // A key that is not the certificate's.
    let other = leaf(&ca1, "other", &["localhost"], false);
    let mismatched = TlsConfig::new()
        .own_cert_pem(srv.cert.as_bytes(), other.key.as_bytes())
        .unwrap();
    assert!(matches!(
        mismatched.server_config(),
        Err(TlsConfigError::Rustls(_))
    ));
    assert!(matches!(
        TlsConfig::new().ca_file("/nonexistent/ca.pem"),
        Err(TlsConfigError::Read { .. })
    ));
    assert!(matches!(
        TlsConfig::new().server_name_for("not a name"),
        Err(TlsConfigError::ServerName(_))
    ));
}

/// `TlsIo` over real loopback TCP, the server side pinion's: a client that
/// sends data and closes the TCP stream without a close_notify (as NNG
/// does) is an ordinary end of stream after its data, not an error; a
/// large write arrives whole, in order, through partial writes and the
/// 32 KiB reads.
#[test]
fn tls_io_reads_everything_then_an_ordinary_end_of_stream() {
    let ca = ca("pinion test CA");
    let srv = leaf(&ca, "server", &["localhost"], false);
    let client = TlsConfig::new().ca_pem(ca.pem.as_bytes()).unwrap();
    rt().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let cl = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connector = TlsConnector::from(client.client_config().unwrap());
            let name = client.server_name_for("localhost").unwrap();
            let mut t = connector.connect(name, tcp).await.unwrap();
            t.write_all(&sent).await.unwrap();
            t.flush().await.unwrap();
            // Drop the TCP stream itself: no close_notify.
            let (tcp, _) = t.into_inner();
            drop(tcp);
        };
        let sv = async move {
            let (tcp, _) = l.accept().await.unwrap();
            let conn = TlsConn {
                tcp,
                role: server(&srv).listener_role().unwrap(),
            };
            let (io, peer) = conn.handshake().await.unwrap();
            assert!(peer.is_none(), "no client certificate asked for");
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                io.readable().await.unwrap();
                match io.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
                }
            }
            got
        };
        let ((), got) = tokio::join!(cl, sv);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "bytes changed in transit");
    });
}
