//! The sled implementation of [`Store`].
//!
//! All writes go through one writer thread. Request handlers and workers send it an operation
//! and wait for the reply; it drains everything queued, appends each operation's writes to the
//! write-ahead log ([`super::wal`]) as one record, syncs the log once for the whole group,
//! applies the group to sled, and only then answers. Concurrent requests therefore share a
//! single `fdatasync` (group commit), and because one thread owns every write, the
//! read-then-write steps (dedup checks, "does this ordering key have a head yet?") need no
//! locks or transactions. sled itself is flushed by a checkpoint thread about once a second,
//! off the acknowledgement path; if the log cannot be written, the group is refused.
//!
//! Reads (claims, event loads, inspection) go straight to sled from the calling task, and to
//! the short-lived keys the writer holds in memory before sled gets them ([`super::overlay`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::key_state::{self, StateWrite};
use super::keys;
use super::overlay::{self, Deferred, Overlay};
use super::wal::{self, LogOp, Lsn, Pointer, Segments, Wal, WalError};
use super::{
    codec, Attempt, Claim, Delivery, DeliveryState, EventOutcome, IngestBatch, NewDelivery, Next,
    Prune, Pruned, Seq, Stats, Store, StoreError, TargetCounts, TargetId, TargetState,
};
use crate::normalize::Event;

/// sled's page cache. The relay reads little back from sled (claims read index keys and one
/// delivery record; event bodies come from the log), and pages it misses are in the OS page
/// cache. Measured: 4 MiB instead of 64 MiB cut peak RSS from 230 to 125 MB with an empty
/// queue and from 596 to 359 MB with 1M pending, at the same throughput.
const CACHE_BYTES: u64 = 4 << 20;

/// How many queued operations one group commit takes at most.
const MAX_GROUP: usize = 4096;

/// How often sled is flushed so the log behind it can be deleted. Longer means fewer page
/// rewrites and more log to replay after a crash.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A write group or checkpoint that takes this long is logged with where its time went.
const SLOW_GROUP: Duration = Duration::from_millis(250);

/// How often the checkpoint thread looks for log segments worth compacting.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// Segments read per compaction pass: the pass runs between checkpoints, so this bounds how
/// long it delays one (the first pass over a large backlog resumes on the next ones).
const COMPACT_SCANS: usize = 4;

/// Event bodies moved forward by one relocation: bounds how long it holds up the writer.
const RELOCATE_BYTES: u64 = 1 << 20;

/// Where the write-ahead log lives, inside the store's directory.
const WAL_DIR: &str = "hookrelay-wal";

pub struct SledStore {
    db: sled::Db,
    /// Short-lived index keys not (yet) in sled: see [`overlay`].
    overlay: Arc<Overlay>,
    path: PathBuf,
    segments: Arc<Segments>,
    tx: mpsc::Sender<Job>,
    leases: Mutex<HashSet<Seq>>,
    /// The writer holds its own handle to the database; joined on close so the directory
    /// lock is released when `close` returns.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Op {
    Ingest(IngestBatch),
    Finish {
        delivery: Delivery,
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
    Ping,
    Close,
    /// Stops the writer on the spot, as a crash would: nothing held is moved into sled.
    #[cfg(test)]
    Crash,
}

enum Reply {
    Ingest(Vec<EventOutcome>),
    Targets(Vec<TargetId>),
    Seqs(Vec<Seq>),
    Pruned(Pruned),
    Count(usize),
    Done,
}

/// A caller waiting for its operation's result, and that result.
type Answer = (
    oneshot::Sender<Result<Reply, StoreError>>,
    Result<Reply, StoreError>,
);

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

impl SledStore {
    /// Opens (or creates) the database at `path` and starts its writer thread. Refuses a
    /// database that holds less than its manifest says was durably written (see
    /// [`Manifest`]).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_inner(path, false, LogOptions::default())
    }

    /// Opens with other log segment sizes and compaction intervals (tests: many small
    /// segments, compacted at once).
    #[doc(hidden)]
    pub fn open_with_log(path: &Path, log: LogOptions) -> Result<SledStore, StoreError> {
        Self::open_inner(path, false, log)
    }

    fn open_inner(
        path: &Path,
        accept_damage: bool,
        log: LogOptions,
    ) -> Result<SledStore, StoreError> {
        let started = std::time::Instant::now();
        let manifest = Manifest::read(path)?;
        let db = open_sled(path)?;
        let sled_opened = started.elapsed();
        let wal_dir = path.join(WAL_DIR);
        let last_lsn = recover(&db, &wal_dir, accept_damage)?;
        let recovered = started.elapsed();
        let mut live = HashMap::new();
        for item in db.scan_prefix(b"G") {
            let (k, v) = item?;
            if let (Some(segment), Some(n)) = (keys::seq_of(&k[1..]), keys::seq_of(&v)) {
                live.insert(segment, n);
            }
        }
        let segments = Arc::new(Segments::new(&wal_dir));
        let wal = Wal::start(
            &wal_dir,
            last_lsn,
            segments.clone(),
            log.segment_bytes,
            |s| live.get(&s).is_some_and(|n| *n > 0),
        )
        .map_err(io_error)?;
        let stored = db
            .get(keys::NEXT_SEQ)?
            .and_then(|v| keys::seq_of(&v))
            .unwrap_or(1);
        let last_delivery = match db.scan_prefix(b"L").keys().next_back() {
            Some(k) => keys::seq_of(&k?[1..]).map_or(1, |s| s + 1),
            None => 1,
        };
        let next_seq = stored.max(last_delivery);
        if let Some(recorded) = manifest {
            if next_seq < recorded {
                return Err(StoreError::Damaged {
                    path: path.display().to_string(),
                    recorded: recorded - 1,
                    found: next_seq - 1,
                });
            }
        }
        Manifest::write(path, next_seq)?;
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        let applied = Arc::new(AtomicU64::new(last_lsn));
        let checkpointed = Arc::new(AtomicU64::new(last_lsn));
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        let checkpoints = {
            let compactor = Compactor {
                db: db.clone(),
                dir: wal_dir.clone(),
                writer: tx.downgrade(),
                every: log.compact_every,
                last: std::time::Instant::now(),
                scanned: HashMap::new(),
            };
            let (db, applied, checkpointed) = (db.clone(), applied.clone(), checkpointed.clone());
            std::thread::Builder::new()
                .name("hookrelay-checkpoint".into())
                .spawn(move || checkpoint_loop(&db, &applied, &checkpointed, &stop, compactor))
                .map_err(io_error)?
        };
        let overlay = Arc::new(Overlay::default());
        let writer = Writer {
            db: db.clone(),
            deferred: Deferred::new(overlay.clone(), log.hold_for),
            group_first: last_lsn + 1,
            applied_written: last_lsn,
            next_seq,
            counts: HashMap::new(),
            path: path.to_path_buf(),
            manifest_seq: next_seq,
            manifest_at: std::time::Instant::now(),
            wal,
            live,
            pending: BTreeMap::new(),
            group_seq: next_seq,
            applied,
            checkpointed,
            checkpoints: Some((stop_checkpoints, checkpoints)),
            ops: Vec::new(),
            dedup_sweep: None,
        };
        // Startup time grows with the store (sled reads its page table on opening): worth
        // knowing where it went.
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            sled_open_ms = sled_opened.as_millis() as u64,
            log_replay_ms = (recovered - sled_opened).as_millis() as u64,
            next_seq,
            "store opened"
        );
        let handle = std::thread::Builder::new()
            .name("hookrelay-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io_error)?;
        Ok(SledStore {
            db,
            overlay,
            path: path.to_path_buf(),
            segments,
            tx,
            leases: Mutex::new(HashSet::new()),
            writer: Mutex::new(Some(handle)),
        })
    }

