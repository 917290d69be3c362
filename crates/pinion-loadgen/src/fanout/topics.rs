//! Per-topic mode (`--topics K`): topic names, which topic each message goes
//! to, and how many subscribers each topic has.
//!
//! Names: topic `j` is `t.<j>/` and idle subscriber `i` subscribes to
//! `idle.<i>/`. The hub's filters are byte *prefixes*, so every name ends in
//! `/`, which no digit run contains: `t.1/` is not a prefix of `t.10/`, and
//! no `t.` name is a prefix of an `idle.` name or of the bench's warm-up
//! topic, or the other way round. Each subscriber therefore matches exactly
//! its own topic.
//!
//! Subscriber `i` (of `N`) takes topic `i % K`. Message `m` goes to a
//! uniformly random topic drawn from a seeded xorshift64* stream (`--seed`),
//! so the schedule is the same in every run and known in advance: each
//! subscriber knows exactly which message indices it must receive.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// `--topics`: a fixed number of topics, or one per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    /// One topic per subscriber (K = that run's N).
    All,
    /// K topics.
    Count(usize),
}

impl Topics {
    /// K for a run with `n` subscribers.
    pub fn for_subscribers(self, n: usize) -> usize {
        match self {
            Topics::All => n,
            Topics::Count(k) => k,
        }
    }
}

impl FromStr for Topics {
    type Err = String;

    fn from_str(s: &str) -> Result<Topics, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case("n") {
            return Ok(Topics::All);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("--topics must be at least 1 (or `all`)".into()),
            Ok(k) => Ok(Topics::Count(k)),
            Err(_) => Err(format!(
                "--topics {s:?}: expected a number of topics or `all`"
            )),
        }
    }
}

impl fmt::Display for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topics::All => f.write_str("all"),
            Topics::Count(k) => write!(f, "{k}"),
        }
    }
}

impl Serialize for Topics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Topics::All => s.serialize_str("all"),
            Topics::Count(k) => s.serialize_u64(*k as u64),
        }
    }
}

/// The name of topic `j`.
pub(crate) fn topic_name(j: usize) -> String {
    format!("t.{j}/")
}

/// The never-published topic of idle subscriber `i`.
pub(crate) fn idle_topic(i: usize) -> String {
    format!("idle.{i}/")
}

/// Subscribers (of `n`, subscriber `i` on topic `i % k`) on topic `j`.
pub(crate) fn subscribers_on(n: usize, k: usize, j: usize) -> usize {
    n / k + usize::from(j < n % k)
}

/// xorshift64* (Vigna), seeded through splitmix64 so that any seed,
/// including 0, gives a non-zero state.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..k` (multiply-shift; the bias is below 2^-40 for any
    /// k the bench allows).
    pub(crate) fn below(&mut self, k: usize) -> usize {
        ((u128::from(self.next_u64()) * k as u128) >> 64) as usize
    }
}

/// Which topic every message goes to.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Topics (K).
    pub k: usize,
    /// Per message index: its topic.
    pub topic_of: Vec<u32>,
    /// Per topic: the indices of the messages sent to it, ascending.
    pub by_topic: Vec<Vec<u32>>,
}

impl Schedule {
    /// `messages` messages over `k` topics, drawn from `seed`.
    pub(crate) fn new(seed: u64, k: usize, messages: usize) -> Schedule {
        assert!(k >= 1 && k <= u32::MAX as usize && messages <= u32::MAX as usize);
        let mut rng = XorShift::new(seed);
        let topic_of: Vec<u32> = (0..messages).map(|_| rng.below(k) as u32).collect();
        let mut by_topic = vec![Vec::new(); k];
        for (m, &j) in topic_of.iter().enumerate() {
            by_topic[j as usize].push(m as u32);
        }
        Schedule {
            k,
            topic_of,
            by_topic,
        }
    }

