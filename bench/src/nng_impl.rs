//! NNG through the `nng` crate, linked against the system libnng (Debian 1.5.2).
//!
//! Mirrors NNG's own perf tools (`src/tools/perf/perf.c`): the receiver listens
//! with RECVBUF 128, the sender dials with SENDBUF 128, sends one 0-byte sync
//! message and then `count` messages, each freshly allocated (`nng_msg_alloc` +
//! copy, as `remote_thr` does). The latency echo side sends back the very message
//! it received, like `local_lat`. All calls are NNG's blocking ones, from two
//! threads of this process; NNG does its I/O on its own thread pool.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nng::options::transport::tcp::BoundPort;
use nng::options::{Options, RecvBufferSize, RecvTimeout, SendBufferSize, SendTimeout};
use nng::{Listener, Message, Protocol, Socket};

use crate::common::{
    new_rtt_histogram, payload, record_rtt, warmup_roundtrips, LatProto, LatSample, ThrSample,
};

/// Blocking calls give up after this long instead of hanging forever.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn nng_err((_, e): (Message, nng::Error)) -> nng::Error {
    e
}

/// Creates a socket of `proto` listening on an ephemeral loopback port; returns
/// the socket, its listener (a handle; it lives as long as the socket) and the
/// URL to dial.
fn listen_ephemeral(proto: Protocol) -> Result<(Socket, Listener, String)> {
    let sock = Socket::new(proto).context("nng socket")?;
    sock.set_opt::<RecvTimeout>(Some(IO_TIMEOUT))?;
    sock.set_opt::<SendTimeout>(Some(IO_TIMEOUT))?;
    let listener = Listener::new(&sock, "tcp://127.0.0.1:0").context("nng listen")?;
    let port = listener
        .get_opt::<BoundPort>()
        .context("nng tcp-bound-port")?;
    Ok((sock, listener, format!("tcp://127.0.0.1:{port}")))
}

fn dial(proto: Protocol, url: &str) -> Result<Socket> {
    let sock = Socket::new(proto).context("nng socket")?;
    sock.set_opt::<RecvTimeout>(Some(IO_TIMEOUT))?;
    sock.set_opt::<SendTimeout>(Some(IO_TIMEOUT))?;
    Ok(sock)
        .and_then(|s| s.dial(url).map(|()| s))
        .with_context(|| format!("nng dial {url}"))
}

pub fn throughput(size: usize, count: u64) -> Result<ThrSample> {
    let (pull, _listener, url) = listen_ephemeral(Protocol::Pull0)?;
    pull.set_opt::<RecvBufferSize>(128)?;

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let sender = thread::Builder::new()
        .name("nng-push".into())
        .spawn(move || -> Result<()> {
            let push = dial(Protocol::Push0, &url)?;
            push.set_opt::<SendBufferSize>(128)?;
            let data = payload(size);
            push.send(Message::new()).map_err(nng_err)?; // sync
            for _ in 0..count {
                push.send(Message::from(&data[..])).map_err(nng_err)?;
            }
            // Keep the socket (and its queued messages) alive until the receiver is done.
            let _ = done_rx.recv();
            Ok(())
        })?;

    let result = (|| -> Result<ThrSample> {
        let sync = pull.recv().context("nng recv sync")?;
        ensure!(sync.is_empty(), "sync message has {} bytes", sync.len());
        let start = Instant::now();
        for _ in 0..count {
            let m = pull.recv().context("nng recv")?;
            ensure!(m.len() == size, "got {} bytes, expected {size}", m.len());
        }
        Ok(ThrSample {
            size,
            count,
            elapsed: start.elapsed(),
        })
    })();
    let _ = done_tx.send(());
    let sent = sender.join().expect("nng sender panicked");
    let sample = result?;
    sent?;
    Ok(sample)
}

pub fn latency(proto: LatProto, size: usize, roundtrips: u64) -> Result<LatSample> {
    let (srv_proto, cli_proto) = match proto {
        LatProto::Reqrep => (Protocol::Rep0, Protocol::Req0),
        LatProto::Pair1 => (Protocol::Pair1, Protocol::Pair1),
    };
    let (server, _listener, url) = listen_ephemeral(srv_proto)?;
    let warmup = warmup_roundtrips(roundtrips);
    let total = warmup + roundtrips;

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let echo = thread::Builder::new()
        .name("nng-echo".into())
        .spawn(move || -> Result<()> {
            for _ in 0..total {
                let m = server.recv().context("nng echo recv")?;
                server.send(m).map_err(nng_err).context("nng echo send")?;
            }
            let _ = done_rx.recv();
            Ok(())
        })?;

    let result = (|| -> Result<LatSample> {
        let client = dial(cli_proto, &url)?;
        let mut msg = Message::from(&payload(size)[..]);
        for _ in 0..warmup {
            client.send(msg).map_err(nng_err)?;
            msg = client.recv()?;
        }
        let mut hist = new_rtt_histogram();
        let start = Instant::now();
        for _ in 0..roundtrips {
            let t0 = Instant::now();
            client.send(msg).map_err(nng_err)?;
            msg = client.recv()?;
            record_rtt(&mut hist, t0.elapsed());
        }
        let total = start.elapsed();
        ensure!(
            msg.len() == size,
            "reply has {} bytes, expected {size}",
            msg.len()
        );
        Ok(LatSample {
            roundtrips,
            total,
            rtt_ns: hist,
        })
    })();
    let _ = done_tx.send(());
    let echoed = echo.join().expect("nng echo panicked");
    let sample = result?;
    echoed?;
    Ok(sample)
}
