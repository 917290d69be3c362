//! Random operation sequences on the raw REQ / raw SURVEYOR state machine
//! (`xreq0`); the invariants are checked by `xreq0::check_sequence`, which
//! the normal test suite also runs under proptest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_core::protocol::{xreq0, ProtocolKind};

fuzz_target!(|input: (bool, Vec<(u8, u8, Vec<u8>)>)| {
    let (surveyor, ops) = input;
    let kind = if surveyor { ProtocolKind::Surveyor0 } else { ProtocolKind::Req0 };
    xreq0::check_sequence(kind, &ops);
});
