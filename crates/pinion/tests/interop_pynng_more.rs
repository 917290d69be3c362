//! Interop of the pub/sub, survey and bus patterns with real NNG peers:
//! pynng 0.9.0 (bundling NNG 1.11) and hand-written SP peers on raw sockets,
//! all driven by `tests/interop/peer.py` (shared with `interop_pynng.rs`,
//! whose harness this file copies: JSON config in, JSON lines out, peers
//! killed by pid when dropped).
//!
//! Needs a Python with pynng: `$REPO/.venv/bin/python` (created by
//! `scripts/setup-test-env.sh`) or the interpreter named by `PINION_PYTHON`.
//! Without it every test here fails and says how to set it up.
//!
//! Run: `cargo test -p pinion --test interop_pynng_more`
//!
//! Every scenario runs over tcp and ipc, the pynng-played ones also over ws
//! (`matrix!(name, ws)`); most in both directions (pinion
//! dials the peer's listeners, the peer dials pinion's). Each test module is
//! named after the scenario, each test after transport and direction.
//! Pub/sub and bus are best effort: every test first makes sure both ends
//! have the connection (pinion's `pipes_added`, pynng's pipe list) and then
//! sends few, paced messages, far from any queue limit.

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::{Bytes, CallerError, Options, PeerError, Protocol};

#[macro_use]
mod support;
use support::*;
// ---------------------------------------------------------------------------
// 0. The environment
// ---------------------------------------------------------------------------

/// Fails (never skips) when the interpreter or pynng is missing.
#[test]
fn python_with_pynng_is_available() {
    let py = python();
    let out = Command::new(py)
        .args(["-c", "import pynng, pynng._nng as n; print(pynng.__version__, n.ffi.string(n.lib.nng_version()).decode())"])
        .output()
        .expect("run python");
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pynng version probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("interop peer: {} with pynng/NNG {}", py.display(), v.trim());
}

/// Connects the pinion sockets `socks` with one new peer process that has
/// `peer_socks` sockets (one of the two sides has exactly one), over `tr`,
/// in direction `dir`; every pinion socket ends up connected to every peer
/// socket. The peer gets a `urls` list: the urls to listen on (one per
/// socket, each printed back once bound) or to dial.
fn link_group(socks: &[&Socket], peer_socks: usize, tr: Tr, dir: Dir, mut cfg: J) -> Peer {
    assert!(socks.len() == 1 || peer_socks == 1);
    match dir {
        Dir::PeerDials => {
            let urls: Vec<J> = socks
                .iter()
                .map(|s| {
                    let ep = s.listen(&tr.listen_url()).expect("pinion listen");
                    J::from(ep.url().to_string())
                })
                .collect();
            cfg.set("role", "dial");
            cfg.set("urls", urls);
            Peer::spawn(cfg)
        }
        Dir::PinionDials => {
            cfg.set("role", "listen");
            let urls: Vec<J> = (0..peer_socks).map(|_| J::from(tr.listen_url())).collect();
            cfg.set("urls", urls);
            let mut peer = Peer::spawn(cfg);
            for _ in 0..peer_socks {
                let url = peer.listening_url();
                for s in socks {
                    if let Err(e) = s.dial(&url) {
                        panic!(
                            "pinion dial {url} failed: {e:?}\n--- peer stderr ---\n{}",
                            peer.stderr()
                        );
                    }
                }
            }
            peer
        }
    }
}

/// Waits until pinion accepted `n` pipes on `s`.
fn wait_pipes(s: &Socket, n: u64) {
    wait_until(T, &format!("{n} pipes on the pinion socket"), || {
        s.stats().pipes_added >= n
    });
}

fn strs(v: &[&str]) -> J {
    J::Arr(v.iter().map(|s| J::from(*s)).collect())
}

