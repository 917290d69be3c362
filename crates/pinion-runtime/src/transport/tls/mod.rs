//! TLS for `tls+tcp://` and `wss://`: the configuration, as NNG has it.
//!
//! `tls+tcp://` is a TLS handshake, then the 8-byte SP header and messages
//! exactly as on `tcp://`; `wss://` is a TLS handshake, then `ws://`. The
//! handshake runs in the pipe's task, within the socket's handshake
//! timeout (a peer that starts one and never finishes it is cut off then),
//! and its failures are typed ([`TlsFault`](pinion_core::TlsFault)) and
//! counted in the socket's stats. After it the connection is driven by
//! readiness like a plain one ([`io`]).
//!
//! The settings mirror NNG's `nng_tls_config`:
//!
//! * trust anchors (`ca`): PEM, from memory or a file;
//! * this end's own certificate chain and private key (PEM);
//! * the server name a dialer checks the server's certificate against
//!   (default: the URL's host);
//! * the peer authentication mode, [`AuthMode`]: `None`, `Optional` or
//!   `Required`, with NNG's defaults: none on a listener, required on a
//!   dialer.
//!
//! Where pinion is stricter than NNG: a dialer with no CA given verifies
//! the server against the system's trust anchors instead of accepting
//! anything; only an explicit [`TlsConfig::insecure`] turns verification
//! off (nngcat's `-k`).
//!
//! One crypto provider, rustls's `ring`, is passed to every builder
//! explicitly (two providers in one dependency graph make rustls's default
//! builders panic). TLS 1.3 and 1.2 are offered. A listener sends no TLS
//! 1.3 session tickets: SP connections are long-lived, so resumption buys
//! nothing, and the Mbed TLS that NNG uses has stumbled on unexpected
//! tickets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub mod conn;
pub mod io;
#[cfg(test)]
mod tests;

pub use conn::{PeerIdentity, PortableTls, TlsConn, TlsRole};

/// Whether, and how strictly, an end checks its peer's certificate
/// (NNG's `NNG_TLS_AUTH_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No certificate is asked for (a listener) or checked (a dialer: only
    /// with [`TlsConfig::insecure`]).
    None,
    /// A listener asks for a client certificate and verifies one if sent,
    /// but accepts a client without one.
    Optional,
    /// The peer must present a certificate that verifies.
    Required,
}

