//! `pinion cluster …`: a local cluster for development and tests
//! (`local`), and a node's view of its cluster (`status`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use pinion_proto::raft as pb;

use crate::exit;
use crate::failure::Failure;

/// `pinion cluster …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Start an N-node cluster on this machine (node i on 127.0.0.i, the
    /// default ports), as child processes, plus --learners non-voting
    /// nodes; print one JSON object per node once every node is up; stay
    /// in the foreground. Ctrl-C or SIGTERM
    /// stops every node gracefully; a node killed meanwhile is not
    /// restarted (run the `pinion serve` line printed for it in the log).
    Local(LocalArgs),
    /// Show a node's view of the cluster: leader, term, each node's log
    /// head and applied index, and (from the leader) each peer's match
    /// index and lag.
    Status(StatusArgs),
    /// Add a running node (started with its own --node-id and --raft) as a
    /// learner; waits until it has caught up, then with --voter makes it a
    /// voter. Ask any node: a follower names the leader, which is asked.
    Add(AddArgs),
    /// Remove a node (voter or learner) from the cluster.
    Remove(RemoveArgs),
}

/// `pinion cluster add`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// Any member's Raft endpoint.
    #[arg(long, value_name = "URL")]
    pub raft: String,
    /// The new node's id.
    #[arg(long)]
    pub id: u64,
    /// The new node's Raft endpoint.
    #[arg(long, value_name = "URL")]
    pub node_raft: String,
    /// The new node's publisher endpoint (named by NOT_LEADER answers).
    #[arg(long, value_name = "URL", default_value = "")]
    pub publish: String,
    /// The new node's subscriber endpoint.
    #[arg(long, value_name = "URL", default_value = "")]
    pub subscribe: String,
    /// The new node's HTTP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "")]
    pub http: String,
    /// Make it a voter once it has caught up.
    #[arg(long, conflicts_with = "learner")]
    pub voter: bool,
    /// Keep it a learner (the default; for clarity).
    #[arg(long)]
    pub learner: bool,
    /// Give up after this long, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// For `tls+tcp://` Raft endpoints (mutual TLS): --cacert, --cert,
    /// --key.
    #[command(flatten)]
    pub tls: crate::TlsArgs,
}

/// `pinion cluster remove`.
#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    /// Any member's Raft endpoint.
    #[arg(long, value_name = "URL")]
    pub raft: String,
    /// The node to remove.
    #[arg(long)]
    pub id: u64,
    /// Give up after this long, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// For `tls+tcp://` Raft endpoints (mutual TLS): --cacert, --cert,
    /// --key.
    #[command(flatten)]
    pub tls: crate::TlsArgs,
}

/// `pinion cluster local`.
#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// Number of voting nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// Learners to add after the voters (nodes N+1 to N+L; at most 9 nodes
    /// in all): they replicate the log and serve subscribers, but do not
    /// vote and are not needed for a commit.
    #[arg(long, default_value_t = 0)]
    pub learners: u8,
    /// Directory for the nodes' data (node i in DIR/node-i) and logs
    /// (DIR/node-i.log).
    #[arg(long, value_name = "DIR", default_value = "./pinion-cluster")]
    pub data_dir: PathBuf,
    /// Extra flags for every node's `pinion serve` (repeat), e.g.
    /// `--serve-arg=--max-payload=1024`.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
}

/// `pinion cluster status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Any node's HTTP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7452")]
    pub http: String,
    /// Print the node's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pinion cluster …`.
pub fn run(c: ClusterCommand) -> Result<(), Failure> {
    match c {
        ClusterCommand::Local(a) => local(a),
        ClusterCommand::Status(a) => status(a),
        ClusterCommand::Add(a) => {
            let op = pb::admin_request::Op::Add(pb::AddNode {
                id: a.id,
                node: Some(pb::Node {
                    raft: a.node_raft,
                    publish: a.publish,
                    subscribe: a.subscribe,
                    http: a.http,
                }),
                voter: a.voter,
            });
            print_all(&format!(
                "{}\n",
                admin(&a.raft, op, Duration::from_secs(a.timeout), Some(&a.tls))?
            ))
        }
        ClusterCommand::Remove(a) => print_all(&format!(
            "{}\n",
            admin(
                &a.raft,
                pb::admin_request::Op::Remove(a.id),
                Duration::from_secs(a.timeout),
                Some(&a.tls),
            )?
        )),
    }
}

