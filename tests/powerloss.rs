//! Simulated power loss. The relay's store lives on FaultFs (`tests/faultfs`), a file system in
//! memory that keeps what was written but not synced apart from what was, and drops it at a
//! power cut. Under load from concurrent senders (group commit), the relay is killed and the
//! power cut, many times at random moments, and started again on what the "disk" kept; then
//! every acknowledged event must reach the target, in per-key order.
//!
//! Run with `-- --nocapture` for the summary line RELIABILITY.md quotes.

mod common;
#[path = "crash/mod.rs"]
mod crash;
#[path = "faultfs/mod.rs"]
mod faultfs;

use std::time::Duration;

use common::{tempdir, Receiver};
use crash::{Load, Relay};
use faultfs::FaultFs;

/// Power cuts per run.
const CUTS: u64 = 8;

/// What this guards: the log's `sync_data` before an acknowledgement (with it removed, the
/// store is found damaged or events acknowledged but never synced are lost; checked by hand),
/// and the syncs that must come before a log segment is deleted: at a checkpoint, and at
/// opening after a crash (the predecessor's writes to sled may be in the page cache only). With
/// 64 KiB segments and delivered events pruned at once, segments are deleted all along, so a
/// missing sync loses what only they held (checked by hand for the one at opening). Also the
/// directory syncs of the store and of new segments. Half the cuts drop every unsynced write, the other half keep
/// a random prefix of each file's unsynced writes, the last one torn at a sector boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_under_load_lose_nothing_acknowledged() {
    let fs = FaultFs::mount_temp().unwrap_or_else(|why| panic!("power-loss: {why}"));
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let port = crash::port();
    let config = crash::config(
        dir.path(),
        port,
        &fs.path().join("data"),
        &receiver,
        // Small segments, and delivered events pruned at once: segments are deleted all along.
        "log_segment_bytes = 65536\nretain_delivered = \"1ms\"\nprune_interval = \"200ms\"",
    );
    let log = dir.path().join("relay.log");
    let mut relay = Relay::start(&config, port, &log).await;
    let load = Load::start(port, 8);
    let seed = std::env::var("HOOKRELAY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    for cut in 0..CUTS {
        let before = load.acked();
        tokio::time::sleep(Duration::from_millis(rng.u64(100..700))).await;
        assert!(
            load.wait_for_acks(before, 20).await,
            "no load between cuts; relay log:\n{}",
            relay.log_text()
        );
        relay.kill();
        if cut % 2 == 0 {
            fs.power_cut();
        } else {
            fs.power_cut_keeping(seed.wrapping_add(cut));
        }
        relay = Relay::start(&config, port, &log).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    let acked = load.stop().await;
    let (delivered, duplicates) =
        crash::check_delivered(&receiver, &acked, &relay.log_text()).await;
    let counts = fs.counts();
    println!(
        "power-loss: {CUTS} power cuts under load (seed {seed}), sent {sent}, acknowledged {}, delivered {delivered}, lost 0, duplicates {duplicates}; {} fsyncs, {} directory syncs",
        acked.len(),
        counts.fsyncs,
        counts.fsyncdirs
    );
}

fn stored_event(n: usize) -> hookrelay::Event {
    common::statusgator_event(&format!("m{n}"), n)
}

/// Compaction moves the bodies of the few events a segment still holds to the end of the log,
/// points the events there, and deletes the segment once a checkpoint covers the move. A power
/// cut after that must find the events pointing at their new place. Guards the checkpoint's
/// sync of sled's files: sled's own flush makes nothing durable (it writes with
/// `sync_file_range`), so without the sync the cut takes sled back to pointers into deleted
/// segments and the pending events are unreadable (checked by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_bodies_survive_a_power_cut() {
    use hookrelay::store::{
        Claim, IngestBatch, LogOptions, NewDelivery, NewEvent, Prune, SledStore, Store,
    };
    let fs = FaultFs::mount_temp().unwrap_or_else(|why| panic!("power-loss: {why}"));
    let path = fs.path().join("data");
    let log = LogOptions {
        segment_bytes: 4096,
        compact_every: Duration::from_millis(50),
        ..Default::default()
    };
    let store = SledStore::open_with_log(&path, log).unwrap();
    let target = store.target_ids(&["hook".into()]).await.unwrap()[0];
    let events: Vec<hookrelay::Event> = (0..40).map(stored_event).collect();
    for (n, e) in events.iter().enumerate() {
        // One in eight stays pending; the rest have no delivery and are pruned.
        let deliveries = if n % 8 == 0 {
            vec![NewDelivery {
                target,
                ordering_key: format!("k{n}"),
            }]
        } else {
            vec![]
        };
        let batch = IngestBatch {
            events: vec![NewEvent::new(e, deliveries).unwrap()],
            now_ms: 1_000,
            dedup_until_ms: 2_000,
        };
        store.ingest(batch).await.unwrap();
    }
    let kept: Vec<&hookrelay::Event> = events.iter().step_by(8).collect();
    let pruned = store
        .prune(Prune {
            done_before_ms: u64::MAX / 2,
            dead_before_ms: u64::MAX / 2,
            now_ms: 1_500,
            max_events: 1000,
        })
        .await
        .unwrap();
    assert_eq!(pruned.events, 35);
    let wal = path.join("hookrelay-wal");
    let names = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let before = names();
    let writing = before.iter().next_back().unwrap().clone();
    // Segments are deleted after a write once a checkpoint covers them; `ping` is one.
    let compacted = common::wait_until_async(|| async {
        store.ping().await.unwrap();
        names().iter().all(|n| !before.contains(n) || *n == writing)
    })
    .await;
    assert!(compacted, "before {before:?}, now {:?}", names());

    fs.power_cut();
    drop(store);
    let store = SledStore::open(&path).unwrap();
    for e in &kept {
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        let stored = store.event(id).await.unwrap().expect("kept");
        assert_eq!(stored.raw.body, e.raw.body);
    }
    let mut claimed = 0;
    while let Claim::Due(_) = store.claim(target, u64::MAX).await.unwrap() {
        claimed += 1;
    }
    assert_eq!(claimed, kept.len());
    store.close().await.unwrap();
}
