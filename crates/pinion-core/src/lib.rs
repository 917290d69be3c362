//! Sans-IO core of pinion.
//!
//! This crate holds everything about the Scalability Protocols (SP) that can be
//! decided without touching the operating system:
//!
//! * [`wire`]: the SP connection header and the stream framings of the TCP and
//!   IPC mappings, as pure encoders and incremental decoders;
//! * [`protocol`]: one state machine per messaging pattern (req0, rep0, push0,
//!   pull0, pair0, pair1, pub0, sub0, surveyor0, respondent0, bus0), all
//!   behind the [`protocol::Protocol`] trait;
//! * [`Message`], the unit the patterns exchange, and the typed errors.
//!
//! Nothing here opens a socket, spawns a thread or reads the clock: time is an
//! argument (`now: Instant`), randomness comes from a seed in the options, and
//! every output is pulled by the driver with a `poll_*` method. The runtime
//! crate (`pinion-runtime`) is the driver; tests drive the same machines
//! deterministically.
//!
//! # Example: a push socket with one peer pipe
//!
//! ```
//! use std::time::Instant;
//! use pinion_core::{Message, protocol::{self, CtxId, Output, PipeId, Protocol, ProtocolKind}};
//!
//! let now = Instant::now();
//! let mut push = protocol::new(ProtocolKind::Push0, &Default::default());
//! push.add_pipe(PipeId(1), ProtocolKind::Pull0.id(), 4, now).unwrap();
//! assert!(push.can_send());
//! push.handle_send(CtxId::SOCKET, Message::from_body("hello"), now).unwrap();
//! match push.poll_output() {
//!     Some(Output::Transmit { pipe, msg }) => {
//!         assert_eq!(pipe, PipeId(1));
//!         assert_eq!(&msg.body[..], b"hello");
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod error;
pub mod message;
pub mod options;
pub mod protocol;
pub mod rng;
pub mod wire;

pub use error::{CallerError, OpError, PeerError, TlsFault, UpgradeFault, WsViolation};
pub use message::{Header, Message};
pub use options::Options;
