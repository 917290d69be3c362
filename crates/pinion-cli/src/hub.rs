//! `pinion serve`, `pinion publish` and `pinion log`: the hub and its tools.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion_hub::{FsyncPolicy, Hub, HubConfig};

use crate::{exit, say, Failure};

/// `pinion serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file (keys as in `pinion_hub::config`); flags and
    /// PINION_* environment variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: the log file (pinion.log) and sessions.sqlite
    /// [default: ./pinion-data; env PINION_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Publisher endpoint (repeatable) [default: tcp://127.0.0.1:7450 and
    /// ipc://DATA_DIR/hub.ipc; env PINION_LISTEN, comma-separated].
    #[arg(long, value_name = "URL")]
    pub listen: Vec<String>,
    /// Turn authentication on: check tokens with this key (repeatable; an
    /// Ed25519 public key `FILE.pub` from `pinion token keygen`, or an
    /// HS256 secret file). Publishes then need a token allowing their
    /// topic, subscribers one allowing theirs, and the dashboard, /metrics
    /// and /stats an admin token. Off by default (config: `[auth] keys`).
    #[arg(long, value_name = "FILE")]
    pub auth_key: Vec<PathBuf>,
    /// The hub's TLS certificate chain (PEM), for `tls+tcp://` publisher
    /// endpoints (`--listen tls+tcp://0.0.0.0:7453`) (config: `[tls] cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM) [default: in --tls-cert].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates: with it, clients must present one
    /// (mutual TLS) unless --tls-client-auth says otherwise; map them to
    /// permissions with `[[auth.cert]]`.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificates: none, optional or required.
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls_client_auth: Option<crate::AuthModeArg>,
    /// Subscriber endpoint, SP PUB over TCP (repeatable; any NNG SUB can
    /// dial it) [default: tcp://127.0.0.1:7451; env PINION_SUBSCRIBE].
    #[arg(long, value_name = "URL")]
    pub subscribe: Vec<String>,
    /// HTTP address of the dashboard (/), /metrics, /healthz, /pinion.js
    /// and the WebSocket endpoints /sub, /pub, /stats; "off" to disable
    /// [default: 127.0.0.1:7452; env PINION_HTTP].
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// When to fdatasync: always (ACK = durable), interval:MS, never
    /// [default: always; env PINION_FSYNC].
    #[arg(long, value_name = "POLICY", value_parser = parse_fsync)]
    pub fsync: Option<FsyncPolicy>,
    /// Largest payload accepted, bytes [default: 256; env PINION_MAX_PAYLOAD].
    #[arg(long, value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// How the fan-out writes to subscribers: writev (one per subscriber
    /// per batch) or io_uring (a batch's sends submitted together)
    /// [default: io_uring, writev where io_uring is unavailable; env
    /// PINION_FANOUT_SEND].
    #[arg(long, value_name = "MODE", value_parser = parse_fanout_send)]
    pub fanout_send: Option<pinion_hub::FanoutSend>,
    /// Cores to run on (0: every CPU allowed).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Pin core i's thread to CPU i: true for one hub per machine, false
    /// when several hubs share the CPUs (`pinion cluster local` turns it
    /// off) [default: true; env PINION_PIN].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, overrides_with = "pin_threads")]
    pub pin_threads: Option<bool>,
    /// An origin whose web pages may use /sub, /pub and /stats besides the
    /// hub's own (repeatable; "*" turns the check off) [env
    /// PINION_ALLOW_ORIGIN, comma-separated]. See docs/HARDENING.md.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// A Host name the HTTP port answers to besides its address and
    /// localhost (repeatable; "*": any) [env PINION_ALLOW_HOST].
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Connections open at once per listening port [default: 16384].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections per source address and port (0: no cap) [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Cluster mode: this node's id (with --raft and --peer; see
    /// docs/CLUSTER.md). Absent: a single node.
    #[arg(long, value_name = "ID", requires = "raft")]
    pub node_id: Option<u64>,
    /// Cluster mode: this node's Raft endpoint (tcp://host:port).
    #[arg(long, value_name = "URL", requires = "node_id")]
    pub raft: Option<String>,
    /// Cluster mode: an initial voter, this node included, as
    /// ID=RAFT_URL, optionally followed by ,PUBLISH_URL then ,SUBSCRIBE_URL
    /// then ,HTTP_ADDR (repeat).
    #[arg(long, value_name = "SPEC", requires = "node_id")]
    pub peer: Vec<String>,
    /// Cluster mode: how long a publish waits for a quorum before NACK
    /// UNAVAILABLE, ms [default: 2000].
    #[arg(long, value_name = "MS", requires = "node_id")]
    pub cluster_write_timeout_ms: Option<u64>,
    /// Cluster mode: the leader's heartbeat interval, ms [default: 50].
    #[arg(long, value_name = "MS", requires = "node_id")]
    pub heartbeat_ms: Option<u64>,
    /// Cluster mode: the election timeout range, ms, as MIN,MAX
    /// [default: 150,300]. A follower that hears no leader for a random
    /// time in the range starts an election.
    #[arg(long, value_name = "MIN,MAX", requires = "node_id", value_parser = parse_range_ms)]
    pub election_timeout_ms: Option<(u64, u64)>,
    /// Cluster mode: if this node's log is damaged, move it aside (kept as
    /// pinion.log.damaged-TIME) and rejoin with an empty log that the
    /// leader fills again, instead of refusing to start.
    #[arg(long, requires = "node_id")]
    pub rebuild_damaged_log: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Seconds between stats lines in the log (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stats_every: u64,
}

/// Structured log output.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
        .map_err(|e: pinion_hub::config::ConfigError| e.to_string())
}

