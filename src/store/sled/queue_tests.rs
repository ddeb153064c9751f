//! The in-memory delivery queue's own tests (order, claims, the rebuild, kept records).

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
    let order = added.drain(1);
    assert_eq!(order, [1, 3, 2, 4, 5]);
    assert_eq!(built.drain(1), order);
}

fn remember(q: &mut Queue, seq: Seq) {
    let record = Delivery::new(seq, uuid::Uuid::nil(), 1, "k".into(), 0);
    q.apply(Effect::Remember(Box::new(record)));
    add(q, 7, seq, 0);
}

/// A new delivery's kept record goes when the delivery changes before a claim took it (a
/// retry or a hold moves it, an end removes it), and the oldest goes past `FRESH_MAX`.
/// Guards the dropping (without it the record of 1 outlives its `Due`, 2's its `Remove`)
/// and the bound (without it all `FRESH_MAX + 3` stay).
#[test]
fn a_kept_record_goes_when_its_delivery_changes_and_past_the_bound() {
    let mut q = Queue::default();
    remember(&mut q, 1);
    remember(&mut q, 2);
    remember(&mut q, 3);
    q.apply(Effect::Due {
        target: 1,
        key: 7,
        seq: 1,
        due: 50,
    });
    q.apply(Effect::Remove {
        target: 1,
        key: 7,
        seq: 2,
    });
    q.apply(Effect::Release { seq: 3 });
    assert_eq!(q.fresh(1), None);
    assert_eq!(q.fresh(2), None);
    assert_eq!(q.take_fresh(3).map(|d| d.seq), Some(3));
    assert_eq!(q.take_fresh(3), None);

    for seq in 10..10 + FRESH_MAX as u64 + 3 {
        remember(&mut q, seq);
    }
    assert_eq!(q.fresh.len(), FRESH_MAX);
    assert!(q.fresh(12).is_none() && q.fresh(13).is_some());
}

/// Guards what a queue holds while the store is read at opening: the changes, but not the
/// records a writer offers to keep (without the filter, the queue holds all three and keeps
/// them once loaded).
#[test]
fn a_loading_queue_holds_no_records() {
    let mut q = Queue::loading();
    for seq in 1..=3 {
        remember(&mut q, seq);
    }
    assert_eq!(q.loading.as_ref().map(Vec::len), Some(3), "the three adds");
    q.loaded(Queue::default());
    assert!(q.fresh.is_empty());
    assert_eq!(q.claim(1, u64::MAX), Claimed::Due { seq: 1, key: 7 });
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
