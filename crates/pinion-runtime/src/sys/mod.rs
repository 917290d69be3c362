//! Platform code: CPU affinity, seeds, reading a socket into spare
//! buffer capacity, and batched sends through io_uring ([`uring`]). Every `unsafe` in pinion lives here,
//! each with a `// SAFETY:` note.

use std::io;

#[cfg(target_os = "linux")]
pub mod uring;
/// io_uring is Linux's: elsewhere the batched sender is never available.
#[cfg(not(target_os = "linux"))]
#[path = "uring_shell.rs"]
pub mod uring;

/// The CPUs this process may run on (its affinity mask, which honours
/// `taskset` and container cpusets), in ascending order. Falls back to
/// `0..available_parallelism` where the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `cpu_set_t` is a plain bit array; all-zero is a valid value.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: we pass the size of the set we own and a valid pointer to it;
        // pid 0 means the calling thread.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
                .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (0..n).collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: all-zero is a valid empty `cpu_set_t`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` < CPU_SETSIZE was checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: valid pointer and size of a set we own; pid 0 = this thread.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Ok(())
    }
}

/// Receives from a stream socket into `buf`'s spare capacity (without
/// zeroing it first) and returns the number of bytes read; 0 is end of
/// stream.
pub fn recv_into_spare(sock: &socket2::Socket, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let len = buf.len();
    let n = sock.recv(buf.spare_capacity_mut())?;
    // SAFETY: `recv` wrote `n` bytes, from the start of the spare capacity
    // it was given (it never reports more than the slice's length), so the
    // first `len + n` bytes of the buffer are initialised.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// Raises this process's open-file limit (RLIMIT_NOFILE): the soft limit
/// to `want`, lifting the hard limit too when allowed (root, or
/// CAP_SYS_RESOURCE), never above the kernel's `fs.nr_open`. Returns the
/// soft limit in force afterwards. A server holding 100,000 connections
/// needs one descriptor each; the usual default soft limit is 1,024.
// `rlim_t` is u64 on 64-bit Linux but not everywhere: keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit(want: u64) -> io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
        let want = want.min(nr_open);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur as u64 >= want {
            return Ok(lim.rlim_cur as u64);
        }
        let raised = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: (lim.rlim_max as u64).max(want) as libc::rlim_t,
        };
        // SAFETY: a valid rlimit value; failure is reported by the return code.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(want);
        }
        // Not allowed past the hard limit: go as far as it allows.
        let capped = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_max as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = want;
        Ok(0)
    }
}

/// Grows the process's descriptor table now, to hold descriptors up to
/// `upto` (at most the soft `RLIMIT_NOFILE`; 65,536 at most, about 0.6 MB
/// of kernel memory), so that it does not grow while connections arrive.
/// Returns the number of descriptors the table holds at least.
///
/// Why: Linux grows a process's table by doubling it when a new descriptor
/// does not fit (at 256, 512, 1,024, … open), and in a process with more
/// than one thread the thread that grows it waits for an RCU grace period
/// (`synchronize_rcu` in `expand_fdtable`) while every other thread that
/// opens a descriptor meanwhile (an `accept` on another core) waits for
/// it. On the 2 vCPU machine the hostile suite runs on, each growth
/// stalled both of the hub's cores for 10-22 ms at once, measured from
/// their schedstat: neither running nor waiting for a CPU. Done once at
/// start, before the cores' threads exist, it costs no grace period.
///
/// How: `fcntl(F_DUPFD_CLOEXEC)` of a descriptor we own onto the lowest
/// free number at or above `upto - 1`, closed at once: the table keeps
/// its size (it never shrinks).
pub fn reserve_fd_table(upto: u64) -> io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)]
        let soft = lim.rlim_cur as u64;
        let n = upto.min(soft).min(1 << 16);
        if n < 2 {
            return Ok(n);
        }
        let null = std::fs::File::open("/dev/null")?;
        let at = libc::c_int::try_from(n - 1).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor this function owns
        // (`null`, open for the call) creates a new descriptor at the
        // lowest free number >= `at` and touches no other; the result is
        // checked before use.
        let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, at) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by fcntl above and nothing else
        // refers to it: `OwnedFd` closes it when dropped.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(n)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = upto;
        Ok(0)
    }
}

/// A seed that differs per process start and per call (request ids must
/// start at a different random value each run, per the REQ/REP RFC).
pub fn seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Makes the child that `cmd` will start receive SIGKILL when the thread
/// that started it exits (`PR_SET_PDEATHSIG`): children of a bench or a
/// test never outlive it, even when it is killed.
#[cfg(target_os = "linux")]
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes
    // one async-signal-safe syscall (prctl); it takes no lock and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends SIGTERM to process `pid` (for a parent that stops its children
/// gracefully: `pinion cluster local`). `std::process::Child::kill` only
/// sends SIGKILL.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    if pid <= 0 {
        return Err(io::Error::other("not a single process id"));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // pid > 0 names exactly one process (never a process group).
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's descriptor table size (`FDSize` in /proc/self/status).
    #[cfg(target_os = "linux")]
    fn fd_table_size() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize in /proc/self/status")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_descriptor_table_is_grown_up_front_and_no_descriptor_is_left_open() {
        let limit = super::raise_fd_limit(8192).unwrap();
        let want = limit.min(8192);
        assert!(
            want >= 2048,
            "open-file limit {limit} too low for this test"
        );
        let got = super::reserve_fd_table(want).unwrap();
        assert_eq!(got, want);
        let size = fd_table_size();
        assert!(size >= want, "FDSize {size} after reserving {want}");
        // The probe descriptor (the lowest free number from `want - 1`:
        // that one, as no test opens thousands) is closed again.
        let probe = format!("/proc/self/fd/{}", want - 1);
        assert!(!std::path::Path::new(&probe).exists(), "{probe} left open");
    }

    #[test]
    fn affinity_mask_is_read() {
        let cpus = super::allowed_cpus();
        assert!(!cpus.is_empty());
        super::pin_current_thread(cpus[0]).unwrap();
        assert_eq!(super::allowed_cpus(), vec![cpus[0]]);
    }

    #[test]
    fn fd_limit_is_at_least_what_it_was() {
        let before = super::raise_fd_limit(0).unwrap();
        let after = super::raise_fd_limit(4096).unwrap();
        assert!(after >= before.min(4096));
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(super::seed(), super::seed());
    }
}
