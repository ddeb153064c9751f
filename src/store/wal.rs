//! The sled store's write-ahead log.
//!
//! sled makes a write durable by flushing its page cache, which rewrites whole pages and costs
//! milliseconds per flush; with a flush per group commit it capped acknowledgements at a few
//! thousand per second. The log makes the same writes durable as one sequential append and one
//! `fdatasync` per group (a fraction of a millisecond here), and sled is flushed in the
//! background instead (a checkpoint). After a crash the records newer than the last checkpoint
//! are applied to sled again when the store opens.
//!
//! Every record carries a log sequence number (LSN), and the batch that applies it to sled also
//! writes that LSN (`keys::APPLIED_LSN`) atomically with it. sled recovers a prefix of its
//! batches, so the LSN it holds says exactly which records it already contains: replay skips
//! those and applies the rest in order. Records are physical (keys and values), so applying one
//! again yields the same state.
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
//! A record is `[len u32][crc32 u32][lsn u64][ops]`, little-endian, the CRC over the LSN and the
//! ops; an op is `[1][key len u32][key][value len u32][value]` (insert), `[2][key len u32][key]`
//! (remove) or `[3][len u32][bytes]` (an event body). A torn or zeroed record at the end of the
//! last segment is a write the crash interrupted (never acknowledged) and is cut off; anything
//! unreadable before it is damage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 16;
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
    /// The last LSN on disk: where the log goes back to when a sync fails.
    synced_lsn: Lsn,
    poisoned: bool,
    segment_bytes: u64,
}

/// One operation of a record, as replay reads it.
pub enum LogOp<'a> {
    Insert(&'a [u8], &'a [u8]),
    Remove(&'a [u8]),
    /// An event body: nothing to apply, it is read where it lies.
    Body,
}

/// Where an event body lies in the log. Stored in sled in place of the body; its first byte
/// (0xFF) cannot begin an inline event record, whose first byte is the high byte of a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: Lsn,
    pub offset: u64,
    pub len: u32,
}

