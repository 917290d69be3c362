//! Per-client sessions and the duplicate check (sans-IO: no clock, no files).
//!
//! A message is named by `(client id, seq)`. For each client the hub keeps
//! the highest seq it logged, counts, first/last seen, and a **window** of
//! the most recent `(seq, offset)` pairs it logged (FIFO in log order,
//! `window` entries at most). Deciding what to do with a request:
//!
//! * unknown client, or `seq` above the highest logged: **fresh** (log it);
//! * `seq` in the window: **duplicate**, answered with the original offset;
//! * `seq` at or above the client's **floor**: fresh too (a gap: a seq that
//!   was skipped or NACKed before is being sent now);
//! * below the floor: **stale**. The floor rises past every seq evicted
//!   from the window, so below it the hub no longer knows whether the seq
//!   is in the log, and refuses rather than risk logging it twice.
//!
//! # Retention: the dedup horizon
//!
//! Window entries are kept only while their record is among the last
//! `dedup_horizon` records of the log (the writer calls
//! [`Sessions::evict_before`] with `head - dedup_horizon` at every
//! checkpoint). A session whose window becomes empty, because none of its
//! records is within the horizon any more, is **forgotten**: it leaves the
//! map here and its row leaves SQLite in the same checkpoint. The promise,
//! precisely, for a retry of `(client, seq)` whose record is at offset `o`:
//!
//! * `o` is within the horizon and among the client's last `window`
//!   records: **duplicate**, with `o`; never logged twice;
//! * otherwise, while the client's session is held (some record of it is
//!   within the horizon): **stale** (its seq is below the floor);
//! * once the session was forgotten the client is unknown again, and the
//!   retry is **logged again** (a second copy, at a new offset).
//!
//! Eviction runs at checkpoints, so a record stays in the horizon at least
//! until the first checkpoint at which `dedup_horizon` newer records exist.
//! This is the trade NATS JetStream's duplicate window and Kafka's
//! producer-id expiry make: exact deduplication within a bounded recent
//! past, none beyond it. Memory is bounded by the sessions within the
//! horizon (at most one per record in it) times the bytes of a session,
//! plus 16 bytes per window entry beyond a session's first; a client that
//! sent one message and went away costs nothing once its record leaves the
//! horizon.
//!
//! # Cost
//!
//! [`Sessions::check`] and [`Sessions::record`] touch one client. Nothing
//! on the commit path walks every session: the sessions are also kept in a
//! min-heap by the offset of their window's oldest entry, which
//! [`Sessions::evict_before`] pops from the front (only the sessions that
//! have entries to drop) and whose top is [`Sessions::replay_from`]. The
//! heap's key for a session may lag behind its window's front (the window
//! dropped entries on overflow since) but never leads it: recording a
//! message pushes to the heap only when its client's window was empty, and
//! stale keys are corrected when they reach the top.
//!
//! Nothing here is lost in a crash: the sessions are checkpointed to SQLite
//! with the log offset they cover and with `replay_from`, the oldest offset
//! any window still holds; at start the log is replayed from `replay_from`
//! (windows only) and from the checkpoint on (windows and counts), which
//! rebuilds exactly the state the hub had (see [`Sessions::replay`]), and
//! sessions that replay gave no window (rows of older stores) are
//! forgotten ([`Sessions::forget_empty`]).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

/// A client's id: 16 bytes chosen by the client.
pub type ClientId = [u8; 16];

/// What to do with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not in the log: append it.
    Fresh,
    /// Already in the log at `offset`: ACK again with the duplicate flag.
    Duplicate {
        /// The original record's offset.
        offset: u64,
    },
    /// Older than the client's window: the hub cannot tell; refuse.
    Stale {
        /// Seqs below this are unknown.
        floor: u64,
    },
}

/// A window: `(seq, offset)` pairs in log order, oldest first.
///
/// One entry is kept inline: a client that sent a single message (every
/// client of a flood of fresh ids) costs no heap block of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Window {
    #[default]
    Empty,
    One(u64, u64),
    /// Two or more. Boxed on purpose: a bare `VecDeque` (4 words) would
    /// make every session 16 bytes larger, one-message clients included,
    /// for the sake of the few with longer windows.
    #[allow(clippy::box_collection)]
    Many(Box<VecDeque<(u64, u64)>>),
}

