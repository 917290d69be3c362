//! Where the fan-out bench's subscribers connect: one hub (today's mode),
//! or with `--nodes N [--learners L]` a local cluster of N voters and L
//! learners (each `pinion serve --node-id …` its own process, on
//! 127.0.0.1 with free ports, the bench's lifted connection caps), with the
//! subscribers spread evenly over every node's HTTP port and publishing
//! sent to the leader.
//!
//! Per node the bench reports its role, the subscribers it held, its CPU
//! per delivery (`/proc/<pid>/stat` utime + stime over the measured phase
//! ÷ that node's deliveries), its memory per idle connection (RSS growth ÷
//! its subscribers) and its replication lag, sampled from `/metrics` every
//! 100 ms during the measured phase: the leader's
//! `pinion_cluster_peer_lag{peer="id"}` (entries the node lacks) and the
//! node's own `pinion_cluster_log_next − pinion_cluster_applied_next`
//! (entries it has but has not applied yet), the largest of each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::hub::{self, HubAddrs};
use super::FanoutArgs;
use crate::error::LoadgenError;
use crate::server::ServerGuard;
use crate::targets::cluster::{self, Cluster};

/// Most subscribers the bench puts on one node (the open-file hard limit
/// here is 20,000 per process and cannot be raised).
pub(crate) const MAX_PER_NODE: usize = 19_000;

/// `--subscribers-on`: which nodes of a cluster hold the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Spread evenly over every node, voters and learners.
    #[default]
    All,
    /// All on the leader.
    Leader,
    /// All on one follower (the first voter that is not the leader).
    Follower,
    /// All on the first learner.
    Learner,
}

impl Placement {
    /// The indices of the nodes that hold subscribers, given each node's
    /// learner flag and the leader's index.
    pub(crate) fn holders(self, learner: &[bool], leader: usize) -> Result<Vec<usize>, String> {
        let first = |want: &dyn Fn(usize) -> bool, what: &str| {
            (0..learner.len())
                .find(|&i| want(i))
                .map(|i| vec![i])
                .ok_or_else(|| format!("--subscribers-on {what}: the cluster has no {what}"))
        };
        match self {
            Placement::All => Ok((0..learner.len()).collect()),
            Placement::Leader => first(&|i| i == leader, "leader"),
            Placement::Follower => first(&|i| i != leader && !learner[i], "follower"),
            Placement::Learner => first(&|i| learner[i], "learner"),
        }
    }
}

/// One hub of the run.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Raft node id (1-based; 0 for a single hub).
    pub id: u64,
    pub learner: bool,
    pub http: SocketAddr,
    pub pid: Option<u32>,
}

/// The hubs of one run.
pub(crate) struct Site {
    single: Option<ServerGuard>,
    cluster: Option<Cluster>,
    /// Publishers (the leader's) and the first node's HTTP port.
    pub addrs: HubAddrs,
    pub nodes: Vec<Node>,
    /// Indices of the nodes that hold the subscribers (`--subscribers-on`).
    holders: Vec<usize>,
}

impl Site {
    /// Starts what the arguments ask for (or uses `--hub-url`).
    pub(crate) fn start(
        args: &FanoutArgs,
        exe: &Path,
        external: Option<HubAddrs>,
    ) -> Result<Site, LoadgenError> {
        if let Some(voters) = args.nodes {
            let spec = cluster::Spec {
                voters,
                learners: args.learners,
                size: args.max_payload(),
                fsync: args.fsync.clone(),
                stats_every: 0,
                extra: args.hub_arg.clone(),
                learner_nice: None,
            };
            let c = cluster::start_spec(exe, &spec)?;
            let nodes = (0..c.ports.len())
                .map(|i| Node {
                    id: i as u64 + 1,
                    learner: c.is_learner(i),
                    http: c.http(i),
                    pid: Some(c.guards[i].pid()),
                })
                .collect();
            let addrs = HubAddrs {
                publish: c.leader_addr,
                http: c.http(c.leader),
            };
            let learner: Vec<bool> = (0..c.ports.len()).map(|i| c.is_learner(i)).collect();
            let holders = args
                .subscribers_on
                .holders(&learner, c.leader)
                .map_err(LoadgenError::Args)?;
            return Ok(Site {
                single: None,
                cluster: Some(c),
                addrs,
                nodes,
                holders,
            });
        }
        let (single, addrs) = match external {
            Some(a) => (None, a),
            None => {
                let (g, a) = hub::start(exe, &args.fsync, args.max_payload(), &args.hub_arg)?;
                (Some(g), a)
            }
        };
        let pid = single.as_ref().map(ServerGuard::pid).or(args.hub_pid);
        Ok(Site {
            single,
            cluster: None,
            addrs,
            nodes: vec![Node {
                id: 0,
                learner: false,
                http: addrs.http,
                pid,
            }],
            holders: vec![0],
        })
    }

