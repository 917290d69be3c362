//! The hub side of the fan-out bench: starting `pinion serve`, reading its
//! `/metrics` and its memory, and a blocking SP REQ publisher.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pinion_core::wire::handshake::{decode_header, encode_header, HEADER_LEN};
use pinion_proto::{reply, Code, Message, Publish, Reply};

use crate::error::LoadgenError;
use crate::server::{free_port, is_executable, temp_dir, ServerGuard};

const NAME: &str = "pinion";
const REQ: u16 = 0x30;
const REP: u16 = 0x31;
/// How long one publish may wait for its ACK.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the hub listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HubAddrs {
    /// Publishers: SP REP over TCP.
    pub publish: SocketAddr,
    /// The HTTP port (`/sub`, `/metrics`).
    pub http: SocketAddr,
}

/// Starts `<exe> serve` on free loopback ports with a fresh data dir.
pub(crate) fn start(
    exe: &Path,
    fsync: &str,
    max_payload: usize,
    extra: &[String],
) -> Result<(ServerGuard, HubAddrs), LoadgenError> {
    if !is_executable(exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    let dir = temp_dir("fanout")?;
    let port = free_port()?;
    let mut http_port = free_port()?;
    while http_port == port {
        http_port = free_port()?;
    }
    let conf = crate::server::bench_hub_config(dir.path())?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("-c")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .args(["--subscribe", "tcp://127.0.0.1:0"])
        .arg("--http")
        .arg(format!("127.0.0.1:{http_port}"))
        .args(["--fsync", fsync])
        .arg("--max-payload")
        .arg(max_payload.to_string())
        .args(["--stats-every", "0"])
        .args(extra);
    let mut guard = ServerGuard::spawn(NAME, cmd, dir)?;
    let addrs = HubAddrs {
        publish: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
    };
    guard.wait_listening(addrs.publish)?;
    guard.wait_listening(addrs.http)?;
    Ok((guard, addrs))
}

/// `tcp://HOST:PORT` (publishers) and `[http://]HOST:PORT` (HTTP port).
pub(crate) fn parse_urls(hub: &str, http: &str) -> Result<HubAddrs, LoadgenError> {
    let resolve = |flag: &str, url: &str, rest: &str| -> Result<SocketAddr, LoadgenError> {
        let rest = rest.trim_end_matches('/');
        rest.to_socket_addrs()
            .map_err(|e| LoadgenError::Args(format!("{flag} {url:?}: {e}")))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| LoadgenError::Args(format!("{flag} {url:?}: no IPv4 address")))
    };
    let p = hub.strip_prefix("tcp://").ok_or_else(|| {
        LoadgenError::Args(format!(
            "--hub-url {hub:?}: only tcp://HOST:PORT is supported"
        ))
    })?;
    let h = http
        .strip_prefix("http://")
        .or_else(|| http.strip_prefix("ws://"))
        .unwrap_or(http);
    let addrs = HubAddrs {
        publish: resolve("--hub-url", hub, p)?,
        http: resolve("--http-url", http, h)?,
    };
    for a in [addrs.publish, addrs.http] {
        if !a.ip().is_loopback() {
            return Err(LoadgenError::Args(format!(
                "{a}: the fan-out bench only sends traffic to 127.0.0.0/8"
            )));
        }
    }
    Ok(addrs)
}

/// The figures of `/metrics` the bench reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Metrics {
    pub subscribers_ws: u64,
    pub slow_disconnects: u64,
    pub delivered: u64,
}

/// `GET path` on the hub's HTTP port; returns the body.
pub(crate) fn http_get(http: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {http}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no complete answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("?")
        ));
    }
    Ok(body.to_string())
}

/// Reads the hub's `/metrics`.
pub(crate) fn metrics(http: SocketAddr) -> Result<Metrics, String> {
    let body = http_get(http, "/metrics")?;
    parse_metrics(&body)
}

pub(crate) fn parse_metrics(body: &str) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    let mut seen = false;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        match name {
            "pinion_subscribers{transport=\"ws\"}" => {
                m.subscribers_ws = v;
                seen = true;
            }
            "pinion_slow_disconnects_total" => m.slow_disconnects = v,
            "pinion_delivered_total" => m.delivered = v,
            _ => {}
        }
    }
    if !seen {
        return Err("no pinion_subscribers{transport=\"ws\"} in /metrics".into());
    }
    Ok(m)
}

/// Reads every node's `/metrics` and adds them up.
pub(crate) fn metrics_sum(https: &[SocketAddr]) -> Result<Metrics, String> {
    let mut sum = Metrics::default();
    for &h in https {
        let m = metrics(h).map_err(|e| format!("{h}: {e}"))?;
        sum.subscribers_ws += m.subscribers_ws;
        sum.slow_disconnects += m.slow_disconnects;
        sum.delivered += m.delivered;
    }
    Ok(sum)
}

