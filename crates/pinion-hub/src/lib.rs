//! pinion's hub, `pinion serve`: many clients publish messages; each is
//! checked, appended **durably to one log file**, and answered **ACK only
//! once it is durable, or NACK with a reason**. `(client id, seq)` makes
//! retries idempotent.
//!
//! # Protocol
//!
//! Standard SP REQ/REP: the hub listens as REP (default
//! `tcp://127.0.0.1:7450` and `ipc://<data dir>/hub.ipc`), so any NNG REQ
//! socket can publish. The request body is a protobuf `Publish`, the reply a
//! `Reply` (ACK with the record's offset and a duplicate flag, or NACK with
//! a code and a reason); the schema is `proto/pinion/v1/hub.proto`, the
//! Rust types [`pinion_proto`]. A NACK never closes the connection; a
//! malformed SP frame, or a request over the frame limit
//! (`max_payload + 64 KiB`), does.
//!
//! # The data path
//!
//! ```text
//!  core 0: REP socket ─► intake ──┐ batches          ┌─► answers ─► intake ─► REP
//!  core 1: REP socket ─► intake ──┼─────► writer ────┤
//!   ...   (SO_REUSEPORT: the      │  thread: dedup,  └─► (per core)
//!          kernel spreads         │  append, 1 write
//!          connections)           │  + 1 fdatasync
//!                                 └────► checkpoint thread ─► SQLite
//! ```
//!
//! Each core has its own raw REP socket, handed the connections that
//! core's share of the TCP port (SO_REUSEPORT) accepts once the front door
//! admitted them (caps, keepalive: `docs/HARDENING.md`), so a connection,
//! its pipe, its socket and the task checking its requests all live on one
//! core. Requests are checked there ([`envelope`]) and
//! handed in batches to the one writer thread, which owns the log
//! ([`pinion_journal`]) and the sessions ([`sessions`]): it takes
//! everything queued as one group, decides fresh / duplicate / stale per
//! request, appends the fresh ones, does one write and one fdatasync, and
//! sends the answers back to each core. See [`writer`] for failure
//! handling and [`config::FsyncPolicy`] for what an ACK promises.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = pinion_hub::HubConfig::default();
//! cfg.data_dir = "/tmp/pinion-example".into();
//! let hub = pinion_hub::Hub::start(cfg)?;
//! println!("listening on {:?}", hub.endpoints());
//! hub.shutdown(); // stop accepting, drain, final sync and checkpoint
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod envelope;
pub mod fanout;
mod guard;
pub mod http;
mod intake;
pub mod monitor;
pub mod origin;
pub mod sessions;
mod stats;
pub mod store;
mod subs;
pub mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pinion::{Endpoint, Options, Protocol, Runtime, Socket};
use pinion_journal::{Journal, JournalOptions};

pub use config::{FanoutSend, FsyncPolicy, HubConfig};
pub use stats::{HubStats, LatencyBuckets, Port, Refusal, StatsSnapshot};

/// Name of the log file in the data directory.
pub const LOG_FILE: &str = "pinion.log";
/// Name of the session store in the data directory.
pub const SESSIONS_FILE: &str = "sessions.sqlite";
/// Frame limit beyond `max_payload` (envelope, topic, slack).
pub const FRAME_SLACK: usize = 64 << 10;

/// Why the hub could not start (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Bad configuration: the caller's fault.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory is in use by another hub.
    #[error("data directory {0} is locked by another running hub")]
    Locked(PathBuf),
    /// The log could not be opened (I/O, or corruption it will not skip).
    #[error("log {path}: {source}")]
    Journal {
        /// The log file.
        path: PathBuf,
        /// The journal's error (see its `fault()`).
        source: pinion_journal::JournalError,
    },
    /// The session store could not be opened or read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A socket could not be opened or an endpoint bound.
    #[error("endpoint {url}: {source}")]
    Listen {
        /// The endpoint.
        url: String,
        /// pinion's socket error.
        source: pinion::Error,
    },
    /// Other I/O on the data directory.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Cluster mode: the Raft node could not start (its endpoint could not
    /// be bound, a membership record of the log does not decode, …).
    #[error("cluster: {0}")]
    Cluster(String),
    /// `[auth]`: a key file that cannot be read or used.
    #[error("authentication: {0}")]
    Auth(String),
    /// `[tls]`: a certificate or key that cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// State shared by the cores and the writer (atomics only).
