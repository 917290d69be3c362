//! The hub (`pinion serve`): SP REQ over TCP, one `Publish` per request,
//! one `Reply` (ACK after fdatasync, or NACK) per answer.
//!
//! Wire: the 8-byte SP header (REQ = 0x30 out, REP = 0x31 expected back),
//! then messages framed as a u64 big-endian length + body; a request body is
//! a 4-byte big-endian request id with the top bit set, then the protobuf
//! `Publish`; a reply body is the same id, then the protobuf `Reply`.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pinion_core::wire::handshake::{decode_header, encode_header, HEADER_LEN};
use pinion_proto::{reply, Message, Publish, Reply};
use tokio::io::AsyncWriteExt;

use crate::driver::{connect, read_until, tcp_loop, Ctx, Decoded, Proto, Workload};
use crate::error::LoadgenError;
use crate::server::{free_port, is_executable, temp_dir, ServerGuard};

pub(crate) const NAME: &str = "pinion";
const REQ: u16 = 0x30;
const REP: u16 = 0x31;
/// Largest pipeline the request-id layout supports (12 bits of slot).
pub(crate) const MAX_PIPELINE: usize = 4096;
/// Largest reply body accepted (a Reply is tiny; a NACK reason is short).
const MAX_REPLY: u64 = 64 * 1024;

/// Starts `<exe> serve` on a free loopback port with a fresh data dir in the
/// same temp parent as the other targets.
pub(crate) fn start(exe: &Path, size: usize) -> Result<(ServerGuard, SocketAddr), LoadgenError> {
    launch(exe, size, "tcp", |_| Ok(Vec::new()))
}

/// Starts `<exe> serve` listening for publishers on `scheme://127.0.0.1:PORT`
/// (a free port), with a fresh data dir and the bench's config, plus the
/// flags `extra` returns (given the data dir, to write files into).
fn launch(
    exe: &Path,
    size: usize,
    scheme: &str,
    extra: impl FnOnce(&Path) -> Result<Vec<std::ffi::OsString>, LoadgenError>,
) -> Result<(ServerGuard, SocketAddr), LoadgenError> {
    if !is_executable(exe) {
        return Err(LoadgenError::MissingBinary {
            name: "pinion",
            looked: vec![exe.to_path_buf()],
            hint: "; build the hub with `cargo build --release -p pinion-cli`",
        });
    }
    let dir = temp_dir(NAME)?;
    let port = free_port()?;
    let conf = crate::server::bench_hub_config(dir.path())?;
    let extra = extra(dir.path())?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("-c")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("{scheme}://127.0.0.1:{port}"))
        .args(["--fsync", "always"])
        // Subscriber and HTTP ports: free ones (nobody subscribes here).
        .args(["--subscribe", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--max-payload")
        .arg(size.to_string())
        // A stats line per second on stderr: its `logged` and `commits`
        // counters give the hub's group-commit batch size (best effort, see
        // `hub_counters`).
        .args(["--stats-every", "1"])
        .args(extra);
    let mut guard = ServerGuard::spawn(NAME, cmd, dir)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    guard.wait_listening(addr)?;
    Ok((guard, addr))
}

/// What a `pinion-tls` client needs: the TLS settings trusting the hub's
/// test CA, the name to check, and a token allowing every topic.
pub(crate) struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub token: String,
}

/// Starts `<exe> serve` as [`start`] does, with its publisher port over
/// TLS (`tls+tcp://`, a certificate for 127.0.0.1 from a CA made here) and
/// authentication on (an Ed25519 key made here): returns the token and
/// TLS settings its clients use.
pub(crate) fn start_tls(
    exe: &Path,
    size: usize,
) -> Result<(ServerGuard, SocketAddr, TlsClient), LoadgenError> {
    let mut client = None;
    let (guard, addr) = launch(exe, size, "tls+tcp", |dir| {
        let (flags, c) = tls_setup(dir)?;
        client = Some(c);
        Ok(flags)
    })?;
    let client = client.ok_or_else(|| LoadgenError::Args("pinion-tls setup did not run".into()))?;
    Ok((guard, addr, client))
}

