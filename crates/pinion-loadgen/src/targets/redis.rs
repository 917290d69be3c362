//! Redis 7 Streams: `XADD bench * d <payload>` with `appendfsync always`.
//!
//! The client is a few lines of RESP: the command is encoded once per run
//! and copied into the send buffer for each request; replies come back in
//! order, so a FIFO of pipeline slots matches them.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::driver::{connect, read_until, tcp_loop, Ctx, Decoded, Proto, Workload};
use crate::error::LoadgenError;
use crate::server::{find_binary, free_port, temp_dir, ServerGuard};

pub(crate) const NAME: &str = "redis";

/// Starts `redis-server` on a free loopback port with a fresh data dir:
/// AOF on, `appendfsync always`, RDB snapshots off, no automatic AOF
/// rewrite (checked against redis.conf of 7.0: `save ""` disables RDB,
/// `auto-aof-rewrite-percentage 0` disables the automatic rewrite).
pub(crate) fn start(clients: usize) -> Result<(ServerGuard, SocketAddr), LoadgenError> {
    let exe = find_binary("redis-server", &["/usr/bin/redis-server"], "")?;
    let dir = temp_dir(NAME)?;
    let port = free_port()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir.path())
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .args(["--auto-aof-rewrite-percentage", "0"])
        .args(["--daemonize", "no"])
        .arg("--maxclients")
        .arg((clients + 64).max(10_000).to_string());
    let mut guard = ServerGuard::spawn(NAME, cmd, dir)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    guard.wait_listening(addr)?;
    // Listening is not quite ready (e.g. -LOADING): wait for a PONG.
    let deadline = std::time::Instant::now() + crate::server::READY_TIMEOUT;
    loop {
        match crate::driver::block_on(command(addr, &["PING"]))? {
            Ok(r) if r == "+PONG" => break,
            r if std::time::Instant::now() >= deadline => {
                return Err(LoadgenError::ServerStart {
                    target: NAME,
                    reason: format!("PING answered {r:?}"),
                    log: guard.log_tail(2000),
                })
            }
            _ => crate::server::sleep_interruptible(std::time::Duration::from_millis(50))?,
        }
    }
    Ok((guard, addr))
}

/// Entries in the stream (`XLEN bench`), to check against the ACK count.
pub(crate) fn stream_len(addr: SocketAddr) -> Option<u64> {
    let r = crate::driver::block_on(command(addr, &["XLEN", "bench"]))
        .ok()?
        .ok()?;
    r.strip_prefix(':')?.parse().ok()
}

/// Encodes `args` as a RESP array of bulk strings.
pub(crate) fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One command on a fresh connection; returns the reply's first line.
async fn command(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut s = connect(0, addr).await.map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode_command(&args, &mut req);
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let n = read_until(&mut s, &mut buf, |b| Ok(find_crlf(b))).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub(crate) fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i..b.len() - 1].iter().position(|&c| c == b'\r') {
            Some(j) if b[i + j + 1] == b'\n' => return Some(i + j),
            Some(j) => i += j + 1,
            None => return None,
        }
    }
    None
}

/// The publish workload: each client its own connection, `XADD` per request.
pub(crate) struct RedisWorkload {
    pub addr: SocketAddr,
    /// `XADD bench * d <payload>`, RESP-encoded once.
    pub cmd: Arc<[u8]>,
}

impl RedisWorkload {
    pub(crate) fn new(addr: SocketAddr, payload: &[u8]) -> Self {
        let mut cmd = Vec::new();
        encode_command(&[b"XADD", b"bench", b"*", b"d", payload], &mut cmd);
        RedisWorkload {
            addr,
            cmd: cmd.into(),
        }
    }
}

impl Workload for RedisWorkload {
    async fn client(self: Arc<Self>, mut ctx: Ctx) {
        let stream = {
            let _permit = ctx.connect_permit().await;
            match connect(ctx.idx, self.addr).await {
                Ok(s) => s,
                Err(e) => return ctx.connect_failed(e.to_string()),
            }
        };
        let Some(clock) = ctx.ready().await else {
            return;
        };
        let proto = Resp {
            cmd: self.cmd.clone(),
            fifo: VecDeque::with_capacity(ctx.pipeline),
        };
        tcp_loop(stream, proto, Vec::new(), ctx, clock).await;
    }
}

/// RESP codec for `XADD` replies (a bulk string id, or an error line).
pub(crate) struct Resp {
    cmd: Arc<[u8]>,
    fifo: VecDeque<usize>,
}

impl Proto for Resp {
    fn encode(&mut self, slot: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cmd);
        self.fifo.push_back(slot);
    }

    fn decode(&mut self, buf: &[u8]) -> Decoded {
        let Some(eol) = find_crlf(buf) else {
            return Decoded::Incomplete;
        };
        let line = &buf[1..eol];
        let (used, result) = match buf[0] {
            b'$' => {
                let Some(len) = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                else {
                    return Decoded::Fatal("redis: bad bulk length".into());
                };
                if len < 0 {
                    (eol + 2, Err("redis: nil reply".to_string()))
                } else {
                    let used = eol + 2 + len as usize + 2;
                    if buf.len() < used {
                        return Decoded::Incomplete;
                    }
                    (used, Ok(None))
                }
            }
            b'+' | b':' => (eol + 2, Ok(None)),
            b'-' => {
                let text = String::from_utf8_lossy(line);
                let short: String = text.chars().take(80).collect();
                (eol + 2, Err(format!("redis: -{short}")))
            }
            other => {
                return Decoded::Fatal(format!("redis: unexpected reply type {:?}", other as char))
            }
        };
        let Some(slot) = self.fifo.pop_front() else {
            return Decoded::Fatal("redis: reply with no request outstanding".into());
        };
        Decoded::Reply { used, slot, result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_codec() {
        let mut r = Resp {
            cmd: Arc::from(&b"X"[..]),
            fifo: VecDeque::new(),
        };
        let mut out = Vec::new();
        r.encode(0, &mut out);
        r.encode(1, &mut out);
        r.encode(2, &mut out);
        assert_eq!(out, b"XXX");
        let wire = b"$15\r\n1700000000000-0\r\n-ERR no\r\n$3\r\nab";
        match r.decode(wire) {
            Decoded::Reply {
                used: 22,
                slot: 0,
                result: Ok(None),
            } => {}
            _ => panic!("bulk"),
        }
        match r.decode(&wire[22..]) {
            Decoded::Reply {
                used: 9,
                slot: 1,
                result: Err(e),
            } => assert_eq!(e, "redis: -ERR no"),
            _ => panic!("error"),
        }
        assert!(matches!(r.decode(&wire[31..]), Decoded::Incomplete));
        assert!(matches!(r.decode(b"$3\r"), Decoded::Incomplete));
    }

    #[test]
    fn command_encoding() {
        let mut out = Vec::new();
        encode_command(&[b"XADD", b"bench", b"*", b"d", b"xy"], &mut out);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$5\r\nbench\r\n$1\r\n*\r\n$1\r\nd\r\n$2\r\nxy\r\n"
        );
        assert_eq!(find_crlf(b"ab\rc\r\n"), Some(4));
        assert_eq!(find_crlf(b"ab\r"), None);
    }
}
