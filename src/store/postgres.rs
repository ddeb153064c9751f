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

/// The channel instances tell each other about new work on.
const CHANNEL: &str = "hookrelay_work";
const LISTEN: &str = "LISTEN hookrelay_work";

/// Schema versions, applied in order, each once, under an advisory lock so instances starting
/// together do not race. Never edit a released step; add one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hookrelay_targets (
    id integer PRIMARY KEY,
    name text NOT NULL UNIQUE,
    state text
);
CREATE TABLE hookrelay_events (
    id uuid PRIMARY KEY,
    source text NOT NULL,
    body bytea NOT NULL
);
CREATE TABLE hookrelay_dedup (
    source text NOT NULL,
    key bytea NOT NULL,
    until_ms bigint NOT NULL,
    event_id uuid NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX hookrelay_dedup_until ON hookrelay_dedup (until_ms);
CREATE SEQUENCE hookrelay_delivery_seq;
CREATE TABLE hookrelay_deliveries (
    seq bigint PRIMARY KEY,
    event_id uuid NOT NULL,
    target integer NOT NULL,
    ordering_key bytea NOT NULL,
    queue_pos bigint NOT NULL,
    state text NOT NULL,
    is_head boolean NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    retry_base integer NOT NULL DEFAULT 0,
    due_ms bigint NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    last_status integer,
    last_error text,
    response_excerpt text,
    lease_owner text,
    lease_until bigint NOT NULL DEFAULT 0
);
CREATE INDEX hookrelay_ready ON hookrelay_deliveries (target, due_ms, seq)
    WHERE state = 'pending' AND is_head;
CREATE INDEX hookrelay_queue ON hookrelay_deliveries (target, ordering_key, queue_pos)
    WHERE state = 'pending';
CREATE INDEX hookrelay_by_event ON hookrelay_deliveries (event_id);
CREATE INDEX hookrelay_dead ON hookrelay_deliveries (target, updated_ms, seq)
    WHERE state = 'dead';
CREATE INDEX hookrelay_leased ON hookrelay_deliveries (lease_owner)
    WHERE lease_owner IS NOT NULL;
CREATE TABLE hookrelay_heads (
    target integer NOT NULL,
    ordering_key bytea NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (target, ordering_key)
);
CREATE TABLE hookrelay_attempts (
    seq bigint NOT NULL,
    number integer NOT NULL,
    at_ms bigint NOT NULL,
    latency_ms bigint NOT NULL,
    status integer,
    error text,
    response_excerpt text,
    PRIMARY KEY (seq, number)
);
"#,
    r#"
CREATE TABLE hookrelay_key_state (
    target integer NOT NULL,
    ordering_key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (target, ordering_key)
);
"#,
];

