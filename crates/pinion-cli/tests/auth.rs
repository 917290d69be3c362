//! A hub with authentication on (`pinion serve --auth-key`), driven through
//! its real ports: publishes NACKed UNAUTHENTICATED or FORBIDDEN (the
//! connection kept), WebSocket subscribers refused with 4401/4403 and cut
//! with 4419 when their token expires, plain SP subscribers refused, the
//! admin pages behind an admin token, every hostile token refused for its
//! own reason and counted in `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion::publisher::{Outcome, Publisher, PublisherOptions};
use pinion::subscriber::{Error as SubError, Event, Subscriber, SubscriberOptions};
use pinion_auth::{Keys, Permissions, Rules, Verifier};
use pinion_proto::{Code, Message as _, Publish};

const PINION: &str = env!("CARGO_BIN_EXE_pinion");

struct Hub {
    child: Child,
    dir: PathBuf,
    port: u16,
    stderr: Arc<Mutex<Vec<u8>>>,
    keys: Keys,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Hub {
    fn start(name: &str) -> Hub {
        Hub::start_with(name, |_| Vec::new())
    }

    /// With extra `serve` arguments, given the hub's directory.
    fn start_with(name: &str, extra: impl FnOnce(&std::path::Path) -> Vec<String>) -> Hub {
        let dir = std::env::temp_dir().join(format!("pinion-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys::generate_ed25519().unwrap();
        let files = keys.write(&dir.join("hub.key")).unwrap();
        let port = free_port();
        let extra = extra(&dir);
        let listen = if extra.iter().any(|a| a == "--tls-cert") {
            format!("tls+tcp://127.0.0.1:{port}")
        } else {
            format!("tcp://127.0.0.1:{port}")
        };
        let data = dir.join("data");
        let mut child = Command::new(PINION)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--listen", &listen, "--threads", "2", "--stats-every", "0"])
            .args(["--subscribe", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--auth-key")
            .arg(&files[1])
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pinion serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let mut hub = Hub {
            child,
            dir,
            port,
            stderr,
            keys,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = hub.child.try_wait() {
                panic!("pinion serve exited early ({st}):\n{}", hub.log());
            }
            if hub.log().contains("serving HTTP") {
                break;
            }
            assert!(Instant::now() < deadline, "hub not ready:\n{}", hub.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        hub
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn after(&self, key: &str) -> String {
        let log = self.log();
        let at = log
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in the log:\n{log}"));
        let rest = &log[at + key.len()..];
        rest[..rest.find(|c: char| c == '/' || c.is_whitespace()).unwrap()].to_string()
    }

    fn http(&self) -> String {
        self.after("dashboard=http://")
    }

    fn sp_sub_url(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("listening for subscribers"))
            .unwrap();
        let at = line.find("tcp://").unwrap();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .to_string()
    }

    fn token(&self, perms: Permissions, ttl: u64) -> String {
        self.keys
            .issue("tester", &perms, Verifier::now(), ttl)
            .unwrap()
    }

    /// `GET path` with optional extra header lines: (status, body).
    fn get(&self, path: &str, extra: &str) -> (u16, String) {
        let addr = self.http();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn admin(&self) -> String {
        self.token(
            Permissions {
                admin: true,
                ..Default::default()
            },
            600,
        )
    }

    fn refused(&self, reason: &str) -> u64 {
        let (status, body) = self.get(
            "/metrics",
            &format!("Authorization: Bearer {}\r\n", self.admin()),
        );
        assert_eq!(status, 200, "{body}");
        let series = format!("pinion_auth_refused_total{{reason=\"{reason}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // by our child's PID
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

fn publish_one(p: &mut Publisher, topic: &str) -> Outcome {
    block(async {
        p.send(topic, "x").await.unwrap();
        p.recv().await.unwrap()
    })
}

fn nack_code(o: &Outcome) -> Option<Code> {
    match o {
        Outcome::Nack { code, .. } => Some(*code),
        Outcome::Ack { .. } => None,
    }
}

fn orders() -> Permissions {
    Permissions {
        publish: Rules::allow(["orders."]),
        subscribe: Rules::allow(["orders."]),
        admin: false,
    }
}

#[test]
fn publishes_need_a_token_allowing_their_topic() {
    let hub = Hub::start("publish");
    assert!(hub.log().contains("authentication ON"), "{}", hub.log());
    let url = format!("tcp://127.0.0.1:{}", hub.port);
    let connect = |token: Option<String>| {
        block(Publisher::connect(
            &url,
            PublisherOptions {
                token,
                ..PublisherOptions::default()
            },
        ))
        .unwrap()
    };
    // No token: UNAUTHENTICATED, and the same connection then publishes
    // once it has one.
    let mut p = connect(None);
    assert_eq!(
        nack_code(&publish_one(&mut p, "orders.1")),
        Some(Code::Unauthenticated)
    );
    p.set_token(Some(hub.token(orders(), 600)));
    assert_eq!(nack_code(&publish_one(&mut p, "orders.1")), None);
    // Another topic: FORBIDDEN.
    assert_eq!(
        nack_code(&publish_one(&mut p, "prices.1")),
        Some(Code::Forbidden)
    );
    assert_eq!(nack_code(&publish_one(&mut p, "orders.2")), None);

    // Hostile tokens, each for its reason.
    let other = Keys::generate_ed25519().unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let exp = Verifier::now() + 600;
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"exp":{exp},"pinion":{{"pub":{{"allow":[""]}}}}}}"#
        ))
    );
    let hs = Keys::generate_hs256().unwrap();
    let cases = [
        ("garbage", "not a token at all".to_string()),
        // Over the token limit (8 KiB) but within the hub's request limit:
        // a NACK that says so.
        ("too_large", "x".repeat(12 * 1024)),
        ("alg_none", none),
        (
            "bad_signature",
            other.issue("eve", &orders(), Verifier::now(), 600).unwrap(),
        ),
        (
            "wrong_algorithm",
            hs.issue("eve", &orders(), Verifier::now(), 600).unwrap(),
        ),
        (
            "expired",
            hub.keys
                .issue("eve", &orders(), Verifier::now() - 100, 10)
                .unwrap(),
        ),
    ];
    for (what, token) in cases {
        let mut p = connect(Some(token));
        let o = publish_one(&mut p, "orders.1");
        assert_eq!(nack_code(&o), Some(Code::Unauthenticated), "{what}: {o:?}");
    }
    // A 1 MB token: the request is over the publisher port's size limit,
    // refused from its length prefix (the connection is cut, counted as
    // oversize); the other publisher is untouched.
    let big = Publish {
        client_id: Some(vec![7; 16].into()),
        seq: Some(1),
        topic: Some("orders.1".into()),
        payload: Some(b"x".to_vec().into()),
        token: Some("x".repeat(1 << 20)),
    };
    let req = pinion::blocking::Socket::new(pinion::Protocol::Req0).unwrap();
    req.dial(&url).unwrap();
    req.send(big.encode_to_vec()).unwrap();
    assert!(req.recv_timeout(Some(Duration::from_millis(1500))).is_err());
    assert_eq!(nack_code(&publish_one(&mut p, "orders.3")), None);
    for reason in [
        "missing",
        "malformed",
        "too_large",
        "alg_none",
        "bad_signature",
        "wrong_algorithm",
        "expired",
        "forbidden",
    ] {
        assert!(hub.refused(reason) >= 1, "{reason} not counted");
    }
}

#[test]
fn a_token_that_expires_stops_publishes_and_closes_subscribers() {
    let hub = Hub::start("expiry");
    let token = hub.token(orders(), 3);
    let url = format!("tcp://127.0.0.1:{}", hub.port);
    let mut p = block(Publisher::connect(
        &url,
        PublisherOptions {
            token: Some(token.clone()),
            ..PublisherOptions::default()
        },
    ))
    .unwrap();
    let mut opts = SubscriberOptions::new([format!("ws://{}", hub.http())]);
    opts.topics = vec!["orders.".into()];
    opts.from = Some(0);
    opts.token = Some(token);
    opts.give_up_after = Some(Duration::from_secs(2));
    let mut sub = Subscriber::start(opts).unwrap();
    assert_eq!(nack_code(&publish_one(&mut p, "orders.1")), None);
    let got = block(async {
        loop {
            match sub.next_event().await {
                Ok(Event::Delivery(m)) => break m,
                Ok(_) => continue,
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    assert_eq!(got.offset, 0);
    // Past the expiry: the subscriber is closed with 4419 (and, trying
    // again with the same token, refused with 4401); the publisher is
    // NACKed.
    let t0 = Instant::now();
    let first_close = block(async {
        loop {
            match sub.next_event().await {
                Ok(Event::Disconnected { error, .. }) => break error,
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    });
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    match first_close {
        SubError::ClosedByHub { code, reason } => {
            assert_eq!(code, Some(4419), "{reason}");
            assert!(reason.contains("expired"), "{reason}");
        }
        e => panic!("expected a close by the hub, got {e}"),
    }
    let o = publish_one(&mut p, "orders.2");
    assert_eq!(nack_code(&o), Some(Code::Unauthenticated), "{o:?}");
    assert!(hub.refused("expired") >= 2);
}

/// A raw WebSocket client to `/sub`: the close code it gets.
fn sub_close_code(hub: &Hub, query: &str, extra: &str) -> u16 {
    let addr = hub.http();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /sub?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frame = &out[head_end..];
    assert_eq!(frame[0], 0x88, "not a close frame: {frame:?}");
    u16::from_be_bytes([frame[2], frame[3]])
}

#[test]
fn subscribers_are_refused_with_close_codes_and_sp_ones_outright() {
    let hub = Hub::start("subscribe");
    let ok = hub.token(orders(), 600);
    assert_eq!(sub_close_code(&hub, "topic=orders.", ""), 4401);
    assert_eq!(sub_close_code(&hub, "topic=orders.&token=junk", ""), 4401);
    assert_eq!(
        sub_close_code(&hub, &format!("topic=prices&token={ok}"), ""),
        4403
    );
    // No topic = every topic: not allowed by an orders. token.
    assert_eq!(sub_close_code(&hub, &format!("token={ok}"), ""), 4403);
    assert_eq!(
        sub_close_code(
            &hub,
            "topic=orders.eu&topic=prices",
            &format!("Authorization: Bearer {ok}\r\n")
        ),
        4403
    );
    // Allowed, by header or query: the subscription starts (no close).
    let mut opts = SubscriberOptions::new([format!("ws://{}", hub.http())]);
    opts.topics = vec!["orders.eu".into()];
    opts.token = Some(ok);
    opts.give_up_after = Some(Duration::from_secs(3));
    let mut sub = Subscriber::start(opts).unwrap();
    let ev = block(sub.next_event()).unwrap();
    assert!(matches!(ev, Event::Connected { .. }), "{ev:?}");
    drop(sub);

    // Plain SP: no place for a credential, refused.
    let sp = pinion::blocking::Socket::new(pinion::Protocol::Sub0).unwrap();
    sp.subscribe("").unwrap();
    let _ = sp.dial_background(&hub.sp_sub_url());
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.refused("plain_sp_subscriber") == 0 {
        assert!(Instant::now() < deadline, "plain SP subscriber not refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sp.stats().pipes_added, 0);
    assert!(hub.refused("forbidden") >= 3);
    assert!(hub.refused("missing") >= 1);
}

#[test]
fn the_admin_pages_need_an_admin_token() {
    let hub = Hub::start("admin");
    for path in ["/", "/metrics"] {
        let (status, _) = hub.get(path, "");
        assert_eq!(status, 401, "{path}");
        let user = hub.token(orders(), 600);
        let (status, _) = hub.get(path, &format!("Authorization: Bearer {user}\r\n"));
        assert_eq!(status, 403, "{path}");
        let (status, body) = hub.get(&format!("{path}?token={}", hub.admin()), "");
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Health checks stay open for load balancers.
    assert_eq!(hub.get("/healthz", "").0, 200);
    assert_eq!(hub.get("/leader", "").0, 200);
}

/// A CA, the hub's certificate (127.0.0.1) and client certificates for
/// `alice` and `bob`, as PEM files in `dir`.
fn tls_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for who in ["hub", "alice", "bob"] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("{who}.example")]).unwrap();
        if who == "hub" {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.distinguished_name.push(DnType::CommonName, who);
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{who}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn tls_publishers_authenticate_by_client_certificate_or_token() {
    let hub = Hub::start_with("tls", |dir| {
        tls_files(dir);
        let cfg = dir.join("hub.toml");
        let keys = dir.join("hub.key.pub");
        std::fs::write(
            &cfg,
            format!(
                "[auth]\nkeys = [{keys:?}]\n[[auth.cert]]\nname = \"alice\"\npub = [\"orders.\"]\n"
            ),
        )
        .unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        vec![
            "--config".into(),
            cfg.display().to_string(),
            "--tls-cert".into(),
            p("hub.pem"),
            "--tls-key".into(),
            p("hub.key"),
            "--tls-ca".into(),
            p("ca.pem"),
            "--tls-client-auth".into(),
            "optional".into(),
        ]
    });
    let url = format!("tls+tcp://127.0.0.1:{}", hub.port);
    let ca = std::fs::read(hub.dir.join("ca.pem")).unwrap();
    let client = |who: Option<&str>, token: Option<String>| {
        let mut tls = pinion::TlsConfig::new().ca_pem(&ca).unwrap();
        if let Some(w) = who {
            let cert = std::fs::read(hub.dir.join(format!("{w}.pem"))).unwrap();
            let key = std::fs::read(hub.dir.join(format!("{w}.key"))).unwrap();
            tls = tls.own_cert_pem(&cert, &key).unwrap();
        }
        block(Publisher::connect(
            &url,
            PublisherOptions {
                token,
                tls: Some(tls),
                ..PublisherOptions::default()
            },
        ))
        .unwrap()
    };
    // alice's certificate is mapped to orders.: no token needed.
    let mut alice = client(Some("alice"), None);
    assert_eq!(nack_code(&publish_one(&mut alice, "orders.1")), None);
    assert_eq!(
        nack_code(&publish_one(&mut alice, "prices.1")),
        Some(Code::Forbidden)
    );
    // bob's is valid but mapped to nothing; no certificate at all: both
    // need a token.
    let mut bob = client(Some("bob"), None);
    assert_eq!(
        nack_code(&publish_one(&mut bob, "orders.1")),
        Some(Code::Unauthenticated)
    );
    let mut anon = client(None, Some(hub.token(orders(), 600)));
    assert_eq!(nack_code(&publish_one(&mut anon, "orders.2")), None);
    // A plain SP client on the TLS port is refused (counted as tls), and
    // nothing else is disturbed.
    let plain = pinion::blocking::Socket::with_options(
        pinion::Protocol::Req0,
        pinion::Options {
            handshake_timeout: Duration::from_secs(2),
            ..pinion::Options::default()
        },
    )
    .unwrap();
    assert!(plain
        .dial(&format!("tcp://127.0.0.1:{}", hub.port))
        .is_err());
    let (_, metrics) = hub.get(
        "/metrics",
        &format!("Authorization: Bearer {}\r\n", hub.admin()),
    );
    let tls_refused = metrics
        .lines()
        .find(|l| l.contains("reason=\"tls\"") && l.contains("port=\"pub\""))
        .unwrap_or_else(|| panic!("no tls refusal series:\n{metrics}"));
    assert!(!tls_refused.ends_with(" 0"), "{tls_refused}");
    assert_eq!(nack_code(&publish_one(&mut alice, "orders.3")), None);
}