/// A cluster node's Raft figures from its `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterMetrics {
    pub role: Option<u64>,
    pub is_leader: bool,
    pub log_next: Option<u64>,
    pub applied_next: Option<u64>,
    /// The leader's view: (peer id, entries behind).
    pub peer_lag: Vec<(u64, u64)>,
}

pub(crate) fn parse_cluster_metrics(body: &str) -> ClusterMetrics {
    let mut m = ClusterMetrics::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = v.max(0.0) as u64;
        match name {
            "pinion_cluster_role" => m.role = Some(v),
            "pinion_cluster_is_leader" => m.is_leader = v == 1,
            "pinion_cluster_log_next" => m.log_next = Some(v),
            "pinion_cluster_applied_next" => m.applied_next = Some(v),
            _ => {
                if let Some(peer) = name
                    .strip_prefix("pinion_cluster_peer_lag{peer=\"")
                    .and_then(|r| r.strip_suffix("\"}"))
                    .and_then(|p| p.parse().ok())
                {
                    m.peer_lag.push((peer, v));
                }
            }
        }
    }
    m
}

/// Resident memory of a process (`VmRSS` of `/proc/<pid>/status`), bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&s, "VmRSS:").map(|k| k * 1024)
}

/// The kernel's slab memory, machine-wide (`Slab` of `/proc/meminfo`), bytes.
pub(crate) fn slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&s, "Slab:").map(|k| k * 1024)
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Connects to the hub's publisher endpoint and exchanges SP headers (REQ
/// out, REP expected back). TCP_NODELAY on, reads time out after
/// [`ACK_TIMEOUT`].
pub(crate) fn sp_connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("publisher: connecting to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(ACK_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(&encode_header(REQ))
        .map_err(|e| format!("publisher: SP header: {e}"))?;
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)
        .map_err(|e| format!("publisher: SP header: {e}"))?;
    match decode_header(&h) {
        Ok(REP) => Ok(s),
        Ok(p) => Err(format!("publisher: peer speaks SP {p:#x}, not REP")),
        Err(e) => Err(format!("publisher: bad SP header: {e}")),
    }
}

/// One publisher connection (SP REQ over TCP), one request at a time.
///
/// In a cluster it follows the leader: a `NOT_LEADER` answer that names
/// the leader moves the connection there and the request is sent again
/// with the same client id and seq (idempotent); `NOT_LEADER` without a
/// name and `UNAVAILABLE` are retried after a pause, for up to
/// [`ACK_TIMEOUT`].
pub(crate) struct Publisher {
    s: TcpStream,
    addr: SocketAddr,
    msg: Publish,
    next_id: u32,
    out: Vec<u8>,
    /// Times the connection moved to a new leader.
    pub leader_moves: u32,
}

/// What one request got back.
enum Answer {
    Ack(u64),
    /// Not now: `NOT_LEADER` (and who leads, if known) or `UNAVAILABLE`.
    Retry(Option<String>),
}

impl Publisher {
    pub(crate) fn connect(addr: SocketAddr) -> Result<Publisher, String> {
        let s = sp_connect(addr)?;
        Ok(Publisher {
            s,
            addr,
            msg: Publish {
                client_id: Some(crate::rand_bytes16().to_vec().into()),
                seq: Some(0),
                topic: None,
                payload: None,
                token: None,
            },
            next_id: (crate::rand_u64() as u32) & 0x7fff_ffff,
            out: Vec::with_capacity(256),
            leader_moves: 0,
        })
    }