fn parse_fanout_send(s: &str) -> Result<pinion_hub::FanoutSend, String> {
    s.parse()
        .map_err(|e: pinion_hub::config::ConfigError| e.to_string())
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PINION_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Builds the configuration: defaults, file, environment, flags.
pub fn config(a: &ServeArgs) -> Result<HubConfig, Failure> {
    let mut cfg = HubConfig::default();
    if let Some(path) = &a.config {
        cfg.apply_file(path)
            .map_err(|e| Failure::usage(e.to_string()))?;
    }
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    if !a.listen.is_empty() {
        cfg.listen = a.listen.clone();
    }
    if !a.subscribe.is_empty() {
        cfg.subscribe = a.subscribe.clone();
    }
    if !a.auth_key.is_empty() {
        let mut auth = cfg.auth.take().unwrap_or_default();
        auth.keys = a.auth_key.clone();
        cfg.auth = Some(auth);
    }
    if let Some(cert) = &a.tls_cert {
        let mut t = cfg.tls.take().unwrap_or(pinion_hub::config::TlsSettings {
            cert: cert.clone(),
            key: None,
            ca: None,
            client_auth: None,
        });
        t.cert = cert.clone();
        cfg.tls = Some(t);
    }
    if let Some(t) = cfg.tls.as_mut() {
        if let Some(k) = &a.tls_key {
            t.key = Some(k.clone());
        }
        if let Some(ca) = &a.tls_ca {
            t.ca = Some(ca.clone());
        }
        if let Some(m) = a.tls_client_auth {
            t.client_auth = Some(m.into());
        }
    } else if a.tls_key.is_some() || a.tls_ca.is_some() || a.tls_client_auth.is_some() {
        return Err(Failure::usage(
            "--tls-key, --tls-ca and --tls-client-auth need --tls-cert (or [tls] cert)".to_string(),
        ));
    }
    if let Some(h) = &a.http {
        cfg.http = (h != "off" && !h.is_empty()).then(|| h.clone());
    }
    if let Some(f) = a.fsync {
        cfg.fsync = f;
    }
    if let Some(m) = a.max_payload {
        cfg.max_payload = m;
    }
    if let Some(m) = a.fanout_send {
        cfg.fanout_send = m;
    }
    if let Some(t) = a.threads {
        cfg.threads = t;
    }
    if let Some(p) = a.pin_threads {
        cfg.pin_threads = p;
    }
    if !a.allow_origin.is_empty() {
        cfg.allow_origins = a.allow_origin.clone();
    }
    if !a.allow_host.is_empty() {
        cfg.allow_hosts = a.allow_host.clone();
    }
    if let Some(n) = a.max_connections {
        cfg.max_connections = n;
    }
    if let Some(n) = a.max_connections_per_source {
        cfg.max_connections_per_source = n;
    }
    if let (Some(id), Some(raft)) = (a.node_id, &a.raft) {
        let mut peers = std::collections::BTreeMap::new();
        for p in &a.peer {
            let (pid, node) = pinion_hub::cluster::parse_peer(p)
                .map_err(|e| Failure::usage(format!("--peer {p:?}: {e}")))?;
            peers.insert(pid, node);
        }
        let mut c = pinion_hub::cluster::ClusterConfig::new(id, raft.clone(), peers);
        // Timings set in the config file's [cluster] table still apply.
        if let Some(t) = &cfg.cluster {
            c.write_timeout = t.write_timeout;
            c.heartbeat = t.heartbeat;
            c.election_timeout = t.election_timeout;
        }
        c.rebuild_damaged_log = a.rebuild_damaged_log;
        cfg.cluster = Some(c);
    }
    if let Some(c) = cfg.cluster.as_mut() {
        if let Some(ms) = a.cluster_write_timeout_ms {
            c.write_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = a.heartbeat_ms {
            c.heartbeat = Duration::from_millis(ms);
        }
        if let Some((lo, hi)) = a.election_timeout_ms {
            c.election_timeout = (Duration::from_millis(lo), Duration::from_millis(hi));
        }
        if a.rebuild_damaged_log {
            c.rebuild_damaged_log = true;
        }
    }
    cfg.validate().map_err(|e| Failure::usage(e.to_string()))?;
    Ok(cfg)
}

/// `MIN,MAX` in milliseconds.
fn parse_range_ms(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected MIN,MAX (milliseconds)"))?;
    let n = |v: &str| v.trim().parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
    let (lo, hi) = (n(lo)?, n(hi)?);
    if lo == 0 || lo >= hi {
        return Err(format!("{s:?}: need 0 < MIN < MAX"));
    }
    Ok((lo, hi))
}

/// Runs the hub until SIGINT or SIGTERM, then shuts it down gracefully.
pub fn serve(a: ServeArgs) -> Result<(), Failure> {
    init_logs(a.log_format);
    let cfg = config(&a)?;
    // Block the signals before any thread starts; wait for them below.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Failure::new(exit::IO, format!("cannot install signal handlers: {e}")))?;
    let hub = Hub::start(cfg.clone()).map_err(|e| {
        use pinion_hub::HubError;
        let code = match &e {
            HubError::Config(_) => exit::USAGE,
            HubError::Listen { source, .. } => crate::failure::code_for(source),
            HubError::Locked(_) => exit::ADDRESS_IN_USE,
            HubError::Auth(_) | HubError::Tls(_) => exit::USAGE,
            _ => exit::IO,
        };
        Failure::new(code, format!("cannot start the hub: {e}"))
    })?;
    let r = hub.start_report().clone();
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        records = r.records,
        clients = r.clients,
        replayed = r.replayed,
        rebuilt_sessions = r.rebuilt,
        fsync = %cfg.fsync,
        fanout_send = %cfg.fanout_send,
        max_payload = cfg.max_payload,
        "log opened"
    );
    if let Some(t) = &r.truncated {
        tracing::warn!("{t}");
    }
    match &cfg.auth {
        Some(a) => tracing::info!(
            keys = %a.keys.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", "),
            "authentication ON: publishes need a token allowing their topic, subscribers one allowing theirs, the dashboard, /metrics and /stats an admin token; plain SP subscribers are refused"
        ),
        None => tracing::info!(
            "authentication OFF: anyone who can reach these ports may publish, subscribe and read the dashboard (turn it on with --auth-key or [auth] keys)"
        ),
    }
    for url in hub.endpoints() {
        tracing::info!(%url, "listening for publishers");
    }
    for url in hub.subscribe_endpoints() {
        tracing::info!(%url, "listening for subscribers (SP PUB)");
    }
    if let Some(addr) = hub.http_addr() {
        tracing::info!(
            dashboard = %format!("http://{addr}/"),
            subscribe = %format!("ws://{addr}/sub"),
            publish = %format!("ws://{addr}/pub"),
            "serving HTTP"
        );
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stats_every = a.stats_every;
    let stats_thread = (stats_every > 0).then(|| {
        let stats = hub.stats_handle();
        std::thread::spawn(move || {
            let mut prev = stats();
            let mut t = Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(Duration::from_secs(stats_every))
            {
                let s = stats();
                let secs = t.elapsed().as_secs_f64();
                t = Instant::now();
                tracing::info!(
                    logged_per_s = ((s.logged - prev.logged) as f64 / secs).round(),
                    requests = s.requests,
                    logged = s.logged,
                    duplicates = s.duplicates,
                    nacks = s.nacks,
                    commits = s.commits,
                    head = s.head,
                    ack_p50_us_le = s.p50_us,
                    ack_p99_us_le = s.p99_us,
                    "stats"
                );
                prev = s;
            }
        })
    });
    let sig = signals.forever().next();
    tracing::info!(signal = ?sig, "shutting down: no new connections, draining, final sync and checkpoint");
    let _ = stop_tx.send(());
    let final_stats = hub.stats();
    hub.shutdown();
    if let Some(t) = stats_thread {
        let _ = t.join();
    }
    tracing::info!(
        logged = final_stats.logged,
        head = final_stats.head,
        "stopped"
    );
    Ok(())
}

/// `pinion publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The hub's publisher endpoint.
    #[arg(long, default_value = pinion_hub::config::DEFAULT_TCP, value_name = "URL")]
    pub url: String,
    /// Topic of every message.
    #[arg(long, short = 't', default_value = "")]
    pub topic: String,
    /// Publish TEXT (--count times). Without --data, each line of standard
    /// input is one message.
    #[arg(long, short = 'D', value_name = "TEXT")]
    pub data: Option<String>,
    /// How many times to publish --data.
    #[arg(long, short = 'C', default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Client id, 32 hex digits [default: random]. Reuse it with --first-seq
    /// to retry messages idempotently.
    #[arg(long, value_name = "HEX", value_parser = parse_client_id)]
    pub client_id: Option<[u8; 16]>,
    /// Seq of the first message.
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    pub first_seq: u64,
    /// Messages in flight at most.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub window: usize,
    /// Retry messages NACKed NOT_LEADER, UNAVAILABLE or SHUTTING_DOWN (a
    /// cluster failing over) with the same seq for up to SECS before
    /// reporting the NACK [default: report at once].
    #[arg(long, value_name = "SECS")]
    pub retry_for: Option<f64>,
    /// A token for a hub with authentication on (`pinion token issue`),
    /// sent with every message [env PINION_TOKEN].
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PINION_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: crate::TlsArgs,
    /// Print only the summary, not one line per message.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn parse_client_id(s: &str) -> Result<[u8; 16], String> {
    let s = s.replace('-', "");
    if s.len() != 32 {
        return Err("expected 32 hex digits (a UUID)".into());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| "not hexadecimal".to_string())?;
    }
    Ok(out)
}