/// Receives `want`, in order, bytes exact, through `rx`.
fn expect_msgs(what: &str, want: &[Vec<u8>], mut rx: impl FnMut() -> pinion::Result<Bytes>) {
    for (j, w) in want.iter().enumerate() {
        match rx() {
            Ok(m) => assert!(
                m == w[..],
                "{what}: message #{j}: got {}, want {}",
                short(&m),
                short(w)
            ),
            Err(e) => panic!("{what}: message #{j} ({}) not received: {e:?}", short(w)),
        }
    }
}

/// `rx` (a receive with a short timeout) must time out.
fn expect_nothing(what: &str, rx: impl FnOnce() -> pinion::Result<Bytes>) {
    match rx() {
        Err(pinion::Error::TimedOut) => {}
        Ok(m) => panic!("{what}: unexpected message {}", short(&m)),
        Err(e) => panic!("{what}: want TimedOut, got {e:?}"),
    }
}

/// Pause between published messages: keeps far from any queue limit.
const PACE: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// 1. pub/sub
// ---------------------------------------------------------------------------

/// Messages per pub/sub phase (the same constants as in peer.py).
const PS_COUNT: u32 = 40;
const PS_TOPICS: [&[u8]; 7] = [b"a/", b"b/", b"u/", b"a", b"ab/", b"x", b"u"];

/// Pub/sub bodies of one phase: #0 empty (only the empty topic matches it),
/// #1 exactly "a/", #2 "a/" + 65534 bytes, then a topic from `PS_TOPICS`
/// (with near misses of the subscribed ones: "a", "ab/", "u") followed by
/// "#<phase>-<i>". The same function as `ps_message` in peer.py.
fn ps_message(phase: u32, i: u32) -> Vec<u8> {
    match i {
        0 => Vec::new(),
        1 => b"a/".to_vec(),
        2 => {
            let mut v = b"a/".to_vec();
            v.extend((0..65534u32).map(|j| ((phase * 31 + j * 7) & 0xff) as u8));
            v
        }
        _ => {
            let mut v = PS_TOPICS[i as usize % PS_TOPICS.len()].to_vec();
            v.extend_from_slice(format!("#{phase}-{i}").as_bytes());
            v
        }
    }
}

/// What a subscriber to `topics` must receive of `phase`, in order.
fn ps_expected(phase: u32, topics: &[&str]) -> Vec<Vec<u8>> {
    (0..PS_COUNT)
        .map(|i| ps_message(phase, i))
        .filter(|m| topics.iter().any(|t| m.starts_with(t.as_bytes())))
        .collect()
}

/// Subscriptions of the four subscribers: a prefix, everything, nothing,
/// and one dropped (unsubscribed) between the two phases.
const SUBS: [&[&str]; 4] = [&["a/"], &[""], &[], &["u/"]];
const UNSUB: (usize, &str) = (3, "u/");

/// pinion PUB → 4 pynng Sub0 sockets (see `SUBS`): each gets exactly its
/// matches, bytes exact and in order; the one without subscriptions gets
/// nothing; after an unsubscribe nothing more of that topic.
fn pubsub_pinion_pub(tr: Tr, dir: Dir) {
    let publ = Socket::new(Protocol::Pub0).unwrap();
    let subs: Vec<J> = SUBS.iter().map(|t| strs(t)).collect();
    let mut peer = link_group(
        &[&publ],
        SUBS.len(),
        tr,
        dir,
        obj! {"scenario" => "sub", "subs" => subs,
        "unsub" => vec![J::from(UNSUB.0 as u32), J::from(UNSUB.1)]},
    );
    wait_pipes(&publ, SUBS.len() as u64);
    peer.wait_event("ready", T);
    for phase in [1, 2] {
        if phase == 2 {
            peer.wait_event("phase1_done", T);
        }
        for i in 0..PS_COUNT {
            publ.send_timeout(ps_message(phase, i), Some(T))
                .unwrap_or_else(|e| panic!("PUB send phase {phase} #{i}: {e:?}"));
            thread::sleep(PACE);
        }
    }
    let res = peer.finish();
    let got: Vec<u64> = res.get("got").arr().iter().filter_map(J::u64).collect();
    let want: Vec<u64> = SUBS
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let p2: &[&str] = if k == UNSUB.0 { &[] } else { t };
            (ps_expected(1, t).len() + ps_expected(2, p2).len()) as u64
        })
        .collect();
    assert_eq!(got, want, "messages per subscriber");
}
matrix!(pubsub_pinion_pub, ws);

