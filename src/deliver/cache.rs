//! Decoded events shared by every delivery of them.
//!
//! An event is delivered moments after it is stored, once per target it is routed to, and
//! again on every retry. Reading it back from the store for each would cost a read of its body
//! and a decode of its JSON every time. Ingest puts the events it stores here, decoded, with
//! the number of deliveries that will take them (not a paused or suspended target's); each
//! delivery takes it from here once (a shaped target's too, also for the deliveries it
//! supersedes), and it leaves when all have. What is not here (a retry, an event after a restart, one that found
//! the cache full) is read from the store by the delivery that needs it, and not kept: kept,
//! it would hold room that a new event's deliveries are about to need.
//!
//! Bounded by count and by bytes. When full, a new event is not kept (it is read from the
//! store when its turn comes) rather than pushing out an older one: deliveries take the
//! oldest events first, so under a flood whose backlog outgrows the cache, pushing out the
//! oldest would have every delivery miss. An event whose deliveries are not attempted (a
//! paused target) leaves after [`MAX_AGE`]. Ingest puts events here just before it stores them
//! (a lane may claim a delivery the moment its write lands) and takes out again what was not
//! stored; no delivery can ask for an event before the store holds it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::normalize::Event;

/// Events kept at most, and bytes of their bodies and JSON (the decoded rest of an event is a
/// few kilobytes more).
const MAX_EVENTS: usize = 8192;
const MAX_BYTES: usize = 32 << 20;
/// An event kept this long leaves whether or not its deliveries were attempted.
pub const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct EventCache {
    inner: Mutex<Inner>,
}

struct Kept {
    event: Arc<Event>,
    /// Attempts still expected before it leaves.
    waiting: usize,
}

#[derive(Default)]
struct Inner {
    events: HashMap<uuid::Uuid, Kept>,
    /// Oldest first, with when each was kept; an id may stand here after its event left.
    order: VecDeque<(uuid::Uuid, Instant)>,
    bytes: usize,
}

/// What a kept event is counted for: its body and its `{{json event}}` bytes dominate; the
/// rest of an event is a few hundred bytes. Stable while it is kept: its JSON is made before
/// it is counted (see [`EventCache::put`]).
fn size(event: &Event) -> usize {
    event.raw.body.len() + event.json_memo.made_len() + 512
}

impl EventCache {
    /// The event, for one of the deliveries it waits for: once all have taken it, it leaves.
    pub fn take(&self, id: &uuid::Uuid) -> Option<Arc<Event>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let kept = inner.events.get_mut(id)?;
        let event = kept.event.clone();
        kept.waiting -= 1;
        if kept.waiting == 0 {
            inner.events.remove(id);
            inner.bytes -= size(&event);
        }
        Some(event)
    }

    /// Lets go of an event that was not stored after all (a duplicate, a refused write).
    pub fn forget(&self, id: &uuid::Uuid) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gone) = inner.events.remove(id) {
            inner.bytes -= size(&gone.event);
        }
    }

    /// Events kept now, and the bytes they are counted for (`/metrics`).
    pub fn held(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.events.len(), inner.bytes)
    }

    /// Keeps an event ingest is about to store, until each of its `deliveries` has been
    /// attempted (ingest puts it before the write, so that a lane claiming a delivery the
    /// moment its write lands finds it here; [`EventCache::forget`] if it is not stored). Its body is copied to an allocation of its own first: the request's buffer
    /// it is a slice of can be many times larger, and would be held as long.
    pub fn put(&self, id: uuid::Uuid, mut event: Event, deliveries: usize) {
        if deliveries == 0 {
            return;
        }
        // Made now if the store's encoding did not (each delivery uses them), so the size
        // counted here is the size let go of later.
        event.template_json();
        let now = Instant::now();
        let added = size(&event);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        if inner.events.len() >= MAX_EVENTS || inner.bytes + added > MAX_BYTES {
            return;
        }
        event.raw.body = bytes::Bytes::copy_from_slice(&event.raw.body);
        let event = Arc::new(event);
        let kept = Kept {
            event,
            waiting: deliveries,
        };
        if inner.events.insert(id, kept).is_none() {
            inner.order.push_back((id, now));
            inner.bytes += added;
        }
    }
}

impl Inner {
    /// Lets go of what is past [`MAX_AGE`], and of the order's entries whose event left (all
    /// of them now and then: those behind a long-kept event would pile up).
    fn expire(&mut self, now: Instant) {
        if self.order.len() > 4 * MAX_EVENTS {
            let events = &self.events;
            self.order.retain(|(id, _)| events.contains_key(id));
        }
        while let Some(&(id, at)) = self.order.front() {
            let left = !self.events.contains_key(&id);
            if !left && now.duration_since(at) < MAX_AGE {
                break;
            }
            self.order.pop_front();
            if let Some(gone) = self.events.remove(&id) {
                self.bytes -= size(&gone.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: usize) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(), "source": "s", "kind": "statusgator",
            "format": "f", "type": "t", "dedup_key": "d", "occurred_at": "", "received_at": "",
            "service": {}, "status": null, "previous_status": null, "title": "", "details": null,
            "components": [], "query": {}, "alert": {},
        }))
        .unwrap();
        e.raw.body = vec![b'x'; body].into();
        e
    }

    fn held(cache: &EventCache) -> (usize, usize) {
        let inner = cache.inner.lock().unwrap();
        let bytes = inner.events.values().map(|k| size(&k.event)).sum::<usize>();
        assert_eq!(inner.bytes, bytes);
        drop(inner);
        assert_eq!(cache.held(), (cache.held().0, bytes));
        cache.held()
    }

    /// An event is taken once per delivery it was stored with, then leaves; one stored with
    /// none is not kept. Guards the count: without it the cache fills with delivered events
    /// and refuses new ones.
    #[test]
    fn an_event_leaves_once_each_delivery_took_it() {
        let cache = EventCache::default();
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        cache.put(a, event(10), 2);
        cache.put(b, event(10), 0);
        assert!(cache.take(&b).is_none());
        assert!(cache.take(&a).is_some());
        assert!(cache.take(&a).is_some());
        assert!(cache.take(&a).is_none(), "both deliveries took it");
        assert_eq!(held(&cache), (0, 0));
    }

    /// Full (by count or by bytes), the cache keeps what it holds and refuses the newest:
    /// deliveries take the oldest first. Whatever is not taken leaves after `MAX_AGE`, and
    /// then there is room again. Guards the refusal: pushing out the oldest instead, the
    /// first assertion fails.
    #[test]
    fn full_it_keeps_the_oldest_and_lets_go_with_age() {
        let cache = EventCache::default();
        let ids: Vec<uuid::Uuid> = (0..MAX_EVENTS + 10).map(|_| uuid::Uuid::now_v7()).collect();
        for id in &ids {
            cache.put(*id, event(10), 1);
        }
        assert_eq!(held(&cache).0, MAX_EVENTS);
        assert!(cache.take(&ids[0]).is_some(), "the oldest stay");
        assert!(
            cache.take(&ids[MAX_EVENTS]).is_none(),
            "the newest wait in the store"
        );
        cache.inner.lock().unwrap().expire(Instant::now() + MAX_AGE);
        assert_eq!(held(&cache), (0, 0));

        let big = uuid::Uuid::now_v7();
        cache.put(big, event(MAX_BYTES / 2), 1);
        cache.put(uuid::Uuid::now_v7(), event(MAX_BYTES / 2), 1);
        assert_eq!(held(&cache).0, 1, "bytes bound");
        assert!(cache.take(&big).is_some());
    }
}
