//! The event log newest first (`Store::event_log`), for the embedded store: a reverse scan of
//! the event entries in range, through the memtables and sled. An event's deliveries are read
//! first (a record each; they decide a status filter) and its body from the log only when it
//! may still match. The scan yields to the runtime every [`CHUNK`] events, resuming below the
//! last key, and stops at the query's budget (see `store::event_log`).

use super::{keys, wal, SledStore};
use crate::store::event_log::Pager;
use crate::store::{EventPage, EventQuery, StoreError};

/// Events looked at between two yields to the runtime.
const CHUNK: usize = 256;

impl SledStore {
    pub(super) async fn read_event_log(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let low = match query.after {
            Some(id) => {
                let mut k = keys::event(id.as_bytes());
                k.push(0);
                k
            }
            None => b"E".to_vec(),
        };
        let mut high = match query.before {
            Some(id) => keys::event(id.as_bytes()),
            None => b"F".to_vec(),
        };
        let mut pager = Pager::new(query);
        loop {
            if low >= high || !pager.wants_more() {
                return Ok(pager.finish(low >= high));
            }
            if let Some(ended) = self.scan_chunk(query, &mut pager, &low, &mut high)? {
                return Ok(pager.finish(ended));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Looks at up to [`CHUNK`] events below `high`, moving `high` down past them. `Some`
    /// when the page is done (`true`: the range ended), `None` to go on.
    fn scan_chunk(
        &self,
        query: &EventQuery,
        pager: &mut Pager<'_>,
        low: &[u8],
        high: &mut Vec<u8>,
    ) -> Result<Option<bool>, StoreError> {
        let mut rows = self.shared.mem.range(&self.shared.db, low, high, true);
        for _ in 0..CHUNK {
            let Some(item) = rows.next() else {
                return Ok(Some(true));
            };
            let (key, entry) = item?;
            let id = key
                .get(1..)
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
                .ok_or_else(|| StoreError::Corrupt("malformed event key".into()))?;
            pager.examine(id);
            let mut deliveries = Vec::new();
            for seq in wal::entry_seqs(&entry) {
                deliveries.extend(self.read_delivery(seq)?);
            }
            // `None`: pruned since the scan read its key.
            if query.admits_deliveries(&deliveries) {
                if let Some(event) = self.decode_event(&key, entry)? {
                    if query.admits_event(&event) {
                        pager.push(event, deliveries);
                    }
                }
            }
            *high = key;
            if !pager.wants_more() {
                return Ok(Some(rows.next().is_none()));
            }
        }
        Ok(None)
    }
}
