//! The applier: moves durable writes from the memtables into sled, and checkpoints sled.
//!
//! It runs on a thread of its own, off the acknowledgement path. It freezes the active
//! memtable once it is a moment old (or large), writes its keys into sled (in an order that
//! fills sled's leaves, [`leaf_order`]; new deliveries' pending keys packed, see
//! [`super::packs`]) with the LSN of its last record (`keys::APPLIED_LSN`), and drops it.
//! About once a second it flushes sled and publishes the LSN that flush made durable
//! ("checkpointed"): the log segments before it may then be deleted by the writer.
//!
//! sled never holds a write the log does not (tables are published after their sync), and the
//! LSN it holds is written after the table's keys. A crash at any point leaves sled a state
//! from which replaying the log after that LSN gives the same result: records are physical
//! key writes, applied again in order (a pending key into the pack that spans its seq, as the
//! applier would).
//!
//! Any sled error here is fatal ([`super::commit::Failure`]): the group was acknowledged, so it
//! cannot be refused any more, and sled's own errors are sticky. The restart replays the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys;
use super::memtable::{Slot, Table};
use super::packs::Packs;
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
            if let Err(e) = apply(&shared.db, &shared.mem.packs, &table) {
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

/// sled 0.34 splits a leaf when an insert takes it past [`LEAF`] keys, into the lower
/// [`KEPT`] and the upper [`MOVED`]; the lower leaf then takes only keys below the split.
/// Most keys the relay writes only grow (delivery seqs, time-ordered event ids): written in
/// ascending order, they leave every leaf behind them with 9 keys and cost a split every 9
/// inserts. See [`leaf_order`] for the order that fills leaves instead.
const LEAF: usize = 16;
const KEPT: usize = 9;
const MOVED: usize = LEAF + 1 - KEPT;

/// The order in which a table's `n` keys (sorted, index 0 the first) go into sled: in blocks
/// of [`LEAF`] sorted keys (one full leaf each), the first [`KEPT`] keys of block 0 and the
/// first [`MOVED`] of block 1, so the leaf they fill splits exactly between the two blocks;
/// then, for each block `b`, its last keys (which top its leaf up to [`LEAF`]), then the next
/// key of block `b + 1` and the first [`MOVED`] of block `b + 2`, which make the next split
/// fall between blocks `b + 1` and `b + 2`. Every index comes once. Leaves end with about
/// 15.9 keys (the test below counts them) where ascending order leaves 9: 40 % fewer leaves,
/// so fewer splits (the larger part of the applier's work), less for sled to write, and a
/// smaller page table for sled to keep in memory and to read back at opening.
fn leaf_order(n: usize) -> Vec<usize> {
    let part = |block: usize, from: usize, to: usize| {
        let start = block * LEAF;
        (start + from).min(n)..(start + to).min(n)
    };
    let mut order = Vec::with_capacity(n);
    order.extend(part(0, 0, KEPT));
    order.extend(part(1, 0, MOVED));
    for block in 0..n.div_ceil(LEAF) {
        order.extend(part(block, KEPT, LEAF));
        order.extend(part(block + 1, MOVED, KEPT));
        order.extend(part(block + 2, 0, MOVED));
    }
    order
}

/// Writes a frozen table into sled (in [`leaf_order`]; new deliveries' pending keys packed,
/// see [`Packs`]), then the LSN it reaches. The order of the table's keys is free: each is
/// written once, and a crash midway is replayed whole.
fn apply(db: &sled::Db, packs: &Packs, table: &Table) -> sled::Result<()> {
    let writes = table.writes();
    let writes: Vec<(&Vec<u8>, &Slot)> = writes.iter().collect();
    let ordered = leaf_order(writes.len()).into_iter().map(|i| {
        let (key, slot) = writes[i];
        (key.as_slice(), slot)
    });
    packs.write(db, ordered, true)?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::store::sled::memtable::Memtables;

    /// Guards against a write lost or doubled by the order: every index once, for every
    /// table size up to five blocks and a few larger ones.
    #[test]
    fn the_order_takes_every_key_once() {
        for n in (0..=5 * LEAF + 3).chain([1000, 1600, 4097]) {
            let mut order = leaf_order(n);
            assert_eq!(order.len(), n, "{n} keys");
            order.sort_unstable();
            assert!(order.iter().copied().eq(0..n), "{n} keys");
        }
    }

    /// The leaves of sled's tree and the keys they hold, from its debug listing (one line per
    /// node, the leaves' level last).
    fn leaves(db: &sled::Db) -> usize {
        let listing = format!("{:?}", &**db);
        let last_level = listing.rfind("\tlevel ").expect("sled lists its levels");
        listing[last_level..]
            .lines()
            .filter(|l| l.starts_with("\t\t"))
            .count()
    }

    /// Guards the order in which the applier writes a table ([`leaf_order`]): 4,800 delivery
    /// records, applied 1,600 per table as the applier does, fill sled's leaves to 15 keys
    /// or more each. (Seen failing with the tables applied in ascending order: 9.0 keys per
    /// leaf.)
    #[test]
    fn growing_keys_fill_sleds_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sled::recovery::open_sled(dir.path()).unwrap();
        let mem = Memtables::default();
        for table in 0..3u64 {
            let writes: BTreeMap<Vec<u8>, Slot> = (table * 1600..(table + 1) * 1600)
                .map(|seq| (keys::delivery(seq).to_vec(), Slot::Fresh(vec![7; 200])))
                .collect();
            mem.publish(writes, table + 1);
            let frozen = mem.freeze(Duration::ZERO, true).expect("a table to apply");
            apply(&db, &Packs::default(), &frozen).unwrap();
            mem.applied();
        }
        assert_eq!(db.scan_prefix(b"L").count(), 4800);
        let leaves = leaves(&db);
        // A leaf holds at most 17 keys (sled splits it on the next visit), so fewer leaves
        // than that would be a miscount.
        assert!(leaves >= 4800 / 17, "{leaves} leaves for 4,800 keys");
        let per_leaf = 4800.0 / leaves as f64;
        assert!(
            per_leaf >= 15.0,
            "{leaves} leaves for 4,800 keys: {per_leaf:.1} keys per leaf"
        );
    }
}
