//! The event log, newest first (`GET /events`, the console's message log): the paging rules
//! both backends share, and the sled store's scan.
//!
//! One call looks at no more than [`EventQuery::max_examined`] events, matching or not, so a
//! filter that matches little still costs a bounded amount per request; the caller continues
//! from [`EventPage::resume`], where the call stopped.

use super::{
    keys, Delivery, DeliveryState, EventPage, EventQuery, EventStatus, LoggedEvent, StoreError,
};
use crate::normalize::Event;

/// Events the sled scan looks at between two yields to the runtime.
const CHUNK: usize = 128;

impl EventStatus {
    pub fn of(deliveries: &[Delivery]) -> EventStatus {
        let any = |s| deliveries.iter().any(|d| d.state == s);
        if any(DeliveryState::Pending) {
            EventStatus::Pending
        } else if any(DeliveryState::Dead) {
            EventStatus::Dead
        } else {
            EventStatus::Done
        }
    }
}

impl EventQuery {
    /// Whether an event with these deliveries passes the status filter.
    pub fn admits_deliveries(&self, deliveries: &[Delivery]) -> bool {
        self.status.is_none_or(|s| s == EventStatus::of(deliveries))
    }

    /// Whether the event passes the source and type filters.
    pub fn admits_event(&self, event: &Event) -> bool {
        self.source.as_ref().is_none_or(|s| *s == event.source)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == event.event_type)
    }
}

/// Collects one page: counts the events examined and remembers the last, where the next call
/// resumes.
pub(super) struct Pager<'q> {
    query: &'q EventQuery,
    page: EventPage,
    last: Option<uuid::Uuid>,
}

impl<'q> Pager<'q> {
    pub fn new(query: &'q EventQuery) -> Pager<'q> {
        Pager {
            query,
            page: EventPage::default(),
            last: None,
        }
    }

    /// Whether the page has room and the budget allows looking at another event.
    pub fn wants_more(&self) -> bool {
        self.page.events.len() < self.query.limit && self.page.examined < self.query.max_examined
    }

    /// How many more events this call may look at.
    pub fn budget(&self) -> usize {
        self.query.max_examined.saturating_sub(self.page.examined)
    }

    /// Counts `id` as looked at; the next call resumes below it.
    pub fn examine(&mut self, id: uuid::Uuid) {
        self.page.examined += 1;
        self.last = Some(id);
    }

    pub fn push(&mut self, event: Event, deliveries: Vec<Delivery>) {
        self.page.events.push(LoggedEvent { event, deliveries });
    }

    /// The page; `ended` when the scan reached the end of the range.
    pub fn finish(mut self, ended: bool) -> EventPage {
        self.page.resume = if ended { None } else { self.last };
        self.page
    }
}

/// The sled store's page: a reverse scan of the `E` keys in range. An event's deliveries are
/// read first (a record each; they decide a status filter) and its body only when it may still
/// match. The scan yields to the runtime every [`CHUNK`] events, resuming from the last key.
pub(super) async fn sled_page(
    db: &sled::Db,
    query: &EventQuery,
    deliveries: impl Fn(uuid::Uuid, &[u8]) -> Result<Vec<Delivery>, StoreError>,
    decode: impl Fn(&[u8], sled::IVec) -> Result<Option<Event>, StoreError>,
) -> Result<EventPage, StoreError> {
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
        let mut rows = db.range(low.clone()..high.clone()).rev();
        for _ in 0..CHUNK {
            let Some(item) = rows.next() else {
                return Ok(pager.finish(true));
            };
            let (key, value) = item?;
            high = key.to_vec();
            let id = key
                .get(1..)
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
                .ok_or_else(|| StoreError::Corrupt("malformed event key".into()))?;
            pager.examine(id);
            let ds = deliveries(id, &value)?;
            // `None`: pruned since the scan read its key.
            if query.admits_deliveries(&ds) {
                if let Some(event) = decode(&key, value)? {
                    if query.admits_event(&event) {
                        pager.push(event, ds);
                    }
                }
            }
            if !pager.wants_more() {
                let ended = rows.next().is_none();
                return Ok(pager.finish(ended));
            }
        }
        drop(rows);
        tokio::task::yield_now().await;
    }
}
