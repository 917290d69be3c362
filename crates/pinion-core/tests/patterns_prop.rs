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

/// Short topics over a small alphabet, so that they overlap and match.
fn topic() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..4)
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
        3 => (any::<u8>(), topic()).prop_map(|(ctx, topic)| Step::Subscribe { ctx, topic }),
        2 => (any::<u8>(), topic()).prop_map(|(ctx, topic)| Step::Unsubscribe { ctx, topic }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..150)
}

/// Mostly sends, with few pipes changing and some credit: PUB queues fill
/// past their bound and BUS pipes run out of credit.
fn flood_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        2 => (0u8..3, 0u8..3).prop_map(|(pipe, credits)| Step::AddPipe { pipe, peer: None, credits }),
        1 => (0u8..3).prop_map(|pipe| Step::RemovePipe { pipe }),
        3 => (0u8..3, 0u8..8).prop_map(|(pipe, n)| Step::Credit { pipe, n }),
        14 => (any::<u8>(), bytes(4)).prop_map(|(route, data)| Step::Send { route, data }),
        1 => (0u8..3, any::<u8>(), bytes(4)).prop_map(|(pipe, shape, tail)| Step::Echo { pipe, shape, tail }),
    ];
    proptest::collection::vec(step, 0..200)
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
    fn pub0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Pub0, None, seed, &steps);
    }

    #[test]
    fn sub0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Sub0, None, seed, &steps);
    }

    #[test]
    fn bus0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Bus0, None, seed, &steps);
    }

    #[test]
    fn pub0_floods(steps in flood_steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Pub0, None, seed, &steps);
    }

    #[test]
    fn bus0_floods(steps in flood_steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Bus0, None, seed, &steps);
    }

    /// Generic contract only (see `common/driver.rs`).
    #[test]
    fn surveyor0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Surveyor0, None, seed, &steps);
    }

    /// Generic contract only (see `common/driver.rs`).
    #[test]
    fn respondent0_sequences(steps in steps(), seed in any::<u64>()) {
        Harness::run(ProtocolKind::Respondent0, None, seed, &steps);
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

/// PUB, SUB and BUS: a plain exchange produces the outputs the harness
/// checks, including PUB's drop-oldest and BUS's drops.
#[test]
fn harness_sees_pub_sub_bus_traffic() {
    let add = |pipe, credits| Step::AddPipe {
        pipe,
        peer: None,
        credits,
    };
    let send = |route, data: &[u8]| Step::Send {
        route,
        data: data.to_vec(),
    };
    // PUB: pipe 0 has credit for 2, pipe 1 none; of 20 sends, pipe 0 queues
    // 18 (2 evicted from its queue of 16) and pipe 1 queues 20 (4 evicted);
    // credit drains pipe 0's oldest queued two, in order.
    let mut steps = vec![add(0, 2), add(1, 0)];
    for i in 0..20u8 {
        steps.push(send(0, &[i]));
    }
    steps.push(Step::Credit { pipe: 0, n: 2 });
    steps.push(Step::Credit { pipe: 1, n: 0 });
    let h = Harness::run(ProtocolKind::Pub0, None, 7, &steps);
    assert_eq!(h.transmits, 4, "two sends and the two after the credit");
    assert_eq!(h.drops, 2 + 4);

    // SUB: two contexts, overlapping topics.
    let steps = [
        add(0, 1),
        Step::OpenCtx,
        Step::Subscribe {
            ctx: 0,
            topic: b"ab".to_vec(),
        },
        Step::Subscribe {
            ctx: 1,
            topic: b"a".to_vec(),
        },
        Step::Subscribe {
            ctx: 1,
            topic: b"a".to_vec(),
        },
        Step::Message {
            pipe: 0,
            split: 1,
            data: b"abc".to_vec(),
        },
        Step::Message {
            pipe: 0,
            split: 0,
            data: b"ax".to_vec(),
        },
        Step::Unsubscribe {
            ctx: 1,
            topic: b"a".to_vec(),
        },
        Step::Unsubscribe {
            ctx: 1,
            topic: b"a".to_vec(),
        },
        Step::Echo {
            pipe: 0,
            shape: 0,
            tail: b"!".to_vec(),
        },
        // Even route: subscribe context 0 to the first 2 bytes.
        send(2, b"zz"),
        Step::Message {
            pipe: 0,
            split: 0,
            data: b"zzz".to_vec(),
        },
    ];
    let h = Harness::run(ProtocolKind::Sub0, None, 7, &steps);
    assert_eq!(h.deliveries, 2 + 1 + 1 + 1);
    assert_eq!(h.transmits, 0);

    // BUS: three pipes, one without credit; a message from pipe 0 is
    // rebroadcast to the others (route 1: header names pipe 0).
    let steps = [
        add(0, 3),
        add(1, 3),
        add(2, 0),
        Step::Message {
            pipe: 0,
            split: 0,
            data: b"m".to_vec(),
        },
        send(1, b"m"),
        send(0, b"all"),
    ];
    let h = Harness::run(ProtocolKind::Bus0, None, 7, &steps);
    assert_eq!(h.deliveries, 1);
    assert_eq!(h.transmits, 1 + 2);
    assert_eq!(h.drops, 2, "pipe 2 missed both");
}

/// Every kind runs through the harness (a fixed mixed sequence), so a new
/// kind cannot be left out of the driver's matches.
#[test]
fn every_kind_runs() {
    let steps = [
        Step::AddPipe {
            pipe: 0,
            peer: None,
            credits: 2,
        },
        Step::AddPipe {
            pipe: 1,
            peer: Some(0x7777),
            credits: 2,
        },
        Step::OpenCtx,
        Step::Subscribe {
            ctx: 0,
            topic: Vec::new(),
        },
        Step::Send {
            route: 0,
            data: b"x".to_vec(),
        },
        Step::StartSend {
            ctx: 1,
            deadline: None,
        },
        Step::StartRecv {
            ctx: 1,
            deadline: Some(100),
        },
        Step::Echo {
            pipe: 0,
            shape: 1,
            tail: b"t".to_vec(),
        },
        Step::Message {
            pipe: 0,
            split: 2,
            data: b"\x80\0\0\x01body".to_vec(),
        },
        Step::Credit { pipe: 0, n: 2 },
        Step::Advance { ms: 2000 },
        Step::CloseCtx { which: 1 },
        Step::RemovePipe { pipe: 0 },
    ];
    for kind in ProtocolKind::ALL {
        Harness::run(kind, Some(Duration::from_millis(500)), 1, &steps);
    }
}
