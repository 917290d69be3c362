//! The subscriber's bookkeeping, without I/O and without reading the
//! clock: where to resume, which delivery is a duplicate, which node comes
//! next and how long to wait before it, and the parsers of what a hub sends
//! on `/sub` (the hello, a delivery frame, a slow consumer's close reason).
//! The driver (`conn.rs`) feeds it what happened and the time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pinion_core::backoff::Backoff;
use pinion_core::rng::Rng;
use pinion_proto::Message as _;

use super::{Delivery, HubViolation};

/// A connection that delivered something, or stayed subscribed this long,
/// was a good one: the next node is tried at once and the backoff starts
/// over.
pub(crate) const STABLE: Duration = Duration::from_secs(5);

/// How one connection went, as the driver saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// The node accepted the subscription (its hello arrived).
    pub subscribed: bool,
    /// At least one new delivery came through it.
    pub delivered: bool,
    /// How long it stayed subscribed.
    pub lived: Duration,
    /// The offset a slow consumer's close (4008) named.
    pub resume_hint: Option<u64>,
}

/// What to do after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Connect to `node` after `delay`.
    Retry {
        /// Index into the URL list.
        node: usize,
        /// Wait this long first.
        delay: Duration,
    },
    /// `give_up_after` passed without a node accepting the subscription.
    GiveUp,
}

/// Resume point, duplicate filter and node rotation of one subscriber.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The first offset wanted next (`None`: live, and no node has said
    /// where "now" is yet).
    next: Option<u64>,
    /// The URLs in the order they are tried (from [`order`]).
    order: Vec<usize>,
    /// Position in `order` of the node now.
    at: usize,
    /// Connections in a row that were not good ([`STABLE`]).
    failures: u32,
    backoff: Backoff,
    /// When a node last accepted the subscription (or the start).
    last_ok: Instant,
    give_up_after: Option<Duration>,
}

impl Tracker {
    /// A tracker trying the URLs in `order` (from [`order`]; not empty),
    /// round and round.
    pub fn new(
        order: Vec<usize>,
        from: Option<u64>,
        backoff: (Duration, Duration),
        give_up_after: Option<Duration>,
        now: Instant,
    ) -> Tracker {
        let order = if order.is_empty() { vec![0] } else { order };
        Tracker {
            next: from,
            order,
            at: 0,
            failures: 0,
            backoff: Backoff::new(backoff.0, backoff.1),
            last_ok: now,
            give_up_after,
        }
    }

    /// The node to connect to now.
    pub fn node(&self) -> usize {
        self.order[self.at]
    }

    /// The `from` of the next connection (`None`: live from now).
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// A node accepted the subscription; its hello names the first offset
    /// it will deliver. A live subscription adopts it as its resume point,
    /// so moving before the first message loses nothing.
    pub fn on_hello(&mut self, next: u64, now: Instant) {
        self.last_ok = now;
        if self.next.is_none() {
            self.next = Some(next);
        }
    }

    /// A delivery at `offset` arrived: `true` to hand it on (and resume
    /// after it), `false` for one below the resume point (a duplicate).
    pub fn on_delivery(&mut self, offset: u64) -> bool {
        match self.next {
            Some(n) if offset < n => false,
            _ => {
                self.next = Some(offset.saturating_add(1));
                true
            }
        }
    }

    /// The connection ended: move to the next node, after a backoff delay
    /// once every node in turn has failed.
    pub fn on_end(&mut self, e: Ended, now: Instant, rng: &mut Rng) -> Next {
        if self.next.is_none() {
            // Only a live subscription that never heard a hello: the hub's
            // word is all there is. (Otherwise `last + 1` stands: every
            // offset below the one a 4008 names was sent before the close,
            // and the hub filters what does not match.)
            self.next = e.resume_hint;
        }
        self.at = (self.at + 1) % self.order.len();
        let good = e.delivered || (e.subscribed && e.lived >= STABLE);
        if good {
            self.failures = 0;
            self.backoff.reset();
            return Next::Retry {
                node: self.node(),
                delay: Duration::ZERO,
            };
        }
        if self
            .give_up_after
            .is_some_and(|g| now.saturating_duration_since(self.last_ok) >= g)
        {
            return Next::GiveUp;
        }
        self.failures = self.failures.saturating_add(1);
        let round = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
        let delay = if self.failures.is_multiple_of(round) {
            self.backoff.next_delay(rng)
        } else {
            Duration::ZERO
        };
        Next::Retry {
            node: self.node(),
            delay,
        }
    }
}

