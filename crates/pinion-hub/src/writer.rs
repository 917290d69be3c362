//! The writer thread: the only owner of the log file and of the sessions.
//!
//! Cores hand it batches of checked requests over a channel. It takes
//! everything queued, decides fresh / duplicate / stale for each, appends
//! the fresh ones to the journal, makes **one** write and (with
//! `fsync = always`) **one** fdatasync for the whole group, and only then
//! hands the answers back to the cores, one batch per core. While it syncs,
//! the next group gathers in the channel, so the group grows with the load
//! (no timer).
//!
//! A failed write or sync NACKs the whole group with UNAVAILABLE; nothing of
//! it counts as logged (the journal rolls the file back, or is poisoned and
//! recovered before the next group). The sessions are checkpointed to SQLite
//! on a second thread, at offsets already durable in the log; each
//! checkpoint first drops what left the dedup horizon (sessions forgotten
//! leave SQLite in the same transaction), visiting only the sessions that
//! have something to drop.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pinion::Header;
use pinion_journal::{Journal, NewRecord};
use pinion_proto::{Code, Reply};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::FsyncPolicy;
use crate::envelope::Checked;
use crate::fanout::{self, Durable, Entry, FanBatch, FanIn};
use crate::sessions::{Changes, ClientId, SessionRow, Sessions, Verdict};
use crate::store::{Checkpoint, Store};
use crate::Shared;

/// An item's fate before the commit: `(offset, duplicate)` or the NACK.
type Fate = Result<(u64, bool), Reply>;

/// One request on its way to the writer.
pub(crate) struct Item {
    pub core: usize,
    pub header: Header,
    pub pipe: u32,
    pub cost: usize,
    pub req: Checked,
    pub received: Instant,
}

/// One answer on its way back to a core.
pub(crate) struct Answer {
    /// The request, going back to be freed on the core that allocated it
    /// (freeing it on the writer thread made glibc malloc contend across
    /// arenas: measured as ~10 % of the hub's CPU in a profile).
    pub req: Checked,
    pub header: Header,
    pub pipe: u32,
    pub cost: usize,
    pub reply: Reply,
    pub received: Instant,
}

/// One checkpoint on its way to the checkpoint thread.
pub(crate) struct ToStore {
    /// Rows to write and to delete.
    pub changes: Changes,
    /// The offsets they cover.
    pub ck: Checkpoint,
}

pub(crate) enum ToWriter {
    Batch(Vec<Item>),
    /// Final sync and checkpoint, then stop; reports when done.
    Shutdown(mpsc::Sender<()>),
}

