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
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::sessions::{Changes, ClientId, MergedChanges, Sessions, Verdict};
use crate::stats::HubStats;
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

impl Item {
    /// Its answer, carrying the request back to its core.
    pub(crate) fn answer(self, reply: Reply) -> Answer {
        Answer {
            req: self.req,
            header: self.header,
            pipe: self.pipe,
            cost: self.cost,
            reply,
            received: self.received,
        }
    }
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

/// Changes on their way to the checkpoint thread: a checkpoint (`ck`
/// set), or part of the next one taken early (`ck` None: held by the
/// thread, written with the next checkpoint, never before it).
pub(crate) struct ToStore {
    /// Rows to write and to delete.
    pub changes: Changes,
    /// The offsets they cover.
    pub ck: Option<Checkpoint>,
}

pub(crate) enum ToWriter {
    /// Requests of one core, and that core's token: dropped (here, as soon
    /// as the batch joins a group) to tell the core it may send the next
    /// (see `intake`).
    Batch(Vec<Item>, Arc<()>),
    /// Final sync and checkpoint, then stop; reports when done.
    Shutdown(mpsc::Sender<()>),
}

/// Where the intakes send their batches: the single node's writer thread
/// (a std channel), or the cluster's Raft writer task (a tokio channel,
/// which wakes the task directly: no thread in between).
#[derive(Clone)]
pub(crate) enum WriterTx {
    Thread(mpsc::Sender<ToWriter>),
    Task(tokio::sync::mpsc::UnboundedSender<ToWriter>),
}

impl WriterTx {
    /// Sends; `false` once the writer is gone.
    pub fn send(&self, m: ToWriter) -> bool {
        match self {
            WriterTx::Thread(t) => t.send(m).is_ok(),
            WriterTx::Task(t) => t.send(m).is_ok(),
        }
    }

