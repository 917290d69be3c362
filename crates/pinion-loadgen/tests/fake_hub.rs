//! The pinion client checked against a stand-in hub (`--hub-url`): a tiny
//! SP REP server on std threads that checks every request the way the hub
//! would (SP header, request id, protobuf `Publish` fields, per-client seq
//! 1, 2, 3, ...) and answers ACK, or NACK for every 10th message.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pinion_loadgen::{run_publish, PublishArgs, Target};
use pinion_proto::{Code, Message, Publish, Reply};

#[derive(Default)]
struct Seen {
    next_offset: AtomicU64,
    /// Per client id: the last seq seen.
    last_seq: Mutex<HashMap<Vec<u8>, u64>>,
    violations: Mutex<Vec<String>>,
}

fn serve_conn(mut s: TcpStream, seen: Arc<Seen>, nack_every: u64) {
    s.set_nodelay(true).unwrap();
    let mut h = [0u8; 8];
    if s.read_exact(&mut h).is_err() {
        return;
    }
    let bad = |m: String| seen.violations.lock().unwrap().push(m);
    if h != [0, b'S', b'P', 0, 0, 0x30, 0, 0] {
        bad(format!("bad SP header {h:?}"));
        return;
    }
    s.write_all(&[0, b'S', b'P', 0, 0, 0x31, 0, 0]).unwrap();
    let mut len = [0u8; 8];
    while s.read_exact(&mut len).is_ok() {
        let n = u64::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let id = &body[..4];
        if id[0] & 0x80 == 0 {
            bad(format!("request id without the top bit: {id:?}"));
        }
        let p = match Publish::decode(&body[4..]) {
            Ok(p) => p,
            Err(e) => {
                bad(format!("undecodable Publish: {e}"));
                return;
            }
        };
        let cid = p.client_id.clone().unwrap_or_default();
        if cid.len() != 16 {
            bad(format!("client id of {} bytes", cid.len()));
        }
        if p.topic.as_deref() != Some("bench") {
            bad(format!("topic {:?}", p.topic));
        }
        if p.payload.as_ref().map(|v| v.len()) != Some(100) {
            bad("payload not 100 bytes".into());
        }
        let seq = p.seq.unwrap_or(0);
        {
            let mut last = seen.last_seq.lock().unwrap();
            let prev = last.insert(cid.to_vec(), seq).unwrap_or(0);
            if seq != prev + 1 {
                bad(format!("seq {seq} after {prev}"));
            }
        }
        let reply = if seq % nack_every == 0 {
            Reply::nack(Some(seq), Code::Unavailable, "test")
        } else {
            let off = seen.next_offset.fetch_add(1, Ordering::Relaxed);
            Reply::ack(seq, off, false)
        };
        let r = reply.encode_to_vec();
        let mut out = ((4 + r.len()) as u64).to_be_bytes().to_vec();
        out.extend_from_slice(id);
        out.extend_from_slice(&r);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

fn fake_hub(nack_every: u64) -> (String, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let seen = s2.clone();
            std::thread::spawn(move || serve_conn(c, seen, nack_every));
        }
    });
    (url, seen)
}

#[test]
fn pinion_client_against_a_fake_hub() {
    let (url, seen) = fake_hub(10);
    let args = PublishArgs::parse_from([
        "publish",
        "--target",
        "pinion",
        "--hub-url",
        &url,
        "--clients",
        "6",
        "--pipeline",
        "3",
        "--size",
        "100",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--no-progress",
    ])
    .unwrap();
    let reports = run_publish(&args, Path::new("/nonexistent/pinion")).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.target, Target::Pinion);
    assert_eq!(r.pinion_ratio, Some(1.0));
    let run = &r.runs[0];
    let v = seen.violations.lock().unwrap();
    assert!(
        v.is_empty(),
        "protocol violations: {:?}",
        &v[..v.len().min(5)]
    );
    assert!(run.acked > 0);
    // Every 10th seq of each client was NACKed, and counted by code.
    let nacks = run
        .error_kinds
        .get("pinion: NACK UNAVAILABLE")
        .copied()
        .unwrap_or(0);
    assert!(nacks > 0, "{:?}", run.error_kinds);
    assert_eq!(run.errors, nacks, "{:?}", run.error_kinds);
    // Offsets 0.. were handed out once per ACK; the highest + 1 is "stored".
    assert_eq!(run.stored, Some(seen.next_offset.load(Ordering::Relaxed)));
    assert!(run.stored.unwrap() >= run.total_acked);
    assert!(run.server_pid.is_none(), "nothing started");
}
