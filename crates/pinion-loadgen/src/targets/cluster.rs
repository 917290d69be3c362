//! A local cluster of hubs (`pinion serve --node-id …`), all on 127.0.0.1
//! with free ports: three voters for `pinion bench publish --target
//! cluster` (measured through its leader with the same workload as the
//! single hub), plus `--learners L` non-voting nodes; any number of voters
//! for `pinion bench fanout --nodes N --learners L`.
//!
//! Learners are started like voters (each naming itself among its peers)
//! once a leader exists, then added one at a time with `pinion cluster add
//! --learner`, which returns once the learner has caught up with the log.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;
use crate::server::{free_port, is_executable, temp_dir, ServerGuard};

pub(crate) const NAME: &str = "cluster";
/// Voters in the publish benchmark's cluster.
pub(crate) const NODES: usize = 3;
/// Most nodes (voters + learners) a local cluster may have.
pub(crate) const MAX_NODES: usize = 32;
/// How long adding one learner (and its catching up) may take.
const ADD_TIMEOUT_SECS: u64 = 120;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Voting nodes (1..).
    pub voters: usize,
    /// Non-voting nodes, added once a leader exists.
    pub learners: usize,
    /// `--max-payload` of every node.
    pub size: usize,
    /// `--fsync` of every node.
    pub fsync: String,
    /// `--stats-every` of every node, seconds.
    pub stats_every: u32,
    /// More arguments for every node's `pinion serve` (`--hub-arg`).
    pub extra: Vec<String>,
    /// Learners run under `nice -n N` (`--learner-nice`): on one machine,
    /// a way to keep their CPU from the voters', as separate machines
    /// would.
    pub learner_nice: Option<i32>,
}

impl Spec {
    /// Three voters, `learners` learners, fsync always.
    pub(crate) fn publish_bench(size: usize, learners: usize) -> Spec {
        Spec {
            voters: NODES,
            learners,
            size,
            fsync: "always".into(),
            stats_every: 1,
            extra: Vec::new(),
            learner_nice: None,
        }
    }
}

