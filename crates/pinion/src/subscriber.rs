//! A resuming subscriber for pinion's hub (`pinion serve`), over the
//! WebSocket endpoint `/sub` (contract: `docs/HUB-WEB.md`).
//!
//! [`Subscriber`] takes one URL per node (`ws://host:port`; one for a
//! single hub, several for a cluster's voters and edge nodes, or the one
//! address of a load balancer) and topic prefixes, subscribes on one node,
//! and hands over every message as a [`Delivery`] with its offset. When the
//! connection ends — the node died or was stopped, a connect or upgrade
//! failed, the hub closed it (a slow consumer's `4008` included), the hub
//! sent something malformed (that connection only is closed), or nothing
//! was heard from the node for [`SubscriberOptions::idle_timeout`] — it
//! moves to the **next** URL and subscribes again from the offset after
//! the last one it received. Every node of a cluster serves the same committed messages at the
//! same offsets (a node that has not applied that offset yet holds the
//! subscription until it has), so a move loses nothing and repeats nothing;
//! a delivery below the expected offset is dropped all the same
//! ([`Subscriber::dropped_duplicates`]). A live subscription (no `from`)
//! that moves before its first message resumes from the offset the first
//! node's hello named, so it misses nothing either.
//!
//! Moves are immediate after a connection that delivered something or
//! stayed up for 5 s; once every URL in turn has failed, the next attempt
//! waits an exponential backoff with jitter
//! ([`SubscriberOptions::backoff_min`] .. [`backoff_max`](SubscriberOptions::backoff_max)).
//! It retries for ever unless [`SubscriberOptions::give_up_after`] is set.
//!
//! The I/O runs on pinion's runtime (one task per subscriber on one core);
//! the futures here only wait on a channel, so they work in any async
//! runtime, and [`crate::blocking::Subscriber`] wraps them for threads.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), pinion::subscriber::Error> {
//! use pinion::subscriber::{Subscriber, SubscriberOptions};
//!
//! let opts = SubscriberOptions {
//!     topics: vec!["orders/".into()],
//!     from: Some(0), // replay from the start of the log, then live
//!     ..SubscriberOptions::new([
//!         "ws://10.0.0.1:7452",
//!         "ws://10.0.0.2:7452",
//!         "ws://10.0.0.3:7452",
//!     ])
//! };
//! // Returns once a node has accepted the subscription.
//! let mut sub = Subscriber::connect(opts).await?;
//! loop {
//!     let d = sub.next().await?;
//!     println!("{} {:?} via {}", d.offset, d.payload, sub.node());
//!     // Keep `sub.next_offset()` to resume there after a restart.
//! }
//! # }
//! ```

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pinion_runtime::cores::CoreId;
use pinion_runtime::error::UrlError;
use pinion_runtime::{Fault, Runtime, Url};
use tokio::sync::mpsc;

mod conn;
mod track;

/// The subprotocol offered on `/sub` (the hub then sends its hello).
pub use pinion_proto::ws::SUBPROTOCOL;

/// How a [`Subscriber`] behaves.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// One URL per node, `ws://host:port` (path `/sub` implied; another
    /// path, e.g. behind a proxy, may be given: `ws://host:port/hub/sub`).
    /// No query: the subscriber writes it.
    pub urls: Vec<String>,
    /// Topic prefixes (bytes; at most 64 of at most 255 bytes). None, or an
    /// empty one: every topic.
    pub topics: Vec<Bytes>,
    /// The first offset wanted (replayed from the log, then live). `None`
    /// (the default): live from now.
    pub from: Option<u64>,
    /// Which URL to try first; the next ones are then tried round robin.
    /// `None` (the default): a random one first, then the others in a
    /// random order of this subscriber's own, so that many subscribers
    /// given the same list spread over the nodes, also when one dies.
    pub start_index: Option<usize>,
    /// Connecting, the upgrade and the hub's hello must all be done within
    /// this. Default 3 s.
    pub connect_timeout: Duration,
    /// With nothing heard from the node for half of this, a ping is sent;
    /// with nothing for all of it, the node counts as gone. (The hub pings
    /// every 30 s by itself.) Default 20 s.
    pub idle_timeout: Duration,
    /// First backoff delay, once every URL in turn has failed. Default
    /// 100 ms.
    pub backoff_min: Duration,
    /// Longest backoff delay. Default 10 s.
    pub backoff_max: Duration,
    /// Stop retrying when no node has accepted the subscription for this
    /// long: [`Subscriber::next`] then returns the last connection's error.
    /// `None` (the default): never.
    pub give_up_after: Option<Duration>,
    /// Largest message (frame payload) taken; a longer one is refused from
    /// its header, before anything of it is allocated, and closes the
    /// connection ([`Error::Transport`] with
    /// [`PeerError::TooLarge`](crate::PeerError::TooLarge)). Default 1 MiB.
    pub max_message: usize,
    /// Messages read ahead of [`Subscriber::next`] at most. A reader slower
    /// than the hub for long makes the hub cut the connection (4008: the
    /// subscriber resumes by itself). Default 1024.
    pub buffer: usize,
    /// A token for a hub with authentication on (`pinion token issue`),
    /// sent as `?token=` on every connection. It must allow every prefix
    /// in `topics` (or every topic, with none); a refusal closes with
    /// 4401 (no valid token) or 4403 (topics not allowed), and a token
    /// that expires while connected closes with 4419: give a fresh one.
    pub token: Option<String>,
}

