//! Servers the benchmark starts: spawning, readiness, stopping by PID, temp
//! dirs, and the process-wide odds and ends (signals, fd limit, CPU time).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;

/// How long a server gets after SIGTERM before SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server gets to accept TCP connections after spawning.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

// ---- interruption -----------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLERS: Once = Once::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    // Async-signal-safe: an atomic swap, and `_exit` on the second signal.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: leave now. Children die with us (PR_SET_PDEATHSIG).
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
}

/// Installs SIGINT/SIGTERM handlers (once per process) that only set a flag:
/// the run in progress stops, its servers are stopped by the drop guards, and
/// `run_publish` returns [`LoadgenError::Interrupted`]. A second signal exits
/// at once.
pub(crate) fn install_signal_handlers() {
    // SAFETY: a zeroed sigaction is a valid empty one; the handler is an
    // extern "C" fn that only does async-signal-safe work; the pointers
    // passed point at live locals or are null where the API allows it.
    HANDLERS.call_once(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    });
}

/// True once SIGINT or SIGTERM arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub(crate) fn check_interrupted() -> Result<(), LoadgenError> {
    if interrupted() {
        Err(LoadgenError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking early (with an error) on interruption.
pub(crate) fn sleep_interruptible(d: Duration) -> Result<(), LoadgenError> {
    let until = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

// ---- process limits ---------------------------------------------------------

/// Raises the soft open-files limit to the hard one (each client is a socket
/// here and in the server, which inherits the limit).
pub(crate) fn raise_nofile_limit() -> u64 {
    // SAFETY: get/setrlimit read and write the rlimit structs on our
    // stack, which outlive the calls; a zeroed rlimit is valid.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        r.rlim_cur as u64
    }
}

// ---- ports and binaries -----------------------------------------------------

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> Result<u16, LoadgenError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| LoadgenError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = l
        .local_addr()
        .map_err(|e| LoadgenError::io("local_addr", e))?
        .port();
    Ok(port)
}

/// Finds `name` on `PATH`, else at the listed fallback paths.
pub(crate) fn find_binary(
    name: &'static str,
    fallbacks: &[&str],
    hint: &'static str,
) -> Result<PathBuf, LoadgenError> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
        looked.push(PathBuf::from(format!("$PATH/{name}")));
    }
    for f in fallbacks {
        let p = PathBuf::from(f);
        if is_executable(&p) {
            return Ok(p);
        }
        looked.push(p);
    }
    Err(LoadgenError::MissingBinary { name, looked, hint })
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

// ---- temp dirs --------------------------------------------------------------

/// A fresh temp dir `pinion-bench-<what>-XXXX` under `$TMPDIR` (the same
/// file system for every target, so the disk probe measures the device the
/// servers write to).
pub(crate) fn temp_dir(what: &str) -> Result<tempfile::TempDir, LoadgenError> {
    tempfile::Builder::new()
        .prefix(&format!("pinion-bench-{what}-"))
        .tempdir()
        .map_err(|e| {
            LoadgenError::io(
                format!("creating a temp dir in {:?}", std::env::temp_dir()),
                e,
            )
        })
}

/// Writes a hub config into `dir` that lifts the hub's admission caps
/// (connections and handshakes per port and per source): a benchmark opens
/// up to ~20,000 connections from a few loopback addresses, in bursts,
/// which the defaults rightly refuse from one source. The benchmark
/// measures the hub's data path, not its guards (the hostile-input suite
/// measures those). Returns the file, for `pinion serve -c`.
pub(crate) fn bench_hub_config(dir: &std::path::Path) -> Result<std::path::PathBuf, LoadgenError> {
    let path = dir.join("bench-hub.toml");
    let text = "# written by pinion bench: caps lifted for the benchmark's own clients\n\
                max_connections = 1000000\n\
                max_connections_per_source = 0\n\
                max_handshakes = 1000000\n\
                max_handshakes_per_source = 1000000\n\
                max_fanout_backlog = 1073741824\n";
    std::fs::write(&path, text)
        .map_err(|e| LoadgenError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// Starts a helper process of the bench: `exe` (this binary) with `args`,
/// stdin and stdout piped to the bench, stderr shared, in its own process
/// group, and killed if the bench dies (`PR_SET_PDEATHSIG`).
pub(crate) fn spawn_helper(exe: &Path, args: &[&str]) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    pinion_runtime::sys::kill_with_parent(&mut cmd);
    cmd.spawn()
}

// ---- the guard --------------------------------------------------------------

/// A server started by the benchmark, with its data dir.
///
/// Spawns `cmd` with stdout/stderr to `log_path` (appended or truncated),
/// in its own process group, dying with the spawning thread.
fn spawn_child(
    target: &'static str,
    mut cmd: Command,
    log_path: &Path,
    append: bool,
) -> Result<Child, LoadgenError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log_path)
        .map_err(|e| LoadgenError::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| LoadgenError::io("dup of the log fd", e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0);
    pinion_runtime::sys::kill_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| LoadgenError::ServerStart {
        target,
        reason: format!("spawning {:?}: {e}", cmd.get_program()),
        log: String::new(),
    })
}

