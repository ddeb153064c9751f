//! Reading the log: replay after a crash (with the torn-tail policy), and what a segment
//! holds for compaction.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use super::{segment_path, segments, LogOp, Lsn, Pointer, WalError, BODY, HEADER, INSERT, REMOVE};

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
            let Some((lsn, _, ops, next)) = read_record(&data, at) else {
                if let Some((valid, its_lsn)) = synced_past(&data, at) {
                    return Err(damaged(format!(
                        "unreadable record at byte {at}, although record {its_lsn} at byte \
                         {valid} shows the log was synced past it: acknowledged data is damaged"
                    )));
                }
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

/// Parses the record at `at`: its LSN, its `synced` mark, its ops and where the next record
/// starts. `None` when the bytes there are not a whole record with a matching checksum.
fn read_record(data: &[u8], at: usize) -> Option<(Lsn, u64, &[u8], usize)> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let lsn = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let synced = u64::from_le_bytes(header[16..24].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let ops = data.get(at + HEADER..at + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..HEADER]);
    hasher.update(ops);
    if hasher.finalize() != crc {
        return None;
    }
    // Every op must parse; a record that passes its checksum but does not is damage, not a tail.
    OpsIter { data: ops, at: 0 }.check()?;
    Some((lsn, synced, ops, at + HEADER + len))
}

/// A valid record after byte `damaged` of a segment that says the segment was synced beyond
/// that byte: (where it lies, its LSN). The cheap checks come first, so this reads the rest of
/// the segment once.
fn synced_past(data: &[u8], damaged: usize) -> Option<(usize, Lsn)> {
    let field = |at: usize, from: usize| -> u64 {
        u64::from_le_bytes(data[at + from..at + from + 8].try_into().expect("8 bytes"))
    };
    (damaged + 1..data.len().saturating_sub(HEADER - 1))
        .filter(|&at| {
            let synced = field(at, 16);
            synced > damaged as u64 && synced <= at as u64
        })
        .find_map(|at| read_record(data, at).map(|(lsn, ..)| (at, lsn)))
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
