//! Attacks through the subscriber side: subscribers that never read or
//! never answer, replays nobody benefits from, filters at the limits and
//! filters that are not UTF-8.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::hub;
use crate::trial::{Cmp, Ctx, Spec, Trial};
use crate::wire::{self, Closing, Upgraded, Ws};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "subscribers_never_read_ws",
            what: "32 WebSocket subscribers (rcvbuf 2 KiB) never read while 2,000 publishes/s of 256 B go to their topic; max_queued_per_subscriber 64 KiB",
            spec: || Spec::new("max_queued_per_subscriber = 65536", 48),
            run: |t| never_read_subs(t, false),
        },
        Case {
            name: "subscribers_never_read_tcp",
            what: "the same with 32 SP subscribers on the subscriber port (they get every topic)",
            spec: || Spec::new("max_queued_per_subscriber = 65536", 48),
            run: |t| never_read_subs(t, true),
        },
        Case {
            name: "replays_100_from_0_nomatch",
            what: "100 concurrent /sub?from=0 on a topic nothing has, over a 50,000-record log (12 MB), reopened as they finish, then 100 dropped at once",
            spec: || Spec::new("", 64),
            run: replays,
        },
        Case {
            name: "sub_64_filters_x1000",
            what: "1,000 WebSocket subscribers (500/s) with 64 distinct 100-byte filters each (and one with 65)",
            spec: || Spec::new("", 96),
            run: many_filters,
        },
        Case {
            name: "invalid_utf8_filter_sub",
            what: "/sub filters that are not UTF-8 (%FF%FE, a lone %C3, a surrogate, past U+10FFFF), 100 subscribers/s, and topics starting with é",
            spec: || Spec::new("", 16),
            run: invalid_filters,
        },
        Case {
            name: "ws_silent_subscriber_dead_peer",
            what: "20 WebSocket subscribers that read everything but never send a byte (no pong); ws_ping_interval 500 ms",
            spec: || Spec::new("ws_ping_interval_ms = 500", 16),
            run: silent_subs,
        },
    ]
}