    /// A sender whose writer is already gone (to drop the real one).
    pub fn closed() -> WriterTx {
        WriterTx::Thread(mpsc::channel().0)
    }
}

pub(crate) struct Writer {
    pub journal: Journal,
    pub sessions: Sessions,
    pub fsync: FsyncPolicy,
    pub checkpoint_every: Duration,
    pub horizon: u64,
    /// Sessions held at most (the horizon shortens past it).
    pub max_sessions: usize,
    /// Sessions forgotten over `max_sessions` since the last checkpoint
    /// (reported there).
    pub evicted: usize,
    pub rx: mpsc::Receiver<ToWriter>,
    pub cores: Vec<UnboundedSender<Vec<Answer>>>,
    pub store_tx: mpsc::Sender<ToStore>,
    pub shared: Arc<Shared>,
    /// Every core's fan-out task. Unbounded channels, but what the writer
    /// puts in them is bounded in bytes per core by `fan_gate` (and the
    /// writer never waits on them). The other messages on them (new
    /// subscribers, their ends, pings, "writable" notices, replay chunks)
    /// come one or a few at a time per subscriber, so the connection caps
    /// and the replay caps bound them; pongs follow a subscriber's pings,
    /// read on the same core by a task that takes turns with the fan-out,
    /// and their frames count toward that subscriber's queue bound.
    pub fan: Vec<UnboundedSender<FanIn>>,
    /// What each core has been sent and not yet processed.
    pub fan_gate: FanGate,
    /// Durable records not yet handed to the fan-out, from `fan_first`.
    pub fan_pending: Vec<Entry>,
    pub fan_first: u64,
    /// Every record from `fan_first` on is in `fan_pending`.
    pub fan_encoded: bool,
    pub fan_buf: BytesMut,
}

/// Requests committed in one group at most (plus up to one intake batch,
/// 512, past it). The rest waits in the channel for the next group. A
/// group's working memory (its items, their verdicts and answers, the
/// encoded records) is ~700 bytes per request, so without a bound one group
/// taking every request in flight held tens of megabytes at once; 16,384 per
/// commit is far past where grouping stops paying (an fdatasync covers them
/// all either way).
const MAX_GROUP: usize = 16 * 1024;

/// Heap entries the writer may visit evicting sessions after a group,
/// beyond one per request of the group (see [`Sessions::evict_toward`]).
const EVICT_SLACK: usize = 1024;

/// Clients changed since the last checkpoint past which the writer hands
/// some of their rows to the checkpoint thread after each group, instead
/// of all at the next checkpoint (see [`Sessions::take_dirty_some`]). A
/// few busy clients never get there.
const DIRTY_EARLY: usize = 8192;

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Writer {
    pub fn run(mut self) {
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
            if self.fan_gate.lagging(self.fan_first) {
                // A core was skipped: look again soon, so that it learns
                // of what it missed once it drains, publishes or not.
                next = next.min(Instant::now() + FAN_RETRY);
            }
            let timeout = next.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(timeout) {
                Ok(ToWriter::Batch(b, _taken)) => group.extend(b),
                Ok(ToWriter::Shutdown(done)) => stop = Some(done),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Take what else is queued, up to MAX_GROUP: that is the group.
            while stop.is_none() && group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(ToWriter::Batch(b, _taken)) => group.extend(b),
                    Ok(ToWriter::Shutdown(done)) => stop = Some(done),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                let n = group.len();
                self.commit_group(&mut group, &mut outbox, &mut durable, &mut last_sync);
                // Over max_sessions: evict as fast as new clients come (at
                // most one new session per request), a little at a time.
                let e = self
                    .sessions
                    .evict_toward(self.max_sessions, n + EVICT_SLACK);
                self.evicted += e.sessions;
                // Many clients changed (a flood of new ids): hand some rows
                // over now. Each request changes two clients at most (its
                // own, and one evicted for it), so this keeps up.
                if self.sessions.dirty_len() > DIRTY_EARLY {
                    let changes = self.sessions.take_dirty_some(2 * n + EVICT_SLACK);
                    let _ = self.store_tx.send(ToStore { changes, ck: None });
                }
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
    /// with `fsync = never` written) to every core, as one shared batch,
    /// unless that core is over its backlog bound (see [`FanGate`]).
    fn fan_out(&mut self, durable: u64) {
        let visible = match self.fsync {
            FsyncPolicy::Interval(_) => durable,
            _ => self.journal.committed_offset(),
        };
        let mut batch = None;
        if visible > self.fan_first {
            let split = self.fan_pending.partition_point(|e| e.offset < visible);
            let entries: Vec<Entry> = self.fan_pending.drain(..split).collect();
            batch = Some(Arc::new(FanBatch {
                first: self.fan_first,
                next: visible,
                encoded: self.fan_encoded,
                entries,
            }));
            self.fan_first = visible;
            self.fan_encoded = true;
        }
        for (core, tx) in self.fan.iter().enumerate() {
            self.fan_gate
                .offer(core, tx, batch.as_ref(), self.fan_first, &self.shared.stats);
        }
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
        // More clients within the horizon than the hub holds sessions for
        // (a flood of ids): the oldest entries go first, as if the horizon
        // were shorter. Most were evicted after each group already (see
        // `commit_group`'s caller); what is left goes now.
        let shortened = self.sessions.evict_to(self.max_sessions).sessions + self.evicted;
        self.evicted = 0;
        if shortened > 0 {
            tracing::warn!(
                forgotten = shortened,
                max_sessions = self.max_sessions,
                "more clients than max_sessions within the dedup horizon: forgot the oldest"
            );
        }
        let changes = self.sessions.take_dirty();
        let ck = Checkpoint {
            log_offset: head,
            replay_from: self.sessions.replay_from(head),
        };
        publish_session_stats(&self.sessions, &self.shared.stats);
        let _ = self.store_tx.send(ToStore {
            changes,
            ck: Some(ck),
        });
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
                    publish_session_stats(&self.sessions, &shared.stats);
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
            outbox[it.core].push(it.answer(reply));
        }
    }
}

/// Sets the `sessions` gauge and the `sessions_forgotten` counter.
pub(crate) fn publish_session_stats(sessions: &Sessions, stats: &HubStats) {
    stats
        .sessions
        .store(sessions.len() as u64, Ordering::Relaxed);
    stats
        .sessions_forgotten
        .store(sessions.forgotten(), Ordering::Relaxed);
}

/// How soon the writer looks again at a core it skipped.
pub(crate) const FAN_RETRY: Duration = Duration::from_millis(10);

/// The bound on each core's fan-out backlog: the bytes of batches the
/// writer sent it that it has not processed yet.
///
/// The writer never waits on a core. A core whose backlog is over
/// `max_fanout_backlog` (its fan-out is falling behind) is simply not sent
/// the next batches; once it has worked its backlog down, it is sent one
/// light batch (`encoded: false`, no entries) covering every record it
/// missed. Its fan-out sees that as a hole in the live stream and turns
/// its live subscribers to catching up from the log at its watermark
/// ([`crate::fanout`]), so they lose nothing and see nothing twice, and
/// the memory a slow core holds stays within the bound (or one batch, when
/// a single batch is larger: a core with nothing pending always takes the
/// next batch whole, so it makes progress).
pub(crate) struct FanGate {
    max: usize,
    cores: Vec<GateCore>,
}

struct GateCore {
    /// Bytes sent to the core and not yet processed: the writer adds
    /// before sending, the core subtracts after processing ([`release`]).
    backlog: Arc<AtomicUsize>,
    /// The end (`next`) of the last batch sent to it.
    sent: u64,
    /// In an overflow episode (skipped since it was last caught up).
    over: bool,
}

impl FanGate {
    /// `cores` cores, told of everything below `start`, each allowed
    /// `max` bytes of backlog.
    pub fn new(cores: usize, start: u64, max: usize) -> FanGate {
        FanGate {
            max,
            cores: (0..cores)
                .map(|_| GateCore {
                    backlog: Arc::new(AtomicUsize::new(0)),
                    sent: start,
                    over: false,
                })
                .collect(),
        }
    }

    /// Core `core`'s backlog counter, for its fan-out to [`release`] into.
    pub fn counter(&self, core: usize) -> Arc<AtomicUsize> {
        self.cores[core].backlog.clone()
    }

    /// Some core has not been told of every record below `head`.
    pub fn lagging(&self, head: u64) -> bool {
        self.cores.iter().any(|c| c.sent < head)
    }

    /// Tells core `core` of the records below `head` it was not sent yet:
    /// `batch` (which ends at `head`) when it follows on from what the core
    /// was sent and fits in its bound; otherwise a light batch covering
    /// them, when that fits; otherwise nothing for now.
    pub fn offer(
        &mut self,
        core: usize,
        tx: &UnboundedSender<FanIn>,
        batch: Option<&Arc<FanBatch>>,
        head: u64,
        stats: &HubStats,
    ) {
        let max = self.max;
        let c = &mut self.cores[core];
        if c.sent >= head {
            return;
        }
        let held = c.backlog.load(Ordering::Acquire);
        let fits = |cost: usize| held == 0 || held.saturating_add(cost) <= max;
        let whole = batch.filter(|b| b.first == c.sent && b.next == head);
        let send = match whole {
            Some(b) if fits(batch_cost(b)) => Some(b.clone()),
            _ => {
                let light = FanBatch {
                    first: c.sent,
                    next: head,
                    encoded: false,
                    entries: Vec::new(),
                };
                fits(batch_cost(&light)).then(|| Arc::new(light))
            }
        };
        let Some(b) = send else {
            if !c.over {
                c.over = true;
                stats.fanout_overflows.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    core,
                    backlog = held,
                    limit = max,
                    "fan-out falling behind: its subscribers will read the log"
                );
            }
            return;
        };
        // Charged before it is sent: the core may process it at once.
        let cost = batch_cost(&b);
        c.backlog.fetch_add(cost, Ordering::AcqRel);
        stats
            .fanout_backlog
            .fetch_add(cost as u64, Ordering::Relaxed);
        let next = b.next;
        if let Err(e) = tx.send(FanIn::Batch(b)) {
            // The core is gone: nothing will release it.
            if let FanIn::Batch(b) = e.0 {
                release(&c.backlog, stats, &b);
            }
            return;
        }
        c.sent = next;
        // Caught up (a whole batch or the light one): the episode is over.
        c.over = false;
    }
}

/// What a batch holds in memory, as charged against a core's backlog: the
/// batch, its entries and their frames.
pub(crate) fn batch_cost(b: &FanBatch) -> usize {
    // The batch behind its Arc, and the channel's slot for it.
    const OVERHEAD: usize = std::mem::size_of::<FanBatch>() + 64;
    b.entries.iter().fold(OVERHEAD, |n, e| {
        n + std::mem::size_of::<Entry>() + e.sp.len() + e.ws.len()
    })
}

/// A core has processed `b`: takes it off its backlog (`backlog`, the
/// counter from [`FanGate::counter`]) and off the hub's gauge.
pub(crate) fn release(backlog: &AtomicUsize, stats: &HubStats, b: &FanBatch) {
    let cost = batch_cost(b);
    backlog.fetch_sub(cost, Ordering::AcqRel);
    stats
        .fanout_backlog
        .fetch_sub(cost as u64, Ordering::Relaxed);
}

/// The checkpoint thread: writes what the writer hands it to SQLite,
/// keeping changes whose write failed for the next attempt.
///
/// Changes are merged per client in the order they come, the later change
/// winning: a client forgotten and then back is written, one back and
/// then forgotten again is deleted. They are written only with a
/// checkpoint, and only changes taken before that checkpoint: what the
/// writer handed over early (no checkpoint) waits for the next one, so
/// the store never holds a row newer than its checkpoint. Checkpoints that
/// queued up meanwhile (SQLite was slow, or a write failed) are coalesced
/// into one write.
pub(crate) fn run_store(mut store: Store, rx: mpsc::Receiver<ToStore>) {
    let mut pending = MergedChanges::new();
    let mut write = |pending: &mut MergedChanges, ck: Checkpoint| {
        let mut rows = Vec::new();
        let mut forgotten = Vec::new();
        for (id, change) in pending.iter() {
            match change {
                Some(r) => rows.push(r.clone()),
                None => forgotten.push(*id),
            }
        }
        match store.write_checkpoint(&rows, &forgotten, ck, now_us()) {
            // A new table: the one a burst grew is not kept.
            Ok(()) => *pending = MergedChanges::new(),
            // Kept, and written with the next checkpoint (which covers
            // everything merged until then).
            Err(e) => tracing::error!(error = %e, "session checkpoint failed; will retry"),
        }
    };
    while let Ok(first) = rx.recv() {
        first.changes.merge_into(&mut pending);
        let mut ck = first.ck;
        while let Ok(next) = rx.try_recv() {
            if next.ck.is_none() {
                // Taken after the checkpoint in hand: that one is written
                // first, without them.
                if let Some(c) = ck.take() {
                    write(&mut pending, c);
                }
            }
            next.changes.merge_into(&mut pending);
            if next.ck.is_some() {
                ck = next.ck;
            }
        }
        if let Some(c) = ck {
            write(&mut pending, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::SessionRow;
    use bytes::Bytes;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pinion-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn row(b: u8, count: u64) -> SessionRow {
        SessionRow {
            client_id: [b; 16],
            last_seq: count,
            count,
            first_seen_us: 1,
            last_seen_us: 2,
            floor: 0,
        }
    }

    fn ck(o: u64) -> Checkpoint {
        Checkpoint {
            log_offset: o,
            replay_from: o,
        }
    }

    /// Changes for the checkpoint thread: with the checkpoint at `at`, or
    /// taken early (`None`).
    fn to_store(rows: Vec<SessionRow>, forgotten: Vec<ClientId>, at: Option<u64>) -> ToStore {
        ToStore {
            changes: Changes { rows, forgotten },
            ck: at.map(ck),
        }
    }

    #[test]
    fn run_store_writes_early_changes_only_with_a_later_checkpoint() {
        let dir = temp_dir("store-early");
        let path = dir.join("s.sqlite");
        let store = Store::open(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let send = |rows, gone, at| tx.send(to_store(rows, gone, at)).unwrap();
        // Taken early, then the checkpoint they belong to: written with it
        // (1 updated by the checkpoint's own change, 2 as taken early).
        send(vec![row(1, 1), row(2, 1)], vec![], None);
        send(vec![row(1, 2)], vec![], Some(5));
        // Taken after that checkpoint, and no checkpoint follows: never
        // written (the store must not hold rows newer than its checkpoint).
        send(vec![row(3, 1)], vec![[2; 16]], None);
        drop(tx);
        run_store(store, rx);
        let store = Store::open(&path).unwrap();
        let mut rows = store.sessions().unwrap();
        rows.sort_by_key(|r| r.client_id);
        assert_eq!(rows, vec![row(1, 2), row(2, 1)]);
        assert_eq!(store.checkpoint().unwrap(), ck(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_store_coalesces_per_client_the_later_change_winning() {
        let dir = temp_dir("store");
        let path = dir.join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        // Rows from an earlier checkpoint: 1 and 2.
        store
            .write_checkpoint(&[row(1, 1), row(2, 1)], &[], ck(1), 0)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let send = |rows, gone, at| tx.send(to_store(rows, gone, Some(at))).unwrap();
        // 1: forgotten, then back (present, newest row). 2: updated, then
        // forgotten (absent). 3: new, then forgotten (absent). 4: forgotten
        // then back then forgotten (absent). 5: new (present).
        send(vec![row(2, 2), row(3, 1)], vec![[1; 16], [4; 16]], 2);
        send(vec![row(1, 5), row(4, 1)], vec![[2; 16], [3; 16]], 3);
        send(vec![row(5, 1)], vec![[4; 16]], 4);
        drop(tx);
        // Everything is queued before it runs: one coalesced write.
        run_store(store, rx);
        let store = Store::open(&path).unwrap();
        let mut rows = store.sessions().unwrap();
        rows.sort_by_key(|r| r.client_id);
        assert_eq!(rows, vec![row(1, 5), row(5, 1)]);
        assert_eq!(store.checkpoint().unwrap(), ck(4));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One encoded record of `pad` payload bytes.
    fn entry(offset: u64, pad: usize, buf: &mut BytesMut) -> Entry {
        fanout::encode(
            &Durable {
                offset,
                timestamp_us: 0,
                client_id: &[7; 16],
                seq: offset,
                topic: b"t",
                payload: &Bytes::from(vec![b'.'; pad]),
            },
            buf,
        )
    }

    /// What a core received: every batch, in order.
    fn drain(rx: &mut UnboundedReceiver<FanIn>) -> Vec<Arc<FanBatch>> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            match m {
                FanIn::Batch(b) => out.push(b),
                _ => panic!("only batches are sent here"),
            }
        }
        out
    }

    /// The batches tile `[start, end)` with no gap or overlap, and each
    /// encoded one carries exactly its records.
    fn assert_tiles(batches: &[Arc<FanBatch>], start: u64, end: u64) {
        let mut at = start;
        for b in batches {
            assert_eq!(b.first, at, "gap or overlap at {at}");
            assert!(b.next > b.first);
            if b.encoded {
                let offs: Vec<u64> = b.entries.iter().map(|e| e.offset).collect();
                assert_eq!(offs, (b.first..b.next).collect::<Vec<_>>());
            } else {
                assert!(b.entries.is_empty());
            }
            at = b.next;
        }
        assert_eq!(at, end);
    }

    #[test]
    fn a_stalled_core_holds_at_most_its_bound_and_is_then_told_of_every_record() {
        const MAX: usize = 64 << 10;
        let stats = HubStats::default();
        let mut gate = FanGate::new(2, 100, MAX);
        let (tx0, mut rx0) = unbounded_channel();
        let (tx1, mut rx1) = unbounded_channel();
        let (c0, c1) = (gate.counter(0), gate.counter(1));
        let mut buf = BytesMut::new();
        let mut got1 = Vec::new();
        let mut head = 100;
        let mut biggest = 0;
        // 2,000 batches of 1-4 records of about 1 KiB: core 0 never
        // processes anything, core 1 processes each batch at once.
        for i in 0..2_000u64 {
            let n = 1 + i % 4;
            let entries = (head..head + n).map(|o| entry(o, 1000, &mut buf)).collect();
            let b = Arc::new(FanBatch {
                first: head,
                next: head + n,
                encoded: true,
                entries,
            });
            biggest = biggest.max(batch_cost(&b));
            head += n;
            gate.offer(0, &tx0, Some(&b), head, &stats);
            gate.offer(1, &tx1, Some(&b), head, &stats);
            drop(b);
            for b in drain(&mut rx1) {
                release(&c1, &stats, &b);
                got1.push(b);
            }
            let held = c0.load(Ordering::Acquire);
            assert!(held <= MAX, "core 0 holds {held} bytes, over {MAX}");
            assert_eq!(stats.fanout_backlog.load(Ordering::Relaxed), held as u64);
        }
        assert!(biggest < MAX);
        // One overflow episode, for core 0 only; core 1 got every batch.
        assert_eq!(stats.fanout_overflows.load(Ordering::Relaxed), 1);
        assert_eq!(got1.len(), 2_000);
        assert!(got1.iter().all(|b| b.encoded));
        assert_tiles(&got1, 100, head);
        assert!(gate.lagging(head));
        // Core 0 wakes up and processes what it was sent: no more than
        // its bound's worth.
        let mut got0 = drain(&mut rx0);
        assert!(got0.len() < MAX / 1000, "{} batches queued", got0.len());
        for b in &got0 {
            release(&c0, &stats, b);
        }
        assert_eq!(c0.load(Ordering::Acquire), 0);
        // With nothing new published, the writer's next look tells it of
        // everything it missed in one light batch.
        gate.offer(0, &tx0, None, head, &stats);
        gate.offer(1, &tx1, None, head, &stats);
        let light = drain(&mut rx0);
        assert_eq!(light.len(), 1);
        assert!(!light[0].encoded);
        assert!(drain(&mut rx1).is_empty());
        got0.extend(light);
        assert_tiles(&got0, 100, head);
        assert!(!gate.lagging(head));
        for b in drain(&mut rx0) {
            release(&c0, &stats, &b);
        }
        release(&c0, &stats, got0.last().unwrap());
        assert_eq!(stats.fanout_backlog.load(Ordering::Relaxed), 0);
        // Back to whole batches, and a new episode is counted anew.
        let b = Arc::new(FanBatch {
            first: head,
            next: head + 1,
            encoded: true,
            entries: vec![entry(head, 10, &mut buf)],
        });
        gate.offer(0, &tx0, Some(&b), head + 1, &stats);
        assert!(drain(&mut rx0)[0].encoded);
        assert_eq!(stats.fanout_overflows.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_batch_larger_than_the_bound_goes_whole_to_a_core_with_nothing_pending() {
        let stats = HubStats::default();
        let mut gate = FanGate::new(1, 0, 4096);
        let (tx, mut rx) = unbounded_channel();
        let mut buf = BytesMut::new();
        let big = Arc::new(FanBatch {
            first: 0,
            next: 2,
            encoded: true,
            entries: vec![entry(0, 5000, &mut buf), entry(1, 5000, &mut buf)],
        });
        assert!(batch_cost(&big) > 4096);
        gate.offer(0, &tx, Some(&big), 2, &stats);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1);
        assert!(got[0].encoded);
        assert_eq!(stats.fanout_overflows.load(Ordering::Relaxed), 0);
        // A core gone: nothing stays charged.
        drop(rx);
        release(&gate.counter(0), &stats, &got[0]);
        let next = Arc::new(FanBatch {
            first: 2,
            next: 3,
            encoded: true,
            entries: vec![entry(2, 10, &mut buf)],
        });
        gate.offer(0, &tx, Some(&next), 3, &stats);
        assert_eq!(gate.counter(0).load(Ordering::Acquire), 0);
        assert_eq!(stats.fanout_backlog.load(Ordering::Relaxed), 0);
    }
}
