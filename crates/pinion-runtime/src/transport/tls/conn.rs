//! A TLS connection before its handshake: which end it is, with what
//! configuration; the handshake itself; and the peer's verified identity.

use std::io;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;

use super::io::TlsIo;

/// Which end of the handshake a connection is, with the settings for it.
#[derive(Clone)]
pub enum TlsRole {
    /// Dialed: verify the server as `name` (unless the configuration is
    /// insecure).
    Client {
        /// rustls's client settings.
        config: Arc<ClientConfig>,
        /// The name the server's certificate must carry (and the SNI sent,
        /// for a DNS name).
        name: ServerName<'static>,
        /// The server's certificate is verified (not an insecure dialer).
        verifies: bool,
    },
    /// Accepted by a listener.
    Server {
        /// rustls's server settings.
        config: Arc<ServerConfig>,
    },
}

impl std::fmt::Debug for TlsRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsRole::Client { name, .. } => f.debug_struct("Client").field("name", name).finish(),
            TlsRole::Server { .. } => f.write_str("Server"),
        }
    }
}

/// The peer's certificate, as this end verified it (NNG's
/// `NNG_OPT_TLS_VERIFIED`, `NNG_OPT_TLS_PEER_CN` and
/// `NNG_OPT_TLS_PEER_ALT_NAMES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate chain verified against this end's trust anchors.
    /// `false` only for a dialer with [`insecure`](super::TlsConfig::insecure)
    /// set, which checked nothing.
    pub verified: bool,
    /// The subject's distinguished name, RFC 4514 style (`CN=alice,O=Acme`).
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names: DNS names, IP addresses, e-mail
    /// addresses and URIs, as text.
    pub alt_names: Vec<String>,
    /// The end-entity certificate, DER.
    pub certificate: Vec<u8>,
}

impl PeerIdentity {
    /// Reads the identity out of an end-entity certificate. `None` if the
    /// certificate cannot be parsed (it was verified by webpki, so only
    /// for an insecure dialer's unverified peer).
    pub fn from_der(der: &[u8], verified: bool) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject().to_string();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => alt_names.push((*d).to_string()),
                    GeneralName::RFC822Name(m) => alt_names.push((*m).to_string()),
                    GeneralName::URI(u) => alt_names.push((*u).to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => {
                            let a: [u8; 4] = (*ip).try_into().ok()?;
                            alt_names.push(std::net::IpAddr::from(a).to_string());
                        }
                        16 => {
                            let a: [u8; 16] = (*ip).try_into().ok()?;
                            alt_names.push(std::net::IpAddr::from(a).to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(PeerIdentity {
            verified,
            subject,
            common_name,
            alt_names,
            certificate: der.to_vec(),
        })
    }
}

/// A TCP connection before its TLS handshake, movable between cores.
#[derive(Debug)]
pub struct PortableTls {
    /// The connection (non-blocking).
    pub tcp: std::net::TcpStream,
    /// Which end it is.
    pub role: TlsRole,
}

/// A TCP connection before its TLS handshake, registered with a core.
#[derive(Debug)]
pub struct TlsConn {
    /// The connection.
    pub tcp: tokio::net::TcpStream,
    /// Which end it is.
    pub role: TlsRole,
}

impl TlsConn {
    /// Registers a portable connection with the calling core.
    pub fn adopt(p: PortableTls) -> io::Result<TlsConn> {
        Ok(TlsConn {
            tcp: tokio::net::TcpStream::from_std(p.tcp)?,
            role: p.role,
        })
    }

    /// Runs the TLS handshake (no timeout here: the pipe puts one around
    /// it). A TLS failure is an `io::Error` that
    /// [`peer_error`](super::io::peer_error) turns into the peer's fault.
    pub async fn handshake(self) -> io::Result<(TlsIo, Option<Arc<PeerIdentity>>)> {
        match self.role {
            TlsRole::Client {
                config,
                name,
                verifies,
            } => {
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, self.tcp)
                    .await?;
                let (tcp, c) = s.into_inner();
                let peer = c
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|der| PeerIdentity::from_der(der, verifies))
                    .map(Arc::new);
                Ok((TlsIo::new(tcp, c.into()), peer))
            }
            TlsRole::Server { config } => {
                let s = tokio_rustls::TlsAcceptor::from(config)
                    .accept(self.tcp)
                    .await?;
                let (tcp, c) = s.into_inner();
                // A server only ever has a client chain that its verifier
                // accepted.
                let peer = c
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|der| PeerIdentity::from_der(der, true))
                    .map(Arc::new);
                Ok((TlsIo::new(tcp, c.into()), peer))
            }
        }
    }
}