/// pynng Pub0 → 4 pinion SUB sockets (see `SUBS`): each gets exactly its
/// matches, bytes exact and in order; the unsubscribed socket nothing more
/// of that topic; unsubscribing again is `NoSuchSubscription`.
fn pubsub_pinion_sub(tr: Tr, dir: Dir) {
    let subs: Vec<Socket> = SUBS
        .iter()
        .map(|topics| {
            let s = Socket::new(Protocol::Sub0).unwrap();
            for t in *topics {
                s.subscribe(*t).unwrap();
            }
            s
        })
        .collect();
    let refs: Vec<&Socket> = subs.iter().collect();
    let mut peer = link_group(
        &refs,
        1,
        tr,
        dir,
        obj! {"scenario" => "pub", "pipes" => SUBS.len() as u32},
    );
    for s in &subs {
        wait_pipes(s, 1);
    }
    peer.wait_event("ready", T);

    peer.tell("send 1");
    for (k, s) in subs.iter().enumerate() {
        expect_msgs(
            &format!("SUB #{k} {:?} phase 1", SUBS[k]),
            &ps_expected(1, SUBS[k]),
            || s.recv_timeout(Some(T)),
        );
    }
    peer.wait_event("sent", T);

    let (u, topic) = UNSUB;
    subs[u].unsubscribe(topic).unwrap();
    match subs[u].unsubscribe(topic) {
        Err(pinion::Error::Caller(CallerError::NoSuchSubscription)) => {}
        other => panic!("unsubscribing twice: want NoSuchSubscription, got {other:?}"),
    }
    peer.tell("send 2");
    for (k, s) in subs.iter().enumerate() {
        let topics: &[&str] = if k == u { &[] } else { SUBS[k] };
        expect_msgs(
            &format!("SUB #{k} {topics:?} phase 2"),
            &ps_expected(2, topics),
            || s.recv_timeout(Some(T)),
        );
    }
    peer.wait_event("sent", T);
    for (k, s) in subs.iter().enumerate() {
        let t = if k == 0 { 300 } else { 50 };
        expect_nothing(&format!("SUB #{k} after phase 2"), || {
            s.recv_timeout(Some(Duration::from_millis(t)))
        });
    }
    peer.finish();
}
matrix!(pubsub_pinion_sub, ws);

/// One pinion SUB socket with three contexts ("a/"; "b/" and "u/", the
/// latter dropped between the phases; everything) fed by one pynng Pub0:
/// each context gets its own matches, in order; the socket itself, not
/// subscribed, gets nothing.
fn pubsub_sub_contexts(tr: Tr, dir: Dir) {
    let sub = Socket::new(Protocol::Sub0).unwrap();
    let topics: [&[&str]; 3] = [&["a/"], &["b/", "u/"], &[""]];
    let mut ctxs: Vec<_> = topics
        .iter()
        .map(|ts| {
            let c = sub.context().unwrap();
            for t in *ts {
                c.subscribe(*t).unwrap();
            }
            c
        })
        .collect();
    let mut peer = link(&sub, tr, dir, obj! {"scenario" => "pub", "pipes" => 1u32});
    wait_pipes(&sub, 1);
    peer.wait_event("ready", T);

    peer.tell("send 1");
    for (k, c) in ctxs.iter_mut().enumerate() {
        expect_msgs(
            &format!("context #{k} {:?} phase 1", topics[k]),
            &ps_expected(1, topics[k]),
            || c.recv_timeout(Some(T)),
        );
    }
    peer.wait_event("sent", T);
    ctxs[1].unsubscribe("u/").unwrap();
    peer.tell("send 2");
    let topics2: [&[&str]; 3] = [&["a/"], &["b/"], &[""]];
    for (k, c) in ctxs.iter_mut().enumerate() {
        expect_msgs(
            &format!("context #{k} {:?} phase 2", topics2[k]),
            &ps_expected(2, topics2[k]),
            || c.recv_timeout(Some(T)),
        );
    }
    peer.wait_event("sent", T);
    expect_nothing("the SUB socket itself (no subscriptions)", || {
        sub.recv_timeout(Some(Duration::from_millis(300)))
    });
    for (k, c) in ctxs.iter_mut().enumerate() {
        expect_nothing(&format!("context #{k} after phase 2"), || {
            c.recv_timeout(Some(Duration::from_millis(50)))
        });
    }
    peer.finish();
}
matrix!(pubsub_sub_contexts);

