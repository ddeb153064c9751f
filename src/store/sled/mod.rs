//! The embedded store: a write-ahead log in front of a sled database, for one relay instance.
//!
//! | file | job |
//! |---|---|
//! | [`wal`] | the log: segments, records, sync, replay, the torn-tail policy |
//! | `commit` | group commit on the writer thread, and the failure policy |
//! | `ops`, `prune` | what each operation writes and changes in the queue |
//! | `queue` | pending deliveries in memory: per-key FIFOs and the ready index (pure logic) |
//! | `memtable` | writes that are durable but not yet in sled, which every read sees |
//! | `apply` | the applier: memtables into sled, and checkpoints |
//! | `packs` | how sled holds pending keys: those of new deliveries packed, many to a sled key |
//! | `compact` | log compaction |
//! | `recovery` | opening: manifest and format version, replay, rebuilding the queue |
//! | `read` | the read views |
//! | `event_log` | the event log newest first, with filters and a budget |
//! | `keys` | the key layout |
//!
//! The path of a write: a request's operation goes to the writer thread, which appends it to
//! the log with everything else queued, syncs the log once (group commit), and then answers;
//! that is all an acknowledgement waits for. The writes are visible from then on through the
//! memtables, and reach sled from the applier moments later; the queue of pending deliveries
//! lives in memory and is rebuilt at opening from the pending-delivery keys, in the background
//! (claims wait for it; writes do not).

mod apply;
mod commit;
mod compact;
mod event_log;
mod key_state;
mod keys;
mod memtable;
mod ops;
mod packs;
mod prune;
mod queue;
mod read;
mod recovery;
mod shaping;
#[cfg(test)]
mod tests;
mod wal;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::normalize::Event;
use crate::store::{
    Attempt, Claim, Delivery, EventOutcome, EventPage, EventQuery, IngestBatch, NewDelivery, Next,
    Prune, Pruned, RateLimit, Seq, Shaped, Stats, Store, StoreError, TargetCounts, TargetId,
    TargetState,
};
use commit::{Failure, Job, Op, Reply, Writer};
use queue::{Claimed, Queue};

pub use commit::Gather;
pub use recovery::Manifest;

/// Where the write-ahead log lives, inside the store's directory.
const WAL_DIR: &str = "hookrelay-wal";

/// How often the log is compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// What the writer, the applier, the compactor and readers share.
pub(crate) struct Shared {
    db: sled::Db,
    /// The store's directory, where sled keeps its files.
    dir: PathBuf,
    mem: memtable::Memtables,
    queue: Mutex<Queue>,
    /// Whether the queue has been read at opening (see `recovery::load_queue`).
    loaded: tokio::sync::watch::Sender<recovery::Load>,
    /// Names ordering keys in the queue (see `queue`).
    hasher: std::collections::hash_map::RandomState,
    segments: Arc<wal::Segments>,
    failure: Failure,
    /// The last LSN applied to sled, and the last one a checkpoint made durable there.
    applied: AtomicU64,
    checkpointed: AtomicU64,
    /// Log syncs that succeeded, and the operations of the groups they synced.
    syncs: AtomicU64,
    synced_ops: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied(&self) -> wal::Lsn {
        self.applied.load(Ordering::Acquire)
    }

    fn set_applied(&self, lsn: wal::Lsn) {
        self.applied.store(lsn, Ordering::Release);
    }

    fn checkpointed(&self) -> wal::Lsn {
        self.checkpointed.load(Ordering::Acquire)
    }

    fn set_checkpointed(&self, lsn: wal::Lsn) {
        self.checkpointed.store(lsn, Ordering::Release);
    }
}

pub struct SledStore {
    shared: Arc<Shared>,
    path: PathBuf,
    tx: mpsc::Sender<Job>,
    /// The targets' rate limits, in memory: every lane of a target is in this process.
    limiter: crate::store::rate::Limiter,
    /// Joined on close, so the directory lock is released when `close` returns.
    threads: Mutex<Option<(std::thread::JoinHandle<()>, compact::Handle)>>,
}

