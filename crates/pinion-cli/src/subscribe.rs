//! `pinion subscribe`: a hub subscriber that resumes. It reads a hub's (or
//! a cluster's) messages over the WebSocket `/sub` endpoint
//! (`docs/HUB-WEB.md`), prints one JSON line per message, and after a
//! disconnect resumes from the next offset (`from = last + 1`), on the next
//! node of its `--http` list: every node of a cluster delivers the same
//! committed records at the same offsets, so moving to another node loses
//! nothing and repeats nothing.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use pinion_proto::{Delivery, Message as _};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::failure::Failure;
use crate::hub::{json_str, time_str, uuid};

/// Arguments of `pinion subscribe`.
#[derive(clap::Args, Debug)]
pub struct SubscribeArgs {
    /// A node's HTTP address, HOST:PORT (repeat for a cluster: after a
    /// disconnect the next one is tried, round robin).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7452")]
    pub http: Vec<String>,
    /// Topic prefix to receive (repeatable; default: every topic).
    #[arg(short, long, value_name = "PREFIX")]
    pub topic: Vec<String>,
    /// The first offset wanted (replayed from the log, then live); default:
    /// live from now.
    #[arg(long, value_name = "OFFSET")]
    pub from: Option<u64>,
    /// Exit after N messages.
    #[arg(short = 'C', long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit after SECS seconds (0: never).
    #[arg(long = "for", value_name = "SECS", default_value_t = 0.0)]
    pub for_secs: f64,
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    let mut s = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Runs `pinion subscribe`.
pub fn run(a: SubscribeArgs) -> Result<(), Failure> {
    let deadline = (a.for_secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.for_secs));
    let mut next = a.from;
    let mut printed = 0u64;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut node = 0usize;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let addr = &a.http[node % a.http.len()];
        node += 1;
        match session(addr, &a, &mut next, &mut printed, deadline, &mut out) {
            Ok(Stop::Done) => return Ok(()),
            Ok(Stop::Closed(why)) | Err(why) => {
                let resume = next.map_or("live".to_string(), |n| format!("offset {n}"));
                eprintln!("pinion: {addr}: {why}; resuming from {resume} on the next node");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

enum Stop {
    /// --count or --for reached, or stdout closed.
    Done,
    /// The connection ended.
    Closed(String),
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = String::from("no address");
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn session(
    addr: &str,
    a: &SubscribeArgs,
    next: &mut Option<u64>,
    printed: &mut u64,
    deadline: Option<Instant>,
    out: &mut impl Write,
) -> Result<Stop, String> {
    let stream = connect(addr)?;
    let _ = stream.set_nodelay(true);
    let mut query: Vec<String> = a
        .topic
        .iter()
        .map(|t| format!("topic={}", encode(t)))
        .collect();
    if let Some(n) = next {
        query.push(format!("from={n}"));
    }
    let url = format!("ws://{addr}/sub?{}", query.join("&"));
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad request {url}: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(pinion_hub::http::PINION_SUBPROTOCOL),
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client(req, stream).map_err(|e| format!("handshake: {e}"))?;
    // While connected, wake up now and then to honour --for.
    let _ = ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = ws.close(None);
            return Ok(Stop::Done);
        }
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Ok(Stop::Closed(e.to_string())),
        };
        match msg {
            // The hello: {"next": N}, the first offset this subscription
            // delivers. A live subscriber keeps it as its resume point.
            Message::Text(t) if next.is_none() => {
                *next = t
                    .trim()
                    .trim_start_matches('{')
                    .trim_end_matches('}')
                    .split_once(':')
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok());
            }
            Message::Binary(body) => {
                let Some(zero) = body.iter().position(|&b| b == 0) else {
                    return Err("a frame without the topic separator".into());
                };
                let d = Delivery::decode(&body[zero + 1..])
                    .map_err(|e| format!("a frame that does not decode: {e}"))?;
                let mut client = [0u8; 16];
                if d.client_id().len() == 16 {
                    client.copy_from_slice(d.client_id());
                }
                let line = format!(
                    "{{\"offset\":{},\"timestamp_us\":{},\"time\":\"{}\",\"client_id\":\"{}\",\"seq\":{},\"topic\":{},\"payload\":{},\"payload_hex\":\"{}\",\"node\":\"{}\"}}\n",
                    d.offset(),
                    d.timestamp_us(),
                    time_str(d.timestamp_us()),
                    uuid(&client),
                    d.seq(),
                    json_str(&body[..zero]),
                    json_str(d.payload()),
                    d.payload().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    addr
                );
                if out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return Ok(Stop::Done);
                }
                *next = Some(d.offset() + 1);
                *printed += 1;
                if a.count.is_some_and(|n| *printed >= n) {
                    let _ = ws.close(None);
                    return Ok(Stop::Done);
                }
            }
            Message::Close(f) => {
                return Ok(Stop::Closed(match f {
                    Some(f) => format!("closed ({}: {})", u16::from(f.code), f.reason),
                    None => "closed".into(),
                }))
            }
            _ => {}
        }
    }
}