/// Writes the hub's certificate (127.0.0.1, from a CA made here) and a
/// token key into `dir`; returns the hub's flags for them and what its
/// clients need.
fn tls_setup(dir: &Path) -> Result<(Vec<std::ffi::OsString>, TlsClient), LoadgenError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let setup =
        |what: &str, e: String| LoadgenError::Args(format!("pinion-tls setup: {what}: {e}"));
    let ca_key = KeyPair::generate().map_err(|e| setup("CA key", e.to_string()))?;
    let mut p =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| setup("CA", e.to_string()))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p
        .self_signed(&ca_key)
        .map_err(|e| setup("CA", e.to_string()))?;
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().map_err(|e| setup("hub key", e.to_string()))?;
    let mut p = CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| setup("hub certificate", e.to_string()))?;
    p.subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(|e| setup("hub certificate", e.to_string()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| LoadgenError::io(format!("writing {}", path.display()), e))?;
        Ok::<_, LoadgenError>(path)
    };
    let cert_file = write("hub.pem", &cert.pem())?;
    let key_file = write("hub-key.pem", &key.serialize_pem())?;
    // The token key: the hub gets the public half.
    let keys =
        pinion_auth::Keys::generate_ed25519().map_err(|e| setup("token key", e.to_string()))?;
    let written = keys
        .write(&dir.join("token.key"))
        .map_err(|e| setup("token key", e.to_string()))?;
    let perms = pinion_auth::Permissions {
        publish: pinion_auth::Rules::allow([""]),
        ..Default::default()
    };
    let token = keys
        .issue("bench", &perms, pinion_auth::Verifier::now(), 86_400)
        .map_err(|e| setup("token", e.to_string()))?;
    let config = pinion_runtime::transport::tls::TlsConfig::new()
        .ca_pem(ca.pem().as_bytes())
        .and_then(|c| c.client_config())
        .map_err(|e| setup("client TLS", e.to_string()))?;
    let flags = vec![
        "--tls-cert".into(),
        cert_file.into(),
        "--tls-key".into(),
        key_file.into(),
        "--auth-key".into(),
        written[1].clone().into(),
    ];
    Ok((flags, TlsClient { config, token }))
}

/// The hub's cumulative `(logged, commits)` from the last `stats` line in
/// its log (`pinion serve` logs one per `--stats-every` seconds), if any.
pub(crate) fn hub_counters(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stats") && l.contains("commits"))?;
    // Strip ANSI colour sequences: ESC '[' ... 'm'.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = |k: &str| -> Option<u64> {
        plain.split_whitespace().find_map(|w| {
            w.strip_prefix(k)?
                .strip_prefix('=')?
                .trim_matches('"')
                .parse()
                .ok()
        })
    };
    Some((field("logged")?, field("commits")?))
}

/// `tcp://host:port` → a socket address.
pub(crate) fn parse_url(url: &str) -> Result<SocketAddr, LoadgenError> {
    let rest = url.strip_prefix("tcp://").ok_or_else(|| {
        LoadgenError::Args(format!(
            "--hub-url {url:?}: only tcp://HOST:PORT is supported"
        ))
    })?;
    rest.to_socket_addrs()
        .map_err(|e| LoadgenError::Args(format!("--hub-url {url:?}: {e}")))?
        .next()
        .ok_or_else(|| LoadgenError::Args(format!("--hub-url {url:?}: no address")))
}

/// The publish workload.
pub(crate) struct PinionWorkload {
    pub addr: SocketAddr,
    pub payload: Arc<[u8]>,
    /// `pinion-tls`: TLS and a token.
    pub tls: Option<Arc<TlsClient>>,
}