/// Sends a membership change to `raft` (following the leader it names,
/// at most three times) and prints the membership in effect after it.
fn admin(
    raft: &str,
    op: pb::admin_request::Op,
    timeout: Duration,
    tls: Option<&crate::TlsArgs>,
) -> Result<String, Failure> {
    use pinion_proto::Message as _;
    let mut url = raft.to_string();
    for _ in 0..3 {
        let opts = pinion::Options {
            recv_timeout: Some(timeout),
            req_resend: None,
            ..pinion::Options::default()
        };
        let io =
            |e: pinion::Error| Failure::new(crate::failure::code_for(&e), format!("{url}: {e}"));
        let s = pinion::blocking::Socket::with_options(pinion::Protocol::Req0, opts).map_err(io)?;
        if let (true, Some(t)) = (url.starts_with("tls+tcp://"), tls) {
            let cfg = t
                .dialer()
                .map_err(|e| Failure::usage(format!("{e}; check --cacert, --cert and --key")))?;
            s.set_tls(cfg);
        }
        s.dial(&url).map_err(io)?;
        let req = pb::RaftRequest {
            from: 0,
            to: 0,
            rpc: Some(pb::raft_request::Rpc::Admin(pb::AdminRequest {
                op: Some(op.clone()),
            })),
        };
        s.send(req.encode_to_vec()).map_err(io)?;
        let body = s.recv().map_err(io)?;
        let reply = pb::RaftReply::decode(body)
            .map_err(|e| Failure::new(exit::IO, format!("{url}: malformed reply: {e}")))?;
        let a = match reply.result {
            Some(pb::raft_reply::Result::Admin(a)) => a,
            Some(pb::raft_reply::Result::Error(e)) => {
                return Err(Failure::new(exit::IO, format!("{url}: {e}")))
            }
            _ => return Err(Failure::new(exit::IO, format!("{url}: unexpected reply"))),
        };
        if let Some(e) = a.error {
            return Err(Failure::new(exit::IO, format!("{url}: {e}")));
        }
        if let Some(leader) = a.leader_raft {
            if leader.is_empty() {
                return Err(Failure::new(
                    exit::IO,
                    format!("{url}: no leader right now; retry"),
                ));
            }
            url = leader;
            continue;
        }
        let m = a.membership.unwrap_or_default();
        let voters: Vec<Vec<u64>> = m.configs.iter().map(|c| c.ids.clone()).collect();
        let mut all: Vec<u64> = m.nodes.iter().map(|n| n.id).collect();
        all.sort_unstable();
        return Ok(format!(
            "done (asked {url}); voters {voters:?}, nodes {all:?}"
        ));
    }
    Err(Failure::new(
        exit::IO,
        "the leader moved three times; retry",
    ))
}

/// Node `i`'s addresses.
struct Addrs {
    raft: String,
    publish: String,
    subscribe: String,
    http: String,
}

fn addrs(i: u8) -> Addrs {
    let ip = format!("127.0.0.{i}");
    Addrs {
        raft: format!("tcp://{ip}:7460"),
        publish: format!("tcp://{ip}:7450"),
        subscribe: format!("tcp://{ip}:7451"),
        http: format!("{ip}:7452"),
    }
}

/// A plain HTTP GET (the hub's own port; no client library needed).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let sa = addr
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            addr.to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .map_err(|e: std::io::Error| e)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