/// Formats a client id as a UUID.
pub fn uuid(id: &[u8; 16]) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Publishes messages, printing one line per answer and a summary. Exit
/// code 9 when any message was NACKed.
pub fn publish(a: PublishArgs) -> Result<(), Failure> {
    let mut opts =
        PublisherOptions {
            first_seq: a.first_seq,
            window: a.window.max(1),
            retry_transient: a
                .retry_for
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(86_400.0))),
            token: a.token.clone().filter(|t| !t.is_empty()),
            tls: if a.url.starts_with("tls+tcp://") {
                Some(a.tls.dialer().map_err(|e| {
                    Failure::usage(format!("{e}; check --cacert, --cert and --key"))
                })?)
            } else {
                None
            },
            ..PublisherOptions::default()
        };
    if let Some(id) = a.client_id {
        opts.client_id = id;
    }
    futures_executor::block_on(async move {
        let mut p = Publisher::connect(&a.url, opts)
            .await
            .map_err(|e| crate::failure::endpoint(crate::failure::Action::Dial, &a.url, &e))?;
        if !a.quiet {
            say(&format!("client id {}", uuid(&p.client_id())));
        }
        let out = std::io::stdout();
        let (mut acks, mut dups, mut nacks) = (0u64, 0u64, 0u64);
        let started = Instant::now();
        let mut report = |o: Outcome| -> Result<(), Failure> {
            let line = match &o {
                Outcome::Ack {
                    seq,
                    offset,
                    duplicate,
                } => {
                    acks += 1;
                    if *duplicate {
                        dups += 1;
                    }
                    format!(
                        "ack seq={seq} offset={offset}{}",
                        if *duplicate { " duplicate" } else { "" }
                    )
                }
                Outcome::Nack { seq, code, reason } => {
                    nacks += 1;
                    format!(
                        "nack seq={seq} code={} reason={reason:?}",
                        code.as_str_name()
                    )
                }
            };
            if !a.quiet {
                writeln!(out.lock(), "{line}").map_err(|_| Failure::quiet())?;
            }
            Ok(())
        };
        let op = |e: pinion::Error| crate::failure::op(&e, "publish", None);
        match &a.data {
            Some(d) => {
                for _ in 0..a.count {
                    p.send(&a.topic, d.clone().into_bytes()).await.map_err(op)?;
                    // Print answers as they come, not all at the end.
                    while p.in_flight() >= a.window {
                        report(p.recv().await.map_err(op)?)?;
                    }
                }
            }
            None => {
                for line in std::io::stdin().lock().lines() {
                    let line =
                        line.map_err(|e| Failure::new(exit::IO, format!("reading stdin: {e}")))?;
                    p.send(&a.topic, line.into_bytes()).await.map_err(op)?;
                }
            }
        }
        for o in p.flush().await.map_err(op)? {
            report(o)?;
        }
        let secs = started.elapsed().as_secs_f64();
        say(&format!(
            "{} acked ({dups} duplicates), {nacks} nacked in {secs:.3} s",
            acks
        ));
        if nacks > 0 {
            return Err(Failure::new(exit::NACKED, String::new()));
        }
        Ok(())
    })
}