/// The order in which `n` URLs are tried: round robin from `start` when it
/// is given; else a random first one, then the others in a random
/// permutation, so that the subscribers of a node that dies spread over
/// the rest instead of all moving to the same next one.
pub(crate) fn order(n: usize, start: Option<usize>, rng: &mut Rng) -> Vec<usize> {
    let n = n.max(1);
    if let Some(s) = start {
        return (0..n).map(|i| (s + i) % n).collect();
    }
    let mut v: Vec<usize> = (0..n).collect();
    // Fisher-Yates.
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// The hello's `next`: a text frame `{"next":N}` (whitespace allowed, other
/// numeric or string fields without commas ignored).
pub fn parse_hello(text: &[u8]) -> Result<u64, HubViolation> {
    let t = std::str::from_utf8(text).map_err(|_| HubViolation::BadHello)?;
    let inner = t
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or(HubViolation::BadHello)?;
    for field in inner.split(',') {
        let Some((k, v)) = field.split_once(':') else {
            return Err(HubViolation::BadHello);
        };
        if k.trim() == "\"next\"" {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HubViolation::BadHello);
            }
            return v.parse().map_err(|_| HubViolation::BadHello);
        }
    }
    Err(HubViolation::BadHello)
}

/// One binary frame of `/sub`: the topic, `0x00`, a protobuf `Delivery`
/// (which must carry its offset). The topic and payload slice `frame`.
pub fn parse_delivery(frame: Bytes) -> Result<Delivery, HubViolation> {
    let zero = frame
        .iter()
        .position(|&b| b == 0)
        .ok_or(HubViolation::NoSeparator)?;
    let topic = frame.slice(..zero);
    let d = pinion_proto::Delivery::decode(frame.slice(zero + 1..))
        .map_err(|_| HubViolation::BadDelivery)?;
    let offset = d.offset.ok_or(HubViolation::NoOffset)?;
    Ok(Delivery {
        offset,
        topic,
        timestamp_us: d.timestamp_us.unwrap_or(0),
        client_id: d.client_id.unwrap_or_default(),
        seq: d.seq.unwrap_or(0),
        payload: d.payload.unwrap_or_default(),
    })
}