// ---------------------------------------------------------------------------
// 2. surveyor/respondent
// ---------------------------------------------------------------------------

/// Collects the responses to the survey just sent, until `TimedOut`.
/// Returns them sorted, with the time from `t0` to the `TimedOut`.
fn collect_survey(
    what: &str,
    t0: Instant,
    mut rx: impl FnMut() -> pinion::Result<Bytes>,
) -> (Vec<String>, Duration) {
    let mut got = Vec::new();
    loop {
        match rx() {
            Ok(b) => got.push(String::from_utf8_lossy(&b).into_owned()),
            Err(pinion::Error::TimedOut) => break,
            Err(e) => panic!("{what}: want responses then TimedOut, got {e:?} after {got:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: no TimedOut; responses {got:?}"
        );
    }
    got.sort();
    (got, t0.elapsed())
}

/// pinion SURVEYOR (survey_time 300 ms) with 4 pynng Respondent0 peers:
/// three answer at once, one 700 ms late. Each survey collects exactly the
/// three on-time responses, then `TimedOut` at the deadline; the late
/// response is never delivered (not after the deadline, not to the next
/// survey).
fn survey_pinion_surveyor(tr: Tr, dir: Dir) {
    const SURVEY: Duration = Duration::from_millis(300);
    let sv = Socket::with_options(
        Protocol::Surveyor0,
        Options {
            survey_time: SURVEY,
            ..Default::default()
        },
    )
    .unwrap();
    let names = ["r0", "r1", "r2", "late"];
    let delays: Vec<J> = [0u32, 0, 0, 700].iter().map(|&d| J::from(d)).collect();
    let mut peer = link_group(
        &[&sv],
        names.len(),
        tr,
        dir,
        obj! {"scenario" => "respond", "names" => strs(&names), "delays_ms" => delays},
    );
    wait_pipes(&sv, names.len() as u64);
    peer.wait_event("ready", T);
    for round in 0..2 {
        let body = format!("survey-{round}");
        let t0 = Instant::now();
        sv.send_timeout(body.clone(), Some(T)).unwrap();
        let (got, el) = collect_survey(&body, t0, || sv.recv_timeout(Some(Duration::from_secs(5))));
        let want: Vec<String> = names[..3].iter().map(|n| format!("{n}:{body}")).collect();
        assert_eq!(got, want, "{body}: responses before the deadline");
        assert!(
            el >= SURVEY - Duration::from_millis(10) && el < SURVEY + Duration::from_secs(3),
            "{body}: TimedOut after {el:?}, survey_time {SURVEY:?}"
        );
        // The late answer is sent now; give it time to reach pinion, which
        // must drop it (the next survey or the final receive would show it).
        peer.wait_for("answered", Duration::from_secs(5), |j| {
            j.get("name").str() == Some("late") && j.get("survey").str() == Some(body.as_str())
        });
        thread::sleep(Duration::from_millis(150));
    }
    if let Ok(b) = sv.recv_timeout(Some(Duration::from_millis(200))) {
        panic!(
            "a response delivered after its survey ended: {}",
            String::from_utf8_lossy(&b)
        );
    }
    peer.finish();
}
matrix!(survey_pinion_surveyor, ws);

/// pinion SURVEYOR → hand-written RESPONDENT: each survey is exactly
/// `[survey id with top bit][body]`, ids not reused; responses with a stale
/// or an unknown id are dropped, the echoed id is accepted.
fn survey_id_pinion_surveyor(tr: Tr, dir: Dir) {
    const N: u32 = 6;
    let sv = Socket::new(Protocol::Surveyor0).unwrap();
    let peer = link(
        &sv,
        tr,
        dir,
        obj! {"scenario" => "raw_respondent", "count" => N},
    );
    wait_pipes(&sv, 1);
    for i in 0..N {
        let body = format!("survey-{i}");
        sv.send_timeout(body.clone(), Some(T)).unwrap();
        let r = recv(&sv, &format!("response to {body}"));
        assert!(
            r == reply(body.as_bytes()),
            "{body}: got {} (stale and unknown ids must be dropped)",
            short(&r)
        );
    }
    expect_nothing("after the last response", || {
        sv.recv_timeout(Some(Duration::from_secs(5)))
    });
    let res = peer.finish();
    let ids: Vec<u32> = res
        .get("ids")
        .arr()
        .iter()
        .map(|x| u32::from_str_radix(x.str().unwrap(), 16).unwrap())
        .collect();
    assert_eq!(ids.len(), N as usize);
    assert!(ids.iter().all(|id| id & 0x8000_0000 != 0), "ids {ids:08x?}");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "ids reused: {ids:08x?}"
    );
}
matrix!(survey_id_pinion_surveyor);

