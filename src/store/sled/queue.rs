//! The embedded store's delivery queue, in memory: per target, every ordering key's pending
//! deliveries in sequence order, and a ready index holding each key's head by due time.
//!
//! It is derived state. What is durable is the set of pending deliveries (the `P` keys: a
//! delivery's target, due time and ordering key; in sled, most of them packed, see `packs`),
//! written with the log record that creates, reschedules or ends a delivery; opening the store
//! reads them and adds each one here. So the queue needs no keys of its own in sled, and
//! claiming reads no index from disk.
//!
//! The rules that keep per-key order:
//! - a key's deliveries are kept in sequence order, and only its first (its head) is ever
//!   claimable: the ready index holds heads only;
//! - while one delivery of a key is claimed ("in flight"), none of that key is: its entry
//!   leaves the ready index until the claim ends (finished or released);
//! - a retry changes the head's due time and keeps it first, so its followers wait behind it.
//!
//! The queue also keeps the records of the newest deliveries not yet claimed (at most
//! [`FRESH_MAX`]), as the writer made them: a new delivery's first claim then takes its record
//! from here instead of reading its pending key back from the memtables (3 % of the async
//! threads' time with one target). Under a backlog longer than that the records are gone by
//! the claim, which then reads sled as before. Any change of the delivery before its claim (a
//! hold, its end) drops its record, so what a claim takes is what the store holds.
//!
//! Ordering keys are known here by a 64-bit hash with a per-process random seed. Two keys
//! whose hashes collide share one queue: they are then delivered one after the other, which
//! is slower but never out of order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::store::{Delivery, Seq, TargetId};

/// An ordering key as the queue knows it.
pub type KeyHash = u64;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The head `seq` of key `key` is now in flight.
    Due {
        seq: Seq,
        key: KeyHash,
    },
    /// Nothing is due; the earliest head falls due then.
    Wait(u64),
    Empty,
}

/// A change the store makes to the queue once the log record that causes it is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The record of a new delivery, as its pending key holds it: comes just before the
    /// delivery's `Add`, and is kept for its first claim (see the module docs).
    Remember(Box<Delivery>),
    /// A pending delivery: new, or a dead letter replayed. It goes where `pos` puts it in
    /// its key's queue: a new one's `pos` is its seq, a replayed one's a number given out at
    /// the replay, so it goes to the back, behind what was already waiting.
    Add {
        target: TargetId,
        key: KeyHash,
        seq: Seq,
        pos: u64,
        due: u64,
    },
    /// A retry: the delivery stays where it is in its key's order, due later; its claim ends.
    Due {
        target: TargetId,
        key: KeyHash,
        seq: Seq,
        due: u64,
    },
    /// The delivery ended (delivered, dead, skipped) or was found unusable; its claim ends.
    Remove {
        target: TargetId,
        key: KeyHash,
        seq: Seq,
    },
    /// The claim on `seq` ends with nothing changed (an outcome that was no longer needed).
    Release { seq: Seq },
}

/// The queue's name for an ordering key of a target (see the module docs).
pub fn key_hash(
    hasher: &std::collections::hash_map::RandomState,
    target: TargetId,
    key: &str,
) -> KeyHash {
    hasher.hash_one((target, key))
}

#[derive(Default)]
pub struct Queue {
    targets: HashMap<TargetId, TargetQueue>,
    /// Deliveries in flight and where they are.
    leases: HashMap<Seq, (TargetId, KeyHash)>,
    /// While the pending deliveries are read at opening: the changes made meanwhile, in order,
    /// applied on top of what was read once it is complete (see [`Queue::loaded`]).
    loading: Option<Vec<Effect>>,
    /// New deliveries' records by seq, for their first claim (see the module docs). Seqs are
    /// given out in order, so the first is the oldest.
    fresh: BTreeMap<Seq, Delivery>,
}

/// The most new deliveries' records the queue keeps: about 4 MB. Past it the oldest go, and
/// their claims read the store.
pub const FRESH_MAX: usize = 16_384;

#[derive(Default)]
struct TargetQueue {
    keys: HashMap<KeyHash, KeyQueue>,
    /// (due, seq, key) of every key's head, for keys with nothing in flight.
    ready: BTreeSet<(u64, Seq, KeyHash)>,
    pending: u64,
}

#[derive(Default)]
struct KeyQueue {
    /// In order.
    items: VecDeque<Item>,
    in_flight: Option<Seq>,
}

impl KeyQueue {
    /// The entry this key has in the ready index, if any.
    fn ready(&self) -> Option<(Seq, u64)> {
        match self.in_flight {
            Some(_) => None,
            None => self.items.front().map(|&(_, seq, due)| (seq, due)),
        }
    }
}

