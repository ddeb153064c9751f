//! Per-target rate limits: the generic cell rate algorithm (GCRA), a token bucket kept as one
//! number per target, the *theoretical arrival time* (TAT) of the next send at the steady
//! pace. A send at `now` may go when `max(tat, now) - now <= tolerance`, and moves the TAT on
//! by one interval; `tolerance` is `(burst - 1)` intervals, so up to `burst` sends may go back
//! to back after a quiet spell, and never more than the pace allows over any longer stretch.
//!
//! One number per target is what makes the limit easy to share: the embedded store keeps it
//! in memory for every lane of the process ([`Limiter`]); PostgreSQL keeps it in a row that
//! one atomic `UPDATE` advances, so every instance spends the same bucket.

use std::collections::HashMap;
use std::sync::Mutex;

use super::TargetId;

/// A target's rate limit: one send per `every_ms` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub every_ms: u64,
    pub burst: u32,
}

impl RateLimit {
    /// How far ahead of `now` the TAT may be for a send to go.
    pub fn tolerance_ms(self) -> u64 {
        self.every_ms
            .saturating_mul(u64::from(self.burst.max(1)) - 1)
    }

    /// One send at `now` against the TAT `tat`: `Ok(new tat)` when it may go, `Err(when it
    /// may)` otherwise.
    pub fn take(self, tat: u64, now: u64) -> Result<u64, u64> {
        let start = tat.max(now);
        if start - now <= self.tolerance_ms() {
            Ok(start.saturating_add(self.every_ms))
        } else {
            Err(start - self.tolerance_ms())
        }
    }

    /// The TAT after a pause until `until`: the first send may go then, and no burst follows.
    pub fn paused(self, tat: u64, until: u64) -> u64 {
        tat.max(until.saturating_add(self.tolerance_ms()))
    }
}

/// The embedded store's TATs, in memory: one process holds every lane of a target.
#[derive(Default)]
pub struct Limiter {
    tat: Mutex<HashMap<TargetId, u64>>,
}

impl Limiter {
    pub fn take(&self, target: TargetId, limit: RateLimit, now: u64) -> Option<u64> {
        let mut tats = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let tat = tats.entry(target).or_insert(0);
        match limit.take(*tat, now) {
            Ok(next) => {
                *tat = next;
                None
            }
            Err(at) => Some(at),
        }
    }

    pub fn pause(&self, target: TargetId, limit: RateLimit, until: u64) {
        let mut tats = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let tat = tats.entry(target).or_insert(0);
        *tat = limit.paused(*tat, until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the bucket: `burst` sends at once, then one per interval, and a denied send is
    /// told exactly when it may go; over any window no more go than the pace and the burst
    /// allow.
    #[test]
    fn bursts_then_the_steady_pace() {
        let l = Limiter::default();
        let limit = RateLimit {
            every_ms: 200,
            burst: 3,
        };
        let sent: Vec<bool> = (0..4).map(|_| l.take(1, limit, 1000).is_none()).collect();
        assert_eq!(sent, [true, true, true, false]);
        assert_eq!(l.take(1, limit, 1000), Some(1200));
        assert_eq!(l.take(1, limit, 1199), Some(1200));
        assert_eq!(l.take(1, limit, 1200), None);
        assert_eq!(l.take(1, limit, 1300), Some(1400));
        assert_eq!(
            l.take(2, limit, 1300),
            None,
            "targets have their own buckets"
        );
        // Sends as fast as allowed over 10 s: 3 at once, then one per 200 ms.
        let l = Limiter::default();
        let mut times = Vec::new();
        let mut now = 0;
        while now < 10_000 {
            match l.take(1, limit, now) {
                None => times.push(now),
                Some(at) => now = at,
            }
        }
        assert_eq!(times.len(), 3 + 49);
        for w in times.windows(4) {
            assert!(w[3] - w[0] >= 200, "4 sends within {} ms", w[3] - w[0]);
        }
    }

    /// Guards the pause: nothing before its end, then the steady pace without a burst.
    #[test]
    fn a_pause_holds_every_send_then_resumes_at_the_pace() {
        let l = Limiter::default();
        let limit = RateLimit {
            every_ms: 100,
            burst: 5,
        };
        l.pause(1, limit, 5_000);
        assert_eq!(l.take(1, limit, 1_000), Some(5_000));
        assert_eq!(l.take(1, limit, 5_000), None);
        assert_eq!(l.take(1, limit, 5_000), Some(5_100));
    }
}