impl Window {
    fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
        let (one, many) = match self {
            Window::Empty => (None, None),
            Window::One(seq, off) => (Some((*seq, *off)), None),
            Window::Many(d) => (None, Some(d.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn front(&self) -> Option<(u64, u64)> {
        match self {
            Window::Empty => None,
            Window::One(seq, off) => Some((*seq, *off)),
            Window::Many(d) => d.front().copied(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Window::Empty => 0,
            Window::One(..) => 1,
            Window::Many(d) => d.len(),
        }
    }

    fn push_back(&mut self, e: (u64, u64)) {
        match self {
            Window::Empty => *self = Window::One(e.0, e.1),
            Window::One(seq, off) => {
                let mut d = VecDeque::with_capacity(2);
                d.push_back((*seq, *off));
                d.push_back(e);
                *self = Window::Many(Box::new(d));
            }
            Window::Many(d) => d.push_back(e),
        }
    }

    fn pop_front(&mut self) -> Option<(u64, u64)> {
        match self {
            Window::Empty => None,
            Window::One(seq, off) => {
                let e = (*seq, *off);
                *self = Window::Empty;
                Some(e)
            }
            Window::Many(d) => {
                let e = d.pop_front();
                // Back inline once one is left (frees the block).
                if d.len() == 1 {
                    if let Some((seq, off)) = d.front().copied() {
                        *self = Window::One(seq, off);
                    }
                }
                e
            }
        }
    }
}

/// One client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Highest seq logged (meaningful when `count > 0`).
    pub last_seq: u64,
    /// Records logged for this client.
    pub count: u64,
    /// Timestamp (µs since the Unix epoch) of its first record.
    pub first_seen_us: u64,
    /// Timestamp of its latest record.
    pub last_seen_us: u64,
    /// Seqs below this that are not in `window` are unknown.
    pub floor: u64,
    window: Window,
}

impl Session {
    /// The `(seq, offset)` pairs remembered, oldest first.
    pub fn window(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.window.iter()
    }
}

/// A session as stored in a checkpoint (without its window, which is
/// rebuilt from the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The client.
    pub client_id: ClientId,
    /// See [`Session::last_seq`].
    pub last_seq: u64,
    /// See [`Session::count`].
    pub count: u64,
    /// See [`Session::first_seen_us`].
    pub first_seen_us: u64,
    /// See [`Session::last_seen_us`].
    pub last_seen_us: u64,
    /// See [`Session::floor`].
    pub floor: u64,
}

/// What changed since the last checkpoint: rows to write, and the clients
/// forgotten (rows to delete). A client is in one list at most: the one
/// its state at the time of [`Sessions::take_dirty`] calls for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sessions changed (or created).
    pub rows: Vec<SessionRow>,
    /// Sessions forgotten.
    pub forgotten: Vec<ClientId>,
}

/// Changes merged per client, the later winning: `Some(row)` to write,
/// `None` to delete.
pub type MergedChanges = HashMap<ClientId, Option<SessionRow>>;

impl Changes {
    /// Merges these changes into `pending`, each client's replacing what
    /// `pending` held for it: a client forgotten and then back is written,
    /// one back and then forgotten again is deleted. One `Changes` names a
    /// client once, so the order within it does not matter.
    pub fn merge_into(self, pending: &mut MergedChanges) {
        for id in self.forgotten {
            pending.insert(id, None);
        }
        for r in self.rows {
            pending.insert(r.client_id, Some(r));
        }
    }
}

/// What [`Sessions::evict_before`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Window entries dropped.
    pub entries: usize,
    /// Sessions forgotten (their windows became empty).
    pub sessions: usize,
}

/// The clients whose row changed since the last checkpoint, once each,
/// in the order they first changed (so that some can be taken before the
/// checkpoint, oldest first: [`Sessions::take_dirty_some`]).
#[derive(Debug, Default)]
struct Dirty {
    set: HashSet<ClientId>,
    /// Every client of `set`, plus clients taken since (skipped).
    order: VecDeque<ClientId>,
}

impl Dirty {
    fn insert(&mut self, id: ClientId) {
        if self.set.insert(id) {
            self.order.push_back(id);
        }
    }
}

/// All clients' sessions.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<ClientId, Session>,
    /// Sessions by the offset of their window's oldest entry, as a
    /// min-heap: one key per session with a non-empty window, at or below
    /// that window's front (see the module docs: keys may lag).
    by_front: BinaryHeap<Reverse<(u64, ClientId)>>,
    /// Clients whose row must be written (or deleted, if absent from
    /// `map`) at the next checkpoint.
    dirty: Dirty,
    window: usize,
    /// Sessions forgotten since this value was created.
    forgotten: u64,
}

impl Sessions {
    /// Empty, remembering `window` seqs per client (at least 1).
    pub fn new(window: usize) -> Self {
        Sessions {
            map: HashMap::new(),
            by_front: BinaryHeap::new(),
            dirty: Dirty::default(),
            window: window.max(1),
            forgotten: 0,
        }
    }

    /// Restores checkpointed sessions (their windows empty until replay).
    pub fn load(&mut self, rows: impl IntoIterator<Item = SessionRow>) {
        for r in rows {
            let s = Session {
                last_seq: r.last_seq,
                count: r.count,
                first_seen_us: r.first_seen_us,
                last_seen_us: r.last_seen_us,
                floor: r.floor,
                window: Window::Empty,
            };
            // A row loaded twice replaces the first; an existing window
            // (and its heap key) is kept, so the heap stays one key per
            // window.
            match self.map.get_mut(&r.client_id) {
                Some(old) => {
                    let window = std::mem::take(&mut old.window);
                    *old = Session { window, ..s };
                }
                None => {
                    self.map.insert(r.client_id, s);
                }
            }
        }
    }

