//! Hub configuration: embedded defaults, then a TOML file, then `PINION_*`
//! environment variables, then command-line flags (each overriding the one
//! before).
//!
//! ```toml
//! # pinion.toml: every key optional
//! data_dir = "./pinion-data"          # log file + sessions.sqlite
//! listen = ["tcp://127.0.0.1:7450", "ipc://./pinion-data/hub.ipc"]
//! fsync = "always"                    # "always" | "interval:<ms>" | "never"
//! max_payload = 256                   # bytes; larger payloads get TOO_LARGE
//! max_inflight_bytes = 67108864       # all connections together
//! max_inflight_bytes_per_conn = 1048576
//! dedup_window = 1024                 # seqs remembered per client
//! checkpoint_interval_ms = 1000       # sessions → SQLite
//! dedup_horizon = 10000000            # records behind the head kept for dedup
//! max_sessions = 1000000              # clients held at most (~220 B each)
//! threads = 0                         # cores to use; 0 = all allowed
//! pin_threads = true                  # pin core i to CPU i; false when nodes share a machine
//! preallocate = 67108864              # log bytes kept pre-zeroed; 0 = off
//! subscribe = ["tcp://127.0.0.1:7451"] # SP PUB endpoints for subscribers
//! http = "127.0.0.1:7452"             # dashboard, /metrics, WebSocket; "" = off
//! max_queued_per_subscriber = 1048576 # bytes; past it: disconnected
//!
//! # Hardening (see docs/HARDENING.md)
//! allow_origin = ["https://app.example.com"] # pages that may use /sub, /pub, /stats
//! allow_host = ["hub.example.com"]    # Host names besides the bound address
//! max_connections = 16384             # per port (publisher, subscriber, HTTP)
//! max_connections_per_source = 1024   # per port and source address; 0 = no cap
//! max_handshakes = 1024               # per port: not yet past head / SP header
//! max_handshakes_per_source = 64      # per port and source address
//! handshake_timeout_ms = 10000        # whole HTTP head / SP header
//! write_timeout_ms = 10000            # an HTTP response, a /stats frame
//! tcp_keepalive_ms = 60000            # idle before probes; 0 = off
//! ws_ping_interval_ms = 30000         # idle WebSocket subscribers are pinged
//! max_replays = 16                    # catch-up replays read at once
//! max_fanout_backlog = 67108864       # bytes of batches queued per core
//! fanout_send = "io_uring"            # or "writev": how subscribers' sends are made
//!
//! # Cluster mode (see docs/CLUSTER.md); absent = a single node
//! [cluster]
//! node_id = 1                         # this node (ids start at 1, never reused)
//! raft = "tcp://127.0.0.1:7460"       # this node's Raft endpoint
//! # every initial voter, this one too: ID=RAFT[,PUBLISH[,SUBSCRIBE[,HTTP]]]
//! peers = ["1=tcp://127.0.0.1:7460,tcp://127.0.0.1:7450", "2=tcp://127.0.0.2:7460,tcp://127.0.0.2:7450"]
//! write_timeout_ms = 2000             # no commit by then: NACK UNAVAILABLE
//! heartbeat_ms = 50
//! election_timeout_min_ms = 150
//! election_timeout_max_ms = 300
//! ready_max_lag = 256                 # /ready fails further behind the leader's commit (entries)
//! ready_stale_ms = 5000               # /ready fails after this long without word from a leader
//! rebuild_damaged_log = false         # true: move a damaged log aside, refill from the leader
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Default publisher endpoint.
pub const DEFAULT_TCP: &str = "tcp://127.0.0.1:7450";
/// Default subscriber endpoint (SP PUB over TCP).
pub const DEFAULT_SUBSCRIBE: &str = "tcp://127.0.0.1:7451";
/// Default HTTP address (dashboard, metrics, WebSocket).
pub const DEFAULT_HTTP: &str = "127.0.0.1:7452";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./pinion-data";

