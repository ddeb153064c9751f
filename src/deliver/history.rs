//! The last hour of a target's outcomes, a bucket per minute, kept in memory for the console's
//! chart: no metrics system needed. Fed where a worker accounts an attempt; starts empty at
//! every start of the relay.

use std::sync::Mutex;

use serde::Serialize;

const MINUTES: usize = 60;
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Minutes since the epoch this bucket counts; an older one is stale and reads as empty.
    minute: u64,
    delivered: u32,
    failed: u32,
    lag_sum_ms: u64,
    lag_max_ms: u64,
}

/// A ring of the last [`MINUTES`] minutes.
pub struct History {
    ring: Mutex<[Bucket; MINUTES]>,
}

impl Default for History {
    fn default() -> Self {
        History {
            ring: Mutex::new([Bucket::default(); MINUTES]),
        }
    }
}

/// The last hour, oldest minute first, one entry per minute in every series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastHour {
    /// Start of the first minute, epoch milliseconds.
    pub from_ms: u64,
    /// Successful deliveries.
    pub delivered: Vec<u32>,
    /// Failed attempts (retried or dead-lettered).
    pub failed: Vec<u32>,
    /// Mean and highest lag, receipt to delivery, of that minute's deliveries.
    pub lag_avg_ms: Vec<u64>,
    pub lag_max_ms: Vec<u64>,
}

impl History {
    fn with_bucket(&self, now_ms: u64, f: impl FnOnce(&mut Bucket)) {
        let minute = now_ms / MINUTE_MS;
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut ring[(minute % MINUTES as u64) as usize];
        if b.minute != minute {
            *b = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        f(b);
    }

    pub fn delivered(&self, now_ms: u64, lag_ms: Option<u64>) {
        self.with_bucket(now_ms, |b| {
            b.delivered += 1;
            if let Some(lag) = lag_ms {
                b.lag_sum_ms += lag;
                b.lag_max_ms = b.lag_max_ms.max(lag);
            }
        });
    }

    pub fn failed(&self, now_ms: u64) {
        self.with_bucket(now_ms, |b| b.failed += 1);
    }

    pub fn last_hour(&self, now_ms: u64) -> LastHour {
        let ring = *self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let last = now_ms / MINUTE_MS;
        let first = last + 1 - MINUTES as u64;
        let mut out = LastHour {
            from_ms: first * MINUTE_MS,
            delivered: Vec::with_capacity(MINUTES),
            failed: Vec::with_capacity(MINUTES),
            lag_avg_ms: Vec::with_capacity(MINUTES),
            lag_max_ms: Vec::with_capacity(MINUTES),
        };
        for minute in first..=last {
            let b = ring[(minute % MINUTES as u64) as usize];
            let b = if b.minute == minute {
                b
            } else {
                Bucket::default()
            };
            out.delivered.push(b.delivered);
            out.failed.push(b.failed);
            out.lag_avg_ms.push(
                b.lag_sum_ms
                    .checked_div(u64::from(b.delivered))
                    .unwrap_or(0),
            );
            out.lag_max_ms.push(b.lag_max_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the ring's bookkeeping: a minute's counts land in its own slot, a slot reused an
    /// hour later starts from zero, and minutes nothing happened in read as zero.
    #[test]
    fn counts_land_in_their_minute_and_an_hour_later_start_afresh() {
        let h = History::default();
        let t0 = 1_000 * MINUTE_MS;
        h.delivered(t0, Some(100));
        h.delivered(t0 + 10, Some(300));
        h.failed(t0 + 20);
        h.delivered(t0 + 2 * MINUTE_MS, None);
        let hour = h.last_hour(t0 + 2 * MINUTE_MS);
        assert_eq!(hour.from_ms, (1_000 - 57) * MINUTE_MS);
        assert_eq!(hour.delivered.len(), 60);
        assert_eq!(&hour.delivered[57..], &[2, 0, 1]);
        assert_eq!(&hour.failed[57..], &[1, 0, 0]);
        assert_eq!(&hour.lag_avg_ms[57..], &[200, 0, 0]);
        assert_eq!(&hour.lag_max_ms[57..], &[300, 0, 0]);
        // An hour on, the slot of minute t0 counts the new minute only (its old counts are
        // dropped), and the minutes before the window are gone.
        h.failed(t0 + 60 * MINUTE_MS);
        let hour = h.last_hour(t0 + 62 * MINUTE_MS);
        assert_eq!(hour.delivered.iter().sum::<u32>(), 0);
        assert_eq!(hour.failed.iter().sum::<u32>(), 1);
        assert_eq!(hour.failed[57], 1);
    }
}
