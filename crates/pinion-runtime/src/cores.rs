//! The thread-per-core runtime.
//!
//! A [`Runtime`] owns N worker threads ("cores"). Each runs a tokio
//! `current_thread` runtime: one event loop, no work stealing, pinned to one
//! CPU of the process's affinity mask unless pinning is switched off. Tasks
//! are placed on a core explicitly and stay there; a pipe (connection) lives
//! on the core that accepted or dialed it for its whole life. Cores talk only
//! through channels, which carry batches where traffic is heavy.
//!
//! The runtime is independent of any runtime the application uses: handles
//! and futures from `pinion` can be awaited from a tokio app, an async-std app
//! or a plain thread (through the blocking API).
//!
//! ```
//! let rt = pinion_runtime::Runtime::builder().threads(2).pin(false).build().unwrap();
//! assert_eq!(rt.cores(), 2);
//! let answer = rt.block_on(0, async { 6 * 7 });
//! assert_eq!(answer, 42);
//! ```

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::sys;

/// Configuration of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    threads: Option<usize>,
    pin: bool,
    name: String,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            threads: None,
            pin: true,
            name: "pinion-core".into(),
        }
    }
}

impl RuntimeBuilder {
    /// Reads `PINION_THREADS` (a count) and `PINION_PIN` (`0` or `false`
    /// switches pinning off) on top of the defaults.
    pub fn from_env() -> Self {
        let mut b = RuntimeBuilder::default();
        if let Some(n) = std::env::var("PINION_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            b.threads = Some(n);
        }
        if let Ok(v) = std::env::var("PINION_PIN") {
            b.pin = !matches!(v.as_str(), "0" | "false" | "no" | "off");
        }
        b
    }

    /// Number of cores; default: one per CPU in the affinity mask.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Pin each core's thread to its own CPU (default true). With more
    /// threads than allowed CPUs, cores share CPUs round-robin.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Thread name prefix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the threads.
    pub fn build(self) -> io::Result<Runtime> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        let rt_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let cpus = sys::allowed_cpus();
        let n = self.threads.unwrap_or(cpus.len()).max(1);
        let mut cores = Vec::with_capacity(n);
        for i in 0..n {
            let cpu = self.pin.then(|| cpus[i % cpus.len()]);
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    CURRENT.set(Some((rt_id, i)));
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_current_thread(cpu) {
                            tracing::warn!(cpu, error = %e, "could not pin core thread");
                        }
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Run until the runtime is dropped; tasks are spawned through the handle.
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("core thread died during start"))??;
            cores.push(Core {
                handle,
                load: AtomicUsize::new(0),
                cpu,
                _stop: std::sync::Mutex::new(Some(stop_tx)),
                _thread: thread,
            });
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                id: rt_id,
                cores,
                next: AtomicUsize::new(0),
            }),
        })
    }
}

struct Core {
    handle: Handle,
    /// Live pipes on this core, for placing new ones.
    load: AtomicUsize,
    cpu: Option<usize>,
    _stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    _thread: thread::JoinHandle<()>,
}

thread_local! {
    /// On a core thread: (runtime id, core index).
    static CURRENT: Cell<Option<(usize, CoreId)>> = const { Cell::new(None) };
}

struct Inner {
    id: usize,
    cores: Vec<Core>,
    next: AtomicUsize,
}

