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

/// Starts three nodes (fsync always, the bench's lifted caps) and waits for
/// a leader.
pub(crate) fn start(exe: &Path, size: usize) -> Result<Cluster, LoadgenError> {
    if !is_executable(exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    let lo = Ipv4Addr::LOCALHOST;
    let mut ports = Vec::new();
    for _ in 0..NODES {
        ports.push((free_port()?, free_port()?, free_port()?)); // publish, http, raft
    }
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, h, r))| format!("--peer={}=tcp://{lo}:{r},tcp://{lo}:{p},,{lo}:{h}", i + 1))
        .collect();
    let mut guards = Vec::new();
    for (i, (p, h, r)) in ports.iter().enumerate() {
        let dir = temp_dir(NAME)?;
        let conf = crate::server::bench_hub_config(dir.path())?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("-c")
            .arg(&conf)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("tcp://{lo}:{p}"))
            .args(["--fsync", "always"])
            .args(["--subscribe", "tcp://127.0.0.1:0"])
            .arg("--http")
            .arg(format!("{lo}:{h}"))
            .arg("--max-payload")
            .arg(size.to_string())
            .arg(format!("--node-id={}", i + 1))
            .arg(format!("--raft=tcp://{lo}:{r}"))
            .args(&peers)
            .args(["--stats-every", "1"]);
        let mut g = ServerGuard::spawn(NAME, cmd, dir)?;
        g.wait_listening(SocketAddr::from((lo, *p)))?;
        guards.push(g);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, (p, h, _)) in ports.iter().enumerate() {
            if http_status(SocketAddr::from((lo, *h)), "/leader") == Some(200) {
                return Ok(Cluster {
                    guards,
                    leader: i,
                    leader_addr: SocketAddr::from((lo, *p)),
                });
            }
        }
        if Instant::now() > deadline {
            return Err(LoadgenError::Args(
                "the benchmark's cluster elected no leader within 30 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