/// When the hub calls fdatasync, and so what an ACK promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every group of writes, before any ACK of that group
    /// leaves: an ACKed message survives a crash or power loss (as far as
    /// the disk honours flushes). The default.
    Always,
    /// ACK after write(2), fdatasync at most this often: an ACKed message
    /// survives a hub crash (it is in the OS page cache) but the last
    /// interval can be lost on power loss or kernel crash.
    Interval(Duration),
    /// ACK after write(2), fdatasync only at checkpoints and shutdown: the
    /// OS decides when data reaches the disk.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Invalid {
            key: "fsync",
            value: s.to_string(),
            expected: "always, never or interval:<milliseconds>",
        };
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(bad)?;
                let ms: u64 = ms.trim_end_matches("ms").parse().map_err(|_| bad())?;
                if ms == 0 || ms > MAX_DURATION.as_millis() as u64 {
                    return Err(bad());
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// How a core's fan-out hands a batch to its subscribers' sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FanoutSend {
    /// One non-blocking `writev` (or `send`) per subscriber per batch,
    /// through tokio.
    Writev,
    /// Every subscriber's `sendmsg` of a batch queued on the core's
    /// io_uring (`SINGLE_ISSUER | DEFER_TASKRUN`), up to 1,024 per
    /// `io_uring_enter`. The default: 0.69× the hub CPU per delivery of
    /// `writev` at 19,000 subscribers on this project's machine
    /// (docs/BENCHMARKS.md, "Batched sends through io_uring"). Falls back
    /// to `writev` on a core where io_uring cannot be set up (logged).
    #[default]
    IoUring,
}

impl FromStr for FanoutSend {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "writev" => Ok(FanoutSend::Writev),
            "io_uring" | "io-uring" | "uring" => Ok(FanoutSend::IoUring),
            _ => Err(ConfigError::Invalid {
                key: "fanout_send",
                value: s.to_string(),
                expected: "writev or io_uring",
            }),
        }
    }
}

impl std::fmt::Display for FanoutSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FanoutSend::Writev => "writev",
            FanoutSend::IoUring => "io_uring",
        })
    }
}

