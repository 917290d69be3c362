//! The hub as a three-node cluster of real `pinion serve` processes on
//! loopback addresses (127.0.0.11-13, free ports): ACK from the leader only,
//! NOT_LEADER naming the leader from the others, a subscriber on a
//! follower seeing every committed message once and in order, kill -9 of
//! the leader and a new one elected, resends answered as duplicates at
//! their original offsets, the old leader restarted and caught up,
//! identical logs that verify. And `pinion cluster local`.
//!
//! The network-namespace + HAProxy nemesis test is separate (issue 12).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pinion::blocking::Socket;
use pinion::Protocol;
use pinion_proto::{reply, Code, Delivery, Message};

use support::*;

#[test]
fn three_processes_ack_on_commit_fail_over_and_agree() {
    let dir = temp_dir("three");
    // Every node up (its HTTP port answers), then a leader.
    let (mut nodes, peers) = cluster(&dir, 10);
    let first = leader(&nodes, Duration::from_secs(30));
    let follower = *nodes.keys().find(|&&id| id != first).unwrap();

    // A subscriber on a follower, from the start of the log.
    // Read only at the end: a SUB socket drops what does not fit its
    // receive queue (as NNG's does), so make it hold every delivery.
    let sub_opts = pinion::Options {
        recv_buffer: 4096,
        ..timeout_opts()
    };
    let sub = Socket::with_options(Protocol::Sub0, sub_opts).unwrap();
    sub.subscribe("").unwrap();
    sub.dial(&nodes[&follower].spec.subscribe).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // A follower refuses and names the leader.
    let to_follower = req_to(&nodes[&follower].spec.publish);
    let r = publish(&to_follower, [9; 16], 1, "refused");
    match &r.result {
        Some(reply::Result::Nack(n)) => {
            assert_eq!(n.code(), Code::NotLeader);
            assert_eq!(
                n.leader.as_deref(),
                Some(nodes[&first].spec.publish.as_str())
            );
        }
        other => panic!("a follower answered {other:?}"),
    }

    // The leader acknowledges; offsets increase.
    let client = [7u8; 16];
    let to_leader = req_to(&nodes[&first].spec.publish);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // seq -> offset
    for seq in 1..=200u64 {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        let (offset, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
        assert!(!dup);
        acked.insert(seq, offset);
    }

    // kill -9 of the leader; another node takes over.
    let t0 = Instant::now();
    {
        let n = nodes.get_mut(&first).unwrap();
        let mut c = n.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let second = leader(&nodes, Duration::from_secs(30));
    let failover = t0.elapsed();
    assert_ne!(second, first);
    let to_leader = req_to(&nodes[&second].spec.publish);
    // Resends of committed messages: duplicates at their original offsets.
    for (&seq, &offset) in &acked {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        assert_eq!(ack(&r), Some((offset, true)), "resend of seq {seq}: {r:?}");
    }
    for seq in 201..=250u64 {
        let r = publish(&to_leader, client, seq, &format!("m{seq}"));
        let (offset, dup) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
        assert!(!dup);
        acked.insert(seq, offset);
    }

    // The old leader comes back with the same flags and catches up.
    {
        let n = nodes.get_mut(&first).unwrap();
        n.child = Some(start(&n.spec, &peers, &dir));
    }
    let last = *acked.values().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = nodes.values().all(|n| {
            http_get(&n.spec.http, "/cluster").is_some_and(|(_, b)| {
                let k = "\"applied_next\":";
                b.find(k)
                    .and_then(|at| {
                        b[at + k.len()..]
                            .split([',', '}'])
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .is_some_and(|a| a > last)
            })
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The subscriber on the follower (which never went down) saw every
    // committed message once, in order, at its offset.
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let m = sub
            .recv()
            .unwrap_or_else(|e| panic!("a delivery after {} of {}: {e}", seen.len(), acked.len()));
        let at = m
            .iter()
            .position(|&b| b == 0)
            .expect("topic, NUL, delivery");
        let d = Delivery::decode(&m[at + 1..]).unwrap();
        seen.push((d.seq(), d.offset()));
    }
    let want: Vec<(u64, u64)> = acked.iter().map(|(s, o)| (*s, *o)).collect();
    assert_eq!(seen, want);

    // Stop everything gracefully; the logs are identical and verify.
    for n in nodes.values_mut() {
        if let Some(c) = &n.child {
            pinion_runtime_terminate(c.id());
        }
    }
    for n in nodes.values_mut() {
        if let Some(mut c) = n.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "node {} did not stop on SIGTERM",
                    n.spec.id
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let logs: Vec<_> = nodes.values().map(|n| log_messages(&n.spec.dir)).collect();
    assert_eq!(
        logs[0].len(),
        acked.len(),
        "each acked message exactly once"
    );
    for (seq, off) in &acked {
        let hits: Vec<_> = logs[0]
            .iter()
            .filter(|m| m.1 == client && m.2 == *seq)
            .collect();
        assert_eq!(hits.len(), 1, "seq {seq}");
        assert_eq!(hits[0].0, *off);
        assert_eq!(hits[0].3, format!("m{seq}").into_bytes());
    }
    assert!(logs.iter().all(|l| *l == logs[0]), "the three logs differ");
    for n in nodes.values() {
        let out = Command::new(PINION)
            .args(["log", "verify"])
            .arg(n.spec.dir.join("pinion.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("failover: kill -9 of the leader to /leader 200 elsewhere in {failover:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn pinion_runtime_terminate(pid: u32) {
    pinion_runtime::sys::terminate(pid).unwrap();
}

#[test]
fn cluster_local_prints_every_node_and_stops_them_all() {
    let dir = temp_dir("local");
    let mut parent = Command::new(PINION)
        .args([
            "cluster",
            "local",
            "--nodes",
            "3",
            "--learners",
            "1",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    for id in 1..=4 {
        let line = lines.next().expect("a line per node").unwrap();
        let role = if id == 4 { "learner" } else { "voter" };
        assert!(line.contains(&format!("\"role\":\"{role}\"")), "{line}");
        for key in [
            "\"id\"",
            "\"pid\"",
            "\"publish\"",
            "\"subscribe\"",
            "\"http\"",
            "\"data_dir\"",
        ] {
            assert!(line.contains(key), "{line}");
        }
        assert!(line.contains(&format!("\"id\":{id},")), "{line}");
        assert!(line.contains(&format!("tcp://127.0.0.{id}:7450")), "{line}");
        let pid: u32 = line
            .split("\"pid\":")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        pids.push(pid);
    }
    // Exactly one leader.
    let leaders = (1..=3)
        .filter(|i| http_get(&format!("127.0.0.{i}:7452"), "/leader").is_some_and(|r| r.0 == 200))
        .count();
    assert_eq!(leaders, 1);
    // The learner holds the log (it was added only once caught up) and
    // never leads.
    let (code, body) = http_get("127.0.0.4:7452", "/cluster").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"role\":\"learner\""), "{body}");
    pinion_runtime_terminate(parent.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while parent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cluster local did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        // Gone, or a zombie of a parent that exited (reaped by init).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "node {pid} still runs: {stat}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A byte flipped in the middle of a follower's log: without the flag the
/// node refuses to start (corruption is never skipped); with
/// `--rebuild-damaged-log` it moves the file aside (kept, byte for byte)
/// and rejoins, and the leader fills its log again: identical to the
/// others, verified.
#[test]
fn a_follower_with_a_damaged_log_rebuilds_from_the_leader() {
    let dir = temp_dir("rebuild");
    let (mut nodes, peers) = cluster(&dir, 20);
    let l = leader(&nodes, Duration::from_secs(30));
    let f = *nodes.keys().find(|&&id| id != l).unwrap();
    let req = req_to(&nodes[&l].spec.publish);
    for seq in 1..=300u64 {
        let r = publish(&req, [5; 16], seq, &format!("m{seq}"));
        assert!(ack(&r).is_some(), "{r:?}");
    }
    // Let the follower apply everything, then stop it and damage its log.
    std::thread::sleep(Duration::from_millis(500));
    stop(nodes.get_mut(&f).unwrap());
    let log = nodes[&f].spec.dir.join("pinion.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let valid = pinion_journal::verify(&log).unwrap().valid_bytes as usize;
    bytes[valid / 2] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();
    assert!(
        pinion_journal::verify(&log).is_err(),
        "the flip went unnoticed"
    );

    // Without the flag: refused, nothing touched.
    let out = Command::new(PINION)
        .arg("serve")
        .arg(format!("--data-dir={}", nodes[&f].spec.dir.display()))
        .arg(format!("--listen={}", nodes[&f].spec.publish))
        .arg(format!("--subscribe={}", nodes[&f].spec.subscribe))
        .arg(format!("--http={}", nodes[&f].spec.http))
        .arg(format!("--node-id={f}"))
        .arg(format!("--raft={}", nodes[&f].spec.raft))
        .args(&peers)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes);

    // With it: the damaged file is kept aside, the node rejoins.
    {
        let n = nodes.get_mut(&f).unwrap();
        let mut args = peers.clone();
        args.push("--rebuild-damaged-log".into());
        n.child = Some(start(&n.spec, &args, &dir));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader_log = nodes[&l].spec.dir.clone();
    loop {
        if try_count(&nodes[&f].spec.dir) == Some(300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let aside: Vec<_> = std::fs::read_dir(&nodes[&f].spec.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pinion.log.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged log is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes);
    for n in nodes.values_mut() {
        stop(n);
    }
    assert_eq!(log_messages(&nodes[&f].spec.dir), log_messages(&leader_log));
    let out = Command::new(PINION)
        .args(["log", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(format!("node-{f}.out"))).unwrap();
    assert!(text.contains("THE LOG IS DAMAGED"), "logged loudly");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pinion cluster add` (learner, caught up, then voter) and `remove` on a
/// live cluster, with publishing before and after each change and no ACK
/// lost.
#[test]
fn membership_changes_on_a_live_cluster() {
    let dir = temp_dir("members");
    let (mut nodes, mut peers) = cluster(&dir, 30);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut publish_some = |nodes: &BTreeMap<u64, Node>, from: u64, n: u64| {
        let l = leader(nodes, Duration::from_secs(30));
        let req = req_to(&nodes[&l].spec.publish);
        for seq in from..from + n {
            let r = publish(&req, [3; 16], seq, &format!("m{seq}"));
            let (off, _) = ack(&r).unwrap_or_else(|| panic!("seq {seq}: {r:?}"));
            acked.insert(seq, off);
        }
    };
    publish_some(&nodes, 1, 100);

    // Node 4, started on its own (its log empty; it does not form a
    // cluster), added as a learner, then made a voter.
    let text = add_node(&mut nodes, &mut peers, &dir, (4, 30, 2), "--voter");
    assert!(text.contains("voters [[1, 2, 3, 4]]"), "{text}");
    let mut r = pinion_journal::Reader::open(&nodes[&4].spec.dir.join("pinion.log")).unwrap();
    let mut n4 = 0;
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        if rec.kind == pinion_journal::RecordKind::Message {
            n4 += 1;
        }
    }
    assert_eq!(n4, 100, "the learner caught up before it votes");
    publish_some(&nodes, 101, 100);

    // Remove node 2 (whatever its role).
    let (ok, text) = run_pinion(&[
        "cluster".into(),
        "remove".into(),
        format!("--raft={}", nodes[&3].spec.raft),
        "--id=2".into(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("voters [[1, 3, 4]]"), "{text}");
    stop(nodes.get_mut(&2).unwrap());
    nodes.remove(&2);
    publish_some(&nodes, 201, 100);

    // Every ACK is in the logs of 1, 3 and 4, at its offset; they agree.
    std::thread::sleep(Duration::from_millis(500));
    for n in nodes.values_mut() {
        stop(n);
    }
    let logs: Vec<_> = nodes.values().map(|n| log_messages(&n.spec.dir)).collect();
    assert!(logs.iter().all(|l| *l == logs[0]), "the logs differ");
    let got: BTreeMap<u64, u64> = logs[0].iter().map(|m| (m.2, m.0)).collect();
    assert_eq!(got, acked);
    let _ = std::fs::remove_dir_all(&dir);
}