impl SubscriberOptions {
    /// The defaults, with these node URLs.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        SubscriberOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            ..SubscriberOptions::default()
        }
    }
}

impl Default for SubscriberOptions {
    /// The defaults, with `ws://127.0.0.1:7452` (a hub's default address).
    fn default() -> Self {
        SubscriberOptions {
            urls: vec!["ws://127.0.0.1:7452".into()],
            topics: Vec::new(),
            from: None,
            start_index: None,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            give_up_after: None,
            max_message: 1 << 20,
            buffer: 1024,
            token: None,
        }
    }
}

/// One message, as the hub logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its offset in the log (the same on every node of a cluster).
    pub offset: u64,
    /// Its topic.
    pub topic: Bytes,
    /// Its payload.
    pub payload: Bytes,
    /// The publisher's client id (16 bytes from pinion's publishers).
    pub client_id: Bytes,
    /// The publisher's sequence number.
    pub seq: u64,
    /// When the hub logged it, microseconds since the Unix epoch.
    pub timestamp_us: u64,
}

/// What happened, in order: [`Subscriber::next_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A node accepted the subscription.
    Connected {
        /// Index of its URL in [`SubscriberOptions::urls`].
        node: usize,
        /// The first offset it will deliver (its hello).
        next: u64,
    },
    /// A message.
    Delivery(Delivery),
    /// The connection to a node ended, or could not be made; the
    /// subscriber moves on by itself.
    Disconnected {
        /// Index of its URL.
        node: usize,
        /// Why.
        error: Error,
        /// The `from` of the next attempt (`None`: live, nothing known yet).
        resume: Option<u64>,
        /// The URL tried next.
        next_node: usize,
        /// After this delay.
        retry_in: Duration,
    },
}

/// A rule of the `/sub` contract the hub broke. The connection is closed
/// (status 1002) and the subscriber moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum HubViolation {
    /// A message before the hello.
    #[error("a message before the hello")]
    NoHello,
    /// The hello is not `{"next":N}`.
    #[error("a hello that is not {{\"next\":N}}")]
    BadHello,
    /// A second text frame.
    #[error("a text frame after the hello")]
    ExtraText,
    /// A binary frame without the `0x00` after the topic.
    #[error("a frame without the topic's 0x00 separator")]
    NoSeparator,
    /// The bytes after the topic are not a protobuf `Delivery`.
    #[error("a frame whose Delivery does not decode")]
    BadDelivery,
    /// A `Delivery` without an offset.
    #[error("a Delivery without an offset")]
    NoOffset,
}

