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
//! Nothing here is lost in a crash: the sessions are checkpointed to SQLite
//! with the log offset they cover and with `replay_from`, the oldest offset
//! any window still holds; at start the log is replayed from `replay_from`
//! (windows only) and from the checkpoint on (windows and counts), which
//! rebuilds exactly the state the hub had (see [`Sessions::replay`]).

use std::collections::{HashMap, HashSet, VecDeque};

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
    window: VecDeque<(u64, u64)>,
}

impl Session {
    /// The `(seq, offset)` pairs remembered, oldest first.
    pub fn window(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.window.iter().copied()
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

/// All clients' sessions.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<ClientId, Session>,
    dirty: HashSet<ClientId>,
    window: usize,
}

impl Sessions {
    /// Empty, remembering `window` seqs per client (at least 1).
    pub fn new(window: usize) -> Self {
        Sessions {
            map: HashMap::new(),
            dirty: HashSet::new(),
            window: window.max(1),
        }
    }

    /// Restores checkpointed sessions (their windows empty until replay).
    pub fn load(&mut self, rows: impl IntoIterator<Item = SessionRow>) {
        for r in rows {
            self.map.insert(
                r.client_id,
                Session {
                    last_seq: r.last_seq,
                    count: r.count,
                    first_seen_us: r.first_seen_us,
                    last_seen_us: r.last_seen_us,
                    floor: r.floor,
                    window: VecDeque::new(),
                },
            );
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
        if let Some(&(_, offset)) = s.window.iter().rev().find(|(q, _)| *q == seq) {
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
        s.window.push_back((seq, offset));
        while s.window.len() > window {
            if let Some((old, _)) = s.window.pop_front() {
                s.floor = s.floor.max(old.saturating_add(1));
            }
        }
    }

    /// Drops window entries older than `min_offset` (raising floors), so
    /// that an idle client cannot make restart replay an unbounded stretch
    /// of the log. Returns how many entries were dropped.
    pub fn evict_before(&mut self, min_offset: u64) -> usize {
        let mut n = 0;
        for (id, s) in &mut self.map {
            let before = s.window.len();
            while let Some(&(seq, off)) = s.window.front() {
                if off >= min_offset {
                    break;
                }
                s.window.pop_front();
                s.floor = s.floor.max(seq.saturating_add(1));
            }
            if s.window.len() != before {
                n += before - s.window.len();
                self.dirty.insert(*id);
            }
        }
        n
    }

    /// The oldest offset any window holds (`default` if none): where restart
    /// replay must begin to rebuild the windows.
    pub fn replay_from(&self, default: u64) -> u64 {
        self.map
            .values()
            .filter_map(|s| s.window.front().map(|&(_, off)| off))
            .min()
            .unwrap_or(default)
            .min(default)
    }

    /// Takes the sessions changed since the last call, as checkpoint rows.
    pub fn take_dirty(&mut self) -> Vec<SessionRow> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for id in self.dirty.drain() {
            if let Some(s) = self.map.get(&id) {
                out.push(SessionRow {
                    client_id: id,
                    last_seq: s.last_seq,
                    count: s.count,
                    first_seen_us: s.first_seen_us,
                    last_seen_us: s.last_seen_us,
                    floor: s.floor,
                });
            }
        }
        out
    }

    /// Puts rows back as dirty (a checkpoint that failed to be written).
    pub fn mark_dirty(&mut self, rows: &[SessionRow]) {
        self.dirty.extend(rows.iter().map(|r| r.client_id));
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
    use proptest::prelude::*;

    const A: ClientId = [1; 16];
    const B: ClientId = [2; 16];

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
    }

    #[test]
    fn evict_before_raises_floor_and_replay_from() {
        let mut s = Sessions::new(100);
        s.record(&A, 1, 0, 1, true);
        s.record(&B, 1, 1, 1, true);
        s.record(&A, 2, 2, 1, true);
        assert_eq!(s.replay_from(10), 0);
        assert_eq!(s.evict_before(2), 2);
        assert_eq!(s.replay_from(10), 2);
        assert_eq!(s.check(&A, 1), Verdict::Stale { floor: 2 });
        assert_eq!(s.check(&A, 2), Verdict::Duplicate { offset: 2 });
        assert_eq!(s.check(&B, 1), Verdict::Stale { floor: 2 });
        assert_eq!(s.check(&B, 2), Verdict::Fresh);
    }

    proptest! {
        /// Checkpoint at a random point, then rebuild from the rows plus a
        /// replay of the log from `replay_from`: every verdict and every
        /// row is the same as in the live state.
        #[test]
        fn checkpoint_plus_replay_rebuilds_exactly(
            ops in proptest::collection::vec((0u8..3, 0u64..40), 1..300),
            window in 1usize..8,
            cut in 0usize..300,
            horizon in proptest::option::of(0u64..300),
        ) {
            let clients = [[0u8; 16], [1; 16], [2; 16]];
            let mut live = Sessions::new(window);
            let mut log: Vec<(ClientId, u64, u64)> = Vec::new();
            let mut ckpt: Option<(Vec<SessionRow>, u64, u64)> = None;
            let mut rows_so_far: HashMap<ClientId, SessionRow> = HashMap::new();
            for (i, (c, seq)) in ops.iter().enumerate() {
                if i == cut.min(ops.len() - 1) {
                    if let Some(h) = horizon {
                        live.evict_before((log.len() as u64).saturating_sub(h));
                    }
                    for r in live.take_dirty() {
                        rows_so_far.insert(r.client_id, r);
                    }
                    let c_off = log.len() as u64;
                    ckpt = Some((rows_so_far.values().cloned().collect(), c_off, live.replay_from(c_off)));
                }
                let id = clients[*c as usize];
                if live.check(&id, *seq) == Verdict::Fresh {
                    let off = log.len() as u64;
                    live.record(&id, *seq, off, off, true);
                    log.push((id, *seq, off));
                }
            }
            let (rows, c_off, from) = ckpt.unwrap();
            let mut rebuilt = Sessions::new(window);
            rebuilt.load(rows);
            for &(id, seq, off) in &log[from as usize..] {
                rebuilt.replay(&id, seq, off, off, c_off);
            }
            for id in &clients {
                for q in 0..45 {
                    prop_assert_eq!(live.check(id, q), rebuilt.check(id, q), "client {:?} seq {}", id[0], q);
                }
                let (l, r) = (live.get(id), rebuilt.get(id));
                prop_assert_eq!(l.map(|s| (s.last_seq, s.count, s.floor)), r.map(|s| (s.last_seq, s.count, s.floor)));
            }
            // And nothing was ever logged twice.
            let mut seen = HashSet::new();
            for &(id, seq, _) in &log {
                prop_assert!(seen.insert((id, seq)), "logged twice: {:?}", (id[0], seq));
            }
        }
    }
}