    /// Publishes one message and waits for its ACK; returns its offset.
    /// The time is taken by the caller right before (the request is
    /// written at once).
    pub(crate) fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<u64, String> {
        let seq = self.msg.seq.unwrap_or(0) + 1;
        self.msg.seq = Some(seq);
        self.msg.topic = Some(topic.to_string());
        self.msg.payload = Some(payload.into());
        let deadline = std::time::Instant::now() + ACK_TIMEOUT;
        loop {
            let leader = match self.send_once()? {
                Answer::Ack(offset) => return Ok(offset),
                Answer::Retry(leader) => leader,
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "publish: no leader accepted it within {ACK_TIMEOUT:?}"
                ));
            }
            let moved = leader
                .as_deref()
                .and_then(|l| l.strip_prefix("tcp://"))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .filter(|a| *a != self.addr);
            match moved {
                Some(a) => {
                    self.s = sp_connect(a)?;
                    self.addr = a;
                    self.leader_moves += 1;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn send_once(&mut self) -> Result<Answer, String> {
        self.next_id = (self.next_id + 1) & 0x7fff_ffff;
        let id = 0x8000_0000 | self.next_id;
        let body_len = 4 + self.msg.encoded_len();
        self.out.clear();
        self.out.extend_from_slice(&(body_len as u64).to_be_bytes());
        self.out.extend_from_slice(&id.to_be_bytes());
        self.msg.encode(&mut self.out).expect("a Vec grows");
        self.s
            .write_all(&self.out)
            .map_err(|e| format!("publish: {e}"))?;
        let mut len = [0u8; 8];
        self.s
            .read_exact(&mut len)
            .map_err(|e| format!("publish: waiting for the ACK: {e}"))?;
        let len = u64::from_be_bytes(len);
        if !(4..=64 * 1024).contains(&len) {
            return Err(format!("publish: bad reply length {len}"));
        }
        let mut body = vec![0u8; len as usize];
        self.s
            .read_exact(&mut body)
            .map_err(|e| format!("publish: reading the ACK: {e}"))?;
        let got = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        if got != id {
            return Err(format!("publish: reply to request {got:#x}, sent {id:#x}"));
        }
        if let Ok(Reply {
            result: Some(reply::Result::Nack(n)),
        }) = Reply::decode(&body[4..])
        {
            match n.code() {
                Code::NotLeader => return Ok(Answer::Retry(n.leader.filter(|l| !l.is_empty()))),
                Code::Unavailable => return Ok(Answer::Retry(None)),
                _ => {}
            }
        }
        reply_offset(&body[4..]).map(Answer::Ack)
    }
}

/// The offset of an ACK; `Err` says what else the reply was (`publish: NACK
/// <CODE> <reason>`, empty, undecodable).
pub(crate) fn reply_offset(reply: &[u8]) -> Result<u64, String> {
    match Reply::decode(reply) {
        Ok(Reply {
            result: Some(reply::Result::Ack(a)),
        }) => a
            .offset
            .ok_or_else(|| "publish: ACK without an offset".to_string()),
        Ok(Reply {
            result: Some(reply::Result::Nack(n)),
        }) => Err(format!(
            "publish: NACK {} {}",
            n.code().as_str_name(),
            n.reason.unwrap_or_default()
        )),
        Ok(Reply { result: None }) => Err("publish: empty reply".into()),
        Err(e) => Err(format!("publish: undecodable reply: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text() {
        let body = "# HELP x\npinion_delivered_total 12\npinion_slow_disconnects_total 3\n\
                    pinion_subscribers{transport=\"tcp\"} 1\npinion_subscribers{transport=\"ws\"} 100000\n";
        let m = parse_metrics(body).unwrap();
        assert_eq!(
            (m.subscribers_ws, m.slow_disconnects, m.delivered),
            (100_000, 3, 12)
        );
        assert!(parse_metrics("pinion_delivered_total 1\n").is_err());
    }

    #[test]
    fn cluster_metrics_text() {
        let body = "# TYPE x\npinion_cluster_role 3\npinion_cluster_is_leader 1\n\
                    pinion_cluster_log_next 120\npinion_cluster_applied_next 118\n\
                    pinion_cluster_peer_lag{peer=\"2\"} 0\npinion_cluster_peer_lag{peer=\"4\"} 17\n\
                    pinion_cluster_peer_lag{peer=\"x\"} 3\npinion_cluster_term nan\n";
        let m = parse_cluster_metrics(body);
        assert_eq!(m.role, Some(3));
        assert!(m.is_leader);
        assert_eq!((m.log_next, m.applied_next), (Some(120), Some(118)));
        assert_eq!(m.peer_lag, vec![(2, 0), (4, 17)]);
        assert_eq!(parse_cluster_metrics(""), ClusterMetrics::default());
    }

    #[test]
    fn proc_fields() {
        assert_eq!(
            kib_field("Name: x\nVmRSS:\t  1234 kB\n", "VmRSS:"),
            Some(1234)
        );
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(slab_bytes().is_some());
    }

    #[test]
    fn urls() {
        let a = parse_urls("tcp://127.0.0.1:7450", "http://127.0.0.1:7452/").unwrap();
        assert_eq!((a.publish.port(), a.http.port()), (7450, 7452));
        assert_eq!(
            parse_urls("tcp://127.0.0.1:1", "127.0.0.1:2")
                .unwrap()
                .http
                .port(),
            2
        );
        assert!(parse_urls("ipc:///x", "127.0.0.1:2").is_err());
        assert!(parse_urls("tcp://10.0.0.1:1", "127.0.0.1:2").is_err());
    }
}
