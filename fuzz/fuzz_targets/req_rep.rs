//! REQ and REP connected back to back through their state machines, with
//! random interleavings of sends, receives, deliveries, answers, lost
//! connections and time; every reply must reach its own request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_fuzz::LinkInput;

fuzz_target!(|input: LinkInput| input.run());
