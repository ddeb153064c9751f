//! Durable state: events, deliveries, retry schedules, dedup keys and dead letters.
//!
//! The trait is narrow on purpose, so another backend can stand behind it: ingest hands over
//! one [`IngestBatch`] per request and learns what was stored; workers [`Store::claim`] the next
//! due delivery of a target and [`Store::finish`] it with the attempt's outcome. Leases are the
//! store's business: a claimed delivery is invisible to other claims until it is finished or
//! released, and after a crash everything not recorded as finished is simply due again.

mod any;
mod codec;
mod event_log;
mod postgres;
pub(crate) mod rate;
mod sled;

use std::future::Future;

use serde::{Deserialize, Serialize};

pub use self::sled::{Gather, LogOptions, Manifest, SledStore};
pub use any::AnyStore;
pub use postgres::{check_connection, redact_url, PgOptions, PgStore, Waker};
pub use rate::RateLimit;

use crate::normalize::Event;

pub type TargetId = u32;
/// A delivery's sequence number: unique, and increasing in the order deliveries were stored,
/// except that with a shared store (PostgreSQL) two requests storing at the same moment may
/// commit in the other order. Per-key order follows the commits, never the numbers alone.
pub type Seq = u64;

/// Ordering keys are cut to this many bytes (VictorOps caps `entity_id` at 512 characters).
pub const MAX_ORDERING_KEY: usize = 512;

/// Cuts an ordering key to [`MAX_ORDERING_KEY`] bytes on a character boundary.
pub fn clamp_ordering_key(key: &mut String) {
    if key.len() > MAX_ORDERING_KEY {
        let mut end = MAX_ORDERING_KEY;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(#[from] ::sled::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("store record is damaged: {0}")]
    Corrupt(String),
    #[error("store is shut down")]
    Closed,
    #[error("the store did not complete a write within {0} ms")]
    Stalled(u128),
    /// The store stopped on a failure it cannot recover from while running (a failed log
    /// sync, a failed write to sled after the log made it durable): nothing more is written
    /// until the relay restarts and replays the log.
    #[error("the store stopped after a failure ({0}); the relay must restart")]
    Failed(String),
    #[error(
        "the store at {path} is of format {found}, which this build does not know (it knows \
         format {known}); it was written by another build of hookrelay"
    )]
    Format {
        path: String,
        found: String,
        known: u64,
    },
    #[error(
        "the store at {path} is missing data it acknowledged: its manifest records deliveries up \
         to #{recorded}, but the database now ends at #{found}. It was damaged (truncated, \
         overwritten, or its files replaced). Restore the directory from a backup, or run \
         `hookrelay store accept-damage` to start with what is left; the rest is lost"
    )]
    Damaged {
        path: String,
        recorded: u64,
        found: u64,
    },
}

/// Everything one request stores, written atomically.
#[derive(Debug)]
pub struct IngestBatch {
    pub events: Vec<NewEvent>,
    pub now_ms: u64,
    /// Dedup keys written by this batch are honoured until then.
    pub dedup_until_ms: u64,
}

/// An event ready to store. Encoding happens here, on the request's own task, so the single
/// writer thread that every request waits on does as little as possible.
#[derive(Debug)]
pub struct NewEvent {
    pub id: uuid::Uuid,
    pub source: String,
    pub dedup_key: String,
    pub encoded: Vec<u8>,
    pub deliveries: Vec<NewDelivery>,
}