    /// Number of clients known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No client known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sessions forgotten so far (by [`Sessions::evict_before`] and
    /// [`Sessions::forget_empty`]).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// A client's session.
    pub fn get(&self, client: &ClientId) -> Option<&Session> {
        self.map.get(client)
    }

    /// Decides what to do with `(client, seq)`.
    pub fn check(&self, client: &ClientId, seq: u64) -> Verdict {
        let Some(s) = self.map.get(client) else {
            return Verdict::Fresh;
        };
        if s.count == 0 || seq > s.last_seq {
            return Verdict::Fresh;
        }
        // Recent retries are the common case: search newest first.
        if let Some((_, offset)) = s.window.iter().rev().find(|(q, _)| *q == seq) {
            return Verdict::Duplicate { offset };
        }
        if seq >= s.floor {
            Verdict::Fresh
        } else {
            Verdict::Stale { floor: s.floor }
        }
    }

    /// Notes that `(client, seq)` was logged at `offset` at `ts_us`.
    /// `count` is false while replaying records the checkpoint already
    /// counted (their windows are rebuilt, their counts not added twice).
    /// Offsets must increase from call to call (they are log order).
    pub fn record(&mut self, client: &ClientId, seq: u64, offset: u64, ts_us: u64, count: bool) {
        let window = self.window;
        let s = self.map.entry(*client).or_default();
        if count {
            if s.count == 0 {
                s.first_seen_us = ts_us;
                s.last_seq = seq;
            }
            s.count += 1;
            s.last_seen_us = s.last_seen_us.max(ts_us);
            s.last_seq = s.last_seq.max(seq);
            self.dirty.insert(*client);
        }
        let was_empty = s.window.len() == 0;
        // Make room first (a one-entry window then never allocates).
        while s.window.len() >= window {
            if let Some((old, _)) = s.window.pop_front() {
                s.floor = s.floor.max(old.saturating_add(1));
            }
        }
        s.window.push_back((seq, offset));
        if was_empty {
            // Its first entry: the session enters the heap. (When the
            // window drops its front to make room, the key is left to lag.)
            self.by_front.push(Reverse((offset, *client)));
        }
    }

    /// Drops window entries older than `min_offset` (raising floors), so
    /// that an idle client cannot make restart replay an unbounded stretch
    /// of the log, and forgets the sessions left with an empty window.
    /// Visits only the sessions whose heap key is below `min_offset`.
    pub fn evict_before(&mut self, min_offset: u64) -> Evicted {
        let mut out = Evicted::default();
        while let Some(&Reverse((key, id))) = self.by_front.peek() {
            if key >= min_offset {
                break;
            }
            self.by_front.pop();
            // One probe of the table for the visit and the removal.
            let Entry::Occupied(mut slot) = self.map.entry(id) else {
                // Cannot happen (a forgotten session's key is popped when
                // it is forgotten); nothing to do if it did.
                continue;
            };
            let s = slot.get_mut();
            let mut dropped = 0;
            while let Some((seq, off)) = s.window.front() {
                if off >= min_offset {
                    break;
                }
                s.window.pop_front();
                s.floor = s.floor.max(seq.saturating_add(1));
                dropped += 1;
            }
            match s.window.front() {
                // At or above `min_offset`: the loop moves on.
                Some((_, off)) => self.by_front.push(Reverse((off, id))),
                None => {
                    slot.remove();
                    out.sessions += 1;
                }
            }
            if dropped > 0 {
                out.entries += dropped;
                self.dirty.insert(id);
            }
        }
        self.forgotten += out.sessions as u64;
        if out.sessions > 0 {
            self.give_back();
        }
        out
    }

    /// Drops the oldest window entries of all, one at a time in log order,
    /// until at most `max` sessions are held (a session whose window
    /// empties is forgotten). Dropping the globally oldest entries first is
    /// exactly what [`Sessions::evict_before`] does with a higher offset,
    /// so checkpoint + replay rebuild the same state: a flood of client ids
    /// shortens the dedup horizon instead of growing memory. Visits only
    /// the entries it drops (and lagging heap keys on top).
    pub fn evict_to(&mut self, max: usize) -> Evicted {
        self.evict_toward(max, usize::MAX)
    }

