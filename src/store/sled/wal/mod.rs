//! The sled store's write-ahead log.
//!
//! sled makes a write durable by flushing its page cache, which rewrites whole pages and costs
//! milliseconds per flush; with a flush per group commit it capped acknowledgements at a few
//! thousand per second. The log makes the same writes durable as one sequential append and one
//! `fdatasync` per group (a fraction of a millisecond here), and sled is flushed in the
//! background instead (a checkpoint). After a crash the records newer than the last checkpoint
//! are applied to sled again when the store opens.
//!
//! Every record carries a log sequence number (LSN). The applier writes a table of records into
//! sled key by key and then the LSN of its last record (`keys::APPLIED_LSN`), so the LSN sled
//! holds says which records it surely contains; it may hold some keys of later records too (a
//! crash in the middle of a table). Replay applies every record after that LSN in order, and
//! records are physical (keys and values): applying one again yields the same state, and the
//! log's last write of each key wins.
//!
//! The log is also where event bodies live. A body in sled would be copied again each time
//! sled rewrites the page around it (about 10 KB written per 1 KB event); instead each body is
//! a record of its own, synced before the batch that refers to it is applied, and sled keeps a
//! [`Pointer`] to it. Reading an event is one `pread`.
//!
//! Segments are files named by their first LSN. A segment is deleted once a checkpoint covers
//! every record in it and no stored event points into it (the store counts them per segment).
//! A segment that few stored events keep is compacted: the store copies their bodies to the
//! end of the log and the segment goes (see `bodies_in`).
//! A record is `[len u32][crc32 u32][lsn u64][synced u64][ops]`, little-endian, the CRC over
//! everything after it; `synced` is how far its segment was known to be on disk when the record
//! was added (the end of the last synced group). An op is `[1][key len u32][key][value len
//! u32][value]` (insert), `[2][key len u32][key]` (remove) or `[3][len u32][bytes]` (an event
//! body).
//!
//! After a crash, the last segment may end in a group that was being written and never synced
//! (never acknowledged), and any of its pages may be missing: an unreadable record there is cut
//! off with everything after it. But a record that is unreadable although a valid record after
//! it says the log was synced beyond it is damage to acknowledged data: the store refuses to
//! open rather than drop what follows.

mod read;

pub use read::{bodies_in, checkpointed_segments, replay};

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 24;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;
const BODY: u8 = 3;

pub type Lsn = u64;

pub struct Wal {
    dir: PathBuf,
    segments: Arc<Segments>,
    file: File,
    written: u64,
    /// The first LSN of the current segment (its name).
    current_first: Lsn,
    /// Closed segments, oldest first: (first LSN, path).
    closed: Vec<(Lsn, PathBuf)>,
    /// Records of the current group, written at the next `sync`.
    buf: Vec<u8>,
    last_lsn: Lsn,
    /// The last LSN on disk: where the log goes back to when a write fails.
    synced_lsn: Lsn,
    segment_bytes: u64,
}

/// One operation of a record, as replay reads it.
pub enum LogOp<'a> {
    Insert(&'a [u8], &'a [u8]),
    Remove(&'a [u8]),
    /// An event body: nothing to apply, it is read where it lies.
    Body,
}

/// Where an event body lies in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: Lsn,
    pub offset: u64,
    pub len: u32,
}

/// The first byte of an event entry, the value sled keeps for an event: where its body lies
/// and the seqs of its deliveries (8 bytes each), `[0xFE][segment u64][offset u64][len
/// u32][seq u64]*`, big-endian. Keeping the seqs in the entry rather than under keys of their
/// own saves sled an insert per delivery at ingest and a removal at pruning.
const ENTRY_TAG: u8 = 0xFE;
pub const POINTER_BYTES: usize = 21;

impl Pointer {
    /// The event entry for this body and the deliveries `seqs`.
    pub fn entry(&self, seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut out = Vec::with_capacity(POINTER_BYTES + 8);
        out.push(ENTRY_TAG);
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend(seqs.into_iter().flat_map(u64::to_be_bytes));
        out
    }

