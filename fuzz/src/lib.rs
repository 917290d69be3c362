//! Inputs for the pinion-core fuzz targets.
//!
//! The operation-sequence drivers and their invariants are the ones the
//! proptest suite runs (`crates/pinion-core/tests/common/driver.rs`,
//! included here as [`driver`]); this crate only adds `Arbitrary` inputs that
//! turn into the drivers' steps.

use std::time::Duration;

use arbitrary::Arbitrary;
use pinion_core::protocol::ProtocolKind;

#[path = "../../crates/pinion-core/tests/common/driver.rs"]
pub mod driver;

use driver::{Harness, Link, LinkStep, Step};

/// Longest sequence a target runs, to keep each input fast.
pub const MAX_STEPS: usize = 1024;

/// One operation on a pattern state machine (mirrors [`driver::Step`]).
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzStep {
    AddPipe { pipe: u8, peer: Option<u16>, credits: u8 },
    RemovePipe { pipe: u8 },
    Credit { pipe: u8, n: u8 },
    Message { pipe: u8, split: u8, data: Vec<u8> },
    Echo { pipe: u8, shape: u8, tail: Vec<u8> },
    Send { route: u8, data: Vec<u8> },
    StartSend { ctx: u8, deadline: Option<u16> },
    StartRecv { ctx: u8, deadline: Option<u16> },
    CancelOp { which: u8 },
    OpenCtx,
    CloseCtx { which: u8 },
    Advance { ms: u16 },
}

impl From<FuzzStep> for Step {
    fn from(s: FuzzStep) -> Step {
        match s {
            FuzzStep::AddPipe { pipe, peer, credits } => Step::AddPipe {
                pipe,
                peer,
                // Small write queues reach "no credit" often.
                credits: credits % 8,
            },
            FuzzStep::RemovePipe { pipe } => Step::RemovePipe { pipe },
            FuzzStep::Credit { pipe, n } => Step::Credit { pipe, n },
            FuzzStep::Message { pipe, split, data } => Step::Message { pipe, split, data },
            FuzzStep::Echo { pipe, shape, tail } => Step::Echo { pipe, shape, tail },
            FuzzStep::Send { route, data } => Step::Send { route, data },
            FuzzStep::StartSend { ctx, deadline } => Step::StartSend { ctx, deadline },
            FuzzStep::StartRecv { ctx, deadline } => Step::StartRecv { ctx, deadline },
            FuzzStep::CancelOp { which } => Step::CancelOp { which },
            FuzzStep::OpenCtx => Step::OpenCtx,
            FuzzStep::CloseCtx { which } => Step::CloseCtx { which },
            FuzzStep::Advance { ms } => Step::Advance { ms },
        }
    }
}

/// A pattern target's input.
#[derive(Debug, Clone, Arbitrary)]
pub struct PatternInput {
    /// REQ resend time in ms (`None` or 0: off).
    pub resend_ms: Option<u16>,
    pub seed: u64,
    pub steps: Vec<FuzzStep>,
}

impl PatternInput {
    /// Runs the steps on a fresh `kind` through the checking harness.
    pub fn run(self, kind: ProtocolKind) {
        let steps: Vec<Step> = self.steps.into_iter().take(MAX_STEPS).map(Step::from).collect();
        let resend = self.resend_ms.map(|ms| Duration::from_millis(u64::from(ms)));
        Harness::run(kind, resend, self.seed, &steps);
    }
}

/// One step of REQ and REP back to back (mirrors [`driver::LinkStep`]).
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzLinkStep {
    Connect { req_credits: u8, rep_credits: u8 },
    Disconnect { which: u8 },
    Send { ctx: u8 },
    Recv { ctx: u8, deadline: Option<u16> },
    Cancel { which: u8 },
    OpenCtx,
    CloseCtx { which: u8 },
    ToRep { which: u8 },
    ToReq { which: u8 },
    Answer { which: u8 },
    Forget { which: u8 },
    Advance { ms: u16 },
}

impl From<FuzzLinkStep> for LinkStep {
    fn from(s: FuzzLinkStep) -> LinkStep {
        match s {
            FuzzLinkStep::Connect {
                req_credits,
                rep_credits,
            } => LinkStep::Connect {
                req_credits,
                rep_credits,
            },
            FuzzLinkStep::Disconnect { which } => LinkStep::Disconnect { which },
            FuzzLinkStep::Send { ctx } => LinkStep::Send { ctx },
            FuzzLinkStep::Recv { ctx, deadline } => LinkStep::Recv { ctx, deadline },
            FuzzLinkStep::Cancel { which } => LinkStep::Cancel { which },
            FuzzLinkStep::OpenCtx => LinkStep::OpenCtx,
            FuzzLinkStep::CloseCtx { which } => LinkStep::CloseCtx { which },
            FuzzLinkStep::ToRep { which } => LinkStep::ToRep { which },
            FuzzLinkStep::ToReq { which } => LinkStep::ToReq { which },
            FuzzLinkStep::Answer { which } => LinkStep::Answer { which },
            FuzzLinkStep::Forget { which } => LinkStep::Forget { which },
            FuzzLinkStep::Advance { ms } => LinkStep::Advance { ms },
        }
    }
}

/// The REQ/REP back-to-back target's input.
#[derive(Debug, Clone, Arbitrary)]
pub struct LinkInput {
    /// Resend time in ms (1 + this).
    pub resend_ms: u16,
    pub seed: u64,
    pub steps: Vec<FuzzLinkStep>,
}

impl LinkInput {
    /// Runs the steps, then lets everything outstanding be answered.
    pub fn run(self) {
        let steps: Vec<LinkStep> = self.steps.into_iter().take(MAX_STEPS).map(LinkStep::from).collect();
        let resend = Duration::from_millis(1 + u64::from(self.resend_ms));
        Link::run(resend, self.seed, &steps);
    }
}
