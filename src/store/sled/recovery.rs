//! Opening the embedded store: the manifest and its format version, sled, replay of the log,
//! making everything durable before any log segment goes, and the queue rebuilt (in the
//! background).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::memtable::{self, Slot};
use super::packs::Packs;
use super::queue::{key_hash, Builder, Queue};
use super::wal::{self, LogOp, Lsn, Segments, Wal, WalError};
use super::{io_error, keys, LogOptions, Shared, SledStore, WAL_DIR};
use crate::store::{Seq, StoreError};

/// sled's page cache. The relay reads little back from sled (claims come from the in-memory
/// queue; event bodies from the log), and pages it misses are in the OS page cache. Measured:
/// 4 MiB instead of 64 MiB cut peak RSS from 230 to 125 MB with an empty queue and from 596
/// to 359 MB with 1M pending, at the same throughput.
const CACHE_BYTES: u64 = 4 << 20;

/// How much of the log's writes replay gathers before it writes them into sled: bytes of keys
/// and values, and keys.
const REPLAY_BATCH_BYTES: usize = 16 << 20;
const REPLAY_BATCH_KEYS: usize = 100_000;

/// What opening found, for the writer and the store to start from.
pub struct Opened {
    pub db: sled::Db,
    pub packs: Packs,
    pub last_lsn: Lsn,
    pub next_seq: Seq,
    pub live: HashMap<Lsn, u64>,
    pub wal: Wal,
    pub segments: Arc<Segments>,
}

/// Opens the store in `path`: see the module docs for the order of things.
pub fn open(path: &Path, accept_damage: bool, log: &LogOptions) -> Result<Opened, StoreError> {
    let started = Instant::now();
    wal::create_private_dir(path).map_err(io_error)?;
    let manifest = Manifest::read(path)?;
    let db = open_sled(path)?;
    let packs = Packs::open(&db)?;
    let sled_opened = started.elapsed();
    let wal_dir = path.join(WAL_DIR);
    let batch = ReplayBatch {
        bytes: REPLAY_BATCH_BYTES,
        keys: REPLAY_BATCH_KEYS,
    };
    let last_lsn = replay(&db, &packs, &wal_dir, accept_damage, batch)?;
    // A crashed predecessor's writes to sled may still be only in the page cache, where sled
    // reads them back as if durable; they and the replay are made durable before any log
    // segment can be deleted (a power cut would otherwise lose what both held).
    db.flush()?;
    sync_files(path).map_err(io_error)?;
    // The log's directory is never deleted, only the segments in it.
    let replayed = started.elapsed();
    let stored = db
        .get(keys::NEXT_SEQ)?
        .and_then(|v| keys::seq_of(&v))
        .unwrap_or(1);
    // A delivery has its record (`L`) from its first attempt on, its pending key (`P`, or in
    // a pack) until it ends: the last seq given out has one or both.
    let mut next_seq = stored.max(packs.last_seq().map_or(1, |s| s + 1));
    for prefix in [b"L", b"P"] {
        if let Some(k) = db.scan_prefix(prefix).keys().next_back() {
            next_seq = next_seq.max(keys::seq_of(&k?[1..]).map_or(1, |s| s + 1));
        }
    }
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
    // Startup time grows with the store (sled reads its page table on opening): worth
    // knowing where it went.
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        sled_open_ms = sled_opened.as_millis() as u64,
        log_replay_ms = (replayed - sled_opened).as_millis() as u64,
        next_seq,
        "store opened"
    );
    Ok(Opened {
        db,
        packs,
        last_lsn,
        next_seq,
        live,
        wal,
        segments,
    })
}

