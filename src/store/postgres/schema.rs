//! The PostgreSQL store's schema: its versions, applied in order, each once.

use super::*;

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

pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
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
