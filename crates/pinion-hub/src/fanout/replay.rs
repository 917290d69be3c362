//! Catch-up replays: the replay thread reads the log for the subscribers
//! whose start is below their core's watermark.
//!
//! A replay is read in chunks, one [`ReplayReq`] each: the core asks for
//! the next chunk only once the previous one is written. What a peer can
//! make the thread do is bounded four ways:
//!
//! * **A chunk is bounded by the bytes it reads**, matching or not
//!   ([`replay_chunk`]): about [`REPLAY_CHUNK`](super::REPLAY_CHUNK) of
//!   log, never the whole log for a filter that matches nothing.
//!   [`Replayed::next`] says where to go on, so a subscriber on a rare
//!   topic simply asks again, and waits its turn like everyone else.
//! * **At most `max_replays` replays hold a slot** ([`ReplayQueue`]): a
//!   slot is held from the moment a replay is let in until its chunk has
//!   been written (its core asks for the next one), so at most that many
//!   chunks are being read or delivered at once; a chunk that matched
//!   nothing has nothing to deliver and frees its slot at once. The
//!   others wait their turn in arrival order. A replay whose next request
//!   comes back while others wait gives up its slot and queues behind
//!   them, so every replay gets one chunk per turn, round-robin: a
//!   subscriber far behind on a rare topic costs the others one
//!   chunk-read per turn, never the log. A subscriber that does not take
//!   its chunk within [`REPLAY_STALL`] gives up its slot too (its chunk
//!   stays in its own queue, bounded like any subscriber's), so clients
//!   that do not read cannot hold the slots.
//! * **Replays at the same offset share a read**: the replay whose turn
//!   it is reads for the others let in at its offset (those waiting at it
//!   come in with it), each record encoded once for all of them. A storm
//!   of subscribers resuming from one offset (after a restart, or a
//!   hundred `from=0` on a topic that matches nothing) costs a read per
//!   `max_replays` of them per turn, not one per subscriber.
//! * **A replay ends with its subscriber**: the core sets the
//!   subscriber's cancel flag when it drops it, and the thread checks it
//!   before every chunk, so the requests of a subscriber that left are
//!   dropped without reading (counted in `replays_cancelled`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedSender;

use super::{encode, matches, Durable, FanIn, Framing};
use crate::Shared;

/// A replay whose subscriber has not taken its chunk within this long
/// gives up its slot (it queues again once it asks for the next chunk).
/// A 256 KiB chunk takes well under this on any link that can follow a
/// hub; a client that does not read at all holds a slot this long at most.
pub const REPLAY_STALL: Duration = Duration::from_millis(100);
/// How often, at most, the busy replay thread looks through every replay
/// it holds for subscribers that left (checked before every chunk anyway;
/// this keeps the `replays_waiting` gauge honest).
const SWEEP_EVERY: Duration = Duration::from_millis(10);
/// How far down the waiting line the replay thread looks for replays at
/// the offset of the one it lets in, to read for them too (bounds the
/// cost of the look per read when thousands wait at other offsets).
const SHARE_WINDOW: usize = 1024;

/// A catch-up request to the replay thread: one chunk of a subscriber's
/// replay.
pub(crate) struct ReplayReq {
    pub core: usize,
    pub sub: u64,
    pub from: u64,
    pub upto: u64,
    pub framing: Framing,
    pub filter: Vec<Bytes>,
    /// Bytes to read at most, of log and of frames each (so a chunk
    /// always fits the subscriber's queue bound, and a replay never counts
    /// as a slow consumer; and a filter that matches nothing still reads
    /// no more than this per turn).
    pub budget: usize,
    /// Set by the core when the subscriber is dropped: nothing more is
    /// read for it.
    pub cancel: Arc<AtomicBool>,
}

/// What the replay thread read.
pub(crate) struct Replayed {
    pub sub: u64,
    /// `(offset, frame)` of the matching records.
    pub frames: Vec<(u64, Bytes)>,
    /// The offset after the last record read (matching or not).
    pub next: u64,
    /// The log could not be read.
    pub error: Option<String>,
}

