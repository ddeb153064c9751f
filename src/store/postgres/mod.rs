//! The PostgreSQL store: several relay instances share one database, with the guarantees of the
//! sled store.
//!
//! - Every ingest is one transaction: dedup keys, events, deliveries and queue heads commit
//!   together or not at all, and the request is answered after the commit.
//! - Per (target, ordering key) FIFO holds across instances through `hookrelay_heads`: one row
//!   per key that has pending deliveries, naming its head. Only heads are claimable. Ingest
//!   upserts the row (`ON CONFLICT DO UPDATE` takes its lock, so concurrent writers of one key
//!   serialize), and finishing a head locks the row before promoting the next delivery, so a
//!   follower committed meanwhile is never orphaned.
//! - Claims lock with `FOR UPDATE SKIP LOCKED` and write a lease (owner, expiry) longer than a
//!   request's timeout. A finish applies only while its instance still holds the lease, so an
//!   attempt from an instance that lost its lease is never recorded over another's. An expired
//!   lease makes the delivery claimable again: a killed instance's work is picked up.
//! - Instances have names. An instance takes back the leases it held when it starts again, so a
//!   restart does not wait for its own leases to expire.
//! - `NOTIFY hookrelay_work` in the ingest transaction tells every other instance, at commit,
//!   which targets have new work; their lanes wake at once instead of at the next poll.
//!
//! - `hookrelay_key_state` holds one small value per (target, ordering key), the `statushub`
//!   target's incident record: written in the transaction of the finish it goes with, after
//!   that finish's lease check, so a stale finish writes neither.
//!
//! Keys that may hold any bytes (ordering and dedup keys) are `bytea`: `text` cannot hold NUL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::event_log::Pager;
use super::{
    codec, Attempt, Claim, Delivery, DeliveryState, EventOutcome, EventPage, EventQuery,
    IngestBatch, NewDelivery, Next, Prune, Pruned, Seq, Stats, Store, StoreError, TargetCounts,
    TargetId, TargetState,
};
use crate::error_chain;
use crate::normalize::Event;

mod queue;
mod read;
mod schema;
mod write;

use schema::migrate;

/// The channel instances tell each other about new work on.
const CHANNEL: &str = "hookrelay_work";
const LISTEN: &str = "LISTEN hookrelay_work";

const DELIVERY_COLUMNS: &str = "seq, event_id, target, ordering_key, state, attempts, due_ms, \
     created_ms, updated_ms, last_status, last_error, response_excerpt, retry_base";

/// How to reach the database and what this instance is called.
#[derive(Clone, PartialEq)]
pub struct PgOptions {
    pub url: String,
    pub pool_size: usize,
    /// How long a claim is held; longer than any attempt can take.
    pub lease: Duration,
    /// Unique among the instances sharing the database.
    pub instance: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .field("instance", &self.instance)
            .finish()
    }
}

/// Wakes the lanes of a target (or of every target, for `None`) when another instance added
/// work.
pub type Waker = Box<dyn Fn(Option<TargetId>) + Send + Sync>;

pub struct PgStore {
    pool: Pool,
    instance: Arc<str>,
    lease_ms: u64,
    waker: Arc<OnceLock<Waker>>,
    size: Arc<AtomicU64>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The last event the previous pruning call looked at, when it stopped at its limit.
    prune_after: std::sync::Mutex<Option<uuid::Uuid>>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(error_chain(&e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Postgres(e.to_string())
    }
}

/// The URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                c.get_user().unwrap_or(""),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(an unparsable PostgreSQL URL)".into(),
    }
}

/// Whether the database answers, for `check-config`: connects once and runs a query.
pub async fn check_connection(url: &str, timeout: Duration) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let attempt = async {
        let (client, conn) = config.connect(NoTls).await?;
        let conn = tokio::spawn(conn);
        client.simple_query("SELECT 1").await?;
        drop(client);
        let _ = conn.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

fn ms(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn now_ms() -> u64 {
    crate::deliver::now_ms()
}

/// PostgreSQL text cannot hold NUL; a response excerpt or error may.
fn clean(s: Option<String>) -> Option<String> {
    s.map(|s| {
        if s.contains('\0') {
            s.replace('\0', "\u{fffd}")
        } else {
            s
        }
    })
}

fn state_name(s: DeliveryState) -> &'static str {
    match s {
        DeliveryState::Pending => "pending",
        DeliveryState::Done => "done",
        DeliveryState::Dead => "dead",
        DeliveryState::Skipped => "skipped",
    }
}

fn delivery_of(row: &Row) -> Result<Delivery, StoreError> {
    let state: &str = row.try_get(4)?;
    let state = match state {
        "pending" => DeliveryState::Pending,
        "done" => DeliveryState::Done,
        "dead" => DeliveryState::Dead,
        "skipped" => DeliveryState::Skipped,
        other => return Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
    };
    let key: Vec<u8> = row.try_get(3)?;
    Ok(Delivery {
        seq: row.try_get::<_, i64>(0)? as u64,
        event_id: row.try_get(1)?,
        target: row.try_get::<_, i32>(2)? as u32,
        ordering_key: String::from_utf8(key)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        state,
        attempts: row.try_get::<_, i32>(5)? as u32,
        due_ms: row.try_get::<_, i64>(6)? as u64,
        created_ms: row.try_get::<_, i64>(7)? as u64,
        updated_ms: row.try_get::<_, i64>(8)? as u64,
        last_status: row.try_get::<_, Option<i32>>(9)?.map(|s| s as u16),
        last_error: row.try_get(10)?,
        response_excerpt: row.try_get(11)?,
        retry_base: row.try_get::<_, i32>(12)? as u32,
        last_at_ms: 0,
        last_latency_ms: 0,
    })
}

/// A delivery to put in its key's queue; the key is borrowed from the request's batch.
struct Enqueue<'a> {
    seq: i64,
    event: uuid::Uuid,
    target: i32,
    key: &'a [u8],
}

