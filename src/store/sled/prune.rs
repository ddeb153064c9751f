//! Pruning: events whose deliveries all ended, once their retention is up; and expired dedup
//! keys.
//!
//! Events are found through an index by end time, never by scanning what is retained. Each
//! write group lists in one key (per 256 events) the events of which a delivery ended in it:
//! `Z` for delivered or skipped (and events stored with no delivery), `Y` for dead, under the
//! latest end time among them. Pruning reads the keys whose time is past their retention,
//! oldest first, and removes each one it reads; an event listed there is removed when every
//! delivery of it has ended and is past its own retention. When one is not (another delivery
//! is pending, or kept longer), that delivery's own listing, which comes later, brings the
//! event back: the delivery that expires last is always still listed. So every listing is read
//! once, whatever stays pending meanwhile: a target that is down for days costs pruning
//! nothing. A listing of an event already gone is passed over when read.
//!
//! One key per group rather than per delivery: under a flood a delivery ends seconds after
//! its event came in, in another memtable, and each key is a sled insert.

use std::collections::HashSet;

use super::commit::{Batch, Writer};
use super::keys;
use super::wal::{self, Pointer};
use crate::store::{DeliveryState, Prune, Pruned, StoreError};

/// Where the next sweep of dedup keys starts.
#[derive(Default)]
pub struct Sweeps {
    dedup: Option<Vec<u8>>,
}

/// How a listed event's delivery ended, which sets its retention.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EndedAs {
    /// Delivered or skipped (or the event was stored with no delivery): key `Z`.
    Done,
    /// Dead: key `Y`.
    Dead,
}

impl EndedAs {
    fn tag(self) -> u8 {
        match self {
            EndedAs::Done => b'Z',
            EndedAs::Dead => b'Y',
        }
    }
}

/// Events listed per index key at most.
const PER_KEY: usize = 256;

/// The current group's listings, per [`EndedAs`]: the latest end time and the events.
#[derive(Default)]
pub struct Ended {
    lists: [(u64, Vec<uuid::Uuid>); 2],
}

impl Ended {
    pub fn add(&mut self, ended: Vec<(EndedAs, u64, uuid::Uuid)>) {
        for (as_, ms, event) in ended {
            let (latest, events) = &mut self.lists[as_ as usize];
            *latest = (*latest).max(ms);
            if events.last() != Some(&event) {
                events.push(event);
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Ended::default();
    }
}

impl Writer {
    /// Writes the group's listings as one more log record of it.
    pub fn write_ended(&mut self) {
        let ended = std::mem::take(&mut self.ended);
        let mut batch = Batch::default();
        // The record `commit` is about to append: no other group's key can have its number.
        let lsn = self.wal.last_lsn() + 1;
        for (as_, (latest, events)) in [EndedAs::Done, EndedAs::Dead].into_iter().zip(ended.lists) {
            for (part, chunk) in events.chunks(PER_KEY).enumerate() {
                let key = keys::ended(as_.tag(), latest, lsn, part as u16);
                batch.insert(
                    key.as_slice(),
                    chunk
                        .iter()
                        .flat_map(|e| *e.as_bytes())
                        .collect::<Vec<u8>>(),
                );
            }
        }
        self.commit(batch);
    }

    pub fn prune(&mut self, p: Prune) -> Result<Pruned, StoreError> {
        let mut batch = Batch::default();
        let mut pruned = Pruned::default();
        let mut gone = HashSet::new();
        let mut budget = p.max_events;
        for (tag, before) in [(b'Z', p.done_before_ms), (b'Y', p.dead_before_ms)] {
            let to = keys::ended(tag, before, 0, 0);
            // Keys until they list `budget` events; the last one may be taken in part, and
            // keeps the rest.
            let mut found = Vec::new();
            for item in self.shared.mem.range(&self.shared.db, &[tag], &to, false) {
                if budget == 0 {
                    break;
                }
                let (key, events) = item?;
                let take = (events.len() / 16).min(budget);
                budget -= take;
                found.push((key, events, take));
            }
            // Whether more is listed: the next call looks.
            pruned.more |= budget == 0;
            for (key, events, take) in found {
                let (now, later) = events.split_at(take * 16);
                if later.is_empty() {
                    batch.remove(key);
                } else {
                    batch.insert(key, later);
                }
                for id in now.chunks_exact(16) {
                    let id = uuid::Uuid::from_slice(id).expect("16 bytes");
                    if !gone.contains(&id) && self.prune_event(&mut batch, id, &p)? {
                        gone.insert(id);
                        pruned.events += 1;
                    }
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
            DeliveryState::Done | DeliveryState::Skipped | DeliveryState::Superseded => {
                d.updated_ms < p.done_before_ms
            }
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
                self.bump(batch, d.target, 0, -1)?;
            }
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