    /// Checks that every node can hold its share of `n` subscribers plus
    /// `extra` more connections (its open-file limit).
    pub(crate) fn check_fds(&self, n: usize, extra: usize) -> Result<(), LoadgenError> {
        for (j, node) in self.nodes.iter().enumerate() {
            let on_node = self.node_range(j, n).len();
            super::check_hub_fds(node.pid, on_node + extra)?;
        }
        Ok(())
    }

    /// A cluster (subscribers in worker processes, per-node figures).
    pub(crate) fn multi(&self) -> bool {
        self.cluster.is_some()
    }

    /// Every node's HTTP port.
    pub(crate) fn https(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.http).collect()
    }

    /// The nodes that hold subscribers: each one's index and HTTP port.
    pub(crate) fn holder_https(&self) -> Vec<(usize, SocketAddr)> {
        self.holders
            .iter()
            .map(|&j| (j, self.nodes[j].http))
            .collect()
    }

    /// The run's subscribers (of `n`) that node `j` holds: an even share
    /// if it is one of the holders, none otherwise (the same split as
    /// [`super::workers::layout`]).
    pub(crate) fn node_range(&self, j: usize, n: usize) -> std::ops::Range<usize> {
        match self.holders.iter().position(|&h| h == j) {
            Some(h) => node_range(h, n, self.holders.len()),
            None => 0..0,
        }
    }

    /// The PIDs of the hubs the bench knows.
    pub(crate) fn hub_pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid).collect()
    }

    /// The leader's (or the single hub's) PID.
    pub(crate) fn leader_pid(&self) -> Option<u32> {
        match &self.cluster {
            Some(c) => Some(c.guards[c.leader].pid()),
            None => self.nodes[0].pid,
        }
    }

    /// The leader's index among the nodes.
    pub(crate) fn leader(&self) -> Option<usize> {
        self.cluster.as_ref().map(|c| c.leader)
    }

    /// The single hub's data dir (a cluster's are one per node).
    pub(crate) fn data_dir(&self) -> Option<PathBuf> {
        self.single.as_ref().map(|g| g.dir().to_path_buf())
    }

    /// Fails if a hub the bench started has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), LoadgenError> {
        if let Some(g) = self.single.as_mut() {
            g.check_alive()?;
        }
        if let Some(c) = self.cluster.as_mut() {
            for g in &mut c.guards {
                g.check_alive()?;
            }
        }
        Ok(())
    }
}

/// One node's figures in a multi-node run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeRun {
    /// Raft node id.
    pub id: u64,
    /// `leader`, `follower` (a voter) or `learner`, as the node's
    /// `/metrics` said at the end of the measured phase.
    pub role: String,
    /// Its HTTP address.
    pub http: String,
    /// Its PID (gone when the run returns).
    pub pid: Option<u32>,
    /// WebSocket subscribers it held.
    pub subscribers: usize,
    /// Deliveries its subscribers received in the measured phase.
    pub deliveries: u64,
    /// Its CPU over the measured phase, seconds (utime + stime).
    pub cpu_secs: Option<f64>,
    /// `cpu_secs ÷ deliveries`, µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// RSS before and with its subscribers connected, bytes.
    pub rss_before: Option<u64>,
    /// See `rss_before`.
    pub rss_connected: Option<u64>,
    /// (connected − before) ÷ subscribers, bytes.
    pub bytes_per_conn: Option<f64>,
    /// Largest lag the leader reported for it during the measured phase,
    /// entries (`pinion_cluster_peer_lag`; none for the leader).
    pub max_replication_lag: Option<u64>,
    /// Largest `log_next − applied_next` on the node itself, entries.
    pub max_apply_lag: Option<u64>,
    /// Deliveries due at its subscribers and not received.
    pub missing: u64,
    /// Deliveries received twice.
    pub duplicates: u64,
}