const SV_COUNT: u32 = 20;

/// pynng Surveyor0 → pinion RESPONDENT: 20 surveys (empty, 64 KiB, ...),
/// each answered exactly once with the right body.
fn survey_pinion_respondent(tr: Tr, dir: Dir) {
    let resp = Socket::new(Protocol::Respondent0).unwrap();
    let peer = link(
        &resp,
        tr,
        dir,
        obj! {"scenario" => "survey", "count" => SV_COUNT, "survey_ms" => 1000u32},
    );
    for i in 0..SV_COUNT {
        let q = recv(&resp, &format!("survey #{i}"));
        assert!(
            q == payload(i),
            "survey #{i}: got {}, want {}",
            short(&q),
            short(&payload(i))
        );
        resp.send_timeout(reply(&q), Some(T)).unwrap();
    }
    peer.finish();
}
matrix!(survey_pinion_respondent, ws);

/// hand-written SURVEYOR → pinion RESPONDENT: 1-, 2- and 3-word backtraces
/// (survey id word with the top bit last) come back byte for byte; a 9-word
/// backtrace (over max_ttl 8) is dropped with the pipe kept, an 8-word one
/// answered.
fn survey_backtrace_pinion_respondent(tr: Tr, dir: Dir) {
    let resp = Socket::new(Protocol::Respondent0).unwrap();
    let peer = link(
        &resp,
        tr,
        dir,
        obj! {"scenario" => "raw_surveyor", "count" => 30, "ttl_check" => true},
    );
    for i in 0..30 {
        let q = recv(&resp, &format!("survey #{i}"));
        assert!(q == payload(i), "survey #{i}: got {}", short(&q));
        resp.send_timeout(reply(&q), Some(T)).unwrap();
    }
    let q = recv(&resp, "survey after the 9-word one");
    assert_eq!(q, &b"ttl-ok"[..], "the survey over max_ttl must be dropped");
    let st = resp.stats();
    assert_eq!(
        (st.pipes_added, st.pipes_removed, st.malformed),
        (1, 0, 0),
        "a TTL drop must keep the pipe: {st:?}"
    );
    resp.send_timeout(reply(&q), Some(T)).unwrap();
    peer.finish();
}
matrix!(survey_backtrace_pinion_respondent);