/// A configuration problem (the caller's fault).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("invalid {key} {value:?}: expected {expected}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What was given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// Everything the hub needs to start.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Holds `pinion.log`, `sessions.sqlite` and the lock file.
    pub data_dir: PathBuf,
    /// Publisher endpoints (REP). Empty: `tcp://127.0.0.1:7450` and
    /// `ipc://<data_dir>/hub.ipc`.
    pub listen: Vec<String>,
    /// See [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// Largest payload accepted; larger gets NACK TOO_LARGE.
    pub max_payload: usize,
    /// Bytes of requests being processed, all connections together. At the
    /// cap the hub stops reading requests until acks go out.
    pub max_inflight_bytes: usize,
    /// The same, per connection.
    pub max_inflight_bytes_per_conn: usize,
    /// Seqs remembered per client for the duplicate check.
    pub dedup_window: usize,
    /// How often sessions are checkpointed to SQLite.
    pub checkpoint_interval: Duration,
    /// The dedup horizon, in records behind the log head: window entries
    /// older than it are dropped at checkpoints (bounding restart replay),
    /// and a client with none left is forgotten (see
    /// [`crate::sessions`] for what that promises).
    pub dedup_horizon: u64,
    /// Sessions held at most: with more clients than this within the
    /// horizon, the oldest entries are dropped first, as if the horizon
    /// were shorter (memory: about 220 bytes per one-message session).
    pub max_sessions: usize,
    /// Cores (event loops) to use; 0: every CPU the process may run on.
    pub threads: usize,
    /// Pin core `i`'s thread to the `i`-th allowed CPU (default true: one
    /// hub per machine). Turn it off when several hubs share the CPUs (a
    /// local cluster, tests): every hub would pin its core 0 to the same
    /// CPU, and their cores 0 could then only take turns on it while
    /// another CPU idles.
    pub pin_threads: bool,
    /// Bytes of log kept pre-zeroed ahead of the write position (0: plain
    /// appends). Overwriting zeroed blocks makes fdatasync cheaper than
    /// growing the file (see `pinion_journal::JournalOptions`).
    pub preallocate: u64,
    /// Subscriber endpoints: SP PUB over `tcp://` (any NNG SUB socket can
    /// dial them). Default `tcp://127.0.0.1:7451`; an empty list turns
    /// them off.
    pub subscribe: Vec<String>,
    /// HTTP address (`host:port`) of the dashboard, `/metrics`,
    /// `/healthz`, `/pinion.js` and the WebSocket endpoints `/sub`, `/pub`
    /// and `/stats`. `None`: off.
    pub http: Option<String>,
    /// Bytes queued for one subscriber at most; past it the subscriber is
    /// disconnected (WebSocket: with the offset to resume from).
    pub max_queued_per_subscriber: usize,
    /// Origins (`scheme://host[:port]`, as browsers send them) whose pages
    /// may open the WebSocket routes, besides the hub's own origin. `"*"`
    /// accepts any (turns the check off). Requests without an `Origin`
    /// (CLI, pynng, native apps) are always served.
    pub allow_origins: Vec<String>,
    /// Host names (or `host:port`) the HTTP port answers to besides its
    /// bound address, `localhost` and the loopback addresses; anything else
    /// gets 421 (DNS rebinding). `"*"` accepts any.
    pub allow_hosts: Vec<String>,
    /// Connections open at once on one listening port (publisher,
    /// subscriber, HTTP); past it new ones are refused.
    pub max_connections: usize,
    /// The same per source address and port; 0: no cap.
    pub max_connections_per_source: usize,
    /// Connections per port still in their handshake (HTTP head not read,
    /// SP header not exchanged).
    pub max_handshakes: usize,
    /// The same per source address.
    pub max_handshakes_per_source: usize,
    /// Time a connection has for its whole HTTP head or SP header.
    pub handshake_timeout: Duration,
    /// Time an HTTP response (or one `/stats` frame) may take to be written.
    pub write_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets (`ZERO`: off). Probes
    /// follow every `idle / 6`, six of them, so a vanished peer is dropped
    /// after about twice this.
    pub tcp_keepalive: Duration,
    /// A WebSocket subscriber silent for this long is pinged; one silent
    /// for twice this is dropped.
    pub ws_ping_interval: Duration,
    /// Replays (subscribers catching up from the log) read at once; more
    /// wait their turn.
    pub max_replays: usize,
    /// Bytes of live batches queued for one core's fan-out; past it that
    /// core's subscribers are switched to catching up from the log.
    pub max_fanout_backlog: usize,
    /// How subscribers' sends are made (see [`FanoutSend`]).
    pub fanout_send: FanoutSend,
    /// Cluster mode (`[cluster]`): `None` is the single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Authentication and authorization (`[auth]`; off when `None`).
    pub auth: Option<crate::auth::AuthConfig>,
    /// TLS for `tls+tcp://` publisher endpoints (`[tls]`).
    pub tls: Option<TlsSettings>,
}

/// `[tls]`: the hub's certificate, and the CA its clients' certificates
/// must chain to.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM); `None`: in `cert`.
    pub key: Option<PathBuf>,
    /// CA for client certificates (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificates: `none`, `optional`, `required` (default:
    /// `required` with a CA, else `none`).
    pub client_auth: Option<pinion::AuthMode>,
}

impl TlsSettings {
    /// The pinion TLS configuration of the hub's listeners.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or holds no certificate or key.
    pub fn listener(&self) -> Result<pinion::TlsConfig, pinion::TlsConfigError> {
        let mut c = pinion::TlsConfig::new().own_cert_files(&self.cert, self.key.as_deref())?;
        if let Some(ca) = &self.ca {
            c = c.ca_file(ca)?;
        }
        let mode = self.client_auth.unwrap_or(if self.ca.is_some() {
            pinion::AuthMode::Required
        } else {
            pinion::AuthMode::None
        });
        Ok(c.auth_mode(mode))
    }
}