/// The running cluster: its nodes and which one leads.
pub(crate) struct Cluster {
    pub guards: Vec<ServerGuard>,
    pub leader: usize,
    pub leader_addr: SocketAddr,
    /// Per node: (publish, http, raft) ports.
    pub ports: Vec<(u16, u16, u16)>,
    /// Voters (nodes `0..voters`; the rest are learners).
    pub voters: usize,
    exe: std::path::PathBuf,
    spec: Spec,
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
        // A learner names itself among its peers too (a node must be one
        // of them); the voters do not know it until it is added.
        let me = (i >= self.voters).then(|| peer_arg(i, self.ports[i]));
        let mut cmd = match self.spec.learner_nice.filter(|_| i >= self.voters) {
            // nice execs the hub: the PID is the hub's.
            Some(n) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(n.to_string()).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.arg("serve")
            .arg("-c")
            .arg(&conf)
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("tcp://{LO}:{p}"))
            .arg("--fsync")
            .arg(&self.spec.fsync)
            .args(["--subscribe", "tcp://127.0.0.1:0"])
            .arg("--http")
            .arg(format!("{LO}:{h}"))
            .arg("--max-payload")
            .arg(self.spec.size.to_string())
            .arg(format!("--node-id={}", i + 1))
            .arg(format!("--raft=tcp://{LO}:{r}"))
            .args(&self.peers)
            .args(me)
            .arg("--stats-every")
            .arg(self.spec.stats_every.to_string())
            // The nodes share this machine's CPUs (see `pin_threads`).
            .arg("--pin-threads=false")
            .args(&self.spec.extra);
        Ok(cmd)
    }

    /// Node `i`'s HTTP address.
    pub(crate) fn http(&self, i: usize) -> SocketAddr {
        SocketAddr::from((LO, self.ports[i].1))
    }

    /// Whether node `i` is a learner.
    pub(crate) fn is_learner(&self, i: usize) -> bool {
        i >= self.voters
    }

    /// Adds node `i` (running) as a learner through `pinion cluster add
    /// --learner`, asking voter `ask`; returns once it has caught up.
    fn add_learner(&self, i: usize, ask: usize) -> Result<(), LoadgenError> {
        let (p, h, r) = self.ports[i];
        let mut cmd = Command::new(&self.exe);
        cmd.args(["cluster", "add", "--learner"])
            .arg(format!("--raft=tcp://{LO}:{}", self.ports[ask].2))
            .arg(format!("--id={}", i + 1))
            .arg(format!("--node-raft=tcp://{LO}:{r}"))
            .arg(format!("--publish=tcp://{LO}:{p}"))
            .arg(format!("--http={LO}:{h}"))
            .arg(format!("--timeout={ADD_TIMEOUT_SECS}"));
        let out = cmd
            .output()
            .map_err(|e| LoadgenError::io("running `pinion cluster add`", e))?;
        if !out.status.success() {
            return Err(LoadgenError::Setup {
                target: NAME,
                reason: format!(
                    "adding learner {} failed ({}): {}",
                    i + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// The node serving as leader (`/leader` 200), waiting up to `within`.
    pub(crate) fn find_leader(&mut self, within: Duration) -> Result<usize, LoadgenError> {
        let deadline = Instant::now() + within;
        loop {
            for (i, (p, h, _)) in self.ports.iter().enumerate().take(self.voters) {
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

fn peer_arg(i: usize, (p, h, r): (u16, u16, u16)) -> String {
    format!("--peer={}=tcp://{LO}:{r},tcp://{LO}:{p},,{LO}:{h}", i + 1)
}

/// Starts three nodes (fsync always, the bench's lifted caps) and waits for
/// a leader (`pinion bench failover`).
pub(crate) fn start(exe: &Path, size: usize) -> Result<Cluster, LoadgenError> {
    start_spec(exe, &Spec::publish_bench(size, 0))
}

/// Starts `spec.voters` voters (the bench's lifted caps), waits for a
/// leader, then starts and adds `spec.learners` learners, each caught up
/// when this returns. Ports are picked free beforehand, so another socket
/// (a node's own outgoing Raft connection, say) can take one before its
/// node binds it: a start that fails with "Address already in use" is
/// retried with new ports (three attempts).
pub(crate) fn start_spec(exe: &Path, spec: &Spec) -> Result<Cluster, LoadgenError> {
    if !is_executable(exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    if spec.voters == 0 || spec.voters + spec.learners > MAX_NODES {
        return Err(LoadgenError::Args(format!(
            "{} voters + {} learners: need 1 to {MAX_NODES} nodes, at least one a voter",
            spec.voters, spec.learners
        )));
    }
    let mut attempt = 1;
    loop {
        match start_once(exe, spec) {
            Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn start_once(exe: &Path, spec: &Spec) -> Result<Cluster, LoadgenError> {
    let total = spec.voters + spec.learners;
    let mut ports = Vec::new();
    for _ in 0..total {
        ports.push((free_port()?, free_port()?, free_port()?)); // publish, http, raft
    }
    let peers: Vec<String> = ports
        .iter()
        .take(spec.voters)
        .enumerate()
        .map(|(i, p)| peer_arg(i, *p))
        .collect();
    let mut c = Cluster {
        guards: Vec::new(),
        leader: 0,
        leader_addr: SocketAddr::from((LO, ports[0].0)),
        ports,
        voters: spec.voters,
        exe: exe.to_path_buf(),
        spec: spec.clone(),
        peers,
    };
    for i in 0..total {
        let dir = temp_dir(NAME)?;
        let cmd = c.command(i, dir.path())?;
        let mut g = ServerGuard::spawn(NAME, cmd, dir)?;
        g.wait_listening(SocketAddr::from((LO, c.ports[i].0)))?;
        c.guards.push(g);
    }
    c.find_leader(Duration::from_secs(30))?;
    for i in spec.voters..total {
        crate::server::check_interrupted()?;
        c.guards[i].check_alive()?;
        c.add_learner(i, c.leader)?;
    }
    if spec.learners > 0 {
        // Adding learners commits membership entries; the leader stays.
        c.find_leader(Duration::from_secs(30))?;
    }
    Ok(c)
}
