//! Connection-level attacks on all three ports: slow and half-open
//! handshakes, connection caps per source and per port, churn.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::attack::{endings, open_many, paced, watch, Held, Pacer, Port};
use crate::hub;
use crate::trial::{Cmp, Spec, Trial};
use crate::wire::{self, Upgraded};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "control_no_attack",
            what: "no attack (the harness's own noise: all three windows are baselines)",
            spec: || Spec::new("", 16),
            run: control,
        },
        Case {
            name: "slowloris_http",
            what: "slowloris on the HTTP port: 200 connections (4 sources) send a head a line every 0.4 s and never end it; handshake_timeout 2 s",
            spec: || Spec::new("handshake_timeout_ms = 2000", 32),
            run: |t| slowloris(t, Port::Http),
        },
        Case {
            name: "slowloris_pub",
            what: "slowloris on the publisher port: 200 connections send the SP header a byte every 0.4 s, never its last byte; handshake_timeout 2 s",
            spec: || Spec::new("handshake_timeout_ms = 2000", 32),
            run: |t| slowloris(t, Port::Pub),
        },
        Case {
            name: "slowloris_sub",
            what: "slowloris on the subscriber port: as on the publisher port, with SUB's header",
            spec: || Spec::new("handshake_timeout_ms = 2000", 32),
            run: |t| slowloris(t, Port::Sub),
        },
        Case {
            name: "one_byte_per_second_http",
            what: "60 connections (one source) send an HTTP head at 1 byte/s; default handshake_timeout (10 s)",
            spec: || Spec::new("", 32),
            run: one_byte_per_second,
        },
        Case {
            name: "half_open_5000_http",
            what: "5,000 connections (100 sources × 50, opened at 2,500/s) that never send a byte, on the HTTP port; handshake_timeout 3 s",
            spec: || Spec::new("handshake_timeout_ms = 3000", 48),
            run: |t| half_open(t, Port::Http),
        },
        Case {
            name: "half_open_5000_pub",
            what: "the same on the publisher port",
            spec: || Spec::new("handshake_timeout_ms = 3000", 48),
            run: |t| half_open(t, Port::Pub),
        },
        Case {
            name: "half_open_5000_sub",
            what: "the same on the subscriber port",
            spec: || Spec::new("handshake_timeout_ms = 3000", 48),
            run: |t| half_open(t, Port::Sub),
        },
        Case {
            name: "source_cap_pub_1bps",
            what: "1,100 publisher connections (1,000/s) from one source complete the SP header, then send a publish at 1 byte/s (default cap 1,024 per source)",
            spec: || Spec::new("", 64),
            run: source_cap_pub,
        },
        Case {
            name: "source_cap_http",
            what: "1,100 idle WebSocket subscribers (1,000/s) from one source (default cap 1,024 per source)",
            spec: || Spec::new("", 64),
            run: source_cap_http,
        },
        Case {
            name: "control_1024_idle_elsewhere",
            what: "control, no attack on the hub: 1,024 idle TCP connections (1,000/s, one source) to a listener of the test process, held like source_cap_*'s; what open sockets alone do to loopback latency on this machine",
            spec: || Spec::new("", 16),
            run: idle_elsewhere,
        },
        Case {
            name: "source_cap_sub",
            what: "64 SP subscribers from one source with max_connections_per_source = 32",
            spec: || Spec::new("max_connections_per_source = 32", 32),
            run: source_cap_sub,
        },
        Case {
            name: "port_cap_http",
            what: "300 idle WebSocket subscribers (1,000/s, 5 sources) with max_connections = 200",
            spec: || Spec::new("max_connections = 200", 32),
            run: port_cap_http,
        },
        Case {
            name: "churn_10k_per_s",
            what: "10,000 connects per second (open, close at once; two attacker threads) across the three ports from 64 sources",
            spec: || Spec::new("", 32),
            run: churn,
        },
    ]
}

fn control(t: &mut Trial) {
    t.attack(|ctx| while ctx.sleep(Duration::from_millis(50)) {});
    t.expect(
        "pinion_connections_refused_total*",
        Cmp::AtMost(0.0),
        "any refusal",
    );
}

