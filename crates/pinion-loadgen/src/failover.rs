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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion_core::wire::handshake::{decode_header, encode_header, HEADER_LEN};
use pinion_proto::{reply, Message, Publish, Reply};

use crate::error::LoadgenError;
use crate::targets::cluster;

/// Arguments of `pinion bench failover`.
#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seconds to let the cluster settle after a restart.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// What `run_failover` measured.
#[derive(Debug, Clone)]
pub struct FailoverSummary {
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

/// Runs the benchmark and prints every kill's time, then p50 and max.
///
/// # Errors
///
/// If the cluster cannot start, elects no leader, or no ACK follows a kill
/// within 30 s.
pub fn run_failover(
    args: &FailoverArgs,
    exe: &std::path::Path,
) -> Result<FailoverSummary, LoadgenError> {
    crate::server::install_signal_handlers();
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
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    result?;
    let s = FailoverSummary { times };
    println!(
        "failover over {} kills: p50 {:.0} ms, max {:.0} ms",
        s.times.len(),
        s.p50().as_secs_f64() * 1000.0,
        s.max().as_secs_f64() * 1000.0
    );
    Ok(s)
}
