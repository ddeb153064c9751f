//! Pruning: events whose deliveries all ended, once their retention is up; and expired dedup
//! keys.
//!
//! Events are found through an index by end time, never by scanning what is retained: each
//! delivery that ends writes a `Z` key (delivered or skipped) or a `Y` key (dead) with its end
//! time and its event, and an event stored with no delivery gets a `Z` key at once. Pruning
//! reads the keys whose time is past their retention, oldest first, and removes each one it
//! reads; the event is removed with it when every delivery of it has ended and is past its own
//! retention. When one is not (another delivery is pending, or kept longer), that delivery's own
//! key, which comes later, brings the event back: the delivery that expires last always still
//! has its key. So every index key is read once, whatever stays pending meanwhile: a target
//! that is down for days costs pruning nothing.

use std::collections::HashSet;

use super::commit::{Batch, Writer};
use super::keys;
use super::ops::received_ms;
use super::wal::{self, Pointer};
use crate::store::{DeliveryState, Prune, Pruned, StoreError};

/// Where the next sweep of dedup keys starts.
#[derive(Default)]
pub struct Sweeps {
    dedup: Option<Vec<u8>>,
}

impl Writer {
    pub fn prune(&mut self, p: Prune) -> Result<Pruned, StoreError> {
        let mut batch = Batch::default();
        let mut pruned = Pruned::default();
        let mut gone = HashSet::new();
        let mut budget = p.max_events;
        for (tag, before) in [(b'Z', p.done_before_ms), (b'Y', p.dead_before_ms)] {
            let to = keys::ended(tag, before, &[0; 16]);
            let found = self
                .shared
                .mem
                .range(&self.shared.db, &[tag], &to, false)
                .take(budget)
                .map(|r| r.map(|(k, _)| k))
                .collect::<Result<Vec<_>, _>>()?;
            pruned.more |= found.len() == budget;
            budget -= found.len();
            for key in found {
                let event = keys::ended_event(&key);
                batch.remove(key);
                let Some(id) = event else { continue };
                if !gone.contains(&id) && self.prune_event(&mut batch, id, &p)? {
                    gone.insert(id);
                    pruned.events += 1;
                }
            }
        }
        if pruned.events > 0 {
            // The last delivery record may be among those removed: the next seq is kept here
            // so that opening never gives a seq out again.
            batch.insert(keys::NEXT_SEQ, self.next_seq.to_be_bytes());
        }
        pruned.dedup_keys = self.sweep_dedup_keys(&mut batch, &p)?;
        self.commit(batch);
        Ok(pruned)
    }

    /// Removes event `id` with everything of it when every delivery of it ended before its
    /// retention; returns whether it did.
    fn prune_event(
        &mut self,
        batch: &mut Batch,
        id: uuid::Uuid,
        p: &Prune,
    ) -> Result<bool, StoreError> {
        let Some(entry) = self.get(&keys::event(id.as_bytes()))? else {
            return Ok(false);
        };
        let mut deliveries = Vec::new();
        for seq in wal::entry_seqs(&entry) {
            deliveries.extend(self.delivery_rec(seq)?);
        }
        let expired = deliveries.iter().all(|d| match d.state {
            DeliveryState::Pending => false,
            DeliveryState::Dead => d.updated_ms < p.dead_before_ms,
            DeliveryState::Done | DeliveryState::Skipped => d.updated_ms < p.done_before_ms,
        });
        if !expired {
            return Ok(false);
        }
        let event = id.as_bytes();
        for d in &deliveries {
            batch.remove(keys::delivery(d.seq).as_slice());
            let attempts = keys::attempts(d.seq);
            let mut end = attempts.to_vec();
            end.push(0xFF);
            for item in self
                .shared
                .mem
                .range(&self.shared.db, &attempts, &end, false)
            {
                batch.remove(item?.0);
            }
            if d.state == DeliveryState::Dead {
                batch.remove(keys::dead(d.target, d.updated_ms, d.seq).as_slice());
                batch.remove(keys::ended(b'Y', d.updated_ms, event).as_slice());
                self.bump(batch, d.target, 0, -1)?;
            } else {
                batch.remove(keys::ended(b'Z', d.updated_ms, event).as_slice());
            }
        }
        if deliveries.is_empty() {
            batch.remove(keys::ended(b'Z', received_ms(id), event).as_slice());
        }
        if let Some(pointer) = Pointer::decode(&entry) {
            self.bump_live(batch, pointer.segment, -1)?;
        }
        batch.remove(keys::event(event));
        Ok(true)
    }

    /// Expired dedup keys, `max_events` per call from where the last call stopped: their
    /// senders stopped retrying long ago, and dedup windows (30 days by default) make a late
    /// sweep harmless, where an index by expiry would cost a write per event at ingest.
    fn sweep_dedup_keys(&mut self, batch: &mut Batch, p: &Prune) -> Result<usize, StoreError> {
        let from = self.sweeps.dedup.take().unwrap_or_else(|| b"D".to_vec());
        let mut swept = 0;
        for (visited, item) in self
            .shared
            .mem
            .range(&self.shared.db, &from, b"E", false)
            .enumerate()
        {
            let (k, v) = item?;
            if visited == p.max_events {
                self.sweeps.dedup = Some(k);
                break;
            }
            if keys::seq_of(&v).is_some_and(|until| until < p.now_ms) {
                batch.remove(k);
                swept += 1;
            }
        }
        Ok(swept)
    }
}
