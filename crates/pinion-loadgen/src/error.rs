//! The load generator's error type.

use std::path::PathBuf;

/// Why a benchmark could not run (or was stopped).
///
/// Errors *during* a run (NACKs, a connection reset, a missing reply) are not
/// this: they are counted in [`crate::RunResult::errors`] and the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Contradictory or out-of-range arguments.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// A server binary the benchmark needs is not installed.
    #[error(
        "{name} not found (looked for {}): run `scripts/setup-test-env.sh` (as root) to install the benchmark peers{hint}",
        .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingBinary {
        /// The program, e.g. `redis-server`.
        name: &'static str,
        /// Where it was looked for.
        looked: Vec<PathBuf>,
        /// Extra advice (may be empty).
        hint: &'static str,
    },
    /// A server was started but did not become ready, or exited.
    #[error("{target}: server not ready: {reason}{}", log_tail(.log))]
    ServerStart {
        /// Which target.
        target: &'static str,
        /// What went wrong.
        reason: String,
        /// The last lines of the server's log, if any.
        log: String,
    },
    /// Setting up a target failed (e.g. creating the JetStream stream).
    #[error("{target}: setup failed: {reason}")]
    Setup {
        /// Which target.
        target: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Some clients could not connect before the run.
    #[error("{target}: {failed} of {clients} clients could not connect; first error: {first}")]
    Connect {
        /// Which target.
        target: &'static str,
        /// How many failed.
        failed: usize,
        /// How many were asked for.
        clients: usize,
        /// The first failure.
        first: String,
    },
    /// An I/O error outside the measured traffic (temp dirs, files, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The requested connections do not fit this machine's limits: per
    /// node, per process (open files) or in memory. Spread them over more
    /// nodes (or workers), or ask for fewer.
    #[error("{what}: needs {need}, the limit is {limit}; {advice}")]
    Capacity {
        /// What does not fit.
        what: String,
        /// How much it needs (connections, files or bytes, as `what` says).
        need: u64,
        /// How much there is.
        limit: u64,
        /// What to do instead.
        advice: String,
    },
    /// Interrupted (SIGINT/SIGTERM); the servers started so far were stopped.
    #[error("interrupted")]
    Interrupted,
}

impl LoadgenError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LoadgenError::Io {
            what: what.into(),
            source,
        }
    }
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- server log (last lines) ---\n{}", log.trim_end())
    }
}