/// Connects and exchanges SP headers. Returns bytes read past the header.
async fn sp_handshake<S>(stream: &mut S) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(&encode_header(REQ))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    read_until(stream, &mut buf, |b| {
        Ok((b.len() >= HEADER_LEN).then_some(HEADER_LEN))
    })
    .await?;
    let h: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("8 bytes");
    match decode_header(&h) {
        Ok(REP) => Ok(buf.split_off(HEADER_LEN)),
        Ok(p) => Err(format!("peer speaks SP protocol {p:#x}, not REP (0x31)")),
        Err(e) => Err(format!("bad SP header {h:02x?}: {e}")),
    }
}

impl Workload for PinionWorkload {
    async fn client(self: Arc<Self>, mut ctx: Ctx) {
        let permit = ctx.connect_permit().await;
        let stream = match connect(ctx.idx, self.addr).await {
            Ok(s) => s,
            Err(e) => return ctx.connect_failed(e.to_string()),
        };
        match &self.tls {
            None => {
                let mut stream = stream;
                let rest = match sp_handshake(&mut stream).await {
                    Ok(rest) => rest,
                    Err(e) => return ctx.connect_failed(format!("SP handshake: {e}")),
                };
                drop(permit);
                let Some(clock) = ctx.ready().await else {
                    return;
                };
                let proto = SpPublish::new(crate::rand_bytes16(), &self.payload, ctx.pipeline);
                tcp_loop(stream, proto, rest, ctx, clock).await;
            }
            Some(tls) => {
                let name =
                    rustls_pki_types::ServerName::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let mut stream = match connector.connect(name, stream).await {
                    Ok(s) => s,
                    Err(e) => return ctx.connect_failed(format!("TLS handshake: {e}")),
                };
                let rest = match sp_handshake(&mut stream).await {
                    Ok(rest) => rest,
                    Err(e) => return ctx.connect_failed(format!("SP handshake: {e}")),
                };
                drop(permit);
                let Some(clock) = ctx.ready().await else {
                    return;
                };
                let mut proto = SpPublish::new(crate::rand_bytes16(), &self.payload, ctx.pipeline);
                proto.msg.token = Some(tls.token.clone());
                tcp_loop(stream, proto, rest, ctx, clock).await;
            }
        }
    }
}

/// Encodes `Publish` requests, decodes `Reply`s, matches them by request id.
pub(crate) struct SpPublish {
    msg: Publish,
    /// The id each slot's outstanding request carries.
    ids: Vec<u32>,
    generation: u32,
}

impl SpPublish {
    pub(crate) fn new(client_id: [u8; 16], payload: &[u8], pipeline: usize) -> Self {
        SpPublish {
            msg: Publish {
                client_id: Some(client_id.to_vec().into()),
                seq: Some(0),
                topic: Some("bench".into()),
                payload: Some(payload.to_vec().into()),
                token: None,
            },
            ids: vec![0; pipeline],
            generation: 0,
        }
    }
}