const POINTER_TAG: u8 = 0xFF;
/// An event entry: a pointer followed by the seqs of the event's deliveries (8 bytes each).
/// Keeping them in the entry rather than under keys of their own saves sled an insert per
/// delivery at ingest and a removal at pruning. 0xFE cannot begin an inline record either.
const ENTRY_TAG: u8 = 0xFE;
pub const POINTER_BYTES: usize = 21;

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_BYTES] {
        let mut out = [0u8; POINTER_BYTES];
        out[0] = POINTER_TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The event entry for this body and the deliveries `seqs`.
    pub fn entry(&self, seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut out = self.encode().to_vec();
        out[0] = ENTRY_TAG;
        out.extend(seqs.into_iter().flat_map(u64::to_be_bytes));
        out
    }

    /// The pointer of a plain pointer or of an event entry; `None` when `value` is neither
    /// (an event stored inline).
    pub fn decode(value: &[u8]) -> Option<Pointer> {
        let valid = match value.first() {
            Some(&POINTER_TAG) => value.len() == POINTER_BYTES,
            Some(&ENTRY_TAG) => {
                value.len() >= POINTER_BYTES && (value.len() - POINTER_BYTES) % 8 == 0
            }
            _ => false,
        };
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

/// Turns a plain pointer into an event entry that keeps whatever seqs follow (more are then
/// pushed onto it) and returns the pointer; `None`, leaving `value` alone, when it is not a
/// pointer.
pub fn make_entry(value: &mut [u8]) -> Option<Pointer> {
    let pointer = Pointer::decode(value)?;
    value[0] = ENTRY_TAG;
    Some(pointer)
}

/// Whether `value` is an event entry (which lists all of its event's deliveries).
pub fn is_entry(value: &[u8]) -> bool {
    value.first() == Some(&ENTRY_TAG) && Pointer::decode(value).is_some()
}

/// The delivery seqs an event entry lists: none for a plain pointer or an inline event.
pub fn entry_seqs(value: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let seqs = if is_entry(value) {
        &value[POINTER_BYTES..]
    } else {
        &[]
    };
    seqs.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
}

/// Open segment files, shared by the writer and every reader of event bodies.
pub struct Segments {
    dir: PathBuf,
    files: RwLock<HashMap<Lsn, Arc<File>>>,
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
            Some(f) => f,
            None => {
                let f = Arc::new(File::open(segment_path(&self.dir, pointer.segment))?);
                self.files
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pointer.segment, f.clone());
                f
            }
        };
        let mut buf = vec![0u8; pointer.len as usize];
        file.read_exact_at(&mut buf, pointer.offset)?;
        Ok(buf)
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments of `dir` that are closed (a later one exists) and whose every record is at or
/// below `checkpoint`, oldest first: the ones that may be compacted.
pub fn checkpointed_segments(dir: &Path, checkpoint: Lsn) -> io::Result<Vec<Lsn>> {
    let all = segments(dir)?;
    Ok(all
        .windows(2)
        .filter(|w| w[1].0 - 1 <= checkpoint)
        .map(|w| w[0].0)
        .collect())
}

/// What one segment holds of event bodies: its size on disk and, for every insert in it whose
/// value points at a body in it, the key and the pointer.
pub struct SegmentBodies {
    pub bytes: u64,
    pub bodies: Vec<(Vec<u8>, Pointer)>,
}

/// Reads segment `first` of `dir` for the bodies it holds. The insert naming a body is always
/// in the body's own segment (both are written by one group, and a segment only ends between
/// groups), so one sequential read finds them all; body records are skipped, not read. Which
/// of the pointers are still stored is for the caller to check. Reading stops at the first
/// record that does not fit the file (only a segment being written can end in one).
pub fn bodies_in(dir: &Path, first: Lsn) -> io::Result<SegmentBodies> {
    let file = File::open(segment_path(dir, first))?;
    let bytes = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut bodies = Vec::new();
    let mut named = std::collections::HashSet::new();
    // The header and the first op's kind, which says whether the record is a body.
    let mut head = [0u8; HEADER + 1];
    let mut ops = Vec::new();
    let mut at = 0u64;
    while at + head.len() as u64 <= bytes {
        reader.read_exact(&mut head)?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        if len == 0 || at + HEADER as u64 + len > bytes {
            break;
        }
        if head[HEADER] == BODY {
            reader.seek_relative(len as i64 - 1)?;
        } else {
            ops.clear();
            ops.resize(len as usize, 0);
            ops[0] = head[HEADER];
            reader.read_exact(&mut ops[1..])?;
            let mut parsed = OpsIter { data: &ops, at: 0 };
            while let Some(Some(op)) = parsed.parse() {
                if let LogOp::Insert(key, value) = op {
                    if let Some(p) = Pointer::decode(value).filter(|p| p.segment == first) {
                        // An event's entry is written again when deliveries are added to it.
                        if named.insert(key.to_vec()) {
                            bodies.push((key.to_vec(), p));
                        }
                    }
                }
            }
        }
        at += HEADER as u64 + len;
    }
    Ok(SegmentBodies { bytes, bodies })
}

/// Calls `apply` with every record in `dir` whose LSN is above `applied`, in order, and returns
/// the last LSN the log holds (or `applied`, if none is newer). Records must follow `applied`
/// without a gap: a gap means acknowledged writes are missing from both the log and sled.
/// With `accept_damage`, replay stops at damage instead of failing (what follows it is lost).
pub fn replay(
    dir: &Path,
    applied: Lsn,
    accept_damage: bool,
    mut apply: impl FnMut(Lsn, &mut dyn Iterator<Item = LogOp<'_>>) -> Result<(), WalError>,
) -> Result<Lsn, WalError> {
    let mut last = applied;
    match replay_into(dir, applied, &mut last, &mut apply) {
        Err(WalError::Damaged { path, why }) if accept_damage => {
            tracing::warn!(%path, %why, last_lsn = last, "accepting a damaged write-ahead log");
            Ok(last)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(last),
    }
}

type Apply<'f> = dyn FnMut(Lsn, &mut dyn Iterator<Item = LogOp<'_>>) -> Result<(), WalError> + 'f;

fn replay_into(
    dir: &Path,
    applied: Lsn,
    last: &mut Lsn,
    apply: &mut Apply<'_>,
) -> Result<(), WalError> {
    let segments = segments(dir)?;
    let count = segments.len();
    for (i, (_, path)) in segments.iter().enumerate() {
        // Every record of a segment comes before the next segment's first: kept only for the
        // event bodies in it, nothing to replay.
        if segments
            .get(i + 1)
            .is_some_and(|(next, _)| *next <= applied + 1)
        {
            continue;
        }
        let damaged = |why: String| WalError::Damaged {
            path: path.display().to_string(),
            why,
        };
        let mut data = Vec::new();
        File::open(path)?.read_to_end(&mut data)?;
        let mut at = 0usize;
        while at < data.len() {
            let Some((lsn, ops, next)) = read_record(&data, at) else {
                if i + 1 == count {
                    // The tail the crash interrupted: never synced, so never acknowledged.
                    tracing::warn!(
                        path = %path.display(),
                        offset = at,
                        bytes = data.len() - at,
                        "cutting an unfinished record off the write-ahead log"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(path)?
                        .set_len(at as u64)?;
                    break;
                }
                return Err(damaged(format!("unreadable record at byte {at}")));
            };
            at = next;
            if lsn <= *last {
                if lsn <= applied {
                    continue;
                }
                return Err(damaged(format!("record {lsn} out of order after {last}")));
            }
            if lsn != *last + 1 {
                return Err(damaged(format!(
                    "records {} to {} are missing",
                    *last + 1,
                    lsn - 1
                )));
            }
            apply(lsn, &mut OpsIter { data: ops, at: 0 })?;
            *last = lsn;
        }
    }
    Ok(())
}

/// Parses the record at `at`: its LSN, its ops and where the next record starts. `None` when
/// the bytes there are not a whole record with a matching checksum.
fn read_record(data: &[u8], at: usize) -> Option<(Lsn, &[u8], usize)> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let lsn = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let ops = data.get(at + HEADER..at + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..16]);
    hasher.update(ops);
    if hasher.finalize() != crc {
        return None;
    }
    // Every op must parse; a record that passes its checksum but does not is damage, not a tail.
    OpsIter { data: ops, at: 0 }.check()?;
    Some((lsn, ops, at + HEADER + len))
}

struct OpsIter<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> OpsIter<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }

    fn take_sized(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }

    fn parse(&mut self) -> Option<Option<LogOp<'a>>> {
        if self.at == self.data.len() {
            return Some(None);
        }
        let kind = self.take(1)?[0];
        let key = self.take_sized()?;
        match kind {
            INSERT => Some(Some(LogOp::Insert(key, self.take_sized()?))),
            REMOVE => Some(Some(LogOp::Remove(key))),
            BODY => Some(Some(LogOp::Body)),
            _ => None,
        }
    }

    fn check(mut self) -> Option<()> {
        while self.parse()?.is_some() {}
        Some(())
    }
}

