//! TLS input as pinion's `tls+tcp://`/`wss://` listener and dialer see it:
//! arbitrary bytes from the peer, cut into arbitrary reads, into rustls
//! connections built from pinion's own configurations (auth mode optional,
//! so the client-certificate path is reachable); then the identity parser
//! (`PeerIdentity::from_der`) and the plain port's ClientHello detection
//! on the same bytes. Nothing may panic, and a connection must end in an
//! error or keep its buffers bounded.
#![no_main]

use std::io::Read;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pinion_runtime::transport::tls::{AuthMode, PeerIdentity, TlsConfig};

struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn configs() -> &'static Configs {
    static C: OnceLock<Configs> = OnceLock::new();
    C.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(p, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let cfg = TlsConfig::new()
            .ca_pem(ca.pem().as_bytes())
            .unwrap()
            .own_cert_pem(leaf.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
        Configs {
            server: cfg.clone().auth_mode(AuthMode::Optional).server_config().unwrap(),
            client: cfg.client_config().unwrap(),
        }
    })
}

fn feed(conn: &mut rustls::Connection, data: &[u8], cut: usize) {
    let mut plain = [0u8; 4096];
    for chunk in data.chunks(cut.max(1)) {
        let mut input = chunk;
        while !input.is_empty() {
            match conn.read_tls(&mut input) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if conn.process_new_packets().is_err() {
                // The alert rustls queued for the peer.
                let mut out = Vec::new();
                let _ = conn.write_tls(&mut out);
                return;
            }
            while let Ok(n) = conn.reader().read(&mut plain) {
                if n == 0 {
                    break;
                }
            }
            let mut out = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let c = configs();
    let cut = data.first().map_or(1, |b| usize::from(*b) * 7 + 1);
    let body = data.get(1..).unwrap_or(&[]);
    let mut server: rustls::Connection = rustls::ServerConnection::new(c.server.clone())
        .unwrap()
        .into();
    feed(&mut server, body, cut);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut client: rustls::Connection = rustls::ClientConnection::new(c.client.clone(), name)
        .unwrap()
        .into();
    feed(&mut client, body, cut);
    let _ = PeerIdentity::from_der(body, false);
    if let Ok(h) = <[u8; 8]>::try_from(&body[..body.len().min(8)]) {
        let _ = pinion_core::wire::decode_header(&h);
    }
});
