//! The hub's HTTP port from the browser side, against a real `pinion serve`:
//!
//! * `web_pages_in_headless_chromium`: `tests/browser/run.mjs` drives the
//!   demo page and the dashboard in Debian's Chromium (playwright-core):
//!   publish through one page, receive in order with the acked offsets in
//!   another, resume from an offset, the dashboard's plots drawn, and
//!   screenshots checked (they stay in `target/tmp/browser-screenshots/`);
//! * `pinion_js_node_tests`: `node --test tests/browser/*.test.mjs`: the
//!   client's codec against protoc-made bytes, its reconnect and backoff
//!   logic against a scripted WebSocket, and the same client against this
//!   hub (drops mid-stream, duplicates, NACKs, /stats).
//!
//! They need Node.js >= 20, `npm ci` in tests/browser and Debian's
//! `chromium`: `scripts/setup-test-env.sh` installs them. Without them
//! these tests fail, saying so; they never skip.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PINION: &str = env!("CARGO_BIN_EXE_pinion");
const SETUP: &str =
    "run scripts/setup-test-env.sh (as root: installs chromium, runs npm ci in tests/browser)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn browser_dir() -> PathBuf {
    repo_root().join("tests/browser")
}

/// Node's major version, or a failure that says what to do.
fn node_major() -> u32 {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("node is not runnable ({e}): install Node.js >= 20, then {SETUP}")
        });
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = v
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("cannot read node --version ({v:?})"));
    assert!(
        major >= 20,
        "node {v} is too old: pinion's browser tests need Node.js >= 20"
    );
    major
}

fn require_node_modules() {
    for pkg in ["playwright-core", "pngjs"] {
        let p = browser_dir()
            .join("node_modules")
            .join(pkg)
            .join("package.json");
        assert!(p.is_file(), "{} is missing: {SETUP}", p.display());
    }
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("PINION_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(p.is_file(), "no Chromium at {}: {SETUP}", p.display());
    p
}

/// Collects a child's output in the background.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(b: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap()).into_owned()
}

/// `pinion serve` on free ports, in a temporary data directory; stopped by
/// its PID (SIGTERM, then SIGKILL) at the end.
struct Hub {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// host:port of the HTTP port.
    http: String,
    /// tcp://host:port of the SP publisher endpoint.
    tcp: String,
    data_dir: PathBuf,
}

impl Hub {
    fn start(name: &str) -> Hub {
        let data_dir =
            std::env::temp_dir().join(format!("pinion-cli-browser-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut child = Command::new(PINION)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pinion serve");
        let stderr = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("pinion serve exited early ({st}):\n{}", text(&stderr));
            }
            // "serving HTTP dashboard=http://127.0.0.1:PORT/ ..."
            if let Some(addr) = text(&stderr)
                .split("dashboard=http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .map(str::to_string)
            {
                if TcpStream::connect(&addr).is_ok() {
                    break addr;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pinion serve printed no HTTP address in 20 s (expected \"dashboard=http://ADDR/\"):\n{}",
                text(&stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // "listening for publishers url=tcp://127.0.0.1:PORT"
        let tcp = text(&stderr)
            .split("listening for publishers url=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no publisher endpoint in the log:\n{}", text(&stderr)));
        Hub {
            child,
            stderr,
            http,
            tcp,
            data_dir,
        }
    }

    fn log(&self) -> String {
        text(&self.stderr)
    }

    /// SIGTERM by PID and wait for a clean exit (SIGKILL after 10 s).
    fn stop(mut self) -> String {
        let pid = self.child.id();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let log = self.log();
                assert!(
                    st.success(),
                    "pinion serve exited with {st} after SIGTERM:\n{log}"
                );
                return log;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "pinion serve (pid {pid}) still running 10 s after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // SIGKILL, by our child's PID
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

struct NodeRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs node with `args` in the repository, killed (by PID) after `limit`.
fn run_node(args: &[String], env: &[(&str, String)], limit: Duration) -> NodeRun {
    let mut cmd = Command::new("node");
    cmd.args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("node is not runnable ({e}): {SETUP}"));
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node {} did not finish in {limit:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                text(&stdout),
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    NodeRun {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

#[test]
fn web_pages_in_headless_chromium() {
    node_major();
    require_node_modules();
    let chromium = chromium();
    let hub = Hub::start("pages");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    let _ = std::fs::remove_dir_all(&out_dir);
    let run = run_node(
        &[
            browser_dir().join("run.mjs").display().to_string(),
            "--base".into(),
            format!("http://{}", hub.http),
            "--out".into(),
            out_dir.display().to_string(),
            "--timeout-ms".into(),
            "50000".into(),
        ],
        &[("PINION_CHROMIUM", chromium.display().to_string())],
        Duration::from_secs(60),
    );
    // run.mjs prints its checks on stderr and one JSON line on stdout.
    eprintln!("{}", run.stderr);
    let summary = run.stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        run.status.success() && summary.starts_with('{') && summary.contains("\"ok\":true"),
        "browser test failed ({}):\n{}\nsummary: {summary}\nhub log:\n{}",
        run.status,
        run.stderr,
        hub.log()
    );
    for png in [
        "demo-publisher.png",
        "demo-subscriber.png",
        "demo-resume.png",
        "dashboard.png",
        "dashboard-dark.png",
    ] {
        let p = out_dir.join(png);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10_000,
            "{} missing or tiny ({len} bytes)",
            p.display()
        );
    }
    eprintln!("screenshots in {}", out_dir.display());
    hub.stop();
}

#[test]
fn pinion_js_node_tests() {
    let major = node_major();
    let hub = Hub::start("node");
    let mut files: Vec<String> = std::fs::read_dir(browser_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("hub.test.mjs")) && files.len() >= 3,
        "{files:?}"
    );
    let mut args = Vec::new();
    if major < 22 {
        args.push("--experimental-websocket".to_string()); // a global WebSocket
    }
    args.push("--test".to_string());
    args.extend(files);
    let run = run_node(
        &args,
        &[
            ("PINION_HUB_URL", format!("ws://{}", hub.http)),
            ("PINION_HUB_TCP", hub.tcp.clone()),
            ("PINION_BIN", PINION.to_string()),
        ],
        Duration::from_secs(60),
    );
    println!("{}", run.stdout);
    assert!(
        run.status.success(),
        "node --test failed ({}):\n{}\n{}\nhub log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        hub.log()
    );
    // Every test ran: none skipped (hub.test.mjs skips without a hub).
    assert!(
        run.stdout.contains("# skipped 0") && run.stdout.contains("# fail 0"),
        "{}",
        run.stdout
    );
    hub.stop();
}
