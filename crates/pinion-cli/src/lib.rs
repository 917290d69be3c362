//! The `pinion` command: argument types and command implementations.
//! `main.rs` only calls [`main`].
//!
//! Besides `pinion demo`, every Scalability Protocols pattern has a
//! subcommand that works like `nngcat` (NNG) and `nanocat` (nanomsg), and
//! talks to them on the wire:
//!
//! | subcommand | does |
//! |---|---|
//! | `req` | sends `--data` (`--count` times, `--interval` apart), prints each reply |
//! | `rep` | prints each request; answers it with `--data` if given |
//! | `pub` | sends `--data` to every subscriber |
//! | `sub` | prints messages matching a `--subscribe` prefix (default: all) |
//! | `push` | sends `--data` to one puller (round robin) |
//! | `pull` | prints messages |
//! | `surveyor` | sends `--data` as a survey, prints responses until the survey ends |
//! | `respondent` | prints each survey; answers it with `--data` if given |
//! | `bus` | sends `--data` to every bus peer and prints what arrives |
//! | `pair0`, `pair1` | sends `--data` to the one peer and prints what arrives |
//!
//! Each takes one or more `--dial URL` / `--listen URL` (`tcp://HOST:PORT`,
//! `ipc:///PATH`, `inproc://NAME`; listeners are set up before dialers, and
//! a dial waits for its first connection, failing if it is refused).
//! Received messages are printed with `--format` (default `quoted`; see
//! [`format::Format`]), one per line except `raw` and `msgpack`.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | usage error: unknown, missing or contradictory flags, unreadable `--file` |
//! | 2 | a URL is invalid (`pinion::Error::InvalidUrl`) |
//! | 3 | a dial was refused: nothing listens there (`io_kind() == ConnectionRefused`; for `ipc://`, also `NotFound`: no socket file) |
//! | 4 | a listen failed: the address is in use (`io_kind() == AddrInUse`) |
//! | 5 | timed out (`Error::TimedOut`): `--recv-timeout` expired before any message (or before `--count` messages) arrived, a `req` got no reply, a `surveyor` got no response, or `--send-timeout` expired |
//! | 6 | another I/O error (permission denied, connection reset, ...) |
//! | 7 | the peer broke the protocol or speaks an incompatible one (`Error::Peer`) |
//! | 8 | any other failure (an internal error) |
//! | 9 | `pinion publish`: the hub NACKed at least one message |
//! | 10 | `pinion log verify`: the log is corrupt or has a torn tail |
//!
//! Errors are printed on stderr as one line starting with `pinion: `, naming
//! the URL and what to do. `--help` and `--version` exit with 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use pinion::{blocking::Socket, Protocol};

pub mod cluster;
mod commands;
pub mod failure;
pub mod format;
pub mod hub;
pub mod subscribe;
pub mod token;

pub use failure::Failure;
pub use format::Format;

/// Compatible pairs, for messages.
pub(crate) const PEERS: &str =
    "req-rep, pub-sub, push-pull, surveyor-respondent, bus-bus, pair0-pair0, pair1-pair1";

/// Exit codes (see the crate documentation).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Usage error: bad, missing or contradictory flags, unreadable `--file`.
    pub const USAGE: i32 = 1;
    /// A URL is invalid.
    pub const BAD_URL: i32 = 2;
    /// A dial was refused (nothing listening; for `ipc://` also a missing
    /// socket file).
    pub const CONNECTION_REFUSED: i32 = 3;
    /// A listen failed because the address is in use.
    pub const ADDRESS_IN_USE: i32 = 4;
    /// A receive or send timed out before the command's work was done.
    pub const TIMED_OUT: i32 = 5;
    /// Another I/O error.
    pub const IO: i32 = 6;
    /// The peer broke the protocol or speaks an incompatible one.
    pub const PEER: i32 = 7;
    /// Any other failure.
    pub const FAILED: i32 = 8;
    /// `pinion publish`: the hub NACKed at least one message.
    pub const NACKED: i32 = 9;
    /// `pinion log verify`: the log is corrupt (or has a torn tail).
    pub const CORRUPT: i32 = 10;
}

macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  usage error (bad, missing or contradictory flags; unreadable --file)
  2  invalid URL
  3  connection refused (nothing listens at a --dial URL; for ipc://, no
     socket file)
  4  address in use (a --listen URL is taken)
  5  timed out (--recv-timeout expired before any message, or before --count
     messages, arrived; req got no reply; surveyor got no response;
     --send-timeout expired)
  6  other I/O error
  7  the peer broke the protocol or is not a compatible pattern
  8  other failure
  9  publish: at least one message was NACKed
  10 log verify: the log is corrupt or has a torn tail"
    };
}