/// Where the replay thread reads records: the journal, or an in-memory
/// log in the model tests.
pub(crate) trait LogSource {
    /// The error reading it.
    type Error: std::fmt::Display;
    /// Moves to the record at `offset` (the end is allowed; beyond it is
    /// an error).
    fn seek(&mut self, offset: u64) -> Result<(), Self::Error>;
    /// The record there, moving past it; `None` at the end.
    fn next_record(&mut self) -> Option<Result<pinion_journal::Record, Self::Error>>;
}

impl LogSource for pinion_journal::Reader {
    type Error = pinion_journal::JournalError;

    fn seek(&mut self, offset: u64) -> Result<(), Self::Error> {
        pinion_journal::Reader::seek(self, offset)
    }

    fn next_record(&mut self) -> Option<Result<pinion_journal::Record, Self::Error>> {
        self.next()
    }
}

/// Answers catch-up requests that start at the same offset with one read
/// of `log`: for each, the records from its `from` up to its `upto` that
/// pass its filter, stopping at the first record that cannot be read, or
/// once its `budget` of bytes has been read from the log or made into its
/// frames (whichever comes first; the record that crosses it is the
/// last). Each matching record is encoded once, its frames shared by every
/// request it matches. A request that starts at or past its `upto` (a
/// subscriber that asked to start beyond the log) reads nothing.
pub(crate) fn replay_chunk<L: LogSource>(
    group: &[ReplayReq],
    log: &mut L,
    buf: &mut BytesMut,
) -> Vec<Replayed> {
    let mut outs: Vec<Replayed> = group
        .iter()
        .map(|r| Replayed {
            sub: r.sub,
            frames: Vec::new(),
            next: r.from,
            error: None,
        })
        .collect();
    let Some(from) = group.iter().map(|r| r.from).min() else {
        return outs;
    };
    debug_assert!(group.iter().all(|r| r.from == from), "one offset per read");
    // Which requests still take records, and the bytes of frames made for
    // each. Counting only the frames (as before) let a filter that
    // matches nothing read, and checksum, the whole log in one request.
    let mut open: Vec<bool> = group.iter().map(|r| r.from < r.upto).collect();
    let mut made = vec![0usize; group.len()];
    if !open.contains(&true) {
        return outs;
    }
    if let Err(e) = log.seek(from) {
        for (o, _) in outs.iter_mut().zip(&open).filter(|(_, &open)| open) {
            o.error = Some(e.to_string());
        }
        return outs;
    }
    let mut read = 0usize;
    while open.contains(&true) {
        let rec = match log.next_record() {
            None => break,
            Some(Err(e)) => {
                let e = e.to_string();
                for (o, _) in outs.iter_mut().zip(&open).filter(|(_, &open)| open) {
                    o.error = Some(e.clone());
                }
                break;
            }
            Some(Ok(rec)) => rec,
        };
        read += rec.byte_len as usize;
        let mut frames = None;
        for (i, r) in group.iter().enumerate() {
            if !open[i] {
                continue;
            }
            if rec.offset >= r.upto {
                open[i] = false;
                continue;
            }
            let out = &mut outs[i];
            out.next = rec.offset + 1;
            // A cluster log's Raft blank and membership entries take
            // offsets but are not messages: subscribers never see them.
            if rec.kind == pinion_journal::RecordKind::Message && matches(&r.filter, &rec.topic) {
                let e = frames.get_or_insert_with(|| {
                    encode(
                        &Durable {
                            offset: rec.offset,
                            timestamp_us: rec.timestamp_us,
                            client_id: &rec.client_id,
                            seq: rec.seq,
                            topic: &rec.topic,
                            payload: &rec.payload,
                        },
                        buf,
                    )
                });
                let f = match r.framing {
                    Framing::Sp => e.sp.clone(),
                    Framing::Ws => e.ws.clone(),
                };
                made[i] += f.len();
                out.frames.push((rec.offset, f));
            }
            if read.max(made[i]) >= r.budget || out.next >= r.upto {
                open[i] = false;
            }
        }
    }
    outs
}

