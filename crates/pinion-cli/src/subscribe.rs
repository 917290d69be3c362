//! `pinion subscribe`: a hub subscriber that resumes, the command-line face
//! of [`pinion::subscriber`]. It reads a hub's (or a cluster's) messages
//! over the WebSocket `/sub` endpoint (`docs/HUB-WEB.md`), prints one JSON
//! line per message, and after a disconnect resumes from the next offset
//! (`from = last + 1`), on the next node of its `--http` list: every node
//! of a cluster delivers the same committed records at the same offsets,
//! so moving to another node loses nothing and repeats nothing. Each move
//! is told on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

use pinion::blocking::Subscriber;
use pinion::subscriber::{Delivery, Event, SubscriberOptions};
use pinion::Bytes;

use crate::exit;
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
    /// A token for a hub with authentication on (`pinion token issue`); it
    /// must allow every --topic (or every topic, with none) [env
    /// PINION_TOKEN].
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PINION_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// Runs `pinion subscribe`.
pub fn run(a: SubscribeArgs) -> Result<(), Failure> {
    let deadline = (a.for_secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.for_secs));
    let opts = SubscriberOptions {
        urls: a.http.iter().map(|h| format!("ws://{h}")).collect(),
        topics: a
            .topic
            .iter()
            .map(|t| Bytes::copy_from_slice(t.as_bytes()))
            .collect(),
        from: a.from,
        // The first --http first, then round robin.
        start_index: Some(0),
        token: a.token.clone().filter(|t| !t.is_empty()),
        ..SubscriberOptions::default()
    };
    let mut sub = Subscriber::start(opts).map_err(|e| Failure::usage(e.to_string()))?;
    let mut printed = 0u64;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let event = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                match sub.next_event_timeout(left) {
                    Ok(Some(e)) => e,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(Failure::new(exit::IO, e.to_string())),
                }
            }
            None => sub
                .next_event()
                .map_err(|e| Failure::new(exit::IO, e.to_string()))?,
        };
        match event {
            Event::Delivery(d) => {
                let node = sub.node_index().and_then(|i| a.http.get(i));
                if out
                    .write_all(line(&d, node.map_or("", String::as_str)).as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return Ok(());
                }
                printed += 1;
                if a.count.is_some_and(|n| printed >= n) {
                    return Ok(());
                }
            }
            Event::Disconnected {
                node,
                error,
                resume,
                ..
            } => {
                let addr = a.http.get(node).map_or("?", String::as_str);
                let resume = resume.map_or("live".to_string(), |n| format!("offset {n}"));
                eprintln!("pinion: {addr}: {error}; resuming from {resume} on the next node");
            }
            _ => {}
        }
    }
}

/// One JSON line: offset, timestamp_us, time, client_id, seq, topic,
/// payload, payload_hex, node.
fn line(d: &Delivery, node: &str) -> String {
    let mut client = [0u8; 16];
    if d.client_id.len() == 16 {
        client.copy_from_slice(&d.client_id);
    }
    format!(
        "{{\"offset\":{},\"timestamp_us\":{},\"time\":\"{}\",\"client_id\":\"{}\",\"seq\":{},\"topic\":{},\"payload\":{},\"payload_hex\":\"{}\",\"node\":\"{}\"}}\n",
        d.offset,
        d.timestamp_us,
        time_str(d.timestamp_us),
        uuid(&client),
        d.seq,
        json_str(&d.topic),
        json_str(&d.payload),
        d.payload.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        node
    )
}
