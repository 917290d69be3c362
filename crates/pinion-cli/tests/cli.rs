//! The `pinion` binary against itself, nngcat (NNG 1.5.2, Debian's
//! nng-utils) and nanocat (nanomsg 1.1.5, nanomsg-utils): every pattern,
//! the output formats and the documented exit codes.
//!
//! Loopback only. Every child process is killed by its PID when its handle
//! drops, and every wait is bounded. nngcat and nanocat are required: if one
//! is missing the tests that use it fail, naming `scripts/setup-test-env.sh`.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const PINION: &str = env!("CARGO_BIN_EXE_pinion");

/// Generous: the machine may be loaded (2 cores, tests in parallel).
const WAIT: Duration = Duration::from_secs(30);

// Exit codes, as documented in `pinion --help`.
const OK: i32 = 0;
const USAGE: i32 = 1;
const BAD_URL: i32 = 2;
const REFUSED: i32 = 3;
const IN_USE: i32 = 4;
const TIMED_OUT: i32 = 5;
const PEER: i32 = 7;

/// A child process; killed (by PID) and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn drain(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

fn tool_missing(program: &str) -> ! {
    panic!(
        "{program} is not installed: run scripts/setup-test-env.sh (it installs Debian's \
         nng-utils and nanomsg-utils, which provide nngcat and nanocat)"
    )
}

fn spawn(program: &str, args: &[&str]) -> Proc {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && program != PINION {
                tool_missing(program)
            }
            panic!("cannot start {program}: {e}")
        });
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        drain(child.stdout.take().unwrap(), stdout.clone()),
        drain(child.stderr.take().unwrap(), stderr.clone()),
    ];
    let name = format!(
        "{} {}",
        program.rsplit('/').next().unwrap_or(program),
        args.join(" ")
    );
    Proc {
        name,
        child,
        stdout,
        stderr,
        readers,
    }
}

fn pinion(args: &[&str]) -> Proc {
    spawn(PINION, args)
}

impl Proc {
    fn snapshot(&self) -> (String, String) {
        (
            String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
        )
    }