    /// [`Sessions::evict_to`] in steps: at most `budget` heap entries
    /// visited. The writer calls it after every commit group with a
    /// budget above the group's size, so a flood of new clients is evicted
    /// as it arrives instead of in one long stall at the next checkpoint
    /// (~1 µs an entry: 230,000 of them held the writer ~250 ms). Each
    /// step drops the globally oldest entries, so the state after any
    /// number of steps is still that of [`Sessions::evict_before`] with
    /// some offset.
    pub fn evict_toward(&mut self, max: usize, budget: usize) -> Evicted {
        let mut out = Evicted::default();
        let mut visits = 0usize;
        while self.map.len() > max && visits < budget {
            visits += 1;
            let Some(Reverse((key, id))) = self.by_front.pop() else {
                break;
            };
            let Entry::Occupied(mut slot) = self.map.entry(id) else {
                continue; // cannot happen (see `evict_before`)
            };
            let s = slot.get_mut();
            match s.window.front() {
                // A lagging key: put it back where its window starts.
                Some((_, front)) if front != key => {
                    self.by_front.push(Reverse((front, id)));
                    continue;
                }
                Some((seq, _)) => {
                    s.window.pop_front();
                    s.floor = s.floor.max(seq.saturating_add(1));
                    out.entries += 1;
                    self.dirty.insert(id);
                }
                None => {}
            }
            match s.window.front() {
                Some((_, off)) => self.by_front.push(Reverse((off, id))),
                None => {
                    slot.remove();
                    self.dirty.insert(id);
                    out.sessions += 1;
                }
            }
        }
        self.forgotten += out.sessions as u64;
        if out.sessions > 0 {
            self.give_back();
        }
        out
    }

    /// Forgets the sessions whose window is empty: at start, after the
    /// replay, rows that no record from `replay_from` on refers to (left by
    /// stores written before sessions were forgotten). Walks every
    /// session: call it once, not on the commit path. Returns how many.
    pub fn forget_empty(&mut self) -> usize {
        let before = self.map.len();
        let dirty = &mut self.dirty;
        self.map.retain(|id, s| {
            if s.window.len() > 0 {
                return true;
            }
            dirty.insert(*id);
            false
        });
        let n = before - self.map.len();
        self.forgotten += n as u64;
        if n > 0 {
            self.give_back();
        }
        n
    }

    /// Returns to the allocator what a burst of clients grew the tables
    /// to, once most of them are gone. Shrinking rehashes the survivors,
    /// and only happens after at least three times as many were removed:
    /// amortized O(1) per session forgotten.
    fn give_back(&mut self) {
        const SLACK: usize = 1024;
        if self.map.capacity() > 4 * self.map.len() + SLACK {
            self.map.shrink_to(2 * self.map.len());
        }
        if self.by_front.capacity() > 4 * self.by_front.len() + SLACK {
            self.by_front.shrink_to(2 * self.by_front.len());
        }
    }

    /// The oldest offset any window holds (`default` if none, or if
    /// `default` is older): where restart replay must begin to rebuild the
    /// windows. Corrects lagging heap keys it finds on top, so the answer
    /// is exact.
    pub fn replay_from(&mut self, default: u64) -> u64 {
        while let Some(&Reverse((key, id))) = self.by_front.peek() {
            match self.map.get(&id).and_then(|s| s.window.front()) {
                Some((_, front)) if front == key => return key.min(default),
                Some((_, front)) => {
                    self.by_front.pop();
                    self.by_front.push(Reverse((front, id)));
                }
                // Cannot happen (see `evict_before`).
                None => {
                    self.by_front.pop();
                }
            }
        }
        default
    }

    /// Takes what changed since the last call: rows to write for the
    /// sessions held, and the clients forgotten since (rows to delete).
    pub fn take_dirty(&mut self) -> Changes {
        // Taken, not drained: a burst's table is not kept afterwards.
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Changes::default();
        for id in dirty.set {
            self.snapshot(id, &mut out);
        }
        out
    }

    /// Clients changed since the last checkpoint and not taken yet.
    pub fn dirty_len(&self) -> usize {
        self.dirty.set.len()
    }

    /// Takes the changes of at most `max` clients, those that changed
    /// first, with their state now. The writer calls it between
    /// checkpoints when many clients changed, so that the checkpoint has
    /// only the rest to take: a flood of new client ids made it take
    /// 230,000 rows at once (43-64 ms on the commit path) and grow the
    /// dirty set by rehashing it whole. A client taken here that changes
    /// again is dirty again, and its later row wins (see `run_store`).
    pub fn take_dirty_some(&mut self, max: usize) -> Changes {
        let mut out = Changes::default();
        let mut taken = 0;
        while taken < max {
            let Some(id) = self.dirty.order.pop_front() else {
                break;
            };
            if self.dirty.set.remove(&id) {
                self.snapshot(id, &mut out);
                taken += 1;
            }
        }
        out
    }

    /// Adds `id`'s row (or its deletion, if it is forgotten) to `out`.
    fn snapshot(&self, id: ClientId, out: &mut Changes) {
        match self.map.get(&id) {
            Some(s) => out.rows.push(SessionRow {
                client_id: id,
                last_seq: s.last_seq,
                count: s.count,
                first_seen_us: s.first_seen_us,
                last_seen_us: s.last_seen_us,
                floor: s.floor,
            }),
            None => out.forgotten.push(id),
        }
    }