impl<'a> Iterator for OpsIter<'a> {
    type Item = LogOp<'a>;

    fn next(&mut self) -> Option<LogOp<'a>> {
        // Records are checked before they are handed out.
        self.parse().flatten()
    }
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

impl Wal {
    /// Starts a new segment in `dir` after `last_lsn`, deleting the segments that hold no
    /// live event bodies (`keep` says which do): call it once everything in the old log is
    /// durable in sled (after `replay` and a flush).
    pub fn start(
        dir: &Path,
        last_lsn: Lsn,
        segments_of: Arc<Segments>,
        segment_bytes: u64,
        keep: impl Fn(Lsn) -> bool,
    ) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut closed = Vec::new();
        for (first, path) in segments(dir)? {
            // A segment after `last_lsn` holds no record (it was begun and never written).
            if first <= last_lsn && keep(first) {
                closed.push((first, path));
            } else {
                segments_of.forget(first);
                std::fs::remove_file(path)?;
            }
        }
        let file = Self::create_segment(dir, last_lsn + 1)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments: segments_of,
            file,
            written: 0,
            current_first: last_lsn + 1,
            closed,
            buf: Vec::with_capacity(1 << 20),
            last_lsn,
            synced_lsn: last_lsn,
            poisoned: false,
            segment_bytes,
        })
    }

    /// Adds the record `lsn` (which must follow the last one) holding `ops` (built with
    /// [`put_insert`] and [`put_remove`]); it is written and synced by the next `sync`.
    pub fn append(&mut self, lsn: Lsn, ops: &[u8]) {
        debug_assert_eq!(lsn, self.last_lsn + 1, "records are appended in LSN order");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(ops);
        self.buf
            .extend_from_slice(&(ops.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&hasher.finalize().to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.extend_from_slice(ops);
        self.last_lsn = lsn;
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Writes the appended records and waits until they are on disk. On failure the segment is
    /// cut back to what was synced before, so no half-written record stays in front of later
    /// ones, and the records are dropped: the log is as it was after the last sync.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.poisoned {
            self.buf.clear();
            self.last_lsn = self.synced_lsn;
            return Err(io::Error::other(
                "the write-ahead log could not be cut back after a failed write; restart the relay",
            ));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.written += self.buf.len() as u64;
                self.buf.clear();
                self.synced_lsn = self.last_lsn;
                if self.written >= self.segment_bytes {
                    // The records are durable whatever happens here; a failed rotation is
                    // tried again after the next sync.
                    if let Err(e) = self.rotate() {
                        tracing::warn!(error = %e, "could not begin a new log segment");
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                self.last_lsn = self.synced_lsn;
                // Records that failed must not stay in the file: later records would reuse
                // their sequence numbers. If they cannot be cut off, no more are written.
                let cut = self.file.set_len(self.written).and_then(|()| {
                    std::io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.written))
                });
                if cut.is_err() {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    fn create_segment(dir: &Path, first: Lsn) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(dir, first))?;
        sync_dir(dir)?;
        Ok(file)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let file = Self::create_segment(&self.dir, self.last_lsn + 1)?;
        let old = segment_path(&self.dir, self.current_first);
        self.closed.push((self.current_first, old));
        self.current_first = self.last_lsn + 1;
        self.file = file;
        self.written = 0;
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
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(&op);
        hasher.update(body);
        self.buf
            .extend_from_slice(&((op.len() + body.len()) as u32).to_le_bytes());
        self.buf.extend_from_slice(&hasher.finalize().to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
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
mod tests {
    use super::*;

    fn record(key: &str, value: &str) -> Vec<u8> {
        let mut ops = Vec::new();
        put_insert(&mut ops, key.as_bytes(), value.as_bytes());
        put_remove(&mut ops, b"gone");
        ops
    }

    /// Replays `dir` after `applied` and returns each record as "lsn:key=value".
    fn replayed(dir: &Path, applied: Lsn, accept: bool) -> Result<(Lsn, Vec<String>), WalError> {
        let mut seen = Vec::new();
        let last = replay(dir, applied, accept, |lsn, ops| {
            for op in ops {
                match op {
                    LogOp::Insert(k, v) => seen.push(format!(
                        "{lsn}:{}={}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )),
                    LogOp::Remove(k) => assert_eq!(k, b"gone"),
                    LogOp::Body => seen.push(format!("{lsn}:body")),
                }
            }
            Ok(())
        })?;
        Ok((last, seen))
    }

    fn open(dir: &Path, last: Lsn, segment_bytes: u64) -> (Wal, Arc<Segments>) {
        let segments = Arc::new(Segments::new(dir));
        let wal = Wal::start(dir, last, segments.clone(), segment_bytes, |_| true).unwrap();
        (wal, segments)
    }

    #[test]
    fn records_and_bodies_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, segments) = open(dir.path(), 0, SEGMENT_BYTES);
        wal.append(1, &record("a", "1"));
        let body = wal.append_body(b"the first body");
        wal.append(3, &record("b", "2"));
        wal.sync().unwrap();
        let later = wal.append_body(&[7u8; 3000]);
        wal.sync().unwrap();
        assert_eq!(segments.read(body).unwrap(), b"the first body");
        assert_eq!(segments.read(later).unwrap(), vec![7u8; 3000]);
        assert_eq!(Pointer::decode(&body.encode()), Some(body));
        let entry = body.entry([7, 9]);
        assert_eq!(Pointer::decode(&entry), Some(body));
        assert_eq!(entry_seqs(&entry).collect::<Vec<_>>(), [7, 9]);
        assert_eq!(entry_seqs(&body.encode()).count(), 0);
        assert!(is_entry(&entry) && !is_entry(&body.encode()));
        assert_eq!(Pointer::decode(&entry[..entry.len() - 1]), None);
        let mut plain = body.encode().to_vec();
        assert_eq!(make_entry(&mut plain), Some(body));
        assert_eq!(plain, body.entry([]));
        assert_eq!(make_entry(&mut b"inline".to_vec()), None);
        let (last, seen) = replayed(dir.path(), 0, false).unwrap();
        assert_eq!(last, 4);
        assert_eq!(seen, ["1:a=1", "2:body", "3:b=2", "4:body"]);
        // Records sled already holds are skipped.
        assert_eq!(
            replayed(dir.path(), 2, false).unwrap().1,
            ["3:b=2", "4:body"]
        );
    }

    #[test]
    fn a_segment_names_the_bodies_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 100 bytes: the first group fills one, the second begins another.
        let (mut wal, _) = open(dir.path(), 0, 100);
        let first = wal.append_body(&[1u8; 80]);
        let second = wal.append_body(b"two");
        let mut ops = Vec::new();
        put_insert(&mut ops, b"Eone", &first.encode());
        put_insert(&mut ops, b"Etwo", &second.encode());
        put_insert(&mut ops, b"other", b"not a pointer");
        wal.append(3, &ops);
        wal.sync().unwrap();
        // A pointer into an older segment, as a later record may hold: not this segment's.
        let third = wal.append_body(b"three");
        let mut ops = Vec::new();
        put_insert(&mut ops, b"Ethree", &third.encode());
        put_insert(&mut ops, b"Eone", &first.encode());
        wal.append(5, &ops);
        wal.sync().unwrap();

        let found = bodies_in(dir.path(), 1).unwrap();
        assert_eq!(
            found.bytes,
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len()
        );
        assert_eq!(
            found.bodies,
            [(b"Eone".to_vec(), first), (b"Etwo".to_vec(), second)]
        );
        assert_eq!(
            bodies_in(dir.path(), 4).unwrap().bodies,
            [(b"Ethree".to_vec(), third)]
        );
        assert_eq!(checkpointed_segments(dir.path(), 3).unwrap(), [1]);
        assert_eq!(
            checkpointed_segments(dir.path(), 2).unwrap(),
            Vec::<Lsn>::new()
        );
        assert_eq!(checkpointed_segments(dir.path(), 5).unwrap(), [1, 4]);
    }

    #[test]
    fn an_unfinished_record_at_the_end_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, SEGMENT_BYTES);
        wal.append(1, &record("a", "1"));
        wal.append(2, &record("b", "2"));
        wal.sync().unwrap();
        let path = segment_path(dir.path(), 1);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of writing the third record.
        let mut third = Vec::new();
        wal.append(3, &record("c", "3"));
        std::mem::swap(&mut third, &mut wal.buf);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third[..third.len() - 4]).unwrap();
        let (last, seen) = replayed(dir.path(), 0, false).unwrap();
        assert_eq!(
            (last, seen),
            (2, vec!["1:a=1".to_owned(), "2:b=2".to_owned()])
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    }

    #[test]
    fn damage_before_the_end_is_refused_unless_accepted() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny segments: every sync begins a new one.
        let (mut wal, _) = open(dir.path(), 0, 1);
        for lsn in 1..=3 {
            wal.append(lsn, &record(&format!("k{lsn}"), "v"));
            wal.sync().unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap().len(), 4);
        let second = segment_path(dir.path(), 2);
        let mut bytes = std::fs::read(&second).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 0xFF;
        std::fs::write(&second, bytes).unwrap();
        let err = replayed(dir.path(), 0, false).unwrap_err().to_string();
        assert!(
            err.contains("00000000000000000002.log") && err.contains("unreadable record at byte 0"),
            "{err}"
        );
        assert_eq!(
            replayed(dir.path(), 0, true).unwrap(),
            (1, vec!["1:k1=v".to_owned()])
        );
    }

    #[test]
    fn missing_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1);
        for lsn in 1..=3 {
            wal.append(lsn, &record(&format!("k{lsn}"), "v"));
            wal.sync().unwrap();
        }
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
        let err = replayed(dir.path(), 0, false).unwrap_err().to_string();
        assert!(err.contains("records 2 to 2 are missing"), "{err}");
        // Once sled holds record 2, the hole does not matter.
        assert_eq!(replayed(dir.path(), 2, false).unwrap().1, ["3:k3=v"]);
    }

    #[test]
    fn segments_go_once_checkpointed_and_without_live_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, segments) = open(dir.path(), 0, 1);
        let mut bodies = Vec::new();
        for n in 0..4u8 {
            bodies.push(wal.append_body(&[n; 10]));
            wal.sync().unwrap();
        }
        let names = |dir: &Path| -> Vec<Lsn> {
            super::segments(dir)
                .unwrap()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(names(dir.path()), [1, 2, 3, 4, 5]);
        // Segment 2 still holds a live body; the checkpoint has not reached segment 4.
        wal.retire(3, |s| s == 2);
        assert_eq!(names(dir.path()), [2, 4, 5]);
        assert_eq!(segments.read(bodies[1]).unwrap(), [1u8; 10]);
        assert!(segments.read(bodies[0]).is_err());
        wal.retire(4, |_| false);
        assert_eq!(names(dir.path()), [5]);
        // A new start keeps only what `keep` names, and continues the numbering.
        drop(wal);
        let (mut wal, _) = open(dir.path(), 4, 1);
        wal.append(5, &record("a", "1"));
        wal.sync().unwrap();
        assert_eq!(
            replayed(dir.path(), 4, false).unwrap(),
            (5, vec!["5:a=1".to_owned()])
        );
    }
}