/// What is wrong with [`SubscriberOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// No URL.
    #[error("no URL given")]
    NoUrls,
    /// A URL that does not parse.
    #[error("URL #{index}: {reason}")]
    BadUrl {
        /// Its index.
        index: usize,
        /// What is wrong.
        reason: UrlError,
    },
    /// A URL that is not `ws://` (`wss://` is not supported yet).
    #[error("URL #{index}: not ws://")]
    NotWs {
        /// Its index.
        index: usize,
    },
    /// A URL with a query (the subscriber writes it).
    #[error("URL #{index}: has a query")]
    HasQuery {
        /// Its index.
        index: usize,
    },
    /// More than 64 topic prefixes (the hub's limit).
    #[error("{0} topic prefixes (at most 64)")]
    TooManyTopics(usize),
    /// A topic prefix over 255 bytes (the hub's limit).
    #[error("topic prefix #{index} is {len} bytes (at most 255)")]
    TopicTooLong {
        /// Its index.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The upgrade request would be over the hub's 8 KiB (percent-encoded
    /// prefixes): subscribe to shorter common prefixes.
    #[error("the request would be {0} bytes (at most 8192)")]
    RequestTooLong(usize),
    /// `buffer` or `max_message` is 0.
    #[error("buffer and max_message must not be 0")]
    Zero,
}

/// Why a connection ended, or why the subscriber stopped. [`Error::fault`]
/// says who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options cannot work (from [`Subscriber::start`]).
    #[error("invalid subscriber options: {0}")]
    Options(#[from] OptionsError),
    /// Connecting, the upgrade, or the WebSocket stream failed: an I/O
    /// error (refused, reset, closed without a close frame: match on
    /// [`crate::Error::io_kind`]), [`crate::Error::TimedOut`] (no hello
    /// within `connect_timeout`), or the node's fault
    /// ([`crate::Error::Peer`]: upgrade refused with an HTTP status, a bad
    /// answer, a WebSocket framing violation, a message over
    /// `max_message`).
    #[error("{0}")]
    Transport(crate::Error),
    /// The hub broke the `/sub` contract.
    #[error("the hub broke the /sub contract: {0}")]
    Hub(HubViolation),
    /// The hub closed the connection (a close frame): `4008` slow consumer,
    /// `4011` its replay could not read the log, `1001` it shuts down, ...
    #[error("closed by the hub ({}: {reason})", code.map_or("no code".to_string(), |c| c.to_string()))]
    ClosedByHub {
        /// The status code, if the frame had one.
        code: Option<u16>,
        /// Its reason text (for people: the code is for programs).
        reason: String,
    },
    /// Nothing from the node (not even an answer to a ping) for
    /// `idle_timeout`.
    #[error("nothing from the node for {0:?}")]
    Silent(Duration),
    /// The subscriber is closed (or its task ended).
    #[error("subscriber closed")]
    Closed,
}

impl Error {
    /// Who is at fault: [`Fault::Caller`] for options, [`Fault::Peer`] for
    /// a hub that broke a rule, [`Fault::Io`] for the network and silent
    /// nodes, [`Fault::Outcome`] for a close by the hub or by the
    /// application.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Options(_) => Fault::Caller,
            Error::Transport(e) => e.fault(),
            Error::Hub(_) => Fault::Peer,
            Error::Silent(_) => Fault::Io,
            Error::ClosedByHub { .. } | Error::Closed => Fault::Outcome,
        }
    }
}

/// A node's URL, ready to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// What to connect to.
    pub tcp: Url,
    /// The `Host:` header.
    pub host: String,
    /// The request path.
    pub path: String,
    /// As given (for errors).
    pub url: String,
}

/// What the driver task needs.
#[derive(Debug)]
pub(crate) struct Config {
    pub targets: Vec<Target>,
    /// `topic=…&topic=…` (percent-encoded), or empty.
    pub topics_query: String,
    pub opts: SubscriberOptions,
}

impl Config {
    /// The request target for `node` with `from`.
    pub fn request_target(&self, node: usize, from: Option<u64>) -> String {
        let mut q = self.topics_query.clone();
        if let Some(f) = from {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&format!("from={f}"));
        }
        if let Some(t) = &self.opts.token {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str("token=");
            percent_encode(t.as_bytes(), &mut q);
        }
        let path = &self.targets[node].path;
        if q.is_empty() {
            path.clone()
        } else {
            format!("{path}?{q}")
        }
    }
}

