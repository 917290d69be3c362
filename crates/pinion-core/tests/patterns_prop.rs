//! Property tests: random operation sequences on every pattern, and REQ and
//! REP connected back to back through their state machines.
//!
//! The drivers and their invariants live in `common/driver.rs`, shared with
//! the cargo-fuzz targets in `fuzz/`.

#[path = "common/driver.rs"]
mod driver;

use std::time::Duration;

use driver::{Harness, Link, LinkStep, Step};
use pinion_core::protocol::ProtocolKind;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn deadline() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![2 => Just(None), 3 => (0u16..3000).prop_map(Some)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<u8>(), prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)], 0u8..4)
            .prop_map(|(pipe, peer, credits)| Step::AddPipe { pipe, peer, credits }),
        1 => any::<u8>().prop_map(|pipe| Step::RemovePipe { pipe }),
        4 => (any::<u8>(), 0u8..4).prop_map(|(pipe, n)| Step::Credit { pipe, n }),
        2 => (any::<u8>(), 0u8..12, bytes(24)).prop_map(|(pipe, split, data)| Step::Message { pipe, split, data }),
        6 => (any::<u8>(), any::<u8>(), bytes(8)).prop_map(|(pipe, shape, tail)| Step::Echo { pipe, shape, tail }),
        5 => (any::<u8>(), bytes(16)).prop_map(|(route, data)| Step::Send { route, data }),
        5 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| Step::StartSend { ctx, deadline }),
        5 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| Step::StartRecv { ctx, deadline }),
        1 => any::<u8>().prop_map(|which| Step::CancelOp { which }),
        2 => Just(Step::OpenCtx),
        1 => any::<u8>().prop_map(|which| Step::CloseCtx { which }),
        3 => (0u16..2500).prop_map(|ms| Step::Advance { ms }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..150)
}

fn resend() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        Just(None),
        (1u64..3000).prop_map(|ms| Some(Duration::from_millis(ms)))
    ]
}

fn link_step() -> impl Strategy<Value = LinkStep> {
    prop_oneof![
        2 => (any::<u8>(), any::<u8>())
            .prop_map(|(req_credits, rep_credits)| LinkStep::Connect { req_credits, rep_credits }),
        1 => any::<u8>().prop_map(|which| LinkStep::Disconnect { which }),
        5 => any::<u8>().prop_map(|ctx| LinkStep::Send { ctx }),
        5 => (any::<u8>(), deadline()).prop_map(|(ctx, deadline)| LinkStep::Recv { ctx, deadline }),
        1 => any::<u8>().prop_map(|which| LinkStep::Cancel { which }),
        2 => Just(LinkStep::OpenCtx),
        1 => any::<u8>().prop_map(|which| LinkStep::CloseCtx { which }),
        6 => any::<u8>().prop_map(|which| LinkStep::ToRep { which }),
        6 => any::<u8>().prop_map(|which| LinkStep::ToReq { which }),
        5 => any::<u8>().prop_map(|which| LinkStep::Answer { which }),
        1 => any::<u8>().prop_map(|which| LinkStep::Forget { which }),
        2 => (0u16..1500).prop_map(|ms| LinkStep::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pair0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Pair0, None, seed, &steps);
    }

    #[test]
    fn pair1_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Pair1, None, seed, &steps);
    }

    #[test]
    fn push0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Push0, None, seed, &steps);
    }

    #[test]
    fn pull0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Pull0, None, seed, &steps);
    }

    #[test]
    fn req0_sequences(steps in steps(), resend in resend(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Req0, resend, seed, &steps);
    }

    #[test]
    fn rep0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Rep0, None, seed, &steps);
    }

    #[test]
    fn req_rep_back_to_back(
        steps in proptest::collection::vec(link_step(), 0..200),
        resend_ms in 1u64..2000,
        seed in any::<u64>(),
    ) {
        Link::run(Duration::from_millis(resend_ms), seed, &steps);
    }
}

/// The harness is not vacuous: a plain exchange produces every kind of
/// output it checks.
#[test]
fn harness_sees_traffic() {
    let steps = [
        Step::AddPipe {
            pipe: 0,
            peer: None,
            credits: 2,
        },
        Step::StartSend {
            ctx: 0,
            deadline: None,
        },
        Step::StartRecv {
            ctx: 0,
            deadline: None,
        },
        Step::Echo {
            pipe: 0,
            shape: 0,
            tail: vec![],
        },
        Step::OpenCtx,
        Step::StartSend {
            ctx: 1,
            deadline: None,
        },
        Step::StartRecv {
            ctx: 1,
            deadline: Some(10),
        },
        Step::Advance { ms: 20 },
        Step::Message {
            pipe: 0,
            split: 1,
            data: vec![1, 2],
        },
    ];
    let h = Harness::run(ProtocolKind::Req0, Some(Duration::from_secs(1)), 7, &steps);
    assert_eq!(h.transmits, 2);
    assert_eq!(h.completions, 4, "two sends, one reply, one timeout");
    assert_eq!(h.closes, 1, "the short reply closes its pipe");

    let steps = [
        Step::AddPipe {
            pipe: 1,
            peer: None,
            credits: 1,
        },
        Step::Echo {
            pipe: 1,
            shape: 2,
            tail: b"req".to_vec(),
        },
        Step::Send {
            route: 0,
            data: b"reply".to_vec(),
        },
        Step::Echo {
            pipe: 1,
            shape: 9,
            tail: vec![],
        },
    ];
    let h = Harness::run(ProtocolKind::Rep0, None, 7, &steps);
    assert_eq!((h.deliveries, h.transmits), (1, 1));
}

#[test]
fn back_to_back_answers_many_contexts() {
    let mut steps = vec![
        LinkStep::Connect {
            req_credits: 3,
            rep_credits: 3,
        },
        LinkStep::Connect {
            req_credits: 1,
            rep_credits: 0,
        },
    ];
    for c in 0..50u8 {
        steps.push(LinkStep::OpenCtx);
        steps.push(LinkStep::Send { ctx: c });
        steps.push(LinkStep::Recv {
            ctx: c,
            deadline: None,
        });
    }
    steps.push(LinkStep::Disconnect { which: 1 });
    let l = Link::run(Duration::from_millis(100), 3, &steps);
    assert_eq!(l.answered, 50);
}