impl TlsSettings {
    /// The node links' settings (`tls+tcp://` Raft endpoints): mutual TLS,
    /// each node presenting this certificate and requiring its peers' to
    /// chain to `ca`. Returns (dialer, listener).
    ///
    /// # Errors
    ///
    /// No CA (mutual TLS needs one), or a file that cannot be used.
    pub fn node_links(&self) -> Result<(pinion::TlsConfig, pinion::TlsConfig), String> {
        let ca = self
            .ca
            .as_ref()
            .ok_or("tls+tcp:// node links are mutual TLS: give [tls] ca (--tls-ca)")?;
        let own = |c: pinion::TlsConfig| {
            c.own_cert_files(&self.cert, self.key.as_deref())
                .and_then(|c| c.ca_file(ca))
                .map(|c| c.auth_mode(pinion::AuthMode::Required))
                .map_err(|e| e.to_string())
        };
        Ok((
            own(pinion::TlsConfig::new())?,
            own(pinion::TlsConfig::new())?,
        ))
    }
}

/// Parses `none`, `optional`, `required`.
pub fn parse_auth_mode(v: &str) -> Option<pinion::AuthMode> {
    match v.trim().to_ascii_lowercase().as_str() {
        "none" => Some(pinion::AuthMode::None),
        "optional" => Some(pinion::AuthMode::Optional),
        "required" => Some(pinion::AuthMode::Required),
        _ => None,
    }
}

/// Longest duration a setting may hold (a day): longer ones overflow
/// timers or make no sense.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: Vec::new(),
            fsync: FsyncPolicy::Always,
            max_payload: 256,
            max_inflight_bytes: 64 << 20,
            max_inflight_bytes_per_conn: 1 << 20,
            dedup_window: 1024,
            checkpoint_interval: Duration::from_secs(1),
            dedup_horizon: 10_000_000,
            max_sessions: 1_000_000,
            threads: 0,
            pin_threads: true,
            preallocate: 64 << 20,
            subscribe: vec![DEFAULT_SUBSCRIBE.to_string()],
            http: Some(DEFAULT_HTTP.to_string()),
            max_queued_per_subscriber: 1 << 20,
            allow_origins: Vec::new(),
            allow_hosts: Vec::new(),
            max_connections: 16_384,
            max_connections_per_source: 1024,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            ws_ping_interval: Duration::from_secs(30),
            max_replays: 16,
            max_fanout_backlog: 64 << 20,
            fanout_send: FanoutSend::default(),
            cluster: None,
            auth: None,
            tls: None,
        }
    }
}

/// A millisecond setting as a duration, refusing values past
/// [`MAX_DURATION`] (which would overflow timers).
fn millis(key: &'static str, v: u64) -> Result<Duration, ConfigError> {
    let d = Duration::from_millis(v);
    if d > MAX_DURATION {
        return Err(ConfigError::Invalid {
            key,
            value: v.to_string(),
            expected: "at most 86400000 milliseconds (a day)",
        });
    }
    Ok(d)
}

/// `true`/`false` and the usual spellings (`1`/`0`, `yes`/`no`, `on`/`off`).
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The TOML file's schema (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<Vec<String>>,
    fsync: Option<String>,
    max_payload: Option<usize>,
    max_inflight_bytes: Option<usize>,
    max_inflight_bytes_per_conn: Option<usize>,
    dedup_window: Option<usize>,
    checkpoint_interval_ms: Option<u64>,
    dedup_horizon: Option<u64>,
    max_sessions: Option<usize>,
    threads: Option<usize>,
    pin_threads: Option<bool>,
    preallocate: Option<u64>,
    subscribe: Option<Vec<String>>,
    http: Option<String>,
    max_queued_per_subscriber: Option<usize>,
    allow_origin: Option<Vec<String>>,
    allow_host: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    max_handshakes: Option<usize>,
    max_handshakes_per_source: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    tcp_keepalive_ms: Option<u64>,
    ws_ping_interval_ms: Option<u64>,
    max_replays: Option<usize>,
    max_fanout_backlog: Option<usize>,
    fanout_send: Option<String>,
    cluster: Option<FileCluster>,
    auth: Option<FileAuth>,
    tls: Option<FileTls>,
}

/// `[tls]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_auth: Option<String>,
}

/// `[auth]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    /// Key files tokens are checked with.
    keys: Vec<PathBuf>,
    leeway_secs: Option<u64>,
    /// Client certificates mapped to permissions.
    #[serde(default)]
    cert: Vec<FileCertRule>,
}