/// A set of pinned single-threaded event loops. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cores", &self.inner.cores.len())
            .field(
                "cpus",
                &self.inner.cores.iter().map(|c| c.cpu).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A core index within a [`Runtime`].
pub type CoreId = usize;

impl Runtime {
    /// A builder with the defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The process-wide runtime, started on first use with
    /// [`RuntimeBuilder::from_env`].
    pub fn global() -> &'static Runtime {
        static GLOBAL: OnceLock<Runtime> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            RuntimeBuilder::from_env()
                .build()
                .expect("pinion: cannot start the runtime's core threads")
        })
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.inner.cores.len()
    }

    /// The CPU each core is pinned to (`None` when unpinned).
    pub fn cpus(&self) -> Vec<Option<usize>> {
        self.inner.cores.iter().map(|c| c.cpu).collect()
    }

    /// Live pipes per core.
    pub fn loads(&self) -> Vec<usize> {
        self.inner
            .cores
            .iter()
            .map(|c| c.load.load(Ordering::Relaxed))
            .collect()
    }

    /// The tokio handle of a core (for timers and spawning).
    pub fn handle(&self, core: CoreId) -> &Handle {
        &self.inner.cores[core % self.cores()].handle
    }

    /// Spawns a task on a core; it runs there for its whole life.
    pub fn spawn_on<F>(&self, core: CoreId, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle(core).spawn(fut)
    }

    /// Runs a future on a core and blocks the calling thread until it ends.
    /// Must not be called from a core thread.
    pub fn block_on<F>(&self, core: CoreId, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn_on(core, async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("pinion core task dropped")
    }

    /// The core the calling thread is, if it is one of this runtime's.
    pub fn current_core(&self) -> Option<CoreId> {
        match CURRENT.get() {
            Some((id, core)) if id == self.inner.id => Some(core),
            _ => None,
        }
    }

    /// Where a new socket goes: the calling core when called from one (an
    /// application task running on a core keeps its sockets local), else the
    /// next core in rotation.
    pub fn next_core(&self) -> CoreId {
        self.current_core()
            .unwrap_or_else(|| self.inner.next.fetch_add(1, Ordering::Relaxed) % self.cores())
    }

    /// Where a new pipe of a socket homed on `home` goes: `home` while it
    /// carries at most one pipe more than the least-loaded core (so a socket
    /// with few pipes keeps them local and its messages never cross cores),
    /// otherwise the least-loaded core (so many pipes spread evenly).
    pub fn place_pipe(&self, home: CoreId) -> CoreId {
        let loads = self.loads();
        let min = loads.iter().copied().min().unwrap_or(0);
        if loads.get(home).is_some_and(|&l| l <= min + 1) {
            home
        } else {
            self.least_loaded()
        }
    }

    /// The core with the fewest live pipes (for placing a new pipe).
    pub fn least_loaded(&self) -> CoreId {
        let mut best = 0;
        let mut best_load = usize::MAX;
        // Start the scan at a rotating offset so ties spread out.
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.cores() {
            let c = (start + i) % self.cores();
            let l = self.inner.cores[c].load.load(Ordering::Relaxed);
            if l < best_load {
                best = c;
                best_load = l;
            }
        }
        best
    }

    /// Counts a pipe on `core` until the guard drops.
    pub fn load_guard(&self, core: CoreId) -> LoadGuard {
        self.inner.cores[core].load.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            rt: self.clone(),
            core,
        }
    }
}

/// Keeps one pipe counted against its core.
pub struct LoadGuard {
    rt: Runtime,
    core: CoreId,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.rt.inner.cores[self.core]
            .load
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_stay_on_their_core() {
        let rt = Runtime::builder().threads(2).pin(false).build().unwrap();
        let a = rt.block_on(0, async { thread::current().name().unwrap().to_string() });
        let b = rt.block_on(1, async { thread::current().name().unwrap().to_string() });
        assert_eq!(a, "pinion-core-0");
        assert_eq!(b, "pinion-core-1");
    }

    #[test]
    fn least_loaded_balances() {
        let rt = Runtime::builder().threads(2).pin(false).build().unwrap();
        let g1 = rt.load_guard(rt.least_loaded());
        let g2 = rt.load_guard(rt.least_loaded());
        assert_eq!(rt.loads(), vec![1, 1]);
        drop((g1, g2));
        assert_eq!(rt.loads(), vec![0, 0]);
    }

    #[test]
    fn pipes_stay_home_until_imbalanced() {
        let rt = Runtime::builder().threads(2).pin(false).build().unwrap();
        let mut guards = Vec::new();
        for _ in 0..100 {
            guards.push(rt.load_guard(rt.place_pipe(0)));
        }
        let loads = rt.loads();
        assert!(loads[0].abs_diff(loads[1]) <= 2, "{loads:?}");
        drop(guards);
        assert_eq!(rt.place_pipe(1), 1);
    }

    #[test]
    fn sockets_made_on_a_core_stay_there() {
        let rt = Runtime::builder().threads(2).pin(false).build().unwrap();
        let rt2 = rt.clone();
        assert_eq!(rt.block_on(1, async move { rt2.next_core() }), 1);
        assert_eq!(rt.current_core(), None);
    }
}
