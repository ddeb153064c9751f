//! The configured backend behind one type, so the relay is not generic over its store.

use super::{
    Attempt, Claim, Delivery, EventOutcome, EventPage, EventQuery, IngestBatch, NewDelivery, Next,
    PgStore, Prune, Pruned, RateLimit, Seq, Shaped, SledStore, Stats, Store, StoreError,
    TargetCounts, TargetId, TargetState,
};
use crate::normalize::Event;

pub enum AnyStore {
    Sled(SledStore),
    Postgres(PgStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sled($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl AnyStore {
    /// Bytes the store takes: sled's directory, or the whole database as last measured.
    pub fn size_on_disk(&self) -> u64 {
        each!(self, s => s.size_on_disk())
    }

    /// The embedded store's log syncs and the operations they made durable (`None` for
    /// PostgreSQL, whose commits are its own).
    pub fn log_syncs(&self) -> Option<(u64, u64)> {
        match self {
            AnyStore::Sled(s) => Some(s.log_syncs()),
            AnyStore::Postgres(_) => None,
        }
    }

    /// Flushes and stops background work; call once, at shutdown.
    pub async fn close(&self) -> Result<(), StoreError> {
        each!(self, s => s.close().await)
    }

    /// Resolves with the cause if the store stops on a failure it cannot recover from while
    /// running (the embedded store's fail-stop); never for PostgreSQL.
    pub async fn failed(&self) -> String {
        match self {
            AnyStore::Sled(s) => s.failed().await,
            AnyStore::Postgres(_) => std::future::pending().await,
        }
    }

    /// Whether other relay instances may write to the same store.
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }
}

impl Store for AnyStore {
    async fn target_ids(&self, names: &[String]) -> Result<Vec<TargetId>, StoreError> {
        each!(self, s => s.target_ids(names).await)
    }
    async fn ingest(&self, batch: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        each!(self, s => s.ingest(batch).await)
    }
    async fn claim(&self, target: TargetId, now_ms: u64) -> Result<Claim, StoreError> {
        each!(self, s => s.claim(target, now_ms).await)
    }
    async fn claim_probe(&self, target: TargetId, after: Seq) -> Result<Claim, StoreError> {
        each!(self, s => s.claim_probe(target, after).await)
    }
    async fn finish(&self, d: &Delivery, attempt: Attempt, next: Next) -> Result<(), StoreError> {
        each!(self, s => s.finish(d, attempt, next).await)
    }
    fn release(&self, seq: Seq) {
        each!(self, s => s.release(seq))
    }
    async fn key_state(&self, target: TargetId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => s.key_state(target, key).await)
    }
    async fn finish_with_key_state(
        &self,
        d: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.finish_with_key_state(d, attempt, next, state).await)
    }
    async fn key_backlog(
        &self,
        head: &Delivery,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        each!(self, s => s.key_backlog(head, limit).await)
    }
    async fn finish_shaped(&self, shaped: Shaped) -> Result<(), StoreError> {
        each!(self, s => s.finish_shaped(shaped).await)
    }
    async fn rate_take(
        &self,
        target: TargetId,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.rate_take(target, limit, now_ms).await)
    }
    async fn rate_pause(
        &self,
        target: TargetId,
        limit: RateLimit,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        each!(self, s => s.rate_pause(target, limit, until_ms).await)
    }
    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        each!(self, s => s.event(id).await)
    }
    async fn delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        each!(self, s => s.delivery(seq).await)
    }
    async fn deliveries_of(&self, event: uuid::Uuid) -> Result<Vec<Delivery>, StoreError> {
        each!(self, s => s.deliveries_of(event).await)
    }
    async fn attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        each!(self, s => s.attempts(seq).await)
    }
    async fn dead_letters(&self, target: TargetId) -> Result<Vec<Delivery>, StoreError> {
        each!(self, s => s.dead_letters(target).await)
    }
    async fn stats(&self) -> Result<Stats, StoreError> {
        each!(self, s => s.stats().await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await)
    }
    async fn target_state(&self, target: TargetId) -> Result<Option<TargetState>, StoreError> {
        each!(self, s => s.target_state(target).await)
    }
    async fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> Result<(), StoreError> {
        each!(self, s => s.set_target_state(target, state).await)
    }
    async fn counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        each!(self, s => s.counts(target).await)
    }
    async fn oldest_pending_ms(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.oldest_pending_ms(target).await)
    }
    async fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        each!(self, s => s.events_page(after, limit).await)
    }
    async fn event_log(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        each!(self, s => s.event_log(query).await)
    }
    async fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        each!(self, s => s.dead_letters_between(target, since_ms, until_ms, limit).await)
    }
    async fn replay(&self, seqs: Vec<Seq>, now_ms: u64) -> Result<usize, StoreError> {
        each!(self, s => s.replay(seqs, now_ms).await)
    }
    async fn prune(&self, limits: Prune) -> Result<Pruned, StoreError> {
        each!(self, s => s.prune(limits).await)
    }
    async fn redeliver(
        &self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        each!(self, s => s.redeliver(event, deliveries, now_ms).await)
    }
}
