//! The embedded store's delivery queue, in memory: per target, every ordering key's pending
//! deliveries in sequence order, and a ready index holding each key's head by due time.
//!
//! It is derived state. What is durable is the set of pending deliveries (the `P` keys: a
//! delivery's target, due time and ordering key), written with the log record that creates,
//! reschedules or ends a delivery; opening the store reads them and adds each one here. So the
//! queue needs no keys of its own in sled, and claiming reads no index from disk.
//!
//! The rules that keep per-key order:
//! - a key's deliveries are kept in sequence order, and only its first (its head) is ever
//!   claimable: the ready index holds heads only;
//! - while one delivery of a key is claimed ("in flight"), none of that key is: its entry
//!   leaves the ready index until the claim ends (finished or released);
//! - a retry changes the head's due time and keeps it first, so its followers wait behind it.
//!
//! Ordering keys are known here by a 64-bit hash with a per-process random seed. Two keys
//! whose hashes collide share one queue: they are then delivered one after the other, which
//! is slower but never out of order.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::store::{Seq, TargetId};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
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
}

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
            held.push(effect);
            return;
        }
        match effect {
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn add(q: &mut Queue, key: KeyHash, seq: Seq, due: u64) {
        q.apply(Effect::Add {
            target: 1,
            key,
            seq,
            pos: seq,
            due,
        });
    }

    fn claim(q: &mut Queue, now: u64) -> Option<Seq> {
        match q.claim(1, now) {
            Claimed::Due { seq, .. } => Some(seq),
            _ => None,
        }
    }

    fn done(q: &mut Queue, key: KeyHash, seq: Seq) {
        q.apply(Effect::Remove {
            target: 1,
            key,
            seq,
        });
    }

    /// Only a key's head is claimable, one at a time; a retry keeps it first; other keys go
    /// on meanwhile.
    #[test]
    fn a_key_waits_behind_its_head_and_only_behind_it() {
        let mut q = Queue::default();
        add(&mut q, 7, 1, 10);
        add(&mut q, 7, 2, 10);
        add(&mut q, 8, 3, 10);
        assert_eq!(q.pending(1), 3);
        assert_eq!(q.claim(1, 5), Claimed::Wait(10));
        assert_eq!(claim(&mut q, 10), Some(1));
        // Key 7 is in flight: its follower waits, key 8 goes.
        assert_eq!(claim(&mut q, 10), Some(3));
        assert_eq!(q.claim(1, 10), Claimed::Empty);
        // A retry of 1: due later, still first; 2 stays behind it.
        q.apply(Effect::Due {
            target: 1,
            key: 7,
            seq: 1,
            due: 50,
        });
        assert_eq!(q.claim(1, 20), Claimed::Wait(50));
        assert_eq!(claim(&mut q, 50), Some(1));
        done(&mut q, 7, 1);
        assert_eq!(claim(&mut q, 50), Some(2));
        done(&mut q, 7, 2);
        done(&mut q, 8, 3);
        assert_eq!(q.pending(1), 0);
        assert_eq!(q.claim(1, u64::MAX), Claimed::Empty);
        assert!(q.targets.get(&1).unwrap().keys.is_empty(), "empty keys go");
    }

    /// A released claim leaves its delivery first and claimable; a dead letter replayed goes
    /// to the back of its key's queue, whatever its seq; a store being opened adds its
    /// deliveries in any order and gets the same queue.
    #[test]
    fn release_and_replay_keep_the_order() {
        let mut q = Queue::default();
        add(&mut q, 7, 5, 0);
        add(&mut q, 7, 6, 0);
        assert_eq!(claim(&mut q, 0), Some(5));
        // 3, replayed while 5 is in flight, waits behind 6.
        q.apply(Effect::Add {
            target: 1,
            key: 7,
            seq: 3,
            pos: 10,
            due: 0,
        });
        assert_eq!(q.claim(1, 0), Claimed::Empty);
        assert_eq!(q.oldest(1), Some(3));
        q.release(5);
        assert_eq!(claim(&mut q, 0), Some(5));
        done(&mut q, 7, 5);
        assert_eq!(claim(&mut q, 0), Some(6));
        done(&mut q, 7, 6);
        assert_eq!(claim(&mut q, 0), Some(3));
        q.release(3);
        add(&mut q, 7, 4, 0);
        assert_eq!(claim(&mut q, 0), Some(4), "pos 4 before pos 10");
        done(&mut q, 7, 4);
        assert_eq!(claim(&mut q, 0), Some(3));
        add(&mut q, 7, 11, 0);
        assert_eq!(q.oldest(1), Some(3));
    }

    /// Building a queue at once gives the queue that adding the same deliveries one by one
    /// gives, whatever order they come in: a replayed delivery (a later place than its seq)
    /// behind the others of its key. Guards the builder's ordering (without its sort the
    /// replayed seq 2 came first).
    #[test]
    fn a_built_queue_is_the_queue_added_one_by_one() {
        let items = [
            (7, 1, 1, 0),
            (7, 2, 9, 0),
            (7, 3, 3, 0),
            (8, 4, 4, 5),
            (8, 5, 5, 1),
        ];
        let mut added = Queue::default();
        let mut builder = Builder::default();
        for &(key, seq, pos, due) in &items {
            added.apply(Effect::Add {
                target: 1,
                key,
                seq,
                pos,
                due,
            });
            builder.add(1, key, seq, pos, due);
        }
        let mut built = builder.build();
        assert_eq!(built.pending(1), 5);
        let drain = |q: &mut Queue| {
            let mut order = Vec::new();
            while let Claimed::Due { seq, key } = q.claim(1, u64::MAX) {
                order.push(seq);
                q.apply(Effect::Remove {
                    target: 1,
                    key,
                    seq,
                });
            }
            order
        };
        let order = drain(&mut added);
        assert_eq!(order, [1, 3, 2, 4, 5]);
        assert_eq!(drain(&mut built), order);
    }

    /// Guards the `shrink_to_fit` in `Builder::build`: a rebuilt key's queue keeps no spare
    /// room (without it, 1,025 deliveries sit in room for 2,048).
    #[test]
    fn a_built_queue_keeps_no_spare_room() {
        let mut builder = Builder::default();
        for seq in 1..=1025 {
            builder.add(1, 7, seq, seq, 0);
        }
        let built = builder.build();
        let items = &built.targets[&1].keys[&7].items;
        assert_eq!((items.len(), items.capacity()), (1025, 1025));
    }

    /// Changes made while the queue is read at opening are held and applied on top of what
    /// was read, in order. Guards the holding (without it the removal of 1 and the new 3 were
    /// lost with the half-built queue).
    #[test]
    fn changes_during_the_read_apply_after_it() {
        let mut q = Queue::loading();
        add(&mut q, 7, 3, 0);
        done(&mut q, 7, 1);
        let mut read = Builder::default();
        read.add(1, 7, 1, 1, 0);
        read.add(1, 7, 2, 2, 0);
        q.loaded(read.build());
        assert_eq!(q.pending(1), 2);
        assert_eq!(claim(&mut q, 0), Some(2));
        done(&mut q, 7, 2);
        assert_eq!(claim(&mut q, 0), Some(3));
    }

    /// A probe takes heads in turn by seq, whatever their due times, and wraps around.
    #[test]
    fn probes_go_round_the_heads() {
        let mut q = Queue::default();
        add(&mut q, 1, 10, 500);
        add(&mut q, 2, 20, 100);
        add(&mut q, 3, 30, 900);
        let mut after = 0;
        let mut order = Vec::new();
        for _ in 0..4 {
            let Claimed::Due { seq, .. } = q.claim_after(1, after) else {
                panic!()
            };
            order.push(seq);
            q.release(seq);
            after = seq;
        }
        assert_eq!(order, [10, 20, 30, 10]);
        assert_eq!(claim(&mut q, 1_000), Some(20), "by due time otherwise");
        assert_eq!(q.claim_after(1, 20), Claimed::Due { seq: 30, key: 3 });
    }

    #[derive(Debug, Clone)]
    enum Step {
        Add(u8),
        Claim(u8),
        Retry(u8, u8),
        Finish(u8),
        Release(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4u8).prop_map(Step::Add),
            (0..20u8).prop_map(Step::Claim),
            (0..8u8, 0..20u8).prop_map(|(i, d)| Step::Retry(i, d)),
            (0..8u8).prop_map(Step::Finish),
            (0..8u8).prop_map(Step::Release),
        ]
    }

    proptest! {
        /// Against a plain model (every pending delivery with its key and due time, and the
        /// set in flight): a claim returns exactly the first by (due, seq) among heads of keys
        /// with nothing in flight, and no key ever has two deliveries in flight.
        #[test]
        fn claims_match_the_model(steps in proptest::collection::vec(step(), 1..200)) {
            let mut q = Queue::default();
            // seq -> (key, due)
            let mut model: std::collections::BTreeMap<Seq, (KeyHash, u64)> = Default::default();
            let mut flying: Vec<Seq> = Vec::new();
            let mut next = 1;
            for s in steps {
                match s {
                    Step::Add(key) => {
                        let key = u64::from(key);
                        model.insert(next, (key, 0));
                        add(&mut q, key, next, 0);
                        next += 1;
                    }
                    Step::Claim(now) => {
                        let now = u64::from(now);
                        let busy: Vec<KeyHash> = flying.iter().map(|s| model[s].0).collect();
                        let mut heads: std::collections::BTreeMap<KeyHash, (Seq, u64)> = Default::default();
                        for (seq, (key, due)) in &model {
                            heads.entry(*key).or_insert((*seq, *due));
                        }
                        let want = heads
                            .iter()
                            .filter(|(k, _)| !busy.contains(k))
                            .map(|(_, (s, d))| (*d, *s))
                            .min();
                        let got = q.claim(1, now);
                        match want {
                            None => prop_assert_eq!(got, Claimed::Empty),
                            Some((due, _)) if due > now => prop_assert_eq!(got, Claimed::Wait(due)),
                            Some((_, seq)) => {
                                prop_assert_eq!(got, Claimed::Due { seq, key: model[&seq].0 });
                                flying.push(seq);
                            }
                        }
                    }
                    Step::Retry(i, due) => {
                        if let Some(&seq) = flying.get(usize::from(i)) {
                            flying.retain(|s| *s != seq);
                            let entry = model.get_mut(&seq).unwrap();
                            entry.1 = u64::from(due);
                            q.apply(Effect::Due { target: 1, key: entry.0, seq, due: u64::from(due) });
                        }
                    }
                    Step::Finish(i) => {
                        if let Some(&seq) = flying.get(usize::from(i)) {
                            flying.retain(|s| *s != seq);
                            let (key, _) = model.remove(&seq).unwrap();
                            done(&mut q, key, seq);
                        }
                    }
                    Step::Release(i) => {
                        if let Some(&seq) = flying.get(usize::from(i)) {
                            flying.retain(|s| *s != seq);
                            q.release(seq);
                        }
                    }
                }
                prop_assert_eq!(q.pending(1), model.len() as u64);
                let mut keys: Vec<KeyHash> = flying.iter().map(|s| model[s].0).collect();
                keys.sort();
                keys.dedup();
                prop_assert_eq!(keys.len(), flying.len(), "two in flight for one key");
            }
        }
    }
}