    /// Waits for the exit (at most [`WAIT`]); panics with what it printed if
    /// it does not end.
    fn wait(mut self) -> Output {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() >= deadline {
                let (out, err) = self.snapshot();
                panic!(
                    "`{}` still running after {WAIT:?}\nstdout: {out}\nstderr: {err}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        Output {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }

    /// Waits for `pinion -v` to report its listening URL on stderr.
    fn listening_url(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, err) = self.snapshot();
            // Only whole lines: the reader may have caught half of one.
            let line = err
                .split_inclusive('\n')
                .find(|l| l.ends_with('\n') && l.starts_with("pinion: listening on "));
            if let Some(line) = line {
                return line["pinion: listening on ".len()..].trim().to_string();
            }
            if Instant::now() >= deadline {
                panic!("`{}` did not report its URL; stderr: {err}", self.name);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs to completion.
fn run(program: &str, args: &[&str]) -> Output {
    spawn(program, args).wait()
}

/// A pinion listener on a free loopback port, and its URL.
fn pinion_listener(args: &[&str]) -> (Proc, String) {
    let mut all = args.to_vec();
    all.extend(["-v", "--listen", "tcp://127.0.0.1:0"]);
    let p = pinion(&all);
    let url = p.listening_url();
    (p, url)
}

/// A port that was free a moment ago (for the C tools, which cannot report
/// the port they picked).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port` (read from
/// /proc/net/tcp, without connecting to it).
fn wait_listening(port: u16, who: &Proc) {
    let needle = format!("0100007F:{port:04X}");
    let deadline = Instant::now() + WAIT;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let up = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == needle && f[3] == "0A"
        });
        if up {
            return;
        }
        if Instant::now() >= deadline {
            let (out, err) = who.snapshot();
            panic!(
                "`{}` is not listening on port {port}\nstdout: {out}\nstderr: {err}",
                who.name
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// An nngcat/nanocat listener on a free port, once it listens.
fn tool_listener(program: &str, args: &[&str], listen_flag: &str) -> (Proc, String) {
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let mut all = args.to_vec();
    all.extend([listen_flag, url.as_str()]);
    let p = spawn(program, &all);
    wait_listening(url.rsplit(':').next().unwrap().parse().unwrap(), &p);
    (p, url)
}

/// A file under the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_path(suffix: &str) -> TempFile {
    static N: AtomicU32 = AtomicU32::new(0);
    TempFile(std::env::temp_dir().join(format!(
        "pinion-cli-test-{}-{}{suffix}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}

fn temp_file(contents: &[u8]) -> TempFile {
    let f = temp_path("");
    std::fs::write(&f.0, contents).unwrap();
    f
}

#[track_caller]
fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.code,
        code,
        "{what}: exit code\nstdout: {}\nstderr: {}",
        out.text(),
        out.stderr
    );
}

/// A documented failure: the code, and one line on stderr naming `needle`.
#[track_caller]
fn assert_failure(out: &Output, code: i32, needle: &str) {
    assert_exit(out, code, needle);
    // (--verbose progress lines aside)
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            !l.starts_with("pinion: listening on ") && !l.starts_with("pinion: connected to ")
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", out.stderr);
    assert!(lines[0].starts_with("pinion: "), "{:?}", out.stderr);
    assert!(lines[0].contains(needle), "{needle:?} in {:?}", out.stderr);
}

// ---- pinion <-> pinion -----------------------------------------------------

#[test]
fn req_rep() {
    let (rep, url) = pinion_listener(&["rep", "--data", "pong", "--count", "2"]);
    let req = run(
        PINION,
        &["req", "--dial", &url, "--data", "ping", "--count", "2"],
    );
    assert_exit(&req, OK, "req");
    assert_eq!(req.text(), "\"pong\"\n\"pong\"\n");
    let rep = rep.wait();
    assert_exit(&rep, OK, "rep");
    assert_eq!(rep.text(), "\"ping\"\n\"ping\"\n");
}

#[test]
fn req_rep_with_interval_and_ascii() {
    let (rep, url) = pinion_listener(&["rep", "--data", "po\x01ng", "--count", "3"]);
    let t = Instant::now();
    let req = run(
        PINION,
        &[
            "req",
            "--dial",
            &url,
            "--data",
            "ping",
            "--count",
            "3",
            "--interval",
            "0.2",
            "--format",
            "ascii",
        ],
    );
    assert_exit(&req, OK, "req");
    assert_eq!(req.text(), "po.ng\npo.ng\npo.ng\n");
    assert!(t.elapsed() >= Duration::from_millis(400), "interval kept");
    assert_exit(&rep.wait(), OK, "rep");
}

#[test]
fn push_pull() {
    let (pull, url) = pinion_listener(&["pull", "--count", "3", "--format", "ascii"]);
    let push = run(
        PINION,
        &["push", "--dial", &url, "--data", "job", "--count", "3"],
    );
    assert_exit(&push, OK, "push");
    let pull = pull.wait();
    assert_exit(&pull, OK, "pull");
    assert_eq!(pull.text(), "job\njob\njob\n");
}

#[test]
fn push_listening_waits_for_a_puller() {
    // The message is queued before anyone connects; push must not exit (and
    // drop it) until a puller took it.
    let msg = temp_file(b"queued");
    let push = pinion(&[
        "push",
        "-v",
        "--listen",
        "tcp://127.0.0.1:0",
        "--file",
        msg.path(),
    ]);
    let url = push.listening_url();
    thread::sleep(Duration::from_millis(300));
    let pull = run(
        PINION,
        &["pull", "--dial", &url, "--count", "1", "--format", "raw"],
    );
    assert_exit(&pull, OK, "pull");
    assert_eq!(pull.stdout, b"queued");
    assert_exit(&push.wait(), OK, "push");
}

#[test]
fn push_send_timeout_without_puller() {
    let (push, _url) = pinion_listener(&["push", "--data", "x", "--send-timeout", "0.3"]);
    let out = push.wait();
    assert_failure(&out, TIMED_OUT, "--send-timeout");
}

fn pair_both_ways(proto: &str) {
    let (a, url) = pinion_listener(&[proto, "--data", "from-a", "--recv-timeout", "3"]);
    let b = run(
        PINION,
        &[
            proto,
            "--dial",
            &url,
            "--data",
            "from-b",
            "--recv-timeout",
            "3",
        ],
    );
    assert_exit(&b, OK, proto);
    assert_eq!(b.text(), "\"from-a\"\n");
    let a = a.wait();
    assert_exit(&a, OK, proto);
    assert_eq!(a.text(), "\"from-b\"\n");
}

#[test]
fn pair0_both_ways() {
    pair_both_ways("pair0");
}

#[test]
fn pair1_both_ways() {
    pair_both_ways("pair1");
}

#[test]
fn pair1_receiver_counts() {
    let (a, url) = pinion_listener(&["pair1", "--count", "2", "--format", "hex"]);
    let b = run(
        PINION,
        &[
            "pair1",
            "--dial",
            &url,
            "--data",
            "\u{7f}",
            "--count",
            "2",
            "--recv-timeout",
            "0.2",
        ],
    );
    assert_exit(&b, OK, "pair1 sender");
    let a = a.wait();
    assert_exit(&a, OK, "pair1 receiver");
    assert_eq!(a.text(), "\"\\x7f\"\n\"\\x7f\"\n");
}

#[test]
fn pub_sub_with_topics() {
    let (sub, url) = pinion_listener(&[
        "sub",
        "--subscribe",
        "news.",
        "--subscribe",
        "alert",
        "--count",
        "2",
        "--format",
        "ascii",
    ]);
    // pub dials, so its connection is up before it sends.
    for data in ["weather.rain", "news.one", "alerting"] {
        let p = run(PINION, &["pub", "--dial", &url, "--data", data]);
        assert_exit(&p, OK, "pub");
    }
    let sub = sub.wait();
    assert_exit(&sub, OK, "sub");
    assert_eq!(sub.text(), "news.one\nalerting\n");
}

#[test]
fn sub_without_topic_gets_everything() {
    let (sub, url) = pinion_listener(&["sub", "--count", "1"]);
    let p = run(PINION, &["pub", "--dial", &url, "--data", "anything"]);
    assert_exit(&p, OK, "pub");
    let sub = sub.wait();
    assert_exit(&sub, OK, "sub");
    assert_eq!(sub.text(), "\"anything\"\n");
}

#[test]
fn surveyor_respondents() {
    let (r1, u1) = pinion_listener(&["respondent", "--data", "r1", "--count", "1"]);
    let (r2, u2) = pinion_listener(&["respondent", "--data", "r2", "--count", "1"]);
    let s = run(
        PINION,
        &[
            "surveyor",
            "--dial",
            &u1,
            "--dial",
            &u2,
            "--data",
            "who",
            "--survey-time",
            "3",
            "--format",
            "ascii",
        ],
    );
    assert_exit(&s, OK, "surveyor");
    let text = s.text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["r1", "r2"]);
    for r in [r1, r2] {
        let r = r.wait();
        assert_exit(&r, OK, "respondent");
        assert_eq!(r.text(), "\"who\"\n");
    }
}

#[test]
fn bus_peers() {
    let (hub, url) = pinion_listener(&["bus", "--count", "2", "--format", "ascii"]);
    let b = run(
        PINION,
        &[
            "bus",
            "--dial",
            &url,
            "--data",
            "b",
            "--recv-timeout",
            "0.2",
        ],
    );
    let c = run(
        PINION,
        &[
            "bus",
            "--dial",
            &url,
            "--data",
            "c",
            "--recv-timeout",
            "0.2",
        ],
    );
    assert_exit(&b, OK, "bus b");
    assert_exit(&c, OK, "bus c");
    let hub = hub.wait();
    assert_exit(&hub, OK, "bus hub");
    assert_eq!(hub.text(), "b\nc\n");
}

#[test]
fn ipc_url() {
    let sock = temp_path(".sock");
    let url = format!("ipc://{}", sock.path());
    let pull = pinion(&["pull", "-v", "--listen", &url, "--count", "1"]);
    pull.listening_url();
    let push = run(PINION, &["push", "--dial", &url, "--data", "over ipc"]);
    assert_exit(&push, OK, "push");
    let pull = pull.wait();
    assert_exit(&pull, OK, "pull");
    assert_eq!(pull.text(), "\"over ipc\"\n");
}

#[test]
fn demo_still_runs() {
    let out = run(PINION, &["demo", "--count", "2"]);
    assert_exit(&out, OK, "demo");
    let text = out.text();
    assert!(text.contains("req  got \"pong: ping 1\""), "{text}");
    assert!(text.contains("push/pull: 100000 messages"), "{text}");
}

// ---- pinion <-> nngcat / nanocat --------------------------------------------

#[test]
fn nngcat_req_to_pinion_rep() {
    let (rep, url) = pinion_listener(&["rep", "--data", "pong", "--count", "1"]);
    let req = run(
        "nngcat",
        &[
            "--req0", "--dial", &url, "--data", "ping", "--format", "quoted",
        ],
    );
    assert_exit(&req, OK, "nngcat --req0");
    assert_eq!(req.text(), "\"pong\"\n");
    let rep = rep.wait();
    assert_exit(&rep, OK, "pinion rep");
    assert_eq!(rep.text(), "\"ping\"\n");
}

#[test]
fn pinion_req_to_nngcat_rep() {
    let (rep, url) = tool_listener(
        "nngcat",
        &[
            "--rep0", "--data", "pong", "--count", "1", "--format", "ascii",
        ],
        "--listen",
    );
    let req = run(
        PINION,
        &["req", "--dial", &url, "--data", "ping", "--format", "ascii"],
    );
    assert_exit(&req, OK, "pinion req");
    assert_eq!(req.text(), "pong\n");
    let rep = rep.wait();
    assert_exit(&rep, OK, "nngcat --rep0");
    // nngcat's ascii format prints no delimiter.
    assert_eq!(rep.text(), "ping");
}

#[test]
fn nngcat_pair0_both_ways() {
    let (p, url) = pinion_listener(&["pair0", "--data", "from-pinion", "--recv-timeout", "3"]);
    let n = run(
        "nngcat",
        &[
            "--pair0",
            "--dial",
            &url,
            "--data",
            "from-nngcat",
            "--recv-timeout",
            "2",
            "--format",
            "quoted",
        ],
    );
    assert_exit(&n, OK, "nngcat --pair0");
    assert_eq!(n.text(), "\"from-pinion\"\n");
    let p = p.wait();
    assert_exit(&p, OK, "pinion pair0");
    assert_eq!(p.text(), "\"from-nngcat\"\n");
}

#[test]
fn pinion_pair1_to_nngcat() {
    let (n, url) = tool_listener(
        "nngcat",
        &["--pair1", "--count", "1", "--format", "hex"],
        "--listen",
    );
    let p = run(
        PINION,
        &[
            "pair1",
            "--dial",
            &url,
            "--data",
            "p1",
            "--recv-timeout",
            "0.2",
        ],
    );
    assert_exit(&p, OK, "pinion pair1");
    let n = n.wait();
    assert_exit(&n, OK, "nngcat --pair1");
    assert_eq!(n.text(), "\"\\x70\\x31\"\n");
}

#[test]
fn nngcat_pub_to_pinion_sub() {
    let (sub, url) = pinion_listener(&[
        "sub",
        "--subscribe",
        "t.",
        "--count",
        "1",
        "--format",
        "ascii",
    ]);
    // nngcat's interval is whole seconds; repeat in case the first message
    // races the subscription's pipe. Killed when `publisher` drops.
    let publisher = spawn(
        "nngcat",
        &[
            "--pub0",
            "--dial",
            &url,
            "--data",
            "t.hello",
            "--count",
            "20",
            "--interval",
            "1",
        ],
    );
    let sub = sub.wait();
    assert_exit(&sub, OK, "pinion sub");
    assert_eq!(sub.text(), "t.hello\n");
    drop(publisher);
}

#[test]
fn pinion_pub_to_nngcat_sub() {
    let (publisher, url) = pinion_listener(&[
        "pub",
        "--data",
        "tick",
        "--interval",
        "0.1",
        "--count",
        "300",
    ]);
    let sub = run(
        "nngcat",
        &[
            "--sub0",
            "--dial",
            &url,
            "--subscribe",
            "ti",
            "--count",
            "1",
            "--format",
            "quoted",
        ],
    );
    assert_exit(&sub, OK, "nngcat --sub0");
    assert_eq!(sub.text(), "\"tick\"\n");
    drop(publisher);
}

#[test]
fn pinion_surveyor_to_nngcat_respondent() {
    let (r, url) = tool_listener(
        "nngcat",
        &[
            "--respondent0",
            "--data",
            "here",
            "--count",
            "1",
            "--format",
            "quoted",
        ],
        "--listen",
    );
    let s = run(
        PINION,
        &[
            "surveyor",
            "--dial",
            &url,
            "--data",
            "roll call",
            "--survey-time",
            "2",
        ],
    );
    assert_exit(&s, OK, "pinion surveyor");
    assert_eq!(s.text(), "\"here\"\n");
    let r = r.wait();
    assert_exit(&r, OK, "nngcat --respondent0");
    assert_eq!(r.text(), "\"roll call\"\n");
}

#[test]
fn nanocat_req_to_pinion_rep() {
    let (rep, url) = pinion_listener(&["rep", "--data", "pong", "--count", "1"]);
    let req = run(
        "nanocat",
        &["--req", "--connect", &url, "--data", "ping", "--ascii"],
    );
    assert_exit(&req, OK, "nanocat --req");
    assert_eq!(req.text(), "pong\n");
    let rep = rep.wait();
    assert_exit(&rep, OK, "pinion rep");
    assert_eq!(rep.text(), "\"ping\"\n");
}

#[test]
fn pinion_push_to_nanocat_pull() {
    let (pull, url) = tool_listener("nanocat", &["--pull", "--quoted"], "--bind");
    let push = run(PINION, &["push", "--dial", &url, "--data", "to nanomsg"]);
    assert_exit(&push, OK, "pinion push");
    // nanocat pull runs until killed: wait for its line, then drop it.
    let deadline = Instant::now() + WAIT;
    while !pull.snapshot().0.contains('\n') {
        assert!(Instant::now() < deadline, "nanocat printed nothing");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pull.snapshot().0, "\"to nanomsg\"\n");
}

// ---- output formats, byte for byte against nngcat ---------------------------

/// What nngcat prints for `body` in `format`, received from pinion push, and
/// what pinion prints for it, received from nngcat push.
fn formats_of(body: &[u8], format: &str) -> (Vec<u8>, Vec<u8>) {
    let tmp = temp_file(body);
    let file = tmp.path();

    let (n, url) = tool_listener(
        "nngcat",
        &["--pull0", "--count", "1", "--format", format],
        "--listen",
    );
    assert_exit(
        &run(PINION, &["push", "--dial", &url, "--file", file]),
        OK,
        "push",
    );
    let n = n.wait();
    assert_exit(&n, OK, "nngcat --pull0");

    let (p, url) = pinion_listener(&["pull", "--count", "1", "--format", format]);
    assert_exit(
        &run("nngcat", &["--push0", "--dial", &url, "--file", file]),
        OK,
        "nngcat --push0",
    );
    let p = p.wait();
    assert_exit(&p, OK, "pinion pull");
    (n.stdout, p.stdout)
}

const AWKWARD: &[u8] = b"a\x00b\x01\tc\"\\\n\x7f\xff\xc3\xa9 z\r\x1b[0m'?";

#[test]
fn format_quoted_matches_nngcat() {
    let (nngcat, pinion) = formats_of(AWKWARD, "quoted");
    assert_eq!(
        String::from_utf8_lossy(&pinion),
        String::from_utf8_lossy(&nngcat)
    );
}

#[test]
fn format_hex_matches_nngcat() {
    let (nngcat, pinion) = formats_of(AWKWARD, "hex");
    assert_eq!(
        String::from_utf8_lossy(&pinion),
        String::from_utf8_lossy(&nngcat)
    );
}

#[test]
fn format_raw_matches_nngcat() {
    let (nngcat, pinion) = formats_of(AWKWARD, "raw");
    assert_eq!(pinion, nngcat);
    assert_eq!(pinion, AWKWARD);
}

#[test]
fn format_msgpack_matches_nngcat() {
    let (nngcat, pinion) = formats_of(AWKWARD, "msgpack");
    assert_eq!(pinion, nngcat);
    let (nngcat, pinion) = formats_of(&[b'x'; 300], "msgpack");
    assert_eq!(pinion, nngcat);
}

#[test]
fn format_ascii_matches_nngcat_plus_newline() {
    // nngcat 1.5.2 runs ascii messages together; pinion ends each with a
    // newline (as nanocat does). Otherwise identical.
    let (mut nngcat, pinion) = formats_of(AWKWARD, "ascii");
    nngcat.push(b'\n');
    assert_eq!(
        String::from_utf8_lossy(&pinion),
        String::from_utf8_lossy(&nngcat)
    );
}

// ---- exit codes -------------------------------------------------------------

#[test]
fn exit_usage() {
    for args in [
        &["pull"][..],
        &["push", "--dial", "tcp://127.0.0.1:9"],
        &["pull", "--dial", "tcp://127.0.0.1:9", "--format", "bogus"],
        &["pull", "--dial", "tcp://127.0.0.1:9", "--data", "x"],
        &[
            "req",
            "--dial",
            "tcp://127.0.0.1:9",
            "--data",
            "x",
            "--file",
            "y",
        ],
        &[
            "pull",
            "--dial",
            "tcp://127.0.0.1:9",
            "--recv-timeout",
            "soon",
        ],
        &["nonsense"],
        &[],
    ] {
        let out = run(PINION, args);
        assert_exit(&out, USAGE, &format!("pinion {}", args.join(" ")));
        assert!(!out.stderr.is_empty());
    }
    let out = run(
        PINION,
        &[
            "push",
            "--dial",
            "tcp://127.0.0.1:9",
            "--file",
            "/nonexistent/msg",
        ],
    );
    assert_failure(&out, USAGE, "/nonexistent/msg");
}

#[test]
fn exit_help_and_version() {
    let out = run(PINION, &["--help"]);
    assert_exit(&out, OK, "--help");
    let help = out.text();
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("pinion rep --listen tcp://127.0.0.1:5555 --data pong"));
    for sub in [
        "req",
        "rep",
        "pub",
        "sub",
        "push",
        "pull",
        "surveyor",
        "respondent",
        "bus",
        "pair0",
        "pair1",
    ] {
        let out = run(PINION, &[sub, "--help"]);
        assert_exit(&out, OK, sub);
        let help = out.text();
        assert!(
            help.contains(&format!("pinion {sub} --")),
            "{sub} example: {help}"
        );
        assert!(help.contains("Exit codes:"), "{sub}: {help}");
    }
    assert_exit(&run(PINION, &["--version"]), OK, "--version");
}

#[test]
fn exit_bad_url() {
    let out = run(PINION, &["pull", "--dial", "tcp://no-port"]);
    assert_failure(&out, BAD_URL, "tcp://no-port");
    let out = run(
        PINION,
        &["push", "--listen", "udp://127.0.0.1:5", "--data", "x"],
    );
    assert_failure(&out, BAD_URL, "udp://127.0.0.1:5");
}

#[test]
fn exit_connection_refused() {
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let out = run(PINION, &["push", "--dial", &url, "--data", "x"]);
    assert_failure(&out, REFUSED, &url);
    assert!(
        out.stderr.contains("listening"),
        "says what to do: {}",
        out.stderr
    );
    // ipc: no socket file is the same situation.
    let sock = temp_path(".sock");
    let url = format!("ipc://{}", sock.path());
    let out = run(PINION, &["pull", "--dial", &url]);
    assert_failure(&out, REFUSED, &url);
}

#[test]
fn exit_address_in_use() {
    let (_first, url) = pinion_listener(&["pull"]);
    let out = run(PINION, &["pull", "--listen", &url]);
    assert_failure(&out, IN_USE, &url);
}

#[test]
fn exit_recv_timeout() {
    let out = run(
        PINION,
        &[
            "pull",
            "--listen",
            "tcp://127.0.0.1:0",
            "--recv-timeout",
            "0.3",
        ],
    );
    assert_failure(&out, TIMED_OUT, "--recv-timeout");
    assert!(out.stdout.is_empty());
}

#[test]
fn exit_recv_timeout_before_count() {
    let (pull, url) = pinion_listener(&["pull", "--count", "2", "--recv-timeout", "3"]);
    assert_exit(
        &run(PINION, &["push", "--dial", &url, "--data", "one"]),
        OK,
        "push",
    );
    let out = pull.wait();
    assert_failure(&out, TIMED_OUT, "1 of 2");
    assert_eq!(out.text(), "\"one\"\n");
}

#[test]
fn recv_timeout_after_messages_is_success() {
    let (pull, url) = pinion_listener(&["pull", "--recv-timeout", "3"]);
    assert_exit(
        &run(PINION, &["push", "--dial", &url, "--data", "one"]),
        OK,
        "push",
    );
    let out = pull.wait();
    assert_exit(&out, OK, "pull");
    assert_eq!(out.text(), "\"one\"\n");
}

#[test]
fn exit_req_without_reply() {
    // rep without --data prints requests and never answers.
    let (_rep, url) = pinion_listener(&["rep"]);
    let out = run(
        PINION,
        &[
            "req",
            "--dial",
            &url,
            "--data",
            "x",
            "--recv-timeout",
            "0.5",
        ],
    );
    assert_failure(&out, TIMED_OUT, &url);
}

#[test]
fn exit_surveyor_without_response() {
    let out = run(
        PINION,
        &[
            "surveyor",
            "--listen",
            "tcp://127.0.0.1:0",
            "--data",
            "q",
            "--survey-time",
            "0.3",
        ],
    );
    assert_failure(&out, TIMED_OUT, "--survey-time");
}

#[test]
fn exit_incompatible_peer() {
    let (_pull, url) = pinion_listener(&["pull"]);
    let out = run(PINION, &["req", "--dial", &url, "--data", "x"]);
    assert_failure(&out, PEER, &url);
}

// ---------------------------------------------------------------------------
// TLS: --cacert, --cert, --key, -k, --auth-mode
// ---------------------------------------------------------------------------

/// A CA, a server certificate (localhost, 127.0.0.1) and a client
/// certificate, written as PEM files into a fresh directory (made for the
/// test; no key is committed).
struct TlsFiles {
    dir: std::path::PathBuf,
}

impl TlsFiles {
    fn new(name: &str) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let dir =
            std::env::temp_dir().join(format!("pinion-cli-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "cli test CA");
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(p, ca_key);
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        for (who, sans) in [
            ("server", vec!["localhost".to_string()]),
            ("client", vec![]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            if who == "server" {
                p.subject_alt_names
                    .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            }
            p.distinguished_name.push(DnType::CommonName, who);
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{who}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
        }
        TlsFiles { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tls_cacert_on_a_listener_means_mutual_tls() {
    let f = TlsFiles::new("mutual");
    let (ca, scert, skey) = (f.path("ca.pem"), f.path("server.pem"), f.path("server.key"));
    let (ccert, ckey) = (f.path("client.pem"), f.path("client.key"));
    let rep = pinion(&[
        "rep",
        "-v",
        "--listen",
        "tls+tcp://127.0.0.1:0",
        "--cacert",
        &ca,
        "--cert",
        &scert,
        "--key",
        &skey,
        "--data",
        "pong",
        "--count",
        "1",
        "--format",
        "ascii",
    ]);
    let url = rep.listening_url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("tls+tcp://localhost:"), "{url}");

    // No client certificate: refused, with what to do.
    let out = run(
        PINION,
        &["req", "--dial", &url, "--cacert", &ca, "--data", "ping"],
    );
    assert_eq!(out.code, PEER, "{}", out.stderr);
    assert!(
        out.stderr.contains("requires a client certificate"),
        "{}",
        out.stderr
    );

    // Without --cacert the dialer checks the system's roots, which do not
    // have this CA: refused (nngcat would have connected).
    let out = run(
        PINION,
        &[
            "req", "--dial", &url, "--cert", &ccert, "--key", &ckey, "--data", "ping",
        ],
    );
    assert_eq!(out.code, PEER, "{}", out.stderr);
    assert!(
        out.stderr.contains("not signed by a CA this end trusts"),
        "{}",
        out.stderr
    );

    let out = run(
        PINION,
        &[
            "req", "--dial", &url, "--cacert", &ca, "--cert", &ccert, "--key", &ckey, "--data",
            "ping", "--format", "ascii",
        ],
    );
    assert_eq!(out.code, OK, "{}", out.stderr);
    assert_eq!(out.text().trim(), "pong");
    let r = rep.wait();
    assert_eq!(r.code, OK, "{}", r.stderr);
    assert_eq!(r.text().trim(), "ping");
}

#[test]
fn tls_insecure_dialer_and_auth_mode_none() {
    let f = TlsFiles::new("insecure");
    let (scert, skey) = (f.path("server.pem"), f.path("server.key"));
    // --cacert given but --auth-mode none: no client certificates asked.
    let rep = pinion(&[
        "rep",
        "-v",
        "--listen",
        "wss://127.0.0.1:0/x",
        "--cacert",
        &f.path("ca.pem"),
        "--auth-mode",
        "none",
        "--cert",
        &scert,
        "--key",
        &skey,
        "--data",
        "pong",
        "--count",
        "1",
    ]);
    let url = rep.listening_url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let out = run(
        PINION,
        &[
            "req", "--dial", &url, "-k", "--data", "ping", "--format", "ascii",
        ],
    );
    assert_eq!(out.code, OK, "{}", out.stderr);
    assert_eq!(out.text().trim(), "pong");
    assert_eq!(rep.wait().code, OK);

    // A TLS listener without a certificate is a usage error.
    let out = run(PINION, &["rep", "--listen", "tls+tcp://127.0.0.1:0"]);
    assert_eq!(out.code, USAGE, "{}", out.stderr);
    assert!(out.stderr.contains("needs a certificate"), "{}", out.stderr);
    // A missing file is named.
    let out = run(
        PINION,
        &[
            "rep",
            "--listen",
            "tls+tcp://127.0.0.1:0",
            "--cert",
            "/nonexistent/cert.pem",
        ],
    );
    assert_eq!(out.code, USAGE, "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/cert.pem"),
        "{}",
        out.stderr
    );
    // TLS flags are ignored for plain URLs (as nngcat does).
    let (p, url) = pinion_listener(&[
        "rep",
        "--data",
        "pong",
        "--count",
        "1",
        "--cacert",
        "/nonexistent",
    ]);
    let out = run(PINION, &["req", "--dial", &url, "--data", "x", "-k"]);
    assert_eq!(out.code, OK, "{}", out.stderr);
    drop(p);
}

#[test]
fn tls_nngcat_dials_a_pinion_listener_with_cacert() {
    let f = TlsFiles::new("nngcat");
    let rep = pinion(&[
        "rep",
        "-v",
        "--listen",
        "tls+tcp://127.0.0.1:0",
        "--cert",
        &f.path("server.pem"),
        "--key",
        &f.path("server.key"),
        "--data",
        "pong",
        "--count",
        "1",
        "--format",
        "ascii",
    ]);
    let url = rep.listening_url().replace("127.0.0.1", "localhost");
    let out = run(
        "nngcat",
        &[
            "--req0",
            "--dial",
            &url,
            "--cacert",
            &f.path("ca.pem"),
            "--data",
            "ping",
            "--ascii",
        ],
    );
    assert_eq!(out.code, 0, "nngcat: {}", out.stderr);
    assert_eq!(out.text().trim(), "pong");
    let r = rep.wait();
    assert_eq!(r.code, OK, "{}", r.stderr);
    assert_eq!(r.text().trim(), "ping");
}
