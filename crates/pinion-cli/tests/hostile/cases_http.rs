//! Attacks on the HTTP port's plain routes and its rules: Origin, Host,
//! head size, garbage, readers that never read, a scraper in a loop.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::attack::{paced, watch, Held};
use crate::hub;
use crate::trial::{Cmp, Spec, Trial};
use crate::wire::{self, Upgraded};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "cross_origin_sub",
            what: "WebSocket upgrades of /sub from foreign pages (4 kinds of Origin, 200/s)",
            spec: || Spec::new("", 16),
            run: |t| cross_origin(t, "/sub"),
        },
        Case {
            name: "cross_origin_pub",
            what: "the same on /pub",
            spec: || Spec::new("", 16),
            run: |t| cross_origin(t, "/pub"),
        },
        Case {
            name: "cross_origin_stats",
            what: "the same on /stats",
            spec: || Spec::new("", 16),
            run: |t| cross_origin(t, "/stats"),
        },
        Case {
            name: "bad_host",
            what: "requests with a foreign Host (DNS rebinding) on /, /metrics, /pinion.js and a /sub upgrade, 200/s",
            spec: || Spec::new("", 16),
            run: bad_host,
        },
        Case {
            name: "header_1mb",
            what: "requests with one header of 1 MB (10/s)",
            spec: || Spec::new("", 32),
            run: |t| big_head(t, HeadKind::OneMegabyte),
        },
        Case {
            name: "headers_10000",
            what: "requests with 10,000 headers (10/s)",
            spec: || Spec::new("", 32),
            run: |t| big_head(t, HeadKind::TenThousand),
        },
        Case {
            name: "headers_49",
            what: "requests with 49 small headers, 1.3 KB in all (over the count limit, under the size limit; 100/s)",
            spec: || Spec::new("", 16),
            run: |t| big_head(t, HeadKind::FortyNine),
        },
        Case {
            name: "garbage_http",
            what: "64 random bytes instead of a request (200/s)",
            spec: || Spec::new("", 16),
            run: garbage_http,
        },
        Case {
            name: "metrics_tight_loop",
            what: "GET /metrics in a tight loop, one request after another",
            spec: || Spec::new("", 16),
            run: metrics_loop,
        },
        Case {
            name: "stats_never_read",
            what: "50 /stats readers (rcvbuf 2 KiB) that never read (nor answer pings); write_timeout 1 s, ws_ping_interval 500 ms",
            spec: || Spec::new("write_timeout_ms = 1000\nws_ping_interval_ms = 500", 32),
            run: stats_never_read,
        },
        Case {
            name: "pinion_js_never_read",
            what: "50 downloads of /pinion.js (36 KB; rcvbuf 2 KiB) never read; write_timeout 1 s",
            spec: || Spec::new("write_timeout_ms = 1000", 32),
            run: pinion_js_never_read,
        },
    ]
}

/// Tallies outcomes (HTTP status, 101 for an upgrade, 0 for an error).
fn tally(m: &mut BTreeMap<u16, u64>, status: u16) {
    *m.entry(status).or_insert(0) += 1;
}

/// What an upgrade attempt got: 101, the refusal's status, or 0.
fn upgrade_status(r: std::io::Result<Upgraded>) -> u16 {
    match r {
        Ok(Upgraded::Yes(_)) => 101,
        Ok(Upgraded::No(h)) => h.status,
        Err(_) => 0,
    }
}

fn route_target(route: &str) -> (&'static str, Option<&'static str>) {
    match route {
        "/sub" => ("/sub?topic=legit%2F", None),
        // /pub is SP REQ/REP over WebSocket: the subprotocol is required.
        "/pub" => ("/pub", Some("rep.sp.nanomsg.org")),
        _ => ("/stats", None),
    }
}

