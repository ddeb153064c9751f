//! Claims, leases and finishing: the per-key queue across instances.

use super::*;

pub(super) async fn claim(
    store: &PgStore,
    target: TargetId,
    now: u64,
) -> Result<Claim, StoreError> {
    let client = store.pool.get().await?;
    let clock = now_ms();
    let picked = store
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
        .query_one(&wait, &[&target, &ms(now), &ms(clock), &&*store.instance])
        .await?
        .get(0);
    Ok(match due {
        Some(due) => Claim::Wait(due as u64),
        None => Claim::Empty,
    })
}

pub(super) async fn claim_probe(
    store: &PgStore,
    target: TargetId,
    after: Seq,
) -> Result<Claim, StoreError> {
    let client = store.pool.get().await?;
    let picked = store
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

pub(super) async fn finish(
    store: &PgStore,
    delivery: &Delivery,
    attempt: Attempt,
    next: Next,
) -> Result<(), StoreError> {
    store.finish_tx(delivery, attempt, next, None).await
}

pub(super) async fn key_state(
    store: &PgStore,
    target: TargetId,
    ordering_key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let client = store.pool.get().await?;
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

pub(super) async fn finish_with_key_state(
    store: &PgStore,
    delivery: &Delivery,
    attempt: Attempt,
    next: Next,
    state: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    store.finish_tx(delivery, attempt, next, Some(state)).await
}

pub(super) fn release(store: &PgStore, seq: Seq) {
    let pool = store.pool.clone();
    let instance = store.instance.clone();
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

impl PgStore {
    /// Leases the first head of `target` that no live lease holds, among those `pick` (a
    /// condition on `$2`, then an ORDER BY) chooses.
    pub(super) async fn lease(
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

    /// A finish, with a key's state value (`Some(None)` removes it) in the same transaction,
    /// written only when the finish applies.
    pub(super) async fn finish_tx(
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

    /// After a head finished for good: makes the key's next pending delivery its head, or
    /// forgets the key. Locks the head row first so a concurrent ingest of the key either
    /// committed before (its delivery is seen here) or waits and finds no head.
    pub(super) async fn promote(
        tx: &impl GenericClient,
        target: i32,
        key: &[u8],
    ) -> Result<(), StoreError> {
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
}
