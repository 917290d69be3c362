//! Random operation sequences on the sub0 state machine; the invariants are
//! checked by the shared driver (`pinion_fuzz::driver::Harness`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_core::protocol::ProtocolKind;
use pinion_fuzz::PatternInput;

fuzz_target!(|input: PatternInput| input.run(ProtocolKind::Sub0));