impl PgStore {
    /// Connects, brings the schema up to date, and takes back this instance's old leases.
    pub async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let pg: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("{e}")))?;
        let manager = deadpool_postgres::Manager::from_config(
            pg.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        client
            .execute(
                "UPDATE hookrelay_deliveries SET lease_owner = NULL, lease_until = 0 \
                 WHERE lease_owner = $1",
                &[&options.instance],
            )
            .await?;
        drop(client);
        let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
        let instance: Arc<str> = options.instance.as_str().into();
        let size = Arc::new(AtomicU64::new(0));
        let background = vec![
            tokio::spawn(listen(pg, instance.clone(), waker.clone())),
            tokio::spawn(measure(pool.clone(), size.clone())),
        ];
        Ok(PgStore {
            pool,
            instance,
            lease_ms: options.lease.as_millis() as u64,
            waker,
            size,
            background,
            prune_after: std::sync::Mutex::new(None),
        })
    }

    /// Sets what wakes local lanes when another instance adds work; once.
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// The database's size as last measured (every 10 s).
    pub fn size_on_disk(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub async fn close(&self) -> Result<(), StoreError> {
        for task in &self.background {
            task.abort();
        }
        self.pool.close();
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

/// Keeps a connection that LISTENs for other instances' new work, reconnecting when it drops.
/// After a reconnect every lane is woken: notifications sent meanwhile were missed.
async fn listen(config: tokio_postgres::Config, instance: Arc<str>, waker: Arc<OnceLock<Waker>>) {
    use futures_util::StreamExt;
    let wake = |target: Option<TargetId>| {
        if let Some(w) = waker.get() {
            w(target);
        }
    };
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                let ok = {
                    let listening = client.batch_execute(LISTEN);
                    tokio::pin!(listening);
                    // The LISTEN completes only while the connection is polled.
                    loop {
                        tokio::select! {
                            r = &mut listening => break r.is_ok(),
                            m = messages.next() => if !matches!(m, Some(Ok(_))) { break false },
                        }
                    }
                };
                if ok {
                    wake(None);
                    while let Some(Ok(message)) = messages.next().await {
                        let tokio_postgres::AsyncMessage::Notification(n) = message else {
                            continue;
                        };
                        let Some((from, targets)) = n.payload().split_once('\n') else {
                            continue;
                        };
                        if from == &*instance {
                            continue;
                        }
                        for id in targets.split(',').filter_map(|t| t.parse().ok()) {
                            wake(Some(id));
                        }
                    }
                }
                drop(client);
                tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the PostgreSQL notification connection");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn measure(pool: Pool, size: Arc<AtomicU64>) {
    loop {
        if let Ok(client) = pool.get().await {
            if let Ok(row) = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
            {
                size.store(row.get::<_, i64>(0).max(0) as u64, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

impl Store for PgStore {
    async fn target_ids(&self, names: &[String]) -> Result<Vec<TargetId>, StoreError> {
        write::target_ids(self, names).await
    }

    async fn ingest(&self, b: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        write::ingest(self, b).await
    }

    async fn claim(&self, target: TargetId, now: u64) -> Result<Claim, StoreError> {
        queue::claim(self, target, now).await
    }

    async fn claim_probe(&self, target: TargetId, after: Seq) -> Result<Claim, StoreError> {
        queue::claim_probe(self, target, after).await
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        queue::finish(self, delivery, attempt, next).await
    }

    async fn key_state(
        &self,
        target: TargetId,
        ordering_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        queue::key_state(self, target, ordering_key).await
    }

    async fn finish_with_key_state(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        queue::finish_with_key_state(self, delivery, attempt, next, state).await
    }

    fn release(&self, seq: Seq) {
        queue::release(self, seq)
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        read::event(self, id).await
    }

    async fn delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        read::delivery(self, seq).await
    }

    async fn deliveries_of(&self, event: uuid::Uuid) -> Result<Vec<Delivery>, StoreError> {
        read::deliveries_of(self, event).await
    }

    async fn attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        read::attempts(self, seq).await
    }

    async fn dead_letters(&self, target: TargetId) -> Result<Vec<Delivery>, StoreError> {
        read::dead_letters(self, target).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        read::stats(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        read::ping(self).await
    }

    async fn target_state(&self, target: TargetId) -> Result<Option<TargetState>, StoreError> {
        read::target_state(self, target).await
    }

    async fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> Result<(), StoreError> {
        write::set_target_state(self, target, state).await
    }

    async fn counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        read::counts(self, target).await
    }

    async fn oldest_pending_ms(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        read::oldest_pending_ms(self, target).await
    }

    async fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        read::events_page(self, after, limit).await
    }

    async fn event_log(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        read::event_log(self, query).await
    }

    async fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        read::dead_letters_between(self, target, since_ms, until_ms, limit).await
    }

    async fn replay(&self, seqs: Vec<Seq>, now: u64) -> Result<usize, StoreError> {
        write::replay(self, seqs, now).await
    }

    async fn prune(&self, p: Prune) -> Result<Pruned, StoreError> {
        write::prune(self, p).await
    }

    async fn redeliver(
        &self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        write::redeliver(self, event, deliveries, now).await
    }
}