macro_rules! subcommand_help {
    ($examples:literal) => {
        concat!(
            "Examples:\n",
            $examples,
            "\n\nURLs: tcp://HOST:PORT, ipc:///PATH, inproc://NAME. Listeners start before \
             dialers; a dial waits for its first connection and fails if refused.\n\n",
            exit_codes_help!()
        )
    };
}

/// pinion: Scalability Protocols sockets, wire-compatible with NNG and nanomsg.
///
/// One subcommand per pattern, like nngcat and nanocat (and talking to them):
/// each opens a socket, listens and dials, then sends --data and/or prints
/// what it receives.
#[derive(Debug, Parser)]
#[command(
    name = "pinion",
    version,
    about,
    after_help = concat!(
        "Examples:
  pinion rep --listen tcp://127.0.0.1:5555 --data pong
  pinion req --dial tcp://127.0.0.1:5555 --data ping --format ascii
  pinion pull --listen ipc:///tmp/jobs --count 3
  pinion push --dial ipc:///tmp/jobs --data job --count 3 --interval 0.5
  pinion sub --dial tcp://127.0.0.1:5556 --subscribe weather.
  pinion pub --listen tcp://127.0.0.1:5556 --data weather.sunny --interval 1

",
        exit_codes_help!()
    )
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the socket listens and dials (at least one).
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct Endpoints {
    /// Connect to URL (repeatable). Waits for the first connection; reconnects
    /// in the background if it is lost.
    #[arg(long, value_name = "URL", visible_alias = "connect")]
    pub dial: Vec<String>,
    /// Accept connections at URL (repeatable; tcp port 0 picks a free port,
    /// shown with --verbose).
    #[arg(long, value_name = "URL", visible_alias = "bind")]
    pub listen: Vec<String>,
}

/// The message to send, required.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct RequiredData {
    /// The message to send.
    #[arg(long, short = 'D', value_name = "TEXT")]
    pub data: Option<String>,
    /// Send the contents of PATH instead (`-` reads standard input).
    #[arg(long, short = 'F', value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// The message to send, optional.
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub struct OptionalData {
    /// The message to send (without it, only receive).
    #[arg(long, short = 'D', value_name = "TEXT")]
    pub data: Option<String>,
    /// Send the contents of PATH instead (`-` reads standard input).
    #[arg(long, short = 'F', value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// Options every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print "listening on URL" (with the real port) and "connected to URL"
    /// on stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
}

/// TLS for `tls+tcp://` and `wss://` endpoints (nngcat's flag names;
/// ignored for other URLs).
///
/// Safer defaults than nngcat's: a dialer always verifies the server's
/// certificate and name, against `--cacert` or else the system's trust
/// anchors, unless `-k` is given (nngcat's dialer verifies nothing unless
/// it has a certificate of its own); a listener given `--cacert` requires
/// client certificates signed by it (mutual TLS in one flag) unless
/// `--auth-mode` says otherwise.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "TLS (tls+tcp://, wss://)")]
pub struct TlsArgs {
    /// Trust anchors (PEM): a dialer checks the server's certificate
    /// against them; a listener requires client certificates signed by
    /// them (see --auth-mode).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// This end's certificate chain (PEM); a listener needs one. Holds the
    /// private key too unless --key is given.
    #[arg(long, short = 'E', value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key for --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Dialers: do not verify the server's certificate (encrypted, not
    /// authenticated).
    #[arg(long, short = 'k')]
    pub insecure: bool,
    /// Listeners: whether clients must present a certificate (default:
    /// required with --cacert, else none).
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth_mode: Option<AuthModeArg>,
    /// Dialers: the name the server's certificate must carry (default: the
    /// URL's host).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// `--auth-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthModeArg {
    /// Ask for no client certificate.
    None,
    /// Verify a client certificate if one is sent.
    Optional,
    /// Require a client certificate that verifies.
    Required,
}

impl From<AuthModeArg> for pinion::AuthMode {
    fn from(a: AuthModeArg) -> Self {
        match a {
            AuthModeArg::None => pinion::AuthMode::None,
            AuthModeArg::Optional => pinion::AuthMode::Optional,
            AuthModeArg::Required => pinion::AuthMode::Required,
        }
    }
}

