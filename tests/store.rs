//! The store contract: the invariants delivery relies on, through the `Store` trait, run
//! against both backends: sled on a real directory and PostgreSQL on a real server (a fresh
//! database per test; the server is started if none is configured, see
//! `common::test_database_url`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::tempdir;
use hookrelay::normalize::Event;
use hookrelay::store::{
    AnyStore, Attempt, Claim, EventOutcome, EventQuery, EventStatus, IngestBatch, NewDelivery,
    NewEvent, Next, PgOptions, PgStore, SledStore, Store,
};

/// Where a test's store lives; `open` may be called again to reopen it.
enum Fixture {
    Sled(tempfile::TempDir),
    Postgres(String),
}

impl Fixture {
    fn sled() -> Fixture {
        Fixture::Sled(tempdir())
    }

    async fn postgres() -> Fixture {
        Fixture::Postgres(common::fresh_database().await)
    }

    async fn open(&self) -> AnyStore {
        match self {
            Fixture::Sled(dir) => AnyStore::Sled(SledStore::open(dir.path()).unwrap()),
            Fixture::Postgres(url) => AnyStore::Postgres(
                PgStore::open(&PgOptions {
                    url: url.clone(),
                    pool_size: 8,
                    lease: std::time::Duration::from_secs(60),
                    instance: "contract".into(),
                })
                .await
                .unwrap(),
            ),
        }
    }
}

/// Each case once per backend: `sled::case` and `postgres::case`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sled {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::Fixture::sled()).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::Fixture::postgres().await).await
            })*
        }
    };
}

contract!(
    concurrent_ingests_keep_per_key_order,
    a_key_behind_a_pending_head_is_never_claimable,
    a_stale_finish_is_ignored,
    reopening_keeps_ids_sequences_and_leases_nothing,
    sequence_numbers_are_not_given_out_again_after_everything_is_pruned,
    dedup_keys_expire_after_their_window,
    pruning_removes_finished_events_and_expired_dedup_keys_only,
    operator_views_replay_and_redeliver,
    the_event_log_pages_newest_first_filters_and_keeps_to_its_budget,
    key_state_is_written_with_its_finish_only,
    coalescing_supersedes_a_keys_backlog_in_one_write,
    rate_limits_and_throttled_retries,
);

fn event(monitor: &str, n: usize) -> Event {
    common::statusgator_event(monitor, n)
}

fn batch(events: &[Event], targets: &[u32], now_ms: u64) -> IngestBatch {
    IngestBatch {
        events: events
            .iter()
            .map(|e| {
                let deliveries = targets
                    .iter()
                    .map(|t| NewDelivery {
                        target: *t,
                        ordering_key: e.alert["entity_id"].clone(),
                    })
                    .collect();
                NewEvent::new(e, deliveries).unwrap()
            })
            .collect(),
        now_ms,
        dedup_until_ms: now_ms + 1_000_000,
    }
}

fn attempt(number: u32) -> Attempt {
    Attempt {
        number,
        at_ms: 1,
        latency_ms: 0,
        status: Some(200),
        error: None,
        response_excerpt: None,
    }
}

/// Ingests of different keys run at once; each key's ingests follow one another, as a sender
/// that waits for each acknowledgement sends them. Order is promised between acknowledged
/// ingests and the ones sent after them: concurrent ingests of one key have no order to keep
/// (with PostgreSQL their sequence numbers may even commit out of order).
async fn concurrent_ingests_keep_per_key_order(fx: Fixture) {
    let store = Arc::new(fx.open().await);
    let ids = store.target_ids(&["a".into(), "b".into()]).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let store = store.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..50 {
                let e = event(&format!("m{k}"), k * 100 + n);
                let out = store
                    .ingest(batch(std::slice::from_ref(&e), &ids, 1_000))
                    .await;
                assert_eq!(out.unwrap(), [EventOutcome::Stored]);
                acked.push(uuid::Uuid::parse_str(&e.id).unwrap());
            }
            (format!("m{k}"), acked)
        }));
    }
    let mut acked: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for t in tasks {
        let (key, ids) = t.await.unwrap();
        acked.insert(key, ids);
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.events, stats.pending), (400, 800));

    // Drain target a: each key's deliveries come out in the order they were acknowledged.
    let mut order: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    let mut drained = 0;
    loop {
        match store.claim(ids[0], 2_000).await.unwrap() {
            Claim::Due(d) => {
                order
                    .entry(d.ordering_key.clone())
                    .or_default()
                    .push(d.event_id);
                store.finish(&d, attempt(1), Next::Done).await.unwrap();
                drained += 1;
            }
            Claim::Wait(_) => panic!("everything is due"),
            Claim::Empty => break,
        }
    }
    assert_eq!(drained, 400);
    assert_eq!(order, acked);
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.done, stats.pending),
        (400, 400),
        "target b untouched"
    );
    store.close().await.unwrap();
}

