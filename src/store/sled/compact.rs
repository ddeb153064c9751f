//! Log compaction: frees log segments that stored events keep alive but that mostly hold what
//! is no longer needed.
//!
//! A segment stays while any stored event's body is in it, so one dead letter kept for
//! `retain_dead` would keep its whole segment. When at most half of a checkpointed segment is
//! bodies still stored, those bodies are copied to the end of the log by the writer
//! ([`Op::Relocate`]) and the segment goes with the next retirement. Copying at most half to
//! free at least half keeps the extra writing no larger than the space won back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::commit::{Job, Op, Reply};
use super::keys;
use super::wal::{self, Lsn, Pointer};
use super::{io_error, Shared};
use crate::store::StoreError;

/// Segments read per compaction pass: bounds how long one pass holds the writer's attention
/// (the first pass over a large backlog resumes on the next ones).
const COMPACT_SCANS: usize = 4;

/// Event bodies moved forward by one relocation: bounds how long it holds up the writer.
const RELOCATE_BYTES: u64 = 1 << 20;

pub struct Compactor {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    /// Weak, so that a store dropped without `close` still stops its writer.
    pub writer: mpsc::WeakSender<Job>,
    pub every: Duration,
    /// Live bodies per segment when it was last read and found not worth compacting: read
    /// again only once a quarter of them have gone.
    pub scanned: HashMap<Lsn, u64>,
}

/// The compaction thread; stopped and joined by [`Handle::stop`].
pub struct Handle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

impl Compactor {
    pub fn start(mut self) -> std::io::Result<Handle> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("hookrelay-compact".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(self.every);
                        if stop.load(Ordering::Acquire) || self.shared.failure.check().is_err() {
                            return;
                        }
                        self.run(self.shared.checkpointed());
                    }
                })?
        };
        Ok(Handle { stop, thread })
    }

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
                Err(StoreError::Closed) | Err(StoreError::Failed(_)) => return,
                Err(e) => {
                    tracing::warn!(segment, error = %e, "log compaction failed; the segment is kept")
                }
            }
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.shared.mem.get(&self.shared.db, key)
    }

    /// Returns whether the segment was read.
    fn compact(&mut self, segment: Lsn) -> Result<bool, StoreError> {
        let counted = self
            .get(&keys::live_bodies(segment))?
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
