//! Keys that change again within moments, held in memory before they are worth writing to
//! sled.
//!
//! A delivery's head key (`K`) and ready key (`R`) are written when the delivery is stored
//! and removed when it is delivered, which with a target that keeps up is milliseconds later;
//! its record (`L`) is written then and rewritten with the outcome. In sled each write
//! rewrites the leaf around the key: five of the eight sled writes a delivered event cost.
//! The writer keeps these keys here first. Removed while they are young, they never reach
//! sled, and a record goes there once, when its delivery ends; kept longer (a backlog, a
//! target that is down), they are moved into sled ("spilled") and live there like any other
//! key.
//!
//! They are durable all along, in the write-ahead log. The LSN the writer records as applied
//! to sled stays below the record of the oldest key held here (see [`Deferred::bound`]), so
//! after a crash replay writes every held key into sled again; a key is never in both places
//! except for the moment of its spill, when it is written to sled before it leaves here.
//!
//! Readers (claims, delivery records, the oldest-pending scan, stats) look here as well as in
//! sled.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::wal::Lsn;
use super::StoreError;

/// How long a key is held before it is spilled. Bounds how far the log's replay point lags
/// behind (replay after a crash starts at the oldest key held).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// How many keys are held at most (three per young pending delivery, ~1 KB for the three
/// with the maps' overhead, so up to ~5 MB). Past it the oldest are spilled, so a backlog
/// costs sled writes, not memory. A target that keeps up needs a few hundred.
pub const MAX_KEYS: usize = 16_384;

/// Whether keys of this kind are held here: those removed or rewritten soon after they are
/// written.
pub fn holds(key: &[u8]) -> bool {
    matches!(key.first(), Some(b'R' | b'K' | b'L'))
}

/// Held keys → (value, the LSN they were held at).
type Keys = BTreeMap<Vec<u8>, (Vec<u8>, Lsn)>;

/// The keys held, shared by the writer (the only one that changes them) and readers.
#[derive(Default)]
pub struct Overlay {
    keys: RwLock<Keys>,
}

/// A reader's view of the held keys; the writer waits while one is open, so keep it short.
pub struct View<'a>(RwLockReadGuard<'a, Keys>);

impl View<'_> {
    /// The held keys that begin with `prefix`, in key order, with their values.
    pub fn under<'k>(
        &'k self,
        prefix: &'k [u8],
    ) -> impl Iterator<Item = (&'k [u8], &'k [u8])> + 'k {
        self.0
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.as_slice(), v.as_slice()))
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.0.get(key).map(|(v, _)| v.as_slice())
    }
}

impl Overlay {
    pub fn view(&self) -> View<'_> {
        View(self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's side: which keys are held since when, oldest first.
pub struct Deferred {
    overlay: Arc<Overlay>,
    /// (key, LSN held at, when): a key removed or spilled meanwhile leaves its entry behind,
    /// recognised by its LSN no longer matching, and dropped when it reaches the front.
    queue: VecDeque<(Vec<u8>, Lsn, Instant)>,
    max_age: Duration,
}

impl Deferred {
    pub fn new(overlay: Arc<Overlay>, max_age: Duration) -> Deferred {
        Deferred {
            overlay,
            queue: VecDeque::new(),
            max_age,
        }
    }

    /// Holds a key that is in neither sled nor here, written by the record `lsn` or a later
    /// one.
    pub fn hold(&mut self, key: Vec<u8>, value: Vec<u8>, lsn: Lsn, now: Instant) {
        self.overlay.write().insert(key.clone(), (value, lsn));
        self.queue.push_back((key, lsn, now));
    }

    /// Replaces a held key's value; gives the value back when the key is not held (it is
    /// sled's to write).
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) -> Option<Vec<u8>> {
        if !holds(key) {
            return Some(value);
        }
        match self.overlay.write().get_mut(key) {
            // The LSN stays: replay from the first write of the key redoes the later ones.
            Some(held) => {
                held.0 = value;
                None
            }
            None => Some(value),
        }
    }

    /// Removes a held key; false when it is not held (it is sled's to remove).
    pub fn remove(&mut self, key: &[u8]) -> bool {
        holds(key) && self.overlay.write().remove(key).is_some()
    }

    /// Moves into sled the keys held longer than the age limit, or all of them, and the oldest
    /// past the count limit.
    pub fn spill(&mut self, db: &sled::Db, now: Instant, all: bool) -> Result<(), StoreError> {
        while let Some((key, lsn, at)) = self.queue.front() {
            let due = all
                || now.saturating_duration_since(*at) >= self.max_age
                || self.queue.len() > MAX_KEYS;
            if !due {
                break;
            }
            let mut keys = self.overlay.write();
            if let Some((value, _)) = keys.get(key).filter(|(_, l)| l == lsn) {
                // Into sled before it leaves here, under the lock: a reader finds it in one
                // place or the other, and a failed insert leaves it held.
                db.insert(key.as_slice(), value.as_slice())?;
                keys.remove(key);
            }
            drop(keys);
            self.queue.pop_front();
        }
        Ok(())
    }

    /// The last LSN whose writes are all in sled, given that `last` is the last one applied:
    /// the one before the oldest record a held key comes from.
    pub fn bound(&mut self, last: Lsn) -> Lsn {
        let keys = self.overlay.view();
        while let Some((key, lsn, _)) = self.queue.front() {
            if keys.0.get(key).is_some_and(|(_, l)| l == lsn) {
                return lsn - 1;
            }
            self.queue.pop_front();
        }
        last
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }
}
