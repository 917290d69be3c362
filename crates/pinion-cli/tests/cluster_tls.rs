//! A 3-node cluster whose Raft links are mutual TLS (`--raft
//! tls+tcp://…` with `--tls-cert`, `--tls-key`, `--tls-ca`): it elects a
//! leader and acks publishes (so a majority fsynced over the TLS links),
//! and its Raft port refuses a plain client and a client without a
//! certificate.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use pinion::blocking::Socket;
use pinion::{Options, Protocol};
use support::*;

/// One certificate for every node (SANs 127.0.0.{base+1..=3}), its key and
/// the CA, as PEM files in `dir`.
fn node_certs(dir: &std::path::Path, base: u8) -> Vec<String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    for id in 1..=3u8 {
        p.subject_alt_names.push(SanType::IpAddress(
            format!("127.0.0.{}", base + id).parse().unwrap(),
        ));
    }
    p.distinguished_name.push(DnType::CommonName, "pinion node");
    let cert = p.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    vec![
        format!("--tls-cert={}", write("node.pem", cert.pem())),
        format!("--tls-key={}", write("node.key", key.serialize_pem())),
        format!("--tls-ca={}", write("ca.pem", ca.pem())),
    ]
}

#[test]
fn raft_over_mutual_tls_elects_and_acks() {
    let base = 80;
    let dir = temp_dir("cluster-tls");
    let tls = node_certs(&dir, base);
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let mut spec = NodeSpec::on(id, base, &dir);
        spec.raft = spec.raft.replacen("tcp://", "tls+tcp://", 1);
        nodes.insert(id, Node { spec, child: None });
    }
    let peers: Vec<String> = nodes
        .values()
        .map(|n| {
            let s = &n.spec;
            format!(
                "--peer={}={},{},{},{}",
                s.id, s.raft, s.publish, s.subscribe, s.http
            )
        })
        .chain(tls.iter().cloned())
        .collect();
    for n in nodes.values_mut() {
        n.child = Some(start(&n.spec, &peers, &dir));
    }
    let lead = leader(&nodes, Duration::from_secs(30));
    let req = req_to(&nodes[&lead].spec.publish);
    for seq in 1..=5 {
        let r = publish(&req, [9; 16], seq, &format!("m{seq}"));
        assert!(ack(&r).is_some(), "publish {seq}: {r:?}");
    }
    // The followers have the messages: they came over the TLS links.
    let follower = nodes.keys().copied().find(|id| *id != lead).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let head = cluster_field(&nodes[&lead].spec.http, "log_next").unwrap();
    while cluster_field(&nodes[&follower].spec.http, "applied_next").is_none_or(|a| a < head) {
        assert!(
            std::time::Instant::now() < deadline,
            "follower did not apply"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A plain SP client on a Raft port is refused.
    let raft_plain = nodes[&lead].spec.raft.replacen("tls+tcp://", "tcp://", 1);
    let opts = Options {
        handshake_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let plain = Socket::with_options(Protocol::Req0, opts.clone()).unwrap();
    assert!(
        plain.dial(&raft_plain).is_err(),
        "plain client accepted on a TLS Raft port"
    );
    // A TLS client that trusts the CA but has no certificate is refused
    // (the node links are mutual TLS).
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let anon = Socket::with_options(Protocol::Req0, opts).unwrap();
    anon.set_tls(pinion::TlsConfig::new().ca_pem(&ca).unwrap());
    match anon.dial(&nodes[&lead].spec.raft) {
        Err(pinion::Error::Peer(pinion::PeerError::Tls(_))) => {}
        other => panic!("a client without a certificate: {other:?}"),
    }
    // Membership changes go over the same mutual TLS: `pinion cluster
    // remove` with the node certificate.
    let gone = nodes.keys().copied().find(|id| *id != lead).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let mut args: Vec<String> = vec![
        "cluster".into(),
        "remove".into(),
        format!("--raft={}", nodes[&lead].spec.raft),
        format!("--id={gone}"),
        format!("--cacert={}", p("ca.pem")),
        format!("--cert={}", p("node.pem")),
        format!("--key={}", p("node.key")),
    ];
    let (ok, out) = run_pinion(&args);
    assert!(ok, "cluster remove over TLS failed: {out}");
    // Without a certificate the node refuses the admin connection.
    args.truncate(5);
    let (ok, out) = run_pinion(&args);
    assert!(!ok, "cluster remove without a certificate succeeded: {out}");
    assert!(out.contains("TLS"), "not refused for TLS: {out}");
    for n in nodes.values_mut() {
        stop(n);
    }
}
