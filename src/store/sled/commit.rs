//! Group commit, and what happens when it fails.
//!
//! One writer thread makes every change. Request handlers and delivery lanes send it an
//! operation ([`Op`]) and wait for the answer; it takes everything queued (waiting a moment
//! for more while callers are many, [`Gather`]), turns each operation
//! into a log record (its key writes, [`Batch`]) and the changes it makes to the in-memory
//! queue ([`Effect`]s), writes the records, syncs the log once for the whole group, and then
//! makes the group visible: the writes go to the active memtable (readers see them from then
//! on), the effects to the queue, and every caller gets its answer. sled gets the writes later,
//! from the applier ([`super::apply`]). Because one thread owns every write, read-then-write
//! steps (is this a duplicate? is this delivery still pending?) need no locks.
//!
//! Failure policy:
//! - an operation that fails before its record is written leaves nothing: its writes never join
//!   the group, and the counters and sequence numbers it moved are restored;
//! - a group whose records cannot be written is cut off the log again and refused: every caller
//!   gets the error (a 503 for a sender, which retries), nothing of it is visible;
//! - a failed sync of the log, a failed cut after a failed write, or a new segment whose
//!   directory entry cannot be synced is fatal: what the disk holds is unknown, and a failed
//!   `fdatasync` is never tried again as if it could succeed later. The store stops (every
//!   later operation fails) and reports it ([`Failure`]); `hookrelay serve` exits non-zero, and
//!   the restart replays what the log really holds;
//! - once a group's sync succeeded nothing of it is ever undone. Everything after the sync is
//!   in memory and cannot fail, except moving it into sled, which the applier does: a failure
//!   there is fatal in the same way.

use super::key_state::StateWrite;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::memtable::{self, Slot};
use super::queue::{Effect, KeyHash};
use super::recovery::Manifest;
use super::wal::{self, Lsn, Pointer, SyncError, Wal};
use super::Shared;
use crate::store::{
    Attempt, Delivery, EventOutcome, IngestBatch, NewDelivery, Next, Prune, Pruned, Seq,
    StoreError, TargetCounts, TargetId, TargetState,
};

/// How many queued operations one group commit takes at most.
pub const MAX_GROUP: usize = 4096;

/// A write group that takes this long is logged with where its time went.
const SLOW_GROUP: Duration = Duration::from_millis(250);

pub enum Op {
    Ingest(IngestBatch),
    Finish {
        /// Boxed, as is `state`: the largest operation sets the size of every queued one.
        delivery: Box<Delivery>,
        attempt: Attempt,
        next: Next,
        /// A key's state value written in the same record (`Store::finish_with_key_state`).
        state: Option<Box<StateWrite>>,
    },
    Targets(Vec<String>),
    SetState(TargetId, TargetState),
    Replay(Vec<Seq>, u64),
    Prune(Prune),
    Redeliver(uuid::Uuid, Vec<NewDelivery>, u64),
    /// Copies these bodies (event key, where the body lies) to the end of the log, for those
    /// events still pointing there.
    Relocate(Vec<(Vec<u8>, Pointer)>),
    /// Takes a pending delivery that cannot be delivered (its record is missing or no longer
    /// pending) out of the queue for good.
    Forget {
        seq: Seq,
        target: TargetId,
        key: KeyHash,
    },
    /// Traffic shaping's write (`Store::finish_shaped`), boxed like `Finish`'s parts.
    Shaped(Box<crate::store::Shaped>),
    Ping,
    Close,
    /// Stops the writer on the spot, as a crash would.
    #[cfg(test)]
    Crash,
    /// Holds the writer, in the middle of its group, until a message comes or the sender is
    /// dropped.
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

pub enum Reply {
    Ingest(Vec<EventOutcome>),
    Targets(Vec<TargetId>),
    Seqs(Vec<Seq>),
    Pruned(Pruned),
    Count(usize),
    Done,
}

pub struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// A caller waiting for its operation's result, and that result.
type Answer = (
    oneshot::Sender<Result<Reply, StoreError>>,
    Result<Reply, StoreError>,
);

/// The fatal-failure state of a store: set once, never cleared in this process.
#[derive(Default)]
pub struct Failure {
    cause: std::sync::OnceLock<String>,
    notify: tokio::sync::Notify,
}

impl Failure {
    /// Stops the store: logged once, reported to [`Failure::wait`], and every later write
    /// fails with [`StoreError::Failed`].
    pub fn fail(&self, stage: &str, error: &dyn std::fmt::Display) {
        let cause = format!("{stage}: {error}");
        if self.cause.set(cause.clone()).is_ok() {
            tracing::error!(
                stage,
                error = %error,
                "the store stopped: it cannot know what the disk holds; restart the relay, \
                 which replays the write-ahead log"
            );
            self.notify.notify_waiters();
        }
    }

