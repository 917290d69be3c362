//! Random operation sequences on the respondent0 state machine, checked step
//! by step against the model of `RespondentHarness` (backtrace parsing, TTL,
//! routing, per-pipe backlogs, drop counters). The driver is the one the
//! proptest suite runs (`crates/pinion-core/tests/survey_prop.rs`, included
//! here).
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/pinion-core/tests/survey_prop.rs"]
mod survey_prop;

use survey_prop::survey_driver::{RespondentHarness, RespondentStep};

/// Longest sequence an input runs, to keep each input fast.
const MAX_STEPS: usize = 1024;

fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n)?.to_vec())
}

fn step(u: &mut Unstructured<'_>) -> Result<RespondentStep> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => RespondentStep::AddPipe {
            pipe: u.arbitrary()?,
            // Mostly the compatible peer.
            peer: if u.ratio(1, 10)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
            credits: u.arbitrary()?,
        },
        1 => RespondentStep::RemovePipe {
            pipe: u.arbitrary()?,
        },
        2 => RespondentStep::Credit {
            pipe: u.arbitrary()?,
            n: u.arbitrary()?,
        },
        3 => RespondentStep::Garbage {
            pipe: u.arbitrary()?,
            split: u.arbitrary()?,
            data: bytes(u, 72)?,
        },
        4 => RespondentStep::Survey {
            pipe: u.arbitrary()?,
            hops: u.arbitrary()?,
            split: u.arbitrary()?,
            tail: bytes(u, 8)?,
        },
        5 => RespondentStep::Reply {
            route: u.arbitrary()?,
            data: bytes(u, 16)?,
        },
        6 => RespondentStep::Misuse {
            which: u.arbitrary()?,
        },
        _ => RespondentStep::Advance { ms: u.arbitrary()? },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(ttl), Ok(seed)) = (u.arbitrary::<u8>(), u.arbitrary::<u64>()) else {
        return;
    };
    let mut steps = Vec::new();
    while !u.is_empty() && steps.len() < MAX_STEPS {
        match step(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    RespondentHarness::run(1 + ttl % 15, seed, &steps);
});