    /// Replays one logged record at start: offsets from `replay_from` up to
    /// `checkpoint` rebuild windows only; from `checkpoint` on they count.
    pub fn replay(
        &mut self,
        client: &ClientId,
        seq: u64,
        offset: u64,
        ts_us: u64,
        checkpoint: u64,
    ) {
        self.record(client, seq, offset, ts_us, offset >= checkpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Checkpoint, Store};
    use proptest::prelude::*;

    const A: ClientId = [1; 16];
    const B: ClientId = [2; 16];

    fn id(n: u32) -> ClientId {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(&n.to_le_bytes());
        c
    }

    #[test]
    fn fresh_duplicate_gap_stale() {
        let mut s = Sessions::new(3);
        assert_eq!(s.check(&A, 0), Verdict::Fresh);
        s.record(&A, 1, 10, 100, true);
        s.record(&A, 2, 11, 101, true);
        assert_eq!(s.check(&A, 2), Verdict::Duplicate { offset: 11 });
        assert_eq!(s.check(&A, 3), Verdict::Fresh);
        // 0 was never logged and nothing was evicted yet: a gap, fresh.
        assert_eq!(s.check(&A, 0), Verdict::Fresh);
        s.record(&A, 5, 12, 102, true);
        s.record(&A, 6, 13, 103, true); // evicts seq 1 → floor 2
        assert_eq!(s.check(&A, 1), Verdict::Stale { floor: 2 });
        assert_eq!(s.check(&A, 0), Verdict::Stale { floor: 2 });
        assert_eq!(s.check(&A, 2), Verdict::Duplicate { offset: 11 });
        assert_eq!(s.check(&A, 4), Verdict::Fresh); // gap above the floor
        assert_eq!(s.check(&B, 1), Verdict::Fresh);
        let g = s.get(&A).unwrap();
        assert_eq!(
            (g.last_seq, g.count, g.first_seen_us, g.last_seen_us),
            (6, 4, 100, 103)
        );
        assert_eq!(g.window().collect::<Vec<_>>(), [(2, 11), (5, 12), (6, 13)]);
    }

    #[test]
    fn evict_before_raises_floors_forgets_empty_windows_and_moves_replay_from() {
        let mut s = Sessions::new(100);
        s.record(&A, 1, 0, 1, true);
        s.record(&B, 1, 1, 1, true);
        s.record(&A, 2, 2, 1, true);
        assert_eq!(s.replay_from(10), 0);
        s.take_dirty();
        assert_eq!(
            s.evict_before(2),
            Evicted {
                entries: 2,
                sessions: 1
            }
        );
        assert_eq!(s.replay_from(10), 2);
        // A still holds a record in the horizon: below its floor is stale.
        assert_eq!(s.check(&A, 1), Verdict::Stale { floor: 2 });
        assert_eq!(s.check(&A, 2), Verdict::Duplicate { offset: 2 });
        // B had none left: forgotten, unknown again.
        assert!(s.get(&B).is_none());
        assert_eq!(s.check(&B, 1), Verdict::Fresh);
        assert_eq!((s.len(), s.forgotten()), (1, 1));
        let c = s.take_dirty();
        assert_eq!(c.forgotten, vec![B]);
        assert_eq!(c.rows.len(), 1);
        assert_eq!((c.rows[0].client_id, c.rows[0].floor), (A, 2));
        // Nothing else to evict: nothing visited, nothing dirty.
        assert_eq!(s.evict_before(2), Evicted::default());
        assert_eq!(s.take_dirty(), Changes::default());
        // A client that comes back starts a new session.
        s.record(&B, 7, 3, 5, true);
        let b = s.get(&B).unwrap();
        assert_eq!((b.count, b.floor, b.first_seen_us), (1, 0, 5));
        assert_eq!(s.take_dirty().rows.len(), 1);
    }

    #[test]
    fn lagging_heap_keys_give_an_exact_replay_from_and_eviction() {
        // A's window (2 entries) drops its front on every record after the
        // second; its heap key stays at offset 0 until corrected.
        let mut s = Sessions::new(2);
        for off in 0..10 {
            s.record(&A, off + 1, off, 0, true);
        }
        s.record(&B, 1, 10, 0, true);
        assert_eq!(s.by_front.len(), 2, "one key per session");
        assert_eq!(s.replay_from(100), 8, "A's oldest entry is offset 8");
        assert_eq!(s.replay_from(5), 5);
        // A key lagging below the cut but a window above it: nothing
        // dropped, nothing dirty.
        s.take_dirty();
        let mut s2 = Sessions::new(2);
        for off in 0..10 {
            s2.record(&A, off + 1, off, 0, true);
        }
        s2.take_dirty();
        assert_eq!(s2.evict_before(8), Evicted::default());
        assert_eq!(s2.take_dirty(), Changes::default());
        assert_eq!(s2.evict_before(9).entries, 1);
        assert_eq!(s2.replay_from(100), 9);
        assert_eq!(s2.check(&A, 9), Verdict::Stale { floor: 10 });
        assert_eq!(s2.check(&A, 10), Verdict::Duplicate { offset: 9 });
    }

    #[test]
    fn a_session_with_one_record_is_small() {
        // 40 bytes of counters and a 24-byte window; one record inline.
        assert!(
            std::mem::size_of::<Session>() <= 64,
            "{}",
            std::mem::size_of::<Session>()
        );
        let mut s = Sessions::new(1024);
        s.record(&A, 1, 0, 0, true);
        assert!(matches!(s.get(&A).unwrap().window, Window::One(1, 0)));
        s.record(&A, 2, 1, 0, true);
        assert!(matches!(s.get(&A).unwrap().window, Window::Many(_)));
        // Trimmed back to one entry: inline again.
        s.evict_before(1);
        assert!(matches!(s.get(&A).unwrap().window, Window::One(2, 1)));
        // A window of one never allocates.
        let mut s = Sessions::new(1);
        for off in 0..5 {
            s.record(&A, off, off, 0, true);
            assert!(matches!(s.get(&A).unwrap().window, Window::One(q, o) if q == off && o == off));
        }
        assert_eq!(s.check(&A, 3), Verdict::Stale { floor: 4 });
    }

    #[test]
    fn two_hundred_thousand_clients_leave_once_beyond_the_horizon() {
        const N: u32 = 200_000;
        const HORIZON: u64 = 1_000;
        let mut s = Sessions::new(1024);
        let mut forgotten_rows = 0;
        // One message from each of N distinct clients, a checkpoint every
        // 5,000 records evicting what left the horizon.
        for n in 0..N {
            let off = n as u64;
            assert_eq!(s.check(&id(n), 1), Verdict::Fresh);
            s.record(&id(n), 1, off, off, true);
            if off % 5_000 == 4_999 {
                let head = off + 1;
                let e = s.evict_before(head.saturating_sub(HORIZON));
                let c = s.take_dirty();
                forgotten_rows += c.forgotten.len();
                assert_eq!(e.sessions, c.forgotten.len());
                // Held: exactly the clients within the horizon.
                assert_eq!(s.len() as u64, HORIZON.min(head));
                assert_eq!(s.replay_from(head), head - HORIZON.min(head));
            }
        }
        assert_eq!(forgotten_rows as u64, N as u64 - HORIZON);
        assert_eq!(s.forgotten(), N as u64 - HORIZON);
        // Within the horizon: exact duplicates. Beyond it: unknown.
        for n in N - HORIZON as u32..N {
            assert_eq!(s.check(&id(n), 1), Verdict::Duplicate { offset: n as u64 });
        }
        assert_eq!(s.check(&id(0), 1), Verdict::Fresh);
        assert_eq!(s.check(&id(N - HORIZON as u32 - 1), 1), Verdict::Fresh);
        // The tables gave back what the burst took (not 200,000 slots).
        assert!(
            s.map.capacity() < 8 * HORIZON as usize,
            "{}",
            s.map.capacity()
        );
        assert!(s.by_front.capacity() < 8 * HORIZON as usize);
        // Everything leaves.
        s.evict_before(N as u64);
        assert!(s.is_empty());
        assert_eq!(s.by_front.len(), 0);
        assert_eq!(s.replay_from(N as u64), N as u64);
        assert_eq!(s.take_dirty().forgotten.len(), HORIZON as usize);
    }

    /// A flood of ids past `max` drops the oldest entries in log order: the
    /// same state as evicting before the offset it stopped at, and
    /// checkpoint + replay from `replay_from` rebuild it.
    #[test]
    fn evict_to_is_evict_before_a_higher_offset() {
        let mut a = Sessions::new(4);
        let mut b = Sessions::new(4);
        let mut log = Vec::new();
        for off in 0..1000u64 {
            // A few long-lived clients among many one-message ones.
            let c = if off % 10 == 0 {
                id((off / 10 % 30) as u32)
            } else {
                id(1000 + off as u32)
            };
            a.record(&c, off, off, off, true);
            b.record(&c, off, off, off, true);
            log.push((c, off));
        }
        let out = a.evict_to(300);
        assert_eq!(a.len(), 300);
        assert_eq!(
            out.sessions,
            900 + 30 - 300,
            "900 one-message clients, 30 long-lived"
        );
        // The oldest entry left tells the offset it stopped at.
        let stop = a.replay_from(u64::MAX);
        b.evict_before(stop);
        assert_eq!(b.len(), a.len());
        for (c, seq) in &log {
            assert_eq!(a.check(c, *seq), b.check(c, *seq), "{c:?} {seq}");
        }
        let changes = a.take_dirty();
        assert_eq!(changes.forgotten.len(), out.sessions);
        assert_eq!(a.forgotten(), out.sessions as u64);
    }

    /// Evicting in small steps while clients keep arriving (as the writer
    /// does after each group) ends where evicting everything at once at
    /// the end would: both are evict_before some offset.
    #[test]
    fn evicting_in_steps_ends_where_evicting_at_once_does() {
        let mut steps = Sessions::new(4);
        let mut once = Sessions::new(4);
        let mut log = Vec::new();
        for off in 0..5000u64 {
            let c = if off % 10 == 0 {
                id((off / 10 % 30) as u32)
            } else {
                id(10_000 + off as u32)
            };
            steps.record(&c, off, off, off, true);
            once.record(&c, off, off, off, true);
            log.push((c, off));
            if off % 64 == 63 {
                // A group of 64: at most 64 + 16 heap visits.
                steps.evict_toward(300, 64 + 16);
                assert!(steps.len() <= 300 + 64, "kept up: {}", steps.len());
            }
        }
        steps.evict_to(300);
        once.evict_to(300);
        assert_eq!(steps.len(), 300);
        assert_eq!(once.len(), 300);
        assert_eq!(steps.replay_from(u64::MAX), once.replay_from(u64::MAX));
        for (c, seq) in &log {
            assert_eq!(steps.check(c, *seq), once.check(c, *seq), "{c:?} {seq}");
        }
        assert_eq!(steps.forgotten(), once.forgotten());
    }

    #[test]
    fn forget_empty_drops_rows_no_record_refers_to() {
        let row = |c: ClientId| SessionRow {
            client_id: c,
            last_seq: 5,
            count: 5,
            first_seen_us: 1,
            last_seen_us: 2,
            floor: 1,
        };
        let mut s = Sessions::new(8);
        s.load([row(A), row(B)]);
        // Replay finds a record of A only.
        s.replay(&A, 5, 40, 2, 50);
        assert_eq!(s.forget_empty(), 1);
        assert!(s.get(&B).is_none());
        assert_eq!(s.check(&A, 5), Verdict::Duplicate { offset: 40 });
        assert_eq!(s.check(&A, 0), Verdict::Stale { floor: 1 });
        let c = s.take_dirty();
        assert_eq!((c.rows, c.forgotten), (vec![], vec![B]));
        assert_eq!(s.forgotten(), 1);
    }

    /// A session as compared between the live and the rebuilt state.
    type Seen = (u64, u64, u64, u64, u64, Vec<(u64, u64)>);

    fn seen(s: &Sessions, id: &ClientId) -> Option<Seen> {
        s.get(id).map(|s| {
            (
                s.last_seq,
                s.count,
                s.first_seen_us,
                s.last_seen_us,
                s.floor,
                s.window().collect(),
            )
        })
    }

    proptest! {
        /// Checkpoints (each evicting past a horizon, which forgets
        /// sessions) at random points, written to a real `Store` (SQLite,
        /// in memory): rebuilding from its rows plus a replay of the log
        /// from `replay_from` gives every verdict and every session of the
        /// live state, forgotten ones included, and the store holds
        /// exactly the sessions live held at the last checkpoint.
        #[test]
        fn checkpoint_plus_replay_rebuilds_exactly(
            ops in proptest::collection::vec((0u8..12, 0u8..6, 0u64..40), 1..300),
            window in 1usize..8,
            horizon in proptest::option::of(0u64..60),
        ) {
            let clients: Vec<ClientId> = (0..6u8).map(|c| [c; 16]).collect();
            let mut store = Store::open(std::path::Path::new(":memory:")).unwrap();
            let mut live = Sessions::new(window);
            let mut log: Vec<(ClientId, u64, u64)> = Vec::new();
            let mut held_at_ckpt: HashSet<ClientId> = HashSet::new();
            let mut checkpoint = |live: &mut Sessions, head: u64| {
                if let Some(h) = horizon {
                    live.evict_before(head.saturating_sub(h));
                }
                let c = live.take_dirty();
                let ck = Checkpoint { log_offset: head, replay_from: live.replay_from(head) };
                store.write_checkpoint(&c.rows, &c.forgotten, ck, 0).unwrap();
                clients.iter().filter(|id| live.get(id).is_some()).copied().collect::<HashSet<_>>()
            };
            for &(kind, c, seq) in &ops {
                if kind == 0 {
                    held_at_ckpt = checkpoint(&mut live, log.len() as u64);
                    continue;
                }
                let id = clients[c as usize];
                if live.check(&id, seq) == Verdict::Fresh {
                    let off = log.len() as u64;
                    live.record(&id, seq, off, off, true);
                    log.push((id, seq, off));
                }
            }
            let ck = store.checkpoint().unwrap();
            let rows = store.sessions().unwrap();
            let stored: HashSet<ClientId> = rows.iter().map(|r| r.client_id).collect();
            prop_assert_eq!(&stored, &held_at_ckpt, "rows of forgotten sessions deleted, no others");
            let mut rebuilt = Sessions::new(window);
            rebuilt.load(rows);
            for &(id, seq, off) in &log[ck.replay_from as usize..] {
                rebuilt.replay(&id, seq, off, off, ck.log_offset);
            }
            prop_assert_eq!(rebuilt.forget_empty(), 0, "a store written here has no row without a record");
            for id in &clients {
                for q in 0..45 {
                    prop_assert_eq!(live.check(id, q), rebuilt.check(id, q), "client {:?} seq {}", id[0], q);
                }
                prop_assert_eq!(seen(&live, id), seen(&rebuilt, id), "client {:?}", id[0]);
            }
            prop_assert_eq!(live.len(), rebuilt.len());
            prop_assert_eq!(live.replay_from(u64::MAX), rebuilt.replay_from(u64::MAX));
            // And a (client, seq) is logged twice only after its client
            // was forgotten: never with the horizon off.
            if horizon.is_none() {
                let mut seen = HashSet::new();
                for &(id, seq, _) in &log {
                    prop_assert!(seen.insert((id, seq)), "logged twice: {:?}", (id[0], seq));
                }
            }
        }

        /// Within the horizon no (client, seq) is logged twice, with
        /// forgetting on: a second copy's original is always older than
        /// the horizon was at some checkpoint before it.
        #[test]
        fn a_second_copy_only_of_records_beyond_the_horizon(
            ops in proptest::collection::vec((0u8..12, 0u8..4, 0u64..20), 1..300),
            window in 1usize..8,
            horizon in 0u64..40,
        ) {
            let mut live = Sessions::new(window);
            let mut first: HashMap<(u8, u64), u64> = HashMap::new();
            let mut evicted_below = 0u64;
            let mut head = 0u64;
            for &(kind, c, seq) in &ops {
                if kind == 0 {
                    evicted_below = head.saturating_sub(horizon);
                    live.evict_before(evicted_below);
                    continue;
                }
                let id = [c; 16];
                if live.check(&id, seq) == Verdict::Fresh {
                    if let Some(&o) = first.get(&(c, seq)) {
                        prop_assert!(o < evicted_below, "({}, {}) at {} logged again within the horizon ({})", c, seq, o, evicted_below);
                    }
                    first.insert((c, seq), head);
                    live.record(&id, seq, head, head, true);
                    head += 1;
                }
            }
        }
    }

    #[test]
    fn take_dirty_some_takes_the_oldest_changes_first_and_at_most_max() {
        let mut s = Sessions::new(4);
        for n in 0..10u32 {
            s.record(&id(n), 1, u64::from(n), 1, true);
        }
        assert_eq!(s.dirty_len(), 10);
        let early = s.take_dirty_some(3);
        let ids: Vec<ClientId> = early.rows.iter().map(|r| r.client_id).collect();
        assert_eq!(ids, vec![id(0), id(1), id(2)]);
        assert!(early.forgotten.is_empty());
        assert_eq!(s.dirty_len(), 7);
        // Client 1 changes again: dirty again, behind the others.
        s.record(&id(1), 2, 10, 2, true);
        let rest = s.take_dirty_some(100);
        let ids: Vec<ClientId> = rest.rows.iter().map(|r| r.client_id).collect();
        assert_eq!(ids, (3..10).chain([1]).map(id).collect::<Vec<_>>());
        assert_eq!(rest.rows.last().unwrap().last_seq, 2);
        assert_eq!(s.dirty_len(), 0);
        assert_eq!(s.take_dirty(), Changes::default());
    }

    proptest! {
        /// Rows taken early, merged with what the checkpoint takes (the
        /// later change of a client winning, as the checkpoint thread
        /// merges them), are exactly what one take at the checkpoint gives.
        #[test]
        fn early_takes_merged_equal_one_take(
            ops in proptest::collection::vec((0u8..4, 0u32..40, 1usize..20), 1..300)
        ) {
            let mut one = Sessions::new(2);
            let mut early = Sessions::new(2);
            let mut merged = MergedChanges::new();
            let mut offset = 0u64;
            let mut seqs: HashMap<u32, u64> = HashMap::new();
            for (op, client, k) in ops {
                match op {
                    0 | 1 => {
                        let seq = seqs.entry(client).or_insert(0);
                        *seq += 1;
                        for s in [&mut one, &mut early] {
                            s.record(&id(client), *seq, offset, offset, true);
                        }
                        offset += 1;
                    }
                    2 => {
                        one.evict_to(k);
                        early.evict_to(k);
                    }
                    _ => early.take_dirty_some(k).merge_into(&mut merged),
                }
            }
            early.take_dirty().merge_into(&mut merged);
            let mut want = MergedChanges::new();
            one.take_dirty().merge_into(&mut want);
            prop_assert_eq!(merged, want);
        }
    }
}