    /// The pointer of an event entry; `None` when `value` is not one.
    pub fn decode(value: &[u8]) -> Option<Pointer> {
        let valid = value.first() == Some(&ENTRY_TAG)
            && value.len() >= POINTER_BYTES
            && (value.len() - POINTER_BYTES) % 8 == 0;
        if !valid {
            return None;
        }
        Some(Pointer {
            segment: u64::from_be_bytes(value[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(value[9..17].try_into().ok()?),
            len: u32::from_be_bytes(value[17..21].try_into().ok()?),
        })
    }
}

/// The delivery seqs an event entry lists.
pub fn entry_seqs(entry: &[u8]) -> impl Iterator<Item = u64> + '_ {
    entry
        .get(POINTER_BYTES..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
}

/// Open segment files, shared by the writer and every reader of event bodies. Only segments
/// that exist are cached: a reader that opened a segment just as it was deleted does not put
/// its handle back (which would keep the deleted file's space until the relay stops).
pub struct Segments {
    dir: PathBuf,
    /// Every segment there is, with its open file once someone read from it.
    files: RwLock<HashMap<Lsn, Option<Arc<File>>>>,
}

impl Segments {
    pub fn new(dir: &Path) -> Segments {
        Segments {
            dir: dir.to_path_buf(),
            files: RwLock::new(HashMap::new()),
        }
    }

    /// Reads the bytes `pointer` names.
    pub fn read(&self, pointer: Pointer) -> io::Result<Vec<u8>> {
        let cached = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pointer.segment)
            .cloned();
        let file = match cached {
            Some(Some(f)) => f,
            Some(None) => {
                let f = Arc::new(File::open(segment_path(&self.dir, pointer.segment))?);
                let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = files.get_mut(&pointer.segment) {
                    *slot = Some(f.clone());
                }
                f
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("log segment {} is gone", pointer.segment),
                ))
            }
        };
        let mut buf = vec![0u8; pointer.len as usize];
        file.read_exact_at(&mut buf, pointer.offset)?;
        Ok(buf)
    }

    fn add(&self, segment: Lsn) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(segment)
            .or_insert(None);
    }

    fn forget(&self, segment: Lsn) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&segment);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("write-ahead log {path}: {why}")]
    Damaged { path: String, why: String },
}

fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                let first = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<Lsn>().ok());
                if let Some(first) = first {
                    out.push((first, path));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) readable by the owner only, and makes its entry durable.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Opens a new file for writing, readable by the owner only.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Adds an insert to a record's ops.
pub fn put_insert(ops: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    ops.push(INSERT);
    put_sized(ops, key);
    put_sized(ops, value);
}

/// Adds a removal to a record's ops.
pub fn put_remove(ops: &mut Vec<u8>, key: &[u8]) {
    ops.push(REMOVE);
    put_sized(ops, key);
}

fn put_sized(ops: &mut Vec<u8>, bytes: &[u8]) {
    ops.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    ops.extend_from_slice(bytes);
}

/// Why a group could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Its records could not be written and were cut off again: the log is as it was after
    /// the last sync, and later groups may be written.
    #[error("could not write to the write-ahead log: {0}")]
    Refused(io::Error),
    /// What the log holds on disk is unknown (a sync failed, or cutting back a failed write
    /// did, or a new segment's directory entry could not be synced): nothing more may be
    /// written; a restart reads what is there.
    #[error("the write-ahead log failed: {0}")]
    Fatal(io::Error),
}