/// One subscriber's replay, as the replay thread tracks it between its
/// chunks.
struct Replay {
    cancel: Arc<AtomicBool>,
    /// Its request for the next chunk, once its core has asked (`None`:
    /// its last chunk is being read, or is with its core).
    req: Option<ReplayReq>,
    /// It holds one of the slots.
    slot: bool,
    /// When its last chunk went to its core (while it has no request).
    parked_at: Option<Instant>,
}

/// Which replays read next: at most `max` hold a slot, served one chunk
/// each in turn, those at one offset with one read; the others wait in
/// arrival order (see the module docs).
/// Sans-IO: the thread feeds it requests and the time, and reads what it
/// hands out.
pub(crate) struct ReplayQueue {
    max: usize,
    replays: HashMap<u64, Replay>,
    /// Replays holding a slot (at most `max`).
    slots: Vec<u64>,
    /// Replays holding a slot and a request, in turn order.
    ready: VecDeque<u64>,
    /// Replays with a request but no slot, in arrival order.
    waiting: VecDeque<u64>,
    /// Replays dropped because their subscriber left, not yet counted.
    cancelled: u64,
    last_sweep: Option<Instant>,
}

impl ReplayQueue {
    /// A queue letting `max` replays (at least one) read at once.
    pub fn new(max: usize) -> ReplayQueue {
        ReplayQueue {
            max: max.max(1),
            replays: HashMap::new(),
            slots: Vec::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            cancelled: 0,
            last_sweep: None,
        }
    }

    /// Replays holding a slot (the `replays_active` gauge).
    pub fn active(&self) -> usize {
        self.slots.len()
    }