    pub fn check(&self) -> Result<(), StoreError> {
        match self.cause.get() {
            Some(c) => Err(StoreError::Failed(c.clone())),
            None => Ok(()),
        }
    }

    /// Resolves with the cause once the store has stopped.
    pub async fn wait(&self) -> String {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.cause.get() {
                return c.clone();
            }
            notified.await;
        }
    }
}

/// The writes and queue changes of one operation: they join the group only if the whole
/// operation succeeds.
#[derive(Default)]
pub struct Batch {
    pub writes: Vec<(Vec<u8>, Slot)>,
    pub effects: Vec<Effect>,
    /// Events to list in the group's pruning index (see [`super::prune::Ended`]).
    pub ended: Vec<(super::prune::EndedAs, u64, uuid::Uuid)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Slot::Put(value.into())));
    }

    /// Inserts a key that nothing holds yet (a new delivery's keys).
    pub fn insert_new(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Slot::Fresh(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Slot::Remove));
    }

    /// Lists `event` in the pruning index: a delivery of it ended at `ms` (or it was stored
    /// with none then).
    pub fn ended(&mut self, as_: super::prune::EndedAs, ms: u64, event: uuid::Uuid) {
        self.ended.push((as_, ms, event));
    }
}

/// The writer thread's state. It is the only code that writes.
pub struct Writer {
    pub shared: Arc<Shared>,
    pub wal: Wal,
    pub path: PathBuf,
    pub next_seq: Seq,
    /// Per-target counters as last written; dropped on a failed operation so they are read
    /// again.
    pub counts: HashMap<TargetId, TargetCounts>,
    /// Live event bodies per log segment, as last written (`G` keys).
    pub live: HashMap<Lsn, u64>,
    /// Writes of the current group by key, and its queue changes, in order.
    pub writes: BTreeMap<Vec<u8>, Slot>,
    pub effects: Vec<Effect>,
    /// `next_seq` when the current group began: restored if the group is refused.
    pub group_seq: Seq,
    /// What the manifest says, and when it was written.
    pub manifest_seq: Seq,
    pub manifest_at: Instant,
    /// A cleared buffer for the next record's ops.
    pub ops: Vec<u8>,
    /// Where pruning's next sweeps of dedup keys and dead letters start.
    pub sweeps: super::prune::Sweeps,
    /// The group's additions to the pruning index, written as its last record.
    pub ended: super::prune::Ended,
    /// Stops and joins the applier (at close).
    pub applier: Option<super::apply::Handle>,
    pub gather: Gather,
}

/// Moves what is queued into `jobs`, up to [`MAX_GROUP`].
fn take_queued(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// How long the writer gathers a group before it syncs it.
///
/// A sync costs about the same whether it makes one operation durable or a hundred. Syncing
/// as soon as something is queued gave a sync per 7 events (each two operations: its ingest
/// and its delivery's outcome) under wrk's flood on the 2-core machine of BENCHMARKS.md,
/// about 1,000 syncs a second, and the syncs took 44 % of the writer's CPU. So when the
/// group the writer takes holds at least `min_group` operations (they queued during the
/// previous sync: many callers are writing at once), it waits a `slice` and takes what
/// queued meanwhile, again until a slice brings nothing or `window` has passed, and only then
/// syncs. A smaller group is synced at once, so one client's request is not held back by the
/// few outcomes of its own deliveries it meets in a group (gathering from two operations on
/// doubled one connection's latency at times, 0.8 – 2.1 ms against 0.7 – 1.1 ms at the
/// median; a lone operation is never held, whatever `min_group` says). Like
/// PostgreSQL's `commit_delay`, which waits only while `commit_siblings` other transactions
/// are active. The defaults, 1 ms in slices of 250 µs from 6 operations, were chosen by
/// measurement (BENCHMARKS.md); a wait adds at most `window` to an acknowledgement.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    pub window: Duration,
    pub slice: Duration,
    pub min_group: usize,
}

impl Default for Gather {
    fn default() -> Self {
        Gather {
            window: Duration::from_millis(1),
            slice: Duration::from_micros(250),
            min_group: 6,
        }
    }
}