/// Which log file to read.
#[derive(Debug, Clone, Args)]
pub struct LogFile {
    /// The log file [default: DATA_DIR/pinion.log].
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The hub's data directory (used when FILE is not given).
    #[arg(long, value_name = "DIR", default_value = pinion_hub::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl LogFile {
    fn path(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(pinion_hub::LOG_FILE))
    }
}

/// How `pinion log cat` prints records.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CatFormat {
    /// `offset time client seq topic payload` (payload escaped); messages
    /// only (a cluster log's Raft blank and membership entries are skipped).
    Text,
    /// One JSON object per record, with its `term` and `kind` (`message`,
    /// `blank`, `membership`); payload as an escaped string and in hex.
    Json,
    /// Only the payloads, raw, one per line (messages only).
    Payload,
}

/// `pinion log …`.
#[derive(Debug, Clone, Subcommand)]
pub enum LogCommand {
    /// Print records, from an offset, optionally following new ones.
    Cat {
        #[command(flatten)]
        #[allow(missing_docs)]
        file: LogFile,
        /// First offset to print.
        #[arg(long, default_value_t = 0, value_name = "OFFSET")]
        from: u64,
        /// Print at most N records.
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
        /// Keep printing records as the hub appends them (Ctrl-C stops).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: CatFormat,
    },
    /// Check every record's CRC and framing; exit 10 if the log is corrupt
    /// or has a torn tail (never modifies the file).
    Verify {
        #[command(flatten)]
        #[allow(missing_docs)]
        file: LogFile,
    },
    /// Header, size, record count, first and last records, clients.
    Stat {
        #[command(flatten)]
        #[allow(missing_docs)]
        file: LogFile,
    },
    /// Rewrite a format-1 log as format 2 (needed before the node joins a
    /// cluster): offsets and records unchanged, the old file kept as
    /// FILE.v1. Run it with the hub stopped.
    Upgrade {
        #[command(flatten)]
        #[allow(missing_docs)]
        file: LogFile,
    },
}