/// Why a TLS configuration cannot be built: the caller's settings are at
/// fault (a file that is not there, PEM that holds no certificate, a
/// listener without a certificate of its own, ...).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("TLS: cannot read {what} {path}: {source}")]
    Read {
        /// What the file was to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// PEM input that is malformed, or holds nothing of what was asked for.
    #[error("TLS: {what}: {reason}")]
    Pem {
        /// What the input was to hold.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener needs its own certificate and key.
    #[error("TLS: a listener needs its own certificate and private key")]
    NoOwnCertificate,
    /// Client certificates cannot be verified without trust anchors.
    #[error("TLS: auth mode {0:?} on a listener needs a CA to verify client certificates against")]
    NoClientCa(AuthMode),
    /// A dialer that verifies found no trust anchors (none given, none in
    /// the system's store).
    #[error("TLS: no CA given and no system trust anchors found; give a CA, or turn verification off (insecure)")]
    NoTrustAnchors,
    /// The server name is neither a DNS name nor an IP address.
    #[error("TLS: {0:?} is not a valid server name")]
    ServerName(String),
    /// rustls refused the combination (e.g. a key that does not match the
    /// certificate).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS settings of a dialer or a listener (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    ca: Vec<CertificateDer<'static>>,
    own: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    auth_mode: Option<AuthMode>,
    insecure: bool,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            what,
            reason: "no CERTIFICATE block in it".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsConfigError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// The one crypto provider pinion uses: *ring*.
///
/// rustls 0.23.48 deprecates it for having no post-quantum key exchange.
/// It is kept on purpose: the peers this transport must interoperate with
/// (NNG and pynng on Mbed TLS) offer none either, a post-quantum group
/// offered first only costs them a HelloRetryRequest, and *ring* builds
/// without a C toolchain step (aws-lc-rs needs one).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl TlsConfig {
    /// No CA, no certificate, default server name and auth mode.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Trust anchors from PEM (one or more certificates), added to those
    /// already given.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Pem`] if the PEM is malformed or holds no
    /// certificate.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        self.ca.extend(certs("CA", pem)?);
        Ok(self)
    }

    /// Trust anchors from a PEM file.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Read`], or as [`TlsConfig::ca_pem`].
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<TlsConfig, TlsConfigError> {
        let pem = read("CA file", path.as_ref())?;
        self.ca_pem(&pem)
    }

    /// This end's certificate chain (leaf first) and private key, as PEM.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Pem`] if either is malformed or missing.
    pub fn own_cert_pem(
        mut self,
        cert: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsConfigError> {
        self.own = Some((certs("certificate", cert)?, Arc::new(key(key_pem)?)));
        Ok(self)
    }

    /// This end's certificate chain and key from files; `key` may be the
    /// same file as `cert` (nngcat: `--cert` without `--key`).
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Read`], or as [`TlsConfig::own_cert_pem`].
    pub fn own_cert_files(
        self,
        cert: impl AsRef<Path>,
        key_file: Option<&Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let c = read("certificate file", cert.as_ref())?;
        let k = match key_file {
            Some(k) => read("key file", k)?,
            None => c.clone(),
        };
        self.own_cert_pem(&c, &k)
    }

    /// The name a dialer checks the server's certificate against (default:
    /// the host of the URL it dials).
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = Some(name.into());
        self
    }

    /// The peer authentication mode (default: [`AuthMode::Required`] on a
    /// dialer, [`AuthMode::None`] on a listener).
    pub fn auth_mode(mut self, mode: AuthMode) -> TlsConfig {
        self.auth_mode = Some(mode);
        self
    }

    /// A dialer that accepts any server certificate (nngcat's `-k`): the
    /// connection is encrypted but the server is not authenticated.
    pub fn insecure(mut self, on: bool) -> TlsConfig {
        self.insecure = on;
        self
    }

    /// The server name for a dial to `url_host`: the configured one, or
    /// the host itself (brackets of an IPv6 literal removed).
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::ServerName`] if it is neither a DNS name nor an
    /// IP address.
    pub fn server_name_for(&self, url_host: &str) -> Result<ServerName<'static>, TlsConfigError> {
        let name = self.server_name.clone().unwrap_or_else(|| {
            url_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        ServerName::try_from(name.clone()).map_err(|_| TlsConfigError::ServerName(name))
    }

    fn roots(&self, system: bool) -> Result<RootCertStore, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        if self.ca.is_empty() && system {
            // Certificates the store cannot parse are skipped, as every
            // rustls user of the system store does.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        } else {
            for c in &self.ca {
                roots.add(c.clone())?;
            }
        }
        Ok(roots)
    }

    /// Whether a dialer with these settings verifies the server's
    /// certificate (not [`insecure`](Self::insecure), auth mode not
    /// `None`).
    pub fn verifies_server(&self) -> bool {
        !self.insecure && self.auth_mode != Some(AuthMode::None)
    }

    /// The settings of a dialer to `url_host`, built once per dialer.
    ///
    /// # Errors
    ///
    /// See [`TlsConfigError`].
    pub fn dialer_role(&self, url_host: &str) -> Result<TlsRole, TlsConfigError> {
        Ok(TlsRole::Client {
            config: self.client_config()?,
            name: self.server_name_for(url_host)?,
            verifies: self.verifies_server(),
        })
    }

    /// The settings of a listener, built once per listener.
    ///
    /// # Errors
    ///
    /// See [`TlsConfigError`].
    pub fn listener_role(&self) -> Result<TlsRole, TlsConfigError> {
        Ok(TlsRole::Server {
            config: self.server_config()?,
        })
    }

    /// The rustls configuration of a dialer.
    ///
    /// # Errors
    ///
    /// See [`TlsConfigError`].
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let builder =
            ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
        let mode = self.auth_mode.unwrap_or(AuthMode::Required);
        let builder = if self.insecure || mode == AuthMode::None {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider())))
        } else {
            let roots = self.roots(true)?;
            if roots.is_empty() {
                return Err(TlsConfigError::NoTrustAnchors);
            }
            builder.with_root_certificates(roots)
        };
        let config = match &self.own {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The rustls configuration of a listener.
    ///
    /// # Errors
    ///
    /// See [`TlsConfigError`].
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let Some((chain, key)) = &self.own else {
            return Err(TlsConfigError::NoOwnCertificate);
        };
        let builder =
            ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
        let mode = self.auth_mode.unwrap_or(AuthMode::None);
        let builder = match mode {
            AuthMode::None => builder.with_no_client_auth(),
            AuthMode::Optional | AuthMode::Required => {
                if self.ca.is_empty() {
                    return Err(TlsConfigError::NoClientCa(mode));
                }
                let roots = Arc::new(self.roots(false)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let v = if mode == AuthMode::Optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                let v = v.build().map_err(|e| TlsConfigError::Pem {
                    what: "CA",
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut config = builder.with_single_cert(chain.clone(), key.clone_key())?;
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

/// The verifier of an insecure dialer: every server certificate passes;
/// the handshake signatures are still checked (so the session is bound to
/// the key the server showed).
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why opening a TLS connection failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The peer's fault: a refused certificate, an alert, no TLS, the
    /// handshake timeout.
    Peer(pinion_core::PeerError),
    /// The connection failed under the handshake (reset, end of stream).
    Io(std::io::Error),
}

/// Runs the TLS handshake of `conn`, to finish by `deadline`.
pub(crate) async fn open(
    conn: TlsConn,
    deadline: tokio::time::Instant,
) -> Result<(io::TlsIo, Option<Arc<PeerIdentity>>), OpenError> {
    match tokio::time::timeout_at(deadline, conn.handshake()).await {
        Err(_) => Err(OpenError::Peer(pinion_core::PeerError::HandshakeTimeout)),
        Ok(Ok((tls, peer))) => Ok((tls, peer)),
        Ok(Err(e)) => match io::peer_error(&e) {
            Some(pe) => Err(OpenError::Peer(pe)),
            None => Err(OpenError::Io(e)),
        },
    }
}

/// Counts and reports a failed [`open`]; the pipe's result.
pub(crate) fn failed(
    e: OpenError,
    pipe: pinion_core::protocol::PipeId,
    link: &crate::pipe::PipeLink,
    hs: Option<tokio::sync::oneshot::Sender<Result<(), crate::error::Error>>>,
) -> Option<pinion_core::PeerError> {
    let (r, fault) = match e {
        OpenError::Peer(pe) => {
            link.stats.count_peer_error(&pe);
            tracing::debug!(pipe = pipe.0, error = %pe, "TLS handshake failed");
            (Err(crate::error::Error::Peer(pe)), Some(pe))
        }
        OpenError::Io(e) => {
            link.stats
                .io_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(pipe = pipe.0, error = %e, "TLS handshake failed: I/O");
            (
                Err(crate::error::Error::io("tls handshake", "peer", e)),
                None,
            )
        }
    };
    if let Some(h) = hs {
        let _ = h.send(r);
    }
    fault
}