/// The run's subscribers `range(j)` that node `j` of `nodes` holds (the
/// same split as [`super::workers::layout`]).
pub(crate) fn node_range(j: usize, n: usize, nodes: usize) -> std::ops::Range<usize> {
    j * n / nodes..(j + 1) * n / nodes
}

/// Replication lag, the largest seen per node.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeLag {
    pub replication: Option<u64>,
    pub apply: Option<u64>,
    /// `pinion_cluster_role` (0 learner, 1 follower, 2 candidate, 3
    /// leader), last read.
    pub role: Option<u64>,
}

/// Polls every node's `/metrics` every 100 ms until finished.
pub(crate) struct LagSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<NodeLag>>>,
}

impl LagSampler {
    pub(crate) fn start(nodes: &[Node]) -> LagSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let nodes: Vec<Node> = nodes.to_vec();
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("fanout-lag".into())
            .spawn(move || {
                let mut lags = vec![NodeLag::default(); nodes.len()];
                loop {
                    sample(&nodes, &mut lags);
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                lags
            })
            .ok();
        LagSampler { stop, handle }
    }

    /// One last sample, then the largest lags seen.
    pub(crate) fn finish(mut self) -> Vec<NodeLag> {
        self.stop.store(true, Ordering::Release);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LagSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn sample(nodes: &[Node], lags: &mut [NodeLag]) {
    for (j, n) in nodes.iter().enumerate() {
        let Ok(body) = hub::http_get(n.http, "/metrics") else {
            continue;
        };
        let m = hub::parse_cluster_metrics(&body);
        let l = &mut lags[j];
        l.role = m.role.or(l.role);
        if let (Some(head), Some(applied)) = (m.log_next, m.applied_next) {
            l.apply = l.apply.max(Some(head.saturating_sub(applied)));
        }
        if m.is_leader {
            for (peer, lag) in m.peer_lag {
                if let Some(k) = nodes.iter().position(|x| x.id == peer && x.id != n.id) {
                    lags[k].replication = lags[k].replication.max(Some(lag));
                }
            }
        }
    }
}

/// The role's name from `pinion_cluster_role`.
pub(crate) fn role_name(role: Option<u64>, learner: bool) -> String {
    match role {
        Some(0) => "learner",
        Some(1) => "follower",
        Some(2) => "candidate",
        Some(3) => "leader",
        Some(4) => "shut down",
        _ if learner => "learner",
        _ => "voter",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_subscriber_once() {
        let n = 1003;
        let mut next = 0;
        for j in 0..7 {
            let r = node_range(j, n, 7);
            assert_eq!(r.start, next);
            assert!(r.len() == n / 7 || r.len() == n / 7 + 1);
            next = r.end;
        }
        assert_eq!(next, n);
        assert_eq!(role_name(Some(3), false), "leader");
        assert_eq!(role_name(None, true), "learner");
    }

    #[test]
    fn placement_picks_the_nodes_asked_for() {
        // Voters 0..3 with the leader at 1, learners 3 and 4.
        let learner = [false, false, false, true, true];
        let h = |p: Placement| p.holders(&learner, 1);
        assert_eq!(h(Placement::All).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(h(Placement::Leader).unwrap(), vec![1]);
        assert_eq!(h(Placement::Follower).unwrap(), vec![0]);
        assert_eq!(h(Placement::Learner).unwrap(), vec![3]);
        assert_eq!(
            Placement::Follower.holders(&[false, false], 0).unwrap(),
            vec![1]
        );
        let e = Placement::Learner.holders(&[false; 3], 0).unwrap_err();
        assert!(e.contains("no learner"), "{e}");
        assert!(Placement::Follower.holders(&[false], 0).is_err());
    }
}
