//! The store's operations as the writer runs them: what each one writes, and what it changes
//! in the queue once durable. Pruning is in [`super::prune`].

use std::collections::HashSet;

use super::commit::{Batch, Writer};
use super::key_state::StateWrite;
use super::keys;
use super::prune::EndedAs;
use super::queue::{key_hash, Effect, KeyHash};
use super::to_json;
use super::wal::{self, Lsn, Pointer};
use crate::store::{
    Attempt, Delivery, DeliveryState, EventOutcome, IngestBatch, NewDelivery, Next, Seq,
    StoreError, TargetCounts, TargetId,
};

/// The creation time in ms of a UUIDv7 event id: when it was received.
pub fn received_ms(id: uuid::Uuid) -> u64 {
    (id.as_u128() >> 80) as u64
}

impl Writer {
    fn key_hash(&self, target: TargetId, ordering_key: &str) -> KeyHash {
        key_hash(&self.shared.hasher, target, ordering_key)
    }

    pub fn delivery_rec(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        super::delivery_with(seq, |k| self.get(k))
    }

    pub fn targets(&mut self, names: &[String]) -> Result<Vec<TargetId>, StoreError> {
        let mut max = 0u32;
        for item in self.shared.mem.range(&self.shared.db, b"T", b"U", false) {
            let (_, v) = item?;
            max = max.max(target_id(&v)?);
        }
        let mut ids = Vec::with_capacity(names.len());
        let mut batch = Batch::default();
        for name in names {
            let key = keys::target_name(name);
            let id = match self.get(&key)? {
                Some(v) => target_id(&v)?,
                None => {
                    max += 1;
                    batch.insert(key, max.to_be_bytes());
                    max
                }
            };
            ids.push(id);
        }
        self.commit(batch);
        Ok(ids)
    }

    pub fn ingest(&mut self, b: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        let mut batch = Batch::default();
        // Dedup keys this batch writes, which the group cannot show until it is committed.
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut outcomes = Vec::with_capacity(b.events.len());
        for new in b.events {
            let id = new.id;
            let dedup_key = keys::dedup(&new.source, &new.dedup_key);
            let duplicate = seen.contains(&dedup_key)
                || match self.get(&dedup_key)? {
                    Some(v) => keys::seq_of(&v).is_some_and(|until| until > b.now_ms),
                    None => false,
                };
            if duplicate {
                outcomes.push(EventOutcome::Duplicate);
                continue;
            }
            batch.insert(
                dedup_key.as_slice(),
                [b.dedup_until_ms.to_be_bytes().as_slice(), id.as_bytes()].concat(),
            );
            seen.insert(dedup_key);
            let mut entry = new.encoded;
            let pointer = Pointer::decode(&entry)
                .ok_or_else(|| StoreError::Corrupt("an event to store has no body".into()))?;
            self.bump_live(&mut batch, pointer.segment, 1)?;
            if new.deliveries.is_empty() {
                // Nothing will end: pruning looks at it once delivered events' retention is up.
                batch.ended(EndedAs::Done, received_ms(id), id);
            }
            entry.reserve_exact(8 * new.deliveries.len());
            for d in new.deliveries {
                self.enqueue_new(&mut batch, id, &mut entry, d, b.now_ms)?;
            }
            batch.insert(keys::event(id.as_bytes()), entry);
            outcomes.push(EventOutcome::Stored);
        }
        // No `NEXT_SEQ` write: every seq given out has its pending key or its record, and
        // opening takes the seq after the last of either. Pruning, which removes records,
        // writes it instead.
        self.commit(batch);
        Ok(outcomes)
    }