async fn a_key_behind_a_pending_head_is_never_claimable(fx: Fixture) {
    let store = fx.open().await;
    let t = store.target_ids(&["t".into()]).await.unwrap()[0];
    let events = [event("A", 1), event("A", 2), event("B", 3)];
    store.ingest(batch(&events, &[t], 1_000)).await.unwrap();

    let Claim::Due(a1) = store.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    let Claim::Due(b1) = store.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        (a1.ordering_key.as_str(), b1.ordering_key.as_str()),
        ("A", "B")
    );
    assert!(
        matches!(store.claim(t, 1_000).await.unwrap(), Claim::Empty),
        "A-2 waits behind leased A-1"
    );

    // A-1 fails and is rescheduled: A-2 still waits, and the wait ends at A-1's due time.
    store
        .finish(&a1, attempt(1), Next::Retry { due_ms: 5_000 })
        .await
        .unwrap();
    store.finish(&b1, attempt(1), Next::Done).await.unwrap();
    match store.claim(t, 1_000).await.unwrap() {
        Claim::Wait(due) => assert_eq!(due, 5_000),
        other => panic!("{other:?}"),
    }
    let Claim::Due(again) = store.claim(t, 5_000).await.unwrap() else {
        panic!()
    };
    assert_eq!((again.seq, again.attempts), (a1.seq, 1));
    store.finish(&again, attempt(2), Next::Dead).await.unwrap();
    let Claim::Due(a2) = store.claim(t, 5_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(a2.seq, a1.seq + 1, "a dead head lets its follower go");
    assert_eq!(store.dead_letters(t).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

async fn a_stale_finish_is_ignored(fx: Fixture) {
    let store = fx.open().await;
    let t = store.target_ids(&["t".into()]).await.unwrap()[0];
    store
        .ingest(batch(&[event("A", 1)], &[t], 1_000))
        .await
        .unwrap();
    let Claim::Due(d) = store.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    store
        .finish(&d, attempt(1), Next::Retry { due_ms: 2_000 })
        .await
        .unwrap();
    // The same claim reported again (e.g. after a lost reply) must not undo the retry.
    store.finish(&d, attempt(1), Next::Done).await.unwrap();
    let now = store.delivery(d.seq).await.unwrap().unwrap();
    assert_eq!((now.due_ms, now.attempts), (2_000, 1));
    assert_eq!(store.attempts(d.seq).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

/// A key's state value (the `statushub` target's incident record) is written in the same
/// atomic write as a finish, and only when that finish applies; it is per target and key, a
/// `None` deletes it, and it survives a reopen. Fails when a backend writes it apart from the
/// finish's stale check, or drops it.
async fn key_state_is_written_with_its_finish_only(fx: Fixture) {
    let v = |s: &str| Some(s.as_bytes().to_vec());
    let t = {
        let store = fx.open().await;
        let t = store.target_ids(&["t".into(), "u".into()]).await.unwrap();
        store
            .ingest(batch(&[event("A", 1), event("A", 2)], &t, 1_000))
            .await
            .unwrap();
        assert_eq!(store.key_state(t[0], "A").await.unwrap(), None);
        let Claim::Due(d) = store.claim(t[0], 1_000).await.unwrap() else {
            panic!()
        };
        store
            .finish_with_key_state(&d, attempt(1), Next::Done, v("open"))
            .await
            .unwrap();
        assert_eq!(store.key_state(t[0], "A").await.unwrap(), v("open"));
        assert_eq!(
            store.key_state(t[1], "A").await.unwrap(),
            None,
            "per target"
        );
        assert_eq!(store.key_state(t[0], "B").await.unwrap(), None, "per key");
        // The same claim reported again does not apply: neither does its value.
        store
            .finish_with_key_state(&d, attempt(1), Next::Done, v("stale"))
            .await
            .unwrap();
        assert_eq!(store.key_state(t[0], "A").await.unwrap(), v("open"));
        let Claim::Due(next) = store.claim(t[0], 1_000).await.unwrap() else {
            panic!()
        };
        assert_ne!(next.seq, d.seq, "the key's next delivery");
        store
            .finish_with_key_state(&next, attempt(1), Next::Skipped, None)
            .await
            .unwrap();
        assert_eq!(store.key_state(t[0], "A").await.unwrap(), None, "deleted");
        let Claim::Due(other) = store.claim(t[1], 1_000).await.unwrap() else {
            panic!()
        };
        store
            .finish_with_key_state(&other, attempt(1), Next::Dead, v("kept"))
            .await
            .unwrap();
        store.close().await.unwrap();
        t
    };
    let store = fx.open().await;
    assert_eq!(store.key_state(t[1], "A").await.unwrap(), v("kept"));
    assert_eq!(store.key_state(t[0], "A").await.unwrap(), None);
    store.close().await.unwrap();
}

async fn reopening_keeps_ids_sequences_and_leases_nothing(fx: Fixture) {
    let (t, first_seq) = {
        let store = fx.open().await;
        let t = store.target_ids(&["x".into(), "y".into()]).await.unwrap();
        store
            .ingest(batch(&[event("A", 1), event("A", 2)], &[t[1]], 1_000))
            .await
            .unwrap();
        let Claim::Due(d) = store.claim(t[1], 1_000).await.unwrap() else {
            panic!()
        };
        // Claimed but never finished: a crash here leaves it due again.
        store.close().await.unwrap();
        (t, d.seq)
    };
    let store = fx.open().await;
    assert_eq!(
        store
            .target_ids(&["y".into(), "z".into(), "x".into()])
            .await
            .unwrap(),
        [t[1], 3, t[0]]
    );
    let Claim::Due(d) = store.claim(t[1], 1_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(d.seq, first_seq, "the unfinished claim is due again");
    let b = event("B", 3);
    store
        .ingest(batch(std::slice::from_ref(&b), &[t[1]], 1_000))
        .await
        .unwrap();
    let ds = store
        .deliveries_of(uuid::Uuid::parse_str(&b.id).unwrap())
        .await
        .unwrap();
    assert_eq!(
        ds[0].seq,
        first_seq + 2,
        "sequence numbers continue after a reopen"
    );
    store.close().await.unwrap();
}

/// A delivery id names one delivery for good (receivers deduplicate on it), so pruning every
/// record and reopening must not start the numbering again.
async fn sequence_numbers_are_not_given_out_again_after_everything_is_pruned(fx: Fixture) {
    let (t, last) = {
        let store = fx.open().await;
        let t = store.target_ids(&["t".into()]).await.unwrap()[0];
        store
            .ingest(batch(&[event("A", 1), event("B", 2)], &[t], 1_000))
            .await
            .unwrap();
        let mut last = 0;
        while let Claim::Due(d) = store.claim(t, 1_000).await.unwrap() {
            last = last.max(d.seq);
            store.finish(&d, attempt(1), Next::Done).await.unwrap();
        }
        let pruned = store.prune(prune_all_finished()).await.unwrap();
        assert_eq!(pruned.events, 2);
        assert_eq!(store.stats().await.unwrap().events, 0);
        store.close().await.unwrap();
        (t, last)
    };
    let store = fx.open().await;
    let c = event("C", 3);
    store
        .ingest(batch(std::slice::from_ref(&c), &[t], 2_000))
        .await
        .unwrap();
    let ds = store
        .deliveries_of(uuid::Uuid::parse_str(&c.id).unwrap())
        .await
        .unwrap();
    assert_eq!(ds[0].seq, last + 1);
    store.close().await.unwrap();
}

async fn dedup_keys_expire_after_their_window(fx: Fixture) {
    let store = fx.open().await;
    let e = event("A", 1);
    let mut b = batch(std::slice::from_ref(&e), &[], 1_000);
    b.dedup_until_ms = 2_000;
    assert_eq!(store.ingest(b).await.unwrap(), [EventOutcome::Stored]);
    let again = |now| batch(std::slice::from_ref(&e), &[], now);
    assert_eq!(
        store.ingest(again(1_999)).await.unwrap(),
        [EventOutcome::Duplicate]
    );
    assert_eq!(
        store.ingest(again(2_001)).await.unwrap(),
        [EventOutcome::Stored]
    );
    // Two copies inside one request: the second is the duplicate.
    let twice = IngestBatch {
        events: vec![
            NewEvent::new(&event("C", 9), vec![]).unwrap(),
            NewEvent::new(&event("C", 9), vec![]).unwrap(),
        ],
        now_ms: 3_000,
        dedup_until_ms: 9_000,
    };
    assert_eq!(
        store.ingest(twice).await.unwrap(),
        [EventOutcome::Stored, EventOutcome::Duplicate]
    );
    store.close().await.unwrap();
}

async fn pruning_removes_finished_events_and_expired_dedup_keys_only(fx: Fixture) {
    use hookrelay::store::{DeliveryState, Prune};
    let store = fx.open().await;
    let t = store.target_ids(&["t".into()]).await.unwrap()[0];
    let events = [event("done", 1), event("dead", 2), event("pending", 3)];
    let mut b = batch(&events, &[t], 1_000);
    b.dedup_until_ms = 5_000;
    store.ingest(b).await.unwrap();
    for (n, next) in [(0, Next::Done), (1, Next::Dead)] {
        let Claim::Due(d) = store.claim(t, 1_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(d.ordering_key, events[n].alert["entity_id"]);
        store.finish(&d, attempt(1), next).await.unwrap();
    }
    assert_eq!(store.counts(t).await.unwrap().dead, 1);
    let id = |e: &Event| uuid::Uuid::parse_str(&e.id).unwrap();
    let far = u64::MAX / 2;

    // Dead letters kept longer than delivered events; pending ones are never touched.
    let p = store
        .prune(Prune {
            done_before_ms: far,
            dead_before_ms: 0,
            now_ms: 4_000,
            max_events: 100,
        })
        .await
        .unwrap();
    assert_eq!((p.events, p.dedup_keys, p.more), (1, 0, false));
    assert!(store.event(id(&events[0])).await.unwrap().is_none());
    assert!(store
        .deliveries_of(id(&events[0]))
        .await
        .unwrap()
        .is_empty());
    assert!(store.event(id(&events[1])).await.unwrap().is_some());
    assert!(store.event(id(&events[2])).await.unwrap().is_some());

    let p = store
        .prune(Prune {
            done_before_ms: far,
            dead_before_ms: far,
            now_ms: 6_000,
            max_events: 100,
        })
        .await
        .unwrap();
    assert_eq!(
        (p.events, p.dedup_keys),
        (1, 3),
        "the dead letter, and all three dedup keys that expired at 5,000"
    );
    assert_eq!(
        store.counts(t).await.unwrap(),
        hookrelay::store::TargetCounts {
            pending: 1,
            dead: 0
        }
    );
    assert!(store.dead_letters(t).await.unwrap().is_empty());
    let pending = store.deliveries_of(id(&events[2])).await.unwrap();
    assert_eq!(pending[0].state, DeliveryState::Pending);

    // Bounded steps resume where they stopped.
    let more: Vec<Event> = (0..5).map(|i| event(&format!("x{i}"), 10 + i)).collect();
    store.ingest(batch(&more, &[], 7_000)).await.unwrap();
    let step = Prune {
        done_before_ms: far,
        dead_before_ms: far,
        now_ms: 6_000,
        max_events: 2,
    };
    let mut total = 0;
    for _ in 0..10 {
        let p = store.prune(step).await.unwrap();
        assert!(p.events <= 2, "at most max_events per call");
        total += p.events;
        if !p.more {
            break;
        }
    }
    assert_eq!(total, 5, "events with no deliveries are finished");
    store.close().await.unwrap();
}

/// What operators read and do: counts, oldest pending, pages of events, dead letters in a
/// window, replay into the key's queue, redelivery, and target state.
async fn operator_views_replay_and_redeliver(fx: Fixture) {
    use hookrelay::store::{DeliveryState, TargetCounts, TargetMode, TargetState};
    let store = fx.open().await;
    let t = store.target_ids(&["t".into()]).await.unwrap()[0];
    let events = [event("A", 1), event("A", 2), event("B", 3)];
    store.ingest(batch(&events, &[t], 1_000)).await.unwrap();
    assert_eq!(
        store.counts(t).await.unwrap(),
        TargetCounts {
            pending: 3,
            dead: 0
        }
    );
    assert_eq!(store.oldest_pending_ms(t).await.unwrap(), Some(1_000));

    // Events page in time order.
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let page = store.events_page(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[..2]
    );
    let after = uuid::Uuid::parse_str(&ids[1]).unwrap();
    let rest = store.events_page(Some(after), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, ids[2]);
    assert_eq!(
        rest[0].raw.body, events[2].raw.body,
        "raw body kept byte for byte"
    );

    // A-1 dies at 2,000; B dies at 3,000.
    let Claim::Due(a1) = store.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    let Claim::Due(b) = store.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    let dead_at = |at_ms| Attempt {
        number: 1,
        at_ms,
        latency_ms: 0,
        status: Some(400),
        error: Some("bad request".into()),
        response_excerpt: Some("no\0pe".into()),
    };
    store.finish(&a1, dead_at(2_000), Next::Dead).await.unwrap();
    store.finish(&b, dead_at(3_000), Next::Dead).await.unwrap();
    assert_eq!(
        store.counts(t).await.unwrap(),
        TargetCounts {
            pending: 1,
            dead: 2
        }
    );
    let window = store
        .dead_letters_between(t, 2_500, 9_000, 10)
        .await
        .unwrap();
    assert_eq!(window.iter().map(|d| d.seq).collect::<Vec<_>>(), [b.seq]);
    assert_eq!(
        store
            .dead_letters(t)
            .await
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect::<Vec<_>>(),
        [a1.seq, b.seq]
    );
    let recorded = store.attempts(a1.seq).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, Some(400));
    assert!(recorded[0]
        .response_excerpt
        .as_deref()
        .unwrap()
        .starts_with("no"));

    // A-2 became A's head; A-1 replayed goes behind it, with a fresh retry budget.
    assert_eq!(store.replay(vec![a1.seq, 999_999], 4_000).await.unwrap(), 1);
    let replayed = store.delivery(a1.seq).await.unwrap().unwrap();
    assert_eq!(
        (replayed.state, replayed.retry_base, replayed.due_ms),
        (DeliveryState::Pending, 1, 4_000)
    );
    let Claim::Due(next) = store.claim(t, 4_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        next.seq,
        a1.seq + 1,
        "A-2 first: it was waiting as the head"
    );
    assert!(
        matches!(store.claim(t, 4_000).await.unwrap(), Claim::Empty),
        "A-1 waits behind A-2; B is dead"
    );
    store.finish(&next, attempt(1), Next::Done).await.unwrap();
    let Claim::Due(again) = store.claim(t, 4_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(again.seq, a1.seq);
    store.finish(&again, attempt(2), Next::Done).await.unwrap();

    // Redelivery adds a new delivery of a stored event; an unknown event gets none.
    let b_event = uuid::Uuid::parse_str(&ids[2]).unwrap();
    let seqs = store
        .redeliver(
            b_event,
            vec![NewDelivery {
                target: t,
                ordering_key: "B".into(),
            }],
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(seqs.len(), 1);
    assert!(seqs[0] > b.seq);
    assert_eq!(store.deliveries_of(b_event).await.unwrap().len(), 2);
    assert!(store
        .redeliver(uuid::Uuid::now_v7(), vec![], 5_000)
        .await
        .unwrap()
        .is_empty());

    // Target state persists.
    assert_eq!(store.target_state(t).await.unwrap(), None);
    let paused = TargetState {
        mode: TargetMode::Paused,
        since_ms: 7,
        reason: Some("maintenance".into()),
    };
    store.set_target_state(t, paused.clone()).await.unwrap();
    assert_eq!(store.target_state(t).await.unwrap(), Some(paused));
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.events, stats.pending, stats.done, stats.dead),
        (3, 1, 2, 1)
    );
    store.close().await.unwrap();
}

/// Prunes every event whose deliveries are all finished, whenever they finished.
fn prune_all_finished() -> hookrelay::store::Prune {
    hookrelay::store::Prune {
        done_before_ms: u64::MAX / 2,
        dead_before_ms: u64::MAX / 2,
        now_ms: 2_000,
        max_events: 1000,
    }
}

/// Log segments of 4 KB (a few requests fill one), compacted every 50 ms.
fn small_segments() -> hookrelay::store::LogOptions {
    hookrelay::store::LogOptions {
        segment_bytes: 4096,
        compact_every: std::time::Duration::from_millis(50),
        ..Default::default()
    }
}

/// The sled store keeps event bodies in its write-ahead log: they are read back from there
/// after a restart, and a log segment is deleted once no stored event needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_log_segments_hold_bodies_until_their_events_are_pruned() {
    let dir = tempdir();
    let wal = dir.path().join("hookrelay-wal");
    let segments = || std::fs::read_dir(&wal).unwrap().count();
    // Segments of 4 KB: a few requests fill one.
    let store = SledStore::open_with_log(dir.path(), small_segments()).unwrap();
    let events: Vec<Event> = (0..40).map(|n| event(&format!("m{n}"), n)).collect();
    for e in &events {
        let outcome = store
            .ingest(batch(std::slice::from_ref(e), &[], 1_000))
            .await
            .unwrap();
        assert_eq!(outcome, [EventOutcome::Stored]);
    }
    let before = segments();
    assert!(before >= 8, "{before} segments for 40 events of ~1 KB");
    store.close().await.unwrap();
    drop(store);

    let store = SledStore::open_with_log(dir.path(), small_segments()).unwrap();
    assert!(segments() >= before, "live segments survive a restart");
    for e in [&events[0], &events[17], &events[39]] {
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        let stored = store.event(id).await.unwrap().expect("stored");
        assert_eq!(stored.raw.body, e.raw.body);
        assert_eq!(stored.id, e.id);
    }
    let pruned = store.prune(prune_all_finished()).await.unwrap();
    assert_eq!(pruned.events, 40);
    store.close().await.unwrap();
    drop(store);
    // Only the segment being written is left; a new start replaces it with an empty one.
    assert_eq!(segments(), 1);
    let store = SledStore::open_with_log(dir.path(), small_segments()).unwrap();
    let id = uuid::Uuid::parse_str(&events[3].id).unwrap();
    assert!(store.event(id).await.unwrap().is_none());
    let again = event("after", 99);
    store
        .ingest(batch(std::slice::from_ref(&again), &[], 3_000))
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str(&again.id).unwrap();
    assert_eq!(
        store.event(id).await.unwrap().unwrap().raw.body,
        again.raw.body
    );
    store.close().await.unwrap();
}

/// A few events kept (pending deliveries) among many pruned ones would keep every log segment
/// they lie in; compaction copies them forward so those segments go, and they read back the
/// same before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_log_compaction_frees_segments_kept_by_a_few_events() {
    let dir = tempdir();
    let wal = dir.path().join("hookrelay-wal");
    let names = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let store = SledStore::open_with_log(dir.path(), small_segments()).unwrap();
    let target = store.target_ids(&["hook".into()]).await.unwrap()[0];
    let events: Vec<Event> = (0..40).map(|n| event(&format!("m{n}"), n)).collect();
    for (n, e) in events.iter().enumerate() {
        let targets: &[u32] = if n % 8 == 0 { &[target] } else { &[] };
        store
            .ingest(batch(std::slice::from_ref(e), targets, 1_000))
            .await
            .unwrap();
    }
    let kept: Vec<&Event> = events.iter().step_by(8).collect();
    let pruned = store.prune(prune_all_finished()).await.unwrap();
    assert_eq!(pruned.events, 35);
    let before = names();
    let writing = before.iter().next_back().unwrap().clone();
    assert!(
        before.len() >= kept.len(),
        "each kept event holds its segment: {before:?}"
    );

    // Every segment that was closed when pruning ended is compacted away. Segments are deleted
    // after a write once a checkpoint covers them; `ping` is such a write.
    let compacted = common::wait_until_async(|| async {
        store.ping().await.unwrap();
        names().iter().all(|n| !before.contains(n) || *n == writing)
    })
    .await;
    assert!(compacted, "before {before:?}, now {:?}", names());
    async fn read_back(store: &SledStore, kept: &[&Event]) {
        for e in kept {
            let id = uuid::Uuid::parse_str(&e.id).unwrap();
            let stored = store.event(id).await.unwrap().expect("kept");
            assert_eq!(
                (stored.id.as_str(), &stored.raw.body),
                (e.id.as_str(), &e.raw.body)
            );
        }
    }
    read_back(&store, &kept).await;
    assert_eq!(
        store.counts(target).await.unwrap().pending,
        kept.len() as u64
    );
    store.close().await.unwrap();
    drop(store);

    let store = SledStore::open(dir.path()).unwrap();
    read_back(&store, &kept).await;
    let mut claimed = 0;
    while let Claim::Due(d) = store.claim(target, u64::MAX).await.unwrap() {
        assert!(kept.iter().any(|e| e.id == d.event_id.to_string()));
        claimed += 1;
    }
    assert_eq!(claimed, kept.len());
    store.close().await.unwrap();
}

/// The event log (`GET /events`, the console): newest first, pages that join up, the source,
/// type and status filters, an id range, and the budget: a call looks at no more than
/// `max_examined` events and says where to go on. Guards each of these; seen failing with the
/// scan in id order, with the budget not counted (a filtered page then scans everything), and
/// with the status filter ignored.
async fn the_event_log_pages_newest_first_filters_and_keeps_to_its_budget(fx: Fixture) {
    let store = fx.open().await;
    let t = store.target_ids(&["t".into()]).await.unwrap()[0];
    let mut ids = Vec::new();
    for n in 0..10 {
        let mut e = event(&format!("m{n}"), n);
        if n % 2 == 1 {
            e.source = "other".into();
        }
        if n % 3 == 0 {
            e.event_type = "ping".into();
        }
        store
            .ingest(batch(&[e.clone()], &[t], 1_000))
            .await
            .unwrap();
        ids.push(uuid::Uuid::parse_str(&e.id).unwrap());
    }
    // Event 3 ends dead, event 5 done; the rest stay pending.
    let mut claimed = Vec::new();
    for _ in 0..10 {
        let Claim::Due(d) = store.claim(t, 2_000).await.unwrap() else {
            panic!("every key is due")
        };
        claimed.push(d);
    }
    for d in claimed {
        if d.event_id == ids[3] {
            store.finish(&d, attempt(1), Next::Dead).await.unwrap();
        } else if d.event_id == ids[5] {
            store.finish(&d, attempt(1), Next::Done).await.unwrap();
        } else {
            store.release(d.seq);
        }
    }
    let mut newest_first = ids.clone();
    newest_first.sort();
    newest_first.reverse();
    let all = EventQuery {
        limit: 50,
        max_examined: 1_000,
        ..EventQuery::default()
    };
    let page_ids = |p: &hookrelay::store::EventPage| -> Vec<uuid::Uuid> {
        p.events
            .iter()
            .map(|l| uuid::Uuid::parse_str(&l.event.id).unwrap())
            .collect()
    };

    let whole = store.event_log(all.clone()).await.unwrap();
    assert_eq!(page_ids(&whole), newest_first);
    assert_eq!((whole.examined, whole.resume), (10, None));
    let three = whole
        .events
        .iter()
        .find(|l| l.event.id == ids[3].to_string())
        .unwrap();
    assert_eq!(three.deliveries.len(), 1);
    assert_eq!(EventStatus::of(&three.deliveries), EventStatus::Dead);

    // Pages of three join up into the whole, the last says nothing is left.
    let mut joined = Vec::new();
    let mut before = None;
    loop {
        let p = store
            .event_log(EventQuery {
                limit: 3,
                before,
                ..all.clone()
            })
            .await
            .unwrap();
        joined.extend(page_ids(&p));
        match p.resume {
            Some(r) => {
                assert_eq!(Some(&r), joined.last(), "resumes below the last shown");
                before = Some(r);
            }
            None => break,
        }
    }
    assert_eq!(joined, newest_first);

    // Filters.
    let by = |q: EventQuery| async { page_ids(&store.event_log(q).await.unwrap()) };
    let sg: Vec<_> = newest_first
        .iter()
        .filter(|id| ids.iter().position(|x| x == *id).unwrap() % 2 == 0)
        .copied()
        .collect();
    assert_eq!(
        by(EventQuery {
            source: Some("sg".into()),
            ..all.clone()
        })
        .await,
        sg
    );
    let pings: Vec<_> = newest_first
        .iter()
        .filter(|id| ids.iter().position(|x| x == *id).unwrap() % 3 == 0)
        .copied()
        .collect();
    assert_eq!(
        by(EventQuery {
            event_type: Some("ping".into()),
            ..all.clone()
        })
        .await,
        pings
    );
    assert_eq!(
        by(EventQuery {
            status: Some(EventStatus::Dead),
            ..all.clone()
        })
        .await,
        [ids[3]]
    );
    assert_eq!(
        by(EventQuery {
            status: Some(EventStatus::Done),
            ..all.clone()
        })
        .await,
        [ids[5]]
    );
    assert_eq!(
        by(EventQuery {
            status: Some(EventStatus::Pending),
            source: Some("other".into()),
            ..all.clone()
        })
        .await,
        [ids[9], ids[7], ids[1]]
    );
    // An id range: after (exclusive) and before (exclusive).
    let (low, high) = (newest_first[7], newest_first[2]);
    assert_eq!(
        by(EventQuery {
            after: Some(low),
            before: Some(high),
            ..all.clone()
        })
        .await,
        newest_first[3..7]
    );
    assert_eq!(
        by(EventQuery {
            after: Some(high),
            before: Some(low),
            ..all.clone()
        })
        .await,
        Vec::<uuid::Uuid>::new()
    );

    // The budget: the dead event is the 7th newest; a call that may look at four stops at
    // the fourth, empty-handed, and the next goes on from there.
    let dead = EventQuery {
        status: Some(EventStatus::Dead),
        max_examined: 4,
        ..all.clone()
    };
    let first = store.event_log(dead.clone()).await.unwrap();
    assert!(first.events.is_empty());
    assert_eq!((first.examined, first.resume), (4, Some(newest_first[3])));
    let second = store
        .event_log(EventQuery {
            before: first.resume,
            ..dead
        })
        .await
        .unwrap();
    assert_eq!(page_ids(&second), [ids[3]]);
    assert_eq!((second.examined, second.resume), (4, Some(newest_first[7])));
    store.close().await.unwrap();
}

/// Traffic shaping's store operations: a claimed head's backlog in its key's order; one write
/// that supersedes the deliveries before the kept one, records the kept one's attempt (or
/// holds it) and writes the key's value; the kept one then heads its key (nothing older is
/// ever claimable after it), later arrivals stay behind it, a stale claim writes nothing,
/// superseded deliveries are final and pruned like delivered ones. Fails when a backend
/// leaves a superseded delivery pending (it would be claimed after the kept one), writes
/// the supersession apart from the attempt, or ignores the claim check.
async fn coalescing_supersedes_a_keys_backlog_in_one_write(fx: Fixture) {
    use hookrelay::store::{DeliveryState, Prune, Shaped, ShapedOutcome, MAX_BACKLOG};
    let (t, a, a6) = {
        let store = fx.open().await;
        let t = store.target_ids(&["t".into()]).await.unwrap()[0];
        let events: Vec<Event> = (1..=5)
            .map(|n| event("A", n))
            .chain([event("B", 9)])
            .collect();
        store.ingest(batch(&events, &[t], 1_000)).await.unwrap();
        let Claim::Due(head) = store.claim(t, 1_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(head.ordering_key, "A");
        let a = store.key_backlog(&head, MAX_BACKLOG).await.unwrap();
        let order: Vec<u64> = a.iter().map(|d| d.seq).collect();
        assert_eq!(order.len(), 5);
        assert_eq!(order[0], head.seq);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(store.key_backlog(&head, 2).await.unwrap().len(), 2);
        // A sixth alert of A arrives while the backlog is being sent: it stays behind.
        store
            .ingest(batch(&[event("A", 6)], &[t], 1_000))
            .await
            .unwrap();
        let shaped = Shaped {
            head: head.clone(),
            kept: a[4].clone(),
            superseded: order[..4].to_vec(),
            outcome: ShapedOutcome::Attempt {
                attempt: attempt(1),
                next: Next::Retry { due_ms: 5_000 },
            },
            key_state: Some(Some(b"folded".to_vec())),
        };
        store.finish_shaped(shaped.clone()).await.unwrap();
        for d in &a[..4] {
            let d = store.delivery(d.seq).await.unwrap().unwrap();
            assert_eq!(d.state, DeliveryState::Superseded);
            assert_eq!(
                d.note.unwrap(),
                format!("superseded by delivery #{}", a[4].seq)
            );
        }
        let kept = store.delivery(a[4].seq).await.unwrap().unwrap();
        assert_eq!(
            (kept.state, kept.attempts, kept.due_ms),
            (DeliveryState::Pending, 1, 5_000)
        );
        assert_eq!(store.key_state(t, "A").await.unwrap().unwrap(), b"folded");
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.superseded, stats.pending), (4, 3));
        assert_eq!(store.counts(t).await.unwrap().pending, 3);
        // The same claim reported again writes nothing.
        let mut stale = shaped;
        stale.key_state = Some(Some(b"stale".to_vec()));
        store.finish_shaped(stale).await.unwrap();
        assert_eq!(store.key_state(t, "A").await.unwrap().unwrap(), b"folded");
        assert_eq!(store.delivery(a[4].seq).await.unwrap().unwrap().attempts, 1);
        // A's head is now the kept delivery, due at 5 s; B goes meanwhile.
        let Claim::Due(b) = store.claim(t, 1_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(b.ordering_key, "B");
        store.finish(&b, attempt(1), Next::Done).await.unwrap();
        assert!(matches!(
            store.claim(t, 1_000).await.unwrap(),
            Claim::Wait(5_000)
        ));
        store.close().await.unwrap();
        (t, a, order[0] + 6)
    };
    // Reopened: the supersession held, and a hold supersedes and reschedules likewise.
    let store = fx.open().await;
    assert_eq!(store.stats().await.unwrap().superseded, 4);
    let Claim::Due(head) = store.claim(t, 5_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(head.seq, a[4].seq);
    let backlog = store.key_backlog(&head, MAX_BACKLOG).await.unwrap();
    assert_eq!(
        backlog.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [a[4].seq, a6]
    );
    store
        .finish_shaped(Shaped {
            head: head.clone(),
            kept: backlog[1].clone(),
            superseded: vec![head.seq],
            outcome: ShapedOutcome::Hold {
                due_ms: 9_000,
                note: "held: maintenance".into(),
            },
            key_state: Some(None),
        })
        .await
        .unwrap();
    assert_eq!(store.key_state(t, "A").await.unwrap(), None);
    let held = store.delivery(a6).await.unwrap().unwrap();
    assert_eq!(
        (held.state, held.attempts, held.due_ms),
        (DeliveryState::Pending, 0, 9_000)
    );
    assert_eq!(held.note.as_deref(), Some("held: maintenance"));
    assert_eq!(
        store.delivery(head.seq).await.unwrap().unwrap().state,
        DeliveryState::Superseded
    );
    assert!(matches!(
        store.claim(t, 5_000).await.unwrap(),
        Claim::Wait(9_000)
    ));
    let Claim::Due(last) = store.claim(t, 9_000).await.unwrap() else {
        panic!()
    };
    assert_eq!(last.seq, a6);
    store.finish(&last, attempt(1), Next::Done).await.unwrap();
    assert!(matches!(store.claim(t, 9_000).await.unwrap(), Claim::Empty));
    assert_eq!(store.delivery(a6).await.unwrap().unwrap().note, None);
    // Superseded deliveries are pruned like delivered ones: every event goes.
    let far = hookrelay::deliver::now_ms() + 1_000_000;
    let pruned = store
        .prune(Prune {
            done_before_ms: far,
            dead_before_ms: far,
            now_ms: 1_000,
            max_events: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned.events, 7);
    assert_eq!(store.stats().await.unwrap().events, 0);
    store.close().await.unwrap();
}

/// A target's rate limit is one bucket for every handle on the store (on PostgreSQL, two
/// instances): `burst` sends at once, then one per interval, a pause holds every send, and a
/// throttled retry records its attempt without spending the retry budget. Fails when a
/// backend keeps the bucket per handle (the second instance would send at once) or spends the
/// budget.
async fn rate_limits_and_throttled_retries(fx: Fixture) {
    use hookrelay::store::RateLimit;
    let one = fx.open().await;
    let other = match &fx {
        Fixture::Postgres(_) => Some(fx.open().await),
        Fixture::Sled(_) => None,
    };
    let two = other.as_ref().unwrap_or(&one);
    let t = one.target_ids(&["t".into()]).await.unwrap()[0];
    let limit = RateLimit {
        every_ms: 1_000,
        burst: 2,
    };
    let now = 1_000_000;
    assert_eq!(one.rate_take(t, limit, now).await.unwrap(), None);
    assert_eq!(two.rate_take(t, limit, now).await.unwrap(), None);
    assert_eq!(
        one.rate_take(t, limit, now).await.unwrap(),
        Some(now + 1_000)
    );
    assert_eq!(
        two.rate_take(t, limit, now + 999).await.unwrap(),
        Some(now + 1_000)
    );
    assert_eq!(two.rate_take(t, limit, now + 1_000).await.unwrap(), None);
    assert_eq!(
        one.rate_take(t, limit, now + 1_000).await.unwrap(),
        Some(now + 2_000)
    );
    one.rate_pause(t, limit, now + 60_000).await.unwrap();
    assert_eq!(
        two.rate_take(t, limit, now + 5_000).await.unwrap(),
        Some(now + 60_000)
    );
    assert_eq!(two.rate_take(t, limit, now + 60_000).await.unwrap(), None);
    assert_eq!(
        one.rate_take(t, limit, now + 60_000).await.unwrap(),
        Some(now + 61_000)
    );

    one.ingest(batch(&[event("A", 1)], &[t], 1_000))
        .await
        .unwrap();
    let Claim::Due(d) = one.claim(t, 1_000).await.unwrap() else {
        panic!()
    };
    one.finish(&d, attempt(1), Next::Throttled { due_ms: 3_000 })
        .await
        .unwrap();
    let d = one.delivery(d.seq).await.unwrap().unwrap();
    assert_eq!((d.attempts, d.retry_base, d.due_ms), (1, 1, 3_000));
    assert_eq!(one.attempts(d.seq).await.unwrap().len(), 1);
    drop(other);
    one.close().await.unwrap();
}
