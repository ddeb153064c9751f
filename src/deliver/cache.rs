//! Decoded events shared by every delivery of them.
//!
//! An event is delivered moments after it is stored, once per target it is routed to, and
//! again on every retry. Reading it back from the store for each would cost a read of its body
//! and a decode of its JSON every time. Ingest puts the events it stored here, decoded, and
//! deliveries take them from here; what is not here (older events, after a restart) is read
//! from the store once and kept. The cache is bounded by count and by bytes and forgets the
//! oldest first: it never holds anything the store does not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::normalize::Event;

/// Events kept at most, and bytes of their bodies: a delivery that keeps pace takes its event
/// within a few hundred milliseconds of ingest (thousands of events at the most).
const MAX_EVENTS: usize = 2048;
const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct EventCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    events: HashMap<uuid::Uuid, Arc<Event>>,
    /// Oldest first; an id may stand here after its event left (put again meanwhile).
    order: VecDeque<uuid::Uuid>,
    bytes: usize,
}

fn size(event: &Event) -> usize {
    // The body dominates; the rest of an event is a few hundred bytes.
    event.raw.body.len() + 512
}

impl EventCache {
    pub fn get(&self, id: &uuid::Uuid) -> Option<Arc<Event>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.get(id).cloned()
    }

    /// Keeps `event`. Its body is copied to an allocation of its own first: the request's
    /// buffer it is a slice of can be many times larger, and would be held as long.
    pub fn put(&self, id: uuid::Uuid, mut event: Event) {
        event.raw.body = bytes::Bytes::copy_from_slice(&event.raw.body);
        self.keep(id, Arc::new(event));
    }

    /// Keeps an event read back from the store (its body has its own allocation).
    pub fn keep(&self, id: uuid::Uuid, event: Arc<Event>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let added = size(&event);
        if let Some(old) = inner.events.insert(id, event) {
            inner.bytes -= size(&old);
        } else {
            inner.order.push_back(id);
        }
        inner.bytes += added;
        while inner.events.len() > MAX_EVENTS || inner.bytes > MAX_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.events.remove(&oldest) {
                inner.bytes -= size(&gone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: usize) -> Arc<Event> {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(), "source": "s", "kind": "statusgator",
            "format": "f", "type": "t", "dedup_key": "d", "occurred_at": "", "received_at": "",
            "service": {}, "status": null, "previous_status": null, "title": "", "details": null,
            "components": [], "query": {}, "alert": {},
        }))
        .unwrap();
        e.raw.body = vec![b'x'; body].into();
        Arc::new(e)
    }

    /// Bounded by count and bytes, oldest out first; what it holds comes back as put.
    #[test]
    fn keeps_the_newest_within_its_bounds() {
        let cache = EventCache::default();
        let ids: Vec<uuid::Uuid> = (0..MAX_EVENTS + 10).map(|_| uuid::Uuid::now_v7()).collect();
        for id in &ids {
            cache.keep(*id, event(10));
        }
        assert!(cache.get(&ids[0]).is_none());
        assert!(cache.get(&ids[9]).is_none());
        assert!(cache.get(&ids[10]).is_some());
        let big = uuid::Uuid::now_v7();
        cache.keep(big, event(MAX_BYTES / 2));
        cache.keep(uuid::Uuid::now_v7(), event(MAX_BYTES / 2));
        assert!(cache.get(&big).is_none(), "bytes bound");
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= MAX_BYTES);
        assert_eq!(
            inner.bytes,
            inner.events.values().map(|e| size(e)).sum::<usize>()
        );
    }
}