    /// Replays waiting for a slot (the `replays_waiting` gauge).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Replays it tracks: holding a slot, waiting, or between chunks.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.replays.len()
    }

    /// Replays dropped since the last call because their subscriber left.
    pub fn take_cancelled(&mut self) -> u64 {
        std::mem::take(&mut self.cancelled)
    }

    /// A core asks for a chunk: a new replay queues; one whose last chunk
    /// was written keeps its slot only if nobody is waiting for one.
    pub fn push(&mut self, req: ReplayReq) {
        let sub = req.sub;
        let Some(r) = self.replays.get_mut(&sub) else {
            self.replays.insert(
                sub,
                Replay {
                    cancel: req.cancel.clone(),
                    req: Some(req),
                    slot: false,
                    parked_at: None,
                },
            );
            self.waiting.push_back(sub);
            return;
        };
        if r.req.is_some() {
            // A core asks once at a time; a second request is a bug there.
            // The newer one says where the subscriber stands now.
            debug_assert!(false, "a second replay request for subscriber {sub}");
            r.req = Some(req);
            return;
        }
        r.req = Some(req);
        r.parked_at = None;
        if r.slot && self.waiting.is_empty() {
            self.ready.push_back(sub);
        } else {
            if r.slot {
                r.slot = false;
                self.slots.retain(|&s| s != sub);
            }
            self.waiting.push_back(sub);
        }
    }

    /// The next chunks to read, as one read of the log (empty: nothing
    /// to read now): slots are given to waiting replays first come first
    /// served (see [`ReplayQueue::admit`]), and the replays holding them
    /// take turns; the replay whose turn it is reads for every other one
    /// holding a slot that stands at the same offset. A replay whose
    /// subscriber left is dropped here, unread.
    pub fn next(&mut self, now: Instant) -> Vec<ReplayReq> {
        self.tend(now);
        let mut group = Vec::new();
        while group.is_empty() {
            self.admit();
            let Some(sub) = self.ready.pop_front() else {
                return group;
            };
            if let Some(req) = self.take(sub) {
                group.push(req);
            }
        }
        let from = group[0].from;
        let mut i = 0;
        while i < self.ready.len() {
            let sub = self.ready[i];
            let here = self
                .replays
                .get(&sub)
                .and_then(|r| r.req.as_ref())
                .is_some_and(|r| r.from == from);
            if !here {
                i += 1;
                continue;
            }
            self.ready.remove(i);
            if let Some(req) = self.take(sub) {
                group.push(req);
            }
        }
        group
    }

    /// The request of a replay whose turn it is, unless its subscriber
    /// left (then it is dropped, unread).
    fn take(&mut self, sub: u64) -> Option<ReplayReq> {
        let r = self.replays.get_mut(&sub)?;
        if r.cancel.load(Ordering::Acquire) {
            self.forget(sub);
            return None;
        }
        let req = r.req.take();
        debug_assert!(req.is_some(), "subscriber {sub} ready without a request");
        req
    }

    /// A chunk handed out by [`ReplayQueue::next`] went to its core
    /// (`finished`: it reached the watermark it was asked for, or the log
    /// failed, or the core is gone; the subscriber needs no more). Until
    /// the core asks again, a replay whose chunk holds frames keeps its
    /// slot (for [`REPLAY_STALL`] at most): they are being delivered. One
    /// whose chunk matched nothing has nothing to deliver, and frees it
    /// at once.
    pub fn done(&mut self, sub: u64, finished: bool, frames: bool, now: Instant) {
        if finished {
            self.forget_quietly(sub);
            return;
        }
        let Some(r) = self.replays.get_mut(&sub) else {
            return;
        };
        if frames {
            r.parked_at = Some(now);
        } else if r.slot {
            r.slot = false;
            self.slots.retain(|&s| s != sub);
        }
    }

    /// When the thread, with nothing to read, must look again without a
    /// new request: a slot held by a chunk that is with its core is freed
    /// after [`REPLAY_STALL`] (or when its subscriber leaves). `None`:
    /// nothing will change until a request comes.
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| self.replays.get(s)?.parked_at)
            .map(|at| (at + REPLAY_STALL).min(now + SWEEP_EVERY))
            .min()
    }

    /// Frees the slots of replays whose subscriber left or has not taken
    /// its chunk within [`REPLAY_STALL`] (a handful: checked every time),
    /// and every [`SWEEP_EVERY`] drops the waiting replays of subscribers
    /// that left (those are dropped when their turn comes anyway; this
    /// keeps the gauge right).
    fn tend(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.slots.len() {
            let sub = self.slots[i];
            let Some(r) = self.replays.get_mut(&sub) else {
                self.slots.swap_remove(i);
                continue;
            };
            if r.cancel.load(Ordering::Acquire) {
                self.forget(sub);
                continue;
            }
            if r.parked_at.is_some_and(|at| now >= at + REPLAY_STALL) {
                r.slot = false;
                self.slots.swap_remove(i);
                continue;
            }
            i += 1;
        }
        if self.last_sweep.is_some_and(|at| now < at + SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        let before = self.replays.len();
        // Kept: those whose subscriber is still there, and those holding
        // a slot (handled above).
        self.replays
            .retain(|_, r| r.slot || !r.cancel.load(Ordering::Acquire));
        let gone = before - self.replays.len();
        if gone > 0 {
            self.cancelled += gone as u64;
            let replays = &self.replays;
            self.waiting.retain(|s| replays.contains_key(s));
        }
    }

    /// Gives free slots to the waiting replays in arrival order; those
    /// waiting (within [`SHARE_WINDOW`]) at the offset of one let in come
    /// in with it, to share its read: that read happens anyway, so nobody
    /// ahead of them waits longer for a read, and a storm of replays that
    /// arrived at slightly different times gathers at a few offsets.
    fn admit(&mut self) {
        while self.slots.len() < self.max {
            let Some(sub) = self.waiting.pop_front() else {
                return;
            };
            let Some(from) = self.let_in(sub) else {
                continue;
            };
            let mut i = 0;
            while self.slots.len() < self.max && i < self.waiting.len().min(SHARE_WINDOW) {
                let other = self.waiting[i];
                let here = self
                    .replays
                    .get(&other)
                    .and_then(|r| r.req.as_ref())
                    .is_some_and(|r| r.from == from);
                if here {
                    self.waiting.remove(i);
                    self.let_in(other);
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Gives a waiting replay a slot and its turn; its offset, unless its
    /// subscriber left (then it is dropped, unread).
    fn let_in(&mut self, sub: u64) -> Option<u64> {
        let r = self.replays.get_mut(&sub)?;
        if r.cancel.load(Ordering::Acquire) {
            self.forget(sub);
            return None;
        }
        let from = r.req.as_ref()?.from;
        r.slot = true;
        self.slots.push(sub);
        self.ready.push_back(sub);
        Some(from)
    }

    /// Drops a replay whose subscriber left (counted).
    fn forget(&mut self, sub: u64) {
        if self.forget_quietly(sub) {
            self.cancelled += 1;
        }
    }

    /// Drops a replay and frees its slot; whether it was held. Its key may
    /// stay in `ready` or `waiting`, where it is skipped.
    fn forget_quietly(&mut self, sub: u64) -> bool {
        match self.replays.remove(&sub) {
            Some(r) => {
                if r.slot {
                    self.slots.retain(|&s| s != sub);
                }
                true
            }
            None => false,
        }
    }
}

/// The replay thread: reads the log for subscribers catching up, at most
/// `max_replays` at once, in turn (see [`ReplayQueue`]). Ends when every
/// core's fan-out has ended.
pub(crate) fn run_replay(
    mut reader: pinion_journal::Reader,
    rx: Receiver<ReplayReq>,
    cores: Vec<UnboundedSender<FanIn>>,
    max_replays: usize,
    shared: Arc<Shared>,
) {
    let mut q = ReplayQueue::new(max_replays);
    let mut buf = BytesMut::new();
    let stats = &shared.stats;
    loop {
        // Every request the cores have sent, before choosing what to read.
        loop {
            match rx.try_recv() {
                Ok(req) => q.push(req),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let group = q.next(Instant::now());
        stats
            .replays_active
            .store(q.active() as u64, Ordering::Relaxed);
        stats
            .replays_waiting
            .store(q.waiting() as u64, Ordering::Relaxed);
        stats
            .replays_cancelled
            .fetch_add(q.take_cancelled(), Ordering::Relaxed);
        if group.is_empty() {
            // Nothing to read: wait for a request, or for a held slot to
            // be freed.
            let got = match q.wake_at(Instant::now()) {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(req) => Some(req),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(req) => Some(req),
                    Err(_) => return,
                },
            };
            if let Some(req) = got {
                q.push(req);
            }
            continue;
        }
        let outs = replay_chunk(&group, &mut reader, &mut buf);
        let now = Instant::now();
        for (req, out) in group.iter().zip(outs) {
            let finished = out.error.is_some() || out.next >= req.upto;
            let frames = !out.frames.is_empty();
            let sent = cores
                .get(req.core)
                .is_some_and(|tx| tx.send(FanIn::Replayed(out)).is_ok());
            q.done(req.sub, finished || !sent, frames, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vec2(Vec<pinion_journal::Record>, usize);

    impl LogSource for Vec2 {
        type Error = String;
        fn seek(&mut self, offset: u64) -> Result<(), String> {
            self.1 = offset as usize;
            Ok(())
        }
        fn next_record(&mut self) -> Option<Result<pinion_journal::Record, String>> {
            let r = self.0.get(self.1)?.clone();
            self.1 += 1;
            Some(Ok(r))
        }
    }

    /// A cluster log's Raft entries (blank, membership) take offsets but
    /// are never delivered; the replay moves past them.
    #[test]
    fn raft_entries_are_skipped() {
        use pinion_journal::RecordKind as K;
        let kinds = [K::Membership, K::Blank, K::Message, K::Blank, K::Message];
        let log = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| pinion_journal::Record {
                offset: i as u64,
                term: 1,
                kind,
                // Messages of one entry are delivered like any other.
                continued: kind == pinion_journal::RecordKind::Message && i.is_multiple_of(2),
                timestamp_us: 0,
                client_id: [0; 16],
                seq: i as u64,
                topic: Bytes::from_static(b"t"),
                payload: Bytes::from_static(b"p"),
                byte_pos: 0,
                byte_len: 72,
            })
            .collect();
        let cancel = Arc::new(AtomicBool::new(false));
        let group = [ReplayReq {
            core: 0,
            sub: 1,
            from: 0,
            upto: 5,
            framing: Framing::Sp,
            filter: Vec::new(),
            budget: 1 << 20,
            cancel,
        }];
        let outs = replay_chunk(&group, &mut Vec2(log, 0), &mut BytesMut::new());
        let offsets: Vec<u64> = outs[0].frames.iter().map(|f| f.0).collect();
        assert_eq!(offsets, vec![2, 4]);
        assert_eq!(outs[0].next, 5);
    }

    fn flags(n: usize) -> Vec<Arc<AtomicBool>> {
        (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect()
    }

    /// A request of subscriber `sub` from offset `from`.
    fn req(sub: u64, from: u64, cancel: &Arc<AtomicBool>) -> ReplayReq {
        ReplayReq {
            core: 0,
            sub,
            from,
            upto: 1000,
            framing: Framing::Ws,
            filter: Vec::new(),
            budget: 100,
            cancel: cancel.clone(),
        }
    }

    /// Serves `q` for `reads` reads, each chunk holding frames (`frames`)
    /// or not, and its core asking for the next at once; returns the
    /// subscribers of each read.
    fn serve(q: &mut ReplayQueue, reads: usize, frames: bool, now: Instant) -> Vec<Vec<u64>> {
        let mut order = Vec::new();
        for _ in 0..reads {
            let group = q.next(now);
            if group.is_empty() {
                break;
            }
            assert!(q.active() <= q.max);
            order.push(group.iter().map(|r| r.sub).collect());
            for r in group {
                q.done(r.sub, false, frames, now);
                q.push(r);
            }
        }
        order
    }

    #[test]
    fn slots_are_capped_and_every_replay_gets_a_chunk_per_turn() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(3);
        let f = flags(10);
        for (i, f) in f.iter().enumerate() {
            q.push(req(i as u64, i as u64, f));
        }
        assert_eq!((q.active(), q.waiting()), (0, 10));
        let order = serve(&mut q, 30, true, now);
        // Round-robin over all ten, in arrival order, though only three
        // hold a slot at a time.
        let want: Vec<Vec<u64>> = (0..30).map(|i| vec![i % 10]).collect();
        assert_eq!(order, want);
        // The last one read asked again and queued behind the others; its
        // slot goes to the first of them at the next turn.
        assert_eq!((q.active(), q.waiting()), (2, 8));
        assert_eq!(q.next(now).first().map(|r| r.sub), Some(0));
        assert_eq!(q.active(), 3);
    }

    #[test]
    fn a_replay_alone_keeps_its_slot_and_a_newcomer_waits_one_turn_at_most() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(1);
        let f = flags(2);
        q.push(req(1, 0, &f[0]));
        assert_eq!(serve(&mut q, 3, true, now), vec![vec![1]; 3]);
        q.push(req(2, 500, &f[1]));
        assert_eq!(
            serve(&mut q, 4, true, now),
            vec![vec![1], vec![2], vec![1], vec![2]]
        );
    }

    #[test]
    fn replays_at_one_offset_share_a_read_within_the_cap() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(4);
        let f = flags(7);
        // Six from offset 0 (one of them first in line elsewhere), one
        // from 50.
        q.push(req(0, 50, &f[0]));
        for i in 1..7 {
            q.push(req(i, 0, &f[i as usize]));
        }
        let g = q.next(now);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![0]);
        q.done(0, false, true, now);
        // 1, 2 and 3 hold the other slots: one read for the three.
        let g = q.next(now);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((q.active(), q.waiting()), (4, 3));
        for r in &g {
            q.done(r.sub, false, true, now);
        }
        assert!(q.next(now).is_empty(), "every slot is being delivered");
    }

    #[test]
    fn replays_waiting_at_the_offset_of_the_next_come_in_with_it() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(3);
        let f = flags(5);
        for (i, from) in [0, 5, 0, 5, 0].into_iter().enumerate() {
            q.push(req(i as u64, from, &f[i]));
        }
        // 0 is let in; 2 and 4, at its offset, come along (ahead of 1 and
        // 3, who lose no read by it).
        let g = q.next(now);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![0, 2, 4]);
        for r in &g {
            q.done(r.sub, false, false, now);
        }
        let g = q.next(now);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn a_chunk_that_matched_nothing_frees_its_slot_at_once() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(2);
        let f = flags(6);
        for (i, f) in f.iter().enumerate() {
            q.push(req(i as u64, 0, f));
        }
        // Nothing to deliver: the slots go straight to the next in line,
        // two at a time, each pair in one read; those read queue again.
        let order = serve(&mut q, 6, false, now);
        assert_eq!(
            order,
            vec![
                vec![0, 1],
                vec![2, 3],
                vec![4, 5],
                vec![0, 1],
                vec![2, 3],
                vec![4, 5]
            ]
        );
    }

    #[test]
    fn replays_of_subscribers_that_left_are_dropped_unread() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(2);
        let f = flags(6);
        for (i, f) in f.iter().enumerate() {
            q.push(req(i as u64, i as u64, f));
        }
        // 0 is read and parked (its chunk with the core); 1 is ready; 2-5
        // wait. 0, 1 and 3 leave.
        let g = q.next(now);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![0]);
        q.done(0, false, true, now);
        for i in [0, 1, 3] {
            f[i].store(true, Ordering::Release);
        }
        let mut order = Vec::new();
        loop {
            let g = q.next(now);
            if g.is_empty() {
                break;
            }
            for r in g {
                order.push(r.sub);
                q.done(r.sub, true, true, now);
            }
        }
        assert_eq!(order, vec![2, 4, 5]);
        assert_eq!(q.take_cancelled(), 3);
        assert_eq!((q.active(), q.waiting()), (0, 0));
        assert!(q.replays.is_empty());
    }

    #[test]
    fn the_gauge_drops_waiting_replays_of_subscribers_that_left() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(1);
        let f = flags(5);
        for (i, f) in f.iter().enumerate() {
            q.push(req(i as u64, i as u64, f));
        }
        let g = q.next(now);
        q.done(g[0].sub, false, true, now);
        assert_eq!(q.waiting(), 4);
        for f in &f[1..] {
            f.store(true, Ordering::Release);
        }
        // The next look after the sweep interval empties the line.
        assert!(q.next(now + SWEEP_EVERY).is_empty());
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.take_cancelled(), 4);
        assert_eq!(q.active(), 1, "the one that stayed keeps its slot");
    }

    #[test]
    fn a_subscriber_that_does_not_take_its_chunk_gives_up_its_slot() {
        let now = Instant::now();
        let mut q = ReplayQueue::new(1);
        let f = flags(2);
        q.push(req(1, 0, &f[0]));
        let g = q.next(now);
        q.done(g[0].sub, false, true, now);
        q.push(req(2, 0, &f[1]));
        // 1's chunk is not written: 2 waits, but not past the stall time.
        assert!(q.next(now).is_empty());
        assert_eq!(q.wake_at(now), Some(now + SWEEP_EVERY));
        assert!(q.next(now + REPLAY_STALL / 2).is_empty());
        let g = q.next(now + REPLAY_STALL);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![2]);
        assert_eq!(q.active(), 1);
        // 1 asks again at last: it waits for 2's slot.
        q.push(req(1, 100, &f[0]));
        assert_eq!(q.waiting(), 1);
        q.done(2, true, true, now + REPLAY_STALL);
        let g = q.next(now + REPLAY_STALL);
        assert_eq!(g.iter().map(|r| r.sub).collect::<Vec<_>>(), vec![1]);
        assert_eq!(q.take_cancelled(), 0);
    }
}