/// The `source_cap_*` cases' connections without the hub: as many idle
/// connections, opened at the same pace from one source, to a listener of
/// the test process that accepts and holds them. The hub sees none of
/// them, so whatever this does to the legitimate traffic's latency is the
/// machine's (open sockets on loopback), not the hub's handling of them.
fn idle_elsewhere(t: &mut Trial) {
    const N: usize = 1024;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let to = listener.local_addr().expect("local addr");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (opened, accepted) = std::thread::scope(|sc| {
        let acceptor = sc.spawn(|| {
            let _ = listener.set_nonblocking(true);
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            held.len()
        });
        let opened = t.attack(|ctx| {
            let mut held = Vec::new();
            let pace = Pacer::new(1000);
            for i in 0..N {
                pace.wait(i);
                if let Ok(s) = wire::connect_from(wire::src(0), to, None) {
                    held.push(s);
                }
            }
            while ctx.sleep(Duration::from_millis(50)) {}
            held.len()
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        (opened, acceptor.join().unwrap_or(0))
    });
    t.peer(format!(
        "{opened} of {N} opened, {accepted} accepted by the test's listener (none to the hub)"
    ));
    t.check(
        opened == N && accepted == N,
        format!("{opened} opened, {accepted} accepted of {N}"),
    );
    t.expect(
        "pinion_connections_refused_total*",
        Cmp::AtMost(0.0),
        "any refusal",
    );
}

/// The attacks' `handshake_timeout` where a case sets it to 2 s.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

fn slowloris(t: &mut Trial, port: Port) {
    // 4 sources × 50: under the per-source handshake cap (64), so every
    // connection is held until the timeout decides.
    const N: usize = 200;
    let to = port.addr(&t.addrs);
    let (first, pieces): (Vec<u8>, Vec<Vec<u8>>) = match port.sp_peer_header() {
        None => (
            format!("GET / HTTP/1.1\r\nHost: {to}\r\n").into_bytes(),
            (1..=3)
                .map(|i| format!("X-Slow-{i}: a\r\n").into_bytes())
                .collect(),
        ),
        // Half the SP header, then one byte at a time, never the last.
        Some(h) => (h[..4].to_vec(), (4..7).map(|i| vec![h[i]]).collect()),
    };
    let (held, failed) = t.attack(|_ctx| {
        let (mut held, failed) = open_many(N, 0, 4, to, &first);
        // The trickle ends at 1.2 s: a hub that restarted its timer on
        // every read would close them at 3.2 s, not at 2 s.
        for p in &pieces {
            std::thread::sleep(Duration::from_millis(400));
            for h in held.iter_mut() {
                h.send(p);
            }
        }
        watch(
            &mut held,
            SHORT_TIMEOUT + Duration::from_secs(3),
            Duration::from_millis(50),
        );
        (held, failed)
    });
    let e = endings(&held);
    t.peer(e.to_string());
    t.check(
        failed == 0,
        format!("{failed} attacker connections could not be opened"),
    );
    t.check(
        e.still_open == 0,
        format!("{} connections still open after 5 s", e.still_open),
    );
    let (lo, hi) = (
        SHORT_TIMEOUT - Duration::from_millis(150),
        SHORT_TIMEOUT + Duration::from_millis(900),
    );
    t.check(
        e.earliest.is_some_and(|x| x >= lo) && e.latest.is_some_and(|x| x <= hi),
        format!("closed between {:?} and {:?} after opening; the whole-head timeout is {SHORT_TIMEOUT:?}", e.earliest, e.latest),
    );
    if port == Port::Http {
        t.check(
            e.statuses.get(&408) == Some(&N),
            format!("expected 408 Request Timeout on all {N}: {e}"),
        );
    }
    t.expect_refused(port.label(), "handshake_timeout", N as u64);
}

fn one_byte_per_second(t: &mut Trial) {
    const N: usize = 60;
    let to = t.addrs.http;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {to}\r\nX-Drip: {}\r\n\r\n",
        "d".repeat(40)
    );
    let held = t.attack(|_ctx| {
        let (mut held, _) = open_many(N, 0, 1, to, &head.as_bytes()[..1]);
        let start = Instant::now();
        let mut next = 1;
        // One byte per second on each, until the hub has closed them all
        // or 13 s have passed (the default timeout is 10 s).
        // Each connection is polled every 50 ms between bytes, so a close
        // is timed to within 50 ms, not to the next byte a second later.
        while start.elapsed() < Duration::from_secs(13) && next < head.len() {
            let due = start + Duration::from_secs(next as u64);
            while Instant::now() < due {
                std::thread::sleep(Duration::from_millis(50));
                held.iter_mut().for_each(|h| {
                    h.poll();
                });
            }
            for h in held.iter_mut() {
                h.send(&head.as_bytes()[next..next + 1]);
            }
            next += 1;
            if held.iter_mut().all(|h| h.poll()) {
                break;
            }
        }
        watch(
            &mut held,
            Duration::from_secs(13),
            Duration::from_millis(50),
        );
        held
    });
    let e = endings(&held);
    t.peer(e.to_string());
    t.check(
        e.still_open == 0,
        format!("{} still open after 13 s", e.still_open),
    );
    let (lo, hi) = (Duration::from_millis(9_800), Duration::from_millis(11_000));
    t.check(
        e.earliest.is_some_and(|x| x >= lo) && e.latest.is_some_and(|x| x <= hi),
        format!(
            "closed between {:?} and {:?} after opening; the default whole-head timeout is 10 s",
            e.earliest, e.latest
        ),
    );
    t.check(
        e.statuses.get(&408) == Some(&N),
        format!("expected 408 on all {N}: {e}"),
    );
    t.expect_refused("http", "handshake_timeout", N as u64);
}

fn half_open(t: &mut Trial, port: Port) {
    const N: usize = 5000;
    // 100 sources × 50, so only the port-wide handshake cap (1,024)
    // applies, not the per-source one (64).
    const SOURCES: usize = 100;
    const MAX_HANDSHAKES: usize = 1024;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let to = port.addr(&t.addrs);
    let (held, failed, opening) = t.attack(|_ctx| {
        let start = Instant::now();
        // 2,500 a second (2 s for all): an attacker that stresses the hub,
        // not one that takes a core from everybody with a burst.
        let mut held = Vec::with_capacity(N);
        let mut failed = 0;
        for i in 0..N {
            let due = start + Duration::from_micros(400 * i as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            match wire::connect_from(wire::src(i % SOURCES), to, None) {
                Ok(s) => held.push(Held::new(s)),
                Err(_) => failed += 1,
            }
        }
        let opening = start.elapsed();
        watch(
            &mut held,
            opening + TIMEOUT + Duration::from_secs(3),
            Duration::from_millis(200),
        );
        (held, failed, opening)
    });
    let e = endings(&held);
    t.peer(e.to_string());
    t.note(format!(
        "opening {} connections took {:.2} s",
        N - failed,
        opening.as_secs_f64()
    ));
    t.check(
        failed <= N / 100,
        format!("{failed} of {N} attacker connections could not be opened"),
    );
    t.check(
        e.still_open == 0,
        format!("{} still open 3 s after the timeout", e.still_open),
    );
    if port == Port::Http {
        let (s503, s408) = (
            e.statuses.get(&503).copied().unwrap_or(0),
            e.statuses.get(&408).copied().unwrap_or(0),
        );
        t.check(
            s503 + s408 == held.len(),
            format!(
                "expected 503 (over the handshake cap) or 408 (timeout) on every connection: {e}"
            ),
        );
        let retry_after = held
            .iter()
            .filter(|h| h.status() == Some(503))
            .all(|h| String::from_utf8_lossy(h.received()).contains("Retry-After: 1"));
        t.check(retry_after, "a 503 without Retry-After: 1");
    }
    t.expect_refused(port.label(), "handshake_cap", (N - MAX_HANDSHAKES) as u64);
    t.expect(
        format!(
            "{} + {}",
            hub::refused(port.label(), "handshake_cap"),
            hub::refused(port.label(), "handshake_timeout")
        ),
        Cmp::AtLeast((N - failed) as f64),
        format!("`handshake_cap` + `handshake_timeout` ({})", port.label()),
    );
}

fn source_cap_pub(t: &mut Trial) {
    const N: usize = 1100;
    const CAP: usize = 1024;
    let to = t.addrs.publ;
    let (accepted, refused, other_source_ok) = t.attack(|ctx| {
        let mut accepted = Vec::new();
        let mut refused = 0;
        let pace = Pacer::new(1000); // connections a second
        for i in 0..N {
            pace.wait(i);
            match wire::sp_connect(wire::src(0), to, wire::sp::REQ, wire::sp::REP) {
                Ok(s) => accepted.push(Held::new(s)),
                Err(_) => refused += 1,
            }
        }
        // The cap is per source: another address still gets in.
        let other_source_ok =
            wire::sp_connect(wire::src(1), to, wire::sp::REQ, wire::sp::REP).is_ok();
        // Each accepted connection sends a publish one byte per second.
        let frame = wire::sp_frame(&wire::req_body(
            1,
            &wire::publish(&[7; 16], 1, b"drip", &[0; 64]),
        ));
        let mut i = 0;
        while ctx.sleep(Duration::from_secs(1)) && i < frame.len() {
            for h in accepted.iter_mut() {
                h.send(&frame[i..i + 1]);
            }
            i += 1;
        }
        let still = accepted
            .iter_mut()
            .map(|h| h.poll())
            .filter(|closed| !closed)
            .count();
        (still, refused, other_source_ok)
    });
    t.peer(format!(
        "{accepted} of {N} held, {refused} closed before the SP header"
    ));
    t.check(
        accepted <= CAP,
        format!("{accepted} connections from one source held (cap {CAP})"),
    );
    t.check(refused >= N - CAP, format!("only {refused} refused"));
    t.check(
        other_source_ok,
        "another source could not connect while one was at its cap",
    );
    t.expect_refused("pub", "source_cap", (N - CAP) as u64);
}

fn source_cap_http(t: &mut Trial) {
    const N: usize = 1100;
    const CAP: usize = 1024;
    let to = t.addrs.http;
    let (ok, statuses, errors) = t.attack(|ctx| {
        let mut held = Vec::new();
        let mut statuses = std::collections::BTreeMap::new();
        let mut errors = 0;
        let pace = Pacer::new(1000); // connections a second
        for i in 0..N {
            pace.wait(i);
            match wire::ws_connect(wire::src(0), to, "/sub?topic=idle%2F", None, None, None) {
                Ok(Upgraded::Yes(ws)) => held.push(ws),
                Ok(Upgraded::No(h)) => {
                    let retry = h.header("retry-after");
                    *statuses.entry((h.status, retry)).or_insert(0usize) += 1;
                }
                Err(_) => errors += 1,
            }
        }
        while ctx.sleep(Duration::from_millis(50)) {}
        (held.len(), statuses, errors)
    });
    let refused_503 = statuses
        .iter()
        .filter(|((s, r), _)| *s == 503 && r.as_deref() == Some("1"))
        .map(|(_, n)| n)
        .sum::<usize>();
    t.peer(format!(
        "{ok} upgraded, refused: {statuses:?}, errors {errors}"
    ));
    t.check(
        ok <= CAP,
        format!("{ok} connections from one source upgraded (cap {CAP})"),
    );
    t.check(
        refused_503 >= N - CAP,
        format!(
            "expected ≥{} answers 503 with Retry-After: 1, got {statuses:?}",
            N - CAP
        ),
    );
    t.expect_refused("http", "source_cap", (N - CAP) as u64);
}

fn source_cap_sub(t: &mut Trial) {
    const N: usize = 64;
    const CAP: usize = 32;
    let to = t.addrs.sub;
    let (accepted, refused) = t.attack(|ctx| {
        let mut accepted = Vec::new();
        let mut refused = 0;
        for _ in 0..N {
            match wire::sp_connect(wire::src(0), to, wire::sp::SUB, wire::sp::PUB) {
                Ok(s) => accepted.push(s),
                Err(_) => refused += 1,
            }
        }
        // The accepted ones read what they are sent (so that this case is
        // about the cap, not about slow subscribers).
        let mut chunk = vec![0u8; 64 << 10];
        for s in &accepted {
            let _ = s.set_nonblocking(true);
        }
        while ctx.sleep(Duration::from_millis(10)) {
            for mut s in &accepted {
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        (accepted.len(), refused)
    });
    t.peer(format!(
        "{accepted} of {N} accepted, {refused} closed before the SP header"
    ));
    t.check(
        accepted <= CAP,
        format!("{accepted} from one source accepted (cap {CAP})"),
    );
    t.check(refused >= N - CAP, format!("only {refused} refused"));
    t.expect_refused("sub", "source_cap", (N - CAP) as u64);
}

fn port_cap_http(t: &mut Trial) {
    const N: usize = 300;
    const CAP: usize = 200;
    let to = t.addrs.http;
    let (ok, statuses, errors) = t.attack(|ctx| {
        let mut held = Vec::new();
        let mut statuses = std::collections::BTreeMap::new();
        let mut errors = 0;
        let pace = Pacer::new(1000); // connections a second
        for i in 0..N {
            pace.wait(i);
            match wire::ws_connect(wire::src(i % 5), to, "/sub?topic=idle%2F", None, None, None) {
                Ok(Upgraded::Yes(ws)) => held.push(ws),
                Ok(Upgraded::No(h)) => {
                    *statuses
                        .entry((h.status, h.header("retry-after")))
                        .or_insert(0usize) += 1;
                }
                Err(_) => errors += 1,
            }
        }
        while ctx.sleep(Duration::from_millis(50)) {}
        (held.len(), statuses, errors)
    });
    let refused_503 = statuses
        .iter()
        .filter(|((s, r), _)| *s == 503 && r.as_deref() == Some("1"))
        .map(|(_, n)| n)
        .sum::<usize>();
    t.peer(format!(
        "{ok} upgraded, refused: {statuses:?}, errors {errors}"
    ));
    // The legitimate subscriber holds one of the port's connections.
    t.check(
        ok < CAP,
        format!("{ok} attacker connections upgraded (port cap {CAP}, one taken)"),
    );
    t.check(
        refused_503 > N - CAP,
        format!("expected ≥{} 503 with Retry-After: 1", N - CAP + 1),
    );
    t.expect_refused("http", "port_cap", (N - CAP + 1) as u64);
}

fn churn(t: &mut Trial) {
    const RATE: u64 = 10_000;
    let a = t.addrs;
    let ports = [a.publ, a.sub, a.http];
    let open_before = open_gauges(t);
    let (n, took, errors) = t.attack(|ctx| {
        // Two threads of 5,000/s each (one thread of the debug build
        // reaches about 8,000/s on this machine), 32 sources each.
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2usize)
                .map(|k| {
                    sc.spawn(move || {
                        let mut errors = 0u64;
                        let (n, took) = paced(ctx, RATE / 2, 100_000, |i| {
                            let i = i as usize;
                            let from = wire::src(k * 32 + i % 32);
                            if wire::connect_from(from, ports[i % 3], None).is_err() {
                                errors += 1;
                            }
                            true
                        });
                        (n, took, errors)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, Duration::ZERO, 0), |(n, t, e), (n1, t1, e1)| {
                    (n + n1, t.max(t1), e + e1)
                })
        })
    });
    let rate = n as f64 / took.as_secs_f64();
    t.peer(format!(
        "{n} connections in {:.2} s ({rate:.0}/s), {errors} failed to connect",
        took.as_secs_f64()
    ));
    t.check(
        rate >= 0.9 * RATE as f64,
        format!("the attacker reached only {rate:.0} connects/s"),
    );
    t.check(
        errors <= n / 1000,
        format!("{errors} of {n} connects failed"),
    );
    // Every one of them is gone from the hub's books a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = open_gauges(t);
    while now != open_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = open_gauges(t);
    }
    t.check(
        now == open_before,
        format!("connections open per port {now:?} 5 s later (before: {open_before:?})"),
    );
    for p in ["pub", "sub", "http"] {
        t.expect(
            hub::refused_any(p),
            Cmp::AtLeast(0.0),
            format!("refused ({p}, any reason)"),
        );
    }
}

/// `pinion_connections_open` per port (pub, sub, http).
fn open_gauges(t: &Trial) -> Vec<Option<f64>> {
    match t.metrics() {
        Ok(m) => ["pub", "sub", "http"]
            .iter()
            .map(|p| m.get(&hub::open(p)))
            .collect(),
        Err(_) => vec![None; 3],
    }
}
