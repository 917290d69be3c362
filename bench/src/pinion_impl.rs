//! pinion, through its public facade crate `pinion`.
//!
//! The facade is not in the workspace yet, so this module is a stub that fails
//! clearly; no figure is ever reported for it until the real implementation
//! below is wired in.

use anyhow::{bail, Result};

use crate::common::{LatProto, LatSample, ThrSample};

pub const NOT_AVAILABLE: &str = "pinion facade not available yet";

/// `Ok(())` when pinion can be measured in this build.
pub fn available() -> Result<()> {
    bail!(NOT_AVAILABLE)
}

pub fn throughput(_size: usize, _count: u64) -> Result<ThrSample> {
    bail!(NOT_AVAILABLE)
}

pub fn latency(_proto: LatProto, _size: usize, _roundtrips: u64) -> Result<LatSample> {
    bail!(NOT_AVAILABLE)
}
