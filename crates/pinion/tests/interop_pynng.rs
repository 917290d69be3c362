//! Interop with real NNG peers: pynng 0.9.0 (bundling NNG 1.11) and
//! hand-written SP peers on raw sockets, both driven by
//! `tests/interop/peer.py`.
//!
//! Needs a Python with pynng: `$REPO/.venv/bin/python` (created by
//! `scripts/setup-test-env.sh`) or the interpreter named by `PINION_PYTHON`.
//! Without it every test here fails and says how to set it up.
//!
//! Run: `cargo test -p pinion --test interop_pynng`
//!
//! Every scenario runs over tcp and ipc, the pynng-played ones also over ws
//! (`matrix!(name, ws)`); most in both directions (pinion
//! dials the peer's listener, the peer dials pinion's). Each test module is
//! named after the scenario, each test after transport and direction.
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::{Options, PeerError, Protocol, StatsSnapshot};

// The harness (payloads, JSON, peer processes, transports, test macros) is
// shared with interop_pynng_more.rs.
#[macro_use]
mod support;
use support::*;

/// Push/pull bodies: `i` as a big-endian u32, then `i % 17` bytes `p`.
fn seq_payload(i: u32) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n(b'p', (i % 17) as usize));
    v
}

/// A barrier whose wait gives up (panics) after a timeout, so a missing
/// participant fails the test instead of hanging it.
struct TimedBarrier {
    n: usize,
    state: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl TimedBarrier {
    fn new(n: usize) -> Self {
        TimedBarrier {
            n,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
        }
    }
    fn wait(&self, timeout: Duration, what: &str) {
        let mut g = self.state.lock().unwrap();
        let gen = g.1;
        g.0 += 1;
        if g.0 == self.n {
            g.0 = 0;
            g.1 += 1;
            self.cv.notify_all();
            return;
        }
        let (g, r) = self
            .cv
            .wait_timeout_while(g, timeout, |s| s.1 == gen)
            .unwrap();
        if r.timed_out() {
            panic!(
                "{what}: only {} of {} arrived within {timeout:?}",
                g.0, self.n
            );
        }
    }
}

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

// ---------------------------------------------------------------------------
// 1. req/rep with pynng, 100 distinct bodies (empty, 64 KiB, ...)
// ---------------------------------------------------------------------------

const RR_COUNT: u32 = 100;

/// pinion REQ ↔ pynng Rep0.
fn req_rep_pinion_req(tr: Tr, dir: Dir) {
    let req = Socket::new(Protocol::Req0).unwrap();
    let peer = link(
        &req,
        tr,
        dir,
        obj! {"scenario" => "reqrep", "pattern" => "rep", "count" => RR_COUNT},
    );
    for i in 0..RR_COUNT {
        req.send(payload(i)).unwrap();
        let r = recv(&req, &format!("reply #{i}"));
        assert!(r == reply(&payload(i)), "reply #{i}: got {}", short(&r));
    }
    peer.finish();
}
matrix!(req_rep_pinion_req, ws);

/// pynng Req0 ↔ pinion REP.
fn req_rep_pinion_rep(tr: Tr, dir: Dir) {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let peer = link(
        &rep,
        tr,
        dir,
        obj! {"scenario" => "reqrep", "pattern" => "req", "count" => RR_COUNT},
    );
    for i in 0..RR_COUNT {
        let q = recv(&rep, &format!("request #{i}"));
        assert!(
            q == payload(i),
            "request #{i}: got {}, want {}",
            short(&q),
            short(&payload(i))
        );
        rep.send(reply(&q)).unwrap();
    }
    peer.finish();
}
matrix!(req_rep_pinion_rep, ws);

// ---------------------------------------------------------------------------
// 2. Request ids and backtraces, checked byte by byte by raw peers
// ---------------------------------------------------------------------------

/// pinion REQ → hand-written REP: each request is exactly
/// `[id with top bit][body]`, ids not reused; pinion accepts the echo.
fn request_id_pinion_req(tr: Tr, dir: Dir) {
    let req = Socket::new(Protocol::Req0).unwrap();
    let peer = link(&req, tr, dir, obj! {"scenario" => "raw_rep", "count" => 50});
    for i in 0..50 {
        req.send(payload(i)).unwrap();
        let r = recv(&req, &format!("reply #{i}"));
        assert!(r == reply(&payload(i)), "reply #{i}: got {}", short(&r));
    }
    let res = peer.finish();
    let ids: Vec<u32> = res
        .get("ids")
        .arr()
        .iter()
        .map(|x| u32::from_str_radix(x.str().unwrap(), 16).unwrap())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(ids.iter().all(|id| id & 0x8000_0000 != 0), "ids {ids:08x?}");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "ids reused: {ids:08x?}"
    );
}
matrix!(request_id_pinion_req);