impl Queue {
    /// Runs `change` on one key's queue and keeps the ready index and the counts in step.
    fn update<R>(
        &mut self,
        target: TargetId,
        key: KeyHash,
        change: impl FnOnce(&mut KeyQueue) -> R,
    ) -> R {
        let t = self.targets.entry(target).or_default();
        let k = t.keys.entry(key).or_default();
        let (before, len) = (k.ready(), k.items.len());
        let result = change(k);
        let after = k.ready();
        if before != after {
            if let Some((seq, due)) = before {
                t.ready.remove(&(due, seq, key));
            }
            if let Some((seq, due)) = after {
                t.ready.insert((due, seq, key));
            }
        }
        t.pending = t.pending + k.items.len() as u64 - len as u64;
        if k.items.is_empty() && k.in_flight.is_none() {
            t.keys.remove(&key);
        }
        result
    }

    /// A queue whose pending deliveries are still being read: it takes changes (held until
    /// [`Queue::loaded`]) and must not be claimed from.
    pub fn loading() -> Queue {
        Queue {
            loading: Some(Vec::new()),
            ..Queue::default()
        }
    }

    /// Becomes `read` (the pending deliveries as of opening) with the changes made since
    /// applied on top, in order. Each change sets a delivery's place or removes it, so applying
    /// one that `read` already shows changes nothing.
    pub fn loaded(&mut self, mut read: Queue) {
        for effect in self.loading.take().unwrap_or_default() {
            read.apply(effect);
        }
        *self = read;
    }

    pub fn apply(&mut self, effect: Effect) {
        if let Some(held) = &mut self.loading {
            // A kept record only saves a claim a read, and the store is read at opening while
            // every ingest goes on: holding one per new delivery until then would be memory
            // for a bound's worth at most. Those deliveries' first claims read the store.
            if !matches!(effect, Effect::Remember(_)) {
                held.push(effect);
            }
            return;
        }
        // A delivery changed is no longer as its kept record says. (Its `Add` comes right
        // after the record; a replayed one's record was taken by its first claim.)
        if let Effect::Due { seq, .. } | Effect::Remove { seq, .. } = &effect {
            self.fresh.remove(seq);
        }
        match effect {
            Effect::Remember(record) => {
                self.fresh.insert(record.seq, *record);
                if self.fresh.len() > FRESH_MAX {
                    self.fresh.pop_first();
                }
            }
            Effect::Add {
                target,
                key,
                seq,
                pos,
                due,
            } => self.update(target, key, |k| {
                // Usually the last (only a store being opened adds them out of order).
                if let Some(at) = k.items.iter().position(|(_, s, _)| *s == seq) {
                    k.items.remove(at);
                }
                let at = k.items.partition_point(|&(p, s, _)| (p, s) < (pos, seq));
                k.items.insert(at, (pos, seq, due));
            }),
            Effect::Due {
                target,
                key,
                seq,
                due,
            } => {
                self.leases.remove(&seq);
                self.update(target, key, |k| {
                    if let Some(item) = k.items.iter_mut().find(|(_, s, _)| *s == seq) {
                        item.2 = due;
                    }
                    if k.in_flight == Some(seq) {
                        k.in_flight = None;
                    }
                })
            }
            Effect::Remove { target, key, seq } => {
                self.leases.remove(&seq);
                self.update(target, key, |k| {
                    if let Some(at) = k.items.iter().position(|(_, s, _)| *s == seq) {
                        k.items.remove(at);
                    }
                    if k.in_flight == Some(seq) {
                        k.in_flight = None;
                    }
                })
            }
            Effect::Release { seq } => self.release(seq),
        }
    }

    /// Takes the first head of `target` due by `now_ms` that is not in flight, and puts it in
    /// flight. `now_ms = u64::MAX` takes the earliest whatever its due time (a probe).
    pub fn claim(&mut self, target: TargetId, now_ms: u64) -> Claimed {
        let Some(&(due, seq, key)) = self.targets.get(&target).and_then(|t| t.ready.first()) else {
            return Claimed::Empty;
        };
        if due > now_ms {
            return Claimed::Wait(due);
        }
        self.update(target, key, |k| k.in_flight = Some(seq));
        self.leases.insert(seq, (target, key));
        Claimed::Due { seq, key }
    }