pub(crate) struct Shared {
    /// Cluster mode: the node's Raft status (for `/leader`, `/cluster`,
    /// `/metrics`).
    pub cluster: Option<Arc<cluster::Status>>,
    pub inflight: AtomicUsize,
    pub shutting_down: AtomicBool,
    pub head: AtomicU64,
    /// The last commit succeeded (for `/healthz`).
    pub log_ok: AtomicBool,
    pub stats: HubStats,
    pub latency: LatencyBuckets,
    /// Authentication, when on.
    pub auth: Option<Arc<auth::HubAuth>>,
    /// Per core: the claims of the WebSocket `/pub` connections opened with
    /// a token, by the pipe id of that core's REP socket (publishes on them
    /// may leave the token out).
    pub conn_claims:
        Vec<std::sync::Mutex<std::collections::HashMap<u32, Arc<pinion_auth::Claims>>>>,
}

impl Shared {
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats
            .snapshot(&self.latency, self.head.load(Ordering::Acquire))
    }

    /// `Err(why)` when the hub cannot take messages.
    pub fn health(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down");
        }
        if !self.log_ok.load(Ordering::Relaxed) {
            return Err("the log cannot be written (disk full or I/O error); publishes are NACKed UNAVAILABLE");
        }
        Ok(())
    }
}

/// What opening the data directory found.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// Records in the log.
    pub records: u64,
    /// A torn tail that was cut, if any (for the logs).
    pub truncated: Option<String>,
    /// Clients known after replay.
    pub clients: usize,
    /// Records replayed from the log after the checkpoint.
    pub replayed: u64,
    /// The checkpoint was unusable (beyond the log's end) and the sessions
    /// were rebuilt from the whole log.
    pub rebuilt: bool,
}

/// Where the log and the sessions live (one value per hub, moved once:
/// the size difference between the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Backend {
    /// One node: the journal, the SQLite checkpoint, the sessions.
    Single {
        journal: Journal,
        store: store::Store,
        sessions: sessions::Sessions,
    },
    /// A cluster node: the journal as the Raft log.
    Cluster {
        log: pinion_cluster::LogStore,
        source: pinion_journal::ReaderSource,
        cfg: cluster::ClusterConfig,
    },
}

/// A running hub.
pub struct Hub {
    rt: Runtime,
    sockets: Vec<Socket>,
    /// Listeners the sockets own (`ipc://`, `ws://`).
    endpoints: Vec<Endpoint>,
    /// Every publisher endpoint as bound, in the configuration's order.
    urls: Vec<String>,
    sub_endpoints: Vec<String>,
    http_addr: Option<String>,
    /// Accept loops of the subscriber and HTTP ports.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fan: Vec<tokio::sync::mpsc::UnboundedSender<fanout::FanIn>>,
    stop_sampler: Arc<AtomicBool>,
    to_writer: writer::WriterTx,
    writer: Option<std::thread::JoinHandle<()>>,
    store: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    report: StartReport,
    _lock: File,
}