/// Log segment sizes, how often the log is compacted, and how long a write group gathers.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub segment_bytes: u64,
    pub compact_every: Duration,
    pub gather: commit::Gather,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: wal::SEGMENT_BYTES,
            compact_every: COMPACT_EVERY,
            gather: commit::Gather::default(),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `path` and starts its threads. Refuses a store of a
    /// format this build does not know, and one that holds less than its manifest says was
    /// durably written (see [`Manifest`]).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_inner(path, false, LogOptions::default())
    }

    /// Opens with other log segment sizes and compaction intervals.
    pub fn open_with_log(path: &Path, log: LogOptions) -> Result<SledStore, StoreError> {
        Self::open_inner(path, false, log)
    }

    fn open_inner(
        path: &Path,
        accept_damage: bool,
        log: LogOptions,
    ) -> Result<SledStore, StoreError> {
        let opened = recovery::open(path, accept_damage, &log)?;
        let shared = Arc::new(Shared {
            db: opened.db,
            dir: path.to_path_buf(),
            mem: memtable::Memtables::new(opened.packs),
            queue: Mutex::new(Queue::loading()),
            loaded: tokio::sync::watch::Sender::new(recovery::Load::Reading),
            hasher: std::collections::hash_map::RandomState::new(),
            segments: opened.segments,
            failure: Failure::default(),
            applied: AtomicU64::new(opened.last_lsn),
            checkpointed: AtomicU64::new(opened.last_lsn),
            syncs: AtomicU64::new(0),
            synced_ops: AtomicU64::new(0),
        });
        let loader = recovery::load_queue(shared.clone()).map_err(io_error)?;
        let (tx, rx) = mpsc::channel(commit::MAX_GROUP);
        let applier = apply::start(shared.clone(), loader).map_err(io_error)?;
        let compactor = compact::Compactor {
            shared: shared.clone(),
            dir: path.join(WAL_DIR),
            writer: tx.downgrade(),
            every: log.compact_every,
            scanned: HashMap::new(),
        }
        .start()
        .map_err(io_error)?;
        let writer = Writer {
            shared: shared.clone(),
            wal: opened.wal,
            path: path.to_path_buf(),
            next_seq: opened.next_seq,
            counts: HashMap::new(),
            live: opened.live,
            writes: BTreeMap::new(),
            effects: Vec::new(),
            group_seq: opened.next_seq,
            manifest_seq: opened.next_seq,
            manifest_at: std::time::Instant::now(),
            ops: Vec::new(),
            sweeps: prune::Sweeps::default(),
            ended: prune::Ended::default(),
            applier: Some(applier),
            gather: log.gather,
        };
        let writer = std::thread::Builder::new()
            .name("hookrelay-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io_error)?;
        Ok(SledStore {
            shared,
            path: path.to_path_buf(),
            tx,
            limiter: Default::default(),
            threads: Mutex::new(Some((writer, compactor))),
        })
    }

    async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Why the writer is gone: it stopped on a failure, or the store was closed.
    fn closed(&self) -> StoreError {
        self.shared
            .failure
            .check()
            .err()
            .unwrap_or(StoreError::Closed)
    }

    /// Since opening: the log syncs that succeeded, and the operations of the groups they
    /// synced (the mean write group is their ratio; see [`Gather`]).
    pub fn log_syncs(&self) -> (u64, u64) {
        (
            self.shared.syncs.load(Ordering::Relaxed),
            self.shared.synced_ops.load(Ordering::Relaxed),
        )
    }

    /// Resolves with the cause if the store stops on a failure it cannot recover from while
    /// running (see `commit`): the process should then exit non-zero.
    pub async fn failed(&self) -> String {
        self.shared.failure.wait().await
    }

    /// Opens the closed database in `path` once more and closes it again; for after a clean
    /// stop, once nothing holds the store. sled 0.34 rebuilds its page table at opening by
    /// reading everything it wrote since it last opened, and writes its snapshot only then:
    /// after a busy run the next start would spend seconds there (1.9 s with a million
    /// deliveries pending). Done at the stop, when nothing waits on the relay, the next start
    /// reads the snapshot instead. Returns how long it took.
    pub fn settle(path: &Path) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        drop(recovery::open_sled(path)?);
        Ok(started.elapsed())
    }

    /// Moves everything into sled, flushes it and stops the store's threads; later writes
    /// fail with [`StoreError::Closed`]. The database itself closes when the last handle to
    /// this store is dropped.
    pub async fn close(&self) -> Result<(), StoreError> {
        let result = match self.submit(Op::Close).await {
            Ok(_) | Err(StoreError::Closed) => Ok(()),
            Err(e) => Err(e),
        };
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((writer, compactor)) = threads {
            let _ = tokio::task::spawn_blocking(move || {
                compactor.stop();
                writer.join()
            })
            .await;
        }
        result.and(self.shared.failure.check())
    }

    /// Bytes the database and its log take on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0)
            + wal::Wal::size_on_disk(&self.path.join(WAL_DIR))
    }

    #[cfg(test)]
    async fn crash(&self) {
        let _ = self.submit(Op::Crash).await;
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // The writer stops once every sender is gone (it closes up on its own); the compactor
        // holds the database open, so it is stopped here.
        if let Some((_, compactor)) = self.threads.get_mut().ok().and_then(Option::take) {
            compactor.stop();
        }
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Io(sled::Error::Io(e))
}