pub(crate) struct Writer {
    pub journal: Journal,
    pub sessions: Sessions,
    pub fsync: FsyncPolicy,
    pub checkpoint_every: Duration,
    pub horizon: u64,
    pub rx: mpsc::Receiver<ToWriter>,
    pub cores: Vec<UnboundedSender<Vec<Answer>>>,
    pub store_tx: mpsc::Sender<ToStore>,
    pub shared: Arc<Shared>,
    /// Every core's fan-out task.
    pub fan: Vec<UnboundedSender<FanIn>>,
    /// Durable records not yet handed to the fan-out, from `fan_first`.
    pub fan_pending: Vec<Entry>,
    pub fan_first: u64,
    /// Every record from `fan_first` on is in `fan_pending`.
    pub fan_encoded: bool,
    pub fan_buf: BytesMut,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Writer {
    pub fn run(mut self) {
        self.publish_session_stats();
        let mut last_ckpt = Instant::now();
        let mut last_sync = Instant::now();
        let mut durable = self.journal.committed_offset();
        let mut outbox: Vec<Vec<Answer>> = (0..self.cores.len()).map(|_| Vec::new()).collect();
        let mut group: Vec<Item> = Vec::new();
        let mut stop: Option<mpsc::Sender<()>> = None;
        loop {
            // Wait for work, or for the next timed duty.
            let mut next = last_ckpt + self.checkpoint_every;
            if let FsyncPolicy::Interval(d) = self.fsync {
                if durable < self.journal.committed_offset() {
                    next = next.min(last_sync + d);
                }
            }
            let timeout = next.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(timeout) {
                Ok(ToWriter::Batch(b)) => group.extend(b),
                Ok(ToWriter::Shutdown(done)) => stop = Some(done),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Take everything else already queued: that is the group.
            while stop.is_none() {
                match self.rx.try_recv() {
                    Ok(ToWriter::Batch(b)) => group.extend(b),
                    Ok(ToWriter::Shutdown(done)) => stop = Some(done),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(&mut group, &mut outbox, &mut durable, &mut last_sync);
                for (core, answers) in outbox.iter_mut().enumerate() {
                    if !answers.is_empty() {
                        let _ = self.cores[core].send(std::mem::take(answers));
                    }
                }
            }
            if let FsyncPolicy::Interval(d) = self.fsync {
                if durable < self.journal.committed_offset() && last_sync.elapsed() >= d {
                    self.sync(&mut durable, &mut last_sync);
                }
            }
            if stop.is_some() || last_ckpt.elapsed() >= self.checkpoint_every {
                self.checkpoint(&mut durable, &mut last_sync);
                last_ckpt = Instant::now();
            }
            self.fan_out(durable);
            if let Some(done) = stop.take() {
                let _ = done.send(());
                return;
            }
        }
        // Every sender is gone: final sync and checkpoint anyway.
        self.checkpoint(&mut durable, &mut last_sync);
    }

    /// Hands the records that became visible to subscribers (durable, or
    /// with `fsync = never` written) to every core, as one shared batch.
    fn fan_out(&mut self, durable: u64) {
        let visible = match self.fsync {
            FsyncPolicy::Interval(_) => durable,
            _ => self.journal.committed_offset(),
        };
        if visible <= self.fan_first {
            return;
        }
        let split = self.fan_pending.partition_point(|e| e.offset < visible);
        let entries: Vec<Entry> = self.fan_pending.drain(..split).collect();
        let b = Arc::new(FanBatch {
            first: self.fan_first,
            next: visible,
            encoded: self.fan_encoded,
            entries,
        });
        for tx in &self.fan {
            let _ = tx.send(FanIn::Batch(b.clone()));
        }
        self.fan_first = visible;
        self.fan_encoded = true;
    }

    fn sync(&mut self, durable: &mut u64, last_sync: &mut Instant) {
        match self.journal.commit(true) {
            Ok(()) => *durable = self.journal.committed_offset(),
            Err(e) => tracing::error!(error = %e, "log sync failed"),
        }
        *last_sync = Instant::now();
    }

    fn checkpoint(&mut self, durable: &mut u64, last_sync: &mut Instant) {
        // Only durable offsets may be checkpointed.
        if *durable < self.journal.committed_offset() {
            self.sync(durable, last_sync);
            if *durable < self.journal.committed_offset() {
                return;
            }
        }
        let head = *durable;
        // Visits only the sessions with entries to drop (see `sessions`).
        self.sessions
            .evict_before(head.saturating_sub(self.horizon));
        let changes = self.sessions.take_dirty();
        let ck = Checkpoint {
            log_offset: head,
            replay_from: self.sessions.replay_from(head),
        };
        self.publish_session_stats();
        let _ = self.store_tx.send(ToStore { changes, ck });
    }

    fn publish_session_stats(&self) {
        let stats = &self.shared.stats;
        stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        stats
            .sessions_forgotten
            .store(self.sessions.forgotten(), Ordering::Relaxed);
    }

    fn commit_group(
        &mut self,
        group: &mut Vec<Item>,
        outbox: &mut [Vec<Answer>],
        durable: &mut u64,
        last_sync: &mut Instant,
    ) {
        let shared = &self.shared;
        if self.journal.is_poisoned() {
            if let Err(e) = self.journal.recover() {
                tracing::warn!(error = %e, "log still unavailable");
            } else {
                tracing::info!("log recovered");
                *durable = self.journal.committed_offset();
            }
        }
        let ts = now_us();
        // Fresh records of this group, to find duplicates within it and to
        // apply to the sessions once durable.
        let mut fresh: HashMap<(ClientId, u64), u64> = HashMap::new();
        let mut logged: Vec<(ClientId, u64, u64)> = Vec::new();
        // Per item: Ok((offset, duplicate)) or the NACK; `true` in the third
        // slot when the answer depends on this group's commit.
        let mut verdicts: Vec<(Fate, bool)> = Vec::with_capacity(group.len());
        let unavailable = self.journal.is_poisoned();
        // Encode for subscribers only when there are some (see FanBatch).
        let encode = self.shared.stats.subscribers_tcp.load(Ordering::Relaxed)
            + self.shared.stats.subscribers_ws.load(Ordering::Relaxed)
            > 0;
        let mut fan_idx: Vec<(u64, usize)> = Vec::new();
        for (idx, it) in group.iter().enumerate() {
            let r = &it.req;
            let key = (r.client_id, r.seq);
            if let Some(&off) = fresh.get(&key) {
                verdicts.push((Ok((off, true)), true));
                continue;
            }
            let v = match self.sessions.check(&r.client_id, r.seq) {
                Verdict::Duplicate { offset } => (Ok((offset, true)), false),
                Verdict::Stale { floor } => (
                    Err(Reply::nack(
                        Some(r.seq),
                        Code::Stale,
                        format!("seq {} is below this client's duplicate window (floor {floor}); not logged", r.seq),
                    )),
                    false,
                ),
                Verdict::Fresh if unavailable => (
                    Err(Reply::nack(Some(r.seq), Code::Unavailable, "the log is unavailable".to_string())),
                    false,
                ),
                Verdict::Fresh => {
                    let rec = NewRecord {
                        timestamp_us: ts,
                        client_id: r.client_id,
                        seq: r.seq,
                        topic: &r.topic,
                        payload: &r.payload,
                    };
                    match self.journal.append(&rec) {
                        Ok(off) => {
                            if encode {
                                fan_idx.push((off, idx));
                            }
                            fresh.insert(key, off);
                            logged.push((r.client_id, r.seq, off));
                            (Ok((off, false)), true)
                        }
                        Err(e) => (
                            Err(Reply::nack(Some(r.seq), Code::Unavailable, format!("cannot append: {e}"))),
                            false,
                        ),
                    }
                }
            };
            verdicts.push(v);
        }
        let mut failure: Option<String> = None;
        if !logged.is_empty() {
            let sync = self.fsync == FsyncPolicy::Always;
            match self.journal.commit(sync) {
                Ok(()) => {
                    if sync {
                        *durable = self.journal.committed_offset();
                        *last_sync = Instant::now();
                    }
                    for (c, s, off) in &logged {
                        self.sessions.record(c, *s, *off, ts, true);
                    }
                    self.publish_session_stats();
                    if !encode {
                        self.fan_encoded = false;
                    }
                    for (off, idx) in fan_idx {
                        let r = &group[idx].req;
                        let e = fanout::encode(
                            &Durable {
                                offset: off,
                                timestamp_us: ts,
                                client_id: &r.client_id,
                                seq: r.seq,
                                topic: &r.topic,
                                payload: &r.payload,
                            },
                            &mut self.fan_buf,
                        );
                        self.fan_pending.push(e);
                    }
                    shared.log_ok.store(true, Ordering::Relaxed);
                    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                    shared
                        .stats
                        .logged
                        .fetch_add(logged.len() as u64, Ordering::Relaxed);
                    shared
                        .head
                        .store(self.journal.committed_offset(), Ordering::Release);
                }
                Err(e) => {
                    if e.is_out_of_space() {
                        tracing::warn!(error = %e, records = logged.len(), "log full: NACKing the group UNAVAILABLE");
                    } else {
                        tracing::error!(error = %e, records = logged.len(), "log write failed: NACKing the group UNAVAILABLE");
                    }
                    shared.log_ok.store(false, Ordering::Relaxed);
                    failure = Some(format!("the log could not be written: {e}"));
                }
            }
        }
        for (it, (v, depends)) in group.drain(..).zip(verdicts) {
            let reply = match (v, &failure) {
                (Ok(_), Some(why)) if depends => {
                    Reply::nack(Some(it.req.seq), Code::Unavailable, why.clone())
                }
                (Ok((off, dup)), _) => {
                    if dup {
                        shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Reply::ack(it.req.seq, off, dup)
                }
                (Err(nack), _) => nack,
            };
            if matches!(reply.result, Some(pinion_proto::reply::Result::Nack(_))) {
                shared.stats.nacks.fetch_add(1, Ordering::Relaxed);
            }
            outbox[it.core].push(Answer {
                req: it.req,
                header: it.header,
                pipe: it.pipe,
                cost: it.cost,
                reply,
                received: it.received,
            });
        }
    }
}

/// The checkpoint thread: writes what the writer hands it to SQLite,
/// keeping changes whose write failed for the next attempt.
///
/// Checkpoints that queued up meanwhile (or failed) are coalesced per
/// client, the later change winning: a client forgotten and then back
/// before the write is written, one back and then forgotten again is
/// deleted.
pub(crate) fn run_store(mut store: Store, rx: mpsc::Receiver<ToStore>) {
    // Per client: `Some(row)` to write, `None` to delete.
    let mut pending: HashMap<ClientId, Option<SessionRow>> = HashMap::new();
    let merge = |pending: &mut HashMap<ClientId, Option<SessionRow>>, c: Changes| {
        // One checkpoint names a client once, so the order within it does
        // not matter.
        for id in c.forgotten {
            pending.insert(id, None);
        }
        for r in c.rows {
            pending.insert(r.client_id, Some(r));
        }
    };
    while let Ok(ToStore { changes, mut ck }) = rx.recv() {
        merge(&mut pending, changes);
        while let Ok(next) = rx.try_recv() {
            merge(&mut pending, next.changes);
            ck = next.ck;
        }
        let mut rows = Vec::new();
        let mut forgotten = Vec::new();
        for (id, change) in &pending {
            match change {
                Some(r) => rows.push(r.clone()),
                None => forgotten.push(*id),
            }
        }
        match store.write_checkpoint(&rows, &forgotten, ck, now_us()) {
            // A new table: the one a burst grew is not kept.
            Ok(()) => pending = HashMap::new(),
            Err(e) => tracing::error!(error = %e, "session checkpoint failed; will retry"),
        }
    }
}
