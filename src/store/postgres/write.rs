//! Ingest, replay, redelivery, pruning and target state: the PostgreSQL store's writes.

use super::*;

pub(super) async fn target_ids(
    store: &PgStore,
    names: &[String],
) -> Result<Vec<TargetId>, StoreError> {
    let mut client = store.pool.get().await?;
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

pub(super) async fn ingest(
    store: &PgStore,
    b: IngestBatch,
) -> Result<Vec<EventOutcome>, StoreError> {
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
    let mut client = store.pool.get().await?;
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
    let seqs = PgStore::allocate(&tx, n_deliveries).await?;
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
    PgStore::enqueue(&tx, &items, b.now_ms).await?;
    store.announce(&tx, items.iter().map(|i| i.target)).await?;
    tx.commit().await?;
    Ok(outcomes)
}

pub(super) async fn set_target_state(
    store: &PgStore,
    target: TargetId,
    state: TargetState,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let client = store.pool.get().await?;
    client
        .execute(
            "UPDATE hookrelay_targets SET state = $2 WHERE id = $1",
            &[&(target as i32), &json],
        )
        .await?;
    Ok(())
}

pub(super) async fn replay(
    store: &PgStore,
    mut seqs: Vec<Seq>,
    now: u64,
) -> Result<usize, StoreError> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut client = store.pool.get().await?;
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
    store.announce(&tx, replayed.into_iter()).await?;
    tx.commit().await?;
    Ok(n)
}

pub(super) async fn prune(store: &PgStore, p: Prune) -> Result<Pruned, StoreError> {
    // Event ids are UUIDv7: the first 48 bits are the creation time, so events younger
    // than both retention periods are never looked at.
    let boundary = p.done_before_ms.max(p.dead_before_ms).min((1 << 48) - 1);
    let bound = uuid::Uuid::from_u128(u128::from(boundary) << 80);
    let after = *store.prune_after.lock().unwrap_or_else(|p| p.into_inner());
    let mut client = store.pool.get().await?;
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
    *store.prune_after.lock().unwrap_or_else(|p| p.into_inner()) = resume_after;
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

pub(super) async fn redeliver(
    store: &PgStore,
    event: uuid::Uuid,
    deliveries: Vec<NewDelivery>,
    now: u64,
) -> Result<Vec<Seq>, StoreError> {
    let mut client = store.pool.get().await?;
    let tx = client.transaction().await?;
    let exists = tx
        .query_opt("SELECT 1 FROM hookrelay_events WHERE id = $1", &[&event])
        .await?
        .is_some();
    if !exists {
        return Ok(Vec::new());
    }
    let seqs = PgStore::allocate(&tx, deliveries.len()).await?;
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
    PgStore::enqueue(&tx, &items, now).await?;
    store.announce(&tx, items.iter().map(|i| i.target)).await?;
    tx.commit().await?;
    Ok(seqs.into_iter().map(|s| s as u64).collect())
}

impl PgStore {
    /// Puts deliveries in their keys' queues: allocated seqs must come in ascending order. A
    /// delivery becomes its key's head when the key has none; the upsert locks the key's head
    /// row, so this waits for a concurrent finish of the same key to settle.
    pub(super) async fn enqueue(
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
    pub(super) async fn announce(
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

    pub(super) async fn allocate(
        tx: &impl GenericClient,
        n: usize,
    ) -> Result<Vec<i64>, StoreError> {
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
}