impl Wal {
    /// Starts a new segment in `dir` after `last_lsn`, deleting the segments that hold no
    /// live event bodies (`keep` says which do): call it only once everything in the old log
    /// is durable in sled (after `replay` and a sync of sled's files).
    pub fn start(
        dir: &Path,
        last_lsn: Lsn,
        segments_of: Arc<Segments>,
        segment_bytes: u64,
        keep: impl Fn(Lsn) -> bool,
    ) -> io::Result<Wal> {
        create_private_dir(dir)?;
        let mut closed = Vec::new();
        for (first, path) in segments(dir)? {
            // A segment after `last_lsn` holds no record (it was begun and never written).
            if first <= last_lsn && keep(first) {
                segments_of.add(first);
                closed.push((first, path));
            } else {
                segments_of.forget(first);
                std::fs::remove_file(path)?;
            }
        }
        let first = last_lsn + 1;
        let file = create_private_file(&segment_path(dir, first))?;
        sync_dir(dir)?;
        segments_of.add(first);
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments: segments_of,
            file,
            written: 0,
            current_first: first,
            closed,
            buf: Vec::with_capacity(1 << 20),
            last_lsn,
            synced_lsn: last_lsn,
            segment_bytes,
        })
    }

    /// Adds the record `lsn` (which must follow the last one) holding `ops` (built with
    /// [`put_insert`] and [`put_remove`]); it is written and synced by the next `sync`.
    pub fn append(&mut self, lsn: Lsn, ops: &[u8]) {
        debug_assert_eq!(lsn, self.last_lsn + 1, "records are appended in LSN order");
        self.put_header(lsn, &[ops]);
        self.buf.extend_from_slice(ops);
        self.last_lsn = lsn;
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// The header of record `lsn` whose ops are `parts` one after the other.
    fn put_header(&mut self, lsn: Lsn, parts: &[&[u8]]) {
        let mut fields = [0u8; 16];
        fields[..8].copy_from_slice(&lsn.to_le_bytes());
        fields[8..].copy_from_slice(&self.written.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fields);
        let mut len = 0;
        for p in parts {
            hasher.update(p);
            len += p.len();
        }
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.extend_from_slice(&hasher.finalize().to_le_bytes());
        self.buf.extend_from_slice(&fields);
    }

    /// Begins a new segment when the current one is full. Called before a group's first
    /// record, since the pointers to its bodies name their segment. A segment that cannot be
    /// created leaves the current one in use (tried again before the next group); one whose
    /// directory entry cannot be synced is fatal, since records written there could vanish
    /// with it.
    pub fn prepare(&mut self) -> Result<(), SyncError> {
        if self.written < self.segment_bytes {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty(), "segments end between groups");
        let first = self.last_lsn + 1;
        let file = match create_private_file(&segment_path(&self.dir, first)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not begin a new log segment; the current one grows");
                return Ok(());
            }
        };
        sync_dir(&self.dir).map_err(SyncError::Fatal)?;
        let old = segment_path(&self.dir, self.current_first);
        self.closed.push((self.current_first, old));
        self.segments.add(first);
        self.current_first = first;
        self.file = file;
        self.written = 0;
        Ok(())
    }

    /// Writes the appended records and waits until they are on disk.
    ///
    /// A failed write is cut off again, so no half-written record stays in front of later
    /// ones, and the group is refused ([`SyncError::Refused`]). A failed sync is never tried
    /// again: once `fdatasync` has failed, the kernel may have dropped the pages and cleared
    /// the error, so a second call could succeed without anything being on disk. It is
    /// [`SyncError::Fatal`]: the caller stops writing, and the restart reads what the disk
    /// really holds.
    pub fn sync(&mut self) -> Result<(), SyncError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            self.buf.clear();
            self.last_lsn = self.synced_lsn;
            let cut = self.file.set_len(self.written).and_then(|()| {
                std::io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.written)).map(drop)
            });
            return Err(match cut {
                Ok(()) => SyncError::Refused(e),
                Err(cut) => SyncError::Fatal(io::Error::new(
                    e.kind(),
                    format!("{e}; cutting the log back after it failed too: {cut}"),
                )),
            });
        }
        self.file.sync_data().map_err(SyncError::Fatal)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.synced_lsn = self.last_lsn;
        Ok(())
    }

    /// Deletes the closed segments whose records sled holds durably (up to `checkpoint`) and
    /// that hold no live event body.
    pub fn retire(&mut self, checkpoint: Lsn, live: impl Fn(Lsn) -> bool) {
        let mut i = 0;
        while i < self.closed.len() {
            let first = self.closed[i].0;
            let end = self
                .closed
                .get(i + 1)
                .map_or(self.current_first, |(next, _)| *next)
                - 1;
            if end > checkpoint {
                break;
            }
            if live(first) {
                i += 1;
                continue;
            }
            let (first, path) = self.closed.remove(i);
            self.segments.forget(first);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a log segment");
            }
        }
    }

    /// Adds a record holding one event body and returns where the body will lie once synced.
    pub fn append_body(&mut self, body: &[u8]) -> Pointer {
        let record_at = self.written + self.buf.len() as u64;
        let lsn = self.last_lsn + 1;
        let mut op = [BODY, 0, 0, 0, 0];
        op[1..].copy_from_slice(&(body.len() as u32).to_le_bytes());
        self.put_header(lsn, &[&op, body]);
        self.buf.extend_from_slice(&op);
        self.buf.extend_from_slice(body);
        self.last_lsn = lsn;
        Pointer {
            segment: self.current_first,
            offset: record_at + HEADER as u64 + 5,
            len: body.len() as u32,
        }
    }

    /// Reads an event body through the writer's open segments.
    pub fn read(&self, pointer: Pointer) -> io::Result<Vec<u8>> {
        self.segments.read(pointer)
    }

    /// Bytes the log takes on disk.
    pub fn size_on_disk(dir: &Path) -> u64 {
        segments(dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
