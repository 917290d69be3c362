//! The harness shared by the interop test files: payloads (the same
//! functions as `tests/interop/peer.py`), a small JSON value for peer
//! configs and output lines, the Python interpreter and peer processes
//! (killed by pid when dropped), transports/directions and the test matrix
//! macros.
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::{Bytes, CallerError, Options, PeerError, Protocol};

pub const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Payloads (the same functions as in peer.py)
// ---------------------------------------------------------------------------

/// Distinct bodies: #0 empty, #1 and #51 64 KiB, the others 4..303 bytes
/// starting with `i` as a big-endian u32.
pub fn payload(i: u32) -> Vec<u8> {
    let n = if i == 0 {
        0
    } else if i % 50 == 1 {
        65536
    } else {
        4 + (i as usize * 37) % 300
    };
    let mut v = i.to_be_bytes().to_vec();
    v.extend((0..n.saturating_sub(4)).map(|j| ((i as usize * 7 + j * 13) & 0xff) as u8));
    v.truncate(n);
    v
}

pub fn reply(body: &[u8]) -> Vec<u8> {
    let mut v = b"re:".to_vec();
    v.extend_from_slice(body);
    v
}

/// Prints at most 48 bytes of a body in hex, for assertion messages.
pub fn short(b: &[u8]) -> String {
    let hex: String = b.iter().take(48).map(|x| format!("{x:02x}")).collect();
    if b.len() > 48 {
        format!("{}:{hex}...", b.len())
    } else {
        format!("{}:{hex}", b.len())
    }
}

// ---------------------------------------------------------------------------
// A small JSON value: configs to peer.py and its output lines
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

pub static NULL: J = J::Null;