/// pinion SURVEYOR (default survey_time, 1 s) with two contexts and two
/// pynng Respondent0 peers answering after 100 ms: survey B starts before
/// any response to A arrived; each context gets exactly its own two
/// responses, then `TimedOut` about 1 s after its own send.
fn survey_surveyor_contexts(tr: Tr, dir: Dir) {
    let sv = Socket::new(Protocol::Surveyor0).unwrap();
    let survey = sv.as_async().options().survey_time;
    let names = ["r0", "r1"];
    let mut peer = link_group(
        &[&sv],
        2,
        tr,
        dir,
        obj! {"scenario" => "respond", "names" => strs(&names),
        "delays_ms" => vec![J::from(100u32), J::from(100u32)]},
    );
    wait_pipes(&sv, 2);
    peer.wait_event("ready", T);
    let mut ca = sv.context().unwrap();
    let mut cb = sv.context().unwrap();
    let ta = Instant::now();
    ca.send("survey-A").unwrap();
    let tb = Instant::now();
    cb.send("survey-B").unwrap();
    let ((ga, ea), (gb, eb)) = thread::scope(|s| {
        let ha = s.spawn(|| {
            collect_survey("context A", ta, || {
                ca.recv_timeout(Some(Duration::from_secs(5)))
            })
        });
        let hb = s.spawn(|| {
            collect_survey("context B", tb, || {
                cb.recv_timeout(Some(Duration::from_secs(5)))
            })
        });
        (ha.join().expect("context A"), hb.join().expect("context B"))
    });
    for (c, got, el) in [("A", ga, ea), ("B", gb, eb)] {
        let want: Vec<String> = names.iter().map(|n| format!("{n}:survey-{c}")).collect();
        assert_eq!(got, want, "context {c}: its own responses");
        assert!(
            el >= survey - Duration::from_millis(10) && el < survey + Duration::from_secs(3),
            "context {c}: TimedOut after {el:?}, survey_time {survey:?}"
        );
    }
    peer.finish();
}
matrix!(survey_surveyor_contexts);

// ---------------------------------------------------------------------------
// 3. bus
// ---------------------------------------------------------------------------

const BUS_COUNT: u32 = 20;

/// Line p0 - pinion BUS - p1 (two pynng Bus0): pinion's messages reach both
/// leaves exactly once, in order; each leaf's messages reach pinion exactly
/// once, in order, are not echoed back to the leaf and not forwarded to the
/// other leaf (one hop).
fn bus_pinion_middle(tr: Tr, dir: Dir) {
    let bus = Socket::new(Protocol::Bus0).unwrap();
    let mut peer = link_group(
        &[&bus],
        2,
        tr,
        dir,
        obj! {"scenario" => "bus_leaves", "leaves" => 2u32, "count" => BUS_COUNT},
    );
    wait_pipes(&bus, 2);
    peer.wait_event("ready", T);
    for i in 0..BUS_COUNT {
        bus.send_timeout(format!("from-pinion-{i}"), Some(T))
            .unwrap();
        thread::sleep(PACE);
    }
    let mut next = [0u32; 2];
    for _ in 0..2 * BUS_COUNT {
        let m = recv(&bus, &format!("leaf messages, so far {next:?}"));
        let text = String::from_utf8_lossy(&m).into_owned();
        let parsed = text
            .strip_prefix("from-p")
            .and_then(|r| r.split_once('-'))
            .and_then(|(k, i)| Some((k.parse::<usize>().ok()?, i.parse::<u32>().ok()?)));
        let Some((k, i)) = parsed.filter(|&(k, _)| k < 2) else {
            panic!("pinion BUS got {text:?} (its own message echoed back?)");
        };
        assert_eq!(
            i, next[k],
            "from p{k}: lost, duplicated or reordered (got {text:?})"
        );
        next[k] += 1;
    }
    expect_nothing("pinion BUS after all leaf messages", || {
        bus.recv_timeout(Some(Duration::from_millis(300)))
    });
    peer.tell("check");
    peer.finish();
}
matrix!(bus_pinion_middle, ws);

