//! Accepted-connection placement: hand-off vs SO_REUSEPORT.
//!
//! A pinion PULL listens (default hand-off: accept on the socket's home core,
//! give each connection to `Runtime::place_pipe`; or `tcp_reuseport`: one
//! SO_REUSEPORT listener per core, each keeping what the kernel gives it).
//! `conns` raw TCP clients (a tokio runtime of their own) do the SP
//! handshake as PUSH peers; we time until every pipe is up and record how
//! the pipes ended up spread over pinion's cores. Then every client sends
//! `msgs` 64-byte messages at once and we time their reception: the
//! aggregate throughput shows what an uneven spread costs.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pinion::{Options, Protocol, Runtime, Socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One run's figures.
#[derive(Debug, Clone)]
pub struct AcceptSample {
    pub connect_secs: f64,
    pub loads: Vec<usize>,
    pub msgs_per_sec: f64,
}

pub fn run(reuseport: bool, conns: usize, msgs: usize) -> Result<AcceptSample> {
    let rt = Runtime::global();
    // Wait for the previous run's pipes to wind down, so loads are ours.
    let settle = Instant::now() + Duration::from_secs(10);
    while rt.loads().iter().sum::<usize>() != 0 {
        ensure!(
            Instant::now() < settle,
            "pipes of an earlier run did not close: {:?}",
            rt.loads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let base: Vec<usize> = rt.loads();
    let opts = Options {
        tcp_reuseport: reuseport,
        recv_buffer: 1024,
        ..Options::default()
    };
    let pull = pinion::blocking::Socket::with_options(Protocol::Pull0, opts).context("socket")?;
    let ep = pull.listen("tcp://127.0.0.1:0").context("listen")?;
    let port = ep.port().context("tcp port")?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now();
    let streams = clients.block_on(async {
        let mut tasks = Vec::with_capacity(conns);
        for _ in 0..conns {
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                s.set_nodelay(true)?;
                s.write_all(&[0, b'S', b'P', 0, 0, 0x50, 0, 0]).await?;
                let mut h = [0u8; 8];
                s.read_exact(&mut h).await?;
                anyhow::ensure!(h == [0, b'S', b'P', 0, 0, 0x51, 0, 0], "bad header {h:?}");
                Ok::<_, anyhow::Error>(s)
            }));
        }
        let mut out = Vec::with_capacity(conns);
        for t in tasks {
            out.push(t.await??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (pull.stats().pipes_added as usize) < conns {
        ensure!(
            Instant::now() < deadline,
            "only {} of {conns} pipes came up",
            pull.stats().pipes_added
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let loads: Vec<usize> = rt.loads().iter().zip(&base).map(|(a, b)| a - b).collect();

    // Every client sends `msgs` messages of 64 bytes in one coalesced write.
    let mut frame = Vec::with_capacity(72);
    frame.extend_from_slice(&64u64.to_be_bytes());
    frame.extend_from_slice(&[7u8; 64]);
    let batch: Vec<u8> = frame.iter().copied().cycle().take(72 * msgs).collect();
    let batch = bytes::Bytes::from(batch);
    let total = conns * msgs;
    let t = Instant::now();
    let senders = clients.spawn(async move {
        let mut tasks = Vec::new();
        for mut s in streams {
            let b = batch.clone();
            tasks.push(tokio::spawn(async move {
                s.write_all(&b).await?;
                Ok::<_, std::io::Error>(s)
            }));
        }
        let mut keep = Vec::new();
        for t in tasks {
            keep.push(t.await.expect("client task")?);
        }
        Ok::<_, std::io::Error>(keep)
    });
    for i in 0..total {
        pull.recv_timeout(Some(Duration::from_secs(20)))
            .with_context(|| format!("recv {i} of {total}"))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let _streams = clients.block_on(senders)??;
    pull.close();
    drop(_streams);
    clients.shutdown_timeout(Duration::from_secs(1));
    let _ = Socket::new; // keep the async type linked for docs
    Ok(AcceptSample {
        connect_secs,
        loads,
        msgs_per_sec: total as f64 / secs,
    })
}