/// Reads every pending delivery (`P` keys and packs) into the queue, on threads of its own, so
/// the relay answers before a large backlog is read (844,552 pending: 0.15 – 0.2 s, see
/// [`read_pending`]). Until it is done the queue holds the changes made meanwhile and claims
/// wait ([`SledStore::queue_loaded`]). Nothing writes sled meanwhile (the applier starts once
/// this thread ends, see `apply::start`), so the scan sees exactly the state opening left; the
/// held changes are the log records after it, applied on top in order. A scan that fails stops
/// the store (the relay exits with the cause, as a failed opening did).
pub fn load_queue(shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    #[cfg(test)]
    let hold = tests::HOLD.with(|h| h.borrow_mut().take());
    std::thread::Builder::new()
        .name("hookrelay-queue".into())
        .spawn(move || {
            #[cfg(test)]
            if let Some(hold) = hold {
                let _ = hold.recv();
            }
            let started = Instant::now();
            // Claims must not wait forever should this thread end without an answer.
            let failed = Failed(&shared);
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            let (read, pending) = match read_pending(&shared, threads, READ_SLICE_MIN) {
                Ok(read) => read,
                // The cause is recorded first (the store keeps the first one); the guard
                // then marks the load failed as it goes out of scope.
                Err(e) => return shared.failure.fail("rebuilding the queue at opening", &e),
            };
            shared.queue().loaded(read);
            std::mem::forget(failed);
            shared.loaded.send_replace(Load::Done);
            tracing::info!(
                pending,
                ms = started.elapsed().as_millis() as u64,
                "queue rebuilt"
            );
        })
}

/// Stops the store when the queue could not be read (an error, or a panic): claims waiting
/// for it fail instead of waiting forever.
struct Failed<'a>(&'a Shared);

impl Drop for Failed<'_> {
    fn drop(&mut self) {
        self.0
            .failure
            .fail("rebuilding the queue at opening", &"the reading stopped");
        self.0.loaded.send_replace(Load::Failed);
    }
}

/// Where reading the queue at opening is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Reading,
    Done,
    Failed,
}

impl SledStore {
    /// Waits until the queue holds every pending delivery: a claim before then could take a
    /// key's later delivery ahead of an earlier one not read yet.
    pub(super) async fn queue_loaded(&self) -> Result<(), StoreError> {
        // Every claim asks: once loaded, answer without a subscription.
        if *self.shared.loaded.borrow() == Load::Done {
            return Ok(());
        }
        let mut rx = self.shared.loaded.subscribe();
        let load = rx
            .wait_for(|l| *l != Load::Reading)
            .await
            .map(|l| *l)
            .unwrap_or(Load::Failed);
        match load {
            Load::Done => Ok(()),
            _ => Err(self.closed()),
        }
    }
}

/// Pending deliveries fewer than this are read by one thread.
const READ_SLICE_MIN: u64 = 50_000;

