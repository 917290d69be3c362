//! Random operation sequences on the surveyor0 state machine, checked step
//! by step against the model of `SurveyorHarness`; one input in four drives
//! a SURVEYOR and three RESPONDENTs back to back instead (`Link`: every
//! response reaches the survey that asked, never after its deadline). Both
//! drivers are the ones the proptest suite runs
//! (`crates/pinion-core/tests/survey_prop.rs`, included here).
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/pinion-core/tests/survey_prop.rs"]
mod survey_prop;

use survey_prop::survey_driver::{Link, LinkStep, SurveyorHarness, SurveyorStep};

/// Longest sequence an input runs, to keep each input fast.
const MAX_STEPS: usize = 1024;

fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n)?.to_vec())
}

fn deadline(u: &mut Unstructured<'_>) -> Result<Option<u16>> {
    Ok(if u.arbitrary()? {
        Some(u.int_in_range(0..=3000)?)
    } else {
        None
    })
}

fn surveyor_step(u: &mut Unstructured<'_>) -> Result<SurveyorStep> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => SurveyorStep::AddPipe {
            pipe: u.arbitrary()?,
            // Mostly the compatible peer.
            peer: if u.ratio(1, 10)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
            credits: u.arbitrary()?,
        },
        1 => SurveyorStep::RemovePipe {
            pipe: u.arbitrary()?,
        },
        2 => SurveyorStep::Credit {
            pipe: u.arbitrary()?,
            n: u.arbitrary()?,
        },
        3 => SurveyorStep::Garbage {
            pipe: u.arbitrary()?,
            split: u.arbitrary()?,
            data: bytes(u, 16)?,
        },
        4 => SurveyorStep::Respond {
            which: u.arbitrary()?,
            pipe: u.arbitrary()?,
            split: u.arbitrary()?,
            tail: bytes(u, 8)?,
        },
        5 => SurveyorStep::Send {
            ctx: u.arbitrary()?,
            deadline: deadline(u)?,
        },
        6 => SurveyorStep::Recv {
            ctx: u.arbitrary()?,
            deadline: deadline(u)?,
        },
        7 => SurveyorStep::Cancel {
            which: u.arbitrary()?,
        },
        8 => SurveyorStep::OpenCtx,
        9 => SurveyorStep::CloseCtx {
            which: u.arbitrary()?,
        },
        10 => SurveyorStep::HandleSend { data: bytes(u, 4)? },
        _ => SurveyorStep::Advance {
            ms: u.int_in_range(0..=2000)?,
        },
    })
}

fn link_step(u: &mut Unstructured<'_>) -> Result<LinkStep> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => LinkStep::Connect {
            resp: u.arbitrary()?,
            s_credits: u.arbitrary()?,
            r_credits: u.arbitrary()?,
        },
        1 => LinkStep::Disconnect {
            which: u.arbitrary()?,
        },
        2 => LinkStep::Send {
            ctx: u.arbitrary()?,
        },
        3 => LinkStep::Recv {
            ctx: u.arbitrary()?,
            deadline: deadline(u)?,
        },
        4 => LinkStep::Cancel {
            which: u.arbitrary()?,
        },
        5 => LinkStep::OpenCtx,
        6 => LinkStep::CloseCtx {
            which: u.arbitrary()?,
        },
        7 => LinkStep::ToResp {
            which: u.arbitrary()?,
        },
        8 => LinkStep::ToSurv {
            which: u.arbitrary()?,
        },
        9 => LinkStep::Answer {
            which: u.arbitrary()?,
        },
        10 => LinkStep::Forget {
            which: u.arbitrary()?,
        },
        _ => LinkStep::Advance {
            ms: u.int_in_range(0..=1500)?,
        },
    })
}

/// Steps until the input runs out (a step cut short is left out).
fn steps<T>(u: &mut Unstructured<'_>, step: impl Fn(&mut Unstructured<'_>) -> Result<T>) -> Vec<T> {
    let mut v = Vec::new();
    while !u.is_empty() && v.len() < MAX_STEPS {
        match step(u) {
            Ok(s) => v.push(s),
            Err(_) => break,
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(link), Ok(seed), Ok(ms), Ok(buf)) = (
        u.ratio(1u8, 4u8),
        u.arbitrary::<u64>(),
        u.arbitrary::<u16>(),
        u.arbitrary::<u8>(),
    ) else {
        return;
    };
    let survey_ms = 1 + u64::from(ms % 3000);
    if link {
        Link::run(survey_ms, seed, &steps(&mut u, link_step));
    } else {
        let recv_buffer = 1 + usize::from(buf % 4);
        SurveyorHarness::run(survey_ms, recv_buffer, seed, &steps(&mut u, surveyor_step));
    }
});
