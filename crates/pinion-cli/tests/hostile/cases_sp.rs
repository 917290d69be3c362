//! Attacks on the SP ports and on the publish path: impossible frame
//! lengths, garbage and wrong protocols, pipelining without reading,
//! a million client ids, topics that are not UTF-8.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::attack::{paced, Port};
use crate::hub::{self, Metrics};
use crate::trial::{Cmp, Spec, Trial};
use crate::wire::{self, Answer, Upgraded};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "sp_frame_2pow64_minus_1_pub",
            what: "publisher port: after the SP header, a frame announcing 2^64 − 1 bytes (100 connections/s)",
            spec: || Spec::new("", 16),
            run: sp_frame_max,
        },
        Case {
            name: "garbage_pub",
            what: "publisher port: 64 random bytes instead of the SP header (200/s)",
            spec: || Spec::new("", 16),
            run: |t| garbage_sp(t, Port::Pub),
        },
        Case {
            name: "garbage_sub",
            what: "subscriber port: the same",
            spec: || Spec::new("", 16),
            run: |t| garbage_sp(t, Port::Sub),
        },
        Case {
            name: "sp_wrong_protocol_pub",
            what: "publisher port: a well-formed SP header of SUB (not REQ) (200/s)",
            spec: || Spec::new("", 16),
            run: |t| wrong_protocol(t, Port::Pub),
        },
        Case {
            name: "sp_wrong_protocol_sub",
            what: "subscriber port: a well-formed SP header of REQ (not SUB) (200/s)",
            spec: || Spec::new("", 16),
            run: |t| wrong_protocol(t, Port::Sub),
        },
        Case {
            name: "pipeline_100k_unread",
            what: "one publisher (rcvbuf 2 KiB) pipelines 100,000 publishes and never reads a reply",
            spec: || Spec::new("", 48),
            run: pipeline_unread,
        },
        Case {
            name: "req_never_read_replies",
            what: "200 publishers (4 sources, rcvbuf 2 KiB) send 500 publishes each and never read a reply",
            spec: || Spec::new("", 64),
            run: req_never_read,
        },
        Case {
            name: "million_client_ids",
            what: "1,000,000 publishes, each from a new client id, pipelined on 4 connections (512 in flight each); max_sessions 100,000, checkpoints every 1 s, max_fanout_backlog 4 MiB",
            // The RSS bound is set once the rate is known (see the case).
            spec: || {
                Spec::new(
                    "max_sessions = 100000\ncheckpoint_interval_ms = 1000\nmax_fanout_backlog = 4194304",
                    0,
                )
            },
            run: million_ids,
        },
        Case {
            name: "invalid_utf8_topic_pub",
            what: "publishes whose topic is not UTF-8 (0xFF 0xFE), 500/s pipelined, over TCP",
            spec: || Spec::new("", 16),
            run: |t| invalid_topic(t, false),
        },
        Case {
            name: "invalid_utf8_topic_ws_pub",
            what: "the same over /pub (WebSocket)",
            spec: || Spec::new("", 16),
            run: |t| invalid_topic(t, true),
        },
    ]
}

fn sp_frame_max(t: &mut Trial) {
    let to = t.addrs.publ;
    let (n, outcomes) = t.attack(|ctx| {
        let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (n, _) = paced(ctx, 100, 10_000, |i| {
            let k =
                match wire::sp_connect(wire::src(i as usize % 4), to, wire::sp::REQ, wire::sp::REP)
                {
                    Ok(mut s) => {
                        let mut b = u64::MAX.to_be_bytes().to_vec();
                        b.extend_from_slice(&[0x41; 256]);
                        let _ = s.write_all(&b);
                        if wire::read_until_closed(&mut s, Duration::from_secs(3)).closed() {
                            "closed"
                        } else {
                            "still open after 3 s"
                        }
                    }
                    Err(_) => "SP header refused",
                };
            *outcomes.entry(k).or_insert(0) += 1;
            true
        });
        (n, outcomes)
    });
    t.peer(format!("{n} connections: {outcomes:?}"));
    t.check(
        outcomes.get("closed") == Some(&n),
        format!("expected every connection closed: {outcomes:?}"),
    );
    t.expect_refused("pub", "oversize", n);
}