impl Proto for SpPublish {
    fn encode(&mut self, slot: usize, out: &mut Vec<u8>) {
        // seq 1, 2, 3, ... per client; the same Publish is re-encoded with
        // the next seq (no allocation).
        let seq = self.msg.seq.unwrap_or(0) + 1;
        self.msg.seq = Some(seq);
        // id: top bit | 19-bit generation | 12-bit slot: unique among this
        // connection's outstanding requests, and a stale reply is detected.
        self.generation = (self.generation + 1) & 0x7_ffff;
        let id = 0x8000_0000 | (self.generation << 12) | slot as u32;
        self.ids[slot] = id;
        let body_len = 4 + self.msg.encoded_len();
        out.reserve(8 + body_len);
        out.extend_from_slice(&(body_len as u64).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        self.msg.encode(out).expect("a Vec grows as needed");
    }

    fn decode(&mut self, buf: &[u8]) -> Decoded {
        if buf.len() < 8 {
            return Decoded::Incomplete;
        }
        let len = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
        if !(4..=MAX_REPLY).contains(&len) {
            return Decoded::Fatal(format!("pinion: bad reply length {len}"));
        }
        let used = 8 + len as usize;
        if buf.len() < used {
            return Decoded::Incomplete;
        }
        let body = &buf[8..used];
        let id = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        let slot = (id & 0xfff) as usize;
        if id & 0x8000_0000 == 0 || self.ids.get(slot) != Some(&id) {
            return Decoded::Fatal(format!("pinion: reply with unknown request id {id:#010x}"));
        }
        let result = match Reply::decode(&body[4..]) {
            Ok(Reply {
                result: Some(reply::Result::Ack(a)),
            }) => Ok(a.offset),
            Ok(Reply {
                result: Some(reply::Result::Nack(n)),
            }) => Err(format!("pinion: NACK {}", n.code().as_str_name())),
            Ok(Reply { result: None }) => Err("pinion: empty reply".to_string()),
            Err(e) => return Decoded::Fatal(format!("pinion: undecodable reply: {e}")),
        };
        Decoded::Reply { used, slot, result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_proto::Code;

    fn frame(id: u32, reply: &Reply) -> Vec<u8> {
        let body = reply.encode_to_vec();
        let mut out = ((4 + body.len()) as u64).to_be_bytes().to_vec();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn request_layout_and_replies() {
        let mut c = SpPublish::new([7; 16], b"hello", 2);
        let mut out = Vec::new();
        c.encode(1, &mut out);
        let len = u64::from_be_bytes(out[..8].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 8);
        let id = u32::from_be_bytes(out[8..12].try_into().unwrap());
        assert_eq!(id & 0x8000_0fff, 0x8000_0001);
        let p = Publish::decode(&out[12..]).unwrap();
        assert_eq!(p.seq, Some(1));
        assert_eq!(p.client_id.as_deref(), Some(&[7u8; 16][..]));
        assert_eq!(p.topic.as_deref(), Some("bench"));
        assert_eq!(p.payload.as_deref(), Some(&b"hello"[..]));

        let mut out2 = Vec::new();
        c.encode(0, &mut out2);
        let id0 = u32::from_be_bytes(out2[8..12].try_into().unwrap());
        assert_eq!(Publish::decode(&out2[12..]).unwrap().seq, Some(2));

        let ack = frame(id, &Reply::ack(1, 41, false));
        match c.decode(&ack) {
            Decoded::Reply {
                used,
                slot: 1,
                result: Ok(Some(41)),
            } => assert_eq!(used, ack.len()),
            _ => panic!("ack"),
        }
        assert!(matches!(
            c.decode(&ack[..ack.len() - 1]),
            Decoded::Incomplete
        ));
        let nack = frame(id0, &Reply::nack(Some(2), Code::TooLarge, "big"));
        match c.decode(&nack) {
            Decoded::Reply {
                slot: 0,
                result: Err(e),
                ..
            } => assert_eq!(e, "pinion: NACK TOO_LARGE"),
            _ => panic!("nack"),
        }
        // A reply to an id that is not outstanding.
        assert!(matches!(
            c.decode(&frame(id ^ 0x1000, &Reply::ack(1, 1, false))),
            Decoded::Fatal(_)
        ));
    }

    #[test]
    fn stats_lines() {
        let log = "x\n\u{1b}[2m2026-11-22T20:22:41Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m stats \u{1b}[3mlogged_per_s\u{1b}[0m\u{1b}[2m=\u{1b}[0m89709.0 \u{1b}[3mlogged\u{1b}[0m\u{1b}[2m=\u{1b}[0m312944 \u{1b}[3mcommits\u{1b}[0m\u{1b}[2m=\u{1b}[0m19195\nother\n";
        assert_eq!(hub_counters(log), Some((312944, 19195)));
        assert_eq!(hub_counters("stats logged=5 commits=2"), Some((5, 2)));
        assert_eq!(hub_counters("nothing"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("tcp://127.0.0.1:7450").unwrap().port(), 7450);
        assert!(parse_url("ipc:///tmp/x").is_err());
    }
}