    /// The position of message `index` in `topic`'s list, if it was sent
    /// there.
    pub(crate) fn position(&self, topic: usize, index: u32) -> Option<usize> {
        self.by_topic.get(topic)?.binary_search(&index).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefix_free() {
        let mut names: Vec<String> = (0..1200).map(topic_name).collect();
        names.extend((0..1200).map(idle_topic));
        names.push("warmup-0123456789ab".into());
        names.push("fo-0123456789ab".into());
        names.push("ff-0123456789ab".into());
        names.sort();
        // In sorted order a prefix sorts right before the names it prefixes.
        for w in names.windows(2) {
            assert!(
                !w[1].as_bytes().starts_with(w[0].as_bytes()),
                "{:?} is a prefix of {:?}",
                w[0],
                w[1]
            );
        }
        assert_eq!(topic_name(1), "t.1/");
        assert!(!topic_name(10).starts_with(&topic_name(1)));
        assert_eq!(idle_topic(7), "idle.7/");
    }

    #[test]
    fn topics_parse() {
        assert_eq!("all".parse::<Topics>(), Ok(Topics::All));
        assert_eq!("ALL".parse::<Topics>(), Ok(Topics::All));
        assert_eq!("N".parse::<Topics>(), Ok(Topics::All));
        assert_eq!("12".parse::<Topics>(), Ok(Topics::Count(12)));
        assert!("0".parse::<Topics>().is_err());
        assert!("-1".parse::<Topics>().is_err());
        assert!("x".parse::<Topics>().is_err());
        assert_eq!(Topics::All.for_subscribers(19_000), 19_000);
        assert_eq!(Topics::Count(3).for_subscribers(19_000), 3);
        assert_eq!(serde_json::to_string(&Topics::All).unwrap(), "\"all\"");
        assert_eq!(serde_json::to_string(&Topics::Count(5)).unwrap(), "5");
        assert_eq!(Topics::Count(5).to_string(), "5");
    }

    #[test]
    fn subscribers_per_topic() {
        for (n, k) in [
            (50, 10),
            (53, 10),
            (10, 1),
            (7, 7),
            (19_000, 19_000),
            (5, 3),
        ] {
            let counted = |j: usize| (0..n).filter(|i| i % k == j).count();
            let mut sum = 0;
            for j in 0..k {
                assert_eq!(subscribers_on(n, k, j), counted(j), "n {n} k {k} j {j}");
                sum += subscribers_on(n, k, j);
            }
            assert_eq!(sum, n);
        }
    }

    #[test]
    fn schedule_is_seeded_and_uniform() {
        let a = Schedule::new(1, 10, 20_000);
        let b = Schedule::new(1, 10, 20_000);
        let c = Schedule::new(2, 10, 20_000);
        assert_eq!(a.topic_of, b.topic_of);
        assert_ne!(a.topic_of, c.topic_of);
        assert_eq!(a.by_topic.iter().map(Vec::len).sum::<usize>(), 20_000);
        for (j, list) in a.by_topic.iter().enumerate() {
            // 2,000 expected per topic; 5 sigma is about 212.
            assert!(
                (1_750..=2_250).contains(&list.len()),
                "topic {j}: {}",
                list.len()
            );
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            for (pos, &m) in list.iter().enumerate() {
                assert_eq!(a.topic_of[m as usize] as usize, j);
                assert_eq!(a.position(j, m), Some(pos));
            }
        }
        assert_eq!(a.position(a.topic_of[0] as usize + 1, 0), None);
        // One topic: everything goes there.
        let one = Schedule::new(9, 1, 100);
        assert!(one.topic_of.iter().all(|&j| j == 0));
        assert_eq!(one.by_topic[0], (0..100).collect::<Vec<u32>>());
        // The stream is not stuck at one value and reaches every topic.
        let mut r = XorShift::new(0);
        let v: Vec<usize> = (0..1000).map(|_| r.below(1000)).collect();
        assert!(v.iter().collect::<std::collections::BTreeSet<_>>().len() > 500);
    }
}