fn percent_encode(v: &[u8], out: &mut String) {
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn check(opts: SubscriberOptions) -> Result<Config, OptionsError> {
    if opts.urls.is_empty() {
        return Err(OptionsError::NoUrls);
    }
    if opts.buffer == 0 || opts.max_message == 0 {
        return Err(OptionsError::Zero);
    }
    if opts.topics.len() > 64 {
        return Err(OptionsError::TooManyTopics(opts.topics.len()));
    }
    let mut topics_query = String::new();
    for (index, t) in opts.topics.iter().enumerate() {
        if t.len() > 255 {
            return Err(OptionsError::TopicTooLong {
                index,
                len: t.len(),
            });
        }
        if !topics_query.is_empty() {
            topics_query.push('&');
        }
        topics_query.push_str("topic=");
        percent_encode(t, &mut topics_query);
    }
    let mut targets = Vec::with_capacity(opts.urls.len());
    for (index, u) in opts.urls.iter().enumerate() {
        let parsed = Url::parse(u).map_err(|e| match e {
            crate::Error::InvalidUrl { reason, .. } => OptionsError::BadUrl { index, reason },
            _ => OptionsError::NotWs { index },
        })?;
        let Url::Ws { host, port, path } = parsed else {
            return Err(OptionsError::NotWs { index });
        };
        if path.contains('?') {
            return Err(OptionsError::HasQuery { index });
        }
        let path = if path == "/" {
            "/sub".to_string()
        } else {
            path
        };
        let header = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        targets.push(Target {
            tcp: Url::Tcp { host, port },
            host: header,
            path,
            url: u.clone(),
        });
    }
    let cfg = Config {
        targets,
        topics_query,
        opts,
    };
    // The longest request this subscriber can send (the hub reads 8 KiB of
    // head at most).
    for (i, t) in cfg.targets.iter().enumerate() {
        let req = pinion_runtime::transport::ws::handshake::client_request_with(
            &t.host,
            &cfg.request_target(i, Some(u64::MAX)),
            SUBPROTOCOL,
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        if req.len() > pinion_runtime::transport::ws::handshake::MAX_HEAD {
            return Err(OptionsError::RequestTooLong(req.len()));
        }
    }
    Ok(cfg)
}

/// What the driver task hands over.
#[derive(Debug)]
pub(crate) enum Feed {
    Event(Event),
    /// The driver stopped (it gave up): this error, then `Closed`.
    Fatal(Error),
}

/// Counters shared with the driver task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub dropped: AtomicU64,
}

/// A subscriber that moves between nodes and resumes by offset (see the
/// [module docs](self)). Dropping it (or [`Subscriber::close`]) closes its
/// connection and stops its task.
#[derive(Debug)]
pub struct Subscriber {
    rx: mpsc::Receiver<Feed>,
    /// Events taken by [`Subscriber::connect`] and not yet returned.
    backlog: VecDeque<Event>,
    urls: Arc<[String]>,
    node: Option<usize>,
    next_offset: Option<u64>,
    shared: Arc<Shared>,
    rt: Runtime,
    core: CoreId,
    finished: bool,
}

impl Subscriber {
    /// Checks the options and starts subscribing in the background; returns
    /// at once. Everything after that, connections that fail included, is
    /// reported by [`Subscriber::next_event`].
    ///
    /// # Errors
    ///
    /// [`Error::Options`] when the options cannot work.
    pub fn start(opts: SubscriberOptions) -> Result<Subscriber, Error> {
        let seed = pinion_runtime::sys::seed();
        let order = track::order(
            opts.urls.len(),
            opts.start_index,
            &mut pinion_core::rng::Rng::new(seed ^ 0x5eed),
        );
        let next_offset = opts.from;
        let buffer = opts.buffer;
        let cfg = Arc::new(check(opts)?);
        let urls: Arc<[String]> = cfg.targets.iter().map(|t| t.url.clone()).collect();
        let rt = Runtime::global().clone();
        let core = rt.next_core();
        let (tx, rx) = mpsc::channel(buffer);
        let shared = Arc::new(Shared::default());
        rt.spawn_on(
            core,
            conn::drive(cfg, order, tx, shared.clone(), seed, Instant::now()),
        );
        Ok(Subscriber {
            rx,
            backlog: VecDeque::new(),
            urls,
            node: None,
            next_offset,
            shared,
            rt,
            core,
            finished: false,
        })
    }

    /// [`Subscriber::start`], then waits until a node has accepted the
    /// subscription. What happened meanwhile (failed attempts included) is
    /// still returned by [`Subscriber::next_event`].
    ///
    /// # Errors
    ///
    /// [`Error::Options`], or the last connection's error once
    /// [`SubscriberOptions::give_up_after`] has passed.
    pub async fn connect(opts: SubscriberOptions) -> Result<Subscriber, Error> {
        let mut s = Subscriber::start(opts)?;
        loop {
            let e = s.receive().await?;
            let up = matches!(e, Event::Connected { .. });
            s.backlog.push_back(e);
            if up {
                return Ok(s);
            }
        }
    }

    /// The next message (events other than deliveries are skipped).
    ///
    /// # Errors
    ///
    /// Only when the subscriber stops: the last connection's error once
    /// [`SubscriberOptions::give_up_after`] has passed, then
    /// [`Error::Closed`].
    pub async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            if let Event::Delivery(d) = self.next_event().await? {
                return Ok(d);
            }
        }
    }

    /// The next event: a delivery, a node that accepted the subscription,
    /// a connection that ended (the subscriber has already moved on).
    ///
    /// # Errors
    ///
    /// As [`Subscriber::next`].
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        self.receive().await
    }

    /// [`Subscriber::next`], waiting at most `timeout` (`Ok(None)` then).
    ///
    /// # Errors
    ///
    /// As [`Subscriber::next`].
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_timeout(left).await? {
                Some(Event::Delivery(d)) => return Ok(Some(d)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// [`Subscriber::next_event`], waiting at most `timeout` (`Ok(None)`
    /// then).
    ///
    /// # Errors
    ///
    /// As [`Subscriber::next`].
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(Some(e));
        }
        if self.finished {
            return Err(Error::Closed);
        }
        match self.rx.try_recv() {
            Ok(f) => return self.take(Some(f)).map(Some),
            Err(mpsc::error::TryRecvError::Disconnected) => return self.take(None).map(Some),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        // The timer runs on the subscriber's core: this future needs no
        // particular runtime.
        let mut timer = self
            .rt
            .spawn_on(self.core, async move { tokio::time::sleep(timeout).await });
        let got = poll_fn(|cx| {
            if let Poll::Ready(f) = self.rx.poll_recv(cx) {
                return Poll::Ready(Some(f));
            }
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        timer.abort();
        match got {
            Some(f) => self.take(f).map(Some),
            None => Ok(None),
        }
    }

    async fn receive(&mut self) -> Result<Event, Error> {
        if self.finished {
            return Err(Error::Closed);
        }
        let f = self.rx.recv().await;
        self.take(f)
    }

    fn take(&mut self, f: Option<Feed>) -> Result<Event, Error> {
        match f {
            Some(Feed::Event(e)) => {
                match &e {
                    Event::Connected { node, next } => {
                        self.node = Some(*node);
                        self.next_offset.get_or_insert(*next);
                    }
                    Event::Delivery(d) => self.next_offset = Some(d.offset.saturating_add(1)),
                    Event::Disconnected { .. } => {}
                }
                Ok(e)
            }
            Some(Feed::Fatal(e)) => {
                self.finished = true;
                Err(e)
            }
            None => {
                self.finished = true;
                Err(Error::Closed)
            }
        }
    }

    /// The URL of the node that sent the latest event received (the one
    /// serving the subscription; empty before any node accepted it).
    pub fn node(&self) -> &str {
        self.node.map_or("", |i| &self.urls[i])
    }

    /// Index in [`SubscriberOptions::urls`] of [`Subscriber::node`].
    pub fn node_index(&self) -> Option<usize> {
        self.node
    }

    /// Where to resume (`from`) after the latest delivery received: its
    /// offset + 1; before any, the `from` asked for, or for a live
    /// subscription the offset the first node's hello named (`None` until
    /// then). Keep it to resume in another process without a gap.
    pub fn next_offset(&self) -> Option<u64> {
        self.next_offset
    }

    /// Deliveries dropped because their offset was below the expected one
    /// (a node replaying what another already delivered; none in normal
    /// operation).
    pub fn dropped_duplicates(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Closes the connection and stops the subscriber's task (dropping it
    /// does the same).
    pub fn close(self) {}
}

/// The parsers of what a hub sends on `/sub`, for the fuzz targets
/// (`fuzz/fuzz_targets/sub_frames.rs`). Not part of the API: hidden, and
/// not under `cfg(fuzzing)` only because `scripts/test.sh` checks the fuzz
/// crate on stable without it.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::track::{parse_delivery, parse_hello, resume_hint};
}