fn cross_origin(t: &mut Trial, route: &str) {
    let to = t.addrs.http;
    let (target, proto) = route_target(route);
    let own = format!("http://{to}");
    let evil = [
        "https://evil.example".to_string(),
        "null".to_string(),
        // Look-alikes of the hub's own origin.
        format!("http://{to}.evil.example"),
        format!("https://{to}"),
    ];
    let (n, statuses, own_status) = t.attack(|ctx| {
        // The hub's own pages (same origin) are served: the rule refuses
        // foreign pages, not everything with an Origin.
        let own_status = upgrade_status(wire::ws_connect(
            wire::src(0),
            to,
            target,
            Some(&own),
            proto,
            None,
        ));
        let mut statuses = BTreeMap::new();
        let (n, _) = paced(ctx, 200, 20_000, |i| {
            let o = &evil[i as usize % evil.len()];
            tally(
                &mut statuses,
                upgrade_status(wire::ws_connect(
                    wire::src(1),
                    to,
                    target,
                    Some(o),
                    proto,
                    None,
                )),
            );
            true
        });
        (n, statuses, own_status)
    });
    t.peer(format!(
        "{n} foreign upgrades: {statuses:?}; same-origin upgrade: {own_status}"
    ));
    t.check(
        own_status == 101,
        format!("the hub's own origin got {own_status}, not 101"),
    );
    t.check(
        statuses.get(&403) == Some(&n),
        format!("expected 403 Forbidden on all {n}: {statuses:?}"),
    );
    t.expect_refused("http", "bad_origin", n);
}