    async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Opens the closed database in `path` once more and closes it again; for after a clean
    /// stop, once nothing holds the store. sled 0.34 rebuilds its page table at opening by
    /// reading everything it wrote since it last opened, and writes its snapshot only then:
    /// after a busy run the next start would spend seconds there (1.9 s with a million
    /// deliveries pending). Done at the stop, when nothing waits on the relay, the next start
    /// reads the snapshot instead. Returns how long it took.
    pub fn settle(path: &Path) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        drop(open_sled(path)?);
        Ok(started.elapsed())
    }

    /// Flushes and stops the writer; later writes fail with [`StoreError::Closed`]. The
    /// database itself closes when the last handle to this store is dropped.
    pub async fn close(&self) -> Result<(), StoreError> {
        let result = match self.submit(Op::Close).await {
            Ok(_) | Err(StoreError::Closed) => Ok(()),
            Err(e) => Err(e),
        };
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }

    fn get_delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        get_delivery(&self.db, &self.overlay, seq)
    }

    /// Bytes the database and its log take on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + Wal::size_on_disk(&self.path.join(WAL_DIR))
    }

    /// Decodes the event stored under `key` as `value`, reading its body from the log when
    /// sled holds a pointer. Compaction may move the body and delete its segment between the
    /// read of `value` and the read of the body; the pointer is then read again.
    fn decode_event(&self, key: &[u8], mut value: sled::IVec) -> Result<Option<Event>, StoreError> {
        for _ in 0..3 {
            let Some(p) = Pointer::decode(&value) else {
                return codec::decode_event(&value).map(Some);
            };
            match self.segments.read(p) {
                Ok(body) => return codec::decode_event(&body).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match self.db.get(key)? {
                        Some(now) if now != value => value = now,
                        // Pruned meanwhile.
                        None => return Ok(None),
                        Some(_) => return Err(io_error(e)),
                    }
                }
                Err(e) => return Err(io_error(e)),
            }
        }
        Err(StoreError::Corrupt(
            "an event body moved three times while being read".into(),
        ))
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashSet<Seq>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens the sled database in `path`.
fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let open = || {
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled caches up to 1 GiB by default.
            .cache_capacity(CACHE_BYTES)
            // The log makes writes durable; sled is flushed by the checkpoint thread, which
            // knows how much of the log each flush covers.
            .flush_every_ms(None)
            .open()
    };
    // sled lets go of its directory lock a moment after the last handle is dropped (its I/O
    // threads finish their last write), so opening right after a close can find the lock
    // still held. It is tried again for a second before being reported: a second relay on
    // the same directory still fails.
    backon::BlockingRetryable::retry(
        open,
        backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(50))
            .with_max_times(20),
    )
    .when(|e| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock")))
    .call()
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Io(sled::Error::Io(e))
}

/// Applies the log records sled does not hold yet, makes them durable in sled, and returns the
/// last LSN (the log is then started afresh after it).
fn recover(db: &sled::Db, dir: &Path, accept_damage: bool) -> Result<Lsn, StoreError> {
    let applied = db
        .get(keys::APPLIED_LSN)?
        .and_then(|v| keys::seq_of(&v))
        .unwrap_or(0);
    // Key by key, like the writer: the applied LSN is written once at the end, so a crash
    // during replay makes the next start replay the same records again.
    let last = wal::replay(dir, applied, accept_damage, |_, ops| {
        for op in ops {
            match op {
                LogOp::Insert(k, v) => db.insert(k, v).map(drop),
                LogOp::Remove(k) => db.remove(k).map(drop),
                // A body stays where it is.
                LogOp::Body => Ok(()),
            }
            .map_err(|e| WalError::Io(std::io::Error::other(e)))?;
        }
        Ok(())
    })
    .map_err(|e| match e {
        WalError::Io(e) => io_error(e),
        WalError::Damaged { .. } => StoreError::Corrupt(format!(
            "{e}; restore the directory from a backup, or run `hookrelay store accept-damage` \
             to start with what is readable"
        )),
    })?;
    if last > applied {
        db.insert(keys::APPLIED_LSN, &last.to_be_bytes())?;
        db.flush()?;
        tracing::info!(
            records = last - applied,
            last_lsn = last,
            "applied the write-ahead log to the store"
        );
    }
    Ok(last)
}

/// Flushes sled about once a second and publishes the last LSN each flush made durable, so the
/// writer can delete the log segments before it. Runs until `stop` is dropped.
/// Also compacts the log every so often (see [`Compactor`]).
fn checkpoint_loop(
    db: &sled::Db,
    applied: &AtomicU64,
    checkpointed: &AtomicU64,
    stop: &std::sync::mpsc::Receiver<()>,
    mut compactor: Compactor,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let tick = CHECKPOINT_EVERY.min(compactor.every);
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        // Every batch up to this LSN was applied before the flush starts, so the flush holds it.
        let lsn = applied.load(Ordering::Acquire);
        if lsn != checkpointed.load(Ordering::Acquire) {
            let started = std::time::Instant::now();
            match db.flush() {
                Ok(bytes) => {
                    checkpointed.store(lsn, Ordering::Release);
                    let took = started.elapsed();
                    if took >= SLOW_GROUP {
                        tracing::warn!(
                            ms = took.as_millis() as u64,
                            bytes,
                            "slow store checkpoint"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "store checkpoint failed; the log is kept"),
            }
        }
        if compactor.last.elapsed() >= compactor.every {
            compactor.run(checkpointed.load(Ordering::Acquire));
            compactor.last = std::time::Instant::now();
        }
    }
}

/// Log segment sizes and how often the log is compacted.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub segment_bytes: u64,
    pub compact_every: Duration,
    /// How long short-lived index keys are held in memory before sled gets them.
    pub hold_for: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: wal::SEGMENT_BYTES,
            compact_every: COMPACT_EVERY,
            hold_for: overlay::MAX_AGE,
        }
    }
}

/// Frees log segments that stored events keep alive but mostly hold what is no longer needed.
///
/// A segment stays while any stored event's body is in it, so one dead letter kept for
/// `retain_dead` would keep its whole segment. When at most half of a checkpointed segment is
/// bodies still stored, those bodies are copied to the end of the log by the writer
/// ([`Op::Relocate`]) and the segment goes with the next retirement. Copying at most half to
/// free at least half keeps the extra writing no larger than the space won back.
struct Compactor {
    db: sled::Db,
    dir: PathBuf,
    /// Weak, so that a store dropped without `close` still stops its writer.
    writer: mpsc::WeakSender<Job>,
    every: Duration,
    last: std::time::Instant,
    /// Live bodies per segment when it was last read and found not worth compacting: read
    /// again only once a quarter of them have gone.
    scanned: HashMap<Lsn, u64>,
}

impl Compactor {
    fn run(&mut self, checkpoint: Lsn) {
        let candidates = match wal::checkpointed_segments(&self.dir, checkpoint) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the log segments to compact");
                return;
            }
        };
        self.scanned.retain(|s, _| candidates.contains(s));
        let mut scans = 0;
        for segment in candidates {
            if scans == COMPACT_SCANS {
                return;
            }
            match self.compact(segment) {
                Ok(scanned) => scans += usize::from(scanned),
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(segment, error = %e, "log compaction failed; the segment is kept")
                }
            }
        }
    }

    /// Returns whether the segment was read.
    fn compact(&mut self, segment: Lsn) -> Result<bool, StoreError> {
        let counted = self
            .db
            .get(keys::live_bodies(segment))?
            .and_then(|v| keys::seq_of(&v))
            .unwrap_or(0);
        if counted == 0
            || self
                .scanned
                .get(&segment)
                .is_some_and(|n| counted * 4 > n * 3)
        {
            return Ok(false);
        }
        let found = match wal::bodies_in(&self.dir, segment) {
            Ok(found) => found,
            // Retired meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(e)),
        };
        let mut live = Vec::new();
        let mut live_bytes = 0u64;
        for (key, pointer) in found.bodies {
            if self
                .db
                .get(&key)?
                .is_some_and(|v| Pointer::decode(&v) == Some(pointer))
            {
                live_bytes += u64::from(pointer.len);
                live.push((key, pointer));
            }
        }
        if live_bytes * 2 > found.bytes {
            self.scanned.insert(segment, live.len() as u64);
            return Ok(true);
        }
        self.scanned.remove(&segment);
        let (events, bytes) = (live.len(), live_bytes);
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let mut moved = 0;
        let mut live = live.into_iter().peekable();
        while let Some((key, pointer)) = live.next() {
            chunk_bytes += u64::from(pointer.len);
            chunk.push((key, pointer));
            if chunk_bytes >= RELOCATE_BYTES || live.peek().is_none() {
                moved += self.relocate(std::mem::take(&mut chunk))?;
                chunk_bytes = 0;
            }
        }
        tracing::info!(
            segment,
            segment_bytes = found.bytes,
            live_events = events,
            live_bytes = bytes,
            moved,
            "compacted a log segment"
        );
        Ok(true)
    }

    /// Has the writer move `bodies` and waits for it, like any caller of the store.
    fn relocate(&self, bodies: Vec<(Vec<u8>, Pointer)>) -> Result<usize, StoreError> {
        let writer = self.writer.upgrade().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer
            .blocking_send(Job {
                op: Op::Relocate(bodies),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        drop(writer);
        match rx.blocking_recv().map_err(|_| StoreError::Closed)?? {
            Reply::Count(n) => Ok(n),
            _ => unreachable!("writer answers Relocate with Count"),
        }
    }
}

/// The seqs of an event's deliveries, in order: those its entry lists or, for an event stored
/// inline or written before entries listed them, those under its `V` keys.
fn event_seqs(db: &sled::Db, id: uuid::Uuid, entry: &[u8]) -> Result<Vec<Seq>, StoreError> {
    if wal::is_entry(entry) {
        return Ok(wal::entry_seqs(entry).collect());
    }
    let mut seqs = Vec::new();
    for key in db.scan_prefix(keys::event_deliveries(id.as_bytes())).keys() {
        let key = key?;
        seqs.push(
            keys::seq_of(&key[17..])
                .ok_or_else(|| StoreError::Corrupt("malformed event delivery key".into()))?,
        );
    }
    Ok(seqs)
}

fn get_delivery(
    db: &sled::Db,
    overlay: &Overlay,
    seq: Seq,
) -> Result<Option<Delivery>, StoreError> {
    read_delivery(&overlay.view(), db, seq)
}

/// A delivery record, held in memory or in sled; for a reader that has the held keys open.
fn read_delivery(
    held: &overlay::View<'_>,
    db: &sled::Db,
    seq: Seq,
) -> Result<Option<Delivery>, StoreError> {
    let key = keys::delivery(seq);
    match held.get(&key) {
        Some(v) => decode_delivery(seq, v).map(Some),
        None => db.get(key)?.map(|v| decode_delivery(seq, &v)).transpose(),
    }
}

fn decode_delivery(seq: Seq, v: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("delivery {seq}: {e}")))
}

