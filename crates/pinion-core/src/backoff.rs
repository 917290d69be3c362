//! Reconnect backoff with jitter, as a pure calculation.
//!
//! Each failed or lost connection doubles the current interval, from `min`
//! up to `max`; the actual wait is drawn uniformly from `[interval/2,
//! interval]` so that many dialers restarted together spread out. With
//! `max == 0` or `max <= min` the interval stays at `min` (NNG's behaviour
//! when `NNG_OPT_RECONNMAXT` is 0).

use std::time::Duration;

use crate::rng::Rng;

/// Exponential backoff state for one dialer.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The wait before the next attempt; grows the interval for the one after.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let cur = self.current;
        let ceiling = self.max.max(self.min);
        self.current = (cur * 2).min(ceiling);
        let nanos = cur.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        let half = nanos / 2;
        Duration::from_nanos(half + rng.below(nanos - half + 1))
    }

    /// Back to `min` after a connection that lived.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut rng = Rng::new(7);
        let d: Vec<_> = (0..6).map(|_| b.next_delay(&mut rng)).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        assert!(d[5] >= Duration::from_millis(500) && d[5] <= Duration::from_millis(1000));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn no_max_stays_at_min() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::ZERO);
        let mut rng = Rng::new(1);
        for _ in 0..5 {
            assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
        }
    }
}
