//! `pinion serve` as a process: the README's main command with its
//! defaults, `pinion publish` and `pinion log`, a Python (pynng + protobuf)
//! publisher, kill -9 crash recovery and a full disk.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion_proto::Code;

const PINION: &str = env!("CARGO_BIN_EXE_pinion");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinion-cli-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hub process, SIGKILLed on drop if still running.
struct HubProc {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl HubProc {
    fn start_in(cwd: &Path, args: &[&str], port: u16) -> HubProc {
        let mut child = Command::new(PINION)
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pinion serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let mut h = HubProc {
            child,
            port,
            stderr,
        };
        h.wait_ready();
        h
    }

    fn start(data_dir: &Path, port: u16) -> HubProc {
        HubProc::start_with(data_dir, port, &[])
    }

    /// As [`HubProc::start`], with `extra` flags after the usual ones.
    fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> HubProc {
        let listen = format!("tcp://127.0.0.1:{port}");
        let d = data_dir.to_str().unwrap();
        let mut args = vec![
            "--data-dir",
            d,
            "--listen",
            &listen,
            "--threads",
            "2",
            "--stats-every",
            "0",
            // The subscriber and HTTP ports on free ports (not the
            // defaults, which the README test uses).
            "--subscribe",
            "tcp://127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        HubProc::start_in(data_dir.parent().unwrap(), &args, port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The HTTP address the hub logged (`dashboard=http://HOST:PORT/`).
    fn http_addr(&self) -> String {
        let log = self.log();
        let at = log
            .find("dashboard=http://")
            .unwrap_or_else(|| panic!("no HTTP address in the log:\n{log}"));
        let rest = &log[at + "dashboard=http://".len()..];
        rest[..rest.find('/').unwrap()].to_string()
    }

    /// `GET path` on the hub's HTTP port: (status, body).
    fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.http_addr();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("pinion serve exited early ({st}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.log().contains("listening")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pinion serve not ready in 20 s:\n{}", self.log());
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL, by our child's PID
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(mut self) -> String {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let log = self.log();
                assert!(
                    st.success(),
                    "pinion serve exited with {st} after SIGTERM:\n{log}"
                );
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 30 s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pinion(args: &[&str]) -> Output {
    Command::new(PINION)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// Every (client id, seq) in the log, with how often it appears.
fn log_records(log: &Path) -> HashMap<([u8; 16], u64), usize> {
    let mut r = pinion_journal::Reader::open(log).unwrap();
    let mut m = HashMap::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        *m.entry((rec.client_id, rec.seq)).or_insert(0) += 1;
    }
    m
}

#[test]
fn readme_main_command_serves_with_embedded_defaults() {
    // `pinion serve` with no flags: ./pinion-data, tcp://127.0.0.1:7450,
    // ipc://./pinion-data/hub.ipc.
    let cwd = temp_dir("defaults");
    let hub = HubProc::start_in(&cwd, &["--stats-every", "0"], 7450);
    assert!(cwd.join("pinion-data/pinion.log").is_file());
    assert!(cwd.join("pinion-data/sessions.sqlite").is_file());
    let ipc = format!("ipc://{}", cwd.join("pinion-data/hub.ipc").display());
    for url in ["tcp://127.0.0.1:7450", ipc.as_str()] {
        let out = pinion(&[
            "publish", "--url", url, "--topic", "greet", "--data", "hello", "--count", "3",
        ]);
        assert!(
            out.status.success(),
            "publish to {url}: {}",
            text(&out.stderr)
        );
        let acks = text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ack seq="))
            .count();
        assert_eq!(acks, 3, "{}", text(&out.stdout));
    }
    // A NACK gives exit code 9 and a readable line.
    let big = "x".repeat(300);
    let out = pinion(&["publish", "--data", &big]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("nack seq=1 code=TOO_LARGE"),
        "{}",
        text(&out.stdout)
    );
    let log = hub.terminate();
    assert!(log.contains("stopped"), "{log}");

    let log_file = cwd.join("pinion-data/pinion.log");
    let lf = log_file.to_str().unwrap();
    let out = pinion(&["log", "cat", lf]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[0].starts_with("0 ") && lines[0].ends_with(" greet hello"),
        "{lines:?}"
    );
    let out = pinion(&["log", "cat", lf, "--from", "4", "--format", "json"]);
    assert_eq!(text(&out.stdout).lines().count(), 2);
    assert!(
        text(&out.stdout).contains("\"offset\":4"),
        "{}",
        text(&out.stdout)
    );
    let out = pinion(&["log", "verify", lf]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = pinion(&[
        "log",
        "stat",
        "--data-dir",
        cwd.join("pinion-data").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains('6'), "{}", text(&out.stdout));

    // Corrupt a byte in the middle of the first record: verify says so
    // (exit 10) and the hub refuses to start rather than skip it.
    let mut bytes = std::fs::read(&log_file).unwrap();
    let first = {
        let mut r = pinion_journal::Reader::open(&log_file).unwrap();
        r.next().unwrap().unwrap()
    };
    let at = (first.byte_pos + u64::from(first.byte_len) / 2) as usize;
    bytes[at] ^= 0xff;
    std::fs::write(&log_file, &bytes).unwrap();
    let out = pinion(&["log", "verify", lf]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = Command::new(PINION)
        .args(["serve", "--stats-every", "0"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot start the hub"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&cwd).unwrap();
}

/// protoc (Debian's protobuf-compiler) makes the Python module from the
/// repository's .proto, as a Python user would.
fn python_with_generated_proto(out_dir: &Path) -> PathBuf {
    let root = repo_root();
    let st = Command::new("protoc")
        .arg(format!("--python_out={}", out_dir.display()))
        .arg("-I")
        .arg(root.join("proto"))
        .arg(root.join("proto/pinion/v1/hub.proto"))
        .status()
        .unwrap_or_else(|e| {
            panic!("protoc not runnable ({e}): run scripts/setup-test-env.sh (installs protobuf-compiler)")
        });
    assert!(st.success(), "protoc failed");
    let py = std::env::var_os("PINION_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import pynng, google.protobuf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import pynng and protobuf: run scripts/setup-test-env.sh (creates .venv)",
        py.display()
    );
    py
}

#[test]
fn python_pynng_protobuf_publisher() {
    let dir = temp_dir("python");
    let data = dir.join("data");
    let port = free_port();
    let hub = HubProc::start(&data, port);
    let gen = dir.join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    let py = python_with_generated_proto(&gen);
    let script = repo_root().join("tests/interop/hub_publisher.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(hub.url())
        .arg(&gen)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python publisher failed:\n{}\n{}\nhub log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        hub.log()
    );
    let report = text(&out.stdout);
    assert!(report.contains("\"pipelined\": 400"), "{report}");
    hub.terminate();
    // 1 + 400 records from Python, each once.
    let recs = log_records(&data.join("pinion.log"));
    assert_eq!(recs.len(), 401);
    assert!(recs.values().all(|&n| n == 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn python_pynng_subscribers_over_tcp_and_websocket_and_publish_over_websocket() {
    let dir = temp_dir("python-sub");
    let data = dir.join("data");
    let (port, sub_port, http_port) = (free_port(), free_port(), free_port());
    let listen = format!("tcp://127.0.0.1:{port}");
    let sub = format!("tcp://127.0.0.1:{sub_port}");
    let http = format!("127.0.0.1:{http_port}");
    let d = data.to_str().unwrap();
    let hub = HubProc::start_in(
        &dir,
        &[
            "--data-dir",
            d,
            "--listen",
            &listen,
            "--subscribe",
            &sub,
            "--http",
            &http,
            "--stats-every",
            "0",
        ],
        port,
    );
    let gen = dir.join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    let py = python_with_generated_proto(&gen);
    let script = repo_root().join("tests/interop/hub_subscriber.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(&sub)
        .arg(&http)
        .arg(&gen)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python subscriber failed:\n{}\n{}\nhub log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        hub.log()
    );
    let report = text(&out.stdout);
    assert!(
        report.contains("\"acked_over_ws\": 20")
            && report.contains("\"tcp_prefix\": 10")
            && report.contains("\"ws_resumed\": 20"),
        "{report}"
    );
    hub.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Small deterministic generator (the seed is printed for reruns).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn kill_9_at_random_moments_never_loses_or_duplicates_an_acked_message() {
    let seed = std::env::var("PINION_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (PINION_CRASH_SEED={seed} to repeat)");
    let mut rng = Lcg(seed);
    let dir = temp_dir("crash");
    let data = dir.join("data");
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    type Acked = HashMap<([u8; 16], u64), (u64, bool)>;
    let acked: Arc<Mutex<Acked>> = Arc::new(Mutex::new(HashMap::new()));
    let mut hub = HubProc::start(&data, port);

    // Concurrent publishers that live across every crash: their requests
    // are resent with the same seq after each restart.
    let publishers: Vec<_> = (0..12u8)
        .map(|c| {
            let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                block(async move {
                    let opts = PublisherOptions {
                        client_id: [c.wrapping_mul(17).wrapping_add(1); 16],
                        window: 16,
                        resend_after: Duration::from_millis(300),
                        ..PublisherOptions::default()
                    };
                    let mut p = Publisher::connect(&url, opts.clone()).await.unwrap();
                    let note = |o: Outcome| match o {
                        Outcome::Ack {
                            seq,
                            offset,
                            duplicate,
                        } => {
                            acked
                                .lock()
                                .unwrap()
                                .insert((opts.client_id, seq), (offset, duplicate));
                        }
                        Outcome::Nack { code, reason, .. } => {
                            // Only a shutdown may refuse; it is retried by the
                            // next publish with a new seq, and never ACKed.
                            assert_eq!(code, Code::ShuttingDown, "{reason}");
                        }
                    };
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        p.send("crash", format!("c{c} m{i}").into_bytes())
                            .await
                            .unwrap();
                        i += 1;
                        while p.in_flight() >= 16 {
                            note(p.recv().await.unwrap());
                        }
                    }
                    for o in p.flush().await.unwrap() {
                        note(o);
                    }
                })
            })
        })
        .collect();

    let rounds = 5;
    for round in 0..rounds {
        let wait = 200 + rng.next() % 900;
        std::thread::sleep(Duration::from_millis(wait));
        let before = acked.lock().unwrap().len();
        eprintln!("round {round}: kill -9 after {wait} ms ({before} acked so far)");
        hub.kill9();
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        hub = HubProc::start(&data, port);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().expect("publisher thread");
    }
    hub.terminate();

    let out = pinion(&["log", "verify", data.join("pinion.log").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "log verify after crashes: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let recs = log_records(&data.join("pinion.log"));
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > 100,
        "too little traffic to mean anything: {}",
        acked.len()
    );
    let mut offsets = HashSet::new();
    for (key, (offset, _)) in acked.iter() {
        assert_eq!(
            recs.get(key).copied(),
            Some(1),
            "acked {key:?} must be in the log exactly once"
        );
        offsets.insert(*offset);
    }
    assert_eq!(
        offsets.len(),
        acked.len(),
        "two acked messages share an offset"
    );
    assert!(
        recs.values().all(|&n| n == 1),
        "a (client, seq) was logged twice"
    );
    eprintln!(
        "{} acked, {} duplicates acked after resends, {} records in the log",
        acked.len(),
        acked.values().filter(|(_, d)| *d).count(),
        recs.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tmpfs of a few hundred KiB as the data directory, mounted by this test
/// (we run as root in CI; not being able to mount is a failure, not a skip).
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the full-disk test mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {}",
            text(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_nacks_unavailable_never_false_acks_and_recovers() {
    let dir = temp_dir("full");
    let mnt = dir.join("mnt");
    let fs = Tmpfs::mount(&mnt, "1m");
    let data = mnt.join("data");
    let port = free_port();
    let hub = HubProc::start(&data, port);
    // Leave little room: a filler file takes most of what is left.
    let filler = mnt.join("filler");
    let free = {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&mnt)
            .output()
            .unwrap();
        text(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(&filler, vec![0u8; free.saturating_sub(64 << 10) as usize]).unwrap();

    let (acked, unavailable) = block(async {
        let mut p = Publisher::connect(
            &format!("tcp://127.0.0.1:{port}"),
            PublisherOptions::default(),
        )
        .await
        .unwrap();
        let mut acked = Vec::new();
        let mut unavailable = 0;
        for i in 0..3000u32 {
            match p
                .publish("disk", vec![b'd'; 200 + (i % 50) as usize])
                .await
                .unwrap()
            {
                Outcome::Ack { seq, offset, .. } => acked.push((p.client_id(), seq, offset)),
                Outcome::Nack { code, .. } => {
                    assert_eq!(code, Code::Unavailable);
                    unavailable += 1;
                    if unavailable >= 20 {
                        break;
                    }
                }
            }
        }
        (acked, unavailable)
    });
    assert!(
        unavailable >= 20,
        "the disk never filled up ({} acked)",
        acked.len()
    );
    assert!(!acked.is_empty());
    // The health check says so, with the reason.
    let (status, body) = hub.http_get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot be written"), "{body}");
    // A single node is ready to serve subscribers exactly when healthy.
    assert_eq!(hub.http_get("/ready"), (503, body.clone()));
    // Space returns: service resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let resumed = block(async {
        let mut p = Publisher::connect(
            &format!("tcp://127.0.0.1:{port}"),
            PublisherOptions::default(),
        )
        .await
        .unwrap();
        p.publish("disk", &b"after"[..]).await.unwrap()
    });
    assert!(resumed.is_ack(), "{resumed:?}\n{}", hub.log());
    assert_eq!(hub.http_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(hub.http_get("/ready"), (200, "ready\n".to_string()));
    hub.terminate();
    // Every ACK is in the log, exactly once; nothing NACKed is.
    let recs = log_records(&data.join("pinion.log"));
    for (c, s, _) in &acked {
        assert_eq!(
            recs.get(&(*c, *s)).copied(),
            Some(1),
            "acked seq {s} missing from the log"
        );
    }
    assert_eq!(
        recs.len(),
        acked.len() + 1,
        "NACKed messages must not be in the log"
    );
    let out = pinion(&["log", "verify", data.join("pinion.log").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    drop(fs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `pinion log upgrade` rewrites a format-1 log as format 2 (offsets and
/// records unchanged, the old file kept), and `log stat` / `log cat` read
/// the result; a second run does nothing.
#[test]
fn log_upgrade_from_format_1() {
    let dir = temp_dir("log-upgrade");
    let log = dir.join("pinion.log");
    let opts = pinion_journal::JournalOptions {
        create_version: 1,
        preallocate: 0,
        ..Default::default()
    };
    let (mut j, _) = pinion_journal::Journal::open(&log, opts).unwrap();
    for seq in 0..5u64 {
        j.append(&pinion_journal::NewRecord {
            timestamp_us: 1_700_000_000_000_000 + seq,
            client_id: [7; 16],
            seq,
            topic: b"orders",
            payload: format!("m{seq}").as_bytes(),
        })
        .unwrap();
    }
    j.commit(true).unwrap();
    drop(j);
    let p = log.to_str().unwrap();
    let out = pinion(&["log", "upgrade", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("upgraded to format v2, 5 records"),
        "{}",
        text(&out.stdout)
    );
    assert!(dir.join("pinion.log.v1").exists());
    let stat = text(&pinion(&["log", "stat", p]).stdout);
    assert!(stat.contains("format:        v2"), "{stat}");
    assert!(stat.contains("raft vote:     -"), "{stat}");
    let cat = pinion(&["log", "cat", p, "--format", "json"]);
    let cat = text(&cat.stdout);
    assert_eq!(cat.lines().count(), 5);
    assert!(
        cat.lines()
            .all(|l| l.contains("\"term\":0,\"kind\":\"message\"")),
        "{cat}"
    );
    let again = pinion(&["log", "upgrade", p]);
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("already format v2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CPUs a thread may run on, from `/proc/<pid>/task/<tid>/status`.
fn thread_cpus(pid: u32, comm: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if name.trim() == comm {
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            out.push(line);
        }
    }
    out
}

/// `--pin-threads` (default true) pins core i to one CPU; `false` leaves
/// the hub's cores free to run on any CPU the process may use (several
/// hubs on one machine).
#[test]
fn pin_threads_decides_the_cores_affinity() {
    let allowed = thread_cpus(std::process::id(), &{
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        me.trim().to_string()
    });
    let allowed = allowed.first().cloned().unwrap_or_default();
    let multi = allowed.contains(',') || allowed.contains('-');
    for (pin, expect_one) in [(None, multi), (Some("false"), false)] {
        let dir = temp_dir(&format!("pin-{}", pin.unwrap_or("default")));
        let flag = pin.map(|p| format!("--pin-threads={p}"));
        let extra: Vec<&str> = flag.iter().map(String::as_str).collect();
        let hub = HubProc::start_with(&dir.join("data"), free_port(), &extra);
        let pid = hub.child.id();
        let cores = thread_cpus(pid, "pinion-hub-0");
        assert_eq!(cores.len(), 1, "one pinion-hub-0 thread: {cores:?}");
        if expect_one {
            assert!(
                !cores[0].contains(',') && !cores[0].contains('-'),
                "pinned: core 0 on one CPU, not {}",
                cores[0]
            );
        } else {
            assert_eq!(
                cores[0], allowed,
                "unpinned: core 0 may use every allowed CPU"
            );
        }
        let _ = hub.terminate();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `pinion bench idle-pairs` (the helper of `bench fanout --foreign-idle`)
/// holds both ends of N loopback connections, says so, and ends when its
/// stdin closes.
#[test]
fn idle_pairs_helper_holds_its_connections_until_stdin_closes() {
    use std::io::BufRead;
    let mut child = Command::new(PINION)
        .args(["bench", "idle-pairs", "--pairs", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready 200");
    let sockets = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count();
    assert!(
        sockets >= 400,
        "both ends of 200 pairs (+ the listener): {sockets}"
    );
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after its stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