impl Hub {
    /// The single node's log and sessions: the journal, then the SQLite
    /// checkpoint and a replay of the log's tail.
    fn open_single(
        cfg: &HubConfig,
        dir: &std::path::Path,
        log_path: &std::path::Path,
        jopts: JournalOptions,
    ) -> Result<(Backend, u64, StartReport), HubError> {
        let jerr = |source| HubError::Journal {
            path: log_path.to_path_buf(),
            source,
        };
        let (journal, opened) = Journal::open(log_path, jopts).map_err(jerr)?;
        let truncated = opened.truncated.as_ref().map(|t| {
            format!(
                "cut a torn tail of {} bytes at byte {} ({})",
                t.bytes_cut, t.at_byte, t.reason
            )
        });
        if let Some(t) = &truncated {
            tracing::warn!(log = %log_path.display(), "{t}");
        }
        let mut store = store::Store::open(&dir.join(SESSIONS_FILE))?;
        let mut ck = store.checkpoint()?;
        let mut rebuilt = false;
        let end = journal.next_offset();
        if ck.log_offset > end || ck.replay_from > ck.log_offset {
            tracing::warn!(
                checkpoint = ck.log_offset,
                log_end = end,
                "session checkpoint is beyond the log's end; rebuilding sessions from the whole log"
            );
            store.reset()?;
            ck = store::Checkpoint::default();
            rebuilt = true;
        }
        let mut sessions = sessions::Sessions::new(cfg.dedup_window);
        sessions.load(store.sessions()?);
        let mut replayed = 0;
        let mut reader = journal.reader().map_err(jerr)?;
        reader.seek(ck.replay_from).map_err(jerr)?;
        while let Some(rec) = reader.next() {
            let rec = rec.map_err(jerr)?;
            sessions.replay(
                &rec.client_id,
                rec.seq,
                rec.offset,
                rec.timestamp_us,
                ck.log_offset,
            );
            if rec.offset >= ck.log_offset {
                replayed += 1;
            }
        }
        drop(reader);
        // Rows no replayed record refers to (stores written before
        // sessions were forgotten) are forgotten now, once; their rows go
        // with the first checkpoint. From here on only the writer's
        // checkpoints forget, visiting what they drop.
        let stale_rows = sessions.forget_empty();
        if stale_rows > 0 {
            tracing::info!(
                sessions = stale_rows,
                "forgot sessions with no record within the dedup horizon"
            );
        }
        let report = StartReport {
            records: end,
            truncated,
            clients: sessions.len(),
            replayed,
            rebuilt,
        };
        Ok((
            Backend::Single {
                journal,
                store,
                sessions,
            },
            end,
            report,
        ))
    }