/// Reads the pending deliveries (their own `P` keys and the packs) in slices of their seqs, on
/// `threads` threads (one per core, at most four), each slice at least `min_per_slice` seqs
/// wide; the queue is built from all of them together. sled 0.34 looks each key of a scan up
/// from the root again, so a read of a key per delivery was bound by the CPU (1.0 – 1.4 s for
/// 864,756 on one thread of this machine, 0.66 – 0.73 s on two); packed, 844,552 are read in
/// 0.15 – 0.2 s on two.
pub(super) fn read_pending(
    shared: &Shared,
    threads: usize,
    min_per_slice: u64,
) -> Result<(Queue, usize), StoreError> {
    let bounds = slices(&shared.db, &shared.mem.packs, threads, min_per_slice)?;
    let read: Vec<Result<(Builder, usize), StoreError>> = std::thread::scope(|scope| {
        let readers: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let (from, to) = (w[0], w[1]);
                scope.spawn(move || read_slice(shared, from, to))
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut builder = Builder::default();
    let mut n = 0;
    for slice in read {
        let (b, count) = slice?;
        builder.merge(b);
        n += count;
    }
    Ok((builder.build(), n))
}

/// The bounds of the slices of the pending deliveries' seqs: `threads` or fewer ranges of
/// about equal width (at least `min_width`), each from one bound (included) to the next
/// (excluded), the first from 0 and the last to `u64::MAX`, so together they hold every
/// pending delivery once, whether sled keeps it as its own key or in a pack (a pack goes with
/// the slice of its first seq).
pub(super) fn slices(
    db: &sled::Db,
    packs: &Packs,
    threads: usize,
    min_width: u64,
) -> Result<Vec<Seq>, StoreError> {
    let mut bounds = vec![0];
    let seq = |k: Option<sled::IVec>| k.and_then(|k| keys::seq_of(&k[1..]));
    let first = seq(db.scan_prefix(b"P").keys().next().transpose()?);
    let last = seq(db.scan_prefix(b"P").keys().next_back().transpose()?);
    let lo = first.into_iter().chain(packs.first_seq()).min();
    let hi = last.into_iter().chain(packs.last_seq()).max();
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let width = hi.saturating_sub(lo);
        let n = (threads as u64).min(width / min_width.max(1)).max(1);
        for i in 1..n {
            bounds.push(lo + width / n * i);
        }
    }
    bounds.push(u64::MAX);
    Ok(bounds)
}

fn read_slice(shared: &Shared, from: Seq, to: Seq) -> Result<(Builder, usize), StoreError> {
    let mut builder = Builder::default();
    let mut n = 0;
    let mut add = |seq: Option<Seq>, value: &[u8]| {
        let (Some(seq), Some(p)) = (seq, keys::Pending::parse(value)) else {
            return Err(StoreError::Corrupt("malformed pending delivery".into()));
        };
        let key = key_hash(&shared.hasher, p.target, p.ordering_key);
        builder.add(p.target, key, seq, p.pos, p.due_ms);
        n += 1;
        Ok(())
    };
    let end = match to {
        u64::MAX => b"Q".to_vec(),
        to => keys::pending(to).to_vec(),
    };
    for item in shared.db.range(keys::pending(from).to_vec()..end) {
        let (k, v) = item?;
        add(keys::seq_of(&k[1..]), &v)?;
    }
    shared
        .mem
        .packs
        .each_entry(&shared.db, from, to, |seq, v| add(Some(seq), v))?;
    Ok((builder, n))
}

/// Opens the sled database in `path`.
pub fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let open = || {
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled caches up to 1 GiB by default.
            .cache_capacity(CACHE_BYTES)
            // The log makes writes durable; the applier flushes sled at checkpoints, knowing
            // how much of the log each covers.
            .flush_every_ms(None)
            .open()
    };
    // sled lets go of its directory lock a moment after the last handle is dropped (its I/O
    // threads finish their last write), so opening right after a close can find the lock
    // still held. It is tried again for a second before being reported: a second relay on
    // the same directory still fails.
    let db = backon::BlockingRetryable::retry(
        open,
        backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(50))
            .with_max_times(20),
    )
    .when(|e| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock")))
    .call()?;
    restrict(path).map_err(sled::Error::Io)?;
    Ok(db)
}

/// Makes the files sled created readable by the owner only (it creates them with the umask's
/// mode; they hold every event's routing data).
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() {
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Syncs every file sled keeps in `path` (its `blobs` directory included) and the directories
/// themselves. sled's own `flush` does not: it writes with `sync_file_range`, which makes
/// neither the file's metadata nor the device's cache durable, and it syncs no directory after
/// creating its files.
pub fn sync_files(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            match std::fs::File::open(entry.path()).and_then(|f| f.sync_all()) {
                // Gone meanwhile (an old snapshot sled deleted, the manifest's temporary file
                // renamed): nothing of it to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        } else if kind.is_dir() && entry.file_name() == "blobs" {
            sync_files(&entry.path())?;
        }
    }
    wal::sync_dir(path)
}

/// How many of the log's writes replay gathers before it writes them into sled.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayBatch {
    pub bytes: usize,
    pub keys: usize,
}