impl NewEvent {
    pub fn new(event: &Event, deliveries: Vec<NewDelivery>) -> Result<NewEvent, StoreError> {
        Ok(NewEvent {
            id: uuid::Uuid::parse_str(&event.id)
                .map_err(|e| StoreError::Corrupt(format!("event id {:?}: {e}", event.id)))?,
            source: event.source.clone(),
            dedup_key: event.dedup_key.clone(),
            encoded: codec::encode_event(event)?,
            deliveries,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub target: TargetId,
    pub ordering_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Stored,
    /// The dedup key was seen within the window; nothing was written.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Done,
    Dead,
    /// The target declined the event (e.g. a URL variable the event lacks); not an error and
    /// never retried.
    Skipped,
    /// Never sent: a newer delivery of the same ordering key was sent in its place (latest-state
    /// coalescing); [`Delivery::note`] names it. Final, and pruned like a delivered one.
    Superseded,
}

/// A delivery of one event to one target, with its retry state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: Seq,
    pub event_id: uuid::Uuid,
    pub target: TargetId,
    pub ordering_key: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    pub due_ms: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub response_excerpt: Option<String>,
    /// `attempts` when the delivery was last replayed from the dead letters: retries count
    /// from there, so a replay gets a fresh retry budget while its history stays.
    pub retry_base: u32,
    /// When the last attempt started and how long it took. With `attempts`, `last_status`,
    /// `last_error` and `response_excerpt` this is the last attempt's record, which the sled
    /// store keeps only here until the next attempt: a delivery that succeeds at once costs
    /// one write fewer. 0 where the store keeps every attempt apart (PostgreSQL).
    pub last_at_ms: u64,
    pub last_latency_ms: u64,
    /// Why traffic shaping acted on it without an attempt: held (until when, by what) or
    /// superseded (by which delivery). `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Delivery {
    /// A new pending delivery, due at once.
    pub fn new(
        seq: Seq,
        event_id: uuid::Uuid,
        target: TargetId,
        ordering_key: String,
        now_ms: u64,
    ) -> Delivery {
        Delivery {
            seq,
            event_id,
            target,
            ordering_key,
            state: DeliveryState::Pending,
            attempts: 0,
            due_ms: now_ms,
            created_ms: now_ms,
            updated_ms: now_ms,
            last_status: None,
            last_error: None,
            response_excerpt: None,
            retry_base: 0,
            last_at_ms: 0,
            last_latency_ms: 0,
            note: None,
        }
    }

    /// A delivery that does not exist yet, for rendering templates before one does (ordering
    /// keys at ingest, dry runs).
    pub fn placeholder(event_id: uuid::Uuid, target: TargetId) -> Delivery {
        Delivery::new(0, event_id, target, String::new(), 0)
    }

    /// The last attempt, from the record alone; `None` where the store keeps it apart.
    pub fn last_attempt(&self) -> Option<Attempt> {
        (self.attempts > 0 && self.last_at_ms != 0).then(|| Attempt {
            number: self.attempts,
            at_ms: self.last_at_ms,
            latency_ms: self.last_latency_ms,
            status: self.last_status,
            error: self.last_error.clone(),
            response_excerpt: self.response_excerpt.clone(),
        })
    }
}

/// Whether a target's workers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetMode {
    Active,
    /// Stopped by an operator until resumed by one.
    Paused,
    /// Stopped after consecutive failures; a probe resumes it when the head goes through.
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub mode: TargetMode,
    pub since_ms: u64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Prune {
    pub done_before_ms: u64,
    pub dead_before_ms: u64,
    pub now_ms: u64,
    /// At most this many events (and dedup keys) are looked at per call.
    pub max_events: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub dedup_keys: usize,
    /// The call stopped at its limit: more may be due; calling again goes on from there.
    pub more: bool,
}

/// Counters kept with every write, so reading them never scans the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetCounts {
    pub pending: u64,
    pub dead: u64,
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub at_ms: u64,
    pub latency_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    Retry {
        due_ms: u64,
    },
    /// A retry that does not spend the delivery's retry budget: the receiver is up and asked
    /// the relay to wait (a 429 with `Retry-After`).
    Throttled {
        due_ms: u64,
    },
    Dead,
    Skipped,
}

/// What traffic shaping did with a key's deliveries, recorded by [`Store::finish_shaped`] in
/// one atomic write.
#[derive(Debug, Clone)]
pub struct Shaped {
    /// The claimed head, as claimed: the claim this write ends.
    pub head: Delivery,
    /// The delivery acted on: the head, or a later delivery of its key as
    /// [`Store::key_backlog`] read it.
    pub kept: Delivery,
    /// Every delivery of the key before `kept` as [`Store::key_backlog`] read them (the head
    /// among them when `kept` is not the head): recorded as superseded by `kept`.
    pub superseded: Vec<Seq>,
    pub outcome: ShapedOutcome,
    /// The key's state value, as [`Store::finish_with_key_state`]: `Some(Some(v))` sets it,
    /// `Some(None)` removes it, `None` leaves it.
    pub key_state: Option<Option<Vec<u8>>>,
}

#[derive(Debug, Clone)]
pub enum ShapedOutcome {
    /// An attempt at `kept`, as [`Store::finish`] records it.
    Attempt { attempt: Attempt, next: Next },
    /// `kept` is held without an attempt: due again at `due_ms`, with `note` saying why.
    Hold { due_ms: u64, note: String },
}

#[derive(Debug)]
pub enum Claim {
    Due(Delivery),
    /// Nothing is due; the earliest pending delivery falls due then.
    Wait(u64),
    Empty,
}

/// An event's deliveries summed up: pending while any is, else dead when any is, else done
/// (an event routed to no target is done).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Pending,
    Dead,
    Done,
}

/// A page of the event log, newest first: events with ids between `after` and `before` (both
/// exclusive) that pass the filters. Ids are UUIDv7, so id order is time order and a time
/// range is an id range.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub before: Option<uuid::Uuid>,
    pub after: Option<uuid::Uuid>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<EventStatus>,
    pub limit: usize,
    /// Events one call may look at, matching or not: what bounds its cost whatever the
    /// filters. The caller continues from [`EventPage::resume`].
    pub max_examined: usize,
}

/// A stored event with its deliveries.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub event: Event,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<LoggedEvent>,
    /// Events looked at.
    pub examined: usize,
    /// The `before` of the next call when the call stopped before the end of its range (the
    /// page was full, or `max_examined` events were looked at); `None` when nothing in the
    /// range is left to look at.
    pub resume: Option<uuid::Uuid>,
}

/// Counts, for tests and operators. These scan; keep them off hot paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub pending: u64,
    pub done: u64,
    pub dead: u64,
    pub skipped: u64,
    pub superseded: u64,
}

