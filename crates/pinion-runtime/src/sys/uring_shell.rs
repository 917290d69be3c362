//! The batched sender where io_uring does not exist: never available, so
//! callers always take their other path. Same API as the Linux module.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// Submission queue entries asked for by default.
pub const DEFAULT_ENTRIES: u32 = 1024;

/// io_uring cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// Not Linux.
    #[error("io_uring is unavailable: {0}")]
    Unavailable(#[source] io::Error),
    /// Never produced here.
    #[error("io_uring ring failed: {0}")]
    Broken(#[source] io::Error),
}

/// How the ring was set up (never, here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`.
    DeferTaskrun,
    /// A plain ring.
    Plain,
}

/// Cannot be built on this platform.
#[derive(Debug)]
pub struct BatchSender(());

impl BatchSender {
    /// Always [`UringError::Unavailable`].
    pub fn new(_entries: u32) -> Result<Self, UringError> {
        Err(UringError::Unavailable(io::Error::from(
            io::ErrorKind::Unsupported,
        )))
    }

    /// Unreachable: no value exists.
    pub fn kind(&self) -> RingKind {
        RingKind::Plain
    }

    /// Unreachable: no value exists.
    pub fn sq_entries(&self) -> usize {
        0
    }

    /// Unreachable: no value exists.
    pub fn send_batch(
        &mut self,
        items: &[(BorrowedFd<'_>, &[IoSlice<'_>])],
        results: &mut Vec<io::Result<usize>>,
    ) -> Result<(), UringError> {
        results.clear();
        results.extend(items.iter().map(|_| Err(io::ErrorKind::WouldBlock.into())));
        Err(UringError::Broken(io::ErrorKind::Unsupported.into()))
    }
}
