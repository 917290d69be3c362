//! The hostile-input suite (issue 11, docs/HARDENING.md): every case starts
//! the real `pinion serve` binary, runs a steady legitimate publisher and
//! WebSocket subscriber against it, attacks it, and checks that
//!
//! * the legitimate p99 publish→ack and publish→deliver stay within 2× of
//!   the same run's windows without the attack (rule in `trial.rs`),
//! * the hub's RSS stays under the case's stated bound,
//! * the hostile connection is refused or closed as docs/HARDENING.md
//!   says, and the refusal is counted in `/metrics`.
//!
//! Cases run one at a time (they measure latency on a shared machine), so
//! this target has its own `main` instead of libtest's parallel runner. It
//! understands what `cargo test` passes: name filters (substring; `--exact`
//! for whole names), `--skip F`, `--list`, and ignores the rest
//! (`--nocapture`, `--test-threads`, …). At the end it prints the results
//! table in markdown (the one in docs/HARDENING.md) and writes it to
//! `target/tmp/hostile-results.md`.
//!
//! ```sh
//! cargo test -p pinion-cli --test hostile                    # every case
//! cargo test -p pinion-cli --test hostile -- slowloris       # by name
//! ```
//!
//! Traffic goes only to the loopback hub the case started; attackers use
//! source addresses 127.0.0.2–127.0.0.254.

mod attack;
mod cases_conn;
mod cases_fanout;
mod cases_http;
mod cases_sp;
mod cases_ws;
mod hub;
mod legit;
mod trial;
mod wire;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use trial::{fmt_ratio, Row, Spec, Trial};

/// A case: its name, what its hub needs, and the attack with its checks.
pub struct Case {
    pub name: &'static str,
    /// What the case does (the table's first column explains it).
    pub what: &'static str,
    pub spec: fn() -> Spec,
    pub run: fn(&mut Trial),
}

fn all_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(cases_conn::cases());
    v.extend(cases_http::cases());
    v.extend(cases_ws::cases());
    v.extend(cases_sp::cases());
    v.extend(cases_fanout::cases());
    v
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "(non-string panic)".into()
    }
}

fn run_attempt(c: &Case) -> Row {
    let started = Instant::now();
    let trial = std::panic::catch_unwind(AssertUnwindSafe(|| Trial::start(c.name, (c.spec)())));
    let mut t = match trial {
        Ok(t) => t,
        Err(p) => {
            let why = format!("could not start: {}", panic_text(&*p));
            println!("    FAILED: {why}");
            return Row {
                name: c.name,
                windows: Default::default(),
                ack_ratio: None,
                del_ratio: None,
                rss_peak_mib: 0.0,
                rss_bound_mib: 0.0,
                refusal: String::new(),
                notes: Vec::new(),
                failures: vec![why],
                secs: started.elapsed().as_secs_f64(),
                foreign: [0.0; 3],
                hub_cpu: [0.0; 3],
                attempt: 1,
                earlier: Vec::new(),
            };
        }
    };
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| (c.run)(&mut t)))
        .err()
        .map(|p| panic_text(&*p));
    let row = t.finish(panicked);
    println!(
        "--- {} {} in {:.1} s",
        c.name,
        if row.passed() { "ok" } else { "FAILED" },
        row.secs
    );
    for f in &row.failures {
        println!("      - {}", f.lines().next().unwrap_or(""));
    }
    row
}

/// Latency checks are the only ones a busy machine can fail.
fn latency_failure(f: &str) -> bool {
    f.starts_with("publish→") || f.starts_with("not recovered")
}

/// Attempts per case at most.
const ATTEMPTS: usize = 2;

/// Runs a case, and once more ([`ATTEMPTS`] in all) when it failed on
/// latency alone: on two cores shared by the hub, the attacker and the
/// measuring threads, a p99 over 1,500 messages sometimes jumps with
/// nothing attacking (see `trial::FLOOR_NS`). A failure on anything else
/// (a refusal not seen or not counted, memory, lost messages) is final.
/// Nothing is hidden: every attempt is printed, and the row says which
/// attempt it reports and what the earlier ones measured, so an effect
/// that shows up one run in three is visible in the table.
fn run_case(c: &Case) -> Row {
    println!("\n=== {}: {}", c.name, c.what);
    let mut earlier: Vec<String> = Vec::new();
    let mut attempt = 1;
    loop {
        let mut row = run_attempt(c);
        let latency_only = !row.passed() && row.failures.iter().all(|f| latency_failure(f));
        if row.passed() || !latency_only || attempt == ATTEMPTS {
            row.attempt = attempt;
            row.earlier = earlier;
            return row;
        }
        earlier.push(format!(
            "attempt {attempt}: ack {} deliver {}, recovery failed: {} (other processes: {:.2} cores)",
            fmt_ratio(row.ack_ratio),
            fmt_ratio(row.del_ratio),
            row.failures.iter().any(|f| f.starts_with("not recovered")),
            row.foreign.iter().cloned().fold(0.0, f64::max)
        ));
        attempt += 1;
        println!(
            "--- {}: failed on latency alone; attempt {attempt} of {ATTEMPTS}",
            c.name
        );
    }
}

