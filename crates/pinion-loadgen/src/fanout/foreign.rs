//! `--foreign-idle N`: idle loopback TCP connections that pinion does not
//! hold, for a control measurement.
//!
//! A 50,000-subscriber run opens 100,000 sockets on the machine (both
//! ends). To tell what pinion's handling of those subscribers costs from
//! what merely having that many sockets open costs the machine, the same
//! small run can be repeated with N idle connection *pairs* held by other
//! processes: `pinion bench idle-pairs` (hidden), each a listener on
//! 127.0.0.1 plus up to [`PAIRS_PER_PROCESS`] connections to itself (both
//! ends open, nothing ever sent), so 2·N sockets in all. They connect
//! before the hub starts and stay open until the run ends; they die with
//! the bench (`PR_SET_PDEATHSIG`) and are stopped by PID when it is done.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;

/// Pairs one helper process holds: two descriptors each, well under the
/// 20,000 open files one process may have here.
pub const PAIRS_PER_PROCESS: usize = 9_000;

/// How long a helper may take to open its pairs.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `pinion bench idle-pairs --pairs N`: opens `pairs` loopback connections
/// to its own listener, keeps both ends, prints `ready N`, then holds them
/// until its stdin closes.
pub fn run_idle_pairs(pairs: usize) -> Result<(), LoadgenError> {
    if pairs > PAIRS_PER_PROCESS {
        return Err(LoadgenError::Args(format!(
            "idle-pairs: at most {PAIRS_PER_PROCESS} pairs per process, not {pairs}"
        )));
    }
    let need = 2 * pairs as u64 + 16;
    let limit = pinion_runtime::sys::raise_fd_limit(need)
        .map_err(|e| LoadgenError::io("raising the open-file limit", e))?;
    if limit < need {
        return Err(LoadgenError::Args(format!(
            "idle-pairs: {pairs} pairs need {need} open files; the limit is {limit}"
        )));
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LoadgenError::io("idle-pairs: binding 127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LoadgenError::io("idle-pairs: the listener's address", e))?;
    let mut held: Vec<TcpStream> = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        let c = TcpStream::connect(addr)
            .map_err(|e| LoadgenError::io(format!("idle-pairs: connecting to {addr}"), e))?;
        let (s, _) = listener
            .accept()
            .map_err(|e| LoadgenError::io("idle-pairs: accepting", e))?;
        held.push(c);
        held.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {pairs}")
        .and_then(|()| out.flush())
        .map_err(|e| LoadgenError::io("idle-pairs: writing to stdout", e))?;
    // Until the parent closes our stdin (or dies: then EOF too).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(held);
    Ok(())
}

/// The helper processes of one run; dropping this stops them by PID.
pub(crate) struct ForeignIdle {
    procs: Vec<Child>,
    /// Connection pairs held in all.
    pub(crate) pairs: usize,
}

impl ForeignIdle {
    /// Starts enough `<exe> bench idle-pairs` processes to hold `pairs`
    /// idle pairs, and waits until every one has opened its share.
    pub(crate) fn start(exe: &Path, pairs: usize) -> Result<ForeignIdle, LoadgenError> {
        let mut f = ForeignIdle {
            procs: Vec::new(),
            pairs,
        };
        let mut left = pairs;
        let mut readers = Vec::new();
        while left > 0 {
            let n = left.min(PAIRS_PER_PROCESS);
            left -= n;
            let count = n.to_string();
            let args = ["bench", "idle-pairs", "--pairs", &count];
            let mut child = crate::server::spawn_helper(exe, &args).map_err(|e| {
                LoadgenError::io(format!("starting `{} bench idle-pairs`", exe.display()), e)
            })?;
            let out = child.stdout.take();
            f.procs.push(child);
            readers.push(out);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let (tx, rx) = std::sync::mpsc::channel();
        for (k, out) in readers.into_iter().enumerate() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let ok = out
                    .map(|o| BufReader::new(o).read_line(&mut line).is_ok())
                    .unwrap_or(false)
                    && line.starts_with("ready ");
                let _ = tx.send((k, ok));
            });
        }
        drop(tx);
        for _ in 0..f.procs.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, true)) => {}
                Ok((k, false)) => {
                    return Err(LoadgenError::Args(format!(
                        "--foreign-idle: helper {k} could not open its connections (see its error above)"
                    )))
                }
                Err(_) => {
                    return Err(LoadgenError::Args(format!(
                        "--foreign-idle: the helpers did not open {pairs} pairs within {READY_TIMEOUT:?}"
                    )))
                }
            }
        }
        Ok(f)
    }
}

impl Drop for ForeignIdle {
    fn drop(&mut self) {
        for c in &mut self.procs {
            // Closing stdin ends it; kill (by its PID) in case it is stuck.
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_refuses_more_than_its_share() {
        let e = run_idle_pairs(PAIRS_PER_PROCESS + 1).unwrap_err();
        assert!(matches!(e, LoadgenError::Args(_)), "{e:?}");
    }
}