impl J {
    pub fn get(&self, k: &str) -> &J {
        match self {
            J::Obj(v) => v
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v)
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }
    pub fn str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn u64(&self) -> Option<u64> {
        match self {
            J::Num(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
            _ => None,
        }
    }
    pub fn bool(&self) -> Option<bool> {
        match self {
            J::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn arr(&self) -> &[J] {
        match self {
            J::Arr(v) => v,
            _ => &[],
        }
    }
    pub fn set(&mut self, k: &str, v: impl Into<J>) {
        if let J::Obj(o) = self {
            o.retain(|(kk, _)| kk != k);
            o.push((k.to_string(), v.into()));
        }
    }
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_string())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
impl From<u64> for J {
    fn from(n: u64) -> J {
        J::Num(n as f64)
    }
}
impl From<u32> for J {
    fn from(n: u32) -> J {
        J::Num(n.into())
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl From<i32> for J {
    fn from(n: i32) -> J {
        J::Num(n.into())
    }
}

/// `obj! {"k" => v, ...}` builds a [`J::Obj`].
macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {
        J::Obj(vec![$(($k.to_string(), J::from($v))),*])
    };
}

impl fmt::Display for J {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            J::Null => f.write_str("null"),
            J::Bool(b) => write!(f, "{b}"),
            J::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => write!(f, "{}", *n as i64),
            J::Num(n) => write!(f, "{n}"),
            J::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            J::Arr(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            J::Obj(v) => {
                f.write_str("{")?;
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{x}", J::Str(k.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}

pub fn parse_json(s: &str) -> Result<J, String> {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at {}", c as char, self.i))
            }
        }
        fn lit(&mut self, w: &str, v: J) -> Result<J, String> {
            if self.b[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                Err(format!("bad literal at {}", self.i))
            }
        }
        fn hex4(&mut self) -> Result<u32, String> {
            let h = self.b.get(self.i..self.i + 4).ok_or("short \\u escape")?;
            self.i += 4;
            u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
                .map_err(|e| e.to_string())
        }
        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out = Vec::new();
            loop {
                let c = *self.b.get(self.i).ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = *self.b.get(self.i).ok_or("bad escape")?;
                        self.i += 1;
                        let ch = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let mut u = self.hex4()?;
                                if (0xd800..0xdc00).contains(&u)
                                    && self.b[self.i..].starts_with(b"\\u")
                                {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    u = 0x10000
                                        + ((u - 0xd800) << 10)
                                        + (lo.wrapping_sub(0xdc00) & 0x3ff);
                                }
                                char::from_u32(u).unwrap_or('\u{fffd}')
                            }
                            _ => return Err(format!("bad escape at {}", self.i)),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).map_err(|e| e.to_string())
        }
        fn value(&mut self) -> Result<J, String> {
            self.ws();
            match self.b.get(self.i).ok_or("unexpected end")? {
                b'{' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(J::Obj(v));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.eat(b':')?;
                        v.push((k, self.value()?));
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(J::Obj(v));
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                b'[' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(J::Arr(v));
                    }
                    loop {
                        v.push(self.value()?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(J::Arr(v));
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                b'"' => Ok(J::Str(self.string()?)),
                b't' => self.lit("true", J::Bool(true)),
                b'f' => self.lit("false", J::Bool(false)),
                b'n' => self.lit("null", J::Null),
                _ => {
                    let st = self.i;
                    while self.i < self.b.len()
                        && matches!(
                            self.b[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    let t = std::str::from_utf8(&self.b[st..self.i]).map_err(|e| e.to_string())?;
                    t.parse::<f64>()
                        .map(J::Num)
                        .map_err(|_| format!("bad number {t:?} at {st}"))
                }
            }
        }
    }
    let mut p = P {
        b: s.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.b.len() {
        return Err(format!("trailing characters at {}", p.i));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// The Python interpreter and peer processes
// ---------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

pub const SETUP_HINT: &str =
    "Run `scripts/setup-test-env.sh` (as root, Debian 12) to create $REPO/.venv with \
     pynng==0.9.0, or set PINION_PYTHON to a Python that has pynng";

/// The interpreter, checked once: it must run and import pynng. Never skips:
/// a missing interpreter is a test failure with instructions.
pub fn python() -> &'static Path {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = PY.get_or_init(|| {
        let (py, origin) = match std::env::var_os("PINION_PYTHON") {
            Some(p) => (PathBuf::from(p), "$PINION_PYTHON"),
            None => (repo_root().join(".venv/bin/python"), "the repository venv"),
        };
        let out = Command::new(&py)
            .args(["-c", "import sys, pynng; sys.stdout.write(pynng.__version__)"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "pynng interop tests need a Python interpreter with pynng, but {} ({origin}) cannot be run: {e}. \
                     {SETUP_HINT}",
                    py.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "pynng interop tests need pynng, but `{} -c 'import pynng'` ({origin}) failed: {}. {SETUP_HINT}",
                py.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let script = repo_root().join("tests/interop/peer.py");
        if !script.is_file() {
            return Err(format!("missing {}", script.display()));
        }
        Ok(py)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// One `peer.py` process. Killed (by its pid) when dropped if still running.
pub struct Peer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<J>,
    stderr: Arc<Mutex<String>>,
    pending_result: Option<J>,
    /// The failure was already reported with the peer's output.
    reported: bool,
}

impl Peer {
    pub fn spawn(mut cfg: J) -> Peer {
        let py = python();
        if cfg.get("deadline").u64().is_none() {
            cfg.set("deadline", 20);
        }
        let name = format!(
            "peer[{} {} {} {}]",
            cfg.get("scenario").str().unwrap_or("?"),
            cfg.get("pattern")
                .str()
                .or(cfg.get("kind").str())
                .unwrap_or(""),
            cfg.get("role").str().unwrap_or("?"),
            cfg.get("url")
                .str()
                .or(cfg.get("urls").arr().first().and_then(J::str))
                .unwrap_or("?"),
        );
        let mut child = Command::new(py)
            .arg("-u")
            .arg(repo_root().join("tests/interop/peer.py"))
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} for {name}: {e}. {SETUP_HINT}", py.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let junk = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match parse_json(&line) {
                    Ok(j) => {
                        if tx.send(j).is_err() {
                            break;
                        }
                    }
                    Err(e) => junk
                        .lock()
                        .unwrap()
                        .push_str(&format!("[non-JSON stdout: {line:?} ({e})]\n")),
                }
            }
        });
        let err = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Peer {
            name,
            child,
            stdin,
            lines,
            stderr,
            pending_result: None,
            reported: false,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Fails the test with the peer's name and stderr.
    pub fn fail(&mut self, msg: String) -> ! {
        self.reported = true;
        // Let the stderr reader catch up.
        thread::sleep(Duration::from_millis(50));
        panic!(
            "{}: {msg}\n--- peer stderr ---\n{}",
            self.name,
            self.stderr()
        )
    }

    /// Sends one command line to the peer (on its stdin).
    pub fn tell(&mut self, cmd: &str) {
        let r = match self.stdin.as_mut() {
            Some(w) => writeln!(w, "{cmd}").and_then(|_| w.flush()),
            None => Err(io::Error::other("stdin already closed")),
        };
        if let Err(e) = r {
            self.fail(format!("cannot send the command {cmd:?}: {e}"));
        }
    }

    /// Waits for an output line with `"event": ev`.
    pub fn wait_event(&mut self, ev: &str, timeout: Duration) -> J {
        self.wait_for(ev, timeout, |_| true)
    }

    /// Waits for an output line with `"event": ev` for which `pred` holds;
    /// other lines are skipped.
    pub fn wait_for(&mut self, ev: &str, timeout: Duration, pred: impl Fn(&J) -> bool) -> J {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(j) if j.get("event").str() == Some(ev) && pred(&j) => return j,
                Ok(j) if j.get("event").str() == Some("result") => {
                    self.pending_result = Some(j.clone());
                    self.fail(format!("finished while the test waited for {ev:?}: {j}"));
                }
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail(format!("no {ev:?} line within {timeout:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the peer is exiting (bounded wait).
                    let mut st = None;
                    for _ in 0..100 {
                        st = self.child.try_wait().ok().flatten();
                        if st.is_some() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    self.fail(format!("closed its output ({st:?}) before printing {ev:?}"));
                }
            }
        }
    }

    /// The URL a listening peer bound.
    pub fn listening_url(&mut self) -> String {
        let j = self.wait_event("listening", Duration::from_secs(15));
        j.get("url")
            .str()
            .expect("listening line has a url")
            .to_string()
    }

    /// Ends the peer: closes its stdin (the signal that the test has
    /// everything it needs), waits for its result line and its exit, and
    /// fails the test unless it reported `ok` and exited 0.
    pub fn finish(mut self) -> J {
        drop(self.stdin.take());
        let res = match self.pending_result.take() {
            Some(r) => r,
            None => self.wait_event("result", Duration::from_secs(30)),
        };
        let until = Instant::now() + Duration::from_secs(8);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    self.fail(format!("did not exit after its result {res}"));
                }
                Err(e) => panic!("{}: wait: {e}", self.name),
            }
        };
        if res.get("ok").bool() != Some(true) || !status.success() {
            self.fail(format!("failed (exit {status}): {res}"));
        }
        res
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() && !self.reported {
            // The test failed on the Rust side (often a timeout); show what
            // the peer said, which usually names the real cause.
            thread::sleep(Duration::from_millis(50));
            let mut out: Vec<String> = self.pending_result.iter().map(|j| j.to_string()).collect();
            out.extend(self.lines.try_iter().map(|j| j.to_string()));
            eprintln!(
                "--- {} (killed by the failing test) ---\noutput: {}\nstderr:\n{}",
                self.name,
                out.join("\n        "),
                self.stderr()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Transports, directions, helpers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tr {
    Tcp,
    Ipc,
    /// `ws://` (only for scenarios played by pynng sockets: the raw peers
    /// speak SP over TCP/IPC).
    Ws,
}

impl Tr {
    /// A fresh URL to listen on: port 0 for tcp and ws, a unique socket path
    /// in a per-process temp dir for ipc.
    pub fn listen_url(self) -> String {
        match self {
            Tr::Tcp => "tcp://127.0.0.1:0".to_string(),
            Tr::Ws => "ws://127.0.0.1:0/pinion-interop".to_string(),
            Tr::Ipc => {
                static N: AtomicUsize = AtomicUsize::new(0);
                let dir = std::env::temp_dir()
                    .join(format!("pinion-interop-more-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("temp dir for ipc sockets");
                let p = dir.join(format!("s{}.sock", N.fetch_add(1, Ordering::Relaxed)));
                let _ = std::fs::remove_file(&p);
                format!("ipc://{}", p.display())
            }
        }
    }
}

/// Who connects to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The peer (pynng or raw) listens; pinion dials.
    PinionDials,
    /// Pinion listens; the peer dials.
    PeerDials,
}

/// Connects `sock` and a new peer configured by `cfg` over `tr`, in
/// direction `dir`. When pinion dials, its `dial` has returned (first pipe
/// up); when the peer dials, the peer may still be connecting.
pub fn link(sock: &Socket, tr: Tr, dir: Dir, mut cfg: J) -> Peer {
    match dir {
        Dir::PeerDials => {
            let ep = sock.listen(&tr.listen_url()).expect("pinion listen");
            cfg.set("role", "dial");
            cfg.set("url", ep.url().to_string());
            Peer::spawn(cfg)
        }
        Dir::PinionDials => {
            cfg.set("role", "listen");
            cfg.set("url", tr.listen_url());
            let mut peer = Peer::spawn(cfg);
            let url = peer.listening_url();
            if let Err(e) = sock.dial(&url) {
                panic!(
                    "pinion dial {url} failed: {e:?}\n--- peer stderr ---\n{}",
                    peer.stderr()
                );
            }
            peer
        }
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < until,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn recv(sock: &Socket, what: &str) -> Vec<u8> {
    match sock.recv_timeout(Some(T)) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("pinion recv ({what}): {e:?}; stats {:?}", sock.stats()),
    }
}

/// One test per transport and direction for `fn $name(Tr, Dir)`;
/// `matrix!(name, ws)` adds `ws://` in both directions.
macro_rules! matrix {
    ($name:ident, ws) => {
        mod $name {
            use super::{Dir, Tr};
            #[test]
            fn tcp_pinion_dials() {
                super::$name(Tr::Tcp, Dir::PinionDials)
            }
            #[test]
            fn tcp_peer_dials() {
                super::$name(Tr::Tcp, Dir::PeerDials)
            }
            #[test]
            fn ipc_pinion_dials() {
                super::$name(Tr::Ipc, Dir::PinionDials)
            }
            #[test]
            fn ipc_peer_dials() {
                super::$name(Tr::Ipc, Dir::PeerDials)
            }
            #[test]
            fn ws_pinion_dials() {
                super::$name(Tr::Ws, Dir::PinionDials)
            }
            #[test]
            fn ws_peer_dials() {
                super::$name(Tr::Ws, Dir::PeerDials)
            }
        }
    };
    ($name:ident) => {
        mod $name {
            use super::{Dir, Tr};
            #[test]
            fn tcp_pinion_dials() {
                super::$name(Tr::Tcp, Dir::PinionDials)
            }
            #[test]
            fn tcp_peer_dials() {
                super::$name(Tr::Tcp, Dir::PeerDials)
            }
            #[test]
            fn ipc_pinion_dials() {
                super::$name(Tr::Ipc, Dir::PinionDials)
            }
            #[test]
            fn ipc_peer_dials() {
                super::$name(Tr::Ipc, Dir::PeerDials)
            }
        }
    };
}

/// One test per transport for `fn $name(Tr)`; `per_transport!(name, ws)`
/// adds `ws://`.
macro_rules! per_transport {
    ($name:ident, ws) => {
        mod $name {
            use super::Tr;
            #[test]
            fn tcp() {
                super::$name(Tr::Tcp)
            }
            #[test]
            fn ipc() {
                super::$name(Tr::Ipc)
            }
            #[test]
            fn ws() {
                super::$name(Tr::Ws)
            }
        }
    };
    ($name:ident) => {
        mod $name {
            use super::Tr;
            #[test]
            fn tcp() {
                super::$name(Tr::Tcp)
            }
            #[test]
            fn ipc() {
                super::$name(Tr::Ipc)
            }
        }
    };
}