fn decode_delivery(seq: Seq, v: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("delivery {seq}: {e}")))
}

/// Delivery `seq` as `get` reads the store: while it is pending, its pending key says whether
/// it has a record of its own (it was attempted or changed) or stands for one; once it has
/// ended, its record. One key for a delivery never attempted, the common read under a backlog.
/// A reader other than the writer can see a group land between its two reads; whatever it
/// finds then is still a state the delivery was in: a group that ends a delivery or gives it
/// its record writes the record with the pending key.
fn delivery_with(
    seq: Seq,
    get: impl Fn(&[u8]) -> Result<Option<sled::IVec>, StoreError>,
) -> Result<Option<Delivery>, StoreError> {
    if let Some(v) = get(&keys::pending(seq))? {
        let pending = keys::Pending::parse(&v)
            .ok_or_else(|| StoreError::Corrupt(format!("pending delivery {seq} is malformed")))?;
        if !pending.recorded {
            return Ok(Some(pending.record(seq)));
        }
    }
    match get(&keys::delivery(seq))? {
        Some(v) => decode_delivery(seq, &v).map(Some),
        None => Ok(None),
    }
}

fn counts_of_value(v: &[u8]) -> TargetCounts {
    if v.len() != 16 {
        return TargetCounts::default();
    }
    TargetCounts {
        pending: keys::seq_of(&v[..8]).unwrap_or(0),
        dead: keys::seq_of(&v[8..]).unwrap_or(0),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

impl SledStore {
    async fn finish_op(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Box<key_state::StateWrite>>,
    ) -> Result<(), StoreError> {
        let result = self
            .submit(Op::Finish {
                delivery: Box::new(delivery.clone()),
                attempt,
                next,
                state,
            })
            .await;
        if result.is_err() {
            // The outcome was not recorded: the delivery is due again as it was.
            self.release(delivery.seq);
        }
        result.map(|_| ())
    }

    async fn submit_count(&self, op: Op) -> Result<usize, StoreError> {
        match self.submit(op).await? {
            Reply::Count(n) => Ok(n),
            _ => unreachable!("writer answers with a count"),
        }
    }
}

impl SledStore {
    /// Takes a head from the queue with `pick` and reads its record. A head whose record is
    /// missing, unreadable or no longer pending is logged and taken out of the queue for good
    /// (one bad record must not hold up the target), and the next one is tried.
    async fn claim_with(
        &self,
        target: TargetId,
        pick: impl Fn(&mut Queue) -> Claimed,
    ) -> Result<Claim, StoreError> {
        self.queue_loaded().await?;
        loop {
            let (claimed, fresh) = {
                let mut queue = self.shared.queue();
                let claimed = pick(&mut queue);
                let fresh = match claimed {
                    Claimed::Due { seq, .. } => queue.take_fresh(seq),
                    _ => None,
                };
                (claimed, fresh)
            };
            let (seq, key) = match claimed {
                Claimed::Due { seq, key } => (seq, key),
                Claimed::Wait(due) => return Ok(Claim::Wait(due)),
                Claimed::Empty => return Ok(Claim::Empty),
            };
            let read = match fresh {
                Some(record) => Ok(Some(record)),
                None => self.read_delivery(seq),
            };
            let problem = match read {
                Ok(Some(d)) if d.state == crate::store::DeliveryState::Pending => {
                    return Ok(Claim::Due(d))
                }
                Ok(Some(d)) => format!("its record says {:?}", d.state),
                Ok(None) => "its record is missing".to_owned(),
                Err(e @ StoreError::Corrupt(_)) => e.to_string(),
                Err(e) => {
                    self.release(seq);
                    return Err(e);
                }
            };
            tracing::error!(
                seq,
                target,
                problem,
                "a queued delivery cannot be delivered; it leaves the queue"
            );
            if let Err(e) = self.submit(Op::Forget { seq, target, key }).await {
                self.release(seq);
                return Err(e);
            }
        }
    }
}

impl Store for SledStore {
    async fn target_ids(&self, names: &[String]) -> Result<Vec<TargetId>, StoreError> {
        match self.submit(Op::Targets(names.to_vec())).await? {
            Reply::Targets(ids) => Ok(ids),
            _ => unreachable!("writer answers Targets with Targets"),
        }
    }

    async fn ingest(&self, batch: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        match self.submit(Op::Ingest(batch)).await? {
            Reply::Ingest(outcomes) => Ok(outcomes),
            _ => unreachable!("writer answers Ingest with Ingest"),
        }
    }

    async fn claim(&self, target: TargetId, now_ms: u64) -> Result<Claim, StoreError> {
        self.claim_with(target, |q| q.claim(target, now_ms)).await
    }

    async fn claim_probe(&self, target: TargetId, after: Seq) -> Result<Claim, StoreError> {
        self.claim_with(target, |q| q.claim_after(target, after))
            .await
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        self.finish_op(delivery, attempt, next, None).await
    }

    async fn key_state(
        &self,
        target: TargetId,
        ordering_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key_state::key(target, ordering_key);
        let value = self.shared.mem.get(&self.shared.db, &key)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn finish_with_key_state(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let write = key_state::with_finish(delivery.target, &delivery.ordering_key, state);
        self.finish_op(delivery, attempt, next, Some(Box::new(write)))
            .await
    }

    fn release(&self, seq: Seq) {
        self.shared.queue().release(seq);
    }

    async fn key_backlog(
        &self,
        head: &Delivery,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read_key_backlog(head, limit)
    }

    async fn finish_shaped(&self, shaped: Shaped) -> Result<(), StoreError> {
        let head = shaped.head.seq;
        let result = self.submit(Op::Shaped(Box::new(shaped))).await;
        if result.is_err() {
            // Nothing was recorded: the key's deliveries are due again as they were.
            self.release(head);
        }
        result.map(|_| ())
    }

    async fn rate_take(
        &self,
        target: TargetId,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.limiter.take(target, limit, now_ms))
    }

    async fn rate_pause(
        &self,
        target: TargetId,
        limit: RateLimit,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        self.limiter.pause(target, limit, until_ms);
        Ok(())
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        self.read_event(id)
    }

    async fn delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        self.read_delivery(seq)
    }

    async fn deliveries_of(&self, event: uuid::Uuid) -> Result<Vec<Delivery>, StoreError> {
        self.read_deliveries_of(event)
    }

    async fn attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        self.read_attempts(seq)
    }

    async fn dead_letters(&self, target: TargetId) -> Result<Vec<Delivery>, StoreError> {
        self.read_dead_letters(target, 0, u64::MAX, usize::MAX)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.submit(Op::Ping).await.map(|_| ())
    }

    async fn target_state(&self, target: TargetId) -> Result<Option<TargetState>, StoreError> {
        self.read_target_state(target)
    }

    async fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> Result<(), StoreError> {
        self.submit(Op::SetState(target, state)).await.map(|_| ())
    }

    async fn counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        self.read_counts(target)
    }

    async fn oldest_pending_ms(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        self.queue_loaded().await?;
        self.read_oldest_pending(target)
    }

    async fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_events_page(after, limit)
    }

    async fn event_log(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.read_event_log(&query).await
    }

    async fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read_dead_letters(target, since_ms, until_ms, limit)
    }

    async fn prune(&self, limits: Prune) -> Result<Pruned, StoreError> {
        match self.submit(Op::Prune(limits)).await? {
            Reply::Pruned(p) => Ok(p),
            _ => unreachable!("writer answers Prune with Pruned"),
        }
    }

    async fn replay(&self, seqs: Vec<Seq>, now_ms: u64) -> Result<usize, StoreError> {
        self.submit_count(Op::Replay(seqs, now_ms)).await
    }

    async fn redeliver(
        &self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        match self
            .submit(Op::Redeliver(event, deliveries, now_ms))
            .await?
        {
            Reply::Seqs(s) => Ok(s),
            _ => unreachable!("writer answers Redeliver with Seqs"),
        }
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.read_stats()
    }
}
