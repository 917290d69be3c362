//! pinion, through its public facade crate `pinion`, with default options
//! (send/recv buffers of 128 messages, like NNG's perf tools set; TCP_NODELAY).
//!
//! Two ways of driving the same sockets are measured:
//!
//! * [`PinionApi::Blocking`] (`pinion`): `pinion::blocking::Socket` called from
//!   two plain threads of this process, exactly like the NNG measurement; the
//!   I/O runs on pinion's core threads.
//! * [`PinionApi::Async`] (`pinion-async`): the async `pinion::Socket` API, the
//!   two sides spawned as tasks on pinion's own cores
//!   (`Runtime::spawn_on`, side A on core 0 and side B on core 1), so the
//!   application code runs on the I/O threads, as in the tokio floor.
//!
//! Throughput sends one shared `Bytes` payload (`send(data.clone())`, no copy);
//! every received message is a `Bytes` of its own. The latency echo side sends
//! back the very `Bytes` it received.
//!
//! Without the `pinion` cargo feature this module is a stub that fails with
//! "pinion facade not available yet", and no figure is reported for pinion.

#[cfg(not(feature = "pinion"))]
mod imp {
    use anyhow::{bail, Result};

    use super::PinionApi;
    use crate::common::{LatProto, LatSample, ThrSample};

    pub fn available() -> Result<()> {
        bail!(super::NOT_AVAILABLE)
    }

    pub fn throughput(_api: PinionApi, _size: usize, _count: u64) -> Result<ThrSample> {
        bail!(super::NOT_AVAILABLE)
    }

    pub fn latency(
        _api: PinionApi,
        _proto: LatProto,
        _size: usize,
        _roundtrips: u64,
    ) -> Result<LatSample> {
        bail!(super::NOT_AVAILABLE)
    }
}

#[cfg(feature = "pinion")]
mod imp {
    use std::future::Future;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use anyhow::{ensure, Context as _, Result};
    use bytes::Bytes;
    use pinion::{blocking, Protocol, Runtime, Socket};

    use super::PinionApi;
    use crate::common::{
        new_rtt_histogram, payload, record_rtt, warmup_roundtrips, LatProto, LatSample, ThrSample,
    };

    const LISTEN: &str = "tcp://127.0.0.1:0";
    const LISTEN_TLS: &str = "tls+tcp://127.0.0.1:0";

    /// The two ends' TLS settings for `tls+tcp://` runs: a CA and a server
    /// certificate for 127.0.0.1 made for the run (rcgen, ECDSA P-256).
    #[derive(Clone)]
    pub struct Tls {
        server: pinion::TlsConfig,
        client: pinion::TlsConfig,
    }