fn jfail(path: &std::path::Path, e: pinion_journal::JournalError) -> Failure {
    let code = match e.fault() {
        pinion_journal::Fault::Data => exit::CORRUPT,
        pinion_journal::Fault::Caller => exit::USAGE,
        _ => exit::IO,
    };
    Failure::new(code, format!("{}: {e}", path.display()))
}

fn escape(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

pub(crate) fn json_str(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for ch in String::from_utf8_lossy(b).chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

pub(crate) fn time_str(us: u64) -> String {
    // UTC, RFC 3339 with microseconds, without a date library.
    let secs = (us / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        us % 1_000_000
    )
}

/// Runs `pinion log …`.
pub fn log(c: LogCommand) -> Result<(), Failure> {
    match c {
        LogCommand::Cat {
            file,
            from,
            count,
            follow,
            format,
        } => {
            let path = file.path();
            let mut r = pinion_journal::Reader::open(&path).map_err(|e| jfail(&path, e))?;
            r.seek(from).map_err(|e| jfail(&path, e))?;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            let mut printed = 0u64;
            while count.is_none_or(|n| printed < n) {
                let rec = match r.next() {
                    Some(rec) => rec.map_err(|e| jfail(&path, e))?,
                    None if follow => {
                        out.flush().map_err(|_| Failure::quiet())?;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    None => break,
                };
                let kind = match rec.kind {
                    pinion_journal::RecordKind::Message => "message",
                    pinion_journal::RecordKind::Blank => "blank",
                    pinion_journal::RecordKind::Membership => "membership",
                };
                let message = rec.kind == pinion_journal::RecordKind::Message;
                if !message && !matches!(format, CatFormat::Json) {
                    continue;
                }
                let line = match format {
                    CatFormat::Text => format!(
                        "{} {} {} {} {} {}\n",
                        rec.offset,
                        time_str(rec.timestamp_us),
                        uuid(&rec.client_id),
                        rec.seq,
                        escape(&rec.topic),
                        escape(&rec.payload)
                    ),
                    CatFormat::Json => format!(
                        "{{\"offset\":{},\"term\":{},\"kind\":\"{}\",\"continued\":{},\"timestamp_us\":{},\"time\":\"{}\",\"client_id\":\"{}\",\"seq\":{},\"topic\":{},\"payload\":{},\"payload_hex\":\"{}\"}}\n",
                        rec.offset,
                        rec.term,
                        kind,
                        rec.continued,
                        rec.timestamp_us,
                        time_str(rec.timestamp_us),
                        uuid(&rec.client_id),
                        rec.seq,
                        json_str(&rec.topic),
                        json_str(&rec.payload),
                        rec.payload.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ),
                    CatFormat::Payload => {
                        let mut l = String::from_utf8_lossy(&rec.payload).into_owned();
                        l.push('\n');
                        l
                    }
                };
                out.write_all(line.as_bytes())
                    .map_err(|_| Failure::quiet())?;
                printed += 1;
            }
            out.flush().map_err(|_| Failure::quiet())?;
            Ok(())
        }
        LogCommand::Verify { file } => {
            let path = file.path();
            let v = pinion_journal::verify(&path).map_err(|e| jfail(&path, e))?;
            println!(
                "{}: format v{}, {} records, {} valid bytes of {}, every CRC ok",
                path.display(),
                v.header.version,
                v.records,
                v.valid_bytes,
                v.file_bytes
            );
            match v.torn_tail {
                None => Ok(()),
                Some(t) => Err(Failure::new(
                    exit::CORRUPT,
                    format!(
                        "{}: torn tail of {} bytes at byte {} ({}); the hub cuts it when it next opens the log",
                        path.display(),
                        t.bytes_cut,
                        t.at_byte,
                        t.reason
                    ),
                )),
            }
        }
        LogCommand::Stat { file } => {
            let path = file.path();
            let s = pinion_journal::stat(&path).map_err(|e| jfail(&path, e))?;
            let rec = |r: Option<pinion_journal::RecordSummary>| {
                r.map(|r| format!("offset {} at {}", r.offset, time_str(r.timestamp_us)))
                    .unwrap_or_else(|| "-".into())
            };
            println!("file:          {}", path.display());
            println!(
                "format:        v{} (flags {:#06x}), created {}",
                s.version,
                s.flags,
                time_str(s.created_unix_us)
            );
            println!("records:       {}", s.records);
            println!("clients:       {}", s.distinct_clients);
            println!("first:         {}", rec(s.first));
            println!("last:          {}", rec(s.last));
            println!(
                "bytes:         {} valid, {} pre-zeroed, {} file",
                s.valid_bytes, s.preallocated_bytes, s.file_bytes
            );
            if let Some(t) = s.torn_tail {
                println!(
                    "torn tail:     {} bytes at byte {} ({})",
                    t.bytes_cut, t.at_byte, t.reason
                );
            }
            if s.version >= 2 {
                let r = s.raft;
                let pos = |p: Option<pinion_journal::LogPos>| {
                    p.map(|p| format!("term {} index {}", p.term, p.index))
                        .unwrap_or_else(|| "-".into())
                };
                let vote = r
                    .vote
                    .map(|v| {
                        format!(
                            "term {}, for {}{}",
                            v.term,
                            v.node_id
                                .map_or("nobody".to_string(), |n| format!("node {n}")),
                            if v.committed { " (committed)" } else { "" }
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                println!("raft vote:     {vote}");
                println!("raft commit:   {}", pos(r.committed));
                println!("raft purged:   {}", pos(r.purged));
                println!("first offset:  {}", r.first_index);
                println!(
                    "first entry:   {} (the Raft index of the first record's entry)",
                    r.first_entry
                );
            }
            Ok(())
        }
        LogCommand::Upgrade { file } => {
            let path = file.path();
            let r = pinion_journal::upgrade(&path).map_err(|e| jfail(&path, e))?;
            if r.already {
                println!("{}: already format v2, nothing to do", path.display());
                return Ok(());
            }
            if let Some(t) = &r.torn_tail {
                println!(
                    "{}: a torn tail of {} bytes (never acknowledged) was not copied",
                    path.display(),
                    t.bytes_cut
                );
            }
            println!(
                "{}: upgraded to format v2, {} records, offsets unchanged; the format-1 file is kept at {}",
                path.display(),
                r.records,
                r.kept_at.map(|p| p.display().to_string()).unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// `pinion bench …`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Publish load: acked msg/s and ack latency of this hub side by side
    /// with Redis (XADD, appendfsync always), NATS JetStream and the disk's
    /// own group-commit ceiling.
    Publish(pinion_loadgen::PublishArgs),
    /// WebSocket fan-out at scale: N idle subscribers (hub memory per
    /// connection), then publish→deliver latency to all of them; with
    /// --nodes N [--learners L], over a local cluster.
    Fanout(Box<pinion_loadgen::FanoutArgs>),
    /// Failover of a local 3-node cluster: kill -9 of the leader to the
    /// first ACK from its successor, p50 and max over --kills kills.
    Failover(pinion_loadgen::FailoverArgs),
    /// Internal: a subscriber worker process of `bench fanout --nodes`
    /// (plan on stdin, JSON lines on stdout).
    #[command(hide = true)]
    FanoutWorker,
    /// Internal: holds idle loopback connection pairs for `bench fanout
    /// --foreign-idle` until its stdin closes.
    #[command(hide = true)]
    IdlePairs {
        /// Connection pairs to open and hold.
        #[arg(long)]
        pairs: usize,
    },
}

/// Runs `pinion bench …`.
pub fn bench(c: BenchCommand) -> Result<(), Failure> {
    match c {
        BenchCommand::Publish(a) => {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::new(exit::IO, format!("cannot find the pinion executable: {e}"))
            })?;
            pinion_loadgen::run_publish(&a, &exe)
                .map(|_| ())
                .map_err(|e| Failure::new(exit::FAILED, format!("bench publish: {e}")))
        }
        BenchCommand::Failover(a) => {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::new(exit::IO, format!("cannot find the pinion executable: {e}"))
            })?;
            pinion_loadgen::run_failover(&a, &exe)
                .map(|_| ())
                .map_err(|e| Failure::new(exit::FAILED, format!("bench failover: {e}")))
        }
        BenchCommand::Fanout(a) => {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::new(exit::IO, format!("cannot find the pinion executable: {e}"))
            })?;
            let summaries = pinion_loadgen::run_fanout(&a, &exe)
                .map_err(|e| Failure::new(exit::FAILED, format!("bench fanout: {e}")))?;
            // Per-topic and multi-node runs: missing or duplicate
            // deliveries fail the command.
            let failed: usize = summaries.iter().map(|s| s.failures()).sum();
            if failed > 0 {
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "bench fanout: {failed} run(s) incomplete: missing or duplicate deliveries (see above)"
                    ),
                ));
            }
            Ok(())
        }
        BenchCommand::FanoutWorker => pinion_loadgen::run_fanout_worker()
            .map_err(|e| Failure::new(exit::FAILED, format!("bench fanout-worker: {e}"))),
        BenchCommand::IdlePairs { pairs } => pinion_loadgen::run_idle_pairs(pairs)
            .map_err(|e| Failure::new(exit::FAILED, format!("bench idle-pairs: {e}"))),
    }
}