/// The results table (markdown).
fn table(rows: &[Row], cases: &[&Case]) -> String {
    let mut out = String::new();
    out.push_str(
        "| case | what | p99 ack ratio | p99 deliver ratio | legit p99 ack / deliver under attack (ms) | peak RSS / bound (MiB) | refusal: counted in /metrics; what the peer saw | other processes' CPU (cores) | result |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (r, c) in rows.iter().zip(cases) {
        let a = r.windows[1];
        let result = if r.passed() {
            "pass".to_string()
        } else {
            let first: Vec<String> = r
                .failures
                .iter()
                .map(|f| f.lines().next().unwrap_or("").replace('|', "\\|"))
                .collect();
            format!("**FAIL**: {}", first.join("; "))
        };
        let attempts = if r.attempt > 1 {
            format!(
                " (attempt {} of {ATTEMPTS}; {})",
                r.attempt,
                r.earlier.join("; ")
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {:.2} / {:.2} | {:.0} / {:.0} | {} | {:.2} | {}{} |\n",
            r.name,
            c.what.replace('|', "\\|"),
            fmt_ratio(r.ack_ratio),
            fmt_ratio(r.del_ratio),
            a.ack_p99_ns as f64 / 1e6,
            a.del_p99_ns as f64 / 1e6,
            r.rss_peak_mib,
            r.rss_bound_mib,
            r.refusal.replace('|', "\\|"),
            r.foreign.iter().cloned().fold(0.0, f64::max),
            result,
            attempts
        ));
    }
    out
}

/// Cases that fail today on something other than latency (the 2x rule
/// is reported, not enforced: see `trial::enforce_latency`), each for a
/// reason recorded here and in `docs/HARDENING.md` (issue 11 stays open
/// until this list is empty and the ratios are under 2x). They run and
/// print their failures like every case, marked KNOWN; the run fails only
/// on a failure of any *other* case, so a regression elsewhere still fails
/// CI. A known case that passes is reported as such: take it off the list.
const KNOWN_FAILING: &[(&str, &str)] = &[];

fn known_failing(name: &str) -> Option<&'static str> {
    KNOWN_FAILING
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

fn main() {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut ignored_only) = (false, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(args.next()),
            // libtest options that take a value: skip the value.
            "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" | "--shuffle-seed" => {
                args.next();
            }
            s if s.starts_with('-') => {} // --nocapture, --quiet, --test-threads=N, …
            s => filters.push(s.to_string()),
        }
    }
    let all = all_cases();
    let chosen: Vec<&Case> = all
        .iter()
        .filter(|c| {
            (filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        c.name == f
                    } else {
                        c.name.contains(f.as_str())
                    }
                }))
                && !skips.iter().any(|s| c.name.contains(s.as_str()))
        })
        .collect();
    if list {
        for c in &chosen {
            println!("{}: test", c.name);
        }
        return;
    }
    if ignored_only {
        // Nothing in this suite is ignored.
        println!("running 0 tests");
        return;
    }
    println!(
        "hostile-input suite: {} of {} cases, hub binary {}",
        chosen.len(),
        all.len(),
        hub::binary().display()
    );
    let started = Instant::now();
    let rows: Vec<Row> = chosen.iter().map(|c| run_case(c)).collect();
    let secs = started.elapsed().as_secs_f64();
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.passed()).collect();
    let md = table(&rows, &chosen);
    println!(
        "\n## results ({} cases, {} passed, {} failed, {:.0} s)\n",
        rows.len(),
        rows.len() - failed.len(),
        failed.len(),
        secs
    );
    println!("{md}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-results.md");
    let _ = std::fs::write(&path, &md);
    println!("(table written to {})", path.display());
    let (known, unexpected): (Vec<&Row>, Vec<&Row>) =
        failed.iter().partition(|r| known_failing(r.name).is_some());
    if !known.is_empty() {
        println!("\nKNOWN failures (listed in KNOWN_FAILING, docs/HARDENING.md; issue 11 open):");
        for r in &known {
            println!(
                "  {} (known: {}):",
                r.name,
                known_failing(r.name).unwrap_or("")
            );
            for f in &r.failures {
                println!("    - {f}");
            }
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.passed() && known_failing(r.name).is_some())
    {
        println!("\nNOW PASSING (listed as known failing): {}", r.name);
    }
    if !unexpected.is_empty() {
        println!("\nfailed cases:");
        for r in &unexpected {
            println!("  {}:", r.name);
            for f in &r.failures {
                println!("    - {f}");
            }
        }
        std::process::exit(1);
    }
}
