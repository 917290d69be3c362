//! The ceiling: a raw group-commit probe with no network.
//!
//! N client tasks (on the same worker threads as the network targets) each
//! submit a `size`-byte record to ONE writer thread and wait for it to
//! complete. The writer blocks for the first record, drains everything else
//! queued, does one `write()` of the batch to an append-only file, one
//! `fdatasync()`, then completes the whole batch. That is the best any
//! "ACK after fdatasync" server can do on this disk with N clients.
//!
//! Second line: one writer, one record per `write()` + `fdatasync()` (the
//! cost of a durable append with no batching at all).
//!
//! Variant (`--target disk-zeroed`): the same, overwriting a pre-zeroed
//! (written and synced) file instead of growing one: ext4 then need not
//! commit its journal for an i_size change on every fdatasync.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::driver::{new_histogram, Ctx, Workload};
use crate::error::LoadgenError;
use crate::server::check_interrupted;

pub(crate) const NAME: &str = "disk";
/// Size of the pre-zeroed file of the overwrite variant (wraps around).
pub(crate) const ZEROED_BYTES: u64 = 256 << 20;

/// How the probe writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `O_APPEND`, the file grows.
    Append,
    /// Positioned writes into a pre-zeroed file of [`ZEROED_BYTES`].
    Overwrite,
}

/// One client's mailbox with the writer.
pub(crate) struct Slot {
    record: Box<[u8]>,
    done: AtomicU64,
    notify: Notify,
}

/// What the writer did (read by the main thread at the window's edges).
#[derive(Default)]
pub(crate) struct Counters {
    pub syncs: AtomicU64,
    pub records: AtomicU64,
    pub error: Mutex<Option<String>>,
}

/// Opens the probe's file in `dir`: appending, or pre-zeroed.
pub(crate) fn open_file(dir: &Path, mode: Mode) -> Result<(File, PathBuf), LoadgenError> {
    let path = dir.join(match mode {
        Mode::Append => "append.log",
        Mode::Overwrite => "zeroed.log",
    });
    let err = |e| LoadgenError::io(format!("preparing {}", path.display()), e);
    let file = match mode {
        Mode::Append => OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?,
        Mode::Overwrite => {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(err)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..ZEROED_BYTES / chunk.len() as u64 {
                f.write_all(&chunk).map_err(err)?;
            }
            f.sync_all().map_err(err)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            f
        }
    };
    // The directory entry of a new file must be durable too (once, not per write).
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LoadgenError::io(format!("fsync of {}", dir.display()), e))?;
    Ok((file, path))
}

/// The writer thread: drain, one write, one fdatasync, complete the batch.
pub(crate) fn writer(rx: Receiver<Arc<Slot>>, file: File, mode: Mode, counters: Arc<Counters>) {
    let mut batch: Vec<Arc<Slot>> = Vec::with_capacity(1024);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut pos = 0u64;
    let mut file = file;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
        }
        buf.clear();
        for s in &batch {
            buf.extend_from_slice(&s.record);
        }
        let r = match mode {
            Mode::Append => file.write_all(&buf),
            Mode::Overwrite => {
                if pos + buf.len() as u64 > ZEROED_BYTES {
                    pos = 0;
                }
                let r = file.write_all_at(&buf, pos);
                pos += buf.len() as u64;
                r
            }
        }
        .and_then(|()| file.sync_data());
        if let Err(e) = r {
            *counters.error.lock().expect("not poisoned") = Some(format!("disk: {e}"));
            // Dropping `rx` makes every later submit fail; the outstanding
            // ones run into the drain deadline and are counted as errors.
            return;
        }
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for s in batch.drain(..) {
            s.done.fetch_add(1, Ordering::Release);
            s.notify.notify_one();
        }
    }
}

/// The clients of the group-commit probe.
pub(crate) struct DiskWorkload {
    pub tx: Sender<Arc<Slot>>,
    pub size: usize,
}

impl Workload for DiskWorkload {
    async fn client(self: Arc<Self>, mut ctx: Ctx) {
        let mut record = vec![b'x'; self.size];
        // Stamp the client index so records differ (not that the disk cares).
        for (b, d) in record.iter_mut().zip(ctx.idx.to_be_bytes()) {
            *b = d;
        }
        let slot = Arc::new(Slot {
            record: record.into_boxed_slice(),
            done: AtomicU64::new(0),
            notify: Notify::new(),
        });
        let Some(clock) = ctx.ready().await else {
            return;
        };
        let mut fifo: VecDeque<Instant> = VecDeque::with_capacity(ctx.pipeline);
        let t = Instant::now();
        for _ in 0..ctx.pipeline {
            if self.tx.send(slot.clone()).is_err() {
                ctx.error("disk: writer stopped", 1);
                return;
            }
            fifo.push_back(t);
        }
        let hard = tokio::time::sleep_until(clock.hard.into());
        tokio::pin!(hard);
        let mut seen = 0u64;
        while !fifo.is_empty() {
            tokio::select! {
                biased;
                _ = slot.notify.notified() => {}
                _ = &mut hard => {
                    ctx.error("disk: no completion before the drain deadline", fifo.len() as u64);
                    return;
                }
            }
            let done = slot.done.load(Ordering::Acquire);
            let now = Instant::now();
            let stop = ctx.stopping(now, &clock);
            let mut resent = 0;
            for _ in seen..done {
                let Some(sent) = fifo.pop_front() else { break };
                ctx.ack(now, sent, &clock, None);
                if !stop {
                    if self.tx.send(slot.clone()).is_err() {
                        ctx.error("disk: writer stopped", 1);
                    } else {
                        resent += 1;
                    }
                }
            }
            seen = done;
            let t = Instant::now();
            fifo.extend(std::iter::repeat_n(t, resent));
        }
    }
}

/// Result of the single-writer probe.
pub(crate) struct Single {
    pub syncs: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
}

/// One record per write + fdatasync, on this thread, for `warmup` then
/// `duration` (only the latter counted).
pub(crate) fn single_writer(
    dir: &Path,
    mode: Mode,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Single, LoadgenError> {
    let (file, path) = open_file(dir, mode)?;
    let record = vec![b'x'; size];
    let mut hist = new_histogram();
    let start = Instant::now();
    let (warm_end, end) = (start + warmup, start + warmup + duration);
    let mut syncs = 0u64;
    let mut pos = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        if syncs & 63 == 0 {
            check_interrupted()?;
        }
        match mode {
            Mode::Append => (&file).write_all(&record),
            Mode::Overwrite => {
                if pos + size as u64 > ZEROED_BYTES {
                    pos = 0;
                }
                let r = file.write_all_at(&record, pos);
                pos += size as u64;
                r
            }
        }
        .and_then(|()| file.sync_data())
        .map_err(|e| LoadgenError::io(format!("write+fdatasync of {}", path.display()), e))?;
        let t1 = Instant::now();
        if t0 >= warm_end {
            syncs += 1;
            hist.saturating_record(((t1 - t0).as_nanos() as u64).max(1_000));
        }
    }
    Ok(Single {
        syncs,
        secs: duration.as_secs_f64(),
        hist,
    })
}
