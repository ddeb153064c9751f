//! The event log, newest first (`GET /events`, the console's message log): the paging rules
//! both backends share (the embedded store's scan is `sled::event_log`).
//!
//! One call looks at no more than [`EventQuery::max_examined`] events, matching or not, so a
//! filter that matches little still costs a bounded amount per request; the caller continues
//! from [`EventPage::resume`], where the call stopped.

use super::{Delivery, DeliveryState, EventPage, EventQuery, EventStatus, LoggedEvent};
use crate::normalize::Event;

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
pub(crate) struct Pager<'q> {
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