    /// Opens the data directory (log, sessions, replay), binds the
    /// endpoints and starts serving.
    pub fn start(cfg: HubConfig) -> Result<Hub, HubError> {
        cfg.validate()?;
        let auth = match &cfg.auth {
            Some(a) => Some(Arc::new(
                auth::HubAuth::new(a).map_err(|e| HubError::Auth(e.to_string()))?,
            )),
            None => None,
        };
        // The TLS settings, built once for every TLS listener.
        let tls_role = match &cfg.tls {
            Some(t) => Some(
                t.listener()
                    .and_then(|c| c.listener_role())
                    .map_err(|e| HubError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| HubError::Io {
            op: "create data directory",
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| HubError::Io {
                op: "open",
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(HubError::Locked(dir)),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(HubError::Io {
                    op: "lock",
                    path: lock_path,
                    source,
                })
            }
        }

        let log_path = dir.join(LOG_FILE);
        let jerr = |source| HubError::Journal {
            path: log_path.clone(),
            source,
        };
        let jopts = JournalOptions {
            preallocate: cfg.preallocate,
            // Every payload the hub accepts fits (validate caps
            // max_payload at 16 MiB, far below the format's limit), so
            // an oversize publish is TOO_LARGE at the door, never an
            // UNAVAILABLE from the journal.
            max_record_bytes: record_limit(cfg.max_payload),
            ..JournalOptions::default()
        };
        let (backend, end, report) = match &cfg.cluster {
            None => Self::open_single(&cfg, &dir, &log_path, jopts)?,
            Some(c) => {
                // The journal as the Raft log; the sessions are rebuilt by
                // applying the committed log (openraft re-applies it at
                // start), so no SQLite checkpoint is read.
                let open = || pinion_cluster::LogStore::open(&log_path, jopts);
                let opened = match open() {
                    Err(pinion_cluster::OpenError::Journal(e))
                        if c.rebuild_damaged_log && e.fault() == pinion_journal::Fault::Data =>
                    {
                        let aside = cluster::rebuild_damaged_log(&log_path, jopts).map_err(jerr)?;
                        tracing::error!(
                            damage = %e,
                            moved_to = %aside.display(),
                            "THE LOG IS DAMAGED: moved aside (kept, never deleted); starting with an empty log that the leader fills again (--rebuild-damaged-log)"
                        );
                        open()
                    }
                    r => r,
                };
                let log = opened.map_err(|e| match e {
                    pinion_cluster::OpenError::Journal(source) => HubError::Journal {
                        path: log_path.clone(),
                        source,
                    },
                    other => HubError::Cluster(other.to_string()),
                })?;
                let source = log.reader_source();
                let first = source.reader().map_err(jerr)?.first_offset();
                let report = StartReport {
                    records: first,
                    truncated: None,
                    clients: 0,
                    replayed: 0,
                    rebuilt: false,
                };
                (
                    Backend::Cluster {
                        log,
                        source,
                        cfg: c.clone(),
                    },
                    first,
                    report,
                )
            }
        };

        // One descriptor per connection: 100,000 subscribers need more
        // than the usual 1,024.
        match pinion_runtime::sys::raise_fd_limit(1 << 20) {
            Ok(n) if n < 65536 => {
                tracing::warn!(
                    limit = n,
                    "open-file limit is low: at most about that many connections"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        // And make the descriptor table that large now, before the cores'
        // threads start: growing it later stalls every core at once (see
        // `reserve_fd_table`).
        if let Err(e) = pinion_runtime::sys::reserve_fd_table(1 << 16) {
            tracing::warn!(error = %e, "cannot size the descriptor table up front");
        }

        // Cores and their sockets.
        let mut rb = Runtime::builder().name("pinion-hub").pin(cfg.pin_threads);
        if cfg.threads > 0 {
            rb = rb.threads(cfg.threads);
        }
        let rt = rb.build().map_err(|source| HubError::Io {
            op: "start runtime",
            path: dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            cluster: cfg
                .cluster
                .as_ref()
                .map(|_| Arc::new(cluster::Status::default())),
            inflight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            head: AtomicU64::new(end),
            log_ok: AtomicBool::new(true),
            stats: HubStats::default(),
            latency: LatencyBuckets::default(),
            auth,
            conn_claims: (0..rt.cores()).map(|_| Default::default()).collect(),
        });
        let opts = Options {
            raw: true,
            // With authentication on, room for a token too (up to its own
            // limit, so that an oversize one gets a NACK saying so; a
            // request past even this is cut from its length prefix).
            recv_max_size: (cfg.max_payload
                + FRAME_SLACK
                + if cfg.auth.is_some() {
                    2 * pinion_auth::MAX_TOKEN_LEN
                } else {
                    0
                }) as u64,
            send_buffer: 4096,
            recv_buffer: 1024,
            // The publisher port's SP header exchange (the hub's
            // handshake_timeout, like every other port's).
            handshake_timeout: cfg.handshake_timeout,
            ..Options::default()
        };
        let n = rt.cores();
        let mut sockets = Vec::with_capacity(n);
        for core in 0..n {
            let rt2 = rt.clone();
            let o = opts.clone();
            let s = rt
                .block_on(core, async move { Socket::on(&rt2, Protocol::Rep0, o) })
                .map_err(|source| HubError::Listen {
                    url: "socket".into(),
                    source,
                })?;
            sockets.push(s);
        }
        // The front door: admission per port (caps on connections and
        // handshakes), and the time limits every connection gets.
        let limits = guard::Limits::of(&cfg);
        let gate = |port| guard::Gate::new(port, guard::Caps::of(&cfg), shared.clone());
        let (pub_gate, sub_gate, http_gate) = (gate(Port::Pub), gate(Port::Sub), gate(Port::Http));
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();
        let mut urls = Vec::new();
        for url in cfg.endpoints() {
            let lerr = |source| HubError::Listen {
                url: url.clone(),
                source,
            };
            let tls_url = url.strip_prefix("tls+tcp://");
            if url.starts_with("tcp://") || tls_url.is_some() {
                // The hub accepts on TCP itself (one SO_REUSEPORT share per
                // core), so caps and keepalive apply before the socket sees
                // a connection; each core hands the ones it admits to its
                // own REP socket (over TLS for tls+tcp://).
                let role = match tls_url {
                    None => None,
                    Some(_) => Some(tls_role.clone().ok_or_else(|| {
                        HubError::Config(config::ConfigError::Invalid {
                            key: "listen",
                            value: url.clone(),
                            expected: "a [tls] cert (--tls-cert) for a tls+tcp:// endpoint",
                        })
                    })?),
                };
                let tcp_url = match tls_url {
                    Some(rest) => format!("tcp://{rest}"),
                    None => url.clone(),
                };
                let (listeners, bound) = share_port(&rt, &tcp_url, n)?;
                urls.push(match tls_url {
                    Some(_) => bound.replacen("tcp://", "tls+tcp://", 1),
                    None => bound,
                });
                for (core, l) in listeners.into_iter().enumerate() {
                    let serve = guard::serve_rep(
                        l,
                        sockets[core].clone(),
                        pub_gate.clone(),
                        limits,
                        role.clone(),
                    );
                    tasks.push(rt.spawn_on(core, serve));
                }
            } else {
                let e = block(sockets[0].listen(&url)).map_err(lerr)?;
                urls.push(e.url().to_string());
                endpoints.push(e);
            }
        }

        // The writer, the checkpoint thread, the intakes.
        // The intakes' batches go to the single node's writer thread, or
        // straight to the cluster's Raft writer task.
        let (thread_tx, writer_rx) = mpsc::channel();
        let (task_tx, task_rx) = tokio::sync::mpsc::unbounded_channel();
        let to_writer = if cfg.cluster.is_some() {
            writer::WriterTx::Task(task_tx)
        } else {
            writer::WriterTx::Thread(thread_tx)
        };
        let (store_tx, store_rx) = mpsc::channel();
        let mut answer_txs = Vec::with_capacity(n);
        let mut answer_rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            answer_txs.push(tx);
            answer_rxs.push(rx);
        }
        // Fan-out: one task per core, the replay thread.
        let mut fan_txs = Vec::with_capacity(n);
        let mut fan_rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            fan_txs.push(tx);
            fan_rxs.push(rx);
        }
        let (replay_tx, replay_rx) = mpsc::channel();
        let spawn_err = |source| HubError::Io {
            op: "spawn thread",
            path: dir.clone(),
            source,
        };
        // The writer bounds each core's fan-out backlog in bytes (never
        // waiting on a core); each core takes what it processed off it.
        let fan_gate = writer::FanGate::new(n, end, cfg.max_fanout_backlog);
        let fan_backlogs: Vec<_> = (0..n).map(|core| fan_gate.counter(core)).collect();
        let (replay_reader, writer_thread, store_thread, raft_thread) = match backend {
            Backend::Single {
                journal,
                store,
                sessions,
            } => {
                let replay_reader = journal.reader().map_err(jerr)?;
                // The sessions gauges are right from the start (the writer
                // keeps them so after each commit and checkpoint).
                writer::publish_session_stats(&sessions, &shared.stats);
                let w = writer::Writer {
                    fan: fan_txs.clone(),
                    fan_gate,
                    fan_pending: Vec::new(),
                    fan_first: end,
                    fan_encoded: true,
                    fan_buf: bytes::BytesMut::new(),
                    journal,
                    sessions,
                    fsync: cfg.fsync,
                    checkpoint_every: cfg.checkpoint_interval,
                    horizon: cfg.dedup_horizon,
                    max_sessions: cfg.max_sessions,
                    evicted: 0,
                    rx: writer_rx,
                    cores: answer_txs,
                    store_tx,
                    shared: shared.clone(),
                };
                let store_thread = std::thread::Builder::new()
                    .name("pinion-hub-ckpt".into())
                    .spawn(move || writer::run_store(store, store_rx))
                    .map_err(spawn_err)?;
                let writer_thread = std::thread::Builder::new()
                    .name("pinion-hub-writer".into())
                    .spawn(move || w.run())
                    .map_err(spawn_err)?;
                (replay_reader, Some(writer_thread), Some(store_thread), None)
            }
            Backend::Cluster {
                log,
                source,
                cfg: ccfg,
            } => {
                drop((store_tx, store_rx));
                let replay_reader = source.reader().map_err(jerr)?;
                let sessions = Arc::new(std::sync::Mutex::new(sessions::Sessions::new(
                    cfg.dedup_window,
                )));
                let fan = cluster::Fan::new(fan_gate, fan_txs.clone(), shared.clone(), end);
                let machine = cluster::HubMachine {
                    sessions: sessions.clone(),
                    fan: fan.clone(),
                    shared: shared.clone(),
                    fan_first: end,
                    pending: Vec::new(),
                    encoded: true,
                    buf: bytes::BytesMut::new(),
                    horizon: cfg.dedup_horizon,
                    max_sessions: cfg.max_sessions,
                };
                let status = shared
                    .cluster
                    .clone()
                    .expect("cluster status is set in cluster mode");
                let (ready_tx, ready_rx) = mpsc::channel();
                let sh = shared.clone();
                let max_payload = cfg.max_payload;
                // tls+tcp:// node links: mutual TLS with the hub's
                // certificate and CA.
                let node_tls = if ccfg.raft.starts_with("tls+tcp://") {
                    let t = cfg.tls.as_ref().ok_or_else(|| {
                        HubError::Tls(
                            "tls+tcp:// node links need [tls] cert, key and ca (--tls-cert, --tls-key, --tls-ca)"
                                .into(),
                        )
                    })?;
                    Some(t.node_links().map_err(HubError::Tls)?)
                } else {
                    None
                };
                // openraft's core, its tasks, the Raft endpoint and the
                // connections to peers share one event loop (a one-core
                // pinion runtime): a Raft message goes from the socket to
                // openraft and back without waking another thread. This
                // thread only waits for that loop to end.
                let raft_thread = std::thread::Builder::new()
                    .name("pinion-raft-main".into())
                    .spawn(move || {
                        let raft_rt = match Runtime::builder()
                            .name("pinion-raft")
                            .threads(1)
                            .pin(false)
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                        };
                        let on = raft_rt.clone();
                        raft_rt.block_on(0, async move {
                            let (raft, server) = match cluster::start_raft(
                                &on,
                                &ccfg,
                                log,
                                machine,
                                max_payload,
                                status.contact.clone(),
                                node_tls,
                            )
                            .await
                            {
                                Ok(r) => r,
                                Err(e) => {
                                    let _ = ready_tx.send(Err(e));
                                    return;
                                }
                            };
                            let _ = ready_tx.send(Ok(()));
                            tokio::spawn(cluster::run_fan_retry(fan));
                            tokio::spawn(cluster::run_status(raft.clone(), status, ccfg.clone()));
                            cluster::run_writer(raft, ccfg, sessions, task_rx, answer_txs, sh)
                                .await;
                            server.close();
                        });
                    })
                    .map_err(spawn_err)?;
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(HubError::Cluster(e)),
                    Err(_) => return Err(HubError::Cluster("the Raft thread stopped".into())),
                }
                (replay_reader, None, None, Some(raft_thread))
            }
        };
        let (fan_cores, sh, max_replays) = (fan_txs.clone(), shared.clone(), cfg.max_replays);
        std::thread::Builder::new()
            .name("pinion-hub-replay".into())
            .spawn(move || fanout::run_replay(replay_reader, replay_rx, fan_cores, max_replays, sh))
            .map_err(spawn_err)?;
        for (core, rx) in fan_rxs.into_iter().enumerate() {
            let f: fanout::Fanout = fanout::Fanout::new(
                core,
                (fan_txs[core].clone(), rx),
                replay_tx.clone(),
                end,
                cfg.max_queued_per_subscriber,
                shared.clone(),
            )
            .with_backlog(fan_backlogs[core].clone())
            .with_send(cfg.fanout_send);
            rt.spawn_on(core, f.run());
        }
        drop(replay_tx);
        let sub_ids = Arc::new(AtomicU64::new(1));
        let mut sub_endpoints = Vec::new();
        for url in &cfg.subscribe {
            let (listeners, bound) = share_port(&rt, url, n)?;
            sub_endpoints.push(bound);
            for (core, l) in listeners.into_iter().enumerate() {
                tasks.push(rt.spawn_on(
                    core,
                    subs::serve_sp(
                        l,
                        fan_txs[core].clone(),
                        sub_ids.clone(),
                        sub_gate.clone(),
                        limits,
                        shared.auth.clone(),
                    ),
                ));
            }
        }
        let stop_sampler = Arc::new(AtomicBool::new(false));
        let mut http_addr = None;
        if let Some(addr) = &cfg.http {
            let (listeners, bound) = share_port(&rt, &format!("tcp://{addr}"), n)?;
            http_addr = Some(bound.trim_start_matches("tcp://").to_string());
            // The names the port answers to: its address as bound, and the
            // host as configured (say `myhost:7452`).
            let bound_addr = listeners[0].local_addr().map_err(|source| HubError::Io {
                op: "read the address of",
                path: PathBuf::from(addr),
                source,
            })?;
            let configured_host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let hosts = origin::HostPolicy::new(bound_addr, configured_host, &cfg.allow_hosts);
            let (feed_tx, feed_rx) = tokio::sync::watch::channel(Arc::<str>::from("{}"));
            let (sh, socks) = (shared.clone(), sockets.clone());
            let stop = stop_sampler.clone();
            std::thread::Builder::new()
                .name("pinion-hub-stats".into())
                .spawn(move || monitor::run_sampler(sh, socks, "pinion-hub".into(), feed_tx, stop))
                .map_err(spawn_err)?;
            let (sh, socks) = (shared.clone(), sockets.clone());
            let web = Arc::new(http::Web {
                fan: fan_txs.clone(),
                socks: sockets.clone(),
                shared: shared.clone(),
                sub_ids: sub_ids.clone(),
                feed: feed_rx,
                metrics: Box::new(move || {
                    let mut m = monitor::metrics_text(
                        &sh.snapshot(),
                        monitor::publishers(&socks),
                        &monitor::cpu_times("pinion-hub", socks.len()),
                    );
                    if let Some(a) = &sh.auth {
                        m.push_str(&a.metrics_text());
                    }
                    m
                }),
                metrics_cache: Default::default(),
                gate: http_gate,
                limits,
                hosts,
                origins: origin::OriginPolicy::new(&cfg.allow_origins),
            });
            for (core, l) in listeners.into_iter().enumerate() {
                tasks.push(rt.spawn_on(core, http::serve(core, l, web.clone())));
            }
        }
        for (core, answers) in answer_rxs.into_iter().enumerate() {
            let intake = intake::Intake {
                core,
                sock: sockets[core].clone(),
                to_writer: to_writer.clone(),
                answers,
                shared: shared.clone(),
                max_payload: cfg.max_payload,
                max_total: cfg.max_inflight_bytes,
                max_per_conn: cfg.max_inflight_bytes_per_conn,
                tokens: Default::default(),
            };
            rt.spawn_on(core, intake.run());
        }
        Ok(Hub {
            rt,
            sockets,
            endpoints,
            urls,
            sub_endpoints,
            http_addr,
            tasks,
            fan: fan_txs,
            stop_sampler,
            to_writer,
            writer: writer_thread.or(raft_thread),
            store: store_thread,
            shared,
            report,
            _lock: lock,
        })
    }

    /// The bound endpoints (a `:0` port resolved), one per URL (the first
    /// of each shared TCP port).
    pub fn endpoints(&self) -> Vec<String> {
        let mut v = self.urls.clone();
        v.dedup();
        v
    }

    /// The subscriber endpoints (SP PUB over TCP), ports resolved.
    pub fn subscribe_endpoints(&self) -> &[String] {
        &self.sub_endpoints
    }

    /// The HTTP address (`host:port`, port resolved), if serving HTTP.
    pub fn http_addr(&self) -> Option<&str> {
        self.http_addr.as_deref()
    }

    /// What opening the data directory found.
    pub fn start_report(&self) -> &StartReport {
        &self.report
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot(
            &self.shared.latency,
            self.shared.head.load(Ordering::Acquire),
        )
    }

    /// A function reading the counters, for a thread that outlives borrows.
    pub fn stats_handle(&self) -> impl Fn() -> StatsSnapshot + Send + 'static {
        let shared = self.shared.clone();
        move || {
            shared
                .stats
                .snapshot(&shared.latency, shared.head.load(Ordering::Acquire))
        }
    }

    /// Graceful stop: stop accepting connections, NACK new requests with
    /// SHUTTING_DOWN, wait (up to 10 s) for the requests in flight to be
    /// answered, make the final sync and checkpoint, flush the replies and
    /// close.
    pub fn shutdown(mut self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        for e in &self.endpoints {
            e.close();
        }
        for t in &self.tasks {
            t.abort();
        }
        self.stop_sampler.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Twice: a core may have been between reading the flag and counting
        // its request.
        for _ in 0..2 {
            while self.shared.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done_tx, done_rx) = mpsc::channel();
        if self.to_writer.send(writer::ToWriter::Shutdown(done_tx)) {
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // The last records reach the subscribers, who are then told goodbye.
        for f in &self.fan {
            let _ = f.send(fanout::FanIn::Shutdown);
        }
        // Let the last answers reach the sockets, then close (lingering).
        std::thread::sleep(Duration::from_millis(20));
        for s in &self.sockets {
            s.close();
        }
        drop(std::mem::replace(
            &mut self.to_writer,
            writer::WriterTx::closed(),
        ));
        if let Some(t) = self.store.take() {
            let _ = t.join();
        }
        let _ = &self.rt;
    }
}

/// The journal's record limit for payloads up to `max_payload`: header,
/// the longest topic, the payload (never below the journal's default, so
/// records written under a larger `max_payload` stay readable).
fn record_limit(max_payload: usize) -> u32 {
    let want = pinion_journal::RECORD_HEADER_LEN_V2 + pinion_proto::MAX_TOPIC_LEN + max_payload;
    let default = JournalOptions::default().max_record_bytes as usize;
    want.max(default)
        .min(pinion_journal::MAX_RECORD_LEN as usize) as u32
}

/// Waits for a facade future from this (non-core) thread: the futures only
/// wait on channels fed by the runtime's cores, so any executor will do.
fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// Binds `url` once per core with SO_REUSEPORT (after checking no other
/// program holds the port); returns the listeners and the bound URL.
fn share_port(
    rt: &Runtime,
    url: &str,
    n: usize,
) -> Result<(Vec<std::net::TcpListener>, String), HubError> {
    let lerr = |source| HubError::Listen {
        url: url.to_string(),
        source,
    };
    check_port_free(url).map_err(lerr)?;
    let parsed = pinion::Url::parse(url).map_err(lerr)?;
    let (listeners, bound) = rt
        .block_on(0, async move {
            pinion_runtime::transport::tcp::bind_reuseport(&parsed, n).await
        })
        .map_err(lerr)?;
    Ok((listeners, bound.to_string()))
}

fn check_port_free(url: &str) -> Result<(), pinion::Error> {
    let addr = url.trim_start_matches("tcp://");
    if addr.ends_with(":0") {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(pinion::Error::Io {
            op: "bind",
            addr: url.to_string(),
            source: e,
        }),
        Err(_) => Ok(()), // let the real bind report it
    }
}