impl TlsArgs {
    fn base(&self) -> Result<pinion::TlsConfig, pinion::TlsConfigError> {
        let mut c = pinion::TlsConfig::new();
        if let Some(ca) = &self.cacert {
            c = c.ca_file(ca)?;
        }
        if let Some(cert) = &self.cert {
            c = c.own_cert_files(cert, self.key.as_deref())?;
        }
        Ok(c)
    }

    /// The settings of this command's TLS listeners.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or holds no certificate or key.
    pub fn listener(&self) -> Result<pinion::TlsConfig, pinion::TlsConfigError> {
        let mode = match self.auth_mode {
            Some(m) => m.into(),
            None if self.cacert.is_some() => pinion::AuthMode::Required,
            None => pinion::AuthMode::None,
        };
        Ok(self.base()?.auth_mode(mode))
    }

    /// The settings of this command's TLS dialers.
    ///
    /// # Errors
    ///
    /// As [`TlsArgs::listener`].
    pub fn dialer(&self) -> Result<pinion::TlsConfig, pinion::TlsConfigError> {
        let mut c = self
            .base()?
            .auth_mode(pinion::AuthMode::Required)
            .insecure(self.insecure);
        if let Some(n) = &self.server_name {
            c = c.server_name(n.clone());
        }
        Ok(c)
    }
}

/// How received messages are printed and limited.
#[derive(Debug, Clone, Args)]
pub struct Printing {
    /// How to print received messages (as nngcat does; ascii also ends each
    /// message with a newline).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "quoted")]
    pub format: Format,
    /// Largest message accepted from a peer, in bytes (0: no limit). A peer
    /// sending more is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub recv_maxsz: u64,
}

/// `push`, `pub`: send only.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub endpoints: Endpoints,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub data: RequiredData,
    /// Messages to send (default 1, or unlimited with --interval).
    #[arg(long, short = 'C', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds from one send to the next (fractions allowed).
    #[arg(long, short = 'i', value_name = "SECS", value_parser = parse_secs)]
    pub interval: Option<Duration>,
    /// Seconds to wait before the first send (lets peers connect first).
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_secs)]
    pub delay: Option<Duration>,
    /// Give up (exit 5) when a message waits longer than SECS to be sent
    /// (push: for a puller to take it; without this, push waits forever).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub send_timeout: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `pull`: receive only.
#[derive(Debug, Clone, Args)]
pub struct RecvArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub endpoints: Endpoints,
    /// Exit after N messages (default: run until --recv-timeout, or forever).
    #[arg(long, short = 'C', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop when no message arrives for SECS: exit 0 if at least one (and
    /// --count, if given) arrived, else exit 5.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub recv_timeout: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub printing: Printing,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `sub`: subscribe and receive.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Receive messages starting with TOPIC (repeatable; default: everything,
    /// as nngcat and nanocat do).
    #[arg(long, value_name = "TOPIC")]
    pub subscribe: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub recv: RecvArgs,
}

/// `req`, `surveyor`: send, then print the answers.
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub endpoints: Endpoints,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub data: RequiredData,
    /// How many times to ask (default 1, or unlimited with --interval).
    #[arg(long, short = 'C', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds from one request/survey to the next (fractions allowed).
    #[arg(long, short = 'i', value_name = "SECS", value_parser = parse_secs)]
    pub interval: Option<Duration>,
    /// Seconds to wait before the first send.
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_secs)]
    pub delay: Option<Duration>,
    /// Give up (exit 5) when no answer arrives within SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub recv_timeout: Option<Duration>,
    /// Give up (exit 5) when a send waits longer than SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub send_timeout: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub printing: Printing,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `surveyor`: ask, and collect responses for the survey time.
#[derive(Debug, Clone, Args)]
pub struct SurveyArgs {
    /// How long each survey collects responses, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "1")]
    pub survey_time: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ask: AskArgs,
}