fn garbage_sp(t: &mut Trial, port: Port) {
    let to = port.addr(&t.addrs);
    let (n, outcomes) = t.attack(|ctx| {
        let mut rng = wire::Lcg(7);
        let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (n, _) = paced(ctx, 200, 20_000, |i| {
            let mut junk = rng.bytes(64);
            junk[0] = 0x5a; // an SP header starts with 0x00
            let k = match wire::connect_from(wire::src(i as usize % 4), to, None) {
                Ok(mut s) => {
                    let _ = s.write_all(&junk);
                    if wire::read_until_closed(&mut s, Duration::from_secs(3)).closed() {
                        "closed"
                    } else {
                        "still open after 3 s"
                    }
                }
                Err(_) => "connect failed",
            };
            *outcomes.entry(k).or_insert(0) += 1;
            true
        });
        (n, outcomes)
    });
    t.peer(format!("{n} connections: {outcomes:?}"));
    t.check(
        outcomes.get("closed") == Some(&n),
        format!("expected every connection closed: {outcomes:?}"),
    );
    t.expect_refused(port.label(), "malformed", n);
}

fn wrong_protocol(t: &mut Trial, port: Port) {
    let to = port.addr(&t.addrs);
    let wrong = match port {
        Port::Pub => wire::sp_header(wire::sp::SUB),
        _ => wire::sp_header(wire::sp::REQ),
    };
    let (n, outcomes) = t.attack(|ctx| {
        let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (n, _) = paced(ctx, 200, 20_000, |i| {
            let k = match wire::connect_from(wire::src(i as usize % 4), to, None) {
                Ok(mut s) => {
                    let _ = s.write_all(&wrong);
                    if wire::read_until_closed(&mut s, Duration::from_secs(3)).closed() {
                        "closed"
                    } else {
                        "still open after 3 s"
                    }
                }
                Err(_) => "connect failed",
            };
            *outcomes.entry(k).or_insert(0) += 1;
            true
        });
        (n, outcomes)
    });
    t.peer(format!("{n} connections: {outcomes:?}"));
    t.check(
        outcomes.get("closed") == Some(&n),
        format!("expected every connection closed: {outcomes:?}"),
    );
    t.expect_refused(port.label(), "malformed", n);
}

/// A REQ connection from `from` with a small receive buffer (so that the
/// replies it does not read back up quickly).
fn req_conn_small_rcvbuf(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = wire::connect_from(from, to, Some(2048))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&wire::sp_header(wire::sp::REQ))?;
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    if h != wire::sp_header(wire::sp::REP) {
        return Err(std::io::Error::other("not REP"));
    }
    Ok(s)
}

/// `count` publish frames from `client`, seqs `first..`, topic
/// `hostile/…`, 32-byte payloads.
fn publishes(client: &[u8; 16], first: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in first..first + count {
        out.extend_from_slice(&wire::sp_frame(&wire::req_body(
            seq as u32,
            &wire::publish(client, seq, b"hostile/pipe", &[0x33; 32]),
        )));
    }
    out
}

