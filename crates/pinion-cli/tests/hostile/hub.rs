//! The hub under attack: the real `pinion serve` binary, one process per
//! case, on ports the kernel picks (read back from its log), with a
//! temporary data directory and a config file holding the limits the case
//! needs. Stopped by its PID (SIGTERM, then SIGKILL) and its directory
//! removed at the end, also when a case panics.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wire;

/// The `pinion` binary under test: the one cargo built with this test
/// (the debug build under `cargo test`), or `PINION_HOSTILE_BIN` to run
/// the suite against another build (e.g. `target/release/pinion`).
pub fn binary() -> PathBuf {
    std::env::var_os("PINION_HOSTILE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pinion")))
}

/// Settings every case's hub gets, unless the case sets the same key.
///
/// * `fsync = "never"`: with `always`, every ACK waits for an fdatasync,
///   2-8 ms on this VM's disk, which would hide up to that much damage an
///   attack does to the hub's own path; durability is not under test here
///   (the write, the ACK and the fan-out are the same code either way).
/// * `checkpoint_interval_ms = 3600000`: the sessions checkpoint (every
///   second by default) makes the writer thread fdatasync the log first,
///   a stall of a few milliseconds once a second that lands right around
///   the p99 of a 1,500-message window whether or not anything attacks.
///   Cases last seconds, so none checkpoints; `million_client_ids`, whose
///   session cap's remainder is applied at checkpoints, sets it back to 1 s.
/// * `preallocate = 0`: the default pre-zeroes 64 MiB of log at start (a
///   64 MiB write per case); plain appends keep the cases quick.
pub const BASE_TOML: &str =
    "fsync = \"never\"\ncheckpoint_interval_ms = 3600000\npreallocate = 0\n";

/// [`BASE_TOML`] with the case's `toml` on top (a key the case sets
/// replaces the base's line).
pub fn config_text(toml: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let case_keys: Vec<String> = toml.lines().filter(|l| l.contains('=')).map(key).collect();
    let mut out: String = BASE_TOML
        .lines()
        .filter(|l| !case_keys.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(toml);
    out.push('\n');
    out
}

/// Addresses of a running hub (copied into attacker threads).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// SP REP (publishers).
    pub publ: SocketAddr,
    /// SP PUB (subscribers).
    pub sub: SocketAddr,
    /// HTTP (dashboard, /metrics, WebSocket routes).
    pub http: SocketAddr,
    pub pid: u32,
}

pub struct Hub {
    child: Child,
    pub addrs: Addrs,
    stderr: Arc<Mutex<Vec<u8>>>,
    dir: PathBuf,
}

/// Keeps at most this much of the hub's log (a case may make it log a
/// line per refused connection).
const LOG_KEEP: usize = 8 << 20;

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut b = b.lock().unwrap();
            if b.len() < LOG_KEEP {
                b.extend_from_slice(&chunk[..n]);
            }
        }
    });
    buf
}

/// The `key=scheme://host:port` address after `marker` in the log.
fn addr_after(log: &str, marker: &str, scheme: &str) -> Option<SocketAddr> {
    let at = log.find(marker)?;
    let rest = &log[at + marker.len()..];
    let rest = rest.strip_prefix(scheme)?;
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Hub {
    /// Starts `pinion serve` with [`BASE_TOML`] plus `toml`, two cores, on
    /// ports of the kernel's choosing; returns once `/healthz` says ok.
    pub fn start(name: &str, toml: &str) -> Hub {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("hub.toml");
        std::fs::write(&config, config_text(toml)).unwrap();
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--listen",
                "tcp://127.0.0.1:0",
                "--subscribe",
                "tcp://127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--stats-every",
                "0",
                "--log-format",
                "text",
            ])
            .env("NO_COLOR", "1")
            .env_remove("PINION_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pinion serve");
        let stderr = collect(child.stderr.take().unwrap());
        let text =
            |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addrs = loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("pinion serve exited early ({st}):\n{}", text(&stderr));
            }
            let log = text(&stderr);
            let found = (
                addr_after(&log, "listening for publishers url=", "tcp://"),
                addr_after(&log, "listening for subscribers (SP PUB) url=", "tcp://"),
                addr_after(&log, "dashboard=", "http://"),
            );
            if let (Some(publ), Some(sub), Some(http)) = found {
                break Addrs {
                    publ,
                    sub,
                    http,
                    pid: child.id(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "pinion serve not listening in 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let hub = Hub {
            child,
            addrs,
            stderr,
            dir,
        };
        loop {
            if let Ok((200, _)) = wire::http_get(wire::LEGIT, hub.addrs.http, "/healthz") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz not ok in 30 s:\n{}",
                hub.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        hub
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Graceful stop (SIGTERM to our child's PID); SIGKILL if it has not
    /// exited within 15 s. Returns how it ended.
    pub fn stop(&mut self) -> String {
        if let Ok(Some(st)) = self.child.try_wait() {
            return format!("had already exited: {st}");
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.addrs.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return if st.success() {
                    "stopped".into()
                } else {
                    format!("exited with {st} after SIGTERM")
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not stop within 15 s of SIGTERM (killed)".into()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // SIGKILL, by our own child's PID
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resident memory of a process (KiB): the second field of
/// /proc/PID/statm (pages), which the kernel reads from counters without
/// taking the process's memory-map lock (`status` would, 50 times a
/// second, against the hub's own allocations).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4) // 4 KiB pages on x86-64
}

/// A `/metrics` scrape: sample name with labels (as printed) → value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Scrapes `/metrics` from the legitimate source address.
    pub fn scrape(http: SocketAddr) -> Result<Metrics, String> {
        let (status, body) = wire::http_get(wire::LEGIT, http, "/metrics")
            .map_err(|e| format!("GET /metrics: {e}"))?;
        if status != 200 {
            return Err(format!("GET /metrics: {status}"));
        }
        let text = String::from_utf8_lossy(&body);
        let mut m = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        if m.is_empty() {
            return Err("GET /metrics: no samples".into());
        }
        Ok(Metrics(m))
    }

    /// Scrapes, retrying for up to `within` (the port may be refusing
    /// new connections for a moment while an attack is being shed).
    pub fn scrape_retry(http: SocketAddr, within: Duration) -> Result<Metrics, String> {
        let deadline = Instant::now() + within;
        loop {
            match Metrics::scrape(http) {
                Ok(m) => return Ok(m),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    /// `a + b + …`: the sum of those samples (each must be present); a
    /// part ending in `*` sums every sample whose name starts with what
    /// precedes the `*` (e.g. every reason of a refusal counter).
    pub fn sum(&self, expr: &str) -> Option<f64> {
        let mut total = 0.0;
        for part in expr.split(" + ") {
            if let Some(prefix) = part.strip_suffix('*') {
                let mut any = false;
                for (k, v) in self.0.range(prefix.to_string()..) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    total += v;
                    any = true;
                }
                if !any {
                    return None;
                }
            } else {
                total += self.get(part)?;
            }
        }
        Some(total)
    }
}

/// The sample name of a refusal counter.
pub fn refused(port: &str, reason: &str) -> String {
    format!("pinion_connections_refused_total{{port=\"{port}\",reason=\"{reason}\"}}")
}

/// Every refusal counter of `port` (for [`Metrics::sum`]).
pub fn refused_any(port: &str) -> String {
    format!("pinion_connections_refused_total{{port=\"{port}\",*")
}

/// The sample name of the open-connections gauge of a port.
pub fn open(port: &str) -> String {
    format!("pinion_connections_open{{port=\"{port}\"}}")
}
