//! pinion's runtime: the part that does I/O.
//!
//! * [`Runtime`]: N worker threads, one per allowed CPU by default, each
//!   pinned to its CPU and running its own single-threaded event loop (a tokio
//!   `current_thread` runtime). Nothing is shared between cores but channels.
//! * [`transport`]: `tcp://`, `ipc://` and `inproc://` endpoints.
//! * [`pipe`]: one task per connection, living on one core for its whole life:
//!   SP handshake, framing, a write queue with credits.
//! * [`socket`]: one task per socket on its home core, driving the sans-IO
//!   pattern from `pinion-core` with the inputs from pipes, the application
//!   and timers.
//! * [`sys`]: the only place with platform calls and `unsafe`.
//!
//! Applications use the `pinion` facade crate; this crate is its engine.
#![warn(missing_docs)]
// Platform calls live in `sys`, the one module allowed `unsafe`; every
// block there carries a `// SAFETY:` note (checked by clippy).
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cores;
pub mod error;
pub mod pipe;
pub mod socket;
pub mod stats;
pub mod stream;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;
pub mod url;

pub use cores::{Runtime, RuntimeBuilder};
pub use error::{Error, Fault};
pub use socket::SocketHandle;
pub use stats::Stats;
pub use url::Url;