/// The offset a slow consumer's close names: code 4008, reason ending with
/// `resume from offset N`.
pub fn resume_hint(code: Option<u16>, reason: &[u8]) -> Option<u64> {
    if code != Some(pinion_proto::ws::CLOSE_SLOW_CONSUMER) {
        return None;
    }
    let r = std::str::from_utf8(reason).ok()?;
    let (_, n) = r.rsplit_once("resume from offset ")?;
    let n = n.trim_end();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

    fn failed() -> Ended {
        Ended::default()
    }

    #[test]
    fn resume_after_the_last_offset_and_drop_duplicates() {
        let t0 = Instant::now();
        let mut rng = Rng::new(1);
        let mut t = Tracker::new(
            order(3, Some(1), &mut Rng::new(0)),
            Some(10),
            BACKOFF,
            None,
            t0,
        );
        assert_eq!((t.node(), t.next()), (1, Some(10)));
        t.on_hello(10, t0);
        assert!(!t.on_delivery(9), "below `from`");
        assert!(t.on_delivery(10));
        assert!(t.on_delivery(12), "offsets skip numbers");
        assert!(!t.on_delivery(12));
        assert!(!t.on_delivery(11));
        assert_eq!(t.next(), Some(13));
        // The node goes away: the next one, at once, from 13.
        let e = Ended {
            subscribed: true,
            delivered: true,
            lived: MS,
            resume_hint: None,
        };
        assert_eq!(
            t.on_end(e, t0, &mut rng),
            Next::Retry {
                node: 2,
                delay: Duration::ZERO
            }
        );
        assert_eq!(t.next(), Some(13));
        // The new node replays from an older offset: dropped.
        t.on_hello(13, t0);
        assert!(!t.on_delivery(12));
        assert!(t.on_delivery(13));
    }

    #[test]
    fn a_live_subscription_adopts_the_hello() {
        let t0 = Instant::now();
        let mut rng = Rng::new(2);
        let mut t = Tracker::new(order(2, Some(0), &mut rng), None, BACKOFF, None, t0);
        assert_eq!(t.next(), None);
        t.on_hello(500, t0);
        assert_eq!(t.next(), Some(500));
        // Dropped before any message: resumes from the hello's offset.
        t.on_end(
            Ended {
                subscribed: true,
                ..failed()
            },
            t0,
            &mut rng,
        );
        assert_eq!((t.node(), t.next()), (1, Some(500)));
        // A later hello (another node's live position) does not move it.
        t.on_hello(900, t0);
        assert_eq!(t.next(), Some(500));
    }

    #[test]
    fn a_slow_consumer_close_names_the_resume_point_only_when_none_is_known() {
        let t0 = Instant::now();
        let mut rng = Rng::new(3);
        let slow = Ended {
            subscribed: true,
            delivered: true,
            lived: MS,
            resume_hint: Some(40),
        };
        let mut t = Tracker::new(vec![0], Some(0), BACKOFF, None, t0);
        assert!(t.on_delivery(30));
        t.on_end(slow, t0, &mut rng);
        assert_eq!(t.next(), Some(31), "last + 1 stands");
        let mut t = Tracker::new(vec![0], None, BACKOFF, None, t0);
        t.on_end(slow, t0, &mut rng);
        assert_eq!(t.next(), Some(40));
    }

    #[test]
    fn backoff_only_after_every_node_failed_in_a_row() {
        let t0 = Instant::now();
        let mut rng = Rng::new(4);
        let mut t = Tracker::new(order(3, Some(2), &mut rng), Some(0), BACKOFF, None, t0);
        let mut delays = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            match t.on_end(failed(), t0, &mut rng) {
                Next::Retry { node, delay } => {
                    nodes.push(node);
                    delays.push(delay);
                }
                Next::GiveUp => panic!("no give-up configured"),
            }
        }
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2]);
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::ZERO);
        assert!(delays[2] >= 50 * MS && delays[2] <= 100 * MS, "{delays:?}");
        assert_eq!(delays[3], Duration::ZERO);
        assert!(delays[5] >= 100 * MS && delays[5] <= 200 * MS, "{delays:?}");
        // A connection that stayed subscribed long enough resets it all.
        let stable = Ended {
            subscribed: true,
            lived: STABLE,
            ..failed()
        };
        assert_eq!(
            t.on_end(stable, t0, &mut rng),
            Next::Retry {
                node: 0,
                delay: Duration::ZERO
            }
        );
        t.on_end(failed(), t0, &mut rng);
        t.on_end(failed(), t0, &mut rng);
        match t.on_end(failed(), t0, &mut rng) {
            Next::Retry { delay, .. } => assert!(delay <= 100 * MS, "{delay:?}"),
            Next::GiveUp => panic!(),
        }
    }

    #[test]
    fn one_node_backs_off_after_each_failure() {
        let t0 = Instant::now();
        let mut rng = Rng::new(5);
        let mut t = Tracker::new(order(1, Some(7), &mut rng), Some(0), BACKOFF, None, t0);
        assert_eq!(t.node(), 0);
        match t.on_end(failed(), t0, &mut rng) {
            Next::Retry { node: 0, delay } => assert!(delay >= 50 * MS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gives_up_when_no_node_accepted_for_long_enough() {
        let t0 = Instant::now();
        let mut rng = Rng::new(6);
        let mut t = Tracker::new(
            vec![0, 1],
            Some(0),
            BACKOFF,
            Some(Duration::from_secs(2)),
            t0,
        );
        assert!(matches!(
            t.on_end(failed(), t0 + Duration::from_secs(1), &mut rng),
            Next::Retry { .. }
        ));
        t.on_hello(0, t0 + Duration::from_secs(1));
        assert!(matches!(
            t.on_end(failed(), t0 + Duration::from_secs(2), &mut rng),
            Next::Retry { .. }
        ));
        assert_eq!(
            t.on_end(failed(), t0 + Duration::from_secs(3), &mut rng),
            Next::GiveUp
        );
    }

    #[test]
    fn orders_round_robin_or_spread() {
        let mut rng = Rng::new(7);
        assert_eq!(order(4, Some(2), &mut rng), [2, 3, 0, 1]);
        assert_eq!(order(1, None, &mut rng), [0]);
        // Random: every URL once, and both the first and the next vary.
        let mut firsts = std::collections::BTreeSet::new();
        let mut seconds = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let o = order(4, None, &mut rng);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3]);
            firsts.insert(o[0]);
            if o[0] == 0 {
                seconds.insert(o[1]);
            }
        }
        assert_eq!(firsts.len(), 4);
        assert_eq!(seconds.len(), 3, "after node 0, any of the others");
        // The tracker follows the order.
        let t0 = Instant::now();
        let mut t = Tracker::new(vec![2, 0, 1], Some(0), BACKOFF, None, t0);
        let mut seen = vec![t.node()];
        for _ in 0..3 {
            t.on_end(failed(), t0, &mut rng);
            seen.push(t.node());
        }
        assert_eq!(seen, [2, 0, 1, 2]);
    }

    #[test]
    fn hellos() {
        assert_eq!(parse_hello(b"{\"next\":42}"), Ok(42));
        assert_eq!(parse_hello(b" { \"next\" : 7 } "), Ok(7));
        assert_eq!(parse_hello(b"{\"node\":3,\"next\":9}"), Ok(9));
        for bad in [
            &b""[..],
            b"{}",
            b"{\"next\":}",
            b"{\"next\":-1}",
            b"{\"next\":1.5}",
            b"{\"next\":99999999999999999999999}",
            b"{\"nxt\":1}",
            b"[\"next\",1]",
            b"\xff",
        ] {
            assert_eq!(parse_hello(bad), Err(HubViolation::BadHello), "{bad:?}");
        }
    }

    #[test]
    fn delivery_frames() {
        let d = pinion_proto::Delivery {
            offset: Some(5),
            timestamp_us: Some(1_700_000_000_000_000),
            client_id: Some(Bytes::from_static(&[7; 16])),
            seq: Some(3),
            payload: Some(Bytes::from_static(b"hi\0there")),
        };
        let mut f = b"orders/eu\0".to_vec();
        f.extend(d.encode_to_vec());
        let got = parse_delivery(Bytes::from(f.clone())).unwrap();
        assert_eq!(got.offset, 5);
        assert_eq!(&got.topic[..], b"orders/eu");
        assert_eq!(&got.payload[..], b"hi\0there");
        assert_eq!((got.seq, got.timestamp_us), (3, 1_700_000_000_000_000));
        assert_eq!(&got.client_id[..], &[7; 16]);
        assert_eq!(
            parse_delivery(Bytes::from_static(b"no separator")),
            Err(HubViolation::NoSeparator)
        );
        assert_eq!(
            parse_delivery(Bytes::from_static(b"t\0\xff\xff\xff")),
            Err(HubViolation::BadDelivery)
        );
        let no_offset = pinion_proto::Delivery { offset: None, ..d };
        let mut f = b"t\0".to_vec();
        f.extend(no_offset.encode_to_vec());
        assert_eq!(parse_delivery(Bytes::from(f)), Err(HubViolation::NoOffset));
    }

    #[test]
    fn slow_consumer_reasons() {
        let r = b"slow consumer: over 1048576 bytes queued; resume from offset 1234";
        assert_eq!(resume_hint(Some(4008), r), Some(1234));
        assert_eq!(resume_hint(Some(1000), r), None);
        assert_eq!(resume_hint(None, r), None);
        assert_eq!(resume_hint(Some(4008), b"resume from offset "), None);
        assert_eq!(resume_hint(Some(4008), b"resume from offset x1"), None);
        assert_eq!(resume_hint(Some(4008), b"\xff"), None);
    }
}