/// Applies the log records sled does not hold yet and returns the last LSN (the log is then
/// started afresh after it).
pub(super) fn replay(
    db: &sled::Db,
    packs: &Packs,
    dir: &Path,
    accept_damage: bool,
    batch: ReplayBatch,
) -> Result<Lsn, StoreError> {
    let applied = db
        .get(keys::APPLIED_LSN)?
        .and_then(|v| keys::seq_of(&v))
        .unwrap_or(0);
    // Like the applier: the records' writes gathered (each key's last write) a batch at a time
    // and written key by key, a pending key into the pack that spans its seq (so a record that
    // ends a packed delivery does not rewrite its pack on its own). The applied LSN is written
    // once at the end, so a crash during replay makes the next start replay the same records
    // again.
    let mut writes: BTreeMap<Vec<u8>, Slot> = BTreeMap::new();
    let mut bytes = 0;
    let flush = |writes: &mut BTreeMap<Vec<u8>, Slot>| {
        let it = writes.iter().map(|(k, s)| (k.as_slice(), s));
        packs.write(db, it, false)?;
        writes.clear();
        Ok::<(), sled::Error>(())
    };
    let last = wal::replay(dir, applied, accept_damage, |_, ops| {
        for op in ops {
            let (key, slot) = match op {
                LogOp::Insert(k, v) => (k, Slot::Put(v.to_vec())),
                LogOp::Remove(k) => (k, Slot::Remove),
                // A body stays where it is.
                LogOp::Body => continue,
            };
            bytes += key.len() + slot.value().map_or(0, <[u8]>::len);
            memtable::put(&mut writes, key.to_vec(), slot);
        }
        if bytes >= batch.bytes || writes.len() >= batch.keys {
            bytes = 0;
            flush(&mut writes).map_err(|e| WalError::Io(std::io::Error::other(e)))?;
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
    flush(&mut writes)?;
    if last > applied {
        db.insert(keys::APPLIED_LSN, &last.to_be_bytes())?;
        tracing::info!(
            records = last - applied,
            last_lsn = last,
            "applied the write-ahead log to the store"
        );
    }
    Ok(last)
}

/// A small file beside the database: the store's format version, and how far it is known to
/// be durable (the next delivery seq as of a log sync that succeeded). A build refuses a
/// format it does not know. And a store that holds less than its manifest says (damaged,
/// truncated, files replaced) is refused rather than quietly forgetting what it acknowledged.
pub struct Manifest;

const MANIFEST: &str = "hookrelay.manifest";

/// The format this build writes and reads. 4: sled keeps new deliveries' pending keys in packs
/// (`N`, see `packs`). Since 3: a new delivery has no record (`L`) until its first attempt, and
/// its pending key (`P`) carries its event, its creation time and whether it has a record.
pub const FORMAT: u64 = 4;

impl Manifest {
    fn read(dir: &Path) -> Result<Option<Seq>, StoreError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        match v["format"].as_u64() {
            Some(FORMAT) => Ok(v["next_seq"].as_u64()),
            found => Err(StoreError::Format {
                path: path.display().to_string(),
                found: found.map_or_else(|| "none".to_owned(), |f| f.to_string()),
                known: FORMAT,
            }),
        }
    }

    /// Written to a temporary file, synced, renamed over the old one, and the directory
    /// synced.
    pub fn write(dir: &Path, next_seq: Seq) -> Result<(), StoreError> {
        use std::io::Write;
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let mut f = wal::create_private_file(&tmp).map_err(io_error)?;
        f.write_all(
            serde_json::json!({"format": FORMAT, "next_seq": next_seq})
                .to_string()
                .as_bytes(),
        )
        .map_err(io_error)?;
        f.sync_all().map_err(io_error)?;
        std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io_error)?;
        wal::sync_dir(dir).map_err(io_error)
    }

    /// Accepts a damaged store as it is: the manifest is rewritten to what the database holds.
    /// Returns (what the manifest recorded, what the database holds) as last delivery numbers.
    pub fn accept_damage(dir: &Path) -> Result<(u64, u64), StoreError> {
        let recorded = Self::read(dir)?.unwrap_or(1);
        std::fs::remove_file(dir.join(MANIFEST)).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io_error(e))
            }
        })?;
        // Opening writes a new manifest from what the database holds.
        drop(super::SledStore::open_inner(
            dir,
            true,
            LogOptions::default(),
        )?);
        let found = Self::read(dir)?.unwrap_or(1);
        Ok((recorded.saturating_sub(1), found.saturating_sub(1)))
    }
}

#[cfg(test)]
pub mod tests {
    use std::cell::RefCell;
    use std::sync::mpsc::Receiver;

    thread_local! {
        /// A test holds the next store opened on its thread before it reads its queue, until
        /// the sender is used or dropped.
        pub static HOLD: RefCell<Option<Receiver<()>>> = const { RefCell::new(None) };
    }
}
