//! What the embedded store reads without the writer: events, deliveries, attempts, dead
//! letters, pages and counts. Every read sees what is durable, through the memtables
//! ([`super::memtable`]) and then sled; the queue answers for what is pending.

use std::collections::HashSet;

use super::wal::{self, Pointer};
use super::{counts_of_value, decode_delivery, keys, memtable, SledStore};
use crate::normalize::Event;
use crate::store::{
    codec, Attempt, Delivery, DeliveryState, Seq, Stats, StoreError, TargetCounts, TargetId,
    TargetState,
};

/// The exclusive end of the keys that begin with `prefix`.
fn after_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xFF);
    end
}

impl SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.shared.mem.get(&self.shared.db, key)
    }

    pub(super) fn read_delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        super::delivery_with(seq, |k| self.get(k))
    }

    pub(super) fn read_event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let key = keys::event(id.as_bytes());
        match self.get(&key)? {
            Some(v) => self.decode_event(&key, v.to_vec()),
            None => Ok(None),
        }
    }

    /// Decodes the event whose entry is `entry`, reading its body from the log. Compaction may
    /// move the body and delete its segment between the read of the entry and the read of
    /// the body; the entry is then read again.
    pub(super) fn decode_event(
        &self,
        key: &[u8],
        mut entry: Vec<u8>,
    ) -> Result<Option<Event>, StoreError> {
        for _ in 0..3 {
            let p = Pointer::decode(&entry)
                .ok_or_else(|| StoreError::Corrupt("malformed event entry".into()))?;
            match self.shared.segments.read(p) {
                Ok(body) => return codec::decode_event(&body).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.get(key)? {
                    Some(now) if now.as_ref() != entry.as_slice() => entry = now.to_vec(),
                    // Pruned meanwhile.
                    None => return Ok(None),
                    Some(_) => return Err(super::io_error(e)),
                },
                Err(e) => return Err(super::io_error(e)),
            }
        }
        Err(StoreError::Corrupt(
            "an event body moved three times while being read".into(),
        ))
    }

    pub(super) fn read_deliveries_of(
        &self,
        event: uuid::Uuid,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some(entry) = self.get(&keys::event(event.as_bytes()))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for seq in wal::entry_seqs(&entry) {
            out.extend(self.read_delivery(seq)?);
        }
        Ok(out)
    }

    pub(super) fn read_attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        // The record before the history: an attempt finishing in between moves the record's
        // last attempt into the history, where it is then found (and counted once).
        let last = self.read_delivery(seq)?.and_then(|d| d.last_attempt());
        let prefix = keys::attempts(seq);
        let mut out = Vec::new();
        for item in self
            .shared
            .mem
            .range(&self.shared.db, &prefix, &after_prefix(&prefix), false)
        {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice::<Attempt>(&v)
                    .map_err(|e| StoreError::Corrupt(format!("attempt of {seq}: {e}")))?,
            );
        }
        if let Some(last) = last {
            if out.iter().all(|a| a.number != last.number) {
                out.push(last);
            }
        }
        Ok(out)
    }

    /// Dead letters of `target` that died within `[since_ms, until_ms)`, oldest first.
    pub(super) fn read_dead_letters(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let (from, to) = (
            keys::dead(target, since_ms, 0),
            keys::dead(target, until_ms, 0),
        );
        let mut out = Vec::new();
        for item in self.shared.mem.range(&self.shared.db, &from, &to, false) {
            if out.len() >= limit {
                break;
            }
            if let Some((_, seq)) = keys::parse_timed(&item?.0) {
                out.extend(self.read_delivery(seq)?);
            }
        }
        Ok(out)
    }

    pub(super) fn read_target_state(
        &self,
        target: TargetId,
    ) -> Result<Option<TargetState>, StoreError> {
        match self.get(&keys::target_prefix(b'S', target))? {
            Some(v) => codec::decode_target_state(&v).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn read_counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        Ok(match self.get(&keys::target_prefix(b'C', target))? {
            Some(v) => counts_of_value(&v),
            None => TargetCounts::default(),
        })
    }

    /// When the oldest pending delivery of `target` was created: the queue names it, its
    /// record says when.
    pub(super) fn read_oldest_pending(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        let oldest = self.shared.queue().oldest(target);
        match oldest {
            Some(seq) => Ok(self.read_delivery(seq)?.map(|d| d.created_ms)),
            None => Ok(None),
        }
    }

    /// Events in time order after `after` (exclusive), at most `limit`.
    pub(super) fn read_events_page(
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
        for item in self.shared.mem.range(&self.shared.db, &start, b"F", false) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.extend(self.decode_event(&k, v)?);
        }
        Ok(out)
    }

    /// Counts every event and delivery record: reads the whole store.
    pub(super) fn read_stats(&self) -> Result<Stats, StoreError> {
        let mut stats = Stats::default();
        for item in self.shared.mem.range(&self.shared.db, b"E", b"F", false) {
            item?;
            stats.events += 1;
        }
        let mut seen = HashSet::new();
        for item in self.shared.mem.range(&self.shared.db, b"L", b"M", false) {
            let (k, v) = item?;
            let seq = keys::seq_of(&k[1..]).unwrap_or(0);
            let d = decode_delivery(seq, &v)?;
            if !seen.insert(d.seq) {
                continue;
            }
            match d.state {
                // Counted below with those that have no record yet.
                DeliveryState::Pending => {}
                DeliveryState::Done => stats.done += 1,
                DeliveryState::Dead => stats.dead += 1,
                DeliveryState::Skipped => stats.skipped += 1,
                DeliveryState::Superseded => stats.superseded += 1,
            }
        }
        // Every pending delivery has its pending key, with or without a record: its own, or an
        // entry in a pack (counted unless the tables write its key). One look at the tables
        // for both, so a table applied meanwhile is not counted from it and from its packs.
        let (db, mem) = (&self.shared.db, &self.shared.mem);
        let tables = mem.tables();
        for item in memtable::range_in(&tables, db, b"P", b"Q", false) {
            item?;
            stats.pending += 1;
        }
        mem.packs.each_entry(db, 0, u64::MAX, |seq, _| {
            if memtable::held_in(&tables, &keys::pending(seq)).is_none() {
                stats.pending += 1;
            }
            Ok(())
        })?;
        Ok(stats)
    }
}
