//! Fault injection at every I/O step of the embedded store. The relay's store lives on
//! FaultFs (`tests/faultfs`), which fails chosen operations on chosen files with a chosen
//! errno while senders keep posting. For each step, the store's failure policy (RELIABILITY.md)
//! must hold: a failure before the log sync refuses the group (503) and the relay goes on; a
//! failure at or after it stops the relay (fail-stop: it exits non-zero, saying why); and in
//! every case, once the fault is gone and the relay restarted, every acknowledged event is
//! delivered, in per-key order. A power cut after each fault checks that nothing acknowledged
//! was only in memory.
//!
//! Run with `-- --nocapture` for the summary lines RELIABILITY.md quotes.

mod common;
#[path = "crash/mod.rs"]
mod crash;
#[path = "faultfs/mod.rs"]
mod faultfs;

use std::time::Duration;

use common::{tempdir, Receiver};
use crash::{Load, Relay};
use faultfs::{Fault, FaultFs, Op};

/// What a fault is expected to do to the relay.
#[derive(PartialEq)]
enum Expect {
    /// Some requests are refused (503), the relay keeps running, and says `line`.
    Refused(&'static str),
    /// The relay goes on (nothing is lost by the failure), and says `line`.
    Survives(&'static str),
    /// The relay stops on its own with a non-zero exit code, saying `line`.
    Stops(&'static str),
}

/// Runs the relay under load, injects `fault` once 30 requests are acknowledged, and checks
/// what follows against `expect`; then clears the fault, cuts the power, restarts, and checks
/// that every acknowledged event is delivered.
async fn under_fault(name: &str, fault: Fault, store_extra: &str, expect: Expect) {
    let fs = FaultFs::mount_temp().unwrap_or_else(|why| panic!("faults: {why}"));
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let port = crash::port();
    let config = crash::config(
        dir.path(),
        port,
        &fs.path().join("data"),
        &receiver,
        store_extra,
    );
    let log = dir.path().join("relay.log");
    let mut relay = Relay::start(&config, port, &log).await;
    let load = Load::start(port, 4);
    assert!(load.wait_for_acks(0, 30).await, "{}", relay.log_text());
    let fired_before = fs.counts().faults_fired;
    fs.inject(fault);
    let line = match expect {
        Expect::Refused(line) | Expect::Survives(line) | Expect::Stops(line) => line,
    };
    let said =
        common::wait_until(Duration::from_secs(20), || relay.log_text().contains(line)).await;
    assert!(
        fs.counts().faults_fired > fired_before,
        "{name}: the fault never fired; relay log:\n{}",
        relay.log_text()
    );
    assert!(
        said,
        "{name}: the relay did not say {line:?}; its log:\n{}",
        relay.log_text()
    );
    let exit = match expect {
        Expect::Stops(_) => {
            let code = relay.exited(Duration::from_secs(20)).await;
            assert!(
                code.is_some_and(|c| c != 0),
                "{name}: the relay did not stop with an error (exit {code:?}); log:\n{}",
                relay.log_text()
            );
            code
        }
        _ => {
            // Still running and still acknowledging once the fault stops firing.
            fs.clear_faults();
            let acked = load.acked();
            assert!(
                load.wait_for_acks(acked, 20).await,
                "{name}: no acknowledgements after the fault; log:\n{}",
                relay.log_text()
            );
            assert!(
                relay.child.try_wait().unwrap().is_none(),
                "{name}: the relay exited"
            );
            None
        }
    };
    let refused = load
        .statuses
        .lock()
        .unwrap()
        .get(&503)
        .copied()
        .unwrap_or(0);
    if let Expect::Refused(_) = expect {
        assert!(refused > 0, "{name}: nothing was refused");
    }
    fs.clear_faults();
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    let acked = load.stop().await;
    relay.kill();
    fs.power_cut();
    let relay = Relay::start(&config, port, &log).await;
    let (delivered, duplicates) =
        crash::check_delivered(&receiver, &acked, &relay.log_text()).await;
    println!(
        "faults: {name}: sent {sent}, acknowledged {}, refused (503) {refused}, exit {}, delivered {delivered} after a restart and a power cut, lost 0, duplicates {duplicates}",
        acked.len(),
        exit.map_or("none (kept running)".to_owned(), |c| c.to_string()),
    );
}

/// A write to the log that fails (ENOSPC) refuses its group: the requests in it are answered
/// 503 and nothing of them is kept; the relay goes on. Guards the cut-back after a failed write
/// (without it, the next group's records follow a torn one and the log is refused as damaged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_refuses_its_group_and_the_relay_goes_on() {
    under_fault(
        "log write",
        Fault::new(Op::Write, "/hookrelay-wal/", libc::ENOSPC).times(5),
        "",
        Expect::Refused("store write failed; the group is refused"),
    )
    .await;
}

/// A failed sync of the log stops the relay, and is never tried again: FaultFs drops the
/// unsynced writes of a file whose fsync failed, as Linux may, so a retry that "succeeds"
/// would acknowledge what the power cut then loses (checked by hand: with the sync retried,
/// acknowledged events are lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_sync_stops_the_relay() {
    under_fault(
        "log sync",
        Fault::new(Op::Fsync, "/hookrelay-wal/", libc::EIO).times(1),
        "",
        Expect::Stops("the store stopped"),
    )
    .await;
}

/// sled failing to write what the log made durable stops the relay: the group was
/// acknowledged and cannot be refused any more, and the restart replays the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sled_write_stops_the_relay() {
    under_fault(
        "sled write",
        Fault::new(Op::Write, "/data/db", libc::EIO),
        "",
        Expect::Stops("the store stopped"),
    )
    .await;
}

/// A checkpoint whose sync of sled's files fails stops the relay before any log segment it
/// would have covered is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sled_sync_stops_the_relay() {
    under_fault(
        "sled sync",
        Fault::new(Op::Fsync, "/data/db", libc::EIO),
        "",
        Expect::Stops("the store stopped"),
    )
    .await;
}

/// A new log segment that cannot be created leaves the current one in use; it is tried again
/// before the next group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_created_leaves_the_current_one_in_use() {
    under_fault(
        "segment create",
        Fault::new(Op::Create, "/hookrelay-wal/", libc::ENOSPC).times(5),
        "log_segment_bytes = 4096",
        Expect::Survives("could not begin a new log segment"),
    )
    .await;
}

/// A new segment whose directory entry cannot be synced stops the relay: records written
/// there could vanish with the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_directory_sync_at_rotation_stops_the_relay() {
    under_fault(
        "segment directory sync",
        Fault::new(Op::FsyncDir, "/hookrelay-wal", libc::EIO),
        "log_segment_bytes = 4096",
        Expect::Stops("the store stopped"),
    )
    .await;
}

/// A log segment that cannot be deleted is kept (and deleted later); nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_deleted_is_kept() {
    under_fault(
        "segment delete",
        Fault::new(Op::Unlink, "/hookrelay-wal/", libc::EIO).times(3),
        "log_segment_bytes = 4096\nretain_delivered = \"1ms\"\nprune_interval = \"200ms\"",
        Expect::Survives("could not delete a log segment"),
    )
    .await;
}