/// hand-written REQ → pinion REP: 1-, 2- and 3-word backtraces come back
/// byte for byte; a 9-word backtrace (over max_ttl 8) is dropped with the
/// pipe kept, an 8-word one answered.
fn backtrace_echo_pinion_rep(tr: Tr, dir: Dir) {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let peer = link(
        &rep,
        tr,
        dir,
        obj! {"scenario" => "raw_req", "count" => 30, "ttl_check" => true},
    );
    for i in 0..30 {
        let q = recv(&rep, &format!("request #{i}"));
        assert!(q == payload(i), "request #{i}: got {}", short(&q));
        rep.send(reply(&q)).unwrap();
    }
    let q = recv(&rep, "request after the 9-word one");
    assert_eq!(
        q,
        &b"ttl-ok"[..],
        "the request over max_ttl must be dropped"
    );
    // The raw peer is still waiting for this reply on its one connection.
    let st = rep.stats();
    assert_eq!(
        (st.pipes_added, st.pipes_removed, st.malformed),
        (1, 0, 0),
        "a TTL drop must keep the pipe: {st:?}"
    );
    rep.send(reply(&q)).unwrap();
    peer.finish();
}
matrix!(backtrace_echo_pinion_rep);

// ---------------------------------------------------------------------------
// 3. Contexts: 20 concurrent requests each way
// ---------------------------------------------------------------------------

const CTXS: usize = 20;
const ROUNDS: usize = 5;

fn ctx_body_ok(q: &[u8]) -> bool {
    let s = String::from_utf8_lossy(q);
    let Some(rest) = s.strip_prefix("ctx") else {
        return false;
    };
    let mut it = rest.splitn(2, "-r");
    matches!((it.next().map(str::parse::<usize>), it.next().map(str::parse::<usize>)),
        (Some(Ok(c)), Some(Ok(r))) if c < CTXS && r < ROUNDS)
}