/// A small file beside the database recording how far it is known to be durable: the next
/// delivery seq as of a log sync that succeeded. sled recovers a truncated or scrambled log by
/// silently dropping what it cannot read; comparing with the manifest turns that into a refusal
/// to start instead of a relay that quietly forgot what it acknowledged.
pub struct Manifest;

const MANIFEST: &str = "hookrelay.manifest";

impl Manifest {
    fn read(dir: &Path) -> Result<Option<Seq>, StoreError> {
        match std::fs::read_to_string(dir.join(MANIFEST)) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    StoreError::Corrupt(format!("{}: {e}", dir.join(MANIFEST).display()))
                })?;
                Ok(v["next_seq"].as_u64())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(sled::Error::Io(e))),
        }
    }

    /// Written to a temporary file, synced, then renamed over the old one.
    fn write(dir: &Path, next_seq: Seq) -> Result<(), StoreError> {
        use std::io::Write;
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let io = |e| StoreError::Io(sled::Error::Io(e));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(
            serde_json::json!({"version": 1, "next_seq": next_seq})
                .to_string()
                .as_bytes(),
        )
        .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Accepts a damaged store as it is: the manifest is rewritten to what the database holds.
    /// Returns (what the manifest recorded, what the database holds) as last delivery numbers.
    pub fn accept_damage(dir: &Path) -> Result<(u64, u64), StoreError> {
        let recorded = Self::read(dir)?.unwrap_or(1);
        std::fs::remove_file(dir.join(MANIFEST)).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(StoreError::Io(sled::Error::Io(e)))
            }
        })?;
        // Opening writes a new manifest from what the database holds.
        drop(SledStore::open_inner(dir, true, LogOptions::default())?);
        let found = Self::read(dir)?.unwrap_or(1);
        Ok((recorded.saturating_sub(1), found.saturating_sub(1)))
    }
}

fn read_counts(db: &sled::Db, target: TargetId) -> Result<TargetCounts, StoreError> {
    Ok(match db.get(keys::target_prefix(b'C', target))? {
        Some(v) => counts_of_value(&v),
        None => TargetCounts::default(),
    })
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
        let mut leases = self.leases();
        let prefix = keys::target_prefix(b'R', target);
        // The ready keys in sled and those held in memory, merged in key order.
        let held = self.overlay.view();
        let mut held_keys = held.under(&prefix).map(|(k, _)| k).peekable();
        let mut stored = self.db.scan_prefix(prefix).keys().peekable();
        loop {
            let from_sled = match (stored.peek(), held_keys.peek()) {
                (Some(Err(_)), _) => true,
                (Some(Ok(s)), Some(h)) => s.as_ref() <= *h,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let key = if from_sled {
                stored.next().expect("peeked")?
            } else {
                sled::IVec::from(held_keys.next().expect("peeked"))
            };
            let (due, seq) = keys::parse_timed(&key)
                .ok_or_else(|| StoreError::Corrupt("malformed ready key".into()))?;
            if due > now_ms {
                return Ok(Claim::Wait(due));
            }
            if leases.contains(&seq) {
                continue;
            }
            // Read through the view already open: a second read lock could wait behind the
            // writer, which waits for this one.
            let delivery = read_delivery(&held, &self.db, seq)?
                .ok_or_else(|| StoreError::Corrupt(format!("ready delivery {seq} is missing")))?;
            leases.insert(seq);
            return Ok(Claim::Due(delivery));
        }
        Ok(Claim::Empty)
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        self.finish_op(delivery, attempt, next, None).await
    }

    fn release(&self, seq: Seq) {
        self.leases().remove(&seq);
    }

    async fn key_state(
        &self,
        target: TargetId,
        ordering_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        key_state::read(&self.db, target, ordering_key)
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

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let key = keys::event(id.as_bytes());
        match self.db.get(&key)? {
            Some(v) => self.decode_event(&key, v),
            None => Ok(None),
        }
    }

    async fn delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        self.get_delivery(seq)
    }

    async fn deliveries_of(&self, event: uuid::Uuid) -> Result<Vec<Delivery>, StoreError> {
        let Some(entry) = self.db.get(keys::event(event.as_bytes()))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for seq in event_seqs(&self.db, event, &entry)? {
            out.extend(self.get_delivery(seq)?);
        }
        Ok(out)
    }

    async fn attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        // The record before the history: an attempt finishing in between moves the record's
        // last attempt into the history, where it is then found (and counted once).
        let last = self.get_delivery(seq)?.and_then(|d| d.last_attempt());
        let mut out = self
            .db
            .scan_prefix(keys::attempts(seq))
            .values()
            .map(|v| {
                serde_json::from_slice(&v?)
                    .map_err(|e| StoreError::Corrupt(format!("attempt of {seq}: {e}")))
            })
            .collect::<Result<Vec<Attempt>, _>>()?;
        if let Some(last) = last {
            if out.iter().all(|a| a.number != last.number) {
                out.push(last);
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self, target: TargetId) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .db
            .scan_prefix(keys::target_prefix(b'X', target))
            .keys()
        {
            let key = key?;
            if let Some((_, seq)) = keys::parse_timed(&key) {
                out.extend(self.get_delivery(seq)?);
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.submit(Op::Ping).await.map(|_| ())
    }

    async fn target_state(&self, target: TargetId) -> Result<Option<TargetState>, StoreError> {
        match self.db.get(keys::target_prefix(b'S', target))? {
            Some(v) => codec::decode_target_state(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> Result<(), StoreError> {
        self.submit(Op::SetState(target, state)).await.map(|_| ())
    }

    async fn counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        read_counts(&self.db, target)
    }

    async fn oldest_pending_ms(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        // Sequence numbers grow with creation time and a key's head is its oldest delivery,
        // so the oldest pending delivery is the head with the smallest sequence number: only
        // its record needs reading. The scan reads every head of the target (a million during
        // a long outage), so it runs off the request threads: a metrics scrape must not hold
        // up acknowledgements.
        let (db, overlay) = (self.db.clone(), self.overlay.clone());
        let scan = move || -> Result<Option<u64>, StoreError> {
            let prefix = keys::target_prefix(b'K', target);
            // Heads held in memory, then those in sled.
            let mut oldest: Option<Seq> = overlay
                .view()
                .under(&prefix)
                .filter_map(|(_, v)| keys::seq_of(v))
                .min();
            for v in db.scan_prefix(prefix).values() {
                if let Some(seq) = keys::seq_of(&v?) {
                    oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
                }
            }
            Ok(match oldest {
                Some(seq) => get_delivery(&db, &overlay, seq)?.map(|d| d.created_ms),
                None => None,
            })
        };
        tokio::task::spawn_blocking(scan)
            .await
            .map_err(|e| StoreError::Corrupt(format!("oldest pending scan: {e}")))?
    }

    async fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = match after {
            Some(id) => {
                let mut k = keys::event(id.as_bytes());
                k.push(0);
                k
            }
            None => b"E".to_vec(),
        };
        let mut out = Vec::new();
        for item in self.db.range(start..b"F".to_vec()) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.extend(self.decode_event(&k, v)?);
        }
        Ok(out)
    }

    async fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        let range = keys::dead(target, since_ms, 0)..keys::dead(target, until_ms, 0);
        for key in self.db.range(range).keys() {
            if out.len() >= limit {
                break;
            }
            if let Some((_, seq)) = keys::parse_timed(&key?) {
                out.extend(self.get_delivery(seq)?);
            }
        }
        Ok(out)
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
        let mut stats = Stats {
            events: self.db.scan_prefix(b"E").keys().count() as u64,
            ..Stats::default()
        };
        let mut count = |v: &[u8]| -> Result<(), StoreError> {
            let d: Delivery = serde_json::from_slice(v)
                .map_err(|e| StoreError::Corrupt(format!("delivery: {e}")))?;
            match d.state {
                DeliveryState::Pending => stats.pending += 1,
                DeliveryState::Done => stats.done += 1,
                DeliveryState::Dead => stats.dead += 1,
                DeliveryState::Skipped => stats.skipped += 1,
            }
            Ok(())
        };
        // The records held in memory first, then those in sled that are not among them (one
        // moved in meanwhile is counted once); sled is scanned without the lock.
        let mut held = HashSet::new();
        for (k, v) in self.overlay.view().under(b"L") {
            count(v)?;
            held.insert(k.to_vec());
        }
        for item in self.db.scan_prefix(b"L") {
            let (k, v) = item?;
            if !held.contains(k.as_ref()) {
                count(&v)?;
            }
        }
        Ok(stats)
    }
}