/// At most this many deliveries of one key are read by one [`Store::key_backlog`]: a key with
/// more waiting drains in steps of this many (one request per step).
pub const MAX_BACKLOG: usize = 10_000;

pub trait Store: Send + Sync + 'static {
    /// Stable ids for target names, assigned on first sight and kept across restarts.
    fn target_ids(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<TargetId>, StoreError>> + Send;

    /// Stores a request's events and deliveries atomically and durably; returns once on disk.
    fn ingest(
        &self,
        batch: IngestBatch,
    ) -> impl Future<Output = Result<Vec<EventOutcome>, StoreError>> + Send;

    /// Leases the first due delivery of `target` that no one else holds.
    fn claim(
        &self,
        target: TargetId,
        now_ms: u64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Leases the first head of `target` after `after` in sequence order, going round to the
    /// first after the last, whatever its due time and that no one else holds: a suspended
    /// target's probe takes its keys in turn.
    fn claim_probe(
        &self,
        target: TargetId,
        after: Seq,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records an attempt and what follows from it, durably, then drops the lease.
    fn finish(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops a lease without recording anything: the delivery is due again as it was.
    fn release(&self, seq: Seq);

    /// The small value kept for one `(target, ordering key)`, if any: the `statushub`
    /// target's incident state. Written only by [`Store::finish_with_key_state`], so it
    /// changes only when a delivery of that key ends, and (only heads being claimable) it is
    /// read and written by one delivery of the key at a time.
    fn key_state(
        &self,
        target: TargetId,
        ordering_key: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// [`Store::finish`], and in the same atomic write the value of the delivery's
    /// `(target, ordering key)`: `Some` sets it, `None` removes it. When the finish does not
    /// apply (the attempt was already recorded, or the lease passed to another instance),
    /// neither is written.
    fn finish_with_key_state(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The pending deliveries of the claimed `head`'s `(target, ordering key)` in their queue
    /// order, `head` first, at most `limit`. Only for the holder of `head`'s claim: while it
    /// holds it, nothing of the key but new deliveries at its end changes.
    fn key_backlog(
        &self,
        head: &Delivery,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    /// Records what traffic shaping did with the claimed head's key, atomically: the
    /// deliveries before `kept` become [`DeliveryState::Superseded`], `kept` gets its attempt
    /// (or is held), and the key's state value is written; then the claim ends. Nothing is
    /// written when the claim is stale (the head is no longer pending as claimed, or its lease
    /// passed to another instance).
    fn finish_shaped(&self, shaped: Shaped) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes one send from `target`'s rate limit (a GCRA bucket shared by every lane, and by
    /// every instance on PostgreSQL): `None` when the send may go now, else the time it may.
    fn rate_take(
        &self,
        target: TargetId,
        limit: RateLimit,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Lets no send of `target` through its rate limit before `until_ms` (a 429 with
    /// `Retry-After`), then sends at the limit's steady pace.
    fn rate_pause(
        &self,
        target: TargetId,
        limit: RateLimit,
        until_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn event(
        &self,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<Event>, StoreError>> + Send;

    fn delivery(
        &self,
        seq: Seq,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send;

    fn deliveries_of(
        &self,
        event: uuid::Uuid,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    fn attempts(&self, seq: Seq) -> impl Future<Output = Result<Vec<Attempt>, StoreError>> + Send;

    /// Dead letters of a target, oldest first.
    fn dead_letters(
        &self,
        target: TargetId,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;

    /// A round trip through the writer (sled: its group commit; PostgreSQL: a query): what
    /// readiness means.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn target_state(
        &self,
        target: TargetId,
    ) -> impl Future<Output = Result<Option<TargetState>, StoreError>> + Send;

    fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn counts(
        &self,
        target: TargetId,
    ) -> impl Future<Output = Result<TargetCounts, StoreError>> + Send;

    /// When the oldest pending delivery of a target was created.
    fn oldest_pending_ms(
        &self,
        target: TargetId,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Events in time order, after `after` (exclusive), at most `limit`.
    fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// A page of the event log, newest first, with each event's deliveries. Looks at no more
    /// than `query.max_examined` events.
    fn event_log(
        &self,
        query: EventQuery,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;

    /// Dead letters of a target that died within `[since_ms, until_ms)`, oldest first.
    fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    /// Puts dead letters back in their queues (in their key's order, due now, with a fresh
    /// retry budget); returns how many were dead letters.
    fn replay(
        &self,
        seqs: Vec<Seq>,
        now_ms: u64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Deletes, oldest first and at most `max_events` events per call: events whose
    /// deliveries all finished (done or skipped before `done_before_ms`, dead before
    /// `dead_before_ms`), with their deliveries, attempts and index entries; and dedup keys
    /// that expired before `now_ms`. Pending deliveries are never touched. A call that reports
    /// `more` is continued by the next.
    fn prune(&self, limits: Prune) -> impl Future<Output = Result<Pruned, StoreError>> + Send;

    /// New deliveries of a stored event.
    fn redeliver(
        &self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Seq>, StoreError>> + Send;
}