    /// Stores a new pending delivery of `event`, lists it in the event's `entry`, and adds it
    /// at the end of its key's queue.
    fn enqueue_new(
        &mut self,
        batch: &mut Batch,
        event: uuid::Uuid,
        entry: &mut Vec<u8>,
        d: NewDelivery,
        now_ms: u64,
    ) -> Result<Seq, StoreError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = self.key_hash(d.target, &d.ordering_key);
        // No record (`L`) yet: the pending key stands for it until the first attempt.
        let pending = keys::Pending {
            target: d.target,
            due_ms: now_ms,
            pos: seq,
            created_ms: now_ms,
            event,
            recorded: false,
            ordering_key: &d.ordering_key,
        };
        batch.insert_new(keys::pending(seq).as_slice(), pending.value());
        entry.extend_from_slice(&seq.to_be_bytes());
        batch
            .effects
            .push(Effect::Remember(Box::new(pending.record(seq))));
        batch.effects.push(Effect::Add {
            target: d.target,
            key,
            seq,
            pos: seq,
            due: now_ms,
        });
        self.bump(batch, d.target, 1, 0)?;
        Ok(seq)
    }

    /// Records an attempt; `state` (a key's state value) goes into the same log record, and
    /// nowhere when the finish is stale.
    pub fn finish(
        &mut self,
        claimed: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Box<StateWrite>>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        let rec = self.claimed_rec(claimed)?;
        let Some(rec) = rec else {
            // Someone else already finished this attempt (a stale lease); keep what is there.
            batch.effects.push(Effect::Release { seq: claimed.seq });
            self.commit(batch);
            return Ok(());
        };
        self.finish_in(&mut batch, rec, attempt, next)?;
        if let Some(write) = state {
            write.into_batch(&mut batch);
        }
        self.commit(batch);
        Ok(())
    }

    /// The record of a claimed delivery, if it is still pending as claimed.
    pub fn claimed_rec(&self, claimed: &Delivery) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .delivery_rec(claimed.seq)?
            .filter(|r| r.state == DeliveryState::Pending && r.due_ms == claimed.due_ms))
    }

    /// Adds an attempt at the pending delivery `rec` and what follows from it to `batch`.
    pub fn finish_in(
        &mut self,
        batch: &mut Batch,
        mut rec: Delivery,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        let seq = rec.seq;
        let now = attempt.at_ms + attempt.latency_ms;
        let target = rec.target;
        let key = self.key_hash(target, &rec.ordering_key);
        // The record holds the last attempt; the one it replaces goes to the history.
        if let Some(previous) = rec.last_attempt() {
            batch.insert(
                keys::attempt(seq, previous.number).as_slice(),
                to_json(&previous),
            );
        }
        rec.attempts = attempt.number;
        rec.last_status = attempt.status;
        rec.last_error = attempt.error;
        rec.response_excerpt = attempt.response_excerpt;
        rec.last_at_ms = attempt.at_ms.max(1);
        rec.last_latency_ms = attempt.latency_ms;
        rec.updated_ms = now;
        // An attempt ends a hold.
        rec.note = None;
        match next {
            Next::Retry { due_ms } | Next::Throttled { due_ms } => {
                if matches!(next, Next::Throttled { .. }) {
                    // The attempt is recorded; the retry budget counts from one later.
                    rec.retry_base = rec.retry_base.saturating_add(1);
                }
                rec.due_ms = due_ms;
                self.reschedule(batch, seq, due_ms)?;
                batch.effects.push(Effect::Due {
                    target,
                    key,
                    seq,
                    due: due_ms,
                });
            }
            Next::Done | Next::Skipped | Next::Dead => {
                batch.remove(keys::pending(seq).as_slice());
                batch.effects.push(Effect::Remove { target, key, seq });
                let event = rec.event_id;
                if next == Next::Dead {
                    rec.state = DeliveryState::Dead;
                    batch.insert(keys::dead(target, now, seq).as_slice(), []);
                    batch.ended(EndedAs::Dead, now, event);
                } else {
                    rec.state = if next == Next::Done {
                        DeliveryState::Done
                    } else {
                        DeliveryState::Skipped
                    };
                    batch.ended(EndedAs::Done, now, event);
                }
                self.bump(batch, target, -1, i64::from(next == Next::Dead))?;
            }
        }
        batch.insert(keys::delivery(seq).as_slice(), to_json(&rec));
        Ok(())
    }

    /// Writes a pending delivery's new due time into its `P` key, which from then on says the
    /// delivery has a record: the caller writes it (`L`) in the same batch.
    pub fn reschedule(&self, batch: &mut Batch, seq: Seq, due_ms: u64) -> Result<(), StoreError> {
        let mut pending = self
            .get(&keys::pending(seq))?
            .filter(|v| keys::Pending::parse(v).is_some())
            .ok_or_else(|| StoreError::Corrupt(format!("pending delivery {seq} is not queued")))?
            .to_vec();
        pending[4..12].copy_from_slice(&due_ms.to_be_bytes());
        pending[keys::PENDING_RECORDED_AT] = 1;
        batch.insert(keys::pending(seq).as_slice(), pending);
        Ok(())
    }

    pub fn replay(&mut self, mut seqs: Vec<Seq>, now_ms: u64) -> Result<usize, StoreError> {
        // The same dead letter named twice is replayed once.
        seqs.sort_unstable();
        seqs.dedup();
        let mut batch = Batch::default();
        let mut replayed = 0;
        for seq in seqs {
            let Some(mut rec) = self.delivery_rec(seq)? else {
                continue;
            };
            if rec.state != DeliveryState::Dead {
                continue;
            }
            batch.remove(keys::dead(rec.target, rec.updated_ms, seq).as_slice());
            rec.state = DeliveryState::Pending;
            rec.retry_base = rec.attempts;
            rec.due_ms = now_ms;
            rec.updated_ms = now_ms;
            // To the back of its key's queue: a place number from the seq counter.
            let pos = self.next_seq;
            self.next_seq += 1;
            let pending = keys::Pending {
                target: rec.target,
                due_ms: now_ms,
                pos,
                created_ms: rec.created_ms,
                event: rec.event_id,
                recorded: true,
                ordering_key: &rec.ordering_key,
            };
            batch.insert(keys::pending(seq).as_slice(), pending.value());
            batch.effects.push(Effect::Add {
                target: rec.target,
                key: self.key_hash(rec.target, &rec.ordering_key),
                seq,
                pos,
                due: now_ms,
            });
            batch.insert(keys::delivery(seq).as_slice(), to_json(&rec));
            self.bump(&mut batch, rec.target, 1, -1)?;
            replayed += 1;
        }
        if replayed > 0 {
            // The place numbers came from the seq counter, and no record holds them.
            batch.insert(keys::NEXT_SEQ, self.next_seq.to_be_bytes());
        }
        self.commit(batch);
        Ok(replayed)
    }

    pub fn redeliver(
        &mut self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        let key = keys::event(event.as_bytes());
        let Some(stored) = self.get(&key)? else {
            return Ok(Vec::new());
        };
        let mut batch = Batch::default();
        let mut entry = stored.to_vec();
        let mut seqs = Vec::new();
        for d in deliveries {
            seqs.push(self.enqueue_new(&mut batch, event, &mut entry, d, now_ms)?);
        }
        batch.insert(key, entry);
        self.commit(batch);
        Ok(seqs)
    }

    /// Copies each body to the end of the log and points its event there, unless the event was
    /// pruned or its body moved since the caller looked.
    pub fn relocate(&mut self, bodies: Vec<(Vec<u8>, Pointer)>) -> Result<usize, StoreError> {
        let mut batch = Batch::default();
        let mut moved = 0;
        for (key, from) in bodies {
            let Some(entry) = self.get(&key)? else {
                continue;
            };
            if Pointer::decode(&entry) != Some(from) {
                continue;
            }
            let body = self.wal.read(from).map_err(super::io_error)?;
            let to = self.wal.append_body(&body);
            self.bump_live(&mut batch, from.segment, -1)?;
            self.bump_live(&mut batch, to.segment, 1)?;
            batch.insert(key, to.entry(wal::entry_seqs(&entry)));
            moved += 1;
        }
        self.commit(batch);
        Ok(moved)
    }

    fn counts_of(&mut self, target: TargetId) -> Result<TargetCounts, StoreError> {
        if let Some(c) = self.counts.get(&target) {
            return Ok(*c);
        }
        let c = match self.get(&keys::target_prefix(b'C', target))? {
            Some(v) => super::counts_of_value(&v),
            None => TargetCounts::default(),
        };
        self.counts.insert(target, c);
        Ok(c)
    }

    /// Adjusts a target's counters and writes them in the same batch as the change.
    pub fn bump(
        &mut self,
        batch: &mut Batch,
        target: TargetId,
        pending: i64,
        dead: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.counts_of(target)?;
        c.pending = c.pending.saturating_add_signed(pending);
        c.dead = c.dead.saturating_add_signed(dead);
        self.counts.insert(target, c);
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&c.pending.to_be_bytes());
        v[8..].copy_from_slice(&c.dead.to_be_bytes());
        batch.insert(keys::target_prefix(b'C', target).as_slice(), v);
        Ok(())
    }

    /// Adjusts how many live event bodies a log segment holds, in the same batch as the change;
    /// the key goes when none is left, and the segment with it once a checkpoint covers it.
    pub fn bump_live(
        &mut self,
        batch: &mut Batch,
        segment: Lsn,
        by: i64,
    ) -> Result<(), StoreError> {
        let n = match self.live.get(&segment) {
            Some(n) => *n,
            None => self
                .get(&keys::live_bodies(segment))?
                .and_then(|v| keys::seq_of(&v))
                .unwrap_or(0),
        };
        let n = n.saturating_add_signed(by);
        self.live.insert(segment, n);
        if n == 0 {
            batch.remove(keys::live_bodies(segment).as_slice());
        } else {
            batch.insert(keys::live_bodies(segment).as_slice(), n.to_be_bytes());
        }
        Ok(())
    }
}

fn target_id(v: &[u8]) -> Result<TargetId, StoreError> {
    Ok(u32::from_be_bytes(v.try_into().map_err(|_| {
        StoreError::Corrupt("malformed target id".into())
    })?))
}