/// An attacker-side publisher: `rate` publishes per second of `payload`
/// bytes on `topic`, reading (and discarding) its acks, until `stop`.
/// Returns how many it sent.
fn flood_publisher(
    to: SocketAddr,
    from: Ipv4Addr,
    topic: &[u8],
    payload: usize,
    rate: u64,
    stop: &AtomicBool,
) -> u64 {
    let Ok(s) = wire::sp_connect(from, to, wire::sp::REQ, wire::sp::REP) else {
        return 0;
    };
    let mut rd = s.try_clone().unwrap();
    let _ = rd.set_read_timeout(Some(Duration::from_millis(100)));
    let done = AtomicBool::new(false);
    let mut w = s;
    let mut sent = 0u64;
    std::thread::scope(|sc| {
        let done = &done;
        sc.spawn(move || {
            let mut chunk = vec![0u8; 64 << 10];
            while !done.load(Ordering::Acquire) {
                match rd.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if wire::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        });
        let start = Instant::now();
        let body = vec![0x46u8; payload];
        // Batches of 10 every 10/rate seconds.
        while !stop.load(Ordering::Acquire) {
            let due = start + Duration::from_nanos(sent * 1_000_000_000 / rate);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let mut buf = Vec::new();
            for _ in 0..10 {
                sent += 1;
                buf.extend_from_slice(&wire::sp_frame(&wire::req_body(
                    sent as u32,
                    &wire::publish(b"flood-publisher!", sent, topic, &body),
                )));
            }
            if w.write_all(&buf).is_err() {
                break;
            }
        }
        done.store(true, Ordering::Release);
    });
    sent
}

fn never_read_subs(t: &mut Trial, tcp: bool) {
    const N: usize = 32;
    let a = t.addrs;
    let (subs_closed, codes, flooded, counted, took) = t.attack(|ctx| {
        let mut ws_subs: Vec<Ws> = Vec::new();
        let mut tcp_subs: Vec<TcpStream> = Vec::new();
        for _ in 0..N {
            if tcp {
                if let Ok(s) = sp_sub_small(wire::src(0), a.sub) {
                    tcp_subs.push(s);
                }
            } else if let Ok(Upgraded::Yes(ws)) = wire::ws_connect(
                wire::src(0),
                a.http,
                "/sub?topic=flood%2F",
                None,
                None,
                Some(2048),
            ) {
                ws_subs.push(ws);
            }
        }
        let base = ctx
            .metrics()
            .ok()
            .and_then(|m| m.get("pinion_slow_disconnects_total"))
            .unwrap_or(0.0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let mut counted = 0.0;
        let flooded = std::thread::scope(|sc| {
            let h =
                sc.spawn(|| flood_publisher(a.publ, wire::src(1), b"flood/x", 256, 2000, &stop));
            // Until every one of them has been cut (at most 15 s), and at
            // least as long as the window.
            while start.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(200));
                counted = ctx
                    .metrics()
                    .ok()
                    .and_then(|m| m.get("pinion_slow_disconnects_total"))
                    .unwrap_or(0.0)
                    - base;
                if counted >= N as f64 && ctx.stopped() {
                    break;
                }
            }
            stop.store(true, Ordering::Release);
            h.join().unwrap()
        });
        let took = start.elapsed();
        // Now read: each must have been closed (WebSocket: 4008 with the
        // offset to resume from, if the close frame fit in the buffers).
        let mut closed = 0;
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        for mut ws in ws_subs {
            let c = ws.await_close(Duration::from_secs(3));
            if c != Closing::StillOpen {
                closed += 1;
            }
            let k = match c {
                Closing::Frame(code, reason)
                    if code == 4008 && reason.contains("resume from offset") =>
                {
                    "4008 resume from offset N".to_string()
                }
                Closing::Frame(code, reason) => format!("{code} {reason}"),
                other => format!("{other:?}"),
            };
            *codes.entry(k).or_insert(0) += 1;
        }
        for mut s in tcp_subs {
            let e = wire::read_until_closed(&mut s, Duration::from_secs(3));
            if e.closed() {
                closed += 1;
            }
            *codes
                .entry(if e.closed() {
                    "closed".into()
                } else {
                    "still open".into()
                })
                .or_insert(0) += 1;
        }
        (closed, codes, flooded, counted, took)
    });
    t.peer(format!(
        "{subs_closed} of {N} cut ({counted} counted within {:.1} s of a {flooded}-publish flood): {codes:?}",
        took.as_secs_f64()
    ));
    t.check(
        subs_closed == N,
        format!("only {subs_closed} of {N} non-reading subscribers were cut"),
    );
    t.expect(
        "pinion_slow_disconnects_total",
        Cmp::AtLeast(N as f64),
        "slow_disconnects",
    );
}

/// An SP SUB connection with a 2 KiB receive buffer.
fn sp_sub_small(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = wire::connect_from(from, to, Some(2048))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&wire::sp_header(wire::sp::SUB))?;
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    if h != wire::sp_header(wire::sp::PUB) {
        return Err(std::io::Error::other("not PUB"));
    }
    Ok(s)
}

/// Fills the log with `n` records on `fill/` (200-byte payloads), fast.
fn prefill(to: SocketAddr, n: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = wire::sp_connect(wire::src(200), to, wire::sp::REQ, wire::sp::REP)
        .map_err(|e| e.to_string())?;
    let mut rd = s.try_clone().unwrap();
    let _ = rd.set_read_timeout(Some(Duration::from_secs(30)));
    let answered = AtomicU64::new(0);
    std::thread::scope(|sc| {
        let answered = &answered;
        let reader = sc.spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 << 10];
            while answered.load(Ordering::Acquire) < n {
                match rd.read(&mut chunk) {
                    Ok(0) | Err(_) => return Err("prefill: the hub stopped answering".to_string()),
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
                for f in wire::take_sp_frames(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                    match wire::decode_reply(&f) {
                        Ok((_, wire::Answer::Ack { .. })) => {
                            answered.fetch_add(1, Ordering::AcqRel);
                        }
                        other => return Err(format!("prefill: {other:?}")),
                    }
                }
            }
            Ok(())
        });
        let mut seq = 0u64;
        while seq < n {
            if seq - answered.load(Ordering::Acquire) > 4096 {
                if reader.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let mut buf = Vec::new();
            for _ in 0..512.min(n - seq) {
                seq += 1;
                buf.extend_from_slice(&wire::sp_frame(&wire::req_body(
                    seq as u32,
                    &wire::publish(b"prefill-publish!", seq, b"fill/x", &[0x66; 200]),
                )));
            }
            if s.write_all(&buf).is_err() {
                break;
            }
        }
        reader.join().unwrap()
    })?;
    Ok(start.elapsed())
}

