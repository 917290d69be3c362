//! A local three-node cluster of hubs (`pinion serve --node-id …`), all on
//! 127.0.0.1 with free ports, measured through its leader with the same
//! workload as the single hub (`pinion`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;
use crate::server::{free_port, is_executable, temp_dir, ServerGuard};

pub(crate) const NAME: &str = "cluster";
/// Voters in the benchmark's cluster.
pub(crate) const NODES: usize = 3;

/// The running cluster: its nodes and which one leads.
pub(crate) struct Cluster {
    pub guards: Vec<ServerGuard>,
    pub leader: usize,
    pub leader_addr: SocketAddr,
    /// Per node: (publish, http, raft) ports.
    pub ports: Vec<(u16, u16, u16)>,
    exe: std::path::PathBuf,
    size: usize,
    peers: Vec<String>,
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

impl Cluster {
    /// The command that starts node `i` (0-based) in `dir`.
    pub(crate) fn command(&self, i: usize, dir: &Path) -> Result<Command, LoadgenError> {
        let (p, h, r) = self.ports[i];
        let conf = crate::server::bench_hub_config(dir)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("-c")
            .arg(&conf)
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("tcp://{LO}:{p}"))
            .args(["--fsync", "always"])
            .args(["--subscribe", "tcp://127.0.0.1:0"])
            .arg("--http")
            .arg(format!("{LO}:{h}"))
            .arg("--max-payload")
            .arg(self.size.to_string())
            .arg(format!("--node-id={}", i + 1))
            .arg(format!("--raft=tcp://{LO}:{r}"))
            .args(&self.peers)
            .args(["--stats-every", "1"]);
        Ok(cmd)
    }

    /// The node serving as leader (`/leader` 200), waiting up to `within`.
    pub(crate) fn find_leader(&mut self, within: Duration) -> Result<usize, LoadgenError> {
        let deadline = Instant::now() + within;
        loop {
            for (i, (p, h, _)) in self.ports.iter().enumerate() {
                if http_status(SocketAddr::from((LO, *h)), "/leader") == Some(200) {
                    self.leader = i;
                    self.leader_addr = SocketAddr::from((LO, *p));
                    return Ok(i);
                }
            }
            crate::server::check_interrupted()?;
            if Instant::now() > deadline {
                return Err(LoadgenError::Args(format!(
                    "the benchmark's cluster had no leader within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Starts three nodes (fsync always, the bench's lifted caps) and waits for
/// a leader. Ports are picked free beforehand, so another socket (a node's
/// own outgoing Raft connection, say) can take one before its node binds
/// it: a start that fails with "Address already in use" is retried with
/// new ports (three attempts).
pub(crate) fn start(exe: &Path, size: usize) -> Result<Cluster, LoadgenError> {
    if !is_executable(exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    let mut attempt = 1;
    loop {
        match start_once(exe, size) {
            Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn start_once(exe: &Path, size: usize) -> Result<Cluster, LoadgenError> {
    let mut ports = Vec::new();
    for _ in 0..NODES {
        ports.push((free_port()?, free_port()?, free_port()?)); // publish, http, raft
    }
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, h, r))| format!("--peer={}=tcp://{LO}:{r},tcp://{LO}:{p},,{LO}:{h}", i + 1))
        .collect();
    let mut c = Cluster {
        guards: Vec::new(),
        leader: 0,
        leader_addr: SocketAddr::from((LO, ports[0].0)),
        ports,
        exe: exe.to_path_buf(),
        size,
        peers,
    };
    for i in 0..NODES {
        let dir = temp_dir(NAME)?;
        let cmd = c.command(i, dir.path())?;
        let mut g = ServerGuard::spawn(NAME, cmd, dir)?;
        g.wait_listening(SocketAddr::from((LO, c.ports[i].0)))?;
        c.guards.push(g);
    }
    c.find_leader(Duration::from_secs(30))?;
    Ok(c)
}