/// `rep`, `respondent`: print what is asked, answer with --data.
#[derive(Debug, Clone, Args)]
pub struct AnswerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub endpoints: Endpoints,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub data: OptionalData,
    /// Exit after N requests/surveys (default: run until --recv-timeout, or
    /// forever).
    #[arg(long, short = 'C', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop when nothing arrives for SECS: exit 0 if at least one (and
    /// --count, if given) arrived, else exit 5.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub recv_timeout: Option<Duration>,
    /// Give up (exit 5) when an answer waits longer than SECS to be sent.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub send_timeout: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub printing: Printing,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `pair0`, `pair1`, `bus`: send and print.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub endpoints: Endpoints,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub data: OptionalData,
    /// With --data: messages to send (default 1, or unlimited with
    /// --interval). Without: exit after receiving N messages.
    #[arg(long, short = 'C', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds from one send to the next (needs --data or --file); after the
    /// last send, receive for one more interval, then exit.
    #[arg(long, short = 'i', value_name = "SECS", value_parser = parse_secs, requires = "OptionalData")]
    pub interval: Option<Duration>,
    /// Seconds to wait before the first send.
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_secs, requires = "OptionalData")]
    pub delay: Option<Duration>,
    /// Stop when nothing arrives for SECS. Without --data: exit 0 if at least
    /// one (and --count, if given) message arrived, else exit 5. With
    /// --data: once the peer took every message, exit 0 (without this or
    /// --interval, keep printing forever, as nngcat does).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub recv_timeout: Option<Duration>,
    /// Give up (exit 5) when a message waits longer than SECS to be sent
    /// (pair: for the peer to take it; without this, wait forever; bus never
    /// waits: messages with no peer are dropped).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub send_timeout: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub printing: Printing,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Two sockets talking: a REP server and a REQ client over TCP, then
    /// PUSH/PULL, printing each exchange and the round-trip times.
    ///
    /// Example: `pinion demo --count 5`
    Demo {
        /// Requests to make.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Address the REP socket listens on (port 0: any free port).
        #[arg(long, default_value = "tcp://127.0.0.1:0")]
        url: String,
    },
    /// The hub: logs every published message durably to one file and
    /// answers ACK or NACK (Ctrl-C or SIGTERM stops it gracefully).
    #[command(after_help = "Examples:
  pinion serve
  pinion serve --data-dir /var/lib/pinion --listen tcp://0.0.0.0:7450 --fsync interval:5
  PINION_FSYNC=never pinion serve --config pinion.toml")]
    Serve(hub::ServeArgs),
    /// Publish messages to a hub; prints one ack or nack line per message.
    #[command(after_help = "Examples:
  pinion publish --topic orders --data hello --count 10
  seq 1 100 | pinion publish --url ipc://./pinion-data/hub.ipc --topic numbers")]
    Publish(hub::PublishArgs),
    /// Read a hub's messages (a cluster's: any node) over WebSocket, one
    /// JSON line each; after a disconnect, resume from the next offset on
    /// the next --http node, with no gap and no duplicate.
    #[command(after_help = subcommand_help!(
        "  pinion subscribe --topic orders --from 0
  pinion subscribe --http 127.0.0.1:7452 --http 127.0.0.2:7452 --http 127.0.0.3:7452"
    ))]
    Subscribe(subscribe::SubscribeArgs),
    /// Inspect a hub log file: cat, verify, stat.
    #[command(subcommand)]
    Log(hub::LogCommand),
    /// Tokens for a hub with authentication on: keygen, issue, verify.
    #[command(
        subcommand,
        after_help = "Examples:
  pinion token keygen --out hub.key                 # hub.key + hub.key.pub
  pinion token issue --key hub.key --pub orders. --sub orders. --ttl 1h
  pinion token verify --key hub.key.pub eyJ0eXAi..."
    )]
    Token(token::TokenCommand),
    /// Benchmarks (publish: the hub against Redis, NATS and the disk).
    #[command(subcommand)]
    Bench(hub::BenchCommand),
    /// A cluster of hubs: start one locally, show a node's view.
    #[command(
        subcommand,
        after_help = "Examples:
  pinion cluster local --nodes 3 --data-dir ./pinion-cluster
  pinion cluster status --http 127.0.0.2:7452"
    )]
    Cluster(cluster::ClusterCommand),
    /// REQ: send --data as a request, print the reply (repeat with --count,
    /// --interval).
    #[command(after_help = subcommand_help!(
        "  pinion req --dial tcp://127.0.0.1:5555 --data ping --format ascii
  pinion req --dial tcp://127.0.0.1:5555 --data ping --count 10 --interval 0.5 --recv-timeout 2"
    ))]
    Req(AskArgs),
    /// REP: print each request; reply with --data if given (without it, only
    /// print).
    #[command(after_help = subcommand_help!(
        "  pinion rep --listen tcp://127.0.0.1:5555 --data pong
  pinion rep --listen ipc:///tmp/rep.sock --data pong --count 1 --format hex"
    ))]
    Rep(AnswerArgs),
    /// PUB: send --data to every subscriber (a subscriber that is not
    /// connected yet misses it: use --delay or --interval).
    #[command(after_help = subcommand_help!(
        "  pinion pub --listen tcp://127.0.0.1:5556 --data weather.sunny --interval 1
  pinion pub --dial tcp://127.0.0.1:5556 --data weather.rain"
    ))]
    Pub(SendArgs),
    /// SUB: print the messages that start with a --subscribe topic (default:
    /// all).
    #[command(after_help = subcommand_help!(
        "  pinion sub --dial tcp://127.0.0.1:5556 --subscribe weather. --format ascii
  pinion sub --listen tcp://127.0.0.1:5556 --count 1 --recv-timeout 10"
    ))]
    Sub(SubArgs),
    /// PUSH: send --data to one puller at a time (waits while none can take
    /// it).
    #[command(after_help = subcommand_help!(
        "  pinion push --dial tcp://127.0.0.1:5557 --data job
  pinion push --listen tcp://127.0.0.1:5557 --file job.bin --count 100"
    ))]
    Push(SendArgs),
    /// PULL: print the messages pushed to this socket.
    #[command(after_help = subcommand_help!(
        "  pinion pull --listen tcp://127.0.0.1:5557 --format ascii
  pinion pull --dial tcp://127.0.0.1:5557 --count 100 --format raw > jobs.bin"
    ))]
    Pull(RecvArgs),
    /// SURVEYOR: send --data as a survey, print the responses until the survey
    /// time ends (repeat with --count, --interval).
    #[command(after_help = subcommand_help!(
        "  pinion surveyor --listen tcp://127.0.0.1:5558 --data who? --survey-time 2
  pinion surveyor --dial tcp://127.0.0.1:5558 --data ping --count 3 --interval 5"
    ))]
    Surveyor(SurveyArgs),
    /// RESPONDENT: print each survey; answer it with --data if given.
    #[command(after_help = subcommand_help!(
        "  pinion respondent --dial tcp://127.0.0.1:5558 --data me
  pinion respondent --listen tcp://127.0.0.1:5558 --data here --count 1"
    ))]
    Respondent(AnswerArgs),
    /// BUS: send --data to every connected bus peer and print what they send.
    #[command(after_help = subcommand_help!(
        "  pinion bus --listen tcp://127.0.0.1:5559 --recv-timeout 5
  pinion bus --dial tcp://127.0.0.1:5559 --data hello --recv-timeout 1"
    ))]
    Bus(PeerArgs),
    /// PAIR v0: send --data to the one peer and print what it sends.
    #[command(after_help = subcommand_help!(
        "  pinion pair0 --listen tcp://127.0.0.1:5560 --count 1
  pinion pair0 --dial tcp://127.0.0.1:5560 --data hi --recv-timeout 1"
    ))]
    Pair0(PeerArgs),
    /// PAIR v1: send --data to the one peer and print what it sends.
    #[command(after_help = subcommand_help!(
        "  pinion pair1 --listen tcp://127.0.0.1:5561 --data hello --interval 1
  pinion pair1 --dial tcp://127.0.0.1:5561 --count 3 --format ascii"
    ))]
    Pair1(PeerArgs),
}