impl SledStore {
    async fn finish_op(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Box<StateWrite>>,
    ) -> Result<(), StoreError> {
        let result = self
            .submit(Op::Finish {
                delivery: delivery.clone(),
                attempt,
                next,
                state,
            })
            .await;
        self.release(delivery.seq);
        result.map(|_| ())
    }

    async fn submit_count(&self, op: Op) -> Result<usize, StoreError> {
        match self.submit(op).await? {
            Reply::Count(n) => Ok(n),
            _ => unreachable!("writer answers with a count"),
        }
    }
}

/// The writer thread's state. It is the only code that writes to the database.
///
/// A group's writes are collected in `pending` (which the group's own reads see through), written
/// to the log, synced, and only then applied to sled, key by key: sled never holds anything the
/// log does not, so a crash at any point leaves sled a prefix of the log that replay completes.
/// No `sled::Batch` is used: each one makes sled write and sync its buffer twice, which on this
/// path cost more than everything else together.
struct Writer {
    db: sled::Db,
    next_seq: Seq,
    /// Per-target counters as last written; dropped on a failed write so they are read again.
    counts: HashMap<TargetId, TargetCounts>,
    path: std::path::PathBuf,
    /// What the manifest says, and when it was written.
    manifest_seq: Seq,
    manifest_at: std::time::Instant,
    wal: Wal,
    /// Live event bodies per log segment, as last written (`G` keys).
    live: HashMap<Lsn, u64>,
    /// Writes of the current group, by key, not yet in sled.
    pending: BTreeMap<Vec<u8>, Write>,
    /// Short-lived keys held before sled gets them.
    deferred: Deferred,
    /// No record of the current group comes before this LSN.
    group_first: Lsn,
    /// The applied LSN as last written to sled.
    applied_written: Lsn,
    /// `next_seq` when the current group began: restored if the group fails.
    group_seq: Seq,
    /// The last LSN applied to sled, and the last one a checkpoint made durable there.
    applied: Arc<AtomicU64>,
    checkpointed: Arc<AtomicU64>,
    /// Stops (by dropping the sender) and joins the checkpoint thread.
    checkpoints: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// A cleared buffer for the next record's ops.
    ops: Vec<u8>,
    /// The dedup key where pruning's next sweep starts (`None`: the first).
    dedup_sweep: Option<Vec<u8>>,
}

/// The writes of one operation: they join the group only if the whole operation succeeds.
#[derive(Default)]
struct Batch {
    writes: Vec<(Vec<u8>, Write)>,
}

/// One write of a key, as a batch and the group hold it.
enum Write {
    Put(Vec<u8>),
    /// A put that is the key's last for a long while (a delivery's record once it ended):
    /// straight into sled, taken out of memory if it was held there.
    Settle(Vec<u8>),
    /// A put of a key that is nowhere yet (not in sled, not held, not written by the group),
    /// of a kind that is removed soon: held in memory rather than given to sled (see
    /// [`overlay`]).
    Hold(Vec<u8>),
    Remove,
}

impl Write {
    fn value(&self) -> Option<&[u8]> {
        match self {
            Write::Put(v) | Write::Settle(v) | Write::Hold(v) => Some(v),
            Write::Remove => None,
        }
    }
}

impl Batch {
    /// Takes owned keys and values as they are (most are built for the write), so the hot
    /// paths copy nothing here.
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Write::Put(value.into())));
    }

    /// Inserts a key that no store, held key or earlier write of the group has.
    fn insert_new(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        let write = if overlay::holds(&key) {
            Write::Hold(value.into())
        } else {
            Write::Put(value.into())
        };
        self.writes.push((key, write));
    }

    /// Inserts a key's value for a long while: see [`Write::Settle`].
    fn insert_settled(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Write::Settle(value.into())));
    }

    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Write::Remove));
    }
}