/// `[[auth.cert]]`: a client certificate's name and what it may do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertRule {
    /// Matched against the certificate's common name and each of its
    /// subject alternative names.
    name: String,
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
    #[serde(default)]
    deny_pub: Vec<String>,
    #[serde(default, rename = "sub")]
    subscribe: Vec<String>,
    #[serde(default)]
    deny_sub: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// `[cluster]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    node_id: u64,
    raft: String,
    /// `ID=RAFT_URL[,PUBLISH_URL[,SUBSCRIBE_URL[,HTTP_ADDR]]]` per voter.
    peers: Vec<String>,
    write_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    ready_max_lag: Option<u64>,
    ready_stale_ms: Option<u64>,
    rebuild_damaged_log: Option<bool>,
}

impl HubConfig {
    /// The endpoints to listen on (defaults filled in).
    pub fn endpoints(&self) -> Vec<String> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        vec![
            DEFAULT_TCP.to_string(),
            format!("ipc://{}", self.data_dir.join("hub.ipc").display()),
        ]
    }

    /// Applies a TOML config file.
    pub fn apply_file(&mut self, path: &std::path::Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.apply_toml(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })
    }

    /// Applies TOML text (errors as the parser's message).
    pub fn apply_toml(&mut self, text: &str) -> Result<(), String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(a) = &f.auth {
            if a.keys.is_empty() {
                return Err(
                    "[auth] keys: give at least one key file (see `pinion token keygen`)".into(),
                );
            }
            self.auth = Some(crate::auth::AuthConfig {
                keys: a.keys.clone(),
                leeway_secs: a.leeway_secs.unwrap_or(0),
                certs: a
                    .cert
                    .iter()
                    .map(|c| crate::auth::CertRule {
                        name: c.name.clone(),
                        permissions: pinion_auth::Permissions {
                            publish: pinion_auth::Rules::allow(c.publish.clone())
                                .deny(c.deny_pub.clone()),
                            subscribe: pinion_auth::Rules::allow(c.subscribe.clone())
                                .deny(c.deny_sub.clone()),
                            admin: c.admin,
                        },
                    })
                    .collect(),
            });
        }
        if let Some(t) = &f.tls {
            let client_auth = match &t.client_auth {
                None => None,
                Some(v) => Some(parse_auth_mode(v).ok_or_else(|| {
                    format!("[tls] client_auth = {v:?}: expected none, optional or required")
                })?),
            };
            self.tls = Some(TlsSettings {
                cert: t.cert.clone(),
                key: t.key.clone(),
                ca: t.ca.clone(),
                client_auth,
            });
        }
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.listen {
            self.listen = v;
        }
        if let Some(v) = f.fsync {
            self.fsync = v.parse().map_err(|e: ConfigError| e.to_string())?;
        }
        if let Some(v) = f.max_payload {
            self.max_payload = v;
        }
        if let Some(v) = f.max_inflight_bytes {
            self.max_inflight_bytes = v;
        }
        if let Some(v) = f.max_inflight_bytes_per_conn {
            self.max_inflight_bytes_per_conn = v;
        }
        if let Some(v) = f.dedup_window {
            self.dedup_window = v;
        }
        if let Some(v) = f.dedup_horizon {
            self.dedup_horizon = v;
        }
        if let Some(v) = f.max_sessions {
            self.max_sessions = v;
        }
        if let Some(v) = f.threads {
            self.threads = v;
        }
        if let Some(v) = f.pin_threads {
            self.pin_threads = v;
        }
        if let Some(v) = f.preallocate {
            self.preallocate = v;
        }
        if let Some(v) = f.subscribe {
            self.subscribe = v;
        }
        if let Some(v) = f.http {
            self.http = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = f.max_queued_per_subscriber {
            self.max_queued_per_subscriber = v;
        }
        if let Some(v) = f.allow_origin {
            self.allow_origins = v;
        }
        if let Some(v) = f.allow_host {
            self.allow_hosts = v;
        }
        if let Some(v) = f.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = f.max_connections_per_source {
            self.max_connections_per_source = v;
        }
        if let Some(v) = f.max_handshakes {
            self.max_handshakes = v;
        }
        if let Some(v) = f.max_handshakes_per_source {
            self.max_handshakes_per_source = v;
        }
        let ms = |key: &'static str, v: u64| millis(key, v).map_err(|e| e.to_string());
        if let Some(v) = f.checkpoint_interval_ms {
            self.checkpoint_interval = ms("checkpoint_interval_ms", v)?;
        }
        if let Some(v) = f.handshake_timeout_ms {
            self.handshake_timeout = ms("handshake_timeout_ms", v)?;
        }
        if let Some(v) = f.write_timeout_ms {
            self.write_timeout = ms("write_timeout_ms", v)?;
        }
        if let Some(v) = f.tcp_keepalive_ms {
            self.tcp_keepalive = ms("tcp_keepalive_ms", v)?;
        }
        if let Some(v) = f.ws_ping_interval_ms {
            self.ws_ping_interval = ms("ws_ping_interval_ms", v)?;
        }
        if let Some(v) = f.max_replays {
            self.max_replays = v;
        }
        if let Some(v) = f.max_fanout_backlog {
            self.max_fanout_backlog = v;
        }
        if let Some(v) = f.fanout_send {
            self.fanout_send = v.parse().map_err(|e: ConfigError| e.to_string())?;
        }
        if let Some(c) = f.cluster {
            let mut peers = std::collections::BTreeMap::new();
            for p in &c.peers {
                let (id, node) = crate::cluster::parse_peer(p)
                    .map_err(|e| format!("cluster.peers {p:?}: {e}"))?;
                peers.insert(id, node);
            }
            let mut cc = crate::cluster::ClusterConfig::new(c.node_id, c.raft, peers);
            if let Some(v) = c.write_timeout_ms {
                cc.write_timeout = ms("cluster.write_timeout_ms", v)?;
            }
            if let Some(v) = c.heartbeat_ms {
                cc.heartbeat = ms("cluster.heartbeat_ms", v)?;
            }
            if let Some(v) = c.election_timeout_min_ms {
                cc.election_timeout.0 = ms("cluster.election_timeout_min_ms", v)?;
            }
            if let Some(v) = c.election_timeout_max_ms {
                cc.election_timeout.1 = ms("cluster.election_timeout_max_ms", v)?;
            }
            if let Some(v) = c.ready_max_lag {
                cc.ready_max_lag = v;
            }
            if let Some(v) = c.ready_stale_ms {
                cc.ready_stale = ms("cluster.ready_stale_ms", v)?;
            }
            cc.rebuild_damaged_log = c.rebuild_damaged_log.unwrap_or(false);
            self.cluster = Some(cc);
        }
        Ok(())
    }

    /// Applies `PINION_DATA_DIR`, `PINION_LISTEN`, `PINION_SUBSCRIBE`,
    /// `PINION_ALLOW_ORIGIN` and `PINION_ALLOW_HOST` (comma-separated), `PINION_HTTP` (empty: off), `PINION_FSYNC`,
    /// `PINION_MAX_PAYLOAD`, `PINION_FANOUT_SEND` and `PINION_PIN` from `get` (normally `std::env::var`).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PINION_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("PINION_LISTEN") {
            self.listen = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("PINION_SUBSCRIBE") {
            self.subscribe = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("PINION_HTTP") {
            self.http = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("PINION_ALLOW_ORIGIN") {
            self.allow_origins = split_list(&v);
        }
        if let Some(v) = get("PINION_ALLOW_HOST") {
            self.allow_hosts = split_list(&v);
        }
        if let Some(v) = get("PINION_FSYNC") {
            self.fsync = v.parse()?;
        }
        if let Some(v) = get("PINION_FANOUT_SEND") {
            self.fanout_send = v.parse()?;
        }
        if let Some(v) = get("PINION_PIN") {
            self.pin_threads = parse_bool(&v).ok_or(ConfigError::Invalid {
                key: "PINION_PIN",
                value: v.clone(),
                expected: "true/false (1/0, yes/no, on/off)",
            })?;
        }
        if let Some(v) = get("PINION_MAX_PAYLOAD") {
            self.max_payload = v.parse().map_err(|_| ConfigError::Invalid {
                key: "PINION_MAX_PAYLOAD",
                value: v.clone(),
                expected: "a number of bytes",
            })?;
        }
        Ok(())
    }

    /// Checks the values together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |key, value: String, expected| {
            Err(ConfigError::Invalid {
                key,
                value,
                expected,
            })
        };
        if self.max_payload > (16 << 20) {
            return inv(
                "max_payload",
                self.max_payload.to_string(),
                "at most 16 MiB",
            );
        }
        if self.max_inflight_bytes_per_conn == 0
            || self.max_inflight_bytes < self.max_inflight_bytes_per_conn
        {
            return inv(
                "max_inflight_bytes",
                self.max_inflight_bytes.to_string(),
                "> 0 and at least max_inflight_bytes_per_conn",
            );
        }
        for u in self.endpoints() {
            if u.starts_with("tls+tcp://") && self.tls.is_none() {
                return inv(
                    "listen",
                    u,
                    "a [tls] cert (--tls-cert) for a tls+tcp:// endpoint",
                );
            }
        }
        for u in &self.subscribe {
            if !u.starts_with("tcp://") {
                return inv("subscribe", u.clone(), "tcp://host:port");
            }
        }
        if self.max_queued_per_subscriber < 64 << 10 {
            return inv(
                "max_queued_per_subscriber",
                self.max_queued_per_subscriber.to_string(),
                "at least 64 KiB",
            );
        }
        if self.dedup_window == 0 {
            return inv("dedup_window", "0".into(), "at least 1");
        }
        if self.dedup_window > 1 << 20 {
            return inv(
                "dedup_window",
                self.dedup_window.to_string(),
                "at most 1048576",
            );
        }
        let durations = [
            ("checkpoint_interval_ms", self.checkpoint_interval, true),
            ("handshake_timeout_ms", self.handshake_timeout, true),
            ("write_timeout_ms", self.write_timeout, true),
            ("tcp_keepalive_ms", self.tcp_keepalive, false),
            ("ws_ping_interval_ms", self.ws_ping_interval, true),
        ];
        for (key, d, nonzero) in durations {
            if d > MAX_DURATION || (nonzero && d.is_zero()) {
                return inv(
                    key,
                    d.as_millis().to_string(),
                    if nonzero {
                        "between 1 and 86400000 milliseconds"
                    } else {
                        "at most 86400000 milliseconds (0: off)"
                    },
                );
            }
        }
        if let FsyncPolicy::Interval(d) = self.fsync {
            if d > MAX_DURATION {
                return inv(
                    "fsync",
                    self.fsync.to_string(),
                    "an interval of at most 86400000 milliseconds",
                );
            }
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_source", self.max_handshakes_per_source),
            ("max_replays", self.max_replays),
            ("max_sessions", self.max_sessions),
        ] {
            if v == 0 {
                return inv(key, "0".into(), "at least 1");
            }
        }
        if let Some(c) = &self.cluster {
            if let Err(why) = c.validate() {
                return inv("cluster", format!("node {}", c.node_id), why);
            }
            if self.fsync != FsyncPolicy::Always {
                return inv(
                    "fsync",
                    self.fsync.to_string(),
                    "\"always\" in a cluster (an ACK means fdatasync'ed on a majority)",
                );
            }
        }
        if self.max_fanout_backlog < 1 << 20 {
            return inv(
                "max_fanout_backlog",
                self.max_fanout_backlog.to_string(),
                "at least 1 MiB",
            );
        }
        // Parsed as the front door parses them (an entry it could not read
        // would be ignored there: refused here instead).
        for o in &self.allow_origins {
            if o != "*" && crate::origin::parse_origin(o).is_none() {
                return inv(
                    "allow_origin",
                    o.clone(),
                    "an origin such as https://app.example.com, or *",
                );
            }
        }
        for h in &self.allow_hosts {
            if h != "*" && crate::origin::parse_authority(h).is_none() {
                return inv(
                    "allow_host",
                    h.clone(),
                    "a host name or address, with or without :port, or *",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_threads_from_toml_and_env() {
        let mut c = HubConfig::default();
        assert!(c.pin_threads, "one hub per machine pins by default");
        c.apply_toml("pin_threads = false").unwrap();
        assert!(!c.pin_threads);
        c.apply_env(|k| (k == "PINION_PIN").then(|| "yes".to_string()))
            .unwrap();
        assert!(c.pin_threads);
        c.apply_env(|k| (k == "PINION_PIN").then(|| "0".to_string()))
            .unwrap();
        assert!(!c.pin_threads);
        let e = c
            .apply_env(|k| (k == "PINION_PIN").then(|| "maybe".to_string()))
            .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "PINION_PIN",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn layers_override_in_order() {
        let mut c = HubConfig::default();
        assert_eq!(c.endpoints()[0], DEFAULT_TCP);
        assert!(c.endpoints()[1].starts_with("ipc://"));
        c.apply_toml("fsync = \"interval:5\"\nmax_payload = 512\nlisten = [\"tcp://127.0.0.1:1\"]")
            .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(5)));
        assert_eq!(c.endpoints(), vec!["tcp://127.0.0.1:1".to_string()]);
        c.apply_env(|k| (k == "PINION_FSYNC").then(|| "never".to_string()))
            .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.max_payload, 512);
        assert!(c.apply_toml("bogus = 1").unwrap_err().contains("bogus"));
        assert!("interval:x".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        c.validate().unwrap();
        assert_eq!(c.fanout_send, FanoutSend::IoUring);
        c.apply_toml("fanout_send = \"writev\"").unwrap();
        assert_eq!(c.fanout_send, FanoutSend::Writev);
        c.apply_env(|k| (k == "PINION_FANOUT_SEND").then(|| "io_uring".to_string()))
            .unwrap();
        assert_eq!(c.fanout_send, FanoutSend::IoUring);
        assert!(c
            .apply_toml("fanout_send = \"sendfile\"")
            .unwrap_err()
            .contains("fanout_send"));
    }

    #[test]
    fn operator_mistakes_are_refused_with_the_key() {
        let key_of = |toml: &str| -> String {
            let mut c = HubConfig::default();
            match c.apply_toml(toml) {
                Err(e) => e,
                Ok(()) => match c.validate() {
                    Err(ConfigError::Invalid { key, .. }) => key.to_string(),
                    Err(e) => e.to_string(),
                    Ok(()) => "accepted".to_string(),
                },
            }
        };
        assert_eq!(
            key_of("checkpoint_interval_ms = 0"),
            "checkpoint_interval_ms"
        );
        assert!(key_of("checkpoint_interval_ms = 18446744073709551615")
            .contains("checkpoint_interval_ms"));
        assert!(key_of("write_timeout_ms = 86400001").contains("write_timeout_ms"));
        assert_eq!(key_of("handshake_timeout_ms = 0"), "handshake_timeout_ms");
        assert_eq!(key_of("ws_ping_interval_ms = 0"), "ws_ping_interval_ms");
        assert_eq!(key_of("tcp_keepalive_ms = 0"), "accepted");
        assert!(key_of("fsync = \"interval:18446744073709551615\"").contains("fsync"));
        assert!(key_of("fsync = \"interval:86400001\"").contains("fsync"));
        assert_eq!(key_of("max_payload = 16777217"), "max_payload");
        assert_eq!(key_of("max_payload = 16777216"), "accepted");
        assert_eq!(key_of("max_connections = 0"), "max_connections");
        assert_eq!(key_of("max_replays = 0"), "max_replays");
        assert_eq!(key_of("max_sessions = 0"), "max_sessions");
        assert_eq!(key_of("max_fanout_backlog = 1024"), "max_fanout_backlog");
        assert_eq!(key_of("dedup_window = 0"), "dedup_window");
        assert_eq!(key_of("allow_origin = [\"evil.example\"]"), "allow_origin");
        assert_eq!(key_of("allow_origin = [\"http://x/path\"]"), "allow_origin");
        assert_eq!(
            key_of("allow_host = [\"hub.example.com\", \"[::1]:8080\", \"*\"]"),
            "accepted"
        );
        assert_eq!(
            key_of("allow_host = [\"http://hub.example.com\"]"),
            "allow_host"
        );
        assert_eq!(
            key_of("allow_origin = [\"https://app.example\", \"*\"]"),
            "accepted"
        );
        assert!(key_of("max_connections = -1").contains("max_connections"));
    }
}
