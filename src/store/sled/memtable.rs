//! Writes that are durable in the log but not yet in sled.
//!
//! The writer answers a group once its log record is synced; the group's writes go here at
//! that moment, and the applier thread moves them into sled later, a table at a time, off the
//! acknowledgement path. There are at most two tables: the active one, which the writer adds
//! to, and a frozen one, which the applier is moving into sled. Every reader looks in the
//! active table, then the frozen one, then sled, so it sees everything that is durable.
//!
//! A table keeps only each key's last write, so a key written and rewritten or removed within
//! one table reaches sled once or not at all: a delivery that ends within moments of being
//! stored costs sled its final record only. A key the writer knows to be absent below the
//! table (a new delivery's keys) is marked [`Slot::Fresh`], and its removal then simply drops
//! it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::StoreError;

use super::packs::Packs;
use super::wal::Lsn;

/// One write of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Put(Vec<u8>),
    /// A put of a key that no table below and not sled hold.
    Fresh(Vec<u8>),
    Remove,
}

impl Slot {
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Slot::Put(v) | Slot::Fresh(v) => Some(v),
            Slot::Remove => None,
        }
    }

    fn size(&self) -> usize {
        self.value().map_or(0, <[u8]>::len)
    }
}

/// Puts `write` over `slot` (the earlier write of the same key); `None` when the two cancel
/// out (a fresh key removed).
pub fn merge(slot: Slot, write: Slot) -> Option<Slot> {
    match (slot, write) {
        (Slot::Fresh(_), Slot::Put(v) | Slot::Fresh(v)) => Some(Slot::Fresh(v)),
        (Slot::Fresh(_), Slot::Remove) => None,
        // Removed, then written anew: sled may still hold the old value.
        (Slot::Remove, Slot::Fresh(v)) => Some(Slot::Put(v)),
        (_, write) => Some(write),
    }
}

/// Adds `write` to `map` after the key's earlier write there.
pub fn put(map: &mut BTreeMap<Vec<u8>, Slot>, key: Vec<u8>, write: Slot) {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(write);
        }
        Entry::Occupied(mut e) => {
            let earlier = std::mem::replace(e.get_mut(), Slot::Remove);
            match merge(earlier, write) {
                Some(s) => *e.get_mut() = s,
                None => {
                    e.remove();
                }
            }
        }
    }
}

#[derive(Default)]
pub struct Table {
    map: RwLock<BTreeMap<Vec<u8>, Slot>>,
    bytes: AtomicUsize,
    /// The last log record whose writes the table holds.
    last_lsn: AtomicU64,
    /// When the first write arrived.
    since: Mutex<Option<Instant>>,
}

impl Table {
    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|s| s.value().map(<[u8]>::to_vec))
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn.load(Ordering::Acquire)
    }

    /// The writes, for the applier (the table is frozen: nothing changes it any more).
    pub fn writes(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Slot>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn range_into(&self, from: Bound<&[u8]>, to: Bound<&[u8]>, out: &mut BTreeMap<Vec<u8>, Slot>) {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        for (k, s) in map.range::<[u8], _>((from, to)) {
            out.insert(k.clone(), s.clone());
        }
    }
}

struct Levels {
    active: Arc<Table>,
    frozen: Option<Arc<Table>>,
}

pub struct Memtables {
    levels: RwLock<Levels>,
    /// Where sled keeps pending keys, for reads that reach sled.
    pub packs: Packs,
    /// Tests: while set, nothing is frozen for the applier.
    #[cfg(test)]
    pub hold: std::sync::atomic::AtomicBool,
    /// Wakes the applier when the active table gets its first write, and the writer when a
    /// frozen table has been applied.
    signal: Mutex<()>,
    changed: Condvar,
}

/// The active table is frozen for the applier once it is this old ...
pub const APPLY_AFTER: Duration = Duration::from_millis(200);
/// ... or this large; and the writer waits for the applier past this much.
pub const APPLY_BYTES: usize = 16 << 20;
pub const MAX_BYTES: usize = 128 << 20;

impl Default for Memtables {
    fn default() -> Self {
        Memtables {
            levels: RwLock::new(Levels {
                active: Arc::default(),
                frozen: None,
            }),
            packs: Packs::default(),
            #[cfg(test)]
            hold: Default::default(),
            signal: Mutex::new(()),
            changed: Condvar::new(),
        }
    }
}

impl Memtables {
    /// Memtables over a sled that holds `packs`.
    pub fn new(packs: Packs) -> Memtables {
        Memtables {
            packs,
            ..Memtables::default()
        }
    }

