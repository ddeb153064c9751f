//! The applier: moves durable writes from the memtables into sled, and checkpoints sled.
//!
//! It runs on a thread of its own, off the acknowledgement path. It freezes the active
//! memtable once it is a moment old (or large), writes its keys into sled with the LSN of its
//! last record (`keys::APPLIED_LSN`), and drops it. About once a second it flushes sled and
//! publishes the LSN that flush made durable ("checkpointed"): the log segments before it may
//! then be deleted by the writer.
//!
//! sled never holds a write the log does not (tables are published after their sync), and the
//! LSN it holds is written after the table's keys. A crash at any point leaves sled a state
//! from which replaying the log after that LSN gives the same result: records are physical
//! key writes, applied again in order.
//!
//! Any sled error here is fatal ([`super::commit::Failure`]): the group was acknowledged, so it
//! cannot be refused any more, and sled's own errors are sticky. The restart replays the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys;
use super::memtable::{Slot, Table};
use super::Shared;

/// How often sled is flushed so the log behind it can be deleted. Longer means fewer page
/// rewrites and more log to replay after a crash.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A checkpoint that takes this long is logged.
const SLOW: Duration = Duration::from_millis(250);

/// The running applier; [`Handle::stop`] applies what is left, flushes and joins it.
pub struct Handle {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.shared.mem.nudge();
        let _ = self.thread.join();
    }
}

/// Starts the applier once `loader` (reading the queue at opening) has ended: sled must not
/// change under that scan. Writes meanwhile wait in the memtables, and the log is not
/// checkpointed.
pub fn start(shared: Arc<Shared>, loader: std::thread::JoinHandle<()>) -> std::io::Result<Handle> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("hookrelay-apply".into())
            .spawn(move || {
                let _ = loader.join();
                run(&shared, &stop)
            })?
    };
    Ok(Handle {
        stop,
        shared,
        thread,
    })
}

fn run(shared: &Shared, stop: &AtomicBool) {
    let mut last_checkpoint = Instant::now();
    loop {
        if shared.failure.check().is_err() {
            return;
        }
        let stopping = stop.load(Ordering::Acquire);
        let tick = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
        if let Some(table) = shared.mem.freeze(tick, stopping) {
            if shared.failure.check().is_err() {
                // Stopped meanwhile: what the log holds is replayed at the next start.
                return;
            }
            if let Err(e) = apply(&shared.db, &table) {
                shared.failure.fail("applying the log to sled", &e);
                return;
            }
            shared.set_applied(table.last_lsn());
            shared.mem.applied();
            continue;
        }
        if stopping || last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            if !checkpoint(shared) {
                return;
            }
            last_checkpoint = Instant::now();
        }
        if stopping {
            return;
        }
    }
}

/// Writes a frozen table into sled, then the LSN it reaches.
fn apply(db: &sled::Db, table: &Table) -> sled::Result<()> {
    for (key, slot) in table.writes().iter() {
        match slot {
            Slot::Put(v) | Slot::Fresh(v) => {
                db.insert(key.as_slice(), v.as_slice())?;
            }
            Slot::Remove => {
                db.remove(key.as_slice())?;
            }
        }
    }
    db.insert(keys::APPLIED_LSN, &table.last_lsn().to_be_bytes())?;
    Ok(())
}

/// Flushes sled when something was applied since the last checkpoint, and syncs its files (its
/// flush alone makes nothing durable, see `recovery::sync_files`); false when that failed
/// (the store has stopped).
fn checkpoint(shared: &Shared) -> bool {
    let lsn = shared.applied();
    if lsn == shared.checkpointed() {
        return true;
    }
    let started = Instant::now();
    let flushed = shared.db.flush().and_then(|bytes| {
        super::recovery::sync_files(&shared.dir)
            .map(|()| bytes)
            .map_err(sled::Error::Io)
    });
    match flushed {
        Ok(bytes) => {
            shared.set_checkpointed(lsn);
            let took = started.elapsed();
            if took >= SLOW {
                tracing::warn!(ms = took.as_millis() as u64, bytes, "slow store checkpoint");
            }
            true
        }
        Err(e) => {
            shared.failure.fail("flushing sled", &e);
            false
        }
    }
}