fn replays(t: &mut Trial) {
    const LOG: u64 = 50_000;
    const N: usize = 100;
    const MAX_REPLAYS: f64 = 16.0;
    match prefill(t.addrs.publ, LOG) {
        Ok(d) => t.note(format!(
            "prefilled {LOG} records in {:.1} s",
            d.as_secs_f64()
        )),
        Err(e) => {
            t.check(false, e);
            return;
        }
    }
    let a = t.addrs;
    let open_batch = || -> Vec<Ws> {
        (0..N)
            .filter_map(|i| {
                match wire::ws_connect(
                    wire::src(i % 4),
                    a.http,
                    "/sub?topic=nomatch%2F&from=0",
                    None,
                    None,
                    None,
                ) {
                    Ok(Upgraded::Yes(ws)) => Some(ws),
                    _ => None,
                }
            })
            .collect()
    };
    let gauges = |ctx: &Ctx<'_>| -> Option<(f64, f64)> {
        let m = ctx.metrics().ok()?;
        Some((
            m.get("pinion_replays_active")?,
            m.get("pinion_replays_waiting")?,
        ))
    };
    let r = t.attack(|ctx| {
        let (mut max_active, mut max_waiting) = (0.0f64, 0.0f64);
        let mut rounds = 0;
        let mut opened = 0;
        let mut seen = false;
        // Batches of 100 until the window ends: each batch is held until
        // its replays are done (nothing waiting or active), then closed.
        while rounds == 0 || !ctx.stopped() {
            let batch = open_batch();
            opened += batch.len();
            let start = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let Some((act, wait)) = gauges(ctx) else {
                    continue;
                };
                seen = true;
                max_active = max_active.max(act);
                max_waiting = max_waiting.max(wait);
                if (act == 0.0 && wait == 0.0) || start.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            drop(batch);
            rounds += 1;
        }
        // Finally 100 more, opened all at once (4 threads) and dropped
        // while most are still waiting for a turn.
        let batch: Vec<Ws> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|k| {
                    sc.spawn(move || {
                        (0..N / 4)
                            .filter_map(|_| {
                                match wire::ws_connect(
                                    wire::src(4 + k),
                                    a.http,
                                    "/sub?topic=nomatch%2F&from=0",
                                    None,
                                    None,
                                    None,
                                ) {
                                    Ok(Upgraded::Yes(ws)) => Some(ws),
                                    _ => None,
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        opened += batch.len();
        let waiting_at_drop = gauges(ctx).map(|g| g.1).unwrap_or(0.0);
        drop(batch);
        (
            rounds,
            opened,
            max_active,
            max_waiting,
            waiting_at_drop,
            seen,
        )
    });
    let (rounds, opened, max_active, max_waiting, waiting_at_drop, seen) = r;
    t.peer(format!(
        "{opened} replays in {rounds} rounds + 1 dropped; at most {max_active} active and {max_waiting} waiting; {waiting_at_drop} waiting when the last 100 left"
    ));
    t.check(
        seen,
        "pinion_replays_active / pinion_replays_waiting not in /metrics",
    );
    t.check(
        opened == (rounds + 1) * N,
        format!("only {opened} of {} subscribers upgraded", (rounds + 1) * N),
    );
    t.check(
        max_active <= MAX_REPLAYS,
        format!("{max_active} replays read at once (max_replays {MAX_REPLAYS})"),
    );
    t.check(
        max_waiting >= 1.0,
        "no replay ever waited for a turn: the cap was not reached",
    );
    // Subscribers that leave while their replay is unfinished (waiting,
    // reading, or catching up with the moving head) have it cancelled.
    t.expect(
        "pinion_replays_cancelled_total",
        Cmp::AtLeast(1.0),
        "replays_cancelled",
    );
}

fn many_filters(t: &mut Trial) {
    const N: usize = 1000;
    let a = t.addrs;
    let (ok, refused, too_many) = t.attack(|ctx| {
        let mut rng = wire::Lcg(42);
        let mut held = Vec::new();
        let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
        let query = |rng: &mut wire::Lcg, k: usize| -> String {
            let mut q = String::from("/sub?");
            for j in 0..k {
                let name: String = (0..100)
                    .map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char)
                    .collect();
                if j > 0 {
                    q.push('&');
                }
                q.push_str("topic=");
                q.push_str(&name);
            }
            q
        };
        let pace = crate::attack::Pacer::new(500); // subscribers a second
        for i in 0..N {
            pace.wait(i);
            let q = query(&mut rng, 64);
            match wire::ws_connect(wire::src(i % 4), a.http, &q, None, None, None) {
                Ok(Upgraded::Yes(ws)) => held.push(ws),
                Ok(Upgraded::No(h)) => *refused.entry(h.status).or_insert(0) += 1,
                Err(_) => *refused.entry(0).or_insert(0) += 1,
            }
        }
        let q = query(&mut rng, 65);
        let too_many = match wire::ws_connect(wire::src(5), a.http, &q, None, None, None) {
            Ok(Upgraded::Yes(_)) => 101,
            Ok(Upgraded::No(h)) => h.status,
            Err(_) => 0,
        };
        while ctx.sleep(Duration::from_millis(50)) {}
        (held.len(), refused, too_many)
    });
    t.peer(format!(
        "{ok} of {N} subscribed with 64 filters (refused: {refused:?}); 65 filters: {too_many}"
    ));
    t.check(
        ok == N,
        format!("only {ok} of {N} subscribers with 64 filters were accepted: {refused:?}"),
    );
    t.check(
        too_many == 400,
        format!("65 filters got {too_many}, not 400"),
    );
    t.expect_refused("http", "malformed", 1);
}

fn invalid_filters(t: &mut Trial) {
    let a = t.addrs;
    let r = t.attack(|ctx| -> Result<_, String> {
        let sub = |q: &str| match wire::ws_connect(wire::src(0), a.http, q, None, None, None) {
            Ok(Upgraded::Yes(ws)) => Ok(ws),
            Ok(Upgraded::No(h)) => Err(format!("{q}: {}", h.status)),
            Err(e) => Err(format!("{q}: {e}")),
        };
        // Filters are byte prefixes (HUB-WEB.md): 0xC3 is the first byte
        // of "é", so it must match "é/x"; 0xFF 0xFE starts no UTF-8 topic.
        let mut half = sub("/sub?topic=%C3")?;
        let mut never = sub("/sub?topic=%FF%FE")?;
        // Churn of subscribers with other broken filters.
        let filters = [
            "%FF",
            "%C3%28",
            "%ED%A0%80",
            "%F4%90%80%80",
            "%FF%FE&topic=%C3",
        ];
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        let stop = AtomicBool::new(false);
        let published = std::thread::scope(|sc| {
            let h = sc
                .spawn(|| flood_publisher(a.publ, wire::src(1), "é/x".as_bytes(), 16, 200, &stop));
            let (n, _) = crate::attack::paced(ctx, 100, 20_000, |i| {
                let q = format!("/sub?topic={}", filters[i as usize % filters.len()]);
                let st = match wire::ws_connect(wire::src(2), a.http, &q, None, None, None) {
                    Ok(Upgraded::Yes(_)) => 101,
                    Ok(Upgraded::No(h)) => h.status,
                    Err(_) => 0,
                };
                *statuses.entry(st).or_insert(0) += 1;
                true
            });
            let _ = n;
            stop.store(true, Ordering::Release);
            h.join().unwrap()
        });
        // Count what each of the two received.
        let count = |ws: &mut Ws| -> (u64, Vec<String>) {
            let _ = ws.s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut n = 0;
            let mut topics = Vec::new();
            while let Ok(f) = ws.read_frame(1 << 20) {
                if f.opcode == 0x2 {
                    n += 1;
                    let nul = f.payload.iter().position(|&b| b == 0).unwrap_or(0);
                    let tp = String::from_utf8_lossy(&f.payload[..nul]).into_owned();
                    if !topics.contains(&tp) {
                        topics.push(tp);
                    }
                }
            }
            (n, topics)
        };
        let (got_half, topics_half) = count(&mut half);
        let (got_never, _) = count(&mut never);
        Ok((published, got_half, topics_half, got_never, statuses))
    });
    match r {
        Ok((published, got_half, topics_half, got_never, statuses)) => {
            t.peer(format!(
                "published {published} on é/x: %C3 got {got_half} {topics_half:?}, %FF%FE got {got_never}; other broken filters: {statuses:?}"
            ));
            t.check(
                got_half == published,
                format!("the %C3 subscriber got {got_half} of {published}"),
            );
            t.check(
                got_never == 0,
                format!("the %FF%FE subscriber got {got_never}"),
            );
            t.check(
                statuses.keys().all(|&s| s == 101),
                format!("byte-prefix filters must be accepted: {statuses:?}"),
            );
        }
        Err(e) => t.check(false, format!("attacker: {e}")),
    }
    t.expect(hub::refused_any("http"), Cmp::AtMost(0.0), "refused (http)");
}

fn silent_subs(t: &mut Trial) {
    const N: usize = 20;
    let a = t.addrs;
    let (ends, pinged) = t.attack(|_ctx| {
        let mut subs: Vec<(Ws, Instant)> = Vec::new();
        for _ in 0..N {
            if let Ok(Upgraded::Yes(ws)) = wire::ws_connect(
                wire::src(0),
                a.http,
                "/sub?topic=legit%2F",
                None,
                None,
                None,
            ) {
                subs.push((ws, Instant::now()));
            }
        }
        // Read everything they are sent, answer nothing, until each is
        // closed (or 6 s).
        let mut ends: Vec<Option<(Duration, String)>> = vec![None; subs.len()];
        let mut pinged = vec![false; subs.len()];
        for (ws, _) in subs.iter_mut() {
            let _ = ws.s.set_read_timeout(Some(Duration::from_millis(5)));
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) && ends.iter().any(|e| e.is_none()) {
            for (i, (ws, opened)) in subs.iter_mut().enumerate() {
                if ends[i].is_some() {
                    continue;
                }
                loop {
                    match ws.read_frame(1 << 20) {
                        Ok(f) if f.opcode == 0x9 => pinged[i] = true,
                        Ok(f) if f.opcode == 0x8 => {
                            ends[i] = Some((opened.elapsed(), format!("close {}", f.close_code())));
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if wire::is_timeout(&e) => break,
                        Err(e) => {
                            ends[i] = Some((opened.elapsed(), format!("{:?}", e.kind())));
                            break;
                        }
                    }
                }
            }
        }
        (ends, pinged)
    });
    let closed: Vec<&(Duration, String)> = ends.iter().flatten().collect();
    let latest = closed.iter().map(|(d, _)| *d).max();
    let how: BTreeMap<&str, usize> = closed.iter().fold(BTreeMap::new(), |mut m, (_, h)| {
        *m.entry(h.as_str()).or_insert(0) += 1;
        m
    });
    t.peer(format!(
        "{} of {N} dropped (latest after {:?}): {how:?}; pinged first: {}",
        closed.len(),
        latest,
        pinged.iter().filter(|&&p| p).count()
    ));
    t.check(
        closed.len() == N,
        format!(
            "only {} of {N} silent subscribers were dropped",
            closed.len()
        ),
    );
    t.check(
        pinged.iter().all(|&p| p),
        "a silent subscriber was dropped without a ping first",
    );
    // Pinged after 500 ms of silence, dropped 500 ms later: about 1 s.
    t.check(
        latest.is_some_and(|d| d <= Duration::from_millis(2500)),
        format!("dropped only after {latest:?} (ping interval 500 ms)"),
    );
    t.expect_refused("http", "dead_peer", N as u64);
}
