//! *When* to try again. Whether to try again at all is [`super::classify`]'s question.
//!
//! The default mirrors StatusGator's own sender: 20 retries, the first after 2 s, doubling, with
//! ±10 % jitter: 2 s × (2²⁰ − 1) ≈ 24.3 days from the first failure to the last retry. The
//! schedule is computed here and persisted as a due time in the store; nothing sleeps in memory.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
    /// Fraction of each delay added or removed at random, in `[0, 1)`.
    pub jitter: f64,
    /// Upper bound of one delay. The default is the default schedule's own last step
    /// (2 s × 2¹⁹, about 12 days), so the schedule spans StatusGator's 24 days; a policy
    /// with a larger multiplier or more retries is held to it instead of waiting for years.
    pub max_delay: Duration,
    /// A receiver's `Retry-After` is honoured up to this long.
    pub retry_after_max: Duration,
}

/// The default [`RetryPolicy::max_delay`]: the last step of the default schedule.
pub const MAX_DELAY: Duration = Duration::from_secs(1 << 20);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 20,
            initial_delay: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.1,
            max_delay: MAX_DELAY,
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry) without jitter, or `None`
    /// once the retries are spent.
    pub fn base_delay(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let exponent = i32::try_from(retry - 1).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        // Overflow (an infinite or huge product) saturates to the cap.
        let d = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        Some(d.min(self.max_delay))
    }

    /// The delay before retry number `retry`, with jitter drawn from `unit` (a value in
    /// `[0, 1)`; 0.5 means none). A `Retry-After` from the receiver can make the retry later,
    /// up to `retry_after_max` (it may not park a delivery for ever), but never sooner than the
    /// schedule: a receiver answering `Retry-After: 0` must not burn every retry in seconds.
    pub fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Option<Duration> {
        let base = self.base_delay(retry)?;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let scheduled = Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(base)
            .min(self.max_delay);
        Some(match retry_after {
            Some(ra) => ra.min(self.retry_after_max).max(scheduled),
            None => scheduled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spans_about_24_days_over_20_retries() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(1), Some(Duration::from_secs(2)));
        assert_eq!(p.base_delay(2), Some(Duration::from_secs(4)));
        assert_eq!(p.base_delay(20), Some(Duration::from_secs(1_048_576)));
        assert_eq!(p.base_delay(21), None);
        assert_eq!(p.base_delay(0), None);
        let total: u64 = (1..=20).map(|r| p.base_delay(r).unwrap().as_secs()).sum();
        assert_eq!(total, 2_097_150);
        let days = total as f64 / 86_400.0;
        assert!((24.0..24.5).contains(&days), "{days}");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(3, 0.0, None), Some(Duration::from_secs_f64(7.2)));
        assert_eq!(p.delay(3, 0.5, None), Some(Duration::from_secs(8)));
        let hi = p.delay(3, 0.999_999, None).unwrap().as_secs_f64();
        assert!(hi < 8.8 && hi > 8.79, "{hi}");
    }

    #[test]
    fn retry_after_is_honoured_within_the_clamp_but_not_past_the_last_retry() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, 0.5, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.delay(1, 0.5, Some(Duration::from_secs(86_400))),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(p.delay(21, 0.5, Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn max_delay_caps_each_step() {
        let p = RetryPolicy {
            max_delay: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert_eq!(p.base_delay(10), Some(Duration::from_secs(60)));
        assert_eq!(p.delay(10, 0.999, None), Some(Duration::from_secs(60)));
    }

    /// A policy whose delays overflow (a huge multiplier, thousands of retries) waits the cap,
    /// never a wrapped-around delay in the past.
    #[test]
    fn delays_saturate_at_the_cap() {
        let p = RetryPolicy {
            multiplier: 1e300,
            max_retries: u32::MAX,
            ..RetryPolicy::default()
        };
        for retry in [2, 3, 1_000, u32::MAX] {
            assert_eq!(p.base_delay(retry), Some(MAX_DELAY), "retry {retry}");
            assert_eq!(p.delay(retry, 0.999, None), Some(MAX_DELAY));
        }
    }

    /// `Retry-After` can delay a retry past the schedule, never bring it sooner.
    #[test]
    fn retry_after_never_shortens_the_schedule() {
        let p = RetryPolicy::default();
        for retry in 1..=20 {
            let d = p.delay(retry, 0.5, Some(Duration::ZERO)).unwrap();
            assert_eq!(Some(d), p.base_delay(retry), "retry {retry}");
        }
        let total: Duration = (1..=20)
            .map(|r| p.delay(r, 0.5, Some(Duration::ZERO)).unwrap())
            .sum();
        assert!(total > Duration::from_secs(20 * 86_400), "{total:?}");
    }
}