    impl Tls {
        pub fn new() -> Result<Tls> {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
            let ca_key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = p.self_signed(&ca_key)?;
            let issuer = Issuer::new(p, ca_key);
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse()?));
            let leaf = p.signed_by(&key, &issuer)?;
            Ok(Tls {
                server: pinion::TlsConfig::new()
                    .own_cert_pem(leaf.pem().as_bytes(), key.serialize_pem().as_bytes())?,
                client: pinion::TlsConfig::new().ca_pem(ca.pem().as_bytes())?,
            })
        }
    }

    /// push/pull throughput with the async API on two cores, over
    /// `tls+tcp://` (with `tls`) or `tcp://`.
    pub fn throughput_over(size: usize, count: u64, tls: Option<&Tls>) -> Result<ThrSample> {
        thr_async(size, count, false, tls.cloned())
    }

    /// req/rep latency with the async API on two cores, over `tls+tcp://`
    /// (with `tls`) or `tcp://`.
    pub fn latency_over(size: usize, roundtrips: u64, tls: Option<&Tls>) -> Result<LatSample> {
        lat_async(LatProto::Reqrep, size, roundtrips, false, tls.cloned())
    }

    pub fn available() -> Result<()> {
        // Starting the global runtime is the one thing that can fail up front.
        let rt = Runtime::global();
        ensure!(rt.cores() > 0, "pinion runtime has no cores");
        Ok(())
    }

    fn protos(proto: LatProto) -> (Protocol, Protocol) {
        match proto {
            LatProto::Reqrep => (Protocol::Rep0, Protocol::Req0),
            LatProto::Pair1 => (Protocol::Pair1, Protocol::Pair1),
        }
    }

    /// Runs `a` on core 0 and `b` on core 1 (modulo the core count) of the
    /// global runtime and waits for both.
    fn on_cores<A, B, FA, FB>(a: FA, b: FB, one_core: bool) -> Result<(A, B)>
    where
        A: Send + 'static,
        B: Send + 'static,
        FA: Future<Output = Result<A>> + Send + 'static,
        FB: Future<Output = Result<B>> + Send + 'static,
    {
        let rt = Runtime::global();
        let (ta, ra) = mpsc::channel();
        let (tb, rb) = mpsc::channel();
        rt.spawn_on(0, async move {
            let _ = ta.send(a.await);
        });
        let core_b = if one_core { 0 } else { 1 % rt.cores() };
        rt.spawn_on(core_b, async move {
            let _ = tb.send(b.await);
        });
        let a = ra.recv().context("pinion task A dropped")?;
        let b = rb.recv().context("pinion task B dropped")?;
        Ok((a?, b?))
    }

    pub fn throughput(api: PinionApi, size: usize, count: u64) -> Result<ThrSample> {
        match api {
            PinionApi::Blocking => thr_blocking(size, count),
            PinionApi::Async => thr_async(size, count, false, None),
            PinionApi::OneCore => thr_async(size, count, true, None),
        }
    }

    pub fn latency(
        api: PinionApi,
        proto: LatProto,
        size: usize,
        roundtrips: u64,
    ) -> Result<LatSample> {
        match api {
            PinionApi::Blocking => lat_blocking(proto, size, roundtrips),
            PinionApi::Async => lat_async(proto, size, roundtrips, false, None),
            PinionApi::OneCore => lat_async(proto, size, roundtrips, true, None),
        }
    }

    fn thr_blocking(size: usize, count: u64) -> Result<ThrSample> {
        let pull = blocking::Socket::new(Protocol::Pull0).context("pinion socket")?;
        let url = pull
            .listen(LISTEN)
            .context("pinion listen")?
            .url()
            .to_string();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let sender =
            thread::Builder::new()
                .name("pinion-push".into())
                .spawn(move || -> Result<()> {
                    let push = blocking::Socket::new(Protocol::Push0)?;
                    push.dial(&url)
                        .with_context(|| format!("pinion dial {url}"))?;
                    let data = Bytes::from(payload(size));
                    push.send(Bytes::new())?; // sync
                    for _ in 0..count {
                        push.send(data.clone())?;
                    }
                    let _ = done_rx.recv();
                    Ok(())
                })?;
        let result = (|| -> Result<ThrSample> {
            let sync = pull.recv().context("pinion recv sync")?;
            ensure!(sync.is_empty(), "sync message has {} bytes", sync.len());
            let start = Instant::now();
            for _ in 0..count {
                let m = pull.recv().context("pinion recv")?;
                ensure!(m.len() == size, "got {} bytes, expected {size}", m.len());
            }
            Ok(ThrSample {
                size,
                count,
                elapsed: start.elapsed(),
            })
        })();
        let _ = done_tx.send(());
        let sent = sender.join().expect("pinion sender panicked");
        let sample = result?;
        sent?;
        Ok(sample)
    }

    fn thr_async(size: usize, count: u64, one_core: bool, tls: Option<Tls>) -> Result<ThrSample> {
        let (done_tx, done_rx) = tokio_oneshot();
        let (url_tx, url_rx) = tokio_oneshot::<String>();
        let client_tls = tls.as_ref().map(|t| t.client.clone());
        let receiver = async move {
            let pull = Socket::new(Protocol::Pull0).context("pinion socket")?;
            let listen = match tls {
                Some(t) => {
                    pull.set_tls(t.server);
                    LISTEN_TLS
                }
                None => LISTEN,
            };
            let ep = pull.listen(listen).await.context("pinion listen")?;
            let _ = url_tx.send(ep.url().to_string());
            let sync = pull.recv().await.context("pinion recv sync")?;
            ensure!(sync.is_empty(), "sync message has {} bytes", sync.len());
            let start = Instant::now();
            for _ in 0..count {
                let m = pull.recv().await.context("pinion recv")?;
                ensure!(m.len() == size, "got {} bytes, expected {size}", m.len());
            }
            let elapsed = start.elapsed();
            let _ = done_tx.send(());
            Ok(ThrSample {
                size,
                count,
                elapsed,
            })
        };
        let sender = async move {
            let push = Socket::new(Protocol::Push0).context("pinion socket")?;
            if let Some(c) = client_tls {
                push.set_tls(c);
            }
            let url = url_rx.await.context("pinion listener failed")?;
            push.dial(&url)
                .await
                .with_context(|| format!("pinion dial {url}"))?;
            let data = Bytes::from(payload(size));
            push.send(Bytes::new()).await?; // sync
            for _ in 0..count {
                push.send(data.clone()).await?;
            }
            let _ = done_rx.await;
            Ok(())
        };
        let (sample, ()) = on_cores(receiver, sender, one_core)?;
        Ok(sample)
    }

    fn lat_blocking(proto: LatProto, size: usize, roundtrips: u64) -> Result<LatSample> {
        let (srv_proto, cli_proto) = protos(proto);
        let server = blocking::Socket::new(srv_proto).context("pinion socket")?;
        let url = server
            .listen(LISTEN)
            .context("pinion listen")?
            .url()
            .to_string();
        let warmup = warmup_roundtrips(roundtrips);
        let total = warmup + roundtrips;
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let echo =
            thread::Builder::new()
                .name("pinion-echo".into())
                .spawn(move || -> Result<()> {
                    for _ in 0..total {
                        let m = server.recv().context("pinion echo recv")?;
                        server.send(m).context("pinion echo send")?;
                    }
                    let _ = done_rx.recv();
                    Ok(())
                })?;
        let result = (|| -> Result<LatSample> {
            let client = blocking::Socket::new(cli_proto)?;
            client
                .dial(&url)
                .with_context(|| format!("pinion dial {url}"))?;
            let data = Bytes::from(payload(size));
            for _ in 0..warmup {
                client.send(data.clone())?;
                client.recv()?;
            }
            let mut hist = new_rtt_histogram();
            let mut last = Bytes::new();
            let start = Instant::now();
            for _ in 0..roundtrips {
                let t0 = Instant::now();
                client.send(data.clone())?;
                last = client.recv()?;
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
        })();
        let _ = done_tx.send(());
        let echoed = echo.join().expect("pinion echo panicked");
        let sample = result?;
        echoed?;
        Ok(sample)
    }

    fn lat_async(
        proto: LatProto,
        size: usize,
        roundtrips: u64,
        one_core: bool,
        tls: Option<Tls>,
    ) -> Result<LatSample> {
        let (srv_proto, cli_proto) = protos(proto);
        let client_tls = tls.as_ref().map(|t| t.client.clone());
        // Sockets are opened inside the tasks, so each is homed on the core
        // its task runs on (and its pipe joins it there).
        let warmup = warmup_roundtrips(roundtrips);
        let (url_tx, url_rx) = tokio_oneshot::<String>();
        let (done_tx, done_rx) = tokio_oneshot();
        let echo = async move {
            let server = Socket::new(srv_proto).context("pinion socket")?;
            let listen = match tls {
                Some(t) => {
                    server.set_tls(t.server);
                    LISTEN_TLS
                }
                None => LISTEN,
            };
            let ep = server.listen(listen).await.context("pinion listen")?;
            let _ = url_tx.send(ep.url().to_string());
            for _ in 0..warmup + roundtrips {
                let m = server.recv().await.context("pinion echo recv")?;
                server.send(m).await.context("pinion echo send")?;
            }
            let _ = done_rx.await;
            Ok(())
        };
        let measure = async move {
            let client = Socket::new(cli_proto).context("pinion socket")?;
            if let Some(c) = client_tls {
                client.set_tls(c);
            }
            let url = url_rx.await.context("pinion listener failed")?;
            client
                .dial(&url)
                .await
                .with_context(|| format!("pinion dial {url}"))?;
            let data = Bytes::from(payload(size));
            for _ in 0..warmup {
                client.send(data.clone()).await?;
                client.recv().await?;
            }
            let mut hist = new_rtt_histogram();
            let mut last = Bytes::new();
            let start = Instant::now();
            for _ in 0..roundtrips {
                let t0 = Instant::now();
                client.send(data.clone()).await?;
                last = client.recv().await?;
                record_rtt(&mut hist, t0.elapsed());
            }
            let total = start.elapsed();
            let _ = done_tx.send(());
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
        let (sample, ()) = on_cores(measure, echo, one_core)?;
        Ok(sample)
    }

    fn tokio_oneshot<T>() -> (
        tokio::sync::oneshot::Sender<T>,
        tokio::sync::oneshot::Receiver<T>,
    ) {
        tokio::sync::oneshot::channel()
    }
}

pub use imp::{available, latency, throughput};
#[cfg(feature = "pinion")]
pub use imp::{latency_over, throughput_over, Tls};

#[allow(dead_code)] // used only without the `pinion` feature
pub const NOT_AVAILABLE: &str = "pinion facade not available yet";

/// How the pinion sockets are driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinionApi {
    /// `pinion::blocking` from two plain threads (like the NNG measurement).
    Blocking,
    /// The async API, both sides as tasks on pinion's own cores 0 and 1.
    Async,
    /// The async API, both sides as tasks on pinion's core 0.
    OneCore,
}