    pub(super) fn tables(&self) -> Tables {
        let l = self.levels.read().unwrap_or_else(|p| p.into_inner());
        (l.active.clone(), l.frozen.clone())
    }

    /// A key as the log has it: the tables, then sled (a pending key from its pack, if sled
    /// keeps it in one).
    pub fn get(&self, db: &sled::Db, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        match held_in(&self.tables(), key) {
            Some(v) => Ok(v.map(sled::IVec::from)),
            None => self.packs.get(db, key),
        }
    }

    /// The keys in `[from, to)` as the log has them, in order (`rev`: in reverse), merged from
    /// the tables and sled.
    pub fn range<'a>(
        &self,
        db: &'a sled::Db,
        from: &[u8],
        to: &[u8],
        rev: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a {
        range_in(&self.tables(), db, from, to, rev)
    }

    /// Adds a synced group's writes to the active table.
    pub fn publish(&self, writes: BTreeMap<Vec<u8>, Slot>, lsn: Lsn) {
        if writes.is_empty() {
            return;
        }
        // Under the levels' lock, so the table cannot be frozen half-written.
        let levels = self.levels.read().unwrap_or_else(|p| p.into_inner());
        let active = &levels.active;
        let first = {
            let mut map = active.map.write().unwrap_or_else(|p| p.into_inner());
            let first = map.is_empty();
            let mut bytes = 0;
            for (k, w) in writes {
                bytes += k.len() + w.size();
                put(&mut map, k, w);
            }
            active.bytes.fetch_add(bytes, Ordering::Relaxed);
            active.last_lsn.store(lsn, Ordering::Release);
            first
        };
        if first {
            *active.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            drop(levels);
            self.wake();
        }
    }