/// Prints `pinion: {line}` on stderr in one write, so a reader never sees
/// half a line.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("pinion: {line}\n").as_bytes());
}

/// Parses seconds (`2`, `0.25`) into a duration.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 2 or 0.5)"))?;
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(format!("{s:?}: seconds must be between 0 and 1e9"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses the arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // Help and version go to stdout with success; every other parse
            // error is a usage error (clap's own code would be 2).
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
                _ => exit::USAGE,
            };
        }
    };
    match run(cli) {
        Ok(()) => exit::OK,
        Err(f) => {
            if !f.message.is_empty() {
                say(&f.message);
            }
            f.code
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Demo { count, url } => demo(count, &url)
            .map_err(|e| Failure::new(failure::code_for(&e), format!("demo failed: {e}"))),
        Command::Serve(a) => hub::serve(a),
        Command::Publish(a) => hub::publish(a),
        Command::Token(c) => token::run(c),
        Command::Subscribe(a) => subscribe::run(a),
        Command::Log(c) => hub::log(c),
        Command::Bench(c) => hub::bench(c),
        Command::Cluster(c) => cluster::run(c),
        Command::Req(a) => commands::ask(Protocol::Req0, a, None),
        Command::Surveyor(a) => commands::ask(Protocol::Surveyor0, a.ask, Some(a.survey_time)),
        Command::Rep(a) => commands::answer(Protocol::Rep0, a),
        Command::Respondent(a) => commands::answer(Protocol::Respondent0, a),
        Command::Pub(a) => commands::send_only(Protocol::Pub0, a),
        Command::Push(a) => commands::send_only(Protocol::Push0, a),
        Command::Sub(a) => commands::recv_only(Protocol::Sub0, a.recv, &a.subscribe),
        Command::Pull(a) => commands::recv_only(Protocol::Pull0, a, &[]),
        Command::Bus(a) => commands::peer(Protocol::Bus0, a),
        Command::Pair0(a) => commands::peer(Protocol::Pair0, a),
        Command::Pair1(a) => commands::peer(Protocol::Pair1, a),
    }
}