fn bad_host(t: &mut Trial) {
    let to = t.addrs.http;
    let port = to.port();
    let hosts = [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
    ];
    let (n, statuses, controls) = t.attack(|ctx| {
        // The hub's own names (with its port, as a browser sends them) are
        // served.
        let controls: Vec<(String, u16)> =
            [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
                .into_iter()
                .map(|h| {
                    let req = format!("GET /healthz HTTP/1.1\r\nHost: {h}\r\n\r\n");
                    let st = wire::http_exchange(
                        wire::src(0),
                        to,
                        req.as_bytes(),
                        Duration::from_secs(5),
                    )
                    .ok()
                    .and_then(|e| e.http_status())
                    .unwrap_or(0);
                    (h, st)
                })
                .collect();
        let mut statuses = BTreeMap::new();
        let (n, _) = paced(ctx, 200, 20_000, |i| {
            let host = &hosts[i as usize % hosts.len()];
            let st = match i % 4 {
                3 => upgrade_status(wire::ws_connect_host(
                    wire::src(1),
                    to,
                    "/sub?topic=legit%2F",
                    host,
                    None,
                    None,
                    None,
                )),
                k => {
                    let path = ["/", "/metrics", "/pinion.js"][k as usize];
                    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
                    wire::http_exchange(wire::src(1), to, req.as_bytes(), Duration::from_secs(5))
                        .ok()
                        .and_then(|e| e.http_status())
                        .unwrap_or(0)
                }
            };
            tally(&mut statuses, st);
            true
        });
        (n, statuses, controls)
    });
    t.peer(format!(
        "{n} requests: {statuses:?}; own names: {controls:?}"
    ));
    t.check(
        controls.iter().all(|(_, s)| *s == 200),
        format!("the hub's own names must be served: {controls:?}"),
    );
    t.check(
        statuses.get(&421) == Some(&n),
        format!("expected 421 Misdirected Request on all {n}: {statuses:?}"),
    );
    t.expect_refused("http", "bad_host", n);
}

#[derive(Clone, Copy)]
enum HeadKind {
    OneMegabyte,
    TenThousand,
    FortyNine,
}

fn big_head(t: &mut Trial, kind: HeadKind) {
    let to = t.addrs.http;
    let mut req = format!("GET / HTTP/1.1\r\nHost: {to}\r\n");
    let rate = match kind {
        HeadKind::OneMegabyte => {
            req.push_str(&format!("X-Big: {}\r\n", "a".repeat(1 << 20)));
            10
        }
        HeadKind::TenThousand => {
            for i in 0..9_999 {
                req.push_str(&format!("X-H{i}: v\r\n"));
            }
            10
        }
        HeadKind::FortyNine => {
            for i in 0..48 {
                req.push_str(&format!("X-Header-Number-{i}: value\r\n"));
            }
            100
        }
    };
    req.push_str("\r\n");
    let (n, statuses, wrote_all) = t.attack(|ctx| {
        let mut statuses = BTreeMap::new();
        let mut wrote_all = 0u64;
        let (n, _) = paced(ctx, rate, 2_000, |i| {
            let st = match wire::connect_from(wire::src(i as usize % 4), to, None) {
                Ok(mut s) => {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
                    // The hub may answer and close before it is all sent:
                    // a failed write is expected, the answer is what counts.
                    if s.write_all(req.as_bytes()).is_ok() {
                        wrote_all += 1;
                    }
                    wire::read_until_closed(&mut s, Duration::from_secs(3))
                        .http_status()
                        .unwrap_or(0)
                }
                Err(_) => 0,
            };
            tally(&mut statuses, st);
            true
        });
        (n, statuses, wrote_all)
    });
    t.peer(format!(
        "{n} requests of {} bytes: {statuses:?} ({wrote_all} were taken whole before the answer)",
        req.len()
    ));
    t.check(
        statuses.get(&431) == Some(&n),
        format!("expected 431 Request Header Fields Too Large on all {n}: {statuses:?}"),
    );
    t.expect_refused("http", "head_too_large", n);
}

fn garbage_http(t: &mut Trial) {
    let to = t.addrs.http;
    let (n, statuses) = t.attack(|ctx| {
        let mut rng = wire::Lcg(11);
        let mut statuses = BTreeMap::new();
        let (n, _) = paced(ctx, 200, 20_000, |i| {
            let mut junk = rng.bytes(64);
            junk[0] = 0x01; // never a method's first letter
            let st =
                wire::http_exchange(wire::src(i as usize % 4), to, &junk, Duration::from_secs(5))
                    .ok()
                    .and_then(|e| e.http_status())
                    .unwrap_or(0);
            tally(&mut statuses, st);
            true
        });
        (n, statuses)
    });
    t.peer(format!("{n} connections: {statuses:?}"));
    t.check(
        statuses.get(&400) == Some(&n),
        format!("expected 400 on all {n}: {statuses:?}"),
    );
    t.expect_refused("http", "malformed", n);
}

fn metrics_loop(t: &mut Trial) {
    let to = t.addrs.http;
    let (n, statuses, took) = t.attack(|ctx| {
        let start = Instant::now();
        let mut statuses = BTreeMap::new();
        let mut n = 0u64;
        while !ctx.stopped() && n < 1_000_000 {
            let st = wire::http_get(wire::src(0), to, "/metrics")
                .map(|(s, _)| s)
                .unwrap_or(0);
            tally(&mut statuses, st);
            n += 1;
        }
        (n, statuses, start.elapsed())
    });
    t.peer(format!(
        "{n} scrapes in {:.1} s ({:.0}/s): {statuses:?}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    ));
    t.check(
        statuses.get(&200) == Some(&n),
        format!("every scrape must be served: {statuses:?}"),
    );
    t.expect(
        hub::refused_any("http"),
        Cmp::AtMost(0.0),
        "refused (http, any reason)",
    );
}

/// `/stats` readers that never read: they neither take the frames nor
/// answer the hub's pings, so the hub must drop each, counted as
/// `write_timeout` (a frame not taken within 1 s) or `dead_peer` (silent
/// through a ping and another interval), whichever comes first. On
/// loopback the kernel's send buffer (autotuned to 4 MiB) takes an hour
/// of 1 KB/s frames, so `dead_peer` comes first: 2 × 500 ms here.
fn stats_never_read(t: &mut Trial) {
    const N: usize = 50;
    let to = t.addrs.http;
    let keys = format!(
        "{} + {}",
        hub::refused("http", "write_timeout"),
        hub::refused("http", "dead_peer")
    );
    let (conns, waited, counted) = t.attack(|ctx| {
        let conns: Vec<_> = (0..N)
            .filter_map(|_| open_unread(to, "/stats").ok())
            .collect();
        let start = Instant::now();
        let base = ctx.metrics().ok().and_then(|m| m.sum(&keys)).unwrap_or(0.0);
        let mut counted = 0.0;
        while start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
            counted = ctx.metrics().ok().and_then(|m| m.sum(&keys)).unwrap_or(0.0) - base;
            if counted >= N as f64 {
                break;
            }
        }
        (conns, start.elapsed(), counted)
    });
    // Now read: each must have been closed by the hub (watched together,
    // at most 3 s).
    let mut held: Vec<Held> = conns.into_iter().map(Held::new).collect();
    watch(&mut held, Duration::from_secs(3), Duration::from_millis(50));
    let closed = held.iter().filter(|h| h.ended.is_some()).count();
    t.peer(format!(
        "{closed} of {N} closed by the hub; {counted} counted {:.1} s after they stopped reading",
        waited.as_secs_f64()
    ));
    t.check(
        closed == N,
        format!("only {closed} of {N} were closed by the hub"),
    );
    t.check(
        waited <= Duration::from_millis(3000),
        format!("the hub took {waited:?} to drop them (ping interval 500 ms, write_timeout 1 s)"),
    );
    t.expect(
        keys,
        Cmp::AtLeast(N as f64),
        "`write_timeout` + `dead_peer` (http)",
    );
}

/// Downloads of /pinion.js that are never read: within `write_timeout`
/// (1 s) the hub must be done with each, either because the kernel took
/// the whole response (the client finds all of it, then the end, when it
/// finally reads) or because the write timed out (counted
/// `write_timeout`; the client finds it cut short).
fn pinion_js_never_read(t: &mut Trial) {
    const N: usize = 50;
    let to = t.addrs.http;
    let key = hub::refused("http", "write_timeout");
    let open_key = hub::open("http");
    let (conns, open_before, open_after, counted) = t.attack(|ctx| {
        let m0 = ctx.metrics().ok();
        let open_before = m0.as_ref().and_then(|m| m.get(&open_key));
        let base = m0.as_ref().and_then(|m| m.get(&key)).unwrap_or(0.0);
        let conns: Vec<_> = (0..N)
            .filter_map(|_| open_unread(to, "/pinion.js").ok())
            .collect();
        // write_timeout, and a second for the books.
        std::thread::sleep(Duration::from_secs(2));
        let m1 = ctx.metrics().ok();
        let open_after = m1.as_ref().and_then(|m| m.get(&open_key));
        let counted = m1.as_ref().and_then(|m| m.get(&key)).unwrap_or(0.0) - base;
        (conns, open_before, open_after, counted)
    });
    let mut held: Vec<Held> = conns.into_iter().map(Held::new).collect();
    watch(&mut held, Duration::from_secs(3), Duration::from_millis(50));
    let whole = held
        .iter()
        .filter(|h| {
            matches!(h.ended, Some((wire::Ended::Eof(_), _))) && complete_response(h.received())
        })
        .count();
    let closed = held.iter().filter(|h| h.ended.is_some()).count();
    t.peer(format!(
        "{whole} of {N} served whole into the kernel's buffers, {counted} timed out; {closed} closed; HTTP connections open before/2 s later: {open_before:?}/{open_after:?}"
    ));
    t.check(
        closed == N,
        format!("only {closed} of {N} closed by the hub"),
    );
    t.check(
        open_after.is_some() && open_after <= open_before,
        format!("the hub still holds connections 2 s later: {open_before:?} → {open_after:?}"),
    );
    t.check(
        whole as f64 + counted >= N as f64,
        format!("{whole} served whole + {counted} timed out ≠ {N}"),
    );
    t.expect_refused("http", "write_timeout", (N - whole) as u64);
}

/// A whole HTTP response: a head with Content-Length, and that many bytes.
fn complete_response(b: &[u8]) -> bool {
    let Some(at) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..at]);
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    len == Some(b.len() - at - 4)
}

fn open_unread(to: SocketAddr, route: &str) -> std::io::Result<std::net::TcpStream> {
    // The smallest receive buffer the kernel allows, set before connecting
    // so the advertised window stays that small.
    let mut s = wire::connect_from(wire::src(0), to, Some(2048))?;
    if route == "/stats" {
        s.write_all(wire::upgrade_request("/stats", &to.to_string(), None, None).as_bytes())?;
    } else {
        s.write_all(format!("GET {route} HTTP/1.1\r\nHost: {to}\r\n\r\n").as_bytes())?;
    }
    Ok(s)
}