/// Reads the replies waiting on all of `conns` at once (non-blocking),
/// until none has anything new for 1 s or 5 s have passed: how many.
fn count_replies(conns: &mut [TcpStream]) -> u64 {
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut chunk = vec![0u8; 64 << 10];
    let mut n = 0;
    let start = Instant::now();
    let mut last_new = Instant::now();
    for s in conns.iter() {
        let _ = s.set_nonblocking(true);
    }
    while last_new.elapsed() < Duration::from_secs(1) && start.elapsed() < Duration::from_secs(5) {
        let mut any = false;
        for (s, buf) in conns.iter_mut().zip(bufs.iter_mut()) {
            while let Ok(k) = s.read(&mut chunk) {
                if k == 0 {
                    break;
                }
                any = true;
                buf.extend_from_slice(&chunk[..k]);
            }
            n += wire::take_sp_frames(buf, 1 << 20)
                .map(|f| f.len() as u64)
                .unwrap_or(0);
        }
        if any {
            last_new = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    n
}

fn pipeline_unread(t: &mut Trial) {
    const N: u64 = 100_000;
    let to = t.addrs.publ;
    let r = t.attack(|ctx| -> Result<(u64, bool, Duration, u64, f64), String> {
        let paused = |m: Result<Metrics, String>| {
            m.ok()
                .and_then(|m| m.get("pinion_paused_total"))
                .unwrap_or(0.0)
        };
        let paused_before = paused(ctx.metrics());
        let mut s = req_conn_small_rcvbuf(wire::src(0), to).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let start = Instant::now();
        let mut sent = 0;
        let mut blocked = false;
        // 1,000 publishes per write; a write that blocks 2 s means the hub
        // stopped reading this connection (back-pressure).
        while sent < N {
            match s.write_all(&publishes(&[0xab; 16], sent + 1, 1000)) {
                Ok(()) => sent += 1000,
                Err(e) if wire::is_timeout(&e) => {
                    blocked = true;
                    break;
                }
                Err(e) => return Err(format!("write failed after {sent}: {e}")),
            }
        }
        let took = start.elapsed();
        // Hold it, still not reading, for the rest of the window.
        while ctx.sleep(Duration::from_millis(50)) {}
        // Then read what the hub answered.
        let paused_during = paused(ctx.metrics()) - paused_before;
        let answered = count_replies(std::slice::from_mut(&mut s));
        Ok((sent, blocked, took, answered, paused_during))
    });
    match r {
        Ok((sent, blocked, took, answered, paused)) => {
            t.peer(format!(
                "wrote {sent} of {N} publishes in {:.2} s{}; paused {paused} times; {answered} replies waiting when it finally read",
                took.as_secs_f64(),
                if blocked { ", then the hub stopped reading it" } else { "" }
            ));
            // Back-pressure or an answer for everything: the hub either
            // paused this connection at its caps, or kept up and answered
            // all it was sent (the kernel holding the unread replies).
            t.check(
                paused >= 1.0 || answered == sent,
                format!("{answered} of {sent} answered and the connection never paused"),
            );
        }
        Err(e) => t.check(false, format!("attacker: {e}")),
    }
    t.expect(
        "pinion_paused_total",
        Cmp::AtLeast(0.0),
        "paused (back-pressure)",
    );
}

fn req_never_read(t: &mut Trial) {
    const CONNS: usize = 200;
    const EACH: u64 = 500;
    let to = t.addrs.publ;
    let r = t.attack(|ctx| {
        let mut conns = Vec::new();
        let mut errors = 0;
        for i in 0..CONNS {
            match req_conn_small_rcvbuf(wire::src(i % 4), to) {
                Ok(s) => conns.push(s),
                Err(_) => errors += 1,
            }
        }
        let mut written = 0u64;
        for (i, s) in conns.iter_mut().enumerate() {
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let mut id = [0xc0; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            if s.write_all(&publishes(&id, 1, EACH)).is_ok() {
                written += EACH;
            }
        }
        while ctx.sleep(Duration::from_millis(50)) {}
        let answered = count_replies(&mut conns);
        (conns.len(), errors, written, answered)
    });
    let (n, errors, written, answered) = r;
    t.peer(format!(
        "{n} connections ({errors} failed), {written} publishes written; {answered} replies waiting when they finally read"
    ));
    t.check(errors == 0, format!("{errors} attacker connections failed"));
    t.expect("pinion_paused_total", Cmp::AtLeast(0.0), "paused");
    t.expect(hub::refused_any("pub"), Cmp::AtMost(0.0), "refused (pub)");
}

/// The number of distinct client ids for `million_client_ids`
/// (`PINION_HOSTILE_CLIENT_IDS`, default 1,000,000; CI uses the default).
fn client_id_count() -> u64 {
    std::env::var("PINION_HOSTILE_CLIENT_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A publisher that keeps up to `window` requests in flight on one
/// connection; each request is `make(i)` for i in `range`.
struct Pipelined {
    acks: AtomicU64,
    nacks: Mutex<BTreeMap<i32, u64>>,
    answered: AtomicU64,
    failed: Mutex<Option<String>>,
}

fn run_pipelined(
    from: std::net::Ipv4Addr,
    to: SocketAddr,
    range: std::ops::Range<u64>,
    window: u64,
    make: impl Fn(u64) -> Vec<u8>,
    p: &Pipelined,
) {
    let s = match wire::sp_connect(from, to, wire::sp::REQ, wire::sp::REP) {
        Ok(s) => s,
        Err(e) => {
            *p.failed.lock().unwrap() = Some(format!("connect: {e}"));
            return;
        }
    };
    let total = range.end - range.start;
    // Replies read on this connection; the writer keeps at most `window`
    // requests unanswered.
    let answered_here = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let mut rd = s.try_clone().unwrap();
        let _ = rd.set_read_timeout(Some(Duration::from_millis(200)));
        let (answered_here, done) = (&answered_here, &done);
        sc.spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 << 10];
            let mut quiet = Instant::now();
            while answered_here.load(Ordering::Acquire) < total {
                match rd.read(&mut chunk) {
                    Ok(0) => {
                        *p.failed.lock().unwrap() = Some("the hub closed the connection".into());
                        break;
                    }
                    Ok(n) => {
                        quiet = Instant::now();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    Err(e) if wire::is_timeout(&e) => {
                        if quiet.elapsed() > Duration::from_secs(30) {
                            *p.failed.lock().unwrap() = Some("no reply for 30 s".into());
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        *p.failed.lock().unwrap() = Some(format!("read: {e}"));
                        break;
                    }
                }
                for f in wire::take_sp_frames(&mut buf, 1 << 20).unwrap_or_default() {
                    answered_here.fetch_add(1, Ordering::AcqRel);
                    p.answered.fetch_add(1, Ordering::AcqRel);
                    match wire::decode_reply(&f) {
                        Ok((_, Answer::Ack { .. })) => {
                            p.acks.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok((_, Answer::Nack { code, .. })) => {
                            *p.nacks.lock().unwrap().entry(code).or_insert(0) += 1;
                        }
                        Err(_) => *p.nacks.lock().unwrap().entry(-1).or_insert(0) += 1,
                    }
                }
            }
            done.store(true, Ordering::Release);
        });
        let mut w = s;
        let _ = w.set_write_timeout(Some(Duration::from_secs(30)));
        let mut next = range.start;
        while next < range.end && !done.load(Ordering::Acquire) {
            let inflight = (next - range.start) - answered_here.load(Ordering::Acquire);
            if inflight + 64 > window {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let batch_end = (next + (window - inflight)).min(next + 256).min(range.end);
            let mut buf = Vec::with_capacity(((batch_end - next) * 80) as usize);
            for i in next..batch_end {
                buf.extend_from_slice(&wire::sp_frame(&make(i)));
            }
            if let Err(e) = w.write_all(&buf) {
                *p.failed.lock().unwrap() = Some(format!("write: {e}"));
                break;
            }
            next = batch_end;
        }
    });
}

fn million_ids(t: &mut Trial) {
    let count = client_id_count();
    const CONNS: u64 = 4;
    const MAX_SESSIONS: f64 = 100_000.0;
    let to = t.addrs.publ;
    let (took, acks, nacks, failed, samples) = t.attack(|ctx| {
        let p = Pipelined {
            acks: AtomicU64::new(0),
            nacks: Mutex::new(BTreeMap::new()),
            answered: AtomicU64::new(0),
            failed: Mutex::new(None),
        };
        let start = Instant::now();
        // (time, pinion_logged_total, pinion_sessions) every 250 ms.
        let samples = Mutex::new(Vec::<(Instant, f64, f64)>::new());
        let finished = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for c in 0..CONNS {
                let p = &p;
                let per = count / CONNS;
                let range = c * per..if c == CONNS - 1 { count } else { (c + 1) * per };
                sc.spawn(move || {
                    run_pipelined(
                        wire::src(c as usize),
                        to,
                        range,
                        512,
                        |i| {
                            let mut id = [0u8; 16];
                            id[..8].copy_from_slice(b"million-");
                            id[8..].copy_from_slice(&i.to_be_bytes());
                            wire::req_body(
                                i as u32,
                                &wire::publish(&id, 1, b"hostile/ids", &i.to_be_bytes()),
                            )
                        },
                        p,
                    )
                });
            }
            // Watch the hub's session count while they publish.
            sc.spawn(|| {
                while !finished.load(Ordering::Acquire) {
                    if let Ok(m) = ctx.metrics() {
                        if let (Some(l), Some(s)) =
                            (m.get("pinion_logged_total"), m.get("pinion_sessions"))
                        {
                            samples.lock().unwrap().push((Instant::now(), l, s));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            // Wait for the publishers (the scope joins them), then stop
            // the watcher.
            while p.answered.load(Ordering::Acquire) < count && p.failed.lock().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            finished.store(true, Ordering::Release);
        });
        let nacks = p.nacks.lock().unwrap().clone();
        let failed = p.failed.lock().unwrap().clone();
        (
            start.elapsed(),
            p.acks.load(Ordering::Acquire),
            nacks,
            failed,
            samples.into_inner().unwrap(),
        )
    });
    let rate = acks as f64 / took.as_secs_f64();
    // The cap is applied after every commit group (a group is at most
    // 16,384 + 512 requests, each at most one new session), and what is
    // left at checkpoints: at any moment at most max_sessions plus two
    // groups. The RSS allowance keeps the older, looser rule (max_sessions
    // plus the records logged in the two seconds before, when the cap was
    // applied at checkpoints only) as a ceiling; the sessions themselves
    // are checked against the tight one.
    let max_sessions = samples.iter().map(|x| x.2).fold(0.0, f64::max);
    let mut worst: Option<(f64, f64)> = None;
    let mut largest_bound = MAX_SESSIONS;
    for (i, &(at, logged, sessions)) in samples.iter().enumerate() {
        let before = samples[..i]
            .iter()
            .rev()
            .find(|x| at.duration_since(x.0) >= Duration::from_secs(2))
            .map(|x| x.1)
            .unwrap_or(0.0);
        let bound = MAX_SESSIONS + (logged - before) + 1000.0;
        largest_bound = largest_bound.max(bound);
        if sessions > bound && worst.is_none_or(|w| sessions - bound > w.0 - w.1) {
            worst = Some((sessions, bound));
        }
    }
    t.peer(format!(
        "{acks} of {count} acked in {:.1} s ({rate:.0}/s), nacks {nacks:?}; pinion_sessions at most {max_sessions} (cap {MAX_SESSIONS}, applied after each commit group)",
        took.as_secs_f64()
    ));
    // Memory: the sessions that rule allows, at 1 KiB each (220 B of
    // session, the rest the table's spare capacity after it grew), the
    // fan-out backlog cap on both cores, and 32 MiB for everything else
    // (requests in flight, the checkpoint's batch for SQLite).
    t.set_rss_allowance_mib(
        largest_bound / 1024.0 + 2.0 * 4.0 + 32.0,
        format!("{largest_bound:.0} sessions × 1 KiB + 2 × 4 MiB fan-out backlog + 32 MiB"),
    );
    t.check(failed.is_none(), format!("attacker: {failed:?}"));
    t.check(
        acks == count,
        format!("only {acks} of {count} acked: {nacks:?}"),
    );
    t.check(
        samples.len() >= 4,
        format!("only {} samples of pinion_sessions", samples.len()),
    );
    t.check(
        worst.is_none(),
        format!(
            "pinion_sessions {worst:?} (sessions, bound): over max_sessions plus 2 s of arrivals"
        ),
    );
    let tight = MAX_SESSIONS + 2.0 * (16_384.0 + 512.0);
    t.check(
        max_sessions <= tight,
        format!(
            "pinion_sessions reached {max_sessions}, over max_sessions + two commit groups ({tight})"
        ),
    );
    // Every client beyond the cap was forgotten (the legitimate one is a
    // session too).
    t.expect(
        "pinion_sessions_forgotten_total",
        Cmp::AtLeast((count as f64 - MAX_SESSIONS).max(0.0)),
        "sessions_forgotten",
    );
}

fn invalid_topic(t: &mut Trial, over_ws: bool) {
    const RATE: u64 = 500;
    let a = t.addrs;
    let bad_topic: &[u8] = b"bad/\xff\xfe";
    let r = t.attack(
        |ctx| -> Result<(u64, BTreeMap<String, u64>, bool, u64), String> {
            // A subscriber of `bad/` sees whether anything got through.
            let mut watcher = match wire::ws_connect(
                wire::src(1),
                a.http,
                "/sub?topic=bad%2F&from=0",
                None,
                None,
                None,
            ) {
                Ok(Upgraded::Yes(ws)) => ws,
                _ => return Err("watcher subscriber refused".into()),
            };
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            let mut tally = |a: Answer| {
                let k = match a {
                    Answer::Nack { code, .. } if code == wire::MALFORMED => {
                        "NACK MALFORMED".to_string()
                    }
                    other => format!("{other:?}"),
                };
                *answers.entry(k).or_insert(0) += 1;
            };
            let sent;
            let still_open;
            if over_ws {
                let mut ws = match wire::ws_connect(
                    wire::src(0),
                    a.http,
                    "/pub",
                    None,
                    Some("rep.sp.nanomsg.org"),
                    None,
                ) {
                    Ok(Upgraded::Yes(ws)) => ws,
                    _ => return Err("/pub upgrade refused".into()),
                };
                let (n, _) = paced(ctx, RATE, 100_000, |i| {
                    let body = wire::req_body(
                        i as u32 + 1,
                        &wire::publish(&[0xcd; 16], i + 1, bad_topic, b"x"),
                    );
                    if ws.send(true, 0x2, &body).is_err() {
                        return false;
                    }
                    // One at a time: read its answer.
                    match ws.read_frame(1 << 20) {
                        Ok(f) if f.opcode == 0x2 => {
                            if let Ok((_, a)) = wire::decode_reply(&f.payload) {
                                tally(a);
                            }
                            true
                        }
                        _ => false,
                    }
                });
                sent = n;
                still_open = ws.send(true, 0x9, b"still there?").is_ok()
                    && matches!(ws.read_frame(1 << 20), Ok(f) if f.opcode == 0xA);
            } else {
                let mut s = wire::sp_connect(wire::src(0), a.publ, wire::sp::REQ, wire::sp::REP)
                    .map_err(|e| e.to_string())?;
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 << 10];
                let (n, _) = paced(ctx, RATE, 100_000, |i| {
                    let body = wire::req_body(
                        i as u32 + 1,
                        &wire::publish(&[0xcd; 16], i + 1, bad_topic, b"x"),
                    );
                    if s.write_all(&wire::sp_frame(&body)).is_err() {
                        return false;
                    }
                    // One at a time: read its answer.
                    loop {
                        if let Ok(mut f) = wire::take_sp_frames(&mut buf, 1 << 20) {
                            if let Some(f) = f.pop() {
                                if let Ok((_, a)) = wire::decode_reply(&f) {
                                    tally(a);
                                }
                                return true;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return false,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
                sent = n;
                // A NACK never closes the connection: a good publish still works.
                let body = wire::req_body(
                    999_999,
                    &wire::publish(&[0xcd; 16], 999_999, b"good/topic", b"x"),
                );
                still_open = s.write_all(&wire::sp_frame(&body)).is_ok() && {
                    let mut got = None;
                    while got.is_none() {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        got = wire::take_sp_frames(&mut buf, 1 << 20)
                            .ok()
                            .and_then(|mut f| f.pop());
                    }
                    matches!(
                        got.map(|f| wire::decode_reply(&f)),
                        Some(Ok((_, Answer::Ack { .. })))
                    )
                };
            }
            // Nothing reached the `bad/` subscriber.
            let _ = watcher.s.set_read_timeout(Some(Duration::from_millis(300)));
            let mut leaked = 0;
            while let Ok(f) = watcher.read_frame(1 << 20) {
                if f.opcode == 0x2 {
                    leaked += 1;
                }
            }
            Ok((sent, answers, still_open, leaked))
        },
    );
    match r {
        Ok((n, answers, still_open, leaked)) => {
            t.peer(format!(
                "{n} publishes: {answers:?}; connection still usable after: {still_open}; delivered to a bad/ subscriber: {leaked}"
            ));
            t.check(
                answers.get("NACK MALFORMED") == Some(&n),
                format!("expected NACK MALFORMED for all {n}"),
            );
            t.check(
                still_open,
                "the connection did not survive its NACKs (a NACK never closes it)",
            );
            t.check(
                leaked == 0,
                format!("{leaked} invalid topics were delivered"),
            );
            t.expect("pinion_nacks_total", Cmp::AtLeast(n as f64), "nacks");
        }
        Err(e) => t.check(false, format!("attacker: {e}")),
    }
}