/// Line a - pynng Bus0 - b (a, b pinion BUS): the hub's messages reach a
/// and b exactly once, in order; a's and b's reach the hub exactly once, are
/// not echoed back, and the hub does not pass a's to b (or b's to a).
fn bus_pynng_middle(tr: Tr, dir: Dir) {
    let a = Socket::new(Protocol::Bus0).unwrap();
    let b = Socket::new(Protocol::Bus0).unwrap();
    let mut peer = link_group(
        &[&a, &b],
        1,
        tr,
        dir,
        obj! {"scenario" => "bus_hub", "names" => strs(&["a", "b"]), "count" => BUS_COUNT},
    );
    wait_pipes(&a, 1);
    wait_pipes(&b, 1);
    peer.wait_event("ready", T);
    let want: Vec<Vec<u8>> = (0..BUS_COUNT)
        .map(|i| format!("from-hub-{i}").into_bytes())
        .collect();
    for (name, s) in [("a", &a), ("b", &b)] {
        expect_msgs(&format!("pinion BUS {name} from the hub"), &want, || {
            s.recv_timeout(Some(T))
        });
    }
    for i in 0..BUS_COUNT {
        a.send_timeout(format!("from-a-{i}"), Some(T)).unwrap();
        b.send_timeout(format!("from-b-{i}"), Some(T)).unwrap();
        thread::sleep(PACE);
    }
    peer.wait_event("got_all", T);
    expect_nothing("pinion BUS a (own echo or b's via the hub)", || {
        a.recv_timeout(Some(Duration::from_millis(300)))
    });
    expect_nothing("pinion BUS b (own echo or a's via the hub)", || {
        b.recv_timeout(Some(Duration::from_millis(50)))
    });
    peer.finish();
}
matrix!(bus_pynng_middle);

// ---------------------------------------------------------------------------
// 4. Wrong protocol
// ---------------------------------------------------------------------------

/// pynng Pub0 dials a pinion BUS listener: refused, counted.
fn wrong_protocol_pynng_pub_dials_bus(tr: Tr) {
    let bus = Socket::new(Protocol::Bus0).unwrap();
    let peer = link(
        &bus,
        tr,
        Dir::PeerDials,
        obj! {"scenario" => "pynng_wrong_proto"},
    );
    wait_until(T, "rejected_protocol >= 1", || {
        bus.stats().rejected_protocol >= 1
    });
    peer.finish();
    assert_eq!(bus.stats().pipes_added, 0, "{:?}", bus.stats());
}
per_transport!(wrong_protocol_pynng_pub_dials_bus);

/// pinion SUB dials a pynng Pull0 listener: the dial fails with the typed
/// error carrying the peer's protocol id.
fn wrong_protocol_sub_dials_pull(tr: Tr) {
    let sub = Socket::new(Protocol::Sub0).unwrap();
    let mut peer = Peer::spawn(obj! {
        "scenario" => "pynng_wrong_proto", "pattern" => "pull",
        "role" => "listen", "url" => tr.listen_url(),
    });
    let url = peer.listening_url();
    match sub.dial(&url) {
        Err(pinion::Error::Peer(PeerError::WrongProtocol(0x51))) => {}
        other => {
            panic!("dial of a Pull0 listener: want Err(Peer(WrongProtocol(0x51))), got {other:?}")
        }
    }
    assert!(sub.stats().rejected_protocol >= 1, "{:?}", sub.stats());
    peer.finish();
}
per_transport!(wrong_protocol_sub_dials_pull);