    fn wake(&self) {
        let _guard = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Waits (the writer) while the tables hold more than [`MAX_BYTES`]: sled is behind, and
    /// acknowledgements slow down to its pace instead of memory growing.
    pub fn wait_for_room(&self) {
        let mut guard = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (active, frozen) = self.tables();
            let held = active.bytes.load(Ordering::Relaxed)
                + frozen.map_or(0, |f| f.bytes.load(Ordering::Relaxed));
            if held <= MAX_BYTES {
                return;
            }
            guard = self
                .changed
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits (the applier) until the active table is due to be applied, or `timeout`; then,
    /// or at once with `now`, freezes it and returns it. `None` when it is empty.
    pub fn freeze(&self, timeout: Duration, now: bool) -> Option<Arc<Table>> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (active, _) = self.tables();
            let since = *active.since.lock().unwrap_or_else(|p| p.into_inner());
            #[cfg(test)]
            let since = since.filter(|_| !self.hold.load(Ordering::Relaxed));
            let due = match since {
                None => false,
                Some(at) => {
                    now || at.elapsed() >= APPLY_AFTER
                        || active.bytes.load(Ordering::Relaxed) >= APPLY_BYTES
                }
            };
            if due {
                break;
            }
            if since.is_none() && now {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let wait = match since {
                Some(at) => APPLY_AFTER.saturating_sub(at.elapsed()).min(left),
                None => left,
            };
            guard = self
                .changed
                .wait_timeout(guard, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(guard);
        let mut l = self.levels.write().unwrap_or_else(|p| p.into_inner());
        debug_assert!(l.frozen.is_none(), "one frozen table at a time");
        let frozen = std::mem::take(&mut l.active);
        l.frozen = Some(frozen.clone());
        Some(frozen)
    }

    /// The frozen table is in sled now: readers find it there.
    pub fn applied(&self) {
        self.levels
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .frozen = None;
        self.wake();
    }

    /// Wakes a waiting applier (at close).
    pub fn nudge(&self) {
        self.wake();
    }
}

/// Which tables a reader looks in: the active one and the frozen one, as one moment had them.
pub type Tables = (Arc<Table>, Option<Arc<Table>>);

/// A key's last write in `tables`, if they hold one.
pub fn held_in(tables: &Tables, key: &[u8]) -> Option<Option<Vec<u8>>> {
    let (active, frozen) = tables;
    std::iter::once(active)
        .chain(frozen.as_ref())
        .find_map(|table| table.get(key))
}

/// [`Memtables::range`] over `tables`.
pub fn range_in<'a>(
    tables: &Tables,
    db: &'a sled::Db,
    from: &[u8],
    to: &[u8],
    rev: bool,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a {
    let (active, frozen) = tables;
    let mut held = BTreeMap::new();
    let bounds = (Bound::Included(from), Bound::Excluded(to));
    if let Some(f) = &frozen {
        f.range_into(bounds.0, bounds.1, &mut held);
    }
    active.range_into(bounds.0, bounds.1, &mut held);
    let stored = db.range(from.to_vec()..to.to_vec());
    let stored: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if rev {
        Box::new(stored.rev())
    } else {
        Box::new(stored)
    };
    let held: Box<dyn Iterator<Item = (Vec<u8>, Slot)>> = if rev {
        Box::new(held.into_iter().rev())
    } else {
        Box::new(held.into_iter())
    };
    Merged {
        stored: stored.peekable(),
        held: held.peekable(),
        rev,
    }
}

/// The tables' writes merged into sled's keys, tables first.
struct Merged<S: Iterator, H: Iterator> {
    stored: std::iter::Peekable<S>,
    held: std::iter::Peekable<H>,
    rev: bool,
}

impl<S, H> Iterator for Merged<S, H>
where
    S: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    H: Iterator<Item = (Vec<u8>, Slot)>,
{
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_held = match (self.stored.peek(), self.held.peek()) {
                (Some(Err(_)), _) => false,
                (Some(Ok((s, _))), Some((h, _))) => {
                    let order = h.as_slice().cmp(s.as_ref());
                    if order == std::cmp::Ordering::Equal {
                        // The table's write hides sled's value.
                        self.stored.next();
                        true
                    } else {
                        (order == std::cmp::Ordering::Less) != self.rev
                    }
                }
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (None, None) => return None,
            };
            if take_held {
                let (k, slot) = self.held.next().expect("peeked");
                match slot {
                    Slot::Put(v) | Slot::Fresh(v) => return Some(Ok((k, v))),
                    Slot::Remove => continue,
                }
            }
            return Some(
                self.stored
                    .next()
                    .expect("peeked")
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(w: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Slot> {
        w.iter()
            .map(|(k, v)| {
                let slot = match v {
                    Some(v) => Slot::Put(v.as_bytes().to_vec()),
                    None => Slot::Remove,
                };
                (k.as_bytes().to_vec(), slot)
            })
            .collect()
    }

    fn keys(it: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>) -> Vec<String> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            format!(
                "{}={}",
                String::from_utf8(k).unwrap(),
                String::from_utf8(v).unwrap()
            )
        })
        .collect()
    }

    /// Readers see the active table over the frozen one over sled, in both directions, with
    /// removals hiding what is below them.
    #[test]
    fn reads_see_the_tables_over_sled() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        for k in ["a", "b", "c", "e"] {
            db.insert(k, "sled").unwrap();
        }
        let mem = Memtables::default();
        mem.publish(writes(&[("b", None), ("d", Some("frozen"))]), 1);
        let frozen = mem.freeze(Duration::ZERO, true).unwrap();
        assert_eq!(frozen.last_lsn(), 1);
        mem.publish(writes(&[("c", Some("active")), ("d", Some("active"))]), 2);
        assert_eq!(mem.get(&db, b"b").unwrap(), None);
        assert_eq!(mem.get(&db, b"d").unwrap().unwrap(), b"active".as_slice());
        assert_eq!(mem.get(&db, b"a").unwrap().unwrap(), b"sled".as_slice());
        assert_eq!(
            keys(mem.range(&db, b"a", b"z", false)),
            ["a=sled", "c=active", "d=active", "e=sled"]
        );
        assert_eq!(
            keys(mem.range(&db, b"b", b"e", true)),
            ["d=active", "c=active"]
        );
        mem.applied();
        assert_eq!(mem.get(&db, b"b").unwrap().unwrap(), b"sled".as_slice());
    }

    /// A fresh key removed in the same table leaves nothing to apply; a key removed and
    /// written again is an ordinary put (sled may hold it).
    #[test]
    fn fresh_keys_removed_in_time_never_reach_sled() {
        let mut map = BTreeMap::new();
        put(&mut map, b"P1".to_vec(), Slot::Fresh(b"x".to_vec()));
        put(&mut map, b"P1".to_vec(), Slot::Put(b"y".to_vec()));
        assert_eq!(map[b"P1".as_slice()], Slot::Fresh(b"y".to_vec()));
        put(&mut map, b"P1".to_vec(), Slot::Remove);
        assert!(map.is_empty());
        put(&mut map, b"P2".to_vec(), Slot::Remove);
        put(&mut map, b"P2".to_vec(), Slot::Fresh(b"z".to_vec()));
        assert_eq!(map[b"P2".as_slice()], Slot::Put(b"z".to_vec()));
    }
}