/// Operations that read sled with scans the group's pending writes would not show: the group
/// so far is completed before they run. All are rare (startup, operators, pruning).
fn needs_settled_store(op: &Op) -> bool {
    matches!(
        op,
        Op::Targets(_) | Op::Prune(_) | Op::Replay(..) | Op::Redeliver(..) | Op::Close
    )
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        let mut results = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut close = false;
            #[cfg(test)]
            if jobs.iter().any(|j| matches!(j.op, Op::Crash)) {
                return;
            }
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
                // The compactor may be waiting on the writer; nothing more is taken, so it is
                // answered and the checkpoint thread can be joined.
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(StoreError::Closed));
                }
                self.close();
                return;
            }
            self.retire_segments(self.checkpointed.load(Ordering::Acquire));
        }
    }

    /// Makes the group durable, applies it to sled and answers it. If the log cannot be
    /// written, none of the group happened: sled is untouched and every caller gets the error.
    fn end_group(&mut self, results: &mut Vec<Answer>) {
        let started = std::time::Instant::now();
        let keys = self.pending.len();
        let synced = self.wal.sync().map_err(io_error);
        let sync_time = started.elapsed();
        let durable = synced.and_then(|()| self.apply_pending());
        let took = started.elapsed();
        if took >= SLOW_GROUP {
            // Every acknowledgement in the group waited this long: worth a line, with where
            // the time went.
            tracing::warn!(
                ms = took.as_millis() as u64,
                sync_ms = sync_time.as_millis() as u64,
                apply_ms = (took - sync_time).as_millis() as u64,
                keys,
                requests = results.len(),
                "slow store write"
            );
        }
        if let Err(e) = &durable {
            tracing::error!(error = %e, "store write failed; the group is refused");
            self.pending.clear();
            self.counts.clear();
            self.live.clear();
            self.next_seq = self.group_seq;
        }
        self.group_seq = self.next_seq;
        self.group_first = self.wal.last_lsn() + 1;
        for (reply, result) in results.drain(..) {
            let result = match (&durable, result) {
                (Err(e), Ok(_)) => Err(match e {
                    StoreError::Io(e) => StoreError::Io(e.clone()),
                    other => StoreError::Corrupt(other.to_string()),
                }),
                (_, r) => r,
            };
            let _ = reply.send(result);
        }
        // After the answers, so it never delays an acknowledgement; only what the log made
        // durable is recorded.
        if durable.is_ok()
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
        self.manifest_at = std::time::Instant::now();
    }

    /// Applies the synced group to sled and the held keys: every other key first, then the
    /// ready index, then the applied LSN. A claim that finds a ready key therefore finds its
    /// delivery and event, and a crash part-way leaves an LSN from which replay redoes the
    /// whole group.
    fn apply_pending(&mut self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let (ready, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(k, _)| k[0] == b'R');
        let now = std::time::Instant::now();
        for (key, write) in rest.into_iter().chain(ready) {
            match write {
                Write::Hold(v) => self.deferred.hold(key, v, self.group_first, now),
                Write::Put(v) => {
                    if let Some(v) = self.deferred.put(&key, v) {
                        self.db.insert(key, v)?;
                    }
                }
                Write::Settle(v) => {
                    // Into sled before it leaves memory, as when spilled.
                    self.db.insert(key.as_slice(), v)?;
                    self.deferred.remove(&key);
                }
                Write::Remove => {
                    if !self.deferred.remove(&key) {
                        self.db.remove(key)?;
                    }
                }
            }
        }
        self.deferred.spill(&self.db, now, false)?;
        self.write_applied()
    }

    /// Records in sled the last LSN all of whose writes it holds (held keys' records excluded),
    /// when that moved.
    fn write_applied(&mut self) -> Result<(), StoreError> {
        let lsn = self.deferred.bound(self.wal.last_lsn());
        if lsn != self.applied_written {
            self.db.insert(keys::APPLIED_LSN, &lsn.to_be_bytes())?;
            self.applied_written = lsn;
            self.applied.store(lsn, Ordering::Release);
        }
        Ok(())
    }

    /// Reads a key as the group so far has left it.
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        if let Some(w) = self.pending.get(key) {
            return Ok(w.value().map(sled::IVec::from));
        }
        if overlay::holds(key) {
            if let Some(v) = self.deferred.overlay().view().get(key) {
                return Ok(Some(sled::IVec::from(v)));
            }
        }
        Ok(self.db.get(key)?)
    }

    /// The first key under `prefix` as the group so far has left it (not for kinds of keys
    /// that are held in memory).
    fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        debug_assert!(!overlay::holds(prefix), "held keys are not scanned here");
        let mut stored = None;
        for key in self.db.scan_prefix(prefix).keys() {
            let key = key?;
            if !matches!(self.pending.get(key.as_ref()), Some(Write::Remove)) {
                stored = Some(key.to_vec());
                break;
            }
        }
        let written = self
            .pending
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .find(|(_, w)| w.value().is_some())
            .map(|(k, _)| k.clone());
        Ok(match (stored, written) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    fn delivery_rec(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        match self.get(&keys::delivery(seq))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("delivery {seq}: {e}"))),
            None => Ok(None),
        }
    }

    /// Adds the request's event bodies to the log and has each event store a pointer to its
    /// body instead. The bodies are synced with the group, before sled can hold the pointers.
    fn write_bodies(&mut self, batch: &mut IngestBatch) {
        for event in &mut batch.events {
            let pointer = self.wal.append_body(&event.encoded);
            event.encoded = pointer.encode().to_vec();
        }
    }

    /// Deletes the log segments that a checkpoint covers and no live event points into.
    fn retire_segments(&mut self, checkpoint: Lsn) {
        let (wal, live, db) = (&mut self.wal, &self.live, &self.db);
        wal.retire(checkpoint, |segment| match live.get(&segment) {
            Some(n) => *n > 0,
            // Not cached: ask sled, and keep the segment if in doubt.
            None => db
                .get(keys::live_bodies(segment))
                .map_or(true, |v| v.is_some()),
        });
    }

    /// A clean stop: checkpoint thread joined, sled flushed, the manifest written, the log
    /// segments sled no longer needs deleted.
    fn close(&mut self) {
        if let Some((stop, handle)) = self.checkpoints.take() {
            drop(stop);
            let _ = handle.join();
        }
        let spilled = self
            .deferred
            .spill(&self.db, std::time::Instant::now(), true)
            .and_then(|()| self.write_applied());
        if let Err(e) = spilled {
            // The log keeps them: replay at the next start writes them into sled.
            tracing::error!(error = %e, "could not move held index keys into the store at shutdown");
        }
        match self.db.flush() {
            Ok(_) => {
                self.retire_segments(self.applied_written);
                if self.next_seq != self.manifest_seq {
                    self.write_manifest();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush at shutdown failed; the log is kept")
            }
        }
    }

    /// Adds `batch` to the group as the next log record.
    fn commit(&mut self, batch: Batch) {
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
            self.pend(key, write);
        }
    }

    /// Adds a write to the group, after the group's earlier write of the key if any.
    fn pend(&mut self, key: Vec<u8>, write: Write) {
        use std::collections::btree_map::Entry;
        match self.pending.entry(key) {
            Entry::Vacant(e) => {
                e.insert(write);
            }
            Entry::Occupied(mut e) => match (e.get(), write) {
                // Still nowhere but in this group: stays held, or never happens at all.
                (Write::Hold(_), Write::Put(v)) => *e.get_mut() = Write::Hold(v),
                (Write::Hold(_), Write::Settle(v)) => *e.get_mut() = Write::Put(v),
                (Write::Hold(_), Write::Remove) => {
                    e.remove();
                }
                // The key was somewhere before the group removed it: an ordinary put over it.
                (Write::Remove, Write::Hold(v)) => *e.get_mut() = Write::Put(v),
                (_, write) => *e.get_mut() = write,
            },
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
                    keys::target_prefix(b'S', target).as_slice(),
                    to_json(&state),
                );
                self.commit(batch);
                Ok(Reply::Done)
            }
            Op::Replay(seqs, now) => self.replay(&seqs, now).map(Reply::Count),
            Op::Prune(p) => self.prune(p).map(Reply::Pruned),
            Op::Redeliver(event, deliveries, now) => {
                self.redeliver(event, deliveries, now).map(Reply::Seqs)
            }
            Op::Relocate(bodies) => self.relocate(bodies).map(Reply::Count),
            Op::Ping => Ok(Reply::Done),
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
            Op::Close => Ok(Reply::Done),
            #[cfg(test)]
            Op::Crash => unreachable!("the writer stops before a crash is applied"),
        }
    }

    fn targets(&mut self, names: &[String]) -> Result<Vec<TargetId>, StoreError> {
        let mut max = 0u32;
        for v in self.db.scan_prefix(b"T").values() {
            let v = v?;
            max =
                max.max(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt("malformed target id".into())
                })?));
        }
        let mut ids = Vec::with_capacity(names.len());
        let mut batch = Batch::default();
        for name in names {
            let key = keys::target_name(name);
            let id = match self.get(&key)? {
                Some(v) => u32::from_be_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("malformed target id".into()))?,
                ),
                None => {
                    max += 1;
                    batch.insert(key, max.to_be_bytes());
                    max
                }
            };
            ids.push(id);
        }
        self.commit(batch);
        Ok(ids)
    }

    fn ingest(&mut self, b: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        let mut batch = Batch::default();
        // Heads and dedup keys this batch creates, which sled cannot show until it is applied.
        let mut heads: HashMap<Vec<u8>, Seq> = HashMap::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut outcomes = Vec::with_capacity(b.events.len());
        for new in b.events {
            let id = new.id;
            let dedup_key = keys::dedup(&new.source, &new.dedup_key);
            let duplicate = seen.contains(&dedup_key)
                || match self.get(&dedup_key)? {
                    Some(v) => keys::seq_of(&v).is_some_and(|until| until > b.now_ms),
                    None => false,
                };
            if duplicate {
                outcomes.push(EventOutcome::Duplicate);
                continue;
            }
            batch.insert(
                dedup_key.as_slice(),
                [b.dedup_until_ms.to_be_bytes().as_slice(), id.as_bytes()].concat(),
            );
            seen.insert(dedup_key);
            let mut entry = new.encoded;
            let listed = match wal::make_entry(&mut entry) {
                Some(p) => {
                    self.bump_live(&mut batch, p.segment, 1)?;
                    entry.reserve_exact(8 * new.deliveries.len());
                    true
                }
                None => false,
            };
            for d in new.deliveries {
                let list = listed.then_some(&mut entry);
                self.enqueue_new(&mut batch, &mut heads, id, list, d, b.now_ms)?;
            }
            batch.insert(keys::event(id.as_bytes()), entry);
            outcomes.push(EventOutcome::Stored);
        }
        // No `NEXT_SEQ` write: every seq given out has its delivery record, and opening takes
        // the seq after the last record. Pruning, which removes records, writes it instead.
        self.commit(batch);
        Ok(outcomes)
    }

    /// Records an attempt; `state` (a key's state value) goes into the same log record, and
    /// nowhere when the finish is stale.
    fn finish(
        &mut self,
        claimed: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Box<StateWrite>>,
    ) -> Result<(), StoreError> {
        let seq = claimed.seq;
        let Some(mut rec) = self.delivery_rec(seq)? else {
            return Ok(());
        };
        if rec.state != DeliveryState::Pending || rec.due_ms != claimed.due_ms {
            // Someone else already finished this attempt (a stale lease); keep what is there.
            return Ok(());
        }
        let now = attempt.at_ms + attempt.latency_ms;
        let target = rec.target;
        let mut batch = Batch::default();
        // The record holds the last attempt; the one it replaces goes to the history.
        if let Some(previous) = rec.last_attempt() {
            batch.insert(
                keys::attempt(seq, previous.number).as_slice(),
                to_json(&previous),
            );
        }
        batch.remove(keys::ready(target, rec.due_ms, seq).as_slice());
        rec.attempts = attempt.number;
        rec.last_status = attempt.status;
        rec.last_error = attempt.error;
        rec.response_excerpt = attempt.response_excerpt;
        rec.last_at_ms = attempt.at_ms.max(1);
        rec.last_latency_ms = attempt.latency_ms;
        rec.updated_ms = now;
        match next {
            Next::Retry { due_ms } => {
                rec.due_ms = due_ms;
                batch.insert(keys::ready(target, due_ms, seq).as_slice(), []);
            }
            _ => self.bump(&mut batch, target, -1, i64::from(next == Next::Dead))?,
        }
        match next {
            Next::Retry { .. } => {}
            Next::Done | Next::Dead | Next::Skipped => {
                rec.state = match next {
                    Next::Dead => {
                        batch.insert(keys::dead(target, now, seq).as_slice(), []);
                        DeliveryState::Dead
                    }
                    Next::Skipped => DeliveryState::Skipped,
                    _ => DeliveryState::Done,
                };
                self.promote(&mut batch, target, &rec.ordering_key)?;
            }
        }
        // An ended delivery's record changes no more until it is pruned: sled's to keep.
        if rec.state == DeliveryState::Pending {
            batch.insert(keys::delivery(seq).as_slice(), to_json(&rec));
        } else {
            batch.insert_settled(keys::delivery(seq).as_slice(), to_json(&rec));
        }
        if let Some(write) = state {
            match *write {
                StateWrite {
                    key,
                    value: Some(v),
                } => batch.insert(key, v),
                StateWrite { key, value: None } => batch.remove(key),
            }
        }
        self.commit(batch);
        Ok(())
    }

    fn counts_of(&mut self, target: TargetId) -> Result<TargetCounts, StoreError> {
        if let Some(c) = self.counts.get(&target) {
            return Ok(*c);
        }
        let c = match self.get(&keys::target_prefix(b'C', target))? {
            Some(v) => counts_of_value(&v),
            None => TargetCounts::default(),
        };
        self.counts.insert(target, c);
        Ok(c)
    }

    /// Adjusts a target's counters and writes them in the same batch as the change.
    fn bump(
        &mut self,
        batch: &mut Batch,
        target: TargetId,
        pending: i64,
        dead: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.counts_of(target)?;
        c.pending = c.pending.saturating_add_signed(pending);
        c.dead = c.dead.saturating_add_signed(dead);
        self.counts.insert(target, c);
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&c.pending.to_be_bytes());
        v[8..].copy_from_slice(&c.dead.to_be_bytes());
        batch.insert(keys::target_prefix(b'C', target).as_slice(), v);
        Ok(())
    }

    /// Adjusts how many live event bodies a log segment holds, in the same batch as the change;
    /// the key goes when none is left, and the segment with it once a checkpoint covers it.
    fn bump_live(&mut self, batch: &mut Batch, segment: Lsn, by: i64) -> Result<(), StoreError> {
        let n = match self.live.get(&segment) {
            Some(n) => *n,
            None => self
                .get(&keys::live_bodies(segment))?
                .and_then(|v| keys::seq_of(&v))
                .unwrap_or(0),
        };
        let n = n.saturating_add_signed(by);
        self.live.insert(segment, n);
        if n == 0 {
            batch.remove(keys::live_bodies(segment).as_slice());
        } else {
            batch.insert(keys::live_bodies(segment).as_slice(), n.to_be_bytes());
        }
        Ok(())
    }

    /// Stores a new pending delivery and puts it at the end of its key's queue (or makes it
    /// the head). `heads` holds heads this batch created, which sled cannot show yet.
    fn enqueue_new(
        &mut self,
        batch: &mut Batch,
        heads: &mut HashMap<Vec<u8>, Seq>,
        event: uuid::Uuid,
        entry: Option<&mut Vec<u8>>,
        d: NewDelivery,
        now_ms: u64,
    ) -> Result<Seq, StoreError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enqueue(batch, heads, d.target, &d.ordering_key, seq, now_ms)?;
        match entry {
            Some(entry) => entry.extend_from_slice(&seq.to_be_bytes()),
            None => batch.insert(keys::event_delivery(event.as_bytes(), seq), []),
        }
        let record = Delivery {
            seq,
            event_id: event,
            target: d.target,
            ordering_key: d.ordering_key,
            state: DeliveryState::Pending,
            attempts: 0,
            due_ms: now_ms,
            created_ms: now_ms,
            updated_ms: now_ms,
            last_status: None,
            last_error: None,
            response_excerpt: None,
            retry_base: 0,
            last_at_ms: 0,
            last_latency_ms: 0,
        };
        batch.insert_new(keys::delivery(seq).as_slice(), to_json(&record));
        self.bump(batch, d.target, 1, 0)?;
        Ok(seq)
    }

    fn enqueue(
        &self,
        batch: &mut Batch,
        heads: &mut HashMap<Vec<u8>, Seq>,
        target: TargetId,
        key: &str,
        seq: Seq,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        let head_key = keys::head(target, key);
        let has_head = heads.contains_key(&head_key) || self.get(&head_key)?.is_some();
        if has_head {
            batch.insert(keys::follower(target, key, seq).as_slice(), []);
        } else {
            batch.insert_new(head_key.as_slice(), seq.to_be_bytes());
            batch.insert_new(keys::ready(target, due_ms, seq).as_slice(), []);
            heads.insert(head_key, seq);
        }
        Ok(())
    }

    fn prune(&mut self, p: Prune) -> Result<Pruned, StoreError> {
        // Event ids are UUIDv7: their first 48 bits are the creation time, so the scan can stop
        // at the first event younger than both retention periods.
        let boundary = p.done_before_ms.max(p.dead_before_ms);
        let start = match p.after {
            Some(id) => [keys::event(id.as_bytes()), vec![0]].concat(),
            None => b"E".to_vec(),
        };
        let mut batch = Batch::default();
        let mut pruned = Pruned::default();
        let mut scanned = 0;
        let mut last = None;
        let mut reached_boundary = true;
        for item in self.db.range(start..b"F".to_vec()) {
            let (key, value) = item?;
            let Some(id) = key.get(1..17).and_then(|b| uuid::Uuid::from_slice(b).ok()) else {
                continue;
            };
            if (id.as_u128() >> 80) as u64 >= boundary {
                break;
            }
            if scanned == p.max_events {
                reached_boundary = false;
                break;
            }
            scanned += 1;
            last = Some(id);
            let mut deliveries = Vec::new();
            for seq in event_seqs(&self.db, id, &value)? {
                deliveries.extend(self.delivery_rec(seq)?);
            }
            let expired = deliveries.iter().all(|d| match d.state {
                DeliveryState::Pending => false,
                DeliveryState::Dead => d.updated_ms < p.dead_before_ms,
                DeliveryState::Done | DeliveryState::Skipped => d.updated_ms < p.done_before_ms,
            });
            if !expired {
                continue;
            }
            let listed = wal::is_entry(&value);
            for d in &deliveries {
                if !listed {
                    batch.remove(keys::event_delivery(id.as_bytes(), d.seq));
                }
                batch.remove(keys::delivery(d.seq).as_slice());
                for a in self.db.scan_prefix(keys::attempts(d.seq)).keys() {
                    batch.remove(a?.as_ref());
                }
                if d.state == DeliveryState::Dead {
                    batch.remove(keys::dead(d.target, d.updated_ms, d.seq).as_slice());
                    self.bump(&mut batch, d.target, 0, -1)?;
                }
            }
            if let Some(p) = Pointer::decode(&value) {
                self.bump_live(&mut batch, p.segment, -1)?;
            }
            batch.remove(key.as_ref());
            pruned.events += 1;
        }
        if pruned.events > 0 {
            // The last delivery record may be among those removed: the next seq is kept here
            // so that opening never gives a seq out again.
            batch.insert(keys::NEXT_SEQ, self.next_seq.to_be_bytes());
        }
        pruned.resume_after = if reached_boundary { None } else { last };
        // Expired dedup keys: their sender stopped retrying long ago. Stores written before
        // dedup keys were swept also index them by expiry (`Y`); that index is drained here. A
        // key stored again since then has a later expiry and stays.
        let mut removed = HashSet::new();
        let expired = keys::dedup_expiry(0, b"")..keys::dedup_expiry(p.now_ms, b"");
        for k in self.db.range(expired).keys().take(p.max_events) {
            let k = k?;
            let until = keys::seq_of(&k[1..9]).unwrap_or(0);
            let dedup_key = &k[9..];
            if self.db.get(dedup_key)?.and_then(|v| keys::seq_of(&v)) == Some(until) {
                batch.remove(dedup_key);
                removed.insert(dedup_key.to_vec());
                pruned.dedup_keys += 1;
            }
            batch.remove(k.as_ref());
        }
        // The dedup keys themselves are swept, `max_events` per call from where the last call
        // stopped: an index by expiry cost an insert per event at ingest, and dedup windows
        // (30 days by default) make a late sweep harmless.
        let from = self.dedup_sweep.take().unwrap_or_else(|| b"D".to_vec());
        for (swept, item) in self.db.range(from..b"E".to_vec()).enumerate() {
            let (k, v) = item?;
            if swept == p.max_events {
                self.dedup_sweep = Some(k.to_vec());
                break;
            }
            let expired = keys::seq_of(&v).is_some_and(|until| until < p.now_ms);
            if expired && !removed.contains(k.as_ref()) {
                batch.remove(k.as_ref());
                pruned.dedup_keys += 1;
            }
        }
        self.commit(batch);
        Ok(pruned)
    }

    /// Copies each body to the end of the log and points its event there, unless the event was
    /// pruned or its body moved since the caller looked.
    fn relocate(&mut self, bodies: Vec<(Vec<u8>, Pointer)>) -> Result<usize, StoreError> {
        let mut batch = Batch::default();
        let mut moved = 0;
        for (key, from) in bodies {
            let Some(entry) = self.get(&key)? else {
                continue;
            };
            if Pointer::decode(&entry) != Some(from) {
                continue;
            }
            let body = self.wal.read(from).map_err(io_error)?;
            let to = self.wal.append_body(&body);
            self.bump_live(&mut batch, from.segment, -1)?;
            self.bump_live(&mut batch, to.segment, 1)?;
            batch.insert(key, to.entry(wal::entry_seqs(&entry)));
            moved += 1;
        }
        self.commit(batch);
        Ok(moved)
    }

    fn replay(&mut self, seqs: &[Seq], now_ms: u64) -> Result<usize, StoreError> {
        let mut batch = Batch::default();
        let mut heads = HashMap::new();
        let mut replayed = 0;
        for &seq in seqs {
            let Some(mut rec) = self.delivery_rec(seq)? else {
                continue;
            };
            if rec.state != DeliveryState::Dead {
                continue;
            }
            batch.remove(keys::dead(rec.target, rec.updated_ms, seq).as_slice());
            self.enqueue(
                &mut batch,
                &mut heads,
                rec.target,
                &rec.ordering_key,
                seq,
                now_ms,
            )?;
            rec.state = DeliveryState::Pending;
            rec.retry_base = rec.attempts;
            rec.due_ms = now_ms;
            rec.updated_ms = now_ms;
            batch.insert(keys::delivery(seq).as_slice(), to_json(&rec));
            self.bump(&mut batch, rec.target, 1, -1)?;
            replayed += 1;
        }
        self.commit(batch);
        Ok(replayed)
    }

    fn redeliver(
        &mut self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        let key = keys::event(event.as_bytes());
        let Some(stored) = self.get(&key)? else {
            return Ok(Vec::new());
        };
        let mut batch = Batch::default();
        let mut entry = stored.to_vec();
        let listed = wal::make_entry(&mut entry).is_some();
        if listed && !wal::is_entry(&stored) {
            // A plain pointer becomes an entry: the deliveries under `V` keys move into it.
            for seq in event_seqs(&self.db, event, &stored)? {
                entry.extend_from_slice(&seq.to_be_bytes());
                batch.remove(keys::event_delivery(event.as_bytes(), seq));
            }
        }
        let mut heads = HashMap::new();
        let mut seqs = Vec::new();
        for d in deliveries {
            let list = listed.then_some(&mut entry);
            seqs.push(self.enqueue_new(&mut batch, &mut heads, event, list, d, now_ms)?);
        }
        if listed {
            batch.insert(key, entry);
        }
        self.commit(batch);
        Ok(seqs)
    }

    /// Makes the oldest follower of an ordering key its new head, or forgets the key.
    fn promote(&self, batch: &mut Batch, target: TargetId, key: &str) -> Result<(), StoreError> {
        let prefix = keys::followers(target, key);
        match self.first_with_prefix(&prefix)? {
            Some(k) => {
                let next = keys::seq_of(&k[prefix.len()..])
                    .ok_or_else(|| StoreError::Corrupt("malformed follower key".into()))?;
                let rec = self
                    .delivery_rec(next)?
                    .ok_or_else(|| StoreError::Corrupt(format!("follower {next} is missing")))?;
                batch.remove(k);
                batch.insert_new(keys::ready(target, rec.due_ms, next).as_slice(), []);
                batch.insert(keys::head(target, key), next.to_be_bytes());
            }
            None => batch.remove(keys::head(target, key)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{normalize, Received, SourceKind};
    use crate::store::{NewDelivery, NewEvent};

    fn new_event(n: usize, targets: &[TargetId]) -> NewEvent {
        let body = serde_json::json!({
            "type": "StatusChange", "recorded_at": "2025-07-17T02:20:45Z",
            "monitor": {"id": "m"}, "status": "down", "message": format!("n{n}"),
        })
        .to_string();
        let event = normalize(&Received {
            source: "sg",
            kind: SourceKind::Statusgator,
            content_type: Some("application/json"),
            body: body.into(),
            query: Default::default(),
            received_at: chrono::Utc::now(),
            webhook_id: None,
        })
        .unwrap()
        .pop()
        .unwrap();
        let deliveries = targets
            .iter()
            .map(|t| NewDelivery {
                target: *t,
                ordering_key: format!("k{t}"),
            })
            .collect();
        NewEvent::new(&event, deliveries).unwrap()
    }

    fn attempt(number: u32, at_ms: u64) -> Attempt {
        Attempt {
            number,
            at_ms,
            latency_ms: 3,
            status: Some(200),
            error: None,
            response_excerpt: None,
        }
    }

    async fn deliver(store: &SledStore, target: TargetId, at_ms: u64) -> Seq {
        let Claim::Due(d) = store.claim(target, at_ms).await.unwrap() else {
            panic!("nothing due for target {target}")
        };
        let number = d.attempts + 1;
        store
            .finish(&d, attempt(number, at_ms), Next::Done)
            .await
            .unwrap();
        d.seq
    }

    fn open_sled(dir: &Path) -> sled::Db {
        for _ in 0..40 {
            match sled::open(dir) {
                Ok(db) => return db,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        panic!("sled stayed locked")
    }

    fn one_event(n: usize, now_ms: u64) -> IngestBatch {
        IngestBatch {
            events: vec![new_event(n, &[1])],
            now_ms,
            dedup_until_ms: now_ms + 1_000,
        }
    }

    /// Keys of the kinds held in memory (ready, head, delivery record) that sled holds.
    fn index_keys(db: &sled::Db) -> usize {
        [b"R", b"K", b"L"]
            .iter()
            .map(|p| db.scan_prefix(p).count())
            .sum()
    }

    /// A delivery's ready key, head key and record are held in memory while they are young:
    /// delivered then, only its final record reaches sled; still pending when they grow old,
    /// they are moved there. Either way every reader sees them.
    #[tokio::test]
    async fn young_index_keys_stay_out_of_sled_and_old_ones_move_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.target_ids(&["t".into()]).await.unwrap(), [1]);
        store.ingest(one_event(1, 1_000)).await.unwrap();
        assert_eq!(index_keys(&store.db), 0, "held, not in sled");
        assert_eq!(store.oldest_pending_ms(1).await.unwrap(), Some(1_000));
        let held = store.delivery(1).await.unwrap().unwrap();
        assert_eq!(held.state, DeliveryState::Pending);
        assert_eq!(store.stats().await.unwrap().pending, 1);
        assert_eq!(deliver(&store, 1, 1_000).await, 1);
        assert_eq!(
            store.delivery(1).await.unwrap().unwrap().state,
            DeliveryState::Done
        );
        // An ended delivery's record goes to sled at once; its index keys never did.
        assert_eq!(index_keys(&store.db), 1);
        store.ingest(one_event(2, 2_000)).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.pending, stats.done), (1, 1));
        store.close().await.unwrap();
        drop(store);
        let db = open_sled(dir.path());
        // The delivered one left its record only; the pending one went into sled at the stop.
        assert_eq!(db.scan_prefix(b"R").count(), 1);
        assert_eq!(db.scan_prefix(b"K").count(), 1);
        assert_eq!(db.scan_prefix(b"L").count(), 2);
        drop(db);

        let log = LogOptions {
            hold_for: Duration::ZERO,
            ..LogOptions::default()
        };
        let store = SledStore::open_with_log(dir.path(), log).unwrap();
        // Held for no time: in sled as soon as its group is applied. The third event waits
        // behind the second (same ordering key); delivering the second makes it the head.
        store.ingest(one_event(3, 3_000)).await.unwrap();
        assert_eq!(store.db.scan_prefix(b"L").count(), 3);
        assert_eq!(deliver(&store, 1, 3_000).await, 2);
        let ready: Vec<_> = store.db.scan_prefix(b"R").keys().collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            keys::parse_timed(&ready[0].as_ref().unwrap()[..]),
            Some((3_000, 3))
        );
        assert_eq!(store.oldest_pending_ms(1).await.unwrap(), Some(3_000));
        assert_eq!(deliver(&store, 1, 3_000).await, 3);
        store.close().await.unwrap();
    }

    /// Keys held in memory when the process dies are in the log, and the applied LSN recorded
    /// in sled is below them: the next start writes them into sled and the delivery is due.
    #[tokio::test]
    async fn index_keys_held_at_a_crash_are_recovered_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.target_ids(&["t".into()]).await.unwrap();
        store.ingest(one_event(1, 1_000)).await.unwrap();
        store.ingest(one_event(2, 1_000)).await.unwrap();
        assert_eq!(deliver(&store, 1, 1_000).await, 1);
        // Only the ended delivery's record is in sled; the pending one's keys are held.
        assert_eq!(index_keys(&store.db), 1);
        assert!(store.db.contains_key(keys::delivery(1)).unwrap());
        let _ = store.submit(Op::Crash).await;
        drop(store);

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(deliver(&store, 1, 1_000).await, 2);
        assert!(matches!(store.claim(1, 1_000).await.unwrap(), Claim::Empty));
        store.close().await.unwrap();
    }

    /// Stores written before event entries keep an event's deliveries under `V` keys and every
    /// attempt under an `A` key. Such a store is rewritten here by hand, then read, extended
    /// and pruned: nothing of it is lost or left behind.
    #[tokio::test]
    async fn a_store_from_before_event_entries_is_read_extended_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let ev = new_event(1, &[1, 2]);
        let id = ev.id;
        let dedup_key = keys::dedup(&ev.source, &ev.dedup_key);
        {
            let store = SledStore::open(dir.path()).unwrap();
            let t = store.target_ids(&["a".into(), "b".into()]).await.unwrap();
            assert_eq!(t, [1, 2]);
            let batch = IngestBatch {
                events: vec![ev],
                now_ms: 1_000,
                dedup_until_ms: 2_000,
            };
            store.ingest(batch).await.unwrap();
            assert_eq!(deliver(&store, 1, 1_000).await, 1);
            store.close().await.unwrap();
        }
        {
            let db = open_sled(dir.path());
            let key = keys::event(id.as_bytes());
            let entry = db.get(&key).unwrap().unwrap();
            assert!(wal::is_entry(&entry));
            assert_eq!(wal::entry_seqs(&entry).collect::<Vec<_>>(), [1, 2]);
            let pointer = Pointer::decode(&entry).unwrap();
            db.insert(&key, &pointer.encode()).unwrap();
            for seq in [1, 2] {
                db.insert(keys::event_delivery(id.as_bytes(), seq), &[])
                    .unwrap();
            }
            let mut first = get_delivery(&db, &Overlay::default(), 1).unwrap().unwrap();
            let last = first.last_attempt().unwrap();
            first.last_at_ms = 0;
            first.last_latency_ms = 0;
            db.insert(keys::delivery(1), to_json(&first)).unwrap();
            db.insert(keys::attempt(1, 1), to_json(&last)).unwrap();
            assert!(db.get(&dedup_key).unwrap().is_some());
            db.insert(keys::dedup_expiry(2_000, &dedup_key), &[])
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let seqs = |ds: Vec<Delivery>| ds.iter().map(|d| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.deliveries_of(id).await.unwrap()), [1, 2]);
        assert_eq!(store.attempts(1).await.unwrap(), [attempt(1, 1_000)]);

        let added = store
            .redeliver(
                id,
                vec![NewDelivery {
                    target: 1,
                    ordering_key: "k1".into(),
                }],
                1_500,
            )
            .await
            .unwrap();
        assert_eq!(added, [3]);
        assert_eq!(seqs(store.deliveries_of(id).await.unwrap()), [1, 2, 3]);
        let entry = store.db.get(keys::event(id.as_bytes())).unwrap().unwrap();
        assert_eq!(wal::entry_seqs(&entry).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            store.db.scan_prefix(b"V").count(),
            0,
            "the V keys moved into the entry"
        );

        assert_eq!(deliver(&store, 2, 2_000).await, 2);
        assert_eq!(deliver(&store, 1, 2_000).await, 3);
        assert_eq!(store.attempts(3).await.unwrap(), [attempt(1, 2_000)]);
        let pruned = store
            .prune(Prune {
                done_before_ms: u64::MAX,
                dead_before_ms: u64::MAX,
                now_ms: 10_000,
                after: None,
                max_events: 100,
            })
            .await
            .unwrap();
        assert_eq!((pruned.events, pruned.dedup_keys), (1, 1));
        for prefix in [b"E", b"V", b"L", b"A", b"D", b"Y"] {
            assert_eq!(store.db.scan_prefix(prefix).count(), 0, "{prefix:?} left");
        }
        store.close().await.unwrap();
    }

    /// Pruning sweeps the dedup keys themselves a slice per call, resuming where it stopped:
    /// keys still in their window never hold the sweep back from the expired ones behind them.
    #[tokio::test]
    async fn expired_dedup_keys_are_swept_a_slice_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let ingest = |n: usize, until: u64| IngestBatch {
            events: vec![new_event(n, &[])],
            now_ms: 1_000,
            dedup_until_ms: until,
        };
        // Four keys in their window, then (in key order) two expired ones: a sweep that began
        // at the first key each time would never reach them.
        for n in 0..6 {
            let until = if n == 3 || n == 5 { 2_000 } else { 9_000 };
            store.ingest(ingest(n, until)).await.unwrap();
        }
        let order: Vec<u64> = store
            .db
            .scan_prefix(b"D")
            .values()
            .map(|v| keys::seq_of(&v.unwrap()).unwrap())
            .collect();
        assert_eq!(order, [9_000, 9_000, 9_000, 9_000, 2_000, 2_000]);
        assert_eq!(store.db.scan_prefix(b"Y").count(), 0, "no expiry index");
        let prune = || Prune {
            done_before_ms: 0,
            dead_before_ms: 0,
            now_ms: 3_000,
            after: None,
            max_events: 2,
        };
        let mut swept = Vec::new();
        for _ in 0..3 {
            swept.push(store.prune(prune()).await.unwrap().dedup_keys);
        }
        assert_eq!(swept.iter().sum::<usize>(), 2, "{swept:?}");
        assert_eq!(store.db.scan_prefix(b"D").count(), 4);
        assert_eq!(store.prune(prune()).await.unwrap().dedup_keys, 0);
        // A key still in its window keeps its event from being stored twice.
        assert_eq!(
            store.ingest(ingest(0, 9_000)).await.unwrap(),
            [EventOutcome::Duplicate]
        );
        store.close().await.unwrap();
    }
}
