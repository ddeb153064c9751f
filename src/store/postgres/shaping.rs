//! Traffic shaping on PostgreSQL: a claimed key's backlog, the one transaction that
//! supersedes its first deliveries and records the kept one's attempt or hold, and the rate
//! limits every instance shares (one GCRA time per target in `hookrelay_rate`).

use super::queue;
use super::*;
use crate::store::ShapedOutcome;

pub(super) async fn key_backlog(
    store: &PgStore,
    head: &Delivery,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let client = store.pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries \
             WHERE target = $1 AND ordering_key = $2 AND state = 'pending' \
             ORDER BY queue_pos LIMIT $3"
        ))
        .await?;
    client
        .query(
            &stmt,
            &[
                &(head.target as i32),
                &head.ordering_key.as_bytes(),
                &(limit as i64),
            ],
        )
        .await?
        .iter()
        .map(delivery_of)
        .collect()
}

pub(super) async fn finish_shaped(store: &PgStore, mut s: Shaped) -> Result<(), StoreError> {
    if s.kept.seq != s.head.seq && !s.superseded.contains(&s.head.seq) {
        s.superseded.push(s.head.seq);
    }
    let target = s.head.target as i32;
    let key = s.head.ordering_key.as_bytes();
    let mut client = store.pool.get().await?;
    let tx = client.transaction().await?;
    // The claim must still be this instance's, as claimed.
    let held = tx
        .query_opt(
            "SELECT 1 FROM hookrelay_deliveries \
             WHERE seq = $1 AND state = 'pending' AND due_ms = $2 AND lease_owner = $3 \
             FOR UPDATE",
            &[&(s.head.seq as i64), &ms(s.head.due_ms), &&*store.instance],
        )
        .await?
        .is_some();
    if !held {
        tracing::debug!(seq = s.head.seq, "stale shaped finish ignored");
        return Ok(());
    }
    // As a finish does: a concurrent ingest of the key commits before or waits.
    tx.query(
        "SELECT seq FROM hookrelay_heads WHERE target = $1 AND ordering_key = $2 FOR UPDATE",
        &[&target, &key],
    )
    .await?;
    let now = match &s.outcome {
        ShapedOutcome::Attempt { attempt, .. } => attempt.at_ms + attempt.latency_ms,
        ShapedOutcome::Hold { .. } => now_ms(),
    };
    let superseded: Vec<i64> = s
        .superseded
        .iter()
        .filter(|&&q| q != s.kept.seq)
        .map(|&q| q as i64)
        .collect();
    if !superseded.is_empty() {
        tx.execute(
            "UPDATE hookrelay_deliveries SET state = 'superseded', is_head = false, note = $4, \
               updated_ms = $5, lease_owner = NULL, lease_until = 0 \
             WHERE seq = ANY($1) AND target = $2 AND ordering_key = $3 AND state = 'pending'",
            &[
                &superseded,
                &target,
                &key,
                &format!("superseded by delivery #{}", s.kept.seq),
                &ms(now),
            ],
        )
        .await?;
    }
    if s.kept.seq != s.head.seq {
        // The kept delivery becomes the key's head, claimed by this instance.
        let until = ms(now_ms().saturating_add(store.lease_ms));
        let moved = tx
            .execute(
                "UPDATE hookrelay_deliveries SET is_head = true, lease_owner = $3, lease_until = $4 \
                 WHERE seq = $1 AND state = 'pending' AND due_ms = $2",
                &[
                    &(s.kept.seq as i64),
                    &ms(s.kept.due_ms),
                    &&*store.instance,
                    &until,
                ],
            )
            .await?;
        if moved == 0 {
            // The kept delivery changed since it was read: nothing is written, and the key
            // is claimable again at once.
            drop(tx);
            queue::release(store, s.head.seq);
            return Ok(());
        }
        tx.execute(
            "UPDATE hookrelay_heads SET seq = $3 WHERE target = $1 AND ordering_key = $2",
            &[&target, &key, &(s.kept.seq as i64)],
        )
        .await?;
    }
    match s.outcome {
        ShapedOutcome::Attempt { attempt, next } => {
            if !store
                .finish_in(&tx, &s.kept, attempt, next, s.key_state)
                .await?
            {
                return Ok(());
            }
        }
        ShapedOutcome::Hold { due_ms, note } => {
            tx.execute(
                "UPDATE hookrelay_deliveries SET due_ms = $2, note = $3, updated_ms = $4, \
                   lease_owner = NULL, lease_until = 0 \
                 WHERE seq = $1",
                &[&(s.kept.seq as i64), &ms(due_ms), &note, &ms(now)],
            )
            .await?;
            PgStore::write_key_state(&tx, target, key, s.key_state).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn rate_take(
    store: &PgStore,
    target: TargetId,
    limit: RateLimit,
    now: u64,
) -> Result<Option<u64>, StoreError> {
    let client = store.pool.get().await?;
    // One send: the GCRA step of `RateLimit::take`, atomically on the shared row.
    let take = client
        .prepare_cached(
            "INSERT INTO hookrelay_rate (target, tat_ms) VALUES ($1, $2::int8 + $3::int8) \
             ON CONFLICT (target) DO UPDATE \
               SET tat_ms = GREATEST(hookrelay_rate.tat_ms, $2::int8) + $3::int8 \
               WHERE GREATEST(hookrelay_rate.tat_ms, $2::int8) - $2::int8 <= $4::int8 \
             RETURNING tat_ms",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 4] = [
        &(target as i32),
        &ms(now),
        &ms(limit.every_ms),
        &ms(limit.tolerance_ms()),
    ];
    if client.query_opt(&take, &params).await?.is_some() {
        return Ok(None);
    }
    let tat: Option<i64> = client
        .query_opt(
            "SELECT tat_ms FROM hookrelay_rate WHERE target = $1",
            &[&(target as i32)],
        )
        .await?
        .map(|r| r.get(0));
    let tat = tat.unwrap_or(0).max(0) as u64;
    Ok(Some(
        tat.max(now)
            .saturating_sub(limit.tolerance_ms())
            .max(now + 1),
    ))
}

pub(super) async fn rate_pause(
    store: &PgStore,
    target: TargetId,
    limit: RateLimit,
    until: u64,
) -> Result<(), StoreError> {
    let client = store.pool.get().await?;
    client
        .execute(
            "INSERT INTO hookrelay_rate (target, tat_ms) VALUES ($1, $2) \
             ON CONFLICT (target) DO UPDATE SET tat_ms = GREATEST(hookrelay_rate.tat_ms, $2)",
            &[&(target as i32), &ms(limit.paused(0, until))],
        )
        .await?;
    Ok(())
}
