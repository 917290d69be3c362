//! The floor: the same framing pinion's TCP transport puts on the wire (u64
//! big-endian length + payload, no SP header) over plain tokio `TcpStream`s with
//! TCP_NODELAY, written the straightforward way.
//!
//! * Throughput: the sender pushes frames through a 64 KiB `BufWriter` (so small
//!   messages are coalesced into large writes) and flushes after the sync frame
//!   and at the end; the receiver reads through a 64 KiB `BufReader` and hands
//!   every payload out as its own `Bytes` (one allocation per message, as any
//!   message API must).
//! * Latency: write the whole frame with one `write_all`, then read the reply
//!   through a `BufReader` (one `read` syscall per reply); the echo side reads a
//!   frame the same way and writes it back with one `write_all`.
//!
//! Where the two sides run is chosen by [`TokioRt`]: by default (`split`) each
//! side has its own current-thread runtime on its own OS thread, like two
//! processes; `shared` puts both tasks on one multi-threaded runtime with two
//! workers, where the scheduler may or may not put them on the same worker.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    new_rtt_histogram, payload, record_rtt, warmup_roundtrips, LatSample, ThrSample,
};

const BUF: usize = 64 * 1024;

/// Where the two sides of a tokio measurement run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TokioRt {
    /// One current-thread runtime per side, each on its own OS thread.
    Split,
    /// Both sides as tasks of one multi-threaded runtime with 2 workers.
    Shared,
}

/// Runs `a` and `b` to completion according to `mode`; returns both results.
fn run_pair<A, B, FA, FB>(mode: TokioRt, a: FA, b: FB) -> Result<(A, B)>
where
    A: Send + 'static,
    B: Send + 'static,
    FA: Future<Output = Result<A>> + Send + 'static,
    FB: Future<Output = Result<B>> + Send + 'static,
{
    match mode {
        TokioRt::Shared => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?;
            rt.block_on(async move {
                let ha = tokio::spawn(a);
                let hb = tokio::spawn(b);
                let ra = ha.await.context("tokio task panicked")?;
                let rb = hb.await.context("tokio task panicked")?;
                Ok((ra?, rb?))
            })
        }
        TokioRt::Split => {
            let current = || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("tokio runtime")
            };
            let tb = std::thread::Builder::new()
                .name("tokio-side-b".into())
                .spawn(move || current()?.block_on(b))?;
            let ra = current()?.block_on(a);
            let rb = tb.join().expect("tokio side b panicked");
            Ok((ra?, rb?))
        }
    }
}

/// A loopback listener on an ephemeral port, created outside any runtime.
fn bind() -> Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn accept(listener: std::net::TcpListener) -> Result<TcpStream> {
    let listener = TcpListener::from_std(listener)?;
    let (s, _) = listener.accept().await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads one length-prefixed frame; the payload comes out as its own buffer.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Bytes> {
    let len = r.read_u64().await? as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

pub fn throughput(mode: TokioRt, size: usize, count: u64) -> Result<ThrSample> {
    let (listener, addr) = bind()?;
    let sender = async move {
        let stream = connect(addr).await?;
        let mut w = BufWriter::with_capacity(BUF, stream);
        let data = Bytes::from(payload(size));
        w.write_u64(0).await?; // sync
        w.flush().await?;
        for _ in 0..count {
            let msg = data.clone();
            w.write_u64(msg.len() as u64).await?;
            w.write_all(&msg).await?;
        }
        w.flush().await?;
        // Wait for the receiver to close, so nothing is cut short.
        let mut stream = w.into_inner();
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest).await;
        anyhow::Ok(())
    };
    let receiver = async move {
        let stream = accept(listener).await?;
        let mut r = BufReader::with_capacity(BUF, stream);
        let sync = read_frame(&mut r).await?;
        ensure!(sync.is_empty(), "sync frame has {} bytes", sync.len());
        let start = Instant::now();
        for _ in 0..count {
            let m = read_frame(&mut r).await?;
            ensure!(m.len() == size, "got {} bytes, expected {size}", m.len());
        }
        Ok(ThrSample {
            size,
            count,
            elapsed: start.elapsed(),
        })
    };
    let (sample, ()) = run_pair(mode, receiver, sender)?;
    Ok(sample)
}

pub fn latency(mode: TokioRt, size: usize, roundtrips: u64) -> Result<LatSample> {
    let (listener, addr) = bind()?;
    let warmup = warmup_roundtrips(roundtrips);
    let echo = async move {
        let mut s = BufReader::with_capacity(BUF, accept(listener).await?);
        let mut frame = Vec::with_capacity(8 + size);
        for _ in 0..warmup + roundtrips {
            let m = read_frame(&mut s).await?;
            frame.clear();
            frame.extend_from_slice(&(m.len() as u64).to_be_bytes());
            frame.extend_from_slice(&m);
            s.write_all(&frame).await?;
        }
        anyhow::Ok(())
    };
    let client = async move {
        let mut s = BufReader::with_capacity(BUF, connect(addr).await?);
        let mut frame = (size as u64).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload(size));
        for _ in 0..warmup {
            s.write_all(&frame).await?;
            read_frame(&mut s).await?;
        }
        let mut hist = new_rtt_histogram();
        let start = Instant::now();
        let mut last = Bytes::new();
        for _ in 0..roundtrips {
            let t0 = Instant::now();
            s.write_all(&frame).await?;
            last = read_frame(&mut s).await?;
            record_rtt(&mut hist, t0.elapsed());
        }
        let total = start.elapsed();
        ensure!(
            last.len() == size,
            "reply has {} bytes, expected {size}",
            last.len()
        );
        Ok(LatSample {
            roundtrips,
            total,
            rtt_ns: hist,
        })
    };
    let (sample, ()) = run_pair(mode, client, echo)?;
    Ok(sample)
}