fn demo(count: u32, url: &str) -> Result<(), pinion::Error> {
    let rt = pinion::Runtime::global();
    println!(
        "runtime: {} cores, pinned to CPUs {:?}",
        rt.cores(),
        rt.cpus()
    );

    let rep = Socket::new(Protocol::Rep0)?;
    let ep = rep.listen(url)?;
    let url = ep.url().to_string();
    println!("rep  listening on {url}");
    let server = std::thread::spawn(move || -> Result<(), pinion::Error> {
        for _ in 0..count {
            let req = rep.recv()?;
            let reply = format!("pong: {}", String::from_utf8_lossy(&req));
            rep.send(reply)?;
        }
        Ok(())
    });

    let req = Socket::new(Protocol::Req0)?;
    req.dial(&url)?;
    println!("req  connected to {url}");
    for i in 0..count {
        let t = Instant::now();
        req.send(format!("ping {i}"))?;
        let reply = req.recv()?;
        println!(
            "req  got {:?} in {:?}",
            String::from_utf8_lossy(&reply),
            t.elapsed()
        );
    }
    server
        .join()
        .map_err(|_| pinion::Error::Bug("demo server thread panicked"))??;

    let pull = Socket::new(Protocol::Pull0)?;
    let ep = pull.listen("tcp://127.0.0.1:0")?;
    let push = Socket::new(Protocol::Push0)?;
    push.dial(&ep.url().to_string())?;
    let n = 100_000u32;
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> Result<(), pinion::Error> {
        for i in 0..n {
            push.send(i.to_le_bytes().to_vec())?;
        }
        Ok(())
    });
    for i in 0..n {
        let m = pull.recv_timeout(Some(Duration::from_secs(10)))?;
        if m[..] != i.to_le_bytes() {
            return Err(pinion::Error::Bug("demo: push/pull out of order"));
        }
    }
    sender
        .join()
        .map_err(|_| pinion::Error::Bug("demo sender thread panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "push/pull: {n} messages of 4 bytes in {secs:.3} s ({:.0} msg/s)",
        n as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("inf").is_err());
    }

    #[test]
    fn usage_rules() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(
            parse(&["pinion", "pull"]).is_err(),
            "an endpoint is required"
        );
        assert!(
            parse(&["pinion", "push", "--dial", "tcp://h:1"]).is_err(),
            "push needs data"
        );
        assert!(parse(&["pinion", "pull", "--dial", "tcp://h:1", "--data", "x"]).is_err());
        assert!(parse(&["pinion", "req", "--dial", "u", "--data", "x", "--file", "f"]).is_err());
        assert!(parse(&["pinion", "pair1", "--dial", "u", "--interval", "1"]).is_err());
        assert!(parse(&["pinion", "pull", "--dial", "u", "--count", "0"]).is_err());
        assert!(parse(&["pinion", "pull", "--dial", "u", "--format", "bogus"]).is_err());
        assert!(parse(&["pinion", "rep", "--listen", "u", "--interval", "1"]).is_err());
        assert!(parse(&["pinion", "pull", "--dial", "a", "--listen", "b", "--dial", "c"]).is_ok());
        assert!(parse(&["pinion", "sub", "--dial", "a", "--subscribe", "x"]).is_ok());
        assert!(parse(&["pinion", "pair0", "--dial", "a", "--data", "x", "-i", "0.5"]).is_ok());
        assert!(parse(&["pinion", "demo"]).is_ok());
    }
}