/// pynng Req0 with 20 contexts → pinion REP with 20 contexts (threads). Each
/// round the 20 REP contexts hold one request each before any answers (so
/// all 20 were in flight at once), then answer in reverse order.
fn contexts_pinion_rep(tr: Tr, dir: Dir) {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let peer = link(
        &rep,
        tr,
        dir,
        obj! {"scenario" => "ctx", "pattern" => "req", "contexts" => CTXS as u32, "rounds" => ROUNDS as u32},
    );
    let barrier = Arc::new(TimedBarrier::new(CTXS));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CTXS)
        .map(|idx| {
            let mut ctx = rep.context().unwrap();
            let (barrier, seen) = (barrier.clone(), seen.clone());
            thread::spawn(move || {
                for r in 0..ROUNDS {
                    let q = ctx
                        .recv_timeout(Some(T))
                        .unwrap_or_else(|e| panic!("rep context {idx} round {r}: {e:?}"));
                    assert!(ctx_body_ok(&q), "unexpected request {}", short(&q));
                    seen.lock().unwrap().push(q.to_vec());
                    barrier.wait(
                        T,
                        &format!("round {r}: concurrent requests at the pinion REP"),
                    );
                    thread::sleep(Duration::from_millis(2 * (CTXS - idx) as u64));
                    ctx.send(reply(&q)).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("rep context worker");
    }
    peer.finish();
    let seen = seen.lock().unwrap();
    let distinct: BTreeSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), CTXS * ROUNDS);
    assert_eq!(distinct.len(), seen.len(), "a request was delivered twice");
}
matrix!(contexts_pinion_rep, ws);

/// pinion REQ with 20 contexts (async API on tokio) → pynng Rep0 with 20
/// contexts, which waits until all 20 requests are in before answering any,
/// in reverse order.
fn contexts_pinion_req(tr: Tr, dir: Dir) {
    let req = Socket::new(Protocol::Req0).unwrap();
    let peer = link(
        &req,
        tr,
        dir,
        obj! {"scenario" => "ctx", "pattern" => "rep", "contexts" => CTXS as u32, "rounds" => ROUNDS as u32},
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let sock = req.as_async().clone();
    rt.block_on(async move {
        let tasks: Vec<_> = (0..CTXS)
            .map(|c| {
                let s = sock.clone();
                tokio::spawn(async move {
                    let mut ctx = s.context().await.unwrap();
                    for r in 0..ROUNDS {
                        let body = format!("ctx{c}-r{r}");
                        ctx.send(body.clone()).await.unwrap();
                        let got = ctx
                            .recv_timeout(Some(T))
                            .await
                            .unwrap_or_else(|e| panic!("context {c} round {r}: {e:?}"));
                        assert_eq!(got, reply(body.as_bytes()), "context {c} round {r}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("req context task");
        }
    });
    peer.finish();
}
matrix!(contexts_pinion_req, ws);

// ---------------------------------------------------------------------------
// 4. push/pull
// ---------------------------------------------------------------------------

const PP_COUNT: u32 = 1000;

/// pinion PUSH → pynng Pull0: 1000 in order.
fn push_pull_pinion_push(tr: Tr, dir: Dir) {
    let push = Socket::new(Protocol::Push0).unwrap();
    let peer = link(
        &push,
        tr,
        dir,
        obj! {"scenario" => "pull", "count" => PP_COUNT},
    );
    for i in 0..PP_COUNT {
        push.send_timeout(seq_payload(i), Some(T)).unwrap();
    }
    peer.finish();
}
matrix!(push_pull_pinion_push, ws);

/// pynng Push0 → pinion PULL: 1000 in order.
fn push_pull_pinion_pull(tr: Tr, dir: Dir) {
    let pull = Socket::new(Protocol::Pull0).unwrap();
    let peer = link(
        &pull,
        tr,
        dir,
        obj! {"scenario" => "push", "count" => PP_COUNT},
    );
    for i in 0..PP_COUNT {
        let m = recv(&pull, &format!("message #{i}"));
        assert!(m == seq_payload(i), "message #{i}: got {}", short(&m));
    }
    peer.finish();
}
matrix!(push_pull_pinion_pull, ws);

/// One pinion PUSH, two pynng Pull0 peers: every message arrives exactly
/// once, both peers get some, each in order.
fn push_round_robin(tr: Tr, dir: Dir) {
    let push = Socket::new(Protocol::Push0).unwrap();
    let cfg = || obj! {"scenario" => "pull_collect", "idle_ms" => 1000};
    let a = link(&push, tr, dir, cfg());
    let b = link(&push, tr, dir, cfg());
    wait_until(T, "two pipes on the pinion PUSH", || {
        push.stats().pipes_added >= 2
    });
    for i in 0..PP_COUNT {
        push.send_timeout(seq_payload(i), Some(T)).unwrap();
    }
    let got: Vec<Vec<u64>> = [a.finish(), b.finish()]
        .iter()
        .map(|r| {
            r.get("got")
                .arr()
                .iter()
                .map(|x| x.u64().unwrap())
                .collect()
        })
        .collect();
    eprintln!("round robin split: {} / {}", got[0].len(), got[1].len());
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "one PULL got nothing: {} / {}",
        got[0].len(),
        got[1].len()
    );
    let mut all: Vec<u64> = got.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..u64::from(PP_COUNT)).collect::<Vec<_>>(),
        "lost or duplicated messages"
    );
}
matrix!(push_round_robin);

// ---------------------------------------------------------------------------
// 5. pair0, pair1
// ---------------------------------------------------------------------------

fn pair_echo(tr: Tr, dir: Dir, proto: Protocol, version: u32) {
    let s = Socket::new(proto).unwrap();
    let peer = link(
        &s,
        tr,
        dir,
        obj! {"scenario" => "pair", "version" => version, "count" => RR_COUNT},
    );
    for i in 0..RR_COUNT {
        s.send_timeout(payload(i), Some(T)).unwrap();
        let r = recv(&s, &format!("echo #{i}"));
        assert!(r == reply(&payload(i)), "echo #{i}: got {}", short(&r));
    }
    peer.finish();
}

fn pair0(tr: Tr, dir: Dir) {
    pair_echo(tr, dir, Protocol::Pair0, 0)
}
matrix!(pair0, ws);

fn pair1(tr: Tr, dir: Dir) {
    pair_echo(tr, dir, Protocol::Pair1, 1)
}
matrix!(pair1, ws);

/// Hand-written PAIR v1: pinion sends hop count 00000001; a hop count of 9
/// (> max_ttl 8) is dropped with the pipe kept; 1 and 8 are delivered; a hop
/// count over 255 closes the pipe (counted as malformed).
fn pair1_hop_count(tr: Tr, dir: Dir) {
    let s = Socket::new(Protocol::Pair1).unwrap();
    let peer = link(
        &s,
        tr,
        dir,
        obj! {"scenario" => "raw_pair1", "bad_hop" => true},
    );
    s.send_timeout("from-pinion", Some(T)).unwrap();
    assert_eq!(
        recv(&s, "hop 1"),
        b"keep-1",
        "hop count 9 must be dropped, hop 1 delivered"
    );
    assert_eq!(recv(&s, "hop 8"), b"keep-8");
    s.send_timeout("ack", Some(T)).unwrap();
    peer.finish();
    wait_until(T, "malformed counted for hop count 0x100", || {
        s.stats().malformed >= 1
    });
    match s.recv_timeout(Some(Duration::from_millis(200))) {
        Err(pinion::Error::TimedOut) => {}
        other => panic!("nothing else may arrive (drop-me / bad), got {other:?}"),
    }
}
matrix!(pair1_hop_count);

/// A pair socket takes one peer: with a pynng peer connected, a second
/// (valid) peer is closed by pinion (`rejected_busy`), and the first keeps
/// working.
fn pair_second_peer_refused(tr: Tr) {
    for (proto, version, id) in [(Protocol::Pair0, 0u32, 0x10), (Protocol::Pair1, 1, 0x11)] {
        let s = Socket::new(proto).unwrap();
        let url = s.listen(&tr.listen_url()).unwrap().url().to_string();
        let first = Peer::spawn(
            obj! {"scenario" => "pair", "version" => version, "count" => 2u32,
            "role" => "dial", "url" => url.as_str()},
        );
        s.send_timeout(payload(0), Some(T)).unwrap();
        assert_eq!(recv(&s, "first echo"), reply(&payload(0)));
        Peer::spawn(
            obj! {"scenario" => "raw_hostile", "kind" => "idle", "proto" => id,
            "role" => "dial", "url" => url.as_str()},
        )
        .finish();
        wait_until(T, "rejected_busy >= 1", || s.stats().rejected_busy >= 1);
        s.send_timeout(payload(1), Some(T)).unwrap();
        assert_eq!(
            recv(&s, "second echo"),
            reply(&payload(1)),
            "{proto:?}: the first peer must keep working"
        );
        first.finish();
    }
}
per_transport!(pair_second_peer_refused);

// ---------------------------------------------------------------------------
// 6. Wrong protocol
// ---------------------------------------------------------------------------

/// pynng Pub0 dials a pinion REP listener: refused, counted.
fn wrong_protocol_pynng_pub_dials_rep(tr: Tr) {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let peer = link(
        &rep,
        tr,
        Dir::PeerDials,
        obj! {"scenario" => "pynng_wrong_proto"},
    );
    wait_until(T, "rejected_protocol >= 1", || {
        rep.stats().rejected_protocol >= 1
    });
    peer.finish();
    assert_eq!(rep.stats().pipes_added, 0, "{:?}", rep.stats());
}
per_transport!(wrong_protocol_pynng_pub_dials_rep, ws);

/// A raw peer sending a PUB header (0x20) and nothing else, keeping its end
/// open: pinion itself must close the connection.
fn wrong_protocol_raw_header(tr: Tr) {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let peer = link(
        &rep,
        tr,
        Dir::PeerDials,
        obj! {"scenario" => "raw_hostile", "kind" => "wrong_proto"},
    );
    peer.finish();
    wait_until(T, "rejected_protocol >= 1", || {
        rep.stats().rejected_protocol >= 1
    });
}
per_transport!(wrong_protocol_raw_header);

/// pinion REQ dials a pynng Pub0 listener: the dial fails with the typed
/// error carrying the peer's protocol id.
fn wrong_protocol_pinion_dials_pub(tr: Tr) {
    let req = Socket::new(Protocol::Req0).unwrap();
    let mut peer = Peer::spawn(
        obj! {"scenario" => "pynng_wrong_proto", "role" => "listen", "url" => tr.listen_url()},
    );
    let url = peer.listening_url();
    match req.dial(&url) {
        Err(pinion::Error::Peer(PeerError::WrongProtocol(0x20))) => {}
        other => {
            panic!("dial of a Pub0 listener: want Err(Peer(WrongProtocol(0x20))), got {other:?}")
        }
    }
    assert!(req.stats().rejected_protocol >= 1, "{:?}", req.stats());
    peer.finish();
}
per_transport!(wrong_protocol_pinion_dials_pub);

/// Over `ws://` NNG refuses the upgrade itself: pinion REQ asks a pynng
/// Pub0 listener for `rep.sp.nanomsg.org` and gets HTTP 400.
#[test]
fn wrong_protocol_pinion_dials_pub_over_ws() {
    let req = Socket::new(Protocol::Req0).unwrap();
    let mut peer = Peer::spawn(
        obj! {"scenario" => "pynng_wrong_proto", "role" => "listen", "url" => Tr::Ws.listen_url()},
    );
    let url = peer.listening_url();
    match req.dial(&url) {
        Err(pinion::Error::Peer(PeerError::UpgradeRefused(400))) => {}
        other => {
            panic!("dial of a Pub0 ws listener: want Err(Peer(UpgradeRefused(400))), got {other:?}")
        }
    }
    assert!(req.stats().rejected_header >= 1, "{:?}", req.stats());
    peer.finish();
}

/// Over `ws://` the path must match exactly: NNG answers 404.
#[test]
fn wrong_path_pinion_dials_pynng_over_ws() {
    let req = Socket::new(Protocol::Req0).unwrap();
    let mut peer =
        Peer::spawn(obj! {"scenario" => "serve", "role" => "listen", "url" => Tr::Ws.listen_url()});
    let url = peer.listening_url();
    match req.dial(&format!("{url}-nope")) {
        Err(pinion::Error::Peer(PeerError::UpgradeRefused(404))) => {}
        other => panic!("dial of a wrong path: want Err(Peer(UpgradeRefused(404))), got {other:?}"),
    }
    req.dial(&url).unwrap();
    req.send("after 404").unwrap();
    assert_eq!(recv(&req, "reply"), reply(b"after 404"));
    peer.finish();
}

// ---------------------------------------------------------------------------
// 7. Hostile raw peers, with a healthy pynng client working throughout
// ---------------------------------------------------------------------------

/// Which counter a hostile peer must bump.
type Counter = fn(&StatsSnapshot) -> u64;

/// Every fault counter together.
fn faults(s: &StatsSnapshot) -> u64 {
    s.rejected_header
        + s.rejected_protocol
        + s.rejected_busy
        + s.handshake_timeouts
        + s.too_large
        + s.malformed
        + s.io_errors
}

/// Runs one hostile raw peer against `url`, then checks that pinion closed
/// its connection, that `counter` went up, and that the healthy client made
/// progress afterwards (`progress` counts its messages).
fn run_hostile(
    sock: &Socket,
    url: &str,
    kind: &str,
    extra: &[(&str, J)],
    counter: Counter,
    progress: &AtomicU64,
) -> J {
    let before = sock.stats();
    let mut cfg =
        obj! {"scenario" => "raw_hostile", "kind" => kind, "role" => "dial", "url" => url};
    for (k, v) in extra {
        cfg.set(k, v.clone());
    }
    let res = Peer::spawn(cfg).finish();
    // Exactly this fault is counted, once, and no other.
    let until = Instant::now() + Duration::from_secs(5);
    while counter(&sock.stats()) == counter(&before) {
        assert!(
            Instant::now() < until,
            "{kind}: the expected stats counter did not go up: before {before:?}, after {:?}",
            sock.stats()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let after = sock.stats();
    assert_eq!(
        faults(&after) - faults(&before),
        1,
        "{kind}: exactly one fault must be counted: before {before:?}, after {after:?}"
    );
    let p = progress.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(5),
        &format!("{kind}: healthy client progress after the attack"),
        || progress.load(Ordering::SeqCst) > p,
    );
    res
}

fn hostile_opts() -> Options {
    Options {
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Against a pinion REP listener: bad magic, reserved bytes, wrong protocol,
/// a 2^64-1 length, a backtrace without end, silence. A pynng Req0 keeps
/// doing request/reply on the same listener throughout.
fn hostile_rep_listener(tr: Tr) {
    let rep = Socket::with_options(Protocol::Rep0, hostile_opts()).unwrap();
    let url = rep.listen(&tr.listen_url()).unwrap().url().to_string();
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (rep, served, stop) = (rep.clone(), served.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match rep.recv_timeout(Some(Duration::from_millis(100))) {
                    Ok(q) => {
                        assert!(q.starts_with(b"healthy-"), "REP got {}", short(&q));
                        rep.send(reply(&q)).unwrap();
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(pinion::Error::TimedOut) => {}
                    Err(e) => panic!("REP server: {e:?}"),
                }
            }
        })
    };
    let healthy = Peer::spawn(
        obj! {"scenario" => "healthy", "pattern" => "req", "role" => "dial", "url" => url.as_str()},
    );
    wait_until(T, "healthy client started", || {
        served.load(Ordering::SeqCst) >= 3
    });

    let hdr: Counter = |s| s.rejected_header;
    run_hostile(&rep, &url, "bad_magic", &[], hdr, &served);
    run_hostile(&rep, &url, "reserved", &[], hdr, &served);
    run_hostile(
        &rep,
        &url,
        "wrong_proto",
        &[],
        |s| s.rejected_protocol,
        &served,
    );
    run_hostile(&rep, &url, "huge_len", &[], |s| s.too_large, &served);
    run_hostile(&rep, &url, "no_bt_end", &[], |s| s.malformed, &served);
    let r = run_hostile(&rep, &url, "silent", &[], |s| s.handshake_timeouts, &served);
    let ms = r.get("closed_ms").u64().unwrap();
    assert!(
        (200..5000).contains(&ms),
        "silent peer closed after {ms} ms (handshake timeout 500 ms)"
    );

    let h = healthy.finish();
    stop.store(true, Ordering::SeqCst);
    server.join().expect("REP server thread");
    assert!(h.get("count").u64().unwrap() > 0);
    eprintln!(
        "hostile REP ({tr:?}): healthy requests {}; stats {:?}",
        served.load(Ordering::SeqCst),
        rep.stats()
    );
}
per_transport!(hostile_rep_listener);

/// Against a pinion PULL listener with recv_max_size 1024: a 1024-byte
/// message is accepted and an announced 1025 closes the pipe; 4096; 2^64-1;
/// bad magic; IPC type byte 0x02 (ipc); silence. A pynng Push0 keeps pushing
/// on the same listener throughout; its messages arrive in order, none lost.
fn hostile_pull_listener(tr: Tr) {
    let pull = Socket::with_options(
        Protocol::Pull0,
        Options {
            recv_max_size: 1024,
            ..hostile_opts()
        },
    )
    .unwrap();
    let url = pull.listen(&tr.listen_url()).unwrap().url().to_string();
    let healthy_n = Arc::new(AtomicU64::new(0));
    let boundary = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (pull, healthy_n, boundary, stop) = (
            pull.clone(),
            healthy_n.clone(),
            boundary.clone(),
            stop.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match pull.recv_timeout(Some(Duration::from_millis(100))) {
                    Ok(m) if m.len() == 1024 && m.iter().all(|&b| b == b'B') => {
                        boundary.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(m) => {
                        let want = format!("healthy-{}", healthy_n.load(Ordering::SeqCst));
                        assert_eq!(m, want.as_bytes(), "healthy pusher: lost or reordered");
                        healthy_n.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(pinion::Error::TimedOut) => {}
                    Err(e) => panic!("PULL receiver: {e:?}"),
                }
            }
        })
    };
    let healthy = Peer::spawn(
        obj! {"scenario" => "healthy", "pattern" => "push", "role" => "dial", "url" => url.as_str()},
    );
    wait_until(T, "healthy pusher started", || {
        healthy_n.load(Ordering::SeqCst) >= 3
    });

    let big: Counter = |s| s.too_large;
    let push = || ("proto", J::from(0x50u32));
    run_hostile(
        &pull,
        &url,
        "over_limit",
        &[
            push(),
            ("boundary_first", J::from(true)),
            ("boundary", J::from(1024u32)),
            ("length", J::from(1025u32)),
        ],
        big,
        &healthy_n,
    );
    wait_until(
        T,
        "the 1024-byte message (exactly the limit) delivered",
        || boundary.load(Ordering::SeqCst) == 1,
    );
    run_hostile(
        &pull,
        &url,
        "over_limit",
        &[push(), ("length", J::from(4096u32))],
        big,
        &healthy_n,
    );
    run_hostile(&pull, &url, "huge_len", &[push()], big, &healthy_n);
    run_hostile(
        &pull,
        &url,
        "bad_magic",
        &[push()],
        |s| s.rejected_header,
        &healthy_n,
    );
    if tr == Tr::Ipc {
        run_hostile(
            &pull,
            &url,
            "ipc_type2",
            &[push()],
            |s| s.malformed,
            &healthy_n,
        );
    }
    run_hostile(
        &pull,
        &url,
        "silent",
        &[],
        |s| s.handshake_timeouts,
        &healthy_n,
    );

    let h = healthy.finish();
    // Everything the pusher sent must arrive.
    let sent = h.get("count").u64().unwrap();
    wait_until(T, "all healthy messages received", || {
        healthy_n.load(Ordering::SeqCst) == sent
    });
    stop.store(true, Ordering::SeqCst);
    receiver.join().expect("PULL receiver thread");
    eprintln!(
        "hostile PULL ({tr:?}): healthy messages {sent}; stats {:?}",
        pull.stats()
    );
}
per_transport!(hostile_pull_listener);

/// pinion REQ connected to a hand-written REP that answers with 2 bytes and
/// to a healthy pynng Rep0: the short reply closes that pipe (malformed),
/// the request is resent to the healthy peer, and every request gets its
/// right reply.
fn short_reply_to_req(tr: Tr, dir: Dir) {
    let req = Socket::new(Protocol::Req0).unwrap();
    let raw = link(
        &req,
        tr,
        dir,
        obj! {"scenario" => "raw_hostile", "kind" => "short_reply", "proto" => 0x31},
    );
    let healthy = link(&req, tr, dir, obj! {"scenario" => "serve"});
    wait_until(T, "two pipes on the pinion REQ", || {
        req.stats().pipes_added >= 2
    });
    let mut after = None;
    for i in 0..60 {
        let body = format!("sr-{i}");
        req.send(body.clone()).unwrap();
        let r = recv(&req, &format!("reply to {body}"));
        assert_eq!(r, reply(body.as_bytes()), "request {body}");
        if after.is_none() && req.stats().malformed >= 1 {
            after = Some(i);
        }
        if after.is_some_and(|a| i >= a + 5) {
            break;
        }
    }
    assert!(
        after.is_some(),
        "the short-reply peer never got a request: {:?}",
        req.stats()
    );
    let r = raw.finish();
    assert!(
        r.get("request").str().unwrap_or("").starts_with("sr-"),
        "{r}"
    );
    healthy.finish();
}
matrix!(short_reply_to_req);

/// With `recv_max_size: 0` (unlimited, NNG 1.x's default) a peer announcing
/// a 2^64-1 or 2^62 byte message must lose its connection, as with NNG (whose
/// message allocation fails and closes the pipe), and nothing else may be
/// disturbed. Each length runs in a child copy of this test binary, because
/// an allocation failure aborts the whole process.
#[test]
fn hostile_unlimited_recv_size() {
    const NAME: &str = "hostile_unlimited_recv_size";
    let Some(len) = std::env::var_os("PINION_INTEROP_CHILD_LEN") else {
        // One child process per length, so each outcome is reported.
        let mut failures = Vec::new();
        for len in [u64::MAX, 1u64 << 62] {
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    NAME,
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("PINION_INTEROP_CHILD_LEN", len.to_string())
                .output()
                .expect("re-run this test binary");
            if !out.status.success() {
                failures.push(format!(
                    "=== length {len:#x}: the child pinion process failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        return;
    };
    let len: u64 = len.to_str().unwrap().parse().unwrap();
    for tr in [Tr::Tcp, Tr::Ipc] {
        let pull = Socket::with_options(
            Protocol::Pull0,
            Options {
                recv_max_size: 0,
                ..hostile_opts()
            },
        )
        .unwrap();
        let url = pull.listen(&tr.listen_url()).unwrap().url().to_string();
        let n = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (pull, n, stop) = (pull.clone(), n.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match pull.recv_timeout(Some(Duration::from_millis(100))) {
                        Ok(m) => {
                            let want = format!("healthy-{}", n.load(Ordering::SeqCst));
                            assert_eq!(m, want.as_bytes());
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(pinion::Error::TimedOut) => {}
                        Err(e) => panic!("PULL receiver: {e:?}"),
                    }
                }
            })
        };
        let healthy = Peer::spawn(
            obj! {"scenario" => "healthy", "pattern" => "push", "role" => "dial", "url" => url.as_str()},
        );
        wait_until(T, "healthy pusher started", || {
            n.load(Ordering::SeqCst) >= 3
        });
        {
            let before = pull.stats();
            let r = Peer::spawn(obj! {
                "scenario" => "raw_hostile", "kind" => "huge_len", "proto" => 0x50,
                "role" => "dial", "url" => url.as_str(), "length" => format!("{len:#x}"),
            })
            .finish();
            eprintln!("{tr:?} length {len:#x}: {r}; stats {:?}", pull.stats());
            // The hostile pipe must be gone from the socket's books too.
            wait_until(
                Duration::from_secs(5),
                &format!("length {len:#x}: pipe removed"),
                || pull.stats().pipes_removed > before.pipes_removed,
            );
            let p = n.load(Ordering::SeqCst);
            wait_until(Duration::from_secs(5), "healthy progress", || {
                n.load(Ordering::SeqCst) > p
            });
        }
        let sent = healthy.finish().get("count").u64().unwrap();
        wait_until(T, "all healthy messages", || {
            n.load(Ordering::SeqCst) == sent
        });
        stop.store(true, Ordering::SeqCst);
        receiver.join().expect("receiver");
    }
}
