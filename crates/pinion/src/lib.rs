//! pinion: Scalability Protocols sockets, wire-compatible with NNG and
//! nanomsg, on a thread-per-core runtime.
//!
//! A [`Socket`] speaks one pattern ([`Protocol`]): request/reply, push/pull
//! or pair (v0 and v1). It listens and dials on `tcp://`, `ipc://`,
//! `inproc://`, `ws://` and, with TLS ([`TlsConfig`]), `tls+tcp://` and
//! `wss://` endpoints, any number of each, and talks to NNG, nanomsg,
//! mangos or pynng peers on the other end.
//!
//! The API is async and works inside any async runtime (tokio, async-std,
//! smol, or none): the I/O happens on pinion's own pinned core threads, and
//! the futures only wait on channels. [`blocking`] wraps the same sockets for
//! plain threads.
//!
//! Clients of pinion's hub (`pinion serve`): [`publisher::Publisher`]
//! (pipelined, idempotent retries) and [`subscriber::Subscriber`] (over the
//! hub's WebSocket `/sub`, given one or several nodes of a cluster: moves
//! to another node when its own goes away and resumes from the next
//! offset, with no gap and no duplicate).
//!
//! # Example: request/reply
//!
//! ```
//! # fn main() -> Result<(), pinion::Error> {
//! use pinion::{blocking::Socket, Protocol};
//!
//! let rep = Socket::new(Protocol::Rep0)?;
//! let url = rep.listen("tcp://127.0.0.1:0")?.url().to_string();
//!
//! let req = Socket::new(Protocol::Req0)?;
//! req.dial(&url)?;
//!
//! req.send("ping")?;
//! let request = rep.recv()?;
//! assert_eq!(&request[..], b"ping");
//! rep.send("pong")?;
//! assert_eq!(&req.recv()?[..], b"pong");
//! # Ok(()) }
//! ```
//!
//! # Example: async push/pull inside tokio
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), pinion::Error> {
//! use pinion::{Protocol, Socket};
//!
//! let pull = Socket::new(Protocol::Pull0)?;
//! pull.listen("inproc://jobs").await?;
//! let push = Socket::new(Protocol::Push0)?;
//! push.dial("inproc://jobs").await?;
//! for i in 0..3u8 {
//!     push.send(vec![i]).await?;
//! }
//! for i in 0..3u8 {
//!     assert_eq!(pull.recv().await?[..], [i]);
//! }
//! # Ok(()) }
//! ```
//!
//! # Example: request/reply over TLS, with client certificates
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pinion::{blocking::Socket, AuthMode, Protocol, TlsConfig};
//! # let ca = rcgen::KeyPair::generate()?;
//! # let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
//! # p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
//! # let ca = rcgen::CertifiedIssuer::self_signed(p, ca)?;
//! # let leaf = |name: &str| -> Result<(String, String), rcgen::Error> {
//! #     let key = rcgen::KeyPair::generate()?;
//! #     let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
//! #     p.distinguished_name.push(rcgen::DnType::CommonName, name);
//! #     Ok((p.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
//! # };
//! # let (ca_pem, (server_cert, server_key), (client_cert, client_key)) =
//! #     (ca.pem(), leaf("localhost")?, leaf("alice")?);
//! // PEM strings here; files work too (`ca_file`, `own_cert_files`).
//! let rep = Socket::new(Protocol::Rep0)?;
//! rep.set_tls(
//!     TlsConfig::new()
//!         .own_cert_pem(server_cert.as_bytes(), server_key.as_bytes())?
//!         .ca_pem(ca_pem.as_bytes())?
//!         .auth_mode(AuthMode::Required),
//! );
//! let port = rep.listen("tls+tcp://127.0.0.1:0")?.port().unwrap();
//!
//! let req = Socket::new(Protocol::Req0)?;
//! req.set_tls(
//!     TlsConfig::new()
//!         .ca_pem(ca_pem.as_bytes())?
//!         .own_cert_pem(client_cert.as_bytes(), client_key.as_bytes())?,
//! );
//! // The server's certificate is checked against the URL's host.
//! req.dial(&format!("tls+tcp://localhost:{port}"))?;
//!
//! req.send("ping")?;
//! let request = rep.recv_msg()?;
//! // Who sent it, as the client certificate says.
//! let who = rep.peer_identity(request.pipe().unwrap()).unwrap();
//! assert_eq!(who.common_name.as_deref(), Some("alice"));
//! rep.send("pong")?;
//! assert_eq!(&req.recv()?[..], b"pong");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod blocking;
mod device;
pub mod publisher;
mod socket;
pub mod subscriber;

pub use bytes::Bytes;
pub use device::device;
pub use pinion_core::protocol::PipeId;
pub use pinion_core::protocol::ProtocolKind as Protocol;
pub use pinion_core::{
    CallerError, Header, Message, OpError, Options, PeerError, TlsFault, UpgradeFault, WsViolation,
};
pub use pinion_runtime::error::UrlError;
pub use pinion_runtime::socket::{Adopted, Endpoint};
pub use pinion_runtime::stats::StatsSnapshot;
pub use pinion_runtime::transport::tls::{
    AuthMode, PeerIdentity, TlsConfig, TlsConfigError, TlsRole,
};
pub use pinion_runtime::{Error, Fault, Runtime, RuntimeBuilder, Url};
pub use socket::{Context, Socket};

/// Result with pinion's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