/// Dropping it stops the process by PID (SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`]), reaps it, then removes the data dir: on success, on
/// error and on Ctrl-C alike. The child also gets `PR_SET_PDEATHSIG =
/// SIGKILL`, so it dies if the benchmark itself is killed outright.
pub(crate) struct ServerGuard {
    target: &'static str,
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
    // Dropped after `drop()` has stopped the process.
    dir: Option<tempfile::TempDir>,
}

impl ServerGuard {
    /// Spawns `cmd` with stdout/stderr to `<dir>/server.log`, in its own
    /// process group (a terminal's Ctrl-C reaches only the benchmark, which
    /// then stops the server itself, in order).
    ///
    /// Must be called from a thread that outlives the server (PDEATHSIG is
    /// tied to the spawning thread): `run_publish` spawns from its caller's
    /// thread.
    pub(crate) fn spawn(
        target: &'static str,
        cmd: Command,
        dir: tempfile::TempDir,
    ) -> Result<ServerGuard, LoadgenError> {
        let log_path = dir.path().join("server.log");
        let child = spawn_child(target, cmd, &log_path, false)?;
        Ok(ServerGuard {
            target,
            pid: child.id(),
            child: Some(child),
            log_path,
            dir: Some(dir),
        })
    }

    /// SIGKILLs the process now and reaps it (the data dir stays).
    pub(crate) fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `cmd` again in the same data dir (after [`kill_now`]), its
    /// output appended to the same log.
    pub(crate) fn respawn(&mut self, cmd: Command) -> Result<(), LoadgenError> {
        self.kill_now();
        let child = spawn_child(self.target, cmd, &self.log_path, true)?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("dir lives as long as the guard")
            .path()
    }

    /// The last `max` bytes of the server's log.
    pub(crate) fn log_tail(&self, max: u64) -> String {
        let Ok(mut f) = File::open(&self.log_path) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut s = String::new();
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_ok() {
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    }

    fn not_ready(&self, reason: String) -> LoadgenError {
        LoadgenError::ServerStart {
            target: self.target,
            reason,
            log: self.log_tail(2000),
        }
    }

    /// Polls a TCP connect to `addr` until it succeeds, the process exits, or
    /// [`READY_TIMEOUT`] passes.
    pub(crate) fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), LoadgenError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.not_ready(format!("exited during startup ({status})")));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!(
                    "nothing accepted on {addr} within {READY_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks the server is still running (not crashed mid-run).
    pub(crate) fn check_alive(&mut self) -> Result<(), LoadgenError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(self.not_ready(format!("exited during the run ({status})")));
            }
        }
        Ok(())
    }

    /// CPU time (user + system) the server has used so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&format!("/proc/{}/stat", self.pid))
    }

    /// Stops the server now (same as dropping the guard, minus the dir).
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: kill takes plain integers; the pid is our own child, not
        // yet reaped (try_wait above), so it names no other process.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
        eprintln!(
            "pinion-loadgen: {} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL",
            self.target, self.pid
        );
        // SAFETY: as above: our own unreaped child, plain integers.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("pinion-loadgen: removing {}: {e}", path.display());
            }
        }
    }
}

/// True while a process with this PID exists (a zombie counts).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// utime + stime from a `/proc/<pid>/stat` file.
pub(crate) fn cpu_time_of(stat_path: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Busy CPU time of the whole machine (all CPUs: everything but idle and
/// iowait), from /proc/stat.
pub(crate) fn machine_busy_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(busy * 1_000_000_000 / hz))
}

/// CPU time of this process (all threads).
pub(crate) fn self_cpu_time() -> Option<Duration> {
    cpu_time_of("/proc/self/stat")
}

/// `sync()` then a pause: lets the previous run's deleted files (discard on
/// this mount) and dirty pages settle before the next run measures fsyncs.
pub(crate) fn settle() -> Result<(), LoadgenError> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    sleep_interruptible(Duration::from_millis(500))
}
