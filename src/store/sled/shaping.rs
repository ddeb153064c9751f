//! Traffic shaping in the embedded store: a claimed key's backlog, and the one log record that
//! supersedes the deliveries before the one kept, records the kept one's attempt (or holds
//! it) and writes the key's state value ([`crate::store::Store::finish_shaped`]).
//!
//! The queue needs no new rules: a superseded delivery leaves it like a finished one
//! (`Effect::Remove`, which also ends the claim when it is the head), and the kept one gets
//! the effect of its outcome (`Effect::Due` for a retry or a hold, `Effect::Remove` when it
//! ended). The deliveries superseded are the key's first ones, so each removal finds its
//! delivery at the front of the key's queue: a step over `n` deliveries costs `O(n log n)`.

use super::commit::{Batch, Writer};
use super::queue::{key_hash, Effect};
use super::{key_state, keys, to_json, SledStore};
use crate::store::{Delivery, DeliveryState, Shaped, ShapedOutcome, StoreError};

impl SledStore {
    /// The claimed head's key's pending deliveries, from the in-memory queue and the records.
    pub(super) fn read_key_backlog(
        &self,
        head: &Delivery,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let key = key_hash(&self.shared.hasher, head.target, &head.ordering_key);
        let seqs = self.shared.queue().key_seqs(head.target, key, limit);
        let mut backlog = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // Two keys whose hashes collide share a queue; only this key's deliveries count.
            if let Some(d) = self.read_delivery(seq)? {
                if d.state == DeliveryState::Pending && d.ordering_key == head.ordering_key {
                    backlog.push(d);
                }
            }
        }
        Ok(backlog)
    }
}

impl Writer {
    pub fn finish_shaped(&mut self, mut s: Shaped) -> Result<(), StoreError> {
        if s.kept.seq != s.head.seq && !s.superseded.contains(&s.head.seq) {
            s.superseded.push(s.head.seq);
        }
        let mut batch = Batch::default();
        let head = self.claimed_rec(&s.head)?;
        let kept = if s.kept.seq == s.head.seq {
            head.clone()
        } else {
            self.claimed_rec(&s.kept)?
        };
        let (Some(_), Some(mut kept)) = (head, kept) else {
            // A stale claim: keep what is there.
            batch.effects.push(Effect::Release { seq: s.head.seq });
            self.commit(batch);
            return Ok(());
        };
        let target = kept.target;
        let key = key_hash(&self.shared.hasher, target, &kept.ordering_key);
        let now = match &s.outcome {
            ShapedOutcome::Attempt { attempt, .. } => attempt.at_ms + attempt.latency_ms,
            ShapedOutcome::Hold { .. } => crate::deliver::now_ms(),
        };
        for &seq in &s.superseded {
            let Some(mut rec) = self.delivery_rec(seq)? else {
                continue;
            };
            if rec.state != DeliveryState::Pending || seq == kept.seq {
                continue;
            }
            rec.state = DeliveryState::Superseded;
            rec.note = Some(format!("superseded by delivery #{}", kept.seq));
            rec.updated_ms = now;
            batch.remove(keys::pending(seq).as_slice());
            batch.ended(super::prune::EndedAs::Done, now, rec.event_id);
            batch.insert(keys::delivery(seq).as_slice(), to_json(&rec));
            batch.effects.push(Effect::Remove { target, key, seq });
            self.bump(&mut batch, target, -1, 0)?;
        }
        match s.outcome {
            ShapedOutcome::Attempt { attempt, next } => {
                self.finish_in(&mut batch, kept, attempt, next)?;
            }
            ShapedOutcome::Hold { due_ms, note } => {
                let seq = kept.seq;
                kept.due_ms = due_ms;
                kept.updated_ms = now;
                kept.note = Some(note);
                self.reschedule(&mut batch, seq, due_ms)?;
                batch.insert(keys::delivery(seq).as_slice(), to_json(&kept));
                batch.effects.push(Effect::Due {
                    target,
                    key,
                    seq,
                    due: due_ms,
                });
            }
        }
        if let Some(value) = s.key_state {
            key_state::with_finish(target, &s.head.ordering_key, value).into_batch(&mut batch);
        }
        self.commit(batch);
        Ok(())
    }
}