/// Any number that identifies this relay's migration lock among other advisory locks.
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;

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

    /// Leases the first head of `target` that no live lease holds, among those `pick` (a
    /// condition on `$2`, then an ORDER BY) chooses.
    async fn lease(
        &self,
        client: &deadpool_postgres::Client,
        pick: &str,
        target: TargetId,
        param: i64,
        clock: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE hookrelay_deliveries SET lease_owner = $3, lease_until = $4 \
                 WHERE seq = (\
                   SELECT seq FROM hookrelay_deliveries \
                   WHERE target = $1 AND state = 'pending' AND is_head AND lease_until <= $5 \
                     AND {pick} LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {DELIVERY_COLUMNS}"
            ))
            .await?;
        let until = ms(clock.saturating_add(self.lease_ms));
        let row = client
            .query_opt(
                &stmt,
                &[
                    &(target as i32),
                    &param,
                    &&*self.instance,
                    &until,
                    &ms(clock),
                ],
            )
            .await?;
        row.map(|r| delivery_of(&r)).transpose()
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

    /// A finish, with a key's state value (`Some(None)` removes it) in the same transaction,
    /// written only when the finish applies.
    async fn finish_tx(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        key_state: Option<Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let now = attempt.at_ms + attempt.latency_ms;
        let (state, due) = match next {
            Next::Retry { due_ms } => (DeliveryState::Pending, due_ms),
            Next::Done => (DeliveryState::Done, delivery.due_ms),
            Next::Dead => (DeliveryState::Dead, delivery.due_ms),
            Next::Skipped => (DeliveryState::Skipped, delivery.due_ms),
        };
        let error = clean(attempt.error);
        let excerpt = clean(attempt.response_excerpt);
        let status = attempt.status.map(i32::from);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let update = tx
            .prepare_cached(
                "UPDATE hookrelay_deliveries SET attempts = $2, last_status = $3, \
                   last_error = $4, response_excerpt = $5, updated_ms = $6, state = $7, \
                   due_ms = $8, is_head = ($7 = 'pending'), lease_owner = NULL, lease_until = 0 \
                 WHERE seq = $1 AND state = 'pending' AND due_ms = $9 AND lease_owner = $10 \
                 RETURNING target, ordering_key",
            )
            .await?;
        let seq = delivery.seq as i64;
        let Some(row) = tx
            .query_opt(
                &update,
                &[
                    &seq,
                    &(attempt.number as i32),
                    &status,
                    &error,
                    &excerpt,
                    &ms(now),
                    &state_name(state),
                    &ms(due),
                    &ms(delivery.due_ms),
                    &&*self.instance,
                ],
            )
            .await?
        else {
            // Finished already, or the lease passed to another instance: keep what is there.
            tracing::debug!(seq, "stale finish ignored");
            return Ok(());
        };
        let record = tx
            .prepare_cached(
                "INSERT INTO hookrelay_attempts \
                 (seq, number, at_ms, latency_ms, status, error, response_excerpt) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(
            &record,
            &[
                &seq,
                &(attempt.number as i32),
                &ms(attempt.at_ms),
                &ms(attempt.latency_ms),
                &status,
                &error,
                &excerpt,
            ],
        )
        .await?;
        if state != DeliveryState::Pending {
            let target: i32 = row.get(0);
            let key: Vec<u8> = row.get(1);
            Self::promote(&tx, target, &key).await?;
        }
        match key_state {
            Some(Some(value)) => {
                let upsert = tx
                    .prepare_cached(
                        "INSERT INTO hookrelay_key_state (target, ordering_key, value) \
                         VALUES ($1, $2, $3) \
                         ON CONFLICT (target, ordering_key) DO UPDATE SET value = $3",
                    )
                    .await?;
                tx.execute(
                    &upsert,
                    &[&row.get::<_, i32>(0), &row.get::<_, &[u8]>(1), &value],
                )
                .await?;
            }
            Some(None) => {
                tx.execute(
                    "DELETE FROM hookrelay_key_state WHERE target = $1 AND ordering_key = $2",
                    &[&row.get::<_, i32>(0), &row.get::<_, &[u8]>(1)],
                )
                .await?;
            }
            None => {}
        }
        tx.commit().await?;
        Ok(())
    }

    /// Puts deliveries in their keys' queues: allocated seqs must come in ascending order. A
    /// delivery becomes its key's head when the key has none; the upsert locks the key's head
    /// row, so this waits for a concurrent finish of the same key to settle.
    async fn enqueue(
        tx: &impl GenericClient,
        items: &[Enqueue<'_>],
        now: u64,
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        // The first delivery of each key in this batch may become its head; sorted, so two
        // transactions lock their keys in the same order and cannot deadlock.
        let mut candidates: Vec<&Enqueue> = Vec::new();
        let mut seen: HashSet<(i32, &[u8])> = HashSet::new();
        for it in items {
            if seen.insert((it.target, it.key)) {
                candidates.push(it);
            }
        }
        candidates.sort_by(|a, b| (a.target, a.key).cmp(&(b.target, b.key)));
        let targets: Vec<i32> = candidates.iter().map(|c| c.target).collect();
        let keys: Vec<&[u8]> = candidates.iter().map(|c| c.key).collect();
        let seqs: Vec<i64> = candidates.iter().map(|c| c.seq).collect();
        let upsert = tx
            .prepare_cached(
                "INSERT INTO hookrelay_heads (target, ordering_key, seq) \
                 SELECT * FROM unnest($1::int4[], $2::bytea[], $3::int8[]) \
                 ON CONFLICT (target, ordering_key) DO UPDATE SET seq = hookrelay_heads.seq \
                 RETURNING seq",
            )
            .await?;
        let heads: HashSet<i64> = tx
            .query(&upsert, &[&targets, &keys, &seqs])
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .filter(|s| seqs.contains(s))
            .collect();
        let insert = tx
            .prepare_cached(
                "INSERT INTO hookrelay_deliveries \
                 (seq, event_id, target, ordering_key, queue_pos, state, is_head, due_ms, \
                  created_ms, updated_ms) \
                 SELECT s, e, t, k, s, 'pending', h, $6, $6, $6 \
                 FROM unnest($1::int8[], $2::uuid[], $3::int4[], $4::bytea[], $5::bool[]) \
                 AS u(s, e, t, k, h)",
            )
            .await?;
        let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
        let events: Vec<uuid::Uuid> = items.iter().map(|i| i.event).collect();
        let targets: Vec<i32> = items.iter().map(|i| i.target).collect();
        let keys: Vec<&[u8]> = items.iter().map(|i| i.key).collect();
        let is_head: Vec<bool> = items.iter().map(|i| heads.contains(&i.seq)).collect();
        tx.execute(
            &insert,
            &[&seqs, &events, &targets, &keys, &is_head, &ms(now)],
        )
        .await?;
        Ok(())
    }

    /// Tells the other instances, at commit, which targets gained work.
    async fn announce(
        &self,
        tx: &impl GenericClient,
        targets: impl Iterator<Item = i32>,
    ) -> Result<(), StoreError> {
        let mut ids: Vec<i32> = targets.collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let mut payload = String::with_capacity(self.instance.len() + 4 * ids.len());
        payload.push_str(&self.instance);
        payload.push('\n');
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(&id.to_string());
        }
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        tx.execute(&notify, &[&CHANNEL, &payload]).await?;
        Ok(())
    }

    async fn allocate(tx: &impl GenericClient, n: usize) -> Result<Vec<i64>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let stmt = tx
            .prepare_cached(
                "SELECT nextval('hookrelay_delivery_seq') FROM generate_series(1, $1::int8)",
            )
            .await?;
        let mut seqs: Vec<i64> = tx
            .query(&stmt, &[&(n as i64)])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// After a head finished for good: makes the key's next pending delivery its head, or
    /// forgets the key. Locks the head row first so a concurrent ingest of the key either
    /// committed before (its delivery is seen here) or waits and finds no head.
    async fn promote(tx: &impl GenericClient, target: i32, key: &[u8]) -> Result<(), StoreError> {
        let lock = tx
            .prepare_cached(
                "SELECT seq FROM hookrelay_heads WHERE target = $1 AND ordering_key = $2 \
                 FOR UPDATE",
            )
            .await?;
        tx.query(&lock, &[&target, &key]).await?;
        let next = tx
            .prepare_cached(
                "UPDATE hookrelay_deliveries SET is_head = true WHERE seq = (\
                   SELECT seq FROM hookrelay_deliveries \
                   WHERE target = $1 AND ordering_key = $2 AND state = 'pending' \
                   ORDER BY queue_pos LIMIT 1) \
                 RETURNING seq",
            )
            .await?;
        match tx.query_opt(&next, &[&target, &key]).await? {
            Some(row) => {
                let seq: i64 = row.get(0);
                let set = tx
                    .prepare_cached(
                        "UPDATE hookrelay_heads SET seq = $3 \
                         WHERE target = $1 AND ordering_key = $2",
                    )
                    .await?;
                tx.execute(&set, &[&target, &key, &seq]).await?;
            }
            None => {
                let forget = tx
                    .prepare_cached(
                        "DELETE FROM hookrelay_heads WHERE target = $1 AND ordering_key = $2",
                    )
                    .await?;
                tx.execute(&forget, &[&target, &key]).await?;
            }
        }
        Ok(())
    }

    async fn deliveries_where(
        &self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Delivery>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries WHERE {condition}"
            ))
            .await?;
        client
            .query(&stmt, params)
            .await?
            .iter()
            .map(delivery_of)
            .collect()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hookrelay_schema (\
           version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM hookrelay_schema",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(StoreError::Postgres(format!(
            "the database's schema is at version {current}, newer than this relay knows \
             ({known}); run a newer hookrelay"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO hookrelay_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    tx.commit().await?;
    Ok(())
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
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE hookrelay_targets IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        let mut known: HashMap<String, i32> = tx
            .query("SELECT name, id FROM hookrelay_targets", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut next = known.values().copied().max().unwrap_or(0) + 1;
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            let id = match known.get(name) {
                Some(id) => *id,
                None => {
                    tx.execute(
                        "INSERT INTO hookrelay_targets (id, name) VALUES ($1, $2)",
                        &[&next, name],
                    )
                    .await?;
                    known.insert(name.clone(), next);
                    next += 1;
                    next - 1
                }
            };
            ids.push(id as TargetId);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn ingest(&self, b: IngestBatch) -> Result<Vec<EventOutcome>, StoreError> {
        let mut outcomes = vec![EventOutcome::Duplicate; b.events.len()];
        // Only the first copy of a dedup key in the request can be stored.
        let mut seen = HashSet::new();
        let mut firsts: Vec<usize> = (0..b.events.len())
            .filter(|&i| seen.insert((&b.events[i].source, &b.events[i].dedup_key)))
            .collect();
        if firsts.is_empty() {
            return Ok(outcomes);
        }
        firsts.sort_by(|&x, &y| {
            let (x, y) = (&b.events[x], &b.events[y]);
            (&x.source, &x.dedup_key).cmp(&(&y.source, &y.dedup_key))
        });
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let dedup = tx
            .prepare_cached(
                "INSERT INTO hookrelay_dedup (source, key, until_ms, event_id) \
                 SELECT s, k, $3, e FROM unnest($1::text[], $2::bytea[], $4::uuid[]) AS u(s, k, e) \
                 ON CONFLICT (source, key) DO UPDATE \
                   SET until_ms = EXCLUDED.until_ms, event_id = EXCLUDED.event_id \
                   WHERE hookrelay_dedup.until_ms <= $5 \
                 RETURNING event_id",
            )
            .await?;
        let sources: Vec<&str> = firsts
            .iter()
            .map(|&i| b.events[i].source.as_str())
            .collect();
        let keys: Vec<&[u8]> = firsts
            .iter()
            .map(|&i| b.events[i].dedup_key.as_bytes())
            .collect();
        let ids: Vec<uuid::Uuid> = firsts.iter().map(|&i| b.events[i].id).collect();
        let stored: HashSet<uuid::Uuid> = tx
            .query(
                &dedup,
                &[&sources, &keys, &ms(b.dedup_until_ms), &ids, &ms(b.now_ms)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if stored.is_empty() {
            return Ok(outcomes);
        }
        let mut ids = Vec::with_capacity(stored.len());
        let mut sources = Vec::with_capacity(stored.len());
        let mut bodies: Vec<&[u8]> = Vec::with_capacity(stored.len());
        let mut n_deliveries = 0;
        for (i, e) in b.events.iter().enumerate() {
            if stored.contains(&e.id) {
                outcomes[i] = EventOutcome::Stored;
                ids.push(e.id);
                sources.push(e.source.as_str());
                bodies.push(&e.encoded);
                n_deliveries += e.deliveries.len();
            }
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO hookrelay_events (id, source, body) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, body = EXCLUDED.body",
            )
            .await?;
        tx.execute(&insert, &[&ids, &sources, &bodies]).await?;
        let seqs = Self::allocate(&tx, n_deliveries).await?;
        let mut items = Vec::with_capacity(n_deliveries);
        let mut seqs = seqs.into_iter();
        for (i, e) in b.events.iter().enumerate() {
            if outcomes[i] != EventOutcome::Stored {
                continue;
            }
            for d in &e.deliveries {
                items.push(Enqueue {
                    seq: seqs.next().expect("one seq per delivery"),
                    event: e.id,
                    target: d.target as i32,
                    key: d.ordering_key.as_bytes(),
                });
            }
        }
        Self::enqueue(&tx, &items, b.now_ms).await?;
        self.announce(&tx, items.iter().map(|i| i.target)).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn claim(&self, target: TargetId, now: u64) -> Result<Claim, StoreError> {
        let client = self.pool.get().await?;
        let clock = now_ms();
        let picked = self
            .lease(
                &client,
                "due_ms <= $2 ORDER BY due_ms, seq",
                target,
                ms(now),
                clock,
            )
            .await?;
        if let Some(d) = picked {
            return Ok(Claim::Due(d));
        }
        let target = target as i32;
        // The next time something may become claimable: a head falling due, or another
        // instance's lease running out (that instance may be dead). This instance's own
        // leases end with its finish or release.
        let wait = client
            .prepare_cached(
                "SELECT min(CASE \
                   WHEN lease_until <= $3 AND due_ms > $2 THEN due_ms \
                   WHEN lease_until > $3 AND lease_owner <> $4 THEN lease_until END) \
                 FROM hookrelay_deliveries \
                 WHERE target = $1 AND state = 'pending' AND is_head",
            )
            .await?;
        let due: Option<i64> = client
            .query_one(&wait, &[&target, &ms(now), &ms(clock), &&*self.instance])
            .await?
            .get(0);
        Ok(match due {
            Some(due) => Claim::Wait(due as u64),
            None => Claim::Empty,
        })
    }

    async fn claim_probe(&self, target: TargetId, after: Seq) -> Result<Claim, StoreError> {
        let client = self.pool.get().await?;
        let picked = self
            .lease(
                &client,
                "true ORDER BY seq <= $2, seq",
                target,
                after as i64,
                now_ms(),
            )
            .await?;
        Ok(picked.map_or(Claim::Empty, Claim::Due))
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        self.finish_tx(delivery, attempt, next, None).await
    }

    async fn key_state(
        &self,
        target: TargetId,
        ordering_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT value FROM hookrelay_key_state WHERE target = $1 AND ordering_key = $2",
            )
            .await?;
        let row = client
            .query_opt(&stmt, &[&(target as i32), &ordering_key.as_bytes()])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn finish_with_key_state(
        &self,
        delivery: &Delivery,
        attempt: Attempt,
        next: Next,
        state: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.finish_tx(delivery, attempt, next, Some(state)).await
    }

    fn release(&self, seq: Seq) {
        let pool = self.pool.clone();
        let instance = self.instance.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The lease would expire anyway; giving it back early only saves the wait.
        rt.spawn(async move {
            let Ok(client) = pool.get().await else { return };
            let _ = client
                .execute(
                    "UPDATE hookrelay_deliveries SET lease_owner = NULL, lease_until = 0 \
                     WHERE seq = $1 AND lease_owner = $2",
                    &[&(seq as i64), &&*instance],
                )
                .await;
        });
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT body FROM hookrelay_events WHERE id = $1")
            .await?;
        match client.query_opt(&stmt, &[&id]).await? {
            Some(row) => codec::decode_event(row.get::<_, &[u8]>(0)).map(Some),
            None => Ok(None),
        }
    }

    async fn delivery(&self, seq: Seq) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .deliveries_where("seq = $1", &[&(seq as i64)])
            .await?
            .pop())
    }

    async fn deliveries_of(&self, event: uuid::Uuid) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries_where("event_id = $1 ORDER BY seq", &[&event])
            .await
    }

    async fn attempts(&self, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT number, at_ms, latency_ms, status, error, response_excerpt \
                 FROM hookrelay_attempts WHERE seq = $1 ORDER BY number",
                &[&(seq as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    number: r.try_get::<_, i32>(0)? as u32,
                    at_ms: r.try_get::<_, i64>(1)? as u64,
                    latency_ms: r.try_get::<_, i64>(2)? as u64,
                    status: r.try_get::<_, Option<i32>>(3)?.map(|s| s as u16),
                    error: r.try_get(4)?,
                    response_excerpt: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn dead_letters(&self, target: TargetId) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries_where(
            "target = $1 AND state = 'dead' ORDER BY updated_ms, seq",
            &[&(target as i32)],
        )
        .await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM hookrelay_events), \
                   count(*) FILTER (WHERE state = 'pending'), \
                   count(*) FILTER (WHERE state = 'done'), \
                   count(*) FILTER (WHERE state = 'dead'), \
                   count(*) FILTER (WHERE state = 'skipped') \
                 FROM hookrelay_deliveries",
                &[],
            )
            .await?;
        let n = |i: usize| row.get::<_, i64>(i) as u64;
        Ok(Stats {
            events: n(0),
            pending: n(1),
            done: n(2),
            dead: n(3),
            skipped: n(4),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn target_state(&self, target: TargetId) -> Result<Option<TargetState>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT state FROM hookrelay_targets WHERE id = $1",
                &[&(target as i32)],
            )
            .await?;
        match row.and_then(|r| r.get::<_, Option<String>>(0)) {
            Some(json) => codec::decode_target_state(json.as_bytes()).map(Some),
            None => Ok(None),
        }
    }

    async fn set_target_state(
        &self,
        target: TargetId,
        state: TargetState,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE hookrelay_targets SET state = $2 WHERE id = $1",
                &[&(target as i32), &json],
            )
            .await?;
        Ok(())
    }

    async fn counts(&self, target: TargetId) -> Result<TargetCounts, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'pending'), \
                   count(*) FILTER (WHERE state = 'dead') \
                 FROM hookrelay_deliveries WHERE target = $1 AND state IN ('pending', 'dead')",
                &[&(target as i32)],
            )
            .await?;
        Ok(TargetCounts {
            pending: row.get::<_, i64>(0) as u64,
            dead: row.get::<_, i64>(1) as u64,
        })
    }

    async fn oldest_pending_ms(&self, target: TargetId) -> Result<Option<u64>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT min(created_ms) FROM hookrelay_deliveries \
                 WHERE target = $1 AND state = 'pending'",
                &[&(target as i32)],
            )
            .await?;
        Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64))
    }

    async fn events_page(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT body FROM hookrelay_events WHERE ($1::uuid IS NULL OR id > $1) \
                 ORDER BY id LIMIT $2",
                &[&after, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| codec::decode_event(r.get::<_, &[u8]>(0)))
            .collect()
    }

    async fn event_log(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        // Chunks of rows, newest first. A row's body is sent only when its source matches, and
        // the type filter needs the decoded event, so both filters run here; the LIMIT bounds
        // what PostgreSQL looks at. Deliveries come in one query per chunk.
        let mut pager = Pager::new(&query);
        let mut before = query.before;
        loop {
            let chunk = pager.budget().min(256);
            if chunk == 0 || !pager.wants_more() {
                return Ok(pager.finish(false));
            }
            let rows = self
                .pool
                .get()
                .await?
                .query(
                    "SELECT id, CASE WHEN $3::text IS NULL OR source = $3 THEN body END \
                     FROM hookrelay_events \
                     WHERE ($1::uuid IS NULL OR id < $1) AND ($2::uuid IS NULL OR id > $2) \
                     ORDER BY id DESC LIMIT $4",
                    &[&before, &query.after, &query.source, &(chunk as i64)],
                )
                .await?;
            let mut candidates = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: uuid::Uuid = row.get(0);
                let event = match row.get::<_, Option<&[u8]>>(1) {
                    Some(body) => Some(codec::decode_event(body)?),
                    None => None,
                };
                candidates.push((id, event.filter(|e| query.admits_event(e))));
            }
            let ids: Vec<uuid::Uuid> = candidates
                .iter()
                .filter_map(|(id, e)| e.as_ref().map(|_| *id))
                .collect();
            let mut by_event: HashMap<uuid::Uuid, Vec<Delivery>> = HashMap::new();
            if !ids.is_empty() {
                for d in self
                    .deliveries_where("event_id = ANY($1) ORDER BY seq", &[&ids])
                    .await?
                {
                    by_event.entry(d.event_id).or_default().push(d);
                }
            }
            let full_chunk = rows.len() == chunk;
            let n = candidates.len();
            for (i, (id, event)) in candidates.into_iter().enumerate() {
                before = Some(id);
                pager.examine(id);
                if let Some(event) = event {
                    let ds = by_event.remove(&id).unwrap_or_default();
                    if query.admits_deliveries(&ds) {
                        pager.push(event, ds);
                    }
                }
                if !pager.wants_more() {
                    return Ok(pager.finish(i + 1 == n && !full_chunk));
                }
            }
            if !full_chunk {
                return Ok(pager.finish(true));
            }
        }
    }

    async fn dead_letters_between(
        &self,
        target: TargetId,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries_where(
            "target = $1 AND state = 'dead' AND updated_ms >= $2 AND updated_ms < $3 \
             ORDER BY updated_ms, seq LIMIT $4",
            &[
                &(target as i32),
                &ms(since_ms),
                &ms(until_ms),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .await
    }

    async fn replay(&self, mut seqs: Vec<Seq>, now: u64) -> Result<usize, StoreError> {
        seqs.sort_unstable();
        seqs.dedup();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut replayed = Vec::new();
        for seq in seqs {
            // Back at the end of its key's queue, in the order given, with a fresh budget.
            let row = tx
                .query_opt(
                    "UPDATE hookrelay_deliveries SET state = 'pending', is_head = false, \
                       retry_base = attempts, due_ms = $2, updated_ms = $2, \
                       queue_pos = nextval('hookrelay_delivery_seq'), \
                       lease_owner = NULL, lease_until = 0 \
                     WHERE seq = $1 AND state = 'dead' RETURNING target, ordering_key",
                    &[&(seq as i64), &ms(now)],
                )
                .await?;
            if let Some(row) = row {
                let target: i32 = row.get(0);
                let key: Vec<u8> = row.get(1);
                let head: i64 = tx
                    .query_one(
                        "INSERT INTO hookrelay_heads (target, ordering_key, seq) \
                         VALUES ($1, $2, $3) \
                         ON CONFLICT (target, ordering_key) DO UPDATE SET seq = hookrelay_heads.seq \
                         RETURNING seq",
                        &[&target, &key, &(seq as i64)],
                    )
                    .await?
                    .get(0);
                if head == seq as i64 {
                    tx.execute(
                        "UPDATE hookrelay_deliveries SET is_head = true WHERE seq = $1",
                        &[&head],
                    )
                    .await?;
                }
                replayed.push(target);
            }
        }
        let n = replayed.len();
        self.announce(&tx, replayed.into_iter()).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn prune(&self, p: Prune) -> Result<Pruned, StoreError> {
        // Event ids are UUIDv7: the first 48 bits are the creation time, so events younger
        // than both retention periods are never looked at.
        let boundary = p.done_before_ms.max(p.dead_before_ms).min((1 << 48) - 1);
        let bound = uuid::Uuid::from_u128(u128::from(boundary) << 80);
        let after = *self.prune_after.lock().unwrap_or_else(|p| p.into_inner());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT e.id, NOT EXISTS (\
                   SELECT 1 FROM hookrelay_deliveries d WHERE d.event_id = e.id AND (\
                     d.state = 'pending' \
                     OR (d.state = 'dead' AND d.updated_ms >= $3) \
                     OR (d.state IN ('done', 'skipped') AND d.updated_ms >= $4))) \
                 FROM hookrelay_events e \
                 WHERE ($1::uuid IS NULL OR e.id > $1) AND e.id < $2 \
                 ORDER BY e.id LIMIT $5",
                &[
                    &after,
                    &bound,
                    &ms(p.dead_before_ms),
                    &ms(p.done_before_ms),
                    &(p.max_events as i64),
                ],
            )
            .await?;
        let resume_after = if rows.len() == p.max_events {
            rows.last().map(|r| r.get::<_, uuid::Uuid>(0))
        } else {
            None
        };
        *self.prune_after.lock().unwrap_or_else(|p| p.into_inner()) = resume_after;
        let expired: Vec<uuid::Uuid> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        if !expired.is_empty() {
            tx.execute(
                "DELETE FROM hookrelay_attempts WHERE seq IN (\
                   SELECT seq FROM hookrelay_deliveries WHERE event_id = ANY($1))",
                &[&expired],
            )
            .await?;
            tx.execute(
                "DELETE FROM hookrelay_deliveries WHERE event_id = ANY($1)",
                &[&expired],
            )
            .await?;
            tx.execute(
                "DELETE FROM hookrelay_events WHERE id = ANY($1)",
                &[&expired],
            )
            .await?;
        }
        // Expired dedup keys: their sender stopped retrying long ago.
        let dedup_keys = tx
            .execute(
                "DELETE FROM hookrelay_dedup WHERE ctid IN (\
                   SELECT ctid FROM hookrelay_dedup WHERE until_ms < $1 LIMIT $2)",
                &[&ms(p.now_ms), &(p.max_events as i64)],
            )
            .await?;
        tx.commit().await?;
        Ok(Pruned {
            events: expired.len(),
            dedup_keys: dedup_keys as usize,
            more: resume_after.is_some(),
        })
    }

    async fn redeliver(
        &self,
        event: uuid::Uuid,
        deliveries: Vec<NewDelivery>,
        now: u64,
    ) -> Result<Vec<Seq>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt("SELECT 1 FROM hookrelay_events WHERE id = $1", &[&event])
            .await?
            .is_some();
        if !exists {
            return Ok(Vec::new());
        }
        let seqs = Self::allocate(&tx, deliveries.len()).await?;
        let items: Vec<Enqueue> = deliveries
            .iter()
            .zip(&seqs)
            .map(|(d, &seq)| Enqueue {
                seq,
                event,
                target: d.target as i32,
                key: d.ordering_key.as_bytes(),
            })
            .collect();
        Self::enqueue(&tx, &items, now).await?;
        self.announce(&tx, items.iter().map(|i| i.target)).await?;
        tx.commit().await?;
        Ok(seqs.into_iter().map(|s| s as u64).collect())
    }
}
