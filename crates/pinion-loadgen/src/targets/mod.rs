//! One module per target: how to start it and its client codec.

pub(crate) mod cluster;
pub(crate) mod disk;
pub(crate) mod nats;
pub(crate) mod nats_r3;
pub(crate) mod pinion;
pub(crate) mod redis;