fn local(a: LocalArgs) -> Result<(), Failure> {
    if !(1..=9).contains(&a.nodes) {
        return Err(Failure::usage("--nodes must be between 1 and 9"));
    }
    if a.nodes + a.learners > 9 {
        return Err(Failure::usage("--nodes plus --learners must be at most 9"));
    }
    let total = a.nodes + a.learners;
    std::fs::create_dir_all(&a.data_dir).map_err(|e| {
        Failure::new(
            exit::IO,
            format!("cannot create {}: {e}", a.data_dir.display()),
        )
    })?;
    // Block the signals before the children exist; wait for them below.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Failure::new(exit::IO, format!("cannot install signal handlers: {e}")))?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(exit::IO, format!("cannot find this program: {e}")))?;
    let peers: Vec<String> = (1..=a.nodes)
        .map(|i| {
            let x = addrs(i);
            format!(
                "--peer={i}={},{},{},{}",
                x.raft, x.publish, x.subscribe, x.http
            )
        })
        .collect();
    let mut children: Vec<(u8, Child, PathBuf)> = Vec::new();
    let stop_all = |children: &mut Vec<(u8, Child, PathBuf)>| {
        for (_, c, _) in children.iter() {
            // SIGTERM: each node shuts down gracefully (std only has SIGKILL).
            let _ = pinion_runtime::sys::terminate(c.id());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, c, _) in children.iter_mut() {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    };
    for i in 1..=total {
        let x = addrs(i);
        let dir = a.data_dir.join(format!("node-{i}"));
        let log = a.data_dir.join(format!("node-{i}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| Failure::new(exit::IO, format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Failure::new(exit::IO, e.to_string()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen={}", x.publish))
            .arg(format!("--subscribe={}", x.subscribe))
            .arg(format!("--http={}", x.http))
            .arg(format!("--node-id={i}"))
            .arg(format!("--raft={}", x.raft))
            .args(&peers)
            // A learner names itself too (a node must be among its
            // peers), but the voters do not: it is added below.
            .args((i > a.nodes).then(|| {
                format!(
                    "--peer={i}={},{},{},{}",
                    x.raft, x.publish, x.subscribe, x.http
                )
            }))
            .arg("--stats-every=0")
            // The nodes share this machine's CPUs: each pinning its core
            // i to CPU i would make them take turns there.
            .arg("--pin-threads=false")
            .args(&a.serve_arg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match cmd.spawn() {
            Ok(c) => children.push((i, c, dir)),
            Err(e) => {
                stop_all(&mut children);
                return Err(Failure::new(
                    exit::IO,
                    format!("cannot start node {i}: {e}"),
                ));
            }
        }
    }
    // Up = its HTTP port answers /healthz; then a leader must exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 0..children.len() {
        let i = children[k].0;
        loop {
            if let Ok(Some(st)) = children[k].1.try_wait() {
                let log = a.data_dir.join(format!("node-{i}.log"));
                let msg = format!("node {i} exited at start ({st}); see {}", log.display());
                stop_all(&mut children);
                return Err(Failure::new(exit::IO, msg));
            }
            if http_get(&addrs(i).http, "/healthz", Duration::from_millis(500))
                .is_ok_and(|r| r.0 == 200)
            {
                break;
            }
            if Instant::now() > deadline {
                stop_all(&mut children);
                return Err(Failure::new(
                    exit::IO,
                    format!("node {i} did not come up within 30 s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        let leader = (1..=a.nodes).any(|i| {
            http_get(&addrs(i).http, "/leader", Duration::from_millis(500))
                .is_ok_and(|r| r.0 == 200)
        });
        if leader {
            break;
        }
        if Instant::now() > deadline {
            stop_all(&mut children);
            return Err(Failure::new(exit::IO, "no leader was elected within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in a.nodes + 1..=total {
        let x = addrs(i);
        let op = pb::admin_request::Op::Add(pb::AddNode {
            id: u64::from(i),
            node: Some(pb::Node {
                raft: x.raft.clone(),
                publish: x.publish.clone(),
                subscribe: x.subscribe.clone(),
                http: x.http.clone(),
            }),
            voter: false,
        });
        if let Err(e) = admin(&addrs(1).raft, op, Duration::from_secs(120), None) {
            stop_all(&mut children);
            return Err(Failure::new(
                e.code,
                format!("cannot add learner {i}: {}", e.message),
            ));
        }
    }
    {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (i, c, dir) in &children {
            let x = addrs(*i);
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            let _ = writeln!(
                out,
                "{{\"id\":{i},\"role\":\"{}\",\"pid\":{},\"publish\":\"{}\",\"subscribe\":\"{}\",\"http\":\"{}\",\"raft\":\"{}\",\"data_dir\":\"{}\"}}",
                if *i > a.nodes { "learner" } else { "voter" },
                c.id(),
                x.publish,
                x.subscribe,
                x.http,
                x.raft,
                dir.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        let _ = out.flush();
    }
    // Foreground until a signal; a node that dies is reported, not restarted.
    let mut reported = vec![false; children.len()];
    loop {
        if signals.pending().next().is_some() {
            break;
        }
        for (k, (i, c, _)) in children.iter_mut().enumerate() {
            if !reported[k] {
                if let Ok(Some(st)) = c.try_wait() {
                    eprintln!("pinion: node {i} exited ({st}); not restarted");
                    reported[k] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_all(&mut children);
    Ok(())
}

fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let at = json.find(&k)? + k.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// Appends one formatted line to a `String`.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes `text` to stdout; a closed stdout (`| head`) ends quietly.
fn print_all(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .map_err(|_| Failure::quiet())
}

fn status(a: StatusArgs) -> Result<(), Failure> {
    let mut out = String::new();
    let (code, body) = http_get(&a.http, "/cluster", Duration::from_secs(3))
        .map_err(|e| Failure::new(exit::IO, format!("{}: {e}", a.http)))?;
    if code != 200 {
        return Err(Failure::new(exit::IO, format!("{}: HTTP {code}", a.http)));
    }
    if a.json {
        outln!(out, "{body}");
        return print_all(&out);
    }
    if body.contains("\"single_node\":true") {
        outln!(out, "{}: a single node (no cluster settings)", a.http);
        return print_all(&out);
    }
    // Per-peer match and lag are known to the leader: ask it when this
    // node does not lead.
    let mut body = body;
    if json_field(&body, "role") != Some("leader") {
        if let Some(leader) = json_field(&body, "leader").and_then(|l| l.parse::<u64>().ok()) {
            let key = format!("{{\"id\":{leader},");
            let http = body
                .split("\"nodes\":")
                .nth(1)
                .and_then(|nodes| nodes.find(&key).map(|at| &nodes[at..]))
                .and_then(|n| json_field(n, "http"))
                .map(str::to_string);
            if let Some(Ok((200, b))) =
                http.map(|h| http_get(&h, "/cluster", Duration::from_secs(1)))
            {
                body = b;
            }
        }
    }
    let f = |k| json_field(&body, k).unwrap_or("?").to_string();
    outln!(out, "node:     {} ({})", f("id"), f("role"));
    outln!(out, "term:     {}", f("term"));
    outln!(out, "leader:   {}", f("leader"));
    outln!(out, "log head: {} (next Raft index)", f("log_next"));
    outln!(out, "applied:  {} (next Raft index)", f("applied_next"));
    // The nodes, each asked for its own view.
    let nodes = body.split("{\"id\":").skip(2);
    outln!(
        out,
        "{:<4} {:<8} {:<24} {:>10} {:>10} {:>8}",
        "id",
        "role",
        "http",
        "log_next",
        "applied",
        "lag"
    );
    let log_next: u64 = f("log_next").parse().unwrap_or(0);
    for n in nodes {
        let n = format!("{{\"id\":{n}");
        let id = json_field(&n, "id").unwrap_or("?").to_string();
        let http = json_field(&n, "http").unwrap_or("").to_string();
        let lag = json_field(&n, "match_next")
            .and_then(|m| m.parse::<u64>().ok())
            .map(|m| log_next.saturating_sub(m).to_string())
            .unwrap_or_else(|| "-".into());
        let (role, ln, ap) = match http_get(&http, "/cluster", Duration::from_secs(1)) {
            Ok((200, b)) => (
                json_field(&b, "role").unwrap_or("?").to_string(),
                json_field(&b, "log_next").unwrap_or("?").to_string(),
                json_field(&b, "applied_next").unwrap_or("?").to_string(),
            ),
            _ => ("down".into(), "-".into(), "-".into()),
        };
        outln!(
            out,
            "{id:<4} {role:<8} {http:<24} {ln:>10} {ap:>10} {lag:>8}"
        );
    }
    print_all(&out)
}