/// Operations that read with range scans, which do not show the group's writes: the group so
/// far is completed before they run. All are rare (startup, pruning).
fn needs_settled_store(op: &Op) -> bool {
    matches!(op, Op::Targets(_) | Op::Prune(_) | Op::Close)
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        let mut results: Vec<Answer> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            take_queued(&mut rx, &mut jobs);
            self.gather(&mut rx, &mut jobs);
            #[cfg(test)]
            if jobs.iter().any(|j| matches!(j.op, Op::Crash)) {
                self.shared.failure.fail("test", &"crash");
                return;
            }
            if let Err(e) = self.shared.failure.check() {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
            self.shared.mem.wait_for_room();
            if let Err(e) = self.wal.prepare() {
                self.fatal("beginning a log segment", &e);
                let e = self.shared.failure.check().expect_err("failed");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
            let mut close = false;
            for mut job in jobs.drain(..) {
                if needs_settled_store(&job.op) && !results.is_empty() {
                    self.end_group(&mut results);
                }
                close |= matches!(job.op, Op::Close);
                if let Op::Ingest(batch) = &mut job.op {
                    self.write_bodies(batch);
                }
                let result = self.apply(job.op);
                results.push((job.reply, result));
            }
            self.end_group(&mut results);
            if close {
                // Nothing more is taken; whoever still waits is answered.
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(StoreError::Closed));
                }
                self.close();
                return;
            }
            self.retire_segments();
        }
        // Every handle to the store is gone without a close: close up all the same.
        self.close();
    }

    /// Waits a little for more operations before the group is synced, when callers are many:
    /// see [`Gather`].
    fn gather(&mut self, rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
        let gather = self.gather;
        if jobs.len() < gather.min_group.max(2) || gather.window.is_zero() {
            return;
        }
        let deadline = Instant::now() + gather.window;
        while jobs.len() < MAX_GROUP {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(gather.slice.min(deadline - now));
            let before = jobs.len();
            take_queued(rx, jobs);
            if jobs.len() == before {
                break;
            }
        }
    }

    fn fatal(&mut self, stage: &str, error: &dyn std::fmt::Display) {
        self.shared.failure.fail(stage, error);
        self.writes.clear();
        self.effects.clear();
        self.ended.clear();
    }

    /// Makes the group durable, makes it visible and answers it (see the module docs).
    fn end_group(&mut self, results: &mut Vec<Answer>) {
        self.write_ended();
        let started = Instant::now();
        let keys = self.writes.len();
        let synced = self.wal.sync();
        let took = started.elapsed();
        let error = match synced {
            Ok(()) => {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                let ops = results.len() as u64;
                self.shared.synced_ops.fetch_add(ops, Ordering::Relaxed);
                let writes = std::mem::take(&mut self.writes);
                self.shared.mem.publish(writes, self.wal.last_lsn());
                let mut queue = self.shared.queue();
                for effect in self.effects.drain(..) {
                    queue.apply(effect);
                }
                None
            }
            Err(SyncError::Refused(e)) => {
                tracing::error!(error = %e, "store write failed; the group is refused");
                self.writes.clear();
                self.effects.clear();
                self.ended.clear();
                self.counts.clear();
                self.live.clear();
                self.next_seq = self.group_seq;
                Some(StoreError::Io(sled::Error::Io(e)))
            }
            Err(e @ SyncError::Fatal(_)) => {
                self.fatal("syncing the write-ahead log", &e);
                Some(self.shared.failure.check().expect_err("failed"))
            }
        };
        if took >= SLOW_GROUP {
            // Every acknowledgement in the group waited this long.
            tracing::warn!(
                ms = took.as_millis() as u64,
                keys,
                requests = results.len(),
                "slow store write"
            );
        }
        self.group_seq = self.next_seq;
        for (reply, result) in results.drain(..) {
            let result = match (&error, result) {
                (Some(e), Ok(_)) => Err(e.clone()),
                (_, r) => r,
            };
            let _ = reply.send(result);
        }
        // After the answers, so it never delays an acknowledgement; only what the log made
        // durable is recorded.
        if error.is_none()
            && self.next_seq != self.manifest_seq
            && self.manifest_at.elapsed() >= Duration::from_secs(1)
        {
            self.write_manifest();
        }
    }

    fn write_manifest(&mut self) {
        match Manifest::write(&self.path, self.next_seq) {
            Ok(()) => self.manifest_seq = self.next_seq,
            Err(e) => tracing::warn!(error = %e, "could not update the store manifest"),
        }
        self.manifest_at = Instant::now();
    }

    /// Reads a key as the group so far has left it.
    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.value().map(sled::IVec::from));
        }
        self.shared.mem.get(&self.shared.db, key)
    }

    /// Adds the request's event bodies to the log, and has each event store a pointer to its
    /// body instead: the bodies are synced with the group, before anything points at them.
    fn write_bodies(&mut self, batch: &mut IngestBatch) {
        for event in &mut batch.events {
            let pointer = self.wal.append_body(&event.encoded);
            event.encoded = pointer.entry([]);
        }
    }

    /// Deletes the log segments that a checkpoint covers and no live event points into.
    fn retire_segments(&mut self) {
        let checkpoint = self.shared.checkpointed();
        let (wal, live, shared) = (&mut self.wal, &self.live, &self.shared);
        wal.retire(checkpoint, |segment| match live.get(&segment) {
            Some(n) => *n > 0,
            // Not cached: ask the store, and keep the segment if in doubt.
            None => shared
                .mem
                .get(&shared.db, &super::keys::live_bodies(segment))
                .map_or(true, |v| v.is_some()),
        });
    }

    /// A clean stop: the applier moves everything into sled and flushes it, then the log
    /// segments sled no longer needs are deleted and the manifest written.
    fn close(&mut self) {
        if let Some(applier) = self.applier.take() {
            applier.stop();
        }
        if self.shared.failure.check().is_ok() {
            self.retire_segments();
            if self.next_seq != self.manifest_seq {
                self.write_manifest();
            }
        }
    }

    /// Adds `batch` to the group as the next log record.
    pub fn commit(&mut self, batch: Batch) {
        self.effects.extend(batch.effects);
        self.ended.add(batch.ended);
        if batch.writes.is_empty() {
            // Nothing to log (records are never empty: an empty one reads as the log's end).
            return;
        }
        let lsn = self.wal.last_lsn() + 1;
        let mut ops = std::mem::take(&mut self.ops);
        for (key, write) in &batch.writes {
            match write.value() {
                Some(v) => wal::put_insert(&mut ops, key, v),
                None => wal::put_remove(&mut ops, key),
            }
        }
        self.wal.append(lsn, &ops);
        ops.clear();
        self.ops = ops;
        for (key, write) in batch.writes {
            memtable::put(&mut self.writes, key, write);
        }
    }

    /// Runs one operation. One that fails leaves nothing behind: its writes never reach the
    /// group, the counters it may have moved are read again, and its sequence numbers are
    /// given out again.
    fn apply(&mut self, op: Op) -> Result<Reply, StoreError> {
        let next_seq = self.next_seq;
        let result = self.apply_op(op);
        if result.is_err() {
            self.counts.clear();
            self.live.clear();
            self.next_seq = next_seq;
        }
        result
    }

    fn apply_op(&mut self, op: Op) -> Result<Reply, StoreError> {
        match op {
            Op::SetState(target, state) => {
                let mut batch = Batch::default();
                batch.insert(
                    super::keys::target_prefix(b'S', target).as_slice(),
                    super::to_json(&state),
                );
                self.commit(batch);
                Ok(Reply::Done)
            }
            Op::Replay(seqs, now) => self.replay(seqs, now).map(Reply::Count),
            Op::Prune(p) => self.prune(p).map(Reply::Pruned),
            Op::Redeliver(event, deliveries, now) => {
                self.redeliver(event, deliveries, now).map(Reply::Seqs)
            }
            Op::Relocate(bodies) => self.relocate(bodies).map(Reply::Count),
            Op::Forget { seq, target, key } => {
                let mut batch = Batch::default();
                batch.remove(super::keys::pending(seq).as_slice());
                batch.effects.push(Effect::Remove { target, key, seq });
                self.commit(batch);
                Ok(Reply::Done)
            }
            Op::Ping | Op::Close => Ok(Reply::Done),
            Op::Ingest(batch) => self.ingest(batch).map(Reply::Ingest),
            Op::Finish {
                delivery,
                attempt,
                next,
                state,
            } => self
                .finish(&delivery, attempt, next, state)
                .map(|_| Reply::Done),
            Op::Targets(names) => self.targets(&names).map(Reply::Targets),
            Op::Shaped(shaped) => self.finish_shaped(*shaped).map(|_| Reply::Done),
            #[cfg(test)]
            Op::Crash => unreachable!("the writer stops before a crash is applied"),
            #[cfg(test)]
            Op::Hold(until) => {
                let _ = until.recv();
                Ok(Reply::Done)
            }
        }
    }
}