    /// Takes the head of `target` with the smallest seq after `after`, or else the smallest,
    /// whatever its due time, and puts it in flight (a suspended target's probe going round
    /// its keys). Reads every head of the target.
    pub fn claim_after(&mut self, target: TargetId, after: Seq) -> Claimed {
        let Some(t) = self.targets.get(&target) else {
            return Claimed::Empty;
        };
        let pick = |later: bool| {
            t.ready
                .iter()
                .filter(|(_, seq, _)| !later || *seq > after)
                .min_by_key(|(_, seq, _)| *seq)
                .copied()
        };
        let Some((_, seq, key)) = pick(true).or_else(|| pick(false)) else {
            return Claimed::Empty;
        };
        self.update(target, key, |k| k.in_flight = Some(seq));
        self.leases.insert(seq, (target, key));
        Claimed::Due { seq, key }
    }

    /// The record of `seq` as the writer made it, if it is a new delivery claimed for the
    /// first time and still kept (see the module docs).
    pub fn take_fresh(&mut self, seq: Seq) -> Option<Delivery> {
        self.fresh.remove(&seq)
    }

    #[cfg(test)]
    pub fn fresh(&self, seq: Seq) -> Option<&Delivery> {
        self.fresh.get(&seq)
    }

    /// Claims and ends every delivery of `target`, in the order claims take them.
    #[cfg(test)]
    pub fn drain(&mut self, target: TargetId) -> Vec<Seq> {
        let mut order = Vec::new();
        while let Claimed::Due { seq, key } = self.claim(target, u64::MAX) {
            order.push(seq);
            self.apply(Effect::Remove { target, key, seq });
        }
        order
    }

    /// Ends the claim on `seq` with nothing changed: the key's head is claimable again.
    pub fn release(&mut self, seq: Seq) {
        if let Some((target, key)) = self.leases.remove(&seq) {
            self.update(target, key, |k| {
                if k.in_flight == Some(seq) {
                    k.in_flight = None;
                }
            });
        }
    }

    /// The first `limit` pending deliveries of one key, in order (traffic shaping reads a
    /// claimed head's backlog).
    pub fn key_seqs(&self, target: TargetId, key: KeyHash, limit: usize) -> Vec<Seq> {
        self.targets
            .get(&target)
            .and_then(|t| t.keys.get(&key))
            .map(|k| k.items.iter().take(limit).map(|&(_, s, _)| s).collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub fn pending(&self, target: TargetId) -> u64 {
        self.targets.get(&target).map_or(0, |t| t.pending)
    }

    /// The oldest pending delivery of `target`, by seq. Reads every pending delivery of the
    /// target (a key's head is not always its oldest: a replayed one waits at the back).
    pub fn oldest(&self, target: TargetId) -> Option<Seq> {
        let t = self.targets.get(&target)?;
        t.keys
            .values()
            .flat_map(|k| k.items.iter().map(|(_, s, _)| *s))
            .min()
    }
}

/// Builds a queue from every pending delivery at once (opening reads a million of them):
/// each key's deliveries are collected and ordered once, instead of each being placed in turn.
#[derive(Default)]
pub struct Builder {
    keys: HashMap<(TargetId, KeyHash), Vec<Item>>,
}

/// A key's queued delivery: (pos, seq, due).
type Item = (u64, Seq, u64);

impl Builder {
    /// A pending delivery; each seq once.
    pub fn add(&mut self, target: TargetId, key: KeyHash, seq: Seq, pos: u64, due: u64) {
        self.keys
            .entry((target, key))
            .or_default()
            .push((pos, seq, due));
    }

    /// Adds what `other` read (a later slice of the seqs) after what this one holds.
    pub fn merge(&mut self, other: Builder) {
        for (key, items) in other.keys {
            let held = self.keys.entry(key).or_default();
            if held.is_empty() {
                *held = items;
            } else {
                held.extend(items);
            }
        }
    }

    pub fn build(self) -> Queue {
        let mut queue = Queue::default();
        for ((target, key), mut items) in self.keys {
            if !items.is_sorted_by_key(|&(p, s, _)| (p, s)) {
                items.sort_unstable_by_key(|&(p, s, _)| (p, s));
            }
            // The vector grew by doubling while the store was read: up to half of it is
            // spare: 21 of 49 MB with 1.16 million pending on a thousand keys (heaptrack).
            items.shrink_to_fit();
            let t = queue.targets.entry(target).or_default();
            let &(_, seq, due) = items.first().expect("a key has a delivery");
            t.ready.insert((due, seq, key));
            t.pending += items.len() as u64;
            t.keys.insert(
                key,
                KeyQueue {
                    items: items.into(),
                    in_flight: None,
                },
            );
        }
        queue
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
